//! The shutdown signal, shared by every task of the agent.
//!
//! A `watch` channel rather than a broadcast: a late subscriber must still see
//! that shutdown already began.

use tokio::sync::watch;

/// Starts a shutdown.
#[derive(Clone)]
pub struct Trigger(watch::Sender<bool>);

/// Observes the shutdown.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A linked trigger and observer.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Tells every observer to stop.
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// Whether shutdown began.
    pub fn is_started(&self) -> bool {
        *self.0.borrow()
    }
    /// Resolves once shutdown begins (at once if it already has).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}
