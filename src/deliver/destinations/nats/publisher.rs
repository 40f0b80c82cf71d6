//! The NATS JetStream destination ([`Destination`] for `nats://` and
//! `tls://` URLs): each event is published to JetStream with the webhook's
//! body, byte for byte ([`envelope::body`]), and counts as delivered only
//! when the stream acknowledged it.
//!
//! - Subject: the subscription's `subject` template with `{store_id}`,
//!   `{agent_id}`, `{type}` and `{entity}` filled in, each value encoded to
//!   one subject token by [`subject_token`].
//! - Headers: `Nats-Msg-Id: <event_id>` (JetStream drops a second copy
//!   within the stream's duplicate window, so a retry after a lost
//!   acknowledgement is not stored twice), `content-type:
//!   application/json`, the subscription's `headers`, and with `secret` the
//!   Standard Webhooks headers (`webhook-id`, `webhook-timestamp`,
//!   `webhook-signature`) over the same body, so a consumer verifies end to
//!   end as a webhook receiver does.
//! - The connection is made at the first send, not at start: a cluster that
//!   is down when the agent starts is an outage like any other (answers
//!   [`AnswerKind::Unavailable`], so the scheduler probes it at the backoff
//!   pace). Once connected, the client reconnects on its own to the other
//!   servers of the cluster (those of `url` and those the cluster announces);
//!   a send during such a reconnect waits for it a little
//!   ([`RECONNECT_GRACE`]) before calling the link down.
//!
//! What an answer means:
//! - an acknowledgement, also one flagged `duplicate`: delivered;
//! - no connection, no acknowledgement within `timeout`, a lost connection:
//!   [`AnswerKind::Unavailable`] (the link is down; one probe at a time);
//! - "no stream takes this subject" and other errors the stream answers:
//!   [`AnswerKind::Refused`]. The cluster is up and answered; it refused this
//!   subject. Another event type can map to a subject a stream does take, so
//!   the rest of the subscription keeps flowing while this event is retried
//!   with its own backoff (after `FAILURES_BEFORE_OFFLINE` failures in a row
//!   the scheduler takes the link offline anyway). It is never dropped: it
//!   is retried until a stream takes it, or parked after `give_up_after` if
//!   the operator set one (parked events can be resent).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::context::PublishErrorKind;

use super::config::NatsSettings;
use crate::config::SubscriptionConfig;
use crate::deliver::destination::{Answer, AnswerKind, Destination};
use crate::deliver::envelope::{self, Source};
use crate::outbox::read::StoredEvent;

/// How long a send waits for the client to reconnect (a node of the
/// cluster lost) before it answers that the link is down.
pub const RECONNECT_GRACE: Duration = Duration::from_secs(3);

/// A subscription's JetStream publisher.
pub struct Nats {
    /// The subscription: servers and subject (in `nats`), secrets, headers,
    /// payload mode, TLS files, timeout.
    config: Arc<SubscriptionConfig>,
    /// The kind's own settings of `config`, taken out once.
    nats: NatsSettings,
    /// `source` in every body, and the `{store_id}` and `{agent_id}` of the
    /// subject.
    source: Source,
    /// The contents of `credentials_file`, read at start so a wrong path is
    /// a start-up error.
    credentials: Option<String>,
    /// The JetStream context once connected; `None` until the first
    /// connection succeeds. Locked only to connect.
    context: tokio::sync::Mutex<Option<jetstream::Context>>,
}

