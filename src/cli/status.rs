//! `status`: delivery state per subscription, database size and ingest
//! counters, read from the database (works while the agent runs).

use std::os::unix::net::UnixStream;

use clap::Args;
use serde::Serialize;

use super::{human_duration, load_config, CliError, CliResult};
use crate::outbox::{self, read};

/// Arguments of `status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print JSON (the shape of the contract) instead of a table.
    #[arg(long)]
    pub json: bool,
}

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
    pub db: read::DbStatus,
    /// Ingest counters.
    pub ingest: read::IngestCounters,
    /// The spool directory.
    pub spool: SpoolStatus,
    /// Per subscription.
    pub subscriptions: Vec<read::SubscriptionStatus>,
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

/// Builds the report from the database.
pub fn report(config: &crate::config::Config) -> Result<StatusReport, CliError> {
    let db_path = config.db_path();
    let conn = outbox::open_reader(&db_path).map_err(CliError::runtime)?;
    let db_err = |e: rusqlite::Error| CliError::runtime(format!("{}: {e}", db_path.display()));
    let agent_running = UnixStream::connect(&config.ingest.socket).is_ok();
    let uptime_s = if agent_running {
        read::meta(&conn, "started_at")
            .map_err(db_err)?
            .and_then(|v| v.parse::<i64>().ok())
            .map(|t| ((outbox::now_ms() - t) / 1000).max(0))
    } else {
        None
    };
    let mut subscriptions = read::subscriptions(&conn).map_err(db_err)?;
    if !agent_running {
        for s in subscriptions.iter_mut().filter(|s| s.configured) {
            s.state = "stopped".into();
            s.in_flight = 0;
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
            read::DbStatus {
                path: db_path.display().to_string(),
                bytes,
                max_bytes: config.storage.max_db_bytes,
                full: bytes >= config.storage.max_db_bytes,
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
        subscriptions,
    })
}

/// Prints the status.
pub fn run(path: Option<&std::path::Path>, args: StatusArgs) -> CliResult {
    let config = load_config(path)?;
    let report = report(&config)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
        return Ok(());
    }
    print!("{}", render(&report));
    Ok(())
}

fn size(bytes: u64) -> String {
    bytesize::ByteSize(bytes).to_string_as(true)
}

/// The table for people.
pub fn render(r: &StatusReport) -> String {
    let mut out = String::new();
    let running = match r.uptime_s {
        Some(up) if r.agent_running => format!("running, up {}", human_duration(up)),
        _ if r.agent_running => "running".to_string(),
        _ => "NOT RUNNING".to_string(),
    };
    out += &format!(
        "store-outbox {}  store {}  agent {}  ({running})\n",
        r.version, r.store_id, r.agent_id
    );
    out += &format!(
        "database   {}  {} of {}{}\n",
        r.db.path,
        size(r.db.bytes),
        size(r.db.max_bytes),
        if r.db.full {
            "  FULL: new events are refused (storage_full)"
        } else {
            ""
        }
    );
    out += &format!(
        "ingest     accepted {}  duplicates {}  rejected {}\n",
        r.ingest.accepted_total, r.ingest.duplicate_total, r.ingest.rejected_total
    );
    out += &format!(
        "spool      {}  waiting {}  failed {}\n\n",
        r.spool.dir, r.spool.incoming, r.spool.failed
    );
    if r.subscriptions.is_empty() {
        out += "no subscriptions: events are stored and wait for one\n";
        return out;
    }
    out += &format!(
        "{:<16} {:<13} {:>8} {:>9} {:>6} {:>8} {:>10}  {:<20}  {}\n",
        "SUBSCRIPTION", "STATE", "PENDING", "IN FLIGHT", "PARKED", "OLDEST", "DELIVERED", "LAST SUCCESS", "LAST ERROR"
    );
    for s in &r.subscriptions {
        out += &format!(
            "{:<16} {:<13} {:>8} {:>9} {:>6} {:>8} {:>10}  {:<20}  {}\n",
            s.name,
            s.state,
            s.pending,
            s.in_flight,
            s.parked,
            s.oldest_pending_age_s.map(human_duration).unwrap_or_else(|| "-".into()),
            s.delivered_total,
            s.last_success_at.as_deref().unwrap_or("-"),
            s.last_error.as_deref().unwrap_or("-"),
        );
    }
    out
}
