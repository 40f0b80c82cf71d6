//! The history sampler: per subscription, one sample a minute of its
//! backlog, its delivery and ingest counters and how long it was offline.
//! The task takes the samples on a read connection and stores them through
//! the writer (the single writer). The table, its SQL and the read-back
//! for `/v1/history` and the page's charts are the outbox's
//! ([`crate::outbox::history`]).
//!
//! The sample period is a minute. `STORE_OUTBOX_HISTORY_PERIOD` (a
//! duration, e.g. `1s`) shortens it; it exists for the tests, which cannot
//! wait minutes, and is not a setting: retention stays 1,440 periods.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::outbox::history::{figures, subscription_states, Sample, KEPT_PERIODS};
use crate::outbox::state::SubscriptionState;
use crate::outbox::writer::Writer;
use crate::outbox::{self, now_ms};
use crate::shutdown::Shutdown;

/// The environment variable that shortens the sample period (tests only).
pub const PERIOD_ENV: &str = "STORE_OUTBOX_HISTORY_PERIOD";

/// The sample period: a minute, unless [`PERIOD_ENV`] says otherwise (at
/// least 100 ms).
pub fn period() -> Duration {
    std::env::var(PERIOD_ENV)
        .ok()
        .and_then(|text| crate::timefmt::parse_duration(&text).ok())
        .map(|d| d.max(Duration::from_millis(100)))
        .unwrap_or(Duration::from_secs(60))
}

/// Polls per period for the offline time (at most every 5 s).
const POLLS_PER_PERIOD: u32 = 12;

/// The sampler task: polls each subscription's state to count offline
/// time, and at the end of every period stores one sample per configured
/// subscription through the writer. Stops on shutdown.
pub struct Sampler {
    /// The outbox (read connection of its own).
    pub db_path: PathBuf,
    /// Where samples are stored.
    pub writer: Writer,
    /// The sample period.
    pub period: Duration,
    /// The stop signal.
    pub shutdown: Shutdown,
}

impl Sampler {
    /// Runs until shutdown.
    pub async fn run(mut self) {
        let period_ms = self.period.as_millis().max(1) as i64;
        let poll = (self.period / POLLS_PER_PERIOD).min(Duration::from_secs(5));
        let mut ticks = tokio::time::interval(poll);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut offline_ms: HashMap<i64, i64> = HashMap::new();
        let mut bucket = now_ms().div_euclid(period_ms);
        let mut last_poll = tokio::time::Instant::now();
        let mut warned = false;
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = self.shutdown.wait() => return,
            }
            // Offline time is measured on the monotonic clock; only the
            // sample's place in time comes from the wall clock.
            let elapsed = last_poll.elapsed().as_millis() as i64;
            last_poll = tokio::time::Instant::now();
            let now = now_ms();
            let path = self.db_path.clone();
            let now_bucket = now.div_euclid(period_ms);
            let closing = now_bucket != bucket;
            let read = tokio::task::spawn_blocking(move || -> Result<_, String> {
                let conn = outbox::open_reader(&path).map_err(|e| e.to_string())?;
                let states = subscription_states(&conn).map_err(|e| e.to_string())?;
                let figures = if closing {
                    Some(figures(&conn).map_err(|e| e.to_string())?)
                } else {
                    None
                };
                Ok((states, figures))
            })
            .await;
            let (states, figures) = match read {
                Ok(Ok(read)) => read,
                Ok(Err(e)) => {
                    if !warned {
                        tracing::warn!(error = %e, "history: cannot read the outbox; no samples until it can");
                        warned = true;
                    }
                    continue;
                }
                Err(_) => continue,
            };
            warned = false;
            for (sub_id, state) in states {
                if state == SubscriptionState::Offline {
                    *offline_ms.entry(sub_id).or_insert(0) += elapsed;
                }
            }
            let Some(figures) = figures else {
                continue;
            };
            let at_ms = bucket * period_ms;
            let samples = figures
                .into_iter()
                .map(|f| Sample {
                    sub_id: f.sub_id,
                    at_ms,
                    period_ms,
                    pending: f.pending,
                    parked: f.parked,
                    delivered_total: f.delivered_total,
                    ingested_total: f.ingested_total,
                    offline_ms: offline_ms.get(&f.sub_id).copied().unwrap_or(0).min(period_ms),
                })
                .collect();
            offline_ms.clear();
            bucket = now_bucket;
            let keep_from_ms = (now_bucket - KEPT_PERIODS) * period_ms;
            if !self.writer.record_history(samples, keep_from_ms).await {
                return;
            }
        }
    }
}
