//! The docker `config.json` / containers `auth.json` format, also the content of Kubernetes
//! `kubernetes.io/dockerconfigjson` secrets:
//!
//! ```json
//! {"auths": {"<key>": {"auth": "b64(user:pass)", "username": "…", "password": "…",
//!                      "identitytoken": "…", "registrytoken": "…"}},
//!  "credHelpers": {"<host>": "<name>"}, "credsStore": "<name>"}
//! ```
//!
//! The JSON is walked by hand rather than through typed serde structs: serde's type errors quote
//! the offending value (`invalid type: string "hunter2"`), and a value here may be a secret.

use std::path::Path;

use serde_json::{Map, Value};

use super::scope::Scope;
use super::{Credential, decode_auth};
use crate::reference::RegistryHost;
use crate::secret::SecretString;

/// What one file offers, in file order.
#[derive(Debug, Default)]
pub(super) struct AuthFile {
    pub(super) auths: Vec<AuthEntry>,
    /// `credHelpers`: a helper per host.
    pub(super) cred_helpers: Vec<(RegistryHost, String)>,
    /// `credsStore`: the helper for every host without a more specific entry in this file.
    pub(super) creds_store: Option<String>,
}

/// One usable `auths` entry.
#[derive(Debug)]
pub(super) struct AuthEntry {
    pub(super) scope: Scope,
    pub(super) credential: Credential,
    /// Whether the key was spelled canonically (`docker.io`, not `https://index.docker.io/v1/`).
    /// When two keys mean the same scope, the canonical spelling wins.
    pub(super) canonical_key: bool,
}

/// Whether a file may name credential helpers. Kubernetes secrets may not: whoever can write a
/// secret should not choose programs for stevedore to run (the kubelet ignores them too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Helpers {
    Allowed,
    Ignored,
}

/// Why a file cannot be used at all. Never contains a value from the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum FormatError {
    /// Not JSON: a description safe to print (serde's syntax message and position).
    Json(String),
    /// JSON of the wrong shape.
    Shape(String),
}

/// Parses one file. Entries that cannot be used are skipped with a warning naming `path` and
/// the key; the file fails only when it is not JSON or not an object.
pub(super) fn parse(path: &Path, bytes: &[u8], helpers: Helpers) -> Result<AuthFile, FormatError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| FormatError::Json(describe_json_error(&e)))?;
    let Value::Object(top) = value else {
        return Err(FormatError::Shape(
            "the top level is not a JSON object".to_owned(),
        ));
    };
    let mut file = AuthFile::default();
    let cred_helpers = object_field(&top, "credHelpers")?;
    let creds_store = top.get("credsStore").filter(|v| !v.is_null());
    match helpers {
        Helpers::Allowed => {
            if let Some(map) = cred_helpers {
                file.cred_helpers = map
                    .iter()
                    .filter_map(|(key, name)| parse_cred_helper(path, key, name))
                    .collect();
            }
            file.creds_store = creds_store.and_then(|v| helper_name(path, "credsStore", v));
        }
        Helpers::Ignored => {
            if cred_helpers.is_some_and(|m| !m.is_empty()) || creds_store.is_some() {
                tracing::warn!(
                    file = %path.display(),
                    "credHelpers and credsStore are ignored in Kubernetes secrets"
                );
            }
        }
    }
    if let Some(auths) = object_field(&top, "auths")? {
        // With a helper, docker leaves `{}` placeholders in `auths`: not worth a warning.
        let placeholders = !file.cred_helpers.is_empty() || file.creds_store.is_some();
        file.auths = auths
            .iter()
            .filter_map(|(key, entry)| parse_entry(path, key, entry, placeholders))
            .collect();
    }
    Ok(file)
}

/// A JSON error without the input: serde's message for syntax errors (which describes only the
/// grammar), its category otherwise, and the position.
pub(super) fn describe_json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof => e.to_string(),
        Category::Data => format!("unexpected data at line {} column {}", e.line(), e.column()),
        Category::Io => format!("read error at line {} column {}", e.line(), e.column()),
    }
}

fn object_field<'a>(
    top: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a Map<String, Value>>, FormatError> {
    match top.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(_) => Err(FormatError::Shape(format!("`{name}` is not a JSON object"))),
    }
}

