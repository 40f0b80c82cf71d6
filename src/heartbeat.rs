//! The agent's own heartbeat (`[agent] heartbeat`; not the watchdog's
//! liveness heartbeats of `notify`): an `AgentHeartbeat`
//! event enqueued in the outbox on a period and whenever a subscription
//! changes state, so central IT sees every store's health through the same
//! delivery path as its business events (`store-outbox fleet` reads them back
//! from a NATS stream).
//!
//! Owns: what a heartbeat says ([`Heartbeat`]), when one is due
//! ([`Watch`]), and the task that enqueues them ([`run`]). Superseding, the
//! one exception to "never dropped", is the writer's
//! (`Writer::ingest_heartbeat`): an undelivered heartbeat is dropped once a
//! newer one of the same agent is stored, so an outage does not pile them up.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::Config;
use crate::event::{NewEvent, Reply};
use crate::outbox::report::SubscriptionStatus;
use crate::outbox::state::SubscriptionState;
use crate::outbox::writer::Writer;
use crate::shutdown::Shutdown;

/// The event type of the agent's heartbeats. Subscriptions get them only
/// when their `events` list names this type (`"*"` alone does not).
pub const EVENT_TYPE: &str = crate::event::HEARTBEAT_TYPE;

/// How often the task looks for a change of state between periods.
const CHANGE_CHECK: Duration = Duration::from_secs(2);

/// The database counts as near full from this share of `max_db_bytes`.
const NEAR_FULL: f64 = 0.9;

/// The entity of an agent's heartbeats: `agent:<agent_id>`.
pub fn entity(agent_id: &str) -> String {
    format!("{}{agent_id}", crate::event::AGENT_ENTITY_PREFIX)
}

/// The payload of an `AgentHeartbeat` event.
#[derive(Debug, Clone, Serialize)]
pub struct Heartbeat {
    /// Agent version.
    pub version: String,
    /// `agent.store_id`.
    pub store_id: String,
    /// `agent.agent_id`.
    pub agent_id: String,
    /// `agent.heartbeat` in seconds: a reader flags an agent as stale after
    /// three periods without a heartbeat.
    pub period_s: u64,
    /// Why this one was sent: `start`, `period` or `change`.
    pub reason: String,
    /// For `change`: what changed, e.g. `"erp: online -> offline"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
    /// Seconds since the agent started.
    pub uptime_s: i64,
    /// The database.
    pub db: HeartbeatDb,
    /// Every configured subscription, with its `status` fields.
    pub subscriptions: Vec<SubscriptionStatus>,
}

/// Database figures in a heartbeat.
#[derive(Debug, Clone, Serialize)]
pub struct HeartbeatDb {
    /// Bytes in use.
    pub bytes: u64,
    /// `storage.max_db_bytes`.
    pub max_bytes: u64,
    /// New events are refused (at the cap, or the disk is full).
    pub full: bool,
    /// Free bytes on the filesystem holding the database.
    pub disk_free_bytes: Option<u64>,
}

/// What a heartbeat watches between periods: per configured subscription
/// its state and whether it has parked deliveries, and whether storage is
/// near full.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Signals {
    /// Per subscription name: (state, has parked deliveries).
    pub subscriptions: BTreeMap<String, (SubscriptionState, bool)>,
    /// At 90% of `max_db_bytes` or more, or the disk is full.
    pub storage_near_full: bool,
}

impl Signals {
    /// What changed from `before` to `self`, in words; empty when nothing.
    pub fn changes_since(&self, before: &Signals) -> Vec<String> {
        let mut changes = Vec::new();
        for (name, (state, parked)) in &self.subscriptions {
            match before.subscriptions.get(name) {
                None => changes.push(format!("{name}: {state}")),
                Some((was, was_parked)) => {
                    if was != state {
                        changes.push(format!("{name}: {was} -> {state}"));
                    }
                    if *parked && !was_parked {
                        changes.push(format!("{name}: parked deliveries"));
                    } else if !parked && *was_parked {
                        changes.push(format!("{name}: no parked deliveries"));
                    }
                }
            }
        }
        for name in before.subscriptions.keys() {
            if !self.subscriptions.contains_key(name) {
                changes.push(format!("{name}: removed"));
            }
        }
        if self.storage_near_full != before.storage_near_full {
            changes.push(if self.storage_near_full {
                "storage near full".to_string()
            } else {
                "storage has room".to_string()
            });
        }
        changes
    }
}

