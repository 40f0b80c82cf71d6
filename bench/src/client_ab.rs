//! Phase `client_ab` (issue 25 item 8): two agent binaries (the one under
//! test, `--agent-bin`, and `--ab-bin`; for issue 25 the hand-written HTTP
//! client and the `store_outbox_reqwest` build) measured in one run, alternately,
//! round after round (A B, then B A, so that a drift of the machine's load
//! is shared):
//!
//! - the uplink phase's drains on loopback, one event per request and
//!   batches (`uplink::drain`: events/s from the first arrival, agent CPU
//!   per event, duplicates, order, signatures);
//! - a store's rate: `--ab-rate` events/s paced into the socket for
//!   `--ab-rate-secs`, delivered to the same receiver; the agent's CPU time
//!   (utime + stime of `/proc/PID/stat`, which counts exited threads too)
//!   over those events. CPU time, unlike throughput, does not depend on what
//!   else the machine runs;
//! - idle RSS: VmRSS after start and a few deliveries, and again after
//!   `--ab-idle-secs` with nothing to do;
//! - the binaries' sizes.
//!
//! Loopback only: through the WAN link of the `uplink` phase, one event per
//! request is bound by the link's round trip, not by the client.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::json;

use crate::agent::{Agent, AgentDir, Sub, SECRET};
use crate::uplink::{self, Counts, Shared};
use crate::{sys, Run};

/// One store-rate run's figures.
#[derive(Debug, serde::Serialize)]
struct Rate {
    events: u64,
    seconds: f64,
    agent_cpu_ticks: u64,
    agent_cpu_us_per_event: f64,
    /// VmRSS after start and the warm-up deliveries.
    rss_after_start_kib: u64,
    /// VmRSS after the idle time that follows the paced events.
    rss_idle_kib: u64,
    hwm_kib: u64,
}

/// The receiver of the uplink phase on loopback: its URL, its counts, its task.
async fn receiver() -> anyhow::Result<(String, Arc<Shared>, tokio::task::JoinHandle<()>)> {
    let shared = Arc::new(Shared {
        key: store_outbox::signing::decode_secret(SECRET).map_err(|e| anyhow!(e))?,
        counts: Mutex::new(Counts::default()),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hooks", listener.local_addr()?);
    let app = axum::Router::new().fallback(uplink::handle).with_state(shared.clone());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, shared, server))
}

fn delivered(shared: &Shared) -> u64 {
    shared.counts.lock().unwrap_or_else(|p| p.into_inner()).events
}

