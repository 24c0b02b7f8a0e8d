//! `stevedore prefetch`: warms the content store through the same pull engine the server
//! uses, so prefetched content is verified, stored and scoped exactly as a pull would be.

use std::collections::HashSet;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use futures_util::{StreamExt as _, stream};

use super::image::ImageRef;
use super::platform::PlatformSpec;
use super::progress::{BlobEnd, Progress};
use super::walk::{self, BlobJob, Plan};
use super::{CliError, Out, human_bytes, load_config, runtime};
use crate::pull::PullService;
use crate::reference::RegistryHost;
use crate::route::RouteKind;
use crate::server::AppState;
use crate::upstream::ProxyEnv;

/// Manifests of this many images are resolved at a time.
const IMAGES_AT_A_TIME: usize = 4;

/// `stevedore prefetch`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "A running server's store may be warmed: its fills in progress are left \
    alone, and both commit verified content by atomic rename (the server's size accounting \
    catches up at its restart).\n\nExit status: 0 when every image was stored, 1 when any \
    failed, 2 for a bad config or image name."
)]
pub struct PrefetchArgs {
    /// Configuration file (TOML); needs a `[store] path`.
    #[arg(long, short, env = "STEVEDORE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Only these platforms of a multi-platform image (repeatable); default: all.
    #[arg(long = "platform", value_name = "OS/ARCH[/VARIANT]")]
    pub platforms: Vec<PlatformSpec>,
    /// Blobs fetched at a time, across all images.
    #[arg(long, short, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    /// Images: `[registry/]repository[:tag][@digest]`, as docker names them.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
}

/// How one blob went.
enum Fetched {
    Upstream(u64),
    Stored(u64),
}

/// Runs `prefetch`.
pub fn run(args: PrefetchArgs) -> Result<ExitCode, CliError> {
    let loaded = load_config(args.config.as_deref())?;
    loaded.store_path("prefetch")?;
    let config = &loaded.config;
    let default_registry = RegistryHost::parse(&config.routing.default_registry)
        .map_err(|e| CliError::setup(format!("routing.default-registry: {e}")))?;
    let images = args
        .images
        .iter()
        .map(|raw| ImageRef::parse(raw, &default_registry))
        .collect::<Result<Vec<_>, _>>()
        .map_err(CliError::setup)?;
    let progress = Progress::new(std::io::stderr().is_terminal());
    runtime()?.block_on(async {
        let state = AppState::engine_only(config, &ProxyEnv::from_process())
            .map_err(|e| CliError::setup(e.to_string()))?;
        Ok(prefetch(
            &state,
            &images,
            &args.platforms,
            usize::from(args.jobs),
            &progress,
        )
        .await)
    })
}

