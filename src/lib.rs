//! store-outbox: a store-side transactional outbox.
//!
//! Point-of-sale software hands events to the agent (Unix socket, loopback
//! HTTP, spool directory); the agent commits each one to SQLite before saying
//! "ok", then forwards it to central systems as signed webhooks (or publishes
//! it to NATS JetStream), in order per entity, retrying through outages.
//!
//! # Layout
//!
//! - [`config`]: the TOML file, defaults, validation with file/line/key errors.
//! - [`event`]: the event a producer sends, its validation, the reply.
//! - [`outbox`]: the SQLite database: schema and migrations, the single
//!   group-committing writer (`outbox::writer`), read queries, states, the
//!   shapes the reads fill (`outbox::report`) and the tables of held
//!   batches, gone subscriptions and history. Nothing is acknowledged
//!   before commit.
//! - [`ingest`]: the ways in (Unix socket, HTTP, spool directory, POSLog
//!   files); bytes to validated events. A new way in is a module here.
//! - [`deliver`]: per-subscription schedulers (per-entity order, a bounded
//!   window of entities, backoff, offline probing, parking), their rules
//!   (`deliver::decide`), the couriers, and the destinations behind
//!   `deliver::destination::Destination` (the webhook, NATS JetStream, Azure
//!   Service Bus). A new kind of destination is a folder in
//!   `deliver::destinations` plus its line in `destinations::KINDS`.
//! - [`metrics`]: Prometheus metrics, from the database and from delivery.
//! - [`notify`]: systemd readiness, status and watchdog (sd_notify).
//! - [`signing`]: Standard Webhooks signatures, shared by sender and receiver.
//! - [`receiver`]: a checking webhook receiver (`receive`, `demo`).
//! - [`status`]: the status report (CLI, admin API, page).
//! - [`history`]: the sampler, a sample a minute per subscription, kept
//!   24 h in the outbox (`outbox::history`: the page's charts, `/v1/history`).
//! - [`http_server`]: serving both HTTP servers (head timeout, connection
//!   cap, graceful shutdown); [`http_guard`]: their `Host` and `Origin` checks.
//! - [`admin`]: admin HTTP: status page, JSON API, `/metrics`, `/healthz`.
//! - [`agent`]: wires the parts together, applies reloads, stops them in order.
//! - [`reload`]: reload requests (SIGHUP) and what a re-read config changes.
//! - [`shutdown`]: the shutdown signal, and the stop of one scheduler alone.
//! - [`timefmt`]: times and durations as people read and write them.
//! - [`error_text`]: an error's chain of causes as the text people read.
//! - [`cli`]: one module per subcommand; thin, on top of the above.

pub mod admin;
pub mod agent;
pub mod cli;
pub mod config;
pub mod deliver;
pub mod error_text;
pub mod event;
pub mod fleet;
pub mod heartbeat;
pub mod history;
pub mod http_guard;
pub mod http_server;
pub mod ingest;
pub mod metrics;
pub mod notify;
pub mod outbox;
pub mod receiver;
pub mod reload;
pub mod shutdown;
pub mod signing;
pub mod status;
pub mod timefmt;
