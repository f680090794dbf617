//! Process bootstrap: Snapshot → Pingora server with one proxy service per listener, the admin
//! service and background tasks → run until SIGTERM (drain) or SIGINT (fast exit).

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use mecha_mesh::config::UpstreamProtocol;
use pingora::apps::HttpServerOptions;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::admin::AdminApp;
use crate::config::Config;
use crate::lean::LeanListener;
use crate::metrics::Metrics;
use crate::proxy::{ListenerProxy, ProcessState};
use crate::snapshot::Snapshot;
use crate::sniff::H2cSniff;
use crate::tcp::TcpProxy;

/// Why the process could not start; printed by the binary, which then exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid config:\n  {}", .0.join("\n  "))]
    Config(Vec<String>),
    #[error("{what} {addr}: cannot listen: {source}")]
    Bind {
        what: String,
        addr: String,
        source: std::io::Error,
    },
}

/// Binds and releases every address first, so a taken port is a clear error before anything
/// listens (Pingora itself panics on a failed bind, after other listeners are up).
fn check_addresses(config: &Config) -> Result<(), StartError> {
    let mut all: Vec<(String, String)> = config
        .listeners
        .iter()
        .map(|l| (format!("listeners.{}", l.name), l.address.clone()))
        .collect();
    if let Some(a) = &config.admin.address {
        all.push(("admin".to_owned(), a.clone()));
    }
    for (what, addr) in all {
        let sa: SocketAddr = addr
            .parse()
            .map_err(|e| StartError::Config(vec![format!("{what}: {addr:?}: {e}")]))?;
        TcpListener::bind(sa).map_err(|source| StartError::Bind { what, addr, source })?;
    }
    Ok(())
}

/// Runs the sidecar until shutdown. Returns only after a signal (or an error at start).
pub fn run(config: Config) -> Result<(), StartError> {
    run_with_source(config, None)
}

/// Like [`run`]; with `source`, the file is watched and a valid change is applied live
/// (components, clusters, routes; listener addresses need a restart).
pub fn run_with_source(config: Config, source: Option<PathBuf>) -> Result<(), StartError> {
    let metrics = Arc::new(Metrics::new());
    let snapshot = Snapshot::build(config.clone(), &metrics).map_err(StartError::Config)?;
    check_addresses(&config)?;
    let snapshot = Arc::new(ArcSwap::from_pointee(snapshot));
    let process = Arc::new(ProcessState::default());

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
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let initial = snapshot.load_full();
    for (index, l) in config.listeners.iter().enumerate() {
        if let Some(tp) = &l.tcp_proxy {
            let app = TcpProxy {
                cluster: tp.cluster.clone(),
                snapshot: snapshot.clone(),
            };
            let mut svc = Service::new(format!("tcp listener {}", l.name), app);
            svc.add_tcp(&l.address);
            server.add_service(svc);
            continue;
        }
        let mut opts = HttpServerOptions::default();
        opts.h2c = true;
        if initial.lean.get(index).is_some_and(Option::is_some) {
            let app = LeanListener {
                index,
                snapshot: snapshot.clone(),
                process: process.clone(),
                options: opts,
            };
            // Every HTTP listener detects HTTP/1 vs h2c itself (see `sniff`).
            let mut svc = Service::new(format!("listener {}", l.name), H2cSniff::new(app));
            svc.add_tcp(&l.address);
            server.add_service(svc);
            continue;
        }
        // Extended CONNECT reaches the router (Pingora would answer 405 to any CONNECT).
        opts.allow_connect_method_proxying = true;
        let mut proxy = pingora::proxy::http_proxy(
            &server.configuration,
            ListenerProxy {
                index,
                snapshot: snapshot.clone(),
                process: process.clone(),
            },
        );
        proxy.server_options = Some(opts);
        // HTTP/2 extended CONNECT (RFC 8441, e.g. WebSocket over h2) is routed like any
        // request; the router refuses plain CONNECT tunnels.
        let mut h2 = pingora::protocols::http::v2::server::default_h2_options();
        h2.enable_connect_protocol();
        proxy.h2_options = Some(h2);
        let mut svc = Service::new(format!("listener {}", l.name), H2cSniff::new(proxy));
        svc.add_tcp(&l.address);
        server.add_service(svc);
    }

    if let Some(addr) = &config.admin.address {
        let admin = AdminApp {
            snapshot: snapshot.clone(),
            metrics: metrics.clone(),
            process: process.clone(),
        };
        let mut svc = Service::new("admin".to_owned(), admin);
        svc.add_tcp(addr);
        svc.threads = Some(1);
        server.add_service(svc);
    }

    if !config.clusters.is_empty() {
        let mut svc = background_service(
            "cluster maintenance",
            HealthChecks {
                snapshot: snapshot.clone(),
            },
        );
        svc.threads = Some(1);
        server.add_service(svc);
    }

    if let Some(endpoint) = &config.app.grpc_callback {
        let task = AppCallbackTask {
            snapshot: snapshot.clone(),
            app_id: config.app.id.clone(),
            endpoint: endpoint.clone(),
        };
        let mut svc = background_service("app callback", task);
        svc.threads = Some(1);
        server.add_service(svc);
    }

    if let Some(path) = source {
        let reload = ConfigReload {
            path,
            snapshot: snapshot.clone(),
            metrics,
        };
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
        shutdown_signal: Box::new(DrainOnTerm { process, drain }),
    });
    Ok(())
}

