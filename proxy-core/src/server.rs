//! Process bootstrap: first Snapshot → resource manager → the listener manager's worker
//! threads and listeners → Pingora server with the admin service and background tasks
//! (config file watch, cluster maintenance, AppCallback delivery) → run until SIGTERM (drain)
//! or SIGINT (fast exit).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mecha_mesh::config::UpstreamProtocol;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::admin::AdminApp;
use crate::config::Config;
use crate::listeners::ListenerManager;
use crate::metrics::Metrics;
use crate::proxy::ProcessState;
use crate::resources::{Outcome, ResourceManager};
use crate::snapshot::{Snapshot, UpdateSource};

/// Why the process could not start; printed by the binary, which then exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid config:\n  {}", .0.join("\n  "))]
    Config(Vec<String>),
    #[error("cannot listen:\n  {}", .0.join("\n  "))]
    Listen(Vec<String>),
    #[error("cannot start the worker threads: {0}")]
    Workers(std::io::Error),
    #[error("{what} {addr}: cannot listen: {source}")]
    Bind {
        what: String,
        addr: String,
        source: std::io::Error,
    },
}

/// How long start-up retries an address that is taken (a restart right after a crash, a
/// port in TIME_WAIT or briefly held by a previous instance) before giving up.
pub const BIND_RETRY: Duration = Duration::from_secs(5);

/// Binds and releases every address first, so a taken port is a clear error before anything
/// listens (Pingora itself panics on a failed bind, after other listeners are up). An address
/// in use is retried for [`BIND_RETRY`].
fn check_addresses(config: &Config) -> Result<(), StartError> {
    let mut all: Vec<(String, String)> = config
        .listeners
        .iter()
        .filter(|l| l.bind_to_port)
        .map(|l| (format!("listeners.{}", l.name), l.address.clone()))
        .collect();
    if let Some(a) = &config.admin.address {
        all.push(("admin".to_owned(), a.clone()));
    }
    let deadline = Instant::now() + BIND_RETRY;
    for (what, addr) in all {
        let sa: SocketAddr = addr
            .parse()
            .map_err(|e| StartError::Config(vec![format!("{what}: {addr:?}: {e}")]))?;
        let mut warned = false;
        loop {
            match TcpListener::bind(sa) {
                Ok(_) => break,
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline =>
                {
                    if !warned {
                        tracing::warn!(%what, %addr, retry_for = ?BIND_RETRY,
                            "address in use; retrying");
                        warned = true;
                    }
                    // Start-up, before any runtime exists: blocking here holds nothing up.
                    #[allow(clippy::disallowed_methods)]
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(source) => return Err(StartError::Bind { what, addr, source }),
            }
        }
    }
    Ok(())
}

/// Runs the sidecar on the embedded default config's text until shutdown.
pub fn run(config: Config) -> Result<(), StartError> {
    run_with_source(config, None, crate::config::DEFAULT_YAML)
}

/// Runs the sidecar until shutdown; returns only after a signal (or an error at start).
/// `text` is the config as read (its version and `/config_dump` contents come from it); with
/// `source`, that file is watched and every change is applied live as a resource update.
pub fn run_with_source(
    config: Config,
    source: Option<PathBuf>,
    text: &str,
) -> Result<(), StartError> {
    run_with(config, source, text, Vec::new())
}

/// A source of config updates besides the file (the xDS client): started once the sidecar
/// serves its static config, on its own thread, with the resource manager to apply updates
/// to; it runs until the process ends.
pub trait Feed: Send + 'static {
    /// Names the background service (logs).
    fn name(&self) -> &'static str;
    fn run(
        self: Box<Self>,
        manager: Arc<ResourceManager>,
    ) -> futures::future::BoxFuture<'static, ()>;
}

