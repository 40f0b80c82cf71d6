//! The two state machines the database stores, as types: a delivery's state
//! (`deliveries.state`, an integer) and a subscription's state
//! (`subscriptions.state`, text); and what a running scheduler reports of its
//! request concurrency (`subscriptions.concurrency`, `max_in_flight`,
//! `concurrency_limit`). Every conversion to and from the stored value, the
//! names people read and the parsing of filters lives here.

use std::fmt;
use std::str::FromStr;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde::Serialize;

/// A text naming no state of the kind asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{given:?} is not a {kind} state: give {accepted}")]
pub struct UnknownState {
    /// The text that was given.
    pub given: String,
    /// "delivery" or "subscription".
    pub kind: &'static str,
    /// The accepted names, as "a, b or c".
    pub accepted: String,
}

impl UnknownState {
    fn new(given: &str, kind: &'static str, names: &[&str]) -> Self {
        let accepted = match names.split_last() {
            Some((last, [])) => (*last).to_string(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        };
        UnknownState {
            given: given.to_string(),
            kind,
            accepted,
        }
    }
}

/// Where one delivery (one subscription, one event) stands.
///
/// Stored as an integer: 0 pending, 1 delivered, 2 parked. The partial index
/// `deliveries_waiting ... WHERE state <> 1` and the queries that must match
/// it spell `1` (delivered) as a literal; see `schema.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryState {
    /// Waiting to be sent (or retried).
    Pending,
    /// Got its 2xx.
    Delivered,
    /// Gave up after `retry.give_up_after`; blocks its entity until resent.
    Parked,
}

impl DeliveryState {
    /// Every state, in the order of their stored values.
    pub const ALL: [DeliveryState; 3] = [DeliveryState::Pending, DeliveryState::Delivered, DeliveryState::Parked];

    /// The value in `deliveries.state`.
    pub const fn code(self) -> i64 {
        match self {
            DeliveryState::Pending => 0,
            DeliveryState::Delivered => 1,
            DeliveryState::Parked => 2,
        }
    }

    /// The state stored as `code`, if any.
    pub fn from_code(code: i64) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.code() == code)
    }

    /// The name people read and filters use: pending, delivered, parked.
    pub const fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Parked => "parked",
        }
    }
}

/// What a subscription is doing, as `status` shows it.
///
/// Stored as text (`subscriptions.state`), its name. New states (e.g. one for
/// an endpoint that answers 410 Gone) are a new variant here, with its name in
/// [`SubscriptionState::as_str`] and [`SubscriptionState::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SubscriptionState {
    /// The endpoint answers; deliveries flow.
    Online,
    /// The endpoint does not answer; one probe at a time at the backoff pace.
    Offline,
    /// Configured, but no agent is running (never stored: `status` says it).
    Stopped,
    /// In the database but no longer in the config.
    Unconfigured,
    /// The endpoint answered 410 Gone: nothing is sent (nothing dropped or
    /// parked either) until the config changes or `store-outbox resume`.
    Gone,
}

impl SubscriptionState {
    /// Every state.
    pub const ALL: [SubscriptionState; 5] = [
        SubscriptionState::Online,
        SubscriptionState::Offline,
        SubscriptionState::Stopped,
        SubscriptionState::Unconfigured,
        SubscriptionState::Gone,
    ];

    /// Its name, as stored and shown: online, offline, stopped, unconfigured, gone.
    pub const fn as_str(self) -> &'static str {
        match self {
            SubscriptionState::Online => "online",
            SubscriptionState::Offline => "offline",
            SubscriptionState::Stopped => "stopped",
            SubscriptionState::Unconfigured => "unconfigured",
            SubscriptionState::Gone => "gone",
        }
    }
}

/// How a subscription's request concurrency is set (`concurrency` in its
/// config): stored as text (`subscriptions.concurrency`), its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConcurrencyMode {
    /// Always up to `max_in_flight` (the default).
    Fixed,
    /// Adapts between 1 and `max_in_flight` (AIMD).
    Adaptive,
}

impl ConcurrencyMode {
    /// Its name, as stored, configured and shown: fixed, adaptive.
    pub const fn as_str(self) -> &'static str {
        match self {
            ConcurrencyMode::Fixed => "fixed",
            ConcurrencyMode::Adaptive => "adaptive",
        }
    }

    /// The mode of a subscription configured with `adaptive_concurrency`.
    pub const fn of(adaptive: bool) -> Self {
        if adaptive {
            ConcurrencyMode::Adaptive
        } else {
            ConcurrencyMode::Fixed
        }
    }
}

/// What a running scheduler reports of its request concurrency, for
/// `status`: written with its state, cleared (`NULL`) when it stops, so
/// `None` means "not running" (or not known).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConcurrencyState {
    /// Fixed or adaptive.
    pub mode: ConcurrencyMode,
    /// Requests it may keep on the wire now (fixed: `max_in_flight`).
    pub limit: i64,
    /// `max_in_flight`, as the scheduler runs with it (a reload may have
    /// changed the file since the agent started).
    pub max_in_flight: i64,
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so tables can align it (`{:<9}`).
        f.pad(self.as_str())
    }
}

