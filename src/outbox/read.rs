//! Read-only queries: what the schedulers send next, and the figures and
//! rows of the reports (`status`, `events`, `show`, metrics).
//!
//! Everything here runs on its own read connection; WAL lets it read while the
//! writer commits.

use rusqlite::{params, Connection, OptionalExtension};

use super::now_ms;
use super::state::{DeliveryState, SubscriptionState};
use crate::outbox::report::{AttemptRow, DeliveryRow, EventDelivery, EventDetail};
use crate::outbox::report::{IngestCounters, SubscriptionStatus};
use crate::timefmt::ms_to_rfc3339;

/// An event as stored, with what its webhook body needs.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// Global ingest order.
    pub seq: i64,
    /// The producer's (or generated) id, also the `webhook-id`.
    pub event_id: String,
    /// Event type.
    pub event_type: String,
    /// Ordering key.
    pub entity: String,
    /// Position within the entity.
    pub entity_seq: i64,
    /// RFC 3339 UTC.
    pub occurred_at: String,
    /// When it was stored, wall-clock ms.
    pub ingested_at: i64,
    /// Producer's correlation id.
    pub correlation_id: Option<String>,
    /// Test traffic flag.
    pub is_test: bool,
    /// JSON object text, if any.
    pub attributes: Option<String>,
    /// The payload's JSON text.
    pub payload: String,
}

/// The first undelivered event of one entity for one subscription.
#[derive(Debug, Clone)]
pub struct Head {
    /// Pending or parked.
    pub state: DeliveryState,
    /// Attempts so far.
    pub attempts: i64,
    /// Wall-clock ms of the first failed attempt.
    pub first_failed_at: Option<i64>,
    /// Times it was resent; its outcome is recorded against this.
    pub resends: i64,
    /// The event itself.
    pub event: StoredEvent,
}

/// The next event of `entity_id` that `sub_id` has not yet received, at
/// `entity_seq` `from` or later.
///
/// `from` is the caller's cursor: everything of the entity before it is
/// known to be delivered (0 when nothing is known). The scan starts there, so
/// it does not walk the entity's delivered history.
pub fn head(conn: &Connection, sub_id: i64, entity_id: i64, from: i64) -> rusqlite::Result<Option<Head>> {
    Ok(heads(conn, sub_id, entity_id, from, 1)?.pop())
}

/// Up to `limit` events of `entity_id` that `sub_id` has not yet received,
/// at `entity_seq` `from` or later, in `entity_seq` order (for a batch: the
/// caller stops at the first parked one).
pub fn heads(conn: &Connection, sub_id: i64, entity_id: i64, from: i64, limit: usize) -> rusqlite::Result<Vec<Head>> {
    // The entity's name once, not joined into every row: for a batch that
    // is one lookup instead of one per event.
    let Some(entity) = conn
        .prepare_cached("SELECT entity FROM entities WHERE id = ?1")?
        .query_row(params![entity_id], |r| r.get::<_, String>(0))
        .optional()?
    else {
        return Ok(Vec::new());
    };
    conn.prepare_cached(
        "SELECT d.state, d.attempts, d.first_failed_at,
                e.seq, e.event_id, e.type, e.entity_seq, e.occurred_at,
                e.correlation_id, e.is_test, e.attributes, e.payload, e.ingested_at, d.resends
         FROM deliveries d INDEXED BY deliveries_by_entity
         JOIN events e ON e.seq = d.event_seq
         WHERE d.sub_id = ?1 AND d.entity_id = ?2 AND d.entity_seq >= ?3 AND d.state <> ?4
         ORDER BY d.entity_seq LIMIT ?5",
    )?
    .query_map(
        params![sub_id, entity_id, from, DeliveryState::Delivered, limit as i64],
        |r| {
            Ok(Head {
                state: r.get(0)?,
                attempts: r.get(1)?,
                first_failed_at: r.get(2)?,
                resends: r.get(13)?,
                event: StoredEvent {
                    seq: r.get(3)?,
                    event_id: r.get(4)?,
                    event_type: r.get(5)?,
                    entity: entity.clone(),
                    entity_seq: r.get(6)?,
                    occurred_at: r.get(7)?,
                    correlation_id: r.get(8)?,
                    is_test: r.get(9)?,
                    attributes: r.get(10)?,
                    payload: r.get(11)?,
                    ingested_at: r.get(12)?,
                },
            })
        },
    )?
    .collect()
}