impl Nats {
    /// Prepares the publisher of one subscription (no connection yet). Fails
    /// only on local problems: not a NATS subscription, an unreadable
    /// `credentials_file`.
    pub fn new(config: Arc<SubscriptionConfig>, source: Source) -> Result<Self, String> {
        let nats = config
            .kind
            .settings::<NatsSettings>()
            .cloned()
            .ok_or_else(|| format!("{}: not a nats:// or tls:// url", config.url_for_logs()))?;
        let credentials = match &nats.credentials_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    format!(
                        "credentials_file {}: cannot read it: {e} (it must be readable by the agent's user)",
                        path.display()
                    )
                })?;
                // Parse it now, so a damaged file is found at start.
                async_nats::ConnectOptions::with_credentials(&text)
                    .map_err(|e| format!("credentials_file {}: not a NATS credentials file: {e}", path.display()))?;
                Some(text)
            }
            None => None,
        };
        Ok(Nats {
            config,
            nats,
            source,
            credentials,
            context: tokio::sync::Mutex::new(None),
        })
    }

    /// The connection options: authentication, TLS, timeouts, logging of
    /// the client's connection events.
    fn options(&self) -> Result<async_nats::ConnectOptions, String> {
        let mut options = match &self.credentials {
            Some(text) => async_nats::ConnectOptions::with_credentials(text)
                .map_err(|e| format!("credentials_file: not a NATS credentials file: {e}"))?,
            None => async_nats::ConnectOptions::new(),
        };
        if let Some(token) = &self.nats.token {
            options = options.token(token.clone());
        }
        if let Some((user, password)) = &self.nats.user_password {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(ca) = &self.config.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.config.client_cert, &self.config.client_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if self
            .nats
            .servers
            .iter()
            .any(|s| s.to_ascii_lowercase().starts_with("tls://"))
        {
            options = options.require_tls(true);
        }
        let name = self.config.name.clone();
        Ok(options
            .name(format!(
                "store-outbox {} {} {}",
                self.source.store_id, self.source.agent_id, self.config.name
            ))
            .connection_timeout(self.config.timeout.min(Duration::from_secs(10)))
            .request_timeout(Some(self.config.timeout))
            .event_callback(move |event| {
                let name = name.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!(subscription = %name, "NATS: connected")
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!(subscription = %name, "NATS: connection lost, reconnecting")
                        }
                        // The client logs the others itself.
                        other => tracing::debug!(subscription = %name, "NATS: {other}"),
                    }
                }
            }))
    }

    /// The JetStream context, connecting first if there is none yet.
    async fn context(&self) -> Result<jetstream::Context, String> {
        let mut guard = self.context.lock().await;
        if let Some(context) = guard.as_ref() {
            return Ok(context.clone());
        }
        // The client's connection timeout covers the TCP connect, not a
        // server that accepts and never speaks NATS: bound the whole of it.
        let connecting = self.options()?.connect(self.nats.servers.as_slice());
        let client = tokio::time::timeout(self.config.timeout, connecting)
            .await
            .map_err(|_| {
                format!(
                    "cannot connect to {}: no NATS handshake within the timeout ({})",
                    self.config.url_for_logs(),
                    humantime::format_duration(self.config.timeout)
                )
            })?
            .map_err(|e| format!("cannot connect to {}: {e}", self.config.url_for_logs()))?;
        let context = jetstream::ContextBuilder::new()
            .timeout(self.config.timeout)
            .ack_timeout(self.config.timeout)
            .build(client);
        *guard = Some(context.clone());
        Ok(context)
    }

    /// For `doctor`: connects (servers, authentication, TLS) and names the
    /// stream that takes `subject`; `Ok(None)` when no stream does.
    pub async fn stream_for(&self, subject: &str) -> Result<Option<String>, String> {
        let context = self.context().await?;
        match context.stream_by_subject(subject).await {
            Ok(name) => Ok(Some(name)),
            Err(e) if matches!(e.kind(), jetstream::context::GetStreamByNameErrorKind::NotFound) => Ok(None),
            Err(e) => Err(format!("cannot ask JetStream which stream takes {subject}: {e}")),
        }
    }

    /// The subject an event of `event_type` (entity `entity`) goes to.
    pub fn subject_of(&self, event_type: &str, entity: &str) -> String {
        fill_subject(&self.nats.subject, &self.source, event_type, entity)
    }

    /// The subject of one event.
    pub fn subject(&self, event: &StoredEvent) -> String {
        fill_subject(&self.nats.subject, &self.source, &event.event_type, &event.entity)
    }

    /// The message headers of one event with this body.
    fn headers(&self, event: &StoredEvent, body: &[u8]) -> async_nats::HeaderMap {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", event.event_id.as_str());
        headers.insert("content-type", "application/json");
        if !self.config.secrets.is_empty() {
            let timestamp = crate::signing::timestamp_now();
            let signature = crate::signing::signature_header(&self.config.secrets, &event.event_id, timestamp, body);
            headers.insert("webhook-id", event.event_id.as_str());
            headers.insert("webhook-timestamp", timestamp.to_string().as_str());
            headers.insert("webhook-signature", signature.as_str());
        }
        for (name, value) in &self.config.headers {
            headers.insert(name.as_str(), value.as_str());
        }
        headers
    }
}

