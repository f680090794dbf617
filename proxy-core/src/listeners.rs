//! The listener manager: Mecha's own accept loops, so listeners are live resources.
//!
//! Pingora binds its services' listeners once, at start, and cannot add one later; xDS and
//! file reloads add, remove and move listeners. So the manager owns the sockets and the accept
//! loops, and Pingora is used below that: its HTTP/1 and h2 sessions and its proxy loop
//! (through each listener's app, [`H2cSniff`] over [`LeanListener`] or Pingora's `HttpProxy`),
//! and its stream type for the TCP proxy.
//!
//! - **One socket per worker thread.** Each worker is an OS thread with its own current-thread
//!   runtime (`threads` in the config). Every bound listener has one `SO_REUSEPORT` socket per
//!   worker, each accepted by that worker only, so the kernel spreads connections over the
//!   workers and a connection, its h2 streams and the upstream connections it opens (Pingora's
//!   spawns go to the current runtime) stay on one core, as nginx workers do.
//! - **Listeners are resources.** An update is staged first ([`ListenerManager::stage`]: the
//!   sockets of new or re-addressed listeners are bound, so a taken port rejects the update
//!   before anything changes), then committed after the Snapshot is published
//!   ([`ListenerManager::commit`]): new sockets start accepting, a listener whose kind or
//!   limits changed gets a new app (its open connections finish on the old one), replaced
//!   sockets close, and a removed listener stops accepting and drains: its connections are
//!   told to finish (no more keep-alive, h2 GOAWAY) and are closed after
//!   `shutdown.drain_seconds`.
//! - **Original destination.** A `use_original_dst` listener reads each connection's
//!   destination before an iptables REDIRECT (`SO_ORIGINAL_DST`) and hands it to the
//!   *virtual* listener (`bind_to_port: false`) for that address — exact `ip:port`, then the
//!   wildcard address with that port — or serves it itself when none matches, as Envoy's
//!   `use_original_dst` does for Istio's outbound and inbound capture ports.
//! - **Filter chains.** A virtual listener with `chain_of: L` is reached only from `L`: for
//!   each connection `L` accepts, its original destination (or the address it reached) picks
//!   the chain by the same exact-then-port rule, before any global virtual listener; `L`'s own
//!   filters are the default chain. `L` may be virtual too: a connection dispatched to it
//!   by original destination then picks one of `L`'s chains on that destination.
//! - **Chains by ClientHello.** Chains on one destination may differ by `chain_match` (SNI,
//!   transport protocol, ALPN): only then is the connection inspected ([`crate::chains`]:
//!   peeked, or read and rewound into the stream, within `listener_filters_timeout`) and the
//!   chain picked in Envoy's order; a destination without such chains is not inspected.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use pingora::apps::{HttpServerOptions, ServerApp};
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest, Stream};
use pingora::proxy::HttpProxy;
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::runtime::Handle;
use tokio::sync::watch;

use crate::chains::{self, GaveUp, Hello};
use crate::config::{ChainMatch, Config, FilterConfig, ListenerConfig};
use crate::lean::LeanListener;
use crate::metrics::{ListenerRefused, Metrics};
use crate::proxy::{ListenerProxy, ProcessState};
use crate::snapshot::{ListenerRef, Snapshot};
use crate::sniff::{H2cSniff, ListenerLimits};
use crate::tcp::TcpProxy;

/// Pending connections the kernel queues per socket before `accept` (nginx uses 511 on Linux;
/// Pingora 65535). One socket per worker, so a listener queues `threads` times this.
const LISTEN_BACKLOG: i32 = 4096;

/// How long an accept loop pauses after `accept` fails (out of file descriptors): the error
/// persists until connections close, and retrying at once would spin a core.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// What a listener's app is built from: a change rebuilds the app, not the sockets.
#[derive(Debug, Clone, PartialEq)]
struct Shape {
    kind: Kind,
    limits: (usize, Duration, Duration),
    original_dst: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tcp,
    /// Only the capability filter: served without the proxy phases.
    Lean,
    Chain,
}

