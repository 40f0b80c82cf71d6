//! A subscription's request-concurrency limit is visible: `status --json`
//! (`concurrency`, `max_in_flight`, `concurrency_limit`), the `status`
//! table, the status page and `store_outbox_concurrency_limit`. Fixed
//! concurrency reports `max_in_flight`; adaptive starts at 1, grows while a
//! fast endpoint keeps up and shrinks back toward 1 under 429s. Cleared
//! when the agent stops or the subscription leaves the config. The real
//! binary and a loopback receiver; every assertion is a bound or an
//! eventual fact, polled with generous deadlines, never a timing.

mod common;

use std::time::Duration;

use common::*;

/// The generous deadline for anything the agent does by itself.
const DEADLINE: Duration = Duration::from_secs(120);

/// `concurrency_limit` of `name` in `status --json` (None when null).
fn limit_of(agent: &Agent, name: &str) -> Option<i64> {
    agent.sub_status(name)["concurrency_limit"].as_i64()
}

/// The stored columns, straight from the database.
fn stored(agent: &Agent, name: &str) -> (Option<String>, Option<i64>, Option<i64>) {
    agent
        .open_db()
        .query_row(
            "SELECT concurrency, max_in_flight, concurrency_limit FROM subscriptions WHERE name = ?1",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("subscription row")
}

fn metrics(agent: &Agent) -> String {
    http(agent.admin_port.get(), "GET", "/metrics", &[], b"").text()
}

fn status_text(agent: &Agent) -> String {
    let out = agent.cli(&["status"]);
    assert!(out.status.success(), "status: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_fixed_subscription_reports_max_in_flight_as_its_limit_until_it_stops_running() {
    let rx = Receiver::start();
    let subs = format!(
        "{}{}",
        subscription("erp", &rx.url(), "max_in_flight = 5"),
        subscription("oms", &rx.url(), "")
    );
    let mut agent = Agent::new(&subs);
    agent.start();
    wait_until(DEADLINE, "erp's limit in status", || limit_of(&agent, "erp").is_some());
    let erp = agent.sub_status("erp");
    assert_eq!(erp["concurrency"], "fixed", "{erp}");
    assert_eq!(erp["max_in_flight"], 5, "{erp}");
    assert_eq!(erp["concurrency_limit"], 5, "{erp}");
    wait_until(DEADLINE, "oms's limit in status", || {
        limit_of(&agent, "oms") == Some(16)
    });
    assert_eq!(agent.sub_status("oms")["max_in_flight"], 16, "the default");

    agent.send_events(&Events::new("f", 0..30, "SaleCreated").spread_over("till", 6));
    wait_until(DEADLINE, "30 delivered twice (erp and oms)", || {
        rx.delivered_count() == 60
    });
    assert_eq!(limit_of(&agent, "erp"), Some(5), "fixed: it never moves");

    let page = http(agent.admin_port.get(), "GET", "/", &[], b"").text();
    assert!(page.contains("<small class=limit>of 5</small>"), "{page}");
    let text = metrics(&agent);
    assert!(
        text.contains("store_outbox_concurrency_limit{subscription=\"erp\"} 5"),
        "{text}"
    );
    assert!(text.contains("# TYPE store_outbox_concurrency_limit gauge"), "{text}");
    // Fixed subscriptions keep the table as it was.
    let table = status_text(&agent);
    assert!(!table.contains("request concurrency"), "{table}");

    // Removed from the config: cleared like in_flight, in the database too.
    let line = agent.reload(&subscription("erp", &rx.url(), "max_in_flight = 5"));
    assert!(line.contains("config reloaded"), "{line}");
    wait_until(DEADLINE, "oms unconfigured", || {
        agent.sub_status("oms")["state"] == "unconfigured"
    });
    assert_eq!(stored(&agent, "oms"), (None, None, None));
    let oms = agent.sub_status("oms");
    assert!(
        oms["concurrency_limit"].is_null() && oms["max_in_flight"].is_null(),
        "{oms}"
    );
    assert!(
        !metrics(&agent).contains("store_outbox_concurrency_limit{subscription=\"oms\"}"),
        "no gauge for a subscription no longer configured"
    );
    assert_eq!(limit_of(&agent, "erp"), Some(5), "erp runs on");

    // The agent stops: nothing runs the subscription, nothing is claimed.
    assert!(agent.stop().success());
    assert_eq!(stored(&agent, "erp"), (None, None, None), "cleared at the stop");
    let erp = agent.sub_status("erp");
    assert_eq!(erp["state"], "stopped", "{erp}");
    assert!(
        erp["concurrency_limit"].is_null() && erp["concurrency"].is_null(),
        "{erp}"
    );
}

#[test]
fn an_adaptive_subscription_starts_at_one_and_grows_while_a_fast_endpoint_keeps_up() {
    let rx = Receiver::start();
    rx.answer_with(|_| Answer::ok().after(Duration::from_millis(30)));
    let mut agent = Agent::new(&subscription(
        "erp",
        &rx.url(),
        "max_in_flight = 8\nconcurrency = \"adaptive\"",
    ));
    // The README's switch for the log of every new limit.
    agent.start_with_env(&[("STORE_OUTBOX_LOG", "store_outbox=debug")]);
    wait_until(DEADLINE, "the limit in status", || limit_of(&agent, "erp").is_some());
    let erp = agent.sub_status("erp");
    assert_eq!(erp["concurrency"], "adaptive", "{erp}");
    assert_eq!(erp["max_in_flight"], 8, "{erp}");
    assert_eq!(erp["concurrency_limit"], 1, "nothing sent yet: it starts at one: {erp}");
    assert!(
        status_text(&agent).contains("erp              in flight 0 (limit 1 of 8, adaptive)"),
        "{}",
        status_text(&agent)
    );

    agent.send_events(&Events::new("a", 0..800, "SaleCreated").spread_over("till", 80));
    let mut seen = Vec::new();
    wait_until(DEADLINE, "a limit above one in status", || {
        let limit = limit_of(&agent, "erp");
        seen.push(limit);
        limit.is_some_and(|l| l > 1)
    });
    assert!(
        seen.iter().flatten().all(|l| (1..=8).contains(l)),
        "between 1 and max_in_flight: {seen:?}"
    );
    // The table, the page and the metric say the same (whatever it is by
    // now, it stays within its bounds).
    let table = status_text(&agent);
    let line = table
        .lines()
        .find(|l| l.starts_with("  erp ") && l.contains("in flight"))
        .unwrap_or_else(|| panic!("an erp line below the table:\n{table}"));
    let limit: i64 = line
        .split("(limit ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a limit in {line:?}"));
    assert!((1..=8).contains(&limit), "{line}");
    assert!(line.ends_with(" of 8, adaptive)"), "{line}");
    assert!(table.contains("\nrequest concurrency:\n"), "{table}");
    let page = http(agent.admin_port.get(), "GET", "/", &[], b"").text();
    assert!(page.contains(" of 8, adaptive</small>"), "{page}");
    let text = metrics(&agent);
    let gauge: i64 = text
        .lines()
        .find_map(|l| l.strip_prefix("store_outbox_concurrency_limit{subscription=\"erp\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("the gauge in\n{text}"));
    assert!((1..=8).contains(&gauge), "{text}");

    wait_until(DEADLINE, "800 delivered", || rx.delivered_ids().len() == 800);
    assert_eq!(assert_entity_order(&rx.delivered()), 0);
    let last = limit_of(&agent, "erp");
    assert!(last.is_some_and(|l| (1..=8).contains(&l)), "{last:?}");
    let log = agent.log();
    assert!(log.contains("adaptive concurrency: new limit"), "{log}");
}

#[test]
fn an_adaptive_subscription_shrinks_back_toward_one_while_its_endpoint_answers_429() {
    let rx = Receiver::start();
    rx.answer_with(|_| Answer::ok().after(Duration::from_millis(30)));
    let mut agent = Agent::new(&subscription(
        "erp",
        &rx.url(),
        "max_in_flight = 8\nconcurrency = \"adaptive\"\nretry = { initial = \"100ms\", max = \"1s\" }",
    ));
    agent.start();
    agent.send_events(&Events::new("g", 0..800, "SaleCreated").spread_over("till", 80));
    let mut grown = 0;
    wait_until(DEADLINE, "a limit above one in status", || {
        grown = limit_of(&agent, "erp").unwrap_or(0);
        grown > 1
    });
    assert!(grown <= 8, "{grown}");

    // The endpoint now asks to slow down, every time, briefly.
    rx.answer_with(|_| Answer::status(429).header("retry-after", "1"));
    agent.send_events(&Events::new("t", 0..40, "SaleCreated").spread_over("till", 8));
    let mut seen = Vec::new();
    wait_until(DEADLINE, "the limit back at one", || {
        let limit = limit_of(&agent, "erp");
        seen.push(limit);
        limit == Some(1)
    });
    assert!(
        seen.iter().flatten().all(|l| (1..=8).contains(l)),
        "never out of bounds: {seen:?}"
    );
    assert!(
        rx.requests().iter().any(|r| r.answered == 429),
        "the 429s were answered"
    );
    let sub = agent.sub_status("erp");
    assert!(
        sub["pending"].as_i64().is_some_and(|p| p > 0),
        "nothing delivered meanwhile: {sub}"
    );
    assert!(
        status_text(&agent).contains("(limit 1 of 8, adaptive)"),
        "{}",
        status_text(&agent)
    );

    // Back to normal: everything arrives, in order per entity.
    rx.answer_with(|_| Answer::ok());
    wait_until(DEADLINE, "840 delivered", || rx.delivered_ids().len() == 840);
    assert_eq!(assert_entity_order(&rx.delivered()), 0);
}
