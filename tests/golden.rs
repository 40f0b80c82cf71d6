//! Golden output of the CLI on a prepared database: one test per command,
//! its cases in `tests/golden/<command>/<case>/` (see [`CASE_FILES`]).
//!
//! The database is built through the library with fixed timestamps, so the
//! output is stable; what still moves (ages, temp paths, version) is redacted.
//! Regenerate after an intended change with `SNAPSHOTS=overwrite cargo test --test golden`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use snapbox::cmd::Command;
use snapbox::{Data, Redactions};
use store_outbox::event::NewEvent;
use store_outbox::outbox::state::SubscriptionState;
use store_outbox::outbox::writer::{Decision, Outcome, Writer};

/// 2026-11-21T10:00:00Z
const T0: i64 = 1_795_255_200_000;

fn new_event(id: &str, entity: &str, event_type: &str, payload: &str) -> NewEvent {
    NewEvent {
        event_id: id.into(),
        event_type: event_type.into(),
        entity: entity.into(),
        occurred_at: "2026-11-22T09:59:00Z".into(),
        correlation_id: None,
        is_test: false,
        attributes: Some(r#"{"terminal":"03"}"#.into()),
        payload: payload.into(),
    }
}

fn outcome(sub_id: i64, seq: i64, at: i64, status: Option<u16>, error: Option<&str>, decision: Decision) -> Outcome {
    Outcome {
        sub_id,
        event_seq: seq,
        at_ms: at,
        status,
        error: error.map(str::to_string),
        duration_ms: 12,
        decision,
        resends: 0,
    }
}

/// A config and a database with: erp (3 delivered, 1 parked, 1 pending) and
/// oms (thin, everything pending).
fn prepare() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("so-golden-")
        .tempdir()
        .expect("tempdir");
    let d = dir.path().display();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nstore_id = \"0042\"\nagent_id = \"till-03\"\ndata_dir = \"{d}/data\"\n\
             [ingest]\nsocket = \"{d}/ingest.sock\"\nspool_dir = \"{d}/spool\"\n\
             [storage]\nmax_db_bytes = \"64MiB\"\n\
             [[subscription]]\nname = \"erp\"\nurl = \"https://erp.example.com/hooks/pos\"\nsecret = \"{}\"\n\
             [[subscription]]\nname = \"oms\"\nurl = \"https://oms.example.com/in\"\nsecret = \"{}\"\nevents = [\"CustomerOrderUpdated\"]\n",
            common::SECRET,
            common::SECRET
        ),
    )
    .expect("config");
    let cfg = store_outbox::deliver::destinations::load_config(Some(&config)).expect("config valid");
    let mut conn = store_outbox::outbox::open_writer(&cfg.db_path()).expect("db");
    let subs = store_outbox::outbox::register_subscriptions(&mut conn, &cfg.subscriptions).expect("subs");
    let (writer, thread) = Writer::start(
        conn,
        &subs,
        cfg.storage.max_db_bytes,
        Arc::new(tokio::sync::Notify::new()),
    );
    let rt = common::current_thread_runtime();
    rt.block_on(async {
        let replies = writer
            .ingest(vec![
                new_event("sale-0042-000121", "order:4711", "SaleCreated", r#"{"total":9.5}"#),
                new_event(
                    "order-4711-picked",
                    "order:4711",
                    "CustomerOrderUpdated",
                    r#"{"status":"picked"}"#,
                ),
                new_event("sale-0042-000122", "till:03", "SaleCreated", r#"{"total":3.2}"#),
                new_event("sale-0042-000123", "till:03", "SaleCreated", r#"{"total":12}"#),
                new_event(
                    "stock-77",
                    "sku:4006381333931",
                    "StockMovementCreated",
                    r#"{"delta":-1}"#,
                ),
            ])
            .await;
        assert!(replies
            .iter()
            .all(|r| matches!(r, store_outbox::event::Reply::Accepted { .. })));
        let erp = subs[0].id;
        for (seq, at) in [(1, T0 + 1_000), (2, T0 + 2_000), (5, T0 + 3_000)] {
            writer
                .record_and_wait(outcome(erp, seq, at, Some(200), None, Decision::Delivered), None)
                .await
                .expect("record");
        }
        let err = Some("HTTP 422: unknown till");
        writer
            .record_and_wait(
                outcome(
                    erp,
                    3,
                    T0 + 4_000,
                    Some(422),
                    err,
                    Decision::Retry {
                        next_attempt_at_ms: T0 + 5_000,
                    },
                ),
                None,
            )
            .await
            .expect("record");
        writer
            .record_and_wait(outcome(erp, 3, T0 + 6_000, Some(422), err, Decision::Park), None)
            .await
            .expect("record");
        writer.set_sub_state(erp, SubscriptionState::Online, 0, None, None);
        writer.set_sub_state(subs[1].id, SubscriptionState::Offline, 0, None, None);
        writer
            .record_and_wait(
                outcome(
                    subs[1].id,
                    2,
                    T0 + 7_000,
                    None,
                    Some("cannot connect: Connection refused"),
                    Decision::Retry {
                        next_attempt_at_ms: T0 + 9_000,
                    },
                ),
                None,
            )
            .await
            .expect("record");
    });
    drop(writer);
    thread.join().expect("writer thread");
    // Fixed times everywhere a person reads them.
    let db = rusqlite::Connection::open(cfg.db_path()).expect("db");
    db.execute_batch(&format!("UPDATE events SET ingested_at = {T0} + seq * 100;"))
        .expect("times");
    drop(db);
    (dir, config)
}

fn cli(config: &Path, args: &[&str]) -> snapbox::cmd::OutputAssert {
    let mut redactions = Redactions::new();
    redactions
        .insert("[TMP]", config.parent().expect("dir").to_path_buf())
        .expect("redaction");
    redactions
        .insert("[VERSION]", env!("CARGO_PKG_VERSION"))
        .expect("redaction");
    Command::new(common::binary())
        .arg("--config")
        .arg(config)
        .args(args)
        .with_assert(snapbox::Assert::new().action_env("SNAPSHOTS").redact_with(redactions))
        .assert()
}

/// Where the cases live: `tests/golden/<command>/<case>/`.
fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// The commands with golden cases, one test each below.
const COMMANDS: [&str; 5] = ["check-config", "events", "resend", "show", "status"];

/// What a case directory holds: `args`, the command line after
/// `store-outbox --config <config>` (words split on white space, the first one
/// the command the directory is named after); `stdout` and/or `stderr`, the
/// expected output (at least one of them; a stream without a file is not
/// compared); `exit-code`, the expected exit status when it is not 0.
const CASE_FILES: [&str; 4] = ["args", "stdout", "stderr", "exit-code"];

/// Runs every case of `command`, each on a freshly prepared database.
fn check_cases(command: &str) {
    let root = golden_dir().join(command);
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no golden cases in {}", root.display());
    for case in cases {
        let name = case.display();
        assert!(case.is_dir(), "{name}: a case is a directory");
        for file in std::fs::read_dir(&case).expect("case dir") {
            let file = file.expect("dir entry").file_name();
            let file = file.to_string_lossy();
            assert!(CASE_FILES.contains(&file.as_ref()), "{name}: unknown file {file:?}");
        }
        let args = std::fs::read_to_string(case.join("args")).unwrap_or_else(|e| panic!("{name}/args: {e}"));
        let args: Vec<&str> = args.split_whitespace().collect();
        assert_eq!(args.first(), Some(&command), "{name}/args: runs `{command}`");
        let code = match std::fs::read_to_string(case.join("exit-code")) {
            Ok(text) => text.trim().parse().unwrap_or_else(|e| panic!("{name}/exit-code: {e}")),
            Err(_) => 0,
        };
        let (stdout, stderr) = (case.join("stdout"), case.join("stderr"));
        assert!(
            stdout.exists() || stderr.exists(),
            "{name}: a case compares stdout, stderr or both"
        );
        let (_dir, config) = prepare();
        let mut run = cli(&config, &args).code(code);
        if stdout.exists() {
            run = run.stdout_eq(Data::read_from(&stdout, None));
        }
        if stderr.exists() {
            run.stderr_eq(Data::read_from(&stderr, None));
        }
    }
}

#[test]
fn every_golden_command_has_its_test() {
    let mut found: Vec<String> = std::fs::read_dir(golden_dir())
        .expect("tests/golden")
        .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    assert_eq!(found, COMMANDS, "tests/golden/<command>/ and the tests below");
}

#[test]
fn golden_status() {
    check_cases("status");
}

#[test]
fn golden_events() {
    check_cases("events");
}

#[test]
fn golden_show() {
    check_cases("show");
}

#[test]
fn golden_check_config() {
    check_cases("check-config");
}

#[test]
fn golden_resend() {
    check_cases("resend");
}
