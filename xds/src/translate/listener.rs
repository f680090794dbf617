//! Listener → [`ListenerConfig`]s: address, bind/original-destination flags, and its filter
//! chains: the one that matches everything (or the default chain) becomes the listener's own
//! filters, each chain with a destination match a virtual listener `chain_of` it, at the
//! address(es) it matches (`0.0.0.0:port` for a `destination_port`, `ip:port` for a single
//! address in `prefix_ranges`), with its TLS criteria (`server_names`, `transport_protocol`,
//! ClientHello `application_protocols`) as the virtual listener's `chain_match`: chains on one
//! destination may differ by those.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use envoy_types::pb::envoy::config::core::v3::{
    address, config_source, socket_address, Address, ConfigSource, SocketAddress,
};
use envoy_types::pb::envoy::config::listener::v3::{
    filter, listener_filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{self, UpgradeConfig},
    http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use mecha_mesh::config::{Dur, RouterConfig};
use mecha_proxy_core::config::{
    server_name_problem, ChainMatch, FilterConfig, ListenerConfig, TcpProxyConfig,
    TransportProtocol,
};

use super::filters::{self, Kind};
use super::{boolv, dur, join, refuse, route, Errs};
use crate::resources::XdsResources;

pub(super) struct Context<'a> {
    pub res: &'a XdsResources,
    /// Translated route configurations (the ones without errors), by name.
    pub routers: &'a BTreeMap<&'a str, &'a RouterConfig>,
    /// Clusters of `res` that were left out (warming, or no usable endpoints).
    pub absent_clusters: &'a HashSet<String>,
}

pub(super) enum Outcome {
    /// The listener first, then its filter chains (virtual listeners `chain_of` it).
    Ready(Vec<ListenerConfig>),
    Warming(String),
    Failed,
}

/// What the filter chain gives the listener.
#[derive(Default, Clone)]
struct Chain {
    filters: Vec<FilterConfig>,
    tcp_proxy: Option<TcpProxyConfig>,
    request_header_timeout: Option<Dur>,
    waiting: Option<String>,
}

