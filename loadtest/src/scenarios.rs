//! The scenarios. Each target is started fresh for each scenario (new
//! process, new state directory), so its caches are empty and its peak RSS
//! (`VmHWM`) belongs to this scenario alone.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde::Serialize;

use crate::client::{Download, Verify, concurrent_downloads, download, new_client, percentile_ms};
use crate::counter::Upstream;
use crate::procs::{CpuUse, CpuWatch, RssSampler, sum_kib};
use crate::targets::{Kind, Target, World};

/// Media types a puller accepts for a manifest, one per `Accept` line.
pub const MANIFEST_ACCEPT: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Name {
    #[value(name = "warm-1")]
    Warm1,
    #[value(name = "warm-32")]
    Warm32,
    #[value(name = "cold-32")]
    Cold32,
    #[value(name = "tag-head")]
    TagHead,
    #[value(name = "rss-64")]
    Rss64,
    #[value(name = "rss-1000")]
    Rss1000,
    #[value(name = "small-answers")]
    SmallAnswers,
    #[value(name = "abuse-soak")]
    AbuseSoak,
    #[value(name = "tls-1")]
    Tls1,
    #[value(name = "tls-32")]
    Tls32,
    #[value(name = "connect-handshake")]
    ConnectHandshake,
    #[value(name = "cold-32-slow-link")]
    Cold32SlowLink,
    #[value(name = "s3-tier")]
    S3Tier,
    #[value(name = "cold-fanout-3")]
    ColdFanout3,
}

impl Name {
    pub const ALL: [Name; 14] = [
        Name::Warm1,
        Name::Warm32,
        Name::Cold32,
        Name::TagHead,
        Name::Rss64,
        Name::Rss1000,
        Name::SmallAnswers,
        Name::AbuseSoak,
        Name::Tls1,
        Name::Tls32,
        Name::ConnectHandshake,
        Name::Cold32SlowLink,
        Name::S3Tier,
        Name::ColdFanout3,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Name::Warm1 => "warm-1",
            Name::Warm32 => "warm-32",
            Name::Cold32 => "cold-32",
            Name::TagHead => "tag-head",
            Name::Rss64 => "rss-64",
            Name::Rss1000 => "rss-1000",
            Name::SmallAnswers => "small-answers",
            Name::AbuseSoak => "abuse-soak",
            Name::Tls1 => "tls-1",
            Name::Tls32 => "tls-32",
            Name::ConnectHandshake => "connect-handshake",
            Name::Cold32SlowLink => "cold-32-slow-link",
            Name::S3Tier => "s3-tier",
            Name::ColdFanout3 => "cold-fanout-3",
        }
    }
}

/// Knobs shared by the scenarios.
#[derive(Debug, Clone)]
pub struct Params {
    pub head_connections: usize,
    pub head_duration: Duration,
    /// Per-request timeout for downloads; `None`: derived from size and
    /// concurrency.
    pub download_timeout: Option<Duration>,
    pub verify: Verify,
    /// How long the time-bounded scenarios (rss-1000, each phase of abuse-soak) run.
    pub soak_duration: Duration,
}

/// One target's numbers in one scenario.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TargetResult {
    pub target: String,
    /// Set when the target could not be measured (did not start, died,
    /// warm-up failed); the numbers are then zero.
    pub failure: Option<String>,
    pub clients: usize,
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub error_samples: Vec<String>,
    pub bytes: u64,
    pub wall_s: f64,
    pub mib_per_s: f64,
    /// Completed requests per second of wall time (for cold-32: clients
    /// finished per second).
    pub req_per_s: f64,
    /// Time to first body byte (tag-head: HEAD latency).
    pub ttfb_p50_ms: Option<f64>,
    pub ttfb_p99_ms: Option<f64>,
    /// Time to the verified end of the body.
    pub done_p50_ms: Option<f64>,
    pub done_p99_ms: Option<f64>,
    pub done_max_ms: Option<f64>,
    /// The warm-up request(s) before the measured phase.
    pub warmup_s: Option<f64>,
    /// Requests the target made to the origin during warm-up.
    pub upstream_warmup: Option<Upstream>,
    /// Requests the target made to the origin during the measured phase.
    pub upstream_run: Option<Upstream>,
    /// Peak resident set size since the target started (`VmHWM`, summed over
    /// its processes), KiB.
    pub peak_rss_kib: u64,
    /// Largest `VmRSS` (summed) sampled every 100 ms during the measured
    /// phase, KiB.
    pub sampled_rss_max_kib: u64,
    /// CPU use during the measured phase (percent of all cores).
    pub cpu: CpuUse,
    /// What else the scenario observed (hostile clients closed, …).
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub name: String,
    pub description: String,
    pub clients: usize,
    pub duration_s: Option<f64>,
    pub results: Vec<TargetResult>,
    /// `stevedore/<other>` ratios of the headline metric; `None` when either
    /// side has no value.
    pub ratios: BTreeMap<String, Option<f64>>,
}

