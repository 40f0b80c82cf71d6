//! The subscriptions as the writer fans new events out to them: row id,
//! event-type filter, inbox.

use std::sync::Arc;

use crate::config::SubscriptionConfig;
use crate::outbox::{Inbox, Subscription};

/// Subscription data the writer needs to fan events out.
pub(crate) struct Fanout {
    /// Subscription row id.
    pub(super) id: i64,
    /// Its configuration (its event-type filter).
    pub(super) config: Arc<SubscriptionConfig>,
    /// Where new deliveries are announced.
    pub(super) inbox: Arc<Inbox>,
}

impl Fanout {
    pub(super) fn of(sub: &Subscription) -> Fanout {
        Fanout {
            id: sub.id,
            config: sub.config.clone(),
            inbox: sub.inbox.clone(),
        }
    }
}
