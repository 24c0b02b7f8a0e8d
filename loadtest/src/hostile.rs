//! Memory and throughput under many and hostile clients (stevedore only):
//!
//! - `rss-1000`: 1,000 concurrent streams of the warm blob for a fixed time; peak RSS.
//! - `abuse-soak`: normal pullers alone, then the same pullers while thousands of idle
//!   connections, request heads sent a byte a second, and blob requests that are never read
//!   hold on to stevedore; their throughput side by side, and stevedore's memory.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::client::{Verify, download, new_client};
use crate::procs::{CpuWatch, RssSampler, sum_kib};
use crate::raw::{Crowd, Hostile, source, spawn_crowd};
use crate::scenarios::{Name, Params, ScenarioResult, TargetResult};
use crate::targets::{Kind, Target, World};

/// Source-address slots: pullers and crowds never share an address.
const PULLER_SLOTS: usize = 0;
const IDLE_SLOTS: usize = 100_000;
const SLOW_SLOTS: usize = 200_000;
const NEVER_READ_SLOTS: usize = 300_000;

/// Starts stevedore and warms the blob.
async fn warm_target(world: &World) -> Result<Target> {
    let target = Target::start(world, Kind::Stevedore).await?;
    let c = new_client()?;
    let url = target.blob_url(&world.image.blob_digest);
    let d = download(
        &c,
        &url,
        &world.image.blob_digest,
        world.image.blob_bytes,
        Duration::from_secs(600),
        Verify::Digest,
    )
    .await;
    if let Some(e) = d.error {
        target.stop().await;
        bail!("warm-up GET {url}: {e}");
    }
    Ok(target)
}

fn reset_peak(pids: &[u32]) {
    for pid in pids {
        let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    }
}

/// `clients` pullers (source addresses spread `per_source` to an address) read the blob over
/// and over until `duration` is up; bytes received in all, and full downloads completed.
async fn pull_for(
    url: &str,
    clients: usize,
    per_source: usize,
    first_slot: usize,
    duration: Duration,
    verify: Verify,
) -> Result<(u64, u64, Vec<String>)> {
    let bytes = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for i in 0..clients {
        let client = reqwest::Client::builder()
            .http1_only()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(1)
            .local_address(source(first_slot + i, per_source))
            .build()
            .context("build puller")?;
        let (url, bytes) = (url.to_string(), bytes.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            let mut error = None;
            while Instant::now() < deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                let outcome = tokio::time::timeout(left, async {
                    let mut resp = client.get(&url).send().await?;
                    let mut hasher = (verify == Verify::Digest).then(sha2_new);
                    while let Some(chunk) = resp.chunk().await? {
                        bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        if let Some(h) = hasher.as_mut() {
                            sha2::Digest::update(h, &chunk);
                        }
                    }
                    Ok::<_, reqwest::Error>(())
                })
                .await;
                match outcome {
                    Ok(Ok(())) => done += 1,
                    Ok(Err(e)) => {
                        error.get_or_insert_with(|| format!("{e:#}"));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    // Cut off by the end of the phase: expected.
                    Err(_) => break,
                }
            }
            (done, error)
        }));
    }
    let mut done = 0;
    let mut errors = Vec::new();
    for t in tasks {
        let (d, e) = t.await.context("puller task")?;
        done += d;
        if let Some(e) = e
            && errors.len() < 5
        {
            errors.push(e);
        }
    }
    Ok((bytes.load(Ordering::Relaxed), done, errors))
}

fn sha2_new() -> sha2::Sha256 {
    <sha2::Sha256 as sha2::Digest>::new()
}

fn result(target: &str, clients: usize, bytes: u64, done: u64, wall: Duration) -> TargetResult {
    let secs = wall.as_secs_f64().max(1e-9);
    TargetResult {
        target: target.to_string(),
        clients,
        requests: done,
        ok: done,
        bytes,
        wall_s: secs,
        mib_per_s: bytes as f64 / (1024.0 * 1024.0) / secs,
        req_per_s: done as f64 / secs,
        ..TargetResult::default()
    }
}

/// `rss-1000`.
pub async fn rss_1000(world: &World, params: &Params) -> Result<ScenarioResult> {
    let target = warm_target(world).await?;
    let outcome = async {
        let url = target.blob_url(&world.image.blob_digest);
        let pids = target.pids();
        reset_peak(&pids);
        let sampler = RssSampler::start(pids.clone());
        let cpu = CpuWatch::start(pids.clone(), vec![world.origin_pid]);
        let clients = 1000;
        eprintln!(
            "loadtest: stevedore: {clients} concurrent streams of the warm blob for {:?}",
            params.soak_duration
        );
        let started = Instant::now();
        // 100 streams per source address: a thousand clients from ten hosts.
        let (bytes, done, errors) = pull_for(
            &url,
            clients,
            100,
            PULLER_SLOTS,
            params.soak_duration,
            Verify::Length,
        )
        .await?;
        let wall = started.elapsed();
        let mut r = result("stevedore", clients, bytes, done, wall);
        r.cpu = cpu.finish();
        r.sampled_rss_max_kib = sampler.finish();
        r.peak_rss_kib = sum_kib(&pids, "VmHWM");
        r.error_samples = errors;
        r.notes.push(format!(
            "peak RSS {:.1} MiB with {clients} concurrent streams (target < 128 MiB)",
            r.peak_rss_kib as f64 / 1024.0
        ));
        Ok::<_, anyhow::Error>(r)
    }
    .await;
    target.stop().await;
    let r = outcome?;
    Ok(ScenarioResult {
        name: Name::Rss1000.as_str().to_string(),
        description: format!(
            "1,000 concurrent streams of the warm blob from 10 client addresses for {:?}; peak RSS",
            params.soak_duration
        ),
        clients: 1000,
        duration_s: Some(params.soak_duration.as_secs_f64()),
        results: vec![r],
        ratios: BTreeMap::new(),
    })
}

