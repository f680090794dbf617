//! The xDS client as a config source of the sidecar ([`XdsFeed`], a `mecha_proxy_core::Feed`):
//! every response the ADS client checks is translated, merged with the bootstrap file and
//! applied by the resource manager like a file update — diffed per named resource, so what a
//! push does not change keeps its state. An update the resource manager refuses is NACKed with
//! its errors; the running config stays.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use mecha_proxy_core::config::{Config, XdsApi};
use mecha_proxy_core::resources::ResourceManager;
use mecha_proxy_core::snapshot::UpdateSource;
use serde_json::json;

use crate::ads::{self, AdsConfig, AdsStatus, Api, ConnectionState, Node, Sink, StatusSnapshot};
use crate::resources::{ResourceError, XdsResources};
use crate::translate;

/// Runs the ADS client for the bootstrap's `xds:` section.
pub struct XdsFeed {
    bootstrap: Config,
}

impl XdsFeed {
    /// `None` when the bootstrap has no `xds:` section.
    pub fn new(bootstrap: Config) -> Option<Self> {
        bootstrap.xds.as_ref()?;
        Some(Self { bootstrap })
    }
}

impl mecha_proxy_core::Feed for XdsFeed {
    fn name(&self) -> &'static str {
        "xds"
    }

    fn run(self: Box<Self>, manager: Arc<ResourceManager>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let Some(x) = self.bootstrap.xds.clone() else {
                return;
            };
            let config = AdsConfig::new(
                x.server.clone(),
                match x.api {
                    XdsApi::Sotw => Api::Sotw,
                    XdsApi::Delta => Api::Delta,
                },
                Node {
                    id: x.node.id.clone(),
                    cluster: x.node.cluster.clone(),
                    metadata: x.node.metadata.clone(),
                },
            );
            let status = Arc::new(AdsStatus::default());
            let notes = Arc::new(Mutex::new(Notes::default()));
            let (dump, dump_notes) = (status.clone(), notes.clone());
            manager.add_dump_section(
                "xds",
                Box::new(move || {
                    let mut section = status_json(&dump.snapshot());
                    if let Ok(n) = dump_notes.lock() {
                        section["warming"] = json!(n.warming);
                        section["ignored"] = json!(n.ignored);
                    }
                    section
                }),
            );
            let sink = Arc::new(Apply {
                origin: format!("xds:{}", x.server),
                bootstrap: self.bootstrap,
                manager: manager.clone(),
                seq: AtomicU64::new(0),
                notes,
                translator: Mutex::new(translate::Translator::default()),
            });
            tokio::spawn(export_metrics(status.clone(), manager.metrics().clone()));
            let Err(e) = ads::run(config, sink, status).await;
            tracing::error!("xds: not started: {e}");
        })
    }
}

/// What the running xDS config left out until it can be served (`warming`) and accepted
/// without effect (`ignored`), as translation listed them; shown in `/config_dump` (section
/// `xds`). The resource manager's own dump has no place for them: it shows resources.
#[derive(Default)]
struct Notes {
    warming: Vec<String>,
    ignored: Vec<String>,
}

/// Translates, merges and applies one candidate set.
struct Apply {
    origin: String,
    bootstrap: Config,
    manager: Arc<ResourceManager>,
    seq: AtomicU64,
    /// The notes of the last accepted candidate.
    notes: Arc<Mutex<Notes>>,
    /// Remembers translations of unchanged resources between candidates (the sink is asked
    /// one candidate at a time; the lock is never held across an await).
    translator: Mutex<translate::Translator>,
}

impl Apply {
    async fn apply(&self, resources: &XdsResources) -> Result<(), Vec<ResourceError>> {
        let started = std::time::Instant::now();
        let mut translated = match self.translator.lock() {
            Ok(mut t) => t.translate(resources)?,
            Err(_) => translate::translate(resources)?,
        };
        let translated_at = started.elapsed();
        for line in &translated.ignored {
            tracing::debug!("xds: ignored: {line}");
        }
        // One line per resource at debug only: a 10,000-cluster push warms 10,000 of them.
        for line in &translated.warming {
            tracing::debug!("xds: warming: {line}");
        }
        if !translated.warming.is_empty() {
            tracing::info!(
                warming = translated.warming.len(),
                first = %translated.warming[0],
                "xds: resources waiting for what they refer to"
            );
        }
        let notes = Notes {
            warming: std::mem::take(&mut translated.warming),
            ignored: std::mem::take(&mut translated.ignored),
        };
        let config = translate::merge(&self.bootstrap, translated).map_err(update_errors)?;
        let merged_at = started.elapsed();
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let update = UpdateSource {
            source: self.origin.clone(),
            version: format!("xds-{seq}"),
            // Contents are the config model's, serialized when /config_dump asks.
            document: None,
        };
        match self.manager.apply_config("xds", update, config).await {
            Ok(outcome) => {
                tracing::debug!(?outcome, ?translated_at, ?merged_at,
                    applied_at = ?started.elapsed(), "xds: update applied");
                if let Ok(mut n) = self.notes.lock() {
                    *n = notes;
                }
                Ok(())
            }
            Err(errors) => Err(update_errors(errors)),
        }
    }
}

