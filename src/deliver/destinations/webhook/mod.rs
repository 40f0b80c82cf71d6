//! The webhook destination: the contract's envelope ([`crate::deliver::envelope`])
//! POSTed with the Standard Webhooks headers, gzip, and what an HTTP answer
//! means ([`Destination`] for
//! `http://` and `https://` URLs). The connections are
//! [`http_client`]'s (CloudEvents bodies and headers: [`cloudevents`]).

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};

pub mod cloudevents;
pub mod config;
pub mod doctor;

use crate::config::{Compression, Format, SubscriptionConfig};
use crate::deliver::destination::{Answer, AnswerKind, Destination};
use crate::deliver::envelope::{batch_body, body, Source};
use crate::deliver::http_answer::answer_of;
use crate::deliver::http_client::{subscription_endpoint, subscription_headers, Endpoint};
use crate::outbox::read::StoredEvent;

/// The webhook in the registry of kinds.
pub static KIND: super::Kind = super::Kind {
    config: &config::CONFIG,
    build: |config, source| Webhook::new(config.clone(), source.clone()).map(|w| super::Built::of(Arc::new(w))),
    probe: |sub, _source, steps| Box::pin(doctor::probe(sub, steps)),
    step_names: &doctor::STEP_NAMES,
};

/// The content type of webhook bodies and of CloudEvents' JSON data.
const JSON: &str = "application/json";

/// A subscription's webhook endpoint, ready to send.
pub struct Webhook {
    /// Its connections.
    endpoint: Endpoint,
    /// The headers of every request: `user-agent`, `accept` and the
    /// subscription's own `headers`, checked once.
    fixed_headers: HeaderMap,
    /// The subscription: URL, secrets, headers, payload mode.
    config: Arc<SubscriptionConfig>,
    /// `source` in every body.
    source: Source,
}

/// The connections of a subscription (see
/// [`crate::deliver::http_client::subscription_endpoint`]) to its `url`.
pub fn endpoint(config: &SubscriptionConfig) -> Result<Endpoint, String> {
    subscription_endpoint(config, &config.url)
}

impl Webhook {
    /// Prepares the endpoint of one subscription.
    pub fn new(config: Arc<SubscriptionConfig>, source: Source) -> Result<Self, String> {
        let endpoint = endpoint(&config)?;
        let fixed_headers = subscription_headers(&config)?;
        Ok(Webhook {
            endpoint,
            fixed_headers,
            config,
            source,
        })
    }
}

