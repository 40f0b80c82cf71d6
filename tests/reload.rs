//! Reload (SIGHUP, `systemctl reload`): subscriptions added, removed and
//! changed while events flow, with nothing lost, repeated or reordered; an
//! invalid config kept out; a hangup that no longer ends the agent.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// A producer thread sending batches of events over the socket until told
/// to stop; keeps the acknowledged ids, in order.
struct Producer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Producer {
    fn start(socket: std::path::PathBuf, entities: usize) -> Producer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (s, a) = (stop.clone(), acked.clone());
        let thread = std::thread::spawn(move || {
            let mut batch = 0;
            while !s.load(Ordering::Relaxed) {
                let events = Events::new(&format!("load-{batch}"), 0..40, "SaleCreated").spread_over("till", entities);
                let lines = events.lines();
                let replies = send_lines(&socket, &lines);
                let mut acked = a.lock().unwrap();
                for (line, reply) in lines.iter().zip(replies) {
                    assert_eq!(reply["ok"], true, "acknowledged: {line} -> {reply}");
                    acked.push(reply["event_id"].as_str().expect("event_id").to_string());
                }
                drop(acked);
                batch += 1;
                std::thread::sleep(Duration::from_millis(15));
            }
        });
        Producer {
            stop,
            acked,
            thread: Some(thread),
        }
    }

    fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Stops and returns every acknowledged id.
    fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("producer thread");
        }
        self.acked.lock().unwrap().clone()
    }
}

/// Waits until the producer acknowledged `more` events beyond now.
fn let_flow(producer: &Producer, more: usize) {
    let target = producer.acked_count() + more;
    wait_until(Duration::from_secs(60), "events to flow", || {
        producer.acked_count() >= target
    });
}

fn delivered_with_header<'a>(rx: &'a Receiver, name: &str, value: &str) -> impl Iterator<Item = Request> + 'a {
    let (name, value) = (name.to_string(), value.to_string());
    rx.delivered()
        .into_iter()
        .filter(move |r| r.headers.get(&name).map(String::as_str) == Some(value.as_str()))
}

fn pending_rows(agent: &Agent, name: &str) -> i64 {
    agent
        .open_db()
        .query_row(
            "SELECT COUNT(*) FROM deliveries d JOIN subscriptions s ON s.id = d.sub_id WHERE s.name = ?1 AND d.state = 0",
            [name],
            |r| r.get(0),
        )
        .expect("count")
}

