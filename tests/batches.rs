//! Batches (`batch = { max_events, max_bytes, linger }`), end to end with
//! the real binary through the WAN link: a JSON array per request, per-entity
//! order kept, nothing lost, signatures verified by the official library, a
//! failed batch retried whole with the same id and events, every attempt
//! recorded for every event, parking and resend, thin payloads, `receive`.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::wan::Link;
use common::*;

/// A batch key that forms batches fast and small enough to see several.
const BATCH: &str = "batch = { max_events = 50, max_bytes = \"64KiB\", linger = \"20ms\" }";

/// Every event of every request answered 2xx, in the order received: a
/// batch's events as if they had come one by one (for `assert_entity_order`).
fn delivered_events(rx: &Receiver) -> Vec<Request> {
    rx.delivered().iter().flat_map(events_of).collect()
}

/// How many different event ids `events` holds.
fn distinct_ids(events: &[Request]) -> usize {
    events.iter().map(|e| e.id.clone()).collect::<HashSet<_>>().len()
}

/// The events of one request: the array's elements, or the single event.
fn events_of(r: &Request) -> Vec<Request> {
    let elements = match &r.json {
        serde_json::Value::Array(events) => events.clone(),
        single => vec![single.clone()],
    };
    elements
        .into_iter()
        .map(|e| Request {
            id: e["id"].as_str().unwrap_or_default().to_string(),
            entity: e["entity"].as_str().unwrap_or_default().to_string(),
            entity_seq: e["entity_seq"].as_i64().unwrap_or(-1),
            event_type: e["type"].as_str().unwrap_or_default().to_string(),
            json: e,
            ..r.clone()
        })
        .collect()
}

/// The event ids of a request, in order.
fn ids_of(r: &Request) -> Vec<String> {
    events_of(r).into_iter().map(|e| e.id).collect()
}

#[test]
fn batches_through_the_uplink_keep_entity_order_lose_nothing_and_verify_with_the_official_library() {
    let rx = Receiver::start();
    let wan = rx.behind(Link::STORE_UPLINK);
    let mut agent = Agent::new(&subscription("erp", &rx.url_via(&wan), BATCH));
    agent.start();
    let events = Events::new("b", 0..600, "SaleCreated")
        .spread_over("till", 30)
        .payload(|i| serde_json::json!({"total": i, "sku": format!("400638{i:07}")}));
    agent.send_events(&events);
    wait_until(Duration::from_secs(120), "600 delivered in batches", || {
        distinct_ids(&delivered_events(&rx)) == 600
    });
    let all = delivered_events(&rx);
    assert_eq!(assert_entity_order(&all), 0, "in order per entity, no duplicates");
    let requests = rx.delivered();
    assert!(
        requests.len() <= 120,
        "batched: {} requests for 600 events",
        requests.len()
    );
    assert!(
        requests.iter().any(|r| ids_of(r).len() > 1),
        "some requests carry several events"
    );
    for r in &requests {
        let id = &r.headers["webhook-id"];
        assert!(r.json.is_array(), "a batch body is a JSON array");
        assert_eq!(r.headers["content-type"], "application/json");
        assert!(id.starts_with("batch~"), "{id}");
        assert!(!ids_of(r).contains(id), "the batch id is none of its events' ids");
        assert!(ids_of(r).len() <= 50, "max_events");
        assert!(r.body.len() <= 64 * 1024, "max_bytes: {}", r.body.len());
        // Within a batch an entity's events are consecutive and ascending.
        let mut last: HashMap<String, i64> = HashMap::new();
        for e in events_of(r) {
            if let Some(prev) = last.insert(e.entity.clone(), e.entity_seq) {
                assert_eq!(e.entity_seq, prev + 1, "consecutive within the batch: {}", e.entity);
            }
        }
    }
    let verified = verify_with_python(Verifier::Batches, &requests, agent.dir.path(), &[SECRET]);
    assert_eq!(verified, format!("verified {} requests, 600 events", requests.len()));
    assert_eq!(agent.sub_status("erp")["delivered_total"], 600);
}

