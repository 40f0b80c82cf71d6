//! The HTTP ingest tells a body it cannot read (broken chunked encoding) from
//! a body over the limit: 400 `invalid_json` (the contract's code for a
//! malformed body) with a message that says so, not 413 `too_large`.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;

/// Sends `head` + `body` raw and returns (status, JSON body), reading until
/// the agent closes the connection.
fn raw_post(port: u16, head_extra: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n{head_extra}connection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).expect("head");
    stream.write_all(body).expect("body");
    let mut answer = Vec::new();
    // The agent may reset after answering; what was read is what counts.
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(serde_json::Value::Null);
    (status, json)
}

fn counter(agent: &Agent, name: &str) -> i64 {
    agent
        .open_db()
        .query_row("SELECT value FROM counters WHERE name = ?1", [name], |r| r.get(0))
        .unwrap_or(0)
}

#[test]
fn a_broken_chunked_body_is_a_400_invalid_json_not_too_large() {
    let mut agent = Agent::with_ingest("max_request_bytes = 4096\nmax_event_bytes = 2048\n", "");
    agent.start();
    let port = agent.http_port.get();

    // A good chunk, then a chunk size that is not hex.
    let (status, body) = raw_post(
        port,
        "transfer-encoding: chunked\r\n",
        b"5\r\n{\"typ\r\nzz\r\nxx\r\n0\r\n\r\n",
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_json", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("could not be read to its end"), "{message}");
    wait_until(Duration::from_secs(10), "the unreadable body counted", || {
        counter(&agent, "rejected_total:invalid_json") == 1
    });
    assert_eq!(counter(&agent, "rejected_total:too_large"), 0);

    // A chunked body over the limit is still 413 too_large.
    let big = "x".repeat(5000);
    let chunked = format!("{:x}\r\n{big}\r\n0\r\n\r\n", big.len());
    let (status, body) = raw_post(port, "transfer-encoding: chunked\r\n", chunked.as_bytes());
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "too_large", "{body}");
    wait_until(Duration::from_secs(10), "the large body counted", || {
        counter(&agent, "rejected_total:too_large") == 1
    });
    assert_eq!(counter(&agent, "rejected_total:invalid_json"), 1);

    // And the ingest still works.
    let (status, _) = agent.http_post(event("b-1", "order:1", "SaleCreated", serde_json::json!(1)).as_bytes());
    assert_eq!(status, 200);
    assert_eq!(agent.stored_events(), 1);
}
