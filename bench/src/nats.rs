//! The NATS JetStream phase (issue 16, `--only nats`): a 3-node JetStream
//! cluster on loopback, and in the same run a raw async-nats publisher
//! (publish + wait for the ack, `--concurrency` in flight) and the agent's
//! drain of a backlog to the same cluster; then the agent's memory idle with
//! a connected NATS subscription. Owns the cluster's processes: they are
//! killed when the phase ends, whatever happened.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use async_nats::jetstream;

use crate::agent::{self, Agent, AgentDir, RssSampler, Sub};
use crate::report::Row;
use crate::{cpu_us, events, ingest, sys, Run, MIB};

/// The stream the agent publishes to, and its subjects.
const AGENT_STREAM: &str = "POS";
/// The stream of the raw publisher (deleted before the drain, to free disk).
const RAW_STREAM: &str = "RAWPOS";
/// The agent's subject template and the raw publisher's subject.
const AGENT_SUBJECT: &str = "pos.{store_id}.{type}";
const RAW_SUBJECT: &str = "raw.0042.SaleCreated";
/// The stream's duplicate window, as README's central setup recommends.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// One nats-server of the cluster.
struct Node {
    name: String,
    port: u16,
    config: PathBuf,
    child: Option<Child>,
}

/// A JetStream cluster on loopback: ports and configs chosen first (so the
/// agent can name it while it is still down), processes started later.
struct Cluster {
    dir: PathBuf,
    nodes: Vec<Node>,
}

