//! CloudEvents 1.0 for receivers that want it (`format = "cloudevents"`):
//! the HTTP protocol binding's binary content mode for one event per
//! request, its batched content mode (`application/cloudevents-batch+json`)
//! for batches. The webhook destination sends what this module makes; the
//! Standard Webhooks headers stay on top, signed over the body.
//!
//! Attributes: `id` = event id, `type`, `source` =
//! `store-outbox/<store_id>/<agent_id>`, `subject` = entity, `time` =
//! `occurred_at`, `datacontenttype` = `application/json` (with data), and
//! the extensions `entityseq` (the entity's sequence number), `correlationid`
//! (when set) and `istest` (when true). In binary mode each is an HTTP header
//! `ce-<name>`, its value percent-encoded as the binding says (§3.1.3.2:
//! space, `"`, `%` and everything outside printable ASCII, as UTF-8 bytes);
//! the body is the event's data (nothing with `payload = "thin"`).

use serde::Serialize;
use serde_json::value::RawValue;

use crate::config::PayloadMode;
use crate::deliver::envelope::Source;
use crate::outbox::read::StoredEvent;

/// The batched mode's media type.
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";

/// `source` of every event.
pub fn source_of(source: &Source) -> String {
    format!("store-outbox/{}/{}", source.store_id, source.agent_id)
}

/// A header value as the HTTP binding encodes it: space, `"`, `%` and
/// every byte outside printable ASCII (U+0021-U+007E) as `%XX` of its UTF-8
/// bytes; the rest as it is.
pub fn header_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if (0x21..=0x7e).contains(&byte) && byte != b'"' && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Binary content mode: the `ce-*` headers of one event (names in lower
/// case, values encoded).
pub fn binary_headers(event: &StoredEvent, source: &Source) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("ce-specversion", "1.0".to_string()),
        ("ce-id", header_value(&event.event_id)),
        ("ce-type", header_value(&event.event_type)),
        ("ce-source", header_value(&source_of(source))),
        ("ce-subject", header_value(&event.entity)),
        ("ce-time", header_value(&event.occurred_at)),
        ("ce-entityseq", event.entity_seq.to_string()),
    ];
    if let Some(correlation) = &event.correlation_id {
        headers.push(("ce-correlationid", header_value(correlation)));
    }
    if event.is_test {
        headers.push(("ce-istest", "true".to_string()));
    }
    headers
}

/// Binary content mode: the body (the event's data, verbatim), and whether
/// there is one (`payload = "thin"`: none).
pub fn binary_body(event: &StoredEvent, payload: PayloadMode) -> Option<Vec<u8>> {
    match payload {
        PayloadMode::Full => Some(event.payload.trim().as_bytes().to_vec()),
        PayloadMode::Thin => None,
    }
}

/// One event in structured form (an element of a batch).
pub fn structured(event: &StoredEvent, payload: PayloadMode, source: &str) -> Vec<u8> {
    #[derive(Serialize)]
    struct Structured<'a> {
        specversion: &'static str,
        id: &'a str,
        #[serde(rename = "type")]
        event_type: &'a str,
        source: &'a str,
        subject: &'a str,
        time: &'a str,
        entityseq: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        correlationid: Option<&'a str>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        istest: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        datacontenttype: Option<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<&'a RawValue>,
    }
    let data: Option<&RawValue> = match payload {
        PayloadMode::Full => serde_json::from_str(event.payload.trim()).ok(),
        PayloadMode::Thin => None,
    };
    let element = Structured {
        specversion: "1.0",
        id: &event.event_id,
        event_type: &event.event_type,
        source,
        subject: &event.entity,
        time: &event.occurred_at,
        entityseq: event.entity_seq,
        correlationid: event.correlation_id.as_deref(),
        istest: event.is_test,
        datacontenttype: data.map(|_| "application/json"),
        data,
    };
    serde_json::to_vec(&element).unwrap_or_default()
}

/// Batched content mode: a JSON array of structured events.
pub fn batch_body(events: &[&StoredEvent], payload: PayloadMode, source: &Source) -> Vec<u8> {
    let source = source_of(source);
    let mut out = Vec::with_capacity(events.iter().map(|e| e.payload.len() + 300).sum::<usize>() + 2);
    out.push(b'[');
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&structured(event, payload, &source));
    }
    out.push(b']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored() -> StoredEvent {
        StoredEvent {
            seq: 7,
            event_id: "s-1".into(),
            event_type: "SaleCreated".into(),
            entity: "order 4711/€".into(),
            entity_seq: 2,
            occurred_at: "2026-11-22T10:15:00Z".into(),
            ingested_at: 0,
            correlation_id: Some("c\"1%".into()),
            is_test: false,
            attributes: None,
            payload: r#"{"total": 9.5}"#.into(),
        }
    }

    fn source() -> Source {
        Source {
            store_id: "0042".into(),
            agent_id: "till 03".into(),
        }
    }

    #[test]
    fn header_values_are_percent_encoded_as_the_http_binding_says() {
        assert_eq!(header_value("order:4711"), "order:4711");
        assert_eq!(header_value("order 4711/€"), "order%204711/%E2%82%AC");
        assert_eq!(header_value("c\"1%"), "c%221%25");
    }

    #[test]
    fn binary_mode_has_the_attributes_as_headers_and_the_data_as_body() {
        let headers = binary_headers(&stored(), &source());
        let get = |name: &str| headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str());
        assert_eq!(get("ce-specversion"), Some("1.0"));
        assert_eq!(get("ce-id"), Some("s-1"));
        assert_eq!(get("ce-source"), Some("store-outbox/0042/till%2003"));
        assert_eq!(get("ce-subject"), Some("order%204711/%E2%82%AC"));
        assert_eq!(get("ce-entityseq"), Some("2"));
        assert_eq!(get("ce-correlationid"), Some("c%221%25"));
        assert_eq!(get("ce-istest"), None);
        assert_eq!(
            binary_body(&stored(), PayloadMode::Full).as_deref(),
            Some(&br#"{"total": 9.5}"#[..])
        );
        assert_eq!(binary_body(&stored(), PayloadMode::Thin), None);
    }

    #[test]
    fn a_batch_is_an_array_of_structured_events() {
        let event = stored();
        let body = batch_body(&[&event, &event], PayloadMode::Full, &source());
        let parsed: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(parsed.as_array().map(Vec::len), Some(2));
        let first = &parsed[0];
        assert_eq!(first["specversion"], "1.0");
        assert_eq!(
            first["source"], "store-outbox/0042/till 03",
            "no percent-encoding in JSON"
        );
        assert_eq!(first["subject"], "order 4711/€");
        assert_eq!(first["entityseq"], 2);
        assert_eq!(first["datacontenttype"], "application/json");
        assert_eq!(first["data"]["total"], 9.5);
        let thin: serde_json::Value =
            serde_json::from_slice(&batch_body(&[&event], PayloadMode::Thin, &source())).expect("JSON");
        assert!(thin[0].get("data").is_none() && thin[0].get("datacontenttype").is_none());
    }
}
