//! Phase `uplink` (issue 15): a backlog drained through a store's uplink, the
//! WAN link proxy of the tests (`tests/common/wan.rs`: 25 ms each way,
//! 10 Mbit/s shared), with realistic POS sale JSON (varied SKUs, quantities
//! and prices, nothing gzip erases), in three settings: one event per
//! request at the defaults (and with adaptive concurrency), batches,
//! batches + gzip (and with adaptive concurrency). Per setting: events/s,
//! the uplink's utilisation while draining, events per request, bytes on
//! the wire per event. Then the same batches + gzip on loopback (no proxy).
//!
//! The receiver here checks what it gets: the signature (over the body
//! after undoing gzip), and per entity that every event not seen before is
//! the next one.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};

use crate::agent::{self, Agent, AgentDir, SECRET};
use crate::sys;
use crate::wan::{Link, Wan};

/// One setting of the subscription.
pub(crate) struct Setting {
    pub(crate) name: &'static str,
    /// Keys added to the subscription.
    pub(crate) keys: &'static str,
}

pub(crate) const SETTINGS: [Setting; 5] = [
    Setting {
        name: "one_event",
        keys: "",
    },
    Setting {
        name: "one_event_adaptive",
        keys: "concurrency = \"adaptive\"",
    },
    Setting {
        name: "batches",
        keys: "batch = { max_events = 500, max_bytes = \"1MiB\", linger = \"20ms\" }",
    },
    Setting {
        name: "batches_gzip",
        keys: "batch = { max_events = 500, max_bytes = \"1MiB\", linger = \"20ms\" }\ncompression = \"gzip\"",
    },
    Setting {
        name: "batches_gzip_adaptive",
        keys: "batch = { max_events = 500, max_bytes = \"1MiB\", linger = \"20ms\" }\ncompression = \"gzip\"\nconcurrency = \"adaptive\"",
    },
];
/// The settings also drained on loopback (where the link is no limit).
const LOOPBACK_SETTINGS: [&str; 2] = ["batches", "batches_gzip"];

/// A realistic POS sale of about 1 KiB: 3-7 lines of varied SKUs,
/// quantities and prices, a payment, a customer number.
pub fn sale(i: u64) -> String {
    // A small deterministic generator: varied, but the same on every run.
    let mut x = i
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    let mut next = |m: u64| {
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 29;
        x % m
    };
    let lines = 3 + next(5);
    let mut total = 0u64;
    let mut items = Vec::new();
    for l in 0..lines {
        let qty = 1 + next(4);
        let cents = 49 + next(12_000);
        total += qty * cents;
        items.push(format!(
            r#"{{"line":{},"sku":"{:013}","name":"{}","qty":{qty},"unit_price":{}.{:02},"vat_rate":{},"discount":{}.{:02}}}"#,
            l + 1,
            4_000_000_000_000 + next(999_999_999),
            ["Milk 1L", "Bread rye", "Coffee beans 500g", "Apples kg", "Detergent 2L", "Chocolate 100g", "Water 6x1.5L", "Cheese gouda"][next(8) as usize],
            cents / 100,
            cents % 100,
            [7, 19][next(2) as usize],
            next(3),
            next(100)
        ));
    }
    format!(
        r#"{{"store":"0042","till":"{:02}","receipt":"R{:010}","cashier":"C{:04}","customer":"{:08}","opened_at":"2026-11-23T10:{:02}:{:02}Z","lines":[{}],"total":{}.{:02},"currency":"EUR","payment":{{"method":"{}","auth":"{:06}"}}}}"#,
        1 + next(8),
        i,
        next(400),
        next(99_999_999),
        next(60),
        next(60),
        items.join(","),
        total / 100,
        total % 100,
        ["card", "cash", "voucher"][next(3) as usize],
        next(1_000_000)
    )
}

/// What the receiver counted.
#[derive(Default)]
pub(crate) struct Counts {
    pub(crate) requests: u64,
    /// Distinct events.
    pub(crate) events: u64,
    duplicates: u64,
    violations: u64,
    bad_signatures: u64,
    first_at: Option<Instant>,
    last_at: Option<Instant>,
    seen: HashSet<String>,
    highest: HashMap<String, i64>,
}

