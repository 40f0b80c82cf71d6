//! The limits ingest is compared with: raw rusqlite inserts of the rows the
//! agent writes per event (its own schema, opened by the agent's own
//! `outbox::open_writer`: WAL, synchronous=FULL), in group commits and one
//! commit per event; and the naive loop a store IT team writes by hand.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use rusqlite::{params, Connection, TransactionBehavior};

use crate::events::{self, Ev};

/// A raw SQLite run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Raw {
    pub batch: usize,
    pub events: u64,
    pub commits: u64,
    /// Time inside transactions (event generation excluded).
    pub db_s: f64,
    /// `events / db_s`.
    pub rate: f64,
    pub cut_short: bool,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The agent's database with one subscription row, as the agent has it.
fn open(path: &Path) -> anyhow::Result<(Connection, i64)> {
    let conn = store_outbox::outbox::open_writer(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    conn.execute(
        "INSERT INTO subscriptions(name, created_at) VALUES ('bench', ?1) ON CONFLICT(name) DO NOTHING",
        [now_ms()],
    )?;
    let id = conn.query_row("SELECT id FROM subscriptions WHERE name = 'bench'", [], |r| r.get(0))?;
    Ok((conn, id))
}

/// The statements of the agent's `insert_event`, for one new event.
fn insert(tx: &Connection, sub_id: i64, e: &Ev) -> rusqlite::Result<i64> {
    let dup = tx
        .prepare_cached("SELECT entity_seq FROM events WHERE event_id = ?1")?
        .query_row([&e.event_id], |r| r.get::<_, i64>(0));
    match dup {
        Err(rusqlite::Error::QueryReturnedNoRows) => {}
        Ok(_) => return Ok(0),
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
        Option::<String>::None,
        false,
        e.attributes,
        e.payload
    ])?;
    let seq = tx.last_insert_rowid();
    tx.prepare_cached("INSERT INTO deliveries(sub_id, event_seq, entity_id, entity_seq) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![sub_id, seq, entity_id, entity_seq])?;
    Ok(seq)
}

/// A proposed leaner writer: the entity counters live in the writer's memory
/// (it is the only writer) and are written once per entity per transaction;
/// the duplicate check is the UNIQUE index itself (`ON CONFLICT DO NOTHING`),
/// not a SELECT before every insert. Same rows at commit.
fn insert_lean(
    tx: &Connection,
    sub_id: i64,
    e: &Ev,
    cache: &mut HashMap<String, (i64, i64)>,
    touched: &mut HashMap<i64, i64>,
) -> rusqlite::Result<i64> {
    let (entity_id, last) = match cache.get(&e.entity) {
        Some(v) => *v,
        None => {
            let found = tx
                .prepare_cached("SELECT id, last_seq FROM entities WHERE entity = ?1")?
                .query_row([&e.entity], |r| Ok((r.get(0)?, r.get(1)?)));
            let v = match found {
                Ok(v) => v,
                Err(rusqlite::Error::QueryReturnedNoRows) => {
                    let id = tx
                        .prepare_cached("INSERT INTO entities(entity, last_seq) VALUES (?1, 0) RETURNING id")?
                        .query_row([&e.entity], |r| r.get(0))?;
                    (id, 0)
                }
                Err(other) => return Err(other),
            };
            cache.insert(e.entity.clone(), v);
            v
        }
    };
    let entity_seq = last + 1;
    let inserted = tx
        .prepare_cached(
            "INSERT INTO events(event_id, type, entity_id, entity_seq, occurred_at, ingested_at,
                                correlation_id, is_test, attributes, payload)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT(event_id) DO NOTHING",
        )?
        .execute(params![
            e.event_id,
            e.event_type,
            entity_id,
            entity_seq,
            e.occurred_at,
            now_ms(),
            Option::<String>::None,
            false,
            e.attributes,
            e.payload
        ])?;
    if inserted == 0 {
        return Ok(0); // a duplicate: its entity_seq would be read back here
    }
    let seq = tx.last_insert_rowid();
    cache.insert(e.entity.clone(), (entity_id, entity_seq));
    touched.insert(entity_id, entity_seq);
    tx.prepare_cached("INSERT INTO deliveries(sub_id, event_seq, entity_id, entity_seq) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![sub_id, seq, entity_id, entity_seq])?;
    Ok(seq)
}

/// What a raw group-commit run does.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Events in all.
    pub n: u64,
    /// Events per transaction.
    pub batch: usize,
    /// Entities they are spread over.
    pub entities: u64,
    /// Event line size, bytes.
    pub size: usize,
    pub time_limit: Duration,
    /// Start a transaction at most this often (a background probe).
    pub pace: Option<Duration>,
    /// The leaner statements of a proposed writer change instead of the
    /// agent's own (see [`insert_lean`]).
    pub lean: bool,
}

