//! The mesh as a client: one implementation of the upstream policies — endpoint pick with
//! retry avoidance, circuit breakers and connection slots, retry budget and backoff, per-try
//! and total timeouts, outlier accounting, per-cluster metrics, TLS settings — that every
//! origin of upstream traffic uses:
//!
//! - the router filter drives [`Attempts`] from Pingora's proxy phases (a try is one
//!   `upstream_peer` … response cycle), so proxied requests stream;
//! - [`MeshClient::call`] drives the same [`Attempts`] itself over Pingora's connectors and
//!   pools, for requests the sidecar makes on its own behalf: service invocation
//!   (`InvokeService`, HTTP `dapr-app-id`) and event delivery to the app (AppCallback, through
//!   [`GrpcChannel`]). Its bodies are buffered (bounded both ways): invocation and callback
//!   messages are whole messages.
//!
//! Retry decisions ([`Attempts::may_retry`]), the keep-alive-race rule, backoff and the try
//! timeouts exist once, here.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};
use rand::Rng;

use crate::cluster::{AttemptResult, Cluster, Endpoint, PickError, RetrySlot};
use crate::config::UpstreamProtocol;
use crate::retry::RetryPolicy;
use crate::upstream::Upstream;

/// Default bound on the whole request when a route (or invocation) sets no `timeout` (Envoy's
/// default route timeout is 15 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// Default stream idle timeout when a route sets no `idle_timeout` (Envoy's default stream idle
/// timeout is 5 min).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Retries of a request whose pooled upstream connection turned out closed (the keep-alive
/// race), on top of the retry policy. Each one takes another (or a new) connection; a few
/// cover a pool whose idle connections the upstream closed at once, and the bound keeps an
/// upstream that closes every connection unanswered from looping a request.
pub const MAX_REUSE_RETRIES: u32 = 4;

/// How long an upstream connection [`MeshClient`] used may idle in the pool.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The policies of one request, borrowed from a route or an invocation target.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallPolicy<'a> {
    pub retry: Option<&'a RetryPolicy>,
    /// Bound on the whole request (every try, backoff and the response); `None`: unbounded.
    pub timeout: Option<Duration>,
    pub per_try_timeout: Option<Duration>,
    /// Bound on each wait for bytes; `None`: unbounded.
    pub idle_timeout: Option<Duration>,
}

impl<'a> CallPolicy<'a> {
    /// From route-style settings: `timeout` absent → [`DEFAULT_TIMEOUT`], zero → off;
    /// `idle_timeout` absent → [`DEFAULT_IDLE_TIMEOUT`], zero → off.
    pub fn from_route(
        retry: Option<&'a RetryPolicy>,
        timeout: Option<Duration>,
        per_try_timeout: Option<Duration>,
        idle_timeout: Option<Duration>,
    ) -> Self {
        Self {
            retry,
            timeout: Some(timeout.unwrap_or(DEFAULT_TIMEOUT)).filter(|d| !d.is_zero()),
            per_try_timeout,
            idle_timeout: Some(idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT))
                .filter(|d| !d.is_zero()),
        }
    }

    /// The same policy bounded by a deadline the caller set (gRPC `grpc-timeout`).
    pub fn within(mut self, deadline: Option<Duration>) -> Self {
        if let Some(d) = deadline {
            self.timeout = Some(self.timeout.map_or(d, |t| t.min(d)));
        }
        self
    }
}

/// Why a request got no upstream answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// A breaker is open, the connection wait timed out, or no endpoint is healthy.
    #[error(transparent)]
    Pick(#[from] PickError),
    #[error("cluster {cluster:?}: retry budget exhausted (max_retries)")]
    RetryBudget { cluster: String },
    #[error("cluster {cluster:?}: timeout of {timeout:?} elapsed (try {tries})")]
    Timeout {
        cluster: String,
        timeout: Duration,
        tries: u32,
    },
    #[error("cluster {cluster:?}: cannot connect to {addr}: {error}")]
    Connect {
        cluster: String,
        addr: String,
        error: String,
    },
    #[error("cluster {cluster:?}: upstream {addr} failed: {error}")]
    Upstream {
        cluster: String,
        addr: String,
        error: String,
    },
    #[error("cluster {cluster:?}: the response from {addr} exceeds {limit} bytes")]
    TooLarge {
        cluster: String,
        addr: String,
        limit: usize,
    },
}