/// What the receiver reads of an envelope.
#[derive(serde::Deserialize)]
struct Seen<'a> {
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    entity: std::borrow::Cow<'a, str>,
    entity_seq: i64,
}

pub(crate) struct Shared {
    pub(crate) key: Vec<u8>,
    pub(crate) counts: Mutex<Counts>,
}

pub(crate) async fn handle(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let now = Instant::now();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    let plain = if header("content-encoding") == "gzip" {
        let mut out = Vec::new();
        if flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut out).is_err() {
            return StatusCode::BAD_REQUEST;
        }
        out
    } else {
        body.to_vec()
    };
    let timestamp: i64 = header("webhook-timestamp").parse().unwrap_or(0);
    let signed = store_outbox::signing::verify(
        &shared.key,
        header("webhook-id"),
        timestamp,
        &plain,
        header("webhook-signature"),
    );
    // Only the fields checked, borrowed, the rest skipped: the receiver is
    // the instrument and must cost far less than what it measures (a
    // `serde_json::Value` per 1 KiB sale cost it more CPU than the agent).
    let events = if !signed {
        Vec::new()
    } else if plain.first() == Some(&b'[') {
        match serde_json::from_slice::<Vec<Seen>>(&plain) {
            Ok(events) => events,
            Err(_) => return StatusCode::BAD_REQUEST,
        }
    } else {
        match serde_json::from_slice::<Seen>(&plain) {
            Ok(one) => vec![one],
            Err(_) => return StatusCode::BAD_REQUEST,
        }
    };
    let mut c = shared.counts.lock().unwrap_or_else(|p| p.into_inner());
    c.requests += 1;
    c.first_at.get_or_insert(now);
    if !signed {
        c.bad_signatures += 1;
        return StatusCode::UNAUTHORIZED;
    }
    for e in events {
        if !c.seen.insert(e.id.into_owned()) {
            c.duplicates += 1;
            continue;
        }
        let top = match c.highest.get_mut(e.entity.as_ref()) {
            Some(top) => top,
            None => c.highest.entry(e.entity.into_owned()).or_insert(0),
        };
        if e.entity_seq == *top + 1 {
            *top = e.entity_seq;
        } else {
            c.violations += 1;
        }
        c.events += 1;
    }
    c.last_at = Some(now);
    StatusCode::OK
}

/// Sends `n` events over `entities` entities (`<entity_kind>:<k>`) through
/// the agent's socket, pipelined, and checks every reply. Ids are
/// `<id_prefix>-<k>`; the sale payloads are numbered from `sale_base`, so
/// stores of a fleet send different sales.
pub fn ingest(
    socket: &std::path::Path,
    id_prefix: &str,
    entity_kind: &str,
    n: u64,
    entities: u64,
    sale_base: u64,
) -> anyhow::Result<()> {
    let stream = UnixStream::connect(socket).context("the ingest socket")?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(60)))?;
    let mut writer = stream.try_clone()?;
    let reader = std::thread::spawn(move || -> anyhow::Result<()> {
        let mut r = BufReader::new(stream);
        for _ in 0..n {
            let mut line = String::new();
            if r.read_line(&mut line)? == 0 || !line.contains("\"ok\":true") {
                bail!("event refused: {line}");
            }
        }
        Ok(())
    });
    let mut out = std::io::BufWriter::new(&mut writer);
    for i in 0..n {
        let line = format!(
            r#"{{"event_id":"{id_prefix}-{i:08}","type":"SaleCreated","entity":"{entity_kind}:{}","attributes":{{"terminal":"03"}},"payload":{}}}"#,
            i % entities.max(1),
            sale(sale_base + i)
        );
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    drop(out);
    reader.join().map_err(|_| anyhow::anyhow!("reader panicked"))?
}

/// One drain's figures.
#[derive(Debug, serde::Serialize)]
pub struct Drain {
    pub setting: String,
    pub link: String,
    pub events: u64,
    pub capped: bool,
    pub seconds: f64,
    pub events_per_s: f64,
    pub requests: u64,
    pub events_per_request: f64,
    pub wire_bytes_per_event: f64,
    pub uplink_utilisation: f64,
    pub duplicates: u64,
    pub order_violations: u64,
    pub bad_signatures: u64,
    /// The agent's CPU (user + system) per event, from the first arrival.
    pub agent_cpu_us_per_event: f64,
    /// The bench process's (the receiver's) CPU per event, the same way.
    pub receiver_cpu_us_per_event: f64,
}

