//! The running deliveries: one scheduler per configured subscription, each
//! with the destination its URL names, started at start-up, replaced on a
//! reload (the changed and removed ones stop once their requests in flight
//! are recorded, then the writer takes the new list, then the new ones
//! start), and stopped at shutdown.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::anyhow;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::deliver::destinations::{self, Built, SchedulerParts};
use crate::deliver::envelope::Source;
use crate::metrics::Metrics;
use crate::notify::Heartbeats;
use crate::outbox::{self, writer::Writer};
use crate::reload;
use crate::shutdown::{Shutdown, Trigger};

use super::SHUTDOWN_GRACE;

/// The schedulers, one per configured subscription, and what starts and
/// stops them: at start, on a reload, at shutdown.
pub(super) struct Deliveries {
    /// The config the agent runs on: as read at start, with the
    /// subscriptions of the last applied reload.
    pub(super) config: Config,
    /// Store and agent in every body (as at start: a restart-only key).
    pub(super) source: Source,
    /// The database file (each scheduler opens its read connection).
    pub(super) db_path: PathBuf,
    /// The single writer.
    pub(super) writer: Writer,
    /// In-memory delivery metrics.
    pub(super) metrics: Metrics,
    /// The agent's stop signal.
    pub(super) shutdown: Shutdown,
    /// What the watchdog checks: the running schedulers' heartbeats.
    pub(super) heartbeats: Heartbeats,
    /// The running schedulers, in the config's order.
    pub(super) running: Vec<RunningScheduler>,
}

/// One running scheduler.
pub(super) struct RunningScheduler {
    /// Its subscription (row id, settings, inbox).
    sub: outbox::Subscription,
    /// Stops it alone (a reload); the agent's shutdown stops it too.
    stop: Trigger,
    /// Ends once its requests in flight are recorded (or given up at
    /// shutdown).
    task: JoinHandle<()>,
}

impl Deliveries {
    /// Starts the scheduler of `sub` on its own read connection.
    pub(super) fn start(&mut self, sub: outbox::Subscription, built: Built) -> anyhow::Result<()> {
        let (stop, shutdown) = self.shutdown.with_own_stop();
        let started = built.start(SchedulerParts {
            sub: sub.clone(),
            writer: self.writer.clone(),
            reader: outbox::open_reader(&self.db_path)?,
            shutdown,
            grace: SHUTDOWN_GRACE,
            metrics: self.metrics.clone(),
        });
        self.heartbeats.insert(&sub.config.name, started.heartbeat);
        let task = tokio::spawn(started.run);
        self.running.push(RunningScheduler { sub, stop, task });
        Ok(())
    }

    /// Stops the schedulers `which` picks and waits until each ended: its
    /// requests in flight answered and their outcomes committed. Returns
    /// their subscriptions.
    pub(super) async fn stop(&mut self, which: impl Fn(&str) -> bool) -> Vec<outbox::Subscription> {
        let (stopping, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|r| which(&r.sub.config.name));
        self.running = kept;
        for r in &stopping {
            // Not watched while it finishes its requests (up to its timeout).
            self.heartbeats.remove(&r.sub.config.name);
            r.stop.fire();
        }
        let mut subs = Vec::with_capacity(stopping.len());
        for r in stopping {
            if let Err(e) = r.task.await {
                tracing::error!(subscription = %r.sub.config.name, error = %e, "the scheduler failed");
            }
            subs.push(r.sub);
        }
        subs
    }

