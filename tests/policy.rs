//! `[policy]` against real clients and a real registry: containerd presenting a token through
//! a `header` in hosts.toml, skopeo presenting one from an auth file for the mirror host,
//! source-address identities, digest-only rules, the challenge that makes docker-style
//! clients send their credentials, token files rotated without a restart, the audit line of
//! each manifest pull, and the start-up warning of an open listener.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::clients::{Containerd, CtrPullOptions, SkopeoOptions, skopeo_pull_via_mirror_only};
use common::images::{self, ImageSpec, PushedImage};
use common::process::Process;
use common::pulls::error_of;
use common::registry::Registry;
use common::stevedore::{Stevedore, registry_section};
use common::util::sha256_digest;
use reqwest::StatusCode;

const TOKEN: &str = "ci-token-5f1e8c";

fn token_hash(token: &str) -> String {
    sha256_digest(token.as_bytes())
        .trim_start_matches("sha256:")
        .to_owned()
}

fn client_from(ip: Ipv4Addr) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(IpAddr::V4(ip))
        .build()
        .expect("client")
}

/// A private registry (htpasswd) whose credentials only stevedore holds.
async fn private_registry(seed: u64) -> (Registry, PushedImage) {
    let registry = Registry::htpasswd("admin", "admin-secret");
    let image = images::push_image(&registry, "team/app", "v1", &ImageSpec::seed(seed)).await;
    (registry, image)
}

