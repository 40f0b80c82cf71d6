//! Phase `nginx` (issue 15, its last goal; `--only nginx`): a real nginx on
//! loopback (`return 200`, keep-alive) as the raw limit of one event per
//! request. In the same run: wrk's POST rate with the agent's body and
//! headers, before and after the drain (their mean is the limit), a plain
//! GET rate for reference, and the agent's drain of a backlog to the same
//! nginx with the defaults (one event per request, `max_in_flight` =
//! `--concurrency`), timed from the agent's start until its own count says
//! every event is delivered, then checked against nginx's access log.
//!
//! Owns the nginx processes and the wrk runs. nginx runs in the foreground
//! (`daemon off`) as the leader of a process group of its own, so that its
//! master and workers are stopped together at the end of the phase, on
//! Ctrl-C and on any error (the group is killed on drop), and the master
//! gets SIGTERM (nginx's fast shutdown, which stops the workers) if the
//! harness dies.

use std::collections::HashSet;
use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use crate::agent::{self, Agent, AgentDir, RssSampler, Sub};
use crate::report::Row;
use crate::{cpu_us, events, ingest, sys, Run, MIB};

/// What to install when a tool is missing.
const INSTALL_HINT: &str = "apt-get install wrk nginx";
/// The path the agent posts to (the access log is counted for it alone).
const HOOK_PATH: &str = "/hook";
/// The paths of the raw runs and of the start-up check.
const RAW_POST_PATH: &str = "/raw-post";
const RAW_GET_PATH: &str = "/raw-get";
const PROBE_PATH: &str = "/probe";
/// The path `outbox-floor` posts to.
const FLOOR_PATH: &str = "/floor";

/// A program: `$env` if set, else the first `name` in `PATH`, else
/// `fallback` (nginx is in /usr/sbin, often not in a user's `PATH`).
fn find_program(name: &str, env: &str, fallback: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Ok(PathBuf::from(path));
    }
    let in_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).collect::<Vec<_>>())
        .unwrap_or_default();
    in_path
        .into_iter()
        .chain([PathBuf::from(fallback)])
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("{name} not found (not in PATH, not {fallback}, ${env} unset): {INSTALL_HINT}"))
}

/// A string as a Lua (and nginx) double-quoted literal.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A running nginx: its directory (config, pid, logs, temp paths), its
/// port, and its master process (leader of its process group).
struct Nginx {
    dir: PathBuf,
    port: u16,
    master: Option<Child>,
}

