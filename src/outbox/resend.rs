//! Queueing deliveries again (operator action), shared by the `resend`
//! command and the admin API.
//!
//! A resent delivery keeps its place in its entity's order (its `entity_seq`)
//! and its `webhook-id`. Schedulers notice through `resend_generation` in
//! `meta`, which every resend bumps in the same transaction.
//!
//! While the agent runs, the admin API resends through the writer thread
//! (`Writer::resend`, which calls [`apply`] inside its batch). The `resend`
//! command runs in its own process, often while the agent is stopped: it
//! calls [`resend`], which takes the write lock on its own connection
//! (`BEGIN IMMEDIATE`), so it is serialised with the agent's writer by
//! SQLite.

use rusqlite::{params, Connection};

use super::state::DeliveryState;

/// What to queue again.
#[derive(Debug, Clone, Default)]
pub struct ResendRequest {
    /// These events (for every subscription, or `subscription`).
    pub event_ids: Vec<String>,
    /// Every parked delivery.
    pub parked: bool,
    /// Only this subscription.
    pub subscription: Option<String>,
    /// With `parked`: only events stored at or after this time (ms).
    pub since_ms: Option<i64>,
}

/// What a resend did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ResendOutcome {
    /// Deliveries queued again.
    pub queued: usize,
    /// Ids with no delivery to queue (not in the outbox, or not for that subscription).
    pub unknown: Vec<String>,
}

/// Why a resend could not run.
#[derive(Debug, thiserror::Error)]
pub enum ResendError {
    /// `subscription` names no subscription.
    #[error("no such subscription: {0:?}")]
    UnknownSubscription(String),
    /// The database refused.
    #[error("storage: {0}")]
    Storage(#[from] rusqlite::Error),
    /// The agent's writer could not commit it (a full disk, a broken file).
    #[error("not stored: {0}")]
    NotStored(String),
    /// The agent is stopping; nothing was queued.
    #[error("the agent is stopping")]
    Stopped,
}

/// Queues the deliveries again in one transaction of its own (the `resend`
/// command, on its own connection).
pub fn resend(conn: &mut Connection, req: &ResendRequest) -> Result<ResendOutcome, ResendError> {
    // IMMEDIATE: take the write lock first. A deferred transaction that reads
    // and then writes fails at once (SQLITE_BUSY_SNAPSHOT) if the agent
    // committed in between, whatever the busy timeout.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let out = apply(&tx, req)?;
    tx.commit()?;
    Ok(out)
}

/// Queues the deliveries again inside the caller's open write transaction.
/// An unknown subscription is refused before anything is written, so the
/// transaction stays usable for the rest of a batch.
pub fn apply(tx: &Connection, req: &ResendRequest) -> Result<ResendOutcome, ResendError> {
    if let Some(name) = &req.subscription {
        let known: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM subscriptions WHERE name = ?1)",
            [name],
            |r| r.get(0),
        )?;
        if !known {
            return Err(ResendError::UnknownSubscription(name.clone()));
        }
    }
    // Back to pending with the give-up clock reset; attempts stay for `show`.
    // `resends + 1` voids the outcome of a request in flight right now (see
    // `writer::apply_outcome`): the event is sent again after this.
    let reset = format!(
        "UPDATE deliveries SET state = {}, first_failed_at = NULL, next_attempt_at = NULL, resends = resends + 1",
        DeliveryState::Pending.code()
    );
    let sub_filter = "(?2 IS NULL OR sub_id = (SELECT id FROM subscriptions WHERE name = ?2))";
    let mut out = ResendOutcome::default();
    if req.parked {
        out.queued += tx.execute(
            &format!(
                "{reset} WHERE state = ?1 AND {sub_filter}
                 AND (?3 IS NULL OR event_seq IN (SELECT seq FROM events WHERE ingested_at >= ?3))"
            ),
            params![DeliveryState::Parked, req.subscription, req.since_ms],
        )?;
    }
    for id in &req.event_ids {
        let n = tx.execute(
            &format!("{reset} WHERE event_seq = (SELECT seq FROM events WHERE event_id = ?1) AND {sub_filter}"),
            params![id, req.subscription],
        )?;
        if n == 0 {
            out.unknown.push(id.clone());
        }
        out.queued += n;
    }
    // Nothing queued, nothing for the schedulers to look at again.
    if out.queued > 0 {
        tx.execute(
            "INSERT INTO meta(key, value) VALUES ('resend_generation', '1')
             ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1",
            [],
        )?;
    }
    Ok(out)
}
