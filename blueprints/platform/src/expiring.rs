//! A bounded map whose entries expire: what a process remembers of a credential it has
//! verified or minted, until the credential's own expiry (`exp`, in Unix seconds), so that
//! the next request that presents the same one skips the signature and the JSON.
//!
//! Bounded in entries, so a stream of distinct credentials cannot grow it: when it is full,
//! the expired entries go, and if that is not enough an arbitrary eighth of the rest (a
//! miss costs one verification, nothing more). One mutex, held for a lookup or an insert.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

pub struct ExpiringMap<K, V> {
    entries: Mutex<HashMap<K, (V, u64)>>,
    capacity: usize,
}

impl<K: Hash + Eq, V: Clone> ExpiringMap<K, V> {
    /// Holds at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        ExpiringMap {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// The value under `key`, if it has not expired at `now`.
    pub fn get<Q>(&self, key: &Q, now: u64) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|(_, expires)| now < *expires)
            .map(|(value, _)| value.clone())
    }

    /// Remembers `value` under `key` until `expires` (exclusive); one already expired at
    /// `now` is not kept.
    pub fn insert(&self, key: K, value: V, expires: u64, now: u64) {
        if expires <= now {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, (_, at)| now < *at);
            if entries.len() >= self.capacity {
                // Full of live entries: an eighth of them go at once, so that each insert
                // past this point does not scan the whole map again.
                let mut evict = (self.capacity / 8).max(1);
                entries.retain(|_, _| {
                    if evict == 0 {
                        return true;
                    }
                    evict -= 1;
                    false
                });
            }
        }
        entries.insert(key, (value, expires));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_found_until_it_expires() {
        let map = ExpiringMap::new(4);
        map.insert("token".to_string(), 7, 100, 90);
        assert_eq!(map.get("token", 90), Some(7));
        assert_eq!(map.get("token", 99), Some(7));
        assert_eq!(map.get("token", 100), None, "expiry is exclusive");
        assert_eq!(map.get("other", 90), None);
        map.insert("late".to_string(), 8, 100, 100);
        assert_eq!(
            map.get("late", 50),
            None,
            "one expired when inserted is not kept"
        );
    }

    #[test]
    fn it_never_holds_more_than_its_capacity_and_drops_the_expired_first() {
        let map = ExpiringMap::new(16);
        for i in 0..8 {
            map.insert(format!("old-{i}"), i, 10, 0);
        }
        for i in 0..8 {
            map.insert(format!("live-{i}"), i, 1_000, 0);
        }
        assert_eq!(map.len(), 16);
        // Full at t=20: the eight expired entries make room; every live one stays.
        map.insert("new".to_string(), 99, 1_000, 20);
        assert_eq!(map.len(), 9);
        assert!((0..8).all(|i| map.get(&format!("live-{i}"), 20) == Some(i)));
        for i in 0..1_000 {
            map.insert(format!("flood-{i}"), i, 1_000, 20);
            assert!(map.len() <= 16, "{} entries after {i}", map.len());
        }
        assert_eq!(map.get("flood-999", 20), Some(999), "the newest is kept");
    }
}
