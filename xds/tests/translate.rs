//! Translation of Envoy v3 resources onto Mecha's config model, checked on the resulting
//! config pieces and by building the merged config as a file config is built.

// Control planes still send deprecated fields (Istio: `exact_match`, `append`); the tests
// build them to check how they translate.
#![allow(deprecated)]

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers::Thresholds, cluster, CircuitBreakers, Cluster, OutlierDetection,
};
use envoy_types::pb::envoy::config::core::v3::{
    address, config_source, health_check, socket_address, Address, AggregatedConfigSource,
    ConfigSource, HeaderValue, HeaderValueOption, HealthCheck, HealthStatus, Http2ProtocolOptions,
    SocketAddress, TransportSocket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{
    filter, Filter, FilterChain, FilterChainMatch, Listener,
};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher, redirect_action, retry_policy::RetryBackOff, route, route_action, route_match,
    weighted_cluster::ClusterWeight, DirectResponseAction, HeaderMatcher, QueryParameterMatcher,
    RedirectAction, RetryPolicy, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
    WeightedCluster,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options::{explicit_http_config, ExplicitHttpConfig, UpstreamProtocolOptions},
    HttpProtocolOptions,
};
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration, Struct, UInt32Value};
use mecha_mesh::config::{HealthCheckKind, LbPolicy, UpstreamProtocol};
use mecha_proto::config::v1::Component;
use mecha_proxy_core::config::{
    ChainMatch, Config, FilterConfig, ListenerConfig, TransportProtocol,
};
use mecha_xds::resources::{ResourceError, XdsResources};
use mecha_xds::translate::{merge, translate, Translated, Translator};
use prost::{Message, Name};

// === builders ===

fn any<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

/// `udpa.type.v1.TypedStruct`, as istiod sends it.
#[derive(Clone, PartialEq, Message)]
struct TypedStruct {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(message, optional, tag = "2")]
    value: Option<Struct>,
}

fn typed_struct(outer: &str, inner: &str) -> Any {
    Any {
        type_url: format!("type.googleapis.com/{outer}"),
        value: TypedStruct {
            type_url: format!("type.googleapis.com/{inner}"),
            value: Some(Struct::default()),
        }
        .encode_to_vec(),
    }
}

fn raw_any(type_name: &str) -> Any {
    Any {
        type_url: format!("type.googleapis.com/{type_name}"),
        value: Vec::new(),
    }
}

fn sock(ip: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_owned(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

fn secs(s: i64) -> Option<Duration> {
    Some(Duration {
        seconds: s,
        nanos: 0,
    })
}

fn millis(ms: i32) -> Option<Duration> {
    Some(Duration {
        seconds: 0,
        nanos: ms * 1_000_000,
    })
}

fn u32v(v: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value: v })
}

fn http_filter(name: &str, cfg: Any) -> HttpFilter {
    HttpFilter {
        name: name.to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(cfg)),
        ..Default::default()
    }
}

fn router_filter() -> HttpFilter {
    http_filter("envoy.filters.http.router", any(&Router::default()))
}

fn ads() -> Option<ConfigSource> {
    Some(ConfigSource {
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    })
}

fn hcm_rds(route_config: &str, http_filters: Vec<HttpFilter>) -> HttpConnectionManager {
    HttpConnectionManager {
        stat_prefix: "http".to_owned(),
        http_filters,
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: ads(),
            route_config_name: route_config.to_owned(),
        })),
        ..Default::default()
    }
}

fn network_filter(name: &str, cfg: Any) -> Filter {
    Filter {
        name: name.to_owned(),
        config_type: Some(filter::ConfigType::TypedConfig(cfg)),
    }
}

fn hcm_filter(h: &HttpConnectionManager) -> Filter {
    network_filter("envoy.filters.network.http_connection_manager", any(h))
}

