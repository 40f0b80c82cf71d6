//! The published JSON Schema of the producer's event
//! (`docs/schema/event.schema.json`, printed by `store-outbox schema event`)
//! says what the agent's validation (`src/event.rs`) does: every case of
//! event.rs's unit tests, and a grid of field values around each rule, is
//! accepted by both or refused by both, and for the same kind of reason.
//! The schema is judged by python-jsonschema (PyPI; scripts/install-test-peers
//! installs it), an implementation that is not ours.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use base64::Engine;
use common::*;
use store_outbox::event::{parse_event, ErrorCode};

const SCHEMA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/schema/event.schema.json");
const CHECKER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/check_event_schema.py");

/// How one side judged an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Valid,
    /// Not JSON.
    InvalidJson,
    /// JSON, not I-JSON (RFC 7493).
    NotIJson,
    /// JSON, not an event.
    Invalid,
}

fn agent_verdict(text: &[u8]) -> Verdict {
    match parse_event(text, 1 << 20) {
        Ok(_) => Verdict::Valid,
        Err(e) if e.code == ErrorCode::InvalidJson => Verdict::InvalidJson,
        Err(e) if e.message.ends_with("(I-JSON, RFC 7493)") => Verdict::NotIJson,
        Err(e) => {
            assert_eq!(e.code, ErrorCode::InvalidEvent, "{}", String::from_utf8_lossy(text));
            Verdict::Invalid
        }
    }
}

