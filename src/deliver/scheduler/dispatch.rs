//! Dispatching: which entity goes next and when to wake, the cursor of an
//! entity that may send, and the hand-off of one unit to a courier (the
//! rate limit and the concurrency limit taken there).

use tokio::time::Instant;

use crate::deliver::batch;
use crate::deliver::courier::{Job, Unit};
use crate::deliver::decide::{self, Position, ReadyKey};
use crate::deliver::destination::Destination;
use crate::outbox::read;
use crate::outbox::state::DeliveryState;

use super::*;

impl<D: Destination> Scheduler<D> {
    /// When to look again if nothing wakes the loop first: the rules'
    /// wake, a lingering batch's, a held batch's.
    pub(super) fn next_wake(&self, now: Instant) -> Option<Instant> {
        let wake = match self.linger_wake {
            // Lingering: the ready entities wait for company, not their due.
            Some(until) if !self.wants_scan() && until > now => Some(until),
            _ => decide::next_wake(
                &self.ready,
                &self.link,
                self.slot_free(),
                self.probe_in_flight,
                self.storage_pause_until,
                self.wants_scan(),
                now,
            ),
        };
        let held = batch::held_wake(
            self.held.iter().map(|h| h.due).min(),
            &self.link,
            self.slot_free(),
            self.probe_in_flight,
            now,
        );
        let held = held.map(|at| self.storage_pause_until.map_or(at, |until| until.max(at)));
        // Held back by `max_rate` alone: wake when the next request may go.
        let rate = self
            .rate
            .as_ref()
            .and_then(|r| r.next_at(now))
            .filter(|_| !self.ready.is_empty() || !self.held.is_empty());
        [wake, held, rate].into_iter().flatten().min()
    }

    /// The entity to send next, if one may be sent now.
    pub(super) fn next_pick(&self, now: Instant) -> Option<ReadyKey> {
        decide::next_pick(&self.ready, &self.link, self.slot_free(), self.probe_in_flight, now)
    }

    /// Starts as many requests as the state allows.
    pub(super) fn dispatch(&mut self) {
        let now = Instant::now();
        if self.storage_pause_until.is_some_and(|until| now < until) {
            return;
        }
        let held_may_go = self.slot_free() && self.held_to_send(now).is_some();
        if self.next_pick(now).is_none() && !self.wants_scan() && !held_may_go {
            return;
        }
        // One read transaction for the round: the check for resends and
        // every lookup see the same commit, so a resend that reopens events
        // behind a cursor is either seen by the check (and the cursors move
        // back first) or by none of the lookups.
        if let Err(e) = read::begin_snapshot(&self.reader) {
            tracing::error!(subscription = %self.sub.config.name, error = %e, "cannot read the outbox");
            self.storage_pause_until = Some(now + READ_RETRY);
            return;
        }
        let scanned = self.catch_up_resends(now) && {
            match self.scan_backlog(now) {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(subscription = %self.sub.config.name, error = %e, "cannot read the backlog");
                    false
                }
            }
        };
        if scanned {
            self.dispatch_round(now);
        } else {
            self.storage_pause_until = Some(now + READ_RETRY);
        }
        if let Err(e) = read::end_snapshot(&self.reader) {
            tracing::debug!(error = %e, "ending a read transaction");
        }
    }

    pub(super) fn dispatch_round(&mut self, now: Instant) {
        if let Some(batch) = self.sub.config.batch {
            return self.dispatch_batches(now, &batch);
        }
        while let Some(pick) = self.next_pick(now) {
            self.ready.remove(&pick);
            let entity_id = pick.2;
            let Some(cursor) = self.cursor_if_unblocked(entity_id, now) else {
                continue;
            };
            let head = match read::head(&self.reader, self.sub.id, entity_id, cursor.entity_seq) {
                Ok(Some(head)) => head,
                Ok(None) => {
                    self.forget(entity_id);
                    continue;
                }
                Err(e) => {
                    tracing::error!(subscription = %self.sub.config.name, error = %e, "cannot read the next event");
                    self.set_ready(entity_id, now + READ_RETRY, cursor);
                    return;
                }
            };
            let at = Position::of(&head.event);
            if head.state == DeliveryState::Parked {
                self.forget(entity_id);
                continue;
            }
            let was_probe = !self.link.online;
            let parts = vec![Part {
                entity_id,
                first: at,
                last: at,
                count: 1,
            }];
            if !self.hand_to_courier(Unit::One(head), parts, None, was_probe, now) {
                return;
            }
            if was_probe {
                return;
            }
        }
    }

    /// The cursor of a picked entity, or `None` when it must not go: it is
    /// no longer in the window, it is blocked behind a parked event (it
    /// leaves the window), or the check could not be read (it waits).
    pub(super) fn cursor_if_unblocked(&mut self, entity_id: i64, now: Instant) -> Option<Position> {
        let (cursor, checked) = self.entities.get(&entity_id).map(|e| (e.at, e.checked))?;
        if checked {
            return Some(cursor);
        }
        match read::parked_before(&self.reader, self.sub.id, entity_id, cursor.entity_seq) {
            Ok(true) => {
                // Blocked behind a parked event: nothing of it goes until a
                // resend, which brings it back.
                self.forget(entity_id);
                None
            }
            Ok(false) => {
                if let Some(entity) = self.entities.get_mut(&entity_id) {
                    entity.checked = true;
                }
                Some(cursor)
            }
            Err(e) => {
                tracing::error!(subscription = %self.sub.config.name, error = %e, "cannot read the next event");
                self.set_ready(entity_id, now + READ_RETRY, cursor);
                None
            }
        }
    }

    /// Gives a unit to an idle courier and marks its entities in flight;
    /// false if no courier could take it (its entities wait a little).
    pub(super) fn hand_to_courier(
        &mut self,
        unit: Unit,
        parts: Vec<Part>,
        batch_id: Option<String>,
        was_probe: bool,
        now: Instant,
    ) -> bool {
        // `next_pick` saw an idle courier; a courier that is gone (the
        // runtime is stopping) leaves the entities waiting.
        let handed = match self.idle.pop() {
            None => false,
            Some(courier) => {
                let job = Job {
                    ticket: self.next_ticket,
                    unit,
                    expected: self.writer.expect_outcome(),
                };
                let ok = self.couriers[courier].try_send(job).is_ok();
                if !ok {
                    tracing::error!(subscription = %self.sub.config.name, "a courier is gone; the event waits");
                }
                ok
            }
        };
        if !handed {
            for part in &parts {
                self.set_ready(part.entity_id, now + READ_RETRY, part.first);
            }
            return false;
        }
        for part in &parts {
            self.set_state(part.entity_id, EntityState::InFlight, part.first);
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.flights.insert(
            ticket,
            Flight {
                parts,
                batch_id,
                was_probe,
                answered: None,
            },
        );
        self.requests += 1;
        self.concurrency.on_start(self.requests);
        self.probe_in_flight |= was_probe;
        if let Some(rate) = &mut self.rate {
            rate.take(now);
        }
        true
    }
}
