//! The stop a `410 Gone` puts on a subscription, kept across restarts.
//!
//! When its endpoint answers 410, a subscription's scheduler stops sending
//! and has the writer store a marker in `meta` (`gone:<subscription id>`):
//! the fingerprint of the subscription's config and the time. An agent
//! started again on the same config stays stopped; one whose subscription
//! config changed (a new URL, most likely) clears the marker and sends
//! again. `store-outbox resume SUB` deletes the marker on its own connection
//! (like `resend`, serialised with the agent's writer by SQLite's write
//! lock); a running scheduler looks for its marker at every tick and
//! resumes when it is gone. Nothing is dropped or parked meanwhile: the
//! deliveries stay pending.
//!
//! `resume` also leaves `resumed:<subscription id>` = the time of the marker
//! it deleted: a scheduler that had the marker written but not yet seen it
//! (a `resume` within a tick of the 410) can tell "resumed" from "not
//! written yet", and does not write it again.

use rusqlite::{params, Connection, OptionalExtension};

/// The `meta` key of a subscription's marker.
pub fn marker_key(sub_id: i64) -> String {
    format!("gone:{sub_id}")
}

/// The `meta` key of the time of the marker `resume` deleted last.
pub fn resumed_key(sub_id: i64) -> String {
    format!("resumed:{sub_id}")
}

/// The `since_ms` of the marker `resume` deleted last, if any.
pub fn resumed_since(conn: &Connection, sub_id: i64) -> rusqlite::Result<Option<i64>> {
    let text: Option<String> = conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([resumed_key(sub_id)], |r| r.get(0))
        .optional()?;
    Ok(text.and_then(|t| t.parse().ok()))
}

/// A subscription stopped by a 410.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    /// The fingerprint of the subscription's config when it was stopped.
    pub fingerprint: String,
    /// When (wall-clock ms).
    pub since_ms: i64,
}

impl Marker {
    /// The stored text: `<since_ms> <fingerprint>`.
    pub fn encode(&self) -> String {
        format!("{} {}", self.since_ms, self.fingerprint)
    }

    /// Reads the stored text; `None` if it is not a marker.
    pub fn decode(text: &str) -> Option<Marker> {
        let (since, fingerprint) = text.split_once(' ')?;
        Some(Marker {
            fingerprint: fingerprint.to_string(),
            since_ms: since.parse().ok()?,
        })
    }
}

/// The marker of subscription `sub_id`, if it is stopped.
pub fn marker(conn: &Connection, sub_id: i64) -> rusqlite::Result<Option<Marker>> {
    let text: Option<String> = conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([marker_key(sub_id)], |r| r.get(0))
        .optional()?;
    Ok(text.as_deref().and_then(Marker::decode))
}

/// Stores or (with `None`) deletes the marker, inside the caller's
/// transaction (the writer's).
pub fn set_marker(tx: &Connection, sub_id: i64, marker: Option<&Marker>) -> rusqlite::Result<()> {
    match marker {
        Some(m) => tx
            .prepare_cached(
                "INSERT INTO meta(key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![marker_key(sub_id), m.encode()])?,
        None => tx
            .prepare_cached("DELETE FROM meta WHERE key = ?1")?
            .execute([marker_key(sub_id)])?,
    };
    Ok(())
}

/// What `resume` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resumed {
    /// It was stopped by a 410 since then (wall-clock ms); now it is not.
    Resumed {
        /// When the 410 stopped it.
        since_ms: i64,
    },
    /// It was not stopped: nothing to do.
    NotGone,
}

/// Why `resume` could not run.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// No subscription of that name was ever configured.
    #[error("no such subscription: {0:?}")]
    UnknownSubscription(String),
    /// The database refused.
    #[error("storage: {0}")]
    Storage(#[from] rusqlite::Error),
}

/// Deletes the marker of subscription `name` in a transaction of its own
/// (the `resume` command, on its own connection).
pub fn resume(conn: &mut Connection, name: &str) -> Result<Resumed, ResumeError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let sub_id: Option<i64> = tx
        .query_row("SELECT id FROM subscriptions WHERE name = ?1", [name], |r| r.get(0))
        .optional()?;
    let Some(sub_id) = sub_id else {
        return Err(ResumeError::UnknownSubscription(name.to_string()));
    };
    let outcome = match marker(&tx, sub_id)? {
        Some(m) => {
            set_marker(&tx, sub_id, None)?;
            tx.execute(
                "INSERT INTO meta(key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![resumed_key(sub_id), m.since_ms.to_string()],
            )?;
            Resumed::Resumed { since_ms: m.since_ms }
        }
        None => Resumed::NotGone,
    };
    tx.commit()?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_reads_back_as_written_and_garbage_is_no_marker() {
        let m = Marker {
            fingerprint: "ab12".into(),
            since_ms: 1_764_000_000_000,
        };
        assert_eq!(Marker::decode(&m.encode()), Some(m));
        assert_eq!(Marker::decode("soon ab12"), None);
        assert_eq!(Marker::decode(""), None);
    }
}
