//! The contract's envelope: the JSON body a subscriber receives for one
//! event (`id`, `type`, `timestamp`, `entity`, `entity_seq`, `source`,
//! `correlation_id`, `is_test`, `attributes`, then `data`) and a batch's
//! array of them. Every destination sends these bytes (the webhook as its
//! body, NATS as its message), so a subscriber reads the same event
//! whatever carries it.

use serde::Serialize;
use serde_json::value::RawValue;

use crate::config::PayloadMode;
use crate::outbox::read::StoredEvent;

/// `source` in every body.
#[derive(Debug, Clone, Serialize)]
pub struct Source {
    /// `agent.store_id`.
    pub store_id: String,
    /// `agent.agent_id`.
    pub agent_id: String,
}

/// The JSON body of the contract.
pub fn body(event: &StoredEvent, payload: PayloadMode, source: &Source) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        id: &'a str,
        #[serde(rename = "type")]
        event_type: &'a str,
        timestamp: &'a str,
        entity: &'a str,
        entity_seq: i64,
        source: &'a Source,
        correlation_id: Option<&'a str>,
        is_test: bool,
        attributes: &'a RawValue,
    }
    let empty: &RawValue = serde_json::from_str("{}").expect("static JSON");
    let attributes = event
        .attributes
        .as_deref()
        .and_then(|a| serde_json::from_str(a).ok())
        .unwrap_or(empty);
    let mut out = Vec::with_capacity(event.payload.len() + 512);
    let envelope = Body {
        id: &event.event_id,
        event_type: &event.event_type,
        timestamp: &event.occurred_at,
        entity: &event.entity,
        entity_seq: event.entity_seq,
        source,
        correlation_id: event.correlation_id.as_deref(),
        is_test: event.is_test,
        attributes,
    };
    if serde_json::to_writer(&mut out, &envelope).is_err() {
        return Vec::new();
    }
    if payload == PayloadMode::Full {
        // `data` goes last. The payload was checked as JSON when it came in
        // and is stored verbatim: it is appended as it is, not parsed and
        // written again for every attempt.
        let data = event.payload.trim();
        out.pop(); // the envelope's closing brace
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(if data.is_empty() { b"null" } else { data.as_bytes() });
        out.push(b'}');
    }
    out
}

/// A batch's body: a JSON array of the events' bodies, in the order given.
pub fn batch_body(events: &[&StoredEvent], payload: PayloadMode, source: &Source) -> Vec<u8> {
    let mut out = Vec::with_capacity(events.iter().map(|e| e.payload.len() + 300).sum::<usize>() + 2);
    out.push(b'[');
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&body(event, payload, source));
    }
    out.push(b']');
    out
}