/// Errors of the merged config (they name their config path, e.g. `clusters[3].endpoints`).
fn update_errors(errors: Vec<String>) -> Vec<ResourceError> {
    errors
        .into_iter()
        .map(|message| ResourceError {
            kind: "update",
            name: String::new(),
            message,
        })
        .collect()
}

impl Sink for Apply {
    fn apply<'a>(
        &'a self,
        resources: &'a XdsResources,
        _changed: &'a str,
    ) -> Pin<Box<dyn std::future::Future<Output = Result<(), Vec<ResourceError>>> + Send + 'a>>
    {
        Box::pin(Apply::apply(self, resources))
    }
}

/// The client's state as `/config_dump` shows it (section `xds`): connection, and per type the
/// last accepted version, the last nonce, ACK/NACK counts and the last NACK's error (the
/// feed adds the [`Notes`] of the running config: `warming`, `ignored`).
fn status_json(s: &StatusSnapshot) -> serde_json::Value {
    let state = match s.state {
        ConnectionState::Connecting => json!({"state": "connecting"}),
        ConnectionState::Connected => json!({"state": "connected"}),
        ConnectionState::Backoff { delay } => {
            json!({"state": "backoff", "retry_in_ms": delay.as_millis() as u64})
        }
    };
    let types: serde_json::Map<String, serde_json::Value> = s
        .types
        .iter()
        .map(|(url, t)| {
            let ago = |at: std::time::SystemTime| {
                at.elapsed().map(|d| d.as_secs_f64()).unwrap_or_default()
            };
            (
                (*url).to_owned(),
                json!({
                    "version_info": t.version,
                    "last_nonce": t.nonce,
                    "accepted": t.accepted,
                    "rejected": t.rejected,
                    "seconds_since_last_update": t.last_update.map(ago),
                    "last_error": t.last_error.as_ref().map(|(e, at)| json!({
                        "message": e,
                        "seconds_ago": ago(*at),
                    })),
                }),
            )
        })
        .collect();
    json!({
        "connection": state,
        "api": match s.api { Api::Sotw => "sotw", Api::Delta => "delta" },
        "delta_fallback": s.delta_fallback,
        "streams": s.streams,
        "last_stream_error": s.last_stream_error,
        "types": types,
    })
}

/// Follows the client's status into `mecha_xds_*` metrics (counters grow by what changed).
async fn export_metrics(status: Arc<AdsStatus>, metrics: Arc<mecha_proxy_core::metrics::Metrics>) {
    use mecha_proxy_core::metrics::XdsLabels;
    let mut rx = status.watch();
    let mut streams = 0;
    let mut counted: std::collections::BTreeMap<&'static str, (u64, u64)> = Default::default();
    loop {
        let now = StatusSnapshot::clone(&rx.borrow_and_update());
        metrics
            .xds
            .connected
            .set(i64::from(now.state == ConnectionState::Connected));
        if now.streams > streams {
            metrics.xds.streams.inc_by(now.streams - streams);
            streams = now.streams;
        }
        for (url, t) in &now.types {
            let (acks, nacks) = counted.entry(url).or_default();
            // As the README documents them: `accepted` (ACKed) and `rejected` (NACKed).
            for (result, total, done) in [
                ("accepted", t.accepted, acks),
                ("rejected", t.rejected, nacks),
            ] {
                if total > *done {
                    metrics
                        .xds
                        .responses
                        .get_or_create(&XdsLabels {
                            type_url: (*url).to_owned(),
                            result,
                        })
                        .inc_by(total - *done);
                    *done = total;
                }
            }
            if let Some(at) = t.last_update {
                let unix = at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or_default();
                metrics
                    .xds
                    .last_update
                    .get_or_create(&vec![("type_url".to_owned(), (*url).to_owned())])
                    .set(unix);
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
