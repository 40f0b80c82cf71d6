//! What the writer is asked, as one trait: a request applies itself inside
//! the batch's transaction, answers once the batch is committed, and
//! answers with the error when it is not. Each kind of request is one type
//! in `requests.rs` with all of that in one place; the thread knows none of
//! them.

use rusqlite::Transaction;

use super::fanout::Fanout;
use super::sql::Effects;
use crate::config::SubscriptionConfig;
use crate::event::IngestError;
use crate::outbox::Subscription;

/// A request to the writer thread, as queued.
pub(super) type WriteOp = Box<dyn Request>;

/// What a request sees while it is applied: the batch's transaction, the
/// subscriptions to fan out to, the batch's effects so far, and the
/// storage cap's word.
pub(super) struct Applying<'a, 'c> {
    /// The batch's transaction.
    pub(super) tx: &'a Transaction<'c>,
    /// The configured subscriptions.
    pub(super) fanout: &'a [Fanout],
    /// What the batch must still announce (counts, new deliveries).
    pub(super) effects: &'a mut Effects,
    /// The outbox is at `storage.max_db_bytes`: new events are refused.
    pub(super) full: bool,
    /// `storage.max_db_bytes`, for the refusal's message.
    pub(super) max_db_bytes: u64,
}

/// The writer's own reconfiguration, for the one request that runs alone.
pub(super) type Reconfigure<'a> = &'a mut dyn FnMut(&[SubscriptionConfig]) -> Result<Vec<Subscription>, String>;

/// One kind of request to the writer. Each carries the channel its answer
/// goes to and, once applied, the answer itself, so a committed batch
/// answers every request from its own fields (no answer can be paired
/// with the wrong request).
pub(super) trait Request: Send {
    /// Whether a batch holding only such requests may wait for more
    /// outcomes (`grouping`): nobody waits for its answer but a scheduler.
    fn may_wait(&self) -> bool {
        false
    }

    /// Whether it brings new events (the storage cap is checked first).
    fn brings_events(&self) -> bool {
        false
    }

    /// Whether it runs alone, between two batches (see [`Request::run_alone`]).
    fn runs_alone(&self) -> bool {
        false
    }

    /// Runs a request that [`Request::runs_alone`], and answers it.
    fn run_alone(self: Box<Self>, reconfigure: Reconfigure<'_>) {
        let _ = reconfigure;
    }

    /// Applies it inside the open transaction, keeping its answer. An error
    /// rolls the whole batch back (it is then retried request by request).
    fn apply(&mut self, at: &mut Applying<'_, '_>) -> rusqlite::Result<()>;

    /// Sends its answer: the batch is committed.
    fn answer(self: Box<Self>) {}

    /// Sends the failure: the batch (or it alone) could not be committed.
    fn fail(self: Box<Self>, error: &IngestError) {
        let _ = error;
    }
}
