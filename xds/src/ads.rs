//! The ADS client: one aggregated stream to the control plane, delta
//! (`DeltaAggregatedResources`) or state-of-the-world (`StreamAggregatedResources`), carrying
//! listeners, route configurations, clusters, endpoints and Mecha components.
//!
//! Design, briefly:
//! - One task ([`run`]) owns everything: the connection, the stream, and the resources it holds
//!   ([`state::Held`]). It reads one response at a time, builds the *candidate* set that response
//!   would produce (every type, not only the changed one, so the sink sees a consistent whole),
//!   hands it to the [`Sink`], and ACKs (keeping the candidate) or NACKs (keeping the last
//!   accepted set). Decoding errors and duplicate names are NACKed before the sink is asked.
//! - Subscriptions follow Envoy: wildcard for LDS, CDS and components; RDS names are the route
//!   configurations the accepted listeners' HTTP connection managers name, EDS names the
//!   accepted EDS clusters' service names. When those sets change the client re-sends the
//!   subscription; children no longer referred to are dropped in the same candidate as the
//!   change of their root.
//! - The wire variants differ only in how a response becomes an update and how a request is
//!   shaped: [`sotw`] and [`delta`]. What is held survives the stream, so that a reconnect
//!   resubscribes with the versions held (SotW `version_info` per type, delta
//!   `initial_resource_versions`) and the sink is never called with a set emptied because the
//!   control plane went away.
//! - Warming (a cluster waiting for its endpoints, a listener for its routes) is translation's
//!   concern: the client hands over whatever it holds.
//! - [`AdsStatus`] is the client's public face for admin and metrics.

mod delta;
mod sotw;
mod state;
mod status;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::config::core::v3::{node::UserAgentVersionType, Node as CoreNode};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::google::protobuf::{value, Struct, Value};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use rand::Rng;
use tonic::transport::{Channel, Endpoint};

use crate::resources::{ResourceError, XdsResources};
use state::{Candidate, Held, Kind, Update};
pub use status::{AdsStatus, ConnectionState, StatusSnapshot, TypeStatus};

/// The largest message the client decodes or encodes. tonic's default is 4 MiB; a full Istio
/// push is larger (9,000 clusters ≈ 11.6 MB in one CDS response), and a control plane is
/// trusted about as much as the bootstrap that names it. 64 MiB still bounds a runaway server.
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// Envoy's initial reconnect delay.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Envoy's largest reconnect delay.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// How long a TCP connect to the control plane may take before the attempt counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 PING period on the ADS connection: a control plane that vanished without a FIN
/// (a dead node, a dropped NAT entry) is noticed instead of waited for forever.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a PING may stay unanswered before the connection is declared dead.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// `google.rpc.Code.INVALID_ARGUMENT`, the code of a NACK's `error_detail` (as Envoy sends).
const INVALID_ARGUMENT: i32 = 3;

/// Which ADS variant to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Api {
    /// State of the world: `StreamAggregatedResources`.
    #[default]
    Sotw,
    /// Incremental: `DeltaAggregatedResources` (Istio's default); falls back to SotW when the
    /// server answers UNIMPLEMENTED.
    Delta,
}

impl std::str::FromStr for Api {
    type Err = AdsError;
    fn from_str(s: &str) -> Result<Self, AdsError> {
        match s {
            "sotw" => Ok(Api::Sotw),
            "delta" => Ok(Api::Delta),
            other => Err(AdsError::InvalidApi(other.to_owned())),
        }
    }
}

/// The node identity sent on the first request of every stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    pub id: String,
    pub cluster: String,
    /// Sent as a `google.protobuf.Struct` of string values.
    pub metadata: BTreeMap<String, String>,
}

impl Node {
    fn to_proto(&self) -> CoreNode {
        let fields = self
            .metadata
            .iter()
            .map(|(k, v)| {
                let v = Value {
                    kind: Some(value::Kind::StringValue(v.clone())),
                };
                (k.clone(), v)
            })
            .collect();
        CoreNode {
            id: self.id.clone(),
            cluster: self.cluster.clone(),
            metadata: Some(Struct { fields }),
            user_agent_name: "mecha".to_owned(),
            user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion(
                env!("CARGO_PKG_VERSION").to_owned(),
            )),
            ..CoreNode::default()
        }
    }
}

