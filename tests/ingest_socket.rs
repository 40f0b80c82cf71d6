//! The Unix socket way in, `send`, and the agent's lifecycle.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn bad_lines_get_the_right_errors_and_do_not_disturb_good_ones() {
    let mut agent = Agent::with_ingest("max_event_bytes = \"1KiB\"", "");
    agent.start();
    let big = event("big", "till:1", "SaleCreated", serde_json::json!("x".repeat(5000)));
    let lines = vec![
        event("g1", "till:1", "SaleCreated", serde_json::json!(1)),
        "{not json".to_string(),
        event("g2", "till:1", "SaleCreated", serde_json::json!(2)),
        r#"{"type":"SaleCreated","entity":"till:1","payload":1,"bogus":true}"#.to_string(),
        big,
        r#"{"type":"SaleCreated","payload":1}"#.to_string(),
        "[1,2]".to_string(),
        String::new(),
        event("g3", "till:1", "SaleCreated", serde_json::json!(3)),
    ];
    let replies = send_lines(&agent.socket(), &lines);
    let code = |i: usize| replies[i]["error"]["code"].as_str().unwrap_or("ok").to_string();
    assert_eq!(
        (0..lines.len()).map(code).collect::<Vec<_>>(),
        vec![
            "ok",
            "invalid_json",
            "ok",
            "invalid_event",
            "too_large",
            "invalid_event",
            "invalid_event",
            "invalid_json",
            "ok"
        ]
    );
    assert_eq!(replies[3]["error"]["message"], "bogus: unknown field");
    assert_eq!(replies[5]["error"]["message"], "entity: missing");
    for (i, seq) in [(0, 1), (2, 2), (8, 3)] {
        assert_eq!(replies[i]["ok"], true);
        assert_eq!(replies[i]["entity_seq"], seq, "good events keep their order");
    }
    let status = agent.status();
    assert_eq!(status["ingest"]["accepted_total"], 3);
    assert_eq!(status["ingest"]["rejected_total"], 6);
    let stored: i64 = agent
        .open_db()
        .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
        .expect("count");
    assert_eq!(stored, 3);
}

#[test]
fn a_duplicate_event_id_is_acknowledged_again_and_stored_once() {
    let rx = Receiver::start();
    let mut agent = Agent::new(&subscription("erp", &rx.url(), ""));
    agent.start();
    let line = event("same-1", "order:9", "SaleCreated", serde_json::json!({"a": 1}));
    let first = send_lines(&agent.socket(), std::slice::from_ref(&line));
    let again = send_lines(&agent.socket(), &[line.clone(), line]);
    assert_eq!(first[0]["duplicate"], false);
    for r in &again {
        assert_eq!(r["duplicate"], true);
        assert_eq!(r["entity_seq"], first[0]["entity_seq"]);
    }
    wait_until(Duration::from_secs(20), "delivered", || rx.delivered_ids().len() == 1);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rx.requests().len(), 1, "delivered once");
    assert_eq!(agent.status()["ingest"]["duplicate_total"], 2);
}

