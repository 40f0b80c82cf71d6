//! What the writer is asked: one request kind per variant, each carrying
//! its answer's channel and, once applied, the answer; and the subscription
//! data it fans new events out with.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::handoff::{Outcome, Receipt};
use crate::config::SubscriptionConfig;
use crate::event::{ErrorCode, NewEvent, Reply};
use crate::outbox::held::HeldChange;
use crate::outbox::resend::{ResendError, ResendOutcome, ResendRequest};
use crate::outbox::state::{ConcurrencyState, SubscriptionState};
use crate::outbox::{Inbox, Subscription};

/// A request to the writer thread. Each one carries the channel its answer
/// goes to and, once applied, the answer itself, so a committed batch
/// answers every request from its own fields (no answer can be paired with
/// the wrong request).
pub(super) enum WriteOp {
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
        marker: Option<crate::outbox::gone::Marker>,
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
    pub(super) fn may_wait(&self) -> bool {
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

/// Subscription data the writer needs to fan events out.
pub(crate) struct Fanout {
    /// Subscription row id.
    pub(super) id: i64,
    /// Its configuration (its event-type filter).
    pub(super) config: Arc<SubscriptionConfig>,
    /// Where new deliveries are announced.
    pub(super) inbox: Arc<Inbox>,
}

impl Fanout {
    pub(super) fn of(sub: &Subscription) -> Fanout {
        Fanout {
            id: sub.id,
            config: sub.config.clone(),
            inbox: sub.inbox.clone(),
        }
    }
}