impl Webhook {
    /// POSTs one body, signed as `id` (over the body as it is, before any
    /// compression: what the receiver has after undoing the content
    /// encoding), and classifies the HTTP answer.
    /// `content_type` is `None` for a request without a body's type (a
    /// CloudEvent without data); `extra` are more headers (CloudEvents').
    async fn post(
        &self,
        id: &str,
        body: Vec<u8>,
        content_type: Option<&str>,
        extra: Vec<(&'static str, String)>,
    ) -> Answer {
        let timestamp = crate::signing::timestamp_now();
        let signature = crate::signing::signature_header(&self.config.secrets, id, timestamp, &body);
        let headers = match self.headers(id, timestamp, signature, content_type, extra) {
            Ok(headers) => headers,
            Err(e) => return Answer::failed(AnswerKind::Refused, None, e),
        };
        let body = match self.config.compression {
            Compression::None => body,
            Compression::Gzip => gzip(&body),
        };
        answer_of(
            self.endpoint.post(headers, Bytes::from(body)).await,
            self.config.timeout,
        )
    }

    /// The headers of one request: the fixed ones, the body's type,
    /// CloudEvents' `extra`, the Standard Webhooks three, the encoding.
    fn headers(
        &self,
        id: &str,
        timestamp: i64,
        signature: String,
        content_type: Option<&str>,
        extra: Vec<(&'static str, String)>,
    ) -> Result<HeaderMap, String> {
        fn value(name: &str, text: &str) -> Result<HeaderValue, String> {
            HeaderValue::from_str(text).map_err(|_| format!("header {name}: {text:?} is not a valid header value"))
        }
        let mut headers = HeaderMap::with_capacity(self.fixed_headers.len() + extra.len() + 6);
        if let Some(content_type) = content_type {
            headers.insert(http::header::CONTENT_TYPE, value("content-type", content_type)?);
        }
        for (name, text) in extra {
            let name = HeaderName::from_static(name);
            let text = value(name.as_str(), &text)?;
            headers.append(name, text);
        }
        headers.insert(HeaderName::from_static("webhook-id"), value("webhook-id", id)?);
        headers.insert(
            HeaderName::from_static("webhook-timestamp"),
            HeaderValue::from(timestamp),
        );
        headers.insert(
            HeaderName::from_static("webhook-signature"),
            value("webhook-signature", &signature)?,
        );
        if self.config.compression == Compression::Gzip {
            headers.insert(http::header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        for (name, text) in &self.fixed_headers {
            headers.append(name.clone(), text.clone());
        }
        Ok(headers)
    }
}

/// `body` gzip-compressed at level 3. Measured on 500 realistic POS sales
/// (506 KB of JSON, docs/BENCHMARKS.md): level 3 makes 11% more bytes than
/// level 6 for less than half its CPU (18 against 42 µs an event); at level 6
/// a store terminal's CPU, not its uplink, limits a batched drain.
pub fn gzip(body: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder =
        flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4 + 64), flate2::Compression::new(3));
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(body);
    encoder.finish().unwrap_or_default()
}

impl Destination for Webhook {
    /// POSTs one event, signed, and classifies the HTTP answer.
    async fn send(&self, event: &StoredEvent) -> Answer {
        match self.config.format {
            Format::Webhook => {
                let body = body(event, self.config.payload, &self.source);
                self.post(&event.event_id, body, Some(JSON), Vec::new()).await
            }
            Format::CloudEvents => {
                let headers = cloudevents::binary_headers(event, &self.source);
                match cloudevents::binary_body(event, self.config.payload) {
                    Some(data) => self.post(&event.event_id, data, Some(JSON), headers).await,
                    None => self.post(&event.event_id, Vec::new(), None, headers).await,
                }
            }
        }
    }

    /// POSTs a batch as a JSON array (of webhook envelopes, or of structured
    /// CloudEvents), signed with the batch's id.
    async fn send_batch(&self, id: &str, events: &[&StoredEvent]) -> Answer {
        match self.config.format {
            Format::Webhook => {
                let body = batch_body(events, self.config.payload, &self.source);
                self.post(id, body, Some(JSON), Vec::new()).await
            }
            Format::CloudEvents => {
                let body = cloudevents::batch_body(events, self.config.payload, &self.source);
                self.post(id, body, Some(cloudevents::BATCH_CONTENT_TYPE), Vec::new())
                    .await
            }
        }
    }

    /// The event's part of a batch body and the comma before it.
    fn batch_bytes(&self, event: &StoredEvent) -> usize {
        let element = match self.config.format {
            Format::Webhook => body(event, self.config.payload, &self.source).len(),
            Format::CloudEvents => {
                cloudevents::structured(event, self.config.payload, &cloudevents::source_of(&self.source)).len()
            }
        };
        element + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PayloadMode;

    fn stored(payload: &str, attributes: Option<&str>) -> StoredEvent {
        StoredEvent {
            seq: 7,
            event_id: "s-1".into(),
            event_type: "SaleCreated".into(),
            entity: "till:3".into(),
            entity_seq: 2,
            occurred_at: "2026-11-22T10:15:00Z".into(),
            ingested_at: 0,
            correlation_id: None,
            is_test: false,
            attributes: attributes.map(str::to_string),
            payload: payload.into(),
        }
    }

    fn source() -> Source {
        Source {
            store_id: "0042".into(),
            agent_id: "till-pc".into(),
        }
    }

    #[test]
    fn the_payload_is_sent_verbatim_as_data_after_the_envelope() {
        let body = body(
            &stored(r#"{"b": 1,  "a":[2]}"#, Some(r#"{"terminal":"03"}"#)),
            PayloadMode::Full,
            &source(),
        );
        let text = String::from_utf8(body).expect("UTF-8");
        assert_eq!(
            text,
            r#"{"id":"s-1","type":"SaleCreated","timestamp":"2026-11-22T10:15:00Z","entity":"till:3","entity_seq":2,"source":{"store_id":"0042","agent_id":"till-pc"},"correlation_id":null,"is_test":false,"attributes":{"terminal":"03"},"data":{"b": 1,  "a":[2]}}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(parsed["data"]["a"][0], 2);
    }

    #[test]
    fn gzip_gives_back_the_body_it_was_given() {
        use std::io::Read as _;
        let text = br#"[{"id":"s-1","data":{"sku":"4006381333931","price":9.5}}]"#.repeat(20);
        let packed = gzip(&text);
        assert!(packed.len() < text.len() / 4, "{} of {}", packed.len(), text.len());
        let mut unpacked = Vec::new();
        flate2::read::GzDecoder::new(&packed[..])
            .read_to_end(&mut unpacked)
            .expect("valid gzip");
        assert_eq!(unpacked, text);
    }

    #[test]
    fn thin_bodies_have_no_data_and_missing_attributes_are_an_empty_object() {
        let text = String::from_utf8(body(&stored("null", None), PayloadMode::Thin, &source())).expect("UTF-8");
        let parsed: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert!(parsed.get("data").is_none(), "{text}");
        assert_eq!(parsed["attributes"], serde_json::json!({}));
        let full = String::from_utf8(body(&stored("null", None), PayloadMode::Full, &source())).expect("UTF-8");
        assert!(full.ends_with(r#","data":null}"#), "{full}");
    }
}
