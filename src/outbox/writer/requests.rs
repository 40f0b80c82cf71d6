//! Every kind of request to the writer, each in one place: what it
//! carries, what it does in the batch's transaction, what it answers once
//! committed and when not. A new kind of request is one type here and the
//! `Writer` method that queues it.

use tokio::sync::oneshot;

use super::handoff::{Outcome, Receipt};
use super::request::{Applying, Reconfigure, Request};
use super::sql;
use crate::config::SubscriptionConfig;
use crate::event::{ErrorCode, IngestError, NewEvent, Reply};
use crate::outbox::held::HeldChange;
use crate::outbox::resend::{self, ResendError, ResendOutcome, ResendRequest};
use crate::outbox::state::{ConcurrencyState, SubscriptionState};
use crate::outbox::Subscription;

/// Store events; one reply per event.
pub(super) struct Ingest {
    /// The validated events, in the producer's order.
    pub(super) events: Vec<NewEvent>,
    /// The agent's own heartbeat: once stored, it supersedes the older
    /// heartbeats of its entity that are not delivered yet.
    pub(super) supersedes: bool,
    /// Their replies, filled by `apply`.
    pub(super) replies: Vec<Reply>,
    /// Where the replies go after the commit.
    pub(super) reply: oneshot::Sender<Vec<Reply>>,
}

impl Request for Ingest {
    fn brings_events(&self) -> bool {
        true
    }

    fn apply(&mut self, at: &mut Applying<'_, '_>) -> rusqlite::Result<()> {
        self.replies = if at.full {
            at.effects.reject(ErrorCode::StorageFull, self.events.len() as i64);
            let msg = format!("the outbox reached storage.max_db_bytes ({} bytes)", at.max_db_bytes);
            vec![IngestError::new(ErrorCode::StorageFull, msg).into(); self.events.len()]
        } else {
            self.events
                .iter()
                .map(|e| sql::insert_event(at.tx, at.fanout, e, at.effects))
                .collect::<rusqlite::Result<Vec<_>>>()?
        };
        if self.supersedes {
            for (e, reply) in self.events.iter().zip(self.replies.iter()) {
                if let Reply::Accepted { entity_seq, .. } = reply {
                    sql::supersede_heartbeats(at.tx, &e.entity, *entity_seq)?;
                }
            }
        }
        Ok(())
    }

    fn answer(self: Box<Self>) {
        let _ = self.reply.send(self.replies);
    }

    fn fail(self: Box<Self>, error: &IngestError) {
        let _ = self.reply.send(vec![error.clone().into(); self.events.len()]);
    }
}

/// Record a delivery attempt.
pub(super) struct RecordOutcome {
    /// What to record.
    pub(super) outcome: Outcome,
    /// Told after the commit (or the failure).
    pub(super) receipt: Receipt,
}

impl Request for RecordOutcome {
    fn may_wait(&self) -> bool {
        true
    }

    fn apply(&mut self, at: &mut Applying<'_, '_>) -> rusqlite::Result<()> {
        sql::apply_outcome(at.tx, &self.outcome, at.effects)
    }

    fn answer(self: Box<Self>) {
        self.receipt.tell(Ok(()));
    }

    fn fail(self: Box<Self>, error: &IngestError) {
        self.receipt.tell(Err(error.message.clone()));
    }
}

/// Record the attempt of a batch: one outcome per event, in the same
/// transaction, one receipt for all.
pub(super) struct RecordOutcomes {
    /// What to record, one per event of the batch.
    pub(super) outcomes: Vec<Outcome>,
    /// What it does to the batch's stored composition (`outbox::held`).
    pub(super) held: HeldChange,
    /// Told after the commit (or the failure).
    pub(super) receipt: Receipt,
}

impl Request for RecordOutcomes {
    fn may_wait(&self) -> bool {
        true
    }

