//! `show`: one event with every delivery attempt.

use clap::Args;

use super::{load_config, CliError, CliResult};
use crate::outbox::{self, read};
use crate::timefmt::human_duration;

/// Arguments of `show`.
#[derive(Args, Debug)]
pub struct ShowArgs {
    /// The event's id.
    pub event_id: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Prints the event; exit 1 if it is not in the outbox.
pub fn run(path: Option<&std::path::Path>, args: ShowArgs) -> CliResult {
    let config = load_config(path)?;
    let conn = outbox::open_reader(&config.db_path()).map_err(CliError::runtime)?;
    let detail = read::event_detail(&conn, &args.event_id)
        .map_err(CliError::runtime)?
        .ok_or_else(|| CliError::runtime(format!("{}: no such event in the outbox (or pruned)", args.event_id)))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&detail).unwrap_or_default());
        return Ok(());
    }
    println!("event       {}", detail.event_id);
    println!("type        {}", detail.event_type);
    println!("entity      {}  #{}", detail.entity, detail.entity_seq);
    println!("occurred    {}", detail.occurred_at);
    println!("stored      {}", detail.ingested_at);
    if let Some(c) = &detail.correlation_id {
        println!("correlation {c}");
    }
    println!("attributes  {}", detail.attributes);
    println!("payload     {}", detail.payload);
    for d in &detail.deliveries {
        let next = match (&d.next_attempt_at, d.next_attempt_in_s) {
            (Some(at), Some(secs)) => format!(", next attempt in {} ({at})", human_duration(secs)),
            _ => String::new(),
        };
        println!(
            "\n{}: {} ({} attempts){next}",
            d.subscription,
            d.state,
            d.attempts.len()
        );
        for a in &d.attempts {
            let status = a.status.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
            println!(
                "  {}  {:>4}  {:>6} ms  {}",
                a.at,
                status,
                a.duration_ms,
                a.error.as_deref().unwrap_or("ok")
            );
        }
    }
    Ok(())
}
