//! Active health check over gRPC's standard `grpc.health.v1.Health/Check`, for clusters whose
//! endpoints are gRPC servers (pingora-load-balancing ships only TCP and HTTP checks).
//!
//! The check speaks the cluster's protocol: HTTP/2 over TLS for `protocol: h2` (the cluster's
//! `sni`, its `ca_file` roots or else the platform roots, ALPN `h2` — what the data path
//! verifies), cleartext HTTP/2 (prior knowledge) otherwise. TLS is dialled here with
//! tokio-rustls and handed to tonic as a custom connector: the tonic in Cargo.lock is built
//! without its TLS features, and this way the check uses the roots the cluster already parsed.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use hyper_util::rt::TokioIo;
use pingora::lb::health_check::HealthCheck;
use pingora::lb::Backend;
use pingora::protocols::tls::CaType;
use pingora::{Error, ErrorType, Result};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::config::UpstreamProtocol;

pub struct GrpcHealthCheck {
    /// The service name asked about; empty = the server as a whole.
    pub service: String,
    pub timeout: Duration,
    pub consecutive_success: usize,
    pub consecutive_failure: usize,
    pub transport: Transport,
}

/// How the check reaches an endpoint.
pub enum Transport {
    /// HTTP/2 with prior knowledge (`h2c`, and `http1` clusters: gRPC needs HTTP/2).
    Cleartext,
    /// HTTP/2 over TLS (`h2`).
    Tls(Box<TlsTarget>),
}

/// TLS settings of an `h2` cluster, as its health check uses them.
pub struct TlsTarget {
    sni: String,
    /// The cluster's `ca_file` roots; the platform's when `None`.
    ca: Option<Arc<CaType>>,
    /// Built on the first check (so building a cluster, e.g. for `mecha validate`, reads no
    /// platform certificate store); an error is reported by every check.
    connector: OnceLock<std::result::Result<Dialer, String>>,
}

/// A TLS client config and the server name it verifies.
type Dialer = (tokio_rustls::TlsConnector, ServerName<'static>);

impl Transport {
    /// The transport for a cluster's protocol, SNI and trusted roots.
    pub fn for_cluster(protocol: UpstreamProtocol, sni: &str, ca: Option<Arc<CaType>>) -> Self {
        match protocol {
            UpstreamProtocol::H2 => Transport::Tls(Box::new(TlsTarget {
                sni: sni.to_owned(),
                ca,
                connector: OnceLock::new(),
            })),
            UpstreamProtocol::H2c | UpstreamProtocol::Http1 | UpstreamProtocol::Downstream => {
                Transport::Cleartext
            }
        }
    }
}

impl TlsTarget {
    fn connector(&self) -> std::result::Result<Dialer, String> {
        self.connector
            .get_or_init(|| {
                let name = ServerName::try_from(self.sni.clone())
                    .map_err(|e| format!("sni {:?}: {e}", self.sni))?;
                let mut roots = rustls::RootCertStore::empty();
                match &self.ca {
                    Some(ca) => {
                        for cert in ca.iter() {
                            roots
                                .add(CertificateDer::from(cert.borrow_raw_cert().clone()))
                                .map_err(|e| format!("ca_file: {e}"))?;
                        }
                    }
                    // The same platform roots (and SSL_CERT_FILE / SSL_CERT_DIR) as the data path.
                    None => pingora::tls::load_platform_certs_incl_env_into_store(&mut roots)
                        .map_err(|e| format!("platform roots: {e}"))?,
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| format!("TLS versions: {e}"))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                cfg.alpn_protocols = vec![b"h2".to_vec()];
                Ok((tokio_rustls::TlsConnector::from(Arc::new(cfg)), name))
            })
            .clone()
    }
}

impl GrpcHealthCheck {
    async fn channel(
        &self,
        addr: SocketAddr,
    ) -> std::result::Result<tonic::transport::Channel, String> {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(self.timeout)
            .timeout(self.timeout);
        match &self.transport {
            Transport::Cleartext => endpoint.connect().await.map_err(|e| error_chain(&e)),
            Transport::Tls(target) => {
                let (tls, name) = target.connector()?;
                // `:scheme https` and `:authority` the SNI, as the server's virtual hosts see it.
                let host = match &name {
                    ServerName::IpAddress(rustls::pki_types::IpAddr::V6(_)) => {
                        format!("[{}]", target.sni)
                    }
                    _ => target.sni.clone(),
                };
                let endpoint = match format!("https://{host}:{}", addr.port()).parse() {
                    Ok(origin) => endpoint.origin(origin),
                    Err(_) => endpoint,
                };
                let connector = tower::service_fn(move |_: http::Uri| {
                    let (tls, name) = (tls.clone(), name.clone());
                    async move {
                        let tcp = tokio::net::TcpStream::connect(addr).await?;
                        tcp.set_nodelay(true)?;
                        let stream = tls.connect(name, tcp).await?;
                        // Without ALPN h2 the server would read our HTTP/2 preface as HTTP/1.1.
                        if stream.get_ref().1.alpn_protocol() != Some(b"h2".as_slice()) {
                            return Err(std::io::Error::other(
                                "the upstream did not negotiate ALPN h2",
                            ));
                        }
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                });
                endpoint
                    .connect_with_connector(connector)
                    .await
                    .map_err(|e| error_chain(&e))
            }
        }
    }
}

/// An error with its sources (tonic's transport error alone says only "transport error").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[async_trait]
impl HealthCheck for GrpcHealthCheck {
    async fn check(&self, target: &Backend) -> Result<()> {
        let Some(addr) = target.addr.as_inet().copied() else {
            return Error::e_explain(ErrorType::ConnectError, "grpc health: not an inet address");
        };
        let channel = self.channel(addr).await.map_err(|e| {
            Error::explain(ErrorType::ConnectError, format!("grpc health {addr}: {e}"))
        })?;
        let resp = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: self.service.clone(),
            })
            .await
            .map_err(|s| {
                Error::explain(
                    ErrorType::HTTPStatus(503),
                    format!("grpc health {addr}: {}", s.message()),
                )
            })?;
        if resp.into_inner().status == ServingStatus::Serving as i32 {
            Ok(())
        } else {
            Error::e_explain(
                ErrorType::HTTPStatus(503),
                format!("grpc health {addr}: not SERVING"),
            )
        }
    }

    fn health_threshold(&self, success: bool) -> usize {
        if success {
            self.consecutive_success
        } else {
            self.consecutive_failure
        }
    }
}
