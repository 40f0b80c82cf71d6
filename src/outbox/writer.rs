//! The single writer: one thread owns the write connection and turns every
//! queued request (ingest, delivery outcome, state change) into as few
//! transactions as possible (group commit).
//!
//! Invariant: a producer's reply and a delivery's "recorded" answer are sent
//! only after the transaction holding them committed with `synchronous=FULL`.
//! No transaction is ever open while waiting on the network: network work
//! happens elsewhere and reaches this thread as finished outcomes.
//!
//! Outcomes are grouped harder than ingest: while requests are still on the
//! wire (counted by [`ExpectedOutcome`]) and their outcomes keep coming
//! (one at least every [`OUTCOME_GAP`]), a batch of outcomes waits up to
//! [`OUTCOME_GROUP_WAIT`] for them, so a drain commits a few large groups
//! instead of many small ones (every commit writes and syncs its pages).
//! Nothing else is held: a batch goes at the end of the current step when
//! anything but outcomes comes (an ingest's reply waits at most one step,
//! 250 µs), and at once when no request is left on the wire or when a
//! scheduler has a free request slot and nothing to send but what waits for
//! this commit ([`Starving`]: a few entities with a backlog each, which would
//! only be slowed down).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode as SqliteCode};
use tokio::sync::{mpsc, oneshot};

use super::state::DeliveryState::{Delivered, Parked, Pending};
use super::state::SubscriptionState;
use super::{now_ms, Inbox, Subscription};
use crate::event::{ErrorCode, IngestError, NewEvent, Reply};

/// Most requests folded into one transaction.
const MAX_BATCH: usize = 2048;
/// The longest a batch of outcomes waits for those of requests still on the
/// wire. Measured on a 200k-event drain (docs/BENCHMARKS.md): agent CPU per
/// delivered event 52-56 µs without waiting, 38 µs with 4 ms.
pub const OUTCOME_GROUP_WAIT: Duration = Duration::from_millis(4);
/// The wait goes in steps of this length, and ends after a step in which no
/// outcome came: requests that are slow to answer (a hung endpoint, a long
/// timeout) must not hold back the outcomes of a fast one. A request other
/// than an outcome (an ingest) that comes during a step waits for its end.
pub const OUTCOME_GAP: Duration = Duration::from_micros(250);

/// What became of one delivery attempt.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Subscription row id.
    pub sub_id: i64,
    /// The event's `seq`.
    pub event_seq: i64,
    /// Wall-clock time of the attempt, ms.
    pub at_ms: i64,
    /// HTTP status, if an answer came.
    pub status: Option<u16>,
    /// Error text for a failure.
    pub error: Option<String>,
    /// Duration of the attempt, ms.
    pub duration_ms: i64,
    /// The resulting state.
    pub verdict: Verdict,
    /// The delivery's `resends` when the request was sent: if it was resent
    /// since, the attempt is recorded but does not change its state.
    pub resends: i64,
}

/// The state a delivery moves to after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: done.
    Delivered,
    /// Failed; retried at this wall-clock time (ms, informational).
    Retry {
        /// When the next attempt is planned.
        next_attempt_at_ms: i64,
    },
    /// Failed past `give_up_after`: parked until resent.
    Park,
}

/// A request to the writer thread.
enum WriteOp {
    Ingest {
        events: Vec<NewEvent>,
        reply: oneshot::Sender<Vec<Reply>>,
    },
    Outcome {
        outcome: Outcome,
        done: OutcomeDone,
    },
    SubState {
        sub_id: i64,
        state: SubscriptionState,
        in_flight: i64,
    },
    Rejected(ErrorCode),
    Ping {
        reply: oneshot::Sender<bool>,
    },
    Prune {
        older_than_ms: Option<i64>,
        limit: usize,
        reply: oneshot::Sender<usize>,
    },
}

/// Told once whether an outcome was committed (or why not): when the writer
/// answers, or with "the writer stopped" if it is dropped unanswered. It runs
/// on the writer thread, so it must only hand the result on (a channel send).
pub struct OutcomeDone(Option<Box<TellOutcome>>);

type TellOutcome = dyn FnOnce(Result<(), String>) + Send;

impl OutcomeDone {
    /// Wraps the function to call with the result.
    pub fn new(f: impl FnOnce(Result<(), String>) + Send + 'static) -> Self {
        OutcomeDone(Some(Box::new(f)))
    }

    fn tell(mut self, result: Result<(), String>) {
        if let Some(f) = self.0.take() {
            f(result);
        }
    }
}

