//! The real agent as a process: its config file, spawn, readiness, memory
//! sampling, its own account of a subscription (`status --json`) and a
//! clean stop. Killed on drop, whatever happened.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use crate::sys;

/// The secret of the bench subscription (also what the receiver checks).
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A free TCP port on loopback (released at once: the caller binds it soon).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One agent's directory: config, data, socket, logs.
pub struct AgentDir {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub http_port: u16,
}

/// A subscription in the config.
pub struct Sub {
    pub url: String,
    pub max_in_flight: usize,
}

impl AgentDir {
    pub fn new(dir: PathBuf) -> anyhow::Result<AgentDir> {
        std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
        Ok(AgentDir {
            config: dir.join("config.toml"),
            socket: dir.join("ingest.sock"),
            http_port: free_port()?,
            dir,
        })
    }

    pub fn db(&self) -> PathBuf {
        self.dir.join("data").join("outbox.db")
    }

    /// (Re)writes the config, with or without a subscription.
    pub fn write_config(&self, sub: Option<&Sub>) -> anyhow::Result<()> {
        let d = self.dir.display();
        let mut text = format!(
            "[agent]\nstore_id = \"0042\"\nagent_id = \"bench\"\ndata_dir = \"{d}/data\"\n\n\
             [ingest]\nsocket = \"{d}/ingest.sock\"\nhttp_listen = \"127.0.0.1:{}\"\nspool_dir = \"{d}/spool\"\n\
             max_request_bytes = \"64MiB\"\n\n\
             [storage]\nmax_db_bytes = \"64GiB\"\n\n\
             [admin]\nlisten = \"127.0.0.1:{}\"\n",
            self.http_port,
            free_port()?
        );
        if let Some(sub) = sub {
            text.push_str(&format!(
                "\n[[subscription]]\nname = \"bench\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\n\
                 max_in_flight = {}\ntimeout = \"30s\"\nretry = {{ initial = \"1s\", max = \"30s\" }}\n",
                sub.url, sub.max_in_flight
            ));
        }
        std::fs::write(&self.config, text).with_context(|| format!("{}", self.config.display()))?;
        Ok(())
    }
}

/// A running agent.
pub struct Agent {
    child: Option<Child>,
    pub pid: u32,
    pub spawned_at: Instant,
    pub log: PathBuf,
}

impl Agent {
    /// Starts `bin run --config ...`, stderr to `log`.
    pub fn spawn(bin: &Path, dir: &AgentDir, log_name: &str) -> anyhow::Result<Agent> {
        let log = dir.dir.join(log_name);
        let file = std::fs::File::create(&log)?;
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("--config")
            .arg(&dir.config)
            .env_remove("RUST_LOG")
            .env_remove("STORE_OUTBOX_LOG")
            .envs(std::env::var("BENCH_AGENT_LOG").map(|f| ("STORE_OUTBOX_LOG", f)))
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let spawned_at = Instant::now();
        let child = sys::spawn(cmd).with_context(|| format!("starting {}", bin.display()))?;
        Ok(Agent {
            pid: child.id(),
            child: Some(child),
            spawned_at,
            log,
        })
    }

