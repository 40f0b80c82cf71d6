//! outbox-bench: runs the real `store-outbox` release binary and measures, in
//! the same run, the limits each figure is compared with (issue 8).
//!
//! ```sh
//! cargo run --release --manifest-path bench/Cargo.toml -- [--quick] [--out FILE]
//! ```
//!
//! Phases, in order: binary size; raw SQLite baselines; agent A (idle memory,
//! socket ingest, HTTP ingest, ack latency at a steady rate); agent B
//! (backlog ingested while the receiver is down, restart, start-up to the
//! first delivery, drain with order checks); agent C, the same over as many
//! entities as events (`drain_many`, issue 14 item 7: memory by backlog
//! shape); raw requests to the same receiver; the naive loop; `uplink`
//! (issue 15: drains through a WAN link proxy); `nats` (issue 16: a 3-node
//! JetStream cluster and a raw publisher); `nginx` (issue 15: a real nginx,
//! `return 200`, as the raw limit of one event per request, wrk beside the
//! agent's drain). Everything runs on loopback, every loop is bounded in
//! count and time, and every process started is killed at the end (and
//! dies with the harness, PR_SET_PDEATHSIG; nginx with its workers, as one
//! process group).

mod agent;
mod central;
mod client_ab;
mod events;
mod fleet;
mod ingest;
mod nats;
mod nginx;
mod pubsub;
mod raw;
mod receiver;
mod report;
mod sys;
mod uplink;
#[path = "../../tests/common/wan.rs"]
mod wan;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use agent::{Agent, AgentDir, RssSampler, Sub};
use report::Row;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "outbox-bench",
    about = "Benchmarks the real store-outbox binary against raw SQLite, raw HTTP and a naive loop"
)]
struct Args {
    /// Small sizes: the whole run in about a minute or two.
    #[arg(long)]
    quick: bool,
    /// Where the JSON figures go.
    #[arg(long, default_value = "bench-results.json")]
    out: PathBuf,
    /// Events in the backlog drain (default 1,000,000; --quick 50,000).
    #[arg(long)]
    drain_events: Option<u64>,
    /// Events in the many-entities drain, `drain_many` (default 1,000,000;
    /// --quick 50,000).
    #[arg(long)]
    drain_many_events: Option<u64>,
    /// Entities of the many-entities drain (default: as many as its events,
    /// one event each).
    #[arg(long)]
    drain_many_entities: Option<u64>,
    /// Events in the socket ingest run and the raw group-commit runs
    /// (default 200,000; --quick 50,000).
    #[arg(long)]
    ingest_events: Option<u64>,
    /// Events in the HTTP ingest run (default 100,000; --quick 30,000).
    #[arg(long)]
    http_events: Option<u64>,
    /// Seconds of the steady-rate latency run (default 30; --quick 8).
    #[arg(long)]
    latency_secs: Option<f64>,
    /// Rate of the latency run, events/s.
    #[arg(long, default_value_t = 1000)]
    latency_rate: u64,
    /// Connections of the latency run (the rate is spread over them).
    #[arg(long, default_value_t = 4)]
    latency_conns: usize,
    /// Producer connections (socket) and concurrent requests (HTTP ingest).
    #[arg(long, default_value_t = 64)]
    producers: usize,
    /// Unanswered lines each socket producer keeps in flight.
    #[arg(long, default_value_t = 32)]
    pipeline: usize,
    /// Events per HTTP request.
    #[arg(long, default_value_t = 100)]
    http_batch: u64,
    /// Entities the events are spread over (every phase but `drain_many`).
    #[arg(long, default_value_t = 10_000)]
    entities: u64,
    /// Size of one event line, bytes.
    #[arg(long, default_value_t = 1024)]
    event_bytes: usize,
    /// Subscription max_in_flight, and the raw request client's concurrency.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Transaction sizes of the raw group-commit baseline (the best is the limit).
    #[arg(long, value_delimiter = ',', default_value = "64,512,2048")]
    raw_batches: Vec<usize>,
    /// The agent binary (default: <main crate>/target/release/store-outbox, built first).
    #[arg(long)]
    agent_bin: Option<PathBuf>,
    /// Do not run `cargo build --release --locked` in the main crate.
    #[arg(long)]
    no_build: bool,
    /// Where databases and logs go (default: a new directory under $TMPDIR).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Also time the leaner writer statements proposed in docs/BENCHMARKS.md
    /// (raw SQLite only; JSON `raw_group_commit_lean_eps`).
    #[arg(long)]
    raw_lean: bool,
    /// Events of the `uplink` phase's drains through the WAN link (issue 15);
    /// 0 skips them (the loopback drains only).
    #[arg(long, default_value_t = 40_000)]
    uplink_events: u64,
    /// Entities they are spread over.
    #[arg(long, default_value_t = 2_000)]
    uplink_entities: u64,
    /// The one-event-per-request drain through the link stops after this
    /// many seconds (it would take minutes); its rate is what it reached.
    #[arg(long, default_value_t = 30)]
    uplink_one_event_secs: u64,
    /// The `uplink` phase's settings to run through the WAN link (default:
    /// all: one_event,one_event_adaptive,batches,batches_gzip,batches_gzip_adaptive).
    #[arg(long, value_delimiter = ',')]
    uplink_settings: Option<Vec<String>>,
    /// Events of the `uplink` phase's two drains on loopback, batches and
    /// batches + gzip
    /// (default 1,000,000; --quick 100,000; 0 skips it).
    #[arg(long)]
    uplink_loopback_events: Option<u64>,
    /// Events of each drain of the `pubsub` phase (one per call, batched).
    #[arg(long, default_value_t = 100_000)]
    pubsub_events: u64,
    /// Events of the `nginx` phase's drain (default 300,000; --quick 50,000).
    #[arg(long)]
    nginx_events: Option<u64>,
    /// Seconds of each wrk run of the `nginx` phase (default 10; --quick 5).
    #[arg(long)]
    nginx_wrk_secs: Option<u64>,
    /// Profile the `nginx` phase's drain: `perf record --call-graph dwarf`
    /// attached to the agent from its start to the last event, into this
    /// file (`perf report -i FILE`). perf costs the agent CPU: that run's
    /// figures are not the ones to quote.
    #[arg(long)]
    nginx_perf: Option<PathBuf>,
    /// Also drain a copy of the `nginx` phase's backlog with `outbox-floor`
    /// (the agent's storage, body, signature and HTTP client with the least
    /// machinery around them; built beside this binary), to the same nginx.
    #[arg(long)]
    nginx_floor: bool,
    /// Runtime workers of `outbox-floor` (0: one current-thread runtime).
    #[arg(long, default_value_t = 0)]
    nginx_floor_threads: usize,
    /// Also write every latency sample (planned send ms, latency µs) as CSV here.
    #[arg(long)]
    latency_trace: Option<PathBuf>,
    /// Keep the work directory (databases, agent logs) afterwards.
    #[arg(long)]
    keep: bool,
    /// Run only these phases: size,raw,ingest,drain,drain_many,requests,naive,uplink,nats,pubsub,nginx,fleet,client_ab.
    #[arg(long, value_delimiter = ',')]
    only: Option<Vec<String>>,
    /// `fleet` (issue 27): agents against the one central (default 100; --quick/--fleet-quick 20).
    #[arg(long)]
    fleet_agents: Option<usize>,
    /// `fleet`: small sizes (20 agents, C 400 and 40 req/s, 10 s of ideal drain).
    #[arg(long)]
    fleet_quick: bool,
    /// `fleet`: the baseline agent binary, measured in the same run, alternately
    /// (e.g. a build of b6f4487: fixed Retry-After, no max_rate).
    #[arg(long)]
    fleet_baseline_bin: Option<PathBuf>,
    /// `fleet`: central's capacity, requests/s, one event per request (default 1000).
    #[arg(long)]
    fleet_capacity: Option<f64>,
    /// `fleet`: central's capacity, requests/s, batches + gzip (default 100).
    #[arg(long)]
    fleet_batch_capacity: Option<f64>,
    /// `fleet`: the ideal drain (backlog / capacity) the backlogs are sized for, s (default 30).
    #[arg(long)]
    fleet_drain_secs: Option<f64>,
    /// `fleet`: events per store, one event per request (default: capacity x drain secs / agents).
    #[arg(long)]
    fleet_events: Option<u64>,
    /// `fleet`: events per store, batches (default: capacity x batch.max_events x drain secs / agents).
    #[arg(long)]
    fleet_batch_events: Option<u64>,
    /// `fleet`: entities (tills) per store.
    #[arg(long, default_value_t = 8)]
    fleet_entities: u64,
    /// `fleet`: Retry-After of central's 503s, s.
    #[arg(long, default_value_t = 1)]
    fleet_retry_after: u64,
    /// `fleet`: each agent's max_in_flight.
    #[arg(long, default_value_t = 16)]
    fleet_max_in_flight: usize,
    /// `fleet`: batch.max_events of the batches + gzip case.
    #[arg(long, default_value_t = 50)]
    fleet_batch_max_events: usize,
    /// `fleet`: max_rate = capacity / agents x this (configs new_rate*); several
    /// (`1.0,1.1`) run each.
    #[arg(long, value_delimiter = ',', default_value = "1.0")]
    fleet_rate_factor: Vec<f64>,
    /// `fleet`: the longest a request waits in central's queue (`queue` mode) before a 503, s.
    #[arg(long, default_value_t = 5.0)]
    fleet_queue_secs: f64,
    /// `fleet`: the outage: "503" (central answers 503 + Retry-After) or "closed" (its port is closed).
    #[arg(long, default_value = "503")]
    fleet_outage: String,
    /// `fleet`: central's modes (default refuse,queue).
    #[arg(long, value_delimiter = ',')]
    fleet_modes: Option<Vec<String>>,
    /// `fleet`: cases (default one_event,batches_gzip).
    #[arg(long, value_delimiter = ',')]
    fleet_cases: Option<Vec<String>>,
    /// `fleet`: configs (default base,new,new_rate; also new_adaptive, new_rate_adaptive).
    #[arg(long, value_delimiter = ',')]
    fleet_configs: Option<Vec<String>>,
    /// `fleet`: every request central saw, as CSV, into this file.
    #[arg(long)]
    fleet_trace: Option<PathBuf>,
    /// `fleet`: where the per-second CSVs go (default: the work directory).
    #[arg(long)]
    fleet_csv_dir: Option<PathBuf>,
    /// `client_ab` (issue 25 item 8): the second agent binary, measured
    /// alternately with the first (`--agent-bin`) in the same run.
    #[arg(long)]
    ab_bin: Option<PathBuf>,
    /// `client_ab`: names of the two binaries in the figures.
    #[arg(long, value_delimiter = ',', default_value = "a,b")]
    ab_labels: Vec<String>,
    /// `client_ab`: rounds (each binary once per round; A B, then B A).
    #[arg(long, default_value_t = 2)]
    ab_rounds: usize,
    /// `client_ab`: events of the loopback drain with one event per request (0 skips it).
    #[arg(long, default_value_t = 100_000)]
    ab_events: u64,
    /// `client_ab`: events of the loopback drain in batches (0 skips it).
    #[arg(long, default_value_t = 300_000)]
    ab_batch_events: u64,
    /// `client_ab`: a store's rate, events/s, paced into the socket.
    #[arg(long, default_value_t = 50.0)]
    ab_rate: f64,
    /// `client_ab`: seconds at that rate (0 skips the store-rate run).
    #[arg(long, default_value_t = 60)]
    ab_rate_secs: u64,
    /// `client_ab`: seconds idle after it, before VmRSS is read.
    #[arg(long, default_value_t = 30)]
    ab_idle_secs: u64,
}