#[test]
fn a_generated_event_id_is_a_uuid_v7() {
    let mut agent = Agent::new("");
    agent.start();
    let replies = send_lines(
        &agent.socket(),
        &[r#"{"type":"SaleCreated","entity":"till:1","payload":{}}"#.to_string()],
    );
    let id = replies[0]["event_id"].as_str().expect("id");
    assert_eq!(uuid::Uuid::parse_str(id).expect("uuid").get_version_num(), 7);
}

#[test]
fn send_prints_the_reply_and_sets_the_exit_code() {
    let mut agent = Agent::new("");
    agent.start();
    let out = agent.cli(&[
        "send",
        "--type",
        "SaleCreated",
        "--entity",
        "order:4711",
        "--id",
        "cli-1",
        "--attr",
        "terminal=03",
        r#"{"total": 9.5}"#,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).expect("reply JSON");
    assert_eq!(
        reply,
        serde_json::json!({"ok": true, "event_id": "cli-1", "entity_seq": 1, "duplicate": false})
    );
    let (attributes, payload): (String, String) = agent
        .open_db()
        .query_row(
            "SELECT attributes, payload FROM events WHERE event_id = 'cli-1'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("stored");
    assert_eq!(attributes, r#"{"terminal":"03"}"#);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&payload).expect("json"),
        serde_json::json!({"total": 9.5})
    );

    let mut child = Command::new(binary())
        .arg("--config")
        .arg(&agent.config)
        .args(["send", "--type", "SaleCreated", "--entity", "order:4711", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    use std::io::Write;
    child.stdin.take().expect("stdin").write_all(b"[1, 2]").expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"entity_seq\":2"));

    let bad = agent.cli(&["send", "--type", "1bad", "--entity", "x", "{}"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stdout).contains("invalid_event"));
    let bad_json = agent.cli(&["send", "--type", "T", "--entity", "x", "{nope"]);
    assert_eq!(bad_json.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_json.stderr).contains("PAYLOAD_JSON"));
}

#[test]
fn send_without_a_running_agent_says_so() {
    let agent = Agent::new("");
    let out = agent.cli(&["send", "--type", "T", "--entity", "x"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ingest.sock") && err.contains("is the agent running"),
        "{err}"
    );
}

#[test]
fn sigterm_stops_cleanly_and_removes_the_socket() {
    let mut agent = Agent::new("");
    agent.start();
    send_lines(
        &agent.socket(),
        &[event("s-1", "till:1", "SaleCreated", serde_json::json!(1))],
    );
    let status = agent.stop();
    assert!(status.success(), "exit 0 on SIGTERM, got {status}");
    assert!(!agent.socket().exists());
    assert!(agent.log().contains("stopped"));
    // And it starts again on the same database.
    agent.start();
    let replies = send_lines(
        &agent.socket(),
        &[event("s-2", "till:1", "SaleCreated", serde_json::json!(2))],
    );
    assert_eq!(replies[0]["entity_seq"], 2);
}

#[test]
fn a_stale_socket_is_replaced_and_a_live_one_refused() {
    let mut agent = Agent::new("");
    // A socket file left behind by a crash: bound, then the listener dropped.
    std::fs::create_dir_all(agent.dir.path()).expect("dir");
    drop(std::os::unix::net::UnixListener::bind(agent.socket()).expect("bind"));
    assert!(agent.socket().exists());
    agent.start();

    // A second agent (other data directory, same socket) must refuse to start.
    let other = tempfile::tempdir().expect("tempdir");
    let config = other.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\ndata_dir = \"{}\"\n[ingest]\nsocket = \"{}\"\nhttp_listen = \"off\"\n[admin]\nlisten = \"off\"\n",
            other.path().join("d").display(),
            agent.socket().display()
        ),
    )
    .expect("config");
    let out = cli_with_config("run", &config);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("another store-outbox"), "{}", stderr(&out));
    // The first one is undisturbed.
    assert_eq!(
        send_lines(&agent.socket(), &[event("x", "t", "T", serde_json::json!(1))])[0]["ok"],
        true
    );
}

#[test]
fn one_data_directory_one_agent() {
    let mut agent = Agent::new("");
    agent.start();
    let text = std::fs::read_to_string(&agent.config).expect("config");
    let second = agent.dir.path().join("second.toml");
    std::fs::write(&second, text.replace("ingest.sock", "other.sock")).expect("config");
    let out = cli_with_config("run", &second);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("already runs on this data directory"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn check_config_names_file_line_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        "[agent]\nstore_id = \"1\"\n\n[storage]\nretain_delivered = \"a week\"\n",
    )
    .expect("write");
    let out = cli_with_config("check-config", &path);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(&path.display().to_string()) && err.contains("line 5") && err.contains("a week"),
        "{err}"
    );

    std::fs::write(&path, "[agent]\nstore_id = \"1\"\nstoreid = \"2\"\n").expect("write");
    let out = cli_with_config("check-config", &path);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("line 3") && err.contains("storeid"), "{err}");

    std::fs::write(
        &path,
        format!("[[subscription]]\nname = \"erp\"\nurl = \"https://erp\"\nsecret = \"{SECRET}\"\n"),
    )
    .expect("write");
    let out = Command::new(binary())
        .args(["check-config"])
        .env("STORE_OUTBOX_CONFIG", &path)
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 subscription"));

    let missing = cli_with_config("check-config", std::path::Path::new("/nonexistent/c.toml"));
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("/nonexistent/c.toml"), "{}", stderr(&missing));
}

#[test]
fn without_a_config_file_it_runs_on_defaults_under_the_current_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(binary())
        .arg("run")
        .current_dir(dir.path())
        .env_remove("STORE_OUTBOX_CONFIG")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let socket = dir.path().join("store-outbox-data/ingest.sock");
    wait_until(Duration::from_secs(30), "default socket", || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    });
    let out = Command::new(binary())
        .args(["send", "--type", "SaleCreated", "--entity", "till:1", "{}"])
        .current_dir(dir.path())
        .env_remove("STORE_OUTBOX_CONFIG")
        .output()
        .expect("send");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.path().join("store-outbox-data/outbox.db").exists());
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn lines_arriving_during_shutdown_get_shutting_down_or_are_kept() {
    use std::io::{BufRead, BufReader, Write};
    let mut agent = Agent::new("");
    agent.start();
    let stream = std::os::unix::net::UnixStream::connect(agent.socket()).expect("connect");
    let mut writer = stream.try_clone().expect("clone");
    let pid = agent.child.as_ref().expect("running").id();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(100));
    let line = event("late-1", "till:1", "SaleCreated", serde_json::json!(1));
    let _ = writer.write_all(format!("{line}\n").as_bytes());
    let mut reply = String::new();
    let _ = BufReader::new(stream).read_line(&mut reply);
    let status = agent.child.take().expect("child").wait().expect("wait");
    assert!(status.success());
    agent.start();
    let stored: i64 = agent
        .open_db()
        .query_row("SELECT COUNT(*) FROM events WHERE event_id = 'late-1'", [], |r| {
            r.get(0)
        })
        .expect("count");
    if reply.contains("\"ok\":true") {
        assert_eq!(stored, 1, "acknowledged, so kept");
    } else {
        // Refused (or the connection closed without a reply): not stored.
        assert!(reply.is_empty() || reply.contains("shutting_down"), "{reply}");
        assert_eq!(stored, 0, "not acknowledged, not stored");
    }
}

/// CPU time (user + system) of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit_once(')').expect("comm").1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

#[test]
fn an_idle_agent_stays_idle() {
    // A busy loop (e.g. the spool watcher reacting to its own directory
    // reads) burns a store PC's CPU for nothing. Idle means well under 25% of
    // one core, on any machine.
    let mut agent = Agent::new("");
    agent.start();
    agent.drop_file(
        "one.json",
        event("idle-1", "till:1", "SaleCreated", serde_json::json!(1)).as_bytes(),
    );
    wait_until(Duration::from_secs(30), "spool file taken", || {
        agent.stored_events() == 1
    });
    let pid = agent.child.as_ref().expect("running").id();
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(4));
    let used = cpu_ticks(pid) - before;
    // 100 ticks a second on Linux: 4 s of one core is 400 ticks.
    assert!(used < 100, "idle agent used {used} ticks of CPU in 4 s");
}
