//! The real binary's lifecycle: `/healthz` and `/readyz` on the admin listener, the
//! `healthcheck` command, and SIGTERM: readiness turns false first, the client listeners
//! close, responses in flight finish within `server.drain-timeout`, fills still running after
//! it are aborted with nothing partial left, and the process exits 0.

mod common;

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::faults::{Fault, FaultProxy, Rule};
use common::images::{self, ImageSpec, PushedImage};
use common::process::{BIN, Process};
use common::registry::Registry;
use common::stevedore::registry_section;
use common::util::{free_port, http_status, sha256_digest, wait_until, walk_files};
use futures_util::StreamExt as _;

struct Running {
    proxy: Process,
    admin: u16,
    store: tempfile::TempDir,
    faults: FaultProxy,
    image: PushedImage,
    host: String,
    _registry: Registry,
}

/// stevedore with a store and an admin listener, in front of a registry whose blob bodies
/// arrive `per_chunk` apart.
async fn start(seed: u64, per_chunk: Duration, drain: &str) -> Running {
    let registry = Registry::open();
    let image = images::push_image(
        &registry,
        "team/app",
        "v1",
        &ImageSpec::seed(seed).large_layer(2 << 20),
    )
    .await;
    let faults = FaultProxy::start(&registry.url()).await;
    faults.add(Rule::new("/blobs/", Fault::Slow { per_chunk }).method("GET"));
    let store = tempfile::tempdir().expect("tempdir");
    let admin = free_port(std::net::Ipv4Addr::LOCALHOST.into());
    let host = registry.host();
    let proxy = Process::start(
        &format!("metrics-listen = \"127.0.0.1:{admin}\"\ndrain-timeout = \"{drain}\"\n"),
        &format!(
            "[store]\npath = \"{}\"\n{}",
            store.path().display(),
            registry_section(&host, &faults.url(), "")
        ),
        &[],
    );
    Running {
        proxy,
        admin,
        store,
        faults,
        image,
        host,
        _registry: registry,
    }
}

impl Running {
    fn probe(&self, path: &str) -> Option<u16> {
        http_status(([127, 0, 0, 1], self.admin).into(), "localhost", path)
    }

    fn healthcheck(&self, extra: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args([
                "healthcheck",
                "--addr",
                &format!("127.0.0.1:{}", self.admin),
            ])
            .args(extra)
            .output()
            .expect("run stevedore healthcheck")
    }

    fn blob_url(&self) -> (String, String, u64) {
        let (digest, size) = self.image.layers.last().cloned().expect("a layer");
        (
            format!(
                "{}/v2/team/app/blobs/{digest}?ns={}",
                self.proxy.url(),
                self.host
            ),
            digest,
            size,
        )
    }
}

fn temp_files(store: &Path) -> Vec<String> {
    std::fs::read_dir(store.join("tmp"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_turns_unready_closes_listeners_finishes_responses_and_exits_zero() {
    let mut s = start(1501, Duration::from_millis(15), "30s").await;
    assert_eq!(s.probe("/healthz"), Some(200));
    let ready = wait_until(Duration::from_secs(5), || {
        (s.probe("/readyz") == Some(200)).then_some(())
    });
    assert!(ready.is_some(), "never ready:\n{}", s.proxy.log());
    assert!(s.healthcheck(&[]).status.success());
    assert_eq!(s.probe("/nothing"), Some(404));

    // A cold pull of the slow blob is in flight when the signal comes.
    let (url, digest, size) = s.blob_url();
    let resp = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(&url)
        .send()
        .await
        .expect("blob request");
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut got = Vec::new();
    let first = body.next().await.expect("a first chunk").expect("chunk");
    got.extend_from_slice(&first);
    s.proxy.signal(libc::SIGTERM);

    // Unready at once, alive, and the admin listener still answers.
    let unready = wait_until(Duration::from_secs(2), || {
        (s.probe("/readyz") == Some(503)).then_some(())
    });
    assert!(unready.is_some(), "readyz did not turn 503");
    assert_eq!(s.probe("/healthz"), Some(200));
    let out = s.healthcheck(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("draining"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(s.healthcheck(&["--live"]).status.success());
    // New connections are not accepted any more.
    let closed = wait_until(Duration::from_secs(3), || {
        TcpStream::connect(("127.0.0.1", s.proxy.port))
            .is_err()
            .then_some(())
    });
    assert!(closed.is_some(), "the mirror listener still accepts");

    // The response in flight finishes, whole and correct.
    while let Some(chunk) = body.next().await {
        got.extend_from_slice(&chunk.expect("the body finishes"));
    }
    assert_eq!(got.len() as u64, size);
    assert_eq!(sha256_digest(&got), digest);

    let status = s.proxy.wait_exit(Duration::from_secs(30));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", s.proxy.log());
    assert!(temp_files(s.store.path()).is_empty());
    // The fill had its reader to the end: it was committed.
    assert!(
        walk_files(&s.store.path().join("blobs")).iter().any(|p| p
            .to_string_lossy()
            .contains(digest.trim_start_matches("sha256:"))),
        "the finished fill was not kept"
    );
    let log = s.proxy.log();
    assert!(log.contains("shutting down"), "{log}");
    assert!(log.contains("stopped"), "{log}");
    assert!(s.faults.count("GET", "/blobs/") >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn fills_still_running_after_the_drain_time_are_aborted_without_leftovers() {
    // About 130 chunks 100 ms apart: the fill needs ~13 s, the drain allows 1 s.
    let mut s = start(1502, Duration::from_millis(100), "1s").await;
    let (url, digest, _) = s.blob_url();
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let resp = client.get(&url).send().await.expect("blob request");
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    body.next().await.expect("a first chunk").expect("chunk");
    assert!(!temp_files(s.store.path()).is_empty(), "a fill is running");
    s.proxy.signal(libc::SIGTERM);
    // The client's transfer is cut at the drain deadline: it never gets a short body that
    // looks whole.
    let mut cut = false;
    while let Some(chunk) = body.next().await {
        if chunk.is_err() {
            cut = true;
            break;
        }
    }
    assert!(cut, "the transfer was not cut");
    let status = s.proxy.wait_exit(Duration::from_secs(30));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", s.proxy.log());
    assert!(
        temp_files(s.store.path()).is_empty(),
        "partial fill left: {:?}",
        temp_files(s.store.path())
    );
    let hex = digest.trim_start_matches("sha256:");
    let committed: Vec<_> = walk_files(&s.store.path().join("blobs"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(hex))
        .collect();
    assert!(
        committed.is_empty(),
        "an unfinished blob was committed: {committed:?}"
    );
    let log = s.proxy.log();
    assert!(log.contains("aborted"), "{log}");
}
