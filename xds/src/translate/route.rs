//! RouteConfiguration → [`RouterConfig`]: virtual hosts, matches, actions, retries and
//! header changes.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{
    data_source, header_value_option::HeaderAppendAction, DataSource, HeaderValue,
    HeaderValueOption, RoutingPriority,
};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier,
    query_parameter_matcher::QueryParameterMatchSpecifier as QuerySpecifier, redirect_action,
    route, route_action, route_action::hash_policy, route_match, weighted_cluster::ClusterWeight,
    DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction, Route, RouteAction,
    RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher, RegexMatcher, StringMatcher};
use envoy_types::pb::google::protobuf::Any;
use mecha_mesh::config::{
    DirectResponseConfig, Dur, HeaderMatchConfig, HeaderValueConfig, MatchConfig, QueryMatchConfig,
    RedirectConfig, RetryPolicyConfig, RouteConfig, RouterConfig, VirtualHostConfig,
    WeightedClusterConfig,
};

use super::filters::ignorable_per_filter_key;
use super::{boolv, dur, join, refuse, u32v, Errs, IsSet};

/// Header changes of one level (route config, virtual host, route, weighted cluster).
#[derive(Default, Clone)]
struct Headers {
    request_add: Vec<HeaderValueConfig>,
    request_remove: Vec<String>,
    response_add: Vec<HeaderValueConfig>,
    response_remove: Vec<String>,
}

impl Headers {
    fn read(
        e: &mut Errs<'_>,
        path: &str,
        req_add: &[HeaderValueOption],
        req_remove: &[String],
        resp_add: &[HeaderValueOption],
        resp_remove: &[String],
    ) -> Self {
        let mut h = Headers {
            request_remove: req_remove.to_vec(),
            response_remove: resp_remove.to_vec(),
            ..Default::default()
        };
        for (i, o) in req_add.iter().enumerate() {
            header_option(
                e,
                &format!("{path}request_headers_to_add[{i}]"),
                o,
                &mut h.request_add,
                &mut h.request_remove,
            );
        }
        for (i, o) in resp_add.iter().enumerate() {
            header_option(
                e,
                &format!("{path}response_headers_to_add[{i}]"),
                o,
                &mut h.response_add,
                &mut h.response_remove,
            );
        }
        h
    }

    /// The route's own changes first, then the enclosing levels', as Envoy applies them
    /// (route, virtual host, route configuration).
    fn extend(&mut self, outer: &Headers) {
        self.request_add.extend(outer.request_add.iter().cloned());
        self.request_remove
            .extend(outer.request_remove.iter().cloned());
        self.response_add.extend(outer.response_add.iter().cloned());
        self.response_remove
            .extend(outer.response_remove.iter().cloned());
    }
}

/// Mecha removes the listed headers, then appends the added ones: Envoy's append maps to an
/// add, its overwrite to a remove plus an add.
#[allow(deprecated)]
fn header_option(
    e: &mut Errs<'_>,
    path: &str,
    o: &HeaderValueOption,
    add: &mut Vec<HeaderValueConfig>,
    remove: &mut Vec<String>,
) {
    let HeaderValueOption {
        header,
        append,
        append_action,
        keep_empty_value,
    } = o;
    let Some(HeaderValue {
        key,
        value,
        raw_value,
    }) = header
    else {
        e.at(&join(path, "header"), "required");
        return;
    };
    let value = if raw_value.is_empty() {
        value.clone()
    } else {
        match String::from_utf8(raw_value.clone()) {
            Ok(v) => v,
            Err(_) => {
                e.at(
                    &join(path, "header.raw_value"),
                    "not UTF-8: not supported yet",
                );
                return;
            }
        }
    };
    let overwrite = match (boolv(append), *append_action) {
        (Some(a), _) => !a,
        (None, a) if a == HeaderAppendAction::AppendIfExistsOrAdd as i32 => false,
        (None, a) if a == HeaderAppendAction::OverwriteIfExistsOrAdd as i32 => true,
        (None, a) => {
            e.at(
                &join(path, "append_action"),
                format!(
                    "{} not supported yet (only APPEND_IF_EXISTS_OR_ADD, \
                     OVERWRITE_IF_EXISTS_OR_ADD)",
                    HeaderAppendAction::try_from(a)
                        .map(|a| a.as_str_name())
                        .unwrap_or("unknown")
                ),
            );
            return;
        }
    };
    if overwrite {
        remove.push(key.clone());
    }
    // Envoy leaves out a header whose value is empty unless told to keep it.
    if value.is_empty() && !keep_empty_value {
        return;
    }
    add.push(HeaderValueConfig {
        name: key.clone(),
        value,
    });
}

