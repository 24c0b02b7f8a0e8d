//! How much stevedore asks of an upstream: its own budget (`[registries."…".budget]`, a
//! `governor` limit on manifest GETs and on all requests), and what the upstream says of its
//! limits (`ratelimit-limit` / `ratelimit-remaining`, as Docker Hub sends them). With either
//! spent, requests that would count are not sent.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};
use http::HeaderMap;

use crate::config::BudgetConfig;

/// Assumed length of an upstream's rate-limit window when it does not say (`;w=`).
const DEFAULT_WINDOW: Duration = Duration::from_secs(3600);

pub struct Budget {
    manifest_gets: Option<DefaultDirectRateLimiter>,
    requests: Option<DefaultDirectRateLimiter>,
    clock: DefaultClock,
}

fn limiter(n: Option<u32>, per: Duration) -> Option<DefaultDirectRateLimiter> {
    let n = NonZeroU32::new(n?)?;
    let quota = Quota::with_period(per / n.get())?.allow_burst(n);
    Some(DefaultDirectRateLimiter::direct(quota))
}

impl Budget {
    pub fn from_config(config: &BudgetConfig) -> Self {
        Self {
            manifest_gets: limiter(config.manifest_gets, config.per),
            requests: limiter(config.requests, config.per),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one request from the budget; `Err(wait)` when it is spent.
    pub fn take(&self, manifest_get: bool) -> Result<(), Duration> {
        let now = self.clock.now();
        if manifest_get
            && let Some(l) = &self.manifest_gets
            && let Err(not_until) = l.check()
        {
            return Err(not_until.wait_time_from(now));
        }
        if let Some(l) = &self.requests
            && let Err(not_until) = l.check()
        {
            return Err(not_until.wait_time_from(now));
        }
        Ok(())
    }
}

/// The upstream's own account of its limits, from its last answer.
#[derive(Debug)]
pub struct UpstreamLimits {
    limit: AtomicI64,
    remaining: AtomicI64,
    /// Until when the upstream said nothing is left.
    spent_until: Mutex<Option<Instant>>,
}

impl Default for UpstreamLimits {
    fn default() -> Self {
        Self {
            limit: AtomicI64::new(-1),
            remaining: AtomicI64::new(-1),
            spent_until: Mutex::new(None),
        }
    }
}

/// `100;w=21600` → (100, 21600 s).
fn parse_limit(value: &str) -> Option<(u64, Option<Duration>)> {
    let mut parts = value.split(';');
    let n = parts.next()?.trim().parse().ok()?;
    let window = parts.find_map(|p| {
        p.trim()
            .strip_prefix("w=")
            .and_then(|w| w.parse().ok())
            .map(Duration::from_secs)
    });
    Some((n, window))
}

impl UpstreamLimits {
    /// Records `ratelimit-limit` and `ratelimit-remaining` from an answer.
    pub fn observe(&self, headers: &HeaderMap) {
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_limit)
        };
        if let Some((limit, _)) = get("ratelimit-limit") {
            self.limit
                .store(i64::try_from(limit).unwrap_or(i64::MAX), Ordering::Relaxed);
        }
        if let Some((remaining, window)) = get("ratelimit-remaining") {
            self.remaining.store(
                i64::try_from(remaining).unwrap_or(i64::MAX),
                Ordering::Relaxed,
            );
            let mut spent = self
                .spent_until
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *spent = (remaining == 0).then(|| {
                Instant::now() + window.unwrap_or(DEFAULT_WINDOW).min(DEFAULT_WINDOW * 24)
            });
        }
    }

    /// How long until the upstream's window refills, when it said nothing is left.
    pub fn spent(&self) -> Option<Duration> {
        let mut spent = self
            .spent_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match *spent {
            Some(until) if until > Instant::now() => Some(until - Instant::now()),
            Some(_) => {
                *spent = None;
                None
            }
            None => None,
        }
    }

    pub fn limit(&self) -> Option<u64> {
        u64::try_from(self.limit.load(Ordering::Relaxed)).ok()
    }

    pub fn remaining(&self) -> Option<u64> {
        u64::try_from(self.remaining.load(Ordering::Relaxed)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_is_spent_and_says_how_long_to_wait() {
        let b = Budget::from_config(&BudgetConfig {
            manifest_gets: Some(2),
            requests: None,
            per: Duration::from_secs(3600),
        });
        assert!(b.take(true).is_ok());
        assert!(b.take(true).is_ok());
        let wait = b.take(true).unwrap_err();
        assert!(
            wait > Duration::from_secs(1000) && wait <= Duration::from_secs(1800),
            "{wait:?}"
        );
        assert!(
            b.take(false).is_ok(),
            "HEADs and blobs are not manifest GETs"
        );
    }

    #[test]
    fn upstream_headers() {
        let l = UpstreamLimits::default();
        assert_eq!(l.remaining(), None);
        let mut h = HeaderMap::new();
        h.insert("ratelimit-limit", "100;w=21600".parse().unwrap());
        h.insert("ratelimit-remaining", "76;w=21600".parse().unwrap());
        l.observe(&h);
        assert_eq!((l.limit(), l.remaining()), (Some(100), Some(76)));
        assert!(l.spent().is_none());
        h.insert("ratelimit-remaining", "0;w=60".parse().unwrap());
        l.observe(&h);
        let wait = l.spent().unwrap();
        assert!(wait <= Duration::from_secs(60) && wait > Duration::from_secs(50));
        h.insert("ratelimit-remaining", "5".parse().unwrap());
        l.observe(&h);
        assert!(l.spent().is_none());
        assert_eq!(parse_limit("junk"), None);
    }
}