/// When the next heartbeat is due: the first at start, then one a period
/// after the last one stored, and one at every change of [`Signals`].
#[derive(Debug)]
pub struct Watch {
    /// `agent.heartbeat`.
    period: Duration,
    /// When the last heartbeat was stored.
    last_sent: Option<Instant>,
    /// The signals it reported.
    last_signals: Option<Signals>,
}

impl Watch {
    /// A watch for heartbeats every `period`.
    pub fn new(period: Duration) -> Self {
        Watch {
            period,
            last_sent: None,
            last_signals: None,
        }
    }

    /// Whether a heartbeat is due now given the current signals, and why
    /// (`start`, `period`, or `change` with what changed).
    pub fn due(&self, signals: &Signals, now: Instant) -> Option<(&'static str, Vec<String>)> {
        let (Some(sent), Some(before)) = (self.last_sent, &self.last_signals) else {
            return Some(("start", Vec::new()));
        };
        let changes = signals.changes_since(before);
        if !changes.is_empty() {
            return Some(("change", changes));
        }
        (now.saturating_duration_since(sent) >= self.period).then(|| ("period", Vec::new()))
    }

    /// Notes a heartbeat stored at `now` with these signals.
    pub fn sent(&mut self, signals: Signals, now: Instant) {
        self.last_sent = Some(now);
        self.last_signals = Some(signals);
    }

    /// How long to sleep before looking again.
    pub fn check_every(&self) -> Duration {
        self.period.min(CHANGE_CHECK)
    }
}

/// Reads the current [`Signals`] (cheap: no counting).
pub fn read_signals(config: &Config) -> Result<Signals, String> {
    let db_path = config.db_path();
    let conn = crate::outbox::open_reader(&db_path).map_err(|e| e.to_string())?;
    let rows = crate::outbox::read::subscription_signals(&conn).map_err(|e| e.to_string())?;
    let bytes = crate::outbox::read::used_bytes(&conn).map_err(|e| e.to_string())?;
    let near_full =
        bytes as f64 >= config.storage.max_db_bytes as f64 * NEAR_FULL || crate::outbox::disk_full(&db_path);
    Ok(Signals {
        subscriptions: rows
            .into_iter()
            .map(|(name, state, parked)| (name, (state, parked)))
            .collect(),
        storage_near_full: near_full,
    })
}

/// Builds the heartbeat event from the status report.
pub fn build(config: &Config, period: Duration, reason: &str, changes: Vec<String>) -> Result<NewEvent, String> {
    let report = crate::status::report_with(config, true)?;
    let heartbeat = Heartbeat {
        version: report.version,
        store_id: report.store_id,
        agent_id: report.agent_id,
        period_s: period.as_secs(),
        reason: reason.to_string(),
        changes,
        uptime_s: report.uptime_s.unwrap_or(0),
        db: HeartbeatDb {
            bytes: report.db.bytes,
            max_bytes: report.db.max_bytes,
            full: report.db.full,
            disk_free_bytes: crate::outbox::disk_free_bytes(&config.db_path()),
        },
        subscriptions: report.subscriptions.into_iter().filter(|s| s.configured).collect(),
    };
    let payload = serde_json::to_string(&heartbeat).map_err(|e| e.to_string())?;
    Ok(NewEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        event_type: EVENT_TYPE.to_string(),
        entity: entity(&config.agent.agent_id),
        occurred_at: crate::event::now_rfc3339(),
        correlation_id: None,
        is_test: false,
        attributes: None,
        payload,
    })
}

