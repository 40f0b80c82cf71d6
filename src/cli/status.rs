//! `status`: delivery state per subscription, database size and ingest
//! counters, read from the database (works while the agent runs).
//! `--watch` refreshes it every 2 s (in place on a terminal, one report
//! after the other otherwise) with the backlog's trend since the watch
//! began.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use clap::Args;

use super::{load_config, CliError, CliResult};
use crate::outbox::state::ConcurrencyMode;
use crate::status::{report, StatusReport};
use crate::timefmt::human_duration;

/// Arguments of `status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print JSON (the shape of the contract) instead of a table; with
    /// --watch, one compact document a line.
    #[arg(long)]
    pub json: bool,
    /// Refresh every 2 s until interrupted (Ctrl-C), with the backlog's
    /// trend since the watch began; in place on a terminal.
    #[arg(long)]
    pub watch: bool,
    /// With --watch: stop after this many reports.
    #[arg(long, value_name = "N", requires = "watch")]
    pub count: Option<u64>,
}

/// How often --watch refreshes.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// Prints the status.
pub fn run(path: Option<&std::path::Path>, args: StatusArgs) -> CliResult {
    let config = load_config(path)?;
    if args.watch {
        return watch(&config, &args);
    }
    let report = report(&config).map_err(CliError::runtime)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
        return Ok(());
    }
    print!("{}", render(&report));
    Ok(())
}

/// `--watch`: a report every [`WATCH_EVERY`]. On a terminal each one
/// replaces the last (cursor home, clear); otherwise (a pipe, a log) they
/// follow each other, each headed by its time, without escape codes.
fn watch(config: &crate::config::Config, args: &StatusArgs) -> CliResult {
    let terminal = std::io::stdout().is_terminal();
    let started = Instant::now();
    let started_at = crate::outbox::now_ms();
    let mut first: Option<Backlog> = None;
    let mut shown = 0u64;
    loop {
        let now_text = crate::timefmt::ms_to_rfc3339(crate::outbox::now_ms());
        let mut frame = String::new();
        match report(config) {
            Ok(r) if args.json => {
                frame = serde_json::to_string(&r).unwrap_or_default();
                frame.push('\n');
            }
            Ok(r) => {
                let backlog = Backlog::of(&r);
                let base = first.get_or_insert_with(|| backlog.clone());
                frame += &render(&r);
                frame += &trend(base, &backlog, started.elapsed(), started_at);
            }
            // The outbox may be briefly unreadable (a restart, an
            // upgrade): say so and keep watching.
            Err(e) => frame += &format!("cannot read the status: {e}\n"),
        }
        let mut out = std::io::stdout().lock();
        let written = if args.json {
            out.write_all(frame.as_bytes())
        } else if terminal {
            write!(
                out,
                "\x1b[H\x1b[2J{frame}\nrefreshing every {}s; Ctrl-C to stop ({now_text})\n",
                WATCH_EVERY.as_secs()
            )
        } else {
            write!(out, "--- {now_text} ---\n{frame}\n")
        };
        // A closed pipe (`| head`) ends the watch quietly.
        if written.and_then(|()| out.flush()).is_err() {
            return Ok(());
        }
        drop(out);
        shown += 1;
        if args.count.is_some_and(|n| shown >= n) {
            return Ok(());
        }
        std::thread::sleep(WATCH_EVERY);
    }
}

/// Pending deliveries per subscription, to compare over time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Backlog(Vec<(String, i64)>);

impl Backlog {
    fn of(r: &StatusReport) -> Backlog {
        Backlog(r.subscriptions.iter().map(|s| (s.name.clone(), s.pending)).collect())
    }
}

/// The backlog's trend since the watch began, one line per subscription:
/// where it stood, where it stands, how fast it moves and, while it
/// drains, about when it is empty.
fn trend(first: &Backlog, now: &Backlog, elapsed: Duration, started_at_ms: i64) -> String {
    let since = crate::timefmt::ms_to_rfc3339(started_at_ms);
    let secs = elapsed.as_secs_f64();
    if now.0.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "\nbacklog since the watch began ({since}, {} ago):\n",
        human_duration(elapsed.as_secs() as i64)
    );
    for (name, pending) in &now.0 {
        let Some(start) = first.0.iter().find(|(n, _)| n == name).map(|(_, p)| *p) else {
            out += &format!("  {name:<16} pending {pending} (new since the watch began)\n");
            continue;
        };
        let change = pending - start;
        let per_min = if secs >= 1.0 { change as f64 * 60.0 / secs } else { 0.0 };
        let how = if secs < 1.0 {
            "the trend shows from the next refresh".to_string()
        } else if change == 0 {
            "steady".to_string()
        } else if change > 0 {
            format!("growing {:.0}/min", per_min.abs().max(1.0))
        } else if *pending == 0 {
            format!("drained ({:.0}/min)", per_min.abs())
        } else {
            let left_s = (*pending as f64 / (per_min.abs() / 60.0)).round() as i64;
            format!(
                "draining {:.0}/min, empty in about {}",
                per_min.abs().max(1.0),
                human_duration(left_s)
            )
        };
        out += &format!("  {name:<16} pending {start} -> {pending} ({change:+}): {how}\n");
    }
    out
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
            last_error(s),
        );
    }
    out += &adaptive_limits(r);
    out += &rate_limits(r);
    out
}

