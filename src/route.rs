//! Every request is parsed here, once, into a typed [`Route`]. Handlers never slice strings.
//!
//! Which registry a request means (see `docs/architecture.md`):
//! - a forward-proxy request (inside a CONNECT tunnel, or in absolute form) is for the
//!   registry its authority names, and only that one: its path is a repository of that
//!   registry (a first component with a dot is part of the name), and an `?ns=` naming another
//!   registry is refused;
//! - otherwise, in order: `?ns=<host[:port]>` (containerd mirrors and Contrast add it); a first
//!   path component that looks like a host (`.` or `:` in it, or `localhost`: CRI-O, podman and
//!   image-rs path-prefix mirrors, containerd `override_path`); the default registry.
//!
//! On docker.io, single-segment names get `library/`.
//!
//! Paths follow the OCI distribution spec, "Endpoints" table (end-1 … end-13).

use http::Method;

use crate::reference::{Digest, NameError, Reference, RegistryHost, Repository, looks_like_host};

/// A parsed request to the distribution API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRequest {
    /// `GET /v2/` (end-1).
    Ping,
    /// A read of one repository's content.
    Read(Route),
}

/// A read request against one repository of one registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub registry: RegistryHost,
    pub repository: Repository,
    pub kind: RouteKind,
    /// `HEAD` (true) or `GET`.
    pub head: bool,
    /// How the client named the registry, so links we hand out use the same form.
    pub style: RouteStyle,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteKind {
    /// `/v2/<name>/manifests/<reference>` (end-3).
    Manifest(Reference),
    /// `/v2/<name>/blobs/<digest>` (end-2).
    Blob(Digest),
    /// `/v2/<name>/tags/list?n=&last=` (end-8).
    Tags {
        n: Option<u32>,
        last: Option<String>,
    },
    /// `/v2/<name>/referrers/<digest>?artifactType=` (end-12).
    Referrers {
        digest: Digest,
        artifact_type: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteStyle {
    /// `?ns=` named the registry.
    Namespace,
    /// `/v2/<registry>/<name>/…` named it.
    PathPrefix,
    /// Neither: the default registry (or the forward-proxy authority).
    Implicit,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("not a distribution API path: {0}")]
    NotApi(String),
    #[error("{0}")]
    Invalid(#[from] NameError),
    #[error(
        "stevedore is a pull-through cache: {0} is not supported (push to the upstream registry)"
    )]
    Unsupported(&'static str),
    #[error("method {0} is not allowed here; the pull API takes GET and HEAD")]
    Method(String),
    #[error("the request is for registry {authority} but ?ns= names {ns}")]
    Authority { authority: String, ns: String },
}

/// What the parser needs to know besides the request itself.
#[derive(Debug, Clone)]
pub struct RouteContext<'a> {
    pub default_registry: &'a RegistryHost,
    /// The registry a forward-proxy request was addressed to, if any: then the only one.
    pub authority: Option<&'a RegistryHost>,
}

/// Parses a request's method, path and query.
pub fn parse(
    method: &Method,
    path: &str,
    query: Option<&str>,
    ctx: &RouteContext<'_>,
) -> Result<ApiRequest, RouteError> {
    let Some(rest) = path.strip_prefix("/v2") else {
        return Err(RouteError::NotApi(path.to_owned()));
    };
    let head = match *method {
        Method::GET => false,
        Method::HEAD => true,
        _ => return Err(method_error(method, rest)),
    };
    if rest.is_empty() || rest == "/" {
        return Ok(ApiRequest::Ping);
    }
    let rest = rest
        .strip_prefix('/')
        .ok_or_else(|| RouteError::NotApi(path.to_owned()))?;
    if rest == "_catalog" {
        return Err(RouteError::Unsupported("the catalog"));
    }
    let query = Query::parse(query);
    let segments: Vec<&str> = rest.split('/').collect();
    let (name, kind) = split_kind(&segments, &query, path)?;
    let (registry, name, style) = pick_registry(name, &query, ctx)?;
    let mut repository = name.join("/");
    if registry.is_docker_hub() && name.len() == 1 {
        repository = format!("library/{repository}");
    }
    Ok(ApiRequest::Read(Route {
        registry,
        repository: Repository::parse(&repository)?,
        kind,
        head,
        style,
    }))
}