impl Shape {
    fn of(l: &ListenerConfig) -> Self {
        let kind = if l.tcp_proxy.is_some() {
            Kind::Tcp
        } else if matches!(l.filters.as_slice(), [FilterConfig::Capability { .. }]) {
            Kind::Lean
        } else {
            Kind::Chain
        };
        Self {
            kind,
            limits: (
                l.max_connections,
                l.request_header_timeout.0,
                l.request_body_timeout.0,
            ),
            original_dst: l.use_original_dst,
        }
    }
}

/// How a connection is served: one of the listener kinds, each a Pingora `ServerApp`.
enum Serve {
    Chain(Arc<H2cSniff<HttpProxy<ListenerProxy>>>),
    Lean(Arc<H2cSniff<LeanListener>>),
    Tcp(Arc<TcpProxy>),
}

/// One build of a listener's settings. A change of kind or limits builds a new one for new
/// connections and drains this one's, as removing the listener would.
struct ListenerApp {
    serve: Serve,
    original_dst: bool,
    /// `true`: connections finish what they serve and close (replaced or removed, or the
    /// process drains).
    drain: watch::Sender<bool>,
    /// `true`: connections still open are closed now (the drain time is up).
    close: watch::Sender<bool>,
}

impl ListenerApp {
    /// Serves one connection until it closes; a reusable HTTP/1 connection comes back from
    /// the app and is served again, as Pingora's own accept loop does.
    async fn serve(&self, stream: Stream, shutdown: &ShutdownWatch) {
        let mut next = Some(stream);
        while let Some(stream) = next.take() {
            next = match &self.serve {
                Serve::Chain(app) => app.process_new(stream, shutdown).await,
                Serve::Lean(app) => app.process_new(stream, shutdown).await,
                Serve::Tcp(app) => app.process_new(stream, shutdown).await,
            };
        }
    }
}

/// A listener as its connections see it; it outlives the listener's removal for as long as
/// one of its connections is open.
struct Slot {
    name: String,
    app: ArcSwap<ListenerApp>,
    accepted: Counter,
    open: Gauge,
}

/// Virtual listeners by address, for original-destination dispatch.
type ByAddress = HashMap<SocketAddr, Arc<Slot>>;

/// The listeners that bind nothing, by the address they answer for.
#[derive(Default)]
struct Virtuals {
    /// Reached from any `use_original_dst` listener.
    global: ByAddress,
    /// Filter chains (`chain_of`), by the listener whose connections they serve.
    chains: HashMap<String, Chains>,
    /// `mecha_listener_connections_refused_total`: connections closed while their ClientHello
    /// was awaited, by the chains' listener and a `reason`.
    refused: ListenerRefused,
}

/// One listener's filter chains.
struct Chains {
    /// Chains by destination address (`0.0.0.0:port` for any address at that port); those on
    /// one address differ by their match.
    by_address: HashMap<SocketAddr, Vec<Chain>>,
    /// The listener's `listener_filters_timeout` (zero: no limit).
    timeout: Duration,
    /// The listener's `continue_on_listener_filters_timeout`.
    continue_on_timeout: bool,
}

struct Chain {
    criteria: ChainMatch,
    slot: Arc<Slot>,
}

struct Running {
    /// The configured address (for a bound listener, what its sockets are bound to).
    address: SocketAddr,
    shape: Shape,
    slot: Arc<Slot>,
    /// Stops this listener's accept loops (and so closes its sockets); `None` for a virtual
    /// listener.
    accepting: Option<watch::Sender<bool>>,
    /// The listener this one is a filter chain of (`chain_of`).
    chain_of: Option<String>,
    /// Its `chain_match` (empty: none).
    chain_match: ChainMatch,
    /// `listener_filters_timeout` and `continue_on_listener_filters_timeout`, for its chains.
    inspect: (Duration, bool),
}

/// Sockets bound for an update, not yet accepting: dropped unused if the update is rejected.
#[derive(Default)]
pub struct Staged {
    bound: HashMap<String, Vec<std::net::TcpListener>>,
}

pub struct ListenerManager {
    workers: Vec<Handle>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    process: Arc<ProcessState>,
    metrics: Arc<Metrics>,
    /// Pingora's server configuration, which its `HttpProxy` is built with.
    server_conf: Arc<ServerConf>,
    running: Mutex<HashMap<String, Running>>,
    virtuals: Arc<ArcSwap<Virtuals>>,
}

