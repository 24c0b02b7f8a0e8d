//! The `stevedore` binary as a child process, for tests that measure the process itself
//! (memory from `/proc`, connections, signals) rather than an in-process server.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::util::{free_port, wait_until};

pub const BIN: &str = env!("CARGO_BIN_EXE_stevedore");

pub struct Process {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Process {
    /// Starts `stevedore serve` with `config` (TOML without `[server] listen`, which is set
    /// to a free port on 127.0.0.1; `server_extra` goes into the `[server]` table).
    pub fn start(server_extra: &str, config: &str, env: &[(&str, &str)]) -> Self {
        Self::start_on("127.0.0.1", server_extra, config, env)
    }

    /// [`Process::start`] listening on `ip` (`0.0.0.0` for every address).
    pub fn start_on(ip: &str, server_extra: &str, config: &str, env: &[(&str, &str)]) -> Self {
        let port = free_port(std::net::Ipv4Addr::LOCALHOST.into());
        Self::start_at(ip, port, server_extra, config, env)
    }

    /// [`Process::start_on`] with a port chosen by the caller (replicas that list each other).
    pub fn start_at(
        ip: &str,
        port: u16,
        server_extra: &str,
        config: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stevedore.toml");
        let mut text = format!("[server]\nlisten = \"{ip}:{port}\"\n{server_extra}\n{config}");
        if !text.contains("[ca]") {
            text.push_str(&format!(
                "\n[ca]\ndir = \"{}\"\n",
                dir.path().join("ca").display()
            ));
        }
        std::fs::write(&path, text).expect("write config");
        let log = std::fs::File::create(dir.path().join("stevedore.log")).expect("log file");
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", "stevedore=info")
            .env_remove("HTTPS_PROXY")
            .env_remove("HTTP_PROXY")
            .env_remove("https_proxy")
            .env_remove("http_proxy")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start stevedore");
        let mut p = Self { child, port, dir };
        let up = wait_until(Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| ())
        });
        if up.is_none() {
            let _ = p.child.kill();
            panic!("stevedore did not start:\n{}", p.log());
        }
        p
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stevedore.log")).unwrap_or_default()
    }

    /// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }

    /// Resets the peak resident size (`VmHWM`) to the current one.
    pub fn reset_peak(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5").expect("clear_refs");
    }

    /// Open file descriptors of the process.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Waits up to `limit` for `needle` in the log.
    pub fn wait_for_log(&self, needle: &str, limit: Duration) -> bool {
        wait_until(limit, || self.log().contains(needle).then_some(())).is_some()
    }

    /// SIGTERM, then the exit status code (within 30 s).
    pub fn terminate(&mut self) -> Option<i32> {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(30))
            .and_then(|s| s.code())
    }

    /// Sends a signal (`libc::SIGTERM`, …).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with a pid this test spawned and still owns.
        unsafe {
            libc::kill(self.pid() as i32, sig);
        }
    }

    /// Waits up to `limit` for the process to exit; its status, if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        wait_until(limit, || self.child.try_wait().ok().flatten())
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("stevedore.toml")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
