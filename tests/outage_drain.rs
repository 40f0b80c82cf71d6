//! Outage and drain at size: the receiver is unreachable (port closed) while
//! a large backlog arrives on the socket (pipelined, in batches, many
//! entities); then it comes back and the agent must drain everything, in
//! order per entity, with the right contents.
//!
//! Default size, also in CI: 100,000 events over 5,000 entities (about 100 s
//! in a debug build on 2 cores). `STORE_OUTBOX_DRAIN_EVENTS=N` changes it
//! (smaller for a quick local run, larger for a soak); entities are always
//! N / 20. No timing assertions: the drain time is printed, the timeouts are
//! generous.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;

/// Events per entity.
const PER_ENTITY: usize = 20;
/// Lines per pipelined batch on one socket connection.
const BATCH: usize = 2_000;
/// Size unless `STORE_OUTBOX_DRAIN_EVENTS` says otherwise.
const DEFAULT_EVENTS: usize = 100_000;

fn size() -> usize {
    match std::env::var("STORE_OUTBOX_DRAIN_EVENTS") {
        Ok(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= PER_ENTITY)
            .unwrap_or_else(|| panic!("STORE_OUTBOX_DRAIN_EVENTS={v:?}: a number of events, at least {PER_ENTITY}")),
        Err(_) => DEFAULT_EVENTS,
    }
}

fn sub_of<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["subscriptions"]
        .as_array()
        .expect("subscriptions")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("subscription {name} in {status}"))
}

#[test]
fn a_large_backlog_drains_completely_and_in_order_after_an_outage() {
    let events = size();
    let entities = events / PER_ENTITY;
    let mut rx = Receiver::start();
    rx.shut();
    let sub = subscription(
        "erp",
        &rx.url(),
        "timeout = \"10s\"\nretry = { initial = \"200ms\", max = \"1s\" }",
    );
    let mut agent = Agent::new(&sub);
    agent.start();

    // Ingest while the endpoint is unreachable. Event i goes to entity
    // i % entities, so every entity's events are spread over the whole run.
    let started = Instant::now();
    let mut acked: HashMap<String, (String, i64)> = HashMap::with_capacity(events);
    let mut duplicates_acked = 0;
    for chunk_start in (0..events).step_by(BATCH) {
        let lines: Vec<String> = (chunk_start..(chunk_start + BATCH).min(events))
            .map(|i| {
                event(
                    &format!("d-{i}"),
                    &format!("order:{}", i % entities),
                    "CustomerOrderUpdated",
                    serde_json::json!({"n": i, "line": "x".repeat(40)}),
                )
            })
            .collect();
        for (offset, reply) in send_lines(&agent.socket(), &lines).into_iter().enumerate() {
            let i = chunk_start + offset;
            assert_eq!(reply["ok"], true, "event {i}: {reply}");
            if reply["duplicate"] == true {
                duplicates_acked += 1;
            }
            let seq = reply["entity_seq"].as_i64().expect("entity_seq");
            assert_eq!(seq as usize, i / entities + 1, "entity_seq of event {i}");
            acked.insert(format!("d-{i}"), (format!("order:{}", i % entities), seq));
        }
    }
    let ingest_time = started.elapsed();
    assert_eq!(acked.len(), events);
    assert_eq!(duplicates_acked, 0);

    // Nothing went out, everything waits, the subscription is offline.
    std::thread::sleep(Duration::from_millis(500));
    let status = agent.status();
    let erp = sub_of(&status, "erp");
    assert_eq!(erp["pending"], events as u64, "{erp}");
    assert_eq!(erp["delivered_total"], 0, "{erp}");
    assert_eq!(erp["state"], "offline", "{erp}");
    assert_eq!(status["ingest"]["accepted_total"], events as u64, "{status}");
    assert_eq!(rx.request_count(), 0);

    // The endpoint comes back: the next probe succeeds and the backlog drains.
    rx.restart();
    let back = Instant::now();
    // Generous: about 30 events/s at the very least, and never under 10 min.
    let timeout = Duration::from_secs((events as u64 / 30).max(600));
    let mut last_report = Instant::now();
    loop {
        let n = rx.delivered_count();
        if n >= events {
            break;
        }
        assert!(
            back.elapsed() < timeout,
            "drain stalled: {n} of {events} delivered after {:?}\n{}",
            back.elapsed(),
            agent.log()
        );
        if last_report.elapsed() > Duration::from_secs(15) {
            println!("outage drain: {n} of {events} delivered after {:?}", back.elapsed());
            last_report = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let drain_time = back.elapsed();

    // Every acknowledged event arrived, with its entity, entity_seq and payload;
    // nothing arrived that was not sent.
    let delivered = rx.delivered();
    let duplicates = assert_entity_order(&delivered);
    let mut per_entity: HashMap<&str, Vec<i64>> = HashMap::new();
    for r in &delivered {
        let (entity, seq) = acked
            .get(&r.id)
            .unwrap_or_else(|| panic!("the receiver got {} which was never acknowledged", r.id));
        assert_eq!(&r.entity, entity, "{}", r.id);
        assert_eq!(r.entity_seq, *seq, "{}", r.id);
        let n: usize = r.id["d-".len()..].parse().expect("id number");
        assert_eq!(r.json["data"]["n"], n as u64, "payload of {}", r.id);
        let seqs = per_entity.entry(r.entity.as_str()).or_default();
        if seqs.last() != Some(&r.entity_seq) {
            seqs.push(r.entity_seq);
        }
    }
    assert_eq!(per_entity.len(), entities, "every entity delivered");
    for (entity, seqs) in &per_entity {
        let expected: Vec<i64> = (1..=PER_ENTITY as i64).collect();
        assert_eq!(seqs, &expected, "{entity}: every entity_seq once, in order");
    }
    let ids = rx.delivered_ids();
    assert_eq!(ids.len(), events, "every event delivered");

    wait_until(Duration::from_secs(30), "status shows the backlog gone", || {
        let status = agent.status();
        let erp = sub_of(&status, "erp");
        erp["pending"] == 0 && erp["state"] == "online" && erp["delivered_total"] == events as u64
    });
    println!(
        "outage drain: {events} events over {entities} entities acknowledged in {ingest_time:?} \
         ({:.0} ev/s); drained in {drain_time:?} ({:.0} ev/s); {} delivered, {duplicates} duplicates, \
         0 order violations, 0 lost",
        events as f64 / ingest_time.as_secs_f64(),
        events as f64 / drain_time.as_secs_f64(),
        ids.len()
    );
}
