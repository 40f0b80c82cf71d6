//! The NATS JetStream destination against a real 3-node cluster on
//! loopback (`nats-server`, which must be installed: the tests fail without
//! it): every acknowledged event reaches the stream exactly once, in entity
//! order, with the webhook's body and `Nats-Msg-Id`; through a cluster that
//! is down, a node killed mid-drain, and a subject no stream takes yet.

#![cfg(feature = "nats")]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use async_nats::jetstream;
use common::*;

/// A NATS subscription `name` publishing to `url` on `subject`, signed with
/// the tests' secret, quick retries; `extra` adds keys.
fn nats_subscription(name: &str, url: &str, subject: &str, extra: &str) -> String {
    format!(
        "[[subscription]]\nname = \"{name}\"\nurl = \"{url}\"\nsubject = \"{subject}\"\nsecret = \"{SECRET}\"\n\
         timeout = \"2s\"\nretry = {{ initial = \"100ms\", max = \"1s\" }}\n{extra}\n"
    )
}

/// One message read back from the stream.
#[derive(Debug)]
struct Stored {
    /// Stream sequence.
    seq: u64,
    /// Its subject.
    subject: String,
    /// Its headers (last value of each).
    headers: HashMap<String, String>,
    /// Its body.
    body: Vec<u8>,
    /// The body, parsed.
    json: serde_json::Value,
}

/// The test's own client of the cluster (stream admin and reading back).
struct Bus {
    /// Runs the client.
    rt: tokio::runtime::Runtime,
    /// The JetStream context.
    js: jetstream::Context,
}

impl Bus {
    fn connect(url: &str) -> Bus {
        Bus::connect_with(url, async_nats::ConnectOptions::new)
    }

    /// Like [`Bus::connect`], logging in as `user`.
    fn connect_as(url: &str, user: &str, password: &str) -> Bus {
        let (user, password) = (user.to_string(), password.to_string());
        Bus::connect_with(url, move || {
            async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
        })
    }

    fn connect_with(url: &str, options: impl Fn() -> async_nats::ConnectOptions) -> Bus {
        let rt = multi_thread_runtime();
        let servers: Vec<String> = url.split(',').map(str::to_string).collect();
        let client = rt.block_on(async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                match options().connect(servers.as_slice()).await {
                    Ok(c) => break c,
                    Err(e) if tokio::time::Instant::now() < deadline => {
                        eprintln!("test client: {e}; again");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => panic!("test client cannot connect to {url}: {e}"),
                }
            }
        });
        // The context spawns its acker: inside the runtime.
        let js = rt.block_on(async { jetstream::new(client) });
        Bus { rt, js }
    }

    /// Creates an R3 file stream on `subjects` with a 10 minute duplicate
    /// window, retrying while the cluster elects its leaders.
    fn create_stream(&self, name: &str, subjects: &[&str]) {
        let config = jetstream::stream::Config {
            name: name.to_string(),
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            num_replicas: 3,
            duplicate_window: Duration::from_secs(600),
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        };
        self.rt.block_on(async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                match self.js.get_or_create_stream(config.clone()).await {
                    Ok(_) => return,
                    Err(e) if tokio::time::Instant::now() < deadline => {
                        eprintln!("create stream {name}: {e}; again");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => panic!("cannot create stream {name}: {e}"),
                }
            }
        });
    }

    /// Messages in the stream, or `None` while it does not answer.
    fn try_count(&self, stream: &str) -> Option<u64> {
        self.rt.block_on(async {
            let mut s = self.js.get_stream(stream).await.ok()?;
            let info = tokio::time::timeout(Duration::from_secs(2), s.info())
                .await
                .ok()?
                .ok()?;
            Some(info.state.messages)
        })
    }

    /// The name of the node leading the stream.
    fn leader(&self, stream: &str) -> Option<String> {
        self.rt.block_on(async {
            let mut s = self.js.get_stream(stream).await.ok()?;
            let info = s.info().await.ok()?;
            info.cluster.as_ref().and_then(|c| c.leader.clone())
        })
    }

    /// Every message of the stream, in stream order.
    fn messages(&self, stream: &str) -> Vec<Stored> {
        self.rt.block_on(async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            'again: loop {
                assert!(tokio::time::Instant::now() < deadline, "could not read stream {stream}");
                let Ok(mut s) = self.js.get_stream(stream).await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let Ok(info) = s.info().await.map(|i| i.state.clone()) else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let mut out = Vec::new();
                for seq in info.first_sequence..=info.last_sequence {
                    if info.messages == 0 {
                        break;
                    }
                    let Ok(m) = s.get_raw_message(seq).await else {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue 'again;
                    };
                    let headers = m
                        .headers
                        .iter()
                        .filter_map(|(k, v)| Some((k.to_string(), v.last()?.to_string())))
                        .collect();
                    let json = serde_json::from_slice(&m.payload).expect("a JSON body");
                    out.push(Stored {
                        seq: m.sequence,
                        subject: m.subject.to_string(),
                        headers,
                        body: m.payload.to_vec(),
                        json,
                    });
                }
                return out;
            }
        })
    }
}

