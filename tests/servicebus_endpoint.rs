//! The loopback Azure Service Bus of the tests (`common/servicebus.rs`)
//! against Microsoft's REST reference, before any agent code talks to it:
//! SAS tokens from the harness's own `sas_token` and from Microsoft's Python
//! sample are taken, every way a token can be wrong is a 401 with the
//! service's XML body, sessions, duplicate detection and batches store what
//! the service would, scripted and Retry-After answers come and go, and
//! Entra ID's client-credentials tokens are issued, taken and refused.

mod common;

use std::process::Command;
use std::time::Duration;

use base64::Engine;
use common::*;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const NAMESPACE: &str = "retail.servicebus.windows.net";
const ENTITY: &str = "pos-events";
const KEY_NAME: &str = "store-sender";
/// Shaped like a portal key (base64 text); signed with as UTF-8 bytes.
const KEY: &str = "k2mJ0sVx9nq4R8bT1cYwZ3eHfLuAiOp5G7dK6jN2Q+E=";

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT_ID: &str = "0f0e1d2c-3b4a-5968-7766-554433221100";
const CLIENT_SECRET: &str = "s3cr3t~value.of-the_app";
const SCOPE: &str = "https://servicebus.azure.net/.default";

fn start() -> ServiceBus {
    ServiceBus::start(NAMESPACE, ENTITY, KEY_NAME, KEY)
}

/// A token for the queue, valid an hour.
fn good_token(bus: &ServiceBus) -> String {
    sas_token(&bus.resource_uri(), KEY_NAME, KEY, unix_now() + 3600)
}

/// `BrokerProperties` of event `id` in session `entity`.
fn broker(id: &str, entity: &str) -> String {
    serde_json::json!({"MessageId": id, "SessionId": entity}).to_string()
}

/// "Send Message" with `authorization`, `broker_properties` and custom
/// property headers `custom`.
fn send(
    bus: &ServiceBus,
    authorization: &str,
    broker_properties: &str,
    custom: &[(&str, &str)],
    body: &str,
) -> HttpResponse {
    send_to(bus, ENTITY, authorization, broker_properties, custom, body)
}

fn send_to(
    bus: &ServiceBus,
    entity: &str,
    authorization: &str,
    broker_properties: &str,
    custom: &[(&str, &str)],
    body: &str,
) -> HttpResponse {
    let mut headers = vec![
        ("authorization", authorization),
        ("brokerproperties", broker_properties),
        ("content-type", "application/json"),
    ];
    headers.extend_from_slice(custom);
    http(
        bus.port(),
        "POST",
        &format!("/{entity}/messages?api-version=2017-04&timeout=60"),
        &headers,
        body.as_bytes(),
    )
}

/// "Send Message Batch" of `batch` (the JSON array).
fn send_batch(bus: &ServiceBus, authorization: &str, batch: &serde_json::Value) -> HttpResponse {
    http(
        bus.port(),
        "POST",
        &format!("/{ENTITY}/messages"),
        &[
            ("authorization", authorization),
            ("content-type", SERVICEBUS_BATCH_CONTENT_TYPE),
            // Ignored in a batch, as the reference says: properties travel
            // in UserProperties.
            ("type", "\"FromTheHeader\""),
        ],
        batch.to_string().as_bytes(),
    )
}

/// The `<Detail>` of the service's XML error body.
fn detail(response: &HttpResponse) -> String {
    let text = response.text();
    assert!(
        text.starts_with(&format!("<Error><Code>{}</Code><Detail>", response.status)),
        "not the service's error body: {text}"
    );
    assert_eq!(response.header("content-type"), Some("application/xml; charset=utf-8"));
    text.split("<Detail>")
        .nth(1)
        .and_then(|d| d.split("</Detail>").next())
        .expect("a Detail element")
        .to_string()
}

