//! NATS JetStream (`nats://`, `tls://` URLs): its config keys
//! ([`config`], read in every build), and, with cargo feature `nats`, its
//! publisher ([`publisher`]) and `doctor` probes ([`doctor`]). A build
//! without the feature still reads a NATS subscription's keys, and says
//! at start and in `doctor` that it cannot publish.

use std::sync::Arc;

pub mod config;
#[cfg(feature = "nats")]
pub mod doctor;
#[cfg(feature = "nats")]
pub mod publisher;

#[cfg(feature = "nats")]
pub use publisher::{Nats, RECONNECT_GRACE};

use super::{Built, Kind, Probing};
use crate::config::SubscriptionConfig;
use crate::deliver::envelope::Source;
use crate::deliver::probe::Step;
#[cfg(not(feature = "nats"))]
use crate::deliver::probe::{step, Verdict};

/// NATS in the registry of kinds.
pub static KIND: Kind = Kind {
    config: &config::CONFIG,
    build,
    probe,
    step_names: &STEP_NAMES,
};

/// The steps of a NATS subscription (its first server), in order.
const STEP_NAMES: [&str; 4] = ["dns", "tcp", "nats", "stream"];

/// The message of a build without the `nats` feature.
#[cfg(not(feature = "nats"))]
const NOT_BUILT: &str = "this build of store-outbox has no NATS support";

#[cfg(feature = "nats")]
fn build(config: &Arc<SubscriptionConfig>, source: &Source) -> Result<Built, String> {
    Nats::new(config.clone(), source.clone()).map(|nats| Built::of(Arc::new(nats)))
}

/// Without the `nats` feature a NATS subscription cannot start: say so,
/// rather than fail later.
#[cfg(not(feature = "nats"))]
fn build(_config: &Arc<SubscriptionConfig>, _source: &Source) -> Result<Built, String> {
    Err(format!(
        "{NOT_BUILT} (build it with `cargo build --release --features nats`)"
    ))
}

#[cfg(feature = "nats")]
fn probe<'a>(sub: &'a SubscriptionConfig, source: &'a Source, steps: &'a mut Vec<Step>) -> Probing<'a> {
    Box::pin(doctor::probe(sub, source, steps))
}

/// Without the `nats` feature a NATS subscription cannot be checked.
#[cfg(not(feature = "nats"))]
fn probe<'a>(_sub: &'a SubscriptionConfig, _source: &'a Source, _steps: &'a mut Vec<Step>) -> Probing<'a> {
    Box::pin(async {
        Err(vec![step(
            "nats",
            Verdict::Fail,
            NOT_BUILT,
            Some("build it with `cargo build --release --features nats`"),
        )])
    })
}
