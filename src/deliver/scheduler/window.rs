//! The window of entities and the ready set: which entities the scheduler
//! holds (at most [`super::WINDOW`]), when each is due, and how the backlog
//! beyond the window is found again (the inbox, the scan in ingest order).

use tokio::time::Instant;

use crate::deliver::decide::Position;
use crate::deliver::destination::Destination;
use crate::outbox::read;

use super::*;

impl<D: Destination> Scheduler<D> {
    /// Whether another request may start: a request slot, room for one more
    /// delivery waiting for its commit, an idle courier, and a `max_rate`
    /// token when the subscription has one.
    pub(super) fn slot_free(&self) -> bool {
        let max = self.sub.config.max_in_flight;
        self.requests < self.concurrency_limit()
            && self.flights.len() < max * DELIVERIES_PER_SLOT
            && !self.idle.is_empty()
            && self.rate.as_ref().is_none_or(|r| r.may_send(Instant::now()))
    }

    /// A request slot is free and nothing is ready to go now, while
    /// deliveries are under way: the next events wait for their commits.
    pub(super) fn is_starving(&self) -> bool {
        self.link.online
            && !self.link.gone
            && self.link.paused_at(Instant::now()).is_none()
            && !self.flights.is_empty()
            && self.slot_free()
            && self.ready.first().is_none_or(|(due, _, _)| *due > Instant::now())
    }

    pub(super) fn set_ready(&mut self, entity_id: i64, due: Instant, at: Position) {
        let entity = self.entities.entry(entity_id).or_insert(Entity {
            state: EntityState::Ready,
            due,
            at,
            rewind: None,
            checked: false,
            backlogged: false,
        });
        if entity.state == EntityState::Ready {
            self.ready.remove(&(entity.due, entity.at.seq, entity_id));
        }
        entity.state = EntityState::Ready;
        entity.due = due;
        entity.at = at;
        self.ready.insert((due, at.seq, entity_id));
    }

    pub(super) fn set_state(&mut self, entity_id: i64, state: EntityState, at: Position) {
        if let Some(entity) = self.entities.get_mut(&entity_id) {
            entity.state = state;
            entity.at = at;
        }
    }

    /// Lets an entity go from the window: it has nothing to send now. Its
    /// later events are found again by the inbox or the scan.
    pub(super) fn forget(&mut self, entity_id: i64) {
        if let Some(entity) = self.entities.remove(&entity_id) {
            if entity.state == EntityState::Ready {
                self.ready.remove(&(entity.due, entity.at.seq, entity_id));
            }
        }
    }

    /// Whether the window has room for a page of the backlog and the scan
    /// has more to find.
    pub(super) fn wants_scan(&self) -> bool {
        !self.scan.done && self.entities.len() < self.low_water()
    }

    /// The window is topped up when it falls below three quarters.
    pub(super) fn low_water(&self) -> usize {
        (self.window - self.window / 4).max(1)
    }

    /// Takes the entities with new events into the window. An entity
    /// outside the window has nothing undelivered before its new events,
    /// unless it is blocked behind a parked one (checked before its first
    /// lookup) or a resend reopened some (the next round's check of
    /// `resend_generation` finds them), so its cursor starts at the first
    /// new one. While the scan is not done, or the window is full, new
    /// entities are left to the scan: they come after where it stands.
    pub(super) fn merge_inbox(&mut self) {
        let now = Instant::now();
        let marked = self.sub.inbox.take();
        if marked.overflowed {
            self.scan.done = false;
        }
        for (entity_id, (seq, entity_seq)) in marked.entities {
            if self.entities.contains_key(&entity_id) {
                continue;
            }
            if !self.scan.done || self.entities.len() >= self.window {
                self.scan.done = false;
                continue;
            }
            self.set_ready(entity_id, now, Position { seq, entity_seq });
        }
    }

    /// Takes entities from the backlog into the window, in ingest order,
    /// until it is three quarters full or the scan reaches the end (inside
    /// the round's read transaction).
    pub(super) fn scan_backlog(&mut self, now: Instant) -> rusqlite::Result<()> {
        for _ in 0..SCAN_PAGES_PER_ROUND {
            if !self.wants_scan() {
                return Ok(());
            }
            // Never more rows than the window has room for: every row of
            // the page is then looked at.
            let limit = (self.window - self.entities.len()).min(SCAN_PAGE);
            let page = read::pending_page(&self.reader, self.sub.id, self.scan.after, limit)?;
            self.scan.done = page.len() < limit;
            for row in page {
                if !self.entities.contains_key(&row.entity_id) {
                    let at = Position {
                        seq: row.seq,
                        entity_seq: row.entity_seq,
                    };
                    self.set_ready(row.entity_id, now, at);
                }
                self.scan.after = row.seq;
            }
        }
        Ok(())
    }

    /// Every waiting entity and held batch may go now (the link came back,
    /// or resumed).
    pub(super) fn make_every_entity_due(&mut self, now: Instant) {
        for held in &mut self.held {
            held.due = held.due.min(now);
        }
        let keys: Vec<_> = self.ready.iter().copied().collect();
        for (_, _, id) in keys {
            if let Some(at) = self.entities.get(&id).map(|e| e.at) {
                self.set_ready(id, now, at);
            }
        }
    }
}
