//! Mesh end-to-end: TLS upstreams (`protocol: h2`, HTTP/2 over rustls with ALPN h2) trusted
//! through a cluster's `ca_file` and reached under its `sni`. The test makes its own CA and
//! server certificate (rcgen) and runs a real HTTP/2-over-TLS server (hyper on tokio-rustls);
//! clients talk plain HTTP/1.1 or h2c to Mecha's listener. Bad input: a CA that did not sign
//! the server's certificate, an SNI the certificate does not cover (both 5xx naming the
//! cluster, the sidecar keeps serving), and `ca_file`s `mecha validate` must reject. gRPC health
//! checks of such a cluster dial TLS with its SNI and CA (a wrong CA marks the endpoint down).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mecha_integration::mesh_support::{eventually, send, subst, Mesh, Proto, Req};
use mecha_integration::{run_mecha, TempDir};
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

/// The name the upstream's certificate is issued for.
const UPSTREAM_NAME: &str = "upstream.test";

// === a test PKI ===

/// A self-signed CA that issues server certificates.
struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    fn new(common_name: &str) -> Self {
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA certificate params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-sign the CA");
        Self { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for `name`, signed by this CA, with its key.
    fn issue(&self, name: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])
            .expect("server certificate params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().expect("server key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign the server certificate");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (vec![cert.der().clone()], key)
    }
}

// === an HTTP/2-over-TLS upstream ===

/// One request the TLS upstream answered.
#[derive(Debug, Clone)]
struct TlsSeen {
    method: String,
    path: String,
    version: Version,
    /// The SNI the client sent.
    sni: Option<String>,
    /// The negotiated ALPN protocol.
    alpn: Option<String>,
}

