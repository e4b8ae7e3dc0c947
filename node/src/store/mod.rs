//! Durable storage: an ordered key-value store behind the narrow [`Storage`] trait, and the
//! node's schema on top of it ([`Store`] for reads, [`Write`] builders for writes).
//!
//! Implementations: [`SledStorage`] (sled 0.34.7, what a node runs on) and [`MemoryStorage`]
//! (ordered maps in memory, for the simulation and unit tests, with fault injection).
//!
//! Trees (schema version [`SCHEMA_VERSION`], recorded in `meta`):
//! - `meta`: `schema_version` → u32 BE; `display_name` → UTF-8.
//! - `spaces`: space id (16) → JSON [`SpaceRecord`].
//! - `docs`: space (16) ‖ doc (16) → kind code (1 byte). Written once, when a document is first seen.
//! - `contributions`: space ‖ doc ‖ seq (u64 BE) → canonical contribution bytes. `seq` counts the
//!   document's contributions in the order this node applied them, so a saved snapshot can say
//!   "everything up to seq N is inside me" and start-up replays only the tail.
//! - `snapshots`: space ‖ doc → upto seq (u64 BE) ‖ `Automerge::save()` bytes.
//! - `ops`: space ‖ op id (32) → a private space's membership operation (canonical bytes,
//!   verified before it was stored).
//!
//! Schema history: version 3 added the `ops` tree and `SpaceRecord::private`. Version 1 also kept a `hashes` tree (space ‖ doc ‖ change hash → seq) to
//! find a stored contribution by its change hash. Its keys are random within a document, so
//! writing one cost sled as much as writing the contribution itself; version 2 drops it (the
//! replica indexes a document's hashes in memory when a sync answer first needs them), and
//! [`Store::new`] migrates a version 1 store by removing the tree.
//!
//! Durability: writes become durable only on [`Storage::flush`]. The service never writes: it
//! hands [`Write`]s to the engine, which applies them and flushes once per group of inputs before
//! anything that depends on them (a reply, a relay, a published contribution) leaves the node.

mod memory;
mod sled;

pub use self::memory::MemoryStorage;
pub use self::sled::SledStorage;

use agora_protocol::{DocId, DocKind, SpaceId};
use serde::{Deserialize, Serialize};

/// The on-disk schema this build reads and writes.
pub const SCHEMA_VERSION: u32 = 3;

/// Trees that former schema versions kept and a migration removes.
const FORMER_TREES: [&str; 1] = ["hashes"];

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// sled failed (I/O, corruption).
    #[error("store error at {path}: {source}")]
    Sled {
        /// The database directory.
        path: String,
        /// The underlying error.
        source: ::sled::Error,
    },
    /// Another process has the database open.
    #[error("the store at {path} is in use by another process")]
    Locked {
        /// The database directory.
        path: String,
    },
    /// A storage backend other than sled failed (for example an injected fault).
    #[error("store error at {path}: {detail}")]
    Failed {
        /// Which store.
        path: String,
        /// What went wrong.
        detail: String,
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

/// The trees of the store (see the module docs for their keys and values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tree {
    /// Schema version and display name.
    Meta,
    /// Joined spaces.
    Spaces,
    /// Documents and their kinds.
    Docs,
    /// Contributions by document and seq.
    Contributions,
    /// Saved documents.
    Snapshots,
    /// Membership operations of private spaces.
    Ops,
}

impl Tree {
    /// Every tree, in a fixed order.
    pub const ALL: [Tree; 6] = [
        Tree::Meta,
        Tree::Spaces,
        Tree::Docs,
        Tree::Contributions,
        Tree::Snapshots,
        Tree::Ops,
    ];

    /// The tree's name on disk.
    pub fn name(self) -> &'static str {
        match self {
            Tree::Meta => "meta",
            Tree::Spaces => "spaces",
            Tree::Docs => "docs",
            Tree::Contributions => "contributions",
            Tree::Snapshots => "snapshots",
            Tree::Ops => "ops",
        }
    }

    /// Position in [`Tree::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One write: `value` `None` removes the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// The tree.
    pub tree: Tree,
    /// The key.
    pub key: Vec<u8>,
    /// The new value, or `None` to remove.
    pub value: Option<Vec<u8>>,
}

