//! `status`: delivery state per subscription, database size and ingest
//! counters, read from the database (works while the agent runs).

use clap::Args;

use super::{load_config, CliError, CliResult};
use crate::status::{report, StatusReport};
use crate::timefmt::human_duration;

/// Arguments of `status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print JSON (the shape of the contract) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Prints the status.
pub fn run(path: Option<&std::path::Path>, args: StatusArgs) -> CliResult {
    let config = load_config(path)?;
    let report = report(&config).map_err(CliError::runtime)?;
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
        if r.db.disk_full {
            "  FULL: the disk is full, new events are refused (storage_full)"
        } else if r.db.full {
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
    if let Some(failed) = &r.reload_failed {
        out += &format!(
            "reload failed at {}: {} (the agent runs on its previous config)\n\n",
            failed.at, failed.error
        );
    }
    if r.subscriptions.is_empty() {
        out += "no subscriptions: events are stored and wait for one\n";
        return out;
    }
    out += &format!(
        "{:<16} {:<13} {:>8} {:>9} {:>6} {:>8} {:>8} {:>10}  {:<20}  {}\n",
        "SUBSCRIPTION",
        "STATE",
        "PENDING",
        "IN FLIGHT",
        "PARKED",
        "OLDEST",
        "NEXT TRY",
        "DELIVERED",
        "LAST SUCCESS",
        "LAST ERROR"
    );
    for s in &r.subscriptions {
        out += &format!(
            "{:<16} {:<13} {:>8} {:>9} {:>6} {:>8} {:>8} {:>10}  {:<20}  {}\n",
            s.name,
            s.state,
            s.pending,
            s.in_flight,
            s.parked,
            s.oldest_pending_age_s.map(human_duration).unwrap_or_else(|| "-".into()),
            s.next_attempt_in_s
                .map(|secs| format!("in {}", human_duration(secs)))
                .unwrap_or_else(|| "-".into()),
            s.delivered_total,
            s.last_success_at.as_deref().unwrap_or("-"),
            s.last_error.as_deref().unwrap_or("-"),
        );
    }
    out
}
