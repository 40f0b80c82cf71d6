//! The single writer: one thread owns the write connection and turns every
//! queued request (ingest, delivery outcome, state change, resend, prune)
//! into as few transactions as possible (group commit).
//!
//! Invariant: a producer's reply and a delivery's [`Recorded`] are sent only
//! after the transaction holding them committed with `synchronous=FULL`
//! ([`WriterState::process`] answers in `finish`, after `apply_all`'s
//! commit). No transaction is ever open while waiting on the network:
//! network work happens elsewhere and reaches this thread as finished
//! outcomes.
//!
//! The parts:
//! - this file: the handle ([`Writer`]) and its requests, the thread, and
//!   what a batch answers once committed or failed;
//! - [`grouping`]: which requests share a transaction (the group-commit
//!   timing policy);
//! - [`handoff`]: the contract with the schedulers (outcomes, receipts, the
//!   counters that steer grouping);
//! - [`sql`]: every statement, run inside the batch's transaction.

pub mod grouping;
pub mod handoff;
mod sql;

use std::sync::Arc;

use rusqlite::{Connection, ErrorCode as SqliteCode};
use tokio::sync::{mpsc, oneshot};

pub use grouping::{OUTCOME_GAP, OUTCOME_GROUP_WAIT};
pub use handoff::{Decision, ExpectedOutcome, Flow, Outcome, Receipt, Recorded, Starving};

use super::held::HeldChange;
use super::resend::{self, ResendError, ResendOutcome, ResendRequest};
use super::state::{ConcurrencyState, SubscriptionState};
use super::{Inbox, Subscription};
use crate::config::SubscriptionConfig;
use crate::event::{ErrorCode, IngestError, NewEvent, Reply};
use sql::Effects;

/// A request to the writer thread. Each one carries the channel its answer
/// goes to and, once applied, the answer itself, so a committed batch
/// answers every request from its own fields (no answer can be paired with
/// the wrong request).
enum WriteOp {
    /// Store events; one reply per event.
    Ingest {
        /// The validated events, in the producer's order.
        events: Vec<NewEvent>,
        /// The agent's own heartbeat: once stored, it supersedes the older
        /// heartbeats of its entity that are not delivered yet.
        supersedes: bool,
        /// Their replies, filled by `apply_all`.
        replies: Vec<Reply>,
        /// Where the replies go after the commit.
        reply: oneshot::Sender<Vec<Reply>>,
    },
    /// Record a delivery attempt.
    Outcome {
        /// What to record.
        outcome: Outcome,
        /// Told after the commit (or the failure).
        receipt: Receipt,
    },
    /// Record the attempt of a batch: one outcome per event, in the same
    /// transaction, one receipt for all.
    Outcomes {
        /// What to record, one per event of the batch.
        outcomes: Vec<Outcome>,
        /// What it does to the batch's stored composition (`outbox::held`).
        held: HeldChange,
        /// Told after the commit (or the failure).
        receipt: Receipt,
    },
    /// Delete stored held batches that will not go again as they were
    /// (best effort, no answer: a leftover is found out at the next start).
    ForgetHeld {
        /// Subscription row id.
        sub_id: i64,
        /// Their ids.
        ids: Vec<String>,
    },
    /// Record a subscription's state for `status` (best effort, no answer).
    SubState {
        /// Subscription row id.
        sub_id: i64,
        /// Its state.
        state: SubscriptionState,
        /// Requests in flight.
        in_flight: i64,
        /// When it plans its next attempt, wall-clock ms, if it waits.
        next_attempt_at_ms: Option<i64>,
        /// Its request concurrency; `None` once it stops.
        concurrency: Option<ConcurrencyState>,
    },
    /// Store or clear a subscription's 410 marker (`outbox::gone`; best
    /// effort, no answer: the scheduler stores it again until it is in).
    Gone {
        /// Subscription row id.
        sub_id: i64,
        /// The marker; `None` clears it.
        marker: Option<super::gone::Marker>,
    },
    /// Count an event refused before it reached storage.
    Rejected(ErrorCode),
    /// A tiny write, for `/healthz`.
    Ping {
        /// True once committed.
        reply: oneshot::Sender<bool>,
    },
    /// Delete delivered events.
    Prune {
        /// Only events ingested before this (wall-clock ms).
        older_than_ms: Option<i64>,
        /// At most this many.
        limit: usize,
        /// How many went, filled by `apply_all`.
        pruned: usize,
        /// Where that number goes after the commit.
        reply: oneshot::Sender<usize>,
    },
    /// Store a period's history samples (best effort, no answer).
    History {
        /// One per configured subscription.
        samples: Vec<crate::outbox::history::Sample>,
        /// Samples from before this (wall-clock ms) go.
        keep_from_ms: i64,
    },
    /// Set (or, with `None`, delete) `meta` entries.
    Meta {
        /// Key and value pairs.
        entries: Vec<(&'static str, Option<String>)>,
        /// True once committed.
        reply: oneshot::Sender<bool>,
    },
    /// Take a reloaded list of subscriptions: register the new ones, mark
    /// the dropped ones, fan out with the new list from the next batch on.
    /// Always runs alone, between two batches.
    Reconfigure {
        /// The subscriptions as the reloaded config has them.
        configs: Vec<SubscriptionConfig>,
        /// The subscriptions with their row ids, or why it failed.
        reply: oneshot::Sender<Result<Vec<Subscription>, String>>,
    },
    /// Queue deliveries again (operator action).
    Resend {
        /// What to queue again.
        request: ResendRequest,
        /// Its result, filled by `apply_all`.
        result: Option<Result<ResendOutcome, ResendError>>,
        /// Where the result goes after the commit.
        reply: oneshot::Sender<Result<ResendOutcome, ResendError>>,
    },
}

impl WriteOp {
    /// Whether a batch holding only such requests may wait for more
    /// outcomes ([`grouping`]): nobody waits for its answer but a scheduler.
    fn may_wait(&self) -> bool {
        matches!(
            self,
            WriteOp::Outcome { .. }
                | WriteOp::Outcomes { .. }
                | WriteOp::SubState { .. }
                | WriteOp::Gone { .. }
                | WriteOp::ForgetHeld { .. }
        )
    }
}

/// Handle to the writer thread; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    /// The writer's queue (bounded: producers wait when it is full).
    tx: mpsc::Sender<WriteOp>,
    /// Counters shared with the schedulers ([`handoff`]).
    flow: Arc<Flow>,
}

