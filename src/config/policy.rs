//! The `[policy]` section: which clients may pull what. Its shape, and the rules that make a
//! section valid. Without the section every client may pull from every configured registry.
//!
//! ```toml
//! [policy.identities.nodes]
//! cidrs = ["10.0.0.0/8"]
//!
//! [policy.identities.ci]
//! tokens-sha256 = ["<hex sha256 of the token>"]
//! token-files = ["/run/secrets/ci-token"]
//!
//! [[policy.rules]]
//! name = "nodes-by-digest"
//! identities = ["nodes"]
//! registries = ["registry.corp"]
//! repositories = ["team/"]
//! references = "digests"
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::Problem;
use crate::policy::Cidr;
use crate::reference::RegistryHost;

/// The identity every client has, identified or not.
pub const EVERYONE: &str = "*";
/// The identity of clients that match no other.
pub const ANONYMOUS: &str = "anonymous";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PolicyConfig {
    /// Who a client is, by name.
    #[serde(default)]
    pub identities: BTreeMap<String, IdentityConfig>,
    /// What identities may pull; a request is allowed when any rule allows it.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

/// How a client proves an identity. With both `cidrs` and tokens, it needs both.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct IdentityConfig {
    /// Source address ranges.
    #[serde(default)]
    pub cidrs: Vec<String>,
    /// SHA-256 (hex) of bearer tokens, sent as `Authorization: Bearer <token>` or as the
    /// password of Basic credentials.
    #[serde(default)]
    pub tokens_sha256: Vec<String>,
    /// Files that each hold one token, re-read when they change (a mounted Secret).
    #[serde(default)]
    pub token_files: Vec<PathBuf>,
    /// Names (DNS names in the subject alternative names) of client certificates that prove
    /// this identity, on the TLS listener (verified against `server.tls.client-ca`).
    #[serde(default)]
    pub client_cert_names: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RuleConfig {
    /// Named in denials and audit lines (default: `rules[<index>]`).
    pub name: Option<String>,
    /// Identities this rule is for; `"*"` is everyone, `"anonymous"` clients that match no
    /// identity.
    pub identities: Vec<String>,
    /// Registries (as in `[registries]`), or `"*"` for all.
    pub registries: Vec<String>,
    /// Repository names or prefixes (`"team/"` is everything under team/); all when empty.
    #[serde(default)]
    pub repositories: Vec<String>,
    #[serde(default)]
    pub references: References,
}

/// What references a rule allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum References {
    /// Tags and digests (containerd's `pull` and `resolve`).
    #[default]
    Any,
    /// Content by digest only: no tag resolution, no tag listing (registries.conf
    /// `pull-from-mirror = "digest-only"`).
    Digests,
}

