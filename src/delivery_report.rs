//! The delivery reports: the `events` listing (one row per subscription and
//! event) and `show`'s one event with every delivery attempt. Shared by the
//! CLI and the admin API (`/v1/events`, `/v1/events/{id}`) and the page; the
//! queries that fill them are in `outbox::read`.

use serde::Serialize;

use crate::outbox::state::DeliveryState;

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
    pub payload: serde_json::Value,
    /// Per subscription.
    pub deliveries: Vec<EventDelivery>,
}
