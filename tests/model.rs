//! Model-based test of the outbox and the delivery scheduler: proptest
//! generates sequences of operations (ingest, receivers answering 2xx or
//! 500, parking, resend, crash), runs them against the real parts, and checks
//! every webhook a receiver sees against a small in-memory model.
//!
//! This file owns that test and nothing else. The parts are real: the SQLite
//! file in a temporary directory, the single writer thread
//! ([`Writer`]), one real [`Scheduler`] per subscription running in its own
//! tokio runtime and sending over loopback HTTP to two real receivers
//! (`tests/common` [`Receiver`]). The scheduler is public and self-contained
//! enough (writer handle, read connection, endpoint, shutdown signal) to be
//! driven as the agent drives it, so nothing is re-implemented here.
//!
//! # The set-up
//!
//! Two subscriptions receive every event:
//! - `retry` never gives up: a 500 leaves the delivery pending, retried at a
//!   fast backoff (10-40 ms), with offline probing after 5 failures.
//! - `park` gives up at once (`give_up_after = 0`): a 500 parks the delivery,
//!   which blocks its entity until resent.
//!
//! # Operations
//!
//! `Ingest` (1-3 events on one of 3 entities), `IngestAgain` (a duplicate
//! `event_id`), `Answer` (one receiver answers 2xx or 500 from now on),
//! `Resend` (one event, for one or both subscriptions, through
//! `outbox::resend` while the agent runs, as `store-outbox resend` does),
//! `ResendParked`, and `Crash` (optionally after the next 1-2 requests
//! arrive): the scheduler runtime is dropped mid-flight, the writer thread is
//! joined, every in-memory object is gone, and a new agent opens the same
//! file. A crash here always falls between two commits (torn writes are
//! `tests/crash.rs`'s business): whatever the writer had queued is either
//! committed before the join or was never sent to it.
//!
//! After `Answer` and the resends the test settles: it waits until every
//! entity that can move has moved (2xx mode: drained up to its first parked
//! event; `park` in 500 mode: its head parked; `retry` in 500 mode: one more
//! retry came) and the outcomes are committed. So a parked event must block
//! only its own entity, or the wait runs out. `Ingest` and `Crash` do not
//! settle, so crashes also land with requests on the wire.
//!
//! A resend runs at a quiet point: the receivers hold new requests (a gate in
//! their answer rule), every answer already given has its outcome committed,
//! then `resend` commits. A request held at the gate may have left before the
//! resend (its outcome then does not count: a resend always leads to a new
//! attempt, see `tests/resend_race.rs`) or after it; the model allows both.
//!
//! # The model and its rules
//!
//! Per subscription and entity, the acknowledged events in `entity_seq` order,
//! each pending, delivered (a 2xx was seen) or parked (a 500 was seen on
//! `park`). A request the receiver sees is allowed only if
//! 1. it is the entity's first not-delivered event and that one is pending
//!    (never an event before an earlier undelivered one: a parked event
//!    blocks its entity; a resent event takes its old place again, even
//!    before later events that were already delivered), or
//! 2. it is the head the entity had just before a resend (that request may
//!    already have been on the wire when the resend committed); one such
//!    request is allowed, and then one more of the same event (if the first
//!    left before the resend, its outcome does not count and the event goes
//!    again), or
//! 3. it comes from an agent that has since crashed (checked against the
//!    database only: it can have no effect any more).
//!
//! After a crash the model reads the database once: every acknowledged event
//! must still be there in the state the model expects, except
//! - the last request of each entity: its outcome may be lost (the 2xx came,
//!   the commit did not; the delivery is pending again and one duplicate of
//!   it is then allowed, by rule 1), or recorded as a failure;
//! - the entity's head may carry a failure from a request the receiver never
//!   logged.
//!
//! Those failures are an artefact of this in-process crash: dropping the
//! runtime lets a task see its connection die ("channel closed") and record
//! that before it is dropped itself. A SIGKILL leaves no such trace, but a
//! network failure just before a real crash does the same, so the agent must
//! (and does) cope. Nothing else may differ.
//!
//! Independently of the model, the receivers check every request against the
//! database as it arrives: every earlier event of its entity has a committed
//! 2xx (`delivered_at`) for that subscription ("n+1 only after n's 2xx is
//! committed"), the event itself is pending, and `webhook-id` is the event's id.
//!
//! After the operations, a final drain: both receivers answer 2xx and an
//! operator resends the parked deliveries, either after a crash while the
//! agent is down or (a quarter of the cases) while it runs; then every
//! acknowledged event must reach both receivers and be delivered in the file.
//!
//! Waits are for conditions, with generous limits; nothing asserts on time.
//! A live resend of a parked (or fully delivered) entity is noticed by the
//! scheduler on its 2-second resync tick; settling does not wait for those
//! (the entity is "sluggish" until it moves or the next crash), only the live
//! final drain does, so the test stays fast without depending on that period.
//!
//! The schedulers hold a window of 2 entities (of 3), so the backlog scan
//! that finds entities outside the window is exercised by every case.
//!
//! `STORE_OUTBOX_MODEL_CASES=500 cargo test --test model -- --nocapture` for a
//! longer run (default 32 cases); `STORE_OUTBOX_MODEL_SEED=N` for another
//! fixed sequence of cases (default seed below, so a run is repeatable up to
//! thread timing).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use rusqlite::Connection;

use store_outbox::config::{PayloadMode, RetryConfig, SubscriptionConfig};
use store_outbox::deliver::destinations::webhook::Webhook;
use store_outbox::deliver::envelope::Source;
use store_outbox::deliver::scheduler::Scheduler;
use store_outbox::event::{now_rfc3339, NewEvent, Reply};
use store_outbox::metrics::Metrics;
use store_outbox::outbox::read::{list_deliveries, DeliveryFilter};
use store_outbox::outbox::report::DeliveryRow;
use store_outbox::outbox::resend::{resend, ResendOutcome, ResendRequest};
use store_outbox::outbox::writer::Writer;
use store_outbox::outbox::{open_reader, open_writer, register_subscriptions};
use store_outbox::shutdown;

