//! Tests of the credential store: precedence, sources, rotation, helpers, redaction.

use std::path::Path;

use base64::Engine as _;

use super::*;
use crate::credentials::helper::write_test_helper;

fn b64(user: &str, pass: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
}

fn basic(user: &str, pass: &str) -> Credential {
    Credential::Basic {
        username: user.into(),
        password: pass.into(),
    }
}

/// A docker config / .dockerconfigjson with `auth` entries.
fn auths(entries: &[(&str, &str, &str)]) -> String {
    let map: serde_json::Map<String, serde_json::Value> = entries
        .iter()
        .map(|(key, user, pass)| {
            (
                (*key).to_owned(),
                serde_json::json!({ "auth": b64(user, pass) }),
            )
        })
        .collect();
    serde_json::json!({ "auths": map }).to_string()
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn toml_paths(paths: &[&Path]) -> String {
    let quoted: Vec<String> = paths
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect();
    format!("[{}]", quoted.join(", "))
}

fn config(text: &str) -> Config {
    toml::from_str(text).unwrap()
}

fn store(text: &str) -> CredentialStore {
    {
        let c = config(text);
        CredentialStore::from_config(&c, &c.registries)
    }
}

async fn get(store: &CredentialStore, host: &str, repo: &str) -> Option<Credential> {
    let host = RegistryHost::parse(host).unwrap();
    let repo = Repository::parse(repo).unwrap();
    store.lookup(&host, &repo).await.unwrap()
}

#[tokio::test]
async fn the_longest_matching_key_wins() {
    let dir = tempfile::tempdir().unwrap();
    let (docker, k8s) = (dir.path().join("config.json"), dir.path().join("k8s.json"));
    write(
        &docker,
        &auths(&[
            ("r.example/team", "docker", "p1"),
            ("r.example/te", "short", "p0"),
        ]),
    );
    write(&k8s, &auths(&[("r.example/team/app", "k8s", "p2")]));
    let s = store(&format!(
        "[registries.\"r.example\"]\nusername = \"config\"\npassword = \"p3\"\n\
         [credentials]\ndocker-config = {}\nkubernetes-secrets = {}\n",
        toml_paths(&[&docker]),
        toml_paths(&[&k8s])
    ));
    assert_eq!(
        get(&s, "r.example", "team/app").await,
        Some(basic("k8s", "p2"))
    );
    assert_eq!(
        get(&s, "r.example", "team/app/sub").await,
        Some(basic("k8s", "p2"))
    );
    assert_eq!(
        get(&s, "r.example", "team/other").await,
        Some(basic("docker", "p1"))
    );
    assert_eq!(
        get(&s, "r.example", "team").await,
        Some(basic("docker", "p1"))
    );
    // `r.example/te` and `r.example/team` must not match `teamx`: only the host key does.
    assert_eq!(
        get(&s, "r.example", "teamx/app").await,
        Some(basic("config", "p3"))
    );
    assert_eq!(
        get(&s, "r.example", "te/app").await,
        Some(basic("short", "p0"))
    );
    assert_eq!(get(&s, "other.example", "team/app").await, None);
}

#[tokio::test]
async fn ties_go_to_config_then_docker_configs_then_kubernetes_secrets_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let d1 = dir.path().join("d1.json");
    let d2 = dir.path().join("d2.json");
    let k1 = dir.path().join("k1.json");
    let k2 = dir.path().join("k2.json");
    write(
        &d1,
        &auths(&[("b.example", "d1", "p"), ("c.example/ns", "d1", "p")]),
    );
    write(
        &d2,
        &auths(&[
            ("a.example", "d2", "p"),
            ("b.example", "d2", "p"),
            ("c.example/ns", "d2", "p"),
        ]),
    );
    write(
        &k1,
        &auths(&[("a.example", "k1", "p"), ("d.example", "k1", "p")]),
    );
    write(
        &k2,
        &auths(&[("d.example", "k2", "p"), ("e.example", "k2", "p")]),
    );
    let s = store(&format!(
        "[registries.\"A.example\"]\nusername = \"config\"\npassword = \"p\"\n\
         [credentials]\ndocker-config = {}\nkubernetes-secrets = {}\n",
        toml_paths(&[&d1, &d2]),
        toml_paths(&[&k1, &k2])
    ));
    assert_eq!(get(&s, "a.example", "x").await, Some(basic("config", "p")));
    assert_eq!(get(&s, "b.example", "x").await, Some(basic("d1", "p")));
    assert_eq!(get(&s, "c.example", "ns/x").await, Some(basic("d1", "p")));
    assert_eq!(get(&s, "d.example", "x").await, Some(basic("k1", "p")));
    assert_eq!(get(&s, "e.example", "x").await, Some(basic("k2", "p")));
}