/// How to reach the control plane and who to say we are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdsConfig {
    /// `host:port` of the ADS server (plaintext HTTP/2).
    pub server: String,
    pub api: Api,
    pub node: Node,
    /// First reconnect delay; doubles per failed attempt up to `backoff_max`, jittered (each
    /// delay is drawn from [d/2, d]) so that a fleet does not reconnect in lockstep.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl AdsConfig {
    /// A config with Envoy's backoff (500 ms doubling to 30 s).
    pub fn new(server: impl Into<String>, api: Api, node: Node) -> Self {
        AdsConfig {
            server: server.into(),
            api,
            node,
            backoff_base: DEFAULT_BACKOFF_BASE,
            backoff_max: DEFAULT_BACKOFF_MAX,
        }
    }

    /// Checks the config; the endpoint it names.
    pub fn validate(&self) -> Result<Endpoint, AdsError> {
        if self.node.id.is_empty() {
            // Control planes (istiod, go-control-plane) key what they send by node id.
            return Err(AdsError::EmptyNodeId);
        }
        if self.backoff_base.is_zero() || self.backoff_max < self.backoff_base {
            return Err(AdsError::InvalidBackoff {
                base: self.backoff_base,
                max: self.backoff_max,
            });
        }
        let invalid = |reason: String| AdsError::InvalidServer {
            server: self.server.clone(),
            reason,
        };
        if self.server.is_empty() || self.server.contains('/') {
            return Err(invalid("expected host:port".to_owned()));
        }
        let endpoint = Endpoint::from_shared(format!("http://{}", self.server))
            .map_err(|e| invalid(error_chain(&e)))?;
        Ok(endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            // HTTP/2's default 64 KiB windows make a response of thousands of resources wait
            // for window updates from this side every 64 KiB; large windows let the control
            // plane write it in one go (Envoy's own defaults are far larger still).
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .tcp_nodelay(true))
    }
}

/// HTTP/2 flow-control windows of the ADS connection (see [`AdsConfig::validate`]).
const STREAM_WINDOW: u32 = 16 << 20;
const CONNECTION_WINDOW: u32 = 32 << 20;

/// Why the client cannot start (it never stops once started).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdsError {
    #[error("xds.server {server:?}: {reason}")]
    InvalidServer { server: String, reason: String },
    #[error("xds.api {0:?}: expected sotw or delta")]
    InvalidApi(String),
    #[error("xds.node.id is empty: a control plane identifies the proxy by it")]
    EmptyNodeId,
    #[error("xds backoff: base {base:?} must be positive and at most max {max:?}")]
    InvalidBackoff { base: Duration, max: Duration },
}

/// Where the client hands each candidate set.
pub trait Sink: Send + Sync + 'static {
    /// `resources` is the full candidate set of every type; `changed` the type URL of the
    /// response that produced it (of the responses, separated by spaces, when responses that
    /// arrived together are checked as one). `Ok` → ACK and keep it; `Err` → NACK with these errors, and
    /// the client keeps the last accepted set of that type.
    fn apply<'a>(
        &'a self,
        resources: &'a XdsResources,
        changed: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), Vec<ResourceError>>> + Send + 'a>>;
}

