//! Sync of private spaces (PROTOCOL §14.9): requests name a private space by its locator (the
//! first 16 bytes of it, where an open space's id goes), a responder answers only peers whose
//! author is a member, and the space's membership operations are synced as one more document,
//! [`OPS_DOC`]: its changes are the operations (an operation's id is its hash, its parents its
//! dependencies).
//!
//! The scheduler reads documents through the `sync_*` methods here, which add that document to
//! what the replica holds.

use crate::service::replica::Replica;
use crate::service::{PeerHandle, Service};
use agora_protocol::automerge::ChangeHash;
use agora_protocol::membership::{Op, OpId};
use agora_protocol::{AuthorId, DocId, SpaceId};

/// The document id under which a private space's membership operations are synced (no real
/// document has it: document ids are hashes).
pub const OPS_DOC: DocId = DocId([0; 16]);

/// A private space's name on the sync wire: the first 16 bytes of its locator.
pub(crate) fn wire_locator(locator: &[u8; 32]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(&locator[..16]);
    out
}

fn as_hash(id: &OpId) -> ChangeHash {
    ChangeHash(id.0)
}

impl<R: Replica> Service<R> {
    /// Whether `space` is a private space this node holds.
    pub(crate) fn is_private(&self, space: &SpaceId) -> bool {
        self.private.contains_key(space)
    }

    /// How a sync request names `space`: its id, or a private space's locator.
    pub(crate) fn wire_name(&self, space: &SpaceId) -> [u8; 16] {
        match self.private.get(space).and_then(|v| v.locator()) {
            Some(locator) => wire_locator(&locator),
            None => space.0,
        }
    }

    /// The space a sync request names, if this node holds it.
    pub(crate) fn space_named(&self, name: [u8; 16]) -> Option<SpaceId> {
        let id = SpaceId(name);
        if self.spaces.contains_key(&id) {
            return Some(id);
        }
        self.private
            .iter()
            .find(|(_, v)| v.locator().is_some_and(|l| wire_locator(&l) == name))
            .map(|(s, _)| *s)
    }

    /// Remembers the author behind a peer (the network derives it from the peer id, which
    /// noise authenticated).
    pub(crate) fn peer_identified(&mut self, peer: PeerHandle, author: AuthorId) {
        self.sync.authors.insert(peer, author);
    }

    /// A private space's membership changed: the next tick opens pairs with the peers that
    /// follow it and may sync it now.
    pub(crate) fn sync_rejoin(&mut self, space: SpaceId) {
        self.sync.rejoin.insert(space);
        self.sync.wakeup.set(None);
    }

    /// Whether this node syncs `space` with `peer`: an open space held, or a private space of
    /// which both this node and the peer's author are members.
    pub(crate) fn syncs_with(&self, peer: PeerHandle, space: &SpaceId) -> bool {
        if self.spaces.contains_key(space) {
            return true;
        }
        let Some(view) = self.private.get(space) else {
            return false;
        };
        let me = self.replica.author();
        let members = view.membership();
        members.role(&me).is_some()
            && self
                .sync
                .authors
                .get(&peer)
                .is_some_and(|a| members.role(a).is_some())
    }

    /// Calls `f` with every document of a space that has heads, in id order, with its heads
    /// sorted: a private space's operations first.
    pub(crate) fn visit_sync_heads(
        &mut self,
        space: &SpaceId,
        f: &mut dyn FnMut(&DocId, &[ChangeHash]),
    ) {
        if let Some(view) = self.private.get(space) {
            let heads: Vec<ChangeHash> = view.log().heads().iter().map(as_hash).collect();
            if !heads.is_empty() {
                f(&OPS_DOC, &heads);
            }
        }
        self.replica.visit_heads(space, f);
    }

    /// A document's heads, sorted.
    pub(crate) fn sync_heads(&mut self, space: &SpaceId, doc: &DocId) -> Vec<ChangeHash> {
        if *doc == OPS_DOC {
            if let Some(view) = self.private.get(space) {
                return view.log().heads().iter().map(as_hash).collect();
            }
        }
        self.replica.heads(space, doc)
    }

    /// Which of `hashes` (with their ancestors) a document lacks.
    pub(crate) fn sync_missing(
        &mut self,
        space: &SpaceId,
        doc: &DocId,
        hashes: &[ChangeHash],
    ) -> Vec<ChangeHash> {
        if *doc == OPS_DOC {
            if let Some(view) = self.private.get(space) {
                // An operation is resolvable only once its ancestors are: holding it is enough.
                return hashes
                    .iter()
                    .filter(|h| view.log().get(&OpId(h.0)).is_none())
                    .copied()
                    .collect();
            }
        }
        self.replica.missing(space, doc, hashes)
    }

    /// Whether a document holds a change.
    pub(crate) fn sync_holds(&mut self, space: &SpaceId, doc: &DocId, hash: &ChangeHash) -> bool {
        self.sync_missing(space, doc, &[*hash]).is_empty()
    }

    /// Whether a document is held at all.
    pub(crate) fn sync_has_doc(&self, space: &SpaceId, doc: &DocId) -> bool {
        if *doc == OPS_DOC && self.private.contains_key(space) {
            return true;
        }
        self.replica.doc_kind(space, doc).is_some()
    }

    /// What a sync answer sends of a document for a peer whose heads are `have`, up to
    /// `max_bytes` (the first item is sent whatever its size).
    pub(crate) fn sync_stored_after(
        &mut self,
        space: &SpaceId,
        doc: &DocId,
        have: &[ChangeHash],
        max_bytes: usize,
    ) -> Result<Vec<Vec<u8>>, crate::store::StoreError> {
        if *doc == OPS_DOC {
            if let Some(view) = self.private.get(space) {
                let have: Vec<OpId> = have.iter().map(|h| OpId(h.0)).collect();
                let mut out = Vec::new();
                let mut used = 0;
                for op in view.log().after(&have) {
                    if used + op.bytes().len() > max_bytes && !out.is_empty() {
                        break;
                    }
                    used += op.bytes().len();
                    out.push(op.bytes().to_vec());
                }
                return Ok(out);
            }
        }
        self.replica.stored_after(space, doc, have, max_bytes)
    }
}

/// The document, id and parents of a membership operation in a sync answer, read without
/// checking its signature (to plan the next request; it is verified when it is taken in).
pub(crate) fn op_preview(bytes: &[u8]) -> Option<(DocId, ChangeHash, Vec<ChangeHash>)> {
    let op = Op::decode(bytes).ok()?;
    Some((
        OPS_DOC,
        as_hash(&op.id()),
        op.parents.iter().map(as_hash).collect(),
    ))
}
