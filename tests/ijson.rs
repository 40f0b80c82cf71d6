//! Payloads must be I-JSON (RFC 7493; issue 17): a number beyond the double
//! range, a duplicate key or a lone surrogate is refused with `invalid_event`
//! naming its path, on every way in, and the good events around it are stored
//! and delivered as they were sent.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;

/// Events with raw payload text (serde_json could not even build them).
fn raw_event(id: &str, payload: &str) -> String {
    format!(r#"{{"event_id":"{id}","type":"SaleCreated","entity":"till:1","payload":{payload}}}"#)
}

/// Bad payloads and the start of the message each must get.
const BAD: [(&str, &str, &str); 4] = [
    (
        "bad-number",
        r#"{"lines":[{"price":1},{"price":2},{"price":3},{"price":1e999999}]}"#,
        "payload.lines[3].price: number out of range",
    ),
    ("bad-dup", r#"{"total":1,"total":2}"#, "payload.total: duplicate key"),
    (
        "bad-surrogate",
        r#"{"name":["ok","\ud800"]}"#,
        "payload.name[1]: lone surrogate",
    ),
    ("bad-key", r#"{"\udc00":1}"#, "payload: key with a lone surrogate"),
];

/// Good payloads that are close to the line: within range, paired surrogates,
/// the same key in different objects.
const GOOD: [(&str, &str); 3] = [
    (
        "good-big",
        r#"{"id":18446744073709551616,"pi":3.14159265358979323846264338}"#,
    ),
    ("good-emoji", r#"{"name":"\ud83d\ude00","max":1.7976931348623157e308}"#),
    ("good-nested", r#"{"a":{"x":1},"b":{"x":1}}"#),
];

fn assert_refused(reply: &serde_json::Value, want: &str) {
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["error"]["code"], "invalid_event", "{reply}");
    let message = reply["error"]["message"].as_str().expect("message");
    assert!(message.starts_with(want), "{want} in {reply}");
}

/// The payload text stored for `id`.
fn stored_payload(agent: &Agent, id: &str) -> String {
    agent
        .open_db()
        .query_row("SELECT payload FROM events WHERE event_id = ?1", [id], |r| r.get(0))
        .expect("stored payload")
}

#[test]
fn bad_payloads_are_refused_with_their_path_on_the_socket_and_over_http() {
    let rx = Receiver::start();
    let mut agent = Agent::new(&subscription("erp", &rx.url(), ""));
    agent.start();

    // Socket: good and bad lines interleaved on one pipelined connection.
    let mut lines = Vec::new();
    for i in 0..4 {
        lines.push(raw_event(&format!("s{i}-{}", GOOD[i % 3].0), GOOD[i % 3].1));
        lines.push(raw_event(&format!("s{i}-{}", BAD[i].0), BAD[i].1));
    }
    let replies = send_lines(&agent.socket(), &lines);
    let mut good_ids = Vec::new();
    for (i, reply) in replies.iter().enumerate() {
        if i % 2 == 0 {
            assert_eq!(reply["ok"], true, "{reply}");
            good_ids.push(reply["event_id"].as_str().expect("id").to_string());
        } else {
            assert_refused(reply, BAD[i / 2].2);
        }
    }
    // Their entity_seq has no gaps: refused events took no number.
    let seqs: Vec<i64> = replies
        .iter()
        .step_by(2)
        .map(|r| r["entity_seq"].as_i64().expect("seq"))
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4]);

    // HTTP: an array mixing good and bad events gets one result each.
    let body = format!(
        "[{},{},{},{}]",
        raw_event("h-good-0", GOOD[0].1),
        raw_event("h-bad-0", BAD[0].1),
        raw_event("h-bad-3", BAD[3].1),
        raw_event("h-good-1", GOOD[1].1),
    );
    let (code, answer) = agent.http_post(body.as_bytes());
    assert_eq!(code, 200, "{answer}");
    let results = answer["results"].as_array().expect("results");
    assert_eq!(results.len(), 4);
    assert_eq!(results[0]["ok"], true, "{answer}");
    assert_refused(&results[1], BAD[0].2);
    assert_refused(&results[2], BAD[3].2);
    assert_eq!(results[3]["ok"], true, "{answer}");
    good_ids.extend(["h-good-0".to_string(), "h-good-1".to_string()]);
    // A single event: the same answer.
    let (code, answer) = agent.http_post(raw_event("h-bad-1", BAD[1].1).as_bytes());
    assert_eq!(code, 200, "{answer}");
    assert_refused(&answer["results"][0], BAD[1].2);

    // Exactly the good events are stored, their payloads verbatim, and
    // delivered with the payload as sent.
    assert_eq!(agent.stored_events(), good_ids.len() as i64);
    assert_eq!(stored_payload(&agent, "s0-good-big"), GOOD[0].1);
    assert_eq!(stored_payload(&agent, "h-good-1"), GOOD[1].1);
    wait_until(Duration::from_secs(30), "the good events delivered", || {
        rx.delivered_count() >= good_ids.len()
    });
    let delivered = rx.delivered();
    let got: HashSet<String> = delivered.iter().map(|r| r.id.clone()).collect();
    assert_eq!(got, good_ids.iter().cloned().collect::<HashSet<_>>());
    let emoji = delivered.iter().find(|r| r.id == "s1-good-emoji").expect("emoji event");
    assert_eq!(emoji.json["data"]["name"], "\u{1F600}");
    let body = String::from_utf8(emoji.body.clone()).expect("UTF-8 body");
    assert!(
        body.contains(GOOD[1].1),
        "the payload text is forwarded verbatim: {body}"
    );
    // Counted (best effort, so it may lag the replies a little).
    wait_until(Duration::from_secs(10), "7 rejections counted", || {
        agent.status()["ingest"]["rejected_total"] == 7
    });
}

#[test]
fn a_spool_file_with_a_bad_payload_fails_whole_naming_line_and_path() {
    let mut agent = Agent::new("");
    agent.start();
    let lines = [
        raw_event("f-1", GOOD[0].1),
        raw_event("f-2", BAD[0].1),
        raw_event("f-3", GOOD[2].1),
    ];
    agent.drop_file("prices.ndjson", lines.join("\n").as_bytes());
    let failed = agent.spool().join("failed");
    wait_until(Duration::from_secs(30), "moved to failed/", || {
        failed.join("prices.ndjson.error.json").exists()
    });
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(failed.join("prices.ndjson.error.json")).expect("report"))
            .expect("report JSON");
    assert_eq!(report["code"], "invalid_event", "{report}");
    assert_eq!(report["line"], 2, "{report}");
    assert_eq!(report["field"], "payload", "{report}");
    let message = report["message"].as_str().expect("message");
    assert!(message.contains(BAD[0].2), "{report}");
    assert_eq!(agent.stored_events(), 0, "nothing of the file is stored");
}