impl CallError {
    /// The HTTP status a proxy answers this with (as the router does).
    pub fn http_status(&self) -> u16 {
        match self {
            CallError::Pick(PickError::PendingTimeout(..)) | CallError::Timeout { .. } => 504,
            CallError::Pick(_) | CallError::RetryBudget { .. } | CallError::Connect { .. } => 503,
            CallError::Upstream { .. } | CallError::TooLarge { .. } => 502,
        }
    }

    /// The gRPC status code (`tonic::Code` as i32) this maps to.
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            CallError::Pick(PickError::PendingTimeout(..)) | CallError::Timeout { .. } => {
                tonic::Code::DeadlineExceeded
            }
            CallError::Pick(PickError::Overloaded(..) | PickError::PendingOverflow(..))
            | CallError::RetryBudget { .. }
            | CallError::TooLarge { .. } => tonic::Code::ResourceExhausted,
            CallError::Pick(PickError::NoHealthy(_) | PickError::NoOriginalDst(_))
            | CallError::Connect { .. }
            | CallError::Upstream { .. } => tonic::Code::Unavailable,
        }
    }
}

/// The tries of one request against one cluster: which endpoint each used, the retry slot,
/// and the clock `timeout` runs on. Both the router and [`MeshClient`] drive it.
pub struct Attempts {
    cluster: Arc<Cluster>,
    started: Instant,
    tries: u32,
    /// Tries that were retries of the keep-alive race (not counted against the policy).
    reuse_retries: u32,
    retry_slot: Option<RetrySlot>,
    endpoint: Option<Endpoint>,
    /// Where the downstream connection was going before a REDIRECT (`original_dst`
    /// clusters send there).
    original_dst: Option<std::net::SocketAddr>,
    /// The request came in over HTTP/2 (`protocol: downstream` clusters follow it).
    downstream_h2: bool,
}

/// One try: where it goes and how long it may take.
pub struct Try {
    pub peer: HttpPeer,
    /// Bound on the whole try (what is left of `timeout`, and `per_try_timeout`).
    pub deadline: Option<Duration>,
}

impl Attempts {
    /// Starts the clock of `timeout`.
    pub fn new(cluster: Arc<Cluster>) -> Self {
        Self {
            cluster,
            started: Instant::now(),
            tries: 0,
            reuse_retries: 0,
            retry_slot: None,
            endpoint: None,
            original_dst: None,
            downstream_h2: false,
        }
    }

    /// What the downstream side tells the upstream side: the connection's original
    /// destination (for `original_dst` clusters) and whether the request is HTTP/2 (for
    /// `protocol: downstream`).
    pub fn set_downstream(&mut self, original_dst: Option<std::net::SocketAddr>, h2: bool) {
        self.original_dst = original_dst;
        self.downstream_h2 = h2;
    }

    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// Tries made so far (including keep-alive-race retries).
    pub fn tries(&self) -> u32 {
        self.tries
    }

    /// The endpoint of the current try.
    pub fn endpoint(&self) -> Option<&Endpoint> {
        self.endpoint.as_ref()
    }

    /// Ends the request's hold on its endpoint (its in-flight count).
    pub fn release_endpoint(&mut self) {
        self.endpoint = None;
    }

    /// What is left of `timeout` (`None`: unbounded).
    pub fn left(&self, policy: &CallPolicy<'_>) -> Option<Duration> {
        policy
            .timeout
            .map(|t| t.saturating_sub(self.started.elapsed()))
    }

    /// Whether `timeout` has elapsed.
    pub fn timed_out(&self, policy: &CallPolicy<'_>) -> bool {
        self.left(policy).is_some_and(|l| l.is_zero())
    }

