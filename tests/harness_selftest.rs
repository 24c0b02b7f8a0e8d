//! Proves the test harness against the real registry, without the proxy:
//! if these fail, proxy test failures are meaningless.

mod common;

use common::clients::{
    Containerd, CtrPullOptions, SkopeoDest, SkopeoOptions, oci_client_pull,
    oci_client_pull_via_mirror, skopeo_pull, skopeo_pull_via_mirror, skopeo_pull_via_mirror_only,
};
use common::images::{self, Format, ImageSpec, OCI_INDEX, RegistryClient};
use common::registry::Registry;
use common::token_server::{Credentials, TokenServer};
use oci_client::secrets::RegistryAuth;
use reqwest::StatusCode;

#[tokio::test]
async fn htpasswd_registry_accepts_push_and_pull_and_rejects_anonymous() {
    let registry = Registry::htpasswd("seeder", "s3cret");
    let pushed = images::push_image(&registry, "team/app", "v1", &ImageSpec::seed(11)).await;

    let admin = RegistryClient::admin(&registry);
    let manifest = admin
        .get_manifest("team/app", "v1")
        .await
        .expect("GET manifest");
    assert_eq!(manifest.status, StatusCode::OK);
    assert_eq!(manifest.body, pushed.manifest_bytes);
    assert_eq!(
        manifest.header("Docker-Content-Digest"),
        Some(pushed.manifest_digest.as_str())
    );
    for (digest, size) in &pushed.layers {
        let blob = admin.get_blob("team/app", digest).await.expect("GET blob");
        assert_eq!(blob.status, StatusCode::OK);
        assert_eq!(blob.body.len() as u64, *size);
        assert_eq!(common::util::sha256_digest(&blob.body), *digest);
    }

    let anonymous = RegistryClient::anonymous(&registry);
    let denied = anonymous
        .get_manifest("team/app", "v1")
        .await
        .expect("GET manifest");
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED);

    let wrong = RegistryClient::new(&registry.url(), Some(Credentials::new("seeder", "wrong")));
    let denied = wrong
        .get_manifest("team/app", "v1")
        .await
        .expect("GET manifest");
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn token_registry_trusts_token_server() {
    let tokens = TokenServer::builder()
        .user("alice", "alice-pw", &["private/"])
        .anonymous_pull("public/")
        .start();
    let registry = Registry::token(&tokens);

    // Push as admin (Bearer challenge answered with admin Basic creds).
    let private = images::push_image(&registry, "private/app", "v1", &ImageSpec::seed(21)).await;
    let public = images::push_image(&registry, "public/app", "v1", &ImageSpec::seed(22)).await;
    assert!(tokens.count() > 0, "pushing must have fetched tokens");
    // distribution's challenge lists the actions in random order
    // ("pull,push" or "push,pull": Go map iteration), so compare parsed.
    let push_scope = |s: &String| {
        common::token_server::parse_scope(s)
            .is_some_and(|a| a.name == "private/app" && a.actions.contains(&"push".to_string()))
    };
    assert!(
        tokens
            .requests()
            .iter()
            .any(|r| r.scopes.iter().any(push_scope)
                && r.granted.iter().any(|g| g.actions.len() == 2)),
        "push scope requested: {:#?}",
        tokens.requests()
    );
    tokens.reset();
    assert_eq!(tokens.count(), 0);

    // A user pulls what they are allowed to.
    let alice = RegistryClient::new(&registry.url(), Some(Credentials::new("alice", "alice-pw")));
    let got = alice
        .get_manifest("private/app", "v1")
        .await
        .expect("alice GET");
    assert_eq!(
        got.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&got.body)
    );
    assert_eq!(got.body, private.manifest_bytes);
    let req = &tokens.requests()[0];
    assert_eq!(req.method, "GET");
    assert_eq!(req.auth_scheme.as_deref(), Some("Basic"));
    assert_eq!(
        req.basic_credentials(),
        Some(Credentials::new("alice", "alice-pw"))
    );
    assert_eq!(req.subject.as_deref(), Some("alice"));
    assert_eq!(req.service.as_deref(), Some(tokens.service()));
    assert_eq!(tokens.count_scope("repository:private/app:pull"), 1);

    // ...but nothing else: the token is issued without access and the
    // registry refuses it.
    let other = alice
        .get_manifest("public2/app", "v1")
        .await
        .expect("alice GET other");
    assert_eq!(other.status, StatusCode::UNAUTHORIZED);

    // Anonymous: public prefix only.
    let anon = RegistryClient::anonymous(&registry);
    let got = anon
        .get_manifest("public/app", "v1")
        .await
        .expect("anonymous GET public");
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, public.manifest_bytes);
    let got = anon
        .get_manifest("private/app", "v1")
        .await
        .expect("anonymous GET private");
    assert_eq!(got.status, StatusCode::UNAUTHORIZED);
    let anon_requests: Vec<_> = tokens
        .requests()
        .into_iter()
        .filter(|r| r.authorization.is_none())
        .collect();
    assert_eq!(anon_requests.len(), 2);
    assert!(
        anon_requests
            .iter()
            .all(|r| r.subject.is_none() && r.status == 200)
    );

    // The registry really verifies signatures: a token with full access
    // from another token server (same service/issuer, other key) is refused.
    let impostor = TokenServer::builder().start();
    let forged = impostor.mint_token(
        "admin",
        &[common::token_server::parse_scope("repository:private/app:pull").expect("scope")],
    );
    let got = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("reqwest client")
        .get(format!("{}/v2/private/app/manifests/v1", registry.url()))
        .bearer_auth(forged)
        .send()
        .await
        .expect("GET with forged token");
    assert_eq!(got.status(), StatusCode::UNAUTHORIZED);

    // Wrong password: the token server refuses outright.
    let bad = RegistryClient::new(&registry.url(), Some(Credentials::new("alice", "nope")));
    assert!(bad.get_manifest("private/app", "v1").await.is_err());

    // OAuth2 POST flows.
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("reqwest client");
    let post = |form: Vec<(&'static str, String)>| {
        let http = http.clone();
        let url = tokens.url().to_string();
        async move {
            let body = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(form)
                .finish();
            let resp = http
                .post(url)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .expect("POST /token");
            let status = resp.status();
            let json: serde_json::Value = resp.json_or_null().await;
            (status, json)
        }
    };
    let scope = "repository:private/app:pull".to_string();

    tokens.add_refresh_token("identity-token-1", "alice");
    let (status, json) = post(vec![
        ("grant_type", "refresh_token".into()),
        ("refresh_token", "identity-token-1".into()),
        ("client_id", "stevedore-selftest".into()),
        ("service", tokens.service().into()),
        ("scope", scope.clone()),
    ])
    .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert!(
        json.get("refresh_token").is_none(),
        "no access_type=offline"
    );
    assert_eq!(json["expires_in"], 300);
    assert!(json["issued_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    let access_token = json["access_token"]
        .as_str()
        .expect("access_token")
        .to_string();
    let got = http
        .get(format!("{}/v2/private/app/manifests/v1", registry.url()))
        .header("Accept", images::OCI_MANIFEST)
        .bearer_auth(&access_token)
        .send()
        .await
        .expect("GET with refresh-derived token");
    assert_eq!(got.status(), StatusCode::OK);
    let last = tokens.requests().pop().expect("POST recorded");
    assert_eq!(last.method, "POST");
    assert_eq!(last.form_field("refresh_token"), Some("identity-token-1"));
    assert_eq!(last.scopes, vec![scope.clone()]);

    let (status, json) = post(vec![
        ("grant_type", "refresh_token".into()),
        ("refresh_token", "identity-token-1".into()),
        ("client_id", "stevedore-selftest".into()),
        ("access_type", "offline".into()),
        ("scope", scope.clone()),
    ])
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["refresh_token"], "identity-token-1");

    let (status, _) = post(vec![
        ("grant_type", "refresh_token".into()),
        ("refresh_token", "unknown".into()),
        ("client_id", "stevedore-selftest".into()),
    ])
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, json) = post(vec![
        ("grant_type", "password".into()),
        ("username", "alice".into()),
        ("password", "alice-pw".into()),
        ("client_id", "stevedore-selftest".into()),
        ("scope", scope.clone()),
    ])
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(json["refresh_token"].as_str().is_some(), "{json}");

    // expires_in can be omitted.
    tokens.set_expires_in(None);
    let (_, json) = post(vec![
        ("grant_type", "refresh_token".into()),
        ("refresh_token", "identity-token-1".into()),
        ("client_id", "stevedore-selftest".into()),
    ])
    .await;
    assert!(json.get("expires_in").is_none(), "{json}");
}