fn upstream_section(registry: &Registry) -> String {
    registry_section(
        &registry.host(),
        &registry.url(),
        "username = \"admin\"\npassword = \"admin-secret\"",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn containerd_and_skopeo_present_tokens_and_pull_without_registry_credentials() {
    // Port-less, so the registry can be a path component of a mirror reference (skopeo).
    let registry = Registry::builder()
        .portless()
        .htpasswd(&[("admin", "admin-secret")])
        .start();
    let image = images::push_image(&registry, "team/app", "v1", &ImageSpec::seed(801)).await;
    let host = registry.host();
    let proxy = Stevedore::start(&format!(
        "[policy.identities.ci]\ntokens-sha256 = [\"{}\"]\n\
         [[policy.rules]]\nname = \"ci-pulls\"\nidentities = [\"ci\"]\nregistries = [\"*\"]\n\
         {}",
        token_hash(TOKEN),
        upstream_section(&registry)
    ))
    .await;
    let port = proxy.port();

    // containerd: the token in a header of the mirror's hosts.toml entry.
    let containerd = Containerd::start();
    let hosts = |header: &str| {
        format!(
            "server = \"http://127.0.0.1:1\"\n\n[host.\"http://127.0.0.1:{port}\"]\n  \
             capabilities = [\"pull\", \"resolve\"]\n{header}"
        )
    };
    containerd.write_hosts_toml(&host, &hosts(""));
    let denied = containerd
        .pull_via_mirror(&host, "team/app", "v1", &CtrPullOptions::default())
        .await;
    assert!(denied.is_err(), "no token, no pull");
    containerd.write_hosts_toml(
        &host,
        &hosts(&format!(
            "  [host.\"http://127.0.0.1:{port}\".header]\n    Authorization = \"Bearer {TOKEN}\"\n"
        )),
    );
    let pulled = containerd
        .pull_via_mirror(&host, "team/app", "v1", &CtrPullOptions::default())
        .await
        .expect("containerd with a token");
    assert_eq!(pulled.manifest_digest, image.manifest_digest);
    assert_eq!(pulled.layer_digests, image.layer_digests());

    // skopeo: the token as the password of credentials for the mirror host.
    let no_auth = skopeo_pull_via_mirror_only(
        port,
        &host,
        "team/app",
        "v1",
        &SkopeoOptions {
            auth_file: Some("{}".into()),
            ..SkopeoOptions::default()
        },
    )
    .await;
    assert!(no_auth.is_err(), "no credentials, no pull");
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("ci:{TOKEN}"));
    let pulled = skopeo_pull_via_mirror_only(
        port,
        &host,
        "team/app",
        "v1",
        &SkopeoOptions {
            auth_file: Some(format!(
                "{{\"auths\":{{\"127.0.0.1:{port}\":{{\"auth\":\"{auth}\"}}}}}}"
            )),
            ..SkopeoOptions::default()
        },
    )
    .await
    .expect("skopeo with the mirror's credentials");
    assert_eq!(pulled.manifest_digest, image.manifest_digest);
}

#[tokio::test(flavor = "multi_thread")]
async fn source_addresses_are_identities() {
    let (registry, image) = private_registry(802).await;
    let proxy = Stevedore::start(&format!(
        "[policy.identities.nodes]\ncidrs = [\"127.0.0.2/32\", \"127.0.0.3\"]\n\
         [[policy.rules]]\nname = \"nodes\"\nidentities = [\"nodes\"]\nregistries = [\"{}\"]\n\
         repositories = [\"team/\"]\n{}",
        registry.host(),
        upstream_section(&registry)
    ))
    .await;
    let url = format!(
        "{}/v2/team/app/manifests/v1?ns={}",
        proxy.url(),
        registry.host()
    );
    let r = client_from(Ipv4Addr::new(127, 0, 0, 2))
        .get(&url)
        .header("accept", "*/*")
        .send()
        .await
        .expect("from a node");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        sha256_digest(&r.bytes().await.expect("body")),
        image.manifest_digest
    );
    let r = client_from(Ipv4Addr::new(127, 0, 0, 1))
        .get(&url)
        .send()
        .await
        .expect("from elsewhere");
    let (status, code, message) = error_of(r).await;
    assert_eq!((status, code.as_str()), (StatusCode::FORBIDDEN, "DENIED"));
    assert!(
        message.contains("no policy rule lets anonymous pull"),
        "{message}"
    );
    // A node may not reach outside the repositories its rule names.
    let r = client_from(Ipv4Addr::new(127, 0, 0, 3))
        .get(format!(
            "{}/v2/other/app/manifests/v1?ns={}",
            proxy.url(),
            registry.host()
        ))
        .send()
        .await
        .expect("other repository");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread")]
async fn digest_only_rules_pull_by_digest_and_never_resolve_tags() {
    let (registry, image) = private_registry(803).await;
    let host = registry.host();
    let proxy = Stevedore::start(&format!(
        "[policy.identities.nodes]\ncidrs = [\"127.0.0.0/8\"]\n\
         [[policy.rules]]\nname = \"nodes-by-digest\"\nidentities = [\"nodes\"]\n\
         registries = [\"*\"]\nreferences = \"digests\"\n{}",
        upstream_section(&registry)
    ))
    .await;
    let c = client_from(Ipv4Addr::LOCALHOST);
    for what in ["manifests/v1", "tags/list"] {
        let r = c
            .get(format!("{}/v2/team/app/{what}?ns={host}", proxy.url()))
            .send()
            .await
            .expect("request");
        let (status, _, message) = error_of(r).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{what}");
        assert!(
            message.contains("nodes-by-digest") && message.contains("by digest only"),
            "{message}"
        );
    }
    // containerd pulls the same image by digest.
    let containerd = Containerd::start();
    containerd.configure_mirror(&host, proxy.port(), false);
    let pulled = containerd
        .pull(
            &format!("{host}/team/app@{}", image.manifest_digest),
            &CtrPullOptions::default(),
        )
        .await
        .expect("digest pull");
    assert_eq!(pulled.layer_digests, image.layer_digests());
    assert!(
        containerd
            .pull_via_mirror(&host, "team/app", "v1", &CtrPullOptions::default())
            .await
            .is_err(),
        "tag pull refused"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ping_challenges_clients_that_have_not_sent_a_token() {
    let proxy = Stevedore::start(&format!(
        "[policy.identities.ci]\ntokens-sha256 = [\"{}\"]\n\
         [[policy.rules]]\nidentities = [\"ci\"]\nregistries = [\"*\"]\n",
        token_hash(TOKEN)
    ))
    .await;
    let c = client_from(Ipv4Addr::LOCALHOST);
    let ping = format!("{}/v2/", proxy.url());
    let r = c.get(&ping).send().await.expect("ping");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"stevedore\"");
    let r = c
        .get(&ping)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("ping with token");
    assert_eq!(r.status(), StatusCode::OK);
    let r = c
        .get(&ping)
        .basic_auth("whoever", Some(TOKEN))
        .send()
        .await
        .expect("ping with basic");
    assert_eq!(r.status(), StatusCode::OK);
    let r = c
        .get(&ping)
        .bearer_auth("wrong")
        .send()
        .await
        .expect("ping with a wrong token");
    let (status, code, message) = error_of(r).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "UNAUTHORIZED")
    );
    assert!(!message.contains("wrong"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn token_files_are_rotated_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("token");
    std::fs::write(&file, "first-token\n").expect("write");
    let proxy = Stevedore::start(&format!(
        "[policy.identities.ci]\ntoken-files = [\"{}\"]\n\
         [[policy.rules]]\nidentities = [\"ci\"]\nregistries = [\"*\"]\n",
        file.display()
    ))
    .await;
    let c = client_from(Ipv4Addr::LOCALHOST);
    let ping = |token: &'static str| {
        c.get(format!("{}/v2/", proxy.url()))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(
        ping("first-token").await.expect("ping").status(),
        StatusCode::OK
    );
    std::fs::write(&file, "second-token\n").expect("rotate");
    let mut rotated = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if ping("second-token").await.expect("ping").status() == StatusCode::OK {
            rotated = true;
            break;
        }
    }
    assert!(rotated, "the new token was never accepted");
    assert_eq!(
        ping("first-token").await.expect("ping").status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_manifest_pull_has_an_audit_line_without_secrets() {
    let (registry, image) = private_registry(804).await;
    let proxy = Process::start(
        "",
        &format!(
            "[policy.identities.ci]\ntokens-sha256 = [\"{}\"]\n\
             [[policy.rules]]\nname = \"ci\"\nidentities = [\"ci\"]\nregistries = [\"*\"]\n\
             repositories = [\"team/\"]\n{}",
            token_hash(TOKEN),
            upstream_section(&registry)
        ),
        &[("RUST_LOG", "info")],
    );
    let c = client_from(Ipv4Addr::LOCALHOST);
    let base = format!("{}/v2", proxy.url());
    let ns = format!("?ns={}", registry.host());
    let r = c
        .get(format!("{base}/team/app/manifests/v1{ns}"))
        .bearer_auth(TOKEN)
        .header("accept", "*/*")
        .send()
        .await
        .expect("allowed");
    assert_eq!(r.status(), StatusCode::OK);
    let r = c
        .get(format!("{base}/other/app/manifests/v1{ns}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("denied");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = proxy.log();
    let audit: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("stevedore::audit"))
        .collect();
    assert_eq!(audit.len(), 2, "{log}");
    assert!(audit[0].contains("identity=\"ci\""), "{}", audit[0]);
    assert!(audit[0].contains("repository=team/app"), "{}", audit[0]);
    assert!(audit[0].contains("reference=v1"), "{}", audit[0]);
    assert!(
        audit[0].contains(&format!("digest=\"{}\"", image.manifest_digest)),
        "{}",
        audit[0]
    );
    assert!(audit[0].contains("outcome=200"), "{}", audit[0]);
    assert!(audit[1].contains("repository=other/app"), "{}", audit[1]);
    assert!(audit[1].contains("outcome=403"), "{}", audit[1]);
    assert!(!log.contains(TOKEN), "a token reached the log");
    assert!(
        !log.contains("admin-secret"),
        "a registry password reached the log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_listener_with_credentials_and_no_policy_is_warned_about() {
    let (registry, _) = private_registry(805).await;
    let open = Process::start_on("0.0.0.0", "", &upstream_section(&registry), &[]);
    assert!(
        open.log().contains("without a [policy] section"),
        "{}",
        open.log()
    );
    let local = Process::start("", &upstream_section(&registry), &[]);
    assert!(!local.log().contains("without a [policy] section"));
}
