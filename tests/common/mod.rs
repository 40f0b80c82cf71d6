//! Shared test harness: the real binary as a process, a real HTTP receiver on
//! loopback with programmable answers, and socket producers.
//!
//! Every test takes its own temporary directory and free ports, and the
//! processes it starts are killed when their handles drop.
//!
//! One concern per file, each re-exported here, so a suite's `use common::*;`
//! sees all of them:
//!
//! | file | owns |
//! |---|---|
//! | `agent.rs` | [`Agent`]: the agent process, its directory and config, start, stop, kill, reload, its CLI and status, its spool |
//! | `config.rs` | the TOML tests write: [`SECRET`], [`subscription`], [`PARK_FAST`] |
//! | `producer.rs` | the ingest socket's producers: [`send_lines`], [`event`], [`Events`] |
//! | `http.rs` | HTTP/1.1 by hand: a minimal client ([`http`], [`http_request`], [`HttpResponse`]) and [`read_request`] for raw servers |
//! | `receiver.rs` | [`Receiver`], the webhook endpoint on loopback, and [`assert_entity_order`] |
//! | `receive.rs` | [`Receive`]: the binary's own `receive` command as the endpoint |
//! | `verifier.rs` | the official Standard Webhooks library (Python) over what a receiver got: [`verify_with_python`] |
//! | `process.rs` | [`binary`], [`Process`], [`spawn_listening`], [`run_ok`], [`cli_with_config`] |
//! | `net.rs` | loopback TCP: [`free_port`], [`wait_for_port`], [`reset_on_drop`] |
//! | `wait.rs` | [`wait_until`] |
//! | `env.rs` | switches from the environment: [`env_number`] |
//! | `tmpfs.rs` | [`TmpfsMount`] (root only) |
//! | `tls.rs` | test certificates with `openssl`: [`ca_and_server_cert`] |
//! | `sd_notify.rs` | the systemd side of `NOTIFY_SOCKET`: [`NotifySocket`] |
//! | `library.rs` | the outbox as a library: [`library_outbox`], [`outcome`], [`new_event`], runtimes |
//! | `nats.rs` | [`NatsCluster`], a JetStream cluster on loopback |
//! | `pubsub.rs` | Google Cloud Pub/Sub: [`PubSubEmulator`], [`service_account_key`], the OAuth2 [`TokenServer`], the authenticating [`AuthFront`] |
//! | `servicebus.rs` | [`ServiceBus`], Azure Service Bus and Entra ID's token endpoint on loopback, from Microsoft's REST reference; [`sas_token`] |
//! | `wan.rs` | a store's uplink as a TCP proxy (also included by `bench/`, so self-contained) |
//!
//! Each test binary compiles this module on its own and uses only part of
//! it, hence `dead_code` allowed for the whole harness (and unused
//! re-exports below).

#![allow(dead_code)]

mod agent;
mod config;
mod env;
mod http;
mod library;
mod nats;
mod net;
mod process;
mod producer;
mod pubsub;
mod receive;
mod receiver;
mod sd_notify;
mod servicebus;
mod tls;
mod tmpfs;
mod verifier;
mod wait;
pub mod wan;

// A suite uses only some of these; an unused re-export is no warning.
#[allow(unused_imports)]
pub use self::{
    agent::*, config::*, env::*, http::*, library::*, nats::*, net::*, process::*, producer::*, pubsub::*, receive::*,
    receiver::*, sd_notify::*, servicebus::*, tls::*, tmpfs::*, verifier::*, wait::*,
};
