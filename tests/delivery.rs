//! End-to-end delivery promises: the real binary, a real receiver on loopback.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;

const FAST_RETRY: &str = "retry = { initial = \"100ms\", max = \"500ms\" }";

#[test]
fn acked_events_are_delivered_in_order_with_valid_signatures() {
    let rx = Receiver::start();
    let mut agent = Agent::new(&subscription("erp", &rx.url(), FAST_RETRY));
    agent.start();
    // 4 producers pipelining, each owning 5 entities.
    let mut sent: HashMap<String, (String, String, serde_json::Value)> = HashMap::new();
    let threads: Vec<_> = (0..4)
        .map(|p| {
            let lines: Vec<String> = (0..100)
                .map(|i| {
                    let entity = format!("order:{p}-{}", i % 5);
                    let kind = if i % 2 == 0 {
                        "SaleCreated"
                    } else {
                        "CustomerOrderUpdated"
                    };
                    event(
                        &format!("e-{p}-{i}"),
                        &entity,
                        kind,
                        serde_json::json!({"n": i, "p": p}),
                    )
                })
                .collect();
            let socket = agent.socket();
            std::thread::spawn(move || (lines.clone(), send_lines(&socket, &lines)))
        })
        .collect();
    for t in threads {
        let (lines, replies) = t.join().expect("producer");
        for (line, reply) in lines.iter().zip(replies) {
            assert_eq!(reply["ok"], true, "{reply}");
            assert_eq!(reply["duplicate"], false);
            let ev: serde_json::Value = serde_json::from_str(line).expect("json");
            sent.insert(
                ev["event_id"].as_str().expect("id").to_string(),
                (
                    ev["type"].as_str().expect("t").to_string(),
                    ev["entity"].as_str().expect("e").to_string(),
                    ev["payload"].clone(),
                ),
            );
        }
    }
    wait_until(Duration::from_secs(60), "all 400 delivered", || {
        rx.delivered_ids().len() == 400
    });
    let delivered = rx.delivered();
    assert_entity_order(&delivered);
    let key = store_outbox::signing::decode_secret(SECRET).expect("secret");
    let mut per_entity: HashMap<String, Vec<i64>> = HashMap::new();
    for r in &delivered {
        let (event_type, entity, payload) = sent.get(&r.id).expect("only sent events arrive");
        assert_eq!(&r.event_type, event_type);
        assert_eq!(&r.entity, entity);
        assert_eq!(&r.json["data"], payload);
        assert_eq!(
            r.json["source"],
            serde_json::json!({"store_id": "0042", "agent_id": "till-03"})
        );
        assert_eq!(r.json["attributes"], serde_json::json!({"terminal": "03"}));
        assert_eq!(r.headers["webhook-id"], r.id);
        assert_eq!(r.headers["content-type"], "application/json");
        assert!(r.headers["user-agent"].starts_with("store-outbox/"));
        let ts: i64 = r.headers["webhook-timestamp"].parse().expect("timestamp");
        assert!(
            store_outbox::signing::verify(&key, &r.id, ts, &r.body, &r.headers["webhook-signature"]),
            "signature of {}",
            r.id
        );
        per_entity.entry(r.entity.clone()).or_default().push(r.entity_seq);
    }
    // Every entity got 1..=20 exactly, in order.
    assert_eq!(per_entity.len(), 20);
    for (entity, seqs) in per_entity {
        let mut dedup = seqs.clone();
        dedup.dedup();
        assert_eq!(dedup, (1..=20).collect::<Vec<_>>(), "{entity}");
    }
    // The receiver has the last ones before the agent has committed their 2xx.
    wait_until(Duration::from_secs(30), "status: nothing pending", || {
        agent.status()["subscriptions"][0]["pending"] == 0
    });
    let status = agent.status();
    let sub = &status["subscriptions"][0];
    assert_eq!(sub["name"], "erp");
    assert_eq!(sub["state"], "online");
    assert_eq!(sub["pending"], 0);
    assert_eq!(sub["delivered_total"], 400);
    assert_eq!(status["ingest"]["accepted_total"], 400);
    assert!(agent.stop().success());
}

