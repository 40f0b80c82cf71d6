//! `outbox-floor`: one event per request with the least machinery the
//! delivery promises allow, as a floor for the agent's drain (issue 15's
//! goal of ≥ 0.5 of nginx's raw rate).
//!
//! It drains the backlog of an agent's database (the agent stopped) to the
//! first subscription of the agent's config, with the agent's own parts for
//! the work every event needs: `read::head` for the next event of an entity,
//! the webhook body and signature and the HTTP client (`Webhook`), and the
//! writer thread with its group commit (`synchronous=FULL`) for the outcome.
//! What it leaves out is everything around them: no window of entities, no
//! backlog scan, no resends, retries only at once, no status, no couriers
//! (a task per request), no batches.
//!
//! The promises it keeps: one request per entity at a time, and an entity's
//! next event is read only after the outcome of the one before committed;
//! at most `max_in_flight` requests on the wire.
//!
//! Usage: `outbox-floor CONFIG [--threads N] [--http-only]` (N = 0, the
//! default: a current-thread runtime; otherwise N runtime workers). With
//! `--http-only` nothing is read or written per event: the first event is
//! posted as many times as there are open deliveries, `max_in_flight` at a
//! time (the webhook client's own rate, body and signature included; the
//! database is left as it was). Prints one JSON line: mode, events,
//! seconds, events/s, CPU µs per event.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use store_outbox::deliver::destination::{AnswerKind, Destination};
use store_outbox::deliver::destinations::webhook::Webhook;
use store_outbox::deliver::envelope::Source;
use store_outbox::outbox::writer::handoff::{Decision, Outcome, Receipt, Recorded};
use store_outbox::outbox::writer::Writer;
use store_outbox::outbox::{self, now_ms, read};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut config = None;
    let mut threads = 0usize;
    let mut http_only = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--http-only" => http_only = true,
            "--threads" => threads = args.next().context("--threads N")?.parse().context("--threads N")?,
            _ if config.is_none() => config = Some(PathBuf::from(arg)),
            other => bail!("unexpected argument {other:?}; usage: outbox-floor CONFIG [--threads N]"),
        }
    }
    let config = config.context("usage: outbox-floor CONFIG [--threads N]")?;
    let runtime = if threads == 0 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(drain(config, http_only))
}

