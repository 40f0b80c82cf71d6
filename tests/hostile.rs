//! Hostile endpoints. First scenario: one healthy, one answering 503 the
//! whole time, one misbehaving at random (500, 429 without Retry-After, 301,
//! answers slower than the timeout). The healthy one is not held up, order
//! holds everywhere, the down one keeps everything and is only probed.
//!
//! Second scenario, transport faults: a connection reset in the middle of the
//! response body, a reset while the request is being read, a slow-loris reply
//! (headers a byte at a time, slower than the timeout), and a TLS handshake
//! failure (a certificate the agent does not trust; `openssl` makes the
//! certificates, Python's `ssl` serves them). Those subscriptions keep
//! everything pending and nothing is marked delivered; the healthy one is not
//! held up; once the faults stop, everything arrives in order. The servers
//! record a request on arrival, before answering, so their order is the
//! agent's.
//!
//! Then answers that ask too much: a `Retry-After` past any clock pauses a
//! subscription for `retry.max`, never kills the agent. And secrets: a
//! proxy's password is in no error, log line, `status`, `doctor`, the page or
//! `/metrics`. (`hostile_endpoint.rs` generates hostile answers at random.)

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn hostile_endpoints_do_not_hold_up_others_or_break_order() {
    let healthy = Receiver::start();
    let down = Receiver::start();
    down.answer_with(|_| Answer::status(503));
    let hostile = Receiver::start();
    let seen: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let faults = Arc::new(AtomicU64::new(0));
    {
        let (seen, faults) = (seen.clone(), faults.clone());
        hostile.answer_with(move |r| {
            let mut seen = seen.lock().unwrap();
            let n = seen.entry(r.id.clone()).or_insert(0);
            *n += 1;
            // Deterministic chaos: most events fail once or twice, in turn.
            let roll = (r.id.bytes().map(u64::from).sum::<u64>() + *n * 7) % 10;
            let answer = match roll {
                0 | 1 => Answer::status(500),
                2 => Answer::status(429),
                3 => Answer {
                    status: 301,
                    delay: Duration::ZERO,
                    headers: vec![("location".into(), "http://elsewhere/".into())],
                },
                4 => Answer {
                    status: 200,
                    delay: Duration::from_millis(700),
                    headers: vec![],
                },
                _ => Answer::ok(),
            };
            if answer.status != 200 || !answer.delay.is_zero() {
                faults.fetch_add(1, Ordering::Relaxed);
            }
            answer
        });
    }
    let retry = "timeout = \"300ms\"\nmax_in_flight = 8\nretry = { initial = \"50ms\", max = \"250ms\" }";
    let subs = format!(
        "{}{}{}",
        subscription("healthy", &healthy.url(), retry),
        subscription("down", &down.url(), retry),
        subscription("hostile", &hostile.url(), retry)
    );
    let mut agent = Agent::new(&subs);
    agent.start();
    let started = Instant::now();
    agent.send_events(&Events::new("h", 0..200, "CustomerOrderUpdated").spread_over("order", 20));

    wait_until(Duration::from_secs(60), "healthy got everything", || {
        healthy.delivered_ids().len() == 200
    });
    let healthy_done = started.elapsed();
    assert_entity_order(&healthy.delivered());
    wait_until(Duration::from_secs(120), "hostile got everything in the end", || {
        hostile.delivered_ids().len() == 200
    });
    assert_entity_order(&hostile.delivered());
    let elapsed = started.elapsed();

    // The down one: everything kept, and probed rather than hammered: one
    // first burst of at most max_in_flight, then one request per backoff
    // period (>= 50 ms, growing to 250 ms) while offline.
    let status = agent.status();
    let down_status = status["subscriptions"]
        .as_array()
        .expect("subs")
        .iter()
        .find(|s| s["name"] == "down")
        .expect("down")
        .clone();
    assert_eq!(down_status["pending"], 200, "{down_status}");
    assert_eq!(down_status["state"], "offline");
    let requests = down.requests().len();
    let bound = 8 + (elapsed.as_millis() / 50) as usize + 2;
    assert!(
        requests <= bound,
        "down endpoint probed {requests} times in {elapsed:?} (bound {bound})"
    );
    println!(
        "hostile: healthy done in {healthy_done:?}, hostile in {elapsed:?} after {} faults; down endpoint: {requests} requests for 200 waiting events",
        faults.load(Ordering::Relaxed)
    );
}

// ---- transport faults --------------------------------------------------------

