//! Phase `fleet` (issue 27 item 3): N real agents (default 100), each with
//! its own directory, outbox and ingest socket, one subscription each to the
//! ONE central (`central.rs`) on loopback. A backlog is built while central
//! is down (it answers 503 with `Retry-After`, or its port is closed:
//! `--fleet-outage`), the agents running and probing; then central comes
//! back with a capacity of C requests a second and the phase measures how
//! the fleet drains: drain time against backlog/C, the offered load against
//! C per second, the share refused, Jain's fairness across stores, the
//! slowest store against the median one, and lost / out-of-order /
//! duplicate events. Then every agent's own `status --json` must say that
//! nothing is pending.
//!
//! Cases: one event per request, and batches + gzip. Central modes:
//! `refuse` (503 beyond capacity) and `queue` (a FIFO, bounded in wait).
//! Configs: the baseline binary (`--fleet-baseline-bin`: a fixed
//! `Retry-After`, no `max_rate`), the new one without `max_rate`, and with
//! `max_rate` = C / N x `--fleet-rate-factor` (and adaptive concurrency if
//! asked). Every run measures them alternately, same sizes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::json;

use crate::agent::{self, Agent, AgentDir};
use crate::central::{self, Central, Mode};
use crate::sys;
use crate::Run;

/// A setting of the agents' subscription.
#[derive(Debug, Clone)]
struct Config {
    name: &'static str,
    /// The `--fleet-baseline-bin` binary (fixed Retry-After, no max_rate).
    baseline: bool,
    max_rate: bool,
    adaptive: bool,
}

const CONFIGS: [Config; 5] = [
    Config {
        name: "base",
        baseline: true,
        max_rate: false,
        adaptive: false,
    },
    Config {
        name: "new",
        baseline: false,
        max_rate: false,
        adaptive: false,
    },
    Config {
        name: "new_rate",
        baseline: false,
        max_rate: true,
        adaptive: false,
    },
    Config {
        name: "new_adaptive",
        baseline: false,
        max_rate: false,
        adaptive: true,
    },
    Config {
        name: "new_rate_adaptive",
        baseline: false,
        max_rate: true,
        adaptive: true,
    },
];

/// One event per request, or batches + gzip.
#[derive(Debug, Clone, Copy)]
struct Case {
    name: &'static str,
    batch: bool,
}

const CASES: [Case; 2] = [
    Case {
        name: "one_event",
        batch: false,
    },
    Case {
        name: "batches_gzip",
        batch: true,
    },
];

/// The phase's sizes and settings, from the command line.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Opts {
    pub agents: usize,
    /// Central's capacity, requests/s: one event per request, and batches.
    pub capacity_one: f64,
    pub capacity_batch: f64,
    /// Backlog per store: one event per request, and batches.
    pub events_one: u64,
    pub events_batch: u64,
    pub entities: u64,
    pub retry_after_s: u64,
    pub max_in_flight: usize,
    pub batch_max_events: usize,
    pub rate_factors: Vec<f64>,
    pub queue_max_wait_s: f64,
    /// "503" (central answers 503 while down) or "closed" (its port is closed).
    pub outage: String,
    pub modes: Vec<String>,
    pub cases: Vec<String>,
    pub configs: Vec<String>,
    pub retry_max_s: u64,
}

