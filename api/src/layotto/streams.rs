//! The two bidirectional streams: `SubscribeTopicEvents` and `SubscribeConfiguration`.
//!
//! Each runs one spawned task per call that owns the client's request stream and the
//! component's subscription(s), and feeds the response stream through a bounded mpsc channel
//! (tonic sends what the task queues; a slow client back-pressures the component). The task
//! ends when the client ends its stream or goes away (the response stream is dropped, which
//! closes the channel), dropping the subscriptions with it: the component then redelivers
//! whatever was not acknowledged.

use std::collections::HashMap;
use std::sync::Arc;

use futures::stream::{self, BoxStream, SelectAll, StreamExt};
use mecha_capabilities::pubsub::{Delivery, SubscribeRequest, Subscription};
use mecha_capabilities::registry::{Block, RetiredWatch};
use mecha_capabilities::Registry;
use mecha_proto::layotto as pb;
use pb::subscribe_topic_events_request::SubscribeTopicEventsRequestType as Inbound;
use pb::subscribe_topic_events_response::SubscribeTopicEventsResponseType as Outbound;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::convert;
use crate::status::StatusExt;

/// Responses queued per stream before the task waits for the client to read.
const RESPONSE_QUEUE: usize = 64;

/// Subscriptions one `SubscribeConfiguration` stream may hold. Every request on the stream
/// starts one (a component subscription plus a merged change stream), so without a cap one
/// client could grow the sidecar's memory and the store's watch load without bound; beyond it
/// the call ends with RESOURCE_EXHAUSTED naming the cap. Real clients subscribe a handful of
/// times per stream.
pub const MAX_CONFIG_SUBSCRIPTIONS_PER_STREAM: usize = 64;

// === SubscribeTopicEvents ===

type TopicEventTx = mpsc::Sender<Result<pb::SubscribeTopicEventsResponse, Status>>;

/// Reads the `initial_request`, subscribes, and answers `initial_response` before any event.
/// Errors up to that point (bad first message, unknown pubsub, failed subscribe) are the
/// call's status; later ones end the stream with a status.
pub(super) async fn subscribe_topic_events(
    registry: Arc<Registry>,
    app_id: Arc<str>,
    mut inbound: Streaming<pb::SubscribeTopicEventsRequest>,
) -> Result<ReceiverStream<Result<pb::SubscribeTopicEventsResponse, Status>>, Status> {
    let first = inbound.message().await?;
    let initial = match first.and_then(|m| m.subscribe_topic_events_request_type) {
        Some(Inbound::InitialRequest(i)) => i,
        _ => {
            return Err(Status::invalid_argument(
                "first message must be initial_request",
            ))
        }
    };
    let pubsub = registry.pubsub(&initial.pubsub_name).status()?;
    let retired = retired_watch(&registry, Block::PubSub, &initial.pubsub_name);
    if initial.topic.is_empty() {
        return Err(Status::invalid_argument(format!(
            "topic is empty (pubsub {:?})",
            initial.pubsub_name
        )));
    }
    let subscription = pubsub
        .subscribe(SubscribeRequest {
            topic: initial.topic.clone(),
            metadata: initial.metadata,
            dead_letter_topic: initial.dead_letter_topic.filter(|t| !t.is_empty()),
        })
        .await
        .status()?;

    let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
    let ready = pb::SubscribeTopicEventsResponse {
        subscribe_topic_events_response_type: Some(Outbound::InitialResponse(
            pb::SubscribeTopicEventsResponseInitial {},
        )),
    };
    // A fresh channel has room: this cannot fail, and it queues ahead of every event.
    let _ = tx.try_send(Ok(ready));
    let pump = TopicEventPump {
        app_id,
        pubsub_name: initial.pubsub_name,
        topic: initial.topic,
        tx,
        pending: HashMap::new(),
    };
    tokio::spawn(pump.run(inbound, subscription, retired));
    Ok(ReceiverStream::new(rx))
}

/// Ends with the component instance: a config update that changes or removes it retires it.
fn retired_watch(registry: &Registry, block: Block, name: &str) -> Option<RetiredWatch> {
    registry.find(block, name).map(|c| c.lifecycle.watch())
}

