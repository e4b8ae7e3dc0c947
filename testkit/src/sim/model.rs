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
use std::rc::Rc;

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
    /// The size of the real contribution it stands for, in bytes.
    pub size: u32,
}

/// Every contribution made in a simulation.
#[derive(Default)]
pub struct World {
    changes: Vec<Rc<ModelChange>>,
    by_hash: HashMap<ChangeHash, u32>,
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
    change: Rc<ModelChange>,
}

impl Item for ModelItem {
    fn space(&self) -> SpaceId {
        self.change.space
    }
    fn doc(&self) -> DocId {
        self.change.doc
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

#[derive(Default, Clone)]
struct ModelDoc {
    kind: Option<DocKind>,
    /// Held contributions, in the order applied (dependencies first).
    held: Vec<u32>,
    heads: Vec<u32>,
}

/// The model replica of one node.
pub struct ModelReplica {
    world: SharedWorld,
    identity: Identity,
    author: AuthorId,
    spaces: BTreeMap<SpaceId, BTreeMap<DocId, ModelDoc>>,
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
        self.spaces.get(space)?.get(doc)
    }

    fn holds(&self, d: &ModelDoc, hash: &ChangeHash) -> bool {
        let world = self.world.borrow();
        world.by_hash.get(hash).is_some_and(|i| d.held.contains(i))
    }

    fn apply_one(d: &mut ModelDoc, index: u32, change: &ModelChange, world: &World) {
        d.held.push(index);
        let deps: Vec<u32> = change
            .deps
            .iter()
            .filter_map(|h| world.by_hash.get(h).copied())
            .collect();
        d.heads.retain(|h| !deps.contains(h));
        d.heads.push(index);
    }
}

impl Replica for ModelReplica {
    type Decoded = (u32, Rc<ModelChange>);
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

    fn space_of(decoded: &Self::Decoded) -> SpaceId {
        decoded.1.space
    }

    fn verify(&mut self, batch: Vec<Self::Decoded>) -> Vec<Result<ModelItem, Rejection>> {
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
        let world = self.world.borrow();
        let Some(docs) = self.spaces.get_mut(&space) else {
            return items.iter().map(|_| Err(Rejection::UnknownSpace)).collect();
        };
        let d = docs.entry(doc).or_default();
        d.kind.get_or_insert(kind);
        for it in &items {
            Self::apply_one(d, it.index, &it.change, &world);
        }
        self.contributions += items.len() as u64;
        if kind == DocKind::Idea {
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
        _writes: &mut Vec<Write>,
    ) -> Result<Option<Vec<u8>>, ServiceError> {
        let docs = self
            .spaces
            .get(&space)
            .ok_or(ServiceError::UnknownSpace(space))?;
        let heads = docs.get(&doc).map(|d| d.heads.clone()).unwrap_or_default();
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
        let deps = heads
            .iter()
            .map(|i| world.changes[*i as usize].hash)
            .collect();
        let change = Rc::new(ModelChange {
            space,
            doc,
            kind,
            hash,
            deps,
            size: edit_size(edit),
        });
        let index = world.changes.len() as u32;
        world.changes.push(change.clone());
        world.by_hash.insert(hash, index);
        let d = self
            .spaces
            .get_mut(&space)
            .expect("checked above")
            .entry(doc)
            .or_default();
        d.kind.get_or_insert(kind);
        Self::apply_one(d, index, &change, &world);
        self.contributions += 1;
        if kind == DocKind::Idea {
            self.idea_space.insert(doc, space);
        }
        Ok(Some(world.wire(index)))
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
        self.spaces
            .get(space)
            .map(|d| d.keys().copied().collect())
            .unwrap_or_default()
    }

    fn heads(&mut self, space: &SpaceId, doc: &DocId) -> Vec<ChangeHash> {
        let world = self.world.borrow();
        let mut h: Vec<ChangeHash> = self
            .doc(space, doc)
            .map(|d| {
                d.heads
                    .iter()
                    .map(|i| world.changes[*i as usize].hash)
                    .collect()
            })
            .unwrap_or_default();
        h.sort();
        h
    }

    fn missing(&mut self, space: &SpaceId, doc: &DocId, hashes: &[ChangeHash]) -> Vec<ChangeHash> {
        match self.doc(space, doc) {
            // A held change's ancestors are all held (changes are applied dependencies first).
            Some(d) => hashes
                .iter()
                .filter(|h| !self.holds(d, h))
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
        &self,
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
            docs.values()
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
