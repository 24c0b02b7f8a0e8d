//! Small helpers shared by the harness modules: port picking, readiness
//! polling, digests, timestamps and a command-output error type.

use std::fmt;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

/// Boxed error used by the fallible harness helpers.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `sha256:<hex>` digest of `bytes`, the form used throughout the
/// distribution API.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Asks the kernel for a currently free TCP port on `ip`.
///
/// The listener is dropped before returning, so another process may grab the
/// port in the meantime; callers that spawn a server on it must be prepared
/// to retry with a fresh port.
pub fn free_port(ip: IpAddr) -> u16 {
    let listener = TcpListener::bind((ip, 0))
        .unwrap_or_else(|e| panic!("cannot bind {ip}:0 to find a free port: {e}"));
    listener
        .local_addr()
        .expect("local_addr of a freshly bound listener")
        .port()
}

/// Sends `GET <path> HTTP/1.0` to `addr` over a plain TCP socket and returns
/// the status code, or `None` if nothing (valid) answered.
///
/// This is intentionally dependency-free and blocking: it is used to wait for
/// child processes to come up, from sync or async contexts alike.
pub fn http_status(addr: SocketAddr, host_header: &str, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: {host_header}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut head = [0u8; 32];
    let mut filled = 0;
    // "HTTP/1.1 200" is 12 bytes; read until we have at least that much.
    while filled < 12 {
        match stream.read(&mut head[filled..]) {
            Ok(0) | Err(_) => return None,
            Ok(n) => filled += n,
        }
    }
    let line = std::str::from_utf8(&head[..filled]).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Polls `check` every 50 ms until it returns `Some`, or until `timeout`.
pub fn wait_until<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads a (log) file for inclusion in a panic message; never fails.
pub fn read_log(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("<could not read {}: {e}>", path.display()),
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("system clock before 1970")
        .as_secs()
}

/// Formats a Unix timestamp as RFC 3339 in UTC (`2024-01-02T03:04:05Z`).
pub fn rfc3339(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let secs_of_day = unix_secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm), proleptic Gregorian.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs_of_day / 3600,
        (secs_of_day / 60) % 60,
        secs_of_day % 60
    )
}

/// Environment variables that would make child processes (Go or Rust) route
/// loopback traffic through a proxy or pick up credentials/config from the
/// host; they are removed from every child the harness spawns.
pub const SCRUBBED_ENV: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "REGISTRY_AUTH_FILE",
    "DOCKER_CONFIG",
    "CONTAINERS_REGISTRIES_CONF",
    "CONTAINERS_REGISTRIES_CONF_DIR",
];

/// A child command that exited unsuccessfully (or could not be run).
/// Carries everything needed to understand the failure from a test report.
#[derive(Debug, Clone)]
pub struct CommandError {
    /// The command line, for the message.
    pub command: String,
    /// Exit code, if the process ran and exited normally.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CommandError {
    pub fn from_output(command: String, output: &Output) -> Self {
        CommandError {
            command,
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    pub fn spawn_failed(command: String, err: std::io::Error) -> Self {
        CommandError {
            command,
            code: None,
            stdout: String::new(),
            stderr: format!("failed to run: {err}"),
        }
    }

    /// Any error not produced by the command itself (e.g. reading its output
    /// files afterwards).
    pub fn other(command: String, message: String) -> Self {
        CommandError {
            command,
            code: None,
            stdout: String::new(),
            stderr: message,
        }
    }
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` failed (exit code {:?})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command, self.code, self.stdout, self.stderr
        )
    }
}

impl std::error::Error for CommandError {}

/// Runs `cmd` (async) with stdin closed and [`SCRUBBED_ENV`] removed,
/// returning its output if it exited with status 0.
pub async fn run_checked(mut cmd: tokio::process::Command) -> Result<Output, CommandError> {
    let description = describe(cmd.as_std());
    // Scrub inherited proxy/credential variables, but keep the ones the
    // caller set explicitly on `cmd`.
    let explicit: Vec<std::ffi::OsString> = cmd
        .as_std()
        .get_envs()
        .filter(|(_, v)| v.is_some())
        .map(|(k, _)| k.to_os_string())
        .collect();
    for var in SCRUBBED_ENV {
        if !explicit.iter().any(|k| k == var) {
            cmd.env_remove(var);
        }
    }
    cmd.stdin(std::process::Stdio::null());
    cmd.kill_on_drop(true);
    let output = cmd
        .output()
        .await
        .map_err(|e| CommandError::spawn_failed(description.clone(), e))?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(CommandError::from_output(description, &output))
    }
}

/// Human-readable command line of `cmd` (program and arguments).
pub fn describe(cmd: &std::process::Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// An address outside the restricted ranges, added to the loopback interface for the test
/// (so that an "unknown registry" on it is reachable at all), removed on drop.
pub struct PublicAddress(String);

impl PublicAddress {
    pub fn ip(&self) -> &str {
        &self.0
    }

    pub fn add(last_octet: u8) -> PublicAddress {
        let ip = format!("198.51.100.{last_octet}");
        let _ = std::process::Command::new("ip")
            .args(["addr", "del", &format!("{ip}/32"), "dev", "lo"])
            .stderr(std::process::Stdio::null())
            .status();
        let ok = std::process::Command::new("ip")
            .args(["addr", "add", &format!("{ip}/32"), "dev", "lo"])
            .status()
            .expect("run ip");
        assert!(ok.success(), "adding {ip} to lo (the tests run as root)");
        PublicAddress(ip)
    }
}

impl Drop for PublicAddress {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["addr", "del", &format!("{}/32", self.0), "dev", "lo"])
            .status();
    }
}

/// Every file under `dir`, recursively.
pub fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk_files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// An HTTP client that never goes through a proxy from the environment, for talking to the
/// processes the tests start on loopback.
pub fn direct_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_known_values() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