/// The stream holds exactly the events `ids`, each once, `Nats-Msg-Id` =
/// event id = body id, each entity's events in `entity_seq` order (1, 2, 3
/// ...) by stream sequence, signed with the tests' secret.
fn assert_stream_holds_once_in_order(messages: &[Stored], ids: &HashSet<String>) {
    let mut seen = HashSet::new();
    let mut per_entity: BTreeMap<String, Vec<(u64, i64)>> = BTreeMap::new();
    let key = store_outbox::signing::decode_secret(SECRET).expect("secret");
    for m in messages {
        let id = m.json["id"].as_str().expect("id").to_string();
        assert_eq!(m.headers.get("Nats-Msg-Id"), Some(&id), "Nats-Msg-Id of {m:?}");
        assert_eq!(
            m.headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
        assert_eq!(m.headers.get("webhook-id"), Some(&id));
        let timestamp: i64 = m.headers["webhook-timestamp"].parse().expect("timestamp");
        assert!(
            store_outbox::signing::verify(&key, &id, timestamp, &m.body, &m.headers["webhook-signature"]),
            "signature of {id}"
        );
        assert!(seen.insert(id.clone()), "{id} is in the stream twice");
        per_entity
            .entry(m.json["entity"].as_str().expect("entity").to_string())
            .or_default()
            .push((m.seq, m.json["entity_seq"].as_i64().expect("entity_seq")));
    }
    assert_eq!(&seen, ids, "the stream holds every acknowledged event, and only those");
    for (entity, mut list) in per_entity {
        list.sort();
        let seqs: Vec<i64> = list.iter().map(|(_, s)| *s).collect();
        let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
        assert_eq!(seqs, expected, "entity {entity} in order by stream sequence");
    }
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

/// Waits until the subscription has delivered `total` and has nothing left.
fn wait_drained(agent: &Agent, cluster: &NatsCluster, name: &str, total: u64, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let s = agent.sub_status(name);
        if s["pending"] == 0 && s["in_flight"] == 0 && s["delivered_total"] == total && s["state"] == "online" {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} did not drain {total} events: {s}\nagent:\n{}\nnats:\n{}",
            agent.log(),
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `{entity}` token as the contract encodes it (independently of the
/// agent's code): `%`, `.`, `*`, `>`, whitespace as `%XX`.
fn token(value: &str) -> String {
    value
        .chars()
        .map(|c| match c {
            '%' | '.' | '*' | '>' | ' ' | '\t' | '\n' | '\r' => format!("%{:02X}", c as u32),
            c => c.to_string(),
        })
        .collect()
}

#[test]
fn events_reach_the_stream_once_each_in_entity_order_with_the_webhook_body() {
    let cluster = NatsCluster::start(3);
    let bus = Bus::connect(&cluster.url());
    bus.create_stream("POS", &["pos.>"]);
    let receiver = Receiver::start();
    let mut agent = Agent::new(&format!(
        "{}{}",
        nats_subscription("bus", &cluster.url(), "pos.{store_id}.{type}.{entity}", ""),
        subscription("hook", &receiver.url(), "")
    ));
    agent.start();
    let events = Events::new("a", 0..60, "SaleCreated").spread_over("till 3.x", 6);
    agent.send_events(&events);
    wait_drained(&agent, &cluster, "bus", 60, Duration::from_secs(60));
    wait_until(Duration::from_secs(30), "the webhook got every event", || {
        receiver.delivered_count() == 60
    });

    let messages = bus.messages("POS");
    assert_stream_holds_once_in_order(&messages, &ids_of(&[&events]));
    let webhook: HashMap<String, Vec<u8>> = receiver.delivered().into_iter().map(|r| (r.id, r.body)).collect();
    for m in &messages {
        let id = m.json["id"].as_str().expect("id");
        assert_eq!(
            String::from_utf8_lossy(&m.body),
            String::from_utf8_lossy(&webhook[id]),
            "the bus body of {id} is the webhook body, byte for byte"
        );
        let entity = m.json["entity"].as_str().expect("entity");
        assert_eq!(m.subject, format!("pos.0042.SaleCreated.{}", token(entity)));
    }
    assert!(messages[0].subject.contains("till%203%2Ex:"), "{}", messages[0].subject);
    assert_eq!(agent.sub_status("bus")["url"], cluster.url());
}

#[test]
fn a_cluster_down_at_start_and_later_is_probed_and_everything_arrives() {
    let mut cluster = NatsCluster::start(3);
    let bus = Bus::connect(&cluster.url());
    bus.create_stream("POS", &["pos.>"]);
    cluster.terminate_all();

    // Down at start: the agent starts anyway and keeps the events.
    let mut agent = Agent::new(&nats_subscription("bus", &cluster.url(), "pos.{store_id}.{type}", ""));
    agent.start();
    let first = Events::new("down-at-start", 0..30, "SaleCreated").spread_over("till", 3);
    agent.send_events(&first);
    wait_until(Duration::from_secs(30), "bus offline with an error", || {
        let s = agent.sub_status("bus");
        s["state"] == "offline" && s["last_error"].as_str().is_some_and(|e| e.contains("cannot connect"))
    });
    std::thread::sleep(Duration::from_millis(1500));
    let s = agent.sub_status("bus");
    assert_eq!(s["pending"], 30, "{s}");
    assert_eq!(s["delivered_total"], 0, "{s}");
    cluster.restart_all();
    wait_drained(&agent, &cluster, "bus", 30, Duration::from_secs(90));

    // Down for a while once connected: the client's reconnects fail, the
    // link goes offline, and comes back with the cluster.
    cluster.terminate_all();
    let second = Events::new("down-later", 0..30, "SaleCreated").spread_over("till", 3);
    agent.send_events(&second);
    wait_until(Duration::from_secs(30), "bus offline again", || {
        agent.sub_status("bus")["state"] == "offline"
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(agent.sub_status("bus")["delivered_total"], 30);
    cluster.restart_all();
    wait_drained(&agent, &cluster, "bus", 60, Duration::from_secs(90));

    let messages = bus.messages("POS");
    assert_stream_holds_once_in_order(&messages, &ids_of(&[&first, &second]));
    let log = agent.log();
    assert!(
        log.matches("endpoint is up again").count() >= 2,
        "offline twice, back twice:\n{log}"
    );
}

#[test]
fn a_node_killed_mid_drain_loses_nothing_and_duplicates_nothing() {
    let mut cluster = NatsCluster::start(3);
    let bus = Bus::connect(&cluster.url());
    bus.create_stream("POS", &["pos.>"]);
    let mut agent = Agent::new(&nats_subscription("bus", &cluster.url(), "pos.{store_id}.{type}", ""));
    agent.start();
    let events = Events::new("k", 0..2000, "SaleCreated").spread_over("till", 40);
    agent.send_events(&events);
    wait_until(Duration::from_secs(60), "part of the drain done", || {
        agent.sub_status("bus")["delivered_total"].as_u64().unwrap_or(0) >= 200
    });
    // Kill the stream's leader: the node that had the writes in hand.
    let leader = bus.leader("POS").unwrap_or_else(|| "n1".to_string());
    let victim = cluster.nodes.iter().position(|n| n.name == leader).unwrap_or(0);
    cluster.kill9(victim);
    let at_kill = agent.sub_status("bus")["delivered_total"].as_u64().unwrap_or(0);
    std::thread::sleep(Duration::from_secs(2));
    cluster.restart(victim);
    wait_drained(&agent, &cluster, "bus", 2000, Duration::from_secs(120));
    assert!(
        at_kill < 2000,
        "the node was killed before the drain ended ({at_kill} delivered)"
    );

    wait_until(Duration::from_secs(30), "the stream answers with all events", || {
        bus.try_count("POS") == Some(2000)
    });
    let messages = bus.messages("POS");
    assert_stream_holds_once_in_order(&messages, &ids_of(&[&events]));
}

#[test]
fn no_stream_for_the_subject_is_named_retried_and_delivered_once_created() {
    let cluster = NatsCluster::start(3);
    let bus = Bus::connect(&cluster.url());
    let mut agent = Agent::new(&nats_subscription("bus", &cluster.url(), "pos.{store_id}.{type}", ""));
    agent.start();
    let events = Events::new("orphan", 0..5, "SaleCreated");
    agent.send_events(&events);
    wait_until(Duration::from_secs(30), "the missing stream in last_error", || {
        agent.sub_status("bus")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("no stream takes pos.0042.SaleCreated"))
    });
    std::thread::sleep(Duration::from_secs(1));
    let s = agent.sub_status("bus");
    assert_eq!(s["pending"], 5, "nothing dropped: {s}");
    assert_eq!(s["parked"], 0, "{s}");
    assert_eq!(s["delivered_total"], 0, "{s}");

    bus.create_stream("POS", &["pos.>"]);
    wait_drained(&agent, &cluster, "bus", 5, Duration::from_secs(60));
    let messages = bus.messages("POS");
    assert_stream_holds_once_in_order(&messages, &ids_of(&[&events]));
}

/// `store-outbox fleet` against the cluster; its stdout (asserting exit 0).
fn fleet(cluster: &NatsCluster, args: &[&str]) -> String {
    let out = std::process::Command::new(binary())
        .args(["fleet", "--nats", &cluster.url(), "--stream", "FLEET"])
        .args(args)
        .output()
        .expect("run fleet");
    assert!(out.status.success(), "fleet failed: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Heartbeats go to their own subject per agent: `fleet.<store>.<agent>`.
const FLEET_SUBSCRIPTION: &str = "[[subscription]]\nname = \"fleet\"\nurl = \"{url}\"\n\
     subject = \"fleet.{store_id}.{agent_id}\"\nevents = [\"AgentHeartbeat\"]\n\
     timeout = \"2s\"\nretry = { initial = \"100ms\", max = \"1s\" }\n";

#[test]
fn an_agent_killed_mid_drain_loses_nothing_and_fleet_shows_every_agent_worst_first() {
    let cluster = NatsCluster::start(3);
    let bus = Bus::connect(&cluster.url());
    bus.create_stream("POS", &["pos.>"]);
    bus.create_stream("FLEET", &["fleet.>"]);
    let heartbeats = FLEET_SUBSCRIPTION.replace("{url}", &cluster.url());
    let dead_erp = format!("http://127.0.0.1:{}/hook", free_port());
    let mut till1 = Agent::with_agent_keys(
        "agent_id = \"till-01\"\nheartbeat = \"1s\"",
        &format!(
            "{}{heartbeats}{}",
            nats_subscription("bus", &cluster.url(), "pos.{store_id}.{type}", ""),
            subscription("erp", &dead_erp, "retry = { initial = \"100ms\", max = \"1s\" }")
        ),
    );
    let mut till2 = Agent::with_agent_keys("agent_id = \"till-02\"\nheartbeat = \"1s\"", &heartbeats);
    till1.start();
    till2.start();
    wait_until(Duration::from_secs(60), "both agents' heartbeats on the stream", || {
        let json = fleet(&cluster, &["--json"]);
        serde_json::from_str::<serde_json::Value>(&json)
            .ok()
            .and_then(|v| v.as_array().map(Vec::len))
            == Some(2)
    });
    // till-02 stops for good: it goes stale after three periods.
    till2.stop();

    // till-01 is killed with SIGKILL mid-drain and restarted.
    let sales = Events::new("fleet-sale", 0..1000, "SaleCreated").spread_over("order", 20);
    till1.send_events(&sales);
    wait_until(Duration::from_secs(60), "part of the drain done", || {
        till1.sub_status("bus")["delivered_total"].as_u64().unwrap_or(0) >= 100
    });
    till1.kill9();
    till1.start();
    wait_drained(&till1, &cluster, "bus", 1000, Duration::from_secs(120));
    assert_stream_holds_once_in_order(&bus.messages("POS"), &ids_of(&[&sales]));

    // Heartbeats are on their stream, in order per agent, with the status.
    let beats = bus.messages("FLEET");
    assert!(beats.len() >= 3, "{} heartbeats", beats.len());
    for agent in ["till-01", "till-02"] {
        let seqs: Vec<i64> = beats
            .iter()
            .filter(|m| m.subject == format!("fleet.0042.{agent}"))
            .map(|m| m.json["entity_seq"].as_i64().expect("entity_seq"))
            .collect();
        assert!(!seqs.is_empty(), "heartbeats of {agent}");
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{agent} in order: {seqs:?}");
    }
    assert!(beats.iter().all(|m| m.json["type"] == "AgentHeartbeat"));
    assert_eq!(
        beats[0].headers.get("Nats-Msg-Id"),
        beats[0].json["id"].as_str().map(str::to_string).as_ref()
    );

    // The central view: till-02 stale first, till-01 with erp offline.
    wait_until(
        Duration::from_secs(60),
        "till-02 stale and erp offline in fleet",
        || {
            let json: serde_json::Value = serde_json::from_str(&fleet(&cluster, &["--json"])).expect("fleet --json");
            let agents = json.as_array().cloned().unwrap_or_default();
            agents.len() == 2
                && agents[0]["agent_id"] == "till-02"
                && agents[0]["stale"] == true
                && agents[1]["stale"] == false
                && agents[1]["subscriptions"]
                    .as_array()
                    .is_some_and(|subs| subs.iter().any(|s| s["name"] == "erp" && s["state"] == "offline"))
        },
    );
    // The golden table (`[..]` matches the ages and counts that move).
    let table = fleet(&cluster, &[]);
    let golden = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fleet-two-agents.txt"),
    )
    .expect("golden file");
    snapbox::assert_data_eq!(table, snapbox::Data::text(golden));
}

#[test]
fn doctor_connects_to_the_cluster_and_names_the_stream_for_each_subject_or_its_absence() {
    let cluster = NatsCluster::start(3);
    let bus = Bus::connect(&cluster.url());
    // JetStream answers once the cluster has elected its leader: a stream
    // for other subjects waits for that.
    bus.create_stream("OTHER", &["other.>"]);
    let agent = Agent::new(&nats_subscription(
        "bus",
        &cluster.url(),
        "pos.{store_id}.{type}",
        "events = [\"SaleCreated\", \"AgentHeartbeat\"]",
    ));
    let doctor = || {
        let out = agent.cli(&["doctor", "--json"]);
        let reports: serde_json::Value = serde_json::from_slice(&out.stdout).expect("doctor --json");
        (out.status.code(), reports[0]["steps"].clone())
    };
    let verdicts = |steps: &serde_json::Value| -> Vec<(String, String)> {
        steps
            .as_array()
            .expect("steps")
            .iter()
            .map(|s| {
                (
                    s["step"].as_str().unwrap_or("").into(),
                    s["verdict"].as_str().unwrap_or("").into(),
                )
            })
            .collect()
    };
    // No stream yet: connected, but the stream step fails and names the subject.
    let (code, steps) = doctor();
    assert_eq!(code, Some(1), "{steps}");
    let names: Vec<(String, String)> = verdicts(&steps);
    assert_eq!(names[2], ("nats".into(), "ok".into()), "{steps}");
    assert_eq!(names[3], ("stream".into(), "fail".into()), "{steps}");
    assert!(
        steps[3]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("no stream takes pos.0042.")),
        "{steps}"
    );

    bus.create_stream("POS", &["pos.>"]);
    let (code, steps) = doctor();
    assert_eq!(code, Some(0), "{steps}");
    let detail = steps[3]["detail"].as_str().unwrap_or("").to_string();
    assert!(
        detail.contains("stream POS takes pos.0042.SaleCreated") && detail.contains("pos.0042.AgentHeartbeat"),
        "{detail}"
    );
}

#[test]
fn user_and_password_log_in_and_a_wrong_password_is_named_and_nothing_is_lost() {
    let cluster = NatsCluster::start_with(
        3,
        "authorization { users: [ { user: \"store\", password: \"s3cret\" } ] }",
    );
    let bus = Bus::connect_as(&cluster.url(), "store", "s3cret");
    bus.create_stream("POS", &["pos.>"]);
    let wrong = "user = \"store\"\npassword = \"wrong\"";
    let mut agent = Agent::new(&nats_subscription(
        "bus",
        &cluster.url(),
        "pos.{store_id}.{type}",
        wrong,
    ));
    agent.start();
    let events = Events::new("login", 0..20, "SaleCreated").spread_over("till", 2);
    agent.send_events(&events);
    wait_until(Duration::from_secs(30), "the refused login in last_error", || {
        agent.sub_status("bus")["last_error"]
            .as_str()
            .is_some_and(|e| e.to_ascii_lowercase().contains("authorization"))
    });
    let doctor = agent.cli(&["doctor"]);
    let said = String::from_utf8_lossy(&doctor.stdout).into_owned();
    assert!(
        said.contains("FAIL  nats") && said.contains("refused the login"),
        "{said}"
    );
    let s = agent.sub_status("bus");
    assert_eq!(
        (s["pending"].as_i64(), s["delivered_total"].as_i64()),
        (Some(20), Some(0)),
        "{s}"
    );

    // The right password (a restart with the config fixed): everything arrives once.
    agent.stop();
    agent.write_config(&nats_subscription(
        "bus",
        &cluster.url(),
        "pos.{store_id}.{type}",
        "user = \"store\"\npassword = \"s3cret\"",
    ));
    agent.start();
    wait_drained(&agent, &cluster, "bus", 20, Duration::from_secs(60));
    assert_stream_holds_once_in_order(&bus.messages("POS"), &ids_of(&[&events]));
}

#[test]
fn a_tls_cluster_is_refused_without_its_ca_and_reached_with_ca_file() {
    let certs = tempfile::Builder::new()
        .prefix("so-nats-tls-")
        .tempdir()
        .expect("tempdir");
    ca_and_server_cert(certs.path());
    let d = certs.path().display();
    let cluster = NatsCluster::start_with(
        3,
        &format!("tls {{ cert_file: \"{d}/server.pem\", key_file: \"{d}/server.key\" }}"),
    );
    let url = cluster.url().replace("nats://", "tls://");
    let ca = certs.path().join("ca.pem");
    let bus = {
        let ca = ca.clone();
        Bus::connect_with(&url, move || {
            async_nats::ConnectOptions::new()
                .add_root_certificates(ca.clone())
                .require_tls(true)
        })
    };
    bus.create_stream("POS", &["pos.>"]);

    // Without the CA the server's certificate is not trusted: named, kept.
    let mut agent = Agent::new(&nats_subscription("bus", &url, "pos.{store_id}.{type}", ""));
    agent.start();
    let events = Events::new("tls", 0..10, "SaleCreated").spread_over("till", 2);
    agent.send_events(&events);
    wait_until(
        Duration::from_secs(30),
        "the untrusted certificate in last_error",
        || {
            agent.sub_status("bus")["last_error"]
                .as_str()
                .is_some_and(|e| e.to_ascii_lowercase().contains("certificate"))
        },
    );
    let doctor = String::from_utf8_lossy(&agent.cli(&["doctor"]).stdout).into_owned();
    assert!(
        doctor.contains("FAIL  nats") && doctor.contains("TLS failed"),
        "{doctor}"
    );
    assert_eq!(agent.sub_status("bus")["pending"], 10);

    // With ca_file: everything arrives once, in order.
    agent.stop();
    agent.write_config(&nats_subscription(
        "bus",
        &url,
        "pos.{store_id}.{type}",
        &format!("ca_file = \"{}\"", ca.display()),
    ));
    agent.start();
    wait_drained(&agent, &cluster, "bus", 10, Duration::from_secs(60));
    assert_stream_holds_once_in_order(&bus.messages("POS"), &ids_of(&[&events]));
    let doctor = agent.cli(&["doctor"]);
    assert!(doctor.status.success(), "{}", String::from_utf8_lossy(&doctor.stdout));
}
