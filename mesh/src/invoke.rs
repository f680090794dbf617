//! Service invocation over the mesh: app ids resolve to clusters (a listed app's own cluster,
//! or one made from a DNS naming rule), and [`MeshInvoker`] sends each call with
//! [`MeshClient`] — the clusters' load balancing, breakers, outlier detection and metrics,
//! the invocation's retries and timeouts.
//!
//! What the callee's sidecar receives: the method as the path (with the query), the verb,
//! `content-type`, the caller's metadata (minus hop-by-hop and pseudo headers),
//! `dapr-caller-app-id`, `dapr-callee-app-id`, and a `traceparent` that keeps the caller's
//! trace.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mecha_capabilities::invoke::{InvokeError, InvokeRequest, InvokeResponse, ServiceInvoker};
use parking_lot::Mutex;

use crate::client::{CallError, CallPolicy, MeshClient, Request};
use crate::cluster::Cluster;
use crate::config::ClusterConfig;
use crate::metrics::MeshMetrics;
use crate::retry::RetryPolicy;

/// Most apps resolved by the DNS naming rule kept at once (each is a cluster with a pool).
const MAX_DYNAMIC_APPS: usize = 1024;

/// One invocable app.
#[derive(Clone)]
pub struct AppTarget {
    pub cluster: Arc<Cluster>,
    pub timeout: Duration,
    pub retry: Option<Arc<RetryPolicy>>,
}

/// The naming rule for apps not listed: `{app}`, `{namespace}` and `{port}` in a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsTemplate {
    pub template: String,
    pub namespace: String,
    pub port: u16,
}

impl DnsTemplate {
    pub fn address(&self, app: &str) -> String {
        self.template
            .replace("{app}", app)
            .replace("{namespace}", &self.namespace)
            .replace("{port}", &self.port.to_string())
    }
}

/// Invocation defaults.
#[derive(Clone)]
pub struct InvokeSettings {
    /// This sidecar's app id (`dapr-caller-app-id`).
    pub caller: String,
    pub timeout: Duration,
    pub retry: Option<Arc<RetryPolicy>>,
    pub max_body: usize,
    pub dns_template: Option<DnsTemplate>,
}

/// Apps made from the naming rule, with when their names were last resolved.
type Dynamic = HashMap<String, (Arc<Cluster>, Instant)>;

/// The service-invocation building block over the mesh.
pub struct MeshInvoker {
    client: Arc<MeshClient>,
    apps: BTreeMap<String, AppTarget>,
    settings: InvokeSettings,
    metrics: MeshMetrics,
    dynamic: Arc<Mutex<Dynamic>>,
}

impl MeshInvoker {
    /// `dynamic`: the previous invoker's apps resolved by the naming rule, kept across config
    /// updates when the rule is unchanged.
    pub fn new(
        client: Arc<MeshClient>,
        apps: BTreeMap<String, AppTarget>,
        settings: InvokeSettings,
        metrics: MeshMetrics,
        prev: Option<&MeshInvoker>,
    ) -> Self {
        let dynamic = match prev {
            Some(p) if p.settings.dns_template == settings.dns_template => p.dynamic.clone(),
            _ => Arc::default(),
        };
        Self {
            client,
            apps,
            settings,
            metrics,
            dynamic,
        }
    }

    pub fn client(&self) -> &Arc<MeshClient> {
        &self.client
    }

    /// The listed app ids.
    pub fn app_ids(&self) -> Vec<String> {
        self.apps.keys().cloned().collect()
    }

    fn unknown(&self, app: &str) -> InvokeError {
        InvokeError::UnknownApp {
            app: app.to_owned(),
            known: self.app_ids(),
        }
    }

