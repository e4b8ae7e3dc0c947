//! The engine: the single owner of the store and of every document in memory.
//!
//! It runs on one dedicated thread ([`spawn`]) fed by a bounded channel. Local edits arrive as
//! closures that run against [`Engine`] and answer through a oneshot; gossip arrives as
//! [`Command::Gossip`] and is drained into batches so that a burst of N contributions costs one
//! batch signature check, one Automerge apply per document and one disk flush.
//!
//! **Architecture Invariant:** nothing reaches a document or the store unless
//! [`agora_protocol::contribution::verify_batch`] accepted it, and no write is acknowledged
//! before [`Store::flush`] returned.

use crate::store::{SpaceRecord, Store, StoreError};
use agora_protocol::automerge::{AutoCommit, Change, ChangeHash};
use agora_protocol::contribution::verify_batch;
use agora_protocol::idea::{self, Idea, IdeaDraft, Status, Vote};
use agora_protocol::sync::{self, DocHeads, SyncRequest, SyncResponse};
use agora_protocol::{AuthorId, Contribution, DocId, DocKind, Identity, Rejection, SpaceId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Most gossip messages ingested in one batch.
pub const MAX_BATCH: usize = 4096;
/// Most early contributions (missing dependencies) held in memory across all documents.
pub const MAX_PENDING: usize = 10_000;
/// Most change bytes of early contributions held in memory across all documents.
pub const MAX_PENDING_BYTES: usize = 32 * 1024 * 1024;
/// A document gets a fresh snapshot once this many contributions were added since the last one.
pub const SNAPSHOT_EVERY: u64 = 256;

/// Errors a caller of the engine can see.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The store failed; the write was not acknowledged.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The input broke a schema rule.
    #[error(transparent)]
    Schema(#[from] idea::SchemaError),
    /// No such space on this node.
    #[error("space {0} is not joined on this node: join it first with `agora space join {0}`")]
    UnknownSpace(SpaceId),
    /// No such idea on this node.
    #[error("no idea {0} on this node: check the id with `agora idea list --space SPACE_ID`")]
    UnknownIdea(DocId),
    /// The engine thread is gone (the node is shutting down).
    #[error("the node is shutting down")]
    Stopped,
}

/// What happened to one incoming contribution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Verified, applied and durably stored.
    Accepted,
    /// Already held; nothing to do.
    Duplicate,
    /// Verified but its dependencies are missing; held in memory until they arrive.
    Pending,
    /// Refused.
    Rejected(Rejection),
}

/// A live event for API subscribers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NodeEvent {
    /// An idea was created or changed (locally or by a peer).
    IdeaChanged {
        /// Space.
        space: SpaceId,
        /// Idea.
        idea: DocId,
    },
    /// A space was created or joined.
    SpaceJoined {
        /// Space.
        space: SpaceId,
    },
    /// A contribution was refused.
    Rejected {
        /// The reason code.
        reason: String,
    },
}

/// What the engine asks the network to do. Contains no libp2p types: the network maps tokens
/// back to its own message ids.
#[derive(Debug)]
pub enum NetRequest {
    /// Publish an encoded contribution on a space's topic.
    Publish {
        /// Space.
        space: SpaceId,
        /// Canonical contribution bytes.
        bytes: Vec<u8>,
    },
    /// Start following a space's topic.
    Subscribe(SpaceId),
    /// The verdict on a gossip message (by the token the network gave it).
    Verdict {
        /// The network's token.
        token: u64,
        /// The outcome.
        outcome: Outcome,
    },
}

/// A gossip message handed over by the network.
#[derive(Debug)]
pub struct GossipIn {
    /// Opaque token to answer with.
    pub token: u64,
    /// The space whose topic it arrived on (None if the topic is not a space topic we know).
    pub topic: Option<SpaceId>,
    /// The payload.
    pub bytes: Vec<u8>,
}

/// Counters for status and tests.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counters {
    /// Contributions accepted from the network.
    pub accepted: u64,
    /// Duplicates seen.
    pub duplicates: u64,
    /// Contributions currently waiting for dependencies.
    pub pending: u64,
    /// Rejections by reason code.
    pub rejected: BTreeMap<String, u64>,
}

impl Counters {
    /// Total rejections.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

/// A verified contribution with the input slot it came from (`usize::MAX`: held from earlier).
type Slotted = (usize, Contribution, Change);
/// A contribution ready to be written: space, doc, seq, change hash, canonical bytes.
type ToStore = (SpaceId, DocId, u64, [u8; 32], Vec<u8>);

struct DocState {
    kind: DocKind,
    doc: AutoCommit,
    /// Seq of the last stored contribution.
    last_seq: u64,
    /// Seq covered by the latest snapshot.
    snapshot_seq: u64,
}

struct SpaceState {
    record: SpaceRecord,
    docs: HashMap<DocId, DocState>,
}

/// The engine's state. Owned by one thread; see the module docs.
pub struct Engine {
    store: Store,
    identity: Identity,
    author: AuthorId,
    actor_nonce: [u8; 16],
    spaces: HashMap<SpaceId, SpaceState>,
    /// Which space each idea lives in (idea ids are global).
    idea_space: HashMap<DocId, SpaceId>,
    /// Early contributions by (space, doc), in arrival order.
    pending: HashMap<(SpaceId, DocId), Vec<(Contribution, Change)>>,
    pending_len: usize,
    /// Change bytes held in `pending`.
    pending_bytes: usize,
    counters: Counters,
    net: Option<mpsc::Sender<NetRequest>>,
    events: broadcast::Sender<NodeEvent>,
}

/// A store record that does not decode or apply: the disk is corrupt.
fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        tree: "contributions",
        detail: e.to_string(),
    }
}

