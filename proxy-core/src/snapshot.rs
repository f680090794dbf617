//! The one immutable view of config the data plane reads, built as a set of named resources.
//!
//! A [`Snapshot`] holds the resources of one config version — listeners (their filter
//! chains), route tables (one per router filter), clusters (with their endpoints) and
//! components — each with its own version (the config version in which it last changed).
//! [`Snapshot::build`] makes the next Snapshot from a config *and the running one*: unchanged
//! resources are carried over as the same objects (a component keeps its data, connections and
//! subscriptions; a cluster its health, outlier, breaker and pool state; a route table its
//! compiled form), changed ones are rebuilt, and route → cluster references are resolved into
//! the tables. Building does no network I/O and changes nothing that runs, so the same call
//! validates (`mecha validate`, a rejected reload) and serves. What an accepted update must do
//! to running objects — endpoint lists adopted in place, DNS names resolved before the new
//! clusters serve, replaced components retired, removed resources' metric series dropped — is
//! returned as an [`UpdatePlan`] that [`crate::resources`] carries out around publishing.
//!
//! Each request loads the current Snapshot once (ArcSwap) and keeps it to the end, so a swap
//! never changes a request midway, and objects a new Snapshot dropped finish their in-flight
//! work (they are `Arc`s).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use mecha_capabilities::invoke::ServiceInvoker;
use mecha_capabilities::registry::Block;
use mecha_capabilities::Registry;
use mecha_filters::router::{Router, RouterFilter};
use mecha_filters::{CapabilityFilter, FilterChain, GrpcApi, HttpFilter};
use mecha_mesh::config::{EndpointConfig, RetryPolicyConfig, RouterConfig};
use mecha_mesh::invoke::{AppTarget, DnsTemplate, InvokeSettings, MeshInvoker};
use mecha_mesh::retry::RetryPolicy;
use mecha_mesh::{Cluster, ClusterChange, Clusters};

use crate::config::{build_context, Config, FilterConfig, ListenerConfig};
use crate::metrics::Metrics;

/// The kinds of resource a Snapshot holds, as `/config_dump` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceKind {
    Listener,
    RouteConfig,
    Cluster,
    Component,
}

impl ResourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Listener => "listener",
            ResourceKind::RouteConfig => "route_config",
            ResourceKind::Cluster => "cluster",
            ResourceKind::Component => "component",
        }
    }
}

/// One resource's identity and version, for `/config_dump`.
#[derive(Debug, Clone)]
pub struct ResourceStatus {
    pub kind: ResourceKind,
    pub name: String,
    /// The config version in which this resource last changed.
    pub version: String,
    pub last_updated: SystemTime,
    /// What `/config_dump` shows as its content.
    pub content: Content,
}

/// What `/config_dump` shows of a resource.
#[derive(Debug, Clone)]
pub enum Content {
    /// Cut from the source's document: what the file said (secrets redacted). Shared with
    /// the next Snapshot while the resource is unchanged.
    Said(Arc<serde_json::Value>),
    /// The resource as the running config has it, serialized when a dump asks
    /// ([`Snapshot::content`]): a source without a text of its own (xDS) would otherwise
    /// serialize thousands of resources on every push, most of an update's cost.
    Typed,
}

/// Where an update comes from and what it says, as `/config_dump` reports it.
#[derive(Debug, Clone)]
pub struct UpdateSource {
    /// `file:<path>`, `embedded`, later `xds:<server>`.
    pub source: String,
    /// The config version: a hash of the file's text.
    pub version: String,
    /// The whole document as JSON (resource contents are cut from it); `None` for a source
    /// that has no text (xDS): contents are then the config model's ([`Content::Typed`]).
    pub document: Option<serde_json::Value>,
}

impl UpdateSource {
    /// For a YAML document read from `source`.
    pub fn yaml(source: &str, text: &str) -> Self {
        let document = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text)
            .ok()
            .and_then(|v| serde_json::to_value(v).ok())
            .or(Some(serde_json::Value::Null));
        Self {
            source: source.to_owned(),
            version: content_version(text),
            document,
        }
    }
}