impl Drop for OutcomeDone {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(Err("the writer stopped".to_string()));
        }
    }
}

/// Handle to the writer thread; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<WriteOp>,
    /// Requests on the wire whose outcomes are not queued yet.
    expected: Arc<AtomicUsize>,
    /// Schedulers that wait for commits with a request slot free.
    starving: Arc<AtomicUsize>,
}

/// A scheduler's say in whether outcomes may wait for each other: it is
/// starving when it has a free request slot and nothing ready to send, so
/// its next events wait for the commit of outcomes. Counted while set, and
/// uncounted when dropped.
pub struct Starving {
    count: Arc<AtomicUsize>,
    set: bool,
}

impl Starving {
    /// Records whether the scheduler is starving now.
    pub fn set(&mut self, starving: bool) {
        if starving != self.set {
            self.set = starving;
            if starving {
                self.count.fetch_add(1, Ordering::AcqRel);
            } else {
                self.count.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

impl Drop for Starving {
    fn drop(&mut self) {
        self.set(false);
    }
}

/// A request on the wire whose outcome a group of outcomes may wait for.
/// Dropped when the outcome is queued (or the request abandoned).
pub struct ExpectedOutcome(Arc<AtomicUsize>);

impl Drop for ExpectedOutcome {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The promise of replies for submitted events.
pub struct Ticket {
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
struct Fanout {
    id: i64,
    types: Option<HashSet<String>>,
    inbox: Arc<Inbox>,
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
        let fanout = subs
            .iter()
            .map(|s| Fanout {
                id: s.id,
                types: s.config.events.as_ref().map(|t| t.iter().cloned().collect()),
                inbox: s.inbox.clone(),
            })
            .collect();
        let expected = Arc::new(AtomicUsize::new(0));
        let starving = Arc::new(AtomicUsize::new(0));
        let mut state = WriterState {
            conn,
            expected: expected.clone(),
            starving: starving.clone(),
            fanout,
            max_db_bytes,
            full: false,
            disk_full: false,
            storage_full,
        };
        let handle = std::thread::Builder::new()
            .name("outbox-writer".into())
            .spawn(move || state.run(rx))
            .expect("spawning the writer thread");
        (Writer { tx, expected, starving }, handle)
    }

    /// Stores events in one transaction; one reply per event, in order.
    pub async fn ingest(&self, events: Vec<NewEvent>) -> Vec<Reply> {
        self.submit(events).await.wait().await
    }

    /// Queues events for storage and returns at once with a ticket for the
    /// replies. Requests are stored in the order they were submitted, so a
    /// producer that pipelines submits in line order and awaits later.
    pub async fn submit(&self, events: Vec<NewEvent>) -> Ticket {
        let n = events.len();
        let (reply, rx) = oneshot::channel();
        match self.tx.send(WriteOp::Ingest { events, reply }).await {
            Ok(()) => Ticket { n, rx: Some(rx) },
            Err(_) => Ticket { n, rx: None },
        }
    }

    /// Counts a request about to be sent, until its outcome is queued with
    /// [`Writer::record`].
    pub fn expect_outcome(&self) -> ExpectedOutcome {
        self.expected.fetch_add(1, Ordering::AcqRel);
        ExpectedOutcome(self.expected.clone())
    }

    /// A scheduler's [`Starving`] flag, not set.
    pub fn starving(&self) -> Starving {
        Starving {
            count: self.starving.clone(),
            set: false,
        }
    }

    /// Records a delivery attempt; returns once it is committed. `expected`
    /// is the request's count from [`Writer::expect_outcome`], if it took one.
    pub async fn record(&self, outcome: Outcome, expected: Option<ExpectedOutcome>) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.record_then(
            outcome,
            expected,
            OutcomeDone::new(move |result| {
                let _ = tx.send(result);
            }),
        )
        .await;
        rx.await.map_err(|_| "the writer stopped".to_string())?
    }

    /// Queues a delivery attempt and returns once it is queued (the queue is
    /// bounded); `done` is called with the commit's result, or at once if
    /// the writer is gone. For callers that must not wait for the commit.
    pub async fn record_then(&self, outcome: Outcome, expected: Option<ExpectedOutcome>, done: OutcomeDone) {
        // Uncounted before it is queued: the writer, woken by this outcome,
        // must not wait for it.
        drop(expected);
        // If the writer is gone, the op and `done` are dropped: `done`
        // hears "the writer stopped".
        let _ = self.tx.send(WriteOp::Outcome { outcome, done }).await;
    }

    /// Records a subscription's online/offline state and requests in flight.
    /// Best effort: when the queue is full the caller's next update wins.
    pub fn set_sub_state(&self, sub_id: i64, state: SubscriptionState, in_flight: i64) -> bool {
        self.tx
            .try_send(WriteOp::SubState {
                sub_id,
                state,
                in_flight,
            })
            .is_ok()
    }

    /// Deletes up to `limit` fully delivered events (oldest first), only those
    /// ingested before `older_than_ms` if given; returns how many went.
    pub async fn prune(&self, older_than_ms: Option<i64>, limit: usize) -> usize {
        let (reply, rx) = oneshot::channel();
        if self
            .tx
            .send(WriteOp::Prune {
                older_than_ms,
                limit,
                reply,
            })
            .await
            .is_err()
        {
            return 0;
        }
        rx.await.unwrap_or(0)
    }

    /// Commits a tiny write; true if the database took it (for `/healthz`).
    pub async fn ping(&self) -> bool {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(WriteOp::Ping { reply }).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Counts an event rejected before reaching storage, by error code.
    /// Best effort: never blocks a producer's reply.
    pub fn count_rejected(&self, code: ErrorCode) {
        let _ = self.tx.try_send(WriteOp::Rejected(code));
    }
}

struct WriterState {
    conn: Connection,
    /// See [`Writer::expect_outcome`].
    expected: Arc<AtomicUsize>,
    /// See [`Starving`].
    starving: Arc<AtomicUsize>,
    fanout: Vec<Fanout>,
    max_db_bytes: u64,
    /// Whether ingest is currently refused for lack of space.
    full: bool,
    /// Whether the last commit failed because the disk is full (logged once).
    disk_full: bool,
    /// Woken when ingest is refused, so the pruner makes room.
    storage_full: Arc<tokio::sync::Notify>,
}

/// What a committed batch must still announce.
#[derive(Default)]
struct Effects {
    /// (fanout index, entity id, event seq, entity seq) of new deliveries.
    touched: Vec<(usize, i64, i64, i64)>,
    accepted: i64,
    /// Highest event `seq` stored by the batch.
    max_seq: i64,
    duplicates: i64,
    rejected: i64,
    /// Rejections by error code.
    rejected_by_code: std::collections::BTreeMap<&'static str, i64>,
    /// Per subscription id: deliveries recorded and the latest success
    /// (one `UPDATE subscriptions` per commit instead of one per outcome).
    delivered_by_sub: std::collections::BTreeMap<i64, (i64, i64)>,
}

impl Effects {
    fn reject(&mut self, code: ErrorCode, n: i64) {
        self.rejected += n;
        *self.rejected_by_code.entry(code.as_str()).or_insert(0) += n;
    }
}

/// The answer owed to one request once its batch committed.
enum Answer {
    Replies(Vec<Reply>),
    Recorded,
    Pruned(usize),
    Nothing,
}

fn storage_error(e: &rusqlite::Error) -> IngestError {
    match e.sqlite_error_code() {
        Some(SqliteCode::DiskFull) => IngestError::new(ErrorCode::StorageFull, "the disk holding the outbox is full"),
        _ => IngestError::new(ErrorCode::Internal, format!("storage error: {e}")),
    }
}

impl WriterState {
    fn run(&mut self, mut rx: mpsc::Receiver<WriteOp>) {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.wait_for_outcomes(&mut rx, &mut batch);
            self.process(batch);
        }
        // All senders are gone: the agent is stopping. Fold the WAL back so
        // the file is compact for a copy or an upgrade.
        let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
    }

    /// Lets a batch of outcomes take in those of the requests still on the
    /// wire, for at most [`OUTCOME_GROUP_WAIT`]; see the module doc.
    ///
    /// It sleeps in steps of [`OUTCOME_GAP`] and then takes what came,
    /// rather than waking for every outcome: waking this thread once per
    /// outcome cost about a tenth of the drain's CPU.
    fn wait_for_outcomes(&self, rx: &mut mpsc::Receiver<WriteOp>, batch: &mut Vec<WriteOp>) {
        let may_wait = |op: &WriteOp| matches!(op, WriteOp::Outcome { .. } | WriteOp::SubState { .. });
        if !batch.iter().all(may_wait) {
            return;
        }
        let deadline = std::time::Instant::now() + OUTCOME_GROUP_WAIT;
        loop {
            if batch.len() >= MAX_BATCH
                || self.expected.load(Ordering::Acquire) == 0
                || self.starving.load(Ordering::Acquire) > 0
            {
                return;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return;
            }
            std::thread::sleep(OUTCOME_GAP.min(deadline - now));
            let mut came = false;
            loop {
                match rx.try_recv() {
                    Ok(op) => {
                        came = true;
                        let go_now = !may_wait(&op);
                        batch.push(op);
                        if go_now {
                            return;
                        }
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    // Every sender is gone: the agent is stopping.
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                }
            }
            // No outcome came for a whole step.
            if !came {
                return;
            }
        }
    }

    fn process(&mut self, batch: Vec<WriteOp>) {
        let ingests = batch.iter().any(|op| matches!(op, WriteOp::Ingest { .. }));
        let full = ingests && super::read::used_bytes(&self.conn).unwrap_or(0) >= self.max_db_bytes;
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
        match self.apply_all(&batch, full) {
            Ok((answers, effects)) => {
                self.set_disk_full(false);
                self.finish(batch, answers, effects)
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
                    let one = vec![op];
                    match self.apply_all(&one, full) {
                        Ok((answers, effects)) => self.finish(one, answers, effects),
                        Err(e) => self.fail(one, &e),
                    }
                }
            }
        }
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

    /// Runs the whole batch in one transaction and commits it.
    fn apply_all(&mut self, batch: &[WriteOp], full: bool) -> rusqlite::Result<(Vec<Answer>, Effects)> {
        let mut effects = Effects::default();
        let mut answers = Vec::with_capacity(batch.len());
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for op in batch {
            let answer = match op {
                WriteOp::Ingest { events, .. } => {
                    let replies = if full {
                        effects.reject(ErrorCode::StorageFull, events.len() as i64);
                        let msg = format!("the outbox reached storage.max_db_bytes ({} bytes)", self.max_db_bytes);
                        vec![IngestError::new(ErrorCode::StorageFull, msg).into(); events.len()]
                    } else {
                        events
                            .iter()
                            .map(|e| insert_event(&tx, &self.fanout, e, &mut effects))
                            .collect::<rusqlite::Result<Vec<_>>>()?
                    };
                    Answer::Replies(replies)
                }
                WriteOp::Outcome { outcome, .. } => {
                    apply_outcome(&tx, outcome, &mut effects)?;
                    Answer::Recorded
                }
                WriteOp::SubState {
                    sub_id,
                    state,
                    in_flight,
                } => {
                    tx.prepare_cached("UPDATE subscriptions SET state = ?2, in_flight = ?3 WHERE id = ?1")?
                        .execute(params![sub_id, state, in_flight])?;
                    Answer::Nothing
                }
                WriteOp::Rejected(code) => {
                    effects.reject(*code, 1);
                    Answer::Nothing
                }
                WriteOp::Prune {
                    older_than_ms, limit, ..
                } => Answer::Pruned(prune(&tx, *older_than_ms, *limit)?),
                WriteOp::Ping { .. } => {
                    tx.prepare_cached(
                        "INSERT INTO meta(key, value) VALUES ('alive_at', ?1)
                         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    )?
                    .execute([now_ms().to_string()])?;
                    Answer::Recorded
                }
            };
            answers.push(answer);
        }
        for (name, value) in [
            ("accepted_total", effects.accepted),
            ("duplicate_total", effects.duplicates),
            ("rejected_total", effects.rejected),
        ] {
            if value != 0 {
                tx.prepare_cached("UPDATE counters SET value = value + ?2 WHERE name = ?1")?
                    .execute(params![name, value])?;
            }
        }
        for (code, n) in &effects.rejected_by_code {
            tx.prepare_cached(
                "INSERT INTO counters(name, value) VALUES (?1, ?2)
                 ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            )?
            .execute(params![format!("rejected_total:{code}"), n])?;
        }
        for (sub_id, (delivered, last_at)) in &effects.delivered_by_sub {
            tx.prepare_cached(
                "UPDATE subscriptions SET delivered_total = delivered_total + ?2,
                        last_success_at = ?3 WHERE id = ?1",
            )?
            .execute(params![sub_id, delivered, last_at])?;
        }
        if effects.accepted > 0 {
            let ids: Vec<i64> = self.fanout.iter().map(|f| f.id).collect();
            let max_seq = effects.max_seq;
            for id in ids {
                tx.prepare_cached("UPDATE subscriptions SET covered_seq = MAX(covered_seq, ?2) WHERE id = ?1")?
                    .execute(params![id, max_seq])?;
            }
        }
        tx.commit()?;
        Ok((answers, effects))
    }

    /// Sends the answers of a committed batch and wakes the schedulers.
    fn finish(&self, batch: Vec<WriteOp>, answers: Vec<Answer>, effects: Effects) {
        for (op, answer) in batch.into_iter().zip(answers) {
            match (op, answer) {
                (WriteOp::Ingest { reply, .. }, Answer::Replies(replies)) => {
                    let _ = reply.send(replies);
                }
                (WriteOp::Outcome { done, .. }, Answer::Recorded) => done.tell(Ok(())),
                (WriteOp::Prune { reply, .. }, Answer::Pruned(n)) => {
                    let _ = reply.send(n);
                }
                (WriteOp::Ping { reply }, Answer::Recorded) => {
                    let _ = reply.send(true);
                }
                _ => {}
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

    /// Answers a request that could not be committed.
    fn fail(&self, batch: Vec<WriteOp>, e: &rusqlite::Error) {
        let err = storage_error(e);
        if !self.disk_full {
            tracing::error!(error = %e, "could not commit to the outbox");
        }
        for op in batch {
            match op {
                WriteOp::Ingest { events, reply } => {
                    let _ = reply.send(vec![err.clone().into(); events.len()]);
                }
                WriteOp::Outcome { done, .. } => done.tell(Err(err.message.clone())),
                WriteOp::Prune { reply, .. } => {
                    let _ = reply.send(0);
                }
                WriteOp::Ping { reply } => {
                    let _ = reply.send(false);
                }
                WriteOp::SubState { .. } | WriteOp::Rejected(_) => {}
            }
        }
    }
}

/// Stores one event (or recognises it as a duplicate) inside the open transaction.
fn insert_event(tx: &Connection, fanout: &[Fanout], e: &NewEvent, effects: &mut Effects) -> rusqlite::Result<Reply> {
    let existing = tx
        .prepare_cached("SELECT entity_seq FROM events WHERE event_id = ?1")?
        .query_row([&e.event_id], |r| r.get::<_, i64>(0));
    match existing {
        Ok(entity_seq) => {
            effects.duplicates += 1;
            return Ok(Reply::Accepted {
                event_id: e.event_id.clone(),
                entity_seq,
                duplicate: true,
            });
        }
        Err(rusqlite::Error::QueryReturnedNoRows) => {}
        Err(other) => return Err(other),
    }
    let (entity_id, entity_seq): (i64, i64) = tx
        .prepare_cached(
            "INSERT INTO entities(entity, last_seq) VALUES (?1, 1)
             ON CONFLICT(entity) DO UPDATE SET last_seq = last_seq + 1
             RETURNING id, last_seq",
        )?
        .query_row([&e.entity], |r| Ok((r.get(0)?, r.get(1)?)))?;
    tx.prepare_cached(
        "INSERT INTO events(event_id, type, entity_id, entity_seq, occurred_at, ingested_at,
                            correlation_id, is_test, attributes, payload)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        e.event_id,
        e.event_type,
        entity_id,
        entity_seq,
        e.occurred_at,
        now_ms(),
        e.correlation_id,
        e.is_test,
        e.attributes,
        e.payload
    ])?;
    let seq = tx.last_insert_rowid();
    effects.max_seq = effects.max_seq.max(seq);
    for (index, fan) in fanout.iter().enumerate() {
        if fan.types.as_ref().is_some_and(|t| !t.contains(&e.event_type)) {
            continue;
        }
        tx.prepare_cached("INSERT INTO deliveries(sub_id, event_seq, entity_id, entity_seq) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![fan.id, seq, entity_id, entity_seq])?;
        effects.touched.push((index, entity_id, seq, entity_seq));
    }
    effects.accepted += 1;
    Ok(Reply::Accepted {
        event_id: e.event_id.clone(),
        entity_seq,
        duplicate: false,
    })
}

/// Deletes fully delivered events, oldest first. An event with no delivery
/// row at all is kept while no subscription is configured (it waits for one).
/// Entities are kept, so `entity_seq` goes on counting.
fn prune(tx: &Connection, older_than_ms: Option<i64>, limit: usize) -> rusqlite::Result<usize> {
    let any_configured: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM subscriptions WHERE configured = 1)",
        [],
        |r| r.get(0),
    )?;
    let seqs: Vec<i64> = tx
        .prepare_cached(
            "SELECT e.seq FROM events e
             WHERE e.ingested_at < ?1
               AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq AND d.state <> 1)
               AND (?2 OR EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq))
             ORDER BY e.seq LIMIT ?3",
        )?
        .query_map(
            params![older_than_ms.unwrap_or(i64::MAX), any_configured, limit as i64],
            |r| r.get(0),
        )?
        .collect::<rusqlite::Result<_>>()?;
    for seq in &seqs {
        tx.prepare_cached("DELETE FROM attempts WHERE event_seq = ?1")?
            .execute([seq])?;
        tx.prepare_cached("DELETE FROM deliveries WHERE event_seq = ?1")?
            .execute([seq])?;
        tx.prepare_cached("DELETE FROM events WHERE seq = ?1")?.execute([seq])?;
    }
    Ok(seqs.len())
}

/// Records one attempt and moves the delivery to its new state.
fn apply_outcome(tx: &Connection, o: &Outcome, effects: &mut Effects) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO attempts(sub_id, event_seq, at, status, error, duration_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        o.sub_id,
        o.event_seq,
        o.at_ms,
        o.status,
        o.error,
        o.duration_ms
    ])?;
    match o.verdict {
        Verdict::Delivered => {
            let changed = tx
                .prepare_cached(
                    "UPDATE deliveries SET state = ?3, attempts = attempts + 1, delivered_at = ?4,
                        last_status = ?5, last_error = NULL, next_attempt_at = NULL
                 WHERE sub_id = ?1 AND event_seq = ?2 AND resends = ?6",
                )?
                .execute(params![o.sub_id, o.event_seq, Delivered, o.at_ms, o.status, o.resends])?;
            if changed == 0 {
                // Resent while this request was in flight: it goes again.
                return count_voided_attempt(tx, o);
            }
            let (delivered, last_at) = effects.delivered_by_sub.entry(o.sub_id).or_insert((0, 0));
            *delivered += 1;
            *last_at = (*last_at).max(o.at_ms);
        }
        Verdict::Retry { .. } | Verdict::Park => {
            let (state, next) = match o.verdict {
                Verdict::Retry { next_attempt_at_ms } => (Pending, Some(next_attempt_at_ms)),
                _ => (Parked, None),
            };
            let changed = tx
                .prepare_cached(
                    "UPDATE deliveries SET state = ?3, attempts = attempts + 1,
                        first_failed_at = COALESCE(first_failed_at, ?4), next_attempt_at = ?5,
                        last_status = ?6, last_error = ?7
                 WHERE sub_id = ?1 AND event_seq = ?2 AND resends = ?8",
                )?
                .execute(params![
                    o.sub_id,
                    o.event_seq,
                    state,
                    o.at_ms,
                    next,
                    o.status,
                    o.error,
                    o.resends
                ])?;
            if changed == 0 {
                return count_voided_attempt(tx, o);
            }
            tx.prepare_cached("UPDATE subscriptions SET last_error = ?2, last_error_at = ?3 WHERE id = ?1")?
                .execute(params![o.sub_id, o.error, o.at_ms])?;
        }
    }
    Ok(())
}

/// An attempt whose delivery was resent while it was in flight: it counts as
/// an attempt (as in `attempts`), but leaves the delivery's state to the
/// resend, so the event is sent again.
fn count_voided_attempt(tx: &Connection, o: &Outcome) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE deliveries SET attempts = attempts + 1, last_status = ?3, last_error = ?4
         WHERE sub_id = ?1 AND event_seq = ?2",
    )?
    .execute(params![o.sub_id, o.event_seq, o.status, o.error])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::OutcomeDone;
    use std::sync::mpsc;

    #[test]
    fn an_outcome_dropped_unanswered_is_reported_as_not_recorded() {
        let (tx, rx) = mpsc::channel();
        let done = OutcomeDone::new(move |result| {
            let _ = tx.send(result);
        });
        drop(done);
        assert_eq!(rx.recv().expect("told"), Err("the writer stopped".to_string()));
    }

    #[test]
    fn an_outcome_is_told_once() {
        let (tx, rx) = mpsc::channel();
        let done = OutcomeDone::new(move |result| {
            let _ = tx.send(result);
        });
        done.tell(Ok(()));
        assert_eq!(rx.recv().expect("told"), Ok(()));
        assert!(rx.recv().is_err(), "told a second time on drop");
    }
}