fn method_error(method: &Method, rest: &str) -> RouteError {
    if rest.contains("/blobs/uploads") {
        return RouteError::Unsupported("blob upload");
    }
    match *method {
        Method::PUT | Method::POST | Method::PATCH => RouteError::Unsupported("push"),
        Method::DELETE => RouteError::Unsupported("delete"),
        _ => RouteError::Method(method.to_string()),
    }
}

/// Splits `<name…>/<kind>/<arg>` from the end, since `<name>` has any number of components.
fn split_kind<'s>(
    segs: &'s [&'s str],
    query: &Query,
    path: &str,
) -> Result<(&'s [&'s str], RouteKind), RouteError> {
    let not_api = || RouteError::NotApi(path.to_owned());
    let n = segs.len();
    if n < 3 {
        return Err(not_api());
    }
    if segs[n - 2] == "tags" && segs[n - 1] == "list" {
        let count = match &query.n {
            Some(raw) => Some(raw.parse::<u32>().map_err(|_| {
                NameError::Tag(format!("n={raw} (expected a non-negative integer)"))
            })?),
            None => None,
        };
        let kind = RouteKind::Tags {
            n: count,
            last: query.last.clone(),
        };
        return Ok((&segs[..n - 2], kind));
    }
    if n >= 4 && segs[n - 3] == "blobs" && segs[n - 2] == "uploads" {
        return Err(RouteError::Unsupported("blob upload"));
    }
    if segs[n - 1] == "uploads" && segs[n - 2] == "blobs" {
        return Err(RouteError::Unsupported("blob upload"));
    }
    let arg = segs[n - 1];
    let kind = match segs[n - 2] {
        "manifests" => RouteKind::Manifest(Reference::parse(arg)?),
        "blobs" => RouteKind::Blob(arg.parse()?),
        "referrers" => RouteKind::Referrers {
            digest: arg.parse()?,
            artifact_type: query.artifact_type.clone(),
        },
        _ => return Err(not_api()),
    };
    Ok((&segs[..n - 2], kind))
}

fn pick_registry<'s>(
    name: &'s [&'s str],
    query: &Query,
    ctx: &RouteContext<'_>,
) -> Result<(RegistryHost, &'s [&'s str], RouteStyle), RouteError> {
    if let Some(authority) = ctx.authority {
        if let Some(ns) = &query.ns
            && RegistryHost::parse(ns).ok().as_ref() != Some(authority)
        {
            return Err(RouteError::Authority {
                authority: authority.to_string(),
                ns: ns.clone(),
            });
        }
        return Ok((authority.clone(), name, RouteStyle::Implicit));
    }
    if let Some(ns) = &query.ns {
        let registry = RegistryHost::parse(ns)?;
        // containerd with `override_path` sends `/v2/<ns>/<name>/…?ns=<ns>`.
        let name = match name.split_first() {
            Some((first, rest))
                if !rest.is_empty() && RegistryHost::parse(first).is_ok_and(|h| h == registry) =>
            {
                rest
            }
            _ => name,
        };
        return Ok((registry, name, RouteStyle::Namespace));
    }
    if let Some((first, rest)) = name.split_first()
        && !rest.is_empty()
        && looks_like_host(first)
    {
        return Ok((RegistryHost::parse(first)?, rest, RouteStyle::PathPrefix));
    }
    Ok((ctx.default_registry.clone(), name, RouteStyle::Implicit))
}

#[derive(Debug, Default)]
struct Query {
    ns: Option<String>,
    n: Option<String>,
    last: Option<String>,
    artifact_type: Option<String>,
}

impl Query {
    fn parse(raw: Option<&str>) -> Self {
        let mut q = Query::default();
        for (k, v) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            let slot = match k.as_ref() {
                "ns" => &mut q.ns,
                "n" => &mut q.n,
                "last" => &mut q.last,
                "artifactType" => &mut q.artifact_type,
                _ => continue,
            };
            *slot = Some(v.into_owned());
        }
        q
    }
}

