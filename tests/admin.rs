//! Admin HTTP: JSON API, resend with a token, /metrics (checked by promtool),
//! /healthz, and the status page (in headless Chromium, see tests/page.rs).

mod common;

use std::time::Duration;

use common::*;

const TOKEN: &str = "s3cret-token";

/// An agent with one parked event (`bad-1`), a delivered one, and a token file.
pub fn agent_with_a_parked_event() -> (Agent, Receiver, u16) {
    let rx = Receiver::start();
    rx.refuse_event("bad-1", 422);
    let (mut agent, admin_port) =
        Agent::with_admin_token(&format!("{TOKEN}\n"), &subscription("erp", &rx.url(), PARK_FAST));
    agent.start();
    agent.send_all(&[
        event("bad-1", "order:bad", "SaleCreated", serde_json::json!({"n": 1})),
        event("good-1", "order:good", "SaleCreated", serde_json::json!({"n": 1})),
    ]);
    wait_until(Duration::from_secs(30), "bad-1 parked", || {
        agent.status()["subscriptions"][0]["parked"] == 1
    });
    (agent, rx, admin_port)
}

/// `GET path` on the admin port: (status, body as text).
fn get(port: u16, path: &str) -> (u16, String) {
    let r = http(port, "GET", path, &[], b"");
    (r.status, r.text())
}

/// `POST path` on the admin port with `headers` and a form or empty body.
fn post(port: u16, path: &str, headers: &[(&str, &str)], body: &str) -> HttpResponse {
    http(port, "POST", path, headers, body.as_bytes())
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
    assert_eq!(post(port, "/v1/events/bad-1/resend", &[], "").status, 401, "no token");
    let wrong = post(
        port,
        "/v1/events/bad-1/resend",
        &[("authorization", "Bearer wrong")],
        "",
    );
    assert_eq!(wrong.status, 401, "wrong token");
    rx.answer_with(|_| Answer::ok());
    let bearer = format!("Bearer {TOKEN}");
    let resent = post(port, "/v1/events/bad-1/resend", &[("authorization", &bearer)], "");
    let body = resent.text();
    assert_eq!(resent.status, 200, "{body}");
    assert!(body.contains("\"queued\":1"), "{body}");
    wait_until(Duration::from_secs(30), "bad-1 delivered after resend", || {
        rx.delivered_ids().contains("bad-1")
    });
    let unknown = post(port, "/v1/events/nope/resend", &[("authorization", &bearer)], "");
    assert_eq!(unknown.status, 404, "{}", unknown.text());
    // An unknown subscription is the caller's mistake, said in JSON; it was
    // a 500 when every resend opened its own writer connection.
    let no_sub = post(
        port,
        "/v1/events/bad-1/resend?subscription=nope",
        &[("authorization", &bearer)],
        "",
    );
    assert_eq!(no_sub.status, 404, "{}", no_sub.text());
    assert_eq!(
        no_sub.json()["error"],
        "no such subscription: \"nope\"",
        "{}",
        no_sub.text()
    );
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
        // Fixed concurrency (the default): the limit is max_in_flight.
        "store_outbox_concurrency_limit{subscription=\"erp\"} 16",
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
    let resp = post(
        port,
        "/ui/resend",
        &[("content-type", "application/x-www-form-urlencoded")],
        "token=wrong&delivery=erp%3Abad-1",
    );
    assert_eq!(resp.status, 303, "{resp:?}");
    let location = resp.header("location").unwrap_or_default();
    assert!(
        location.contains("wrong"),
        "the redirect says the token was wrong: {resp:?}"
    );
    assert_eq!(agent.status()["subscriptions"][0]["parked"], 1);
}
