//! Upstream budgets against a real registry, counted at the upstream by the fault proxy:
//! stevedore's own limit on manifest GETs (misses answered 429 with Retry-After, tags served
//! stale), and the upstream's `ratelimit-limit` / `ratelimit-remaining` exported as gauges and
//! respected when nothing is left.

mod common;

use std::time::Duration;

use common::faults::{Fault, FaultProxy, Rule};
use common::images::{self, ImageSpec, PushedImage};
use common::pulls::error_of;
use common::registry::Registry;
use common::stevedore::{Stevedore, registry_section};
use common::util::sha256_digest;
use reqwest::StatusCode;

struct Setup {
    registry: Registry,
    faults: FaultProxy,
    proxy: Stevedore,
    _store: tempfile::TempDir,
}

async fn setup(
    seed: u64,
    tags: &[&str],
    store_extra: &str,
    registry_extra: &str,
) -> (Setup, Vec<PushedImage>) {
    let registry = Registry::open();
    let mut pushed = Vec::new();
    for (i, tag) in tags.iter().enumerate() {
        pushed.push(
            images::push_image(
                &registry,
                "team/app",
                tag,
                &ImageSpec::seed(seed + i as u64),
            )
            .await,
        );
    }
    let faults = FaultProxy::start(&registry.url()).await;
    let store = tempfile::tempdir().expect("tempdir");
    let proxy = Stevedore::start(&format!(
        "[store]\npath = \"{}\"\n{store_extra}\n{}",
        store.path().display(),
        registry_section(&registry.host(), &faults.url(), registry_extra)
    ))
    .await;
    (
        Setup {
            registry,
            faults,
            proxy,
            _store: store,
        },
        pushed,
    )
}

impl Setup {
    async fn tag(&self, tag: &str) -> reqwest::Response {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client")
            .get(format!(
                "{}/v2/team/app/manifests/{tag}?ns={}",
                self.proxy.url(),
                self.registry.host()
            ))
            .header("accept", "*/*")
            .send()
            .await
            .expect("request")
    }

    fn manifest_gets(&self) -> usize {
        self.faults.count("GET", "/manifests/")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spent_budget_answers_misses_429_without_asking_upstream() {
    let (s, pushed) = setup(
        901,
        &["a", "b", "c"],
        "",
        "budget = { manifest-gets = 2, per = \"1h\" }",
    )
    .await;
    for (tag, image) in [("a", &pushed[0]), ("b", &pushed[1])] {
        let r = s.tag(tag).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            sha256_digest(&r.bytes().await.expect("body")),
            image.manifest_digest
        );
    }
    let r = s.tag("c").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let after: u64 = r.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1000..=1800).contains(&after), "Retry-After {after}");
    let (_, code, message) = error_of(r).await;
    assert_eq!(code, "TOOMANYREQUESTS");
    assert!(message.contains("budget"), "{message}");
    assert_eq!(
        s.manifest_gets(),
        2,
        "the third manifest GET was never sent"
    );
    // What is cached is still served.
    let r = s.tag("a").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(s.manifest_gets(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spent_budget_serves_tags_stale() {
    let (s, pushed) = setup(
        910,
        &["v1"],
        "tag-ttl = \"1s\"",
        "budget = { manifest-gets = 1, per = \"1h\" }",
    )
    .await;
    let r = s.tag("v1").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(s.manifest_gets(), 1);
    // The tag moves upstream; its new manifest would need a GET the budget does not allow.
    let moved = images::push_image(&s.registry, "team/app", "v1", &ImageSpec::seed(911)).await;
    assert_ne!(moved.manifest_digest, pushed[0].manifest_digest);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = s.tag("v1").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-stevedore-stale"], "true");
    assert_eq!(
        r.headers()["docker-content-digest"],
        pushed[0].manifest_digest.as_str()
    );
    assert_eq!(s.manifest_gets(), 1, "no manifest GET past the budget");
    assert_eq!(
        s.faults.count("HEAD", "/manifests/v1"),
        1,
        "revalidated with a HEAD"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_upstreams_own_rate_limit_is_exported_and_respected() {
    let (s, _) = setup(920, &["a", "b"], "", "").await;
    s.faults.add(Rule::new(
        "/manifests/",
        Fault::AddHeaders(vec![
            ("ratelimit-limit".into(), "100;w=21600".into()),
            ("ratelimit-remaining".into(), "0;w=21600".into()),
        ]),
    ));
    let r = s.tag("a").await;
    assert_eq!(r.status(), StatusCode::OK);
    let telemetry = s.proxy.state.telemetry.clone();
    let metrics = tokio::task::spawn_blocking(move || telemetry.render())
        .await
        .expect("render");
    let host = s.registry.host();
    assert!(
        metrics.contains(&format!(
            "stevedore_upstream_ratelimit_limit{{registry=\"{host}\"}} 100"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "stevedore_upstream_ratelimit_remaining{{registry=\"{host}\"}} 0"
        )),
        "{metrics}"
    );
    let gets = s.manifest_gets();
    let r = s.tag("b").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let (_, _, message) = error_of(r).await;
    assert!(message.contains("ratelimit-remaining"), "{message}");
    assert_eq!(s.manifest_gets(), gets, "nothing sent with nothing left");
}
