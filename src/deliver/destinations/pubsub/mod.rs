//! Google Cloud Pub/Sub (`pubsub://projects/<project>/topics/<topic>`):
//! each event is one message published over the REST API
//! (`POST {endpoint}/v1/projects/P/topics/T:publish`, the agent's own HTTP
//! client), and counts as delivered only when the call answered 200 with a
//! message id for it.
//!
//! - A message: `data` = the webhook envelope, byte for byte, in base64;
//!   `orderingKey` = the entity; attributes `webhook-id` (the event id),
//!   `type`, `store_id`, `agent_id`, `entity_seq`, and with `secret` the
//!   Standard Webhooks `webhook-timestamp` and `webhook-signature` over
//!   the same bytes. A batch is one publish call per entity (the API takes
//!   one ordering key per call: "All PubsubMessages published in a given
//!   PublishRequest must specify the same orderingKey value"), side by
//!   side, each with that entity's events in `entity_seq` order.
//! - Auth: a service account's OAuth token (`token.rs`), kept and renewed
//!   before it expires, as `Authorization: Bearer`; none for the emulator.
//! - Answers: a 429, a 503 or `RESOURCE_EXHAUSTED` throttle the
//!   subscription; a 401 forgets the token (the next call fetches one); a
//!   404 (no topic) and a 403 (no permission) are refused with a message
//!   naming the topic, the account and the role, and retried: an operator
//!   fixes them in the console and delivery goes on in order.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::Method;

pub mod config;
pub mod doctor;
pub mod token;

use self::config::PubSubSettings;
use self::token::ServiceAccount;
use super::{Built, Kind};
use crate::config::SubscriptionConfig;
use crate::deliver::access_token::AccessToken;
use crate::deliver::destination::{Answer, AnswerKind, Destination};
use crate::deliver::envelope::{body, Source};
use crate::deliver::http_answer::{answer_of, printable};
use crate::deliver::http_client::{subscription_endpoint, subscription_headers, Endpoint, Reply};
use crate::outbox::read::StoredEvent;

/// Pub/Sub in the registry of kinds.
pub static KIND: Kind = Kind {
    config: &config::CONFIG,
    build: |config, source| PubSub::new(config.clone(), source.clone()).map(|p| Built::of(Arc::new(p))),
    probe: |sub, source, steps| Box::pin(doctor::probe(sub, source, steps)),
    step_names: &doctor::STEP_NAMES,
};

/// A subscription's publisher.
pub struct PubSub {
    /// The subscription: secrets, headers, payload mode, timeout.
    config: Arc<SubscriptionConfig>,
    /// Its kind's settings, taken out once.
    settings: PubSubSettings,
    /// `source` in every body and two attributes.
    source: Source,
    /// The publish URL's connections.
    publish: Endpoint,
    /// `user-agent`, `accept`, the subscription's `headers`.
    fixed_headers: HeaderMap,
    /// The service account, `None` for the emulator.
    account: Option<ServiceAccount>,
    /// Its access token.
    token: AccessToken,
}

impl PubSub {
    /// Prepares the publisher (no connection yet). Fails only on local
    /// problems: the key file, the URL.
    pub fn new(config: Arc<SubscriptionConfig>, source: Source) -> Result<Self, String> {
        let settings = config
            .kind
            .settings::<PubSubSettings>()
            .cloned()
            .ok_or_else(|| format!("{}: not a pubsub:// url", config.url_for_logs()))?;
        let publish = subscription_endpoint(&config, &api_url(&settings, ":publish")?)?;
        let account = match &settings.credentials_file {
            Some(path) => Some(ServiceAccount::from_file(path, config.timeout)?),
            None => None,
        };
        Ok(PubSub {
            fixed_headers: subscription_headers(&config)?,
            config,
            settings,
            source,
            publish,
            account,
            token: AccessToken::default(),
        })
    }

    /// The headers of one call: the fixed ones, JSON, the token.
    async fn headers(&self) -> Result<HeaderMap, String> {
        let mut headers = self.fixed_headers.clone();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(account) = &self.account {
            let timeout = self.config.timeout;
            let bearer = self.token.get(|| account.fetch_token(timeout)).await?;
            headers.insert(AUTHORIZATION, bearer);
        }
        Ok(headers)
    }

    /// One message of the publish call's body.
    fn message(&self, event: &StoredEvent) -> serde_json::Value {
        let data = body(event, self.config.payload, &self.source);
        let mut attributes = serde_json::Map::new();
        let mut put = |k: &str, v: String| {
            attributes.insert(k.to_string(), serde_json::Value::String(v));
        };
        put("webhook-id", event.event_id.clone());
        put("type", event.event_type.clone());
        put("store_id", self.source.store_id.clone());
        put("agent_id", self.source.agent_id.clone());
        put("entity_seq", event.entity_seq.to_string());
        if !self.config.secrets.is_empty() {
            let timestamp = crate::signing::timestamp_now();
            put("webhook-timestamp", timestamp.to_string());
            put(
                "webhook-signature",
                crate::signing::signature_header(&self.config.secrets, &event.event_id, timestamp, &data),
            );
        }
        serde_json::json!({
            "data": STANDARD.encode(&data),
            "orderingKey": event.entity,
            "attributes": attributes,
        })
    }

