//! `pubsub.redis` on Redis Streams: a topic is a stream; a subscription reads it through the
//! consumer group named by `consumerID`, so replicas of one app share its events and different
//! apps each get all of them.
//!
//! Delivery (at-least-once):
//! - publish = `XADD <topic> [MAXLEN ~ maxLenApprox] * data … contentType … metadata <json>`;
//!   it returns once Redis has answered (durable as far as Redis' persistence is configured).
//!   Streams are trimmed by default: `maxLenApprox` defaults to [`DEFAULT_MAX_LEN_APPROX`]
//!   entries per topic (`0` = never trim). `~` lets Redis trim in whole stream nodes, so a
//!   stream may hold somewhat more than the bound, never unboundedly more. Trimming discards
//!   the oldest entries whether or not every group has read them (as in Dapr), so the bound
//!   must exceed the backlog a slow consumer may build.
//! - the group is created with `XGROUP CREATE <topic> <group> 0 MKSTREAM` (as Dapr does): a new
//!   group starts at the beginning of the stream, so events published before the first
//!   subscription are delivered, not lost. The price: a brand-new `consumerID` on a long-lived
//!   topic receives the retained backlog — bound it with `maxLenApprox`.
//! - in one process, the subscriptions of one topic with one consumer id share a reader, and
//!   each of them receives every event (the building block's fan-out); an entry is
//!   acknowledged once all of them have finished with it.
//! - a reader first re-reads its consumer's own pending entries (`XREADGROUP … 0`: delivered
//!   before a restart, never acknowledged), then reads new ones (`>`).
//! - an entry is finished for a subscription when it answers SUCCESS, or DROP (copied first to
//!   its dead-letter topic when it has one; if that copy fails the entry stays pending and is
//!   dropped again on its next delivery). Then the entry is acknowledged (`XACK`).
//! - RETRY, no answer within `processingTimeout`, or a dropped delivery: the entry stays pending
//!   and is delivered to that subscription again after `redeliverInterval` (re-claiming it with
//!   `XCLAIM` first, which resets its idle time and skips it if it was acknowledged meanwhile).
//! - entries pending longer than `processingTimeout` with nobody working on them (their
//!   consumer died, or a read reply was lost with its connection) are taken over by a reclaim
//!   loop: `XAUTOCLAIM … <processingTimeout>` every `redeliverInterval`.
//! - at most `concurrency` deliveries are outstanding per subscription (handed out, not yet
//!   answered); the reader waits while they are, and reads at most `concurrency` entries ahead
//!   (backpressure, not buffering); `queueDepth` bounds the subscription's channel.
//! - NOGROUP (stream deleted, Redis restarted without persistence) → the group is created again
//!   and reading continues; connection loss → reconnect and continue.
//!
//! Metadata: `consumerID` (default: the app id; a subscription's own `consumerID` metadata
//! overrides it), `processingTimeout` (default 60s), `redeliverInterval` (default 15s),
//! `maxLenApprox` (default 100 000, `0` = never trim), `queueDepth` (default 100), `concurrency` (default 10),
//! plus the connection metadata of every Redis component. The consumer name inside the group is
//! the consumer id, as in Dapr, so a restarted sidecar finds its own pending entries at once;
//! stream keys are the topic names (no `keyPrefix`), so Dapr and Mecha sidecars can share
//! topics. Needs Redis >= 6.2 (XAUTOCLAIM).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use redis::Value;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::backend::{has_code, into_bytes, into_items, into_string, Backend};
use super::settings::Settings;
use crate::error::{Error, Result};
use crate::pubsub::{
    Delivery, Message, Metadata, Outcome, PubSub, PublishRequest, SubscribeRequest, Subscription,
};
use crate::spec::{BuildContext, ComponentSpec, MAX_CONCURRENCY, MAX_QUEUE_DEPTH};
use crate::Health;

const FIELD_DATA: &str = "data";
const FIELD_CONTENT_TYPE: &str = "contentType";
const FIELD_METADATA: &str = "metadata";

