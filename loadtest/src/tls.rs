//! TLS: the warm blob through stevedore's TLS mirror listener and through an intercepted
//! CONNECT tunnel (stevedore as HTTPS_PROXY), next to nginx serving the same file over TLS;
//! and what a CONNECT plus TLS handshake costs a guest with the leaf already minted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::client::{Download, Verify, download, percentile_ms};
use crate::procs::{CpuWatch, RssSampler, sum_kib};
use crate::scenarios::{Name, Params, ScenarioResult, TargetResult};
use crate::targets::{Kind, Target, World};

/// How a client reaches the blob over TLS.
#[derive(Debug, Clone, Copy)]
enum Path {
    /// nginx's TLS server, or stevedore's TLS listener (with `?ns=`).
    Direct,
    /// `https://<origin>/…` through stevedore as the HTTPS proxy.
    Tunnel,
}

fn client(ca_pem: &str, proxy: Option<String>) -> Result<reqwest::Client> {
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).context("CA certificate")?;
    let mut b = reqwest::Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1)
        .tls_certs_merge([ca]);
    b = match proxy {
        Some(url) => b.proxy(reqwest::Proxy::https(url).context("proxy URL")?),
        None => b.no_proxy(),
    };
    b.build().context("build a TLS client")
}

/// The URL and client factory for one way of reaching the blob.
fn route(world: &World, target: &Target, path: Path) -> Result<(String, Option<String>, String)> {
    let (tls_addr, ca) = target
        .tls
        .clone()
        .with_context(|| format!("{} has no TLS listener", target.name()))?;
    let blob = &world.image.blob_digest;
    Ok(match (target.kind, path) {
        (Kind::Stevedore, Path::Tunnel) => (
            format!(
                "https://{}/v2/{}/blobs/{blob}",
                world.origin,
                crate::setup::REPO
            ),
            Some(format!("http://{}", target.addr())),
            ca,
        ),
        (Kind::Stevedore, Path::Direct) => (
            format!(
                "https://{tls_addr}/v2/{}/blobs/{blob}?ns={}",
                crate::setup::REPO,
                world.origin
            ),
            None,
            ca,
        ),
        _ => (
            format!("https://{tls_addr}/v2/{}/blobs/{blob}", crate::setup::REPO),
            None,
            ca,
        ),
    })
}

pub async fn tls_downloads(
    world: &World,
    params: &Params,
    clients: usize,
) -> Result<ScenarioResult> {
    let name = if clients == 1 {
        Name::Tls1
    } else {
        Name::Tls32
    };
    let mut results = Vec::new();
    for (kind, path, label) in [
        (Kind::Nginx, Path::Direct, "nginx (TLS)"),
        (Kind::Stevedore, Path::Direct, "stevedore TLS mirror"),
        (Kind::Stevedore, Path::Tunnel, "stevedore CONNECT tunnel"),
    ] {
        let r = match measure(world, kind, path, clients, params).await {
            Ok(mut r) => {
                r.target = label.to_string();
                r
            }
            Err(e) => TargetResult::failed(label, name.as_str(), clients, &e),
        };
        results.push(r);
    }
    let rate = |label: &str| {
        results
            .iter()
            .find(|r| r.target == label && r.failure.is_none() && r.errors == 0)
            .map(|r| r.mib_per_s)
    };
    let mut ratios = BTreeMap::new();
    for label in ["stevedore TLS mirror", "stevedore CONNECT tunnel"] {
        let ratio = match (rate(label), rate("nginx (TLS)")) {
            (Some(s), Some(n)) if n > 0.0 => Some(s / n),
            _ => None,
        };
        ratios.insert(format!("{label}/nginx (TLS) throughput"), ratio);
    }
    Ok(ScenarioResult {
        name: name.as_str().to_string(),
        description: format!(
            "{clients} client(s) download the warm blob over TLS: nginx's TLS server, \
             stevedore's TLS mirror listener, and through stevedore as HTTPS proxy (intercepted)"
        ),
        clients,
        duration_s: None,
        results,
        ratios,
    })
}

async fn measure(
    world: &World,
    kind: Kind,
    path: Path,
    clients: usize,
    params: &Params,
) -> Result<TargetResult> {
    let target = Target::start(world, kind).await?;
    let outcome = measure_on(&target, world, path, clients, params).await;
    target.stop().await;
    outcome
}

