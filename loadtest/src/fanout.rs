//! `cold-fanout-3`: the scale-out deployment under a cold start. Three stevedore replicas
//! that know each other (`[peers]`, a static list) over one shared bucket (`[store] type =
//! "s3"`, one Garage node), 32 clients spread over them round-robin on a blob none of them
//! holds. Reported next to the single-node figure (one stevedore, the same 32 clients), and
//! with the blob GETs the origin saw from all three together.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::client::downloads_from;
use crate::counter::Counter;
use crate::procs::{CpuWatch, Proc, RssSampler, free_port, loopback, sum_kib};
use crate::s3tier::{BUCKET, start_garage};
use crate::scenarios::{Name, Params, ScenarioResult, measure_downloads, summarize};
use crate::setup::REPO;
use crate::targets::{Kind, World};

const CLIENTS: usize = 32;
const REPLICAS: usize = 3;

pub async fn cold_fanout_3(world: &World, params: &Params) -> Result<ScenarioResult> {
    let image = &world.image;
    let timeout = params.download_timeout.unwrap_or(Duration::from_secs(900));
    let single = measure_downloads(
        world,
        Kind::Stevedore,
        CLIENTS,
        false,
        timeout,
        params.verify,
    )
    .await?;

    let dir = world.dir.join("fanout");
    let garage = start_garage(&dir.join("garage")).await?;
    let counter = Counter::start(world.origin, &image.blob_digest).await?;
    let origin = world.origin.to_string();
    let addrs: Vec<_> = (0..REPLICAS)
        .map(|_| free_port().map(loopback))
        .collect::<Result<_>>()?;
    let peers = addrs
        .iter()
        .map(|a| format!("\"http://{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut procs = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let home = dir.join(format!("replica-{i}"));
        std::fs::create_dir_all(home.join("store"))?;
        let config = format!(
            "[server]\nlisten = \"{addr}\"\n[ca]\ndir = \"{ca}\"\n\
             [registries.\"{origin}\"]\nendpoints = [\"{upstream}\"]\n\
             allow-private-network = true\nproxy = \"none\"\n\
             [limits]\nrequests-per-second = 1000000\nrequest-burst = 1000000\n\
             [peers]\naddresses = [{peers}]\nsecret = \"{secret}\"\nrefresh = \"1s\"\n\
             [store]\npath = \"{store}\"\ntype = \"s3\"\n[store.s3]\nendpoint = \"{s3}\"\n\
             bucket = \"{BUCKET}\"\nregion = \"garage\"\naccess-key-id = \"{key}\"\n\
             secret-access-key = \"{secret_key}\"\n",
            ca = home.join("ca").display(),
            upstream = counter.url(),
            secret = "fanout-peer-secret-0123456789",
            store = home.join("store").display(),
            s3 = garage.s3,
            key = garage.key_id,
            secret_key = garage.secret,
        );
        let path = home.join("stevedore.toml");
        std::fs::write(&path, config)?;
        let mut cmd = tokio::process::Command::new(&world.bins.stevedore);
        cmd.arg("serve")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", &world.bins.stevedore_log);
        let mut proc = Proc::spawn(
            &format!("stevedore replica {i}"),
            cmd,
            &home.join("stevedore.log"),
        )?;
        proc.wait_ready(*addr, Duration::from_secs(20))
            .await
            .with_context(|| format!("replica {i}"))?;
        procs.push(proc);
    }
    // Long enough for every replica to have found the others (refresh = 1s).
    tokio::time::sleep(Duration::from_secs(3)).await;

    let pids: Vec<u32> = procs.iter().flat_map(Proc::pids).collect();
    eprintln!("loadtest: {REPLICAS} replicas: {CLIENTS} clients, cold, round-robin");
    let sampler = RssSampler::start(pids.clone());
    let cpu = CpuWatch::start(pids.clone(), vec![world.origin_pid, garage.pid()]);
    let urls: Vec<String> = (0..CLIENTS)
        .map(|i| {
            format!(
                "http://{}/v2/{REPO}/blobs/{}?ns={origin}",
                addrs[i % REPLICAS],
                image.blob_digest
            )
        })
        .collect();
    let (downloads, wall) = downloads_from(
        &urls,
        &image.blob_digest,
        image.blob_bytes,
        timeout,
        params.verify,
    )
    .await?;
    let cpu = cpu.finish();
    let mut r = summarize("3 replicas (peers + bucket)", CLIENTS, &downloads, wall);
    r.sampled_rss_max_kib = sampler.finish();
    r.peak_rss_kib = sum_kib(&pids, "VmHWM");
    r.upstream_warmup = Some(Default::default());
    r.upstream_run = Some(counter.snapshot());
    r.cpu = cpu;
    for mut p in procs {
        if let Some(status) = p.exited() {
            r.error_samples.push(format!("{} exited: {status}", p.name));
        }
        p.stop().await;
    }
    drop(garage);
    let _ = std::fs::remove_dir_all(&dir);

    let mut ratios = BTreeMap::new();
    ratios.insert(
        "3 replicas / single node throughput".to_string(),
        (r.errors == 0 && single.mib_per_s > 0.0).then(|| r.mib_per_s / single.mib_per_s),
    );
    Ok(ScenarioResult {
        name: Name::ColdFanout3.as_str().to_string(),
        description: "32 clients spread over three replicas (peers, one shared Garage bucket) \
                      on a cold blob, next to one stevedore with the same 32 clients"
            .to_string(),
        clients: CLIENTS,
        duration_s: None,
        results: vec![single, r],
        ratios,
    })
}