/// What the raw server does with a request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Fault {
    /// A correct `200`, keep-alive.
    None = 0,
    /// Reads the request, sends the status line, headers and part of the
    /// body, then resets the connection (SO_LINGER 0).
    ResetMidBody = 1,
    /// Reads the first bytes of the request, then resets the connection.
    ResetMidRequest = 2,
    /// Reads the request, then sends the headers a byte every 40 ms (about
    /// 1.5 s in all, far past the 300 ms timeout).
    SlowLoris = 3,
}

/// A raw HTTP/1.1 server on loopback whose fault can be switched off; it
/// records every request it read on arrival, before answering (`answered`
/// becomes 200 once a correct answer went out), and counts the faulty ones.
/// Recording after the answer would let two connections record out of
/// order: the agent may send an entity's next event as soon as it has the
/// 200, before the first connection's thread got to record it.
struct RawServer {
    port: u16,
    fault: Arc<AtomicU8>,
    faults: Arc<AtomicU64>,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
}

fn to_request(headers: HashMap<String, String>, body: Vec<u8>, answered: u16) -> Request {
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    Request {
        at: Instant::now(),
        id: json["id"].as_str().unwrap_or_default().to_string(),
        entity: json["entity"].as_str().unwrap_or_default().to_string(),
        entity_seq: json["entity_seq"].as_i64().unwrap_or(-1),
        event_type: json["type"].as_str().unwrap_or_default().to_string(),
        headers,
        body,
        json,
        answered,
    }
}

impl RawServer {
    fn start(fault: Fault) -> RawServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let server = RawServer {
            port: listener.local_addr().expect("addr").port(),
            fault: Arc::new(AtomicU8::new(fault as u8)),
            faults: Arc::default(),
            requests: Arc::default(),
            stop: Arc::default(),
        };
        let (fault, faults, requests, stop) = (
            server.fault.clone(),
            server.faults.clone(),
            server.requests.clone(),
            server.stop.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let stream = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                let (fault, faults, requests) = (fault.clone(), faults.clone(), requests.clone());
                std::thread::spawn(move || {
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                    serve(stream, &fault, &faults, &requests);
                });
            }
        });
        server
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks", self.port)
    }

    fn set(&self, fault: Fault) {
        self.fault.store(fault as u8, Ordering::SeqCst);
    }

    /// The requests answered 200, in arrival order.
    fn delivered(&self) -> Vec<Request> {
        answered_2xx(&self.requests)
    }
}

/// The requests of `requests` answered 2xx, in arrival order.
fn answered_2xx(requests: &Mutex<Vec<Request>>) -> Vec<Request> {
    requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| (200..300).contains(&r.answered))
        .cloned()
        .collect()
}

/// How many of `requests` were answered 2xx.
fn count_2xx(requests: &Mutex<Vec<Request>>) -> usize {
    requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| (200..300).contains(&r.answered))
        .count()
}

/// Records a request on arrival (not answered yet); its index.
fn arrived(requests: &Mutex<Vec<Request>>, request: Request) -> usize {
    let mut all = requests.lock().unwrap();
    all.push(request);
    all.len() - 1
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One connection: requests in turn, each treated as the current fault says.
fn serve(stream: TcpStream, fault: &AtomicU8, faults: &AtomicU64, requests: &Mutex<Vec<Request>>) {
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    loop {
        let now = fault.load(Ordering::SeqCst);
        if now == Fault::ResetMidRequest as u8 {
            let mut first = [0u8; 16];
            let _ = reader.read(&mut first);
            faults.fetch_add(1, Ordering::Relaxed);
            reset_on_drop(&writer);
            return;
        }
        let Some((headers, body)) = read_request(&mut reader) else {
            return;
        };
        let index = arrived(requests, to_request(headers, body, 0));
        // Looked at again: the fault may have been switched off meanwhile.
        match fault.load(Ordering::SeqCst) {
            f if f == Fault::ResetMidBody as u8 => {
                faults.fetch_add(1, Ordering::Relaxed);
                let _ = writer.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"received\":");
                let _ = writer.flush();
                std::thread::sleep(Duration::from_millis(50));
                reset_on_drop(&writer);
                return;
            }
            f if f == Fault::SlowLoris as u8 => {
                faults.fetch_add(1, Ordering::Relaxed);
                for b in b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n" {
                    if writer.write_all(&[*b]).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(40));
                }
                return;
            }
            _ => {
                if writer
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .is_err()
                {
                    return;
                }
                requests.lock().unwrap()[index].answered = 200;
            }
        }
    }
}