async fn measure_on(
    target: &Target,
    world: &World,
    path: Path,
    clients: usize,
    params: &Params,
) -> Result<TargetResult> {
    let (url, proxy, ca) = route(world, target, path)?;
    let image = &world.image;
    let timeout = params.download_timeout.unwrap_or_else(|| {
        let mib = (image.blob_bytes / (1024 * 1024)).max(1);
        Duration::from_secs(60 + mib * clients as u64 / 32)
    });
    // Warm (and check) once.
    let warm = download(
        &client(&ca, proxy.clone())?,
        &url,
        &image.blob_digest,
        image.blob_bytes,
        timeout,
        Verify::Digest,
    )
    .await;
    if let Some(e) = warm.error {
        bail!("warm-up GET {url}: {e}");
    }
    let pids = target.pids();
    let sampler = RssSampler::start(pids.clone());
    let cpu = CpuWatch::start(pids.clone(), vec![world.origin_pid]);
    let barrier = Arc::new(tokio::sync::Barrier::new(clients + 1));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let c = client(&ca, proxy.clone())?;
        let (barrier, url, digest) = (barrier.clone(), url.clone(), image.blob_digest.clone());
        let (size, verify) = (image.blob_bytes, params.verify);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            download(&c, &url, &digest, size, timeout, verify).await
        }));
    }
    barrier.wait().await;
    let started = Instant::now();
    let mut downloads: Vec<Download> = Vec::new();
    for t in tasks {
        downloads.push(t.await.context("download task")?);
    }
    let wall = started.elapsed();
    let ok: Vec<&Download> = downloads.iter().filter(|d| d.error.is_none()).collect();
    let bytes: u64 = downloads.iter().map(|d| d.bytes).sum();
    let secs = wall.as_secs_f64().max(1e-9);
    let mut done: Vec<Duration> = ok.iter().map(|d| d.total).collect();
    let mut ttfb: Vec<Duration> = ok.iter().filter_map(|d| d.ttfb).collect();
    let r = TargetResult {
        target: target.name().to_string(),
        clients,
        requests: downloads.len() as u64,
        ok: ok.len() as u64,
        errors: (downloads.len() - ok.len()) as u64,
        error_samples: downloads
            .iter()
            .filter_map(|d| d.error.clone())
            .take(3)
            .collect(),
        bytes,
        wall_s: secs,
        mib_per_s: bytes as f64 / (1024.0 * 1024.0) / secs,
        req_per_s: ok.len() as f64 / secs,
        ttfb_p50_ms: percentile_ms(&mut ttfb, 50.0),
        ttfb_p99_ms: percentile_ms(&mut ttfb, 99.0),
        done_p50_ms: percentile_ms(&mut done, 50.0),
        done_p99_ms: percentile_ms(&mut done, 99.0),
        done_max_ms: percentile_ms(&mut done, 100.0),
        cpu: cpu.finish(),
        sampled_rss_max_kib: sampler.finish(),
        peak_rss_kib: sum_kib(&pids, "VmHWM"),
        ..TargetResult::default()
    };
    eprintln!(
        "loadtest: {} over TLS ({path:?}): {} ok, {} errors, {:.0} MiB/s",
        target.name(),
        r.ok,
        r.errors,
        r.mib_per_s
    );
    Ok(r)
}

/// Handshakes measured in `connect-handshake`.
const HANDSHAKES: usize = 300;

pub async fn connect_handshake(world: &World) -> Result<ScenarioResult> {
    let target = Target::start(world, Kind::Stevedore).await?;
    let outcome = handshakes_on(&target, world).await;
    target.stop().await;
    let r = outcome?;
    Ok(ScenarioResult {
        name: Name::ConnectHandshake.as_str().to_string(),
        description: format!(
            "{HANDSHAKES} guests one after the other: CONNECT, TLS handshake (leaf already \
             minted) and GET /v2/ through stevedore as HTTPS proxy"
        ),
        clients: 1,
        duration_s: None,
        results: vec![r],
        ratios: BTreeMap::new(),
    })
}

async fn handshakes_on(target: &Target, world: &World) -> Result<TargetResult> {
    let (_, ca) = target.tls.clone().context("stevedore has no CA")?;
    let proxy = format!("http://{}", target.addr());
    let url = format!("https://{}/v2/", world.origin);
    // The first one mints the leaf.
    let first = client(&ca, Some(proxy.clone()))?
        .get(&url)
        .send()
        .await
        .context("first CONNECT")?;
    if !first.status().is_success() {
        bail!("GET {url} through the proxy: {}", first.status());
    }
    let mut latencies = Vec::with_capacity(HANDSHAKES);
    let mut errors = 0u64;
    let started = Instant::now();
    for _ in 0..HANDSHAKES {
        let c = client(&ca, Some(proxy.clone()))?;
        let t = Instant::now();
        match c.get(&url).send().await {
            Ok(r) if r.status().is_success() => latencies.push(t.elapsed()),
            _ => errors += 1,
        }
    }
    let wall = started.elapsed();
    let leaves = leaves_minted(target).await;
    let mut r = TargetResult {
        target: "stevedore".to_string(),
        clients: 1,
        requests: HANDSHAKES as u64,
        ok: latencies.len() as u64,
        errors,
        wall_s: wall.as_secs_f64(),
        req_per_s: latencies.len() as f64 / wall.as_secs_f64().max(1e-9),
        peak_rss_kib: sum_kib(&target.pids(), "VmHWM"),
        ..TargetResult::default()
    };
    r.ttfb_p50_ms = percentile_ms(&mut latencies, 50.0);
    r.ttfb_p99_ms = percentile_ms(&mut latencies, 99.0);
    r.notes.push(format!(
        "CONNECT + TLS handshake + GET /v2/: p50 {:.2} ms, p99 {:.2} ms; leaf certificates minted for the host: {}",
        r.ttfb_p50_ms.unwrap_or(0.0),
        r.ttfb_p99_ms.unwrap_or(0.0),
        leaves.map_or_else(|| "?".to_owned(), |n| n.to_string())
    ));
    Ok(r)
}

/// `stevedore_tls_leaves_total` from the target's metrics listener.
async fn leaves_minted(target: &Target) -> Option<u64> {
    target.metric("stevedore_tls_leaves_total").await
}
