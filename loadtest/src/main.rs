//! `loadtest`: stevedore side by side with nginx (sendfile, the practical
//! limit of the machine) and CNCF distribution in pull-through proxy mode,
//! all on loopback, in one run. See loadtest/README.md.

mod client;
mod counter;
mod fanout;
mod heads;
mod hostile;
mod link;
mod procs;
mod raw;
mod report;
mod s3tier;
mod scenarios;
mod setup;
mod small;
mod targets;
mod tls;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Parser;

use crate::report::{BlobInfo, Machine, Report};
use crate::scenarios::{Name, Params};
use crate::setup::{REPO, TAG};
use crate::targets::{Bins, Kind, Target, World};

/// What to run: every scenario, one of them (named as in [`Name`]), or the setup alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum What {
    /// Every scenario, in order.
    All,
    One(Name),
    /// Start origin and targets, print their URLs, and wait (for manual
    /// experiments) until Ctrl-C or --hold-secs.
    Setup,
}

impl clap::ValueEnum for What {
    fn value_variants<'a>() -> &'a [Self] {
        const VARIANTS: [What; 16] = [
            What::All,
            What::One(Name::ALL[0]),
            What::One(Name::ALL[1]),
            What::One(Name::ALL[2]),
            What::One(Name::ALL[3]),
            What::One(Name::ALL[4]),
            What::One(Name::ALL[5]),
            What::One(Name::ALL[6]),
            What::One(Name::ALL[7]),
            What::One(Name::ALL[8]),
            What::One(Name::ALL[9]),
            What::One(Name::ALL[10]),
            What::One(Name::ALL[11]),
            What::One(Name::ALL[12]),
            What::One(Name::ALL[13]),
            What::Setup,
        ];
        &VARIANTS
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        match self {
            What::All => {
                Some(clap::builder::PossibleValue::new("all").help("Every scenario, in order"))
            }
            What::One(name) => name.to_possible_value(),
            What::Setup => Some(clap::builder::PossibleValue::new("setup").help(
                "Start origin and targets, print their URLs, and wait until Ctrl-C or --hold-secs",
            )),
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "loadtest",
    about = "Benchmark stevedore against nginx (sendfile) and distribution (proxy mode) on loopback"
)]
struct Cli {
    /// Scenario to run: all, warm-1, warm-32, cold-32, tag-head, rss-64, rss-1000,
    /// small-answers, abuse-soak, tls-1, tls-32, connect-handshake, cold-32-slow-link, s3-tier,
    /// cold-fanout-3, or setup.
    #[arg(value_enum)]
    what: What,
    /// Size of the test blob in MiB (default 1024; 64 with --quick).
    #[arg(long)]
    blob_mib: Option<u64>,
    /// Smoke test: 64 MiB blob, 3 s tag-head.
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// stevedore binary (default: `stevedore` next to this executable, i.e.
    /// target/release/stevedore for a release build).
    #[arg(long)]
    stevedore_bin: Option<PathBuf>,
    /// TOML appended to the generated stevedore config (start it with a table
    /// header such as `[store]`). `{store}` is replaced by a fresh empty
    /// directory per stevedore start, `{dir}` by the instance's directory.
    #[arg(long)]
    stevedore_extra_config: Option<PathBuf>,
    /// RUST_LOG for stevedore.
    #[arg(long, default_value = "warn")]
    stevedore_log: String,
    /// distribution binary (origin and proxy-mode target).
    #[arg(long, default_value = "/usr/bin/docker-registry")]
    registry_bin: PathBuf,
    /// nginx binary.
    #[arg(long, default_value = "/usr/sbin/nginx")]
    nginx_bin: PathBuf,
    /// Concurrent keep-alive connections in tag-head.
    #[arg(long, default_value_t = 64)]
    head_connections: usize,
    /// Duration of tag-head per target, seconds (default 10; 3 with --quick).
    #[arg(long)]
    head_secs: Option<u64>,
    /// Duration of rss-1000 and of each phase of abuse-soak, seconds (default 20; 5 with
    /// --quick).
    #[arg(long)]
    soak_secs: Option<u64>,
    /// Per-request timeout for blob downloads, seconds (default: derived from
    /// blob size and concurrency, assuming at least 32 MiB/s in aggregate).
    #[arg(long)]
    timeout_secs: Option<u64>,
    /// Pullers check only the length, not the sha256 digest (diagnostic:
    /// shows how much of a number is the pullers' own hashing).
    #[arg(long)]
    no_verify: bool,
    /// Where the run's temporary directory is created (needs room for about
    /// four copies of the blob).
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Keep the temporary directory (logs, configs, blob) after the run.
    #[arg(long)]
    keep: bool,
    /// Seed of the blob's pseudo-random bytes (default: the current time).
    #[arg(long)]
    seed: Option<u64>,
    /// For `setup`: how long to keep everything running.
    #[arg(long, default_value_t = 600)]
    hold_secs: u64,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtest: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        tokio::select! {
            r = run(cli) => r,
            signal = stop_signal() => Err(anyhow::anyhow!("stopped by {signal}")),
        }
    });
    // Dropping the run future above killed the children; give tokio a moment
    // to reap them.
    runtime.shutdown_timeout(Duration::from_secs(2));
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Waits for SIGINT or SIGTERM (`timeout` sends the latter), so that the
/// run future is dropped and every child process killed.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return "SIGINT";
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

