//! Size accounting and least-recently-used eviction.
//!
//! Content being read is pinned and never chosen for eviction. Pins are counted per digest
//! whether or not the digest is stored yet, so readers that join a fill in progress protect
//! the blob from the moment it commits, and a pin released later never cancels another
//! reader's pin. Fills in progress reserve the bytes they announced, so temp files count
//! against `max-size` too. Choosing victims is done under the lock; removing their files is
//! not: the caller gets the victims back and unlinks them on a blocking thread.
//!
//! Content that was pinned while the store went over its bound is evicted as soon as its last
//! reader leaves: that release raises [`Lru::released`], which the store waits on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::reference::Digest;

#[derive(Debug)]
struct Entry {
    size: u64,
    last_use: u64,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<Digest, Entry>,
    /// Readers per digest, stored or not.
    pins: HashMap<Digest, usize>,
    /// Bytes of committed content.
    total: u64,
    /// Bytes announced by fills in progress.
    reserved: u64,
    clock: u64,
}

/// Sizes and recency of stored content.
#[derive(Debug, Clone)]
pub struct Lru {
    state: Arc<Mutex<State>>,
    /// The size bound the store evicts to.
    max: u64,
    /// Raised when the last pin of stored content drops while the store is over `max`.
    released: Arc<tokio::sync::Notify>,
}

impl Default for Lru {
    fn default() -> Self {
        Self::new(u64::MAX)
    }
}

/// Keeps a digest from eviction while alive.
pub struct Pin {
    lru: Lru,
    digest: Digest,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut s = self.lru.lock();
        if let Some(n) = s.pins.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                s.pins.remove(&self.digest);
                let over = s.total.saturating_add(s.reserved) > self.lru.max;
                if over && s.entries.contains_key(&self.digest) {
                    self.lru.released.notify_one();
                }
            }
        }
    }
}

/// Bytes a fill in progress holds against the size bound; released when dropped (the
/// committed size is then accounted by [`Lru::insert`]).
pub struct Reservation {
    lru: Lru,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut s = self.lru.lock();
        s.reserved = s.reserved.saturating_sub(self.bytes);
    }
}

