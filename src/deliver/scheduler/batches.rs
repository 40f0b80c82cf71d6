//! Batches: forming one from the ready entities, the failed batches held
//! for their retry and sent again whole, and those held across a restart
//! (`outbox::held`), checked to be still first in line.

use tokio::time::Instant;

use crate::config::BatchConfig;
use crate::deliver::batch;
use crate::deliver::courier::Unit;
use crate::deliver::decide::Position;
use crate::deliver::destination::Destination;
use crate::outbox::held;
use crate::outbox::read::{self, Head};
use crate::outbox::state::DeliveryState;

use super::*;

impl<D: Destination> Scheduler<D> {
    /// With `batch`: first the batches waiting for their retry (each goes
    /// again whole, same events, same order, same id), then new batches of
    /// the ready entities, each entity with its consecutive pending events.
    pub(super) fn dispatch_batches(&mut self, now: Instant, config: &BatchConfig) {
        self.linger_wake = None;
        while self.slot_free() {
            if let Some(index) = self.held_to_send(now) {
                let held = self.held.swap_remove(index);
                let was_probe = !self.link.online;
                if self.resend_held(held, was_probe, now) && was_probe {
                    return;
                }
                continue;
            }
            let Some(first) = self.next_pick(now) else {
                return;
            };
            let was_probe = !self.link.online;
            if !was_probe {
                let ready = self.ready.range(..=(now, i64::MAX, i64::MAX)).take(config.max_events);
                let ready_now = ready.clone().count();
                // Only needed when the ready entities alone do not fill it.
                let backlogged = ready_now < config.max_events
                    && ready
                        .clone()
                        .any(|key| self.entities.get(&key.2).is_some_and(|e| e.backlogged));
                if let Err(until) = batch::may_form(first.0, ready_now, backlogged, config, now) {
                    self.linger_wake = Some(until);
                    return;
                }
            }
            if !self.form_batch(config, was_probe, now) || was_probe {
                return;
            }
        }
    }

    /// The batch waiting for its retry that may go now, if any: online the
    /// earliest due, offline (as the probe) the oldest.
    pub(super) fn held_to_send(&self, now: Instant) -> Option<usize> {
        let (index, held) = if self.link.online {
            self.held.iter().enumerate().min_by_key(|(_, h)| h.due)?
        } else {
            self.held.iter().enumerate().min_by_key(|(_, h)| h.parts[0].first.seq)?
        };
        batch::held_may_go(held.due, &self.link, self.probe_in_flight, now).then_some(index)
    }

    /// Sends a held batch again as it was, read afresh (its attempts and
    /// give-up clock as recorded). If it is no longer what it was (a resend
    /// reopened events of one of its entities), it is broken up: each entity
    /// goes on from its first event, in new batches. False if it could not
    /// be handed to a courier.
    pub(super) fn resend_held(&mut self, held: HeldBatch, was_probe: bool, now: Instant) -> bool {
        let rewound = held.parts.iter().any(|p| {
            self.entities
                .get(&p.entity_id)
                .is_none_or(|e| e.rewind.is_some() || e.state != EntityState::Held)
        });
        let mut heads = Vec::new();
        let mut intact = !rewound;
        for part in &held.parts {
            if !intact {
                break;
            }
            match self.read_part_whole(part.entity_id, part.first.entity_seq, part.count) {
                Ok(found) => {
                    intact = found
                        .as_ref()
                        .is_some_and(|f| f.last().map(|h| Position::of(&h.event)) == Some(part.last));
                    heads.extend(found.into_iter().flatten());
                }
                Err(e) => {
                    tracing::error!(subscription = %self.sub.config.name, error = %e, "cannot read the next event");
                    self.held.push(HeldBatch {
                        due: now + READ_RETRY,
                        ..held
                    });
                    return false;
                }
            }
        }
        if !intact {
            self.writer.forget_held(self.sub.id, vec![held.id.clone()]);
            for part in &held.parts {
                let rewind = self.entities.get_mut(&part.entity_id).and_then(|e| e.rewind.take());
                if self.entities.contains_key(&part.entity_id) {
                    self.set_ready(part.entity_id, now, part.first.or_earlier(rewind));
                }
            }
            return true;
        }
        let unit = Unit::Batch {
            id: held.id.clone(),
            heads,
            parts: stored_parts(&held.parts),
        };
        self.hand_to_courier(unit, held.parts, Some(held.id), was_probe, now)
    }

