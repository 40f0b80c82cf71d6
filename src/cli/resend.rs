//! `resend`: queue deliveries again (parked ones, or any event by id).

use clap::Args;

use super::events::parse_since;
use super::{load_config, CliError, CliResult};
use crate::outbox;
use crate::outbox::resend::{resend, ResendError, ResendRequest};

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
    let request = ResendRequest {
        event_ids: args.event_ids,
        parked: args.parked,
        subscription: args.subscription,
        since_ms: args.since.as_deref().map(parse_since).transpose()?,
    };
    let db_path = config.db_path();
    if !db_path.exists() {
        return Err(CliError::runtime(format!(
            "{}: no database here yet",
            db_path.display()
        )));
    }
    let mut conn = outbox::open_writer(&db_path).map_err(CliError::runtime)?;
    let outcome = resend(&mut conn, &request).map_err(|e| match e {
        ResendError::UnknownSubscription(name) => {
            CliError::usage(format!("--subscription {name:?}: no such subscription"))
        }
        other => CliError::runtime(format!("{}: {other}", db_path.display())),
    })?;
    let n = outcome.queued;
    println!("queued {n} deliver{} again", if n == 1 { "y" } else { "ies" });
    if !outcome.unknown.is_empty() {
        return Err(CliError::runtime(format!(
            "not in the outbox (or no delivery for that subscription): {}",
            outcome.unknown.join(", ")
        )));
    }
    Ok(())
}