/// Parses a JSON body, or `null` if it is not JSON (for error replies).
trait JsonOrNull {
    async fn json_or_null(self) -> serde_json::Value;
}

impl JsonOrNull for reqwest::Response {
    async fn json_or_null(self) -> serde_json::Value {
        let bytes = self.bytes().await.unwrap_or_default();
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
    }
}

#[tokio::test]
async fn token_server_on_another_address() {
    let tokens = TokenServer::builder()
        .bind_ip("127.0.0.2".parse().expect("IP"))
        .anonymous_pull("")
        .start();
    assert!(
        tokens.url().starts_with("http://127.0.0.2:"),
        "{}",
        tokens.url()
    );
    let registry = Registry::token(&tokens);
    let pushed = images::push_image(&registry, "lib/x", "t", &ImageSpec::seed(5)).await;
    let got = RegistryClient::anonymous(&registry)
        .get_manifest("lib/x", "t")
        .await
        .expect("GET");
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, pushed.manifest_bytes);
}

#[tokio::test]
async fn index_docker_and_large_images_round_trip() {
    let registry = Registry::open();
    let client = RegistryClient::admin(&registry);

    let multi =
        images::push_multiplatform(&registry, "multi/app", "latest", &ImageSpec::seed(31)).await;
    let index = client
        .get_manifest("multi/app", "latest")
        .await
        .expect("GET index");
    assert_eq!(index.status, StatusCode::OK);
    assert_eq!(index.header("Content-Type"), Some(OCI_INDEX));
    assert_eq!(Some(&index.body), multi.index_bytes.as_ref());
    assert_eq!(multi.platforms.len(), 2);

    let pulled = oci_client_pull(
        &format!("{}/multi/app:latest", registry.host()),
        RegistryAuth::Anonymous,
    )
    .await
    .expect("oci-client pull");
    assert_eq!(Some(&pulled.reference_digest), multi.index_digest.as_ref());
    assert_eq!(pulled.manifest_digest, multi.manifest_digest);
    assert_eq!(pulled.layer_digests, multi.layer_digests());

    let docker =
        images::push_docker_image(&registry, "docker/app", "v2", &ImageSpec::seed(32)).await;
    let got = client
        .get_manifest("docker/app", "v2")
        .await
        .expect("GET docker manifest");
    assert_eq!(got.header("Content-Type"), Some(images::DOCKER_MANIFEST));
    assert_eq!(got.body, docker.manifest_bytes);

    // A 9 MiB layer goes through the chunked upload path.
    let large = images::push_image(
        &registry,
        "large/app",
        "v1",
        &ImageSpec::seed(33).small_layers(1).large_layer(9 << 20),
    )
    .await;
    let (digest, size) = large.layers.last().expect("large layer").clone();
    assert!(size > 9 << 20);
    let blob = client
        .get_blob("large/app", &digest)
        .await
        .expect("GET large blob");
    assert_eq!(blob.body.len() as u64, size);
    assert_eq!(Some(blob.body), large.content(&digest));

    let docker_list = images::push_multiplatform(
        &registry,
        "docker/multi",
        "v1",
        &ImageSpec::seed(34).format(Format::Docker),
    )
    .await;
    let got = client
        .get_manifest("docker/multi", "v1")
        .await
        .expect("GET list");
    assert_eq!(
        got.header("Content-Type"),
        Some(images::DOCKER_MANIFEST_LIST)
    );
    assert_eq!(Some(&got.body), docker_list.index_bytes.as_ref());
}

