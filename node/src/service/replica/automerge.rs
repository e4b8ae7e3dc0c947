//! The node's replica: every document an Automerge document in memory, backed by the store.

use super::{is_sealed, Edit, Item, Keyring, Replica, Sealing, SpaceKeys};
use crate::service::ServiceError;
use crate::store::{Storage, Store, StoreError, Write};
use agora_protocol::automerge::{AutoCommit, Change, ChangeHash};
use agora_protocol::contribution::{change_preview, check_change, verify_batch};
use agora_protocol::idea::{self, Idea};
use agora_protocol::keys::{self, KeyId, XChaCha20Poly1305};
use agora_protocol::membership::ChangeInfo;
use agora_protocol::sealed::{self, Envelope, Plaintext};
use agora_protocol::{
    AuthorId, Contribution, DocId, DocKind, Identity, Rejection, SpaceId, VerifiedContribution,
};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Associated data of a sealed snapshot: a domain, then space, document and seq.
const SNAPSHOT_AAD: &[u8] = b"agora-local-snapshot-v2\0";

fn snapshot_aad(space: &SpaceId, doc: &DocId, seq: u64) -> Vec<u8> {
    [SNAPSHOT_AAD, &space.0, &doc.0, &seq.to_be_bytes()].concat()
}

/// What a node seals its own snapshots of private documents with.
struct LocalSeal {
    cipher: XChaCha20Poly1305,
    /// Keys the hash its nonces are taken from.
    nonce_key: [u8; 32],
}

/// Seals a snapshot of a private space's document for this node's own disk: the nonce is the
/// first 24 bytes of SHA-256 over a secret key, the associated data and the saved document (a
/// keyed hash: deterministic, so a snapshot written twice is the same bytes; distinct snapshots
/// never share a nonce but by a hash collision; and without the key it tells nothing of the
/// plaintext), then the ciphertext.
fn seal_snapshot(
    seal: &LocalSeal,
    space: &SpaceId,
    doc: &DocId,
    seq: u64,
    saved: &[u8],
) -> Vec<u8> {
    let aad = snapshot_aad(space, doc, seq);
    let digest: [u8; 32] = Sha256::new()
        .chain_update(seal.nonce_key)
        .chain_update(&aad)
        .chain_update(saved)
        .finalize()
        .into();
    let mut nonce = [0u8; 24];
    nonce.copy_from_slice(&digest[..24]);
    let ct = keys::seal_with(&seal.cipher, &nonce, &aad, saved);
    [&nonce[..], &ct].concat()
}

fn open_snapshot(
    cipher: &XChaCha20Poly1305,
    space: &SpaceId,
    doc: &DocId,
    seq: u64,
    sealed: &[u8],
) -> Result<Vec<u8>, StoreError> {
    let bad = || StoreError::Corrupt {
        tree: "snapshots",
        detail: "a private document's snapshot does not open with this identity".into(),
    };
    let nonce: [u8; 24] = sealed
        .get(..24)
        .and_then(|n| n.try_into().ok())
        .ok_or_else(bad)?;
    keys::open_with(
        cipher,
        &nonce,
        &snapshot_aad(space, doc, seq),
        &sealed[24..],
    )
    .map_err(|_| bad())
}

/// A document gets a fresh snapshot once this many contributions were added since the last one
/// (or a quarter of the document, whichever is more).
pub const SNAPSHOT_EVERY: u64 = 256;

/// A contribution that decoded, with the bytes it came in (stored as they are: `decode` accepts
/// only the canonical encoding, so they are what `encode()` would produce).
pub enum Decoded {
    /// Version 1, in the clear.
    Plain {
        /// The contribution.
        contribution: Contribution,
        /// Its bytes.
        bytes: Vec<u8>,
    },
    /// Version 2, sealed: decrypted already (the AEAD vouches that a member sealed it), its
    /// signature and change not checked yet.
    Sealed {
        /// The epoch it was sealed under (its signature covers it).
        key_id: KeyId,
        /// The space its key id names.
        space: SpaceId,
        /// What it holds.
        plain: Plaintext,
        /// Its bytes.
        bytes: Vec<u8>,
    },
}

/// A verified contribution: the parsed change and the canonical bytes.
pub struct Verified {
    space: SpaceId,
    doc: DocId,
    kind: DocKind,
    author: AuthorId,
    change: Change,
    bytes: Vec<u8>,
}

impl Verified {
    /// A protocol-verified contribution with its encoded bytes.
    fn new(verified: VerifiedContribution, bytes: Vec<u8>) -> Verified {
        let (c, change) = verified.into_parts();
        Verified {
            space: c.space,
            doc: c.doc,
            kind: c.kind,
            author: c.author,
            change,
            bytes,
        }
    }
}

