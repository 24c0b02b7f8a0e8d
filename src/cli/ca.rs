//! `stevedore ca show`: prints stevedore's CA certificate (generating the CA on first use, as
//! `serve` would), for guests' and clients' configuration. The key is never printed.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::{CliError, load_config};
use crate::tls::{Ca, permits};

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Print the CA certificate (PEM) that clients must trust for intercepted registries and
    /// for the TLS listener's issued certificate.
    Show {
        /// Configuration file (TOML); its `[ca]` section says where the CA is.
        #[arg(long, short, env = "STEVEDORE_CONFIG")]
        config: Option<PathBuf>,
    },
}

pub fn run(command: CaCommand) -> Result<ExitCode, CliError> {
    match command {
        CaCommand::Show { config } => {
            let loaded = load_config(config.as_deref())?;
            let ca = Ca::load(&loaded.config.ca, &permits(&loaded.config))
                .map_err(|e| CliError::failed(e.to_string()))?;
            print!("{}", ca.cert_pem());
            Ok(ExitCode::SUCCESS)
        }
    }
}
