//! Test images generated in Rust (no network) and pushed to a real registry
//! over the distribution push API.
//!
//! * Layers are real gzip'ed tar archives with deterministic content derived
//!   from a seed (fixed mtimes/owners, fixed gzip header), so the same seed
//!   always yields the same digests.
//! * [`large_layer`] produces an incompressible layer of a chosen size.
//! * Images can be OCI (`application/vnd.oci.image.manifest.v1+json`) or
//!   Docker schema 2, single-platform or a linux/amd64 + linux/arm64 index.
//!
//! [`RegistryClient`] is a small distribution API client that handles the
//! `401` challenge (Basic or Bearer via the realm) the way real clients do.
//! It is also handy for raw requests against the proxy under test.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_LENGTH, HeaderMap, LOCATION, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use serde_json::json;
use url::Url;

use super::registry::Registry;
use super::token_server::Credentials;
use super::util::{BoxError, sha256_digest};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Every manifest media type, for `Accept` headers.
pub const ALL_MANIFEST_TYPES: &[&str] = &[
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
];

/// Blobs above this size are pushed with a chunked (PATCH) upload.
const CHUNKED_THRESHOLD: usize = 4 << 20;
const CHUNK_SIZE: usize = 4 << 20;

/// Content-addressed bytes plus the media type they are referenced with.
#[derive(Debug, Clone)]
pub struct Blob {
    pub media_type: String,
    pub digest: String,
    pub bytes: Bytes,
}

impl Blob {
    pub fn new(media_type: &str, bytes: impl Into<Bytes>) -> Blob {
        let bytes = bytes.into();
        Blob {
            media_type: media_type.to_string(),
            digest: sha256_digest(&bytes),
            bytes,
        }
    }

    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// OCI descriptor JSON (`mediaType`, `digest`, `size`).
    pub fn descriptor(&self) -> serde_json::Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.size() })
    }
}

/// A compressed layer and the digest of its uncompressed tar (`diff_id`).
#[derive(Debug, Clone)]
pub struct Layer {
    pub blob: Blob,
    pub diff_id: String,
}

/// Manifest flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Oci,
    /// Docker image manifest v2, schema 2 (and manifest list v2).
    Docker,
}

impl Format {
    fn manifest_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_MANIFEST,
            Format::Docker => DOCKER_MANIFEST,
        }
    }
    fn index_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_INDEX,
            Format::Docker => DOCKER_MANIFEST_LIST,
        }
    }
    fn config_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_CONFIG,
            Format::Docker => DOCKER_CONFIG,
        }
    }
    fn layer_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_LAYER_GZIP,
            Format::Docker => DOCKER_LAYER_GZIP,
        }
    }
}

/// `os`/`architecture`/`variant` of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn linux_amd64() -> Platform {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }

    pub fn linux_arm64() -> Platform {
        Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: Some("v8".into()),
        }
    }

    fn json(&self) -> serde_json::Value {
        let mut v = json!({ "os": self.os, "architecture": self.architecture });
        if let Some(variant) = &self.variant {
            v["variant"] = variant.clone().into();
        }
        v
    }
}

/// What to generate. Same spec + platform => same bytes.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    pub seed: u64,
    /// Number of small layers (each a tar with a few files).
    pub small_layers: usize,
    /// Size in bytes of an additional incompressible layer, if any.
    pub large_layer: Option<usize>,
    pub format: Format,
}

impl Default for ImageSpec {
    fn default() -> Self {
        ImageSpec {
            seed: 1,
            small_layers: 2,
            large_layer: None,
            format: Format::Oci,
        }
    }
}

impl ImageSpec {
    pub fn seed(seed: u64) -> ImageSpec {
        ImageSpec {
            seed,
            ..ImageSpec::default()
        }
    }
    pub fn small_layers(mut self, n: usize) -> Self {
        self.small_layers = n;
        self
    }
    pub fn large_layer(mut self, bytes: usize) -> Self {
        self.large_layer = Some(bytes);
        self
    }
    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }
}

/// A generated single-platform image.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub platform: Platform,
    pub format: Format,
    pub config: Blob,
    pub layers: Vec<Layer>,
    pub manifest: Blob,
}

