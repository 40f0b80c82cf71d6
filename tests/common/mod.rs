//! Shared test harness: the real binary as a process, a real HTTP receiver on
//! loopback with programmable answers, and socket producers.
//!
//! Every test takes its own temporary directory and free ports, and the
//! processes it starts are killed when their handles drop.

#![allow(dead_code)]

pub mod wan;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;

/// The secret every test subscription uses.
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Path of the binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_store-outbox")
}

/// Polls `cond` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A free TCP port on loopback, for a server a test starts later (the agent's
/// ingest and admin, chromedriver, `receive`, s_server).
///
/// Not one the kernel hands out for port 0: that range is also where every
/// outgoing connection takes its local port, so between this call and the
/// server's bind a client connection (of this or a parallel test) could take
/// it ("Address already in use"). Instead a port below the ephemeral range,
/// never the same one twice in a test process, checked free by binding it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000; // 20000-31999, below Linux's 32768-60999
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    // Each test process starts somewhere else in the span (suites of other
    // checkouts may run at the same time), then walks through it.
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(2_654_435_761) ^ rand_seed()) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}-{}", LOW + SPAN - 1)
}

fn rand_seed() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

/// Waits until something accepts connections on `port` (a server a test
/// started).
pub fn wait_for_port(port: u16, what: &str) {
    wait_until(Duration::from_secs(30), what, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

/// A child process that is killed when it drops (servers a test starts).
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns a server that is to listen on `port` (stdin and stderr closed,
/// stdout as given) and waits until it does.
pub fn spawn_listening(cmd: &mut Command, stdout: Stdio, port: u16, what: &str) -> Child {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start {:?}: {e}", cmd.get_program()));
    wait_for_port(port, &format!("{what} listening on {port}"));
    child
}

/// Runs a command that must succeed; a failure fails the test with the
/// command's own message (stderr).
pub fn run_ok(cmd: &mut Command, what: &str) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {:?}: {e}", cmd.get_program()));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `store-outbox <command> --config <config>` in the foreground (`run` that
/// is to fail at start, `check-config`), to its exit.
pub fn cli_with_config(command: &str, config: &Path) -> std::process::Output {
    Command::new(binary())
        .arg(command)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run the binary")
}

/// A process's stderr, as text.
pub fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

// ---- the agent ---------------------------------------------------------------

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

/// A subscription section pointing at `url`; `extra` adds keys.
pub fn subscription(name: &str, url: &str, extra: &str) -> String {
    format!("[[subscription]]\nname = \"{name}\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n{extra}\n")
}

/// Retries that park a failing event within about a second.
pub const PARK_FAST: &str = "retry = { initial = \"100ms\", max = \"200ms\", give_up_after = \"300ms\" }";

// ---- producers ---------------------------------------------------------------

/// A minimal HTTP/1.1 request over loopback: (status, JSON body or Null).
/// Reads exactly `content-length` bytes, so servers that keep the connection
/// open despite `connection: close` do not hang it.
pub fn http_request(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let r = http(port, method, path, &[], body);
    (r.status, r.json())
}

/// Like [`http_request`], with connection errors returned (the agent may be
/// killed mid-request in crash tests).
pub fn try_http_request(port: u16, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, serde_json::Value)> {
    let r = try_http(port, method, path, &[], body)?;
    Ok((r.status, r.json()))
}

/// An HTTP response as [`http`] read it.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON, or Null when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// An HTTP/1.1 request over loopback with extra `headers` (a
/// `content-type` among them replaces the default `application/json`, a
/// `host` the default `127.0.0.1:<port>`).
pub fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    try_http(port, method, path, headers, body).unwrap_or_else(|e| panic!("{method} {path} on port {port}: {e}"))
}

/// Like [`http`], with connection errors returned.
pub fn try_http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    // The agent's servers take only their own address as `Host`.
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("host: 127.0.0.1:{port}\r\n"));
    }
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
        head.push_str("content-type: application/json\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("content-length: {}\r\nconnection: close\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line: {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let length: Option<usize> = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok());
    let mut body = Vec::new();
    match length {
        Some(n) => {
            body.resize(n, 0);
            reader.read_exact(&mut body)?;
        }
        None => {
            reader.read_to_end(&mut body)?;
        }
    }
    Ok(HttpResponse { status, headers, body })
}

