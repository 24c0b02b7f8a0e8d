//! The manifest media types a client accepts, parsed once at the edge into a small set.
//!
//! Only the manifest types stevedore knows are kept: they are what selects a different
//! manifest for a tag, and keeping only them bounds the variants a tag can have. Every Accept
//! list a client can send maps to one of at most 15 sets, so new Accept spellings cannot
//! make stevedore ask the upstream again (Docker Hub counts manifest GETs) or write new
//! records. Wildcards, `application/json` and lists naming no known type mean "any of them".

/// Manifest media types stevedore understands, in the order it asks for them.
pub const MANIFEST_TYPES: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

const ALL: u8 = (1 << MANIFEST_TYPES.len()) - 1;

/// A set of [`MANIFEST_TYPES`], never empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ManifestAccept(u8);

impl Default for ManifestAccept {
    fn default() -> Self {
        Self(ALL)
    }
}

impl ManifestAccept {
    /// Parses `Accept` header values (each may be comma-joined; parameters are ignored).
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut bits = 0u8;
        let mut any = false;
        for t in values.into_iter().flat_map(|v| v.split(',')) {
            let t = t.split(';').next().unwrap_or("").trim();
            if t.is_empty() {
                continue;
            }
            match MANIFEST_TYPES
                .iter()
                .position(|k| k.eq_ignore_ascii_case(t))
            {
                Some(i) => bits |= 1 << i,
                None => {
                    any |= matches!(
                        t.to_ascii_lowercase().as_str(),
                        "*/*" | "application/*" | "application/json"
                    )
                }
            }
        }
        if any || bits == 0 {
            Self(ALL)
        } else {
            Self(bits)
        }
    }

    /// The media types to send upstream, one per `Accept` line.
    pub fn media_types(self) -> Vec<String> {
        MANIFEST_TYPES
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, t)| (*t).to_owned())
            .collect()
    }

    /// A short stable key for tag records: one per set.
    pub fn key(self) -> String {
        format!("accept-{:02x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_map_to_a_few_sets() {
        let all = ManifestAccept::default();
        assert_eq!(ManifestAccept::parse([]), all);
        assert_eq!(ManifestAccept::parse(["*/*"]), all);
        assert_eq!(
            ManifestAccept::parse(["application/x-nonsense, text/plain"]),
            all
        );
        let docker = ManifestAccept::parse([
            "application/vnd.docker.distribution.manifest.v2+json; q=0.9",
            "application/x-unknown",
        ]);
        assert_eq!(
            docker.media_types(),
            vec!["application/vnd.docker.distribution.manifest.v2+json"]
        );
        // Order, case, repetition and unknown types make no difference.
        let a = ManifestAccept::parse([
            "application/vnd.oci.image.manifest.v1+json,application/vnd.oci.image.index.v1+json",
        ]);
        let b = ManifestAccept::parse([
            "APPLICATION/VND.OCI.IMAGE.INDEX.V1+JSON",
            "x/y",
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.manifest.v1+json",
        ]);
        assert_eq!(a, b);
        assert_eq!(a.key(), b.key());
        assert_ne!(a.key(), docker.key());
        // A known list plus a wildcard is "anything".
        assert_eq!(
            ManifestAccept::parse(["application/vnd.oci.image.manifest.v1+json", "*/*"]),
            all
        );
    }
}
