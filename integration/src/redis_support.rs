//! Test support for the Redis end-to-end tests (`tests/redis_e2e.rs`): a real redis-server,
//! never a mock, and the sidecar's Redis components pointed at it.
//!
//! - [`RedisServer`]: a throw-away redis-server on a free port, in a temp dir, with AOF on
//!   (`appendfsync always`); [`stop`](RedisServer::stop) (SIGKILL, data kept),
//!   [`start_again`](RedisServer::start_again) (same port and dir: the AOF is replayed).
//! - [`shared_host`]: `REDIS_URL` when set, else one throw-away server per test binary; for the
//!   tests that never stop Redis (they isolate their keys with [`unique`] prefixes and topics).
//!   Tests that stop or restart Redis always start their own [`RedisServer`].
//! - [`RedisComponents`]: the `components:` list of `configs/redis.yaml` (same names and types)
//!   on a given Redis, with a unique `keyPrefix` and `consumerID`; or
//!   [`shipped`](RedisComponents::shipped), the shipped file's list itself with only the host
//!   replaced.
//! - [`TopicSubscriber`], [`ConfigWatch`]: one open `SubscribeTopicEvents` /
//!   `SubscribeConfiguration` stream.
//! - [`wait_ready_status`], [`sigkill`]: poll `/ready` for a status; SIGKILL a sidecar.
//! - [`BareSidecar`]: a sidecar not waited on for readiness (started while Redis is down).
//!
//! [`RedisServer`], [`shared_host`] and [`unique`] are `mecha_test_support::redis`'s (the one
//! redis-server harness, shared with the component tests), re-exported; see there for the
//! watchdog that keeps a server from outliving its tests. [`BareSidecar`] is a thin layer over
//! `mecha_test_support::process::Mecha`. Sidecars are killed when their [`Sidecar`] is dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mecha_proto::runtime::v1::runtime_client::RuntimeClient;
use mecha_test_support::process::{Launch, Mecha, Wait};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

use crate::pb::subscribe_topic_events_request::SubscribeTopicEventsRequestType as Inbound;
use crate::pb::subscribe_topic_events_response::SubscribeTopicEventsResponseType as Outbound;
use crate::pb::topic_event_response::TopicEventResponseStatus;
use crate::pb::{
    SubscribeConfigurationRequest, SubscribeConfigurationResponse, SubscribeTopicEventsRequest,
    SubscribeTopicEventsRequestInitial, SubscribeTopicEventsRequestProcessed,
    SubscribeTopicEventsResponse, TopicEventRequest, TopicEventResponse,
};
use crate::{describe, free_addr, http_get, workspace_root, HttpResponse, Sidecar, STEP_TIMEOUT};

pub use mecha_test_support::redis::{shared_host, unique, RedisServer};

// === the sidecar's components ===

/// YAML double-quoted scalar (a JSON string is one).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("a string encodes as JSON")
}

/// The components of `configs/redis.yaml` — `statestore` (state.redis), `pubsub`
/// (pubsub.redis), `lockstore`, `sequencer`, `configstore`, plus the env `secretstore` and
/// `helloworld` — on one Redis, as a `components:` list for [`crate::SidecarBuilder`].
#[derive(Debug, Clone)]
pub struct RedisComponents {
    host: String,
    key_prefix: String,
    pubsub: Vec<(String, String)>,
}

impl RedisComponents {
    /// On `host` with a unique `keyPrefix` (for every component that takes one) and a unique
    /// `consumerID`; `processingTimeout: 2s`, `redeliverInterval: 1s` as in the shipped file.
    pub fn new(host: &str) -> Self {
        Self {
            host: host.to_owned(),
            key_prefix: unique("e2e"),
            pubsub: vec![
                ("consumerID".to_owned(), unique("consumer")),
                ("processingTimeout".to_owned(), "2s".to_owned()),
                ("redeliverInterval".to_owned(), "1s".to_owned()),
            ],
        }
    }