/// Resolves when `watch` sees its component retired (never without a watch).
async fn component_retired(
    watch: &mut Option<RetiredWatch>,
) -> mecha_capabilities::registry::Retirement {
    match watch {
        Some(w) => w.retired().await,
        None => std::future::pending().await,
    }
}

struct TopicEventPump {
    app_id: Arc<str>,
    pubsub_name: String,
    topic: String,
    tx: TopicEventTx,
    /// Deliveries sent to the client and not yet answered, by message id.
    pending: HashMap<String, Delivery>,
}

impl TopicEventPump {
    async fn run(
        mut self,
        mut inbound: Streaming<pb::SubscribeTopicEventsRequest>,
        mut subscription: Subscription,
        mut retired: Option<RetiredWatch>,
    ) {
        loop {
            tokio::select! {
                biased;
                _ = self.tx.closed() => {
                    tracing::debug!(pubsub = %self.pubsub_name, topic = %self.topic,
                        "subscriber went away; unsubscribing");
                    break;
                }
                why = component_retired(&mut retired) => {
                    // The client resubscribes, and gets the component config now names.
                    let status = Status::unavailable(format!(
                        "pubsub component {:?} was {} by a config update; subscribe again \
                         (topic {:?})",
                        self.pubsub_name, why.as_str(), self.topic
                    ));
                    tracing::info!(pubsub = %self.pubsub_name, topic = %self.topic,
                        "component {}: ending the subscription stream", why.as_str());
                    let _ = self.tx.send(Err(status)).await;
                    break;
                }
                msg = inbound.message() => match msg {
                    Ok(Some(m)) => {
                        if let Err(status) = self.on_client_message(m) {
                            let _ = self.tx.send(Err(status)).await;
                            break;
                        }
                    }
                    Ok(None) => {
                        tracing::debug!(pubsub = %self.pubsub_name, topic = %self.topic,
                            "subscriber ended its stream; unsubscribing");
                        break;
                    }
                    Err(status) => {
                        tracing::debug!(pubsub = %self.pubsub_name, topic = %self.topic,
                            %status, "subscriber stream failed; unsubscribing");
                        break;
                    }
                },
                delivery = subscription.next() => match delivery {
                    Some(d) => {
                        if !self.forward(d).await {
                            break;
                        }
                    }
                    None => {
                        let status = Status::unavailable(format!(
                            "pubsub {:?} closed the subscription to topic {:?}; subscribe again",
                            self.pubsub_name, self.topic
                        ));
                        let _ = self.tx.send(Err(status)).await;
                        break;
                    }
                },
            }
        }
        // Dropping `pending` answers every outstanding delivery RETRY; dropping the
        // subscription unsubscribes.
    }

    fn on_client_message(&mut self, m: pb::SubscribeTopicEventsRequest) -> Result<(), Status> {
        match m.subscribe_topic_events_request_type {
            Some(Inbound::EventProcessed(p)) => {
                match self.pending.remove(&p.id) {
                    Some(d) => d.ack(convert::outcome(p.status)),
                    None => tracing::debug!(pubsub = %self.pubsub_name, topic = %self.topic,
                        id = %p.id, "event_processed for an unknown or already answered id; ignored"),
                }
                Ok(())
            }
            Some(Inbound::InitialRequest(_)) => Err(Status::invalid_argument(format!(
                "initial_request may be sent only once per stream (already subscribed to \
                 {:?} on pubsub {:?})",
                self.topic, self.pubsub_name
            ))),
            None => Err(Status::invalid_argument(
                "SubscribeTopicEventsRequest has neither initial_request nor event_processed",
            )),
        }
    }

    /// Sends one event; `false` once the client is gone.
    async fn forward(&mut self, mut d: Delivery) -> bool {
        let event = convert::topic_event(&self.app_id, &self.pubsub_name, &mut d.message);
        // A redelivery of a still-pending id replaces it (the old handle is dropped: RETRY,
        // which the component has already decided anyway).
        self.pending.insert(event.id.clone(), d);
        let msg = pb::SubscribeTopicEventsResponse {
            subscribe_topic_events_response_type: Some(Outbound::EventMessage(event)),
        };
        self.tx.send(Ok(msg)).await.is_ok()
    }
}