impl Cluster {
    /// Chooses free ports and writes each node's config under `dir`.
    fn configure(dir: &Path, size: usize) -> anyhow::Result<Cluster> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
        let mut ports = Vec::new();
        for _ in 0..size {
            ports.push((agent::free_port()?, agent::free_port()?));
        }
        let mut nodes = Vec::new();
        for (i, (port, cluster_port)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let store = dir.join(&name);
            std::fs::create_dir_all(&store).with_context(|| format!("{}", store.display()))?;
            let routes: Vec<String> = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, (_, c))| format!("\"nats-route://127.0.0.1:{c}\""))
                .collect();
            let text = format!(
                "server_name: {name}\nlisten: \"127.0.0.1:{port}\"\n\
                 jetstream {{ store_dir: \"{}\" }}\n\
                 cluster {{ name: bench, listen: \"127.0.0.1:{cluster_port}\", routes: [{}] }}\n",
                store.display(),
                routes.join(", ")
            );
            let config = dir.join(format!("{name}.conf"));
            std::fs::write(&config, text).with_context(|| format!("{}", config.display()))?;
            nodes.push(Node {
                name,
                port: *port,
                config,
                child: None,
            });
        }
        Ok(Cluster {
            dir: dir.to_path_buf(),
            nodes,
        })
    }

    /// Starts every node and waits until each takes clients.
    fn start(&mut self) -> anyhow::Result<()> {
        let binary = std::env::var_os("NATS_SERVER").unwrap_or_else(|| "nats-server".into());
        for node in &mut self.nodes {
            let log = std::fs::File::create(self.dir.join(format!("{}.log", node.name)))?;
            let mut cmd = Command::new(&binary);
            cmd.arg("-c")
                .arg(&node.config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log);
            let child = sys::spawn(cmd).with_context(|| {
                format!(
                    "starting {} (install nats-server, or name it with NATS_SERVER)",
                    binary.to_string_lossy()
                )
            })?;
            node.child = Some(child);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in &self.nodes {
            while TcpStream::connect(("127.0.0.1", node.port)).is_err() {
                if Instant::now() > deadline {
                    bail!(
                        "nats-server {} does not listen on {} after 30 s; log: {}",
                        node.name,
                        node.port,
                        self.dir.join(format!("{}.log", node.name)).display()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Every node's client URL, comma-separated (a subscription's `url`).
    fn url(&self) -> String {
        self.servers().join(",")
    }

    fn servers(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect()
    }

    /// CPU ticks the servers used so far, all together.
    fn cpu_ticks(&self) -> u64 {
        self.nodes
            .iter()
            .filter_map(|n| n.child.as_ref())
            .filter_map(|c| sys::cpu_ticks(c.id()))
            .sum()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
                sys::forget(child.id());
            }
        }
    }
}

/// The bench's client of the cluster: streams, counts, the raw publisher.
async fn connect(cluster: &Cluster) -> anyhow::Result<jetstream::Context> {
    let servers = cluster.servers();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match async_nats::ConnectOptions::new()
            .name("outbox-bench")
            .connect(servers.as_slice())
            .await
        {
            Ok(client) => return Ok(jetstream::new(client)),
            Err(e) if Instant::now() < deadline => {
                eprintln!("  connect to {}: {e}; again", cluster.url());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(anyhow!("cannot connect to {}: {e}", cluster.url())),
        }
    }
}

/// Creates an R3 file stream, retrying while the cluster elects its leaders.
async fn create_stream(js: &jetstream::Context, name: &str, subjects: &str) -> anyhow::Result<()> {
    let config = jetstream::stream::Config {
        name: name.to_string(),
        subjects: vec![subjects.to_string()],
        num_replicas: 3,
        duplicate_window: DUPLICATE_WINDOW,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match js.get_or_create_stream(config.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                eprintln!("  create stream {name}: {e}; again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(anyhow!("cannot create stream {name}: {e}")),
        }
    }
}

/// Messages in a stream; `None` while it does not answer.
async fn count(js: &jetstream::Context, stream: &str) -> Option<u64> {
    let mut s = js.get_stream(stream).await.ok()?;
    let info = tokio::time::timeout(Duration::from_secs(5), s.info())
        .await
        .ok()?
        .ok()?;
    Some(info.state.messages)
}

/// A raw publisher run.
#[derive(Debug, Clone, serde::Serialize)]
struct RawRun {
    published: u64,
    errors: u64,
    first_error: Option<String>,
    /// First publish to last acknowledgement.
    elapsed_s: f64,
    rate: f64,
    cut_short: bool,
}

/// `n` events, the bodies and headers the agent would send (webhook body,
/// `Nats-Msg-Id`, content-type, Standard Webhooks signature), published by
/// `concurrency` tasks that each wait for the stream's ack before the next.
async fn raw_publish(
    js: &jetstream::Context,
    n: u64,
    concurrency: usize,
    entities: u64,
    size: usize,
    limit: Duration,
) -> anyhow::Result<RawRun> {
    let key = store_outbox::signing::decode_secret(agent::SECRET).map_err(|e| anyhow!(e))?;
    let keys = Arc::new(vec![key]);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + limit;
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (js, next, keys) = (js.clone(), next.clone(), keys.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None::<String>);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n || Instant::now() > deadline {
                    break;
                }
                let ev = events::event("natsraw", i, &events::order_entity(i, entities), size);
                let body = ev.webhook_body((i / entities.max(1) + 1) as i64);
                let timestamp = store_outbox::signing::timestamp_now();
                let signature =
                    store_outbox::signing::signature_header(&keys, &ev.event_id, timestamp, body.as_bytes());
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", ev.event_id.as_str());
                headers.insert("content-type", "application/json");
                headers.insert("webhook-id", ev.event_id.as_str());
                headers.insert("webhook-timestamp", timestamp.to_string().as_str());
                headers.insert("webhook-signature", signature.as_str());
                let acked = match js.publish_with_headers(RAW_SUBJECT, headers, body.into()).await {
                    Ok(ack) => ack.await.map(|_| ()),
                    Err(e) => Err(e),
                };
                match acked {
                    Ok(()) => ok += 1,
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            (ok, errors, first_error)
        }));
    }
    let mut run = RawRun {
        published: 0,
        errors: 0,
        first_error: None,
        elapsed_s: 0.0,
        rate: 0.0,
        cut_short: false,
    };
    for task in tasks {
        let (ok, errors, first_error) = task.await.map_err(|e| anyhow!("publisher task: {e}"))?;
        run.published += ok;
        run.errors += errors;
        if run.first_error.is_none() {
            run.first_error = first_error;
        }
    }
    run.elapsed_s = start.elapsed().as_secs_f64();
    run.rate = run.published as f64 / run.elapsed_s.max(1e-9);
    run.cut_short = run.published + run.errors < n;
    Ok(run)
}

