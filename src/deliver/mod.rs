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
//! - [`destinations`]: the kinds of destination, a folder each (the
//!   webhook, NATS JetStream, Azure Service Bus), and their one registry.
//! - [`envelope`]: the contract's body of one event and of a batch, the
//!   same bytes for every destination.
//! - [`http_client`]: the HTTP/1.1 client every destination over HTTP uses;
//!   [`http_answer`]: what its answers mean for delivery;
//!   [`access_token`]: a bus's bearer token, kept and renewed.
//! - [`probe`]: what `doctor` probes return, and the shared DNS/TCP steps.
//! - [`backoff`]: retry delays with jitter and `Retry-After`.
//! - [`batch`]: when a batch is formed, what fits in it, its id.
//! - [`rate`]: `max_rate`, the token bucket of a subscription's requests.
//!
//! To add a kind of destination: a folder in [`destinations`] and its line
//! in `destinations::KINDS` (ARCHITECTURE.md says what the folder holds).
//! Nothing in the scheduler, the couriers or the rules changes: they never
//! see what is behind the trait.

pub mod access_token;
pub mod backoff;
pub mod batch;
pub mod concurrency;
pub mod courier;
pub mod decide;
pub mod destination;
pub mod destinations;
pub mod envelope;
pub mod http_answer;
pub mod http_client;
pub mod probe;
pub mod rate;
pub mod scheduler;