impl TargetResult {
    /// A target that could not be measured in `scenario` (said on stderr too).
    pub fn failed(target: &str, scenario: &str, clients: usize, e: &anyhow::Error) -> Self {
        eprintln!("loadtest: {target} failed in {scenario}: {e:#}");
        TargetResult {
            target: target.to_string(),
            failure: Some(format!("{e:#}")),
            clients,
            ..TargetResult::default()
        }
    }
}

impl ScenarioResult {
    fn get(&self, kind: Kind) -> Option<&TargetResult> {
        self.results
            .iter()
            .find(|r| r.target == kind.name() && r.failure.is_none())
    }

    fn ratio(&mut self, label: &str, other: Kind, metric: fn(&TargetResult) -> f64) {
        let value = match (self.get(Kind::Stevedore), self.get(other)) {
            (Some(s), Some(o)) if metric(o) > 0.0 && s.errors == 0 => Some(metric(s) / metric(o)),
            _ => None,
        };
        self.ratios.insert(label.to_string(), value);
    }
}

pub async fn run(world: &World, name: Name, params: &Params) -> Result<ScenarioResult> {
    eprintln!("loadtest: === scenario {} ===", name.as_str());
    let mut result = match name {
        Name::Warm1 => {
            downloads(
                world,
                name,
                "one client downloads the blob from a warmed target (one full GET before)",
                &[Kind::Stevedore, Kind::Nginx, Kind::Distribution],
                1,
                true,
                params,
            )
            .await?
        }
        Name::Warm32 => {
            downloads(
                world,
                name,
                "32 concurrent clients each download the full blob from a warmed target",
                &[Kind::Stevedore, Kind::Nginx, Kind::Distribution],
                32,
                true,
                params,
            )
            .await?
        }
        Name::Cold32 => {
            downloads(
                world,
                name,
                "32 concurrent clients start at the same moment on an uncached blob (fresh target state)",
                &[Kind::Stevedore, Kind::Distribution],
                32,
                false,
                params,
            )
            .await?
        }
        Name::Rss64 => {
            downloads(
                world,
                name,
                "64 concurrent full-blob streams from a warmed stevedore; peak RSS",
                &[Kind::Stevedore],
                64,
                true,
                params,
            )
            .await?
        }
        Name::TagHead => crate::heads::tag_head(world, params).await?,
        Name::Rss1000 => return crate::hostile::rss_1000(world, params).await,
        Name::AbuseSoak => return crate::hostile::abuse_soak(world, params).await,
        Name::SmallAnswers => return crate::small::small_answers(world, params).await,
        Name::Tls1 => return crate::tls::tls_downloads(world, params, 1).await,
        Name::Tls32 => return crate::tls::tls_downloads(world, params, 32).await,
        Name::ConnectHandshake => return crate::tls::connect_handshake(world).await,
        Name::Cold32SlowLink => return crate::link::cold_32_slow_link(world, params).await,
        Name::S3Tier => return crate::s3tier::s3_tier(world, params).await,
        Name::ColdFanout3 => return crate::fanout::cold_fanout_3(world, params).await,
    };
    let throughput = |r: &TargetResult| r.mib_per_s;
    let rate = |r: &TargetResult| r.req_per_s;
    match name {
        Name::Warm1 | Name::Warm32 => {
            result.ratio("stevedore/nginx throughput", Kind::Nginx, throughput);
            result.ratio(
                "stevedore/distribution throughput",
                Kind::Distribution,
                throughput,
            );
        }
        Name::Cold32 => {
            result.ratio(
                "stevedore/distribution completion rate",
                Kind::Distribution,
                rate,
            );
        }
        Name::TagHead => {
            result.ratio(
                "stevedore/distribution requests/s",
                Kind::Distribution,
                rate,
            );
        }
        Name::Rss64
        | Name::Rss1000
        | Name::AbuseSoak
        | Name::SmallAnswers
        | Name::Tls1
        | Name::Tls32
        | Name::ConnectHandshake
        | Name::Cold32SlowLink
        | Name::S3Tier
        | Name::ColdFanout3 => {}
    }
    Ok(result)
}

/// Waits (at most two minutes) until the target has moved no upstream bytes
/// for a second: distribution finishes storing a blob in the background
/// after the client's copy is done, and a measured run must not race it.
pub(crate) async fn settle(target: &Target) {
    let Some(mut last) = target.upstream().map(|u| u.response_bytes) else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = target.upstream().map_or(0, |u| u.response_bytes);
        if now == last {
            return;
        }
        last = now;
    }
}

fn download_timeout(world: &World, clients: usize, params: &Params) -> Duration {
    params.download_timeout.unwrap_or_else(|| {
        // Generous: everything at 32 MiB/s aggregate, plus a minute.
        let mib = (world.image.blob_bytes / (1024 * 1024)).max(1);
        Duration::from_secs(60 + mib * clients as u64 / 32)
    })
}

