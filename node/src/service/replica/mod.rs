//! The replica: what a node holds of each space's documents, behind one trait so that the
//! service's logic (ingest, the pending set, local edits, sync) runs unchanged on the real
//! thing and on a model.
//!
//! - [`AutomergeReplica`]: the node's replica. Every document is an Automerge document in
//!   memory, rebuilt at start-up from its latest snapshot and the contributions after it; every
//!   contribution is fully verified (signature, actor, write rules) before it is applied;
//!   snapshots are written when a document's tail grows.
//! - A model replica (in the test kit's simulation) keeps only the contribution DAG: hashes and
//!   dependencies, no content.
//!
//! The replica never writes to the store itself: it appends [`Write`]s to the list it is given,
//! which the engine applies and flushes. It reads the store directly (start-up, sync answers).

mod automerge;

pub use self::automerge::AutomergeReplica;

use super::ServiceError;
use crate::store::{StoreError, Write};
use agora_protocol::automerge::ChangeHash;
use agora_protocol::idea::{Idea, IdeaDraft, Status, Vote};
use agora_protocol::keys::{KeyId, XChaCha20Poly1305};
use agora_protocol::membership::ChangeInfo;
use agora_protocol::sealed::{Envelope, Plaintext};
use agora_protocol::{
    AuthorId, Contribution, DocId, DocKind, Rejection, SpaceId, VerifiedContribution,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The content keys of one private space, as the membership gives them to a member.
#[derive(Clone, Default)]
pub struct SpaceKeys {
    /// Every epoch's content cipher the member holds, by key id.
    pub ciphers: Vec<(KeyId, XChaCha20Poly1305)>,
    /// The current epoch (what new contributions are sealed under), if the member holds it.
    pub current: Option<KeyId>,
}

/// The content keys of every private space a replica holds: how a sealed contribution finds its
/// space (by key id, the only name it carries) and how a local edit is sealed.
#[derive(Clone, Default)]
pub struct Keyring {
    by_id: HashMap<KeyId, (SpaceId, XChaCha20Poly1305)>,
    current: HashMap<SpaceId, Option<KeyId>>,
}

/// How a local edit to a space travels.
pub enum Sealing<'a> {
    /// An open space: a version 1 contribution.
    Open,
    /// A private space: sealed under this epoch.
    Key(KeyId, &'a XChaCha20Poly1305),
    /// A private space whose current key this member does not hold.
    NoKey,
}

impl Keyring {
    /// Takes in a private space's keys (they only grow; the current one is replaced). A key id
    /// another space held here already uses stays that space's: a space whose membership reuses
    /// another's secret (an insider who holds both could rotate to it) cannot have its traffic
    /// opened, nor this node's edits sealed, as the other's; its own traffic under that key is
    /// then refused here (a denial of service to that space, not a disclosure).
    pub fn set(&mut self, space: SpaceId, keys: SpaceKeys) {
        for (id, cipher) in keys.ciphers {
            match self.by_id.get(&id) {
                Some((held, _)) if *held != space => {
                    tracing::warn!(target: "agora::engine", %space, other = %held, "a key id of this space is another space's; ignored");
                }
                _ => {
                    self.by_id.insert(id, (space, cipher));
                }
            }
        }
        self.current.insert(space, keys.current);
    }

    /// The space and cipher of a key id.
    pub fn get(&self, key: &KeyId) -> Option<&(SpaceId, XChaCha20Poly1305)> {
        self.by_id.get(key)
    }

    /// Whether `space` is a private space.
    pub fn is_private(&self, space: &SpaceId) -> bool {
        self.current.contains_key(space)
    }

    /// How an edit to `space` is sealed.
    pub fn sealing(&self, space: &SpaceId) -> Sealing<'_> {
        match self.current.get(space) {
            None => Sealing::Open,
            Some(Some(id)) => match self.by_id.get(id) {
                Some((held, cipher)) if held == space => Sealing::Key(*id, cipher),
                _ => Sealing::NoKey,
            },
            Some(None) => Sealing::NoKey,
        }
    }

    /// Reads encoded contribution bytes of either version: the space, document, kind and raw
    /// change. A sealed one is decrypted with the key its id names (no signature is checked:
    /// this is for bytes verified before, and for previews).
    pub fn read(&self, bytes: &[u8]) -> Result<(SpaceId, Plaintext), Rejection> {
        if is_sealed(bytes) {
            let e = Envelope::decode(bytes)?;
            let (space, cipher) = self.get(&e.key_id).ok_or(Rejection::UnknownKey)?;
            Ok((*space, e.unseal(space, cipher)?))
        } else {
            let c = Contribution::decode(bytes)?;
            Ok((
                c.space,
                Plaintext {
                    author: c.author,
                    doc: c.doc,
                    kind: c.kind,
                    change: c.change,
                    signature: c.signature,
                },
            ))
        }
    }
}