#[allow(deprecated)]
pub(super) fn translate(
    key: &str,
    l: &Listener,
    ctx: &Context<'_>,
    e: &mut Errs<'_>,
    ignored: &mut Vec<String>,
) -> Outcome {
    let before = e.count();
    let Listener {
        name,
        address,
        additional_addresses,
        stat_prefix: _,
        stats_matcher: _,
        filter_chains,
        fcds_config,
        filter_chain_matcher,
        use_original_dst,
        default_filter_chain,
        per_connection_buffer_limit_bytes: _,
        per_connection_buffer_high_watermark_timeout: _,
        metadata: _,
        deprecated_v1,
        // How a listener drains on removal: Mecha's listener manager drains its own way.
        drain_type: _,
        listener_filters,
        listener_filters_timeout,
        continue_on_listener_filters_timeout,
        transparent,
        freebind,
        socket_options,
        tcp_fast_open_queue_length,
        // Istio's INBOUND/OUTBOUND tag: informational (stats, tracing).
        traffic_direction: _,
        udp_listener_config,
        api_listener,
        connection_balance_config,
        // Mecha always binds one SO_REUSEPORT socket per worker.
        reuse_port: _,
        enable_reuse_port: _,
        access_log: _,
        tcp_backlog_size: _,
        max_connections_to_accept_per_socket_event: _,
        bind_to_port,
        enable_mptcp,
        ignore_global_conn_limit: _,
        bypass_overload_manager: _,
        tcp_keepalive,
        listener_specifier,
    } = l;
    if name != key {
        e.at(
            "name",
            format!("{name:?} differs from the resource name {key:?}"),
        );
    }
    refuse!(e, ""; additional_addresses, fcds_config, filter_chain_matcher,
        deprecated_v1, transparent, freebind, socket_options, tcp_fast_open_queue_length,
        udp_listener_config, api_listener, connection_balance_config, enable_mptcp,
        tcp_keepalive);
    if listener_specifier.is_some() {
        e.unsupported("", "listener_specifier");
    }
    let addr = match address {
        Some(a) => socket_address(e, "address", a, false),
        None => {
            e.at("address", "required");
            None
        }
    };
    for (i, lf) in listener_filters.iter().enumerate() {
        listener_filter(e, &format!("listener_filters[{i}]"), lf, key, ignored);
    }

    let bind = boolv(bind_to_port).unwrap_or(true);
    let original_dst = boolv(use_original_dst).unwrap_or(false);
    let own_port = addr
        .as_deref()
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .map(|a| a.port());

    // Envoy picks a filter chain by its `filter_chain_match`, else the default chain. The
    // model: the listener's own filters serve what no chain matches (a chain matching
    // everything, else `default_filter_chain`), and each chain with a destination becomes a
    // virtual listener with `chain_of: <this listener>` at the address(es) it matches.
    let redirecting = bind && original_dst;
    let mut matched: Vec<(String, &FilterChain, Dests, ChainMatch)> = Vec::new();
    for (i, fc) in filter_chains.iter().enumerate() {
        let path = format!("filter_chains[{i}]");
        if let Some((dests, criteria)) = chain_match(e, &path, fc, own_port, redirecting) {
            matched.push((path, fc, dests, criteria));
        }
    }
    // `raw_buffer` tells plain text from TLS; when no chain asks for TLS, every chain serves
    // what reaches it as plain text anyway, and the match needs no inspection (none is
    // made: a server-first protocol is not held up waiting for a ClientHello).
    let tls_used = matched.iter().any(|(_, _, _, c)| {
        c.transport_protocol == Some(TransportProtocol::Tls) || !c.server_names.is_empty()
    });
    let mut wildcard: Option<(String, &FilterChain)> = None;
    let mut specific: Vec<(String, &FilterChain, Vec<SocketAddr>, ChainMatch)> = Vec::new();
    for (path, fc, dests, mut criteria) in matched {
        if !tls_used {
            criteria.transport_protocol = None;
        }
        match dests {
            Dests::All if !criteria.inspects() => match &wildcard {
                Some((other, _)) => e.at(
                    &path,
                    format!(
                        "matches every connection, as {other} does (Envoy refuses such duplicates)"
                    ),
                ),
                None => wildcard = Some((path, fc)),
            },
            // TLS criteria without a destination: every destination the listener serves.
            Dests::All => match own_port.filter(|_| !redirecting) {
                Some(p) => specific.push((
                    path,
                    fc,
                    vec![SocketAddr::new(IpAddr::from([0, 0, 0, 0]), p)],
                    criteria,
                )),
                None => e.at(
                    &join(&path, "filter_chain_match"),
                    "server_names / transport_protocol without a destination_port on a \
                     use_original_dst listener: not supported yet (a chain matches an address \
                     with its port)",
                ),
            },
            Dests::Some(addrs) => specific.push((path, fc, addrs, criteria)),
        }
    }
    let mut seen: Vec<(SocketAddr, &ChainMatch, &str, &FilterChain)> = Vec::new();
    for (path, fc, addrs, criteria) in &specific {
        for a in addrs {
            if let Some((_, _, other, ofc)) = seen
                .iter()
                .find(|(b, m, _, _)| b == a && m.overlaps(criteria))
            {
                let alpn = |f: &FilterChain| {
                    f.filter_chain_match
                        .as_ref()
                        .map(|m| m.application_protocols.clone())
                };
                let why = if alpn(fc) != alpn(ofc) {
                    "choosing a chain by the application protocol of plain-text connections \
                     (http_inspector) is not supported yet"
                } else {
                    "the same server_names, transport_protocol and application_protocols: \
                     Envoy refuses such duplicates"
                };
                e.at(path, format!("matches {a} as {other} does ({why})"));
            }
            seen.push((*a, criteria, path, fc));
        }
    }
    let default = match (wildcard, default_filter_chain) {
        (Some(w), Some(_)) => {
            // A chain that matches everything wins over the default chain, as in Envoy.
            ignored.push(format!(
                "listener {key:?}: default_filter_chain (unreachable: {} matches every \
                 connection)",
                w.0
            ));
            Some(w)
        }
        (Some(w), None) => Some(w),
        (None, Some(d)) => Some(("default_filter_chain".to_owned(), d)),
        (None, None) if specific.is_empty() => {
            e.at("filter_chains", "a listener needs a filter chain");
            None
        }
        (None, None) => {
            ignored.push(format!(
                "listener {key:?}: no default filter chain: a connection no chain matches is \
                 answered 404 over HTTP (Envoy closes it)"
            ));
            None
        }
    };
    let own = default
        .map(|(path, fc)| filter_chain(e, &path, fc, ctx, key, ignored))
        .unwrap_or_default();
    let mut chains = Vec::new();
    let mut names = HashSet::new();
    for (path, fc, addrs, criteria) in &specific {
        let chain = filter_chain(e, path, fc, ctx, key, ignored);
        if criteria.application_protocols.is_empty() {
            application_protocols(e, path, fc, &chain);
        }
        // Chain names are optional and need not be unique in Envoy; the index always is.
        let label = if !fc.name.is_empty() && names.insert(fc.name.as_str()) {
            fc.name.clone()
        } else {
            path.clone()
        };
        chains.push((label, chain, addrs, criteria));
    }

    if e.count() != before {
        return Outcome::Failed;
    }
    if let Some(why) = own
        .waiting
        .iter()
        .chain(chains.iter().filter_map(|(_, c, _, _)| c.waiting.as_ref()))
        .next()
    {
        return Outcome::Warming(why.clone());
    }
    let Some(addr) = addr else {
        return Outcome::Failed;
    };
    let Some(mut cfg) = listener_config(e, key, &addr, own) else {
        return Outcome::Failed;
    };
    cfg.bind_to_port = bind;
    cfg.use_original_dst = original_dst;
    // Envoy's default is 15 s, as the model's; 0: no limit, in both.
    if let Some(t) = dur(e, "listener_filters_timeout", listener_filters_timeout) {
        cfg.listener_filters_timeout = t;
    }
    cfg.continue_on_listener_filters_timeout = *continue_on_listener_filters_timeout;
    let mut out = vec![cfg];
    for (label, chain, addrs, criteria) in chains {
        for a in addrs {
            let name = if addrs.len() == 1 {
                format!("{key}/{label}")
            } else {
                format!("{key}/{label}/{a}")
            };
            let Some(mut c) = listener_config(e, &name, &a.to_string(), chain.clone()) else {
                return Outcome::Failed;
            };
            c.bind_to_port = false;
            c.chain_of = Some(key.to_owned());
            c.chain_match = criteria.inspects().then(|| criteria.clone());
            out.push(c);
        }
    }
    Outcome::Ready(out)
}

