//! One scheduler per subscription: decides which event is sent next, and
//! when. The rules themselves are plain functions in [`super::decide`];
//! this folder holds the state they act on and does the reading, the
//! dispatching and the waiting, in the order of an event's trip:
//! `window` (the entities held and when each is due), `dispatch` (which
//! goes next, handed to a courier), `batches` (forming them, holding failed
//! ones), `answers` (what the couriers and the writer report), `persist`
//! (what is kept across restarts). This file has the state and the run
//! loop. It knows nothing of HTTP: a [`Destination`] sends, and
//! [`super::courier`] carries each event to it.
//!
//! Invariants kept here:
//! - **Order per entity**: at most one request per entity is in flight (with
//!   `batch`, one batch holding consecutive events of the entity; a failed
//!   batch is held and sent again whole), and
//!   the next event of an entity is looked up (from the database) only after
//!   the previous one's outcome is *committed* (the writer's [`Recorded`]).
//!   So event n+1 is never sent before n's 2xx is durable, and after a crash
//!   a receiver can at worst see n again, never n after n+1.
//! - **Cursors**: each entity's next event is looked up from a cursor (an
//!   `entity_seq` before which everything of the entity is delivered), so the
//!   database needs no entity-keyed index that changes with every outcome.
//!   Only a resend reopens events behind a cursor, and it bumps
//!   `resend_generation`: every round of lookups first checks that counter in
//!   the same read transaction and moves the cursors back before reading.
//! - **Parked blocks its entity only**: an entity whose head is parked
//!   leaves the window and is not taken back until a resend; other entities
//!   go on.
//! - **Offline probing**: while the endpoint is down, one request at a time,
//!   at the backoff pace, with the oldest waiting event; the first success
//!   brings the subscription back online and every entity becomes due at once.
//! - **Bounded memory**: at most a window of entities is held
//!   ([`WINDOW`]); the rest of the backlog waits in the outbox and is found
//!   by scanning pending rows in ingest order ([`Scan`]), so memory does not
//!   depend on how many entities the producers use. An entity leaves the
//!   window once it has nothing left to send (drained, or blocked behind a
//!   parked event, which the outbox finds again in one probe).
//! - **The endpoint's word is for the whole subscription**: a 429 or 503
//!   pauses every entity (until `Retry-After`, or the backoff), taken in as
//!   soon as the answer is in; a 410 stops the subscription, across
//!   restarts, until its config changes or `store-outbox resume`
//!   (`outbox::gone`). Requests already on the wire finish; nothing is
//!   dropped or parked.
//! - Timers use `Instant` (monotonic): wall-clock jumps do not move them.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::concurrency::Concurrency;
use super::courier::{Crew, Job, Report};
use super::decide::{Link, Plan, Position, ReadyKey};
use super::destination::{Answer, Destination};
use super::rate::RateLimit;
use crate::metrics::Metrics;
use crate::outbox::gone::Marker;
use crate::outbox::held::HeldPart;
use crate::outbox::state::SubscriptionState;
use crate::outbox::writer::{Starving, Writer};
use crate::outbox::Subscription;
use crate::shutdown::Shutdown;

mod answers;
mod batches;
mod dispatch;
mod persist;
mod window;

/// How often `resend_generation` is looked at while nothing is sent (an
/// operator may resend parked or delivered events).
const RESYNC_EVERY: Duration = Duration::from_secs(2);
/// The pause after the outbox could not be read.
const READ_RETRY: Duration = Duration::from_secs(1);
/// Deliveries (answered and waiting for their commit, or still in flight)
/// allowed per request slot: bounds memory when commits stall.
const DELIVERIES_PER_SLOT: usize = 32;
/// Most entities a scheduler holds in memory (about 150 bytes each).
/// Plenty for any `max_in_flight`: only entities with something to send now
/// need to be here.
pub const WINDOW: usize = 32_768;
/// Most pending rows read by one page of the backlog scan.
const SCAN_PAGE: usize = 1024;
/// Most pages read in one round, so that a long scan (a backlog of few
/// entities with many events each) never holds up sending.
const SCAN_PAGES_PER_ROUND: usize = 8;

