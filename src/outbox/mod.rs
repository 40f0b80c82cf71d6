//! The transactional outbox: one SQLite file that holds every acknowledged
//! event and, per subscription, its delivery state.
//!
//! - [`schema`]: tables and versioned migrations.
//! - [`writer`]: the single writer thread, which group-commits ingest and
//!   delivery outcomes; nothing is acknowledged before its commit.
//! - [`read`]: read-only queries for the schedulers, `status` and the CLI.
//! - [`retention`]: pruning of delivered events, the storage cap.
//! - [`resend`]: queueing deliveries again (operator action).
//! - [`state`]: delivery and subscription states, as stored and as named.
//! - [`gone`]: the stop a 410 puts on a subscription, kept across restarts.
//! - [`held`]: batches waiting for their retry, kept across restarts.

pub mod gone;
pub mod held;
pub mod history;
pub mod read;
pub mod report;
pub mod resend;
pub mod retention;
pub mod schema;
pub mod state;
pub mod writer;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags};
use tokio::sync::Notify;

use crate::config::SubscriptionConfig;
use state::SubscriptionState;

/// How long a connection waits for another one's write lock (the agent's
/// writer and an operator's `resend` share the file). Generous: a slow disk
/// under load can hold a commit's fsync for seconds.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Wall-clock milliseconds since the Unix epoch, for stored timestamps only
/// (scheduling uses monotonic time).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Why the database could not be opened, worded for the person who has to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct OpenError {
    /// The database file.
    pub path: String,
    /// What went wrong and what to do.
    pub reason: String,
}

/// Below this much free space on the database's filesystem the outbox counts
/// as full: SQLite cannot count on growing the WAL by another batch.
pub const DISK_FULL_BELOW: u64 = 1024 * 1024;