/// Drains a backlog of `n` events over `entities` entities with one
/// setting, through `link` (or on loopback), for at most `cap`.
pub(crate) async fn drain(
    bin: &std::path::Path,
    work: &std::path::Path,
    setting: &Setting,
    link: Option<Link>,
    n: u64,
    entities: u64,
    cap: Duration,
) -> anyhow::Result<Drain> {
    let tag = format!("{}-{}", setting.name, if link.is_some() { "wan" } else { "lo" });
    let dir = AgentDir::new(work.join(format!("uplink-{tag}")))?;
    // The backlog first, with no subscription: events wait in the outbox.
    dir.write_config(None)?;
    let mut agent = Agent::spawn(bin, &dir, &format!("uplink-{tag}-ingest"))?;
    agent.wait_ready(&dir, Duration::from_secs(30)).await?;
    let socket = dir.socket.clone();
    let prefix = tag.clone();
    tokio::task::spawn_blocking(move || ingest(&socket, &prefix, "order", n, entities, 0)).await??;
    agent.stop(Duration::from_secs(30));

    let shared = Arc::new(Shared {
        key: store_outbox::signing::decode_secret(SECRET).map_err(|e| anyhow::anyhow!(e))?,
        counts: Mutex::new(Counts::default()),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let target: SocketAddr = listener.local_addr()?;
    let app = axum::Router::new().fallback(handle).with_state(shared.clone());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let wan = link.map(|l| Wan::start(target, l));
    let url = match &wan {
        Some(w) => format!("http://{}/hooks", w.addr),
        None => format!("http://{target}/hooks"),
    };
    dir.write_config(None)?;
    let mut config = std::fs::read_to_string(&dir.config)?;
    config.push_str(&format!(
        "\n[[subscription]]\nname = \"bench\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\nmax_in_flight = 16\n{}\n",
        setting.keys
    ));
    std::fs::write(&dir.config, config)?;
    let mut agent = Agent::spawn(bin, &dir, &format!("uplink-{tag}"))?;
    let started = Instant::now();
    let deadline = started + cap;
    // CPU (agent, and this process: the receiver) from the first arrival
    // on, sampled within 50 ms of it.
    let mut cpu_at_first: Option<(u64, u64)> = None;
    let cpu_now = || {
        (
            sys::cpu_ticks(agent.pid).unwrap_or(0),
            sys::cpu_ticks(std::process::id()).unwrap_or(0),
        )
    };
    loop {
        let (events, arrived) = {
            let c = shared.counts.lock().unwrap_or_else(|p| p.into_inner());
            (c.events, c.first_at.is_some())
        };
        if arrived && cpu_at_first.is_none() {
            cpu_at_first = Some(cpu_now());
        }
        if events >= n || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (agent_ticks, receiver_ticks) = match cpu_at_first {
        Some((agent0, receiver0)) => {
            let (agent1, receiver1) = cpu_now();
            (agent1.saturating_sub(agent0), receiver1.saturating_sub(receiver0))
        }
        None => (0, 0),
    };
    let c = shared.counts.lock().unwrap_or_else(|p| p.into_inner());
    let us_per_event = |ticks: u64| ticks as f64 * 1e6 / sys::ticks_per_second() as f64 / c.events.max(1) as f64;
    let capped = c.events < n;
    // Through the link, from the agent's start: with several large requests
    // interleaved on the shared line, the first one completes only seconds
    // after the line got busy, so the first arrival would start the clock
    // too late. On loopback, from the first arrival: before it the agent
    // fans the backlog out to the subscription added after it (about 10 s
    // for 1M events, a start-up cost phase 6 measures), not a drain.
    let from = match link {
        Some(_) => started,
        None => c.first_at.unwrap_or(started),
    };
    let to = if capped {
        Instant::now()
    } else {
        c.last_at.unwrap_or_else(Instant::now)
    };
    let seconds = to.saturating_duration_since(from).as_secs_f64().max(1e-6);
    let traffic = wan.as_ref().map(|w| w.traffic());
    let drain = Drain {
        setting: setting.name.to_string(),
        link: if link.is_some() {
            "25ms each way, 10 Mbit/s".into()
        } else {
            "loopback".into()
        },
        events: c.events,
        capped,
        seconds,
        events_per_s: c.events as f64 / seconds,
        requests: c.requests,
        events_per_request: c.events as f64 / c.requests.max(1) as f64,
        wire_bytes_per_event: traffic.map_or(0.0, |t| t.up_bytes as f64 / c.events.max(1) as f64),
        uplink_utilisation: traffic.map_or(0.0, |t| t.up_busy.as_secs_f64() / seconds),
        duplicates: c.duplicates,
        order_violations: c.violations,
        bad_signatures: c.bad_signatures,
        agent_cpu_us_per_event: us_per_event(agent_ticks),
        receiver_cpu_us_per_event: us_per_event(receiver_ticks),
    };
    drop(c);
    agent.stop(Duration::from_secs(10));
    drop(wan);
    server.abort();
    // The database goes; the agent's log stays beside the others (`--keep`).
    let _ = std::fs::copy(&agent.log, work.join(format!("uplink-{tag}.log")));
    let _ = std::fs::remove_dir_all(&dir.dir);
    Ok(drain)
}

/// The phase: the three settings through the uplink, then batches + gzip on
/// loopback. Returns every drain's figures.
pub async fn phase(
    bin: &std::path::Path,
    work: &std::path::Path,
    events: u64,
    entities: u64,
    one_event_cap: Duration,
    only_settings: Option<&[String]>,
    loopback_events: u64,
) -> anyhow::Result<Vec<Drain>> {
    let _ = agent::free_port()?;
    let mut out = Vec::new();
    // `--uplink-events 0`: the loopback drains only.
    let wan_settings: &[Setting] = if events == 0 { &[] } else { &SETTINGS };
    if let Some(unknown) = only_settings
        .unwrap_or_default()
        .iter()
        .find(|name| !SETTINGS.iter().any(|s| s.name == name.as_str()))
    {
        bail!("--uplink-settings: no setting {unknown:?}");
    }
    let chosen = |s: &&Setting| only_settings.is_none_or(|names| names.iter().any(|n| n == s.name));
    for setting in wan_settings.iter().filter(chosen) {
        let cap = if setting.keys.contains("batch") {
            Duration::from_secs(600)
        } else {
            one_event_cap
        };
        let d = drain(bin, work, setting, Some(Link::STORE_UPLINK), events, entities, cap).await?;
        eprintln!(
            "  uplink {:<13} {:>8.0} events/s  {:>5.1} events/request  {:>6.0} wire bytes/event  uplink {:>4.0}% busy  ({} events in {:.1} s{}; {} duplicates, {} order violations, {} bad signatures)",
            d.setting,
            d.events_per_s,
            d.events_per_request,
            d.wire_bytes_per_event,
            d.uplink_utilisation * 100.0,
            d.events,
            d.seconds,
            if d.capped { ", capped" } else { "" },
            d.duplicates,
            d.order_violations,
            d.bad_signatures
        );
        out.push(d);
    }
    // On loopback the link is no limit: batches alone, and with gzip
    // (whose CPU cost is then what shows).
    let on_loopback = SETTINGS
        .iter()
        .filter(|s| loopback_events > 0 && LOOPBACK_SETTINGS.contains(&s.name));
    for setting in on_loopback {
        let d = drain(
            bin,
            work,
            setting,
            None,
            loopback_events,
            entities.max(10_000),
            Duration::from_secs(600),
        )
        .await?;
        eprintln!(
            "  loopback {:<13} {:>8.0} events/s  {:>5.1} events/request  CPU/event agent {:.1} µs, receiver {:.1} µs  ({} events in {:.1} s; {} duplicates, {} order violations, {} bad signatures)",
            d.setting,
            d.events_per_s,
            d.events_per_request,
            d.agent_cpu_us_per_event,
            d.receiver_cpu_us_per_event,
            d.events,
            d.seconds,
            d.duplicates,
            d.order_violations,
            d.bad_signatures
        );
        out.push(d);
    }
    Ok(out)
}
