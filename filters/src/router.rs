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
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderValue;
use mecha_mesh::cluster::{ConnectionSlot, RequestSlot, RetrySlot};
use mecha_mesh::config::UpstreamProtocol;
use mecha_mesh::metrics::{MeshMetrics, RouteMetrics};
use mecha_mesh::{Action, AttemptResult, Cluster, Endpoint, PickError, RouteTable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, Session};
use pingora::{Error, ErrorType};
use rand::Rng;

use crate::chain::{Decision, HttpFilter, RequestCtx};

/// Default bound on connecting plus each wait for upstream bytes, when a route sets none
/// (Envoy's default route timeout is 15 s).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

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
    cluster: Arc<Cluster>,
    _slot: RequestSlot,
    _connection: ConnectionSlot,
    endpoint: Option<Endpoint>,
    attempts: u32,
    retry_slot: Option<RetrySlot>,
    grpc: bool,
    hash_key: Vec<u8>,
    status: u16,
    /// Set when `upstream_response` asked for a retry of a retriable status: Pingora hands that
    /// error to `error_while_proxy`, which must keep the decision (and not count it twice).
    status_retry: bool,
    /// When the route was chosen: `timeout` covers the request from here, retries included.
    routed_at: Instant,
}

impl Routed {
    pub fn cluster_name(&self) -> &str {
        &self.cluster.name
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }
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
        let roll = rand::rng().random_range(0..u32::MAX);
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
        let req = session.req_header_mut();
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
            cluster,
            _slot: slot,
            _connection: connection,
            endpoint: None,
            attempts: 0,
            retry_slot: None,
            grpc,
            hash_key,
            status: 0,
            status_retry: false,
            routed_at: Instant::now(),
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

    /// Picks the endpoint for this attempt (a retry avoids the endpoint that just failed).
    pub async fn upstream_peer(routed: &mut Routed) -> pingora::Result<Box<HttpPeer>> {
        let route =
            routed.router.table.route(routed.route).ok_or_else(|| {
                Error::explain(ErrorType::InternalError, "route index out of range")
            })?;
        if routed.attempts > 0 {
            let policy = route.retry.as_ref();
            let Some(slot) = routed.cluster.admit_retry() else {
                return Err(Error::explain(
                    ErrorType::HTTPStatus(503),
                    format!(
                        "cluster {:?}: retry budget exhausted (max_retries)",
                        routed.cluster.name
                    ),
                ));
            };
            routed.retry_slot = Some(slot);
            if let Some(p) = policy {
                tokio::time::sleep(p.backoff(routed.attempts)).await;
            }
        }
        routed.attempts += 1;
        let avoid = routed.endpoint.take().map(|e| e.addr);
        let ep = routed
            .cluster
            .pick(&routed.hash_key, avoid)
            // `pick` fails only for want of a healthy endpoint.
            .map_err(|e| Error::explain(ErrorType::HTTPStatus(503), e.to_string()))?;
        let cluster = &routed.cluster;
        let tls = cluster.protocol == UpstreamProtocol::H2;
        let mut peer = HttpPeer::new(ep.addr, tls, cluster.sni.clone());
        peer.options.ca = cluster.ca.clone();
        // Pingora's pool key leaves out the CA: without this, a cluster trusting other roots
        // could reuse a connection another cluster verified to the same address and SNI.
        peer.group_key = cluster.pool_key;
        // `timeout` bounds the whole request: a try may wait only for what is left of it, and
        // at most `per_try_timeout`. `timeout: 0` disables it (as in Envoy), e.g. for streams.
        let total = route.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let timeout = if total.is_zero() {
            route.per_try_timeout
        } else {
            let left = total.saturating_sub(routed.routed_at.elapsed());
            if left.is_zero() {
                return Err(Error::explain(
                    ErrorType::HTTPStatus(504),
                    format!(
                        "route timeout of {total:?} elapsed before try {}",
                        routed.attempts
                    ),
                ));
            }
            Some(route.per_try_timeout.map_or(left, |p| p.min(left)))
        };
        peer.options.connection_timeout = Some(cluster.connect_timeout);
        peer.options.total_connection_timeout = Some(cluster.connect_timeout);
        peer.options.read_timeout = timeout;
        peer.options.write_timeout = timeout;
        if cluster.protocol != UpstreamProtocol::Http1 {
            peer.options.set_http_version(2, 2);
            peer.options.max_h2_streams = cluster.max_h2_streams;
        }
        cluster.metrics.upstream_requests.inc();
        routed.endpoint = Some(ep);
        Ok(Box::new(peer))
    }

    fn may_retry(
        routed: &Routed,
        session: &Session,
        cond: impl Fn(&mecha_mesh::retry::RetryPolicy) -> bool,
    ) -> bool {
        let Some(route) = routed.router.table.route(routed.route) else {
            return false;
        };
        let Some(p) = route.retry.as_ref() else {
            return false;
        };
        cond(p)
            && routed.attempts <= p.num_retries
            && !session.as_downstream().retry_buffer_truncated()
    }

    pub fn fail_to_connect(
        routed: &mut Routed,
        session: &Session,
        mut e: Box<Error>,
    ) -> Box<Error> {
        routed.cluster.metrics.upstream_failures.inc();
        if let Some(ep) = &routed.endpoint {
            routed.cluster.report(ep, AttemptResult::ConnectFailure);
        }
        let retry = Self::may_retry(routed, session, |p| p.on_connect_failure);
        e.set_retry(retry);
        e
    }

