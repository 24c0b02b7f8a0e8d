//! `kill -9` of a running stevedore in the middle of fills: after it, `stevedore cache verify`
//! passes, no partial blob is visible, leftover temp files are cleaned at the next start, and
//! the restarted server serves every image correctly.

mod common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::faults::{Fault, FaultProxy, Rule};
use common::images::{self, ImageSpec};
use common::registry::Registry;
use common::util::{free_port, sha256_digest};

const BIN: &str = env!("CARGO_BIN_EXE_stevedore");

fn serve(config: &Path) -> Child {
    let log = std::fs::File::create(config.with_extension("log")).expect("log file");
    Command::new(BIN)
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "stevedore=debug")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start stevedore")
}

/// Polls `check` every 20 ms without blocking the runtime, for up to `limit`.
async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_fills_leaves_a_verifiable_store() {
    let registry = Registry::open();
    let mut pushed = Vec::new();
    for seed in 0..4u64 {
        let repo = format!("team/crash{seed}");
        let spec = ImageSpec::seed(500 + seed).large_layer(6 << 20);
        pushed.push(images::push_image(&registry, &repo, "v1", &spec).await);
    }
    // Slow blob bodies so that the kill lands while fills are running.
    let faults = FaultProxy::start(&registry.url()).await;
    faults.add(
        Rule::new(
            "/blobs/",
            Fault::Slow {
                per_chunk: Duration::from_millis(3),
            },
        )
        .method("GET"),
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let port = free_port(Ipv4Addr::LOCALHOST.into());
    let config = dir.path().join("stevedore.toml");
    let host = registry.host();
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[ca]\ndir = \"{}\"\n[store]\npath = \"{}\"\n\
             [registries.\"{host}\"]\nendpoints = [\"{}\"]\nallow-private-network = true\n",
            dir.path().join("ca").display(),
            store.display(),
            faults.url()
        ),
    )
    .expect("write config");
    let base = format!("http://127.0.0.1:{port}");
    let blob_url = |repo: &str, digest: &str| format!("{base}/v2/{repo}/blobs/{digest}?ns={host}");

    let mut server = serve(&config);
    assert!(
        eventually(Duration::from_secs(20), || listening(port)).await,
        "stevedore did not start"
    );

    // Small blobs complete; large ones are still filling when the process dies.
    let client = reqwest::Client::new();
    for img in &pushed {
        let config_digest = &img.config_digest;
        let r = client
            .get(blob_url(&img.repo, config_digest))
            .send()
            .await
            .expect("config");
        assert_eq!(r.status(), 200);
        r.bytes().await.expect("config body");
        for (digest, _) in &img.layers {
            let (client, url) = (client.clone(), blob_url(&img.repo, digest));
            tokio::spawn(async move {
                if let Ok(r) = client.get(url).send().await {
                    let _ = r.bytes().await;
                }
            });
        }
    }
    let filling = eventually(Duration::from_secs(30), || {
        count_files(&store.join("tmp")) >= 2
    })
    .await;
    assert!(
        filling,
        "fills should be in progress:\n{}",
        std::fs::read_to_string(config.with_extension("log")).unwrap_or_default()
    );
    server.kill().expect("kill -9"); // SIGKILL
    server.wait().expect("reap");
    assert!(
        count_files(&store.join("tmp")) > 0,
        "the kill interrupted fills"
    );

    let verify = Command::new(BIN)
        .args(["cache", "verify", "--config"])
        .arg(&config)
        .output()
        .expect("cache verify");
    assert!(
        verify.status.success(),
        "cache verify after kill -9:\n{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );

    // Restart: leftovers are removed, and every blob is served whole and correct.
    faults.clear();
    let mut server = serve(&config);
    assert!(
        eventually(Duration::from_secs(20), || listening(port)).await,
        "stevedore did not restart"
    );
    assert_eq!(
        count_files(&store.join("tmp")),
        0,
        "temp files cleaned at start-up"
    );
    for img in &pushed {
        for (digest, size) in &img.layers {
            let r = client
                .get(blob_url(&img.repo, digest))
                .send()
                .await
                .expect("blob");
            assert_eq!(r.status(), 200);
            let body = r.bytes().await.expect("body");
            assert_eq!(
                (sha256_digest(&body), body.len() as u64),
                (digest.clone(), *size)
            );
        }
    }
    server.kill().expect("stop");
    server.wait().expect("reap");
    let verify = Command::new(BIN)
        .args(["cache", "verify", "--config"])
        .arg(&config)
        .output()
        .expect("cache verify");
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}