/// Where the scan of the backlog stands: every pending row up to `after`
/// was looked at (its entity was taken into the window, or was already in
/// it). Entities outside the window all have their first open event after
/// `after`, or are blocked behind a parked event.
#[derive(Debug, Clone, Copy)]
struct Scan {
    /// The `seq` of the last pending row looked at.
    after: i64,
    /// The last page came back short: no pending row after `after` was
    /// there, so new events can be taken straight from the inbox.
    done: bool,
}

impl Scan {
    /// From the beginning of the backlog.
    const START: Scan = Scan { after: 0, done: false };
}

/// Where an entity stands in this subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntityState {
    /// Its head may be sent once `due`.
    Ready,
    /// A request for its head is in flight.
    InFlight,
    /// Its events are in a batch waiting for its retry ([`HeldBatch`]).
    Held,
}

/// An entity the scheduler tracks.
struct Entity {
    /// Where it stands.
    state: EntityState,
    /// When its head may be sent (backoff).
    due: Instant,
    /// Its head, or the cursor its head is looked up from: everything of the
    /// entity before it is delivered.
    at: Position,
    /// A resend reopened this earlier event while a request of the entity
    /// was in flight: the cursor goes back here when that request finishes.
    rewind: Option<Position>,
    /// Whether it is known not to be blocked behind a parked event (checked
    /// once, when it enters the window).
    checked: bool,
    /// With `batch`: its last batch was full before its events ran out, so
    /// it has a backlog that fills the next one and that batch does not
    /// wait `linger` for company.
    backlogged: bool,
}

/// One entity's share of a request: its consecutive events from `first` to
/// `last` (one event without `batch`).
#[derive(Debug, Clone, Copy)]
struct Part {
    /// The entity.
    entity_id: i64,
    /// Its first event in the request.
    first: Position,
    /// Its last event in the request.
    last: Position,
    /// How many of its events.
    count: usize,
}

/// A batch that failed and goes again whole, with the same events in the
/// same order and the same id, once `due` (its entities are `Held`).
struct HeldBatch {
    /// Its `webhook-id`.
    id: String,
    /// Its entities' shares, in the order they go.
    parts: Vec<Part>,
    /// When it goes again (its backoff, or `Retry-After`).
    due: Instant,
}

/// A batch's parts as `outbox::held` stores them.
fn stored_parts(parts: &[Part]) -> Vec<HeldPart> {
    parts
        .iter()
        .map(|p| HeldPart {
            entity_id: p.entity_id,
            first_entity_seq: p.first.entity_seq,
            count: p.count,
        })
        .collect()
}

/// A delivery between dispatch and the commit of its outcome.
struct Flight {
    /// What the request carries, per entity.
    parts: Vec<Part>,
    /// The batch's id, for a batch.
    batch_id: Option<String>,
    /// Whether it was the offline probe.
    was_probe: bool,
    /// The courier's answer and plan, once in.
    answered: Option<(Answer, Plan)>,
}

/// What a scheduler writes for `status`: its state, deliveries in flight,
/// the next planned attempt and the request concurrency's current limit.
/// Written when it changes: at once for a change of the link, else at the
/// next tick ([`RESYNC_EVERY`]), so however often the adaptive limit or the
/// deliveries in flight move, that is one small write every 2 s at most.
type Persisted = (SubscriptionState, usize, Option<Instant>, usize);