use common::{Answer, Receiver, Request};

/// The subscriptions, by index: `RETRY` never gives up, `PARK` parks on the first failure.
const SUBS: [&str; 2] = ["retry", "park"];
const RETRY: usize = 0;
const PARK: usize = 1;
/// Entities `model:0` .. `model:2`.
const ENTITIES: usize = 3;
/// Header carrying the agent incarnation that sent a request, so requests of
/// a crashed agent that reach the receiver late are told apart.
const EPOCH_HEADER: &str = "x-model-epoch";
/// Limit for every wait on the system; only reached when something is stuck.
const WAIT: Duration = Duration::from_secs(60);
/// Default seed of the case generator (any fixed value: runs are repeatable).
const DEFAULT_SEED: u64 = 0x5709_e0b0_c0de_2026;

// ---- operations ----------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    /// `count` new events on `entity`, acknowledged before the next operation.
    Ingest { entity: usize, count: usize },
    /// An already acknowledged event again: a duplicate, same `entity_seq`.
    IngestAgain { pick: usize },
    /// Receiver `sub` answers 2xx (`ok`) or 500 from now on; then settle.
    Answer { sub: usize, ok: bool },
    /// `resend EVENT_ID [--subscription S]` while the agent runs; then settle.
    Resend { pick: usize, sub: Option<usize> },
    /// `resend --parked` while the agent runs; then settle.
    ResendParked,
    /// Kill the agent once `after_requests` more requests arrived (or nothing
    /// is left to send), then start a new one on the same file.
    Crash { after_requests: usize },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..ENTITIES, 1..=3usize).prop_map(|(entity, count)| Op::Ingest { entity, count }),
        1 => (0..64usize).prop_map(|pick| Op::IngestAgain { pick }),
        4 => (0..SUBS.len(), any::<bool>()).prop_map(|(sub, ok)| Op::Answer { sub, ok }),
        2 => (0..64usize, proptest::option::of(0..SUBS.len())).prop_map(|(pick, sub)| Op::Resend { pick, sub }),
        1 => Just(Op::ResendParked),
        2 => (0..3usize).prop_map(|after_requests| Op::Crash { after_requests }),
    ]
}

// ---- figures over the whole run ------------------------------------------------

/// Totals over every case, printed at the end.
struct Totals {
    cases: AtomicU64,
    operations: AtomicU64,
    events: AtomicU64,
    requests: AtomicU64,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    parks: AtomicU64,
    resends: AtomicU64,
    crashes: AtomicU64,
    lost_outcomes: AtomicU64,
    late_requests: AtomicU64,
}

static TOTALS: Totals = Totals {
    cases: AtomicU64::new(0),
    operations: AtomicU64::new(0),
    events: AtomicU64::new(0),
    requests: AtomicU64::new(0),
    delivered: AtomicU64::new(0),
    duplicates: AtomicU64::new(0),
    parks: AtomicU64::new(0),
    resends: AtomicU64::new(0),
    crashes: AtomicU64::new(0),
    lost_outcomes: AtomicU64::new(0),
    late_requests: AtomicU64::new(0),
};

/// Errors of the failures recorded at a crash for requests the receivers
/// answered 2xx or never logged (see `reconcile`), with how often.
static CRASH_ERRORS: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

fn count(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, SeqCst);
}

// ---- what the receivers and the test share --------------------------------------

/// State shared by the test thread and the receivers' answer rules.
struct Shared {
    db: PathBuf,
    /// Whether receiver `i` answers 2xx (else 500).
    ok: [AtomicBool; 2],
    /// Held by the test while it resends: requests arriving meanwhile wait,
    /// so every answer is clearly before or after the resend's commit.
    gate: Mutex<()>,
    /// Requests whose answer was decided (they reach the log right after).
    decided: AtomicUsize,
    /// The running agent's incarnation.
    epoch: AtomicU64,
    /// The receivers' own read connection, for the commit-order check.
    reader: Mutex<Option<Connection>>,
    /// Everything that broke a rule; the case fails when this is not empty.
    violations: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn entity_name(entity: usize) -> String {
    format!("model:{entity}")
}

impl Shared {
    fn violation(&self, text: String) {
        lock(&self.violations).push(text);
    }

    /// The answer rule of receiver `sub`: checks the request against the
    /// database as it arrives, then answers as the test last said.
    fn answer(&self, sub: usize, req: &Request) -> Answer {
        let _gate = lock(&self.gate);
        self.check_arrival(sub, req);
        // Counted while the gate is held: once the test holds it, every
        // decided request is (about to be) in the receiver's log.
        self.decided.fetch_add(1, SeqCst);
        if self.ok[sub].load(SeqCst) {
            Answer::ok()
        } else {
            Answer::status(500)
        }
    }

