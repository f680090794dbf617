//! The resource manager: takes config updates (the watched file today, xDS next), diffs them
//! against what runs and applies the difference, and reports what it did.
//!
//! One update at a time:
//! 1. parse and check the text; build the next [`Snapshot`] against the running one
//!    ([`Snapshot::build`]: unchanged resources carried over, no I/O; an update that changes
//!    only endpoint lists, as an EDS push does, skips the build: [`Snapshot::with_endpoints`]).
//!    Any error rejects the whole update: nothing changes, and `/config_dump` shows the
//!    errors.
//! 2. carry out the [`UpdatePlan`](crate::snapshot::UpdatePlan) that must precede publishing:
//!    clusters whose endpoint list alone changed adopt it in place; new clusters with DNS
//!    names resolve them (bounded by [`WARM_TIMEOUT`]), so they never serve empty;
//! 3. bind the sockets of new or moved listeners (a taken address rejects the update), then
//!    publish (ArcSwap for requests, a watch channel for long-lived tasks: cluster
//!    maintenance, AppCallback delivery) and hand the listeners to the listener manager
//!    (new ones accept, removed ones drain);
//! 4. retire the components the update replaced or removed (their subscription streams end
//!    with UNAVAILABLE, AppCallback resubscribes) and drop removed clusters' and routes'
//!    metric series.
//!
//! `mecha_config_updates_total{source,result}` counts updates: `applied`, `rejected`, or
//! `unchanged` (same text as the running config).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use mecha_capabilities::Registry;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::config::Config;
use crate::listeners::ListenerManager;
use crate::metrics::{Metrics, UpdateLabels};
use crate::snapshot::{ResourceKind, Snapshot, UpdatePlan, UpdateSource};

/// How long a new cluster's DNS names may take to resolve before it is published anyway
/// (with the addresses it has; the refresh loop keeps trying).
pub const WARM_TIMEOUT: Duration = Duration::from_secs(5);

/// An update that was refused, as `/config_dump` shows it.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub source: String,
    pub version: String,
    pub at: SystemTime,
    pub errors: Vec<String>,
}

/// What became of one update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied(String),
    Unchanged,
}

pub struct ResourceManager {
    snapshot: Arc<ArcSwap<Snapshot>>,
    published: watch::Sender<Arc<Snapshot>>,
    metrics: Arc<Metrics>,
    /// Whether the process loaded the platform trust store at start (Pingora reads it once).
    platform_roots: bool,
    applied_at: Mutex<SystemTime>,
    rejected: Mutex<Option<Rejected>>,
    /// One update at a time (file events and, later, xDS pushes may race).
    serial: tokio::sync::Mutex<()>,
    /// Binds and runs the listeners of each published Snapshot (set once at start).
    listeners: std::sync::OnceLock<Arc<ListenerManager>>,
    /// Extra `/config_dump` sections other sources report (see [`Self::add_dump_section`]).
    dump_sections: Mutex<Vec<(&'static str, DumpSection)>>,
}

/// Reports one `/config_dump` section as JSON when asked.
pub type DumpSection = Box<dyn Fn() -> Value + Send + Sync>;

impl ResourceManager {
    /// Starts from the first Snapshot, whose plan [`ResourceManager::prepare_start`] ran.
    pub fn new(first: Snapshot, metrics: Arc<Metrics>, platform_roots: bool) -> Self {
        let first = Arc::new(first);
        let (published, _) = watch::channel(first.clone());
        Self {
            snapshot: Arc::new(ArcSwap::new(first)),
            published,
            metrics,
            platform_roots,
            applied_at: Mutex::new(SystemTime::now()),
            rejected: Mutex::new(None),
            serial: tokio::sync::Mutex::new(()),
            listeners: std::sync::OnceLock::new(),
            dump_sections: Mutex::new(Vec::new()),
        }
    }

    /// From now on, every applied update also applies its listeners (bound before the
    /// Snapshot is published; a taken address rejects the update).
    pub fn attach_listeners(&self, listeners: Arc<ListenerManager>) {
        let _ = self.listeners.set(listeners);
    }

    /// Carries out the start-up Snapshot's plan before anything serves: DNS names resolved.
    /// Runs outside a runtime (resolution is then done in place, blocking).
    pub fn prepare_start(plan: &UpdatePlan) {
        futures::executor::block_on(warm(plan));
    }