/// splitmix64: tiny deterministic PRNG, good enough for test content.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Builds a tar archive from `(path, mode, content)` entries (directories
/// when content is `None`) with fixed metadata.
fn tar_archive(entries: &[(&str, u32, Option<&[u8]>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, mode, content) in entries {
        let mut header = tar::Header::new_ustar();
        header.set_mtime(1_700_000_000);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mode(*mode);
        match content {
            Some(data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(data.len() as u64);
                builder
                    .append_data(&mut header, path, *data)
                    .expect("append file to in-memory tar");
            }
            None => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                builder
                    .append_data(&mut header, path, std::io::empty())
                    .expect("append directory to in-memory tar");
            }
        }
    }
    builder.into_inner().expect("finish in-memory tar")
}

/// gzip with a fixed header (no mtime/filename), so output is deterministic.
fn gzip(data: &[u8], level: flate2::Compression) -> Vec<u8> {
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::with_capacity(data.len() / 2 + 64), level);
    encoder.write_all(data).expect("gzip into memory");
    encoder.finish().expect("finish gzip stream")
}

fn layer_from_tar(tar: Vec<u8>, format: Format, level: flate2::Compression) -> Layer {
    let diff_id = sha256_digest(&tar);
    Layer {
        blob: Blob::new(format.layer_type(), gzip(&tar, level)),
        diff_id,
    }
}

/// A small layer: a directory and a few text/binary files whose content is
/// derived from `seed`.
pub fn small_layer(seed: u64, format: Format) -> Layer {
    let mut rng = SplitMix64(seed);
    let mut random = vec![0u8; 512 + (seed % 512) as usize];
    rng.fill(&mut random);
    let hello = format!("hello from stevedore test layer, seed {seed}\n");
    let script = format!("#!/bin/sh\necho seed {seed}\n");
    let dir = format!("data-{seed}/");
    let bin_path = format!("data-{seed}/random.bin");
    let tar = tar_archive(&[
        ("etc/", 0o755, None),
        ("etc/stevedore-seed", 0o644, Some(hello.as_bytes())),
        (&dir, 0o755, None),
        (&bin_path, 0o644, Some(&random)),
        ("usr/local/bin/hello.sh", 0o755, Some(script.as_bytes())),
    ]);
    layer_from_tar(tar, format, flate2::Compression::default())
}

/// A layer holding one file of `size` pseudo-random (incompressible) bytes.
/// gzip runs at level 0 (stored blocks): compressing random data gains
/// nothing and would be slow in debug builds.
pub fn large_layer(seed: u64, size: usize, format: Format) -> Layer {
    let mut data = vec![0u8; size];
    SplitMix64(seed ^ 0x5EED_1A49_E000_0000).fill(&mut data);
    let tar = tar_archive(&[
        ("large/", 0o755, None),
        ("large/blob.bin", 0o644, Some(&data)),
    ]);
    drop(data);
    layer_from_tar(tar, format, flate2::Compression::none())
}

/// Generates config, layers and manifest for one platform.
pub fn build_image(spec: &ImageSpec, platform: &Platform) -> BuiltImage {
    // Mix the platform into the seed so each platform has distinct layers.
    let platform_salt = platform.architecture.bytes().fold(0u64, |acc, b| {
        acc.wrapping_mul(31).wrapping_add(u64::from(b))
    });
    let base = spec.seed.wrapping_mul(1_000_003) ^ platform_salt.wrapping_mul(0x1_0000_0001);
    let mut layers: Vec<Layer> = (0..spec.small_layers as u64)
        .map(|i| small_layer(base.wrapping_add(i), spec.format))
        .collect();
    if let Some(size) = spec.large_layer {
        layers.push(large_layer(base, size, spec.format));
    }

    let config = json!({
        "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
        "Cmd": ["/usr/local/bin/hello.sh"],
        "Labels": { "org.example.stevedore.test-seed": spec.seed.to_string() }
    });
    assemble_image(platform, spec.format, layers, config)
}