impl Item for Verified {
    fn space(&self) -> SpaceId {
        self.space
    }
    fn doc(&self) -> DocId {
        self.doc
    }
    fn author(&self) -> AuthorId {
        self.author
    }
    fn kind(&self) -> DocKind {
        self.kind
    }
    fn hash(&self) -> ChangeHash {
        self.change.hash()
    }
    fn deps(&self) -> &[ChangeHash] {
        self.change.deps()
    }
    fn size(&self) -> usize {
        // The bytes as received plus the parsed change, which keeps its own copy.
        2 * self.bytes.len()
    }
}

struct DocState {
    kind: DocKind,
    doc: AutoCommit,
    /// Seq of the last stored contribution (the number of contributions held).
    last_seq: u64,
    /// Seq covered by the latest snapshot.
    snapshot_seq: u64,
    /// The cipher its snapshots are sealed with (a private space's document).
    seal: Option<Arc<LocalSeal>>,
    /// The seq of every contribution held, by change hash: made from the store the first time
    /// a sync answer needs a contribution by its hash, then kept up to date (see
    /// [`hash_index`]).
    index: Option<HashMap<ChangeHash, u64>>,
    /// The changes held that the membership whites out (PROTOCOL §14.7), set by the service.
    hidden: BTreeSet<ChangeHash>,
    /// The authors of its changes: found from the changes' actors the first time the service
    /// asks, then kept up to date.
    authors: Option<BTreeSet<AuthorId>>,
    /// The authors of the changes applied since the service last asked.
    fresh: Vec<AuthorId>,
    /// The document without them, when some are hidden: what the node shows, offers by sync
    /// and builds its own edits on. `None` when nothing is hidden (then it is `doc`).
    standing: Option<AutoCommit>,
}

impl DocState {
    fn new(kind: DocKind, doc: AutoCommit, last_seq: u64, snapshot_seq: u64) -> DocState {
        DocState {
            kind,
            doc,
            last_seq,
            snapshot_seq,
            seal: None,
            index: None,
            hidden: BTreeSet::new(),
            standing: None,
            authors: (last_seq == 0).then(BTreeSet::new),
            fresh: Vec::new(),
        }
    }

    fn note_author(&mut self, author: AuthorId) {
        if let Some(authors) = &mut self.authors {
            authors.insert(author);
        }
        if !self.fresh.contains(&author) {
            self.fresh.push(author);
        }
    }

    /// The document as it stands: without the changes the membership whites out.
    fn view(&self) -> &AutoCommit {
        self.standing.as_ref().unwrap_or(&self.doc)
    }

    fn view_mut(&mut self) -> &mut AutoCommit {
        self.standing.as_mut().unwrap_or(&mut self.doc)
    }

    /// `have` (a peer's heads) in terms of the document as it stands: a hidden change a peer
    /// holds (its membership lags) stands for its nearest standing ancestors, so that the peer
    /// is not sent the whole document again.
    fn standing_have(&mut self, have: &[ChangeHash]) -> Vec<ChangeHash> {
        if self.standing.is_none() {
            return have.to_vec();
        }
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        let mut stack: Vec<ChangeHash> = have.to_vec();
        while let Some(h) = stack.pop() {
            if !seen.insert(h) {
                continue;
            }
            if !self.hidden.contains(&h) {
                out.push(h);
            } else if let Some(meta) = self.doc.get_change_meta_by_hash(&h) {
                stack.extend(meta.deps.iter().copied());
            }
        }
        out
    }

    /// Hides `hidden` (a set the write rule gives, so that what remains is closed under
    /// dependencies). Returns whether the document as it stands changed.
    fn hide(&mut self, hidden: BTreeSet<ChangeHash>) -> Result<bool, automerge::AutomergeError> {
        if hidden.is_empty() {
            self.hidden.clear();
            return Ok(self.standing.take().is_some());
        }
        let before = self.view_mut().get_heads();
        // The same changes hidden: bring the standing document up to date with what was
        // applied since; otherwise build it again from nothing. Either way it takes the changes
        // after its heads but for the hidden ones.
        let reuse = hidden == self.hidden && self.standing.is_some();
        let mut standing = match self.standing.take() {
            Some(standing) if reuse => standing,
            old => {
                self.standing = old;
                AutoCommit::new().with_actor(self.doc.get_actor().clone())
            }
        };
        let heads = standing.get_heads();
        let new: Vec<Change> = self
            .doc
            .get_changes(&heads)
            .into_iter()
            .filter(|c| !hidden.contains(&c.hash()))
            .collect();
        let applied = standing.apply_changes(new);
        // A new standing document replaces the one before only once it is built; one brought
        // up to date stays, with what of the new changes it took (none of them hidden).
        if reuse || applied.is_ok() {
            self.hidden = hidden;
            self.standing = Some(standing);
        }
        applied?;
        Ok(self.view_mut().get_heads() != before)
    }