fn per_filter_config(e: &mut Errs<'_>, path: &str, m: &HashMap<String, Any>) {
    let mut keys: Vec<&String> = m.keys().filter(|k| !ignorable_per_filter_key(k)).collect();
    keys.sort();
    for k in keys {
        e.at(
            &format!("{path}typed_per_filter_config[{k:?}]"),
            "per-filter configs are not supported yet",
        );
    }
}

/// A route configuration (RDS or inline); `path` prefixes error paths.
#[allow(deprecated)]
pub(super) fn translate_config(
    rc: &RouteConfiguration,
    path: &str,
    e: &mut Errs<'_>,
    ignored: &mut Vec<String>,
    owner: &str,
) -> RouterConfig {
    let RouteConfiguration {
        name: _,
        virtual_hosts,
        vhds,
        internal_only_headers,
        response_headers_to_add,
        response_headers_to_remove,
        request_headers_to_add,
        request_headers_to_remove,
        most_specific_header_mutations_wins,
        // Whether Envoy checks clusters exist when the config arrives; `merge` answers 503
        // for a missing one either way.
        validate_clusters: _,
        max_direct_response_body_size_bytes: _,
        cluster_specifier_plugins,
        request_mirror_policies,
        // Mecha matches a domain with or without the Host's port.
        ignore_port_in_host_matching: _,
        vhost_header,
        ignore_path_parameters_in_path_matching,
        typed_per_filter_config,
        metadata: _,
        route_specifiers,
    } = rc;
    let p = if path.is_empty() {
        String::new()
    } else {
        format!("{path}.")
    };
    refuse!(e, path; vhds, internal_only_headers, most_specific_header_mutations_wins,
        cluster_specifier_plugins, request_mirror_policies, vhost_header,
        ignore_path_parameters_in_path_matching, route_specifiers);
    per_filter_config(e, &p, typed_per_filter_config);
    let outer = Headers::read(
        e,
        &p,
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
    );
    let mut attempt_count = false;
    let mut vhs = Vec::new();
    for (i, vh) in virtual_hosts.iter().enumerate() {
        let vpath = format!("{p}virtual_hosts[{i}]");
        vhs.push(virtual_host(e, &vpath, vh, &outer, &mut attempt_count));
    }
    if attempt_count {
        ignored.push(format!(
            "{owner:?}: {p}include_request_attempt_count (no x-envoy-attempt-count header)"
        ));
    }
    RouterConfig {
        virtual_hosts: vhs,
        access_log: false,
    }
}