    /// Waits until the socket and the HTTP port answer; returns the time
    /// since spawn.
    pub async fn wait_ready(&mut self, dir: &AgentDir, timeout: Duration) -> anyhow::Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("the agent exited early ({status}); log:\n{}", self.log_tail(30));
                }
            }
            let sock = tokio::net::UnixStream::connect(&dir.socket).await.is_ok();
            let http = tokio::net::TcpStream::connect(("127.0.0.1", dir.http_port))
                .await
                .is_ok();
            if sock && http {
                return Ok(self.spawned_at.elapsed());
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent was not ready within {timeout:?}; log:\n{}",
                    self.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Whether the process has exited (it is then reaped).
    pub fn has_exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().map(|s| s.is_some()).unwrap_or(true))
    }

    pub fn mem(&self) -> Option<sys::Mem> {
        sys::mem(self.pid)
    }

    /// VmRSS once it has settled: read every 500 ms for at least `min`,
    /// until four readings in a row lie within 1 % of each other, for at
    /// most `max`. None if the memory cannot be read.
    pub async fn settled_rss(&self, min: Duration, max: Duration) -> Option<Settled> {
        let t0 = Instant::now();
        let mut recent: Vec<u64> = Vec::with_capacity(5);
        loop {
            let mem = self.mem()?;
            recent.push(mem.rss_kib);
            if recent.len() > 4 {
                recent.remove(0);
            }
            let waited = t0.elapsed();
            let lo = recent.iter().copied().min().unwrap_or(0);
            let hi = recent.iter().copied().max().unwrap_or(0);
            let settled = recent.len() == 4 && hi - lo <= hi / 100;
            if (settled && waited >= min) || waited >= max {
                return Some(Settled {
                    rss_kib: mem.rss_kib,
                    hwm_kib: mem.hwm_kib,
                    waited,
                    settled,
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; how long the stop took and
    /// whether the exit was clean.
    pub fn stop(&mut self, grace: Duration) -> (Duration, bool) {
        match self.child.take() {
            Some(mut child) => sys::stop_child(&mut child, grace),
            None => (Duration::ZERO, true),
        }
    }

    /// The last `n` lines of the agent's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            sys::forget(child.id());
        }
    }
}

/// A settled VmRSS reading (`Agent::settled_rss`).
pub struct Settled {
    pub rss_kib: u64,
    /// VmHWM at the same moment: the peak since the agent started.
    pub hwm_kib: u64,
    pub waited: Duration,
    /// False if it was still moving when `max` ran out.
    pub settled: bool,
}

/// Samples a process's VmRSS in the background; keeps the maximum.
pub struct RssSampler {
    max_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    pub fn start(pid: u32, every: Duration) -> RssSampler {
        let max_kib = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (max_kib.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                if let Some(mem) = sys::mem(pid) {
                    m.fetch_max(mem.rss_kib, Ordering::Relaxed);
                }
                tokio::time::sleep(every).await;
            }
        });
        RssSampler { max_kib, stop, task }
    }

    /// Stops sampling and returns the largest VmRSS seen, KiB.
    pub async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.max_kib.load(Ordering::Relaxed)
    }
}

/// `store-outbox status --json`: the bench subscription's entry.
pub fn sub_status(bin: &Path, dir: &AgentDir) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(bin)
        .arg("--config")
        .arg(&dir.config)
        .args(["status", "--json"])
        .output()
        .context("running store-outbox status")?;
    if !out.status.success() {
        bail!("status failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).context("status JSON")?;
    status["subscriptions"]
        .as_array()
        .and_then(|subs| subs.iter().find(|s| s["name"] == "bench"))
        .cloned()
        .ok_or_else(|| anyhow!("no subscription bench in status"))
}

/// Polls `status --json` until the subscription has nothing pending or in
/// flight; its last entry.
pub async fn wait_settled_status(bin: &Path, dir: &AgentDir, timeout: Duration) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = sub_status(bin, dir)?;
        if s["pending"] == 0 && s["in_flight"] == 0 {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!("the agent still has work after {timeout:?}: {s}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Builds the agent (`cargo build --release --locked --features nats` in the main crate)
/// and returns the path of the binary.
pub fn build_main(main_dir: &Path, skip: bool) -> anyhow::Result<(PathBuf, String)> {
    let bin = main_dir.join("target/release/store-outbox");
    if skip {
        if !bin.exists() {
            bail!("{} does not exist (run without --no-build)", bin.display());
        }
        return Ok((bin, "not rebuilt (--no-build)".into()));
    }
    eprintln!(
        "==> cargo build --release --locked --features nats  (in {})",
        main_dir.display()
    );
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        // With the NATS destination, for the `nats` phase (harmless once it is default).
        .args(["build", "--release", "--locked", "--features", "nats"])
        .current_dir(main_dir)
        // The bench's own target dir must not leak into the main build.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .status()
        .context("running cargo build")?;
    if status.success() {
        // Profile overrides from the environment (e.g. a build without LTO
        // for speed) change what is measured: the note names them.
        let mut overrides: Vec<String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("CARGO_PROFILE_RELEASE"))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        overrides.sort();
        let with = if overrides.is_empty() {
            " with the crate's release profile".to_string()
        } else {
            format!(" with {}", overrides.join(" "))
        };
        Ok((
            bin,
            format!("built (cargo build --release --locked --features nats){with}"),
        ))
    } else if bin.exists() {
        eprintln!(
            "warning: the release build failed; measuring the existing {}",
            bin.display()
        );
        Ok((bin, "build FAILED, existing binary measured".into()))
    } else {
        Err(anyhow!("cargo build --release --locked failed and there is no binary"))
    }
}
