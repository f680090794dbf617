//! Compiled route tables: virtual hosts matched on the authority, then the first route whose
//! path, method and header conditions hold.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex::Regex;

use crate::cluster::Cluster;
use crate::config::{
    HeaderMatchConfig, HeaderValueConfig, MatchConfig, QueryMatchConfig, RouteConfig, RouterConfig,
    VirtualHostConfig,
};
use crate::retry::RetryPolicy;

/// Finds a cluster by name while a table is built; `None` when config has no such cluster.
pub type ResolveCluster<'a> = &'a dyn Fn(&str) -> Option<Arc<Cluster>>;

#[derive(Debug)]
pub struct RouteTable {
    pub virtual_hosts: Vec<VirtualHost>,
}

#[derive(Debug)]
pub struct VirtualHost {
    pub name: String,
    domains: Vec<DomainMatch>,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum DomainMatch {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
    Any,
}

#[derive(Debug)]
pub struct Route {
    /// `vhost/route-name` or `vhost/#index`: the metrics label, fixed at build time.
    pub label: String,
    path: PathMatch,
    methods: Vec<Method>,
    headers: Vec<HeaderMatch>,
    query: Vec<QueryMatch>,
    pub action: Action,
    pub prefix_rewrite: Option<String>,
    pub host_rewrite: Option<HeaderValue>,
    pub timeout: Option<Duration>,
    pub per_try_timeout: Option<Duration>,
    /// `None`: the router's default; `Some(ZERO)`: disabled.
    pub idle_timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
    pub request_headers_to_add: Vec<(HeaderName, HeaderValue)>,
    pub request_headers_to_remove: Vec<HeaderName>,
    pub response_headers_to_add: Vec<(HeaderName, HeaderValue)>,
    pub response_headers_to_remove: Vec<HeaderName>,
}

#[derive(Debug)]
enum PathMatch {
    Prefix(String),
    Exact(String),
    Regex(Regex),
}

#[derive(Debug)]
struct HeaderMatch {
    name: HeaderName,
    cond: HeaderCond,
    invert: bool,
}

#[derive(Debug)]
struct QueryMatch {
    name: String,
    cond: HeaderCond,
}

#[derive(Debug)]
enum HeaderCond {
    Exact(String),
    Regex(Regex),
    Present(bool),
}

/// What a matched route does. Cluster references are resolved when the table is built: a
/// request never looks a cluster up by name.
#[derive(Debug)]
pub enum Action {
    Cluster(Arc<Cluster>),
    /// Clusters with cumulative weights (canary split).
    Weighted {
        clusters: Vec<(Arc<Cluster>, u32)>,
        total: u32,
    },
    Direct {
        status: u16,
        /// Shared: answering clones a reference, never the bytes.
        body: bytes::Bytes,
    },
    Redirect {
        scheme: Option<String>,
        host: Option<String>,
        path: Option<String>,
        code: u16,
    },
}

// === build ===

fn header_pairs(
    path: &str,
    list: &[HeaderValueConfig],
    errors: &mut Vec<String>,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    for (i, h) in list.iter().enumerate() {
        match (
            HeaderName::try_from(h.name.as_str()),
            HeaderValue::try_from(h.value.as_str()),
        ) {
            (Ok(n), Ok(v)) => out.push((n, v)),
            (Err(_), _) => errors.push(format!(
                "{path}[{i}].name: invalid header name {:?}",
                h.name
            )),
            (_, Err(_)) => errors.push(format!(
                "{path}[{i}].value: invalid header value {:?}",
                h.value
            )),
        }
    }
    out
}

fn header_names(path: &str, list: &[String], errors: &mut Vec<String>) -> Vec<HeaderName> {
    let mut out = Vec::new();
    for (i, h) in list.iter().enumerate() {
        match HeaderName::try_from(h.as_str()) {
            Ok(n) => out.push(n),
            Err(_) => errors.push(format!("{path}[{i}]: invalid header name {h:?}")),
        }
    }
    out
}

fn regex(path: &str, re: &str, errors: &mut Vec<String>) -> Option<Regex> {
    // Anchored: Envoy's safe_regex matches the whole path.
    match Regex::new(&format!("^(?:{re})$")) {
        Ok(r) => Some(r),
        Err(e) => {
            errors.push(format!("{path}: invalid regex {re:?}: {e}"));
            None
        }
    }
}

type BuiltMatch = (PathMatch, Vec<Method>, Vec<HeaderMatch>, Vec<QueryMatch>);

fn build_match(path: &str, m: &MatchConfig, errors: &mut Vec<String>) -> BuiltMatch {
    let set = [m.prefix.is_some(), m.path.is_some(), m.regex.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    if set > 1 {
        errors.push(format!("{path}: set only one of prefix, path, regex"));
    }
    let pm = if let Some(p) = &m.path {
        PathMatch::Exact(p.clone())
    } else if let Some(r) = &m.regex {
        regex(&format!("{path}.regex"), r, errors)
            .map(PathMatch::Regex)
            .unwrap_or(PathMatch::Prefix("/".into()))
    } else {
        PathMatch::Prefix(m.prefix.clone().unwrap_or_else(|| "/".to_owned()))
    };
    let mut methods = Vec::new();
    for (i, name) in m.methods.iter().enumerate() {
        match Method::from_bytes(name.to_ascii_uppercase().as_bytes()) {
            Ok(me) => methods.push(me),
            Err(_) => errors.push(format!("{path}.methods[{i}]: invalid method {name:?}")),
        }
    }
    let mut headers = Vec::new();
    for (i, h) in m.headers.iter().enumerate() {
        let hp = format!("{path}.headers[{i}]");
        if let Some(hm) = build_header_match(&hp, h, errors) {
            headers.push(hm);
        }
    }
    let mut query = Vec::new();
    for (i, q) in m.query.iter().enumerate() {
        if let Some(qm) = build_query_match(&format!("{path}.query[{i}]"), q, errors) {
            query.push(qm);
        }
    }
    (pm, methods, headers, query)
}

fn build_query_match(
    path: &str,
    q: &QueryMatchConfig,
    errors: &mut Vec<String>,
) -> Option<QueryMatch> {
    if q.name.is_empty() {
        errors.push(format!("{path}.name: required"));
        return None;
    }
    let cond = match (&q.exact, &q.regex, q.present) {
        (Some(e), None, None) => HeaderCond::Exact(e.clone()),
        (None, Some(r), None) => HeaderCond::Regex(regex(&format!("{path}.regex"), r, errors)?),
        (None, None, Some(p)) => HeaderCond::Present(p),
        (None, None, None) => HeaderCond::Present(true),
        _ => {
            errors.push(format!("{path}: set only one of exact, regex, present"));
            return None;
        }
    };
    Some(QueryMatch {
        name: q.name.clone(),
        cond,
    })
}

fn build_header_match(
    path: &str,
    h: &HeaderMatchConfig,
    errors: &mut Vec<String>,
) -> Option<HeaderMatch> {
    let Ok(name) = HeaderName::try_from(h.name.as_str()) else {
        errors.push(format!("{path}.name: invalid header name {:?}", h.name));
        return None;
    };
    let cond = match (&h.exact, &h.regex, h.present) {
        (Some(e), None, None) => HeaderCond::Exact(e.clone()),
        (None, Some(r), None) => HeaderCond::Regex(regex(&format!("{path}.regex"), r, errors)?),
        (None, None, Some(p)) => HeaderCond::Present(p),
        (None, None, None) => HeaderCond::Present(true),
        _ => {
            errors.push(format!("{path}: set only one of exact, regex, present"));
            return None;
        }
    };
    Some(HeaderMatch {
        name,
        cond,
        invert: h.invert,
    })
}

impl RouteTable {
    /// Compiles a router config; `path` prefixes error paths (e.g. `listeners[0].filters[1]`).
    /// `resolve` finds every referenced cluster (an unknown one is an error).
    pub fn build(
        path: &str,
        cfg: &RouterConfig,
        resolve: ResolveCluster<'_>,
    ) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let mut vhs = Vec::new();
        for (vi, vh) in cfg.virtual_hosts.iter().enumerate() {
            let vpath = format!("{path}.virtual_hosts[{vi}]");
            vhs.push(build_vhost(&vpath, vh, resolve, &mut errors));
        }
        if errors.is_empty() {
            Ok(Self { virtual_hosts: vhs })
        } else {
            Err(errors)
        }
    }

    /// The route for a request, or `None` (→ 404).
    pub fn find(
        &self,
        authority: &str,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<&Route> {
        self.find_index(authority, path, method, headers)
            .and_then(|i| self.route(i))
    }

    /// Like [`find`](Self::find), as `(virtual host, route)` indices a request can keep.
    pub fn find_index(
        &self,
        authority: &str,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<(usize, usize)> {
        let vi = self.pick_vhost(authority)?;
        let ri = self.virtual_hosts[vi]
            .routes
            .iter()
            .position(|r| r.matches(path, method, headers))?;
        Some((vi, ri))
    }

    pub fn route(&self, (vi, ri): (usize, usize)) -> Option<&Route> {
        self.virtual_hosts.get(vi)?.routes.get(ri)
    }

    /// Most specific domain wins: exact (with or without the port), then longest suffix, then
    /// `*`.
    fn pick_vhost(&self, authority: &str) -> Option<usize> {
        let host = strip_port(authority);
        let mut best: Option<(usize, usize)> = None;
        for (vi, vh) in self.virtual_hosts.iter().enumerate() {
            for d in &vh.domains {
                let score = match d {
                    DomainMatch::Exact(e) if e.eq_ignore_ascii_case(authority) => usize::MAX,
                    DomainMatch::Exact(e) if e.eq_ignore_ascii_case(host) => usize::MAX - 1,
                    DomainMatch::Suffix(s)
                        if host.len() > s.len()
                            // Bytes, not str: no char-boundary panic on odd input.
                            && host.as_bytes()[host.len() - s.len()..]
                                .eq_ignore_ascii_case(s.as_bytes()) =>
                    {
                        s.len() + 1
                    }
                    DomainMatch::Any => 0,
                    _ => continue,
                };
                if best.is_none_or(|(_, b)| score > b) {
                    best = Some((vi, score));
                }
            }
        }
        best.map(|(vi, _)| vi)
    }
}

fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        // [v6]:port
        return authority
            .split(']')
            .next()
            .map(|h| &h[1..])
            .unwrap_or(authority);
    }
    authority
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(authority)
}

fn build_vhost(
    vpath: &str,
    vh: &VirtualHostConfig,
    resolve: ResolveCluster<'_>,
    errors: &mut Vec<String>,
) -> VirtualHost {
    let mut domains = Vec::new();
    if vh.domains.is_empty() {
        errors.push(format!(
            "{vpath}.domains: must not be empty (use \"*\" for any host)"
        ));
    }
    for d in &vh.domains {
        domains.push(if d == "*" {
            DomainMatch::Any
        } else if let Some(s) = d.strip_prefix('*') {
            DomainMatch::Suffix(s.to_owned())
        } else {
            DomainMatch::Exact(d.clone())
        });
    }
    let mut routes = Vec::new();
    for (ri, r) in vh.routes.iter().enumerate() {
        let rpath = format!("{vpath}.routes[{ri}]");
        let label = format!(
            "{}/{}",
            vh.name,
            r.name.clone().unwrap_or_else(|| format!("#{ri}"))
        );
        routes.push(build_route(&rpath, label, r, resolve, errors));
    }
    VirtualHost {
        name: vh.name.clone(),
        domains,
        routes,
    }
}

fn build_route(
    rpath: &str,
    label: String,
    r: &RouteConfig,
    resolve: ResolveCluster<'_>,
    errors: &mut Vec<String>,
) -> Route {
    let (path, methods, headers, query) =
        build_match(&format!("{rpath}.match"), &r.matcher, errors);
    errors.extend(crate::bounds::route(rpath, r));
    let actions = [
        r.cluster.is_some(),
        r.weighted_clusters.is_some(),
        r.direct_response.is_some(),
        r.redirect.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if actions != 1 {
        errors.push(format!(
            "{rpath}: set exactly one of cluster, weighted_clusters, direct_response, redirect"
        ));
    }
    let mut find = |p: String, name: &str| {
        let found = resolve(name);
        if found.is_none() {
            errors.push(format!("{p}: unknown cluster {name:?}"));
        }
        found
    };
    let action = if let Some(c) = &r.cluster {
        match find(format!("{rpath}.cluster"), c) {
            Some(c) => Action::Cluster(c),
            None => Action::Direct {
                status: 503,
                body: bytes::Bytes::new(),
            },
        }
    } else if let Some(w) = &r.weighted_clusters {
        let mut total = 0u32;
        let mut clusters = Vec::new();
        for (i, wc) in w.iter().enumerate() {
            let Some(c) = find(format!("{rpath}.weighted_clusters[{i}].name"), &wc.name) else {
                continue;
            };
            total = total.saturating_add(wc.weight);
            clusters.push((c, total));
        }
        if total == 0 {
            errors.push(format!(
                "{rpath}.weighted_clusters: weights must add up to more than 0"
            ));
        }
        Action::Weighted { clusters, total }
    } else if let Some(d) = &r.direct_response {
        if !(100..=599).contains(&d.status) {
            errors.push(format!(
                "{rpath}.direct_response.status: {} is not an HTTP status",
                d.status
            ));
        }
        Action::Direct {
            status: d.status,
            body: bytes::Bytes::from(d.body.clone()),
        }
    } else if let Some(rd) = &r.redirect {
        if ![301, 302, 303, 307, 308].contains(&rd.code) {
            errors.push(format!(
                "{rpath}.redirect.code: {} is not a redirect status",
                rd.code
            ));
        }
        Action::Redirect {
            scheme: rd.scheme.clone(),
            host: rd.host.clone(),
            path: rd.path.clone(),
            code: rd.code,
        }
    } else {
        Action::Direct {
            status: 500,
            body: bytes::Bytes::from_static(b"route has no action"),
        }
    };
    let host_rewrite =
        r.host_rewrite
            .as_ref()
            .and_then(|h| match HeaderValue::try_from(h.as_str()) {
                Ok(v) => Some(v),
                Err(_) => {
                    errors.push(format!("{rpath}.host_rewrite: invalid host {h:?}"));
                    None
                }
            });
    if r.prefix_rewrite.is_some() && !matches!(path, PathMatch::Prefix(_)) {
        errors.push(format!("{rpath}.prefix_rewrite: needs a prefix match"));
    }
    let retry = r
        .retry_policy
        .as_ref()
        .and_then(|p| match RetryPolicy::build(p) {
            Ok(rp) => Some(rp),
            Err(e) => {
                errors.push(format!("{rpath}.retry_policy.{e}"));
                None
            }
        });
    Route {
        label,
        path,
        methods,
        headers,
        query,
        action,
        prefix_rewrite: r.prefix_rewrite.clone(),
        host_rewrite,
        timeout: r.timeout.map(|d| d.0),
        per_try_timeout: r.per_try_timeout.map(|d| d.0).filter(|d| !d.is_zero()),
        idle_timeout: r.idle_timeout.map(|d| d.0),
        retry,
        request_headers_to_add: header_pairs(
            &format!("{rpath}.request_headers_to_add"),
            &r.request_headers_to_add,
            errors,
        ),
        request_headers_to_remove: header_names(
            &format!("{rpath}.request_headers_to_remove"),
            &r.request_headers_to_remove,
            errors,
        ),
        response_headers_to_add: header_pairs(
            &format!("{rpath}.response_headers_to_add"),
            &r.response_headers_to_add,
            errors,
        ),
        response_headers_to_remove: header_names(
            &format!("{rpath}.response_headers_to_remove"),
            &r.response_headers_to_remove,
            errors,
        ),
    }
}

/// The raw value of the first `name` parameter of a query string (`""` for `?name` or
/// `?name=`), not percent-decoded: Envoy compares query matchers with the URL's bytes.
fn query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

// === impl Route ===

impl Route {
    fn matches(&self, path: &str, method: &Method, headers: &HeaderMap) -> bool {
        let (path_only, query) = path.split_once('?').unwrap_or((path, ""));
        let path_ok = match &self.path {
            PathMatch::Prefix(p) => path_only.starts_with(p.as_str()),
            PathMatch::Exact(p) => path_only == p,
            PathMatch::Regex(r) => r.is_match(path_only),
        };
        if !path_ok {
            return false;
        }
        if !self.methods.is_empty() && !self.methods.contains(method) {
            return false;
        }
        self.headers.iter().all(|h| {
            let v = headers.get(&h.name);
            let hit = match &h.cond {
                HeaderCond::Present(p) => v.is_some() == *p,
                HeaderCond::Exact(e) => v.is_some_and(|v| v.as_bytes() == e.as_bytes()),
                HeaderCond::Regex(r) => v
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|s| r.is_match(s)),
            };
            hit != h.invert
        }) && self.query.iter().all(|q| {
            let v = query_value(query, &q.name);
            match &q.cond {
                HeaderCond::Present(p) => v.is_some() == *p,
                HeaderCond::Exact(e) => v == Some(e.as_str()),
                HeaderCond::Regex(r) => v.is_some_and(|v| r.is_match(v)),
            }
        })
    }

    /// The path sent upstream: the matched prefix replaced by `prefix_rewrite`.
    pub fn rewrite_path(&self, path_and_query: &str) -> Option<String> {
        let (PathMatch::Prefix(prefix), Some(new)) = (&self.path, &self.prefix_rewrite) else {
            return None;
        };
        path_and_query
            .strip_prefix(prefix.as_str())
            .map(|rest| format!("{new}{rest}"))
    }

    /// Whether [`Route::cluster_for`] depends on its roll (weighted clusters).
    pub fn is_weighted(&self) -> bool {
        matches!(self.action, Action::Weighted { .. })
    }

    /// Picks the cluster: fixed, or by weight with `roll` uniformly in `0..total`.
    pub fn cluster_for(&self, roll: u32) -> Option<&Arc<Cluster>> {
        match &self.action {
            Action::Cluster(c) => Some(c),
            Action::Weighted { clusters, total } => {
                let r = roll % (*total).max(1);
                clusters.iter().find(|(_, cum)| r < *cum).map(|(c, _)| c)
            }
            _ => None,
        }
    }

    /// Every cluster this route may send to.
    pub fn clusters(&self) -> impl Iterator<Item = &Arc<Cluster>> {
        let (one, many) = match &self.action {
            Action::Cluster(c) => (Some(c), &[][..]),
            Action::Weighted { clusters, .. } => (None, clusters.as_slice()),
            _ => (None, &[][..]),
        };
        one.into_iter().chain(many.iter().map(|(c, _)| c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::*;

    /// Resolves any name to a one-endpoint cluster of that name.
    fn any_cluster(name: &str) -> Option<Arc<Cluster>> {
        Some(crate::cluster::tests::cluster_named(name))
    }

    fn table(yaml_routes: Vec<RouteConfig>, domains: Vec<&str>) -> RouteTable {
        let cfg = RouterConfig {
            virtual_hosts: vec![VirtualHostConfig {
                name: "vh".into(),
                domains: domains.into_iter().map(String::from).collect(),
                routes: yaml_routes,
            }],
            access_log: false,
        };
        RouteTable::build("r", &cfg, &any_cluster).expect("valid")
    }

    fn route(m: MatchConfig, cluster: &str) -> RouteConfig {
        RouteConfig {
            name: None,
            matcher: m,
            cluster: Some(cluster.into()),
            weighted_clusters: None,
            direct_response: None,
            redirect: None,
            prefix_rewrite: None,
            host_rewrite: None,
            timeout: None,
            per_try_timeout: None,
            idle_timeout: None,
            retry_policy: None,
            request_headers_to_add: vec![],
            request_headers_to_remove: vec![],
            response_headers_to_add: vec![],
            response_headers_to_remove: vec![],
        }
    }

    fn m(prefix: Option<&str>, path: Option<&str>, regex: Option<&str>) -> MatchConfig {
        MatchConfig {
            prefix: prefix.map(String::from),
            path: path.map(String::from),
            regex: regex.map(String::from),
            methods: vec![],
            headers: vec![],
            query: vec![],
        }
    }

    #[test]
    fn query_parameters_match_by_their_raw_first_value() {
        let q = |name: &str, exact: Option<&str>, regex: Option<&str>, present: Option<bool>| {
            QueryMatchConfig {
                name: name.into(),
                exact: exact.map(String::from),
                regex: regex.map(String::from),
                present,
            }
        };
        let mut debug = m(Some("/"), None, None);
        debug.query = vec![q("debug", Some("1"), None, None)];
        let mut v2 = m(Some("/"), None, None);
        v2.query = vec![
            q("v", None, Some("2(\\.[0-9]+)?"), None),
            q("flag", None, None, None),
        ];
        let mut no_token = m(Some("/"), None, None);
        no_token.query = vec![q("token", None, None, Some(false))];
        let t = table(
            vec![
                route(debug, "debug"),
                route(v2, "v2"),
                route(no_token, "public"),
                route(m(Some("/"), None, None), "rest"),
            ],
            vec!["*"],
        );
        let h = HeaderMap::new();
        let c = |p: &str| {
            t.find("x", p, &Method::GET, &h)
                .and_then(|r| r.cluster_for(0).map(|c| c.name.as_str()))
                .map(String::from)
        };
        assert_eq!(c("/a?debug=1").as_deref(), Some("debug"));
        assert_eq!(c("/a?x=y&debug=1&debug=0").as_deref(), Some("debug"));
        assert_eq!(
            c("/a?debug=0&debug=1").as_deref(),
            Some("public"),
            "first value counts"
        );
        assert_eq!(c("/a?v=2.1&flag").as_deref(), Some("v2"));
        assert_eq!(c("/a?v=2.1").as_deref(), Some("public"), "flag is required");
        assert_eq!(c("/a?v%3D2").as_deref(), Some("public"), "no decoding");
        assert_eq!(c("/a?token=t").as_deref(), Some("rest"));
        assert_eq!(c("/a").as_deref(), Some("public"));

        let mut bad = m(Some("/"), None, None);
        bad.query = vec![q("", None, None, None), q("x", Some("1"), Some("1"), None)];
        let cfg = RouterConfig {
            virtual_hosts: vec![VirtualHostConfig {
                name: "vh".into(),
                domains: vec!["*".into()],
                routes: vec![route(bad, "c")],
            }],
            access_log: false,
        };
        let errors = RouteTable::build("r", &cfg, &any_cluster).expect_err("invalid");
        assert_eq!(
            errors,
            [
                "r.virtual_hosts[0].routes[0].match.query[0].name: required",
                "r.virtual_hosts[0].routes[0].match.query[1]: set only one of exact, regex, present",
            ]
        );
    }

    #[test]
    fn first_matching_route_wins_by_path_kind() {
        let t = table(
            vec![
                route(m(None, Some("/exact"), None), "a"),
                route(m(None, None, Some("/items/[0-9]+")), "b"),
                route(m(Some("/api/"), None, None), "c"),
                route(m(Some("/"), None, None), "d"),
            ],
            vec!["*"],
        );
        let h = HeaderMap::new();
        let get = Method::GET;
        let c = |p: &str| {
            t.find("x", p, &get, &h)
                .and_then(|r| r.cluster_for(0).map(|c| c.name.as_str()))
                .map(String::from)
        };
        assert_eq!(c("/exact").as_deref(), Some("a"));
        assert_eq!(c("/exact/more").as_deref(), Some("d"));
        assert_eq!(c("/items/42").as_deref(), Some("b"));
        assert_eq!(c("/items/42x").as_deref(), Some("d"));
        assert_eq!(c("/api/v1?q=1").as_deref(), Some("c"));
    }

    #[test]
    fn domains_exact_beats_suffix_beats_any() {
        let mk = |name: &str, domains: Vec<&str>, cluster: &str| VirtualHostConfig {
            name: name.into(),
            domains: domains.into_iter().map(String::from).collect(),
            routes: vec![route(m(Some("/"), None, None), cluster)],
        };
        let cfg = RouterConfig {
            virtual_hosts: vec![
                mk("any", vec!["*"], "any"),
                mk("suffix", vec!["*.example.com"], "suffix"),
                mk("exact", vec!["api.example.com"], "exact"),
            ],
            access_log: false,
        };
        let t = RouteTable::build("r", &cfg, &any_cluster).expect("valid");
        let h = HeaderMap::new();
        let c = |host: &str| {
            t.find(host, "/", &Method::GET, &h)
                .and_then(|r| r.cluster_for(0).map(|c| c.name.as_str()))
                .map(String::from)
        };
        assert_eq!(c("api.example.com:8080").as_deref(), Some("exact"));
        assert_eq!(c("web.example.com").as_deref(), Some("suffix"));
        assert_eq!(c("other.org").as_deref(), Some("any"));
    }

    #[test]
    fn methods_and_headers_narrow_a_route() {
        let mut mc = m(Some("/"), None, None);
        mc.methods = vec!["post".into()];
        mc.headers = vec![HeaderMatchConfig {
            name: "x-canary".into(),
            exact: Some("1".into()),
            regex: None,
            present: None,
            invert: false,
        }];
        let t = table(
            vec![
                route(mc, "canary"),
                route(m(Some("/"), None, None), "stable"),
            ],
            vec!["*"],
        );
        let mut h = HeaderMap::new();
        let c = |me: &Method, h: &HeaderMap| {
            t.find("x", "/", me, h)
                .and_then(|r| r.cluster_for(0).map(|c| c.name.as_str()))
                .map(String::from)
        };
        assert_eq!(c(&Method::POST, &h).as_deref(), Some("stable"));
        h.insert("x-canary", HeaderValue::from_static("1"));
        assert_eq!(c(&Method::POST, &h).as_deref(), Some("canary"));
        assert_eq!(c(&Method::GET, &h).as_deref(), Some("stable"));
    }

    #[test]
    fn weighted_split_follows_cumulative_weights() {
        let mut r = route(m(Some("/"), None, None), "x");
        r.cluster = None;
        r.weighted_clusters = Some(vec![
            WeightedClusterConfig {
                name: "a".into(),
                weight: 90,
            },
            WeightedClusterConfig {
                name: "b".into(),
                weight: 10,
            },
        ]);
        let t = table(vec![r], vec!["*"]);
        let route = t
            .find("x", "/", &Method::GET, &HeaderMap::new())
            .expect("route");
        let a = (0..100)
            .filter(|roll| route.cluster_for(*roll).map(|c| c.name.as_str()) == Some("a"))
            .count();
        assert_eq!(a, 90);
    }

    #[test]
    fn bad_routes_are_reported_with_paths() {
        let mut r = route(m(None, None, Some("(")), "nope");
        r.direct_response = Some(DirectResponseConfig {
            status: 200,
            body: String::new(),
        });
        let cfg = RouterConfig {
            virtual_hosts: vec![VirtualHostConfig {
                name: "vh".into(),
                domains: vec![],
                routes: vec![r],
            }],
            access_log: false,
        };
        let errs = RouteTable::build("listeners[0].filters[0]", &cfg, &|c| {
            (c == "known").then(|| any_cluster(c)).flatten()
        })
        .expect_err("invalid");
        let all = errs.join("\n");
        assert!(
            all.contains("virtual_hosts[0].domains: must not be empty"),
            "{all}"
        );
        assert!(
            all.contains("routes[0].match.regex: invalid regex"),
            "{all}"
        );
        assert!(all.contains("routes[0]: set exactly one of"), "{all}");
        assert!(
            all.contains("routes[0].cluster: unknown cluster \"nope\""),
            "{all}"
        );
    }

    #[test]
    fn prefix_rewrite_keeps_the_rest() {
        let mut r = route(m(Some("/old/"), None, None), "c");
        r.prefix_rewrite = Some("/new/".into());
        let t = table(vec![r], vec!["*"]);
        let route = t
            .find("x", "/old/a?b=1", &Method::GET, &HeaderMap::new())
            .expect("route");
        assert_eq!(
            route.rewrite_path("/old/a?b=1").as_deref(),
            Some("/new/a?b=1")
        );
    }
}
