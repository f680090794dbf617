//! The capability filter: terminates runtime APIs (Layotto's `spec.proto.runtime.v1.Runtime`
//! today, Dapr's next) in-process.
//!
//! A request whose path starts with one of the configured API prefixes is handed, over the
//! [`grpc_bridge`](crate::grpc_bridge), to that API's tonic service (an adapter from
//! `mecha-api` over the building blocks).
//!
//! HTTP service invocation (Dapr's forms, so plain HTTP clients invoke without an SDK): a
//! request with `dapr-app-id: <app>`, to `/v1.0/invoke/<app>/method/<path>`, or with
//! `Host: <app>` (a listed app) is sent to that app through the mesh invoker — its body read
//! whole (at most `max_request_message_bytes`), the callee's answer returned as it came.
//! Anything else continues down the chain.
//!
//! With an API token configured, a runtime-API request must carry it (`dapr-api-token:
//! <token>`, as Dapr's clients send it, or `authorization: Bearer <token>`); otherwise it is
//! answered UNAUTHENTICATED (recorded in the API's metrics under that code) and never reaches
//! a service.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use mecha_capabilities::invoke::{InvokeError, InvokeRequest, ServiceInvoker};
use pingora::protocols::http::server::Session as HttpSession;
use pingora::proxy::Session;
use subtle::ConstantTimeEq;
use tower::util::BoxCloneSyncService;

use crate::chain::{Decision, HttpFilter, RequestCtx};
use crate::grpc_bridge::{self, CallOptions, RequestBody};
use crate::metrics::GrpcMetrics;

/// A tonic service behind the bridge, type-erased so one filter can hold several APIs.
pub type GrpcService =
    BoxCloneSyncService<http::Request<RequestBody>, http::Response<tonic::body::Body>, Infallible>;

/// One runtime API the filter terminates.
pub struct GrpcApi {
    /// Metric label, e.g. `layotto`.
    pub name: &'static str,
    /// `/package.Service/`, e.g. `/spec.proto.runtime.v1.Runtime/`.
    pub prefix: &'static str,
    pub service: GrpcService,
    /// Methods whose requests stream (client- or bidi-streaming).
    pub streaming_request_methods: &'static [&'static str],
    pub metrics: Arc<GrpcMetrics>,
}

/// Settings of one capability filter.
#[derive(Clone)]
pub struct CapabilityOptions {
    /// Largest request message accepted (bytes).
    pub max_request_message: usize,
    /// The token requests must carry; `None`: no authentication.
    pub api_token: Option<String>,
    /// Single-message requests: the longest wait for the next bytes of the body.
    pub request_body_timeout: Duration,
}

impl std::fmt::Debug for CapabilityOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapabilityOptions")
            .field("max_request_message", &self.max_request_message)
            .field("api_token", &self.api_token.as_ref().map(|_| "<redacted>"))
            .field("request_body_timeout", &self.request_body_timeout)
            .finish()
    }
}

/// What an unauthenticated caller is told: which headers carry the token (never the token).
const UNAUTHENTICATED_MESSAGE: &str = "missing or wrong API token: send it in the \
    dapr-api-token header (or authorization: Bearer <token>)";

/// Terminates the configured runtime APIs.
pub struct CapabilityFilter {
    apis: Vec<GrpcApi>,
    opts: CapabilityOptions,
    invoker: Option<Arc<dyn ServiceInvoker>>,
}

impl CapabilityFilter {
    pub fn new(apis: Vec<GrpcApi>, opts: CapabilityOptions) -> Self {
        Self {
            apis,
            opts,
            invoker: None,
        }
    }

    /// Serves HTTP service invocation through `invoker` as well.
    pub fn with_invoker(mut self, invoker: Option<Arc<dyn ServiceInvoker>>) -> Self {
        self.invoker = invoker;
        self
    }

