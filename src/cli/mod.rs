//! The command line: one module per subcommand, each thin over the library.
//!
//! Exit codes of every command: 0 success, 1 runtime failure, 2 usage or
//! config error (with a message naming the file, key or argument at fault).

mod check_config;
mod demo;
mod doctor;
mod events;
mod fleet;
mod receive;
mod resend;
mod resume;
mod run;
mod schema;
mod send;
mod show;
mod status;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Config;

/// A command's failure: the exit code and what to tell the person.
#[derive(Debug)]
pub struct CliError {
    /// 1 runtime failure, 2 usage or config error.
    pub code: u8,
    /// The message, naming what is at fault.
    pub message: String,
}

impl CliError {
    /// A runtime failure (exit 1).
    pub fn runtime(message: impl std::fmt::Display) -> Self {
        CliError {
            code: 1,
            message: message.to_string(),
        }
    }
    /// A usage or config error (exit 2).
    pub fn usage(message: impl std::fmt::Display) -> Self {
        CliError {
            code: 2,
            message: message.to_string(),
        }
    }
}

/// Result of a command.
pub type CliResult = Result<(), CliError>;

/// store-outbox: commits POS events to a local SQLite outbox and forwards
/// them as signed webhooks, in order per entity, through any outage.
#[derive(Parser, Debug)]
#[command(name = "store-outbox", version, about, long_about = None)]
pub struct Cli {
    /// Config file (default: $STORE_OUTBOX_CONFIG, then /etc/store-outbox/config.toml,
    /// then built-in defaults under ./store-outbox-data/).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the agent (the service).
    Run,
    /// Self-contained demonstration: agent, receiver, POS traffic, an outage.
    Demo(demo::DemoArgs),
    /// Send one event through the agent's socket and print the reply.
    Send(send::SendArgs),
    /// Show delivery state per subscription, database size, ingest counters.
    Status(status::StatusArgs),
    /// List deliveries (filters: state, subscription, entity, since).
    Events(events::EventsArgs),
    /// One event with every delivery attempt.
    Show(show::ShowArgs),
    /// Queue deliveries again: event ids, or --parked.
    Resend(resend::ResendArgs),
    /// Send again to a subscription stopped by its endpoint's 410 Gone.
    Resume(resume::ResumeArgs),
    /// Validate the config file; exit 2 naming what is wrong.
    CheckConfig,
    /// Check every subscription: DNS, TCP, TLS, an HTTP answer, clock skew.
    Doctor(doctor::DoctorArgs),
    /// A webhook receiver that verifies signatures and per-entity order.
    Receive(receive::ReceiveArgs),
    /// Central view: the newest heartbeat of every agent on a NATS stream.
    Fleet(fleet::FleetArgs),
    /// Print the JSON Schema of the event, or the OpenAPI document of the HTTP APIs.
    Schema(schema::SchemaArgs),
}

/// Runs the parsed command.
pub fn main(cli: Cli) -> CliResult {
    match cli.command {
        Command::Run => run::run(cli.config.as_deref()),
        Command::Demo(args) => demo::run(args),
        Command::Send(args) => send::run(cli.config.as_deref(), args),
        Command::Status(args) => status::run(cli.config.as_deref(), args),
        Command::Events(args) => events::run(cli.config.as_deref(), args),
        Command::Show(args) => show::run(cli.config.as_deref(), args),
        Command::Resend(args) => resend::run(cli.config.as_deref(), args),
        Command::Resume(args) => resume::run(cli.config.as_deref(), args),
        Command::CheckConfig => check_config::run(cli.config.as_deref()),
        Command::Receive(args) => receive::run(args),
        Command::Doctor(args) => doctor::run(cli.config.as_deref(), args),
        Command::Fleet(args) => fleet::run(args),
        Command::Schema(args) => schema::run(args),
    }
}

/// Loads the config, mapping errors to exit code 2.
fn load_config(path: Option<&std::path::Path>) -> Result<Config, CliError> {
    crate::deliver::destinations::load_config(path).map_err(CliError::usage)
}

/// Logs to stderr; `STORE_OUTBOX_LOG` (or `RUST_LOG`) sets the filter.
fn init_logging(default_level: &str) {
    let filter = std::env::var("STORE_OUTBOX_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default_level.to_string());
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // `Targets` reads the same "info" / "info,store_outbox=debug" directives
    // as EnvFilter (not its span and field filters) without pulling in regex.
    let targets: tracing_subscriber::filter::Targets = match filter.parse() {
        Ok(targets) => targets,
        Err(err) => {
            // Logging is not up yet: say it on stderr, then go on at info.
            eprintln!("store-outbox: ignoring log filter {filter:?} ({err}); logging at info");
            tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO)
        }
    };
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colours only on a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let _ = tracing_subscriber::registry().with(layer).with(targets).try_init();
}

/// A tokio runtime for commands that need one.
fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::runtime(format!("cannot start the async runtime: {e}")))
}