/// The Automerge changes of stored contributions, in order, with the document kind they name.
/// Stored contributions were verified before they were written; decoding them again only guards
/// against disk corruption.
fn changes_of(tail: &[(u64, Vec<u8>)]) -> Result<(Vec<Change>, Option<DocKind>), StoreError> {
    let mut kind = None;
    let mut changes = Vec::with_capacity(tail.len());
    for (_, bytes) in tail {
        let c = Contribution::decode(bytes).map_err(corrupt)?;
        kind = Some(c.kind);
        changes.push(Change::from_bytes(c.change).map_err(corrupt)?);
    }
    Ok((changes, kind))
}

fn new_doc(author: &AuthorId, nonce: &[u8; 16]) -> AutoCommit {
    AutoCommit::new().with_actor(idea::actor_for(author, nonce))
}

/// Which of a document's candidate changes can be applied now, and in which order (indices
/// into `hashes`). `missing[i]` lists the dependencies of change `i` that the document lacks; a
/// change is ready when each of them is another ready candidate.
///
/// The order is the one of a scan that repeats over the candidates in arrival order, taking each
/// change whose missing dependencies were all taken before it, until a pass takes nothing: by
/// pass, then by arrival. It is computed in one topological sweep instead of repeated passes
/// (which cost a pass per step of a chain delivered backwards).
fn ready_order(hashes: &[ChangeHash], missing: &[Vec<ChangeHash>]) -> Vec<usize> {
    let n = hashes.len();
    let index: HashMap<ChangeHash, usize> =
        hashes.iter().enumerate().map(|(i, h)| (*h, i)).collect();
    // pass[i]: the pass that takes change i (from 1); blocked: it waits for a change that is
    // neither held nor a candidate, directly or through another candidate.
    let mut pass = vec![1usize; n];
    let mut blocked = vec![false; n];
    let mut unresolved = vec![0usize; n];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut sweep = Vec::new();
    for (i, deps) in missing.iter().enumerate() {
        for d in deps {
            match index.get(d) {
                Some(&j) => {
                    dependents[j].push(i);
                    unresolved[i] += 1;
                }
                None => blocked[i] = true,
            }
        }
        if unresolved[i] == 0 {
            sweep.push(i);
        }
    }
    let mut done = vec![false; n];
    while let Some(j) = sweep.pop() {
        done[j] = true;
        for &i in &dependents[j] {
            // A pass takes i after j only if j comes first in arrival order; otherwise i waits for
            // the next pass.
            pass[i] = pass[i].max(if j < i { pass[j] } else { pass[j] + 1 });
            blocked[i] |= blocked[j];
            unresolved[i] -= 1;
            if unresolved[i] == 0 {
                sweep.push(i);
            }
        }
    }
    let mut order: Vec<usize> = (0..n).filter(|&i| done[i] && !blocked[i]).collect();
    order.sort_by_key(|&i| (pass[i], i));
    order
}

impl Engine {
    /// Loads every space and document from the store. `actor_nonce` must be fresh random bytes
    /// for this process start.
    pub fn open(
        store: Store,
        identity: Identity,
        actor_nonce: [u8; 16],
        events: broadcast::Sender<NodeEvent>,
    ) -> Result<Engine, EngineError> {
        let author = identity.author();
        let mut spaces: HashMap<SpaceId, SpaceState> = store
            .spaces()?
            .into_iter()
            .map(|(id, record)| {
                let docs = HashMap::new();
                (id, SpaceState { record, docs })
            })
            .collect();
        let mut idea_space = HashMap::new();
        for stored in store.load_docs()? {
            let Some(space) = spaces.get_mut(&stored.space) else {
                continue;
            };
            let mut doc = match &stored.snapshot {
                Some((_, saved)) => AutoCommit::load(saved).map_err(|e| StoreError::Corrupt {
                    tree: "snapshots",
                    detail: e.to_string(),
                })?,
                None => AutoCommit::new(),
            }
            .with_actor(idea::actor_for(&author, &actor_nonce));
            let (changes, _) = changes_of(&stored.tail)?;
            doc.apply_changes(changes).map_err(corrupt)?;
            let snapshot_seq = stored.snapshot.as_ref().map_or(0, |(s, _)| *s);
            let last_seq = stored.tail.last().map_or(snapshot_seq, |(s, _)| *s);
            if stored.kind == DocKind::Idea {
                idea_space.insert(stored.doc, stored.space);
            }
            space.docs.insert(
                stored.doc,
                DocState {
                    kind: stored.kind,
                    doc,
                    last_seq,
                    snapshot_seq,
                },
            );
        }
        Ok(Engine {
            store,
            identity,
            author,
            actor_nonce,
            spaces,
            idea_space,
            pending: HashMap::new(),
            pending_len: 0,
            pending_bytes: 0,
            counters: Counters::default(),
            net: None,
            events,
        })
    }

