//! `resend`: queue deliveries again (parked ones, or any event by id).
//!
//! A resent delivery keeps its place in its entity's order (its `entity_seq`)
//! and its `webhook-id`. The running agent notices within a few seconds: the
//! command bumps `resend_generation` in `meta`, which every scheduler watches.

use clap::Args;
use rusqlite::params;

use super::events::parse_since;
use super::{load_config, CliError, CliResult};
use crate::outbox::{self, PARKED};

/// Arguments of `resend`.
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["event_ids", "parked"])))]
pub struct ResendArgs {
    /// Event ids to queue again (for every subscription, or --subscription).
    pub event_ids: Vec<String>,
    /// Queue every parked delivery again.
    #[arg(long)]
    pub parked: bool,
    /// Only this subscription.
    #[arg(long, value_name = "S")]
    pub subscription: Option<String>,
    /// With --parked: only events stored since T (RFC 3339 or a duration ago).
    #[arg(long, value_name = "T", requires = "parked")]
    pub since: Option<String>,
}

/// Queues the deliveries again and says how many.
pub fn run(path: Option<&std::path::Path>, args: ResendArgs) -> CliResult {
    let config = load_config(path)?;
    let since = args.since.as_deref().map(parse_since).transpose()?;
    let db_path = config.db_path();
    if !db_path.exists() {
        return Err(CliError::runtime(format!(
            "{}: no database here yet",
            db_path.display()
        )));
    }
    let mut conn = outbox::open_writer(&db_path).map_err(CliError::runtime)?;
    let db_err = |e: rusqlite::Error| CliError::runtime(format!("{}: {e}", db_path.display()));
    let tx = conn.transaction().map_err(db_err)?;
    if let Some(name) = &args.subscription {
        let known: bool = tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM subscriptions WHERE name = ?1)",
                [name],
                |r| r.get(0),
            )
            .map_err(db_err)?;
        if !known {
            return Err(CliError::usage(format!(
                "--subscription {name:?}: no such subscription"
            )));
        }
    }
    // Reset the give-up clock; attempts are kept for `show`.
    let reset = "UPDATE deliveries SET state = 0, first_failed_at = NULL, next_attempt_at = NULL";
    let sub_filter = "(?2 IS NULL OR sub_id = (SELECT id FROM subscriptions WHERE name = ?2))";
    let mut changed = 0;
    if args.parked {
        changed += tx
            .execute(
                &format!(
                    "{reset} WHERE state = ?1 AND {sub_filter}
                     AND (?3 IS NULL OR event_seq IN (SELECT seq FROM events WHERE ingested_at >= ?3))"
                ),
                params![PARKED, args.subscription, since],
            )
            .map_err(db_err)?;
    }
    let mut unknown = Vec::new();
    for id in &args.event_ids {
        let n = tx
            .execute(
                &format!("{reset} WHERE event_seq = (SELECT seq FROM events WHERE event_id = ?1) AND {sub_filter}"),
                params![id, args.subscription],
            )
            .map_err(db_err)?;
        if n == 0 {
            unknown.push(id.as_str());
        }
        changed += n;
    }
    tx.execute(
        "INSERT INTO meta(key, value) VALUES ('resend_generation', '1')
         ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1",
        [],
    )
    .map_err(db_err)?;
    tx.commit().map_err(db_err)?;
    println!(
        "queued {changed} deliver{} again",
        if changed == 1 { "y" } else { "ies" }
    );
    if !unknown.is_empty() {
        return Err(CliError::runtime(format!(
            "not in the outbox (or no delivery for that subscription): {}",
            unknown.join(", ")
        )));
    }
    Ok(())
}