    /// Prepares the next try: a retry takes a retry slot (`max_retries` / budget) and waits
    /// its backoff; the endpoint is picked avoiding the one that just failed. `reuse_retry`:
    /// this try retries the keep-alive race — no budget, no backoff, the same endpoint may
    /// serve it, and it gets a new connection.
    pub async fn begin(
        &mut self,
        policy: &CallPolicy<'_>,
        hash_key: &[u8],
        reuse_retry: bool,
    ) -> Result<Try, CallError> {
        let cluster = self.cluster.clone();
        if reuse_retry {
            self.reuse_retries += 1;
        } else if self.tries > 0 {
            let Some(slot) = cluster.admit_retry() else {
                return Err(CallError::RetryBudget {
                    cluster: cluster.name.clone(),
                });
            };
            self.retry_slot = Some(slot);
            if let Some(p) = policy.retry {
                let mut pause = p.backoff(self.tries - self.reuse_retries);
                if let Some(left) = self.left(policy) {
                    pause = pause.min(left);
                }
                tokio::time::sleep(pause).await;
            }
        }
        self.tries += 1;
        let failed = self.endpoint.take().map(|e| e.addr);
        let avoid = if reuse_retry { None } else { failed };
        let ep = if cluster.original_dst {
            let dst = self
                .original_dst
                .ok_or_else(|| PickError::NoOriginalDst(cluster.name.clone()))?;
            cluster.pick_original(dst)
        } else {
            cluster.pick(hash_key, avoid)?
        };
        let left = match (self.left(policy), policy.timeout) {
            (Some(l), Some(total)) if l.is_zero() => {
                return Err(CallError::Timeout {
                    cluster: cluster.name.clone(),
                    timeout: total,
                    tries: self.tries,
                })
            }
            (l, _) => l,
        };
        let mut peer = peer_for(&cluster, &ep, self.downstream_h2);
        if reuse_retry {
            // A pool key no pooled connection has: this try opens a new connection instead of
            // meeting another one the upstream closed at the same time.
            peer.group_key ^= rand::rng().random::<u64>() | 1;
        }
        let deadline = [left, policy.per_try_timeout].into_iter().flatten().min();
        // Each wait for bytes is bounded by what is left of the try and the idle timeout.
        let io = [deadline, policy.idle_timeout].into_iter().flatten().min();
        let connect = left.map_or(cluster.connect_timeout, |l| l.min(cluster.connect_timeout));
        peer.options.connection_timeout = Some(connect);
        peer.options.total_connection_timeout = Some(connect);
        peer.options.read_timeout = io;
        peer.options.write_timeout = io;
        cluster.metrics.upstream_requests.inc();
        self.endpoint = Some(ep);
        Ok(Try { peer, deadline })
    }

    /// Records a failed try: the cluster's failure counter and outlier detection.
    pub fn failed(&self, result: AttemptResult) {
        self.cluster.metrics.upstream_failures.inc();
        if let Some(ep) = &self.endpoint {
            self.cluster.report(ep, result);
        }
    }

    /// Records an answer with `status` for outlier detection (5xx counts as a failure).
    pub fn answered(&self, status: u16) {
        if let Some(ep) = &self.endpoint {
            let result = if status >= 500 {
                AttemptResult::ServerError
            } else {
                AttemptResult::Success
            };
            self.cluster.report(ep, result);
        }
    }

    /// Whether the retry policy retries this failure. `may_have_arrived`: the request may
    /// have reached the upstream (anything but a connect failure), so it is retried only when
    /// `resendable` (an idempotent method, RFC 9110 §9.2.2, or a policy that says duplicates
    /// are fine — see [`resendable`]).
    pub fn may_retry(
        &self,
        policy: &CallPolicy<'_>,
        may_have_arrived: bool,
        resendable: bool,
        cond: impl Fn(&RetryPolicy) -> bool,
    ) -> bool {
        let Some(p) = policy.retry else {
            return false;
        };
        (!may_have_arrived || resendable)
            && cond(p)
            && self.tries - self.reuse_retries <= p.num_retries
    }

