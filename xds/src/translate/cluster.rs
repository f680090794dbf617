//! Cluster (+ ClusterLoadAssignment) → [`ClusterConfig`].

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers::Thresholds, cluster, CircuitBreakers, Cluster, OutlierDetection,
};
use envoy_types::pb::envoy::config::core::v3::{
    health_check, HealthCheck, HealthStatus, Http2ProtocolOptions, RoutingPriority,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options::{self, explicit_http_config},
    HttpProtocolOptions,
};
use mecha_mesh::bounds::MAX_ENDPOINT_PRIORITY;
use mecha_mesh::config::{
    CircuitBreakerConfig, ClusterConfig, Dur, EndpointConfig, HealthCheckConfig, HealthCheckKind,
    LbPolicy, OutlierConfig, UpstreamProtocol,
};

use super::listener::{config_source_is_ads, socket_address};
use super::{dur, filters, join, refuse, u32v, Errs};
use crate::resources::XdsResources;

#[derive(Clone)]
pub(super) enum Outcome {
    Ready(Box<ClusterConfig>),
    /// Its endpoints have not arrived.
    Warming(String),
    /// Nothing to send to (the model needs an endpoint): left out, routes to it answer 503.
    Empty(String),
    Failed,
}

/// Envoy's Maglev table size, which is Mecha's.
const MAGLEV_TABLE_SIZE: u64 = 65537;

