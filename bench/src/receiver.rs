//! A loopback webhook receiver that checks what it gets: the Standard
//! Webhooks signature (the library's `signing::verify`), `webhook-id` equal
//! to the body's `id`, and order per entity (`entity_seq` must be the last
//! one again, a retry, or the next one; the first seen must be 1).
//!
//! Kept light (a borrowed parse that skips `data`) so that it is not what
//! limits the drain; the raw request client goes through the same checks.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Router;

/// Counters since the last reset.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    pub requests: u64,
    /// The next event of its entity.
    pub in_order: u64,
    /// The last event of its entity again (allowed: at least once).
    pub duplicates: u64,
    /// Older than the last one, or a gap (including a first event that is not 1).
    pub order_violations: u64,
    pub bad_signatures: u64,
    pub invalid: u64,
    pub first_violation: Option<String>,
    #[serde(skip)]
    pub first_at: Option<Instant>,
    #[serde(skip)]
    pub last_in_order_at: Option<Instant>,
}

struct Inner {
    last: HashMap<String, i64>,
    stats: Stats,
}

pub struct Shared {
    key: Vec<u8>,
    inner: Mutex<Inner>,
}

impl Shared {
    pub fn stats(&self) -> Stats {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).stats.clone()
    }

    /// Forgets counters and per-entity state (between phases).
    pub fn reset(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.last.clear();
        inner.stats = Stats::default();
    }
}

pub struct Receiver {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(serde::Deserialize)]
struct Hook<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    entity: Cow<'a, str>,
    entity_seq: i64,
}

impl Receiver {
    /// Listens on `addr` (loopback) and checks with `secret`.
    pub async fn start(addr: SocketAddr, secret: &str) -> anyhow::Result<Receiver> {
        let key = store_outbox::signing::decode_secret(secret).map_err(|e| anyhow::anyhow!(e))?;
        let shared = Arc::new(Shared {
            key,
            inner: Mutex::new(Inner {
                last: HashMap::new(),
                stats: Stats::default(),
            }),
        });
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Receiver {
            addr,
            shared,
            stop: Some(stop),
            task,
        })
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut self.task).await;
        self.task.abort();
    }
}

async fn handle(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let now = Instant::now();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    let msg_id = header("webhook-id");
    let timestamp: i64 = header("webhook-timestamp").parse().unwrap_or(0);
    let signed = store_outbox::signing::verify(&shared.key, msg_id, timestamp, &body, header("webhook-signature"));
    let parsed: Option<Hook> = serde_json::from_slice(&body).ok();
    let mut inner = shared.inner.lock().unwrap_or_else(|p| p.into_inner());
    let Inner { last, stats } = &mut *inner;
    stats.requests += 1;
    stats.first_at.get_or_insert(now);
    if !signed {
        stats.bad_signatures += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let Some(hook) = parsed.filter(|h| h.id == msg_id) else {
        stats.invalid += 1;
        return StatusCode::BAD_REQUEST;
    };
    let prev = last.get(hook.entity.as_ref()).copied().unwrap_or(0);
    if hook.entity_seq == prev + 1 {
        stats.in_order += 1;
        stats.last_in_order_at = Some(now);
        match last.get_mut(hook.entity.as_ref()) {
            Some(slot) => *slot = hook.entity_seq,
            None => {
                last.insert(hook.entity.into_owned(), hook.entity_seq);
            }
        }
    } else if hook.entity_seq == prev && prev > 0 {
        stats.duplicates += 1;
    } else {
        stats.order_violations += 1;
        if stats.first_violation.is_none() {
            stats.first_violation = Some(format!("{}: entity_seq {} after {prev}", hook.entity, hook.entity_seq));
        }
    }
    StatusCode::OK
}

/// The raw request rate: `n` signed POSTs of the same kind of body to the
/// receiver, `concurrency` at a time on keep-alive connections, each worker
/// in order over its own entity (so the receiver does the same checks).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RawRequests {
    pub requests: u64,
    pub ok: u64,
    pub elapsed_s: f64,
    pub rate: f64,
    pub cut_short: bool,
}

pub async fn raw_requests(
    url: &str,
    n: u64,
    concurrency: usize,
    size: usize,
    key: Arc<Vec<u8>>,
    time_limit: std::time::Duration,
) -> anyhow::Result<RawRequests> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(std::time::Duration::from_secs(30))
        .build()?;
    let start = tokio::time::Instant::now();
    let stop_at = start + time_limit;
    let per_worker = n / concurrency.max(1) as u64;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..concurrency.max(1) {
        let (client, url, key) = (client.clone(), url.to_string(), key.clone());
        tasks.spawn(async move {
            let entity = format!("raw:{w}");
            let (mut sent, mut ok, mut cut) = (0u64, 0u64, false);
            for k in 0..per_worker {
                if tokio::time::Instant::now() >= stop_at {
                    cut = true;
                    break;
                }
                let ev = crate::events::event("rawreq", w as u64 * 1_000_000_000 + k, &entity, size);
                let body = ev.webhook_body(k as i64 + 1);
                let ts = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                let sig = store_outbox::signing::sign(&key, &ev.event_id, ts, body.as_bytes());
                sent += 1;
                let resp = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("webhook-id", &ev.event_id)
                    .header("webhook-timestamp", ts.to_string())
                    .header("webhook-signature", sig)
                    .body(body)
                    .send()
                    .await;
                if let Ok(resp) = resp {
                    let good = resp.status().is_success();
                    let _ = resp.bytes().await;
                    if good {
                        ok += 1;
                    }
                }
            }
            (sent, ok, cut)
        });
    }
    let (mut requests, mut ok, mut cut_short) = (0, 0, false);
    while let Some(done) = tasks.join_next().await {
        let (s, o, c) = done?;
        requests += s;
        ok += o;
        cut_short |= c;
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(RawRequests {
        requests,
        ok,
        elapsed_s: elapsed,
        rate: ok as f64 / elapsed.max(1e-9),
        cut_short,
    })
}
