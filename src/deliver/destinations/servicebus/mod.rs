//! The Azure Service Bus destination (`servicebus://<namespace>/<queue-or-topic>`
//! URLs), over the Service Bus REST API: each event is one message POSTed
//! to `{endpoint}/{entity}/messages` ("Send Message"; with `batch`, one
//! "Send Message Batch" request of content type
//! `application/vnd.microsoft.servicebus.json`), its body the webhook
//! envelope, `BrokerProperties` `MessageId` = event id and `SessionId` =
//! entity, and the custom properties of [`message`]. Delivered means a 2xx
//! (Service Bus answers 201).
//!
//! Authentication ([`sas`], [`entra`]): a SAS token signed with the policy's
//! key, or an Entra ID token by client credentials, kept and renewed before
//! it ends by [`AccessToken`] and forgotten after a 401. The key or client
//! secret is read from its file when the destination is built (start,
//! reload): a missing file stops the start naming its path. No error text
//! holds the key, the token or the secret ([`ServiceBus::scrub`]).
//!
//! `batch.max_bytes` caps the batch request's body as sent (the JSON array,
//! each body escaped as a string, with its properties:
//! [`Destination::batch_bytes`] counts exactly that, so a batch stays under
//! it); it may not exceed 1 MiB, the most Service Bus takes in one HTTP
//! request (Premium); a Standard namespace takes 256 KB, so set
//! `max_bytes = "256KiB"` there (docs/SERVICEBUS.md).

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};

pub mod answer;
pub mod config;
pub mod doctor;
pub mod entra;
pub mod message;
pub mod sas;

use self::config::{Credential, ServiceBusSettings};
use self::entra::EntraApp;
use self::message::{batch_body, message, Message};
use self::sas::{read_secret_file, SasKey};
use super::{Built, Kind};
use crate::config::SubscriptionConfig;
use crate::deliver::access_token::AccessToken;
use crate::deliver::destination::{Answer, AnswerKind, Destination};
use crate::deliver::envelope::Source;
use crate::deliver::http_client::{subscription_endpoint, Endpoint, Failure, Reply, USER_AGENT as HTTP_USER_AGENT};
use crate::outbox::read::StoredEvent;

/// Service Bus in the registry of kinds.
pub static KIND: Kind = Kind {
    config: &config::CONFIG,
    build: |config, source| ServiceBus::new(config.clone(), source.clone()).map(|sb| Built::of(Arc::new(sb))),
    probe: |sub, source, steps| Box::pin(doctor::probe(sub, source, steps)),
    step_names: &doctor::STEP_NAMES,
};

/// The content type of "Send Message Batch" (without parameters, as the
/// reference asks).
pub const BATCH_CONTENT_TYPE: &str = "application/vnd.microsoft.servicebus.json";

/// The largest batch request Service Bus takes over HTTP (Premium, 1 MB).
pub const MAX_BATCH_BYTES: u64 = 1024 * 1024;

/// How the destination authenticates, its secret read at build.
enum Signer {
    /// A SAS policy's key.
    Sas(SasKey),
    /// An Entra ID application.
    Entra(Box<EntraApp>),
}

/// A subscription's Service Bus queue or topic, ready to send.
pub struct ServiceBus {
    /// The subscription: payload mode, secrets, timeout, batch.
    config: Arc<SubscriptionConfig>,
    /// Its kind's own settings, taken out once.
    settings: ServiceBusSettings,
    /// `source` in every body and the `store_id`/`agent_id` properties.
    source: Source,
    /// The connections to `{endpoint}/{entity}/messages`.
    endpoint: Endpoint,
    /// The key or application.
    signer: Signer,
    /// The token in use.
    token: AccessToken,
    /// How messages name the identity (`SAS key "store-sender"`).
    identity: String,
}