/// Everything a scheduler needs.
pub struct Scheduler<D> {
    /// The subscription.
    sub: Subscription,
    /// Where outcomes and states are recorded.
    writer: Writer,
    /// Its own read connection.
    reader: Connection,
    /// Stop signal.
    shutdown: Shutdown,
    /// Bounded wait for in-flight requests at shutdown.
    grace: Duration,
    /// The window: the open entities in memory (at most `window`).
    entities: HashMap<i64, Entity>,
    /// The window's size.
    window: usize,
    /// The scan for entities outside the window.
    scan: Scan,
    /// The `Ready` entities, in the order they may go.
    ready: BTreeSet<ReadyKey>,
    /// Deliveries not finished yet (request sent, or answered and waiting
    /// for the outcome's commit), by ticket; their count is shown in `status`.
    flights: HashMap<u64, Flight>,
    /// The next delivery's ticket.
    next_ticket: u64,
    /// Requests not answered yet: what `max_in_flight` caps. A request gives
    /// its slot back as soon as a success is in, before its outcome is
    /// committed; its entity stays `InFlight` until then, so the next event
    /// of that entity still waits for the commit (order is unchanged). A
    /// failure holds its slot until its outcome is committed, so an endpoint
    /// going down gets no more requests than before.
    requests: usize,
    /// From the couriers, and through the writer: each delivery's answer,
    /// then its commit.
    reports_rx: mpsc::UnboundedReceiver<Report>,
    /// Each courier's queue of one event (started by `run`).
    couriers: Vec<mpsc::Sender<Job>>,
    /// Couriers without an event.
    idle: Vec<usize>,
    /// Online, or offline and probing.
    link: Link,
    /// Whether the offline probe is out.
    probe_in_flight: bool,
    /// `max_rate`'s bucket, if the subscription has one.
    rate: Option<RateLimit>,
    /// Outcomes in a row that could not be committed (a full disk, a broken
    /// database): no request starts before `storage_pause_until`, so the
    /// endpoint is not flooded with repeats of events we cannot mark. The
    /// same pause (`READ_RETRY`) follows a failed read of the outbox.
    unrecorded_in_a_row: u32,
    /// See `unrecorded_in_a_row`.
    storage_pause_until: Option<Instant>,
    /// What was last written for `status`.
    persisted: Persisted,
    /// The fingerprint of the subscription's config, kept with a 410's
    /// marker: a changed config resumes.
    fingerprint: String,
    /// Stopped by a 410: its marker, and whether the outbox was seen to
    /// hold it (only then does its absence mean `resume`).
    gone: Option<(Marker, bool)>,
    /// `resend_generation` when the open entities were last read; `None`
    /// until they were read once.
    resend_generation: Option<Option<String>>,
    /// Stamped at every turn of the loop's tick, for the watchdog.
    heartbeat: crate::notify::Heartbeat,
    /// Tells the writer when this scheduler waits for commits with a slot
    /// free (then outcomes must not wait for each other).
    starving: Starving,
    /// The couriers' shared parts, until `run` starts them.
    crew: Option<Arc<Crew<D>>>,
    /// The destination (for the size of an event in a batch).
    destination: Arc<D>,
    /// Batches waiting for their retry.
    held: Vec<HeldBatch>,
    /// How many requests may be on the wire (fixed at `max_in_flight`, or
    /// adaptive).
    concurrency: Concurrency,
    /// A batch that is not full waits for company until then (`linger`).
    linger_wake: Option<Instant>,
}

impl<D: Destination> Scheduler<D> {
    /// Prepares the scheduler of one subscription.
    pub fn new(
        sub: Subscription,
        destination: Arc<D>,
        writer: Writer,
        reader: Connection,
        shutdown: Shutdown,
        grace: Duration,
        metrics: Metrics,
    ) -> Self {
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        let crew = Crew {
            destination: destination.clone(),
            writer: writer.clone(),
            sub_id: sub.id,
            name: sub.config.name.clone(),
            retry: sub.config.retry,
            metrics,
            reports: reports_tx,
        };
        let starving = writer.starving();
        let fingerprint = config_fingerprint(&sub.config);
        let (adaptive, max_in_flight) = (sub.config.adaptive_concurrency, sub.config.max_in_flight);
        let heartbeat = crate::notify::Heartbeat::default();
        heartbeat.beat();
        let rate = sub.config.max_rate.map(|r| RateLimit::new(r, Instant::now()));
        Scheduler {
            sub,
            writer,
            reader,
            shutdown,
            grace,
            entities: HashMap::new(),
            window: WINDOW,
            scan: Scan::START,
            ready: BTreeSet::new(),
            flights: HashMap::new(),
            next_ticket: 0,
            requests: 0,
            reports_rx,
            couriers: Vec::new(),
            idle: Vec::new(),
            link: Link::new(Instant::now()),
            probe_in_flight: false,
            rate,
            unrecorded_in_a_row: 0,
            storage_pause_until: None,
            persisted: (SubscriptionState::Stopped, usize::MAX, None, 0),
            fingerprint,
            gone: None,
            resend_generation: None,
            heartbeat,
            starving,
            crew: Some(Arc::new(crew)),
            destination,
            held: Vec::new(),
            concurrency: Concurrency::new(adaptive, max_in_flight, Instant::now()),
            linger_wake: None,
        }
    }