#[allow(deprecated)]
pub(super) fn translate(
    key: &str,
    c: &Cluster,
    res: &XdsResources,
    assignments: &BTreeMap<&str, &[EndpointConfig]>,
    e: &mut Errs<'_>,
) -> Outcome {
    let before = e.count();
    let Cluster {
        transport_socket_matches,
        transport_socket_matcher,
        name,
        alt_stat_name: _,
        stats_matcher: _,
        eds_cluster_config,
        connect_timeout,
        per_connection_buffer_limit_bytes: _,
        per_connection_buffer_high_watermark_timeout: _,
        lb_policy,
        load_assignment,
        health_checks,
        max_requests_per_connection,
        circuit_breakers,
        upstream_http_protocol_options,
        common_http_protocol_options,
        http_protocol_options,
        http2_protocol_options,
        typed_extension_protocol_options,
        dns_refresh_rate,
        dns_jitter: _,
        dns_failure_refresh_rate: _,
        respect_dns_ttl,
        dns_lookup_family: _,
        dns_resolvers,
        use_tcp_for_dns_lookups,
        dns_resolution_config,
        typed_dns_resolver_config,
        wait_for_warm_on_init: _,
        outlier_detection,
        cleanup_interval: _,
        upstream_bind_config,
        lb_subset_config,
        common_lb_config,
        transport_socket,
        metadata: _,
        protocol_selection,
        upstream_connection_options: _,
        close_connections_on_host_health_failure,
        ignore_health_on_host_removal,
        filters,
        load_balancing_policy,
        lrs_server,
        lrs_report_endpoint_metrics,
        track_timeout_budgets: _,
        upstream_config,
        track_cluster_stats: _,
        preconnect_policy,
        connection_pool_per_downstream_connection,
        queuing_policies,
        cluster_discovery_type,
        lb_config,
    } = c;
    if name != key {
        e.at(
            "name",
            format!("{name:?} differs from the resource name {key:?}"),
        );
    }
    refuse!(e, ""; transport_socket_matches, transport_socket_matcher,
        max_requests_per_connection, upstream_http_protocol_options, common_http_protocol_options,
        http_protocol_options, respect_dns_ttl, dns_resolvers, use_tcp_for_dns_lookups,
        dns_resolution_config, typed_dns_resolver_config, upstream_bind_config,
        lb_subset_config, common_lb_config, protocol_selection,
        close_connections_on_host_health_failure, ignore_health_on_host_removal, filters,
        load_balancing_policy, lrs_server, lrs_report_endpoint_metrics, upstream_config,
        preconnect_policy, connection_pool_per_downstream_connection, queuing_policies);
    if transport_socket.is_some() {
        e.at(
            "transport_socket",
            "not supported yet (TLS to xDS clusters)",
        );
    }

    let mut cfg = ClusterConfig::with_endpoints(key, Vec::new());
    if let Some(t) = dur(e, "connect_timeout", connect_timeout) {
        cfg.connect_timeout = t;
    }
    let original_dst = matches!(cluster_discovery_type,
        Some(cluster::ClusterDiscoveryType::Type(t))
            if *t == cluster::DiscoveryType::OriginalDst as i32);
    lb(e, *lb_policy, lb_config, original_dst, &mut cfg);
    match health_checks.as_slice() {
        [] => {}
        [hc] => cfg.health_check = health(e, "health_checks[0]", hc),
        _ => e.at(
            "health_checks",
            format!(
                "{} health checks: only one is supported yet",
                health_checks.len()
            ),
        ),
    }
    if let Some(od) = outlier_detection {
        cfg.outlier_detection = outlier(e, "outlier_detection", od);
    }
    if let Some(cb) = circuit_breakers {
        cfg.circuit_breakers = breakers(e, "circuit_breakers", cb);
    }
    // Deprecated field: the same meaning as the typed protocol options.
    if let Some(h2) = http2_protocol_options {
        cfg.protocol = UpstreamProtocol::H2c;
        h2_options(e, "http2_protocol_options", h2, &mut cfg);
    }
    let mut keys: Vec<&String> = typed_extension_protocol_options.keys().collect();
    keys.sort();
    for k in keys {
        let path = format!("typed_extension_protocol_options[{k:?}]");
        let any = &typed_extension_protocol_options[k];
        if k != filters::HTTP_PROTOCOL_OPTIONS_KEY {
            e.at(&path, "not supported yet");
            continue;
        }
        match filters::config(any).and_then(|c| {
            if c.type_name() == filters::HTTP_PROTOCOL_OPTIONS {
                c.decode::<HttpProtocolOptions>()
            } else {
                Err(format!(
                    "expected {}, got {}",
                    filters::HTTP_PROTOCOL_OPTIONS,
                    c.type_name()
                ))
            }
        }) {
            Ok(o) => protocol_options(e, &path, &o, &mut cfg),
            Err(err) => e.at(&path, err),
        }
    }

    let kind = match cluster_discovery_type {
        None => Some(cluster::DiscoveryType::Static),
        Some(cluster::ClusterDiscoveryType::Type(t)) => {
            match cluster::DiscoveryType::try_from(*t) {
                Ok(t) => Some(t),
                Err(_) => {
                    e.at("type", format!("unknown discovery type {t}"));
                    None
                }
            }
        }
        Some(cluster::ClusterDiscoveryType::ClusterType(ct)) => {
            e.at(
                "cluster_type",
                format!("custom cluster type {:?} not supported yet", ct.name),
            );
            None
        }
    };
    let endpoints = match kind {
        Some(cluster::DiscoveryType::Eds) => {
            refuse!(e, ""; load_assignment);
            let mut service = key.to_owned();
            if let Some(eds) = eds_cluster_config {
                if let Some(cs) = &eds.eds_config {
                    config_source_is_ads(e, "eds_cluster_config.eds_config", cs);
                }
                if !eds.service_name.is_empty() {
                    service = eds.service_name.clone();
                }
            }
            match assignments.get(service.as_str()) {
                Some(eps) => Some(eps.to_vec()),
                // Its errors are reported under the endpoints resource.
                None if res.endpoints.contains_key(&service) => return Outcome::Failed,
                None => {
                    if e.count() != before {
                        return Outcome::Failed;
                    }
                    return Outcome::Warming(format!("waiting for endpoints {service:?}"));
                }
            }
        }
        Some(t @ (cluster::DiscoveryType::Static | cluster::DiscoveryType::StrictDns)) => {
            refuse!(e, ""; eds_cluster_config);
            let strict_dns = t == cluster::DiscoveryType::StrictDns;
            if strict_dns {
                if let Some(r) = dur(e, "dns_refresh_rate", dns_refresh_rate) {
                    cfg.dns_refresh = r;
                }
            }
            match load_assignment {
                Some(cla) => Some(assignment_inner(cla, "load_assignment", e, strict_dns)),
                None => {
                    e.at(
                        "load_assignment",
                        "required for STATIC and STRICT_DNS clusters",
                    );
                    None
                }
            }
        }
        Some(cluster::DiscoveryType::OriginalDst) => {
            refuse!(e, ""; load_assignment, eds_cluster_config);
            if e.count() != before {
                return Outcome::Failed;
            }
            cfg.original_dst = true;
            return Outcome::Ready(Box::new(cfg));
        }
        Some(cluster::DiscoveryType::LogicalDns) => {
            e.at("type", "LOGICAL_DNS not supported yet (use STRICT_DNS)");
            None
        }
        None => None,
    };
    if e.count() != before {
        return Outcome::Failed;
    }
    let Some(endpoints) = endpoints else {
        return Outcome::Failed;
    };
    if endpoints.is_empty() {
        return Outcome::Empty(
            "no usable endpoints (left out: routes to it answer 503)".to_owned(),
        );
    }
    cfg.endpoints = endpoints;
    Outcome::Ready(Box::new(cfg))
}