/// The promise of replies for submitted events.
pub struct Ticket {
    /// Events submitted.
    n: usize,
    /// `None` when the writer was already gone.
    rx: Option<oneshot::Receiver<Vec<Reply>>>,
}

impl Ticket {
    /// Waits for the commit (or the failure) and returns one reply per event.
    pub async fn wait(self) -> Vec<Reply> {
        let n = self.n;
        match self.rx {
            None => vec![IngestError::new(ErrorCode::ShuttingDown, "the agent is stopping").into(); n],
            Some(rx) => rx
                .await
                .unwrap_or_else(|_| vec![IngestError::new(ErrorCode::Internal, "the writer stopped").into(); n]),
        }
    }
}

/// Subscription data the writer needs to fan events out.
pub(crate) struct Fanout {
    /// Subscription row id.
    id: i64,
    /// Its configuration (its event-type filter).
    config: Arc<SubscriptionConfig>,
    /// Where new deliveries are announced.
    inbox: Arc<Inbox>,
}

impl Fanout {
    fn of(sub: &Subscription) -> Fanout {
        Fanout {
            id: sub.id,
            config: sub.config.clone(),
            inbox: sub.inbox.clone(),
        }
    }
}

impl Writer {
    /// Starts the writer thread on an open, migrated connection.
    pub fn start(
        conn: Connection,
        subs: &[Subscription],
        max_db_bytes: u64,
        storage_full: Arc<tokio::sync::Notify>,
    ) -> (Writer, std::thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(8192);
        let fanout = subs.iter().map(Fanout::of).collect();
        let flow = Arc::new(Flow::default());
        let mut state = WriterState {
            conn,
            flow: flow.clone(),
            fanout,
            max_db_bytes,
            full: false,
            disk_full: false,
            nothing_to_prune: false,
            storage_full,
        };
        let handle = std::thread::Builder::new()
            .name("outbox-writer".into())
            .spawn(move || state.run(rx))
            .expect("spawning the writer thread");
        (Writer { tx, flow }, handle)
    }