/// An HTTP/2 server behind rustls (ALPN `h2` only). It answers every request 200 with the body
/// `tls-up saw <path>` and the headers `x-seen-tls: yes`, `x-seen-version`, `x-seen-sni`,
/// `x-seen-alpn`; it records every request and counts TLS handshakes that failed.
struct TlsUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<TlsSeen>>>,
    failed_handshakes: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsUpstream {
    async fn start(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate");
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind TLS upstream");
        let addr = listener.local_addr().expect("local addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let failed_handshakes = Arc::new(AtomicUsize::new(0));
        let (s, f) = (seen.clone(), failed_handshakes.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, seen, failed) = (acceptor.clone(), s.clone(), f.clone());
                tokio::spawn(async move {
                    let tls = match acceptor.accept(tcp).await {
                        Ok(t) => t,
                        Err(_) => {
                            failed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    };
                    let (_, conn) = tls.get_ref();
                    let sni = conn.server_name().map(str::to_owned);
                    let alpn = conn
                        .alpn_protocol()
                        .map(|p| String::from_utf8_lossy(p).into_owned());
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (seen, sni, alpn) = (seen.clone(), sni.clone(), alpn.clone());
                        async move {
                            let path = req
                                .uri()
                                .path_and_query()
                                .map(|p| p.as_str().to_owned())
                                .unwrap_or_default();
                            if let Ok(mut s) = seen.lock() {
                                s.push(TlsSeen {
                                    method: req.method().to_string(),
                                    path: path.clone(),
                                    version: req.version(),
                                    sni: sni.clone(),
                                    alpn: alpn.clone(),
                                });
                            }
                            let mut r =
                                Response::new(Full::new(Bytes::from(format!("tls-up saw {path}"))));
                            let v = |s: &str| {
                                HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static("?"))
                            };
                            let h = r.headers_mut();
                            h.insert("x-seen-tls", HeaderValue::from_static("yes"));
                            h.insert("x-seen-version", v(&format!("{:?}", req.version())));
                            h.insert("x-seen-sni", v(sni.as_deref().unwrap_or("-")));
                            h.insert("x-seen-alpn", v(alpn.as_deref().unwrap_or("-")));
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            seen,
            failed_handshakes,
            task,
        }
    }

    fn seen(&self) -> Vec<TlsSeen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn failed_handshakes(&self) -> usize {
        self.failed_handshakes.load(Ordering::SeqCst)
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Replaces each `@name@` with a file path (before [`subst`] fills in the addresses).
fn with_paths(template: &str, paths: &[(&str, &Path)]) -> String {
    let mut out = template.to_owned();
    for (name, path) in paths {
        out = out.replace(
            &format!("@{name}@"),
            path.to_str().expect("temp paths are UTF-8"),
        );
    }
    out
}

// === proxying to a TLS upstream ===

const TLS: &str = r#"
listeners:
  - name: edge
    address: ${edge}
    filters:
      - type: router
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - { match: { prefix: /wrong-ca/ }, cluster: wrong-ca }
              - { match: { prefix: /wrong-sni/ }, cluster: wrong-sni }
              - { match: { prefix: /bundle/ }, cluster: bundle }
              - { match: { prefix: / }, cluster: tls-up }
clusters:
  - name: tls-up
    protocol: h2
    sni: upstream.test
    ca_file: "@ca@"
    endpoints: [{ address: "@up@" }]
  - name: bundle
    protocol: h2
    sni: upstream.test
    ca_file: "@bundle@"
    endpoints: [{ address: "@up@" }]
  - name: wrong-ca
    protocol: h2
    sni: upstream.test
    ca_file: "@other_ca@"
    endpoints: [{ address: "@up@" }]
  - name: wrong-sni
    protocol: h2
    sni: other.test
    ca_file: "@ca@"
    endpoints: [{ address: "@up@" }]
"#;

struct TlsSetup {
    mesh: Mesh,
    up: TlsUpstream,
    _pems: TempDir,
}

/// The upstream (certificate for `upstream.test` from `ca`) and Mecha with [`TLS`]: `ca.pem`
/// is the issuing CA, `other-ca.pem` an unrelated CA, `bundle.pem` both (unrelated first).
async fn tls_setup() -> TlsSetup {
    let ca = Ca::new("mecha test CA");
    let other = Ca::new("unrelated test CA");
    let (chain, key) = ca.issue(UPSTREAM_NAME);
    let up = TlsUpstream::start(chain, key).await;
    let pems = TempDir::new("mesh-tls");
    let ca_pem = pems.write("ca.pem", &ca.pem());
    let other_pem = pems.write("other-ca.pem", &other.pem());
    let bundle_pem = pems.write("bundle.pem", &format!("{}{}", other.pem(), ca.pem()));
    let config = with_paths(
        TLS,
        &[
            ("ca", &ca_pem),
            ("other_ca", &other_pem),
            ("bundle", &bundle_pem),
        ],
    );
    let mesh = Mesh::start(&subst(&config, &[("up", up.addr)])).await;
    TlsSetup {
        mesh,
        up,
        _pems: pems,
    }
}

/// Asserts `r` is a proxy error (502 or 503) whose body names `cluster`.
fn assert_tls_failure(r: &mecha_integration::mesh_support::Resp, cluster: &str, what: &str) {
    assert!(
        r.status == 502 || r.status == 503,
        "{what}: expected 502/503, got {r:?} ({})",
        r.text()
    );
    assert!(
        r.text().contains(cluster),
        "{what}: the error names the cluster {cluster:?}: {}",
        r.text()
    );
}

#[tokio::test]
async fn h2_over_tls_with_a_private_ca_and_sni_reaches_the_upstream() {
    let TlsSetup { mesh, up, _pems } = tls_setup().await;
    let edge = mesh.addr("edge");

    for (i, proto) in [Proto::H1, Proto::H2c, Proto::H1].into_iter().enumerate() {
        let path = format!("/hello/{i}?x=1");
        let r = send(edge, proto, Req::get(&path))
            .await
            .unwrap_or_else(|e| panic!("{proto:?} GET {path}: {e:#}"));
        assert_eq!(r.status, 200, "{proto:?}: {r:?} ({})", r.text());
        assert_eq!(r.text(), format!("tls-up saw {path}"), "{proto:?}");
        assert_eq!(r.header("x-seen-tls"), Some("yes"), "{r:?}");
        assert_eq!(
            r.header("x-seen-version"),
            Some("HTTP/2.0"),
            "the upstream is spoken to over HTTP/2: {r:?}"
        );
        assert_eq!(r.header("x-seen-alpn"), Some("h2"), "{r:?}");
        assert_eq!(r.header("x-seen-sni"), Some(UPSTREAM_NAME), "{r:?}");
        let want = if proto == Proto::H1 {
            Version::HTTP_11
        } else {
            Version::HTTP_2
        };
        assert_eq!(r.version, want, "the client keeps its own protocol");
        let seen = up.seen().pop().expect("the upstream saw the request");
        assert_eq!(
            (seen.method.as_str(), seen.path.as_str(), seen.version),
            ("GET", path.as_str(), Version::HTTP_2)
        );
        assert_eq!(seen.sni.as_deref(), Some(UPSTREAM_NAME), "cluster sni");
        assert_eq!(seen.alpn.as_deref(), Some("h2"), "ALPN h2");
    }

    // A request body travels over the TLS connection too.
    let r = send(
        edge,
        Proto::H1,
        Req::get("/post")
            .method(http::Method::POST)
            .body("payload over tls"),
    )
    .await
    .expect("POST /post");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(up.seen().pop().map(|s| s.method), Some("POST".to_owned()));

    // A ca_file with several certificates: the issuing CA is trusted even when it is not the
    // first one in the file.
    let r = send(edge, Proto::H1, Req::get("/bundle/x"))
        .await
        .expect("GET /bundle/x");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "tls-up saw /bundle/x"),
        "{r:?}"
    );
    assert_eq!(up.failed_handshakes(), 0, "every handshake succeeded");
}

#[tokio::test]
async fn an_upstream_certificate_from_another_ca_is_refused_and_mecha_keeps_serving() {
    let TlsSetup {
        mut mesh,
        up,
        _pems,
    } = tls_setup().await;
    let edge = mesh.addr("edge");

    // First on fresh connections: the handshake fails at Mecha (the upstream sees it abort).
    for proto in [Proto::H1, Proto::H2c] {
        let r = send(edge, proto, Req::get("/wrong-ca/a"))
            .await
            .expect("GET /wrong-ca/a");
        assert_tls_failure(&r, "wrong-ca", "certificate from an untrusted CA");
    }
    eventually(
        "the upstream sees the aborted handshakes",
        Duration::from_secs(10),
        || async { up.failed_handshakes() >= 1 },
    )
    .await;
    assert!(
        up.seen().is_empty(),
        "no request was sent over an unverified connection: {:?}",
        up.seen()
    );

    // The trusting cluster works on the same endpoint and the same SNI …
    let r = send(edge, Proto::H1, Req::get("/good"))
        .await
        .expect("GET /good");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "tls-up saw /good"),
        "{r:?}"
    );

    // … and the connection it opened (same address, same SNI) must not be handed to the
    // cluster that does not trust the upstream's CA.
    for proto in [Proto::H1, Proto::H2c] {
        let r = send(edge, proto, Req::get("/wrong-ca/b"))
            .await
            .expect("GET /wrong-ca/b");
        assert_tls_failure(
            &r,
            "wrong-ca",
            "untrusted CA after a trusted connection to the same endpoint was pooled",
        );
    }
    assert!(
        up.seen().iter().all(|s| !s.path.starts_with("/wrong-ca")),
        "a wrong-ca request reached the upstream: {:?}",
        up.seen()
    );

    assert!(mesh.is_running(), "mecha is still running");
    for proto in [Proto::H1, Proto::H2c] {
        let r = send(edge, proto, Req::get("/after"))
            .await
            .expect("GET /after");
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "tls-up saw /after"),
            "{proto:?}: {r:?}"
        );
    }
}