#[test]
fn a_failed_batch_is_retried_whole_with_the_same_id_and_events_and_every_attempt_is_recorded() {
    let rx = Receiver::start();
    let failures = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = failures.clone();
    rx.answer_with(move |_| {
        if counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 6 {
            Answer::status(500)
        } else {
            Answer::ok()
        }
    });
    let wan = rx.behind(Link::STORE_UPLINK);
    let mut agent = Agent::new(&subscription(
        "erp",
        &rx.url_via(&wan),
        &format!("{BATCH}\nmax_in_flight = 2\nretry = {{ initial = \"100ms\", max = \"300ms\" }}"),
    ));
    agent.start();
    agent.send_events(&Events::new("r", 0..40, "SaleCreated").spread_over("order", 4));
    wait_until(Duration::from_secs(60), "40 delivered after the failures", || {
        distinct_ids(&delivered_events(&rx)) == 40
    });
    let requests = rx.requests();
    assert!(requests.iter().filter(|r| r.answered == 500).count() >= 6);
    // Every batch id always carries the same events in the same order, and
    // (no restart, no resend) every event went in one batch only.
    let mut composition: HashMap<String, Vec<String>> = HashMap::new();
    let mut batches_of: HashMap<String, HashSet<String>> = HashMap::new();
    let mut sent: HashMap<String, usize> = HashMap::new();
    for r in &requests {
        let id = r.headers["webhook-id"].clone();
        let ids = ids_of(r);
        let first = composition.entry(id.clone()).or_insert_with(|| ids.clone());
        assert_eq!(first, &ids, "batch {id} retried with the same events in the same order");
        for e in ids {
            batches_of.entry(e.clone()).or_default().insert(id.clone());
            *sent.entry(e).or_default() += 1;
        }
    }
    assert!(batches_of.values().all(|b| b.len() == 1), "{batches_of:?}");
    assert!(composition.len() < requests.len(), "some batch was sent more than once");
    assert_eq!(assert_entity_order(&delivered_events(&rx)), 0);
    // `show` lists every attempt of every event, batch or not.
    for (event, times) in &sent {
        let out = agent.cli(&["show", event, "--json"]);
        assert!(out.status.success(), "show {event}");
        let detail: serde_json::Value = serde_json::from_slice(&out.stdout).expect("show JSON");
        let attempts = detail["deliveries"][0]["attempts"].as_array().expect("attempts").len();
        assert_eq!(attempts, *times, "{event}: one attempt per request it went in");
    }
}

#[test]
fn an_entity_with_a_backlog_fills_batch_after_batch_without_waiting_linger() {
    // A till's backlog after an outage: one entity, 200 events, batches of
    // 20. Only a batch that is not full waits `linger` (5 s here): the first
    // (one entity ready) does; once the entity is known to have more events
    // than a batch holds, the next batches go one after the other.
    let rx = Receiver::start();
    let mut agent = Agent::new(&subscription(
        "erp",
        &rx.url(),
        "batch = { max_events = 20, linger = \"5s\" }\nmax_in_flight = 1",
    ));
    agent.start();
    let accepted = agent.send_events(&Events::new("t", 0..200, "PosLog").entity("till:1"));
    assert!(accepted.iter().all(|a| a["ok"] == true), "all accepted");
    // Stop before the first batch's linger ends, so all 200 wait together.
    agent.stop();
    let before = rx.requests().len();
    agent.start();
    wait_until(Duration::from_secs(60), "200 delivered", || {
        distinct_ids(&delivered_events(&rx)) == 200
    });
    let requests: Vec<Request> = rx.requests().into_iter().skip(before).collect();
    assert_eq!(assert_entity_order(&delivered_events(&rx)), 0);
    assert!(requests.iter().all(|r| ids_of(r).len() <= 20), "max_events");
    assert!(requests.len() >= 10, "{} requests", requests.len());
    let (first, last) = (requests[0].at, requests[requests.len() - 1].at);
    assert!(
        last.duration_since(first) < Duration::from_secs(5),
        "{} batches took {:?} after the first: some waited linger though full",
        requests.len() - 1,
        last.duration_since(first)
    );
}

