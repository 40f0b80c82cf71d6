//! Hostile files in the spool: entries of `incoming/` that are not regular
//! files (symbolic links, FIFOs, directories) or whose names are not UTF-8
//! move to `failed/` with a report naming the reason, a link's target is
//! never read nor moved, and good files beside them go in as usual; a big
//! POSLog document neither stalls the agent's stop nor goes in by halves.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {}",
        path.display()
    );
}

/// The names in `dir`, as bytes, sorted.
fn names(dir: &Path) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().as_bytes().to_vec())
        .collect();
    out.sort();
    out
}

fn stored_ids(agent: &Agent) -> Vec<String> {
    let db = agent.open_db();
    let mut stmt = db
        .prepare("SELECT event_id FROM events ORDER BY event_id")
        .expect("query");
    stmt.query_map([], |r| r.get(0))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("ids")
}

/// The report beside a refused entry, by its report's file name.
fn report(failed: &Path, report_name: &str) -> serde_json::Value {
    let path = failed.join(report_name);
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&text).expect("report is JSON")
}

fn kind_of(path: &Path) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path).map(|m| m.file_type()) {
        Ok(t) if t.is_symlink() => "symlink",
        Ok(t) if t.is_fifo() => "fifo",
        Ok(t) if t.is_dir() => "dir",
        Ok(t) if t.is_file() => "file",
        Ok(_) => "other",
        Err(_) => "missing",
    }
}