/// Runs the client until the task is dropped: connect, stream, reconnect with backoff.
/// Returns only when `config` is invalid.
pub async fn run(
    config: AdsConfig,
    sink: Arc<dyn Sink>,
    status: Arc<AdsStatus>,
) -> Result<Infallible, AdsError> {
    let endpoint = config.validate()?;
    let mut client = Client {
        node: config.node.to_proto(),
        sink,
        status,
        held: Held::default(),
        sotw_versions: BTreeMap::new(),
    };
    let mut api = config.api;
    client.status.update(|s| s.api = api);
    let mut backoff = Backoff::new(config.backoff_base, config.backoff_max);
    loop {
        client
            .status
            .update(|s| s.state = ConnectionState::Connecting);
        let end = match endpoint.connect().await {
            Err(e) => StreamEnd::Lost {
                delivered: false,
                reason: format!("connecting to {}: {}", config.server, error_chain(&e)),
            },
            Ok(channel) => {
                let grpc = AggregatedDiscoveryServiceClient::new(channel)
                    .max_decoding_message_size(MAX_MESSAGE_SIZE)
                    .max_encoding_message_size(MAX_MESSAGE_SIZE);
                client.status.update(|s| s.streams += 1);
                // Connected once the HTTP/2 connection is up: gRPC servers (grpc-go, grpcio)
                // send a stream's response headers with its first response, so waiting for
                // them would report an open but idle stream as connecting.
                client.connected();
                match api {
                    Api::Sotw => sotw::run_stream(&mut client, grpc).await,
                    Api::Delta => delta::run_stream(&mut client, grpc).await,
                }
            }
        };
        let (delivered, reason) = match end {
            StreamEnd::Unimplemented if api == Api::Delta => {
                tracing::warn!(
                    server = %config.server,
                    "the control plane does not implement delta ADS; falling back to state of the world"
                );
                api = Api::Sotw;
                client.status.update(|s| {
                    s.api = Api::Sotw;
                    s.delta_fallback = true;
                });
                // Not a failure of the server: try the other method at once.
                continue;
            }
            StreamEnd::Unimplemented => (
                false,
                "the control plane does not implement StreamAggregatedResources".to_owned(),
            ),
            StreamEnd::Lost { delivered, reason } => (delivered, reason),
        };
        if delivered {
            // The stream worked: this is a new failure, not the next of a series.
            backoff.reset();
        }
        let delay = backoff.next_delay();
        tracing::warn!(server = %config.server, %reason, ?delay, "ADS stream lost; keeping the last accepted configuration and reconnecting");
        client.status.update(|s| {
            s.state = ConnectionState::Backoff { delay };
            s.last_stream_error = Some(reason);
        });
        tokio::time::sleep(delay).await;
    }
}

/// How a stream ended.
pub(crate) enum StreamEnd {
    /// The server answered UNIMPLEMENTED before any response: the method is not served.
    Unimplemented,
    /// The stream failed or was closed; `delivered` if it carried at least one response.
    Lost { delivered: bool, reason: String },
}

impl StreamEnd {
    fn from_status(status: &tonic::Status, delivered: bool) -> StreamEnd {
        if status.code() == tonic::Code::Unimplemented && !delivered {
            return StreamEnd::Unimplemented;
        }
        StreamEnd::Lost {
            delivered,
            reason: format!("{:?}: {}", status.code(), status.message()),
        }
    }
}

type AdsClient = AggregatedDiscoveryServiceClient<Channel>;

/// One response's type, version and update, as checked.
type Checked = (Kind, String, Result<Update, Vec<ResourceError>>);

/// The state that outlives streams, and the one place a response is checked and applied.
pub(crate) struct Client {
    node: CoreNode,
    sink: Arc<dyn Sink>,
    status: Arc<AdsStatus>,
    held: Held,
    /// SotW: the `version_info` of the last accepted response per type.
    sotw_versions: BTreeMap<Kind, String>,
}

impl Client {
    fn connected(&self) {
        self.status.update(|s| s.state = ConnectionState::Connected);
    }

    fn received(&self, kind: Kind, nonce: &str) {
        self.status
            .update_type(kind.type_url(), |t| t.nonce = nonce.to_owned());
    }

    /// Checks the updates of responses that arrived together and keeps what is accepted; one
    /// result per update, in order, the error being its NACK message (every error, each
    /// naming its resource). Several are checked as one candidate first: an apply costs
    /// tens of milliseconds at thousands of resources, and control planes write CDS with
    /// LDS, and EDS with RDS, back to back. When that candidate is refused they are checked
    /// one at a time, so each response is ACKed or NACKed on its own merits, as if it had
    /// come alone.
    async fn apply_all(&mut self, batch: Vec<Checked>) -> Vec<Result<(), String>> {
        // A type twice starts a new group: the later response would hide the earlier one
        // from the check, and an ACK must mean that response's set was checked.
        let mut results = Vec::with_capacity(batch.len());
        let mut group: Vec<Checked> = Vec::new();
        for item in batch {
            if group.iter().any(|(k, _, _)| *k == item.0) {
                let done = std::mem::take(&mut group);
                results.extend(self.apply_group(done).await);
            }
            group.push(item);
        }
        results.extend(self.apply_group(group).await);
        results
    }