    /// "n+1 is sent only after n's 2xx is committed", straight from the file.
    fn check_arrival(&self, sub: usize, req: &Request) {
        let name = SUBS[sub];
        if req.headers.get("webhook-id") != Some(&req.id) {
            self.violation(format!(
                "{name}: webhook-id {:?} is not the body's id {:?}",
                req.headers.get("webhook-id"),
                req.id
            ));
        }
        let epoch = req.headers.get(EPOCH_HEADER).and_then(|v| v.parse::<u64>().ok());
        let current = epoch == Some(self.epoch.load(SeqCst));
        let mut reader = lock(&self.reader);
        if reader.is_none() {
            match open_reader(&self.db) {
                Ok(conn) => *reader = Some(conn),
                Err(e) => return self.violation(format!("receiver cannot read the outbox: {e}")),
            }
        }
        let Some(conn) = reader.as_ref() else { return };
        let filter = DeliveryFilter {
            subscription: Some(name.to_string()),
            entity: Some(req.entity.clone()),
            limit: i64::MAX,
            ..DeliveryFilter::default()
        };
        let rows = match list_deliveries(conn, &filter) {
            Ok(rows) => rows,
            Err(e) => return self.violation(format!("receiver cannot list deliveries: {e}")),
        };
        // `delivered_at` stays set when a delivered event is resent, so a
        // resent earlier event does not count here: its 2xx was committed.
        let mut found = false;
        for row in &rows {
            if row.entity_seq < req.entity_seq && row.delivered_at.is_none() {
                self.violation(format!(
                    "{name}: {} #{} ({}) was sent while #{} ({}) has no committed 2xx (state {})",
                    req.entity, req.entity_seq, req.id, row.entity_seq, row.event_id, row.state
                ));
            }
            if row.entity_seq == req.entity_seq {
                found = true;
                if row.event_id != req.id {
                    self.violation(format!(
                        "{name}: {} #{} arrived with id {} but is {} in the outbox",
                        req.entity, req.entity_seq, req.id, row.event_id
                    ));
                }
                // Only this request's own outcome can change the row while it
                // is on the wire (a resend leaves it pending). A late request
                // of a crashed agent is exempt: the new one may have moved on.
                if current && row.state.as_str() != "pending" {
                    self.violation(format!(
                        "{name}: {} #{} ({}) was sent while {} in the outbox",
                        req.entity, req.entity_seq, req.id, row.state
                    ));
                }
            }
        }
        if !found {
            self.violation(format!(
                "{name}: {} #{} ({}) arrived but has no delivery row",
                req.entity, req.entity_seq, req.id
            ));
        }
    }
}

// ---- the agent -------------------------------------------------------------------

/// One incarnation of the agent: the writer thread and a runtime running one
/// scheduler per subscription, wired as `agent.rs` wires them.
struct Agent {
    runtime: Option<tokio::runtime::Runtime>,
    writer: Option<Writer>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
    /// Kept alive: a dropped trigger reads as "shut down" to the schedulers.
    trigger: Option<shutdown::Trigger>,
}

/// The schedulers' window of entities in memory: smaller than the 3
/// entities, so that entities leave it and are found again by the backlog
/// scan all the time (`STORE_OUTBOX_MODEL_WINDOW`, default 2).
fn window() -> usize {
    common::env_number("STORE_OUTBOX_MODEL_WINDOW").unwrap_or(2) as usize
}

impl Agent {
    fn start(db: &Path, configs: &[SubscriptionConfig]) -> Agent {
        let mut conn = open_writer(db).expect("open the outbox for writing");
        let subs = register_subscriptions(&mut conn, configs).expect("record the subscriptions");
        let (writer, writer_thread) = Writer::start(conn, &subs, u64::MAX, Arc::new(tokio::sync::Notify::new()));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("model-agent")
            .enable_all()
            .build()
            .expect("build the agent's runtime");
        let (trigger, shutdown) = shutdown::channel();
        let source = Source {
            store_id: "0042".into(),
            agent_id: "model".into(),
        };
        {
            let _in_runtime = runtime.enter();
            for sub in subs {
                let endpoint = Webhook::new(sub.config.clone(), source.clone()).expect("build the HTTP client");
                let reader = open_reader(db).expect("open the scheduler's read connection");
                let scheduler = Scheduler::new(
                    sub,
                    Arc::new(endpoint),
                    writer.clone(),
                    reader,
                    shutdown.clone(),
                    Duration::from_millis(50),
                    Metrics::default(),
                )
                .with_window(window());
                runtime.spawn(scheduler.run());
            }
        }
        Agent {
            runtime: Some(runtime),
            writer: Some(writer),
            writer_thread: Some(writer_thread),
            trigger: Some(trigger),
        }
    }

    /// Stores events; returns once they are committed (or refused).
    fn ingest(&self, events: Vec<NewEvent>) -> Vec<Reply> {
        let writer = self.writer.clone().expect("the agent is running");
        let runtime = self.runtime.as_ref().expect("the agent is running");
        runtime.block_on(async move { writer.ingest(events).await })
    }

    /// Drops everything in memory at once: tasks die wherever they are (a
    /// request on the wire, an outcome not yet handed to the writer). The
    /// writer thread then finishes what it was given and exits.
    fn crash(&mut self) -> Result<(), String> {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(10));
        }
        self.writer.take();
        self.trigger.take();
        match self.writer_thread.take() {
            Some(thread) => thread.join().map_err(|_| "the writer thread panicked".to_string()),
            None => Ok(()),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.crash();
    }
}

// ---- the model -------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    Delivered,
    Parked,
}

/// One entity as one subscription should see it.
#[derive(Debug, Default)]
struct Track {
    /// By `entity_seq - 1`.
    states: Vec<State>,
    /// Heads the entity had just before a resend: a request for one of them
    /// may already have been on the wire. Cleared by the next request.
    grace: BTreeSet<i64>,
    /// Events last answered to a request allowed by `grace`: if that request
    /// left before the resend committed, its outcome did not count (a resend
    /// always leads to a new attempt) and the event is still pending, so the
    /// agent sends it again; if it left after, it counted. The receiver cannot
    /// tell which, so another request for them is allowed, and after a crash
    /// the file may show them pending.
    unsure: BTreeSet<i64>,
    /// The last request seen from the running agent: its outcome may be lost by a crash.
    last_request: Option<i64>,
    /// Resent while the scheduler may hold it as parked or finished: it picks
    /// it up on its resync tick, which settling does not wait for.
    sluggish: bool,
}

impl Track {
    /// The first event not delivered, with its state.
    fn head(&self) -> Option<(i64, State)> {
        self.states
            .iter()
            .position(|s| *s != State::Delivered)
            .map(|i| (i as i64 + 1, self.states[i]))
    }

    fn sendable(&self) -> bool {
        matches!(self.head(), Some((_, State::Pending)))
    }

    /// A resend of `seq` (or of every parked event) has committed.
    fn resent(&mut self, seqs: &[i64]) {
        if let Some((head, State::Pending)) = self.head() {
            self.grace.insert(head);
        }
        for seq in seqs {
            self.states[(*seq - 1) as usize] = State::Pending;
            // A request for it may be on the wire too: the model counts it
            // delivered, but its outcome was lost in a crash, so the agent
            // sent it again just before the resend. (Order is still checked
            // against the database by the receiver.)
            self.grace.insert(*seq);
        }
        self.sluggish = true;
    }