    /// Whether the request carries the configured token (always, when none is configured).
    fn authorized(&self, headers: &http::HeaderMap) -> bool {
        let Some(want) = &self.opts.api_token else {
            return true;
        };
        let want = want.as_bytes();
        let bearer = headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .and_then(|v| {
                let (scheme, token) = v.split_at_checked(7)?;
                scheme.eq_ignore_ascii_case(b"bearer ").then_some(token)
            });
        let dapr = headers.get("dapr-api-token").map(|v| v.as_bytes());
        // Constant-time comparison (`subtle`): the time taken must not tell a caller how much
        // of a guess was right. Both are compared, so which header was sent is not timed
        // either; only the length of a wrong guess can show.
        let ok = |given: Option<&[u8]>| given.map_or(0u8, |g| g.ct_eq(want).unwrap_u8());
        (ok(dapr) | ok(bearer)) == 1
    }
}

#[async_trait]
impl HttpFilter for CapabilityFilter {
    fn name(&self) -> &'static str {
        "capability"
    }

    async fn on_request(
        &self,
        session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> pingora::Result<Decision> {
        self.serve(session.as_downstream_mut()).await
    }
}

impl CapabilityFilter {
    /// Answers the request when its path belongs to one of the APIs. Works on Pingora's core
    /// server session, so a listener whose chain is only this filter can skip the proxy
    /// machinery entirely (see `proxy-core`'s lean listener).
    pub async fn serve(&self, session: &mut HttpSession) -> pingora::Result<Decision> {
        let started = std::time::Instant::now();
        let path = session.req_header().uri.path();
        let Some((api, method)) = self
            .apis
            .iter()
            .find_map(|a| path.strip_prefix(a.prefix).map(|m| (a, m)))
        else {
            if let Some(invoker) = &self.invoker {
                if let Some(target) = invocation_target(session.req_header(), invoker.as_ref()) {
                    self.invoke_http(session, invoker.as_ref(), target).await?;
                    return Ok(Decision::Responded);
                }
            }
            return Ok(Decision::Continue);
        };
        let method_index = api.metrics.method_index(method);
        let streaming_request = api.streaming_request_methods.contains(&method);
        // tonic would say UNIMPLEMENTED with no message; name what was asked for.
        let unknown = (method_index == api.metrics.unknown_index()).then(|| {
            format!(
                "unknown method {}{method} ({} API)",
                api.prefix.trim_start_matches('/'),
                api.name
            )
        });

        if !self.authorized(&session.req_header().headers) {
            match session {
                HttpSession::H2(h2) => {
                    let sent = grpc_bridge::send_trailers_only(
                        h2,
                        tonic::Code::Unauthenticated,
                        UNAUTHENTICATED_MESSAGE,
                    );
                    if let Err(e) = sent {
                        tracing::debug!(error = %e, "could not answer an unauthenticated call");
                    }
                }
                _ => {
                    let body = format!("{UNAUTHENTICATED_MESSAGE}\n");
                    session
                        .respond_error_with_body(401, Bytes::from(body))
                        .await?;
                }
            }
            api.metrics.record(
                method_index,
                tonic::Code::Unauthenticated,
                started.elapsed().as_secs_f64(),
            );
            return Ok(Decision::Responded);
        }
        if session.req_header().method != http::Method::POST {
            session
                .respond_error_with_body(
                    405,
                    Bytes::from_static(b"gRPC methods are called with POST\n"),
                )
                .await?;
            return Ok(Decision::Responded);
        }
        let HttpSession::H2(h2) = session else {
            // gRPC needs HTTP/2 trailers; say so instead of a confusing framing error.
            session
                .respond_error_with_body(
                    505,
                    Bytes::from_static(
                        b"gRPC needs HTTP/2: connect with h2c (prior knowledge) to this port\n",
                    ),
                )
                .await?;
            return Ok(Decision::Responded);
        };
        if let Some(msg) = unknown {
            let sent = grpc_bridge::send_trailers_only(h2, tonic::Code::Unimplemented, &msg);
            api.metrics.record(
                method_index,
                tonic::Code::Unimplemented,
                started.elapsed().as_secs_f64(),
            );
            if let Err(e) = sent {
                tracing::debug!(error = %e, "could not answer unknown method");
            }
            return Ok(Decision::Responded);
        }
        let opts = CallOptions {
            max_request_message: self.opts.max_request_message,
            streaming_request,
            body_timeout: self.opts.request_body_timeout,
        };
        let result = grpc_bridge::serve(h2, api.service.clone(), opts).await;
        let code = match &result {
            Ok(o) => o.code,
            // The exchange broke (almost always: the client reset or went away).
            Err(_) => tonic::Code::Cancelled,
        };
        api.metrics
            .record(method_index, code, started.elapsed().as_secs_f64());
        if let Err(e) = result {
            let method = api.metrics.method_name(method_index);
            tracing::debug!(api = api.name, method, error = %e, "grpc exchange ended early");
        }
        Ok(Decision::Responded)
    }
}

