//! The shapes of what people and scripts read, filled by the queries in
//! `outbox::read`: the `events` listing (one row per subscription and event),
//! `show`'s one event with every delivery attempt, and the per-subscription
//! and ingest figures of `status` (assembled by `crate::status`, above).
//! Shared by the CLI, the admin API and the page. It depends on nothing but
//! the states.

use serde::Serialize;

use super::state::{ConcurrencyMode, DeliveryState, SubscriptionState};

/// One delivery, as `events` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryRow {
    /// The event's id.
    pub event_id: String,
    /// Its type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Its entity.
    pub entity: String,
    /// Its position in the entity.
    pub entity_seq: i64,
    /// The subscription.
    pub subscription: String,
    /// pending, delivered or parked.
    pub state: DeliveryState,
    /// Attempts so far.
    pub attempts: i64,
    /// When the event was stored.
    pub ingested_at: String,
    /// When it got its 2xx.
    pub delivered_at: Option<String>,
    /// Last failure.
    pub last_error: Option<String>,
}

/// One delivery attempt.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptRow {
    /// When.
    pub at: String,
    /// HTTP status, if an answer came.
    pub status: Option<i64>,
    /// Failure, if any.
    pub error: Option<String>,
    /// How long it took, ms.
    pub duration_ms: i64,
}

/// One subscription's view of an event.
#[derive(Debug, Clone, Serialize)]
pub struct EventDelivery {
    /// The subscription.
    pub subscription: String,
    /// pending, delivered or parked.
    pub state: DeliveryState,
    /// Every attempt, oldest first.
    pub attempts: Vec<AttemptRow>,
    /// When the next attempt is planned, for a pending delivery that failed
    /// before; RFC 3339.
    pub next_attempt_at: Option<String>,
    /// The same, in seconds from now (0 when due).
    pub next_attempt_in_s: Option<i64>,
}

/// An event with its deliveries, for `show`.
#[derive(Debug, Clone, Serialize)]
pub struct EventDetail {
    /// The event's id.
    pub event_id: String,
    /// Its type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Its entity.
    pub entity: String,
    /// Its position in the entity.
    pub entity_seq: i64,
    /// When it happened.
    pub occurred_at: String,
    /// When it was stored.
    pub ingested_at: String,
    /// Correlation id.
    pub correlation_id: Option<String>,
    /// Test flag.
    pub is_test: bool,
    /// Attributes.
    pub attributes: serde_json::Value,
    /// The payload.
    pub payload: Payload,
    /// Per subscription.
    pub deliveries: Vec<EventDelivery>,
}

/// A stored payload as `show` prints it: parsed (pretty in `--json`) when
/// serde_json can hold it, else its text verbatim (a payload nested deeper
/// than serde_json's 128 levels, which ingest accepts up to 128 levels
/// inside the event, used to print as `null`).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Payload {
    /// Parsed.
    Parsed(serde_json::Value),
    /// Too deep to parse: the JSON text as stored.
    Verbatim(Box<serde_json::value::RawValue>),
}

impl Payload {
    /// Parses a stored payload's JSON text.
    pub fn from_text(text: String) -> Payload {
        match serde_json::from_str(&text) {
            Ok(value) => Payload::Parsed(value),
            Err(_) => match serde_json::value::RawValue::from_string(text) {
                Ok(raw) => Payload::Verbatim(raw),
                Err(_) => Payload::Parsed(serde_json::Value::Null),
            },
        }
    }
}

impl std::fmt::Display for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Payload::Parsed(value) => value.fmt(f),
            Payload::Verbatim(raw) => f.write_str(raw.get()),
        }
    }
}

/// Ingest counters since the database was created.
#[derive(Debug, Clone, Serialize)]
pub struct IngestCounters {
    /// Events stored.
    pub accepted_total: i64,
    /// Events acknowledged again as duplicates.
    pub duplicate_total: i64,
    /// Events refused.
    pub rejected_total: i64,
}

/// One subscription in `status`.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionStatus {
    /// Its name.
    pub name: String,
    /// online, offline, stopped (agent not running) or unconfigured.
    pub state: SubscriptionState,
    /// Deliveries waiting (not parked).
    pub pending: i64,
    /// Requests in flight at the last update.
    pub in_flight: i64,
    /// `fixed` or `adaptive`, as the running agent delivers; `null` while
    /// it does not run the subscription.
    pub concurrency: Option<ConcurrencyMode>,
    /// `max_in_flight` as the running agent delivers with it; `null` while
    /// it does not run the subscription.
    pub max_in_flight: Option<i64>,
    /// Requests the subscription may keep on the wire now: `max_in_flight`
    /// when fixed, between 1 and it when adaptive; `null` while the agent
    /// does not run the subscription.
    pub concurrency_limit: Option<i64>,
    /// `max_rate`: most requests a second, from the config; `null` when
    /// there is no cap (or the subscription is not configured).
    pub max_rate: Option<f64>,
    /// Deliveries parked after `give_up_after`.
    pub parked: i64,
    /// Age of the oldest pending event, seconds.
    pub oldest_pending_age_s: Option<i64>,
    /// Deliveries that got a 2xx.
    pub delivered_total: i64,
    /// Time of the last 2xx.
    pub last_success_at: Option<String>,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// Time of the last failure.
    pub last_error_at: Option<String>,
    /// Seconds since the last failure.
    pub last_error_age_s: Option<i64>,
    /// The last failure is past: a delivery succeeded after it.
    pub last_error_past: bool,
    /// Whether it is in the current config.
    pub configured: bool,
    /// Endpoint, as last configured.
    pub url: Option<String>,
    /// When the running agent plans the next attempt, while it waits
    /// (offline: the next probe; online: the earliest backoff); RFC 3339.
    pub next_attempt_at: Option<String>,
    /// The same, in seconds from now (0 when due).
    pub next_attempt_in_s: Option<i64>,
}

/// A `max_rate` as people read it: `50`, `0.5`, `12.25`.
pub fn rate_text(rate: f64) -> String {
    let text = format!("{rate:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
impl SubscriptionStatus {
    /// An online subscription with a small backlog and no concurrency known
    /// (no scheduler runs it), for the tests of what shows it.
    pub(crate) fn example(name: &str) -> Self {
        SubscriptionStatus {
            name: name.into(),
            state: SubscriptionState::Online,
            pending: 40,
            in_flight: 0,
            concurrency: None,
            max_in_flight: None,
            concurrency_limit: None,
            max_rate: None,
            parked: 0,
            oldest_pending_age_s: Some(3),
            delivered_total: 7,
            last_success_at: None,
            last_error: None,
            last_error_at: None,
            last_error_age_s: None,
            last_error_past: false,
            configured: true,
            url: None,
            next_attempt_at: None,
            next_attempt_in_s: None,
        }
    }
}