/// Sends lines over one connection, pipelined, and returns one reply per line.
pub fn send_lines(socket: &Path, lines: &[String]) -> Vec<serde_json::Value> {
    let stream = UnixStream::connect(socket).expect("connect to the ingest socket");
    let mut writer = stream.try_clone().expect("clone");
    let n = lines.len();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut r = BufReader::new(stream);
        for _ in 0..n {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            out.push(serde_json::from_str(&line).expect("reply is JSON"));
        }
        out
    });
    for l in lines {
        writer.write_all(l.as_bytes()).expect("write");
        writer.write_all(b"\n").expect("write");
    }
    let replies = reader.join().expect("reader");
    assert_eq!(replies.len(), n, "one reply per line");
    replies
}

/// An event line.
pub fn event(id: &str, entity: &str, event_type: &str, payload: serde_json::Value) -> String {
    serde_json::json!({"event_id": id, "type": event_type, "entity": entity,
        "attributes": {"terminal": "03"}, "payload": payload})
    .to_string()
}

/// Numbered events of one type, to send in one go: ids `{ids}-{i}` for each
/// number `i`, the number as the payload and one entity (`till:1`) unless
/// [`Events::spread_over`], [`Events::entity`] or [`Events::payload`] say
/// otherwise. Each entity's events come in the order of their numbers.
pub struct Events {
    ids: String,
    numbers: Vec<usize>,
    event_type: String,
    entity: Box<dyn Fn(usize) -> String>,
    payload: Box<dyn Fn(usize) -> serde_json::Value>,
}

impl Events {
    /// Events `{ids}-{i}` of `event_type` for every `i` of `numbers`.
    pub fn new(ids: &str, numbers: impl IntoIterator<Item = usize>, event_type: &str) -> Events {
        Events {
            ids: ids.to_string(),
            numbers: numbers.into_iter().collect(),
            event_type: event_type.to_string(),
            entity: Box::new(|_| "till:1".to_string()),
            payload: Box::new(|i| serde_json::json!(i)),
        }
    }

    /// All of entity `entity`.
    pub fn entity(mut self, entity: &str) -> Events {
        let entity = entity.to_string();
        self.entity = Box::new(move |_| entity.clone());
        self
    }

    /// Round-robin over `count` entities: event `i` is of `{prefix}:{i % count}`.
    pub fn spread_over(mut self, prefix: &str, count: usize) -> Events {
        let prefix = prefix.to_string();
        self.entity = Box::new(move |i| format!("{prefix}:{}", i % count));
        self
    }

    /// Event `i`'s payload is `payload(i)`.
    pub fn payload(mut self, payload: impl Fn(usize) -> serde_json::Value + 'static) -> Events {
        self.payload = Box::new(payload);
        self
    }

    /// The event lines, in order.
    pub fn lines(&self) -> Vec<String> {
        self.numbers
            .iter()
            .map(|&i| {
                event(
                    &format!("{}-{i}", self.ids),
                    &(self.entity)(i),
                    &self.event_type,
                    (self.payload)(i),
                )
            })
            .collect()
    }
}

// ---- the receiver --------------------------------------------------------------

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Request {
    pub at: Instant,
    pub id: String,
    pub entity: String,
    pub entity_seq: i64,
    pub event_type: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub json: serde_json::Value,
    /// What the receiver answered.
    pub answered: u16,
}

/// What to answer.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub delay: Duration,
    pub headers: Vec<(String, String)>,
}