    /// What requests load (once each).
    pub fn snapshots(&self) -> Arc<ArcSwap<Snapshot>> {
        self.snapshot.clone()
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The listener manager, once attached at start.
    pub fn listeners(&self) -> Option<&Arc<ListenerManager>> {
        self.listeners.get()
    }

    /// Each published Snapshot, for long-lived tasks.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.published.subscribe()
    }

    fn count(&self, source: &'static str, result: &'static str) {
        self.metrics
            .config_updates
            .get_or_create(&UpdateLabels { source, result })
            .inc();
    }

    fn reject(
        &self,
        kind: &'static str,
        source: &UpdateSource,
        errors: Vec<String>,
    ) -> Vec<String> {
        self.count(kind, "rejected");
        *self.rejected.lock() = Some(Rejected {
            source: source.source.clone(),
            version: source.version.clone(),
            at: SystemTime::now(),
            errors: errors.clone(),
        });
        errors
    }

    /// Applies a YAML config text from `source` (`file:<path>`); `kind` labels the metric.
    /// On error nothing changed, and every problem is returned.
    pub async fn apply_yaml(
        &self,
        kind: &'static str,
        source: &str,
        text: &str,
    ) -> Result<Outcome, Vec<String>> {
        let _serial = self.serial.lock().await;
        let update = UpdateSource::yaml(source, text);
        let current = self.current();
        if update.version == current.version {
            self.count(kind, "unchanged");
            return Ok(Outcome::Unchanged);
        }
        let cfg = match crate::config::parse(text) {
            Ok(c) => c,
            Err(errs) => return Err(self.reject(kind, &update, errs)),
        };
        self.apply_locked(kind, update, cfg, &current).await
    }

    /// Applies a whole config built by another source (the xDS client merges the bootstrap
    /// with what the control plane sent): validated, diffed and applied as a file update is.
    /// On error nothing changed, and every problem is returned.
    pub async fn apply_config(
        &self,
        kind: &'static str,
        update: UpdateSource,
        cfg: Config,
    ) -> Result<Outcome, Vec<String>> {
        let _serial = self.serial.lock().await;
        let current = self.current();
        if cfg == *current.config {
            self.count(kind, "unchanged");
            return Ok(Outcome::Unchanged);
        }
        self.apply_locked(kind, update, cfg, &current).await
    }

    /// The process's metric families.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The config of the running Snapshot.
    pub fn config(&self) -> Config {
        (*self.current().config).clone()
    }

    /// Adds a section to `/config_dump` (the xDS client's per-type state), read on each dump.
    pub fn add_dump_section(&self, name: &'static str, section: DumpSection) {
        self.dump_sections.lock().push((name, section));
    }

    async fn apply_locked(
        &self,
        kind: &'static str,
        update: UpdateSource,
        cfg: Config,
        current: &Arc<Snapshot>,
    ) -> Result<Outcome, Vec<String>> {
        let started = std::time::Instant::now();
        let mut errors = crate::config::validate(&cfg);
        if errors.is_empty() {
            errors = needs_restart(&current.config, &cfg, self.platform_roots);
        }
        let validated = started.elapsed();
        // An update that only moves endpoints (an EDS push) is not rebuilt.
        let built = match current.endpoint_changes(&cfg) {
            Some(changed) => current.with_endpoints(cfg, &changed, &update),
            None => Snapshot::build(cfg, &self.metrics, Some(current), &update),
        };
        let snapshot_built = started.elapsed();
        let (next, plan) = match built {
            Ok(built) if errors.is_empty() => built,
            Ok(_) => return Err(self.reject(kind, &update, errors)),
            Err(errs) => {
                errors.extend(errs);
                return Err(self.reject(kind, &update, errors));
            }
        };
        let staged = match self.listeners.get().map(|l| l.stage(&next.config)) {
            Some(Ok(staged)) => Some(staged),
            Some(Err(errors)) => return Err(self.reject(kind, &update, errors)),
            None => None,
        };
        let staged_at = started.elapsed();
        warm(&plan).await;
        let next = Arc::new(next);
        self.snapshot.store(next.clone());
        self.published.send_replace(next.clone());
        if let (Some(listeners), Some(staged)) = (self.listeners.get(), staged) {
            listeners.commit(staged, &next);
        }
        *self.applied_at.lock() = SystemTime::now();
        Registry::retire_superseded(&current.registry, &next.registry);
        for c in &plan.removed_clusters {
            self.metrics.mesh.remove_cluster(c);
        }
        for r in &plan.removed_routes {
            self.metrics.mesh.remove_route(r);
        }
        // Where an update's time goes (at thousands of resources, each stage is measurable).
        tracing::debug!(source = %update.source, ?validated, ?snapshot_built, ?staged_at,
            committed = ?started.elapsed(), "update stages");
        self.count(kind, "applied");
        Ok(Outcome::Applied(format!("{plan:?}")))
    }