/// [`run_with_source`], plus `feeds` started beside it. With a feed, the file is not watched:
/// it is the bootstrap the feed merges its resources with.
pub fn run_with(
    config: Config,
    source: Option<PathBuf>,
    text: &str,
    feeds: Vec<Box<dyn Feed>>,
) -> Result<(), StartError> {
    let metrics = Arc::new(Metrics::new());
    let origin = source.as_ref().map_or_else(
        || "embedded".to_owned(),
        |p| format!("file:{}", p.display()),
    );
    let update = UpdateSource::yaml(&origin, text);
    let (first, plan) =
        Snapshot::build(config.clone(), &metrics, None, &update).map_err(StartError::Config)?;
    check_addresses(&config)?;
    ResourceManager::prepare_start(&plan);
    let needs_tls_roots = needs_platform_roots(&config);
    let conf = ServerConf {
        threads: config.threads,
        // No TLS upstream trusting the platform store: skip loading it, which costs tens of
        // milliseconds per listener at start (an empty PEM file loads zero roots). Clusters
        // with `ca_file` carry their own roots.
        ca_file: (!needs_tls_roots).then(|| "/dev/null".to_owned()),
        // One single-threaded runtime per worker thread: a connection stays on its thread
        // (fewer cross-thread wake-ups; 7–10 % less CPU per proxied HTTP/1.1 request).
        work_stealing: false,
        // Draining happens in our signal watch (below), which returns only once requests
        // are done or the drain time is up; after that Pingora need not wait again.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let manager = Arc::new(ResourceManager::new(
        first,
        metrics.clone(),
        needs_tls_roots,
    ));
    let snapshot = manager.snapshots();
    let process = Arc::new(ProcessState::default());
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let initial = snapshot.load_full();
    let listeners = ListenerManager::start(
        config.threads,
        snapshot.clone(),
        process.clone(),
        metrics.clone(),
        server.configuration.clone(),
    )
    .map_err(StartError::Workers)?;
    let staged = listeners.stage(&config).map_err(StartError::Listen)?;
    listeners.commit(staged, &initial);
    let listeners = Arc::new(listeners);
    manager.attach_listeners(listeners.clone());

    if let Some(addr) = &config.admin.address {
        let admin = AdminApp {
            snapshot: snapshot.clone(),
            metrics: metrics.clone(),
            process: process.clone(),
            resources: manager.clone(),
        };
        let mut svc = Service::new("admin".to_owned(), admin);
        svc.add_tcp(addr);
        svc.threads = Some(1);
        server.add_service(svc);
    }

    // Background tasks follow the published Snapshots, so clusters and the app callback added
    // by a later update are served too.
    let mut svc = background_service(
        "cluster maintenance",
        Maintenance {
            manager: manager.clone(),
        },
    );
    svc.threads = Some(1);
    server.add_service(svc);

    let mut svc = background_service(
        "app callback",
        AppCallbackTask {
            manager: manager.clone(),
        },
    );
    svc.threads = Some(1);
    server.add_service(svc);

    let source = source.filter(|_| feeds.is_empty());
    for feed in feeds {
        let name = feed.name();
        let mut svc = background_service(
            name,
            FeedTask {
                feed: parking_lot::Mutex::new(Some(feed)),
                manager: manager.clone(),
            },
        );
        svc.threads = Some(1);
        server.add_service(svc);
    }

    if let Some(path) = source {
        let reload = ConfigReload { path, manager };
        let mut svc = background_service("config reload", reload);
        svc.threads = Some(1);
        server.add_service(svc);
    }

    tracing::info!(
        listeners = ?config.listeners.iter().map(|l| l.address.as_str()).collect::<Vec<_>>(),
        admin = ?config.admin.address,
        components = config.components.len(),
        "mecha starting"
    );
    let drain = Duration::from_secs(config.shutdown.drain_seconds);
    server.run(RunArgs {
        shutdown_signal: Box::new(DrainOnTerm {
            process,
            drain,
            listeners,
        }),
    });
    Ok(())
}

/// How often the config file's modification time and length are checked: the fastest a file
/// source can apply updates (benches/reload.sh measures 10 reloads/s; a `stat` each 100 ms is
/// free next to serving traffic).
pub const RELOAD_POLL: Duration = Duration::from_millis(100);