/// Config blob and manifest over `layers`, with `config` as the image config's `config`
/// object (`Env`, `Cmd`, …).
fn assemble_image(
    platform: &Platform,
    format: Format,
    layers: Vec<Layer>,
    config: serde_json::Value,
) -> BuiltImage {
    let created = "2024-01-01T00:00:00Z";
    let mut config = json!({
        "created": created,
        "architecture": platform.architecture,
        "os": platform.os,
        "config": config,
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()
        },
        "history": layers.iter().enumerate().map(|(i, _)| json!({
            "created": created,
            "created_by": format!("stevedore test layer {i}")
        })).collect::<Vec<_>>()
    });
    if let Some(variant) = &platform.variant {
        config["variant"] = variant.clone().into();
    }
    let config = Blob::new(
        format.config_type(),
        serde_json::to_vec(&config).expect("serialize image config"),
    );

    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": format.manifest_type(),
        "config": config.descriptor(),
        "layers": layers.iter().map(|l| l.blob.descriptor()).collect::<Vec<_>>(),
    });
    let manifest = Blob::new(
        format.manifest_type(),
        serde_json::to_vec_pretty(&manifest).expect("serialize image manifest"),
    );
    BuiltImage {
        platform: platform.clone(),
        format,
        config,
        layers,
        manifest,
    }
}

/// A runnable linux/amd64 image of a program of this host: one layer with `cmd[0]` and the
/// shared libraries and dynamic loader `ldd` names for it, at their host paths (symlinks
/// followed), and `cmd` as the image's command. `host_program_image(&["/bin/sleep",
/// "infinity"])` is a container that stays up until it is stopped.
pub fn host_program_image(cmd: &[&str]) -> BuiltImage {
    let program = cmd.first().expect("a command");
    let out = std::process::Command::new("ldd")
        .arg(program)
        .output()
        .expect("run ldd");
    assert!(out.status.success(), "ldd {program} failed");
    let ldd = String::from_utf8_lossy(&out.stdout);
    // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" and "/lib64/ld-linux-x86-64.so.2 (0x…)".
    let libs = ldd.lines().filter_map(|line| {
        let mut words = line.split_whitespace();
        let first = words.next()?;
        match words.next() {
            Some("=>") => words.next().filter(|p| p.starts_with('/')),
            _ => Some(first).filter(|p| p.starts_with('/')),
        }
    });
    let mut files = BTreeMap::new();
    for path in std::iter::once(*program).chain(libs) {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        files.insert(path.trim_start_matches('/').to_owned(), bytes);
    }
    let dirs: std::collections::BTreeSet<String> = files
        .keys()
        .flat_map(|path| {
            let parts: Vec<&str> = path.split('/').collect();
            (1..parts.len())
                .map(|n| format!("{}/", parts[..n].join("/")))
                .collect::<Vec<_>>()
        })
        .collect();
    let mut entries: Vec<(&str, u32, Option<&[u8]>)> =
        dirs.iter().map(|d| (d.as_str(), 0o755, None)).collect();
    entries.extend(
        files
            .iter()
            .map(|(path, bytes)| (path.as_str(), 0o755, Some(bytes.as_slice()))),
    );
    let layer = layer_from_tar(
        tar_archive(&entries),
        Format::Oci,
        flate2::Compression::default(),
    );
    let config = json!({ "Env": ["PATH=/usr/bin:/bin"], "Cmd": cmd });
    assemble_image(&Platform::linux_amd64(), Format::Oci, vec![layer], config)
}

/// An OCI image index (or Docker manifest list) over `images`.
pub fn build_index(images: &[BuiltImage], format: Format) -> Blob {
    let index = json!({
        "schemaVersion": 2,
        "mediaType": format.index_type(),
        "manifests": images.iter().map(|img| {
            let mut d = img.manifest.descriptor();
            d["platform"] = img.platform.json();
            d
        }).collect::<Vec<_>>(),
    });
    Blob::new(
        format.index_type(),
        serde_json::to_vec_pretty(&index).expect("serialize image index"),
    )
}

/// What was pushed, for comparison with what clients pulled through the
/// proxy.
///
/// For a multi-platform push the tag points at the index
/// (`index_digest`); the single-image fields (`manifest_digest`,
/// `config_digest`, `layers`, ...) then describe the **linux/amd64** image,
/// which is what clients on this host resolve to. All platform images are in
/// `platforms`.
#[derive(Debug, Clone)]
pub struct PushedImage {
    pub repo: String,
    pub tag: String,
    pub manifest_digest: String,
    pub manifest_bytes: Bytes,
    pub media_type: String,
    pub config_digest: String,
    /// `(digest, compressed size)` in manifest order.
    pub layers: Vec<(String, u64)>,
    pub index_digest: Option<String>,
    pub index_bytes: Option<Bytes>,
    pub index_media_type: Option<String>,
    /// Every platform image that was pushed (one for single-platform pushes).
    pub platforms: Vec<BuiltImage>,
}

