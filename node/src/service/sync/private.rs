//! Sync of private spaces (PROTOCOL §14.9): requests name a private space by its locator (the
//! first 16 bytes of it, where an open space's id goes), each pair begins with a hello that tells
//! the member behind each peer to the other (sealed under the space's key, bound to both
//! transport ids: a peer id says nothing of its author), a responder answers only peers whose
//! member it knows that way, and the space's membership operations are synced as one more document,
//! [`OPS_DOC`]: its changes are the operations (an operation's id is its hash, its parents its
//! dependencies).
//!
//! The scheduler reads documents through the `sync_*` methods here, which add that document to
//! what the replica holds.

use super::Pair;
use crate::service::replica::Replica;
use crate::service::{Now, PeerHandle, Service};
use agora_protocol::automerge::ChangeHash;
use agora_protocol::hello;
use agora_protocol::keys::KeyId;
use agora_protocol::membership::{Op, OpId};
use agora_protocol::sync::{SyncRequest, SyncResponse};
use agora_protocol::{DocId, SpaceId};
use rand::RngExt;

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

    /// Remembers a connected peer's transport id (the bytes of its peer id), which its hellos
    /// and this node's hellos to it bind. An id longer than a hello allows is not kept: no hello
    /// with that peer can be made, so no private space is synced with it.
    pub(crate) fn peer_identified(&mut self, peer: PeerHandle, id: Vec<u8>) {
        if id.len() <= hello::MAX_TRANSPORT_ID {
            self.sync.transport_ids.insert(peer, id);
        }
    }

    /// A private space's membership changed: the next tick opens pairs with the peers that
    /// follow it and may sync it now.
    pub(crate) fn sync_rejoin(&mut self, space: SpaceId) {
        self.sync.rejoin.insert(space);
        self.sync.wakeup.set(None);
    }

    /// Whether this node answers `peer`'s requests about `space`: an open space held, or a
    /// private space of which both this node and the member behind the peer (as its hello
    /// proved) are members.
    pub(crate) fn syncs_with(&self, peer: PeerHandle, space: &SpaceId) -> bool {
        if self.spaces.contains_key(space) {
            return true;
        }
        let Some(view) = self.private.get(space) else {
            return false;
        };
        let members = view.membership();
        members.role(&self.replica.author()).is_some()
            && self
                .sync
                .authors
                .get(&(peer, *space))
                .is_some_and(|a| members.role(a).is_some())
    }

    /// Whether this node opens a sync pair with `peer` about `space`: as [`Self::syncs_with`],
    /// or a private space whose member behind the peer is not known yet (its first request is
    /// then a hello).
    pub(crate) fn may_open(&self, peer: PeerHandle, space: &SpaceId) -> bool {
        if self.syncs_with(peer, space) {
            return true;
        }
        self.private.get(space).is_some_and(|view| {
            view.membership().role(&self.replica.author()).is_some()
                && !self.sync.authors.contains_key(&(peer, *space))
        })
    }

    /// The hello a pair's exchange starts with: `None` when none is needed (an open space, or
    /// the member behind the peer is known), `Err` when one is needed and cannot be made now
    /// (no key held, no transport id for the peer, or a hello went to this pair less than
    /// `sync_retry` ago). Sealed under the newest epoch this node holds: the current one, or,
    /// while its wrap of the current one has not arrived, the one before.
    pub(crate) fn hello_needed(
        &mut self,
        (peer, space): Pair,
        now: Now,
    ) -> Result<Option<SyncRequest>, ()> {
        if !self.private.contains_key(&space) || self.sync.authors.contains_key(&(peer, space)) {
            return Ok(None);
        }
        if self
            .sync
            .hellos
            .get(&(peer, space))
            .is_some_and(|at| now.mono < at.saturating_add(self.config.sync_retry))
        {
            return Err(());
        }
        let nonce: [u8; 24] = self.rng.random();
        let name = self.wire_name(&space);
        let (Some(view), Some(keys), Some(to)) = (
            self.private.get(&space),
            self.keys.as_ref(),
            self.sync.transport_ids.get(&peer),
        ) else {
            return Err(());
        };
        let key = view.topic_keys().first().map(|(_, k)| *k).ok_or(())?;
        let cipher = view.cipher(&key).ok_or(())?;
        let ct = hello::seal(
            &keys.identity,
            &space,
            &key,
            cipher,
            &self.config.transport_id,
            to,
            &nonce,
        )
        .map_err(|_| ())?;
        self.sync.hellos.insert((peer, space), now.mono);
        Ok(Some(SyncRequest::Hello {
            v: 2,
            space: name,
            key: key.0,
            nonce,
            ct: serde_bytes::ByteBuf::from(ct),
        }))
    }

    /// A peer's answer to this node's hello (sealed under `key`): `Ok(true)` when it is a
    /// member's (now known), `Ok(false)` when a valid hello comes from someone who is not a
    /// member in this node's view, `Err` with a ban reason when it is not a valid hello.
    pub(crate) fn hello_answered(
        &mut self,
        (peer, space): (PeerHandle, SpaceId),
        key: KeyId,
        nonce: &[u8; 24],
        ct: &[u8],
    ) -> Result<bool, &'static str> {
        let (Some(view), Some(from)) =
            (self.private.get(&space), self.sync.transport_ids.get(&peer))
        else {
            return Ok(false);
        };
        let cipher = view.cipher(&key).ok_or("sync_bad_hello")?;
        let author = hello::open(
            &space,
            &key,
            cipher,
            nonce,
            ct,
            from,
            &self.config.transport_id,
        )
        .map_err(|_| "sync_bad_hello")?;
        if view.membership().role(&author).is_none() {
            return Ok(false);
        }
        self.sync.authors.insert((peer, space), author);
        Ok(true)
    }

    /// A peer's hello: if this node holds the space it names and the epoch it is sealed under,
    /// and the member it proves is a member in this node's view, remember it and answer with this
    /// node's own hello under the same key. Anyone else gets exactly what a space not held gets
    /// (a peer that cannot seal under the space's key learns nothing of who runs this node).
    pub(crate) fn answer_hello(
        &mut self,
        peer: PeerHandle,
        name: [u8; 16],
        key: KeyId,
        nonce: &[u8; 24],
        ct: &[u8],
        now: Now,
    ) -> SyncResponse {
        let refused = || SyncResponse::Refused {
            reason: "space not held here".into(),
        };
        let reply_nonce: [u8; 24] = self.rng.random();
        let Some(space) = self
            .space_named(name)
            .filter(|s| self.private.contains_key(s))
        else {
            return refused();
        };
        let (Some(view), Some(keys), Some(from)) = (
            self.private.get(&space),
            self.keys.as_ref(),
            self.sync.transport_ids.get(&peer),
        ) else {
            return refused();
        };
        let me = &self.config.transport_id;
        let Some(cipher) = view.cipher(&key) else {
            return refused();
        };
        let members = view.membership();
        let author = match hello::open(&space, &key, cipher, nonce, ct, from, me) {
            Ok(author) if members.role(&author).is_some() => author,
            Ok(_) | Err(_) => return refused(),
        };
        if members.role(&keys.identity.author()).is_none() {
            return refused();
        }
        let Ok(ct) = hello::seal(&keys.identity, &space, &key, cipher, me, from, &reply_nonce)
        else {
            return refused();
        };
        self.sync.authors.insert((peer, space), author);
        // This node's own round with the peer needs no hello now: start it if none runs (the
        // peer's hello may have come under an older epoch than this node's, which the peer
        // could not have opened).
        self.sync_with_known(peer, space, now);
        SyncResponse::Hello {
            nonce: reply_nonce,
            ct: serde_bytes::ByteBuf::from(ct),
        }
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
