//! One scheduler per subscription: decides which event is sent next.
//!
//! Invariants kept here:
//! - **Order per entity**: at most one request per entity is in flight, and
//!   the next event of an entity is looked up (from the database) only after
//!   the previous one's outcome is *committed*. So event n+1 is never sent
//!   before n's 2xx is durable, and after a crash a receiver can at worst see
//!   n again, never n after n+1.
//! - **Cursors**: each entity's next event is looked up from a cursor (an
//!   `entity_seq` before which everything of the entity is delivered), so the
//!   database needs no entity-keyed index that changes with every outcome.
//!   Only a resend reopens events behind a cursor, and it bumps
//!   `resend_generation`: every round of lookups first checks that counter in
//!   the same read transaction and moves the cursors back before reading.
//! - **Parked blocks its entity only**: a parked head keeps its entity out of
//!   the ready set; other entities go on.
//! - **Offline probing**: while the endpoint is down, one request at a time,
//!   at the backoff pace, with the oldest waiting event; the first 2xx brings
//!   the subscription back online and every entity becomes due at once.
//! - Timers use `Instant` (monotonic): wall-clock jumps do not move them.
//!
//! Requests are sent by a fixed set of couriers, one per request slot, fed
//! one event at a time: no task is spawned per event. A courier queues the
//! outcome and is free for the next event at once; the writer reports the
//! commit straight to the scheduler.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::backoff;
use super::webhook::{Attempt, AttemptKind, Endpoint};
use crate::config::RetryConfig;
use crate::metrics::Metrics;
use crate::outbox::read::{self, Head};
use crate::outbox::state::{DeliveryState, SubscriptionState};
use crate::outbox::writer::{ExpectedOutcome, Outcome, OutcomeDone, Starving, Verdict, Writer};
use crate::outbox::{now_ms, Subscription};
use crate::shutdown::Shutdown;

/// Failures in a row, of any kind, after which the endpoint counts as down
/// even if it keeps answering (a receiver that fails every request).
const FAILURES_BEFORE_OFFLINE: u32 = 5;
/// The longest pause after outcomes that could not be committed.
const STORAGE_PAUSE_MAX: Duration = Duration::from_secs(30);
/// How often `resend_generation` is looked at while nothing is sent (an
/// operator may resend parked or delivered events).
const RESYNC_EVERY: Duration = Duration::from_secs(2);
/// The pause after the outbox could not be read.
const READ_RETRY: Duration = Duration::from_secs(1);
/// Deliveries (answered and waiting for their commit, or still in flight)
/// allowed per request slot: bounds memory when commits stall.
const TASKS_PER_SLOT: usize = 32;

/// Where an entity stands in this subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntityState {
    /// Its head may be sent once `due`.
    Ready,
    /// A request for its head is in flight.
    InFlight,
    /// Its head is parked: nothing of it is sent until resent.
    Parked,
}

struct Entity {
    state: EntityState,
    /// When its head may be sent (backoff).
    due: Instant,
    /// Its head, or the cursor its head is looked up from: everything of the
    /// entity before it is delivered.
    at: Position,
    /// A resend reopened this earlier event while a request of the entity
    /// was in flight: the cursor goes back here when that request finishes.
    rewind: Option<Position>,
}

/// A place in an entity's order. `seq` and `entity_seq` grow together within
/// an entity, so either orders it; `seq` also orders entities by age.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Position {
    seq: i64,
    entity_seq: i64,
}

impl Position {
    fn of(event: &crate::outbox::read::StoredEvent) -> Self {
        Position {
            seq: event.seq,
            entity_seq: event.entity_seq,
        }
    }

    /// A lower bound of the entity's next event.
    fn next(self) -> Self {
        Position {
            seq: self.seq.saturating_add(1),
            entity_seq: self.entity_seq.saturating_add(1),
        }
    }
}

/// A finished delivery: its outcome committed, or why it could not be.
struct Done {
    entity_id: i64,
    /// The event that was sent.
    sent: Position,
    attempt: Attempt,
    /// Attempts of this delivery, including this one.
    attempts: i64,
    /// Why the outcome is not committed, if it is not: the event is sent
    /// again.
    unrecorded: Option<String>,
    verdict: Verdict,
    was_probe: bool,
}

/// One event for a courier to send.
struct Job {
    entity_id: i64,
    head: Head,
    was_probe: bool,
    /// Lets the writer hold a group of outcomes for this one.
    expected: ExpectedOutcome,
}

