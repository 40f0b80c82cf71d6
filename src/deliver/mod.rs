//! Delivery: from the outbox to each subscription's endpoint.
//!
//! - [`webhook`]: one subscription's HTTP client, the body and the signature.
//! - [`backoff`]: retry delays with jitter and `Retry-After`.
//! - [`scheduler`]: per-subscription ordering, parallelism and offline probing.

pub mod backoff;
pub mod scheduler;
pub mod webhook;
