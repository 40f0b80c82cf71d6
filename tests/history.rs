//! History end to end: the real agent samples each subscription (pending,
//! delivered and ingested per period, offline time) into the outbox; the
//! samples tell an outage and its drain, survive a SIGKILL and restart, and
//! are served at `/v1/history` and drawn on the status page. The sample
//! period is shortened to 1 s with `STORE_OUTBOX_HISTORY_PERIOD` (the
//! tests' knob); the test polls with deadlines, never on timing.

mod common;

use std::time::Duration;

use common::*;

const FAST_RETRY: &str = "retry = { initial = \"100ms\", max = \"300ms\" }";
const PERIOD: [(&str, &str); 1] = [("STORE_OUTBOX_HISTORY_PERIOD", "1s")];

fn history(admin_port: u16, query: &str) -> serde_json::Value {
    let (status, body) = http_request(admin_port, "GET", &format!("/v1/history{query}"), b"");
    assert_eq!(status, 200, "{body}");
    body
}

fn samples(admin_port: u16) -> Vec<serde_json::Value> {
    history(admin_port, "?subscription=erp")["subscriptions"][0]["samples"]
        .as_array()
        .expect("samples")
        .clone()
}

fn sum(samples: &[serde_json::Value], key: &str) -> i64 {
    samples.iter().map(|s| s[key].as_i64().expect(key)).sum()
}

#[test]
fn history_tells_an_outage_and_its_drain_and_survives_a_restart() {
    let mut rx = Receiver::start();
    let (mut agent, admin) = Agent::with_admin_token("t", &subscription("erp", &rx.url(), FAST_RETRY));
    agent.start_with_env(&PERIOD);
    // Counts are differences between samples: start once one is stored.
    wait_until(Duration::from_secs(30), "a first sample", || !samples(admin).is_empty());

    agent.send_events(&Events::new("before", 0..20, "SaleCreated").spread_over("order", 5));
    wait_until(Duration::from_secs(30), "20 delivered", || rx.delivered_count() == 20);

    // The endpoint goes away; events keep coming and wait.
    rx.shut();
    agent.send_events(&Events::new("during", 0..30, "SaleCreated").spread_over("order", 5));
    wait_until(Duration::from_secs(30), "offline with the backlog sampled", || {
        let s = samples(admin);
        s.iter()
            .any(|p| p["offline_s"].as_i64() > Some(0) && p["pending"] == 30)
    });

    // SIGKILL in the middle of the outage: the samples are in the outbox.
    let before_kill = samples(admin).len();
    agent.kill9();
    agent.start_with_env(&PERIOD);
    let after_restart = samples(admin);
    assert!(
        after_restart.len() >= before_kill,
        "{} samples after the restart, {before_kill} before",
        after_restart.len()
    );
    wait_until(Duration::from_secs(30), "sampling goes on after the restart", || {
        samples(admin).len() > before_kill + 1
    });

    rx.restart();
    wait_until(Duration::from_secs(60), "the backlog delivered", || {
        rx.delivered_count() >= 50
    });
    wait_until(Duration::from_secs(30), "a drained sample after the outage", || {
        let s = samples(admin);
        let last_offline = s.iter().rposition(|p| p["offline_s"].as_i64() > Some(0));
        last_offline.is_some_and(|i| s[i..].iter().any(|p| p["pending"] == 0 && p["offline_s"] == 0))
    });
    // Let one more period close so every delivery is counted.
    let total_delivered = agent.sub_status("erp")["delivered_total"].as_i64().expect("total");
    wait_until(Duration::from_secs(30), "every delivery counted in a period", || {
        sum(&samples(admin), "delivered") >= total_delivered
    });

    let s = samples(admin);
    assert_eq!(sum(&s, "ingested"), 50, "every event ingested counted once: {s:?}");
    assert_eq!(sum(&s, "delivered"), total_delivered, "{s:?}");
    assert!(total_delivered >= 50);
    let peak = s.iter().map(|p| p["pending"].as_i64().expect("pending")).max();
    assert_eq!(peak, Some(30), "the backlog peaked at the 30 events of the outage");
    let times: Vec<&str> = s.iter().map(|p| p["at"].as_str().expect("at")).collect();
    let mut sorted = times.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(times, sorted, "one sample per period, oldest first");

    // The page draws it: a chart per subscription, the outage shaded and told.
    let page = http(admin, "GET", "/", &[], b"").text();
    assert!(page.contains("<svg class=history"), "{page}");
    assert!(page.contains("<rect class=outage"), "no shaded outage:\n{page}");
    assert!(page.contains("Last outage "), "no outage summary:\n{page}");
    assert!(page.contains("drained by"), "{page}");
    assert!(!page.contains("<script"), "no script on the page");

    // The query's edges.
    let (status, body) = http_request(admin, "GET", "/v1/history?subscription=nope", b"");
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("no such subscription: \"nope\""))
    );
    let bad = http(admin, "GET", "/v1/history?since=yesterday", &[], b"");
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("since="), "{}", bad.text());
    let recent = history(admin, "?since=10s");
    let n = recent["subscriptions"][0]["samples"].as_array().expect("samples").len();
    assert!(
        (1..=11).contains(&n),
        "since=10s keeps the last periods only: {n} of {}",
        s.len()
    );
    assert_eq!(history(admin, "")["period_s"], 1.0);
}

