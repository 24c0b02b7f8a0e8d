//! Upstream TLS and outbound proxies, against distribution 2.8 served over HTTPS with a
//! certificate from a test CA (rcgen), and a recording forward proxy (`FaultProxy`, which
//! accepts absolute-form requests and forwards them by path to its registry).
//!
//! TLS: `ca-certs` makes a private CA trusted; without it (or with another CA) the pull is a
//! 502 naming the certificate problem; `insecure-skip-verify` accepts any certificate; a
//! `ca-certs` file that holds no certificate is a config error naming the exact key.
//! Proxies: `proxy = "<url>"` and `proxy = "env"` (the default) send every upstream request
//! through the proxy in absolute form; `proxy = "none"`, `NO_PROXY` naming the registry, and an
//! `HTTPS_PROXY` for a plain-HTTP endpoint send nothing through it; a proxy pointing at
//! stevedore's own listener is ignored instead of looping.

mod common;

use std::path::Path;

use common::faults::FaultProxy;
use common::images::{self, ImageSpec, PushedImage};
use common::pki::Pki;
use common::registry::Registry;
use common::stevedore::{Stevedore, registry_section};
use reqwest::StatusCode;
use stevedore::config::Config;
use stevedore::upstream::ProxyEnv;

use common::pulls::{OCI_ACCEPT, all_blobs, error_of, get, pull_all};

// ---------------------------------------------------------------------------------------------
// Helpers

/// A TOML string literal for a path.
fn toml_path(p: &Path) -> String {
    toml::Value::String(p.display().to_string()).to_string()
}

// ---------------------------------------------------------------------------------------------
// Certificates

/// An image pushed over plain HTTP to one registry and served over HTTPS (certificate from
/// `pki`) by a second registry on the same storage.
struct TlsUpstream {
    pki: Pki,
    _push: Registry,
    tls: Registry,
    image: PushedImage,
}

impl TlsUpstream {
    async fn start(seed: u64) -> TlsUpstream {
        let pki = Pki::new("stevedore");
        let push = Registry::open();
        let image = images::push_image(&push, "team/app", "v1", &ImageSpec::seed(seed)).await;
        let tls = Registry::builder()
            .tls(&pki.cert, &pki.key)
            .storage_dir(push.storage_dir())
            .start();
        assert!(tls.url().starts_with("https://127.0.0.1:"), "{}", tls.url());

        // The harness itself: HTTPS with the CA works, plain HTTP does not.
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&pki.ca).expect("read ca.pem"))
            .expect("CA certificate");
        let trusting = reqwest::Client::builder()
            .no_proxy()
            .tls_certs_merge([ca])
            .build()
            .expect("client trusting the test CA");
        let r = trusting
            .get(format!(
                "{}/v2/team/app/manifests/{}",
                tls.url(),
                image.manifest_digest
            ))
            .header("accept", OCI_ACCEPT)
            .send()
            .await
            .expect("GET over HTTPS trusting the test CA");
        assert_eq!(r.status(), StatusCode::OK);
        let plain = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let r = plain
            .get(format!("http://{}/v2/", tls.host()))
            .send()
            .await
            .expect("plain HTTP to the TLS port");
        assert_eq!(
            r.status(),
            StatusCode::BAD_REQUEST,
            "the registry speaks TLS"
        );

        TlsUpstream {
            pki,
            _push: push,
            tls,
            image,
        }
    }

    fn section(&self, extra: &str) -> String {
        registry_section(&self.tls.host(), &self.tls.url(), extra)
    }
}

// ---------------------------------------------------------------------------------------------
// TLS