    /// [`Client::apply_all`] for responses of distinct types.
    async fn apply_group(&mut self, batch: Vec<Checked>) -> Vec<Result<(), String>> {
        if batch.len() > 1 && batch.iter().all(|(_, _, u)| u.is_ok()) {
            let mut combined: Option<Candidate> = None;
            for (kind, _, update) in &batch {
                if let Ok(update) = update {
                    combined = Some(match combined {
                        None => self.held.candidate(*kind, update.clone()),
                        Some(c) => c.then(*kind, update.clone()),
                    });
                }
            }
            if let Some(candidate) = combined {
                let types: Vec<&str> = batch.iter().map(|(k, _, _)| k.type_url()).collect();
                match self
                    .sink
                    .apply(&candidate.resources, &types.join(" "))
                    .await
                {
                    Ok(()) => {
                        self.held.accept(candidate);
                        return batch
                            .iter()
                            .map(|(kind, version, _)| self.record(*kind, version, Ok(())))
                            .collect();
                    }
                    Err(errors) => {
                        tracing::debug!(
                            responses = batch.len(),
                            ?errors,
                            "xDS responses refused together: checking them one at a time"
                        );
                    }
                }
            }
        }
        let mut results = Vec::with_capacity(batch.len());
        for (kind, version, update) in batch {
            results.push(self.apply(kind, &version, update).await);
        }
        results
    }

    /// Checks one response's update with the sink and keeps the candidate if accepted; the
    /// error is the NACK message (every error, each naming its resource).
    async fn apply(
        &mut self,
        kind: Kind,
        version: &str,
        update: Result<Update, Vec<ResourceError>>,
    ) -> Result<(), String> {
        let result = match update {
            Err(errors) => Err(errors),
            Ok(update) => {
                let candidate = self.held.candidate(kind, update);
                match self.sink.apply(&candidate.resources, kind.type_url()).await {
                    Ok(()) => {
                        self.held.accept(candidate);
                        Ok(())
                    }
                    Err(errors) => Err(errors),
                }
            }
        };
        self.record(kind, version, result)
    }

    /// Counts and logs one response's outcome; the error is its NACK message.
    fn record(
        &self,
        kind: Kind,
        version: &str,
        result: Result<(), Vec<ResourceError>>,
    ) -> Result<(), String> {
        let now = SystemTime::now();
        match result {
            Ok(()) => {
                tracing::debug!(type_url = kind.type_url(), version, "xDS update accepted");
                self.status.update_type(kind.type_url(), |t| {
                    t.version = version.to_owned();
                    t.accepted += 1;
                    t.last_update = Some(now);
                });
                Ok(())
            }
            Err(errors) => {
                let message = if errors.is_empty() {
                    format!("{} update rejected without a reason", kind.label())
                } else {
                    errors
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                tracing::warn!(type_url = kind.type_url(), version, error = %message, "xDS update rejected");
                self.status.update_type(kind.type_url(), |t| {
                    t.rejected += 1;
                    t.last_error = Some((message.clone(), now));
                });
                Err(message)
            }
        }
    }
}

fn nack_detail(message: String) -> RpcStatus {
    RpcStatus {
        code: INVALID_ARGUMENT,
        message,
        details: Vec::new(),
    }
}

/// An error and its sources, `: `-joined (tonic's transport errors say little on their own).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Jittered exponential backoff: the delay doubles from `base` to `max`, each draw uniform in
/// [d/2, d].
struct Backoff {
    base: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            current: base,
        }
    }

    fn reset(&mut self) {
        self.current = self.base;
    }

    fn next_delay(&mut self) -> Duration {
        let d = self.current;
        self.current = d.saturating_mul(2).min(self.max);
        rand::rng().random_range(d / 2..=d)
    }
}

/// Responses checked together at most (a bound on how long one batch holds its ACKs).
const MAX_BATCH: usize = 16;