impl ServiceBus {
    /// Prepares the destination of one subscription: reads the key or
    /// client secret, makes the endpoints (no connection yet).
    pub fn new(config: Arc<SubscriptionConfig>, source: Source) -> Result<Self, String> {
        let settings = config
            .kind
            .settings::<ServiceBusSettings>()
            .cloned()
            .ok_or_else(|| format!("{}: not a servicebus:// url", config.url_for_logs()))?;
        let endpoint = subscription_endpoint(&config, &settings.messages_url()?)?;
        let (signer, identity) = match &settings.credential {
            Credential::Sas { key_name, key_file } => (
                Signer::Sas(SasKey::read(key_name, key_file)?),
                format!("SAS key {key_name:?}"),
            ),
            Credential::Entra {
                tenant_id,
                client_id,
                client_secret_file,
            } => {
                let secret = read_secret_file(client_secret_file, "client_secret_file")?;
                let token_url = settings.token_url(tenant_id)?;
                let token_endpoint = subscription_endpoint(&config, &token_url)?;
                let app = EntraApp::new(tenant_id, client_id, secret, token_endpoint, &token_url, config.timeout);
                let identity = app.named();
                (Signer::Entra(Box::new(app)), identity)
            }
        };
        Ok(ServiceBus {
            config,
            settings,
            source,
            endpoint,
            signer,
            token: AccessToken::default(),
            identity,
        })
    }

    /// The `Authorization` header: the kept token, or a new one. `Err` is
    /// the answer when none can be had (Entra ID down or refusing).
    pub async fn authorization(&self) -> Result<HeaderValue, Answer> {
        let mut refused = AnswerKind::Unavailable;
        let got = match &self.signer {
            Signer::Sas(key) => {
                let resource = self.settings.resource_uri();
                self.token.get(|| async { key.fetch(&resource) }).await
            }
            Signer::Entra(app) => {
                let refused = &mut refused;
                self.token
                    .get(|| async {
                        app.fetch().await.map_err(|e| {
                            *refused = e.kind;
                            e.text
                        })
                    })
                    .await
            }
        };
        got.map_err(|e| Answer::failed(refused, None, self.scrub(&e, None)))
    }

    /// POSTs `body` with `headers` and the token, and words the answer; a
    /// 401 drops the token so the next request gets a new one.
    async fn post(&self, mut headers: HeaderMap, body: Vec<u8>) -> Answer {
        let authorization = match self.authorization().await {
            Ok(value) => value,
            Err(answer) => return answer,
        };
        headers.insert(AUTHORIZATION, authorization.clone());
        headers.insert(USER_AGENT, HeaderValue::from_static(HTTP_USER_AGENT));
        let result = self.endpoint.post(headers, Bytes::from(body)).await;
        let mut answer = answer::answer(result, self.config.timeout, &self.target());
        if answer.status == Some(401) {
            self.token.forget_refused(&authorization).await;
        }
        answer.error = answer.error.map(|e| self.scrub(&e, Some(&authorization)));
        answer
    }

