//! systemd integration (`Type=notify`): `READY=1` once the database is open
//! and every listener is bound, `STATUS=` lines with the backlog,
//! `WATCHDOG=1` only while the writer commits and every scheduler loops,
//! `RELOADING=1` then `READY=1` around a reload, and `STOPPING=1` on
//! shutdown. Without `NOTIFY_SOCKET` (not under systemd) every call is a
//! no-op.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::time::Instant;

use crate::outbox::state::SubscriptionState;
use crate::outbox::writer::Writer;
use crate::shutdown::Shutdown;

/// How often `STATUS=` is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(10);
/// A scheduler whose loop has not turned for this long is stuck.
const SCHEDULER_STALE_MS: i64 = 30_000;

/// A loop's "I am alive" stamp: when it last turned, on the monotonic clock
/// (ARCHITECTURE invariant 9). A wall-clock step (NTP, a person fixing the
/// time) must neither hide a stuck loop nor make a live one look stuck, which
/// would skip a watchdog ping and get the agent killed.
#[derive(Clone)]
pub struct Heartbeat(Arc<Stamp>);

/// The shared state of a [`Heartbeat`].
struct Stamp {
    /// What the stamps count from: when the heartbeat was made.
    base: Instant,
    /// Milliseconds after `base` of the last beat; [`NEVER`] before the first.
    last_ms: AtomicI64,
}

/// `Stamp::last_ms` of a loop that never turned.
const NEVER: i64 = i64::MIN;

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat(Arc::new(Stamp {
            base: Instant::now(),
            last_ms: AtomicI64::new(NEVER),
        }))
    }
}

impl Heartbeat {
    /// Marks the loop as alive now.
    pub fn beat(&self) {
        self.beat_at(Instant::now());
    }
    fn beat_at(&self, at: Instant) {
        self.0.last_ms.store(self.ms_after_base(at), Ordering::Relaxed);
    }
    /// Milliseconds since the last beat (`i64::MAX` if it never beat).
    fn age_ms(&self) -> i64 {
        self.age_ms_at(Instant::now())
    }
    fn age_ms_at(&self, now: Instant) -> i64 {
        match self.0.last_ms.load(Ordering::Relaxed) {
            NEVER => i64::MAX,
            last => self.ms_after_base(now).saturating_sub(last),
        }
    }
    fn ms_after_base(&self, at: Instant) -> i64 {
        i64::try_from(at.saturating_duration_since(self.0.base).as_millis()).unwrap_or(i64::MAX)
    }
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Tells systemd the agent is ready.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd the agent is alive but still waiting before it can be ready
/// (a full disk at start): a status line, and more start time than
/// `TimeoutStartSec=` so it is not killed and restarted into its start limit.
pub fn waiting(status: &str, for_at_least: std::time::Duration) {
    let usec = u32::try_from(for_at_least.as_micros()).unwrap_or(u32::MAX);
    send(&[
        NotifyState::Status(status),
        NotifyState::ExtendTimeoutUsec(usec),
        NotifyState::Watchdog,
    ]);
}

/// Tells systemd the agent is stopping.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Tells systemd a reload began (`RELOADING=1` with the monotonic time, as
/// systemd 253 and later require).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now, NotifyState::Status("reloading the config")]),
        Err(_) => send(&[NotifyState::Reloading, NotifyState::Status("reloading the config")]),
    }
}

/// The heartbeats of the running schedulers, by subscription: a reload
/// adds and removes schedulers while the supervisor reads them.
#[derive(Clone, Default)]
pub struct Heartbeats(Arc<Mutex<Vec<(String, Heartbeat)>>>);

impl Heartbeats {
    /// Watches the scheduler of `name` (replacing one of the same name).
    pub fn insert(&self, name: &str, beat: Heartbeat) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|(n, _)| n != name);
        all.push((name.to_string(), beat));
    }

    /// Stops watching the scheduler of `name`: it is stopping on purpose,
    /// and may take its time with requests in flight.
    pub fn remove(&self, name: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(n, _)| n != name);
    }

    /// The first scheduler whose loop has not turned for too long.
    fn stuck(&self) -> Option<String> {
        let all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        all.iter()
            .find(|(_, beat)| beat.age_ms() > SCHEDULER_STALE_MS)
            .map(|(name, _)| name.clone())
    }
}