    fn sealed_with(mut self, seal: Option<Arc<LocalSeal>>) -> DocState {
        self.seal = seal;
        self
    }

    /// Counts a contribution just stored (its write queued) as the next seq.
    fn push(&mut self, hash: ChangeHash) -> u64 {
        self.last_seq += 1;
        if let Some(index) = &mut self.index {
            index.insert(hash, self.last_seq);
        }
        self.last_seq
    }
}

/// The seq of each of a document's stored contributions, by change hash. Costs a read of the
/// document's contributions and a hash of each change header; a node builds it only for the
/// documents peers ask about by hash, once.
fn hash_index<S: Storage>(
    store: &Store<S>,
    keyring: &Keyring,
    space: &SpaceId,
    doc: &DocId,
) -> Result<HashMap<ChangeHash, u64>, StoreError> {
    store
        .contributions_of(space, doc, 0)?
        .into_iter()
        .map(|(seq, bytes)| {
            let (_, plain) = keyring.read(&bytes).map_err(corrupt)?;
            let (hash, _) = change_preview(&plain.change)
                .ok_or_else(|| corrupt("a change header does not parse"))?;
            Ok((hash, seq))
        })
        .collect()
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
fn changes_of(
    keyring: &Keyring,
    tail: &[(u64, Vec<u8>)],
) -> Result<(Vec<Change>, Option<DocKind>), StoreError> {
    let mut kind = None;
    let mut changes = Vec::with_capacity(tail.len());
    for (_, bytes) in tail {
        let (_, plain) = keyring.read(bytes).map_err(corrupt)?;
        kind = Some(plain.kind);
        changes.push(Change::from_bytes(plain.change).map_err(corrupt)?);
    }
    Ok((changes, kind))
}

/// The node's replica (see the module docs of `replica`).
pub struct AutomergeReplica<S> {
    store: Store<S>,
    identity: Identity,
    author: AuthorId,
    actor_nonce: [u8; 16],
    spaces: BTreeMap<SpaceId, BTreeMap<DocId, DocState>>,
    /// Which space each idea lives in (idea ids are global).
    idea_space: HashMap<DocId, SpaceId>,
    contributions: u64,
    /// The content keys of the private spaces held.
    keyring: Keyring,
    /// What this node seals its snapshots of private documents with.
    local: Arc<LocalSeal>,
}

impl<S: Storage> AutomergeReplica<S> {
    /// Loads the documents of `spaces` from the store: each from its latest snapshot plus the
    /// contributions after it (a private space's opened with the keys of `keyring`).
    /// `actor_nonce` must be fresh random bytes for this process start.
    pub fn open(
        store: Store<S>,
        identity: Identity,
        actor_nonce: [u8; 16],
        spaces: impl IntoIterator<Item = SpaceId>,
        keyring: Keyring,
    ) -> Result<Self, StoreError> {
        let author = identity.author();
        let local = Arc::new(LocalSeal {
            cipher: keys::local_cipher(&identity),
            nonce_key: keys::local_nonce_key(&identity),
        });
        let mut r = AutomergeReplica {
            store,
            identity,
            author,
            actor_nonce,
            spaces: spaces.into_iter().map(|s| (s, BTreeMap::new())).collect(),
            idea_space: HashMap::new(),
            contributions: 0,
            keyring,
            local,
        };
        for stored in r.store.load_docs()? {
            let seal = r.seal_for(&stored.space);
            let Some(docs) = r.spaces.get_mut(&stored.space) else {
                continue;
            };
            let mut doc = match &stored.snapshot {
                Some((seq, saved)) => {
                    let opened;
                    let saved = match &seal {
                        Some(cipher) => {
                            opened = open_snapshot(
                                &cipher.cipher,
                                &stored.space,
                                &stored.doc,
                                *seq,
                                saved,
                            )?;
                            &opened
                        }
                        None => saved,
                    };
                    AutoCommit::load(saved).map_err(|e| StoreError::Corrupt {
                        tree: "snapshots",
                        detail: e.to_string(),
                    })?
                }
                None => AutoCommit::new(),
            }
            .with_actor(idea::actor_for(&author, &actor_nonce));
            let (changes, _) = changes_of(&r.keyring, &stored.tail)?;
            doc.apply_changes(changes).map_err(corrupt)?;
            let snapshot_seq = stored.snapshot.as_ref().map_or(0, |(s, _)| *s);
            let last_seq = stored.tail.last().map_or(snapshot_seq, |(s, _)| *s);
            if stored.kind == DocKind::Idea {
                r.idea_space.insert(stored.doc, stored.space);
            }
            r.contributions += last_seq;
            docs.insert(
                stored.doc,
                DocState::new(stored.kind, doc, last_seq, snapshot_seq).sealed_with(seal),
            );
        }
        Ok(r)
    }

    /// The cipher of a space's snapshots: this node's local one for a private space.
    fn seal_for(&self, space: &SpaceId) -> Option<Arc<LocalSeal>> {
        self.keyring
            .is_private(space)
            .then(|| Arc::clone(&self.local))
    }

    /// The store it reads.
    pub fn store(&self) -> &Store<S> {
        &self.store
    }

    fn new_doc(&self) -> AutoCommit {
        AutoCommit::new().with_actor(idea::actor_for(&self.author, &self.actor_nonce))
    }

    fn state(&self, space: &SpaceId, doc: &DocId) -> Option<&DocState> {
        self.spaces.get(space)?.get(doc)
    }

    fn state_mut(&mut self, space: &SpaceId, doc: &DocId) -> Option<&mut DocState> {
        self.spaces.get_mut(space)?.get_mut(doc)
    }

    /// Rebuilds a document from all its stored contributions (or forgets it if none are).
    fn reload(&mut self, space: SpaceId, doc: DocId) -> Result<(), StoreError> {
        let fresh = self.new_doc();
        let seal = self.seal_for(&space);
        let Some(docs) = self.spaces.get_mut(&space) else {
            return Ok(());
        };
        if let Some(old) = docs.remove(&doc) {
            self.contributions -= old.last_seq;
        }
        let tail = self.store.contributions_of(&space, &doc, 0)?;
        if tail.is_empty() {
            self.idea_space.remove(&doc);
            return Ok(());
        }
        let mut d = fresh;
        let (changes, kind) = changes_of(&self.keyring, &tail)?;
        d.apply_changes(changes).map_err(corrupt)?;
        let last_seq = tail.last().map_or(0, |(s, _)| *s);
        self.contributions += last_seq;
        docs.insert(
            doc,
            DocState::new(kind.unwrap_or(DocKind::Idea), d, last_seq, 0).sealed_with(seal),
        );
        Ok(())
    }

    fn maybe_snapshot(state: &mut DocState, space: &SpaceId, doc: &DocId, writes: &mut Vec<Write>) {
        // Saving costs time proportional to the document, replaying a tail at start-up costs
        // time proportional to the tail: snapshot when the tail reaches a quarter of the
        // document (and at least SNAPSHOT_EVERY), which keeps both amortised O(1) per change.
        let threshold = SNAPSHOT_EVERY.max(state.snapshot_seq / 4);
        if state.last_seq - state.snapshot_seq >= threshold {
            Self::snapshot(state, space, doc, writes);
        }
    }

    /// Appends a snapshot of the document as it is now, covering its contributions so far.
    fn snapshot(state: &mut DocState, space: &SpaceId, doc: &DocId, writes: &mut Vec<Write>) {
        let saved = state.doc.save();
        let saved = match &state.seal {
            Some(cipher) => seal_snapshot(cipher, space, doc, state.last_seq, &saved),
            None => saved,
        };
        writes.push(Write::snapshot(space, doc, state.last_seq, &saved));
        state.snapshot_seq = state.last_seq;
    }

    /// Applies one by one, after a batch apply failed, to a document rebuilt from the store, so
    /// that only the changes Automerge refuses are refused.
    fn apply_one_by_one(
        &mut self,
        space: SpaceId,
        doc: DocId,
        items: &[(ChangeHash, Vec<u8>)],
    ) -> Vec<Result<(), Rejection>> {
        let mut fresh = self.new_doc();
        let stored = self
            .store
            .contributions_of(&space, &doc, 0)
            .and_then(|tail| changes_of(&self.keyring, &tail))
            .map(|(changes, _)| changes)
            .unwrap_or_default();
        let _ = fresh.apply_changes(stored);
        let results = items
            .iter()
            .map(|(hash, bytes)| {
                // These bytes decoded and their change parsed when they were verified.
                self.keyring
                    .read(bytes)
                    .map_err(|e| e.to_string())
                    .and_then(|(_, p)| Change::from_bytes(p.change).map_err(|e| e.to_string()))
                    .and_then(|ch| fresh.apply_changes([ch]).map_err(|e| e.to_string()))
                    // Automerge queues a change whose dependencies it lacks and reports
                    // success: one that depends on a change refused just before is not in the
                    // document, and must not be stored as if it were.
                    .and_then(|()| match fresh.get_change_meta_by_hash(hash) {
                        Some(_) => Ok(()),
                        None => Err("it depends on a change that was refused".to_string()),
                    })
                    .map_err(Rejection::Inapplicable)
            })
            .collect();
        if let Some(state) = self.state_mut(&space, &doc) {
            state.doc = fresh;
        }
        results
    }
}

impl<S: Storage> Replica for AutomergeReplica<S> {
    type Decoded = Decoded;
    type Item = Verified;

    fn author(&self) -> AuthorId {
        self.author
    }

    fn add_space(&mut self, space: SpaceId) {
        self.spaces.entry(space).or_default();
    }

    fn set_keys(&mut self, space: SpaceId, keys: SpaceKeys) {
        self.add_space(space);
        self.keyring.set(space, keys);
    }

    fn decode(&self, bytes: Vec<u8>) -> Result<Decoded, Rejection> {
        if is_sealed(&bytes) {
            let envelope = Envelope::decode(&bytes)?;
            let (space, cipher) = self
                .keyring
                .get(&envelope.key_id)
                .ok_or(Rejection::UnknownKey)?;
            let plain = envelope.unseal(space, cipher)?;
            let key_id = envelope.key_id;
            return Ok(Decoded::Sealed {
                key_id,
                space: *space,
                plain,
                bytes,
            });
        }
        let contribution = Contribution::decode(&bytes)?;
        Ok(Decoded::Plain {
            contribution,
            bytes,
        })
    }

    fn place_of(decoded: &Decoded) -> (SpaceId, DocId) {
        match decoded {
            Decoded::Plain { contribution, .. } => (contribution.space, contribution.doc),
            Decoded::Sealed { space, plain, .. } => (*space, plain.doc),
        }
    }

    fn sealed(decoded: &Decoded) -> bool {
        matches!(decoded, Decoded::Sealed { .. })
    }

    fn verify(batch: Vec<Decoded>) -> Vec<Result<Verified, Rejection>> {
        let mut results: Vec<Option<Result<Verified, Rejection>>> =
            (0..batch.len()).map(|_| None).collect();
        let mut plain = Vec::new();
        let mut sealed = Vec::new();
        for (i, d) in batch.into_iter().enumerate() {
            match d {
                Decoded::Plain {
                    contribution,
                    bytes,
                } => plain.push((i, contribution, bytes)),
                Decoded::Sealed {
                    key_id,
                    space,
                    plain,
                    bytes,
                } => sealed.push((i, key_id, space, plain, bytes)),
            }
        }
        if !plain.is_empty() {
            let (slots, rest): (Vec<usize>, Vec<(Contribution, Vec<u8>)>) =
                plain.into_iter().map(|(i, c, b)| (i, (c, b))).unzip();
            let (contributions, bytes): (Vec<Contribution>, Vec<Vec<u8>>) =
                rest.into_iter().unzip();
            for ((i, result), bytes) in slots
                .into_iter()
                .zip(verify_batch(contributions))
                .zip(bytes)
            {
                results[i] = Some(result.map(|v| Verified::new(v, bytes)));
            }
        }
        if !sealed.is_empty() {
            let signed: Vec<(&Plaintext, SpaceId, KeyId)> = sealed
                .iter()
                .map(|(_, key_id, space, plain, _)| (plain, *space, *key_id))
                .collect();
            let signatures = sealed::verify_signatures(&signed);
            for ((i, _, space, plain, bytes), signature) in sealed.into_iter().zip(signatures) {
                results[i] = Some(signature.and_then(|()| {
                    let change =
                        check_change(&space, &plain.doc, plain.kind, &plain.author, &plain.change)?;
                    Ok(Verified {
                        space,
                        doc: plain.doc,
                        kind: plain.kind,
                        author: plain.author,
                        change,
                        bytes,
                    })
                }));
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(Rejection::Malformed("not verified".into()))))
            .collect()
    }

    const ADOPTS: bool = true;

    fn adopt(verified: VerifiedContribution, bytes: Vec<u8>) -> Option<Verified> {
        Some(Verified::new(verified, bytes))
    }

    fn preview(&self, bytes: &[u8]) -> Option<(DocId, ChangeHash, Vec<ChangeHash>)> {
        let (_, plain) = self.keyring.read(bytes).ok()?;
        let (hash, deps) = change_preview(&plain.change)?;
        Some((plain.doc, hash, deps))
    }

    fn apply(
        &mut self,
        space: SpaceId,
        doc: DocId,
        kind: DocKind,
        items: Vec<Verified>,
        writes: &mut Vec<Write>,
    ) -> Vec<Result<(), Rejection>> {
        let fresh = self.new_doc();
        let seal = self.seal_for(&space);
        let Some(docs) = self.spaces.get_mut(&space) else {
            return items.iter().map(|_| Err(Rejection::UnknownSpace)).collect();
        };
        let is_new = !docs.contains_key(&doc);
        let state = docs
            .entry(doc)
            .or_insert_with(|| DocState::new(kind, fresh, 0, 0).sealed_with(seal));
        let mut metas: Vec<(ChangeHash, Vec<u8>)> = Vec::with_capacity(items.len());
        let mut changes = Vec::with_capacity(items.len());
        let mut authors = Vec::with_capacity(items.len());
        for it in items {
            metas.push((it.change.hash(), it.bytes));
            authors.push(it.author);
            changes.push(it.change);
        }
        let results = match state.doc.apply_changes(changes) {
            Ok(()) => vec![Ok(()); metas.len()],
            Err(e) => {
                // Rare: a validly signed change that Automerge refuses (e.g. an author who
                // reused a sequence number).
                tracing::warn!(target: "agora::engine", %space, %doc, %e, "batch apply failed; retrying one by one");
                self.apply_one_by_one(space, doc, &metas)
            }
        };
        let Some(state) = self.state_mut(&space, &doc) else {
            return results;
        };
        let mut accepted = 0;
        let doc_write = writes.len();
        if is_new {
            writes.push(Write::doc(&space, &doc, kind));
        }
        for (((hash, bytes), r), author) in metas.into_iter().zip(&results).zip(authors) {
            if r.is_ok() {
                accepted += 1;
                state.note_author(author);
                let seq = state.push(hash);
                writes.push(Write::contribution(&space, &doc, seq, bytes));
            }
        }
        if accepted == 0 && is_new {
            // Nothing applied: a document we did not hold stays unknown (no empty document in
            // memory, in heads or on disk).
            writes.truncate(doc_write);
            if let Some(docs) = self.spaces.get_mut(&space) {
                docs.remove(&doc);
            }
            return results;
        }
        Self::maybe_snapshot(state, &space, &doc, writes);
        self.contributions += accepted;
        if is_new && kind == DocKind::Idea {
            self.idea_space.insert(doc, space);
        }
        results
    }

    fn edit(
        &mut self,
        space: SpaceId,
        doc: DocId,
        kind: DocKind,
        edit: &Edit,
        now_ms: i64,
        nonce: [u8; 24],
        writes: &mut Vec<Write>,
    ) -> Result<Option<Vec<u8>>, ServiceError> {
        let fresh = self.new_doc();
        let author = self.author;
        if matches!(self.keyring.sealing(&space), Sealing::NoKey) {
            return Err(ServiceError::Membership(
                "this node does not hold the space's current key".into(),
            ));
        }
        let seal = self.seal_for(&space);
        let docs = self
            .spaces
            .get_mut(&space)
            .ok_or(ServiceError::UnknownSpace(space))?;
        let is_new = !docs.contains_key(&doc);
        let state = docs
            .entry(doc)
            .or_insert_with(|| DocState::new(kind, fresh, 0, 0).sealed_with(seal));
        // Built on the document as it stands: an edit never builds on (and so keeps) a change
        // the membership whites out.
        let d = state.view_mut();
        let made = match edit {
            Edit::CreateIdea { draft, salt } => idea::create_idea(d, draft, &author, salt, now_ms),
            Edit::Comment { text } => idea::add_comment(d, &author, text, now_ms),
            Edit::Vote { vote } => idea::cast_vote(d, &author, *vote, now_ms),
            Edit::Status { status } => idea::set_status(d, *status, now_ms),
            Edit::DisplayName { name } => idea::set_display_name(d, name, now_ms),
        };
        let change = match made {
            Ok(c) => c,
            Err(e) => {
                let unchanged = e == idea::SchemaError::Unchanged;
                if !unchanged {
                    state.view_mut().rollback();
                }
                if is_new {
                    docs.remove(&doc);
                }
                // Nothing changed (the same vote again): nothing to sign, store or send.
                return if unchanged { Ok(None) } else { Err(e.into()) };
            }
        };
        let bytes = match self.keyring.sealing(&space) {
            Sealing::Key(key_id, cipher) => Envelope::seal(
                &self.identity,
                &space,
                key_id,
                cipher,
                &doc,
                kind,
                change.raw_bytes(),
                nonce,
            )
            .encode(),
            _ => Contribution::sign(&self.identity, space, doc, kind, &change).encode(),
        };
        if state.standing.is_some() {
            if let Err(e) = state.doc.apply_changes([change.clone()]) {
                // Its dependencies are all in the document (it was made on a subset of it), so
                // only a clash with a hidden change of this very actor can refuse it, which the
                // write rule does not allow while this node may edit. Refused, not stored; the
                // standing document (which took it) is rebuilt from the whole one.
                tracing::error!(target: "agora::engine", %space, %doc, %e, "a local edit does not apply to the whole document");
                let hidden = std::mem::take(&mut state.hidden);
                state.standing = None;
                if let Err(e) = state.hide(hidden) {
                    tracing::error!(target: "agora::engine", %space, %doc, %e, "the document without its whited-out changes does not build");
                }
                return Err(ServiceError::Membership(
                    "this edit conflicts with a change the membership hides; try again".into(),
                ));
            }
        }
        state.note_author(author);
        let seq = state.push(change.hash());
        if is_new {
            writes.push(Write::doc(&space, &doc, kind));
        }
        writes.push(Write::contribution(&space, &doc, seq, bytes.clone()));
        Self::maybe_snapshot(state, &space, &doc, writes);
        self.contributions += 1;
        if is_new && kind == DocKind::Idea {
            self.idea_space.insert(doc, space);
        }
        Ok(Some(bytes))
    }

    fn revert(&mut self, docs: &[(SpaceId, DocId)]) -> Result<(), StoreError> {
        for (space, doc) in docs {
            self.reload(*space, *doc)?;
        }
        Ok(())
    }

    fn checkpoint(&mut self, writes: &mut Vec<Write>) {
        for (space, docs) in &mut self.spaces {
            for (doc, state) in docs.iter_mut() {
                if state.last_seq > state.snapshot_seq {
                    Self::snapshot(state, space, doc, writes);
                }
            }
        }
    }

    fn doc_kind(&self, space: &SpaceId, doc: &DocId) -> Option<DocKind> {
        self.state(space, doc).map(|s| s.kind)
    }

    fn docs(&self, space: &SpaceId) -> Vec<DocId> {
        self.spaces
            .get(space)
            .map(|d| d.keys().copied().collect())
            .unwrap_or_default()
    }

    fn heads(&mut self, space: &SpaceId, doc: &DocId) -> Vec<ChangeHash> {
        let mut h = self
            .state_mut(space, doc)
            .map(|s| s.view_mut().get_heads())
            .unwrap_or_default();
        h.sort();
        h
    }

    fn missing(&mut self, space: &SpaceId, doc: &DocId, hashes: &[ChangeHash]) -> Vec<ChangeHash> {
        match self.state_mut(space, doc) {
            Some(s) => s.doc.get_missing_deps(hashes),
            None => hashes.to_vec(),
        }
    }

    fn changes_after(
        &mut self,
        space: &SpaceId,
        doc: &DocId,
        have: &[ChangeHash],
    ) -> Vec<ChangeHash> {
        self.state_mut(space, doc)
            .map(|s| {
                let have = s.standing_have(have);
                s.view_mut()
                    .get_changes_meta(&have)
                    .into_iter()
                    .map(|m| m.hash)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn stored(
        &mut self,
        space: &SpaceId,
        doc: &DocId,
        hash: &ChangeHash,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(state) = self.spaces.get_mut(space).and_then(|d| d.get_mut(doc)) else {
            return Ok(None);
        };
        let seq = match &state.index {
            Some(index) => index.get(hash).copied(),
            None => {
                let index = hash_index(&self.store, &self.keyring, space, doc)?;
                let seq = index.get(hash).copied();
                // Kept only if it covers every contribution held: one whose write is still
                // queued in the service's outbox (not yet in the store) would be missing from
                // it for good.
                if index.len() as u64 == state.last_seq {
                    state.index = Some(index);
                }
                seq
            }
        };
        match seq {
            Some(seq) => self.store.contribution(space, doc, seq),
            None => Ok(None),
        }
    }

    fn stored_after(
        &mut self,
        space: &SpaceId,
        doc: &DocId,
        have: &[ChangeHash],
        max_bytes: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let hides = self.state(space, doc).is_some_and(|s| s.standing.is_some());
        if !have.is_empty() || hides {
            return super::stored_by_hash(self, space, doc, have, max_bytes);
        }
        // Everything: the document's contributions in the order they were applied (a causal
        // order: ingest applies a change only after its dependencies), read as one range,
        // only as far as the budget goes, instead of a hash lookup and a read per change.
        self.store.contributions_upto(space, doc, max_bytes)
    }

    fn pins_for(
        &mut self,
        space: &SpaceId,
        author: &AuthorId,
        max: usize,
    ) -> Vec<(DocId, Vec<ChangeHash>)> {
        let Some(docs) = self.spaces.get_mut(space) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (doc, state) in docs.iter_mut() {
            if out.len() >= max {
                break;
            }
            // An author's own profile and ideas are named after it; other documents (others'
            // ideas it commented or voted on) are found by the actors of their changes.
            let touched = *doc == DocId::profile(space, author)
                || state
                    .view_mut()
                    .get_changes_meta(&[])
                    .iter()
                    .any(|c| idea::author_of_actor(&c.actor) == Some(*author));
            if touched {
                let mut heads = state.view_mut().get_heads();
                heads.sort();
                out.push((*doc, heads));
            }
        }
        out
    }

    fn authors(&mut self, space: &SpaceId, doc: &DocId) -> Vec<AuthorId> {
        let Some(state) = self.state_mut(space, doc) else {
            return Vec::new();
        };
        let authors = state.authors.get_or_insert_with(|| {
            state
                .doc
                .get_changes_meta(&[])
                .iter()
                .filter_map(|c| idea::author_of_actor(&c.actor))
                .collect()
        });
        authors.iter().copied().collect()
    }

    fn take_fresh_authors(&mut self, space: &SpaceId, doc: &DocId) -> Vec<AuthorId> {
        self.state_mut(space, doc)
            .map(|s| std::mem::take(&mut s.fresh))
            .unwrap_or_default()
    }

    fn hides(&self, space: &SpaceId, doc: &DocId) -> bool {
        self.state(space, doc).is_some_and(|s| s.standing.is_some())
    }

    fn change_infos(&mut self, space: &SpaceId, doc: &DocId) -> Vec<ChangeInfo> {
        let Some(state) = self.state_mut(space, doc) else {
            return Vec::new();
        };
        state
            .doc
            .get_changes_meta(&[])
            .into_iter()
            .filter_map(|c| {
                Some(ChangeInfo {
                    author: idea::author_of_actor(&c.actor)?,
                    hash: c.hash,
                    deps: c.deps,
                })
            })
            .collect()
    }

    fn set_hidden(&mut self, space: &SpaceId, doc: &DocId, hidden: BTreeSet<ChangeHash>) -> bool {
        let Some(state) = self.state_mut(space, doc) else {
            return false;
        };
        if hidden.is_empty() && state.standing.is_none() {
            return false;
        }
        match state.hide(hidden) {
            Ok(changed) => changed,
            Err(e) => {
                // The hidden set comes from the write rule, which keeps what remains closed
                // under dependencies: Automerge has nothing to refuse.
                tracing::error!(target: "agora::engine", %space, %doc, %e, "the document without its whited-out changes does not build");
                false
            }
        }
    }

    fn contributions(&self) -> u64 {
        self.contributions
    }

    fn contains_bytes(&self, bytes: &[u8]) -> bool {
        self.store.contains_bytes(bytes).unwrap_or(false)
    }

    fn idea_space(&self, idea: &DocId) -> Option<SpaceId> {
        self.idea_space.get(idea).copied()
    }

    fn idea_count(&self, space: &SpaceId) -> usize {
        self.spaces.get(space).map_or(0, |docs| {
            docs.values().filter(|d| d.kind == DocKind::Idea).count()
        })
    }

    fn idea(&self, space: &SpaceId, id: &DocId) -> Option<Idea> {
        let state = self.state(space, id)?;
        (state.kind == DocKind::Idea)
            .then(|| idea::read_idea(state.view(), *space, *id))
            .flatten()
    }

    fn ideas(&self, space: &SpaceId) -> Vec<Idea> {
        let Some(docs) = self.spaces.get(space) else {
            return Vec::new();
        };
        docs.iter()
            .filter(|(_, d)| d.kind == DocKind::Idea)
            .filter_map(|(id, d)| idea::read_idea(d.view(), *space, *id))
            .collect()
    }

    fn display_names(&self, space: &SpaceId) -> BTreeMap<AuthorId, String> {
        let Some(docs) = self.spaces.get(space) else {
            return BTreeMap::new();
        };
        docs.iter()
            .filter(|(_, d)| d.kind == DocKind::Profile)
            .filter_map(|(id, d)| idea::read_profile(d.view(), space, id))
            .collect()
    }
}