fn listener(name: &str, port: u32, filters: Vec<Filter>) -> Listener {
    Listener {
        name: name.to_owned(),
        address: Some(sock("127.0.0.1", port)),
        filter_chains: vec![FilterChain {
            filters,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn route_to(prefix: &str, cluster: &str) -> Route {
    Route {
        name: format!("to-{cluster}"),
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix(prefix.to_owned())),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.to_owned())),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn route_config(name: &str, routes: Vec<Route>) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: "vh".to_owned(),
            domains: vec!["*".to_owned()],
            routes,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn lb_endpoint(ip: &str, port: u32, weight: Option<u32>, status: HealthStatus) -> LbEndpoint {
    LbEndpoint {
        health_status: status as i32,
        load_balancing_weight: weight.and_then(u32v),
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(sock(ip, port)),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn cla(name: &str, eps: Vec<LbEndpoint>) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name.to_owned(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: eps,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn static_cluster(name: &str, port: u32) -> Cluster {
    Cluster {
        name: name.to_owned(),
        connect_timeout: secs(2),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        load_assignment: Some(cla(
            name,
            vec![lb_endpoint("127.0.0.1", port, None, HealthStatus::Unknown)],
        )),
        ..Default::default()
    }
}

fn eds_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: ads(),
            service_name: String::new(),
        }),
        ..Default::default()
    }
}

fn set(
    listeners: Vec<Listener>,
    routes: Vec<RouteConfiguration>,
    clusters: Vec<Cluster>,
) -> XdsResources {
    XdsResources {
        listeners: listeners
            .into_iter()
            .map(|l| (l.name.clone(), Arc::new(l)))
            .collect(),
        routes: routes
            .into_iter()
            .map(|r| (r.name.clone(), Arc::new(r)))
            .collect(),
        clusters: clusters
            .into_iter()
            .map(|c| (c.name.clone(), Arc::new(c)))
            .collect(),
        endpoints: Default::default(),
        components: Default::default(),
    }
}

fn bootstrap() -> Config {
    mecha_proxy_core::config::parse("admin: { address: \"127.0.0.1:34999\" }\n")
        .expect("bootstrap parses")
}

/// Merges with the bootstrap, then validates and builds the config as `mecha validate` does
/// for a file.
fn merged(t: &Translated) -> Config {
    let cfg = merge(&bootstrap(), t.clone()).expect("merges");
    let errors = mecha_proxy_core::config::validate(&cfg);
    assert!(errors.is_empty(), "validate: {errors:?}");
    let metrics = mecha_proxy_core::metrics::Metrics::new();
    let source = mecha_proxy_core::snapshot::UpdateSource {
        source: "xds:test".to_owned(),
        version: "1".to_owned(),
        document: None,
    };
    if let Err(e) =
        mecha_proxy_core::snapshot::Snapshot::build(cfg.clone(), &metrics, None, &source)
    {
        panic!("builds: {e:?}");
    }
    cfg
}

fn errors_of(res: &XdsResources) -> Vec<String> {
    match translate(res) {
        Ok(t) => panic!("expected errors, got {t:?}"),
        Err(e) => e.iter().map(ResourceError::to_string).collect(),
    }
}

fn assert_error(res: &XdsResources, want: &str) {
    let errs = errors_of(res);
    assert!(
        errs.iter().any(|e| e.contains(want)),
        "{want:?} not in {errs:#?}"
    );
}

fn ok(res: &XdsResources) -> Translated {
    match translate(res) {
        Ok(t) => t,
        Err(e) => panic!("translation failed: {e:#?}"),
    }
}

fn router_of(l: &ListenerConfig) -> &mecha_mesh::config::RouterConfig {
    match l.filters.as_slice() {
        [FilterConfig::Router(r)] => r,
        other => panic!("expected one router filter, got {other:?}"),
    }
}

// === tests ===

#[test]
fn lds_rds_and_inline_route_configs_translate_and_build() {
    let inline = HttpConnectionManager {
        stat_prefix: "inline".to_owned(),
        http_filters: vec![router_filter()],
        route_specifier: Some(RouteSpecifier::RouteConfig(route_config(
            "inline",
            vec![route_to("/", "c2")],
        ))),
        ..Default::default()
    };
    let mut l1 = listener(
        "l1",
        18081,
        vec![hcm_filter(&hcm_rds("r1", vec![router_filter()]))],
    );
    l1.bind_to_port = Some(BoolValue { value: false });
    let mut l2 = listener("l2", 18082, vec![hcm_filter(&inline)]);
    l2.use_original_dst = Some(BoolValue { value: true });
    let res = set(
        vec![l1, l2],
        vec![route_config(
            "r1",
            vec![route_to("/api", "c1"), route_to("/", "c2")],
        )],
        vec![static_cluster("c1", 9001), static_cluster("c2", 9002)],
    );
    let t = ok(&res);
    assert!(t.warming.is_empty(), "{:?}", t.warming);
    assert_eq!(t.listeners.len(), 2);
    let l1 = &t.listeners[0];
    assert_eq!(l1.name, "l1");
    assert_eq!(l1.address, "127.0.0.1:18081");
    assert!(!l1.bind_to_port);
    let r = router_of(l1);
    assert_eq!(r.virtual_hosts[0].domains, ["*"]);
    let routes = &r.virtual_hosts[0].routes;
    assert_eq!(routes[0].matcher.prefix.as_deref(), Some("/api"));
    assert_eq!(routes[0].cluster.as_deref(), Some("c1"));
    assert_eq!(routes[1].cluster.as_deref(), Some("c2"));
    let l2 = &t.listeners[1];
    assert!(l2.use_original_dst && l2.bind_to_port);
    assert_eq!(
        router_of(l2).virtual_hosts[0].routes[0].cluster.as_deref(),
        Some("c2")
    );
    let c1 = &t.clusters[0];
    assert_eq!(c1.endpoints[0].address, "127.0.0.1:9001");
    assert_eq!(c1.connect_timeout.0, std::time::Duration::from_secs(2));
    let cfg = merged(&t);
    assert_eq!(cfg.listeners.len(), 2);
}

/// A translator that remembers must give exactly what translating from scratch gives, step
/// after step, and follow every change: a new assignment, a removed one, a changed cluster, a
/// broken route configuration (whose errors are never remembered away) and its repair.
#[test]
fn a_translator_reuses_unchanged_resources_and_follows_changes() {
    let mut res = set(
        vec![listener(
            "l1",
            18081,
            vec![hcm_filter(&hcm_rds("r1", vec![router_filter()]))],
        )],
        vec![route_config(
            "r1",
            vec![route_to("/a", "a"), route_to("/b", "b")],
        )],
        vec![eds_cluster("a"), eds_cluster("b")],
    );
    for (name, ip) in [("a", "10.0.0.1"), ("b", "10.0.0.2")] {
        let eps = vec![lb_endpoint(ip, 80, None, HealthStatus::Healthy)];
        res.endpoints
            .insert(name.to_owned(), Arc::new(cla(name, eps)));
    }
    let mut tr = Translator::default();
    let step = |tr: &mut Translator, res: &XdsResources| {
        let remembered = tr.translate(res);
        assert_eq!(
            remembered,
            translate(res),
            "the translator differs from a fresh one"
        );
        remembered
    };
    let endpoint_of = |t: &Translated, c: &str| -> Option<String> {
        let c = t.clusters.iter().find(|x| x.name == c)?;
        Some(c.endpoints[0].address.clone())
    };

    let t = step(&mut tr, &res).expect("translates");
    assert_eq!(endpoint_of(&t, "a").as_deref(), Some("10.0.0.1:80"));
    let t = step(&mut tr, &res).expect("translates again, from memory");
    assert_eq!(endpoint_of(&t, "b").as_deref(), Some("10.0.0.2:80"));

    // A new assignment for `a` (what an endpoint push delivers): `a` follows, `b` is kept.
    let eps = vec![lb_endpoint("10.0.0.9", 80, None, HealthStatus::Healthy)];
    res.endpoints
        .insert("a".to_owned(), Arc::new(cla("a", eps)));
    let t = step(&mut tr, &res).expect("translates");
    assert_eq!(endpoint_of(&t, "a").as_deref(), Some("10.0.0.9:80"));
    assert_eq!(endpoint_of(&t, "b").as_deref(), Some("10.0.0.2:80"));

    // `b` loses its assignment: it warms, and its route answers 503 after the merge.
    res.endpoints.remove("b");
    let t = step(&mut tr, &res).expect("translates");
    assert_eq!(endpoint_of(&t, "b"), None);
    assert!(
        t.warming.iter().any(|w| w.contains("cluster \"b\"")),
        "{:?}",
        t.warming
    );

    // A changed cluster with the same assignment.
    let mut a = eds_cluster("a");
    a.lb_policy = cluster::LbPolicy::Random as i32;
    res.clusters.insert("a".to_owned(), Arc::new(a));
    let t = step(&mut tr, &res).expect("translates");
    let a = t
        .clusters
        .iter()
        .find(|c| c.name == "a")
        .expect("cluster a");
    assert_eq!(a.lb_policy, mecha_mesh::config::LbPolicy::Random);

    // A broken route configuration errs every time it is translated, and its repair applies.
    let good = res.routes.get("r1").cloned().expect("r1");
    let mut bad = RouteConfiguration::clone(&good);
    bad.name = "other".to_owned();
    res.routes.insert("r1".to_owned(), Arc::new(bad));
    for _ in 0..2 {
        let errors = step(&mut tr, &res).expect_err("a misnamed route configuration");
        assert!(
            errors.iter().any(|e| e.message.contains("differs")),
            "{errors:?}"
        );
    }
    res.routes.insert("r1".to_owned(), good);
    let t = step(&mut tr, &res).expect("translates after the repair");
    let routes = &router_of(&t.listeners[0]).virtual_hosts[0].routes;
    assert_eq!(routes[0].cluster.as_deref(), Some("a"));
}

#[test]
fn weighted_clusters_headers_and_matchers_map() {
    let mut r = route_to("/", "unused");
    let Some(route::Action::Route(ra)) = &mut r.action else {
        unreachable!()
    };
    ra.cluster_specifier = Some(route_action::ClusterSpecifier::WeightedClusters(
        WeightedCluster {
            clusters: vec![
                ClusterWeight {
                    name: "c1".to_owned(),
                    weight: u32v(90),
                    ..Default::default()
                },
                ClusterWeight {
                    name: "c2".to_owned(),
                    weight: u32v(10),
                    ..Default::default()
                },
            ],
            ..Default::default()
        },
    ));
    ra.prefix_rewrite = "/v2/".to_owned();
    ra.host_rewrite_specifier = Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(
        "backend".to_owned(),
    ));
    ra.timeout = secs(3);
    ra.idle_timeout = secs(30);
    if let Some(m) = &mut r.r#match {
        m.headers = vec![
            HeaderMatcher {
                name: "x-exact".to_owned(),
                header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::ExactMatch(
                    "a".to_owned(),
                )),
                ..Default::default()
            },
            HeaderMatcher {
                name: "x-absent".to_owned(),
                header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::PresentMatch(
                    true,
                )),
                invert_match: true,
                ..Default::default()
            },
            HeaderMatcher {
                name: "x-prefix".to_owned(),
                header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::PrefixMatch(
                    "v1.".to_owned(),
                )),
                ..Default::default()
            },
        ];
    }
    r.request_headers_to_add = vec![
        HeaderValueOption {
            header: Some(HeaderValue {
                key: "x-added".to_owned(),
                value: "1".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        },
        HeaderValueOption {
            header: Some(HeaderValue {
                key: "x-set".to_owned(),
                value: "2".to_owned(),
                ..Default::default()
            }),
            append: Some(BoolValue { value: false }),
            ..Default::default()
        },
    ];
    r.response_headers_to_remove = vec!["server".to_owned()];
    let res = set(
        vec![listener(
            "l",
            18083,
            vec![hcm_filter(&hcm_rds("r", vec![router_filter()]))],
        )],
        vec![route_config("r", vec![r])],
        vec![static_cluster("c1", 9001), static_cluster("c2", 9002)],
    );
    let t = ok(&res);
    let rc = &router_of(&t.listeners[0]).virtual_hosts[0].routes[0];
    let w = rc.weighted_clusters.as_ref().expect("weighted");
    assert_eq!((w[0].name.as_str(), w[0].weight), ("c1", 90));
    assert_eq!((w[1].name.as_str(), w[1].weight), ("c2", 10));
    assert_eq!(rc.prefix_rewrite.as_deref(), Some("/v2/"));
    assert_eq!(rc.host_rewrite.as_deref(), Some("backend"));
    assert_eq!(rc.timeout.map(|d| d.0.as_secs()), Some(3));
    assert_eq!(rc.idle_timeout.map(|d| d.0.as_secs()), Some(30));
    let h = &rc.matcher.headers;
    assert_eq!(h[0].exact.as_deref(), Some("a"));
    assert_eq!((h[1].present, h[1].invert), (Some(true), true));
    assert_eq!(h[2].regex.as_deref(), Some(r"v1\..*"));
    let added: Vec<&str> = rc
        .request_headers_to_add
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(added, ["x-added", "x-set"]);
    // Overwrite = remove, then add.
    assert_eq!(rc.request_headers_to_remove, ["x-set"]);
    assert_eq!(rc.response_headers_to_remove, ["server"]);
    merged(&t);
}

#[test]
fn eds_cluster_takes_weights_and_leaves_out_unhealthy_endpoints() {
    let mut res = set(vec![], vec![], vec![eds_cluster("svc")]);
    res.endpoints.insert(
        "svc".to_owned(),
        Arc::new(cla(
            "svc",
            vec![
                lb_endpoint("10.0.0.1", 80, Some(3), HealthStatus::Healthy),
                lb_endpoint("10.0.0.2", 80, None, HealthStatus::Unhealthy),
                lb_endpoint("10.0.0.3", 80, None, HealthStatus::Draining),
                lb_endpoint("10.0.0.4", 80, None, HealthStatus::Timeout),
                lb_endpoint("10.0.0.5", 80, None, HealthStatus::Unknown),
            ],
        )),
    );
    // A failover priority: kept, with its priority, and health status applies there too.
    if let Some(a) = res.endpoints.get_mut("svc").map(Arc::make_mut) {
        a.endpoints.push(LocalityLbEndpoints {
            priority: 1,
            lb_endpoints: vec![
                lb_endpoint("10.0.1.1", 80, Some(2), HealthStatus::Healthy),
                lb_endpoint("10.0.1.2", 80, None, HealthStatus::Unhealthy),
            ],
            ..Default::default()
        });
    }
    let t = ok(&res);
    let eps: Vec<(&str, usize, u32)> = t.clusters[0]
        .endpoints
        .iter()
        .map(|e| (e.address.as_str(), e.weight, e.priority))
        .collect();
    assert_eq!(
        eps,
        [
            ("10.0.0.1:80", 3, 0),
            ("10.0.0.5:80", 1, 0),
            ("10.0.1.1:80", 2, 1)
        ]
    );
    assert!(
        !t.ignored.iter().any(|i| i.contains("priority")),
        "{:?}",
        t.ignored
    );
}

#[test]
fn eds_priorities_become_endpoint_priorities() {
    let mut res = set(vec![], vec![], vec![eds_cluster("svc")]);
    let level = |priority: u32, ip: &str| LocalityLbEndpoints {
        priority,
        lb_endpoints: vec![lb_endpoint(ip, 80, None, HealthStatus::Healthy)],
        ..Default::default()
    };
    res.endpoints.insert(
        "svc".to_owned(),
        Arc::new(ClusterLoadAssignment {
            cluster_name: "svc".to_owned(),
            endpoints: vec![
                level(2, "10.0.2.1"),
                level(0, "10.0.0.1"),
                level(1, "10.0.1.1"),
            ],
            ..Default::default()
        }),
    );
    let t = ok(&res);
    let eps: Vec<(&str, u32)> = t.clusters[0]
        .endpoints
        .iter()
        .map(|e| (e.address.as_str(), e.priority))
        .collect();
    assert_eq!(
        eps,
        [("10.0.2.1:80", 2), ("10.0.0.1:80", 0), ("10.0.1.1:80", 1)]
    );
    // Only failover endpoints (priority 0 empty) are fine too: they are the best level.
    res.endpoints.insert(
        "svc".to_owned(),
        Arc::new(ClusterLoadAssignment {
            cluster_name: "svc".to_owned(),
            endpoints: vec![level(1, "10.0.1.1")],
            ..Default::default()
        }),
    );
    assert_eq!(ok(&res).clusters[0].endpoints[0].priority, 1);
    // Beyond 127 the assignment is NACKed naming the field.
    res.endpoints.insert(
        "svc".to_owned(),
        Arc::new(ClusterLoadAssignment {
            cluster_name: "svc".to_owned(),
            endpoints: vec![level(0, "10.0.0.1"), level(128, "10.0.9.1")],
            ..Default::default()
        }),
    );
    let errors = errors_of(&res);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("endpoints[1].priority: at most 127, got 128")),
        "{errors:?}"
    );
}