#[tokio::test]
async fn skopeo_pulls_directly_with_credentials() {
    let registry = Registry::htpasswd("seeder", "s3cret");
    let pushed = images::push_image(&registry, "team/app", "v1", &ImageSpec::seed(41)).await;
    let reference = format!("{}/team/app:v1", registry.host());

    let opts = SkopeoOptions {
        creds: Some(Credentials::new("seeder", "s3cret")),
        ..SkopeoOptions::default()
    };
    let pulled = skopeo_pull(&reference, None, &opts)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pulled.manifest_digest, pushed.manifest_digest);
    assert_eq!(pulled.reference_digest, pushed.manifest_digest);
    assert_eq!(pulled.layer_digests, pushed.layer_digests());
    assert_eq!(pulled.config_digest, pushed.config_digest);

    // Without credentials skopeo cannot pull: the basis of the mirror
    // tests' "the mirror was used" argument.
    let err = skopeo_pull(&reference, None, &SkopeoOptions::default())
        .await
        .expect_err("anonymous skopeo pull must fail");
    assert!(
        err.stderr.contains("unauthorized") || err.stderr.contains("authentication required"),
        "{err}"
    );

    // Docker schema 2 via the dir: transport keeps the manifest verbatim.
    let docker =
        images::push_docker_image(&registry, "team/docker", "v1", &ImageSpec::seed(42)).await;
    let pulled = skopeo_pull(
        &format!("{}/team/docker:v1", registry.host()),
        None,
        &SkopeoOptions {
            dest: SkopeoDest::Dir,
            ..opts.clone()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pulled.manifest_digest, docker.manifest_digest);
    assert_eq!(pulled.layer_digests, docker.layer_digests());
}

