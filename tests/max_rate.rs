//! `max_rate` (issue 27, contract "A fleet against one central"): a
//! subscription sends at most so many requests a second, whatever its
//! concurrency, one event per request or batched, and shows its cap in
//! `status --json`, the `status` table, the page and `/metrics`. The real
//! binary and a loopback receiver; the assertion is an upper bound on what
//! arrives in any second (a slow machine only sends less), and that
//! everything arrives, in order.

mod common;

use std::time::Duration;

use common::*;

/// Most requests that arrived within any one second.
fn busiest_second(requests: &[Request]) -> usize {
    let at: Vec<_> = requests.iter().map(|r| r.at).collect();
    let mut most = 0;
    let mut start = 0;
    for end in 0..at.len() {
        while at[end].duration_since(at[start]) >= Duration::from_secs(1) {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    most
}

#[test]
fn one_event_per_request_goes_at_most_max_rate_a_second_and_the_cap_is_shown() {
    let rx = Receiver::start();
    let mut agent = Agent::new(&subscription("erp", &rx.url(), "max_in_flight = 16\nmax_rate = 20"));
    agent.start();
    agent.send_events(&Events::new("r", 0..80, "SaleCreated").spread_over("till", 40));
    wait_until(Duration::from_secs(60), "80 delivered", || {
        rx.delivered_ids().len() == 80
    });
    let requests = rx.requests();
    // 20 a second, and the bucket's two of a tenth of a second.
    let busiest = busiest_second(&requests);
    assert!(busiest <= 22, "{busiest} requests in one second, max_rate is 20");
    let span = requests[requests.len() - 1].at.duration_since(requests[0].at);
    assert!(span >= Duration::from_millis(2900), "80 requests in {span:?} at 20/s");
    assert_eq!(assert_entity_order(&rx.delivered()), 0);

    assert_eq!(agent.sub_status("erp")["max_rate"], 20.0);
    let out = agent.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("at most 20 requests/s (max_rate)"), "{text}");
    let port = agent.admin_port.get();
    let metrics = http(port, "GET", "/metrics", &[], b"").text();
    assert!(
        metrics.contains("store_outbox_max_rate_requests_per_second{subscription=\"erp\"} 20"),
        "{metrics}"
    );
    let page = http(port, "GET", "/", &[], b"").text();
    assert!(page.contains("at most 20 requests/s"), "{page}");
}

#[test]
fn batches_are_requests_too_and_a_subscription_without_the_key_has_no_cap() {
    let (capped_rx, free_rx) = (Receiver::start(), Receiver::start());
    let capped = subscription(
        "capped",
        &capped_rx.url(),
        "max_in_flight = 8\nmax_rate = 4\nbatch = { max_events = 5, linger = \"1ms\" }",
    );
    let free = subscription("free", &free_rx.url(), "max_in_flight = 8");
    let mut agent = Agent::new(&format!("{capped}{free}"));
    agent.start();
    agent.send_events(&Events::new("b", 0..60, "SaleCreated").spread_over("till", 30));
    // Every event of every 2xx-answered batch.
    let batched = |rx: &Receiver| -> usize {
        rx.requests()
            .iter()
            .filter(|r| r.answered == 200)
            .map(|r| r.json.as_array().map_or(1, Vec::len))
            .sum()
    };
    wait_until(Duration::from_secs(90), "everything delivered to both", || {
        batched(&capped_rx) >= 60 && free_rx.delivered_ids().len() == 60
    });
    let busiest = busiest_second(&capped_rx.requests());
    assert!(busiest <= 5, "{busiest} batches in one second, max_rate is 4");
    assert_eq!(agent.sub_status("free")["max_rate"], serde_json::Value::Null);
    assert_eq!(agent.sub_status("capped")["max_rate"], 4.0);
}

#[test]
fn max_rate_must_be_a_positive_number_of_requests_a_second() {
    for (value, ok) in [
        ("0", false),
        ("-1", false),
        ("\"fast\"", false),
        ("100001", false),
        ("0.5", true),
        ("50", true),
        ("100000", true),
    ] {
        let agent = Agent::new(&subscription(
            "erp",
            "http://127.0.0.1:9/h",
            &format!("max_rate = {value}"),
        ));
        let out = agent.cli(&["check-config"]);
        assert_eq!(out.status.success(), ok, "max_rate = {value}: {}", stderr(&out));
        if !ok {
            let err = stderr(&out);
            assert!(err.contains("max_rate") && err.contains("line"), "{err}");
        }
    }
}
