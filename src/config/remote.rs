//! `[store] type` and `[store.s3]`: where verified content is kept for good. `disk` (the
//! default) is the local directory alone; `s3` keeps content, tag records and repository
//! membership in an S3 bucket shared by replicas, with the local directory as the
//! size-bounded tier in front of it.

use serde::Deserialize;

use super::Problem;
use super::secret_source::SecretSource;

/// The store's backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    #[default]
    Disk,
    S3,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct S3Config {
    /// `http(s)://host:port` of the S3 API (Garage: its `s3_api.api_bind_addr`).
    pub endpoint: String,
    pub bucket: String,
    /// Must equal the service's region (Garage: `s3_region`).
    #[serde(default = "default_region")]
    pub region: String,
    /// Path-style requests (`endpoint/bucket/key`), as Garage and most self-hosted services
    /// want; false for virtual-hosted style.
    #[serde(default = "yes")]
    pub path_style: bool,
    /// Key prefix inside the bucket (`stevedore/`), to share a bucket.
    #[serde(default)]
    pub prefix: String,
    /// Access key id and secret: inline, `{ file = … }` or `{ env = … }`. Without them the
    /// standard `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` variables are used.
    pub access_key_id: Option<SecretSource>,
    pub secret_access_key: Option<SecretSource>,
    /// Most uploads to the bucket at once.
    #[serde(default = "default_uploads")]
    pub max_concurrent_uploads: usize,
}

fn default_region() -> String {
    "us-east-1".to_owned()
}

fn yes() -> bool {
    true
}

fn default_uploads() -> usize {
    4
}

/// What is wrong with the store's backend settings.
pub fn problems(
    kind: StoreKind,
    s3: Option<&S3Config>,
    path: Option<&std::path::Path>,
) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut push = |key: &str, message: String| {
        out.push(Problem {
            key: key.to_owned(),
            message,
        })
    };
    match (kind, s3) {
        (StoreKind::Disk, Some(_)) => push(
            "store.s3",
            "is set but store.type is \"disk\": set type = \"s3\" to use it".to_owned(),
        ),
        (StoreKind::S3, None) => push(
            "store.type",
            "is \"s3\" but there is no [store.s3] section".to_owned(),
        ),
        _ => {}
    }
    let Some(s3) = s3 else {
        return out;
    };
    if kind == StoreKind::S3 && path.is_none() {
        push(
            "store.path",
            "is needed with type = \"s3\": the local tier in front of the bucket".to_owned(),
        );
    }
    match url::Url::parse(&s3.endpoint) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
        _ => push(
            "store.s3.endpoint",
            format!("{:?} must be an http:// or https:// URL", s3.endpoint),
        ),
    }
    if s3.bucket.is_empty() {
        push("store.s3.bucket", "must not be empty".to_owned());
    }
    if s3.access_key_id.is_some() != s3.secret_access_key.is_some() {
        push(
            "store.s3.secret-access-key",
            "access-key-id and secret-access-key go together".to_owned(),
        );
    }
    for (key, source) in [
        ("store.s3.access-key-id", &s3.access_key_id),
        ("store.s3.secret-access-key", &s3.secret_access_key),
    ] {
        if let Some(Err(e)) = source.as_ref().map(SecretSource::read) {
            push(key, e.to_string());
        }
    }
    if s3.max_concurrent_uploads == 0 {
        push(
            "store.s3.max-concurrent-uploads",
            "must be more than 0".to_owned(),
        );
    }
    if !s3.prefix.is_empty() && !s3.prefix.ends_with('/') {
        push(
            "store.s3.prefix",
            format!("{:?} must end with /", s3.prefix),
        );
    }
    out
}
