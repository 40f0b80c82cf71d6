//! Hostile endpoints: one healthy, one answering 503 the whole time, one
//! misbehaving at random (500, 429 without Retry-After, 301, answers slower
//! than the timeout). The healthy one is not held up, order holds everywhere,
//! the down one keeps everything and is only probed.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn hostile_endpoints_do_not_hold_up_others_or_break_order() {
    let healthy = Receiver::start();
    let down = Receiver::start();
    down.answer_with(|_| Answer::status(503));
    let hostile = Receiver::start();
    let seen: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let faults = Arc::new(AtomicU64::new(0));
    {
        let (seen, faults) = (seen.clone(), faults.clone());
        hostile.answer_with(move |r| {
            let mut seen = seen.lock().unwrap();
            let n = seen.entry(r.id.clone()).or_insert(0);
            *n += 1;
            // Deterministic chaos: most events fail once or twice, in turn.
            let roll = (r.id.bytes().map(u64::from).sum::<u64>() + *n * 7) % 10;
            let answer = match roll {
                0 | 1 => Answer::status(500),
                2 => Answer::status(429),
                3 => Answer {
                    status: 301,
                    delay: Duration::ZERO,
                    headers: vec![("location".into(), "http://elsewhere/".into())],
                },
                4 => Answer {
                    status: 200,
                    delay: Duration::from_millis(700),
                    headers: vec![],
                },
                _ => Answer::ok(),
            };
            if answer.status != 200 || !answer.delay.is_zero() {
                faults.fetch_add(1, Ordering::Relaxed);
            }
            answer
        });
    }
    let retry = "timeout = \"300ms\"\nmax_in_flight = 8\nretry = { initial = \"50ms\", max = \"250ms\" }";
    let subs = format!(
        "{}{}{}",
        subscription("healthy", &healthy.url(), retry),
        subscription("down", &down.url(), retry),
        subscription("hostile", &hostile.url(), retry)
    );
    let mut agent = Agent::new(&subs);
    agent.start();
    let started = Instant::now();
    let lines: Vec<String> = (0..200)
        .map(|i| {
            event(
                &format!("h-{i}"),
                &format!("order:{}", i % 20),
                "CustomerOrderUpdated",
                serde_json::json!(i),
            )
        })
        .collect();
    assert!(send_lines(&agent.socket(), &lines).iter().all(|r| r["ok"] == true));

    wait_until(Duration::from_secs(60), "healthy got everything", || {
        healthy.delivered_ids().len() == 200
    });
    let healthy_done = started.elapsed();
    assert_entity_order(&healthy.delivered());
    wait_until(Duration::from_secs(120), "hostile got everything in the end", || {
        hostile.delivered_ids().len() == 200
    });
    assert_entity_order(&hostile.delivered());
    let elapsed = started.elapsed();

    // The down one: everything kept, and probed rather than hammered: one
    // first burst of at most max_in_flight, then one request per backoff
    // period (>= 50 ms, growing to 250 ms) while offline.
    let status = agent.status();
    let down_status = status["subscriptions"]
        .as_array()
        .expect("subs")
        .iter()
        .find(|s| s["name"] == "down")
        .expect("down")
        .clone();
    assert_eq!(down_status["pending"], 200, "{down_status}");
    assert_eq!(down_status["state"], "offline");
    let requests = down.requests().len();
    let bound = 8 + (elapsed.as_millis() / 50) as usize + 2;
    assert!(
        requests <= bound,
        "down endpoint probed {requests} times in {elapsed:?} (bound {bound})"
    );
    println!(
        "hostile: healthy done in {healthy_done:?}, hostile in {elapsed:?} after {} faults; down endpoint: {requests} requests for 200 waiting events",
        faults.load(Ordering::Relaxed)
    );
}
