//! `[store] type` and `[store.s3]`: where verified content is kept for good. `disk` (the
//! default) is the local directory alone; `s3` keeps content, tag records and repository
//! membership in an S3 bucket shared by replicas, with the local directory as the
//! size-bounded tier in front of it.

use serde::Deserialize;

use super::Problem;
use super::secret_source::SecretSource;

/// `[store] type` as written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    #[default]
    Disk,
    S3,
}

/// Where verified content is kept for good: the backend `[store] type` names, each with its
/// own settings. Built once from the file by [`resolve`].
#[derive(Debug, Clone, Default)]
pub enum StoreBackend {
    /// The local directory (`[store] path`) alone.
    #[default]
    Disk,
    /// A bucket shared by replicas; the local directory is the size-bounded tier in front.
    S3(S3Config),
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

/// The backend of `[store]`, or what is wrong with its settings.
pub fn resolve(store: &super::StoreConfig) -> Result<StoreBackend, Vec<Problem>> {
    let out = problems(store.kind, store.s3.as_ref(), store.path.as_deref());
    if !out.is_empty() {
        return Err(out);
    }
    Ok(match (store.kind, &store.s3) {
        (BackendKind::S3, Some(s3)) => StoreBackend::S3(s3.clone()),
        _ => StoreBackend::Disk,
    })
}

fn problems(
    kind: BackendKind,
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
        (BackendKind::Disk, Some(_)) => push(
            "store.s3",
            "is set but store.type is \"disk\": set type = \"s3\" to use it".to_owned(),
        ),
        (BackendKind::S3, None) => push(
            "store.type",
            "is \"s3\" but there is no [store.s3] section".to_owned(),
        ),
        _ => {}
    }
    let Some(s3) = s3 else {
        return out;
    };
    if kind == BackendKind::S3 && path.is_none() {
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

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::StoreBackend;

    const S3: &str = "[store.s3]\nendpoint = \"http://127.0.0.1:3900\"\nbucket = \"b\"\n";

    fn load(text: &str) -> Result<Config, String> {
        Config::from_toml(text, "x.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn disk_is_the_default() {
        let c = load("[store]\npath = \"/tmp/s\"\n").unwrap();
        assert!(matches!(c.store.backend, StoreBackend::Disk));
    }

    #[test]
    fn s3_carries_its_section() {
        let c = load(&format!("[store]\npath = \"/tmp/s\"\ntype = \"s3\"\n{S3}")).unwrap();
        let StoreBackend::S3(s3) = &c.store.backend else {
            panic!("{:?}", c.store.backend);
        };
        assert_eq!((s3.bucket.as_str(), s3.path_style), ("b", true));
    }

    #[test]
    fn mismatched_or_unknown_settings_are_named() {
        let e = load("[store]\npath = \"/tmp/s\"\ntype = \"s3\"\n").unwrap_err();
        assert!(
            e.contains("store.type: is \"s3\" but there is no [store.s3]"),
            "{e}"
        );
        let e = load(&format!("[store]\npath = \"/tmp/s\"\n{S3}")).unwrap_err();
        assert!(
            e.contains("store.s3: is set but store.type is \"disk\""),
            "{e}"
        );
        let e = load(&format!("[store]\ntype = \"s3\"\n{S3}")).unwrap_err();
        assert!(e.contains("store.path: is needed"), "{e}");
        let e = load(&format!(
            "[store]\npath = \"/tmp/s\"\ntype = \"s3\"\n{S3}buckt = \"x\"\n"
        ))
        .unwrap_err();
        assert!(e.contains("unknown field `buckt`"), "{e}");
        let e = load("[store]\ntype = \"nfs\"\n").unwrap_err();
        assert!(e.contains("unknown variant `nfs`"), "{e}");
    }
}
