//! The Google Cloud Pub/Sub destination, the real binary against the real
//! Pub/Sub emulator of the Google Cloud CLI (`common/pubsub.rs`): every
//! acknowledged event arrives once per ordering key (the entity) in
//! `entity_seq` order, with the contract's attributes and the webhook
//! envelope as its data; batches go as one call per ordering key (the
//! API's rule, which the authenticating front checks); the service
//! account's JWT is exchanged at its `token_uri` (a loopback token server
//! that verifies it) and the token sent, kept and renewed; the emulator
//! down at start, killed mid-drain, a missing topic, throttling and a
//! missing permission lose nothing; the agent SIGKILLed mid-drain neither.
//! Each test skips (with the printed reason) only when the emulator is not
//! installed.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::*;

const TOPIC: &str = "pos-events";
const SUB: &str = "erp";
/// Quick retries, short timeout.
const QUICK: &str = "timeout = \"3s\"\nretry = { initial = \"100ms\", max = \"1s\" }";

fn emulator() -> Option<PubSubEmulator> {
    let emulator = PubSubEmulator::start();
    if emulator.is_none() {
        eprintln!("{PUBSUB_EMULATOR_MISSING}");
    }
    emulator
}

/// The topic and an ordered subscription on `emulator`.
fn topic_and_subscription(emulator: &PubSubEmulator) {
    emulator.create_topic(TEST_PROJECT, TOPIC);
    emulator.create_ordered_subscription(TEST_PROJECT, SUB, TOPIC);
}

/// A subscription `name` publishing to the test topic at `endpoint`.
fn pubsub_subscription(name: &str, endpoint: &str, extra: &str) -> String {
    format!(
        "[[subscription]]\nname = \"{name}\"\nurl = \"pubsub://projects/{TEST_PROJECT}/topics/{TOPIC}\"\n\
         endpoint = \"{endpoint}\"\n{extra}\n"
    )
}

/// Google's side of a signed-in subscription: a token server that checks
/// the service account's JWT, a front before the emulator that checks the
/// token, and the account's key file (in its own temp dir, kept alive).
struct SignedIn {
    tokens: TokenServer,
    front: AuthFront,
    key_file: std::path::PathBuf,
    _keys: tempfile::TempDir,
}

impl SignedIn {
    fn before(emulator: &PubSubEmulator) -> SignedIn {
        let tokens = TokenServer::start();
        let front = AuthFront::start(emulator, &tokens);
        let keys = tempfile::tempdir().expect("temp dir");
        let key_file = tokens.new_key(keys.path());
        SignedIn {
            tokens,
            front,
            key_file,
            _keys: keys,
        }
    }

    /// A subscription `name` through the front with the key file, and `extra`.
    fn subscription(&self, name: &str, extra: &str) -> String {
        pubsub_subscription(
            name,
            &self.front.endpoint(),
            &format!("credentials_file = \"{}\"\n{extra}", self.key_file.display()),
        )
    }
}

fn ids_of(events: &Events) -> HashSet<String> {
    events
        .lines()
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("event");
            v["event_id"].as_str().expect("event_id").to_string()
        })
        .collect()
}