impl Nginx {
    /// The config: everything inside `dir`, one server on `port`.
    fn config(dir: &Path, port: u16) -> String {
        let path = |name: &str| quoted(&dir.join(name).display().to_string());
        // nginx started by root switches its workers to `nobody` unless told
        // otherwise; started by anyone else it keeps its user (and warns
        // about a `user` line).
        // SAFETY: geteuid has no preconditions.
        let user = if unsafe { libc::geteuid() } == 0 {
            "user root;\n"
        } else {
            ""
        };
        format!(
            "# Written by outbox-bench, phase nginx: everything inside this directory.\n\
             daemon off;\n\
             master_process on;\n\
             worker_processes auto;\n\
             {user}\
             pid {pid};\n\
             error_log {error_log} warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
             \x20   log_format bench '$msec $status $request_method $uri $request_length $content_length $http_webhook_id';\n\
             \x20   access_log {access_log} bench buffer=64k flush=1s;\n\
             \x20   client_body_temp_path {body};\n\
             \x20   proxy_temp_path {proxy};\n\
             \x20   fastcgi_temp_path {fastcgi};\n\
             \x20   uwsgi_temp_path {uwsgi};\n\
             \x20   scgi_temp_path {scgi};\n\
             \x20   keepalive_requests 1000000;\n\
             \x20   keepalive_timeout 75s;\n\
             \x20   server {{\n\
             \x20       listen 127.0.0.1:{port};\n\
             \x20       location / {{ return 200; }}\n\
             \x20   }}\n\
             }}\n",
            pid = path("nginx.pid"),
            error_log = path("error.log"),
            access_log = path("access.log"),
            body = path("client_body_temp"),
            proxy = path("proxy_temp"),
            fastcgi = path("fastcgi_temp"),
            uwsgi = path("uwsgi_temp"),
            scgi = path("scgi_temp"),
        )
    }

    /// Writes the config into `dir`, starts nginx on a free loopback port
    /// and waits until it answers a keep-alive POST (`probe`).
    fn start(binary: &Path, dir: &Path) -> anyhow::Result<Nginx> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
        let port = agent::free_port()?;
        let config = dir.join("nginx.conf");
        std::fs::write(&config, Nginx::config(dir, port)).with_context(|| format!("{}", config.display()))?;
        let stderr_path = dir.join("nginx.stderr");
        let stderr = std::fs::File::create(&stderr_path).with_context(|| format!("{}", stderr_path.display()))?;
        let mut cmd = Command::new(binary);
        // -e: the error log of the start-up, before the config is read
        // (else nginx tries /var/log/nginx/error.log); -p: the prefix.
        cmd.arg("-e")
            .arg(dir.join("error.log"))
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let master = sys::spawn_group(cmd, libc::SIGTERM)
            .with_context(|| format!("starting {} ({INSTALL_HINT})", binary.display()))?;
        let mut nginx = Nginx {
            dir: dir.to_path_buf(),
            port,
            master: Some(master),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = nginx.master.as_mut().and_then(|m| m.try_wait().ok().flatten()) {
                bail!(
                    "nginx exited at start ({status}): {}{}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default(),
                    nginx.error_log_tail(10)
                );
            }
            match nginx.probe() {
                Ok(()) => return Ok(nginx),
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!(
                        "nginx does not answer on port {port} after 15 s; {}",
                        nginx.error_log_tail(10)
                    )))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Two 1 KiB POSTs on one connection: both must get 200 and the
    /// connection must stay open (keep-alive, the request body read).
    fn probe(&self) -> anyhow::Result<()> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).context("connect")?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        let body = "x".repeat(1024);
        let request = format!(
            "POST {PROBE_PATH} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut answers = String::new();
        for i in 0..2 {
            stream.write_all(request.as_bytes()).context("write")?;
            // Each answer has no body (`return 200`): its head ends the read.
            let mut buf = [0u8; 1024];
            let deadline = Instant::now() + Duration::from_secs(5);
            while answers.matches("\r\n\r\n").count() <= i {
                let got = stream.read(&mut buf).context("read")?;
                if got == 0 {
                    bail!("nginx closed the connection after {i} requests: {answers:?}");
                }
                answers.push_str(&String::from_utf8_lossy(&buf[..got]));
                if Instant::now() > deadline {
                    bail!("no answer to request {} within 5 s", i + 1);
                }
            }
        }
        let heads: Vec<&str> = answers.split("\r\n\r\n").filter(|h| !h.is_empty()).collect();
        if heads.len() != 2 || heads.iter().any(|h| !h.starts_with("HTTP/1.1 200")) {
            bail!("unexpected answers to two keep-alive POSTs: {answers:?}");
        }
        if heads
            .iter()
            .any(|h| h.to_ascii_lowercase().contains("connection: close"))
        {
            bail!("nginx closes keep-alive connections: {answers:?}");
        }
        Ok(())
    }

    /// Time the master and its workers waited for a CPU so far, µs.
    fn run_queue_wait_us(&self) -> u64 {
        let Some(master) = self.master.as_ref().map(Child::id) else {
            return 0;
        };
        sys::children_of(master)
            .into_iter()
            .chain([master])
            .filter_map(sys::run_queue_wait_us)
            .sum()
    }

    /// CPU ticks the master and its workers used so far.
    fn cpu_ticks(&self) -> u64 {
        let Some(master) = self.master.as_ref().map(Child::id) else {
            return 0;
        };
        sys::children_of(master)
            .into_iter()
            .chain([master])
            .filter_map(sys::cpu_ticks)
            .sum()
    }

    fn error_log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "error log ({}):\n{}",
            self.dir.join("error.log").display(),
            lines[lines.len().saturating_sub(n)..].join("\n")
        )
    }

    /// Graceful shutdown (SIGQUIT: the workers finish and flush the access
    /// log), then the whole group killed. Whether nginx exited by itself.
    fn stop(&mut self) -> bool {
        match self.master.take() {
            Some(mut master) => sys::stop_group(&mut master, libc::SIGQUIT, Duration::from_secs(15)).1,
            None => true,
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut master) = self.master.take() {
            sys::kill_group(master.id());
            let _ = master.wait();
        }
    }
}

/// A wrk run against nginx.
#[derive(Debug, Clone, serde::Serialize)]
struct WrkRun {
    /// "POST" (the agent's body and headers) or "GET".
    method: &'static str,
    threads: usize,
    connections: usize,
    seconds: u64,
    requests: u64,
    /// wrk's "Requests/sec:".
    rps: f64,
    /// wrk's "Non-2xx or 3xx responses:" (0 when it prints none).
    non_2xx: u64,
    /// wrk's "Socket errors:" line, if it printed one.
    socket_errors: Option<String>,
    /// wrk's latency line (avg, stdev, max, +/- stdev).
    latency: String,
    /// wrk's own CPU (user + system) per request, µs.
    wrk_cpu_us_per_request: f64,
    /// nginx's CPU (master and workers) per request, µs.
    nginx_cpu_us_per_request: f64,
    /// Time wrk's and nginx's threads waited for a CPU, per request, µs.
    wrk_run_queue_wait_us_per_request: f64,
    nginx_run_queue_wait_us_per_request: f64,
}