impl Opts {
    pub fn of(run: &Run) -> Opts {
        let a = &run.args;
        let quick = a.quick || a.fleet_quick;
        let agents = a.fleet_agents.unwrap_or(if quick { 20 } else { 100 });
        let capacity_one = a.fleet_capacity.unwrap_or(if quick { 400.0 } else { 1000.0 });
        let capacity_batch = a.fleet_batch_capacity.unwrap_or(if quick { 40.0 } else { 100.0 });
        let secs = a.fleet_drain_secs.unwrap_or(if quick { 10.0 } else { 20.0 });
        let per_store = |events: f64| ((events / agents.max(1) as f64).round() as u64).max(1);
        Opts {
            agents,
            capacity_one,
            capacity_batch,
            events_one: a.fleet_events.unwrap_or(per_store(capacity_one * secs)),
            events_batch: a
                .fleet_batch_events
                .unwrap_or(per_store(capacity_batch * a.fleet_batch_max_events as f64 * secs)),
            entities: a.fleet_entities,
            retry_after_s: a.fleet_retry_after,
            max_in_flight: a.fleet_max_in_flight,
            batch_max_events: a.fleet_batch_max_events,
            rate_factors: a.fleet_rate_factor.clone(),
            queue_max_wait_s: a.fleet_queue_secs,
            outage: a.fleet_outage.clone(),
            modes: a
                .fleet_modes
                .clone()
                .unwrap_or_else(|| vec!["refuse".into(), "queue".into()]),
            cases: a
                .fleet_cases
                .clone()
                .unwrap_or_else(|| CASES.iter().map(|c| c.name.to_string()).collect()),
            configs: a
                .fleet_configs
                .clone()
                .unwrap_or_else(|| vec!["base".into(), "new".into(), "new_rate".into()]),
            retry_max_s: 30,
        }
    }
}

/// The figures of one drain.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Figures {
    pub case: String,
    pub mode: String,
    pub config: String,
    pub binary: String,
    pub agents: usize,
    pub events_per_store: u64,
    pub entities_per_store: u64,
    pub capacity_rps: f64,
    pub max_rate: Option<f64>,
    pub max_in_flight: usize,
    pub concurrency: &'static str,
    pub batch_max_events: Option<usize>,
    pub backlog_events: u64,
    /// backlog / C (batches: backlog / (C x batch.max_events)).
    pub ideal_s: f64,
    /// Central up to the last event delivered.
    pub drain_s: f64,
    pub drain_ratio: f64,
    pub events_per_request: f64,
    /// Max over full 1 s windows after the first 2 s of offered / C.
    pub offered_max_ratio: f64,
    pub offered_max_window: usize,
    /// Mean over the same windows of offered / C.
    pub offered_mean_ratio: f64,
    /// Max over 100 ms windows after the first 2 s of offered (per second) / C.
    pub offered_peak_100ms_ratio: f64,
    pub requests: u64,
    pub accepted: u64,
    pub refused: u64,
    pub refused_share: f64,
    pub down_requests: u64,
    /// Min over 5 s windows while every store was backlogged of Jain's index.
    pub jain_min: Option<f64>,
    pub jain_windows: Vec<f64>,
    pub first_finish_s: f64,
    pub median_finish_s: f64,
    pub slowest_finish_s: f64,
    pub slowest_over_median: f64,
    /// Events not delivered (when `cut_short`: not yet delivered at the cut).
    pub lost: u64,
    pub order_violations: u64,
    pub duplicates: u64,
    pub bad_signatures: u64,
    pub invalid: u64,
    pub queue_wait_p50_ms: f64,
    pub queue_wait_p99_ms: f64,
    pub queue_wait_max_ms: f64,
    /// % of one core over the drain: all agents, and this process (central).
    pub agents_cpu_pct: f64,
    pub central_cpu_pct: f64,
    pub load1_after: f64,
    pub rss_idle_total_kib: u64,
    pub rss_idle_mean_kib: u64,
    pub pss_idle_total_kib: u64,
    pub rss_drain_peak_total_kib: u64,
    pub rss_drain_peak_agent_kib: u64,
    /// Agents whose `status --json` said pending 0 and in flight 0 at the end.
    pub status_settled: usize,
    pub status_pending_total: u64,
    pub cut_short: bool,
    pub csv: String,
    pub goals: Goals,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Goals {
    pub drain_le_1_2: bool,
    pub offered_le_1_25: bool,
    pub refused_le_10pct: bool,
    pub jain_ge_0_9: bool,
    pub slowest_le_1_5: bool,
    pub nothing_lost: bool,
}