/// Key-value entries, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// The budget rule of every bounded read: the items in order, up to and including the first
/// whose size takes the total past `max_bytes` (so at least one item when there is one). Stops
/// at the first error, and reads nothing past what it keeps.
pub(crate) fn take_upto<T, E>(
    items: impl IntoIterator<Item = Result<T, E>>,
    max_bytes: usize,
    size: impl Fn(&T) -> usize,
) -> Result<Vec<T>, E> {
    let mut out = Vec::new();
    let mut used = 0usize;
    for item in items {
        if used > max_bytes {
            break;
        }
        let item = item?;
        used = used.saturating_add(size(&item));
        out.push(item);
    }
    Ok(out)
}

/// An ordered key-value store with trees, ranges, and a batch of writes made durable by a flush.
/// Methods take `&self`: implementations share their state between clones (the service reads
/// through one clone while the engine applies writes through another, on the same thread).
pub trait Storage: Clone + Send + 'static {
    /// The value of `key`, if any.
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Entries with `from <= key` and (when `to` is given) `key < to`, in key order.
    fn range(&self, tree: Tree, from: &[u8], to: Option<&[u8]>) -> Result<Entries, StoreError>;
    /// [`Storage::range`], stopping after the first entry that takes the total size of the
    /// values read past `max_bytes` (so at least one entry when there is one). This default
    /// reads the whole range first; an implementation that can stop early should.
    fn range_upto(
        &self,
        tree: Tree,
        from: &[u8],
        to: Option<&[u8]>,
        max_bytes: usize,
    ) -> Result<Entries, StoreError> {
        let entries = self.range(tree, from, to)?;
        take_upto(entries.into_iter().map(Ok), max_bytes, |(_, v)| v.len())
    }
    /// Applies writes in order. Reads see them at once; they are durable after
    /// [`Storage::flush`]. A crash before the flush keeps all or none of each tree's writes of
    /// one call (sled: of the writes since the last read or flush, and across trees when they
    /// are few; see `SledStorage`). An implementation may
    /// report a failure here or at the next read or flush; the flush reports it in any case.
    fn apply(&self, writes: Vec<Write>) -> Result<(), StoreError>;
    /// Makes every write so far durable; returns only after the data is on disk. Fails if
    /// any write since the last flush failed.
    fn flush(&self) -> Result<(), StoreError>;
    /// Removes a tree that is not one of [`Tree::ALL`] (one a former schema version kept), with
    /// everything in it; nothing happens if there is none. Durable after the next flush.
    fn remove_former_tree(&self, name: &str) -> Result<(), StoreError>;
}

/// What the node remembers about a space it joined.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SpaceRecord {
    /// The name given at creation (known to the creator, and to joiners who were told it).
    pub name: Option<String>,
    /// When this node joined (ms since the Unix epoch).
    pub joined_at: i64,
    /// A private space (its membership operations are in the `ops` tree); `false` for an open
    /// space of wire version 1 (and for every record written before schema version 3).
    #[serde(default)]
    pub private: bool,
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

const SCHEMA_KEY: &[u8] = b"schema_version";
const NAME_KEY: &[u8] = b"display_name";

impl Write {
    fn put(tree: Tree, key: &[u8], value: Vec<u8>) -> Write {
        Write {
            tree,
            key: key.to_vec(),
            value: Some(value),
        }
    }

    /// Records the author's display name.
    pub fn display_name(name: &str) -> Write {
        Write::put(Tree::Meta, NAME_KEY, name.as_bytes().to_vec())
    }

    /// Records a joined space.
    pub fn space(space: &SpaceId, record: &SpaceRecord) -> Write {
        let bytes = serde_json::to_vec(record).expect("a SpaceRecord always serialises");
        Write::put(Tree::Spaces, &space.0, bytes)
    }

    /// Stores a membership operation of a private space (idempotent: keyed by its id).
    pub fn op(space: &SpaceId, id: &[u8; 32], bytes: Vec<u8>) -> Write {
        let mut key = [0u8; 48];
        key[..16].copy_from_slice(&space.0);
        key[16..].copy_from_slice(id);
        Write::put(Tree::Ops, &key, bytes)
    }

    /// Records that a document exists (idempotent).
    pub fn doc(space: &SpaceId, doc: &DocId, kind: DocKind) -> Write {
        Write::put(Tree::Docs, &doc_key(space, doc), vec![kind.code()])
    }

    /// Appends a document's contribution number `seq`.
    pub fn contribution(space: &SpaceId, doc: &DocId, seq: u64, bytes: Vec<u8>) -> Write {
        Write::put(
            Tree::Contributions,
            &contribution_key(space, doc, seq),
            bytes,
        )
    }