    /// Sets the `keyPrefix` (sidecars sharing state, locks or configuration need the same).
    pub fn key_prefix(mut self, prefix: &str) -> Self {
        prefix.clone_into(&mut self.key_prefix);
        self
    }

    /// Sets (or adds) one metadata entry of the `pubsub` component.
    pub fn pubsub_meta(mut self, key: &str, value: &str) -> Self {
        match self.pubsub.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => value.clone_into(v),
            None => self.pubsub.push((key.to_owned(), value.to_owned())),
        }
        self
    }

    /// The `pubsub` component's `consumerID`.
    pub fn consumer_id(&self) -> &str {
        self.pubsub
            .iter()
            .find(|(k, _)| k == "consumerID")
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    }

    /// The `components:` list (items indented by two spaces).
    pub fn yaml(&self) -> String {
        let host = quoted(&self.host);
        let prefix = quoted(&self.key_prefix);
        let mut y = String::new();
        for (name, kind) in [
            ("statestore", "state.redis"),
            ("lockstore", "lock.redis"),
            ("sequencer", "sequencer.redis"),
            ("configstore", "configuration.redis"),
        ] {
            y.push_str(&format!(
                "  - name: {name}\n    type: {kind}\n    metadata:\n      redisHost: {host}\n      keyPrefix: {prefix}\n"
            ));
        }
        y.push_str(&format!(
            "  - name: pubsub\n    type: pubsub.redis\n    metadata:\n      redisHost: {host}\n"
        ));
        for (k, v) in &self.pubsub {
            y.push_str(&format!("      {k}: {}\n", quoted(v)));
        }
        y.push_str("  - name: secretstore\n    type: secretstores.local.env\n");
        y.push_str("  - name: helloworld\n    type: hello.helloworld\n");
        y
    }

    /// The `components:` list of the shipped `configs/redis.yaml` itself, with its Redis
    /// address (`127.0.0.1:6379`) replaced by `host`; nothing else changed (so no key prefix:
    /// only for a Redis of the test's own).
    pub fn shipped(host: &str) -> String {
        let path = workspace_root().join("configs").join("redis.yaml");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let (_, list) = text
            .split_once("\ncomponents:\n")
            .unwrap_or_else(|| panic!("{} has no top-level components:", path.display()));
        assert!(
            list.contains("127.0.0.1:6379"),
            "{} no longer points at 127.0.0.1:6379; update this helper",
            path.display()
        );
        list.replace("127.0.0.1:6379", host)
    }
}

// === the sidecar's state ===