fn parse_entry(path: &Path, key: &str, entry: &Value, placeholders: bool) -> Option<AuthEntry> {
    let skip = |reason: &dyn std::fmt::Display| {
        tracing::warn!(file = %path.display(), key, "auths entry skipped: {reason}");
    };
    let scope = match Scope::parse_key(key) {
        Ok(scope) => scope,
        Err(e) => {
            skip(&e);
            return None;
        }
    };
    let Value::Object(fields) = entry else {
        skip(&"not a JSON object");
        return None;
    };
    let field = |name: &str| match fields.get(name) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.as_str())),
        None | Some(Value::Null) | Some(Value::String(_)) => Ok(None),
        Some(_) => Err(format!("`{name}` is not a string")),
    };
    let fields = EntryFields {
        auth: field("auth"),
        username: field("username"),
        password: field("password"),
        identitytoken: field("identitytoken"),
        registrytoken: field("registrytoken"),
    };
    match fields.credential() {
        Ok(Some(credential)) => Some(AuthEntry {
            canonical_key: key == scope.to_string(),
            scope,
            credential,
        }),
        Ok(None) if placeholders => {
            tracing::debug!(file = %path.display(), key, "auths entry without a credential");
            None
        }
        Ok(None) => {
            skip(&"no credential in it");
            None
        }
        Err(reason) => {
            skip(&reason);
            None
        }
    }
}

type Field<'a> = Result<Option<&'a str>, String>;

struct EntryFields<'a> {
    auth: Field<'a>,
    username: Field<'a>,
    password: Field<'a>,
    identitytoken: Field<'a>,
    registrytoken: Field<'a>,
}

impl EntryFields<'_> {
    /// The entry's credential, in the order docker uses them: a registry token, then an
    /// identity token (with the username from `username` or `auth`), then `auth`, then
    /// `username` + `password`. `None` when it holds no credential field at all.
    fn credential(self) -> Result<Option<Credential>, String> {
        if let Some(token) = self.registrytoken? {
            return Ok(Some(Credential::RegistryToken(SecretString::new(token))));
        }
        let from_auth = match self.auth? {
            Some(auth) => Some(
                decode_auth(auth)
                    .ok_or_else(|| "`auth` is not base64 of user:password".to_owned())?,
            ),
            None => None,
        };
        let username = self.username?;
        if let Some(token) = self.identitytoken? {
            let username = username
                .map(str::to_owned)
                .or_else(|| from_auth.map(|(user, _)| user));
            return Ok(Some(Credential::IdentityToken {
                username,
                token: SecretString::new(token),
            }));
        }
        if let Some((username, password)) = from_auth {
            if password.is_empty() {
                return Err("`auth` has an empty password".to_owned());
            }
            return Ok(Some(Credential::Basic { username, password }));
        }
        match (username, self.password?) {
            (Some(username), Some(password)) => Ok(Some(Credential::Basic {
                username: username.to_owned(),
                password: SecretString::new(password),
            })),
            (Some(_), None) => Err("`username` without `password`".to_owned()),
            (None, Some(_)) => Err("`password` without `username`".to_owned()),
            (None, None) => Ok(None),
        }
    }
}

fn parse_cred_helper(path: &Path, key: &str, name: &Value) -> Option<(RegistryHost, String)> {
    let label = format!("credHelpers.{key:?}");
    let scope = match Scope::parse_key(key) {
        Ok(scope) => scope,
        Err(e) => {
            tracing::warn!(file = %path.display(), key = label, "skipped: {e}");
            return None;
        }
    };
    let host = Scope::host(scope.registry().clone());
    if scope != host {
        tracing::warn!(
            file = %path.display(),
            key = label,
            "skipped: credential helpers apply to whole hosts, not repository paths"
        );
        return None;
    }
    let name = helper_name(path, &label, name)?;
    Some((scope.registry().clone(), name))
}

