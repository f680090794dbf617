//! Push delivery of pub/sub events to an app that implements Layotto's `AppCallback` service.
//!
//! [`run_app_callback`] is Layotto's start-up subscription flow, kept running:
//! 1. connect to the app (h2c) and call `ListTopicSubscriptions`, retrying with backoff until
//!    the app answers (each failure is logged with the address);
//! 2. subscribe every listed `(pubsub_name, topic, metadata)`; the dead-letter topic comes from
//!    the subscription's metadata key [`DEAD_LETTER_METADATA`];
//! 3. for every delivery call `OnTopicEvent` (at most [`MAX_IN_FLIGHT`] calls at once across all
//!    subscriptions) and acknowledge with the app's answer: SUCCESS, RETRY or DROP. A failed
//!    call is RETRY, except UNIMPLEMENTED, which Layotto and Dapr treat as "this app will never
//!    take it": DROP (to the dead-letter topic when one is set).
//!
//! Everything stops when the shutdown flag turns true (or its sender is dropped); deliveries in
//! flight are then dropped unanswered, which the component counts as RETRY.

use std::sync::Arc;
use std::time::Duration;

use mecha_capabilities::pubsub::{Outcome, PubSub, SubscribeRequest, Subscription};
use mecha_capabilities::{Error, Registry};
use mecha_proto::layotto::app_callback_client::AppCallbackClient;
use mecha_proto::layotto::TopicSubscription;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::layotto::convert;

/// Subscription metadata key naming the dead-letter topic (Dapr's spelling).
pub const DEAD_LETTER_METADATA: &str = "deadLetterTopic";
/// `OnTopicEvent` calls outstanding at once, over all subscriptions.
pub const MAX_IN_FLIGHT: usize = 64;
/// Deadline of one callback RPC; past it the event is retried.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

type Client = AppCallbackClient<Channel>;

/// Delivers events to the app at `endpoint` (`host:port`, or a full `http://` URI) until
/// `shutdown` turns true.
pub async fn run_app_callback(
    registry: Arc<Registry>,
    app_id: String,
    endpoint: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let uri = if endpoint.contains("://") {
        endpoint.clone()
    } else {
        format!("http://{endpoint}")
    };
    let channel = match Endpoint::from_shared(uri) {
        Ok(e) => e
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .tcp_nodelay(true)
            .connect_lazy(),
        Err(e) => {
            tracing::error!(%endpoint, error = %e, "app callback address is not a valid URI; no events will be pushed");
            return;
        }
    };
    let client = AppCallbackClient::new(channel);

    let subscriptions = tokio::select! {
        s = list_subscriptions(client.clone(), &endpoint) => s,
        _ = shutdown_requested(&mut shutdown) => return,
    };
    if subscriptions.is_empty() {
        tracing::info!(%endpoint, "app subscribes to no topics");
    }

    let app_id: Arc<str> = Arc::from(app_id);
    let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = JoinSet::new();
    for s in subscriptions {
        let pubsub = match registry.pubsub(&s.pubsub_name) {
            Ok(p) => p.clone(),
            Err(e) => {
                tracing::error!(%endpoint, topic = %s.topic, error = %e,
                    "app subscribes to an unknown pubsub; skipped");
                continue;
            }
        };
        if s.topic.is_empty() {
            tracing::error!(%endpoint, pubsub = %s.pubsub_name, "app subscription has an empty topic; skipped");
            continue;
        }
        let worker = Worker {
            client: client.clone(),
            app_id: app_id.clone(),
            endpoint: endpoint.clone(),
            limit: limit.clone(),
            shutdown: shutdown.clone(),
        };
        tasks.spawn(worker.run(pubsub, s));
    }

    tokio::select! {
        _ = shutdown_requested(&mut shutdown) => {}
        _ = async { while tasks.join_next().await.is_some() {} } => {}
    }
    tasks.shutdown().await;
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
        let subscription = tokio::select! {
            s = subscribe(&*pubsub, req, &pubsub_name) => s,
            _ = shutdown_requested(&mut shutdown) => return,
        };
        let Some(subscription) = subscription else {
            return;
        };
        tracing::info!(endpoint = %self.endpoint, pubsub = %pubsub_name, %topic, "subscribed for the app");

        tokio::select! {
            _ = self.deliver(subscription, &pubsub_name, &topic) => {}
            _ = shutdown_requested(&mut shutdown) => {}
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
        let runner = tokio::spawn(run_app_callback(
            registry.clone(),
            "app1".into(),
            addr.to_string(),
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
    async fn an_invalid_address_returns_at_once() {
        let (_stop_tx, stop_rx) = watch::channel(false);
        let registry = crate::layotto::tests::registry();
        let run = run_app_callback(registry, "app1".into(), "not a uri".into(), stop_rx);
        tokio::time::timeout(Duration::from_secs(2), run)
            .await
            .expect("returns");
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
        let runner = tokio::spawn(run_app_callback(
            registry,
            "app1".into(),
            addr.to_string(),
            stop_rx,
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop_tx.send(true).expect("runner alive");
        tokio::time::timeout(Duration::from_secs(2), runner)
            .await
            .expect("stops")
            .expect("no panic");
    }
}
