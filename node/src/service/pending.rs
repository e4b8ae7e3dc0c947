//! The pending set: verified contributions that arrived before their dependencies, held in
//! memory until the dependencies arrive (then they are applied with them) or until they are
//! evicted.
//!
//! Bounded three ways: by count, by bytes, and by age. When it is full, the oldest entries make
//! room for new ones (the newest early arrival is the likeliest to become applicable soon; an
//! evicted one is fetched again by sync once its dependencies are here). Entries older than the
//! age limit are dropped on the service's timer.

use super::Millis;
use agora_protocol::{DocId, SpaceId};
use std::collections::{HashMap, VecDeque};

/// The pending set's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingLimits {
    /// Most entries held, across all documents.
    pub max_items: usize,
    /// Most bytes held (as the caller measures an entry), across all documents.
    pub max_bytes: usize,
    /// How long an entry may wait for its dependencies, in milliseconds.
    pub max_age: Millis,
}

impl Default for PendingLimits {
    fn default() -> Self {
        PendingLimits {
            max_items: 10_000,
            max_bytes: 32 * 1024 * 1024,
            max_age: 10 * 60 * 1000,
        }
    }
}

type Key = (SpaceId, DocId);

struct Held<T> {
    seq: u64,
    size: usize,
    item: T,
}

/// Early contributions by document, in arrival order.
pub struct PendingSet<T> {
    limits: PendingLimits,
    by_doc: HashMap<Key, Vec<Held<T>>>,
    /// Every entry ever inserted and not yet known to be gone, oldest first: (seq, document,
    /// arrival). Entries taken by [`PendingSet::take`] stay here until they reach the front or
    /// a compaction removes them.
    order: VecDeque<(u64, Key, Millis)>,
    next_seq: u64,
    len: usize,
    bytes: usize,
}