    /// Connects the engine to the network task.
    pub fn set_network(&mut self, net: mpsc::Sender<NetRequest>) {
        for space in self.spaces.keys() {
            // The channel was just made and is empty; a full channel here is a bug.
            let _ = net.try_send(NetRequest::Subscribe(*space));
        }
        self.net = Some(net);
    }

    fn to_net(&self, req: NetRequest) {
        if let Some(net) = &self.net {
            // The network task never waits on the engine, so blocking here cannot deadlock. An
            // error means the network has stopped; the data is already stored.
            let _ = net.blocking_send(req);
        }
    }

    /// This node's author.
    pub fn author(&self) -> AuthorId {
        self.author
    }

    /// Counters.
    pub fn counters(&self) -> Counters {
        let mut c = self.counters.clone();
        c.pending = self.pending_len as u64;
        c
    }

    /// The store (read-only uses: counts, tests).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Creates a space with a fresh id (random bytes from the caller) and joins it.
    pub fn create_space(
        &mut self,
        id: SpaceId,
        name: &str,
        now_ms: i64,
    ) -> Result<SpaceId, EngineError> {
        let name = idea::validate_name(name)?;
        self.join_space(id, Some(name), now_ms)?;
        Ok(id)
    }

    /// Joins a space (idempotent). Durable on return.
    pub fn join_space(
        &mut self,
        id: SpaceId,
        name: Option<String>,
        now_ms: i64,
    ) -> Result<(), EngineError> {
        if self.spaces.contains_key(&id) {
            return Ok(());
        }
        let record = SpaceRecord {
            name,
            joined_at: now_ms,
        };
        self.store.put_space(&id, &record)?;
        self.store.flush()?;
        self.spaces.insert(
            id,
            SpaceState {
                record,
                docs: HashMap::new(),
            },
        );
        self.to_net(NetRequest::Subscribe(id));
        let _ = self.events.send(NodeEvent::SpaceJoined { space: id });
        // Tell the space who we are, if we have a name.
        if let Some(name) = self.store.display_name()? {
            self.write_profile(id, &name, now_ms)?;
        }
        Ok(())
    }

    /// Spaces with their records.
    pub fn spaces(&self) -> Vec<(SpaceId, SpaceRecord, usize)> {
        let mut v: Vec<_> = self
            .spaces
            .iter()
            .map(|(id, s)| {
                let ideas = s.docs.values().filter(|d| d.kind == DocKind::Idea).count();
                (*id, s.record.clone(), ideas)
            })
            .collect();
        v.sort_by_key(|(_, r, _)| r.joined_at);
        v
    }

    /// Sets the author's display name and publishes it to every joined space.
    pub fn set_display_name(&mut self, name: &str, now_ms: i64) -> Result<(), EngineError> {
        let name = idea::validate_name(name)?;
        self.store.set_display_name(&name)?;
        self.store.flush()?;
        let spaces: Vec<SpaceId> = self.spaces.keys().copied().collect();
        for space in spaces {
            self.write_profile(space, &name, now_ms)?;
        }
        Ok(())
    }

    fn write_profile(
        &mut self,
        space: SpaceId,
        name: &str,
        now_ms: i64,
    ) -> Result<(), EngineError> {
        let doc = DocId::profile(&space, &self.author);
        let current = self
            .spaces
            .get(&space)
            .and_then(|s| s.docs.get(&doc))
            .and_then(|d| idea::read_profile(&d.doc, &space, &doc));
        if current.is_some_and(|(_, n)| n == name) {
            return Ok(());
        }
        self.local_edit(space, doc, DocKind::Profile, |d| {
            idea::set_display_name(d, name, now_ms)
        })?;
        Ok(())
    }

    /// Applies a local edit: runs `edit` on the document (created if new), signs the change,
    /// stores and flushes it, then hands it to the network. Returns after it is durable, with
    /// the contribution, or `None` when the edit changed nothing.
    pub fn local_edit(
        &mut self,
        space: SpaceId,
        doc: DocId,
        kind: DocKind,
        edit: impl FnOnce(&mut AutoCommit) -> Result<Change, idea::SchemaError>,
    ) -> Result<Option<Contribution>, EngineError> {
        let (author, nonce) = (self.author, self.actor_nonce);
        let space_state = self
            .spaces
            .get_mut(&space)
            .ok_or(EngineError::UnknownSpace(space))?;
        let is_new = !space_state.docs.contains_key(&doc);
        let state = space_state.docs.entry(doc).or_insert_with(|| DocState {
            kind,
            doc: new_doc(&author, &nonce),
            last_seq: 0,
            snapshot_seq: 0,
        });
        let change = match edit(&mut state.doc) {
            Ok(c) => c,
            // Nothing changed (the same vote again): nothing to sign, store or send.
            Err(idea::SchemaError::Unchanged) => return Ok(None),
            Err(e) => {
                state.doc.rollback();
                if is_new {
                    space_state.docs.remove(&doc);
                }
                return Err(e.into());
            }
        };
        let contribution = Contribution::sign(&self.identity, space, doc, kind, &change);
        let bytes = contribution.encode();
        state.last_seq += 1;
        let seq = state.last_seq;
        let persisted = (|| {
            if is_new {
                self.store.put_doc(&space, &doc, kind)?;
            }
            self.store.put_contributions([(
                &space,
                &doc,
                seq,
                change.hash().0,
                bytes.as_slice(),
            )])?;
            self.store.flush()
        })();
        if let Err(e) = persisted {
            // The change is in memory but not on disk: forget the document state so memory and
            // disk agree again (reload it from the store).
            tracing::error!(target: "agora::engine", %e, "could not persist a local edit");
            self.reload_doc(space, doc)?;
            return Err(e.into());
        }
        if kind == DocKind::Idea {
            self.idea_space.insert(doc, space);
            let _ = self
                .events
                .send(NodeEvent::IdeaChanged { space, idea: doc });
        }
        self.maybe_snapshot(space, doc)?;
        self.to_net(NetRequest::Publish { space, bytes });
        Ok(Some(contribution))
    }

