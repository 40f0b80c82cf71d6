//! The webhook endpoint of the tests: a real HTTP server on loopback with
//! programmable answers, recording every request; behind a WAN link if
//! asked; and the per-entity order check over what it received.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;

use super::wan;

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Request {
    pub at: Instant,
    pub id: String,
    pub entity: String,
    pub entity_seq: i64,
    pub event_type: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub json: serde_json::Value,
    /// What the receiver answered.
    pub answered: u16,
}

/// What to answer.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub delay: Duration,
    pub headers: Vec<(String, String)>,
}

impl Answer {
    pub fn ok() -> Answer {
        Answer::status(200)
    }
    pub fn status(status: u16) -> Answer {
        Answer {
            status,
            delay: Duration::ZERO,
            headers: vec![],
        }
    }
    /// The same answer, given after `delay`.
    pub fn after(mut self, delay: Duration) -> Answer {
        self.delay = delay;
        self
    }
    /// The same answer with one more header.
    pub fn header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

type Rule = Box<dyn FnMut(&Request) -> Answer + Send>;

struct Inner {
    requests: Mutex<Vec<Request>>,
    rule: Mutex<Rule>,
}

/// A real HTTP server on loopback, in its own thread and runtime.
pub struct Receiver {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

async fn handle(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> axum::response::Response {
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let mut req = Request {
        at: Instant::now(),
        id: json["id"].as_str().unwrap_or_default().to_string(),
        entity: json["entity"].as_str().unwrap_or_default().to_string(),
        entity_seq: json["entity_seq"].as_i64().unwrap_or(-1),
        event_type: json["type"].as_str().unwrap_or_default().to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or_default().to_string()))
            .collect(),
        body: body.to_vec(),
        json,
        answered: 0,
    };
    let answer = (inner.rule.lock().unwrap())(&req);
    req.answered = answer.status;
    // Recorded on arrival: a request the client gives up on (timeout) still
    // counts, with `answered` 0 unless its delayed answer went out.
    let index = {
        let mut all = inner.requests.lock().unwrap();
        if !answer.delay.is_zero() {
            req.answered = 0;
        }
        all.push(req);
        all.len() - 1
    };
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
        inner.requests.lock().unwrap()[index].answered = answer.status;
    }
    let mut response = (StatusCode::from_u16(answer.status).unwrap(), "").into_response();
    for (k, v) in answer.headers {
        response.headers_mut().insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            axum::http::HeaderValue::from_str(&v).unwrap(),
        );
    }
    response
}

impl Receiver {
    /// Starts on a free port, answering 200 to everything.
    pub fn start() -> Receiver {
        let inner = Arc::new(Inner {
            requests: Mutex::new(Vec::new()),
            rule: Mutex::new(Box::new(|_| Answer::ok())),
        });
        let mut r = Receiver {
            addr: ([127, 0, 0, 1], 0).into(),
            inner,
            stop: None,
            thread: None,
        };
        r.listen(([127, 0, 0, 1], 0).into());
        r
    }

    fn listen(&mut self, addr: SocketAddr) {
        let listener = {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match std::net::TcpListener::bind(addr) {
                    Ok(l) => break l,
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => panic!("bind {addr}: {e}"),
                }
            }
        };
        listener.set_nonblocking(true).expect("nonblocking");
        self.addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let inner = self.inner.clone();
        self.thread = Some(std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let app = axum::Router::new().fallback(handle).with_state(inner);
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await;
            });
            rt.shutdown_timeout(Duration::from_millis(100));
        }));
        self.stop = Some(tx);
    }

    /// The webhook URL.
    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    /// Puts a WAN link in front of this receiver: the agent reaches it at
    /// the returned proxy's `url_for(&rx.url())` (see [`Receiver::url_via`]).
    pub fn behind(&self, link: wan::Link) -> wan::Wan {
        wan::Wan::start(self.addr, link)
    }

    /// The webhook URL through `wan`.
    pub fn url_via(&self, wan: &wan::Wan) -> String {
        wan.url_for(&self.url())
    }

    /// Sets how requests are answered.
    pub fn answer_with(&self, rule: impl FnMut(&Request) -> Answer + Send + 'static) {
        *self.inner.rule.lock().unwrap() = Box::new(rule);
    }

    /// Answers `status` to every request for event `id`, 2xx to the rest.
    pub fn refuse_event(&self, id: &str, status: u16) {
        let id = id.to_string();
        self.answer_with(move |r| {
            if r.id == id {
                Answer::status(status)
            } else {
                Answer::ok()
            }
        });
    }

    /// Answers the first request with `first`, every later one with 200.
    pub fn answer_first(&self, first: Answer) {
        let mut first = Some(first);
        self.answer_with(move |_| first.take().unwrap_or_else(Answer::ok));
    }

    /// Closes the port (connections refused) until [`Receiver::restart`].
    pub fn shut(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Listens again on the same port.
    pub fn restart(&mut self) {
        let addr = self.addr;
        self.listen(addr);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.inner.requests.lock().unwrap().clone()
    }

    /// Requests answered 2xx.
    pub fn delivered(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| (200..300).contains(&r.answered))
            .collect()
    }

    /// Distinct event ids answered 2xx.
    pub fn delivered_ids(&self) -> std::collections::HashSet<String> {
        self.delivered().into_iter().map(|r| r.id).collect()
    }

    /// Number of requests answered 2xx, without copying them (cheap to poll
    /// with large backlogs).
    pub fn delivered_count(&self) -> usize {
        self.inner
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| (200..300).contains(&r.answered))
            .count()
    }

    /// Number of requests so far, without copying them.
    pub fn request_count(&self) -> usize {
        self.inner.requests.lock().unwrap().len()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shut();
    }
}

/// Checks per-entity order over the 2xx-answered requests: `entity_seq`
/// never goes down (a repeat of the last one is a duplicate, allowed).
/// Returns the number of duplicates.
pub fn assert_entity_order(requests: &[Request]) -> usize {
    let mut last: HashMap<&str, (i64, &str)> = HashMap::new();
    let mut duplicates = 0;
    for r in requests {
        if let Some((seq, id)) = last.get(r.entity.as_str()) {
            assert!(
                r.entity_seq >= *seq,
                "order violated for {}: #{} ({}) after #{} ({id})",
                r.entity,
                r.entity_seq,
                r.id,
                seq
            );
            if r.entity_seq == *seq {
                assert_eq!(&r.id, id, "same entity_seq, different ids");
                duplicates += 1;
            }
        }
        last.insert(&r.entity, (r.entity_seq, &r.id));
    }
    duplicates
}