#[test]
fn a_batch_that_fails_past_give_up_after_parks_whole_and_resend_delivers_it_in_order() {
    let rx = Receiver::start();
    rx.answer_with(|_| Answer::status(422));
    let mut agent = Agent::new(&subscription(
        "erp",
        &rx.url(),
        &format!("{BATCH}\n{PARK_FAST}\nmax_in_flight = 1\npayload = \"thin\""),
    ));
    agent.start();
    agent.send_events(&Events::new("p", 0..12, "SaleCreated").spread_over("till", 3));
    wait_until(Duration::from_secs(30), "every event parked", || {
        agent.sub_status("erp")["parked"] == 12
    });
    rx.answer_with(|_| Answer::ok());
    let out = agent.cli(&["resend", "--parked"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_until(Duration::from_secs(30), "12 delivered after the resend", || {
        delivered_events(&rx).len() >= 12
    });
    let all = delivered_events(&rx);
    assert_eq!(assert_entity_order(&all), 0);
    assert_eq!(distinct_ids(&all), 12);
    for e in &all {
        assert!(e.json.get("data").is_none(), "thin: no data in {}", e.json);
        assert_eq!(e.json["attributes"]["terminal"], "03");
    }
    assert_eq!(agent.sub_status("erp")["parked"], 0);
}

/// The rows of `held_batches` (batches stored as waiting for their retry).
fn held_rows(agent: &Agent) -> i64 {
    agent
        .open_db()
        .query_row("SELECT count(*) FROM held_batches", [], |r| r.get(0))
        .expect("held_batches")
}

#[test]
fn a_failed_batch_goes_again_whole_with_its_id_after_a_sigkill() {
    // A power cut during an outage: the batch that failed before it goes
    // again first after the restart, with the same id and the same events,
    // although its entities have more events by then (a batch formed again
    // would take them too, and get another id).
    let rx = Receiver::start();
    rx.answer_with(|_| Answer::status(500));
    let mut agent = Agent::new(&subscription(
        "erp",
        &rx.url(),
        "batch = { max_events = 50, linger = \"200ms\" }\nmax_in_flight = 1\nretry = { initial = \"10m\", max = \"10m\" }",
    ));
    agent.start();
    agent.send_events(&Events::new("h", 0..12, "SaleCreated").spread_over("order", 3));
    wait_until(Duration::from_secs(30), "a batch failed", || !rx.requests().is_empty());
    let failed = rx.requests()[0].clone();
    let failed_ids = ids_of(&failed);
    assert_eq!(failed.answered, 500);
    wait_until(Duration::from_secs(10), "the failed batch stored as held", || {
        held_rows(&agent) >= 1
    });
    // Later events of the same entities wait behind the held batch.
    agent.send_events(&Events::new("h", 12..18, "SaleCreated").spread_over("order", 3));
    agent.kill9();
    rx.answer_with(|_| Answer::ok());
    let before = rx.requests().len();
    agent.start();
    wait_until(Duration::from_secs(60), "18 delivered after the restart", || {
        delivered_events(&rx).len() >= 18
    });
    let after: Vec<Request> = rx.requests().into_iter().skip(before).collect();
    assert_eq!(
        after[0].headers["webhook-id"], failed.headers["webhook-id"],
        "the first request after the restart is the failed batch, by its id"
    );
    assert_eq!(ids_of(&after[0]), failed_ids, "with the same events in the same order");
    let delivered = delivered_events(&rx);
    assert_eq!(assert_entity_order(&delivered), 0, "in order per entity, nothing twice");
    assert_eq!(distinct_ids(&delivered), 18);
    wait_until(Duration::from_secs(10), "no batch held any more", || {
        held_rows(&agent) == 0
    });
}

#[test]
fn a_held_batch_behind_a_resend_made_while_stopped_gives_way_and_order_holds() {
    // Event 2 of the till is delivered, then a batch of its events 4-6
    // fails and is held; with the agent stopped, an operator resends
    // event 2. After the restart the held batch would go before it: it is
    // dropped instead, and event 2 goes first.
    let rx = Receiver::start();
    let mut agent = Agent::new(&subscription(
        "erp",
        &rx.url(),
        "batch = { max_events = 50, linger = \"200ms\" }\nmax_in_flight = 1\nretry = { initial = \"10m\", max = \"10m\" }",
    ));
    agent.start();
    agent.send_events(&Events::new("w", 0..3, "PosLog").entity("till:9"));
    wait_until(Duration::from_secs(30), "3 delivered", || {
        delivered_events(&rx).len() == 3
    });
    rx.answer_with(|_| Answer::status(500));
    agent.send_events(&Events::new("w", 3..6, "PosLog").entity("till:9"));
    wait_until(Duration::from_secs(30), "the second batch failed", || {
        rx.requests().iter().any(|r| r.answered == 500)
    });
    wait_until(Duration::from_secs(10), "stored as held", || held_rows(&agent) == 1);
    agent.stop();
    let resent = delivered_events(&rx)[1].id.clone();
    let out = agent.cli(&["resend", &resent]);
    assert!(out.status.success(), "{}", stderr(&out));
    rx.answer_with(|_| Answer::ok());
    let before = rx.delivered().len();
    agent.start();
    wait_until(
        Duration::from_secs(60),
        "the resent event and the held ones delivered",
        || rx.delivered().iter().skip(before).flat_map(events_of).count() >= 4,
    );
    let after: Vec<Request> = rx
        .delivered()
        .into_iter()
        .skip(before)
        .flat_map(|r| events_of(&r))
        .collect();
    assert_eq!(after[0].id, resent, "the resent event goes first");
    let seqs: Vec<i64> = after.iter().map(|e| e.entity_seq).collect();
    assert_eq!(seqs, vec![2, 4, 5, 6], "then the rest, in order");
    wait_until(Duration::from_secs(10), "the stale held batch deleted", || {
        held_rows(&agent) == 0
    });
}

#[test]
fn batches_survive_sigkill_mid_drain_with_nothing_lost() {
    let rx = Receiver::start();
    rx.answer_with(|_| Answer::ok().after(Duration::from_millis(30)));
    let mut agent = Agent::new(&subscription("erp", &rx.url(), BATCH));
    agent.start();
    agent.send_events(&Events::new("k", 0..2000, "SaleCreated").spread_over("till", 40));
    wait_until(Duration::from_secs(30), "some delivered", || !rx.delivered().is_empty());
    agent.kill9();
    agent.start();
    wait_until(Duration::from_secs(120), "2000 delivered across the kill", || {
        distinct_ids(&delivered_events(&rx)) == 2000
    });
    // After a crash an entity's last batch may come again; a new event
    // never comes before an older one.
    let duplicates = assert_new_events_in_order(&delivered_events(&rx));
    assert!(
        duplicates <= 50 * 16,
        "at most the batches on the wire again: {duplicates}"
    );
}

/// Per entity, every event not seen before is the next one (`entity_seq`
/// one more than the highest seen); an event seen before (sent again after
/// a crash, in its batch) is a duplicate. Returns the duplicates.
fn assert_new_events_in_order(events: &[Request]) -> usize {
    let mut seen = HashSet::new();
    let mut highest: HashMap<&str, i64> = HashMap::new();
    let mut duplicates = 0;
    for e in events {
        if !seen.insert(e.id.as_str()) {
            duplicates += 1;
            continue;
        }
        let top = highest.entry(e.entity.as_str()).or_insert(0);
        assert_eq!(
            e.entity_seq,
            *top + 1,
            "{} ({}) after #{top} of {}",
            e.entity_seq,
            e.id,
            e.entity
        );
        *top = e.entity_seq;
    }
    duplicates
}

#[test]
fn the_receive_command_checks_batches_event_by_event() {
    let receive = Receive::start(&["--secret", SECRET, "--json"]);
    let mut agent = Agent::new(&subscription("erp", &receive.url(), BATCH));
    agent.start();
    agent.send_events(&Events::new("rc", 0..30, "SaleCreated").spread_over("till", 3));
    wait_until(Duration::from_secs(30), "delivered", || {
        agent.sub_status("erp")["delivered_total"] == 30
    });
    agent.stop();
    let events = receive.stop_json();
    assert_eq!(events.len(), 30);
    for e in &events {
        assert_eq!(e["signature_valid"], true);
        assert_eq!(e["order"], "in_order", "{e}");
        assert!(e["batch"].as_str().is_some_and(|b| b.starts_with("batch~")), "{e}");
    }
}

/// The body as the receiver has it after undoing `content-encoding: gzip`.
fn gunzip(r: &Request) -> Vec<u8> {
    use std::io::Read;
    assert_eq!(r.headers.get("content-encoding").map(String::as_str), Some("gzip"));
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&r.body[..])
        .read_to_end(&mut plain)
        .expect("a gzip body");
    plain
}

#[test]
fn gzip_batches_are_signed_over_the_uncompressed_body_and_verify_with_the_official_library() {
    let rx = Receiver::start();
    let wan = rx.behind(Link::STORE_UPLINK);
    let mut agent = Agent::new(&subscription(
        "erp",
        &rx.url_via(&wan),
        &format!("{BATCH}\ncompression = \"gzip\""),
    ));
    agent.start();
    let events = Events::new("z", 0..300, "SaleCreated")
        .spread_over("till", 12)
        .payload(|i| serde_json::json!({"lines": [{"sku": format!("400638{:07}", i * 7919 % 100_000), "qty": i % 3 + 1, "price": (i * 37 % 5000) as f64 / 100.0}]}));
    agent.send_events(&events);
    wait_until(Duration::from_secs(120), "300 delivered", || {
        agent.sub_status("erp")["delivered_total"] == 300
    });
    let requests = rx.delivered();
    let plain: Vec<Captured> = requests
        .iter()
        .map(|r| Captured {
            headers: r.headers.clone(),
            body: String::from_utf8(gunzip(r)).expect("utf-8"),
        })
        .collect();
    let compressed: usize = requests.iter().map(|r| r.body.len()).sum();
    let uncompressed: usize = plain.iter().map(|c| c.body.len()).sum();
    assert!(
        compressed * 2 < uncompressed,
        "gzip pays: {compressed} of {uncompressed} bytes"
    );
    let events: Vec<Request> = requests
        .iter()
        .zip(&plain)
        .flat_map(|(r, c)| {
            events_of(&Request {
                json: serde_json::from_str(&c.body).expect("JSON after gunzip"),
                ..r.clone()
            })
        })
        .collect();
    assert_eq!(events.len(), 300);
    assert_eq!(assert_entity_order(&events), 0);
    assert_eq!(
        verify_with_python(Verifier::Batches, &plain, agent.dir.path(), &[SECRET]),
        format!("verified {} requests, 300 events", requests.len())
    );
}

#[test]
fn the_receive_command_undoes_gzip_before_checking_signatures() {
    let receive = Receive::start(&["--secret", SECRET, "--json"]);
    // One event per request, gzip: compression does not need batches.
    let mut agent = Agent::new(&subscription("erp", &receive.url(), "compression = \"gzip\""));
    agent.start();
    agent.send_events(&Events::new("gz", 0..10, "SaleCreated").spread_over("till", 2));
    wait_until(Duration::from_secs(30), "delivered", || {
        agent.sub_status("erp")["delivered_total"] == 10
    });
    agent.stop();
    let events = receive.stop_json();
    assert_eq!(events.len(), 10);
    assert!(events
        .iter()
        .all(|e| e["signature_valid"] == true && e["order"] == "in_order"));
}

#[test]
fn a_failing_batch_keeps_its_id_and_events_through_resends_of_other_entities_and_of_nothing() {
    // A batch of till:1 fails again and again. Meanwhile an operator
    // resends an event that is not in the outbox (queues nothing) and a
    // delivered event of another entity. Neither reopens anything of
    // till:1, so its batch keeps going whole: same webhook-id, same events.
    let rx = Receiver::start();
    let mut agent = Agent::new(&subscription(
        "erp",
        &rx.url(),
        "batch = { max_events = 50, linger = \"100ms\" }\nmax_in_flight = 2\n\
         retry = { initial = \"200ms\", max = \"400ms\" }",
    ));
    agent.start();
    agent.send_events(&Events::new("other", 0..1, "SaleCreated").entity("order:2"));
    wait_until(Duration::from_secs(30), "order:2 delivered", || {
        delivered_events(&rx).len() == 1
    });
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let fail = failing.clone();
    rx.answer_with(move |r| {
        let till = String::from_utf8_lossy(&r.body).contains("till:1");
        if till && fail.load(std::sync::atomic::Ordering::SeqCst) {
            Answer::status(500)
        } else {
            Answer::ok()
        }
    });
    agent.send_events(&Events::new("t", 0..4, "PosLog").entity("till:1"));
    let failed = |rx: &Receiver| rx.requests().iter().filter(|r| r.answered == 500).count();
    wait_until(Duration::from_secs(30), "the till's batch failed twice", || {
        failed(&rx) >= 2
    });

    let out = agent.cli(&["resend", "no-such-event"]);
    assert!(!out.status.success() || String::from_utf8_lossy(&out.stdout).contains('0'));
    let out = agent.cli(&["resend", "other-0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_until(Duration::from_secs(30), "order:2 delivered again", || {
        delivered_events(&rx).iter().filter(|e| e.id == "other-0").count() == 2
    });
    let before = failed(&rx);
    wait_until(Duration::from_secs(30), "two more failures after the resends", || {
        failed(&rx) >= before + 2
    });
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    wait_until(Duration::from_secs(30), "the till's events delivered", || {
        delivered_events(&rx).iter().filter(|e| e.entity == "till:1").count() >= 4
    });

    let till: Vec<Request> = rx
        .requests()
        .into_iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains("till:1"))
        .collect();
    let ids: HashSet<String> = till.iter().map(|r| r.headers["webhook-id"].clone()).collect();
    assert_eq!(ids.len(), 1, "one batch id through every retry: {ids:?}");
    let events: HashSet<Vec<String>> = till.iter().map(ids_of).collect();
    assert_eq!(events.len(), 1, "the same events every time: {events:?}");
    assert!(till.len() >= 5, "{} requests", till.len());
    assert_eq!(till.iter().filter(|r| r.answered == 200).count(), 1);
    // The one duplicate is the resent event of order:2.
    assert_eq!(assert_entity_order(&delivered_events(&rx)), 1);
}
