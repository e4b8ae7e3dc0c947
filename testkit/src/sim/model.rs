//! The model replica: what a node holds, as a contribution DAG of hashes and dependencies, with
//! no Automerge content.
//!
//! A thousand full replicas of ten thousand Automerge documents do not fit in memory, so large
//! simulations run the node's own service (ingest, pending set, sync scheduler, exchanges,
//! responder) on this replica instead of [`AutomergeReplica`](agora_node::service::AutomergeReplica).
//! Every contribution ever made lives once in a shared [`World`]; a node holds indices into it.
//! A contribution is signed with its author's real ed25519 key when it is made, and that
//! signature is checked once, then; receivers look it up instead of verifying it again. On the
//! wire a model contribution is its 4-byte index padded with zeros to the size the real one would
//! have, so that byte counts and the sync byte budgets behave as they do for real.

use agora_node::service::{Edit, Item, Replica, ServiceError};
use agora_node::store::{StoreError, Write};
use agora_protocol::automerge::ChangeHash;
use agora_protocol::idea::Idea;
use agora_protocol::{AuthorId, DocId, DocKind, Identity, Rejection, SpaceId};
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasherDefault;
use std::rc::Rc;
use std::sync::Arc;

use super::gossip::IdHasher;

/// One contribution of the model.
#[derive(Debug)]
pub struct ModelChange {
    /// Its space.
    pub space: SpaceId,
    /// Its document.
    pub doc: DocId,
    /// Its document's kind.
    pub kind: DocKind,
    /// Its hash.
    pub hash: ChangeHash,
    /// The hashes it depends on (the document's heads when it was made).
    pub deps: Vec<ChangeHash>,
    /// Its author.
    pub author: AuthorId,
    /// The size of the real contribution it stands for, in bytes.
    pub size: u32,
}

/// Every contribution made in a simulation.
#[derive(Default)]
pub struct World {
    changes: Vec<Arc<ModelChange>>,
    by_hash: HashMap<ChangeHash, u32, BuildHasherDefault<IdHasher>>,
    /// Every document, numbered in the order it was created (nodes keep their documents in a
    /// vector by this number: a thousand nodes' maps of ten thousand documents are slow).
    docs: HashMap<DocId, u32, BuildHasherDefault<IdHasher>>,
    /// The same, in id order (the order digests and `Heads` answers list documents in).
    sorted: BTreeMap<DocId, u32>,
}

impl World {
    /// Contributions made so far.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// Whether none was made.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The wire form of contribution `i`: its index, padded to its size.
    pub fn wire(&self, i: u32) -> Vec<u8> {
        let size = self.changes[i as usize].size as usize;
        let mut b = vec![0u8; size.max(4)];
        b[..4].copy_from_slice(&i.to_be_bytes());
        b
    }

    fn doc_number(&mut self, doc: DocId) -> u32 {
        if let Some(n) = self.docs.get(&doc) {
            return *n;
        }
        let n = self.docs.len() as u32;
        self.docs.insert(doc, n);
        self.sorted.insert(doc, n);
        n
    }

    fn index_of(&self, bytes: &[u8]) -> Option<u32> {
        let i = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?);
        let c = self.changes.get(i as usize)?;
        (bytes.len() == (c.size as usize).max(4)).then_some(i)
    }
}

/// The shared world of a simulation (one thread).
pub type SharedWorld = Rc<RefCell<World>>;

/// A verified model contribution.
pub struct ModelItem {
    index: u32,
    change: Arc<ModelChange>,
}

impl Item for ModelItem {
    fn space(&self) -> SpaceId {
        self.change.space
    }
    fn doc(&self) -> DocId {
        self.change.doc
    }
    fn author(&self) -> AuthorId {
        self.change.author
    }
    fn kind(&self) -> DocKind {
        self.change.kind
    }
    fn hash(&self) -> ChangeHash {
        self.change.hash
    }
    fn deps(&self) -> &[ChangeHash] {
        &self.change.deps
    }
    fn size(&self) -> usize {
        self.change.size as usize
    }
}