    /// Forms a new batch from the ready entities, in the order they may go,
    /// each with its consecutive pending events, until `max_events` or
    /// `max_bytes`; a probe takes one entity. False if nothing could be
    /// handed to a courier.
    pub(super) fn form_batch(&mut self, config: &BatchConfig, was_probe: bool, now: Instant) -> bool {
        let mut heads: Vec<Head> = Vec::new();
        let mut parts: Vec<Part> = Vec::new();
        let mut bytes: u64 = 2;
        let destination = self.destination.clone();
        while heads.len() < config.max_events {
            let Some(pick) = self.next_pick(now) else {
                break;
            };
            self.ready.remove(&pick);
            let entity_id = pick.2;
            let Some(cursor) = self.cursor_if_unblocked(entity_id, now) else {
                continue;
            };
            let room = config.max_events - heads.len();
            let found = match read::heads(&self.reader, self.sub.id, entity_id, cursor.entity_seq, room) {
                Ok(found) => found,
                Err(e) => {
                    tracing::error!(subscription = %self.sub.config.name, error = %e, "cannot read the next event");
                    self.set_ready(entity_id, now + READ_RETRY, cursor);
                    break;
                }
            };
            if found.is_empty() {
                self.forget(entity_id);
                continue;
            }
            if found[0].state == DeliveryState::Parked {
                self.forget(entity_id);
                continue;
            }
            let mut taken = 0;
            // Every event read fitting means there may be more (as many
            // were read as there was room for); one not fitting, that
            // there are.
            let mut backlogged = found.len() == room;
            for head in found {
                if head.state != DeliveryState::Pending {
                    backlogged = false;
                    break;
                }
                let size = destination.batch_bytes(&head.event) as u64;
                if !batch::fits(heads.len(), bytes, size, config) {
                    backlogged = true;
                    break;
                }
                bytes += size;
                heads.push(head);
                taken += 1;
            }
            if let Some(entity) = self.entities.get_mut(&entity_id) {
                entity.backlogged = backlogged;
            }
            if taken == 0 {
                // Full by bytes: the entity goes in the next batch.
                self.set_ready(entity_id, now, cursor);
                break;
            }
            let first = Position::of(&heads[heads.len() - taken].event);
            let last = Position::of(&heads[heads.len() - 1].event);
            parts.push(Part {
                entity_id,
                first,
                last,
                count: taken,
            });
            if was_probe || heads.len() >= config.max_events || bytes >= config.max_bytes {
                break;
            }
        }
        if heads.is_empty() {
            return false;
        }
        let id = batch::batch_id(&self.sub.config.name, heads.iter().map(|h| h.event.event_id.as_str()));
        let unit = Unit::Batch {
            id: id.clone(),
            heads,
            parts: stored_parts(&parts),
        };
        self.hand_to_courier(unit, parts, Some(id), was_probe, now)
    }

    /// Takes back the batches that failed before the agent stopped
    /// (`outbox::held`): each goes again first, whole, with its id, if it is
    /// still exactly what it was (the same pending events; its id, derived
    /// from them, says so) and still first in line for each of its
    /// entities. One that is not is deleted; its entities go on as usual.
    pub(super) fn restore_held(&mut self, now: Instant) {
        if self.sub.config.batch.is_none() {
            return;
        }
        let name = &self.sub.config.name;
        let stored = match held::load(&self.reader, self.sub.id) {
            Ok(stored) => stored,
            Err(e) => {
                tracing::error!(subscription = %name, error = %e, "cannot read the held batches; their events go in new batches");
                return;
            }
        };
        let mut stale = Vec::new();
        let mut restored = 0usize;
        for batch in stored {
            match self.check_held(&batch) {
                Ok(Some(parts)) if self.entities.len() + parts.len() <= self.window => {
                    for part in &parts {
                        self.entities.insert(
                            part.entity_id,
                            Entity {
                                state: EntityState::Held,
                                due: now,
                                at: part.first,
                                rewind: None,
                                checked: true,
                                backlogged: false,
                            },
                        );
                    }
                    self.held.push(HeldBatch {
                        id: batch.id,
                        parts,
                        due: now,
                    });
                    restored += 1;
                }
                // No room in the window: its events go in new batches.
                Ok(Some(_)) => {}
                Ok(None) => stale.push(batch.id),
                Err(e) => {
                    tracing::error!(subscription = %name, error = %e, "cannot read a held batch; its events go in new batches");
                }
            }
        }
        if restored > 0 {
            tracing::info!(subscription = %name, batches = restored, "batches that failed before the restart go again first, whole, with their ids");
        }
        if !stale.is_empty() {
            tracing::debug!(subscription = %name, batches = stale.len(), "held batches no longer as they were: their events go in new batches");
            self.writer.forget_held(self.sub.id, stale);
        }
    }

    /// A stored held batch's parts as they stand, if it may go again as it
    /// was; `None` if not.
    pub(super) fn check_held(&self, batch: &held::StoredHeld) -> rusqlite::Result<Option<Vec<Part>>> {
        let mut parts = Vec::with_capacity(batch.parts.len());
        let mut ids = Vec::new();
        for stored in &batch.parts {
            if self.entities.contains_key(&stored.entity_id)
                || parts.iter().any(|p: &Part| p.entity_id == stored.entity_id)
            {
                return Ok(None);
            }
            if read::undelivered_before(&self.reader, self.sub.id, stored.entity_id, stored.first_entity_seq)? {
                return Ok(None);
            }
            let Some(found) = self.read_part_whole(stored.entity_id, stored.first_entity_seq, stored.count)? else {
                return Ok(None);
            };
            let (Some(first), Some(last)) = (found.first(), found.last()) else {
                return Ok(None);
            };
            parts.push(Part {
                entity_id: stored.entity_id,
                first: Position::of(&first.event),
                last: Position::of(&last.event),
                count: stored.count,
            });
            ids.extend(found.into_iter().map(|h| h.event.event_id));
        }
        let same =
            !parts.is_empty() && batch::batch_id(&self.sub.config.name, ids.iter().map(String::as_str)) == batch.id;
        Ok(same.then_some(parts))
    }

    /// An entity's share of a held batch as it stands: its `count` events
    /// from `first_entity_seq`, if they are all still there and pending
    /// (nothing of it was delivered, parked or reopened since); `None` if not.
    pub(super) fn read_part_whole(
        &self,
        entity_id: i64,
        first_entity_seq: i64,
        count: usize,
    ) -> rusqlite::Result<Option<Vec<Head>>> {
        let found = read::heads(&self.reader, self.sub.id, entity_id, first_entity_seq, count)?;
        let whole = found.len() == count
            && found.iter().all(|h| h.state == DeliveryState::Pending)
            && found.first().map(|h| h.event.entity_seq) == Some(first_entity_seq);
        Ok(whole.then_some(found))
    }
}
