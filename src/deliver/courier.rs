//! Couriers: a subscription's request workers, one per request slot. A
//! courier takes one unit at a time (an event, or a batch) from its scheduler, has the destination
//! send it, decides what the answer means for the delivery
//! ([`decide::after_answer`]), tells the scheduler ([`Report::Answered`])
//! and queues the outcome with the writer, whose [`Receipt`] later tells
//! the scheduler that it is committed ([`Report::Recorded`]), on the same
//! channel: the answer of a delivery always comes before its commit. It is
//! free for the next event as soon as the outcome is queued: no task is
//! spawned per event.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::decide::{self, Plan};
use super::destination::{Answer, AnswerKind, Destination};
use crate::config::RetryConfig;
use crate::metrics::Metrics;
use crate::outbox::held::{HeldChange, HeldPart};
use crate::outbox::now_ms;
use crate::outbox::read::Head;
use crate::outbox::writer::{Decision, ExpectedOutcome, Outcome, Receipt, Recorded, Writer};

/// What one request carries.
pub enum Unit {
    /// One event and its delivery row.
    One(Head),
    /// A batch: its id and its events, in the order they go.
    Batch {
        /// The batch's `webhook-id` (`batch::batch_id`).
        id: String,
        /// Its events and their delivery rows.
        heads: Vec<Head>,
        /// Its entities' shares, as `outbox::held` stores them if it fails.
        parts: Vec<HeldPart>,
    },
}

/// One unit for a courier to send.
pub struct Job {
    /// The scheduler's number for this delivery.
    pub ticket: u64,
    /// The event or the batch.
    pub unit: Unit,
    /// Lets the writer hold a group of outcomes for this one.
    pub expected: ExpectedOutcome,
}

/// What a scheduler hears of a delivery, in this order, on one channel.
pub enum Report {
    /// Its request is answered and the courier free (sent before the
    /// outcome is queued).
    Answered(Sent),
    /// The writer committed its outcome, or could not.
    Recorded(Recorded),
}

/// A courier's word that a request is answered and the courier is free.
pub struct Sent {
    /// Which courier is free again.
    pub courier: usize,
    /// The delivery.
    pub ticket: u64,
    /// What the destination said.
    pub answer: Answer,
    /// What that means for the delivery.
    pub plan: Plan,
    /// How long the request took (adaptive concurrency).
    pub elapsed: std::time::Duration,
}

/// What every courier of a subscription shares.
pub struct Crew<D> {
    /// Where events go.
    pub destination: Arc<D>,
    /// Where outcomes are recorded.
    pub writer: Writer,
    /// Subscription row id.
    pub sub_id: i64,
    /// Subscription name (metrics).
    pub name: String,
    /// Its retry settings.
    pub retry: RetryConfig,
    /// Delivery metrics.
    pub metrics: Metrics,
    /// To the scheduler: answers, and (through the writer) commits.
    pub reports: mpsc::UnboundedSender<Report>,
}

impl<D: Destination> Crew<D> {
    /// Courier `index`: takes events until the scheduler is gone.
    pub async fn work(self: Arc<Self>, index: usize, mut jobs: mpsc::Receiver<Job>) {
        while let Some(job) = jobs.recv().await {
            self.deliver(index, job).await;
        }
    }

    /// Sends one unit, tells the scheduler the answer, queues the outcome.
    async fn deliver(&self, courier: usize, job: Job) {
        let Job { ticket, unit, expected } = job;
        let head = match unit {
            Unit::One(head) => head,
            Unit::Batch { id, heads, parts } => {
                return self.deliver_batch(courier, ticket, id, heads, parts, expected).await
            }
        };
        let at_ms = now_ms();
        let started = std::time::Instant::now();
        let answer = self.destination.send(&head.event).await;
        let elapsed = started.elapsed();
        let attempts = head.attempts + 1;
        let plan = decide::after_answer(
            &answer,
            attempts,
            head.first_failed_at,
            at_ms,
            &self.retry,
            rand::random::<f64>(),
        );
        self.metrics
            .attempt(&self.name, answer.result_name(), elapsed.as_secs_f64());
        if answer.kind == AnswerKind::Delivered {
            self.metrics.delivered_after(
                &self.name,
                (now_ms().saturating_sub(head.event.ingested_at).max(0) as f64) / 1000.0,
            );
        }
        let outcome = Outcome {
            sub_id: self.sub_id,
            event_seq: head.event.seq,
            at_ms,
            status: answer.status,
            error: answer.error.clone(),
            duration_ms: elapsed.as_millis() as i64,
            decision: plan.decision,
            resends: head.resends,
        };
        let _ = self.reports.send(Report::Answered(Sent {
            courier,
            ticket,
            answer,
            plan,
            elapsed,
        }));
        self.writer.record(outcome, Some(expected), self.receipt(ticket)).await;
    }

    /// Sends a batch as one request: its answer is every event's answer, and
    /// every event gets its outcome (its attempt recorded), committed
    /// together. The plan is the batch's: its attempts and its give-up clock
    /// are those of its oldest failure, so the batch parks (or retries) whole.
    /// A batch that goes again is stored as held with its outcomes, so a
    /// restart sends it again whole too; one delivered or parked is not.
    async fn deliver_batch(
        &self,
        courier: usize,
        ticket: u64,
        id: String,
        heads: Vec<Head>,
        parts: Vec<HeldPart>,
        expected: ExpectedOutcome,
    ) {
        let at_ms = now_ms();
        let started = std::time::Instant::now();
        let events: Vec<&crate::outbox::read::StoredEvent> = heads.iter().map(|h| &h.event).collect();
        let answer = self.destination.send_batch(&id, &events).await;
        let elapsed = started.elapsed();
        let attempts = heads.iter().map(|h| h.attempts).max().unwrap_or(0) + 1;
        let first_failed_at = heads.iter().filter_map(|h| h.first_failed_at).min();
        let plan = decide::after_answer(
            &answer,
            attempts,
            first_failed_at,
            at_ms,
            &self.retry,
            rand::random::<f64>(),
        );
        self.metrics
            .attempt(&self.name, answer.result_name(), elapsed.as_secs_f64());
        if answer.kind == AnswerKind::Delivered {
            let now = now_ms();
            self.metrics.delivered_after_each(
                &self.name,
                heads
                    .iter()
                    .map(|head| (now.saturating_sub(head.event.ingested_at).max(0) as f64) / 1000.0),
            );
        }
        let outcomes = heads
            .iter()
            .map(|head| Outcome {
                sub_id: self.sub_id,
                event_seq: head.event.seq,
                at_ms,
                status: answer.status,
                error: answer.error.clone(),
                duration_ms: elapsed.as_millis() as i64,
                decision: plan.decision,
                resends: head.resends,
            })
            .collect();
        let held = match plan.decision {
            Decision::Retry { .. } | Decision::Hold => HeldChange::Keep { id, parts },
            Decision::Delivered | Decision::Park => HeldChange::Forget { id },
        };
        let _ = self.reports.send(Report::Answered(Sent {
            courier,
            ticket,
            answer,
            plan,
            elapsed,
        }));
        self.writer
            .record_batch(outcomes, held, Some(expected), self.receipt(ticket))
            .await;
    }

    /// Where the writer tells the commit of delivery `ticket`: the same
    /// channel as its answer, which went first.
    fn receipt(&self, ticket: u64) -> Receipt {
        let reports = self.reports.clone();
        Receipt::with(ticket, move |recorded| {
            // A scheduler that is gone has nobody left to tell.
            let _ = reports.send(Report::Recorded(recorded));
        })
    }
}