async fn prefetch(
    state: &Arc<AppState>,
    images: &[ImageRef],
    platforms: &[PlatformSpec],
    jobs: usize,
    progress: &Progress,
) -> ExitCode {
    let started = Instant::now();
    let pull = &state.pull;
    let plans = resolve_all(pull, images, platforms, progress).await;

    // One job per (image's repository, digest); each remembers which images need it.
    let mut failed: Vec<Option<String>> = plans.iter().map(|p| p.clone().err()).collect();
    let mut queued = HashSet::new();
    let mut work: Vec<(usize, &BlobJob)> = Vec::new();
    for (i, plan) in plans.iter().enumerate() {
        let Ok(plan) = plan else { continue };
        for job in &plan.blobs {
            let key = (&images[i].registry, &images[i].repository, &job.digest);
            if queued.insert(key) {
                work.push((i, job));
            }
        }
    }
    progress.expect(work.iter().map(|(_, j)| j.size).sum());
    let results: Vec<(usize, &BlobJob, Result<Fetched, String>)> = stream::iter(work)
        .map(|(i, job)| async move { (i, job, fetch_blob(pull, &images[i], job, progress).await) })
        .buffer_unordered(jobs)
        .collect()
        .await;
    progress.finish();

    let (mut fetched, mut stored, mut bytes) = (0usize, 0usize, 0u64);
    for (i, job, result) in &results {
        match result {
            Ok(Fetched::Upstream(n)) => {
                fetched += 1;
                bytes += n;
            }
            Ok(Fetched::Stored(_)) => stored += 1,
            Err(e) => {
                // Every image of that repository needing the digest failed with it.
                for (k, plan) in plans.iter().enumerate() {
                    let same_repo = images[k].registry == images[*i].registry
                        && images[k].repository == images[*i].repository;
                    let needs = plan
                        .as_ref()
                        .is_ok_and(|p| p.blobs.iter().any(|b| b.digest == job.digest));
                    if same_repo && needs && failed[k].is_none() {
                        failed[k] = Some(format!("blob {}: {e}", job.digest));
                    }
                }
            }
        }
    }
    let mut bad = 0usize;
    for (image, why) in images.iter().zip(&failed) {
        if let Some(why) = why {
            bad += 1;
            eprintln!("stevedore: prefetch {image}: {why}");
        }
    }
    let skipped: usize = plans.iter().flatten().map(|p| p.skipped).sum();
    let manifests: usize = plans.iter().flatten().map(|p| p.manifests).sum();
    Out::default().line(format!(
        "prefetched {} of {} images: {manifests} manifests, {} blobs ({fetched} fetched, \
         {stored} already stored{}), {} fetched in {:.1}s",
        images.len() - bad,
        images.len(),
        results.len(),
        if skipped > 0 {
            format!(", {skipped} foreign layers skipped")
        } else {
            String::new()
        },
        human_bytes(bytes),
        started.elapsed().as_secs_f64()
    ));
    if bad > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Resolves every image, several at a time. The first image of each registry goes before
/// the others of that registry: its first request learns the registry's auth challenge, which
/// concurrent first requests would otherwise race for.
async fn resolve_all(
    pull: &PullService,
    images: &[ImageRef],
    platforms: &[PlatformSpec],
    progress: &Progress,
) -> Vec<Result<Plan, String>> {
    let mut registries = HashSet::new();
    let (first, rest): (Vec<usize>, Vec<usize>) =
        (0..images.len()).partition(|&i| registries.insert(&images[i].registry));
    let mut plans: Vec<Option<Result<Plan, String>>> = vec![None; images.len()];
    for batch in [first, rest] {
        let resolved: Vec<(usize, Result<Plan, String>)> = stream::iter(batch)
            .map(|i| async move {
                (
                    i,
                    walk::resolve(pull, &images[i], platforms, progress).await,
                )
            })
            .buffer_unordered(IMAGES_AT_A_TIME)
            .collect()
            .await;
        for (i, plan) in resolved {
            plans[i] = Some(plan);
        }
    }
    plans
        .into_iter()
        .map(|p| p.unwrap_or_else(|| Err("not resolved".to_owned())))
        .collect()
}

/// Fetches one blob through the engine and drains it, which fills the store (the engine
/// verifies the digest before the last byte arrives). Blobs already stored are only
/// confirmed for the repository (a HEAD, without reading them).
async fn fetch_blob(
    pull: &PullService,
    image: &ImageRef,
    job: &BlobJob,
    progress: &Progress,
) -> Result<Fetched, String> {
    let bar = progress.blob(&image.to_string(), &job.digest, job.size);
    let result = fetch_blob_inner(pull, image, job, &bar).await;
    bar.end(match &result {
        Ok(Fetched::Upstream(n)) => BlobEnd::Fetched(*n),
        Ok(Fetched::Stored(n)) => BlobEnd::Stored(*n),
        Err(e) => BlobEnd::Failed(e),
    });
    result
}

async fn fetch_blob_inner(
    pull: &PullService,
    image: &ImageRef,
    job: &BlobJob,
    bar: &super::progress::BlobProgress<'_>,
) -> Result<Fetched, String> {
    let store = pull
        .store()
        .ok_or_else(|| "the engine has no content store".to_owned())?;
    let digest = &job.digest;
    let mut route = image.route(RouteKind::Blob(digest.clone()));
    if store.size(digest).is_some() {
        route.head = true;
        pull.blob(&route, digest, None)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(size) = store.size(digest) {
            return Ok(Fetched::Stored(size));
        }
        route.head = false;
    }
    let reply = pull
        .blob(&route, digest, None)
        .await
        .map_err(|e| e.to_string())?;
    let mut body = reply
        .body
        .ok_or_else(|| "the engine answered without a body".to_owned())?
        .stream;
    let mut received = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| format!("transfer failed after {received} bytes: {e}"))?;
        received += chunk.len() as u64;
        bar.advance(chunk.len() as u64);
    }
    pull.settled(digest).await;
    if store.size(digest).is_none() {
        return Err(format!(
            "fetched and verified, but the store did not keep it (is store.max-size, {}, \
             smaller than what is being prefetched?)",
            human_bytes(store.config().max_size.0)
        ));
    }
    if job.size != 0 && received != job.size {
        return Err(format!(
            "stored, but it has {received} bytes where the manifest says {}",
            job.size
        ));
    }
    Ok(Fetched::Upstream(received))
}
