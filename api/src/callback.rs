//! Push delivery of pub/sub events to an app that implements Layotto's `AppCallback` service.
//!
//! [`run_app_callback`] is Layotto's start-up subscription flow, kept running and kept in step
//! with config updates:
//! 1. call the app's `ListTopicSubscriptions`, retrying with backoff until the app answers
//!    (each failure is logged with the address). Calls go over the [`AppChannel`] the caller
//!    gives — in the sidecar, the mesh client's channel to the local app's cluster, so each
//!    call has the mesh's timeout, per-cluster metrics and outlier accounting;
//! 2. subscribe every listed `(pubsub_name, topic, metadata)`; the dead-letter topic comes from
//!    the subscription's metadata key [`DEAD_LETTER_METADATA`];
//! 3. for every delivery call `OnTopicEvent` (at most `maxConcurrentHandlers` calls at once per
//!    subscription, from its metadata; [`DEFAULT_HANDLERS`] when absent) and acknowledge with the app's answer: SUCCESS, RETRY or DROP. A failed
//!    call is RETRY, except UNIMPLEMENTED, which Layotto and Dapr treat as "this app will never
//!    take it": DROP (to the dead-letter topic when one is set).
//!
//! The subscription set is re-synced when
//! - a config update publishes a new registry: a subscription whose pubsub component is the
//!   same object keeps flowing; one whose component was changed is resubscribed on the new
//!   instance; one whose component was removed stops (logged);
//! - every `relist_every`, and as soon as the app comes back after being gone (it restarted,
//!   perhaps with other topics): the app's subscriptions are listed again. "Gone" is seen on
//!   an HTTP/2 connection of its own that the syncer holds to the app (a restart closes it),
//!   and when a delivery finds the app unreachable.
//!
//! Everything stops when the shutdown flag turns true (or its sender is dropped); deliveries in
//! flight are then dropped unanswered, which the component counts as RETRY.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mecha_capabilities::pubsub::{Outcome, PubSub, SubscribeRequest, Subscription};
use mecha_capabilities::registry::{Block, Lifecycle};
use mecha_capabilities::{Error, Registry};
use mecha_proto::layotto::app_callback_client::AppCallbackClient;
use mecha_proto::layotto::TopicSubscription;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;
use tonic::Code;
use tower::util::BoxCloneSyncService;

use crate::layotto::convert;

/// Subscription metadata key naming the dead-letter topic (Dapr's spelling).
pub const DEAD_LETTER_METADATA: &str = "deadLetterTopic";
/// Subscription metadata key bounding the `OnTopicEvent` calls outstanding at once for that
/// subscription (Dapr's `maxConcurrentHandlers`-style setting).
pub const MAX_HANDLERS_METADATA: &str = "maxConcurrentHandlers";
/// `OnTopicEvent` calls outstanding at once per subscription when its metadata sets none.
pub const DEFAULT_HANDLERS: usize = 16;
/// The largest `maxConcurrentHandlers` honoured.
pub const MAX_HANDLERS: usize = 1024;
/// Deadline of one callback RPC; past it the event is retried.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the app's subscriptions are listed again by default (an app that restarted
/// with other topics is served within this, or at once when a delivery found it gone).
pub const DEFAULT_RELIST_INTERVAL: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The transport callback calls go over: any tower service carrying gRPC requests to the app
/// (the sidecar gives the mesh client's channel; tests may give a tonic `Channel`). It never
/// fails as a service: a call that got no answer is answered with a gRPC status naming why.
pub type AppChannel = BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    std::convert::Infallible,
>;

type Client = AppCallbackClient<AppChannel>;

