//! Pullers: full blob downloads that hash the body as it arrives, and a
//! keep-alive HEAD loop. Every request has a timeout; every loop is bounded
//! in count and time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

/// One HTTP/1.1 client with its own connection pool (one puller).
pub fn new_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1)
        .build()
        .context("build HTTP client")
}

/// The outcome of one download.
#[derive(Debug, Clone)]
pub struct Download {
    pub bytes: u64,
    /// From sending the request to the first body byte.
    pub ttfb: Option<Duration>,
    /// From sending the request to the verified end of the body.
    pub total: Duration,
    pub error: Option<String>,
}

/// How a puller checks what it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Length and sha256 digest (the default, as a real puller does).
    Digest,
    /// Length only (`--no-verify`: shows what the hashing costs the client).
    Length,
}

/// GETs `url`, reads the body as a stream while hashing it (unless
/// `verify` is `Length`), and checks the length and the digest. Gives up
/// after `timeout`.
pub async fn download(
    client: &reqwest::Client,
    url: &str,
    digest: &str,
    size: u64,
    timeout: Duration,
    verify: Verify,
) -> Download {
    let start = Instant::now();
    let mut bytes = 0u64;
    let mut ttfb = None;
    let result = tokio::time::timeout(timeout, async {
        let mut resp = client.get(url).send().await.context("send GET")?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            bail!(
                "status {status}: {}",
                body.chars().take(200).collect::<String>()
            );
        }
        let mut hasher = Sha256::new();
        while let Some(chunk) = resp.chunk().await.context("read body")? {
            if ttfb.is_none() {
                ttfb = Some(start.elapsed());
            }
            bytes += chunk.len() as u64;
            if verify == Verify::Digest {
                hasher.update(&chunk);
            }
        }
        if bytes != size {
            bail!("body has {bytes} bytes, want {size}");
        }
        if verify == Verify::Length {
            return Ok(());
        }
        let got = format!("sha256:{}", hex::encode(hasher.finalize()));
        if got != digest {
            bail!("body digest {got}, want {digest}");
        }
        Ok(())
    })
    .await;
    let error = match result {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("{e:#}")),
        Err(_) => Some(format!("timed out after {timeout:?}")),
    };
    Download {
        bytes,
        ttfb,
        total: start.elapsed(),
        error,
    }
}

/// `clients` pullers, each with its own connection, start together (after a
/// barrier) and download the blob once each.
/// Returns the downloads and the wall time from the common start to the
/// last completion.
pub async fn concurrent_downloads(
    clients: usize,
    url: &str,
    digest: &str,
    size: u64,
    timeout: Duration,
    verify: Verify,
) -> Result<(Vec<Download>, Duration)> {
    let urls = vec![url.to_string(); clients];
    downloads_from(&urls, digest, size, timeout, verify).await
}

/// One puller per URL, as [`concurrent_downloads`] (for clients spread over targets).
pub async fn downloads_from(
    urls: &[String],
    digest: &str,
    size: u64,
    timeout: Duration,
    verify: Verify,
) -> Result<(Vec<Download>, Duration)> {
    let barrier = Arc::new(tokio::sync::Barrier::new(urls.len() + 1));
    let mut tasks = Vec::with_capacity(urls.len());
    for url in urls {
        let client = new_client()?;
        let (barrier, url, digest) = (barrier.clone(), url.clone(), digest.to_string());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            download(&client, &url, &digest, size, timeout, verify).await
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut results = Vec::with_capacity(urls.len());
    for task in tasks {
        results.push(task.await.context("download task panicked")?);
    }
    Ok((results, start.elapsed()))
}

/// Result of a HEAD loop.
#[derive(Debug, Clone, Default)]
pub struct HeadRun {
    pub ok: u64,
    pub errors: u64,
    pub error_samples: Vec<String>,
    pub latencies: Vec<Duration>,
    pub wall: Duration,
}

/// Upper bound on requests per connection in a HEAD loop (besides time).
const MAX_HEADS_PER_CONNECTION: u64 = 10_000_000;

/// `connections` keep-alive clients HEAD `url` (with one `Accept` line per
/// entry of `accept`) back to back for `duration`; each makes at least one
/// request.
pub async fn head_loop(
    connections: usize,
    url: &str,
    accept: &[&str],
    duration: Duration,
) -> Result<HeadRun> {
    let accept: Vec<String> = accept.iter().map(|a| a.to_string()).collect();
    let barrier = Arc::new(tokio::sync::Barrier::new(connections + 1));
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let client = new_client()?;
        let (barrier, url, accept) = (barrier.clone(), url.to_string(), accept.clone());
        tasks.push(tokio::spawn(async move {
            let mut run = HeadRun::default();
            barrier.wait().await;
            let deadline = Instant::now() + duration;
            for _ in 0..MAX_HEADS_PER_CONNECTION {
                let start = Instant::now();
                let mut req = client.head(&url);
                for a in &accept {
                    req = req.header(reqwest::header::ACCEPT, a);
                }
                let outcome = tokio::time::timeout(Duration::from_secs(10), req.send()).await;
                let error = match outcome {
                    Ok(Ok(resp)) if resp.status().as_u16() == 200 => None,
                    Ok(Ok(resp)) => Some(format!("status {}", resp.status())),
                    Ok(Err(e)) => Some(format!("{e:#}")),
                    Err(_) => Some("timed out after 10s".to_string()),
                };
                match error {
                    None => {
                        run.ok += 1;
                        run.latencies.push(start.elapsed());
                    }
                    Some(e) => {
                        run.errors += 1;
                        if run.error_samples.len() < 3 {
                            run.error_samples.push(e);
                        }
                        // Do not spin on a dead server.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                if Instant::now() >= deadline {
                    break;
                }
            }
            run
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut total = HeadRun::default();
    for task in tasks {
        let run = task.await.context("HEAD task panicked")?;
        total.ok += run.ok;
        total.errors += run.errors;
        for e in run.error_samples {
            if total.error_samples.len() < 5 {
                total.error_samples.push(e);
            }
        }
        total.latencies.extend(run.latencies);
    }
    total.wall = start.elapsed();
    Ok(total)
}

/// Nearest-rank percentile (`p` in 0..=100) in milliseconds.
pub fn percentile_ms(values: &mut [Duration], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    let idx = rank.clamp(1, values.len()) - 1;
    Some(values[idx].as_secs_f64() * 1000.0)
}