#[allow(deprecated)]
fn virtual_host(
    e: &mut Errs<'_>,
    path: &str,
    vh: &VirtualHost,
    outer: &Headers,
    attempt_count: &mut bool,
) -> VirtualHostConfig {
    let VirtualHost {
        name,
        domains,
        routes,
        matcher,
        require_tls,
        // Stats only.
        virtual_clusters: _,
        rate_limits,
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        cors,
        typed_per_filter_config,
        include_request_attempt_count,
        include_attempt_count_in_response,
        retry_policy,
        retry_policy_typed_config,
        hedge_policy,
        include_is_timeout_retry_header,
        per_request_buffer_limit_bytes,
        request_body_buffer_limit,
        request_mirror_policies,
        metadata: _,
        route_specifiers,
    } = vh;
    refuse!(e, path; matcher, require_tls, rate_limits, cors, include_attempt_count_in_response,
        retry_policy_typed_config, hedge_policy, include_is_timeout_retry_header,
        per_request_buffer_limit_bytes, request_body_buffer_limit, request_mirror_policies,
        route_specifiers);
    // Istio sets it on every virtual host; the header only feeds the upstream's stats.
    *attempt_count |= *include_request_attempt_count;
    per_filter_config(e, &format!("{path}."), typed_per_filter_config);
    for (i, d) in domains.iter().enumerate() {
        // Mecha knows exact, `*suffix` and `*`; Envoy's `prefix*` has no equivalent.
        if d.len() > 1 && d.ends_with('*') {
            e.at(
                &format!("{path}.domains[{i}]"),
                format!("prefix wildcard {d:?} not supported yet"),
            );
        }
    }
    let mut own = Headers::read(
        e,
        &format!("{path}."),
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
    );
    own.extend(outer);
    let default_retry = retry_policy
        .as_ref()
        .and_then(|rp| retry(e, &format!("{path}.retry_policy"), rp));
    let mut out = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        let rpath = format!("{path}.routes[{i}]");
        if let Some(rc) = one_route(e, &rpath, r, &own, default_retry.as_ref()) {
            out.push(rc);
        }
    }
    VirtualHostConfig {
        name: name.clone(),
        domains: domains.clone(),
        routes: out,
    }
}

#[allow(deprecated)]
fn one_route(
    e: &mut Errs<'_>,
    path: &str,
    r: &Route,
    outer: &Headers,
    default_retry: Option<&RetryPolicyConfig>,
) -> Option<RouteConfig> {
    let Route {
        name,
        r#match,
        metadata: _,
        // Tracing span names.
        decorator: _,
        typed_per_filter_config,
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        tracing: _,
        per_request_buffer_limit_bytes,
        stat_prefix: _,
        request_body_buffer_limit,
        route_specifiers,
        action,
    } = r;
    refuse!(e, path; per_request_buffer_limit_bytes, request_body_buffer_limit,
        route_specifiers);
    per_filter_config(e, &format!("{path}."), typed_per_filter_config);
    let matcher = match r#match {
        Some(m) => route_match(e, &format!("{path}.match"), m),
        None => {
            e.at(&format!("{path}.match"), "required");
            None
        }
    };
    let mut headers = Headers::read(
        e,
        &format!("{path}."),
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
    );
    let mut rc = RouteConfig {
        name: (!name.is_empty()).then(|| name.clone()),
        matcher: matcher.unwrap_or(MatchConfig {
            prefix: None,
            path: None,
            regex: None,
            methods: Vec::new(),
            headers: Vec::new(),
            query: Vec::new(),
        }),
        cluster: None,
        weighted_clusters: None,
        direct_response: None,
        redirect: None,
        prefix_rewrite: None,
        host_rewrite: None,
        timeout: None,
        per_try_timeout: None,
        idle_timeout: None,
        retry_policy: None,
        request_headers_to_add: Vec::new(),
        request_headers_to_remove: Vec::new(),
        response_headers_to_add: Vec::new(),
        response_headers_to_remove: Vec::new(),
    };
    match action {
        Some(route::Action::Route(ra)) => {
            route_action(e, &format!("{path}.route"), ra, &mut rc);
            if rc.retry_policy.is_none() {
                rc.retry_policy = default_retry.cloned();
            }
        }
        Some(route::Action::Redirect(rd)) => {
            rc.redirect = redirect(e, &format!("{path}.redirect"), rd)
        }
        Some(route::Action::DirectResponse(d)) => {
            rc.direct_response = direct_response(e, &format!("{path}.direct_response"), d)
        }
        Some(route::Action::FilterAction(_)) => e.unsupported(path, "filter_action"),
        Some(route::Action::NonForwardingAction(_)) => e.unsupported(path, "non_forwarding_action"),
        None => e.at(path, "needs an action (route, redirect, direct_response)"),
    }
    headers.extend(outer);
    rc.request_headers_to_add = headers.request_add;
    rc.request_headers_to_remove = headers.request_remove;
    rc.response_headers_to_add = headers.response_add;
    rc.response_headers_to_remove = headers.response_remove;
    Some(rc)
}

