//! `tag-head`: `HEAD` of a manifest by tag from many keep-alive connections, on a warm
//! cache, for stevedore and distribution.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::client::{head_loop, new_client, percentile_ms};
use crate::procs::{CpuWatch, RssSampler, sum_kib};
use crate::scenarios::{MANIFEST_ACCEPT, Name, Params, ScenarioResult, TargetResult, settle};
use crate::setup::TAG;
use crate::targets::{Kind, Target, World};

pub(crate) async fn tag_head(world: &World, params: &Params) -> Result<ScenarioResult> {
    let mut results = Vec::new();
    for kind in [Kind::Stevedore, Kind::Distribution] {
        let r = match measure_heads(world, kind, params).await {
            Ok(r) => r,
            Err(e) => TargetResult::failed(kind.name(), "tag-head", params.head_connections, &e),
        };
        results.push(r);
    }
    Ok(ScenarioResult {
        name: Name::TagHead.as_str().to_string(),
        description: format!(
            "HEAD /v2/<repo>/manifests/{TAG} on a warm cache, {} keep-alive connections for {:?}",
            params.head_connections, params.head_duration
        ),
        clients: params.head_connections,
        duration_s: Some(params.head_duration.as_secs_f64()),
        results,
        ratios: BTreeMap::new(),
    })
}

async fn measure_heads(world: &World, kind: Kind, params: &Params) -> Result<TargetResult> {
    let mut target = Target::start(world, kind).await?;
    let outcome = measure_heads_on(&mut target, world, params).await;
    target.stop().await;
    outcome
}

async fn measure_heads_on(
    target: &mut Target,
    world: &World,
    params: &Params,
) -> Result<TargetResult> {
    let url = target.manifest_url(TAG);
    // Warm: the manifest by tag (GET) and by digest, then one HEAD.
    let started = Instant::now();
    let c = new_client()?;
    for u in [
        url.clone(),
        target.manifest_url(&world.image.manifest_digest),
    ] {
        let mut req = c.get(&u).timeout(Duration::from_secs(30));
        for a in MANIFEST_ACCEPT {
            req = req.header(reqwest::header::ACCEPT, *a);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("warm-up GET {u}"))?;
        let status = resp.status();
        let body = resp.bytes().await.context("warm-up manifest body")?;
        if !status.is_success() {
            bail!(
                "warm-up GET {u}: status {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
    }
    let warm = head_loop(1, &url, MANIFEST_ACCEPT, Duration::from_millis(1)).await?;
    if warm.ok == 0 {
        bail!("warm-up HEAD {url} failed: {:?}", warm.error_samples);
    }
    settle(target).await;
    let warmup_s = started.elapsed().as_secs_f64();

    let upstream_before = target.upstream();
    eprintln!(
        "loadtest: {}: HEAD {url} with {} connections for {:?}",
        target.name(),
        params.head_connections,
        params.head_duration
    );
    let sampler = RssSampler::start(target.pids());
    let cpu = CpuWatch::start(target.pids(), vec![world.origin_pid]);
    let mut run = head_loop(
        params.head_connections,
        &url,
        MANIFEST_ACCEPT,
        params.head_duration,
    )
    .await?;
    let cpu = cpu.finish();
    let sampled = sampler.finish();
    let peak = sum_kib(&target.pids(), "VmHWM");
    let upstream_after = target.upstream();
    let alive = target.check_alive();
    let secs = run.wall.as_secs_f64().max(1e-9);
    let mut error_samples = run.error_samples.clone();
    if let Err(e) = alive {
        error_samples.push(format!("{e:#}"));
    }
    let r = TargetResult {
        target: target.name().to_string(),
        failure: None,
        clients: params.head_connections,
        requests: run.ok + run.errors,
        ok: run.ok,
        errors: run.errors,
        error_samples,
        bytes: 0,
        wall_s: secs,
        mib_per_s: 0.0,
        req_per_s: run.ok as f64 / secs,
        ttfb_p50_ms: percentile_ms(&mut run.latencies, 50.0),
        ttfb_p99_ms: percentile_ms(&mut run.latencies, 99.0),
        done_p50_ms: None,
        done_p99_ms: None,
        done_max_ms: None,
        warmup_s: Some(warmup_s),
        upstream_warmup: upstream_before.clone(),
        upstream_run: match (&upstream_after, &upstream_before) {
            (Some(a), Some(b)) => Some(a.since(b)),
            _ => None,
        },
        peak_rss_kib: peak,
        sampled_rss_max_kib: sampled,
        cpu,
        notes: Vec::new(),
    };
    eprintln!(
        "loadtest: {}: {} HEADs ok, {} errors, {:.0} req/s",
        r.target, r.ok, r.errors, r.req_per_s
    );
    Ok(r)
}