/// How long one blocking read waits for new entries before asking again.
const BLOCK: Duration = Duration::from_secs(1);
/// Pause after a failed read, doubling up to the maximum while Redis stays unreachable.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Default `maxLenApprox`: entries kept per topic stream. Without a bound a topic's stream grows
/// for as long as Redis runs (nothing else deletes acknowledged entries); 100 000 events is far
/// more backlog than a healthy consumer builds, and at typical event sizes a few tens of MiB of
/// Redis memory per topic.
pub const DEFAULT_MAX_LEN_APPROX: u64 = 100_000;

#[derive(Debug, Clone)]
struct Options {
    consumer_id: String,
    processing_timeout: Duration,
    redeliver_interval: Duration,
    max_len: Option<u64>,
    queue_depth: usize,
    concurrency: usize,
}

/// (topic, consumer group)
type ReaderKey = (String, String);

/// The Redis Streams pub/sub.
#[derive(Clone)]
pub struct RedisPubSub {
    backend: Arc<Backend>,
    opts: Arc<Options>,
    /// The live readers of this component, one per (topic, group), each shared by the local
    /// subscriptions of that pair.
    readers: Arc<Mutex<HashMap<ReaderKey, Arc<Reader>>>>,
    next_outlet: Arc<AtomicU64>,
}

impl std::fmt::Debug for RedisPubSub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPubSub")
            .field("backend", &self.backend)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl RedisPubSub {
    /// Parses the metadata; connects on first use.
    pub fn new(spec: &ComponentSpec, ctx: &BuildContext) -> Result<Self> {
        let consumer_id = spec.meta_string_or("consumerID", "").trim().to_owned();
        let consumer_id = if consumer_id.is_empty() {
            ctx.app_id.clone()
        } else {
            consumer_id
        };
        if consumer_id.is_empty() {
            return Err(Error::InvalidArgument(
                "metadata.consumerID: is required when the app id is empty".to_owned(),
            ));
        }
        let positive = |key: &str, default: u64, max: u64| -> Result<usize> {
            let n = spec.meta_count(key, default, 1, max)?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        };
        let max_len = match spec.meta_u64("maxLenApprox", DEFAULT_MAX_LEN_APPROX)? {
            0 => None,
            n => Some(n),
        };
        let non_zero = |key: &str, default: Duration| spec.meta_positive_duration(key, default);
        let opts = Options {
            consumer_id,
            processing_timeout: non_zero("processingTimeout", Duration::from_secs(60))?,
            redeliver_interval: non_zero("redeliverInterval", Duration::from_secs(15))?,
            max_len,
            queue_depth: positive("queueDepth", 100, MAX_QUEUE_DEPTH)?,
            concurrency: positive("concurrency", 10, MAX_CONCURRENCY)?,
        };
        Ok(Self {
            backend: Arc::new(Backend::new(Settings::from_spec(spec, ctx)?)?),
            opts: Arc::new(opts),
            readers: Arc::default(),
            next_outlet: Arc::default(),
        })
    }

    fn check_topic(&self, topic: &str) -> Result<()> {
        if topic.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{}: topic is empty",
                self.backend.label()
            )));
        }
        Ok(())
    }
}

/// `XADD` with the event's fields; shared by publish and the dead-letter copy.
fn xadd(
    topic: &str,
    max_len: Option<u64>,
    data: &[u8],
    content_type: &str,
    metadata: Option<&[u8]>,
) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(topic);
    if let Some(n) = max_len {
        cmd.arg("MAXLEN").arg("~").arg(n);
    }
    cmd.arg("*").arg(FIELD_DATA).arg(data);
    if !content_type.is_empty() {
        cmd.arg(FIELD_CONTENT_TYPE).arg(content_type);
    }
    if let Some(m) = metadata {
        cmd.arg(FIELD_METADATA).arg(m);
    }
    cmd
}

/// `XGROUP CREATE <topic> <group> 0 MKSTREAM`; an existing group is fine.
async fn ensure_group(backend: &Backend, topic: &str, group: &str) -> Result<()> {
    let mut cmd = redis::cmd("XGROUP");
    cmd.arg("CREATE")
        .arg(topic)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM");
    backend
        .call("create consumer group for topic", topic, |mut c| {
            let cmd = &cmd;
            async move {
                match cmd.query_async::<Value>(&mut c).await {
                    Err(e) if has_code(&e, "BUSYGROUP") => Ok(()),
                    other => other.map(drop),
                }
            }
        })
        .await
}

#[async_trait]
impl Health for RedisPubSub {
    async fn ping(&self) -> Result<()> {
        self.backend.ping().await
    }
}

