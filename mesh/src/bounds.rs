//! Bounds on every duration, count and path of the mesh config, checked when clusters and
//! route tables are built (so `mecha validate` refuses them too). A value that would panic at
//! run time (`tokio::time::interval(Duration::ZERO)`, `Instant + Duration` overflow, a weight
//! that blows up a selection table) or silently switch a feature off is an error here, as
//! `field: message` with the YAML path of the field.
//!
//! Pure functions: no I/O, nothing built. [`cluster`] answers paths relative to the cluster
//! (the caller prefixes `clusters[i].`); [`route`] answers full paths under the route's own.

use std::time::Duration;

use http::uri::PathAndQuery;
use http::HeaderName;

use crate::config::{ClusterConfig, HealthCheckKind, RouteConfig, UpstreamProtocol};

/// The shortest interval, timeout or refresh period accepted: a zero one panics
/// (`tokio::time::interval`) or disables what it bounds.
pub const MIN_DURATION: Duration = Duration::from_millis(1);

/// The longest duration accepted anywhere in the mesh config (30 days): far beyond any sane
/// timeout or period, and far below where `Instant + Duration` overflows (and panics).
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// Largest endpoint weight. Pingora's weighted selection repeats each endpoint `weight` times
/// in its table, so a huge weight is a huge allocation on every endpoint update.
pub const MAX_ENDPOINT_WEIGHT: usize = 1000;

/// Largest endpoint priority (Envoy's practical limit): levels are tried in order on every
/// pick that fails over, so their number is bounded.
pub const MAX_ENDPOINT_PRIORITY: u32 = 127;

/// Largest `max_h2_streams`: HTTP/2 stream identifiers are 31 bits (RFC 9113 §5.1.1).
pub const MAX_H2_STREAMS: usize = (1 << 31) - 1;

/// Largest health-check threshold: more consecutive results than this would keep a dead (or
/// recovered) endpoint in its old state for absurdly long.
pub const MAX_HEALTH_THRESHOLD: usize = 1000;

