//! `small-answers`: the small-answer path, manifest GET by digest and tag HEAD, on 32
//! keep-alive connections, side by side with nginx serving the manifest as a static file of
//! the same size. The client is a light raw HTTP/1.1 loop, so that on a small machine the
//! numbers say more about the servers than about the client.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::client::percentile_ms;
use crate::procs::{CpuWatch, RssSampler, sum_kib};
use crate::raw::{LoopRun, request, request_loop};
use crate::scenarios::{MANIFEST_ACCEPT, Name, Params, ScenarioResult, TargetResult};
use crate::setup::TAG;
use crate::targets::{Kind, Target, World};

const CONNECTIONS: usize = 32;

pub async fn small_answers(world: &World, params: &Params) -> Result<ScenarioResult> {
    let mut results = Vec::new();
    for kind in [Kind::Stevedore, Kind::Nginx] {
        match measure(world, kind, params).await {
            Ok(mut rs) => results.append(&mut rs),
            Err(e) => results.push(TargetResult::failed(
                kind.name(),
                "small-answers",
                CONNECTIONS,
                &e,
            )),
        }
    }
    let mut ratios = BTreeMap::new();
    for path in ["GET manifest by digest", "HEAD tag"] {
        let rate = |target: &str| {
            results
                .iter()
                .find(|r| r.target == format!("{target}: {path}") && r.errors == 0)
                .map(|r| r.req_per_s)
        };
        let ratio = match (rate("stevedore"), rate("nginx")) {
            (Some(s), Some(n)) if n > 0.0 => Some(s / n),
            _ => None,
        };
        ratios.insert(format!("stevedore/nginx requests/s, {path}"), ratio);
    }
    Ok(ScenarioResult {
        name: Name::SmallAnswers.as_str().to_string(),
        description: format!(
            "manifest GET by digest and tag HEAD, {CONNECTIONS} keep-alive connections for \
             {:?} each, next to nginx serving the manifest as a static file",
            params.head_duration
        ),
        clients: CONNECTIONS,
        duration_s: Some(params.head_duration.as_secs_f64()),
        results,
        ratios,
    })
}

async fn measure(world: &World, kind: Kind, params: &Params) -> Result<Vec<TargetResult>> {
    let target = Target::start(world, kind).await?;
    let outcome = measure_on(&target, world, params).await;
    target.stop().await;
    outcome
}

async fn measure_on(target: &Target, world: &World, params: &Params) -> Result<Vec<TargetResult>> {
    let accept = MANIFEST_ACCEPT.join(", ");
    let headers = [("Accept", accept.as_str())];
    let by_digest = request(
        "GET",
        &target.manifest_path(&world.image.manifest_digest),
        &headers,
    );
    let tag_head = request("HEAD", &target.manifest_path(TAG), &headers);
    let tag_get = request("GET", &target.manifest_path(TAG), &headers);
    // Warm: the tag (GET), the digest, a HEAD.
    for (req, head) in [(&tag_get, false), (&by_digest, false), (&tag_head, true)] {
        let warm = request_loop(
            1,
            target.addr(),
            req.clone(),
            head,
            Duration::from_millis(1),
        )
        .await?;
        if warm.ok == 0 {
            bail!("{} warm-up failed: {:?}", target.name(), warm.error_samples);
        }
    }
    let mut out = Vec::new();
    for (label, req, head) in [
        ("GET manifest by digest", by_digest, false),
        ("HEAD tag", tag_head, true),
    ] {
        eprintln!(
            "loadtest: {}: {label}, {CONNECTIONS} connections for {:?}",
            target.name(),
            params.head_duration
        );
        let pids = target.pids();
        let sampler = RssSampler::start(pids.clone());
        let cpu = CpuWatch::start(pids.clone(), vec![world.origin_pid]);
        let upstream_before = target.upstream();
        let run = request_loop(CONNECTIONS, target.addr(), req, head, params.head_duration).await?;
        let mut r = to_result(format!("{}: {label}", target.name()), run);
        r.cpu = cpu.finish();
        r.sampled_rss_max_kib = sampler.finish();
        r.peak_rss_kib = sum_kib(&pids, "VmHWM");
        r.upstream_run = match (target.upstream(), upstream_before) {
            (Some(a), Some(b)) => Some(a.since(&b)),
            _ => None,
        };
        eprintln!(
            "loadtest: {}: {:.0} req/s, {} errors",
            r.target, r.req_per_s, r.errors
        );
        out.push(r);
    }
    Ok(out)
}

fn to_result(target: String, mut run: LoopRun) -> TargetResult {
    let secs = run.wall.as_secs_f64().max(1e-9);
    TargetResult {
        target,
        clients: CONNECTIONS,
        requests: run.ok + run.errors,
        ok: run.ok,
        errors: run.errors,
        error_samples: run.error_samples.clone(),
        wall_s: secs,
        req_per_s: run.ok as f64 / secs,
        ttfb_p50_ms: percentile_ms(&mut run.latencies, 50.0),
        ttfb_p99_ms: percentile_ms(&mut run.latencies, 99.0),
        ..TargetResult::default()
    }
}