/// What a wrk request looks like.
enum Request {
    /// The agent's webhook body and headers, from the Lua script at this path.
    Post(PathBuf),
    Get,
}

/// Writes the agent's webhook body of a ~`size` event and a wrk script
/// that POSTs it with the agent's headers (content-type, webhook-id,
/// webhook-timestamp, webhook-signature; accept and user-agent as reqwest
/// sends them). Returns the script's path.
fn write_post_script(dir: &Path, entities: u64, size: usize) -> anyhow::Result<PathBuf> {
    let ev = events::event("nginxraw", 0, &events::order_entity(0, entities), size);
    let body = ev.webhook_body(1);
    let body_path = dir.join("wrk-body.json");
    std::fs::write(&body_path, &body).with_context(|| format!("{}", body_path.display()))?;
    let key = store_outbox::signing::decode_secret(agent::SECRET).map_err(|e| anyhow!(e))?;
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let signature = store_outbox::signing::signature_header(&[key], &ev.event_id, timestamp, body.as_bytes());
    let script = format!(
        "-- Written by outbox-bench, phase nginx: the agent's webhook body ({} bytes) and headers.\n\
         local file = assert(io.open({}, \"rb\"))\n\
         wrk.method = \"POST\"\n\
         wrk.body = file:read(\"*a\")\n\
         file:close()\n\
         wrk.headers[\"content-type\"] = \"application/json\"\n\
         wrk.headers[\"accept\"] = \"*/*\"\n\
         wrk.headers[\"user-agent\"] = \"store-outbox/bench\"\n\
         wrk.headers[\"webhook-id\"] = {}\n\
         wrk.headers[\"webhook-timestamp\"] = \"{timestamp}\"\n\
         wrk.headers[\"webhook-signature\"] = {}\n",
        body.len(),
        quoted(&body_path.display().to_string()),
        quoted(&ev.event_id),
        quoted(&signature)
    );
    let path = dir.join("wrk-post.lua");
    std::fs::write(&path, script).with_context(|| format!("{}", path.display()))?;
    Ok(path)
}

/// The figures of wrk's report (stdout).
fn parse_wrk(out: &str) -> anyhow::Result<(u64, f64, u64, Option<String>, String)> {
    let field = |prefix: &str| {
        out.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
    };
    let rps: f64 = field("Requests/sec:")
        .ok_or_else(|| anyhow!("no \"Requests/sec:\" in wrk's output:\n{out}"))?
        .parse()
        .with_context(|| format!("wrk's Requests/sec in:\n{out}"))?;
    // "  567890 requests in 10.00s, 80.00MB read"
    let requests = out
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow!("no request count in wrk's output:\n{out}"))?;
    let non_2xx = field("Non-2xx or 3xx responses:")
        .map(|v| v.parse().unwrap_or(u64::MAX))
        .unwrap_or(0);
    let socket_errors = field("Socket errors:").map(str::to_string);
    let latency = field("Latency").unwrap_or_default().to_string();
    Ok((requests, rps, non_2xx, socket_errors, latency))
}