#[allow(deprecated)]
fn lb(
    e: &mut Errs<'_>,
    policy: i32,
    lb_config: &Option<cluster::LbConfig>,
    original_dst: bool,
    cfg: &mut ClusterConfig,
) {
    use cluster::LbPolicy as P;
    // An ORIGINAL_DST cluster's "policy" is the destination itself: Envoy requires
    // CLUSTER_PROVIDED there, and allows it nowhere else in the types translated here.
    match (P::try_from(policy), original_dst) {
        (Ok(P::ClusterProvided), true) => {}
        (_, true) => e.at(
            "lb_policy",
            "an ORIGINAL_DST cluster needs CLUSTER_PROVIDED (the destination picks the host)",
        ),
        _ => {}
    }
    if original_dst {
        match lb_config {
            None => {}
            Some(cluster::LbConfig::OriginalDstLbConfig(c)) => {
                let cluster::OriginalDstLbConfig {
                    use_http_header,
                    http_header_name,
                    upstream_port_override,
                    metadata_key,
                } = c;
                refuse!(e, "original_dst_lb_config"; use_http_header, http_header_name,
                    upstream_port_override, metadata_key);
            }
            Some(_) => e.at(
                "lb_config",
                "an ORIGINAL_DST cluster takes only original_dst_lb_config",
            ),
        }
        return;
    }
    cfg.lb_policy = match P::try_from(policy) {
        Ok(P::RoundRobin) => LbPolicy::RoundRobin,
        Ok(P::LeastRequest) => LbPolicy::LeastRequest,
        Ok(P::Random) => LbPolicy::Random,
        Ok(P::RingHash) => LbPolicy::RingHash,
        Ok(P::Maglev) => LbPolicy::Maglev,
        Ok(other) => {
            e.at(
                "lb_policy",
                format!("{} not supported yet", other.as_str_name()),
            );
            return;
        }
        Err(_) => {
            e.at("lb_policy", format!("unknown policy {policy}"));
            return;
        }
    };
    match lb_config {
        None => {}
        Some(cluster::LbConfig::RoundRobinLbConfig(c)) => {
            let slow_start_config = &c.slow_start_config;
            refuse!(e, "round_robin_lb_config"; slow_start_config);
        }
        Some(cluster::LbConfig::LeastRequestLbConfig(c)) => {
            // Mecha's least request is the power of two choices, Envoy's default.
            if u32v(&c.choice_count).is_some_and(|n| n != 2) {
                e.unsupported("least_request_lb_config", "choice_count other than 2");
            }
            let (bias, slow) = (&c.active_request_bias, &c.slow_start_config);
            refuse!(e, "least_request_lb_config"; bias, slow);
        }
        Some(cluster::LbConfig::RingHashLbConfig(c)) => {
            let (min, max, hash_function) =
                (&c.minimum_ring_size, &c.maximum_ring_size, &c.hash_function);
            refuse!(e, "ring_hash_lb_config"; min, max, hash_function);
        }
        Some(cluster::LbConfig::MaglevLbConfig(c))
            if c.table_size
                .as_ref()
                .is_some_and(|t| t.value != MAGLEV_TABLE_SIZE) =>
        {
            e.at(
                "maglev_lb_config.table_size",
                format!("only {MAGLEV_TABLE_SIZE} is supported yet"),
            );
        }
        Some(cluster::LbConfig::MaglevLbConfig(_)) => {}
        Some(cluster::LbConfig::OriginalDstLbConfig(_)) => {
            e.unsupported("", "original_dst_lb_config")
        }
    }
}

