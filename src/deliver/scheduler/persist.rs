//! What the scheduler keeps in the outbox across restarts and reads back:
//! its state and concurrency for `status`, the 410 Gone marker and a
//! resume, and the resends that move cursors back.

use std::collections::HashMap;

use tokio::time::Instant;

use crate::deliver::batch;
use crate::deliver::decide::{self, Position};
use crate::deliver::destination::Destination;
use crate::outbox::gone::{self, Marker};
use crate::outbox::now_ms;
use crate::outbox::read;
use crate::outbox::state::{ConcurrencyMode, ConcurrencyState, SubscriptionState};

use super::*;

impl<D: Destination> Scheduler<D> {
    /// At start: a 410's marker from before stops the subscription again if
    /// its config is the same; a changed config clears it.
    pub(super) fn check_gone_at_start(&mut self) {
        let name = &self.sub.config.name;
        match gone::marker(&self.reader, self.sub.id) {
            Ok(None) => {}
            Ok(Some(marker)) if marker.fingerprint == self.fingerprint => {
                tracing::warn!(subscription = %name, since = %crate::timefmt::ms_to_rfc3339(marker.since_ms),
                    "stopped since its endpoint answered 410 Gone; nothing is sent until its config changes or `store-outbox resume {name}`");
                self.link.gone = true;
                self.gone = Some((marker, true));
            }
            Ok(Some(_)) => {
                tracing::info!(subscription = %name, "its config changed since the endpoint answered 410 Gone: sending again");
                self.writer.set_gone(self.sub.id, None);
            }
            Err(e) => {
                tracing::error!(subscription = %name, error = %e, "cannot read the outbox");
            }
        }
    }

    /// While stopped by a 410: resumes once `store-outbox resume` deleted
    /// the marker (seen in the outbox before), or stores the marker again if
    /// the writer did not take it yet.
    pub(super) fn check_resumed(&mut self, now: Instant) {
        let Some((marker, seen)) = self.gone.clone() else {
            return;
        };
        match gone::marker(&self.reader, self.sub.id) {
            Ok(Some(_)) if !seen => self.gone = Some((marker, true)),
            Ok(Some(_)) => {}
            // Not seen yet: not written yet, or written and already deleted
            // by a `resume`, which says so (`gone::resumed_since`).
            Ok(None) if !seen && !self.resumed_since_marker(&marker) => {
                self.writer.set_gone(self.sub.id, Some(marker));
            }
            Ok(None) => {
                tracing::info!(subscription = %self.sub.config.name, "resumed after 410 Gone: sending again");
                self.gone = None;
                self.link.resume(now);
                self.make_every_entity_due(now);
                self.persist_state();
            }
            Err(e) => tracing::debug!(error = %e, "cannot read the 410 marker"),
        }
    }