    /// Stores events in one transaction; one reply per event, in order.
    pub async fn ingest(&self, events: Vec<NewEvent>) -> Vec<Reply> {
        self.submit(events).await.wait().await
    }

    /// Queues events for storage and returns at once with a ticket for the
    /// replies. Requests are stored in the order they were submitted, so a
    /// producer that pipelines submits in line order and awaits later.
    pub async fn submit(&self, events: Vec<NewEvent>) -> Ticket {
        self.submit_ingest(events, false).await
    }

    /// Stores the agent's own heartbeat event; once committed, the older
    /// heartbeats of its entity that no subscription has delivered yet are
    /// dropped (superseded: the newest one says all they would).
    pub async fn ingest_heartbeat(&self, event: NewEvent) -> Reply {
        let mut replies = self.submit_ingest(vec![event], true).await.wait().await;
        replies
            .pop()
            .unwrap_or_else(|| IngestError::new(ErrorCode::Internal, "the writer gave no reply").into())
    }

    async fn submit_ingest(&self, events: Vec<NewEvent>, supersedes: bool) -> Ticket {
        let n = events.len();
        let (reply, rx) = oneshot::channel();
        let op = WriteOp::Ingest {
            events,
            supersedes,
            replies: Vec::new(),
            reply,
        };
        match self.tx.send(op).await {
            Ok(()) => Ticket { n, rx: Some(rx) },
            Err(_) => Ticket { n, rx: None },
        }
    }

    /// Counts a request about to be sent, until its outcome is queued with
    /// [`Writer::record`].
    pub fn expect_outcome(&self) -> ExpectedOutcome {
        self.flow.expect_outcome()
    }

    /// A scheduler's [`Starving`] flag, not set.
    pub fn starving(&self) -> Starving {
        self.flow.starving()
    }

    /// Queues a delivery attempt and returns once it is queued (the queue is
    /// bounded); `receipt` is told the commit's result, or at once if the
    /// writer is gone. `expected` is the request's count from
    /// [`Writer::expect_outcome`], if it took one.
    pub async fn record(&self, outcome: Outcome, expected: Option<ExpectedOutcome>, receipt: Receipt) {
        // Uncounted before it is queued: the writer, woken by this outcome,
        // must not wait for it.
        drop(expected);
        // If the writer is gone, the op and its receipt are dropped: the
        // receipt tells "the writer stopped".
        let _ = self.tx.send(WriteOp::Outcome { outcome, receipt }).await;
    }

    /// Queues the attempt of a batch (one outcome per event, committed
    /// together with `held`, what it does to the batch's stored
    /// composition), like [`Writer::record`].
    pub async fn record_batch(
        &self,
        outcomes: Vec<Outcome>,
        held: HeldChange,
        expected: Option<ExpectedOutcome>,
        receipt: Receipt,
    ) {
        drop(expected);
        let _ = self
            .tx
            .send(WriteOp::Outcomes {
                outcomes,
                held,
                receipt,
            })
            .await;
    }

    /// Deletes stored held batches of `sub_id` (best effort; false if the
    /// writer's queue is full or it is gone).
    pub fn forget_held(&self, sub_id: i64, ids: Vec<String>) -> bool {
        ids.is_empty() || self.tx.try_send(WriteOp::ForgetHeld { sub_id, ids }).is_ok()
    }