/// A helper name, used as `docker-credential-<name>`: letters, digits, `-`, `_`, `.`.
fn helper_name(path: &Path, label: &str, value: &Value) -> Option<String> {
    let Value::String(name) = value else {
        tracing::warn!(file = %path.display(), key = label, "skipped: not a string");
        return None;
    };
    let name = name.trim();
    if name.is_empty() {
        return None;
    }
    let valid = !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid {
        tracing::warn!(
            file = %path.display(),
            key = label,
            helper = name,
            "skipped: a helper name may only hold letters, digits, '-', '_' and '.'"
        );
        return None;
    }
    Some(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> AuthFile {
        parse(
            Path::new("/t/config.json"),
            text.as_bytes(),
            Helpers::Allowed,
        )
        .unwrap()
    }

    fn only(file: &AuthFile) -> (String, &Credential) {
        assert_eq!(file.auths.len(), 1, "{file:?}");
        let entry = &file.auths[0];
        (entry.scope.to_string(), &entry.credential)
    }

    #[test]
    fn auth_is_decoded_to_basic() {
        // "user:pa:ss"
        let f = parse_str(
            r#"{"auths": {"https://index.docker.io/v1/": {"auth": "dXNlcjpwYTpzcw=="}}}"#,
        );
        let (scope, cred) = only(&f);
        assert_eq!(scope, "docker.io");
        assert_eq!(
            *cred,
            Credential::Basic {
                username: "user".into(),
                password: "pa:ss".into()
            }
        );
        assert!(!f.auths[0].canonical_key);
    }

    #[test]
    fn username_and_password_fields() {
        let f = parse_str(r#"{"auths": {"ghcr.io": {"username": "u", "password": "p"}}}"#);
        let (_, cred) = only(&f);
        assert_eq!(
            *cred,
            Credential::Basic {
                username: "u".into(),
                password: "p".into()
            }
        );
        assert!(f.auths[0].canonical_key);
    }

    #[test]
    fn identity_and_registry_tokens() {
        // auth = "me:" as docker writes it next to an identity token.
        let f =
            parse_str(r#"{"auths": {"r.example": {"auth": "bWU6", "identitytoken": "refresh"}}}"#);
        let (_, cred) = only(&f);
        assert_eq!(
            *cred,
            Credential::IdentityToken {
                username: Some("me".into()),
                token: "refresh".into()
            }
        );
        let f = parse_str(r#"{"auths": {"r.example": {"identitytoken": "refresh"}}}"#);
        assert_eq!(
            *only(&f).1,
            Credential::IdentityToken {
                username: None,
                token: "refresh".into()
            }
        );
        let f =
            parse_str(r#"{"auths": {"r.example": {"registrytoken": "bearer", "auth": "bWU6"}}}"#);
        assert_eq!(*only(&f).1, Credential::RegistryToken("bearer".into()));
    }

    #[test]
    fn unusable_entries_are_skipped() {
        let f = parse_str(
            r#"{"auths": {
                "empty.example": {},
                "desktop.example": {"auth": ""},
                "bad64.example": {"auth": "%%%"},
                "nopass.example": {"username": "u"},
                "colonless.example": {"auth": "bm9jb2xvbg=="},
                "emptypass.example": {"auth": "dTo="},
                "number.example": {"password": 1234567, "username": "u"},
                "string.example": "c2VjcmV0",
                "*.glob.example": {"auth": "dTpw"},
                "ok.example/team": {"auth": "dTpw"}
            }, "HttpHeaders": {"X": "y"}, "psFormat": "table"}"#,
        );
        let (scope, _) = only(&f);
        assert_eq!(scope, "ok.example/team");
    }

    #[test]
    fn helpers_are_read_and_validated() {
        let f = parse_str(
            r#"{"credHelpers": {"GCR.io": "gcloud", "https://index.docker.io/v1/": "desktop",
                "r.example/ns": "nope", "x.example": "../evil", "y.example": ""},
                "credsStore": "osxkeychain"}"#,
        );
        let helpers: Vec<_> = f
            .cred_helpers
            .iter()
            .map(|(h, n)| (h.as_str(), n.as_str()))
            .collect();
        assert_eq!(helpers, [("gcr.io", "gcloud"), ("docker.io", "desktop")]);
        assert_eq!(f.creds_store.as_deref(), Some("osxkeychain"));

        let k8s = parse(
            Path::new("/t/.dockerconfigjson"),
            br#"{"credHelpers": {"gcr.io": "gcloud"}, "credsStore": "x"}"#,
            Helpers::Ignored,
        )
        .unwrap();
        assert!(k8s.cred_helpers.is_empty() && k8s.creds_store.is_none());
    }

    #[test]
    fn errors_give_position_but_no_value() {
        let p = Path::new("/t/config.json");
        let e = parse(
            p,
            b"{\"auths\": {\"a\": {\"auth\": \"c2VjcmV0\"},}}",
            Helpers::Allowed,
        )
        .unwrap_err();
        let FormatError::Json(msg) = e else {
            panic!("{e:?}")
        };
        assert!(msg.contains("line 1 column"), "{msg}");
        assert!(!msg.contains("c2VjcmV0"), "{msg}");

        let e = parse(p, br#"{"auths": "c2VjcmV0"}"#, Helpers::Allowed).unwrap_err();
        assert_eq!(e, FormatError::Shape("`auths` is not a JSON object".into()));
        let e = parse(p, br#"["c2VjcmV0"]"#, Helpers::Allowed).unwrap_err();
        assert!(matches!(e, FormatError::Shape(_)));
        let e = parse(p, b"", Helpers::Allowed).unwrap_err();
        assert!(matches!(e, FormatError::Json(m) if m.contains("EOF")));
    }

    #[test]
    fn null_sections_are_empty() {
        let f = parse_str(r#"{"auths": null, "credHelpers": null, "credsStore": null}"#);
        assert!(f.auths.is_empty() && f.cred_helpers.is_empty() && f.creds_store.is_none());
    }
}