/// A listener of the model carrying `chain` (its defaults — max_connections, timeouts —
/// come from the model's own deserializer).
fn listener_config(
    e: &mut Errs<'_>,
    name: &str,
    addr: &str,
    chain: Chain,
) -> Option<ListenerConfig> {
    let base = serde_json::json!({ "name": name, "address": addr });
    let mut cfg = match serde_json::from_value::<ListenerConfig>(base) {
        Ok(c) => c,
        Err(err) => {
            e.at("", format!("cannot build the listener {name:?}: {err}"));
            return None;
        }
    };
    cfg.filters = chain.filters;
    cfg.tcp_proxy = chain.tcp_proxy;
    if let Some(t) = chain.request_header_timeout {
        cfg.request_header_timeout = t;
    }
    Some(cfg)
}

/// What a filter chain's match selects.
enum Dests {
    /// Every connection (no criterion set).
    All,
    /// Connections to these addresses (`0.0.0.0:port` for any address at that port).
    Some(Vec<SocketAddr>),
}

/// The destinations `fc` matches and its TLS criteria, or `None` (with errors) when its match
/// cannot be served. Supported: `destination_port`, `prefix_ranges` of single addresses (or
/// `0.0.0.0/0`, `::/0`: any), `server_names`, `transport_protocol`, and
/// `application_protocols` — the ClientHello's on a chain for TLS connections (`tls` or
/// `server_names`), else HTTP ones on an HTTP chain (http_inspector's: checked by
/// [`application_protocols`]).
#[allow(deprecated)]
fn chain_match(
    e: &mut Errs<'_>,
    path: &str,
    fc: &FilterChain,
    own_port: Option<u16>,
    redirecting: bool,
) -> Option<(Dests, ChainMatch)> {
    let Some(m) = &fc.filter_chain_match else {
        return Some((Dests::All, ChainMatch::default()));
    };
    let path = join(path, "filter_chain_match");
    let FilterChainMatch {
        destination_port,
        prefix_ranges,
        address_suffix,
        suffix_len,
        direct_source_prefix_ranges,
        source_type,
        source_prefix_ranges,
        source_ports,
        server_names,
        transport_protocol,
        application_protocols,
    } = m;
    let before = e.count();
    refuse!(e, path; address_suffix, suffix_len, direct_source_prefix_ranges,
        source_prefix_ranges, source_ports);
    if *source_type != 0 {
        e.unsupported(&path, "source_type");
    }
    let mut criteria = ChainMatch::default();
    for (j, n) in server_names.iter().enumerate() {
        match server_name_problem(n) {
            Some(p) => e.at(&format!("{path}.server_names[{j}]"), p),
            None => criteria.server_names.push(n.to_ascii_lowercase()),
        }
    }
    match transport_protocol.as_str() {
        "" => {}
        "raw_buffer" => criteria.transport_protocol = Some(TransportProtocol::RawBuffer),
        "tls" => criteria.transport_protocol = Some(TransportProtocol::Tls),
        other => e.at(
            &join(&path, "transport_protocol"),
            format!("{other:?} is not a transport protocol (raw_buffer or tls)"),
        ),
    }
    let port = match destination_port.as_ref().map(|p| p.value) {
        Some(p) => match u16::try_from(p) {
            Ok(p) if p > 0 => Some(p),
            _ => {
                e.at(
                    &join(&path, "destination_port"),
                    format!("{p} is not a port"),
                );
                None
            }
        },
        None => None,
    };
    let mut ips = Vec::new();
    let mut any_ip = prefix_ranges.is_empty();
    for (j, r) in prefix_ranges.iter().enumerate() {
        let rpath = format!("{path}.prefix_ranges[{j}]");
        let Ok(ip) = r.address_prefix.parse::<IpAddr>() else {
            e.at(
                &join(&rpath, "address_prefix"),
                format!("expected an IP address, got {:?}", r.address_prefix),
            );
            continue;
        };
        let len = r.prefix_len.as_ref().map_or(0, |l| l.value);
        let full = if ip.is_ipv4() { 32 } else { 128 };
        if len == 0 {
            any_ip = true;
        } else if len == full {
            ips.push(ip);
        } else {
            e.at(
                &rpath,
                format!(
                    "{ip}/{len}: not supported yet (only single addresses, /{full}, or any, /0)"
                ),
            );
        }
    }
    // Only a TLS connection has a server name or a ClientHello's ALPN; on a chain for
    // plain text, application_protocols are http_inspector's (see `application_protocols`).
    if criteria.transport_protocol == Some(TransportProtocol::Tls)
        || !criteria.server_names.is_empty()
    {
        for (j, p) in application_protocols.iter().enumerate() {
            if p.is_empty() || p.len() > 255 {
                e.at(
                    &format!("{path}.application_protocols[{j}]"),
                    "an ALPN protocol has 1 to 255 bytes",
                );
            }
        }
        criteria.application_protocols = application_protocols.clone();
    }
    if e.count() != before {
        return None;
    }
    if any_ip {
        // A range that matches every address makes the others irrelevant.
        return Some((
            match port {
                Some(p) => Dests::Some(vec![SocketAddr::new(IpAddr::from([0, 0, 0, 0]), p)]),
                None => Dests::All,
            },
            criteria,
        ));
    }
    // Addresses without a port: on a listener that accepts only its own port (or a virtual
    // one, reached only for its port) that port is implied; a redirecting listener sees any.
    let port = match port.or(own_port.filter(|_| !redirecting)) {
        Some(p) => p,
        None => {
            e.at(
                &join(&path, "prefix_ranges"),
                "addresses without a destination_port on a use_original_dst listener: not \
                 supported yet (a chain matches an address with its port)",
            );
            return None;
        }
    };
    Some((
        Dests::Some(
            ips.into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect(),
        ),
        criteria,
    ))
}