impl ListenerManager {
    /// Starts `threads` worker threads, each running its own current-thread runtime.
    pub fn start(
        threads: usize,
        snapshot: Arc<ArcSwap<Snapshot>>,
        process: Arc<ProcessState>,
        metrics: Arc<Metrics>,
        server_conf: Arc<ServerConf>,
    ) -> std::io::Result<Self> {
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            workers.push(runtime.handle().clone());
            std::thread::Builder::new()
                .name(format!("mecha-worker-{i}"))
                .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
        }
        Ok(Self {
            workers,
            snapshot,
            process,
            metrics,
            server_conf,
            running: Mutex::new(HashMap::new()),
            virtuals: Arc::new(ArcSwap::from_pointee(Virtuals::default())),
        })
    }

    /// Binds the sockets `next` needs that are not bound yet: listeners that are new, moved to
    /// another address, or turned from virtual to bound. Returns every address that cannot be
    /// bound; nothing changes until [`ListenerManager::commit`].
    pub fn stage(&self, next: &Config) -> Result<Staged, Vec<String>> {
        let running = self.running.lock();
        let held: HashSet<SocketAddr> = running
            .values()
            .filter(|r| r.accepting.is_some())
            .map(|r| r.address)
            .collect();
        let mut staged = Staged::default();
        let mut errors = Vec::new();
        for l in next.listeners.iter().filter(|l| l.bind_to_port) {
            let Ok(addr) = l.address.parse::<SocketAddr>() else {
                errors.push(format!(
                    "listeners.{}.address: expected ip:port, got {:?}",
                    l.name, l.address
                ));
                continue;
            };
            let unchanged = running
                .get(&l.name)
                .is_some_and(|r| r.accepting.is_some() && r.address == addr);
            if unchanged {
                continue;
            }
            // An address this process holds (another listener moving away in the same
            // update) is shared through SO_REUSEPORT; any other holder is a conflict.
            match bind_reuseport(addr, self.workers.len(), !held.contains(&addr)) {
                Ok(sockets) => {
                    staged.bound.insert(l.name.clone(), sockets);
                }
                Err(e) => errors.push(format!("listeners.{}: {addr}: cannot listen: {e}", l.name)),
            }
        }
        if errors.is_empty() {
            Ok(staged)
        } else {
            Err(errors)
        }
    }

    /// Makes the listeners of the published `snap` the running ones, with the sockets
    /// `staged` for it.
    pub fn commit(&self, mut staged: Staged, snap: &Snapshot) {
        let mut running = self.running.lock();
        let drain = Duration::from_secs(snap.config.shutdown.drain_seconds);
        let mut keep = HashSet::new();
        for l in &snap.config.listeners {
            keep.insert(l.name.as_str());
            let Ok(address) = l.address.parse::<SocketAddr>() else {
                continue;
            };
            let shape = Shape::of(l);
            let entry = running.entry(l.name.clone()).or_insert_with(|| {
                let labels = vec![("listener".to_owned(), l.name.clone())];
                Running {
                    address,
                    shape: shape.clone(),
                    slot: Arc::new(Slot {
                        name: l.name.clone(),
                        app: ArcSwap::from_pointee(self.build_app(l, &shape)),
                        accepted: self
                            .metrics
                            .listener_connections_accepted
                            .get_or_create(&labels)
                            .clone(),
                        open: self
                            .metrics
                            .downstream_connections
                            .get_or_create(&labels)
                            .clone(),
                    }),
                    accepting: None,
                    chain_of: None,
                    chain_match: ChainMatch::default(),
                    inspect: (Duration::ZERO, false),
                }
            });
            entry.chain_of = l.chain_of.clone();
            entry.chain_match = l.chain_match.clone().unwrap_or_default();
            entry.inspect = (
                l.listener_filters_timeout.0,
                l.continue_on_listener_filters_timeout,
            );
            if entry.shape != shape {
                tracing::info!(listener = %l.name, ?drain,
                    "listener kind or limits changed: new connections get the new settings; \
                     open ones drain");
                let old = entry.slot.app.swap(Arc::new(self.build_app(l, &shape)));
                self.retire(&entry.slot.name, old, drain);
                entry.shape = shape;
            }
            if let Some(sockets) = staged.bound.remove(&l.name) {
                let stop = self.accept_on(&entry.slot, sockets);
                if let Some(old) = entry.accepting.replace(stop) {
                    tracing::info!(listener = %l.name, from = %entry.address, to = %address, ?drain,
                        "listener moved: connections to the old address drain");
                    old.send_replace(true);
                    // The connections made to the old address drain, as a removed
                    // listener's do; new ones get a fresh app.
                    let fresh = Arc::new(self.build_app(l, &entry.shape));
                    self.retire(&l.name, entry.slot.app.swap(fresh), drain);
                } else {
                    tracing::info!(listener = %l.name, %address, "listening");
                }
            } else if !l.bind_to_port {
                if let Some(old) = entry.accepting.take() {
                    old.send_replace(true);
                }
            }
            entry.address = address;
        }
        let removed: Vec<String> = running
            .keys()
            .filter(|name| !keep.contains(name.as_str()))
            .cloned()
            .collect();
        for name in removed {
            if let Some(gone) = running.remove(&name) {
                tracing::info!(listener = %name, address = %gone.address, ?drain,
                    "listener removed: not accepting; open connections drain");
                if let Some(stop) = gone.accepting {
                    stop.send_replace(true);
                }
                self.retire(&name, gone.slot.app.load_full(), drain);
            }
        }
        let mut virtuals = Virtuals {
            refused: self.metrics.listener_connections_refused.clone(),
            ..Virtuals::default()
        };
        for r in running.values().filter(|r| r.accepting.is_none()) {
            let Some(owner) = &r.chain_of else {
                virtuals.global.insert(r.address, r.slot.clone());
                continue;
            };
            let (timeout, continue_on_timeout) = running
                .get(owner)
                .map_or((Duration::ZERO, false), |o| o.inspect);
            let chains = virtuals
                .chains
                .entry(owner.clone())
                .or_insert_with(|| Chains {
                    by_address: HashMap::new(),
                    timeout,
                    continue_on_timeout,
                });
            chains.by_address.entry(r.address).or_default().push(Chain {
                criteria: r.chain_match.clone(),
                slot: r.slot.clone(),
            });
        }
        // Validation refuses overlapping matches; a fixed order keeps any tie stable anyway.
        for chains in virtuals.chains.values_mut() {
            for list in chains.by_address.values_mut() {
                list.sort_by(|a, b| a.slot.name.cmp(&b.slot.name));
            }
        }
        self.virtuals.store(Arc::new(virtuals));
    }

    /// Whether `name` is running as `snap`'s config has it: bound at its address and
    /// accepting, or (virtual) known for dispatch. `Err` names what is wrong.
    pub fn status(&self, name: &str, address: &str, bind: bool) -> Result<(), String> {
        let running = self.running.lock();
        let Some(r) = running.get(name) else {
            return Err(format!("listener {name:?} is not running"));
        };
        if address.parse::<SocketAddr>().ok() != Some(r.address) {
            return Err(format!(
                "listener {name:?} is at {}, not yet at {address}",
                r.address
            ));
        }
        match (bind, r.accepting.as_ref()) {
            (true, Some(stop)) if stop.receiver_count() > 0 => Ok(()),
            (true, _) => Err(format!("listener {address} not accepting")),
            (false, _) => Ok(()),
        }
    }

    /// Stops accepting on every listener and tells their connections to finish (the process
    /// is shutting down).
    pub fn shutdown(&self) {
        for r in self.running.lock().values() {
            if let Some(stop) = &r.accepting {
                stop.send_replace(true);
            }
            r.slot.app.load().drain.send_replace(true);
        }
    }

    /// Tells the connections `app` serves to finish, and closes those still open after
    /// `drain`.
    fn retire(&self, listener: &str, app: Arc<ListenerApp>, drain: Duration) {
        app.drain.send_replace(true);
        let listener = listener.to_owned();
        self.workers[0].spawn(async move {
            tokio::time::sleep(drain).await;
            if app.close.receiver_count() > 0 {
                tracing::info!(%listener, open = app.close.receiver_count(),
                    "drain time is up: closing connections still open");
            }
            app.close.send_replace(true);
        });
    }

    fn build_app(&self, l: &ListenerConfig, shape: &Shape) -> ListenerApp {
        let limits = ListenerLimits {
            max_connections: l.max_connections,
            header_timeout: l.request_header_timeout.0,
            body_timeout: l.request_body_timeout.0,
            refused: self
                .metrics
                .listener_connections_refused
                .get_or_create(&vec![("listener".to_owned(), l.name.clone())])
                .clone(),
        };
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        options.h2_idle_timeout = Some(crate::sniff::IDLE_TIMEOUT);
        let serve = match shape.kind {
            Kind::Tcp => Serve::Tcp(Arc::new(TcpProxy {
                listener: ListenerRef::with_snapshot(&l.name, self.snapshot.load_full()),
                snapshot: self.snapshot.clone(),
            })),
            Kind::Lean => {
                let app = LeanListener {
                    listener: ListenerRef::with_snapshot(&l.name, self.snapshot.load_full()),
                    snapshot: self.snapshot.clone(),
                    process: self.process.clone(),
                    options,
                };
                Serve::Lean(Arc::new(H2cSniff::new(app, limits)))
            }
            Kind::Chain => {
                // Extended CONNECT reaches the router (Pingora would answer 405 to any
                // CONNECT); the router refuses plain CONNECT tunnels.
                options.allow_connect_method_proxying = true;
                let mut proxy = pingora::proxy::http_proxy(
                    &self.server_conf,
                    ListenerProxy {
                        listener: ListenerRef::with_snapshot(&l.name, self.snapshot.load_full()),
                        snapshot: self.snapshot.clone(),
                        process: self.process.clone(),
                    },
                );
                proxy.server_options = Some(options);
                // HTTP/2 extended CONNECT (RFC 8441, e.g. WebSocket over h2) is routed like
                // any request.
                let mut h2 = pingora::protocols::http::v2::server::default_h2_options();
                h2.enable_connect_protocol();
                proxy.h2_options = Some(h2);
                Serve::Chain(Arc::new(H2cSniff::new(proxy, limits)))
            }
        };
        ListenerApp {
            serve,
            original_dst: shape.original_dst,
            drain: watch::channel(false).0,
            close: watch::channel(false).0,
        }
    }

    /// Starts one accept loop per worker, each on its own socket; they stop when the
    /// returned sender says `true`.
    fn accept_on(
        &self,
        slot: &Arc<Slot>,
        sockets: Vec<std::net::TcpListener>,
    ) -> watch::Sender<bool> {
        let (stop, _) = watch::channel(false);
        for (worker, socket) in self.workers.iter().zip(sockets) {
            worker.spawn(accept_loop(
                socket,
                slot.clone(),
                stop.subscribe(),
                self.virtuals.clone(),
            ));
        }
        stop
    }
}