    /// Pingora's retry safety: an error Pingora marks retriable — the pooled connection was
    /// found closed while sending or before any response byte (`ReusedOnly` on a reused
    /// connection), an h2 GOAWAY or REFUSED_STREAM — or a write failing on a reused
    /// connection before any answer, is the keep-alive race, retried without a retry policy
    /// (a few times, [`MAX_REUSE_RETRIES`]) when the request may be resent whole.
    pub fn reuse_race(&self, e: &Error, reused: bool, answered: bool, resendable: bool) -> bool {
        let mut marked = e.retry;
        marked.decide_reuse(reused);
        let marked = matches!(marked, pingora::RetryType::Decided(true));
        let write_on_reused = reused
            && !answered
            && *e.esource() == pingora::ErrorSource::Upstream
            && matches!(
                e.etype(),
                ErrorType::WriteError | ErrorType::ConnectionClosed
            );
        (marked || write_on_reused) && self.reuse_retries < MAX_REUSE_RETRIES && resendable
    }
}

/// Whether a request with `method` may be sent again after it may have reached the upstream.
pub fn resendable(method: &http::Method, policy: &CallPolicy<'_>) -> bool {
    method.is_idempotent() || policy.retry.is_some_and(|p| p.retry_non_idempotent)
}

/// The Pingora peer for one endpoint of `cluster`: TLS (SNI, trusted roots) for `h2`
/// clusters, HTTP/2 for `h2` and `h2c` (and `downstream` when `downstream_h2`), the
/// cluster's pool key.
pub fn peer_for(cluster: &Cluster, ep: &Endpoint, downstream_h2: bool) -> HttpPeer {
    let tls = cluster.protocol == UpstreamProtocol::H2;
    let mut peer = HttpPeer::new(ep.addr, tls, cluster.sni.clone());
    peer.options.ca = cluster.ca.clone();
    // Pingora's pool key leaves out the CA: without this, a cluster trusting other roots
    // could reuse a connection another cluster verified to the same address and SNI.
    peer.group_key = cluster.pool_key;
    let h2 = match cluster.protocol {
        UpstreamProtocol::Http1 => false,
        UpstreamProtocol::H2c | UpstreamProtocol::H2 => true,
        UpstreamProtocol::Downstream => downstream_h2,
    };
    if h2 {
        peer.options.set_http_version(2, 2);
        peer.options.max_h2_streams = cluster.max_h2_streams;
    }
    peer
}

/// A request [`MeshClient`] sends: a whole message.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: http::Method,
    /// `/path?query`.
    pub path: String,
    /// Sent as `Host` / `:authority`; the endpoint address when absent.
    pub authority: Option<String>,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// An upstream answer, read whole.
#[derive(Debug)]
pub struct Response {
    pub header: ResponseHeader,
    pub body: Bytes,
    /// HTTP/2 trailers (gRPC status).
    pub trailers: Option<http::HeaderMap>,
    /// The endpoint that answered.
    pub endpoint: std::net::SocketAddr,
    /// Tries it took.
    pub tries: u32,
}

/// How a try went wrong.
struct TryFailure {
    error: Box<Error>,
    reused: bool,
    /// The connection could not be made (the request never left).
    connect: bool,
    /// A response header arrived before the failure.
    answered: bool,
}

/// Sends whole requests to clusters with the mesh's policies (see the module doc). One per
/// process: its [`Upstream`] holds the upstream connections (HTTP/1.1 pooled per worker
/// thread).
#[derive(Default)]
pub struct MeshClient {
    /// Made on first use, so a sidecar that never calls out loads no TLS trust store.
    upstream: OnceLock<Upstream>,
}

impl std::fmt::Debug for MeshClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MeshClient")
    }
}

impl MeshClient {
    pub fn new() -> Self {
        Self::default()
    }

    fn upstream(&self) -> &Upstream {
        self.upstream.get_or_init(Upstream::new)
    }

