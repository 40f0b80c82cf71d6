//! One event as a Service Bus message, in the REST API's two shapes: for
//! "Send Message", the body (the webhook envelope, byte for byte) and the
//! headers that carry `BrokerProperties` and the custom properties; for
//! "Send Message Batch", one element `{"Body", "BrokerProperties",
//! "UserProperties"}` of the batch's JSON array.
//!
//! - `BrokerProperties`: `MessageId` = the event id (the entity's duplicate
//!   detection drops a resend), `SessionId` = the entity (a session
//!   receiver reads an entity's events in order).
//! - Custom properties: `type`, `store_id`, `agent_id` as JSON strings
//!   (quoted, as Azure's SDKs send them: a bare `0042` would become the
//!   number 42) and `entity_seq` as a bare number; with `secret`, the
//!   Standard Webhooks `webhook-id`, `webhook-timestamp` and
//!   `webhook-signature` as strings, signed over the message's body with its
//!   event id, so a consumer verifies each message as a webhook receiver does.
//!
//! Header values are ASCII: any other character of a value goes as a JSON
//! `\uXXXX` escape, which Service Bus reads back as the same string.

use serde::Serialize;
use serde_json::value::RawValue;

use crate::config::SubscriptionConfig;
use crate::deliver::envelope::{body, Source};
use crate::outbox::read::StoredEvent;

/// The longest `SessionId` Service Bus takes (and `MessageId`: an event id
/// is at most 128 characters by the contract).
pub const MAX_SESSION_ID: usize = 128;

/// One event's message: its body and properties, each value as JSON text.
#[derive(Debug)]
pub struct Message {
    /// The webhook envelope.
    pub body: Vec<u8>,
    /// `BrokerProperties`, a JSON object.
    pub broker_properties: String,
    /// The custom properties in order, each value as JSON text.
    pub custom: Vec<(&'static str, String)>,
}

/// `event` as a message of `config`'s subscription, signed at `timestamp`
/// when the subscription has a secret. `Err` when Service Bus cannot take
/// it (an entity longer than a `SessionId` may be).
pub fn message(
    event: &StoredEvent,
    config: &SubscriptionConfig,
    source: &Source,
    timestamp: i64,
) -> Result<Message, String> {
    if event.entity.chars().count() > MAX_SESSION_ID {
        return Err(format!(
            "entity {:?} is longer than the {MAX_SESSION_ID} characters a Service Bus SessionId may have: \
             this event cannot be sent to Service Bus (its entity's later events wait behind it)",
            event.entity.chars().take(40).collect::<String>() + "..."
        ));
    }
    let body = body(event, config.payload, source);
    #[derive(Serialize)]
    struct Broker<'a> {
        #[serde(rename = "MessageId")]
        message_id: &'a str,
        #[serde(rename = "SessionId")]
        session_id: &'a str,
    }
    let broker_properties = ascii_json(&Broker {
        message_id: &event.event_id,
        session_id: &event.entity,
    });
    let mut custom = vec![
        ("type", ascii_json(&event.event_type)),
        ("store_id", ascii_json(&source.store_id)),
        ("agent_id", ascii_json(&source.agent_id)),
        ("entity_seq", event.entity_seq.to_string()),
    ];
    if !config.secrets.is_empty() {
        let signature = crate::signing::signature_header(&config.secrets, &event.event_id, timestamp, &body);
        custom.push(("webhook-id", ascii_json(&event.event_id)));
        custom.push(("webhook-timestamp", ascii_json(&timestamp.to_string())));
        custom.push(("webhook-signature", ascii_json(&signature)));
    }
    Ok(Message {
        body,
        broker_properties,
        custom,
    })
}

impl Message {
    /// This message as one element of a "Send Message Batch" body.
    pub fn batch_element(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Element<'a> {
            #[serde(rename = "Body")]
            body: &'a str,
            #[serde(rename = "BrokerProperties")]
            broker_properties: &'a RawValue,
            #[serde(rename = "UserProperties")]
            user_properties: &'a RawValue,
        }
        let mut user = String::from("{");
        for (i, (name, value)) in self.custom.iter().enumerate() {
            if i > 0 {
                user.push(',');
            }
            user.push_str(&ascii_json(name));
            user.push(':');
            user.push_str(value);
        }
        user.push('}');
        let body = String::from_utf8_lossy(&self.body);
        let (Ok(broker), Ok(user)) = (
            serde_json::from_str::<&RawValue>(&self.broker_properties),
            serde_json::from_str::<&RawValue>(&user),
        ) else {
            // Both were written as JSON just above.
            return Vec::new();
        };
        serde_json::to_vec(&Element {
            body: &body,
            broker_properties: broker,
            user_properties: user,
        })
        .unwrap_or_default()
    }
}