/// Waits up to `grace` for a client that is reconnecting; whether it is
/// connected.
async fn connected_within(client: &async_nats::Client, grace: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        if client.connection_state() == async_nats::connection::State::Connected {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

impl Destination for Nats {
    /// Publishes one event to JetStream and waits for the stream's
    /// acknowledgement.
    async fn send(&self, event: &StoredEvent) -> Answer {
        let context = match self.context().await {
            Ok(context) => context,
            Err(e) => return Answer::failed(AnswerKind::Unavailable, None, e),
        };
        let grace = RECONNECT_GRACE.min(self.config.timeout);
        if !connected_within(&context.client(), grace).await {
            // Not published while disconnected: the client would buffer it
            // and send it on reconnect, after this attempt had given up.
            return Answer::failed(
                AnswerKind::Unavailable,
                None,
                format!(
                    "connection to {} lost and not back within {}; the client keeps reconnecting",
                    self.config.url_for_logs(),
                    humantime::format_duration(grace)
                ),
            );
        }
        let body = envelope::body(event, self.config.payload, &self.source);
        let headers = self.headers(event, &body);
        let subject = self.subject(event);
        let published = match context
            .publish_with_headers(subject.clone(), headers, body.into())
            .await
        {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match published {
            Ok(_ack) => Answer::delivered(None),
            Err(e) => classify(&e, &subject, self.config.timeout),
        }
    }
}

/// What a failed publish means (see the module documentation).
fn classify(e: &jetstream::context::PublishError, subject: &str, timeout: Duration) -> Answer {
    match e.kind() {
        PublishErrorKind::StreamNotFound => Answer::failed(
            AnswerKind::Refused,
            None,
            format!(
                "no stream takes {subject}: JetStream has no stream whose subjects include it; \
                 central IT must create one (or widen one's subjects), the event waits until then"
            ),
        ),
        PublishErrorKind::TimedOut => Answer::failed(
            AnswerKind::Unavailable,
            None,
            format!(
                "no acknowledgement for {subject} within the timeout ({})",
                humantime::format_duration(timeout)
            ),
        ),
        PublishErrorKind::BrokenPipe | PublishErrorKind::MaxAckPending => Answer::failed(
            AnswerKind::Unavailable,
            None,
            format!("publish to {subject} failed: {e}"),
        ),
        PublishErrorKind::WrongLastMessageId | PublishErrorKind::WrongLastSequence | PublishErrorKind::Other => {
            Answer::failed(
                AnswerKind::Refused,
                None,
                format!("the stream refused {subject}: {}", crate::error_text::chain(e)),
            )
        }
    }
}

/// A subject template with its placeholders filled in, each value encoded
/// to one token ([`subject_token`]).
pub fn fill_subject(template: &str, source: &Source, event_type: &str, entity: &str) -> String {
    template
        .replace("{store_id}", &subject_token(&source.store_id))
        .replace("{agent_id}", &subject_token(&source.agent_id))
        .replace("{type}", &subject_token(event_type))
        .replace("{entity}", &subject_token(entity))
}

/// Encodes a value (an entity, a type, a store or agent id) to one valid
/// subject token, reversibly ([`decode_subject_token`]): every character
/// that is `%`, `.`, `*`, `>`, ASCII whitespace or an ASCII control becomes
/// `%` and two upper-case hex digits (`till:3` stays `till:3`, `order 7.1`
/// becomes `order%207%2E1`); every other character, non-ASCII included,
/// stays as it is. An empty value (never an entity or a type: ingest refuses
/// those) is written `_%`, which no other value encodes to (a `%` of a value
/// is always `%25`).
pub fn subject_token(value: &str) -> String {
    if value.is_empty() {
        return "_%".to_string();
    }
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        let escape = c.is_ascii() && (c.is_ascii_whitespace() || c.is_ascii_control() || "%.*>".contains(c));
        if escape {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// The value a token of [`subject_token`] encodes; `None` if it is not one.
pub fn decode_subject_token(token: &str) -> Option<String> {
    if token == "_%" {
        return Some(String::new());
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = token.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> Source {
        Source {
            store_id: "0042".into(),
            agent_id: "till-pc".into(),
        }
    }

    #[test]
    fn placeholders_are_filled_with_one_token_each() {
        assert_eq!(
            fill_subject("pos.{store_id}.{type}", &source(), "SaleCreated", "till:3"),
            "pos.0042.SaleCreated"
        );
        assert_eq!(
            fill_subject("pos.{agent_id}.{entity}.{type}", &source(), "Sale.v2", "order 7.1>*"),
            "pos.till-pc.order%207%2E1%3E%2A.Sale%2Ev2"
        );
    }

    #[test]
    fn the_entity_encoding_is_reversible_and_gives_one_valid_token() {
        for value in [
            "till:3",
            "order 7.1",
            "a.b.c",
            "100%",
            "%2E",
            "*",
            ">",
            "tab\there",
            "line\nbreak",
            "ümlaut.ß",
            "_%",
            "",
            "x\u{7f}y",
        ] {
            let token = subject_token(value);
            assert!(!token.is_empty(), "{value:?}");
            assert!(
                !token
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || ".*>".contains(c)),
                "{value:?} gave {token:?}"
            );
            assert_eq!(decode_subject_token(&token).as_deref(), Some(value), "{token:?}");
        }
        assert_eq!(subject_token("till:3"), "till:3", "common values stay readable");
    }

    #[test]
    fn an_unreadable_or_damaged_credentials_file_stops_the_start_with_its_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let creds = dir.path().join("bus.creds");
        let config = |extra: &str| {
            let text = format!(
                "[[subscription]]\nname = \"bus\"\nurl = \"nats://127.0.0.1:9\"\nsubject = \"pos.{{type}}\"\n{extra}"
            );
            Arc::new(
                crate::deliver::destinations::parse_config(&text, None)
                    .expect("valid")
                    .subscriptions
                    .remove(0),
            )
        };
        let with_creds = config(&format!("credentials_file = \"{}\"\n", creds.display()));
        let missing = Nats::new(with_creds.clone(), source()).err().expect("refused");
        assert!(
            missing.contains("cannot read") && missing.contains("bus.creds"),
            "{missing}"
        );
        std::fs::write(&creds, "not a creds file").expect("write");
        let damaged = Nats::new(with_creds, source()).err().expect("refused");
        assert!(damaged.contains("not a NATS credentials file"), "{damaged}");
        assert!(
            Nats::new(config("token = \"t\"\n"), source()).is_ok(),
            "no connection at start"
        );
    }

    #[test]
    fn a_missing_stream_names_the_subject_and_is_retried_not_dropped() {
        let e = jetstream::context::PublishError::new(PublishErrorKind::StreamNotFound);
        let answer = classify(&e, "pos.0042.SaleCreated", Duration::from_secs(30));
        assert_eq!(answer.kind, AnswerKind::Refused);
        assert!(
            answer
                .error
                .as_deref()
                .is_some_and(|e| e.contains("no stream takes pos.0042.SaleCreated")),
            "{answer:?}"
        );
        let e = jetstream::context::PublishError::new(PublishErrorKind::TimedOut);
        assert_eq!(classify(&e, "s", Duration::from_secs(1)).kind, AnswerKind::Unavailable);
    }
}