/// Sizes and time limits of one run.
#[derive(Debug, Clone, serde::Serialize)]
struct Sizes {
    ingest: u64,
    http: u64,
    latency_secs: f64,
    single_commits: u64,
    drain: u64,
    drain_many: u64,
    drain_many_entities: u64,
    raw_requests: u64,
    naive: u64,
    /// Backlog of the `nginx` phase.
    nginx: u64,
    /// Seconds of each wrk run against nginx.
    nginx_wrk_secs: u64,
    /// Cap on any one load phase, seconds.
    phase_limit_s: u64,
    /// Cap on the drain, seconds.
    drain_limit_s: u64,
}

impl Sizes {
    fn of(args: &Args) -> Sizes {
        let q = args.quick;
        let drain_many = args.drain_many_events.unwrap_or(if q { 50_000 } else { 1_000_000 });
        Sizes {
            ingest: args.ingest_events.unwrap_or(if q { 50_000 } else { 200_000 }),
            http: args.http_events.unwrap_or(if q { 30_000 } else { 100_000 }),
            latency_secs: args.latency_secs.unwrap_or(if q { 8.0 } else { 30.0 }),
            single_commits: if q { 500 } else { 2_000 },
            drain: args.drain_events.unwrap_or(if q { 50_000 } else { 1_000_000 }),
            drain_many,
            drain_many_entities: args.drain_many_entities.unwrap_or(drain_many),
            raw_requests: if q { 30_000 } else { 100_000 },
            naive: if q { 500 } else { 2_000 },
            nginx: args.nginx_events.unwrap_or(if q { 50_000 } else { 300_000 }),
            nginx_wrk_secs: args.nginx_wrk_secs.unwrap_or(if q { 5 } else { 10 }),
            phase_limit_s: if q { 30 } else { 180 },
            drain_limit_s: if q { 60 } else { 600 },
        }
    }
}

/// Everything the phases record.
struct Run {
    args: Args,
    sizes: Sizes,
    bin: PathBuf,
    work: PathBuf,
    figures: Map<String, Value>,
    errors: Vec<String>,
    /// (phase, load averages, CPU pressure avg10 %) at the start of each phase.
    loads: Vec<(String, [f64; 3], f64)>,
}