// === SubscribeConfiguration ===

type ConfigResult = Result<pb::SubscribeConfigurationResponse, Status>;

/// Every request on the stream starts one more subscription; the changes of all of them are
/// merged into the response stream. When the client half-closes, changes keep flowing until
/// it cancels (or at once ends the call if it never subscribed). An unknown store or failed
/// subscribe ends the call with that status; a subscription the component closes ends it
/// with UNAVAILABLE so the client subscribes again. A stream holds at most
/// [`MAX_CONFIG_SUBSCRIPTIONS_PER_STREAM`] subscriptions.
pub(super) fn subscribe_configuration(
    registry: Arc<Registry>,
    app_id: Arc<str>,
    mut inbound: Streaming<pb::SubscribeConfigurationRequest>,
) -> ReceiverStream<ConfigResult> {
    let (tx, rx) = mpsc::channel::<ConfigResult>(RESPONSE_QUEUE);
    tokio::spawn(async move {
        let mut changes: SelectAll<BoxStream<'static, ConfigResult>> = SelectAll::new();
        let mut inbound_open = true;
        loop {
            tokio::select! {
                biased;
                _ = tx.closed() => break,
                msg = inbound.message(), if inbound_open => match msg {
                    Ok(Some(_)) if changes.len() >= MAX_CONFIG_SUBSCRIPTIONS_PER_STREAM => {
                        let status = Status::resource_exhausted(format!(
                            "a SubscribeConfiguration stream holds at most \
                             {MAX_CONFIG_SUBSCRIPTIONS_PER_STREAM} subscriptions \
                             (MAX_CONFIG_SUBSCRIPTIONS_PER_STREAM); open another stream"
                        ));
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                    Ok(Some(req)) => match start_config_subscription(&registry, &app_id, req).await {
                        Ok(s) => changes.push(s),
                        Err(status) => {
                            let _ = tx.send(Err(status)).await;
                            break;
                        }
                    },
                    Ok(None) => {
                        inbound_open = false;
                        if changes.is_empty() {
                            break;
                        }
                    }
                    Err(status) => {
                        tracing::debug!(%status, "configuration subscriber stream failed");
                        break;
                    }
                },
                next = changes.next(), if !changes.is_empty() => match next {
                    Some(Ok(resp)) => {
                        if tx.send(Ok(resp)).await.is_err() {
                            break;
                        }
                    }
                    Some(Err(status)) => {
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                    None => {
                        if !inbound_open {
                            break;
                        }
                    }
                },
            }
        }
    });
    ReceiverStream::new(rx)
}

async fn start_config_subscription(
    registry: &Registry,
    sidecar_app_id: &str,
    req: pb::SubscribeConfigurationRequest,
) -> Result<BoxStream<'static, ConfigResult>, Status> {
    let store = registry.configuration(&req.store_name).status()?;
    let app_id = convert::app_id_or(req.app_id, sidecar_app_id);
    let query = convert::config_query(app_id.clone(), req.group, req.label, req.keys, req.metadata);
    let subscription = store.subscribe(query).await.status()?;
    let mut retired = retired_watch(registry, Block::Configuration, &req.store_name);
    let store_name = req.store_name;
    let retired_name = store_name.clone();
    let retirement = stream::once(async move {
        let why = component_retired(&mut retired).await;
        Err(Status::unavailable(format!(
            "configuration store {retired_name:?} was {} by a config update; subscribe again",
            why.as_str()
        )))
    });
    let closed = Status::unavailable(format!(
        "configuration store {store_name:?} closed the subscription; subscribe again"
    ));
    let changes = stream::unfold(subscription, |mut s| async move {
        s.next().await.map(|change| (change, s))
    })
    .map(move |change| {
        Ok(pb::SubscribeConfigurationResponse {
            store_name: store_name.clone(),
            app_id: if change.app_id.is_empty() {
                app_id.clone()
            } else {
                change.app_id
            },
            items: change
                .items
                .into_iter()
                .map(convert::configuration_item)
                .collect(),
        })
    })
    .chain(stream::once(async move { Err(closed) }));
    Ok(stream::select(changes, retirement).boxed())
}
