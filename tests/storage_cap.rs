//! The storage cap (issue 17): when an event would not fit under
//! `storage.max_db_bytes`, delivered events go first, in the writer's own
//! turn; new events are refused with `storage_full` only when nothing
//! delivered is left to delete, and nothing acknowledged is ever lost.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;

const CAP: u64 = 3 * 1024 * 1024;

/// A payload of about 2 KiB, so a few hundred events cross the cap.
fn bulky(i: usize) -> serde_json::Value {
    serde_json::json!({"n": i, "text": "p".repeat(2000)})
}

/// Used bytes of the agent's database (pages in use, as the writer counts).
fn used_bytes(agent: &Agent) -> u64 {
    agent.open_db()
        .query_row(
            "SELECT (page_count - freelist_count) * page_size FROM pragma_page_count, pragma_freelist_count, pragma_page_size",
            [],
            |r| r.get::<_, i64>(0),
        )
        .expect("used bytes") as u64
}

/// Sends `events` over the socket `per_connection` lines at a time; returns
/// the ids acknowledged and the error codes of the refused ones.
fn send_in_groups(agent: &Agent, events: &Events, per_connection: usize) -> (Vec<String>, Vec<String>) {
    let mut acked = Vec::new();
    let mut refused = Vec::new();
    for group in events.lines().chunks(per_connection) {
        for reply in send_lines(&agent.socket(), group) {
            if reply["ok"] == true {
                acked.push(reply["event_id"].as_str().expect("event_id").to_string());
            } else {
                refused.push(reply["error"]["code"].as_str().unwrap_or("?").to_string());
            }
        }
    }
    (acked, refused)
}

/// Every event id stored, and how many of them every subscription got.
fn stored(agent: &Agent) -> (HashSet<String>, i64) {
    let db = agent.open_db();
    let ids = db
        .prepare("SELECT event_id FROM events")
        .expect("query")
        .query_map([], |r| r.get::<_, String>(0))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("ids");
    let delivered: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM events e WHERE NOT EXISTS
               (SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq AND d.state <> 1)",
            [],
            |r| r.get(0),
        )
        .expect("delivered count");
    (ids, delivered)
}

#[test]
fn delivered_events_past_retention_make_room_before_anything_is_refused() {
    let rx = Receiver::start();
    let sub = subscription("erp", &rx.url(), "");
    let mut agent = Agent::new(&format!(
        "[storage]\nmax_db_bytes = \"3MiB\"\nretain_delivered = \"1s\"\n{sub}"
    ));
    agent.start();

    // Fill the outbox to just under the cap, every event delivered. Groups
    // of 20 (about 50 KiB) stop 100 KiB short, so none of them is refused.
    let mut first = Vec::new();
    let mut next = 0;
    while used_bytes(&agent) < CAP - 100 * 1024 {
        let events = Events::new("fill", next..next + 20, "SaleCreated")
            .spread_over("till", 7)
            .payload(bulky);
        first.extend(agent.send_events(&events).iter().map(|r| r["event_id"].to_string()));
        next += 20;
        assert!(next < 5000, "the outbox never filled up");
    }
    assert!(first.len() > 500, "filled with {} events", first.len());
    wait_until(Duration::from_secs(60), "every event delivered", || {
        rx.delivered_count() >= first.len()
    });
    // Past retain_delivered, so every stored event may go.
    std::thread::sleep(Duration::from_millis(1500));

    // The scenario: 300 more events, which do not fit beside the
    // delivered ones. All are accepted.
    let more = Events::new("more", 0..300, "SaleCreated")
        .spread_over("till", 7)
        .payload(bulky);
    let (acked, refused) = send_in_groups(&agent, &more, 10);
    assert_eq!(refused, Vec::<String>::new(), "no event refused");
    assert_eq!(acked.len(), 300);

    // None lost: all 300 are delivered, in order per entity, and so were the
    // first ones; delivered events were pruned to make the room.
    wait_until(Duration::from_secs(60), "the 300 delivered", || {
        let got = rx.delivered_ids();
        acked.iter().all(|id| got.contains(id))
    });
    let got = rx.delivered_ids();
    assert_eq!(got.len(), first.len() + 300, "every event delivered once at least");
    assert_entity_order(&rx.delivered());
    let (ids, _) = stored(&agent);
    assert!(
        ids.len() < first.len() + 300,
        "delivered events were pruned: {} stored",
        ids.len()
    );
    let used = used_bytes(&agent);
    assert!(
        used < CAP + 256 * 1024,
        "the cap held within a batch: {used} bytes used"
    );
    assert!(!agent.log().contains("outbox is full"), "{}", agent.log());
}

#[test]
fn with_nothing_delivered_left_new_events_are_refused_and_the_acknowledged_kept() {
    let mut rx = Receiver::start();
    let sub = subscription("erp", &rx.url(), "retry = { initial = \"100ms\", max = \"300ms\" }");
    let mut agent = Agent::new(&format!(
        "[storage]\nmax_db_bytes = \"600KiB\"\nretain_delivered = \"1h\"\n{sub}"
    ));
    agent.start();

    // Some delivered events first: they must go before anything is refused.
    let early = Events::new("early", 0..60, "SaleCreated")
        .spread_over("till", 3)
        .payload(bulky);
    agent.send_events(&early);
    wait_until(Duration::from_secs(60), "the early events delivered", || {
        rx.delivered_count() >= 60
    });

    // The endpoint goes down: new events pile up until nothing delivered is
    // left to delete, then they are refused.
    rx.shut();
    let (acked, refused) = agent.fill_until_refused("late", 3, bulky);
    assert_eq!(refused, 3, "the outbox filled up after {} events", acked.len());
    // A 2 KiB event fills a 4 KiB page: 600 KiB hold about 140 events, so
    // beside the 60 early ones only about 80 late ones would fit. More went
    // in: the late events took the early ones' room.
    assert!(acked.len() > 110, "{} acknowledged", acked.len());
    let (code, body) = agent.http_post(event("late-http", "till:9", "SaleCreated", bulky(0)).as_bytes());
    assert_eq!(code, 507, "{body}");
    assert_eq!(body["results"][0]["error"]["code"], "storage_full", "{body}");

    // Every acknowledged event is kept; only delivered ones went.
    let (ids, delivered) = stored(&agent);
    assert_eq!(delivered, 0, "every delivered event was pruned to make room");
    assert_eq!(ids, acked, "exactly the acknowledged undelivered events are stored");

    // Back up: everything acknowledged arrives.
    rx.restart();
    wait_until(Duration::from_secs(120), "all acknowledged delivered", || {
        acked.is_subset(&rx.delivered_ids())
    });
    assert_entity_order(&rx.delivered());
    // Status says so soon after, not at the pruner's next round a minute
    // later: delivered events are pruned as soon as they are delivered.
    wait_until(Duration::from_secs(20), "status no longer full", || {
        agent.status()["db"]["full"] == false
    });
    let reply = &send_lines(&agent.socket(), &[event("after", "till:1", "SaleCreated", bulky(0))])[0];
    assert_eq!(reply["ok"], true, "{reply}");
}
