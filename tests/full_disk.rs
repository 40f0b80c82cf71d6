//! A real full filesystem under the outbox: the data directory on a small
//! tmpfs (2 or 8 MiB), no `storage.max_db_bytes` cap in the way (the default
//! 2 GiB), the receiver down. SQLite hits `SQLITE_FULL`; producers must get
//! `storage_full` (socket) and 507 (HTTP), spool files must wait, the agent
//! must keep running, nothing acknowledged may be lost or half-stored, and
//! ingest and delivery must recover when space returns (`mount -o
//! remount,size=8m`).
//!
//! Three scenarios: space returns before the endpoint does; the endpoint
//! comes back while the disk is still full (outcomes cannot be committed: the
//! agent must keep the pace of its backoff, not resend in a loop); the agent
//! (re)starts on a disk that something else filled while it was stopped (it
//! must come up and answer `storage_full`, not exit: under systemd an exit
//! becomes a restart loop, then a failed unit that stays down after space
//! returns).
//!
//! Needs root (`mount -t tmpfs`); `STORE_OUTBOX_NO_MOUNT=1` skips it.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// The agent and the tmpfs under its data directory. Dropped in this order:
/// the agent process (killed in `drop`), the mount, then the agent's
/// temporary directory (the mount point must be unmounted by then).
struct Fixture {
    mount: TmpfsMount,
    agent: Agent,
    rx: Receiver,
    data: std::path::PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.agent.kill9();
    }
}

/// What filling the disk gave.
struct Filled {
    acked: HashSet<String>,
    refused: HashSet<String>,
}

fn setup(test: &str, size: &str) -> Option<Fixture> {
    let mut rx = Receiver::start();
    rx.shut();
    let sub = subscription("erp", &rx.url(), "retry = { initial = \"100ms\", max = \"300ms\" }");
    let agent = Agent::new(&sub);
    let data = agent.dir.path().join("data");
    let mount = TmpfsMount::new(&data, size, test)?;
    let mut fx = Fixture { agent, mount, rx, data };
    fx.agent.start();
    Some(fx)
}

fn running(agent: &mut Agent) -> bool {
    agent
        .child
        .as_mut()
        .is_some_and(|c| c.try_wait().expect("try_wait").is_none())
}

/// "used avail" of the filesystem, KiB.
fn df(path: &Path) -> String {
    let out = std::process::Command::new("df")
        .args(["-k", "--output=used,avail"])
        .arg(path)
        .output()
        .expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" used, ")
        + " free KiB"
}

/// The admin port from the agent's config.
fn admin_port(agent: &Agent) -> u16 {
    let text = std::fs::read_to_string(&agent.config).expect("config");
    let admin = text.split("[admin]").nth(1).expect("[admin]");
    let listen = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("listen = \""))
        .expect("admin listen");
    listen
        .trim_end_matches('"')
        .rsplit(':')
        .next()
        .expect("port")
        .parse()
        .expect("port number")
}

fn big_event(id: &str, i: usize) -> String {
    event(
        id,
        &format!("till:{}", i % 7),
        "SaleCreated",
        serde_json::json!({"n": i, "lines": "p".repeat(1000)}),
    )
}

/// Pipelined batches of 1 KiB events on the socket until three batches came
/// back (partly) refused. Every refusal must be `storage_full`.
fn fill(fx: &mut Fixture, prefix: &str) -> Filled {
    let mut acked = HashSet::new();
    let mut refused = HashSet::new();
    let mut full_batches = 0;
    let mut n = 0;
    while full_batches < 3 {
        assert!(n < 50_000, "2 MiB never filled up: {} acknowledged", acked.len());
        let lines: Vec<String> = (n..n + 50).map(|i| big_event(&format!("{prefix}-{i}"), i)).collect();
        let mut any_refused = false;
        for (k, reply) in send_lines(&fx.agent.socket(), &lines).into_iter().enumerate() {
            let id = format!("{prefix}-{}", n + k);
            if reply["ok"] == true {
                assert_eq!(reply["duplicate"], false, "{reply}");
                acked.insert(id);
            } else {
                assert_eq!(reply["error"]["code"], "storage_full", "{id}: {reply}");
                refused.insert(id);
                any_refused = true;
            }
        }
        if any_refused {
            full_batches += 1;
        }
        n += 50;
    }
    // A refused group commit leaves the room its WAL frames took behind the
    // last valid frame: smaller transactions still fit there. Single events
    // until one is refused use that slack up.
    loop {
        assert!(n < 50_000, "single events never refused: {} acknowledged", acked.len());
        let id = format!("{prefix}-{n}");
        let reply = &send_lines(&fx.agent.socket(), &[big_event(&id, n)])[0];
        n += 1;
        if reply["ok"] == true {
            acked.insert(id);
        } else {
            assert_eq!(reply["error"]["code"], "storage_full", "{id}: {reply}");
            refused.insert(id);
            break;
        }
    }
    assert!(acked.len() > 100, "some events went in before the disk filled");
    assert!(
        running(&mut fx.agent),
        "the agent survives a full disk:\n{}",
        fx.agent.log()
    );
    println!(
        "full disk: {} acknowledged, {} refused with storage_full; tmpfs {}",
        acked.len(),
        refused.len(),
        df(&fx.data)
    );
    Filled { acked, refused }
}