async fn drain(config_path: PathBuf, http_only: bool) -> anyhow::Result<()> {
    let config =
        store_outbox::deliver::destinations::load_config(Some(&config_path)).map_err(|e| anyhow::anyhow!("{}", e.0))?;
    let db = config.agent.data_dir.join("outbox.db");
    let mut conn = outbox::open_writer(&db).map_err(|e| anyhow::anyhow!("{e}"))?;
    let subs = outbox::register_subscriptions(&mut conn, &config.subscriptions)?;
    let sub = subs.first().context("the config has no subscription")?.clone();
    let reader = outbox::open_reader(&db).map_err(|e| anyhow::anyhow!("{e}"))?;
    // Every entity with something open, in the order of its first open
    // event (the agent's backlog scan visits them in the same order).
    let mut ready: VecDeque<(i64, i64)> = VecDeque::new();
    let mut seen = HashSet::new();
    let mut open = Vec::new();
    read::each_open(&reader, sub.id, |entity_id, seq, entity_seq| {
        open.push((seq, entity_id, entity_seq))
    })?;
    open.sort_unstable();
    let total = open.len() as u64;
    for (_, entity_id, entity_seq) in open {
        if seen.insert(entity_id) {
            ready.push_back((entity_id, entity_seq));
        }
    }
    drop(seen);
    let (writer, writer_thread) = Writer::start(conn, &subs, u64::MAX, Arc::new(tokio::sync::Notify::new()));
    let writer = Arc::new(writer);
    let webhook = Arc::new(
        Webhook::new(
            sub.config.clone(),
            Source {
                store_id: config.agent.store_id.clone(),
                agent_id: config.agent.agent_id.clone(),
            },
        )
        .map_err(|e| anyhow::anyhow!(e))?,
    );
    let max_in_flight = sub.config.max_in_flight;
    if http_only {
        let &(entity_id, from) = ready.front().context("nothing to send")?;
        let event = Arc::new(read::head(&reader, sub.id, entity_id, from)?.context("no head")?.event);
        return post_only(webhook, event, total, max_in_flight).await;
    }
    let (recorded_tx, mut recorded_rx) = tokio::sync::mpsc::unbounded_channel::<Recorded>();
    let mut requests = tokio::task::JoinSet::new();
    // ticket → (entity, its event's entity_seq). A receipt's number is
    // `ticket × 2 + delivered`: the commit can be told before the task's end
    // is seen (on a multi-thread runtime), so it carries the answer itself.
    let mut waiting: HashMap<u64, (i64, i64)> = HashMap::new();
    let mut next_ticket = 0u64;
    let mut delivered = 0u64;
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    loop {
        // One read transaction for the round's lookups, as the agent's
        // scheduler has (not one per lookup).
        let round = requests.len() < max_in_flight && !ready.is_empty();
        if round {
            read::begin_snapshot(&reader)?;
        }
        while requests.len() < max_in_flight {
            let Some((entity_id, from)) = ready.pop_front() else {
                break;
            };
            let Some(head) = read::head(&reader, sub.id, entity_id, from)? else {
                continue; // the entity is done
            };
            let ticket = next_ticket;
            next_ticket += 1;
            waiting.insert(ticket, (entity_id, head.event.entity_seq));
            let (webhook, writer, to, sub_id) = (webhook.clone(), writer.clone(), recorded_tx.clone(), sub.id);
            let expected = writer.expect_outcome();
            requests.spawn(async move {
                let sent_at = Instant::now();
                let answer = webhook.send(&head.event).await;
                let ok = answer.kind == AnswerKind::Delivered;
                let outcome = Outcome {
                    sub_id,
                    event_seq: head.event.seq,
                    at_ms: now_ms(),
                    status: answer.status,
                    error: answer.error.clone(),
                    duration_ms: sent_at.elapsed().as_millis() as i64,
                    decision: if ok {
                        Decision::Delivered
                    } else {
                        Decision::Retry {
                            next_attempt_at_ms: now_ms(),
                        }
                    },
                    resends: head.resends,
                };
                writer
                    .record(outcome, Some(expected), Receipt::new(ticket * 2 + u64::from(ok), to))
                    .await;
            });
        }
        if round {
            read::end_snapshot(&reader)?;
        }
        if requests.is_empty() && waiting.is_empty() && ready.is_empty() {
            break;
        }
        tokio::select! {
            Some(done) = requests.join_next() => done?,
            Some(recorded) = recorded_rx.recv() => {
                let (ticket, ok) = (recorded.ticket / 2, recorded.ticket % 2 == 1);
                let (entity_id, entity_seq) = waiting.remove(&ticket).context("unknown ticket")?;
                if let Err(e) = recorded.result {
                    bail!("an outcome was not recorded: {e}");
                }
                if ok {
                    delivered += 1;
                    ready.push_back((entity_id, entity_seq + 1));
                } else {
                    ready.push_back((entity_id, entity_seq));
                }
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    drop(writer);
    drop(webhook);
    let _ = writer_thread.join();
    if delivered != total {
        bail!("{delivered} of {total} delivered");
    }
    print_figures("drain", delivered, seconds, cpu);
    Ok(())
}

/// `--http-only`: `event` posted `n` times, `max_in_flight` at a time.
async fn post_only(
    webhook: Arc<Webhook>,
    event: Arc<read::StoredEvent>,
    n: u64,
    max_in_flight: usize,
) -> anyhow::Result<()> {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..max_in_flight {
        let (webhook, event, next) = (webhook.clone(), event.clone(), next.clone());
        senders.spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let answer = webhook.send(&event).await;
                if answer.kind != AnswerKind::Delivered {
                    return Err(anyhow::anyhow!("not delivered: {:?}", answer.error));
                }
            }
            Ok(())
        });
    }
    while let Some(done) = senders.join_next().await {
        done??;
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    print_figures("http_only", n, seconds, cpu);
    Ok(())
}

/// The one JSON line the bench reads: `events` in `seconds` with `cpu`
/// seconds of this process's CPU.
fn print_figures(mode: &str, events: u64, seconds: f64, cpu: f64) {
    println!(
        "{}",
        serde_json::json!({
            "mode": mode,
            "events": events,
            "seconds": seconds,
            "events_per_s": events as f64 / seconds.max(1e-9),
            "cpu_us_per_event": cpu * 1e6 / events.max(1) as f64,
        })
    );
}

/// This process's CPU time (user + system), seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}
