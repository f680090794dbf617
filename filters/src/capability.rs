//! The capability filter: terminates runtime APIs (Layotto's `spec.proto.runtime.v1.Runtime`
//! today, Dapr's next) in-process.
//!
//! A request whose path starts with one of the configured API prefixes is handed, over the
//! [`grpc_bridge`](crate::grpc_bridge), to that API's tonic service (an adapter from
//! `mecha-api` over the building blocks); anything else continues down the chain.
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
}

impl CapabilityFilter {
    pub fn new(apis: Vec<GrpcApi>, opts: CapabilityOptions) -> Self {
        Self { apis, opts }
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

/// Layotto's `Runtime` methods, as metric labels.
pub const LAYOTTO_METHODS: &[&str] = mecha_api::layotto::METHODS;

/// Layotto's `spec.proto.runtime.v1.Runtime` over `registry`, ready for the filter.
pub fn layotto_api(
    registry: Arc<mecha_capabilities::Registry>,
    app_id: &str,
    max_message: usize,
    metrics: Arc<GrpcMetrics>,
) -> GrpcApi {
    GrpcApi {
        name: "layotto",
        prefix: mecha_api::layotto::SERVICE_PREFIX,
        service: BoxCloneSyncService::new(mecha_api::layotto::server(
            registry,
            app_id,
            max_message,
        )),
        streaming_request_methods: mecha_api::layotto::STREAMING_REQUEST_METHODS,
        metrics,
    }
}

/// Delivers pub/sub events to the app's `AppCallback` gRPC service from the components of the
/// registry `registries` holds (a new one after each config update) until `shutdown` turns
/// true; the app's subscriptions are listed again every `relist_every`.
pub async fn run_app_callback(
    registries: tokio::sync::watch::Receiver<Arc<mecha_capabilities::Registry>>,
    app_id: String,
    endpoint: String,
    relist_every: std::time::Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    mecha_api::callback::run_app_callback(registries, app_id, endpoint, relist_every, shutdown)
        .await
}