#[test]
fn entries_that_are_not_regular_files_or_have_no_utf8_name_move_to_failed_with_the_reason() {
    let mut agent = Agent::new("");
    let (incoming, failed) = agent.spool_dirs();
    let outside = agent.dir.path().join("outside");
    std::fs::create_dir_all(&outside).expect("outside");
    let one = |id: &str| event(id, "till:1", "SaleCreated", serde_json::json!(1));

    // A link to a valid spool file outside: following it would store "secret-1".
    let secret = outside.join("secret.json");
    std::fs::write(&secret, one("secret-1")).expect("secret");
    std::os::unix::fs::symlink(&secret, incoming.join("a-link.json")).expect("symlink");
    // A link to a FIFO: following it would block the spool.
    mkfifo(&outside.join("fifo"));
    std::os::unix::fs::symlink(outside.join("fifo"), incoming.join("b-link-to-fifo.ndjson")).expect("symlink");
    std::os::unix::fs::symlink(outside.join("nothing.json"), incoming.join("c-dangling.json")).expect("symlink");
    // A directory named like a spool file, holding one.
    std::fs::create_dir(incoming.join("d-dir.json")).expect("dir");
    std::fs::write(incoming.join("d-dir.json/inner.json"), one("inner-1")).expect("inner");
    mkfifo(&incoming.join("e-pipe.json"));
    // Two names that are not UTF-8 and look alike once made readable.
    let latin1_e9 = OsStr::from_bytes(b"caf\xe9.json");
    let latin1_e8 = OsStr::from_bytes(b"caf\xe8.json");
    std::fs::write(incoming.join(latin1_e9), one("latin1-1")).expect("non-UTF-8 name");
    std::fs::write(incoming.join(latin1_e8), one("latin1-2")).expect("non-UTF-8 name");
    // A producer's work in progress stays untouched, whatever it is.
    mkfifo(&incoming.join(".f-wip.json"));
    std::fs::write(incoming.join("g.json.tmp"), b"half an ev").expect("tmp");
    // Good files on both sides of them in name order.
    agent.drop_file("0-good.json", one("good-1").as_bytes());
    let two = [
        event("good-2", "till:2", "SaleCreated", serde_json::json!(2)),
        event("good-3", "till:2", "SaleCreated", serde_json::json!(3)),
    ];
    agent.drop_file("z-good.ndjson", two.join("\n").as_bytes());

    agent.start();
    // Taken at start; and while running, through the watch.
    mkfifo(&incoming.join("h-pipe-late.xml"));
    agent.drop_file("m-good-late.json", one("good-late").as_bytes());

    let wip: Vec<Vec<u8>> = vec![b".f-wip.json".to_vec(), b"g.json.tmp".to_vec()];
    wait_until(
        Duration::from_secs(30),
        "only work in progress left in incoming/",
        || names(&incoming) == wip,
    );
    wait_until(Duration::from_secs(30), "the good files stored", || {
        agent.stored_events() == 4
    });
    assert_eq!(stored_ids(&agent), ["good-1", "good-2", "good-3", "good-late"]);

    // Each entry moved itself, under its own name, with a report naming why.
    let cases: [(&[u8], &str, &str, &str); 8] = [
        (b"a-link.json", "symlink", "a-link.json", "a symbolic link"),
        (
            b"b-link-to-fifo.ndjson",
            "symlink",
            "b-link-to-fifo.ndjson",
            "a symbolic link",
        ),
        (b"c-dangling.json", "symlink", "c-dangling.json", "a symbolic link"),
        (b"d-dir.json", "dir", "d-dir.json", "a directory"),
        (b"e-pipe.json", "fifo", "e-pipe.json", "a FIFO"),
        (b"h-pipe-late.xml", "fifo", "h-pipe-late.xml", "a FIFO"),
        (
            b"caf\xe9.json",
            "file",
            "caf\\xE9.json",
            "not UTF-8 (bytes 636166e92e6a736f6e)",
        ),
        (
            b"caf\xe8.json",
            "file",
            "caf\\xE8.json",
            "not UTF-8 (bytes 636166e82e6a736f6e)",
        ),
    ];
    let mut problems = Vec::new();
    for (name, kind, shown, reason) in cases {
        let moved = failed.join(OsStr::from_bytes(name));
        if kind_of(&moved) != kind {
            problems.push(format!("{shown}: in failed/ as {}, not {kind}", kind_of(&moved)));
        }
        let r = report(&failed, &format!("{shown}.error.json"));
        if r["file"] != shown || r["code"] != "invalid_event" {
            problems.push(format!("{shown}: report {r}"));
        }
        let message = r["message"].as_str().unwrap_or_default();
        if !message.contains(reason) {
            problems.push(format!("{shown}: the message {message:?} does not say {reason:?}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The names that are not UTF-8: their bytes in the report, each its own.
    assert_eq!(
        report(&failed, "caf\\xE9.json.error.json")["file_bytes_hex"],
        "636166e92e6a736f6e"
    );
    assert_eq!(
        report(&failed, "caf\\xE8.json.error.json")["file_bytes_hex"],
        "636166e82e6a736f6e"
    );
    assert_eq!(
        std::fs::read(failed.join(latin1_e9)).expect("moved whole"),
        one("latin1-1").as_bytes()
    );
    // Links were moved, not followed: they still point where they did, and
    // what they point to is where it was, as it was.
    assert_eq!(
        std::fs::read_link(failed.join("a-link.json")).expect("still a link"),
        secret
    );
    assert_eq!(
        std::fs::read(&secret).expect("target in place"),
        one("secret-1").as_bytes()
    );
    assert_eq!(kind_of(&outside.join("fifo")), "fifo");
    assert!(
        report(&failed, "a-link.json.error.json")["message"]
            .as_str()
            .is_some_and(|m| m.contains(&secret.display().to_string())),
        "the report says where the link points"
    );
    // The directory went as it was, its content unread.
    assert_eq!(
        std::fs::read(failed.join("d-dir.json/inner.json")).expect("inner"),
        one("inner-1").as_bytes()
    );
    assert_eq!(kind_of(&incoming.join(".f-wip.json")), "fifo");
    assert_eq!(std::fs::read(incoming.join("g.json.tmp")).expect("tmp"), b"half an ev");

    let spool = &agent.status()["spool"];
    assert_eq!(
        (spool["incoming"].as_u64(), spool["failed"].as_u64()),
        (Some(0), Some(8)),
        "{spool}"
    );
    assert!(agent.stop().success(), "{}", agent.log());
}

#[test]
fn a_report_never_replaces_another() {
    // A refused entry whose name is taken in failed/ (by an earlier file, or
    // by the report of a name that shows the same) goes under another name.
    let mut agent = Agent::new("");
    let (incoming, failed) = agent.spool_dirs();
    std::fs::create_dir_all(&failed).expect("failed");
    std::fs::write(failed.join("p.json"), b"an earlier refused file").expect("earlier");
    std::fs::write(failed.join("p.json.error.json"), b"{\"earlier\":true}").expect("earlier report");
    // A UTF-8 name that reads like the escaped form of the other.
    std::fs::write(failed.join("x\\xFF.json.error.json"), b"{\"earlier\":true}").expect("look-alike report");
    mkfifo(&incoming.join("p.json"));
    std::fs::write(incoming.join(OsStr::from_bytes(b"x\xff.json")), b"{}").expect("non-UTF-8 name");
    agent.start();
    wait_until(Duration::from_secs(30), "incoming/ empty", || {
        names(&incoming).is_empty()
    });
    assert_eq!(
        std::fs::read(failed.join("p.json")).expect("kept"),
        b"an earlier refused file"
    );
    for r in ["p.json.error.json", "x\\xFF.json.error.json"] {
        assert_eq!(report(&failed, r)["earlier"], true, "{r} kept");
    }
    // Each moved entry has its own report, beside it, with the same suffix.
    let moved: Vec<PathBuf> = std::fs::read_dir(&failed)
        .expect("failed")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            let n = p.file_name().map(|n| n.as_bytes().to_vec()).unwrap_or_default();
            !n.ends_with(b".error.json") && n != b"p.json"
        })
        .collect();
    assert_eq!(moved.len(), 2, "{moved:?}");
    for path in moved {
        let name = path.file_name().expect("name").as_bytes().to_vec();
        let shown = match std::str::from_utf8(&name) {
            Ok(s) => s.to_string(),
            Err(_) => String::from_utf8_lossy(&name).replace('\u{fffd}', "\\xFF"),
        };
        let r = report(&failed, &format!("{shown}.error.json"));
        assert!(r["message"].is_string() && r.get("earlier").is_none(), "{shown}: {r}");
        if name.starts_with(b"p.json") {
            assert_eq!(kind_of(&path), "fifo");
            assert_eq!(r["file"], "p.json");
        } else {
            assert_eq!(kind_of(&path), "file");
            assert_eq!(r["file_bytes_hex"], "78ff2e6a736f6e");
        }
    }
    assert!(agent.stop().success());
}

/// A POSLog document of `n` transactions, one workstation.
fn poslog(n: usize) -> String {
    let mut doc = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<POSLog xmlns=\"http://www.nrf-arts.org/IXRetail/namespace/\">\n",
    );
    for i in 1..=n {
        doc += &format!(
            "  <Transaction>\n    <RetailStoreID>0042</RetailStoreID>\n    <WorkstationID>03</WorkstationID>\n    \
             <SequenceNumber>{i}</SequenceNumber>\n    <EndDateTime>2026-11-22T10:15:00+01:00</EndDateTime>\n    \
             <RetailTransaction><LineItem><Sale><ItemID>4006381333931</ItemID><Quantity>2</Quantity></Sale></LineItem></RetailTransaction>\n  \
             </Transaction>\n"
        );
    }
    doc + "</POSLog>\n"
}

/// A stop during the ingest of a big POSLog file: prompt (the quadratic
/// parse held it for minutes, SIGTERM waited), and the file is taken whole or
/// left whole in `incoming/`, then taken whole at the next start.
#[test]
fn sigterm_during_a_big_poslog_stops_promptly_and_the_file_goes_in_whole_or_not_at_all() {
    const N: usize = 20_000;
    let mut agent = Agent::new("");
    agent.start();
    let doc = poslog(N);
    agent.drop_file("big.xml", doc.as_bytes());
    // The watch starts the ingest at once; stop while it runs.
    std::thread::sleep(Duration::from_millis(200));
    let asked = Instant::now();
    let status = agent.stop();
    let took = asked.elapsed();
    assert!(status.success(), "{status}: {}", agent.log());
    assert!(took < Duration::from_secs(10), "the stop took {took:?}");
    let left = agent.spool().join("incoming/big.xml");
    let stored = agent.stored_events();
    if left.exists() {
        assert_eq!(stored, 0, "left in incoming/, nothing of it stored");
        assert_eq!(std::fs::read(&left).expect("left"), doc.as_bytes(), "left whole");
    } else {
        assert_eq!(stored, N as i64, "taken, all of it");
    }
    println!(
        "stopped in {took:?}; the file was {}",
        if left.exists() { "left" } else { "taken" }
    );

    agent.start();
    wait_until(Duration::from_secs(60), "the file taken after the restart", || {
        !left.exists() && agent.stored_events() == N as i64
    });
    let ids = stored_ids(&agent);
    assert_eq!(ids.len(), N);
    assert!(ids.contains(&"poslog:0042:03:1".to_string()) && ids.contains(&format!("poslog:0042:03:{N}")));
    assert!(!agent.spool().join("failed/big.xml").exists());
    assert!(agent.stop().success());
}

/// A file the agent's user may not read is refused with the reason, and the
/// files after it go in: retrying could not help, only a person can.
#[test]
fn a_file_the_agent_may_not_read_moves_to_failed_and_holds_no_later_file() {
    let mut agent = Agent::new("");
    let (incoming, failed) = agent.spool_dirs();
    let one = |id: &str| event(id, "till:1", "SaleCreated", serde_json::json!(1));
    agent.drop_file("a-locked.json", one("locked-1").as_bytes());
    agent.drop_file("b-good.json", one("good-1").as_bytes());

    // Root reads any file: as root, the agent runs as `nobody`, which owns
    // its directory but may not read the locked file.
    // SAFETY: geteuid has no preconditions.
    let as_root = unsafe { libc::geteuid() } == 0;
    if as_root {
        let chown = std::process::Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(agent.dir.path())
            .status()
            .expect("chown");
        assert!(chown.success());
    }
    let locked = incoming.join("a-locked.json");
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o000)).expect("chmod 000");
    let mut cmd = if as_root {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(binary());
        c
    } else {
        std::process::Command::new(binary())
    };
    let log = std::fs::File::create(agent.dir.path().join("agent-locked.log")).expect("log");
    let child = cmd
        .args(["run", "--config"])
        .arg(&agent.config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn the agent");
    agent.child = Some(child);

    let log = || std::fs::read_to_string(agent.dir.path().join("agent-locked.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !failed.join("a-locked.json.error.json").exists() {
        assert!(Instant::now() < deadline, "the locked file was not refused:\n{}", log());
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_until(Duration::from_secs(30), "the later file stored", || {
        agent.stored_events() == 1
    });
    assert_eq!(
        stored_ids(&agent),
        ["good-1"],
        "the later file went in, the locked one did not"
    );
    assert!(
        names(&incoming).is_empty(),
        "nothing left waiting: {:?}",
        names(&incoming)
    );
    assert!(failed.join("a-locked.json").exists(), "moved under its own name");
    let why = report(&failed, "a-locked.json.error.json");
    let text = why.to_string();
    assert!(
        text.contains("Permission denied") && text.contains("read access"),
        "the report says why and what to do: {text}"
    );
}
