//! Every statement the writer runs, each inside the transaction the writer
//! thread opened for a batch. Nothing here commits, waits or talks to anyone:
//! the thread (`super`) decides what goes into a transaction and answers
//! after its commit.

use rusqlite::{params, Connection};

use super::fanout::Fanout;
use super::handoff::{Decision, Outcome};
use crate::event::{ErrorCode, NewEvent, Reply};
use crate::outbox::now_ms;
use crate::outbox::state::DeliveryState::{Delivered, Parked, Pending};
use crate::outbox::state::{ConcurrencyState, SubscriptionState};

/// What a committed batch must still announce.
#[derive(Default)]
pub(super) struct Effects {
    /// (fanout index, entity id, event seq, entity seq) of new deliveries.
    pub(super) touched: Vec<(usize, i64, i64, i64)>,
    /// Events stored.
    pub(super) accepted: i64,
    /// Highest event `seq` stored by the batch.
    pub(super) max_seq: i64,
    /// Events acknowledged again as duplicates.
    pub(super) duplicates: i64,
    /// Events refused.
    pub(super) rejected: i64,
    /// Rejections by error code.
    pub(super) rejected_by_code: std::collections::BTreeMap<&'static str, i64>,
    /// Per subscription id: deliveries recorded and the latest success
    /// (one `UPDATE subscriptions` per commit instead of one per outcome).
    pub(super) delivered_by_sub: std::collections::BTreeMap<i64, (i64, i64)>,
}

impl Effects {
    pub(super) fn reject(&mut self, code: ErrorCode, n: i64) {
        self.rejected += n;
        *self.rejected_by_code.entry(code.as_str()).or_insert(0) += n;
    }
}

/// Stores one event (or recognises it as a duplicate) inside the open transaction.
pub(super) fn insert_event(
    tx: &Connection,
    fanout: &[Fanout],
    e: &NewEvent,
    effects: &mut Effects,
) -> rusqlite::Result<Reply> {
    let existing = tx
        .prepare_cached("SELECT entity_seq FROM events WHERE event_id = ?1")?
        .query_row([&e.event_id], |r| r.get::<_, i64>(0));
    match existing {
        Ok(entity_seq) => {
            effects.duplicates += 1;
            return Ok(Reply::Accepted {
                event_id: e.event_id.clone(),
                entity_seq,
                duplicate: true,
            });
        }
        Err(rusqlite::Error::QueryReturnedNoRows) => {}
        Err(other) => return Err(other),
    }
    let (entity_id, entity_seq): (i64, i64) = tx
        .prepare_cached(
            "INSERT INTO entities(entity, last_seq) VALUES (?1, 1)
             ON CONFLICT(entity) DO UPDATE SET last_seq = last_seq + 1
             RETURNING id, last_seq",
        )?
        .query_row([&e.entity], |r| Ok((r.get(0)?, r.get(1)?)))?;
    tx.prepare_cached(
        "INSERT INTO events(event_id, type, entity_id, entity_seq, occurred_at, ingested_at,
                            correlation_id, is_test, attributes, payload)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        e.event_id,
        e.event_type,
        entity_id,
        entity_seq,
        e.occurred_at,
        now_ms(),
        e.correlation_id,
        e.is_test,
        e.attributes,
        e.payload
    ])?;
    let seq = tx.last_insert_rowid();
    effects.max_seq = effects.max_seq.max(seq);
    for (index, fan) in fanout.iter().enumerate() {
        if !fan.config.takes(&e.event_type) {
            continue;
        }
        tx.prepare_cached("INSERT INTO deliveries(sub_id, event_seq, entity_id, entity_seq) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![fan.id, seq, entity_id, entity_seq])?;
        effects.touched.push((index, entity_id, seq, entity_seq));
    }
    effects.accepted += 1;
    Ok(Reply::Accepted {
        event_id: e.event_id.clone(),
        entity_seq,
        duplicate: false,
    })
}

