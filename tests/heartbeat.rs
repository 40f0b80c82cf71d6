//! The agent's own `AgentHeartbeat` events (`[agent] heartbeat`), through
//! the real binary to real receivers on loopback: only subscriptions that
//! name the type get them, they say how the agent is, a change of state
//! sends one at once, and undelivered ones are superseded during an outage
//! (across a SIGKILL) while every business event is kept.

mod common;

use std::time::Duration;

use common::*;

/// Heartbeats the receiver got, in arrival order.
fn heartbeats(receiver: &Receiver) -> Vec<Request> {
    receiver
        .delivered()
        .into_iter()
        .filter(|r| r.event_type == "AgentHeartbeat")
        .collect()
}

#[test]
fn heartbeats_go_only_where_named_and_say_how_the_agent_is_and_what_changed() {
    let fleet = Receiver::start();
    let everything = Receiver::start();
    let mut erp = Receiver::start();
    let mut agent = Agent::with_agent_keys(
        "heartbeat = \"1h\"",
        &format!(
            "{}{}{}",
            subscription("fleet", &fleet.url(), "events = [\"AgentHeartbeat\"]"),
            subscription("all", &everything.url(), "events = \"*\""),
            subscription("erp", &erp.url(), "retry = { initial = \"100ms\", max = \"200ms\" }"),
        ),
    );
    agent.start();
    wait_until(Duration::from_secs(30), "the first heartbeat", || {
        !heartbeats(&fleet).is_empty()
    });
    let first = &heartbeats(&fleet)[0];
    assert_eq!(first.entity, "agent:till-03");
    assert_eq!(first.entity_seq, 1);
    let data = &first.json["data"];
    assert_eq!(data["reason"], "start", "{data}");
    assert_eq!(data["store_id"], "0042");
    assert_eq!(data["agent_id"], "till-03");
    assert_eq!(data["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(data["period_s"], 3600);
    assert!(data["uptime_s"].as_i64().is_some(), "{data}");
    assert!(data["db"]["bytes"].as_u64().is_some_and(|b| b > 0), "{data}");
    assert_eq!(data["db"]["max_bytes"], 2u64 * 1024 * 1024 * 1024);
    assert!(data["db"]["disk_free_bytes"].as_u64().is_some_and(|b| b > 0), "{data}");
    let names: Vec<&str> = data["subscriptions"]
        .as_array()
        .expect("subscriptions")
        .iter()
        .map(|s| s["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["all", "erp", "fleet"]);
    for s in data["subscriptions"].as_array().expect("subscriptions") {
        for field in ["state", "pending", "in_flight", "parked", "delivered_total"] {
            assert!(!s[field].is_null(), "{field} in {s}");
        }
    }

    // The erp endpoint goes away: a heartbeat says so at once (the period
    // is an hour).
    erp.shut();
    let sales = Events::new("hb-sale", 0..5, "SaleCreated");
    agent.send_events(&sales);
    wait_until(Duration::from_secs(30), "a heartbeat for the change", || {
        heartbeats(&fleet).iter().any(|h| h.json["data"]["reason"] == "change")
    });
    let change = heartbeats(&fleet)
        .into_iter()
        .find(|h| h.json["data"]["reason"] == "change")
        .expect("change");
    let changes = change.json["data"]["changes"].to_string();
    assert!(changes.contains("erp: online -> offline"), "{changes}");
    let erp_in_it = change.json["data"]["subscriptions"]
        .as_array()
        .expect("subscriptions")
        .iter()
        .find(|s| s["name"] == "erp")
        .expect("erp")
        .clone();
    assert_eq!(erp_in_it["state"], "offline", "{erp_in_it}");
    assert_eq!(erp_in_it["pending"], 5, "{erp_in_it}");

    // `"*"` takes the sales and no heartbeat; the fleet subscription takes
    // heartbeats only.
    wait_until(Duration::from_secs(30), "the sales on `all`", || {
        everything.delivered_count() == 5
    });
    assert!(heartbeats(&everything).is_empty());
    assert!(fleet.delivered().iter().all(|r| r.event_type == "AgentHeartbeat"));

    // Back online: another change.
    erp.restart();
    wait_until(Duration::from_secs(30), "a heartbeat for erp online again", || {
        heartbeats(&fleet)
            .iter()
            .any(|h| h.json["data"]["changes"].to_string().contains("erp: offline -> online"))
    });
    wait_until(Duration::from_secs(30), "the sales on erp", || {
        erp.delivered_count() == 5
    });
}

#[test]
fn an_outage_keeps_every_sale_and_only_the_newest_heartbeats_across_a_kill() {
    let mut central = Receiver::start();
    let mut agent = Agent::with_agent_keys(
        "heartbeat = \"1s\"",
        &subscription(
            "central",
            &central.url(),
            "events = [\"*\", \"AgentHeartbeat\"]\nretry = { initial = \"100ms\", max = \"300ms\" }",
        ),
    );
    agent.start();
    wait_until(Duration::from_secs(30), "a heartbeat delivered", || {
        !heartbeats(&central).is_empty()
    });
    central.shut();
    let before_outage = heartbeats(&central).len();
    let sales = Events::new("outage-sale", 0..40, "SaleCreated").spread_over("order", 4);
    agent.send_events(&sales);

    let stored_heartbeats = |agent: &Agent| -> i64 {
        agent
            .open_db()
            .query_row("SELECT COUNT(*) FROM events WHERE type = 'AgentHeartbeat'", [], |r| {
                r.get(0)
            })
            .expect("count")
    };
    let undelivered_heartbeats = |agent: &Agent| -> i64 {
        agent
            .open_db()
            .query_row(
                "SELECT COUNT(*) FROM deliveries d JOIN events e ON e.seq = d.event_seq
                 WHERE e.type = 'AgentHeartbeat' AND d.state <> 1",
                [],
                |r| r.get(0),
            )
            .expect("count")
    };
    let at_start = stored_heartbeats(&agent);
    wait_until(Duration::from_secs(60), "heartbeats during the outage", || {
        stored_heartbeats(&agent) >= at_start + 5
    });
    // The one on the wire (or waiting for its retry) and the newest, at most.
    assert!(
        undelivered_heartbeats(&agent) <= 2,
        "{}",
        undelivered_heartbeats(&agent)
    );

    // A kill during the outage changes nothing.
    agent.kill9();
    agent.start();
    let after_kill = stored_heartbeats(&agent);
    wait_until(Duration::from_secs(60), "heartbeats after the restart", || {
        stored_heartbeats(&agent) >= after_kill + 3
    });
    assert!(
        undelivered_heartbeats(&agent) <= 2,
        "{}",
        undelivered_heartbeats(&agent)
    );
    let s = agent.sub_status("central");
    assert!(s["pending"].as_i64().is_some_and(|p| p >= 40), "every sale waits: {s}");

    central.restart();
    wait_until(Duration::from_secs(60), "every sale delivered", || {
        central
            .delivered()
            .iter()
            .filter(|r| r.event_type == "SaleCreated")
            .count()
            == 40
    });
    // Every sale, in order per entity.
    for order in ["order:0", "order:1", "order:2", "order:3"] {
        let seqs: Vec<i64> = central
            .delivered()
            .iter()
            .filter(|r| r.entity == order)
            .map(|r| r.entity_seq)
            .collect();
        assert_eq!(seqs, (1..=10).collect::<Vec<i64>>(), "{order}");
    }
    // Heartbeats: a few, not one per second of the outage, in order, and
    // the newest stored one arrives.
    wait_until(Duration::from_secs(30), "heartbeats drained", || {
        undelivered_heartbeats(&agent) <= 1
    });
    let got = heartbeats(&central);
    let during = got.len() - before_outage;
    let stored = stored_heartbeats(&agent) as usize;
    assert!(
        during < stored - before_outage,
        "superseded: {during} heartbeats delivered for {stored} stored"
    );
    let seqs: Vec<i64> = got.iter().map(|h| h.entity_seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "heartbeats in order: {seqs:?}");
}