#[test]
fn eds_service_name_names_the_assignment() {
    let mut c = eds_cluster("outbound|80||svc");
    if let Some(eds) = &mut c.eds_cluster_config {
        eds.service_name = "svc-eds".to_owned();
    }
    let mut res = set(vec![], vec![], vec![c]);
    res.endpoints.insert(
        "svc-eds".to_owned(),
        Arc::new(cla(
            "svc-eds",
            vec![lb_endpoint("10.0.0.1", 80, None, HealthStatus::Healthy)],
        )),
    );
    let t = ok(&res);
    assert_eq!(t.clusters[0].name, "outbound|80||svc");
    assert_eq!(t.clusters[0].endpoints[0].address, "10.0.0.1:80");
}

#[test]
fn strict_dns_keeps_host_names() {
    let mut c = static_cluster("dns", 80);
    c.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
        cluster::DiscoveryType::StrictDns as i32,
    ));
    c.load_assignment = Some(cla(
        "dns",
        vec![lb_endpoint(
            "example.internal",
            8080,
            Some(2),
            HealthStatus::Unknown,
        )],
    ));
    c.dns_refresh_rate = secs(10);
    let t = ok(&set(vec![], vec![], vec![c]));
    assert_eq!(t.clusters[0].endpoints[0].address, "example.internal:8080");
    assert_eq!(t.clusters[0].endpoints[0].weight, 2);
    assert_eq!(t.clusters[0].dns_refresh.0.as_secs(), 10);
    // STATIC needs IP addresses.
    let mut s = static_cluster("s", 80);
    s.load_assignment = Some(cla(
        "s",
        vec![lb_endpoint(
            "example.internal",
            80,
            None,
            HealthStatus::Unknown,
        )],
    ));
    assert_error(
        &set(vec![], vec![], vec![s]),
        "cluster \"s\": load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.\
         socket_address.address: expected an IP address",
    );
}