#[allow(deprecated)]
fn route_match(e: &mut Errs<'_>, path: &str, m: &RouteMatch) -> Option<MatchConfig> {
    let RouteMatch {
        case_sensitive,
        runtime_fraction,
        headers,
        query_parameters,
        cookies,
        grpc,
        tls_context,
        dynamic_metadata,
        filter_state,
        path_specifier,
    } = m;
    let before = e.count();
    refuse!(e, path; runtime_fraction, cookies, tls_context, dynamic_metadata, filter_state);
    if boolv(case_sensitive) == Some(false) {
        e.unsupported(path, "case_sensitive: false");
    }
    let mut out = MatchConfig {
        prefix: None,
        path: None,
        regex: None,
        methods: Vec::new(),
        headers: Vec::new(),
        query: Vec::new(),
    };
    match path_specifier {
        Some(route_match::PathSpecifier::Prefix(p)) => out.prefix = Some(p.clone()),
        Some(route_match::PathSpecifier::Path(p)) => out.path = Some(p.clone()),
        Some(route_match::PathSpecifier::SafeRegex(r)) => {
            out.regex = regex(e, &join(path, "safe_regex"), r)
        }
        Some(route_match::PathSpecifier::ConnectMatcher(_)) => {
            e.unsupported(path, "connect_matcher")
        }
        Some(route_match::PathSpecifier::PathSeparatedPrefix(_)) => {
            e.unsupported(path, "path_separated_prefix")
        }
        Some(route_match::PathSpecifier::PathMatchPolicy(_)) => {
            e.unsupported(path, "path_match_policy")
        }
        None => e.at(path, "needs prefix, path or safe_regex"),
    }
    for (i, h) in headers.iter().enumerate() {
        if let Some(hm) = header_matcher(e, &format!("{path}.headers[{i}]"), h) {
            out.headers.push(hm);
        }
    }
    for (i, q) in query_parameters.iter().enumerate() {
        if let Some(qm) = query_matcher(e, &format!("{path}.query_parameters[{i}]"), q) {
            out.query.push(qm);
        }
    }
    // Envoy's gRPC match: a content-type of application/grpc (any suffix).
    if grpc.is_some() {
        out.headers.push(HeaderMatchConfig {
            name: "content-type".to_owned(),
            exact: None,
            regex: Some("application/grpc.*".to_owned()),
            present: None,
            invert: false,
        });
    }
    (e.count() == before).then_some(out)
}

fn regex(e: &mut Errs<'_>, path: &str, r: &RegexMatcher) -> Option<String> {
    // The engine (RE2) is the only one Envoy has; Rust's regex is RE2-like.
    let RegexMatcher {
        regex,
        engine_type: _,
    } = r;
    if regex.is_empty() {
        e.at(&join(path, "regex"), "required");
        return None;
    }
    Some(regex.clone())
}