/// Binds `n` listening sockets to `addr` with `SO_REUSEPORT` (port 0: the port the first one
/// got). With `probe`, a plain bind first makes sure no other socket holds the address —
/// with `SO_REUSEPORT` alone, another process of the same user could share it unnoticed.
fn bind_reuseport(
    addr: SocketAddr,
    n: usize,
    probe: bool,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    if probe && addr.port() != 0 {
        drop(std::net::TcpListener::bind(addr)?);
    }
    let mut addr = addr;
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(LISTEN_BACKLOG)?;
        let listener: std::net::TcpListener = socket.into();
        if addr.port() == 0 {
            addr = listener.local_addr()?;
        }
        sockets.push(listener);
    }
    Ok(sockets)
}

async fn accept_loop(
    socket: std::net::TcpListener,
    slot: Arc<Slot>,
    mut stop: watch::Receiver<bool>,
    virtuals: Arc<ArcSwap<Virtuals>>,
) {
    let listener = match tokio::net::TcpListener::from_std(socket) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listener = %slot.name, error = %e, "cannot accept on socket");
            return;
        }
    };
    loop {
        let accepted = tokio::select! {
            biased;
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                tokio::spawn(serve_connection(tcp, peer, slot.clone(), virtuals.clone()));
            }
            Err(e) => {
                tracing::warn!(listener = %slot.name, error = %e, "accept failed; pausing");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

/// Where a redirected connection was headed, when it was redirected (its original
/// destination differs from where it arrived). `None` for a connection made to the listener
/// itself, or when the kernel keeps no record (no conntrack entry).
fn redirected_to(tcp: &tokio::net::TcpStream) -> Option<SocketAddr> {
    let local = tcp.local_addr().ok()?;
    let sock = SockRef::from(tcp);
    let original = if local.is_ipv4() {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    };
    let original = original.ok()?.as_socket()?;
    (original != local).then_some(original)
}

/// `dst` with the unspecified address of its family (what a port-only match is keyed by).
fn any_ip(dst: SocketAddr) -> SocketAddr {
    let wildcard = match dst.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    SocketAddr::new(wildcard, dst.port())
}

fn virtual_for(virtuals: &ByAddress, dst: SocketAddr) -> Option<Arc<Slot>> {
    virtuals
        .get(&dst)
        .or_else(|| virtuals.get(&any_ip(dst)))
        .cloned()
}

/// What a connection's first bytes said, once read (shared by both chain lookups).
enum Inspected {
    Not,
    Hello(Hello),
}

/// The chain of `chains` for `dst`: the chains at the exact address, else at `0.0.0.0:port`
/// (Envoy's destination IP step commits: a more specific address is not left for a wildcard
/// one), then by their matches, reading the ClientHello first when one of them needs it.
/// `Err`: the connection is to be closed (why, for the log and the metric's `reason`).
async fn chain_for(
    chains: &Chains,
    dst: SocketAddr,
    tcp: &tokio::net::TcpStream,
    consumed: &mut Vec<u8>,
    inspected: &mut Inspected,
) -> Result<Option<Arc<Slot>>, &'static str> {
    let Some(list) = chains
        .by_address
        .get(&dst)
        .or_else(|| chains.by_address.get(&any_ip(dst)))
    else {
        return Ok(None);
    };
    let criteria: Vec<&ChainMatch> = list.iter().map(|c| &c.criteria).collect();
    if !criteria.iter().any(|c| c.inspects()) {
        // The fast path: no TLS criteria, nothing read.
        return Ok(chains::select(&criteria, &Hello::raw_buffer()).map(|i| list[i].slot.clone()));
    }
    if let Inspected::Not = inspected {
        let read = chains::inspect(tcp, consumed);
        let hello = if chains.timeout.is_zero() {
            read.await
        } else {
            match tokio::time::timeout(chains.timeout, read).await {
                Ok(got) => got,
                Err(_) if chains.continue_on_timeout => Ok(Hello::raw_buffer()),
                Err(_) => return Err("listener_filters_timeout"),
            }
        };
        *inspected = Inspected::Hello(match hello {
            Ok(h) => h,
            Err(GaveUp::Closed) => return Err("closed"),
            Err(GaveUp::TooLarge) => return Err("client_hello_too_large"),
        });
    }
    let Inspected::Hello(hello) = &*inspected else {
        return Ok(None);
    };
    Ok(chains::select(&criteria, hello).map(|i| list[i].slot.clone()))
}

/// Counts a connection open on its listener until dropped.
struct Open(Gauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    own: Arc<Slot>,
    virtuals: Arc<ArcSwap<Virtuals>>,
) {
    let mut app = own.app.load_full();
    let mut slot = own;
    // Bytes read off the socket while waiting for a ClientHello: handed back to the stream.
    let mut consumed = Vec::new();
    let mut inspected = Inspected::Not;
    let v = virtuals.load_full();
    let chains = v.chains.get(slot.name.as_str());
    if app.original_dst || chains.is_some() {
        let dst = redirected_to(&tcp);
        // A filter chain of this listener first (matched on where the connection was going:
        // its original destination, else the listener's own address), then — for a
        // use_original_dst listener — any virtual listener for a redirected destination.
        // Whose chains were being chosen (for the log and the metric).
        let mut owner = slot.clone();
        let mut target = None;
        let mut chosen = Ok(None);
        if let (Some(c), Some(d)) = (chains, dst.or_else(|| tcp.local_addr().ok())) {
            chosen = chain_for(c, d, &tcp, &mut consumed, &mut inspected).await;
        }
        if let Ok(None) = chosen {
            if let Some(d) = dst.filter(|_| app.original_dst) {
                if let Some(listener) = virtual_for(&v.global, d) {
                    // A virtual listener's own filter chains, on the same destination.
                    if let Some(c) = v.chains.get(listener.name.as_str()) {
                        chosen = chain_for(c, d, &tcp, &mut consumed, &mut inspected).await;
                        owner = listener.clone();
                    }
                    target = Some(listener);
                }
            }
        }
        match chosen {
            Ok(Some(chain)) => target = Some(chain),
            Ok(None) => {}
            Err(reason) => {
                tracing::debug!(listener = %owner.name, %peer, reason,
                    "connection closed while waiting for its ClientHello");
                if reason != "closed" {
                    v.refused
                        .get_or_create(&vec![
                            ("listener".to_owned(), owner.name.clone()),
                            ("reason".to_owned(), reason.to_owned()),
                        ])
                        .inc();
                }
                return;
            }
        }
        if let Some(target) = target {
            tracing::trace!(from = %slot.name, to = %target.name, ?dst, "original destination");
            slot = target;
            app = slot.app.load_full();
        }
    }
    drop(v);
    slot.accepted.inc();
    slot.open.inc();
    let _open = Open(slot.open.clone());
    // As Pingora's listener does: no Nagle delay, and the peer address recorded for the
    // access log, load balancing by client and the TCP proxy's hash key.
    let _ = tcp.set_nodelay(true);
    let mut l4: L4Stream = tcp.into();
    if !consumed.is_empty() {
        // The chain reads the ClientHello as the client sent it.
        l4.rewind(&consumed);
    }
    let digest = SocketDigest::from_raw_fd(l4.as_raw_fd());
    let _ = digest.peer_addr.set(Some(peer.into()));
    l4.set_socket_digest(digest);
    let stream: Stream = Box::new(l4);
    let shutdown = app.drain.subscribe();
    let mut close = app.close.subscribe();
    tokio::select! {
        _ = app.serve(stream, &shutdown) => {}
        _ = close.wait_for(|closed| *closed) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuseport_sockets_share_one_port_and_a_plain_holder_is_a_conflict() {
        let sockets = bind_reuseport("127.0.0.1:0".parse().expect("addr"), 3, true)
            .expect("three sockets on one port");
        let ports: HashSet<u16> = sockets
            .iter()
            .map(|s| s.local_addr().expect("addr").port())
            .collect();
        assert_eq!(ports.len(), 1, "{ports:?}");
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let err = bind_reuseport(addr, 2, true).expect_err("the address is held");
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    }

    #[test]
    fn original_destinations_match_exact_addresses_before_wildcards() {
        let yaml = "listeners:\n  - name: l\n    address: 127.0.0.1:1\n";
        let config = crate::config::parse(yaml).expect("config");
        let update = crate::snapshot::UpdateSource::yaml("test", yaml);
        let (first, _) = Snapshot::build(config, &Metrics::new(), None, &update).expect("build");
        let snapshot = Arc::new(ArcSwap::from_pointee(first));
        let slot = |name: &str| {
            let (drain, close) = (watch::channel(false).0, watch::channel(false).0);
            Arc::new(Slot {
                name: name.to_owned(),
                app: ArcSwap::from_pointee(ListenerApp {
                    serve: Serve::Tcp(Arc::new(TcpProxy {
                        listener: ListenerRef::new(name),
                        snapshot: snapshot.clone(),
                    })),
                    original_dst: false,
                    drain,
                    close,
                }),
                accepted: Counter::default(),
                open: Gauge::default(),
            })
        };
        let mut v = ByAddress::new();
        v.insert("0.0.0.0:80".parse().expect("addr"), slot("any-80"));
        v.insert("10.0.0.5:80".parse().expect("addr"), slot("pod-80"));
        let name = |dst: &str| virtual_for(&v, dst.parse().expect("addr")).map(|s| s.name.clone());
        assert_eq!(name("10.0.0.5:80").as_deref(), Some("pod-80"));
        assert_eq!(name("10.0.0.6:80").as_deref(), Some("any-80"));
        assert_eq!(name("10.0.0.5:81"), None);
        assert_eq!(name("[::1]:80"), None);
    }
}
