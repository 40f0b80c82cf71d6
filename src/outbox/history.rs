//! The history table (schema version 5): per subscription, one sample a
//! period (a minute) of its backlog, its delivery and ingest counters and
//! how long it was offline, kept 24 hours (1,440 periods) so it survives
//! restarts. Stored by the writer ([`record`], for the sampler in
//! `crate::history`); read back by [`read`] and [`series`] as per-period
//! counts for `/v1/history` and the status page's charts.

use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::state::{DeliveryState, SubscriptionState};
use crate::timefmt::ms_to_rfc3339;

/// Periods kept: 24 hours of minutes.
pub const KEPT_PERIODS: i64 = 1440;

/// One subscription's sample for one period, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Subscription row id.
    pub sub_id: i64,
    /// Start of the period, wall-clock ms (a multiple of `period_ms`).
    pub at_ms: i64,
    /// Length of the period.
    pub period_ms: i64,
    /// Deliveries waiting at the end of the period (not parked).
    pub pending: i64,
    /// Deliveries parked at the end of the period.
    pub parked: i64,
    /// Deliveries that got a 2xx, since the subscription was created.
    pub delivered_total: i64,
    /// Deliveries fanned out to it, since version 5 of the schema.
    pub ingested_total: i64,
    /// How long it was offline during the period (as far as the sampler saw).
    pub offline_ms: i64,
}

/// Stores one period's history samples (a sample taken again for the same
/// period replaces the first) and drops samples from before `keep_from_ms`.
pub fn record(tx: &Connection, samples: &[Sample], keep_from_ms: i64) -> rusqlite::Result<()> {
    for s in samples {
        tx.prepare_cached(
            "INSERT OR REPLACE INTO history(sub_id, at, period_ms, pending, parked, delivered_total, ingested_total, offline_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            s.sub_id,
            s.at_ms,
            s.period_ms,
            s.pending,
            s.parked,
            s.delivered_total,
            s.ingested_total,
            s.offline_ms
        ])?;
    }
    tx.prepare_cached("DELETE FROM history WHERE at < ?1")?
        .execute([keep_from_ms])?;
    Ok(())
}

/// Each configured subscription's state as last recorded.
pub fn subscription_states(conn: &Connection) -> rusqlite::Result<Vec<(i64, SubscriptionState)>> {
    conn.prepare_cached("SELECT id, state FROM subscriptions WHERE configured = 1")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect()
}

/// A configured subscription's figures at the end of a period.
pub struct Figures {
    pub sub_id: i64,
    pub pending: i64,
    pub parked: i64,
    pub delivered_total: i64,
    pub ingested_total: i64,
}

/// Each configured subscription's figures now.
pub fn figures(conn: &Connection) -> rusqlite::Result<Vec<Figures>> {
    let subs: Vec<(i64, i64, i64)> = conn
        .prepare_cached("SELECT id, delivered_total, ingested_total FROM subscriptions WHERE configured = 1")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = Vec::with_capacity(subs.len());
    for (sub_id, delivered_total, ingested_total) in subs {
        // `state <> 1` is the partial index's WHERE (`deliveries_waiting`).
        let count = |state: DeliveryState| {
            conn.prepare_cached("SELECT COUNT(*) FROM deliveries WHERE sub_id = ?1 AND state <> 1 AND state = ?2")?
                .query_row(params![sub_id, state], |r| r.get::<_, i64>(0))
        };
        out.push(Figures {
            sub_id,
            pending: count(DeliveryState::Pending)?,
            parked: count(DeliveryState::Parked)?,
            delivered_total,
            ingested_total,
        });
    }
    Ok(out)
}

/// One period of a subscription's history, as people and scripts read it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Point {
    /// Start of the period, RFC 3339.
    pub at: String,
    /// The same, wall-clock ms (for charts).
    #[serde(skip)]
    pub at_ms: i64,
    /// Deliveries waiting at its end (not parked).
    pub pending: i64,
    /// Deliveries parked at its end.
    pub parked: i64,
    /// Deliveries that got a 2xx during it (since the sample before, when
    /// samples are missing: the agent was not running).
    pub delivered: i64,
    /// Deliveries fanned out to the subscription during it (likewise).
    pub ingested: i64,
    /// Seconds it was offline during the period.
    pub offline_s: i64,
}

/// One subscription's history.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    /// The subscription.
    pub subscription: String,
    /// The periods, oldest first.
    pub samples: Vec<Point>,
}

/// The history document of `/v1/history`.
#[derive(Debug, Clone, Serialize)]
pub struct History {
    /// The sample period, seconds (60).
    pub period_s: f64,
    /// From when (RFC 3339).
    pub since: String,
    /// Per subscription.
    pub subscriptions: Vec<Series>,
}