#[test]
fn http2_protocol_options_make_an_h2c_cluster() {
    let mut c = static_cluster("grpc", 9000);
    let opts = HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                    Http2ProtocolOptions {
                        max_concurrent_streams: u32v(50),
                        ..Default::default()
                    },
                )),
            },
        )),
        ..Default::default()
    };
    c.typed_extension_protocol_options.insert(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_owned(),
        any(&opts),
    );
    let t = ok(&set(vec![], vec![], vec![c]));
    assert_eq!(t.clusters[0].protocol, UpstreamProtocol::H2c);
    assert_eq!(t.clusters[0].max_h2_streams, 50);
}

#[test]
fn every_lb_policy_maps() {
    use cluster::LbPolicy as P;
    for (p, want) in [
        (P::RoundRobin, LbPolicy::RoundRobin),
        (P::LeastRequest, LbPolicy::LeastRequest),
        (P::Random, LbPolicy::Random),
        (P::RingHash, LbPolicy::RingHash),
        (P::Maglev, LbPolicy::Maglev),
    ] {
        let mut c = static_cluster("c", 9000);
        c.lb_policy = p as i32;
        let t = ok(&set(vec![], vec![], vec![c]));
        assert_eq!(t.clusters[0].lb_policy, want, "{p:?}");
    }
    let mut c = static_cluster("c", 9000);
    c.lb_policy = P::ClusterProvided as i32;
    assert_error(
        &set(vec![], vec![], vec![c]),
        "cluster \"c\": lb_policy: CLUSTER_PROVIDED not supported yet",
    );
}

#[test]
fn health_checks_outlier_detection_and_breakers_map() {
    let mut c = static_cluster("c", 9000);
    c.health_checks = vec![HealthCheck {
        timeout: secs(1),
        interval: secs(5),
        unhealthy_threshold: u32v(3),
        healthy_threshold: u32v(2),
        health_checker: Some(health_check::HealthChecker::HttpHealthCheck(
            health_check::HttpHealthCheck {
                path: "/ready".to_owned(),
                ..Default::default()
            },
        )),
        ..Default::default()
    }];
    c.outlier_detection = Some(OutlierDetection {
        consecutive_5xx: u32v(7),
        base_ejection_time: secs(10),
        max_ejection_percent: u32v(50),
        enforcing_success_rate: u32v(0),
        ..Default::default()
    });
    c.circuit_breakers = Some(CircuitBreakers {
        thresholds: vec![Thresholds {
            max_connections: u32v(100),
            max_requests: u32v(200),
            max_retries: u32v(5),
            ..Default::default()
        }],
        ..Default::default()
    });
    let t = ok(&set(vec![], vec![], vec![c.clone()]));
    let cfg = &t.clusters[0];
    let hc = cfg.health_check.as_ref().expect("health check");
    assert_eq!(
        (hc.kind, hc.path.as_str()),
        (HealthCheckKind::Http, "/ready")
    );
    assert_eq!((hc.healthy_threshold, hc.unhealthy_threshold), (2, 3));
    let od = cfg.outlier_detection.as_ref().expect("outlier detection");
    assert_eq!((od.consecutive_5xx, od.max_ejection_percent), (7, 50));
    assert_eq!(od.base_ejection_time.0.as_secs(), 10);
    assert_eq!(cfg.circuit_breakers.max_connections, 100);
    assert_eq!(cfg.circuit_breakers.max_requests, 200);
    assert_eq!(cfg.circuit_breakers.max_retries, 5);
    // Envoy's success-rate ejection is on unless switched off: Mecha has none.
    if let Some(od) = &mut c.outlier_detection {
        od.enforcing_success_rate = None;
    }
    assert_error(
        &set(vec![], vec![], vec![c]),
        "outlier_detection.enforcing_success_rate: success-rate ejection not supported yet",
    );
}

#[test]
fn retry_policy_maps() {
    let mut r = route_to("/", "c1");
    if let Some(route::Action::Route(ra)) = &mut r.action {
        ra.retry_policy = Some(RetryPolicy {
            retry_on: "connect-failure,refused-stream,unavailable,retriable-status-codes"
                .to_owned(),
            num_retries: u32v(3),
            per_try_timeout: millis(500),
            retriable_status_codes: vec![503],
            retry_back_off: Some(RetryBackOff {
                base_interval: millis(10),
                max_interval: millis(100),
            }),
            ..Default::default()
        });
    }
    let res = set(
        vec![listener(
            "l",
            18084,
            vec![hcm_filter(&hcm_rds("r", vec![router_filter()]))],
        )],
        vec![route_config("r", vec![r])],
        vec![static_cluster("c1", 9001)],
    );
    let t = ok(&res);
    let rc = &router_of(&t.listeners[0]).virtual_hosts[0].routes[0];
    let rp = rc.retry_policy.as_ref().expect("retry policy");
    assert_eq!(
        rp.retry_on,
        [
            "connect-failure",
            "reset",
            "unavailable",
            "retriable-status-codes"
        ]
    );
    assert_eq!(rp.num_retries, 3);
    assert_eq!(rp.retriable_status_codes, [503]);
    assert_eq!(rp.base_interval.0.as_millis(), 10);
    assert_eq!(rp.max_interval.0.as_millis(), 100);
    assert_eq!(rc.per_try_timeout.map(|d| d.0.as_millis()), Some(500));
    merged(&t);
}