/// A TLS webhook endpoint: Python's `http.server` behind `ssl`. A request is
/// a line on stdout on arrival (`REQ <n> <body>`, before the answer), and
/// another once its 200 went out (`OK <n>`), for the same reason as
/// [`RawServer`]'s order.
struct TlsEndpoint {
    /// Killed on drop.
    _server: Process,
}

const TLS_SERVER_PY: &str = r#"
import http.server, ssl, sys, threading
port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
lock = threading.Lock()
count = [0]
def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        with lock:
            n = count[0]
            count[0] += 1
            say("REQ %d %s" % (n, body.decode()))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
        self.wfile.flush()
        with lock:
            say("OK %d" % n)
    def log_message(self, *args):
        pass
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
http.server.ThreadingHTTPServer.allow_reuse_address = True
srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("listening", flush=True)
srv.serve_forever()
"#;

impl TlsEndpoint {
    /// Serves `cert`/`key` (in `dir`) on `port`, appending to `requests`.
    fn start(dir: &Path, port: u16, cert: &str, key: &str, requests: Arc<Mutex<Vec<Request>>>) -> TlsEndpoint {
        let mut child = Command::new("python3")
            .args(["-c", TLS_SERVER_PY, &port.to_string(), cert, key])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 must be installed");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut first = String::new();
        stdout.read_line(&mut first).expect("python server output");
        assert_eq!(first.trim(), "listening", "the Python TLS server did not start");
        std::thread::spawn(move || {
            // The server's request numbers to indexes in `requests`.
            let mut index = HashMap::new();
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("REQ ") {
                    let (n, body) = rest.split_once(' ').unwrap_or((rest, ""));
                    let at = arrived(&requests, to_request(HashMap::new(), body.as_bytes().to_vec(), 0));
                    index.insert(n.to_string(), at);
                } else if let Some(at) = line.strip_prefix("OK ").and_then(|n| index.get(n)) {
                    requests.lock().unwrap()[*at].answered = 200;
                }
            }
        });
        TlsEndpoint {
            _server: Process(child),
        }
    }
}

/// `ca.pem`, `server.pem`/`server.key` for 127.0.0.1 signed by it, and a
/// self-signed `rogue.pem`/`rogue.key` for 127.0.0.1 the agent does not trust.
fn make_certs(dir: &Path) {
    ca_and_server_cert(dir);
    openssl_new_key(
        dir,
        &[
            "-x509",
            "-keyout",
            "rogue.key",
            "-out",
            "rogue.pem",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ],
    );
}

/// Rows of `deliveries` of subscription `name` in `state` (1 delivered).
fn deliveries_in_state(agent: &Agent, name: &str, state: i64) -> i64 {
    agent
        .open_db()
        .query_row(
            "SELECT COUNT(*) FROM deliveries d JOIN subscriptions s ON s.id = d.sub_id
             WHERE s.name = ?1 AND d.state = ?2",
            rusqlite::params![name, state],
            |r| r.get(0),
        )
        .expect("deliveries")
}

/// Every entity's `entity_seq` 1..=n once, in order (duplicates of the last
/// one tolerated); returns the duplicates.
fn assert_complete_in_order(what: &str, requests: &[Request], events: usize, entities: usize) -> usize {
    let duplicates = assert_entity_order(requests);
    let mut per_entity: HashMap<&str, Vec<i64>> = HashMap::new();
    for r in requests {
        let seqs = per_entity.entry(r.entity.as_str()).or_default();
        if seqs.last() != Some(&r.entity_seq) {
            seqs.push(r.entity_seq);
        }
    }
    assert_eq!(per_entity.len(), entities, "{what}: every entity");
    for (entity, seqs) in per_entity {
        let expected: Vec<i64> = (1..=(events / entities) as i64).collect();
        assert_eq!(seqs, expected, "{what}: {entity} complete, in order");
    }
    duplicates
}