    fn reload_doc(&mut self, space: SpaceId, doc: DocId) -> Result<(), EngineError> {
        let Some(s) = self.spaces.get_mut(&space) else {
            return Ok(());
        };
        s.docs.remove(&doc);
        let tail = self.store.contributions_of(&space, &doc, 0)?;
        if tail.is_empty() {
            return Ok(());
        }
        let mut d = new_doc(&self.author, &self.actor_nonce);
        let (changes, kind) = changes_of(&tail)?;
        d.apply_changes(changes).map_err(corrupt)?;
        let last_seq = tail.last().map_or(0, |(s, _)| *s);
        s.docs.insert(
            doc,
            DocState {
                kind: kind.unwrap_or(DocKind::Idea),
                doc: d,
                last_seq,
                snapshot_seq: 0,
            },
        );
        Ok(())
    }

    fn maybe_snapshot(&mut self, space: SpaceId, doc: DocId) -> Result<(), EngineError> {
        let Some(state) = self
            .spaces
            .get_mut(&space)
            .and_then(|s| s.docs.get_mut(&doc))
        else {
            return Ok(());
        };
        // Saving costs time proportional to the document, replaying a tail at start-up costs
        // time proportional to the tail: snapshot when the tail reaches a quarter of the
        // document (and at least SNAPSHOT_EVERY), which keeps both amortised O(1) per change.
        let threshold = SNAPSHOT_EVERY.max(state.snapshot_seq / 4);
        if state.last_seq - state.snapshot_seq >= threshold {
            let saved = state.doc.save();
            self.store
                .put_snapshot(&space, &doc, state.last_seq, &saved)?;
            state.snapshot_seq = state.last_seq;
        }
        Ok(())
    }

    fn idea_doc(&mut self, idea: DocId) -> Result<SpaceId, EngineError> {
        self.idea_space
            .get(&idea)
            .copied()
            .ok_or(EngineError::UnknownIdea(idea))
    }

    /// Posts a new idea; `salt` is 16 random bytes from the caller (see `DocId::idea`).
    pub fn create_idea(
        &mut self,
        space: SpaceId,
        salt: [u8; 16],
        draft: &IdeaDraft,
        now_ms: i64,
    ) -> Result<DocId, EngineError> {
        let author = self.author;
        let id = DocId::idea(&space, &author, &salt);
        self.local_edit(space, id, DocKind::Idea, |d| {
            idea::create_idea(d, draft, &author, &salt, now_ms)
        })?;
        Ok(id)
    }

    /// Comments on an idea.
    pub fn comment(&mut self, idea_id: DocId, text: &str, now_ms: i64) -> Result<(), EngineError> {
        let space = self.idea_doc(idea_id)?;
        let author = self.author;
        self.local_edit(space, idea_id, DocKind::Idea, |d| {
            idea::add_comment(d, &author, text, now_ms)
        })?;
        Ok(())
    }

    /// Votes on an idea.
    pub fn vote(&mut self, idea_id: DocId, vote: Vote, now_ms: i64) -> Result<(), EngineError> {
        let space = self.idea_doc(idea_id)?;
        let author = self.author;
        self.local_edit(space, idea_id, DocKind::Idea, |d| {
            idea::cast_vote(d, &author, vote, now_ms)
        })?;
        Ok(())
    }

    /// Changes an idea's status.
    pub fn set_status(
        &mut self,
        idea_id: DocId,
        status: Status,
        now_ms: i64,
    ) -> Result<(), EngineError> {
        let space = self.idea_doc(idea_id)?;
        self.local_edit(space, idea_id, DocKind::Idea, |d| {
            idea::set_status(d, status, now_ms)
        })?;
        Ok(())
    }

    fn display_names(&self, space: &SpaceId) -> HashMap<AuthorId, String> {
        let Some(s) = self.spaces.get(space) else {
            return HashMap::new();
        };
        let mut names = HashMap::new();
        for (id, state) in s.docs.iter().filter(|(_, d)| d.kind == DocKind::Profile) {
            if let Some((owner, name)) = idea::read_profile(&state.doc, space, id) {
                names.insert(owner, name);
            }
        }
        names
    }

    fn named(&self, mut idea: Idea, names: &HashMap<AuthorId, String>) -> Idea {
        idea.author_name = names.get(&idea.author).cloned();
        for c in &mut idea.comments {
            c.author_name = names.get(&c.author).cloned();
        }
        idea
    }

