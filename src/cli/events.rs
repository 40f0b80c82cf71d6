//! `events`: list deliveries, with filters, from the database.

use clap::builder::PossibleValue;
use clap::{Args, ValueEnum};

use super::{load_config, CliError, CliResult};
use crate::outbox::state::DeliveryState;
use crate::outbox::{self, read};
use crate::timefmt;

/// Arguments of `events`.
#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Only deliveries in this state.
    #[arg(long, value_enum)]
    pub state: Option<DeliveryState>,
    /// Only this subscription.
    #[arg(long, value_name = "S")]
    pub subscription: Option<String>,
    /// Only this entity.
    #[arg(long, value_name = "E")]
    pub entity: Option<String>,
    /// Only events stored since T: an RFC 3339 time or a duration ago ("2h").
    #[arg(long, value_name = "T")]
    pub since: Option<String>,
    /// At most N rows (oldest first).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub limit: i64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Parses `--since` (an RFC 3339 time or a duration before now); a bad
/// value is a usage error.
pub(super) fn parse_since(text: &str) -> Result<i64, CliError> {
    timefmt::parse_since(text, outbox::now_ms()).map_err(|e| CliError::usage(format!("--since {e}")))
}

/// `--state` takes a delivery state's name.
impl ValueEnum for DeliveryState {
    fn value_variants<'a>() -> &'a [Self] {
        // The order `--help` has always listed them in.
        &[DeliveryState::Pending, DeliveryState::Parked, DeliveryState::Delivered]
    }
    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.as_str()))
    }
}

/// Lists deliveries.
pub fn run(path: Option<&std::path::Path>, args: EventsArgs) -> CliResult {
    let config = load_config(path)?;
    let conn = outbox::open_reader(&config.db_path()).map_err(CliError::runtime)?;
    let filter = read::DeliveryFilter {
        state: args.state,
        subscription: args.subscription,
        entity: args.entity,
        since_ms: args.since.as_deref().map(parse_since).transpose()?,
        limit: args.limit.max(0),
    };
    let rows = read::list_deliveries(&conn, &filter).map_err(CliError::runtime)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default());
        return Ok(());
    }
    if rows.is_empty() {
        println!("no deliveries match");
        return Ok(());
    }
    println!(
        "{:<38} {:<22} {:<20} {:>5} {:<12} {:<9} {:>8}  LAST ERROR",
        "EVENT ID", "TYPE", "ENTITY", "SEQ", "SUBSCRIPTION", "STATE", "ATTEMPTS"
    );
    for r in rows {
        println!(
            "{:<38} {:<22} {:<20} {:>5} {:<12} {:<9} {:>8}  {}",
            r.event_id,
            r.event_type,
            r.entity,
            r.entity_seq,
            r.subscription,
            r.state,
            r.attempts,
            r.last_error.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}
