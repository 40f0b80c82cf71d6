//! The Pub/Sub phase (issue 26, `--only pubsub`): the Google Cloud CLI's
//! Pub/Sub emulator on loopback, and in the same run a raw REST publisher
//! (reqwest, the same messages the agent sends: base64 envelope, ordering
//! key, attributes, signature) and the agent's drain of a backlog to the
//! same emulator, one message per publish call and batched. Owns the
//! emulator's process group: killed when the phase ends, whatever happened.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use base64::Engine as _;

use crate::agent::{self, Agent, AgentDir, Sub};
use crate::report::Row;
use crate::{cpu_us, events, ingest, sys, Run};

const PROJECT: &str = "bench";
const AGENT_TOPIC: &str = "pos-events";
const RAW_TOPIC: &str = "raw-events";
/// Messages per publish call in the batched runs (raw and agent alike).
const BATCH: usize = 500;

/// The emulator, as a process group.
struct Emulator {
    port: u16,
    child: Option<Child>,
}

impl Emulator {
    fn start(run: &Run) -> anyhow::Result<Emulator> {
        let port = agent::free_port()?;
        let log = std::fs::File::create(run.work.join("pubsub-emulator.log"))?;
        let mut cmd = Command::new("gcloud");
        cmd.args(["beta", "emulators", "pubsub", "start", "--quiet"])
            .arg(format!("--host-port=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = sys::spawn_group(cmd, libc::SIGKILL)
            .context("starting the Pub/Sub emulator (gcloud beta emulators pubsub start; package google-cloud-cli-pubsub-emulator)")?;
        let emulator = Emulator {
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("the Pub/Sub emulator does not listen on {port} after 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(emulator)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn cpu_ticks(&self) -> u64 {
        // The JVM is gcloud's child: count the whole group's processes.
        self.child.as_ref().map(|c| sys::group_cpu_ticks(c.id())).unwrap_or(0)
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            sys::kill_group(child.id());
            let _ = child.wait();
        }
    }
}

async fn create_topic(http: &reqwest::Client, base: &str, topic: &str) -> anyhow::Result<()> {
    let url = format!("{base}/v1/projects/{PROJECT}/topics/{topic}");
    let answer = http.put(&url).send().await.context("create topic")?;
    if !answer.status().is_success() && answer.status().as_u16() != 409 {
        bail!("PUT {url}: {}", answer.status());
    }
    Ok(())
}

/// A raw publisher run.
#[derive(Debug, Clone, serde::Serialize)]
struct RawRun {
    published: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed_s: f64,
    rate: f64,
}

/// The message the agent would publish for event `i`.
fn message(i: u64, entities: u64, size: usize, key: &[Vec<u8>]) -> serde_json::Value {
    let ev = events::event("psraw", i, &events::order_entity(i, entities), size);
    let entity_seq = (i / entities.max(1) + 1) as i64;
    let body = ev.webhook_body(entity_seq);
    let timestamp = store_outbox::signing::timestamp_now();
    let signature = store_outbox::signing::signature_header(key, &ev.event_id, timestamp, body.as_bytes());
    serde_json::json!({
        "data": base64::engine::general_purpose::STANDARD.encode(body.as_bytes()),
        "orderingKey": events::order_entity(i, entities),
        "attributes": {
            "webhook-id": ev.event_id,
            "type": "SaleCreated",
            "store_id": "0042",
            "agent_id": "bench",
            "entity_seq": entity_seq.to_string(),
            "webhook-timestamp": timestamp.to_string(),
            "webhook-signature": signature,
        }
    })
}

/// The calls a raw publisher makes for `n` messages over `entities`
/// ordering keys, at most `per_call` a call, one ordering key a call (the
/// API's rule, which the agent keeps too): each key's messages in order.
fn plan_calls(n: u64, per_call: usize, entities: u64) -> Vec<Vec<u64>> {
    if per_call <= 1 {
        return (0..n).map(|i| vec![i]).collect();
    }
    let entities = entities.max(1);
    let mut calls = Vec::new();
    for entity in 0..entities.min(n) {
        let mine: Vec<u64> = (entity..n).step_by(entities as usize).collect();
        calls.extend(mine.chunks(per_call).map(<[u64]>::to_vec));
    }
    calls
}

/// `n` messages in calls of at most `per_call` of one ordering key,
/// `concurrency` calls in flight.
async fn raw_publish(
    base: &str,
    n: u64,
    per_call: usize,
    concurrency: usize,
    entities: u64,
    size: usize,
) -> anyhow::Result<RawRun> {
    let key = store_outbox::signing::decode_secret(agent::SECRET).map_err(|e| anyhow!(e))?;
    let keys = Arc::new(vec![key]);
    let http = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build()?;
    let url = Arc::new(format!("{base}/v1/projects/{PROJECT}/topics/{RAW_TOPIC}:publish"));
    let calls = Arc::new(plan_calls(n, per_call, entities));
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (http, url, next, keys, calls) = (http.clone(), url.clone(), next.clone(), keys.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None::<String>);
            loop {
                let call = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(indices) = calls.get(call) else {
                    break;
                };
                let (from, to) = (0, indices.len() as u64);
                let messages: Vec<serde_json::Value> =
                    indices.iter().map(|&i| message(i, entities, size, &keys)).collect();
                let call = serde_json::json!({ "messages": messages }).to_string();
                let answer = http
                    .post(url.as_str())
                    .header("content-type", "application/json")
                    .body(call)
                    .send()
                    .await;
                match answer {
                    Ok(a) if a.status().is_success() => {
                        let body = a.bytes().await.unwrap_or_default();
                        let ids: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                        let got = ids["messageIds"].as_array().map_or(0, Vec::len) as u64;
                        ok += got;
                        errors += (to - from).saturating_sub(got);
                    }
                    Ok(a) => {
                        errors += to - from;
                        first_error.get_or_insert_with(|| a.status().to_string());
                    }
                    Err(e) => {
                        errors += to - from;
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
    Ok(run)
}

/// The agent's config: the bench subscription to the emulator's topic,
/// batched or not (the subscription table is the file's last).
fn write_config(dir: &AgentDir, endpoint: &str, max_in_flight: usize, batched: bool) -> anyhow::Result<()> {
    dir.write_config(Some(&Sub {
        url: format!("pubsub://projects/{PROJECT}/topics/{AGENT_TOPIC}"),
        max_in_flight,
    }))?;
    let mut text = std::fs::read_to_string(&dir.config)?;
    text.push_str(&format!("endpoint = \"{endpoint}\"\n"));
    if batched {
        text.push_str(&format!(
            "batch = {{ max_events = {BATCH}, max_bytes = \"8MiB\", linger = \"20ms\" }}\n"
        ));
    }
    std::fs::write(&dir.config, text)?;
    Ok(())
}

/// A backlog of `n` events in a fresh agent whose topic does not exist yet
/// (every publish is refused and retried), then the agent stopped.
async fn backlog(run: &Run, name: &str, endpoint: &str, batched: bool) -> anyhow::Result<AgentDir> {
    let n = run.args.pubsub_events;
    let dir = AgentDir::new(run.work.join(name))?;
    // Pointed at a closed port while the backlog goes in: nothing leaves.
    let closed = format!("http://127.0.0.1:{}", agent::free_port()?);
    write_config(&dir, &closed, run.args.concurrency, batched)?;
    let mut a = Agent::spawn(&run.bin, &dir, &format!("{name}-ingest.log"))?;
    a.wait_ready(&dir, Duration::from_secs(30)).await?;
    let load = ingest::socket_load(
        &dir.socket,
        n,
        run.args.producers,
        run.args.pipeline,
        ingest::line_fn("ps", run.args.entities, run.args.event_bytes),
        Duration::from_secs(run.sizes.drain_limit_s),
    )
    .await?;
    eprintln!("{}", load.summary(&format!("{name}: backlog ingest")));
    a.stop(Duration::from_secs(60));
    drop(a);
    if load.errors > 0 || load.acked < n {
        bail!(
            "backlog ingest: {} of {n} acked, first error {:?}",
            load.acked,
            load.first_error
        );
    }
    write_config(&dir, endpoint, run.args.concurrency, batched)?;
    Ok(dir)
}

/// Starts the agent on its backlog and waits until every event is
/// delivered; events/s from the first delivery to the last.
async fn drain(
    run: &mut Run,
    dir: &AgentDir,
    label: &str,
    key: &str,
    raw: &RawRun,
    emu: &Emulator,
) -> anyhow::Result<()> {
    let n = run.args.pubsub_events;
    let emu0 = emu.cpu_ticks();
    let mut a = Agent::spawn(&run.bin, dir, &format!("{key}-drain.log"))?;
    let deadline = Instant::now() + Duration::from_secs(run.sizes.drain_limit_s * 3);
    let (mut first_at, mut last_at) = (None::<Instant>, None::<Instant>);
    let mut delivered = 0;
    while Instant::now() < deadline {
        if let Ok(status) = agent::sub_status(&run.bin, dir) {
            delivered = status["delivered_total"].as_u64().unwrap_or(0);
            if delivered > 0 && first_at.is_none() {
                first_at = Some(Instant::now());
            }
            if delivered >= n {
                last_at = Some(Instant::now());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(if first_at.is_some() { 200 } else { 20 })).await;
    }
    let cpu = sys::cpu_ticks(a.pid).unwrap_or(0);
    let emu1 = emu.cpu_ticks();
    let (Some(first), Some(last)) = (first_at, last_at) else {
        bail!(
            "{label}: {delivered} of {n} delivered in time; log:\n{}",
            a.log_tail(20)
        );
    };
    let rate = n as f64 / (last - first).as_secs_f64().max(1e-9);
    let ratio = rate / raw.rate.max(1e-9);
    eprintln!(
        "{label}: drained {n} in {:.2} s = {rate:.0} events/s ({ratio:.2} of the raw publisher's {:.0}); \
         CPU µs/event: agent {:.1}, emulator {:.1}",
        (last - first).as_secs_f64(),
        raw.rate,
        cpu_us(cpu, n),
        cpu_us(emu1 - emu0, n)
    );
    run.set(&format!("{key}_drain_eps"), rate);
    run.set(&format!("{key}_raw_eps"), raw.rate);
    run.set(&format!("{key}_ratio"), ratio);
    run.set(&format!("{key}_cpu_us_per_event"), cpu_us(cpu, n));
    run.set(&format!("{key}_emulator_cpu_us_per_event"), cpu_us(emu1 - emu0, n));
    a.stop(Duration::from_secs(20));
    Ok(())
}

/// The phase (see the module documentation).
pub async fn phase(run: &mut Run) -> anyhow::Result<()> {
    let n = run.args.pubsub_events;
    let (entities, size, concurrency) = (run.args.entities, run.args.event_bytes, run.args.concurrency);
    run.set("pubsub_events", n);
    run.phase(&format!(
        "9. pubsub: backlogs of {n} events over {entities} entities, twice"
    ));
    // Backlogs go in against a closed port; the emulator's CPU is counted
    // over the drains only.
    let emu = Emulator::start(run)?;
    let base = emu.url();
    let one = backlog(run, "agent-ps1", &base, false).await?;
    let batched = backlog(run, "agent-ps2", &base, true).await?;
    let http = reqwest::Client::new();
    create_topic(&http, &base, RAW_TOPIC).await?;
    create_topic(&http, &base, AGENT_TOPIC).await?;

    let cases = [
        ("one message per call".to_string(), "pubsub_one", 1, &one),
        (
            format!("one key and at most {BATCH} messages per call"),
            "pubsub_batch",
            BATCH,
            &batched,
        ),
    ];
    for (label, key, per_call, dir) in cases {
        run.phase(&format!("9. pubsub: {label}, {concurrency} calls in flight"));
        let raw = raw_publish(&base, n, per_call, concurrency, entities, size).await?;
        eprintln!(
            "raw publisher, {label}: {} published in {:.2} s = {:.0}/s ({} errors{})",
            raw.published,
            raw.elapsed_s,
            raw.rate,
            raw.errors,
            raw.first_error
                .as_deref()
                .map(|e| format!(", first: {e}"))
                .unwrap_or_default()
        );
        run.set(&format!("{key}_raw"), &raw);
        drain(run, dir, &format!("agent, {label}"), key, &raw, &emu).await?;
    }
    drop(emu);
    if !run.args.keep {
        for dir in [&one.dir, &batched.dir] {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    Ok(())
}

/// The phase's rows: each drain against the raw publisher of the same run.
pub fn rows(run: &Run) -> Vec<Row> {
    let n = |k: &str| run.num(k);
    let events = run.args.pubsub_events;
    let c = run.args.concurrency;
    vec![
        Row::new(
            "pubsub_one",
            format!("9. Pub/Sub emulator, {events} events, one per call"),
            n("pubsub_one_drain_eps"),
            "ev/s",
        )
        .vs(
            format!("raw REST publisher, one per call, {c} in flight"),
            n("pubsub_one_raw_eps"),
        )
        .ratio_at_least(0.5),
        Row::new(
            "pubsub_batch",
            format!("9. Pub/Sub emulator, {events} events, batches of {BATCH}"),
            n("pubsub_batch_drain_eps"),
            "ev/s",
        )
        .vs(
            format!("raw REST publisher, one key and at most {BATCH} per call, {c} in flight"),
            n("pubsub_batch_raw_eps"),
        )
        .ratio_at_least(0.5),
    ]
}
