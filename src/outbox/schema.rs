//! The database schema and its migrations, versioned with `PRAGMA user_version`.
//!
//! Migrations only ever append: a newer agent must open a database that still
//! holds the backlog written by an older one.

use rusqlite::Connection;

/// Each entry moves the schema from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the outbox.
    r#"
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE entities (
        id INTEGER PRIMARY KEY,
        entity TEXT NOT NULL UNIQUE,
        last_seq INTEGER NOT NULL
    );
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        event_id TEXT NOT NULL UNIQUE,
        type TEXT NOT NULL,
        entity_id INTEGER NOT NULL,
        entity_seq INTEGER NOT NULL,
        occurred_at TEXT NOT NULL,
        ingested_at INTEGER NOT NULL,
        correlation_id TEXT,
        is_test INTEGER NOT NULL DEFAULT 0,
        attributes TEXT,
        payload TEXT NOT NULL
    );
    CREATE UNIQUE INDEX events_by_entity ON events(entity_id, entity_seq);
    CREATE TABLE subscriptions (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        configured INTEGER NOT NULL DEFAULT 1,
        covered_seq INTEGER NOT NULL DEFAULT 0,
        url TEXT,
        state TEXT NOT NULL DEFAULT 'online',
        in_flight INTEGER NOT NULL DEFAULT 0,
        delivered_total INTEGER NOT NULL DEFAULT 0,
        last_success_at INTEGER,
        last_error TEXT,
        last_error_at INTEGER,
        created_at INTEGER NOT NULL
    );
    -- state: 0 pending, 1 delivered, 2 parked
    CREATE TABLE deliveries (
        sub_id INTEGER NOT NULL,
        event_seq INTEGER NOT NULL,
        entity_id INTEGER NOT NULL,
        entity_seq INTEGER NOT NULL,
        state INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        first_failed_at INTEGER,
        next_attempt_at INTEGER,
        delivered_at INTEGER,
        last_status INTEGER,
        last_error TEXT,
        PRIMARY KEY (sub_id, event_seq)
    ) WITHOUT ROWID;
    -- the scheduler's "next event of this entity" lookup
    CREATE INDEX deliveries_open ON deliveries(sub_id, entity_id, entity_seq) WHERE state <> 1;
    -- status: counts and the oldest pending event, without walking delivered rows
    CREATE INDEX deliveries_waiting ON deliveries(sub_id, state, event_seq) WHERE state <> 1;
    -- pruning: all deliveries of one event
    CREATE INDEX deliveries_by_event ON deliveries(event_seq);
    CREATE TABLE attempts (
        id INTEGER PRIMARY KEY,
        sub_id INTEGER NOT NULL,
        event_seq INTEGER NOT NULL,
        at INTEGER NOT NULL,
        status INTEGER,
        error TEXT,
        duration_ms INTEGER NOT NULL
    );
    CREATE INDEX attempts_by_event ON attempts(event_seq);
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
    INSERT INTO counters VALUES ('accepted_total', 0), ('duplicate_total', 0), ('rejected_total', 0);
    "#,
    // 2: resends counted per delivery. An attempt's outcome applies only if
    // the delivery was not resent while its request was in flight, so a
    // resend always leads to a new attempt.
    r#"
    ALTER TABLE deliveries ADD COLUMN resends INTEGER NOT NULL DEFAULT 0;
    "#,
    // 3: no index keyed by entity filters on the state any more. The
    // schedulers find an entity's next event from a cursor they keep
    // (`entity_seq` at or after it, and not delivered), so a delivery that
    // changes state rewrites no page of an entity-keyed index: the outcomes of
    // one commit belong to many entities and used to dirty one page each.
    // `deliveries_waiting` (keyed by `event_seq`, so one commit's outcomes
    // share its pages) now covers what a scheduler reads at start.
    r#"
    DROP INDEX deliveries_open;
    CREATE INDEX deliveries_by_entity ON deliveries(sub_id, entity_id, entity_seq);
    DROP INDEX deliveries_waiting;
    CREATE INDEX deliveries_waiting ON deliveries(sub_id, state, event_seq, entity_id, entity_seq) WHERE state <> 1;
    "#,
    // Version 4: parked rows by entity. A scheduler keeps only a window of
    // entities in memory and finds the rest by scanning pending rows in
    // ingest order; this tells it, in one probe, whether an entity it finds
    // is blocked behind a parked event. Only a park or a resend writes it.
    // And when a subscription's scheduler plans its next attempt (the next
    // probe while offline), for `status`.
    r#"
    CREATE INDEX deliveries_parked ON deliveries(sub_id, entity_id, entity_seq) WHERE state = 2;
    ALTER TABLE subscriptions ADD COLUMN next_attempt_at INTEGER;
    "#,
    // Version 5: history for the status page and `/v1/history`. One row per
    // subscription and sample period (a minute), written by the writer from
    // the sampler (`crate::history`), at most 1,440 periods kept (24 h).
    // Totals are stored as counters, so a per-minute count is the
    // difference of two rows and a missed sample loses nothing;
    // `ingested_total` counts the deliveries fanned out to the subscription.
    r#"
    ALTER TABLE subscriptions ADD COLUMN ingested_total INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE history (
        sub_id INTEGER NOT NULL,
        at INTEGER NOT NULL,
        period_ms INTEGER NOT NULL,
        pending INTEGER NOT NULL,
        parked INTEGER NOT NULL,
        delivered_total INTEGER NOT NULL,
        ingested_total INTEGER NOT NULL,
        offline_ms INTEGER NOT NULL,
        PRIMARY KEY (sub_id, at)
    ) WITHOUT ROWID;
    "#,
    // Version 6: a subscription's request concurrency, for `status`, as its
    // running scheduler reports it with its state: the mode (`fixed`,
    // `adaptive`), the `max_in_flight` it runs with (a reload may have
    // changed the file since the agent started, so the file is not asked)
    // and the current limit (adaptive: between 1 and `max_in_flight`).
    // `NULL` while no scheduler runs: cleared at its stop and when the
    // subscription leaves the config, like `in_flight`.
    r#"
    ALTER TABLE subscriptions ADD COLUMN concurrency TEXT;
    ALTER TABLE subscriptions ADD COLUMN max_in_flight INTEGER;
    ALTER TABLE subscriptions ADD COLUMN concurrency_limit INTEGER;
    "#,
    // Version 7: batches waiting for their retry (`outbox::held`), so a
    // restart sends a failed batch again whole, with the same id. `parts`
    // is `entity_id:first_entity_seq:count`, comma-separated, in order.
    // Written with a failed batch's outcomes, deleted with the outcomes that
    // deliver or park it; rowid order is the order they failed in.
    r#"
    CREATE TABLE held_batches (
        sub_id INTEGER NOT NULL,
        batch_id TEXT NOT NULL,
        parts TEXT NOT NULL,
        UNIQUE (sub_id, batch_id)
    );
    "#,
];

