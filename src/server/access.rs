//! The front door's side of `[policy]`: the credentials a client presents to stevedore (a
//! bearer token, or Basic credentials whose password is the token: what containerd's
//! `[host."…".header]`, and docker/podman/CRI-O auth files for the mirror host, send), the
//! decision for each request, and one audit line per manifest pull.
//!
//! These credentials are stevedore's own: they are never forwarded upstream.

use http::header::AUTHORIZATION;
use http::{HeaderMap, Response};

use super::response::{Body, Failure, PolicyRefusal};
use crate::policy::{Caller, Decision, Need, Policy, Presented};
use crate::route::{Route, RouteKind};
use crate::secret::SecretString;

/// What a client sent in `Authorization`, for stevedore's own policy.
pub fn presented(headers: &HeaderMap) -> Presented {
    use base64::Engine as _;
    let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return Presented::None;
    };
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        return Presented::Bearer(SecretString::new(rest));
    }
    if scheme.eq_ignore_ascii_case("basic")
        && let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(rest)
        && let Ok(text) = String::from_utf8(raw)
    {
        let (user, secret) = text.split_once(':').unwrap_or((text.as_str(), ""));
        // Clients without credentials for the mirror host may still answer a Basic
        // challenge with an empty pair: that is no credential at all.
        if !secret.is_empty() {
            return Presented::Basic {
                user: user.to_owned(),
                secret: SecretString::new(secret),
            };
        }
    }
    Presented::None
}

/// The caller's identities; `None` without a policy.
pub fn identify(
    policy: Option<&Policy>,
    peer: std::net::IpAddr,
    headers: &HeaderMap,
    client_cert: Option<&rustls::pki_types::CertificateDer<'_>>,
) -> Result<Option<Caller>, Failure> {
    let Some(policy) = policy else {
        return Ok(None);
    };
    policy
        .identify(peer, &presented(headers), client_cert)
        .map(Some)
        .map_err(|_| Failure::Policy(PolicyRefusal::Unrecognised))
}

/// `GET /v2/`: clients that only send credentials after a challenge (docker, podman) get one
/// when the policy knows tokens and they presented none.
pub fn check_ping(policy: Option<&Policy>, caller: Option<&Caller>) -> Result<(), Failure> {
    match (policy, caller) {
        (Some(p), Some(c)) if p.wants_credentials() && !c.authenticated => {
            Err(Failure::Policy(PolicyRefusal::Challenge(
                "authentication required by stevedore's policy (send a token as Bearer, or as \
                 the password of Basic credentials)"
                    .to_owned(),
            )))
        }
        _ => Ok(()),
    }
}

/// Whether the caller may make this request.
pub fn check(
    policy: Option<&Policy>,
    caller: Option<&Caller>,
    route: &Route,
) -> Result<(), Failure> {
    let (Some(policy), Some(caller)) = (policy, caller) else {
        return Ok(());
    };
    let need = match &route.kind {
        RouteKind::Manifest(r) if r.digest().is_none() => Need::Tag,
        RouteKind::Tags { .. } => Need::Tag,
        _ => Need::Digest,
    };
    match policy.authorize(caller, &route.registry, &route.repository, need) {
        Decision::Allow => Ok(()),
        Decision::Challenge(m) => Err(Failure::Policy(PolicyRefusal::Challenge(m))),
        Decision::Deny(m) => Err(Failure::Policy(PolicyRefusal::Denied(m))),
    }
}

/// One structured line per manifest pull: who, what, which digest, and how it went. Never a
/// credential.
pub fn audit(caller: Option<&Caller>, route: &Route, outcome: &Result<Response<Body>, Failure>) {
    let RouteKind::Manifest(reference) = &route.kind else {
        return;
    };
    let identity = caller.map_or_else(|| "-".to_owned(), Caller::label);
    let (status, digest) = match outcome {
        Ok(r) => (
            r.status().as_u16(),
            r.headers()
                .get(super::response::DOCKER_CONTENT_DIGEST)
                .and_then(|d| d.to_str().ok())
                .unwrap_or("")
                .to_owned(),
        ),
        Err(e) => (super::response::status_of(e).as_u16(), String::new()),
    };
    tracing::info!(
        target: "stevedore::audit",
        identity,
        registry = %route.registry,
        repository = %route.repository,
        reference = %reference,
        digest,
        outcome = status,
        head = route.head,
        "manifest pull"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(AUTHORIZATION, v.parse().unwrap());
        m
    }

    #[test]
    fn presented_credentials() {
        assert!(matches!(presented(&HeaderMap::new()), Presented::None));
        assert!(matches!(presented(&h("Bearer abc")), Presented::Bearer(t) if t.expose() == "abc"));
        // "ci:tok"
        assert!(
            matches!(presented(&h("Basic Y2k6dG9r")), Presented::Basic { user, secret } if user == "ci" && secret.expose() == "tok")
        );
        // ":" (an empty pair) and junk are no credential.
        assert!(matches!(presented(&h("Basic Og==")), Presented::None));
        assert!(matches!(presented(&h("Basic !!!")), Presented::None));
        assert!(matches!(presented(&h("Negotiate x")), Presented::None));
    }
}
