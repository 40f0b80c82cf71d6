//! The Pub/Sub test peers themselves (`tests/common/pubsub.rs`), before the
//! destination's tests lean on them: the emulator keeps per-key order and
//! attributes, loses everything when killed and leaves no JVM behind; the
//! token endpoint takes a correctly signed service-account JWT and refuses
//! a wrong key, an expired or overlong one, a wrong audience and a missing
//! scope; the front wants its tokens, forwards with one and answers
//! Google's errors on command.
//!
//! The emulator tests pass with a printed reason when the emulator is not
//! installed (package google-cloud-cli-pubsub-emulator); the token endpoint
//! needs only `openssl`.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use rustls::pki_types::pem::PemObject;
use serde_json::{json, Value};

const PROJECT: &str = "store-outbox-test";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

/// RS256 (RSASSA-PKCS1-v1_5 with SHA-256) by ring, through rustls' ring
/// provider (ring itself is no dependency the tests can name).
fn rs256_ring(private_key_pem: &str, message: &[u8]) -> Vec<u8> {
    let der = rustls::pki_types::PrivateKeyDer::from_pem_slice(private_key_pem.as_bytes())
        .expect("the key file's private_key is PEM");
    let key = rustls::crypto::ring::sign::any_supported_type(&der).expect("ring takes the RSA key");
    key.choose_scheme(&[rustls::SignatureScheme::RSA_PKCS1_SHA256])
        .expect("an RSA key signs RSA_PKCS1_SHA256")
        .sign(message)
        .expect("ring signs")
}

