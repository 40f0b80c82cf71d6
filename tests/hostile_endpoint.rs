//! A hostile endpoint generator: a loopback server writing raw HTTP/1.1 by
//! hand, so it can misbehave in every way an endpoint can (every status
//! 100-599, `Retry-After` huge, negative, an HTTP date, garbage, bodies of 0 B
//! to 50 MiB, 5,000 headers, 100 KiB of headers, chunked garbage, an early
//! close or reset, a reply at 1 byte/s), played from a script proptest
//! generates, then "turning good" (200 to everything). Against the real
//! binary, with a one-event and a batch subscription. Invariants:
//!
//! - the agent process lives through it all and stops cleanly after;
//! - its RSS (`/proc/PID/status` VmRSS, sampled all along) stays <= 64 MiB;
//! - once the endpoint turned good, every event is delivered (the agent's
//!   record: its delivery row delivered) within `retry.max` + 5 s, plus the
//!   request timeout as a margin for a request already on the wire at the
//!   turn;
//! - per entity, the requests the server may have answered 2xx come in
//!   `entity_seq` order (recorded on arrival, before answering);
//! - nothing is missing, nothing duplicated beyond retries: each request the
//!   server got is an attempt the agent recorded, and each event has exactly
//!   one successful attempt.
//!
//! `410 Gone` is left out of the mix: it stops a subscription until a person
//! runs `resume` (the contract), so "delivered once the endpoint turns good"
//! does not hold for it by design.
//!
//! `HOSTILE_ENDPOINT_CASES=50` runs more cases; `HOSTILE_ENDPOINT_SEED=<n>`
//! replays a run (every run prints its seed, a failure its script too).

mod common;

use std::collections::{HashMap, VecDeque};
use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

use common::*;

/// The memory bound of the contract's "Delivery promises", checked all along.
const RSS_LIMIT_KIB: u64 = 64 * 1024;
/// The subscriptions' `retry.max` and request `timeout`.
const RETRY_MAX: Duration = Duration::from_secs(2);
const TIMEOUT: Duration = Duration::from_secs(1);
/// What the subscriptions under attack are configured with.
const SUB_KEYS: &str = "timeout = \"1s\"\nmax_in_flight = 4\nretry = { initial = \"100ms\", max = \"2s\" }";
/// Batches small enough that a case sees several.
const BATCH_KEYS: &str = "batch = { max_events = 5, max_bytes = \"64KiB\", linger = \"20ms\" }";
/// The biggest body the server sends.
const HUGE_BODY: usize = 50 * 1024 * 1024;

// ---- what the server does ------------------------------------------------------

/// A `Retry-After` value, as hostile as it gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RetryAfter {
    /// `u64::MAX` seconds: past any `Instant`.
    Huge,
    /// More digits than a u64 holds.
    Overflow,
    /// 317 years.
    Centuries,
    /// `-30`.
    Negative,
    /// An HTTP date in 2015.
    Past,
    /// An HTTP date in the year 9999.
    Future,
    /// Not a number, not a date, with bytes beyond ASCII.
    Garbage,
    /// A sane value, `1`.
    One,
}

impl RetryAfter {
    fn bytes(self) -> &'static [u8] {
        match self {
            RetryAfter::Huge => b"18446744073709551615",
            RetryAfter::Overflow => b"99999999999999999999999999999",
            RetryAfter::Centuries => b"10000000000",
            RetryAfter::Negative => b"-30",
            RetryAfter::Past => b"Wed, 21 Oct 2015 07:28:00 GMT",
            RetryAfter::Future => b"Fri, 31 Dec 9999 23:59:59 GMT",
            RetryAfter::Garbage => b"soon \xff\xfe maybe",
            RetryAfter::One => b"1",
        }
    }
}

/// One answer the script plays.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Move {
    /// A status line, maybe a `Retry-After`, and a body of `body` bytes
    /// (`content-length`; none for 1xx, 204 and 304). After a 1xx the server
    /// hangs up.
    Status {
        code: u16,
        retry_after: Option<RetryAfter>,
        body: usize,
    },
    /// A 200 with 5,000 small headers.
    ManyHeaders,
    /// A 200 with 100 KiB of headers in 50.
    BigHead,
    /// A 200, chunked, whose chunks are garbage; then a hang-up.
    ChunkedGarbage,
    /// A hang-up once the request is read, no answer.
    EarlyClose,
    /// A reset (RST) once the request is read.
    Reset,
    /// Half a head, then a hang-up.
    CutHead,
    /// A 200 at one byte a second (far past the timeout).
    Trickle,
}

