//! `fleet`: the newest heartbeat of every store and agent on a JetStream
//! stream, worst first (central IT's view; runs anywhere that reaches the
//! NATS servers, no agent config needed).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{CliError, CliResult};

/// Arguments of `fleet`.
#[derive(Args, Debug)]
pub struct FleetArgs {
    /// NATS servers, comma-separated (`nats://` or `tls://`).
    #[arg(long, value_name = "URL")]
    pub nats: String,
    /// The stream holding the heartbeats (default: the only stream there is).
    #[arg(long, value_name = "NAME")]
    pub stream: Option<String>,
    /// Only subjects matching this filter, e.g. `fleet.>` (default: all).
    #[arg(long, value_name = "FILTER", default_value = ">")]
    pub subject: String,
    /// A NATS credentials file (JWT and NKey seed).
    #[arg(long, value_name = "PATH")]
    pub credentials_file: Option<PathBuf>,
    /// Token authentication.
    #[arg(long, env = "STORE_OUTBOX_NATS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// User name (with --password).
    #[arg(long, requires = "password")]
    pub user: Option<String>,
    /// Password (with --user).
    #[arg(long, env = "STORE_OUTBOX_NATS_PASSWORD", hide_env_values = true, requires = "user")]
    pub password: Option<String>,
    /// Extra CA certificate (PEM) to trust for tls://.
    #[arg(long, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// How long to wait for the servers.
    #[arg(long, default_value = "10s", value_parser = crate::timefmt::parse_duration)]
    pub timeout: Duration,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Reads the stream and prints the fleet.
#[cfg(feature = "nats")]
pub fn run(args: FleetArgs) -> CliResult {
    use crate::fleet::{read_stream, render, StreamSource};
    let servers: Vec<String> = args
        .nats
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if let Some(bad) = servers.iter().find(|s| {
        let lower = s.to_ascii_lowercase();
        !(lower.starts_with("nats://") || lower.starts_with("tls://"))
    }) {
        return Err(CliError::usage(format!(
            "--nats: {bad:?} is not a nats:// or tls:// URL"
        )));
    }
    if servers.is_empty() {
        return Err(CliError::usage("--nats: no server given"));
    }
    let source = StreamSource {
        servers,
        stream: args.stream,
        subject: args.subject,
        credentials_file: args.credentials_file,
        token: args.token,
        user_password: args.user.zip(args.password),
        ca_file: args.ca_file,
        timeout: args.timeout,
    };
    let agents = super::runtime()?
        .block_on(read_stream(&source, crate::outbox::now_ms()))
        .map_err(CliError::runtime)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&agents).unwrap_or_default());
    } else {
        print!("{}", render(&agents));
    }
    Ok(())
}

/// Without the `nats` feature there is nothing to read the stream with.
#[cfg(not(feature = "nats"))]
pub fn run(_args: FleetArgs) -> CliResult {
    Err(CliError::runtime(
        "this build of store-outbox has no NATS support (build it with `cargo build --release --features nats`)",
    ))
}