impl PushedImage {
    /// Digest the tag resolves to (index if any, else the manifest).
    pub fn tag_digest(&self) -> &str {
        self.index_digest
            .as_deref()
            .unwrap_or(&self.manifest_digest)
    }

    /// Layer digests in manifest order.
    pub fn layer_digests(&self) -> Vec<String> {
        self.layers.iter().map(|(d, _)| d.clone()).collect()
    }

    /// Content of any pushed blob or manifest (config, layer, platform
    /// manifest, index) by digest.
    pub fn content(&self, digest: &str) -> Option<Bytes> {
        if self.index_digest.as_deref() == Some(digest) {
            return self.index_bytes.clone();
        }
        self.platforms.iter().find_map(|img| {
            std::iter::once(&img.manifest)
                .chain(std::iter::once(&img.config))
                .chain(img.layers.iter().map(|l| &l.blob))
                .find(|b| b.digest == digest)
                .map(|b| b.bytes.clone())
        })
    }
}

/// Response of a simple GET/HEAD.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Fetched {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Minimal distribution API client with challenge handling.
///
/// On `401` it reads `WWW-Authenticate`: for `Basic` it retries with the
/// configured credentials; for `Bearer` it fetches a token from the realm
/// (sending the credentials as Basic if configured, anonymously otherwise)
/// for the challenged scope and retries. Tokens are cached per repository.
pub struct RegistryClient {
    base: Url,
    creds: Option<Credentials>,
    http: reqwest::Client,
    /// repository name -> Authorization header value ("" key for /v2/).
    auth_cache: Mutex<HashMap<String, String>>,
}

impl RegistryClient {
    /// Client for `base_url` (e.g. `http://127.0.0.1:5000`).
    pub fn new(base_url: &str, creds: Option<Credentials>) -> RegistryClient {
        let base =
            Url::parse(base_url).unwrap_or_else(|e| panic!("bad registry URL {base_url}: {e}"));
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("build reqwest client");
        RegistryClient {
            base,
            creds,
            http,
            auth_cache: Mutex::new(HashMap::new()),
        }
    }

    /// Client for `registry` using its admin credentials (if any).
    pub fn admin(registry: &Registry) -> RegistryClient {
        Self::new(&registry.url(), registry.admin_credentials().cloned())
    }

    /// Anonymous client for `registry`.
    pub fn anonymous(registry: &Registry) -> RegistryClient {
        Self::new(&registry.url(), None)
    }

    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// Sends a request, answering one auth challenge if needed.
    /// `path_or_url` is either absolute or relative to the base URL.
    pub async fn send(
        &self,
        method: Method,
        path_or_url: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Result<reqwest::Response, BoxError> {
        let url = self.base.join(path_or_url)?;
        let cache_key = repo_of_path(url.path());
        let cached = self.cached_auth(&cache_key);
        let response = self
            .attempt(&method, &url, headers, body.clone(), cached.as_deref())
            .await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let Some(challenge) = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
        else {
            return Ok(response);
        };
        let Some(auth) = self.answer_challenge(&challenge).await? else {
            return Ok(response);
        };
        // Basic credentials are valid for every path; tokens are per
        // repository (their scope names it).
        let key = if auth.starts_with("Basic ") {
            String::new()
        } else {
            cache_key
        };
        self.auth_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, auth.clone());
        self.attempt(&method, &url, headers, body, Some(&auth))
            .await
    }

    fn cached_auth(&self, key: &str) -> Option<String> {
        let cache = self.auth_cache.lock().unwrap_or_else(|e| e.into_inner());
        // Fall back to the path-independent entry (Basic credentials).
        cache.get(key).or_else(|| cache.get("")).cloned()
    }

    async fn attempt(
        &self,
        method: &Method,
        url: &Url,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
        auth: Option<&str>,
    ) -> Result<reqwest::Response, BoxError> {
        let mut req = self.http.request(method.clone(), url.clone());
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(auth) = auth {
            req = req.header(AUTHORIZATION, auth);
        }
        if let Some(body) = body {
            req = req.header(CONTENT_LENGTH, body.len()).body(body);
        }
        Ok(req.send().await?)
    }