#[allow(deprecated)]
fn protocol_options(
    e: &mut Errs<'_>,
    path: &str,
    o: &HttpProtocolOptions,
    cfg: &mut ClusterConfig,
) {
    let HttpProtocolOptions {
        common_http_protocol_options,
        upstream_http_protocol_options,
        http_filters,
        header_validation_config,
        outlier_detection,
        request_mirror_policies,
        hash_policy,
        retry_policy,
        upstream_protocol_options,
    } = o;
    refuse!(e, path; upstream_http_protocol_options, http_filters, header_validation_config,
        outlier_detection, request_mirror_policies, hash_policy, retry_policy);
    if let Some(c) = common_http_protocol_options {
        // The upstream connection idle timeout (Istio sets one): a pool detail that does not
        // change what a request gets; the rest changes behaviour.
        let envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions {
            idle_timeout: _,
            max_connection_duration,
            max_connection_duration_jitter,
            max_headers_count,
            max_response_headers_kb,
            max_stream_duration,
            headers_with_underscores_action,
            max_requests_per_connection,
        } = c;
        let p = join(path, "common_http_protocol_options");
        refuse!(e, p; max_connection_duration, max_connection_duration_jitter, max_headers_count,
            max_response_headers_kb, max_stream_duration, headers_with_underscores_action,
            max_requests_per_connection);
    }
    match upstream_protocol_options {
        None => {}
        Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(x)) => {
            let p = join(path, "explicit_http_config");
            match &x.protocol_config {
                Some(explicit_http_config::ProtocolConfig::HttpProtocolOptions(h1)) => {
                    let h1 = &Some(h1.clone());
                    refuse!(e, p; h1);
                    cfg.protocol = UpstreamProtocol::Http1;
                }
                Some(explicit_http_config::ProtocolConfig::Http2ProtocolOptions(h2)) => {
                    // No transport socket: Envoy speaks h2 with prior knowledge, h2c.
                    cfg.protocol = UpstreamProtocol::H2c;
                    h2_options(e, &join(&p, "http2_protocol_options"), h2, cfg);
                }
                Some(explicit_http_config::ProtocolConfig::Http3ProtocolOptions(_)) => {
                    e.unsupported(&p, "http3_protocol_options")
                }
                None => {}
            }
        }
        Some(http_protocol_options::UpstreamProtocolOptions::UseDownstreamProtocolConfig(d)) => {
            let p = join(path, "use_downstream_protocol_config");
            let http_protocol_options::UseDownstreamHttpConfig {
                http_protocol_options,
                http2_protocol_options,
                http3_protocol_options,
            } = d;
            refuse!(e, p; http_protocol_options, http3_protocol_options);
            // Without HTTP/2 options every request goes as HTTP/1.1, as in Envoy.
            match http2_protocol_options {
                Some(h2) => {
                    cfg.protocol = UpstreamProtocol::Downstream;
                    h2_options(e, &join(&p, "http2_protocol_options"), h2, cfg);
                }
                None => cfg.protocol = UpstreamProtocol::Http1,
            }
        }
        Some(http_protocol_options::UpstreamProtocolOptions::AutoConfig(_)) => {
            e.unsupported(path, "auto_config")
        }
    }
}