/// Problems with one cluster's bounds, as `field: message` relative to the cluster.
pub fn cluster(c: &ClusterConfig) -> Vec<String> {
    let mut errors = Vec::new();
    let mut dur = |field: &str, d: Duration| duration(&mut errors, field, d);
    dur("connect_timeout", c.connect_timeout.0);
    dur("dns_refresh", c.dns_refresh.0);
    if let Some(hc) = &c.health_check {
        dur("health_check.interval", hc.interval.0);
        dur("health_check.timeout", hc.timeout.0);
    }
    if let Some(o) = &c.outlier_detection {
        dur(
            "outlier_detection.base_ejection_time",
            o.base_ejection_time.0,
        );
        dur("outlier_detection.max_ejection_time", o.max_ejection_time.0);
    }
    count(
        &mut errors,
        "max_h2_streams",
        c.max_h2_streams,
        1,
        MAX_H2_STREAMS,
    );
    for (i, e) in c.endpoints.iter().enumerate() {
        count(
            &mut errors,
            &format!("endpoints[{i}].weight"),
            e.weight,
            1,
            MAX_ENDPOINT_WEIGHT,
        );
        if e.priority > MAX_ENDPOINT_PRIORITY {
            errors.push(format!(
                "endpoints[{i}].priority: at most {MAX_ENDPOINT_PRIORITY}, got {}",
                e.priority
            ));
        }
    }
    if let Some(hc) = &c.health_check {
        for (field, v) in [
            ("healthy_threshold", hc.healthy_threshold),
            ("unhealthy_threshold", hc.unhealthy_threshold),
        ] {
            count(
                &mut errors,
                &format!("health_check.{field}"),
                v,
                1,
                MAX_HEALTH_THRESHOLD,
            );
        }
        if hc.kind == HealthCheckKind::Http {
            if let Err(why) = origin_form(&hc.path) {
                errors.push(format!("health_check.path: {why}, got {:?}", hc.path));
            }
        }
    }
    if let Some(o) = &c.outlier_detection {
        for (field, v) in [
            ("consecutive_5xx", o.consecutive_5xx),
            (
                "consecutive_connect_failures",
                o.consecutive_connect_failures,
            ),
        ] {
            if v == 0 {
                errors.push(format!(
                    "outlier_detection.{field}: must be at least 1, got 0"
                ));
            }
        }
        if o.max_ejection_time.0 < o.base_ejection_time.0 {
            errors.push(format!(
                "outlier_detection.max_ejection_time: must be at least base_ejection_time ({:?}), \
                 got {:?}",
                o.base_ejection_time.0, o.max_ejection_time.0
            ));
        }
        if o.max_ejection_percent > 100 {
            errors.push(format!(
                "outlier_detection.max_ejection_percent: at most 100, got {}",
                o.max_ejection_percent
            ));
        }
    }
    let cb = &c.circuit_breakers;
    for (field, v) in [
        ("max_connections", cb.max_connections),
        ("max_requests", cb.max_requests),
    ] {
        if v == 0 {
            errors.push(format!(
                "circuit_breakers.{field}: must be at least 1, got 0"
            ));
        }
    }
    if let Some(p) = cb.retry_budget_percent {
        if !(1..=100).contains(&p) {
            errors.push(format!(
                "circuit_breakers.retry_budget_percent: must be between 1 and 100, got {p}"
            ));
        }
    }
    if let Some(h) = &c.hash_header {
        if HeaderName::try_from(h.as_str()).is_err() {
            errors.push(format!("hash_header: invalid header name {h:?}"));
        }
    }
    if c.protocol == UpstreamProtocol::H2 {
        if let Some(sni) = &c.sni {
            if rustls_pki_types::ServerName::try_from(sni.as_str()).is_err() {
                errors.push(format!(
                    "sni: expected a DNS name or an IP address, got {sni:?}"
                ));
            }
        }
    }
    errors
}

/// Problems with one route's bounds, as `<rpath>.field: message`. Rules checked while the
/// route is compiled (actions, header names and values, redirect codes, direct-response
/// status, retry conditions) stay there; these are the ones compiling would not catch.
pub fn route(rpath: &str, r: &RouteConfig) -> Vec<String> {
    let mut errors = Vec::new();
    // `timeout: 0` is documented as "no total bound" (long-lived streams).
    if let Some(t) = r.timeout {
        if t.0 > MAX_DURATION {
            errors.push(format!(
                "{rpath}.timeout: at most {MAX_DURATION:?} (0 disables it), got {:?}",
                t.0
            ));
        }
    }
    if let Some(t) = r.per_try_timeout {
        duration(&mut errors, &format!("{rpath}.per_try_timeout"), t.0);
    }
    if let Some(p) = &r.retry_policy {
        let rp = format!("{rpath}.retry_policy");
        duration(
            &mut errors,
            &format!("{rp}.base_interval"),
            p.base_interval.0,
        );
        duration(&mut errors, &format!("{rp}.max_interval"), p.max_interval.0);
        for (i, code) in p.retriable_status_codes.iter().enumerate() {
            if !(100..=599).contains(code) {
                errors.push(format!(
                    "{rp}.retriable_status_codes[{i}]: {code} is not an HTTP status"
                ));
            }
        }
    }
    let m = &r.matcher;
    for (field, v) in [("prefix", &m.prefix), ("path", &m.path)] {
        if let Some(p) = v {
            if !p.starts_with('/') {
                errors.push(format!(
                    "{rpath}.match.{field}: must start with \"/\" (a request path always \
                     does), got {p:?}"
                ));
            }
        }
    }
    if let Some(p) = &r.prefix_rewrite {
        if let Err(why) = origin_form(p) {
            errors.push(format!("{rpath}.prefix_rewrite: {why}, got {p:?}"));
        }
    }
    if let Some(rd) = &r.redirect {
        if let Some(s) = &rd.scheme {
            if s != "http" && s != "https" {
                errors.push(format!(
                    "{rpath}.redirect.scheme: expected http or https, got {s:?}"
                ));
            }
        }
        if let Some(h) = &rd.host {
            if h.parse::<http::uri::Authority>().is_err() {
                errors.push(format!("{rpath}.redirect.host: invalid host {h:?}"));
            }
        }
        if let Some(p) = &rd.path {
            if let Err(why) = origin_form(p) {
                errors.push(format!("{rpath}.redirect.path: {why}, got {p:?}"));
            }
        }
    }
    errors
}