#[test]
fn resets_slow_loris_and_tls_failures_keep_everything_until_the_endpoint_heals() {
    const EVENTS: usize = 200;
    const ENTITIES: usize = 20;
    let certs = tempfile::tempdir().expect("tempdir");
    make_certs(certs.path());
    let healthy = Receiver::start();
    let mid_body = RawServer::start(Fault::ResetMidBody);
    let mid_request = RawServer::start(Fault::ResetMidRequest);
    let slow = RawServer::start(Fault::SlowLoris);
    let tls_port = free_port();
    let tls_requests: Arc<Mutex<Vec<Request>>> = Arc::default();
    let rogue = TlsEndpoint::start(certs.path(), tls_port, "rogue.pem", "rogue.key", tls_requests.clone());

    let retry = "timeout = \"300ms\"\nmax_in_flight = 8\nretry = { initial = \"50ms\", max = \"250ms\" }";
    let tls_extra = format!("{retry}\nca_file = \"{}\"", certs.path().join("ca.pem").display());
    let subs = [
        subscription("healthy", &healthy.url(), retry),
        subscription("reset-mid-body", &mid_body.url(), retry),
        subscription("reset-mid-request", &mid_request.url(), retry),
        subscription("slow-loris", &slow.url(), retry),
        subscription("tls", &format!("https://127.0.0.1:{tls_port}/hooks"), &tls_extra),
    ]
    .concat();
    let mut agent = Agent::new(&subs);
    agent.start();
    let started = Instant::now();
    agent.send_events(&Events::new("t", 0..EVENTS, "CustomerOrderUpdated").spread_over("order", ENTITIES));

    // The healthy subscription is not held up by the faulty ones.
    wait_until(Duration::from_secs(60), "healthy got everything", || {
        healthy.delivered_ids().len() == EVENTS
    });
    let healthy_done = started.elapsed();
    assert_complete_in_order("healthy", &healthy.delivered(), EVENTS, ENTITIES);

    // Faults for a while longer: every slow-loris reply must time out, and
    // each faulty endpoint must have been tried more than once (retried).
    std::thread::sleep(Duration::from_secs(3));
    let faulty = ["reset-mid-body", "reset-mid-request", "slow-loris", "tls"];
    let mut errors = Vec::new();
    for name in faulty {
        let s = agent.sub_status(name);
        assert_eq!(s["pending"], EVENTS, "{name} keeps everything: {s}");
        assert_eq!(s["delivered_total"], 0, "{name}: nothing delivered: {s}");
        assert_eq!(
            deliveries_in_state(&agent, name, 1),
            0,
            "{name}: no delivery marked delivered"
        );
        assert_eq!(s["state"], "offline", "{name}: {s}");
        errors.push(format!("{name}: {}", s["last_error"]));
    }
    let attempts: HashMap<&str, i64> = faulty
        .iter()
        .map(|name| {
            let n: i64 = agent
                .open_db()
                .query_row(
                    "SELECT COUNT(*) FROM attempts a JOIN subscriptions s ON s.id = a.sub_id WHERE s.name = ?1",
                    [name],
                    |r| r.get(0),
                )
                .expect("attempts");
            (*name, n)
        })
        .collect();
    for (name, n) in &attempts {
        assert!(*n >= 2, "{name} retried: {n} attempts");
    }
    let slow_errors: Vec<String> = agent
        .open_db()
        .prepare(
            "SELECT DISTINCT a.error FROM attempts a JOIN subscriptions s ON s.id = a.sub_id
             WHERE s.name = 'slow-loris'",
        )
        .expect("prepare")
        .query_map([], |r| r.get::<_, Option<String>>(0))
        .expect("query")
        .map(|e| e.expect("row").unwrap_or_default())
        .collect();
    assert!(
        slow_errors.iter().all(|e| e.contains("timeout")),
        "a slow-loris reply is a timeout: {slow_errors:?}"
    );
    assert!(mid_body.delivered().is_empty() && mid_request.delivered().is_empty() && slow.delivered().is_empty());
    assert!(
        tls_requests.lock().unwrap().is_empty(),
        "no request got through the failed handshake"
    );
    let fault_counts = format!(
        "faults served: {} reset mid-body, {} reset mid-request, {} slow-loris",
        mid_body.faults.load(Ordering::Relaxed),
        mid_request.faults.load(Ordering::Relaxed),
        slow.faults.load(Ordering::Relaxed)
    );

    // The faults stop: the raw servers answer properly, the TLS endpoint
    // presents a certificate from the configured CA.
    mid_body.set(Fault::None);
    mid_request.set(Fault::None);
    slow.set(Fault::None);
    drop(rogue);
    let _good = TlsEndpoint::start(certs.path(), tls_port, "server.pem", "server.key", tls_requests.clone());
    let healed = Instant::now();
    wait_until(Duration::from_secs(120), "every faulty subscription drained", || {
        [&mid_body, &mid_request, &slow]
            .iter()
            .all(|s| count_2xx(&s.requests) >= EVENTS)
            && count_2xx(&tls_requests) >= EVENTS
    });
    let drained = healed.elapsed();
    let mut duplicates = 0;
    for (name, requests) in [
        ("reset-mid-body", mid_body.delivered()),
        ("reset-mid-request", mid_request.delivered()),
        ("slow-loris", slow.delivered()),
        ("tls", answered_2xx(&tls_requests)),
    ] {
        duplicates += assert_complete_in_order(name, &requests, EVENTS, ENTITIES);
        wait_until(Duration::from_secs(30), "status shows it drained", || {
            let s = agent.sub_status(name);
            s["pending"] == 0 && s["delivered_total"] == EVENTS
        });
    }
    println!(
        "hostile transport: healthy done in {healthy_done:?} while 4 endpoints failed; {fault_counts}; \
         attempts while failing {attempts:?}; last errors: {}; after the fix all 4 drained in {drained:?}: \
         {} events each, {duplicates} duplicates, 0 order violations",
        errors.join(" | "),
        EVENTS
    );
}