impl Run {
    fn wants(&self, phase: &str) -> bool {
        self.args.only.as_ref().is_none_or(|o| o.iter().any(|p| p == phase))
    }

    fn set(&mut self, key: &str, value: impl serde::Serialize) {
        self.figures
            .insert(key.to_string(), serde_json::to_value(value).unwrap_or(Value::Null));
    }

    fn num(&self, key: &str) -> Option<f64> {
        self.figures.get(key).and_then(Value::as_f64)
    }

    fn phase(&mut self, name: &str) {
        let load = sys::loadavg();
        let psi = sys::cpu_pressure();
        eprintln!(
            "\n==> {name}   (load average {:.2} {:.2} {:.2}; CPU pressure {psi:.0} %)",
            load[0], load[1], load[2]
        );
        self.loads.push((name.to_string(), load, psi));
    }
}

/// The temporary work directory, removed on Ctrl-C too (exit skips drops).
static TEMP_WORK_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(async move {
        tokio::spawn(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\ninterrupted: stopping every process started");
                sys::kill_all_children();
                if let Some(dir) = TEMP_WORK_DIR.get() {
                    let _ = std::fs::remove_dir_all(dir);
                }
                std::process::exit(130);
            }
        });
        match run(args).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                1
            }
        }
    });
    sys::kill_all_children();
    drop(rt);
    std::process::exit(code);
}