#[allow(deprecated)]
fn h2_options(e: &mut Errs<'_>, path: &str, h2: &Http2ProtocolOptions, cfg: &mut ClusterConfig) {
    let Http2ProtocolOptions {
        hpack_table_size: _,
        max_concurrent_streams,
        // Flow-control windows and frame-flood limits: performance and protection knobs of
        // the HTTP/2 codec, not what a request gets.
        initial_stream_window_size: _,
        initial_connection_window_size: _,
        allow_connect,
        allow_metadata,
        max_outbound_frames: _,
        max_outbound_control_frames: _,
        max_consecutive_inbound_frames_with_empty_payload: _,
        max_inbound_priority_frames_per_stream: _,
        max_inbound_window_update_frames_per_data_frame_sent: _,
        stream_error_on_invalid_http_messaging,
        override_stream_error_on_invalid_http_message,
        custom_settings_parameters,
        connection_keepalive,
        use_oghttp2_codec: _,
        max_metadata_size: _,
        enable_huffman_encoding: _,
        max_header_field_size_kb: _,
        disallow_obs_text: _,
        stream_reset_burst: _,
        stream_reset_rate: _,
    } = h2;
    refuse!(e, path; allow_connect, allow_metadata, stream_error_on_invalid_http_messaging,
        override_stream_error_on_invalid_http_message, custom_settings_parameters,
        connection_keepalive);
    if let Some(n) = u32v(max_concurrent_streams) {
        match usize::try_from(n) {
            Ok(n) if n > 0 => cfg.max_h2_streams = n,
            _ => e.at(
                &join(path, "max_concurrent_streams"),
                format!("must be at least 1, got {n}"),
            ),
        }
    }
}

#[allow(deprecated)]
fn health(e: &mut Errs<'_>, path: &str, hc: &HealthCheck) -> Option<HealthCheckConfig> {
    let HealthCheck {
        timeout,
        interval,
        initial_jitter: _,
        interval_jitter: _,
        interval_jitter_percent: _,
        unhealthy_threshold,
        healthy_threshold,
        alt_port,
        reuse_connection: _,
        no_traffic_interval,
        no_traffic_healthy_interval,
        unhealthy_interval,
        unhealthy_edge_interval,
        healthy_edge_interval,
        event_log_path: _,
        event_logger: _,
        event_service: _,
        always_log_health_check_failures: _,
        always_log_health_check_success: _,
        tls_options,
        transport_socket_match_criteria,
        health_checker,
    } = hc;
    let before = e.count();
    refuse!(e, path; alt_port, no_traffic_interval, no_traffic_healthy_interval,
        unhealthy_interval, unhealthy_edge_interval, healthy_edge_interval, tls_options,
        transport_socket_match_criteria);
    // Envoy requires all four.
    let mut need = |field: &str, present: bool| {
        if !present {
            e.at(&join(path, field), "required");
        }
    };
    need("timeout", timeout.is_some());
    need("interval", interval.is_some());
    need("unhealthy_threshold", unhealthy_threshold.is_some());
    need("healthy_threshold", healthy_threshold.is_some());
    let timeout = dur(e, &join(path, "timeout"), timeout);
    let interval = dur(e, &join(path, "interval"), interval);
    let count = |v: &Option<envoy_types::pb::google::protobuf::UInt32Value>| {
        u32v(v).and_then(|n| usize::try_from(n).ok())
    };
    let (kind, hc_path, service) = match health_checker {
        Some(health_check::HealthChecker::HttpHealthCheck(h)) => {
            let hp = join(path, "http_health_check");
            let health_check::HttpHealthCheck {
                host,
                path: p,
                send,
                receive,
                response_buffer_size: _,
                request_headers_to_add,
                request_headers_to_remove,
                expected_statuses,
                retriable_statuses,
                codec_client_type,
                service_name_matcher,
                method,
            } = h;
            refuse!(e, hp; host, send, receive, request_headers_to_add,
                request_headers_to_remove, expected_statuses, retriable_statuses,
                codec_client_type, service_name_matcher, method);
            (HealthCheckKind::Http, p.clone(), String::new())
        }
        Some(health_check::HealthChecker::GrpcHealthCheck(g)) => {
            let gp = join(path, "grpc_health_check");
            let health_check::GrpcHealthCheck {
                service_name,
                authority,
                initial_metadata,
            } = g;
            refuse!(e, gp; authority, initial_metadata);
            (HealthCheckKind::Grpc, String::new(), service_name.clone())
        }
        Some(health_check::HealthChecker::TcpHealthCheck(t)) => {
            // A connect-only check: Mecha's TCP check.
            let tp = join(path, "tcp_health_check");
            let (send, receive, proxy) = (&t.send, &t.receive, &t.proxy_protocol_config);
            refuse!(e, tp; send, receive, proxy);
            (HealthCheckKind::Tcp, String::new(), String::new())
        }
        Some(health_check::HealthChecker::CustomHealthCheck(_)) => {
            e.unsupported(path, "custom_health_check");
            return None;
        }
        None => {
            e.at(
                path,
                "needs http_health_check, grpc_health_check or tcp_health_check",
            );
            return None;
        }
    };
    if e.count() != before {
        return None;
    }
    Some(HealthCheckConfig {
        kind,
        path: if hc_path.is_empty() {
            "/".to_owned()
        } else {
            hc_path
        },
        service,
        interval: interval?,
        timeout: timeout?,
        healthy_threshold: count(healthy_threshold)?,
        unhealthy_threshold: count(unhealthy_threshold)?,
    })
}