    /// Applies reloads until shutdown, then waits for every scheduler.
    pub(super) async fn run(mut self, mut reloads: reload::Requests) {
        let mut shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                _ = reloads.next() => self.reload().await,
                _ = shutdown.wait() => break,
            }
        }
        self.stop(|_| true).await;
    }

    /// Re-reads the config file and applies it (see the module doc); a
    /// config that does not validate, or a subscription that cannot be
    /// built, leaves everything as it was. The outcome goes to the log, to
    /// systemd and to `status` (a failure, until a reload or start works).
    pub(super) async fn reload(&mut self) {
        crate::notify::reloading();
        tracing::info!("reloading the config file");
        let (meta, ok) = match self.try_reload().await {
            Ok(()) => (
                vec![(outbox::META_RELOAD_FAILED_AT, None), (outbox::META_RELOAD_ERROR, None)],
                true,
            ),
            Err(error) => {
                tracing::error!(%error, "config reload failed: the agent runs on as before");
                (
                    vec![
                        (outbox::META_RELOAD_FAILED_AT, Some(outbox::now_ms().to_string())),
                        (outbox::META_RELOAD_ERROR, Some(error)),
                    ],
                    false,
                )
            }
        };
        if !self.writer.set_meta(meta).await {
            tracing::warn!(applied = ok, "could not record the reload's outcome for status");
        }
        let db_path = self.db_path.clone();
        let line = tokio::task::spawn_blocking(move || crate::notify::status_line(&db_path))
            .await
            .unwrap_or_default();
        crate::notify::ready(&line);
    }

    pub(super) async fn try_reload(&mut self) -> Result<(), String> {
        let source = self.config.source.clone();
        let new = tokio::task::spawn_blocking(move || reload::read_config(source.as_deref()))
            .await
            .map_err(|e| format!("reading the config failed: {e}"))??;
        let restart_only = reload::restart_only_changes(&self.config, &new);
        if !restart_only.is_empty() {
            tracing::warn!(
                keys = %restart_only.join(", "),
                "changed in the config file, but only a restart applies them (systemctl restart store-outbox); running on their old values"
            );
        }
        let changes = reload::subscription_changes(&self.config.subscriptions, &new.subscriptions);
        if changes.is_empty() {
            tracing::info!(subscriptions = %changes.summary(), "config reloaded: no subscription changed");
            return Ok(());
        }
        // Every new destination is built before anything stops: one that
        // cannot be (an unreadable CA file) fails the reload as a whole.
        let mut built = Vec::new();
        for config in new.subscriptions.iter().filter(|c| changes.starts(&c.name)) {
            built.push((
                config.name.clone(),
                destinations::build(&Arc::new(config.clone()), &self.source)?,
            ));
        }
        let stopped = self.stop(|name| changes.stops(name)).await;
        let subs = match self.writer.reconfigure(new.subscriptions.clone()).await {
            Ok(subs) => subs,
            Err(error) => {
                self.restart_stopped(stopped);
                return Err(error);
            }
        };
        self.config.subscriptions = new.subscriptions;
        let mut not_started = Vec::new();
        for (name, destination) in built {
            if let Some(sub) = subs.iter().find(|s| s.config.name == name) {
                if let Err(e) = self.start(sub.clone(), destination) {
                    not_started.push(format!("subscription {name:?}: cannot start its scheduler: {e:#}"));
                }
            }
        }
        // Keep the config's order (status and logs follow it).
        self.running
            .sort_by_key(|r| subs.iter().position(|s| s.id == r.sub.id).unwrap_or(usize::MAX));
        if !not_started.is_empty() {
            return Err(format!("{}; restart the agent", not_started.join("; ")));
        }
        tracing::info!(subscriptions = %changes.summary(), "config reloaded");
        Ok(())
    }

    /// The writer could not take the new subscriptions: the stopped
    /// schedulers go on with their old settings.
    pub(super) fn restart_stopped(&mut self, stopped: Vec<outbox::Subscription>) {
        for sub in stopped {
            let name = sub.config.name.clone();
            let restarted = destinations::build(&sub.config, &self.source)
                .map_err(|e| anyhow!(e))
                .and_then(|built| self.start(sub, built));
            if let Err(e) = restarted {
                tracing::error!(subscription = %name, error = %e, "could not start the scheduler again: restart the agent");
            }
        }
    }
}