impl Answer {
    pub fn ok() -> Answer {
        Answer::status(200)
    }
    pub fn status(status: u16) -> Answer {
        Answer {
            status,
            delay: Duration::ZERO,
            headers: vec![],
        }
    }
    /// The same answer, given after `delay`.
    pub fn after(mut self, delay: Duration) -> Answer {
        self.delay = delay;
        self
    }
    /// The same answer with one more header.
    pub fn header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

type Rule = Box<dyn FnMut(&Request) -> Answer + Send>;

struct Inner {
    requests: Mutex<Vec<Request>>,
    rule: Mutex<Rule>,
}

/// A real HTTP server on loopback, in its own thread and runtime.
pub struct Receiver {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

async fn handle(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> axum::response::Response {
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let mut req = Request {
        at: Instant::now(),
        id: json["id"].as_str().unwrap_or_default().to_string(),
        entity: json["entity"].as_str().unwrap_or_default().to_string(),
        entity_seq: json["entity_seq"].as_i64().unwrap_or(-1),
        event_type: json["type"].as_str().unwrap_or_default().to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or_default().to_string()))
            .collect(),
        body: body.to_vec(),
        json,
        answered: 0,
    };
    let answer = (inner.rule.lock().unwrap())(&req);
    req.answered = answer.status;
    // Recorded on arrival: a request the client gives up on (timeout) still
    // counts, with `answered` 0 unless its delayed answer went out.
    let index = {
        let mut all = inner.requests.lock().unwrap();
        if !answer.delay.is_zero() {
            req.answered = 0;
        }
        all.push(req);
        all.len() - 1
    };
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
        inner.requests.lock().unwrap()[index].answered = answer.status;
    }
    let mut response = (StatusCode::from_u16(answer.status).unwrap(), "").into_response();
    for (k, v) in answer.headers {
        response.headers_mut().insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            axum::http::HeaderValue::from_str(&v).unwrap(),
        );
    }
    response
}

impl Receiver {
    /// Starts on a free port, answering 200 to everything.
    pub fn start() -> Receiver {
        let inner = Arc::new(Inner {
            requests: Mutex::new(Vec::new()),
            rule: Mutex::new(Box::new(|_| Answer::ok())),
        });
        let mut r = Receiver {
            addr: ([127, 0, 0, 1], 0).into(),
            inner,
            stop: None,
            thread: None,
        };
        r.listen(([127, 0, 0, 1], 0).into());
        r
    }

    fn listen(&mut self, addr: SocketAddr) {
        let listener = {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match std::net::TcpListener::bind(addr) {
                    Ok(l) => break l,
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => panic!("bind {addr}: {e}"),
                }
            }
        };
        listener.set_nonblocking(true).expect("nonblocking");
        self.addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let inner = self.inner.clone();
        self.thread = Some(std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let app = axum::Router::new().fallback(handle).with_state(inner);
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await;
            });
            rt.shutdown_timeout(Duration::from_millis(100));
        }));
        self.stop = Some(tx);
    }

    /// The webhook URL.
    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    /// Puts a WAN link in front of this receiver: the agent reaches it at
    /// the returned proxy's `url_for(&rx.url())` (see [`Receiver::url_via`]).
    pub fn behind(&self, link: wan::Link) -> wan::Wan {
        wan::Wan::start(self.addr, link)
    }

    /// The webhook URL through `wan`.
    pub fn url_via(&self, wan: &wan::Wan) -> String {
        wan.url_for(&self.url())
    }

    /// Sets how requests are answered.
    pub fn answer_with(&self, rule: impl FnMut(&Request) -> Answer + Send + 'static) {
        *self.inner.rule.lock().unwrap() = Box::new(rule);
    }

    /// Answers `status` to every request for event `id`, 2xx to the rest.
    pub fn refuse_event(&self, id: &str, status: u16) {
        let id = id.to_string();
        self.answer_with(move |r| {
            if r.id == id {
                Answer::status(status)
            } else {
                Answer::ok()
            }
        });
    }

    /// Answers the first request with `first`, every later one with 200.
    pub fn answer_first(&self, first: Answer) {
        let mut first = Some(first);
        self.answer_with(move |_| first.take().unwrap_or_else(Answer::ok));
    }

    /// Closes the port (connections refused) until [`Receiver::restart`].
    pub fn shut(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Listens again on the same port.
    pub fn restart(&mut self) {
        let addr = self.addr;
        self.listen(addr);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.inner.requests.lock().unwrap().clone()
    }

    /// Requests answered 2xx.
    pub fn delivered(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| (200..300).contains(&r.answered))
            .collect()
    }

    /// Distinct event ids answered 2xx.
    pub fn delivered_ids(&self) -> std::collections::HashSet<String> {
        self.delivered().into_iter().map(|r| r.id).collect()
    }

    /// Number of requests answered 2xx, without copying them (cheap to poll
    /// with large backlogs).
    pub fn delivered_count(&self) -> usize {
        self.inner
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| (200..300).contains(&r.answered))
            .count()
    }

    /// Number of requests so far, without copying them.
    pub fn request_count(&self) -> usize {
        self.inner.requests.lock().unwrap().len()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shut();
    }
}