/// Delivers events over `channel` to the app at `endpoint` (`host:port`: where the app's
/// presence is watched, and what logs name) from the components of the registry `registries`
/// holds (a new value after each config update), until `shutdown` turns true.
/// `relist_every` must not be zero.
pub async fn run_app_callback(
    mut registries: watch::Receiver<Arc<Registry>>,
    app_id: String,
    channel: AppChannel,
    endpoint: String,
    relist_every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut sync = Syncer {
        client: AppCallbackClient::new(channel),
        app_id: Arc::from(app_id),
        endpoint,
        relist: Arc::new(Notify::new()),
        shutdown: shutdown.clone(),
        running: HashMap::new(),
        tasks: JoinSet::new(),
    };
    let relist_every = relist_every.max(Duration::from_millis(1));
    let presence = tokio::spawn(watch_presence(
        authority(&sync.endpoint),
        sync.relist.clone(),
    ));
    let mut wanted = tokio::select! {
        s = list_subscriptions(sync.client.clone(), &sync.endpoint) => s,
        _ = shutdown_requested(&mut shutdown) => return,
    };
    if wanted.is_empty() {
        tracing::info!(endpoint = %sync.endpoint, "app subscribes to no topics");
    }
    let registry = registries.borrow_and_update().clone();
    sync.apply(&wanted, &registry);
    let mut next_list = tokio::time::Instant::now() + relist_every;
    loop {
        let relist = sync.relist.clone();
        let relist_now = tokio::select! {
            _ = shutdown_requested(&mut shutdown) => break,
            changed = registries.changed() => {
                if changed.is_err() {
                    break;
                }
                false
            }
            _ = tokio::time::sleep_until(next_list) => true,
            _ = relist.notified() => true,
            Some(_) = sync.tasks.join_next() => false,
        };
        if relist_now {
            wanted = tokio::select! {
                s = list_subscriptions(sync.client.clone(), &sync.endpoint) => s,
                _ = shutdown_requested(&mut shutdown) => break,
            };
            next_list = tokio::time::Instant::now() + relist_every;
        }
        let registry = registries.borrow_and_update().clone();
        sync.apply(&wanted, &registry);
    }
    presence.abort();
    sync.tasks.shutdown().await;
}

/// `host:port` of an endpoint given as `host:port` or `http://host:port/…`.
fn authority(endpoint: &str) -> String {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

/// Holds an HTTP/2 connection of its own to the app; when it is lost (the app stopped or
/// restarted) and can be made again, the app is back: ask for a re-list. A connection the
/// app closes quickly (an idle timeout) is not taken for a restart more than every
/// [`BACKOFF_MAX`].
async fn watch_presence(addr: String, relist: Arc<Notify>) {
    let mut backoff = BACKOFF_START;
    let mut lost = false;
    loop {
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let tcp = tokio::net::TcpStream::connect(&addr).await.ok()?;
            h2::client::handshake(tcp).await.ok()
        })
        .await
        .ok()
        .flatten();
        match connected {
            Some((send, connection)) => {
                if lost {
                    tracing::info!(endpoint = %addr, "app is back: listing its subscriptions again");
                    relist.notify_one();
                }
                let since = tokio::time::Instant::now();
                // Resolves when the app closes the connection or goes away.
                let _ = connection.await;
                drop(send);
                lost = true;
                if since.elapsed() > BACKOFF_MAX {
                    backoff = BACKOFF_START;
                }
            }
            None => lost = true,
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One running subscription: which component instance it reads and with what request.
struct Running {
    lifecycle: Arc<Lifecycle>,
    sub: TopicSubscription,
    task: tokio::task::AbortHandle,
}

/// Keeps the running subscriptions equal to what the app asks for, on the current components.
struct Syncer {
    client: Client,
    app_id: Arc<str>,
    endpoint: String,
    /// Workers ask for a re-list when the app looks gone.
    relist: Arc<Notify>,
    shutdown: watch::Receiver<bool>,
    running: HashMap<(String, String), Running>,
    tasks: JoinSet<()>,
}

impl Syncer {
    fn apply(&mut self, wanted: &[TopicSubscription], registry: &Registry) {
        let mut keep = HashMap::new();
        for s in wanted {
            if s.topic.is_empty() {
                tracing::error!(endpoint = %self.endpoint, pubsub = %s.pubsub_name,
                    "app subscription has an empty topic; skipped");
                continue;
            }
            let key = (s.pubsub_name.clone(), s.topic.clone());
            if keep.contains_key(&key) {
                tracing::warn!(endpoint = %self.endpoint, pubsub = %s.pubsub_name, topic = %s.topic,
                    "app lists the same subscription twice; the first is used");
                continue;
            }
            let (Some(info), Ok(pubsub)) = (
                registry.find(Block::PubSub, &s.pubsub_name),
                registry.pubsub(&s.pubsub_name),
            ) else {
                if let Err(e) = registry.pubsub(&s.pubsub_name) {
                    tracing::error!(endpoint = %self.endpoint, topic = %s.topic, error = %e,
                        "app subscribes to an unknown pubsub; skipped");
                }
                continue;
            };
            match self.running.remove(&key) {
                Some(r)
                    // A worker that gave up (the request itself was refused) stays given up
                    // until the component or the subscription changes.
                    if Arc::ptr_eq(&r.lifecycle, &info.lifecycle) && r.sub == *s =>
                {
                    keep.insert(key, r);
                }
                old => {
                    if let Some(r) = old {
                        tracing::info!(pubsub = %s.pubsub_name, topic = %s.topic,
                            "component or subscription changed: resubscribing for the app");
                        r.task.abort();
                    }
                    let worker = Worker {
                        client: self.client.clone(),
                        app_id: self.app_id.clone(),
                        endpoint: self.endpoint.clone(),
                        limit: Arc::new(Semaphore::new(handlers(&s.metadata))),
                        relist: self.relist.clone(),
                        shutdown: self.shutdown.clone(),
                    };
                    let task = self.tasks.spawn(worker.run(pubsub.clone(), s.clone()));
                    keep.insert(
                        key,
                        Running {
                            lifecycle: info.lifecycle.clone(),
                            sub: s.clone(),
                            task,
                        },
                    );
                }
            }
        }
        for ((pubsub, topic), r) in self.running.drain() {
            tracing::info!(%pubsub, %topic,
                "no longer subscribed for the app (the app or config dropped it)");
            r.task.abort();
        }
        self.running = keep;
    }
}

/// The `OnTopicEvent` calls a subscription may have outstanding at once: its
/// `maxConcurrentHandlers` metadata (1 to [`MAX_HANDLERS`]), else [`DEFAULT_HANDLERS`].
fn handlers(metadata: &HashMap<String, String>) -> usize {
    match metadata.get(MAX_HANDLERS_METADATA) {
        None => DEFAULT_HANDLERS,
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=MAX_HANDLERS).contains(&n) => n,
            _ => {
                tracing::warn!(value = %v, default = DEFAULT_HANDLERS,
                    "subscription metadata {MAX_HANDLERS_METADATA} must be 1 to {MAX_HANDLERS}; using the default");
                DEFAULT_HANDLERS
            }
        },
    }
}