/// HTTP connections carry `application_protocols` `http/1.1`, `http/1.0`, `h2c`, `h2` (set by
/// `http_inspector`): on an HTTP chain such a match selects what the chain serves anyway. Any
/// other use would choose between chains by protocol, which the model cannot.
fn application_protocols(e: &mut Errs<'_>, path: &str, fc: &FilterChain, chain: &Chain) {
    let Some(m) = &fc.filter_chain_match else {
        return;
    };
    if m.application_protocols.is_empty() {
        return;
    }
    let http = ["http/1.1", "http/1.0", "h2c", "h2"];
    let all_http = m
        .application_protocols
        .iter()
        .all(|p| http.contains(&p.as_str()));
    if !all_http || chain.tcp_proxy.is_some() {
        e.at(
            &format!("{path}.filter_chain_match.application_protocols"),
            format!(
                "{:?}: not supported yet (only HTTP protocols on an http_connection_manager \
                 chain)",
                m.application_protocols
            ),
        );
    }
}

/// `ip:port` of a socket address (a host name too when `names_ok`, for STRICT_DNS).
#[allow(deprecated)]
pub(super) fn socket_address(
    e: &mut Errs<'_>,
    path: &str,
    a: &Address,
    names_ok: bool,
) -> Option<String> {
    let sa = match &a.address {
        Some(address::Address::SocketAddress(sa)) => sa,
        Some(address::Address::Pipe(_)) => {
            e.at(&join(path, "pipe"), "not supported yet");
            return None;
        }
        Some(address::Address::EnvoyInternalAddress(_)) => {
            e.at(&join(path, "envoy_internal_address"), "not supported yet");
            return None;
        }
        None => {
            e.at(path, "needs a socket_address");
            return None;
        }
    };
    let path = join(path, "socket_address");
    let SocketAddress {
        protocol,
        address,
        resolver_name,
        ipv4_compat,
        network_namespace_filepath,
        port_specifier,
    } = sa;
    let before = e.count();
    if *protocol != socket_address::Protocol::Tcp as i32 {
        e.at(&join(&path, "protocol"), "only TCP is supported");
    }
    refuse!(e, path; resolver_name, ipv4_compat, network_namespace_filepath);
    let port = match port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) => match u16::try_from(*p) {
            Ok(p) => Some(p),
            Err(_) => {
                e.at(&join(&path, "port_value"), format!("{p} is not a port"));
                None
            }
        },
        Some(socket_address::PortSpecifier::NamedPort(_)) => {
            e.unsupported(&path, "named_port");
            None
        }
        None => {
            e.at(&join(&path, "port_value"), "required");
            None
        }
    };
    let port = port?;
    if e.count() != before {
        return None;
    }
    match address.parse::<IpAddr>() {
        Ok(ip) => Some(SocketAddr::new(ip, port).to_string()),
        Err(_) if names_ok && !address.is_empty() && !address.contains(':') => {
            Some(format!("{address}:{port}"))
        }
        Err(_) => {
            e.at(
                &join(&path, "address"),
                format!("expected an IP address, got {address:?}"),
            );
            None
        }
    }
}