    /// The target of `app`: listed, or made by the naming rule (its DNS name resolved first,
    /// and again once `dns_refresh` has passed).
    async fn target(&self, app: &str) -> Result<AppTarget, InvokeError> {
        if let Some(t) = self.apps.get(app) {
            return Ok(t.clone());
        }
        let Some(rule) = &self.settings.dns_template else {
            return Err(self.unknown(app));
        };
        if !valid_app_id(app) {
            return Err(InvokeError::InvalidArgument(format!(
                "app id {app:?} is not a valid name (1 to 63 characters of a-z, 0-9, '-', '_', \
                 '.')"
            )));
        }
        let found = self.dynamic.lock().get(app).cloned();
        let cluster = match found {
            Some((c, at)) => {
                if at.elapsed() >= c.dns_refresh {
                    self.dynamic
                        .lock()
                        .insert(app.to_owned(), (c.clone(), Instant::now()));
                    let refreshing = c.clone();
                    tokio::spawn(async move { refreshing.refresh().await });
                }
                c
            }
            None => {
                let address = rule.address(app);
                let cfg = ClusterConfig::with_endpoints(
                    &format!("app/{app}"),
                    vec![crate::config::EndpointConfig {
                        address: address.clone(),
                        weight: 1,
                        priority: 0,
                    }],
                );
                let c = Cluster::build(&cfg, &self.metrics).map_err(|e| {
                    InvokeError::InvalidArgument(format!(
                        "app {app:?} by the naming rule ({address}): {}",
                        e.join("; ")
                    ))
                })?;
                let c = Arc::new(c);
                c.refresh().await;
                let mut d = self.dynamic.lock();
                if d.len() >= MAX_DYNAMIC_APPS {
                    // Forget the longest-resolved one: a bounded cache, not a registry.
                    if let Some(old) = d
                        .iter()
                        .min_by_key(|(_, (_, at))| *at)
                        .map(|(k, _)| k.clone())
                    {
                        d.remove(&old);
                    }
                }
                d.insert(app.to_owned(), (c.clone(), Instant::now()));
                c
            }
        };
        Ok(AppTarget {
            cluster,
            timeout: self.settings.timeout,
            retry: self.settings.retry.clone(),
        })
    }

    async fn call(&self, req: InvokeRequest) -> Result<InvokeResponse, InvokeError> {
        let app = req.app_id.as_str();
        if app.is_empty() {
            return Err(InvokeError::InvalidArgument(
                "id (the target app id) is empty".to_owned(),
            ));
        }
        let method = req.method.trim_start_matches('/');
        if method.is_empty() {
            return Err(InvokeError::InvalidArgument(format!(
                "method is empty (invoking app {app:?})"
            )));
        }
        let verb = if req.verb.is_empty() {
            http::Method::POST
        } else {
            http::Method::from_bytes(req.verb.to_ascii_uppercase().as_bytes()).map_err(|_| {
                InvokeError::InvalidArgument(format!(
                    "verb {:?} is not an HTTP method (invoking app {app:?} method {method:?})",
                    req.verb
                ))
            })?
        };
        let path = if req.query.is_empty() {
            format!("/{method}")
        } else {
            format!("/{method}?{}", req.query.trim_start_matches('?'))
        };
        if path.parse::<http::uri::PathAndQuery>().is_err() {
            return Err(InvokeError::InvalidArgument(format!(
                "method {method:?} with query {:?} is not a valid request path (invoking app \
                 {app:?}); percent-encode spaces and reserved characters",
                req.query
            )));
        }
        if req.data.len() > self.settings.max_body {
            return Err(InvokeError::ResourceExhausted {
                app: app.to_owned(),
                method: method.to_owned(),
                message: format!(
                    "the request body is {} bytes, more than invocation.max_body_bytes ({})",
                    req.data.len(),
                    self.settings.max_body
                ),
            });
        }
        let target = self.target(app).await?;
        let mut headers = http::HeaderMap::new();
        let mut incoming_trace = None;
        for (k, v) in &req.metadata {
            let k = k.to_ascii_lowercase();
            if !forwarded(&k) {
                continue;
            }
            let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_str(v),
            ) else {
                continue;
            };
            if name == "traceparent" {
                incoming_trace = Some(value);
                continue;
            }
            headers.append(name, value);
        }
        let (traceparent, kept) = crate::trace::next_traceparent(incoming_trace.as_ref())
            .map_err(|e| InvokeError::InvalidArgument(format!("traceparent: {e}")))?;
        if !kept {
            headers.remove("tracestate");
        }
        headers.insert("traceparent", traceparent);
        if !req.content_type.is_empty() {
            if let Ok(v) = http::HeaderValue::from_str(&req.content_type) {
                headers.insert(http::header::CONTENT_TYPE, v);
            }
        }
        for (name, value) in [
            ("dapr-caller-app-id", self.settings.caller.as_str()),
            ("dapr-callee-app-id", app),
        ] {
            if let Ok(v) = http::HeaderValue::from_str(value) {
                headers.insert(name, v);
            }
        }
        let policy = CallPolicy {
            retry: target.retry.as_deref(),
            timeout: Some(target.timeout),
            per_try_timeout: None,
            idle_timeout: None,
        }
        .within(req.deadline);
        let request = Request {
            method: verb,
            path,
            authority: Some(app.to_owned()),
            headers,
            body: req.data,
        };
        let resp = self
            .client
            .call(&target.cluster, policy, request, self.settings.max_body)
            .await
            .map_err(|e| call_error(app, method, &e))?;
        let header = resp.header;
        let content_type = header
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let headers = header
            .headers
            .iter()
            .filter(|(k, _)| !HOP_BY_HOP.contains(&k.as_str()))
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        Ok(InvokeResponse {
            status: header.status.as_u16(),
            content_type,
            data: resp.body,
            headers,
        })
    }
}