#[async_trait]
impl PubSub for RedisPubSub {
    async fn publish(&self, req: PublishRequest) -> Result<()> {
        self.check_topic(&req.topic)?;
        let metadata = if req.metadata.is_empty() {
            None
        } else {
            Some(serde_json::to_vec(&req.metadata).map_err(|e| {
                Error::InvalidArgument(format!(
                    "{}: metadata of an event for topic {:?} cannot be encoded: {e}",
                    self.backend.label(),
                    req.topic
                ))
            })?)
        };
        let cmd = xadd(
            &req.topic,
            self.opts.max_len,
            &req.data,
            &req.content_type,
            metadata.as_deref(),
        );
        let _id: Value = self
            .backend
            .call("publish to topic", &req.topic, |mut c| {
                let cmd = &cmd;
                async move { cmd.query_async(&mut c).await }
            })
            .await?;
        Ok(())
    }

    async fn subscribe(&self, req: SubscribeRequest) -> Result<Subscription> {
        self.check_topic(&req.topic)?;
        let group = req
            .metadata
            .get("consumerID")
            .map(|c| c.trim())
            .filter(|c| !c.is_empty())
            .unwrap_or(&self.opts.consumer_id)
            .to_owned();
        // Create the group now so events published after this returns are never missed. While
        // Redis is down the subscription still starts, and the reader creates the group later.
        match ensure_group(&self.backend, &req.topic, &group).await {
            Ok(()) => {}
            Err(e @ Error::Unavailable(_)) => {
                tracing::warn!(error = %e, "subscription starts while redis is unreachable");
            }
            Err(e) => return Err(e),
        }
        let (tx, rx) = mpsc::channel(self.opts.queue_depth);
        let outlet = Arc::new(Outlet {
            id: self.next_outlet.fetch_add(1, Ordering::Relaxed),
            tx,
            permits: Arc::new(Semaphore::new(self.opts.concurrency)),
            dead_letter: req.dead_letter_topic.filter(|t| !t.is_empty()),
        });
        let key = (req.topic, group);
        let reader = {
            let mut readers = self.readers.lock();
            match readers.get(&key) {
                Some(reader) => {
                    reader.outlets.lock().push(outlet.clone());
                    reader.clone()
                }
                None => {
                    let reader = Arc::new(Reader {
                        backend: self.backend.clone(),
                        opts: self.opts.clone(),
                        topic: key.0.clone(),
                        consumer: key.1.clone(),
                        group: key.1.clone(),
                        outlets: Mutex::new(vec![outlet.clone()]),
                        in_flight: Mutex::default(),
                        tasks: Mutex::default(),
                    });
                    // Started with its first subscription in place: nothing is read for nobody.
                    reader.start();
                    readers.insert(key.clone(), reader.clone());
                    reader
                }
            }
        };
        let leave = Leave {
            readers: self.readers.clone(),
            key,
            reader,
            outlet: outlet.id,
        };
        Ok(Subscription::new(rx, Box::new(leave)))
    }
}

/// Detaches a subscription from its reader when dropped; the last one stops the reader.
/// Deliveries in flight stay pending in Redis and are delivered again.
struct Leave {
    readers: Arc<Mutex<HashMap<ReaderKey, Arc<Reader>>>>,
    key: ReaderKey,
    reader: Arc<Reader>,
    outlet: u64,
}

impl Drop for Leave {
    fn drop(&mut self) {
        // The registry lock is held throughout, so a concurrent subscribe either joins this
        // reader before it stops or starts a new one after.
        let mut readers = self.readers.lock();
        let empty = {
            let mut outlets = self.reader.outlets.lock();
            outlets.retain(|o| o.id != self.outlet);
            outlets.is_empty()
        };
        if empty {
            self.reader.stop();
            if readers
                .get(&self.key)
                .is_some_and(|r| Arc::ptr_eq(r, &self.reader))
            {
                readers.remove(&self.key);
            }
        }
    }
}

/// One subscription's side: where its deliveries go, and its bound on outstanding ones.
struct Outlet {
    id: u64,
    tx: mpsc::Sender<Delivery>,
    permits: Arc<Semaphore>,
    dead_letter: Option<String>,
}

