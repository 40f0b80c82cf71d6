//! The agent under test as a process: its temporary directory and config
//! file (written and rewritten), start, SIGTERM, SIGKILL, SIGHUP and reload,
//! events sent to it (socket, HTTP, spool; filling it until it refuses),
//! its logs, its CLI, its status and a read-only look at its database.

use std::collections::HashSet;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{binary, event, free_port, http_request, send_lines, wait_until, Events};

/// A test's directory with a config file, and the agent process.
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub child: Option<Child>,
    starts: usize,
    /// Extra `[ingest]` keys.
    ingest: String,
    /// Extra `[admin]` keys.
    admin: String,
    /// Extra `[agent]` keys (with `agent_id`, it replaces the default).
    agent_keys: String,
    /// Port of the HTTP ingest in the current config.
    pub http_port: std::cell::Cell<u16>,
    /// Port of the admin HTTP in the current config (0 when `admin` names
    /// its own `listen`).
    pub admin_port: std::cell::Cell<u16>,
}

impl Agent {
    /// Writes `config.toml` (data, socket and ports inside the temp dir are
    /// added in front of `extra`, which holds more sections).
    pub fn new(extra: &str) -> Agent {
        Agent::with_ingest("", extra)
    }

    /// Like [`Agent::new`], with more keys in `[ingest]`.
    pub fn with_ingest(ingest: &str, extra: &str) -> Agent {
        Agent::configured(ingest, "", extra)
    }

    /// Like [`Agent::new`], with more keys in `[ingest]` and `[admin]` (an
    /// `[admin]` text with `listen` replaces the default free port).
    pub fn configured(ingest: &str, admin: &str, extra: &str) -> Agent {
        let dir = tempfile::Builder::new().prefix("so-test-").tempdir().expect("tempdir");
        let config = dir.path().join("config.toml");
        let agent = Agent {
            dir,
            config,
            child: None,
            starts: 0,
            ingest: ingest.to_string(),
            admin: admin.to_string(),
            agent_keys: String::new(),
            http_port: std::cell::Cell::new(0),
            admin_port: std::cell::Cell::new(0),
        };
        agent.write_config(extra);
        agent
    }

    /// Like [`Agent::new`], with the admin API on a free port (returned) and a
    /// `token_file` holding `token_file_text`.
    pub fn with_admin_token(token_file_text: &str, extra: &str) -> (Agent, u16) {
        let port = free_port();
        let agent = Agent::configured(
            "",
            &format!("listen = \"127.0.0.1:{port}\"\ntoken_file = \"token\"\n"),
            extra,
        );
        std::fs::write(agent.dir.path().join("token"), token_file_text).expect("token file");
        (agent, port)
    }

    /// Like [`Agent::new`], with more keys in `[agent]` (`heartbeat`, or an
    /// `agent_id` in place of `till-03`).
    pub fn with_agent_keys(agent_keys: &str, extra: &str) -> Agent {
        let mut agent = Agent::configured("", "", extra);
        agent.agent_keys = agent_keys.to_string();
        agent.write_config(extra);
        agent
    }

    /// Rewrites the config with other subscriptions.
    pub fn write_config(&self, extra: &str) {
        self.http_port.set(free_port());
        self.admin_port.set(free_port());
        self.write_config_keeping_ports(extra);
    }

    /// Rewrites the config with other sections in `extra`, on the same
    /// ports (a reload does not move listeners).
    pub fn write_config_keeping_ports(&self, extra: &str) {
        let d = self.dir.path().display();
        let agent_id = if self.agent_keys.contains("agent_id") {
            String::new()
        } else {
            "agent_id = \"till-03\"\n".to_string()
        };
        let text = format!(
            "[agent]\nstore_id = \"0042\"\n{agent_id}{}\ndata_dir = \"{d}/data\"\n\
             [ingest]\nsocket = \"{d}/ingest.sock\"\nhttp_listen = \"127.0.0.1:{}\"\nspool_dir = \"{d}/spool\"\n{}\n\
             [admin]\n{}{}\n{extra}\n",
            self.agent_keys,
            self.http_port.get(),
            self.ingest,
            if self.admin.contains("listen") {
                String::new()
            } else {
                format!("listen = \"127.0.0.1:{}\"\n", self.admin_port.get())
            },
            self.admin,
        );
        std::fs::write(&self.config, text).expect("write config");
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("ingest.sock")
    }