    fn describe(&self) -> String {
        let states: Vec<String> = self
            .states
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let s = match s {
                    State::Pending => "p",
                    State::Delivered => "D",
                    State::Parked => "X",
                };
                format!("{}{s}", i + 1)
            })
            .collect();
        format!(
            "[{}] grace {:?} last {:?}{}",
            states.join(" "),
            self.grace,
            self.last_request,
            if self.sluggish { " sluggish" } else { "" }
        )
    }
}

#[derive(Default)]
struct Model {
    /// Event ids by entity, then `entity_seq - 1`.
    ids: Vec<Vec<String>>,
    /// Every acknowledged event in ingest order, as sent: (event, entity).
    events: Vec<(NewEvent, usize)>,
    /// By subscription, then entity.
    tracks: Vec<Vec<Track>>,
    /// Requests answered by the running agent's time, by (subscription, event id).
    answered: HashMap<(usize, String), i64>,
    /// Attempts the database held for (subscription, event id) when the running agent started.
    floor: HashMap<(usize, String), i64>,
    /// (subscription, event id) that got a 2xx at least once.
    got_2xx: HashSet<(usize, String)>,
}

impl Model {
    fn new() -> Model {
        Model {
            ids: vec![Vec::new(); ENTITIES],
            tracks: (0..SUBS.len())
                .map(|_| (0..ENTITIES).map(|_| Track::default()).collect())
                .collect(),
            ..Model::default()
        }
    }

    fn anything_sendable(&self) -> bool {
        self.tracks.iter().flatten().any(|t| !t.sluggish && t.sendable())
    }

    fn parked(&self) -> usize {
        self.tracks
            .iter()
            .flatten()
            .map(|t| t.states.iter().filter(|s| **s == State::Parked).count())
            .sum()
    }

    fn all_delivered(&self) -> bool {
        self.tracks.iter().flatten().all(|t| t.head().is_none())
    }

    fn describe(&self) -> String {
        let mut out = String::new();
        for (s, tracks) in self.tracks.iter().enumerate() {
            for (e, t) in tracks.iter().enumerate() {
                let _ = writeln!(out, "  {} {}: {}", SUBS[s], entity_name(e), t.describe());
            }
        }
        out
    }
}

/// Per-case figures.
#[derive(Default, Debug)]
struct Stats {
    events: usize,
    requests: usize,
    delivered: usize,
    duplicates: usize,
    parks: usize,
    failures_retry: usize,
    resends: usize,
    crashes: usize,
    lost_outcomes: usize,
    late_requests: usize,
}

// ---- the harness -----------------------------------------------------------------