/// Runs the checker once over all cases; one verdict and its reason each.
fn schema_verdicts(cases: &[Vec<u8>]) -> Vec<(Verdict, String)> {
    let mut child = Command::new("python3")
        .arg(CHECKER)
        .arg(SCHEMA)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (scripts/install-test-peers installs it)");
    let mut input = String::new();
    for case in cases {
        input += &base64::engine::general_purpose::STANDARD.encode(case);
        input.push('\n');
    }
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("checker");
    writer.join().expect("writer").expect("write cases");
    assert!(
        out.status.success(),
        "the schema checker failed (is the Python package jsonschema installed? scripts/install-test-peers installs it):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let verdicts: Vec<(Verdict, String)> = text
        .lines()
        .map(|line| {
            let (word, why) = line.split_once(' ').unwrap_or((line, ""));
            let v = match word {
                "valid" => Verdict::Valid,
                "invalid_json" => Verdict::InvalidJson,
                "not_ijson" => Verdict::NotIJson,
                "invalid" => Verdict::Invalid,
                other => panic!("checker said {other:?}"),
            };
            (v, why.to_string())
        })
        .collect();
    assert_eq!(verdicts.len(), cases.len(), "one verdict per case");
    verdicts
}

fn with_payload(payload: &str) -> String {
    format!(r#"{{"type":"T","entity":"e","payload":{payload}}}"#)
}

/// Every case of `src/event.rs`'s unit tests, literally (keep in step when
/// one is added there).
fn cases_of_event_rs() -> Vec<String> {
    let mut cases: Vec<String> = [
        r#"{"event_id":"s-1","type":"SaleCreated","entity":"order:1","occurred_at":"2026-11-22T11:15:00+01:00","correlation_id":"c","is_test":true,"attributes":{"terminal":"03"},"payload":{"b": 1,  "a":[2]}}"#,
        r#"{"type":"T","entity":"e","payload":null}"#,
        r#"{"entity":"e","payload":1}"#,
        r#"{"type":"1x","entity":"e","payload":1}"#,
        r#"{"type":"T","payload":1}"#,
        r#"{"type":"T","entity":"","payload":1}"#,
        r#"{"type":"T","entity":"a\u0001","payload":1}"#,
        r#"{"type":"T","entity":"e"}"#,
        r#"{"type":"T","entity":"e","payload":1,"extra":2}"#,
        r#"{"type":"T","entity":"e","payload":1,"event_id":"a b"}"#,
        r#"{"type":"T","entity":"e","payload":1,"occurred_at":"yesterday"}"#,
        r#"{"type":"T","entity":"e","payload":1,"attributes":{"a":1}}"#,
        r#"{"type":"T","entity":"e","payload":1,"is_test":"no"}"#,
        r#"[1]"#,
        r#"{"type":"T","entity":7,"payload":1}"#,
        r#"{"type":"T","entity":"e","payload":1,"a:b c":2}"#,
        r#"{"type":"T","entity":"e","payload":1,"correlation_id":1}"#,
        r#"{"type":"T","entity":"e","payload":1,"occurred_at":"x"}"#,
        r#"{"type":"T","entity":"e","payload":1,"attributes":[]}"#,
        "{\"type\":",
        r#"{"type":"T","entity":"e","attributes":{"terminal":"03","terminal":"04"},"payload":1}"#,
        r#"{"type":"T","entity":"e","entity":"f","payload":1}"#,
        r#"{"type":"T","entity":"e","payload":1,"payload":2}"#,
        r#"{"type":"T","entity":"\ud800","payload":1}"#,
        r#"{"type":"T","attributes":{"t":"\ud800"},"entity":"e","payload":1}"#,
        r#"{"\ud800":1,"type":"T","entity":"e","payload":1}"#,
        r#"{"type":"T","payload":[1,}"#,
        r#"{"payload":"\u12"}"#,
        r#"{"payload":1e}"#,
        "[1e999]",
        r#"{"type":"T","entity":"e","payload":1,"occurred_at":"9999-12-31T23:59:59-01:00"}"#,
    ]
    .into_iter()
    .map(String::from)
    .collect();
    for payload in [
        r#"{"lines":[{},{"price":1},{},{"price":1e999999}]}"#,
        "-1e400",
        "[1.7976931348623159e308]",
        r#"{"unit price":{"x.y":[0,1e309]}}"#,
        "18446744073709551616",
        "-9007199254740993",
        "3.141592653589793238462643383279",
        "1.7976931348623157e308",
        "-1.7976931348623157E+308",
        "1e-400",
        "-0",
        r#"{"a":{"x":1},"b":{"x":1},"c":[{"x":1},{"x":1}]}"#,
        r#""\ud83d\ude00 \uFFFF""#,
        r#"{"a":1,"b":{"c":1,"d":[{"c":1,"c":2}]}}"#,
        r#"{"a":1,"a":1}"#,
        r#"{"\u0061":1,"a":2}"#,
        r#"{"ok":{"\udfff":1}}"#,
    ] {
        cases.push(with_payload(payload));
    }
    cases.push(with_payload(&format!("{{\"n\":1{}}}", "0".repeat(400))));
    for s in [
        r#""\ud800""#,
        r#""\udc00""#,
        r#""a\ud800b""#,
        r#""\ud800\u0041""#,
        r#""\ud800\n""#,
    ] {
        cases.push(with_payload(&format!("[1,{s}]")));
    }
    let key = "k".repeat(300);
    cases.push(with_payload(&format!(r#"{{"{key}":1,"{key}":2}}"#)));
    cases
}

/// Values around each field's rules (JSON text), each tried in an
/// otherwise valid event.
fn field_grid() -> Vec<String> {
    let s = |t: &str| serde_json::to_string(t).expect("json string");
    let grid: Vec<(&str, Vec<String>)> = vec![
        (
            "type",
            vec![
                s("SaleCreated"),
                s("a"),
                s("A.b_c-9"),
                s(&format!("T{}", "x".repeat(127))),
                s(&format!("T{}", "x".repeat(128))),
                s(""),
                s("9T"),
                s("_T"),
                s("T T"),
                s("T\n"),
                s("Tü"),
                s("T/x"),
                "null".into(),
                "1".into(),
                "[\"T\"]".into(),
            ],
        ),
        (
            "entity",
            vec![
                s("order:4711"),
                s(" "),
                s(&"e".repeat(256)),
                s(&"e".repeat(257)),
                s("ünïcode ✓"),
                s("tab\there"),
                s("nl\n"),
                s("del\u{7f}"),
                s("c1\u{85}"),
                s("nbsp\u{a0}"),
                s("zero-width\u{200b}"),
                s(""),
                "null".into(),
                "true".into(),
                "{}".into(),
            ],
        ),
        (
            "event_id",
            vec![
                s("sale-0042-000123"),
                s("a"),
                s("A.b:c_d-9"),
                s(&"i".repeat(128)),
                s(&"i".repeat(129)),
                s(""),
                s("a b"),
                s("a/b"),
                s("é"),
                s("id\n"),
                "null".into(),
                "12".into(),
            ],
        ),
        (
            "occurred_at",
            vec![
                s("2026-11-22T10:15:00Z"),
                s("2026-11-22T10:15:00z"),
                s("2026-11-22t10:15:00Z"),
                s("2026-11-22T10:15:00.123456789+01:00"),
                s("2026-11-22T10:15:00-23:59"),
                s("2026-11-22T23:59:60Z"),
                s("2026-11-22T10:15:00"),
                s("2026-11-22"),
                s("2026-13-22T10:15:00Z"),
                s("2026-11-32T10:15:00Z"),
                s("2026-11-22T24:00:00Z"),
                s("2026-11-22T10:60:00Z"),
                s("2026-11-22T10:15:00+24:00"),
                s("2026-11-22T10:15:00+01:60"),
                s("2026-11-22T10:15:00.Z"),
                s("26-11-22T10:15:00Z"),
                s("2026-11-22T10:15:00Z\n"),
                s(" 2026-11-22T10:15:00Z"),
                "null".into(),
                "1732270500".into(),
            ],
        ),
        (
            "correlation_id",
            vec![
                s("c-81"),
                s(""),
                s(&"c".repeat(256)),
                s(&"c".repeat(257)),
                "null".into(),
                "7".into(),
                "[]".into(),
            ],
        ),
        (
            "is_test",
            vec!["true".into(), "false".into(), "null".into(), "0".into(), s("true")],
        ),
        (
            "attributes",
            vec![
                "{}".into(),
                r#"{"terminal":"03","cashier":""}"#.into(),
                "null".into(),
                r#"{"n":1}"#.into(),
                r#"{"n":null}"#.into(),
                r#"{"n":{"x":"y"}}"#.into(),
                "[]".into(),
                s("terminal=03"),
            ],
        ),
        (
            "payload",
            vec![
                "null".into(),
                "0".into(),
                s(""),
                "[]".into(),
                r#"{"nested":{"deep":[1,2.5,"x",true,null]}}"#.into(),
            ],
        ),
    ];
    let base = [
        ("type", s("SaleCreated")),
        ("entity", s("order:4711")),
        ("payload", "{}".to_string()),
    ];
    let mut out = Vec::new();
    for (field, values) in grid {
        for value in values {
            let mut members: Vec<String> = base
                .iter()
                .filter(|(name, _)| *name != field)
                .map(|(name, v)| format!("\"{name}\":{v}"))
                .collect();
            members.push(format!("\"{field}\":{value}"));
            out.push(format!("{{{}}}", members.join(",")));
        }
    }
    // Shapes of the whole document.
    for text in [
        "{}",
        "null",
        "\"SaleCreated\"",
        r#"{"type":"T","entity":"e","payload":1,"Type":"T"}"#,
        r#"{"type":"T","entity":"e","payload":NaN}"#,
        r#"{"type":"T","entity":"e","payload":Infinity}"#,
        " {\"type\":\"T\",\"entity\":\"e\",\"payload\":1}\n",
    ] {
        out.push(text.to_string());
    }
    out
}

/// Where the two must differ, and why: what a JSON Schema cannot say. In
/// each the agent is the stricter side, and the schema's descriptions say so.
fn known_difference(text: &str) -> Option<&'static str> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let o = v.as_object()?;
    let long_in_bytes = |field: &str| {
        o.get(field)
            .and_then(|v| v.as_str())
            .is_some_and(|s| s.len() > 256 && s.chars().count() <= 256)
    };
    if long_in_bytes("entity") || long_in_bytes("correlation_id") {
        return Some("a schema counts characters, the agent UTF-8 bytes");
    }
    if o.get("occurred_at").and_then(|v| v.as_str()) == Some("9999-12-31T23:59:59-01:00") {
        return Some("a valid RFC 3339 time with no UTC representation within year 9999");
    }
    None
}

#[test]
fn the_event_schema_accepts_and_refuses_what_the_agent_does() {
    let mut cases = cases_of_event_rs();
    cases.extend(field_grid());
    // Text the grid cannot build: multi-byte entities and correlation ids
    // within 256 characters but beyond 256 bytes.
    cases.push(format!(r#"{{"type":"T","entity":"{}","payload":1}}"#, "é".repeat(200)));
    cases.push(format!(
        r#"{{"type":"T","entity":"e","correlation_id":"{}","payload":1}}"#,
        "€".repeat(100)
    ));
    let bytes: Vec<Vec<u8>> = cases.iter().map(|c| c.clone().into_bytes()).collect();
    let schema = schema_verdicts(&bytes);
    let mut disagreements = Vec::new();
    let (mut accepted, mut refused, mut differences) = (0, 0, 0);
    for (case, (by_schema, why)) in cases.iter().zip(&schema) {
        let by_agent = agent_verdict(case.as_bytes());
        match known_difference(case) {
            Some(reason) => {
                differences += 1;
                assert_eq!(
                    (by_agent, *by_schema),
                    (Verdict::Invalid, Verdict::Valid),
                    "a known difference ({reason}) changed: {case}"
                );
                continue;
            }
            // Both refuse, and both or neither for not being JSON: which rule
            // a document that breaks several is refused for may differ.
            None if (by_agent == Verdict::Valid) != (*by_schema == Verdict::Valid)
                || (by_agent == Verdict::InvalidJson) != (*by_schema == Verdict::InvalidJson)
                || (by_agent == Verdict::NotIJson && *by_schema != Verdict::NotIJson) =>
            {
                disagreements.push(format!("agent {by_agent:?}, schema {by_schema:?} {why}: {case:.200}"));
            }
            None => {}
        }
        if by_agent == Verdict::Valid {
            accepted += 1;
        } else {
            refused += 1;
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} of {} cases judged differently:\n{}",
        disagreements.len(),
        cases.len(),
        disagreements.join("\n")
    );
    // The cases cover both sides of the rules, and the differences are the
    // listed ones only.
    assert!(
        accepted >= 40 && refused >= 60,
        "accepted {accepted}, refused {refused}"
    );
    assert_eq!(differences, 3, "the known differences");
}

#[test]
fn store_outbox_schema_event_prints_the_committed_file() {
    let out = run_ok(Command::new(binary()).args(["schema", "event"]), "schema event");
    let committed = std::fs::read_to_string(SCHEMA).expect("docs/schema/event.schema.json");
    assert_eq!(String::from_utf8_lossy(&out.stdout), committed);
    let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(parsed["$schema"], "https://json-schema.org/draft/2020-12/schema");
}