impl Route {
    /// The path of this request at the upstream registry, `/v2/<name>/…` (no query).
    pub fn upstream_path(&self) -> String {
        let name = self.repository.as_str();
        match &self.kind {
            RouteKind::Manifest(r) => format!("/v2/{name}/manifests/{r}"),
            RouteKind::Blob(d) => format!("/v2/{name}/blobs/{d}"),
            RouteKind::Tags { .. } => format!("/v2/{name}/tags/list"),
            RouteKind::Referrers { digest, .. } => format!("/v2/{name}/referrers/{digest}"),
        }
    }

    /// The query to send upstream.
    pub fn upstream_query(&self) -> Vec<(&'static str, String)> {
        match &self.kind {
            RouteKind::Tags { n, last } => {
                let mut q = Vec::new();
                if let Some(n) = n {
                    q.push(("n", n.to_string()));
                }
                if let Some(last) = last {
                    q.push(("last", last.clone()));
                }
                q
            }
            RouteKind::Referrers {
                artifact_type: Some(t),
                ..
            } => vec![("artifactType", t.clone())],
            _ => Vec::new(),
        }
    }

    /// The path and query a client should use to reach `upstream_path_and_query` (a path an
    /// upstream handed out, such as a tags `Link`) through stevedore, in this route's style.
    pub fn client_link(&self, upstream_path_and_query: &str) -> Option<String> {
        let (path, query) = match upstream_path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (upstream_path_and_query, None),
        };
        let rest = path.strip_prefix("/v2/")?;
        let mut link = match self.style {
            RouteStyle::PathPrefix => format!("/v2/{}/{rest}", self.registry),
            RouteStyle::Namespace | RouteStyle::Implicit => format!("/v2/{rest}"),
        };
        let mut pairs: Vec<(String, String)> = query
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .filter(|(k, _)| k != "ns")
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        if self.style == RouteStyle::Namespace {
            pairs.push(("ns".to_owned(), self.registry.to_string()));
        }
        if !pairs.is_empty() {
            let encoded = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(pairs)
                .finish();
            link.push('?');
            link.push_str(&encoded);
        }
        Some(link)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: Method, path: &str, query: Option<&str>) -> Result<ApiRequest, RouteError> {
        let default = RegistryHost::parse("docker.io").unwrap();
        let ctx = RouteContext {
            default_registry: &default,
            authority: None,
        };
        parse(&method, path, query, &ctx)
    }

    fn read(path: &str, query: Option<&str>) -> Route {
        match route(Method::GET, path, query) {
            Ok(ApiRequest::Read(r)) => r,
            other => panic!("{path}: {other:?}"),
        }
    }

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn ping() {
        assert_eq!(route(Method::GET, "/v2/", None), Ok(ApiRequest::Ping));
        assert_eq!(route(Method::HEAD, "/v2", None), Ok(ApiRequest::Ping));
    }

    #[test]
    fn default_registry_gets_library() {
        let r = read("/v2/alpine/manifests/3.20", None);
        assert_eq!(r.registry.as_str(), "docker.io");
        assert_eq!(r.repository.as_str(), "library/alpine");
        assert_eq!(r.kind, RouteKind::Manifest(Reference::Tag("3.20".into())));
        assert_eq!(r.style, RouteStyle::Implicit);
    }

    #[test]
    fn containerd_namespace() {
        let r = read(&format!("/v2/org/app/blobs/{D}"), Some("ns=ghcr.io"));
        assert_eq!(r.registry.as_str(), "ghcr.io");
        assert_eq!(r.repository.as_str(), "org/app");
        assert_eq!(r.style, RouteStyle::Namespace);
        // override_path: the prefix repeats ns and is dropped.
        let r = read(
            "/v2/docker.io/library/busybox/manifests/latest",
            Some("ns=docker.io"),
        );
        assert_eq!(r.repository.as_str(), "library/busybox");
        // ns with a dotted first namespace component keeps it.
        let r = read("/v2/my.org/app/manifests/1", Some("ns=quay.io"));
        assert_eq!(r.repository.as_str(), "my.org/app");
        let r = read("/v2/busybox/manifests/1", Some("ns=index.docker.io"));
        assert_eq!(r.repository.as_str(), "library/busybox");
    }

    #[test]
    fn path_prefix() {
        let r = read(
            "/v2/registry.example:5000/team/app/tags/list",
            Some("n=10&last=b"),
        );
        assert_eq!(r.registry.as_str(), "registry.example:5000");
        assert_eq!(r.repository.as_str(), "team/app");
        assert_eq!(
            r.kind,
            RouteKind::Tags {
                n: Some(10),
                last: Some("b".into())
            }
        );
        let r = read("/v2/localhost/app/manifests/x", None);
        assert_eq!(r.registry.as_str(), "localhost");
    }

    #[test]
    fn unsupported_and_invalid() {
        assert_eq!(
            route(Method::POST, "/v2/a/blobs/uploads/", None),
            Err(RouteError::Unsupported("blob upload"))
        );
        assert_eq!(
            route(Method::GET, "/v2/a/blobs/uploads/123", None),
            Err(RouteError::Unsupported("blob upload"))
        );
        assert_eq!(
            route(Method::PUT, "/v2/a/manifests/x", None),
            Err(RouteError::Unsupported("push"))
        );
        assert_eq!(
            route(Method::DELETE, "/v2/a/manifests/x", None),
            Err(RouteError::Unsupported("delete"))
        );
        assert_eq!(
            route(Method::GET, "/v2/_catalog", None),
            Err(RouteError::Unsupported("the catalog"))
        );
        assert!(matches!(
            route(Method::GET, "/v2/../etc/manifests/x", None),
            Err(RouteError::Invalid(_))
        ));
        assert!(matches!(
            route(Method::GET, "/v2/a/blobs/sha256:zz", None),
            Err(RouteError::Invalid(NameError::Digest(_)))
        ));
        assert!(matches!(
            route(Method::GET, "/v2/a/foo/bar", None),
            Err(RouteError::NotApi(_))
        ));
        assert!(matches!(
            route(Method::GET, "/v2/a/manifests/x", Some("ns=bad host")),
            Err(RouteError::Invalid(NameError::Registry(_)))
        ));
    }

    #[test]
    fn a_proxy_requests_authority_is_its_only_registry() {
        let default = RegistryHost::parse("docker.io").unwrap();
        let corp = RegistryHost::parse("registry.corp").unwrap();
        let ctx = RouteContext {
            default_registry: &default,
            authority: Some(&corp),
        };
        let get = |path: &str, q: Option<&str>| parse(&Method::GET, path, q, &ctx);
        let Ok(ApiRequest::Read(r)) = get("/v2/my.org/app/manifests/1", None) else {
            panic!("parses")
        };
        // A dotted first component is part of the repository, not another registry.
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("registry.corp", "my.org/app")
        );
        assert!(matches!(
            get("/v2/app/manifests/1", Some("ns=ghcr.io")),
            Err(RouteError::Authority { .. })
        ));
        assert!(get("/v2/app/manifests/1", Some("ns=registry.corp")).is_ok());
        let hub = RegistryHost::parse("registry-1.docker.io").unwrap();
        let ctx = RouteContext {
            default_registry: &corp,
            authority: Some(&hub),
        };
        let Ok(ApiRequest::Read(r)) = parse(&Method::GET, "/v2/alpine/manifests/3", None, &ctx)
        else {
            panic!("parses")
        };
        assert_eq!(r.repository.as_str(), "library/alpine");
    }

    #[test]
    fn links_keep_the_clients_form() {
        let up = "/v2/team/app/tags/list?n=2&last=b";
        let r = read("/v2/r.example/team/app/tags/list", None);
        assert_eq!(
            r.client_link(up).unwrap(),
            "/v2/r.example/team/app/tags/list?n=2&last=b"
        );
        let r = read("/v2/team/app/tags/list", Some("ns=r.example"));
        assert_eq!(
            r.client_link(up).unwrap(),
            "/v2/team/app/tags/list?n=2&last=b&ns=r.example"
        );
        assert!(r.client_link("https://elsewhere/x").is_none());
    }
}
