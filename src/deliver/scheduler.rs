//! One scheduler per subscription: decides which event is sent next, and
//! when. The rules themselves are plain functions in [`super::decide`];
//! this file holds the state they act on and does the reading, the
//! dispatching and the waiting. It knows nothing of HTTP: a
//! [`Destination`] sends, and [`super::courier`] carries each event to it.
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

use super::batch;
use super::concurrency::Concurrency;
use super::courier::{Crew, Job, Sent, Unit};
use super::decide::{self, EntityNext, Heeded, Link, LinkChange, Plan, Position, ReadyKey};
use super::destination::{Answer, AnswerKind, Destination};
use super::rate::RateLimit;
use crate::config::BatchConfig;
use crate::metrics::Metrics;
use crate::outbox::gone::{self, Marker};
use crate::outbox::held::{self, HeldPart};
use crate::outbox::read::{self, Head};
use crate::outbox::state::{ConcurrencyMode, ConcurrencyState, DeliveryState, SubscriptionState};
use crate::outbox::writer::{Decision, Recorded, Starving, Writer};
use crate::outbox::{now_ms, Subscription};
use crate::shutdown::Shutdown;

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
    /// From the couriers.
    sent_rx: mpsc::UnboundedReceiver<Sent>,
    /// From the writer.
    recorded_rx: mpsc::UnboundedReceiver<Recorded>,
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
        let (sent_tx, sent_rx) = mpsc::unbounded_channel();
        let (recorded_tx, recorded_rx) = mpsc::unbounded_channel();
        let crew = Crew {
            destination: destination.clone(),
            writer: writer.clone(),
            sub_id: sub.id,
            name: sub.config.name.clone(),
            retry: sub.config.retry,
            metrics,
            sent: sent_tx,
            recorded: recorded_tx,
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
            sent_rx,
            recorded_rx,
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

    /// Whether another request may start: a request slot, room for one more
    /// delivery waiting for its commit, and an idle courier.
    fn slot_free(&self) -> bool {
        let max = self.sub.config.max_in_flight;
        self.requests < self.concurrency_limit()
            && self.flights.len() < max * DELIVERIES_PER_SLOT
            && !self.idle.is_empty()
            && self.rate.as_ref().is_none_or(|r| r.may_send(Instant::now()))
    }

    /// A request slot is free and nothing is ready to go now, while
    /// deliveries are under way: the next events wait for their commits.
    fn is_starving(&self) -> bool {
        self.link.online
            && !self.link.gone
            && self.link.paused_at(Instant::now()).is_none()
            && !self.flights.is_empty()
            && self.slot_free()
            && self.ready.first().is_none_or(|(due, _, _)| *due > Instant::now())
    }

    fn set_ready(&mut self, entity_id: i64, due: Instant, at: Position) {
        let entity = self.entities.entry(entity_id).or_insert(Entity {
            state: EntityState::Ready,
            due,
            at,
            rewind: None,
            checked: false,
            backlogged: false,
        });
        if entity.state == EntityState::Ready {
            self.ready.remove(&(entity.due, entity.at.seq, entity_id));
        }
        entity.state = EntityState::Ready;
        entity.due = due;
        entity.at = at;
        self.ready.insert((due, at.seq, entity_id));
    }

    fn set_state(&mut self, entity_id: i64, state: EntityState, at: Position) {
        if let Some(entity) = self.entities.get_mut(&entity_id) {
            entity.state = state;
            entity.at = at;
        }
    }

    /// Lets an entity go from the window: it has nothing to send now. Its
    /// later events are found again by the inbox or the scan.
    fn forget(&mut self, entity_id: i64) {
        if let Some(entity) = self.entities.remove(&entity_id) {
            if entity.state == EntityState::Ready {
                self.ready.remove(&(entity.due, entity.at.seq, entity_id));
            }
        }
    }

    /// Whether the window has room for a page of the backlog and the scan
    /// has more to find.
    fn wants_scan(&self) -> bool {
        !self.scan.done && self.entities.len() < self.low_water()
    }

    /// The window is topped up when it falls below three quarters.
    fn low_water(&self) -> usize {
        (self.window - self.window / 4).max(1)
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
                Some(sent) = self.sent_rx.recv() => {
                    self.on_sent(sent);
                    self.take_reports();
                }
                Some(recorded) = self.recorded_rx.recv() => {
                    self.take_sent();
                    self.on_recorded(recorded);
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
                Some(sent) = self.sent_rx.recv() => self.on_sent(sent),
                Some(recorded) = self.recorded_rx.recv() => {
                    self.take_sent();
                    self.on_recorded(recorded);
                }
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

    /// Takes every answer and commit already waiting.
    fn take_reports(&mut self) {
        loop {
            self.take_sent();
            match self.recorded_rx.try_recv() {
                Ok(recorded) => self.on_recorded(recorded),
                Err(_) => return,
            }
        }
    }

    /// Takes every answer already waiting. Called before each commit is
    /// handled: a courier tells its answer before it queues the outcome, so
    /// the answer of a committed outcome is always here by then.
    fn take_sent(&mut self) {
        while let Ok(sent) = self.sent_rx.try_recv() {
            self.on_sent(sent);
        }
    }

    /// A courier has its answer and is free; on a success the request slot
    /// is free too.
    fn on_sent(&mut self, sent: Sent) {
        self.idle.push(sent.courier);
        if sent.answer.kind == AnswerKind::Delivered {
            self.requests = self.requests.saturating_sub(1);
        }
        let now = Instant::now();
        let limit = self.concurrency.limit();
        self.concurrency.on_answer(sent.answer.kind, sent.elapsed, now);
        if self.concurrency.limit() != limit {
            tracing::debug!(
                subscription = %self.sub.config.name,
                limit = self.concurrency.limit(),
                mean_rtt_ms = self.concurrency.mean_rtt().map(|s| s * 1000.0),
                "adaptive concurrency: new limit"
            );
        }
        let heeded = self
            .link
            .heed(&sent.answer, &self.sub.config.retry, rand::random::<f64>(), now);
        self.on_heeded(heeded, &sent.answer, now);
        if let Some(flight) = self.flights.get_mut(&sent.ticket) {
            flight.answered = Some((sent.answer, sent.plan));
        }
    }

    /// Acts on what an answer means for the whole subscription (a pause, a
    /// stop); requests already on the wire go on.
    fn on_heeded(&mut self, heeded: Heeded, answer: &Answer, now: Instant) {
        let name = &self.sub.config.name;
        match heeded {
            Heeded::Nothing => {}
            Heeded::Paused { until } | Heeded::PauseLonger { until } => {
                let wait = humantime::format_duration(Duration::from_secs(
                    until.saturating_duration_since(now).as_secs_f64().ceil() as u64,
                ));
                if matches!(heeded, Heeded::Paused { .. }) && self.link.throttles_in_a_row == 1 {
                    tracing::info!(subscription = %name, error = ?answer.error, pause = %wait,
                        "the endpoint asks to slow down: every entity of the subscription waits");
                } else {
                    tracing::debug!(subscription = %name, error = ?answer.error, pause = %wait, "throttled again");
                }
                self.persist_state();
            }
            Heeded::WentGone => {
                tracing::warn!(subscription = %name, url = %self.sub.config.url_for_logs(), error = ?answer.error,
                    "the endpoint answered 410 Gone: the subscription stops sending (nothing is dropped) until its config changes or `store-outbox resume {name}`");
                let marker = Marker {
                    fingerprint: self.fingerprint.clone(),
                    since_ms: now_ms(),
                };
                self.writer.set_gone(self.sub.id, Some(marker.clone()));
                self.gone = Some((marker, false));
                self.persist_state();
            }
        }
    }

    /// At start: a 410's marker from before stops the subscription again if
    /// its config is the same; a changed config clears it.
    fn check_gone_at_start(&mut self) {
        let name = &self.sub.config.name;
        match gone::marker(&self.reader, self.sub.id) {
            Ok(None) => {}
            Ok(Some(marker)) if marker.fingerprint == self.fingerprint => {
                tracing::warn!(subscription = %name, since = %crate::timefmt::ms_to_rfc3339(marker.since_ms),
                    "stopped since its endpoint answered 410 Gone; nothing is sent until its config changes or `store-outbox resume {name}`");
                self.link.gone = true;
                self.gone = Some((marker, true));
            }
            Ok(Some(_)) => {
                tracing::info!(subscription = %name, "its config changed since the endpoint answered 410 Gone: sending again");
                self.writer.set_gone(self.sub.id, None);
            }
            Err(e) => {
                tracing::error!(subscription = %name, error = %e, "cannot read the outbox");
            }
        }
    }

    /// Takes back the batches that failed before the agent stopped
    /// (`outbox::held`): each goes again first, whole, with its id, if it is
    /// still exactly what it was (the same pending events; its id, derived
    /// from them, says so) and still first in line for each of its
    /// entities. One that is not is deleted; its entities go on as usual.
    fn restore_held(&mut self, now: Instant) {
        if self.sub.config.batch.is_none() {
            return;
        }
        let name = &self.sub.config.name;
        let stored = match held::load(&self.reader, self.sub.id) {
            Ok(stored) => stored,
            Err(e) => {
                tracing::error!(subscription = %name, error = %e, "cannot read the held batches; their events go in new batches");
                return;
            }
        };
        let mut stale = Vec::new();
        let mut restored = 0usize;
        for batch in stored {
            match self.check_held(&batch) {
                Ok(Some(parts)) if self.entities.len() + parts.len() <= self.window => {
                    for part in &parts {
                        self.entities.insert(
                            part.entity_id,
                            Entity {
                                state: EntityState::Held,
                                due: now,
                                at: part.first,
                                rewind: None,
                                checked: true,
                                backlogged: false,
                            },
                        );
                    }
                    self.held.push(HeldBatch {
                        id: batch.id,
                        parts,
                        due: now,
                    });
                    restored += 1;
                }
                // No room in the window: its events go in new batches.
                Ok(Some(_)) => {}
                Ok(None) => stale.push(batch.id),
                Err(e) => {
                    tracing::error!(subscription = %name, error = %e, "cannot read a held batch; its events go in new batches");
                }
            }
        }
        if restored > 0 {
            tracing::info!(subscription = %name, batches = restored, "batches that failed before the restart go again first, whole, with their ids");
        }
        if !stale.is_empty() {
            tracing::debug!(subscription = %name, batches = stale.len(), "held batches no longer as they were: their events go in new batches");
            self.writer.forget_held(self.sub.id, stale);
        }
    }

    /// A stored held batch's parts as they stand, if it may go again as it
    /// was; `None` if not.
    fn check_held(&self, batch: &held::StoredHeld) -> rusqlite::Result<Option<Vec<Part>>> {
        let mut parts = Vec::with_capacity(batch.parts.len());
        let mut ids = Vec::new();
        for stored in &batch.parts {
            if self.entities.contains_key(&stored.entity_id)
                || parts.iter().any(|p: &Part| p.entity_id == stored.entity_id)
            {
                return Ok(None);
            }
            if read::undelivered_before(&self.reader, self.sub.id, stored.entity_id, stored.first_entity_seq)? {
                return Ok(None);
            }
            let Some(found) = self.read_part_whole(stored.entity_id, stored.first_entity_seq, stored.count)? else {
                return Ok(None);
            };
            let (Some(first), Some(last)) = (found.first(), found.last()) else {
                return Ok(None);
            };
            parts.push(Part {
                entity_id: stored.entity_id,
                first: Position::of(&first.event),
                last: Position::of(&last.event),
                count: stored.count,
            });
            ids.extend(found.into_iter().map(|h| h.event.event_id));
        }
        let same =
            !parts.is_empty() && batch::batch_id(&self.sub.config.name, ids.iter().map(String::as_str)) == batch.id;
        Ok(same.then_some(parts))
    }

    /// An entity's share of a held batch as it stands: its `count` events
    /// from `first_entity_seq`, if they are all still there and pending
    /// (nothing of it was delivered, parked or reopened since); `None` if not.
    fn read_part_whole(
        &self,
        entity_id: i64,
        first_entity_seq: i64,
        count: usize,
    ) -> rusqlite::Result<Option<Vec<Head>>> {
        let found = read::heads(&self.reader, self.sub.id, entity_id, first_entity_seq, count)?;
        let whole = found.len() == count
            && found.iter().all(|h| h.state == DeliveryState::Pending)
            && found.first().map(|h| h.event.entity_seq) == Some(first_entity_seq);
        Ok(whole.then_some(found))
    }

    /// While stopped by a 410: resumes once `store-outbox resume` deleted
    /// the marker (seen in the outbox before), or stores the marker again if
    /// the writer did not take it yet.
    fn check_resumed(&mut self, now: Instant) {
        let Some((marker, seen)) = self.gone.clone() else {
            return;
        };
        match gone::marker(&self.reader, self.sub.id) {
            Ok(Some(_)) if !seen => self.gone = Some((marker, true)),
            Ok(Some(_)) => {}
            // Not seen yet: not written yet, or written and already deleted
            // by a `resume`, which says so (`gone::resumed_since`).
            Ok(None) if !seen && !self.resumed_since_marker(&marker) => {
                self.writer.set_gone(self.sub.id, Some(marker));
            }
            Ok(None) => {
                tracing::info!(subscription = %self.sub.config.name, "resumed after 410 Gone: sending again");
                self.gone = None;
                self.link.resume(now);
                self.make_every_entity_due(now);
                self.persist_state();
            }
            Err(e) => tracing::debug!(error = %e, "cannot read the 410 marker"),
        }
    }

    /// Whether `resume` deleted this very marker.
    fn resumed_since_marker(&self, marker: &Marker) -> bool {
        match gone::resumed_since(&self.reader, self.sub.id) {
            Ok(since) => since == Some(marker.since_ms),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the resume record");
                false
            }
        }
    }

    /// Every waiting entity and held batch may go now (the link came back,
    /// or resumed).
    fn make_every_entity_due(&mut self, now: Instant) {
        for held in &mut self.held {
            held.due = held.due.min(now);
        }
        let keys: Vec<_> = self.ready.iter().copied().collect();
        for (_, _, id) in keys {
            if let Some(at) = self.entities.get(&id).map(|e| e.at) {
                self.set_ready(id, now, at);
            }
        }
    }

    /// What `status` should say: the state, deliveries in flight, when
    /// the next attempt is planned if the subscription is waiting, and the
    /// request concurrency's limit.
    fn state_to_persist(&self, now: Instant) -> Persisted {
        let next = decide::planned_attempt(&self.ready, &self.link, !self.flights.is_empty(), now);
        let held = batch::held_wake(self.held.iter().map(|h| h.due).min(), &self.link, true, false, now)
            .filter(|at| *at > now && self.flights.is_empty());
        let next = match (next, held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let state = if self.link.gone {
            SubscriptionState::Gone
        } else if self.link.online {
            SubscriptionState::Online
        } else {
            SubscriptionState::Offline
        };
        let in_flight = self
            .flights
            .values()
            .map(|f| f.parts.iter().map(|p| p.count).sum::<usize>())
            .sum();
        (state, in_flight, next, self.concurrency_limit())
    }

    /// Requests that may be on the wire now, as [`Scheduler::slot_free`]
    /// counts them.
    fn concurrency_limit(&self) -> usize {
        self.concurrency.limit().min(self.sub.config.max_in_flight)
    }

    /// Writes online/offline, deliveries in flight, the next planned
    /// attempt (as wall-clock time, for people) and the request
    /// concurrency for `status`.
    fn persist_state(&mut self) {
        let now = Instant::now();
        let persisted = self.state_to_persist(now);
        let (state, in_flight, next, limit) = persisted;
        let next_ms = next.map(|at| now_ms() + at.saturating_duration_since(now).as_millis() as i64);
        let concurrency = ConcurrencyState {
            mode: ConcurrencyMode::of(self.sub.config.adaptive_concurrency),
            limit: limit as i64,
            max_in_flight: self.sub.config.max_in_flight as i64,
        };
        if self
            .writer
            .set_sub_state(self.sub.id, state, in_flight as i64, next_ms, Some(concurrency))
        {
            self.persisted = persisted;
        }
    }

    /// The last write for `status` when the scheduler ends: nothing in
    /// flight, and no concurrency (no scheduler runs the subscription now;
    /// one that starts again, after a reload, writes its own).
    fn persist_stopped(&mut self) {
        let (state, _, _, _) = self.state_to_persist(Instant::now());
        self.writer.set_sub_state(self.sub.id, state, 0, None, None);
    }

    /// Takes the entities with new events into the window. An entity
    /// outside the window has nothing undelivered before its new events,
    /// unless it is blocked behind a parked one (checked before its first
    /// lookup) or a resend reopened some (the next round's check of
    /// `resend_generation` finds them), so its cursor starts at the first
    /// new one. While the scan is not done, or the window is full, new
    /// entities are left to the scan: they come after where it stands.
    fn merge_inbox(&mut self) {
        let now = Instant::now();
        let marked = self.sub.inbox.take();
        if marked.overflowed {
            self.scan.done = false;
        }
        for (entity_id, (seq, entity_seq)) in marked.entities {
            if self.entities.contains_key(&entity_id) {
                continue;
            }
            if !self.scan.done || self.entities.len() >= self.window {
                self.scan.done = false;
                continue;
            }
            self.set_ready(entity_id, now, Position { seq, entity_seq });
        }
    }

    /// Takes entities from the backlog into the window, in ingest order,
    /// until it is three quarters full or the scan reaches the end (inside
    /// the round's read transaction).
    fn scan_backlog(&mut self, now: Instant) -> rusqlite::Result<()> {
        for _ in 0..SCAN_PAGES_PER_ROUND {
            if !self.wants_scan() {
                return Ok(());
            }
            // Never more rows than the window has room for: every row of
            // the page is then looked at.
            let limit = (self.window - self.entities.len()).min(SCAN_PAGE);
            let page = read::pending_page(&self.reader, self.sub.id, self.scan.after, limit)?;
            self.scan.done = page.len() < limit;
            for row in page {
                if !self.entities.contains_key(&row.entity_id) {
                    let at = Position {
                        seq: row.seq,
                        entity_seq: row.entity_seq,
                    };
                    self.set_ready(row.entity_id, now, at);
                }
                self.scan.after = row.seq;
            }
        }
        Ok(())
    }

    /// When to look again if nothing wakes the loop first: the rules'
    /// wake, a lingering batch's, a held batch's.
    fn next_wake(&self, now: Instant) -> Option<Instant> {
        let wake = match self.linger_wake {
            // Lingering: the ready entities wait for company, not their due.
            Some(until) if !self.wants_scan() && until > now => Some(until),
            _ => decide::next_wake(
                &self.ready,
                &self.link,
                self.slot_free(),
                self.probe_in_flight,
                self.storage_pause_until,
                self.wants_scan(),
                now,
            ),
        };
        let held = batch::held_wake(
            self.held.iter().map(|h| h.due).min(),
            &self.link,
            self.slot_free(),
            self.probe_in_flight,
            now,
        );
        let held = held.map(|at| self.storage_pause_until.map_or(at, |until| until.max(at)));
        // Held back by `max_rate` alone: wake when the next request may go.
        let rate = self
            .rate
            .as_ref()
            .and_then(|r| r.next_at(now))
            .filter(|_| !self.ready.is_empty() || !self.held.is_empty());
        [wake, held, rate].into_iter().flatten().min()
    }

    /// The entity to send next, if one may be sent now.
    fn next_pick(&self, now: Instant) -> Option<ReadyKey> {
        decide::next_pick(&self.ready, &self.link, self.slot_free(), self.probe_in_flight, now)
    }

    /// Starts as many requests as the state allows.
    fn dispatch(&mut self) {
        let now = Instant::now();
        if self.storage_pause_until.is_some_and(|until| now < until) {
            return;
        }
        let held_may_go = self.slot_free() && self.held_to_send(now).is_some();
        if self.next_pick(now).is_none() && !self.wants_scan() && !held_may_go {
            return;
        }
        // One read transaction for the round: the check for resends and
        // every lookup see the same commit, so a resend that reopens events
        // behind a cursor is either seen by the check (and the cursors move
        // back first) or by none of the lookups.
        if let Err(e) = read::begin_snapshot(&self.reader) {
            tracing::error!(subscription = %self.sub.config.name, error = %e, "cannot read the outbox");
            self.storage_pause_until = Some(now + READ_RETRY);
            return;
        }
        let scanned = self.catch_up_resends(now) && {
            match self.scan_backlog(now) {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(subscription = %self.sub.config.name, error = %e, "cannot read the backlog");
                    false
                }
            }
        };
        if scanned {
            self.dispatch_round(now);
        } else {
            self.storage_pause_until = Some(now + READ_RETRY);
        }
        if let Err(e) = read::end_snapshot(&self.reader) {
            tracing::debug!(error = %e, "ending a read transaction");
        }
    }

    fn dispatch_round(&mut self, now: Instant) {
        if let Some(batch) = self.sub.config.batch {
            return self.dispatch_batches(now, &batch);
        }
        while let Some(pick) = self.next_pick(now) {
            self.ready.remove(&pick);
            let entity_id = pick.2;
            let Some(cursor) = self.cursor_if_unblocked(entity_id, now) else {
                continue;
            };
            let head = match read::head(&self.reader, self.sub.id, entity_id, cursor.entity_seq) {
                Ok(Some(head)) => head,
                Ok(None) => {
                    self.forget(entity_id);
                    continue;
                }
                Err(e) => {
                    tracing::error!(subscription = %self.sub.config.name, error = %e, "cannot read the next event");
                    self.set_ready(entity_id, now + READ_RETRY, cursor);
                    return;
                }
            };
            let at = Position::of(&head.event);
            if head.state == DeliveryState::Parked {
                self.forget(entity_id);
                continue;
            }
            let was_probe = !self.link.online;
            let parts = vec![Part {
                entity_id,
                first: at,
                last: at,
                count: 1,
            }];
            if !self.hand_to_courier(Unit::One(head), parts, None, was_probe, now) {
                return;
            }
            if was_probe {
                return;
            }
        }
    }

    /// The cursor of a picked entity, or `None` when it must not go: it is
    /// no longer in the window, it is blocked behind a parked event (it
    /// leaves the window), or the check could not be read (it waits).
    fn cursor_if_unblocked(&mut self, entity_id: i64, now: Instant) -> Option<Position> {
        let (cursor, checked) = self.entities.get(&entity_id).map(|e| (e.at, e.checked))?;
        if checked {
            return Some(cursor);
        }
        match read::parked_before(&self.reader, self.sub.id, entity_id, cursor.entity_seq) {
            Ok(true) => {
                // Blocked behind a parked event: nothing of it goes until a
                // resend, which brings it back.
                self.forget(entity_id);
                None
            }
            Ok(false) => {
                if let Some(entity) = self.entities.get_mut(&entity_id) {
                    entity.checked = true;
                }
                Some(cursor)
            }
            Err(e) => {
                tracing::error!(subscription = %self.sub.config.name, error = %e, "cannot read the next event");
                self.set_ready(entity_id, now + READ_RETRY, cursor);
                None
            }
        }
    }

    /// With `batch`: first the batches waiting for their retry (each goes
    /// again whole, same events, same order, same id), then new batches of
    /// the ready entities, each entity with its consecutive pending events.
    fn dispatch_batches(&mut self, now: Instant, config: &BatchConfig) {
        self.linger_wake = None;
        while self.slot_free() {
            if let Some(index) = self.held_to_send(now) {
                let held = self.held.swap_remove(index);
                let was_probe = !self.link.online;
                if self.resend_held(held, was_probe, now) && was_probe {
                    return;
                }
                continue;
            }
            let Some(first) = self.next_pick(now) else {
                return;
            };
            let was_probe = !self.link.online;
            if !was_probe {
                let ready = self.ready.range(..=(now, i64::MAX, i64::MAX)).take(config.max_events);
                let ready_now = ready.clone().count();
                // Only needed when the ready entities alone do not fill it.
                let backlogged = ready_now < config.max_events
                    && ready
                        .clone()
                        .any(|key| self.entities.get(&key.2).is_some_and(|e| e.backlogged));
                if let Err(until) = batch::may_form(first.0, ready_now, backlogged, config, now) {
                    self.linger_wake = Some(until);
                    return;
                }
            }
            if !self.form_batch(config, was_probe, now) || was_probe {
                return;
            }
        }
    }

    /// The batch waiting for its retry that may go now, if any: online the
    /// earliest due, offline (as the probe) the oldest.
    fn held_to_send(&self, now: Instant) -> Option<usize> {
        let (index, held) = if self.link.online {
            self.held.iter().enumerate().min_by_key(|(_, h)| h.due)?
        } else {
            self.held.iter().enumerate().min_by_key(|(_, h)| h.parts[0].first.seq)?
        };
        batch::held_may_go(held.due, &self.link, self.probe_in_flight, now).then_some(index)
    }

    /// Sends a held batch again as it was, read afresh (its attempts and
    /// give-up clock as recorded). If it is no longer what it was (a resend
    /// reopened events of one of its entities), it is broken up: each entity
    /// goes on from its first event, in new batches. False if it could not
    /// be handed to a courier.
    fn resend_held(&mut self, held: HeldBatch, was_probe: bool, now: Instant) -> bool {
        let rewound = held.parts.iter().any(|p| {
            self.entities
                .get(&p.entity_id)
                .is_none_or(|e| e.rewind.is_some() || e.state != EntityState::Held)
        });
        let mut heads = Vec::new();
        let mut intact = !rewound;
        for part in &held.parts {
            if !intact {
                break;
            }
            match self.read_part_whole(part.entity_id, part.first.entity_seq, part.count) {
                Ok(found) => {
                    intact = found
                        .as_ref()
                        .is_some_and(|f| f.last().map(|h| Position::of(&h.event)) == Some(part.last));
                    heads.extend(found.into_iter().flatten());
                }
                Err(e) => {
                    tracing::error!(subscription = %self.sub.config.name, error = %e, "cannot read the next event");
                    self.held.push(HeldBatch {
                        due: now + READ_RETRY,
                        ..held
                    });
                    return false;
                }
            }
        }
        if !intact {
            self.writer.forget_held(self.sub.id, vec![held.id.clone()]);
            for part in &held.parts {
                let rewind = self.entities.get_mut(&part.entity_id).and_then(|e| e.rewind.take());
                if self.entities.contains_key(&part.entity_id) {
                    self.set_ready(part.entity_id, now, part.first.or_earlier(rewind));
                }
            }
            return true;
        }
        let unit = Unit::Batch {
            id: held.id.clone(),
            heads,
            parts: stored_parts(&held.parts),
        };
        self.hand_to_courier(unit, held.parts, Some(held.id), was_probe, now)
    }

    /// Forms a new batch from the ready entities, in the order they may go,
    /// each with its consecutive pending events, until `max_events` or
    /// `max_bytes`; a probe takes one entity. False if nothing could be
    /// handed to a courier.
    fn form_batch(&mut self, config: &BatchConfig, was_probe: bool, now: Instant) -> bool {
        let mut heads: Vec<Head> = Vec::new();
        let mut parts: Vec<Part> = Vec::new();
        let mut bytes: u64 = 2;
        let destination = self.destination.clone();
        while heads.len() < config.max_events {
            let Some(pick) = self.next_pick(now) else {
                break;
            };
            self.ready.remove(&pick);
            let entity_id = pick.2;
            let Some(cursor) = self.cursor_if_unblocked(entity_id, now) else {
                continue;
            };
            let room = config.max_events - heads.len();
            let found = match read::heads(&self.reader, self.sub.id, entity_id, cursor.entity_seq, room) {
                Ok(found) => found,
                Err(e) => {
                    tracing::error!(subscription = %self.sub.config.name, error = %e, "cannot read the next event");
                    self.set_ready(entity_id, now + READ_RETRY, cursor);
                    break;
                }
            };
            if found.is_empty() {
                self.forget(entity_id);
                continue;
            }
            if found[0].state == DeliveryState::Parked {
                self.forget(entity_id);
                continue;
            }
            let mut taken = 0;
            // Every event read fitting means there may be more (as many
            // were read as there was room for); one not fitting, that
            // there are.
            let mut backlogged = found.len() == room;
            for head in found {
                if head.state != DeliveryState::Pending {
                    backlogged = false;
                    break;
                }
                let size = destination.batch_bytes(&head.event) as u64;
                if !batch::fits(heads.len(), bytes, size, config) {
                    backlogged = true;
                    break;
                }
                bytes += size;
                heads.push(head);
                taken += 1;
            }
            if let Some(entity) = self.entities.get_mut(&entity_id) {
                entity.backlogged = backlogged;
            }
            if taken == 0 {
                // Full by bytes: the entity goes in the next batch.
                self.set_ready(entity_id, now, cursor);
                break;
            }
            let first = Position::of(&heads[heads.len() - taken].event);
            let last = Position::of(&heads[heads.len() - 1].event);
            parts.push(Part {
                entity_id,
                first,
                last,
                count: taken,
            });
            if was_probe || heads.len() >= config.max_events || bytes >= config.max_bytes {
                break;
            }
        }
        if heads.is_empty() {
            return false;
        }
        let id = batch::batch_id(&self.sub.config.name, heads.iter().map(|h| h.event.event_id.as_str()));
        let unit = Unit::Batch {
            id: id.clone(),
            heads,
            parts: stored_parts(&parts),
        };
        self.hand_to_courier(unit, parts, Some(id), was_probe, now)
    }

    /// Gives a unit to an idle courier and marks its entities in flight;
    /// false if no courier could take it (its entities wait a little).
    fn hand_to_courier(
        &mut self,
        unit: Unit,
        parts: Vec<Part>,
        batch_id: Option<String>,
        was_probe: bool,
        now: Instant,
    ) -> bool {
        // `next_pick` saw an idle courier; a courier that is gone (the
        // runtime is stopping) leaves the entities waiting.
        let handed = match self.idle.pop() {
            None => false,
            Some(courier) => {
                let job = Job {
                    ticket: self.next_ticket,
                    unit,
                    expected: self.writer.expect_outcome(),
                };
                let ok = self.couriers[courier].try_send(job).is_ok();
                if !ok {
                    tracing::error!(subscription = %self.sub.config.name, "a courier is gone; the event waits");
                }
                ok
            }
        };
        if !handed {
            for part in &parts {
                self.set_ready(part.entity_id, now + READ_RETRY, part.first);
            }
            return false;
        }
        for part in &parts {
            self.set_state(part.entity_id, EntityState::InFlight, part.first);
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.flights.insert(
            ticket,
            Flight {
                parts,
                batch_id,
                was_probe,
                answered: None,
            },
        );
        self.requests += 1;
        self.concurrency.on_start(self.requests);
        self.probe_in_flight |= was_probe;
        if let Some(rate) = &mut self.rate {
            rate.take(now);
        }
        true
    }

    /// Applies a committed (or failed) outcome to the scheduling state.
    fn on_recorded(&mut self, recorded: Recorded) {
        let Some(mut flight) = self.flights.remove(&recorded.ticket) else {
            tracing::error!(subscription = %self.sub.config.name, ticket = recorded.ticket, "an outcome for no delivery in flight");
            return;
        };
        let now = Instant::now();
        if flight.was_probe {
            self.probe_in_flight = false;
        }
        let Some((answer, plan)) = flight.answered.take() else {
            // Cannot happen (the answer is always taken first); if it did,
            // the events are simply sent again.
            tracing::error!(subscription = %self.sub.config.name, "an outcome without its answer; the event goes again");
            self.requests = self.requests.saturating_sub(1);
            self.release(&flight, Decision::Hold, Duration::ZERO, now);
            return;
        };
        if answer.kind != AnswerKind::Delivered {
            // A failure held its request slot until now.
            self.requests = self.requests.saturating_sub(1);
        }
        if let Err(error) = recorded.result {
            self.on_unrecorded(flight, &error, now);
            return;
        }
        if self.unrecorded_in_a_row > 0 {
            tracing::info!(subscription = %self.sub.config.name, "delivery outcomes are recorded again; resuming");
            self.unrecorded_in_a_row = 0;
            self.storage_pause_until = None;
        }
        let change = self.link.on_answer(
            &answer,
            flight.was_probe,
            &self.sub.config.retry,
            rand::random::<f64>(),
            now,
        );
        self.on_link_change(change, &answer, now);
        if plan.decision == Decision::Park {
            tracing::warn!(subscription = %self.sub.config.name, error = ?answer.error, events = flight.parts.iter().map(|p| p.count).sum::<usize>(),
                "delivery parked after retry.give_up_after; its entity waits until it is resent");
        }
        self.release(&flight, plan.decision, plan.wait, now);
    }

    /// Where the entities of a finished request go. A batch that is to be
    /// tried again is held whole (same events, same order, same id) unless a
    /// resend reopened events of one of its entities meanwhile; then each
    /// entity goes on by itself, as after a single event.
    fn release(&mut self, flight: &Flight, decision: Decision, wait: Duration, now: Instant) {
        let again = matches!(decision, Decision::Retry { .. } | Decision::Hold);
        if let (true, Some(id)) = (again, &flight.batch_id) {
            // Nothing of a failed batch was delivered, so a rewind to its own
            // first event (an in-flight entity's, set by any resend) changes
            // nothing; only one to an event before it breaks the batch.
            let rewound = flight.parts.iter().any(|p| {
                self.entities
                    .get(&p.entity_id)
                    .is_none_or(|e| e.rewind.is_some_and(|r| r < p.first))
            });
            if !rewound {
                for part in &flight.parts {
                    if let Some(entity) = self.entities.get_mut(&part.entity_id) {
                        entity.rewind = None;
                    }
                    self.set_state(part.entity_id, EntityState::Held, part.first);
                }
                self.held.push(HeldBatch {
                    id: id.clone(),
                    parts: flight.parts.clone(),
                    due: now + wait,
                });
                return;
            }
            // Stored as held with its outcomes; it will not go again as it was.
            self.writer.forget_held(self.sub.id, vec![id.clone()]);
        }
        for part in &flight.parts {
            let rewind = self.entities.get_mut(&part.entity_id).and_then(|e| e.rewind.take());
            let sent = if decision == Decision::Delivered {
                part.last
            } else {
                part.first
            };
            match decide::entity_after(decision, wait, sent, rewind, now) {
                EntityNext::Ready { due, from } => self.set_ready(part.entity_id, due, from),
                EntityNext::Parked { .. } => self.forget(part.entity_id),
            }
        }
    }

    /// The outcome is not durable: the same events go again later, and the
    /// whole subscription pauses, since every outcome fails the same way
    /// until the writer can commit again.
    fn on_unrecorded(&mut self, flight: Flight, error: &str, now: Instant) {
        let name = &self.sub.config.name;
        tracing::warn!(subscription = %name, error = %error, "cannot record a delivery attempt; it will be repeated");
        self.unrecorded_in_a_row = self.unrecorded_in_a_row.saturating_add(1);
        if self.unrecorded_in_a_row == 1 {
            tracing::warn!(subscription = %name, "cannot record delivery outcomes; pausing this subscription until the outbox takes writes again");
        }
        let pause = decide::storage_pause(self.unrecorded_in_a_row);
        self.storage_pause_until = Some(now + pause);
        self.release(&flight, Decision::Hold, pause, now);
    }

    /// Logs and records a change of the link; a link back up makes every
    /// waiting entity due at once.
    fn on_link_change(&mut self, change: LinkChange, answer: &Answer, now: Instant) {
        let name = &self.sub.config.name;
        match change {
            LinkChange::None => {}
            LinkChange::WentOffline => {
                tracing::warn!(subscription = %name, url = %self.sub.config.url_for_logs(), error = ?answer.error,
                    "endpoint is down; probing it at the backoff pace");
                self.persist_state();
            }
            LinkChange::CameBack { down_for } => {
                tracing::info!(subscription = %name, offline_for = %humantime::format_duration(Duration::from_secs(down_for.as_secs())),
                    waiting_entities = self.ready.len() + 1, "endpoint is up again, draining the backlog");
                self.persist_state();
                self.make_every_entity_due(now);
            }
        }
    }

    /// Checks `resend_generation`, which every resend bumps: a resend may
    /// have reopened events behind the cursors of entities in the window
    /// (those cursors move back) and of entities outside it (the scan starts
    /// again from the beginning). At start the window is empty and the scan
    /// starts anyway. Returns false if the outbox could not be read: nothing
    /// may be looked up then, since a cursor could pass events reopened
    /// behind it.
    fn catch_up_resends(&mut self, now: Instant) -> bool {
        let generation = match read::meta(&self.reader, "resend_generation") {
            Ok(generation) => generation,
            Err(e) => {
                tracing::error!(subscription = %self.sub.config.name, error = %e, "cannot read the outbox");
                return false;
            }
        };
        if self.resend_generation.as_ref() == Some(&generation) {
            return true;
        }
        // The first open event of every entity in the window; memory stays
        // bounded by the window, whatever the backlog.
        let mut first: HashMap<i64, Position> = HashMap::new();
        if !self.entities.is_empty() {
            let window = &self.entities;
            let read = read::each_open(&self.reader, self.sub.id, |entity_id, seq, entity_seq| {
                if window.contains_key(&entity_id) {
                    let at = Position { seq, entity_seq };
                    first.entry(entity_id).and_modify(|p| *p = (*p).min(at)).or_insert(at);
                }
            });
            if let Err(e) = read {
                tracing::error!(subscription = %self.sub.config.name, error = %e, "cannot read the backlog");
                return false;
            }
        }
        self.resend_generation = Some(generation);
        self.scan = Scan::START;
        for (entity_id, first) in first {
            match self.entities.get_mut(&entity_id) {
                None => {}
                // A held batch goes again whole unless the resend reopened an
                // event before it (a resend that touched other entities, or
                // queued nothing, must not change its events or its id).
                Some(entity) if entity.state == EntityState::Held && first < entity.at => {
                    entity.rewind = Some(first.or_earlier(entity.rewind));
                }
                Some(entity) if entity.state == EntityState::Held => {}
                // In flight: its outcome may be voided by the resend (see
                // `outbox::resend`), so it goes on from its first open event;
                // a failed batch stays whole all the same (`release`).
                Some(entity) if entity.state != EntityState::Ready => {
                    entity.rewind = Some(first.or_earlier(entity.rewind));
                }
                // Its head may now be an earlier, resent event.
                Some(entity) => {
                    let at = entity.at.min(first);
                    self.set_ready(entity_id, now, at);
                }
            }
        }
        true
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
