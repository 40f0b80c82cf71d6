//! The single writer: one thread owns the write connection and turns every
//! queued request (ingest, delivery outcome, state change, resend, prune)
//! into as few transactions as possible (group commit).
//!
//! Invariant: a producer's reply and a delivery's [`Recorded`] are sent only
//! after the transaction holding them committed with `synchronous=FULL`
//! (the thread's `process` answers in `finish`, after `apply_all`'s
//! commit). No transaction is ever open while waiting on the network:
//! network work happens elsewhere and reaches this thread as finished
//! outcomes.
//!
//! The parts:
//! - `handle`: the handle ([`Writer`]) and its tickets;
//! - `request`: the `Request` trait the thread applies (apply, answer,
//!   fail); `requests`: every kind of request, each in one place;
//! - `fanout`: the subscriptions new events go to;
//! - `thread`: the thread, its batches, and what a batch answers once
//!   committed or failed;
//! - [`grouping`]: which requests share a transaction (the group-commit
//!   timing policy);
//! - [`handoff`]: the contract with the schedulers (outcomes, receipts, the
//!   counters that steer grouping);
//! - [`sql`]: every statement, run inside the batch's transaction.

mod fanout;
pub mod grouping;
mod handle;
pub mod handoff;
mod request;
mod requests;
mod sql;
mod thread;

pub use grouping::{OUTCOME_GAP, OUTCOME_GROUP_WAIT};
pub use handle::{Ticket, Writer};
pub use handoff::{Decision, ExpectedOutcome, Flow, Outcome, Receipt, Recorded, Starving};
