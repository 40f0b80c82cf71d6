//! The endpoint's word is for the whole subscription: a 429 pauses every
//! entity until its `Retry-After`, a 410 stops the subscription (state
//! `gone`, nothing dropped or parked, across restarts) until `store-outbox
//! resume` or a changed config. The real binary, through the WAN link.

mod common;

use std::time::Duration;

use common::wan::Link;
use common::*;

/// (attempt start ms, duration ms, status) of every attempt, oldest first.
fn attempts(agent: &Agent) -> Vec<(i64, i64, Option<i64>)> {
    let db = agent.open_db();
    let mut stmt = db
        .prepare("SELECT at, duration_ms, status FROM attempts ORDER BY at, id")
        .expect("attempts query");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("attempts")
        .collect::<Result<_, _>>()
        .expect("rows")
}

#[test]
fn a_429_pauses_every_entity_of_the_subscription_until_retry_after() {
    let rx = Receiver::start();
    rx.answer_first(Answer::status(429).header("retry-after", "3"));
    let wan = rx.behind(Link::STORE_UPLINK);
    let mut agent = Agent::new(&subscription(
        "erp",
        &rx.url_via(&wan),
        // retry.max above the Retry-After: it is clamped to retry.max.
        "max_in_flight = 4\nretry = { initial = \"100ms\", max = \"5s\" }",
    ));
    agent.start();
    agent.send_events(&Events::new("t", 0..40, "SaleCreated").spread_over("till", 8));
    wait_until(Duration::from_secs(60), "40 delivered after the pause", || {
        rx.delivered_ids().len() == 40
    });
    assert_eq!(assert_entity_order(&rx.delivered()), 0, "in order, no duplicates");

    let all = attempts(&agent);
    let (at, took, _) = *all.iter().find(|a| a.2 == Some(429)).expect("the 429 is recorded");
    let heard = at + took;
    // Requests already on the wire finish; at most the other request slots
    // (3) could start in the instant before the answer was taken in. None
    // starts during the pause, whatever entity it is for.
    let during: Vec<_> = all.iter().filter(|a| a.0 > heard + 50 && a.0 < heard + 2_950).collect();
    assert!(
        during.is_empty(),
        "no request during the 3 s pause: {during:?}\nall: {all:?}"
    );
    let started_while_heard = all.iter().filter(|a| a.0 >= heard && a.0 <= heard + 50).count();
    assert!(started_while_heard <= 3, "{all:?}");
    assert!(
        all.iter().any(|a| a.0 >= heard + 2_950 && a.2 == Some(200)),
        "sending resumed after Retry-After"
    );
}