/// Runs `wrk -t2 -c<connections> -d<seconds>s` against nginx; fails on
/// any non-2xx answer or socket error.
/// wrk's output goes to `wrk-<label>.txt` in nginx's directory.
async fn wrk(
    binary: &Path,
    nginx: &Nginx,
    request: &Request,
    label: &str,
    connections: usize,
    seconds: u64,
) -> anyhow::Result<WrkRun> {
    let connections = connections.max(1);
    let threads = connections.min(2);
    let (method, url) = match request {
        Request::Post(_) => ("POST", nginx.url(RAW_POST_PATH)),
        Request::Get => ("GET", nginx.url(RAW_GET_PATH)),
    };
    let out_path = nginx.dir.join(format!("wrk-{label}.txt"));
    let out = std::fs::File::create(&out_path).with_context(|| format!("{}", out_path.display()))?;
    let mut cmd = Command::new(binary);
    cmd.arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"));
    if let Request::Post(script) = request {
        cmd.arg("-s").arg(script);
    }
    cmd.arg(&url).stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
    let (nginx0, nginx_wait0) = (nginx.cpu_ticks(), nginx.run_queue_wait_us());
    let child = sys::spawn(cmd).with_context(|| format!("starting {} ({INSTALL_HINT})", binary.display()))?;
    let timeout = Duration::from_secs(seconds + 30);
    let finished = tokio::task::spawn_blocking(move || sys::wait_with_cpu(child, timeout))
        .await
        .map_err(|e| anyhow!("wrk waiter: {e}"))?
        .context("waiting for wrk")?;
    let (nginx1, nginx_wait1) = (nginx.cpu_ticks(), nginx.run_queue_wait_us());
    let status = finished.status;
    let text = std::fs::read_to_string(&out_path).with_context(|| format!("{}", out_path.display()))?;
    if !status.success() {
        bail!("wrk failed ({status}):\n{text}");
    }
    let (requests, rps, non_2xx, socket_errors, latency) = parse_wrk(&text)?;
    let run = WrkRun {
        method,
        threads,
        connections,
        seconds,
        requests,
        rps,
        non_2xx,
        socket_errors,
        latency,
        wrk_cpu_us_per_request: finished.cpu_us as f64 / requests.max(1) as f64,
        nginx_cpu_us_per_request: cpu_us(nginx1.saturating_sub(nginx0), requests),
        wrk_run_queue_wait_us_per_request: finished.run_queue_wait_us as f64 / requests.max(1) as f64,
        nginx_run_queue_wait_us_per_request: nginx_wait1.saturating_sub(nginx_wait0) as f64 / requests.max(1) as f64,
    };
    eprintln!(
        "wrk {method} -t{threads} -c{connections} -d{seconds}s: {requests} requests = {rps:.0} req/s \
         (latency avg/stdev/max {}); CPU µs/request: wrk {:.1}, nginx {:.1}; waits for a CPU µs/request: \
         wrk {:.1}, nginx {:.1}",
        run.latency,
        run.wrk_cpu_us_per_request,
        run.nginx_cpu_us_per_request,
        run.wrk_run_queue_wait_us_per_request,
        run.nginx_run_queue_wait_us_per_request
    );
    if non_2xx > 0 || run.socket_errors.is_some() {
        bail!(
            "wrk {method}: {non_2xx} non-2xx answers, socket errors: {:?}",
            run.socket_errors
        );
    }
    Ok(run)
}

/// The requests of one path in nginx's access log (format `bench`:
/// `$msec $status $request_method $uri $request_length $content_length
/// $http_webhook_id`).
#[derive(Debug, Default, serde::Serialize)]
struct AccessLog {
    /// Lines for the path.
    lines: u64,
    /// Of them with status 200.
    ok: u64,
    /// Distinct `webhook-id`s among those with status 200.
    distinct_ids: u64,
    /// Mean length of the request line and headers, bytes (nginx's
    /// `$request_length`, which leaves out a body it discards).
    mean_head_bytes: f64,
    /// Mean `content-length`, bytes.
    mean_body_bytes: f64,
    /// `$msec` of the first and the last line, seconds since the epoch.
    first_s: f64,
    last_s: f64,
}

impl AccessLog {
    fn read(path: &Path, uri: &str) -> anyhow::Result<AccessLog> {
        let file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
        let mut log = AccessLog {
            first_s: f64::INFINITY,
            last_s: 0.0,
            ..AccessLog::default()
        };
        let mut ids = HashSet::new();
        let (mut head_bytes, mut body_bytes) = (0u64, 0u64);
        // Millions of lines from the raw runs: read line by line.
        for line in std::io::BufReader::new(file).lines() {
            let line = line.with_context(|| format!("reading {}", path.display()))?;
            let f: Vec<&str> = line.split(' ').collect();
            let [msec, status, _method, path, head, body, id] = f[..] else {
                continue;
            };
            if path != uri {
                continue;
            }
            log.lines += 1;
            let at: f64 = msec.parse().unwrap_or(0.0);
            log.first_s = log.first_s.min(at);
            log.last_s = log.last_s.max(at);
            head_bytes += head.parse::<u64>().unwrap_or(0);
            body_bytes += body.parse::<u64>().unwrap_or(0);
            if status == "200" {
                log.ok += 1;
                ids.insert(id.to_string());
            }
        }
        log.distinct_ids = ids.len() as u64;
        log.mean_head_bytes = head_bytes as f64 / log.lines.max(1) as f64;
        log.mean_body_bytes = body_bytes as f64 / log.lines.max(1) as f64;
        if log.lines == 0 {
            log.first_s = 0.0;
        }
        Ok(log)
    }
}

