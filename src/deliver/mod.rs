//! Delivery: from the outbox to each subscription's destination.
//!
//! - [`scheduler`]: per subscription, which event goes next and when:
//!   per-entity order, parallelism, backoff, offline probing, parking.
//! - [`decide`]: the scheduler's rules as plain functions (what an answer
//!   means, which entity is ready).
//! - [`courier`]: the request workers that carry events to the destination
//!   and hand outcomes to the writer.
//! - [`destination`]: the seam: the [`destination::Destination`] trait a
//!   destination implements (send one unit, classify the answer).
//! - [`webhook`]: the webhook destination (HTTP, Standard Webhooks).
//! - [`cloudevents`]: CloudEvents 1.0 over HTTP for `format = "cloudevents"`
//!   (binary mode, batched mode), sent by the webhook destination.
//! - `nats` (with the cargo feature `nats`): the NATS JetStream destination
//!   (the webhook body, published and acknowledged).
//! - [`backoff`]: retry delays with jitter and `Retry-After`.
//! - [`batch`]: when a batch is formed, what fits in it, its id.
//! - [`rate`]: `max_rate`, the token bucket of a subscription's requests.
//!
//! To add a kind of destination: a module beside `webhook.rs` with a type
//! that implements [`destination::Destination`], and one arm in
//! `agent.rs` that builds it for the subscriptions whose URL it takes.
//! Nothing in the scheduler, the couriers or the rules changes: they never
//! see what is behind the trait.

pub mod backoff;
pub mod batch;
pub mod concurrency;
pub mod courier;
pub mod decide;
pub mod destination;
pub mod destinations;
pub mod envelope;
pub mod probe;
pub mod rate;
pub mod scheduler;
