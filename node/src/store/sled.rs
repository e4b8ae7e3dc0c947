//! The sled 0.34.7 implementation of [`Storage`]: one database directory, one sled tree per
//! [`Tree`].

use super::{Entries, Storage, StoreError, Tree, Write};
use std::path::Path;

/// A sled database. Clones share it.
#[derive(Clone)]
pub struct SledStorage {
    db: ::sled::Db,
    trees: [::sled::Tree; 6],
    path: String,
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
}

impl Storage for SledStorage {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree(tree)
            .get(key)
            .map_err(|e| self.err(e))?
            .map(|v| v.to_vec()))
    }

    fn range(&self, tree: Tree, from: &[u8], to: Option<&[u8]>) -> Result<Entries, StoreError> {
        let t = self.tree(tree);
        let iter = match to {
            Some(to) => t.range(from..to),
            None => t.range(from..),
        };
        iter.map(|item| {
            item.map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(|e| self.err(e))
        })
        .collect()
    }

    fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        let mut batches: [Option<::sled::Batch>; 6] = Default::default();
        for w in writes {
            let batch = batches[w.tree.index()].get_or_insert_with(Default::default);
            match &w.value {
                Some(v) => batch.insert(w.key.as_slice(), v.as_slice()),
                None => batch.remove(w.key.as_slice()),
            }
        }
        // One batch per tree, applied in the order the writes first name the trees (so the hash
        // index goes before the contributions; see `Write::contribution`).
        let mut order: Vec<Tree> = Vec::new();
        for w in writes {
            if !order.contains(&w.tree) {
                order.push(w.tree);
            }
        }
        for tree in order {
            if let Some(batch) = batches[tree.index()].take() {
                self.tree(tree)
                    .apply_batch(batch)
                    .map_err(|e| self.err(e))?;
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(|e| self.err(e))
    }
}
