//! Upstream authentication through stevedore, against distribution with htpasswd and with a
//! token server: token reuse and refresh, refused credentials, anonymous repositories, realms
//! and redirects on other hosts, identity and registry tokens, credential files and rotation.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::faults::{Fault, FaultProxy, Rule};
use common::images::{self, ImageSpec};
use common::registry::Registry;
use common::stevedore::{Stevedore, registry_section};
use common::token_server::{Access, TokenServer};
use reqwest::StatusCode;

use common::pulls::{OCI_ACCEPT, error_of, get, pull_all};

fn creds(user: &str, pass: &str) -> String {
    format!("username = \"{user}\"\npassword = \"{pass}\"")
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_pulls_make_one_token_request_per_scope() {
    let tokens = TokenServer::builder()
        .user("puller", "pw", &["team/"])
        .start();
    let registry = Registry::token(&tokens);
    let image = images::push_image(&registry, "team/app", "v1", &ImageSpec::seed(10)).await;
    let host = registry.host();
    let proxy = Stevedore::start(&registry_section(
        &host,
        &registry.url(),
        &creds("puller", "pw"),
    ))
    .await;
    tokens.reset();

    let pulls = (0..50).map(|_| pull_all(&proxy, &host, &image));
    futures_util::future::join_all(pulls).await;

    let scope = "repository:team/app:pull";
    assert_eq!(tokens.count_scope(scope), 1, "{:?}", tokens.scope_counts());
    assert_eq!(tokens.count(), 1);
    let req = &tokens.requests()[0];
    assert_eq!(req.subject.as_deref(), Some("puller"));
    assert_eq!(req.method, "GET");
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_tokens_are_refreshed_and_missing_expiry_means_60s() {
    let tokens = TokenServer::builder()
        .user("puller", "pw", &["team/"])
        .expires_in(Some(2))
        .start();
    let registry = Registry::token(&tokens);
    let image = images::push_image(&registry, "team/app", "v1", &ImageSpec::seed(11)).await;
    let host = registry.host();
    let proxy = Stevedore::start(&registry_section(
        &host,
        &registry.url(),
        &creds("puller", "pw"),
    ))
    .await;
    tokens.reset();

    pull_all(&proxy, &host, &image).await;
    assert_eq!(tokens.count(), 1);
    // A 2 s token is replaced a margin before it lapses.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    pull_all(&proxy, &host, &image).await;
    assert_eq!(tokens.count(), 2, "an expired token must be replaced");

    // Without expires_in a token lives 60 s: no new request after 2 s.
    tokens.set_expires_in(None);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    pull_all(&proxy, &host, &image).await;
    assert_eq!(tokens.count(), 3);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    pull_all(&proxy, &host, &image).await;
    assert_eq!(tokens.count(), 3, "a token without expires_in lives 60 s");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_cached_token_is_refreshed_once() {
    let tokens = TokenServer::builder()
        .user("puller", "pw", &["team/"])
        .start();
    let registry = Registry::token(&tokens);
    let image = images::push_image(&registry, "team/app", "v1", &ImageSpec::seed(12)).await;
    let faults = FaultProxy::start(&registry.url()).await;
    let host = registry.host();
    let proxy = Stevedore::start(&registry_section(
        &host,
        &faults.url(),
        &creds("puller", "pw"),
    ))
    .await;
    pull_all(&proxy, &host, &image).await;
    tokens.reset();

    let challenge = format!(
        "Bearer realm=\"{}\",service=\"{}\",scope=\"repository:team/app:pull\",error=\"invalid_token\"",
        tokens.url(),
        tokens.service()
    );
    let unauthorized = Fault::Respond {
        status: 401,
        headers: vec![("www-authenticate".into(), challenge)],
    };
    // Once: the cached token is dropped, a new one fetched, the request succeeds.
    faults.add(Rule::new("/manifests/v1", unauthorized.clone()).times(1));
    pull_all(&proxy, &host, &image).await;
    assert_eq!(tokens.count(), 1, "one new token after a refusal");

    // Always: one refresh, then a clear 403 instead of a loop or a bare 401.
    faults.add(Rule::new("/manifests/v1", unauthorized));
    tokens.reset();
    faults.reset_seen();
    let (status, code, message) =
        error_of(get(&proxy, &host, "team/app", "manifests/v1").await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(code, "DENIED");
    assert!(
        message.contains(&host) && message.contains("team/app"),
        "{message}"
    );
    assert_eq!(tokens.count(), 1, "exactly one refresh");
    assert_eq!(faults.count("GET", "/manifests/v1"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_credentials_give_403_denied_naming_registry_and_repository() {
    // Token upstream: the token service refuses the password.
    let tokens = TokenServer::builder()
        .user("puller", "pw", &["team/"])
        .start();
    let registry = Registry::token(&tokens);
    images::push_image(&registry, "team/app", "v1", &ImageSpec::seed(13)).await;
    let host = registry.host();
    let proxy = Stevedore::start(&registry_section(
        &host,
        &registry.url(),
        &creds("puller", "WRONG"),
    ))
    .await;
    let (status, code, message) =
        error_of(get(&proxy, &host, "team/app", "manifests/v1").await).await;
    assert_eq!((status, code.as_str()), (StatusCode::FORBIDDEN, "DENIED"));
    assert!(
        message.contains(&host) && message.contains("team/app"),
        "{message}"
    );
    assert!(
        !message.contains("WRONG"),
        "a password leaked into an error: {message}"
    );

    // Basic upstream: the registry itself refuses.
    let basic = Registry::htpasswd("puller", "pw");
    images::push_image(&basic, "team/app", "v1", &ImageSpec::seed(13)).await;
    let bhost = basic.host();
    let proxy = Stevedore::start(&registry_section(
        &bhost,
        &basic.url(),
        &creds("puller", "WRONG"),
    ))
    .await;
    let (status, code, message) =
        error_of(get(&proxy, &bhost, "team/app", "manifests/v1").await).await;
    assert_eq!((status, code.as_str()), (StatusCode::FORBIDDEN, "DENIED"));
    assert!(
        message.contains(&bhost) && message.contains("team/app"),
        "{message}"
    );
    assert!(
        message.contains("refused stevedore's basic credentials"),
        "{message}"
    );

    // No credentials at all for a private repository: says so.
    let proxy = Stevedore::start(&registry_section(&bhost, &basic.url(), "")).await;
    let (status, _, message) =
        error_of(get(&proxy, &bhost, "team/app", "manifests/v1").await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(message.contains("has none"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_pull_only_repository_works_without_credentials() {
    let tokens = TokenServer::builder().anonymous_pull("public/").start();
    let registry = Registry::token(&tokens);
    let image = images::push_image(&registry, "public/app", "v1", &ImageSpec::seed(14)).await;
    let host = registry.host();
    let proxy = Stevedore::start(&registry_section(&host, &registry.url(), "")).await;
    tokens.reset();
    pull_all(&proxy, &host, &image).await;
    let reqs = tokens.requests();
    assert_eq!(reqs.len(), 1);
    assert!(reqs[0].authorization.is_none(), "anonymous token request");
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_never_reach_a_realm_on_another_domain() {
    // The token service lives on 127.0.0.2, the registry on 127.0.0.1: different hosts.
    let tokens = TokenServer::builder()
        .bind_ip("127.0.0.2".parse().expect("ip"))
        .user("puller", "pw", &["team/"])
        .anonymous_pull("public/")
        .start();
    let registry = Registry::token(&tokens);
    let public = images::push_image(&registry, "public/app", "v1", &ImageSpec::seed(15)).await;
    images::push_image(&registry, "team/app", "v1", &ImageSpec::seed(16)).await;
    let host = registry.host();
    let proxy = Stevedore::start(&registry_section(
        &host,
        &registry.url(),
        &creds("puller", "pw"),
    ))
    .await;
    tokens.reset();

    pull_all(&proxy, &host, &public).await;
    let (status, _, message) = error_of(get(&proxy, &host, "team/app", "manifests/v1").await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(message.contains("another domain"), "{message}");
    assert!(tokens.count() >= 2);
    for r in tokens.requests() {
        assert!(
            r.authorization.is_none(),
            "credentials sent to a foreign realm: {r:?}"
        );
        assert!(r.form.is_empty());
    }

    // Listing the realm in auth-realms trusts it.
    let extra = format!(
        "{}\nauth-realms = [\"{}\"]",
        creds("puller", "pw"),
        tokens.url()
    );
    let proxy = Stevedore::start(&registry_section(&host, &registry.url(), &extra)).await;
    let r = get(&proxy, &host, "team/app", "manifests/v1").await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn authorization_never_follows_a_redirect_to_another_host() {
    let registry = Registry::htpasswd("puller", "pw");
    let image = images::push_image(&registry, "team/app", "v1", &ImageSpec::seed(17)).await;
    // A "CDN" on another host that serves blobs with its own access.
    let admin = registry.admin_credentials().expect("admin").basic_header();
    let cdn = FaultProxy::start_with("127.0.0.2", &registry.url(), Some(admin)).await;
    let front = FaultProxy::start(&registry.url()).await;
    front.add(Rule::new("/blobs/", Fault::Redirect { to: cdn.url() }).method("GET"));
    let host = registry.host();
    let proxy = Stevedore::start(&registry_section(
        &host,
        &front.url(),
        &creds("puller", "pw"),
    ))
    .await;

    pull_all(&proxy, &host, &image).await;
    let at_cdn = cdn.seen();
    assert!(!at_cdn.is_empty(), "blobs went through the redirect");
    for s in &at_cdn {
        assert!(
            s.authorization.is_none(),
            "Authorization crossed to another host: {s:?}"
        );
    }
    assert!(
        front
            .seen()
            .iter()
            .filter(|s| s.path_and_query.contains("/manifests/"))
            .any(|s| s.authorization.is_some()),
        "the registry itself does get credentials"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_token_uses_the_oauth2_refresh_flow() {
    let tokens = TokenServer::builder()
        .user("puller", "pw", &["team/"])
        .start();
    tokens.add_refresh_token("refresh-abc", "puller");
    let registry = Registry::token(&tokens);
    let image = images::push_image(&registry, "team/app", "v1", &ImageSpec::seed(18)).await;
    let host = registry.host();
    let proxy = Stevedore::start(&registry_section(
        &host,
        &registry.url(),
        "identitytoken = \"refresh-abc\"",
    ))
    .await;
    tokens.reset();
    pull_all(&proxy, &host, &image).await;
    let reqs = tokens.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.form_field("grant_type"), Some("refresh_token"));
    assert_eq!(r.form_field("refresh_token"), Some("refresh-abc"));
    assert_eq!(r.form_field("client_id"), Some("stevedore"));
    assert_eq!(r.form_field("service"), Some(tokens.service()));
    assert_eq!(r.subject.as_deref(), Some("puller"));
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_token_is_sent_as_the_bearer_directly() {
    let tokens = TokenServer::builder().start();
    let registry = Registry::token(&tokens);
    let image = images::push_image(&registry, "team/app", "v1", &ImageSpec::seed(19)).await;
    let minted = tokens.mint_token(
        "ci",
        &[Access {
            kind: "repository".into(),
            name: "team/app".into(),
            actions: vec!["pull".into()],
        }],
    );
    let host = registry.host();
    let proxy = Stevedore::start(&registry_section(
        &host,
        &registry.url(),
        &format!("registrytoken = \"{minted}\""),
    ))
    .await;
    tokens.reset();
    pull_all(&proxy, &host, &image).await;
    assert_eq!(tokens.count(), 0, "no token exchange with a registry token");
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_config_kubernetes_secret_and_secret_files_rotate_without_restart() {
    let registry = Registry::htpasswd("puller", "pw");
    let image = images::push_image(&registry, "team/app", "v1", &ImageSpec::seed(20)).await;
    let host = registry.host();
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = |user: &str, pass: &str| {
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        format!("{{\"auths\":{{\"{host}\":{{\"auth\":\"{b64}\"}}}}}}")
    };

    // docker config.json
    let docker = dir.path().join("config.json");
    std::fs::write(&docker, auth("puller", "old")).expect("write");
    let section = registry_section(&host, &registry.url(), "");
    let config = format!(
        "[credentials]\ndocker-config = [\"{}\"]\n{section}",
        docker.display()
    );
    let proxy = Stevedore::start(&config).await;
    let (status, _, _) = error_of(get(&proxy, &host, "team/app", "manifests/v1").await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    std::fs::write(&docker, auth("puller", "pw")).expect("write");
    pull_all(&proxy, &host, &image).await;

    // A Kubernetes dockerconfigjson secret volume, updated by swapping the ..data link.
    let secret = dir.path().join("secret");
    let v1 = secret.join("..v1");
    let v2 = secret.join("..v2");
    std::fs::create_dir_all(&v1).expect("mkdir");
    std::fs::create_dir_all(&v2).expect("mkdir");
    std::fs::write(v1.join(".dockerconfigjson"), auth("puller", "old")).expect("write");
    std::fs::write(v2.join(".dockerconfigjson"), auth("puller", "pw")).expect("write");
    std::os::unix::fs::symlink("..v1", secret.join("..data")).expect("link");
    std::os::unix::fs::symlink("..data/.dockerconfigjson", secret.join(".dockerconfigjson"))
        .expect("link");
    let config = format!(
        "[credentials]\nkubernetes-secrets = [\"{}\"]\n{section}",
        secret.display()
    );
    let proxy = Stevedore::start(&config).await;
    let (status, _, _) = error_of(get(&proxy, &host, "team/app", "manifests/v1").await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    std::os::unix::fs::symlink("..v2", secret.join("..data.tmp")).expect("link");
    std::fs::rename(secret.join("..data.tmp"), secret.join("..data")).expect("swap");
    pull_all(&proxy, &host, &image).await;

    // A password file in stevedore's own config.
    let pw = dir.path().join("password");
    std::fs::write(&pw, "old\n").expect("write");
    let extra = format!(
        "username = \"puller\"\npassword = {{ file = \"{}\" }}",
        pw.display()
    );
    let proxy = Stevedore::start(&registry_section(&host, &registry.url(), &extra)).await;
    let (status, _, _) = error_of(get(&proxy, &host, "team/app", "manifests/v1").await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    std::fs::write(&pw, "pw\n").expect("write");
    pull_all(&proxy, &host, &image).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_clients_authorization_is_never_forwarded() {
    let registry = Registry::htpasswd("puller", "pw");
    let image = images::push_image(&registry, "team/app", "v1", &ImageSpec::seed(21)).await;
    let faults = FaultProxy::start(&registry.url()).await;
    let host = registry.host();
    let proxy = Stevedore::start(&registry_section(
        &host,
        &faults.url(),
        &creds("puller", "pw"),
    ))
    .await;
    let r = reqwest::Client::new()
        .get(format!(
            "{}/v2/team/app/manifests/v1?ns={host}",
            proxy.url()
        ))
        .header("accept", OCI_ACCEPT)
        .header("authorization", "Bearer client-secret-token")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.expect("body"), image.manifest_bytes);
    for s in faults.seen() {
        let a = s.authorization.unwrap_or_default();
        assert!(
            !a.contains("client-secret-token"),
            "client credentials forwarded: {a}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_first_requests_all_answer_the_challenge() {
    // Every request of a cold start gets a 401; the ones that did not learn the challenge
    // themselves must still answer it.
    let registry = Registry::htpasswd("puller", "pw");
    let image = images::push_image(&registry, "team/app", "v1", &ImageSpec::seed(22)).await;
    let host = registry.host();
    for _ in 0..3 {
        let proxy = Stevedore::start(&registry_section(
            &host,
            &registry.url(),
            &creds("puller", "pw"),
        ))
        .await;
        let firsts = (0..20).map(|_| get(&proxy, &host, "team/app", "manifests/v1"));
        for r in futures_util::future::join_all(firsts).await {
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.bytes().await.expect("body"), image.manifest_bytes);
        }
    }
}
