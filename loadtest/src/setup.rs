//! The test image: a blob of incompressible pseudo-random bytes written to a
//! file while it is hashed, and an origin registry (distribution) it is
//! pushed to through the distribution API.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::procs::{Proc, free_port, loopback};

pub const REPO: &str = "loadtest/blob";
pub const TAG: &str = "latest";
const MIB: u64 = 1024 * 1024;
/// Size of one PATCH of the chunked upload.
const UPLOAD_CHUNK: u64 = 64 * MIB;

/// The pushed image.
#[derive(Debug, Clone)]
pub struct Image {
    pub blob_path: PathBuf,
    pub blob_digest: String,
    pub blob_bytes: u64,
    pub manifest_digest: String,
    /// The manifest's bytes, for nginx to serve as a static file of the same size.
    pub manifest_bytes: Vec<u8>,
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// splitmix64: fast, and its output does not compress.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Writes `mib` MiB of pseudo-random bytes to `path`, 1 MiB at a time, and
/// returns their digest.
pub fn write_blob(path: &Path, mib: u64, seed: u64) -> Result<String> {
    let file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut out = std::io::BufWriter::with_capacity(MIB as usize, file);
    let mut rng = SplitMix64(seed);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; MIB as usize];
    for _ in 0..mib {
        for word in buf.chunks_exact_mut(8) {
            word.copy_from_slice(&rng.next().to_le_bytes());
        }
        hasher.update(&buf);
        out.write_all(&buf)
            .with_context(|| format!("write {}", path.display()))?;
    }
    out.flush()
        .with_context(|| format!("write {}", path.display()))?;
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

/// The YAML config of a distribution registry on `addr` storing under
/// `storage`; `proxy_remote` turns on pull-through proxy mode.
pub fn registry_config(addr: SocketAddr, storage: &Path, proxy_remote: Option<&str>) -> String {
    let proxy = match proxy_remote {
        Some(url) => format!("proxy:\n  remoteurl: {url}\n"),
        None => String::new(),
    };
    format!(
        "version: 0.1
log:
  level: warn
  formatter: text
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {addr}
  secret: loadtest-secret
health:
  storagedriver:
    enabled: false
{proxy}",
        storage = storage.display()
    )
}

/// Starts `docker-registry serve` in `dir` (config, storage and log there)
/// on a free loopback port, retrying with another port if it cannot bind.
pub async fn start_registry(
    bin: &Path,
    name: &str,
    dir: &Path,
    proxy_remote: Option<&str>,
) -> Result<(Proc, SocketAddr)> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut last = None;
    for _ in 0..5 {
        let addr = loopback(free_port()?);
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            registry_config(addr, &dir.join("storage"), proxy_remote),
        )
        .with_context(|| format!("write {}", config.display()))?;
        let mut cmd = tokio::process::Command::new(bin);
        cmd.arg("serve").arg(&config);
        let mut proc = Proc::spawn(name, cmd, &dir.join("registry.log")).with_context(|| {
            format!(
                "{} (install with `apt-get install -y docker-registry`)",
                bin.display()
            )
        })?;
        match proc.wait_ready(addr, Duration::from_secs(20)).await {
            Ok(()) => return Ok((proc, addr)),
            Err(e) => {
                proc.stop().await;
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("{name} did not start")))
}

/// Resolves a `Location` header against the registry's base URL.
fn location(base: &str, resp: &reqwest::Response) -> Result<String> {
    let loc = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .context("upload response has no Location")?
        .to_str()
        .context("Location is not text")?;
    Ok(
        if loc.starts_with("http://") || loc.starts_with("https://") {
            loc.to_string()
        } else {
            format!("{base}{loc}")
        },
    )
}

fn with_digest(url: &str, digest: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}digest={digest}")
}

async fn expect_status(
    resp: reqwest::Response,
    want: u16,
    what: &str,
) -> Result<reqwest::Response> {
    if resp.status().as_u16() == want {
        return Ok(resp);
    }
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    bail!("{what}: expected {want}, got {status}: {body}")
}