    /// One idea, materialised.
    pub fn show_idea(&self, idea_id: DocId) -> Result<Idea, EngineError> {
        let space = *self
            .idea_space
            .get(&idea_id)
            .ok_or(EngineError::UnknownIdea(idea_id))?;
        let state = self
            .spaces
            .get(&space)
            .and_then(|s| s.docs.get(&idea_id))
            .ok_or(EngineError::UnknownIdea(idea_id))?;
        let idea =
            idea::read_idea(&state.doc, space, idea_id).ok_or(EngineError::UnknownIdea(idea_id))?;
        Ok(self.named(idea, &self.display_names(&space)))
    }

    /// Every idea of a space, newest first.
    pub fn list_ideas(&self, space: SpaceId) -> Result<Vec<Idea>, EngineError> {
        let s = self
            .spaces
            .get(&space)
            .ok_or(EngineError::UnknownSpace(space))?;
        let names = self.display_names(&space);
        let mut ideas: Vec<Idea> = s
            .docs
            .iter()
            .filter(|(_, d)| d.kind == DocKind::Idea)
            .filter_map(|(id, d)| idea::read_idea(&d.doc, space, *id))
            .map(|i| self.named(i, &names))
            .collect();
        ideas.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
        Ok(ideas)
    }

    /// Heads of every document in a space (for convergence checks).
    pub fn heads(&mut self, space: SpaceId) -> BTreeMap<DocId, Vec<ChangeHash>> {
        let mut out = BTreeMap::new();
        if let Some(s) = self.spaces.get_mut(&space) {
            for (id, d) in s.docs.iter_mut() {
                let mut h = d.doc.get_heads();
                h.sort();
                out.insert(*id, h);
            }
        }
        out
    }

    /// Ingests a batch of gossip messages and sends each verdict to the network.
    pub fn ingest_gossip(&mut self, batch: Vec<GossipIn>) {
        let tokens: Vec<(u64, Option<SpaceId>)> =
            batch.iter().map(|g| (g.token, g.topic)).collect();
        let outcomes = self.ingest(batch.into_iter().map(|g| (g.bytes, g.topic)).collect());
        for ((token, _), outcome) in tokens.into_iter().zip(outcomes) {
            self.to_net(NetRequest::Verdict { token, outcome });
        }
    }