    pub fn error_while_proxy(
        routed: &mut Routed,
        session: &Session,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if std::mem::take(&mut routed.status_retry) {
            // Our own retry of a retriable status (already reported to outlier detection).
            return e;
        }
        routed.cluster.metrics.upstream_failures.inc();
        if let Some(ep) = &routed.endpoint {
            routed.cluster.report(ep, AttemptResult::ServerError);
        }
        // Only before anything reached the client may we try again.
        let retry = session.response_written().is_none()
            && Self::may_retry(routed, session, |p| p.on_reset);
        e.set_retry(retry);
        e
    }

    /// Upstream answered: outlier accounting, and a retry for retriable statuses.
    pub fn upstream_response(
        routed: &mut Routed,
        session: &Session,
        resp: &ResponseHeader,
    ) -> pingora::Result<()> {
        let status = resp.status.as_u16();
        routed.status = status;
        if let Some(ep) = &routed.endpoint {
            let result = if status >= 500 {
                AttemptResult::ServerError
            } else {
                AttemptResult::Success
            };
            routed.cluster.report(ep, result);
        }
        // A trailers-only gRPC answer carries its status in the headers (looked up only when
        // the route retries and the HTTP status alone does not decide).
        let grpc_code = || {
            resp.headers
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
        };
        if Self::may_retry(routed, session, |p| {
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
        let traceparent = next_traceparent(req.headers.get("traceparent"))
            .map_err(|e| Error::because(ErrorType::InternalError, "building traceparent", e))?;
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
            .map(|r| r.cluster.name.clone())
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
                "cluster": routed.cluster.name,
                "upstream": routed.endpoint.as_ref().map(|e| e.addr.to_string()),
                "attempts": routed.attempts,
                "duration_ms": started.elapsed().as_secs_f64() * 1000.0,
                "client": session.client_addr().map(|a| a.to_string()),
            });
            tracing::info!(target: "access", "{line}");
        }
        routed.endpoint = None;
    }
}

/// W3C trace context: keep the trace id, make this hop a new parent span; create one if
/// absent or malformed. Written into a fixed buffer (no `format!`: this runs per request).
fn next_traceparent(
    incoming: Option<&HeaderValue>,
) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    // "00-" trace(32) "-" span(16) "-" flags(2)
    let mut out = [0u8; 55];
    out[..3].copy_from_slice(b"00-");
    out[35] = b'-';
    out[52] = b'-';
    let mut rng = rand::rng();
    let span: u64 = rng.random::<u64>().max(1);
    put_hex(&mut out[36..52], u128::from(span));
    let kept = incoming.and_then(|v| v.to_str().ok()).and_then(|v| {
        let mut parts = v.split('-');
        let (version, trace, _parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        (parts.next().is_none()
            && version.len() == 2
            && trace.len() == 32
            && trace.bytes().all(|b| b.is_ascii_hexdigit())
            && trace != "00000000000000000000000000000000"
            && flags.len() == 2)
            .then_some((trace, flags))
    });
    match kept {
        Some((trace, flags)) => {
            out[3..35].copy_from_slice(trace.as_bytes());
            out[53..].copy_from_slice(flags.as_bytes());
        }
        None => {
            let trace: u128 = rng.random::<u128>().max(1);
            put_hex(&mut out[3..35], trace);
            out[53..].copy_from_slice(b"01");
        }
    }
    // Every byte is visible ASCII (hex digits, '-', or copied from a valid header value).
    HeaderValue::from_bytes(&out)
}

/// Lower-case hex of `v`, right-aligned and zero-padded to `dst.len()` digits.
fn put_hex(dst: &mut [u8], mut v: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for d in dst.iter_mut().rev() {
        *d = DIGITS[(v & 0xf) as usize];
        v >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_keeps_the_trace_and_makes_a_new_span() {
        let incoming =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let out = next_traceparent(Some(&incoming)).expect("valid header value");
        let out = out.to_str().expect("ascii");
        assert!(
            out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{out}"
        );
        assert!(out.ends_with("-01"));
        assert_ne!(&out[36..52], "00f067aa0ba902b7");
    }

    #[test]
    fn traceparent_matches_the_w3c_shape_for_edge_cases() {
        let trace_kept = |incoming: &'static str| {
            let v = HeaderValue::from_static(incoming);
            let out = next_traceparent(Some(&v)).expect("valid header value");
            let out = out.to_str().expect("ascii").to_owned();
            assert_eq!(out.len(), 55, "{out}");
            let span = &out[36..52];
            assert!(span
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            assert_ne!(span, "0000000000000000");
            let parts: Vec<&str> = incoming.split('-').collect();
            out == format!("00-{}-{span}-{}", parts[1], parts[3])
        };
        assert!(trace_kept("00-4BF92F3577B34DA6A3CE929D0E0E4736-x-zz"));
        assert!(trace_kept(
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        ));
        for malformed in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        ] {
            let v = HeaderValue::from_static(malformed);
            let out = next_traceparent(Some(&v)).expect("valid header value");
            let out = out.to_str().expect("ascii");
            assert!(out.starts_with("00-") && out.ends_with("-01"), "{out}");
            assert!(!out.contains("4bf92f3577b34da6a3ce929d0e0e473"), "{out}");
            assert!(out[3..35]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        }
    }

    #[test]
    fn traceparent_is_created_when_absent_or_malformed() {
        for v in [None, Some(HeaderValue::from_static("garbage"))] {
            let out = next_traceparent(v.as_ref()).expect("valid header value");
            let out = out.to_str().expect("ascii");
            let parts: Vec<&str> = out.split('-').collect();
            assert_eq!(parts.len(), 4, "{out}");
            assert_eq!(parts[1].len(), 32);
            assert_eq!(parts[2].len(), 16);
        }
    }
}