    /// Produces an Authorization header value for `challenge`, or `None` if
    /// the challenge cannot be answered (e.g. Basic without credentials).
    async fn answer_challenge(&self, challenge: &str) -> Result<Option<String>, BoxError> {
        let (scheme, params) = parse_challenge(challenge);
        if scheme.eq_ignore_ascii_case("basic") {
            return Ok(self.creds.as_ref().map(Credentials::basic_header));
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Ok(None);
        }
        let realm = params
            .get("realm")
            .ok_or_else(|| format!("Bearer challenge without realm: {challenge}"))?;
        let mut token_url = Url::parse(realm)?;
        {
            let mut q = token_url.query_pairs_mut();
            if let Some(service) = params.get("service") {
                q.append_pair("service", service);
            }
            if let Some(scope) = params.get("scope") {
                // A challenge may carry several space-separated scopes.
                for s in scope.split(' ').filter(|s| !s.is_empty()) {
                    q.append_pair("scope", s);
                }
            }
        }
        let mut req = self.http.get(token_url.clone());
        if let Some(creds) = &self.creds {
            req = req.header(AUTHORIZATION, creds.basic_header());
        }
        let resp = req.send().await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        if !status.is_success() {
            return Err(format!(
                "token request {token_url} failed with {status}: {}",
                String::from_utf8_lossy(&body)
            )
            .into());
        }
        let json: serde_json::Value = serde_json::from_slice(&body)?;
        let token = json["token"]
            .as_str()
            .or_else(|| json["access_token"].as_str())
            .ok_or_else(|| format!("token response without token: {json}"))?;
        Ok(Some(format!("Bearer {token}")))
    }

    /// GET (or HEAD) returning status, headers and body.
    pub async fn fetch(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Fetched, BoxError> {
        let resp = self.send(method, path, headers, None).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await?;
        Ok(Fetched {
            status,
            headers,
            body,
        })
    }

    /// `GET /v2/<repo>/manifests/<reference>` accepting every manifest type.
    pub async fn get_manifest(&self, repo: &str, reference: &str) -> Result<Fetched, BoxError> {
        let accept = ALL_MANIFEST_TYPES.join(", ");
        self.fetch(
            Method::GET,
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Accept", &accept)],
        )
        .await
    }

    /// `GET /v2/<repo>/blobs/<digest>`.
    pub async fn get_blob(&self, repo: &str, digest: &str) -> Result<Fetched, BoxError> {
        self.fetch(Method::GET, &format!("/v2/{repo}/blobs/{digest}"), &[])
            .await
    }

    /// Uploads `blob` unless the registry already has it; monolithic for
    /// small blobs, chunked above 4 MiB.
    pub async fn push_blob(&self, repo: &str, blob: &Blob) -> Result<(), BoxError> {
        let head = self
            .send(
                Method::HEAD,
                &format!("/v2/{repo}/blobs/{}", blob.digest),
                &[],
                None,
            )
            .await?;
        if head.status() == StatusCode::OK {
            return Ok(());
        }
        if blob.bytes.len() > CHUNKED_THRESHOLD {
            self.push_blob_chunked(repo, blob, CHUNK_SIZE).await
        } else {
            self.push_blob_monolithic(repo, blob).await
        }
    }

    /// `POST /v2/<repo>/blobs/uploads/` then `PUT <location>?digest=` with
    /// the whole body.
    pub async fn push_blob_monolithic(&self, repo: &str, blob: &Blob) -> Result<(), BoxError> {
        let location = self.start_upload(repo).await?;
        let mut url = self.base.join(&location)?;
        url.query_pairs_mut().append_pair("digest", &blob.digest);
        let resp = self
            .send(
                Method::PUT,
                url.as_str(),
                &[("Content-Type", "application/octet-stream")],
                Some(blob.bytes.clone()),
            )
            .await?;
        expect_status(resp, StatusCode::CREATED, "PUT blob upload").await
    }

    /// `POST` upload, `PATCH` chunks with `Content-Range`, final empty
    /// `PUT ?digest=`.
    pub async fn push_blob_chunked(
        &self,
        repo: &str,
        blob: &Blob,
        chunk_size: usize,
    ) -> Result<(), BoxError> {
        let mut location = self.start_upload(repo).await?;
        let mut offset = 0usize;
        while offset < blob.bytes.len() {
            let end = (offset + chunk_size).min(blob.bytes.len());
            let range = format!("{offset}-{}", end - 1);
            let resp = self
                .send(
                    Method::PATCH,
                    &location,
                    &[
                        ("Content-Type", "application/octet-stream"),
                        ("Content-Range", &range),
                    ],
                    Some(blob.bytes.slice(offset..end)),
                )
                .await?;
            location = location_of(&resp).ok_or("PATCH upload: no Location header")?;
            expect_status(resp, StatusCode::ACCEPTED, "PATCH blob chunk").await?;
            offset = end;
        }
        let mut url = self.base.join(&location)?;
        url.query_pairs_mut().append_pair("digest", &blob.digest);
        let resp = self
            .send(Method::PUT, url.as_str(), &[], Some(Bytes::new()))
            .await?;
        expect_status(resp, StatusCode::CREATED, "PUT finish chunked upload").await
    }

    async fn start_upload(&self, repo: &str) -> Result<String, BoxError> {
        let resp = self
            .send(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/"),
                &[],
                Some(Bytes::new()),
            )
            .await?;
        let location = location_of(&resp);
        expect_status(resp, StatusCode::ACCEPTED, "POST blob upload").await?;
        location.ok_or_else(|| "POST blob upload: no Location header".into())
    }

    /// `PUT /v2/<repo>/manifests/<reference>`; returns the digest the
    /// registry reports (checked against our own computation).
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        manifest: &Blob,
    ) -> Result<String, BoxError> {
        let resp = self
            .send(
                Method::PUT,
                &format!("/v2/{repo}/manifests/{reference}"),
                &[("Content-Type", &manifest.media_type)],
                Some(manifest.bytes.clone()),
            )
            .await?;
        let digest = resp
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        expect_status(resp, StatusCode::CREATED, "PUT manifest").await?;
        match digest {
            Some(d) if d != manifest.digest => {
                Err(format!("registry computed digest {d}, expected {}", manifest.digest).into())
            }
            _ => Ok(manifest.digest.clone()),
        }
    }