impl Lru {
    /// Accounting for a store bounded to `max` bytes.
    pub fn new(max: u64) -> Self {
        Lru {
            state: Arc::default(),
            max,
            released: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Raised (one stored permit) when content that could not be evicted, because it was
    /// being read, can be now.
    pub fn released(&self) -> Arc<tokio::sync::Notify> {
        self.released.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records committed content of `size` bytes as the most recently used.
    pub fn insert(&self, digest: &Digest, size: u64) {
        let mut s = self.lock();
        s.clock += 1;
        let last_use = s.clock;
        if let Some(old) = s.entries.insert(digest.clone(), Entry { size, last_use }) {
            s.total -= old.size;
        }
        s.total += size;
    }

    /// Marks a use and pins the digest until the returned guard drops.
    pub fn pin(&self, digest: &Digest) -> Pin {
        let mut s = self.lock();
        s.clock += 1;
        let clock = s.clock;
        if let Some(e) = s.entries.get_mut(digest) {
            e.last_use = clock;
        }
        *s.pins.entry(digest.clone()).or_insert(0) += 1;
        drop(s);
        Pin {
            lru: self.clone(),
            digest: digest.clone(),
        }
    }

    /// Marks a use without pinning.
    pub fn touch(&self, digest: &Digest) {
        let mut s = self.lock();
        s.clock += 1;
        let clock = s.clock;
        if let Some(e) = s.entries.get_mut(digest) {
            e.last_use = clock;
        }
    }

    /// Holds `bytes` against the size bound for a fill in progress.
    pub fn reserve(&self, bytes: u64) -> Reservation {
        self.lock().reserved += bytes;
        Reservation {
            lru: self.clone(),
            bytes,
        }
    }

    pub fn total(&self) -> u64 {
        self.lock().total
    }

    pub fn reserved(&self) -> u64 {
        self.lock().reserved
    }

    pub fn count(&self) -> usize {
        self.lock().entries.len()
    }

    /// Chooses least recently used, unpinned content so that stored plus reserved bytes fit
    /// `max`, and forgets it: the caller removes the files. Pinned content is never chosen.
    pub fn take_victims(&self, max: u64) -> Vec<(Digest, u64)> {
        let mut s = self.lock();
        let used = s.total + s.reserved;
        if used <= max {
            return Vec::new();
        }
        let mut candidates: Vec<(Digest, u64, u64)> = s
            .entries
            .iter()
            .filter(|(d, _)| !s.pins.contains_key(*d))
            .map(|(d, e)| (d.clone(), e.size, e.last_use))
            .collect();
        candidates.sort_by_key(|(_, _, last_use)| *last_use);
        let mut excess = used - max;
        let mut out = Vec::new();
        for (digest, size, _) in candidates {
            if excess == 0 {
                break;
            }
            s.entries.remove(&digest);
            s.total -= size;
            excess = excess.saturating_sub(size);
            out.push((digest, size));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Digest {
        Digest::sha256_of(s.as_bytes())
    }

    #[test]
    fn evicts_least_recent_unpinned() {
        let lru = Lru::default();
        lru.insert(&d("a"), 10);
        lru.insert(&d("b"), 10);
        lru.insert(&d("c"), 10);
        drop(lru.pin(&d("a"))); // a is now the most recent
        let _held = lru.pin(&d("b"));
        assert_eq!(lru.take_victims(20), vec![(d("c"), 10)]);
        assert_eq!(lru.total(), 20);
        assert_eq!(
            lru.take_victims(0),
            vec![(d("a"), 10)],
            "pinned content is never a victim"
        );
        assert_eq!(lru.total(), 10);
    }

    #[test]
    fn a_pin_taken_before_commit_protects_the_committed_blob() {
        let lru = Lru::default();
        let early = lru.pin(&d("x")); // a reader joined the fill
        let other = lru.pin(&d("x"));
        lru.insert(&d("x"), 10); // the fill commits
        lru.insert(&d("y"), 10);
        assert_eq!(lru.take_victims(10), vec![(d("y"), 10)]);
        drop(early);
        assert!(
            lru.take_victims(0).is_empty(),
            "one reader leaving never cancels another reader's pin"
        );
        drop(other);
        assert_eq!(lru.take_victims(0), vec![(d("x"), 10)]);
    }

    #[tokio::test]
    async fn the_last_reader_leaving_an_over_bound_store_raises_released() {
        let lru = Lru::new(10);
        let released = lru.released();
        lru.insert(&d("a"), 10);
        let reading = lru.pin(&d("a"));
        lru.insert(&d("b"), 10);
        assert_eq!(lru.take_victims(10), vec![(d("b"), 10)]);
        lru.insert(&d("c"), 10);
        assert_eq!(lru.take_victims(10), vec![(d("c"), 10)]);
        lru.insert(&d("e"), 10);
        let second = lru.pin(&d("a"));
        drop(reading);
        let wait = tokio::time::timeout(std::time::Duration::from_millis(50), released.notified());
        assert!(wait.await.is_err(), "another reader still holds it");
        drop(second);
        released.notified().await;
        // a was read last, so the older e goes.
        assert_eq!(lru.take_victims(10), vec![(d("e"), 10)]);
        assert_eq!(lru.total(), 10);
    }

    #[test]
    fn reservations_count_against_the_bound() {
        let lru = Lru::default();
        lru.insert(&d("a"), 10);
        lru.insert(&d("b"), 10);
        let r = lru.reserve(15);
        assert_eq!(lru.take_victims(30), vec![(d("a"), 10)]);
        drop(r);
        assert_eq!(lru.reserved(), 0);
        assert!(lru.take_victims(30).is_empty());
    }
}