/// A short, stable name for a config text (64-bit FNV-1a, hex). Hand-written: it is ten
/// lines, and std's hashers promise no stability across releases.
pub fn content_version(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The invoker of a config: every `apps` entry resolved to its cluster, with its timeout and
/// retry policy (the entry's, else `invocation`'s).
fn build_invoker(
    config: &Config,
    clusters: &Clusters,
    metrics: &Metrics,
    prev: Option<&Snapshot>,
) -> Result<MeshInvoker, Vec<String>> {
    let mut errors = Vec::new();
    let inv = &config.invocation;
    let default_retry =
        match RetryPolicy::build(inv.retry.as_ref().unwrap_or(&default_invocation_retry())) {
            Ok(p) => Some(Arc::new(p)),
            Err(e) => {
                errors.push(format!("invocation.retry.{e}"));
                None
            }
        };
    let mut apps = std::collections::BTreeMap::new();
    for (id, t) in &config.apps {
        let name = t
            .cluster
            .clone()
            .unwrap_or_else(|| crate::config::app_cluster_name(id));
        let Some(cluster) = clusters.get(&name) else {
            // Reported already when the cluster itself is broken or unknown.
            continue;
        };
        let app_retry = match &t.retry {
            Some(c) => match RetryPolicy::build(c) {
                Ok(p) => Some(Arc::new(p)),
                Err(e) => {
                    errors.push(format!("apps.{id}.retry.{e}"));
                    continue;
                }
            },
            None => default_retry.clone(),
        };
        apps.insert(
            id.clone(),
            AppTarget {
                cluster: cluster.clone(),
                timeout: t.timeout.map_or(inv.timeout.0, |d| d.0),
                retry: app_retry,
            },
        );
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let client = prev.map(|p| p.invoker.client().clone()).unwrap_or_default();
    let settings = InvokeSettings {
        caller: config.app.id.clone(),
        timeout: inv.timeout.0,
        retry: default_retry,
        max_body: inv.max_body_bytes,
        dns_template: inv.dns_template.as_ref().map(|t| DnsTemplate {
            template: t.clone(),
            namespace: inv.namespace.clone(),
            port: inv.port,
        }),
    };
    Ok(MeshInvoker::new(
        client,
        apps,
        settings,
        metrics.mesh.clone(),
        prev.map(|p| &*p.invoker),
    ))
}

/// By default an invocation is retried twice (25–250 ms apart) when it cannot have reached the
/// callee (`connect-failure`, e.g. its sidecar restarting) and, for idempotent verbs only, on
/// a reset.
fn default_invocation_retry() -> RetryPolicyConfig {
    RetryPolicyConfig {
        retry_on: vec!["connect-failure".to_owned(), "reset".to_owned()],
        num_retries: 2,
        retriable_status_codes: Vec::new(),
        base_interval: mecha_mesh::config::Dur(std::time::Duration::from_millis(25)),
        max_interval: mecha_mesh::config::Dur(std::time::Duration::from_millis(250)),
        retry_non_idempotent: false,
    }
}

/// One router filter's compiled table and the config it came from.
#[derive(Clone)]
struct RouteResource {
    config: Arc<RouterConfig>,
    router: Arc<Router>,
}

pub struct Snapshot {
    pub config: Arc<Config>,
    /// The config version this Snapshot serves.
    pub version: String,
    pub source: String,
    pub registry: Arc<Registry>,
    pub clusters: Clusters,
    /// One chain per listener, in `config.listeners` order.
    pub chains: Vec<FilterChain>,
    /// Per listener: the capability filter when it is the whole chain (served by the lean
    /// listener, without the proxy phases).
    pub lean: Vec<Option<Arc<CapabilityFilter>>>,
    /// Per listener: the cluster of a `tcp_proxy` listener, resolved.
    pub tcp: Vec<Option<Arc<Cluster>>>,
    /// Per listener: its route table, when it has a router.
    routes: Vec<Option<RouteResource>>,
    /// Every resource with its version, sorted by kind and name.
    pub resources: Vec<ResourceStatus>,
    /// Service invocation: `apps` resolved to clusters, over the process's mesh client.
    pub invoker: Arc<MeshInvoker>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.version)
            .field("listeners", &self.config.listeners.len())
            .field("chains", &self.chains)
            .field("registry", &self.registry)
            .finish()
    }
}

/// What publishing an accepted update must do to running objects (see the module doc).
#[derive(Default)]
pub struct UpdatePlan {
    /// Clusters kept as they are but given a new endpoint list.
    pub endpoint_updates: Vec<(Arc<Cluster>, Vec<EndpointConfig>)>,
    /// New or rebuilt clusters with DNS names: resolved before the Snapshot is published.
    pub warm: Vec<Arc<Cluster>>,
    pub removed_clusters: Vec<String>,
    /// Route metric labels no table has any more.
    pub removed_routes: Vec<String>,
    /// Resources added, changed, removed, kept (for the log).
    pub counts: [usize; 4],
}

