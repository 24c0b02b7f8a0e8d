//! Leaf certificates for intercepted registries: minted from stevedore's CA once per host and
//! kept (as ready rustls server configurations) for a day of their week-long validity.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::ca::{Ca, CaError, CertName};

/// How long a minted leaf is used before the next is minted.
const LEAF_REUSE: Duration = Duration::from_secs(24 * 3600);

pub struct Leaves {
    ca: Arc<Ca>,
    configs: moka::sync::Cache<CertName, Arc<rustls::ServerConfig>>,
    minted: AtomicU64,
}

impl Leaves {
    pub fn new(ca: Arc<Ca>) -> Self {
        Self {
            ca,
            configs: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(LEAF_REUSE)
                .build(),
            minted: AtomicU64::new(0),
        }
    }

    pub fn ca(&self) -> &Arc<Ca> {
        &self.ca
    }

    /// The TLS configuration presenting a certificate for `name` (minted on first use;
    /// concurrent first uses mint one).
    pub fn server_config(
        &self,
        name: &CertName,
    ) -> Result<Arc<rustls::ServerConfig>, Arc<CaError>> {
        self.configs.try_get_with(name.clone(), || {
            let (chain, key) = self.ca.issue(name)?;
            self.minted.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%name, "minted a leaf certificate");
            super::server_config(chain, key, None)
                .map(Arc::new)
                .map_err(|e| CaError::Issue {
                    name: name.to_string(),
                    reason: e,
                })
        })
    }

    /// Leaf certificates minted so far.
    pub fn minted(&self) -> u64 {
        self.minted.load(Ordering::Relaxed)
    }
}
