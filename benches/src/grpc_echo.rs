//! `grpc-echo`: the gRPC upstream of `benches/proxy.sh`'s gRPC scenarios: a
//! `tonic::transport::Server` (h2c) serving `bench.Echo` (`src/echo.rs`: unary, server
//! streaming, bidi streaming).
//!
//! ```text
//! grpc-echo --addr 127.0.0.1:PORT [--threads N]
//! ```
//! `--threads 1` (the default): one current-thread runtime; N > 1: a multi-thread runtime with
//! N workers.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;

#[path = "echo.rs"]
#[allow(dead_code)]
mod echo;

fn main() -> ExitCode {
    let mut addr: Option<SocketAddr> = None;
    let mut threads = 1usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next();
        match (a.as_str(), v) {
            ("--addr", Some(v)) => match v.parse() {
                Ok(a) => addr = Some(a),
                Err(e) => {
                    eprintln!("grpc-echo: --addr {v}: {e}");
                    return ExitCode::from(2);
                }
            },
            ("--threads", Some(v)) => match v.parse::<usize>() {
                Ok(n) if n > 0 => threads = n,
                _ => {
                    eprintln!("grpc-echo: --threads {v}: expected a positive integer");
                    return ExitCode::from(2);
                }
            },
            _ => {
                eprintln!("usage: grpc-echo --addr HOST:PORT [--threads N]");
                return ExitCode::from(2);
            }
        }
    }
    let Some(addr) = addr else {
        eprintln!("usage: grpc-echo --addr HOST:PORT [--threads N]");
        return ExitCode::from(2);
    };
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("grpc-echo: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let served = rt.block_on(async move {
        eprintln!("grpc-echo: listening on {addr} (h2c), threads {threads}");
        tonic::transport::Server::builder()
            .add_service(echo::EchoServer::default())
            .serve(addr)
            .await
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("grpc-echo: {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}
