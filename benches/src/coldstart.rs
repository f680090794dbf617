//! Cold start and idle RSS of a server: exec → ready, median of N runs, measured with a
//! monotonic clock from just before `spawn` to the first ready answer.
//!
//! ```text
//! coldstart [--runs 20] [--settle-ms 500] --ready http://127.0.0.1:34999/ready -- CMD ARGS...
//! coldstart --ready tcp:127.0.0.1:50051 -- target/release/bare-tonic --addr 127.0.0.1:50051
//! ```
//! `http://HOST:PORT/PATH`: ready = an HTTP/1.1 GET answered `200`; `tcp:HOST:PORT`: ready =
//! the port accepts a connection. The poll loop retries every 200 µs (a refused connect returns
//! at once), so the figure's resolution is ~0.2 ms. After ready it waits `--settle-ms`, reads
//! `VmRSS` from `/proc/PID/status` (the idle RSS), then kills the process and waits for the port
//! to be free before the next run.
//!
//! Prints one line per run and a summary line:
//! `summary runs=N ready_ms_median=… ready_ms_min=… ready_ms_max=… idle_rss_kib_median=…`.

#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

enum Ready {
    Tcp(SocketAddr),
    Http { addr: SocketAddr, path: String },
}

impl Ready {
    #[allow(
        clippy::disallowed_methods,
        reason = "a bench CLI argument, resolved once before any runtime exists"
    )]
    fn parse(raw: &str) -> Result<Self, String> {
        let resolve = |hp: &str| -> Result<SocketAddr, String> {
            hp.to_socket_addrs()
                .map_err(|e| format!("{hp}: {e}"))?
                .next()
                .ok_or_else(|| format!("{hp}: no address"))
        };
        if let Some(hp) = raw.strip_prefix("tcp:") {
            return Ok(Ready::Tcp(resolve(hp)?));
        }
        if let Some(rest) = raw.strip_prefix("http://") {
            let (hp, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let path = if path.is_empty() { "/" } else { path };
            return Ok(Ready::Http {
                addr: resolve(hp)?,
                path: path.to_owned(),
            });
        }
        Err(format!(
            "--ready {raw:?}: expected http://HOST:PORT/PATH or tcp:HOST:PORT"
        ))
    }

    fn addr(&self) -> SocketAddr {
        match self {
            Ready::Tcp(a) | Ready::Http { addr: a, .. } => *a,
        }
    }

    /// One probe: true when the server is ready.
    fn probe(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(&self.addr(), Duration::from_millis(100)) else {
            return false;
        };
        let Ready::Http { path, .. } = self else {
            return true;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let req = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut buf = [0u8; 32];
        let mut got = 0;
        while got < 12 {
            match s.read(&mut buf[got..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        // "HTTP/1.1 200"
        got >= 12 && &buf[9..12] == b"200"
    }
}

fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[allow(
    clippy::disallowed_methods,
    reason = "a synchronous benchmark driver polling a child process; no runtime to block"
)]
fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let split = args
        .iter()
        .position(|a| a == "--")
        .ok_or("usage: coldstart [--runs N] [--settle-ms MS] --ready URL -- CMD ARGS...")?;
    let (opts, cmd) = (&args[..split], &args[split + 1..]);
    let (program, cmd_args) = cmd.split_first().ok_or("no command after --")?;
    let mut runs = 20usize;
    let mut settle = Duration::from_millis(500);
    let mut ready = None;
    let mut it = opts.iter();
    while let Some(flag) = it.next() {
        let v = it.next().ok_or_else(|| format!("{flag}: needs a value"))?;
        match flag.as_str() {
            "--runs" => runs = v.parse().map_err(|e| format!("--runs {v:?}: {e}"))?,
            "--settle-ms" => {
                settle = Duration::from_millis(v.parse().map_err(|e| format!("--settle-ms: {e}"))?)
            }
            "--ready" => ready = Some(Ready::parse(v)?),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    let ready = ready.ok_or("--ready is required")?;
    if ready.probe() || TcpStream::connect(ready.addr()).is_ok() {
        return Err(format!(
            "{} is already in use: stop what listens there",
            ready.addr()
        ));
    }

    let mut times = Vec::with_capacity(runs);
    let mut rss = Vec::with_capacity(runs);
    for i in 0..runs {
        let start = Instant::now();
        let mut child = Command::new(program)
            .args(cmd_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{program}: {e}"))?;
        let elapsed = loop {
            if ready.probe() {
                break start.elapsed();
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("{program} exited before ready: {status}"));
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{program}: not ready after 10 s"));
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        std::thread::sleep(settle);
        let kib = vm_rss_kib(child.id());
        let _ = child.kill();
        let _ = child.wait();
        let ms = elapsed.as_secs_f64() * 1000.0;
        println!(
            "run {i}: ready {ms:.2} ms, idle VmRSS {} KiB",
            kib.map_or("?".to_owned(), |k| k.to_string())
        );
        times.push(ms);
        if let Some(k) = kib {
            rss.push(k as f64);
        }
        // Wait until the port is free again (the kernel may take a moment after the kill).
        let free_by = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(ready.addr()).is_ok() && Instant::now() < free_by {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let min = times.iter().copied().fold(f64::INFINITY, f64::min);
    let max = times.iter().copied().fold(0.0, f64::max);
    println!(
        "summary runs={runs} ready_ms_median={:.2} ready_ms_min={min:.2} ready_ms_max={max:.2} \
         idle_rss_kib_median={:.0}",
        median(&mut times),
        median(&mut rss)
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coldstart: {e}");
            ExitCode::FAILURE
        }
    }
}