/// Checks per-entity order over the 2xx-answered requests: `entity_seq`
/// never goes down (a repeat of the last one is a duplicate, allowed).
/// Returns the number of duplicates.
pub fn assert_entity_order(requests: &[Request]) -> usize {
    let mut last: HashMap<&str, (i64, &str)> = HashMap::new();
    let mut duplicates = 0;
    for r in requests {
        if let Some((seq, id)) = last.get(r.entity.as_str()) {
            assert!(
                r.entity_seq >= *seq,
                "order violated for {}: #{} ({}) after #{} ({id})",
                r.entity,
                r.entity_seq,
                r.id,
                seq
            );
            if r.entity_seq == *seq {
                assert_eq!(&r.id, id, "same entity_seq, different ids");
                duplicates += 1;
            }
        }
        last.insert(&r.entity, (r.entity_seq, &r.id));
    }
    duplicates
}

// ---- real filesystems (root only) ---------------------------------------------

/// Set to `1` to skip the tests that need `mount` (not root, no tmpfs).
pub const NO_MOUNT_ENV: &str = "STORE_OUTBOX_NO_MOUNT";

/// A tmpfs mounted on a directory for one test; unmounted on drop (lazily if
/// something still holds it open). Declare it after the [`Agent`] whose data
/// directory it holds, or kill the agent first, so the agent is gone by then.
pub struct TmpfsMount {
    pub path: PathBuf,
}

impl TmpfsMount {
    /// Mounts a tmpfs with `options` (e.g. `size=2m`) on `path` (created if
    /// needed). Returns `None`, after saying so, when `STORE_OUTBOX_NO_MOUNT=1`;
    /// otherwise a failure to mount fails the test with what to do.
    pub fn new(path: &Path, options: &str, test: &str) -> Option<TmpfsMount> {
        if std::env::var(NO_MOUNT_ENV).is_ok_and(|v| v == "1") {
            println!("{test}: SKIPPED ({NO_MOUNT_ENV}=1: no tmpfs mount)");
            return None;
        }
        std::fs::create_dir_all(path).expect("mount point");
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "{test} mounts a tmpfs and must run as root (uid {euid} here); set {NO_MOUNT_ENV}=1 to skip it"
        );
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "{test}: `mount -t tmpfs -o {options} tmpfs {}` failed: {}; the test needs root and tmpfs \
             (set {NO_MOUNT_ENV}=1 to skip it)",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Some(TmpfsMount {
            path: path.to_path_buf(),
        })
    }

    /// `mount -o remount,<options>`: e.g. `size=8m` or `ro`.
    pub fn remount(&self, options: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "remount,{options} {}: {}",
            self.path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// Runs `openssl` in `dir` (certificates for the TLS tests); fails the test
/// with openssl's own message.
pub fn openssl(dir: &Path, args: &[&str]) {
    run_ok(
        Command::new("openssl").args(args).current_dir(dir),
        &format!("openssl {args:?} (openssl must be installed)"),
    );
}

/// `openssl req` with a new EC P-256 key (no passphrase), then `args`
/// (`-x509` for a self-signed certificate, `-keyout`, `-out`, `-subj`, …).
pub fn openssl_new_key(dir: &Path, args: &[&str]) {
    let mut all = vec![
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    all.extend(args);
    openssl(dir, &all);
}

/// sd_notify datagrams received on `sock` until one matches `until`, or the
/// timeout (the socket needs a short read timeout).
pub fn notify_messages(
    sock: &std::os::unix::net::UnixDatagram,
    timeout: Duration,
    until: impl Fn(&str) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = until(&msg);
            out.push(msg);
            if done {
                break;
            }
        }
    }
    out
}