fn pss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find(|l| l.starts_with("Pss:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The config of store `i`.
#[allow(clippy::too_many_arguments)]
fn write_config(
    dir: &AgentDir,
    i: usize,
    url: &str,
    o: &Opts,
    case: Case,
    cfg: &Config,
    factor: f64,
    capacity: f64,
) -> anyhow::Result<Option<f64>> {
    let d = dir.dir.display();
    let mut text = format!(
        "[agent]\nstore_id = \"{}\"\nagent_id = \"fleet\"\ndata_dir = \"{d}/data\"\n\n\
         [ingest]\nsocket = \"{d}/ingest.sock\"\nhttp_listen = \"off\"\nspool_dir = \"{d}/spool\"\n\n\
         [admin]\nlisten = \"off\"\n\n\
         [[subscription]]\nname = \"bench\"\nurl = \"{url}\"\nsecret = \"{}\"\n\
         max_in_flight = {}\ntimeout = \"30s\"\nretry = {{ initial = \"1s\", max = \"{}s\" }}\n",
        central::store_id(i),
        central::secret_of(i),
        o.max_in_flight,
        o.retry_max_s,
    );
    if case.batch {
        text.push_str(&format!(
            "batch = {{ max_events = {}, max_bytes = \"1MiB\", linger = \"20ms\" }}\ncompression = \"gzip\"\n",
            o.batch_max_events
        ));
    }
    if cfg.adaptive {
        text.push_str("concurrency = \"adaptive\"\n");
    }
    let rate = cfg.max_rate.then(|| {
        // Rounded to 3 decimals: what a person would write.
        (capacity / o.agents as f64 * factor * 1000.0).round() / 1000.0
    });
    if let Some(r) = rate {
        text.push_str(&format!("max_rate = {r}\n"));
    }
    std::fs::write(&dir.config, text).with_context(|| format!("{}", dir.config.display()))?;
    Ok(rate)
}

/// Jain's fairness index of `x` (1 when all are equal, 1/n when one gets all).
fn jain(x: &[f64]) -> Option<f64> {
    let sum: f64 = x.iter().sum();
    let sq: f64 = x.iter().map(|v| v * v).sum();
    (sq > 0.0).then(|| sum * sum / (x.len() as f64 * sq))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

struct Fleet {
    dirs: Vec<AgentDir>,
    agents: Vec<Agent>,
}

impl Fleet {
    fn stop(&mut self) {
        // SIGTERM to all first, so they stop in parallel, then reap each.
        for a in &self.agents {
            // SAFETY: kill(2) on our own child.
            unsafe {
                libc::kill(a.pid as i32, libc::SIGTERM);
            }
        }
        for a in &mut self.agents {
            a.stop(Duration::from_secs(10));
        }
    }
}

/// One drain: `cfg` with `bin`, `case`, central in `mode`.
#[allow(clippy::too_many_arguments)]
async fn drain(
    bin: &Path,
    work: &Path,
    csv_dir: &Path,
    o: &Opts,
    case: Case,
    mode: Mode,
    cfg: &Config,
    factor: f64,
    trace: Option<&Path>,
) -> anyhow::Result<Figures> {
    let label = if cfg.max_rate && o.rate_factors.len() > 1 {
        format!("{}x{factor}", cfg.name)
    } else {
        cfg.name.to_string()
    };
    let tag = format!("{}-{}-{label}", case.name, mode.name());
    let root = work.join(format!("fleet-{tag}"));
    let _ = std::fs::remove_dir_all(&root);
    let (capacity, per_store) = if case.batch {
        (o.capacity_batch, o.events_batch)
    } else {
        (o.capacity_one, o.events_one)
    };
    let backlog = per_store * o.agents as u64;
    let spec = central::Spec {
        mode,
        capacity,
        burst_secs: 0.1,
        max_wait: Duration::from_secs_f64(o.queue_max_wait_s),
        retry_after_s: o.retry_after_s,
        trace: trace.is_some(),
    };
    let closed = o.outage == "closed";
    let port = agent::free_port()?;
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let url = format!("http://{addr}/hooks");
    let mut central = if closed {
        None
    } else {
        Some(Central::start(addr, spec.clone(), o.agents, per_store, false).await?)
    };

    // The fleet, started with central down.
    let mut fleet = Fleet {
        dirs: Vec::new(),
        agents: Vec::new(),
    };
    let mut max_rate = None;
    for i in 0..o.agents {
        let dir = AgentDir::new(root.join(format!("a{i:04}")))?;
        max_rate = write_config(&dir, i, &url, o, case, cfg, factor, capacity)?;
        fleet.dirs.push(dir);
    }
    let result = async {
        for (i, dir) in fleet.dirs.iter().enumerate() {
            fleet.agents.push(Agent::spawn(bin, dir, &format!("agent-{i:04}.log"))?);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for (a, dir) in fleet.agents.iter_mut().zip(&fleet.dirs) {
            loop {
                if a.has_exited() {
                    bail!("an agent exited early; log:\n{}", a.log_tail(20));
                }
                if tokio::net::UnixStream::connect(&dir.socket).await.is_ok() {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("an agent was not ready within 60 s; log:\n{}", a.log_tail(20));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        // The backlog, while central is down: 16 stores at a time.
        let t_ingest = Instant::now();
        let gate = Arc::new(tokio::sync::Semaphore::new(16));
        let mut tasks = tokio::task::JoinSet::new();
        for (i, dir) in fleet.dirs.iter().enumerate() {
            let (socket, gate, entities) = (dir.socket.clone(), gate.clone(), o.entities);
            tasks.spawn(async move {
                let _permit = gate.acquire_owned().await?;
                tokio::task::spawn_blocking(move || {
                    crate::uplink::ingest(
                        &socket,
                        &central::store_id(i),
                        "till",
                        per_store,
                        entities,
                        i as u64 * 1_000_000,
                    )
                })
                .await?
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        let ingest_s = t_ingest.elapsed().as_secs_f64();
        // Let them all go offline and probe for a while.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rss: Vec<u64> = fleet
            .agents
            .iter()
            .map(|a| a.mem().map(|m| m.rss_kib).unwrap_or(0))
            .collect();
        let pss: u64 = fleet.agents.iter().map(|a| pss_kib(a.pid).unwrap_or(0)).sum();
        let rss_total: u64 = rss.iter().sum();

        // Central comes back.
        let up = if closed {
            central = Some(Central::start(addr, spec.clone(), o.agents, per_store, true).await?);
            Instant::now()
        } else {
            let c = central.as_ref().ok_or_else(|| anyhow!("no central"))?;
            c.come_back();
            c.up_at().unwrap_or_else(Instant::now)
        };
        let c = central.as_ref().ok_or_else(|| anyhow!("no central"))?;
        let cpu = |fleet: &Fleet| -> (u64, u64) {
            (
                fleet.agents.iter().map(|a| sys::cpu_ticks(a.pid).unwrap_or(0)).sum(),
                sys::cpu_ticks(std::process::id()).unwrap_or(0),
            )
        };
        let cpu0 = cpu(&fleet);
        let ideal = backlog as f64 / (capacity * if case.batch { o.batch_max_events as f64 } else { 1.0 });
        let limit = Duration::from_secs_f64((ideal * 6.0).max(60.0));
        let (mut peak_total, mut peak_agent) = (0u64, 0u64);
        let mut next_sample = Instant::now();
        let mut next_note = Instant::now() + Duration::from_secs(10);
        let mut cut_short = false;
        loop {
            let done = c.new_events();
            if done >= backlog {
                break;
            }
            if up.elapsed() > limit {
                cut_short = true;
                eprintln!("  {tag}: cut short by the time limit at {done} of {backlog}");
                break;
            }
            if Instant::now() >= next_sample {
                next_sample += Duration::from_secs(1);
                let rss: Vec<u64> = fleet
                    .agents
                    .iter()
                    .map(|a| a.mem().map(|m| m.rss_kib).unwrap_or(0))
                    .collect();
                peak_total = peak_total.max(rss.iter().sum());
                peak_agent = peak_agent.max(rss.iter().copied().max().unwrap_or(0));
            }
            if Instant::now() >= next_note {
                next_note += Duration::from_secs(10);
                eprintln!(
                    "  {tag}: {done} / {backlog} delivered after {:.0} s",
                    up.elapsed().as_secs_f64()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let wall = up.elapsed().as_secs_f64();
        let cpu1 = cpu(&fleet);
        let tps = sys::ticks_per_second() as f64;
        let agents_cpu_pct = (cpu1.0 - cpu0.0) as f64 / tps / wall * 100.0;
        let central_cpu_pct = (cpu1.1 - cpu0.1) as f64 / tps / wall * 100.0;

        // Each agent's own word: nothing pending, nothing in flight.
        let mut settled = 0usize;
        let mut pending_total = 0u64;
        let status_deadline = Instant::now() + Duration::from_secs(30);
        for dir in &fleet.dirs {
            loop {
                let s = agent::sub_status(bin, dir)?;
                let pending = s["pending"].as_u64().unwrap_or(u64::MAX);
                let in_flight = s["in_flight"].as_u64().unwrap_or(u64::MAX);
                if pending == 0 && in_flight == 0 {
                    settled += 1;
                    break;
                }
                if Instant::now() > status_deadline || cut_short {
                    pending_total += pending;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }

        // The figures, from central's windows.
        let (figs, csv_text, trace_rows) = c.with(|s| {
            let drain_s = if cut_short { wall } else { s.last_new_at };
            let full = drain_s.floor() as usize; // full 1 s windows
            let windows: Vec<f64> = (2..full)
                .map(|w| s.offered.get(w).copied().unwrap_or(0) as f64 / capacity)
                .collect();
            let (offered_max_window, offered_max) =
                windows.iter().enumerate().fold(
                    (0, 0.0f64),
                    |(bw, bv), (k, v)| if *v > bv { (k + 2, *v) } else { (bw, bv) },
                );
            let offered_mean = windows.iter().sum::<f64>() / windows.len().max(1) as f64;
            let peak_100ms = (20..(drain_s * 10.0).floor() as usize)
                .map(|w| s.offered_100ms.get(w).copied().unwrap_or(0) as f64 * 10.0 / capacity)
                .fold(0.0, f64::max);
            let mut finishes: Vec<f64> = s.finished_at.iter().map(|f| f.unwrap_or(drain_s)).collect();
            let first_finish = finishes.iter().copied().fold(f64::INFINITY, f64::min);
            let slowest = finishes.iter().copied().fold(0.0, f64::max);
            let med = median(&mut finishes);
            // Jain's index per 5 s window while every store still had a backlog.
            let mut jain_windows = Vec::new();
            let mut k = 0usize;
            while (k + 1) as f64 * 5.0 <= first_finish {
                let x: Vec<f64> = s
                    .per_store
                    .iter()
                    .map(|v| v.iter().skip(k * 5).take(5).map(|n| *n as f64).sum())
                    .collect();
                if let Some(j) = jain(&x) {
                    jain_windows.push(j);
                }
                k += 1;
            }
            if jain_windows.is_empty() {
                // No full window before the first store finished: the time
                // up to then, as one window.
                let upto = first_finish.floor().max(1.0) as usize;
                let x: Vec<f64> = s
                    .per_store
                    .iter()
                    .map(|v| v.iter().take(upto).map(|n| *n as f64).sum())
                    .collect();
                if let Some(j) = jain(&x) {
                    jain_windows.push(j);
                }
            }
            let jain_min = jain_windows.iter().copied().reduce(f64::min);
            let q = |p: f64| s.wait_us.value_at_quantile(p) as f64 / 1e3;
            let requests = s.requests_up;
            let refused_share = s.refused_up as f64 / requests.max(1) as f64;
            let lost = backlog.saturating_sub(s.new_events);
            let drain_ratio = drain_s / ideal;
            let slowest_over_median = slowest / med;
            let goals = Goals {
                drain_le_1_2: !cut_short && drain_ratio <= 1.2,
                offered_le_1_25: offered_max <= 1.25,
                refused_le_10pct: refused_share <= 0.10,
                jain_ge_0_9: jain_min.is_some_and(|j| j >= 0.9),
                slowest_le_1_5: slowest_over_median <= 1.5,
                nothing_lost: lost == 0
                    && s.order_violations == 0
                    && s.bad_signatures == 0
                    && s.invalid == 0
                    && settled == fleet.dirs.len(),
            };
            let mut csv = String::from("second,offered,accepted,refused,events_delivered,stores_finished\n");
            let last_window = s.offered.len().max(s.accepted.len()).max(s.events.len());
            for w in 0..last_window {
                let finished = s
                    .finished_at
                    .iter()
                    .filter(|f| f.is_some_and(|t| t < (w + 1) as f64))
                    .count();
                csv.push_str(&format!(
                    "{w},{},{},{},{},{finished}\n",
                    s.offered.get(w).unwrap_or(&0),
                    s.accepted.get(w).unwrap_or(&0),
                    s.refused.get(w).unwrap_or(&0),
                    s.events.get(w).unwrap_or(&0)
                ));
            }
            let figs = Figures {
                case: case.name.into(),
                mode: mode.name().into(),
                config: label.clone(),
                binary: if cfg.baseline { "baseline".into() } else { "new".into() },
                agents: o.agents,
                events_per_store: per_store,
                entities_per_store: o.entities,
                capacity_rps: capacity,
                max_rate,
                max_in_flight: o.max_in_flight,
                concurrency: if cfg.adaptive { "adaptive" } else { "fixed" },
                batch_max_events: case.batch.then_some(o.batch_max_events),
                backlog_events: backlog,
                ideal_s: ideal,
                drain_s,
                drain_ratio,
                events_per_request: s.new_events as f64 / s.accepted_up.max(1) as f64,
                offered_max_ratio: offered_max,
                offered_max_window,
                offered_mean_ratio: offered_mean,
                offered_peak_100ms_ratio: peak_100ms,
                requests,
                accepted: s.accepted_up,
                refused: s.refused_up,
                refused_share,
                down_requests: s.down_requests,
                jain_min,
                jain_windows,
                first_finish_s: first_finish,
                median_finish_s: med,
                slowest_finish_s: slowest,
                slowest_over_median,
                lost,
                order_violations: s.order_violations,
                duplicates: s.duplicates,
                bad_signatures: s.bad_signatures,
                invalid: s.invalid,
                queue_wait_p50_ms: q(0.5),
                queue_wait_p99_ms: q(0.99),
                queue_wait_max_ms: s.wait_us.max() as f64 / 1e3,
                agents_cpu_pct,
                central_cpu_pct,
                load1_after: sys::loadavg()[0],
                rss_idle_total_kib: rss_total,
                rss_idle_mean_kib: rss_total / rss.len().max(1) as u64,
                pss_idle_total_kib: pss,
                rss_drain_peak_total_kib: peak_total,
                rss_drain_peak_agent_kib: peak_agent,
                status_settled: settled,
                status_pending_total: pending_total,
                cut_short,
                csv: String::new(),
                goals,
            };
            let trace_rows = trace.map(|_| s.trace.clone());
            if let Some(v) = &s.first_violation {
                eprintln!("  {tag}: first order violation: {v}");
            }
            (figs, csv, trace_rows)
        });
        let mut figs = figs;
        let csv_path = csv_dir.join(format!("fleet-{tag}.csv"));
        std::fs::write(&csv_path, csv_text).with_context(|| format!("{}", csv_path.display()))?;
        figs.csv = csv_path.display().to_string();
        if let (Some(path), Some(rows)) = (trace, trace_rows) {
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
            let mut text = String::new();
            for (ms, store, status, events, wait) in rows {
                let store = if store == u32::MAX {
                    String::new()
                } else {
                    store.to_string()
                };
                text.push_str(&format!("{tag},{ms:.3},{store},{status},{events},{wait:.3}\n"));
            }
            f.write_all(text.as_bytes())?;
        }
        eprintln!(
            "  {tag}: ingest {:.1} s; drain {:.1} s (ideal {:.1}, x{:.2}); offered max {:.2} C; refused {:.1} %; \
             Jain min {}; slowest/median {:.2}; lost {}, violations {}, duplicates {}; status settled {}/{}; \
             CPU agents {:.0} %, central {:.0} %",
            ingest_s,
            figs.drain_s,
            figs.ideal_s,
            figs.drain_ratio,
            figs.offered_max_ratio,
            figs.refused_share * 100.0,
            figs.jain_min.map_or("-".into(), |j| format!("{j:.3}")),
            figs.slowest_over_median,
            figs.lost,
            figs.order_violations,
            figs.duplicates,
            figs.status_settled,
            o.agents,
            figs.agents_cpu_pct,
            figs.central_cpu_pct,
        );
        Ok(figs)
    }
    .await;
    fleet.stop();
    if let Some(c) = central.take() {
        c.stop().await;
    }
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&root);
    }
    result
}

/// The table of every drain (markdown).
fn table(all: &[Figures]) -> String {
    let mut t = String::from(
        "| case | central | config | max_rate | T s | T/ideal | offered/C max 1 s | peak 100 ms | refused | Jain min | slowest/median | ev/req | lost | order viol. | dups | queue wait p99 | CPU % (agents+central) | goals |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for f in all {
        let g = &f.goals;
        let mark = |ok: bool| if ok { "y" } else { "N" };
        t.push_str(&format!(
            "| {} | {} | {} | {} | {}{:.1} | {}{:.2} | {:.2} | {:.2} | {:.1} % | {} | {:.2} | {:.1} | {} | {} | {} | {:.0} ms | {:.0}+{:.0} | {}{}{}{}{}{} |\n",
            f.case,
            f.mode,
            f.config,
            f.max_rate.map_or("-".into(), |r| format!("{r}")),
            if f.cut_short { ">" } else { "" },
            f.drain_s,
            if f.cut_short { ">" } else { "" },
            f.drain_ratio,
            f.offered_max_ratio,
            f.offered_peak_100ms_ratio,
            f.refused_share * 100.0,
            f.jain_min.map_or("-".into(), |j| format!("{j:.3}")),
            f.slowest_over_median,
            f.events_per_request,
            if f.cut_short { format!("({} left)", f.lost) } else { f.lost.to_string() },
            f.order_violations,
            f.duplicates,
            f.queue_wait_p99_ms,
            f.agents_cpu_pct,
            f.central_cpu_pct,
            mark(g.drain_le_1_2),
            mark(g.offered_le_1_25),
            mark(g.refused_le_10pct),
            mark(g.jain_ge_0_9),
            mark(g.slowest_le_1_5),
            mark(g.nothing_lost),
        ));
    }
    t.push_str(
        "\ngoals (y/N), in order: T/ideal <= 1.2, offered/C (1 s windows after the first 2 s) <= 1.25, refused <= 10 %, \
         Jain >= 0.9, slowest/median <= 1.5, nothing lost or out of order (and every agent's status settled)\n",
    );
    t
}

/// The phase.
pub async fn phase(run: &mut Run) -> anyhow::Result<()> {
    let o = Opts::of(run);
    run.phase(&format!(
        "fleet: {} agents against one central (outage: {})",
        o.agents,
        if o.outage == "closed" {
            "port closed"
        } else {
            "503 + Retry-After"
        }
    ));
    if o.outage != "closed" && o.outage != "503" {
        bail!("--fleet-outage: \"503\" or \"closed\", not {:?}", o.outage);
    }
    let baseline: Option<PathBuf> = match &run.args.fleet_baseline_bin {
        Some(b) => {
            let copy = run.work.join("store-outbox-baseline");
            std::fs::copy(b, &copy).with_context(|| format!("copying {}", b.display()))?;
            Some(copy)
        }
        None => None,
    };
    let csv_dir = run.args.fleet_csv_dir.clone().unwrap_or_else(|| run.work.clone());
    std::fs::create_dir_all(&csv_dir)?;
    if let Some(path) = &run.args.fleet_trace {
        std::fs::write(path, "run,ms_since_up,store,status,events,queue_wait_ms\n")?;
    }
    for name in &o.configs {
        if !CONFIGS.iter().any(|c| c.name == name) {
            bail!("--fleet-configs: no config {name:?}");
        }
    }
    let mut all = Vec::new();
    let mut errors = Vec::new();
    for case in CASES.iter().filter(|c| o.cases.iter().any(|n| n == c.name)) {
        for mode_name in &o.modes {
            let mode = match mode_name.as_str() {
                "refuse" => Mode::Refuse,
                "queue" => Mode::Queue,
                other => bail!("--fleet-modes: refuse or queue, not {other:?}"),
            };
            let chosen = CONFIGS.iter().filter(|c| o.configs.iter().any(|n| n == c.name));
            let runs: Vec<(&Config, f64)> = chosen
                .flat_map(|c| {
                    let factors = if c.max_rate { o.rate_factors.clone() } else { vec![1.0] };
                    factors.into_iter().map(move |f| (c, f))
                })
                .collect();
            for (cfg, factor) in runs {
                let bin = if cfg.baseline {
                    match &baseline {
                        Some(b) => b.clone(),
                        None => {
                            eprintln!("  (no --fleet-baseline-bin: {} skipped)", cfg.name);
                            continue;
                        }
                    }
                } else {
                    run.bin.clone()
                };
                match drain(
                    &bin,
                    &run.work,
                    &csv_dir,
                    &o,
                    *case,
                    mode,
                    cfg,
                    factor,
                    run.args.fleet_trace.as_deref(),
                )
                .await
                {
                    Ok(f) => {
                        run.set(&format!("fleet_{}_{}_{}", f.case, f.mode, f.config), &f);
                        all.push(f);
                    }
                    Err(e) => {
                        eprintln!(
                            "  fleet {} {} {} x{factor} failed: {e:#}",
                            case.name,
                            mode.name(),
                            cfg.name
                        );
                        errors.push(format!("{} {} {}: {e:#}", case.name, mode.name(), cfg.name));
                    }
                }
                sys::kill_all_children();
            }
        }
    }
    let text = table(&all);
    eprintln!("\nfleet of {} agents:\n{text}", o.agents);
    let rss = all.iter().map(|f| f.rss_idle_total_kib).max().unwrap_or(0);
    let pss = all.iter().map(|f| f.pss_idle_total_kib).max().unwrap_or(0);
    let peak = all.iter().map(|f| f.rss_drain_peak_total_kib).max().unwrap_or(0);
    let peak_agent = all.iter().map(|f| f.rss_drain_peak_agent_kib).max().unwrap_or(0);
    run.set("fleet_agents", o.agents);
    run.set("fleet_opts", &o);
    run.set("fleet_table", &text);
    run.set("fleet_runs", &all);
    run.set(
        "fleet_rss",
        json!({
            "idle_with_backlog_total_kib": rss,
            "idle_with_backlog_per_agent_kib": rss / o.agents.max(1) as u64,
            "idle_with_backlog_pss_total_kib": pss,
            "drain_peak_total_kib": peak,
            "drain_peak_one_agent_kib": peak_agent,
        }),
    );
    eprintln!(
        "fleet RSS: idle with the backlog {:.1} MiB in all ({:.1} MiB per agent; PSS in all {:.1} MiB), \
         peak during a drain {:.1} MiB in all, {:.1} MiB for one agent",
        rss as f64 / 1024.0,
        rss as f64 / 1024.0 / o.agents.max(1) as f64,
        pss as f64 / 1024.0,
        peak as f64 / 1024.0,
        peak_agent as f64 / 1024.0
    );
    if !errors.is_empty() {
        return Err(anyhow!("{}", errors.join("; ")));
    }
    Ok(())
}