/// A document's heads, sorted; one head (the usual case) kept inline, so that walking a node's
/// documents (digests, `Heads` answers) reads one array instead of chasing a pointer each.
#[derive(Clone, Default)]
enum Heads {
    #[default]
    None,
    One(ChangeHash),
    Many(Vec<ChangeHash>),
}

impl Heads {
    fn as_slice(&self) -> &[ChangeHash] {
        match self {
            Heads::None => &[],
            Heads::One(h) => std::slice::from_ref(h),
            Heads::Many(v) => v,
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, Heads::None)
    }

    /// The heads after applying a change with these dependencies.
    fn advance(&mut self, hash: ChangeHash, deps: &[ChangeHash]) {
        let mut v: Vec<ChangeHash> = self
            .as_slice()
            .iter()
            .filter(|h| !deps.contains(h))
            .copied()
            .collect();
        let at = v.partition_point(|h| *h < hash);
        v.insert(at, hash);
        *self = match v.len() {
            1 => Heads::One(v[0]),
            _ => Heads::Many(v),
        };
    }
}

#[derive(Default, Clone)]
struct ModelDoc {
    kind: Option<DocKind>,
    /// Held contributions, in the order applied (dependencies first).
    held: Vec<u32>,
    heads: Heads,
}

/// The model replica of one node.
pub struct ModelReplica {
    world: SharedWorld,
    identity: Identity,
    author: AuthorId,
    /// Per space, the documents by their number in the world (`kind` is `None` where the node
    /// holds nothing).
    spaces: BTreeMap<SpaceId, Vec<ModelDoc>>,
    idea_space: HashMap<DocId, SpaceId>,
    contributions: u64,
    made: u64,
}

/// The size of a real contribution making this edit (measured on real ones: an envelope of
/// about 200 bytes around the Automerge change).
fn edit_size(edit: &Edit) -> u32 {
    let text = match edit {
        Edit::CreateIdea { draft, .. } => {
            380 + draft.title.len()
                + draft.body.len()
                + draft.tags.iter().map(String::len).sum::<usize>()
        }
        Edit::Comment { text } => 330 + text.len(),
        Edit::Vote { .. } => 300,
        Edit::Status { .. } => 280,
        Edit::DisplayName { name } => 260 + name.len(),
    };
    text.min(60 * 1024) as u32
}

impl ModelReplica {
    /// A replica for `identity` in `world`.
    pub fn new(world: SharedWorld, identity: Identity) -> ModelReplica {
        ModelReplica {
            world,
            author: identity.author(),
            identity,
            spaces: BTreeMap::new(),
            idea_space: HashMap::new(),
            contributions: 0,
            made: 0,
        }
    }

    fn doc(&self, space: &SpaceId, doc: &DocId) -> Option<&ModelDoc> {
        let n = *self.world.borrow().docs.get(doc)?;
        self.spaces
            .get(space)?
            .get(n as usize)
            .filter(|d| d.kind.is_some())
    }

    fn doc_mut(&mut self, space: &SpaceId, n: u32) -> Option<&mut ModelDoc> {
        let docs = self.spaces.get_mut(space)?;
        if docs.len() <= n as usize {
            docs.resize_with(n as usize + 1, ModelDoc::default);
        }
        docs.get_mut(n as usize)
    }

    fn holds_in(&self, d: &ModelDoc, hash: &ChangeHash) -> bool {
        let world = self.world.borrow();
        world.by_hash.get(hash).is_some_and(|i| d.held.contains(i))
    }

    fn apply_one(d: &mut ModelDoc, index: u32, change: &ModelChange) {
        d.held.push(index);
        d.heads.advance(change.hash, &change.deps);
    }
}

impl Replica for ModelReplica {
    type Decoded = (u32, Arc<ModelChange>);
    type Item = ModelItem;

    fn author(&self) -> AuthorId {
        self.author
    }

    fn add_space(&mut self, space: SpaceId) {
        self.spaces.entry(space).or_default();
    }

    fn decode(&self, bytes: Vec<u8>) -> Result<Self::Decoded, Rejection> {
        let world = self.world.borrow();
        let i = world
            .index_of(&bytes)
            .ok_or_else(|| Rejection::Malformed("not a model contribution".into()))?;
        Ok((i, world.changes[i as usize].clone()))
    }