/// The outbox driven through the library, for tests that force an
/// interleaving a test through the process cannot: a real database file and
/// the real writer thread, with one subscription "erp" (endpoint unused).
pub struct LibraryOutbox {
    /// The database file.
    pub db: PathBuf,
    /// The subscription's row id.
    pub sub_id: i64,
    /// The writer, as the agent uses it.
    pub writer: store_outbox::outbox::writer::Writer,
    /// The writer thread; it ends once every `Writer` is dropped.
    pub thread: std::thread::JoinHandle<()>,
}

/// Opens an outbox in `dir`; `subscription_extra` is added to the
/// subscription's TOML table (for example `retry = { give_up_after = "0s" }`).
pub fn library_outbox(dir: &Path, subscription_extra: &str) -> LibraryOutbox {
    let d = dir.display();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\ndata_dir = \"{d}/data\"\n[ingest]\nsocket = \"{d}/s.sock\"\n\
             [[subscription]]\nname = \"erp\"\nurl = \"http://127.0.0.1:9/h\"\nsecret = \"{SECRET}\"\n\
             {subscription_extra}\n"
        ),
    )
    .expect("config");
    let cfg = store_outbox::config::load(Some(&config)).expect("config valid");
    let db = cfg.db_path();
    let mut conn = store_outbox::outbox::open_writer(&db).expect("db");
    let subs = store_outbox::outbox::register_subscriptions(&mut conn, &cfg.subscriptions).expect("subs");
    let (writer, thread) = store_outbox::outbox::writer::Writer::start(
        conn,
        &subs,
        cfg.storage.max_db_bytes,
        Arc::new(tokio::sync::Notify::new()),
    );
    LibraryOutbox {
        db,
        sub_id: subs[0].id,
        writer,
        thread,
    }
}

/// The outcome of an attempt at event `seq` for `sub_id`, now: `status`
/// (an error `HTTP <status>` unless 2xx) and the scheduler's `decision`, for
/// a delivery resent `resends` times when it was read.
pub fn outcome(
    sub_id: i64,
    seq: i64,
    status: u16,
    decision: store_outbox::outbox::writer::Decision,
    resends: i64,
) -> store_outbox::outbox::writer::Outcome {
    store_outbox::outbox::writer::Outcome {
        sub_id,
        event_seq: seq,
        at_ms: store_outbox::outbox::now_ms(),
        status: Some(status),
        error: (status >= 300).then(|| format!("HTTP {status}")),
        duration_ms: 5,
        decision,
        resends,
    }
}

/// A tokio runtime on this thread (for `block_on` in library tests).
pub fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A tokio runtime with two worker threads (for tasks that run at once).
pub fn multi_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A small event of `entity`, as a producer hands it over.
pub fn new_event(id: &str, entity: &str) -> store_outbox::event::NewEvent {
    store_outbox::event::NewEvent {
        event_id: id.into(),
        event_type: "SaleCreated".into(),
        entity: entity.into(),
        occurred_at: "2026-11-23T10:00:00Z".into(),
        correlation_id: None,
        is_test: false,
        attributes: None,
        payload: r#"{"total":1}"#.into(),
    }
}

/// A test CA (`ca.pem`, `ca.key`) and a server certificate it signed for
/// 127.0.0.1 (`server.pem`, `server.key`), written into `dir` with the
/// `openssl` command (EC P-256, valid two days).
pub fn ca_and_server_cert(dir: &Path) {
    openssl_new_key(
        dir,
        &[
            "-x509",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=store-outbox test CA",
        ],
    );
    openssl_new_key(
        dir,
        &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .expect("ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

// ---- a NATS JetStream cluster ---------------------------------------------------

/// The `nats-server` binary: `$NATS_SERVER`, else the Debian package's path,
/// else `PATH`. Missing, the test fails (CI installs the `nats-server`
/// package); it never passes without a server.
pub fn nats_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return PathBuf::from(path);
    }
    for candidate in ["/usr/sbin/nats-server", "/usr/bin/nats-server"] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.exists());
    on_path.unwrap_or_else(|| {
        panic!(
            "nats-server not found (not in $NATS_SERVER, /usr/sbin, /usr/bin or PATH): \
             the NATS tests need it; install the Debian package: apt-get install -y nats-server"
        )
    })
}