async fn downloads(
    world: &World,
    name: Name,
    description: &str,
    kinds: &[Kind],
    clients: usize,
    warm: bool,
    params: &Params,
) -> Result<ScenarioResult> {
    let timeout = download_timeout(world, clients, params);
    let mut results = Vec::new();
    for &kind in kinds {
        let r = match measure_downloads(world, kind, clients, warm, timeout, params.verify).await {
            Ok(r) => r,
            Err(e) => TargetResult::failed(kind.name(), name.as_str(), clients, &e),
        };
        results.push(r);
    }
    Ok(ScenarioResult {
        name: name.as_str().to_string(),
        description: description.to_string(),
        clients,
        duration_s: None,
        results,
        ratios: BTreeMap::new(),
    })
}

pub(crate) async fn measure_downloads(
    world: &World,
    kind: Kind,
    clients: usize,
    warm: bool,
    timeout: Duration,
    verify: Verify,
) -> Result<TargetResult> {
    let mut target = Target::start(world, kind).await?;
    let outcome = measure_downloads_on(&mut target, world, clients, warm, timeout, verify).await;
    target.stop().await;
    outcome
}

async fn measure_downloads_on(
    target: &mut Target,
    world: &World,
    clients: usize,
    warm: bool,
    timeout: Duration,
    verify: Verify,
) -> Result<TargetResult> {
    let image = &world.image;
    let url = target.blob_url(&image.blob_digest);
    let mut warmup_s = None;
    if warm {
        let started = Instant::now();
        let c = new_client()?;
        let d = download(
            &c,
            &url,
            &image.blob_digest,
            image.blob_bytes,
            timeout,
            Verify::Digest,
        )
        .await;
        if let Some(e) = d.error {
            bail!("warm-up GET {url}: {e}");
        }
        settle(target).await;
        warmup_s = Some(started.elapsed().as_secs_f64());
    }
    let upstream_before = target.upstream();
    eprintln!(
        "loadtest: {}: {clients} client(s) downloading {} MiB each",
        target.name(),
        image.blob_bytes / (1024 * 1024)
    );
    let sampler = RssSampler::start(target.pids());
    let cpu = CpuWatch::start(target.pids(), vec![world.origin_pid]);
    let (downloads, wall) = concurrent_downloads(
        clients,
        &url,
        &image.blob_digest,
        image.blob_bytes,
        timeout,
        verify,
    )
    .await?;
    let cpu = cpu.finish();
    let sampled = sampler.finish();
    let peak = sum_kib(&target.pids(), "VmHWM");
    let upstream_after = target.upstream();
    let alive = target.check_alive();

    let mut r = summarize(target.name(), clients, &downloads, wall);
    if let Err(e) = alive {
        r.error_samples.push(format!("{e:#}"));
    }
    r.warmup_s = warmup_s;
    r.upstream_warmup = upstream_before.clone();
    r.upstream_run = match (&upstream_after, &upstream_before) {
        (Some(a), Some(b)) => Some(a.since(b)),
        _ => None,
    };
    r.peak_rss_kib = peak;
    r.sampled_rss_max_kib = sampled;
    r.cpu = cpu;
    eprintln!(
        "loadtest: {}: {} ok, {} errors, {:.0} MiB/s, {:.1}s",
        r.target, r.ok, r.errors, r.mib_per_s, r.wall_s
    );
    Ok(r)
}

pub(crate) fn summarize(
    target: &str,
    clients: usize,
    downloads: &[Download],
    wall: Duration,
) -> TargetResult {
    let ok: Vec<&Download> = downloads.iter().filter(|d| d.error.is_none()).collect();
    let mut ttfb: Vec<Duration> = ok.iter().filter_map(|d| d.ttfb).collect();
    let mut done: Vec<Duration> = ok.iter().map(|d| d.total).collect();
    let bytes: u64 = downloads.iter().map(|d| d.bytes).sum();
    let secs = wall.as_secs_f64().max(1e-9);
    let mut error_samples: Vec<String> = Vec::new();
    for d in downloads {
        if let Some(e) = &d.error
            && error_samples.len() < 5
            && !error_samples.contains(e)
        {
            error_samples.push(e.clone());
        }
    }
    TargetResult {
        target: target.to_string(),
        failure: None,
        clients,
        requests: downloads.len() as u64,
        ok: ok.len() as u64,
        errors: (downloads.len() - ok.len()) as u64,
        error_samples,
        bytes,
        wall_s: secs,
        mib_per_s: bytes as f64 / (1024.0 * 1024.0) / secs,
        req_per_s: ok.len() as f64 / secs,
        ttfb_p50_ms: percentile_ms(&mut ttfb, 50.0),
        ttfb_p99_ms: percentile_ms(&mut ttfb, 99.0),
        done_p50_ms: percentile_ms(&mut done, 50.0),
        done_p99_ms: percentile_ms(&mut done, 99.0),
        done_max_ms: percentile_ms(&mut done, 100.0),
        ..TargetResult::default()
    }
}
