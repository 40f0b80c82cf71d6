//! Checks shared by the fuzz targets: what every event must satisfy once a
//! parser has accepted it, whichever way it came in (CONTRACT.md, "The event a
//! producer sends"). A violated check panics, which libFuzzer reports as a crash.

use serde_json::value::RawValue;
use store_outbox::event::NewEvent;

/// `event_id`: 1-128 characters of `[A-Za-z0-9._:-]`.
pub fn check_event_id(id: &str) {
    assert!(
        (1..=128).contains(&id.len()),
        "event_id is {} bytes, the contract says 1-128: {id:?}",
        id.len()
    );
    assert!(
        id.chars().all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c)),
        "event_id holds a character outside [A-Za-z0-9._:-]: {id:?}"
    );
}

/// `entity`: 1-256 bytes, no control characters.
pub fn check_entity(entity: &str) {
    assert!(
        (1..=256).contains(&entity.len()),
        "entity is {} bytes, the contract says 1-256: {entity:?}",
        entity.len()
    );
    assert!(
        !entity.chars().any(char::is_control),
        "entity holds a control character: {entity:?}"
    );
}

/// `type`: `^[A-Za-z][A-Za-z0-9._-]{0,127}$`.
pub fn check_type(t: &str) {
    let mut chars = t.chars();
    assert!(
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
            && t.len() <= 128
            && chars.all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
        "type does not match ^[A-Za-z][A-Za-z0-9._-]{{0,127}}$: {t:?}"
    );
}

/// Whether `text` is exactly one JSON value (parsed the way the library
/// parses payloads, so nesting depth is judged alike).
pub fn is_json_value(text: &str) -> bool {
    serde_json::from_str::<&RawValue>(text).is_ok()
}

/// The message of an event refused for nesting too deep.
pub const TOO_DEEP_MARK: &str = "levels of arrays and objects";

/// How the library ends the message of an event refused as not I-JSON.
pub const IJSON_MARK: &str = "(I-JSON, RFC 7493)";

/// Why `text` is not I-JSON (RFC 7493, the contract's three rules), or
/// `None` if it is. Written apart from the library's check (a serde visitor
/// in `event.rs`) so the two can disagree: `serde_json::Value` refuses a
/// number beyond the double range and a lone surrogate when it parses, and
/// a scan of the text finds a key twice in one object (a `Value` would keep
/// only the last copy). Anything that does not parse is "not I-JSON" too.
///
/// Depth is not an I-JSON rule: the parse has no recursion limit (the
/// library walks any depth, and refuses a payload deeper than 128 levels
/// by its own rule, checked apart: [`nesting_depth`]).
pub fn ijson_violation(text: &str) -> Option<String> {
    use serde::Deserialize;
    let mut de = serde_json::Deserializer::from_str(text);
    de.disable_recursion_limit();
    let parsed = serde_json::Value::deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    if let Err(e) = parsed {
        return Some(format!("does not parse as a serde_json::Value: {e}"));
    }
    duplicate_key(text).map(|k| format!("key {k:?} twice in one object"))
}

/// How deep arrays and objects nest in `text` (valid JSON): `1` is 0,
/// `[[1]]` is 2.
pub fn nesting_depth(text: &str) -> usize {
    let bytes = text.as_bytes();
    let (mut depth, mut deepest, mut i) = (0usize, 0usize, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            _ => {}
        }
        i += 1;
    }
    deepest
}

/// The contract's limit on a payload's nesting.
pub const MAX_PAYLOAD_DEPTH: usize = 128;

/// The first key found twice in one object of `text`, which must be valid
/// JSON: a scan of its tokens with one key set per open object.
fn duplicate_key(text: &str) -> Option<String> {
    enum Open {
        Array,
        Object {
            keys: std::collections::HashSet<String>,
            want_key: bool,
        },
    }
    let bytes = text.as_bytes();
    let mut open: Vec<Open> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' => open.push(Open::Object {
                keys: Default::default(),
                want_key: true,
            }),
            b'[' => open.push(Open::Array),
            b'}' | b']' => {
                open.pop();
            }
            b',' => {
                if let Some(Open::Object { want_key, .. }) = open.last_mut() {
                    *want_key = true;
                }
            }
            b'"' => {
                let start = i;
                i += 1;
                while bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                if let Some(Open::Object { keys, want_key }) = open.last_mut() {
                    if *want_key {
                        *want_key = false;
                        let key: String = serde_json::from_str(&text[start..=i]).expect("a valid key");
                        if !keys.insert(key.clone()) {
                            return Some(key);
                        }
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Every field of an accepted event.
pub fn check_event(e: &NewEvent) {
    check_event_id(&e.event_id);
    check_type(&e.event_type);
    check_entity(&e.entity);
    assert!(
        is_json_value(&e.payload),
        "payload is not one JSON value: {:?}",
        e.payload
    );
    if let Some(why) = ijson_violation(&e.payload) {
        panic!("accepted payload is not I-JSON ({why}): {:?}", e.payload);
    }
    assert!(
        nesting_depth(&e.payload) <= MAX_PAYLOAD_DEPTH,
        "accepted payload nests {} levels, the limit is {MAX_PAYLOAD_DEPTH}",
        nesting_depth(&e.payload)
    );
    assert!(
        e.occurred_at.ends_with('Z') && e.occurred_at.len() >= 20,
        "occurred_at is not RFC 3339 UTC: {:?}",
        e.occurred_at
    );
    if let Some(c) = &e.correlation_id {
        assert!(c.len() <= 256, "correlation_id is {} bytes", c.len());
    }
    if let Some(a) = &e.attributes {
        let map: std::collections::BTreeMap<String, String> =
            serde_json::from_str(a).unwrap_or_else(|err| panic!("attributes are not a string map ({err}): {a:?}"));
        assert!(!map.is_empty(), "attributes is Some but empty");
    }
}

/// Accepted file: at least one event, each one valid.
pub fn check_events(events: &[NewEvent]) {
    assert!(!events.is_empty(), "Ok with no event");
    for e in events {
        check_event(e);
    }
}

/// The socket's framing harness (also replayed by the main crate's tests).
pub mod socket_framing;

/// The HTTP servers' harness (also replayed by the main crate's tests).
pub mod http_head;
