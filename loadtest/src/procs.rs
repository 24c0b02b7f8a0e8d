//! Child processes: free ports, readiness, memory (from `/proc`), and killing
//! a process together with its descendants (nginx workers).

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A free port on 127.0.0.1 (bound and released; the caller hands it to a
/// child, so a retry on "address in use" is still needed).
pub fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("bind 127.0.0.1:0 to find a port")?;
    Ok(listener.local_addr().context("local address")?.port())
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Environment variables that must not reach the children: proxies (all
/// traffic stays on loopback) and distribution's config overrides.
pub fn scrub_env(cmd: &mut tokio::process::Command) {
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy().to_ascii_uppercase();
        if k.starts_with("REGISTRY_") || k.ends_with("_PROXY") {
            cmd.env_remove(&key);
        }
    }
}

/// A running child process; killed (with its descendants) on drop.
pub struct Proc {
    pub name: String,
    child: tokio::process::Child,
    pid: u32,
    pub log: std::path::PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: tokio::process::Command, log: &Path) -> Result<Proc> {
        let out = std::fs::File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open log {}", log.display()))?;
        let err = out.try_clone().context("clone log handle")?;
        cmd.stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        scrub_env(&mut cmd);
        // SAFETY: the closure runs between fork and exec and only calls
        // prctl(2), which is async-signal-safe. If loadtest dies without
        // cleaning up (SIGKILL), the child gets SIGKILL too.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let pid = child
            .id()
            .with_context(|| format!("{name} exited at once"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            pid,
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The process and all its descendants (nginx master and workers).
    pub fn pids(&self) -> Vec<u32> {
        let mut all = vec![self.pid];
        all.extend(descendants(self.pid));
        all
    }

    /// Whether the process has exited (with its status).
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("wait failed: {e}")),
        }
    }

    /// Waits until `GET http://addr/v2/` answers 200 (or 401).
    pub async fn wait_ready(&mut self, addr: SocketAddr, within: Duration) -> Result<()> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .context("build readiness client")?;
        let url = format!("http://{addr}/v2/");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.exited() {
                bail!(
                    "{} exited early ({status}); log {}:\n{}",
                    self.name,
                    self.log.display(),
                    tail(&self.log)
                );
            }
            if let Ok(resp) = client.get(&url).send().await
                && matches!(resp.status().as_u16(), 200 | 401)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not answer {url} within {within:?}; log {}:\n{}",
                    self.name,
                    self.log.display(),
                    tail(&self.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the process and its descendants, then reaps it.
    pub async fn stop(mut self) {
        kill_tree(self.pid);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            kill_tree(self.pid);
        }
    }
}

/// The last lines of a log file (for error messages).
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(20);
    lines[start..].join("\n")
}

/// SIGKILLs `pid` first (so that a master such as nginx's cannot respawn
/// the workers it loses), then the descendants found before.
fn kill_tree(pid: u32) {
    let mut victims = vec![pid];
    victims.extend(descendants(pid));
    for p in victims {
        if let Ok(p) = i32::try_from(p) {
            // SAFETY: kill(2) with a pid we started (or its descendant) and a
            // valid signal number has no memory-safety preconditions.
            unsafe {
                libc::kill(p, libc::SIGKILL);
            }
        }
    }
}

/// Parent pid of `pid` from `/proc/<pid>/stat`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// All descendants of `pid` (children, grandchildren, ...).
pub fn descendants(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let procs: Vec<(u32, u32)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| Some((p, parent_of(p)?)))
        .collect();
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(p, pp) in &procs {
            if pp == parent && !found.contains(&p) {
                found.push(p);
                frontier.push(p);
            }
        }
    }
    found
}

/// A `kB` field (`VmRSS`, `VmHWM`) of `/proc/<pid>/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// Sum of `field` over `pids` (processes that have gone count 0).
pub fn sum_kib(pids: &[u32], field: &str) -> u64 {
    pids.iter().filter_map(|&p| status_kib(p, field)).sum()
}

/// Samples the summed `VmRSS` of a process tree every 100 ms and keeps the
/// maximum, until dropped.
pub struct RssSampler {
    max_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    pub fn start(pids: Vec<u32>) -> RssSampler {
        let max_kib = Arc::new(AtomicU64::new(sum_kib(&pids, "VmRSS")));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (max_kib.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while !s.load(Ordering::Relaxed) {
                tick.tick().await;
                m.fetch_max(sum_kib(&pids, "VmRSS"), Ordering::Relaxed);
            }
        });
        RssSampler {
            max_kib,
            stop,
            task,
        }
    }

    /// Stops sampling and returns the maximum seen, in KiB.
    pub fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.abort();
        self.max_kib.load(Ordering::Relaxed)
    }
}

/// Whether this process runs as root (nginx then needs `user root;` to read
/// files in a 0700 tempdir).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("Uid:")?
                    .split_whitespace()
                    .nth(1)?
                    .parse::<u32>()
                    .ok()
            })
        })
        == Some(0)
}

/// Busy and total CPU ticks of the whole machine (first line of
/// `/proc/stat`).
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// utime + stime of a process (all its threads), in ticks.
fn process_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some(close) = stat.rfind(')') else {
        return 0;
    };
    // Fields after the command: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

/// CPU use during a measured phase: by the benchmark's own processes
/// (loadtest itself, the target, the origin) and by everything else on the
/// machine (other builds and tests skew the numbers).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CpuUse {
    /// Percent of the machine's total CPU capacity used by the target.
    pub target_pct: f64,
    /// Percent used by loadtest (pullers, counting proxy) and the origin.
    pub harness_pct: f64,
    /// Percent used by other processes: should be near 0 for clean numbers.
    pub other_pct: f64,
}

pub struct CpuWatch {
    target: Vec<u32>,
    harness: Vec<u32>,
    start_machine: Option<(u64, u64)>,
    start_target: u64,
    start_harness: u64,
}

impl CpuWatch {
    pub fn start(target: Vec<u32>, mut harness: Vec<u32>) -> CpuWatch {
        harness.push(std::process::id());
        let sum = |pids: &[u32]| pids.iter().map(|&p| process_ticks(p)).sum::<u64>();
        CpuWatch {
            start_target: sum(&target),
            start_harness: sum(&harness),
            start_machine: machine_ticks(),
            target,
            harness,
        }
    }

    pub fn finish(self) -> CpuUse {
        let sum = |pids: &[u32]| pids.iter().map(|&p| process_ticks(p)).sum::<u64>();
        let target = sum(&self.target).saturating_sub(self.start_target);
        let harness = sum(&self.harness).saturating_sub(self.start_harness);
        let (Some((b0, t0)), Some((b1, t1))) = (self.start_machine, machine_ticks()) else {
            return CpuUse::default();
        };
        let capacity = (t1.saturating_sub(t0)).max(1) as f64;
        let busy = b1.saturating_sub(b0);
        let pct = |ticks: u64| 100.0 * ticks as f64 / capacity;
        CpuUse {
            target_pct: pct(target),
            harness_pct: pct(harness),
            other_pct: pct(busy.saturating_sub(target + harness)),
        }
    }
}
