//! The seam between the scheduler and the systems events go to.
//!
//! A destination sends one prepared unit (one stored event, or a batch of
//! them when the subscription has `batch`) and says what the answer means; it knows nothing of entities, order,
//! backoff, probing or parking, which stay in the scheduler. The webhook
//! ([`super::destinations::webhook::Webhook`]) is one implementation; a new
//! kind of destination is a folder in [`super::destinations`] implementing
//! [`Destination`], chosen by the subscription's URL there.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::outbox::read::StoredEvent;

/// What an answer means for delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerKind {
    /// Accepted (a 2xx, a stream's acknowledgement): the event is delivered.
    Delivered,
    /// The destination is unreachable or overloaded (connect error,
    /// timeout, 429, 502-504): the whole subscription goes offline and is
    /// probed.
    Unavailable,
    /// The destination answered but refused this event (other failures):
    /// the event is retried with its own backoff.
    Refused,
    /// The destination asks the whole subscription to slow down (HTTP 429,
    /// 503): every entity pauses until `retry_after`, or the backoff
    /// without it; requests already on the wire finish.
    Throttled,
    /// The destination says it is gone for good (HTTP 410): the
    /// subscription stops sending (nothing is dropped or parked) until its
    /// config changes or an operator resumes it.
    Gone,
}

/// The destination's answer to one send.
#[derive(Debug, Clone)]
pub struct Answer {
    /// What it means.
    pub kind: AnswerKind,
    /// The status code (HTTP), if an answer came.
    pub status: Option<u16>,
    /// A description of the failure, worded for the operator; `None` on
    /// success.
    pub error: Option<String>,
    /// How long the destination asked us to wait (`Retry-After`).
    pub retry_after: Option<Duration>,
}

impl Answer {
    /// A success with this status.
    pub fn delivered(status: Option<u16>) -> Self {
        Answer {
            kind: AnswerKind::Delivered,
            status,
            error: None,
            retry_after: None,
        }
    }

    /// A failure of this kind.
    pub fn failed(kind: AnswerKind, status: Option<u16>, error: impl Into<String>) -> Self {
        Answer {
            kind,
            status,
            error: Some(error.into()),
            retry_after: None,
        }
    }

    /// The name used in metrics and logs.
    pub fn result_name(&self) -> &'static str {
        match self.kind {
            AnswerKind::Delivered => "delivered",
            AnswerKind::Refused => "refused",
            AnswerKind::Unavailable => "unreachable",
            AnswerKind::Throttled => "throttled",
            AnswerKind::Gone => "gone",
        }
    }
}

/// Where a subscription's events go.
pub trait Destination: Send + Sync + 'static {
    /// Sends one event and classifies the answer. Never fails otherwise:
    /// every problem is an [`Answer`] the scheduler can act on.
    fn send(&self, event: &StoredEvent) -> impl Future<Output = Answer> + Send;

    /// Sends several events in one request, `id` being the batch's id, and
    /// classifies the answer: it is the answer for every event of the batch.
    /// A destination that sends one event per request refuses (the config
    /// allows `batch` only where it is implemented).
    fn send_batch(&self, id: &str, events: &[&StoredEvent]) -> impl Future<Output = Answer> + Send {
        let _ = (id, events);
        async {
            Answer::failed(
                AnswerKind::Refused,
                None,
                "this destination sends one event per request",
            )
        }
    }

    /// The bytes `event` adds to a batch's body (before compression), so
    /// the scheduler keeps batches under `batch.max_bytes`.
    fn batch_bytes(&self, event: &StoredEvent) -> usize {
        event.payload.len() + 512
    }
}

/// The future of a send behind [`AnyDestination`].
pub type Sending<'a> = Pin<Box<dyn Future<Output = Answer> + Send + 'a>>;

/// [`Destination`] as a trait object (its futures boxed), so that one
/// scheduler serves every kind: a scheduler (and its couriers) made for
/// each kind of destination would be another copy of all their code in the
/// binary (about half a megabyte each, measured), for a saving of one
/// allocation per request.
pub trait DynDestination: Send + Sync + 'static {
    /// [`Destination::send`].
    fn send_dyn<'a>(&'a self, event: &'a StoredEvent) -> Sending<'a>;
    /// [`Destination::send_batch`].
    fn send_batch_dyn<'a>(&'a self, id: &'a str, events: &'a [&'a StoredEvent]) -> Sending<'a>;
    /// [`Destination::batch_bytes`].
    fn batch_bytes_dyn(&self, event: &StoredEvent) -> usize;
}

impl<D: Destination> DynDestination for D {
    fn send_dyn<'a>(&'a self, event: &'a StoredEvent) -> Sending<'a> {
        Box::pin(self.send(event))
    }
    fn send_batch_dyn<'a>(&'a self, id: &'a str, events: &'a [&'a StoredEvent]) -> Sending<'a> {
        Box::pin(self.send_batch(id, events))
    }
    fn batch_bytes_dyn(&self, event: &StoredEvent) -> usize {
        self.batch_bytes(event)
    }
}

/// Any destination, its kind erased: what the agent's schedulers drive.
#[derive(Clone)]
pub struct AnyDestination(pub Arc<dyn DynDestination>);

impl Destination for AnyDestination {
    async fn send(&self, event: &StoredEvent) -> Answer {
        self.0.send_dyn(event).await
    }
    async fn send_batch(&self, id: &str, events: &[&StoredEvent]) -> Answer {
        self.0.send_batch_dyn(id, events).await
    }
    fn batch_bytes(&self, event: &StoredEvent) -> usize {
        self.0.batch_bytes_dyn(event)
    }
}