/// The schema version this build writes.
pub const CURRENT_VERSION: i64 = MIGRATIONS.len() as i64;

/// Refuses a database written by a newer agent rather than guess at it.
pub fn refuse_newer(conn: &Connection) -> Result<i64, String> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if version > CURRENT_VERSION {
        return Err(format!(
            "schema version {version} was written by a newer store-outbox (this one knows up to {CURRENT_VERSION}); \
             install that version again or newer, the database is left as it is"
        ));
    }
    Ok(version)
}

/// Brings the schema up to [`CURRENT_VERSION`], one transaction per step.
pub fn migrate(conn: &mut Connection) -> Result<(), String> {
    let version = refuse_newer(conn)?;
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| e.to_string())?;
        tx.execute_batch(sql)
            .map_err(|e| format!("migration to version {}: {e}", index + 1))?;
        tx.pragma_update(None, "user_version", (index + 1) as i64)
            .map_err(|e| e.to_string())?;
        tx.commit().map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database written by a version-1 agent keeps its backlog through the
    /// upgrade (what `dpkg -i` of a newer package does at the next start).
    #[test]
    fn a_version_1_database_is_migrated_with_its_backlog_and_indexes() -> Result<(), String> {
        let mut conn = Connection::open_in_memory().map_err(|e| e.to_string())?;
        conn.execute_batch(MIGRATIONS[0]).map_err(|e| e.to_string())?;
        conn.execute_batch(
            "PRAGMA user_version = 1;
             INSERT INTO deliveries(sub_id, event_seq, entity_id, entity_seq, state) VALUES (1, 7, 3, 1, 0);
             INSERT INTO subscriptions(id, name, in_flight, created_at) VALUES (1, 'erp', 2, 0);",
        )
        .map_err(|e| e.to_string())?;
        migrate(&mut conn)?;
        let (version, resends, state): (i64, i64, i64) = conn
            .query_row(
                "SELECT (SELECT user_version FROM pragma_user_version), resends, state FROM deliveries WHERE event_seq = 7",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(|e| e.to_string())?;
        assert_eq!((version, resends, state), (CURRENT_VERSION, 0, 0));
        // Version 3: no entity-keyed index filters on the state.
        let indexes: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'deliveries' AND sql IS NOT NULL ORDER BY name")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(|e| e.to_string())?;
        let history: i64 = conn
            .query_row("SELECT COUNT(*) FROM history", [], |r| r.get(0))
            .map_err(|e| e.to_string())?;
        assert_eq!(history, 0, "version 5: an empty history");
        // Version 6: an existing subscription's concurrency is not known
        // until its scheduler runs.
        let concurrency: (Option<String>, Option<i64>, Option<i64>, i64) = conn
            .query_row(
                "SELECT concurrency, max_in_flight, concurrency_limit, in_flight FROM subscriptions WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .map_err(|e| e.to_string())?;
        assert_eq!(concurrency, (None, None, None, 2));
        assert_eq!(
            indexes,
            [
                "deliveries_by_entity",
                "deliveries_by_event",
                "deliveries_parked",
                "deliveries_waiting"
            ]
        );
        Ok(())
    }
}