    /// Holds at most `window` entities in memory instead of [`WINDOW`]
    /// (tests use a tiny one to exercise the scan).
    pub fn with_window(mut self, window: usize) -> Self {
        self.window = window.max(1);
        self
    }

    /// The heartbeat the watchdog reads.
    pub fn heartbeat(&self) -> crate::notify::Heartbeat {
        self.heartbeat.clone()
    }

    /// Starts one courier per request slot: a request holds its slot at
    /// least until it is answered, so a courier is always free for a slot.
    fn start_couriers(&mut self) -> JoinSet<()> {
        let mut couriers = JoinSet::new();
        let Some(crew) = self.crew.take() else {
            return couriers;
        };
        for index in 0..self.sub.config.max_in_flight {
            let (jobs_tx, jobs_rx) = mpsc::channel(1);
            couriers.spawn(crew.clone().work(index, jobs_rx));
            self.couriers.push(jobs_tx);
            self.idle.push(index);
        }
        couriers
    }

    /// Runs until shutdown.
    pub async fn run(mut self) {
        self.check_gone_at_start();
        self.catch_up_resends(Instant::now());
        self.restore_held(Instant::now());
        let mut couriers = self.start_couriers();
        let mut tick = tokio::time::interval(RESYNC_EVERY);
        let mut shutdown = self.shutdown.clone();
        self.persist_state();
        loop {
            self.dispatch();
            self.starving.set(self.is_starving());
            let wake = self.next_wake(Instant::now());
            tokio::select! {
                // A group commit reports many outcomes at once: take them
                // all before the next round of lookups (one read transaction
                // and one check for resends for all).
                Some(report) = self.reports_rx.recv() => {
                    self.on_report(report);
                    self.take_reports();
                }
                _ = self.sub.inbox.wait() => self.merge_inbox(),
                _ = sleep_until_opt(wake) => {}
                _ = tick.tick() => {
                    self.heartbeat.beat();
                    self.check_resumed(Instant::now());
                    self.catch_up_resends(Instant::now());
                    if self.persisted != self.state_to_persist(Instant::now()) {
                        self.persist_state();
                    }
                }
                _ = shutdown.wait() => break,
            }
        }
        // Give requests in flight a bounded time; what does not finish is
        // simply sent again after the restart (at least once). A stop of
        // this scheduler alone (a reload replaces or removes it) waits for
        // every request: each ends within the timeout, and the scheduler
        // that follows starts from their committed outcomes. The agent
        // stopping meanwhile cuts that to the grace.
        let mut agent = self.shutdown.agent();
        let mut agent_stopping = agent.is_started();
        let mut deadline = Instant::now() + self.grace;
        if !agent_stopping {
            deadline += self.sub.config.timeout;
        }
        while !self.flights.is_empty() {
            tokio::select! {
                Some(report) = self.reports_rx.recv() => self.on_report(report),
                _ = agent.wait(), if !agent_stopping => {
                    agent_stopping = true;
                    deadline = deadline.min(Instant::now() + self.grace);
                }
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(subscription = %self.sub.config.name, requests = self.flights.len(), "stopping with requests in flight; they will be sent again");
                    break;
                }
            }
        }
        couriers.abort_all();
        self.flights.clear();
        self.persist_stopped();
    }
}

async fn sleep_until_opt(when: Option<Instant>) {
    match when {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// A fingerprint of a subscription's whole config (SHA-256 of its settings,
/// secrets included, never shown): kept with a 410's marker, so that any
/// change of the subscription in the config resumes it.
fn config_fingerprint(config: &crate::config::SubscriptionConfig) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{config:?}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