#[test]
fn outage_probes_at_backoff_pace_then_drains_in_order() {
    let rx = Receiver::start();
    rx.answer_with(|_| Answer::status(503));
    let mut agent = Agent::new(&subscription(
        "erp",
        &rx.url(),
        "max_in_flight = 8\nretry = { initial = \"200ms\", max = \"400ms\" }",
    ));
    agent.start();
    agent.send_events(&Events::new("o", 0..300, "SaleCreated").spread_over("till", 30));
    let outage = Duration::from_secs(3);
    std::thread::sleep(outage);
    let during = rx.requests().len();
    // One burst of at most max_in_flight before the failure is noticed, then
    // one probe per backoff period (>= 200ms): far fewer than 300 events.
    assert!(during >= 2, "probed at least twice, got {during}");
    assert!(
        during <= 8 + 3000 / 200 + 2,
        "probing, not hammering: {during} requests in {outage:?}"
    );
    let status = agent.status();
    assert_eq!(status["subscriptions"][0]["state"], "offline", "{status}");
    assert_eq!(status["subscriptions"][0]["pending"], 300);
    assert!(status["subscriptions"][0]["last_error"]
        .as_str()
        .unwrap_or("")
        .contains("503"));

    rx.answer_with(|_| Answer::ok());
    wait_until(Duration::from_secs(60), "backlog drained", || {
        rx.delivered_ids().len() == 300
    });
    assert_entity_order(&rx.delivered());
    wait_until(Duration::from_secs(10), "status online", || {
        agent.status()["subscriptions"][0]["state"] == "online"
    });
}