/// What reaches the scheduler from couriers and the writer.
enum Report {
    /// A courier has its answer (its outcome is being queued) and is free;
    /// on a 2xx the request slot is free too.
    Answered { courier: usize, delivered: bool },
    /// An outcome was committed, or could not be.
    Finished(Done),
}

/// Everything a scheduler needs.
pub struct Scheduler {
    sub: Subscription,
    endpoint: Arc<Endpoint>,
    writer: Writer,
    reader: Connection,
    shutdown: Shutdown,
    /// In-memory delivery metrics.
    metrics: Metrics,
    /// Bounded wait for in-flight requests at shutdown.
    grace: Duration,
    entities: HashMap<i64, Entity>,
    /// (due, head seq, entity id) of every `Ready` entity.
    ready: BTreeSet<(Instant, i64, i64)>,
    /// Deliveries not finished yet (request sent, or answered and waiting
    /// for the outcome's commit); shown in `status`.
    in_flight: usize,
    /// Requests not answered yet: what `max_in_flight` caps. A request gives
    /// its slot back as soon as the answer is in, before its outcome is
    /// committed; its entity stays `InFlight` until then, so the next event
    /// of that entity still waits for the commit (order is unchanged).
    requests: usize,
    reports_tx: mpsc::UnboundedSender<Report>,
    reports_rx: mpsc::UnboundedReceiver<Report>,
    /// Each courier's queue of one event (started by `run`).
    couriers: Vec<mpsc::Sender<Job>>,
    /// Couriers without an event.
    idle: Vec<usize>,
    online: bool,
    /// Failures in a row (any kind), reset by a 2xx.
    failures_in_a_row: u32,
    /// Failed probes in a row while offline, for the probe backoff.
    probe_failures: u32,
    next_probe_at: Instant,
    probe_in_flight: bool,
    offline_since: Option<Instant>,
    /// Outcomes in a row that could not be committed (a full disk, a broken
    /// database): no request starts before `storage_pause_until`, so the
    /// endpoint is not flooded with repeats of events we cannot mark. The
    /// same pause (`READ_RETRY`) follows a failed read of the outbox.
    unrecorded_in_a_row: u32,
    storage_pause_until: Option<Instant>,
    /// (online, in flight) as last written for `status`.
    persisted: (bool, usize),
    /// `resend_generation` when the open entities were last read; `None`
    /// until they were read once.
    resend_generation: Option<Option<String>>,
    /// Stamped at every turn of the loop's tick, for the watchdog.
    heartbeat: crate::notify::Heartbeat,
    /// Tells the writer when this scheduler waits for commits with a slot
    /// free (then outcomes must not wait for each other).
    starving: Starving,
}

impl Scheduler {
    /// Prepares the scheduler of one subscription.
    pub fn new(
        sub: Subscription,
        endpoint: Arc<Endpoint>,
        writer: Writer,
        reader: Connection,
        shutdown: Shutdown,
        grace: Duration,
        metrics: Metrics,
    ) -> Self {
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        let starving = writer.starving();
        Scheduler {
            sub,
            endpoint,
            writer,
            reader,
            shutdown,
            metrics,
            grace,
            entities: HashMap::new(),
            ready: BTreeSet::new(),
            in_flight: 0,
            requests: 0,
            reports_tx,
            reports_rx,
            couriers: Vec::new(),
            idle: Vec::new(),
            online: true,
            failures_in_a_row: 0,
            probe_failures: 0,
            next_probe_at: Instant::now(),
            probe_in_flight: false,
            offline_since: None,
            unrecorded_in_a_row: 0,
            storage_pause_until: None,
            persisted: (false, usize::MAX),
            resend_generation: None,
            starving,
            heartbeat: {
                let beat = crate::notify::Heartbeat::default();
                beat.beat();
                beat
            },
        }
    }

    /// The heartbeat the watchdog reads.
    pub fn heartbeat(&self) -> crate::notify::Heartbeat {
        self.heartbeat.clone()
    }

    /// A request slot is free and nothing is ready to go now, while
    /// deliveries are under way: the next events wait for their commits.
    fn is_starving(&self) -> bool {
        self.online
            && self.in_flight > 0
            && self.has_slot()
            && self.ready.first().is_none_or(|(due, _, _)| *due > Instant::now())
    }