/// Exercises the path-prefix mirror wrappers using a plain registry as the
/// "mirror": the mirror registry holds the image under
/// `<upstream host>/<repo>`, which is exactly the path skopeo and oci-client
/// request from a path-prefix mirror.
#[tokio::test]
async fn mirror_wrappers_use_the_mirror() {
    let upstream = Registry::builder()
        .portless()
        .htpasswd(&[("seeder", "s3cret")])
        .start();
    let upstream_host = upstream.host();
    assert!(
        !upstream_host.contains(':'),
        "portless host {upstream_host}"
    );
    let mirror = Registry::open();
    let multi = images::push_multiplatform(
        &mirror,
        &format!("{upstream_host}/team/app"),
        "v1",
        &ImageSpec::seed(51),
    )
    .await;

    let pulled = skopeo_pull_via_mirror(
        mirror.port(),
        &upstream_host,
        "team/app",
        "v1",
        &SkopeoOptions::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pulled.manifest_digest, multi.manifest_digest);
    assert_eq!(pulled.layer_digests, multi.layer_digests());

    let all = SkopeoOptions {
        all_platforms: true,
        ..SkopeoOptions::default()
    };
    let pulled = skopeo_pull_via_mirror_only(mirror.port(), &upstream_host, "team/app", "v1", &all)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(Some(&pulled.reference_digest), multi.index_digest.as_ref());
    assert_eq!(pulled.manifest_digest, multi.manifest_digest);

    // A tag the mirror lacks: fallback to the (auth-requiring) upstream
    // fails, and with the unreachable primary it fails too.
    assert!(
        skopeo_pull_via_mirror(
            mirror.port(),
            &upstream_host,
            "team/app",
            "nope",
            &SkopeoOptions::default()
        )
        .await
        .is_err()
    );

    let pulled = oci_client_pull_via_mirror(mirror.port(), &upstream_host, "team/app", "v1")
        .await
        .expect("oci-client via mirror");
    assert_eq!(Some(&pulled.reference_digest), multi.index_digest.as_ref());
    assert_eq!(pulled.manifest_digest, multi.manifest_digest);
    assert_eq!(pulled.layer_digests, multi.layer_digests());
    assert!(
        mirror
            .log()
            .contains(&format!("/v2/{upstream_host}/team/app/manifests/v1"))
    );
}

#[tokio::test]
async fn containerd_pulls_directly_and_through_hosts_toml_mirror() {
    let registry = Registry::open();
    let single = images::push_image(&registry, "team/app", "v1", &ImageSpec::seed(61)).await;
    let multi =
        images::push_multiplatform(&registry, "team/multi", "v1", &ImageSpec::seed(62)).await;

    let containerd = Containerd::start();
    containerd.configure_direct(&registry.host());
    let opts = CtrPullOptions::default();

    // Full pull including unpack into the native snapshotter.
    let pulled = containerd
        .pull(&format!("{}/team/app:v1", registry.host()), &opts)
        .await
        .unwrap_or_else(|e| panic!("{e}\ncontainerd log:\n{}", containerd.log()));
    assert_eq!(pulled.reference_digest, single.manifest_digest);
    assert_eq!(pulled.layer_digests, single.layer_digests());

    let pulled = containerd
        .pull(&format!("{}/team/multi:v1", registry.host()), &opts)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(Some(&pulled.reference_digest), multi.index_digest.as_ref());
    assert_eq!(pulled.manifest_digest, multi.manifest_digest);
    assert_eq!(pulled.layer_digests, multi.layer_digests());

    // Mirror mechanics: an unreachable "upstream" whose hosts.toml routes
    // through `registry` as the mirror (distribution ignores `?ns=`).
    let fake_upstream = "127.0.0.1:1";
    containerd.configure_mirror(fake_upstream, registry.port(), false);
    let pulled = containerd
        .pull_via_mirror(
            fake_upstream,
            "team/multi",
            "v1",
            &CtrPullOptions {
                fetch_only: true,
                ..CtrPullOptions::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(Some(&pulled.reference_digest), multi.index_digest.as_ref());
    let log = registry.log();
    assert!(
        log.contains("/v2/team/multi/manifests/v1?ns=127.0.0.1%3A1"),
        "containerd sends ?ns=:\n{log}"
    );
}
