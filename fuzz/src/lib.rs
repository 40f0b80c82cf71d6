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