impl std::fmt::Debug for UpdatePlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [added, changed, removed, kept] = self.counts;
        write!(
            f,
            "{added} added, {changed} changed, {removed} removed, {kept} unchanged"
        )
    }
}

impl Snapshot {
    /// Builds the Snapshot `config` describes, carrying over from `prev` (the running one)
    /// every resource that did not change. Does no network I/O and touches nothing in `prev`;
    /// returns every problem with its path.
    pub fn build(
        config: Config,
        metrics: &Metrics,
        prev: Option<&Snapshot>,
        source: &UpdateSource,
    ) -> Result<(Self, UpdatePlan), Vec<String>> {
        let mut errors = Vec::new();
        let registry = Registry::update(
            prev.map(|p| &*p.registry),
            &config.components,
            &build_context(&config),
        )
        .map_err(|e| errors.extend(e))
        .ok()
        .map(Arc::new);
        let cluster_plan =
            mecha_mesh::plan_clusters(&config.clusters, &metrics.mesh, prev.map(|p| &p.clusters))
                .map_err(|e| errors.extend(e))
                .ok();
        // Route tables resolve clusters by name; without a valid cluster set, check them
        // against names only (the cluster errors are reported already).
        let clusters = cluster_plan
            .as_ref()
            .map(|p| p.clusters.clone())
            .unwrap_or_default();
        let broken: std::collections::HashSet<&str> = if cluster_plan.is_none() {
            config.clusters.iter().map(|c| c.name.as_str()).collect()
        } else {
            Default::default()
        };
        let stand_in = if broken.is_empty() {
            None
        } else {
            stand_in_cluster(metrics)
        };

        let mut routes = Vec::with_capacity(config.listeners.len());
        let mut tcp = Vec::with_capacity(config.listeners.len());
        for (i, listener) in config.listeners.iter().enumerate() {
            tcp.push(
                listener
                    .tcp_proxy
                    .as_ref()
                    .and_then(|t| clusters.get(&t.cluster).cloned()),
            );
            let mut route = None;
            for (j, f) in listener.filters.iter().enumerate() {
                let FilterConfig::Router(rc) = f else {
                    continue;
                };
                let old = prev
                    .and_then(|p| p.route_for(&listener.name))
                    .filter(|old| *old.config == *rc && refs_unchanged(&old.router, &clusters));
                if let Some(old) = old {
                    route = Some(old.clone());
                    continue;
                }
                let resolve = |name: &str| match clusters.get(name) {
                    Some(c) => Some(c.clone()),
                    None if broken.contains(name) => stand_in.clone(),
                    None => None,
                };
                match mecha_mesh::RouteTable::build(
                    &format!("listeners[{i}].filters[{j}]"),
                    rc,
                    &resolve,
                ) {
                    Ok(table) => {
                        let router = Router::new(table, &metrics.mesh, rc.access_log);
                        route = Some(RouteResource {
                            config: Arc::new(rc.clone()),
                            router: Arc::new(router),
                        });
                    }
                    Err(e) => errors.extend(e),
                }
            }
            routes.push(route);
        }
        let invoker = build_invoker(&config, &clusters, metrics, prev)
            .map_err(|e| errors.extend(e))
            .ok()
            .map(Arc::new);
        let (Some(registry), Some(cluster_plan), Some(invoker), true) =
            (registry, cluster_plan, invoker, errors.is_empty())
        else {
            return Err(errors);
        };
        let dyn_invoker: Arc<dyn ServiceInvoker> = invoker.clone();

        let mut chains = Vec::with_capacity(config.listeners.len());
        let mut lean = Vec::with_capacity(config.listeners.len());
        for (listener, route) in config.listeners.iter().zip(&routes) {
            let mut filters: Vec<Arc<dyn HttpFilter>> = Vec::new();
            let mut lean_filter = None;
            for f in &listener.filters {
                match f {
                    FilterConfig::Capability {
                        apis,
                        max_request_message_bytes,
                        api_token,
                        ..
                    } => {
                        let mut grpc: Vec<GrpcApi> = Vec::new();
                        for api in apis {
                            if api == "layotto" {
                                grpc.push(mecha_filters::capability::layotto_api(
                                    registry.clone(),
                                    &config.app.id,
                                    *max_request_message_bytes,
                                    metrics.layotto.clone(),
                                    Some(dyn_invoker.clone()),
                                ));
                            }
                        }
                        let cap = Arc::new(
                            CapabilityFilter::new(
                                grpc,
                                mecha_filters::capability::CapabilityOptions {
                                    max_request_message: *max_request_message_bytes,
                                    api_token: crate::config::resolve_api_token(api_token.as_ref()),
                                    request_body_timeout: listener.request_body_timeout.0,
                                },
                            )
                            .with_invoker(Some(dyn_invoker.clone())),
                        );
                        if listener.filters.len() == 1 {
                            lean_filter = Some(cap.clone());
                        }
                        filters.push(cap);
                    }
                    FilterConfig::Router(_) | FilterConfig::Inbound { .. } => {
                        if let Some(r) = route {
                            filters.push(Arc::new(RouterFilter(r.router.clone())));
                        }
                    }
                }
            }
            chains.push(FilterChain::new(filters));
            lean.push(lean_filter);
        }

        let now = SystemTime::now();
        let mut plan = UpdatePlan::default();
        let mut resources = Vec::new();
        // Indexes, so an update of thousands of resources stays linear.
        let prev_index: HashMap<(ResourceKind, &str), &ResourceStatus> = prev
            .map(|p| {
                p.resources
                    .iter()
                    .map(|r| ((r.kind, r.name.as_str()), r))
                    .collect()
            })
            .unwrap_or_default();
        let changes: HashMap<&str, &ClusterChange> = cluster_plan
            .changes
            .iter()
            .map(|(n, c)| (n.as_str(), c))
            .collect();
        // `fresh`: whether its content must be cut from this document again (a resource
        // unchanged in what it shows keeps the previous Snapshot's).
        let mut status = |kind: ResourceKind,
                          name: &str,
                          changed: bool,
                          fresh: bool,
                          content: &dyn Fn() -> serde_json::Value| {
            let old = prev_index.get(&(kind, name)).copied();
            let (version, last_updated) = match old {
                Some(o) if !changed => (o.version.clone(), o.last_updated),
                _ => (source.version.clone(), now),
            };
            let content = match (old, &source.document) {
                (_, None) => Content::Typed,
                (Some(o), Some(_)) if !fresh => o.content.clone(),
                (_, Some(_)) => Content::Said(Arc::new(content())),
            };
            plan.counts[match (old, changed) {
                (None, _) => 0,
                (Some(_), true) => 1,
                (Some(_), false) => 3,
            }] += 1;
            resources.push(ResourceStatus {
                kind,
                name: name.to_owned(),
                version,
                last_updated,
                content,
            });
        };
        for (i, l) in config.listeners.iter().enumerate() {
            // Its route table is a resource of its own: a route edit changes that one (but the
            // listener's content, which shows its routes, is cut again).
            let old = prev.and_then(|p| p.listener(&l.name));
            let same = old == Some(l);
            // Cloning without the routes only when something differs: a listener holds
            // thousands of routes, and most updates change neither.
            let changed = !same && old.map(without_routes) != Some(without_routes(l));
            status(ResourceKind::Listener, &l.name, changed, !same, &|| {
                section(&source.document, "listeners", i)
            });
        }
        for (i, (l, route)) in config.listeners.iter().zip(&routes).enumerate() {
            if let Some(r) = route {
                let changed = prev
                    .and_then(|p| p.route_for(&l.name))
                    .is_none_or(|old| !Arc::ptr_eq(&old.router, &r.router));
                let same = prev.and_then(|p| p.listener(&l.name)) == Some(l);
                status(ResourceKind::RouteConfig, &l.name, changed, !same, &|| {
                    section(&source.document, "listeners", i)
                        .get("filters")
                        .and_then(|f| f.as_array())
                        .and_then(|f| f.last().cloned())
                        .unwrap_or_default()
                });
            }
        }
        for (i, c) in config.clusters.iter().enumerate() {
            let change = changes.get(c.name.as_str()).map(|ch| (*ch).clone());
            let changed = change != Some(ClusterChange::Kept);
            status(ResourceKind::Cluster, &c.name, changed, changed, &|| {
                section(&source.document, "clusters", i)
            });
            let Some(cluster) = cluster_plan.clusters.get(&c.name) else {
                continue;
            };
            match change {
                Some(ClusterChange::Endpoints(list)) => {
                    plan.endpoint_updates.push((cluster.clone(), list));
                }
                Some(ClusterChange::Added | ClusterChange::Rebuilt) if cluster.has_dns_names() => {
                    plan.warm.push(cluster.clone());
                }
                _ => {}
            }
        }
        for (i, c) in config.components.iter().enumerate() {
            let block = mecha_capabilities::registry::block_of(&c.kind);
            let carried = block.is_some_and(|b| carried_over(prev, &registry, b, &c.name));
            let name = component_name(c.kind.as_str(), &c.name);
            status(ResourceKind::Component, &name, !carried, !carried, &|| {
                section(&source.document, "components", i)
            });
        }
        if let Some(p) = prev {
            // Every resource that existed before and still does was counted changed or kept.
            plan.counts[2] = p
                .resources
                .len()
                .saturating_sub(plan.counts[1] + plan.counts[3]);
            plan.removed_clusters = cluster_plan.removed.clone();
            // Only the route tables that were replaced can have lost routes (a carried-over
            // table is the same `Router`).
            let replaced: Vec<&Router> = p
                .routes
                .iter()
                .flatten()
                .filter(|old| {
                    !routes
                        .iter()
                        .flatten()
                        .any(|r| Arc::ptr_eq(&r.router, &old.router))
                })
                .map(|old| &*old.router)
                .collect();
            if !replaced.is_empty() {
                let live: std::collections::HashSet<&str> = routes
                    .iter()
                    .flatten()
                    .flat_map(|r| r.router.route_labels())
                    .collect();
                let mut removed: Vec<String> = replaced
                    .iter()
                    .flat_map(|r| r.route_labels())
                    .filter(|l| !live.contains(l))
                    .map(str::to_owned)
                    .collect();
                removed.sort();
                removed.dedup();
                plan.removed_routes = removed;
            }
        }
        resources.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));

        Ok((
            Self {
                config: Arc::new(config),
                version: source.version.clone(),
                source: source.source.clone(),
                registry,
                clusters: cluster_plan.clusters,
                chains,
                lean,
                tcp,
                routes,
                resources,
                invoker,
            },
            plan,
        ))
    }

    /// Which clusters of `next` differ from this Snapshot's config in their endpoint lists
    /// only, when nothing else differs (what an EDS push or an endpoint edit does): their
    /// indexes in `next.clusters`, for [`Snapshot::with_endpoints`]. `None` when anything
    /// else changes, or nothing does: the update is built in full.
    pub fn endpoint_changes(&self, next: &Config) -> Option<Vec<usize>> {
        // Destructured without `..`: a field added to Config must be decided on here.
        let Config {
            threads,
            app,
            admin,
            shutdown,
            listeners,
            components,
            clusters,
            apps,
            invocation,
            xds,
        } = next;
        let cur = &*self.config;
        let same = *threads == cur.threads
            && *app == cur.app
            && *admin == cur.admin
            && *shutdown == cur.shutdown
            && *components == cur.components
            && *apps == cur.apps
            && *invocation == cur.invocation
            && *xds == cur.xds
            && clusters.len() == cur.clusters.len()
            && *listeners == cur.listeners;
        if !same {
            return None;
        }
        let mut changed = Vec::new();
        for (i, (old, new)) in cur.clusters.iter().zip(clusters).enumerate() {
            if old == new {
                continue;
            }
            let running = self.clusters.get(&new.name)?;
            if old.name != new.name || !running.differs_in_endpoints_only(new) {
                return None;
            }
            changed.push(i);
        }
        (!changed.is_empty()).then_some(changed)
    }

    /// The next Snapshot for an update [`Snapshot::endpoint_changes`] found to change only the
    /// endpoint lists of the clusters at `changed`: everything else is carried over as it is
    /// (the same clusters, route tables, filters, components), and the plan adopts the new
    /// lists in place, as [`Snapshot::build`] would plan them, without rebuilding the rest.
    /// At thousands of clusters this is what keeps an endpoint push cheap. The lists are
    /// checked as `build` checks them.
    pub fn with_endpoints(
        &self,
        next: Config,
        changed: &[usize],
        source: &UpdateSource,
    ) -> Result<(Self, UpdatePlan), Vec<String>> {
        let mut errors = Vec::new();
        let mut plan = UpdatePlan::default();
        let now = SystemTime::now();
        let mut resources = self.resources.clone();
        for &i in changed {
            let Some(c) = next.clusters.get(i) else {
                continue;
            };
            let errs = mecha_mesh::check_adopted_endpoints(c);
            if !errs.is_empty() {
                errors.extend(errs.into_iter().map(|e| format!("clusters[{i}].{e}")));
                continue;
            }
            let Some(cluster) = self.clusters.get(&c.name) else {
                errors.push(format!("clusters[{i}]: {:?} is not running", c.name));
                continue;
            };
            plan.endpoint_updates
                .push((cluster.clone(), c.endpoints.clone()));
            let key = (ResourceKind::Cluster, c.name.as_str());
            if let Ok(at) = resources.binary_search_by(|r| (r.kind, r.name.as_str()).cmp(&key)) {
                let r = &mut resources[at];
                r.version = source.version.clone();
                r.last_updated = now;
                r.content = match &source.document {
                    None => Content::Typed,
                    Some(_) => Content::Said(Arc::new(section(&source.document, "clusters", i))),
                };
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        plan.counts = [
            0,
            changed.len(),
            0,
            self.resources.len().saturating_sub(changed.len()),
        ];
        Ok((
            Self {
                config: Arc::new(next),
                version: source.version.clone(),
                source: source.source.clone(),
                registry: self.registry.clone(),
                clusters: self.clusters.clone(),
                chains: self.chains.clone(),
                lean: self.lean.clone(),
                tcp: self.tcp.clone(),
                routes: self.routes.clone(),
                resources,
                invoker: self.invoker.clone(),
            },
            plan,
        ))
    }

    fn listener(&self, name: &str) -> Option<&ListenerConfig> {
        self.config.listeners.iter().find(|l| l.name == name)
    }

    fn route_for(&self, listener: &str) -> Option<&RouteResource> {
        let i = self
            .config
            .listeners
            .iter()
            .position(|l| l.name == listener)?;
        self.routes.get(i)?.as_ref()
    }

    /// What `/config_dump` shows as `r`'s content (secrets redacted).
    pub fn content(&self, r: &ResourceStatus) -> serde_json::Value {
        let said = match &r.content {
            Content::Said(v) => return (**v).clone(),
            Content::Typed => match r.kind {
                ResourceKind::Listener => self.listener(&r.name).map(serde_json::to_value),
                ResourceKind::RouteConfig => self
                    .listener(&r.name)
                    .and_then(|l| {
                        l.filters
                            .iter()
                            .rfind(|f| matches!(f, FilterConfig::Router(_)))
                    })
                    .map(serde_json::to_value),
                ResourceKind::Cluster => self
                    .config
                    .clusters
                    .iter()
                    .find(|c| c.name == r.name)
                    .map(serde_json::to_value),
                ResourceKind::Component => self
                    .config
                    .components
                    .iter()
                    .find(|c| component_name(c.kind.as_str(), &c.name) == r.name)
                    .map(serde_json::to_value),
            },
        };
        let mut v = said.and_then(Result::ok).unwrap_or_default();
        redact(&mut v);
        v
    }

    pub fn resource(&self, kind: ResourceKind, name: &str) -> Option<&ResourceStatus> {
        self.resources
            .iter()
            .find(|r| r.kind == kind && r.name == name)
    }
}

/// How a listener's serving code finds its own entries in whichever Snapshot a request loads:
/// by name (indexes shift when an update adds or removes listeners), with the last index it
/// was found at tried first, so the usual lookup is one string compare.
///
/// It also remembers the last Snapshot that had the listener: a connection of a removed
/// listener, draining, finishes on the config it was accepted under (as Envoy's draining
/// listeners do) instead of finding nothing. That Snapshot stays alive until the listener's
/// app is dropped (its connections closed) or traffic meets a newer one.
#[derive(Debug)]
pub struct ListenerRef {
    pub name: String,
    hint: std::sync::atomic::AtomicUsize,
    last: arc_swap::ArcSwapOption<Snapshot>,
}

impl ListenerRef {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            hint: std::sync::atomic::AtomicUsize::new(0),
            last: arc_swap::ArcSwapOption::empty(),
        }
    }

    /// A reference that starts out knowing `snap` (the Snapshot its listener was built for).
    pub fn with_snapshot(name: &str, snap: Arc<Snapshot>) -> Self {
        let r = Self::new(name);
        r.last.store(Some(snap));
        r
    }

    /// This listener's index in `snap` — or, when `snap` no longer has it (removed while
    /// this connection drains), in the last Snapshot that had it, which then replaces
    /// `snap`. `None` only when no Snapshot seen had it.
    pub fn resolve(&self, snap: &mut Arc<Snapshot>) -> Option<usize> {
        if let Some(i) = self.index(snap) {
            // One pointer compare per request; a store only after an update.
            let last = self.last.load();
            if !last.as_ref().is_some_and(|l| Arc::ptr_eq(l, snap)) {
                self.last.store(Some(snap.clone()));
            }
            return Some(i);
        }
        let last = self.last.load_full()?;
        let i = self.index(&last)?;
        *snap = last;
        Some(i)
    }

    /// This listener's index in `snap`, or `None` when `snap` no longer has it (a request
    /// that raced the listener's removal).
    pub fn index(&self, snap: &Snapshot) -> Option<usize> {
        use std::sync::atomic::Ordering::Relaxed;
        let listeners = &snap.config.listeners;
        let hint = self.hint.load(Relaxed);
        if listeners.get(hint).is_some_and(|l| l.name == self.name) {
            return Some(hint);
        }
        let found = listeners.iter().position(|l| l.name == self.name)?;
        self.hint.store(found, Relaxed);
        Some(found)
    }
}