    /// Ingests untrusted encoded contributions, each with the space of the topic it came on
    /// (`None` when the transport has no topic, e.g. sync). Verifies them in one batch, applies
    /// them with one Automerge call per document, stores them and flushes once. Returns one
    /// outcome per input, in order.
    pub fn ingest(&mut self, items: Vec<(Vec<u8>, Option<SpaceId>)>) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; items.len()];
        // The input bytes of every contribution that decodes, by slot. `decode` accepts only the
        // canonical encoding, so they are exactly what `encode()` would produce: they are stored
        // as they came instead of being encoded again.
        let mut originals: Vec<Vec<u8>> = Vec::with_capacity(items.len());
        let mut decoded = Vec::new();
        let mut slots = Vec::new();
        for (i, (bytes, topic)) in items.into_iter().enumerate() {
            let keep = match Contribution::decode(&bytes) {
                Ok(c) if topic.is_some_and(|t| t != c.space) => {
                    outcomes[i] = Some(Outcome::Rejected(Rejection::WrongTopic));
                    false
                }
                Ok(c) if !self.spaces.contains_key(&c.space) => {
                    outcomes[i] = Some(Outcome::Rejected(Rejection::UnknownSpace));
                    false
                }
                Ok(c) => {
                    decoded.push(c);
                    slots.push(i);
                    true
                }
                Err(e) => {
                    outcomes[i] = Some(Outcome::Rejected(e));
                    false
                }
            };
            originals.push(if keep { bytes } else { Vec::new() });
        }
        // Group the verified ones by document, remembering which input each came from.
        let mut by_doc: HashMap<(SpaceId, DocId), Vec<Slotted>> = HashMap::new();
        for (slot, result) in slots.into_iter().zip(verify_batch(decoded)) {
            match result {
                Ok(v) => {
                    let (c, ch) = v.into_parts();
                    by_doc
                        .entry((c.space, c.doc))
                        .or_default()
                        .push((slot, c, ch));
                }
                Err(e) => outcomes[slot] = Some(Outcome::Rejected(e)),
            }
        }
        let mut to_store: Vec<ToStore> = Vec::new();
        let mut new_docs: Vec<(SpaceId, DocId, DocKind)> = Vec::new();
        let mut touched = Vec::new();
        for ((space, doc), mut items) in by_doc {
            // Earlier arrivals that were waiting for dependencies get another chance.
            let waiting = self.pending.remove(&(space, doc)).unwrap_or_default();
            self.pending_len -= waiting.len();
            self.pending_bytes -= waiting.iter().map(|(c, _)| c.change.len()).sum::<usize>();
            let held: Vec<(usize, Contribution, Change)> = waiting
                .into_iter()
                .map(|(c, ch)| (usize::MAX, c, ch))
                .collect();
            items.splice(0..0, held);
            let (author, nonce) = (self.author, self.actor_nonce);
            let space_state = self.spaces.get_mut(&space).expect("checked above");
            // A new document's kind is that of its creation (the change without dependencies),
            // not of whatever early arrival happens to come first: an early contribution of the
            // other kind must not decide it.
            let kind = items
                .iter()
                .find(|(_, _, ch)| ch.deps().is_empty())
                .map_or(items[0].1.kind, |(_, c, _)| c.kind);
            let existed = space_state.docs.contains_key(&doc);
            let state = space_state.docs.entry(doc).or_insert_with(|| {
                new_docs.push((space, doc, kind));
                DocState {
                    kind,
                    doc: new_doc(&author, &nonce),
                    last_seq: 0,
                    snapshot_seq: 0,
                }
            });
            let mut ready_hashes: HashSet<ChangeHash> = HashSet::new();
            let mut rest = Vec::new();
            // For each contribution in `rest`: its hash and its dependencies the document lacks.
            let mut rest_hashes = Vec::new();
            let mut rest_missing = Vec::new();
            let mut query: Vec<ChangeHash> = Vec::new();
            for (slot, c, ch) in items {
                let hash = ch.hash();
                // One query answers both "already held?" and "which dependencies are missing?":
                // a held change has all its dependencies, so the answer is empty exactly when
                // the change is held; otherwise it is the change itself plus its missing
                // dependencies (a change is never its own ancestor).
                let mut missing = Vec::new();
                let dup = ready_hashes.contains(&hash) || {
                    query.clear();
                    query.push(hash);
                    query.extend_from_slice(ch.deps());
                    missing = state.doc.get_missing_deps(&query);
                    missing.is_empty()
                };
                if dup {
                    if slot != usize::MAX {
                        outcomes[slot] = Some(Outcome::Duplicate);
                    }
                } else if c.kind != state.kind {
                    if slot != usize::MAX {
                        outcomes[slot] = Some(Outcome::Rejected(Rejection::Inapplicable(
                            "document kind differs from the document's first contribution".into(),
                        )));
                    }
                } else {
                    ready_hashes.insert(hash);
                    missing.retain(|d| *d != hash);
                    rest.push(Some((slot, c, ch)));
                    rest_hashes.push(hash);
                    rest_missing.push(missing);
                }
            }
            // The contributions whose dependencies are all held or ready, in an order that puts
            // dependencies first (handles chains that arrived out of order within the batch).
            let ready: Vec<(usize, Contribution, Change)> =
                ready_order(&rest_hashes, &rest_missing)
                    .into_iter()
                    .filter_map(|i| rest[i].take())
                    .collect();
            for (slot, c, ch) in rest.into_iter().flatten() {
                if slot != usize::MAX {
                    outcomes[slot] = Some(Outcome::Pending);
                }
                // Bounded by count and by bytes; beyond that, early arrivals are dropped (sync
                // fetches them again once their dependencies are here).
                let size = c.change.len();
                if self.pending_len < MAX_PENDING && self.pending_bytes + size <= MAX_PENDING_BYTES
                {
                    self.pending_len += 1;
                    self.pending_bytes += size;
                    self.pending.entry((space, doc)).or_default().push((c, ch));
                }
            }
            if ready.is_empty() {
                // Nothing applies yet: a document we did not hold stays unknown (no empty
                // document in memory, in `heads` or on disk).
                if !existed {
                    space_state.docs.remove(&doc);
                    new_docs.pop();
                }
                continue;
            }
            let mut changes: Vec<Change> = Vec::with_capacity(ready.len());
            let mut applying: Vec<(usize, Contribution, ChangeHash)> =
                Vec::with_capacity(ready.len());
            for (slot, c, ch) in ready {
                applying.push((slot, c, ch.hash()));
                changes.push(ch);
            }
            let applied = state.doc.apply_changes(changes);
            let accepted: Vec<(usize, Contribution, ChangeHash)> = match applied {
                Ok(()) => applying,
                Err(e) => {
                    // Rare: a validly signed change that Automerge refuses (e.g. an author who
                    // reused a sequence number). Rebuild the document and apply one by one so
                    // that only the bad ones are refused.
                    tracing::warn!(target: "agora::engine", %space, %doc, %e, "batch apply failed; retrying one by one");
                    let mut fresh = new_doc(&author, &nonce);
                    let stored = self
                        .store
                        .contributions_of(&space, &doc, 0)
                        .and_then(|tail| changes_of(&tail))
                        .map(|(changes, _)| changes)
                        .unwrap_or_default();
                    let _ = fresh.apply_changes(stored);
                    state.doc = fresh;
                    let mut ok = Vec::new();
                    for (slot, c, hash) in applying {
                        // The parsed changes went into the failed call: parse them again from
                        // the same bytes (they parsed when they were verified).
                        let one = Change::from_bytes(c.change.clone())
                            .map_err(|e| e.to_string())
                            .and_then(|ch| {
                                state.doc.apply_changes([ch]).map_err(|e| e.to_string())
                            });
                        match one {
                            Ok(()) => ok.push((slot, c, hash)),
                            Err(e) if slot != usize::MAX => {
                                outcomes[slot] = Some(Outcome::Rejected(Rejection::Inapplicable(e)))
                            }
                            Err(_) => {}
                        }
                    }
                    ok
                }
            };
            for (slot, c, hash) in accepted {
                state.last_seq += 1;
                // Held contributions (slot usize::MAX) were decoded in an earlier batch.
                let bytes = match originals.get_mut(slot) {
                    Some(original) => std::mem::take(original),
                    None => c.encode(),
                };
                to_store.push((space, doc, state.last_seq, hash.0, bytes));
                if slot == usize::MAX {
                    // Accepted now after waiting: no input slot reports it, so count it here.
                    self.counters.accepted += 1;
                }
                if slot != usize::MAX {
                    outcomes[slot] = Some(Outcome::Accepted);
                }
            }
            touched.push((space, doc, state.kind));
        }
        let persisted = (|| {
            for (space, doc, kind) in &new_docs {
                self.store.put_doc(space, doc, *kind)?;
            }
            self.store.put_contributions(
                to_store
                    .iter()
                    .map(|(s, d, seq, h, b)| (s, d, *seq, *h, b.as_slice())),
            )?;
            self.store.flush()
        })();
        if let Err(e) = persisted {
            // Nothing in this batch is durable: forget it in memory too, and refuse to vouch for
            // it (Ignore, so that peers will offer it again).
            tracing::error!(target: "agora::engine", %e, "could not persist ingested contributions");
            for (space, doc, _) in &touched {
                let _ = self.reload_doc(*space, *doc);
            }
            return outcomes
                .into_iter()
                .map(|o| match o {
                    Some(Outcome::Accepted) | None => Outcome::Pending,
                    Some(o) => o,
                })
                .collect();
        }
        for (space, doc, kind) in touched {
            if kind == DocKind::Idea {
                self.idea_space.insert(doc, space);
                let _ = self
                    .events
                    .send(NodeEvent::IdeaChanged { space, idea: doc });
            }
            if let Err(e) = self.maybe_snapshot(space, doc) {
                tracing::warn!(target: "agora::engine", %e, "snapshot failed; will retry later");
            }
        }
        let outcomes: Vec<Outcome> = outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Outcome::Pending))
            .collect();
        for o in &outcomes {
            match o {
                Outcome::Accepted => self.counters.accepted += 1,
                Outcome::Duplicate => self.counters.duplicates += 1,
                Outcome::Pending => {}
                Outcome::Rejected(r) => {
                    *self
                        .counters
                        .rejected
                        .entry(r.code().to_string())
                        .or_default() += 1;
                    tracing::info!(target: "agora::engine", reason = r.code(), detail = %r, "rejected a contribution");
                    let _ = self.events.send(NodeEvent::Rejected {
                        reason: r.code().to_string(),
                    });
                }
            }
        }
        outcomes
    }

    /// Saves a snapshot of every document with unsnapshotted contributions and flushes
    /// (called at shutdown so the next start is fast).
    pub fn checkpoint(&mut self) -> Result<(), EngineError> {
        let keys: Vec<(SpaceId, DocId)> = self
            .spaces
            .iter()
            .flat_map(|(sid, s)| s.docs.keys().map(move |d| (*sid, *d)))
            .collect();
        for (space, doc) in keys {
            let state = self
                .spaces
                .get_mut(&space)
                .and_then(|s| s.docs.get_mut(&doc))
                .expect("key taken from the map");
            if state.last_seq > state.snapshot_seq {
                let saved = state.doc.save();
                self.store
                    .put_snapshot(&space, &doc, state.last_seq, &saved)?;
                state.snapshot_seq = state.last_seq;
            }
        }
        self.store.flush()?;
        Ok(())
    }

    /// The space's sync digest (`None` if the space is not joined).
    pub fn sync_digest(&mut self, space: SpaceId) -> Option<[u8; 32]> {
        let s = self.spaces.get_mut(&space)?;
        let heads: Vec<(DocId, Vec<ChangeHash>)> = s
            .docs
            .iter_mut()
            .map(|(id, d)| (*id, d.doc.get_heads()))
            .collect();
        Some(sync::space_digest(
            heads.iter().map(|(id, h)| (id, h.as_slice())),
        ))
    }

    fn doc_heads(&mut self, space: SpaceId) -> Vec<DocHeads> {
        let Some(s) = self.spaces.get_mut(&space) else {
            return Vec::new();
        };
        let mut out: Vec<DocHeads> = s
            .docs
            .iter_mut()
            .filter_map(|(id, d)| {
                let mut heads: Vec<sync::Hash> =
                    d.doc.get_heads().into_iter().map(Into::into).collect();
                heads.sort();
                (!heads.is_empty()).then_some(DocHeads { doc: id.0, heads })
            })
            .collect();
        out.sort_by_key(|d| d.doc);
        out.truncate(sync::MAX_DOCS_PER_SPACE);
        out
    }

    /// Answers a peer's sync request. Only stored (so verified) contributions are sent.
    pub fn sync_answer(&mut self, request: SyncRequest) -> SyncResponse {
        if let Err(reason) = request.check() {
            return SyncResponse::Refused { reason };
        }
        let space = request.space();
        if !self.spaces.contains_key(&space) {
            return SyncResponse::Refused {
                reason: "space not held here".into(),
            };
        }
        match request {
            SyncRequest::Summary { digest, .. } => {
                if self.sync_digest(space) == Some(digest) {
                    SyncResponse::InSync
                } else {
                    SyncResponse::Heads {
                        docs: self.doc_heads(space),
                    }
                }
            }
            SyncRequest::Fetch {
                wants, max_bytes, ..
            } => {
                let budget = (max_bytes as usize).min(sync::MAX_RESPONSE_CONTRIBUTION_BYTES);
                let mut items = Vec::new();
                let mut used = 0usize;
                let mut more = false;
                'docs: for want in wants {
                    let doc = DocId(want.doc);
                    let Some(state) = self
                        .spaces
                        .get_mut(&space)
                        .and_then(|s| s.docs.get_mut(&doc))
                    else {
                        continue;
                    };
                    // Heads the requester has that we know; changes beyond them are what it lacks.
                    let have: Vec<ChangeHash> = want
                        .heads
                        .iter()
                        .map(|h| ChangeHash::from(*h))
                        .filter(|h| state.doc.get_missing_deps(&[*h]).is_empty())
                        .collect();
                    let hashes: Vec<ChangeHash> = state
                        .doc
                        .get_changes_meta(&have)
                        .into_iter()
                        .map(|m| m.hash)
                        .collect();
                    for hash in hashes {
                        match self.store.contribution_by_hash(&space, &doc, &hash.0) {
                            Ok(Some(bytes)) => {
                                if used + bytes.len() > budget && !items.is_empty() {
                                    more = true;
                                    break 'docs;
                                }
                                used += bytes.len();
                                items.push(serde_bytes::ByteBuf::from(bytes));
                            }
                            Ok(None) => {}
                            Err(e) => {
                                tracing::warn!(target: "agora::engine", %e, "store read failed while answering sync");
                            }
                        }
                    }
                }
                SyncResponse::Contributions { items, more }
            }
        }
    }

    /// Given a peer's heads, the documents for which it has changes we lack, each with our own
    /// heads (what a `Fetch` carries).
    pub fn sync_wants(&mut self, space: SpaceId, theirs: &[DocHeads]) -> Vec<DocHeads> {
        let Some(s) = self.spaces.get_mut(&space) else {
            return Vec::new();
        };
        let mut wants = Vec::new();
        for d in theirs.iter().take(sync::MAX_DOCS_PER_SPACE) {
            let their: Vec<ChangeHash> = d
                .heads
                .iter()
                .take(sync::MAX_HEADS_PER_DOC)
                .map(|h| ChangeHash::from(*h))
                .collect();
            let ours = match s.docs.get_mut(&DocId(d.doc)) {
                Some(state) => {
                    if state.doc.get_missing_deps(&their).is_empty() {
                        continue;
                    }
                    let mut h: Vec<sync::Hash> =
                        state.doc.get_heads().into_iter().map(Into::into).collect();
                    h.sort();
                    h.truncate(sync::MAX_HEADS_PER_DOC);
                    h
                }
                None => Vec::new(),
            };
            wants.push(DocHeads {
                doc: d.doc,
                heads: ours,
            });
            if wants.len() >= sync::MAX_WANTS {
                break;
            }
        }
        wants
    }
}

