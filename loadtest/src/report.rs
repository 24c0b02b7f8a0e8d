//! The human-readable tables and the JSON report.

use std::fmt::Write;

use serde::Serialize;

use crate::scenarios::{ScenarioResult, TargetResult};

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub mem_total_kib: Option<u64>,
    pub kernel: Option<String>,
    pub cpu_model: Option<String>,
}

impl Machine {
    pub fn detect() -> Machine {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_total_kib = meminfo.lines().find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        });
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_string())
        });
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            mem_total_kib,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|s| s.trim().to_string()),
            cpu_model,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct BlobInfo {
    pub mib: u64,
    pub bytes: u64,
    pub digest: String,
    pub manifest_digest: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub command_line: String,
    pub started_unix_s: u64,
    pub total_s: f64,
    pub machine: Machine,
    pub blob: BlobInfo,
    pub binaries: serde_json::Value,
    pub scenarios: Vec<ScenarioResult>,
}

fn opt_ms(v: Option<f64>) -> String {
    match v {
        Some(ms) if ms >= 10_000.0 => format!("{:.1}s", ms / 1000.0),
        Some(ms) if ms >= 100.0 => format!("{ms:.0}"),
        Some(ms) => format!("{ms:.2}"),
        None => "-".to_string(),
    }
}

fn mib(kib: u64) -> String {
    if kib == 0 {
        "-".to_string()
    } else {
        format!("{:.1}", kib as f64 / 1024.0)
    }
}

fn upstream_cell(r: &TargetResult, blob: bool) -> String {
    match (&r.upstream_warmup, &r.upstream_run) {
        (Some(w), Some(u)) if blob => format!("{}+{}", w.blob_get, u.blob_get),
        (Some(w), Some(u)) => format!(
            "{}+{}",
            w.manifest_get + w.manifest_head,
            u.manifest_get + u.manifest_head
        ),
        _ => "-".to_string(),
    }
}

fn cpu_cell(r: &TargetResult) -> String {
    format!(
        "{:.0}/{:.0}/{:.0}",
        r.cpu.target_pct, r.cpu.harness_pct, r.cpu.other_pct
    )
}

fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>, out: &mut String| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 0 {
                    format!("{c:<w$}", w = widths[i])
                } else {
                    format!("{c:>w$}", w = widths[i])
                }
            })
            .collect();
        let _ = writeln!(out, "  {}", parts.join("  "));
    };
    line(header.iter().map(|h| h.to_string()).collect(), &mut out);
    line(widths.iter().map(|w| "-".repeat(*w)).collect(), &mut out);
    for row in rows {
        line(row.clone(), &mut out);
    }
    out
}

pub fn scenario_table(s: &ScenarioResult) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n## {} — {}", s.name, s.description);
    let heads = matches!(
        s.name.as_str(),
        "tag-head" | "small-answers" | "connect-handshake"
    );
    let header: Vec<&str> = if heads {
        vec![
            "target",
            "ok",
            "err",
            "wall s",
            "req/s",
            "lat p50 ms",
            "lat p99 ms",
            "up manifest warm+run",
            "peak RSS MiB",
            "max sampled RSS MiB",
            "CPU% tgt/harn/other",
        ]
    } else {
        vec![
            "target",
            "ok",
            "err",
            "GiB",
            "wall s",
            "MiB/s",
            "req/s",
            "TTFB p50 ms",
            "TTFB p99 ms",
            "done p50 ms",
            "done p99 ms",
            "up blob GET warm+run",
            "peak RSS MiB",
            "max sampled RSS MiB",
            "CPU% tgt/harn/other",
        ]
    };
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for r in &s.results {
        if let Some(f) = &r.failure {
            let mut row = vec![r.target.clone(), "FAILED".to_string()];
            row.resize(header.len(), String::new());
            rows.push(row);
            notes.push(format!("{}: {f}", r.target));
            continue;
        }
        if r.cpu.other_pct > 10.0 {
            notes.push(format!(
                "{}: other processes used {:.0}% of the machine's CPU during the run; its numbers are skewed",
                r.target, r.cpu.other_pct
            ));
        }
        for e in &r.error_samples {
            notes.push(format!("{} error: {e}", r.target));
        }
        for n in &r.notes {
            notes.push(format!("{}: {n}", r.target));
        }
        if heads {
            rows.push(vec![
                r.target.clone(),
                r.ok.to_string(),
                r.errors.to_string(),
                format!("{:.2}", r.wall_s),
                format!("{:.0}", r.req_per_s),
                opt_ms(r.ttfb_p50_ms),
                opt_ms(r.ttfb_p99_ms),
                upstream_cell(r, false),
                mib(r.peak_rss_kib),
                mib(r.sampled_rss_max_kib),
                cpu_cell(r),
            ]);
        } else {
            rows.push(vec![
                r.target.clone(),
                r.ok.to_string(),
                r.errors.to_string(),
                format!("{:.2}", r.bytes as f64 / (1u64 << 30) as f64),
                format!("{:.2}", r.wall_s),
                format!("{:.0}", r.mib_per_s),
                format!("{:.2}", r.req_per_s),
                opt_ms(r.ttfb_p50_ms),
                opt_ms(r.ttfb_p99_ms),
                opt_ms(r.done_p50_ms),
                opt_ms(r.done_p99_ms),
                upstream_cell(r, true),
                mib(r.peak_rss_kib),
                mib(r.sampled_rss_max_kib),
                cpu_cell(r),
            ]);
        }
    }
    out.push_str(&render_table(&header, &rows));
    for (label, value) in &s.ratios {
        match value {
            Some(v) => {
                let _ = writeln!(out, "  ratio {label}: {v:.2}");
            }
            None => {
                let _ = writeln!(out, "  ratio {label}: n/a");
            }
        }
    }
    for n in notes {
        let _ = writeln!(out, "  ! {n}");
    }
    out
}

pub fn summary(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n# loadtest");
    let _ = writeln!(out, "command: {}", report.command_line);
    let _ = writeln!(
        out,
        "machine: {} CPUs ({}), {:.1} GiB RAM, kernel {}",
        report.machine.cpus,
        report.machine.cpu_model.as_deref().unwrap_or("?"),
        report.machine.mem_total_kib.unwrap_or(0) as f64 / 1024.0 / 1024.0,
        report.machine.kernel.as_deref().unwrap_or("?")
    );
    let _ = writeln!(
        out,
        "blob: {} MiB {} (manifest {})",
        report.blob.mib, report.blob.digest, report.blob.manifest_digest
    );
    for s in &report.scenarios {
        out.push_str(&scenario_table(s));
    }
    let _ = writeln!(out, "\ntotal time {:.1}s", report.total_s);
    out
}
