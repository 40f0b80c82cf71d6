//! The one central of the `fleet` phase (issue 27 item 3): a loopback
//! webhook endpoint with a fixed capacity of C requests a second, a token
//! bucket (GCRA: one token every 1/C s, a burst of a tenth of a second's
//! worth, at least one), shared by every store.
//!
//! - While "down" (the outage) it answers every request 503 with
//!   `Retry-After` (or its port is closed: then it is started only when it
//!   comes back).
//! - `refuse`: a request beyond capacity gets 503 with `Retry-After: R`
//!   at once (counted as refused).
//! - `queue`: a request beyond capacity waits in a FIFO until its token
//!   (latency grows); one that would wait longer than `max_wait` gets 503
//!   (a bounded queue).
//!
//! What it accepts it checks like the bench's receiver: the signature with
//! the store's own secret (`signing::verify`, over the body after undoing
//! gzip), and order per entity of each store (the next `entity_seq`, or an
//! earlier one again: a duplicate). It counts per 1 s window since it came
//! back: requests offered (all that arrived), accepted (2xx) and refused
//! (503), and per store the events delivered (new ones).

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hdrhistogram::Histogram;

/// How central answers beyond capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Refuse,
    Queue,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Refuse => "refuse",
            Mode::Queue => "queue",
        }
    }
}

/// How central is sized and answers.
#[derive(Debug, Clone)]
pub struct Spec {
    pub mode: Mode,
    /// Requests a second.
    pub capacity: f64,
    /// Seconds of capacity the bucket holds (at least one token).
    pub burst_secs: f64,
    /// `queue`: the longest a request may wait for its token.
    pub max_wait: Duration,
    /// `Retry-After` of a 503, seconds.
    pub retry_after_s: u64,
    /// Keep every request for `--fleet-trace`.
    pub trace: bool,
}

/// One request, for the trace: ms since central came back, store, status,
/// events in it, ms waited in the queue.
pub type TraceRow = (f64, u32, u16, u32, f64);

/// Everything counted. Windows are 1 s since central came back.
pub struct State0 {
    pub offered: Vec<u64>,
    /// Offered per 100 ms window (a herd shows as a spike within one second).
    pub offered_100ms: Vec<u64>,
    pub accepted: Vec<u64>,
    pub refused: Vec<u64>,
    /// New events delivered per window.
    pub events: Vec<u64>,
    /// Per store: new events delivered per window.
    pub per_store: Vec<Vec<u32>>,
    /// Per store: new events so far.
    pub delivered: Vec<u64>,
    /// Per store: when (s since up) its `expected`-th event arrived.
    pub finished_at: Vec<Option<f64>>,
    /// Per store, per entity: the highest `entity_seq` taken.
    last: Vec<HashMap<String, i64>>,
    pub new_events: u64,
    pub duplicates: u64,
    pub order_violations: u64,
    pub first_violation: Option<String>,
    pub bad_signatures: u64,
    pub invalid: u64,
    /// 503s while down (the outage).
    pub down_requests: u64,
    pub requests_up: u64,
    pub refused_up: u64,
    pub accepted_up: u64,
    /// Accepted requests' wait for their token, µs.
    pub wait_us: Histogram<u64>,
    /// When the last new event arrived, s since up.
    pub last_new_at: f64,
    pub trace: Vec<TraceRow>,
}

/// Events each store is expected to deliver (a store is finished when it has).
struct Shared {
    spec: Spec,
    keys: Vec<Vec<u8>>,
    expected: u64,
    epoch: Instant,
    /// Nanoseconds from `epoch` to when central came back; `u64::MAX` while down.
    up_ns: AtomicU64,
    /// The bucket: the theoretical arrival time of the next request, s since epoch.
    tat: Mutex<f64>,
    state: Mutex<State0>,
}

pub struct Central {
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// What central reads of an envelope.
#[derive(serde::Deserialize)]
struct Seen<'a> {
    #[serde(borrow)]
    entity: Cow<'a, str>,
    entity_seq: i64,
    #[serde(borrow)]
    source: Source<'a>,
}

#[derive(serde::Deserialize)]
struct Source<'a> {
    #[serde(borrow)]
    store_id: Cow<'a, str>,
}

/// The store id of store `i` (what its config says).
pub fn store_id(i: usize) -> String {
    format!("s{i:04}")
}

fn store_index(id: &str) -> Option<usize> {
    id.strip_prefix('s')?.parse().ok()
}