#[tokio::test]
async fn docker_hub_legacy_keys_serve_docker_io() {
    let dir = tempfile::tempdir().unwrap();
    let docker = dir.path().join("config.json");
    write(
        &docker,
        &auths(&[
            ("https://index.docker.io/v1/", "legacy", "p"),
            ("docker.io/myorg", "org", "p"),
        ]),
    );
    let s = store(&format!(
        "[credentials]\ndocker-config = {}\n",
        toml_paths(&[&docker])
    ));
    for host in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
        assert_eq!(
            get(&s, host, "library/alpine").await,
            Some(basic("legacy", "p"))
        );
        assert_eq!(get(&s, host, "myorg/app").await, Some(basic("org", "p")));
    }
}

#[tokio::test]
async fn a_canonical_key_beats_an_alias_of_it_in_the_same_file() {
    let dir = tempfile::tempdir().unwrap();
    let docker = dir.path().join("config.json");
    write(
        &docker,
        &auths(&[
            ("https://index.docker.io/v1/", "legacy", "p"),
            ("docker.io", "modern", "p"),
        ]),
    );
    let s = store(&format!(
        "[credentials]\ndocker-config = {}\n",
        toml_paths(&[&docker])
    ));
    assert_eq!(
        get(&s, "docker.io", "library/alpine").await,
        Some(basic("modern", "p"))
    );
}

#[tokio::test]
async fn token_entries_are_returned_as_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let docker = dir.path().join("config.json");
    write(
        &docker,
        r#"{"auths": {"id.example": {"username": "me", "identitytoken": "refresh"},
                      "rt.example": {"registrytoken": "bearer"}}}"#,
    );
    let s = store(&format!(
        "[credentials]\ndocker-config = {}\n",
        toml_paths(&[&docker])
    ));
    assert_eq!(
        get(&s, "id.example", "x").await,
        Some(Credential::IdentityToken {
            username: Some("me".into()),
            token: "refresh".into()
        })
    );
    assert_eq!(
        get(&s, "rt.example", "x").await,
        Some(Credential::RegistryToken("bearer".into()))
    );
}

#[tokio::test]
async fn a_rotated_docker_config_takes_effect_on_the_next_lookup() {
    let dir = tempfile::tempdir().unwrap();
    let docker = dir.path().join("config.json");
    write(&docker, &auths(&[("r.example", "u", "pass-one")]));
    let s = store(&format!(
        "[credentials]\ndocker-config = {}\n",
        toml_paths(&[&docker])
    ));
    assert_eq!(
        get(&s, "r.example", "x").await,
        Some(basic("u", "pass-one"))
    );
    // In place, same size, right away.
    write(&docker, &auths(&[("r.example", "u", "pass-two")]));
    assert_eq!(
        get(&s, "r.example", "x").await,
        Some(basic("u", "pass-two"))
    );
    // Atomically replaced.
    let tmp = dir.path().join("config.json.tmp");
    write(&tmp, &auths(&[("r.example", "u", "pass-three")]));
    std::fs::rename(&tmp, &docker).unwrap();
    assert_eq!(
        get(&s, "r.example", "x").await,
        Some(basic("u", "pass-three"))
    );
}

/// The layout of a mounted secret: `.dockerconfigjson -> ..data/.dockerconfigjson`,
/// `..data -> ..<timestamp>`; an update writes a new timestamped directory and renames a
/// new `..data` symlink over the old one.
fn mount_secret_version(secret: &Path, version: &str, content: &str) {
    use std::os::unix::fs::symlink;
    let versioned = secret.join(format!("..{version}"));
    std::fs::create_dir(&versioned).unwrap();
    write(&versioned.join(".dockerconfigjson"), content);
    let tmp = secret.join("..data_tmp");
    symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, secret.join("..data")).unwrap();
    let link = secret.join(".dockerconfigjson");
    if std::fs::symlink_metadata(&link).is_err() {
        symlink("..data/.dockerconfigjson", &link).unwrap();
    }
}