    pub fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// Drops a file into the spool the way producers must: write under a
    /// temporary name, then rename into `incoming/`.
    pub fn drop_file(&self, name: &str, content: &[u8]) {
        let incoming = self.spool().join("incoming");
        std::fs::create_dir_all(&incoming).expect("incoming");
        let tmp = incoming.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, content).expect("write spool file");
        std::fs::rename(&tmp, incoming.join(name)).expect("rename into incoming");
    }

    /// The spool's `incoming/` (created) and `failed/` directories.
    pub fn spool_dirs(&self) -> (PathBuf, PathBuf) {
        let incoming = self.spool().join("incoming");
        std::fs::create_dir_all(&incoming).expect("incoming");
        (incoming, self.spool().join("failed"))
    }

    /// Events stored.
    pub fn stored_events(&self) -> i64 {
        self.open_db()
            .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
            .expect("count")
    }

    /// Sends `lines` over the agent's socket and asserts it acknowledged every
    /// one (`"ok": true`); returns the replies, in order.
    pub fn send_all(&self, lines: &[String]) -> Vec<serde_json::Value> {
        let replies = send_lines(&self.socket(), lines);
        let refused: Vec<&serde_json::Value> = replies.iter().filter(|r| r["ok"] != true).collect();
        assert!(refused.is_empty(), "every event acknowledged, but: {refused:?}");
        replies
    }

    /// Fills the outbox: sends events one at a time over the socket,
    /// `{ids}-{i}` of entity `till:{i % entities}` with `payload(i)`, until
    /// three were refused with `storage_full` (a refusal of another kind
    /// fails the test), at most 2,000. Returns the ids acknowledged and how
    /// many were refused.
    pub fn fill_until_refused(
        &self,
        ids: &str,
        entities: usize,
        payload: impl Fn(usize) -> serde_json::Value,
    ) -> (HashSet<String>, usize) {
        let mut acked = HashSet::new();
        let mut refused = 0;
        for i in 0..2000 {
            let line = event(
                &format!("{ids}-{i}"),
                &format!("till:{}", i % entities),
                "SaleCreated",
                payload(i),
            );
            let reply = &send_lines(&self.socket(), &[line])[0];
            if reply["ok"] == true {
                acked.insert(format!("{ids}-{i}"));
            } else {
                assert_eq!(reply["error"]["code"], "storage_full", "{reply}");
                refused += 1;
                if refused >= 3 {
                    break;
                }
            }
        }
        (acked, refused)
    }

    /// Builds `events` and sends them with [`Agent::send_all`].
    pub fn send_events(&self, events: &Events) -> Vec<serde_json::Value> {
        self.send_all(&events.lines())
    }

    /// `POST /v1/events` on the HTTP ingest: (status, JSON body).
    pub fn http_post(&self, body: &[u8]) -> (u16, serde_json::Value) {
        http_request(self.http_port.get(), "POST", "/v1/events", body)
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("data/outbox.db")
    }

    /// Starts the agent and waits until its socket answers.
    pub fn start(&mut self) {
        self.start_with_env(&[]);
    }

    /// Like [`Agent::start`], with extra environment variables.
    pub fn start_with_env(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "already running");
        self.starts += 1;
        let log = std::fs::File::create(self.dir.path().join(format!("agent-{}.log", self.starts))).expect("log file");
        let child = Command::new(binary())
            .args(["run", "--config"])
            .arg(&self.config)
            .env("STORE_OUTBOX_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn agent");
        self.child = Some(child);
        let socket = self.socket();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if UnixStream::connect(&socket).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("agent exited at start with {status}:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "agent did not start:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("agent did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGHUP to the running agent.
    pub fn sighup(&self) {
        let pid = self.child.as_ref().expect("running").id();
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    }

    /// Rewrites the config (same ports) with `extra`, sends SIGHUP and waits
    /// for the agent to log the reload's outcome; returns that log line
    /// ("config reloaded ..." or "config reload failed ...").
    pub fn reload(&self, extra: &str) -> String {
        self.write_config_keeping_ports(extra);
        let outcomes = |log: &str| -> Vec<String> {
            log.lines()
                .filter(|l| l.contains("config reloaded") || l.contains("config reload failed"))
                .map(str::to_string)
                .collect()
        };
        let before = outcomes(&self.log()).len();
        self.sighup();
        let mut line = String::new();
        wait_until(
            Duration::from_secs(60),
            "the reload's outcome in the log",
            || match outcomes(&self.log()).get(before) {
                Some(l) => {
                    line = l.clone();
                    true
                }
                None => false,
            },
        );
        line
    }

    /// All agent logs so far.
    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|i| std::fs::read_to_string(self.dir.path().join(format!("agent-{i}.log"))).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }

    /// Runs a CLI command against this agent's config.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(binary())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("run cli")
    }

    /// `status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        let out = self.cli(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// The subscription `name` in `status --json`.
    pub fn sub_status(&self, name: &str) -> serde_json::Value {
        self.status()["subscriptions"]
            .as_array()
            .expect("subscriptions")
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("subscription {name} in status"))
            .clone()
    }

    /// A read-only connection to the agent's database.
    pub fn open_db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open_with_flags(self.db(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open db")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}