/// Waits until the receiver has `n` distinct events, for at most `max`.
async fn wait_delivered(shared: &Shared, n: u64, max: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + max;
    while delivered(shared) < n {
        if Instant::now() >= deadline {
            bail!("{} of {n} events delivered within {max:?}", delivered(shared));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Sends events `from..to` one at a time on the agent's socket, at `rate`
/// per second on a fixed schedule (a late one does not push the rest back),
/// each acknowledged before the next.
fn paced(socket: &Path, prefix: &str, from: u64, to: u64, rate: f64) -> anyhow::Result<()> {
    let stream = UnixStream::connect(socket).context("the ingest socket")?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let start = Instant::now();
    for i in from..to {
        let due = start + Duration::from_secs_f64((i - from) as f64 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let line = format!(
            r#"{{"event_id":"{prefix}-{i:08}","type":"SaleCreated","entity":"till:{}","attributes":{{"terminal":"03"}},"payload":{}}}"#,
            i % 8,
            uplink::sale(i)
        );
        writer.write_all(line.as_bytes())?;
        writer.write_all(b"\n")?;
        let mut reply = String::new();
        if reader.read_line(&mut reply)? == 0 || !reply.contains("\"ok\":true") {
            bail!("event refused: {reply}");
        }
    }
    Ok(())
}

/// A store's rate into one agent: warm-up, `rate` events/s for `secs`, then
/// `idle` with nothing to do.
async fn store_rate(bin: &Path, work: &Path, rate: f64, secs: u64, idle: Duration) -> anyhow::Result<Rate> {
    const WARM_UP: u64 = 10;
    let (url, shared, server) = receiver().await?;
    let dir = AgentDir::new(work.join("rate"))?;
    dir.write_config(Some(&Sub { url, max_in_flight: 16 }))?;
    let mut agent = Agent::spawn(bin, &dir, "rate.log")?;
    agent.wait_ready(&dir, Duration::from_secs(30)).await?;
    // A few deliveries first: the connection is open and the pool warm, as
    // in a store that has been running.
    let socket = dir.socket.clone();
    tokio::task::spawn_blocking(move || paced(&socket, "rate", 0, WARM_UP, rate)).await??;
    wait_delivered(&shared, WARM_UP, Duration::from_secs(30)).await?;
    let after_start = agent.mem().ok_or_else(|| anyhow!("no VmRSS"))?;
    let n = (rate * secs as f64).round() as u64;
    let cpu0 = sys::cpu_ticks(agent.pid).ok_or_else(|| anyhow!("no /proc/PID/stat"))?;
    let t0 = Instant::now();
    let socket = dir.socket.clone();
    tokio::task::spawn_blocking(move || paced(&socket, "rate", WARM_UP, WARM_UP + n, rate)).await??;
    wait_delivered(&shared, WARM_UP + n, Duration::from_secs(60)).await?;
    let cpu1 = sys::cpu_ticks(agent.pid).ok_or_else(|| anyhow!("no /proc/PID/stat"))?;
    let seconds = t0.elapsed().as_secs_f64();
    tokio::time::sleep(idle).await;
    let idle_mem = agent.mem().ok_or_else(|| anyhow!("no VmRSS"))?;
    agent.stop(Duration::from_secs(10));
    server.abort();
    let ticks = cpu1.saturating_sub(cpu0);
    Ok(Rate {
        events: n,
        seconds,
        agent_cpu_ticks: ticks,
        agent_cpu_us_per_event: ticks as f64 * 1e6 / sys::ticks_per_second() as f64 / n.max(1) as f64,
        rss_after_start_kib: after_start.rss_kib,
        rss_idle_kib: idle_mem.rss_kib,
        hwm_kib: idle_mem.hwm_kib,
    })
}

/// The phase: see the module's comment.
pub async fn phase(run: &mut Run) -> anyhow::Result<()> {
    // Part of a full run only when asked for: it needs a second binary.
    let Some(other) = run.args.ab_bin.clone() else {
        if run.args.only.is_some() {
            bail!("client_ab needs --ab-bin");
        }
        return Ok(());
    };
    run.phase("client_ab: two agent binaries, alternately (issue 25 item 8)");
    let b_copy = run.work.join("store-outbox-ab");
    std::fs::copy(&other, &b_copy).with_context(|| format!("copying {}", other.display()))?;
    let labels = run.args.ab_labels.clone();
    let [a_label, b_label] = match labels.as_slice() {
        [a, b] => [a.clone(), b.clone()],
        _ => bail!("--ab-labels: two names"),
    };
    let bins: [(String, PathBuf); 2] = [(a_label, run.bin.clone()), (b_label, b_copy)];
    for (label, bin) in &bins {
        let bytes = std::fs::metadata(bin)?.len();
        eprintln!("  {label}: {bytes} bytes ({:.2} MiB)", bytes as f64 / 1048576.0);
        run.set(&format!("client_ab_{label}_binary_bytes"), bytes);
    }
    let events = run.args.ab_events;
    let batch_events = run.args.ab_batch_events;
    let settings: Vec<&uplink::Setting> = uplink::SETTINGS
        .iter()
        .filter(|s| s.name == "one_event" || s.name == "batches")
        .collect();
    for round in 0..run.args.ab_rounds {
        // A B, then B A.
        let order: Vec<&(String, PathBuf)> = if round % 2 == 0 {
            bins.iter().collect()
        } else {
            bins.iter().rev().collect()
        };
        for (label, bin) in order {
            let work = run.work.join(format!("ab-{label}-{round}"));
            std::fs::create_dir_all(&work)?;
            for setting in &settings {
                let n = if setting.name == "one_event" {
                    events
                } else {
                    batch_events
                };
                if n == 0 {
                    continue;
                }
                let load = sys::loadavg()[0];
                let d = uplink::drain(bin, &work, setting, None, n, 10_000, Duration::from_secs(600)).await?;
                eprintln!(
                    "  round {round} {label:<8} loopback {:<9} {:>8.0} events/s  {:>5.1} events/request  CPU/event agent {:.1} µs  ({} events; {} duplicates, {} order violations, {} bad signatures; load {load:.1})",
                    d.setting, d.events_per_s, d.events_per_request, d.agent_cpu_us_per_event, d.events,
                    d.duplicates, d.order_violations, d.bad_signatures
                );
                let mut v = serde_json::to_value(&d)?;
                v["load_1min"] = json!(load);
                run.set(&format!("client_ab_{label}_{}_{round}", d.setting), v);
            }
            if run.args.ab_rate_secs > 0 {
                let load = sys::loadavg()[0];
                let r = store_rate(
                    bin,
                    &work,
                    run.args.ab_rate,
                    run.args.ab_rate_secs,
                    Duration::from_secs(run.args.ab_idle_secs),
                )
                .await?;
                eprintln!(
                    "  round {round} {label:<8} {} ev/s for {:.0} s: agent CPU {:.1} µs/event ({} ticks for {} events); VmRSS {:.1} MiB after start, {:.1} MiB idle (load {load:.1})",
                    run.args.ab_rate, r.seconds, r.agent_cpu_us_per_event, r.agent_cpu_ticks, r.events,
                    r.rss_after_start_kib as f64 / 1024.0, r.rss_idle_kib as f64 / 1024.0
                );
                let mut v = serde_json::to_value(&r)?;
                v["load_1min"] = json!(load);
                run.set(&format!("client_ab_{label}_rate_{round}"), v);
            }
            let _ = std::fs::remove_dir_all(&work);
        }
    }
    Ok(())
}
