//! Wall-clock jumps (an NTP correction, a wrong BIOS clock fixed while the
//! agent runs) must not break backoff, probing or order: timers use the
//! monotonic clock. libfaketime (Debian `faketime`) moves the wall clock of
//! the real agent process while the monotonic clock runs on.
//!
//! `retry.give_up_after` and `storage.retain_delivered` are wall-clock
//! deadlines on purpose (a time a person can read). The second test documents
//! what a forward jump of days does to them: a failing delivery is parked
//! (kept, listed, resendable; never dropped), a delivered event may be pruned
//! early, a pending or parked one never is.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

#[test]
fn wall_clock_jumps_do_not_break_probing_or_order() {
    assert!(
        std::path::Path::new(LIBFAKETIME).exists(),
        "libfaketime missing: apt-get install faketime (.ci/run does it)"
    );
    let rx = Receiver::start();
    rx.answer_with(|_| Answer::status(503));
    let mut agent = Agent::new(&subscription(
        "erp",
        &rx.url(),
        "retry = { initial = \"100ms\", max = \"300ms\" }",
    ));
    let clock = start_on_a_fake_clock(&mut agent);
    agent.send_events(&Events::new("c", 0..100, "SaleCreated").spread_over("till", 10));
    std::thread::sleep(Duration::from_millis(800));
    // Two days forward, then one back, while the endpoint is down.
    std::fs::write(&clock, "+2d").expect("jump");
    std::thread::sleep(Duration::from_millis(800));
    std::fs::write(&clock, "-1d").expect("jump back");
    std::thread::sleep(Duration::from_millis(800));
    // The jump really happened inside the agent: attempts were stamped
    // in the future.
    let latest: i64 = agent
        .open_db()
        .query_row("SELECT MAX(at) FROM attempts", [], |r| r.get(0))
        .expect("attempts");
    assert!(
        latest > store_outbox::outbox::now_ms() + 20 * 3_600_000,
        "the agent's wall clock moved"
    );
    let probes = rx.requests().len();
    // About 2.4 s offline at a 100-300 ms pace, plus the first burst of 16.
    assert!(
        probes <= 16 + 2400 / 100 + 2,
        "still probing at the backoff pace after the jumps: {probes}"
    );
    assert!(probes >= 3, "and still probing: {probes}");
    // Events ingested after the jump get entity_seq after the earlier ones.
    let late = event("c-late", "till:1", "SaleCreated", serde_json::json!("late"));
    assert_eq!(send_lines(&agent.socket(), &[late])[0]["entity_seq"], 11);
    rx.answer_with(|_| Answer::ok());
    wait_until(Duration::from_secs(60), "drained after the jumps", || {
        rx.delivered_ids().len() == 101
    });
    assert_entity_order(&rx.delivered());
    let last = rx
        .delivered()
        .into_iter()
        .rfind(|r| r.entity == "till:1")
        .expect("till:1");
    assert_eq!(
        last.id, "c-late",
        "order by entity_seq, not by the (jumping) wall clock"
    );
}

/// The environment that runs the agent under libfaketime, its wall clock
/// set by the file `clock` (`+0`, `+2d`, `-1d`, …).
fn faketime_env(clock: &str) -> [(&str, &str); 4] {
    [
        ("LD_PRELOAD", LIBFAKETIME),
        ("FAKETIME_TIMESTAMP_FILE", clock),
        ("FAKETIME_NO_CACHE", "1"),
        // Like NTP: only the wall clock moves.
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ]
}

/// Starts the agent on a fake wall clock at `+0`; returns the clock file.
fn start_on_a_fake_clock(agent: &mut Agent) -> std::path::PathBuf {
    let clock = agent.dir.path().join("faketime");
    std::fs::write(&clock, "+0").expect("clock file");
    agent.start_with_env(&faketime_env(&clock.display().to_string()));
    clock
}

fn stored_ids(agent: &Agent) -> HashSet<String> {
    let db = agent.open_db();
    let mut stmt = db.prepare("SELECT event_id FROM events").expect("prepare");
    let ids = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect();
    ids
}