/// The agent's own count of events delivered to a subscription
/// (`subscriptions.delivered_total`, what `status` reports), read from its
/// database: cheap enough to poll every 20 ms, where `status --json` would
/// start a process each time.
struct DeliveredCount {
    conn: rusqlite::Connection,
}

impl DeliveredCount {
    fn open(db: &Path) -> anyhow::Result<DeliveredCount> {
        let conn = store_outbox::outbox::open_reader(db).map_err(|e| anyhow!("{e}"))?;
        Ok(DeliveredCount { conn })
    }

    /// 0 until the agent has registered the subscription.
    fn read(&self, subscription: &str) -> anyhow::Result<u64> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT delivered_total FROM subscriptions WHERE name = ?1")
            .context("reading delivered_total")?;
        let mut rows = stmt.query([subscription]).context("reading delivered_total")?;
        Ok(match rows.next().context("reading delivered_total")? {
            Some(row) => row.get::<_, i64>(0).context("delivered_total")?.max(0) as u64,
            None => 0,
        })
    }
}

/// `perf record` attached to a process (`--nginx-perf`), until `finish`.
struct PerfRecord {
    child: Child,
    out: PathBuf,
}

impl PerfRecord {
    fn start(pid: u32, out: &Path) -> anyhow::Result<PerfRecord> {
        let log = out.with_extension("log");
        let log_file = std::fs::File::create(&log).with_context(|| format!("{}", log.display()))?;
        let mut cmd = Command::new(std::env::var_os("PERF").unwrap_or_else(|| "perf".into()));
        cmd.args(["record", "-F", "499", "--call-graph", "dwarf,16384", "-o"])
            .arg(out)
            .arg("-p")
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let child = sys::spawn(cmd).context("starting perf record (apt-get install linux-perf)")?;
        Ok(PerfRecord {
            child,
            out: out.to_path_buf(),
        })
    }

    /// SIGINT (perf then writes its file) and a wait for it to exit.
    fn finish(mut self) {
        sys::stop_child_with(&mut self.child, libc::SIGINT, Duration::from_secs(120));
        let bytes = std::fs::metadata(&self.out).map(|m| m.len()).unwrap_or(0);
        eprintln!(
            "perf record: {} ({bytes} bytes; its log {})",
            self.out.display(),
            self.out.with_extension("log").display()
        );
    }
}

/// How `outbox-floor` runs.
#[derive(Clone, Copy)]
enum FloorMode {
    /// `--http-only`: the webhook client alone, the first event posted `n` times.
    HttpOnly,
    /// The backlog drained with the agent's storage (the promises kept).
    Drain,
}

impl FloorMode {
    fn title(self) -> &'static str {
        match self {
            FloorMode::HttpOnly => {
                "9. nginx: outbox-floor --http-only (the webhook client alone, no storage), one event per request"
            }
            FloorMode::Drain => {
                "9. nginx: the same backlog drained by outbox-floor (the least machinery), one event per request"
            }
        }
    }

    /// The figures' key in the results.
    fn key(self) -> &'static str {
        match self {
            FloorMode::HttpOnly => "nginx_floor_http_only",
            FloorMode::Drain => "nginx_floor",
        }
    }
}

