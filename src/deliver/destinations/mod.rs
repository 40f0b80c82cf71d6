//! The kinds of destination, one folder each, and the one registry of them
//! ([`KINDS`]): the webhook (`http://`, `https://`), NATS JetStream
//! (`nats://`, `tls://`, its client behind cargo feature `nats`), Google
//! Cloud Pub/Sub (`pubsub://`) and Azure Service Bus (`servicebus://`),
//! the buses over their REST APIs. Each
//! folder holds the kind's config keys (`config.rs`, a
//! [`crate::config::DestinationKind`]), its encoder and client (a
//! [`crate::deliver::destination::Destination`]) and its `doctor` probes,
//! and describes itself with a [`Kind`]. A subscription's URL picks the
//! kind; the scheduler, `status`, the page and `/metrics` are the same for
//! all. To add one: a folder here and its line in [`KINDS`].

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;

use crate::config::{Config, ConfigError, DestinationKind, SubscriptionConfig};
use crate::deliver::destination::{AnyDestination, Destination};
use crate::deliver::envelope::Source;
use crate::deliver::probe::{step, Step, Verdict};
use crate::deliver::scheduler::Scheduler;
use crate::metrics::Metrics;
use crate::notify::Heartbeat;
use crate::outbox::{writer::Writer, Subscription};
use crate::shutdown::Shutdown;

pub mod nats;
pub mod pubsub;
pub mod servicebus;
pub mod webhook;

/// Every kind of destination, in the order messages list them.
pub static KINDS: &[&Kind] = &[&webhook::KIND, &nats::KIND, &pubsub::KIND, &servicebus::KIND];

/// A kind of destination: its config keys, how a subscription's
/// destination is made, and how `doctor` checks it.
pub struct Kind {
    /// Its URL schemes and its own keys.
    pub config: &'static DestinationKind,
    /// Prepares the destination of one subscription (no connection yet).
    pub build: fn(&Arc<SubscriptionConfig>, &Source) -> Result<Built, String>,
    /// The `doctor` probes, pushed into the steps in order; `Err` holds the
    /// step that failed (the rest are then reported as skipped).
    pub probe: for<'a> fn(&'a SubscriptionConfig, &'a Source, &'a mut Vec<Step>) -> Probing<'a>,
    /// The names of its `doctor` steps, in order.
    pub step_names: &'static [&'static str],
}

/// The future of [`Kind::probe`].
pub type Probing<'a> = Pin<Box<dyn Future<Output = Result<(), Vec<Step>>> + Send + 'a>>;

/// The config kinds of [`KINDS`], for [`crate::config::parse_with`].
fn config_kinds() -> Vec<&'static DestinationKind> {
    KINDS.iter().map(|k| k.config).collect()
}

/// Parses and validates config text with every kind of destination (see
/// [`crate::config::parse_with`]).
pub fn parse_config(text: &str, path: Option<&Path>) -> Result<Config, ConfigError> {
    crate::config::parse_with(text, path, &config_kinds())
}

/// Loads the config file found by [`crate::config::locate`] with every
/// kind of destination (see [`crate::config::load_with`]).
pub fn load_config(explicit: Option<&Path>) -> Result<Config, ConfigError> {
    crate::config::load_with(explicit, &config_kinds())
}

/// The kind of a parsed subscription.
fn kind_of(sub: &SubscriptionConfig) -> Result<&'static Kind, String> {
    KINDS
        .iter()
        .copied()
        .find(|k| k.config.name == sub.kind.name())
        .ok_or_else(|| format!("no kind of destination is called {:?}", sub.kind.name()))
}

/// A subscription's destination, ready to be driven by its scheduler: the
/// concrete kind is known only inside (the scheduler is generic over it).
pub struct Built {
    start: Box<dyn FnOnce(SchedulerParts) -> Started + Send>,
}

/// What a scheduler runs on besides its destination.
pub struct SchedulerParts {
    /// Its subscription (row id, settings, inbox).
    pub sub: Subscription,
    /// The single writer.
    pub writer: Writer,
    /// Its own read connection.
    pub reader: Connection,
    /// Stops it.
    pub shutdown: Shutdown,
    /// How long requests in flight may finish after a stop.
    pub grace: Duration,
    /// In-memory delivery metrics.
    pub metrics: Metrics,
}

/// A scheduler made and not yet spawned: its heartbeat for the watchdog,
/// and its run.
pub struct Started {
    /// Beats while the scheduler's loop turns.
    pub heartbeat: Heartbeat,
    /// The scheduler's loop, to spawn.
    pub run: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Built {
    /// The destination `destination`, whatever its kind: every kind runs on
    /// one scheduler type (see [`AnyDestination`]): this
    /// is the only place a scheduler is made for the agent.
    pub fn of<D: Destination>(destination: Arc<D>) -> Built {
        let destination = Arc::new(AnyDestination(destination));
        Built {
            start: Box::new(move |p: SchedulerParts| {
                let scheduler = Scheduler::new(p.sub, destination, p.writer, p.reader, p.shutdown, p.grace, p.metrics);
                Started {
                    heartbeat: scheduler.heartbeat(),
                    run: Box::pin(scheduler.run()),
                }
            }),
        }
    }

    /// Makes the scheduler that delivers to this destination.
    pub fn start(self, parts: SchedulerParts) -> Started {
        (self.start)(parts)
    }
}

/// The destination of one subscription; the error names the subscription.
pub fn build(config: &Arc<SubscriptionConfig>, source: &Source) -> Result<Built, String> {
    kind_of(config)
        .and_then(|kind| (kind.build)(config, source))
        .map_err(|e| format!("subscription {:?}: {e}", config.name))
}

/// The `doctor` probes of one subscription, by the kind of its destination,
/// in order; after a failure the rest are skipped.
pub async fn probe(sub: &SubscriptionConfig, source: &Source) -> Vec<Step> {
    let kind = match kind_of(sub) {
        Ok(kind) => kind,
        Err(e) => return vec![step("config", Verdict::Fail, e, None)],
    };
    let mut steps = Vec::new();
    if let Err(failed) = (kind.probe)(sub, source, &mut steps).await {
        steps.extend(failed);
        for name in kind.step_names.iter().copied().skip(steps.len()) {
            steps.push(step(name, Verdict::Skip, "not run", None));
        }
    }
    steps
}