/// Whether encoded bytes are a sealed (version 2) envelope: a CBOR map of four entries, where a
/// version 1 contribution has seven.
pub fn is_sealed(bytes: &[u8]) -> bool {
    agora_protocol::sealed::is_sealed(bytes)
}

/// A verified contribution, ready to be applied.
pub trait Item {
    /// Its space.
    fn space(&self) -> SpaceId;
    /// Its document.
    fn doc(&self) -> DocId;
    /// Its author (who signed it).
    fn author(&self) -> AuthorId;
    /// The kind of its document.
    fn kind(&self) -> DocKind;
    /// The hash of its change (its identity inside the document).
    fn hash(&self) -> ChangeHash;
    /// The hashes of the changes it depends on.
    fn deps(&self) -> &[ChangeHash];
    /// Bytes it occupies in memory while it waits in the pending set.
    fn size(&self) -> usize;
}

/// A local edit, as the replica carries it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Create an idea with this salt (the document id is `DocId::idea(space, author, salt)`).
    CreateIdea {
        /// What was typed.
        draft: IdeaDraft,
        /// 16 random bytes.
        salt: [u8; 16],
    },
    /// Append a comment.
    Comment {
        /// The text.
        text: String,
    },
    /// Cast (or change) this author's vote.
    Vote {
        /// The vote.
        vote: Vote,
    },
    /// Change the status.
    Status {
        /// The new status.
        status: Status,
    },
    /// Set this author's display name in their profile document.
    DisplayName {
        /// The name.
        name: String,
    },
}

/// What a node holds of its spaces' documents. See the module docs.
pub trait Replica {
    /// A contribution that decoded (its bounds, shape and canonical form hold), not yet
    /// verified.
    type Decoded: Send;
    /// A verified contribution.
    type Item: Item + Send;

    /// This replica's author (who signs local edits).
    fn author(&self) -> AuthorId;

    /// Starts holding a space (joined now or at start-up).
    fn add_space(&mut self, space: SpaceId);

    /// Takes in the keys of a private space (and starts holding it): its sealed contributions
    /// are opened, and its local edits sealed, with them. A replica that holds no content (the
    /// model) only holds the space.
    fn set_keys(&mut self, space: SpaceId, keys: SpaceKeys) {
        let _ = keys;
        self.add_space(space);
    }