async fn run(args: Args) -> anyhow::Result<i32> {
    let main_dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("bench/ has no parent"))?
        .to_path_buf();
    let sizes = Sizes::of(&args);
    let (built, build_note) = match &args.agent_bin {
        Some(bin) => (bin.clone(), "given with --agent-bin".to_string()),
        None => agent::build_main(&main_dir, args.no_build)?,
    };
    let (work, _tmp_guard) = match &args.work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            (dir.clone(), None)
        }
        None => {
            let tmp = tempfile::Builder::new().prefix("outbox-bench-").tempdir()?;
            if args.keep {
                (tmp.keep(), None)
            } else {
                let _ = TEMP_WORK_DIR.set(tmp.path().to_path_buf());
                (tmp.path().to_path_buf(), Some(tmp))
            }
        }
    };
    if args.keep {
        eprintln!("work directory (kept): {}", work.display());
    }
    // Measure a copy: a rebuild by someone else during the run cannot swap it.
    let bin = work.join("store-outbox");
    // (Another cargo may be relinking it right now: retry for a while.)
    let mut tries = 0;
    while let Err(e) = std::fs::copy(&built, &bin) {
        tries += 1;
        if tries > 120 {
            return Err(e).with_context(|| format!("copying {}", built.display()));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let started_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let wall = Instant::now();
    let mut run = Run {
        args: args.clone(),
        sizes: sizes.clone(),
        bin,
        work: work.clone(),
        figures: Map::new(),
        errors: Vec::new(),
        loads: Vec::new(),
    };
    let load_start = sys::loadavg();
    let psi_start = sys::cpu_pressure();
    eprintln!(
        "outbox-bench{}: load average at start {:.2} {:.2} {:.2} on {} cores",
        if args.quick { " --quick" } else { "" },
        load_start[0],
        load_start[1],
        load_start[2],
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );

    type PhaseFn =
        for<'a> fn(&'a mut Run) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + 'a>>;
    let phases: [(&str, PhaseFn); 13] = [
        ("size", |r| Box::pin(phase_size(r))),
        ("raw", |r| Box::pin(phase_raw(r))),
        ("ingest", |r| Box::pin(phase_ingest(r))),
        ("drain", |r| Box::pin(phase_drain(r, DrainCase::spread(r)))),
        ("drain_many", |r| Box::pin(phase_drain(r, DrainCase::many(r)))),
        ("requests", |r| Box::pin(phase_requests_and_naive(r, true, false))),
        ("naive", |r| Box::pin(phase_requests_and_naive(r, false, true))),
        ("uplink", |r| Box::pin(phase_uplink(r))),
        ("nats", |r| Box::pin(nats::phase(r))),
        ("pubsub", |r| Box::pin(pubsub::phase(r))),
        ("nginx", |r| Box::pin(nginx::phase(r))),
        ("fleet", |r| Box::pin(fleet::phase(r))),
        ("client_ab", |r| Box::pin(client_ab::phase(r))),
    ];
    for (name, f) in phases {
        if !run.wants(name) {
            continue;
        }
        if let Err(e) = f(&mut run).await {
            eprintln!("phase {name} failed: {e:#}");
            run.errors.push(format!("{name}: {e:#}"));
        }
        sys::kill_all_children();
    }

    let rows = rows(&run);
    let table = report::table(&rows);
    let load_end = sys::loadavg();
    println!();
    println!(
        "store-outbox benchmark{} ({} s; load average at start {:.2}, at end {:.2}; \
         CPU pressure at start {psi_start:.0} %, at end {:.0} %)",
        if args.quick { " --quick" } else { "" },
        wall.elapsed().as_secs(),
        load_start[0],
        load_end[0],
        sys::cpu_pressure()
    );
    println!("{table}");
    for e in &run.errors {
        println!("FAILED {e}");
    }

    let git = |dir: &Path, a: &[&str]| {
        std::process::Command::new("git")
            .args(a)
            .current_dir(dir)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let commit_of = |dir: &Path| {
        let commit = git(dir, &["rev-parse", "HEAD"]);
        let dirty = !commit.is_empty() && !git(dir, &["status", "--porcelain", "--untracked-files=no"]).is_empty();
        (commit, dirty)
    };
    // The agent's commit is that of the checkout holding the binary
    // (--agent-bin /other/worktree/target/release/store-outbox), empty if it
    // is in none; the harness's is that of this checkout.
    let agent_dir = match &args.agent_bin {
        Some(bin) => std::fs::canonicalize(bin)
            .ok()
            .and_then(|b| b.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("/")),
        None => main_dir.clone(),
    };
    let (agent_commit, agent_dirty) = commit_of(&agent_dir);
    let (harness_commit, harness_dirty) = commit_of(&main_dir);
    let doc = json!({
        "tool": "outbox-bench",
        "date": started_at,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "quick": args.quick,
        "duration_s": wall.elapsed().as_secs_f64(),
        "machine": sys::machine(&work),
        "load_average": {
            "start": load_start,
            "end": load_end,
            "cpu_pressure_start_pct": psi_start,
            "cpu_pressure_end_pct": sys::cpu_pressure(),
            "per_phase": run.loads.iter().map(|(p, l, psi)| json!({"phase": p, "load": l, "cpu_pressure_pct": psi})).collect::<Vec<_>>(),
        },
        "agent": {
            "binary": built.display().to_string(),
            "build": build_note,
            "git_commit": agent_commit,
            "git_dirty": agent_dirty,
        },
        "harness": {
            "git_commit": harness_commit,
            "git_dirty": harness_dirty,
        },
        "sizes": sizes,
        "settings": {
            "producers": args.producers, "pipeline": args.pipeline, "http_batch": args.http_batch,
            "entities": args.entities, "event_bytes": args.event_bytes, "concurrency": args.concurrency,
            "latency_rate": args.latency_rate, "latency_conns": args.latency_conns, "raw_batches": args.raw_batches,
        },
        "figures": run.figures,
        "table": rows,
        "errors": run.errors,
    });
    std::fs::write(&args.out, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("figures written to {}", args.out.display());
    Ok(if run.errors.is_empty() { 0 } else { 1 })
}

const MIB: f64 = 1024.0;

/// Agent CPU time per event, µs.
fn cpu_us(ticks: u64, events: u64) -> f64 {
    ticks as f64 * 1e6 / sys::ticks_per_second() as f64 / events.max(1) as f64
}

/// The table rows, from the recorded figures.
fn rows(run: &Run) -> Vec<Row> {
    let n = |k: &str| run.num(k);
    let mib = |k: &str| run.num(k).map(|v| v / MIB);
    let best_raw = n("raw_group_commit_best_eps");
    let best_batch = n("raw_group_commit_best_batch").unwrap_or(0.0);
    let raw_label = format!("raw rusqlite, {best_batch:.0} events/commit");
    let mut rows = vec![
        Row::new(
            "ingest_socket",
            format!(
                "1. socket ingest, {} conns pipelined x{}",
                run.args.producers, run.args.pipeline
            ),
            n("ingest_socket_eps"),
            "ev/s",
        )
        .vs(&raw_label, best_raw)
        .ratio_at_least(0.5),
        Row::new(
            "ingest_socket_vs_single",
            "1. socket ingest",
            n("ingest_socket_eps"),
            "ev/s",
        )
        .vs("raw rusqlite, 1 event/commit", n("raw_single_commit_eps")),
        Row::new(
            "ingest_http",
            format!(
                "2. HTTP ingest, arrays of {}, {} conc.",
                run.args.http_batch, run.args.producers
            ),
            n("ingest_http_eps"),
            "ev/s",
        )
        .vs(&raw_label, best_raw)
        .ratio_at_least(0.5),
    ];
    for (pct, key) in [("p50", "p50"), ("p99", "p99"), ("p99.9", "p999")] {
        rows.push(
            Row::new(
                match key {
                    "p50" => "latency_p50",
                    "p99" => "latency_p99",
                    _ => "latency_p999",
                },
                format!("3. ack latency {pct} at {}/s", run.args.latency_rate),
                n(&format!("latency_{key}_us")),
                "µs",
            )
            .vs(
                format!("one fsync'd commit {pct}, same seconds"),
                n(&format!("commit_probe_{key}_us")),
            ),
        );
    }
    rows.push(
        Row::new(
            "commit_isolated",
            "one fsync'd commit p50, alone",
            n("commit_p50_us"),
            "µs",
        )
        .vs("p99, alone", n("commit_p99_us"))
        .no_ratio(),
    );
    let (many, many_entities) = (run.sizes.drain_many, run.sizes.drain_many_entities);
    let raw_requests_label = format!("raw keep-alive requests, conc. {}", run.args.concurrency);
    rows.push(
        Row::new(
            "drain",
            format!(
                "4. backlog drain, {} events over {} entities",
                run.sizes.drain, run.args.entities
            ),
            n("drain_eps"),
            "ev/s",
        )
        .vs(&raw_requests_label, n("raw_requests_rps"))
        .ratio_at_least(0.5),
    );
    rows.push(
        Row::new(
            "drain_many",
            format!("4. backlog drain, {many} events over {many_entities} entities"),
            n("many_drain_eps"),
            "ev/s",
        )
        .vs(&raw_requests_label, n("raw_requests_rps"))
        .ratio_at_least(0.5),
    );
    rows.push(
        Row::new(
            "bulk_ingest",
            format!("4. backlog ingest, {} entities (receiver down)", run.args.entities),
            n("bulk_ingest_eps"),
            "ev/s",
        )
        .vs(&raw_label, best_raw),
    );
    rows.push(
        Row::new(
            "bulk_ingest_many",
            format!("4. backlog ingest, {many_entities} entities"),
            n("many_bulk_ingest_eps"),
            "ev/s",
        )
        .vs(&raw_label, best_raw),
    );
    rows.push(
        Row::new(
            "cpu_socket",
            "agent CPU per event, socket ingest",
            n("cpu_us_per_event_socket"),
            "µs",
        )
        .vs("per event, HTTP ingest", n("cpu_us_per_event_http")),
    );
    rows.push(
        Row::new(
            "cpu_drain",
            format!("agent CPU per event, drain, {} entities", run.args.entities),
            n("cpu_us_per_event_drain"),
            "µs",
        )
        .vs("per event, socket ingest", n("cpu_us_per_event_socket")),
    );
    rows.push(
        Row::new(
            "cpu_drain_many",
            format!("agent CPU per event, drain, {many_entities} entities"),
            n("many_cpu_us_per_event_drain"),
            "µs",
        )
        .vs(
            format!("per event, drain, {} entities", run.args.entities),
            n("cpu_us_per_event_drain"),
        ),
    );
    rows.push(Row::new("rss_idle", "5. RSS idle", mib("rss_idle_kib"), "MiB").at_most(12.0));
    rows.push(
        Row::new(
            "cpu_idle",
            "5. CPU idle (no traffic), % of a core",
            n("cpu_idle_pct"),
            "%",
        )
        .at_most(1.0),
    );
    rows.push(
        Row::new(
            "rss_ingest",
            "5. RSS peak, socket ingest",
            mib("rss_socket_peak_kib"),
            "MiB",
        )
        .vs("RSS idle", mib("rss_idle_kib")),
    );
    rows.push(
        Row::new(
            "rss_ingest_http",
            "5. RSS peak, HTTP ingest",
            mib("rss_http_peak_kib"),
            "MiB",
        )
        .vs("RSS idle", mib("rss_idle_kib")),
    );
    // Issue 14 item 7: at most 64 MiB whatever the backlog's size and shape.
    const BACKLOG_RSS_MIB: f64 = 64.0;
    let spread = run.args.entities;
    rows.push(
        Row::new(
            "rss_backlog_idle",
            format!("5. RSS idle with the backlog, {spread} entities"),
            mib("rss_backlog_idle_kib"),
            "MiB",
        )
        .vs("RSS idle", mib("rss_idle_kib"))
        .at_most(BACKLOG_RSS_MIB),
    );
    rows.push(
        Row::new(
            "rss_backlog_ingest",
            format!("5. RSS peak, backlog ingest, {spread} entities"),
            mib("rss_backlog_ingest_peak_kib"),
            "MiB",
        )
        .vs("RSS idle", mib("rss_idle_kib"))
        .at_most(BACKLOG_RSS_MIB),
    );
    rows.push(
        Row::new(
            "rss_drain",
            format!("5. RSS peak, drain, {spread} entities"),
            mib("rss_drain_peak_kib"),
            "MiB",
        )
        .vs("RSS idle", mib("rss_idle_kib"))
        .at_most(BACKLOG_RSS_MIB),
    );
    for (key, label, fig) in [
        (
            "rss_backlog_idle_many",
            "5. RSS idle with the backlog",
            "rss_backlog_idle_kib",
        ),
        (
            "rss_backlog_ingest_many",
            "5. RSS peak, backlog ingest",
            "rss_backlog_ingest_peak_kib",
        ),
        ("rss_drain_many", "5. RSS peak, drain", "rss_drain_peak_kib"),
    ] {
        rows.push(
            Row::new(
                key,
                format!("{label}, {many_entities} entities"),
                mib(&format!("many_{fig}")),
                "MiB",
            )
            .vs(format!("same, {spread} entities"), mib(fig))
            .at_most(BACKLOG_RSS_MIB),
        );
    }
    rows.push(
        Row::new(
            "startup",
            format!(
                "6. start-up to first delivery, {} backlog over {spread} entities",
                run.sizes.drain
            ),
            n("startup_first_delivery_s"),
            "s",
        )
        .vs("start-up to ready, empty outbox", n("startup_empty_ready_s")),
    );
    rows.push(
        Row::new(
            "startup_many",
            format!("6. start-up to first delivery, {many} backlog over {many_entities} entities"),
            n("many_startup_first_delivery_s"),
            "s",
        )
        .vs(
            format!("same, {} over {spread} entities", run.sizes.drain),
            n("startup_first_delivery_s"),
        ),
    );
    rows.push(
        Row::new(
            "binary",
            "7. release binary, stripped, x86-64",
            mib("binary_stripped_kib"),
            "MiB",
        )
        .at_most(8.0),
    );
    let agent_e2e = match (n("ingest_socket_eps"), n("drain_eps")) {
        (Some(a), Some(b)) => Some(a.min(b)),
        _ => None,
    };
    rows.push(
        Row::new(
            "naive",
            "agent end to end, min(socket ingest, drain)",
            agent_e2e,
            "ev/s",
        )
        .vs("naive loop: 1 tx + 1 sync POST per event", n("naive_eps")),
    );
    rows.extend(nats::rows(run));
    rows.extend(pubsub::rows(run));
    rows.extend(nginx::rows(run));
    rows
}

// ---- phases -----------------------------------------------------------------

/// Issue 15: backlog drains through a store's uplink (`uplink.rs`).
async fn phase_uplink(run: &mut Run) -> anyhow::Result<()> {
    run.phase("8. uplink: 25 ms each way, 10 Mbit/s");
    let loopback = run
        .args
        .uplink_loopback_events
        .unwrap_or(if run.args.quick { 100_000 } else { 1_000_000 });
    let drains = uplink::phase(
        &run.bin,
        &run.work,
        run.args.uplink_events,
        run.args.uplink_entities,
        Duration::from_secs(run.args.uplink_one_event_secs),
        run.args.uplink_settings.as_deref(),
        loopback,
    )
    .await?;
    for d in &drains {
        let key = format!(
            "uplink_{}_{}",
            d.setting,
            if d.link == "loopback" { "loopback" } else { "wan" }
        );
        run.set(&key, serde_json::to_value(d)?);
    }
    Ok(())
}

async fn phase_size(run: &mut Run) -> anyhow::Result<()> {
    run.phase("7. binary size");
    let bytes = std::fs::metadata(&run.bin)?.len();
    let stripped = run.work.join("store-outbox.stripped");
    let out = std::process::Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&run.bin)
        .status();
    let stripped_bytes = match out {
        Ok(s) if s.success() => std::fs::metadata(&stripped)?.len(),
        _ => bytes,
    };
    let _ = std::fs::remove_file(&stripped);
    eprintln!("binary {bytes} bytes, stripped {stripped_bytes} bytes");
    run.set("binary_bytes", bytes);
    run.set("binary_stripped_bytes", stripped_bytes);
    run.set("binary_stripped_kib", stripped_bytes as f64 / 1024.0);
    Ok(())
}

fn blocking<T: Send + 'static>(f: impl FnOnce() -> anyhow::Result<T> + Send + 'static) -> anyhow::Result<T> {
    // A plain thread (no runtime context): rusqlite and reqwest::blocking.
    std::thread::spawn(f)
        .join()
        .map_err(|_| anyhow!("worker thread panicked"))?
}

