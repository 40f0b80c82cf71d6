//! Bad database files: the agent refuses to start with a clear message that
//! names the file and what to do, exits 1, and leaves the file as it was.

mod common;

use std::process::Command;

use common::*;

fn start_fails(agent: &Agent) -> String {
    let out = Command::new(binary())
        .args(["run", "--config"])
        .arg(&agent.config)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "exit 1, got {:?}", out.status);
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn write_db(agent: &Agent, bytes: &[u8]) {
    std::fs::create_dir_all(agent.db().parent().expect("dir")).expect("data dir");
    std::fs::write(agent.db(), bytes).expect("write db");
}

#[test]
fn a_file_that_is_not_sqlite() {
    let agent = Agent::new("");
    let junk = b"this is a spreadsheet, not a database\n".repeat(200);
    write_db(&agent, &junk);
    let err = start_fails(&agent);
    assert!(err.contains(&agent.db().display().to_string()), "{err}");
    assert!(
        err.contains("not a database") || err.contains("not a readable store-outbox database"),
        "{err}"
    );
    assert!(err.contains("move it aside"), "says what to do: {err}");
    assert_eq!(
        std::fs::read(agent.db()).expect("still there"),
        junk,
        "left in place, untouched"
    );
}

#[test]
fn a_truncated_database() {
    let mut agent = Agent::new("");
    agent.start();
    let lines: Vec<String> = (0..300)
        .map(|i| {
            event(
                &format!("t-{i}"),
                "till:1",
                "SaleCreated",
                serde_json::json!("x".repeat(500)),
            )
        })
        .collect();
    send_lines(&agent.socket(), &lines);
    assert!(agent.stop().success());
    let bytes = std::fs::read(agent.db()).expect("db");
    assert!(bytes.len() > 8192);
    let cut = &bytes[..bytes.len() / 3];
    std::fs::write(agent.db(), cut).expect("truncate");
    let out = Command::new(binary())
        .args(["run", "--config"])
        .arg(&agent.config)
        .output()
        .expect("run");
    if out.status.success() {
        panic!("started on a truncated database");
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&agent.db().display().to_string()), "{err}");
    assert_eq!(std::fs::read(agent.db()).expect("still there"), cut, "left in place");
}

#[test]
fn a_database_from_a_newer_version() {
    let mut agent = Agent::new("");
    agent.start();
    assert!(agent.stop().success());
    let db = rusqlite::Connection::open(agent.db()).expect("open");
    db.pragma_update(None, "user_version", 99).expect("bump");
    drop(db);
    let err = start_fails(&agent);
    assert!(
        err.contains("schema version 99") && err.contains("newer store-outbox"),
        "{err}"
    );
    let db = rusqlite::Connection::open(agent.db()).expect("open");
    let v: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0)).expect("version");
    assert_eq!(v, 99, "left as it was");
}

#[test]
fn an_unusable_data_directory_is_named() {
    // The data directory's path runs through a regular file: it cannot be
    // created (the same error path as a directory the service may not write).
    let agent = Agent::new("");
    let blocker = agent.dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").expect("file");
    let text = std::fs::read_to_string(&agent.config).expect("config");
    let data = agent.dir.path().join("data");
    std::fs::write(
        &agent.config,
        text.replace(&data.display().to_string(), &blocker.join("data").display().to_string()),
    )
    .expect("config");
    let err = start_fails(&agent);
    assert!(
        err.contains("not-a-dir/data") && err.contains("cannot create the data directory"),
        "{err}"
    );
}