    /// Publishes `events`: one call per ordering key (the API takes one
    /// key per call), side by side, each key's events in their order. All
    /// of them delivered is the answer; otherwise the first failure is, and
    /// the batch goes again whole (a key already published is published
    /// again: the same `webhook-id`, which consumers deduplicate on).
    async fn publish(&self, events: &[&StoredEvent]) -> Answer {
        let mut keys: Vec<(&str, Vec<&StoredEvent>)> = Vec::new();
        for event in events {
            match keys.iter_mut().find(|(key, _)| *key == event.entity) {
                Some((_, group)) => group.push(event),
                None => keys.push((&event.entity, vec![event])),
            }
        }
        let calls = keys.iter().map(|(_, group)| self.publish_call(group));
        // The first failure is the batch's answer.
        futures_util::future::join_all(calls)
            .await
            .into_iter()
            .reduce(|kept, next| if kept.kind == AnswerKind::Delivered { next } else { kept })
            .unwrap_or_else(|| Answer::delivered(None))
    }

    /// One publish call of events with the same ordering key.
    async fn publish_call(&self, events: &[&StoredEvent]) -> Answer {
        let messages: Vec<serde_json::Value> = events.iter().map(|e| self.message(e)).collect();
        let call = serde_json::json!({ "messages": messages }).to_string();
        let headers = match self.headers().await {
            Ok(headers) => headers,
            // No token: Google's sign-in is unreachable or refused the key.
            Err(e) => return Answer::failed(AnswerKind::Unavailable, None, e),
        };
        let bearer = headers.get(AUTHORIZATION).cloned();
        let result = self.publish.request(Method::POST, headers, Bytes::from(call)).await;
        match result {
            Ok(reply) => {
                let answer = self.meaning(reply, events.len());
                if let (Some(401), Some(bearer)) = (answer.status, &bearer) {
                    self.token.forget_refused(bearer).await;
                }
                answer
            }
            Err(failure) => answer_of(Err(failure), self.config.timeout),
        }
    }

    /// What a publish call's answer means, worded for the operator.
    fn meaning(&self, reply: Reply, sent: usize) -> Answer {
        let code = reply.status.as_u16();
        if reply.status.is_success() {
            let ids = serde_json::from_slice::<PublishAnswer>(&reply.body).map(|a| a.message_ids.len());
            return match ids {
                Ok(n) if n == sent => Answer::delivered(Some(code)),
                Ok(n) => Answer::failed(
                    AnswerKind::Refused,
                    Some(code),
                    format!("the publish call answered {n} message ids for {sent} messages"),
                ),
                Err(e) => Answer::failed(
                    AnswerKind::Refused,
                    Some(code),
                    format!("the publish call's answer has no message ids: {e}"),
                ),
            };
        }
        let error = serde_json::from_slice::<GoogleError>(&reply.body).ok().map(|e| e.error);
        let status = error.as_ref().and_then(|e| e.status.clone()).unwrap_or_default();
        let message = error
            .as_ref()
            .and_then(|e| e.message.as_deref())
            .map(|m| printable(&m.chars().take(200).collect::<String>()))
            .unwrap_or_default();
        let topic = self.settings.topic_path();
        let who = self.account.as_ref().map_or("the agent", |a| a.email.as_str());
        let mut answer = crate::deliver::http_answer::classify(reply);
        let said = if message.is_empty() {
            format!("HTTP {code}")
        } else {
            format!("HTTP {code} {status}: {message}")
        };
        let detail = match (code, status.as_str()) {
            (_, "RESOURCE_EXHAUSTED") | (429, _) => {
                answer.kind = AnswerKind::Throttled;
                format!("{said} (Pub/Sub asks to slow down)")
            }
            (404, _) | (_, "NOT_FOUND") => {
                answer.kind = AnswerKind::Refused;
                format!("{said}: topic {topic} does not exist: create it (or fix url); events wait in order")
            }
            (403, _) | (_, "PERMISSION_DENIED") => {
                answer.kind = AnswerKind::Refused;
                format!("{said}: {who} may not publish to {topic}: grant it roles/pubsub.publisher on the topic")
            }
            (401, _) => format!("{said}: the access token of {who} was refused; a new one is fetched"),
            _ => answer.error.clone().unwrap_or(said),
        };
        answer.error = Some(detail);
        answer
    }
}

/// `{endpoint}/v1/projects/P/topics/T{suffix}` (`:publish`, or nothing for
/// the topic itself).
pub fn api_url(settings: &PubSubSettings, suffix: &str) -> Result<url::Url, String> {
    let text = format!(
        "{}/v1/{}{suffix}",
        settings.endpoint.as_str().trim_end_matches('/'),
        settings.topic_path()
    );
    url::Url::parse(&text).map_err(|e| format!("{text}: {e}"))
}

#[derive(serde::Deserialize)]
struct PublishAnswer {
    #[serde(rename = "messageIds", default)]
    message_ids: Vec<String>,
}

#[derive(serde::Deserialize)]
struct GoogleError {
    error: GoogleErrorBody,
}

#[derive(serde::Deserialize)]
struct GoogleErrorBody {
    message: Option<String>,
    status: Option<String>,
}

impl Destination for PubSub {
    async fn send(&self, event: &StoredEvent) -> Answer {
        self.publish(&[event]).await
    }

    async fn send_batch(&self, _id: &str, events: &[&StoredEvent]) -> Answer {
        self.publish(events).await
    }

    /// The message in the call: the envelope in base64 (4/3), the
    /// attributes and the JSON around them.
    fn batch_bytes(&self, event: &StoredEvent) -> usize {
        let envelope = body(event, self.config.payload, &self.source).len();
        envelope.div_ceil(3) * 4 + event.entity.len() + event.event_type.len() + 300
    }
}