/// Deletes fully delivered events, oldest first. An event with no delivery
/// row at all is kept while no subscription is configured (it waits for one).
/// Entities are kept, so `entity_seq` goes on counting.
pub(super) fn prune(tx: &Connection, older_than_ms: Option<i64>, limit: usize) -> rusqlite::Result<usize> {
    let any_configured: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM subscriptions WHERE configured = 1)",
        [],
        |r| r.get(0),
    )?;
    let seqs: Vec<i64> = tx
        .prepare_cached(
            "SELECT e.seq FROM events e
             WHERE e.ingested_at < ?1
               AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq AND d.state <> 1)
               AND (?2 OR EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq))
             ORDER BY e.seq LIMIT ?3",
        )?
        .query_map(
            params![older_than_ms.unwrap_or(i64::MAX), any_configured, limit as i64],
            |r| r.get(0),
        )?
        .collect::<rusqlite::Result<_>>()?;
    for seq in &seqs {
        tx.prepare_cached("DELETE FROM attempts WHERE event_seq = ?1")?
            .execute([seq])?;
        tx.prepare_cached("DELETE FROM deliveries WHERE event_seq = ?1")?
            .execute([seq])?;
        tx.prepare_cached("DELETE FROM events WHERE seq = ?1")?.execute([seq])?;
    }
    Ok(seqs.len())
}

/// Drops the deliveries of the agent's own heartbeats of `entity` before
/// `entity_seq` that are not delivered yet (pending or parked), for every
/// subscription: a newer heartbeat supersedes them. The events themselves
/// stay until pruning, like delivered ones, so an attempt in flight for one
/// of them is recorded against an event that still exists (its delivery row
/// is gone, so the outcome changes nothing). Only events of the heartbeat
/// type go: a producer's events are never dropped.
pub(super) fn supersede_heartbeats(tx: &Connection, entity: &str, entity_seq: i64) -> rusqlite::Result<usize> {
    tx.prepare_cached(
        "DELETE FROM deliveries
         WHERE state <> 1
           AND event_seq IN (
               SELECT e.seq FROM events e JOIN entities n ON n.id = e.entity_id
               WHERE n.entity = ?1 AND e.entity_seq < ?2 AND e.type = ?3)",
    )?
    .execute(params![entity, entity_seq, crate::event::HEARTBEAT_TYPE])
}

/// Records one attempt and moves the delivery to its new state.
pub(super) fn apply_outcome(tx: &Connection, o: &Outcome, effects: &mut Effects) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO attempts(sub_id, event_seq, at, status, error, duration_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        o.sub_id,
        o.event_seq,
        o.at_ms,
        o.status,
        o.error,
        o.duration_ms
    ])?;
    match o.decision {
        Decision::Delivered => {
            let changed = tx
                .prepare_cached(
                    "UPDATE deliveries SET state = ?3, attempts = attempts + 1, delivered_at = ?4,
                        last_status = ?5, last_error = NULL, next_attempt_at = NULL
                 WHERE sub_id = ?1 AND event_seq = ?2 AND resends = ?6",
                )?
                .execute(params![o.sub_id, o.event_seq, Delivered, o.at_ms, o.status, o.resends])?;
            if changed == 0 {
                // Resent while this request was in flight: it goes again.
                return count_voided_attempt(tx, o);
            }
            let (delivered, last_at) = effects.delivered_by_sub.entry(o.sub_id).or_insert((0, 0));
            *delivered += 1;
            *last_at = (*last_at).max(o.at_ms);
        }
        Decision::Hold => {
            let changed = tx
                .prepare_cached(
                    "UPDATE deliveries SET attempts = attempts + 1, next_attempt_at = NULL,
                        last_status = ?3, last_error = ?4
                 WHERE sub_id = ?1 AND event_seq = ?2 AND resends = ?5",
                )?
                .execute(params![o.sub_id, o.event_seq, o.status, o.error, o.resends])?;
            if changed == 0 {
                return count_voided_attempt(tx, o);
            }
            tx.prepare_cached("UPDATE subscriptions SET last_error = ?2, last_error_at = ?3 WHERE id = ?1")?
                .execute(params![o.sub_id, o.error, o.at_ms])?;
        }
        Decision::Retry { .. } | Decision::Park => {
            let (state, next) = match o.decision {
                Decision::Retry { next_attempt_at_ms } => (Pending, Some(next_attempt_at_ms)),
                _ => (Parked, None),
            };
            let changed = tx
                .prepare_cached(
                    "UPDATE deliveries SET state = ?3, attempts = attempts + 1,
                        first_failed_at = COALESCE(first_failed_at, ?4), next_attempt_at = ?5,
                        last_status = ?6, last_error = ?7
                 WHERE sub_id = ?1 AND event_seq = ?2 AND resends = ?8",
                )?
                .execute(params![
                    o.sub_id,
                    o.event_seq,
                    state,
                    o.at_ms,
                    next,
                    o.status,
                    o.error,
                    o.resends
                ])?;
            if changed == 0 {
                return count_voided_attempt(tx, o);
            }
            tx.prepare_cached("UPDATE subscriptions SET last_error = ?2, last_error_at = ?3 WHERE id = ?1")?
                .execute(params![o.sub_id, o.error, o.at_ms])?;
        }
    }
    Ok(())
}