#[tokio::test(flavor = "multi_thread")]
async fn https_upstream_with_ca_certs_pulls_verified_content() {
    let up = TlsUpstream::start(301).await;
    let proxy =
        Stevedore::start(&up.section(&format!("ca-certs = [{}]", toml_path(&up.pki.ca)))).await;
    pull_all(&proxy, &up.tls.host(), &up.image).await;
    // The requests reached the TLS registry (its own access log), not only the push registry.
    let log = up.tls.log();
    assert!(
        log.contains(&format!("/v2/team/app/blobs/{}", up.image.config_digest)),
        "TLS registry log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn https_upstream_with_an_unknown_ca_is_502_naming_the_certificate_problem() {
    let up = TlsUpstream::start(302).await;
    let host = up.tls.host();
    let other = Pki::new("other");
    for (case, extra) in [
        ("no ca-certs", String::new()),
        (
            "another CA in ca-certs",
            format!("ca-certs = [{}]", toml_path(&other.ca)),
        ),
    ] {
        let proxy = Stevedore::start(&up.section(&extra)).await;
        for what in [
            "manifests/v1".to_owned(),
            format!("blobs/{}", up.image.config_digest),
        ] {
            let (status, code, message) =
                error_of(get(&proxy, &host, "team/app", &what).await).await;
            assert_eq!(status, StatusCode::BAD_GATEWAY, "{case}, {what}: {message}");
            assert_eq!(code, "UNAVAILABLE", "{case}, {what}: {message}");
            assert!(
                message.contains(&host),
                "{case}, {what}: names the registry: {message}"
            );
            // rustls: "invalid peer certificate: UnknownIssuer".
            let lower = message.to_ascii_lowercase();
            assert!(
                lower.contains("invalid peer certificate") && message.contains("UnknownIssuer"),
                "{case}, {what}: says the certificate is not trusted: {message}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn insecure_skip_verify_accepts_an_untrusted_certificate() {
    let up = TlsUpstream::start(303).await;
    let proxy = Stevedore::start(&up.section("insecure-skip-verify = true")).await;
    pull_all(&proxy, &up.tls.host(), &up.image).await;
}

#[test]
fn ca_certs_without_a_certificate_are_a_config_error_naming_the_key() {
    let pki = Pki::new("config");
    let not_pem = pki.file("not-pem.txt", "this is not a certificate\n");
    let bad_block = pki.file(
        "bad-block.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    );
    // A common mistake: the key instead of the certificate.
    let key_only = pki.key.clone();
    for (list, bad_index) in [
        (format!("[{}]", toml_path(&not_pem)), 0),
        (
            format!("[{}, {}]", toml_path(&pki.ca), toml_path(&bad_block)),
            1,
        ),
        (format!("[{}]", toml_path(&key_only)), 0),
    ] {
        let text = format!(
            "[registries.\"r.example\"]\nendpoints = [\"https://r.example\"]\nca-certs = {list}\n"
        );
        let err = match Config::from_toml(&text, "tls.toml") {
            Ok(_) => panic!("ca-certs = {list} was accepted"),
            Err(e) => e,
        };
        let bad_path = match bad_index {
            0 if list.contains("not-pem") => &not_pem,
            0 => &key_only,
            _ => &bad_block,
        };
        let key = format!("registries.\"r.example\".ca-certs[{bad_index}]");
        assert_eq!(err.problems.len(), 1, "ca-certs = {list}: {err}");
        let p = &err.problems[0];
        assert_eq!(p.key, key, "{err}");
        assert!(
            p.message.contains(&bad_path.display().to_string()),
            "names the file: {err}"
        );
        assert!(
            err.to_string()
                .starts_with(&format!("tls.toml: {key}: {}", bad_path.display())),
            "{err}"
        );
    }

    // The good CA alone is accepted.
    let text = format!(
        "[registries.\"r.example\"]\nendpoints = [\"https://r.example\"]\nca-certs = [{}]\n",
        toml_path(&pki.ca)
    );
    if let Err(e) = Config::from_toml(&text, "tls.toml") {
        panic!("a PEM CA certificate was refused: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Outbound proxies

/// A plain-HTTP registry with an image, and a recording forward proxy in front of it.
struct ProxiedUpstream {
    registry: Registry,
    forward: FaultProxy,
    image: PushedImage,
}

impl ProxiedUpstream {
    async fn start(seed: u64) -> ProxiedUpstream {
        let registry = Registry::open();
        let image = images::push_image(&registry, "team/app", "v1", &ImageSpec::seed(seed)).await;
        let forward = FaultProxy::start(&registry.url()).await;
        ProxiedUpstream {
            registry,
            forward,
            image,
        }
    }

    fn host(&self) -> String {
        self.registry.host()
    }

    fn section(&self, extra: &str) -> String {
        registry_section(&self.host(), &self.registry.url(), extra)
    }

    fn env(&self) -> ProxyEnv {
        ProxyEnv {
            http: Some(self.forward.url()),
            https: None,
            no_proxy: None,
        }
    }

    /// Asserts that the forward proxy received the manifest and every blob request, each in
    /// absolute form for the registry (as a client sends to an HTTP proxy), and nothing else.
    fn assert_all_proxied(&self, case: &str) {
        let seen = self.forward.seen();
        let prefix = format!("http://{}/v2/", self.host());
        for s in &seen {
            assert!(
                s.target.starts_with(&prefix),
                "{case}: not an absolute-form request for the registry: {s:?}"
            );
        }
        let mut wanted = vec!["/v2/team/app/manifests/v1".to_owned()];
        wanted.extend(
            all_blobs(&self.image)
                .iter()
                .map(|d| format!("/v2/team/app/blobs/{d}")),
        );
        for path in wanted {
            assert!(
                seen.iter()
                    .any(|s| s.method == "GET" && s.path_and_query == path),
                "{case}: GET {path} did not go through the proxy; it saw {seen:#?}"
            );
        }
    }

    fn assert_none_proxied(&self, case: &str) {
        let seen = self.forward.seen();
        assert!(seen.is_empty(), "{case}: the proxy saw {seen:#?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configured_proxy_url_carries_every_upstream_request() {
    let up = ProxiedUpstream::start(311).await;
    let proxy = Stevedore::start(&up.section(&format!("proxy = \"{}\"", up.forward.url()))).await;
    pull_all(&proxy, &up.host(), &up.image).await;
    up.assert_all_proxied("proxy = <url>");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_environment_proxy_is_used_by_default_and_with_proxy_env() {
    let up = ProxiedUpstream::start(312).await;
    for (case, extra) in [("no proxy key", ""), ("proxy = \"env\"", "proxy = \"env\"")] {
        up.forward.reset_seen();
        let proxy = Stevedore::start_with_env(&up.section(extra), &up.env()).await;
        pull_all(&proxy, &up.host(), &up.image).await;
        up.assert_all_proxied(case);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_none_no_proxy_and_https_only_proxies_send_nothing_through_the_proxy() {
    let up = ProxiedUpstream::start(313).await;
    let env = up.env();
    let cases = [
        // An explicit "none" beats the environment.
        ("proxy = \"none\"", "proxy = \"none\"", env.clone()),
        (
            "NO_PROXY naming the registry host",
            "",
            ProxyEnv {
                no_proxy: Some("127.0.0.1".to_owned()),
                ..env.clone()
            },
        ),
        (
            "NO_PROXY list naming the registry host",
            "",
            ProxyEnv {
                no_proxy: Some("example.com, 127.0.0.1".to_owned()),
                ..env.clone()
            },
        ),
        // HTTPS_PROXY is for https:// endpoints; this one is plain HTTP.
        (
            "HTTPS_PROXY only, http:// endpoint",
            "",
            ProxyEnv {
                https: Some(up.forward.url()),
                http: None,
                no_proxy: None,
            },
        ),
    ];
    for (case, extra, env) in cases {
        up.forward.reset_seen();
        let proxy = Stevedore::start_with_env(&up.section(extra), &env).await;
        pull_all(&proxy, &up.host(), &up.image).await;
        up.assert_none_proxied(case);
    }

    // Control: a NO_PROXY naming another host leaves the registry proxied.
    up.forward.reset_seen();
    let env = ProxyEnv {
        no_proxy: Some("example.com".to_owned()),
        ..up.env()
    };
    let proxy = Stevedore::start_with_env(&up.section(""), &env).await;
    pull_all(&proxy, &up.host(), &up.image).await;
    up.assert_all_proxied("NO_PROXY naming another host");
}

/// stevedore's real listener is written into the config as `[server] listen`, and the proxy
/// (configured or from the environment) points at it. Used, it would send
/// `GET http://<registry>/v2/team/app/…` to stevedore itself, which would fetch it through
/// itself again — a loop until the connection limits refuse it. Ignored, the registry is
/// reached directly.
#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_pointing_at_stevedores_own_listener_is_ignored() {
    let up = ProxiedUpstream::start(314).await;
    for case in ["configured 127.0.0.1", "environment localhost"] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind stevedore");
        let port = listener.local_addr().expect("address").port();
        let (extra, env) = if case.starts_with("configured") {
            (
                format!("proxy = \"http://127.0.0.1:{port}\""),
                ProxyEnv::default(),
            )
        } else {
            (
                String::new(),
                ProxyEnv {
                    http: Some(format!("http://localhost:{port}")),
                    https: None,
                    no_proxy: None,
                },
            )
        };
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n\n{}",
            up.section(&extra)
        );
        let proxy = Stevedore::start_on(listener, &config, &env).await;
        assert_eq!(proxy.port(), port);
        pull_all(&proxy, &up.host(), &up.image).await;
    }

    // Control: the same kind of proxy at *another* stevedore, one that does not serve this
    // registry, is used, and the pull fails there (stevedore refuses to forward-proxy for
    // registries it has no section for), so a passing pull above means the proxy was skipped.
    let other = Stevedore::start("").await;
    let proxy = Stevedore::start(&up.section(&format!("proxy = \"{}\"", other.url()))).await;
    let (status, code, message) =
        error_of(get(&proxy, &up.host(), "team/app", "manifests/v1").await).await;
    // The other stevedore refuses the unserved registry (403 DENIED), which this one passes on.
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "DENIED"),
        "{message}"
    );
}
