//! `pubsub.memory`: fan-out to every live subscription of a topic, at-least-once.
//!
//! Per subscription, events wait in an inbox of `queueDepth` (default 100) events. A dispatcher
//! task (spawned by `subscribe`) hands at most `concurrency` (default 10) of them at a time to
//! the subscriber and awaits each answer for up to `processingTimeout` (default 60s):
//! - `Success` → done;
//! - `Retry`, the `Delivery` dropped unanswered, or no answer in time → delivered again (same
//!   message id) after `redeliverInterval` (default 1s);
//! - `Drop` → published to the subscription's dead-letter topic when it has one, else discarded.
//!
//! Order is not guaranteed once retries happen. `publish` returns when every subscription's
//! inbox took the event; when one is full it waits up to `publishTimeout` (default 5s, `0` = do
//! not wait) and then fails with RESOURCE_EXHAUSTED (subscriptions that took the event keep it).
//!
//! Bounded: besides `queueDepth` and `concurrency` (the count per subscription), `maxBytes`
//! (default 64 MiB) caps the bytes of all events the component holds — queued or in flight,
//! counted once per subscription holding one (topic, data, content type and metadata). A
//! publish that would cross it fails at once with RESOURCE_EXHAUSTED naming the component and
//! the bound (subscriptions that took the event keep it); answered events free their bytes.
//!
//! Like Dapr's in-memory pub/sub, nothing is stored: events published while a topic has no
//! subscription are dropped, and dropping a `Subscription` discards its unanswered and queued
//! events (there is no one to redeliver them to).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{FuturesUnordered, StreamExt};
use parking_lot::RwLock;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::error::{Error, Result};
use crate::pubsub::{
    Delivery, Message, Outcome, PubSub, PublishRequest, SubscribeRequest, Subscription,
};
use crate::spec::{BuildContext, ComponentSpec, MAX_CONCURRENCY, MAX_QUEUE_DEPTH};
use crate::Health;

use super::DEFAULT_MAX_BYTES;

#[derive(Debug)]
pub struct MemoryPubSub {
    shared: Arc<Shared>,
}

#[derive(Debug, Clone, Copy)]
struct Settings {
    queue_depth: usize,
    concurrency: usize,
    processing_timeout: Duration,
    redeliver_interval: Duration,
    publish_timeout: Duration,
    max_bytes: u64,
}

#[derive(Debug)]
struct Shared {
    /// `pubsub "<name>"`: the prefix of every error message.
    label: String,
    settings: Settings,
    topics: RwLock<HashMap<String, Vec<Sub>>>,
    next_sub: AtomicU64,
    /// Random per component instance, so ids stay unique across restarts and instances.
    id_prefix: String,
    next_msg: AtomicU64,
    /// Bytes of the events held, shared with their [`Reservation`]s (not with the component:
    /// a held event must not keep a removed component alive).
    held_bytes: Arc<AtomicU64>,
}

/// An event in a subscription's inbox or in flight, with the bytes it holds against `maxBytes`.
struct Held {
    msg: Message,
    _bytes: Reservation,
}

/// Bytes counted against `maxBytes` until dropped.
struct Reservation {
    counter: Arc<AtomicU64>,
    bytes: u64,
}

impl Reservation {
    /// Takes `bytes` unless that would put the counter over `max`.
    fn take(counter: &Arc<AtomicU64>, bytes: u64, max: u64) -> Option<Self> {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|&n| n <= max)
            })
            .ok()?;
        Some(Self {
            counter: counter.clone(),
            bytes,
        })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// What an event counts against `maxBytes`.
fn size_of(msg: &Message) -> u64 {
    let metadata: usize = msg.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    (msg.topic.len() + msg.data.len() + msg.content_type.len() + metadata) as u64
}

/// The publishing side of one subscription.
#[derive(Debug)]
struct Sub {
    id: u64,
    inbox: mpsc::Sender<Held>,
}

/// The guard a `Subscription` holds: unregisters it and stops its dispatcher when dropped.
struct Unsubscribe {
    shared: Weak<Shared>,
    topic: String,
    id: u64,
    dispatcher: AbortHandle,
}

// === impl MemoryPubSub ===

