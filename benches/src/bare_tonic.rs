//! The reference server for the capability-API benchmarks: a bare `tonic::transport::Server`
//! (h2c) serving the same generated service Mecha's capability filter runs
//! (`mecha_api::layotto::server`, a `RuntimeServer<LayottoRuntime>`) over the same components,
//! on the same kind of tokio runtime Mecha's workers use: with `--threads 1` one current-thread
//! runtime (Mecha runs one per worker thread, without work stealing), otherwise a multi-thread
//! runtime with that many workers.
//!
//! Whatever Mecha adds on top of this (Pingora's h2 session, the filter chain, the
//! Pingora ↔ tower bridge, per-method metrics) is what the benchmark measures.
//!
//! ```text
//! bare-tonic [--addr 127.0.0.1:50051] [--threads 1] [--redis HOST:PORT] [--app-id app]
//! ```
//! Components: `statestore` (`state.memory`) and `helloworld` (`hello.helloworld`); with
//! `--redis`, `statestore` is `state.redis` and `pubsub` is `pubsub.redis` at HOST:PORT (as in
//! `benches/mecha-bench-redis.yaml`), `helloworld` stays.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use mecha_capabilities::{BuildContext, ComponentSpec, Registry};

/// Same limit as Mecha's default `max_request_message_bytes`.
const MAX_MESSAGE: usize = 4 * 1024 * 1024;

struct Args {
    addr: SocketAddr,
    threads: usize,
    redis: Option<String>,
    app_id: String,
}

fn usage() -> String {
    "usage: bare-tonic [--addr 127.0.0.1:50051] [--threads N] [--redis HOST:PORT] [--app-id ID]"
        .to_owned()
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
        threads: 1,
        redis: None,
        app_id: "app".to_owned(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{flag}: needs a value\n{}", usage()))
        };
        match flag.as_str() {
            "--addr" => {
                let v = value()?;
                args.addr = v.parse().map_err(|e| format!("--addr {v:?}: {e}"))?;
            }
            "--threads" => {
                let v = value()?;
                args.threads = v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("--threads {v:?}: expected a positive integer"))?;
            }
            "--redis" => args.redis = Some(value()?),
            "--app-id" => args.app_id = value()?,
            "-h" | "--help" => return Err(usage()),
            other => return Err(format!("unknown argument {other:?}\n{}", usage())),
        }
    }
    Ok(args)
}

fn components(redis: Option<&str>) -> Vec<ComponentSpec> {
    match redis {
        None => vec![
            ComponentSpec::new("statestore", "state.memory"),
            ComponentSpec::new("helloworld", "hello.helloworld"),
        ],
        Some(host) => vec![
            ComponentSpec::new("statestore", "state.redis").with("redisHost", host),
            ComponentSpec::new("pubsub", "pubsub.redis")
                .with("redisHost", host)
                .with("consumerID", "bench")
                .with("maxLenApprox", "10000"),
            ComponentSpec::new("helloworld", "hello.helloworld"),
        ],
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
    let ctx = BuildContext {
        app_id: args.app_id.clone(),
    };
    let registry = match Registry::build(&components(args.redis.as_deref()), &ctx) {
        Ok(r) => Arc::new(r),
        Err(errs) => {
            eprintln!("bare-tonic: components: {}", errs.join("; "));
            return ExitCode::FAILURE;
        }
    };
    let mut builder = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(args.threads);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bare-tonic: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let service = mecha_api::layotto::server(registry, &args.app_id, MAX_MESSAGE, None);
    let addr = args.addr;
    let threads = args.threads;
    let result = runtime.block_on(async move {
        eprintln!("bare-tonic: serving on {addr} with {threads} worker thread(s)");
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_shutdown(addr, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bare-tonic: {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}
