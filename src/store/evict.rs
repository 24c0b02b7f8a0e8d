//! Size accounting and least-recently-used eviction. Content that is being read is pinned and
//! never evicted; even if it were, readers hold an open file, which POSIX keeps readable
//! after unlink, so no response is ever truncated by eviction (distribution #2367).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::reference::Digest;

#[derive(Debug, Default)]
struct Entry {
    size: u64,
    last_use: u64,
    pins: usize,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<Digest, Entry>,
    total: u64,
    clock: u64,
}

/// Sizes and recency of stored content.
#[derive(Debug, Default, Clone)]
pub struct Lru {
    state: Arc<Mutex<State>>,
}

/// Keeps a digest from eviction while alive.
pub struct Pin {
    lru: Lru,
    digest: Digest,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut s = self.lru.lock();
        if let Some(e) = s.entries.get_mut(&self.digest) {
            e.pins = e.pins.saturating_sub(1);
        }
    }
}

impl Lru {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records content of `size` bytes; `age_rank` orders entries loaded at start-up.
    pub fn insert(&self, digest: &Digest, size: u64) {
        let mut s = self.lock();
        s.clock += 1;
        let clock = s.clock;
        let old = s.entries.insert(
            digest.clone(),
            Entry {
                size,
                last_use: clock,
                pins: 0,
            },
        );
        s.total = s.total - old.as_ref().map_or(0, |e| e.size) + size;
        if let Some(old) = old
            && let Some(e) = s.entries.get_mut(digest)
        {
            e.pins = old.pins;
        }
    }

    /// Marks a use and pins the digest until the returned guard drops.
    pub fn pin(&self, digest: &Digest) -> Pin {
        let mut s = self.lock();
        s.clock += 1;
        let clock = s.clock;
        if let Some(e) = s.entries.get_mut(digest) {
            e.last_use = clock;
            e.pins += 1;
        }
        drop(s);
        Pin {
            lru: self.clone(),
            digest: digest.clone(),
        }
    }

    pub fn forget(&self, digest: &Digest) {
        let mut s = self.lock();
        if let Some(e) = s.entries.remove(digest) {
            s.total -= e.size;
        }
    }

    pub fn total(&self) -> u64 {
        self.lock().total
    }

    pub fn count(&self) -> usize {
        self.lock().entries.len()
    }

    /// Least recently used unpinned digests to remove so the total fits `max`.
    pub fn victims(&self, max: u64) -> Vec<(Digest, u64)> {
        let s = self.lock();
        if s.total <= max {
            return Vec::new();
        }
        let mut candidates: Vec<(&Digest, &Entry)> =
            s.entries.iter().filter(|(_, e)| e.pins == 0).collect();
        candidates.sort_by_key(|(_, e)| e.last_use);
        let mut excess = s.total - max;
        let mut out = Vec::new();
        for (d, e) in candidates {
            if excess == 0 {
                break;
            }
            out.push((d.clone(), e.size));
            excess = excess.saturating_sub(e.size);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recent_unpinned() {
        let lru = Lru::default();
        let d = |s: &str| Digest::sha256_of(s.as_bytes());
        lru.insert(&d("a"), 10);
        lru.insert(&d("b"), 10);
        lru.insert(&d("c"), 10);
        drop(lru.pin(&d("a"))); // a is now the most recent
        assert_eq!(lru.victims(20), vec![(d("b"), 10)]);
        let _held = lru.pin(&d("b"));
        assert_eq!(lru.victims(20), vec![(d("c"), 10)]);
        assert_eq!(lru.victims(0).len(), 2, "pinned content is never a victim");
        lru.forget(&d("c"));
        assert_eq!(lru.total(), 20);
    }
}