fn pcts(h: &Histogram<u64>) -> Value {
    json!({
        "count": h.len(), "p50": h.value_at_quantile(0.5), "p90": h.value_at_quantile(0.9),
        "p99": h.value_at_quantile(0.99), "p999": h.value_at_quantile(0.999), "max": h.max(), "mean": h.mean(),
    })
}

async fn phase_raw(run: &mut Run) -> anyhow::Result<()> {
    run.phase("raw SQLite baselines (agent schema, WAL, synchronous=FULL)");
    let limit = Duration::from_secs(run.sizes.phase_limit_s);
    let (n, entities, size) = (run.sizes.ingest, run.args.entities, run.args.event_bytes);
    let mut best: Option<raw::Raw> = None;
    let mut all = Vec::new();
    for batch in run.args.raw_batches.clone() {
        let path = run.work.join(format!("raw-{batch}/outbox.db"));
        let r = blocking(move || {
            raw::group_commit(
                &path,
                &raw::Spec {
                    n,
                    batch,
                    entities,
                    size,
                    time_limit: limit,
                    pace: None,
                    lean: false,
                },
                None,
            )
        })?;
        eprintln!(
            "raw group commit, {batch} events/commit: {:.0} events/s ({} events, {} commits, {:.2} s in transactions)",
            r.rate, r.events, r.commits, r.db_s
        );
        if best.as_ref().is_none_or(|b| r.rate > b.rate) {
            best = Some(r.clone());
        }
        all.push(r);
        let _ = std::fs::remove_dir_all(run.work.join(format!("raw-{batch}")));
    }
    if let Some(b) = &best {
        run.set("raw_group_commit_best_eps", b.rate);
        run.set("raw_group_commit_best_batch", b.batch);
        if run.args.raw_lean {
            // The proposed leaner writer statements, same batch (JSON only).
            let path = run.work.join("raw-lean/outbox.db");
            let batch = b.batch;
            let spec = raw::Spec {
                n,
                batch,
                entities,
                size,
                time_limit: limit,
                pace: None,
                lean: true,
            };
            let r = blocking(move || raw::group_commit(&path, &spec, None))?;
            eprintln!(
                "raw group commit, lean statements, {batch} events/commit: {:.0} events/s",
                r.rate
            );
            run.set("raw_group_commit_lean_eps", r.rate);
            let _ = std::fs::remove_dir_all(run.work.join("raw-lean"));
        }
    }
    run.set("raw_group_commit", &all);

    let path = run.work.join("raw-1/outbox.db");
    let single_n = run.sizes.single_commits;
    let (r, hist) = blocking(move || {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let r = raw::group_commit(
            &path,
            &raw::Spec {
                n: single_n,
                batch: 1,
                entities,
                size,
                time_limit: limit,
                pace: None,
                lean: false,
            },
            Some(&mut h),
        )?;
        Ok((r, h))
    })?;
    let _ = std::fs::remove_dir_all(run.work.join("raw-1"));
    eprintln!(
        "raw one commit per event: {:.0} events/s; commit p50 {} µs, p99 {} µs, p99.9 {} µs",
        r.rate,
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999)
    );
    run.set("raw_single_commit_eps", r.rate);
    run.set("raw_single_commit", &r);
    run.set("commit_p50_us", hist.value_at_quantile(0.5));
    run.set("commit_p99_us", hist.value_at_quantile(0.99));
    run.set("commit_p999_us", hist.value_at_quantile(0.999));
    run.set("commit_us", pcts(&hist));
    Ok(())
}