/// Runs `outbox-floor` (built beside this binary) on `floor`'s config and
/// returns its figures, with nginx's CPU per event added. With
/// `--nginx-perf FILE` it is profiled too, into `FILE.floor` (the drain) or
/// `FILE.floor-http` (`--http-only`).
async fn run_floor(
    run: &Run,
    nginx: &Nginx,
    floor: &AgentDir,
    mode: FloorMode,
    n: u64,
) -> anyhow::Result<serde_json::Value> {
    let nginx0 = nginx.cpu_ticks();
    let bin = std::env::current_exe()?.with_file_name("outbox-floor");
    let mut cmd = Command::new(&bin);
    cmd.arg(&floor.config)
        .arg("--threads")
        .arg(run.args.nginx_floor_threads.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if matches!(mode, FloorMode::HttpOnly) {
        cmd.arg("--http-only");
    }
    let child = cmd.spawn().with_context(|| {
        format!(
            "running {} (cargo build --release --manifest-path bench/Cargo.toml)",
            bin.display()
        )
    })?;
    let perf = match &run.args.nginx_perf {
        Some(out) => {
            let suffix = if matches!(mode, FloorMode::HttpOnly) {
                "floor-http"
            } else {
                "floor"
            };
            Some(PerfRecord::start(
                child.id(),
                &PathBuf::from(format!("{}.{suffix}", out.display())),
            )?)
        }
        None => None,
    };
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    if let Some(perf) = perf {
        perf.finish();
    }
    if !out.status.success() {
        bail!("outbox-floor failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut figures: serde_json::Value = serde_json::from_slice(&out.stdout).context("outbox-floor's output")?;
    let nginx_us = cpu_us(nginx.cpu_ticks() - nginx0, n);
    eprintln!(
        "outbox-floor {} ({} runtime workers): {} events in {:.2} s = {:.0} events/s, {:.1} µs CPU per event, nginx {nginx_us:.1} µs/event",
        figures["mode"].as_str().unwrap_or("?"),
        run.args.nginx_floor_threads,
        figures["events"],
        figures["seconds"].as_f64().unwrap_or(0.0),
        figures["events_per_s"].as_f64().unwrap_or(0.0),
        figures["cpu_us_per_event"].as_f64().unwrap_or(0.0),
    );
    figures["server_cpu_us_per_event"] = nginx_us.into();
    Ok(figures)
}

/// The phase (see the module documentation).
pub async fn phase(run: &mut Run) -> anyhow::Result<()> {
    let wrk_bin = find_program("wrk", "WRK", "/usr/bin/wrk")?;
    let nginx_bin = find_program("nginx", "NGINX", "/usr/sbin/nginx")?;
    let n = run.sizes.nginx;
    let entities = run.args.entities;
    let size = run.args.event_bytes;
    let concurrency = run.args.concurrency;
    let seconds = run.sizes.nginx_wrk_secs;
    run.set("nginx_events", n);

    // The backlog, with no subscription: the events wait in the outbox.
    run.phase(&format!(
        "9. nginx: backlog of {n} events over {entities} entities, no subscription"
    ));
    let dir = AgentDir::new(run.work.join("agent-x"))?;
    dir.write_config(None)?;
    let mut a = Agent::spawn(&run.bin, &dir, "agent-x1.log")?;
    a.wait_ready(&dir, Duration::from_secs(30)).await?;
    let load = ingest::socket_load(
        &dir.socket,
        n,
        run.args.producers,
        run.args.pipeline,
        ingest::line_fn("nginx", entities, size),
        Duration::from_secs(run.sizes.drain_limit_s),
    )
    .await?;
    eprintln!("{}", load.summary("backlog ingest"));
    let (stop, clean) = a.stop(Duration::from_secs(60));
    eprintln!("agent stopped in {:.2} s (clean: {clean})", stop.as_secs_f64());
    drop(a);
    run.set("nginx_bulk_ingest_eps", load.rate);
    if load.errors > 0 || load.acked < n {
        bail!(
            "backlog ingest: {} of {n} acked, {} errors, first: {:?}",
            load.acked,
            load.errors,
            load.first_error
        );
    }

    // A copy of the backlog for `outbox-floor` (the agent stopped cleanly,
    // so the database file holds everything).
    let floor_dir = if run.args.nginx_floor {
        let floor = AgentDir::new(run.work.join("agent-floor"))?;
        std::fs::create_dir_all(floor.dir.join("data"))?;
        for suffix in ["", "-wal", "-shm"] {
            let from = PathBuf::from(format!("{}{suffix}", dir.db().display()));
            if from.exists() {
                std::fs::copy(&from, format!("{}{suffix}", floor.db().display()))?;
            }
        }
        Some(floor)
    } else {
        None
    };

    run.phase("9. nginx: return 200, keep-alive, on loopback");
    let work = run.work.join("nginx");
    let mut nginx = Nginx::start(&nginx_bin, &work)?;
    eprintln!(
        "nginx on 127.0.0.1:{} ({}), answering keep-alive POSTs of 1 KiB",
        nginx.port,
        nginx_bin.display()
    );

    run.phase(&format!(
        "9. nginx: raw limit, wrk POST with the agent's body and headers, {concurrency} connections"
    ));
    let script = write_post_script(&work, entities, size)?;
    let post_before = wrk(
        &wrk_bin,
        &nginx,
        &Request::Post(script.clone()),
        "post-before",
        concurrency,
        seconds,
    )
    .await?;
    let get = wrk(&wrk_bin, &nginx, &Request::Get, "get", concurrency, seconds).await?;

    run.phase("9. nginx: agent restarted with one subscription to nginx (one event per request), drain");
    dir.write_config(Some(&Sub {
        url: nginx.url(HOOK_PATH),
        max_in_flight: concurrency,
    }))?;
    let count = DeliveredCount::open(&dir.db())?;
    let nginx0 = nginx.cpu_ticks();
    let nginx_wait0 = nginx.run_queue_wait_us();
    let mut a = Agent::spawn(&run.bin, &dir, "agent-x2.log")?;
    let spawned = a.spawned_at;
    // The same moment on the clock of nginx's `$msec`.
    let spawned_epoch_s = epoch_s();
    let perf = match &run.args.nginx_perf {
        Some(out) => Some(PerfRecord::start(a.pid, out)?),
        None => None,
    };
    let sampler = RssSampler::start(a.pid, Duration::from_millis(100));
    let deadline = spawned + Duration::from_secs(run.sizes.drain_limit_s);
    let mut progress_at = Instant::now();
    let drained: anyhow::Result<Instant> = async {
        loop {
            let delivered = count.read("bench")?;
            if delivered >= n {
                return Ok(Instant::now());
            }
            if a.has_exited() {
                bail!("the agent exited during the drain; log:\n{}", a.log_tail(20));
            }
            if Instant::now() > deadline {
                bail!(
                    "{delivered} of {n} delivered within {} s; log:\n{}",
                    run.sizes.drain_limit_s,
                    a.log_tail(20)
                );
            }
            if progress_at.elapsed() > Duration::from_secs(10) {
                progress_at = Instant::now();
                eprintln!(
                    "  drain: {delivered} / {n} delivered; VmRSS {} KiB",
                    a.mem().map(|m| m.rss_kib).unwrap_or(0)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    .await;
    let peak = sampler.finish().await;
    let hwm = a.mem().map(|m| m.hwm_kib).unwrap_or(0);
    let agent_ticks = sys::cpu_ticks(a.pid).unwrap_or(0);
    let agent_wait_us = sys::run_queue_wait_us(a.pid);
    let nginx1 = nginx.cpu_ticks();
    let nginx_wait_us = nginx.run_queue_wait_us().saturating_sub(nginx_wait0);
    if let Some(perf) = perf {
        perf.finish();
    }
    let done_at = drained?;
    let status = agent::wait_settled_status(&run.bin, &dir, Duration::from_secs(60)).await?;
    let (stop, _) = a.stop(Duration::from_secs(20));
    drop(a);
    let drain_s = (done_at - spawned).as_secs_f64();
    let drain_eps = n as f64 / drain_s.max(1e-9);
    run.set("nginx_drain_s", drain_s);
    run.set("nginx_drain_eps", drain_eps);
    run.set("nginx_cpu_us_per_event_drain", cpu_us(agent_ticks, n));
    run.set("nginx_server_cpu_us_per_event_drain", cpu_us(nginx1 - nginx0, n));
    // How loaded the machine was for them: the time their threads were
    // ready to run and waited for a CPU, per event.
    run.set(
        "nginx_agent_run_queue_wait_us_per_event",
        agent_wait_us.map(|w| w as f64 / n as f64),
    );
    run.set(
        "nginx_server_run_queue_wait_us_per_event",
        nginx_wait_us as f64 / n as f64,
    );
    run.set("nginx_rss_drain_peak_kib", peak.max(hwm));
    run.set("nginx_rss_drain_sampled_max_kib", peak);
    run.set("nginx_drain_status", &status);
    run.set("nginx_stop_after_drain_s", stop.as_secs_f64());

    if let Some(floor) = &floor_dir {
        floor.write_config(Some(&Sub {
            url: nginx.url(FLOOR_PATH),
            max_in_flight: concurrency,
        }))?;
        for mode in [FloorMode::HttpOnly, FloorMode::Drain] {
            run.phase(mode.title());
            let figures = run_floor(run, &nginx, floor, mode, n).await?;
            run.set(mode.key(), &figures);
        }
        run.set("nginx_floor_threads", run.args.nginx_floor_threads);
    }

    run.phase("9. nginx: raw limit again, after the drain");
    let post_after = wrk(
        &wrk_bin,
        &nginx,
        &Request::Post(script),
        "post-after",
        concurrency,
        seconds,
    )
    .await?;
    let raw_rps = (post_before.rps + post_after.rps) / 2.0;
    let ratio = drain_eps / raw_rps.max(1e-9);
    run.set("nginx_raw_post_rps", raw_rps);
    run.set("nginx_raw_post_before_rps", post_before.rps);
    run.set("nginx_raw_post_after_rps", post_after.rps);
    run.set("nginx_raw_get_rps", get.rps);
    run.set(
        "nginx_wrk_cpu_us_per_request",
        (post_before.wrk_cpu_us_per_request + post_after.wrk_cpu_us_per_request) / 2.0,
    );
    run.set(
        "nginx_server_cpu_us_per_request_raw",
        (post_before.nginx_cpu_us_per_request + post_after.nginx_cpu_us_per_request) / 2.0,
    );
    run.set("nginx_raw_post_before", &post_before);
    run.set("nginx_raw_post_after", &post_after);
    run.set("nginx_raw_get", &get);
    run.set("nginx_drain_ratio", ratio);
    for mode in [FloorMode::HttpOnly, FloorMode::Drain] {
        if let Some(eps) = run.figures.get(mode.key()).and_then(|f| f["events_per_s"].as_f64()) {
            let ratio = eps / raw_rps.max(1e-9);
            run.set(&format!("{}_ratio", mode.key()), ratio);
            eprintln!("{}: {ratio:.2} of nginx's raw POST rate", mode.key());
        }
    }

    // The access log is complete once nginx has stopped (buffered lines flushed).
    let stopped_clean = nginx.stop();
    let log = AccessLog::read(&work.join("access.log"), HOOK_PATH)?;
    let duplicates = log.lines as i64 - n as i64;
    let first_to_last = (log.last_s - log.first_s).max(1e-9);
    let startup_s = log.first_s - spawned_epoch_s;
    run.set("nginx_access_log", &log);
    run.set("nginx_access_log_duplicates", duplicates);
    run.set("nginx_drain_first_to_last_eps", log.distinct_ids as f64 / first_to_last);
    run.set("nginx_startup_first_request_s", startup_s);
    eprintln!(
        "start-up to the first request at nginx {startup_s:.3} s; drained {n} in {drain_s:.2} s from the agent's start = {drain_eps:.0} events/s \
         ({:.0}/s first to last request at nginx) = {ratio:.2} of nginx's raw POST rate {raw_rps:.0} req/s \
         (before {:.0}, after {:.0}; GET {:.0}); agent CPU {:.1} µs/event, nginx {:.1} µs/event \
         (raw: wrk {:.1}, nginx {:.1} µs/request); waits for a CPU (run queue) per event: agent {:.1} µs, \
         nginx {:.1} µs; RSS peak {} KiB (sampled {peak}, VmHWM {hwm}); \
         status: delivered_total {}, pending {}; access log: {} lines for {HOOK_PATH}, {} with 200, \
         {} distinct ids, duplicates {duplicates}, {:.0} bytes of head and {:.0} of body per request; \
         nginx stopped cleanly: {stopped_clean}",
        log.distinct_ids as f64 / first_to_last,
        post_before.rps,
        post_after.rps,
        get.rps,
        cpu_us(agent_ticks, n),
        cpu_us(nginx1 - nginx0, n),
        (post_before.wrk_cpu_us_per_request + post_after.wrk_cpu_us_per_request) / 2.0,
        (post_before.nginx_cpu_us_per_request + post_after.nginx_cpu_us_per_request) / 2.0,
        agent_wait_us.map_or(f64::NAN, |w| w as f64 / n as f64),
        nginx_wait_us as f64 / n as f64,
        peak.max(hwm),
        status["delivered_total"],
        status["pending"],
        log.lines,
        log.ok,
        log.distinct_ids,
        log.mean_head_bytes,
        log.mean_body_bytes,
    );
    if status["delivered_total"] != n || status["pending"] != 0 {
        bail!("the agent's status after the drain: {status}");
    }
    if log.ok < n || log.distinct_ids < n {
        bail!(
            "nginx's access log has {} answers 200 for {HOOK_PATH} with {} distinct ids, for {n} events",
            log.ok,
            log.distinct_ids
        );
    }
    if !run.args.keep {
        let _ = std::fs::remove_dir_all(&dir.dir);
        let _ = std::fs::remove_dir_all(&work);
        if let Some(floor) = floor_dir {
            let _ = std::fs::remove_dir_all(&floor.dir);
        }
    }
    Ok(())
}

/// Now, seconds since the epoch (the clock of nginx's `$msec`).
fn epoch_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The phase's rows of the table.
pub fn rows(run: &Run) -> Vec<Row> {
    let n = |k: &str| run.num(k);
    let c = run.args.concurrency;
    vec![
        Row::new(
            "nginx_drain",
            format!("9. drain to nginx, one event/request, {} events", run.sizes.nginx),
            n("nginx_drain_eps"),
            "ev/s",
        )
        .vs(
            format!("nginx return 200, wrk POST -c{c} (mean before/after)"),
            n("nginx_raw_post_rps"),
        )
        .ratio_at_least(0.5),
        Row::new(
            "nginx_cpu",
            "9. drain to nginx, agent CPU per event",
            n("nginx_cpu_us_per_event_drain"),
            "µs",
        )
        .vs("wrk's CPU per request", n("nginx_wrk_cpu_us_per_request")),
        Row::new(
            "nginx_rss",
            "9. drain to nginx, agent RSS peak",
            n("nginx_rss_drain_peak_kib").map(|v| v / MIB),
            "MiB",
        )
        .at_most(64.0),
    ]
}
