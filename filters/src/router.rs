//! The router filter: the last filter of a chain. Matches the request to a route, answers
//! direct responses and redirects itself, and otherwise chooses the cluster; the proxy's
//! upstream phases ([`Router::upstream_peer`] and friends, called from `proxy-core`) then pick
//! the endpoint, apply timeouts and retries, feed outlier detection and record metrics.
//!
//! Proxy-generated errors are gRPC statuses when the request is gRPC (UNAVAILABLE,
//! DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED), plain HTTP statuses otherwise.
//!
//! CONNECT: only HTTP/2 extended CONNECT (RFC 8441, a `:protocol` such as `websocket`) is
//! routed, by its `:path`, and only to HTTP/2 clusters, which receive `:protocol` unchanged.
//! Plain CONNECT tunnels are refused with 405.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderValue;
use mecha_mesh::client::{resendable, Attempts, CallError, CallPolicy};
use mecha_mesh::cluster::{ConnectionSlot, RequestSlot};
use mecha_mesh::config::UpstreamProtocol;
use mecha_mesh::metrics::{MeshMetrics, RouteMetrics};
use mecha_mesh::{Action, AttemptResult, Cluster, PickError, Route, RouteTable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, Session};
use pingora::{Error, ErrorType};
use rand::Rng;

use crate::chain::{Decision, HttpFilter, RequestCtx};
use mecha_mesh::trace::{next_traceparent, put_hex};

use mecha_mesh::client::DEFAULT_TIMEOUT;

/// Inbound headers with this prefix are the proxy's own and are removed from client requests
/// (as Envoy does with `x-envoy-*`), so a client cannot forge them.
const INTERNAL_HEADER_PREFIX: &str = "x-mecha-";

/// A compiled route table (cluster references resolved) with per-route metrics.
pub struct Router {
    table: RouteTable,
    /// Parallel to `table.virtual_hosts[v].routes[r]`.
    route_metrics: Vec<Vec<RouteMetrics>>,
    access_log: bool,
}

/// Per-request routing state, kept in the request context between phases.
pub struct Routed {
    router: Arc<Router>,
    route: (usize, usize),
    /// The tries against the chosen cluster (endpoint, retry slot, the `timeout` clock):
    /// the mesh client's policy state, driven from the proxy phases.
    tries: Attempts,
    _slot: RequestSlot,
    _connection: ConnectionSlot,
    grpc: bool,
    hash_key: Vec<u8>,
    status: u16,
    /// Set when `upstream_response` asked for a retry of a retriable status: Pingora hands that
    /// error to `error_while_proxy`, which must keep the decision (and not count it twice).
    status_retry: bool,
    /// Set by `error_while_proxy` when the next try retries the keep-alive race.
    reuse_retry: bool,
    /// The request's `x-request-id` (kept or created), for the access log.
    request_id: HeaderValue,
}

impl Routed {
    pub fn cluster_name(&self) -> &str {
        &self.tries.cluster().name
    }

    pub fn cluster(&self) -> &Cluster {
        self.tries.cluster()
    }

    fn route(&self) -> Option<&Route> {
        self.router.table.route(self.route)
    }

    /// The route's policies (`timeout` runs from when the route was chosen: it covers the
    /// connection slot wait, every try and backoff, and the response until its end).
    fn policy(&self) -> CallPolicy<'_> {
        self.route().map(route_policy).unwrap_or_default()
    }
}

fn route_policy(r: &Route) -> CallPolicy<'_> {
    CallPolicy::from_route(
        r.retry.as_ref(),
        r.timeout,
        r.per_try_timeout,
        r.idle_timeout,
    )
}

impl Router {
    pub fn new(table: RouteTable, metrics: &MeshMetrics, access_log: bool) -> Self {
        let route_metrics = table
            .virtual_hosts
            .iter()
            .map(|vh| vh.routes.iter().map(|r| metrics.route(&r.label)).collect())
            .collect();
        Self {
            table,
            route_metrics,
            access_log,
        }
    }