/// Polls `GET /ready` until its status is 200 (`ready`) or anything else (`!ready`), within
/// `bound`; returns that response. Panics with the last answer when it never gets there.
/// `admin` is the sidecar's admin listener ([`Sidecar::admin_addr`], [`BareSidecar::admin_addr`]).
pub async fn wait_ready_status(admin: SocketAddr, ready: bool, bound: Duration) -> HttpResponse {
    let deadline = Instant::now() + bound;
    let mut last;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), http_get(admin, "/ready")).await {
            Ok(Ok(r)) if (r.status == 200) == ready => return r,
            Ok(Ok(r)) => last = format!("{}: {}", r.status, r.body.trim()),
            Ok(Err(e)) => last = format!("{e:#}"),
            Err(_) => last = "no answer within 5s".to_owned(),
        }
        assert!(
            Instant::now() < deadline,
            "/ready did not turn {} within {bound:?}; last answer: {last}",
            if ready { "200" } else { "non-200" }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A `mecha run -c` that is not waited on for readiness (unlike [`Sidecar`], whose start needs
/// `/ready` 200): for a sidecar started while its backend is down. Killed on drop (its config and
/// stderr are printed when the test panicked).
pub struct BareSidecar {
    inner: Mecha,
    /// The runtime listener.
    pub grpc_addr: SocketAddr,
    /// The admin listener.
    pub admin_addr: SocketAddr,
    /// The config it runs with.
    pub config: String,
}

impl BareSidecar {
    /// Starts `mecha run -c` with `components` (a `components:` list, as for
    /// [`crate::SidecarBuilder::components`]) and waits until its admin listener answers
    /// `/healthz` (the process is up; readiness is not asked for).
    pub async fn start(components: &str) -> Self {
        let mut grpc_addr = free_addr();
        let mut inner = Mecha::start(Wait::Alive, || {
            grpc_addr = free_addr();
            let admin_addr = free_addr();
            let config = format!(
                "threads: 1\napp:\n  id: app\nadmin:\n  address: {admin_addr}\nlisteners:\n  - name: runtime\n    address: {grpc_addr}\n    filters:\n      - type: capability\n        apis: [layotto]\ncomponents:\n{components}"
            );
            Launch::new("bare-sidecar", config, admin_addr)
        })
        .await;
        inner.label = format!("grpc {grpc_addr}");
        Self {
            grpc_addr,
            admin_addr: inner.admin,
            config: inner.config.clone(),
            inner,
        }
    }

    pub fn pid(&self) -> u32 {
        self.inner.pid()
    }

    /// The generated Layotto `Runtime` client, connected.
    pub async fn client(&self) -> RuntimeClient<Channel> {
        RuntimeClient::new(crate::connect(self.grpc_addr).await)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.inner.is_running()
    }
}

/// SIGKILLs the sidecar (no draining, no goodbye to Redis) and waits until it has exited.
pub async fn sigkill(sc: &mut Sidecar) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let pid = i32::try_from(sc.pid()).expect("pid fits i32");
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("send SIGKILL");
    let status = sc.wait_exit(STEP_TIMEOUT).await;
    assert!(
        status.is_some(),
        "mecha (pid {pid}) still runs after SIGKILL"
    );
}

// === streams ===

/// One open `SubscribeTopicEvents` stream (after its `initial_response`).
pub struct TopicSubscriber {
    tx: mpsc::Sender<SubscribeTopicEventsRequest>,
    rx: Streaming<SubscribeTopicEventsResponse>,
}

impl TopicSubscriber {
    /// Opens the stream on `pubsub`/`topic` with `metadata` and waits for `initial_response`
    /// (from then on the consumer group exists: nothing published later is missed).
    pub async fn open(
        rt: &mut RuntimeClient<Channel>,
        pubsub: &str,
        topic: &str,
        metadata: HashMap<String, String>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(64);
        tx.send(SubscribeTopicEventsRequest {
            subscribe_topic_events_request_type: Some(Inbound::InitialRequest(
                SubscribeTopicEventsRequestInitial {
                    pubsub_name: pubsub.into(),
                    topic: topic.into(),
                    metadata,
                    dead_letter_topic: None,
                },
            )),
        })
        .await
        .expect("queue initial_request");
        let mut rx = crate::within(
            "SubscribeTopicEvents",
            rt.subscribe_topic_events(ReceiverStream::new(rx)),
        )
        .await
        .unwrap_or_else(|s| panic!("SubscribeTopicEvents {topic}: {}", describe(&s)))
        .into_inner();
        let first = crate::within("initial_response", rx.message())
            .await
            .unwrap_or_else(|s| panic!("SubscribeTopicEvents {topic}: {}", describe(&s)))
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

    /// The next event, within [`STEP_TIMEOUT`].
    pub async fn next_event(&mut self) -> TopicEventRequest {
        let msg = crate::within("event_message", self.rx.message())
            .await
            .unwrap_or_else(|s| panic!("subscription stream failed: {}", describe(&s)))
            .expect("subscription stream ended");
        match msg.subscribe_topic_events_response_type {
            Some(Outbound::EventMessage(e)) => e,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    /// Answers one event.
    pub async fn answer(&self, id: &str, status: TopicEventResponseStatus) {
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

/// One open `SubscribeConfiguration` stream.
pub struct ConfigWatch {
    _tx: mpsc::Sender<SubscribeConfigurationRequest>,
    rx: Streaming<SubscribeConfigurationResponse>,
}

impl ConfigWatch {
    /// Subscribes to `keys` of `app_id` in `store`. The API has no "subscribed"
    /// acknowledgement: the subscription may be registered only a moment after this returns
    /// (see [`next_change`](Self::next_change) and the tests' probe loops).
    pub async fn open(
        rt: &mut RuntimeClient<Channel>,
        store: &str,
        app_id: &str,
        keys: &[&str],
    ) -> Self {
        let (tx, rx) = mpsc::channel(4);
        tx.send(SubscribeConfigurationRequest {
            store_name: store.into(),
            app_id: app_id.into(),
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            ..Default::default()
        })
        .await
        .expect("queue subscribe request");
        let rx = crate::within(
            "SubscribeConfiguration",
            rt.subscribe_configuration(ReceiverStream::new(rx)),
        )
        .await
        .unwrap_or_else(|s| panic!("SubscribeConfiguration: {}", describe(&s)))
        .into_inner();
        Self { _tx: tx, rx }
    }

    /// [`open`](Self::open), for a subscription that must fail: the status it ends with (as
    /// the call's status or on the stream), within [`STEP_TIMEOUT`].
    pub async fn open_err(
        rt: &mut RuntimeClient<Channel>,
        store: &str,
        app_id: &str,
        keys: &[&str],
    ) -> tonic::Status {
        let (tx, rx) = mpsc::channel(4);
        tx.send(SubscribeConfigurationRequest {
            store_name: store.into(),
            app_id: app_id.into(),
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            ..Default::default()
        })
        .await
        .expect("queue subscribe request");
        let rx = match crate::within(
            "SubscribeConfiguration",
            rt.subscribe_configuration(ReceiverStream::new(rx)),
        )
        .await
        {
            Ok(r) => r.into_inner(),
            Err(s) => return s,
        };
        let mut watch = Self { _tx: tx, rx };
        match watch.next(STEP_TIMEOUT).await {
            Some(Err(s)) => s,
            Some(Ok(c)) => panic!("SubscribeConfiguration pushed {c:?} instead of failing"),
            None => panic!("SubscribeConfiguration did not fail within {STEP_TIMEOUT:?}"),
        }
    }

    /// The next message of the stream (a change, or the status that ended it), or `None` when
    /// nothing comes within `wait`. Panics when the stream ends without a status.
    pub async fn next(
        &mut self,
        wait: Duration,
    ) -> Option<Result<SubscribeConfigurationResponse, tonic::Status>> {
        match tokio::time::timeout(wait, self.rx.message()).await {
            Ok(Ok(Some(m))) => Some(Ok(m)),
            Ok(Ok(None)) => panic!("SubscribeConfiguration stream ended without a status"),
            Ok(Err(s)) => Some(Err(s)),
            Err(_) => None,
        }
    }

    /// The next pushed change, or `None` when none comes within `wait`.
    pub async fn next_change(&mut self, wait: Duration) -> Option<SubscribeConfigurationResponse> {
        self.next(wait).await.map(|r| {
            r.unwrap_or_else(|s| panic!("SubscribeConfiguration failed: {}", describe(&s)))
        })
    }

    /// Reads pushed changes until one carries `key` with `content` (within [`STEP_TIMEOUT`]).
    pub async fn wait_for(&mut self, key: &str, content: &str) -> SubscribeConfigurationResponse {
        let deadline = Instant::now() + STEP_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(c) = self.next_change(left).await else {
                panic!(
                    "no push of {key}={content} within {STEP_TIMEOUT:?}; pushes seen: {seen:#?}"
                );
            };
            if c.items.iter().any(|i| i.key == key && i.content == content) {
                return c;
            }
            seen.push(c);
        }
    }
}