pub(super) fn check(policy: &PolicyConfig, push: &mut impl FnMut(String, String)) {
    for (name, id) in &policy.identities {
        let key = format!("policy.identities.{name:?}");
        if name.is_empty() || name == EVERYONE || name == ANONYMOUS {
            push(
                key.clone(),
                format!("{name:?} is reserved: choose another identity name"),
            );
        }
        if id.cidrs.is_empty()
            && id.tokens_sha256.is_empty()
            && id.token_files.is_empty()
            && id.client_cert_names.is_empty()
        {
            push(
                key.clone(),
                "needs cidrs, tokens-sha256, token-files or client-cert-names".to_owned(),
            );
        }
        for (i, n) in id.client_cert_names.iter().enumerate() {
            if rustls::pki_types::ServerName::try_from(n.as_str()).is_err() {
                push(
                    format!("{key}.client-cert-names[{i}]"),
                    format!("{n:?} is not a DNS name"),
                );
            }
        }
        for (i, c) in id.cidrs.iter().enumerate() {
            if let Err(e) = Cidr::parse(c) {
                push(format!("{key}.cidrs[{i}]"), e);
            }
        }
        for (i, h) in id.tokens_sha256.iter().enumerate() {
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                push(
                    format!("{key}.tokens-sha256[{i}]"),
                    "is not a hex SHA-256 (64 hex digits; `sha256sum` of the token)".to_owned(),
                );
            }
        }
        for (i, path) in id.token_files.iter().enumerate() {
            match super::read_text(path) {
                Err(e) => push(
                    format!("{key}.token-files[{i}]"),
                    format!("cannot read {}: {e}", path.display()),
                ),
                Ok(t) if t.trim().is_empty() => push(
                    format!("{key}.token-files[{i}]"),
                    format!("{} is empty", path.display()),
                ),
                Ok(_) => {}
            }
        }
    }
    if policy.rules.is_empty() {
        push(
            "policy.rules".to_owned(),
            "a [policy] section without rules refuses every request: add [[policy.rules]]"
                .to_owned(),
        );
    }
    for (i, rule) in policy.rules.iter().enumerate() {
        let key = format!("policy.rules[{i}]");
        if rule.identities.is_empty() {
            push(format!("{key}.identities"), "names no identity".to_owned());
        }
        for (j, id) in rule.identities.iter().enumerate() {
            if id != EVERYONE && id != ANONYMOUS && !policy.identities.contains_key(id) {
                push(
                    format!("{key}.identities[{j}]"),
                    format!("{id:?} is not defined in [policy.identities]"),
                );
            }
        }
        if rule.registries.is_empty() {
            push(
                format!("{key}.registries"),
                "names no registry (use [\"*\"] for all)".to_owned(),
            );
        }
        for (j, r) in rule.registries.iter().enumerate() {
            if r != EVERYONE
                && let Err(e) = RegistryHost::parse(r)
            {
                push(format!("{key}.registries[{j}]"), e.to_string());
            }
        }
        for (j, r) in rule.repositories.iter().enumerate() {
            let trimmed = r.trim_end_matches('/');
            let ok = r == EVERYONE
                || (!trimmed.is_empty()
                    && trimmed.split('/').all(|c| {
                        !c.is_empty()
                            && c.bytes().all(|b| {
                                b.is_ascii_lowercase()
                                    || b.is_ascii_digit()
                                    || matches!(b, b'.' | b'_' | b'-')
                            })
                    }));
            if !ok {
                push(
                    format!("{key}.repositories[{j}]"),
                    format!("{r:?} is not a repository name or prefix (team/app, team/)"),
                );
            }
        }
    }
}

/// Collects the problems of an optional policy.
pub(super) fn problems(policy: Option<&PolicyConfig>) -> Vec<Problem> {
    let mut out = Vec::new();
    if let Some(p) = policy {
        check(p, &mut |key, message| out.push(Problem { key, message }));
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn every_problem_of_a_policy_is_reported_with_its_key() {
        let text = r#"
[policy.identities.anonymous]
cidrs = ["10.0.0.1/8"]
[policy.identities.ci]
tokens-sha256 = ["abc"]
token-files = ["/nonexistent/token"]
[policy.identities.empty]
[[policy.rules]]
identities = ["ci", "ghost"]
registries = ["bad host"]
repositories = ["Team/App", "team/"]
references = "digests"
"#;
        let e = Config::from_toml(text, "p.toml").unwrap_err().to_string();
        for expected in [
            "policy.identities.\"anonymous\": \"anonymous\" is reserved",
            "policy.identities.\"anonymous\".cidrs[0]: \"10.0.0.1/8\" has host bits set",
            "policy.identities.\"ci\".tokens-sha256[0]: is not a hex SHA-256",
            "policy.identities.\"ci\".token-files[0]: cannot read /nonexistent/token",
            "policy.identities.\"empty\": needs cidrs, tokens-sha256, token-files or client-cert-names",
            "policy.rules[0].identities[1]: \"ghost\" is not defined",
            "policy.rules[0].registries[0]:",
            "policy.rules[0].repositories[0]: \"Team/App\" is not a repository name",
        ] {
            assert!(e.contains(expected), "missing {expected:?} in:\n{e}");
        }
        assert!(!e.contains("repositories[1]"), "{e}");
        let unknown = Config::from_toml("[policy]\nrulez = []\n", "p.toml").unwrap_err();
        assert!(
            unknown.to_string().contains("unknown field `rulez`"),
            "{unknown}"
        );
        let empty = Config::from_toml("[policy]\n", "p.toml").unwrap_err();
        assert!(
            empty
                .to_string()
                .contains("without rules refuses every request")
        );
        let bad_refs = Config::from_toml(
            "[[policy.rules]]\nidentities = [\"*\"]\nregistries = [\"*\"]\nreferences = \"tags\"\n",
            "p.toml",
        )
        .unwrap_err();
        assert!(
            bad_refs.to_string().contains("unknown variant `tags`"),
            "{bad_refs}"
        );
    }
}