/// One stream entry. `fields` is `None` when the entry was trimmed or deleted while pending.
struct Entry {
    id: String,
    fields: Option<Fields>,
}

/// An event as stored: kept raw so a dead-letter copy is byte-for-byte the original.
#[derive(Default)]
struct Fields {
    data: Bytes,
    content_type: String,
    metadata: Option<Bytes>,
}

/// One entry being handled by the local subscriptions. It is acknowledged once every
/// subscription it was delivered to has finished with it (SUCCESS, or DROP handled).
struct FanOut {
    id: String,
    fields: Fields,
    delivered: AtomicUsize,
    finished: AtomicUsize,
    /// Settle tasks still running, plus the dispatcher itself until it has handed the entry to
    /// every subscription: the last one out acknowledges.
    running: AtomicUsize,
}

/// Reads one (topic, group) for the local subscriptions: XREADGROUP, the reclaim loop, XACK.
struct Reader {
    backend: Arc<Backend>,
    opts: Arc<Options>,
    topic: String,
    group: String,
    consumer: String,
    outlets: Mutex<Vec<Arc<Outlet>>>,
    /// Entries read or reclaimed and not finished yet: never handed out twice at once.
    in_flight: Mutex<HashSet<String>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

enum Read {
    Entries(Vec<Entry>),
    /// The stream or the group is gone: create it again.
    NoGroup,
}

impl Reader {
    fn start(self: &Arc<Self>) {
        let tasks = vec![
            tokio::spawn(self.clone().read_loop()),
            tokio::spawn(self.clone().reclaim_loop()),
        ];
        *self.tasks.lock() = tasks;
    }

    /// Stops reading; also ends the tasks' hold on `self`.
    fn stop(&self) {
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
    }