#[test]
fn a_410_stops_the_subscription_across_restarts_until_resume_with_nothing_dropped_or_parked() {
    let rx = Receiver::start();
    rx.answer_with(|_| Answer::status(410));
    let wan = rx.behind(Link::STORE_UPLINK);
    let (mut agent, admin) = Agent::with_admin_token(
        "tok",
        &subscription(
            "erp",
            &rx.url_via(&wan),
            "max_in_flight = 2\n retry = { initial = \"100ms\", max = \"200ms\", give_up_after = \"0s\" }",
        ),
    );
    agent.start();
    agent.send_events(&Events::new("g", 0..12, "SaleCreated").spread_over("till", 3));
    wait_until(Duration::from_secs(30), "state gone", || {
        agent.sub_status("erp")["state"] == "gone"
    });
    // Requests on the wire finish; then nothing more goes.
    std::thread::sleep(Duration::from_millis(500));
    let asked = rx.request_count();
    assert!(
        (1..=2).contains(&asked),
        "at most the requests already on the wire: {asked}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(rx.request_count(), asked, "nothing is sent while gone");
    let sub = agent.sub_status("erp");
    assert_eq!(sub["pending"], 12, "nothing dropped: {sub}");
    assert_eq!(sub["parked"], 0, "nothing parked, even with give_up_after = 0s: {sub}");
    assert!(sub["last_error"].as_str().unwrap_or_default().contains("410"), "{sub}");
    let metrics = http(admin, "GET", "/metrics", &[], b"").text();
    assert!(
        metrics.contains("store_outbox_subscription_gone{subscription=\"erp\"} 1"),
        "{metrics}"
    );
    let first = rx.requests()[0].id.clone();
    let show = agent.cli(&["show", &first, "--json"]);
    assert!(
        String::from_utf8_lossy(&show.stdout).contains("410"),
        "show lists the 410 attempt"
    );

    // A restart on the same config stays stopped.
    agent.stop();
    agent.start();
    wait_until(Duration::from_secs(30), "gone again after the restart", || {
        agent.sub_status("erp")["state"] == "gone"
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(rx.request_count(), asked, "nothing sent after the restart either");

    // The endpoint is back; the operator resumes, the agent still running.
    rx.answer_with(|_| Answer::ok());
    let out = agent.cli(&["resume", "erp"]);
    assert!(out.status.success(), "resume: {}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("resumed erp"));
    wait_until(Duration::from_secs(60), "all 12 delivered after resume", || {
        rx.delivered_ids().len() == 12
    });
    assert_eq!(assert_entity_order(&rx.delivered()), 0);
    wait_until(Duration::from_secs(10), "online", || {
        agent.sub_status("erp")["state"] == "online"
    });
    let again = agent.cli(&["resume", "erp"]);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("not stopped"));
    let unknown = agent.cli(&["resume", "nope"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        stderr(&unknown).contains("\"nope\": no such subscription"),
        "{}",
        stderr(&unknown)
    );
}

#[test]
fn a_changed_config_resumes_a_subscription_stopped_by_410() {
    let old = Receiver::start();
    old.answer_with(|_| Answer::status(410));
    let mut agent = Agent::new(&subscription("erp", &old.url(), ""));
    agent.start();
    agent.send_events(&Events::new("c", 0..5, "SaleCreated").entity("order:1"));
    wait_until(Duration::from_secs(30), "state gone", || {
        agent.sub_status("erp")["state"] == "gone"
    });
    agent.stop();
    let moved = Receiver::start();
    agent.write_config(&subscription("erp", &moved.url(), ""));
    agent.start();
    wait_until(Duration::from_secs(30), "5 delivered to the new url", || {
        moved.delivered_ids().len() == 5
    });
    assert_eq!(assert_entity_order(&moved.delivered()), 0);
    assert_eq!(agent.sub_status("erp")["state"], "online");
}

#[test]
fn adaptive_concurrency_starts_at_one_request_and_grows_while_answers_stay_fast() {
    let rx = Receiver::start();
    rx.answer_with(|_| Answer::ok().after(Duration::from_millis(60)));
    let wan = rx.behind(Link::STORE_UPLINK);
    let mut agent = Agent::new(&subscription(
        "erp",
        &rx.url_via(&wan),
        "max_in_flight = 8\nconcurrency = \"adaptive\"",
    ));
    agent.start();
    agent.send_events(&Events::new("a", 0..300, "SaleCreated").spread_over("till", 40));
    wait_until(Duration::from_secs(120), "300 delivered", || {
        rx.delivered_ids().len() == 300
    });
    assert_eq!(assert_entity_order(&rx.delivered()), 0);
    let requests = rx.requests();
    // The limit starts at one: the second request waits for the first answer.
    assert!(
        requests[1].at >= requests[0].at + Duration::from_millis(60),
        "{:?}",
        requests[1].at - requests[0].at
    );
    // It grew: later, several requests were answered at the same time.
    let overlapping = requests
        .windows(4)
        .filter(|w| w[3].at < w[0].at + Duration::from_millis(60))
        .count();
    assert!(overlapping > 0, "up to 8 on the wire once answers stay fast");
}

#[test]
fn a_resume_right_after_the_410_is_not_undone_by_the_scheduler() {
    // The scheduler has the writer store its 410 marker and looks at it on
    // its next tick; an operator quick enough to resume in between used to
    // have the marker written again, and the subscription stayed gone.
    let rx = Receiver::start();
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let once = answered.clone();
    rx.answer_with(move |_| {
        if once.swap(true, std::sync::atomic::Ordering::SeqCst) {
            Answer::ok()
        } else {
            Answer::status(410)
        }
    });
    let mut agent = Agent::new(&subscription("erp", &rx.url(), "max_in_flight = 1"));
    agent.start();
    agent.send_events(&Events::new("q", 0..3, "SaleCreated").entity("till:1"));
    let db = agent.open_db();
    let marker = || -> Option<String> {
        db.query_row("SELECT value FROM meta WHERE key LIKE 'gone:%'", [], |r| r.get(0))
            .ok()
    };
    wait_until(Duration::from_secs(30), "the 410 marker stored", || marker().is_some());
    let out = agent.cli(&["resume", "erp"]);
    assert!(out.status.success(), "resume: {}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("resumed erp"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    wait_until(Duration::from_secs(30), "all 3 delivered after the resume", || {
        rx.delivered_ids().len() == 3
    });
    // Past a few scheduler ticks: still resumed.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(marker(), None, "the marker was not written again");
    assert_eq!(agent.sub_status("erp")["state"], "online");
    assert_eq!(assert_entity_order(&rx.delivered()), 0);
}