fn listener_filter(
    e: &mut Errs<'_>,
    path: &str,
    lf: &ListenerFilter,
    key: &str,
    ignored: &mut Vec<String>,
) {
    let ListenerFilter {
        name,
        filter_disabled: _,
        config_type,
    } = lf;
    let path = format!("{path} ({name})");
    match config_type {
        Some(listener_filter::ConfigType::TypedConfig(any)) => match filters::config(any) {
            Ok(c) if filters::IGNORED_LISTENER_FILTER_TYPES.contains(&c.type_name()) => {
                ignored.push(format!("listener {key:?}: {path}"));
            }
            Ok(c) => e.at(
                &path,
                format!("listener filter {} not supported yet", c.type_name()),
            ),
            Err(err) => e.at(&join(&path, "typed_config"), err),
        },
        Some(listener_filter::ConfigType::ConfigDiscovery(_)) => {
            e.unsupported(&path, "config_discovery")
        }
        None => e.at(&path, "typed_config: required"),
    }
}

#[allow(deprecated)]
fn filter_chain(
    e: &mut Errs<'_>,
    path: &str,
    fc: &FilterChain,
    ctx: &Context<'_>,
    key: &str,
    ignored: &mut Vec<String>,
) -> Chain {
    let FilterChain {
        filter_chain_match: _,
        filters: network_filters,
        use_proxy_proto,
        metadata: _,
        transport_socket,
        transport_socket_connect_timeout: _,
        name: _,
    } = fc;
    refuse!(e, path; use_proxy_proto);
    if transport_socket.is_some() {
        e.at(
            &join(path, "transport_socket"),
            "not supported yet (TLS termination on xDS listeners)",
        );
    }
    let before = e.count();
    let mut out = Chain::default();
    let mut terminal = None;
    for (i, f) in network_filters.iter().enumerate() {
        let fpath = format!("{path}.filters[{i}] ({})", f.name);
        if let Some(t) = &terminal {
            e.at(
                &fpath,
                format!("comes after the terminal filter {t}: it would never run"),
            );
            continue;
        }
        let any = match &f.config_type {
            Some(filter::ConfigType::TypedConfig(any)) => any,
            Some(filter::ConfigType::ConfigDiscovery(_)) => {
                e.unsupported(&fpath, "config_discovery");
                continue;
            }
            None => {
                e.at(&fpath, "typed_config: required");
                continue;
            }
        };
        let cfg = match filters::config(any) {
            Ok(c) => c,
            Err(err) => {
                e.at(&join(&fpath, "typed_config"), err);
                continue;
            }
        };
        let tname = cfg.type_name().to_owned();
        match filters::network_kind(&f.name, &tname) {
            Kind::Security => e.at(
                &fpath,
                format!("{tname} is not implemented: refusing to serve without it"),
            ),
            Kind::Ignored => ignored.push(format!("listener {key:?}: {fpath}")),
            Kind::Unknown => e.at(
                &fpath,
                format!("unknown network filter type {tname} (not supported)"),
            ),
            Kind::Known if tname == filters::HCM => {
                terminal = Some(f.name.clone());
                match cfg.decode::<HttpConnectionManager>() {
                    Ok(hcm) => {
                        http_connection_manager(e, &fpath, &hcm, ctx, key, ignored, &mut out)
                    }
                    Err(err) => e.at(&fpath, err),
                }
            }
            Kind::Known => {
                terminal = Some(f.name.clone());
                match cfg.decode::<TcpProxy>() {
                    Ok(tp) => tcp_proxy(e, &fpath, &tp, ctx, &mut out),
                    Err(err) => e.at(&fpath, err),
                }
            }
        }
    }
    if terminal.is_none() && e.count() == before {
        e.at(
            &join(path, "filters"),
            "needs an http_connection_manager or a tcp_proxy filter",
        );
    }
    out
}