fn default_stevedore_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locate the loadtest executable")?;
    let dir = exe
        .parent()
        .context("loadtest executable has no directory")?;
    Ok(dir.join("stevedore"))
}

async fn run(cli: Cli) -> Result<()> {
    let started = Instant::now();
    let started_unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let command_line = std::env::args()
        .map(|a| {
            if a.is_empty() || a.contains(char::is_whitespace) {
                format!("'{a}'")
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    let blob_mib = cli.blob_mib.unwrap_or(if cli.quick { 64 } else { 1024 });
    anyhow::ensure!(blob_mib > 0, "--blob-mib must be at least 1");
    let head_secs = cli.head_secs.unwrap_or(if cli.quick { 3 } else { 10 });
    let params = Params {
        head_connections: cli.head_connections.max(1),
        head_duration: Duration::from_secs(head_secs.max(1)),
        download_timeout: cli.timeout_secs.map(Duration::from_secs),
        verify: if cli.no_verify {
            client::Verify::Length
        } else {
            client::Verify::Digest
        },
        soak_duration: Duration::from_secs(
            cli.soak_secs
                .unwrap_or(if cli.quick { 5 } else { 20 })
                .max(1),
        ),
    };
    raw::raise_open_files();
    let stevedore_bin = match &cli.stevedore_bin {
        Some(p) => p.clone(),
        None => default_stevedore_bin()?,
    };
    if !stevedore_bin.exists() {
        anyhow::bail!(
            "no stevedore binary at {} (build it with `cargo build --release -p stevedore`, or pass --stevedore-bin)",
            stevedore_bin.display()
        );
    }
    let stevedore_extra_config = match &cli.stevedore_extra_config {
        Some(p) => {
            Some(std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?)
        }
        None => None,
    };
    let bins = Bins {
        stevedore: stevedore_bin,
        stevedore_extra_config,
        stevedore_log: cli.stevedore_log.clone(),
        registry: cli.registry_bin.clone(),
        nginx: cli.nginx_bin.clone(),
    };

    let mut builder = tempfile::Builder::new();
    builder.prefix("stevedore-loadtest-");
    let tmp = match &cli.workdir {
        Some(dir) => builder.tempdir_in(dir),
        None => builder.tempdir(),
    }
    .context("create the run's temporary directory")?;
    let dir = tmp.path().to_path_buf();
    eprintln!("loadtest: working in {}", dir.display());
    eprintln!("loadtest: stevedore binary {}", bins.stevedore.display());
    // Keep the directory if asked; otherwise it goes when `tmp` drops (also
    // on error).
    let _tmp_guard = if cli.keep {
        let _ = tmp.keep();
        None
    } else {
        Some(tmp)
    };

    let (origin_proc, origin) =
        setup::start_registry(&bins.registry, "origin registry", &dir.join("origin"), None).await?;
    eprintln!("loadtest: origin registry on {origin}");
    let seed = cli.seed.unwrap_or(started_unix_s);
    let image = setup::make_image(&dir, origin, blob_mib, seed).await?;
    let world = World::new(dir.clone(), origin, origin_proc.pid(), image, bins.clone());

    if cli.what == What::Setup {
        let outcome = hold(&world, cli.hold_secs).await;
        origin_proc.stop().await;
        return outcome;
    }

    let names: Vec<Name> = match cli.what {
        What::All | What::Setup => Name::ALL.to_vec(),
        What::One(name) => vec![name],
    };
    let mut results = Vec::new();
    for name in names {
        let r = scenarios::run(&world, name, &params).await?;
        // Progress: each table as soon as it is done; all of them again on
        // stdout at the end.
        eprintln!("{}", report::scenario_table(&r));
        results.push(r);
    }
    origin_proc.stop().await;

    let report = Report {
        command_line,
        started_unix_s,
        total_s: started.elapsed().as_secs_f64(),
        machine: Machine::detect(),
        blob: BlobInfo {
            mib: blob_mib,
            bytes: world.image.blob_bytes,
            digest: world.image.blob_digest.clone(),
            manifest_digest: world.image.manifest_digest.clone(),
        },
        binaries: serde_json::json!({
            "stevedore": bins.stevedore.display().to_string(),
            "distribution": bins.registry.display().to_string(),
            "nginx": bins.nginx.display().to_string(),
        }),
        scenarios: results,
    };
    println!("{}", report::summary(&report));
    if let Some(path) = &cli.json {
        let json = serde_json::to_vec_pretty(&report).context("encode JSON report")?;
        std::fs::write(path, json).with_context(|| format!("write {}", path.display()))?;
        eprintln!("loadtest: wrote {}", path.display());
    }
    Ok(())
}

/// `setup`: start one of each target and keep them up for manual use.
async fn hold(world: &World, secs: u64) -> Result<()> {
    let mut targets = Vec::new();
    for kind in [Kind::Stevedore, Kind::Distribution, Kind::Nginx] {
        targets.push(Target::start(world, kind).await?);
    }
    println!("origin:  http://{}/v2/{REPO}/manifests/{TAG}", world.origin);
    for t in &targets {
        println!(
            "{:<13} blob: {}",
            t.name(),
            t.blob_url(&world.image.blob_digest)
        );
        if t.kind != Kind::Nginx {
            println!("{:<13} tag:  {}", "", t.manifest_url(TAG));
        }
    }
    println!("(holding for {secs}s; Ctrl-C stops everything)");
    tokio::time::sleep(Duration::from_secs(secs)).await;
    for t in targets {
        t.stop().await;
    }
    Ok(())
}