#[allow(deprecated)]
fn outlier(e: &mut Errs<'_>, path: &str, od: &OutlierDetection) -> Option<OutlierConfig> {
    let OutlierDetection {
        consecutive_5xx,
        // How often Envoy re-evaluates ejections; Mecha ejects and returns endpoints when
        // their time is up.
        interval: _,
        base_ejection_time,
        max_ejection_percent,
        enforcing_consecutive_5xx,
        enforcing_success_rate,
        success_rate_minimum_hosts: _,
        success_rate_request_volume: _,
        success_rate_stdev_factor: _,
        consecutive_gateway_failure: _,
        enforcing_consecutive_gateway_failure,
        split_external_local_origin_errors,
        consecutive_local_origin_failure,
        enforcing_consecutive_local_origin_failure,
        enforcing_local_origin_success_rate,
        failure_percentage_threshold: _,
        enforcing_failure_percentage,
        enforcing_failure_percentage_local_origin,
        failure_percentage_minimum_hosts: _,
        failure_percentage_request_volume: _,
        max_ejection_time,
        max_ejection_time_jitter,
        successful_active_health_check_uneject_host,
        monitors,
        always_eject_one_host,
        detect_degraded_hosts,
    } = od;
    let before = e.count();
    refuse!(e, path; max_ejection_time_jitter, successful_active_health_check_uneject_host,
        monitors, always_eject_one_host, detect_degraded_hosts);
    // Envoy enforces success-rate ejection by default (100 %); Mecha has none, so it must be
    // switched off explicitly (Istio does).
    if u32v(enforcing_success_rate) != Some(0) {
        e.at(
            &join(path, "enforcing_success_rate"),
            "success-rate ejection not supported yet (set enforcing_success_rate: 0)",
        );
    }
    for (field, v, default) in [
        ("enforcing_consecutive_5xx", enforcing_consecutive_5xx, 100),
        (
            "enforcing_consecutive_gateway_failure",
            enforcing_consecutive_gateway_failure,
            0,
        ),
        (
            "enforcing_consecutive_local_origin_failure",
            enforcing_consecutive_local_origin_failure,
            100,
        ),
        (
            "enforcing_local_origin_success_rate",
            enforcing_local_origin_success_rate,
            100,
        ),
        (
            "enforcing_failure_percentage",
            enforcing_failure_percentage,
            0,
        ),
        (
            "enforcing_failure_percentage_local_origin",
            enforcing_failure_percentage_local_origin,
            0,
        ),
    ] {
        let n = u32v(v).unwrap_or(default);
        let ok = match field {
            // Only "always" or "never" map; the model has no enforcement percentages.
            "enforcing_consecutive_5xx" | "enforcing_consecutive_local_origin_failure" => n == 100,
            // Local-origin success rate only counts when errors are split.
            "enforcing_local_origin_success_rate" => !split_external_local_origin_errors || n == 0,
            _ => n == 0,
        };
        if !ok {
            e.at(&join(path, field), format!("{n} not supported yet"));
        }
    }
    let c5 = u32v(consecutive_5xx).unwrap_or(5);
    // Without the split, Envoy counts connect failures as 5xx; Mecha keeps a separate count,
    // given the same threshold.
    let connect = if *split_external_local_origin_errors {
        u32v(consecutive_local_origin_failure).unwrap_or(5)
    } else {
        c5
    };
    let base = dur(e, &join(path, "base_ejection_time"), base_ejection_time)
        .unwrap_or(Dur(std::time::Duration::from_secs(30)));
    let max = dur(e, &join(path, "max_ejection_time"), max_ejection_time)
        .unwrap_or(Dur(std::time::Duration::from_secs(300)));
    (e.count() == before).then(|| OutlierConfig {
        consecutive_5xx: c5,
        consecutive_connect_failures: connect,
        base_ejection_time: base,
        max_ejection_time: max,
        max_ejection_percent: u32v(max_ejection_percent).unwrap_or(10),
    })
}

