//! Property tests (proptest) for the parsers that see untrusted input: routes, names and
//! digests, `WWW-Authenticate` challenges, `Range`, `Accept`, configuration files and
//! manifests. The same parsers are fuzzed by `bash tests/fuzz.sh SECONDS` (fuzz/); every
//! crash a fuzzer finds becomes a plain `#[test]` at the end of this file, its input inlined.
//!
//! Cases are kept at 256 per property so the whole file runs in seconds in a debug build.
//! Failures are not persisted to a file: a failing case is printed (shrunk), and then belongs
//! at the end of this file as a regression test.

use bytes::Bytes;
use http::Method;
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

use stevedore::config::Config;
use stevedore::pull::{ByteRange, MANIFEST_TYPES, ManifestAccept, Span, referenced_digests};
use stevedore::reference::{Digest, DigestAlgorithm, Reference, RegistryHost, Repository};
use stevedore::route::{self, ApiRequest, Route, RouteContext, RouteError, RouteKind, RouteStyle};
use stevedore::upstream::{Challenge, parse_challenge};

/// 256 cases per property, or `PROPTEST_CASES` when set (for a longer run).
fn config() -> ProptestConfig {
    let base = ProptestConfig::default();
    ProptestConfig {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            base.cases
        } else {
            256
        },
        failure_persistence: None,
        ..base
    }
}

// ---------------------------------------------------------------------------------------
// Strategies

fn digest_str() -> impl Strategy<Value = String> {
    prop_oneof!["sha256:[0-9a-f]{64}", "sha512:[0-9a-f]{128}"]
}

/// One repository path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn component() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,6}((\\.|_|__|-{1,3})[a-z0-9]{1,6}){0,2}"
}

fn repo_components() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(component(), 1..4)
}

fn tag() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,40}"
}

/// A host name with its letters in any case, and maybe a port.
fn host() -> impl Strategy<Value = String> {
    let label = "[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?";
    (
        prop::collection::vec(label, 1..4),
        prop::option::of(0u32..65_536),
        any::<u64>(),
    )
        .prop_map(|(labels, port, case)| {
            let mut h: String = labels
                .join(".")
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if case >> (i % 64) & 1 == 1 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect();
            if let Some(p) = port {
                h.push_str(&format!(":{p}"));
            }
            h
        })
}

/// Strings near the grammar: its own characters and separators, plus some others.
fn name_like() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9._/:@\\[\\]-]{0,24}"
}

fn docker_hub() -> RegistryHost {
    RegistryHost::parse("docker.io").expect("docker.io is a registry")
}

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

fn parse_route(
    method: &Method,
    path: &str,
    query: Option<&str>,
    default: &RegistryHost,
) -> Result<ApiRequest, RouteError> {
    let ctx = RouteContext {
        default_registry: default,
        authority: None,
    };
    route::parse(method, path, query, &ctx)
}

fn read(result: Result<ApiRequest, RouteError>) -> Route {
    match result {
        Ok(ApiRequest::Read(r)) => r,
        other => panic!("expected a read: {other:?}"),
    }
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

fn range_model(range: ByteRange, size: u64) -> Span {
    let part = |start: u64, end: u64| {
        if start < end && end <= size {
            Span::Part { start, end }
        } else {
            Span::Unsatisfiable
        }
    };
    match range {
        ByteRange::From(s) => part(s, size),
        ByteRange::Between(s, e) => part(s, e.saturating_add(1).min(size)),
        ByteRange::Last(n) => part(size - n.min(size), size),
    }
}

fn any_range() -> impl Strategy<Value = ByteRange> {
    let n = prop_oneof![0u64..16, any::<u64>(), Just(u64::MAX), Just(u64::MAX - 1)];
    (0u8..3, n.clone(), n).prop_map(|(k, a, b)| match k {
        0 => ByteRange::From(a),
        1 => ByteRange::Between(a, b),
        _ => ByteRange::Last(a),
    })
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,10}"
}