/// Free bytes for unprivileged writers on the filesystem holding `path`.
pub fn disk_free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c_path` is NUL-terminated and `stat` is a plain C struct that
    // statvfs fills in; nothing else holds either.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    // The field types are 32-bit on armhf, 64-bit elsewhere.
    #[allow(clippy::useless_conversion)]
    let (blocks, size) = (u64::from(stat.f_bavail), u64::from(stat.f_frsize));
    (rc == 0).then(|| blocks.saturating_mul(size))
}

/// Whether the filesystem holding `path` is (nearly) out of space.
pub fn disk_full(path: &Path) -> bool {
    disk_free_bytes(path).is_some_and(|free| free < DISK_FULL_BELOW)
}

/// What to tell the operator when writing the database at `path` failed,
/// so a full disk or a read-only file is never mistaken for a broken one.
pub fn write_failure_hint(path: &Path, e: &rusqlite::Error) -> &'static str {
    let readonly = matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::ReadOnly))
        || matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.extended_code == rusqlite::ffi::SQLITE_CANTOPEN);
    if matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::DiskFull)) || disk_full(path) {
        "the disk holding it is full: free space on that filesystem (the database is kept as it is, with its backlog)"
    } else if readonly {
        "the agent cannot write it: the file, its directory and the filesystem must be writable by the agent's user (check owner and mode, a read-only mount, `lsattr`/`chattr -i`)"
    } else {
        "the file is not a readable store-outbox database; move it aside (keep it for support) and start again, or restore a backup"
    }
}

fn open_error(path: &Path, reason: impl std::fmt::Display) -> OpenError {
    OpenError {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Opens (creating if needed) the database for writing: WAL, `synchronous=FULL`,
/// migrations applied.
pub fn open_writer(path: &Path) -> Result<Connection, OpenError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| open_error(dir, format!("cannot create the data directory: {e}")))?;
    }
    let failed = |e: rusqlite::Error| open_error(path, format!("{e}: {}", write_failure_hint(path, &e)));
    let mut conn = Connection::open(path).map_err(failed)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| open_error(path, e))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(failed)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(open_error(path, format!("cannot switch to WAL mode (got {mode})")));
    }
    conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=OFF;")
        .map_err(|e| open_error(path, e))?;
    // A newer agent's database: its own message says what to do; the hint
    // below (for a damaged file) would contradict it.
    schema::refuse_newer(&conn).map_err(|e| open_error(path, e))?;
    schema::migrate(&mut conn).map_err(|e| {
        let hint = if disk_full(path) {
            "the disk holding it is full: free space on that filesystem (the database is kept as it is)"
        } else {
            "the file is not a readable store-outbox database; move it aside (keep it for support) and start again, or restore a backup"
        };
        open_error(path, format!("{e}; {hint}"))
    })?;
    Ok(conn)
}

/// Opens the database read-only (status, CLI, schedulers' reads).
pub fn open_reader(path: &Path) -> Result<Connection, OpenError> {
    if !path.exists() {
        return Err(open_error(
            path,
            "no database here yet (has the agent run with this config?)",
        ));
    }
    // Reading a WAL database may need to create its `-shm` file: on a full
    // disk, say so rather than leave a bare "disk I/O error".
    let failed = |e: rusqlite::Error| {
        if disk_full(path) {
            open_error(
                path,
                format!("{e}: the disk holding it is full; free space on that filesystem"),
            )
        } else {
            open_error(path, e)
        }
    };
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(failed)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| open_error(path, e))?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(failed)?;
    if version != schema::CURRENT_VERSION {
        return Err(open_error(
            path,
            format!(
                "schema version {version}, this store-outbox reads {}: start the agent once to migrate",
                schema::CURRENT_VERSION
            ),
        ));
    }
    Ok(conn)
}

/// Most entities an [`Inbox`] holds between two takes; past that it only
/// notes that it overflowed, and the scheduler finds the rest by scanning
/// its backlog. Bounds memory whatever the producers' entity keys.
pub const INBOX_MAX: usize = 16_384;

/// Entities with new deliveries for one subscription, filled by the writer
/// after each commit and drained by that subscription's scheduler. Bounded
/// by [`INBOX_MAX`] entities, however fast producers write.
#[derive(Default)]
pub struct Inbox {
    /// What the writer announced since the last take.
    marked: Mutex<Marked>,
    /// Wakes the scheduler.
    notify: Notify,
}

/// What an [`Inbox`] holds.
#[derive(Default)]
pub struct Marked {
    /// entity id -> the lowest new event, as (`seq`, `entity_seq`).
    pub entities: HashMap<i64, (i64, i64)>,
    /// Some entities were not kept ([`INBOX_MAX`]): the scheduler must
    /// look for them in the outbox.
    pub overflowed: bool,
}

impl Inbox {
    /// Marks entities (with the `seq` and `entity_seq` of a new event) and
    /// wakes the scheduler.
    pub fn push(&self, entities: impl IntoIterator<Item = (i64, i64, i64)>) {
        let mut marked = self.marked.lock().unwrap_or_else(|p| p.into_inner());
        for (entity, seq, entity_seq) in entities {
            let room = marked.entities.len() < INBOX_MAX;
            match marked.entities.get_mut(&entity) {
                Some(first) if seq < first.0 => *first = (seq, entity_seq),
                Some(_) => {}
                None if room => {
                    marked.entities.insert(entity, (seq, entity_seq));
                }
                None => marked.overflowed = true,
            }
        }
        drop(marked);
        self.notify.notify_one();
    }

    /// Takes what was marked.
    pub fn take(&self) -> Marked {
        std::mem::take(&mut *self.marked.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Waits until [`Inbox::push`] was called since the last wait.
    pub async fn wait(&self) {
        self.notify.notified().await;
    }
}

/// A configured subscription as the database knows it.
#[derive(Clone)]
pub struct Subscription {
    /// Row id in `subscriptions`.
    pub id: i64,
    /// Its configuration.
    pub config: Arc<SubscriptionConfig>,
    /// Where the writer announces new deliveries.
    pub inbox: Arc<Inbox>,
}

/// Records in `meta` that an agent of `version` started at `started_at_ms`
/// (wall clock): `status` shows the uptime from it.
pub fn record_start(conn: &Connection, started_at_ms: i64, version: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO meta(key, value) VALUES ('started_at', ?1), ('version', ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![started_at_ms.to_string(), version],
    )?;
    // A start runs on the file as it reads now: an earlier failed reload
    // no longer describes the running agent.
    conn.execute(
        "DELETE FROM meta WHERE key IN (?1, ?2)",
        params![META_RELOAD_FAILED_AT, META_RELOAD_ERROR],
    )?;
    Ok(())
}

/// `meta` key: when the last reload failed (wall-clock ms); absent when the
/// last reload was applied or none failed since the start.
pub const META_RELOAD_FAILED_AT: &str = "reload_failed_at";
/// `meta` key: why the last reload failed (the config error).
pub const META_RELOAD_ERROR: &str = "reload_error";

/// Records the configured subscriptions: new ones get the retained events
/// that match their filter (oldest first, by creating their delivery rows),
/// ones no longer configured keep their rows but are marked so.
pub fn register_subscriptions(
    conn: &mut Connection,
    subs: &[SubscriptionConfig],
) -> rusqlite::Result<Vec<Subscription>> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute(
        "UPDATE subscriptions SET configured = 0, state = ?1, in_flight = 0, next_attempt_at = NULL,
                concurrency = NULL, max_in_flight = NULL, concurrency_limit = NULL",
        [SubscriptionState::Unconfigured],
    )?;
    let max_seq = max_event_seq(&tx)?;
    let mut out = Vec::new();
    for sub in subs {
        out.push(Subscription {
            id: register_one(&tx, sub, max_seq)?,
            config: Arc::new(sub.clone()),
            inbox: Arc::new(Inbox::default()),
        });
    }
    tx.commit()?;
    Ok(out)
}

/// The newest event's `seq` (0 when there is none).
fn max_event_seq(tx: &Connection) -> rusqlite::Result<i64> {
    tx.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))
}

/// Records one configured subscription (a new name gets a row) and creates
/// the delivery rows it lacks; returns its row id.
fn register_one(tx: &Connection, sub: &SubscriptionConfig, max_seq: i64) -> rusqlite::Result<i64> {
    tx.execute(
        "INSERT INTO subscriptions(name, created_at) VALUES (?1, ?2) ON CONFLICT(name) DO NOTHING",
        params![sub.name, now_ms()],
    )?;
    let (id, covered): (i64, i64) = tx.query_row(
        "SELECT id, covered_seq FROM subscriptions WHERE name = ?1",
        [&sub.name],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    // Events stored while this subscription was absent from the config,
    // through the subscription's own filter (`SubscriptionConfig::takes`,
    // the one the writer fans out with).
    backfill(tx, id, covered, sub)?;
    tx.execute(
        "UPDATE subscriptions SET configured = 1, covered_seq = ?2, url = ?3, state = ?4 WHERE id = ?1",
        params![id, max_seq, sub.url_for_logs(), SubscriptionState::Online],
    )?;
    Ok(id)
}

/// Applies a reloaded list of subscriptions while the agent runs (in the
/// writer's thread, between two batches, so no event is fanned out
/// half-way): names not in `running` are registered as at a start
/// (backfilled from where they stopped), running names no longer
/// configured keep their rows and are marked unconfigured, the others keep
/// their state and their inbox and only take the new settings. Returns the
/// subscriptions in `configs`' order.
pub fn reconfigure_subscriptions(
    conn: &mut Connection,
    running: &[Subscription],
    configs: &[SubscriptionConfig],
) -> rusqlite::Result<Vec<Subscription>> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let max_seq = max_event_seq(&tx)?;
    for gone in running
        .iter()
        .filter(|r| !configs.iter().any(|c| c.name == r.config.name))
    {
        tx.execute(
            "UPDATE subscriptions SET configured = 0, state = ?2, in_flight = 0, next_attempt_at = NULL,
                    concurrency = NULL, max_in_flight = NULL, concurrency_limit = NULL
             WHERE id = ?1",
            params![gone.id, SubscriptionState::Unconfigured],
        )?;
    }
    let mut out = Vec::with_capacity(configs.len());
    for config in configs {
        let sub = match running.iter().find(|r| r.config.name == config.name) {
            Some(kept) => {
                tx.execute(
                    "UPDATE subscriptions SET url = ?2 WHERE id = ?1",
                    params![kept.id, config.url_for_logs()],
                )?;
                Subscription {
                    id: kept.id,
                    config: Arc::new(config.clone()),
                    inbox: kept.inbox.clone(),
                }
            }
            None => Subscription {
                id: register_one(&tx, config, max_seq)?,
                config: Arc::new(config.clone()),
                inbox: Arc::new(Inbox::default()),
            },
        };
        out.push(sub);
    }
    tx.commit()?;
    Ok(out)
}

/// Creates the delivery rows of `sub` for the events after `covered_seq`
/// that its filter takes, oldest first. Reads the events in pages, so a long
/// absence costs time, not memory.
fn backfill(tx: &Connection, sub_id: i64, covered_seq: i64, sub: &SubscriptionConfig) -> rusqlite::Result<()> {
    const PAGE: i64 = 4096;
    let mut after = covered_seq;
    loop {
        let page: Vec<(i64, String, i64, i64)> = tx
            .prepare_cached("SELECT seq, type, entity_id, entity_seq FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2")?
            .query_map(params![after, PAGE], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        for (seq, event_type, entity_id, entity_seq) in &page {
            if sub.takes(event_type) {
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO deliveries(sub_id, event_seq, entity_id, entity_seq) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![sub_id, seq, entity_id, entity_seq])?;
            }
        }
        match page.last() {
            Some((seq, ..)) if page.len() as i64 == PAGE => after = *seq,
            _ => return Ok(()),
        }
    }
}
