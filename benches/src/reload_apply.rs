//! Time to apply a config update to a running set of resources, on the real code path the
//! file watcher uses (`ResourceManager::apply_yaml`), for a config of `--clusters` clusters and
//! `--routes` routes (one listener, one router) in which one thing changes per update:
//!
//! - `route`: one route's `timeout` alternates (5 s / 6 s): only that router's route table may
//!   be rebuilt;
//! - `endpoint`: one cluster's endpoint port alternates: that cluster keeps its identity and
//!   adopts the new list in place;
//! - `cold`: the reference: parse, validate and build the same config from nothing (what the
//!   whole-world rebuild cost before the resource model).
//!
//! For each edit it prints median / p90 / max of the apply time over `--n` updates, the split
//! into parse, validate and diff-build (`Snapshot::build` against the running Snapshot), and
//! the update plan's counts (added, changed, removed, unchanged) of every update, which must be
//! identical across updates. Output: a human-readable table, and with `--tsv` one line per
//! measure (`scenario\tmeasure\tvalue`) for scripts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mecha_proxy_core::metrics::Metrics;
use mecha_proxy_core::resources::{Outcome, ResourceManager};
use mecha_proxy_core::snapshot::{Snapshot, UpdateSource};

struct Args {
    clusters: usize,
    routes: usize,
    n: usize,
    tsv: bool,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        clusters: 1000,
        routes: 1000,
        n: 200,
        tsv: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut num = |name: &str| -> Result<usize, String> {
            it.next()
                .ok_or_else(|| format!("{name} needs a value"))?
                .parse()
                .map_err(|e| format!("{name}: {e}"))
        };
        match k.as_str() {
            "--clusters" => a.clusters = num("--clusters")?,
            "--routes" => a.routes = num("--routes")?,
            "--n" => a.n = num("--n")?,
            "--tsv" => a.tsv = true,
            "-h" | "--help" => {
                return Err(
                    "usage: reload-apply [--clusters N] [--routes N] [--n UPDATES] [--tsv]"
                        .to_owned(),
                )
            }
            other => return Err(format!("unknown argument {other} (try --help)")),
        }
    }
    if a.clusters == 0 || a.routes == 0 || a.n == 0 {
        return Err("--clusters, --routes and --n must be at least 1".to_owned());
    }
    Ok(a)
}

/// The edit applied to the base config; `flip` alternates between its two forms.
#[derive(Clone, Copy)]
enum Edit {
    None,
    Route(bool),
    Endpoint(bool),
}

/// One listener with one router: route `i` sends `/rNNNN/` to cluster `i % clusters`, a final
/// catch-all to cluster 0; every cluster has one IP endpoint (no DNS, so nothing waits on I/O).
fn config(clusters: usize, routes: usize, edit: Edit) -> String {
    use std::fmt::Write;
    let (edited_route, edited_cluster) = (routes / 2, clusters / 2);
    let mut y = String::with_capacity(routes * 120 + clusters * 120);
    y.push_str(
        "threads: 1\nadmin:\n  address: 127.0.0.1:34998\nlisteners:\n  - name: outbound\n    \
         address: 127.0.0.1:15098\n    filters:\n      - type: router\n        virtual_hosts:\n          \
         - name: all\n            domains: [\"*\"]\n            routes:\n",
    );
    for i in 0..routes {
        let timeout = match edit {
            Edit::Route(true) if i == edited_route => "6s",
            _ => "5s",
        };
        let _ = writeln!(
            y,
            "              - match: {{ prefix: /r{i:04}/ }}\n                cluster: c{:04}\n                timeout: {timeout}",
            i % clusters
        );
    }
    y.push_str("              - match: { prefix: / }\n                cluster: c0000\nclusters:\n");
    for i in 0..clusters {
        let port = match edit {
            Edit::Endpoint(true) if i == edited_cluster => 40000,
            _ => 20000 + (i % 20000),
        };
        let _ = writeln!(
            y,
            "  - name: c{i:04}\n    protocol: http1\n    endpoints:\n      - address: 127.0.0.1:{port}"
        );
    }
    y
}