/// Pushes a small blob in one PUT (POST, then PUT ?digest= with the body).
async fn push_small_blob(client: &reqwest::Client, base: &str, bytes: Vec<u8>) -> Result<String> {
    let digest = sha256_digest(&bytes);
    let resp = client
        .post(format!("{base}/v2/{REPO}/blobs/uploads/"))
        .send()
        .await
        .context("start config upload")?;
    let resp = expect_status(resp, 202, "POST blob upload").await?;
    let url = with_digest(&location(base, &resp)?, &digest);
    let resp = client
        .put(url)
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .body(bytes)
        .send()
        .await
        .context("PUT config blob")?;
    expect_status(resp, 201, "PUT config blob").await?;
    Ok(digest)
}

/// Pushes the blob file in PATCH chunks read from disk, then PUT ?digest=.
async fn push_blob_file(
    client: &reqwest::Client,
    base: &str,
    path: &Path,
    digest: &str,
) -> Result<u64> {
    let size = tokio::fs::metadata(path)
        .await
        .with_context(|| format!("stat {}", path.display()))?
        .len();
    let resp = client
        .post(format!("{base}/v2/{REPO}/blobs/uploads/"))
        .send()
        .await
        .context("start layer upload")?;
    let resp = expect_status(resp, 202, "POST blob upload").await?;
    let mut url = location(base, &resp)?;
    let mut offset = 0;
    while offset < size {
        let len = UPLOAD_CHUNK.min(size - offset);
        let mut file = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("open {}", path.display()))?;
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .with_context(|| format!("seek {}", path.display()))?;
        let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), 256 * 1024);
        let resp = client
            .patch(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, len)
            .header("Content-Range", format!("{}-{}", offset, offset + len - 1))
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .with_context(|| format!("PATCH layer chunk at {offset}"))?;
        let resp = expect_status(resp, 202, "PATCH layer chunk").await?;
        url = location(base, &resp)?;
        offset += len;
    }
    let resp = client
        .put(with_digest(&url, digest))
        .header(reqwest::header::CONTENT_LENGTH, 0)
        .send()
        .await
        .context("finish layer upload")?;
    expect_status(resp, 201, "PUT layer ?digest=").await?;
    Ok(size)
}

/// Generates the blob (`mib` MiB) in `dir` and pushes an image with it as
/// its single layer to the registry at `origin`.
pub async fn make_image(dir: &Path, origin: SocketAddr, mib: u64, seed: u64) -> Result<Image> {
    let blob_path = dir.join("blob.bin");
    let started = Instant::now();
    let p = blob_path.clone();
    let blob_digest = tokio::task::spawn_blocking(move || write_blob(&p, mib, seed))
        .await
        .context("blob writer panicked")??;
    eprintln!(
        "loadtest: wrote {mib} MiB blob {blob_digest} in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let base = format!("http://{origin}");
    let client = reqwest::Client::builder()
        .http1_only()
        .timeout(Duration::from_secs(600))
        .build()
        .context("build push client")?;
    let started = Instant::now();
    let blob_bytes = push_blob_file(&client, &base, &blob_path, &blob_digest).await?;
    ensure!(blob_bytes == mib * MIB, "blob file has {blob_bytes} bytes");

    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [blob_digest]},
    });
    let config_bytes = serde_json::to_vec(&config).context("encode image config")?;
    let config_size = config_bytes.len();
    let config_digest = push_small_blob(&client, &base, config_bytes).await?;

    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": blob_digest,
            "size": blob_bytes,
        }],
    });
    let manifest_bytes = serde_json::to_vec(&manifest).context("encode manifest")?;
    let manifest_digest = sha256_digest(&manifest_bytes);
    let resp = client
        .put(format!("{base}/v2/{REPO}/manifests/{TAG}"))
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/vnd.oci.image.manifest.v1+json",
        )
        .body(manifest_bytes.clone())
        .send()
        .await
        .context("PUT manifest")?;
    expect_status(resp, 201, "PUT manifest").await?;
    eprintln!(
        "loadtest: pushed {REPO}:{TAG} ({manifest_digest}) to origin {origin} in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(Image {
        blob_path,
        blob_digest,
        blob_bytes,
        manifest_digest,
        manifest_bytes,
    })
}