    /// Sends `req` to `cluster` under `policy`, reading at most `max_response` body bytes.
    pub async fn call(
        &self,
        cluster: &Arc<Cluster>,
        policy: CallPolicy<'_>,
        req: Request,
        max_response: usize,
    ) -> Result<Response, CallError> {
        let _slot = cluster.admit()?;
        let _connection = cluster.acquire_connection(policy.timeout).await?;
        let mut attempts = Attempts::new(cluster.clone());
        let resend = resendable(&req.method, &policy);
        let mut reuse_retry = false;
        loop {
            let t = attempts.begin(&policy, b"", reuse_retry).await?;
            reuse_retry = false;
            let addr = attempts
                .endpoint()
                .map(|e| e.addr.to_string())
                .unwrap_or_default();
            let exchange = self.exchange(&t.peer, &req, max_response, policy.idle_timeout, cluster);
            let outcome = match t.deadline {
                Some(d) => tokio::time::timeout(d, exchange).await.ok(),
                None => Some(exchange.await),
            };
            match outcome {
                None => {
                    // The try's deadline: per-try timeout or what was left of the total.
                    attempts.failed(AttemptResult::ServerError);
                    if !attempts.timed_out(&policy)
                        && attempts.may_retry(&policy, true, resend, |p| p.on_5xx || p.on_reset)
                    {
                        continue;
                    }
                    return Err(CallError::Timeout {
                        cluster: cluster.name.clone(),
                        timeout: t.deadline.unwrap_or_default(),
                        tries: attempts.tries(),
                    });
                }
                Some(Ok(Err(limit))) => {
                    attempts.failed(AttemptResult::ServerError);
                    return Err(CallError::TooLarge {
                        cluster: cluster.name.clone(),
                        addr,
                        limit,
                    });
                }
                Some(Ok(Ok((header, body, trailers)))) => {
                    let status = header.status.as_u16();
                    attempts.answered(status);
                    let grpc_code = || {
                        trailers
                            .as_ref()
                            .and_then(|t| t.get("grpc-status"))
                            .or_else(|| header.headers.get("grpc-status"))
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<i32>().ok())
                    };
                    if attempts.may_retry(&policy, true, resend, |p| {
                        p.retries_status(status) || grpc_code().is_some_and(|c| p.retries_grpc(c))
                    }) {
                        continue;
                    }
                    let endpoint = attempts
                        .endpoint()
                        .map(|e| e.addr)
                        .unwrap_or_else(|| ([0, 0, 0, 0], 0).into());
                    return Ok(Response {
                        header,
                        body,
                        trailers,
                        endpoint,
                        tries: attempts.tries(),
                    });
                }
                Some(Err(f)) => {
                    if f.connect {
                        attempts.failed(AttemptResult::ConnectFailure);
                        if attempts.may_retry(&policy, false, resend, |p| p.on_connect_failure) {
                            continue;
                        }
                        return Err(CallError::Connect {
                            cluster: cluster.name.clone(),
                            addr,
                            error: describe(&f.error),
                        });
                    }
                    if attempts.reuse_race(&f.error, f.reused, f.answered, resend) {
                        // A stale pooled connection says nothing about the endpoint's health.
                        reuse_retry = true;
                        continue;
                    }
                    attempts.failed(AttemptResult::ServerError);
                    if !f.answered && attempts.may_retry(&policy, true, resend, |p| p.on_reset) {
                        continue;
                    }
                    return Err(CallError::Upstream {
                        cluster: cluster.name.clone(),
                        addr,
                        error: describe(&f.error),
                    });
                }
            }
        }
    }

    /// One try over a pooled (or new) connection. `Ok(Err(limit))`: the body was too large.
    #[allow(clippy::type_complexity)]
    async fn exchange(
        &self,
        peer: &HttpPeer,
        req: &Request,
        max_response: usize,
        idle: Option<Duration>,
        cluster: &Cluster,
    ) -> Result<Result<(ResponseHeader, Bytes, Option<http::HeaderMap>), usize>, TryFailure> {
        let upstream = self.upstream();
        let (mut session, reused) = upstream.session(peer).await.map_err(|error| TryFailure {
            error,
            reused: false,
            connect: true,
            answered: false,
        })?;
        if !reused {
            cluster.metrics.connections_opened.inc();
        }
        let fail = |error: Box<Error>, answered: bool| TryFailure {
            error,
            reused,
            connect: false,
            answered,
        };
        let header = request_header(req, peer).map_err(|e| fail(e, false))?;
        let h2 = matches!(session, HttpSession::H2(_));
        let empty = req.body.is_empty();
        if let HttpSession::H2(s) = &mut session {
            s.write_request_header(header, empty)
                .map_err(|e| fail(e, false))?;
        } else {
            session
                .write_request_header(header)
                .await
                .map_err(|e| fail(e, false))?;
        }
        if !empty {
            session
                .write_request_body(req.body.clone(), true)
                .await
                .map_err(|e| fail(e, false))?;
        }
        session
            .finish_request_body()
            .await
            .map_err(|e| fail(e, false))?;
        session
            .read_response_header()
            .await
            .map_err(|e| fail(e, false))?;
        let header = session.response_header().cloned().ok_or_else(|| {
            fail(
                Error::explain(ErrorType::InvalidHTTPHeader, "no response header"),
                false,
            )
        })?;
        let mut body = BytesMut::new();
        while let Some(chunk) = session
            .read_response_body()
            .await
            .map_err(|e| fail(e, true))?
        {
            if body.len() + chunk.len() > max_response {
                // The rest is not read: the connection is not reusable.
                session.shutdown().await;
                return Ok(Err(max_response));
            }
            body.extend_from_slice(&chunk);
        }
        let trailers = match &mut session {
            HttpSession::H2(s) if h2 => s.read_trailers().await.map_err(|e| fail(e, true))?,
            _ => None,
        };
        if session.response_done() {
            upstream
                .release(
                    session,
                    peer,
                    idle.unwrap_or(POOL_IDLE_TIMEOUT).min(POOL_IDLE_TIMEOUT),
                )
                .await;
        }
        Ok(Ok((header, body.freeze(), trailers)))
    }
}