    /// Saves a snapshot of a document that covers its contributions up to `upto_seq`.
    pub fn snapshot(space: &SpaceId, doc: &DocId, upto_seq: u64, saved: &[u8]) -> Write {
        let mut v = Vec::with_capacity(8 + saved.len());
        v.extend_from_slice(&upto_seq.to_be_bytes());
        v.extend_from_slice(saved);
        Write::put(Tree::Snapshots, &doc_key(space, doc), v)
    }
}

fn seq_of(bytes: &[u8], tree: &'static str) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt {
            tree,
            detail: "seq is not 8 bytes".into(),
        })
}

/// The node's schema over a [`Storage`]: typed reads. Cheap to clone.
#[derive(Clone)]
pub struct Store<S> {
    storage: S,
}

impl<S: Storage> Store<S> {
    /// Wraps a storage: records the schema version in a fresh store, refuses a newer one.
    pub fn new(storage: S) -> Result<Store<S>, StoreError> {
        let record_version = |storage: &S| {
            storage.apply(vec![Write::put(
                Tree::Meta,
                SCHEMA_KEY,
                SCHEMA_VERSION.to_be_bytes().to_vec(),
            )])?;
            storage.flush()
        };
        match storage.get(Tree::Meta, SCHEMA_KEY)? {
            None => record_version(&storage)?,
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_slice())
                    .map(u32::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt {
                        tree: "meta",
                        detail: "schema_version is not 4 bytes".into(),
                    })?;
                if found > SCHEMA_VERSION {
                    return Err(StoreError::NewerSchema { found });
                }
                if found < SCHEMA_VERSION {
                    // 1 -> 2: the `hashes` tree is no longer kept. Removing it is idempotent, so
                    // a crash before the new version is recorded only repeats this step.
                    // 2 -> 3: the `ops` tree is new (sled makes it when opened) and space
                    // records gained `private` (absent means an open space): nothing to rewrite.
                    for name in FORMER_TREES {
                        storage.remove_former_tree(name)?;
                    }
                    storage.flush()?;
                    record_version(&storage)?;
                }
            }
        }
        Ok(Store { storage })
    }

    /// Every stored membership operation of a private space, in id order.
    pub fn ops(&self, space: &SpaceId) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut end = [0xffu8; 49];
        end[..16].copy_from_slice(&space.0);
        Ok(self
            .storage
            .range(Tree::Ops, &space.0, Some(&end))?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// The storage underneath (the engine applies writes and flushes through it).
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// Applies writes (durable after [`Store::flush`]).
    pub fn apply(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        self.storage.apply(writes)
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.storage.flush()
    }

    /// The display name this node's author chose, if any.
    pub fn display_name(&self) -> Result<Option<String>, StoreError> {
        let v = self.storage.get(Tree::Meta, NAME_KEY)?;
        Ok(v.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Every joined space.
    pub fn spaces(&self) -> Result<Vec<(SpaceId, SpaceRecord)>, StoreError> {
        let mut out = Vec::new();
        for (k, v) in self.storage.range(Tree::Spaces, &[], None)? {
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

    /// A document's contribution number `seq`, if it is stored.
    pub fn contribution(
        &self,
        space: &SpaceId,
        doc: &DocId,
        seq: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.storage
            .get(Tree::Contributions, &contribution_key(space, doc, seq))
    }

    /// The contributions of one document after `after_seq`, in seq order.
    pub fn contributions_of(
        &self,
        space: &SpaceId,
        doc: &DocId,
        after_seq: u64,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.contributions_in(space, doc, after_seq, usize::MAX)
    }

    /// The first contributions of one document, in seq order, up to the first that takes their
    /// total size past `max_bytes`.
    pub fn contributions_upto(
        &self,
        space: &SpaceId,
        doc: &DocId,
        max_bytes: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        Ok(self
            .contributions_in(space, doc, 0, max_bytes)?
            .into_iter()
            .map(|(_, bytes)| bytes)
            .collect())
    }

    fn contributions_in(
        &self,
        space: &SpaceId,
        doc: &DocId,
        after_seq: u64,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let Some(first) = after_seq.checked_add(1) else {
            return Ok(Vec::new());
        };
        let start = contribution_key(space, doc, first);
        // Exclusive upper bound: seq u64::MAX is never reached.
        let end = contribution_key(space, doc, u64::MAX);
        let entries =
            self.storage
                .range_upto(Tree::Contributions, &start, Some(&end), max_bytes)?;
        let mut out = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            if k.len() != 40 {
                return Err(StoreError::Corrupt {
                    tree: "contributions",
                    detail: "short key".into(),
                });
            }
            out.push((seq_of(&k[32..40], "contributions")?, v));
        }
        Ok(out)
    }

    /// Every document with its latest snapshot and the contributions after it.
    pub fn load_docs(&self) -> Result<Vec<StoredDoc>, StoreError> {
        let mut out = Vec::new();
        for (k, v) in self.storage.range(Tree::Docs, &[], None)? {
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
            let snapshot = match self.storage.get(Tree::Snapshots, &k)? {
                Some(s) if s.len() >= 8 => {
                    let upto = seq_of(&s[..8], "snapshots")?;
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

    /// Whether any stored contribution has exactly these bytes (used by tests to prove that
    /// rejected input was not stored; a full scan).
    pub fn contains_bytes(&self, bytes: &[u8]) -> Result<bool, StoreError> {
        Ok(self
            .storage
            .range(Tree::Contributions, &[], None)?
            .iter()
            .any(|(_, v)| v == bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(storage: impl Storage) {
        let (s, d) = (SpaceId([1; 16]), DocId([2; 16]));
        let last = DocId([0xff; 16]);
        {
            let store = Store::new(storage.clone()).unwrap();
            let mut writes = vec![
                Write::doc(&s, &d, DocKind::Idea),
                Write::doc(&s, &last, DocKind::Idea),
            ];
            for i in 1..=5u64 {
                writes.push(Write::contribution(&s, &d, i, vec![i as u8; 3]));
                writes.push(Write::contribution(&s, &last, i, vec![9; 2]));
            }
            // A neighbour document's contributions must not leak into `d`'s range.
            writes.push(Write::contribution(&s, &DocId([3; 16]), 1, vec![7]));
            writes.push(Write::snapshot(&s, &d, 3, b"snap"));
            store.apply(writes).unwrap();
            store.flush().unwrap();
        }
        let store = Store::new(storage).unwrap();
        let docs = store.load_docs().unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].snapshot, Some((3, b"snap".to_vec())));
        let seqs: Vec<u64> = docs[0].tail.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![4, 5]);
        assert_eq!(docs[1].tail.len(), 5);
        assert_eq!(store.contribution(&s, &d, 4).unwrap(), Some(vec![4; 3]));
        assert_eq!(store.contribution(&s, &d, 6).unwrap(), None);
        // A bounded read stops after the first contribution that takes the total past the
        // budget (3 bytes each here), and stays inside the document.
        let upto = |max| store.contributions_upto(&s, &d, max).unwrap();
        assert_eq!(upto(0), vec![vec![1; 3]]);
        assert_eq!(upto(3), vec![vec![1; 3], vec![2; 3]]);
        assert_eq!(upto(4), vec![vec![1; 3], vec![2; 3]]);
        assert_eq!(upto(usize::MAX).len(), 5);
        assert!(store.contains_bytes(&[7]).unwrap());
        assert!(!store.contains_bytes(&[8]).unwrap());
    }

    /// Opens the sled store in `dir` again. sled's background flusher may hold the directory's
    /// lock a moment after the last handle is dropped: retry while it is locked, for at most
    /// 10 s.
    fn reopen_sled(dir: &std::path::Path) -> SledStorage {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match SledStorage::open(dir, 1 << 20) {
                Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other.unwrap(),
            }
        }
    }

    #[test]
    fn contributions_survive_reopen_and_snapshot_cuts_tail_on_sled() {
        let dir = tempfile::tempdir().unwrap();
        let storage = SledStorage::open(dir.path(), 1 << 20).unwrap();
        round_trip(storage);
    }

    /// sled queues writes until the next read or flush: every clone reads them at once, a
    /// removal after an insert in the same queue wins, a large queue goes in as well as a small
    /// one, and a flush makes them durable.
    #[test]
    fn sled_reads_see_queued_writes_and_a_flush_makes_them_durable() {
        let dir = tempfile::tempdir().unwrap();
        {
            let engine = SledStorage::open(dir.path(), 1 << 20).unwrap();
            let reader = engine.clone();
            engine
                .apply(vec![
                    Write::put(Tree::Meta, b"gone", b"1".to_vec()),
                    Write::put(Tree::Spaces, b"s", b"2".to_vec()),
                ])
                .unwrap();
            assert_eq!(
                reader.get(Tree::Meta, b"gone").unwrap(),
                Some(b"1".to_vec())
            );
            assert_eq!(reader.range(Tree::Spaces, b"", None).unwrap().len(), 1);
            engine
                .apply(vec![Write::put(Tree::Meta, b"kept", b"3".to_vec())])
                .unwrap();
            engine
                .apply(vec![Write {
                    tree: Tree::Meta,
                    key: b"gone".to_vec(),
                    value: None,
                }])
                .unwrap();
            // More than one transaction takes: applied as one batch per tree.
            let many: Vec<Write> = (0..600u32)
                .map(|i| Write::put(Tree::Docs, &i.to_be_bytes(), vec![1]))
                .collect();
            engine.apply(many).unwrap();
            assert_eq!(reader.range(Tree::Docs, b"", None).unwrap().len(), 600);
            engine.flush().unwrap();
        }
        let reopened = reopen_sled(dir.path());
        assert_eq!(reopened.range(Tree::Docs, b"", None).unwrap().len(), 600);
        assert_eq!(reopened.get(Tree::Meta, b"gone").unwrap(), None);
        assert_eq!(
            reopened.get(Tree::Meta, b"kept").unwrap(),
            Some(b"3".to_vec())
        );
        assert_eq!(
            reopened.get(Tree::Spaces, b"s").unwrap(),
            Some(b"2".to_vec())
        );
    }

    #[test]
    fn contributions_survive_reopen_and_snapshot_cuts_tail_in_memory() {
        round_trip(MemoryStorage::new());
    }

    #[test]
    fn membership_operations_are_kept_per_space_in_id_order() {
        let store = Store::new(MemoryStorage::new()).unwrap();
        let (a, b) = (SpaceId([1; 16]), SpaceId([2; 16]));
        store
            .apply(vec![
                Write::op(&a, &[9; 32], b"a9".to_vec()),
                Write::op(&b, &[0; 32], b"b0".to_vec()),
                Write::op(&a, &[3; 32], b"a3".to_vec()),
                Write::op(&a, &[3; 32], b"a3".to_vec()),
                Write::op(&a, &[0xff; 32], b"aff".to_vec()),
            ])
            .unwrap();
        assert_eq!(
            store.ops(&a).unwrap(),
            vec![b"a3".to_vec(), b"a9".to_vec(), b"aff".to_vec()]
        );
        assert_eq!(store.ops(&b).unwrap(), vec![b"b0".to_vec()]);
        assert!(store.ops(&SpaceId([3; 16])).unwrap().is_empty());
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let m = MemoryStorage::new();
        m.apply(vec![Write::put(
            Tree::Meta,
            SCHEMA_KEY,
            9u32.to_be_bytes().to_vec(),
        )])
        .unwrap();
        assert!(matches!(
            Store::new(m),
            Err(StoreError::NewerSchema { found: 9 })
        ));
    }

    /// A version 1 store (as a former build wrote it, with its `hashes` tree) opens: the tree
    /// is removed, the version becomes the current one, and everything else is kept, across a
    /// reopen.
    #[test]
    fn a_version_1_store_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let (s, d) = (SpaceId([1; 16]), DocId([2; 16]));
        {
            let db = ::sled::open(dir.path()).unwrap();
            let meta = db.open_tree("meta").unwrap();
            meta.insert(SCHEMA_KEY, &1u32.to_be_bytes()).unwrap();
            let hashes = db.open_tree("hashes").unwrap();
            hashes.insert([7u8; 64], &1u64.to_be_bytes()).unwrap();
            let contributions = db.open_tree("contributions").unwrap();
            contributions
                .insert(contribution_key(&s, &d, 1), b"one".as_slice())
                .unwrap();
            db.flush().unwrap();
        }
        let store = Store::new(reopen_sled(dir.path())).unwrap();
        assert_eq!(
            store.contribution(&s, &d, 1).unwrap(),
            Some(b"one".to_vec())
        );
        drop(store);
        let storage = reopen_sled(dir.path());
        assert_eq!(
            storage.get(Tree::Meta, SCHEMA_KEY).unwrap(),
            Some(SCHEMA_VERSION.to_be_bytes().to_vec())
        );
        let names = storage.tree_names();
        assert!(names.iter().all(|n| n.as_slice() != b"hashes"), "{names:?}");
        // Opening a migrated store again changes nothing.
        let store = Store::new(storage).unwrap();
        assert_eq!(
            store.contribution(&s, &d, 1).unwrap(),
            Some(b"one".to_vec())
        );
    }
}