/// Agent A: idle memory, socket ingest, HTTP ingest, latency at a steady rate.
/// Its subscription points at a closed port (the link is down), so ingest
/// writes the same rows as in production, and delivery does not compete.
async fn phase_ingest(run: &mut Run) -> anyhow::Result<()> {
    run.phase("agent A: start-up, idle memory");
    let dir = AgentDir::new(run.work.join("agent-a"))?;
    let dead = agent::free_port()?;
    dir.write_config(Some(&Sub {
        url: format!("http://127.0.0.1:{dead}/hook"),
        max_in_flight: run.args.concurrency,
    }))?;
    let mut a = Agent::spawn(&run.bin, &dir, "agent-a.log")?;
    let ready = a.wait_ready(&dir, Duration::from_secs(30)).await?;
    run.set("startup_empty_ready_s", ready.as_secs_f64());
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Idle: no traffic, the subscription's endpoint down (probed at the backoff pace).
    let (t0, c0) = (Instant::now(), sys::cpu_ticks(a.pid).unwrap_or(0));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu_idle =
        (sys::cpu_ticks(a.pid).unwrap_or(0) - c0) as f64 / sys::ticks_per_second() as f64 / t0.elapsed().as_secs_f64()
            * 100.0;
    let idle = a.mem().ok_or_else(|| anyhow!("cannot read the agent's memory"))?;
    eprintln!(
        "ready after {:.3} s; idle VmRSS {} KiB, idle CPU {cpu_idle:.1} % of one core",
        ready.as_secs_f64(),
        idle.rss_kib
    );
    run.set("rss_idle_kib", idle.rss_kib);
    run.set("cpu_idle_pct", cpu_idle);

    let limit = Duration::from_secs(run.sizes.phase_limit_s);
    let (entities, size) = (run.args.entities, run.args.event_bytes);
    let sampler = RssSampler::start(a.pid, Duration::from_millis(50));

    run.phase("1. socket ingest");
    let cpu0 = sys::cpu_ticks(a.pid).unwrap_or(0);
    let load = ingest::socket_load(
        &dir.socket,
        run.sizes.ingest,
        run.args.producers,
        run.args.pipeline,
        ingest::line_fn("sock", entities, size),
        limit,
    )
    .await?;
    eprintln!("{}", load.summary("socket"));
    let socket_ok = load.errors == 0 && !load.cut_short;
    let cpu1 = sys::cpu_ticks(a.pid).unwrap_or(0);
    let socket_peak = sampler.finish().await.max(a.mem().map(|m| m.hwm_kib).unwrap_or(0));
    eprintln!("RSS peak during socket ingest {socket_peak} KiB");
    run.set("rss_socket_peak_kib", socket_peak);
    let sampler = RssSampler::start(a.pid, Duration::from_millis(50));
    run.set("cpu_us_per_event_socket", cpu_us(cpu1 - cpu0, load.acked));
    run.set("ingest_socket_eps", load.rate);
    run.set("ingest_socket", &load);

    run.phase("2. HTTP ingest");
    let load = ingest::http_load(
        dir.http_port,
        run.sizes.http,
        run.args.http_batch,
        run.args.producers,
        ingest::line_fn("http", entities, size),
        limit,
    )
    .await?;
    eprintln!("{}", load.summary("HTTP"));
    let http_ok = load.errors == 0 && !load.cut_short;
    let cpu2 = sys::cpu_ticks(a.pid).unwrap_or(0);
    run.set("cpu_us_per_event_http", cpu_us(cpu2 - cpu1, load.acked));
    run.set("ingest_http_eps", load.rate);
    run.set("ingest_http", &load);
    let http_peak = sampler.finish().await;
    let hwm = a.mem().map(|m| m.hwm_kib).unwrap_or(0);
    eprintln!("RSS peak during HTTP ingest {http_peak} KiB (sampled), VmHWM {hwm} KiB");
    run.set("rss_http_peak_kib", http_peak);
    run.set("rss_ingest_peak_kib", socket_peak.max(http_peak).max(hwm));

    // Let the agent finish what the bursts left (WAL checkpoints) first: this
    // is the steady state. (--latency-trace of a run without this pause
    // shows the aftermath of a burst.)
    tokio::time::sleep(Duration::from_secs(3)).await;
    run.phase("3. ack latency at a steady rate");
    // A probe beside it: one single-event fsync'd commit every 50 ms into a
    // database of its own on the same disk, so the commit it is compared
    // with is measured in the same seconds, under the same disturbances.
    let probe_path = run.work.join("probe/outbox.db");
    let secs = run.sizes.latency_secs;
    let probe = std::thread::spawn(move || {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let every = Duration::from_millis(50);
        let n = (secs * 20.0) as u64;
        let spec = raw::Spec {
            n,
            batch: 1,
            entities,
            size,
            time_limit: Duration::from_secs_f64(secs + 1.0),
            pace: Some(every),
            lean: false,
        };
        raw::group_commit(&probe_path, &spec, Some(&mut h))?;
        anyhow::Ok(h)
    });
    let lat = ingest::latency(
        &dir.socket,
        run.args.latency_rate,
        run.sizes.latency_secs,
        run.args.latency_conns,
        ingest::line_fn("lat", entities, size),
    )
    .await?;
    let probe = probe.join().map_err(|_| anyhow!("commit probe panicked"))??;
    let _ = std::fs::remove_dir_all(run.work.join("probe"));
    run.set("commit_probe_p50_us", probe.value_at_quantile(0.5));
    run.set("commit_probe_p99_us", probe.value_at_quantile(0.99));
    run.set("commit_probe_p999_us", probe.value_at_quantile(0.999));
    run.set("commit_probe_us", pcts(&probe));
    eprintln!(
        "commit probe during the run: p50 {} µs, p99 {} µs, max {} µs ({} commits)",
        probe.value_at_quantile(0.5),
        probe.value_at_quantile(0.99),
        probe.max(),
        probe.len()
    );
    if let Some(path) = &run.args.latency_trace {
        let mut csv = String::from("planned_ms,latency_us\n");
        for (at, us) in &lat.trace {
            csv.push_str(&format!("{:.3},{us}\n", *at as f64 / 1000.0));
        }
        std::fs::write(path, csv).with_context(|| format!("{}", path.display()))?;
    }
    // Where the worst waits were, for the analysis.
    let mut worst: Vec<(u64, u64)> = lat.trace.clone();
    worst.sort_unstable_by_key(|p| std::cmp::Reverse(p.1));
    worst.truncate(5);
    run.set(
        "latency_worst_at_ms_us",
        worst.iter().map(|(at, us)| (at / 1000, *us)).collect::<Vec<_>>(),
    );
    let h = &lat.hist;
    eprintln!(
        "latency at {:.0}/s offered ({} acked, {} errors): p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
        lat.offered_rate,
        lat.load.acked,
        lat.load.errors,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    );
    run.set("latency_p50_us", h.value_at_quantile(0.5));
    run.set("latency_p99_us", h.value_at_quantile(0.99));
    run.set("latency_p999_us", h.value_at_quantile(0.999));
    run.set("latency_max_us", h.max());
    run.set("latency_offered_eps", lat.offered_rate);
    run.set("latency_us", pcts(h));
    run.set("latency_load", &lat.load);
    let (stop, clean) = a.stop(Duration::from_secs(20));
    run.set("stop_agent_a_s", stop.as_secs_f64());
    if !clean {
        eprintln!("agent A did not stop cleanly; log:\n{}", a.log_tail(20));
    }
    if !socket_ok || !http_ok || lat.load.errors > 0 {
        return Err(anyhow!("some events were not acknowledged (see the figures' errors)"));
    }
    if !run.args.keep {
        let _ = std::fs::remove_dir_all(&dir.dir);
    }
    Ok(())
}