/// An attempt whose delivery was resent while it was in flight: it counts as
/// an attempt (as in `attempts`), but leaves the delivery's state to the
/// resend, so the event is sent again.
fn count_voided_attempt(tx: &Connection, o: &Outcome) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE deliveries SET attempts = attempts + 1, last_status = ?3, last_error = ?4
         WHERE sub_id = ?1 AND event_seq = ?2",
    )?
    .execute(params![o.sub_id, o.event_seq, o.status, o.error])?;
    Ok(())
}

/// Records a subscription's state, requests in flight, next planned
/// attempt and request concurrency (all three columns `NULL` without one),
/// for `status`.
pub(super) fn set_sub_state(
    tx: &Connection,
    sub_id: i64,
    state: SubscriptionState,
    in_flight: i64,
    next_attempt_at_ms: Option<i64>,
    concurrency: Option<ConcurrencyState>,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE subscriptions SET state = ?2, in_flight = ?3, next_attempt_at = ?4,
                concurrency = ?5, max_in_flight = ?6, concurrency_limit = ?7
         WHERE id = ?1",
    )?
    .execute(params![
        sub_id,
        state,
        in_flight,
        next_attempt_at_ms,
        concurrency.map(|c| c.mode),
        concurrency.map(|c| c.max_in_flight),
        concurrency.map(|c| c.limit),
    ])?;
    Ok(())
}

/// A tiny write that proves the database takes commits (`/healthz`).
pub(super) fn ping(tx: &Connection) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO meta(key, value) VALUES ('alive_at', ?1)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    )?
    .execute([now_ms().to_string()])?;
    Ok(())
}

/// Adds a batch's totals to the counters and the subscriptions, once per
/// commit rather than once per event or outcome.
pub(super) fn add_totals(tx: &Connection, effects: &Effects, sub_ids: &[i64]) -> rusqlite::Result<()> {
    for (name, value) in [
        ("accepted_total", effects.accepted),
        ("duplicate_total", effects.duplicates),
        ("rejected_total", effects.rejected),
    ] {
        if value != 0 {
            tx.prepare_cached("UPDATE counters SET value = value + ?2 WHERE name = ?1")?
                .execute(params![name, value])?;
        }
    }
    for (code, n) in &effects.rejected_by_code {
        tx.prepare_cached(
            "INSERT INTO counters(name, value) VALUES (?1, ?2)
             ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
        )?
        .execute(params![format!("rejected_total:{code}"), n])?;
    }
    for (sub_id, (delivered, last_at)) in &effects.delivered_by_sub {
        tx.prepare_cached(
            "UPDATE subscriptions SET delivered_total = delivered_total + ?2,
                    last_success_at = ?3 WHERE id = ?1",
        )?
        .execute(params![sub_id, delivered, last_at])?;
    }
    if effects.accepted > 0 {
        // Deliveries fanned out per subscription (the history's ingest
        // rate), in the statement that moves its coverage anyway.
        let mut ingested = vec![0i64; sub_ids.len()];
        for (index, ..) in &effects.touched {
            ingested[*index] += 1;
        }
        for (id, n) in sub_ids.iter().zip(ingested) {
            tx.prepare_cached(
                "UPDATE subscriptions SET covered_seq = MAX(covered_seq, ?2), ingested_total = ingested_total + ?3
                 WHERE id = ?1",
            )?
            .execute(params![id, effects.max_seq, n])?;
        }
    }
    Ok(())
}

/// Sets (`Some`) or deletes (`None`) entries of `meta`.
pub(super) fn set_meta(tx: &Connection, entries: &[(&'static str, Option<String>)]) -> rusqlite::Result<()> {
    for (key, value) in entries {
        match value {
            Some(value) => tx
                .prepare_cached(
                    "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                )?
                .execute(params![key, value])?,
            None => tx.prepare_cached("DELETE FROM meta WHERE key = ?1")?.execute([key])?,
        };
    }
    Ok(())
}