/// `d` must lie in [`MIN_DURATION`]`..=`[`MAX_DURATION`].
fn duration(errors: &mut Vec<String>, field: &str, d: Duration) {
    if d < MIN_DURATION {
        errors.push(format!("{field}: must be at least 1ms, got {d:?}"));
    } else if d > MAX_DURATION {
        errors.push(format!(
            "{field}: must be at most {MAX_DURATION:?}, got {d:?}"
        ));
    }
}

fn count(errors: &mut Vec<String>, field: &str, v: usize, min: usize, max: usize) {
    if !(min..=max).contains(&v) {
        errors.push(format!("{field}: must be between {min} and {max}, got {v}"));
    }
}

/// An origin-form request target (`/path?query`), as an HTTP/1.1 request line carries it.
fn origin_form(p: &str) -> Result<(), &'static str> {
    if !p.starts_with('/') {
        return Err("must be a path starting with \"/\"");
    }
    match p.parse::<PathAndQuery>() {
        Ok(pq) if pq.as_str() == p => Ok(()),
        _ => Err("not a valid URI path"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClusterConfig, RouterConfig};
    use crate::metrics::MeshMetrics;

    /// A one-endpoint cluster with `extra` (YAML flow-mapping entries) added.
    fn cluster_cfg(extra: &str) -> ClusterConfig {
        let yaml = format!("{{name: c, endpoints: [{{address: \"127.0.0.1:1\"}}], {extra}}}");
        serde_yaml_ng::from_str(&yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
    }

    /// The errors of building that cluster (as `mecha validate` reports them, minus the
    /// `clusters[0].` prefix).
    fn cluster_errors(extra: &str) -> Vec<String> {
        let metrics = MeshMetrics::register(&mut prometheus_client::registry::Registry::default());
        match crate::Cluster::build(&cluster_cfg(extra), &metrics) {
            Ok(_) => Vec::new(),
            Err(e) => e,
        }
    }

    /// Asserts building the cluster fails with exactly one error, starting with `want`.
    fn refused(extra: &str, want: &str) {
        let errs = cluster_errors(extra);
        assert!(
            errs.len() == 1 && errs[0].starts_with(want),
            "{extra}: expected one error starting with {want:?}, got {errs:?}"
        );
    }

    fn accepted(extra: &str) {
        let errs = cluster_errors(extra);
        assert!(errs.is_empty(), "{extra}: expected valid, got {errs:?}");
    }

    #[test]
    fn a_zero_health_check_interval_is_refused_instead_of_panicking_later() {
        // Accepted before, then `tokio::time::interval(0)` panicked the maintenance thread.
        let errs = cluster_errors("health_check: {interval: 0}");
        assert_eq!(
            errs,
            vec!["health_check.interval: must be at least 1ms, got 0ns".to_owned()]
        );
        accepted("health_check: {interval: 1ms}");
    }

    #[test]
    fn health_check_timeout_is_bounded() {
        refused(
            "health_check: {timeout: 0}",
            "health_check.timeout: must be at least 1ms",
        );
        refused(
            "health_check: {timeout: 1000000h}",
            "health_check.timeout: must be at most",
        );
    }

    #[test]
    fn durations_beyond_the_maximum_are_refused() {
        // `h` is the largest unit; 1e9 h overflows `Instant` arithmetic on some platforms.
        refused(
            "health_check: {interval: 1000000000h}",
            "health_check.interval: must be at most 2592000s",
        );
        accepted("health_check: {interval: 720h}");
    }

    #[test]
    fn connect_timeout_must_be_positive() {
        refused(
            "connect_timeout: 0",
            "connect_timeout: must be at least 1ms",
        );
        refused(
            "connect_timeout: 500us",
            "connect_timeout: must be at least 1ms",
        );
        accepted("connect_timeout: 1ms");
    }

    #[test]
    fn dns_refresh_must_be_positive() {
        refused("dns_refresh: 0s", "dns_refresh: must be at least 1ms");
        refused("dns_refresh: 1000000h", "dns_refresh: must be at most");
    }

    #[test]
    fn max_h2_streams_is_bounded() {
        refused("max_h2_streams: 0", "max_h2_streams: must be between 1 and");
        refused(
            "max_h2_streams: 2147483648",
            "max_h2_streams: must be between 1 and 2147483647",
        );
    }

    #[test]
    fn health_check_thresholds_are_at_least_one() {
        // Zero used to be raised to 1 silently.
        refused(
            "health_check: {healthy_threshold: 0}",
            "health_check.healthy_threshold: must be between 1 and 1000, got 0",
        );
        refused(
            "health_check: {unhealthy_threshold: 0}",
            "health_check.unhealthy_threshold: must be between 1 and 1000, got 0",
        );
        refused(
            "health_check: {unhealthy_threshold: 1001}",
            "health_check.unhealthy_threshold: must be between",
        );
    }

    #[test]
    fn an_http_health_check_path_must_be_an_origin_form_path() {
        for bad in ["healthz", "/a b", "http://x/healthz", "", "/a#fragment"] {
            refused(
                &format!("health_check: {{path: {bad:?}}}"),
                "health_check.path:",
            );
        }
        accepted("health_check: {path: \"/healthz?full=1\"}");
        // gRPC and TCP checks have no path; the default is not looked at.
        accepted("health_check: {type: grpc, path: nonsense}");
    }

    #[test]
    fn outlier_detection_counts_are_at_least_one() {
        refused(
            "outlier_detection: {consecutive_5xx: 0}",
            "outlier_detection.consecutive_5xx: must be at least 1",
        );
        refused(
            "outlier_detection: {consecutive_connect_failures: 0}",
            "outlier_detection.consecutive_connect_failures: must be at least 1",
        );
    }

    #[test]
    fn outlier_ejection_times_are_bounded_and_ordered() {
        refused(
            "outlier_detection: {base_ejection_time: 0, max_ejection_time: 5s}",
            "outlier_detection.base_ejection_time: must be at least 1ms",
        );
        refused(
            "outlier_detection: {base_ejection_time: 10s, max_ejection_time: 5s}",
            "outlier_detection.max_ejection_time: must be at least base_ejection_time",
        );
        accepted("outlier_detection: {base_ejection_time: 5s, max_ejection_time: 5s}");
    }

    #[test]
    fn outlier_max_ejection_percent_is_at_most_100() {
        refused(
            "outlier_detection: {max_ejection_percent: 101}",
            "outlier_detection.max_ejection_percent: at most 100, got 101",
        );
    }

    #[test]
    fn circuit_breakers_need_a_slot() {
        refused(
            "circuit_breakers: {max_connections: 0}",
            "circuit_breakers.max_connections: must be at least 1",
        );
        refused(
            "circuit_breakers: {max_requests: 0}",
            "circuit_breakers.max_requests: must be at least 1",
        );
        // No pending queue and no retries are real choices.
        accepted("circuit_breakers: {max_pending_requests: 0, max_retries: 0}");
    }

    #[test]
    fn retry_budget_percent_is_between_1_and_100() {
        refused(
            "circuit_breakers: {retry_budget_percent: 0}",
            "circuit_breakers.retry_budget_percent: must be between 1 and 100",
        );
        refused(
            "circuit_breakers: {retry_budget_percent: 101}",
            "circuit_breakers.retry_budget_percent: must be between 1 and 100",
        );
    }

    #[test]
    fn endpoint_weights_are_bounded() {
        let weight = |w: u64| {
            let yaml = format!(
                "{{name: c, endpoints: [{{address: \"127.0.0.1:1\"}}, \
                 {{address: \"127.0.0.1:2\", weight: {w}}}]}}"
            );
            let cfg: ClusterConfig = serde_yaml_ng::from_str(&yaml).expect("yaml");
            cluster(&cfg)
        };
        assert_eq!(
            weight(0),
            vec!["endpoints[1].weight: must be between 1 and 1000, got 0".to_owned()]
        );
        assert_eq!(
            weight(1001),
            vec!["endpoints[1].weight: must be between 1 and 1000, got 1001".to_owned()]
        );
        assert!(weight(1000).is_empty());
    }

    #[test]
    fn endpoint_priorities_are_bounded() {
        let priority = |p: u64| {
            let yaml = format!(
                "{{name: c, endpoints: [{{address: \"127.0.0.1:1\"}}, \
                 {{address: \"127.0.0.1:2\", priority: {p}}}]}}"
            );
            let cfg: ClusterConfig = serde_yaml_ng::from_str(&yaml).expect("yaml");
            cluster(&cfg)
        };
        assert_eq!(
            priority(128),
            vec!["endpoints[1].priority: at most 127, got 128".to_owned()]
        );
        assert!(priority(127).is_empty());
        assert!(priority(0).is_empty());
    }

    #[test]
    fn hash_header_must_be_a_header_name() {
        refused(
            "hash_header: \"x user\"",
            "hash_header: invalid header name",
        );
        accepted("hash_header: x-user");
    }

    #[test]
    fn a_tls_sni_must_be_a_server_name() {
        refused(
            "protocol: h2, sni: \"bad name!\"",
            "sni: expected a DNS name",
        );
        accepted("protocol: h2, sni: upstream.test");
    }

    // === routes ===

    /// The errors of building a one-route table whose route is `{match: {prefix: /}, …extra}`.
    fn route_errors(route: &str) -> Vec<String> {
        let yaml = format!("virtual_hosts: [{{name: v, domains: [\"*\"], routes: [{route}]}}]");
        let cfg: RouterConfig =
            serde_yaml_ng::from_str(&yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"));
        match crate::RouteTable::build("r", &cfg, &|c| {
            (c == "c").then(|| crate::cluster::tests::cluster_named(c))
        }) {
            Ok(_) => Vec::new(),
            Err(e) => e,
        }
    }

    const R: &str = "r.virtual_hosts[0].routes[0]";

    fn route_refused(route: &str, want: &str) {
        let errs = route_errors(route);
        let want = format!("{R}.{want}");
        assert!(
            errs.len() == 1 && errs[0].starts_with(&want),
            "{route}: expected one error starting with {want:?}, got {errs:?}"
        );
    }

    fn route_accepted(route: &str) {
        let errs = route_errors(route);
        assert!(errs.is_empty(), "{route}: expected valid, got {errs:?}");
    }

    #[test]
    fn route_timeout_zero_disables_it_and_huge_is_refused() {
        route_accepted("{match: {prefix: /}, cluster: c, timeout: 0}");
        route_refused(
            "{match: {prefix: /}, cluster: c, timeout: 1000000h}",
            "timeout: at most",
        );
    }

    #[test]
    fn per_try_timeout_zero_is_refused() {
        // Zero used to be dropped silently (no per-try bound at all).
        route_refused(
            "{match: {prefix: /}, cluster: c, per_try_timeout: 0}",
            "per_try_timeout: must be at least 1ms",
        );
        route_accepted("{match: {prefix: /}, cluster: c, per_try_timeout: 100ms}");
    }

    #[test]
    fn retry_intervals_are_bounded() {
        route_refused(
            "{match: {prefix: /}, cluster: c, retry_policy: {base_interval: 0}}",
            "retry_policy.base_interval: must be at least 1ms",
        );
        route_refused(
            "{match: {prefix: /}, cluster: c, retry_policy: {base_interval: 1ms, max_interval: 1000000h}}",
            "retry_policy.max_interval: must be at most",
        );
        route_refused(
            "{match: {prefix: /}, cluster: c, retry_policy: {base_interval: 1s, max_interval: 10ms}}",
            "retry_policy.base_interval: must not exceed max_interval",
        );
    }

    #[test]
    fn num_retries_has_an_upper_bound() {
        route_refused(
            "{match: {prefix: /}, cluster: c, retry_policy: {num_retries: 11}}",
            "retry_policy.num_retries: at most 10, got 11",
        );
        route_accepted("{match: {prefix: /}, cluster: c, retry_policy: {num_retries: 10}}");
    }

    #[test]
    fn retriable_status_codes_are_http_statuses() {
        route_refused(
            "{match: {prefix: /}, cluster: c, retry_policy: {retriable_status_codes: [503, 700]}}",
            "retry_policy.retriable_status_codes[1]: 700 is not an HTTP status",
        );
    }

    #[test]
    fn redirect_codes_are_redirects() {
        route_refused(
            "{match: {prefix: /}, redirect: {code: 200}}",
            "redirect.code: 200 is not a redirect status",
        );
        route_accepted("{match: {prefix: /}, redirect: {code: 308}}");
    }

    #[test]
    fn redirect_scheme_host_and_path_are_checked() {
        route_refused(
            "{match: {prefix: /}, redirect: {scheme: ftp}}",
            "redirect.scheme: expected http or https",
        );
        route_refused(
            "{match: {prefix: /}, redirect: {host: \"a b\"}}",
            "redirect.host: invalid host",
        );
        route_refused(
            "{match: {prefix: /}, redirect: {path: \"no-slash\"}}",
            "redirect.path: must be a path",
        );
    }

    #[test]
    fn direct_response_status_is_between_100_and_599() {
        for bad in [99, 600] {
            route_refused(
                &format!("{{match: {{prefix: /}}, direct_response: {{status: {bad}}}}}"),
                &format!("direct_response.status: {bad} is not an HTTP status"),
            );
        }
        route_accepted("{match: {prefix: /}, direct_response: {status: 100}}");
        route_accepted("{match: {prefix: /}, direct_response: {status: 599}}");
    }

    #[test]
    fn header_names_and_values_are_checked() {
        route_refused(
            "{match: {prefix: /}, cluster: c, request_headers_to_add: [{name: \"bad name\", value: v}]}",
            "request_headers_to_add[0].name: invalid header name",
        );
        route_refused(
            "{match: {prefix: /}, cluster: c, response_headers_to_add: [{name: x, value: \"a\\nb\"}]}",
            "response_headers_to_add[0].value: invalid header value",
        );
        route_refused(
            "{match: {prefix: /}, cluster: c, request_headers_to_remove: [\"a:b\"]}",
            "request_headers_to_remove[0]: invalid header name",
        );
        route_refused(
            "{match: {prefix: /, headers: [{name: \"a b\"}]}, cluster: c}",
            "match.headers[0].name: invalid header name",
        );
    }

    #[test]
    fn match_paths_start_with_a_slash() {
        route_refused(
            "{match: {prefix: api}, cluster: c}",
            "match.prefix: must start with \"/\"",
        );
        route_refused(
            "{match: {path: api}, cluster: c}",
            "match.path: must start with \"/\"",
        );
    }

    #[test]
    fn prefix_rewrite_is_a_path() {
        route_refused(
            "{match: {prefix: /a}, cluster: c, prefix_rewrite: b}",
            "prefix_rewrite: must be a path",
        );
        route_accepted("{match: {prefix: /a}, cluster: c, prefix_rewrite: /b}");
    }
}