/// A distinct Standard Webhooks secret for store `i`: the bench secret with
/// its last 3 bytes (4 base64 digits) replaced by `i`.
pub fn secret_of(i: usize) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let base = crate::agent::SECRET;
    let head = &base[..base.len() - 4];
    let n = i as u32 & 0xff_ffff;
    let digits: String = [18u32, 12, 6, 0]
        .iter()
        .map(|shift| B64[((n >> shift) & 63) as usize] as char)
        .collect();
    format!("{head}{digits}")
}

fn bump<T: Copy + Default + std::ops::AddAssign + From<u8>>(v: &mut Vec<T>, at: usize) {
    // Bounded: the phase's time limit keeps windows far below this.
    let at = at.min(100_000);
    if v.len() <= at {
        v.resize(at + 1, T::default());
    }
    v[at] += T::from(1u8);
}

impl Central {
    /// Listens on `addr` (loopback), down until [`Central::come_back`],
    /// unless `up` (the closed-port outage: it is started as it comes back).
    pub async fn start(
        addr: SocketAddr,
        spec: Spec,
        stores: usize,
        expected: u64,
        up: bool,
    ) -> anyhow::Result<Central> {
        let keys = (0..stores)
            .map(|i| store_outbox::signing::decode_secret(&secret_of(i)).map_err(|e| anyhow::anyhow!(e)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let epoch = Instant::now();
        let shared = Arc::new(Shared {
            spec,
            keys,
            expected,
            epoch,
            up_ns: AtomicU64::new(if up { 0 } else { u64::MAX }),
            tat: Mutex::new(0.0),
            state: Mutex::new(State0 {
                offered: Vec::new(),
                offered_100ms: Vec::new(),
                accepted: Vec::new(),
                refused: Vec::new(),
                events: Vec::new(),
                per_store: vec![Vec::new(); stores],
                delivered: vec![0; stores],
                finished_at: vec![None; stores],
                last: vec![HashMap::new(); stores],
                new_events: 0,
                duplicates: 0,
                order_violations: 0,
                first_violation: None,
                bad_signatures: 0,
                invalid: 0,
                down_requests: 0,
                requests_up: 0,
                refused_up: 0,
                accepted_up: 0,
                wait_us: Histogram::new_with_bounds(1, 600_000_000, 3)?,
                last_new_at: 0.0,
                trace: Vec::new(),
            }),
        });
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        // Thousands of agents' connections may arrive in the same moment.
        let listener = socket.listen(8192)?;
        let app = axum::Router::new().fallback(handle).with_state(shared.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Central {
            shared,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Central comes back: from now on it serves at its capacity.
    pub fn come_back(&self) {
        let ns = self.shared.epoch.elapsed().as_nanos() as u64;
        *self.shared.tat.lock().unwrap_or_else(|p| p.into_inner()) = ns as f64 / 1e9;
        self.shared.up_ns.store(ns, Ordering::SeqCst);
    }

    /// The instant it came back.
    pub fn up_at(&self) -> Option<Instant> {
        match self.shared.up_ns.load(Ordering::SeqCst) {
            u64::MAX => None,
            ns => Some(self.shared.epoch + Duration::from_nanos(ns)),
        }
    }

    /// Reads the counters under the lock.
    pub fn with<R>(&self, f: impl FnOnce(&State0) -> R) -> R {
        f(&self.shared.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn new_events(&self) -> u64 {
        self.with(|s| s.new_events)
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take() {
            // Agents keep their connections open: the graceful shutdown
            // waits for them; a second is enough for answers in flight.
            if tokio::time::timeout(Duration::from_secs(1), &mut task).await.is_err() {
                task.abort();
            }
        }
    }
}

impl Drop for Central {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn unavailable(retry_after_s: u64) -> Response {
    let mut r = StatusCode::SERVICE_UNAVAILABLE.into_response();
    if let Ok(v) = HeaderValue::from_str(&retry_after_s.to_string()) {
        r.headers_mut().insert("retry-after", v);
    }
    r
}

/// What a request holds, checked: its store and its events (entity, seq).
type Checked = Result<(usize, Vec<(String, i64)>), StatusCode>;

fn check(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Checked {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mut unzipped = Vec::new();
    let plain: &[u8] = if header("content-encoding") == "gzip" {
        if flate2::read::GzDecoder::new(body).read_to_end(&mut unzipped).is_err() {
            return Err(StatusCode::BAD_REQUEST);
        }
        &unzipped
    } else {
        body
    };
    let events: Vec<Seen> = if plain.first() == Some(&b'[') {
        serde_json::from_slice(plain).map_err(|_| StatusCode::BAD_REQUEST)?
    } else {
        vec![serde_json::from_slice(plain).map_err(|_| StatusCode::BAD_REQUEST)?]
    };
    let store = events
        .first()
        .and_then(|e| store_index(&e.source.store_id))
        .filter(|s| *s < shared.keys.len())
        .ok_or(StatusCode::BAD_REQUEST)?;
    if events.iter().any(|e| store_index(&e.source.store_id) != Some(store)) {
        return Err(StatusCode::BAD_REQUEST);
    }
    let timestamp: i64 = header("webhook-timestamp").parse().unwrap_or(0);
    if !store_outbox::signing::verify(
        &shared.keys[store],
        header("webhook-id"),
        timestamp,
        plain,
        header("webhook-signature"),
    ) {
        return Err(StatusCode::UNAUTHORIZED);
    }
    Ok((
        store,
        events
            .into_iter()
            .map(|e| (e.entity.into_owned(), e.entity_seq))
            .collect(),
    ))
}

async fn handle(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let arrived = shared.epoch.elapsed().as_secs_f64();
    let up_ns = shared.up_ns.load(Ordering::SeqCst);
    let spec = &shared.spec;
    if up_ns == u64::MAX {
        shared.state.lock().unwrap_or_else(|p| p.into_inner()).down_requests += 1;
        return unavailable(spec.retry_after_s);
    }
    let up = up_ns as f64 / 1e9;
    let since = |at: f64| (at - up).max(0.0);
    // The bucket (GCRA): one token every 1/C s, `burst` tokens at most.
    let interval = 1.0 / spec.capacity;
    let tolerance = ((spec.capacity * spec.burst_secs).max(1.0) - 1.0) * interval;
    let serve_at = {
        let mut tat = shared.tat.lock().unwrap_or_else(|p| p.into_inner());
        let next = tat.max(arrived);
        let at = (next - tolerance).max(arrived);
        let ok = match spec.mode {
            Mode::Refuse => at <= arrived,
            Mode::Queue => at - arrived <= spec.max_wait.as_secs_f64(),
        };
        if ok {
            *tat = next + interval;
            Some(at)
        } else {
            None
        }
    };
    {
        let mut s = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        let w = since(arrived) as usize;
        bump(&mut s.offered, w);
        bump(&mut s.offered_100ms, (since(arrived) * 10.0) as usize);
        s.requests_up += 1;
        if serve_at.is_none() {
            bump(&mut s.refused, w);
            s.refused_up += 1;
            if spec.trace {
                s.trace.push((since(arrived) * 1e3, u32::MAX, 503, 0, 0.0));
            }
        }
    }
    let Some(at) = serve_at else {
        return unavailable(spec.retry_after_s);
    };
    if at > arrived {
        tokio::time::sleep(Duration::from_secs_f64(at - arrived)).await;
    }
    let checked = check(&shared, &headers, &body);
    let done = shared.epoch.elapsed().as_secs_f64();
    let t = since(done);
    let mut guard = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    let s = &mut *guard;
    let (store, events) = match checked {
        Ok(c) => c,
        Err(code) => {
            if code == StatusCode::UNAUTHORIZED {
                s.bad_signatures += 1;
            } else {
                s.invalid += 1;
            }
            return code.into_response();
        }
    };
    let w = t as usize;
    bump(&mut s.accepted, w);
    s.accepted_up += 1;
    let _ = s.wait_us.record((((at - arrived) * 1e6) as u64).max(1));
    let n = events.len() as u32;
    for (entity, seq) in events {
        let top = s.last[store].get(&entity).copied().unwrap_or(0);
        if seq == top + 1 {
            s.last[store].insert(entity, seq);
            s.new_events += 1;
            s.last_new_at = t;
            bump(&mut s.events, w);
            bump(&mut s.per_store[store], w);
            s.delivered[store] += 1;
            if s.delivered[store] == shared.expected {
                s.finished_at[store] = Some(t);
            }
        } else if seq <= top {
            s.duplicates += 1;
        } else {
            s.order_violations += 1;
            if s.first_violation.is_none() {
                s.first_violation = Some(format!("store {store} {entity}: entity_seq {seq} after {top}"));
            }
        }
    }
    if spec.trace {
        s.trace.push((t * 1e3, store as u32, 200, n, (at - arrived) * 1e3));
    }
    StatusCode::OK.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_distinct_and_valid() {
        let a = secret_of(0);
        let b = secret_of(199);
        assert_ne!(a, b);
        assert!(store_outbox::signing::decode_secret(&a).is_ok());
        assert!(store_outbox::signing::decode_secret(&b).is_ok());
        assert_eq!(store_index(&store_id(42)), Some(42));
    }
}
