//! Pub/sub: PublishEvent and the bidi SubscribeTopicEvents stream — initial_response first,
//! delivery, SUCCESS, RETRY and silence redelivered, DROP to the dead-letter topic, fan-out.
//!
//! The test sidecar's memory pub/sub has `processingTimeout: 1s, redeliverInterval: 100ms`.

use std::collections::HashMap;
use std::time::Duration;

use mecha_integration::pb::runtime_client::RuntimeClient;
use mecha_integration::pb::subscribe_topic_events_request::SubscribeTopicEventsRequestType as Inbound;
use mecha_integration::pb::subscribe_topic_events_response::SubscribeTopicEventsResponseType as Outbound;
use mecha_integration::pb::topic_event_response::TopicEventResponseStatus;
use mecha_integration::pb::{
    PublishEventRequest, SubscribeTopicEventsRequest, SubscribeTopicEventsRequestInitial,
    SubscribeTopicEventsRequestProcessed, SubscribeTopicEventsResponse, TopicEventRequest,
    TopicEventResponse,
};
use mecha_integration::{describe, within, Sidecar};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

const PUBSUB: &str = "pubsub";

/// One open SubscribeTopicEvents stream.
struct Subscriber {
    tx: mpsc::Sender<SubscribeTopicEventsRequest>,
    rx: Streaming<SubscribeTopicEventsResponse>,
}

impl Subscriber {
    /// Opens the stream with `initial_request` and checks the first answer is `initial_response`.
    async fn open(rt: &mut RuntimeClient<Channel>, topic: &str, dead_letter: Option<&str>) -> Self {
        let (tx, rx) = mpsc::channel(16);
        tx.send(SubscribeTopicEventsRequest {
            subscribe_topic_events_request_type: Some(Inbound::InitialRequest(
                SubscribeTopicEventsRequestInitial {
                    pubsub_name: PUBSUB.into(),
                    topic: topic.into(),
                    metadata: HashMap::new(),
                    dead_letter_topic: dead_letter.map(str::to_owned),
                },
            )),
        })
        .await
        .expect("queue initial_request");
        let mut rx = within(
            "SubscribeTopicEvents",
            rt.subscribe_topic_events(ReceiverStream::new(rx)),
        )
        .await
        .unwrap_or_else(|s| panic!("SubscribeTopicEvents: {}", describe(&s)))
        .into_inner();
        let first = within("initial_response", rx.message())
            .await
            .expect("stream ok")
            .expect("a first message");
        assert!(
            matches!(
                first.subscribe_topic_events_response_type,
                Some(Outbound::InitialResponse(_))
            ),
            "the first message is initial_response: {first:?}"
        );
        Self { tx, rx }
    }