/// One backlog drain: its size and shape, and the names of its figures.
struct DrainCase {
    /// Its name in `--only`.
    name: &'static str,
    events: u64,
    entities: u64,
    /// Prefix of its figure keys: "" for `drain` (the keys of earlier runs),
    /// "many_" for `drain_many`.
    key: &'static str,
    /// Event id prefix, and the agent directory and logs (`agent-<dir>1.log`
    /// with the receiver down, `agent-<dir>2.log` for the drain).
    ids: &'static str,
    dir: &'static str,
}

impl DrainCase {
    /// The backlog drain of issue 8: N events over `--entities` (10,000).
    fn spread(run: &Run) -> DrainCase {
        DrainCase {
            name: "drain",
            events: run.sizes.drain,
            entities: run.args.entities,
            key: "",
            ids: "drain",
            dir: "b",
        }
    }

    /// Issue 14 item 7: as many entities as events (one order, one event).
    fn many(run: &Run) -> DrainCase {
        DrainCase {
            name: "drain_many",
            events: run.sizes.drain_many,
            entities: run.sizes.drain_many_entities,
            key: "many_",
            ids: "many",
            dir: "c",
        }
    }

    fn k(&self, base: &str) -> String {
        format!("{}{base}", self.key)
    }
}

/// Agent B (`drain`) or C (`drain_many`): a backlog ingested while the
/// receiver is down, the agent's memory idle with that backlog, a restart
/// with the receiver up, start-up to the first delivery, and the drain.
async fn phase_drain(run: &mut Run, case: DrainCase) -> anyhow::Result<()> {
    let (n, entities) = (case.events, case.entities);
    let k = |base: &str| case.k(base);
    run.phase(&format!(
        "4. {}: backlog of {n} events over {entities} entities, receiver down",
        case.name
    ));
    let dir = AgentDir::new(run.work.join(format!("agent-{}", case.dir)))?;
    let port = agent::free_port()?;
    let sub = Sub {
        url: format!("http://127.0.0.1:{port}/hook"),
        max_in_flight: run.args.concurrency,
    };
    dir.write_config(Some(&sub))?;
    let mut a = Agent::spawn(&run.bin, &dir, &format!("agent-{}1.log", case.dir))?;
    a.wait_ready(&dir, Duration::from_secs(30)).await?;
    let sampler = RssSampler::start(a.pid, Duration::from_millis(100));
    let cpu0 = sys::cpu_ticks(a.pid).unwrap_or(0);
    let load = ingest::socket_load(
        &dir.socket,
        n,
        run.args.producers,
        run.args.pipeline,
        ingest::line_fn(case.ids, entities, run.args.event_bytes),
        Duration::from_secs(run.sizes.drain_limit_s),
    )
    .await;
    let ingest_peak = sampler.finish().await;
    let load = load?;
    let cpu1 = sys::cpu_ticks(a.pid).unwrap_or(0);
    let ingest_hwm = a.mem().map(|m| m.hwm_kib).unwrap_or(0);
    eprintln!(
        "backlog ingest: {} acked in {:.2} s = {:.0} events/s ({} errors); RSS peak {ingest_peak} KiB (sampled), \
         VmHWM {ingest_hwm} KiB",
        load.acked, load.elapsed_s, load.rate, load.errors
    );
    run.set(&k("bulk_ingest_eps"), load.rate);
    run.set(&k("bulk_ingest"), &load);
    run.set(&k("cpu_us_per_event_backlog_ingest"), cpu_us(cpu1 - cpu0, load.acked));
    run.set(&k("rss_backlog_ingest_peak_kib"), ingest_peak.max(ingest_hwm));
    run.set(&k("rss_backlog_ingest_sampled_max_kib"), ingest_peak);
    // The agent left alone with its backlog, the receiver still down (it
    // probes at the backoff pace): what it holds for a backlog of this shape.
    let idle = a.settled_rss(Duration::from_secs(3), Duration::from_secs(15)).await;
    let cpu2 = sys::cpu_ticks(a.pid).unwrap_or(0);
    if let Some(idle) = &idle {
        let cpu_pct = (cpu2 - cpu1) as f64 / sys::ticks_per_second() as f64 / idle.waited.as_secs_f64().max(1e-9);
        eprintln!(
            "idle with the backlog: VmRSS {} KiB after {:.1} s ({}), VmHWM {} KiB",
            idle.rss_kib,
            idle.waited.as_secs_f64(),
            if idle.settled { "settled" } else { "still moving" },
            idle.hwm_kib
        );
        run.set(&k("rss_backlog_idle_kib"), idle.rss_kib);
        run.set(&k("rss_backlog_idle_settled"), idle.settled);
        run.set(&k("rss_backlog_idle_wait_s"), idle.waited.as_secs_f64());
        run.set(&k("rss_backlog_hwm_kib"), idle.hwm_kib);
        run.set(&k("cpu_backlog_idle_pct"), cpu_pct * 100.0);
    }
    let (stop, clean) = a.stop(Duration::from_secs(60));
    eprintln!("agent stopped in {:.2} s (clean: {clean})", stop.as_secs_f64());
    run.set(&k("stop_with_backlog_s"), stop.as_secs_f64());
    drop(a);
    let backlog = load.acked;
    let db_bytes = std::fs::metadata(dir.db()).map(|m| m.len()).unwrap_or(0);
    run.set(&k("backlog_db_bytes"), db_bytes);
    if load.errors > 0 {
        return Err(anyhow!(
            "backlog ingest: {} errors, first: {:?}",
            load.errors,
            load.first_error
        ));
    }
    if idle.is_none() {
        return Err(anyhow!("cannot read the agent's memory with the backlog"));
    }

    run.phase(&format!("4. {}: restart with the receiver up, drain", case.name));
    let recv = receiver::Receiver::start(([127, 0, 0, 1], port).into(), agent::SECRET).await?;
    let mut a = Agent::spawn(&run.bin, &dir, &format!("agent-{}2.log", case.dir))?;
    let spawned = a.spawned_at;
    let sampler = RssSampler::start(a.pid, Duration::from_millis(100));
    let deadline = Instant::now() + Duration::from_secs(run.sizes.drain_limit_s);
    let mut ready_at: Option<Duration> = None;
    let mut progress_at = Instant::now();
    let result: anyhow::Result<()> = async {
        loop {
            if ready_at.is_none() && tokio::net::UnixStream::connect(&dir.socket).await.is_ok() {
                ready_at = Some(spawned.elapsed());
            }
            let stats = recv.shared.stats();
            if stats.in_order >= backlog {
                break;
            }
            if Instant::now() > deadline {
                eprintln!("drain cut short by the time limit at {} of {backlog}", stats.in_order);
                run.set(&k("drain_cut_short"), true);
                break;
            }
            if progress_at.elapsed() > Duration::from_secs(10) {
                progress_at = Instant::now();
                eprintln!(
                    "  drain: {} / {backlog} delivered; VmRSS {} KiB",
                    stats.in_order,
                    a.mem().map(|m| m.rss_kib).unwrap_or(0)
                );
            }
            tokio::time::sleep(Duration::from_millis(if stats.first_at.is_some() { 20 } else { 2 })).await;
        }
        Ok(())
    }
    .await;
    let peak = sampler.finish().await;
    let hwm = a.mem().map(|m| m.hwm_kib).unwrap_or(0);
    let drain_cpu = sys::cpu_ticks(a.pid).unwrap_or(0);
    let (stop, _) = a.stop(Duration::from_secs(20));
    run.set(&k("stop_after_drain_s"), stop.as_secs_f64());
    result?;
    let stats = recv.shared.stats();
    recv.stop().await;
    let first = stats
        .first_at
        .ok_or_else(|| anyhow!("nothing was delivered; log:\n{}", a.log_tail(20)))?;
    let last = stats.last_in_order_at.unwrap_or(first);
    let startup = first - spawned;
    let drain_s = (last - first).as_secs_f64();
    let rate = stats.in_order as f64 / drain_s.max(1e-9);
    eprintln!(
        "start-up to first delivery {:.3} s (socket ready {:.3} s); drained {} in {:.2} s = {:.0} events/s; \
         duplicates {}, order violations {}, bad signatures {}; RSS peak {} KiB (sampled), VmHWM {} KiB",
        startup.as_secs_f64(),
        ready_at.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN),
        stats.in_order,
        drain_s,
        rate,
        stats.duplicates,
        stats.order_violations,
        stats.bad_signatures,
        peak,
        hwm
    );
    run.set(&k("startup_first_delivery_s"), startup.as_secs_f64());
    run.set(&k("startup_backlog_ready_s"), ready_at.map(|d| d.as_secs_f64()));
    run.set(&k("drain_eps"), rate);
    run.set(
        &k("drain_end_to_end_eps"),
        stats.in_order as f64 / (last - spawned).as_secs_f64().max(1e-9),
    );
    run.set(&k("drain_delivered"), stats.in_order);
    run.set(&k("cpu_us_per_event_drain"), cpu_us(drain_cpu, stats.in_order));
    run.set(&k("drain_missing"), backlog.saturating_sub(stats.in_order));
    run.set(&k("drain_receiver"), &stats);
    run.set(&k("rss_drain_peak_kib"), peak.max(hwm));
    run.set(&k("rss_drain_sampled_max_kib"), peak);
    if stats.order_violations > 0 || stats.bad_signatures > 0 || stats.invalid > 0 {
        return Err(anyhow!(
            "the receiver saw {} order violations (first: {:?}), {} bad signatures, {} invalid bodies",
            stats.order_violations,
            stats.first_violation,
            stats.bad_signatures,
            stats.invalid
        ));
    }
    if stats.in_order < backlog {
        return Err(anyhow!(
            "{} of {backlog} events were not delivered in time",
            backlog - stats.in_order
        ));
    }
    if !run.args.keep {
        let _ = std::fs::remove_dir_all(&dir.dir);
    }
    Ok(())
}