/// A pending delivery as the scheduler's backlog scan sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingRow {
    /// The event's `seq` (the scan's position).
    pub seq: i64,
    /// Its entity.
    pub entity_id: i64,
    /// Its place in the entity.
    pub entity_seq: i64,
}

/// Up to `limit` pending deliveries of `sub_id` after `after_seq`, in
/// ingest order: one page of the scheduler's scan of its backlog.
pub fn pending_page(conn: &Connection, sub_id: i64, after_seq: i64, limit: usize) -> rusqlite::Result<Vec<PendingRow>> {
    // A range of `deliveries_waiting`, which holds every column needed.
    // `state <> 1` is the index's own WHERE, repeated so SQLite may use it.
    let mut stmt = conn.prepare_cached(
        "SELECT event_seq, entity_id, entity_seq FROM deliveries INDEXED BY deliveries_waiting
         WHERE sub_id = ?1 AND state <> 1 AND state = ?2 AND event_seq > ?3
         ORDER BY event_seq LIMIT ?4",
    )?;
    let rows = stmt.query_map(params![sub_id, DeliveryState::Pending, after_seq, limit as i64], |r| {
        Ok(PendingRow {
            seq: r.get(0)?,
            entity_id: r.get(1)?,
            entity_seq: r.get(2)?,
        })
    })?;
    rows.collect()
}

/// Whether `entity_id` has a parked delivery for `sub_id` before
/// `entity_seq`: then nothing of it after that may go, whatever is pending.
pub fn parked_before(conn: &Connection, sub_id: i64, entity_id: i64, entity_seq: i64) -> rusqlite::Result<bool> {
    // `deliveries_parked` holds parked rows only; `state = 2` is its WHERE.
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM deliveries INDEXED BY deliveries_parked
         WHERE sub_id = ?1 AND entity_id = ?2 AND state = 2 AND entity_seq < ?3)",
    )?
    .query_row(params![sub_id, entity_id, entity_seq], |r| r.get(0))
}

/// Whether `entity_id` has an undelivered (pending or parked) delivery for
/// `sub_id` before `entity_seq`: then a held batch starting there is not
/// first in line for it any more (a resend reopened earlier events).
pub fn undelivered_before(conn: &Connection, sub_id: i64, entity_id: i64, entity_seq: i64) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM deliveries INDEXED BY deliveries_by_entity
         WHERE sub_id = ?1 AND entity_id = ?2 AND entity_seq < ?3 AND state <> 1)",
    )?
    .query_row(params![sub_id, entity_id, entity_seq], |r| r.get(0))
}

/// Calls `each(entity_id, seq, entity_seq)` for every undelivered (pending
/// or parked) delivery of `sub_id`, pending ones first, each in ingest
/// order. Used after a resend, to find events reopened behind cursors; the
/// caller keeps only what it needs, so memory does not grow with the backlog.
pub fn each_open(conn: &Connection, sub_id: i64, mut each: impl FnMut(i64, i64, i64)) -> rusqlite::Result<()> {
    // One pass over the open part of `deliveries_waiting` (no table lookups).
    let mut stmt = conn.prepare_cached(
        "SELECT entity_id, event_seq, entity_seq FROM deliveries INDEXED BY deliveries_waiting
         WHERE sub_id = ?1 AND state <> 1",
    )?;
    let mut rows = stmt.query([sub_id])?;
    while let Some(row) = rows.next()? {
        each(row.get(0)?, row.get(1)?, row.get(2)?);
    }
    Ok(())
}

