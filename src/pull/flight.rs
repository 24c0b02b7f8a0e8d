//! The fill table: concurrent requests for one key share one piece of upstream work.
//!
//! The first request for a key leads: it gets a [`Permit`], does the work and publishes the
//! outcome. Requests that arrive meanwhile wait for that outcome, with a time bound. The
//! table's lock is a plain mutex around a map and is never held across an await. A slot is
//! removed only by the permit that created it (compared by identity), so a finished flight
//! can never remove its successor. A permit dropped without publishing (its request was
//! cancelled) wakes the waiters with [`Outcome::GiveUp`], and one of them leads the retry.
//!
//! Publishing does not end the flight: a blob fill publishes its running fill and keeps the
//! permit until the fill ends, so that later requests join it instead of starting another.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

type Slots<K, V> = Arc<Mutex<HashMap<K, Arc<Slot<V>>>>>;

struct Slot<V> {
    tx: watch::Sender<Option<V>>,
}

/// In-flight work by key.
pub struct Flights<K, V> {
    slots: Slots<K, V>,
}

impl<K, V> Default for Flights<K, V> {
    fn default() -> Self {
        Self {
            slots: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

/// What [`Flights::join`] makes of a request.
pub enum Role<K: Hash + Eq + Clone, V> {
    /// Nobody is working on the key: this request does, and publishes the outcome.
    Lead(Permit<K, V>),
    /// Another request is working on it.
    Wait(Waiter<V>),
}

/// The right, and the duty, to do the work for a key.
pub struct Permit<K: Hash + Eq + Clone, V> {
    slots: Slots<K, V>,
    key: K,
    slot: Arc<Slot<V>>,
}

/// A request waiting for another's outcome.
pub struct Waiter<V> {
    rx: watch::Receiver<Option<V>>,
}

/// How a wait ended.
#[derive(Debug)]
pub enum Outcome<V> {
    /// The leader published this.
    Done(V),
    /// The leader went away without an answer: try again.
    GiveUp,
    /// No answer within the time bound.
    Timeout,
}

impl<K: Hash + Eq + Clone, V: Clone> Flights<K, V> {
    /// Leads the work for `key`, or waits for whoever does.
    pub fn join(&self, key: &K) -> Role<K, V> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = slots.get(key) {
            return Role::Wait(Waiter {
                rx: slot.tx.subscribe(),
            });
        }
        let (tx, _) = watch::channel(None);
        let slot = Arc::new(Slot { tx });
        slots.insert(key.clone(), slot.clone());
        Role::Lead(Permit {
            slots: self.slots.clone(),
            key: key.clone(),
            slot,
        })
    }

    /// Waits on the work for `key` if some is in progress; never leads.
    pub fn watch(&self, key: &K) -> Option<Waiter<V>> {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.get(key).map(|slot| Waiter {
            rx: slot.tx.subscribe(),
        })
    }

    /// Flights in progress.
    pub fn len(&self) -> usize {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Permit<K, V> {
    /// Hands `value` to every waiter, present and future, while this permit lives.
    pub fn publish(&self, value: V) {
        self.slot.tx.send_replace(Some(value));
    }
}

impl<K: Hash + Eq + Clone, V> Drop for Permit<K, V> {
    fn drop(&mut self) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if slots
            .get(&self.key)
            .is_some_and(|s| Arc::ptr_eq(s, &self.slot))
        {
            slots.remove(&self.key);
        }
    }
}

impl<V: Clone> Waiter<V> {
    /// Waits at most `timeout` for the leader's outcome.
    pub async fn wait(mut self, timeout: Duration) -> Outcome<V> {
        let waited = tokio::time::timeout(timeout, self.rx.wait_for(Option::is_some))
            .await
            .map(|r| r.map(|v| v.clone()));
        match waited {
            Ok(Ok(v)) => v.map_or(Outcome::GiveUp, Outcome::Done),
            // The sender is gone: the last value stands, if there was one.
            Ok(Err(_)) => self
                .rx
                .borrow()
                .clone()
                .map_or(Outcome::GiveUp, Outcome::Done),
            Err(_) => Outcome::Timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(5);

    fn lead(f: &Flights<&'static str, u32>, k: &'static str) -> Permit<&'static str, u32> {
        match f.join(&k) {
            Role::Lead(p) => p,
            Role::Wait(_) => panic!("expected to lead"),
        }
    }

    fn wait(f: &Flights<&'static str, u32>, k: &'static str) -> Waiter<u32> {
        match f.join(&k) {
            Role::Wait(w) => w,
            Role::Lead(_) => panic!("expected to wait"),
        }
    }

    #[tokio::test]
    async fn waiters_share_the_leaders_outcome() {
        let f = Flights::default();
        let p = lead(&f, "a");
        let w1 = wait(&f, "a");
        let w2 = wait(&f, "a");
        p.publish(7);
        assert!(matches!(w1.wait(T).await, Outcome::Done(7)));
        // Published and still held: late arrivals see it at once.
        assert!(matches!(wait(&f, "a").wait(T).await, Outcome::Done(7)));
        drop(p);
        assert!(matches!(w2.wait(T).await, Outcome::Done(7)));
        assert_eq!(f.len(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_leader_lets_a_waiter_lead() {
        let f = Flights::default();
        let p = lead(&f, "a");
        let w = wait(&f, "a");
        drop(p);
        assert!(matches!(w.wait(T).await, Outcome::GiveUp));
        let _next = lead(&f, "a");
    }

    #[tokio::test]
    async fn an_old_permit_never_removes_its_successor() {
        let f = Flights::default();
        let first = lead(&f, "a");
        // Simulate the bug the identity check prevents: the slot is replaced while the first
        // permit still lives.
        f.slots.lock().unwrap().remove(&"a");
        let second = lead(&f, "a");
        drop(first);
        assert_eq!(f.len(), 1, "the second flight's slot stays");
        let w = wait(&f, "a");
        second.publish(1);
        assert!(matches!(w.wait(T).await, Outcome::Done(1)));
    }

    #[tokio::test]
    async fn waits_are_bounded() {
        let f = Flights::default();
        let _p = lead(&f, "a");
        let w = wait(&f, "a");
        assert!(matches!(
            w.wait(Duration::from_millis(20)).await,
            Outcome::Timeout
        ));
    }
}
