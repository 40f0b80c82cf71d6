//! `run`: the service. SIGTERM or SIGINT stops it cleanly (exit 0); SIGHUP
//! reloads the config file (`crate::reload`).

use super::{init_logging, load_config, runtime, CliError, CliResult};
use crate::shutdown;

/// Runs the agent until a stop signal.
pub fn run(path: Option<&std::path::Path>) -> CliResult {
    let config = load_config(path)?;
    init_logging("info");
    let rt = runtime()?;
    rt.block_on(async move {
        // First thing: from here on a hangup is a reload, never the end of
        // the process (SIGHUP's default action).
        let reloads = crate::reload::Requests::sighup().map_err(|e| anyhow::anyhow!("cannot handle SIGHUP: {e}"))?;
        let (trigger, shutdown) = shutdown::channel();
        tokio::spawn(async move {
            wait_for_stop_signal().await;
            trigger.fire();
        });
        crate::agent::run(config, shutdown, reloads, None).await
    })
    .map_err(|e| CliError::runtime(format!("{e:#}")))
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