/// Per-subscription figures straight from the database.
pub fn subscriptions(conn: &Connection) -> rusqlite::Result<Vec<SubscriptionStatus>> {
    let mut stmt = conn.prepare(
        "SELECT id, name, state, in_flight, delivered_total, last_success_at, last_error, last_error_at, configured, url,
                next_attempt_at, concurrency, max_in_flight, concurrency_limit
         FROM subscriptions ORDER BY configured DESC, name",
    )?;
    let now = now_ms();
    let rows: Vec<(i64, SubscriptionStatus)> = stmt
        .query_map([], |r| {
            let next_attempt_at: Option<i64> = r.get(10)?;
            let last_success_at: Option<i64> = r.get(5)?;
            let last_error_at: Option<i64> = r.get(7)?;
            Ok((
                r.get(0)?,
                SubscriptionStatus {
                    name: r.get(1)?,
                    state: r.get(2)?,
                    pending: 0,
                    in_flight: r.get(3)?,
                    concurrency: r.get(11)?,
                    max_in_flight: r.get(12)?,
                    concurrency_limit: r.get(13)?,
                    // A config key, not stored: `status` fills it in.
                    max_rate: None,
                    parked: 0,
                    oldest_pending_age_s: None,
                    delivered_total: r.get(4)?,
                    last_success_at: last_success_at.map(ms_to_rfc3339),
                    last_error: r.get(6)?,
                    last_error_at: last_error_at.map(ms_to_rfc3339),
                    last_error_age_s: last_error_at.map(|at| (now.saturating_sub(at) / 1000).max(0)),
                    last_error_past: matches!((last_error_at, last_success_at), (Some(e), Some(s)) if s >= e),
                    configured: r.get(8)?,
                    url: r.get(9)?,
                    next_attempt_at: next_attempt_at.map(ms_to_rfc3339),
                    next_attempt_in_s: next_attempt_at.map(|at| (at.saturating_sub(now) / 1000).max(0)),
                },
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = Vec::with_capacity(rows.len());
    for (id, mut s) in rows {
        let count = |state: DeliveryState| {
            // `state <> 1` is the partial index's WHERE: with it SQLite counts
            // in `deliveries_waiting` instead of walking delivered rows.
            conn.prepare_cached("SELECT COUNT(*) FROM deliveries WHERE sub_id = ?1 AND state <> 1 AND state = ?2")?
                .query_row(params![id, state], |r| r.get::<_, i64>(0))
        };
        s.pending = count(DeliveryState::Pending)?;
        s.parked = count(DeliveryState::Parked)?;
        let oldest: Option<i64> = conn
            .prepare_cached(
                "SELECT e.ingested_at FROM deliveries d JOIN events e ON e.seq = d.event_seq
                 WHERE d.sub_id = ?1 AND d.state <> 1 AND d.state = ?2 ORDER BY d.event_seq LIMIT 1",
            )?
            .query_row(params![id, DeliveryState::Pending], |r| r.get(0))
            .optional()?;
        s.oldest_pending_age_s = oldest.map(|t| ((now - t) / 1000).max(0));
        out.push(s);
    }
    Ok(out)
}

/// What a heartbeat watches for changes, per configured subscription: its
/// name, its state and whether it has parked deliveries. Cheap (no counts),
/// so it can be read every few seconds whatever the backlog.
pub fn subscription_signals(conn: &Connection) -> rusqlite::Result<Vec<(String, SubscriptionState, bool)>> {
    // `d.state = 2` is the partial index `deliveries_parked`'s WHERE: one probe.
    conn.prepare_cached(
        "SELECT s.name, s.state,
                EXISTS (SELECT 1 FROM deliveries d WHERE d.sub_id = s.id AND d.state = 2)
         FROM subscriptions s WHERE s.configured = 1 ORDER BY s.name",
    )?
    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
    .collect()
}

/// The ingest counters.
pub fn ingest_counters(conn: &Connection) -> rusqlite::Result<IngestCounters> {
    let get = |name: &str| {
        conn.query_row("SELECT value FROM counters WHERE name = ?1", [name], |r| {
            r.get::<_, i64>(0)
        })
        .optional()
        .map(Option::unwrap_or_default)
    };
    Ok(IngestCounters {
        accepted_total: get("accepted_total")?,
        duplicate_total: get("duplicate_total")?,
        rejected_total: get("rejected_total")?,
    })
}

/// Bytes used by the database's live pages.
pub fn used_bytes(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row(
        "SELECT (page_count - freelist_count) * page_size FROM pragma_page_count, pragma_freelist_count, pragma_page_size",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|b| b.max(0) as u64)
}

/// Starts a read transaction on `conn`: every query until [`end_snapshot`]
/// sees the same commit. A transaction left open (a round that failed
/// half-way) is ended first.
pub fn begin_snapshot(conn: &Connection) -> rusqlite::Result<()> {
    if !conn.is_autocommit() {
        conn.execute_batch("ROLLBACK")?;
    }
    conn.prepare_cached("BEGIN")?.execute([])?;
    Ok(())
}

/// Ends the read transaction of [`begin_snapshot`].
pub fn end_snapshot(conn: &Connection) -> rusqlite::Result<()> {
    conn.prepare_cached("COMMIT")?.execute([])?;
    Ok(())
}

/// Deliveries not yet delivered (pending or parked), every subscription.
pub fn backlog(conn: &Connection) -> rusqlite::Result<i64> {
    // `state <> 1` (not delivered) is a literal, the text of the partial
    // index's `WHERE`, so the count reads `deliveries_waiting` only.
    conn.query_row("SELECT COUNT(*) FROM deliveries WHERE state <> 1", [], |r| r.get(0))
}

/// A value from the `meta` table.
pub fn meta(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()
}

/// Filters of `events`.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    /// Only this state.
    pub state: Option<DeliveryState>,
    /// Only this subscription.
    pub subscription: Option<String>,
    /// Only this entity.
    pub entity: Option<String>,
    /// Only events ingested at or after this time (ms).
    pub since_ms: Option<i64>,
    /// At most this many rows.
    pub limit: i64,
}

/// Deliveries matching `f`, oldest event first.
pub fn list_deliveries(conn: &Connection, f: &DeliveryFilter) -> rusqlite::Result<Vec<DeliveryRow>> {
    let mut stmt = conn.prepare(
        "SELECT e.event_id, e.type, n.entity, e.entity_seq, s.name, d.state, d.attempts, e.ingested_at,
                d.delivered_at, d.last_error
         FROM deliveries d
         JOIN events e ON e.seq = d.event_seq
         JOIN entities n ON n.id = d.entity_id
         JOIN subscriptions s ON s.id = d.sub_id
         WHERE (?1 IS NULL OR d.state = ?1) AND (?2 IS NULL OR s.name = ?2)
           AND (?3 IS NULL OR n.entity = ?3) AND (?4 IS NULL OR e.ingested_at >= ?4)
         ORDER BY d.event_seq, s.name LIMIT ?5",
    )?;
    let rows = stmt.query_map(params![f.state, f.subscription, f.entity, f.since_ms, f.limit], |r| {
        Ok(DeliveryRow {
            event_id: r.get(0)?,
            event_type: r.get(1)?,
            entity: r.get(2)?,
            entity_seq: r.get(3)?,
            subscription: r.get(4)?,
            state: r.get(5)?,
            attempts: r.get(6)?,
            ingested_at: ms_to_rfc3339(r.get(7)?),
            delivered_at: r.get::<_, Option<i64>>(8)?.map(ms_to_rfc3339),
            last_error: r.get(9)?,
        })
    })?;
    rows.collect()
}

/// An event and every attempt to deliver it.
pub fn event_detail(conn: &Connection, event_id: &str) -> rusqlite::Result<Option<EventDetail>> {
    let head = conn
        .query_row(
            "SELECT e.seq, e.type, n.entity, e.entity_seq, e.occurred_at, e.ingested_at, e.correlation_id,
                    e.is_test, e.attributes, e.payload
             FROM events e JOIN entities n ON n.id = e.entity_id WHERE e.event_id = ?1",
            [event_id],
            |r| {
                let attributes: Option<String> = r.get(8)?;
                let payload: String = r.get(9)?;
                Ok((
                    r.get::<_, i64>(0)?,
                    EventDetail {
                        event_id: event_id.to_string(),
                        event_type: r.get(1)?,
                        entity: r.get(2)?,
                        entity_seq: r.get(3)?,
                        occurred_at: r.get(4)?,
                        ingested_at: ms_to_rfc3339(r.get(5)?),
                        correlation_id: r.get(6)?,
                        is_test: r.get(7)?,
                        attributes: attributes
                            .and_then(|a| serde_json::from_str(&a).ok())
                            .unwrap_or_else(|| serde_json::json!({})),
                        payload: crate::outbox::report::Payload::from_text(payload),
                        deliveries: Vec::new(),
                    },
                ))
            },
        )
        .optional()?;
    let Some((seq, mut detail)) = head else {
        return Ok(None);
    };
    let mut subs = conn.prepare(
        "SELECT d.sub_id, s.name, d.state, d.next_attempt_at FROM deliveries d JOIN subscriptions s ON s.id = d.sub_id
         WHERE d.event_seq = ?1 ORDER BY s.name",
    )?;
    let rows: Vec<(i64, String, DeliveryState, Option<i64>)> = subs
        .query_map([seq], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut attempts = conn.prepare(
        "SELECT at, status, error, duration_ms FROM attempts WHERE event_seq = ?1 AND sub_id = ?2 ORDER BY id",
    )?;
    for (sub_id, name, state, next_attempt_at) in rows {
        let planned = next_attempt_at.filter(|_| state == DeliveryState::Pending);
        let list = attempts
            .query_map(params![seq, sub_id], |r| {
                Ok(AttemptRow {
                    at: ms_to_rfc3339(r.get(0)?),
                    status: r.get(1)?,
                    error: r.get(2)?,
                    duration_ms: r.get(3)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        detail.deliveries.push(EventDelivery {
            subscription: name,
            state,
            attempts: list,
            // Only a pending delivery has a next attempt planned.
            next_attempt_at: planned.map(ms_to_rfc3339),
            next_attempt_in_s: planned.map(|at| ((at - now_ms()) / 1000).max(0)),
        });
    }
    Ok(Some(detail))
}

/// Rejections by error code (`rejected_total:<code>` counters).
pub fn rejected_by_code(conn: &Connection) -> rusqlite::Result<Vec<(String, i64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT substr(name, 16), value FROM counters WHERE name LIKE 'rejected_total:%' ORDER BY name",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_sees_one_commit_until_it_ends() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("outbox.db");
        let writer = crate::outbox::open_writer(&path).expect("writer");
        let reader = crate::outbox::open_reader(&path).expect("reader");
        let started = |conn: &Connection| meta(conn, "started_at").expect("read");
        begin_snapshot(&reader).expect("begin");
        assert_eq!(started(&reader), None);
        crate::outbox::record_start(&writer, 42, "test").expect("write");
        assert_eq!(started(&reader), None, "a commit after the snapshot began is not seen");
        // A second begin ends the first snapshot rather than failing.
        begin_snapshot(&reader).expect("begin again");
        assert_eq!(started(&reader).as_deref(), Some("42"));
        end_snapshot(&reader).expect("end");
        assert!(reader.is_autocommit());
        assert_eq!(backlog(&reader).expect("backlog"), 0);
    }
}