    /// The running resources and the last rejected update, as JSON shaped after Envoy's
    /// `/config_dump`: one entry per resource kind, each resource with the version in which it
    /// last changed and when.
    pub fn config_dump(&self) -> Value {
        let snap = self.current();
        let kinds = [
            (ResourceKind::Listener, "listeners", "listener"),
            (ResourceKind::RouteConfig, "route_configs", "route_config"),
            (ResourceKind::Cluster, "clusters", "cluster"),
            (ResourceKind::Component, "components", "component"),
        ];
        let configs: Vec<Value> = kinds
            .iter()
            .map(|(kind, plural, field)| {
                let items: Vec<Value> = snap
                    .resources
                    .iter()
                    .filter(|r| r.kind == *kind)
                    .map(|r| {
                        let mut item = json!({
                            "name": r.name,
                            "version_info": r.version,
                            "last_updated": rfc3339(r.last_updated),
                        });
                        item[*field] = snap.content(r);
                        if *kind == ResourceKind::Cluster {
                            if let Some(c) = snap.clusters.get(&r.name) {
                                item["endpoint_count"] = json!(c.endpoint_count());
                            }
                        }
                        item
                    })
                    .collect();
                json!({ "kind": plural, "version_info": snap.version, plural.to_string(): items })
            })
            .collect();
        let rejected = self.rejected.lock().clone().map(|r| {
            json!({
                "source": r.source,
                "version_info": r.version,
                "attempted_at": rfc3339(r.at),
                "errors": r.errors,
            })
        });
        let mut dump = json!({
            "version_info": snap.version,
            "source": snap.source,
            "last_updated": rfc3339(*self.applied_at.lock()),
            "configs": configs,
            "last_rejected_update": rejected,
        });
        for (name, section) in self.dump_sections.lock().iter() {
            dump[*name] = section();
        }
        dump
    }
}

/// Resolves the DNS names of new clusters (bounded), then adopts endpoint-only changes.
async fn warm(plan: &UpdatePlan) {
    let resolve = plan.warm.iter().map(|c| async move {
        if tokio::runtime::Handle::try_current().is_err() {
            return c.refresh().await;
        }
        if tokio::time::timeout(WARM_TIMEOUT, c.refresh())
            .await
            .is_err()
        {
            tracing::warn!(cluster = %c.name, timeout = ?WARM_TIMEOUT,
                "DNS names not resolved in time; publishing the cluster with what it has");
        }
    });
    futures::future::join_all(resolve).await;
    for (cluster, list) in &plan.endpoint_updates {
        cluster.set_endpoints(list).await;
    }
}

/// What an update changes that only a restart can apply (listeners are applied live by the
/// listener manager; the admin listener and the worker threads are set up once).
fn needs_restart(current: &Config, next: &Config, platform_roots: bool) -> Vec<String> {
    let mut errors = Vec::new();
    if current.admin != next.admin {
        errors.push("admin: changing the admin listener needs a restart".to_owned());
    }
    if current.xds != next.xds {
        errors.push("xds: changing the control plane needs a restart".to_owned());
    }
    if current.threads != next.threads {
        errors.push("threads: changing the worker thread count needs a restart".to_owned());
    }
    if crate::server::needs_platform_roots(next) && !platform_roots {
        errors.push(
            "clusters: a TLS (h2) cluster without ca_file needs the platform trust store, which \
             this process did not load at start; add ca_file or restart"
                .to_owned(),
        );
    }
    errors
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