struct Harness {
    /// First, so that it goes before the receivers when the case ends.
    agent: Option<Agent>,
    receivers: Vec<Receiver>,
    /// Requests of each receiver already given to the model.
    seen: Vec<usize>,
    shared: Arc<Shared>,
    urls: Vec<url::Url>,
    epoch: u64,
    model: Model,
    stats: Stats,
    next_id: usize,
    /// The test's own read connection.
    reader: Option<Connection>,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::Builder::new()
            .prefix("so-model-")
            .tempdir()
            .expect("create a temporary directory");
        let shared = Arc::new(Shared {
            db: dir.path().join("outbox.db"),
            ok: [AtomicBool::new(true), AtomicBool::new(true)],
            gate: Mutex::new(()),
            decided: AtomicUsize::new(0),
            epoch: AtomicU64::new(0),
            reader: Mutex::new(None),
            violations: Mutex::new(Vec::new()),
        });
        let receivers: Vec<Receiver> = (0..SUBS.len())
            .map(|sub| {
                let receiver = Receiver::start();
                let shared = shared.clone();
                receiver.answer_with(move |req| shared.answer(sub, req));
                receiver
            })
            .collect();
        let urls = receivers
            .iter()
            .map(|r| r.url().parse().expect("receiver URL"))
            .collect();
        let mut h = Harness {
            agent: None,
            seen: vec![0; receivers.len()],
            receivers,
            shared,
            urls,
            epoch: 0,
            model: Model::new(),
            stats: Stats::default(),
            next_id: 0,
            reader: None,
            _dir: dir,
        };
        h.start_agent();
        h
    }

    fn db(&self) -> PathBuf {
        self.shared.db.clone()
    }

    fn configs(&self) -> Vec<SubscriptionConfig> {
        SUBS.iter()
            .enumerate()
            .map(|(i, name)| SubscriptionConfig {
                name: name.to_string(),
                url: self.urls[i].clone(),
                secrets: vec![b"model-test-secret".to_vec()],
                events: None,
                heartbeats: false,
                payload: PayloadMode::Full,
                timeout: Duration::from_secs(30),
                max_in_flight: 4,
                max_rate: None,
                retry: RetryConfig {
                    initial: Duration::from_millis(10),
                    max: Duration::from_millis(40),
                    give_up_after: (i == PARK).then_some(Duration::ZERO),
                },
                headers: [(EPOCH_HEADER.to_string(), self.epoch.to_string())].into(),
                ca_file: None,
                client_cert: None,
                client_key: None,
                kind: store_outbox::deliver::destinations::webhook::config::kind_config(),
                batch: None,
                compression: store_outbox::config::Compression::None,
                format: store_outbox::config::Format::Webhook,
                adaptive_concurrency: false,
            })
            .collect()
    }

    fn start_agent(&mut self) {
        self.epoch += 1;
        self.shared.epoch.store(self.epoch, SeqCst);
        self.agent = Some(Agent::start(&self.db(), &self.configs()));
        if self.reader.is_none() {
            self.reader = Some(open_reader(&self.db()).expect("open the test's read connection"));
        }
    }

    fn stop_agent(&mut self) -> Result<(), String> {
        match self.agent.take() {
            Some(mut agent) => agent.crash(),
            None => Ok(()),
        }
    }

    fn deliveries(&self) -> Result<Vec<DeliveryRow>, String> {
        let conn = self.reader.as_ref().ok_or("no read connection")?;
        let filter = DeliveryFilter {
            limit: i64::MAX,
            ..DeliveryFilter::default()
        };
        list_deliveries(conn, &filter).map_err(|e| format!("list deliveries: {e}"))
    }

    fn check(&self) -> Result<(), String> {
        let violations = lock(&self.shared.violations);
        if violations.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} violation(s):\n{}\nmodel:\n{}",
                violations.len(),
                violations.join("\n"),
                self.model.describe()
            ))
        }
    }

    // ---- observing ----

    /// Gives every new request of both receivers to the model.
    fn absorb(&mut self) -> Result<(), String> {
        for sub in 0..self.receivers.len() {
            let requests = self.receivers[sub].requests();
            for req in &requests[self.seen[sub]..] {
                self.observe(sub, req);
            }
            self.seen[sub] = requests.len();
        }
        self.check()
    }

    fn observe(&mut self, sub: usize, req: &Request) {
        let name = SUBS[sub];
        self.stats.requests += 1;
        let entity = req
            .entity
            .strip_prefix("model:")
            .and_then(|e| e.parse::<usize>().ok())
            .filter(|e| *e < ENTITIES);
        let Some(entity) = entity else {
            return self
                .shared
                .violation(format!("{name}: request for unknown entity {:?}", req.entity));
        };
        let seq = req.entity_seq;
        let known = usize::try_from(seq - 1)
            .ok()
            .and_then(|i| self.model.ids[entity].get(i));
        if known != Some(&req.id) {
            return self.shared.violation(format!(
                "{name}: {} #{seq} arrived as {}, the model acknowledged {known:?}",
                req.entity, req.id
            ));
        }
        let ok = (200..300).contains(&req.answered);
        if ok && !self.model.got_2xx.insert((sub, req.id.clone())) {
            self.stats.duplicates += 1;
        }
        if ok {
            self.stats.delivered += 1;
        }
        let from = req.headers.get(EPOCH_HEADER).and_then(|v| v.parse::<u64>().ok());
        if from != Some(self.epoch) {
            // Sent by an agent that has crashed since: it could never record an
            // outcome. The receiver already checked it against the database.
            self.stats.late_requests += 1;
            return;
        }
        let track = &mut self.model.tracks[sub][entity];
        let head = track.head();
        let by_grace = track.grace.contains(&seq);
        let by_unsure = track.unsure.contains(&seq);
        let allowed = by_grace || by_unsure || head == Some((seq, State::Pending));
        if !allowed {
            let before = track.describe();
            return self.shared.violation(format!(
                "{name}: {} #{seq} ({}) sent out of order: the model allows {:?} (state {before})",
                req.entity,
                req.id,
                head.filter(|(_, s)| *s == State::Pending).map(|(s, _)| s)
            ));
        }
        track.grace.clear();
        if by_grace {
            track.unsure.insert(seq);
        } else {
            // Sent from the agent's own reading of the file: what came
            // before it in the entity was delivered.
            track.unsure.retain(|u| *u > seq);
        }
        if !by_grace {
            // Sent from a fresh read of the entity's head: the scheduler holds it.
            track.sluggish = false;
        }
        track.last_request = Some(seq);
        let index = (seq - 1) as usize;
        track.states[index] = if ok {
            State::Delivered
        } else if sub == PARK {
            self.stats.parks += 1;
            State::Parked
        } else {
            self.stats.failures_retry += 1;
            State::Pending
        };
        *self.model.answered.entry((sub, req.id.clone())).or_insert(0) += 1;
    }

    fn total_seen(&self) -> usize {
        self.seen.iter().sum()
    }

    /// Polls `cond` (with the model up to date) until it holds.
    fn wait_for(&mut self, what: &str, mut cond: impl FnMut(&mut Self) -> Result<bool, String>) -> Result<(), String> {
        let deadline = Instant::now() + WAIT;
        loop {
            self.absorb()?;
            if cond(self)? {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "timed out after {WAIT:?} waiting for {what}\nmodel:\n{}",
                    self.model.describe()
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether every answered request of the running agent has its outcome committed.
    fn outcomes_committed(&self) -> Result<bool, String> {
        let attempts: HashMap<(usize, String), i64> = self
            .deliveries()?
            .into_iter()
            .filter_map(|row| {
                let sub = SUBS.iter().position(|s| *s == row.subscription)?;
                Some(((sub, row.event_id), row.attempts))
            })
            .collect();
        Ok(self.model.answered.iter().all(|(key, n)| {
            let floor = self.model.floor.get(key).copied().unwrap_or(0);
            attempts.get(key).copied().unwrap_or(0) >= floor + n
        }))
    }

    /// Waits until what the receivers' answers allow has happened: in 2xx
    /// mode every sendable entity is drained (or blocked by a parked event);
    /// on `park` in 500 mode every sendable head got parked; on `retry` in 500
    /// mode at least one more retry came. Outcomes committed too.
    fn settle(&mut self) -> Result<(), String> {
        let failures_before = self.stats.failures_retry;
        self.wait_for("the deliveries to settle", |h| {
            for (sub, tracks) in h.model.tracks.iter().enumerate() {
                let ok = h.shared.ok[sub].load(SeqCst);
                let waiting = tracks.iter().any(|t| !t.sluggish && t.sendable());
                if waiting && (ok || sub == PARK || h.stats.failures_retry == failures_before) {
                    return Ok(false);
                }
            }
            h.outcomes_committed()
        })
    }

    // ---- operations ----

    fn apply(&mut self, op: &Op) -> Result<(), String> {
        match *op {
            Op::Ingest { entity, count } => self.ingest(entity, count)?,
            Op::IngestAgain { pick } => self.ingest_again(pick)?,
            Op::Answer { sub, ok } => {
                self.shared.ok[sub].store(ok, SeqCst);
                self.settle()?;
            }
            Op::Resend { pick, sub } => {
                self.resend_one(pick, sub)?;
                self.settle()?;
            }
            Op::ResendParked => {
                self.resend_parked()?;
                self.settle()?;
            }
            Op::Crash { after_requests } => self.crash(after_requests)?,
        }
        self.absorb()
    }

    fn ingest(&mut self, entity: usize, count: usize) -> Result<(), String> {
        let events: Vec<NewEvent> = (0..count)
            .map(|_| {
                self.next_id += 1;
                NewEvent {
                    event_id: format!("ev-{}", self.next_id),
                    event_type: "ModelEvent".into(),
                    entity: entity_name(entity),
                    occurred_at: now_rfc3339(),
                    correlation_id: None,
                    is_test: false,
                    attributes: None,
                    payload: format!("{{\"n\":{}}}", self.next_id),
                }
            })
            .collect();
        let agent = self.agent.as_ref().ok_or("no agent running")?;
        let replies = agent.ingest(events.clone());
        if replies.len() != events.len() {
            return Err(format!("{} replies for {} events", replies.len(), events.len()));
        }
        for (event, reply) in events.into_iter().zip(replies) {
            let expected = self.model.ids[entity].len() as i64 + 1;
            match reply {
                Reply::Accepted {
                    event_id,
                    entity_seq,
                    duplicate: false,
                } if event_id == event.event_id && entity_seq == expected => {
                    self.model.ids[entity].push(event_id);
                    for tracks in &mut self.model.tracks {
                        tracks[entity].states.push(State::Pending);
                    }
                    self.model.events.push((event, entity));
                }
                other => {
                    return Err(format!(
                        "ingest of {} (expected entity_seq {expected}): {other:?}",
                        event.event_id
                    ))
                }
            }
        }
        Ok(())
    }

    /// One of the events ingested so far (`pick` modulo their number), its
    /// entity and its `entity_seq`; `None` before the first ingest.
    fn pick_event(&self, pick: usize) -> Result<Option<(NewEvent, usize, i64)>, String> {
        if self.model.events.is_empty() {
            return Ok(None);
        }
        let (event, entity) = self.model.events[pick % self.model.events.len()].clone();
        let seq = self.model.ids[entity]
            .iter()
            .position(|id| *id == event.event_id)
            .ok_or("picked event is not in the model")? as i64
            + 1;
        Ok(Some((event, entity, seq)))
    }

    fn ingest_again(&mut self, pick: usize) -> Result<(), String> {
        let Some((event, _, seq)) = self.pick_event(pick)? else {
            return Ok(());
        };
        let agent = self.agent.as_ref().ok_or("no agent running")?;
        match agent.ingest(vec![event.clone()]).as_slice() {
            [Reply::Accepted {
                event_id,
                entity_seq,
                duplicate: true,
            }] if *event_id == event.event_id && *entity_seq == seq => Ok(()),
            other => Err(format!(
                "ingest of {} again: expected a duplicate with entity_seq {seq}, got {other:?}",
                event.event_id
            )),
        }
    }

    /// Runs `resend` as an operator would while the agent runs, at a point
    /// where every answer the receivers gave so far is committed and no
    /// answer is being given (the gate), so the model knows what the resend
    /// met; `update` applies it to the model before requests flow again.
    fn resend_live(
        &mut self,
        request: &ResendRequest,
        update: impl FnOnce(&mut Self, &ResendOutcome) -> Result<(), String>,
    ) -> Result<(), String> {
        let shared = self.shared.clone();
        let _gate = lock(&shared.gate);
        self.wait_for("decided requests to reach the log", |h| {
            Ok(h.total_seen() >= h.shared.decided.load(SeqCst))
        })?;
        self.wait_for("answered outcomes to commit", |h| h.outcomes_committed())?;
        let outcome = self.run_resend(request)?;
        update(self, &outcome)
    }

    fn run_resend(&mut self, request: &ResendRequest) -> Result<ResendOutcome, String> {
        self.stats.resends += 1;
        let mut conn = open_writer(&self.db()).map_err(|e| format!("open for resend: {e}"))?;
        resend(&mut conn, request).map_err(|e| format!("resend {request:?}: {e}"))
    }

    fn resend_one(&mut self, pick: usize, sub: Option<usize>) -> Result<(), String> {
        let Some((event, entity, seq)) = self.pick_event(pick)? else {
            return Ok(());
        };
        let subs: Vec<usize> = sub.map_or_else(|| (0..SUBS.len()).collect(), |s| vec![s]);
        let request = ResendRequest {
            event_ids: vec![event.event_id.clone()],
            subscription: sub.map(|s| SUBS[s].to_string()),
            ..ResendRequest::default()
        };
        self.resend_live(&request, |h, outcome| {
            if outcome.queued != subs.len() || !outcome.unknown.is_empty() {
                h.shared.violation(format!(
                    "resend of {} for {subs:?}: {outcome:?}, expected {} queued",
                    event.event_id,
                    subs.len()
                ));
            }
            for s in subs {
                h.model.tracks[s][entity].resent(&[seq]);
            }
            Ok(())
        })
    }

    fn resend_parked(&mut self) -> Result<(), String> {
        let request = ResendRequest {
            parked: true,
            ..ResendRequest::default()
        };
        self.resend_live(&request, |h, outcome| {
            h.apply_resend_parked(outcome);
            Ok(())
        })
    }

    fn apply_resend_parked(&mut self, outcome: &ResendOutcome) {
        let expected = self.model.parked();
        // A park answered to a request that left before a resend does not
        // count (the resend always leads to a new attempt): the model cannot
        // tell it from one that left after, so such a delivery may be pending.
        let unsure = self
            .model
            .tracks
            .iter()
            .flatten()
            .map(|t| {
                t.unsure
                    .iter()
                    .filter(|seq| t.states[(**seq - 1) as usize] == State::Parked)
                    .count()
            })
            .sum::<usize>();
        if outcome.queued > expected || outcome.queued + unsure < expected {
            self.shared.violation(format!(
                "resend --parked queued {}, the model has {expected} parked",
                outcome.queued
            ));
        }
        for track in self.model.tracks.iter_mut().flatten() {
            let parked: Vec<i64> = (1..=track.states.len() as i64)
                .filter(|seq| track.states[(*seq - 1) as usize] == State::Parked)
                .collect();
            if !parked.is_empty() {
                track.resent(&parked);
            }
        }
    }

    fn crash(&mut self, after_requests: usize) -> Result<(), String> {
        if after_requests > 0 {
            let target = self.total_seen() + after_requests;
            self.wait_for("requests before the crash", |h| {
                Ok(h.total_seen() >= target || !h.model.anything_sendable())
            })?;
        }
        self.stop_agent()?;
        self.stats.crashes += 1;
        self.reconcile()?;
        self.start_agent();
        Ok(())
    }

    /// After a crash: the file must hold every acknowledged event in the
    /// state the model expects, except the last request of each entity, whose
    /// outcome may not have been committed (then it is pending again).
    fn reconcile(&mut self) -> Result<(), String> {
        self.absorb()?;
        let rows = self.deliveries()?;
        let mut by_key: HashMap<(usize, String), DeliveryRow> = HashMap::new();
        for row in rows {
            let Some(sub) = SUBS.iter().position(|s| *s == row.subscription) else {
                self.shared
                    .violation(format!("delivery for an unknown subscription: {row:?}"));
                continue;
            };
            by_key.insert((sub, row.event_id.clone()), row);
        }
        let expected_rows = self.model.events.len() * SUBS.len();
        if by_key.len() != expected_rows {
            self.shared.violation(format!(
                "after a crash the outbox has {} deliveries, the model acknowledged {expected_rows}",
                by_key.len()
            ));
        }
        let mut floor = HashMap::new();
        for (sub, tracks) in self.model.tracks.iter_mut().enumerate() {
            for (entity, track) in tracks.iter_mut().enumerate() {
                // Whether every event before the current one is delivered (in
                // the model as corrected so far): the current one is the head.
                let mut at_head = true;
                for (i, state) in track.states.iter_mut().enumerate() {
                    let is_head = at_head;
                    let id = &self.model.ids[entity][i];
                    let key = (sub, id.clone());
                    let Some(row) = by_key.get(&key) else {
                        self.shared
                            .violation(format!("{}: acknowledged event {id} lost in a crash", SUBS[sub]));
                        continue;
                    };
                    let want = match state {
                        State::Pending => "pending",
                        State::Delivered => "delivered",
                        State::Parked => "parked",
                    };
                    // What a failed attempt leaves behind on this subscription.
                    let failed = if sub == PARK { "parked" } else { "pending" };
                    let last = track.last_request == Some(i as i64 + 1) || track.unsure.contains(&(i as i64 + 1));
                    if row.state.as_str() == want {
                        // As the model says.
                    } else if last && (row.state.as_str() == "pending" || row.state.as_str() == failed) {
                        // The last request's outcome was not committed, or the
                        // crash cut its answer off and a failure was recorded
                        // (dropping the runtime lets a task see its connection
                        // die: the same as a network failure just before a
                        // real crash).
                        if row.state.as_str() == "parked" {
                            *state = State::Parked;
                            crash_error(row);
                        } else {
                            *state = State::Pending;
                        }
                        self.stats.lost_outcomes += 1;
                    } else if is_head && want == "pending" && row.state.as_str() == failed {
                        // A request the receiver never logged (still on the
                        // wire when the agent died) failed at the crash.
                        *state = State::Parked;
                        crash_error(row);
                        self.stats.lost_outcomes += 1;
                    } else {
                        self.shared.violation(format!(
                            "{}: after a crash {} #{} ({id}) is {} in the outbox (last error {:?}), the model says {want}",
                            SUBS[sub],
                            entity_name(entity),
                            i + 1,
                            row.state,
                            row.last_error
                        ));
                    }
                    at_head = at_head && *state == State::Delivered;
                    floor.insert(key, row.attempts);
                }
                track.last_request = None;
                track.grace.clear();
                track.unsure.clear();
                track.sluggish = false;
            }
        }
        self.model.floor = floor;
        self.model.answered.clear();
        self.check()
    }

    /// The end of every case: everything acknowledged must arrive. Either
    /// the agent crashes and an operator resends the parked deliveries while
    /// it is down, or (`live`) the operator resends them while it runs and
    /// the scheduler must find them on its own (its resync tick).
    fn drain(&mut self, live: bool) -> Result<(), String> {
        for ok in &self.shared.ok {
            ok.store(true, SeqCst);
        }
        if live {
            self.resend_parked()?;
        } else {
            self.stop_agent()?;
            self.stats.crashes += 1;
            self.reconcile()?;
            let outcome = self.run_resend(&ResendRequest {
                parked: true,
                ..ResendRequest::default()
            })?;
            self.apply_resend_parked(&outcome);
            self.start_agent();
        }
        // The file too: an answer to a request that left before a resend
        // does not count, and the event goes once more.
        self.wait_for("every acknowledged event to be delivered", |h| {
            Ok(h.model.all_delivered()
                && h.outcomes_committed()?
                && h.deliveries()?.iter().all(|r| r.state.as_str() == "delivered"))
        })?;
        // Independent of the model: the file and the receivers' logs.
        let rows = self.deliveries()?;
        let undelivered: Vec<&DeliveryRow> = rows.iter().filter(|r| r.state.as_str() != "delivered").collect();
        if rows.len() != self.model.events.len() * SUBS.len() || !undelivered.is_empty() {
            return Err(format!(
                "after the drain: {} deliveries for {} events, not delivered: {undelivered:?}",
                rows.len(),
                self.model.events.len()
            ));
        }
        for (sub, receiver) in self.receivers.iter().enumerate() {
            let got = receiver.delivered_ids();
            let missing: Vec<&str> = self
                .model
                .events
                .iter()
                .map(|(e, _)| e.event_id.as_str())
                .filter(|id| !got.contains(*id))
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "{}: acknowledged but never answered 2xx: {missing:?}",
                    SUBS[sub]
                ));
            }
        }
        self.stop_agent()?;
        self.check()
    }
}

