//! skopeo: pulls through a mirror (path-prefix addressing) or from a registry directly.

use std::path::PathBuf;

use super::{PullResult, amd64_entry, is_index, manifest_parts};
use crate::common::token_server::Credentials;
use crate::common::util::{CommandError, describe, run_checked, sha256_digest};

/// Where `skopeo copy` writes the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SkopeoDest {
    /// `oci:<dir>:x` with `--preserve-digests` (fails for Docker schema 2
    /// sources, which an OCI layout cannot hold without conversion).
    #[default]
    Oci,
    /// `dir:<dir>`: stores manifests byte-for-byte, works for every format.
    Dir,
}

/// Options for a skopeo pull.
#[derive(Debug, Clone, Default)]
pub struct SkopeoOptions {
    /// `--all`: copy every platform of an index (and keep the index).
    pub all_platforms: bool,
    pub dest: SkopeoDest,
    /// `--src-creds user:pass`; `None` means `--src-no-creds` and an empty
    /// auth file, so nothing can authenticate to an upstream directly.
    pub creds: Option<Credentials>,
    /// Content of the auth file (`REGISTRY_AUTH_FILE`), used instead of `--src-creds` /
    /// `--src-no-creds`: credentials for the mirror host itself.
    pub auth_file: Option<String>,
    /// `--src-cert-dir`: CA certificates (`*.crt`) to trust, with TLS verification on.
    pub cert_dir: Option<PathBuf>,
    /// Extra environment (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`).
    pub env: Vec<(String, String)>,
}

/// `registries.conf` mapping `upstream_host` to `primary_location` with one
/// insecure (plain-HTTP) mirror at `mirror_location`.
pub fn mirror_registries_conf(
    upstream_host: &str,
    primary_location: &str,
    mirror_location: &str,
) -> String {
    format!(
        "unqualified-search-registries = []\n\n\
         [[registry]]\n\
         prefix = \"{upstream_host}\"\n\
         location = \"{primary_location}\"\n\
         insecure = true\n\n\
         [[registry.mirror]]\n\
         location = \"{mirror_location}\"\n\
         insecure = true\n"
    )
}

/// Pulls `<upstream_host>/<repo>:<tag>` with skopeo through the path-prefix
/// mirror `127.0.0.1:<mirror_port>/<upstream_host>`.
///
/// skopeo falls back to the primary location if the mirror fails; with an
/// upstream that requires auth (and skopeo holding no credentials) such a
/// fallback fails, so success proves the mirror served the image. Use
/// [`skopeo_pull_via_mirror_only`] to rule fallback out completely.
pub async fn skopeo_pull_via_mirror(
    mirror_port: u16,
    upstream_host: &str,
    repo: &str,
    tag: &str,
    opts: &SkopeoOptions,
) -> Result<PullResult, CommandError> {
    let conf = mirror_registries_conf(
        upstream_host,
        upstream_host,
        &format!("127.0.0.1:{mirror_port}/{upstream_host}"),
    );
    skopeo_pull(&format!("{upstream_host}/{repo}:{tag}"), Some(&conf), opts).await
}

/// Like [`skopeo_pull_via_mirror`], but the primary location is an
/// unreachable address (`127.0.0.1:1`), so only the mirror can serve.
pub async fn skopeo_pull_via_mirror_only(
    mirror_port: u16,
    upstream_host: &str,
    repo: &str,
    tag: &str,
    opts: &SkopeoOptions,
) -> Result<PullResult, CommandError> {
    let conf = mirror_registries_conf(
        upstream_host,
        "127.0.0.1:1",
        &format!("127.0.0.1:{mirror_port}/{upstream_host}"),
    );
    skopeo_pull(&format!("{upstream_host}/{repo}:{tag}"), Some(&conf), opts).await
}