/// Watches the config file; each change is a resource update (see [`crate::resources`]):
/// applied as a diff, or rejected whole with every error logged and shown in `/config_dump`.
/// Runs one [`Feed`] (taken on the first start; Pingora starts a background service once).
struct FeedTask {
    feed: parking_lot::Mutex<Option<Box<dyn Feed>>>,
    manager: Arc<ResourceManager>,
}

#[async_trait]
impl BackgroundService for FeedTask {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(feed) = self.feed.lock().take() else {
            return;
        };
        tokio::select! {
            _ = feed.run(self.manager.clone()) => {}
            _ = shutdown.changed() => {}
        }
    }
}

struct ConfigReload {
    path: PathBuf,
    manager: Arc<ResourceManager>,
}

/// Whether some TLS cluster trusts the platform store (no `ca_file`): only then is it loaded.
pub(crate) fn needs_platform_roots(config: &Config) -> bool {
    config
        .clusters
        .iter()
        .any(|c| c.protocol == UpstreamProtocol::H2 && c.ca_file.is_none())
}

impl ConfigReload {
    fn stamp(&self) -> Option<(std::time::SystemTime, u64)> {
        // Follows symlinks, so a Kubernetes ConfigMap's atomic swap is seen.
        let m = std::fs::metadata(&self.path).ok()?;
        Some((m.modified().ok()?, m.len()))
    }

    async fn apply(&self) {
        let path = self.path.display();
        let text = match tokio::fs::read_to_string(&self.path).await {
            Ok(t) => t,
            Err(e) => return tracing::error!("config reload: {path}: cannot read: {e}"),
        };
        let started = Instant::now();
        match self
            .manager
            .apply_yaml("file", &format!("file:{path}"), &text)
            .await
        {
            Ok(Outcome::Applied(summary)) => tracing::info!(
                took = ?started.elapsed(),
                "config reload: {path}: applied ({summary})"
            ),
            Ok(Outcome::Unchanged) => tracing::debug!("config reload: {path}: unchanged"),
            Err(errs) => tracing::error!(
                "config reload: {path}: rejected, keeping the running config:\n  {}",
                errs.join("\n  ")
            ),
        }
    }
}

#[async_trait]
impl BackgroundService for ConfigReload {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut last = self.stamp();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RELOAD_POLL) => {}
                _ = shutdown.changed() => return,
            }
            let now = self.stamp();
            if now.is_some() && now != last {
                last = now;
                self.apply().await;
            }
        }
    }
}

/// Runs each cluster's active health checks and DNS re-resolution. Tasks follow cluster
/// identity: a cluster an update kept (the same object) keeps its tasks and state; a new or
/// rebuilt one gets new tasks; a removed one's stop.
struct Maintenance {
    manager: Arc<ResourceManager>,
}

#[async_trait]
impl BackgroundService for Maintenance {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut published = self.manager.subscribe();
        let mut running: HashMap<usize, Vec<tokio::task::JoinHandle<()>>> = HashMap::new();
        loop {
            let snap = published.borrow_and_update().clone();
            let live: HashMap<usize, &Arc<mecha_mesh::Cluster>> = snap
                .clusters
                .values()
                .map(|c| (Arc::as_ptr(c) as usize, c))
                .collect();
            running.retain(|id, tasks| {
                let keep = live.contains_key(id);
                if !keep {
                    tasks.iter().for_each(|t| t.abort());
                }
                keep
            });
            for (id, cluster) in live {
                running
                    .entry(id)
                    .or_insert_with(|| spawn_maintenance(cluster));
            }
            tokio::select! {
                _ = shutdown.changed() => break,
                changed = published.changed() => if changed.is_err() { break },
            }
        }
        for t in running.values().flatten() {
            t.abort();
        }
    }
}

