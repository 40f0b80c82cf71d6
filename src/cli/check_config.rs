//! `check-config`: validate the config file without starting anything.

use super::{load_config, CliResult};

/// Loads and validates; prints a one-line summary.
pub fn run(path: Option<&std::path::Path>) -> CliResult {
    let config = load_config(path)?;
    let source = config
        .source
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "no config file, built-in defaults".to_string());
    println!(
        "{source}: ok ({} subscription{}, data in {})",
        config.subscriptions.len(),
        if config.subscriptions.len() == 1 { "" } else { "s" },
        config.agent.data_dir.display()
    );
    Ok(())
}
