//! The `store-outbox` binary: parses the command line and runs a subcommand.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = store_outbox::cli::Cli::parse();
    match store_outbox::cli::main(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("store-outbox: {}", e.message);
            std::process::ExitCode::from(e.code)
        }
    }
}
