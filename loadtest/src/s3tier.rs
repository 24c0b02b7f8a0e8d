//! `s3-tier`: a warm blob from a replica whose local disk misses, so it reads the shared
//! bucket (`[store] type = "s3"`), next to a plain GET of the same object from Garage. One
//! Garage node on loopback (`garage` on PATH: `cargo install --locked garage`), one client.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt as _;
use object_store::ObjectStore as _;
use sha2::Digest as _;
use tokio::io::AsyncReadExt as _;

use crate::client::Verify;
use crate::scenarios::{Name, Params, ScenarioResult, TargetResult, measure_downloads};
use crate::targets::{Kind, World};

pub(crate) const BUCKET: &str = "stevedore";
const MIB: f64 = 1024.0 * 1024.0;

pub(crate) struct Garage {
    child: Child,
    pub(crate) s3: String,
    pub(crate) key_id: String,
    pub(crate) secret: String,
}

impl Garage {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn garage(config: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("garage")
        .arg("-c")
        .arg(config)
        .args(args)
        .output()
        .context("run garage (cargo install --locked garage)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("garage {args:?}: {text}");
    }
    Ok(text)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub(crate) async fn start_garage(dir: &Path) -> Result<Garage> {
    std::fs::create_dir_all(dir)?;
    let (rpc, s3, admin) = (free_port()?, free_port()?, free_port()?);
    let config = dir.join("garage.toml");
    std::fs::write(
        &config,
        format!(
            "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"lmdb\"\n\
             replication_factor = 1\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
             rpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\
             [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3}\"\n\
             root_domain = \".s3.garage.localhost\"\n[admin]\napi_bind_addr = \"127.0.0.1:{admin}\"\n",
            d = dir.display(),
            secret = "5e".repeat(32),
        ),
    )?;
    let child = Command::new("garage")
        .arg("-c")
        .arg(&config)
        .arg("server")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("log"))?)
        .spawn()
        .context("start garage (cargo install --locked garage)")?;
    let mut id = None;
    for _ in 0..100 {
        if let Ok(out) = garage(&config, &["node", "id", "-q"]) {
            id = Some(out.trim().to_owned());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = id.context("garage did not start")?;
    garage(
        &config,
        &["layout", "assign", "-z", "dc1", "-c", "10G", &id[..16]],
    )?;
    garage(&config, &["layout", "apply", "--version", "1"])?;
    garage(&config, &["bucket", "create", BUCKET])?;
    let key = garage(&config, &["key", "create", "loadtest"])?;
    let field = |name: &str| {
        key.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .with_context(|| format!("no {name} in: {key}"))
    };
    let (key_id, secret) = (field("Key ID:")?, field("Secret key:")?);
    garage(
        &config,
        &[
            "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", "loadtest",
        ],
    )?;
    Ok(Garage {
        child,
        s3: format!("http://127.0.0.1:{s3}"),
        key_id,
        secret,
    })
}

fn client(g: &Garage) -> Result<object_store::aws::AmazonS3> {
    object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&g.s3)
        .with_bucket_name(BUCKET)
        .with_region("garage")
        .with_allow_http(true)
        .with_access_key_id(&g.key_id)
        .with_secret_access_key(&g.secret)
        .build()
        .context("S3 client")
}

/// One GET of the object from Garage itself, hashed like a puller would.
async fn garage_get(
    s3: &object_store::aws::AmazonS3,
    path: &object_store::path::Path,
    verify: Verify,
) -> Result<(u64, Duration)> {
    let started = Instant::now();
    let mut stream = s3.get(path).await?.into_stream();
    let mut hasher = sha2::Sha256::new();
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        n += chunk.len() as u64;
        if verify == Verify::Digest {
            hasher.update(&chunk);
        }
    }
    Ok((n, started.elapsed()))
}

pub async fn s3_tier(world: &World, params: &Params) -> Result<ScenarioResult> {
    let image = &world.image;
    let g = start_garage(&world.dir.join("garage")).await?;
    let s3 = client(&g)?;
    let hex = image.blob_digest.trim_start_matches("sha256:");
    let path = object_store::path::Path::from(format!("blobs/sha256/{hex}"));
    // The blob in the bucket, as a replica would have put it.
    let mut file = tokio::fs::File::open(&image.blob_path).await?;
    let mut w =
        object_store::WriteMultipart::new_with_chunk_size(s3.put_multipart(&path).await?, 8 << 20);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        w.write(&buf[..n]);
        w.wait_for_capacity(4).await?;
    }
    w.finish().await?;
    // Warm Garage's side, then measure its own GET.
    garage_get(&s3, &path, params.verify).await?;
    // CPU of this phase: Garage as the target, the benchmark (the client) as the harness.
    let cpu = crate::procs::CpuWatch::start(vec![g.pid()], Vec::new());
    let (n, took) = garage_get(&s3, &path, params.verify).await?;
    let cpu = cpu.finish();
    let mib = n as f64 / MIB;
    let mut results = vec![TargetResult {
        target: "garage GET".to_string(),
        clients: 1,
        requests: 1,
        ok: 1,
        bytes: n,
        wall_s: took.as_secs_f64(),
        mib_per_s: mib / took.as_secs_f64(),
        cpu,
        ..TargetResult::default()
    }];
    // A stevedore replica over that bucket with an empty local disk.
    let mut bins = world.bins.clone();
    bins.stevedore_extra_config = Some(format!(
        "[store]\npath = \"{{store}}\"\ntype = \"s3\"\n[store.s3]\nendpoint = \"{}\"\n\
         bucket = \"{BUCKET}\"\nregion = \"garage\"\naccess-key-id = \"{}\"\n\
         secret-access-key = \"{}\"\n[limits]\nrequests-per-second = 1000000\n\
         request-burst = 1000000\n",
        g.s3, g.key_id, g.secret
    ));
    let behind = World::new(
        world.dir.join("s3-tier"),
        world.origin,
        world.origin_pid,
        image.clone(),
        bins,
    );
    std::fs::create_dir_all(world.dir.join("s3-tier"))?;
    let timeout = Duration::from_secs(600);
    let r = measure_downloads(&behind, Kind::Stevedore, 1, false, timeout, params.verify).await?;
    let mut ratios = BTreeMap::new();
    ratios.insert(
        "stevedore (disk misses, bucket hit) / garage GET throughput".to_string(),
        (r.errors == 0 && results[0].mib_per_s > 0.0).then(|| r.mib_per_s / results[0].mib_per_s),
    );
    results.push(r);
    Ok(ScenarioResult {
        name: Name::S3Tier.as_str().to_string(),
        description: "one client reads a blob from a stevedore whose local disk misses and whose \
                      shared bucket (Garage) holds it, next to a GET of the object from Garage"
            .to_string(),
        clients: 1,
        duration_s: None,
        results,
        ratios,
    })
}