    async fn read_loop(self: Arc<Self>) {
        let timeout = BLOCK + self.backend.s.timeout;
        let connect = || self.backend.dedicated(timeout, "read topic", &self.topic);
        let mut conn = match connect() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "subscription reader cannot start");
                return;
            }
        };
        let mut failing = Failing::default();
        // Own pending entries first (from a previous run of this consumer), then new ones.
        let mut pending_from = Some("0".to_owned());
        loop {
            let read = self
                .read(
                    &conn,
                    timeout,
                    pending_from.as_deref(),
                    self.opts.concurrency,
                )
                .await;
            match read {
                Ok(Read::Entries(entries)) => {
                    failing.recovered(&self);
                    if entries.is_empty() && pending_from.is_some() {
                        pending_from = None;
                        continue;
                    }
                    if pending_from.is_some() {
                        pending_from = entries.last().map(|e| e.id.clone());
                    }
                    // Marked in flight before waiting for delivery slots, so the reclaim loop
                    // does not hand them out a second time meanwhile (nor this loop what the
                    // reclaim loop already has).
                    let fresh: Vec<Entry> = {
                        let mut in_flight = self.in_flight.lock();
                        entries
                            .into_iter()
                            .filter(|e| in_flight.insert(e.id.clone()))
                            .collect()
                    };
                    for entry in fresh {
                        self.dispatch(entry).await;
                    }
                }
                Ok(Read::NoGroup) => {
                    tracing::info!(topic = %self.topic, group = %self.group, "consumer group missing; creating it again");
                    if let Err(e) = ensure_group(&self.backend, &self.topic, &self.group).await {
                        failing.failed(&e).await;
                    }
                    pending_from = Some("0".to_owned());
                }
                Err(e) => {
                    failing.failed(&e).await;
                    // A fresh connection: the manager would stay stuck on a failed handshake
                    // that was not an I/O error (e.g. a server still loading).
                    if let Ok(c) = connect() {
                        conn = c;
                    }
                }
            }
        }
    }

    /// `XREADGROUP`: pending entries after `pending_from`, or new ones (blocking) when `None`.
    async fn read(
        &self,
        conn: &ConnectionManager,
        timeout: Duration,
        pending_from: Option<&str>,
        count: usize,
    ) -> Result<Read> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count);
        if pending_from.is_none() {
            cmd.arg("BLOCK").arg(BLOCK.as_millis() as u64);
        }
        cmd.arg("STREAMS")
            .arg(&self.topic)
            .arg(pending_from.unwrap_or(">"));
        self.backend
            .call_on(conn, timeout, "read topic", &self.topic, |mut c| {
                let cmd = &cmd;
                async move {
                    match cmd.query_async::<Value>(&mut c).await {
                        Ok(v) => Ok(Read::Entries(parse_read(v))),
                        Err(e) if has_code(&e, "NOGROUP") => Ok(Read::NoGroup),
                        Err(e) => Err(e),
                    }
                }
            })
            .await
    }

    /// Takes over entries pending longer than `processingTimeout` that nobody here works on.
    async fn reclaim_loop(self: Arc<Self>) {
        let mut tick = match crate::time::interval(
            &format!("{} redeliverInterval", self.topic),
            self.opts.redeliver_interval,
        ) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "pending entries are not reclaimed");
                return;
            }
        };
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let min_idle = self.opts.processing_timeout.as_millis() as u64;
        loop {
            tick.tick().await;
            let mut cursor = "0-0".to_owned();
            loop {
                let mut cmd = redis::cmd("XAUTOCLAIM");
                cmd.arg(&self.topic)
                    .arg(&self.group)
                    .arg(&self.consumer)
                    .arg(min_idle)
                    .arg(&cursor)
                    .arg("COUNT")
                    .arg(self.opts.concurrency);
                let res = self
                    .backend
                    .call("reclaim pending events of topic", &self.topic, |mut c| {
                        let cmd = &cmd;
                        async move {
                            match cmd.query_async::<Value>(&mut c).await {
                                Ok(v) => Ok(Some(parse_autoclaim(v))),
                                Err(e) if has_code(&e, "NOGROUP") => Ok(None),
                                Err(e) => Err(e),
                            }
                        }
                    })
                    .await;
                match res {
                    Ok(Some((next, entries))) => {
                        for entry in entries {
                            if self.in_flight.lock().insert(entry.id.clone()) {
                                self.dispatch(entry).await;
                            }
                        }
                        if next == "0-0" || next.is_empty() {
                            break;
                        }
                        cursor = next;
                    }
                    // The reader recreates the group.
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "reclaim failed; trying again next interval");
                        break;
                    }
                }
            }
        }
    }

    /// Hands one entry (already marked in flight) to every subscription, waiting for a
    /// delivery slot in each (backpressure), and spawns the wait for each answer.
    async fn dispatch(self: &Arc<Self>, entry: Entry) {
        let Some(fields) = entry.fields else {
            // Trimmed while pending: nothing left to deliver.
            self.ack(&entry.id).await;
            self.in_flight.lock().remove(&entry.id);
            return;
        };
        let fan = Arc::new(FanOut {
            id: entry.id,
            fields,
            delivered: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            running: AtomicUsize::new(1),
        });
        let outlets = self.outlets.lock().clone();
        for outlet in outlets {
            let Ok(slot) = outlet.permits.clone().acquire_owned().await else {
                continue;
            };
            let (delivery, answer) = Delivery::new(self.message(&fan.id, &fan.fields));
            if outlet.tx.send(delivery).await.is_err() {
                continue; // that subscription is gone
            }
            fan.delivered.fetch_add(1, Ordering::SeqCst);
            fan.running.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(self.clone().settle(outlet, fan.clone(), answer, slot));
        }
        self.finish(&fan, false).await;
    }

    fn message(&self, id: &str, fields: &Fields) -> Message {
        let metadata = match &fields.metadata {
            Some(raw) => serde_json::from_slice(raw).unwrap_or_else(|e| {
                tracing::warn!(topic = %self.topic, id, error = %e, "event metadata is not a JSON object of strings; delivering without it");
                Metadata::new()
            }),
            None => Metadata::new(),
        };
        Message {
            id: id.to_owned(),
            topic: self.topic.clone(),
            data: fields.data.clone(),
            content_type: fields.content_type.clone(),
            metadata,
        }
    }

    /// Waits for one subscription's answer and acts on it. RETRY (or no answer in time, or the
    /// delivery dropped) → delivered to it again after `redeliverInterval`, as long as it lives;
    /// once it is gone the entry stays pending in Redis for the next consumer.
    async fn settle(
        self: Arc<Self>,
        outlet: Arc<Outlet>,
        fan: Arc<FanOut>,
        mut answer: oneshot::Receiver<Outcome>,
        slot: OwnedSemaphorePermit,
    ) {
        let mut slot = Some(slot);
        let done = loop {
            let outcome = match tokio::time::timeout(self.opts.processing_timeout, answer).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) | Err(_) => Outcome::Retry,
            };
            match outcome {
                Outcome::Success => break true,
                Outcome::Drop => break self.copy_to_dead_letter(&outlet, &fan).await,
                Outcome::Retry => {
                    // Free the slot while waiting, so retries do not starve new events.
                    slot.take();
                    tokio::time::sleep(self.opts.redeliver_interval).await;
                    if outlet.tx.is_closed() {
                        break false;
                    }
                    let Ok(next_slot) = outlet.permits.clone().acquire_owned().await else {
                        break false;
                    };
                    if !self.claim(&fan.id).await {
                        break false;
                    }
                    let (delivery, next_answer) = Delivery::new(self.message(&fan.id, &fan.fields));
                    if outlet.tx.send(delivery).await.is_err() {
                        break false;
                    }
                    answer = next_answer;
                    slot = Some(next_slot);
                }
            }
        };
        drop(slot);
        self.finish(&fan, done).await;
    }

    /// One holder of `fan` is through (`done`: its subscription finished with the entry). The
    /// last one acknowledges the entry if every subscription it reached finished with it;
    /// otherwise the entry stays pending and the reclaim loop brings it back.
    async fn finish(&self, fan: &FanOut, done: bool) {
        if done {
            fan.finished.fetch_add(1, Ordering::SeqCst);
        }
        if fan.running.fetch_sub(1, Ordering::SeqCst) != 1 {
            return;
        }
        let delivered = fan.delivered.load(Ordering::SeqCst);
        if delivered > 0 && fan.finished.load(Ordering::SeqCst) == delivered {
            self.ack(&fan.id).await;
        }
        self.in_flight.lock().remove(&fan.id);
    }

    /// Re-claims a pending entry for this consumer before delivering it again: resets its idle
    /// time (so no reclaim loop takes it meanwhile) and tells whether it is still pending
    /// (acknowledged elsewhere, or trimmed → `false`). While Redis is unreachable the entry is
    /// delivered anyway: its acknowledgement will fail and it stays pending.
    async fn claim(&self, id: &str) -> bool {
        let mut cmd = redis::cmd("XCLAIM");
        cmd.arg(&self.topic)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(0)
            .arg(id)
            .arg("JUSTID");
        let res = self
            .backend
            .call("claim pending event of topic", &self.topic, |mut c| {
                let cmd = &cmd;
                async move {
                    match cmd.query_async::<Value>(&mut c).await {
                        Ok(v) => Ok(into_items(v).is_some_and(|ids| !ids.is_empty())),
                        Err(e) if has_code(&e, "NOGROUP") => Ok(false),
                        Err(e) => Err(e),
                    }
                }
            })
            .await;
        res.unwrap_or(true)
    }

    /// `true` when the subscription is finished with a dropped event: copied to its dead-letter
    /// topic, or it has none.
    async fn copy_to_dead_letter(&self, outlet: &Outlet, fan: &FanOut) -> bool {
        let Some(dl) = &outlet.dead_letter else {
            return true;
        };
        let f = &fan.fields;
        let cmd = xadd(
            dl,
            self.opts.max_len,
            &f.data,
            &f.content_type,
            f.metadata.as_deref(),
        );
        let res = self
            .backend
            .call("publish to dead-letter topic", dl, |mut c| {
                let cmd = &cmd;
                async move { cmd.query_async::<Value>(&mut c).await }
            })
            .await;
        match res {
            Ok(_) => true,
            Err(e) => {
                // Not acknowledged: the event comes back, and is dropped again then.
                tracing::warn!(topic = %self.topic, id = %fan.id, error = %e, "dead-letter copy failed; event stays pending");
                false
            }
        }
    }

    async fn ack(&self, id: &str) {
        let mut cmd = redis::cmd("XACK");
        cmd.arg(&self.topic).arg(&self.group).arg(id);
        let res = self
            .backend
            .call("acknowledge event of topic", &self.topic, |mut c| {
                let cmd = &cmd;
                async move { cmd.query_async::<Value>(&mut c).await }
            })
            .await;
        if let Err(e) = res {
            // Not acknowledged: the event is delivered again later (at-least-once).
            tracing::warn!(topic = %self.topic, id, error = %e, "acknowledgement failed; event will be redelivered");
        }
    }
}