/// The responses ready on an ADS stream (either variant): the next one, waited for, then
/// those already received, up to [`MAX_BATCH`]. `Err` is how the stream ended before any; an
/// end found after some is kept in `ended` for the next call.
async fn next_responses<M>(
    inbound: &mut tonic::Streaming<M>,
    delivered: bool,
    ended: &mut Option<StreamEnd>,
) -> Result<Vec<M>, StreamEnd> {
    use futures::FutureExt;
    if let Some(end) = ended.take() {
        return Err(end);
    }
    let first = message_or_end(inbound.message().await, delivered)?;
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        // `Streaming::message` is cancel safe: a message not complete yet stays buffered.
        match inbound.message().now_or_never() {
            None => break,
            Some(next) => match message_or_end(next, true) {
                Ok(m) => batch.push(m),
                Err(end) => {
                    *ended = Some(end);
                    break;
                }
            },
        }
    }
    Ok(batch)
}

fn message_or_end<M>(
    next: Result<Option<M>, tonic::Status>,
    delivered: bool,
) -> Result<M, StreamEnd> {
    match next {
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err(StreamEnd::Lost {
            delivered,
            reason: "the control plane closed the stream".to_owned(),
        }),
        Err(status) => Err(StreamEnd::from_status(&status, delivered)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use state::Decoded;

    /// Records the `changed` of every call; refuses a candidate holding a cluster `bad`.
    struct Picky(std::sync::Mutex<Vec<String>>);

    impl Sink for Picky {
        fn apply<'a>(
            &'a self,
            resources: &'a XdsResources,
            changed: &'a str,
        ) -> Pin<Box<dyn Future<Output = Result<(), Vec<ResourceError>>> + Send + 'a>> {
            if let Ok(mut calls) = self.0.lock() {
                calls.push(changed.to_owned());
            }
            let refused = resources.clusters.contains_key("bad");
            Box::pin(async move {
                if refused {
                    Err(vec![ResourceError {
                        kind: "cluster",
                        name: "bad".to_owned(),
                        message: "refused".to_owned(),
                    }])
                } else {
                    Ok(())
                }
            })
        }
    }

    fn clusters(names: &[&str]) -> Result<Update, Vec<ResourceError>> {
        Ok(Update {
            replace_all: true,
            upserts: names
                .iter()
                .map(|n| {
                    let c = Cluster {
                        name: (*n).to_owned(),
                        ..Cluster::default()
                    };
                    ((*n).to_owned(), None, Decoded::Cluster(c.into()))
                })
                .collect(),
            removals: Vec::new(),
        })
    }

    fn client(sink: Arc<Picky>) -> Client {
        Client {
            node: CoreNode::default(),
            sink,
            status: Arc::new(AdsStatus::default()),
            held: Held::default(),
            sotw_versions: BTreeMap::new(),
        }
    }

    fn component(name: &str) -> Result<Update, Vec<ResourceError>> {
        let c = mecha_proto::config::v1::Component {
            name: name.to_owned(),
            ..Default::default()
        };
        Ok(Update {
            replace_all: true,
            upserts: vec![(name.to_owned(), None, Decoded::Component(c.into()))],
            removals: Vec::new(),
        })
    }

    fn calls(sink: &Picky) -> Vec<String> {
        sink.0.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn counts(c: &Client, kind: Kind) -> Option<(u64, u64, String)> {
        c.status
            .snapshot()
            .types
            .get(kind.type_url())
            .map(|t| (t.accepted, t.rejected, t.version.clone()))
    }

    #[tokio::test]
    async fn responses_that_arrive_together_are_checked_as_one_candidate() {
        let sink = Arc::new(Picky(Default::default()));
        let mut c = client(sink.clone());
        let results = c
            .apply_all(vec![
                (Kind::Cluster, "v1".into(), clusters(&["a", "b"])),
                (Kind::Component, "v1".into(), component("x")),
            ])
            .await;
        assert_eq!(results, vec![Ok(()), Ok(())]);
        let (cds, comp) = (Kind::Cluster.type_url(), Kind::Component.type_url());
        assert_eq!(
            calls(&sink),
            vec![format!("{cds} {comp}")],
            "one check for both"
        );
        let held: Vec<&String> = c.held.accepted.clusters.keys().collect();
        assert_eq!(held, ["a", "b"]);
        assert!(c.held.accepted.components.contains_key("x"));
        assert_eq!(counts(&c, Kind::Component), Some((1, 0, "v1".to_owned())));
    }

    #[tokio::test]
    async fn a_refused_batch_is_checked_one_response_at_a_time() {
        let sink = Arc::new(Picky(Default::default()));
        let mut c = client(sink.clone());
        let results = c
            .apply_all(vec![
                (Kind::Cluster, "v1".into(), clusters(&["bad"])),
                (Kind::Component, "v1".into(), component("x")),
            ])
            .await;
        assert!(
            results[0].as_ref().is_err_and(|e| e.contains("\"bad\"")),
            "{results:?}"
        );
        assert!(results[1].is_ok(), "{results:?}");
        assert_eq!(calls(&sink).len(), 3, "the batch, then each response");
        assert!(c.held.accepted.clusters.is_empty());
        assert!(c.held.accepted.components.contains_key("x"));
        assert_eq!(counts(&c, Kind::Cluster), Some((0, 1, String::new())));
    }

    #[tokio::test]
    async fn a_type_twice_in_a_batch_is_checked_response_by_response() {
        let sink = Arc::new(Picky(Default::default()));
        let mut c = client(sink.clone());
        let results = c
            .apply_all(vec![
                (Kind::Cluster, "v1".into(), clusters(&["a"])),
                (Kind::Cluster, "v2".into(), clusters(&["a", "bad"])),
                (Kind::Cluster, "v3".into(), clusters(&["a", "c"])),
            ])
            .await;
        // v3 alone would hide v2's bad cluster: v2 must still be NACKed.
        assert!(results[0].is_ok(), "{results:?}");
        assert!(results[1].is_err(), "{results:?}");
        assert!(results[2].is_ok(), "{results:?}");
        assert_eq!(calls(&sink).len(), 3);
        let held: Vec<&String> = c.held.accepted.clusters.keys().collect();
        assert_eq!(held, ["a", "c"]);
        assert_eq!(counts(&c, Kind::Cluster), Some((2, 1, "v3".to_owned())));
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_MAX);
        let mut ceiling = DEFAULT_BACKOFF_BASE;
        for _ in 0..12 {
            let d = b.next_delay();
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "{d:?} outside [{:?}, {ceiling:?}]",
                ceiling / 2
            );
            ceiling = (ceiling * 2).min(DEFAULT_BACKOFF_MAX);
        }
        assert_eq!(b.current, DEFAULT_BACKOFF_MAX);
        b.reset();
        assert!(b.next_delay() <= DEFAULT_BACKOFF_BASE);
    }

    #[test]
    fn config_is_validated() {
        let node = Node {
            id: "n".to_owned(),
            ..Node::default()
        };
        assert!(AdsConfig::new("127.0.0.1:18000", Api::Sotw, node.clone())
            .validate()
            .is_ok());
        let mut c = AdsConfig::new("127.0.0.1:18000", Api::Sotw, node.clone());
        c.backoff_base = Duration::ZERO;
        assert!(matches!(c.validate(), Err(AdsError::InvalidBackoff { .. })));
        let c = AdsConfig::new("http://x:1/", Api::Sotw, node);
        assert!(matches!(c.validate(), Err(AdsError::InvalidServer { .. })));
        let c = AdsConfig::new("x:1", Api::Sotw, Node::default());
        assert_eq!(c.validate().err(), Some(AdsError::EmptyNodeId));
        assert_eq!("delta".parse::<Api>(), Ok(Api::Delta));
        assert!("grpc".parse::<Api>().is_err());
    }

    #[test]
    fn node_metadata_is_a_struct_of_strings() {
        let node = Node {
            id: "sidecar~1.2.3.4~a.b~b.svc.cluster.local".to_owned(),
            cluster: "a.b".to_owned(),
            metadata: BTreeMap::from([("NAMESPACE".to_owned(), "b".to_owned())]),
        };
        let p = node.to_proto();
        assert_eq!(p.id, node.id);
        let fields = p.metadata.map(|m| m.fields).unwrap_or_default();
        assert_eq!(
            fields.get("NAMESPACE").and_then(|v| v.kind.clone()),
            Some(value::Kind::StringValue("b".to_owned()))
        );
    }
}
