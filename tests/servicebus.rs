//! The Azure Service Bus destination, the real binary against the loopback
//! Service Bus of `common/servicebus.rs` (written from Microsoft's REST
//! reference; the live service is not reached from here): every
//! acknowledged event is stored once, in its entity's session in
//! `entity_seq` order, with `BrokerProperties`, the custom properties and
//! the webhook envelope as its body; batches are one request each; SAS and
//! Entra ID tokens are checked by the endpoint; refusals are named in
//! `status` and `doctor` and nothing is lost; throttling, 410, an endpoint
//! down at start and a SIGKILL mid-drain. No key, token or client secret
//! ever shows in a log, `status` or `doctor`.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use common::*;

const NAMESPACE: &str = "retail.servicebus.windows.net";
const ENTITY: &str = "pos-events";
const KEY_NAME: &str = "store-sender";
/// Shaped like a portal key (base64 text).
const KEY: &str = "k2mJ0sVx9nq4R8bT1cYwZ3eHfLuAiOp5G7dK6jN2Q+E=";
const WRONG_KEY: &str = "Wr0ngKeyWr0ngKeyWr0ngKeyWr0ngKeyWr0ngKey00=";

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT_ID: &str = "0f0e1d2c-3b4a-5968-7766-554433221100";
const CLIENT_SECRET: &str = "s3cr3t~value.of-the_app";

/// Quick retries, short timeout.
const QUICK: &str = "timeout = \"2s\"\nretry = { initial = \"100ms\", max = \"1s\" }";

fn start_bus() -> ServiceBus {
    ServiceBus::start(NAMESPACE, ENTITY, KEY_NAME, KEY)
}

/// A SAS subscription `name` to `bus` (through its loopback endpoint),
/// its key in `key_file` (relative to the config's directory); `extra`
/// adds keys.
fn sas_subscription(name: &str, bus: &ServiceBus, key_file: &str, extra: &str) -> String {
    format!(
        "[[subscription]]\nname = \"{name}\"\nurl = \"{}\"\nsas_key_name = \"{KEY_NAME}\"\n\
         sas_key_file = \"{key_file}\"\nendpoint = \"{}\"\n{extra}\n",
        bus.subscription_url(),
        bus.base_url()
    )
}

/// An Entra ID subscription `name` to `bus`, which is also the authority.
fn entra_subscription(name: &str, bus: &ServiceBus, extra: &str) -> String {
    format!(
        "[[subscription]]\nname = \"{name}\"\nurl = \"{}\"\ntenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT_ID}\"\n\
         client_secret_file = \"azure.secret\"\nendpoint = \"{}\"\nauthority = \"{}\"\n{extra}\n",
        bus.subscription_url(),
        bus.base_url(),
        bus.base_url()
    )
}

/// An agent with `config`, `files` written beside its config.
fn agent_with(config: &str, files: &[(&str, &str)]) -> Agent {
    let agent = Agent::new(config);
    for (name, text) in files {
        std::fs::write(agent.dir.path().join(name), text).expect("write a secret file");
    }
    agent
}

fn ids_of(events: &[&Events]) -> HashSet<String> {
    events
        .iter()
        .flat_map(|e| e.lines())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(&l).expect("event");
            v["event_id"].as_str().expect("event_id").to_string()
        })
        .collect()
}