#[test]
fn redirects_and_direct_responses_map() {
    let redirect = Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Path("/old".to_owned())),
            ..Default::default()
        }),
        action: Some(route::Action::Redirect(RedirectAction {
            host_redirect: "new.example".to_owned(),
            response_code: redirect_action::RedirectResponseCode::Found as i32,
            scheme_rewrite_specifier: Some(redirect_action::SchemeRewriteSpecifier::HttpsRedirect(
                true,
            )),
            path_rewrite_specifier: Some(redirect_action::PathRewriteSpecifier::PathRedirect(
                "/new".to_owned(),
            )),
            ..Default::default()
        })),
        ..Default::default()
    };
    let direct = Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::SafeRegex(
                envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher {
                    regex: "/health.*".to_owned(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        action: Some(route::Action::DirectResponse(DirectResponseAction {
            status: 200,
            body: Some(envoy_types::pb::envoy::config::core::v3::DataSource {
                specifier: Some(
                    envoy_types::pb::envoy::config::core::v3::data_source::Specifier::InlineString(
                        "ok".to_owned(),
                    ),
                ),
                ..Default::default()
            }),
            ..Default::default()
        })),
        ..Default::default()
    };
    let res = set(
        vec![listener(
            "l",
            18085,
            vec![hcm_filter(&hcm_rds("r", vec![router_filter()]))],
        )],
        vec![route_config("r", vec![redirect, direct])],
        vec![],
    );
    let t = ok(&res);
    let routes = &router_of(&t.listeners[0]).virtual_hosts[0].routes;
    let rd = routes[0].redirect.as_ref().expect("redirect");
    assert_eq!(routes[0].matcher.path.as_deref(), Some("/old"));
    assert_eq!(
        (
            rd.scheme.as_deref(),
            rd.host.as_deref(),
            rd.path.as_deref(),
            rd.code
        ),
        (Some("https"), Some("new.example"), Some("/new"), 302)
    );
    let d = routes[1].direct_response.as_ref().expect("direct");
    assert_eq!(routes[1].matcher.regex.as_deref(), Some("/health.*"));
    assert_eq!((d.status, d.body.as_str()), (200, "ok"));
    merged(&t);
}

#[test]
fn a_router_that_is_not_last_is_an_error() {
    let grpc_stats = http_filter(
        "envoy.filters.http.grpc_stats",
        raw_any("envoy.extensions.filters.http.grpc_stats.v3.FilterConfig"),
    );
    let res = set(
        vec![listener(
            "l1",
            18086,
            vec![hcm_filter(&hcm_rds("r", vec![router_filter(), grpc_stats]))],
        )],
        vec![route_config("r", vec![route_to("/", "c1")])],
        vec![static_cluster("c1", 9001)],
    );
    assert_error(
        &res,
        "listener \"l1\": filter_chains[0].filters[0] (envoy.filters.network.http_connection_manager): \
         http_filters: router must be last",
    );
}

#[test]
fn unknown_filters_are_errors_unless_optional() {
    let unknown = || {
        http_filter(
            "acme.filters.http.magic",
            raw_any("acme.filters.http.v1.Magic"),
        )
    };
    let res = |f: HttpFilter| {
        set(
            vec![listener(
                "l",
                18087,
                vec![hcm_filter(&hcm_rds("r", vec![f, router_filter()]))],
            )],
            vec![route_config("r", vec![route_to("/", "c1")])],
            vec![static_cluster("c1", 9001)],
        )
    };
    assert_error(
        &res(unknown()),
        "http_filters[0] (acme.filters.http.magic): unknown HTTP filter type \
         acme.filters.http.v1.Magic and not is_optional",
    );
    let mut optional = unknown();
    optional.is_optional = true;
    let t = ok(&res(optional));
    assert!(
        t.ignored
            .iter()
            .any(|i| i.contains("acme.filters.http.magic") && i.contains("optional")),
        "{:?}",
        t.ignored
    );
    merged(&t);
}

#[test]
fn istio_filters_are_ignored_and_listed() {
    let http = vec![
        http_filter(
            "istio.metadata_exchange",
            typed_struct(
                "udpa.type.v1.TypedStruct",
                "io.istio.http.peer_metadata.Config",
            ),
        ),
        http_filter(
            "istio.alpn",
            raw_any("istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig"),
        ),
        http_filter(
            "envoy.filters.http.grpc_stats",
            raw_any("envoy.extensions.filters.http.grpc_stats.v3.FilterConfig"),
        ),
        http_filter("envoy.filters.http.fault", any(&HttpFault::default())),
        http_filter(
            "envoy.filters.http.cors",
            raw_any("envoy.extensions.filters.http.cors.v3.Cors"),
        ),
        http_filter(
            "istio.stats",
            typed_struct("xds.type.v3.TypedStruct", "stats.PluginConfig"),
        ),
        // The router given as a TypedStruct with no fields: its defaults.
        http_filter(
            "envoy.filters.http.router",
            typed_struct(
                "udpa.type.v1.TypedStruct",
                "envoy.extensions.filters.http.router.v3.Router",
            ),
        ),
    ];
    let mut l = listener(
        "virtualOutbound",
        15001,
        vec![
            network_filter(
                "istio.metadata_exchange",
                typed_struct(
                    "udpa.type.v1.TypedStruct",
                    "envoy.tcp.metadataexchange.config.MetadataExchange",
                ),
            ),
            hcm_filter(&hcm_rds("r", http)),
        ],
    );
    l.use_original_dst = Some(BoolValue { value: true });
    l.listener_filters = vec![envoy_types::pb::envoy::config::listener::v3::ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".to_owned(),
        config_type: Some(
            envoy_types::pb::envoy::config::listener::v3::listener_filter::ConfigType::TypedConfig(
                raw_any("envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"),
            ),
        ),
        ..Default::default()
    }];
    let res = set(
        vec![l],
        vec![route_config("r", vec![route_to("/", "c1")])],
        vec![static_cluster("c1", 9001)],
    );
    let t = ok(&res);
    for name in [
        "istio.metadata_exchange",
        "istio.alpn",
        "envoy.filters.http.grpc_stats",
        "envoy.filters.http.fault",
        "envoy.filters.http.cors",
        "istio.stats",
        "tls_inspector",
    ] {
        assert!(
            t.ignored.iter().any(|i| i.contains(name)),
            "{name} not listed in {:#?}",
            t.ignored
        );
    }
    assert!(t.listeners[0].use_original_dst);
    merged(&t);
}

#[test]
fn a_fault_filter_that_injects_is_an_error() {
    let fault = HttpFault {
        max_active_faults: u32v(1),
        ..Default::default()
    };
    let res = set(
        vec![listener(
            "l",
            18088,
            vec![hcm_filter(&hcm_rds(
                "r",
                vec![
                    http_filter("envoy.filters.http.fault", any(&fault)),
                    router_filter(),
                ],
            ))],
        )],
        vec![route_config("r", vec![route_to("/", "c1")])],
        vec![static_cluster("c1", 9001)],
    );
    assert_error(&res, "fault injection not supported yet");
}

#[test]
fn security_filters_are_refused() {
    let rbac = http_filter("envoy.filters.http.rbac", any(&Rbac::default()));
    let mut optional = rbac.clone();
    optional.is_optional = true;
    for f in [rbac, optional] {
        let res = set(
            vec![listener(
                "l",
                18089,
                vec![hcm_filter(&hcm_rds("r", vec![f, router_filter()]))],
            )],
            vec![route_config("r", vec![route_to("/", "c1")])],
            vec![static_cluster("c1", 9001)],
        );
        assert_error(
            &res,
            "envoy.extensions.filters.http.rbac.v3.RBAC is not implemented: refusing to serve \
             without it",
        );
    }
}

#[test]
fn a_listener_waits_for_its_route_config_and_a_cluster_for_its_endpoints() {
    let res = set(
        vec![listener(
            "l",
            18090,
            vec![hcm_filter(&hcm_rds("later", vec![router_filter()]))],
        )],
        vec![],
        vec![eds_cluster("svc")],
    );
    let t = ok(&res);
    assert!(t.listeners.is_empty() && t.clusters.is_empty());
    assert!(
        t.warming
            .contains(&"listener \"l\": waiting for route_config \"later\"".to_owned()),
        "{:?}",
        t.warming
    );
    assert!(
        t.warming
            .contains(&"cluster \"svc\": waiting for endpoints \"svc\"".to_owned()),
        "{:?}",
        t.warming
    );
}

#[test]
fn a_route_to_a_warming_cluster_answers_503_and_a_tcp_proxy_to_it_waits() {
    let tcp = TcpProxy {
        stat_prefix: "tcp".to_owned(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster("svc".to_owned())),
        ..Default::default()
    };
    let res = set(
        vec![
            listener(
                "http",
                18091,
                vec![hcm_filter(&hcm_rds("r", vec![router_filter()]))],
            ),
            listener(
                "tcp",
                18092,
                vec![network_filter("envoy.filters.network.tcp_proxy", any(&tcp))],
            ),
        ],
        vec![route_config(
            "r",
            vec![route_to("/svc", "svc"), route_to("/", "c1")],
        )],
        vec![eds_cluster("svc"), static_cluster("c1", 9001)],
    );
    let t = ok(&res);
    assert_eq!(t.listeners.len(), 1);
    assert!(
        t.warming
            .iter()
            .any(|w| w.starts_with("listener \"tcp\": waiting for cluster \"svc\"")),
        "{:?}",
        t.warming
    );
    let cfg = merged(&t);
    let r = router_of(&cfg.listeners[0]);
    let d = r.virtual_hosts[0].routes[0]
        .direct_response
        .as_ref()
        .expect("503 for the missing cluster");
    assert_eq!(d.status, 503);
}