/// A unit of work for the engine thread.
pub enum Command {
    /// Run a closure against the engine (local edits and queries).
    Run(Box<dyn FnOnce(&mut Engine) + Send>),
    /// A gossip message to verify and ingest.
    Gossip(GossipIn),
    /// Checkpoint and stop the thread.
    Stop,
}

/// A cheap, cloneable handle to the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
}

impl EngineHandle {
    /// Runs `f` on the engine thread and returns its result.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Engine) -> R + Send + 'static,
    ) -> Result<R, EngineError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Run(Box::new(move |e| {
                let _ = tx.send(f(e));
            })))
            .await
            .map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)
    }

    /// Asks the engine thread to checkpoint and stop after the work already queued.
    pub async fn stop(&self) {
        let _ = self.tx.send(Command::Stop).await;
    }

    /// Hands a gossip message to the engine without waiting. Returns it back if the engine is
    /// saturated, so the caller can tell gossipsub to ignore it (anti-entropy fetches it later).
    pub fn try_gossip(&self, g: GossipIn) -> Result<(), GossipIn> {
        self.tx.try_send(Command::Gossip(g)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(Command::Gossip(g))
            | mpsc::error::TrySendError::Closed(Command::Gossip(g)) => g,
            _ => unreachable!("we sent a Gossip command"),
        })
    }
}

/// Starts the engine thread. It stops (after a checkpoint) on [`EngineHandle::stop`] or when
/// every handle is dropped.
pub fn spawn(mut engine: Engine, capacity: usize) -> (EngineHandle, std::thread::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Command>(capacity);
    let thread = std::thread::Builder::new()
        .name("agora-engine".into())
        .spawn(move || {
            let mut deferred: Option<Command> = None;
            loop {
                let Some(first) = deferred.take().or_else(|| rx.blocking_recv()) else {
                    break;
                };
                match first {
                    Command::Run(f) => f(&mut engine),
                    Command::Stop => break,
                    Command::Gossip(g) => {
                        let mut batch = vec![g];
                        while batch.len() < MAX_BATCH {
                            match rx.try_recv() {
                                Ok(Command::Gossip(g)) => batch.push(g),
                                Ok(other) => {
                                    deferred = Some(other);
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        engine.ingest_gossip(batch);
                    }
                }
            }
            if let Err(e) = engine.checkpoint() {
                tracing::error!(target: "agora::engine", %e, "checkpoint at shutdown failed");
            }
        })
        .expect("spawning a thread only fails when the OS is out of resources");
    (EngineHandle { tx }, thread)
}