/// Waits until subscription `name` delivered `total` and has nothing left.
fn wait_drained(agent: &Agent, bus: &ServiceBus, name: &str, total: u64, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let s = agent.sub_status(name);
        if s["pending"] == 0 && s["in_flight"] == 0 && s["delivered_total"] == total && s["state"] == "online" {
            return;
        }
        let answers: Vec<u16> = bus.request_log().iter().map(|r| r.status).collect();
        assert!(
            std::time::Instant::now() < deadline,
            "{name} did not drain {total} events: {s}\nanswers: {answers:?}\nagent:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The entity holds exactly the events `ids`, each once, each in the
/// session of its entity, every session in `entity_seq` order 1, 2, 3 ...;
/// `MessageId` = event id = the body's id; the custom properties as Azure's
/// SDKs write them (strings quoted, `entity_seq` a bare number); signed
/// with the tests' secret when `signed`.
fn assert_sessions_hold_once_in_order(bus: &ServiceBus, ids: &HashSet<String>, signed: bool) {
    let messages = bus.messages();
    let key = store_outbox::signing::decode_secret(SECRET).expect("secret");
    let mut seen = HashSet::new();
    for m in &messages {
        let json = m.json();
        let id = json["id"].as_str().expect("the body is the envelope").to_string();
        assert_eq!(m.message_id, id, "MessageId of {m:?}");
        assert_eq!(m.broker_properties["MessageId"], id);
        assert_eq!(m.session_id.as_deref(), json["entity"].as_str(), "SessionId = entity");
        assert_eq!(
            m.custom_properties["type"],
            format!("\"{}\"", json["type"].as_str().expect("type"))
        );
        assert_eq!(m.custom_properties["store_id"], "\"0042\"", "quoted: not the number 42");
        assert_eq!(m.custom_properties["agent_id"], "\"till-03\"");
        assert_eq!(
            m.custom_properties["entity_seq"],
            json["entity_seq"].to_string(),
            "a bare number"
        );
        assert_eq!(
            json["source"],
            serde_json::json!({"store_id": "0042", "agent_id": "till-03"})
        );
        if signed {
            assert_eq!(m.property("webhook-id").as_deref(), Some(id.as_str()));
            let timestamp: i64 = m
                .property("webhook-timestamp")
                .expect("timestamp")
                .parse()
                .expect("seconds");
            let signature = m.property("webhook-signature").expect("signature");
            assert!(
                store_outbox::signing::verify(&key, &id, timestamp, m.body.as_bytes(), &signature),
                "signature of {id}"
            );
        }
        assert!(seen.insert(id.clone()), "{id} is stored twice");
    }
    assert_eq!(&seen, ids, "the entity holds every acknowledged event, and only those");
    for (session, list) in bus.sessions() {
        let seqs: Vec<i64> = list
            .iter()
            .map(|m| m.json()["entity_seq"].as_i64().expect("entity_seq"))
            .collect();
        let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
        assert_eq!(seqs, expected, "session {session} in order");
    }
}

/// `text` holds none of the secrets, and no token.
fn assert_no_secret(what: &str, text: &str) {
    for secret in [
        KEY,
        WRONG_KEY,
        CLIENT_SECRET,
        "SharedAccessSignature",
        "sig=",
        "Bearer ey",
    ] {
        assert!(!text.contains(secret), "{what} shows {secret:?}:\n{text}");
    }
}

/// `doctor --json`: exit code and the first subscription's steps as
/// (step, verdict, detail).
fn doctor(agent: &Agent) -> (Option<i32>, Vec<(String, String, String)>, String) {
    let out = agent.cli(&["doctor", "--json"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let reports: serde_json::Value = serde_json::from_str(&text).expect("doctor --json");
    let steps = reports[0]["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            let field = |k: &str| s[k].as_str().unwrap_or_default().to_string();
            (field("step"), field("verdict"), field("detail"))
        })
        .collect();
    (out.status.code(), steps, text)
}

#[test]
fn every_event_arrives_once_per_session_in_order_with_its_properties_and_the_envelope() {
    let bus = start_bus();
    let receiver = Receiver::start();
    let mut agent = agent_with(
        &format!(
            "{}{}",
            sas_subscription("azure", &bus, "azure.key", &format!("secret = \"{SECRET}\"\n{QUICK}")),
            subscription("hook", &receiver.url(), "")
        ),
        &[("azure.key", &format!("{KEY}\n"))],
    );
    agent.start();
    let events = Events::new("sb", 0..60, "SaleCreated").spread_over("till 3/ü", 4);
    agent.send_events(&events);
    wait_drained(&agent, &bus, "azure", 60, Duration::from_secs(60));
    wait_until(Duration::from_secs(30), "the webhook got every event", || {
        receiver.delivered_count() == 60
    });
    assert_sessions_hold_once_in_order(&bus, &ids_of(&[&events]), true);
    assert_eq!(bus.sessions().len(), 4);

    // The body is the webhook's, byte for byte.
    let webhook: HashMap<String, Vec<u8>> = receiver.delivered().into_iter().map(|r| (r.id, r.body)).collect();
    for m in bus.messages() {
        assert_eq!(
            m.body.as_bytes(),
            &webhook[&m.message_id][..],
            "body of {}",
            m.message_id
        );
        assert_eq!(m.content_type.as_deref(), Some("application/json"));
        assert!(!m.batched);
    }
    // One request per message, SAS-signed for the queue, no api-version needed.
    let sends: Vec<ServiceBusRequest> = bus.request_log().into_iter().filter(|r| r.status == 201).collect();
    assert_eq!(sends.len(), 60);
    for r in &sends {
        assert_eq!(r.path, format!("/{ENTITY}/messages"));
        let auth = r.header("authorization").expect("authorization");
        assert!(
            auth.starts_with("SharedAccessSignature ") && auth.contains("&skn=store-sender"),
            "{auth}"
        );
        assert!(
            auth.contains("sr=https%3A%2F%2Fretail.servicebus.windows.net%2Fpos-events"),
            "{auth}"
        );
    }

    // status shows the subscription like the others.
    let s = agent.sub_status("azure");
    assert_eq!(s["url"], format!("servicebus://{NAMESPACE}/{ENTITY}"));
    assert_eq!(
        (s["state"].as_str(), s["delivered_total"].as_u64()),
        (Some("online"), Some(60))
    );
    assert_no_secret("status", &agent.status().to_string());
    assert_no_secret("the log", &agent.log());
}

#[test]
fn batches_go_as_one_request_each_with_the_batch_content_type_and_within_max_bytes() {
    let bus = start_bus();
    let mut agent = agent_with(
        &sas_subscription(
            "azure",
            &bus,
            "azure.key",
            &format!("batch = {{ max_events = 10, max_bytes = \"4KiB\", linger = \"50ms\" }}\n{QUICK}"),
        ),
        &[("azure.key", KEY)],
    );
    agent.start();
    let events = Events::new("b", 0..90, "SaleCreated")
        .spread_over("till", 3)
        .payload(|i| serde_json::json!({"sku": "4006381333931", "note": "é\"\\/".repeat(i % 40)}));
    agent.send_events(&events);
    wait_drained(&agent, &bus, "azure", 90, Duration::from_secs(60));
    assert_sessions_hold_once_in_order(&bus, &ids_of(&[&events]), false);

    let batches: Vec<ServiceBusRequest> = bus.request_log().into_iter().filter(|r| r.status == 201).collect();
    assert!(batches.len() < 90, "{} requests for 90 events", batches.len());
    let mut counted = 0;
    for r in &batches {
        assert_eq!(r.header("content-type"), Some(SERVICEBUS_BATCH_CONTENT_TYPE));
        assert!(
            r.body.len() <= 4096,
            "a batch of {} bytes passes max_bytes",
            r.body.len()
        );
        let array: Vec<serde_json::Value> = serde_json::from_slice(&r.body).expect("a JSON array");
        assert!(!array.is_empty() && array.len() <= 10);
        counted += array.len();
    }
    assert_eq!(counted, 90, "every message in exactly one batch");
    assert!(bus.messages().iter().all(|m| m.batched));
}

#[test]
fn a_wrong_key_is_named_in_status_and_doctor_nothing_is_lost_and_the_fixed_key_delivers() {
    let bus = start_bus();
    let mut agent = agent_with(
        &sas_subscription("azure", &bus, "wrong.key", QUICK),
        &[("wrong.key", WRONG_KEY), ("azure.key", KEY)],
    );
    agent.start();
    let events = Events::new("k", 0..20, "SaleCreated").spread_over("till", 2);
    agent.send_events(&events);
    wait_until(Duration::from_secs(30), "the 401 in last_error", || {
        agent.sub_status("azure")["last_error"].as_str().is_some_and(|e| {
            e.contains("HTTP 401") && e.contains("SAS key \"store-sender\"") && e.contains("InvalidSignature")
        })
    });
    let s = agent.sub_status("azure");
    assert_eq!(
        (s["pending"].as_u64(), s["delivered_total"].as_u64()),
        (Some(20), Some(0)),
        "{s}"
    );
    assert_eq!(bus.message_count(), 0);

    let (code, steps, text) = doctor(&agent);
    assert_eq!(code, Some(1), "{text}");
    let names: Vec<&str> = steps.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(names, ["dns", "tcp", "tls", "token", "send"], "{text}");
    assert_eq!(steps[3].1, "ok", "the key was read and signs: {text}");
    assert_eq!(steps[4].1, "fail", "{text}");
    assert!(
        steps[4].2.contains("store-sender") && steps[4].2.contains("InvalidSignature"),
        "{text}"
    );
    assert_no_secret("doctor", &text);
    assert_no_secret("status", &agent.status().to_string());

    // The right key, by a reload that points at it: everything arrives once.
    let line = agent.reload(&sas_subscription("azure", &bus, "azure.key", QUICK));
    assert!(line.contains("config reloaded"), "{line}");
    wait_drained(&agent, &bus, "azure", 20, Duration::from_secs(60));
    assert_sessions_hold_once_in_order(&bus, &ids_of(&[&events]), false);
    let (code, steps, text) = doctor(&agent);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(steps[4].1, "ok", "{text}");
    assert!(
        steps[4].2.contains("nothing stored") && steps[4].2.contains("not checked"),
        "{text}"
    );
    assert_eq!(bus.message_count(), 20, "doctor's empty batch stored nothing");
    assert_no_secret("doctor", &text);
    assert_no_secret("the log", &agent.log());
}

#[test]
fn a_missing_key_file_stops_the_start_naming_its_path() {
    let bus = start_bus();
    let agent = agent_with(&sas_subscription("azure", &bus, "absent.key", QUICK), &[]);
    let child = std::process::Command::new(binary())
        .args(["run", "--config"])
        .arg(&agent.config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the agent");
    // Killed when it drops, should it start after all.
    let mut process = Process(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = process.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent started without its key file"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut said = String::new();
    if let Some(mut err) = process.0.stderr.take() {
        std::io::Read::read_to_string(&mut err, &mut said).expect("stderr");
    }
    assert!(!status.success(), "{said}");
    assert!(said.contains("sas_key_file") && said.contains("absent.key"), "{said}");
}

#[test]
fn entra_tokens_are_fetched_once_reused_and_fetched_again_once_expired() {
    let bus = start_bus();
    bus.enable_entra(TENANT, CLIENT_ID, CLIENT_SECRET, 3600);
    let mut agent = agent_with(
        &entra_subscription("azure", &bus, QUICK),
        &[("azure.secret", &format!("{CLIENT_SECRET}\n"))],
    );
    agent.start();
    let first = Events::new("e1", 0..30, "SaleCreated").spread_over("till", 3);
    agent.send_events(&first);
    wait_drained(&agent, &bus, "azure", 30, Duration::from_secs(60));
    assert_eq!(bus.token_requests(), 1, "one token for every request");
    let token_request = bus
        .request_log()
        .into_iter()
        .find(|r| r.path.ends_with("/oauth2/v2.0/token"))
        .expect("the token request");
    assert_eq!(token_request.path, format!("/{TENANT}/oauth2/v2.0/token"));
    let form: HashMap<String, String> = url::form_urlencoded::parse(&token_request.body).into_owned().collect();
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["scope"], "https://servicebus.azure.net/.default");
    assert_eq!(form["client_secret"], CLIENT_SECRET, "the secret file is trimmed");

    // The token expires by the service's clock: a 401 ExpiredToken, a new
    // token, nothing lost.
    bus.advance_clock(Duration::from_secs(3601));
    let second = Events::new("e2", 0..10, "SaleCreated").spread_over("till", 3);
    agent.send_events(&second);
    wait_drained(&agent, &bus, "azure", 40, Duration::from_secs(60));
    assert_eq!(bus.token_requests(), 2, "fetched again after the expiry, once");
    assert!(
        bus.request_log().iter().any(|r| r.status == 401),
        "the expired token was refused"
    );
    assert_sessions_hold_once_in_order(&bus, &ids_of(&[&first, &second]), false);
    for r in bus.request_log().iter().filter(|r| r.path.ends_with("/messages")) {
        assert!(r.header("authorization").is_some_and(|a| a.starts_with("Bearer ")));
    }

    let (code, steps, text) = doctor(&agent);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(steps[3].0, "token");
    assert!(steps[3].2.contains(CLIENT_ID), "{text}");
    assert_no_secret("doctor", &text);
    assert_no_secret("status", &agent.status().to_string());
    assert_no_secret("the log", &agent.log());
}

#[test]
fn a_wrong_client_secret_is_named_without_the_secret_and_nothing_is_lost() {
    let bus = start_bus();
    bus.enable_entra(TENANT, CLIENT_ID, "the-right-secret-value", 3600);
    let mut agent = agent_with(
        &entra_subscription("azure", &bus, QUICK),
        &[("azure.secret", CLIENT_SECRET)],
    );
    agent.start();
    agent.send_events(&Events::new("w", 0..5, "SaleCreated"));
    wait_until(Duration::from_secs(30), "Entra's refusal in last_error", || {
        agent.sub_status("azure")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("invalid_client") && e.contains(CLIENT_ID))
    });
    let s = agent.sub_status("azure");
    assert_eq!((s["pending"].as_u64(), s["parked"].as_u64()), (Some(5), Some(0)), "{s}");
    let (code, steps, text) = doctor(&agent);
    assert_eq!(code, Some(1), "{text}");
    assert_eq!((steps[3].0.as_str(), steps[3].1.as_str()), ("token", "fail"), "{text}");
    assert_no_secret("doctor", &text);
    assert_no_secret("status", &agent.status().to_string());
    assert_no_secret("the log", &agent.log());
}

#[test]
fn a_429_with_retry_after_pauses_then_delivers_and_a_503_too() {
    let bus = start_bus();
    bus.answer_next_retry_after(429, 1, 2);
    let mut agent = agent_with(
        &sas_subscription(
            "azure",
            &bus,
            "azure.key",
            // One request at a time: the 429 is the only one on the wire.
            "max_in_flight = 1\ntimeout = \"2s\"\nretry = { initial = \"100ms\", max = \"5s\" }",
        ),
        &[("azure.key", KEY)],
    );
    agent.start();
    let first = Events::new("t1", 0..20, "SaleCreated").spread_over("till", 4);
    agent.send_events(&first);
    wait_drained(&agent, &bus, "azure", 20, Duration::from_secs(60));
    let log = bus.request_log();
    let throttled = log.iter().position(|r| r.status == 429).expect("the 429");
    let resumed = log[throttled + 1..]
        .iter()
        .find(|r| r.status == 201)
        .expect("a 201 after the 429");
    assert!(
        resumed.at.duration_since(log[throttled].at) >= Duration::from_millis(1900),
        "no message before Retry-After: {:?}",
        resumed.at.duration_since(log[throttled].at)
    );

    bus.answer_next(503, 2);
    let second = Events::new("t2", 0..20, "SaleCreated").spread_over("till", 4);
    agent.send_events(&second);
    wait_drained(&agent, &bus, "azure", 40, Duration::from_secs(60));
    assert!(bus.request_log().iter().any(|r| r.status == 503));
    assert_sessions_hold_once_in_order(&bus, &ids_of(&[&first, &second]), false);
}

#[test]
fn a_410_stops_the_subscription_as_gone_until_resume_with_nothing_dropped() {
    let bus = start_bus();
    bus.answer_next(410, 1);
    let mut agent = agent_with(
        &sas_subscription("azure", &bus, "azure.key", QUICK),
        &[("azure.key", KEY)],
    );
    agent.start();
    let events = Events::new("g", 0..10, "SaleCreated").spread_over("till", 2);
    agent.send_events(&events);
    wait_until(
        Duration::from_secs(30),
        "state gone, the requests on the wire answered",
        || {
            let s = agent.sub_status("azure");
            s["state"] == "gone" && s["in_flight"] == 0
        },
    );
    // Requests already on the wire when the 410 came finish; nothing more
    // is sent, nothing is dropped or parked.
    let s = agent.sub_status("azure");
    let delivered = s["delivered_total"].as_u64().unwrap_or(0);
    assert_eq!(s["pending"].as_u64(), Some(10 - delivered), "{s}");
    assert_eq!(s["parked"].as_u64(), Some(0), "{s}");
    let asked = bus.requests();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(bus.requests(), asked, "nothing is sent while gone");
    let out = agent.cli(&["resume", "azure"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_drained(&agent, &bus, "azure", 10, Duration::from_secs(60));
    assert_sessions_hold_once_in_order(&bus, &ids_of(&[&events]), false);
}

#[test]
fn no_send_right_and_a_missing_queue_are_named_retried_and_delivered_once_fixed() {
    let bus = start_bus();
    bus.set_forbidden(true);
    let config = sas_subscription("azure", &bus, "azure.key", QUICK).replace(&format!("/{ENTITY}\""), "/pos-later\"");
    let mut agent = agent_with(&config, &[("azure.key", KEY)]);
    agent.start();
    let events = Events::new("r", 0..8, "SaleCreated").spread_over("till", 2);
    agent.send_events(&events);
    let error = || {
        agent.sub_status("azure")["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    wait_until(Duration::from_secs(30), "the Send claim in last_error", || {
        let e = error();
        e.contains("HTTP 403") && e.contains("Send claim") && e.contains("store-sender")
    });
    bus.set_forbidden(false);
    wait_until(Duration::from_secs(30), "the missing queue in last_error", || {
        let e = error();
        e.contains("HTTP 404") && e.contains("no queue or topic \"pos-later\"")
    });
    let s = agent.sub_status("azure");
    assert_eq!((s["pending"].as_u64(), s["parked"].as_u64()), (Some(8), Some(0)), "{s}");
    bus.add_entity("pos-later");
    wait_drained(&agent, &bus, "azure", 8, Duration::from_secs(60));
    assert_sessions_hold_once_in_order(&bus, &ids_of(&[&events]), false);
    assert!(bus.messages().iter().all(|m| m.entity == "pos-later"));
}

#[test]
fn a_namespace_down_at_start_is_probed_and_everything_arrives_once_up() {
    let bus = start_bus();
    bus.set_down(true);
    let mut agent = agent_with(
        &sas_subscription("azure", &bus, "azure.key", QUICK),
        &[("azure.key", KEY)],
    );
    agent.start();
    let events = Events::new("d", 0..30, "SaleCreated").spread_over("till", 3);
    agent.send_events(&events);
    wait_until(Duration::from_secs(30), "offline with a connect error", || {
        let s = agent.sub_status("azure");
        s["state"] == "offline" && s["last_error"].as_str().is_some_and(|e| e.contains("cannot connect"))
    });
    assert_eq!(agent.sub_status("azure")["delivered_total"], 0);
    bus.set_down(false);
    wait_drained(&agent, &bus, "azure", 30, Duration::from_secs(60));
    assert_sessions_hold_once_in_order(&bus, &ids_of(&[&events]), false);
}

#[test]
fn an_agent_killed_mid_drain_loses_nothing_and_resends_are_only_dropped_duplicates() {
    let bus = start_bus();
    let mut agent = agent_with(
        &sas_subscription(
            "azure",
            &bus,
            "azure.key",
            "timeout = \"5s\"\nretry = { initial = \"100ms\", max = \"1s\" }",
        ),
        &[("azure.key", KEY)],
    );
    agent.start();
    let events = Events::new("kill", 0..600, "SaleCreated").spread_over("order", 20);
    agent.send_events(&events);
    wait_until(Duration::from_secs(60), "part of the drain done", || {
        bus.message_count() >= 60
    });
    agent.kill9();
    let at_kill = bus.message_count();
    agent.start();
    wait_drained(&agent, &bus, "azure", 600, Duration::from_secs(120));
    assert!(at_kill < 600, "killed before the drain ended ({at_kill} stored)");
    assert_sessions_hold_once_in_order(&bus, &ids_of(&[&events]), false);

    // Every MessageId sent more than once was dropped by duplicate detection.
    let mut sent: BTreeMap<String, usize> = BTreeMap::new();
    for r in bus.request_log().iter().filter(|r| r.status == 201) {
        let broker: serde_json::Value =
            serde_json::from_str(r.header("brokerproperties").expect("BrokerProperties")).expect("JSON");
        *sent
            .entry(broker["MessageId"].as_str().expect("MessageId").to_string())
            .or_default() += 1;
    }
    let resent: usize = sent.values().map(|n| n - 1).sum();
    assert_eq!(resent, bus.duplicates(), "resends are exactly the duplicates dropped");
    assert_eq!(sent.len(), 600);
}