/// A listener's config without its routes (they are the route table resource).
fn without_routes(l: &ListenerConfig) -> ListenerConfig {
    let mut l = l.clone();
    for f in &mut l.filters {
        if let FilterConfig::Router(rc) = f {
            rc.virtual_hosts.clear();
        }
    }
    l
}

/// Components are named per building block (`state/statestore`): two blocks may use one name.
fn component_name(kind: &str, name: &str) -> String {
    let block = mecha_capabilities::registry::block_of(kind).map_or("unknown", Block::as_str);
    format!("{block}/{name}")
}

/// Whether `registry` holds the same component instance as `prev`'s registry.
fn carried_over(prev: Option<&Snapshot>, registry: &Registry, block: Block, name: &str) -> bool {
    let Some(old) = prev.and_then(|p| p.registry.find(block, name)) else {
        return false;
    };
    registry
        .find(block, name)
        .is_some_and(|n| Arc::ptr_eq(&n.lifecycle, &old.lifecycle))
}

/// Whether every cluster a route table sends to is still the same object.
fn refs_unchanged(router: &Router, clusters: &Clusters) -> bool {
    router
        .clusters()
        .all(|c| clusters.get(&c.name).is_some_and(|n| Arc::ptr_eq(n, c)))
}

/// Stands in for a cluster whose own config failed, so route tables naming it are still
/// checked (and report only their own errors). Never served.
fn stand_in_cluster(metrics: &Metrics) -> Option<Arc<Cluster>> {
    let cfg: mecha_mesh::config::ClusterConfig = serde_json::from_value(serde_json::json!({
        "name": "(invalid cluster)",
        "endpoints": [{ "address": "127.0.0.1:9" }],
    }))
    .ok()?;
    Cluster::build(&cfg, &metrics.throwaway_mesh)
        .ok()
        .map(Arc::new)
}

