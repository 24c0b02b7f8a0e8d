//! Replicas that know each other (`[peers]`) over one Garage bucket: each blob digest has one
//! owner (rendezvous hashing), and a replica that misses asks the owner, which fills once for
//! all. 96 clients spread over three replicas pull one cold 1 GiB blob: one upstream GET, right
//! bytes everywhere. The owner killed (`kill -9`) mid-fill: every client completes with the
//! right bytes or a clean error, a retry succeeds, and the bucket holds nothing unverified.
//! The peer path refuses whoever lacks the shared secret.

mod common;

use std::time::Duration;

use common::faults::{Fault, FaultProxy, Rule};
use common::garage::Garage;
use common::images::{self, ImageSpec, PushedImage};
use common::process::Process;
use common::registry::Registry;
use common::stevedore::registry_section;
use common::util::{free_port, sha256_digest};
use futures_util::StreamExt as _;
use object_store::ObjectStore as _;
use sha2::Digest as _;

const SECRET: &str = "replicas-share-this-secret-42";

struct Cluster {
    replicas: Vec<Process>,
    ports: Vec<u16>,
    host: String,
    image: PushedImage,
    faults: FaultProxy,
    garage: Garage,
    _disks: Vec<tempfile::TempDir>,
    _registry: Registry,
}