// ---- answers that ask for too much ---------------------------------------------

/// Whether the agent process is still running (not exited, not aborted).
fn alive(agent: &mut Agent) -> bool {
    agent.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
}

#[test]
fn a_retry_after_beyond_any_clock_pauses_for_retry_max_and_the_agent_lives() {
    const EVENTS: usize = 40;
    const ENTITIES: usize = 4;
    let rx = Receiver::start();
    // The first answer asks for u64::MAX seconds (an `Instant` overflow),
    // the second for 317 years, the third for a date in the year 9999;
    // then the endpoint takes everything.
    let asked = Arc::new(AtomicU64::new(0));
    {
        let asked = asked.clone();
        rx.answer_with(move |_| match asked.fetch_add(1, Ordering::SeqCst) {
            0 => Answer::status(429).header("retry-after", "18446744073709551615"),
            1 => Answer::status(503).header("retry-after", "10000000000"),
            2 => Answer::status(429).header("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT"),
            _ => Answer::ok(),
        });
    }
    let retry_max = Duration::from_secs(2);
    let mut agent = Agent::new(&subscription(
        "erp",
        &rx.url(),
        "timeout = \"5s\"\nretry = { initial = \"100ms\", max = \"2s\" }",
    ));
    agent.start();
    let started = Instant::now();
    agent.send_events(&Events::new("ra", 0..EVENTS, "SaleCreated").spread_over("till", ENTITIES));
    // Three pauses of at most retry.max each, one after the other, plus a
    // margin for a loaded machine (the drain itself takes well under 1 s).
    let bound = retry_max * 3 + Duration::from_secs(20);
    wait_until(bound, "everything delivered after the clamped pauses", || {
        rx.delivered_ids().len() == EVENTS || !alive(&mut agent)
    });
    assert!(alive(&mut agent), "the agent died:\n{}", agent.log());
    assert_eq!(rx.delivered_ids().len(), EVENTS, "{}", agent.log());
    assert_complete_in_order("erp", &rx.delivered(), EVENTS, ENTITIES);
    let took = started.elapsed();
    assert!(asked.load(Ordering::SeqCst) >= 3, "all three throttles were answered");
    wait_until(Duration::from_secs(30), "status shows it drained", || {
        let s = agent.sub_status("erp");
        s["pending"] == 0 && s["delivered_total"] == EVENTS
    });
    // Stopped and started again with the same answers, it lives too.
    assert!(agent.stop().success(), "clean stop:\n{}", agent.log());
    asked.store(0, Ordering::SeqCst);
    agent.start();
    agent.send_events(&Events::new("rb", 0..EVENTS, "SaleCreated").spread_over("till", ENTITIES));
    wait_until(bound, "everything delivered after a restart", || {
        rx.delivered_ids().len() == 2 * EVENTS || !alive(&mut agent)
    });
    assert!(alive(&mut agent), "the agent died after a restart:\n{}", agent.log());
    println!(
        "hostile Retry-After: 3 throttles asking for up to u64::MAX seconds, {EVENTS} events delivered in {took:?}"
    );
}

// ---- secrets in what people read ------------------------------------------------

/// The proxy password the tests below must never find.
const PROXY_PASSWORD: &str = "s3cretpass";

/// A GET on the admin port, with the `Host` a browser on the store PC sends.
fn admin_get(port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("admin connect");
    stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\n\r\n"
    )
    .expect("admin request");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// `store-outbox <args>` with the config of `agent` and `env` added.
fn cli_with_env(agent: &Agent, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(binary())
        .arg("--config")
        .arg(&agent.config)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run the cli")
}

