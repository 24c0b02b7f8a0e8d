//! Errors of the upstream layer. They say which registry and why, never a credential.

#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// The client named a registry that has no section in the config.
    #[error(
        "registry {registry} is not configured: add a [registries.\"{registry}\"] section to \
         stevedore's config (or set routing.allow-unknown-registries = true)"
    )]
    NotConfigured { registry: String },
    /// A URL stevedore was about to contact resolves to a restricted address.
    #[error(
        "refusing to contact {host} for registry {registry}: it is a loopback, private, \
         link-local or metadata address (set allow-private-network = true in the registry's \
         section if this is intended)"
    )]
    RestrictedAddress { registry: String, host: String },
    /// Connecting failed, timed out, or the connection broke.
    #[error("upstream {registry} is unreachable: {reason}")]
    Unreachable { registry: String, reason: String },
    /// The registry (or its token service) refused stevedore's credentials.
    #[error("{0}")]
    Denied(String),
    /// A token service or redirect answered something stevedore cannot use.
    #[error("upstream {registry} answered unexpectedly: {reason}")]
    Protocol { registry: String, reason: String },
    /// Sending would exceed a request budget: stevedore's own, or the registry's.
    #[error(
        "not asking upstream {registry}: {whose} is spent; retry in {}s",
        retry_after.as_secs().max(1)
    )]
    BudgetSpent {
        registry: String,
        retry_after: std::time::Duration,
        whose: &'static str,
    },
    /// A credential source failed (a helper, an unreadable secret file).
    #[error("credentials for {registry}: {message}")]
    Credentials { registry: String, message: String },
}

impl UpstreamError {
    /// Whether trying again later (or another endpoint) may help.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            UpstreamError::Unreachable { .. } | UpstreamError::BudgetSpent { .. }
        )
    }
}

/// Describes a reqwest error without its URL query (which could hold a token request's
/// parameters) and with its causes, which carry the useful part ("connection refused").
pub(crate) fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "connection failed".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