/// Quotes a literal for a regex (the model anchors every regex at both ends).
fn escape(lit: &str) -> String {
    let mut out = String::with_capacity(lit.len());
    for c in lit.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[allow(deprecated)]
fn header_matcher(e: &mut Errs<'_>, path: &str, h: &HeaderMatcher) -> Option<HeaderMatchConfig> {
    let HeaderMatcher {
        name,
        invert_match,
        treat_missing_header_as_empty,
        header_match_specifier,
    } = h;
    if *treat_missing_header_as_empty {
        e.unsupported(path, "treat_missing_header_as_empty");
        return None;
    }
    let mut out = HeaderMatchConfig {
        name: name.clone(),
        exact: None,
        regex: None,
        present: None,
        invert: *invert_match,
    };
    match header_match_specifier {
        // Envoy: no specifier means "present".
        None => out.present = Some(true),
        Some(HeaderMatchSpecifier::ExactMatch(v)) => out.exact = Some(v.clone()),
        Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => {
            out.regex = Some(regex(e, &join(path, "safe_regex_match"), r)?)
        }
        Some(HeaderMatchSpecifier::PresentMatch(p)) => out.present = Some(*p),
        Some(HeaderMatchSpecifier::PrefixMatch(p)) => out.regex = Some(format!("{}.*", escape(p))),
        Some(HeaderMatchSpecifier::SuffixMatch(s)) => out.regex = Some(format!(".*{}", escape(s))),
        Some(HeaderMatchSpecifier::ContainsMatch(s)) => {
            out.regex = Some(format!(".*{}.*", escape(s)))
        }
        Some(HeaderMatchSpecifier::StringMatch(sm)) => {
            string_match(e, &join(path, "string_match"), sm, &mut out)?
        }
        Some(HeaderMatchSpecifier::RangeMatch(_)) => {
            e.unsupported(path, "range_match");
            return None;
        }
    }
    Some(out)
}

fn query_matcher(
    e: &mut Errs<'_>,
    path: &str,
    q: &QueryParameterMatcher,
) -> Option<QueryMatchConfig> {
    let QueryParameterMatcher {
        name,
        query_parameter_match_specifier,
    } = q;
    if name.is_empty() {
        e.at(&join(path, "name"), "required");
        return None;
    }
    // The same string matching as headers, onto the model's exact / regex / present.
    let mut m = HeaderMatchConfig {
        name: name.clone(),
        exact: None,
        regex: None,
        present: None,
        invert: false,
    };
    match query_parameter_match_specifier {
        // Envoy: no specifier means "present".
        None => m.present = Some(true),
        Some(QuerySpecifier::PresentMatch(p)) => m.present = Some(*p),
        Some(QuerySpecifier::StringMatch(sm)) => {
            string_match(e, &join(path, "string_match"), sm, &mut m)?
        }
    }
    Some(QueryMatchConfig {
        name: m.name,
        exact: m.exact,
        regex: m.regex,
        present: m.present,
    })
}

fn string_match(
    e: &mut Errs<'_>,
    path: &str,
    sm: &StringMatcher,
    out: &mut HeaderMatchConfig,
) -> Option<()> {
    let StringMatcher {
        ignore_case,
        match_pattern,
    } = sm;
    let ci = if *ignore_case { "(?i)" } else { "" };
    let re = match match_pattern {
        Some(string_matcher::MatchPattern::Exact(v)) if !ignore_case => {
            out.exact = Some(v.clone());
            return Some(());
        }
        Some(string_matcher::MatchPattern::Exact(v)) => escape(v),
        Some(string_matcher::MatchPattern::Prefix(v)) => format!("{}.*", escape(v)),
        Some(string_matcher::MatchPattern::Suffix(v)) => format!(".*{}", escape(v)),
        Some(string_matcher::MatchPattern::Contains(v)) => format!(".*{}.*", escape(v)),
        Some(string_matcher::MatchPattern::SafeRegex(r)) if !ignore_case => {
            regex(e, &join(path, "safe_regex"), r)?
        }
        Some(string_matcher::MatchPattern::SafeRegex(_)) => {
            // Envoy ignores ignore_case for regexes.
            e.unsupported(path, "ignore_case with safe_regex");
            return None;
        }
        Some(string_matcher::MatchPattern::Custom(_)) => {
            e.unsupported(path, "custom");
            return None;
        }
        None => {
            e.at(path, "needs a match pattern");
            return None;
        }
    };
    out.regex = Some(format!("{ci}{re}"));
    Some(())
}

#[allow(deprecated)]
fn route_action(e: &mut Errs<'_>, path: &str, ra: &RouteAction, rc: &mut RouteConfig) {
    let RouteAction {
        cluster_not_found_response_code,
        metadata_match,
        prefix_rewrite,
        regex_rewrite,
        path_rewrite_policy,
        path_rewrite,
        append_x_forwarded_host,
        timeout,
        idle_timeout,
        flush_timeout,
        early_data_policy,
        retry_policy,
        retry_policy_typed_config,
        request_mirror_policies,
        priority,
        rate_limits,
        include_vh_rate_limits,
        hash_policy,
        cors,
        max_grpc_timeout,
        grpc_timeout_offset,
        upgrade_configs,
        internal_redirect_policy,
        internal_redirect_action,
        max_internal_redirects,
        hedge_policy,
        max_stream_duration,
        cluster_specifier,
        host_rewrite_specifier,
    } = ra;
    // A missing cluster answers 503 (see `merge`): other codes are not supported yet.
    refuse!(e, path; cluster_not_found_response_code, metadata_match, regex_rewrite,
        path_rewrite_policy, path_rewrite, append_x_forwarded_host, flush_timeout,
        early_data_policy, retry_policy_typed_config, request_mirror_policies, rate_limits,
        include_vh_rate_limits, cors, max_grpc_timeout, grpc_timeout_offset, upgrade_configs,
        internal_redirect_policy, internal_redirect_action, max_internal_redirects,
        hedge_policy, max_stream_duration);
    if *priority != RoutingPriority::Default as i32 {
        e.unsupported(path, "priority");
    }
    for (i, hp) in hash_policy.iter().enumerate() {
        // The model hashes on the cluster's `hash_header`, or the client address without
        // one: only the latter is a route-independent choice.
        let source_ip = matches!(
            &hp.policy_specifier,
            Some(hash_policy::PolicySpecifier::ConnectionProperties(c)) if c.source_ip
        );
        if !source_ip {
            e.at(
                &format!("{path}.hash_policy[{i}]"),
                "not supported yet (only connection_properties.source_ip)",
            );
        }
    }
    if !prefix_rewrite.is_empty() {
        rc.prefix_rewrite = Some(prefix_rewrite.clone());
    }
    rc.timeout = dur(e, &join(path, "timeout"), timeout);
    rc.idle_timeout = dur(e, &join(path, "idle_timeout"), idle_timeout);
    if let Some(rp) = retry_policy {
        rc.retry_policy = retry(e, &join(path, "retry_policy"), rp);
        if let Some(t) = dur(
            e,
            &join(path, "retry_policy.per_try_timeout"),
            &rp.per_try_timeout,
        ) {
            rc.per_try_timeout = Some(t);
        }
    }
    match host_rewrite_specifier {
        Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(h)) => {
            rc.host_rewrite = Some(h.clone())
        }
        Some(route_action::HostRewriteSpecifier::AutoHostRewrite(b)) if !b.value => {}
        Some(route_action::HostRewriteSpecifier::AutoHostRewrite(_)) => {
            e.unsupported(path, "auto_host_rewrite")
        }
        Some(route_action::HostRewriteSpecifier::HostRewriteHeader(_)) => {
            e.unsupported(path, "host_rewrite_header")
        }
        Some(route_action::HostRewriteSpecifier::HostRewritePathRegex(_)) => {
            e.unsupported(path, "host_rewrite_path_regex")
        }
        Some(route_action::HostRewriteSpecifier::HostRewrite(_)) => {
            e.unsupported(path, "host_rewrite")
        }
        None => {}
    }
    match cluster_specifier {
        Some(route_action::ClusterSpecifier::Cluster(c)) => rc.cluster = Some(c.clone()),
        Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
            rc.weighted_clusters = weighted(e, &join(path, "weighted_clusters"), w)
        }
        Some(route_action::ClusterSpecifier::ClusterHeader(_)) => {
            e.unsupported(path, "cluster_header")
        }
        Some(route_action::ClusterSpecifier::ClusterSpecifierPlugin(_))
        | Some(route_action::ClusterSpecifier::InlineClusterSpecifierPlugin(_)) => {
            e.unsupported(path, "cluster_specifier_plugin")
        }
        None => e.at(path, "needs cluster or weighted_clusters"),
    }
}