/// Logs a run of read failures once (and its end), pausing longer after each.
#[derive(Default)]
struct Failing {
    pause: Option<Duration>,
}

impl Failing {
    async fn failed(&mut self, e: &Error) {
        let pause = match self.pause {
            None => {
                tracing::warn!(error = %e, "subscription cannot read; retrying");
                RETRY_MIN
            }
            Some(p) => {
                tracing::debug!(error = %e, "subscription still cannot read");
                (p * 2).min(RETRY_MAX)
            }
        };
        self.pause = Some(pause);
        tokio::time::sleep(pause).await;
    }

    fn recovered(&mut self, sub: &Reader) {
        if self.pause.take().is_some() {
            tracing::info!(topic = %sub.topic, group = %sub.group, "subscription reads again");
        }
    }
}

// === Reply parsing (by hand: pending entries whose event was trimmed come back as nil, which
// the crate's typed stream replies do not model) ===

/// `XREADGROUP`: RESP2 `[[stream, entries]]`, RESP3 `{stream: entries}`, or nil on timeout.
fn parse_read(v: Value) -> Vec<Entry> {
    let mut out = Vec::new();
    match v {
        Value::Map(streams) => {
            for (_, entries) in streams {
                parse_entries(entries, &mut out);
            }
        }
        Value::Array(streams) => {
            for stream in streams {
                if let Some(entries) = into_items(stream).and_then(|s| s.into_iter().nth(1)) {
                    parse_entries(entries, &mut out);
                }
            }
        }
        _ => {}
    }
    out
}