#[test]
fn reloads_under_load_add_remove_and_change_subscriptions_without_losing_or_reordering() {
    let erp = Receiver::start();
    // Slow enough answers that requests are on the wire at every reload.
    erp.answer_with(|_| Answer::ok().after(Duration::from_millis(20)));
    let bi = Receiver::start();
    let audit = Receiver::start();
    let erp_sub = |generation: &str, in_flight: usize| {
        subscription(
            "erp",
            &erp.url(),
            &format!("max_in_flight = {in_flight}\nheaders = {{ \"x-generation\" = \"{generation}\" }}"),
        )
    };
    let bi_sub = subscription("bi", &bi.url(), "");
    let audit_sub = subscription("audit", &audit.url(), "");

    let mut agent = Agent::new(&format!("{}{bi_sub}", erp_sub("1", 4)));
    agent.start();
    let producer = Producer::start(agent.socket(), 12);
    let_flow(&producer, 200);

    // 1. Added: starts, and gets the events stored before it came.
    let line = agent.reload(&format!("{}{bi_sub}{audit_sub}", erp_sub("1", 4)));
    assert!(
        line.contains("config reloaded") && line.contains("added audit"),
        "{line}"
    );
    let_flow(&producer, 200);

    // 2. Changed (a header and max_in_flight): stops once its requests in
    //    flight are recorded, goes on with the new settings.
    let line = agent.reload(&format!("{}{bi_sub}{audit_sub}", erp_sub("2", 8)));
    assert!(line.contains("changed erp"), "{line}");
    let_flow(&producer, 200);

    // 3. Removed: stops, its rows stay.
    let line = agent.reload(&format!("{}{audit_sub}", erp_sub("2", 8)));
    assert!(line.contains("removed bi"), "{line}");
    let bi_after_removal = bi.request_count();
    let_flow(&producer, 200);

    // 4. Changed again, and the same file once more (nothing changes).
    let line = agent.reload(&format!("{}{audit_sub}", erp_sub("3", 2)));
    assert!(line.contains("changed erp"), "{line}");
    let line = agent.reload(&format!("{}{audit_sub}", erp_sub("3", 2)));
    assert!(line.contains("no subscription changed"), "{line}");
    let_flow(&producer, 200);

    let acked = producer.finish();
    let all: HashSet<String> = acked.iter().cloned().collect();
    assert_eq!(all.len(), acked.len(), "every id acknowledged once");
    for (rx, name) in [(&erp, "erp"), (&audit, "audit")] {
        wait_until(Duration::from_secs(120), &format!("{name} got every event"), || {
            rx.delivered_ids().len() >= all.len()
        });
        assert_eq!(rx.delivered_ids(), all, "{name}: exactly the acknowledged events");
        let delivered = rx.delivered();
        let duplicates = assert_entity_order(&delivered);
        assert_eq!(duplicates, 0, "{name}: nothing in flight at a reload was sent twice");
    }
    // The new settings took effect, and the old ones stopped at a point:
    // after the first request with generation 3, none with an older one.
    let requests = erp.requests();
    let first_gen3 = requests
        .iter()
        .position(|r| r.headers.get("x-generation").map(String::as_str) == Some("3"))
        .expect("requests with the last settings");
    assert!(
        requests[first_gen3..]
            .iter()
            .all(|r| r.headers.get("x-generation").map(String::as_str) == Some("3")),
        "no request with old settings after the change"
    );
    assert!(delivered_with_header(&erp, "x-generation", "1").count() > 0);
    assert!(delivered_with_header(&erp, "x-generation", "2").count() > 0);

    // The removed subscription got nothing after its scheduler stopped; its
    // rows are kept (pending ones wait for it to come back).
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        bi.request_count(),
        bi_after_removal,
        "nothing sent to a removed subscription"
    );
    assert_entity_order(&bi.delivered());
    let bi_status = agent.sub_status("bi");
    assert_eq!(bi_status["configured"], false, "{bi_status}");
    assert_eq!(bi_status["state"], "unconfigured", "{bi_status}");
    let bi_rows: i64 = agent
        .open_db()
        .query_row(
            "SELECT COUNT(*) FROM deliveries d JOIN subscriptions s ON s.id = d.sub_id WHERE s.name = 'bi'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert!(
        bi_rows as usize >= bi.delivered_ids().len() && (bi_rows as usize) < all.len(),
        "bi keeps the rows of the events before its removal and gets none after ({bi_rows} of {})",
        all.len()
    );
    assert_eq!(
        pending_rows(&agent, "bi") as usize,
        bi_rows as usize - bi.delivered_ids().len(),
        "what bi did not get waits for it"
    );

    // Re-added: it gets what waited and what came while it was gone, in order.
    let line = agent.reload(&format!("{}{audit_sub}{bi_sub}", erp_sub("3", 2)));
    assert!(line.contains("added bi"), "{line}");
    wait_until(Duration::from_secs(120), "bi got every event", || {
        bi.delivered_ids().len() >= all.len()
    });
    assert_eq!(bi.delivered_ids(), all);
    assert_entity_order(&bi.delivered());
    assert!(agent.stop().success(), "{}", agent.log());
}