fn crash_error(row: &DeliveryRow) {
    let text = row.last_error.clone().unwrap_or_default();
    let short: String = text.chars().take(80).collect();
    *lock(&CRASH_ERRORS).entry(short).or_insert(0) += 1;
}

/// Runs one sequence of operations and the final drain.
fn run_case(ops: &[Op], live_drain: bool) -> Result<Stats, String> {
    let mut h = Harness::new();
    for (i, op) in ops.iter().enumerate() {
        h.apply(op).map_err(|e| format!("at operation {i} {op:?}: {e}"))?;
    }
    let how = if live_drain { "live" } else { "after a crash" };
    h.drain(live_drain)
        .map_err(|e| format!("in the final drain ({how}): {e}"))?;
    h.stats.events = h.model.events.len();
    Ok(std::mem::take(&mut h.stats))
}

/// Adds one passed case to the run's figures.
fn add_to_totals(operations: usize, s: &Stats) {
    count(&TOTALS.cases, 1);
    count(&TOTALS.operations, operations);
    count(&TOTALS.events, s.events);
    count(&TOTALS.requests, s.requests);
    count(&TOTALS.delivered, s.delivered);
    count(&TOTALS.duplicates, s.duplicates);
    count(&TOTALS.parks, s.parks);
    count(&TOTALS.resends, s.resends);
    count(&TOTALS.crashes, s.crashes);
    count(&TOTALS.lost_outcomes, s.lost_outcomes);
    count(&TOTALS.late_requests, s.late_requests);
}