fn breakers(e: &mut Errs<'_>, path: &str, cb: &CircuitBreakers) -> CircuitBreakerConfig {
    let CircuitBreakers {
        thresholds,
        per_host_thresholds,
    } = cb;
    refuse!(e, path; per_host_thresholds);
    let mut out = CircuitBreakerConfig::default();
    for (i, t) in thresholds.iter().enumerate() {
        let tp = format!("{path}.thresholds[{i}]");
        let Thresholds {
            priority,
            max_connections,
            max_pending_requests,
            max_requests,
            max_retries,
            retry_budget,
            track_remaining: _,
            max_connection_pools,
        } = t;
        // Every request has the default priority (route priorities are refused), so HIGH
        // thresholds never apply.
        if *priority != RoutingPriority::Default as i32 {
            continue;
        }
        refuse!(e, tp; max_connection_pools);
        let size = |v: &Option<envoy_types::pb::google::protobuf::UInt32Value>, d: usize| {
            u32v(v).and_then(|n| usize::try_from(n).ok()).unwrap_or(d)
        };
        out.max_connections = size(max_connections, out.max_connections);
        out.max_pending_requests = size(max_pending_requests, out.max_pending_requests);
        out.max_requests = size(max_requests, out.max_requests);
        out.max_retries = size(max_retries, out.max_retries);
        if let Some(rb) = retry_budget {
            let bp = join(&tp, "retry_budget");
            // Envoy's defaults: 20 % and 3.
            let pct = rb.budget_percent.as_ref().map(|p| p.value).unwrap_or(20.0);
            if !(pct.is_finite() && pct.fract() == 0.0 && (1.0..=100.0).contains(&pct)) {
                e.at(
                    &join(&bp, "budget_percent"),
                    format!("only whole percentages from 1 to 100 are supported yet, got {pct}"),
                );
            } else {
                // Checked above: a whole number in 1..=100.
                out.retry_budget_percent = Some(pct as u32);
            }
            out.min_retry_concurrency = size(&rb.min_retry_concurrency, 3);
            let interval = &rb.budget_interval;
            refuse!(e, bp; interval);
        }
    }
    out
}

/// Endpoints of an EDS resource (IP addresses only).
pub(super) fn assignment(
    cla: &ClusterLoadAssignment,
    path: &str,
    e: &mut Errs<'_>,
    owner: &str,
) -> Vec<EndpointConfig> {
    if !cla.cluster_name.is_empty() && cla.cluster_name != owner {
        e.at(
            &join(path, "cluster_name"),
            format!(
                "{:?} differs from the resource name {owner:?}",
                cla.cluster_name
            ),
        );
    }
    assignment_inner(cla, path, e, false)
}