/// RS256 by the `openssl` command: a second, independent signer, so the
/// token endpoint is not only checked against the library it verifies with.
fn rs256_openssl(dir: &Path, private_key_pem: &str, message: &[u8]) -> Vec<u8> {
    let key_file = dir.join("openssl-signer.pem");
    std::fs::write(&key_file, private_key_pem).expect("write the key for openssl");
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(&key_file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run openssl dgst");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(message)
        .expect("hand the message to openssl");
    let out = child.wait_with_output().expect("openssl dgst finishes");
    assert!(out.status.success(), "openssl dgst -sign failed");
    out.stdout
}

/// A JWT of `header` and `claims`, signed by `sign` over
/// `base64url(header).base64url(claims)`.
fn jwt(header: &Value, claims: &Value, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = sign(signed.as_bytes());
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// The claims a service account sends for a Pub/Sub token, valid for an
/// hour from now.
fn good_claims(key: &ServiceAccountKey) -> Value {
    let iat = now();
    json!({
        "iss": key.client_email,
        "scope": PUBSUB_SCOPE,
        "aud": key.token_uri,
        "iat": iat,
        "exp": iat + 3600,
    })
}

fn rs256_header(key: &ServiceAccountKey) -> Value {
    json!({"alg": "RS256", "typ": "JWT", "kid": key.private_key_id})
}

/// `POST /token` with the JWT-bearer form.
fn exchange(tokens: &TokenServer, assertion: &str) -> HttpResponse {
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", JWT_BEARER_GRANT)
        .append_pair("assertion", assertion)
        .finish();
    http(
        tokens.port(),
        "POST",
        "/token",
        &[("content-type", "application/x-www-form-urlencoded")],
        form.as_bytes(),
    )
}

/// Asserts a 400 `invalid_grant` whose description contains `names`.
fn assert_refused(answer: &HttpResponse, names: &str, what: &str) {
    let body = answer.json();
    assert_eq!(answer.status, 400, "{what}: {}", answer.text());
    assert_eq!(body["error"], "invalid_grant", "{what}: {}", answer.text());
    let description = body["error_description"].as_str().unwrap_or_default();
    assert!(
        description.contains(names),
        "{what}: the description {description:?} does not name {names:?}"
    );
}

/// A token for `key` from `tokens`, by a good exchange.
fn access_token(tokens: &TokenServer, key: &ServiceAccountKey) -> String {
    let answer = exchange(
        tokens,
        &jwt(&rs256_header(key), &good_claims(key), |m| {
            rs256_ring(&key.private_key, m)
        }),
    );
    assert_eq!(answer.status, 200, "a good exchange: {}", answer.text());
    answer.json()["access_token"]
        .as_str()
        .expect("an access_token")
        .to_string()
}

/// Whether any process is left of the process group `group`, or a java
/// process listening on `port` (its command line names it).
fn leftovers(group: u32, port: u16) -> Vec<String> {
    let mut found = Vec::new();
    // SAFETY: signal 0 only checks whether the group exists.
    if unsafe { libc::kill(-(group as i32), 0) } == 0 {
        found.push(format!("process group {group} still exists"));
    }
    let port_arg = format!("--port={port}");
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("java") && cmdline.contains(&port_arg) {
            found.push(format!("{}: {cmdline}", entry.file_name().to_string_lossy()));
        }
    }
    found
}

#[test]
fn emulator_keeps_order_per_ordering_key_and_the_attributes() {
    let Some(emulator) = PubSubEmulator::start() else {
        return;
    };
    emulator.create_topic(PROJECT, "pos-events");
    emulator.create_ordered_subscription(PROJECT, "pos-events-check", "pos-events");

    // 3 entities × 5 events, published round by round so the keys
    // interleave, one key per call as Pub/Sub wants it. The data is not
    // UTF-8, to see base64 both ways.
    let keys = ["order:4711", "order:4712", "stock:0042/8710"];
    let mut sent = Vec::new();
    for seq in 1..=5 {
        for key in keys {
            let data = [&[0xff, 0x00, seq as u8][..], format!("{key}#{seq}").as_bytes()].concat();
            let attributes: BTreeMap<String, String> = [
                ("webhook-id", format!("evt-{key}-{seq}")),
                ("type", "SaleCreated".to_string()),
                ("entity_seq", seq.to_string()),
                ("store_id", "Filiale Zürich".to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            let message = (data, key.to_string(), attributes);
            let ids = emulator.publish_raw(PROJECT, "pos-events", std::slice::from_ref(&message));
            assert_eq!(ids.len(), 1, "one message id per message");
            sent.push(message);
        }
    }

    let pulled = emulator.pull_all(PROJECT, "pos-events-check", 15, Duration::from_secs(30));
    assert_eq!(pulled.len(), 15, "every message once: {pulled:#?}");
    let ids: std::collections::BTreeSet<&str> = pulled.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(ids.len(), 15, "distinct message ids");
    for key in keys {
        let of_key: Vec<&PulledMessage> = pulled.iter().filter(|m| m.ordering_key == key).collect();
        let seqs: Vec<&str> = of_key.iter().map(|m| m.attributes["entity_seq"].as_str()).collect();
        assert_eq!(seqs, ["1", "2", "3", "4", "5"], "publish order kept for {key}");
        let expected: Vec<&(Vec<u8>, String, BTreeMap<String, String>)> =
            sent.iter().filter(|(_, k, _)| k == key).collect();
        for (got, (data, _, attributes)) in of_key.iter().zip(expected) {
            assert_eq!(&got.data, data, "data of {key} as sent");
            assert_eq!(&got.attributes, attributes, "attributes of {key} as sent");
            assert!(!got.publish_time.is_empty(), "a publishTime");
        }
    }
    assert!(
        emulator.pull_once(PROJECT, "pos-events-check").is_empty(),
        "all acknowledged: nothing comes again"
    );
}

#[test]
fn emulator_killed_loses_its_topics_and_leaves_no_jvm_behind() {
    let Some(mut emulator) = PubSubEmulator::start() else {
        return;
    };
    let port = emulator.port();
    assert_eq!(emulator.endpoint(), format!("http://127.0.0.1:{port}"));
    emulator.create_topic(PROJECT, "pos-events");
    let message = (b"x".to_vec(), "order:1".to_string(), BTreeMap::new());
    emulator.publish_raw(PROJECT, "pos-events", std::slice::from_ref(&message));

    let first = emulator.process_group().expect("it runs");
    emulator.kill();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the port is closed after kill"
    );
    assert_eq!(leftovers(first, port), Vec::<String>::new(), "nothing left after kill");

    emulator.restart();
    assert_eq!(emulator.port(), port, "the same port after restart");
    let lost = emulator.try_publish_raw(PROJECT, "pos-events", std::slice::from_ref(&message));
    assert_eq!(lost.status, 404, "the topic is gone: {}", lost.text());
    assert_eq!(lost.json()["error"]["status"], "NOT_FOUND", "{}", lost.text());
    emulator.create_topic(PROJECT, "pos-events");
    let ids = emulator.publish_raw(PROJECT, "pos-events", std::slice::from_ref(&message));
    assert_eq!(ids, ["1"], "message ids start over too");

    let second = emulator.process_group().expect("it runs again");
    drop(emulator);
    assert_eq!(leftovers(second, port), Vec::<String>::new(), "nothing left after drop");
}

#[test]
fn token_server_takes_a_signed_service_account_jwt_and_refuses_bad_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = TokenServer::start();
    let key_file = tokens.new_key(dir.path());
    let key = read_service_account_key(&key_file);

    // The key file, as the console writes it.
    let file: Value = serde_json::from_str(&std::fs::read_to_string(&key_file).expect("read the key file"))
        .expect("the key file is JSON");
    assert_eq!(file["type"], "service_account");
    for field in [
        "project_id",
        "client_id",
        "auth_uri",
        "auth_provider_x509_cert_url",
        "client_x509_cert_url",
    ] {
        assert!(file[field].is_string(), "the key file has {field}");
    }
    assert!(
        key.private_key.starts_with("-----BEGIN PRIVATE KEY-----\n"),
        "PKCS#8 PEM"
    );
    assert_eq!(key.private_key_id.len(), 40, "a 40-hex key id");
    assert!(key.client_email.ends_with(".iam.gserviceaccount.com"));
    assert_eq!(key.token_uri, tokens.token_uri());
    assert_eq!(
        key_file.file_name().and_then(|n| n.to_str()),
        Some(format!("{}-{}.json", key.project_id, &key.private_key_id[..12]).as_str())
    );

    // Good: signed by ring, with and without kid, either scope; and signed
    // by openssl.
    let answer = exchange(
        &tokens,
        &jwt(&rs256_header(&key), &good_claims(&key), |m| {
            rs256_ring(&key.private_key, m)
        }),
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    let body = answer.json();
    assert!(body["access_token"].as_str().is_some_and(|t| t.starts_with("ya29.")));
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["token_type"], "Bearer");
    let no_kid = json!({"alg": "RS256", "typ": "JWT"});
    let mut cloud_platform = good_claims(&key);
    cloud_platform["scope"] = json!(format!("openid {CLOUD_PLATFORM_SCOPE}"));
    for (header, claims, what) in [
        (&no_kid, good_claims(&key), "no kid"),
        (&rs256_header(&key), cloud_platform, "cloud-platform among other scopes"),
    ] {
        let answer = exchange(&tokens, &jwt(header, &claims, |m| rs256_ring(&key.private_key, m)));
        assert_eq!(answer.status, 200, "{what}: {}", answer.text());
    }
    let by_openssl = jwt(&rs256_header(&key), &good_claims(&key), |m| {
        rs256_openssl(dir.path(), &key.private_key, m)
    });
    assert_eq!(
        exchange(&tokens, &by_openssl).status,
        200,
        "an openssl signature verifies too"
    );
    assert_eq!(tokens.issued().len(), 4);
    assert!(tokens.refusals().is_empty(), "{:?}", tokens.refusals());

    // Refused, each naming what is wrong.
    let other = read_service_account_key(&service_account_key(dir.path(), &tokens.token_uri()));
    let sign_good = |m: &[u8]| rs256_ring(&key.private_key, m);
    let t = now();
    let with = |changes: Value| {
        let mut claims = good_claims(&key);
        for (k, v) in changes.as_object().expect("an object") {
            if v.is_null() {
                claims.as_object_mut().expect("an object").remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        claims
    };
    let cases: Vec<(String, &str, &str)> = vec![
        (
            jwt(&rs256_header(&key), &good_claims(&key), |m| {
                rs256_ring(&other.private_key, m)
            }),
            "Invalid JWT Signature",
            "signed with another key",
        ),
        (
            jwt(
                &rs256_header(&key),
                &with(json!({"iat": t - 7200, "exp": t - 3600})),
                sign_good,
            ),
            "exp is",
            "expired",
        ),
        (
            jwt(&rs256_header(&key), &with(json!({"exp": t + 7200})), sign_good),
            "short-lived",
            "longer than an hour",
        ),
        (
            jwt(
                &rs256_header(&key),
                &with(json!({"iat": t + 600, "exp": t + 1200})),
                sign_good,
            ),
            "in the future",
            "issued in the future",
        ),
        (
            jwt(
                &rs256_header(&key),
                &with(json!({"aud": "https://oauth2.googleapis.com/token"})),
                sign_good,
            ),
            "aud",
            "another audience",
        ),
        (
            jwt(&rs256_header(&key), &with(json!({"scope": null})), sign_good),
            "no scope",
            "no scope",
        ),
        (
            jwt(
                &rs256_header(&key),
                &with(json!({"scope": "https://www.googleapis.com/auth/devstorage.read_only"})),
                sign_good,
            ),
            "grants no Pub/Sub",
            "a scope without Pub/Sub",
        ),
        (
            jwt(&no_kid, &good_claims(&key), |m| rs256_ring(&other.private_key, m)),
            "Invalid JWT Signature",
            "signed with another key, no kid",
        ),
        (
            // A second key of the same account (service_account_key always
            // writes the same client_email) the server was not given.
            jwt(&rs256_header(&other), &good_claims(&key), |m| {
                rs256_ring(&other.private_key, m)
            }),
            "is the private_key_id of no key",
            "a key the server was never given",
        ),
        (
            jwt(
                &no_kid,
                &with(json!({"iss": "stranger@elsewhere.iam.gserviceaccount.com"})),
                sign_good,
            ),
            "no service account this token server trusts",
            "an account it does not know",
        ),
        (
            jwt(&json!({"alg": "HS256", "typ": "JWT"}), &good_claims(&key), sign_good),
            "alg",
            "not RS256",
        ),
        ("not-a-jwt".to_string(), "3", "no JWT at all"),
    ];
    for (assertion, names, what) in &cases {
        assert_refused(&exchange(&tokens, assertion), names, what);
    }
    assert_eq!(tokens.refusals().len(), cases.len(), "every refusal recorded");

    // The form itself.
    let wrong_grant = http(
        tokens.port(),
        "POST",
        "/token",
        &[("content-type", "application/x-www-form-urlencoded")],
        b"grant_type=client_credentials&assertion=x",
    );
    assert_eq!(wrong_grant.status, 400);
    assert_eq!(wrong_grant.json()["error"], "unsupported_grant_type");
    let as_json = http(tokens.port(), "POST", "/token", &[], b"{}");
    assert_eq!(as_json.status, 400);
    assert_eq!(as_json.json()["error"], "invalid_request");

    // Failing on command, then good again; a shorter lifetime.
    tokens.fail_next(503, 2);
    let good = jwt(&rs256_header(&key), &good_claims(&key), sign_good);
    assert_eq!(exchange(&tokens, &good).status, 503);
    assert_eq!(exchange(&tokens, &good).status, 503);
    tokens.set_expires_in(5);
    let answer = exchange(&tokens, &good);
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["expires_in"], 5);
    assert_eq!(
        tokens.exchanges(),
        4 + cases.len() + 2 + 3,
        "every request to /token counted"
    );
    assert_eq!(tokens.issued().len(), 5);
}

#[test]
fn auth_front_wants_an_issued_token_and_answers_google_errors_on_command() {
    let Some(mut emulator) = PubSubEmulator::start() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = TokenServer::start();
    let key = read_service_account_key(&tokens.new_key(dir.path()));
    let front = AuthFront::start(&emulator, &tokens);
    let topic_path = format!("/v1/projects/{PROJECT}/topics/pos-events");
    let publish_path = format!("{topic_path}:publish");
    let publish = |key_a: &str, key_b: &str| {
        json!({"messages": [
            {"data": "aGk=", "orderingKey": key_a, "attributes": {"entity_seq": "1"}},
            {"data": "aG8=", "orderingKey": key_b, "attributes": {"entity_seq": "2"}},
        ]})
        .to_string()
    };

    // Refused: no token, a token it never issued, a malformed header.
    for (headers, names) in [
        (vec![], "missing required authentication credential"),
        (
            vec![("authorization", "Bearer ya29.made-up")],
            "none the token server issued",
        ),
        (vec![("authorization", "Basic dXNlcjpwYXNz")], "not \"Bearer <token>\""),
    ] {
        let answer = http(front.port(), "PUT", &topic_path, &headers, b"");
        assert_eq!(answer.status, 401, "{headers:?}: {}", answer.text());
        assert_eq!(answer.json()["error"]["status"], "UNAUTHENTICATED");
        assert_eq!(answer.json()["error"]["code"], 401);
        let message = answer.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(message.contains(names), "{headers:?}: {message}");
        assert!(answer
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer")));
    }
    assert_eq!(front.rejected_count(), 3);

    // Forwarded with a good one: the topic is created in the emulator.
    let token = access_token(&tokens, &key);
    let bearer = format!("Bearer {token}");
    let auth = [("authorization", bearer.as_str())];
    let created = http(front.port(), "PUT", &topic_path, &auth, b"");
    assert_eq!(created.status, 200, "{}", created.text());
    assert_eq!(created.json()["name"], format!("projects/{PROJECT}/topics/pos-events"));
    emulator.create_ordered_subscription(PROJECT, "pos-events-check", "pos-events");
    let published = http(
        front.port(),
        "POST",
        &publish_path,
        &auth,
        publish("order:1", "order:1").as_bytes(),
    );
    assert_eq!(published.status, 200, "{}", published.text());
    assert_eq!(published.json()["messageIds"].as_array().map(Vec::len), Some(2));
    let pulled = emulator.pull_all(PROJECT, "pos-events-check", 2, Duration::from_secs(20));
    assert_eq!(pulled.len(), 2, "what went through the front reached the emulator");
    let missing = http(
        front.port(),
        "POST",
        &format!("/v1/projects/{PROJECT}/topics/nope:publish"),
        &auth,
        publish("order:1", "order:1").as_bytes(),
    );
    assert_eq!(missing.status, 404, "the emulator's own answers come through");
    assert_eq!(
        missing.json(),
        json!({"error": {"code": 404, "message": "Topic not found", "status": "NOT_FOUND"}})
    );

    // One publish with two ordering keys: Pub/Sub refuses it, the emulator
    // would not; the front does unless told otherwise.
    let mixed = http(
        front.port(),
        "POST",
        &publish_path,
        &auth,
        publish("order:1", "order:2").as_bytes(),
    );
    assert_eq!(mixed.status, 400, "{}", mixed.text());
    assert_eq!(mixed.json()["error"]["status"], "INVALID_ARGUMENT");
    assert!(mixed.text().contains("same orderingKey"), "{}", mixed.text());
    front.allow_mixed_ordering_keys();
    let mixed = http(
        front.port(),
        "POST",
        &publish_path,
        &auth,
        publish("order:1", "order:2").as_bytes(),
    );
    assert_eq!(mixed.status, 200, "the emulator takes mixed keys: {}", mixed.text());

    // Canned answers, in order, then forwarding again.
    front.answer_next(429, "", 2);
    front.answer_next(
        403,
        &google_error(403, "User not authorized to perform this action."),
        1,
    );
    for expected in [
        (429, "RESOURCE_EXHAUSTED"),
        (429, "RESOURCE_EXHAUSTED"),
        (403, "PERMISSION_DENIED"),
    ] {
        let answer = http(front.port(), "POST", &publish_path, &auth, publish("a", "a").as_bytes());
        assert_eq!(answer.status, expected.0, "{}", answer.text());
        assert_eq!(answer.json()["error"]["status"], expected.1);
        assert_eq!(answer.json()["error"]["code"], expected.0);
    }
    let again = http(front.port(), "POST", &publish_path, &auth, publish("a", "a").as_bytes());
    assert_eq!(
        again.status,
        200,
        "forwarding after the canned answers: {}",
        again.text()
    );

    // An expired token, a revoked one.
    tokens.set_expires_in(1);
    let short = access_token(&tokens, &key);
    std::thread::sleep(Duration::from_millis(1100));
    let expired = http(
        front.port(),
        "PUT",
        &topic_path,
        &[("authorization", format!("Bearer {short}").as_str())],
        b"",
    );
    assert_eq!(expired.status, 401, "{}", expired.text());
    assert!(expired.text().contains("expired"), "{}", expired.text());
    tokens.revoke_all();
    let revoked = http(front.port(), "PUT", &topic_path, &auth, b"");
    assert_eq!(revoked.status, 401, "{}", revoked.text());
    assert!(revoked.text().contains("revoked"), "{}", revoked.text());

    // The emulator down behind the front: 503 UNAVAILABLE, not a reset.
    tokens.set_expires_in(3599);
    let token = access_token(&tokens, &key);
    emulator.kill();
    let down = http(
        front.port(),
        "POST",
        &publish_path,
        &[("authorization", format!("Bearer {token}").as_str())],
        publish("a", "a").as_bytes(),
    );
    assert_eq!(down.status, 503, "{}", down.text());
    assert_eq!(down.json()["error"]["status"], "UNAVAILABLE");

    let requests = front.requests();
    assert_eq!(front.request_count(), requests.len());
    assert_eq!(
        front.rejected_count(),
        5,
        "3 without a good token, 1 expired, 1 revoked"
    );
    let outcomes = |o: FrontOutcome| requests.iter().filter(|r| r.outcome == o).count();
    assert_eq!(outcomes(FrontOutcome::Canned), 3);
    assert_eq!(outcomes(FrontOutcome::Invalid), 1);
    assert_eq!(outcomes(FrontOutcome::EmulatorDown), 1);
    let first_publish = requests
        .iter()
        .find(|r| r.path == publish_path)
        .expect("a publish was recorded");
    assert_eq!(first_publish.header("authorization"), Some(bearer.as_str()));
    assert_eq!(first_publish.json()["messages"][0]["orderingKey"], "order:1");
}