    /// Pushes all blobs and the manifest of `image` (manifest by digest when
    /// `reference` is `None`).
    pub async fn push_built(
        &self,
        repo: &str,
        reference: Option<&str>,
        image: &BuiltImage,
    ) -> Result<(), BoxError> {
        self.push_blob(repo, &image.config).await?;
        for layer in &image.layers {
            self.push_blob(repo, &layer.blob).await?;
        }
        self.push_manifest(
            repo,
            reference.unwrap_or(&image.manifest.digest),
            &image.manifest,
        )
        .await?;
        Ok(())
    }
}

fn location_of(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn expect_status(
    resp: reqwest::Response,
    want: StatusCode,
    what: &str,
) -> Result<(), BoxError> {
    let status = resp.status();
    if status == want {
        return Ok(());
    }
    let url = resp.url().clone();
    let body = resp.text().await.unwrap_or_default();
    Err(format!("{what} {url}: expected {want}, got {status}: {body}").into())
}

/// Repository name from a `/v2/<name>/{blobs,manifests,tags}/...` path
/// (empty for anything else, e.g. `/v2/`).
fn repo_of_path(path: &str) -> String {
    let Some(rest) = path.strip_prefix("/v2/") else {
        return String::new();
    };
    for marker in ["/blobs/", "/manifests/", "/tags/"] {
        if let Some(idx) = rest.rfind(marker) {
            return rest[..idx].to_string();
        }
    }
    String::new()
}

/// Parses `Scheme k="v",k2="v2"` (values may be quoted and contain commas).
pub fn parse_challenge(header: &str) -> (String, BTreeMap<String, String>) {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        // key
        let key: String = chars
            .by_ref()
            .skip_while(|c| *c == ',' || c.is_whitespace())
            .take_while(|c| *c != '=')
            .collect();
        if key.is_empty() {
            break;
        }
        // value, quoted or token
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                value.push(*c);
                chars.next();
            }
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    (scheme.to_string(), params)
}

/// Pushes a single-platform linux/amd64 image described by `spec` to
/// `registry` as `repo:tag`, using the registry's admin credentials.
pub async fn push_image(
    registry: &Registry,
    repo: &str,
    tag: &str,
    spec: &ImageSpec,
) -> PushedImage {
    push_image_with(&RegistryClient::admin(registry), repo, tag, spec).await
}

/// Like [`push_image`] but forcing a Docker schema 2 manifest.
pub async fn push_docker_image(
    registry: &Registry,
    repo: &str,
    tag: &str,
    spec: &ImageSpec,
) -> PushedImage {
    let spec = spec.clone().format(Format::Docker);
    push_image_with(&RegistryClient::admin(registry), repo, tag, &spec).await
}

