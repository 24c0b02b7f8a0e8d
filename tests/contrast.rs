//! Registry sections as Contrast names them, and Contrast's image-puller file as a source:
//! the file operators give guests today supplies stevedore's credentials and CA certificates
//! for the lab's HTTPS registry (with token auth), and a change to it is picked up without a
//! restart. Pattern keys decide which CONNECTs the forward proxy serves.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use base64::Engine as _;
use common::lab::LabRegistry;
use common::pulls::error_of;
use common::stevedore::Stevedore;

fn contrast_file(auth_user: &str, auth_password: &str, ca_pem: &str) -> String {
    let auth =
        base64::engine::general_purpose::STANDARD.encode(format!("{auth_user}:{auth_password}"));
    format!(
        "[extra-env]\nHTTPS_PROXY = \"http://stevedore:5000\"\n\n\
         [registries.\"registry.test.\"]\nauth = \"{auth}\"\nca-certs = '''\n{ca_pem}'''\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_contrast_file_supplies_credentials_and_cas_and_is_reread() {
    // The plain registry owns the storage both serve: it must live as long as the test.
    let LabRegistry {
        tokens,
        plain: _plain,
        tls,
        pki,
        image,
    } = LabRegistry::start(1401).await;
    let ca_pem = std::fs::read_to_string(&pki.ca).expect("lab CA");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("imagepuller.toml");
    std::fs::write(&file, contrast_file("puller", "puller-secret", &ca_pem)).expect("write");
    let realm = url::Url::parse(tokens.url()).expect("realm");
    // stevedore's own section says where the registry is; the file says how to trust and
    // authenticate to it.
    let proxy = Stevedore::start(&format!(
        "[credentials]\ncontrast = [\"{}\"]\n\
         [registries.\"registry.test\"]\nendpoints = [\"{}\"]\nallow-private-network = true\n\
         auth-realms = [\"{}\"]\n",
        file.display(),
        tls.url(),
        realm.origin().ascii_serialization()
    ))
    .await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let get = |what: String| {
        let c = client.clone();
        let url = format!("{}/v2/team/app/{what}?ns=registry.test", proxy.url());
        async move {
            c.get(url)
                .header("accept", "*/*")
                .send()
                .await
                .expect("request")
        }
    };
    let r = get("manifests/v1".into()).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    assert_eq!(
        r.headers()["docker-content-digest"],
        image.manifest_digest.as_str()
    );
    assert_eq!(
        tokens
            .requests()
            .last()
            .and_then(|r| r.subject.clone())
            .as_deref(),
        Some("puller"),
        "the file's credential was used"
    );

    // The file changes: a credential the token server refuses. Within seconds, new requests
    // use it (and are refused by the registry, never with the old credential).
    std::fs::write(&file, contrast_file("puller", "wrong", &ca_pem)).expect("rewrite");
    let mut refused = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let r = get(format!("blobs/{}", image.config_digest)).await;
        if r.status() == 403 {
            let (_, code, message) = error_of(r).await;
            assert_eq!(code, "DENIED");
            assert!(!message.contains("wrong"), "{message}");
            refused = true;
            break;
        }
    }
    assert!(refused, "the rewritten file was never used");
    // A file that does not parse keeps the sections in use.
    std::fs::write(&file, "[registries.\"..\"]\n").expect("break");
    tokio::time::sleep(Duration::from_secs(6)).await;
    std::fs::write(&file, contrast_file("puller", "puller-secret", &ca_pem)).expect("restore");
    let mut restored = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if get(format!("blobs/{}", image.config_digest)).await.status() == 200 {
            restored = true;
            break;
        }
    }
    assert!(restored);
}

fn connect_status(proxy: SocketAddr, target: &str) -> String {
    let mut s = TcpStream::connect(proxy).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(s, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").expect("write");
    let mut buf = [0u8; 12];
    let _ = s.read(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn connects_are_served_by_contrast_style_keys() {
    let proxy =
        Stevedore::start("[registries.\".registry.test.\"]\n[registries.\"exact.example.\"]\n")
            .await;
    let addr = proxy.addr;
    let answers = tokio::task::spawn_blocking(move || {
        [
            "a.registry.test:443",
            "deep.a.registry.test:443",
            "exact.example:443",
            "registry.test:443",
            "sub.exact.example:443",
            "xregistry.test:443",
        ]
        .map(|t| (t, connect_status(addr, t)))
    })
    .await
    .expect("join");
    for (target, status) in answers {
        let served = matches!(
            target,
            "a.registry.test:443" | "deep.a.registry.test:443" | "exact.example:443"
        );
        let expected = if served {
            "HTTP/1.1 200"
        } else {
            "HTTP/1.1 403"
        };
        assert_eq!(status, expected, "{target}");
    }
    // "." serves every registry.
    let all = Stevedore::start("[registries.\".\"]\n").await;
    let addr = all.addr;
    let status = tokio::task::spawn_blocking(move || connect_status(addr, "anything.example:443"))
        .await
        .expect("join");
    assert_eq!(status, "HTTP/1.1 200");
}