#[test]
fn last_error_shows_its_age_and_is_past_after_a_later_success() {
    let mut rx = Receiver::start();
    rx.shut();
    let (mut agent, admin) = Agent::with_admin_token("t", &subscription("erp", &rx.url(), FAST_RETRY));
    agent.start();
    agent.send_events(&Events::new("e", 0..3, "SaleCreated"));
    wait_until(Duration::from_secs(30), "an error recorded", || {
        !agent.sub_status("erp")["last_error"].is_null()
    });
    let s = agent.sub_status("erp");
    assert_eq!(s["last_error_past"], false, "{s}");
    assert!(s["last_error_age_s"].as_i64().is_some(), "{s}");
    let table = String::from_utf8_lossy(&agent.cli(&["status"]).stdout).to_string();
    assert!(table.contains(" ago: cannot connect"), "{table}");
    assert!(!table.contains("past, "), "{table}");

    rx.restart();
    wait_until(Duration::from_secs(30), "delivered", || rx.delivered_count() == 3);
    wait_until(Duration::from_secs(30), "the error is past", || {
        agent.sub_status("erp")["last_error_past"] == true
    });
    let s = agent.sub_status("erp");
    assert!(
        s["last_error"].as_str().is_some_and(|e| e.contains("connect")),
        "kept: {s}"
    );
    let table = String::from_utf8_lossy(&agent.cli(&["status"]).stdout).to_string();
    assert!(
        table.contains("past, ") && table.contains(" ago: cannot connect"),
        "{table}"
    );
    let page = http(admin, "GET", "/", &[], b"").text();
    assert!(page.contains("<span class=past"), "{page}");
}

/// The writer's part, on the library: ingest counts per subscription, a
/// period stored twice keeps one row, samples older than the kept window go.
#[test]
fn the_writer_counts_ingest_per_subscription_and_keeps_only_the_window() {
    use store_outbox::outbox::history::Sample;
    let dir = tempfile::tempdir().expect("tempdir");
    let outbox = library_outbox(dir.path(), "");
    let rt = current_thread_runtime();
    let replies = rt.block_on(outbox.writer.ingest(vec![
        new_event("h-1", "till:01"),
        new_event("h-2", "till:01"),
        new_event("h-3", "till:02"),
    ]));
    assert_eq!(replies.len(), 3);
    let db = rusqlite::Connection::open(&outbox.db).expect("open");
    let ingested: i64 = db
        .query_row(
            "SELECT ingested_total FROM subscriptions WHERE id = ?1",
            [outbox.sub_id],
            |r| r.get(0),
        )
        .expect("ingested_total");
    assert_eq!(ingested, 3);

    let sample = |at_ms: i64, pending: i64| Sample {
        sub_id: outbox.sub_id,
        at_ms,
        period_ms: 60_000,
        pending,
        parked: 0,
        delivered_total: 0,
        ingested_total: 3,
        offline_ms: 0,
    };
    let minute = 60_000;
    assert!(rt.block_on(
        outbox
            .writer
            .record_history(vec![sample(10 * minute, 1), sample(11 * minute, 2)], 0)
    ));
    // The same period again replaces its sample; the window moves on.
    assert!(rt.block_on(
        outbox
            .writer
            .record_history(vec![sample(12 * minute, 3), sample(11 * minute, 5)], 11 * minute)
    ));
    // The queue is FIFO: once a later ping is committed, so are the samples.
    assert!(rt.block_on(outbox.writer.ping()));
    let rows: Vec<(i64, i64)> = db
        .prepare("SELECT at, pending FROM history ORDER BY at")
        .expect("query")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(rows, [(11 * minute, 5), (12 * minute, 3)]);
    drop(outbox.writer);
    outbox.thread.join().expect("writer thread");
}
