//! Durable storage: one sled database, owned by the engine thread.
//!
//! Trees (schema version [`SCHEMA_VERSION`], recorded in `meta`):
//! - `meta`: `schema_version` → u32 BE; `display_name` → UTF-8.
//! - `spaces`: space id (16) → JSON [`SpaceRecord`].
//! - `docs`: space (16) ‖ doc (16) → kind code (1 byte). Written once, when a document is first seen.
//! - `contributions`: space ‖ doc ‖ seq (u64 BE) → canonical contribution bytes. `seq` counts the
//!   document's contributions in the order this node applied them, so a saved snapshot can say
//!   "everything up to seq N is inside me" and start-up replays only the tail.
//! - `snapshots`: space ‖ doc → upto seq (u64 BE) ‖ `Automerge::save()` bytes.
//! - `hashes`: space ‖ doc ‖ change hash (32) → seq (u64 BE): finds a stored contribution by its
//!   change hash, for anti-entropy sync.
//!
//! Durability: sled writes reach disk only on `flush`. The engine calls [`Store::flush`] once per
//! batch, before it acknowledges any write in the batch (group commit).

use agora_protocol::{DocId, DocKind, SpaceId};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The on-disk schema this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// sled failed (I/O, corruption, or another process holds the database).
    #[error("store error at {path}: {source}")]
    Sled {
        /// The database directory.
        path: String,
        /// The underlying error.
        source: sled::Error,
    },
    /// The database was written by a newer Agora.
    #[error("store schema version {found} is newer than this build understands ({SCHEMA_VERSION}): upgrade agora")]
    NewerSchema {
        /// Version found on disk.
        found: u32,
    },
    /// A stored record does not decode.
    #[error("corrupt store record in {tree}: {detail}")]
    Corrupt {
        /// Which tree.
        tree: &'static str,
        /// What is wrong.
        detail: String,
    },
}

/// What the node remembers about a space it joined.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SpaceRecord {
    /// The name given at creation (known to the creator, and to joiners who were told it).
    pub name: Option<String>,
    /// When this node joined (ms since the Unix epoch).
    pub joined_at: i64,
}

/// A document as found on disk at start-up.
pub struct StoredDoc {
    /// Space.
    pub space: SpaceId,
    /// Document.
    pub doc: DocId,
    /// Kind.
    pub kind: DocKind,
    /// The latest snapshot: the seq it covers and its saved bytes.
    pub snapshot: Option<(u64, Vec<u8>)>,
    /// Contributions after the snapshot, in seq order.
    pub tail: Vec<(u64, Vec<u8>)>,
}

/// The sled-backed store.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    path: String,
    meta: sled::Tree,
    spaces: sled::Tree,
    docs: sled::Tree,
    contributions: sled::Tree,
    snapshots: sled::Tree,
    hashes: sled::Tree,
}

fn doc_key(space: &SpaceId, doc: &DocId) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(&space.0);
    k[16..].copy_from_slice(&doc.0);
    k
}

