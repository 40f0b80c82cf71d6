//! `receive`: a webhook receiver for tests and field checks. Verifies
//! signatures (with `--secret`) and per-entity order, prints each event.

use std::sync::{Arc, Mutex};

use clap::Args;
use tokio::sync::mpsc;

use super::{init_logging, runtime, CliError, CliResult};
use crate::receiver::{self, Checker, Order, Shared};

/// Arguments of `receive`.
#[derive(Args, Debug)]
pub struct ReceiveArgs {
    /// Address to listen on, e.g. 127.0.0.1:8080.
    #[arg(long, value_name = "ADDR")]
    pub listen: std::net::SocketAddr,
    /// Secret (whsec_...) to verify signatures with; repeat during rotation.
    #[arg(long, value_name = "S")]
    pub secret: Vec<String>,
    /// Print one JSON object per event (with the checks) instead of a line of text.
    #[arg(long)]
    pub json: bool,
}

/// Serves until Ctrl-C or SIGTERM, then prints the totals.
pub fn run(args: ReceiveArgs) -> CliResult {
    init_logging("warn");
    let mut secrets = Vec::new();
    for s in &args.secret {
        secrets.push(crate::signing::decode_secret(s).map_err(|e| CliError::usage(format!("--secret: {e}")))?);
    }
    let rt = runtime()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| CliError::runtime(format!("--listen {}: {e}", args.listen)))?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            checker: Mutex::new(Checker::new(secrets)),
            events: tx,
        });
        eprintln!("receiving webhooks on http://{}/ (Ctrl-C to stop)", args.listen);
        let json = args.json;
        let printer = tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                if json {
                    println!("{}", serde_json::to_string(&ev).unwrap_or_default());
                } else {
                    let order = match &ev.order {
                        Order::InOrder => "in order".to_string(),
                        Order::Duplicate => "duplicate".to_string(),
                        Order::Gap { missing } => format!("gap: {missing} missing"),
                        Order::OutOfOrder { after } => format!("OUT OF ORDER (after {after})"),
                    };
                    let sig = match ev.signature_valid {
                        Some(true) => "signature ok",
                        Some(false) => "BAD SIGNATURE",
                        None => "signature not checked",
                    };
                    let batch = ev.batch.as_deref().map(|b| format!(", in {b}")).unwrap_or_default();
                    println!(
                        "{} {} #{} {}  [{order}, {sig}{batch}]",
                        ev.id, ev.entity, ev.entity_seq, ev.event_type
                    );
                }
            }
        });
        let app = receiver::router(shared.clone());
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                use tokio::signal::unix::{signal, SignalKind};
                if let Ok(mut term) = signal(SignalKind::terminate()) {
                    tokio::select! { _ = term.recv() => {}, _ = tokio::signal::ctrl_c() => {} }
                } else {
                    let _ = tokio::signal::ctrl_c().await;
                }
            })
            .await
            .map_err(|e| CliError::runtime(format!("receiver: {e}")))?;
        let stats = shared.checker.lock().unwrap_or_else(|p| p.into_inner()).stats.clone();
        // The last sender goes with `shared`: the printer finishes what is queued.
        drop(shared);
        let _ = printer.await;
        eprintln!("{}", serde_json::to_string(&stats).unwrap_or_default());
        Ok(())
    })
}
