//! The outbox opened as a library (no process): a real database file and the
//! real writer thread, outcomes and events to hand it, tokio runtimes to
//! drive it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::SECRET;

/// The outbox driven through the library, for tests that force an
/// interleaving a test through the process cannot: a real database file and
/// the real writer thread, with one subscription "erp" (endpoint unused).
pub struct LibraryOutbox {
    /// The database file.
    pub db: PathBuf,
    /// The subscription's row id.
    pub sub_id: i64,
    /// The writer, as the agent uses it.
    pub writer: store_outbox::outbox::writer::Writer,
    /// The writer thread; it ends once every `Writer` is dropped.
    pub thread: std::thread::JoinHandle<()>,
}

impl LibraryOutbox {
    /// The parts, for a test that uses them apart: (database file,
    /// subscription id, writer, writer thread).
    pub fn into_parts(
        self,
    ) -> (
        PathBuf,
        i64,
        store_outbox::outbox::writer::Writer,
        std::thread::JoinHandle<()>,
    ) {
        (self.db, self.sub_id, self.writer, self.thread)
    }
}

/// Opens an outbox in `dir`; `subscription_extra` is added to the
/// subscription's TOML table (for example `retry = { give_up_after = "0s" }`).
pub fn library_outbox(dir: &Path, subscription_extra: &str) -> LibraryOutbox {
    let d = dir.display();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\ndata_dir = \"{d}/data\"\n[ingest]\nsocket = \"{d}/s.sock\"\n\
             [[subscription]]\nname = \"erp\"\nurl = \"http://127.0.0.1:9/h\"\nsecret = \"{SECRET}\"\n\
             {subscription_extra}\n"
        ),
    )
    .expect("config");
    let cfg = store_outbox::deliver::destinations::load_config(Some(&config)).expect("config valid");
    let db = cfg.db_path();
    let mut conn = store_outbox::outbox::open_writer(&db).expect("db");
    let subs = store_outbox::outbox::register_subscriptions(&mut conn, &cfg.subscriptions).expect("subs");
    let (writer, thread) = store_outbox::outbox::writer::Writer::start(
        conn,
        &subs,
        cfg.storage.max_db_bytes,
        Arc::new(tokio::sync::Notify::new()),
    );
    LibraryOutbox {
        db,
        sub_id: subs[0].id,
        writer,
        thread,
    }
}

/// The outcome of an attempt at event `seq` for `sub_id`, now: `status`
/// (an error `HTTP <status>` unless 2xx) and the scheduler's `decision`, for
/// a delivery resent `resends` times when it was read.
pub fn outcome(
    sub_id: i64,
    seq: i64,
    status: u16,
    decision: store_outbox::outbox::writer::Decision,
    resends: i64,
) -> store_outbox::outbox::writer::Outcome {
    store_outbox::outbox::writer::Outcome {
        sub_id,
        event_seq: seq,
        at_ms: store_outbox::outbox::now_ms(),
        status: Some(status),
        error: (status >= 300).then(|| format!("HTTP {status}")),
        duration_ms: 5,
        decision,
        resends,
    }
}

/// A tokio runtime on this thread (for `block_on` in library tests).
pub fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A tokio runtime with two worker threads (for tasks that run at once).
pub fn multi_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A small event of `entity`, as a producer hands it over.
pub fn new_event(id: &str, entity: &str) -> store_outbox::event::NewEvent {
    store_outbox::event::NewEvent {
        event_id: id.into(),
        event_type: "SaleCreated".into(),
        entity: entity.into(),
        occurred_at: "2026-11-23T10:00:00Z".into(),
        correlation_id: None,
        is_test: false,
        attributes: None,
        payload: r#"{"total":1}"#.into(),
    }
}
