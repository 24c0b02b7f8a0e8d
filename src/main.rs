//! The `stevedore` command: `serve` runs the proxy, `check-config` validates a config file,
//! `prefetch` warms the content store and `cache` maintains it (see `stevedore::cli`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use stevedore::cli::{
    self, ca::CaCommand, cache::CacheCommand, health::HealthArgs, prefetch::PrefetchArgs,
};
use stevedore::config::Config;

#[derive(Parser)]
#[command(name = "stevedore", version, about = "OCI registry pull-through proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (built-in default config: a Docker Hub mirror on 0.0.0.0:5000).
    Serve {
        /// Configuration file (TOML); see docs/configuration.md.
        #[arg(long, short, env = "STEVEDORE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Check a configuration file and report every problem in it.
    CheckConfig {
        /// Configuration file (TOML).
        file: PathBuf,
    },
    /// Fetch images (manifests, configs, layers) into the content store through the pull
    /// engine, verified.
    Prefetch(PrefetchArgs),
    /// Inspect and maintain the content store directory (also while a server uses it).
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// stevedore's certificate authority (for intercepted registries and the TLS listener).
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Ask a running stevedore's admin listener whether it is ready (exit 0) or not (exit 1),
    /// for container health checks.
    Healthcheck(HealthArgs),
}

fn main() -> ExitCode {
    // reqwest and the TLS listeners share one process-wide rustls provider.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    // The server sets up its logging from its config; the tools print their own output and
    // log only problems.
    if !matches!(cli.command, Command::Serve { .. }) {
        stevedore::telemetry::logs::init_tool("warn");
    }
    match cli.command {
        Command::Prefetch(args) => cli::finish(cli::prefetch::run(args)),
        Command::Cache { command } => cli::finish(cli::cache::run(command)),
        Command::Ca { command } => cli::finish(cli::ca::run(command)),
        Command::Healthcheck(args) => cli::finish(cli::health::run(args)),
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Serve { config: path } => {
            let loaded = match &path {
                Some(path) => Config::load(path),
                None => Config::builtin_default(),
            };
            let config = match loaded {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            match cli::serve::run(config, path) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("stevedore: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
