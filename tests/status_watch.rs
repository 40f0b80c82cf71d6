//! `store-outbox status --watch`: the real CLI against a real agent. Piped
//! (not a terminal) it prints report after report, each headed by its time
//! and without escape codes, with the backlog's trend since the watch
//! began; on a terminal (tmux) it redraws in place.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

/// Reads the child's stdout lines on a thread.
fn lines_of(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Collects lines until `until` holds for the text so far.
fn read_until(rx: &mpsc::Receiver<String>, text: &mut String, what: &str, until: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !until(text) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                text.push_str(&line);
                text.push('\n');
            }
            Err(_) => panic!("{what}: not seen in the watch's output:\n{text}"),
        }
    }
}

#[test]
fn watch_without_a_terminal_prints_report_after_report_with_the_trend() {
    let mut rx = Receiver::start();
    rx.shut();
    let mut agent = Agent::new(&subscription("erp", &rx.url(), ""));
    agent.start();
    let mut watch = Process(
        Command::new(binary())
            .arg("--config")
            .arg(&agent.config)
            .args(["status", "--watch"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("status --watch"),
    );
    let lines = lines_of(&mut watch.0);
    let mut text = String::new();
    read_until(&lines, &mut text, "the first report and its trend", |t| {
        t.contains("backlog since the watch began") && t.contains("pending 0 -> 0")
    });
    assert!(text.starts_with("--- "), "each report is headed by its time:\n{text}");

    // The endpoint is down: the backlog grows while we watch.
    agent.send_events(&Events::new("w", 0..10, "SaleCreated"));
    read_until(&lines, &mut text, "the growing backlog", |t| {
        t.contains("erp              pending 0 -> 10 (+10): growing")
    });
    let reports = text.matches("\n--- ").count() + 1;
    assert!(reports >= 2, "{text}");
    assert_eq!(
        text.matches("SUBSCRIPTION").count(),
        reports,
        "one table per report:\n{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "no escape codes when not on a terminal:\n{text:?}"
    );

    // --count ends it by itself; --json makes one document a line.
    let out = run_ok(
        Command::new(binary())
            .arg("--config")
            .arg(&agent.config)
            .args(["status", "--watch", "--json", "--count", "2"]),
        "status --watch --json --count 2",
    );
    let docs: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON document a line"))
        .collect();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[1]["subscriptions"][0]["pending"], 10);
}

#[test]
fn watch_on_a_terminal_redraws_in_place() {
    if Command::new("tmux").arg("-V").output().is_err() {
        panic!("tmux is needed for the terminal test (Debian package tmux; scripts/install-test-peers installs it)");
    }
    let mut agent = Agent::new("");
    agent.start();
    let socket = agent.dir.path().join("tmux.sock");
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .arg("-S")
            .arg(&socket)
            .args(args)
            .output()
            .expect("tmux")
    };
    let command = format!("{} --config {} status --watch", binary(), agent.config.display());
    let started = tmux(&["new-session", "-d", "-x", "160", "-y", "40", &command]);
    assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));
    struct KillServer<'a>(&'a dyn Fn(&[&str]) -> std::process::Output);
    impl Drop for KillServer<'_> {
        fn drop(&mut self) {
            let _ = (self.0)(&["kill-server"]);
        }
    }
    let _server = KillServer(&tmux);
    let screen = || String::from_utf8_lossy(&tmux(&["capture-pane", "-p"]).stdout).to_string();
    // Two different refresh times seen, and the screen still holds one report.
    let mut stamps = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while stamps.len() < 2 {
        assert!(Instant::now() < deadline, "no second refresh on the terminal:\n{last}");
        std::thread::sleep(Duration::from_millis(200));
        last = screen();
        if let Some(line) = last.lines().find(|l| l.starts_with("refreshing every 2s")) {
            stamps.insert(line.to_string());
        }
    }
    assert_eq!(last.matches("store-outbox ").count(), 1, "redrawn in place:\n{last}");
    assert!(last.contains("no subscriptions"), "{last}");
}