    /// Whether `resume` deleted this very marker.
    pub(super) fn resumed_since_marker(&self, marker: &Marker) -> bool {
        match gone::resumed_since(&self.reader, self.sub.id) {
            Ok(since) => since == Some(marker.since_ms),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the resume record");
                false
            }
        }
    }

    /// What `status` should say: the state, deliveries in flight, when
    /// the next attempt is planned if the subscription is waiting, and the
    /// request concurrency's limit.
    pub(super) fn state_to_persist(&self, now: Instant) -> Persisted {
        let next = decide::planned_attempt(&self.ready, &self.link, !self.flights.is_empty(), now);
        let held = batch::held_wake(self.held.iter().map(|h| h.due).min(), &self.link, true, false, now)
            .filter(|at| *at > now && self.flights.is_empty());
        let next = match (next, held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let state = if self.link.gone {
            SubscriptionState::Gone
        } else if self.link.online {
            SubscriptionState::Online
        } else {
            SubscriptionState::Offline
        };
        let in_flight = self
            .flights
            .values()
            .map(|f| f.parts.iter().map(|p| p.count).sum::<usize>())
            .sum();
        (state, in_flight, next, self.concurrency_limit())
    }

    /// Requests that may be on the wire now, as [`Scheduler::slot_free`]
    /// counts them.
    pub(super) fn concurrency_limit(&self) -> usize {
        self.concurrency.limit().min(self.sub.config.max_in_flight)
    }

    /// Writes online/offline, deliveries in flight, the next planned
    /// attempt (as wall-clock time, for people) and the request
    /// concurrency for `status`.
    pub(super) fn persist_state(&mut self) {
        let now = Instant::now();
        let persisted = self.state_to_persist(now);
        let (state, in_flight, next, limit) = persisted;
        let next_ms = next.map(|at| now_ms() + at.saturating_duration_since(now).as_millis() as i64);
        let concurrency = ConcurrencyState {
            mode: ConcurrencyMode::of(self.sub.config.adaptive_concurrency),
            limit: limit as i64,
            max_in_flight: self.sub.config.max_in_flight as i64,
        };
        if self
            .writer
            .set_sub_state(self.sub.id, state, in_flight as i64, next_ms, Some(concurrency))
        {
            self.persisted = persisted;
        }
    }

    /// The last write for `status` when the scheduler ends: nothing in
    /// flight, and no concurrency (no scheduler runs the subscription now;
    /// one that starts again, after a reload, writes its own).
    pub(super) fn persist_stopped(&mut self) {
        let (state, _, _, _) = self.state_to_persist(Instant::now());
        self.writer.set_sub_state(self.sub.id, state, 0, None, None);
    }

    /// Checks `resend_generation`, which every resend bumps: a resend may
    /// have reopened events behind the cursors of entities in the window
    /// (those cursors move back) and of entities outside it (the scan starts
    /// again from the beginning). At start the window is empty and the scan
    /// starts anyway. Returns false if the outbox could not be read: nothing
    /// may be looked up then, since a cursor could pass events reopened
    /// behind it.
    pub(super) fn catch_up_resends(&mut self, now: Instant) -> bool {
        let generation = match read::meta(&self.reader, "resend_generation") {
            Ok(generation) => generation,
            Err(e) => {
                tracing::error!(subscription = %self.sub.config.name, error = %e, "cannot read the outbox");
                return false;
            }
        };
        if self.resend_generation.as_ref() == Some(&generation) {
            return true;
        }
        // The first open event of every entity in the window; memory stays
        // bounded by the window, whatever the backlog.
        let mut first: HashMap<i64, Position> = HashMap::new();
        if !self.entities.is_empty() {
            let window = &self.entities;
            let read = read::each_open(&self.reader, self.sub.id, |entity_id, seq, entity_seq| {
                if window.contains_key(&entity_id) {
                    let at = Position { seq, entity_seq };
                    first.entry(entity_id).and_modify(|p| *p = (*p).min(at)).or_insert(at);
                }
            });
            if let Err(e) = read {
                tracing::error!(subscription = %self.sub.config.name, error = %e, "cannot read the backlog");
                return false;
            }
        }
        self.resend_generation = Some(generation);
        self.scan = Scan::START;
        for (entity_id, first) in first {
            match self.entities.get_mut(&entity_id) {
                None => {}
                // A held batch goes again whole unless the resend reopened an
                // event before it (a resend that touched other entities, or
                // queued nothing, must not change its events or its id).
                Some(entity) if entity.state == EntityState::Held && first < entity.at => {
                    entity.rewind = Some(first.or_earlier(entity.rewind));
                }
                Some(entity) if entity.state == EntityState::Held => {}
                // In flight: its outcome may be voided by the resend (see
                // `outbox::resend`), so it goes on from its first open event;
                // a failed batch stays whole all the same (`release`).
                Some(entity) if entity.state != EntityState::Ready => {
                    entity.rewind = Some(first.or_earlier(entity.rewind));
                }
                // Its head may now be an earlier, resent event.
                Some(entity) => {
                    let at = entity.at.min(first);
                    self.set_ready(entity_id, now, at);
                }
            }
        }
        true
    }
}
