//! Route parsing: `route::parse` on any method, path, query and forward-proxy authority, and
//! `Route::client_link` on any upstream link.
//!
//! Input: one flag byte, then UTF-8 lines `path`, `query`, `authority`, `link` (all but the
//! path optional). Flags: bits 0-2 the method, bit 3 a query is given, bit 4 an authority is
//! given, bit 5 the default registry is not Docker Hub.
//!
//! Besides "never panics", every parsed route must:
//! - be for the forward-proxy authority's registry when there is one;
//! - have a valid, lowercase repository without empty components, and `library/` on Docker
//!   Hub for one-component names;
//! - parse back to itself from its `upstream_path` and `upstream_query`;
//! - parse back to itself from the `client_link` it hands out for its own upstream path.

#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use stevedore::reference::{RegistryHost, Repository, looks_like_host};
use stevedore::route::{self, ApiRequest, Route, RouteContext, RouteError, RouteStyle};

const METHODS: [&str; 8] = [
    "GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS", "PROPFIND",
];

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let mut lines = text.split('\n');
    let path = lines.next().unwrap_or("");
    let query = lines.next().filter(|_| flags & 0x08 != 0);
    let authority = lines.next().filter(|_| flags & 0x10 != 0);
    let link = lines.next();

    let Ok(method) = Method::from_bytes(METHODS[usize::from(flags & 7)].as_bytes()) else {
        return;
    };
    let default_name = if flags & 0x20 != 0 {
        "r.example:5000"
    } else {
        "docker.io"
    };
    let Ok(default_registry) = RegistryHost::parse(default_name) else {
        return;
    };
    let authority = authority.and_then(|a| RegistryHost::parse(a).ok());
    let ctx = RouteContext {
        default_registry: &default_registry,
        authority: authority.as_ref(),
    };

    let parsed = route::parse(&method, path, query, &ctx);
    if !path.starts_with("/v2") {
        assert!(matches!(parsed, Err(RouteError::NotApi(_))), "{parsed:?}");
    }
    if method != Method::GET && method != Method::HEAD {
        assert!(parsed.is_err(), "{method} parsed: {parsed:?}");
    }
    if let Ok(ApiRequest::Read(r)) = &parsed {
        assert_eq!(r.head, method == Method::HEAD);
        // A forward-proxy request is for its authority's registry and no other.
        if let Some(a) = ctx.authority {
            assert_eq!(&r.registry, a);
        }
        check_route(r, &method, &ctx);
    }
    if let (Some(link), Ok(ApiRequest::Read(r))) = (link, &parsed)
        && let Some(out) = r.client_link(link)
    {
        assert!(out.starts_with("/v2/"), "{out}");
    }
});

fn check_route(r: &Route, method: &Method, ctx: &RouteContext<'_>) {
    let repo = r.repository.as_str();
    assert_eq!(Repository::parse(repo).as_ref(), Ok(&r.repository));
    assert!(!repo.bytes().any(|b| b.is_ascii_uppercase()), "{repo}");
    assert!(repo.split('/').all(|c| !c.is_empty()), "{repo}");
    if r.registry.is_docker_hub() {
        assert!(
            repo.contains('/'),
            "a Docker Hub name without a namespace: {repo}"
        );
    }
    assert_eq!(
        RegistryHost::parse(r.registry.as_str()).as_ref(),
        Ok(&r.registry)
    );
    // `host[:port]` and nothing else (regression: `[::1]?-ref\x18` was a registry).
    let port = &r.registry.as_str()[r.registry.hostname().len()..];
    assert!(port.is_empty() || port.starts_with(':'), "{}", r.registry);

    let upstream = r.upstream_path();
    assert!(upstream.starts_with(&format!("/v2/{repo}/")), "{upstream}");
    let upstream_query = encode(&r.upstream_query());

    // The upstream path names the same repository when the registry is the default, unless
    // its first component would be read as a registry.
    let components: Vec<&str> = repo.split('/').collect();
    if components.len() == 1 || !looks_like_host(components[0]) {
        let ctx2 = RouteContext {
            default_registry: &r.registry,
            authority: None,
        };
        let again = route::parse(&Method::GET, &upstream, upstream_query.as_deref(), &ctx2);
        let expected = Route {
            head: false,
            style: RouteStyle::Implicit,
            ..r.clone()
        };
        assert_eq!(again, Ok(ApiRequest::Read(expected)), "{upstream}");
    }

    // The link handed to the client leads back to the same content.
    let full = match &upstream_query {
        Some(q) => format!("{upstream}?{q}"),
        None => upstream.clone(),
    };
    let Some(link) = r.client_link(&full) else {
        panic!("no client link for {full}");
    };
    let (link_path, link_query) = match link.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (link.as_str(), None),
    };
    match route::parse(method, link_path, link_query, ctx) {
        Ok(ApiRequest::Read(back)) => {
            assert_eq!(back.registry, r.registry, "{link}");
            assert_eq!(back.kind, r.kind, "{link}");
            assert_eq!(back.style, r.style, "{link}");
            assert_eq!(back.head, r.head, "{link}");
            // `/v2/<ns>/<name>?ns=<ns>` drops the repeated registry (containerd's
            // override_path), so a repository whose first component spells its own registry
            // is ambiguous in the namespace form.
            let ambiguous = r.style == RouteStyle::Namespace
                && components.len() > 1
                && RegistryHost::parse(components[0]).is_ok_and(|h| h == r.registry);
            if !ambiguous {
                assert_eq!(back.repository, r.repository, "{link}");
            }
        }
        other => panic!("client link {link} does not parse back: {other:?}"),
    }
}

fn encode(pairs: &[(&'static str, String)]) -> Option<String> {
    if pairs.is_empty() {
        return None;
    }
    let mut s = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push('&');
        }
        s.push_str(k);
        s.push('=');
        s.push_str(&percent(v));
    }
    Some(s)
}

/// `application/x-www-form-urlencoded` value encoding: everything but unreserved bytes.
fn percent(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'*') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