impl MemoryPubSub {
    pub fn new(spec: &ComponentSpec, _ctx: &BuildContext) -> Result<Self> {
        let settings = Settings {
            queue_depth: count(spec, "queueDepth", 100, MAX_QUEUE_DEPTH)?,
            concurrency: count(spec, "concurrency", 10, MAX_CONCURRENCY)?,
            processing_timeout: spec
                .meta_positive_duration("processingTimeout", Duration::from_secs(60))?,
            redeliver_interval: spec
                .meta_positive_duration("redeliverInterval", Duration::from_secs(1))?,
            // 0: a full queue fails the publish at once.
            publish_timeout: spec.meta_duration("publishTimeout", Duration::from_secs(5))?,
            max_bytes: super::at_least_one(spec, "maxBytes", DEFAULT_MAX_BYTES)?,
        };
        Ok(Self {
            shared: Arc::new(Shared {
                label: format!("pubsub {:?}", spec.name),
                settings,
                topics: RwLock::default(),
                next_sub: AtomicU64::new(0),
                id_prefix: format!("{:016x}", rand::random::<u64>()),
                next_msg: AtomicU64::new(0),
                held_bytes: Arc::default(),
            }),
        })
    }
}

fn count(spec: &ComponentSpec, key: &str, default: u64, max: u64) -> Result<usize> {
    let n = spec.meta_count(key, default, 1, max)?;
    // `max` fits in usize on every target Mecha builds for.
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

#[async_trait]
impl Health for MemoryPubSub {}

#[async_trait]
impl PubSub for MemoryPubSub {
    async fn publish(&self, req: PublishRequest) -> Result<()> {
        self.shared.check_topic(&req.topic)?;
        let id = self.shared.next_id();
        let msg = Message {
            id,
            topic: req.topic,
            data: req.data,
            content_type: req.content_type,
            metadata: req.metadata,
        };
        self.shared.fan_out(msg).await
    }

    async fn subscribe(&self, req: SubscribeRequest) -> Result<Subscription> {
        let shared = &self.shared;
        shared.check_topic(&req.topic)?;
        let s = shared.settings;
        let (inbox_tx, inbox_rx) = mpsc::channel(s.queue_depth);
        // At most `concurrency` deliveries are outstanding, so this channel never holds more.
        let (out_tx, out_rx) = mpsc::channel(s.concurrency);
        let id = shared.next_sub.fetch_add(1, Ordering::Relaxed);
        // Registered before returning: an event published after `subscribe` returns reaches it.
        shared
            .topics
            .write()
            .entry(req.topic.clone())
            .or_default()
            .push(Sub {
                id,
                inbox: inbox_tx,
            });
        let task = tokio::spawn(dispatch(
            Arc::downgrade(shared),
            s,
            inbox_rx,
            out_tx,
            req.dead_letter_topic.filter(|t| !t.is_empty()),
        ));
        let guard = Unsubscribe {
            shared: Arc::downgrade(shared),
            topic: req.topic,
            id,
            dispatcher: task.abort_handle(),
        };
        Ok(Subscription::new(out_rx, Box::new(guard)))
    }
}

// === impl Shared ===

impl Shared {
    fn check_topic(&self, topic: &str) -> Result<()> {
        if topic.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{}: topic is empty",
                self.label
            )));
        }
        Ok(())
    }

    fn next_id(&self) -> String {
        let n = self.next_msg.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.id_prefix)
    }

    /// Hands `msg` to every subscription of its topic (none: dropped).
    async fn fan_out(&self, msg: Message) -> Result<()> {
        // Clone the senders out so no lock is held while waiting on a full inbox.
        let targets: Vec<mpsc::Sender<Held>> = match self.topics.read().get(&msg.topic) {
            Some(subs) => subs.iter().map(|s| s.inbox.clone()).collect(),
            None => return Ok(()),
        };
        let size = size_of(&msg);
        let mut full = Vec::new();
        for tx in targets {
            let Some(bytes) = Reservation::take(&self.held_bytes, size, self.settings.max_bytes)
            else {
                return Err(Error::ResourceExhausted(format!(
                    "{}: topic {:?}: full: the event ({size} bytes) would take the events held \
                     over its limit maxBytes={} (subscribers must answer, or raise \
                     metadata.maxBytes)",
                    self.label, msg.topic, self.settings.max_bytes
                )));
            };
            let held = Held {
                msg: msg.clone(),
                _bytes: bytes,
            };
            match tx.try_send(held) {
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
                Err(mpsc::error::TrySendError::Full(m)) => full.push((tx, m)),
            }
        }
        if full.is_empty() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + self.settings.publish_timeout;
        for (tx, m) in full {
            // A closed inbox (unsubscribed meanwhile) is not an error: nobody wants the event.
            if tokio::time::timeout_at(deadline, tx.send(m)).await.is_err() {
                return Err(Error::ResourceExhausted(format!(
                    "{}: topic {:?}: a subscription's queue is full ({} events) and did not \
                     drain within {:?}",
                    self.label, msg.topic, self.settings.queue_depth, self.settings.publish_timeout
                )));
            }
        }
        Ok(())
    }

    fn unsubscribe(&self, topic: &str, id: u64) {
        let mut topics = self.topics.write();
        if let Some(subs) = topics.get_mut(topic) {
            subs.retain(|s| s.id != id);
            if subs.is_empty() {
                topics.remove(topic);
            }
        }
    }
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.unsubscribe(&self.topic, self.id);
        }
        // Discards queued and unanswered events of this subscription (see the module docs).
        self.dispatcher.abort();
    }
}