/// Where an HTTP invocation goes: the app and the path (with query) on it.
#[derive(Debug, PartialEq, Eq)]
struct InvocationTarget {
    app: String,
    path: String,
}

/// Dapr's invocation forms: `/v1.0/invoke/<app>/method/<path>`, a `dapr-app-id` header, or a
/// `Host` that is a listed app id.
fn invocation_target(
    req: &pingora::http::RequestHeader,
    invoker: &dyn ServiceInvoker,
) -> Option<InvocationTarget> {
    let path = req.uri.path();
    let query = req.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    if let Some(rest) = path.strip_prefix("/v1.0/invoke/") {
        let (app, method) = rest.split_once("/method/")?;
        return Some(InvocationTarget {
            app: app.to_owned(),
            path: format!("/{method}{query}"),
        });
    }
    let full = || format!("{path}{query}");
    if let Some(app) = req.headers.get("dapr-app-id").and_then(|v| v.to_str().ok()) {
        return Some(InvocationTarget {
            app: app.trim().to_owned(),
            path: full(),
        });
    }
    let host = req
        .uri
        .host()
        .or_else(|| req.headers.get(http::header::HOST)?.to_str().ok())?;
    let host = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    invoker.knows(host).then(|| InvocationTarget {
        app: host.to_owned(),
        path: full(),
    })
}

/// The HTTP answer for an invocation that got no answer from the callee, with Dapr's error
/// body shape (`errorCode`, `message`).
fn invoke_error_response(e: &InvokeError) -> (u16, String) {
    let (status, code) = match e {
        InvokeError::UnknownApp { .. } => (404, "ERR_DIRECT_INVOKE_APP_NOT_FOUND"),
        InvokeError::InvalidArgument(_) => (400, "ERR_DIRECT_INVOKE"),
        InvokeError::Unavailable { .. } => (503, "ERR_DIRECT_INVOKE"),
        InvokeError::DeadlineExceeded { .. } => (504, "ERR_DIRECT_INVOKE"),
        InvokeError::ResourceExhausted { .. } => (429, "ERR_DIRECT_INVOKE"),
    };
    let body = serde_json::json!({ "errorCode": code, "message": e.to_string() }).to_string();
    (status, body)
}