/// Pushes a linux/amd64 + linux/arm64 image index (or Docker manifest list
/// for [`Format::Docker`]) as `repo:tag`.
pub async fn push_multiplatform(
    registry: &Registry,
    repo: &str,
    tag: &str,
    spec: &ImageSpec,
) -> PushedImage {
    push_multiplatform_with(&RegistryClient::admin(registry), repo, tag, spec).await
}

/// [`push_image`] with an explicit client (any registry URL/credentials).
pub async fn push_image_with(
    client: &RegistryClient,
    repo: &str,
    tag: &str,
    spec: &ImageSpec,
) -> PushedImage {
    let image = build_image(spec, &Platform::linux_amd64());
    client
        .push_built(repo, Some(tag), &image)
        .await
        .unwrap_or_else(|e| panic!("pushing {repo}:{tag} to {} failed: {e}", client.base_url()));
    pushed(repo, tag, vec![image], None)
}

/// [`push_multiplatform`] with an explicit client.
pub async fn push_multiplatform_with(
    client: &RegistryClient,
    repo: &str,
    tag: &str,
    spec: &ImageSpec,
) -> PushedImage {
    let images: Vec<BuiltImage> = [Platform::linux_amd64(), Platform::linux_arm64()]
        .iter()
        .map(|p| build_image(spec, p))
        .collect();
    let index = build_index(&images, spec.format);
    let result: Result<(), BoxError> = async {
        for image in &images {
            client.push_built(repo, None, image).await?;
        }
        client.push_manifest(repo, tag, &index).await?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        panic!(
            "pushing index {repo}:{tag} to {} failed: {e}",
            client.base_url()
        );
    }
    pushed(repo, tag, images, Some(index))
}

fn pushed(repo: &str, tag: &str, platforms: Vec<BuiltImage>, index: Option<Blob>) -> PushedImage {
    let main = &platforms[0]; // linux/amd64 comes first
    PushedImage {
        repo: repo.to_string(),
        tag: tag.to_string(),
        manifest_digest: main.manifest.digest.clone(),
        manifest_bytes: main.manifest.bytes.clone(),
        media_type: main.manifest.media_type.clone(),
        config_digest: main.config.digest.clone(),
        layers: main
            .layers
            .iter()
            .map(|l| (l.blob.digest.clone(), l.blob.size()))
            .collect(),
        index_digest: index.as_ref().map(|i| i.digest.clone()),
        index_bytes: index.as_ref().map(|i| i.bytes.clone()),
        index_media_type: index.as_ref().map(|i| i.media_type.clone()),
        platforms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_deterministic() {
        let a = build_image(&ImageSpec::seed(7), &Platform::linux_amd64());
        let b = build_image(&ImageSpec::seed(7), &Platform::linux_amd64());
        let c = build_image(&ImageSpec::seed(7), &Platform::linux_arm64());
        assert_eq!(a.manifest.digest, b.manifest.digest);
        assert_ne!(a.manifest.digest, c.manifest.digest);
        assert_ne!(a.layers[0].blob.digest, a.layers[1].blob.digest);
    }

    #[test]
    fn layers_are_valid_gzip_tar() {
        let layer = small_layer(3, Format::Oci);
        let decoder = flate2::read::GzDecoder::new(&layer.blob.bytes[..]);
        let mut archive = tar::Archive::new(decoder);
        let names: Vec<String> = archive
            .entries()
            .expect("tar entries")
            .map(|e| {
                e.expect("tar entry")
                    .path()
                    .expect("path")
                    .display()
                    .to_string()
            })
            .collect();
        assert!(
            names.contains(&"etc/stevedore-seed".to_string()),
            "{names:?}"
        );

        let large = large_layer(3, 100_000, Format::Oci);
        assert!(large.blob.size() > 100_000, "random data must not compress");
    }

    #[test]
    fn challenge_parsing() {
        let (scheme, p) = parse_challenge(
            r#"Bearer realm="http://127.0.0.1:1/token",service="svc",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(scheme, "Bearer");
        assert_eq!(p["realm"], "http://127.0.0.1:1/token");
        assert_eq!(p["service"], "svc");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        assert_eq!(repo_of_path("/v2/a/b/blobs/uploads/x"), "a/b");
    }
}