/// `XAUTOCLAIM`: `[next cursor, entries, deleted ids]`.
fn parse_autoclaim(v: Value) -> (String, Vec<Entry>) {
    let mut items = into_items(v).unwrap_or_default().into_iter();
    let next = items.next().and_then(into_string).unwrap_or_default();
    let mut entries = Vec::new();
    if let Some(claimed) = items.next() {
        parse_entries(claimed, &mut entries);
    }
    (next, entries)
}

fn parse_entries(v: Value, out: &mut Vec<Entry>) {
    for entry in into_items(v).unwrap_or_default() {
        let Some(mut parts) = into_items(entry).map(Vec::into_iter) else {
            continue;
        };
        let Some(id) = parts.next().and_then(into_string) else {
            continue;
        };
        let fields = parts.next().and_then(into_items).map(parse_fields);
        out.push(Entry { id, fields });
    }
}

fn parse_fields(kv: Vec<Value>) -> Fields {
    let mut fields = Fields::default();
    let mut it = kv.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        let (Some(k), Some(v)) = (into_string(k), into_bytes(v)) else {
            continue;
        };
        match k.as_str() {
            FIELD_DATA => fields.data = v,
            FIELD_CONTENT_TYPE => fields.content_type = String::from_utf8_lossy(&v).into_owned(),
            FIELD_METADATA => fields.metadata = Some(v),
            _ => {}
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn max_len(extra: &[(&str, &str)]) -> Option<u64> {
        let mut spec = ComponentSpec::new("ps", "pubsub.redis").with("redisHost", "127.0.0.1:1");
        for (k, v) in extra {
            spec = spec.with(k, v);
        }
        RedisPubSub::new(&spec, &BuildContext::default())
            .unwrap()
            .opts
            .max_len
    }

    fn args(cmd: &redis::Cmd) -> Vec<String> {
        cmd.args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                _ => "<other>".to_owned(),
            })
            .collect()
    }

    #[test]
    fn streams_are_trimmed_by_default_and_zero_disables_it() {
        assert_eq!(max_len(&[]), Some(DEFAULT_MAX_LEN_APPROX));
        assert_eq!(max_len(&[("maxLenApprox", "7")]), Some(7));
        assert_eq!(max_len(&[("maxLenApprox", "0")]), None);
        assert_eq!(
            args(&xadd("t", Some(DEFAULT_MAX_LEN_APPROX), b"d", "", None))[..5],
            ["XADD", "t", "MAXLEN", "~", "100000"]
        );
        assert_eq!(
            args(&xadd("t", None, b"d", "", None))[..3],
            ["XADD", "t", "*"]
        );
    }
}
