//! An in-memory implementation of [`Storage`] for the simulation and unit tests: one ordered
//! map per tree, shared between clones, and a switch that makes writes and flushes fail.

use super::{Entries, Storage, StoreError, Tree, Write};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

type Maps = [BTreeMap<Vec<u8>, Vec<u8>>; Tree::ALL.len()];

#[derive(Default)]
struct Inner {
    maps: Maps,
    failing: bool,
    flushes: u64,
}

/// Ordered maps in memory. Clones share them.
#[derive(Clone, Default)]
pub struct MemoryStorage {
    inner: Arc<Mutex<Inner>>,
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> MemoryStorage {
        MemoryStorage::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Only tests and the simulation use this store; a panic while holding the lock already
        // failed them.
        self.inner.lock().expect("memory store lock poisoned")
    }

    /// From now on, until called again with `false`, every write and flush fails (a full or
    /// broken disk).
    pub fn set_failing(&self, failing: bool) {
        self.lock().failing = failing;
    }

    /// How many flushes succeeded so far.
    pub fn flushes(&self) -> u64 {
        self.lock().flushes
    }

    /// Number of entries in a tree.
    pub fn len(&self, tree: Tree) -> usize {
        self.lock().maps[tree.index()].len()
    }

    /// The trees where some key or value holds `needle` (tests: what sits on "disk").
    pub fn trees_holding(&self, needle: &[u8]) -> Vec<Tree> {
        let inner = self.lock();
        Tree::ALL
            .iter()
            .copied()
            .filter(|t| {
                inner.maps[t.index()].iter().any(|(k, v)| {
                    [k, v]
                        .iter()
                        .any(|b| b.windows(needle.len()).any(|w| w == needle))
                })
            })
            .collect()
    }

    /// Whether every tree is empty.
    pub fn is_empty(&self) -> bool {
        self.lock().maps.iter().all(BTreeMap::is_empty)
    }

    fn failed(what: &str) -> StoreError {
        StoreError::Failed {
            path: "(memory)".into(),
            detail: format!("{what} failed (injected fault)"),
        }
    }
}

impl Storage for MemoryStorage {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().maps[tree.index()].get(key).cloned())
    }

    fn range(&self, tree: Tree, from: &[u8], to: Option<&[u8]>) -> Result<Entries, StoreError> {
        use std::ops::Bound;
        let inner = self.lock();
        let upper = match to {
            Some(to) => Bound::Excluded(to),
            None => Bound::Unbounded,
        };
        Ok(inner.maps[tree.index()]
            .range::<[u8], _>((Bound::Included(from), upper))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn apply(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.failing {
            return Err(MemoryStorage::failed("write"));
        }
        for w in writes {
            let map = &mut inner.maps[w.tree.index()];
            match w.value {
                Some(v) => {
                    map.insert(w.key, v);
                }
                None => {
                    map.remove(&w.key);
                }
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.failing {
            return Err(MemoryStorage::failed("flush"));
        }
        inner.flushes += 1;
        Ok(())
    }

    fn remove_former_tree(&self, _name: &str) -> Result<(), StoreError> {
        // A memory store starts empty, at the current schema: it holds no former tree.
        Ok(())
    }
}
