//! Admin HTTP: JSON API, resend with a token, /metrics (checked by promtool),
//! /healthz, and the status page (in headless Chromium, see tests/page.rs).

mod common;

use std::time::Duration;

use common::*;

const TOKEN: &str = "s3cret-token";

/// An agent with one parked event (`bad-1`), a delivered one, and a token file.
pub fn agent_with_a_parked_event() -> (Agent, Receiver, u16) {
    let rx = Receiver::start();
    rx.answer_with(|r| {
        if r.id == "bad-1" {
            Answer::status(422)
        } else {
            Answer::ok()
        }
    });
    let admin_port = free_port();
    let retry = "retry = { initial = \"100ms\", max = \"200ms\", give_up_after = \"300ms\" }";
    let agent = Agent::configured(
        "",
        &format!("listen = \"127.0.0.1:{admin_port}\"\ntoken_file = \"token\"\n"),
        &subscription("erp", &rx.url(), retry),
    );
    std::fs::write(agent.dir.path().join("token"), format!("{TOKEN}\n")).expect("token");
    let mut agent = agent;
    agent.start();
    send_lines(
        &agent.socket(),
        &[
            event("bad-1", "order:bad", "SaleCreated", serde_json::json!({"n": 1})),
            event("good-1", "order:good", "SaleCreated", serde_json::json!({"n": 1})),
        ],
    );
    wait_until(Duration::from_secs(30), "bad-1 parked", || {
        agent.status()["subscriptions"][0]["parked"] == 1
    });
    (agent, rx, admin_port)
}

fn get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(s, "GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n").expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    (
        status,
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    )
}

fn post(port: u16, path: &str, headers: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-length: {}\r\n{headers}\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    (status, out)
}

#[test]
fn the_json_api_answers_like_the_cli() {
    let (agent, _rx, port) = agent_with_a_parked_event();
    let (code, body) = get(port, "/v1/status");
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).expect("json");
    for key in ["version", "store_id", "uptime_s", "db", "ingest", "subscriptions"] {
        assert!(status.get(key).is_some(), "{key} in {status}");
    }
    assert_eq!(status["store_id"], "0042");
    assert_eq!(status["subscriptions"][0]["parked"], 1);
    assert!(status["uptime_s"].as_i64().is_some());

    let (code, body) = get(port, "/v1/events?state=parked");
    assert_eq!(code, 200);
    let parked: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(parked[0]["event_id"], "bad-1");
    let (code, body) = get(port, "/v1/events?entity=order:good&state=delivered&limit=5");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("good-1") && !body.contains("bad-1"));
    assert_eq!(get(port, "/v1/events?state=lost").0, 400);

    let (code, body) = get(port, "/v1/events/bad-1");
    assert_eq!(code, 200);
    let detail: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(detail["deliveries"][0]["state"], "parked");
    assert!(detail["deliveries"][0]["attempts"]
        .as_array()
        .is_some_and(|a| !a.is_empty()));
    assert_eq!(get(port, "/v1/events/nope").0, 404);
    drop(agent);
}

#[test]
fn resend_through_the_api_needs_the_token() {
    let (agent, rx, port) = agent_with_a_parked_event();
    let (code, _) = post(port, "/v1/events/bad-1/resend", "", "");
    assert_eq!(code, 401, "no token");
    let (code, _) = post(port, "/v1/events/bad-1/resend", "authorization: Bearer wrong\r\n", "");
    assert_eq!(code, 401, "wrong token");
    rx.answer_with(|_| Answer::ok());
    let (code, body) = post(
        port,
        "/v1/events/bad-1/resend",
        &format!("authorization: Bearer {TOKEN}\r\n"),
        "",
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"queued\":1"), "{body}");
    wait_until(Duration::from_secs(30), "bad-1 delivered after resend", || {
        rx.delivered_ids().contains("bad-1")
    });
    let (code, body) = post(
        port,
        "/v1/events/nope/resend",
        &format!("authorization: Bearer {TOKEN}\r\n"),
        "",
    );
    assert_eq!(code, 404, "{body}");
    drop(agent);
}

#[test]
fn healthz_says_whether_the_database_is_writable_and_ingest_is_up() {
    let (agent, _rx, port) = agent_with_a_parked_event();
    let (code, body) = get(port, "/healthz");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"database_writable\":true") && body.contains("\"ingest_up\":true"));
    drop(agent);
}

#[test]
fn metrics_are_valid_prometheus_text() {
    let (agent, _rx, port) = agent_with_a_parked_event();
    let (code, text) = get(port, "/metrics");
    assert_eq!(code, 200);
    for name in [
        "store_outbox_events_ingested_total 2",
        "store_outbox_deliveries_parked{subscription=\"erp\"} 1",
        "store_outbox_deliveries_pending{subscription=\"erp\"} 0",
        "store_outbox_subscription_up{subscription=\"erp\"}",
        "store_outbox_db_bytes ",
        "store_outbox_db_max_bytes ",
        "store_outbox_delivery_attempts_total{subscription=\"erp\",result=\"refused\"}",
        "store_outbox_delivery_attempts_total{subscription=\"erp\",result=\"delivered\"} 1",
        "store_outbox_delivery_request_seconds_bucket",
        "store_outbox_delivery_latency_seconds_count{subscription=\"erp\"} 1",
        "store_outbox_oldest_pending_age_seconds{subscription=\"erp\"} 0",
    ] {
        assert!(text.contains(name), "{name} missing in\n{text}");
    }
    // A bad line counts as rejected, by code.
    send_lines(&agent.socket(), &["{oops".to_string()]);
    wait_until(Duration::from_secs(10), "rejected counted", || {
        get(port, "/metrics")
            .1
            .contains("store_outbox_events_rejected_total{code=\"invalid_json\"} 1")
    });
    let file = agent.dir.path().join("metrics.txt");
    std::fs::write(&file, get(port, "/metrics").1).expect("write");
    let out = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).expect("open"))
        .output()
        .expect("promtool must be installed (Debian package prometheus; .ci/run installs it)");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&file).unwrap_or_default()
    );
}

#[test]
fn the_status_page_shows_subscriptions_and_parked_events() {
    let (agent, _rx, port) = agent_with_a_parked_event();
    let (code, html) = get(port, "/");
    assert_eq!(code, 200);
    assert!(html.contains("http-equiv=refresh"), "refreshes itself");
    assert!(html.contains("class=\"state online\"") || html.contains("class=\"state offline\""));
    assert!(html.contains("bad-1") && html.contains("Parked events"));
    assert!(!html.contains("<script"), "no JavaScript needed");
    let (_, paused) = get(port, "/?pause=1");
    assert!(!paused.contains("http-equiv=refresh") && paused.contains("name=token"));
    // A wrong token on the form resends nothing.
    let (code, resp) = post(
        port,
        "/ui/resend",
        "content-type: application/x-www-form-urlencoded\r\n",
        "token=wrong&delivery=erp%3Abad-1",
    );
    assert_eq!(code, 303, "{resp}");
    assert!(resp.contains("wrong"), "{resp}");
    assert_eq!(agent.status()["subscriptions"][0]["parked"], 1);
}
