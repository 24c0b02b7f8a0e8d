//! `cold-32-slow-link`: the case caches exist for. The origin sits behind a shared link of
//! 100 MiB/s (a shaping proxy between every target and the origin: one token bucket for all
//! its connections); 32 clients start at once on an uncached blob. Reported next to the time
//! one transfer of the blob takes over that link, for stevedore and for distribution's proxy
//! mode on the same link.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::client::{Verify, download, new_client};
use crate::scenarios::{Name, Params, ScenarioResult, TargetResult, measure_downloads};
use crate::setup::REPO;
use crate::targets::{Kind, World};

/// The link's capacity.
pub const LINK_MIB_PER_S: u64 = 100;
const MIB: f64 = 1024.0 * 1024.0;

/// A TCP proxy to the origin whose origin-to-client bytes, all connections together, pass
/// through one token bucket.
struct Shaper {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// How long to wait before `n` bytes may pass (0: they pass now).
    fn take(&mut self, n: usize) -> Duration {
        let now = Instant::now();
        // At most 50 ms worth of burst.
        let cap = self.rate * 0.05;
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(cap);
        self.last = now;
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

impl Shaper {
    async fn start(origin: SocketAddr, bytes_per_s: f64) -> Result<Shaper> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let bucket = Arc::new(Mutex::new(Bucket {
            rate: bytes_per_s,
            tokens: 0.0,
            last: Instant::now(),
        }));
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let bucket = bucket.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(origin).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut cr, &mut sw).await;
                        let _ = sw.shutdown().await;
                    });
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let wait = bucket
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .take(n);
                        if !wait.is_zero() {
                            tokio::time::sleep(wait).await;
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = cw.shutdown().await;
                    up.abort();
                });
            }
        });
        Ok(Shaper { addr, task })
    }
}

impl Drop for Shaper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn cold_32_slow_link(world: &World, params: &Params) -> Result<ScenarioResult> {
    let image = &world.image;
    let link = Shaper::start(world.origin, LINK_MIB_PER_S as f64 * MIB).await?;
    let mib = image.blob_bytes as f64 / MIB;
    let timeout = params
        .download_timeout
        .unwrap_or_else(|| Duration::from_secs_f64(120.0 + 32.0 * mib / LINK_MIB_PER_S as f64));

    // One transfer over the link, straight from the origin.
    let url = format!("http://{}/v2/{REPO}/blobs/{}", link.addr, image.blob_digest);
    eprintln!("loadtest: one transfer over a {LINK_MIB_PER_S} MiB/s link: {url}");
    let one = download(
        &new_client()?,
        &url,
        &image.blob_digest,
        image.blob_bytes,
        timeout,
        Verify::Digest,
    )
    .await;
    if let Some(e) = one.error {
        bail!("one transfer over the link: {e}");
    }
    let one_s = one.total.as_secs_f64();
    let mut results = vec![TargetResult {
        target: "one transfer over the link".to_string(),
        clients: 1,
        requests: 1,
        ok: 1,
        bytes: image.blob_bytes,
        wall_s: one_s,
        mib_per_s: mib / one_s,
        ..TargetResult::default()
    }];

    // Every target reaches the origin through the link.
    let behind = World::new(
        world.dir.join("slow-link"),
        link.addr,
        world.origin_pid,
        image.clone(),
        world.bins.clone(),
    );
    std::fs::create_dir_all(world.dir.join("slow-link")).context("slow-link dir")?;
    for kind in [Kind::Stevedore, Kind::Distribution] {
        let r = match measure_downloads(&behind, kind, 32, false, timeout, params.verify).await {
            Ok(r) => r,
            Err(e) => TargetResult::failed(kind.name(), "cold-32-slow-link", 32, &e),
        };
        results.push(r);
    }
    let mut ratios = std::collections::BTreeMap::new();
    for r in results.iter().skip(1) {
        let value = (r.failure.is_none() && r.errors == 0).then(|| r.wall_s / one_s);
        ratios.insert(format!("{} all 32 done / one transfer", r.target), value);
    }
    Ok(ScenarioResult {
        name: Name::Cold32SlowLink.as_str().to_string(),
        description: format!(
            "32 clients at once on an uncached blob, the origin behind one {LINK_MIB_PER_S} MiB/s \
             link shared by all connections; wall time of all 32 against one transfer over the link"
        ),
        clients: 32,
        duration_s: None,
        results,
        ratios,
    })
}
