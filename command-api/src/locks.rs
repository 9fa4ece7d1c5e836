//! Serialises commands per aggregate and per invariant (docs/design.md §2): a
//! command holds the locks of everything its decision reads until its events
//! are appended and applied, so no other command decides on stale state.
//!
//! Striped: a fixed set of mutexes indexed by key hash. Memory stays
//! bounded whatever the number of users, and two keys that share a stripe
//! merely wait for each other.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use tokio::sync::{Mutex, OwnedMutexGuard};

const STRIPES: usize = 4096;

#[derive(Debug)]
pub struct KeyedLocks {
    stripes: Vec<Arc<Mutex<()>>>,
}

impl Default for KeyedLocks {
    fn default() -> Self {
        Self { stripes: (0..STRIPES).map(|_| Arc::new(Mutex::new(()))).collect() }
    }
}

/// Holds the locks until dropped.
#[derive(Debug)]
pub struct Held(#[allow(dead_code)] Vec<OwnedMutexGuard<()>>);

impl KeyedLocks {
    fn stripe(key: &str) -> usize {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        (h.finish() as usize) % STRIPES
    }

    /// Locks all the keys. Stripes are taken in ascending order, each once,
    /// so two commands locking overlapping sets cannot deadlock.
    pub async fn lock<I, K>(&self, keys: I) -> Held
    where
        I: IntoIterator<Item = K>,
        K: AsRef<str>,
    {
        let mut indexes: Vec<usize> = keys.into_iter().map(|k| Self::stripe(k.as_ref())).collect();
        indexes.sort_unstable();
        indexes.dedup();
        let mut guards = Vec::with_capacity(indexes.len());
        for i in indexes {
            guards.push(Arc::clone(&self.stripes[i]).lock_owned().await);
        }
        Held(guards)
    }
}

impl KeyedLocks {
    /// Every stripe, in order: no command holds or can take a lock until
    /// dropped. For re-reading the write model from the log.
    pub async fn lock_all(&self) -> Held {
        let mut guards = Vec::with_capacity(STRIPES);
        for stripe in &self.stripes {
            guards.push(Arc::clone(stripe).lock_owned().await);
        }
        Held(guards)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn overlapping_sets_in_any_order_do_not_deadlock() {
        let locks = Arc::new(KeyedLocks::default());
        let mut tasks = Vec::new();
        for i in 0..64 {
            let locks = Arc::clone(&locks);
            tasks.push(tokio::spawn(async move {
                let keys = if i % 2 == 0 { ["a", "b"] } else { ["b", "a"] };
                let _held = locks.lock(keys).await;
                tokio::task::yield_now().await;
            }));
        }
        let all = futures::future::join_all(tasks);
        tokio::time::timeout(Duration::from_secs(5), all).await.expect("no deadlock");
    }

    #[tokio::test]
    async fn the_same_key_is_exclusive() {
        let locks = KeyedLocks::default();
        let held = locks.lock(["user:1"]).await;
        let second = tokio::time::timeout(Duration::from_millis(50), locks.lock(["user:1"])).await;
        assert!(second.is_err(), "second lock must wait");
        drop(held);
        assert!(tokio::time::timeout(Duration::from_millis(500), locks.lock(["user:1"])).await.is_ok());
    }
}