    fn place_of(decoded: &Self::Decoded) -> (SpaceId, DocId) {
        (decoded.1.space, decoded.1.doc)
    }

    fn verify(batch: Vec<Self::Decoded>) -> Vec<Result<ModelItem, Rejection>> {
        // Each signature was checked once, when the contribution was made.
        batch
            .into_iter()
            .map(|(index, change)| Ok(ModelItem { index, change }))
            .collect()
    }

    fn preview(&self, bytes: &[u8]) -> Option<(DocId, ChangeHash, Vec<ChangeHash>)> {
        let world = self.world.borrow();
        let c = &world.changes[world.index_of(bytes)? as usize];
        Some((c.doc, c.hash, c.deps.clone()))
    }

    fn apply(
        &mut self,
        space: SpaceId,
        doc: DocId,
        kind: DocKind,
        items: Vec<ModelItem>,
        _writes: &mut Vec<Write>,
    ) -> Vec<Result<(), Rejection>> {
        let n = self.world.borrow_mut().doc_number(doc);
        let Some(d) = self.doc_mut(&space, n) else {
            return items.iter().map(|_| Err(Rejection::UnknownSpace)).collect();
        };
        let new = d.kind.is_none();
        d.kind.get_or_insert(kind);
        for it in &items {
            Self::apply_one(d, it.index, &it.change);
        }
        self.contributions += items.len() as u64;
        if new && kind == DocKind::Idea {
            self.idea_space.insert(doc, space);
        }
        items.iter().map(|_| Ok(())).collect()
    }

    fn edit(
        &mut self,
        space: SpaceId,
        doc: DocId,
        kind: DocKind,
        edit: &Edit,
        _now_ms: i64,
        _nonce: [u8; 24],
        _writes: &mut Vec<Write>,
    ) -> Result<Option<Vec<u8>>, ServiceError> {
        if !self.spaces.contains_key(&space) {
            return Err(ServiceError::UnknownSpace(space));
        }
        let heads = self
            .doc(&space, &doc)
            .map(|d| d.heads.as_slice().to_vec())
            .unwrap_or_default();
        self.made += 1;
        let hash = ChangeHash(
            Sha256::new()
                .chain_update(b"agora-sim-model-change")
                .chain_update(self.author.0)
                .chain_update(doc.0)
                .chain_update(self.made.to_be_bytes())
                .finalize()
                .into(),
        );
        // Signed by the author's real key and checked once, now.
        let signature = self.identity.sign(&hash.0);
        let key = VerifyingKey::from_bytes(&self.author.0).expect("our own key is valid");
        key.verify(&hash.0, &Signature::from_bytes(&signature))
            .expect("our own signature verifies");
        let mut world = self.world.borrow_mut();
        let deps = heads;
        let change = Arc::new(ModelChange {
            space,
            doc,
            kind,
            hash,
            deps,
            author: self.author,
            size: edit_size(edit),
        });
        let index = world.changes.len() as u32;
        world.changes.push(change.clone());
        world.by_hash.insert(hash, index);
        let n = world.doc_number(doc);
        let wire = world.wire(index);
        drop(world);
        let d = self.doc_mut(&space, n).expect("checked above");
        d.kind.get_or_insert(kind);
        Self::apply_one(d, index, &change);
        self.contributions += 1;
        if kind == DocKind::Idea {
            self.idea_space.insert(doc, space);
        }
        Ok(Some(wire))
    }

    fn revert(&mut self, _docs: &[(SpaceId, DocId)]) -> Result<(), StoreError> {
        // The model writes nothing, and the simulation's flushes do not fail.
        Ok(())
    }

    fn checkpoint(&mut self, _writes: &mut Vec<Write>) {}

    fn doc_kind(&self, space: &SpaceId, doc: &DocId) -> Option<DocKind> {
        self.doc(space, doc).and_then(|d| d.kind)
    }

