//! Answers: what the couriers report (`Report::Answered`), what the writer
//! recorded (`Report::Recorded`), and what each means for the entity, the link and the
//! subscription (the rules are `super::super::decide`'s).

use std::time::Duration;

use tokio::time::Instant;

use crate::deliver::courier::{Report, Sent};
use crate::deliver::decide::{self, EntityNext, Heeded, LinkChange};
use crate::deliver::destination::{Answer, AnswerKind, Destination};
use crate::outbox::gone::Marker;
use crate::outbox::now_ms;
use crate::outbox::writer::{Decision, Recorded};

use super::*;

impl<D: Destination> Scheduler<D> {
    /// Takes every answer and commit already waiting.
    pub(super) fn take_reports(&mut self) {
        while let Ok(report) = self.reports_rx.try_recv() {
            self.on_report(report);
        }
    }

    /// One delivery's answer, or its commit (which always comes after its
    /// answer: the courier tells it before it queues the outcome).
    pub(super) fn on_report(&mut self, report: Report) {
        match report {
            Report::Answered(sent) => self.on_sent(sent),
            Report::Recorded(recorded) => self.on_recorded(recorded),
        }
    }

    /// A courier has its answer and is free; on a success the request slot
    /// is free too.
    pub(super) fn on_sent(&mut self, sent: Sent) {
        self.idle.push(sent.courier);
        if sent.answer.kind == AnswerKind::Delivered {
            self.requests = self.requests.saturating_sub(1);
        }
        let now = Instant::now();
        let limit = self.concurrency.limit();
        self.concurrency.on_answer(sent.answer.kind, sent.elapsed, now);
        if self.concurrency.limit() != limit {
            tracing::debug!(
                subscription = %self.sub.config.name,
                limit = self.concurrency.limit(),
                mean_rtt_ms = self.concurrency.mean_rtt().map(|s| s * 1000.0),
                "adaptive concurrency: new limit"
            );
        }
        let heeded = self
            .link
            .heed(&sent.answer, &self.sub.config.retry, rand::random::<f64>(), now);
        self.on_heeded(heeded, &sent.answer, now);
        if let Some(flight) = self.flights.get_mut(&sent.ticket) {
            flight.answered = Some((sent.answer, sent.plan));
        }
    }

    /// Acts on what an answer means for the whole subscription (a pause, a
    /// stop); requests already on the wire go on.
    pub(super) fn on_heeded(&mut self, heeded: Heeded, answer: &Answer, now: Instant) {
        let name = &self.sub.config.name;
        match heeded {
            Heeded::Nothing => {}
            Heeded::Paused { until } | Heeded::PauseLonger { until } => {
                let wait = humantime::format_duration(Duration::from_secs(
                    until.saturating_duration_since(now).as_secs_f64().ceil() as u64,
                ));
                if matches!(heeded, Heeded::Paused { .. }) && self.link.throttles_in_a_row == 1 {
                    tracing::info!(subscription = %name, error = ?answer.error, pause = %wait,
                        "the endpoint asks to slow down: every entity of the subscription waits");
                } else {
                    tracing::debug!(subscription = %name, error = ?answer.error, pause = %wait, "throttled again");
                }
                self.persist_state();
            }
            Heeded::WentGone => {
                tracing::warn!(subscription = %name, url = %self.sub.config.url_for_logs(), error = ?answer.error,
                    "the endpoint answered 410 Gone: the subscription stops sending (nothing is dropped) until its config changes or `store-outbox resume {name}`");
                let marker = Marker {
                    fingerprint: self.fingerprint.clone(),
                    since_ms: now_ms(),
                };
                self.writer.set_gone(self.sub.id, Some(marker.clone()));
                self.gone = Some((marker, false));
                self.persist_state();
            }
        }
    }