    fn apply(&mut self, at: &mut Applying<'_, '_>) -> rusqlite::Result<()> {
        for outcome in &self.outcomes {
            sql::apply_outcome(at.tx, outcome, at.effects)?;
        }
        if let Some(sub_id) = self.outcomes.first().map(|o| o.sub_id) {
            crate::outbox::held::apply(at.tx, sub_id, &self.held)?;
        }
        Ok(())
    }

    fn answer(self: Box<Self>) {
        self.receipt.tell(Ok(()));
    }

    fn fail(self: Box<Self>, error: &IngestError) {
        self.receipt.tell(Err(error.message.clone()));
    }
}

/// Delete stored held batches that will not go again as they were (best
/// effort, no answer: a leftover is found out at the next start).
pub(super) struct ForgetHeld {
    /// Subscription row id.
    pub(super) sub_id: i64,
    /// Their ids.
    pub(super) ids: Vec<String>,
}

impl Request for ForgetHeld {
    fn may_wait(&self) -> bool {
        true
    }

    fn apply(&mut self, at: &mut Applying<'_, '_>) -> rusqlite::Result<()> {
        for id in &self.ids {
            crate::outbox::held::forget(at.tx, self.sub_id, id)?;
        }
        Ok(())
    }
}

/// Record a subscription's state for `status` (best effort, no answer).
pub(super) struct SubState {
    /// Subscription row id.
    pub(super) sub_id: i64,
    /// Its state.
    pub(super) state: SubscriptionState,
    /// Requests in flight.
    pub(super) in_flight: i64,
    /// When it plans its next attempt, wall-clock ms, if it waits.
    pub(super) next_attempt_at_ms: Option<i64>,
    /// Its request concurrency; `None` once it stops.
    pub(super) concurrency: Option<ConcurrencyState>,
}

impl Request for SubState {
    fn may_wait(&self) -> bool {
        true
    }

    fn apply(&mut self, at: &mut Applying<'_, '_>) -> rusqlite::Result<()> {
        sql::set_sub_state(
            at.tx,
            self.sub_id,
            self.state,
            self.in_flight,
            self.next_attempt_at_ms,
            self.concurrency,
        )
    }
}

/// Store or clear a subscription's 410 marker (`outbox::gone`; best effort,
/// no answer: the scheduler stores it again until it is in).
pub(super) struct Gone {
    /// Subscription row id.
    pub(super) sub_id: i64,
    /// The marker; `None` clears it.
    pub(super) marker: Option<crate::outbox::gone::Marker>,
}

impl Request for Gone {
    fn may_wait(&self) -> bool {
        true
    }

    fn apply(&mut self, at: &mut Applying<'_, '_>) -> rusqlite::Result<()> {
        crate::outbox::gone::set_marker(at.tx, self.sub_id, self.marker.as_ref())
    }
}

/// Count an event refused before it reached storage.
pub(super) struct Rejected(pub(super) ErrorCode);

impl Request for Rejected {
    fn apply(&mut self, at: &mut Applying<'_, '_>) -> rusqlite::Result<()> {
        at.effects.reject(self.0, 1);
        Ok(())
    }
}

/// A tiny write, for `/healthz`.
pub(super) struct Ping {
    /// True once committed.
    pub(super) reply: oneshot::Sender<bool>,
}

impl Request for Ping {
    fn apply(&mut self, at: &mut Applying<'_, '_>) -> rusqlite::Result<()> {
        sql::ping(at.tx)
    }

    fn answer(self: Box<Self>) {
        let _ = self.reply.send(true);
    }

    fn fail(self: Box<Self>, _: &IngestError) {
        let _ = self.reply.send(false);
    }
}

/// Delete delivered events.
pub(super) struct Prune {
    /// Only events ingested before this (wall-clock ms).
    pub(super) older_than_ms: Option<i64>,
    /// At most this many.
    pub(super) limit: usize,
    /// How many went, filled by `apply`.
    pub(super) pruned: usize,
    /// Where that number goes after the commit.
    pub(super) reply: oneshot::Sender<usize>,
}