impl CapabilityFilter {
    /// Sends one HTTP invocation through the mesh and writes the callee's answer back.
    async fn invoke_http(
        &self,
        session: &mut HttpSession,
        invoker: &dyn ServiceInvoker,
        target: InvocationTarget,
    ) -> pingora::Result<()> {
        if !self.authorized(&session.req_header().headers) {
            let body = format!("{UNAUTHENTICATED_MESSAGE}\n");
            return session
                .respond_error_with_body(401, Bytes::from(body))
                .await;
        }
        let limit = self.opts.max_request_message;
        let mut body = bytes::BytesMut::new();
        loop {
            let chunk =
                tokio::time::timeout(self.opts.request_body_timeout, session.read_request_body())
                    .await;
            match chunk {
                Err(_) => {
                    let msg = format!(
                        "the request body stalled for {:?} (invoking app {:?})\n",
                        self.opts.request_body_timeout, target.app
                    );
                    return session.respond_error_with_body(408, Bytes::from(msg)).await;
                }
                Ok(Err(e)) => return Err(e),
                Ok(Ok(None)) => break,
                Ok(Ok(Some(b))) => {
                    if body.len() + b.len() > limit {
                        let msg = format!(
                            "the request body exceeds {limit} bytes (max_request_message_bytes; \
                             invoking app {:?})\n",
                            target.app
                        );
                        return session.respond_error_with_body(413, Bytes::from(msg)).await;
                    }
                    body.extend_from_slice(&b);
                }
            }
        }
        let req = session.req_header();
        let (method, query) = match target.path.split_once('?') {
            Some((m, q)) => (m.to_owned(), q.to_owned()),
            None => (target.path.clone(), String::new()),
        };
        let metadata = req
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let content_type = req
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let deadline = req
            .headers
            .get("grpc-timeout")
            .and_then(|v| mecha_capabilities::invoke::parse_grpc_timeout(v.as_bytes()));
        let call = InvokeRequest {
            app_id: target.app.clone(),
            method,
            verb: req.method.as_str().to_owned(),
            query,
            content_type,
            data: body.freeze(),
            metadata,
            deadline,
        };
        let head_only = req.method == http::Method::HEAD;
        match invoker.invoke(call).await {
            Ok(resp) => {
                let mut header = pingora::http::ResponseHeader::build(resp.status, None)?;
                for (k, v) in &resp.headers {
                    header.append_header(k.clone(), v.clone())?;
                }
                header.insert_header(http::header::CONTENT_LENGTH, resp.data.len().to_string())?;
                session.write_response_header(Box::new(header)).await?;
                if !head_only && !resp.data.is_empty() {
                    session.write_response_body(resp.data, true).await?;
                }
                session.finish_body().await
            }
            Err(e) => {
                let (status, body) = invoke_error_response(&e);
                let mut header = pingora::http::ResponseHeader::build(status, Some(2))?;
                header.insert_header(http::header::CONTENT_TYPE, "application/json")?;
                header.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
                session.write_response_header(Box::new(header)).await?;
                session.write_response_body(Bytes::from(body), true).await?;
                session.finish_body().await
            }
        }
    }
}

/// Layotto's `Runtime` methods, as metric labels.
pub const LAYOTTO_METHODS: &[&str] = mecha_api::layotto::METHODS;

/// Layotto's `spec.proto.runtime.v1.Runtime` over `registry`, ready for the filter.
pub fn layotto_api(
    registry: Arc<mecha_capabilities::Registry>,
    app_id: &str,
    max_message: usize,
    metrics: Arc<GrpcMetrics>,
    invoker: Option<Arc<dyn ServiceInvoker>>,
) -> GrpcApi {
    GrpcApi {
        name: "layotto",
        prefix: mecha_api::layotto::SERVICE_PREFIX,
        service: BoxCloneSyncService::new(mecha_api::layotto::server(
            registry,
            app_id,
            max_message,
            invoker,
        )),
        streaming_request_methods: mecha_api::layotto::STREAMING_REQUEST_METHODS,
        metrics,
    }
}

/// Deadline of one AppCallback call.
pub const CALLBACK_TIMEOUT: std::time::Duration = mecha_api::callback::CALL_TIMEOUT;

/// Delivers pub/sub events to the app's `AppCallback` gRPC service at `endpoint` over
/// `channel` (the mesh client's channel to the local app's cluster) from the components of the
/// registry `registries` holds (a new one after each config update) until `shutdown` turns
/// true; the app's subscriptions are listed again every `relist_every`.
pub async fn run_app_callback(
    registries: tokio::sync::watch::Receiver<Arc<mecha_capabilities::Registry>>,
    app_id: String,
    channel: mecha_mesh::client::GrpcChannel,
    endpoint: String,
    relist_every: std::time::Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let channel = BoxCloneSyncService::new(channel);
    mecha_api::callback::run_app_callback(
        registries,
        app_id,
        channel,
        endpoint,
        relist_every,
        shutdown,
    )
    .await
}