#[test]
fn an_invalid_config_is_not_applied_and_status_says_so_until_a_good_reload() {
    let erp = Receiver::start();
    let bi = Receiver::start();
    let erp_sub = subscription("erp", &erp.url(), "");
    let mut agent = Agent::new(&erp_sub);
    agent.start();
    agent.send_events(&Events::new("before", 0..20, "SaleCreated"));

    // The bad key is on line 4 of the subscription section appended to the
    // generated [agent]/[ingest]/[admin] part.
    let bad = format!(
        "{erp_sub}[[subscription]]\nname = \"bi\"\nurl = \"{}\"\nmax_in_flight = \"many\"\n",
        bi.url()
    );
    let line = agent.reload(&bad);
    assert!(line.contains("config reload failed"), "{line}");
    let config_path = agent.config.display().to_string();
    assert!(line.contains(&config_path), "names the file: {line}");
    assert!(line.contains("line "), "names the line: {line}");
    assert!(line.contains("subscription[1].max_in_flight"), "names the key: {line}");

    // While the file does not parse, the CLI cannot read it either: the
    // admin API and the page tell.
    let (code, status) = http_request(agent.admin_port.get(), "GET", "/v1/status", b"");
    assert_eq!(code, 200);
    let failed = &status["reload_failed"];
    let error = failed["error"].as_str().expect("reload_failed.error");
    assert!(
        error.contains(&config_path) && error.contains("subscription[1].max_in_flight"),
        "{status}"
    );
    assert!(failed["at"].as_str().is_some_and(|t| t.ends_with('Z')), "{status}");
    let page = http(agent.admin_port.get(), "GET", "/", &[], b"").text();
    assert!(
        page.contains("Reload failed at ") && page.contains("max_in_flight"),
        "{page}"
    );

    // A file that parses, with a subscription that cannot be built (its CA
    // file is missing): not applied either, nothing stopped.
    let line = agent.reload(&format!(
        "{erp_sub}{}",
        subscription("bi", &bi.url(), "ca_file = \"missing-ca.pem\"")
    ));
    assert!(
        line.contains("config reload failed") && line.contains("\"bi\""),
        "{line}"
    );
    let status = agent.status();
    assert!(
        status["reload_failed"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("bi")),
        "{status}"
    );
    let table = String::from_utf8_lossy(&agent.cli(&["status"]).stdout).into_owned();
    assert!(
        table.contains("reload failed at ") && table.contains("runs on its previous config"),
        "{table}"
    );

    // The old config goes on: erp delivers, bi was not started.
    agent.send_events(&Events::new("during", 0..20, "SaleCreated"));
    wait_until(Duration::from_secs(60), "erp got the 40 events", || {
        erp.delivered_ids().len() == 40
    });
    assert!(
        !agent.status()["subscriptions"]
            .as_array()
            .expect("subscriptions")
            .iter()
            .any(|s| s["name"] == "bi"),
        "bi is not registered"
    );
    assert_eq!(bi.request_count(), 0);

    // A good reload applies and clears the failure.
    let good = format!("{erp_sub}{}", subscription("bi", &bi.url(), ""));
    let line = agent.reload(&good);
    assert!(line.contains("config reloaded") && line.contains("added bi"), "{line}");
    assert!(agent.status()["reload_failed"].is_null());
    wait_until(Duration::from_secs(60), "bi got the 40 stored events", || {
        bi.delivered_ids().len() == 40
    });
    assert_entity_order(&bi.delivered());
    assert!(agent.stop().success());
}

#[test]
fn sighup_no_longer_ends_the_agent_and_restart_only_keys_are_named() {
    let erp = Receiver::start();
    let erp_sub = subscription("erp", &erp.url(), "");
    let mut agent = Agent::new(&erp_sub);
    agent.start();
    // The same file: nothing to do, the agent lives on.
    let line = agent.reload(&erp_sub);
    assert!(line.contains("no subscription changed"), "{line}");
    // A key read only at start: named in the log, not applied.
    let line = agent.reload(&format!(
        "[storage]\nretain_delivered = \"1d\"\nmax_db_bytes = \"64MiB\"\n{erp_sub}"
    ));
    assert!(line.contains("config reloaded"), "{line}");
    let log = agent.log();
    assert!(
        log.lines()
            .any(|l| l.contains("storage.retain_delivered") && l.contains("restart")),
        "{log}"
    );
    assert!(
        agent
            .child
            .as_mut()
            .expect("running")
            .try_wait()
            .expect("wait")
            .is_none(),
        "still running"
    );
    agent.send_events(&Events::new("after", 0..10, "SaleCreated"));
    wait_until(Duration::from_secs(60), "delivered", || erp.delivered_ids().len() == 10);
    assert!(agent.stop().success());
}

#[test]
fn a_reload_tells_systemd_reloading_then_ready() {
    let erp = Receiver::start();
    let mut agent = Agent::new(&subscription("erp", &erp.url(), ""));
    let notify = NotifySocket::bind(agent.dir.path());
    agent.start_with_env(&[notify.env()]);
    notify.messages(Duration::from_secs(20), |m| m.contains("READY=1"));

    agent.sighup();
    let messages = notify.messages(Duration::from_secs(30), |m| m.contains("READY=1"));
    let reloading = messages
        .iter()
        .position(|m| m.contains("RELOADING=1"))
        .unwrap_or_else(|| panic!("RELOADING=1 sent: {messages:?}"));
    assert!(messages[reloading].contains("MONOTONIC_USEC="), "{messages:?}");
    let ready = messages
        .iter()
        .rposition(|m| m.contains("READY=1"))
        .expect("READY=1 after the reload");
    assert!(ready > reloading, "{messages:?}");
    assert!(agent.stop().success());
}