    /// Decodes untrusted bytes (size, shape, version, canonical form).
    fn decode(&self, bytes: Vec<u8>) -> Result<Self::Decoded, Rejection>;
    /// The space and document a decoded contribution names.
    fn place_of(decoded: &Self::Decoded) -> (SpaceId, DocId);
    /// Whether a decoded contribution is sealed (version 2).
    fn sealed(decoded: &Self::Decoded) -> bool {
        let _ = decoded;
        false
    }
    /// Verifies a batch (signatures, actor = signer, write rules). Results in input order.
    ///
    /// A pure function of its input (it sees no replica state), so that the service can run it
    /// on another thread while it applies what was verified before (see `ingest`).
    fn verify(batch: Vec<Self::Decoded>) -> Vec<Result<Self::Item, Rejection>>;
    /// Whether [`Replica::adopt`] takes contributions the shell verified (see `Checked`).
    const ADOPTS: bool = false;
    /// The item for a contribution verified elsewhere, with its encoded bytes (`None`: this
    /// replica verifies everything itself).
    fn adopt(verified: VerifiedContribution, bytes: Vec<u8>) -> Option<Self::Item> {
        let _ = (verified, bytes);
        None
    }
    /// The document, hash and dependencies named by encoded contribution bytes, read without
    /// verifying anything (to plan the next sync request before a batch is ingested).
    fn preview(&self, bytes: &[u8]) -> Option<(DocId, ChangeHash, Vec<ChangeHash>)>;
    /// Applies verified contributions to one document (created with `kind` if it is new), in
    /// the order given (dependencies first). Appends the writes that store the accepted ones.
    /// One result per item.
    fn apply(
        &mut self,
        space: SpaceId,
        doc: DocId,
        kind: DocKind,
        items: Vec<Self::Item>,
        writes: &mut Vec<Write>,
    ) -> Vec<Result<(), Rejection>>;
    /// Makes a local edit, signs it (sealed with `nonce` in a private space) and appends the
    /// writes that store it. Returns the encoded contribution to publish, or `None` when the
    /// edit changed nothing.
    #[allow(clippy::too_many_arguments)]
    fn edit(
        &mut self,
        space: SpaceId,
        doc: DocId,
        kind: DocKind,
        edit: &Edit,
        now_ms: i64,
        nonce: [u8; 24],
        writes: &mut Vec<Write>,
    ) -> Result<Option<Vec<u8>>, ServiceError>;
    /// Forgets the in-memory state of these documents and reloads them from the store (after a
    /// failed flush, so that memory does not hold what the disk may not).
    fn revert(&mut self, docs: &[(SpaceId, DocId)]) -> Result<(), StoreError>;
    /// Appends a snapshot of every document whose tail is not in one (at shutdown).
    fn checkpoint(&mut self, writes: &mut Vec<Write>);

    /// The kind of a document held, `None` if it is not held.
    fn doc_kind(&self, space: &SpaceId, doc: &DocId) -> Option<DocKind>;
    /// The documents held in a space, in id order.
    fn docs(&self, space: &SpaceId) -> Vec<DocId>;
    /// A document's heads, sorted (empty if it is not held).
    fn heads(&mut self, space: &SpaceId, doc: &DocId) -> Vec<ChangeHash>;
    /// Calls `f` with every held document of a space that has heads, in id order, with its
    /// heads sorted (what digests and `Heads` answers are made of).
    fn visit_heads(&mut self, space: &SpaceId, f: &mut dyn FnMut(&DocId, &[ChangeHash])) {
        for doc in self.docs(space) {
            let heads = self.heads(space, &doc);
            if !heads.is_empty() {
                f(&doc, &heads);
            }
        }
    }
    /// Whether the document holds the change `hash` (and so all its ancestors).
    fn holds(&mut self, space: &SpaceId, doc: &DocId, hash: &ChangeHash) -> bool {
        self.missing(space, doc, &[*hash]).is_empty()
    }
    /// Which of `hashes` (with their ancestors) the document lacks: empty exactly when it holds
    /// all of them. For a document not held, all of them.
    fn missing(&mut self, space: &SpaceId, doc: &DocId, hashes: &[ChangeHash]) -> Vec<ChangeHash>;
    /// The changes held that are neither in `have` nor ancestors of it, in causal order.
    fn changes_after(
        &mut self,
        space: &SpaceId,
        doc: &DocId,
        have: &[ChangeHash],
    ) -> Vec<ChangeHash>;
    /// The stored encoded contribution of a change held.
    fn stored(
        &mut self,
        space: &SpaceId,
        doc: &DocId,
        hash: &ChangeHash,
    ) -> Result<Option<Vec<u8>>, StoreError>;
    /// The stored encoded contributions of the changes held that are not in `have` nor
    /// ancestors of it, in causal order (what a sync answer sends for a document), up to the
    /// first one that takes their total past `max_bytes`.
    fn stored_after(
        &mut self,
        space: &SpaceId,
        doc: &DocId,
        have: &[ChangeHash],
        max_bytes: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        stored_by_hash(self, space, doc, have, max_bytes)
    }
    /// What a removal or demotion of `author` in `space` pins (PROTOCOL §14.7): each document
    /// the author has changes in, with its heads now (so that every change of the author held
    /// now stays), at most `max` documents. A replica that holds no content pins nothing.
    fn pins_for(
        &mut self,
        space: &SpaceId,
        author: &AuthorId,
        max: usize,
    ) -> Vec<(DocId, Vec<ChangeHash>)> {
        let _ = (space, author, max);
        Vec::new()
    }
    /// The authors of a document's changes, sorted. A replica that does not apply the write
    /// rule of private spaces to what it holds (the model) answers none.
    fn authors(&mut self, space: &SpaceId, doc: &DocId) -> Vec<AuthorId> {
        let _ = (space, doc);
        Vec::new()
    }
    /// The authors of the changes applied to a document since the last call (what the write
    /// rule must look at when nothing else changed).
    fn take_fresh_authors(&mut self, space: &SpaceId, doc: &DocId) -> Vec<AuthorId> {
        let _ = (space, doc);
        Vec::new()
    }
    /// Whether a document hides any change now.
    fn hides(&self, space: &SpaceId, doc: &DocId) -> bool {
        let _ = (space, doc);
        false
    }
    /// Every change a document holds, hidden or not (what the write rule is applied to).
    fn change_infos(&mut self, space: &SpaceId, doc: &DocId) -> Vec<ChangeInfo> {
        let _ = (space, doc);
        Vec::new()
    }
    /// Hides these changes of a document (what the membership whites out, PROTOCOL §14.7):
    /// they stay stored, but the document as the node shows it, offers by sync and builds its
    /// edits on is made of the others. An empty set shows everything. Returns whether the
    /// document as it stands changed.
    fn set_hidden(&mut self, space: &SpaceId, doc: &DocId, hidden: BTreeSet<ChangeHash>) -> bool {
        let _ = (space, doc, hidden);
        false
    }
    /// Contributions held, in all spaces.
    fn contributions(&self) -> u64;
    /// Whether the store holds a contribution with exactly these bytes (tests; a full scan).
    fn contains_bytes(&self, bytes: &[u8]) -> bool;

