//! `stevedore healthcheck`: asks a running stevedore's admin listener whether it is ready (or
//! alive), for container health checks in images that have no HTTP client of their own.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::CliError;
use crate::config::Config;

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The admin listener's address (default: `server.metrics-listen` of the config, with an
    /// unspecified address such as 0.0.0.0 asked on loopback).
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// Configuration file to take the address from.
    #[arg(long, short, env = "STEVEDORE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Ask `/healthz` (alive) instead of `/readyz` (ready for clients).
    #[arg(long)]
    pub live: bool,
    /// Give up after this long.
    #[arg(long, default_value = "3s", value_parser = humantime_serde::re::humantime::parse_duration)]
    pub timeout: Duration,
}

/// Exit 0 when the answer is 200, 1 otherwise (printing the answer), 2 when there is no
/// address to ask.
pub fn run(args: HealthArgs) -> Result<ExitCode, CliError> {
    let addr = match args.addr {
        Some(a) => a,
        None => admin_address(args.config.as_deref())?,
    };
    let path = if args.live { "/healthz" } else { "/readyz" };
    let (status, body) = get(addr, path, args.timeout)
        .map_err(|e| CliError::failed(format!("{addr}{path}: {e}")))?;
    if status == 200 {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(CliError::failed(format!(
            "{addr}{path}: {status} {}",
            body.trim()
        )))
    }
}

fn admin_address(config: Option<&std::path::Path>) -> Result<SocketAddr, CliError> {
    let config = match config {
        Some(p) => Config::load(p),
        None => Config::builtin_default(),
    }
    .map_err(|e| CliError::setup(e.to_string()))?;
    let mut addr = config.server.metrics_listen.ok_or_else(|| {
        CliError::setup("the config has no server.metrics-listen (the admin listener); give --addr")
    })?;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    Ok(addr)
}

/// A bounded `GET` over HTTP/1.0: the status and at most 4 KiB of the body.
fn get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut answer = Vec::new();
    stream.take(4096 + 512).read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP answer"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}
