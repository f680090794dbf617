//! `mecha`: the command line. Parses arguments, loads config, starts the sidecar — nothing else
//! (the data plane lives in `mecha-proxy-core`).

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use mecha_proxy_core::config::{self, Config, DEFAULT_YAML};

#[derive(Parser)]
#[command(
    name = "mecha",
    version,
    about = "Service-mesh data plane and multi-runtime capability sidecar"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar (on the embedded default config unless -c is given).
    Run {
        /// YAML config file.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Check a config file: print every error with its path; exit non-zero when invalid.
    Validate {
        /// YAML config file.
        file: PathBuf,
    },
    /// Print the embedded default config.
    DefaultConfig,
}

/// Reads a config: its text, and the config parsed and checked (`full`: built as serving
/// would build it, which is what `validate` does; `run` builds it once when starting).
fn load(path: Option<&PathBuf>, full: bool) -> Result<(Config, String), String> {
    let (name, text) = match path {
        None => ("embedded default".to_owned(), DEFAULT_YAML.to_owned()),
        Some(p) => (
            p.display().to_string(),
            std::fs::read_to_string(p).map_err(|e| format!("{}: cannot read: {e}", p.display()))?,
        ),
    };
    let checked = if full {
        mecha_proxy_core::check(&text)
    } else {
        config::load(&text)
    };
    checked
        .map(|c| (c, text))
        .map_err(|errs| format!("{name}: invalid config:\n  {}", errs.join("\n  ")))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::DefaultConfig => {
            print!("{DEFAULT_YAML}");
            ExitCode::SUCCESS
        }
        Command::Validate { file } => match load(Some(&file), true) {
            Ok((cfg, _)) => {
                println!(
                    "{}: valid ({} listeners, {} components)",
                    file.display(),
                    cfg.listeners.len(),
                    cfg.components.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_env("MECHA_LOG")
                        // Pingora's connector logs "failed to acquire reusable stream" at ERROR
                        // when a pooled connection's idle watcher (on another worker thread)
                        // has not let go yet; the connection is replaced by a new one, which
                        // `mecha_cluster_upstream_connections_opened_total` counts. Under load
                        // that is hundreds of lines a minute saying nothing actionable.
                        .unwrap_or_else(|_| {
                            tracing_subscriber::EnvFilter::new("info,pingora_core::connectors=off")
                        }),
                )
                .with_writer(std::io::stderr)
                .init();
            let (cfg, text) = match load(config.as_ref(), false) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            if std::env::var_os("MECHA_EXIT_ON_STDIN_EOF").is_some() {
                // For supervisors and test harnesses: when whoever started us dies, our stdin
                // pipe closes, and we go with it instead of lingering.
                std::thread::spawn(|| {
                    let mut sink = [0u8; 256];
                    let mut stdin = std::io::stdin();
                    while matches!(std::io::Read::read(&mut stdin, &mut sink), Ok(n) if n > 0) {}
                    // Not eprintln!: when the parent died, stderr is often a pipe to it, and a
                    // failed write would panic this thread and skip the exit.
                    let _ = std::io::Write::write_all(
                        &mut std::io::stderr(),
                        b"mecha: stdin closed (MECHA_EXIT_ON_STDIN_EOF): exiting\n",
                    );
                    std::process::exit(0);
                });
            }
            // With an `xds:` section the file is the bootstrap: the control plane's resources
            // are merged with it (and the file is not watched).
            let feeds: Vec<Box<dyn mecha_proxy_core::Feed>> =
                mecha_xds::source::XdsFeed::new(cfg.clone())
                    .map(|f| Box::new(f) as Box<dyn mecha_proxy_core::Feed>)
                    .into_iter()
                    .collect();
            match mecha_proxy_core::run_with(cfg, config, &text, feeds) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mecha: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
