//! Config reload with the real binary while a slow pull runs: a bad file (SIGHUP) keeps the
//! running config and logs every problem with file and key; a good file, noticed by its change
//! alone, swaps registry credentials and the policy and says that a new listen address needs
//! a restart; another (SIGHUP) swaps rate limits and the log level. The pull in flight
//! finishes with the right bytes from its one upstream fetch, and no connection is dropped.

mod common;

use common::util::direct_client as client;

use std::time::Duration;

use common::faults::{Fault, FaultProxy, Rule};
use common::images::{self, ImageSpec};
use common::process::Process;
use common::registry::Registry;
use common::stevedore::registry_section;
use common::util::{free_port, sha256_digest, wait_until};
use futures_util::StreamExt as _;

const TOKEN: &str = "reload-token-93b1";

async fn status(http: &reqwest::Client, url: &str, token: Option<&str>) -> u16 {
    let mut r = http.get(url).header("accept", common::pulls::OCI_ACCEPT);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.expect("request").status().as_u16()
}

fn wait_for_log(proxy: &Process, needle: &str, times: usize) {
    let seen = wait_until(Duration::from_secs(15), || {
        (proxy.log().matches(needle).count() >= times).then_some(())
    });
    assert!(
        seen.is_some(),
        "{needle:?} ×{times} not logged:\n{}",
        proxy.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_validates_first_then_swaps_credentials_policy_limits_without_dropping_a_pull() {
    // Registry A: open, its layer slow (the pull in flight). Registry B: htpasswd.
    let a = Registry::open();
    let a_image = images::push_image(
        &a,
        "team/big",
        "v1",
        &ImageSpec::seed(2201).large_layer(2 << 20),
    )
    .await;
    let faults = FaultProxy::start(&a.url()).await;
    faults.add(
        Rule::new(
            "/blobs/",
            Fault::Slow {
                per_chunk: Duration::from_millis(150),
            },
        )
        .method("GET"),
    );
    let b = Registry::htpasswd("puller", "right-pw");
    images::push_image(&b, "team/app", "v1", &ImageSpec::seed(2202)).await;
    let store = tempfile::tempdir().expect("tempdir");
    let admin = free_port(std::net::Ipv4Addr::LOCALHOST.into());
    let sections = |password: &str| {
        format!(
            "[store]\npath = \"{}\"\n{}{}",
            store.path().display(),
            registry_section(&a.host(), &faults.url(), ""),
            registry_section(
                &b.host(),
                &b.url(),
                &format!("username = \"puller\"\npassword = \"{password}\"")
            )
        )
    };
    let mut proxy = Process::start(
        &format!("metrics-listen = \"127.0.0.1:{admin}\""),
        &sections("wrong-pw"),
        &[("RUST_LOG", "")],
    );
    let path = proxy.config_path();
    let v1 = std::fs::read_to_string(&path).expect("config");
    let server = format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\nmetrics-listen = \"127.0.0.1:{admin}\"\n",
        proxy.port
    );
    let ca = format!("[ca]\ndir = \"{}\"\n", proxy.dir().join("ca").display());
    let http = client();
    let b_manifest = format!("{}/v2/team/app/manifests/v1?ns={}", proxy.url(), b.host());
    assert_ne!(
        status(&http, &b_manifest, None).await,
        200,
        "wrong password"
    );

    // The pull in flight, on a kept-alive connection.
    let (layer, size) = a_image.layers.last().cloned().expect("layer");
    let blob = http
        .get(format!(
            "{}/v2/team/big/blobs/{layer}?ns={}",
            proxy.url(),
            a.host()
        ))
        .send()
        .await
        .expect("blob");
    assert_eq!(blob.status(), 200);
    let mut body = blob.bytes_stream();
    let mut got = body.next().await.expect("chunk").expect("chunk").to_vec();

    // A bad file: two problems, both named; the running config stays.
    std::fs::write(
        &path,
        format!("{v1}\n[limits]\nheader-read-timeout = \"0s\"\n[tracing]\nsample-ratio = 2.5\n"),
    )
    .expect("write");
    proxy.signal(libc::SIGHUP);
    wait_for_log(
        &proxy,
        "config reload rejected: the running config stays",
        1,
    );
    let log = proxy.log();
    for key in ["limits.header-read-timeout", "tracing.sample-ratio"] {
        assert!(
            log.lines()
                .any(|l| l.contains(key) && l.contains(&path.display().to_string())),
            "{key} not named with the file:\n{log}"
        );
    }
    assert_eq!(
        status(&http, &format!("{}/v2/", proxy.url()), None).await,
        200
    );
    assert_ne!(status(&http, &b_manifest, None).await, 200);

    // A good file, noticed by its change alone: the right password, a policy that wants a
    // token, and a new listen address (which needs a restart).
    let moved = free_port(std::net::Ipv4Addr::LOCALHOST.into());
    let hash = sha256_digest(TOKEN.as_bytes());
    let v2 = format!(
        "[server]\nlisten = \"127.0.0.1:{moved}\"\nmetrics-listen = \"127.0.0.1:{admin}\"\n{ca}\
         [policy.identities.ci]\ntokens-sha256 = [\"{}\"]\n\
         [[policy.rules]]\nname = \"ci\"\nidentities = [\"ci\"]\nregistries = [\"*\"]\n{}",
        hash.trim_start_matches("sha256:"),
        sections("right-pw")
    );
    std::fs::write(&path, v2).expect("write");
    wait_for_log(&proxy, "config reloaded", 1);
    let log = proxy.log();
    assert!(
        log.lines()
            .any(|l| l.contains("server.listen") && l.contains("only a restart applies it")),
        "{log}"
    );
    assert_eq!(
        status(&http, &b_manifest, None).await,
        401,
        "the policy wants a token"
    );
    assert_eq!(
        status(&http, &b_manifest, Some(TOKEN)).await,
        200,
        "the new password works"
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", moved)).is_err());

    // SIGHUP: no policy, 1 request per second with a burst of 2, and warnings only.
    let v3 = format!(
        "{server}{ca}[limits]\nrequests-per-second = 1\nrequest-burst = 2\n[log]\nlevel = \"warn\"\n{}",
        sections("right-pw")
    );
    std::fs::write(&path, v3).expect("write");
    proxy.signal(libc::SIGHUP);
    wait_for_log(&proxy, "config reloaded", 2);
    let requests_logged = proxy.log().matches("\"request\"").count()
        + proxy
            .log()
            .lines()
            .filter(|l| l.contains(" request "))
            .count();
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(status(&http, &b_manifest, None).await);
    }
    assert!(codes.contains(&200) && codes.contains(&429), "{codes:?}");
    let after = proxy.log().matches("\"request\"").count()
        + proxy
            .log()
            .lines()
            .filter(|l| l.contains(" request "))
            .count();
    assert_eq!(after, requests_logged, "info lines after level = warn");

    // The pull that was running through all of it ends whole, from its one upstream fetch.
    while let Some(chunk) = body.next().await {
        got.extend_from_slice(&chunk.expect("the pull was not dropped"));
    }
    assert_eq!(got.len() as u64, size);
    assert_eq!(sha256_digest(&got), layer);
    assert_eq!(faults.count("GET", &format!("/blobs/{layer}")), 1);

    let metrics = http
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for line in [
        "stevedore_config_reloads_total{result=\"ok\"} 2",
        "stevedore_config_reloads_total{result=\"rejected\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}:\n{metrics}");
    }
    assert_eq!(proxy.terminate(), Some(0), "{}", proxy.log());
}
