//! The pub/sub building block: publish to a topic; subscribe and acknowledge each delivery.
//!
//! Delivery is at-least-once. A subscriber receives [`Delivery`]s from a bounded channel
//! (backpressure instead of unbounded buffering) and answers each with [`Delivery::ack`]:
//! - [`Outcome::Success`] — done;
//! - [`Outcome::Retry`], or no answer (the `Delivery` dropped, or not answered within the
//!   component's processing timeout): delivered again later;
//! - [`Outcome::Drop`] — discarded, or published to the subscription's dead-letter topic when set.
//!
//! Every subscription of a topic receives every event (fan-out).

use std::collections::HashMap;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::error::Result;
use crate::Health;

pub type Metadata = HashMap<String, String>;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PublishRequest {
    pub topic: String,
    pub data: Bytes,
    pub content_type: String,
    pub metadata: Metadata,
}

/// An event as delivered to a subscriber.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Message {
    /// Unique per event (stable across redeliveries of the same event).
    pub id: String,
    pub topic: String,
    pub data: Bytes,
    pub content_type: String,
    pub metadata: Metadata,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubscribeRequest {
    pub topic: String,
    pub metadata: Metadata,
    /// Where dropped events go; `None` discards them.
    pub dead_letter_topic: Option<String>,
}

/// The subscriber's answer to one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Retry,
    Drop,
}

/// One event handed to a subscriber, with the handle to acknowledge it.
#[derive(Debug)]
pub struct Delivery {
    pub message: Message,
    ack: Option<oneshot::Sender<Outcome>>,
}

impl Delivery {
    /// Pairs a message with the channel its component awaits the outcome on.
    pub fn new(message: Message) -> (Self, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        (
            Self {
                message,
                ack: Some(tx),
            },
            rx,
        )
    }

    /// Answers this delivery. Dropping a `Delivery` unanswered counts as [`Outcome::Retry`].
    pub fn ack(mut self, outcome: Outcome) {
        if let Some(tx) = self.ack.take() {
            // The component may have given up waiting (processing timeout): then the event is
            // redelivered anyway, so a lost answer changes nothing.
            let _ = tx.send(outcome);
        }
    }
}

/// A live subscription. Dropping it unsubscribes; unacknowledged events stay pending for the
/// component to redeliver (to this consumer after a restart, or to another one).
pub struct Subscription {
    pub deliveries: mpsc::Receiver<Delivery>,
    /// Keeps the component's side alive; dropped with the subscription.
    _guard: Box<dyn Send + Sync>,
}

impl Subscription {
    pub fn new(deliveries: mpsc::Receiver<Delivery>, guard: Box<dyn Send + Sync>) -> Self {
        Self {
            deliveries,
            _guard: guard,
        }
    }

    /// Next delivery, or `None` once the component closed the subscription.
    pub async fn next(&mut self) -> Option<Delivery> {
        self.deliveries.recv().await
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

#[async_trait]
pub trait PubSub: Health {
    /// Returns once the event is durably accepted by the component (for Redis: XADD answered).
    async fn publish(&self, req: PublishRequest) -> Result<()>;

    async fn subscribe(&self, req: SubscribeRequest) -> Result<Subscription>;
}