impl Move {
    /// Whether the agent may take what this writes as a 2xx (the server
    /// then counts the request as maybe delivered, so the checks never miss
    /// a delivery the agent saw).
    fn may_look_delivered(&self) -> bool {
        match self {
            Move::Status { code, .. } => (200..300).contains(code),
            Move::ManyHeaders | Move::BigHead | Move::ChunkedGarbage | Move::Trickle | Move::CutHead => true,
            Move::EarlyClose | Move::Reset => false,
        }
    }
}

fn move_strategy() -> impl Strategy<Value = Move> {
    let retry_after = prop_oneof![
        Just(RetryAfter::Huge),
        Just(RetryAfter::Overflow),
        Just(RetryAfter::Centuries),
        Just(RetryAfter::Negative),
        Just(RetryAfter::Past),
        Just(RetryAfter::Future),
        Just(RetryAfter::Garbage),
        Just(RetryAfter::One),
    ];
    let body = prop_oneof![
        3 => Just(0usize),
        3 => 1..2048usize,
        1 => Just(64 * 1024 - 1),
        1 => Just(64 * 1024 + 1),
        2 => Just(HUGE_BODY),
    ];
    // 429 and 503 are where `Retry-After` counts: drawn more often.
    let code = prop_oneof![
        4 => (100u16..600).prop_map(|c| if c == 410 { 411 } else { c }),
        2 => Just(429u16),
        2 => Just(503u16),
    ];
    prop_oneof![
        8 => (code, proptest::option::weighted(0.7, retry_after), body)
            .prop_map(|(code, retry_after, body)| Move::Status { code, retry_after, body }),
        1 => Just(Move::ManyHeaders),
        1 => Just(Move::BigHead),
        1 => Just(Move::ChunkedGarbage),
        1 => Just(Move::EarlyClose),
        1 => Just(Move::Reset),
        1 => Just(Move::CutHead),
        1 => Just(Move::Trickle),
    ]
}

/// One request the server read, recorded on arrival (before any answer).
#[derive(Clone, Debug)]
struct Got {
    /// The events it carried (one, or a batch's), in body order:
    /// (event id, entity, entity_seq).
    events: Vec<(String, String, i64)>,
    /// What the server did with it ("good" once it turned good).
    played: String,
    /// Whether the server wrote something the agent may take as a 2xx.
    maybe_delivered: bool,
}

/// What the server and its connection threads share.
#[derive(Default)]
struct Shared {
    /// Moves still to play, in order; once empty the server is good.
    script: Mutex<VecDeque<Move>>,
    /// When it turned good.
    good_since: Mutex<Option<Instant>>,
    /// Every request, in the order they arrived.
    got: Mutex<Vec<Got>>,
    /// Set on drop: threads end.
    stop: AtomicBool,
}

impl Shared {
    fn is_good(&self) -> bool {
        self.good_since.lock().unwrap().is_some()
    }

    fn turn_good(&self) {
        self.script.lock().unwrap().clear();
        let mut since = self.good_since.lock().unwrap();
        if since.is_none() {
            *since = Some(Instant::now());
        }
    }

    /// The next move: the script's, or none (answer 200) once it is played.
    fn next_move(&self) -> Option<Move> {
        let next = self.script.lock().unwrap().pop_front();
        if next.is_none() {
            self.turn_good();
        }
        next
    }
}

/// The hostile endpoint: a raw HTTP/1.1 server on loopback.
struct Hostile {
    port: u16,
    shared: Arc<Shared>,
}