#[tokio::test]
async fn a_kubernetes_secret_update_by_symlink_swap_takes_effect() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("pull-secret");
    std::fs::create_dir(&secret).unwrap();
    mount_secret_version(
        &secret,
        "2024_01_01",
        &auths(&[("r.example", "u", "pass-one")]),
    );
    let s = store(&format!(
        "[credentials]\nkubernetes-secrets = {}\n",
        toml_paths(&[&secret])
    ));
    assert_eq!(
        get(&s, "r.example", "x").await,
        Some(basic("u", "pass-one"))
    );
    mount_secret_version(
        &secret,
        "2024_01_02",
        &auths(&[("r.example", "u", "pass-two")]),
    );
    std::fs::remove_dir_all(secret.join("..2024_01_01")).unwrap();
    assert_eq!(
        get(&s, "r.example", "x").await,
        Some(basic("u", "pass-two"))
    );
}

#[tokio::test]
async fn a_broken_file_keeps_its_last_good_credentials_and_others_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let docker = dir.path().join("config.json");
    let broken = dir.path().join("broken.json");
    let k8s = dir.path().join("k8s.json");
    write(&docker, &auths(&[("r.example", "u", "pass-one")]));
    write(&broken, "{\"auths\": {\"s.example\": {\"auth\": \"c2VjcmV0");
    write(&k8s, &auths(&[("s.example", "k8s", "p")]));
    let s = store(&format!(
        "[credentials]\ndocker-config = {}\nkubernetes-secrets = {}\n",
        toml_paths(&[&docker, &broken, Path::new("/nonexistent/config.json")]),
        toml_paths(&[&k8s])
    ));
    assert_eq!(
        get(&s, "r.example", "x").await,
        Some(basic("u", "pass-one"))
    );
    assert_eq!(get(&s, "s.example", "x").await, Some(basic("k8s", "p")));

    write(&docker, "{\"auths\": {\"r.exa");
    assert_eq!(
        get(&s, "r.example", "x").await,
        Some(basic("u", "pass-one"))
    );
    write(&docker, &auths(&[("r.example", "u", "pass-two")]));
    assert_eq!(
        get(&s, "r.example", "x").await,
        Some(basic("u", "pass-two"))
    );
}

#[tokio::test]
async fn config_secrets_are_reread_and_their_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    write(&pw, "pass-one\n");
    let s = store(&format!(
        "[registries.\"r.example\"]\nusername = \"u\"\npassword = {{ file = {:?} }}\n",
        pw.display().to_string()
    ));
    assert_eq!(
        get(&s, "r.example", "x").await,
        Some(basic("u", "pass-one"))
    );
    write(&pw, "pass-two\n");
    assert_eq!(
        get(&s, "r.example", "x").await,
        Some(basic("u", "pass-two"))
    );
    std::fs::remove_file(&pw).unwrap();
    let host = RegistryHost::parse("r.example").unwrap();
    let repo = Repository::parse("x").unwrap();
    let e = s.lookup(&host, &repo).await.unwrap_err().to_string();
    assert!(
        e.starts_with("registries.\"r.example\".password (file "),
        "{e}"
    );
    assert!(!e.contains("pass-"), "{e}");
}

fn helper_store(dir: &Path, docker_json: &str, timeout: &str) -> CredentialStore {
    let docker = dir.join("config.json");
    write(&docker, docker_json);
    let cfg = config(&format!(
        "[credentials]\ndocker-config = {}\nhelper-timeout = {timeout:?}\n",
        toml_paths(&[&docker])
    ));
    CredentialStore::with_helper_dir(&cfg, dir.to_owned())
}

const ECHO_HELPER: &str = r#"host=$(cat)
printf '{"ServerURL":"%s","Username":"%s","Secret":"s3cret-from-helper"}' "$host" "$host""#;

#[tokio::test]
async fn cred_helpers_and_creds_store_run_helpers() {
    let dir = tempfile::tempdir().unwrap();
    write_test_helper(dir.path(), "echo", ECHO_HELPER);
    write_test_helper(
        dir.path(),
        "nothing",
        "echo 'credentials not found in native keychain'; exit 1",
    );
    let s = helper_store(
        dir.path(),
        &format!(
            r#"{{"credsStore": "echo",
                "credHelpers": {{"gcr.io": "echo", "none.example": "nothing",
                                 "fallback.example": "nothing"}},
                "auths": {{"r.example": {{"auth": "{}"}},
                           "fallback.example/ns": {{"auth": "{}"}},
                           "fallback.example": {{"auth": "{}"}}}}}}"#,
            b64("static", "p"),
            b64("ns", "p"),
            b64("host", "p")
        ),
        "10s",
    );
    let user = |c: Option<Credential>| match c {
        Some(Credential::Basic { username, .. }) => Some(username),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        user(get(&s, "docker.io", "library/alpine").await).as_deref(),
        Some("https://index.docker.io/v1/")
    );
    assert_eq!(
        user(get(&s, "gcr.io", "p/app").await).as_deref(),
        Some("gcr.io")
    );
    assert_eq!(
        user(get(&s, "q.example", "app").await).as_deref(),
        Some("q.example")
    );
    // An auths entry beats credsStore for its host.
    assert_eq!(
        user(get(&s, "r.example", "app").await).as_deref(),
        Some("static")
    );
    // credHelpers replaces credsStore for its host; "not found" means no match, so the
    // next candidate is asked.
    assert_eq!(get(&s, "none.example", "app").await, None);
    assert_eq!(
        user(get(&s, "fallback.example", "app").await).as_deref(),
        Some("host")
    );
    // A longer auths key beats the host's helper.
    assert_eq!(
        user(get(&s, "fallback.example", "ns/app").await).as_deref(),
        Some("ns")
    );
}