struct Stats {
    median: Duration,
    p90: Duration,
    max: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    Stats {
        median: at(0.5),
        p90: at(0.9),
        max: v[v.len() - 1],
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Parses, validates and builds `text` from nothing.
fn cold(text: &str, metrics: &Metrics) -> Result<(Snapshot, [usize; 4]), String> {
    let cfg = mecha_proxy_core::config::parse(text).map_err(|e| e.join("; "))?;
    let errs = mecha_proxy_core::config::validate(&cfg);
    if !errs.is_empty() {
        return Err(errs.join("; "));
    }
    let (snap, plan) = Snapshot::build(cfg, metrics, None, &UpdateSource::yaml("bench", text))
        .map_err(|e| e.join("; "))?;
    Ok((snap, plan.counts))
}

struct Phases {
    parse: Vec<Duration>,
    validate: Vec<Duration>,
    build: Vec<Duration>,
    apply: Vec<Duration>,
    plans: Vec<String>,
    counts: Vec<[usize; 4]>,
    /// Per update: clusters that are not the same objects as before the update.
    clusters_replaced: Vec<usize>,
    /// Per update: the resources (`kind/name`) whose version differs from the running one's.
    changed: Vec<String>,
}

/// Applies `n` alternating updates of `edit` to a manager running the base config.
fn updates(
    rt: &tokio::runtime::Runtime,
    a: &Args,
    edit: fn(bool) -> Edit,
) -> Result<Phases, String> {
    let metrics = Arc::new(Metrics::new());
    let base = config(a.clusters, a.routes, Edit::None);
    let (first, _) = cold(&base, &metrics)?;
    let manager = ResourceManager::new(first, metrics.clone(), false);
    let texts = [
        config(a.clusters, a.routes, edit(true)),
        config(a.clusters, a.routes, edit(false)),
    ];
    let mut p = Phases {
        parse: vec![],
        validate: vec![],
        build: vec![],
        apply: vec![],
        plans: vec![],
        counts: vec![],
        clusters_replaced: vec![],
        changed: vec![],
    };
    for i in 0..a.n {
        let text = &texts[i % 2];
        // The phases on their own, against the running Snapshot (builds touch nothing in it).
        let t = Instant::now();
        let cfg = mecha_proxy_core::config::parse(text).map_err(|e| e.join("; "))?;
        p.parse.push(t.elapsed());
        let t = Instant::now();
        let errs = mecha_proxy_core::config::validate(&cfg);
        p.validate.push(t.elapsed());
        if !errs.is_empty() {
            return Err(errs.join("; "));
        }
        let current = manager.current();
        let t = Instant::now();
        let built = Snapshot::build(
            cfg,
            &metrics,
            Some(&current),
            &UpdateSource::yaml("bench", text),
        )
        .map_err(|e| e.join("; "))?;
        p.build.push(t.elapsed());
        p.counts.push(built.1.counts);
        drop(built);
        // The real thing, as the file watcher calls it.
        let t = Instant::now();
        let outcome = rt
            .block_on(manager.apply_yaml("file", "file:bench", text))
            .map_err(|e| e.join("; "))?;
        p.apply.push(t.elapsed());
        match outcome {
            Outcome::Applied(plan) => p.plans.push(plan),
            Outcome::Unchanged => return Err(format!("update {i} was taken as unchanged")),
        }
        // Proof of what was rebuilt: object identity of every cluster, and the resources
        // whose version changed.
        let next = manager.current();
        p.clusters_replaced.push(
            next.clusters
                .iter()
                .filter(|(name, c)| {
                    current
                        .clusters
                        .get(*name)
                        .is_none_or(|old| !Arc::ptr_eq(old, c))
                })
                .count(),
        );
        let mut changed: Vec<String> = next
            .resources
            .iter()
            .filter(|r| {
                current
                    .resource(r.kind, &r.name)
                    .is_none_or(|old| old.version != r.version)
            })
            .map(|r| format!("{}/{}", r.kind.as_str(), r.name))
            .collect();
        changed.sort();
        p.changed.push(changed.join(","));
    }
    Ok(p)
}

fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("reload-apply: {e}");
            std::process::exit(2);
        }
    };
    // Mecha's workers and its config watcher run on current-thread runtimes.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("reload-apply: cannot start a tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = run(&rt, &a) {
        eprintln!("reload-apply: {e}");
        std::process::exit(1);
    }
}

fn run(rt: &tokio::runtime::Runtime, a: &Args) -> Result<(), String> {
    let base = config(a.clusters, a.routes, Edit::None);
    println!(
        "# reload-apply: {} clusters, {} routes (+1 catch-all), config {} bytes, {} updates per edit",
        a.clusters,
        a.routes,
        base.len(),
        a.n
    );
    let mut out: Vec<(String, String, String)> = vec![];
    // The reference: a cold build of the whole config, `n` times (fresh metrics each time).
    let mut cold_t = vec![];
    let mut cold_counts = [0; 4];
    for _ in 0..a.n.min(50) {
        let metrics = Metrics::new();
        let t = Instant::now();
        let (snap, counts) = rt.block_on(async { cold(&base, &metrics) })?;
        cold_t.push(t.elapsed());
        cold_counts = counts;
        drop(snap);
    }
    let s = stats(cold_t);
    for (k, v) in [
        ("median_ms", s.median),
        ("p90_ms", s.p90),
        ("max_ms", s.max),
    ] {
        out.push(("cold".into(), k.into(), format!("{:.3}", ms(v))));
    }
    out.push(("cold".into(), "counts".into(), format!("{cold_counts:?}")));

    for (name, edit) in [
        ("route", Edit::Route as fn(bool) -> Edit),
        ("endpoint", Edit::Endpoint as fn(bool) -> Edit),
    ] {
        let p = updates(rt, a, edit)?;
        for (phase, v) in [
            ("apply", p.apply),
            ("parse", p.parse),
            ("validate", p.validate),
            ("build", p.build),
        ] {
            let s = stats(v);
            for (k, d) in [
                ("median_ms", s.median),
                ("p90_ms", s.p90),
                ("max_ms", s.max),
            ] {
                out.push((name.into(), format!("{phase}_{k}"), format!("{:.3}", ms(d))));
            }
        }
        let mut counts = p.counts.clone();
        counts.dedup();
        let mut plans = p.plans.clone();
        plans.sort();
        plans.dedup();
        out.push((name.into(), "counts".into(), format!("{counts:?}")));
        let mut replaced = p.clusters_replaced.clone();
        replaced.sort();
        replaced.dedup();
        out.push((
            name.into(),
            "clusters_replaced".into(),
            format!("{replaced:?}"),
        ));
        let mut changed = p.changed.clone();
        changed.sort();
        changed.dedup();
        out.push((
            name.into(),
            "resources_new_version".into(),
            changed.join(" | "),
        ));
        out.push((name.into(), "plans".into(), plans.join(" | ")));
    }
    if a.tsv {
        for (s, k, v) in &out {
            println!("{s}\t{k}\t{v}");
        }
    } else {
        for (s, k, v) in &out {
            println!("{s:<9} {k:<22} {v}");
        }
    }
    Ok(())
}
