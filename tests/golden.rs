//! Golden output of the CLI on a prepared database (see `tests/golden/`).
//!
//! The database is built through the library with fixed timestamps, so the
//! output is stable; what still moves (ages, temp paths, version) is redacted.
//! Regenerate after an intended change with `SNAPSHOTS=overwrite cargo test --test golden`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use snapbox::cmd::Command;
use snapbox::{file, Redactions};
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
    let cfg = store_outbox::config::load(Some(&config)).expect("config valid");
    let mut conn = store_outbox::outbox::open_writer(&cfg.db_path()).expect("db");
    let subs = store_outbox::outbox::register_subscriptions(&mut conn, &cfg.subscriptions).expect("subs");
    let (writer, thread) = Writer::start(
        conn,
        &subs,
        cfg.storage.max_db_bytes,
        Arc::new(tokio::sync::Notify::new()),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
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
        writer.set_sub_state(erp, SubscriptionState::Online, 0);
        writer.set_sub_state(subs[1].id, SubscriptionState::Offline, 0);
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

#[test]
fn golden_cli_output() {
    let (_dir, config) = prepare();
    cli(&config, &["status"])
        .success()
        .stdout_eq(file!["golden/status/table.stdout"]);
    cli(&config, &["status", "--json"])
        .success()
        .stdout_eq(file!["golden/status/json.stdout"]);
    cli(&config, &["events"])
        .success()
        .stdout_eq(file!["golden/events/all.stdout"]);
    cli(&config, &["events", "--state", "parked", "--json"])
        .success()
        .stdout_eq(file!["golden/events/parked.json.stdout"]);
    cli(&config, &["events", "--subscription", "oms", "--state", "pending"])
        .success()
        .stdout_eq(file!["golden/events/oms-pending.stdout"]);
    cli(&config, &["show", "sale-0042-000122"])
        .success()
        .stdout_eq(file!["golden/show/parked.stdout"]);
    cli(&config, &["show", "sale-0042-000122", "--json"])
        .success()
        .stdout_eq(file!["golden/show/parked.json.stdout"]);
    cli(&config, &["show", "nope"])
        .failure()
        .stderr_eq(file!["golden/show/missing.stderr"]);
    cli(&config, &["check-config"])
        .success()
        .stdout_eq(file!["golden/check-config/ok.stdout"]);
    cli(&config, &["resend", "--parked"])
        .success()
        .stdout_eq(file!["golden/resend/parked.stdout"]);
    cli(&config, &["resend", "nope"])
        .code(1)
        .stdout_eq(file!["golden/resend/unknown.stdout"])
        .stderr_eq(file!["golden/resend/unknown.stderr"]);
}
