//! The sled 0.34.7 implementation of [`Storage`]: one database directory, one sled tree per
//! [`Tree`].

use super::{Entries, Storage, StoreError, Tree, Write};
use ::sled::transaction::{TransactionError, TransactionResult};
use ::sled::Transactional;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

/// A sled database. Clones share it (and its queue of writes).
///
/// Writes are queued and handed to sled at the next read or flush, so that the writes of the
/// inputs of an engine group, up to the group's flush, cost sled few log reservations: each
/// sled batch or transaction seals and writes the log buffer twice, and every such write wakes
/// all of sled's idle I/O threads (about a tenth of a millisecond of CPU each time). Up to
/// [`ONE_TRANSACTION`] queued writes go in as one transaction over every tree (all or none of
/// them survive a crash); more (a large ingest) go in as one batch per tree (all or none of each
/// tree's), because a transaction first reads the old value of every key it writes. Reads see
/// every write applied before them.
#[derive(Clone)]
pub struct SledStorage {
    db: ::sled::Db,
    trees: [::sled::Tree; Tree::ALL.len()],
    path: String,
    queued: Arc<Mutex<Queued>>,
}

/// Most queued writes handed to sled as one transaction (see [`SledStorage`]).
const ONE_TRANSACTION: usize = 512;

/// Writes not yet handed to sled, and a failure to hand them over that the next flush reports.
#[derive(Default)]
struct Queued {
    writes: Vec<Write>,
    failed: Option<::sled::Error>,
}

impl SledStorage {
    /// Opens (or creates) the database in `dir`, with a page cache of `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<SledStorage, StoreError> {
        let path = dir.display().to_string();
        let err = |source: ::sled::Error| match &source {
            ::sled::Error::Io(io)
                if io.kind() == std::io::ErrorKind::WouldBlock
                    || io.to_string().contains("lock") =>
            {
                StoreError::Locked { path: path.clone() }
            }
            _ => StoreError::Sled {
                path: path.clone(),
                source,
            },
        };
        let db = ::sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            // Our own flushes are the durability points; the background flush only bounds loss
            // for writes nobody was promised.
            .flush_every_ms(Some(1000))
            .open()
            .map_err(err)?;
        let open = |t: Tree| db.open_tree(t.name()).map_err(err);
        let trees = [
            open(Tree::ALL[0])?,
            open(Tree::ALL[1])?,
            open(Tree::ALL[2])?,
            open(Tree::ALL[3])?,
            open(Tree::ALL[4])?,
            open(Tree::ALL[5])?,
        ];
        Ok(SledStorage {
            db,
            trees,
            path: path.clone(),
            queued: Arc::default(),
        })
    }

    fn err(&self, source: ::sled::Error) -> StoreError {
        StoreError::Sled {
            path: self.path.clone(),
            source,
        }
    }

    fn tree(&self, tree: Tree) -> &::sled::Tree {
        &self.trees[tree.index()]
    }

    /// Hands the queued writes to sled (see [`SledStorage`]). A failure is returned here and
    /// kept for the next flush, which must not report those writes durable.
    fn apply_queued(&self) -> Result<(), StoreError> {
        let mut queued = self.queued.lock().unwrap_or_else(PoisonError::into_inner);
        if queued.writes.is_empty() {
            return Ok(());
        }
        let writes = std::mem::take(&mut queued.writes);
        let result = if writes.len() <= ONE_TRANSACTION {
            self.transact(&writes)
        } else {
            self.batch_per_tree(writes)
        };
        result.map_err(|error| {
            queued.failed.get_or_insert_with(|| error.clone());
            self.err(error)
        })
    }

    /// Applies writes as one transaction over every tree.
    fn transact(&self, writes: &[Write]) -> Result<(), ::sled::Error> {
        let result: TransactionResult<(), ()> = self.trees[..].transaction(|trees| {
            for w in writes {
                let tree = &trees[w.tree.index()];
                match &w.value {
                    Some(v) => tree.insert(w.key.as_slice(), v.as_slice())?,
                    None => tree.remove(w.key.as_slice())?,
                };
            }
            Ok(())
        });
        match result {
            Ok(()) => Ok(()),
            Err(TransactionError::Storage(e)) => Err(e),
            // The closure never aborts.
            Err(TransactionError::Abort(())) => Err(::sled::Error::Unsupported("aborted".into())),
        }
    }

    /// Applies writes as one batch per tree, in the order the writes first name the trees.
    fn batch_per_tree(&self, writes: Vec<Write>) -> Result<(), ::sled::Error> {
        let mut batches: [Option<::sled::Batch>; Tree::ALL.len()] = Default::default();
        let mut order: Vec<Tree> = Vec::new();
        for w in writes {
            let batch = batches[w.tree.index()].get_or_insert_with(|| {
                order.push(w.tree);
                ::sled::Batch::default()
            });
            match w.value {
                Some(v) => batch.insert(w.key, v),
                None => batch.remove(w.key),
            }
        }
        for tree in order {
            if let Some(batch) = batches[tree.index()].take() {
                self.tree(tree).apply_batch(batch)?;
            }
        }
        Ok(())
    }
}

impl Storage for SledStorage {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.apply_queued()?;
        Ok(self
            .tree(tree)
            .get(key)
            .map_err(|e| self.err(e))?
            .map(|v| v.to_vec()))
    }

    fn range(&self, tree: Tree, from: &[u8], to: Option<&[u8]>) -> Result<Entries, StoreError> {
        self.range_upto(tree, from, to, usize::MAX)
    }

    fn range_upto(
        &self,
        tree: Tree,
        from: &[u8],
        to: Option<&[u8]>,
        max_bytes: usize,
    ) -> Result<Entries, StoreError> {
        self.apply_queued()?;
        let t = self.tree(tree);
        let iter = match to {
            Some(to) => t.range(from..to),
            None => t.range(from..),
        };
        let entries = iter.map(|item| {
            item.map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(|e| self.err(e))
        });
        super::take_upto(entries, max_bytes, |(_, v)| v.len())
    }

    fn apply(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let mut queued = self.queued.lock().unwrap_or_else(PoisonError::into_inner);
        if queued.writes.is_empty() {
            queued.writes = writes;
        } else {
            queued.writes.extend(writes);
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        let applied = self.apply_queued();
        let failed = self
            .queued
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .failed
            .take();
        if let Some(e) = failed {
            return Err(self.err(e));
        }
        applied?;
        self.db.flush().map(|_| ()).map_err(|e| self.err(e))
    }

    fn remove_former_tree(&self, name: &str) -> Result<(), StoreError> {
        debug_assert!(Tree::ALL.iter().all(|t| t.name() != name));
        self.db.drop_tree(name).map(|_| ()).map_err(|e| self.err(e))
    }
}

#[cfg(test)]
impl SledStorage {
    /// The names of the trees in the database (sled's default tree included).
    pub(crate) fn tree_names(&self) -> Vec<Vec<u8>> {
        self.db
            .tree_names()
            .into_iter()
            .map(|n| n.to_vec())
            .collect()
    }
}