/// Resolves once shutdown is asked for, or when nobody can ask any more (sender dropped).
async fn shutdown_requested(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// `ListTopicSubscriptions`, retried with backoff until the app answers. An app that does not
/// implement it (UNIMPLEMENTED) subscribes to nothing.
async fn list_subscriptions(mut client: Client, endpoint: &str) -> Vec<TopicSubscription> {
    let mut backoff = BACKOFF_START;
    loop {
        match client.list_topic_subscriptions(()).await {
            Ok(resp) => {
                let subs = resp.into_inner().subscriptions;
                tracing::info!(%endpoint, count = subs.len(), "app listed its topic subscriptions");
                return subs;
            }
            Err(status) if status.code() == Code::Unimplemented => {
                tracing::info!(%endpoint, "app does not implement ListTopicSubscriptions; no topics");
                return Vec::new();
            }
            Err(status) => {
                tracing::warn!(%endpoint, code = ?status.code(), error = %status.message(),
                    retry_in = ?backoff, "app callback ListTopicSubscriptions failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// One subscription's delivery loop.
struct Worker {
    client: Client,
    app_id: Arc<str>,
    endpoint: String,
    limit: Arc<Semaphore>,
    relist: Arc<Notify>,
    shutdown: watch::Receiver<bool>,
}

impl Worker {
    async fn run(mut self, pubsub: Arc<dyn PubSub>, s: TopicSubscription) {
        let TopicSubscription {
            pubsub_name,
            topic,
            metadata,
        } = s;
        let dead_letter_topic = metadata
            .get(DEAD_LETTER_METADATA)
            .filter(|t| !t.is_empty())
            .cloned();
        let req = SubscribeRequest {
            topic: topic.clone(),
            metadata,
            dead_letter_topic,
        };

        let mut shutdown = self.shutdown.clone();
        let mut backoff = BACKOFF_START;
        loop {
            let subscription = tokio::select! {
                s = subscribe(&*pubsub, req.clone(), &pubsub_name) => s,
                _ = shutdown_requested(&mut shutdown) => return,
            };
            let Some(subscription) = subscription else {
                return;
            };
            tracing::info!(endpoint = %self.endpoint, pubsub = %pubsub_name, %topic, "subscribed for the app");
            tokio::select! {
                _ = self.deliver(subscription, &pubsub_name, &topic) => {}
                _ = shutdown_requested(&mut shutdown) => return,
            }
            // The component closed the subscription (e.g. its backend restarted): again.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Pulls deliveries (only when a call slot is free, so none waits unanswered here) and
    /// calls the app for each. Returns when the component closes the subscription; dropping
    /// this future aborts the calls in flight.
    async fn deliver(&mut self, mut subscription: Subscription, pubsub_name: &str, topic: &str) {
        let mut in_flight = JoinSet::new();
        loop {
            while in_flight.try_join_next().is_some() {}
            let Ok(permit) = self.limit.clone().acquire_owned().await else {
                return;
            };
            let Some(mut delivery) = subscription.next().await else {
                tracing::info!(pubsub = %pubsub_name, %topic, "component closed the subscription");
                return;
            };
            let event = convert::topic_event(&self.app_id, pubsub_name, &mut delivery.message);
            let mut client = self.client.clone();
            let endpoint = self.endpoint.clone();
            let relist = self.relist.clone();
            in_flight.spawn(async move {
                let id = event.id.clone();
                let outcome = match client.on_topic_event(event).await {
                    Ok(resp) => convert::outcome(Some(resp.into_inner())),
                    Err(status) if status.code() == Code::Unimplemented => {
                        tracing::warn!(%endpoint, %id, error = %status.message(),
                            "app answered OnTopicEvent UNIMPLEMENTED; event dropped");
                        Outcome::Drop
                    }
                    Err(status) => {
                        tracing::debug!(%endpoint, %id, code = ?status.code(),
                            error = %status.message(), "OnTopicEvent failed; event will be retried");
                        if status.code() == Code::Unavailable {
                            // The app is gone or restarting: list its topics again once it
                            // answers (it may come back with other ones).
                            relist.notify_one();
                        }
                        Outcome::Retry
                    }
                };
                delivery.ack(outcome);
                drop(permit);
            });
        }
    }
}

/// Subscribes, retrying with backoff while the backend is unavailable; `None` when the
/// request itself is wrong (retrying cannot help).
async fn subscribe(
    pubsub: &dyn PubSub,
    req: SubscribeRequest,
    pubsub_name: &str,
) -> Option<Subscription> {
    let mut backoff = BACKOFF_START;
    loop {
        match pubsub.subscribe(req.clone()).await {
            Ok(s) => return Some(s),
            Err(e @ (Error::InvalidArgument(_) | Error::Unimplemented(_) | Error::NotFound(_))) => {
                tracing::error!(pubsub = %pubsub_name, topic = %req.topic, error = %e,
                    "cannot subscribe for the app");
                return None;
            }
            Err(e) => {
                tracing::warn!(pubsub = %pubsub_name, topic = %req.topic, error = %e,
                    retry_in = ?backoff, "subscribe for the app failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use mecha_capabilities::pubsub::PublishRequest;
    use mecha_proto::layotto::app_callback_server::{AppCallback, AppCallbackServer};
    use mecha_proto::layotto::topic_event_response::TopicEventResponseStatus;
    use mecha_proto::layotto::{
        ListTopicSubscriptionsResponse, TopicEventRequest, TopicEventResponse,
    };
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::{Request, Response, Status};

    use super::*;

    /// A tonic channel to `addr`, as the transport of the callback (the sidecar uses the mesh
    /// client's; the delivery logic is the same).
    fn tonic_channel(addr: &str) -> AppChannel {
        use tower::ServiceExt;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("uri")
            .timeout(CALL_TIMEOUT)
            .connect_lazy();
        BoxCloneSyncService::new(tower::service_fn(
            move |req: http::Request<tonic::body::Body>| {
                let channel = channel.clone();
                async move {
                    let answer = channel.oneshot(req).await;
                    Ok::<_, std::convert::Infallible>(
                        answer.unwrap_or_else(|e| {
                            tonic::Status::unavailable(e.to_string()).into_http()
                        }),
                    )
                }
            },
        ))
    }

    /// An app subscribed to `orders` that answers RETRY to its first event, SUCCESS after.
    struct FakeApp {
        listed: mpsc::UnboundedSender<()>,
        events: mpsc::UnboundedSender<TopicEventRequest>,
        calls: AtomicUsize,
    }

    #[tonic::async_trait]
    impl AppCallback for FakeApp {
        async fn list_topic_subscriptions(
            &self,
            _request: Request<()>,
        ) -> Result<Response<ListTopicSubscriptionsResponse>, Status> {
            let _ = self.listed.send(());
            Ok(Response::new(ListTopicSubscriptionsResponse {
                subscriptions: vec![
                    TopicSubscription {
                        pubsub_name: "pubsub".into(),
                        topic: "orders".into(),
                        metadata: HashMap::new(),
                    },
                    // Unknown pubsub: logged and skipped, the others still served.
                    TopicSubscription {
                        pubsub_name: "kafka".into(),
                        topic: "orders".into(),
                        metadata: HashMap::new(),
                    },
                ],
            }))
        }

        async fn on_topic_event(
            &self,
            request: Request<TopicEventRequest>,
        ) -> Result<Response<TopicEventResponse>, Status> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let _ = self.events.send(request.into_inner());
            let status = if n == 0 {
                TopicEventResponseStatus::Retry
            } else {
                TopicEventResponseStatus::Success
            };
            Ok(Response::new(TopicEventResponse {
                status: status as i32,
            }))
        }
    }

    #[tokio::test]
    async fn waits_for_the_app_then_delivers_and_honours_retry() {
        let registry = crate::layotto::tests::registry();
        // Reserve a port, then leave it closed: the first attempts are refused and retried.
        let addr = {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            l.local_addr().expect("addr")
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let (_registries_tx, registries) = watch::channel(registry.clone());
        let runner = tokio::spawn(run_app_callback(
            registries,
            "app1".into(),
            tonic_channel(&addr.to_string()),
            addr.to_string(),
            DEFAULT_RELIST_INTERVAL,
            stop_rx,
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;

        let (listed_tx, mut listed_rx) = mpsc::unbounded_channel();
        let (events_tx, mut events_rx) = mpsc::unbounded_channel();
        let app = FakeApp {
            listed: listed_tx,
            events: events_tx,
            calls: AtomicUsize::new(0),
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("rebind the reserved port");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AppCallbackServer::new(app))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let wait = Duration::from_secs(10);
        tokio::time::timeout(wait, listed_rx.recv())
            .await
            .expect("app asked for its topics");
        // Subscribing is in-process and immediate once listed; give it a moment.
        tokio::time::sleep(Duration::from_millis(200)).await;

        let pubsub = registry.pubsub("pubsub").expect("configured").clone();
        pubsub
            .publish(PublishRequest {
                topic: "orders".into(),
                data: bytes::Bytes::from_static(b"{\"n\":1}"),
                content_type: "application/json".into(),
                metadata: HashMap::new(),
            })
            .await
            .expect("publish");

        let first = tokio::time::timeout(wait, events_rx.recv())
            .await
            .expect("event")
            .expect("open");
        assert_eq!(first.data, b"{\"n\":1}");
        assert_eq!(first.data_content_type, "application/json");
        assert_eq!(
            (first.pubsub_name.as_str(), first.topic.as_str()),
            ("pubsub", "orders")
        );
        assert_eq!(first.source, "app1");
        let again = tokio::time::timeout(wait, events_rx.recv())
            .await
            .expect("redelivery")
            .expect("open");
        assert_eq!(again.id, first.id, "RETRY redelivers the same event");
        let quiet = tokio::time::timeout(Duration::from_millis(300), events_rx.recv()).await;
        assert!(quiet.is_err(), "SUCCESS ends it: {quiet:?}");

        stop_tx.send(true).expect("runner alive");
        tokio::time::timeout(wait, runner)
            .await
            .expect("stops on shutdown")
            .expect("no panic");
    }

    #[tokio::test]
    async fn shutdown_stops_the_connect_retries() {
        let addr = {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            l.local_addr().expect("addr")
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let registry = crate::layotto::tests::registry();
        let (_tx, registries) = watch::channel(registry);
        let runner = tokio::spawn(run_app_callback(
            registries,
            "app1".into(),
            tonic_channel(&addr.to_string()),
            addr.to_string(),
            DEFAULT_RELIST_INTERVAL,
            stop_rx,
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop_tx.send(true).expect("runner alive");
        tokio::time::timeout(Duration::from_secs(2), runner)
            .await
            .expect("stops")
            .expect("no panic");
    }

    /// An app that takes every event (SUCCESS) and reports it.
    struct Recorder {
        topics: Vec<&'static str>,
        events: mpsc::UnboundedSender<TopicEventRequest>,
    }

    #[tonic::async_trait]
    impl AppCallback for Recorder {
        async fn list_topic_subscriptions(
            &self,
            _request: Request<()>,
        ) -> Result<Response<ListTopicSubscriptionsResponse>, Status> {
            Ok(Response::new(ListTopicSubscriptionsResponse {
                subscriptions: self
                    .topics
                    .iter()
                    .map(|t| TopicSubscription {
                        pubsub_name: "pubsub".into(),
                        topic: (*t).into(),
                        metadata: HashMap::new(),
                    })
                    .collect(),
            }))
        }

        async fn on_topic_event(
            &self,
            request: Request<TopicEventRequest>,
        ) -> Result<Response<TopicEventResponse>, Status> {
            let _ = self.events.send(request.into_inner());
            Ok(Response::new(TopicEventResponse {
                status: TopicEventResponseStatus::Success as i32,
            }))
        }
    }

    /// Publishes `data` on `pubsub`/`orders` until the app receives it (the subscription is
    /// made asynchronously after the app lists its topics; memory pub/sub keeps no events
    /// for topics nobody subscribes to).
    async fn publish_until_received(
        pubsub: &Arc<dyn PubSub>,
        events: &mut mpsc::UnboundedReceiver<TopicEventRequest>,
        data: &'static [u8],
    ) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            pubsub
                .publish(PublishRequest {
                    topic: "orders".into(),
                    data: bytes::Bytes::from_static(data),
                    content_type: "text/plain".into(),
                    metadata: HashMap::new(),
                })
                .await
                .expect("publish");
            match tokio::time::timeout(Duration::from_millis(200), events.recv()).await {
                Ok(Some(e)) if e.data == data => return,
                Ok(Some(_)) | Err(_) => {}
                Ok(None) => panic!("app server gone"),
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "event {data:?} never reached the app"
            );
        }
    }

    #[tokio::test]
    async fn a_changed_pubsub_component_is_resubscribed_by_itself() {
        use mecha_capabilities::{BuildContext, ComponentSpec};
        let spec = |interval: &str| {
            [ComponentSpec::new("pubsub", "pubsub.memory").with("redeliverInterval", interval)]
        };
        let ctx = BuildContext::default();
        let first = Arc::new(Registry::build(&spec("50ms"), &ctx).expect("valid"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let app = Recorder {
            topics: vec!["orders"],
            events: events_tx,
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AppCallbackServer::new(app))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let (registries_tx, registries) = watch::channel(first.clone());
        let (stop_tx, stop_rx) = watch::channel(false);
        let runner = tokio::spawn(run_app_callback(
            registries,
            "app1".into(),
            tonic_channel(&addr.to_string()),
            addr.to_string(),
            DEFAULT_RELIST_INTERVAL,
            stop_rx,
        ));
        let old = first.pubsub("pubsub").expect("configured").clone();
        publish_until_received(&old, &mut events, b"before").await;

        let second = Arc::new(Registry::update(Some(&first), &spec("60ms"), &ctx).expect("valid"));
        let new = second.pubsub("pubsub").expect("configured").clone();
        assert!(
            !Arc::ptr_eq(&old, &new),
            "a changed spec builds a new component"
        );
        registries_tx.send(second.clone()).expect("runner alive");
        Registry::retire_superseded(&first, &second);
        publish_until_received(&new, &mut events, b"after").await;

        stop_tx.send(true).expect("runner alive");
        tokio::time::timeout(Duration::from_secs(5), runner)
            .await
            .expect("stops on shutdown")
            .expect("no panic");
    }
}