/// The agent's config: the bench subscription (`agent::Sub`, signed) with
/// the NATS subject added (the subscription table is the file's last).
fn write_config(dir: &AgentDir, cluster: &Cluster, max_in_flight: usize) -> anyhow::Result<()> {
    dir.write_config(Some(&Sub {
        url: cluster.url(),
        max_in_flight,
    }))?;
    let mut text = std::fs::read_to_string(&dir.config)?;
    text.push_str(&format!("subject = \"{AGENT_SUBJECT}\"\n"));
    std::fs::write(&dir.config, text)?;
    Ok(())
}

/// The phase (see the module documentation).
pub async fn phase(run: &mut Run) -> anyhow::Result<()> {
    let n = run.sizes.drain;
    let entities = run.args.entities;
    let size = run.args.event_bytes;
    let concurrency = run.args.concurrency;
    run.set("nats_events", n);
    let mut cluster = Cluster::configure(&run.work.join("nats"), 3)?;

    // The backlog, ingested while the cluster is down (the agent probes it
    // at the backoff pace), as `drain` does with its receiver.
    run.phase(&format!(
        "8. nats: backlog of {n} events over {entities} entities, cluster down"
    ));
    let dir = AgentDir::new(run.work.join("agent-n"))?;
    write_config(&dir, &cluster, concurrency)?;
    let mut a = Agent::spawn(&run.bin, &dir, "agent-n1.log")?;
    a.wait_ready(&dir, Duration::from_secs(30)).await?;
    let cpu0 = sys::cpu_ticks(a.pid).unwrap_or(0);
    let load = ingest::socket_load(
        &dir.socket,
        n,
        run.args.producers,
        run.args.pipeline,
        ingest::line_fn("nats", entities, size),
        Duration::from_secs(run.sizes.drain_limit_s),
    )
    .await?;
    let cpu1 = sys::cpu_ticks(a.pid).unwrap_or(0);
    eprintln!("{}", load.summary("backlog ingest"));
    run.set("nats_bulk_ingest_eps", load.rate);
    run.set("nats_cpu_us_per_event_backlog_ingest", cpu_us(cpu1 - cpu0, load.acked));
    let status = agent::sub_status(&run.bin, &dir)?;
    eprintln!(
        "  subscription with the cluster down: state {}, pending {}, last error {}",
        status["state"], status["pending"], status["last_error"]
    );
    let (stop, clean) = a.stop(Duration::from_secs(60));
    eprintln!("agent stopped in {:.2} s (clean: {clean})", stop.as_secs_f64());
    drop(a);
    if load.errors > 0 || load.acked < n {
        bail!(
            "backlog ingest: {} of {n} acked, {} errors, first: {:?}",
            load.acked,
            load.errors,
            load.first_error
        );
    }

    run.phase("8. nats: 3-node JetStream cluster on loopback, R3 file streams");
    cluster.start()?;
    let js = connect(&cluster).await?;
    create_stream(&js, RAW_STREAM, "raw.>").await?;
    create_stream(&js, AGENT_STREAM, "pos.>").await?;

    run.phase(&format!(
        "8. nats: raw async-nats publisher, publish + ack, {concurrency} in flight"
    ));
    let self_pid = std::process::id();
    let (bench0, servers0) = (sys::cpu_ticks(self_pid).unwrap_or(0), cluster.cpu_ticks());
    let raw = raw_publish(
        &js,
        n,
        concurrency,
        entities,
        size,
        Duration::from_secs(run.sizes.drain_limit_s * 2),
    )
    .await?;
    let (bench1, servers1) = (sys::cpu_ticks(self_pid).unwrap_or(0), cluster.cpu_ticks());
    let raw_stored = count(&js, RAW_STREAM).await;
    eprintln!(
        "raw publisher: {} acked in {:.2} s = {:.0} events/s ({} errors{}); stream holds {:?}; \
         CPU µs/event: publisher {:.1}, servers {:.1}",
        raw.published,
        raw.elapsed_s,
        raw.rate,
        raw.errors,
        raw.first_error
            .as_deref()
            .map(|e| format!(", first: {e}"))
            .unwrap_or_default(),
        raw_stored,
        cpu_us(bench1 - bench0, raw.published),
        cpu_us(servers1 - servers0, raw.published)
    );
    run.set("nats_raw_eps", raw.rate);
    run.set("nats_raw", &raw);
    run.set("nats_raw_stored", raw_stored);
    run.set("nats_raw_cpu_us_per_event", cpu_us(bench1 - bench0, raw.published));
    run.set(
        "nats_raw_servers_cpu_us_per_event",
        cpu_us(servers1 - servers0, raw.published),
    );
    if raw.errors > 0 || raw.published < n {
        bail!(
            "raw publisher: {} of {n} acked, first error: {:?}",
            raw.published,
            raw.first_error
        );
    }
    // Its messages go, so both runs see the same disk.
    js.delete_stream(RAW_STREAM)
        .await
        .map_err(|e| anyhow!("delete stream {RAW_STREAM}: {e}"))?;

    run.phase("8. nats: agent restarted with the cluster up, drain");
    let servers0 = cluster.cpu_ticks();
    let mut a = Agent::spawn(&run.bin, &dir, "agent-n2.log")?;
    let spawned = a.spawned_at;
    let sampler = RssSampler::start(a.pid, Duration::from_millis(100));
    let deadline = Instant::now() + Duration::from_secs(run.sizes.drain_limit_s * 2);
    let (mut first_at, mut last_at) = (None::<Instant>, None::<Instant>);
    let mut progress_at = Instant::now();
    let mut stored = 0;
    while stored < n {
        if let Some(c) = count(&js, AGENT_STREAM).await {
            stored = c;
            if c > 0 && first_at.is_none() {
                first_at = Some(Instant::now());
            }
            if c >= n {
                last_at = Some(Instant::now());
                break;
            }
        }
        if Instant::now() > deadline {
            run.set("nats_drain_cut_short", true);
            break;
        }
        if progress_at.elapsed() > Duration::from_secs(10) {
            progress_at = Instant::now();
            eprintln!(
                "  drain: {stored} / {n} stored; VmRSS {} KiB",
                a.mem().map(|m| m.rss_kib).unwrap_or(0)
            );
        }
        tokio::time::sleep(Duration::from_millis(if first_at.is_some() { 100 } else { 5 })).await;
    }
    let peak = sampler.finish().await;
    let hwm = a.mem().map(|m| m.hwm_kib).unwrap_or(0);
    let drain_cpu = sys::cpu_ticks(a.pid).unwrap_or(0);
    let servers1 = cluster.cpu_ticks();
    let (Some(first), Some(last)) = (first_at, last_at) else {
        bail!(
            "{stored} of {n} events stored within the time limit; log:\n{}",
            a.log_tail(20)
        );
    };
    let status = agent::wait_settled_status(&run.bin, &dir, Duration::from_secs(60)).await?;
    let drain_s = (last - first).as_secs_f64();
    let rate = n as f64 / drain_s.max(1e-9);
    let ratio = rate / raw.rate.max(1e-9);
    eprintln!(
        "start-up to first stored {:.3} s; drained {n} in {drain_s:.2} s = {rate:.0} events/s ({ratio:.2} of raw); \
         CPU µs/event: agent {:.1}, servers {:.1}; RSS peak {peak} KiB (sampled), VmHWM {hwm} KiB; \
         status: delivered_total {}, pending {}",
        (first - spawned).as_secs_f64(),
        cpu_us(drain_cpu, n),
        cpu_us(servers1 - servers0, n),
        status["delivered_total"],
        status["pending"]
    );
    run.set("nats_startup_first_stored_s", (first - spawned).as_secs_f64());
    run.set("nats_drain_eps", rate);
    run.set(
        "nats_drain_end_to_end_eps",
        n as f64 / (last - spawned).as_secs_f64().max(1e-9),
    );
    run.set("nats_drain_ratio", ratio);
    run.set("nats_cpu_us_per_event_drain", cpu_us(drain_cpu, n));
    run.set("nats_drain_servers_cpu_us_per_event", cpu_us(servers1 - servers0, n));
    run.set("nats_rss_drain_peak_kib", peak.max(hwm));
    run.set("nats_drain_status", &status);
    // Another look after the status settled: no copy stored twice.
    let stored = count(&js, AGENT_STREAM).await.unwrap_or(stored);
    run.set("nats_drain_stored", stored);
    if stored != n {
        bail!("the stream holds {stored} messages for {n} events");
    }
    let after = a.settled_rss(Duration::from_secs(3), Duration::from_secs(15)).await;
    if let Some(after) = &after {
        eprintln!("idle after the drain: VmRSS {} KiB", after.rss_kib);
        run.set("nats_rss_after_drain_idle_kib", after.rss_kib);
    }
    let (stop, _) = a.stop(Duration::from_secs(20));
    run.set("nats_stop_after_drain_s", stop.as_secs_f64());
    drop(a);
    if !run.args.keep {
        let _ = std::fs::remove_dir_all(&dir.dir);
    }

    // A fresh agent: the connection is made at the first send, so a few
    // events are delivered first; then it has nothing to do.
    run.phase("8. nats: idle agent, NATS subscription connected");
    let idle_dir = AgentDir::new(run.work.join("agent-n-idle"))?;
    write_config(&idle_dir, &cluster, concurrency)?;
    let mut a = Agent::spawn(&run.bin, &idle_dir, "agent-n3.log")?;
    a.wait_ready(&idle_dir, Duration::from_secs(30)).await?;
    let few = 10;
    let load = ingest::socket_load(
        &idle_dir.socket,
        few,
        1,
        1,
        ingest::line_fn("natsidle", entities, size),
        Duration::from_secs(30),
    )
    .await?;
    let status = agent::wait_settled_status(&run.bin, &idle_dir, Duration::from_secs(60)).await?;
    if load.acked < few || status["delivered_total"] != few {
        bail!("idle agent: {} acked, status {status}", load.acked);
    }
    let cpu0 = sys::cpu_ticks(a.pid).unwrap_or(0);
    let idle = a
        .settled_rss(Duration::from_secs(5), Duration::from_secs(30))
        .await
        .ok_or_else(|| anyhow!("cannot read the idle agent's memory"))?;
    let cpu1 = sys::cpu_ticks(a.pid).unwrap_or(0);
    let state = agent::sub_status(&run.bin, &idle_dir)?["state"].clone();
    eprintln!(
        "idle, connected (subscription {state}): VmRSS {} KiB after {:.1} s ({}), VmHWM {} KiB",
        idle.rss_kib,
        idle.waited.as_secs_f64(),
        if idle.settled { "settled" } else { "still moving" },
        idle.hwm_kib
    );
    run.set("nats_rss_idle_kib", idle.rss_kib);
    run.set("nats_rss_idle_settled", idle.settled);
    run.set("nats_rss_idle_hwm_kib", idle.hwm_kib);
    run.set("nats_idle_state", state);
    run.set(
        "nats_cpu_idle_pct",
        (cpu1 - cpu0) as f64 / sys::ticks_per_second() as f64 / idle.waited.as_secs_f64().max(1e-9) * 100.0,
    );
    a.stop(Duration::from_secs(20));
    drop(a);
    if !run.args.keep {
        let _ = std::fs::remove_dir_all(&idle_dir.dir);
    }
    drop(js);
    drop(cluster);
    if !run.args.keep {
        let _ = std::fs::remove_dir_all(run.work.join("nats"));
    }
    Ok(())
}

/// The phase's rows of the table.
pub fn rows(run: &Run) -> Vec<Row> {
    let n = |k: &str| run.num(k);
    let events = run.sizes.drain;
    let c = run.args.concurrency;
    vec![
        Row::new(
            "nats_drain",
            format!("8. NATS drain, {events} events, 3-node R3 cluster"),
            n("nats_drain_eps"),
            "ev/s",
        )
        .vs(
            format!("raw async-nats publish + ack, {c} in flight"),
            n("nats_raw_eps"),
        )
        .ratio_at_least(0.5),
        Row::new(
            "nats_cpu",
            "8. NATS drain, agent CPU per event",
            n("nats_cpu_us_per_event_drain"),
            "µs",
        )
        .vs("raw publisher's CPU per event", n("nats_raw_cpu_us_per_event")),
        Row::new(
            "nats_rss_idle",
            "8. RSS idle, NATS subscription connected",
            n("nats_rss_idle_kib").map(|v| v / MIB),
            "MiB",
        )
        .at_most(12.0),
    ]
}