    /// The space of an idea held.
    fn idea_space(&self, idea: &DocId) -> Option<SpaceId>;
    /// Ideas held in a space.
    fn idea_count(&self, space: &SpaceId) -> usize;
    /// One idea, materialised (without display names). A replica that holds no content (the
    /// model) answers `None`.
    fn idea(&self, space: &SpaceId, idea: &DocId) -> Option<Idea>;
    /// Every idea of a space, materialised (without display names).
    fn ideas(&self, space: &SpaceId) -> Vec<Idea>;
    /// The display names of a space's members, from their profile documents.
    fn display_names(&self, space: &SpaceId) -> BTreeMap<AuthorId, String>;
}

/// [`Replica::stored_after`] by a hash lookup per change.
pub(crate) fn stored_by_hash<R: Replica + ?Sized>(
    replica: &mut R,
    space: &SpaceId,
    doc: &DocId,
    have: &[ChangeHash],
    max_bytes: usize,
) -> Result<Vec<Vec<u8>>, StoreError> {
    let hashes = replica.changes_after(space, doc, have);
    let stored = hashes
        .iter()
        .filter_map(|hash| replica.stored(space, doc, hash).transpose());
    crate::store::take_upto(stored, max_bytes, Vec::len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_protocol::keys::EpochSecret;

    fn keys_of(secret: &EpochSecret) -> SpaceKeys {
        SpaceKeys {
            ciphers: vec![(secret.key_id(), secret.content_key().cipher())],
            current: Some(secret.key_id()),
        }
    }

    /// A document hiding a change: reads, heads and sync answers are of the rest; a peer whose
    /// heads name the hidden change is sent only what follows its standing ancestors, not the
    /// whole document again; a local edit builds on the standing document.
    #[test]
    fn a_hidden_change_is_left_out_of_what_a_document_shows_and_offers() {
        use crate::store::{MemoryStorage, Store};
        use agora_protocol::Identity;
        let space = SpaceId([3; 16]);
        let store = Store::new(MemoryStorage::new()).unwrap();
        let identity = Identity::from_seed([4; 32]);
        let author = identity.author();
        let mut r =
            AutomergeReplica::open(store, identity, [5; 16], [space], Keyring::default()).unwrap();
        let salt = [6; 16];
        let doc = DocId::idea(&space, &author, &salt);
        let edit = |r: &mut AutomergeReplica<MemoryStorage>, e: Edit| {
            let mut writes = Vec::new();
            r.edit(space, doc, DocKind::Idea, &e, 1_000, [0; 24], &mut writes)
                .unwrap()
                .unwrap();
            r.store().apply(writes).unwrap();
            r.heads(&space, &doc)[0]
        };
        let draft = IdeaDraft {
            title: "Plan".into(),
            ..IdeaDraft::default()
        };
        let created = edit(&mut r, Edit::CreateIdea { draft, salt });
        let late = edit(
            &mut r,
            Edit::Comment {
                text: "late".into(),
            },
        );
        assert!(r.set_hidden(&space, &doc, BTreeSet::from([late])));
        assert!(r.hides(&space, &doc));
        assert_eq!(r.heads(&space, &doc), vec![created]);
        assert!(r.idea(&space, &doc).unwrap().comments.is_empty());
        assert_eq!(r.changes_after(&space, &doc, &[]), vec![created]);
        assert_eq!(
            r.changes_after(&space, &doc, &[late]),
            Vec::<ChangeHash>::new(),
            "a peer holding the hidden change is sent nothing"
        );
        assert_eq!(
            r.stored_after(&space, &doc, &[], usize::MAX).unwrap().len(),
            1
        );
        assert!(r.holds(&space, &doc, &late), "it is still held");
        // In this process the hidden change is this actor's own: an edit on what stands clashes
        // with it (the same sequence number), and is refused without showing the hidden one.
        let mut writes = Vec::new();
        let clash = r.edit(
            space,
            doc,
            DocKind::Idea,
            &Edit::Comment {
                text: "clash".into(),
            },
            1_000,
            [0; 24],
            &mut writes,
        );
        assert!(clash.is_err(), "{clash:?}");
        assert!(writes.is_empty(), "nothing of it is stored");
        assert_eq!(r.heads(&space, &doc), vec![created]);
        assert!(r.idea(&space, &doc).unwrap().comments.is_empty());
        // After a restart (a new actor: the same author's own changes are never hidden while it
        // may edit, so only another process's could be) an edit builds on what stands; the
        // hidden change stays out of it.
        let store = Store::new(r.store().storage().clone()).unwrap();
        let mut r = AutomergeReplica::open(
            store,
            Identity::from_seed([4; 32]),
            [9; 16],
            [space],
            Keyring::default(),
        )
        .unwrap();
        assert!(r.set_hidden(&space, &doc, BTreeSet::from([late])));
        let reply = edit(
            &mut r,
            Edit::Comment {
                text: "on time".into(),
            },
        );
        let comments: Vec<String> = r
            .idea(&space, &doc)
            .unwrap()
            .comments
            .into_iter()
            .map(|c| c.text)
            .collect();
        assert_eq!(comments, vec!["on time"]);
        assert_eq!(r.heads(&space, &doc), vec![reply]);
        // Nothing hidden any more: everything shows again.
        assert!(r.set_hidden(&space, &doc, BTreeSet::new()));
        assert_eq!(r.idea(&space, &doc).unwrap().comments.len(), 2);
    }

    /// A space whose epoch reuses another held space's secret never gets that key id: the first
    /// space's traffic and edits stay its own, and the second cannot seal under it.
    #[test]
    fn a_key_id_stays_with_the_first_space_that_holds_it() {
        let (first, second) = (SpaceId([1; 16]), SpaceId([2; 16]));
        let shared = EpochSecret::from_bytes([7; 32]);
        let own = EpochSecret::from_bytes([8; 32]);
        let mut ring = Keyring::default();
        ring.set(first, keys_of(&shared));
        ring.set(second, keys_of(&own));
        ring.set(second, keys_of(&shared));
        assert_eq!(ring.get(&shared.key_id()).map(|(s, _)| *s), Some(first));
        assert_eq!(ring.get(&own.key_id()).map(|(s, _)| *s), Some(second));
        assert!(matches!(ring.sealing(&first), Sealing::Key(id, _) if id == shared.key_id()));
        assert!(matches!(ring.sealing(&second), Sealing::NoKey));
    }
}