/// The request line and headers for one try.
fn request_header(req: &Request, peer: &HttpPeer) -> pingora::Result<Box<RequestHeader>> {
    let mut header = RequestHeader::build(req.method.clone(), req.path.as_bytes(), None)?;
    for (k, v) in &req.headers {
        header.append_header(k.clone(), v.clone())?;
    }
    let authority = match &req.authority {
        Some(a) => a.clone(),
        None => peer._address.to_string(),
    };
    header.insert_header(http::header::HOST, authority)?;
    if peer.options.alpn.get_max_http_version() == 1 {
        header.insert_header(http::header::CONTENT_LENGTH, req.body.len().to_string())?;
    } else {
        header.remove_header(&http::header::CONTENT_LENGTH);
        header.remove_header(&http::header::CONNECTION);
        header.remove_header(&http::header::TRANSFER_ENCODING);
    }
    Ok(Box::new(header))
}

/// An error with its context, for messages.
fn describe(e: &Error) -> String {
    match &e.context {
        Some(c) => format!("{} ({c})", e.etype().as_str()),
        None => e.etype().as_str().to_owned(),
    }
}

/// A tonic client transport over [`MeshClient`]: each gRPC call is one [`MeshClient::call`] to
/// `cluster` (unary calls: the request message is read whole, the answer is buffered up to
/// `max_message` bytes), so a generated tonic client gets the cluster's breakers, outlier
/// detection, per-cluster metrics and this channel's timeout and retries. A call that gets no
/// answer ends with a gRPC status naming the cluster and the cause (UNAVAILABLE,
/// DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED), as a proxy would answer it.
#[derive(Clone)]
pub struct GrpcChannel {
    client: Arc<MeshClient>,
    cluster: Arc<Cluster>,
    retry: Option<Arc<RetryPolicy>>,
    timeout: Option<Duration>,
    max_message: usize,
}

impl GrpcChannel {
    pub fn new(
        client: Arc<MeshClient>,
        cluster: Arc<Cluster>,
        retry: Option<Arc<RetryPolicy>>,
        timeout: Option<Duration>,
        max_message: usize,
    ) -> Self {
        Self {
            client,
            cluster,
            retry,
            timeout,
            max_message,
        }
    }