/// One node of a [`NatsCluster`].
pub struct NatsNode {
    /// `server_name`.
    pub name: String,
    /// Client port.
    pub port: u16,
    /// Config file (ports, routes, store directory).
    pub config: PathBuf,
    /// The running server; `None` while stopped.
    pub process: Option<Process>,
}

/// A JetStream cluster of nodes on loopback, each with its own store
/// directory under one temp dir; every node is killed when it drops.
pub struct NatsCluster {
    /// Holds the nodes' config files, logs and store directories.
    pub dir: tempfile::TempDir,
    /// The nodes; their ports and stores stay the same across restarts.
    pub nodes: Vec<NatsNode>,
}

impl NatsCluster {
    /// Starts `size` nodes that route to each other and waits until every
    /// one takes clients.
    pub fn start(size: usize) -> NatsCluster {
        NatsCluster::start_with(size, "")
    }

    /// Like [`NatsCluster::start`], with `extra` appended to every node's
    /// config (an `authorization` block, say).
    pub fn start_with(size: usize, extra: &str) -> NatsCluster {
        let binary = nats_server_binary();
        let dir = tempfile::Builder::new().prefix("so-nats-").tempdir().expect("tempdir");
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let mut nodes = Vec::new();
        for (i, (port, cluster_port)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let store = dir.path().join(&name);
            std::fs::create_dir_all(&store).expect("store dir");
            let routes: Vec<String> = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, (_, c))| format!("\"nats-route://127.0.0.1:{c}\""))
                .collect();
            let text = format!(
                "server_name: {name}\nlisten: \"127.0.0.1:{port}\"\n\
                 jetstream {{ store_dir: \"{}\" }}\n\
                 cluster {{ name: so-test, listen: \"127.0.0.1:{cluster_port}\", routes: [{}] }}\n{extra}\n",
                store.display(),
                routes.join(", ")
            );
            let config = dir.path().join(format!("{name}.conf"));
            std::fs::write(&config, text).expect("node config");
            nodes.push(NatsNode {
                name,
                port: *port,
                config,
                process: None,
            });
        }
        assert!(
            Command::new(&binary)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
            "{} does not run: the NATS tests need nats-server (apt-get install -y nats-server)",
            binary.display()
        );
        let mut cluster = NatsCluster { dir, nodes };
        for i in 0..size {
            cluster.spawn(i);
        }
        for node in &cluster.nodes {
            wait_for_port(node.port, &format!("nats-server {} on {}", node.name, node.port));
        }
        cluster
    }

    /// Starts node `i` (without waiting for it).
    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        assert!(node.process.is_none(), "{} already runs", node.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", node.name)))
            .expect("node log");
        let child = Command::new(nats_server_binary())
            .arg("-c")
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nats-server {}: {e}", node.name));
        node.process = Some(Process(child));
    }

    /// Every node's client URL, comma-separated (a subscription's `url`).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// SIGKILL node `i`.
    pub fn kill9(&mut self, i: usize) {
        self.nodes[i].process = None;
    }

    /// SIGKILL every node.
    pub fn kill_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill9(i);
        }
    }

    /// SIGTERM every node (a clean shutdown: the stores are flushed) and
    /// waits for them to exit.
    pub fn terminate_all(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut process) = node.process.take() {
                // SAFETY: sending a signal to our own child process.
                unsafe { libc::kill(process.0.id() as i32, libc::SIGTERM) };
                let deadline = Instant::now() + Duration::from_secs(20);
                while process.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    /// Starts node `i` again (same port, same store) and waits for it.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
        let node = &self.nodes[i];
        wait_for_port(node.port, &format!("nats-server {} on {}", node.name, node.port));
    }

    /// Starts every stopped node again.
    pub fn restart_all(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].process.is_none() {
                self.spawn(i);
            }
        }
        for node in &self.nodes {
            wait_for_port(node.port, &format!("nats-server {} on {}", node.name, node.port));
        }
    }

    /// The nodes' logs, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let log = std::fs::read_to_string(self.dir.path().join(format!("{}.log", n.name))).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                format!(
                    "--- {} ---\n{}",
                    n.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}