#[allow(deprecated)]
fn weighted(
    e: &mut Errs<'_>,
    path: &str,
    w: &WeightedCluster,
) -> Option<Vec<WeightedClusterConfig>> {
    let WeightedCluster {
        clusters,
        total_weight,
        runtime_key_prefix,
        random_value_specifier,
    } = w;
    refuse!(e, path; runtime_key_prefix);
    if random_value_specifier.is_some() {
        e.unsupported(path, "header_name");
    }
    let mut out = Vec::new();
    let mut sum: u64 = 0;
    for (i, cw) in clusters.iter().enumerate() {
        let cpath = format!("{path}.clusters[{i}]");
        let ClusterWeight {
            name,
            cluster_header,
            weight,
            metadata_match,
            request_headers_to_add,
            request_headers_to_remove,
            response_headers_to_add,
            response_headers_to_remove,
            typed_per_filter_config,
            host_rewrite_specifier,
        } = cw;
        refuse!(e, cpath; cluster_header, metadata_match);
        if host_rewrite_specifier.is_some() {
            e.unsupported(&cpath, "host_rewrite_literal");
        }
        // Per-cluster header changes apply only to that share: the model has them per
        // route.
        if request_headers_to_add.is_set()
            || request_headers_to_remove.is_set()
            || response_headers_to_add.is_set()
            || response_headers_to_remove.is_set()
        {
            e.at(
                &cpath,
                "header changes per weighted cluster are not supported yet",
            );
        }
        per_filter_config(e, &format!("{cpath}."), typed_per_filter_config);
        let weight = u32v(weight).unwrap_or(0);
        sum += u64::from(weight);
        if name.is_empty() {
            e.at(&join(&cpath, "name"), "required");
        }
        out.push(WeightedClusterConfig {
            name: name.clone(),
            weight,
        });
    }
    if let Some(t) = u32v(total_weight) {
        if u64::from(t) != sum {
            e.at(
                &join(path, "total_weight"),
                format!("{t} differs from the sum of the weights ({sum})"),
            );
        }
    }
    Some(out)
}

