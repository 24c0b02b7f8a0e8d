//! How an endpoint names the registry it is asked for: directly, or as another stevedore
//! (a regional cache) that is told the registry by a path prefix or `?ns=`.

use url::Url;

/// How an endpoint is told which registry is meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Via {
    /// The endpoint is the registry.
    Direct,
    /// `http://regional:5000/v2/registry.example`
    PathPrefix(String),
    /// `http://regional:5000/?ns=registry.example`
    Namespace(String),
}

impl Via {
    /// Splits a configured endpoint into its base (`scheme://host[:port]/`) and the way it
    /// names the registry; `None` for any other path or query.
    pub(crate) fn split(url: &Url) -> Option<(Url, Via)> {
        let mut base = url.clone();
        base.set_path("/");
        base.set_query(None);
        base.set_fragment(None);
        let path = url.path().trim_end_matches('/');
        let query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let via = match (path, query.as_slice()) {
            ("", []) => Via::Direct,
            (p, []) => {
                let registry = p.strip_prefix("/v2/")?;
                crate::reference::RegistryHost::parse(registry).ok()?;
                if registry.contains('/') {
                    return None;
                }
                Via::PathPrefix(registry.to_owned())
            }
            ("", [(k, v)]) if k == "ns" => {
                crate::reference::RegistryHost::parse(v).ok()?;
                Via::Namespace(v.clone())
            }
            _ => return None,
        };
        (url.fragment().is_none()).then_some((base, via))
    }

    /// The path to ask the endpoint for: `/v2/<repository>/…` gets the registry in front.
    pub(crate) fn path(&self, path: &str) -> String {
        match (self, path.strip_prefix("/v2/")) {
            (Via::PathPrefix(registry), Some(rest)) if !rest.is_empty() => {
                format!("/v2/{registry}/{rest}")
            }
            _ => path.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(u: &str) -> Option<(String, Via)> {
        Via::split(&Url::parse(u).unwrap()).map(|(b, v)| (b.to_string(), v))
    }

    #[test]
    fn endpoints_name_their_registry_by_prefix_or_namespace() {
        assert_eq!(
            split("https://r.example"),
            Some(("https://r.example/".to_owned(), Via::Direct))
        );
        assert_eq!(
            split("http://regional:5000/v2/registry.example:5000/"),
            Some((
                "http://regional:5000/".to_owned(),
                Via::PathPrefix("registry.example:5000".to_owned())
            ))
        );
        assert_eq!(
            split("http://regional:5000/?ns=docker.io"),
            Some((
                "http://regional:5000/".to_owned(),
                Via::Namespace("docker.io".to_owned())
            ))
        );
        for bad in [
            "http://regional/v2/",
            "http://regional/v2/a/b",
            "http://regional/other/r.example",
            "http://regional/?ns=bad host",
            "http://regional/?x=1",
            "http://regional/?ns=a&ns=b",
            "http://regional/v2/r.example?ns=r.example",
        ] {
            assert_eq!(split(bad), None, "{bad}");
        }
        let via = Via::PathPrefix("r.example".to_owned());
        assert_eq!(via.path("/v2/"), "/v2/");
        assert_eq!(
            via.path("/v2/team/app/blobs/sha256:ab"),
            "/v2/r.example/team/app/blobs/sha256:ab"
        );
    }
}