/// One subscription's dispatcher: keeps up to `concurrency` events in flight.
///
/// Holds the component weakly, so dropping the component closes the inbox and ends this task
/// (and with it the subscriber's stream).
async fn dispatch(
    shared: Weak<Shared>,
    settings: Settings,
    mut inbox: mpsc::Receiver<Held>,
    out: mpsc::Sender<Delivery>,
    dead_letter: Option<String>,
) {
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            msg = inbox.recv(), if in_flight.len() < settings.concurrency => match msg {
                Some(held) => in_flight.push(deliver(&shared, &settings, &out, dead_letter.as_deref(), held)),
                None => return,
            },
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
        }
    }
}

/// Delivers one event until it is answered `Success` or `Drop`.
async fn deliver(
    shared: &Weak<Shared>,
    settings: &Settings,
    out: &mpsc::Sender<Delivery>,
    dead_letter: Option<&str>,
    held: Held,
) {
    // The reservation in `held` is released when this returns (or is dropped).
    let msg = &held.msg;
    loop {
        let (delivery, answer) = Delivery::new(msg.clone());
        if out.send(delivery).await.is_err() {
            return; // the subscriber is gone
        }
        // No answer in time and a dropped `Delivery` both mean "try again".
        let outcome = match tokio::time::timeout(settings.processing_timeout, answer).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) | Err(_) => Outcome::Retry,
        };
        match outcome {
            Outcome::Success => return,
            Outcome::Drop => {
                if let (Some(topic), Some(shared)) = (dead_letter, shared.upgrade()) {
                    let dead = Message {
                        topic: topic.to_owned(),
                        ..msg.clone()
                    };
                    let id = dead.id.clone();
                    if let Err(e) = shared.fan_out(dead).await {
                        tracing::warn!(message_id = %id, error = %e, "dead-letter publish failed; event discarded");
                    }
                }
                return;
            }
            Outcome::Retry => {}
        }
        tokio::time::sleep(settings.redeliver_interval).await;
        if shared.strong_count() == 0 {
            return; // the component was removed
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn build(spec: ComponentSpec) -> Result<MemoryPubSub> {
        MemoryPubSub::new(&spec, &BuildContext::default())
    }

    fn sub(topic: &str) -> SubscribeRequest {
        SubscribeRequest {
            topic: topic.to_owned(),
            ..Default::default()
        }
    }

    fn publish(topic: &str, data: &'static str) -> PublishRequest {
        PublishRequest {
            topic: topic.to_owned(),
            data: data.into(),
            ..Default::default()
        }
    }

    #[test]
    fn bad_metadata_names_the_key() {
        for (key, value) in [
            ("queueDepth", "0"),
            ("queueDepth", "x"),
            ("concurrency", "0"),
            ("processingTimeout", "soon"),
            ("processingTimeout", "0s"),
            ("redeliverInterval", "-1s"),
            ("publishTimeout", "1d"),
        ] {
            let err = build(ComponentSpec::new("ps", "pubsub.memory").with(key, value))
                .expect_err(value)
                .to_string();
            assert!(
                err.starts_with(&format!("metadata.{key}:")),
                "{key}={value}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn publish_without_subscribers_is_dropped_and_empty_topic_rejected() {
        let ps = build(ComponentSpec::new("ps", "pubsub.memory")).unwrap();
        ps.publish(publish("nobody", "x")).await.unwrap();
        let err = ps.publish(publish("", "x")).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)) && err.to_string().contains("\"ps\""));
        assert!(ps.subscribe(sub("")).await.is_err());
    }

    #[tokio::test]
    async fn ids_are_unique_and_stable_across_redelivery() {
        let ps = build(ComponentSpec::new("ps", "pubsub.memory").with("redeliverInterval", "1ms"))
            .unwrap();
        let mut s = ps.subscribe(sub("t")).await.unwrap();
        ps.publish(publish("t", "a")).await.unwrap();
        ps.publish(publish("t", "b")).await.unwrap();
        let a = s.next().await.unwrap();
        let b = s.next().await.unwrap();
        assert_ne!(a.message.id, b.message.id);
        let id = a.message.id.clone();
        a.ack(Outcome::Retry);
        b.ack(Outcome::Success);
        let again = s.next().await.unwrap();
        assert_eq!(again.message.id, id);
        again.ack(Outcome::Success);
    }

    #[tokio::test]
    async fn unsubscribe_unregisters() {
        let ps = build(ComponentSpec::new("ps", "pubsub.memory")).unwrap();
        let s = ps.subscribe(sub("t")).await.unwrap();
        assert_eq!(ps.shared.topics.read().get("t").map(Vec::len), Some(1));
        drop(s);
        assert!(ps.shared.topics.read().get("t").is_none());
    }

    /// Paused clock: waiting 5s of virtual time proves nothing more comes (processingTimeout
    /// is 60s, so no redelivery interferes either).
    #[tokio::test(start_paused = true)]
    async fn concurrency_bounds_outstanding_deliveries() {
        let ps = build(ComponentSpec::new("ps", "pubsub.memory").with("concurrency", "2")).unwrap();
        let mut s = ps.subscribe(sub("t")).await.unwrap();
        for data in ["a", "b", "c"] {
            ps.publish(publish("t", data)).await.unwrap();
        }
        let first = s.next().await.unwrap();
        let _second = s.next().await.unwrap();
        // The third is held back until one of the first two is answered.
        let held = tokio::time::timeout(Duration::from_secs(5), s.next()).await;
        assert!(held.is_err(), "a third delivery was handed out: {held:?}");
        first.ack(Outcome::Success);
        let third = tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(third.message.data, "c");
    }

    /// Paused clock: the processing timeout elapses in virtual time.
    #[tokio::test(start_paused = true)]
    async fn unanswered_delivery_times_out_and_is_redelivered() {
        let ps = build(
            ComponentSpec::new("ps", "pubsub.memory")
                .with("processingTimeout", "30s")
                .with("redeliverInterval", "2s"),
        )
        .unwrap();
        let mut s = ps.subscribe(sub("t")).await.unwrap();
        ps.publish(publish("t", "x")).await.unwrap();
        let start = tokio::time::Instant::now();
        let _held = s.next().await.unwrap();
        let again = s.next().await.unwrap();
        assert!(
            start.elapsed() >= Duration::from_secs(32),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(again.message.data, "x");
    }

    #[tokio::test]
    async fn full_queue_fails_publish_after_publish_timeout() {
        let ps = build(
            ComponentSpec::new("ps", "pubsub.memory")
                .with("queueDepth", "1")
                .with("concurrency", "1")
                .with("publishTimeout", "0"),
        )
        .unwrap();
        let _s = ps.subscribe(sub("t")).await.unwrap();
        // One in flight (never answered: the subscriber does not read), one queued, then full.
        let mut last = Ok(());
        for _ in 0..5 {
            last = ps.publish(publish("t", "x")).await;
            if last.is_err() {
                break;
            }
            tokio::task::yield_now().await;
        }
        let err = last.unwrap_err();
        assert!(matches!(err, Error::ResourceExhausted(_)), "{err:?}");
        assert!(err.to_string().contains("\"t\""), "{err}");
    }

    #[tokio::test]
    async fn max_bytes_bounds_held_events_and_answers_free_them() {
        let ps = build(
            ComponentSpec::new("ps", "pubsub.memory")
                .with("concurrency", "1")
                .with("maxBytes", "10"),
        )
        .unwrap();
        let mut s = ps.subscribe(sub("t")).await.unwrap();
        // "t" + "abcd": 5 bytes each; two fit.
        ps.publish(publish("t", "abcd")).await.unwrap();
        ps.publish(publish("t", "efgh")).await.unwrap();
        let err = ps.publish(publish("t", "ijkl")).await.unwrap_err();
        assert!(
            matches!(&err, Error::ResourceExhausted(m) if m.contains("\"ps\"") && m.contains("maxBytes=10")),
            "{err:?}"
        );
        let first = s.next().await.unwrap();
        assert_eq!(first.message.data, "abcd");
        first.ack(Outcome::Success);
        // With concurrency 1 the second is handed out only once the first is finished, so its
        // bytes are free by then.
        let second = s.next().await.unwrap();
        assert_eq!(second.message.data, "efgh");
        ps.publish(publish("t", "ijkl")).await.unwrap();
        second.ack(Outcome::Success);
        assert_eq!(s.next().await.unwrap().message.data, "ijkl");
    }

    #[tokio::test]
    async fn dropping_the_component_ends_subscriptions() {
        let ps = build(ComponentSpec::new("ps", "pubsub.memory")).unwrap();
        let mut s = ps.subscribe(sub("t")).await.unwrap();
        drop(ps);
        let end = tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .unwrap();
        assert!(end.is_none());
    }
}