/// After recovery: every acknowledged event delivered, in order, and no
/// refused one stored or delivered. Returns (delivered ids, duplicates).
fn check_end(fx: &Fixture, filled: &Filled, extra: &[&str]) -> (usize, usize) {
    let mut wanted = filled.acked.clone();
    wanted.extend(extra.iter().map(|s| s.to_string()));
    wait_until(Duration::from_secs(120), "every acknowledged event delivered", || {
        wanted.is_subset(&fx.rx.delivered_ids())
    });
    let delivered = fx.rx.delivered();
    let duplicates = assert_entity_order(&delivered);
    let ids = fx.rx.delivered_ids();
    let stray: Vec<_> = ids.intersection(&filled.refused).collect();
    assert!(stray.is_empty(), "refused events were delivered: {stray:?}");
    let db = fx.agent.open_db();
    for id in &filled.refused {
        let n: i64 = db
            .query_row("SELECT COUNT(*) FROM events WHERE event_id = ?1", [id], |r| r.get(0))
            .expect("count");
        assert_eq!(n, 0, "{id} was refused but stored");
    }
    (ids.len(), duplicates)
}

#[test]
fn a_full_filesystem_refuses_with_storage_full_keeps_the_acknowledged_and_recovers() {
    let Some(mut fx) = setup("full_disk", "size=2m") else {
        return;
    };
    let filled = fill(&mut fx, "fd");

    // HTTP: 507 with storage_full. The slack a refused transaction leaves
    // (see `fill`) may still take a smaller one, so an event that fits is
    // acknowledged, not an error: the bound says the slack is small.
    let Filled { mut acked, mut refused } = filled;
    let mut http_acked = 0;
    loop {
        let id = format!("fd-http-{http_acked}");
        let (code, body) = fx.agent.http_post(big_event(&id, 0).as_bytes());
        if code == 200 {
            assert_eq!(body["results"][0]["ok"], true, "{body}");
            acked.insert(id);
            http_acked += 1;
            assert!(http_acked < 20, "HTTP ingest never refused on a full disk: {body}");
            continue;
        }
        assert_eq!(code, 507, "{body}");
        assert_eq!(body["results"][0]["error"]["code"], "storage_full", "{body}");
        refused.insert(id);
        break;
    }
    // The spool file waits in incoming/ (the same slack may take one first).
    let mut spool_acked = Vec::new();
    let waiting = loop {
        let k = spool_acked.len();
        let name = format!("waits-{k}.json");
        fx.agent
            .drop_file(&name, big_event(&format!("fd-spool-{k}"), 3).as_bytes());
        std::thread::sleep(Duration::from_millis(700));
        assert_eq!(fx.agent.status()["spool"]["failed"], 0, "not moved to failed/");
        if fx.agent.spool().join("incoming").join(&name).exists() {
            break format!("fd-spool-{k}");
        }
        acked.insert(format!("fd-spool-{k}"));
        spool_acked.push(name);
        assert!(spool_acked.len() < 10, "spool files never wait on a full disk");
    };
    let (hz, hz_body) = http_request(admin_port(&fx.agent), "GET", "/healthz", b"");
    println!(
        "full disk: HTTP ingest 507 (after {http_acked} more fitted); spool file waits (after {} more fitted); \
         /healthz {hz} {hz_body}",
        spool_acked.len()
    );
    let filled = Filled { acked, refused };

    let status = fx.agent.status();
    assert_eq!(status["subscriptions"][0]["pending"], filled.acked.len(), "{status}");
    assert_eq!(status["ingest"]["accepted_total"], filled.acked.len(), "{status}");

    // Space returns: ingest recovers by itself, the spool file goes in.
    fx.mount.remount("size=8m");
    let recovered = Instant::now();
    wait_until(Duration::from_secs(30), "socket ingest recovers", || {
        send_lines(&fx.agent.socket(), &[big_event("fd-after", 1)])[0]["ok"] == true
    });
    let ingest_back = recovered.elapsed();
    let (code, body) = fx.agent.http_post(big_event("fd-http-after", 2).as_bytes());
    assert_eq!(code, 200, "{body}");
    // The spool is rescanned every few seconds.
    let waiting_file = fx
        .agent
        .spool()
        .join(format!("incoming/waits-{}.json", spool_acked.len()));
    wait_until(Duration::from_secs(30), "the spool file goes in", || {
        !waiting_file.exists()
    });
    let spool_back = recovered.elapsed();
    assert!(running(&mut fx.agent), "{}", fx.agent.log());

    // The endpoint comes back: everything acknowledged is delivered, in order.
    fx.rx.restart();
    let back = Instant::now();
    let (delivered, duplicates) = check_end(&fx, &filled, &["fd-after", "fd-http-after", &waiting]);
    println!(
        "full disk: space back: the socket took events again after {ingest_back:?}, the waiting spool file \
         after {spool_back:?}; endpoint back: \
         {delivered} delivered in {:?} ({} acknowledged before the disk filled + 3 after), \
         {duplicates} duplicates, 0 order violations, 0 lost, 0 refused events stored; tmpfs {}",
        back.elapsed(),
        filled.acked.len(),
        df(&fx.data)
    );
}