/// Inserts `n` events over `entities` entities, `batch` per transaction,
/// with the per-batch counter updates the agent makes. `commit_hist` gets the
/// duration of every transaction (µs).
pub fn group_commit(path: &Path, spec: &Spec, mut commit_hist: Option<&mut Histogram<u64>>) -> anyhow::Result<Raw> {
    let Spec {
        n,
        batch,
        entities,
        size,
        time_limit,
        pace,
        lean,
    } = *spec;
    let (mut conn, sub_id) = open(path)?;
    let mut cache: HashMap<String, (i64, i64)> = HashMap::new();
    let mut touched: HashMap<i64, i64> = HashMap::new();
    let batch = batch.max(1);
    let started = Instant::now();
    let mut db = Duration::ZERO;
    let mut done = 0u64;
    let mut commits = 0u64;
    let mut cut = false;
    let mut evs: Vec<Ev> = Vec::with_capacity(batch);
    while done < n {
        if started.elapsed() > time_limit {
            cut = true;
            break;
        }
        evs.clear();
        let last = (done + batch as u64).min(n);
        for i in done..last {
            evs.push(events::event("raw", i, &events::order_entity(i, entities), size));
        }
        let t = Instant::now();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut max_seq = 0;
        touched.clear();
        for e in &evs {
            let seq = if lean {
                insert_lean(&tx, sub_id, e, &mut cache, &mut touched)?
            } else {
                insert(&tx, sub_id, e)?
            };
            max_seq = max_seq.max(seq);
        }
        for (id, last) in &touched {
            tx.prepare_cached("UPDATE entities SET last_seq = ?2 WHERE id = ?1")?
                .execute(params![id, last])?;
        }
        tx.prepare_cached("UPDATE counters SET value = value + ?2 WHERE name = ?1")?
            .execute(params!["accepted_total", evs.len() as i64])?;
        tx.prepare_cached("UPDATE subscriptions SET covered_seq = MAX(covered_seq, ?2) WHERE id = ?1")?
            .execute(params![sub_id, max_seq])?;
        tx.commit()?;
        let took = t.elapsed();
        db += took;
        if let Some(h) = commit_hist.as_deref_mut() {
            let _ = h.record((took.as_micros() as u64).max(1));
        }
        commits += 1;
        done = last;
        if let Some(pace) = pace {
            std::thread::sleep(pace.saturating_sub(took));
        }
    }
    Ok(Raw {
        batch,
        events: done,
        commits,
        db_s: db.as_secs_f64(),
        rate: done as f64 / db.as_secs_f64().max(1e-9),
        cut_short: cut,
    })
}

/// The naive loop: per event, one transaction holding the INSERT, one
/// synchronous POST, and the UPDATE marking it sent. Plain table, WAL,
/// synchronous=FULL (the same durability promise), a keep-alive client.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Naive {
    pub events: u64,
    pub failed: u64,
    pub elapsed_s: f64,
    pub rate: f64,
    pub cut_short: bool,
}

pub fn naive(path: &Path, url: &str, n: u64, size: usize, key: &[u8], time_limit: Duration) -> anyhow::Result<Naive> {
    let mut conn = Connection::open(path)?;
    conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0))?;
    conn.execute_batch(
        "PRAGMA synchronous=FULL;
         CREATE TABLE IF NOT EXISTS outbox (
             id INTEGER PRIMARY KEY,
             event_id TEXT NOT NULL UNIQUE,
             type TEXT NOT NULL,
             entity TEXT NOT NULL,
             payload TEXT NOT NULL,
             created_at INTEGER NOT NULL,
             sent_at INTEGER
         );",
    )?;
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("HTTP client")?;
    let started = Instant::now();
    let mut done = 0u64;
    let mut failed = 0u64;
    let mut cut = false;
    const ENTITIES: u64 = 100;
    for i in 0..n {
        if started.elapsed() > time_limit {
            cut = true;
            break;
        }
        let entity = format!("naive:{}", i % ENTITIES);
        let ev = events::event("naive", i, &entity, size);
        let body = ev.webhook_body((i / ENTITIES + 1) as i64);
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO outbox(event_id, type, entity, payload, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![ev.event_id, ev.event_type, ev.entity, ev.payload, now_ms()],
        )?;
        let id = tx.last_insert_rowid();
        let ts = now_ms() / 1000;
        let sig = store_outbox::signing::sign(key, &ev.event_id, ts, body.as_bytes());
        let ok = client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &ev.event_id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig)
            .body(body)
            .send()
            .map(|r| r.status().is_success())
            .unwrap_or(false);
        if ok {
            tx.execute("UPDATE outbox SET sent_at = ?2 WHERE id = ?1", params![id, now_ms()])?;
            tx.commit()?;
            done += 1;
        } else {
            failed += 1;
            tx.commit()?;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(Naive {
        events: done,
        failed,
        elapsed_s: elapsed,
        rate: done as f64 / elapsed.max(1e-9),
        cut_short: cut,
    })
}