/// The history since `since_ms` of the configured subscriptions, or of the
/// one named `only` (configured or not). `None` when `only` names no
/// subscription.
pub fn read(
    conn: &Connection,
    only: Option<&str>,
    since_ms: i64,
    period: Duration,
) -> rusqlite::Result<Option<History>> {
    let subs: Vec<(i64, String)> = match only {
        Some(name) => conn
            .prepare_cached("SELECT id, name FROM subscriptions WHERE name = ?1")?
            .query_row([name], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
            .into_iter()
            .collect(),
        None => conn
            .prepare_cached("SELECT id, name FROM subscriptions WHERE configured = 1 ORDER BY name")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?,
    };
    if only.is_some() && subs.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(subs.len());
    for (sub_id, name) in subs {
        out.push(Series {
            subscription: name,
            samples: series(conn, sub_id, since_ms)?,
        });
    }
    Ok(Some(History {
        period_s: period.as_secs_f64(),
        since: ms_to_rfc3339(since_ms),
        subscriptions: out,
    }))
}

/// A subscription's periods from `since_ms` on, with per-period counts (the
/// first period's counts come from the sample before it, when there is one).
pub fn series(conn: &Connection, sub_id: i64, since_ms: i64) -> rusqlite::Result<Vec<Point>> {
    let before: Option<(i64, i64)> = conn
        .prepare_cached(
            "SELECT delivered_total, ingested_total FROM history WHERE sub_id = ?1 AND at < ?2 ORDER BY at DESC LIMIT 1",
        )?
        .query_row(params![sub_id, since_ms], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let rows: Vec<(i64, i64, i64, i64, i64, i64)> = conn
        .prepare_cached(
            "SELECT at, pending, parked, delivered_total, ingested_total, offline_ms
             FROM history WHERE sub_id = ?1 AND at >= ?2 ORDER BY at",
        )?
        .query_map(params![sub_id, since_ms], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut previous = before;
    let mut points = Vec::with_capacity(rows.len());
    for (at, pending, parked, delivered_total, ingested_total, offline_ms) in rows {
        // Counters only grow; a first sample has nothing to count from.
        let (delivered, ingested) = match previous {
            Some((d, i)) => ((delivered_total - d).max(0), (ingested_total - i).max(0)),
            None => (0, 0),
        };
        previous = Some((delivered_total, ingested_total));
        points.push(Point {
            at: ms_to_rfc3339(at),
            at_ms: at,
            pending,
            parked,
            delivered,
            ingested,
            offline_s: (offline_ms + 500) / 1000,
        });
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let mut conn = Connection::open_in_memory().expect("memory db");
        crate::outbox::schema::migrate(&mut conn).expect("migrate");
        conn.execute(
            "INSERT INTO subscriptions(id, name, created_at) VALUES (1, 'erp', 0), (2, 'oms', 0)",
            [],
        )
        .expect("subs");
        conn
    }

    fn store(conn: &Connection, at: i64, delivered_total: i64, ingested_total: i64, offline_ms: i64) {
        conn.execute(
            "INSERT INTO history VALUES (1, ?1, 60000, 5, 0, ?2, ?3, ?4)",
            params![at, delivered_total, ingested_total, offline_ms],
        )
        .expect("sample");
    }

    #[test]
    fn per_period_counts_are_differences_of_the_stored_totals() {
        let conn = db();
        store(&conn, 0, 10, 20, 0);
        store(&conn, 60_000, 15, 29, 30_000);
        // The agent was down for two periods: the next sample counts them.
        store(&conn, 240_000, 40, 29, 60_000);
        let points = series(&conn, 1, 60_000).expect("series");
        let counts: Vec<(i64, i64, i64)> = points.iter().map(|p| (p.delivered, p.ingested, p.offline_s)).collect();
        assert_eq!(counts, [(5, 9, 30), (25, 0, 60)]);
        assert_eq!(points[0].at, "1970-01-01T00:01:00Z");
        let all = series(&conn, 1, 0).expect("series");
        assert_eq!((all[0].delivered, all[0].ingested), (0, 0), "nothing before the first");
    }

    #[test]
    fn read_names_its_subscriptions_and_refuses_an_unknown_one() {
        let conn = db();
        store(&conn, 0, 1, 1, 0);
        let h = read(&conn, None, 0, Duration::from_secs(60))
            .expect("read")
            .expect("some");
        assert_eq!(h.period_s, 60.0);
        let names: Vec<&str> = h.subscriptions.iter().map(|s| s.subscription.as_str()).collect();
        assert_eq!(names, ["erp", "oms"]);
        assert_eq!(h.subscriptions[0].samples.len(), 1);
        assert!(read(&conn, Some("nope"), 0, Duration::from_secs(60))
            .expect("read")
            .is_none());
    }
}