/// Waits until subscription `name` delivered `total` and has nothing left.
fn wait_drained(agent: &Agent, name: &str, total: u64, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let s = agent.sub_status(name);
        if s["pending"] == 0 && s["in_flight"] == 0 && s["delivered_total"] == total {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} did not drain {total} events: {s}\nagent:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The messages pulled, checked message by message (data = the envelope,
/// attributes as the contract lists them, signed when `signed`); returns
/// each ordering key's `entity_seq`s in arrival order, and the ids.
type PerKey = BTreeMap<String, Vec<i64>>;

fn check_messages(messages: &[PulledMessage], signed: bool) -> (PerKey, Vec<String>) {
    let key = store_outbox::signing::decode_secret(SECRET).expect("secret");
    let mut per_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut ids = Vec::new();
    for m in messages {
        let json: serde_json::Value = serde_json::from_slice(&m.data).expect("data is the JSON envelope");
        let id = json["id"].as_str().expect("id").to_string();
        assert_eq!(
            m.ordering_key,
            json["entity"].as_str().expect("entity"),
            "orderingKey = entity"
        );
        let attribute = |k: &str| m.attributes.get(k).map(String::as_str);
        assert_eq!(attribute("webhook-id"), Some(id.as_str()));
        assert_eq!(attribute("type"), json["type"].as_str());
        assert_eq!(attribute("store_id"), Some("0042"));
        assert_eq!(attribute("agent_id"), Some("till-03"));
        let seq = json["entity_seq"].as_i64().expect("entity_seq");
        assert_eq!(attribute("entity_seq"), Some(seq.to_string().as_str()));
        if signed {
            let timestamp: i64 = attribute("webhook-timestamp")
                .expect("timestamp")
                .parse()
                .expect("seconds");
            let signature = attribute("webhook-signature").expect("signature");
            assert!(
                store_outbox::signing::verify(&key, &id, timestamp, &m.data, signature),
                "signature of {id}"
            );
        } else {
            assert!(attribute("webhook-signature").is_none());
        }
        per_key.entry(m.ordering_key.clone()).or_default().push(seq);
        ids.push(id);
    }
    (per_key, ids)
}

/// Every key's `entity_seq`s are 1, 2, 3 ... in order; with `repeats`, a
/// message may come again right after itself or later (at least once after
/// a crash), but no later one comes before an earlier one's first copy.
fn assert_in_order(per_key: &BTreeMap<String, Vec<i64>>, repeats: bool) {
    for (key, seqs) in per_key {
        let firsts: Vec<i64> = if repeats {
            let mut seen = HashSet::new();
            seqs.iter().copied().filter(|s| seen.insert(*s)).collect()
        } else {
            seqs.clone()
        };
        let expected: Vec<i64> = (1..=firsts.len() as i64).collect();
        assert_eq!(firsts, expected, "ordering key {key} in entity_seq order");
    }
}

#[test]
fn every_event_arrives_once_per_ordering_key_in_order_with_its_attributes_and_the_envelope() {
    let Some(emulator) = emulator() else { return };
    topic_and_subscription(&emulator);
    let receiver = Receiver::start();
    let mut agent = Agent::new(&format!(
        "{}{}",
        pubsub_subscription("gcp", &emulator.endpoint(), &format!("secret = \"{SECRET}\"\n{QUICK}")),
        subscription("hook", &receiver.url(), "")
    ));
    agent.start();
    let events = Events::new("ps", 0..60, "SaleCreated").spread_over("till 3/ü", 4);
    agent.send_events(&events);
    wait_drained(&agent, "gcp", 60, Duration::from_secs(60));
    let pulled = emulator.pull_all(TEST_PROJECT, SUB, 60, Duration::from_secs(30));
    let (per_key, ids) = check_messages(&pulled, true);
    assert_eq!(ids.len(), 60, "each event once");
    assert_eq!(ids.iter().cloned().collect::<HashSet<_>>(), ids_of(&events));
    assert_eq!(per_key.len(), 4);
    assert_in_order(&per_key, false);

    // The data is the webhook's body, byte for byte.
    wait_until(Duration::from_secs(30), "the webhook got every event", || {
        receiver.delivered_count() == 60
    });
    let webhook: BTreeMap<String, Vec<u8>> = receiver.delivered().into_iter().map(|r| (r.id, r.body)).collect();
    for m in &pulled {
        let id = &m.attributes["webhook-id"];
        assert_eq!(&m.data, &webhook[id], "data of {id}");
    }
    let s = agent.sub_status("gcp");
    assert_eq!(s["url"], format!("pubsub://projects/{TEST_PROJECT}/topics/{TOPIC}"));
    assert_eq!(s["state"], "online");
    // /metrics and the status page show it like the webhook.
    let metrics = http(agent.admin_port.get(), "GET", "/metrics", &[], b"").text();
    let webhook_series: Vec<&str> = metrics
        .lines()
        .filter(|l| l.contains("subscription=\"hook\""))
        .collect();
    assert!(webhook_series.len() > 5, "{metrics}");
    for line in webhook_series {
        let ours = line.replace("subscription=\"hook\"", "subscription=\"gcp\"");
        let series = ours.split(' ').next().unwrap_or_default();
        assert!(metrics.contains(series), "/metrics has {series}");
    }
    let page = http(agent.admin_port.get(), "GET", "/", &[], b"").text();
    assert!(
        page.contains("gcp") && page.contains("pubsub://projects/"),
        "the page shows it"
    );
}

#[test]
fn a_service_account_signs_in_once_batches_go_one_call_per_ordering_key_and_a_refused_token_is_replaced() {
    let Some(emulator) = emulator() else { return };
    topic_and_subscription(&emulator);
    let google = SignedIn::before(&emulator);
    let (tokens, front, key_file) = (&google.tokens, &google.front, &google.key_file);
    let mut agent = Agent::new(&google.subscription(
        "gcp",
        &format!("batch = {{ max_events = 50, linger = \"100ms\" }}\n{QUICK}"),
    ));
    agent.start();
    let first = Events::new("ba", 0..90, "SaleCreated").spread_over("till", 3);
    agent.send_events(&first);
    wait_drained(&agent, "gcp", 90, Duration::from_secs(60));
    assert_eq!(
        tokens.exchanges(),
        1,
        "one token for the whole drain: {:?}",
        tokens.refusals()
    );
    assert_eq!(front.rejected_count(), 0, "every call carried a valid token");
    let publishes: Vec<FrontRequest> = front
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with(":publish"))
        .collect();
    assert!(publishes.len() < 90, "{} calls for 90 events: batched", publishes.len());
    for call in &publishes {
        let body = call.json();
        let keys: HashSet<&str> = body["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["orderingKey"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(keys.len(), 1, "one ordering key per publish call: {keys:?}");
    }

    // Google stops taking the token (revoked, or expired early): the 401
    // makes the agent sign in again, and nothing is lost.
    tokens.revoke_all();
    let second = Events::new("bb", 0..30, "SaleCreated").spread_over("till", 3);
    agent.send_events(&second);
    wait_drained(&agent, "gcp", 120, Duration::from_secs(60));
    assert!(tokens.exchanges() >= 2, "a new token after the 401");
    let pulled = emulator.pull_all(TEST_PROJECT, SUB, 120, Duration::from_secs(30));
    let (per_key, ids) = check_messages(&pulled, false);
    let mut all = ids_of(&first);
    all.extend(ids_of(&second));
    assert_eq!(ids.iter().cloned().collect::<HashSet<_>>(), all);
    assert_eq!(ids.len(), 120, "each once");
    assert_in_order(&per_key, false);

    // No key, assertion or token in status, doctor or the log.
    let key_text = std::fs::read_to_string(key_file).expect("key file");
    let key_json: serde_json::Value = serde_json::from_str(&key_text).expect("key JSON");
    let private = key_json["private_key"].as_str().expect("private_key");
    let body_line = private.lines().nth(1).expect("a line of the key");
    let doctor = agent.cli(&["doctor"]);
    let doctor_text = format!(
        "{}{}",
        String::from_utf8_lossy(&doctor.stdout),
        String::from_utf8_lossy(&doctor.stderr)
    );
    assert!(doctor.status.success(), "{doctor_text}");
    for step in ["dns", "tcp", "key", "token", "topic"] {
        assert!(
            doctor_text.contains(&format!("ok    {step}")),
            "{step} passes:\n{doctor_text}"
        );
    }
    for (what, text) in [
        ("status", agent.status().to_string()),
        ("doctor", doctor_text),
        ("the log", agent.log()),
    ] {
        assert!(!text.contains(body_line), "{what} shows the private key");
        for issued in tokens.issued() {
            assert!(!text.contains(&issued.access_token), "{what} shows an access token");
        }
        assert!(!text.contains("eyJ"), "{what} shows a JWT:\n{text}");
    }
}

#[test]
fn throttling_and_a_missing_permission_are_named_and_lose_nothing() {
    let Some(emulator) = emulator() else { return };
    topic_and_subscription(&emulator);
    let google = SignedIn::before(&emulator);
    let front = &google.front;
    let mut agent = Agent::new(&google.subscription("gcp", &format!("max_in_flight = 1\n{QUICK}")));
    front.answer_next(403, "", 1_000_000);
    agent.start();
    let events = Events::new("th", 0..20, "SaleCreated").spread_over("till", 2);
    agent.send_events(&events);
    wait_until(Duration::from_secs(30), "the 403 named in status", || {
        agent.sub_status("gcp")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("HTTP 403") && e.contains("roles/pubsub.publisher"))
    });
    assert_eq!(agent.sub_status("gcp")["delivered_total"], 0);
    // Granted, then throttled twice: delivered, in order, once.
    front.clear_answers();
    front.answer_next(429, "", 2);
    wait_drained(&agent, "gcp", 20, Duration::from_secs(60));
    let pulled = emulator.pull_all(TEST_PROJECT, SUB, 20, Duration::from_secs(30));
    let (per_key, ids) = check_messages(&pulled, false);
    assert_eq!(ids.len(), 20);
    assert_in_order(&per_key, false);
    assert!(
        agent.log().contains("slow down"),
        "the throttle is logged:\n{}",
        agent.log()
    );
}

#[test]
fn a_missing_topic_is_named_in_status_and_doctor_and_delivered_once_it_exists() {
    let Some(emulator) = emulator() else { return };
    let mut agent = Agent::new(&pubsub_subscription("gcp", &emulator.endpoint(), QUICK));
    agent.start();
    let events = Events::new("nt", 0..10, "SaleCreated").entity("order:7");
    agent.send_events(&events);
    wait_until(Duration::from_secs(30), "the missing topic in status", || {
        agent.sub_status("gcp")["last_error"].as_str().is_some_and(|e| {
            e.contains("HTTP 404") && e.contains(&format!("projects/{TEST_PROJECT}/topics/{TOPIC} does not exist"))
        })
    });
    let doctor = agent.cli(&["doctor"]);
    let text = String::from_utf8_lossy(&doctor.stdout).into_owned();
    assert_eq!(doctor.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL  topic") && text.contains("does not exist"),
        "{text}"
    );
    // Pub/Sub drops what is published to a topic without a subscription:
    // the agent waits while both are made (as central IT should make the
    // subscription before stores publish).
    agent.stop();
    topic_and_subscription(&emulator);
    agent.start();
    wait_drained(&agent, "gcp", 10, Duration::from_secs(60));
    let pulled = emulator.pull_all(TEST_PROJECT, SUB, 10, Duration::from_secs(30));
    let (per_key, ids) = check_messages(&pulled, false);
    assert_eq!(ids.len(), 10);
    assert_in_order(&per_key, false);
}

#[test]
fn the_emulator_down_at_start_and_killed_mid_drain_loses_nothing_the_agent_acknowledged() {
    let Some(mut emulator) = emulator() else { return };
    emulator.kill();
    // The front answers 503 while the emulator is down, and is held at 503
    // while the test makes the topic and its subscription again (Pub/Sub
    // drops what is published to a topic with no subscription yet).
    let google = SignedIn::before(&emulator);
    let front = &google.front;
    let set_up_again = |emulator: &mut PubSubEmulator| {
        front.answer_next(503, "", 1_000_000);
        emulator.restart();
        topic_and_subscription(emulator);
        front.clear_answers();
    };
    let mut agent = Agent::new(&google.subscription("gcp", &format!("max_rate = 40\n{QUICK}")));
    agent.start();
    let events = Events::new("dn", 0..200, "SaleCreated").spread_over("till", 4);
    agent.send_events(&events);
    wait_until(Duration::from_secs(30), "offline while the emulator is down", || {
        agent.sub_status("gcp")["state"] == "offline"
    });
    assert_eq!(agent.sub_status("gcp")["pending"], 200);

    // Up again (empty, as an emulator restarts): the drain starts, and the
    // emulator dies in the middle of it.
    set_up_again(&mut emulator);
    let mut before = Vec::new();
    wait_until(Duration::from_secs(60), "part of the backlog delivered", || {
        before.extend(emulator.pull_once(TEST_PROJECT, SUB));
        agent.sub_status("gcp")["delivered_total"].as_u64().unwrap_or(0) >= 60
    });
    before.extend(emulator.pull_once(TEST_PROJECT, SUB));
    emulator.kill();
    let acknowledged_at_kill = agent.sub_status("gcp")["delivered_total"].as_u64().unwrap_or(0);
    wait_until(Duration::from_secs(30), "offline again", || {
        agent.sub_status("gcp")["state"] == "offline"
    });
    set_up_again(&mut emulator);
    wait_drained(&agent, "gcp", 200, Duration::from_secs(120));
    let after = emulator.pull_all(
        TEST_PROJECT,
        SUB,
        200 - acknowledged_at_kill as usize,
        Duration::from_secs(30),
    );
    let (_, before_ids) = check_messages(&before, false);
    let (after_keys, after_ids) = check_messages(&after, false);
    let seen: HashSet<String> = before_ids.iter().chain(&after_ids).cloned().collect();
    assert!(seen.is_subset(&ids_of(&events)));
    // What neither emulator handed out was acknowledged by the first one
    // (it kept it in memory only): nothing the agent still held is lost.
    let missing = 200 - seen.len() as u64;
    let acknowledged_not_pulled = acknowledged_at_kill.saturating_sub(before_ids.len() as u64);
    assert!(
        missing <= acknowledged_not_pulled,
        "{missing} events are missing, only {acknowledged_not_pulled} were acknowledged by the killed emulator and not pulled"
    );
    assert!(
        after_ids.len() as u64 >= 200 - acknowledged_at_kill,
        "the rest arrived after the restart"
    );
    // After the restart each key goes on in order from where it was.
    for (key, seqs) in &after_keys {
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{key}: {seqs:?}");
    }
}

#[test]
fn the_agent_killed_mid_drain_publishes_every_event_at_least_once_in_order() {
    let Some(emulator) = emulator() else { return };
    topic_and_subscription(&emulator);
    let mut agent = Agent::new(&pubsub_subscription(
        "gcp",
        &emulator.endpoint(),
        &format!("max_rate = 100\n{QUICK}"),
    ));
    agent.start();
    let events = Events::new("k9", 0..300, "SaleCreated").spread_over("till", 5);
    agent.send_events(&events);
    wait_until(Duration::from_secs(60), "part of the backlog delivered", || {
        agent.sub_status("gcp")["delivered_total"].as_u64().unwrap_or(0) >= 50
    });
    agent.kill9();
    agent.start();
    wait_drained(&agent, "gcp", 300, Duration::from_secs(120));
    let pulled = emulator.pull_all(TEST_PROJECT, SUB, 300, Duration::from_secs(60));
    let (per_key, ids) = check_messages(&pulled, false);
    let unique: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(unique, ids_of(&events), "every acknowledged event, none lost");
    assert!(ids.len() - unique.len() <= 5, "at most the requests in flight again");
    assert_in_order(&per_key, true);
}