#[test]
fn deliveries_follow_the_model() {
    let started = Instant::now();
    let cases = common::env_number("STORE_OUTBOX_MODEL_CASES").unwrap_or(32) as u32;
    let seed = common::env_number("STORE_OUTBOX_MODEL_SEED").unwrap_or(DEFAULT_SEED);
    let config = Config {
        cases,
        // A minimised failure is kept by hand as a #[test] below, not in a
        // regressions file next to the sources.
        failure_persistence: None,
        max_shrink_iters: 200,
        max_shrink_time: 180_000,
        ..Config::default()
    };
    let mut seed_bytes = [0u8; 32];
    for chunk in seed_bytes.chunks_mut(8) {
        chunk.copy_from_slice(&seed.to_le_bytes());
    }
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes));
    // A quarter of the cases end with a live drain: it waits for the
    // scheduler's resync tick (up to 2 s), so not all of them.
    let cases = (
        proptest::collection::vec(op_strategy(), 1..24),
        proptest::bool::weighted(0.25),
    );
    let result = runner.run(&cases, |(ops, live_drain)| {
        let stats = run_case(&ops, live_drain).map_err(TestCaseError::fail)?;
        add_to_totals(ops.len(), &stats);
        Ok(())
    });
    let t = &TOTALS;
    let n = |c: &AtomicU64| c.load(SeqCst);
    println!(
        "model: {} cases (seed {seed:#x}), {} operations, {} events, {} requests checked ({} answered 2xx, {} duplicates), \
         {} parks, {} resends, {} crashes ({} outcomes lost or failed at a crash, {} late requests of crashed agents), {} violations, {:.1}s",
        n(&t.cases),
        n(&t.operations),
        n(&t.events),
        n(&t.requests),
        n(&t.delivered),
        n(&t.duplicates),
        n(&t.parks),
        n(&t.resends),
        n(&t.crashes),
        n(&t.lost_outcomes),
        n(&t.late_requests),
        usize::from(result.is_err()),
        started.elapsed().as_secs_f64()
    );
    let errors = lock(&CRASH_ERRORS);
    if !errors.is_empty() {
        println!("model: failures recorded while a crash tore connections down: {errors:?}");
    }
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, ops)) => panic!("minimal failing case {ops:#?}\n{why}"),
        Err(TestError::Abort(why)) => panic!("aborted: {why}"),
    }
}

