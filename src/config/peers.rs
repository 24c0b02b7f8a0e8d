//! `[peers]`: the other replicas of a shared cache. Each blob digest has one owner among them
//! (rendezvous hashing); a replica that misses asks the owner, which fills once for all.

use std::time::Duration;

use serde::Deserialize;

use super::Problem;
use super::secret_source::SecretSource;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PeersConfig {
    /// Every replica's mirror URL (`http://10.0.0.7:5000`), this one included.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Or a `host:port` whose addresses are the replicas (a Kubernetes headless Service),
    /// re-resolved every `refresh`.
    pub dns: Option<String>,
    /// How often the replicas are looked up and asked who they are.
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub refresh: Duration,
    /// Shared by the replicas, presented on the peer path: outsiders cannot use it.
    pub secret: SecretSource,
    /// How long a replica waits for an owner's answer before asking the next.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
}

fn default_refresh() -> Duration {
    Duration::from_secs(10)
}

fn default_timeout() -> Duration {
    Duration::from_secs(2)
}

pub fn problems(peers: Option<&PeersConfig>) -> Vec<Problem> {
    let Some(p) = peers else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut push = |key: String, message: String| out.push(Problem { key, message });
    if p.addresses.is_empty() == p.dns.is_none() {
        push(
            "peers".to_owned(),
            "give either addresses or dns".to_owned(),
        );
    }
    for (i, a) in p.addresses.iter().enumerate() {
        match url::Url::parse(a) {
            Ok(u)
                if matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && matches!(u.path(), "" | "/") => {}
            _ => push(
                format!("peers.addresses[{i}]"),
                format!("{a:?} must be a replica's base URL, http(s)://host:port"),
            ),
        }
    }
    if let Some(d) = &p.dns
        && d.rsplit_once(':')
            .and_then(|(_, port)| port.parse::<u16>().ok())
            .is_none()
    {
        push("peers.dns".to_owned(), format!("{d:?} must be host:port"));
    }
    match p.secret.read() {
        Ok(s) if s.expose().len() < 16 => push(
            "peers.secret".to_owned(),
            "must be at least 16 characters".to_owned(),
        ),
        Ok(_) => {}
        Err(e) => push("peers.secret".to_owned(), e.to_string()),
    }
    if p.refresh.is_zero() {
        push(
            "peers.refresh".to_owned(),
            "must be longer than 0s".to_owned(),
        );
    }
    out
}