/// `skopeo copy docker://<reference> ...` with an optional `registries.conf`
/// content (`None`: an empty one, i.e. direct access).
pub async fn skopeo_pull(
    reference: &str,
    registries_conf: Option<&str>,
    opts: &SkopeoOptions,
) -> Result<PullResult, CommandError> {
    let dir = tempfile::Builder::new()
        .prefix("skopeo-")
        .tempdir()
        .map_err(|e| CommandError::other("skopeo setup".into(), e.to_string()))?;
    let setup = |name: &str, content: &str| -> Result<PathBuf, CommandError> {
        let path = dir.path().join(name);
        std::fs::write(&path, content).map_err(|e| {
            CommandError::other(
                "skopeo setup".into(),
                format!("write {}: {e}", path.display()),
            )
        })?;
        Ok(path)
    };
    let conf_path = setup(
        "registries.conf",
        registries_conf.unwrap_or("unqualified-search-registries = []\n"),
    )?;
    let auth_path = setup("auth.json", opts.auth_file.as_deref().unwrap_or("{}"))?;
    let policy_path = setup(
        "policy.json",
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )?;
    let registries_d = dir.path().join("registries.d");
    let tmp = dir.path().join("tmp");
    for d in [&registries_d, &tmp] {
        std::fs::create_dir_all(d)
            .map_err(|e| CommandError::other("skopeo setup".into(), e.to_string()))?;
    }
    let image_dir = dir.path().join("image");
    let dest = match opts.dest {
        SkopeoDest::Oci => format!("oci:{}:x", image_dir.display()),
        SkopeoDest::Dir => format!("dir:{}", image_dir.display()),
    };

    let mut cmd = tokio::process::Command::new("skopeo");
    // `--registries-conf` is a (hidden) global flag in skopeo 1.9; it replaces
    // /etc/containers/registries.conf and its drop-in directory.
    cmd.arg("--registries-conf")
        .arg(&conf_path)
        .arg("--registries.d")
        .arg(&registries_d)
        .arg("--policy")
        .arg(&policy_path)
        .arg("--tmpdir")
        .arg(&tmp)
        .arg("--command-timeout")
        .arg("120s")
        .arg("copy");
    match &opts.cert_dir {
        Some(dir) => {
            cmd.arg("--src-tls-verify=true")
                .arg("--src-cert-dir")
                .arg(dir);
        }
        None => {
            cmd.arg("--src-tls-verify=false");
        }
    }
    match (&opts.creds, &opts.auth_file) {
        (Some(c), _) => {
            cmd.arg("--src-creds")
                .arg(format!("{}:{}", c.username, c.password));
        }
        (None, Some(_)) => {}
        (None, None) => {
            cmd.arg("--src-no-creds");
        }
    }
    if opts.all_platforms {
        cmd.arg("--all");
    }
    if opts.dest == SkopeoDest::Oci {
        cmd.arg("--preserve-digests");
    }
    cmd.arg(format!("docker://{reference}")).arg(&dest);
    for (k, v) in &opts.env {
        cmd.env(k, v);
    }
    // No credentials from the environment, ever.
    cmd.env("REGISTRY_AUTH_FILE", &auth_path)
        .env("HOME", dir.path())
        .env("XDG_RUNTIME_DIR", dir.path())
        .env("XDG_CONFIG_HOME", dir.path());
    let description = describe(cmd.as_std());
    let output = run_checked(cmd).await?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let read = |p: PathBuf| -> Result<Vec<u8>, CommandError> {
        std::fs::read(&p).map_err(|e| {
            CommandError::other(description.clone(), format!("read {}: {e}", p.display()))
        })
    };
    let parse = |bytes: &[u8]| -> Result<serde_json::Value, CommandError> {
        serde_json::from_slice(bytes)
            .map_err(|e| CommandError::other(description.clone(), format!("bad JSON: {e}")))
    };
    let fail = |msg: String| CommandError::other(description.clone(), msg);

    match opts.dest {
        SkopeoDest::Oci => {
            // oci layout: index.json -> top descriptor; blobs/sha256/<hex>.
            let blob = |digest: &str| read(image_dir.join("blobs").join(digest.replace(':', "/")));
            let layout_index = parse(&read(image_dir.join("index.json"))?)?;
            let top = layout_index["manifests"][0]["digest"]
                .as_str()
                .ok_or_else(|| fail(format!("no manifest in index.json: {layout_index}")))?
                .to_string();
            let top_json = parse(&blob(&top)?)?;
            let manifest_digest = if is_index(&top_json) {
                amd64_entry(&top_json)
                    .ok_or_else(|| fail("index has no linux/amd64 entry".into()))?
            } else {
                top.clone()
            };
            let manifest_bytes = blob(&manifest_digest)?;
            let (config_digest, layer_digests) = manifest_parts(&parse(&manifest_bytes)?);
            Ok(PullResult {
                reference_digest: top,
                manifest_digest,
                layer_digests,
                config_digest,
                output: log,
            })
        }
        SkopeoDest::Dir => {
            // dir transport: manifest.json is the top manifest verbatim;
            // with --all, instances are stored as <hex>.manifest.json.
            let top_bytes = read(image_dir.join("manifest.json"))?;
            let top = sha256_digest(&top_bytes);
            let top_json = parse(&top_bytes)?;
            let (manifest_digest, manifest_json) = if is_index(&top_json) {
                let d = amd64_entry(&top_json)
                    .ok_or_else(|| fail("index has no linux/amd64 entry".into()))?;
                let hex = d.trim_start_matches("sha256:");
                let bytes = read(image_dir.join(format!("{hex}.manifest.json")))?;
                (d, parse(&bytes)?)
            } else {
                (top.clone(), top_json)
            };
            let (config_digest, layer_digests) = manifest_parts(&manifest_json);
            Ok(PullResult {
                reference_digest: top,
                manifest_digest,
                layer_digests,
                config_digest,
                output: log,
            })
        }
    }
}
