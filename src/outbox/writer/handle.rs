//! The handle to the writer thread ([`Writer`], cheap to clone): every
//! request the rest of the agent makes of the outbox, queued on the bounded
//! channel, and the tickets their answers come back on.

use std::sync::Arc;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::handoff::{ExpectedOutcome, Flow, Outcome, Receipt, Starving};
use crate::config::SubscriptionConfig;
use crate::event::{ErrorCode, IngestError, NewEvent, Reply};
use crate::outbox::held::HeldChange;
use crate::outbox::resend::{ResendError, ResendOutcome, ResendRequest};
use crate::outbox::state::{ConcurrencyState, SubscriptionState};
use crate::outbox::Subscription;

use super::fanout::Fanout;
use super::request::WriteOp;
use super::requests;
use super::thread;

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
        let handle = thread::spawn(conn, fanout, flow.clone(), max_db_bytes, storage_full, rx);
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
        let op: WriteOp = Box::new(requests::Ingest {
            events,
            supersedes,
            replies: Vec::new(),
            reply,
        });
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
        let _ = self
            .tx
            .send(Box::new(requests::RecordOutcome { outcome, receipt }))
            .await;
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
            .send(Box::new(requests::RecordOutcomes {
                outcomes,
                held,
                receipt,
            }))
            .await;
    }

    /// Deletes stored held batches of `sub_id` (best effort; false if the
    /// writer's queue is full or it is gone).
    pub fn forget_held(&self, sub_id: i64, ids: Vec<String>) -> bool {
        ids.is_empty() || self.tx.try_send(Box::new(requests::ForgetHeld { sub_id, ids })).is_ok()
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
            .try_send(Box::new(requests::SubState {
                sub_id,
                state,
                in_flight,
                next_attempt_at_ms,
                concurrency,
            }))
            .is_ok()
    }

    /// Stores (or with `None` clears) the marker of a subscription stopped
    /// by a 410 (`outbox::gone`). Best effort, like [`Writer::set_sub_state`]:
    /// false when the queue is full, and the caller tries again.
    pub fn set_gone(&self, sub_id: i64, marker: Option<crate::outbox::gone::Marker>) -> bool {
        self.tx.try_send(Box::new(requests::Gone { sub_id, marker })).is_ok()
    }

    /// Queues deliveries again, in the writer's next transaction; the
    /// schedulers see it through `resend_generation`.
    pub async fn resend(&self, request: ResendRequest) -> Result<ResendOutcome, ResendError> {
        let (reply, rx) = oneshot::channel();
        let op: WriteOp = Box::new(requests::Resend {
            request,
            result: None,
            reply,
        });
        let stopped = || ResendError::Stopped;
        self.tx.send(op).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Deletes up to `limit` fully delivered events (oldest first), only those
    /// ingested before `older_than_ms` if given; returns how many went.
    pub async fn prune(&self, older_than_ms: Option<i64>, limit: usize) -> usize {
        let (reply, rx) = oneshot::channel();
        let op: WriteOp = Box::new(requests::Prune {
            older_than_ms,
            limit,
            pruned: 0,
            reply,
        });
        if self.tx.send(op).await.is_err() {
            return 0;
        }
        rx.await.unwrap_or(0)
    }

    /// Sets (`Some`) or deletes (`None`) entries of the `meta` table in one
    /// transaction; true once committed.
    pub async fn set_meta(&self, entries: Vec<(&'static str, Option<String>)>) -> bool {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Box::new(requests::Meta { entries, reply })).await.is_err() {
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
            .send(Box::new(requests::Reconfiguration { configs, reply }))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Commits a tiny write; true if the database took it (for `/healthz`).
    pub async fn ping(&self) -> bool {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Box::new(requests::Ping { reply })).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Queues a period's history samples; samples from before `keep_from_ms`
    /// are dropped in the same transaction. False when the writer is gone.
    pub async fn record_history(&self, samples: Vec<crate::outbox::history::Sample>, keep_from_ms: i64) -> bool {
        self.tx
            .send(Box::new(requests::History { samples, keep_from_ms }))
            .await
            .is_ok()
    }

    /// Counts an event rejected before reaching storage, by error code.
    /// Best effort: never blocks a producer's reply.
    pub fn count_rejected(&self, code: ErrorCode) {
        let _ = self.tx.try_send(Box::new(requests::Rejected(code)));
    }
}