#[test]
fn a_tcp_proxy_listener_translates() {
    let tcp = TcpProxy {
        stat_prefix: "tcp".to_owned(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster("db".to_owned())),
        ..Default::default()
    };
    let res = set(
        vec![listener(
            "tcp",
            18093,
            vec![network_filter("envoy.filters.network.tcp_proxy", any(&tcp))],
        )],
        vec![],
        vec![static_cluster("db", 5432)],
    );
    let t = ok(&res);
    assert_eq!(
        t.listeners[0]
            .tcp_proxy
            .as_ref()
            .map(|t| t.cluster.as_str()),
        Some("db")
    );
    assert!(t.listeners[0].filters.is_empty());
    merged(&t);
}

fn cidr(ip: &str, len: u32) -> envoy_types::pb::envoy::config::core::v3::CidrRange {
    envoy_types::pb::envoy::config::core::v3::CidrRange {
        address_prefix: ip.to_owned(),
        prefix_len: u32v(len),
    }
}

fn chain(name: &str, m: Option<FilterChainMatch>, filters: Vec<Filter>) -> FilterChain {
    FilterChain {
        name: name.to_owned(),
        filter_chain_match: m,
        filters,
        ..Default::default()
    }
}

fn tcp_filter(cluster: &str) -> Filter {
    network_filter(
        "envoy.filters.network.tcp_proxy",
        any(&TcpProxy {
            stat_prefix: "tcp".to_owned(),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.to_owned())),
            ..Default::default()
        }),
    )
}

fn port_match(port: u32) -> Option<FilterChainMatch> {
    Some(FilterChainMatch {
        destination_port: u32v(port),
        ..Default::default()
    })
}

#[test]
fn filter_chains_by_destination_become_chains_of_their_listener() {
    // Istio's virtualInbound: a capture port, one chain per destination port (plain text,
    // HTTP protocols from http_inspector), a passthrough chain matching everything.
    let http = FilterChainMatch {
        destination_port: u32v(8080),
        transport_protocol: "raw_buffer".to_owned(),
        application_protocols: vec!["http/1.1".to_owned(), "h2c".to_owned()],
        prefix_ranges: vec![cidr("0.0.0.0", 0)],
        ..Default::default()
    };
    let inbound = Listener {
        name: "virtualInbound".to_owned(),
        address: Some(sock("0.0.0.0", 15006)),
        use_original_dst: Some(BoolValue { value: true }),
        filter_chains: vec![
            chain(
                "inbound|8080||",
                Some(http),
                vec![hcm_filter(&hcm_rds(
                    "inbound|8080||",
                    vec![router_filter()],
                ))],
            ),
            chain("inbound|9000||", port_match(9000), vec![tcp_filter("db")]),
            chain(
                "InboundPassthroughCluster",
                Some(FilterChainMatch {
                    prefix_ranges: vec![cidr("0.0.0.0", 0)],
                    ..Default::default()
                }),
                vec![tcp_filter("passthrough")],
            ),
        ],
        ..Default::default()
    };
    // Istio's per-port outbound listener (virtual), a chain per service address.
    let outbound = Listener {
        name: "0.0.0.0_8080".to_owned(),
        address: Some(sock("0.0.0.0", 8080)),
        bind_to_port: Some(BoolValue { value: false }),
        filter_chains: vec![chain(
            "",
            Some(FilterChainMatch {
                prefix_ranges: vec![cidr("10.96.0.5", 32), cidr("10.96.0.6", 32)],
                ..Default::default()
            }),
            vec![tcp_filter("db")],
        )],
        default_filter_chain: Some(chain(
            "PassthroughFilterChain",
            None,
            vec![tcp_filter("passthrough")],
        )),
        ..Default::default()
    };
    let res = set(
        vec![inbound, outbound],
        vec![route_config("inbound|8080||", vec![route_to("/", "app")])],
        vec![
            static_cluster("app", 9001),
            static_cluster("db", 9002),
            static_cluster("passthrough", 9003),
        ],
    );
    let t = ok(&res);
    let by_name: BTreeMap<&str, &ListenerConfig> =
        t.listeners.iter().map(|l| (l.name.as_str(), l)).collect();
    let names: Vec<&str> = by_name.keys().copied().collect();
    assert_eq!(
        names,
        [
            "0.0.0.0_8080",
            "0.0.0.0_8080/filter_chains[0]/10.96.0.5:8080",
            "0.0.0.0_8080/filter_chains[0]/10.96.0.6:8080",
            "virtualInbound",
            "virtualInbound/inbound|8080||",
            "virtualInbound/inbound|9000||",
        ]
    );
    let inbound = by_name["virtualInbound"];
    assert!(inbound.bind_to_port && inbound.use_original_dst);
    assert_eq!(
        inbound.tcp_proxy.as_ref().map(|t| t.cluster.as_str()),
        Some("passthrough"),
        "the chain matching everything is the listener's own"
    );
    let http = by_name["virtualInbound/inbound|8080||"];
    assert_eq!(http.address, "0.0.0.0:8080");
    assert_eq!(http.chain_of.as_deref(), Some("virtualInbound"));
    assert!(!http.bind_to_port);
    assert_eq!(
        router_of(http).virtual_hosts[0].routes[0]
            .cluster
            .as_deref(),
        Some("app")
    );
    let db = by_name["virtualInbound/inbound|9000||"];
    assert_eq!(db.address, "0.0.0.0:9000");
    assert_eq!(
        db.tcp_proxy.as_ref().map(|t| t.cluster.as_str()),
        Some("db")
    );
    let out = by_name["0.0.0.0_8080"];
    assert!(!out.bind_to_port && out.chain_of.is_none());
    assert_eq!(
        out.tcp_proxy.as_ref().map(|t| t.cluster.as_str()),
        Some("passthrough"),
        "the default chain is the listener's own"
    );
    let svc = by_name["0.0.0.0_8080/filter_chains[0]/10.96.0.6:8080"];
    assert_eq!(svc.address, "10.96.0.6:8080", "the port is the listener's");
    assert_eq!(svc.chain_of.as_deref(), Some("0.0.0.0_8080"));
    merged(&t);
}

