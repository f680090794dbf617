//! The one immutable view of config the data plane reads.
//!
//! A [`Snapshot`] is built from a validated [`Config`] (components instantiated, filter chains
//! assembled) and published through an `ArcSwap`; each request loads the current one once and
//! keeps it to the end, so a swap never changes a request midway and removed components finish
//! their in-flight calls (they are `Arc`s).

use std::sync::Arc;

use mecha_capabilities::Registry;
use mecha_filters::router::{Router, RouterFilter};
use mecha_filters::{CapabilityFilter, FilterChain, GrpcApi, HttpFilter};

use crate::config::{build_context, Config, FilterConfig};
use crate::metrics::Metrics;

pub struct Snapshot {
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
    pub clusters: mecha_mesh::Clusters,
    /// One chain per listener, in `config.listeners` order.
    pub chains: Vec<FilterChain>,
    /// Per listener: the capability filter when it is the whole chain (served by the lean
    /// listener, without the proxy phases).
    pub lean: Vec<Option<Arc<CapabilityFilter>>>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("listeners", &self.config.listeners.len())
            .field("chains", &self.chains)
            .field("registry", &self.registry)
            .finish()
    }
}

impl Snapshot {
    /// Instantiates components, clusters and filter chains; returns every problem with its path.
    pub fn build(config: Config, metrics: &Metrics) -> Result<Self, Vec<String>> {
        let registry = Arc::new(Registry::build(
            &config.components,
            &build_context(&config),
        )?);
        let clusters = mecha_mesh::build_clusters(&config.clusters, &metrics.mesh)?;
        let mut chains = Vec::with_capacity(config.listeners.len());
        let mut lean = Vec::with_capacity(config.listeners.len());
        for (i, listener) in config.listeners.iter().enumerate() {
            let mut filters: Vec<Arc<dyn HttpFilter>> = Vec::new();
            let mut lean_filter = None;
            for (j, f) in listener.filters.iter().enumerate() {
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
                                ));
                            }
                        }
                        let cap = Arc::new(CapabilityFilter::new(
                            grpc,
                            mecha_filters::capability::CapabilityOptions {
                                max_request_message: *max_request_message_bytes,
                                api_token: crate::config::resolve_api_token(api_token.as_ref()),
                                request_body_timeout: listener.request_body_timeout.0,
                            },
                        ));
                        if listener.filters.len() == 1 {
                            lean_filter = Some(cap.clone());
                        }
                        filters.push(cap);
                    }
                    FilterConfig::Router(rc) => {
                        let table = mecha_mesh::RouteTable::build(
                            &format!("listeners[{i}].filters[{j}]"),
                            rc,
                            &|c| clusters.contains_key(c),
                        )?;
                        let router =
                            Router::new(table, clusters.clone(), &metrics.mesh, rc.access_log);
                        filters.push(Arc::new(RouterFilter(Arc::new(router))));
                    }
                }
            }
            chains.push(FilterChain::new(filters));
            lean.push(lean_filter);
        }
        Ok(Self {
            config: Arc::new(config),
            registry,
            clusters,
            chains,
            lean,
        })
    }
}