    async fn next_event(&mut self) -> TopicEventRequest {
        let msg = within("event_message", self.rx.message())
            .await
            .unwrap_or_else(|s| panic!("subscription stream failed: {}", describe(&s)))
            .expect("subscription stream ended");
        match msg.subscribe_topic_events_response_type {
            Some(Outbound::EventMessage(e)) => e,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    async fn answer(&self, id: &str, status: TopicEventResponseStatus) {
        self.tx
            .send(SubscribeTopicEventsRequest {
                subscribe_topic_events_request_type: Some(Inbound::EventProcessed(
                    SubscribeTopicEventsRequestProcessed {
                        id: id.into(),
                        status: Some(TopicEventResponse {
                            status: status as i32,
                        }),
                    },
                )),
            })
            .await
            .expect("send event_processed");
    }
}

async fn publish(rt: &mut RuntimeClient<Channel>, topic: &str, data: &str) {
    within(
        "PublishEvent",
        rt.publish_event(PublishEventRequest {
            pubsub_name: PUBSUB.into(),
            topic: topic.into(),
            data: data.as_bytes().to_vec(),
            data_content_type: "text/plain".into(),
            metadata: HashMap::from([("origin".to_owned(), "e2e".to_owned())]),
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("PublishEvent: {}", describe(&s)));
}

#[tokio::test]
async fn delivery_and_success_ack() {
    let sc = Sidecar::start().await;
    let mut rt = sc.client().await;
    let mut sub = Subscriber::open(&mut rt, "orders", None).await;

    publish(&mut rt, "orders", "first").await;
    let ev = sub.next_event().await;
    assert_eq!(ev.data, b"first");
    assert_eq!(ev.topic, "orders");
    assert_eq!(ev.pubsub_name, PUBSUB);
    assert_eq!(ev.data_content_type, "text/plain");
    assert_eq!(ev.spec_version, "1.0");
    assert!(!ev.id.is_empty());
    assert_eq!(ev.metadata.get("origin").map(String::as_str), Some("e2e"));
    sub.answer(&ev.id, TopicEventResponseStatus::Success).await;

    // An acknowledged event is not delivered again: wait past the processing timeout (1s) and
    // a redelivery interval, then the next event on the stream is a new one. (A negative
    // check: there is no signal for "nothing happened", so this one waits a bounded time.)
    tokio::time::sleep(Duration::from_millis(2500)).await;
    publish(&mut rt, "orders", "second").await;
    let next = sub.next_event().await;
    assert_eq!(
        next.data, b"second",
        "the SUCCESS-acked event came back: {next:?}"
    );
    assert_ne!(next.id, ev.id);
    sub.answer(&next.id, TopicEventResponseStatus::Success)
        .await;
}

#[tokio::test]
async fn retry_is_redelivered_with_the_same_id() {
    let sc = Sidecar::start().await;
    let mut rt = sc.client().await;
    let mut sub = Subscriber::open(&mut rt, "retry-topic", None).await;
    publish(&mut rt, "retry-topic", "again").await;
    let ev = sub.next_event().await;
    sub.answer(&ev.id, TopicEventResponseStatus::Retry).await;
    let again = sub.next_event().await;
    assert_eq!(again.id, ev.id, "a RETRY is redelivered with its id");
    assert_eq!(again.data, b"again");
    sub.answer(&again.id, TopicEventResponseStatus::Success)
        .await;
}

#[tokio::test]
async fn unanswered_event_is_redelivered_after_the_processing_timeout() {
    let sc = Sidecar::start().await;
    let mut rt = sc.client().await;
    let mut sub = Subscriber::open(&mut rt, "silent", None).await;
    publish(&mut rt, "silent", "hello?").await;
    let ev = sub.next_event().await;
    // No answer: after processingTimeout (1s) the event comes again.
    let again = sub.next_event().await;
    assert_eq!(again.id, ev.id);
    assert_eq!(again.data, b"hello?");
    sub.answer(&again.id, TopicEventResponseStatus::Success)
        .await;
}

#[tokio::test]
async fn drop_goes_to_the_dead_letter_topic() {
    let sc = Sidecar::start().await;
    let mut rt = sc.client().await;
    // The dead-letter subscriber is registered (initial_response seen) before anything drops.
    let mut dead = Subscriber::open(&mut rt, "orders-dlq", None).await;
    let mut sub = Subscriber::open(&mut rt, "orders", Some("orders-dlq")).await;
    publish(&mut rt, "orders", "poison").await;
    let ev = sub.next_event().await;
    assert_eq!(ev.data, b"poison");
    sub.answer(&ev.id, TopicEventResponseStatus::Drop).await;

    let dl = dead.next_event().await;
    assert_eq!(dl.data, b"poison");
    assert_eq!(dl.topic, "orders-dlq");
    dead.answer(&dl.id, TopicEventResponseStatus::Success).await;

    // The dropped event is not redelivered on the original topic.
    publish(&mut rt, "orders", "fine").await;
    let next = sub.next_event().await;
    assert_eq!(next.data, b"fine", "a dropped event came back: {next:?}");
}

#[tokio::test]
async fn fan_out_to_every_subscriber() {
    let sc = Sidecar::start().await;
    let mut rt = sc.client().await;
    let mut a = Subscriber::open(&mut rt, "news", None).await;
    let mut b = Subscriber::open(&mut rt, "news", None).await;
    let mut other = Subscriber::open(&mut rt, "sports", None).await;
    publish(&mut rt, "news", "extra").await;
    publish(&mut rt, "sports", "goal").await;
    let ea = a.next_event().await;
    let eb = b.next_event().await;
    assert_eq!(
        (ea.data.as_slice(), eb.data.as_slice()),
        (&b"extra"[..], &b"extra"[..])
    );
    a.answer(&ea.id, TopicEventResponseStatus::Success).await;
    b.answer(&eb.id, TopicEventResponseStatus::Success).await;
    // The other topic's subscriber gets only its own topic's event.
    let eo = other.next_event().await;
    assert_eq!(eo.data, b"goal");
    assert_eq!(eo.topic, "sports");
}

#[tokio::test]
async fn subscribe_errors() {
    let sc = Sidecar::start().await;
    let mut rt = sc.client().await;

    // Unknown pubsub: INVALID_ARGUMENT naming it and the configured one.
    let (tx, rx) = mpsc::channel(1);
    tx.send(SubscribeTopicEventsRequest {
        subscribe_topic_events_request_type: Some(Inbound::InitialRequest(
            SubscribeTopicEventsRequestInitial {
                pubsub_name: "nopubsub".into(),
                topic: "t".into(),
                ..Default::default()
            },
        )),
    })
    .await
    .expect("queue");
    let err = within(
        "SubscribeTopicEvents",
        rt.subscribe_topic_events(ReceiverStream::new(rx)),
    )
    .await
    .expect_err("unknown pubsub");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", describe(&err));
    assert!(
        err.message().contains("nopubsub") && err.message().contains(PUBSUB),
        "{}",
        describe(&err)
    );

    // First message not an initial_request: INVALID_ARGUMENT.
    let (tx, rx) = mpsc::channel(1);
    tx.send(SubscribeTopicEventsRequest {
        subscribe_topic_events_request_type: Some(Inbound::EventProcessed(
            SubscribeTopicEventsRequestProcessed::default(),
        )),
    })
    .await
    .expect("queue");
    let err = within(
        "SubscribeTopicEvents",
        rt.subscribe_topic_events(ReceiverStream::new(rx)),
    )
    .await
    .expect_err("no initial_request");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", describe(&err));

    // Publishing to an unknown pubsub or an empty topic.
    let err = within(
        "PublishEvent",
        rt.publish_event(PublishEventRequest {
            pubsub_name: "nopubsub".into(),
            topic: "t".into(),
            ..Default::default()
        }),
    )
    .await
    .expect_err("unknown pubsub");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", describe(&err));
    assert!(err.message().contains("nopubsub"), "{}", describe(&err));
    let err = within(
        "PublishEvent",
        rt.publish_event(PublishEventRequest {
            pubsub_name: PUBSUB.into(),
            topic: String::new(),
            ..Default::default()
        }),
    )
    .await
    .expect_err("empty topic");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", describe(&err));

    // Publishing with no subscriber is fine (the event is dropped, as Dapr's in-memory does).
    publish(&mut rt, "nobody-listens", "x").await;
}