    /// What answers name.
    pub fn target(&self) -> answer::Target<'_> {
        answer::Target {
            identity: &self.identity,
            entra: matches!(self.signer, Signer::Entra(_)),
            namespace: &self.settings.namespace,
            entity: &self.settings.entity,
        }
    }

    /// `text` without the key, the client secret or the token (and its
    /// signature alone), should an answer or a proxy echo one.
    pub fn scrub(&self, text: &str, token: Option<&HeaderValue>) -> String {
        let mut secrets: Vec<String> = Vec::new();
        match &self.signer {
            Signer::Sas(key) => secrets.push(key.key().to_string()),
            Signer::Entra(app) => secrets.push(app.secret().to_string()),
        }
        if let Some(token) = token.and_then(|t| t.to_str().ok()) {
            secrets.push(token.to_string());
            let value = token.split_once(' ').map_or(token, |(_, v)| v);
            secrets.push(value.to_string());
            if let Some(sig) = value.split('&').find_map(|f| f.strip_prefix("sig=")) {
                secrets.push(sig.to_string());
            }
        }
        let mut out = text.to_string();
        for secret in secrets.iter().filter(|s| s.len() >= 8) {
            out = out.replace(secret.as_str(), "<hidden>");
        }
        out
    }

    /// A request without a token (`doctor`'s TLS check): any answer means
    /// the connection and TLS work.
    pub async fn unauthenticated_get(&self) -> Result<Reply, Failure> {
        let mut headers = HeaderMap::new();
        headers.insert(USER_AGENT, HeaderValue::from_static(HTTP_USER_AGENT));
        self.endpoint.request(http::Method::GET, headers, Bytes::new()).await
    }

    /// An empty "Send Message Batch" with the token (`doctor`'s send check):
    /// the service authenticates and authorizes it, finds the entity, and
    /// has nothing to store.
    pub async fn empty_batch(&self) -> Result<Result<Reply, Failure>, Answer> {
        let authorization = self.authorization().await?;
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, authorization);
        headers.insert(USER_AGENT, HeaderValue::from_static(HTTP_USER_AGENT));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(BATCH_CONTENT_TYPE));
        Ok(self.endpoint.post(headers, Bytes::from_static(b"[]")).await)
    }

    /// The endpoint's proxy, if the environment names one.
    pub fn proxy(&self) -> Option<&str> {
        self.endpoint.proxy()
    }

    /// The kind's settings.
    pub fn settings(&self) -> &ServiceBusSettings {
        &self.settings
    }

    /// The identity as messages name it.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// `event` as a message, signed now.
    fn message_of(&self, event: &StoredEvent) -> Result<Message, String> {
        message(event, &self.config, &self.source, crate::signing::timestamp_now())
    }
}

/// `text` as a header value (JSON text in ASCII: always valid).
fn header_value(name: &str, text: &str) -> Result<HeaderValue, Answer> {
    HeaderValue::from_str(text).map_err(|_| {
        Answer::failed(
            AnswerKind::Refused,
            None,
            format!("{name}: {text:?} is not a valid header value"),
        )
    })
}

impl Destination for ServiceBus {
    /// "Send Message": the envelope as the body, the properties as headers.
    async fn send(&self, event: &StoredEvent) -> Answer {
        let m = match self.message_of(event) {
            Ok(m) => m,
            Err(e) => return Answer::failed(AnswerKind::Refused, None, e),
        };
        let mut headers = HeaderMap::with_capacity(m.custom.len() + 4);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let properties = (
            HeaderName::from_static("brokerproperties"),
            "BrokerProperties",
            &m.broker_properties,
        );
        let custom = m
            .custom
            .iter()
            .map(|(name, value)| (HeaderName::from_static(name), *name, value));
        for (header, name, text) in std::iter::once(properties).chain(custom) {
            match header_value(name, text) {
                Ok(value) => headers.insert(header, value),
                Err(answer) => return answer,
            };
        }
        self.post(headers, m.body).await
    }

    /// "Send Message Batch": every event one element, in the batch's order
    /// (each signed with its own event id; the batch id is not sent, as
    /// each message is read on its own).
    async fn send_batch(&self, _id: &str, events: &[&StoredEvent]) -> Answer {
        let messages: Result<Vec<Message>, String> = events.iter().map(|e| self.message_of(e)).collect();
        let messages = match messages {
            Ok(m) => m,
            Err(e) => return Answer::failed(AnswerKind::Refused, None, e),
        };
        let mut headers = HeaderMap::with_capacity(4);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(BATCH_CONTENT_TYPE));
        self.post(headers, batch_body(&messages)).await
    }

    /// The event's element of a batch body, the comma before it, and one
    /// byte for the brackets: a batch's body never passes
    /// `batch.max_bytes`.
    fn batch_bytes(&self, event: &StoredEvent) -> usize {
        match self.message_of(event) {
            Ok(m) => m.batch_element().len() + 2,
            Err(_) => event.payload.len() + 512,
        }
    }
}