#[allow(deprecated)]
fn tcp_proxy(e: &mut Errs<'_>, path: &str, tp: &TcpProxy, ctx: &Context<'_>, out: &mut Chain) {
    let TcpProxy {
        stat_prefix: _,
        on_demand,
        metadata_match,
        idle_timeout,
        downstream_idle_timeout,
        upstream_idle_timeout,
        access_log: _,
        max_connect_attempts,
        backoff_options,
        hash_policy,
        tunneling_config,
        max_downstream_connection_duration,
        max_downstream_connection_duration_jitter_percentage,
        access_log_flush_interval: _,
        flush_access_log_on_connected: _,
        access_log_options: _,
        proxy_protocol_tlvs,
        proxy_protocol_tlv_merge_policy: _,
        upstream_connect_mode,
        max_early_data_bytes,
        check_drain_close: _,
        cluster_specifier,
    } = tp;
    refuse!(e, path; on_demand, metadata_match, idle_timeout, downstream_idle_timeout,
        upstream_idle_timeout, max_connect_attempts, backoff_options, hash_policy,
        tunneling_config, max_downstream_connection_duration,
        max_downstream_connection_duration_jitter_percentage, proxy_protocol_tlvs,
        upstream_connect_mode, max_early_data_bytes);
    match cluster_specifier {
        Some(tcp_proxy::ClusterSpecifier::Cluster(c)) => {
            if ctx.absent_clusters.contains(c) {
                out.waiting = Some(format!("waiting for cluster {c:?} (tcp_proxy)"));
            }
            out.tcp_proxy = Some(TcpProxyConfig { cluster: c.clone() });
        }
        Some(tcp_proxy::ClusterSpecifier::WeightedClusters(_)) => {
            e.unsupported(path, "weighted_clusters")
        }
        None => e.at(&join(path, "cluster"), "required"),
    }
}