impl Request for Prune {
    fn apply(&mut self, at: &mut Applying<'_, '_>) -> rusqlite::Result<()> {
        self.pruned = sql::prune(at.tx, self.older_than_ms, self.limit)?;
        Ok(())
    }

    fn answer(self: Box<Self>) {
        let _ = self.reply.send(self.pruned);
    }

    fn fail(self: Box<Self>, _: &IngestError) {
        let _ = self.reply.send(0);
    }
}

/// Store a period's history samples (best effort, no answer).
pub(super) struct History {
    /// One per configured subscription.
    pub(super) samples: Vec<crate::outbox::history::Sample>,
    /// Samples from before this (wall-clock ms) go.
    pub(super) keep_from_ms: i64,
}

impl Request for History {
    fn apply(&mut self, at: &mut Applying<'_, '_>) -> rusqlite::Result<()> {
        crate::outbox::history::record(at.tx, &self.samples, self.keep_from_ms)
    }
}

/// Set (or, with `None`, delete) `meta` entries.
pub(super) struct Meta {
    /// Key and value pairs.
    pub(super) entries: Vec<(&'static str, Option<String>)>,
    /// True once committed.
    pub(super) reply: oneshot::Sender<bool>,
}

impl Request for Meta {
    fn apply(&mut self, at: &mut Applying<'_, '_>) -> rusqlite::Result<()> {
        sql::set_meta(at.tx, &self.entries)
    }

    fn answer(self: Box<Self>) {
        let _ = self.reply.send(true);
    }

    fn fail(self: Box<Self>, _: &IngestError) {
        let _ = self.reply.send(false);
    }
}

/// Take a reloaded list of subscriptions: register the new ones, mark the
/// dropped ones, fan out with the new list from the next batch on. Runs
/// alone, between two batches: what was queued before it is fanned out
/// with the old subscriptions, what came after with the new.
pub(super) struct Reconfiguration {
    /// The subscriptions as the reloaded config has them.
    pub(super) configs: Vec<SubscriptionConfig>,
    /// The subscriptions with their row ids, or why it failed.
    pub(super) reply: oneshot::Sender<Result<Vec<Subscription>, String>>,
}

impl Request for Reconfiguration {
    fn runs_alone(&self) -> bool {
        true
    }

    fn run_alone(self: Box<Self>, reconfigure: Reconfigure<'_>) {
        let _ = self.reply.send(reconfigure(&self.configs));
    }

    /// Never in a batch (it runs alone): nothing to apply.
    fn apply(&mut self, _: &mut Applying<'_, '_>) -> rusqlite::Result<()> {
        Ok(())
    }

    fn answer(self: Box<Self>) {
        let _ = self.reply.send(Err("not applied".into()));
    }

    fn fail(self: Box<Self>, error: &IngestError) {
        let _ = self.reply.send(Err(error.message.clone()));
    }
}

/// Queue deliveries again (operator action).
pub(super) struct Resend {
    /// What to queue again.
    pub(super) request: ResendRequest,
    /// Its result, filled by `apply`.
    pub(super) result: Option<Result<ResendOutcome, ResendError>>,
    /// Where the result goes after the commit.
    pub(super) reply: oneshot::Sender<Result<ResendOutcome, ResendError>>,
}

impl Request for Resend {
    fn apply(&mut self, at: &mut Applying<'_, '_>) -> rusqlite::Result<()> {
        self.result = match resend::apply(at.tx, &self.request) {
            // The whole batch rolls back and is retried request by request.
            Err(ResendError::Storage(e)) => return Err(e),
            other => Some(other),
        };
        Ok(())
    }

    fn answer(self: Box<Self>) {
        let _ = self.reply.send(self.result.unwrap_or(Err(ResendError::Stopped)));
    }

    fn fail(self: Box<Self>, error: &IngestError) {
        let _ = self.reply.send(Err(ResendError::NotStored(error.message.clone())));
    }
}