/// Enqueues heartbeats until shutdown (nothing when `agent.heartbeat` is
/// off). A heartbeat the writer cannot store (storage full, say) is logged
/// and tried again at the next check.
pub async fn run(config: Arc<Config>, writer: Writer, mut shutdown: Shutdown) {
    let Some(period) = config.agent.heartbeat else {
        return;
    };
    let mut watch = Watch::new(period);
    loop {
        let cfg = config.clone();
        let read = tokio::task::spawn_blocking(move || {
            let signals = read_signals(&cfg)?;
            Ok::<_, String>(signals)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        match read {
            Ok(signals) => {
                if let Some((reason, changes)) = watch.due(&signals, Instant::now()) {
                    if enqueue(&config, &writer, period, reason, changes).await {
                        watch.sent(signals, Instant::now());
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat: cannot read the outbox"),
        }
        tokio::select! {
            _ = tokio::time::sleep(watch.check_every()) => {}
            _ = shutdown.wait() => return,
        }
    }
}

/// Builds and stores one heartbeat; true once committed.
async fn enqueue(
    config: &Arc<Config>,
    writer: &Writer,
    period: Duration,
    reason: &'static str,
    changes: Vec<String>,
) -> bool {
    let cfg = config.clone();
    let built = tokio::task::spawn_blocking(move || build(&cfg, period, reason, changes))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
    let event = match built {
        Ok(event) => event,
        Err(e) => {
            tracing::warn!(error = %e, "heartbeat: cannot read the status");
            return false;
        }
    };
    match writer.ingest_heartbeat(event).await {
        Reply::Accepted { .. } => {
            tracing::debug!(reason, "heartbeat stored");
            true
        }
        Reply::Rejected(e) => {
            tracing::warn!(error = %e.message, "heartbeat not stored; trying again");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signals(subs: &[(&str, SubscriptionState, bool)], near_full: bool) -> Signals {
        Signals {
            subscriptions: subs.iter().map(|(n, s, p)| (n.to_string(), (*s, *p))).collect(),
            storage_near_full: near_full,
        }
    }

    #[test]
    fn the_first_is_due_at_start_then_after_a_period() {
        let t0 = Instant::now();
        let mut w = Watch::new(Duration::from_secs(300));
        let s = signals(&[("erp", SubscriptionState::Online, false)], false);
        assert_eq!(w.due(&s, t0).map(|d| d.0), Some("start"));
        w.sent(s.clone(), t0);
        assert_eq!(w.due(&s, t0 + Duration::from_secs(299)), None);
        assert_eq!(w.due(&s, t0 + Duration::from_secs(300)).map(|d| d.0), Some("period"));
    }

    #[test]
    fn a_change_of_state_parked_or_storage_is_due_at_once_and_says_what() {
        let t0 = Instant::now();
        let mut w = Watch::new(Duration::from_secs(300));
        let before = signals(
            &[
                ("erp", SubscriptionState::Online, false),
                ("oms", SubscriptionState::Online, false),
            ],
            false,
        );
        w.sent(before, t0);
        let after = signals(
            &[
                ("erp", SubscriptionState::Offline, false),
                ("oms", SubscriptionState::Online, true),
            ],
            true,
        );
        let (reason, changes) = w.due(&after, t0 + Duration::from_secs(1)).expect("due");
        assert_eq!(reason, "change");
        assert_eq!(
            changes,
            vec!["erp: online -> offline", "oms: parked deliveries", "storage near full"]
        );
    }

    #[test]
    fn added_and_removed_subscriptions_are_changes() {
        let before = signals(&[("erp", SubscriptionState::Online, false)], false);
        let after = signals(&[("bus", SubscriptionState::Online, false)], false);
        assert_eq!(after.changes_since(&before), vec!["bus: online", "erp: removed"]);
    }

    #[test]
    fn checks_at_most_every_two_seconds_or_the_period() {
        assert_eq!(Watch::new(Duration::from_secs(300)).check_every(), CHANGE_CHECK);
        assert_eq!(Watch::new(Duration::from_secs(1)).check_every(), Duration::from_secs(1));
    }
}