#[test]
fn filter_chain_matches_the_model_cannot_serve_are_named() {
    let hcm = || vec![hcm_filter(&hcm_rds("r", vec![router_filter()]))];
    let capture = |chains: Vec<FilterChain>| Listener {
        name: "l".to_owned(),
        address: Some(sock("0.0.0.0", 15001)),
        use_original_dst: Some(BoolValue { value: true }),
        filter_chains: chains,
        ..Default::default()
    };
    let res = |l: Listener| {
        set(
            vec![l],
            vec![route_config("r", vec![route_to("/", "c1")])],
            vec![static_cluster("c1", 9001)],
        )
    };
    let m = |f: fn(&mut FilterChainMatch)| {
        let mut m = FilterChainMatch {
            destination_port: u32v(8080),
            ..Default::default()
        };
        f(&mut m);
        Some(m)
    };
    for (case, want) in [
        (
            m(|m| m.transport_protocol = "quic".to_owned()),
            "filter_chains[0].filter_chain_match.transport_protocol: \"quic\" is not a transport protocol",
        ),
        (
            m(|m| m.server_names = vec!["a.*.example".to_owned()]),
            "filter_chains[0].filter_chain_match.server_names[0]: \"a.*.example\": a wildcard is only allowed",
        ),
        (
            Some(FilterChainMatch {
                server_names: vec!["a.example".to_owned()],
                ..Default::default()
            }),
            "filter_chains[0].filter_chain_match: server_names / transport_protocol without a destination_port on a use_original_dst listener: not supported yet",
        ),
        (
            m(|m| m.source_ports = vec![1234]),
            "filter_chains[0].filter_chain_match.source_ports: not supported yet",
        ),
        (
            m(|m| m.prefix_ranges = vec![cidr("10.0.0.0", 8)]),
            "filter_chains[0].filter_chain_match.prefix_ranges[0]: 10.0.0.0/8: not supported yet",
        ),
        (
            m(|m| m.application_protocols = vec!["istio-peer-exchange".to_owned()]),
            "filter_chains[0].filter_chain_match.application_protocols: [\"istio-peer-exchange\"]: not supported yet",
        ),
        (
            Some(FilterChainMatch {
                prefix_ranges: vec![cidr("10.0.0.1", 32)],
                ..Default::default()
            }),
            "filter_chains[0].filter_chain_match.prefix_ranges: addresses without a destination_port on a use_original_dst listener",
        ),
    ] {
        let l = capture(vec![chain("", case, hcm())]);
        assert_error(&res(l), &format!("listener \"l\": {want}"));
    }
    // Two chains for one destination (Envoy would pick by protocol), two catch-alls.
    let l = capture(vec![
        chain("", port_match(8080), hcm()),
        chain("", port_match(8080), vec![tcp_filter("c1")]),
    ]);
    assert_error(
        &res(l),
        "listener \"l\": filter_chains[1]: matches 0.0.0.0:8080 as filter_chains[0] does",
    );
    let l = capture(vec![chain("", None, hcm()), chain("", None, hcm())]);
    assert_error(
        &res(l),
        "listener \"l\": filter_chains[1]: matches every connection, as filter_chains[0] does",
    );
    // Only specific chains: the listener itself answers what none matches (listed).
    let t = ok(&res(capture(vec![chain("", port_match(8080), hcm())])));
    assert_eq!(t.listeners.len(), 2);
    assert!(t.listeners[0].filters.is_empty());
    assert!(
        t.ignored
            .iter()
            .any(|i| i.contains("no default filter chain")),
        "{:?}",
        t.ignored
    );
    merged(&t);
}

fn hello_match(names: &[&str], transport: &str, alpn: &[&str]) -> Option<FilterChainMatch> {
    Some(FilterChainMatch {
        server_names: names.iter().map(|n| n.to_string()).collect(),
        transport_protocol: transport.to_owned(),
        application_protocols: alpn.iter().map(|p| p.to_string()).collect(),
        ..Default::default()
    })
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn filter_chains_by_client_hello_become_chains_with_a_match() {
    let hcm = || vec![hcm_filter(&hcm_rds("r", vec![router_filter()]))];
    let edge = Listener {
        name: "edge".to_owned(),
        address: Some(sock("0.0.0.0", 8443)),
        listener_filters_timeout: secs(3),
        continue_on_listener_filters_timeout: true,
        filter_chains: vec![
            chain(
                "a",
                hello_match(&["A.example.com"], "tls", &[]),
                vec![tcp_filter("ca")],
            ),
            // ALPN on a chain for TLS: the ClientHello's, also on a tcp_proxy chain.
            chain(
                "",
                hello_match(&["*.example.org"], "", &["istio-peer-exchange"]),
                vec![tcp_filter("cb")],
            ),
            // HTTP ALPN with `tls`: the ClientHello's too.
            chain("web", hello_match(&[], "tls", &["h2", "http/1.1"]), hcm()),
            // Plain text (http_inspector's protocols: the HTTP chain serves them anyway).
            chain(
                "plain",
                hello_match(&[], "raw_buffer", &["http/1.1", "h2c"]),
                hcm(),
            ),
        ],
        default_filter_chain: Some(chain("fallback", None, vec![tcp_filter("cd")])),
        ..Default::default()
    };
    let res = set(
        vec![edge],
        vec![route_config("r", vec![route_to("/", "c1")])],
        ["ca", "cb", "cd", "c1"]
            .iter()
            .enumerate()
            .map(|(i, c)| static_cluster(c, 9001 + i as u32))
            .collect(),
    );
    let t = ok(&res);
    let by_name: BTreeMap<&str, &ListenerConfig> =
        t.listeners.iter().map(|l| (l.name.as_str(), l)).collect();
    assert_eq!(
        by_name.keys().copied().collect::<Vec<_>>(),
        [
            "edge",
            "edge/a",
            "edge/filter_chains[1]",
            "edge/plain",
            "edge/web"
        ]
    );
    let own = by_name["edge"];
    assert_eq!(
        own.tcp_proxy.as_ref().map(|t| t.cluster.as_str()),
        Some("cd")
    );
    assert_eq!(
        own.listener_filters_timeout.0,
        std::time::Duration::from_secs(3)
    );
    assert!(own.continue_on_listener_filters_timeout);
    let want = |names: &[&str], t: Option<TransportProtocol>, alpn: &[&str]| ChainMatch {
        server_names: strings(names),
        transport_protocol: t,
        application_protocols: strings(alpn),
    };
    for (name, cluster, m) in [
        (
            "edge/a",
            Some("ca"),
            want(&["a.example.com"], Some(TransportProtocol::Tls), &[]),
        ),
        (
            "edge/filter_chains[1]",
            Some("cb"),
            want(&["*.example.org"], None, &["istio-peer-exchange"]),
        ),
        (
            "edge/web",
            None,
            want(&[], Some(TransportProtocol::Tls), &["h2", "http/1.1"]),
        ),
        (
            "edge/plain",
            None,
            want(&[], Some(TransportProtocol::RawBuffer), &[]),
        ),
    ] {
        let l = by_name[name];
        assert_eq!(l.address, "0.0.0.0:8443", "{name}: the listener's port");
        assert_eq!(l.chain_of.as_deref(), Some("edge"), "{name}");
        assert!(!l.bind_to_port, "{name}");
        assert_eq!(l.chain_match.as_ref(), Some(&m), "{name}");
        assert_eq!(
            l.tcp_proxy.as_ref().map(|t| t.cluster.as_str()),
            cluster,
            "{name}"
        );
    }
    // Shared addresses with different matches pass the model's validation.
    merged(&t);
}

#[test]
fn duplicate_and_terminating_tls_chains_are_refused() {
    let edge = |chains: Vec<FilterChain>| Listener {
        name: "edge".to_owned(),
        address: Some(sock("0.0.0.0", 8443)),
        filter_chains: chains,
        ..Default::default()
    };
    let res = |l: Listener| set(vec![l], vec![], vec![static_cluster("c1", 9001)]);
    // Identical (or overlapping: one shared name, the rest equal) criteria: Envoy refuses
    // the listener; the NACK names both chains.
    let l = edge(vec![
        chain(
            "",
            hello_match(&["a.example.com", "b.example.com"], "tls", &[]),
            vec![tcp_filter("c1")],
        ),
        chain(
            "",
            hello_match(&["b.example.com"], "tls", &[]),
            vec![tcp_filter("c1")],
        ),
    ]);
    assert_error(
        &res(l),
        "listener \"edge\": filter_chains[1]: matches 0.0.0.0:8443 as filter_chains[0] does (the same server_names, transport_protocol and application_protocols: Envoy refuses such duplicates)",
    );
    // A chain that would terminate TLS is refused as before.
    let mut terminating = chain(
        "",
        hello_match(&["a.example.com"], "tls", &[]),
        vec![tcp_filter("c1")],
    );
    terminating.transport_socket = Some(TransportSocket {
        name: "envoy.transport_sockets.tls".to_owned(),
        config_type: None,
    });
    assert_error(
        &res(edge(vec![terminating])),
        "listener \"edge\": filter_chains[0].transport_socket: not supported yet (TLS termination on xDS listeners)",
    );
    // Without any chain asking for TLS, `raw_buffer` selects nothing: no match, no inspection.
    let t = ok(&res(edge(vec![chain(
        "",
        Some(FilterChainMatch {
            destination_port: u32v(8443),
            transport_protocol: "raw_buffer".to_owned(),
            ..Default::default()
        }),
        vec![tcp_filter("c1")],
    )])));
    assert_eq!(t.listeners[1].chain_match, None);
    assert_eq!(
        t.listeners[0].listener_filters_timeout.0,
        std::time::Duration::from_secs(15),
        "Envoy's default"
    );
}

#[test]
fn query_matchers_map() {
    use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier as Q;
    use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher, StringMatcher};
    let l = listener(
        "l",
        18094,
        vec![hcm_filter(&hcm_rds("r", vec![router_filter()]))],
    );
    let mut r = route_to("/", "c1");
    let q = |name: &str, spec: Option<Q>| QueryParameterMatcher {
        name: name.to_owned(),
        query_parameter_match_specifier: spec,
    };
    let sm = |p: string_matcher::MatchPattern, ignore_case: bool| {
        Some(Q::StringMatch(StringMatcher {
            ignore_case,
            match_pattern: Some(p),
        }))
    };
    if let Some(m) = &mut r.r#match {
        m.query_parameters = vec![
            q("debug", None),
            q(
                "v",
                sm(string_matcher::MatchPattern::Exact("2".into()), false),
            ),
            q(
                "lang",
                sm(string_matcher::MatchPattern::Prefix("en".into()), true),
            ),
            q("off", Some(Q::PresentMatch(false))),
        ];
    }
    let res = set(
        vec![l],
        vec![route_config("r", vec![r])],
        vec![static_cluster("c1", 9001)],
    );
    let t = ok(&res);
    let query = &router_of(&t.listeners[0]).virtual_hosts[0].routes[0]
        .matcher
        .query;
    type Row<'a> = (&'a str, Option<&'a str>, Option<&'a str>, Option<bool>);
    let got: Vec<Row<'_>> = query
        .iter()
        .map(|q| {
            (
                q.name.as_str(),
                q.exact.as_deref(),
                q.regex.as_deref(),
                q.present,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("debug", None, None, Some(true)),
            ("v", Some("2"), None, None),
            ("lang", None, Some("(?i)en.*"), None),
            ("off", None, None, Some(false)),
        ]
    );
    merged(&t);
}