/// A challenge to print: scheme, params (name, value) in the case given.
fn challenge() -> impl Strategy<Value = (String, Vec<(String, String)>)> {
    (
        token(),
        prop::collection::vec((token(), any::<String>()), 0..4),
    )
}

fn quote(v: &str) -> String {
    let mut out = String::from("\"");
    for c in v.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A TOML basic string holding `s` exactly.
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn check_config_result(result: Result<Config, stevedore::config::ConfigError>) {
    if let Err(e) = result {
        assert_eq!(e.file, "p.toml");
        assert!(!e.problems.is_empty());
        for p in &e.problems {
            assert!(!p.key.is_empty() && !p.message.is_empty(), "{e:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// References and digests

proptest! {
    #![proptest_config(config())]

    #[test]
    fn valid_digests_round_trip(s in digest_str()) {
        let d: Digest = s.parse().expect("a valid digest");
        prop_assert_eq!(d.to_string(), s.clone());
        let (algo, hex) = s.split_once(':').expect("algo:hex");
        let expected = if algo == "sha256" { DigestAlgorithm::Sha256 } else { DigestAlgorithm::Sha512 };
        prop_assert_eq!(d.algorithm(), expected);
        prop_assert_eq!(d.hex(), hex);
        prop_assert_eq!(Reference::parse(&s), Ok(Reference::Digest(d)));
    }

    #[test]
    fn parsed_digests_print_as_given(s in prop_oneof![any::<String>(), "sha(256|512|1):[0-9a-fA-Fg]{0,130}"]) {
        if let Ok(d) = s.parse::<Digest>() {
            prop_assert_eq!(d.to_string(), s.clone());
            prop_assert!(d.hex().len() == 64 || d.hex().len() == 128);
        }
    }

    #[test]
    fn uppercase_or_short_hex_is_refused(hex in "[0-9a-f]{0,63}[A-F][0-9a-f]{0,63}", short in "[0-9a-f]{0,63}") {
        let upper = format!("sha256:{hex}");
        prop_assert!(upper.parse::<Digest>().is_err(), "{}", upper);
        let short = format!("sha256:{short}");
        prop_assert!(short.parse::<Digest>().is_err(), "{}", short);
    }

    #[test]
    fn computed_digests_parse_and_match(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let d = Digest::sha256_of(&bytes);
        prop_assert!(d.matches(&bytes));
        prop_assert_eq!(d.to_string().parse::<Digest>(), Ok(d));
    }

    #[test]
    fn valid_repositories_parse(comps in repo_components()) {
        let name = comps.join("/");
        let repo = Repository::parse(&name).expect("a valid repository");
        prop_assert_eq!(repo.as_str(), name.as_str());
    }

    #[test]
    fn parsed_repositories_are_lowercase_without_empty_components(s in prop_oneof![name_like(), any::<String>()]) {
        if let Ok(repo) = Repository::parse(&s) {
            let r = repo.as_str();
            prop_assert_eq!(r, s.as_str());
            prop_assert!(r.len() <= 255);
            prop_assert!(!r.bytes().any(|b| b.is_ascii_uppercase()), "{}", r);
            for c in r.split('/') {
                prop_assert!(!c.is_empty(), "{}", r);
                let first = c.as_bytes()[0];
                let last = c.as_bytes()[c.len() - 1];
                prop_assert!(first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric(), "{}", r);
            }
        }
    }

    #[test]
    fn uppercase_repositories_are_refused(comps in repo_components(), at in any::<prop::sample::Index>()) {
        let name = comps.join("/");
        // Uppercase one of its letters, or put an uppercase letter in front of a name of
        // digits only.
        let letters: Vec<usize> = name
            .bytes()
            .enumerate()
            .filter(|(_, b)| b.is_ascii_lowercase())
            .map(|(i, _)| i)
            .collect();
        let mut upper = name.clone().into_bytes();
        if letters.is_empty() {
            upper.insert(0, b'A');
        } else {
            let i = letters[at.index(letters.len())];
            upper[i] = upper[i].to_ascii_uppercase();
        }
        let upper = String::from_utf8(upper).expect("ASCII");
        prop_assert!(Repository::parse(&upper).is_err(), "{}", upper);
    }

    #[test]
    fn tags_parse_and_print_as_given(t in tag()) {
        prop_assert_eq!(Reference::parse(&t), Ok(Reference::Tag(t.clone())));
        prop_assert_eq!(Reference::parse(&t).map(|r| r.to_string()), Ok(t));
    }

    #[test]
    fn parsed_references_print_as_given(s in prop_oneof![name_like(), any::<String>(), "[a-z0-9._-]{120,140}"]) {
        if let Ok(r) = Reference::parse(&s) {
            prop_assert_eq!(r.to_string(), s.clone());
            if let Reference::Tag(t) = &r {
                prop_assert!(t.len() <= 128 && !t.is_empty());
            }
        }
    }

    #[test]
    fn registry_hosts_are_canonical(h in host()) {
        let parsed = RegistryHost::parse(&h);
        let (name, port) = match h.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (h.as_str(), None),
        };
        if port.is_some_and(|p| p.len() > 5) {
            prop_assert!(parsed.is_err(), "{}", h);
            return Ok(());
        }
        let parsed = parsed.map_err(|e| TestCaseError::fail(format!("{h}: {e}")))?;
        let lower = h.to_ascii_lowercase();
        let canonical = match lower.as_str() {
            "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io",
            other => other,
        };
        prop_assert_eq!(parsed.as_str(), canonical);
        prop_assert_eq!(parsed.hostname(), name.to_ascii_lowercase());
        prop_assert_eq!(RegistryHost::parse(parsed.as_str()), Ok(parsed.clone()));
    }

    #[test]
    fn parsed_registry_hosts_are_idempotent(s in prop_oneof![name_like(), any::<String>()]) {
        if let Ok(h) = RegistryHost::parse(&s) {
            prop_assert!(!h.as_str().bytes().any(|b| b.is_ascii_uppercase()), "{}", h);
            prop_assert_eq!(RegistryHost::parse(h.as_str()), Ok(h.clone()));
            prop_assert!(h.as_str().starts_with(h.hostname()));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Routes

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

// ---------------------------------------------------------------------------------------
// WWW-Authenticate challenges

proptest! {
    #![proptest_config(config())]

    #[test]
    fn printed_challenges_parse_back(challenges in prop::collection::vec(challenge(), 0..4), spaces in 0usize..3) {
        let pad = " ".repeat(spaces);
        let printed: Vec<String> = challenges
            .iter()
            .map(|(scheme, params)| {
                let params: Vec<String> = params
                    .iter()
                    .map(|(k, v)| format!("{k}{pad}={pad}{}", quote(v)))
                    .collect();
                if params.is_empty() {
                    scheme.clone()
                } else {
                    format!("{scheme} {}", params.join(&format!(",{pad}")))
                }
            })
            .collect();
        let header = printed.join(&format!(",{pad}"));
        let expected: Vec<Challenge> = challenges
            .iter()
            .map(|(scheme, params)| Challenge {
                scheme: scheme.to_ascii_lowercase(),
                params: params.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect(),
            })
            .collect();
        prop_assert_eq!(parse_challenge(&header), expected);
    }

    #[test]
    fn token68_is_one_unnamed_value(scheme in token(), t in "[A-Za-z0-9._~+/-]{1,20}={0,2}", then in prop::option::of(challenge())) {
        let mut header = format!("{scheme} {t}");
        if let Some((s2, params)) = &then {
            header.push_str(&format!(", {s2}"));
            for (i, (k, v)) in params.iter().enumerate() {
                header.push_str(if i == 0 { " " } else { ", " });
                header.push_str(&format!("{k}={}", quote(v)));
            }
        }
        let got = parse_challenge(&header);
        prop_assert!(!got.is_empty());
        prop_assert_eq!(&got[0].scheme, &scheme.to_ascii_lowercase());
        prop_assert_eq!(&got[0].params, &vec![(String::new(), t.clone())]);
        prop_assert_eq!(got.len(), 1 + usize::from(then.is_some()), "{:?}", got);
    }

    #[test]
    fn any_header_parses_to_token_schemes(value in prop_oneof![
        any::<String>(),
        "[A-Za-z]{1,6}( [a-z]{1,5}=(\"[^\"]{0,8}\"?|[a-z=]{0,4}))?([ ,\t]{0,3}[A-Za-z\"=\\\\]{0,6}){0,4}",
    ]) {
        for c in parse_challenge(&value) {
            prop_assert!(!c.scheme.is_empty() && c.scheme.bytes().all(is_tchar), "{:?}", c);
            prop_assert!(!c.scheme.bytes().any(|b| b.is_ascii_uppercase()), "{:?}", c);
            for (k, _) in &c.params {
                prop_assert!(k.is_empty() || k.bytes().all(is_tchar), "{:?}", c);
                prop_assert!(!k.bytes().any(|b| b.is_ascii_uppercase()), "{:?}", c);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Range and Accept

proptest! {
    #![proptest_config(config())]

    #[test]
    fn resolving_any_range_stays_within_the_content(range in any_range(), size in prop_oneof![0u64..32, any::<u64>(), Just(u64::MAX)]) {
        let span = range.resolve(size);
        if let Span::Part { start, end } = span {
            prop_assert!(start < end && end <= size, "{:?} of {}: {:?}", range, size, span);
        }
        prop_assert_ne!(span, Span::Whole);
        prop_assert_eq!(span, range_model(range, size));
    }

    #[test]
    fn resolve_never_panics_for_any_numbers(a in any::<u64>(), b in any::<u64>(), size in any::<u64>()) {
        for range in [ByteRange::From(a), ByteRange::Between(a, b), ByteRange::Between(b, a), ByteRange::Last(a)] {
            let _ = range.resolve(size);
            let _ = range.resolve(a);
            let _ = range.resolve(b);
        }
    }

    #[test]
    fn printed_ranges_parse(a in any::<u64>(), b in any::<u64>(), upper in any::<bool>(), pad in " {0,2}") {
        let unit = if upper { "BYTES=" } else { "bytes=" };
        let between = ByteRange::parse(&format!("{pad}{unit}{a}{pad}-{pad}{b}{pad}"));
        prop_assert_eq!(between, (a <= b).then_some(ByteRange::Between(a, b)));
        prop_assert_eq!(ByteRange::parse(&format!("{unit}{a}-")), Some(ByteRange::From(a)));
        prop_assert_eq!(ByteRange::parse(&format!("{unit}-{b}")), Some(ByteRange::Last(b)));
        prop_assert_eq!(ByteRange::parse(&format!("{unit}0-{a},{b}-")), None);
        prop_assert_eq!(ByteRange::parse(&format!("items={a}-")), None);
    }

    #[test]
    fn parsed_ranges_print_back(value in prop_oneof![
        any::<String>(),
        "(bytes|BYTES|Bytes|byte)=[ ]?[0-9]{0,21}[ ]?-[ ]?[0-9+-]{0,21}[ ,]{0,2}",
    ]) {
        if let Some(range) = ByteRange::parse(&value) {
            if let ByteRange::Between(s, e) = range {
                prop_assert!(s <= e);
            }
            prop_assert_eq!(ByteRange::parse(&range.header()), Some(range));
        }
    }

    #[test]
    fn accept_sets_are_known_types_in_order(
        chosen in prop::sample::subsequence(MANIFEST_TYPES.to_vec(), 0..=MANIFEST_TYPES.len()),
        extra in prop::collection::vec(prop_oneof!["[a-z]{1,8}/[a-z.+-]{1,12}", Just("*/*".to_owned()), Just("application/json".to_owned())], 0..3),
        shuffle in any::<u64>(),
        upper in any::<bool>(),
        params in prop::option::of(Just("; q=0.5")),
        join in any::<bool>(),
    ) {
        let mut values: Vec<String> = chosen
            .iter()
            .map(|t| {
                let t = if upper { t.to_ascii_uppercase() } else { (*t).to_owned() };
                format!("{t}{}", params.unwrap_or(""))
            })
            .chain(extra.iter().cloned())
            .collect();
        let len = values.len().max(1);
        values.rotate_left((shuffle as usize) % len);
        let accept = if join {
            ManifestAccept::parse([values.join(", ").as_str()])
        } else {
            ManifestAccept::parse(values.iter().map(String::as_str))
        };
        let wildcard = extra.iter().any(|e| e == "*/*" || e == "application/json");
        let expected: Vec<String> = if chosen.is_empty() || wildcard {
            MANIFEST_TYPES.iter().map(|t| (*t).to_owned()).collect()
        } else {
            chosen.iter().map(|t| (*t).to_owned()).collect()
        };
        prop_assert_eq!(accept.media_types(), expected);
        prop_assert_eq!(ManifestAccept::parse(accept.media_types().iter().map(String::as_str)), accept);
    }

    #[test]
    fn any_accept_list_is_a_nonempty_known_set(values in prop::collection::vec(any::<String>(), 0..4)) {
        let accept = ManifestAccept::parse(values.iter().map(String::as_str));
        let types = accept.media_types();
        prop_assert!(!types.is_empty());
        prop_assert!(types.iter().all(|t| MANIFEST_TYPES.contains(&t.as_str())));
    }
}

// ---------------------------------------------------------------------------------------
// Configuration

/// Keys of every section, with a value strategy that is sometimes right and sometimes not.
fn config_line() -> impl Strategy<Value = (usize, String)> {
    const SECTIONS: [&str; 7] = [
        "server",
        "routing",
        "upstream",
        "store",
        "limits",
        "credentials",
        "registries.\"r.example\"",
    ];
    const KEYS: [&[&str]; 7] = [
        &["listen", "metrics-listen"],
        &["default-registry", "allow-unknown-registries"],
        &["connect-timeout", "read-timeout", "max-manifest-bytes"],
        &[
            "max-size",
            "tag-ttl",
            "stale-max-age",
            "fill-timeout",
            "fill-retries",
            "max-concurrent-fills",
            "min-free-space",
        ],
        &[
            "header-read-timeout",
            "idle-timeout",
            "send-timeout",
            "max-connections",
            "max-connections-per-client",
            "max-header-bytes",
            "http2-max-concurrent-streams",
            "stream-buffer",
            "socket-send-buffer",
            "requests-per-second",
            "request-burst",
        ],
        &["helper-timeout"],
        &[
            "endpoints",
            "auth-realms",
            "proxy",
            "allow-private-network",
            "username",
            "password",
            "auth",
            "identitytoken",
            "registrytoken",
            "budget",
        ],
    ];
    let value = prop_oneof![
        any::<String>().prop_map(|s| toml_str(&s)),
        "[0-9]{1,22}(\\.[0-9]{0,3})?( ?[KMGTkmgt]i?[Bb]?)?".prop_map(|s| toml_str(&s)),
        "[0-9]{1,22}( ?(ns|us|ms|s|m|h|d|w|y|years|nsec))?".prop_map(|s| toml_str(&s)),
        prop_oneof![Just(0i64), Just(-1), Just(i64::MAX), any::<i64>()].prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        "(https?|ftp)://[a-z0-9.:\\[\\]@]{0,20}(/[a-z]{0,3})?"
            .prop_map(|s| format!("[{}]", toml_str(&s))),
        "[0-9a-f:.\\[\\]]{1,20}:[0-9]{1,6}".prop_map(|s| toml_str(&s)),
        Just("{ env = \"STEVEDORE_PROPERTIES_UNSET\" }".to_owned()),
        Just("{ manifest-gets = 0, per = \"0s\" }".to_owned()),
    ];
    (0usize..7, any::<prop::sample::Index>(), value).prop_map(move |(s, k, v)| {
        let key = KEYS[s][k.index(KEYS[s].len())];
        (s, format!("[{}]\n{key} = {v}\n", SECTIONS[s]))
    })
}

fn policy_doc() -> impl Strategy<Value = String> {
    (
        prop::collection::vec("[a-z*]{0,6}", 0..3),
        prop::collection::vec(prop_oneof!["[0-9a-f.:/]{0,24}", any::<String>()], 0..3),
        prop::collection::vec("[0-9a-fA-F]{60,66}", 0..2),
        prop::collection::vec(prop_oneof!["[a-z0-9._/*-]{0,12}", any::<String>()], 0..3),
        prop::collection::vec(prop_oneof![host(), Just("*".to_owned()), any::<String>()], 0..3),
        prop_oneof![Just("any"), Just("digests"), Just("tags")],
    )
        .prop_map(|(ids, cidrs, tokens, repos, regs, refs)| {
            let list = |v: &[String]| {
                let items: Vec<String> = v.iter().map(|s| toml_str(s)).collect();
                format!("[{}]", items.join(", "))
            };
            format!(
                "[policy.identities.a]\ncidrs = {}\ntokens-sha256 = {}\n[[policy.rules]]\nidentities = {}\nregistries = {}\nrepositories = {}\nreferences = \"{refs}\"\n",
                list(&cidrs),
                list(&tokens),
                list(&ids),
                list(&regs),
                list(&repos),
            )
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_text_is_a_config_or_an_error(text in prop_oneof![
        any::<String>(),
        "(\\[[a-z.\"]{0,12}\\]\n)?[a-z-]{0,12} ?= ?[\"'\\[{]?[^\n]{0,16}\n?[\u{80}-\u{10ffff}]{0,3}",
    ]) {
        check_config_result(Config::from_toml(&text, "p.toml"));
    }

    #[test]
    fn generated_configs_never_panic(lines in prop::collection::vec(config_line(), 0..6), policy in prop::option::of(policy_doc())) {
        // One table per section: TOML refuses a table defined twice, so keep the first.
        let mut seen = std::collections::BTreeSet::new();
        let mut text = String::new();
        for (section, line) in &lines {
            if seen.insert(*section) {
                text.push_str(line);
            }
        }
        if let Some(p) = &policy {
            text.push_str(p);
        }
        check_config_result(Config::from_toml(&text, "p.toml"));
    }

    #[test]
    fn broken_toml_after_unicode_never_panics(prefix in "[^\n]{0,10}", junk in "[\u{80}-\u{10ffff}=\\[\"]{1,6}", suffix in "[^\n]{0,10}") {
        // Error positions are byte offsets turned into line and column.
        let text = format!("[server]\n{prefix}{junk}{suffix}\nlisten = {junk}\n");
        check_config_result(Config::from_toml(&text, "p.toml"));
    }
}

// ---------------------------------------------------------------------------------------
// Manifests

fn digest_field() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{Value, json};
    prop_oneof![
        4 => digest_str().prop_map(|d| json!({ "digest": d, "size": 1 })),
        1 => "sha256:[0-9a-fA-F]{0,65}".prop_map(|d| json!({ "digest": d })),
        1 => Just(json!({ "digest": 7 })),
        1 => Just(json!({})),
        1 => Just(Value::Null),
        1 => Just(json!(["sha256:0"])),
    ]
}

fn digest_of(v: &serde_json::Value) -> Option<Digest> {
    v.get("digest")?.as_str()?.parse().ok()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn manifests_reference_config_layers_children_and_blobs_never_the_subject(
        config in prop::option::of(digest_field()),
        layers in prop::option::of(prop::collection::vec(digest_field(), 0..4)),
        manifests in prop::option::of(prop::collection::vec(digest_field(), 0..3)),
        blobs in prop::option::of(prop::collection::vec(digest_field(), 0..3)),
        subject in prop::option::of(digest_str()),
        noise in prop::option::of(Just(serde_json::json!({"layers": "not a list", "digest": "sha256:x"}))),
    ) {
        let mut m = serde_json::Map::new();
        m.insert("schemaVersion".into(), 2.into());
        let mut expected = Vec::new();
        if let Some(c) = &config {
            m.insert("config".into(), c.clone());
            expected.extend(digest_of(c));
        }
        for (key, list) in [("layers", &layers), ("manifests", &manifests), ("blobs", &blobs)] {
            if let Some(items) = list {
                m.insert(key.into(), serde_json::Value::Array(items.clone()));
                expected.extend(items.iter().filter_map(digest_of));
            }
        }
        if let Some(s) = &subject {
            m.insert("subject".into(), serde_json::json!({ "digest": s, "size": 2 }));
        }
        if let Some(n) = noise {
            m.insert("annotations".into(), n);
        }
        let bytes = Bytes::from(serde_json::to_vec(&m).expect("JSON"));
        let got = referenced_digests(&bytes);
        prop_assert_eq!(&got, &expected);
        if let Some(s) = &subject {
            let s: Digest = s.parse().expect("a valid digest");
            prop_assert!(!got.contains(&s) || expected.contains(&s), "the subject was returned");
        }
    }

    #[test]
    fn any_bytes_never_panic(bytes in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..128),
        "\\{\"(config|layers|manifests|blobs|subject)\": ?[\\[{]?(\\{\"digest\": ?\"sha256:[0-9a-f]{0,64}\"\\},?){0,2}[\\]}]?\\}".prop_map(String::into_bytes),
    ]) {
        let got = referenced_digests(&Bytes::from(bytes));
        for d in &got {
            prop_assert_eq!(d.to_string().parse::<Digest>(), Ok(d.clone()));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Regressions: every crash the fuzzers found, its input inlined.

/// Found by the `route` fuzz target (crash-7e4a88c7…, kept as
/// fuzz/seeds/route/regression-ipv6-literal-suffix; flag byte 0, so GET with Docker Hub as
/// the default registry). `RegistryHost::parse` validated only the part of an IPv6 literal up
/// to `]` and a `:port` after it, but kept whatever else followed, so the first path component
/// `[::1]?-ref\x18` was taken as a registry: its name held `?` and a control character, and the
/// link stevedore handed back for it (`/v2/[::1]?-ref\x18/v2/app/manifests/x`) no longer
/// parsed. Fixed in e600966.
#[test]
fn registry_host_refuses_bytes_after_an_ipv6_literal() {
    let path = "/v2/[::1]?-ref\u{18}/v2/app/manifests/x";
    let default = docker_hub();
    match parse_route(&Method::GET, path, None, &default) {
        Ok(ApiRequest::Read(r)) => {
            let link = r
                .client_link(&r.upstream_path())
                .expect("a link for the route's own path");
            let (p, q) = match link.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (link.as_str(), None),
            };
            let back = read(parse_route(&Method::GET, p, q, &default));
            assert_eq!(back, r, "{link}");
        }
        Ok(other) => panic!("{other:?}"),
        Err(_) => {}
    }
    for bad in [
        "[::1]?-ref\u{18}",
        "[::1]x",
        "[::1]@evil.example",
        "[::1]/../..",
        "[::1]#",
    ] {
        assert!(
            RegistryHost::parse(bad).is_err(),
            "{bad:?} parsed as {:?}",
            RegistryHost::parse(bad)
        );
    }
}

/// The same bug through `?ns=`, where `/` is not a separator: the registry name
/// `[::1]/../../x` was accepted, and the store joins registry names onto its root
/// (`src/store/index.rs` `repo_dir`), so such a name climbed out of it.
#[test]
fn namespace_registry_cannot_hold_path_separators() {
    let parsed = parse_route(
        &Method::GET,
        "/v2/app/manifests/latest",
        Some("ns=%5B%3A%3A1%5D%2F..%2F..%2Fx"),
        &docker_hub(),
    );
    assert!(
        matches!(parsed, Err(RouteError::Invalid(_))),
        "accepted: {parsed:?}"
    );
}