#[tokio::test]
async fn an_sni_the_certificate_does_not_cover_is_refused() {
    let TlsSetup {
        mut mesh,
        up,
        _pems,
    } = tls_setup().await;
    let edge = mesh.addr("edge");

    for proto in [Proto::H1, Proto::H2c] {
        let r = send(edge, proto, Req::get("/wrong-sni/a"))
            .await
            .expect("GET /wrong-sni/a");
        assert_tls_failure(
            &r,
            "wrong-sni",
            "certificate for upstream.test, SNI other.test",
        );
    }
    // After a verified connection to the same endpoint exists, still refused.
    let r = send(edge, Proto::H1, Req::get("/good"))
        .await
        .expect("GET /good");
    assert_eq!(r.status, 200, "{r:?}");
    let r = send(edge, Proto::H1, Req::get("/wrong-sni/b"))
        .await
        .expect("GET /wrong-sni/b");
    assert_tls_failure(&r, "wrong-sni", "wrong SNI after a pooled good connection");
    assert!(
        up.seen().iter().all(|s| !s.path.starts_with("/wrong-sni")),
        "a wrong-sni request reached the upstream: {:?}",
        up.seen()
    );

    assert!(mesh.is_running(), "mecha is still running");
    let r = send(edge, Proto::H2c, Req::get("/after"))
        .await
        .expect("GET /after");
    assert_eq!(r.status, 200, "{r:?}");
}

// === mecha validate ===