fn text_of(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_proxy_password_never_appears_in_logs_errors_status_doctor_the_page_or_metrics() {
    let closed = free_port();
    let subs = subscription(
        "erp",
        &format!("https://127.0.0.1:{}/hooks", free_port()),
        "timeout = \"2s\"\nretry = { initial = \"100ms\", max = \"500ms\" }",
    );
    let mut agent = Agent::new(&subs);

    // A proxy variable that does not parse: the agent refuses to start and
    // says which variable, with the password redacted.
    let malformed = format!("http://user:{PROXY_PASSWORD}@[::1");
    let env = [
        ("HTTPS_PROXY", malformed.as_str()),
        ("NO_PROXY", ""),
        ("STORE_OUTBOX_LOG", "debug"),
    ];
    let mut run = Command::new(binary());
    run.args(["run", "--config"])
        .arg(&agent.config)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = Process(run.spawn().expect("spawn the agent"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while matches!(child.0.try_wait(), Ok(None)) {
        assert!(
            Instant::now() < deadline,
            "the agent started with a malformed HTTPS_PROXY"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut refused = String::new();
    if let Some(mut err) = child.0.stderr.take() {
        let _ = err.read_to_string(&mut refused);
    }
    let status = child.0.try_wait().ok().flatten();
    assert!(status.is_some_and(|s| !s.success()), "refused: {status:?}");
    assert!(
        refused.contains("HTTPS_PROXY") && refused.contains("user:***@"),
        "names the variable, redacted: {refused}"
    );
    assert!(!refused.contains(PROXY_PASSWORD), "start-up error: {refused}");
    let doctor = text_of(&cli_with_env(&agent, &["doctor"], &env));
    assert!(doctor.contains("HTTPS_PROXY"), "{doctor}");
    assert!(!doctor.contains(PROXY_PASSWORD), "doctor: {doctor}");
    let doctor_json = text_of(&cli_with_env(&agent, &["doctor", "--json"], &env));
    assert!(!doctor_json.contains(PROXY_PASSWORD), "doctor --json: {doctor_json}");

    // A good proxy URL on a closed port: the agent runs, every attempt
    // fails naming the proxy, and its password is nowhere.
    let proxy = format!("http://user:{PROXY_PASSWORD}@127.0.0.1:{closed}");
    let env = [
        ("HTTPS_PROXY", proxy.as_str()),
        ("NO_PROXY", ""),
        ("STORE_OUTBOX_LOG", "debug"),
    ];
    agent.start_with_env(&env);
    agent.send_events(&Events::new("px", 0..5, "SaleCreated"));
    wait_until(Duration::from_secs(60), "attempts through the proxy recorded", || {
        let n: i64 = agent
            .open_db()
            .query_row("SELECT COUNT(*) FROM attempts", [], |r| r.get(0))
            .expect("attempts");
        n >= 2
    });
    let status = agent.cli(&["status", "--json"]);
    let status = text_of(&status);
    assert!(status.contains(&format!("proxy 127.0.0.1:{closed}")), "{status}");
    let errors: Vec<String> = agent
        .open_db()
        .prepare("SELECT DISTINCT error FROM attempts")
        .expect("prepare")
        .query_map([], |r| r.get::<_, Option<String>>(0))
        .expect("query")
        .map(|e| e.expect("row").unwrap_or_default())
        .collect();
    let doctor = text_of(&cli_with_env(&agent, &["doctor"], &env));
    let doctor_json = text_of(&cli_with_env(&agent, &["doctor", "--json"], &env));
    assert!(doctor.contains(&format!("127.0.0.1:{closed}")), "{doctor}");
    let port = agent.admin_port.get();
    let page = admin_get(port, "/");
    let metrics = admin_get(port, "/metrics");
    let api = admin_get(port, "/v1/status");
    assert!(!page.is_empty() && !metrics.is_empty() && !api.is_empty());
    agent.stop();
    let log = agent.log();
    for (what, text) in [
        ("status --json", &status),
        ("attempt errors", &errors.join("\n")),
        ("doctor", &doctor),
        ("doctor --json", &doctor_json),
        ("the page", &page),
        ("/metrics", &metrics),
        ("/v1/status", &api),
        ("the log", &log),
    ] {
        assert!(
            !text.contains(PROXY_PASSWORD),
            "{what} shows the proxy password:\n{text}"
        );
    }
    println!(
        "proxy password: not in the start-up error, doctor, status, attempts, page, metrics or log; errors: {errors:?}"
    );
}