/// Watches the config file; a valid change becomes the new Snapshot (swapped atomically:
/// requests in flight keep the one they loaded). An invalid change is logged and ignored.
struct ConfigReload {
    path: PathBuf,
    snapshot: Arc<ArcSwap<Snapshot>>,
    metrics: Arc<Metrics>,
}

/// Whether some TLS cluster trusts the platform store (no `ca_file`): only then is it loaded.
fn needs_platform_roots(config: &Config) -> bool {
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

    fn apply(&self) {
        let path = self.path.display();
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => return tracing::error!("config reload: {path}: cannot read: {e}"),
        };
        let cfg = match crate::config::load(&text) {
            Ok(c) => c,
            Err(errs) => {
                return tracing::error!(
                    "config reload: {path}: invalid, keeping the running config:\n  {}",
                    errs.join("\n  ")
                )
            }
        };
        let current = self.snapshot.load_full();
        // A listener's kind (TCP, capability-only, full chain) picks its Pingora service at
        // start, so it cannot change live.
        let listeners = |c: &Config| {
            c.listeners
                .iter()
                .map(|l| {
                    let lean = matches!(
                        l.filters.as_slice(),
                        [crate::config::FilterConfig::Capability { .. }]
                    );
                    (l.name.clone(), l.address.clone(), l.tcp_proxy.clone(), lean)
                })
                .collect::<Vec<_>>()
        };
        if listeners(&cfg) != listeners(&current.config)
            || cfg.admin != current.config.admin
            || cfg.threads != current.config.threads
        {
            return tracing::error!(
                "config reload: {path}: listeners (address, kind), admin or threads changed; \
                 these need a restart — keeping the running config"
            );
        }
        if needs_platform_roots(&cfg) && !needs_platform_roots(&current.config) {
            return tracing::error!(
                "config reload: {path}: a TLS (h2) cluster without ca_file needs the platform \
                 trust store, which this process did not load; add ca_file or restart — \
                 keeping the running config"
            );
        }
        match Snapshot::build(cfg, &self.metrics) {
            Ok(next) => {
                self.snapshot.store(Arc::new(next));
                tracing::info!("config reload: {path}: applied");
            }
            Err(errs) => tracing::error!(
                "config reload: {path}: cannot build, keeping the running config:\n  {}",
                errs.join("\n  ")
            ),
        }
    }
}

#[async_trait]
impl BackgroundService for ConfigReload {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut last = self.stamp();
        #[allow(clippy::disallowed_methods, reason = "a constant 1 s period")]
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let now = self.stamp();
            if now.is_some() && now != last {
                last = now;
                self.apply();
            }
        }
    }
}

/// Runs each cluster's active health checks and DNS re-resolution on their intervals.
struct HealthChecks {
    snapshot: Arc<ArcSwap<Snapshot>>,
}

#[async_trait]
impl BackgroundService for HealthChecks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let snap = self.snapshot.load_full();
            let tasks = spawn_maintenance(&snap);
            // A reloaded config brings new cluster objects: restart the loops on them.
            #[allow(clippy::disallowed_methods, reason = "a constant 1 s period")]
            let mut poll = tokio::time::interval(Duration::from_secs(1));
            let stop = loop {
                tokio::select! {
                    _ = shutdown.changed() => break true,
                    _ = poll.tick() => {
                        if !Arc::ptr_eq(&snap, &self.snapshot.load_full()) {
                            break false;
                        }
                    }
                }
            };
            for t in tasks {
                t.abort();
            }
            if stop {
                return;
            }
        }
    }
}

#[allow(
    clippy::disallowed_methods,
    reason = "periods checked non-zero by mesh::bounds; being rewritten"
)]
fn spawn_maintenance(snap: &Snapshot) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for cluster in snap.clusters.values() {
        if let Some(every) = cluster.dns_refresh {
            let cluster = cluster.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await; // resolved at build already
                loop {
                    tick.tick().await;
                    cluster.refresh().await;
                }
            }));
        }
        if let Some(hc) = &cluster.health_check {
            let (cluster, every) = (cluster.clone(), hc.interval.0);
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    cluster.run_health_check().await;
                }
            }));
        }
    }
    tasks
}

/// Delivers pub/sub events to the app's `AppCallback` service.
struct AppCallbackTask {
    snapshot: Arc<ArcSwap<Snapshot>>,
    app_id: String,
    endpoint: String,
}

#[async_trait]
impl BackgroundService for AppCallbackTask {
    async fn start(&self, shutdown: ShutdownWatch) {
        let registry = self.snapshot.load_full().registry.clone();
        mecha_filters::capability::run_app_callback(
            registry,
            self.app_id.clone(),
            self.endpoint.clone(),
            shutdown,
        )
        .await;
    }
}

/// SIGTERM: stop being ready, wait for in-flight requests (at most `drain`), then let Pingora
/// close the listeners. SIGINT: exit now. SIGQUIT (Pingora's upgrade signal) drains too.
struct DrainOnTerm {
    process: Arc<ProcessState>,
    drain: Duration,
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
        ShutdownSignal::GracefulTerminate
    }
}