#[allow(deprecated)]
fn retry(
    e: &mut Errs<'_>,
    path: &str,
    rp: &envoy_types::pb::envoy::config::route::v3::RetryPolicy,
) -> Option<RetryPolicyConfig> {
    let envoy_types::pb::envoy::config::route::v3::RetryPolicy {
        retry_on,
        num_retries,
        // Read by the caller (it is the route's per_try_timeout).
        per_try_timeout: _,
        per_try_idle_timeout,
        retry_priority,
        retry_host_predicate,
        retry_options_predicates,
        // Istio sets 5 with previous_hosts; picking again is what Mecha does on every try.
        host_selection_retry_max_attempts: _,
        retriable_status_codes,
        retry_back_off,
        rate_limited_retry_back_off,
        retriable_headers,
        retriable_request_headers,
        refresh_cluster_on_retry,
    } = rp;
    let before = e.count();
    refuse!(e, path; per_try_idle_timeout, retry_priority, retry_options_predicates,
        rate_limited_retry_back_off, retriable_headers, retriable_request_headers,
        refresh_cluster_on_retry);
    for (i, p) in retry_host_predicate.iter().enumerate() {
        // "Avoid the hosts already tried" (Istio's default): a best effort Mecha's picks make
        // anyway; others are not supported.
        if p.name != "envoy.retry_host_predicates.previous_hosts" {
            e.at(
                &format!("{path}.retry_host_predicate[{i}]"),
                format!("{:?} not supported yet", p.name),
            );
        }
    }
    let mut on = Vec::new();
    for cond in retry_on.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        match cond {
            "connect-failure"
            | "reset"
            | "5xx"
            | "retriable-status-codes"
            | "cancelled"
            | "deadline-exceeded"
            | "resource-exhausted"
            | "internal"
            | "unavailable" => on.push(cond.to_owned()),
            // Istio's default list includes it: a refused stream was never processed, so it
            // is a reset Mecha retries.
            "refused-stream" => {
                if !on.iter().any(|c| c == "reset") {
                    on.push("reset".to_owned())
                }
            }
            other => e.at(
                &join(path, "retry_on"),
                format!("{other:?} not supported yet"),
            ),
        }
    }
    let mut codes = Vec::new();
    for (i, c) in retriable_status_codes.iter().enumerate() {
        match u16::try_from(*c) {
            Ok(c) if (100..=599).contains(&c) => codes.push(c),
            _ => e.at(
                &format!("{path}.retriable_status_codes[{i}]"),
                format!("{c} is not an HTTP status"),
            ),
        }
    }
    // Envoy's defaults: 25 ms base, max 10 × base.
    let (mut base, mut max) = (
        std::time::Duration::from_millis(25),
        None::<std::time::Duration>,
    );
    if let Some(b) = retry_back_off {
        if let Some(d) = super::duration(
            e,
            &join(path, "retry_back_off.base_interval"),
            &b.base_interval,
        ) {
            base = d;
        }
        max = super::duration(
            e,
            &join(path, "retry_back_off.max_interval"),
            &b.max_interval,
        );
    }
    if e.count() != before {
        return None;
    }
    Some(RetryPolicyConfig {
        retry_on: on,
        num_retries: u32v(num_retries).unwrap_or(1),
        retriable_status_codes: codes,
        base_interval: Dur(base),
        max_interval: Dur(max.unwrap_or(base.saturating_mul(10))),
        // Envoy retries whatever the method: so does the translated policy.
        retry_non_idempotent: true,
    })
}