    /// Applies a committed (or failed) outcome to the scheduling state.
    pub(super) fn on_recorded(&mut self, recorded: Recorded) {
        let Some(mut flight) = self.flights.remove(&recorded.ticket) else {
            tracing::error!(subscription = %self.sub.config.name, ticket = recorded.ticket, "an outcome for no delivery in flight");
            return;
        };
        let now = Instant::now();
        if flight.was_probe {
            self.probe_in_flight = false;
        }
        let Some((answer, plan)) = flight.answered.take() else {
            // Cannot happen (the answer is always taken first); if it did,
            // the events are simply sent again.
            tracing::error!(subscription = %self.sub.config.name, "an outcome without its answer; the event goes again");
            self.requests = self.requests.saturating_sub(1);
            self.release(&flight, Decision::Hold, Duration::ZERO, now);
            return;
        };
        if answer.kind != AnswerKind::Delivered {
            // A failure held its request slot until now.
            self.requests = self.requests.saturating_sub(1);
        }
        if let Err(error) = recorded.result {
            self.on_unrecorded(flight, &error, now);
            return;
        }
        if self.unrecorded_in_a_row > 0 {
            tracing::info!(subscription = %self.sub.config.name, "delivery outcomes are recorded again; resuming");
            self.unrecorded_in_a_row = 0;
            self.storage_pause_until = None;
        }
        let change = self.link.on_answer(
            &answer,
            flight.was_probe,
            &self.sub.config.retry,
            rand::random::<f64>(),
            now,
        );
        self.on_link_change(change, &answer, now);
        if plan.decision == Decision::Park {
            tracing::warn!(subscription = %self.sub.config.name, error = ?answer.error, events = flight.parts.iter().map(|p| p.count).sum::<usize>(),
                "delivery parked after retry.give_up_after; its entity waits until it is resent");
        }
        self.release(&flight, plan.decision, plan.wait, now);
    }

    /// Where the entities of a finished request go. A batch that is to be
    /// tried again is held whole (same events, same order, same id) unless a
    /// resend reopened events of one of its entities meanwhile; then each
    /// entity goes on by itself, as after a single event.
    pub(super) fn release(&mut self, flight: &Flight, decision: Decision, wait: Duration, now: Instant) {
        let again = matches!(decision, Decision::Retry { .. } | Decision::Hold);
        if let (true, Some(id)) = (again, &flight.batch_id) {
            // Nothing of a failed batch was delivered, so a rewind to its own
            // first event (an in-flight entity's, set by any resend) changes
            // nothing; only one to an event before it breaks the batch.
            let rewound = flight.parts.iter().any(|p| {
                self.entities
                    .get(&p.entity_id)
                    .is_none_or(|e| e.rewind.is_some_and(|r| r < p.first))
            });
            if !rewound {
                for part in &flight.parts {
                    if let Some(entity) = self.entities.get_mut(&part.entity_id) {
                        entity.rewind = None;
                    }
                    self.set_state(part.entity_id, EntityState::Held, part.first);
                }
                self.held.push(HeldBatch {
                    id: id.clone(),
                    parts: flight.parts.clone(),
                    due: now + wait,
                });
                return;
            }
            // Stored as held with its outcomes; it will not go again as it was.
            self.writer.forget_held(self.sub.id, vec![id.clone()]);
        }
        for part in &flight.parts {
            let rewind = self.entities.get_mut(&part.entity_id).and_then(|e| e.rewind.take());
            let sent = if decision == Decision::Delivered {
                part.last
            } else {
                part.first
            };
            match decide::entity_after(decision, wait, sent, rewind, now) {
                EntityNext::Ready { due, from } => self.set_ready(part.entity_id, due, from),
                EntityNext::Parked { .. } => self.forget(part.entity_id),
            }
        }
    }

    /// The outcome is not durable: the same events go again later, and the
    /// whole subscription pauses, since every outcome fails the same way
    /// until the writer can commit again.
    pub(super) fn on_unrecorded(&mut self, flight: Flight, error: &str, now: Instant) {
        let name = &self.sub.config.name;
        tracing::warn!(subscription = %name, error = %error, "cannot record a delivery attempt; it will be repeated");
        self.unrecorded_in_a_row = self.unrecorded_in_a_row.saturating_add(1);
        if self.unrecorded_in_a_row == 1 {
            tracing::warn!(subscription = %name, "cannot record delivery outcomes; pausing this subscription until the outbox takes writes again");
        }
        let pause = decide::storage_pause(self.unrecorded_in_a_row);
        self.storage_pause_until = Some(now + pause);
        self.release(&flight, Decision::Hold, pause, now);
    }

    /// Logs and records a change of the link; a link back up makes every
    /// waiting entity due at once.
    pub(super) fn on_link_change(&mut self, change: LinkChange, answer: &Answer, now: Instant) {
        let name = &self.sub.config.name;
        match change {
            LinkChange::None => {}
            LinkChange::WentOffline => {
                tracing::warn!(subscription = %name, url = %self.sub.config.url_for_logs(), error = ?answer.error,
                    "endpoint is down; probing it at the backoff pace");
                self.persist_state();
            }
            LinkChange::CameBack { down_for } => {
                tracing::info!(subscription = %name, offline_for = %humantime::format_duration(Duration::from_secs(down_for.as_secs())),
                    waiting_entities = self.ready.len() + 1, "endpoint is up again, draining the backlog");
                self.persist_state();
                self.make_every_entity_due(now);
            }
        }
    }
}
