//! Wall-clock jumps (an NTP correction, a wrong BIOS clock fixed while the
//! agent runs) must not break backoff, probing or order: timers use the
//! monotonic clock. libfaketime (Debian `faketime`) moves the wall clock of
//! the real agent process while the monotonic clock runs on.

mod common;

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
    let clock = agent.dir.path().join("faketime");
    std::fs::write(&clock, "+0").expect("clock file");
    let clock_text = clock.display().to_string();
    agent.start_with_env(&[
        ("LD_PRELOAD", LIBFAKETIME),
        ("FAKETIME_TIMESTAMP_FILE", clock_text.as_str()),
        ("FAKETIME_NO_CACHE", "1"),
        // Like NTP: only the wall clock moves.
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ]);
    let lines: Vec<String> = (0..100)
        .map(|i| {
            event(
                &format!("c-{i}"),
                &format!("till:{}", i % 10),
                "SaleCreated",
                serde_json::json!(i),
            )
        })
        .collect();
    assert!(send_lines(&agent.socket(), &lines).iter().all(|r| r["ok"] == true));
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
