//! Regressions: every crash the fuzzers found, its input inlined.

use http::Method;

use stevedore::reference::RegistryHost;
use stevedore::route::{ApiRequest, RouteError};

use super::{docker_hub, parse_route, read};

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