impl fmt::Display for SubscriptionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl fmt::Display for ConcurrencyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for DeliveryState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState::new(s, "delivery", &Self::ALL.map(Self::as_str)))
    }
}

impl FromStr for SubscriptionState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState::new(s, "subscription", &Self::ALL.map(Self::as_str)))
    }
}

impl Serialize for DeliveryState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl Serialize for SubscriptionState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl FromStr for ConcurrencyMode {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [ConcurrencyMode::Fixed, ConcurrencyMode::Adaptive]
            .into_iter()
            .find(|mode| mode.as_str() == s)
            .ok_or_else(|| UnknownState::new(s, "concurrency", &["fixed", "adaptive"]))
    }
}

impl Serialize for ConcurrencyMode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl ToSql for ConcurrencyMode {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for ConcurrencyMode {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value
            .as_str()?
            .parse()
            .map_err(|e: UnknownState| FromSqlError::Other(Box::new(e)))
    }
}

impl ToSql for DeliveryState {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.code()))
    }
}

impl FromSql for DeliveryState {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let code = i64::column_result(value)?;
        DeliveryState::from_code(code).ok_or(FromSqlError::OutOfRange(code))
    }
}

impl ToSql for SubscriptionState {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for SubscriptionState {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value
            .as_str()?
            .parse()
            .map_err(|e: UnknownState| FromSqlError::Other(Box::new(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    #[test]
    fn delivery_states_keep_their_stored_codes() {
        // The database's values: changing one would misread every file.
        let codes: Vec<i64> = DeliveryState::ALL.iter().map(|s| s.code()).collect();
        assert_eq!(codes, [0, 1, 2]);
        let conn = Connection::open_in_memory().expect("db");
        for state in DeliveryState::ALL {
            let back: DeliveryState = conn.query_row("SELECT ?1", [state], |r| r.get(0)).expect("round trip");
            assert_eq!(back, state);
            assert_eq!(state.as_str().parse::<DeliveryState>(), Ok(state));
        }
        let bad = conn.query_row("SELECT 7", [], |r| r.get::<_, DeliveryState>(0));
        assert!(bad.is_err(), "{bad:?}");
    }

    #[test]
    fn subscription_states_are_stored_by_name() {
        let conn = Connection::open_in_memory().expect("db");
        for state in SubscriptionState::ALL {
            let text: String = conn.query_row("SELECT ?1", [state], |r| r.get(0)).expect("to text");
            assert_eq!(text, state.as_str());
            let back: SubscriptionState = conn.query_row("SELECT ?1", [text], |r| r.get(0)).expect("from text");
            assert_eq!(back, state);
        }
        let bad = conn.query_row("SELECT 'sleeping'", [], |r| r.get::<_, SubscriptionState>(0));
        assert!(bad.is_err(), "{bad:?}");
    }

    #[test]
    fn concurrency_modes_are_stored_by_name() {
        let conn = Connection::open_in_memory().expect("db");
        for mode in [ConcurrencyMode::Fixed, ConcurrencyMode::Adaptive] {
            let text: String = conn.query_row("SELECT ?1", [mode], |r| r.get(0)).expect("to text");
            assert_eq!(text, mode.as_str());
            let back: ConcurrencyMode = conn.query_row("SELECT ?1", [text], |r| r.get(0)).expect("from text");
            assert_eq!(back, mode);
        }
        assert_eq!(ConcurrencyMode::of(true), ConcurrencyMode::Adaptive);
        assert_eq!(ConcurrencyMode::of(false), ConcurrencyMode::Fixed);
        let bad = conn.query_row("SELECT 'turbo'", [], |r| r.get::<_, ConcurrencyMode>(0));
        assert!(bad.is_err(), "{bad:?}");
    }

    #[test]
    fn an_unknown_filter_names_the_accepted_states() {
        let err = "lost".parse::<DeliveryState>().expect_err("not a state");
        assert_eq!(
            err.to_string(),
            "\"lost\" is not a delivery state: give pending, delivered or parked"
        );
        let err = "up".parse::<SubscriptionState>().expect_err("not a state");
        assert_eq!(
            err.to_string(),
            "\"up\" is not a subscription state: give online, offline, stopped, unconfigured or gone"
        );
    }

    #[test]
    fn names_align_in_tables_and_serialize_as_text() {
        assert_eq!(format!("[{:<9}]", DeliveryState::Parked), "[parked   ]");
        assert_eq!(format!("[{:<8}]", SubscriptionState::Online), "[online  ]");
        assert_eq!(
            serde_json::to_string(&(DeliveryState::Pending, SubscriptionState::Offline)).expect("json"),
            r#"["pending","offline"]"#
        );
    }
}
