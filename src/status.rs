//! The status report: per subscription delivery state, database size, ingest
//! counters and spool files, read from the database. Shared by `status`, the
//! admin API (`/v1/status`) and the status page.

use std::os::unix::net::UnixStream;

use serde::Serialize;

pub use crate::outbox::report::{IngestCounters, SubscriptionStatus};
use crate::outbox::state::SubscriptionState;
use crate::outbox::{self, read};

/// The `status --json` document.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    /// Agent version.
    pub version: String,
    /// `agent.store_id`.
    pub store_id: String,
    /// `agent.agent_id`.
    pub agent_id: String,
    /// Whether an agent answers on the ingest socket.
    pub agent_running: bool,
    /// Seconds since the running agent started.
    pub uptime_s: Option<i64>,
    /// Database figures.
    pub db: DbStatus,
    /// Ingest counters.
    pub ingest: IngestCounters,
    /// The spool directory.
    pub spool: SpoolStatus,
    /// The last reload of the config, if it failed (the agent runs on the
    /// config it had); `null` once a reload or a restart applied the file.
    pub reload_failed: Option<ReloadFailure>,
    /// Per subscription.
    pub subscriptions: Vec<SubscriptionStatus>,
}

/// A reload that was not applied.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadFailure {
    /// When (RFC 3339).
    pub at: String,
    /// Why: the config error, naming file, line and key.
    pub error: String,
}

/// Database size figures.
#[derive(Debug, Clone, Serialize)]
pub struct DbStatus {
    /// The database file.
    pub path: String,
    /// Bytes in use by the database (main file, live pages).
    pub bytes: u64,
    /// `storage.max_db_bytes`.
    pub max_bytes: u64,
    /// At the cap, or the disk is full: new events are refused with `storage_full`.
    pub full: bool,
    /// The filesystem holding the database has less than 1 MiB free.
    pub disk_full: bool,
}

/// Files in the spool directory.
#[derive(Debug, Serialize)]
pub struct SpoolStatus {
    /// `ingest.spool_dir`.
    pub dir: String,
    /// Files waiting in `incoming/`.
    pub incoming: usize,
    /// Refused files in `failed/`.
    pub failed: usize,
}

/// Builds the report from the database; the agent counts as running when
/// it answers on its ingest socket.
pub fn report(config: &crate::config::Config) -> Result<StatusReport, String> {
    report_with(config, UnixStream::connect(&config.ingest.socket).is_ok())
}

/// Builds the report from the database, told whether the agent runs (the
/// agent itself knows, for its heartbeats).
pub fn report_with(config: &crate::config::Config, agent_running: bool) -> Result<StatusReport, String> {
    let db_path = config.db_path();
    let conn = outbox::open_reader(&db_path).map_err(|e| e.to_string())?;
    let db_err = |e: rusqlite::Error| format!("{}: {e}", db_path.display());
    let uptime_s = if agent_running {
        read::meta(&conn, "started_at")
            .map_err(db_err)?
            .and_then(|v| v.parse::<i64>().ok())
            .map(|t| ((outbox::now_ms() - t) / 1000).max(0))
    } else {
        None
    };
    let reload_failed = match read::meta(&conn, outbox::META_RELOAD_FAILED_AT).map_err(db_err)? {
        Some(at) => Some(ReloadFailure {
            at: crate::timefmt::ms_to_rfc3339(at.parse::<i64>().unwrap_or(0)),
            error: read::meta(&conn, outbox::META_RELOAD_ERROR)
                .map_err(db_err)?
                .unwrap_or_default(),
        }),
        None => None,
    };
    let mut subscriptions = read::subscriptions(&conn).map_err(db_err)?;
    for s in subscriptions.iter_mut().filter(|s| s.configured) {
        s.max_rate = config
            .subscriptions
            .iter()
            .find(|c| c.name == s.name)
            .and_then(|c| c.max_rate);
    }
    if !agent_running {
        for s in subscriptions.iter_mut().filter(|s| s.configured) {
            s.state = SubscriptionState::Stopped;
            s.in_flight = 0;
            // Left by an agent that was killed: it describes no scheduler now.
            s.concurrency = None;
            s.max_in_flight = None;
            s.concurrency_limit = None;
            s.next_attempt_at = None;
            s.next_attempt_in_s = None;
        }
    }
    Ok(StatusReport {
        version: env!("CARGO_PKG_VERSION").to_string(),
        store_id: config.agent.store_id.clone(),
        agent_id: config.agent.agent_id.clone(),
        agent_running,
        uptime_s,
        db: {
            let bytes = read::used_bytes(&conn).map_err(db_err)?;
            let disk_full = crate::outbox::disk_full(&db_path);
            DbStatus {
                path: db_path.display().to_string(),
                bytes,
                max_bytes: config.storage.max_db_bytes,
                full: disk_full || bytes >= config.storage.max_db_bytes,
                disk_full,
            }
        },
        ingest: read::ingest_counters(&conn).map_err(db_err)?,
        spool: {
            let (incoming, failed) = crate::ingest::spool::SpoolDirs::new(&config.ingest.spool_dir).counts();
            SpoolStatus {
                dir: config.ingest.spool_dir.display().to_string(),
                incoming,
                failed,
            }
        },
        reload_failed,
        subscriptions,
    })
}
