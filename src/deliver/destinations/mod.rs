//! The kinds of destination, one folder each, behind
//! [`crate::deliver::destination::Destination`]: the webhook (`http://`,
//! `https://`) and NATS JetStream (`nats://`, `tls://`, cargo feature
//! `nats`). The scheduler is the same for all; a subscription's URL picks
//! the kind ([`build`]). To add one: a folder here, a variant of [`Built`]
//! and its arm in [`build`] (and, until issue 25 is done, its config keys
//! in `config/` and its probes in `cli/doctor.rs`).

use std::sync::Arc;

use crate::config::SubscriptionConfig;
use crate::deliver::envelope::Source;

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