#[test]
fn a_forward_jump_of_days_parks_failing_deliveries_and_prunes_only_delivered_events() {
    assert!(
        std::path::Path::new(LIBFAKETIME).exists(),
        "libfaketime missing: apt-get install faketime (.ci/run does it)"
    );
    // erp refuses everything (500) and gives up after a day; crm takes
    // everything. Delivered events are kept 2 days.
    let erp = Receiver::start();
    erp.answer_with(|_| Answer::status(500));
    let crm = Receiver::start();
    let retry = "retry = { initial = \"100ms\", max = \"300ms\", give_up_after = \"1d\" }";
    let subs = format!(
        "[storage]\nretain_delivered = \"2d\"\n{}{}",
        subscription("erp", &erp.url(), &format!("events = [\"SaleCreated\"]\n{retry}")),
        subscription("crm", &crm.url(), retry)
    );
    let mut agent = Agent::new(&subs);
    let clock = start_on_a_fake_clock(&mut agent);

    // 30 sales (both subscriptions) over 3 tills, 20 stock movements (crm only).
    agent.send_events(&Events::new("sale", 0..30, "SaleCreated").spread_over("till", 3));
    agent.send_events(&Events::new("move", 0..20, "StockMovementCreated").entity("stock:1"));
    wait_until(Duration::from_secs(60), "crm got everything", || {
        crm.delivered_ids().len() == 50
    });
    std::thread::sleep(Duration::from_millis(800));
    let before = agent.sub_status("erp");
    assert_eq!(before["pending"], 30, "{before}");
    assert_eq!(before["parked"], 0, "not failing for a day yet: {before}");

    // Three days forward: the next failed attempt of each till's head is
    // past give_up_after (first failure + 1 day, in wall-clock time).
    std::fs::write(&clock, "+3d").expect("jump");
    wait_until(Duration::from_secs(30), "each till's head parked", || {
        agent.sub_status("erp")["parked"] == 3
    });
    std::thread::sleep(Duration::from_millis(800));
    let after = agent.sub_status("erp");
    assert_eq!(
        after["parked"], 3,
        "one head per till, the rest waits behind it: {after}"
    );
    assert_eq!(after["pending"], 27, "{after}");
    let listed = agent.cli(&["events", "--state", "parked", "--subscription", "erp", "--json"]);
    assert!(listed.status.success());
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("events JSON");
    println!("clock jump: parked after +3d: {listed}");
    let requests_parked = erp.requests().len();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        erp.requests().len(),
        requests_parked,
        "parked tills are not sent any more"
    );

    // Retention runs at start and every minute: restart (clock still +3d)
    // for a round now. The stock movements, delivered to their only
    // subscription, are past retain_delivered in the agent's time: pruned
    // early. Every sale is kept: none is delivered everywhere.
    assert!(agent.stop().success());
    agent.start_with_env(&faketime_env(&clock.display().to_string()));
    let all_sales: HashSet<String> = (0..30).map(|i| format!("sale-{i}")).collect();
    wait_until(Duration::from_secs(30), "delivered stock movements pruned", || {
        !stored_ids(&agent).iter().any(|id| id.starts_with("move-"))
    });
    let stored = stored_ids(&agent);
    assert_eq!(stored, all_sales, "every pending or parked event kept, nothing else");
    let after_restart = agent.sub_status("erp");
    assert_eq!(after_restart["parked"], 3, "{after_restart}");
    assert_eq!(after_restart["pending"], 27, "{after_restart}");
    let shown = agent.cli(&["show", "move-0"]);
    assert_eq!(shown.status.code(), Some(1), "a pruned event is gone");

    // The cause is fixed, the parked deliveries are resent: every sale
    // reaches erp, in order per till.
    erp.answer_with(|_| Answer::ok());
    let resent = agent.cli(&["resend", "--parked"]);
    assert!(resent.status.success(), "{}", String::from_utf8_lossy(&resent.stderr));
    wait_until(Duration::from_secs(60), "erp got every sale after the resend", || {
        erp.delivered_ids() == all_sales
    });
    let duplicates = assert_entity_order(&erp.delivered());
    // The receiver has the last one before the agent has committed its 2xx.
    wait_until(Duration::from_secs(30), "erp's backlog empty in status", || {
        let last = agent.sub_status("erp");
        last["pending"] == 0 && last["parked"] == 0
    });
    println!(
        "clock jump: +3d with give_up_after = 1d: 3 deliveries parked (one per till), 27 waiting behind them, \
         0 dropped; restart at +3d with retain_delivered = 2d: 20 delivered events pruned early, 30 pending/parked \
         kept; after resend --parked: 30 delivered to erp, {duplicates} duplicates, 0 order violations"
    );
}
