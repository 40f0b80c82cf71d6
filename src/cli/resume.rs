//! `resume`: send again to a subscription whose endpoint answered 410 Gone.

use clap::Args;

use super::{load_config, CliError, CliResult};
use crate::outbox;
use crate::outbox::gone::{resume, ResumeError, Resumed};

/// Arguments of `resume`.
#[derive(Args, Debug)]
pub struct ResumeArgs {
    /// The subscription to resume.
    pub subscription: String,
}

/// Clears the subscription's 410 stop; a running agent sends again within
/// about 2 seconds.
pub fn run(path: Option<&std::path::Path>, args: ResumeArgs) -> CliResult {
    let config = load_config(path)?;
    let db_path = config.db_path();
    if !db_path.exists() {
        return Err(CliError::runtime(format!(
            "{}: no database here yet",
            db_path.display()
        )));
    }
    let mut conn = outbox::open_writer(&db_path).map_err(CliError::runtime)?;
    let name = &args.subscription;
    match resume(&mut conn, name) {
        Ok(Resumed::Resumed { since_ms }) => {
            println!(
                "resumed {name} (stopped by 410 Gone since {}); the agent sends again within a few seconds",
                crate::timefmt::ms_to_rfc3339(since_ms)
            );
            Ok(())
        }
        Ok(Resumed::NotGone) => {
            println!("{name} was not stopped by a 410 Gone; nothing to do");
            Ok(())
        }
        Err(ResumeError::UnknownSubscription(_)) => Err(CliError::usage(format!("{name:?}: no such subscription"))),
        Err(e) => Err(CliError::runtime(format!("{}: {e}", db_path.display()))),
    }
}