impl<T> PendingSet<T> {
    /// An empty set with these limits.
    pub fn new(limits: PendingLimits) -> Self {
        PendingSet {
            limits,
            by_doc: HashMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
            len: 0,
            bytes: 0,
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Holds `item` (of `size` bytes) for `key`, evicting the oldest entries if the set is full.
    /// Returns how many entries were evicted (an item larger than the whole byte limit is not
    /// held, and counts as one eviction).
    pub fn insert(&mut self, key: Key, item: T, size: usize, now: Millis) -> usize {
        if size > self.limits.max_bytes || self.limits.max_items == 0 {
            return 1;
        }
        let mut evicted = 0;
        while self.len >= self.limits.max_items || self.bytes + size > self.limits.max_bytes {
            if !self.evict_oldest() {
                break;
            }
            evicted += 1;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_doc
            .entry(key)
            .or_default()
            .push(Held { seq, size, item });
        self.order.push_back((seq, key, now));
        self.len += 1;
        self.bytes += size;
        evicted
    }

    /// Takes everything held for `key`, in arrival order.
    pub fn take(&mut self, key: &Key) -> Vec<T> {
        let Some(held) = self.by_doc.remove(key) else {
            return Vec::new();
        };
        self.len -= held.len();
        self.bytes -= held.iter().map(|h| h.size).sum::<usize>();
        // Their records in `order` are now stale; keep that list proportional to what is held.
        if self.order.len() > 2 * self.len + 1024 {
            let by_doc = &self.by_doc;
            self.order.retain(|(seq, key, _)| {
                by_doc
                    .get(key)
                    .is_some_and(|v| v.iter().any(|h| h.seq == *seq))
            });
        }
        held.into_iter().map(|h| h.item).collect()
    }

    /// What is held for `key`, in arrival order, left in place.
    pub fn held(&self, key: &Key) -> impl Iterator<Item = &T> {
        self.by_doc.get(key).into_iter().flatten().map(|h| &h.item)
    }

    /// Drops entries that arrived `max_age` or more before `now`. Returns how many.
    pub fn expire(&mut self, now: Millis) -> usize {
        let mut dropped = 0;
        while let Some(&(seq, key, at)) = self.order.front() {
            if at.saturating_add(self.limits.max_age) > now {
                break;
            }
            self.order.pop_front();
            if self.remove(seq, &key) {
                dropped += 1;
            }
        }
        dropped
    }

    /// When the oldest entry expires, if anything is held.
    pub fn next_expiry(&self) -> Option<Millis> {
        if self.len == 0 {
            return None;
        }
        // Stale records at the front only make this early, never late.
        self.order
            .front()
            .map(|(_, _, at)| at.saturating_add(self.limits.max_age))
    }

    /// Removes the oldest entry still held. Returns false if nothing is held.
    fn evict_oldest(&mut self) -> bool {
        while let Some((seq, key, _)) = self.order.pop_front() {
            if self.remove(seq, &key) {
                return true;
            }
        }
        false
    }

    /// Removes the entry `seq` of `key`, if it is still held.
    fn remove(&mut self, seq: u64, key: &Key) -> bool {
        let Some(held) = self.by_doc.get_mut(key) else {
            return false;
        };
        let Some(i) = held.iter().position(|h| h.seq == seq) else {
            return false;
        };
        let h = held.remove(i);
        if held.is_empty() {
            self.by_doc.remove(key);
        }
        self.len -= 1;
        self.bytes -= h.size;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u8) -> Key {
        (SpaceId([1; 16]), DocId([i; 16]))
    }

    fn limits(max_items: usize, max_bytes: usize, max_age: Millis) -> PendingLimits {
        PendingLimits {
            max_items,
            max_bytes,
            max_age,
        }
    }

    #[test]
    fn a_full_set_evicts_the_oldest_by_count() {
        let mut p = PendingSet::new(limits(3, 1000, 60_000));
        for i in 0..3u8 {
            assert_eq!(p.insert(key(i), i, 10, u64::from(i)), 0);
        }
        // The fourth early arrival is held; the oldest (doc 0) makes room.
        assert_eq!(p.insert(key(3), 3, 10, 3), 1);
        assert_eq!(p.len(), 3);
        assert!(p.take(&key(0)).is_empty());
        assert_eq!(p.take(&key(3)), vec![3]);
        assert_eq!(p.len(), 2);
        assert_eq!(p.bytes(), 20);
    }

    #[test]
    fn a_full_set_evicts_the_oldest_by_bytes() {
        let mut p = PendingSet::new(limits(100, 100, 60_000));
        p.insert(key(1), 'a', 40, 0);
        p.insert(key(1), 'b', 40, 1);
        p.insert(key(2), 'c', 10, 2);
        // 60 more bytes: 'a' and 'b' (the oldest) go, 'c' stays.
        assert_eq!(p.insert(key(3), 'd', 60, 3), 2);
        assert_eq!(p.bytes(), 70);
        assert!(p.take(&key(1)).is_empty());
        assert_eq!(p.take(&key(2)), vec!['c']);
        // Larger than the whole limit: not held at all.
        assert_eq!(p.insert(key(4), 'e', 101, 4), 1);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn entries_expire_by_age_and_taken_ones_do_not_count() {
        let mut p = PendingSet::new(limits(100, 1000, 1_000));
        p.insert(key(1), 1, 1, 0);
        p.insert(key(2), 2, 1, 400);
        p.insert(key(3), 3, 1, 800);
        assert_eq!(p.next_expiry(), Some(1_000));
        assert_eq!(p.take(&key(2)), vec![2]);
        assert_eq!(p.expire(999), 0);
        // At 1,000 the first is due; the second was taken (its record is skipped).
        assert_eq!(p.expire(1_400), 1);
        assert_eq!(p.len(), 1);
        assert_eq!(p.expire(1_800), 1);
        assert!(p.is_empty());
        assert_eq!(p.next_expiry(), None);
    }

    #[test]
    fn stale_records_stay_bounded() {
        let mut p = PendingSet::new(limits(10, 1_000_000, 60_000));
        for i in 0..100_000u64 {
            p.insert(key((i % 7) as u8), i, 1, i);
            if i % 3 == 0 {
                p.take(&key((i % 7) as u8));
            }
        }
        assert!(p.len() <= 10);
        assert!(p.order.len() <= 2 * p.len() + 1025, "{}", p.order.len());
    }
}
