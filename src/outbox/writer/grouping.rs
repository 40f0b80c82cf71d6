//! The group-commit policy: which queued requests go into one transaction.
//!
//! Everything waiting in the queue goes together (up to [`MAX_BATCH`]).
//! Outcomes are grouped harder than ingest: while requests are still on the
//! wire and their outcomes keep coming (one at least every [`OUTCOME_GAP`]),
//! a batch of outcomes waits up to [`OUTCOME_GROUP_WAIT`] for them, so a
//! drain commits a few large groups instead of many small ones (every commit
//! writes and syncs its pages). Nothing else is held: a batch goes at the end
//! of the current step when anything but outcomes comes (an ingest's reply
//! waits at most one step, 250 µs), and at once when no request is left on
//! the wire or when a scheduler has a free request slot and nothing to send
//! but what waits for this commit ([`Flow::may_hold_outcomes`]: a few
//! entities with a backlog each, which would only be slowed down).

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::handoff::Flow;
use super::request::WriteOp;

/// Most requests folded into one transaction.
pub const MAX_BATCH: usize = 2048;
/// The longest a batch of outcomes waits for those of requests still on the
/// wire. Measured on a 200k-event drain (docs/BENCHMARKS.md): agent CPU per
/// delivered event 52-56 µs without waiting, 38 µs with 4 ms.
pub const OUTCOME_GROUP_WAIT: Duration = Duration::from_millis(4);
/// The wait goes in steps of this length, and ends after a step in which no
/// outcome came: requests that are slow to answer (a hung endpoint, a long
/// timeout) must not hold back the outcomes of a fast one. A request other
/// than an outcome (an ingest) that comes during a step waits for its end.
pub const OUTCOME_GAP: Duration = Duration::from_micros(250);

/// Waits for the next request and returns it with everything that should
/// share its transaction; `None` once every sender is gone.
pub(super) fn next_batch(rx: &mut mpsc::Receiver<WriteOp>, flow: &Flow) -> Option<Vec<WriteOp>> {
    let first = rx.blocking_recv()?;
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(op) => batch.push(op),
            Err(_) => break,
        }
    }
    wait_for_outcomes(rx, flow, &mut batch);
    Some(batch)
}

/// Lets a batch of outcomes take in those of the requests still on the
/// wire, for at most [`OUTCOME_GROUP_WAIT`]; see the module doc.
///
/// It sleeps in steps of [`OUTCOME_GAP`] and then takes what came, rather
/// than waking for every outcome: waking this thread once per outcome cost
/// about a tenth of the drain's CPU.
fn wait_for_outcomes(rx: &mut mpsc::Receiver<WriteOp>, flow: &Flow, batch: &mut Vec<WriteOp>) {
    if !batch.iter().all(|op| op.may_wait()) {
        return;
    }
    let deadline = Instant::now() + OUTCOME_GROUP_WAIT;
    loop {
        if batch.len() >= MAX_BATCH || !flow.may_hold_outcomes() {
            return;
        }
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        std::thread::sleep(OUTCOME_GAP.min(deadline - now));
        let mut came = false;
        loop {
            match rx.try_recv() {
                Ok(op) => {
                    came = true;
                    let go_now = !op.may_wait();
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