#[allow(deprecated)]
fn http_connection_manager(
    e: &mut Errs<'_>,
    path: &str,
    hcm: &HttpConnectionManager,
    ctx: &Context<'_>,
    key: &str,
    ignored: &mut Vec<String>,
    out: &mut Chain,
) {
    let HttpConnectionManager {
        codec_type,
        stat_prefix: _,
        http_filters,
        add_user_agent,
        // Observability only.
        tracing: _,
        common_http_protocol_options,
        http1_safe_max_connection_duration,
        http_protocol_options,
        http2_protocol_options,
        http3_protocol_options,
        // The `server` header value: cosmetic.
        server_name: _,
        server_header_transformation: _,
        scheme_header_transformation,
        max_request_headers_kb,
        stream_idle_timeout,
        stream_flush_timeout,
        request_timeout,
        request_headers_timeout,
        drain_timeout: _,
        drain_timeout_jitter: _,
        delayed_close_timeout: _,
        access_log: _,
        access_log_flush_interval: _,
        flush_access_log_on_new_request: _,
        access_log_options: _,
        use_remote_address,
        xff_num_trusted_hops,
        original_ip_detection_extensions,
        early_header_mutation_extensions,
        internal_address_config,
        skip_xff_append,
        via,
        generate_request_id,
        preserve_external_request_id,
        always_set_request_id_in_response,
        // SANITIZE (the default) is accepted: without TLS there is no client certificate.
        forward_client_cert_details,
        set_current_client_cert_details,
        forward_client_cert_matcher,
        proxy_100_continue,
        represent_ipv4_remote_address_as_ipv4_mapped_ipv6,
        upgrade_configs,
        normalize_path,
        merge_slashes,
        path_with_escaped_slashes_action,
        request_id_extension,
        local_reply_config,
        strip_matching_host_port,
        stream_error_on_invalid_http_message,
        path_normalization_options,
        strip_trailing_host_dot,
        proxy_status_config,
        typed_header_validation_config,
        append_x_forwarded_port,
        append_local_overload,
        add_proxy_protocol_connection_state,
        forward_proto_config,
        route_specifier,
        strip_port_mode,
    } = hcm;
    refuse!(e, path; add_user_agent, common_http_protocol_options,
        http1_safe_max_connection_duration, http_protocol_options, http2_protocol_options,
        http3_protocol_options, scheme_header_transformation, max_request_headers_kb,
        stream_flush_timeout, use_remote_address, xff_num_trusted_hops,
        original_ip_detection_extensions, early_header_mutation_extensions,
        internal_address_config, skip_xff_append, via, preserve_external_request_id,
        always_set_request_id_in_response, forward_client_cert_details,
        set_current_client_cert_details, forward_client_cert_matcher, proxy_100_continue,
        represent_ipv4_remote_address_as_ipv4_mapped_ipv6, normalize_path, merge_slashes,
        path_with_escaped_slashes_action, request_id_extension, local_reply_config,
        strip_matching_host_port, stream_error_on_invalid_http_message,
        path_normalization_options, strip_trailing_host_dot, proxy_status_config,
        typed_header_validation_config, append_x_forwarded_port, append_local_overload,
        add_proxy_protocol_connection_state, forward_proto_config);
    if strip_port_mode.is_some() {
        e.unsupported(path, "strip_any_host_port");
    }
    if *codec_type != http_connection_manager::CodecType::Auto as i32 {
        e.at(
            &join(path, "codec_type"),
            "only AUTO is supported yet (Mecha serves HTTP/1.1 and h2c on every listener)",
        );
    }
    // Mecha's router always makes sure a request carries an x-request-id.
    if boolv(generate_request_id) == Some(false) {
        e.unsupported(path, "generate_request_id: false");
    }
    if let Some(t) = super::duration(e, &join(path, "request_timeout"), request_timeout) {
        if !t.is_zero() {
            e.unsupported(path, "request_timeout");
        }
    }
    if let Some(t) = dur(
        e,
        &join(path, "request_headers_timeout"),
        request_headers_timeout,
    ) {
        if t.0.is_zero() {
            e.at(
                &join(path, "request_headers_timeout"),
                "0 (no limit) is not supported yet",
            );
        } else {
            out.request_header_timeout = Some(t);
        }
    }
    for (i, u) in upgrade_configs.iter().enumerate() {
        upgrade(e, &format!("{path}.upgrade_configs[{i}]"), u);
    }
    let idle = dur(e, &join(path, "stream_idle_timeout"), stream_idle_timeout);

    let router_ok = http_filter_chain(e, path, http_filters, key, ignored);

    let router = match route_specifier {
        Some(http_connection_manager::RouteSpecifier::Rds(rds)) => {
            rds_router(e, &join(path, "rds"), rds, ctx, out)
        }
        Some(http_connection_manager::RouteSpecifier::RouteConfig(rc)) => {
            let before = e.count();
            let r = route::translate_config(rc, &join(path, "route_config"), e, ignored, key);
            (e.count() == before).then_some(r)
        }
        Some(http_connection_manager::RouteSpecifier::ScopedRoutes(_)) => {
            e.unsupported(path, "scoped_routes");
            None
        }
        None => {
            e.at(path, "needs rds or route_config");
            None
        }
    };
    if let (Some(mut router), true) = (router, router_ok) {
        // A route's own idle_timeout wins over the connection manager's.
        if let Some(idle) = idle {
            for vh in &mut router.virtual_hosts {
                for r in &mut vh.routes {
                    r.idle_timeout.get_or_insert(idle);
                }
            }
        }
        out.filters.push(FilterConfig::Router(router));
    }
}

fn rds_router(
    e: &mut Errs<'_>,
    path: &str,
    rds: &Rds,
    ctx: &Context<'_>,
    out: &mut Chain,
) -> Option<RouterConfig> {
    let Rds {
        config_source,
        route_config_name,
    } = rds;
    if let Some(cs) = config_source {
        config_source_is_ads(e, &join(path, "config_source"), cs);
    }
    if route_config_name.is_empty() {
        e.at(&join(path, "route_config_name"), "required");
        return None;
    }
    match ctx.routers.get(route_config_name.as_str()) {
        Some(r) => Some(RouterConfig::clone(r)),
        // Its errors are reported under the route configuration.
        None if ctx.res.routes.contains_key(route_config_name) => None,
        None => {
            out.waiting = Some(format!("waiting for route_config {route_config_name:?}"));
            None
        }
    }
}

