//! `format = "cloudevents"`: CloudEvents 1.0 over HTTP, binary content mode
//! for one event per request and the batched mode with `batch`, the
//! Standard Webhooks headers on top (verified by the official library).
//! The real binary, through the WAN link.

mod common;

use std::time::Duration;

use common::wan::Link;
use common::*;

#[test]
fn binary_mode_puts_the_attributes_in_percent_encoded_ce_headers_and_the_data_in_the_body() {
    let rx = Receiver::start();
    let wan = rx.behind(Link::STORE_UPLINK);
    let mut agent = Agent::new(&subscription("erp", &rx.url_via(&wan), "format = \"cloudevents\""));
    agent.start();
    let line = serde_json::json!({"event_id": "ce-1", "type": "SaleCreated", "entity": "order 4711/€",
        "occurred_at": "2026-11-22T10:15:00Z", "correlation_id": "basket \"7\"",
        "payload": {"total": 9.5, "name": "Grüße"}})
    .to_string();
    agent.send_all(&[line]);
    agent.send_events(&Events::new("ce", 2..6, "SaleCreated").entity("order 4711/€"));
    wait_until(Duration::from_secs(30), "5 delivered", || rx.delivered().len() == 5);
    let requests = rx.delivered();
    let first = &requests[0];
    let h = &first.headers;
    assert_eq!(h["ce-specversion"], "1.0");
    assert_eq!(h["ce-id"], "ce-1");
    assert_eq!(h["ce-type"], "SaleCreated");
    assert_eq!(h["ce-source"], "store-outbox/0042/till-03");
    assert_eq!(
        h["ce-subject"], "order%204711/%E2%82%AC",
        "percent-encoded UTF-8 and space"
    );
    assert_eq!(h["ce-time"], "2026-11-22T10:15:00Z");
    assert_eq!(h["ce-entityseq"], "1");
    assert_eq!(h["ce-correlationid"], "basket%20%227%22");
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["webhook-id"], "ce-1", "Standard Webhooks headers stay");
    assert_eq!(
        first.json,
        serde_json::json!({"total": 9.5, "name": "Grüße"}),
        "the body is the data"
    );
    // In order: ce-entityseq counts up.
    let seqs: Vec<String> = requests.iter().map(|r| r.headers["ce-entityseq"].clone()).collect();
    assert_eq!(seqs, ["1", "2", "3", "4", "5"]);
    assert_eq!(
        verify_with_python(Verifier::Batches, &requests, agent.dir.path(), &[SECRET]),
        "verified 5 requests, 5 events"
    );
}

#[test]
fn with_batch_the_batched_mode_sends_an_array_of_structured_events() {
    let rx = Receiver::start();
    let wan = rx.behind(Link::STORE_UPLINK);
    let mut agent = Agent::new(&subscription(
        "erp",
        &rx.url_via(&wan),
        "format = \"cloudevents\"\nbatch = { max_events = 40, linger = \"20ms\" }",
    ));
    agent.start();
    agent.send_events(&Events::new("cb", 0..120, "SaleCreated").spread_over("till", 6));
    wait_until(Duration::from_secs(60), "120 delivered", || {
        agent.sub_status("erp")["delivered_total"] == 120
    });
    let requests = rx.delivered();
    let mut events = Vec::new();
    for r in &requests {
        assert_eq!(r.headers["content-type"], "application/cloudevents-batch+json");
        assert!(r.headers["webhook-id"].starts_with("batch~"));
        assert!(!r.headers.contains_key("ce-id"), "no binary-mode headers on a batch");
        for e in r.json.as_array().expect("an array") {
            assert_eq!(e["specversion"], "1.0");
            assert_eq!(e["source"], "store-outbox/0042/till-03");
            assert_eq!(e["datacontenttype"], "application/json");
            events.push(Request {
                id: e["id"].as_str().expect("id").to_string(),
                entity: e["subject"].as_str().expect("subject").to_string(),
                entity_seq: e["entityseq"].as_i64().expect("entityseq"),
                json: e.clone(),
                ..r.clone()
            });
        }
    }
    assert_eq!(events.len(), 120);
    assert_eq!(assert_entity_order(&events), 0);
    assert!(events.iter().all(|e| e.json["data"].is_number()));
    assert_eq!(
        verify_with_python(Verifier::Batches, &requests, agent.dir.path(), &[SECRET]),
        format!("verified {} requests, 120 events", requests.len())
    );
}
