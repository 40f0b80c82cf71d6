//! The shutdown signal, shared by every task of the agent, and the stop of
//! one task alone (a scheduler replaced or removed by a reload).
//!
//! A `watch` channel rather than a broadcast: a late subscriber must still see
//! that shutdown already began.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::watch;

/// Starts a shutdown.
#[derive(Clone)]
pub struct Trigger(watch::Sender<bool>);

/// Observes the shutdown: the agent's, and for a task with a stop of its
/// own ([`Shutdown::with_own_stop`]), that one too.
#[derive(Clone)]
pub struct Shutdown {
    /// This observer's own signal.
    own: watch::Receiver<bool>,
    /// The observer it was made from, which stops it too; `None` for the
    /// agent's own.
    parent: Option<Box<Shutdown>>,
}

/// A linked trigger and observer.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown { own: rx, parent: None })
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
        *self.own.borrow() || self.parent.as_ref().is_some_and(|p| p.is_started())
    }

    /// Resolves once shutdown begins (at once if it already has).
    pub fn wait(&mut self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            match &mut self.parent {
                None => {
                    let _ = self.own.wait_for(|stop| *stop).await;
                }
                Some(parent) => {
                    let own = &mut self.own;
                    tokio::select! {
                        _ = own.wait_for(|stop| *stop) => {}
                        _ = parent.wait() => {}
                    }
                }
            }
        })
    }

    /// An observer that stops with this one and also when the returned
    /// trigger fires (or is dropped): a scheduler that a reload stops while
    /// the agent runs on.
    pub fn with_own_stop(&self) -> (Trigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        let child = Shutdown {
            own: rx,
            parent: Some(Box::new(self.clone())),
        };
        (Trigger(tx), child)
    }

    /// The agent's shutdown alone, without any stop of this task's own:
    /// whether the whole agent is stopping, not just this task.
    pub fn agent(&self) -> Shutdown {
        match &self.parent {
            None => self.clone(),
            Some(parent) => parent.agent(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_own_stop_stops_only_its_task_and_the_agent_stops_all() {
        let (agent_trigger, agent) = channel();
        let (own_trigger, mut task) = agent.with_own_stop();
        let (_other_trigger, mut other) = agent.with_own_stop();
        own_trigger.fire();
        task.wait().await;
        assert!(task.is_started());
        assert!(!task.agent().is_started(), "the agent runs on");
        assert!(!other.is_started());
        agent_trigger.fire();
        other.wait().await;
        assert!(other.is_started() && other.agent().is_started());
    }

    #[tokio::test]
    async fn a_dropped_own_trigger_stops_its_task() {
        let (_agent_trigger, agent) = channel();
        let (own_trigger, mut task) = agent.with_own_stop();
        drop(own_trigger);
        task.wait().await;
        assert!(!agent.is_started());
    }
}