#[tokio::test]
async fn helper_lookups_through_the_store_are_shared_and_cached() {
    let dir = tempfile::tempdir().unwrap();
    let counter = dir.path().join("calls");
    write_test_helper(
        dir.path(),
        "counted",
        &format!(
            "echo call >> '{}'\nsleep 0.3\n{ECHO_HELPER}",
            counter.display()
        ),
    );
    let s = helper_store(dir.path(), r#"{"credsStore": "counted"}"#, "10s");
    let (host, repo) = (
        RegistryHost::parse("r.example").unwrap(),
        Repository::parse("app").unwrap(),
    );
    let lookups = (0..50).map(|_| s.lookup(&host, &repo));
    for got in futures_util::future::join_all(lookups).await {
        assert!(got.unwrap().is_some());
    }
    let calls = std::fs::read_to_string(&counter).unwrap();
    assert_eq!(calls.lines().count(), 1, "{calls}");
}

#[tokio::test]
async fn helper_failures_are_errors_that_name_the_helper() {
    let dir = tempfile::tempdir().unwrap();
    write_test_helper(dir.path(), "slow", "exec sleep 30");
    let s = helper_store(dir.path(), r#"{"credsStore": "slow"}"#, "300ms");
    let host = RegistryHost::parse("r.example").unwrap();
    let repo = Repository::parse("app").unwrap();
    let e = s.lookup(&host, &repo).await.unwrap_err().to_string();
    assert!(
        e.starts_with("credential helper docker-credential-slow for r.example: no answer"),
        "{e}"
    );
}

#[tokio::test]
async fn debug_output_and_errors_hold_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let docker = dir.path().join("config.json");
    write(&docker, &auths(&[("r.example", "u", "file-secret")]));
    let broken = dir.path().join("broken.json");
    write(
        &broken,
        "{\"auths\": {\"x.example\": {\"password\": 8675309, \"auth\": \"trunc",
    );
    write_test_helper(dir.path(), "leaky", "echo 'helper-secret'; exit 2");
    let helper_cfg = dir.path().join("helper.json");
    write(&helper_cfg, r#"{"credsStore": "leaky"}"#);
    let inline_auth = b64("u", "inline-auth-secret");
    let cfg = config(&format!(
        "[registries.\"a.example\"]\nusername = \"u\"\npassword = \"inline-secret\"\n\
         [registries.\"b.example\"]\nauth = {inline_auth:?}\n\
         [registries.\"c.example\"]\nregistrytoken = \"inline-token-secret\"\n\
         [credentials]\ndocker-config = {}\n",
        toml_paths(&[&docker, &broken, &helper_cfg])
    ));
    let s = CredentialStore::with_helper_dir(&cfg, dir.path().to_owned());
    for host in ["a.example", "b.example", "c.example", "r.example"] {
        assert!(get(&s, host, "x").await.is_some());
    }
    let debug = format!("{s:?}");
    assert!(debug.contains("registries.\\\"a.example\\\""), "{debug}");
    assert!(debug.contains("config.json"), "{debug}");

    let problem = s.sources.files[1].snapshot().problem;
    let host = RegistryHost::parse("h.example").unwrap();
    let repo = Repository::parse("x").unwrap();
    let helper_error = s.lookup(&host, &repo).await.unwrap_err();
    let texts = [
        debug,
        format!("{problem:?}"),
        helper_error.to_string(),
        format!("{helper_error:?}"),
    ];
    let file_auth = b64("u", "file-secret");
    for text in texts {
        for secret in [
            "inline-secret",
            "inline-token-secret",
            "file-secret",
            "helper-secret",
            "8675309",
            "trunc",
            "inline-auth-secret",
            &inline_auth,
            &file_auth,
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
}
