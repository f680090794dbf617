//! The floor of pingora-proxy for `benches/proxy.sh`: a bare Pingora `ProxyHttp` that
//! implements only `upstream_peer` (one `HttpPeer`, plain HTTP/1.1 to `--upstream`, pooled
//! keep-alive connections as Pingora does by default), on the same Pingora version Mecha uses
//! (the workspace's `pingora` dependency) and the same server settings Mecha starts Pingora
//! with: `--threads` worker threads, `work_stealing: false` (one single-threaded runtime per
//! worker), and h2c (prior knowledge) on the same port as HTTP/1.1
//! (`HttpServerOptions::h2c = true` through `proxy.server_options`).
//!
//! Whatever Mecha adds on top of this (routing, its filter chain, metrics, protocol sniffing,
//! config snapshots) is what the difference between the two measures.
//!
//! ```text
//! bare-pingora --upstream 127.0.0.1:18080 [--listen 127.0.0.1:18083] [--threads 2]
//! ```

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;

use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::prelude::{HttpPeer, ProxyHttp, Result, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;

struct Args {
    listen: SocketAddr,
    upstream: SocketAddr,
    threads: usize,
}

fn usage() -> String {
    "usage: bare-pingora --upstream HOST:PORT [--listen 127.0.0.1:18083] [--threads N]".to_owned()
}

fn parse_args() -> std::result::Result<Args, String> {
    let mut listen = SocketAddr::from(([127, 0, 0, 1], 18083));
    let mut upstream = None;
    let mut threads = 1;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{flag}: needs a value\n{}", usage()))
        };
        match flag.as_str() {
            "--listen" => {
                let v = value()?;
                listen = v.parse().map_err(|e| format!("--listen {v:?}: {e}"))?;
            }
            "--upstream" => {
                let v = value()?;
                upstream = Some(v.parse().map_err(|e| format!("--upstream {v:?}: {e}"))?);
            }
            "--threads" => {
                let v = value()?;
                threads = v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("--threads {v:?}: expected a positive integer"))?;
            }
            "-h" | "--help" => return Err(usage()),
            other => return Err(format!("unknown argument {other:?}\n{}", usage())),
        }
    }
    let upstream = upstream.ok_or_else(|| format!("--upstream is required\n{}", usage()))?;
    Ok(Args {
        listen,
        upstream,
        threads,
    })
}

/// Every request goes to the one upstream, over plain HTTP/1.1.
struct Bare {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let conf = ServerConf {
        threads: args.threads,
        work_stealing: false,
        // As Mecha: no TLS upstream, so do not load the platform's roots at start.
        ca_file: Some("/dev/null".to_owned()),
        // Stop promptly on SIGTERM (the benchmark ends it when it is done).
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(
        &server.configuration,
        Bare {
            upstream: args.upstream,
        },
    );
    if let Some(app) = proxy.app_logic_mut() {
        // (`HttpServerOptions` is non-exhaustive: set the field on the default.)
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        app.server_options = Some(options);
    }
    proxy.add_tcp(&args.listen.to_string());
    server.add_service(proxy);
    eprintln!(
        "bare-pingora: {} → {} ({} threads, h2c on, no work stealing)",
        args.listen, args.upstream, args.threads
    );
    server.run_forever()
}
