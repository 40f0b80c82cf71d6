//! The contract between the writer and the schedulers: how a delivery's
//! outcome reaches the writer, how its commit is told back, and the two
//! counters through which schedulers steer the grouping of outcomes.
//!
//! Invariants (each enforced here, by construction):
//! - **A [`Receipt`] is told exactly once**: by the writer with the result of
//!   the transaction that held its outcome, or, if it is dropped unanswered
//!   (the writer stopped), as not recorded. A scheduler waiting for it never
//!   waits forever. Checked by the unit tests below.
//! - **`expected` counts requests on the wire whose outcome is not queued
//!   yet**: an [`ExpectedOutcome`] adds one while it lives, and is dropped
//!   before its outcome is queued, so the writer, woken by that outcome,
//!   never waits for it (`Writer::record`).
//! - **`starving` counts schedulers that have a free request slot and
//!   nothing to send but events that wait for a commit**: a [`Starving`]
//!   adds one while set, and takes it back when unset or dropped. While any
//!   scheduler starves, outcomes do not wait for each other
//!   ([`Flow::may_hold_outcomes`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

/// What became of one delivery attempt, as the writer records it.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Subscription row id.
    pub sub_id: i64,
    /// The event's `seq`.
    pub event_seq: i64,
    /// Wall-clock time of the attempt, ms.
    pub at_ms: i64,
    /// HTTP status (or the destination's equivalent), if an answer came.
    pub status: Option<u16>,
    /// Error text for a failure.
    pub error: Option<String>,
    /// Duration of the attempt, ms.
    pub duration_ms: i64,
    /// The state the delivery moves to.
    pub decision: Decision,
    /// The delivery's `resends` when the request was sent: if it was resent
    /// since, the attempt is recorded but does not change its state.
    pub resends: i64,
}

/// The state a delivery moves to after an attempt (decided by
/// `deliver::decide`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// It got its 2xx (or acknowledgement): done.
    Delivered,
    /// Failed; tried again at this wall-clock time (stored for people: the
    /// scheduler waits on a monotonic timer).
    Retry {
        /// When the next attempt is planned, wall-clock ms.
        next_attempt_at_ms: i64,
    },
    /// Failed past `retry.give_up_after`: parked until resent.
    Park,
    /// The endpoint is gone (410): the attempt is recorded, the delivery
    /// stays pending as it was (its give-up clock does not start), to be
    /// sent once the subscription is resumed.
    Hold,
}

/// The writer's word on one outcome: committed (`Ok`), or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The scheduler's number for the delivery (from [`Receipt::new`]).
    pub ticket: u64,
    /// `Ok` once the transaction holding the outcome committed.
    pub result: Result<(), String>,
}

/// Where the writer tells a scheduler that an outcome was recorded; told
/// exactly once (see the module doc).
pub struct Receipt {
    /// The scheduler's number for the delivery.
    ticket: u64,
    /// Hands the word to the scheduler; `None` once told.
    to: Option<Box<dyn FnOnce(Recorded) + Send>>,
}

impl Receipt {
    /// A receipt that tells `to` about delivery `ticket`.
    pub fn new(ticket: u64, to: mpsc::UnboundedSender<Recorded>) -> Self {
        Self::with(ticket, move |recorded| {
            // A scheduler that is gone has nobody left to tell.
            let _ = to.send(recorded);
        })
    }

    /// A receipt that hands its word to `tell` (a scheduler's one channel
    /// of reports, say).
    pub fn with(ticket: u64, tell: impl FnOnce(Recorded) + Send + 'static) -> Self {
        Receipt {
            ticket,
            to: Some(Box::new(tell)),
        }
    }

    /// Tells the result; the receipt is spent.
    pub(super) fn tell(mut self, result: Result<(), String>) {
        self.send(result);
    }

    fn send(&mut self, result: Result<(), String>) {
        if let Some(to) = self.to.take() {
            to(Recorded {
                ticket: self.ticket,
                result,
            });
        }
    }
}

impl Drop for Receipt {
    fn drop(&mut self) {
        self.send(Err("the writer stopped".to_string()));
    }
}

/// The counters shared by the writer and the schedulers (module doc).
#[derive(Default)]
pub struct Flow {
    /// Requests on the wire whose outcomes are not queued yet.
    expected: AtomicUsize,
    /// Schedulers that wait for commits with a request slot free.
    starving: AtomicUsize,
}

impl Flow {
    /// Whether a group of outcomes may wait for more: some request is still
    /// on the wire and no scheduler waits for this commit to send again.
    pub fn may_hold_outcomes(&self) -> bool {
        self.expected.load(Ordering::Acquire) > 0 && self.starving.load(Ordering::Acquire) == 0
    }

    /// Counts a request about to be sent until the returned value is dropped.
    pub fn expect_outcome(self: &Arc<Self>) -> ExpectedOutcome {
        self.expected.fetch_add(1, Ordering::AcqRel);
        ExpectedOutcome(self.clone())
    }

    /// A scheduler's [`Starving`] flag, not set.
    pub fn starving(self: &Arc<Self>) -> Starving {
        Starving {
            flow: self.clone(),
            set: false,
        }
    }
}

/// A request on the wire whose outcome a group of outcomes may wait for.
/// Dropped when the outcome is queued (or the request abandoned).
pub struct ExpectedOutcome(Arc<Flow>);

impl Drop for ExpectedOutcome {
    fn drop(&mut self) {
        self.0.expected.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A scheduler's say in whether outcomes may wait for each other: set while
/// it has a free request slot and nothing ready to send.
pub struct Starving {
    /// The shared counters.
    flow: Arc<Flow>,
    /// Whether this scheduler is counted now.
    set: bool,
}

impl Starving {
    /// Records whether the scheduler is starving now.
    pub fn set(&mut self, starving: bool) {
        if starving != self.set {
            self.set = starving;
            if starving {
                self.flow.starving.fetch_add(1, Ordering::AcqRel);
            } else {
                self.flow.starving.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

impl Drop for Starving {
    fn drop(&mut self) {
        self.set(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_dropped_unanswered_is_told_as_not_recorded() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        drop(Receipt::new(7, tx));
        let told = rx.try_recv().expect("told");
        assert_eq!(told.ticket, 7);
        assert_eq!(told.result, Err("the writer stopped".to_string()));
    }

    #[test]
    fn a_receipt_is_told_once() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        Receipt::new(3, tx).tell(Ok(()));
        assert_eq!(rx.try_recv().expect("told").result, Ok(()));
        assert!(rx.try_recv().is_err(), "told a second time on drop");
    }

    #[test]
    fn outcomes_are_held_only_while_a_request_is_out_and_nobody_starves() {
        let flow = Arc::new(Flow::default());
        assert!(!flow.may_hold_outcomes(), "nothing on the wire");
        let expected = flow.expect_outcome();
        assert!(flow.may_hold_outcomes());
        let mut starving = flow.starving();
        starving.set(true);
        starving.set(true);
        assert!(!flow.may_hold_outcomes(), "a scheduler starves");
        drop(starving);
        assert!(flow.may_hold_outcomes(), "dropping the flag uncounts it");
        drop(expected);
        assert!(!flow.may_hold_outcomes());
    }
}
