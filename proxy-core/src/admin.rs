//! The admin listener: health, readiness and metrics for probes and scrapers.
//!
//! - `GET /healthz` — 200 while the process runs.
//! - `GET /ready` — 200 only when every listener accepts connections and every component
//!   answers its health check; 503 (with the reasons) otherwise and while draining.
//! - `GET /actuator/health/liveness`, `/actuator/health/readiness` — Layotto's actuator JSON
//!   `{"status":"UP"|"DOWN","components":{…}}`, 500 when DOWN.
//! - `GET /metrics` — Prometheus/OpenMetrics text: API metrics, process RSS, open connections.
//! - `GET /config_dump` — the running resources (listeners, route tables, clusters,
//!   components), each with the config version in which it last changed and when, plus the
//!   last rejected update with every error (JSON shaped after Envoy's admin endpoint).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::metrics::{process_rss_bytes, Metrics};
use crate::proxy::ProcessState;
use crate::resources::ResourceManager;
use crate::snapshot::Snapshot;

const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

pub struct AdminApp {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub metrics: Arc<Metrics>,
    pub process: Arc<ProcessState>,
    pub resources: Arc<ResourceManager>,
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Vec<u8>>) -> Response<Vec<u8>> {
    let body = body.into();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    let len = resp.body().len();
    resp.headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    resp
}

/// One check of readiness: its name, whether it passed, and why not.
struct Check {
    name: String,
    kind: String,
    error: Option<String>,
}

impl AdminApp {
    async fn checks(&self) -> Vec<Check> {
        let snap = self.snapshot.load_full();
        let mut checks = Vec::new();
        for l in &snap.config.listeners {
            // The listener manager (attached at start, before admin serves) knows whether the
            // accept loops run; asking it opens no connection, which would count in the
            // listener's metrics. A virtual listener is known for dispatch, not bound.
            let error = match self.resources.listeners() {
                Some(m) => m.status(&l.name, &l.address, l.bind_to_port).err(),
                None => Some("the listener manager is not running".to_owned()),
            };
            checks.push(Check {
                name: l.name.clone(),
                kind: "listener".to_owned(),
                error,
            });
        }
        for (info, res) in snap.registry.health(HEALTH_TIMEOUT).await {
            checks.push(Check {
                name: info.name.clone(),
                kind: info.kind.clone(),
                error: res.err().map(|e| e.to_string()),
            });
        }
        checks
    }

    async fn ready(&self) -> Response<Vec<u8>> {
        if self.process.draining.load(Ordering::Acquire) {
            return reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n");
        }
        let failing: Vec<String> = self
            .checks()
            .await
            .into_iter()
            .filter_map(|c| c.error.map(|e| format!("{} ({}): {e}", c.name, c.kind)))
            .collect();
        if failing.is_empty() {
            reply(StatusCode::OK, "text/plain", "ready\n")
        } else {
            reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready:\n{}\n", failing.join("\n")),
            )
        }
    }

    async fn actuator_readiness(&self) -> Response<Vec<u8>> {
        let draining = self.process.draining.load(Ordering::Acquire);
        let checks = self.checks().await;
        let mut components = serde_json::Map::new();
        let mut up = !draining;
        for c in checks {
            let status = if c.error.is_some() { "DOWN" } else { "UP" };
            up &= c.error.is_none();
            let mut details = json!({ "type": c.kind });
            if let Some(e) = c.error {
                details["error"] = json!(e);
            }
            components.insert(c.name, json!({ "status": status, "details": details }));
        }
        if draining {
            components.insert(
                "shutdown".to_owned(),
                json!({ "status": "DOWN", "details": { "reason": "draining" } }),
            );
        }
        let body = json!({ "status": if up { "UP" } else { "DOWN" }, "components": components });
        let code = if up {
            StatusCode::OK
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        reply(code, "application/json", body.to_string())
    }

    fn actuator_liveness(&self) -> Response<Vec<u8>> {
        let body = json!({ "status": "UP", "components": { "process": { "status": "UP" } } });
        reply(StatusCode::OK, "application/json", body.to_string())
    }

    fn metrics_text(&self) -> Response<Vec<u8>> {
        let mut out = String::with_capacity(8 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.metrics.registry).is_err() {
            return reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                "encoding metrics failed\n",
            );
        }
        // Process-level gauges are read from /proc at scrape time; the OpenMetrics text ends
        // with `# EOF`, so they go before it.
        if out.ends_with("# EOF\n") {
            out.truncate(out.len() - "# EOF\n".len());
        }
        if let Some(rss) = process_rss_bytes() {
            let _ = writeln!(
                out,
                "# HELP process_resident_memory_bytes Resident memory size in bytes."
            );
            let _ = writeln!(out, "# TYPE process_resident_memory_bytes gauge");
            let _ = writeln!(out, "process_resident_memory_bytes {rss}");
        }
        let _ = writeln!(
            out,
            "# HELP mecha_inflight_requests Requests being served now."
        );
        let _ = writeln!(out, "# TYPE mecha_inflight_requests gauge");
        let _ = writeln!(out, "mecha_inflight_requests {}", self.process.inflight());
        out.push_str("# EOF\n");
        reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            out,
        )
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_owned();
        match path.as_str() {
            "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n"),
            "/ready" => self.ready().await,
            "/actuator/health/liveness" => self.actuator_liveness(),
            "/actuator/health/readiness" => self.actuator_readiness().await,
            "/metrics" => self.metrics_text(),
            "/config_dump" => {
                let mut body = self.resources.config_dump().to_string();
                body.push('\n');
                reply(StatusCode::OK, "application/json", body)
            }
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                format!(
                    "unknown admin path {path:?}; try /healthz, /ready, /metrics, /config_dump, \
                     /actuator/health/liveness, /actuator/health/readiness\n"
                ),
            ),
        }
    }
}