/// `document[key][i]`, secrets redacted.
fn section(document: &Option<serde_json::Value>, key: &str, i: usize) -> serde_json::Value {
    let mut v = document
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(|l| l.get(i))
        .cloned()
        .unwrap_or_default();
    redact(&mut v);
    v
}

/// Replaces the values of secret-looking keys (passwords, tokens, keys) with a marker.
fn redact(v: &mut serde_json::Value) {
    const SECRET: &[&str] = &[
        "password",
        "token",
        "credential",
        "apikey",
        "api_key",
        "accesskey",
        "secretkey",
    ];
    match v {
        serde_json::Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                let lower = k.to_ascii_lowercase();
                if SECRET.iter().any(|s| lower.contains(s)) && !val.is_object() {
                    *val = serde_json::Value::String("[redacted]".to_owned());
                } else {
                    redact(val);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_dump_contents_redact_secret_looking_values() {
        let source = UpdateSource::yaml(
            "test",
            "components:\n  - name: s\n    type: state.redis\n    metadata: { redisHost: h:1, \
             redisPassword: hunter2, accessKey: k1 }\n\
             listeners:\n  - name: l\n    filters: [{ type: capability, api_token: t0k }]\n",
        );
        let component = section(&source.document, "components", 0);
        assert_eq!(component["metadata"]["redisPassword"], "[redacted]");
        assert_eq!(component["metadata"]["accessKey"], "[redacted]");
        assert_eq!(component["metadata"]["redisHost"], "h:1");
        let listener = section(&source.document, "listeners", 0);
        assert_eq!(listener["filters"][0]["api_token"], "[redacted]");
        assert!(!listener.to_string().contains("t0k"));
    }

    fn endpoints_text(a: &str, b_ep: &str, b_policy: &str) -> String {
        format!(
            "listeners:\n  - name: out\n    address: 127.0.0.1:0\n    filters:\n      - type: router\n        \
             virtual_hosts:\n          - name: all\n            domains: [\"*\"]\n            routes:\n              \
             - {{ match: {{ prefix: /a }}, cluster: a }}\n              - {{ match: {{ prefix: / }}, cluster: b }}\n\
             clusters:\n  - name: a\n    endpoints: [{{ address: \"{a}\" }}]\n  - name: b\n    \
             lb_policy: {b_policy}\n    endpoints: [{{ address: \"{b_ep}\" }}]\n"
        )
    }

    fn snapshot_of(
        text: &str,
        metrics: &Metrics,
        prev: Option<&Snapshot>,
    ) -> (Snapshot, UpdatePlan) {
        let cfg = crate::config::parse(text).expect("parses");
        Snapshot::build(cfg, metrics, prev, &UpdateSource::yaml("test", text)).expect("builds")
    }

    /// The shortcut for endpoint-only updates must give what a full build gives: the same
    /// config, resource versions, counts and endpoint adoptions, with every other resource
    /// carried over; and it must not be taken for any other change.
    #[test]
    fn an_endpoint_only_update_equals_a_full_build() {
        let metrics = Metrics::new();
        let first_text = endpoints_text("127.0.0.1:9001", "127.0.0.1:9002", "round_robin");
        let (first, _) = snapshot_of(&first_text, &metrics, None);

        let next_text = endpoints_text("127.0.0.1:9001", "127.0.0.1:9003", "round_robin");
        let next = crate::config::parse(&next_text).expect("parses");
        let source = UpdateSource::yaml("test", &next_text);
        let changed = first
            .endpoint_changes(&next)
            .expect("an endpoint-only change");
        assert_eq!(changed, [1]);
        let (fast, fast_plan) = first
            .with_endpoints(next.clone(), &changed, &source)
            .expect("applies");
        let (full, full_plan) =
            Snapshot::build(next, &metrics, Some(&first), &source).expect("builds");

        assert_eq!(*fast.config, *full.config);
        assert_eq!(fast.version, full.version);
        let statuses = |s: &Snapshot| -> Vec<(ResourceKind, String, String)> {
            s.resources
                .iter()
                .map(|r| (r.kind, r.name.clone(), r.version.clone()))
                .collect()
        };
        assert_eq!(statuses(&fast), statuses(&full));
        assert_eq!(fast_plan.counts, full_plan.counts);
        let adoptions = |p: &UpdatePlan| -> Vec<(String, Vec<EndpointConfig>)> {
            p.endpoint_updates
                .iter()
                .map(|(c, l)| (c.name.clone(), l.clone()))
                .collect()
        };
        assert_eq!(adoptions(&fast_plan), adoptions(&full_plan));
        assert!(fast_plan.warm.is_empty() && full_plan.warm.is_empty());
        for s in [&fast, &full] {
            let (a, b) = (&first.routes[0], &s.routes[0]);
            let same = matches!((a, b), (Some(a), Some(b)) if Arc::ptr_eq(&a.router, &b.router));
            assert!(same, "the route table is carried over");
            assert!(Arc::ptr_eq(&first.clusters["b"], &s.clusters["b"]));
        }
        // The changed cluster shows its new content in /config_dump.
        let b = fast
            .resources
            .iter()
            .find(|r| r.kind == ResourceKind::Cluster && r.name == "b")
            .expect("cluster b");
        assert!(fast.content(b).to_string().contains("127.0.0.1:9003"));

        // Anything else is built in full: another field of a cluster, a listener, nothing.
        let policy = endpoints_text("127.0.0.1:9001", "127.0.0.1:9003", "random");
        let policy = crate::config::parse(&policy).expect("parses");
        assert_eq!(first.endpoint_changes(&policy), None);
        let mut listener = crate::config::parse(&next_text).expect("parses");
        listener.listeners[0].name = "renamed".to_owned();
        assert_eq!(first.endpoint_changes(&listener), None);
        let same = crate::config::parse(&first_text).expect("parses");
        assert_eq!(first.endpoint_changes(&same), None);
        // A bad list is refused naming the cluster, as a build refuses it.
        let bad_text = endpoints_text("127.0.0.1:9001", "127.0.0.1:99999", "round_robin");
        let bad = crate::config::parse(&bad_text).expect("parses");
        let changed = first
            .endpoint_changes(&bad)
            .expect("an endpoint-only change");
        let errors = first
            .with_endpoints(bad, &changed, &UpdateSource::yaml("test", &bad_text))
            .map(|_| ())
            .expect_err("refused");
        assert!(
            errors.iter().any(|e| e.starts_with("clusters[1].")),
            "{errors:?}"
        );
    }

    #[test]
    fn content_versions_are_stable_and_tell_texts_apart() {
        assert_eq!(content_version("a: 1\n"), content_version("a: 1\n"));
        assert_ne!(content_version("a: 1\n"), content_version("a: 2\n"));
        assert_eq!(content_version(""), "cbf29ce484222325");
    }
}
