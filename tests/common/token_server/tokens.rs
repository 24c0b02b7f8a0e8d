//! Scope parsing, access decisions and ES256 JWT signing (`x5c` header).

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Serialize;

use super::{Access, Credentials, Shared, State, User};
use crate::common::util::unix_now;

/// Intersects a requested scope with what the (possibly anonymous) user may
/// do. Returns `None` if nothing is granted.
pub(super) fn grant(state: &State, user: Option<&User>, requested: Access) -> Option<Access> {
    let name = requested.name.as_str();
    let allowed: BTreeSet<&str> = match (requested.kind.as_str(), user) {
        (_, Some(u)) if u.admin => ["pull", "push", "delete", "*"].into(),
        ("repository", Some(u)) if u.pull_prefixes.iter().any(|p| name.starts_with(p)) => {
            ["pull"].into()
        }
        ("repository", _) if state.anonymous_pull.iter().any(|p| name.starts_with(p)) => {
            ["pull"].into()
        }
        _ => BTreeSet::new(),
    };
    let actions: Vec<String> = requested
        .actions
        .into_iter()
        .filter(|a| allowed.contains(a.as_str()))
        .collect();
    (!actions.is_empty()).then_some(Access {
        kind: requested.kind,
        name: requested.name,
        actions,
    })
}

/// Parses `type:name:actions`. Repository names may contain `:` (a registry
/// host with a port), so the name is everything between the first and the
/// last colon.
pub fn parse_scope(scope: &str) -> Option<Access> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    Some(Access {
        kind: kind.to_string(),
        name: name.to_string(),
        actions: actions
            .split(',')
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

pub(super) fn parse_basic(header: &str) -> Option<Credentials> {
    let (scheme, value) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = B64.decode(value.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, pass) = decoded.split_once(':')?;
    Some(Credentials::new(user, pass))
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    access: &'a [Access],
}

pub(super) fn sign_token(
    shared: &Shared,
    subject: &str,
    access: &[Access],
    lifetime: Duration,
) -> String {
    let now = unix_now();
    let claims = Claims {
        iss: &shared.issuer,
        sub: subject,
        aud: &shared.service,
        exp: now + lifetime.as_secs(),
        // Small back-dating so tokens are usable immediately even with
        // second-granularity rounding.
        nbf: now.saturating_sub(1),
        iat: now,
        jti: format!(
            "jti-{}-{now}",
            shared.counter.fetch_add(1, Ordering::Relaxed)
        ),
        access,
    };
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.x5c = Some(vec![shared.cert_b64.clone()]);
    jsonwebtoken::encode(&header, &claims, &shared.signing_key)
        .expect("sign JWT with the generated ES256 key")
}