impl Hostile {
    fn start(script: &[Move]) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let shared = Arc::new(Shared::default());
        *shared.script.lock().unwrap() = script.iter().cloned().collect();
        let server = Hostile {
            port: listener.local_addr().expect("addr").port(),
            shared: shared.clone(),
        };
        std::thread::spawn(move || {
            while !shared.stop.load(Ordering::Relaxed) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let shared = shared.clone();
                std::thread::spawn(move || {
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                    let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
                    serve(stream, &shared);
                });
            }
        });
        server
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks", self.port)
    }

    fn got(&self) -> Vec<Got> {
        self.shared.got.lock().unwrap().clone()
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

/// The events of a webhook body: one object, or a batch's array.
fn events_of(body: &[u8]) -> Vec<(String, String, i64)> {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
    let one = |e: &serde_json::Value| {
        (
            e["id"].as_str().unwrap_or_default().to_string(),
            e["entity"].as_str().unwrap_or_default().to_string(),
            e["entity_seq"].as_i64().unwrap_or(-1),
        )
    };
    match &json {
        serde_json::Value::Array(all) => all.iter().map(one).collect(),
        other => vec![one(other)],
    }
}

/// One connection: requests in turn, each answered as the script says.
fn serve(stream: TcpStream, shared: &Shared) {
    let Ok(mut writer) = stream.try_clone() else { return };
    let mut reader = BufReader::new(stream);
    while let Some((_, body)) = read_request(&mut reader) {
        let next = shared.next_move();
        let maybe_delivered = next.as_ref().is_none_or(Move::may_look_delivered);
        // Recorded on arrival, with whether the answer may count as 2xx,
        // before a byte of the answer goes out: the agent cannot have acted
        // on the answer yet, so arrival order is the order it sent in.
        shared.got.lock().unwrap().push(Got {
            events: events_of(&body),
            played: next.as_ref().map_or_else(|| "good".to_string(), |m| format!("{m:?}")),
            maybe_delivered,
        });
        let keep_alive = match next {
            None => writer
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .is_ok(),
            Some(m) => play(&m, &mut writer, shared),
        };
        if !keep_alive {
            return;
        }
    }
}

/// Writes `m`'s answer; whether the connection may take another request.
fn play(m: &Move, w: &mut TcpStream, shared: &Shared) -> bool {
    match m {
        Move::Status {
            code,
            retry_after,
            body,
        } => {
            let mut head = format!("HTTP/1.1 {code} Whatever\r\n").into_bytes();
            if let Some(value) = retry_after {
                head.extend_from_slice(b"retry-after: ");
                head.extend_from_slice(value.bytes());
                head.extend_from_slice(b"\r\n");
            }
            let informational = *code < 200;
            let bodiless = informational || *code == 204 || *code == 304;
            if !bodiless {
                head.extend_from_slice(format!("content-length: {body}\r\n").as_bytes());
            }
            head.extend_from_slice(b"\r\n");
            if w.write_all(&head).is_err() || informational {
                return false;
            }
            if bodiless {
                return true;
            }
            // In 64 KiB writes: the server never holds 50 MiB either.
            let chunk = [b'x'; 64 * 1024];
            let mut left = *body;
            while left > 0 {
                let n = left.min(chunk.len());
                if w.write_all(&chunk[..n]).is_err() {
                    return false;
                }
                left -= n;
            }
            true
        }
        Move::ManyHeaders => {
            let mut head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n".to_vec();
            for i in 0..5_000 {
                head.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
            }
            head.extend_from_slice(b"\r\nok");
            w.write_all(&head).is_ok()
        }
        Move::BigHead => {
            let mut head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n".to_vec();
            let value = "v".repeat(2048);
            for i in 0..50 {
                head.extend_from_slice(format!("x-big{i}: {value}\r\n").as_bytes());
            }
            head.extend_from_slice(b"\r\nok");
            w.write_all(&head).is_ok()
        }
        Move::ChunkedGarbage => {
            let _ = w.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nZZZZ\r\nnot a chunk\r\n-1\r\n");
            false
        }
        Move::EarlyClose => false,
        Move::Reset => {
            reset_on_drop(w);
            false
        }
        Move::CutHead => {
            let _ = w.write_all(b"HTTP/1.1 200 OK\r\ncontent-le");
            false
        }
        Move::Trickle => {
            for b in b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok" {
                // Stops once the endpoint turned good: a trickle is chaos.
                if shared.stop.load(Ordering::Relaxed) || shared.is_good() || w.write_all(&[*b]).is_err() {
                    return false;
                }
                for _ in 0..20 {
                    if shared.is_good() {
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            true
        }
    }
}

// ---- watching the agent --------------------------------------------------------

/// The agent's resident memory, sampled every 20 ms until dropped.
struct RssWatch {
    max_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl RssWatch {
    fn start(pid: u32) -> RssWatch {
        let watch = RssWatch {
            max_kib: Arc::default(),
            stop: Arc::default(),
        };
        let (max_kib, stop) = (watch.max_kib.clone(), watch.stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    max_kib.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        watch
    }

    fn max_kib(&self) -> u64 {
        self.max_kib.load(Ordering::Relaxed)
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Whether the agent process still runs.
fn alive(agent: &mut Agent) -> bool {
    agent.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
}

/// Per event id of `prefix`: (attempts, successful attempts, delivered) of
/// subscription `sub`, from the agent's database.
fn attempts_of(agent: &Agent, sub: &str, prefix: &str) -> HashMap<String, (i64, i64, bool)> {
    let db = agent.open_db();
    let mut statement = db
        .prepare(
            "SELECT e.event_id,
                    (SELECT COUNT(*) FROM attempts a WHERE a.event_seq = e.seq AND a.sub_id = s.id),
                    (SELECT COUNT(*) FROM attempts a WHERE a.event_seq = e.seq AND a.sub_id = s.id AND a.error IS NULL),
                    d.state = 1
             FROM events e JOIN deliveries d ON d.event_seq = e.seq JOIN subscriptions s ON s.id = d.sub_id
             WHERE s.name = ?1 AND e.event_id LIKE ?2 || '%'",
        )
        .expect("prepare");
    statement
        .query_map(rusqlite::params![sub, prefix], |r| {
            Ok((r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?)))
        })
        .expect("query")
        .map(|row| row.expect("row"))
        .collect()
}

/// Events of `prefix` delivered to `sub`, by the agent's record.
fn delivered_count(agent: &Agent, sub: &str, prefix: &str) -> i64 {
    agent
        .open_db()
        .query_row(
            "SELECT COUNT(*) FROM deliveries d JOIN subscriptions s ON s.id = d.sub_id
             JOIN events e ON e.seq = d.event_seq
             WHERE s.name = ?1 AND d.state = 1 AND e.event_id LIKE ?2 || '%'",
            rusqlite::params![sub, prefix],
            |r| r.get(0),
        )
        .unwrap_or(0)
}

/// Checks what `server` got for subscription `sub` against the invariants;
/// `events` ids of `prefix` over `entities` entities were produced.
fn check_requests(
    agent: &Agent,
    sub: &str,
    server: &Hostile,
    prefix: &str,
    events: usize,
    entities: usize,
) -> Result<usize, String> {
    let got = server.got();
    // Order, per entity, over the requests that may have been answered 2xx,
    // in arrival order. A request carries a run of the entity's events (one,
    // or a batch's share: consecutive, ascending). A run never starts before
    // the previous one (a failed one goes again whole, from the same event),
    // and never past the highest event sent so far + 1 (nothing is skipped:
    // a request that cannot have been answered 2xx advances nothing).
    let mut last: HashMap<&str, (i64, i64)> = HashMap::new();
    let mut arrivals: HashMap<&str, i64> = HashMap::new();
    let mut maybe_delivered: HashMap<&str, usize> = HashMap::new();
    for (i, g) in got.iter().enumerate() {
        let mut runs: Vec<(&str, Vec<i64>)> = Vec::new();
        for (id, entity, seq) in g.events.iter().filter(|(id, _, _)| id.starts_with(prefix)) {
            *arrivals.entry(id).or_default() += 1;
            if g.maybe_delivered {
                *maybe_delivered.entry(id).or_default() += 1;
            }
            match runs.iter_mut().find(|(e, _)| *e == entity.as_str()) {
                Some((_, seqs)) => seqs.push(*seq),
                None => runs.push((entity, vec![*seq])),
            }
        }
        let violation = |entity: &str, what: String| {
            Err(format!(
                "{sub}: order violated for {entity}: {what}, request {i} ({})",
                g.played
            ))
        };
        for (entity, seqs) in runs {
            if seqs.windows(2).any(|w| w[1] != w[0] + 1) {
                return violation(entity, format!("one request carries {seqs:?}"));
            }
            if !g.maybe_delivered {
                continue;
            }
            let (start, end) = (seqs[0], seqs[seqs.len() - 1]);
            let (prev_start, top) = last.get(entity).copied().unwrap_or((1, 0));
            if start < prev_start {
                return violation(entity, format!("#{start} sent after #{prev_start}"));
            }
            if start > top + 1 {
                return violation(
                    entity,
                    format!("#{start} sent while #{} was never answered 2xx", top + 1),
                );
            }
            last.insert(entity, (start, top.max(end)));
        }
    }
    if last.len() != entities {
        return Err(format!(
            "{sub}: {} of {entities} entities reached the endpoint",
            last.len()
        ));
    }
    // Complete, no duplicate beyond retries: every request the endpoint got
    // is an attempt the agent recorded; each event succeeded exactly once.
    let record = attempts_of(agent, sub, prefix);
    if record.len() != events {
        return Err(format!("{sub}: {} of {events} events stored", record.len()));
    }
    let mut duplicates = 0;
    for (id, (attempts, successes, delivered)) in &record {
        let reached = arrivals.get(id.as_str()).copied().unwrap_or(0);
        if !delivered || *successes != 1 {
            return Err(format!(
                "{sub}: {id}: delivered {delivered}, {successes} successful attempts"
            ));
        }
        if maybe_delivered.get(id.as_str()).copied().unwrap_or(0) == 0 {
            return Err(format!("{sub}: {id} recorded delivered but never answered 2xx"));
        }
        if reached > *attempts {
            return Err(format!(
                "{sub}: {id} reached the endpoint {reached} times for {attempts} recorded attempts"
            ));
        }
        duplicates += maybe_delivered.get(id.as_str()).copied().unwrap_or(0) - 1;
    }
    Ok(duplicates)
}

/// What a case saw, for the summary line.
#[derive(Default)]
struct Stats {
    requests: usize,
    duplicates: usize,
    max_rss_kib: u64,
    slowest_after_good: Duration,
}

/// Runs one scripted attack on a one-event and a batch subscription.
fn run_case(case: u64, script: &[Move], chaos: Duration) -> Result<Stats, String> {
    const ENTITIES: usize = 3;
    const ROUND: usize = 15;
    let one = Hostile::start(script);
    let batch = Hostile::start(script);
    let subs = [
        subscription("one", &one.url(), SUB_KEYS),
        subscription("batch", &batch.url(), &format!("{SUB_KEYS}\n{BATCH_KEYS}")),
    ]
    .concat();
    let mut agent = Agent::new(&subs);
    agent.start();
    let pid = agent.child.as_ref().map(|c| c.id()).ok_or("no agent process")?;
    let rss = RssWatch::start(pid);
    let prefix = format!("h{case}-");
    let events = |from: usize| {
        Events::new(&format!("h{case}"), from..from + ROUND, "SaleCreated").spread_over(&format!("c{case}e"), ENTITIES)
    };
    agent.send_events(&events(0));
    // Chaos, with a second round of events in the middle of it.
    std::thread::sleep(chaos / 2);
    if !alive(&mut agent) {
        return Err(format!("the agent died during the attack:\n{}", agent.log()));
    }
    agent.send_events(&events(ROUND));
    std::thread::sleep(chaos / 2);
    one.shared.turn_good();
    batch.shared.turn_good();
    // Every event delivered, by the agent's record, within retry.max + 5 s
    // of the turn (+ the timeout: a request on the wire at the turn may run
    // to it before it fails).
    let bound = RETRY_MAX + Duration::from_secs(5) + TIMEOUT;
    let mut slowest = Duration::ZERO;
    for (name, server) in [("one", &one), ("batch", &batch)] {
        let good_since = server.shared.good_since.lock().unwrap().ok_or("not good")?;
        let deadline = good_since + bound;
        loop {
            if delivered_count(&agent, name, &prefix) == (2 * ROUND) as i64 {
                break;
            }
            if !alive(&mut agent) {
                return Err(format!("the agent died:\n{}", agent.log()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{name}: {} of {} delivered {bound:?} after the endpoint turned good; status: {}",
                    delivered_count(&agent, name, &prefix),
                    2 * ROUND,
                    agent.sub_status(name)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        slowest = slowest.max(good_since.elapsed());
    }
    let max_rss_kib = rss.max_kib();
    if max_rss_kib > RSS_LIMIT_KIB {
        return Err(format!("RSS reached {max_rss_kib} KiB (limit {RSS_LIMIT_KIB})"));
    }
    let mut duplicates = 0;
    for (name, server) in [("one", &one), ("batch", &batch)] {
        duplicates += check_requests(&agent, name, server, &prefix, 2 * ROUND, ENTITIES)?;
    }
    drop(rss);
    if !agent.stop().success() {
        return Err(format!("the agent did not stop cleanly:\n{}", agent.log()));
    }
    Ok(Stats {
        requests: one.got().len() + batch.got().len(),
        duplicates,
        max_rss_kib,
        slowest_after_good: slowest,
    })
}

#[test]
fn a_hostile_endpoint_never_kills_stalls_or_bloats_the_agent_and_loses_nothing() {
    let started = Instant::now();
    let cases = env_number("HOSTILE_ENDPOINT_CASES").unwrap_or(6) as u32;
    let seed = env_number("HOSTILE_ENDPOINT_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    println!("hostile endpoint: seed {seed} (HOSTILE_ENDPOINT_SEED={seed} replays it), {cases} cases");
    let config = Config {
        cases,
        // A case is a real agent for seconds: no shrinking, and no
        // regressions file beside the sources; the failure prints its script.
        failure_persistence: None,
        max_shrink_iters: 0,
        ..Config::default()
    };
    let mut seed_bytes = [0u8; 32];
    for chunk in seed_bytes.chunks_mut(8) {
        chunk.copy_from_slice(&seed.to_le_bytes());
    }
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes));
    let case = AtomicU64::new(0);
    let totals = Mutex::new(Stats::default());
    let strategy = (proptest::collection::vec(move_strategy(), 1..24), 2_000u64..4_000);
    let result = runner.run(&strategy, |(script, chaos_ms)| {
        let n = case.fetch_add(1, Ordering::SeqCst);
        let stats = run_case(n, &script, Duration::from_millis(chaos_ms))
            .map_err(|e| TestCaseError::fail(format!("case {n} (seed {seed}): {e}")))?;
        let mut t = totals.lock().unwrap();
        t.requests += stats.requests;
        t.duplicates += stats.duplicates;
        t.max_rss_kib = t.max_rss_kib.max(stats.max_rss_kib);
        t.slowest_after_good = t.slowest_after_good.max(stats.slowest_after_good);
        Ok(())
    });
    let t = totals.lock().unwrap();
    println!(
        "hostile endpoint: {} cases (seed {seed}), {} requests, {} duplicates after ambiguous answers, \
         max RSS {} KiB, slowest drain after turning good {:?}, {:.1}s",
        case.load(Ordering::SeqCst),
        t.requests,
        t.duplicates,
        t.max_rss_kib,
        t.slowest_after_good,
        started.elapsed().as_secs_f64()
    );
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, (script, chaos_ms))) => {
            panic!("failing case (seed {seed}), chaos {chaos_ms} ms, script {script:#?}\n{why}")
        }
        Err(TestError::Abort(why)) => panic!("aborted (seed {seed}): {why}"),
    }
}

// ---- the bounds one at a time ------------------------------------------------

#[test]
fn a_50_mib_body_and_oversized_heads_are_failed_attempts_with_bounded_memory_then_delivery_goes_on() {
    const EVENTS: usize = 5;
    let script = [
        Move::Status {
            code: 500,
            retry_after: None,
            body: HUGE_BODY,
        },
        Move::ManyHeaders,
        Move::BigHead,
        // A 2xx whose body is 50 MiB: delivered, the rest discarded.
        Move::Status {
            code: 200,
            retry_after: None,
            body: HUGE_BODY,
        },
    ];
    let server = Hostile::start(&script);
    let mut agent = Agent::new(&subscription("erp", &server.url(), SUB_KEYS));
    agent.start();
    let rss = RssWatch::start(agent.child.as_ref().expect("running").id());
    agent.send_events(&Events::new("big", 0..EVENTS, "SaleCreated"));
    wait_until(
        Duration::from_secs(60),
        "all delivered after the oversized answers",
        || delivered_count(&agent, "erp", "big-") == EVENTS as i64 || !alive(&mut agent),
    );
    assert!(alive(&mut agent), "the agent died:\n{}", agent.log());
    let max_rss = rss.max_kib();
    assert!(max_rss <= RSS_LIMIT_KIB, "RSS {max_rss} KiB");
    // The first event's attempts: three failures saying what was wrong, then
    // the 200 with its 50 MiB body.
    let errors: Vec<(Option<i64>, Option<String>)> = agent
        .open_db()
        .prepare(
            "SELECT a.status, a.error FROM attempts a JOIN events e ON e.seq = a.event_seq
             WHERE e.event_id = 'big-0' ORDER BY a.id",
        )
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect();
    assert_eq!(errors.len(), 4, "{errors:?}");
    assert_eq!(errors[0].0, Some(500));
    let first = errors[0].1.as_deref().unwrap_or_default();
    assert!(first.starts_with("HTTP 500: xxxx") && first.len() < 300, "{first}");
    for (status, error) in &errors[1..3] {
        let error = error.as_deref().unwrap_or_default();
        assert_eq!(*status, None);
        assert!(error.contains("head is over 64 KiB or 100 headers"), "{error}");
    }
    assert_eq!(errors[3], (Some(200), None), "delivered");
    if let Err(e) = check_requests(&agent, "erp", &server, "big-", EVENTS, 1) {
        panic!("{e}");
    }
    println!("response bounds: attempts {errors:?}, max RSS {max_rss} KiB");
}