    /// The metric label of every route.
    pub fn route_labels(&self) -> impl Iterator<Item = &str> {
        self.table
            .virtual_hosts
            .iter()
            .flat_map(|vh| vh.routes.iter().map(|r| r.label.as_str()))
    }

    /// Every cluster some route sends to (for telling whether a rebuilt cluster concerns it).
    pub fn clusters(&self) -> impl Iterator<Item = &Arc<Cluster>> {
        self.table
            .virtual_hosts
            .iter()
            .flat_map(|vh| vh.routes.iter().flat_map(|r| r.clusters()))
    }
}

/// The filter wrapper: holds the router for the chain.
pub struct RouterFilter(pub Arc<Router>);

fn is_grpc(req: &RequestHeader) -> bool {
    req.headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Proxy-generated error: a gRPC trailers-only status for gRPC requests, else HTTP.
async fn respond_error(
    session: &mut Session,
    grpc: bool,
    http_status: u16,
    message: &str,
    extra: Option<(&'static str, &'static str)>,
) -> pingora::Result<()> {
    if grpc {
        let code = match http_status {
            504 => tonic::Code::DeadlineExceeded,
            429 => tonic::Code::ResourceExhausted,
            404 => tonic::Code::Unimplemented,
            _ => tonic::Code::Unavailable,
        };
        let mut resp = ResponseHeader::build(200, Some(4))?;
        resp.insert_header("content-type", "application/grpc")?;
        resp.insert_header("grpc-status", (code as i32).to_string())?;
        resp.insert_header("grpc-message", crate::grpc_bridge::percent_encode(message))?;
        if let Some((k, v)) = extra {
            resp.insert_header(k, v)?;
        }
        session.write_response_header(Box::new(resp), true).await?;
        return Ok(());
    }
    let body = Bytes::from(format!("{message}\n"));
    let mut resp = ResponseHeader::build(http_status, Some(4))?;
    resp.insert_header("content-type", "text/plain")?;
    resp.insert_header("content-length", body.len().to_string())?;
    if let Some((k, v)) = extra {
        resp.insert_header(k, v)?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// Where the downstream connection was going before an iptables REDIRECT
/// (`SO_ORIGINAL_DST`); `None` when it came to this address itself (sending it "back" there
/// would loop into Mecha).
fn original_destination(session: &Session) -> Option<std::net::SocketAddr> {
    let sd = session.as_downstream().digest()?.socket_digest.as_ref()?;
    let dst = *sd.original_dst()?.as_inet()?;
    let local = sd.local_addr().and_then(|a| a.as_inet().copied());
    (Some(dst) != local).then_some(dst)
}

/// Answers a breaker overflow or a pending timeout (gRPC: RESOURCE_EXHAUSTED / DEADLINE_EXCEEDED).
/// Returns the HTTP status recorded for the route.
async fn respond_pick_error(
    session: &mut Session,
    grpc: bool,
    e: &PickError,
) -> pingora::Result<u16> {
    let (status, wire) = match (e, grpc) {
        (PickError::PendingTimeout(..), _) => (504, 504),
        (PickError::NoHealthy(_), _) => (503, 503),
        (_, true) => (503, 429),
        (_, false) => (503, 503),
    };
    let extra = e.breaker().map(|b| ("x-mecha-overloaded", b));
    respond_error(session, grpc, wire, &e.to_string(), extra).await?;
    Ok(status)
}

#[async_trait]
impl HttpFilter for RouterFilter {
    fn name(&self) -> &'static str {
        "router"
    }

    async fn on_request(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Decision> {
        let router = &self.0;
        // Before matching, so no route decision rests on a forged internal header.
        strip_internal_headers(session.req_header_mut());
        let req = session.req_header();
        let grpc = is_grpc(req);
        if req.method == http::Method::CONNECT
            && req.extensions.get::<h2::ext::Protocol>().is_none()
        {
            let msg = "CONNECT tunnels are not supported; HTTP/2 extended CONNECT (RFC 8441) is";
            respond_error(session, grpc, 405, msg, None).await?;
            return Ok(Decision::Responded);
        }
        let authority = req
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| {
                req.headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .unwrap_or("");
        let path = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let Some(idx) = router
            .table
            .find_index(authority, path, &req.method, &req.headers)
        else {
            let msg = format!("no route for {} {}{}", req.method, authority, path);
            respond_error(session, grpc, 404, &msg, None).await?;
            return Ok(Decision::Responded);
        };
        let Some(route) = router.table.route(idx) else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "route index out of range",
            ));
        };
        match &route.action {
            Action::Direct { status, body } => {
                let body = body.clone();
                let mut resp = ResponseHeader::build(*status, Some(3))?;
                resp.insert_header("content-length", body.len().to_string())?;
                for (k, v) in &route.response_headers_to_add {
                    resp.append_header(k.clone(), v.clone())?;
                }
                session
                    .write_response_header(Box::new(resp), body.is_empty())
                    .await?;
                if !body.is_empty() {
                    session.write_response_body(Some(body), true).await?;
                }
                router.record(idx, *status, ctx.started);
                return Ok(Decision::Responded);
            }
            Action::Redirect {
                scheme,
                host,
                path: new_path,
                code,
            } => {
                let scheme = scheme.as_deref().unwrap_or("http");
                let host = host.as_deref().unwrap_or(authority);
                let p = new_path.as_deref().unwrap_or(path);
                let mut resp = ResponseHeader::build(*code, Some(2))?;
                resp.insert_header("location", format!("{scheme}://{host}{p}"))?;
                resp.insert_header("content-length", "0")?;
                session.write_response_header(Box::new(resp), true).await?;
                router.record(idx, *code, ctx.started);
                return Ok(Decision::Responded);
            }
            Action::Cluster(_) | Action::Weighted { .. } => {}
        }
        // Only a weighted choice needs a random roll (a thread-local RNG draw per request).
        let roll = if route.is_weighted() {
            rand::rng().random_range(0..u32::MAX)
        } else {
            0
        };
        let Some(cluster) = route.cluster_for(roll).cloned() else {
            respond_error(session, grpc, 503, "route names no usable cluster", None).await?;
            router.record(idx, 503, ctx.started);
            return Ok(Decision::Responded);
        };
        if req.method == http::Method::CONNECT && cluster.protocol == UpstreamProtocol::Http1 {
            let msg = format!(
                "cluster {:?} speaks HTTP/1.1; extended CONNECT needs an h2 or h2c cluster",
                cluster.name
            );
            respond_error(session, grpc, 502, &msg, None).await?;
            router.record(idx, 502, ctx.started);
            return Ok(Decision::Responded);
        }
        let mut tries = Attempts::new(cluster.clone());
        // Read only for the clusters that use it: the original destination is a syscall.
        let original_dst = if cluster.original_dst {
            let dst = original_destination(session);
            if dst.is_none() {
                let e = PickError::NoOriginalDst(cluster.name.clone());
                let status = respond_pick_error(session, grpc, &e).await?;
                router.record(idx, status, ctx.started);
                return Ok(Decision::Responded);
            }
            dst
        } else {
            None
        };
        tries.set_downstream(original_dst, session.is_http2());
        let slot = match cluster.admit() {
            Ok(s) => s,
            Err(e) => {
                let status = respond_pick_error(session, grpc, &e).await?;
                router.record(idx, status, ctx.started);
                return Ok(Decision::Responded);
            }
        };
        // Waiting for a connection slot counts against the route timeout (0: no bound).
        let wait = route.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let connection = match cluster
            .acquire_connection((!wait.is_zero()).then_some(wait))
            .await
        {
            Ok(c) => c,
            Err(e) => {
                let status = respond_pick_error(session, grpc, &e).await?;
                router.record(idx, status, ctx.started);
                return Ok(Decision::Responded);
            }
        };

        // Only ring hash reads the key: skip building it (an allocation) for other policies.
        let hash_key = match (&cluster.hash_header, session.client_addr()) {
            _ if !cluster.hashes() => Vec::new(),
            (Some(h), _) if session.req_header().headers.contains_key(h.as_str()) => session
                .req_header()
                .headers
                .get(h.as_str())
                .map(|v| v.as_bytes().to_vec())
                .unwrap_or_default(),
            (_, Some(addr)) => addr
                .as_inet()
                .map(|a| a.ip().to_string().into_bytes())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        // Request mutations.
        let new_path = route.rewrite_path(path);
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let req = session.req_header_mut();
        append_forwarded_for(req, client_ip)?;
        let request_id = ensure_request_id(req)?;
        for h in &route.request_headers_to_remove {
            req.remove_header(h);
        }
        for (k, v) in &route.request_headers_to_add {
            req.append_header(k.clone(), v.clone())?;
        }
        if let Some(p) = new_path {
            // Keep scheme and authority: an h2 request carries its authority only in the URI,
            // and the upstream h2 request needs it.
            let mut parts = req.uri.clone().into_parts();
            if let Ok(pq) = p.parse::<http::uri::PathAndQuery>() {
                parts.path_and_query = Some(pq);
                if let Ok(uri) = http::Uri::from_parts(parts) {
                    req.set_uri(uri);
                }
            }
        }
        if route.retry.is_some() {
            // Keep the request body so a retry can resend it.
            session.as_downstream_mut().enable_retry_buffering();
        }
        ctx.routed = Some(Routed {
            router: router.clone(),
            route: idx,
            tries,
            _slot: slot,
            _connection: connection,
            grpc,
            hash_key,
            status: 0,
            status_retry: false,
            reuse_retry: false,
            request_id,
        });
        Ok(Decision::Continue)
    }
}

// === upstream phases ===

impl Router {
    fn record(&self, (vi, ri): (usize, usize), status: u16, started: Instant) {
        if let Some(m) = self.route_metrics.get(vi).and_then(|v| v.get(ri)) {
            m.record(status, started.elapsed().as_secs_f64());
        }
    }

    /// Picks the endpoint for this attempt (a retry avoids the endpoint that just failed):
    /// [`Attempts::begin`] applies the retry budget, backoff and try timeouts.
    pub async fn upstream_peer(routed: &mut Routed) -> pingora::Result<Box<HttpPeer>> {
        let route =
            routed.router.table.route(routed.route).ok_or_else(|| {
                Error::explain(ErrorType::InternalError, "route index out of range")
            })?;
        let policy = route_policy(route);
        let reuse_retry = std::mem::take(&mut routed.reuse_retry);
        // No answer yet from this try (`reuse_race` reads it).
        routed.status = 0;
        match routed
            .tries
            .begin(&policy, &routed.hash_key, reuse_retry)
            .await
        {
            Ok(t) => Ok(Box::new(t.peer)),
            Err(e) => {
                let msg = match &e {
                    CallError::Timeout { cluster, timeout, tries } => format!(
                        "cluster {cluster:?}: route timeout of {timeout:?} elapsed before try {tries}"
                    ),
                    other => other.to_string(),
                };
                Err(Error::explain(ErrorType::HTTPStatus(e.http_status()), msg))
            }
        }
    }

    /// Whether the route's retry policy retries this failure ([`Attempts::may_retry`]), and
    /// the request body is still whole to resend.
    fn may_retry(
        routed: &Routed,
        session: &Session,
        may_have_arrived: bool,
        cond: impl Fn(&mecha_mesh::retry::RetryPolicy) -> bool,
    ) -> bool {
        let policy = routed.policy();
        routed.tries.may_retry(
            &policy,
            may_have_arrived,
            resendable(&session.req_header().method, &policy),
            cond,
        ) && !session.as_downstream().retry_buffer_truncated()
    }

    /// The keep-alive race ([`Attempts::reuse_race`]): Pingora's retry safety, kept although
    /// `error_while_proxy` is overridden, for requests whose body can still be resent whole.
    fn reuse_race(routed: &Routed, session: &Session, e: &Error, client_reused: bool) -> bool {
        let policy = routed.policy();
        routed.tries.reuse_race(
            e,
            client_reused,
            routed.status != 0,
            resendable(&session.req_header().method, &policy),
        ) && session.response_written().is_none()
            && !session.as_downstream().retry_buffer_truncated()
    }

    pub fn fail_to_connect(
        routed: &mut Routed,
        session: &Session,
        mut e: Box<Error>,
    ) -> Box<Error> {
        routed.tries.failed(AttemptResult::ConnectFailure);
        // The request never left: any method may be retried.
        let retry = Self::may_retry(routed, session, false, |p| p.on_connect_failure);
        e.set_retry(retry);
        e
    }

    /// `client_reused`: the try ran on a pooled upstream connection.
    pub fn error_while_proxy(
        routed: &mut Routed,
        session: &Session,
        mut e: Box<Error>,
        client_reused: bool,
    ) -> Box<Error> {
        if std::mem::take(&mut routed.status_retry) {
            // Our own retry of a retriable status (already reported to outlier detection).
            return e;
        }
        if Self::reuse_race(routed, session, &e, client_reused) {
            // A stale pooled connection says nothing about the endpoint's health.
            routed.reuse_retry = true;
            e.set_retry(true);
            return e;
        }
        routed.tries.failed(AttemptResult::ServerError);
        // Only before anything reached the client may we try again.
        let retry = session.response_written().is_none()
            && Self::may_retry(routed, session, true, |p| p.on_reset);
        e.set_retry(retry);
        e
    }

    /// A chunk of the response body: the route `timeout` also covers the response's end, so
    /// a response still streaming when it elapses is cut (the client sees a reset stream).
    pub fn upstream_body(routed: &Routed) -> pingora::Result<()> {
        let policy = routed.policy();
        if routed.tries.timed_out(&policy) {
            return Err(Error::explain(
                ErrorType::ReadTimedout,
                format!(
                    "cluster {:?}: route timeout of {:?} elapsed while the response streamed",
                    routed.cluster_name(),
                    policy.timeout.unwrap_or_default()
                ),
            ));
        }
        Ok(())
    }

    /// Upstream answered: outlier accounting, and a retry for retriable statuses.
    pub fn upstream_response(
        routed: &mut Routed,
        session: &Session,
        resp: &ResponseHeader,
    ) -> pingora::Result<()> {
        let status = resp.status.as_u16();
        routed.status = status;
        routed.tries.answered(status);
        // A trailers-only gRPC answer carries its status in the headers (looked up only when
        // the route retries and the HTTP status alone does not decide).
        let grpc_code = || {
            resp.headers
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
        };
        if Self::may_retry(routed, session, true, |p| {
            p.retries_status(status) || grpc_code().is_some_and(|c| p.retries_grpc(c))
        }) {
            let mut e = Error::explain(
                ErrorType::HTTPStatus(status),
                format!("upstream answered {status}; retrying"),
            );
            e.set_retry(true);
            routed.status_retry = true;
            return Err(e);
        }
        Ok(())
    }

    pub fn response_headers(routed: &Routed, resp: &mut ResponseHeader) -> pingora::Result<()> {
        let Some(route) = routed.router.table.route(routed.route) else {
            return Ok(());
        };
        for h in &route.response_headers_to_remove {
            resp.remove_header(h);
        }
        for (k, v) in &route.response_headers_to_add {
            resp.append_header(k.clone(), v.clone())?;
        }
        Ok(())
    }

    /// Host rewrite and W3C trace context on the upstream request.
    pub fn upstream_request(routed: &Routed, req: &mut RequestHeader) -> pingora::Result<()> {
        if let Some(route) = routed.router.table.route(routed.route) {
            if let Some(h) = &route.host_rewrite {
                req.insert_header(http::header::HOST, h.clone())?;
                if req.uri.authority().is_some() {
                    let pq = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
                    if let Ok(uri) = format!(
                        "{}://{}{}",
                        req.uri.scheme_str().unwrap_or("http"),
                        h.to_str().unwrap_or(""),
                        pq
                    )
                    .parse::<http::Uri>()
                    {
                        req.set_uri(uri);
                    }
                }
            }
        }
        let mut incoming = req.headers.get_all("traceparent").iter();
        // Two traceparent headers are invalid (W3C Trace Context §3.2): a new trace.
        let incoming = match (incoming.next(), incoming.next()) {
            (Some(v), None) => Some(v),
            _ => None,
        };
        let (traceparent, kept) = next_traceparent(incoming)
            .map_err(|e| Error::because(ErrorType::InternalError, "building traceparent", e))?;
        if !kept {
            // A tracestate belongs to the trace it came with, which is not the new one.
            req.remove_header("tracestate");
        }
        req.insert_header("traceparent", traceparent)?;
        Ok(())
    }

    /// The final error answer when proxying failed.
    pub async fn fail_to_proxy(
        routed: Option<&mut Routed>,
        session: &mut Session,
        e: &Error,
    ) -> FailToProxy {
        let grpc = routed
            .as_ref()
            .map(|r| r.grpc)
            .unwrap_or_else(|| is_grpc(session.req_header()));
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
            ErrorType::ConnectRefused | ErrorType::ConnectNoRoute | ErrorType::ConnectError => 503,
            _ => match e.esource() {
                pingora::ErrorSource::Upstream => 502,
                pingora::ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                _ => 500,
            },
        };
        let cluster = routed
            .as_ref()
            .map(|r| r.cluster_name().to_owned())
            .unwrap_or_default();
        if code > 0 && session.response_written().is_none() {
            let msg = match code {
                504 => format!("upstream timeout (cluster {cluster:?})"),
                503 => format!(
                    "upstream unavailable (cluster {cluster:?}): {}",
                    e.context
                        .as_ref()
                        .map(|c| c.as_str())
                        .unwrap_or("no healthy endpoint")
                ),
                400 => "malformed request".to_owned(),
                _ => format!(
                    "upstream error (cluster {cluster:?}): {}",
                    e.etype().as_str()
                ),
            };
            if let Err(we) = respond_error(session, grpc, code, &msg, None).await {
                tracing::debug!(error = %we, "could not send error response");
            }
        }
        // When headers already went out, Pingora aborts the downstream stream (h2 reset, h1
        // close): the client sees a broken response, never a silently truncated one.
        if let Some(r) = routed {
            r.status = code;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// End of request: route metrics and the access log.
    pub fn logging(routed: &mut Routed, session: &Session, started: Instant) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(routed.status);
        routed.router.record(routed.route, status, started);
        if routed.router.access_log {
            let req = session.req_header();
            let line = serde_json::json!({
                "method": req.method.as_str(),
                "path": req.uri.path(),
                "authority": req.uri.authority().map(|a| a.as_str()).or_else(|| req.headers.get("host").and_then(|h| h.to_str().ok())),
                "status": status,
                "route": routed.router.table.route(routed.route).map(|r| r.label.as_str()),
                "cluster": routed.cluster_name(),
                "upstream": routed.tries.endpoint().map(|e| e.addr.to_string()),
                "attempts": routed.tries.tries(),
                "request_id": routed.request_id.to_str().ok(),
                "duration_ms": started.elapsed().as_secs_f64() * 1000.0,
                "client": session.client_addr().map(|a| a.to_string()),
            });
            tracing::info!(target: "access", "{line}");
        }
        routed.tries.release_endpoint();
    }
}

/// Removes every inbound `x-mecha-*` header (see [`INTERNAL_HEADER_PREFIX`]). Allocates only
/// when there is one to remove.
fn strip_internal_headers(req: &mut RequestHeader) {
    if !req
        .headers
        .keys()
        .any(|k| k.as_str().starts_with(INTERNAL_HEADER_PREFIX))
    {
        return;
    }
    let names: Vec<http::HeaderName> = req
        .headers
        .keys()
        .filter(|k| k.as_str().starts_with(INTERNAL_HEADER_PREFIX))
        .cloned()
        .collect();
    for name in names {
        req.remove_header(&name);
    }
}

/// Appends the client address to `x-forwarded-for` (Envoy with `use_remote_address`): the
/// incoming list is kept, and several header lines are joined into one list.
fn append_forwarded_for(
    req: &mut RequestHeader,
    client: Option<std::net::IpAddr>,
) -> pingora::Result<()> {
    const XFF: &str = "x-forwarded-for";
    let Some(ip) = client else {
        return Ok(());
    };
    let ip = ip.to_string();
    let mut value = Vec::with_capacity(ip.len());
    for prev in req.headers.get_all(XFF) {
        let prev = prev.as_bytes().trim_ascii();
        if !prev.is_empty() {
            value.extend_from_slice(prev);
            value.extend_from_slice(b", ");
        }
    }
    value.extend_from_slice(ip.as_bytes());
    let value = HeaderValue::from_bytes(&value)
        .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "building x-forwarded-for", e))?;
    req.insert_header(XFF, value)?;
    Ok(())
}