/// The endpoint comes back while the disk is still full: deliveries reach it
/// but their outcome cannot be committed, so they must be sent again later
/// (at least once) — at the backoff pace, not in a loop. Status must say the
/// outbox cannot take events. Then space returns and everything drains.
#[test]
fn endpoint_back_while_the_disk_is_full_keeps_the_pace_and_drains_after() {
    let Some(mut fx) = setup("full_disk", "size=2m") else {
        return;
    };
    let filled = fill(&mut fx, "fe");
    let mut problems = Vec::new();

    // Status should say what producers are told: storage is full.
    let status = fx.agent.status();
    if status["db"]["full"] != true {
        problems.push(format!(
            "status says db.full = {} while every event is refused with storage_full (disk full): {}",
            status["db"]["full"], status["db"]
        ));
    }

    // Wait until outcome writes fail too (the WAL may hold some slack left by
    // the big ingest transactions that failed), then count attempts whose
    // outcome could not be committed, against the closed port, for a second.
    let unrecorded = |agent: &Agent| agent.log().matches("cannot record a delivery attempt").count();
    let t = Instant::now();
    while unrecorded(&fx.agent) < 3 && t.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let outcomes_fail = unrecorded(&fx.agent) >= 3;
    let before = unrecorded(&fx.agent);
    std::thread::sleep(Duration::from_secs(1));
    let closed_port_rate = unrecorded(&fx.agent) - before;
    println!(
        "full disk, endpoint down: outcomes cannot be committed: {outcomes_fail}; \
         {closed_port_rate} unrecorded probes in 1 s against the closed port"
    );
    // retry.initial is 100 ms: while offline, one probe per 100 ms at most.
    if closed_port_rate > 2 * 10 {
        problems.push(format!(
            "{closed_port_rate} probes in 1 s against a closed port (at most 10 at retry.initial = 100ms): \
             a probe whose outcome cannot be committed is repeated at once, in a loop"
        ));
    }

    fx.rx.restart();
    let window = Duration::from_secs(5);
    std::thread::sleep(window);
    let requests = fx.rx.request_count();
    let distinct = fx.rx.delivered_ids().len();
    let log_lines = fx.agent.log().lines().count();
    println!(
        "full disk, endpoint back, disk still full: {requests} requests in {window:?} for {distinct} distinct \
         events; agent log {log_lines} lines; tmpfs {}",
        df(&fx.data)
    );
    // retry.initial is 100 ms: a first burst of max_in_flight (16), then at
    // most one request per entity (7) per 100 ms; twice that as margin.
    let bound = 2 * (16 + 7 * window.as_millis() as usize / 100);
    if requests > bound {
        problems.push(format!(
            "{requests} requests in {window:?} for {distinct} distinct events (bound {bound}): deliveries whose \
             outcome cannot be committed are resent at once, in a loop, and each failure logs 3 lines \
             ({log_lines} log lines)"
        ));
    }
    assert!(running(&mut fx.agent), "{}", fx.agent.log());

    // Space returns: everything drains, in order.
    fx.mount.remount("size=8m");
    let back = Instant::now();
    let (delivered, duplicates) = check_end(&fx, &filled, &[]);
    println!(
        "full disk: space back: {delivered} delivered in {:?}, {duplicates} duplicates (resends whose \
         outcome could not be committed), 0 order violations, 0 lost",
        back.elapsed()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The disk filled up while the agent was stopped (logs, a reboot after a
/// crash): the agent must not exit (under systemd that is a restart every 5 s,
/// then a failed unit after 5 starts in 10 min, which stays down when space
/// returns). It waits, says why, keeps its backlog, and starts once space is
/// back: then it takes events again and drains everything in order.
#[test]
fn the_agent_waits_for_space_on_a_full_disk_then_starts() {
    // 8 MiB: the room the events and the WAL take before the ballast fills
    // the rest.
    let Some(mut fx) = setup("full_disk", "size=8m") else {
        return;
    };
    // One at a time, as a till sends them: a commit each, whatever the
    // machine's speed (the WAL then grows to about 4 MiB between
    // checkpoints, more than a 2 MiB disk holds).
    let acked: HashSet<String> = (0..200)
        .map(|i| {
            let r = send_lines(&fx.agent.socket(), &[big_event(&format!("fs-{i}"), i)]);
            assert_eq!(r.len(), 1, "one answer");
            assert_eq!(r[0]["ok"], true, "event {i}: {}; tmpfs {}", r[0], df(&fx.data));
            r[0]["event_id"].as_str().expect("id").to_string()
        })
        .collect();
    assert!(fx.agent.stop().success(), "clean stop");
    // Something else takes every free byte of the filesystem.
    let ballast = fx.data.join("ballast");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&ballast).expect("ballast");
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    println!(
        "full disk at start: 200 acknowledged, agent stopped; tmpfs {}",
        df(&fx.data)
    );

    // The agent as systemd would start it, with a NOTIFY_SOCKET we listen on;
    // its log goes to a file we read.
    let log_path = fx.agent.dir.path().join("full-start.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let notify = NotifySocket::bind(fx.agent.dir.path());
    let child = std::process::Command::new(binary())
        .args(["run", "--config"])
        .arg(&fx.agent.config)
        .env("NOTIFY_SOCKET", &notify.path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn");
    fx.agent.child = Some(child);
    wait_until(
        Duration::from_secs(30),
        "the agent says it waits for disk space",
        || std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains("waiting for free space")),
    );
    std::thread::sleep(Duration::from_millis(500));
    if let Some(status) = fx.agent.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
        panic!(
            "the agent exited on a full disk ({status}):\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    }
    let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(log_text.contains("disk"), "the log names the full disk:\n{log_text}");
    // systemd hears why, and gets more start time instead of killing the
    // start at TimeoutStartSec (then restarting into its start limit).
    let waiting = notify.messages(Duration::from_secs(15), |m| m.contains("EXTEND_TIMEOUT_USEC="));
    assert!(
        waiting
            .iter()
            .any(|m| m.contains("EXTEND_TIMEOUT_USEC=") && m.contains("STATUS=waiting for free disk space")),
        "sd_notify while waiting: {waiting:?}"
    );
    assert!(
        !waiting.iter().any(|m| m.contains("READY=1")),
        "READY=1 before the outbox opened: {waiting:?}"
    );
    assert!(
        !log_text.contains("move it aside"),
        "a full disk is not a broken database:\n{log_text}"
    );
    // A technician's `status` says why instead of a bare I/O error.
    let status = fx.agent.cli(&["status"]);
    let says = format!(
        "{}{}",
        String::from_utf8_lossy(&status.stdout),
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(
        says.contains("disk") && says.contains("full"),
        "status on a full disk: {says}"
    );

    // Space returns (the ballast goes, and the filesystem grows: the drain's
    // WAL alone would fill the ballast's room again): the agent starts by
    // itself (it tries every 10 s).
    std::fs::remove_file(&ballast).expect("remove ballast");
    fx.mount.remount("size=16m");
    let back = Instant::now();
    while std::os::unix::net::UnixStream::connect(fx.agent.socket()).is_err() {
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "the agent did not start within 60 s of space coming back; its log:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let ready = notify.messages(Duration::from_secs(15), |m| m.contains("READY=1"));
    assert!(
        ready.iter().any(|m| m.contains("READY=1")),
        "READY=1 once started: {ready:?}"
    );
    let reply = &send_lines(&fx.agent.socket(), &[big_event("fs-after", 1)])[0];
    assert_eq!(reply["ok"], true, "{reply}");
    fx.rx.restart();
    let filled = Filled {
        acked,
        refused: HashSet::new(),
    };
    let (delivered, duplicates) = check_end(&fx, &filled, &["fs-after"]);
    println!(
        "full disk at start: waited without exiting, started when space came back; {delivered} delivered, \
         {duplicates} duplicates, 0 order violations, 0 lost"
    );
}
