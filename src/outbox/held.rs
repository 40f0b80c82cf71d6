//! Batches waiting for their retry, kept across restarts (`held_batches`).
//!
//! A batch that failed goes again whole: the same events, in the same
//! order, with the same `webhook-id`. Within a run the scheduler holds it in
//! memory; so that a restart (a power cut during an outage, most likely)
//! keeps it too, the writer stores its composition in the same transaction
//! as the failed attempt's outcomes, and deletes it in the one that
//! delivers or parks it. A started scheduler sends the stored batches
//! first, each only if it is still exactly what it was and still first in
//! line for each of its entities (`deliver::scheduler` checks, with
//! [`crate::outbox::read::heads`] and [`crate::outbox::read::undelivered_before`]); a batch
//! that is not (a resend reopened earlier events of an entity, or its
//! events went otherwise) is deleted and its entities go on as usual.

use rusqlite::{params, Connection};

/// One entity's share of a held batch: its consecutive events from
/// `first_entity_seq`, `count` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldPart {
    /// The entity's row id.
    pub entity_id: i64,
    /// Its first event in the batch.
    pub first_entity_seq: i64,
    /// How many of its events.
    pub count: usize,
}

/// A held batch as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredHeld {
    /// Its `webhook-id`.
    pub id: String,
    /// Its entities' shares, in the order they go.
    pub parts: Vec<HeldPart>,
}

/// The stored text of a batch's parts: `entity_id:first_entity_seq:count`,
/// comma-separated, in order.
pub fn encode<'a>(parts: impl IntoIterator<Item = &'a HeldPart>) -> String {
    let mut text = String::new();
    for part in parts {
        if !text.is_empty() {
            text.push(',');
        }
        text.push_str(&format!("{}:{}:{}", part.entity_id, part.first_entity_seq, part.count));
    }
    text
}

/// Reads the stored text; `None` if it is not what [`encode`] writes.
pub fn decode(text: &str) -> Option<Vec<HeldPart>> {
    text.split(',')
        .map(|part| {
            let mut fields = part.split(':');
            let held = HeldPart {
                entity_id: fields.next()?.parse().ok()?,
                first_entity_seq: fields.next()?.parse().ok()?,
                count: fields.next()?.parse().ok().filter(|&n| n > 0)?,
            };
            fields.next().is_none().then_some(held)
        })
        .collect()
}

/// What a batch's outcome does to its stored composition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeldChange {
    /// It goes again: store it (once; a later failure finds it stored).
    Keep {
        /// Its `webhook-id`.
        id: String,
        /// Its entities' shares, in the order they go.
        parts: Vec<HeldPart>,
    },
    /// It is delivered or parked: it is held no more.
    Forget {
        /// Its `webhook-id`.
        id: String,
    },
}

/// Applies `change` for subscription `sub_id`, inside the caller's
/// transaction (the writer's).
pub fn apply(tx: &Connection, sub_id: i64, change: &HeldChange) -> rusqlite::Result<()> {
    match change {
        // Encoded only here: a batch that is delivered (nearly every one)
        // never needs the text.
        HeldChange::Keep { id, parts } => tx
            .prepare_cached("INSERT OR IGNORE INTO held_batches (sub_id, batch_id, parts) VALUES (?1, ?2, ?3)")?
            .execute(params![sub_id, id, encode(parts)])?,
        HeldChange::Forget { id } => forget(tx, sub_id, id)?,
    };
    Ok(())
}

/// Deletes one stored batch of `sub_id`; how many rows went (0 or 1).
pub fn forget(tx: &Connection, sub_id: i64, id: &str) -> rusqlite::Result<usize> {
    tx.prepare_cached("DELETE FROM held_batches WHERE sub_id = ?1 AND batch_id = ?2")?
        .execute(params![sub_id, id])
}

/// Every stored batch of `sub_id`, oldest first. A row whose parts cannot
/// be read (never written so) comes back without parts, to be deleted.
pub fn load(conn: &Connection, sub_id: i64) -> rusqlite::Result<Vec<StoredHeld>> {
    let mut stmt = conn.prepare_cached("SELECT batch_id, parts FROM held_batches WHERE sub_id = ?1 ORDER BY rowid")?;
    let rows = stmt.query_map([sub_id], |r| {
        let parts: String = r.get(1)?;
        Ok(StoredHeld {
            id: r.get(0)?,
            parts: decode(&parts).unwrap_or_default(),
        })
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_read_back_as_written_and_anything_else_is_refused() {
        let parts = vec![
            HeldPart {
                entity_id: 3,
                first_entity_seq: 17,
                count: 4,
            },
            HeldPart {
                entity_id: 12,
                first_entity_seq: 1,
                count: 1,
            },
        ];
        let text = encode(&parts);
        assert_eq!(text, "3:17:4,12:1:1");
        assert_eq!(decode(&text), Some(parts));
        for bad in ["", "3:17", "3:17:4:5", "3:x:4", "3:17:0", "3:17:4,"] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }
}