/// Keeps the request's `x-request-id`, or gives it a new UUIDv4 one; returns it.
fn ensure_request_id(req: &mut RequestHeader) -> pingora::Result<HeaderValue> {
    const ID: &str = "x-request-id";
    if let Some(v) = req.headers.get(ID).filter(|v| !v.is_empty()) {
        return Ok(v.clone());
    }
    let id = new_request_id();
    req.insert_header(ID, id.clone())?;
    Ok(id)
}

/// A random UUID, version 4 (RFC 9562 §5.4), in its lower-case hyphenated form.
fn new_request_id() -> HeaderValue {
    let mut v: u128 = rand::rng().random();
    // Version nibble 4, variant bits 10.
    v = (v & !(0xfu128 << 76)) | (0x4u128 << 76);
    v = (v & !(0x3u128 << 62)) | (0x2u128 << 62);
    let mut hex = [0u8; 32];
    put_hex(&mut hex, v);
    let mut out = [b'-'; 36];
    out[..8].copy_from_slice(&hex[..8]);
    out[9..13].copy_from_slice(&hex[8..12]);
    out[14..18].copy_from_slice(&hex[12..16]);
    out[19..23].copy_from_slice(&hex[16..20]);
    out[24..].copy_from_slice(&hex[20..]);
    // Hex digits and '-' only.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_uuid_v4() {
        let a = new_request_id();
        let a = a.to_str().expect("ascii");
        let groups: Vec<&str> = a.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12],
            "{a}"
        );
        assert!(groups[2].starts_with('4'), "version 4: {a}");
        assert!(
            groups[3].starts_with(['8', '9', 'a', 'b']),
            "RFC 9562 variant: {a}"
        );
        assert!(a
            .bytes()
            .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_ne!(new_request_id(), new_request_id());
    }

    #[test]
    fn inbound_internal_headers_go_and_forwarded_for_grows() {
        let mut req = RequestHeader::build("GET", b"/", Some(4)).expect("request");
        req.append_header("x-mecha-overloaded", "forged")
            .expect("header");
        req.append_header("X-Mecha-Route", "forged")
            .expect("header");
        req.append_header("x-mechanic", "kept").expect("header");
        req.append_header("x-forwarded-for", "10.0.0.1")
            .expect("header");
        req.append_header("x-forwarded-for", "10.0.0.2 ")
            .expect("header");
        strip_internal_headers(&mut req);
        assert!(req.headers.get("x-mecha-overloaded").is_none());
        assert!(req.headers.get("x-mecha-route").is_none());
        assert_eq!(
            req.headers.get("x-mechanic").map(|v| v.as_bytes()),
            Some(&b"kept"[..])
        );
        append_forwarded_for(&mut req, Some([127, 0, 0, 9].into())).expect("xff");
        let xff: Vec<&[u8]> = req
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(xff, [&b"10.0.0.1, 10.0.0.2, 127.0.0.9"[..]]);
        let id = ensure_request_id(&mut req).expect("id");
        assert_eq!(req.headers.get("x-request-id"), Some(&id));
        assert_eq!(
            ensure_request_id(&mut req).expect("id"),
            id,
            "kept when present"
        );
    }
}