#[async_trait]
impl ServiceInvoker for MeshInvoker {
    async fn invoke(&self, req: InvokeRequest) -> Result<InvokeResponse, InvokeError> {
        let started = Instant::now();
        let app = req.app_id.clone();
        let result = self.call(req).await;
        let outcome = match &result {
            Ok(r) => match r.status {
                100..=199 => "1xx",
                200..=299 => "2xx",
                300..=399 => "3xx",
                400..=499 => "4xx",
                _ => "5xx",
            },
            Err(InvokeError::UnknownApp { .. }) => "not_found",
            Err(InvokeError::InvalidArgument(_)) => "invalid_argument",
            Err(InvokeError::Unavailable { .. }) => "unavailable",
            Err(InvokeError::DeadlineExceeded { .. }) => "deadline_exceeded",
            Err(InvokeError::ResourceExhausted { .. }) => "resource_exhausted",
        };
        // Unknown ids are not labels of their own: a caller could make them up without end.
        let label = if matches!(result, Err(InvokeError::UnknownApp { .. })) {
            "<unknown>"
        } else {
            app.as_str()
        };
        self.metrics
            .record_invocation(label, outcome, started.elapsed().as_secs_f64());
        result
    }

    fn knows(&self, app_id: &str) -> bool {
        self.apps.contains_key(app_id)
    }
}

/// Headers never passed on: hop-by-hop (RFC 9110 §7.6.1), pseudo and framing headers, the
/// proxy's own, gRPC framing headers of the caller's call, and those the invoker sets.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "host",
    "content-length",
];

fn forwarded(name: &str) -> bool {
    !(HOP_BY_HOP.contains(&name)
        || name.starts_with(':')
        || name.starts_with("grpc-")
        || name.starts_with("x-mecha-")
        || matches!(
            name,
            "content-type"
                | "user-agent"
                | "dapr-api-token"
                | "authorization"
                | "dapr-app-id"
                | "dapr-caller-app-id"
                | "dapr-callee-app-id"
                | "accept-encoding"
        ))
}

fn call_error(app: &str, method: &str, e: &CallError) -> InvokeError {
    let (app, method, message) = (app.to_owned(), method.to_owned(), e.to_string());
    match e.grpc_code() {
        tonic::Code::DeadlineExceeded => InvokeError::DeadlineExceeded {
            app,
            method,
            message,
        },
        tonic::Code::ResourceExhausted => InvokeError::ResourceExhausted {
            app,
            method,
            message,
        },
        _ => InvokeError::Unavailable {
            app,
            method,
            message,
        },
    }
}

/// App ids are DNS-label-like (the same rule as config's `apps`).
pub fn valid_app_id(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}