fn validate_config(ca_file: &Path) -> String {
    format!(
        r#"
admin: {{ address: 127.0.0.1:1 }}
listeners:
  - name: edge
    address: 127.0.0.1:2
    filters:
      - type: router
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - {{ match: {{ prefix: / }}, cluster: tls-up }}
clusters:
  - name: tls-up
    protocol: h2
    sni: upstream.test
    ca_file: "{}"
    endpoints: [{{ address: "127.0.0.1:9" }}]
"#,
        ca_file.display()
    )
}

fn validate(path: &Path) -> (Option<i32>, String) {
    let out = run_mecha(
        &["validate", path.to_str().expect("utf-8 path")],
        Duration::from_secs(30),
    )
    .expect("run mecha validate");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn validate_rejects_a_missing_ca_file_naming_the_field_and_the_path() {
    let dir = TempDir::new("mesh-tls-validate");
    let missing = dir.path().join("no-such-ca.pem");
    let config = dir.write("missing.yaml", &validate_config(&missing));
    let (code, stderr) = validate(&config);
    assert_ne!(
        code,
        Some(0),
        "a missing ca_file is an error; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("ca_file"),
        "the error names the field:\n{stderr}"
    );
    assert!(
        stderr.contains(missing.to_str().expect("utf-8")),
        "the error names the path:\n{stderr}"
    );

    // The same config with a real CA file is valid (the error above is about the file).
    let ca = dir.write("ca.pem", &Ca::new("validate CA").pem());
    let good = dir.write("good.yaml", &validate_config(&ca));
    let (code, stderr) = validate(&good);
    assert_eq!(code, Some(0), "valid with an existing CA file:\n{stderr}");
}

#[test]
fn validate_rejects_a_ca_file_without_certificates() {
    let dir = TempDir::new("mesh-tls-validate-empty");
    let garbage = dir.write("garbage.pem", "this is not a PEM certificate\n");
    let config = dir.write("garbage.yaml", &validate_config(&garbage));
    let (code, stderr) = validate(&config);
    assert_ne!(
        code,
        Some(0),
        "a ca_file with no certificate in it is an error; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("ca_file") && stderr.contains(garbage.to_str().expect("utf-8")),
        "the error names the field and the path:\n{stderr}"
    );
}

#[test]
fn validate_rejects_a_ca_file_on_a_cleartext_cluster() {
    let dir = TempDir::new("mesh-tls-validate-h2c");
    let ca = dir.write("ca.pem", &Ca::new("validate CA").pem());
    let config = dir.write(
        "h2c.yaml",
        &validate_config(&ca).replace("protocol: h2\n", "protocol: h2c\n"),
    );
    let (code, stderr) = validate(&config);
    assert_ne!(
        code,
        Some(0),
        "ca_file has no meaning without TLS; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("clusters[0]") && stderr.contains("ca_file"),
        "the error names the cluster and the field:\n{stderr}"
    );
}

// === gRPC health checks of a TLS cluster ===

/// A gRPC server (`grpc.health.v1` from tonic-health) behind rustls with ALPN `h2`. It counts
/// the `Health/Check` calls it answered, records each connection's SNI, and counts failed
/// handshakes; `reporter` flips the server's (service `""`) status.
struct GrpcTlsUpstream {
    addr: SocketAddr,
    checks: Arc<AtomicUsize>,
    snis: Arc<Mutex<Vec<Option<String>>>>,
    failed_handshakes: Arc<AtomicUsize>,
    reporter: tonic_health::server::HealthReporter,
    task: tokio::task::JoinHandle<()>,
}

impl GrpcTlsUpstream {
    async fn start(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Self {
        use tonic::codegen::Service;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate");
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind gRPC TLS upstream");
        let addr = listener.local_addr().expect("local addr");
        let (reporter, health) = tonic_health::server::health_reporter();
        let checks = Arc::new(AtomicUsize::new(0));
        let snis = Arc::new(Mutex::new(Vec::new()));
        let failed_handshakes = Arc::new(AtomicUsize::new(0));
        let (c, s, f) = (checks.clone(), snis.clone(), failed_handshakes.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, health) = (acceptor.clone(), health.clone());
                let (checks, snis, failed) = (c.clone(), s.clone(), f.clone());
                tokio::spawn(async move {
                    let tls = match acceptor.accept(tcp).await {
                        Ok(t) => t,
                        Err(_) => {
                            failed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    };
                    if let Ok(mut s) = snis.lock() {
                        s.push(tls.get_ref().1.server_name().map(str::to_owned));
                    }
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (mut health, checks) = (health.clone(), checks.clone());
                        async move {
                            if req.uri().path() == "/grpc.health.v1.Health/Check" {
                                checks.fetch_add(1, Ordering::SeqCst);
                            }
                            health.call(req).await
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            checks,
            snis,
            failed_handshakes,
            reporter,
            task,
        }
    }

    fn checks(&self) -> usize {
        self.checks.load(Ordering::SeqCst)
    }

    async fn set_serving(&self, serving: bool) {
        use tonic_health::ServingStatus;
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
    }
}

impl Drop for GrpcTlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const GRPC_HEALTH_TLS: &str = r#"
listeners:
  - name: edge
    address: ${edge}
    filters:
      - type: router
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - { match: { prefix: /wrong-ca/ }, cluster: grpc-wrong-ca }
              - { match: { prefix: / }, cluster: grpc-tls }
clusters:
  - name: grpc-tls
    protocol: h2
    sni: upstream.test
    ca_file: "@ca@"
    endpoints: [{ address: "@up@" }]
    health_check: { type: grpc, interval: 100ms, timeout: 2s, healthy_threshold: 1, unhealthy_threshold: 1 }
  - name: grpc-wrong-ca
    protocol: h2
    sni: upstream.test
    ca_file: "@other_ca@"
    endpoints: [{ address: "@up@" }]
    health_check: { type: grpc, interval: 100ms, timeout: 2s, healthy_threshold: 1, unhealthy_threshold: 1 }
"#;

/// GET `path` through the edge: `true` when the cluster had no healthy endpoint (503 naming
/// it), `false` when an endpoint took the request.
async fn no_healthy_endpoint(edge: SocketAddr, path: &str, cluster: &str) -> bool {
    let r = send(edge, Proto::H1, Req::get(path))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e:#}"));
    let down = r.status == 503 && r.text().contains("no healthy endpoint");
    if down {
        assert!(
            r.text().contains(cluster),
            "names the cluster: {}",
            r.text()
        );
    }
    down
}

#[tokio::test]
async fn grpc_health_checks_of_an_h2_cluster_use_its_tls_settings() {
    let ca = Ca::new("mecha test CA");
    let other = Ca::new("unrelated test CA");
    let (chain, key) = ca.issue(UPSTREAM_NAME);
    let up = GrpcTlsUpstream::start(chain, key).await;
    let pems = TempDir::new("mesh-tls-grpc-health");
    let ca_pem = pems.write("ca.pem", &ca.pem());
    let other_pem = pems.write("other-ca.pem", &other.pem());
    let config = with_paths(
        GRPC_HEALTH_TLS,
        &[("ca", &ca_pem), ("other_ca", &other_pem)],
    );
    let mesh = Mesh::start(&subst(&config, &[("up", up.addr)])).await;
    let edge = mesh.addr("edge");

    // Checks arrive over TLS, under the cluster's SNI (they used to dial cleartext and never
    // got past the handshake).
    eventually(
        "gRPC health checks reach the TLS upstream",
        Duration::from_secs(10),
        || async { up.checks() >= 2 },
    )
    .await;
    let snis = up.snis.lock().map(|s| s.clone()).unwrap_or_default();
    assert!(
        snis.iter().any(|s| s.as_deref() == Some(UPSTREAM_NAME)),
        "a check connected with SNI {UPSTREAM_NAME}: {snis:?}"
    );
    assert!(
        !no_healthy_endpoint(edge, "/x", "grpc-tls").await,
        "SERVING over TLS: the endpoint is healthy"
    );

    // The answer is read: NOT_SERVING takes the endpoint out, SERVING brings it back.
    up.set_serving(false).await;
    eventually(
        "NOT_SERVING → unhealthy",
        Duration::from_secs(10),
        || async { no_healthy_endpoint(edge, "/x", "grpc-tls").await },
    )
    .await;
    up.set_serving(true).await;
    eventually(
        "SERVING → healthy again",
        Duration::from_secs(10),
        || async { !no_healthy_endpoint(edge, "/x", "grpc-tls").await },
    )
    .await;

    // A cluster that does not trust the upstream's CA: its checks fail the handshake, so its
    // endpoint is marked unhealthy (the same server stays healthy for the trusting cluster).
    eventually(
        "untrusted certificate → unhealthy",
        Duration::from_secs(10),
        || async { no_healthy_endpoint(edge, "/wrong-ca/x", "grpc-wrong-ca").await },
    )
    .await;
    assert!(
        up.failed_handshakes.load(Ordering::SeqCst) >= 1,
        "the wrong-CA checks were refused at the handshake"
    );
    assert!(!no_healthy_endpoint(edge, "/x", "grpc-tls").await);
}