    async fn send(
        self,
        req: http::Request<tonic::body::Body>,
    ) -> http::Response<tonic::body::Body> {
        use http_body_util::BodyExt;
        let (parts, body) = req.into_parts();
        let bytes = match http_body_util::Limited::new(body, self.max_message.saturating_add(5))
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return status_response(
                    tonic::Code::Internal,
                    &format!("reading the request to send: {e}"),
                )
            }
        };
        let deadline = parts
            .headers
            .get("grpc-timeout")
            .and_then(|v| mecha_capabilities::invoke::parse_grpc_timeout(v.as_bytes()));
        let policy = CallPolicy {
            retry: self.retry.as_deref(),
            timeout: self.timeout,
            per_try_timeout: None,
            idle_timeout: None,
        }
        .within(deadline);
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned());
        let request = Request {
            method: http::Method::POST,
            path,
            authority: parts.uri.authority().map(|a| a.to_string()),
            headers: parts.headers,
            body: bytes,
        };
        match self
            .client
            .call(
                &self.cluster,
                policy,
                request,
                self.max_message.saturating_add(5),
            )
            .await
        {
            Ok(resp) => {
                let mut builder = http::Response::builder().status(resp.header.status);
                for (k, v) in resp.header.headers.iter() {
                    builder = builder.header(k, v);
                }
                let mut frames = vec![Ok::<_, std::convert::Infallible>(http_body::Frame::data(
                    resp.body,
                ))];
                if let Some(t) = resp.trailers {
                    frames.push(Ok(http_body::Frame::trailers(t)));
                }
                let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
                builder
                    .body(tonic::body::Body::new(body))
                    .unwrap_or_else(|e| {
                        status_response(tonic::Code::Internal, &format!("response: {e}"))
                    })
            }
            Err(e) => status_response(e.grpc_code(), &e.to_string()),
        }
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for GrpcChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.send(req).await) })
    }
}

/// A trailers-only gRPC answer.
fn status_response(code: tonic::Code, message: &str) -> http::Response<tonic::body::Body> {
    let mut resp = http::Response::new(tonic::body::Body::empty());
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", http::HeaderValue::from(code as i32));
    if let Ok(v) = http::HeaderValue::from_str(&percent_encode(message)) {
        h.insert("grpc-message", v);
    }
    resp
}

/// `grpc-message` encoding (gRPC over HTTP/2: percent-encode outside printable ASCII and `%`).
pub fn percent_encode(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for b in msg.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_bound_by_the_caller_deadline() {
        let p = CallPolicy::from_route(None, None, None, None);
        assert_eq!(p.timeout, Some(DEFAULT_TIMEOUT));
        assert_eq!(p.idle_timeout, Some(DEFAULT_IDLE_TIMEOUT));
        let off = CallPolicy::from_route(None, Some(Duration::ZERO), None, Some(Duration::ZERO));
        assert_eq!((off.timeout, off.idle_timeout), (None, None));
        assert_eq!(
            off.within(Some(Duration::from_secs(1))).timeout,
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            p.within(Some(Duration::from_secs(60))).timeout,
            Some(DEFAULT_TIMEOUT)
        );
    }

    #[test]
    fn call_errors_map_to_statuses() {
        let t = CallError::Timeout {
            cluster: "c".into(),
            timeout: Duration::from_secs(1),
            tries: 1,
        };
        assert_eq!(
            (t.http_status(), t.grpc_code()),
            (504, tonic::Code::DeadlineExceeded)
        );
        let c = CallError::Connect {
            cluster: "c".into(),
            addr: "127.0.0.1:1".into(),
            error: "refused".into(),
        };
        assert_eq!(
            (c.http_status(), c.grpc_code()),
            (503, tonic::Code::Unavailable)
        );
        assert!(c.to_string().contains("127.0.0.1:1"), "{c}");
        let o = CallError::Pick(PickError::Overloaded("c".into(), 3));
        assert_eq!(o.grpc_code(), tonic::Code::ResourceExhausted);
        assert_eq!(percent_encode("a%b\nc é"), "a%25b%0Ac %C3%A9");
    }
}