/// Base64 HMAC-SHA256 with the key's UTF-8 bytes over `<sr>\n<se>`.
fn signature(sr: &str, se: u64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY.as_bytes()).expect("hmac key");
    mac.update(format!("{sr}\n{se}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The first expiry from an hour ahead whose signature over `sr` contains
/// `c` (to test how the server decodes `+` and `/`).
fn expiry_whose_signature_has(sr: &str, c: char) -> u64 {
    let from = unix_now() + 3600;
    (from..from + 10_000)
        .find(|se| signature(sr, *se).contains(c))
        .expect("some signature has every base64 character")
}

/// A token for `sr` signed over `sr` as given (already encoded).
fn token_over(sr: &str, se: u64) -> String {
    let sig = url::form_urlencoded::byte_serialize(signature(sr, se).as_bytes()).collect::<String>();
    format!("SharedAccessSignature sr={sr}&sig={sig}&se={se}&skn={KEY_NAME}")
}

fn encoded(uri: &str) -> String {
    url::form_urlencoded::byte_serialize(uri.as_bytes()).collect()
}

/// Asks the token endpoint of `tenant` with `form` fields.
fn ask_token(bus: &ServiceBus, tenant: &str, form: &[(&str, &str)]) -> HttpResponse {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    http(
        bus.port(),
        "POST",
        &format!("/{tenant}/oauth2/v2.0/token"),
        &[("content-type", "application/x-www-form-urlencoded")],
        body.as_bytes(),
    )
}

/// Token request fields.
type Form = Vec<(&'static str, String)>;

fn client_credentials(secret: &str, scope: &str) -> Form {
    vec![
        ("grant_type", "client_credentials".to_string()),
        ("client_id", CLIENT_ID.to_string()),
        ("client_secret", secret.to_string()),
        ("scope", scope.to_string()),
    ]
}

fn ask(bus: &ServiceBus, tenant: &str, form: Form) -> HttpResponse {
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ask_token(bus, tenant, &pairs)
}

#[test]
fn a_signed_message_is_created_and_stored_as_sent() {
    let bus = start();
    let envelope = r#"{"id":"01J0","type":"SaleCreated","entity":"order:4711","entity_seq":3}"#;
    let properties = r#"{"MessageId":"01J0","SessionId":"order:4711","Label":"M1","TimeToLive":90}"#;
    let r = send(
        &bus,
        &good_token(&bus),
        properties,
        &[
            ("type", "\"SaleCreated\""),
            ("store_id", "\"0042\""),
            ("agent_id", "\"till-03\""),
            ("entity_seq", "3"),
            ("x-ms-retrypolicy", "NoRetry"),
        ],
        envelope,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(r.body.is_empty(), "201 has no body: {}", r.text());

    let messages = bus.wait_for_messages(1, Duration::from_secs(5));
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!(m.entity, ENTITY);
    assert_eq!(m.body, envelope);
    assert_eq!(m.json()["entity_seq"], 3);
    assert_eq!(m.message_id, "01J0");
    assert_eq!(m.session_id.as_deref(), Some("order:4711"));
    // Every broker property kept, not only the two the agent needs.
    assert_eq!(m.broker_properties["Label"], "M1");
    assert_eq!(m.broker_properties["TimeToLive"], 90);
    // Custom properties raw as sent, and unquoted.
    assert_eq!(m.custom_properties["type"], "\"SaleCreated\"");
    assert_eq!(m.property("type").as_deref(), Some("SaleCreated"));
    assert_eq!(m.property("store_id").as_deref(), Some("0042"));
    assert_eq!(m.property("agent_id").as_deref(), Some("till-03"));
    assert_eq!(m.custom_properties["entity_seq"], "3");
    // HTTP's and the API's own headers are no properties.
    let names: Vec<&str> = m.custom_properties.keys().map(String::as_str).collect();
    assert_eq!(names, ["agent_id", "entity_seq", "store_id", "type"]);
    assert_eq!(m.content_type.as_deref(), Some("application/json"));
    assert!(!m.batched);
    assert_eq!(m.sequence_number, 1);
    assert_eq!(bus.requests(), 1);
    assert_eq!(bus.duplicates(), 0);
    // The query (api-version, timeout) is ignored, as the reference says.
    assert_eq!(
        bus.request_log()[0].path,
        "/pos-events/messages?api-version=2017-04&timeout=60"
    );
}

#[test]
fn unquote_property_undoes_json_quoting_only() {
    assert_eq!(unquote_property("\"SaleCreated\""), "SaleCreated");
    assert_eq!(unquote_property("\"say \\\"hi\\\"\""), "say \"hi\"");
    assert_eq!(unquote_property("3"), "3");
    assert_eq!(unquote_property("High"), "High");
    assert_eq!(unquote_property("\""), "\"");
}

#[test]
fn every_wrong_sas_token_is_a_401_and_stores_nothing() {
    let bus = start();
    let uri = bus.resource_uri();
    let in_an_hour = unix_now() + 3600;
    let cases = [
        ("no header", String::new(), "MissingToken:"),
        ("not a token", "Basic c3RvcmU6c2VuZGVy".to_string(), "InvalidToken:"),
        (
            "wrong key",
            sas_token(&uri, KEY_NAME, "another-key", in_an_hour),
            "InvalidSignature:",
        ),
        (
            "wrong key name",
            sas_token(&uri, "RootManageSharedAccessKey", KEY, in_an_hour),
            "InvalidSignature:",
        ),
        (
            "expired",
            sas_token(&uri, KEY_NAME, KEY, unix_now() - 1),
            "ExpiredToken:",
        ),
        (
            "another entity",
            sas_token(&format!("https://{NAMESPACE}/returns"), KEY_NAME, KEY, in_an_hour),
            "InvalidAudience:",
        ),
        (
            "another namespace",
            sas_token(
                &format!("https://other.servicebus.windows.net/{ENTITY}"),
                KEY_NAME,
                KEY,
                in_an_hour,
            ),
            "InvalidAudience:",
        ),
        (
            // A prefix of the name, not of the path: `pos` is no parent of `pos-events`.
            "a prefix inside a segment",
            sas_token(&format!("https://{NAMESPACE}/pos"), KEY_NAME, KEY, in_an_hour),
            "InvalidAudience:",
        ),
        (
            "se changed after signing",
            good_token(&bus).replace(&format!("se={in_an_hour}"), &format!("se={}", in_an_hour + 60)),
            "InvalidSignature:",
        ),
        (
            "no skn",
            good_token(&bus).replace(&format!("&skn={KEY_NAME}"), ""),
            "InvalidToken:",
        ),
    ];
    for (what, token, expected) in &cases {
        let r = if token.is_empty() {
            http(
                bus.port(),
                "POST",
                &format!("/{ENTITY}/messages"),
                &[("brokerproperties", &broker("a", "order:1"))],
                b"{}",
            )
        } else {
            send(&bus, token, &broker("a", "order:1"), &[], "{}")
        };
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        let d = detail(&r);
        assert!(d.starts_with(expected), "{what}: detail {d:?}, expected {expected}");
    }
    assert_eq!(bus.requests(), cases.len());
    assert_eq!(bus.message_count(), 0, "a refused message is not stored");
}

#[test]
fn tokens_for_a_parent_or_in_other_spellings_are_taken() {
    let bus = start();
    bus.set_duplicate_detection(false);
    let in_an_hour = unix_now() + 3600;
    let cases = [
        (
            "the namespace",
            sas_token(&format!("https://{NAMESPACE}/"), KEY_NAME, KEY, in_an_hour),
        ),
        (
            "the namespace, no slash",
            sas_token(&format!("https://{NAMESPACE}"), KEY_NAME, KEY, in_an_hour),
        ),
        (
            "sb:// scheme",
            sas_token(&format!("sb://{NAMESPACE}/{ENTITY}"), KEY_NAME, KEY, in_an_hour),
        ),
        (
            "http:// scheme",
            sas_token(&format!("http://{NAMESPACE}/{ENTITY}"), KEY_NAME, KEY, in_an_hour),
        ),
        (
            "the messages path",
            sas_token(
                &format!("https://{NAMESPACE}/{ENTITY}/messages"),
                KEY_NAME,
                KEY,
                in_an_hour,
            ),
        ),
        (
            "upper case",
            sas_token(
                "https://RETAIL.servicebus.windows.net/POS-Events",
                KEY_NAME,
                KEY,
                in_an_hour,
            ),
        ),
        (
            // .NET's HttpUtility.UrlEncode writes lower-case hex: the
            // signature is over sr as sent, so that works too.
            "lower-case percent-encoding",
            token_over(&encoded(&bus.resource_uri()).to_lowercase(), in_an_hour),
        ),
        ("fields in another order", {
            let t = good_token(&bus);
            let fields: Vec<&str> = t["SharedAccessSignature ".len()..].split('&').rev().collect();
            format!("SharedAccessSignature {}", fields.join("&"))
        }),
    ];
    for (what, token) in &cases {
        let r = send(&bus, token, &broker(what, "order:1"), &[], "{}");
        assert_eq!(r.status, 201, "{what}: {token}: {}", r.text());
    }
    assert_eq!(bus.message_count(), cases.len());
}

#[test]
fn an_unencoded_plus_in_sig_breaks_the_signature_as_in_azure() {
    let bus = start();
    let sr = encoded(&bus.resource_uri());
    let se = expiry_whose_signature_has(&sr, '+');
    let raw_sig = signature(&sr, se);
    let unencoded = format!("SharedAccessSignature sr={sr}&sig={raw_sig}&se={se}&skn={KEY_NAME}");
    let r = send(&bus, &unencoded, &broker("a", "order:1"), &[], "{}");
    assert_eq!(r.status, 401, "a + decodes to a space: {}", r.text());
    assert!(detail(&r).starts_with("InvalidSignature:"));
    let r = send(&bus, &token_over(&sr, se), &broker("a", "order:1"), &[], "{}");
    assert_eq!(r.status, 201, "the same signature, encoded: {}", r.text());
}

/// Microsoft's Python sample ("Generate SAS token"): `quote_plus` of the
/// URI, HMAC-SHA256 keyed with the key's UTF-8 bytes, `quote` of the base64
/// signature (which leaves `/` as it is).
const MICROSOFT_PYTHON_SAMPLE: &str = r#"
import base64, hashlib, hmac, sys, urllib.parse
uri, key_name, key, expiry = sys.argv[1:5]
sr = urllib.parse.quote_plus(uri)
mac = hmac.HMAC(key.encode('utf-8'), (sr + '\n' + expiry).encode('utf-8'), hashlib.sha256)
sig = urllib.parse.quote(base64.b64encode(mac.digest()))
print('SharedAccessSignature sr={}&sig={}&se={}&skn={}'.format(sr, sig, expiry, key_name))
"#;

#[test]
fn microsofts_python_sample_and_sas_token_sign_alike() {
    let bus = start();
    let sr = encoded(&bus.resource_uri());
    // One with a `/` in the signature, which the sample leaves unencoded.
    let se = expiry_whose_signature_has(&sr, '/');
    let out = run_ok(
        Command::new("python3")
            .arg("-c")
            .arg(MICROSOFT_PYTHON_SAMPLE)
            .arg(bus.resource_uri())
            .arg(KEY_NAME)
            .arg(KEY)
            .arg(se.to_string()),
        "python3 with Microsoft's SAS sample",
    );
    let python = String::from_utf8(out.stdout).expect("utf-8").trim().to_string();
    let ours = sas_token(&bus.resource_uri(), KEY_NAME, KEY, se);
    let sig = |t: &str| -> String {
        let raw = t.split("sig=").nth(1).and_then(|s| s.split('&').next()).expect("sig");
        percent_encoding::percent_decode_str(raw)
            .decode_utf8_lossy()
            .into_owned()
    };
    assert_eq!(sig(&python), sig(&ours), "python {python}, ours {ours}");
    assert!(python.contains(&format!("sr={sr}&")), "{python}");
    for (who, token) in [("python", &python), ("sas_token", &ours)] {
        let r = send(&bus, token, &broker(who, "order:1"), &[], "{}");
        assert_eq!(r.status, 201, "{who}: {token}: {}", r.text());
    }
    assert_eq!(bus.message_count(), 2);
}

#[test]
fn expiry_follows_the_wall_clock_and_the_clock_knob() {
    let bus = start();
    bus.set_duplicate_detection(false);
    let token = sas_token(&bus.resource_uri(), KEY_NAME, KEY, unix_now() + 2);
    assert_eq!(send(&bus, &token, &broker("a", "order:1"), &[], "{}").status, 201);
    std::thread::sleep(Duration::from_secs(3));
    let r = send(&bus, &token, &broker("a", "order:1"), &[], "{}");
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(detail(&r).starts_with("ExpiredToken:"));

    let token = good_token(&bus);
    assert_eq!(send(&bus, &token, &broker("b", "order:1"), &[], "{}").status, 201);
    bus.advance_clock(Duration::from_secs(3601));
    let r = send(&bus, &token, &broker("b", "order:1"), &[], "{}");
    assert_eq!(
        r.status,
        401,
        "an hour's token after the clock moved an hour: {}",
        r.text()
    );
    assert!(detail(&r).starts_with("ExpiredToken:"));
    assert_eq!(bus.message_count(), 2);
}

#[test]
fn a_duplicate_message_id_is_accepted_and_stored_once_per_entity() {
    let bus = start();
    bus.add_entity("returns");
    let token = sas_token(&format!("https://{NAMESPACE}"), KEY_NAME, KEY, unix_now() + 3600);
    for body in ["first", "resent"] {
        let r = send(&bus, &token, &broker("evt-1", "order:1"), &[], body);
        assert_eq!(r.status, 201, "a duplicate is accepted: {}", r.text());
    }
    // The same id in another entity is another message.
    let r = send_to(&bus, "returns", &token, &broker("evt-1", "order:1"), &[], "elsewhere");
    assert_eq!(r.status, 201, "{}", r.text());

    let messages = bus.messages();
    let bodies: Vec<(&str, &str)> = messages.iter().map(|m| (m.entity.as_str(), m.body.as_str())).collect();
    assert_eq!(bodies, [("pos-events", "first"), ("returns", "elsewhere")]);
    assert_eq!(bus.duplicates(), 1);
    assert_eq!(bus.requests(), 3);
    assert_eq!(messages[1].sequence_number, 1, "sequence numbers are per entity");

    // Off, the resend is stored again.
    bus.set_duplicate_detection(false);
    assert_eq!(
        send(&bus, &token, &broker("evt-1", "order:1"), &[], "again").status,
        201
    );
    assert_eq!(bus.message_count(), 3);
}

#[test]
fn an_unknown_entity_is_not_found() {
    let bus = start();
    let token = sas_token(&format!("https://{NAMESPACE}"), KEY_NAME, KEY, unix_now() + 3600);
    let r = send_to(&bus, "no-such-queue", &token, &broker("a", "order:1"), &[], "{}");
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(detail(&r).starts_with("MessagingEntityNotFound:"));
}

#[test]
fn sessions_keep_their_order_and_are_required() {
    let bus = start();
    let token = good_token(&bus);
    let order = [
        ("order:1", 1),
        ("order:2", 1),
        ("order:1", 2),
        ("order:2", 2),
        ("order:1", 3),
    ];
    for (entity, seq) in order {
        let id = format!("{entity}#{seq}");
        let r = send(
            &bus,
            &token,
            &broker(&id, entity),
            &[("entity_seq", &seq.to_string())],
            &id,
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let sessions = bus.sessions();
    let seqs = |s: &str| -> Vec<String> {
        sessions[s]
            .iter()
            .map(|m| m.property("entity_seq").expect("entity_seq"))
            .collect()
    };
    assert_eq!(sessions.len(), 2);
    assert_eq!(seqs("order:1"), ["1", "2", "3"]);
    assert_eq!(seqs("order:2"), ["1", "2"]);

    // A session-enabled entity refuses a message without SessionId.
    let r = send(&bus, &token, r#"{"MessageId":"lonely"}"#, &[], "{}");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(detail(&r).contains("SessionId was not set"));
    let r = http(
        bus.port(),
        "POST",
        &format!("/{ENTITY}/messages"),
        &[("authorization", &token)],
        b"{}",
    );
    assert_eq!(r.status, 400, "no BrokerProperties at all: {}", r.text());
    // SessionId and PartitionKey must agree.
    let r = send(
        &bus,
        &token,
        r#"{"MessageId":"pk","SessionId":"order:1","PartitionKey":"order:2"}"#,
        &[],
        "{}",
    );
    assert_eq!(r.status, 400, "{}", r.text());
    // BrokerProperties must be a JSON object.
    let r = send(&bus, &token, "MessageId=x", &[], "{}");
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(bus.message_count(), 5, "no refused message stored");

    // Without sessions, no SessionId is needed; the service assigns a MessageId.
    bus.set_sessions_required(false);
    let r = send(&bus, &token, "{}", &[], "plain");
    assert_eq!(r.status, 201, "{}", r.text());
    let plain = bus.messages().pop().expect("stored");
    assert_eq!(plain.session_id, None);
    assert_eq!(plain.message_id.len(), 32, "an assigned id: {}", plain.message_id);
    assert_eq!(bus.sessions().values().map(Vec::len).sum::<usize>(), 5);
}

#[test]
fn a_batch_is_one_request_of_n_messages() {
    let bus = start();
    let token = good_token(&bus);
    let batch = serde_json::json!([
        {
            "Body": r#"{"id":"b1","entity_seq":1}"#,
            "BrokerProperties": {"MessageId": "b1", "SessionId": "order:7"},
            "UserProperties": {"type": "SaleCreated", "store_id": "0042", "entity_seq": 1}
        },
        {
            "Body": r#"{"id":"b2","entity_seq":1}"#,
            "BrokerProperties": {"MessageId": "b2", "SessionId": "order:8"},
            "UserProperties": {"type": "SaleCreated", "store_id": "0042", "entity_seq": 1}
        },
        {
            "Body": r#"{"id":"b3","entity_seq":2}"#,
            "BrokerProperties": {"MessageId": "b3", "SessionId": "order:7"},
            "UserProperties": {"type": "SaleUpdated", "store_id": "0042", "entity_seq": 2}
        },
        {
            "Body": "a resend inside the batch",
            "BrokerProperties": {"MessageId": "b1", "SessionId": "order:7"}
        }
    ]);
    let r = send_batch(&bus, &token, &batch);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(bus.requests(), 1);

    let messages = bus.wait_for_messages(3, Duration::from_secs(5));
    let ids: Vec<&str> = messages.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(ids, ["b1", "b2", "b3"]);
    assert_eq!(bus.duplicates(), 1);
    let first = &messages[0];
    assert!(first.batched);
    assert_eq!(first.content_type.as_deref(), Some(SERVICEBUS_BATCH_CONTENT_TYPE));
    assert_eq!(first.body, r#"{"id":"b1","entity_seq":1}"#);
    assert_eq!(first.json()["id"], "b1");
    assert_eq!(first.session_id.as_deref(), Some("order:7"));
    // UserProperties as JSON text: strings quoted, numbers bare; the
    // header sent with the batch is not a property.
    assert_eq!(first.custom_properties["type"], "\"SaleCreated\"");
    assert_eq!(first.property("type").as_deref(), Some("SaleCreated"));
    assert_eq!(first.custom_properties["entity_seq"], "1");
    let order7: Vec<String> = bus.sessions()["order:7"].iter().map(|m| m.message_id.clone()).collect();
    assert_eq!(order7, ["b1", "b3"]);

    // All or nothing: one element without SessionId refuses the batch.
    let bad = serde_json::json!([
        {"Body": "ok", "BrokerProperties": {"MessageId": "c1", "SessionId": "order:9"}},
        {"Body": "no session", "BrokerProperties": {"MessageId": "c2"}}
    ]);
    let r = send_batch(&bus, &token, &bad);
    assert_eq!(r.status, 400, "{}", r.text());
    for not_a_batch in [
        serde_json::json!({"Body": "x"}),
        serde_json::json!([]),
        serde_json::json!([{"Body": 5}]),
    ] {
        let r = send_batch(&bus, &token, &not_a_batch);
        assert_eq!(r.status, 400, "{not_a_batch}: {}", r.text());
    }
    assert_eq!(bus.message_count(), 3, "nothing of a refused batch is stored");
}

#[test]
fn scripted_answers_come_first_then_the_service_answers_again() {
    let bus = start();
    let token = good_token(&bus);
    bus.answer_next_retry_after(429, 1, 7);
    let r = send(&bus, &token, &broker("t1", "order:1"), &[], "{}");
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("7"));
    assert!(detail(&r).starts_with("ServerBusy:"));
    assert_eq!(bus.message_count(), 0, "a throttled message is not stored");
    let r = send(&bus, &token, &broker("t1", "order:1"), &[], "{}");
    assert_eq!(r.status, 201, "{}", r.text());

    bus.answer_next(503, 2);
    bus.answer_next(410, 1);
    let statuses: Vec<u16> = (2..=5)
        .map(|i| send(&bus, &token, &broker(&format!("t{i}"), "order:1"), &[], "{}").status)
        .collect();
    assert_eq!(statuses, [503, 503, 410, 201]);
    // Scripted answers come before the auth check: even a bad token gets them.
    bus.answer_next(500, 1);
    assert_eq!(send(&bus, "SharedAccessSignature sr=x", "{}", &[], "{}").status, 500);
    let ids: Vec<String> = bus.messages().into_iter().map(|m| m.message_id).collect();
    assert_eq!(ids, ["t1", "t5"]);
    assert_eq!(bus.requests(), 7);
}

#[test]
fn forbidden_is_403_naming_the_send_claim() {
    let bus = start();
    let token = good_token(&bus);
    bus.set_forbidden(true);
    let r = send(&bus, &token, &broker("f1", "order:1"), &[], "{}");
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(detail(&r).contains("'Send' claim(s) are required"), "{}", r.text());
    // A bad token is still a 401 first.
    let r = send(
        &bus,
        &sas_token(&bus.resource_uri(), KEY_NAME, "nope", unix_now() + 60),
        "{}",
        &[],
        "{}",
    );
    assert_eq!(r.status, 401);
    bus.set_forbidden(false);
    assert_eq!(send(&bus, &token, &broker("f1", "order:1"), &[], "{}").status, 201);
    assert_eq!(bus.message_count(), 1);
}

#[test]
fn down_refuses_connections_and_up_serves_the_same_port() {
    let bus = start();
    let token = good_token(&bus);
    let port = bus.port();
    bus.set_down(true);
    let refused = try_http(
        port,
        "POST",
        &format!("/{ENTITY}/messages"),
        &[
            ("authorization", &token),
            ("brokerproperties", &broker("d1", "order:1")),
        ],
        b"{}",
    );
    assert!(refused.is_err(), "down, yet answered: {refused:?}");
    bus.set_down(true); // idempotent
    bus.set_down(false);
    assert_eq!(bus.port(), port);
    assert_eq!(send(&bus, &token, &broker("d1", "order:1"), &[], "{}").status, 201);
    assert_eq!(bus.message_count(), 1, "state survives the outage");
}

#[test]
fn an_entra_token_is_issued_and_taken() {
    let bus = start();
    bus.enable_entra(TENANT, CLIENT_ID, CLIENT_SECRET, 3599);
    assert_eq!(
        bus.token_url(TENANT),
        format!("http://127.0.0.1:{}/{TENANT}/oauth2/v2.0/token", bus.port())
    );
    let r = ask(&bus, TENANT, client_credentials(CLIENT_SECRET, SCOPE));
    assert_eq!(r.status, 200, "{}", r.text());
    let json = r.json();
    assert_eq!(json["token_type"], "Bearer");
    assert_eq!(json["expires_in"], 3599, "a number, as Entra's v2.0 endpoint writes it");
    let access_token = json["access_token"].as_str().expect("access_token").to_string();
    assert_eq!(access_token.split('.').count(), 3, "shaped like a JWT: {access_token}");
    assert_eq!(bus.token_requests(), 1);

    let r = send(
        &bus,
        &format!("Bearer {access_token}"),
        &broker("e1", "order:1"),
        &[],
        "{}",
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(bus.messages()[0].message_id, "e1");
    // The Bearer check is the same for a batch.
    let batch = serde_json::json!([{"Body": "x", "BrokerProperties": {"MessageId": "e2", "SessionId": "order:1"}}]);
    assert_eq!(send_batch(&bus, &format!("Bearer {access_token}"), &batch).status, 201);
    assert_eq!(bus.message_count(), 2);
}

#[test]
fn entra_refuses_wrong_credentials_as_microsoft_does() {
    let bus = start();
    bus.enable_entra(TENANT, CLIENT_ID, CLIENT_SECRET, 3599);
    // (what, tenant, form, status, error, AADSTS code)
    let cases: Vec<(&str, &str, Form, u16, &str, &str)> = vec![
        (
            "wrong secret",
            TENANT,
            client_credentials("guessed", SCOPE),
            401,
            "invalid_client",
            "AADSTS7000215",
        ),
        (
            "no secret",
            TENANT,
            client_credentials(CLIENT_SECRET, SCOPE)
                .into_iter()
                .filter(|(k, _)| *k != "client_secret")
                .collect(),
            401,
            "invalid_client",
            "AADSTS7000218",
        ),
        (
            "wrong tenant",
            "00000000-0000-0000-0000-000000000000",
            client_credentials(CLIENT_SECRET, SCOPE),
            400,
            "invalid_request",
            "AADSTS90002",
        ),
        (
            "scope without /.default",
            TENANT,
            client_credentials(CLIENT_SECRET, "https://servicebus.azure.net"),
            400,
            "invalid_scope",
            "AADSTS1002012",
        ),
        (
            "unknown application",
            TENANT,
            client_credentials(CLIENT_SECRET, SCOPE)
                .into_iter()
                .map(|(k, v)| {
                    if k == "client_id" {
                        (k, "someone-else".to_string())
                    } else {
                        (k, v)
                    }
                })
                .collect(),
            400,
            "unauthorized_client",
            "AADSTS700016",
        ),
        (
            "another grant",
            TENANT,
            client_credentials(CLIENT_SECRET, SCOPE)
                .into_iter()
                .map(|(k, v)| {
                    if k == "grant_type" {
                        (k, "password".to_string())
                    } else {
                        (k, v)
                    }
                })
                .collect(),
            400,
            "unsupported_grant_type",
            "AADSTS70003",
        ),
    ];
    for (what, tenant, form, status, error, code) in &cases {
        let r = ask(&bus, tenant, form.clone());
        assert_eq!(r.status, *status, "{what}: {}", r.text());
        let json = r.json();
        assert_eq!(json["error"], *error, "{what}: {json}");
        let description = json["error_description"].as_str().expect("error_description");
        assert!(description.starts_with(&format!("{code}:")), "{what}: {description}");
    }
    // A body that is not a form has no grant_type.
    let r = http(
        bus.port(),
        "POST",
        &format!("/{TENANT}/oauth2/v2.0/token"),
        &[],
        br#"{"grant_type":"client_credentials"}"#,
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_request");
    assert_eq!(bus.token_requests(), cases.len() + 1);

    // A token for another resource is issued, and the bus refuses it.
    let r = ask(
        &bus,
        TENANT,
        client_credentials(CLIENT_SECRET, "https://storage.azure.com/.default"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let storage_token = r.json()["access_token"].as_str().expect("token").to_string();
    let r = send(
        &bus,
        &format!("Bearer {storage_token}"),
        &broker("x", "order:1"),
        &[],
        "{}",
    );
    assert_eq!(r.status, 401);
    assert!(detail(&r).starts_with("InvalidAudience:"));
    // A token nobody issued.
    let r = send(
        &bus,
        "Bearer eyJ0eXAiOiJKV1QifQ.e30.c2ln",
        &broker("x", "order:1"),
        &[],
        "{}",
    );
    assert_eq!(r.status, 401);
    assert_eq!(bus.message_count(), 0);

    // Entra unavailable, then back.
    bus.answer_next_token(503, 1);
    assert_eq!(ask(&bus, TENANT, client_credentials(CLIENT_SECRET, SCOPE)).status, 503);
    assert_eq!(ask(&bus, TENANT, client_credentials(CLIENT_SECRET, SCOPE)).status, 200);
}

#[test]
fn an_expired_entra_token_is_refused() {
    let bus = start();
    bus.enable_entra(TENANT, CLIENT_ID, CLIENT_SECRET, 60);
    let r = ask(&bus, TENANT, client_credentials(CLIENT_SECRET, SCOPE));
    let bearer = format!("Bearer {}", r.json()["access_token"].as_str().expect("token"));
    assert_eq!(send(&bus, &bearer, &broker("x1", "order:1"), &[], "{}").status, 201);
    // Whole seconds: 10 s of margin for the wall clock ticking meanwhile.
    bus.advance_clock(Duration::from_secs(50));
    assert_eq!(send(&bus, &bearer, &broker("x2", "order:1"), &[], "{}").status, 201);
    bus.advance_clock(Duration::from_secs(10));
    let r = send(&bus, &bearer, &broker("x3", "order:1"), &[], "{}");
    assert_eq!(r.status, 401, "at its expiry: {}", r.text());
    assert!(detail(&r).starts_with("ExpiredToken:"));
    // A new token works again.
    let r = ask(&bus, TENANT, client_credentials(CLIENT_SECRET, SCOPE));
    let bearer = format!("Bearer {}", r.json()["access_token"].as_str().expect("token"));
    assert_eq!(send(&bus, &bearer, &broker("x3", "order:1"), &[], "{}").status, 201);
    let ids: Vec<String> = bus.messages().into_iter().map(|m| m.message_id).collect();
    assert_eq!(ids, ["x1", "x2", "x3"]);
    assert_eq!(bus.token_requests(), 2);
}