/// Status lines and the watchdog, until shutdown.
pub struct Supervisor {
    /// Pinged: a committed write proves the writer and the disk work.
    pub writer: Writer,
    /// One per running scheduler.
    pub heartbeats: Heartbeats,
    /// For the backlog figure.
    pub db_path: PathBuf,
    /// Stop signal.
    pub shutdown: Shutdown,
}

impl Supervisor {
    /// Runs until shutdown.
    pub async fn run(self) {
        let watchdog = watchdog_interval().map(|d| d / 2);
        let mut pet = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
        let mut status = tokio::time::interval(STATUS_EVERY);
        let mut shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                _ = pet.tick(), if watchdog.is_some() => {
                    if self.alive().await {
                        send(&[NotifyState::Watchdog]);
                    }
                }
                _ = status.tick() => {
                    let path = self.db_path.clone();
                    let line = tokio::task::spawn_blocking(move || status_line(&path)).await.unwrap_or_default();
                    send(&[NotifyState::Status(&line)]);
                }
                _ = shutdown.wait() => return,
            }
        }
    }

    /// The writer commits and every scheduler turned recently.
    async fn alive(&self) -> bool {
        if !tokio::time::timeout(Duration::from_secs(5), self.writer.ping())
            .await
            .unwrap_or(false)
        {
            tracing::error!("watchdog: the outbox writer did not commit in time; not petting the watchdog");
            return false;
        }
        if let Some(name) = self.heartbeats.stuck() {
            tracing::error!(subscription = %name, "watchdog: the scheduler is stuck; not petting the watchdog");
            return false;
        }
        true
    }
}

/// The watchdog timeout systemd asks for, as libsystemd's
/// `sd_watchdog_enabled` reads it: `WATCHDOG_USEC`, and `WATCHDOG_PID` only
/// when set (then it must be us).
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok().filter(|u| *u > 0)?;
    match std::env::var("WATCHDOG_PID") {
        Ok(pid) if pid.parse::<u32>().ok() != Some(std::process::id()) => None,
        _ => Some(Duration::from_micros(usec)),
    }
}

/// "backlog 12 (erp offline)" for `systemctl status`.
pub fn status_line(db_path: &std::path::Path) -> String {
    let Ok(conn) = crate::outbox::open_reader(db_path) else {
        return "running".into();
    };
    let Ok(subs) = crate::outbox::read::subscriptions(&conn) else {
        return "running".into();
    };
    let backlog: i64 = subs.iter().map(|s| s.pending + s.parked).sum();
    let offline: Vec<&str> = subs
        .iter()
        .filter(|s| s.state == SubscriptionState::Offline)
        .map(|s| s.name.as_str())
        .collect();
    let parked: i64 = subs.iter().map(|s| s.parked).sum();
    let mut line = format!("backlog {backlog}");
    if parked > 0 {
        line += &format!(", {parked} parked");
    }
    if !offline.is_empty() {
        line += &format!(", offline: {}", offline.join(", "));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_ages_on_the_monotonic_clock() {
        let beat = Heartbeat::default();
        assert!(
            beat.age_ms() > SCHEDULER_STALE_MS,
            "a loop that never turned counts as stuck"
        );
        let t0 = Instant::now();
        beat.beat_at(t0);
        // The age is monotonic time since the beat: what the wall clock does
        // meanwhile (an NTP step of minutes) neither hides a stuck loop nor
        // makes a live one look stuck and skip a watchdog ping.
        assert_eq!(beat.age_ms_at(t0 + Duration::from_secs(10)), 10_000);
        assert!(beat.age_ms_at(t0 + Duration::from_secs(31)) > SCHEDULER_STALE_MS);
        beat.beat_at(t0 + Duration::from_secs(40));
        assert_eq!(beat.age_ms_at(t0 + Duration::from_secs(41)), 1_000);
        beat.beat();
        assert!(beat.age_ms() < SCHEDULER_STALE_MS);
    }
}