/// Istio's PassthroughCluster, as istiod builds it.
fn passthrough() -> Cluster {
    let options = HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(
            envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::UseDownstreamHttpConfig {
                http_protocol_options: Some(Default::default()),
                http2_protocol_options: Some(Http2ProtocolOptions::default()),
                http3_protocol_options: None,
            },
        )),
        ..Default::default()
    };
    Cluster {
        name: "PassthroughCluster".to_owned(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::OriginalDst as i32,
        )),
        lb_policy: cluster::LbPolicy::ClusterProvided as i32,
        connect_timeout: secs(10),
        typed_extension_protocol_options: [(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_owned(),
            any(&options),
        )]
        .into(),
        ..Default::default()
    }
}

#[test]
fn original_dst_clusters_send_where_the_connection_was_going() {
    let outbound = Listener {
        name: "virtualOutbound".to_owned(),
        address: Some(sock("0.0.0.0", 15001)),
        use_original_dst: Some(BoolValue { value: true }),
        filter_chains: vec![chain("", None, vec![tcp_filter("PassthroughCluster")])],
        ..Default::default()
    };
    let t = ok(&set(vec![outbound], vec![], vec![passthrough()]));
    let c = &t.clusters[0];
    assert!(c.original_dst && c.endpoints.is_empty());
    assert_eq!(c.protocol, UpstreamProtocol::Downstream);
    assert_eq!(c.connect_timeout.0, std::time::Duration::from_secs(10));
    merged(&t);

    let mut bad = passthrough();
    bad.lb_policy = cluster::LbPolicy::RoundRobin as i32;
    bad.lb_config = Some(cluster::LbConfig::OriginalDstLbConfig(
        cluster::OriginalDstLbConfig {
            use_http_header: true,
            ..Default::default()
        },
    ));
    bad.max_requests_per_connection = u32v(1);
    let errs = errors_of(&set(vec![], vec![], vec![bad]));
    for want in [
        "cluster \"PassthroughCluster\": lb_policy: an ORIGINAL_DST cluster needs CLUSTER_PROVIDED",
        "cluster \"PassthroughCluster\": original_dst_lb_config.use_http_header: not supported yet",
        "cluster \"PassthroughCluster\": max_requests_per_connection: not supported yet",
    ] {
        assert!(errs.iter().any(|e| e.contains(want)), "{want}: {errs:#?}");
    }
}

#[test]
fn components_are_mapped_and_validated() {
    let mut res = XdsResources::default();
    res.components.insert(
        "statestore".to_owned(),
        Arc::new(Component {
            name: "statestore".to_owned(),
            r#type: "state.memory".to_owned(),
            metadata: [("keyPrefix".to_owned(), "none".to_owned())].into(),
        }),
    );
    let t = ok(&res);
    assert_eq!(t.components[0].name, "statestore");
    assert_eq!(t.components[0].kind, "state.memory");
    assert_eq!(t.components[0].meta_str("keyPrefix"), Some("none"));
    res.components.insert(
        "bad".to_owned(),
        Arc::new(Component {
            name: "bad".to_owned(),
            r#type: "state.foo".to_owned(),
            metadata: Default::default(),
        }),
    );
    assert_error(&res, "component \"bad\": type: unknown type \"state.foo\"");
}

#[test]
fn merge_refuses_names_taken_by_the_bootstrap() {
    let mut boot = mecha_proxy_core::config::parse(
        "clusters: [{ name: c1, endpoints: [{ address: \"127.0.0.1:1\" }] }]\n",
    )
    .expect("bootstrap");
    boot.admin.address = None;
    let t = ok(&set(vec![], vec![], vec![static_cluster("c1", 9001)]));
    let errs = merge(&boot, t).expect_err("clash");
    assert!(
        errs[0].contains("cluster \"c1\" from xDS") && errs[0].contains("static clusters[0]"),
        "{errs:?}"
    );
}

#[test]
fn every_error_of_a_push_is_returned() {
    let mut bad_cluster = static_cluster("c", 1);
    bad_cluster.lb_policy = cluster::LbPolicy::ClusterProvided as i32;
    let res = set(
        vec![listener(
            "l",
            18095,
            vec![hcm_filter(&hcm_rds("r", vec![]))],
        )],
        vec![],
        vec![bad_cluster],
    );
    let errs = errors_of(&res);
    assert!(
        errs.iter()
            .any(|e| e.starts_with("cluster \"c\": lb_policy")),
        "{errs:#?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("listener \"l\":") && e.contains("needs the router")),
        "{errs:#?}"
    );
}
