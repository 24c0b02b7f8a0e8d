//! Property tests (proptest) for the parsers that see untrusted input: routes, names and
//! digests, `WWW-Authenticate` challenges, `Range`, `Accept`, configuration files and
//! manifests. The same parsers are fuzzed by `bash tests/fuzz.sh SECONDS` (fuzz/); every
//! crash a fuzzer finds becomes a plain `#[test]` in `properties/regressions.rs`, its input
//! inlined.
//!
//! Cases are kept at 256 per property so the whole suite runs in seconds in a debug build.
//! Failures are not persisted to a file: a failing case is printed (shrunk), and then belongs
//! in `properties/regressions.rs` as a regression test.

// The topics live in `tests/properties/`; `#[path]` because a crate root's `mod` looks
// beside it, and a `tests/<name>/` directory without `main.rs` is no test target of its own.
#[path = "properties/challenges.rs"]
mod challenges;
#[path = "properties/config.rs"]
mod config;
#[path = "properties/manifests.rs"]
mod manifests;
#[path = "properties/range_accept.rs"]
mod range_accept;
#[path = "properties/references.rs"]
mod references;
#[path = "properties/regressions.rs"]
mod regressions;
#[path = "properties/routes.rs"]
mod routes;

use http::Method;
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

use stevedore::reference::RegistryHost;
use stevedore::route::{self, ApiRequest, Route, RouteContext, RouteError};

/// 256 cases per property, or `PROPTEST_CASES` when set (for a longer run).
pub(crate) fn config() -> ProptestConfig {
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

pub(crate) fn digest_str() -> impl Strategy<Value = String> {
    prop_oneof!["sha256:[0-9a-f]{64}", "sha512:[0-9a-f]{128}"]
}

/// One repository path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
pub(crate) fn component() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,6}((\\.|_|__|-{1,3})[a-z0-9]{1,6}){0,2}"
}

pub(crate) fn repo_components() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(component(), 1..4)
}

pub(crate) fn tag() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,40}"
}

/// A host name with its letters in any case, and maybe a port.
pub(crate) fn host() -> impl Strategy<Value = String> {
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
pub(crate) fn name_like() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9._/:@\\[\\]-]{0,24}"
}

pub(crate) fn docker_hub() -> RegistryHost {
    RegistryHost::parse("docker.io").expect("docker.io is a registry")
}

pub(crate) fn parse_route(
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

pub(crate) fn read(result: Result<ApiRequest, RouteError>) -> Route {
    match result {
        Ok(ApiRequest::Read(r)) => r,
        other => panic!("expected a read: {other:?}"),
    }
}