fn spawn_maintenance(cluster: &Arc<mecha_mesh::Cluster>) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    {
        // Names were resolved before the cluster was published; re-resolve every period.
        // Endpoints may gain names later (an in-place update), so the loop always runs.
        let (cluster, every) = (cluster.clone(), cluster.dns_refresh);
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if cluster.has_dns_names() {
                    cluster.refresh().await;
                }
            }
        }));
    }
    if let Some(hc) = &cluster.health_check {
        let (cluster, every) = (cluster.clone(), hc.interval.0);
        tasks.push(tokio::spawn(async move {
            loop {
                cluster.run_health_check().await;
                tokio::time::sleep(every).await;
            }
        }));
    }
    tasks
}

/// Delivers pub/sub events to the app's `AppCallback` service (`app.grpc_callback`), on the
/// components of each published Snapshot; a change of the `app` section restarts delivery.
struct AppCallbackTask {
    manager: Arc<ResourceManager>,
}

#[async_trait]
impl BackgroundService for AppCallbackTask {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut published = self.manager.subscribe();
        loop {
            let snap = published.borrow_and_update().clone();
            let app = snap.config.app.clone();
            // The local app's gRPC cluster (`app.grpc_port` / `app.grpc_callback`): callback
            // calls go over the mesh client to it.
            let cluster = snap.clusters.get(crate::config::LOCAL_APP_GRPC).cloned();
            let (registry_tx, registries) = tokio::sync::watch::channel(snap.registry.clone());
            let (stop_tx, stop) = tokio::sync::watch::channel(false);
            let endpoint = app
                .grpc_callback
                .clone()
                .or_else(|| app.grpc_port.map(|p| format!("127.0.0.1:{p}")));
            let runner = cluster.clone().zip(endpoint).map(|(cluster, endpoint)| {
                let channel = mecha_mesh::client::GrpcChannel::new(
                    snap.invoker.client().clone(),
                    cluster,
                    None,
                    Some(mecha_filters::capability::CALLBACK_TIMEOUT),
                    snap.config.invocation.max_body_bytes,
                );
                tokio::spawn(mecha_filters::capability::run_app_callback(
                    registries,
                    app.id.clone(),
                    channel,
                    endpoint,
                    app.list_subscriptions_interval.0,
                    stop,
                ))
            });
            let restart = loop {
                tokio::select! {
                    _ = shutdown.changed() => break false,
                    changed = published.changed() => {
                        if changed.is_err() {
                            break false;
                        }
                        let next = published.borrow_and_update().clone();
                        let next_cluster = next.clusters.get(crate::config::LOCAL_APP_GRPC);
                        let same_cluster = match (&cluster, next_cluster) {
                            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                            (None, None) => true,
                            _ => false,
                        };
                        if next.config.app != app || !same_cluster {
                            break true;
                        }
                        registry_tx.send_replace(next.registry.clone());
                    }
                }
            };
            stop_tx.send_replace(true);
            if let Some(r) = runner {
                let _ = r.await;
            }
            if !restart {
                return;
            }
            tracing::info!("app section changed: restarting event delivery to the app");
        }
    }
}

/// SIGTERM: stop being ready, wait for in-flight requests (at most `drain`), then let Pingora
/// close the listeners. SIGINT: exit now. SIGQUIT (Pingora's upgrade signal) drains too.
struct DrainOnTerm {
    process: Arc<ProcessState>,
    drain: Duration,
    listeners: Arc<ListenerManager>,
}

#[async_trait]
impl ShutdownSignalWatch for DrainOnTerm {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!("cannot install signal handlers; shutting down");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = int.recv() => {
                tracing::info!("SIGINT: exiting now");
                return ShutdownSignal::FastShutdown;
            }
            _ = term.recv() => {}
            _ = quit.recv() => {}
        }
        self.process.draining.store(true, Ordering::Release);
        tracing::info!(inflight = self.process.inflight(), drain = ?self.drain, "draining");
        if tokio::time::timeout(self.drain, self.process.wait_idle())
            .await
            .is_err()
        {
            tracing::warn!(
                inflight = self.process.inflight(),
                "drain time is up; closing remaining requests"
            );
        }
        self.listeners.shutdown();
        ShutdownSignal::GracefulTerminate
    }
}