/// Everything arrives on the one ADS stream.
pub(super) fn config_source_is_ads(e: &mut Errs<'_>, path: &str, cs: &ConfigSource) {
    match &cs.config_source_specifier {
        Some(config_source::ConfigSourceSpecifier::Ads(_))
        | Some(config_source::ConfigSourceSpecifier::Self_(_)) => {}
        _ => e.at(path, "only ads (or self) config sources are supported"),
    }
}

fn upgrade(e: &mut Errs<'_>, path: &str, u: &UpgradeConfig) {
    let UpgradeConfig {
        upgrade_type,
        filters,
        enabled,
    } = u;
    // Pingora forwards an `Upgrade: websocket` request and then the bytes both ways.
    if !upgrade_type.eq_ignore_ascii_case("websocket") {
        e.at(
            &join(path, "upgrade_type"),
            format!("{upgrade_type:?} not supported yet (only websocket)"),
        );
    }
    refuse!(e, path; filters);
    if boolv(enabled) == Some(false) {
        e.unsupported(path, "enabled: false");
    }
}

/// Checks the HTTP filters; `true` when the router is there and last.
fn http_filter_chain(
    e: &mut Errs<'_>,
    path: &str,
    list: &[HttpFilter],
    key: &str,
    ignored: &mut Vec<String>,
) -> bool {
    let mut router_at = None;
    for (i, f) in list.iter().enumerate() {
        let HttpFilter {
            name,
            is_optional,
            disabled,
            config_type,
        } = f;
        let fpath = format!("{path}: http_filters[{i}] ({name})");
        let any = match config_type {
            Some(http_filter::ConfigType::TypedConfig(any)) => any,
            Some(http_filter::ConfigType::ConfigDiscovery(_)) => {
                e.unsupported(&fpath, "config_discovery");
                continue;
            }
            None => {
                e.at(&fpath, "typed_config: required");
                continue;
            }
        };
        let cfg = match filters::config(any) {
            Ok(c) => c,
            Err(err) => {
                e.at(&join(&fpath, "typed_config"), err);
                continue;
            }
        };
        let tname = cfg.type_name().to_owned();
        match filters::http_kind(name, &tname) {
            Kind::Security => e.at(
                &fpath,
                format!("{tname} is not implemented: refusing to serve without it"),
            ),
            Kind::Ignored => ignored.push(format!("listener {key:?}: {fpath}")),
            Kind::Unknown if *is_optional => ignored.push(format!(
                "listener {key:?}: {fpath} (optional, unknown type {tname})"
            )),
            Kind::Unknown => e.at(
                &fpath,
                format!("unknown HTTP filter type {tname} and not is_optional"),
            ),
            // Disabled by default and enabled per route: per-route configs are refused, so
            // a disabled filter never runs.
            Kind::Known if *disabled && tname != filters::ROUTER => {
                ignored.push(format!("listener {key:?}: {fpath} (disabled)"))
            }
            Kind::Known if tname == filters::ROUTER => {
                if *disabled {
                    e.unsupported(&fpath, "disabled");
                }
                match cfg.decode::<Router>() {
                    Ok(r) => router(e, &fpath, &r),
                    Err(err) => e.at(&fpath, err),
                }
                router_at = Some(i);
            }
            Kind::Known => match cfg.decode::<HttpFault>() {
                Ok(f) if f == HttpFault::default() => ignored.push(format!(
                    "listener {key:?}: {fpath} (empty: injects no fault)"
                )),
                Ok(_) => e.at(&fpath, "fault injection not supported yet"),
                Err(err) => e.at(&fpath, err),
            },
        }
    }
    match router_at {
        Some(i) if i + 1 == list.len() => true,
        Some(i) => {
            e.at(
                &format!("{path}: http_filters"),
                format!(
                    "router must be last (it is http_filters[{i}] of {})",
                    list.len()
                ),
            );
            false
        }
        None => {
            e.at(
                &format!("{path}: http_filters"),
                "needs the router (envoy.filters.http.router) as the last filter",
            );
            false
        }
    }
}

#[allow(deprecated)]
fn router(e: &mut Errs<'_>, path: &str, r: &Router) {
    let Router {
        dynamic_stats: _,
        start_child_span: _,
        upstream_log: _,
        upstream_log_options: _,
        // Mecha adds no x-envoy-* headers to suppress.
        suppress_envoy_headers: _,
        strict_check_headers,
        respect_expected_rq_timeout,
        suppress_grpc_request_failure_code_stats: _,
        upstream_http_filters,
        reject_connect_request_early_data,
    } = r;
    refuse!(e, path; strict_check_headers, respect_expected_rq_timeout, upstream_http_filters,
        reject_connect_request_early_data);
}
