//! Mesh end-to-end: load balancing across real upstreams — round robin, weighted round robin,
//! a weighted-cluster canary split, ring hash and Maglev on a header, least request. Distributions are
//! checked within tolerances wide enough never to flake (≥ 4 standard deviations for random
//! splits); no timing is asserted.

use std::collections::HashMap;

use futures::future::join_all;
use mecha_integration::mesh_support::{send, subst, HttpUpstream, Mesh, Proto, Req};

const LB: &str = r#"
threads: 2
listeners:
  - name: edge
    address: ${edge}
    filters:
      - type: router
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - { name: rr, match: { prefix: /rr }, cluster: rr }
              - { name: weighted, match: { prefix: /weighted }, cluster: weighted }
              - name: split
                match: { prefix: /split }
                weighted_clusters: [{ name: v1, weight: 90 }, { name: v2, weight: 10 }]
              - { name: hash, match: { prefix: /hash }, cluster: hash }
              - { name: maglev, match: { prefix: /maglev }, cluster: maglev }
              - { name: least, match: { prefix: /least }, cluster: least }
clusters:
  - name: rr
    endpoints: [{ address: "@a@" }, { address: "@b@" }, { address: "@c@" }]
  - name: weighted
    endpoints: [{ address: "@a@", weight: 1 }, { address: "@b@", weight: 3 }]
  - name: v1
    endpoints: [{ address: "@a@" }]
  - name: v2
    endpoints: [{ address: "@b@" }]
  - name: hash
    lb_policy: ring_hash
    hash_header: x-user
    endpoints: [{ address: "@a@" }, { address: "@b@" }, { address: "@c@" }]
  - name: maglev
    lb_policy: maglev
    hash_header: x-user
    endpoints: [{ address: "@a@" }, { address: "@b@" }, { address: "@c@" }]
  - name: least
    lb_policy: least_request
    endpoints: [{ address: "@a@" }, { address: "@b@" }, { address: "@c@" }]
"#;

/// Sends `n` GETs (16 at a time, alternating HTTP/1.1 and h2c) to `path`; returns how many
/// each upstream (by `x-upstream`) answered. Every one must be a 200.
async fn spread(
    mesh: &Mesh,
    path: &str,
    n: usize,
    header: Option<(&str, String)>,
) -> HashMap<String, usize> {
    let edge = mesh.addr("edge");
    let mut counts = HashMap::new();
    let all: Vec<usize> = (0..n).collect();
    for chunk in all.chunks(16) {
        let reqs = chunk.iter().map(|i| {
            let mut req = Req::get(&format!("{path}/{i}"));
            if let Some((k, v)) = &header {
                req = req.header(k, v);
            }
            let proto = if i % 2 == 0 { Proto::H1 } else { Proto::H2c };
            send(edge, proto, req)
        });
        for r in join_all(reqs).await {
            let r = r.unwrap_or_else(|e| panic!("GET {path}: {e:#}"));
            assert_eq!(r.status, 200, "{r:?}");
            *counts
                .entry(r.header("x-upstream").unwrap_or("?").to_owned())
                .or_insert(0) += 1;
        }
    }
    counts
}

fn count(c: &HashMap<String, usize>, k: &str) -> usize {
    c.get(k).copied().unwrap_or(0)
}

struct Three {
    a: HttpUpstream,
    b: HttpUpstream,
    c: HttpUpstream,
}

async fn three() -> (Three, Mesh) {
    let t = Three {
        a: HttpUpstream::start("a").await,
        b: HttpUpstream::start("b").await,
        c: HttpUpstream::start("c").await,
    };
    let mesh = Mesh::start(&subst(
        LB,
        &[("a", t.a.addr), ("b", t.b.addr), ("c", t.c.addr)],
    ))
    .await;
    (t, mesh)
}

#[tokio::test]
async fn round_robin_and_weighted_round_robin_spread_as_configured() {
    let (_up, mesh) = three().await;
    let c = spread(&mesh, "/rr", 300, None).await;
    for k in ["a", "b", "c"] {
        let n = count(&c, k);
        assert!(
            (80..=120).contains(&n),
            "round robin: {k} got {n} of 300: {c:?}"
        );
    }
    let c = spread(&mesh, "/weighted", 400, None).await;
    let (a, b) = (count(&c, "a"), count(&c, "b"));
    assert_eq!(a + b, 400, "{c:?}");
    assert!(
        (70..=130).contains(&a),
        "weights 1:3 → ~100 of 400 on a, got {a}: {c:?}"
    );
}

#[tokio::test]
async fn weighted_clusters_split_traffic_90_10() {
    let (_up, mesh) = three().await;
    let c = spread(&mesh, "/split", 400, None).await;
    let (v1, v2) = (count(&c, "a"), count(&c, "b"));
    assert_eq!(v1 + v2, 400, "{c:?}");
    // Expected 40 on v2, σ ≈ 6.
    assert!(
        (15..=70).contains(&v2),
        "90/10 split → ~40 of 400 on v2, got {v2}: {c:?}"
    );
}

#[tokio::test]
async fn ring_hash_and_maglev_keep_each_key_on_one_endpoint() {
    let (_up, mesh) = three().await;
    for path in ["/hash", "/maglev"] {
        let mut owners = HashMap::new();
        for user in 0..24 {
            let c = spread(&mesh, path, 6, Some(("x-user", format!("user-{user}")))).await;
            assert_eq!(
                c.len(),
                1,
                "{path}: user-{user} hit more than one endpoint: {c:?}"
            );
            let owner = c.keys().next().cloned().unwrap_or_default();
            owners.insert(user, owner);
        }
        let distinct: std::collections::HashSet<&String> = owners.values().collect();
        assert!(
            distinct.len() >= 2,
            "{path}: 24 keys all hashed to one endpoint: {owners:?}"
        );
    }
}

#[tokio::test]
async fn least_request_uses_every_endpoint() {
    let (_up, mesh) = three().await;
    let c = spread(&mesh, "/least", 96, None).await;
    for k in ["a", "b", "c"] {
        assert!(count(&c, k) > 0, "least_request never picked {k}: {c:?}");
    }
    // Concurrent slow requests (several in flight per endpoint) all succeed too.
    let edge = mesh.addr("edge");
    let reqs = (0..24).map(|i| {
        send(
            edge,
            if i % 2 == 0 { Proto::H1 } else { Proto::H2c },
            Req::get("/least/slow/150"),
        )
    });
    for r in join_all(reqs).await {
        assert_eq!(r.expect("GET /least/slow").status, 200);
    }
}