async fn cluster(seed: u64, layer_bytes: usize, slow: Option<Duration>) -> Cluster {
    let garage = Garage::start(3);
    let registry = Registry::open();
    let image = images::push_image(
        &registry,
        "team/app",
        "v1",
        &ImageSpec::seed(seed).large_layer(layer_bytes),
    )
    .await;
    let faults = FaultProxy::start(&registry.url()).await;
    if let Some(per_chunk) = slow {
        faults.add(Rule::new("/blobs/", Fault::Slow { per_chunk }).method("GET"));
    }
    let host = registry.host();
    let ports: Vec<u16> = (0..3)
        .map(|_| free_port(std::net::Ipv4Addr::LOCALHOST.into()))
        .collect();
    let addresses = ports
        .iter()
        .map(|p| format!("\"http://127.0.0.1:{p}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut replicas = Vec::new();
    let mut disks = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let disk = tempfile::tempdir().expect("tempdir");
        replicas.push(Process::start_at(
            "127.0.0.1",
            *port,
            "",
            &format!(
                "{}[peers]\naddresses = [{addresses}]\nrefresh = \"500ms\"\nsecret = \"{SECRET}\"\n{}",
                garage.store_section(i, disk.path()),
                registry_section(&host, &faults.url(), "")
            ),
            &[],
        ));
        disks.push(disk);
    }
    for r in &replicas {
        assert!(
            r.wait_for_log("replicas=3 found_self=true", Duration::from_secs(20)),
            "replicas did not find each other:\n{}",
            r.log()
        );
    }
    Cluster {
        replicas,
        ports,
        host,
        image,
        faults,
        garage,
        _disks: disks,
        _registry: registry,
    }
}

impl Cluster {
    fn blob_url(&self, replica: usize, digest: &str) -> String {
        format!(
            "http://127.0.0.1:{}/v2/team/app/blobs/{digest}?ns={}",
            self.ports[replica], self.host
        )
    }

    /// The replica that owns `digest`: the highest rendezvous weight, as the replicas compute it.
    fn owner(&self, digest: &str) -> usize {
        (0..3)
            .max_by_key(|&i| {
                let h = sha2::Sha256::digest(
                    format!("http://127.0.0.1:{}/\n{digest}", self.ports[i]).as_bytes(),
                );
                u64::from_be_bytes(h[..8].try_into().expect("8 bytes"))
            })
            .expect("three replicas")
    }
}

/// Pulls and hashes a blob; `Err` for a transfer that failed (never wrong bytes).
async fn pull(http: &reqwest::Client, url: &str) -> Result<(usize, String), String> {
    let resp = http.get(url).send().await.map_err(|e| e.to_string())?;
    if resp.status() != 200 {
        return Err(format!("status {}", resp.status()));
    }
    let mut hasher = sha2::Sha256::new();
    let mut n = 0;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        n += chunk.len();
        hasher.update(&chunk);
    }
    Ok((n, format!("sha256:{}", hex::encode(hasher.finalize()))))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

#[tokio::test(flavor = "multi_thread")]
async fn ninety_six_clients_over_three_replicas_make_one_upstream_get() {
    let c = cluster(2501, 1 << 30, None).await;
    let (layer, size) = c.image.layers.last().cloned().expect("layer");
    let http = client();
    let pulls = (0..96).map(|i| {
        let (http, url) = (http.clone(), c.blob_url(i % 3, &layer));
        async move { pull(&http, &url).await }
    });
    for got in futures_util::future::join_all(pulls).await {
        let (n, digest) = got.expect("every client gets the blob");
        assert_eq!((n as u64, digest.as_str()), (size, layer.as_str()));
    }
    assert_eq!(c.faults.count("GET", &format!("/blobs/{layer}")), 1);
    let owner = c.owner(&layer);
    // Clients finish once the bytes are verified; the commit (fsync of 1 GiB) follows.
    let committed = common::util::wait_until(Duration::from_secs(60), || {
        c.replicas[owner]
            .log()
            .contains("fill committed")
            .then_some(())
    });
    assert!(committed.is_some(), "the owner filled it");

    // The peer path is closed to anyone without the secret.
    let outsider = http
        .get(format!(
            "http://127.0.0.1:{}/_stevedore/peer/v2/team/app/blobs/{layer}?ns={}",
            c.ports[0], c.host
        ))
        .header("x-stevedore-peer", "guess")
        .send()
        .await
        .expect("request");
    assert_eq!(outsider.status(), 404);
    let id = http
        .get(format!(
            "http://127.0.0.1:{}/_stevedore/peer/id",
            c.ports[0]
        ))
        .send()
        .await
        .expect("request");
    assert_eq!(id.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_owner_killed_mid_fill_leaves_clean_errors_or_right_bytes_and_nothing_unverified() {
    let c = cluster(2502, 8 << 20, Some(Duration::from_millis(40))).await;
    let (layer, size) = c.image.layers.last().cloned().expect("layer");
    let owner = c.owner(&layer);
    let others: Vec<usize> = (0..3).filter(|&i| i != owner).collect();
    let http = client();
    // Clients on the two other replicas: they fill from the owner.
    let pulls: Vec<_> = (0..12)
        .map(|i| {
            let (http, url) = (http.clone(), c.blob_url(others[i % 2], &layer));
            tokio::spawn(async move { pull(&http, &url).await })
        })
        .collect();
    // Once the owner's fill is under way, it dies.
    let started = common::util::wait_until(Duration::from_secs(10), || {
        (c.faults.count("GET", &format!("/blobs/{layer}")) >= 1).then_some(())
    });
    assert!(started.is_some(), "the owner never started its fill");
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.replicas[owner].signal(libc::SIGKILL);

    let mut errors = 0;
    for p in pulls {
        match p.await.expect("task") {
            Ok((n, digest)) => assert_eq!((n as u64, digest.as_str()), (size, layer.as_str())),
            Err(_) => errors += 1,
        }
    }
    // A retry on a surviving replica succeeds.
    let (n, digest) = pull(&http, &c.blob_url(others[0], &layer))
        .await
        .expect("a retry succeeds");
    assert_eq!((n as u64, digest.as_str()), (size, layer.as_str()));
    eprintln!("clients cut by the owner's death: {errors} of 12");

    // The bucket holds only content that matches its name.
    let s3 = c.garage.client(others[0]);
    let layer_key = format!("blobs/sha256/{}", layer.trim_start_matches("sha256:"));
    let mut listed = Vec::new();
    for _ in 0..100 {
        listed = s3
            .list(Some(&object_store::path::Path::from("blobs")))
            .collect::<Vec<_>>()
            .await;
        if listed
            .iter()
            .any(|m| m.as_ref().is_ok_and(|m| m.location.as_ref() == layer_key))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!listed.is_empty());
    for meta in listed {
        let meta = meta.expect("list");
        let name = meta.location.to_string();
        let hex = name.rsplit('/').next().expect("hex");
        let bytes = s3
            .get(&meta.location)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        assert_eq!(sha256_digest(&bytes), format!("sha256:{hex}"), "{name}");
    }
}