fn contribution_key(space: &SpaceId, doc: &DocId, seq: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(&doc_key(space, doc));
    k[32..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn hash_key(space: &SpaceId, doc: &DocId, hash: &[u8; 32]) -> [u8; 64] {
    let mut k = [0u8; 64];
    k[..32].copy_from_slice(&doc_key(space, doc));
    k[32..].copy_from_slice(hash);
    k
}

impl Store {
    /// Opens (or creates) the database in `dir`, with a page cache of `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        let path = dir.display().to_string();
        let err = |source| StoreError::Sled {
            path: path.clone(),
            source,
        };
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            // Our own flushes are the durability points; the background flush only bounds loss
            // for writes nobody was promised.
            .flush_every_ms(Some(1000))
            .open()
            .map_err(err)?;
        let tree = |name: &str| db.open_tree(name).map_err(err);
        let store = Store {
            meta: tree("meta")?,
            spaces: tree("spaces")?,
            docs: tree("docs")?,
            contributions: tree("contributions")?,
            snapshots: tree("snapshots")?,
            hashes: tree("hashes")?,
            db,
            path: path.clone(),
        };
        match store.meta.get("schema_version").map_err(err)? {
            None => {
                store
                    .meta
                    .insert("schema_version", &SCHEMA_VERSION.to_be_bytes())
                    .map_err(err)?;
                store.flush()?;
            }
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_ref())
                    .map(u32::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt {
                        tree: "meta",
                        detail: "schema_version is not 4 bytes".into(),
                    })?;
                if found > SCHEMA_VERSION {
                    return Err(StoreError::NewerSchema { found });
                }
                // Version 1 is the first: no migrations yet. A future version migrates here,
                // step by step, before anything else reads the trees.
            }
        }
        Ok(store)
    }

    fn err(&self, source: sled::Error) -> StoreError {
        StoreError::Sled {
            path: self.path.clone(),
            source,
        }
    }

    /// Makes every write so far durable. Returns only after the data is on disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(|e| self.err(e))
    }

    /// The display name this node's author chose, if any.
    pub fn display_name(&self) -> Result<Option<String>, StoreError> {
        let v = self.meta.get("display_name").map_err(|e| self.err(e))?;
        Ok(v.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Records the author's display name (durable after the next flush).
    pub fn set_display_name(&self, name: &str) -> Result<(), StoreError> {
        self.meta
            .insert("display_name", name.as_bytes())
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Records a joined space.
    pub fn put_space(&self, space: &SpaceId, record: &SpaceRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(record).expect("a SpaceRecord always serialises");
        self.spaces
            .insert(space.0, bytes)
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Every joined space.
    pub fn spaces(&self) -> Result<Vec<(SpaceId, SpaceRecord)>, StoreError> {
        let mut out = Vec::new();
        for item in self.spaces.iter() {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let corrupt = |detail: String| StoreError::Corrupt {
                tree: "spaces",
                detail,
            };
            let id = SpaceId::from_slice(&k).ok_or_else(|| corrupt("bad key".into()))?;
            let record = serde_json::from_slice(&v).map_err(|e| corrupt(e.to_string()))?;
            out.push((id, record));
        }
        Ok(out)
    }

    /// Records that a document exists (idempotent).
    pub fn put_doc(&self, space: &SpaceId, doc: &DocId, kind: DocKind) -> Result<(), StoreError> {
        self.docs
            .insert(doc_key(space, doc), &[kind.code()])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Appends contributions `(space, doc, seq, change hash, bytes)` in one batch, with their
    /// hash index entries. Durable after [`Store::flush`].
    pub fn put_contributions<'a>(
        &self,
        items: impl IntoIterator<Item = (&'a SpaceId, &'a DocId, u64, [u8; 32], &'a [u8])>,
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        let mut index = sled::Batch::default();
        for (space, doc, seq, hash, bytes) in items {
            batch.insert(&contribution_key(space, doc, seq)[..], bytes);
            index.insert(&hash_key(space, doc, &hash)[..], &seq.to_be_bytes()[..]);
        }
        // The index goes first: an index entry without its contribution (after a crash between
        // the two) is harmless, because lookups go through to the contribution and miss.
        self.hashes.apply_batch(index).map_err(|e| self.err(e))?;
        self.contributions
            .apply_batch(batch)
            .map_err(|e| self.err(e))
    }

    /// The stored contribution whose change has this hash, if any.
    pub fn contribution_by_hash(
        &self,
        space: &SpaceId,
        doc: &DocId,
        hash: &[u8; 32],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(seq) = self
            .hashes
            .get(hash_key(space, doc, hash))
            .map_err(|e| self.err(e))?
        else {
            return Ok(None);
        };
        let seq = u64::from_be_bytes(seq.as_ref().try_into().map_err(|_| StoreError::Corrupt {
            tree: "hashes",
            detail: "seq is not 8 bytes".into(),
        })?);
        let v = self
            .contributions
            .get(contribution_key(space, doc, seq))
            .map_err(|e| self.err(e))?;
        Ok(v.map(|v| v.to_vec()))
    }

    /// Saves a snapshot of a document that covers its contributions up to `upto_seq`.
    pub fn put_snapshot(
        &self,
        space: &SpaceId,
        doc: &DocId,
        upto_seq: u64,
        saved: &[u8],
    ) -> Result<(), StoreError> {
        let mut v = Vec::with_capacity(8 + saved.len());
        v.extend_from_slice(&upto_seq.to_be_bytes());
        v.extend_from_slice(saved);
        self.snapshots
            .insert(doc_key(space, doc), v)
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// All contributions of one document, in seq order (used to rebuild a document).
    pub fn contributions_of(
        &self,
        space: &SpaceId,
        doc: &DocId,
        after_seq: u64,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let start = contribution_key(space, doc, after_seq.saturating_add(1));
        let end = contribution_key(space, doc, u64::MAX);
        let mut out = Vec::new();
        for item in self.contributions.range(start..=end) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let seq =
                u64::from_be_bytes(k[32..40].try_into().map_err(|_| StoreError::Corrupt {
                    tree: "contributions",
                    detail: "short key".into(),
                })?);
            out.push((seq, v.to_vec()));
        }
        Ok(out)
    }

    /// Every document with its latest snapshot and the contributions after it.
    pub fn load_docs(&self) -> Result<Vec<StoredDoc>, StoreError> {
        let mut out = Vec::new();
        for item in self.docs.iter() {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let corrupt = |detail: &str| StoreError::Corrupt {
                tree: "docs",
                detail: detail.into(),
            };
            if k.len() != 32 {
                return Err(corrupt("bad key"));
            }
            let space = SpaceId::from_slice(&k[..16]).ok_or_else(|| corrupt("bad key"))?;
            let doc = DocId::from_slice(&k[16..]).ok_or_else(|| corrupt("bad key"))?;
            let kind = v
                .first()
                .copied()
                .and_then(DocKind::from_code)
                .ok_or_else(|| corrupt("bad kind"))?;
            let snapshot = match self.snapshots.get(k).map_err(|e| self.err(e))? {
                Some(s) if s.len() >= 8 => {
                    let upto = u64::from_be_bytes(s[..8].try_into().expect("checked length"));
                    Some((upto, s[8..].to_vec()))
                }
                Some(_) => return Err(corrupt("short snapshot")),
                None => None,
            };
            let after = snapshot.as_ref().map_or(0, |(upto, _)| *upto);
            let tail = self.contributions_of(&space, &doc, after)?;
            out.push(StoredDoc {
                space,
                doc,
                kind,
                snapshot,
                tail,
            });
        }
        Ok(out)
    }

    /// Number of stored contributions (for status and tests).
    pub fn contribution_count(&self) -> usize {
        self.contributions.len()
    }

    /// Whether any stored contribution has exactly these bytes (used by tests to prove that
    /// rejected input was not stored; a full scan).
    pub fn contains_bytes(&self, bytes: &[u8]) -> bool {
        self.contributions
            .iter()
            .values()
            .any(|v| v.map(|v| v.as_ref() == bytes).unwrap_or(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contributions_survive_reopen_and_snapshot_cuts_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (s, d) = (SpaceId([1; 16]), DocId([2; 16]));
        {
            let store = Store::open(dir.path(), 1 << 20).unwrap();
            store.put_doc(&s, &d, DocKind::Idea).unwrap();
            let items: Vec<(u64, Vec<u8>)> = (1..=5).map(|i| (i, vec![i as u8; 3])).collect();
            store
                .put_contributions(
                    items
                        .iter()
                        .map(|(i, b)| (&s, &d, *i, [*i as u8; 32], b.as_slice())),
                )
                .unwrap();
            store.put_snapshot(&s, &d, 3, b"snap").unwrap();
            store.flush().unwrap();
        }
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let docs = store.load_docs().unwrap();
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].snapshot, Some((3, b"snap".to_vec())));
        let seqs: Vec<u64> = docs[0].tail.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![4, 5]);
        assert_eq!(store.contribution_count(), 5);
        assert_eq!(
            store.contribution_by_hash(&s, &d, &[4; 32]).unwrap(),
            Some(vec![4; 3])
        );
        assert_eq!(store.contribution_by_hash(&s, &d, &[9; 32]).unwrap(), None);
    }
}