/// Sizes of the hostile crowds in `abuse-soak`.
const IDLE: usize = 2000;
const SLOW_HEADS: usize = 500;
const NEVER_READ: usize = 500;
/// Normal pullers in both phases.
const PULLERS: usize = 4;

/// `abuse-soak`.
pub async fn abuse_soak(world: &World, params: &Params) -> Result<ScenarioResult> {
    let target = warm_target(world).await?;
    let outcome = soak_on(&target, world, params).await;
    target.stop().await;
    let (calm, abused) = outcome?;
    let mut s = ScenarioResult {
        name: Name::AbuseSoak.as_str().to_string(),
        description: format!(
            "{PULLERS} pullers of the warm blob for {:?} alone, then with {IDLE} idle \
             connections, {SLOW_HEADS} request heads sent a byte a second and {NEVER_READ} \
             blob requests never read",
            params.soak_duration
        ),
        clients: PULLERS,
        duration_s: Some(params.soak_duration.as_secs_f64()),
        results: vec![calm.clone(), abused.clone()],
        ratios: BTreeMap::new(),
    };
    let ratio = (calm.mib_per_s > 0.0).then(|| abused.mib_per_s / calm.mib_per_s);
    s.ratios
        .insert("throughput under abuse / undisturbed".into(), ratio);
    Ok(s)
}

async fn soak_on(
    target: &Target,
    world: &World,
    params: &Params,
) -> Result<(TargetResult, TargetResult)> {
    let url = target.blob_url(&world.image.blob_digest);
    let pids = target.pids();
    let d = params.soak_duration;

    eprintln!("loadtest: stevedore: {PULLERS} pullers, undisturbed, for {d:?}");
    reset_peak(&pids);
    let sampler = RssSampler::start(pids.clone());
    let cpu = CpuWatch::start(pids.clone(), vec![world.origin_pid]);
    let started = Instant::now();
    let (bytes, done, errors) = pull_for(&url, PULLERS, 1, PULLER_SLOTS, d, params.verify).await?;
    let mut calm = result(
        "stevedore undisturbed",
        PULLERS,
        bytes,
        done,
        started.elapsed(),
    );
    calm.cpu = cpu.finish();
    calm.sampled_rss_max_kib = sampler.finish();
    calm.peak_rss_kib = sum_kib(&pids, "VmHWM");
    calm.error_samples = errors;

    eprintln!(
        "loadtest: stevedore: {IDLE} idle, {SLOW_HEADS} slow-head and {NEVER_READ} never-reading clients join"
    );
    reset_peak(&pids);
    let stop = Arc::new(AtomicBool::new(false));
    let blob_path = target.blob_path(&world.image.blob_digest);
    let addr = target.addr();
    let crowds = [
        (Hostile::Idle, IDLE, IDLE_SLOTS, "idle"),
        (Hostile::SlowHead, SLOW_HEADS, SLOW_SLOTS, "slow-head"),
        (
            Hostile::NeverRead,
            NEVER_READ,
            NEVER_READ_SLOTS,
            "never-read",
        ),
    ];
    let mut counters = Vec::new();
    let mut tasks = Vec::new();
    for (kind, n, slot, label) in crowds {
        let crowd = Arc::new(Crowd::default());
        tasks.extend(spawn_crowd(
            kind,
            n,
            slot,
            addr,
            blob_path.clone(),
            crowd.clone(),
            stop.clone(),
        ));
        counters.push((label, crowd));
    }
    // Let them all connect (and the never-readers fill their sockets).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sampler = RssSampler::start(pids.clone());
    let cpu = CpuWatch::start(pids.clone(), vec![world.origin_pid]);
    let started = Instant::now();
    let pulls = pull_for(&url, PULLERS, 1, PULLER_SLOTS, d, params.verify);
    let probe = async {
        tokio::time::sleep(d / 2).await;
        (
            target.metric("stevedore_connections").await,
            target.metric("stevedore_stream_buffer").await,
        )
    };
    let (pulled, (connections, buffer)) = tokio::join!(pulls, probe);
    let (bytes, done, errors) = pulled?;
    let mut abused = result(
        "stevedore under abuse",
        PULLERS,
        bytes,
        done,
        started.elapsed(),
    );
    abused.notes.push(format!(
        "halfway: {} connections open at stevedore, {} KiB of response chunks in flight",
        connections.map_or_else(|| "?".to_owned(), |c| c.to_string()),
        buffer.map_or_else(|| "?".to_owned(), |b| (b / 1024).to_string())
    ));
    abused.cpu = cpu.finish();
    abused.sampled_rss_max_kib = sampler.finish();
    abused.peak_rss_kib = sum_kib(&pids, "VmHWM");
    abused.error_samples = errors;
    stop.store(true, Ordering::Relaxed);
    for (label, c) in counters {
        abused.notes.push(format!(
            "{label} clients: {} connections, {} closed by stevedore, {} refused",
            c.connects.load(Ordering::Relaxed),
            c.closed_by_server.load(Ordering::Relaxed),
            c.failed.load(Ordering::Relaxed)
        ));
    }
    for t in tasks {
        t.abort();
    }
    abused.notes.push(format!(
        "peak RSS {:.1} MiB under abuse",
        abused.peak_rss_kib as f64 / 1024.0
    ));
    Ok((calm, abused))
}