/// A "Send Message Batch" body: the elements as a JSON array, in order.
pub fn batch_body(messages: &[Message]) -> Vec<u8> {
    let mut out = Vec::with_capacity(messages.iter().map(|m| m.body.len() * 11 / 10 + 300).sum::<usize>() + 2);
    out.push(b'[');
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&m.batch_element());
    }
    out.push(b']');
    out
}

/// `value` as JSON text in ASCII only (other characters as `\uXXXX`), so
/// it is a valid header value.
pub fn ascii_json<T: Serialize + ?Sized>(value: &T) -> String {
    let text = serde_json::to_string(value).unwrap_or_default();
    if text.is_ascii() {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::destinations::parse_config;

    fn event(entity: &str) -> StoredEvent {
        StoredEvent {
            seq: 1,
            event_id: "s-1".into(),
            event_type: "SaleCreated".into(),
            entity: entity.into(),
            entity_seq: 42,
            occurred_at: "2026-11-22T10:15:00Z".into(),
            ingested_at: 0,
            correlation_id: None,
            is_test: false,
            attributes: None,
            payload: "{\"total\":\"9.50 €\"}".into(),
        }
    }

    fn config(extra: &str) -> SubscriptionConfig {
        let text = format!(
            "[[subscription]]\nname = \"azure\"\nurl = \"servicebus://retail.servicebus.windows.net/pos\"\n\
             sas_key_name = \"s\"\nsas_key_file = \"k\"\n{extra}"
        );
        parse_config(&text, None).expect("valid").subscriptions.remove(0)
    }

    fn source() -> Source {
        Source {
            store_id: "0042".into(),
            agent_id: "kasse-ö".into(),
        }
    }

    #[test]
    fn properties_are_json_strings_but_entity_seq_and_values_stay_ascii() {
        let m = message(&event("order:ü/1"), &config(""), &source(), 0).expect("message");
        assert_eq!(
            m.broker_properties,
            r#"{"MessageId":"s-1","SessionId":"order:\u00fc/1"}"#
        );
        let custom: Vec<(&str, &str)> = m.custom.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(
            custom,
            [
                ("type", "\"SaleCreated\""),
                ("store_id", "\"0042\""),
                ("agent_id", "\"kasse-\\u00f6\""),
                ("entity_seq", "42")
            ]
        );
        assert_eq!(
            m.body,
            body(&event("order:ü/1"), crate::config::PayloadMode::Full, &source()),
            "the webhook envelope, byte for byte"
        );
        let emoji = ascii_json("a😀");
        assert_eq!(emoji, "\"a\\ud83d\\ude00\"");
        assert_eq!(serde_json::from_str::<String>(&emoji).expect("JSON"), "a😀");
    }

    #[test]
    fn a_batch_element_carries_the_body_as_a_string_and_the_signature_per_message() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let config = config(&format!("secret = \"{secret}\"\n"));
        let m = message(&event("till:1"), &config, &source(), 1_700_000_000).expect("message");
        let batch: serde_json::Value = serde_json::from_slice(&batch_body(&[m])).expect("JSON");
        let element = &batch[0];
        let body = element["Body"].as_str().expect("Body");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(body).expect("envelope")["id"],
            "s-1"
        );
        assert_eq!(element["BrokerProperties"]["SessionId"], "till:1");
        let user = &element["UserProperties"];
        assert_eq!(user["entity_seq"], 42);
        assert_eq!(user["store_id"], "0042");
        assert_eq!(user["webhook-id"], "s-1");
        assert_eq!(user["webhook-timestamp"], "1700000000");
        let key = crate::signing::decode_secret(secret).expect("secret");
        assert!(crate::signing::verify(
            &key,
            "s-1",
            1_700_000_000,
            body.as_bytes(),
            user["webhook-signature"].as_str().expect("signature")
        ));
    }

    #[test]
    fn an_entity_longer_than_a_session_id_is_refused_with_a_reason() {
        let e = message(&event(&"x".repeat(129)), &config(""), &source(), 0).expect_err("refused");
        assert!(e.contains("128 characters") && e.contains("SessionId"), "{e}");
        assert!(message(&event(&"x".repeat(128)), &config(""), &source(), 0).is_ok());
    }
}