/// Endpoints with their weights and priorities (each `LocalityLbEndpoints.priority` becomes
/// its endpoints' `priority`); health status leaves some out.
#[allow(deprecated)]
fn assignment_inner(
    cla: &ClusterLoadAssignment,
    path: &str,
    e: &mut Errs<'_>,
    names_ok: bool,
) -> Vec<EndpointConfig> {
    let ClusterLoadAssignment {
        cluster_name: _,
        endpoints,
        named_endpoints,
        policy,
    } = cla;
    refuse!(e, path; named_endpoints);
    if let Some(p) = policy {
        let (drop_overloads, overprovisioning_factor, endpoint_stale_after) = (
            &p.drop_overloads,
            &p.overprovisioning_factor,
            &p.endpoint_stale_after,
        );
        // The overprovisioning factor sets how Envoy spills traffic gradually between
        // priorities (and localities); Mecha fails over a whole priority when the one above
        // has no usable endpoint left, so it is not used.
        let _ = overprovisioning_factor;
        let pp = join(path, "policy");
        refuse!(e, pp; drop_overloads, endpoint_stale_after);
        if p.weighted_priority_health {
            e.unsupported(&pp, "weighted_priority_health");
        }
    }
    let mut out = Vec::new();
    for (i, loc) in endpoints.iter().enumerate() {
        let lp = join(path, format!("endpoints[{i}]"));
        let LocalityLbEndpoints {
            // Locality and its weight: only used with locality-weighted balancing, which
            // clusters cannot ask for (common_lb_config is refused).
            locality: _,
            metadata: _,
            lb_endpoints,
            load_balancing_weight: _,
            priority,
            proximity: _,
            lb_config,
        } = loc;
        if lb_config.is_some() {
            e.unsupported(&lp, "lb_config");
        }
        if *priority > MAX_ENDPOINT_PRIORITY {
            e.at(
                &join(&lp, "priority"),
                format!("at most {MAX_ENDPOINT_PRIORITY}, got {priority}"),
            );
            continue;
        }
        for (j, lbe) in lb_endpoints.iter().enumerate() {
            if let Some(ep) = endpoint(e, &format!("{lp}.lb_endpoints[{j}]"), lbe, names_ok) {
                out.extend(ep.map(|ep| EndpointConfig {
                    priority: *priority,
                    ..ep
                }));
            }
        }
    }
    out
}

/// One endpoint, or `Ok(None)` when its health status leaves it out.
fn endpoint(
    e: &mut Errs<'_>,
    path: &str,
    lbe: &LbEndpoint,
    names_ok: bool,
) -> Option<Option<EndpointConfig>> {
    let LbEndpoint {
        health_status,
        metadata: _,
        load_balancing_weight,
        host_identifier,
    } = lbe;
    let ep = match host_identifier {
        Some(lb_endpoint::HostIdentifier::Endpoint(ep)) => ep,
        Some(lb_endpoint::HostIdentifier::EndpointName(_)) => {
            e.unsupported(path, "endpoint_name");
            return None;
        }
        None => {
            e.at(&join(path, "endpoint"), "required");
            return None;
        }
    };
    let Endpoint {
        address,
        health_check_config,
        // Used for the Host header of health checks, and for display.
        hostname: _,
        additional_addresses,
        observability_name: _,
    } = ep;
    let epath = join(path, "endpoint");
    refuse!(e, epath; health_check_config, additional_addresses);
    let addr = match address {
        Some(a) => socket_address(e, &join(&epath, "address"), a, names_ok)?,
        None => {
            e.at(&join(&epath, "address"), "required");
            return None;
        }
    };
    let weight = match u32v(load_balancing_weight) {
        None => 1,
        Some(0) => {
            e.at(&join(path, "load_balancing_weight"), "must be at least 1");
            return None;
        }
        Some(w) => usize::try_from(w).unwrap_or(usize::MAX),
    };
    match HealthStatus::try_from(*health_status) {
        // Envoy does not send to these.
        Ok(HealthStatus::Unhealthy | HealthStatus::Draining | HealthStatus::Timeout) => Some(None),
        // DEGRADED is used when nothing healthier is left: treated as healthy here.
        Ok(HealthStatus::Unknown | HealthStatus::Healthy | HealthStatus::Degraded) => {
            Some(Some(EndpointConfig {
                address: addr,
                weight,
                priority: 0,
            }))
        }
        Err(_) => {
            e.at(
                &join(path, "health_status"),
                format!("unknown status {health_status}"),
            );
            None
        }
    }
}