/// Below the table, for the subscriptions with `concurrency = "adaptive"`
/// that the agent runs: how many requests each may keep on the wire now
/// (the answer to "why does it send only 3 at once?"). Fixed ones always
/// may `max_in_flight`, so the table stays as it was for them.
fn adaptive_limits(r: &StatusReport) -> String {
    let lines: Vec<String> = r
        .subscriptions
        .iter()
        .filter(|s| s.concurrency == Some(ConcurrencyMode::Adaptive))
        .filter_map(|s| {
            let limit = s.concurrency_limit?;
            let max = s.max_in_flight.map_or_else(|| "?".to_string(), |m| m.to_string());
            Some(format!(
                "  {:<16} in flight {} (limit {limit} of {max}, adaptive)\n",
                s.name, s.in_flight
            ))
        })
        .collect();
    if lines.is_empty() {
        return String::new();
    }
    format!("\nrequest concurrency:\n{}", lines.concat())
}

/// Below the table, the subscriptions with a `max_rate`: what a store may
/// send at most, whatever its concurrency (central IT's cap for a fleet).
fn rate_limits(r: &StatusReport) -> String {
    let lines: Vec<String> = r
        .subscriptions
        .iter()
        .filter_map(|s| {
            let rate = s.max_rate?;
            Some(format!(
                "  {:<16} at most {} requests/s (max_rate)\n",
                s.name,
                crate::outbox::report::rate_text(rate)
            ))
        })
        .collect();
    if lines.is_empty() {
        return String::new();
    }
    format!("\nrequest rate:\n{}", lines.concat())
}

/// The last error with its age; "past" once a delivery succeeded after it.
fn last_error(s: &crate::outbox::report::SubscriptionStatus) -> String {
    let Some(error) = s.last_error.as_deref() else {
        return "-".into();
    };
    let age = s.last_error_age_s.map(human_duration).unwrap_or_else(|| "?".into());
    if s.last_error_past {
        format!("past, {age} ago: {error}")
    } else {
        format!("{age} ago: {error}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::report::{IngestCounters, SubscriptionStatus};
    use crate::status::{DbStatus, SpoolStatus};

    fn sub(name: &str, mode: Option<ConcurrencyMode>, limit: Option<i64>) -> SubscriptionStatus {
        SubscriptionStatus {
            in_flight: limit.unwrap_or(0),
            concurrency: mode,
            max_in_flight: mode.map(|_| 16),
            concurrency_limit: limit,
            max_rate: None,
            ..SubscriptionStatus::example(name)
        }
    }

    fn report_of(subscriptions: Vec<SubscriptionStatus>) -> StatusReport {
        StatusReport {
            version: "0".into(),
            store_id: "0042".into(),
            agent_id: "till-03".into(),
            agent_running: true,
            uptime_s: Some(5),
            db: DbStatus {
                path: "outbox.db".into(),
                bytes: 0,
                max_bytes: 1,
                full: false,
                disk_full: false,
            },
            ingest: IngestCounters {
                accepted_total: 0,
                duplicate_total: 0,
                rejected_total: 0,
            },
            spool: SpoolStatus {
                dir: "spool".into(),
                incoming: 0,
                failed: 0,
            },
            reload_failed: None,
            subscriptions,
        }
    }

    #[test]
    fn adaptive_subscriptions_show_their_limit_below_the_table_fixed_ones_do_not() {
        let text = render(&report_of(vec![
            sub("erp", Some(ConcurrencyMode::Adaptive), Some(3)),
            sub("oms", Some(ConcurrencyMode::Fixed), Some(16)),
            // Adaptive, but not running (stopped): nothing to tell.
            sub("bus", Some(ConcurrencyMode::Adaptive), None),
        ]));
        assert!(
            text.ends_with("\nrequest concurrency:\n  erp              in flight 3 (limit 3 of 16, adaptive)\n"),
            "{text}"
        );
        assert!(!text.contains("oms              in flight"), "{text}");
        assert!(!text.contains("bus              in flight"), "{text}");
        let fixed = render(&report_of(vec![sub("oms", Some(ConcurrencyMode::Fixed), Some(16))]));
        assert!(!fixed.contains("request concurrency"), "{fixed}");
    }

    fn backlog(items: &[(&str, i64)]) -> Backlog {
        Backlog(items.iter().map(|(n, p)| (n.to_string(), *p)).collect())
    }

    #[test]
    fn the_trend_says_growing_draining_steady_and_new() {
        let first = backlog(&[("erp", 120), ("oms", 0), ("pos", 3)]);
        let now = backlog(&[("erp", 60), ("oms", 20), ("pos", 3), ("bus", 7)]);
        let text = trend(&first, &now, Duration::from_secs(60), 0);
        assert!(
            text.contains("since the watch began (1970-01-01T00:00:00Z, 1m00s ago)"),
            "{text}"
        );
        assert!(
            text.contains("erp              pending 120 -> 60 (-60): draining 60/min, empty in about 1m00s"),
            "{text}"
        );
        assert!(
            text.contains("oms              pending 0 -> 20 (+20): growing 20/min"),
            "{text}"
        );
        assert!(text.contains("pos              pending 3 -> 3 (+0): steady"), "{text}");
        assert!(
            text.contains("bus              pending 7 (new since the watch began)"),
            "{text}"
        );
        let drained = trend(&first, &backlog(&[("erp", 0)]), Duration::from_secs(30), 0);
        assert!(
            drained.contains("pending 120 -> 0 (-120): drained (240/min)"),
            "{drained}"
        );
        let at_once = trend(&first, &first, Duration::ZERO, 0);
        assert!(at_once.contains("the trend shows from the next refresh"), "{at_once}");
    }
}
