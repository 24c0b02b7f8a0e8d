//! Properties of the route parser: each route style, forward-proxy authorities, client links.

use http::Method;
use proptest::prelude::*;

use stevedore::reference::{Digest, Reference, RegistryHost, Repository};
use stevedore::route::{self, ApiRequest, Route, RouteContext, RouteError, RouteKind, RouteStyle};

use super::{
    component, config, digest_str, docker_hub, host, name_like, parse_route, read, repo_components,
    tag,
};

/// Whether a path component names a registry: `.` in it or `localhost`, and a valid host.
/// (Written here rather than borrowed from the crate, as an independent model.)
fn component_is_host(c: &str) -> bool {
    (c.contains('.') || c == "localhost")
        && c.len() <= 253
        && c.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The registry, repository and style the route parser should pick for `/v2/<comps…>/…`
/// without `?ns=`.
fn model_route(default: &RegistryHost, comps: &[String]) -> (RegistryHost, String, RouteStyle) {
    let (registry, name, style) = if comps.len() > 1 && component_is_host(&comps[0]) {
        let registry = RegistryHost::parse(&comps[0]).expect("a host component");
        (registry, &comps[1..], RouteStyle::PathPrefix)
    } else {
        (default.clone(), comps, RouteStyle::Implicit)
    };
    let mut repo = name.join("/");
    if registry.is_docker_hub() && name.len() == 1 {
        repo = format!("library/{repo}");
    }
    (registry, repo, style)
}

fn encode_query(pairs: &[(&str, String)]) -> Option<String> {
    if pairs.is_empty() {
        return None;
    }
    Some(
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish(),
    )
}

/// Checks what every parsed route must satisfy, and that the paths it hands out (upstream,
/// and back to the client) lead to the same content.
fn check_route(r: &Route, method: &Method, ctx: &RouteContext<'_>) -> Result<(), TestCaseError> {
    let repo = r.repository.as_str();
    prop_assert_eq!(Repository::parse(repo), Ok(r.repository.clone()));
    prop_assert!(!repo.bytes().any(|b| b.is_ascii_uppercase()), "{}", repo);
    prop_assert!(repo.split('/').all(|c| !c.is_empty()), "{}", repo);
    if r.registry.is_docker_hub() {
        prop_assert!(
            repo.contains('/'),
            "Docker Hub name without namespace: {}",
            repo
        );
    }
    let upstream = r.upstream_path();
    prop_assert!(
        upstream.starts_with(&format!("/v2/{repo}/")),
        "{}",
        upstream
    );
    let query = encode_query(&r.upstream_query());

    let comps: Vec<&str> = repo.split('/').collect();
    if comps.len() == 1 || !component_is_host(comps[0]) {
        let again = parse_route(&Method::GET, &upstream, query.as_deref(), &r.registry);
        let expected = Route {
            head: false,
            style: RouteStyle::Implicit,
            ..r.clone()
        };
        prop_assert_eq!(again, Ok(ApiRequest::Read(expected)));
    }

    let full = match &query {
        Some(q) => format!("{upstream}?{q}"),
        None => upstream.clone(),
    };
    let Some(link) = r.client_link(&full) else {
        return Err(TestCaseError::fail(format!("no client link for {full}")));
    };
    let (path, q) = match link.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (link.as_str(), None),
    };
    let back = read(route::parse(method, path, q, ctx));
    prop_assert_eq!(&back.registry, &r.registry);
    prop_assert_eq!(&back.kind, &r.kind);
    prop_assert_eq!(&back.style, &r.style);
    prop_assert_eq!(back.head, r.head);
    // In the `?ns=` form a first component that spells the registry is dropped (containerd's
    // override_path), so such a repository is ambiguous there.
    let ambiguous = r.style == RouteStyle::Namespace
        && comps.len() > 1
        && RegistryHost::parse(comps[0]).is_ok_and(|h| h == r.registry);
    if !ambiguous {
        prop_assert_eq!(&back.repository, &r.repository, "{}", link);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn blob_routes_name_their_repository(comps in repo_components(), d in digest_str(), head in any::<bool>()) {
        let default = docker_hub();
        let method = if head { Method::HEAD } else { Method::GET };
        let path = format!("/v2/{}/blobs/{d}", comps.join("/"));
        let r = read(parse_route(&method, &path, None, &default));
        let (registry, repo, style) = model_route(&default, &comps);
        prop_assert_eq!(&r.registry, &registry);
        prop_assert_eq!(r.repository.as_str(), repo.as_str());
        prop_assert_eq!(&r.style, &style);
        prop_assert_eq!(r.head, head);
        let digest: Digest = d.parse().expect("a valid digest");
        prop_assert_eq!(&r.kind, &RouteKind::Blob(digest));
        if comps.len() == 1 {
            prop_assert_eq!(r.repository.as_str(), format!("library/{}", comps[0]));
        }
        check_route(&r, &method, &RouteContext { default_registry: &default, authority: None })?;
    }

    #[test]
    fn other_default_registries_get_no_library(comps in repo_components(), t in tag()) {
        let default = RegistryHost::parse("registry.example:5000").expect("a host");
        let path = format!("/v2/{}/manifests/{t}", comps.join("/"));
        let r = read(parse_route(&Method::GET, &path, None, &default));
        let (registry, repo, style) = model_route(&default, &comps);
        prop_assert_eq!(&r.registry, &registry);
        prop_assert_eq!(r.repository.as_str(), repo.as_str());
        prop_assert_eq!(&r.style, &style);
        prop_assert_eq!(&r.kind, &RouteKind::Manifest(Reference::Tag(t)));
        check_route(&r, &Method::GET, &RouteContext { default_registry: &default, authority: None })?;
    }

    #[test]
    fn path_prefix_routes(h in host(), comps in repo_components(), d in digest_str()) {
        // A first component names a registry with a `.` or a `:` in it.
        let h = if h.contains('.') || h.contains(':') { h } else { format!("{h}.example") };
        let registry = RegistryHost::parse(&h).expect("a generated host");
        let path = format!("/v2/{h}/{}/manifests/{d}", comps.join("/"));
        let r = read(parse_route(&Method::GET, &path, None, &docker_hub()));
        prop_assert_eq!(&r.registry, &registry);
        prop_assert_eq!(&r.style, &RouteStyle::PathPrefix);
        let mut repo = comps.join("/");
        if registry.is_docker_hub() && comps.len() == 1 {
            repo = format!("library/{repo}");
        }
        prop_assert_eq!(r.repository.as_str(), repo.as_str());
        check_route(&r, &Method::GET, &RouteContext { default_registry: &docker_hub(), authority: None })?;
    }

    #[test]
    fn namespace_routes(h in host(), comps in repo_components(), n in prop::option::of(any::<u32>()), last in prop::option::of(any::<String>())) {
        let registry = RegistryHost::parse(&h).expect("a generated host");
        let mut pairs = vec![("ns", h.clone())];
        if let Some(n) = n {
            pairs.push(("n", n.to_string()));
        }
        if let Some(l) = &last {
            pairs.push(("last", l.clone()));
        }
        let query = encode_query(&pairs);
        let path = format!("/v2/{}/tags/list", comps.join("/"));
        let r = read(parse_route(&Method::GET, &path, query.as_deref(), &docker_hub()));
        prop_assert_eq!(&r.registry, &registry);
        prop_assert_eq!(&r.style, &RouteStyle::Namespace);
        prop_assert_eq!(&r.kind, &RouteKind::Tags { n, last });
        let mut name: &[String] = &comps;
        if comps.len() > 1 && RegistryHost::parse(&comps[0]).is_ok_and(|f| f == registry) {
            name = &comps[1..];
        }
        let mut repo = name.join("/");
        if registry.is_docker_hub() && name.len() == 1 {
            repo = format!("library/{repo}");
        }
        prop_assert_eq!(r.repository.as_str(), repo.as_str());
        check_route(&r, &Method::GET, &RouteContext { default_registry: &docker_hub(), authority: None })?;
    }

    #[test]
    fn referrer_routes_keep_the_artifact_type(comps in repo_components(), d in digest_str(), t in prop::option::of(any::<String>())) {
        let pairs: Vec<(&str, String)> = t.iter().map(|t| ("artifactType", t.clone())).collect();
        let query = encode_query(&pairs);
        let path = format!("/v2/{}/referrers/{d}", comps.join("/"));
        let r = read(parse_route(&Method::HEAD, &path, query.as_deref(), &docker_hub()));
        let digest: Digest = d.parse().expect("a valid digest");
        prop_assert_eq!(&r.kind, &RouteKind::Referrers { digest, artifact_type: t });
        check_route(&r, &Method::HEAD, &RouteContext { default_registry: &docker_hub(), authority: None })?;
    }

    #[test]
    fn forward_proxy_authority_is_the_only_registry(h in host(), comps in repo_components(), t in tag(), other in host()) {
        // The authority of a forward-proxy request names the registry, and the whole path is
        // a repository of it: a first component with a dot is part of the name.
        let authority = RegistryHost::parse(&h).expect("a generated host");
        let default = docker_hub();
        let ctx = RouteContext { default_registry: &default, authority: Some(&authority) };
        let path = format!("/v2/{}/manifests/{t}", comps.join("/"));
        let r = read(route::parse(&Method::GET, &path, None, &ctx));
        let mut repo = comps.join("/");
        if authority.is_docker_hub() && comps.len() == 1 {
            repo = format!("library/{repo}");
        }
        prop_assert_eq!(&r.registry, &authority);
        prop_assert_eq!(r.repository.as_str(), repo.as_str());
        prop_assert_eq!(&r.style, &RouteStyle::Implicit);
        check_route(&r, &Method::GET, &ctx)?;
        // `?ns=` may repeat the authority, and may not name another registry.
        let same = encode_query(&[("ns", h.clone())]);
        prop_assert_eq!(route::parse(&Method::GET, &path, same.as_deref(), &ctx), Ok(ApiRequest::Read(r)));
        let other_host = RegistryHost::parse(&other).expect("a generated host");
        let ns = encode_query(&[("ns", other.clone())]);
        let refused = route::parse(&Method::GET, &path, ns.as_deref(), &ctx);
        if other_host == authority {
            prop_assert!(refused.is_ok(), "{:?}", refused);
        } else {
            prop_assert!(matches!(refused, Err(RouteError::Authority { .. })), "{:?}", refused);
        }
    }

    #[test]
    fn any_request_parses_without_panicking(
        method in prop_oneof![Just(Method::GET), Just(Method::HEAD), Just(Method::PUT), Just(Method::POST), Just(Method::DELETE), Just(Method::PATCH), Just(Method::OPTIONS)],
        segments in prop::collection::vec(prop_oneof![
            name_like(), component(), digest_str(), tag(), any::<String>(),
            prop::sample::select(vec!["manifests", "blobs", "tags", "list", "referrers", "uploads", "", ".."])
                .prop_map(String::from),
        ], 0..7),
        query in prop::option::of(prop_oneof![any::<String>(), "(ns|n|last|artifactType)=[a-zA-Z0-9.:%&=\\[\\]-]{0,20}"]),
        authority in prop::option::of(host()),
    ) {
        let path = format!("/v2/{}", segments.join("/"));
        let default = docker_hub();
        let authority = authority.and_then(|a| RegistryHost::parse(&a).ok());
        let ctx = RouteContext { default_registry: &default, authority: authority.as_ref() };
        let parsed = route::parse(&method, &path, query.as_deref(), &ctx);
        if method != Method::GET && method != Method::HEAD {
            prop_assert!(parsed.is_err(), "{:?}", parsed);
        }
        if let Ok(ApiRequest::Read(r)) = &parsed {
            check_route(r, &method, &ctx)?;
        }
    }

    #[test]
    fn paths_outside_the_api_are_not_routes(path in any::<String>().prop_filter("an API path", |p| !p.starts_with("/v2"))) {
        let parsed = parse_route(&Method::GET, &path, None, &docker_hub());
        prop_assert!(matches!(parsed, Err(RouteError::NotApi(_))), "{:?}", parsed);
    }

    #[test]
    fn client_links_never_panic(comps in repo_components(), link in any::<String>(), ns in any::<bool>()) {
        let query = ns.then_some("ns=ghcr.io");
        let r = read(parse_route(&Method::GET, &format!("/v2/{}/tags/list", comps.join("/")), query, &docker_hub()));
        if let Some(out) = r.client_link(&link) {
            prop_assert!(out.starts_with("/v2/"), "{}", out);
        }
    }
}