    /// Whether another request may start (online).
    fn has_slot(&self) -> bool {
        let max = self.sub.config.max_in_flight;
        self.requests < max && self.in_flight < max * TASKS_PER_SLOT && !self.idle.is_empty()
    }

    fn retry(&self) -> RetryConfig {
        self.sub.config.retry
    }

    fn set_ready(&mut self, entity_id: i64, due: Instant, at: Position) {
        let entity = self.entities.entry(entity_id).or_insert(Entity {
            state: EntityState::Ready,
            due,
            at,
            rewind: None,
        });
        if entity.state == EntityState::Ready {
            self.ready.remove(&(entity.due, entity.at.seq, entity_id));
        }
        entity.state = EntityState::Ready;
        entity.due = due;
        entity.at = at;
        self.ready.insert((due, at.seq, entity_id));
    }

    fn take_ready(&mut self, key: (Instant, i64, i64)) {
        self.ready.remove(&key);
    }

    /// Runs until shutdown.
    pub async fn run(mut self) {
        self.catch_up_resends(Instant::now());
        // One courier per request slot: a request holds its slot at least
        // until it is answered, so a courier is always free for a slot.
        let mut couriers = JoinSet::new();
        for index in 0..self.sub.config.max_in_flight {
            let (jobs_tx, jobs_rx) = mpsc::channel(1);
            let courier = Courier {
                index,
                endpoint: self.endpoint.clone(),
                writer: self.writer.clone(),
                sub_id: self.sub.id,
                name: self.sub.config.name.clone(),
                retry: self.retry(),
                metrics: self.metrics.clone(),
                reports: self.reports_tx.clone(),
            };
            couriers.spawn(courier.work(jobs_rx));
            self.couriers.push(jobs_tx);
            self.idle.push(index);
        }
        let mut tick = tokio::time::interval(RESYNC_EVERY);
        let mut shutdown = self.shutdown.clone();
        self.persist_state();
        loop {
            self.dispatch();
            self.starving.set(self.is_starving());
            let wake = self.next_wake();
            tokio::select! {
                Some(report) = self.reports_rx.recv() => {
                    // A group commit reports many outcomes at once: take them
                    // all before the next round of lookups (one read
                    // transaction and one check for resends for all).
                    self.on_report(report);
                    while let Ok(report) = self.reports_rx.try_recv() {
                        self.on_report(report);
                    }
                }
                _ = self.sub.inbox.wait() => self.merge_inbox(),
                _ = sleep_until_opt(wake) => {}
                _ = tick.tick() => {
                    self.heartbeat.beat();
                    self.catch_up_resends(Instant::now());
                    if self.persisted != (self.online, self.in_flight) {
                        self.persist_state();
                    }
                }
                _ = shutdown.wait() => break,
            }
        }
        // Give requests in flight a bounded time; what does not finish is
        // simply sent again after the restart (at least once).
        let deadline = Instant::now() + self.grace;
        while self.in_flight > 0 {
            match tokio::time::timeout_at(deadline, self.reports_rx.recv()).await {
                Ok(Some(report)) => self.on_report(report),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(subscription = %self.sub.config.name, requests = self.in_flight, "stopping with requests in flight; they will be sent again");
                    break;
                }
            }
        }
        couriers.abort_all();
        self.in_flight = 0;
        self.persist_state();
    }

    fn on_report(&mut self, report: Report) {
        match report {
            Report::Answered { courier, delivered } => {
                self.idle.push(courier);
                if delivered {
                    self.requests = self.requests.saturating_sub(1);
                }
            }
            Report::Finished(done) => self.finish(done),
        }
    }

    /// Writes online/offline and requests in flight for `status`.
    fn persist_state(&mut self) {
        if self
            .writer
            .set_sub_state(self.sub.id, self.state_name(), self.in_flight as i64)
        {
            self.persisted = (self.online, self.in_flight);
        }
    }

    fn state_name(&self) -> SubscriptionState {
        if self.online {
            SubscriptionState::Online
        } else {
            SubscriptionState::Offline
        }
    }

    /// When something becomes due, if nothing else wakes us first.
    fn next_wake(&self) -> Option<Instant> {
        if let Some(until) = self.storage_pause_until.filter(|until| *until > Instant::now()) {
            return Some(until);
        }
        if self.online {
            if !self.has_slot() {
                return None;
            }
            self.ready.first().map(|(due, _, _)| *due)
        } else if self.probe_in_flight || self.ready.is_empty() || self.idle.is_empty() {
            None
        } else {
            Some(self.next_probe_at)
        }
    }

    fn merge_inbox(&mut self) {
        let now = Instant::now();
        // An entity not tracked has nothing undelivered before its new
        // events (or a resend reopened some, which the next round's check
        // of `resend_generation` finds), so its cursor starts at the first
        // new one.
        for (entity_id, (seq, entity_seq)) in self.sub.inbox.take() {
            if !self.entities.contains_key(&entity_id) {
                self.set_ready(entity_id, now, Position { seq, entity_seq });
            }
        }
    }

    /// The entity to send next, if one may be sent now.
    fn next_pick(&self, now: Instant) -> Option<(Instant, i64, i64)> {
        if self.online {
            if !self.has_slot() {
                return None;
            }
            self.ready.first().copied().filter(|key| key.0 <= now)
        } else {
            if self.probe_in_flight || now < self.next_probe_at || self.idle.is_empty() {
                return None;
            }
            // The oldest waiting event, whatever its entity's own backoff.
            self.ready.iter().min_by_key(|(_, seq, _)| *seq).copied()
        }
    }

    /// Starts as many requests as the state allows.
    fn dispatch(&mut self) {
        let now = Instant::now();
        if self.storage_pause_until.is_some_and(|until| now < until) {
            return;
        }
        if self.next_pick(now).is_none() {
            return;
        }
        // One read transaction for the round: the check for resends and
        // every lookup see the same commit, so a resend that reopens events
        // behind a cursor is either seen by the check (and the cursors move
        // back first) or by none of the lookups.
        if !self.reader.is_autocommit() {
            let _ = self.reader.execute_batch("ROLLBACK");
        }
        if let Err(e) = self.reader.prepare_cached("BEGIN").and_then(|mut s| s.execute([])) {
            tracing::error!(subscription = %self.sub.config.name, error = %e, "cannot read the outbox");
            self.storage_pause_until = Some(now + READ_RETRY);
            return;
        }
        if self.catch_up_resends(now) {
            self.dispatch_round(now);
        } else {
            self.storage_pause_until = Some(now + READ_RETRY);
        }
        if let Err(e) = self.reader.prepare_cached("COMMIT").and_then(|mut s| s.execute([])) {
            tracing::debug!(error = %e, "ending a read transaction");
        }
    }

    fn dispatch_round(&mut self, now: Instant) {
        while let Some(pick) = self.next_pick(now) {
            self.take_ready(pick);
            let entity_id = pick.2;
            let Some(cursor) = self.entities.get(&entity_id).map(|e| e.at) else {
                continue;
            };
            let head = match read::head(&self.reader, self.sub.id, entity_id, cursor.entity_seq) {
                Ok(Some(head)) => head,
                Ok(None) => {
                    self.entities.remove(&entity_id);
                    continue;
                }
                Err(e) => {
                    tracing::error!(subscription = %self.sub.config.name, error = %e, "cannot read the next event");
                    self.set_ready(entity_id, now + Duration::from_secs(1), cursor);
                    return;
                }
            };
            let at = Position::of(&head.event);
            if head.state == DeliveryState::Parked {
                if let Some(entity) = self.entities.get_mut(&entity_id) {
                    entity.state = EntityState::Parked;
                    entity.at = at;
                }
                continue;
            }
            // `next_pick` saw an idle courier.
            let Some(courier) = self.idle.pop() else {
                self.set_ready(entity_id, now, cursor);
                return;
            };
            let was_probe = !self.online;
            let job = Job {
                entity_id,
                head,
                was_probe,
                expected: self.writer.expect_outcome(),
            };
            if self.couriers[courier].try_send(job).is_err() {
                // Only if the courier is gone (the runtime is stopping).
                tracing::error!(subscription = %self.sub.config.name, "a courier is gone; the event waits");
                self.set_ready(entity_id, now + READ_RETRY, cursor);
                return;
            }
            if let Some(entity) = self.entities.get_mut(&entity_id) {
                entity.state = EntityState::InFlight;
                entity.at = at;
            }
            self.in_flight += 1;
            self.requests += 1;
            self.probe_in_flight |= was_probe;
            if was_probe {
                return;
            }
        }
    }

    /// Applies a finished delivery to the scheduling state.
    fn finish(&mut self, done: Done) {
        self.in_flight = self.in_flight.saturating_sub(1);
        // A 2xx gave its request slot back with `Report::Answered`; a
        // failure holds it until now.
        if done.attempt.kind != AttemptKind::Delivered {
            self.requests = self.requests.saturating_sub(1);
        }
        if done.was_probe {
            self.probe_in_flight = false;
        }
        let now = Instant::now();
        // Where the entity goes on from: after the event sent, or back to an
        // event a resend reopened meanwhile.
        let rewind = self.entities.get_mut(&done.entity_id).and_then(|e| e.rewind.take());
        let from = |p: Position| rewind.map_or(p, |r| r.min(p));
        let name = self.sub.config.name.clone();
        if let Some(error) = &done.unrecorded {
            tracing::warn!(subscription = %name, error = %error, "cannot record a delivery attempt; it will be repeated");
            // The outcome is not durable: send the same event again later,
            // and pause the whole subscription, since every outcome fails the
            // same way until the writer can commit again (1 s, doubling, at
            // most 30 s).
            self.unrecorded_in_a_row = self.unrecorded_in_a_row.saturating_add(1);
            let pause =
                Duration::from_secs(1 << self.unrecorded_in_a_row.min(6).saturating_sub(1)).min(STORAGE_PAUSE_MAX);
            if self.unrecorded_in_a_row == 1 {
                tracing::warn!(subscription = %name, "cannot record delivery outcomes; pausing this subscription until the outbox takes writes again");
            }
            self.storage_pause_until = Some(now + pause);
            self.set_ready(done.entity_id, now + pause, from(done.sent));
            return;
        }
        if self.unrecorded_in_a_row > 0 {
            tracing::info!(subscription = %name, "delivery outcomes are recorded again; resuming");
            self.unrecorded_in_a_row = 0;
            self.storage_pause_until = None;
        }
        match done.attempt.kind {
            AttemptKind::Delivered => {
                self.failures_in_a_row = 0;
                if !self.online {
                    let down_for = self.offline_since.map(|t| t.elapsed()).unwrap_or_default();
                    tracing::info!(subscription = %name, offline_for = %humantime::format_duration(Duration::from_secs(down_for.as_secs())),
                        waiting_entities = self.ready.len() + 1, "endpoint is up again, draining the backlog");
                    self.online = true;
                    self.probe_failures = 0;
                    self.offline_since = None;
                    self.persist_state();
                    let keys: Vec<_> = self.ready.iter().copied().collect();
                    for (_, _, id) in keys {
                        if let Some(at) = self.entities.get(&id).map(|e| e.at) {
                            self.set_ready(id, now, at);
                        }
                    }
                }
                // The next event of this entity is strictly later.
                self.set_ready(done.entity_id, now, from(done.sent.next()));
            }
            kind => {
                self.failures_in_a_row += 1;
                let endpoint_down =
                    kind == AttemptKind::EndpointDown || self.failures_in_a_row >= FAILURES_BEFORE_OFFLINE;
                if endpoint_down && (self.online || done.was_probe) {
                    if self.online {
                        tracing::warn!(subscription = %name, url = %self.sub.config.url_for_logs(), error = ?done.attempt.error,
                            "endpoint is down; probing it at the backoff pace");
                        self.online = false;
                        self.offline_since = Some(now);
                        self.probe_failures = 0;
                        self.persist_state();
                    }
                    self.probe_failures += 1;
                    let wait = done
                        .attempt
                        .retry_after
                        .unwrap_or_else(|| backoff::delay(&self.sub.config.retry, self.probe_failures));
                    self.next_probe_at = self.next_probe_at.max(now + wait);
                }
                let own = done
                    .attempt
                    .retry_after
                    .unwrap_or_else(|| backoff::delay(&self.sub.config.retry, done.attempts.max(1) as u32));
                match (done.verdict, rewind) {
                    (Verdict::Park, None) => {
                        tracing::warn!(subscription = %name, error = ?done.attempt.error, attempts = done.attempts,
                            "delivery parked after retry.give_up_after; its entity waits until it is resent");
                        if let Some(entity) = self.entities.get_mut(&done.entity_id) {
                            entity.state = EntityState::Parked;
                            entity.at = done.sent;
                        }
                    }
                    // Parked, but a resend reopened an earlier event of the
                    // entity meanwhile: that one goes first.
                    (Verdict::Park, Some(earlier)) => self.set_ready(done.entity_id, now, earlier.min(done.sent)),
                    _ => self.set_ready(done.entity_id, now + own, from(done.sent)),
                }
            }
        }
    }

    /// Reads the open entities at start, and again whenever a resend
    /// (which bumps `resend_generation`) may have reopened events behind the
    /// cursors; moves those cursors back. Returns false if the counter or
    /// the backlog could not be read: nothing may be looked up then, since
    /// a cursor could pass events reopened behind it.
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
        let open = match read::open_entities(&self.reader, self.sub.id) {
            Ok(open) => open,
            Err(e) => {
                tracing::error!(subscription = %self.sub.config.name, error = %e, "cannot read the backlog");
                return false;
            }
        };
        self.resend_generation = Some(generation);
        for open in open {
            let first = Position {
                seq: open.first_seq,
                entity_seq: open.first_entity_seq,
            };
            match self.entities.get_mut(&open.entity_id) {
                None => self.set_ready(open.entity_id, now, first),
                Some(entity) if entity.state == EntityState::InFlight => {
                    entity.rewind = Some(entity.rewind.map_or(first, |r| r.min(first)));
                }
                // Ready or parked: its head may now be an earlier, resent
                // event, or the parked head itself was resent.
                Some(entity) => {
                    let at = entity.at.min(first);
                    self.set_ready(open.entity_id, now, at);
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

/// One of a subscription's request workers: sends the events the scheduler
/// gives it, one at a time, and queues their outcomes.
struct Courier {
    index: usize,
    endpoint: Arc<Endpoint>,
    writer: Writer,
    sub_id: i64,
    name: String,
    retry: RetryConfig,
    metrics: Metrics,
    reports: mpsc::UnboundedSender<Report>,
}

impl Courier {
    /// Takes events until the scheduler is gone.
    async fn work(self, mut jobs: mpsc::Receiver<Job>) {
        while let Some(job) = jobs.recv().await {
            self.deliver(job).await;
        }
    }

    /// Sends one event, reports the answer, and queues the outcome; the
    /// writer reports its commit.
    async fn deliver(&self, job: Job) {
        let Job {
            entity_id,
            head,
            was_probe,
            expected,
        } = job;
        let sent = Position::of(&head.event);
        let at_ms = now_ms();
        let started = std::time::Instant::now();
        let attempt = self.endpoint.send(&head.event).await;
        // A 2xx gives the request slot back now, so that another entity is
        // sent while this outcome is committed. A failure keeps its slot
        // until `finish` has seen it, so an endpoint going down gets no more
        // requests than before.
        let delivered = attempt.kind == AttemptKind::Delivered;
        let _ = self.reports.send(Report::Answered {
            courier: self.index,
            delivered,
        });
        let elapsed = started.elapsed();
        let duration_ms = elapsed.as_millis() as i64;
        let result = match attempt.kind {
            AttemptKind::Delivered => "delivered",
            AttemptKind::Refused => "refused",
            AttemptKind::EndpointDown => "unreachable",
        };
        self.metrics.attempt(&self.name, result, elapsed.as_secs_f64());
        if delivered {
            self.metrics
                .delivered_after(&self.name, ((now_ms() - head.event.ingested_at).max(0) as f64) / 1000.0);
        }
        let attempts = head.attempts + 1;
        let verdict = if delivered {
            Verdict::Delivered
        } else {
            let failing_since = head.first_failed_at.unwrap_or(at_ms);
            match self.retry.give_up_after {
                Some(limit) if at_ms - failing_since >= limit.as_millis() as i64 => Verdict::Park,
                _ => {
                    let wait = attempt
                        .retry_after
                        .unwrap_or_else(|| backoff::delay(&self.retry, attempts as u32));
                    Verdict::Retry {
                        next_attempt_at_ms: at_ms + wait.as_millis() as i64,
                    }
                }
            }
        };
        let outcome = Outcome {
            sub_id: self.sub_id,
            event_seq: head.event.seq,
            at_ms,
            status: attempt.status,
            error: attempt.error.clone(),
            duration_ms,
            verdict,
            resends: head.resends,
        };
        let reports = self.reports.clone();
        let done = OutcomeDone::new(move |result: Result<(), String>| {
            let _ = reports.send(Report::Finished(Done {
                entity_id,
                sent,
                attempt,
                attempts,
                unrecorded: result.err(),
                verdict,
                was_probe,
            }));
        });
        self.writer.record_then(outcome, Some(expected), done).await;
    }
}
