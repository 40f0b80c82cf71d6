//! Crash safety: the agent is killed with SIGKILL during ingest and during
//! delivery, restarted, and every acknowledged event still arrives in order.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// Sends one chunk over a fresh connection; returns the ids acknowledged, or
/// `None` if the connection broke before every reply came.
fn send_chunk(socket: &PathBuf, lines: &[(String, String)]) -> Option<Vec<String>> {
    let stream = UnixStream::connect(socket).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    let mut writer = stream.try_clone().ok()?;
    for (_, l) in lines {
        writer.write_all(l.as_bytes()).ok()?;
        writer.write_all(b"\n").ok()?;
    }
    let mut reader = BufReader::new(stream);
    let mut acked = Vec::new();
    for (id, _) in lines {
        let mut reply = String::new();
        if reader.read_line(&mut reply).ok()? == 0 {
            return if acked.is_empty() { None } else { Some(acked) };
        }
        let v: serde_json::Value = serde_json::from_str(&reply).ok()?;
        if v["ok"] == true {
            assert_eq!(v["event_id"], id.as_str());
            acked.push(id.clone());
        }
    }
    Some(acked)
}

/// Checks the database is whole: integrity, and per entity the stored
/// `entity_seq` run 1..=last with a delivery row each (nothing half-stored).
fn assert_database_consistent(agent: &Agent) {
    let db = agent.open_db();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(check, "ok");
    let bad: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM entities n WHERE n.last_seq <> (SELECT COUNT(*) FROM events e WHERE e.entity_id = n.id)
               OR n.last_seq <> (SELECT MAX(entity_seq) FROM events e WHERE e.entity_id = n.id)",
            [],
            |r| r.get(0),
        )
        .expect("query");
    assert_eq!(bad, 0, "entity sequences have no holes");
    let orphans: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM events e WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq)",
            [],
            |r| r.get(0),
        )
        .expect("query");
    assert_eq!(orphans, 0, "every stored event has its delivery row");
}

#[test]
fn acked_events_survive_sigkill_during_ingest() {
    let rx = Receiver::start();
    let mut agent = Agent::new(&subscription(
        "erp",
        &rx.url(),
        "retry = { initial = \"100ms\", max = \"500ms\" }",
    ));
    agent.start();
    let acked: Arc<Mutex<HashSet<String>>> = Arc::new(Mutex::new(HashSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (socket, acked, stop) = (agent.socket(), acked.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut chunk_no = 0;
            while !stop.load(Ordering::Relaxed) {
                let chunk: Vec<(String, String)> = (0..50)
                    .map(|i| {
                        let id = format!("k{chunk_no}-{i}");
                        let line = event(
                            &id,
                            &format!("till:{}", i % 8),
                            "SaleCreated",
                            serde_json::json!({"chunk": chunk_no, "i": i}),
                        );
                        (id, line)
                    })
                    .collect();
                // A POS resends what was not acknowledged before going on.
                loop {
                    match send_chunk(&socket, &chunk) {
                        Some(ids) if ids.len() == chunk.len() => {
                            acked.lock().unwrap().extend(ids);
                            break;
                        }
                        Some(ids) => acked.lock().unwrap().extend(ids),
                        None => {}
                    }
                    std::thread::sleep(Duration::from_millis(30));
                }
                chunk_no += 1;
            }
            chunk_no
        })
    };
    for round in 0..5u64 {
        std::thread::sleep(Duration::from_millis(150 + round * 70));
        agent.kill9();
        agent.start();
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let chunks = producer.join().expect("producer");
    let acked = acked.lock().unwrap().clone();
    assert_eq!(
        acked.len(),
        chunks * 50,
        "the producer got every event acknowledged in the end"
    );
    wait_until(Duration::from_secs(120), "every acknowledged event delivered", || {
        acked.is_subset(&rx.delivered_ids())
    });
    assert_entity_order(&rx.delivered());
    assert_database_consistent(&agent);
    let status = agent.status();
    assert_eq!(
        status["ingest"]["accepted_total"],
        acked.len() as i64,
        "stored once each: {status}"
    );
}

#[test]
fn acked_events_survive_sigkill_during_delivery() {
    let rx = Receiver::start();
    rx.answer_with(|_| Answer::ok().after(Duration::from_millis(15)));
    let mut agent = Agent::new(&subscription(
        "erp",
        &rx.url(),
        "max_in_flight = 4\nretry = { initial = \"100ms\", max = \"500ms\" }",
    ));
    agent.start();
    agent.send_events(&Events::new("d", 0..400, "CustomerOrderUpdated").spread_over("order", 10));
    let mut kills = 0;
    while rx.delivered_ids().len() < 400 && kills < 4 {
        std::thread::sleep(Duration::from_millis(400));
        agent.kill9();
        kills += 1;
        agent.start();
    }
    wait_until(Duration::from_secs(120), "all 400 delivered", || {
        rx.delivered_ids().len() == 400
    });
    let delivered = rx.delivered();
    let duplicates = assert_entity_order(&delivered);
    // Per entity the receiver saw 1..=40 (a repeat of the last one is allowed).
    let mut seen: HashMap<String, Vec<i64>> = HashMap::new();
    for r in &delivered {
        seen.entry(r.entity.clone()).or_default().push(r.entity_seq);
    }
    for (entity, mut seqs) in seen {
        seqs.dedup();
        assert_eq!(seqs, (1..=40).collect::<Vec<_>>(), "{entity}");
    }
    assert!(
        duplicates <= kills * 4,
        "at most the requests in flight at each kill are repeated: {duplicates}"
    );
    assert_database_consistent(&agent);
}