fn redirect(e: &mut Errs<'_>, path: &str, rd: &RedirectAction) -> Option<RedirectConfig> {
    let RedirectAction {
        host_redirect,
        port_redirect,
        response_code,
        strip_query,
        scheme_rewrite_specifier,
        path_rewrite_specifier,
    } = rd;
    let before = e.count();
    refuse!(e, path; port_redirect, strip_query);
    let code = match redirect_action::RedirectResponseCode::try_from(*response_code) {
        Ok(redirect_action::RedirectResponseCode::MovedPermanently) => 301,
        Ok(redirect_action::RedirectResponseCode::Found) => 302,
        Ok(redirect_action::RedirectResponseCode::SeeOther) => 303,
        Ok(redirect_action::RedirectResponseCode::TemporaryRedirect) => 307,
        Ok(redirect_action::RedirectResponseCode::PermanentRedirect) => 308,
        Err(_) => {
            e.at(
                &join(path, "response_code"),
                format!("unknown code {response_code}"),
            );
            301
        }
    };
    let scheme = match scheme_rewrite_specifier {
        Some(redirect_action::SchemeRewriteSpecifier::HttpsRedirect(true)) => {
            Some("https".to_owned())
        }
        Some(redirect_action::SchemeRewriteSpecifier::HttpsRedirect(false)) | None => None,
        Some(redirect_action::SchemeRewriteSpecifier::SchemeRedirect(s)) => Some(s.clone()),
    };
    let new_path = match path_rewrite_specifier {
        Some(redirect_action::PathRewriteSpecifier::PathRedirect(p)) => Some(p.clone()),
        Some(redirect_action::PathRewriteSpecifier::PrefixRewrite(_)) => {
            e.unsupported(path, "prefix_rewrite");
            None
        }
        Some(redirect_action::PathRewriteSpecifier::RegexRewrite(_)) => {
            e.unsupported(path, "regex_rewrite");
            None
        }
        Some(redirect_action::PathRewriteSpecifier::PathRewrite(_)) => {
            e.unsupported(path, "path_rewrite");
            None
        }
        None => None,
    };
    (e.count() == before).then(|| RedirectConfig {
        scheme,
        host: (!host_redirect.is_empty()).then(|| host_redirect.clone()),
        path: new_path,
        code,
    })
}

fn direct_response(
    e: &mut Errs<'_>,
    path: &str,
    d: &DirectResponseAction,
) -> Option<DirectResponseConfig> {
    let DirectResponseAction {
        status,
        body,
        body_format,
    } = d;
    refuse!(e, path; body_format);
    let status = match u16::try_from(*status) {
        Ok(s) if (100..=599).contains(&s) => s,
        _ => {
            e.at(
                &join(path, "status"),
                format!("{status} is not an HTTP status"),
            );
            return None;
        }
    };
    let body = match body {
        None => String::new(),
        Some(DataSource {
            watched_directory: _,
            specifier,
        }) => match specifier {
            Some(data_source::Specifier::InlineString(s)) => s.clone(),
            Some(data_source::Specifier::InlineBytes(b)) => match String::from_utf8(b.clone()) {
                Ok(s) => s,
                Err(_) => {
                    e.at(
                        &join(path, "body.inline_bytes"),
                        "not UTF-8: not supported yet",
                    );
                    return None;
                }
            },
            Some(data_source::Specifier::Filename(_)) => {
                e.unsupported(path, "body.filename");
                return None;
            }
            Some(data_source::Specifier::EnvironmentVariable(_)) => {
                e.unsupported(path, "body.environment_variable");
                return None;
            }
            None => String::new(),
        },
    };
    Some(DirectResponseConfig { status, body })
}