/// The raw request rate to a receiver like the drain's, and the naive loop
/// against it.
async fn phase_requests_and_naive(run: &mut Run, requests: bool, naive: bool) -> anyhow::Result<()> {
    let recv = receiver::Receiver::start(([127, 0, 0, 1], 0).into(), agent::SECRET).await?;
    let url = format!("http://{}/hook", recv.addr);
    let key = Arc::new(store_outbox::signing::decode_secret(agent::SECRET).map_err(|e| anyhow!(e))?);
    let limit = Duration::from_secs(run.sizes.phase_limit_s);
    let size = run.args.event_bytes;
    let result = async {
        if requests {
            run.phase("4. raw keep-alive requests to the receiver");
            let r = receiver::raw_requests(
                &url,
                run.sizes.raw_requests,
                run.args.concurrency,
                size,
                key.clone(),
                limit,
            )
            .await?;
            let stats = recv.shared.stats();
            eprintln!(
                "raw requests: {} ok of {} in {:.2} s = {:.0} req/s (receiver: {} in order, {} violations)",
                r.ok, r.requests, r.elapsed_s, r.rate, stats.in_order, stats.order_violations
            );
            run.set("raw_requests_rps", r.rate);
            run.set("raw_requests", &r);
            if r.ok < r.requests || stats.order_violations > 0 {
                return Err(anyhow!("raw requests: {} failed", r.requests - r.ok));
            }
        }
        if naive {
            run.phase("naive loop: one transaction and one synchronous POST per event");
            recv.shared.reset();
            let path = run.work.join("naive.db");
            let (url, n, key) = (url.clone(), run.sizes.naive, key.clone());
            let r = blocking(move || raw::naive(&path, &url, n, size, &key, limit))?;
            let stats = recv.shared.stats();
            eprintln!(
                "naive: {} events in {:.2} s = {:.0} events/s ({} failed; receiver: {} in order, {} violations)",
                r.events, r.elapsed_s, r.rate, r.failed, stats.in_order, stats.order_violations
            );
            run.set("naive_eps", r.rate);
            run.set("naive", &r);
            for f in ["naive.db", "naive.db-wal", "naive.db-shm"] {
                let _ = std::fs::remove_file(run.work.join(f));
            }
        }
        Ok(())
    }
    .await;
    recv.stop().await;
    result
}
