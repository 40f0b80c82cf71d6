//! The kinds of destination, one folder each, behind
//! [`crate::deliver::destination::Destination`]: the webhook (`http://`,
//! `https://`) and NATS JetStream (`nats://`, `tls://`, cargo feature
//! `nats`). The scheduler is the same for all; a subscription's URL picks
//! the kind ([`build`]). To add one: a folder here, a variant of [`Built`]
//! and its arm in [`build`] and of [`probe`] (and, until issue 25 is done,
//! its config keys in `config/`).

use std::sync::Arc;

use crate::config::SubscriptionConfig;
use crate::deliver::envelope::Source;
use crate::deliver::probe::{step, Step, Verdict};

#[cfg(feature = "nats")]
pub mod nats;
pub mod webhook;

/// A subscription's destination, of the kind its URL names.
pub enum Built {
    /// `http://` and `https://`: signed webhooks.
    Webhook(Arc<webhook::Webhook>),
    /// `nats://` and `tls://`: JetStream publishes, acknowledged.
    #[cfg(feature = "nats")]
    Nats(Arc<nats::Nats>),
}

/// A NATS JetStream destination.
#[cfg(feature = "nats")]
fn build_nats(config: &Arc<SubscriptionConfig>, source: &Source) -> Result<Built, String> {
    nats::Nats::new(config.clone(), source.clone()).map(|nats| Built::Nats(Arc::new(nats)))
}

/// Without the `nats` feature a NATS subscription cannot start: say so,
/// rather than fail later.
#[cfg(not(feature = "nats"))]
fn build_nats(_config: &Arc<SubscriptionConfig>, _source: &Source) -> Result<Built, String> {
    Err("this build of store-outbox has no NATS support (build it with `cargo build --release --features nats`)".into())
}

/// The destination of one subscription; the error names the subscription.
pub fn build(config: &Arc<SubscriptionConfig>, source: &Source) -> Result<Built, String> {
    let built = if config.nats.is_some() {
        build_nats(config, source)
    } else {
        webhook::Webhook::new(config.clone(), source.clone()).map(|webhook| Built::Webhook(Arc::new(webhook)))
    };
    built.map_err(|e| format!("subscription {:?}: {e}", config.name))
}

/// The `doctor` probes of one subscription, by the kind of its destination,
/// in order; after a failure the rest are skipped.
pub async fn probe(sub: &SubscriptionConfig, source: &Source) -> Vec<Step> {
    let mut steps = Vec::new();
    let (probed, names) = if sub.nats.is_some() {
        (probe_nats(sub, source, &mut steps).await, NATS_STEP_NAMES.as_slice())
    } else {
        (
            webhook::doctor::probe(sub, &mut steps).await,
            webhook::doctor::STEP_NAMES.as_slice(),
        )
    };
    if let Err(failed) = probed {
        steps.extend(failed);
        for name in names.iter().copied().skip(steps.len()) {
            steps.push(step(name, Verdict::Skip, "not run", None));
        }
    }
    steps
}

/// The steps of a NATS subscription (its first server), in order.
const NATS_STEP_NAMES: [&str; 4] = ["dns", "tcp", "nats", "stream"];

#[cfg(feature = "nats")]
async fn probe_nats(sub: &SubscriptionConfig, source: &Source, steps: &mut Vec<Step>) -> Result<(), Vec<Step>> {
    nats::doctor::probe(sub, source, steps).await
}

/// Without the `nats` feature a NATS subscription cannot be checked.
#[cfg(not(feature = "nats"))]
async fn probe_nats(_sub: &SubscriptionConfig, _source: &Source, _steps: &mut Vec<Step>) -> Result<(), Vec<Step>> {
    Err(vec![step(
        "nats",
        Verdict::Fail,
        "this build of store-outbox has no NATS support",
        Some("build it with `cargo build --release --features nats`"),
    )])
}