    /// Records a delivery attempt and waits for its commit (tests, tools).
    pub async fn record_and_wait(&self, outcome: Outcome, expected: Option<ExpectedOutcome>) -> Result<(), String> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.record(outcome, expected, Receipt::new(0, tx)).await;
        match rx.recv().await {
            Some(recorded) => recorded.result,
            None => Err("the writer stopped".to_string()),
        }
    }

    /// Records a subscription's state, requests in flight, next planned
    /// attempt and request concurrency (`None`: its scheduler stopped), for
    /// `status`. Best effort: when the queue is full the caller's next
    /// update wins.
    pub fn set_sub_state(
        &self,
        sub_id: i64,
        state: SubscriptionState,
        in_flight: i64,
        next_attempt_at_ms: Option<i64>,
        concurrency: Option<ConcurrencyState>,
    ) -> bool {
        self.tx
            .try_send(WriteOp::SubState {
                sub_id,
                state,
                in_flight,
                next_attempt_at_ms,
                concurrency,
            })
            .is_ok()
    }

    /// Stores (or with `None` clears) the marker of a subscription stopped
    /// by a 410 (`outbox::gone`). Best effort, like [`Writer::set_sub_state`]:
    /// false when the queue is full, and the caller tries again.
    pub fn set_gone(&self, sub_id: i64, marker: Option<super::gone::Marker>) -> bool {
        self.tx.try_send(WriteOp::Gone { sub_id, marker }).is_ok()
    }

    /// Queues deliveries again, in the writer's next transaction; the
    /// schedulers see it through `resend_generation`.
    pub async fn resend(&self, request: ResendRequest) -> Result<ResendOutcome, ResendError> {
        let (reply, rx) = oneshot::channel();
        let op = WriteOp::Resend {
            request,
            result: None,
            reply,
        };
        let stopped = || ResendError::Stopped;
        self.tx.send(op).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Deletes up to `limit` fully delivered events (oldest first), only those
    /// ingested before `older_than_ms` if given; returns how many went.
    pub async fn prune(&self, older_than_ms: Option<i64>, limit: usize) -> usize {
        let (reply, rx) = oneshot::channel();
        let op = WriteOp::Prune {
            older_than_ms,
            limit,
            pruned: 0,
            reply,
        };
        if self.tx.send(op).await.is_err() {
            return 0;
        }
        rx.await.unwrap_or(0)
    }

    /// Sets (`Some`) or deletes (`None`) entries of the `meta` table in one
    /// transaction; true once committed.
    pub async fn set_meta(&self, entries: Vec<(&'static str, Option<String>)>) -> bool {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(WriteOp::Meta { entries, reply }).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Replaces the subscriptions events are fanned out to (a reload):
    /// names new to the running agent are registered and backfilled, names
    /// gone keep their rows and are marked unconfigured. Returns the
    /// subscriptions in `configs`' order, each with its row id and inbox.
    /// The schedulers of changed and removed subscriptions must have stopped
    /// before, so none records a state after this.
    pub async fn reconfigure(&self, configs: Vec<SubscriptionConfig>) -> Result<Vec<Subscription>, String> {
        let (reply, rx) = oneshot::channel();
        let stopped = || "the outbox writer stopped".to_string();
        self.tx
            .send(WriteOp::Reconfigure { configs, reply })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Commits a tiny write; true if the database took it (for `/healthz`).
    pub async fn ping(&self) -> bool {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(WriteOp::Ping { reply }).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Queues a period's history samples; samples from before `keep_from_ms`
    /// are dropped in the same transaction. False when the writer is gone.
    pub async fn record_history(&self, samples: Vec<crate::outbox::history::Sample>, keep_from_ms: i64) -> bool {
        self.tx.send(WriteOp::History { samples, keep_from_ms }).await.is_ok()
    }

    /// Counts an event rejected before reaching storage, by error code.
    /// Best effort: never blocks a producer's reply.
    pub fn count_rejected(&self, code: ErrorCode) {
        let _ = self.tx.try_send(WriteOp::Rejected(code));
    }
}

/// Delivered events deleted per transaction when an ingest finds the outbox
/// at its cap: small, so one commit stays short.
const ROOM_CHUNK: usize = 200;
/// At most this many such transactions per writer turn, so one turn never
/// stalls the queue for long (about 1,600 events, a few tens of ms).
const ROOM_CHUNKS: usize = 8;

/// The writer thread's own state.
struct WriterState {
    /// The only write connection.
    conn: Connection,
    /// Counters shared with the schedulers ([`handoff`]).
    flow: Arc<Flow>,
    /// The configured subscriptions.
    fanout: Vec<Fanout>,
    /// `storage.max_db_bytes`.
    max_db_bytes: u64,
    /// Whether ingest is currently refused for lack of space.
    full: bool,
    /// Whether the last commit failed because the disk is full (logged once).
    disk_full: bool,
    /// The last [`WriterState::make_room`] found no delivered event to
    /// delete, and none was delivered since: ingest at the cap is refused
    /// without scanning the outbox again for every batch.
    nothing_to_prune: bool,
    /// Woken when ingest is refused, so the pruner makes room.
    storage_full: Arc<tokio::sync::Notify>,
}

fn storage_error(e: &rusqlite::Error) -> IngestError {
    match e.sqlite_error_code() {
        Some(SqliteCode::DiskFull) => IngestError::new(ErrorCode::StorageFull, "the disk holding the outbox is full"),
        _ => IngestError::new(ErrorCode::Internal, format!("storage error: {e}")),
    }
}

impl WriterState {
    fn run(&mut self, mut rx: mpsc::Receiver<WriteOp>) {
        while let Some(batch) = grouping::next_batch(&mut rx, &self.flow) {
            self.process(batch);
        }
        // All senders are gone: the agent is stopping. Fold the WAL back so
        // the file is compact for a copy or an upgrade.
        let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
    }

    fn process(&mut self, mut batch: Vec<WriteOp>) {
        // A reconfiguration runs alone: what was queued before it is fanned
        // out with the old subscriptions, what came after with the new.
        if let Some(at) = batch.iter().position(|op| matches!(op, WriteOp::Reconfigure { .. })) {
            let after = batch.split_off(at + 1);
            if let Some(WriteOp::Reconfigure { configs, reply }) = batch.pop() {
                if !batch.is_empty() {
                    self.process(batch);
                }
                let _ = reply.send(self.reconfigure(&configs));
            }
            if !after.is_empty() {
                self.process(after);
            }
            return;
        }
        let ingests = batch.iter().any(|op| matches!(op, WriteOp::Ingest { .. }));
        let full = ingests && self.over_cap() && !self.make_room();
        if ingests && full != self.full {
            self.full = full;
            if full {
                tracing::warn!(
                    max_db_bytes = self.max_db_bytes,
                    "outbox is full (storage.max_db_bytes): new events are refused with storage_full until room is made"
                );
            } else {
                tracing::info!("outbox has room again: taking new events");
            }
        }
        if full {
            self.storage_full.notify_one();
        }
        match self.apply_all(&mut batch, full) {
            Ok(effects) => {
                self.set_disk_full(false);
                self.finish(batch, effects)
            }
            Err(e) if e.sqlite_error_code() == Some(SqliteCode::DiskFull) => {
                // Every request would fail the same way: answer them all now.
                self.set_disk_full(true);
                self.fail(batch, &e);
                // The WAL only grows between checkpoints: fold what it holds
                // into the main file (PASSIVE: never waits for readers), so
                // the next commit can write it again from its beginning, which
                // often makes room by itself. Then let the pruner make more.
                if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE);") {
                    tracing::debug!(error = %e, "checkpoint on a full disk failed");
                }
                self.storage_full.notify_one();
            }
            Err(e) => {
                // Something in the batch failed: retry each request on its own
                // so one failure cannot take the others down with it.
                tracing::warn!(error = %e, requests = batch.len(), "batch failed, retrying requests one by one");
                for op in batch {
                    let mut one = vec![op];
                    match self.apply_all(&mut one, full) {
                        Ok(effects) => self.finish(one, effects),
                        Err(e) => self.fail(one, &e),
                    }
                }
            }
        }
    }

    /// Registers a reloaded list of subscriptions and fans out to it from
    /// now on.
    fn reconfigure(&mut self, configs: &[SubscriptionConfig]) -> Result<Vec<Subscription>, String> {
        let running: Vec<Subscription> = self
            .fanout
            .iter()
            .map(|f| Subscription {
                id: f.id,
                config: f.config.clone(),
                inbox: f.inbox.clone(),
            })
            .collect();
        let subs = super::reconfigure_subscriptions(&mut self.conn, &running, configs).map_err(|e| {
            tracing::error!(error = %e, "could not record the reloaded subscriptions");
            format!("cannot record the subscriptions: {e}")
        })?;
        self.fanout = subs.iter().map(Fanout::of).collect();
        Ok(subs)
    }

    /// Whether the database's used size reached `storage.max_db_bytes`.
    fn over_cap(&self) -> bool {
        super::read::used_bytes(&self.conn).unwrap_or(0) >= self.max_db_bytes
    }

    /// The outbox is at its cap and a batch brings events: deletes delivered
    /// events, oldest first, in short transactions of [`ROOM_CHUNK`] events
    /// right before the batch, until the cap is kept. The contract lets
    /// delivered events go before a new one is refused, so the refusal must
    /// not wait for the pruner task. Returns whether the batch may be
    /// stored: true once under the cap, and also when the turn's budget
    /// ([`ROOM_CHUNKS`]) ran out with delivered events still left (the cap
    /// is checked per batch, so it may be passed by one batch; the next turn
    /// and the woken pruner go on deleting). False only when nothing
    /// delivered is left, or the deletion itself failed.
    fn make_room(&mut self) -> bool {
        if self.nothing_to_prune {
            return false;
        }
        let mut pruned = 0;
        for _ in 0..ROOM_CHUNKS {
            let chunk = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .and_then(|tx| {
                    let n = sql::prune(&tx, None, ROOM_CHUNK)?;
                    tx.commit()?;
                    Ok(n)
                });
            let n = match chunk {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "could not prune delivered events to make room");
                    return false;
                }
            };
            pruned += n;
            // Freed pages go to the freelist at once, so the used size
            // drops as soon as whole pages are empty.
            if !self.over_cap() {
                // Debug: at the cap this happens on every ingest batch.
                tracing::debug!(
                    events = pruned,
                    "outbox at storage.max_db_bytes: pruned delivered events to make room"
                );
                return true;
            }
            if n < ROOM_CHUNK {
                // Nothing delivered is left: refuse, and do not look again
                // before something is delivered.
                self.nothing_to_prune = true;
                return false;
            }
        }
        tracing::info!(
            events = pruned,
            "outbox at storage.max_db_bytes: pruned delivered events, more go in the next turns"
        );
        self.storage_full.notify_one();
        true
    }

    /// Logs a change of the disk-full state once, not once per batch.
    fn set_disk_full(&mut self, disk_full: bool) {
        if disk_full != self.disk_full {
            self.disk_full = disk_full;
            if disk_full {
                tracing::error!("the disk holding the outbox is full: new events are refused with storage_full and delivery outcomes cannot be recorded until space is freed");
            } else {
                tracing::info!("the outbox takes writes again after a full disk");
            }
        }
    }

    /// Runs the whole batch in one transaction and commits it; each request
    /// keeps its own answer. On an error nothing is committed and the
    /// answers are not sent.
    fn apply_all(&mut self, batch: &mut [WriteOp], full: bool) -> rusqlite::Result<Effects> {
        let mut effects = Effects::default();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for op in batch.iter_mut() {
            match op {
                WriteOp::Ingest {
                    events,
                    supersedes,
                    replies,
                    ..
                } => {
                    *replies = if full {
                        effects.reject(ErrorCode::StorageFull, events.len() as i64);
                        let msg = format!("the outbox reached storage.max_db_bytes ({} bytes)", self.max_db_bytes);
                        vec![IngestError::new(ErrorCode::StorageFull, msg).into(); events.len()]
                    } else {
                        events
                            .iter()
                            .map(|e| sql::insert_event(&tx, &self.fanout, e, &mut effects))
                            .collect::<rusqlite::Result<Vec<_>>>()?
                    };
                    if *supersedes {
                        for (e, reply) in events.iter().zip(replies.iter()) {
                            if let Reply::Accepted { entity_seq, .. } = reply {
                                sql::supersede_heartbeats(&tx, &e.entity, *entity_seq)?;
                            }
                        }
                    }
                }
                WriteOp::Outcome { outcome, .. } => sql::apply_outcome(&tx, outcome, &mut effects)?,
                WriteOp::Outcomes { outcomes, held, .. } => {
                    for outcome in outcomes.iter() {
                        sql::apply_outcome(&tx, outcome, &mut effects)?;
                    }
                    if let Some(sub_id) = outcomes.first().map(|o| o.sub_id) {
                        super::held::apply(&tx, sub_id, held)?;
                    }
                }
                WriteOp::ForgetHeld { sub_id, ids } => {
                    for id in ids {
                        super::held::forget(&tx, *sub_id, id)?;
                    }
                }
                WriteOp::SubState {
                    sub_id,
                    state,
                    in_flight,
                    next_attempt_at_ms,
                    concurrency,
                } => sql::set_sub_state(&tx, *sub_id, *state, *in_flight, *next_attempt_at_ms, *concurrency)?,
                WriteOp::Gone { sub_id, marker } => super::gone::set_marker(&tx, *sub_id, marker.as_ref())?,
                WriteOp::Rejected(code) => effects.reject(*code, 1),
                WriteOp::Prune {
                    older_than_ms,
                    limit,
                    pruned,
                    ..
                } => *pruned = sql::prune(&tx, *older_than_ms, *limit)?,
                WriteOp::Ping { .. } => sql::ping(&tx)?,
                WriteOp::History { samples, keep_from_ms } => {
                    crate::outbox::history::record(&tx, samples, *keep_from_ms)?
                }
                WriteOp::Meta { entries, .. } => sql::set_meta(&tx, entries)?,
                // Split off by `process`: never in a batch.
                WriteOp::Reconfigure { .. } => {}
                WriteOp::Resend { request, result, .. } => {
                    *result = match resend::apply(&tx, request) {
                        // The whole batch rolls back and is retried request
                        // by request.
                        Err(ResendError::Storage(e)) => return Err(e),
                        other => Some(other),
                    }
                }
            }
        }
        let sub_ids: Vec<i64> = self.fanout.iter().map(|f| f.id).collect();
        sql::add_totals(&tx, &effects, &sub_ids)?;
        tx.commit()?;
        Ok(effects)
    }

    /// Sends the answers of a committed batch and wakes the schedulers.
    fn finish(&mut self, batch: Vec<WriteOp>, effects: Effects) {
        // A committed delivery may have made an event prunable.
        if !effects.delivered_by_sub.is_empty() {
            self.nothing_to_prune = false;
            // Refusing for lack of room: the pruner makes it now, so that
            // `status` stops saying full once the backlog drained, not at
            // its next round a minute later.
            if self.full {
                self.storage_full.notify_one();
            }
        }
        for op in batch {
            match op {
                WriteOp::Ingest { replies, reply, .. } => {
                    let _ = reply.send(replies);
                }
                WriteOp::Outcome { receipt, .. } | WriteOp::Outcomes { receipt, .. } => receipt.tell(Ok(())),
                WriteOp::Prune { pruned, reply, .. } => {
                    let _ = reply.send(pruned);
                }
                WriteOp::Ping { reply } | WriteOp::Meta { reply, .. } => {
                    let _ = reply.send(true);
                }
                WriteOp::Reconfigure { reply, .. } => {
                    let _ = reply.send(Err("not applied".into()));
                }
                WriteOp::Resend { result, reply, .. } => {
                    let _ = reply.send(result.unwrap_or(Err(ResendError::Stopped)));
                }
                WriteOp::SubState { .. }
                | WriteOp::Gone { .. }
                | WriteOp::ForgetHeld { .. }
                | WriteOp::Rejected(_)
                | WriteOp::History { .. } => {}
            }
        }
        let mut per_sub: Vec<Vec<(i64, i64, i64)>> = vec![Vec::new(); self.fanout.len()];
        for (index, entity, seq, entity_seq) in effects.touched {
            per_sub[index].push((entity, seq, entity_seq));
        }
        for (fan, entities) in self.fanout.iter().zip(per_sub) {
            if !entities.is_empty() {
                fan.inbox.push(entities);
            }
        }
    }

    /// Answers requests that could not be committed.
    fn fail(&self, batch: Vec<WriteOp>, e: &rusqlite::Error) {
        let err = storage_error(e);
        if !self.disk_full {
            tracing::error!(error = %e, "could not commit to the outbox");
        }
        for op in batch {
            match op {
                WriteOp::Ingest { events, reply, .. } => {
                    let _ = reply.send(vec![err.clone().into(); events.len()]);
                }
                WriteOp::Outcome { receipt, .. } | WriteOp::Outcomes { receipt, .. } => {
                    receipt.tell(Err(err.message.clone()))
                }
                WriteOp::Prune { reply, .. } => {
                    let _ = reply.send(0);
                }
                WriteOp::Ping { reply } | WriteOp::Meta { reply, .. } => {
                    let _ = reply.send(false);
                }
                WriteOp::Reconfigure { reply, .. } => {
                    let _ = reply.send(Err(err.message.clone()));
                }
                WriteOp::Resend { reply, .. } => {
                    let _ = reply.send(Err(ResendError::NotStored(err.message.clone())));
                }
                WriteOp::SubState { .. }
                | WriteOp::Gone { .. }
                | WriteOp::ForgetHeld { .. }
                | WriteOp::Rejected(_)
                | WriteOp::History { .. } => {}
            }
        }
    }
}