    fn docs(&self, space: &SpaceId) -> Vec<DocId> {
        let world = self.world.borrow();
        let Some(docs) = self.spaces.get(space) else {
            return Vec::new();
        };
        world
            .sorted
            .iter()
            .filter(|(_, n)| docs.get(**n as usize).is_some_and(|d| d.kind.is_some()))
            .map(|(doc, _)| *doc)
            .collect()
    }

    fn heads(&mut self, space: &SpaceId, doc: &DocId) -> Vec<ChangeHash> {
        self.doc(space, doc)
            .map(|d| d.heads.as_slice().to_vec())
            .unwrap_or_default()
    }

    fn visit_heads(&mut self, space: &SpaceId, f: &mut dyn FnMut(&DocId, &[ChangeHash])) {
        let world = self.world.borrow();
        let Some(docs) = self.spaces.get(space) else {
            return;
        };
        for (doc, n) in &world.sorted {
            if let Some(d) = docs.get(*n as usize).filter(|d| !d.heads.is_empty()) {
                f(doc, d.heads.as_slice());
            }
        }
    }

    fn holds(&mut self, space: &SpaceId, doc: &DocId, hash: &ChangeHash) -> bool {
        self.doc(space, doc).is_some_and(|d| self.holds_in(d, hash))
    }

    fn missing(&mut self, space: &SpaceId, doc: &DocId, hashes: &[ChangeHash]) -> Vec<ChangeHash> {
        match self.doc(space, doc) {
            // A held change's ancestors are all held (changes are applied dependencies first).
            Some(d) => hashes
                .iter()
                .filter(|h| !self.holds_in(d, h))
                .copied()
                .collect(),
            None => hashes.to_vec(),
        }
    }

    fn changes_after(
        &mut self,
        space: &SpaceId,
        doc: &DocId,
        have: &[ChangeHash],
    ) -> Vec<ChangeHash> {
        let world = self.world.borrow();
        let Some(d) = self.doc(space, doc) else {
            return Vec::new();
        };
        // Everything `have` covers: the given changes and their ancestors.
        let mut covered: Vec<u32> = Vec::new();
        let mut stack: Vec<u32> = have
            .iter()
            .filter_map(|h| world.by_hash.get(h).copied())
            .collect();
        while let Some(i) = stack.pop() {
            if covered.contains(&i) {
                continue;
            }
            covered.push(i);
            for dep in &world.changes[i as usize].deps {
                if let Some(j) = world.by_hash.get(dep) {
                    stack.push(*j);
                }
            }
        }
        d.held
            .iter()
            .filter(|i| !covered.contains(i))
            .map(|i| world.changes[*i as usize].hash)
            .collect()
    }

    fn stored(
        &mut self,
        space: &SpaceId,
        doc: &DocId,
        hash: &ChangeHash,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let world = self.world.borrow();
        let Some(i) = world.by_hash.get(hash).copied() else {
            return Ok(None);
        };
        let held = self.doc(space, doc).is_some_and(|d| d.held.contains(&i));
        Ok(held.then(|| world.wire(i)))
    }

    fn contributions(&self) -> u64 {
        self.contributions
    }

    fn contains_bytes(&self, bytes: &[u8]) -> bool {
        let world = self.world.borrow();
        world.index_of(bytes).is_some_and(|i| {
            let c = &world.changes[i as usize];
            self.doc(&c.space, &c.doc)
                .is_some_and(|d| d.held.contains(&i))
        })
    }

    fn idea_space(&self, idea: &DocId) -> Option<SpaceId> {
        self.idea_space.get(idea).copied()
    }

    fn idea_count(&self, space: &SpaceId) -> usize {
        self.spaces.get(space).map_or(0, |docs| {
            docs.iter()
                .filter(|d| d.kind == Some(DocKind::Idea))
                .count()
        })
    }

    fn idea(&self, _space: &SpaceId, _idea: &DocId) -> Option<Idea> {
        // The model holds no content.
        None
    }

    fn ideas(&self, _space: &SpaceId) -> Vec<Idea> {
        Vec::new()
    }

    fn display_names(&self, _space: &SpaceId) -> BTreeMap<AuthorId, String> {
        BTreeMap::new()
    }
}
