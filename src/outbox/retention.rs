//! Retention and the storage cap: prunes delivered events in small batches
//! (one short transaction each, so ingest interleaves), never an undelivered one.
//!
//! Every minute, delivered events older than `storage.retain_delivered` go.
//! When the database nears `storage.max_db_bytes` (90%), or the writer had to
//! refuse an event or ran out of its turn's pruning budget, delivered events
//! go oldest first whatever their age. At the cap itself the writer does not
//! wait for this task: it deletes delivered events in its own turn, before
//! the batch (`WriterState::make_room`), and refuses with `storage_full` only
//! when nothing delivered is left. Freed pages are reused by SQLite, so
//! "used bytes" drop at once without a VACUUM.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::writer::Writer;
use super::{now_ms, read};
use crate::shutdown::Shutdown;

/// Events deleted per transaction.
const BATCH: usize = 500;
/// Regular pruning period.
const EVERY: Duration = Duration::from_secs(60);
/// Share of the cap above which delivered events are pruned whatever their age.
const HIGH_WATER: f64 = 0.9;

/// The pruner task.
pub struct Retention {
    /// Where deletions are committed.
    pub writer: Writer,
    /// For size readings.
    pub db_path: PathBuf,
    /// `storage.retain_delivered`.
    pub retain: Duration,
    /// `storage.max_db_bytes`.
    pub max_db_bytes: u64,
    /// Woken by the writer when it refuses for lack of space.
    pub wake: Arc<Notify>,
    /// Stop signal.
    pub shutdown: Shutdown,
}

impl Retention {
    /// Prunes until shutdown.
    pub async fn run(self) {
        let mut tick = tokio::time::interval(EVERY);
        let mut shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.wake.notified() => {}
                _ = shutdown.wait() => return,
            }
            self.prune_once().await;
        }
    }

    async fn drain(&self, older_than_ms: Option<i64>, mut keep_going: impl FnMut() -> bool) -> usize {
        let mut total = 0;
        while !self.shutdown.is_started() && keep_going() {
            let n = self.writer.prune(older_than_ms, BATCH).await;
            total += n;
            if n < BATCH {
                break;
            }
            tokio::task::yield_now().await;
        }
        total
    }

    /// One round: past retention, then by age while above the high-water mark.
    pub async fn prune_once(&self) {
        // Saturating: a retention longer than the clock's age keeps everything.
        let retain_ms = i64::try_from(self.retain.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_ms().saturating_sub(retain_ms);
        let expired = self.drain(Some(cutoff), || true).await;
        if expired > 0 {
            tracing::info!(
                events = expired,
                "pruned delivered events past storage.retain_delivered"
            );
        }
        let high = (self.max_db_bytes as f64 * HIGH_WATER) as u64;
        // A fresh read connection per look: a connection must not be held
        // across the awaits of this task.
        let db_path = self.db_path.clone();
        let over = move || {
            super::open_reader(&db_path)
                .ok()
                .and_then(|c| read::used_bytes(&c).ok())
                .is_some_and(|used| used > high)
        };
        if over() {
            let early = self.drain(None, over).await;
            if early > 0 {
                tracing::warn!(
                    events = early,
                    "outbox near storage.max_db_bytes: pruned delivered events before retain_delivered"
                );
            }
        }
    }
}
