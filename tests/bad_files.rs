//! Bad database files: the agent refuses to start with a clear message that
//! names the file and what to do, exits 1, and leaves the file as it was.
//!
//! Also a truly read-only database as root (root ignores file modes): the
//! data directory on a tmpfs remounted read-only, and an immutable
//! (`chattr +i`) database file. Those two need root and `mount`;
//! `STORE_OUTBOX_NO_MOUNT=1` skips them.

mod common;

use std::process::Command;

use common::*;

fn start_fails(agent: &Agent) -> String {
    let out = cli_with_config("run", &agent.config);
    assert_eq!(out.status.code(), Some(1), "exit 1, got {:?}", out.status);
    stderr(&out)
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
    agent.send_events(&Events::new("t", 0..300, "SaleCreated").payload(|_| serde_json::json!("x".repeat(500))));
    assert!(agent.stop().success());
    let bytes = std::fs::read(agent.db()).expect("db");
    assert!(bytes.len() > 8192);
    let cut = &bytes[..bytes.len() / 3];
    std::fs::write(agent.db(), cut).expect("truncate");
    let out = cli_with_config("run", &agent.config);
    if out.status.success() {
        panic!("started on a truncated database");
    }
    let err = stderr(&out);
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
    assert!(
        !err.contains("move it aside"),
        "a newer database is not a damaged one: {err}"
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

/// Runs the agent, which must exit by itself (never keep running, never hang)
/// within 30 s: (exit code, stderr).
fn run_until_exit(agent: &Agent) -> (Option<i32>, String) {
    use std::io::Read;
    let mut child = Command::new(binary())
        .args(["run", "--config"])
        .arg(&agent.config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the agent kept running on a read-only database");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("stderr");
    (status.code(), err)
}

/// An agent whose data directory is a tmpfs, with a few events stored and
/// the agent stopped cleanly. `None` when mounting is skipped. Bind the pair
/// as `(agent, mount)`: the mount drops first, then the temporary directory.
fn agent_on_tmpfs(test: &str) -> Option<(Agent, TmpfsMount)> {
    let mut agent = Agent::new("");
    let mount = TmpfsMount::new(&agent.dir.path().join("data"), "size=8m", test)?;
    agent.start();
    agent.send_events(&Events::new("ro", 0..20, "SaleCreated"));
    assert!(agent.stop().success());
    Some((agent, mount))
}

/// What a person needs from the message about a read-only database.
fn assert_read_only_message(agent: &Agent, code: Option<i32>, err: &str) {
    println!("read-only database: exit {code:?}: {}", err.trim());
    assert_eq!(code, Some(1), "runtime failure, exit 1: {err}");
    let lower = err.to_lowercase();
    let mut problems = Vec::new();
    // The database or a file beside it in the data directory (the lock file
    // is opened first): either points at the right place.
    let data_dir = agent.db().parent().expect("data dir").display().to_string();
    if !err.contains(&data_dir) {
        problems.push("names neither the database file nor its directory");
    }
    if !(lower.contains("read-only") || lower.contains("readonly")) {
        problems.push("does not say the database is read-only");
    }
    if !lower.contains("writable") {
        problems.push("does not say what to do (make the file and its directory writable for the agent)");
    }
    if lower.contains("move it aside") {
        problems.push("tells to move a healthy database aside");
    }
    assert!(problems.is_empty(), "{}:\n{err}", problems.join("; "));
}

#[test]
fn a_read_only_filesystem_under_the_database() {
    let Some((agent, mount)) = agent_on_tmpfs("bad_files read-only filesystem") else {
        return;
    };
    let before = std::fs::read(agent.db()).expect("db");
    mount.remount("ro");
    let (code, err) = run_until_exit(&agent);
    assert_eq!(
        std::fs::read(agent.db()).expect("still there"),
        before,
        "left in place, untouched"
    );
    mount.remount("rw");
    assert_read_only_message(&agent, code, &err);
}

/// Clears the immutable flag again, even when the test fails.
struct Immutable(std::path::PathBuf);

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[test]
fn an_immutable_database_file() {
    let Some((agent, _mount)) = agent_on_tmpfs("bad_files immutable database") else {
        return;
    };
    let before = std::fs::read(agent.db()).expect("db");
    run_ok(Command::new("chattr").arg("+i").arg(agent.db()), "chattr +i on tmpfs");
    let immutable = Immutable(agent.db());
    let (code, err) = run_until_exit(&agent);
    assert_eq!(
        std::fs::read(agent.db()).expect("still there"),
        before,
        "left in place, untouched"
    );
    drop(immutable);
    assert_read_only_message(&agent, code, &err);
}