/// A fixed walk through the rules, quick to read when the model test fails:
/// park, deliver behind the park, resend the parked head, crash in between.
#[test]
fn resend_of_a_parked_head_keeps_its_place() {
    let ops = [
        Op::Ingest { entity: 0, count: 2 },
        // park: entity 0's head parks; retry: both arrive.
        Op::Answer { sub: PARK, ok: false },
        Op::Ingest { entity: 0, count: 1 },
        Op::Ingest { entity: 1, count: 2 },
        // Settles again: entity 1's head parks too; entity 0's #3 waits behind #1.
        Op::Answer { sub: PARK, ok: false },
        Op::Answer { sub: RETRY, ok: false },
        Op::Answer { sub: RETRY, ok: true },
        Op::Answer { sub: PARK, ok: true },
        Op::Resend {
            pick: 0,
            sub: Some(PARK),
        },
        Op::Crash { after_requests: 1 },
        Op::ResendParked,
        Op::Crash { after_requests: 0 },
    ];
    let stats = run_case(&ops, false).unwrap_or_else(|e| panic!("{e}"));
    assert!(stats.parks >= 2, "both entities' heads parked: {stats:?}");
}

/// The live path of a resend: an operator resends a delivered and a parked
/// event while the agent runs; the scheduler has to find both on its own.
#[test]
fn live_resend_is_picked_up_by_the_running_scheduler() {
    let ops = [
        Op::Ingest { entity: 0, count: 2 },
        Op::Answer { sub: PARK, ok: false },
        Op::Ingest { entity: 1, count: 1 },
        Op::Answer { sub: PARK, ok: true },
        // ev-1: delivered on retry (sent again, before nothing newer), parked on park.
        Op::Resend { pick: 0, sub: None },
    ];
    let stats = run_case(&ops, true).unwrap_or_else(|e| panic!("{e}"));
    assert!(stats.duplicates >= 1, "ev-1 reached retry twice: {stats:?}");
    assert_eq!(stats.crashes, 0, "{stats:?}");
}