#[test]
fn status_and_show_say_when_the_next_attempt_is_planned() {
    let rx = Receiver::start();
    rx.answer_with(|_| Answer::status(503));
    let mut agent = Agent::new(&subscription(
        "erp",
        &rx.url(),
        "retry = { initial = \"60s\", max = \"120s\" }",
    ));
    agent.start();
    agent.send_events(&Events::new("n", 0..1, "SaleCreated"));
    // The scheduler writes its plan on its 2-second tick.
    wait_until(Duration::from_secs(20), "the next probe in status", || {
        agent.sub_status("erp")["next_attempt_at"].is_string()
    });
    let sub = agent.sub_status("erp");
    assert_eq!(sub["state"], "offline", "{sub}");
    let in_s = sub["next_attempt_in_s"].as_i64().unwrap_or(-1);
    // A 503 without Retry-After: the backoff, at least `initial`, at most `max`.
    assert!((1..=120).contains(&in_s), "{sub}");
    let table = String::from_utf8_lossy(&agent.cli(&["status"]).stdout).into_owned();
    assert!(table.contains("NEXT TRY") && table.contains(" in "), "{table}");

    let out = agent.cli(&["show", "n-0"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("erp: pending (1 attempts), next attempt in "), "{text}");
    let json: serde_json::Value = serde_json::from_slice(&agent.cli(&["show", "n-0", "--json"]).stdout).expect("JSON");
    let delivery = &json["deliveries"][0];
    assert!(delivery["next_attempt_at"].is_string(), "{json}");
    assert!(
        (1..=120).contains(&delivery["next_attempt_in_s"].as_i64().unwrap_or(-1)),
        "{json}"
    );

    rx.answer_with(|_| Answer::ok());
    drop(agent);
}

#[test]
fn closed_port_then_back_drains_everything() {
    let mut rx = Receiver::start();
    rx.shut();
    let mut agent = Agent::new(&subscription("erp", &rx.url(), FAST_RETRY));
    agent.start();
    agent.send_events(
        &Events::new("c", 0..200, "StockMovementCreated")
            .spread_over("sku", 10)
            .payload(|_| serde_json::json!({"d": -1})),
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(agent.status()["subscriptions"][0]["state"], "offline");
    rx.restart();
    wait_until(Duration::from_secs(60), "backlog drained", || {
        rx.delivered_ids().len() == 200
    });
    assert_entity_order(&rx.delivered());
}

#[test]
fn retry_after_on_429_is_honoured() {
    let rx = Receiver::start();
    rx.answer_first(Answer::status(429).header("retry-after", "2"));
    // retry.max above the Retry-After, which is clamped to it.
    let mut agent = Agent::new(&subscription(
        "erp",
        &rx.url(),
        "retry = { initial = \"100ms\", max = \"5s\" }",
    ));
    agent.start();
    send_lines(
        &agent.socket(),
        &[event("r-1", "order:1", "SaleCreated", serde_json::json!({}))],
    );
    wait_until(Duration::from_secs(30), "delivered after 429", || {
        rx.delivered_ids().len() == 1
    });
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 2, "one 429 then one 200");
    assert_eq!(reqs[0].answered, 429);
    let gap = reqs[1].at - reqs[0].at;
    assert!(
        gap >= Duration::from_millis(1900),
        "Retry-After: 2 honoured (retry.initial is 100ms), waited {gap:?}"
    );
}

#[test]
fn server_errors_are_retried_and_every_attempt_recorded() {
    let rx = Receiver::start();
    let mut failures_left = 3;
    rx.answer_with(move |r| {
        if r.entity == "order:bad" && failures_left > 0 {
            failures_left -= 1;
            Answer::status(500)
        } else {
            Answer::ok()
        }
    });
    let mut agent = Agent::new(&subscription("erp", &rx.url(), FAST_RETRY));
    agent.start();
    agent.send_events(&Events::new("b", 1..=3, "CustomerOrderUpdated").entity("order:bad"));
    agent.send_events(&Events::new("g", 1..=3, "CustomerOrderUpdated").entity("order:good"));
    wait_until(Duration::from_secs(30), "all 6 delivered", || {
        rx.delivered_ids().len() == 6
    });
    assert_entity_order(&rx.delivered());
    let bad: Vec<i64> = rx
        .requests()
        .iter()
        .filter(|r| r.entity == "order:bad")
        .map(|r| r.entity_seq)
        .collect();
    assert_eq!(bad, vec![1, 1, 1, 1, 2, 3], "event 2 waited for event 1's success");
    let db = agent.open_db();
    let attempts: Vec<(Option<i64>, Option<String>)> = db
        .prepare("SELECT a.status, a.error FROM attempts a JOIN events e ON e.seq = a.event_seq WHERE e.event_id = 'b-1' ORDER BY a.id")
        .expect("query")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("attempts");
    assert_eq!(attempts.len(), 4);
    assert_eq!(attempts[0].0, Some(500));
    assert!(attempts[0].1.as_deref().unwrap_or("").contains("500"));
    assert_eq!(attempts[3], (Some(200), None));
}

#[test]
fn a_timeout_is_a_failure_and_is_retried() {
    let rx = Receiver::start();
    rx.answer_first(Answer::ok().after(Duration::from_secs(3)));
    let mut agent = Agent::new(&subscription(
        "erp",
        &rx.url(),
        &format!("timeout = \"500ms\"\n{FAST_RETRY}"),
    ));
    agent.start();
    let started = Instant::now();
    send_lines(
        &agent.socket(),
        &[event("t-1", "order:1", "SaleCreated", serde_json::json!({}))],
    );
    let attempts = || -> Vec<Option<String>> {
        let db = agent.open_db();
        let mut stmt = db.prepare("SELECT error FROM attempts ORDER BY id").expect("query");
        let rows = stmt.query_map([], |r| r.get(0)).expect("rows");
        rows.collect::<Result<_, _>>().expect("attempts")
    };
    wait_until(
        Duration::from_secs(30),
        "a failed then a successful attempt recorded",
        || attempts().len() == 2,
    );
    let errors = attempts();
    assert!(errors[0].as_deref().unwrap_or("").contains("timeout"), "{errors:?}");
    assert_eq!(errors.last().cloned().flatten(), None, "the retry succeeded");
    assert!(started.elapsed() >= Duration::from_millis(500));
}

#[test]
fn a_parked_event_blocks_only_its_own_entity() {
    let rx = Receiver::start();
    rx.refuse_event("bad-1", 400);
    let mut agent = Agent::new(&subscription(
        "erp",
        &rx.url(),
        "retry = { initial = \"100ms\", max = \"200ms\", give_up_after = \"1s\" }",
    ));
    agent.start();
    let lines = vec![
        event("bad-1", "order:bad", "SaleCreated", serde_json::json!(1)),
        event("bad-2", "order:bad", "SaleCreated", serde_json::json!(2)),
        event("good-1", "order:good", "SaleCreated", serde_json::json!(1)),
        event("good-2", "order:good", "SaleCreated", serde_json::json!(2)),
    ];
    send_lines(&agent.socket(), &lines);
    wait_until(Duration::from_secs(30), "parked", || {
        agent.status()["subscriptions"][0]["parked"] == 1
    });
    std::thread::sleep(Duration::from_millis(500));
    let ids = rx.delivered_ids();
    assert!(ids.contains("good-1") && ids.contains("good-2"), "{ids:?}");
    assert!(!ids.contains("bad-2"), "bad-2 waits behind the parked bad-1");
    assert!(rx.requests().iter().all(|r| r.id != "bad-2"), "bad-2 was never sent");
    let sub = &agent.status()["subscriptions"][0];
    assert_eq!(sub["parked"], 1);
    assert_eq!(sub["pending"], 1);
    assert!(agent.log().contains("parked"), "the log says so");
    // The technician's view: the parked event, and its attempts.
    let out = agent.cli(&["events", "--state", "parked", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let parked: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(parked.as_array().map(Vec::len), Some(1));
    assert_eq!(parked[0]["event_id"], "bad-1");
    assert_eq!(parked[0]["subscription"], "erp");
    assert!(parked[0]["last_error"].as_str().unwrap_or("").contains("400"));
    let out = agent.cli(&["events", "--entity", "order:good", "--state", "delivered"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("good-1") && table.contains("good-2") && !table.contains("bad-"),
        "{table}"
    );
    let out = agent.cli(&["show", "bad-1", "--json"]);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(shown["deliveries"][0]["state"], "parked");
    let attempts = shown["deliveries"][0]["attempts"].as_array().expect("attempts");
    assert!(attempts.len() >= 2 && attempts.iter().all(|a| a["status"] == 400));
    assert_eq!(shown["payload"], 1);
    let missing = agent.cli(&["show", "nope"]);
    assert_eq!(missing.status.code(), Some(1));
}

#[test]
fn thin_payload_event_filter_and_extra_headers() {
    let rx = Receiver::start();
    let extra = "events = [\"SaleCreated\"]\npayload = \"thin\"\nheaders = { \"x-store\" = \"0042\" }";
    let mut agent = Agent::new(&subscription("erp", &rx.url(), extra));
    agent.start();
    let lines = vec![
        event("f-1", "order:1", "SaleCreated", serde_json::json!({"secret": "data"})),
        event("f-2", "order:1", "StockMovementCreated", serde_json::json!({})),
        event("f-3", "order:1", "SaleCreated", serde_json::json!({})),
    ];
    send_lines(&agent.socket(), &lines);
    wait_until(Duration::from_secs(30), "two delivered", || {
        rx.delivered_ids().len() == 2
    });
    std::thread::sleep(Duration::from_millis(300));
    let reqs = rx.delivered();
    assert_eq!(
        reqs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        vec!["f-1", "f-3"]
    );
    assert_eq!(reqs[1].entity_seq, 3, "entity_seq counts every event of the entity");
    for r in &reqs {
        assert!(r.json.get("data").is_none(), "thin: no data");
        assert_eq!(r.headers["x-store"], "0042");
    }
}

#[test]
fn a_subscription_added_later_gets_the_retained_events_oldest_first() {
    let mut agent = Agent::new("");
    agent.start();
    agent.send_events(&Events::new("l", 1..=10, "SaleCreated"));
    let status = agent.status();
    assert_eq!(status["subscriptions"].as_array().map(Vec::len), Some(0));
    assert!(agent.stop().success());

    let rx = Receiver::start();
    agent.write_config(&subscription("late", &rx.url(), FAST_RETRY));
    agent.start();
    wait_until(Duration::from_secs(30), "10 delivered", || {
        rx.delivered_ids().len() == 10
    });
    let seqs: Vec<i64> = rx.delivered().iter().map(|r| r.entity_seq).collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
}

#[test]
fn a_removed_subscription_keeps_its_backlog_and_resumes() {
    let mut rx = Receiver::start();
    rx.shut();
    let sub = subscription("erp", &rx.url(), FAST_RETRY);
    let mut agent = Agent::new(&sub);
    agent.start();
    agent.send_events(&Events::new("k", 1..=5, "SaleCreated"));
    assert!(agent.stop().success());
    agent.write_config("");
    agent.start();
    let status = agent.status();
    let s = &status["subscriptions"][0];
    assert_eq!(s["name"], "erp");
    assert_eq!(s["state"], "unconfigured");
    assert_eq!(s["pending"], 5, "kept while removed from the config");
    assert!(agent.stop().success());
    rx.restart();
    agent.write_config(&sub);
    agent.start();
    wait_until(Duration::from_secs(30), "5 delivered", || rx.delivered_ids().len() == 5);
}

#[test]
fn resend_queues_parked_and_delivered_events_again_with_the_same_webhook_id() {
    let rx = Receiver::start();
    rx.refuse_event("p-1", 422);
    let retry = "retry = { initial = \"100ms\", max = \"200ms\", give_up_after = \"500ms\" }";
    let mut agent = Agent::new(&subscription("erp", &rx.url(), retry));
    agent.start();
    let lines = vec![
        event("p-1", "order:p", "SaleCreated", serde_json::json!(1)),
        event("p-2", "order:p", "SaleCreated", serde_json::json!(2)),
        event("q-1", "order:q", "SaleCreated", serde_json::json!(1)),
    ];
    send_lines(&agent.socket(), &lines);
    wait_until(Duration::from_secs(30), "p-1 parked, q-1 delivered", || {
        agent.status()["subscriptions"][0]["parked"] == 1 && rx.delivered_ids().contains("q-1")
    });
    // The receiver is fixed; the technician resends what is parked.
    rx.answer_with(|_| Answer::ok());
    let out = agent.cli(&["resend", "--parked"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("queued 1 delivery again"));
    wait_until(Duration::from_secs(30), "p-1 and p-2 delivered", || {
        let ids = rx.delivered_ids();
        ids.contains("p-1") && ids.contains("p-2")
    });
    assert_entity_order(&rx.delivered());
    // A delivered event, resent by id, arrives again with its webhook-id.
    let before = rx.delivered().iter().filter(|r| r.id == "q-1").count();
    let out = agent.cli(&["resend", "q-1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until(Duration::from_secs(30), "q-1 again", || {
        rx.delivered().iter().filter(|r| r.id == "q-1").count() == before + 1
    });
    let again = rx.delivered().into_iter().rfind(|r| r.id == "q-1").expect("q-1");
    assert_eq!(again.headers["webhook-id"], "q-1");
    assert_eq!(again.entity_seq, 1, "keeps its place");
    let unknown = agent.cli(&["resend", "nope"]);
    assert_eq!(unknown.status.code(), Some(1));
    let usage = agent.cli(&["resend"]);
    assert_eq!(usage.status.code(), Some(2));
}
