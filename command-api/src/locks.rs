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
/// Stripes of `LockKey::Quota`, after all the others: a command holding
/// its own locks reserves a request slot under a quota lock, so a quota key
/// must never share a stripe with any other key (it would wait for itself),
/// and `lock_all`, which takes stripes in order, takes these last.
const QUOTA_STRIPES: usize = 1024;

#[derive(Debug)]
pub struct KeyedLocks {
    stripes: Vec<Arc<Mutex<()>>>,
}

impl Default for KeyedLocks {
    fn default() -> Self {
        Self { stripes: (0..STRIPES + QUOTA_STRIPES).map(|_| Arc::new(Mutex::new(()))).collect() }
    }
}

/// What a command locks: each aggregate or invariant its decision reads.
/// Typed, so two commands guarding the same thing always build the same key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockKey {
    /// Who holds an email: sign-up.
    Email(String),
    /// A user aggregate: sessions, profile, credentials, membership.
    User(uuid::Uuid),
    /// The connection aggregate of a pair: one request per pair.
    Pair(String),
    /// A conversation: the order of its messages.
    Conversation(String),
    /// A user's presence aggregate.
    Presence(uuid::Uuid),
    /// A user's notification aggregate.
    Notifications(uuid::Uuid),
    /// Everything a user does that counts against them (the daily request
    /// count) or is retried with an Idempotency-Key of theirs.
    Actor(uuid::Uuid),
    /// A user's daily request slots, at the owner of the user's partition;
    /// taken while the pair's command holds its own locks (stripes apart).
    Quota(uuid::Uuid),
}

impl std::fmt::Display for LockKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockKey::Email(email) => write!(f, "email:{email}"),
            LockKey::User(id) => write!(f, "user:{id}"),
            LockKey::Pair(pair) => write!(f, "pair:{pair}"),
            LockKey::Conversation(pair) => write!(f, "conversation:{pair}"),
            LockKey::Presence(id) => write!(f, "presence:{id}"),
            LockKey::Notifications(id) => write!(f, "notifications:{id}"),
            LockKey::Actor(id) => write!(f, "actor:{id}"),
            LockKey::Quota(id) => write!(f, "quota:{id}"),
        }
    }
}

/// Holds the locks until dropped.
#[derive(Debug)]
pub struct Held(#[allow(dead_code)] Vec<OwnedMutexGuard<()>>);

impl KeyedLocks {
    fn stripe(key: &LockKey) -> usize {
        let mut h = DefaultHasher::new();
        key.to_string().hash(&mut h);
        let hash = h.finish() as usize;
        match key {
            LockKey::Quota(_) => STRIPES + hash % QUOTA_STRIPES,
            _ => hash % STRIPES,
        }
    }

    /// Locks all the keys. Stripes are taken in ascending order, each once,
    /// so two commands locking overlapping sets cannot deadlock.
    pub async fn lock(&self, keys: impl IntoIterator<Item = LockKey>) -> Held {
        let mut indexes: Vec<usize> = keys.into_iter().map(|k| Self::stripe(&k)).collect();
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
        let mut guards = Vec::with_capacity(self.stripes.len());
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
                let (a, b) = (LockKey::Pair("a".into()), LockKey::Pair("b".into()));
                let keys = if i % 2 == 0 { [a, b] } else { [b, a] };
                let _held = locks.lock(keys).await;
                tokio::task::yield_now().await;
            }));
        }
        let all = futures::future::join_all(tasks);
        tokio::time::timeout(Duration::from_secs(5), all).await.expect("no deadlock");
    }

    #[tokio::test]
    async fn a_quota_lock_is_taken_while_other_locks_are_held() {
        let locks = KeyedLocks::default();
        let user = uuid::Uuid::new_v4();
        for n in 0..2000 {
            let pair = LockKey::Pair(format!("pair-{n}"));
            let _held = locks.lock([pair, LockKey::Actor(user)]).await;
            let quota = tokio::time::timeout(Duration::from_millis(100), locks.lock([LockKey::Quota(user)])).await;
            assert!(quota.is_ok(), "a quota key shares no stripe with pair-{n}");
        }
    }

    #[tokio::test]
    async fn the_same_key_is_exclusive() {
        let locks = KeyedLocks::default();
        let user = uuid::Uuid::new_v4();
        let held = locks.lock([LockKey::User(user)]).await;
        let second = tokio::time::timeout(Duration::from_millis(50), locks.lock([LockKey::User(user)])).await;
        assert!(second.is_err(), "second lock must wait");
        drop(held);
        assert!(tokio::time::timeout(Duration::from_millis(500), locks.lock([LockKey::User(user)])).await.is_ok());
    }
}
