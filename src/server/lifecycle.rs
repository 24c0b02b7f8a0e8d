//! The process's lifecycle as probes see it: `/healthz` (alive) and `/readyz` (listeners
//! bound, not draining, the store able to take content above its free-space watermark).
//!
//! On SIGTERM readiness turns false first, so load balancers and kubelets stop sending new
//! clients before the listeners close and responses in flight drain.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::AppState;

#[derive(Debug, Default)]
pub struct Lifecycle {
    listening: AtomicBool,
    draining: AtomicBool,
}

impl Lifecycle {
    /// Every configured listener is bound and serving.
    pub fn listeners_bound(&self) {
        self.listening.store(true, Ordering::SeqCst);
    }

    /// Turns readiness off for good; true the first time.
    pub fn start_draining(&self) -> bool {
        !self.draining.swap(true, Ordering::SeqCst)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

/// Why the process is not ready (empty: ready).
pub async fn unready_reasons(state: &Arc<AppState>) -> Vec<String> {
    let mut reasons = Vec::new();
    let lifecycle = &state.lifecycle;
    if lifecycle.is_draining() {
        reasons.push("draining: shutting down".to_owned());
    }
    if !lifecycle.listening.load(Ordering::SeqCst) {
        reasons.push("listeners not bound yet".to_owned());
    }
    if let Some(store) = state.pull.store() {
        if store.low_on_space() {
            reasons.push(format!(
                "store below its free-space watermark ({} bytes free)",
                store.summary().free_bytes
            ));
        }
        if !store.writable().await {
            reasons.push("store is not writable".to_owned());
        }
    }
    reasons
}
