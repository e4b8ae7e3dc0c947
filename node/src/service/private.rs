//! Private spaces in the service: their membership operations, stored durably, and the
//! membership actions a person takes (create, invite, remove, leave, set a role, rename).
//!
//! A private space is held as an [`agora_protocol::membership::PrivateSpace`]: the operations,
//! their resolution, and every epoch secret the node's device key unlocks. Its operations are
//! stored in the `ops` tree and its record has `private: true`; at start-up the view is rebuilt
//! from them (the secrets are not stored: they follow from the operations and the identity).
//!
//! Operations travel by gossip on the space's epoch topics (`private_gossip`: verified, from
//! someone who is or was a member, stored, relayed; a rotation and its shares are also published
//! on the previous topic). Joining is `admit_redeem` on a member and `join_private` on the
//! newcomer.
//!
//! The write rule (PROTOCOL §14.7) is applied twice: at the gate (`ingest::may_write`, which
//! refuses what cannot stand) and to what is held (`restand`, which hides the changes the
//! membership whites out, whatever order they and the operations arrived in). A private space is
//! never added to the open spaces (`Service::spaces`), so nothing of it is published on, or
//! synced by, a version 1 topic or request.

use super::outbox::When;
use super::replica::{Replica, SpaceKeys};
use super::{
    InboundId, Millis, NetAction, NodeEvent, Now, Output, PeerHandle, Service, ServiceError,
    ServiceRng, Verdict,
};
use crate::store::{SpaceRecord, Storage, Store, StoreError, Write};
use agora_protocol::idea;
use agora_protocol::join::{self, JoinRequest, JoinResponse};
use agora_protocol::keys::DeviceKey;
use agora_protocol::membership::{
    ActionError, Inserted, Op, OpBody, Pin, PrivateSpace, Role, VerifiedOp,
};
use agora_protocol::sealed::{Envelope, Inside};
use agora_protocol::{AuthorId, DocId, DocKind, Identity, SpaceId};
use rand::RngExt;
use std::collections::{BTreeMap, BTreeSet};

/// How long each admin's turn at a private space's upkeep lasts (see
/// [`Service::upkeep_tick`]).
pub const UPKEEP_STEP_MS: Millis = 60_000;

/// This node's place in the order in which admins do a space's upkeep: the owner first, then
/// the other admins in author order. `None` if it is not an admin, or does not hold the current
/// secret (it could not share it, and its rotation would not be sealed for those who do).
fn upkeep_rank(view: &PrivateSpace, me: &AuthorId) -> Option<u64> {
    let m = view.membership();
    if m.role(me)? < Role::Admin || view.current().is_none() {
        return None;
    }
    let mut admins: Vec<&AuthorId> = m
        .members
        .iter()
        .filter(|(_, x)| x.role >= Role::Admin)
        .map(|(a, _)| a)
        .collect();
    admins.sort_by_key(|a| (**a != m.owner, **a));
    admins.iter().position(|a| *a == me).map(|p| p as u64)
}

/// The keys the service signs membership operations with.
#[derive(Clone)]
pub struct NodeKeys {
    /// The node's identity (the author of its operations).
    pub identity: Identity,
    /// Its device key (epoch secrets are wrapped to it).
    pub device: DeviceKey,
}

impl NodeKeys {
    /// The keys of a node with this identity (the device key is derived from it).
    pub fn new(identity: Identity) -> NodeKeys {
        let device = DeviceKey::for_identity(&identity);
        NodeKeys { identity, device }
    }
}

impl std::fmt::Debug for NodeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKeys")
            .field("author", &self.identity.author())
            .finish_non_exhaustive()
    }
}

/// One member of a private space, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// The member.
    pub author: AuthorId,
    /// Its role.
    pub role: Role,
    /// Its display name in the space, if it set one and this node holds it.
    pub name: Option<String>,
    /// The connected peers whose hello proved them this member's nodes (PROTOCOL 14.9): where
    /// a ticket may send a newcomer.
    pub peers: Vec<PeerHandle>,
}

/// What an invitation gives back: enough for the ticket (the handle adds addresses).
#[derive(Clone, PartialEq, Eq)]
pub struct Invitation {
    /// The space.
    pub space: SpaceId,
    /// The invitation operation's id.
    pub invite: agora_protocol::membership::OpId,
    /// The ticket secret.
    pub secret: [u8; 32],
}

impl std::fmt::Debug for Invitation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invitation")
            .field("space", &self.space)
            .field("invite", &self.invite)
            .finish_non_exhaustive()
    }
}

impl From<ActionError> for ServiceError {
    fn from(e: ActionError) -> Self {
        ServiceError::Membership(e.to_string())
    }
}

/// Rebuilds every private space recorded in the store.
pub(crate) fn load<S: Storage>(
    store: &Store<S>,
    records: &BTreeMap<SpaceId, SpaceRecord>,
    keys: &NodeKeys,
) -> Result<BTreeMap<SpaceId, PrivateSpace>, StoreError> {
    let mut out = BTreeMap::new();
    for (space, record) in records {
        if !record.private {
            continue;
        }
        let mut ops = Vec::new();
        for bytes in store.ops(space)? {
            // Stored operations were verified before they were written; one that no longer
            // verifies means the disk changed under us.
            ops.push(Op::verify(&bytes).map_err(|e| StoreError::Corrupt {
                tree: "ops",
                detail: e.to_string(),
            })?);
        }
        let view =
            PrivateSpace::from_ops(*space, ops, &keys.identity, &keys.device).map_err(|e| {
                StoreError::Corrupt {
                    tree: "ops",
                    detail: e.to_string(),
                }
            })?;
        out.insert(*space, view);
    }
    Ok(out)
}

/// The content keys a member's view of a private space holds.
pub(crate) fn keys_of(view: &PrivateSpace) -> SpaceKeys {
    SpaceKeys {
        ciphers: view
            .secrets()
            .keys()
            .filter_map(|id| view.cipher(id).map(|c| (*id, c.clone())))
            .collect(),
        current: view.current().map(|(id, _)| id),
    }
}

/// The writes that store the operations a view just added (`ids`: one that arrived, and those
/// that were waiting for it).
fn added_writes<'a>(
    space: &'a SpaceId,
    view: &'a PrivateSpace,
    ids: &'a [agora_protocol::membership::OpId],
) -> impl Iterator<Item = Write> + 'a {
    ids.iter()
        .filter_map(|id| view.log().get(id))
        .map(|op| op_write(space, op))
}

/// The write that stores a membership operation of `space`.
fn op_write(space: &SpaceId, op: &VerifiedOp) -> Write {
    Write::op(space, &op.id().0, op.bytes().to_vec())
}

impl<R: Replica> Service<R> {
    fn node_keys(&self) -> Result<&NodeKeys, ServiceError> {
        self.keys.as_ref().ok_or(ServiceError::Membership(
            "this node has no keys for private spaces".into(),
        ))
    }

    fn private_view(&self, space: &SpaceId) -> Result<&PrivateSpace, ServiceError> {
        self.private
            .get(space)
            .ok_or(ServiceError::UnknownSpace(*space))
    }

    /// A membership action of this node on `space`'s view: `act` gets the view, this node's
    /// identity and the service's randomness, and makes the operations.
    fn act<T>(
        &mut self,
        space: SpaceId,
        act: impl FnOnce(&PrivateSpace, &Identity, &mut ServiceRng) -> Result<T, ActionError>,
    ) -> Result<T, ServiceError> {
        let keys = self.node_keys()?.clone();
        let view = self
            .private
            .get(&space)
            .ok_or(ServiceError::UnknownSpace(space))?;
        Ok(act(view, &keys.identity, &mut self.rng)?)
    }

    /// Starts holding a private space this node created or joined: its record and `ops` are
    /// written, the view kept, its topics followed.
    fn hold_private(&mut self, view: PrivateSpace, op_writes: Vec<Write>, now: Now) {
        let space = view.space();
        let record = SpaceRecord {
            name: None,
            joined_at: now.wall_ms,
            private: true,
        };
        self.remember_private(space);
        self.outbox.writes.extend(op_writes);
        self.outbox.writes.push(Write::space(&space, &record));
        self.replica.set_keys(space, keys_of(&view));
        self.private.insert(space, view);
        self.private_records.insert(space, record);
        self.digests.remove(&space);
        self.sync_rejoin(space);
        self.follow_private(space);
        self.outbox.event(NodeEvent::SpaceJoined { space });
        // Tell the members who we are, if we have a name.
        if let Some(name) = self.display_name.clone() {
            if let Err(e) = self.write_profile(space, &name, now) {
                tracing::warn!(target: "agora::engine", %space, %e, "could not write our profile into a private space");
            }
        }
    }

    /// Remembers a private space as it is before this group changes it (once per group), so
    /// that a failed flush can put it back.
    fn remember_private(&mut self, space: SpaceId) {
        if !self.outbox.private_before.contains_key(&space) {
            let before = (
                self.private.get(&space).cloned(),
                self.private_records.get(&space).cloned(),
            );
            self.outbox.private_before.insert(space, before);
        }
    }

    /// Stores and takes in operations this node made (in order): writes queued, the view
    /// updated. Their publication comes with the gossip of private spaces.
    fn own_ops(&mut self, space: SpaceId, ops: Vec<VerifiedOp>) -> Result<(), ServiceError> {
        let keys = self.node_keys()?.clone();
        let me = keys.identity.author();
        self.remember_private(space);
        let before = self.private_view(&space)?.topics();
        for op in &ops {
            self.outbox.writes.push(op_write(&space, op));
        }
        let view = self
            .private
            .get_mut(&space)
            .ok_or(ServiceError::UnknownSpace(space))?;
        // One resolution for the lot (a removal and its shares).
        view.insert_all(ops.clone(), &me, &keys.device)?;
        let rotates = ops.iter().any(|op| op.op().body.rotation().is_some());
        for op in &ops {
            self.publish_op(space, op, rotates);
        }
        self.view_changed(space, before);
        Ok(())
    }

    /// Applies the write rule to what a document of a private space holds: the changes the
    /// membership whites out (PROTOCOL §14.7) are hidden. `membership_changed`: the rule is
    /// applied to the whole document; otherwise only its changes since the last time are new,
    /// and when nothing is hidden and their authors may write the document, nothing can change
    /// (the usual case, whatever the document's earlier authors). Otherwise cheap when every
    /// author of the document may write it. Returns whether the document as it stands changed.
    pub(crate) fn restand(&mut self, space: SpaceId, doc: DocId, membership_changed: bool) -> bool {
        use agora_protocol::membership::{whiteout, WriteRight};
        let Some(view) = self.private.get(&space) else {
            return false;
        };
        let Some(kind) = self.replica.doc_kind(&space, &doc) else {
            return false;
        };
        let membership = view.membership();
        let may = |a: &AuthorId| membership.write_right(a, kind, &doc) == WriteRight::Yes;
        let fresh = self.replica.take_fresh_authors(&space, &doc);
        if !membership_changed && !self.replica.hides(&space, &doc) && fresh.iter().all(may) {
            return false;
        }
        let all_may = self.replica.authors(&space, &doc).iter().all(may);
        let hidden = if all_may {
            BTreeSet::new()
        } else {
            let changes = self.replica.change_infos(&space, &doc);
            whiteout(membership, &doc, kind, &changes)
        };
        if !hidden.is_empty() {
            tracing::debug!(target: "agora::engine", %space, %doc, hidden = hidden.len(), "changes whited out by the membership");
        }
        self.replica.set_hidden(&space, &doc, hidden)
    }

    /// [`Service::restand`] for every document of a space (after its membership changed, at
    /// start-up, after a reload). Returns the documents whose standing changed.
    pub(crate) fn restand_space(&mut self, space: SpaceId) -> Vec<DocId> {
        if !self.private.contains_key(&space) {
            return Vec::new();
        }
        let mut changed = Vec::new();
        for doc in self.replica.docs(&space) {
            if self.restand(space, doc, true) {
                changed.push(doc);
            }
        }
        changed
    }

    /// After a private space's view changed: the replica takes its keys, and the node follows
    /// its topics again if they changed (`before`).
    fn view_changed(&mut self, space: SpaceId, before: Vec<String>) {
        let Some(view) = self.private.get(&space) else {
            return;
        };
        let changed = view.topics() != before;
        self.replica.set_keys(space, keys_of(view));
        // Whether a rotation or a share is now due is looked at on the next tick (a need
        // already seen keeps the time it was first seen: operations arriving must not put an
        // admin's turn off).
        self.upkeep.entry(space).or_insert(None);
        for doc in self.restand_space(space) {
            let kind = self.replica.doc_kind(&space, &doc).unwrap_or(DocKind::Idea);
            self.touched(space, doc, kind);
        }
        // Its operations are part of the space's sync digest, and who may sync it may have
        // changed.
        self.digests.remove(&space);
        self.sync_rejoin(space);
        if changed {
            self.follow_private(space);
        }
    }

    /// Creates a private space owned by this node.
    pub(crate) fn create_private_space(
        &mut self,
        name: &str,
        now: Now,
    ) -> Result<SpaceId, ServiceError> {
        let name = idea::validate_name(name)?;
        let keys = self.node_keys()?.clone();
        let (view, op) = PrivateSpace::create(&keys.identity, &keys.device, &name, &mut self.rng)?;
        let space = view.space();
        self.hold_private(view, vec![op_write(&space, &op)], now);
        Ok(space)
    }

    /// The members of a private space, with roles and display names.
    pub(crate) fn members(&self, space: &SpaceId) -> Result<Vec<MemberInfo>, ServiceError> {
        let view = self.private_view(space)?;
        let names = self.replica.display_names(space);
        let mut out: Vec<MemberInfo> = view
            .membership()
            .members
            .iter()
            .map(|(author, m)| MemberInfo {
                author: *author,
                role: m.role,
                name: names.get(author).cloned(),
                peers: self
                    .sync
                    .authors
                    .iter()
                    .filter(|((_, s), a)| s == space && *a == author)
                    .map(|((p, _), _)| *p)
                    .collect(),
            })
            .collect();
        // Owner first, then admins, members, readers; by id within a role.
        out.sort_by(|a, b| b.role.cmp(&a.role).then(a.author.cmp(&b.author)));
        Ok(out)
    }

    /// An invitation to a private space, for `role`, until `expires` (Unix seconds), for `uses`
    /// admissions.
    pub(crate) fn invite(
        &mut self,
        space: SpaceId,
        role: Role,
        expires: u64,
        uses: u64,
    ) -> Result<Invitation, ServiceError> {
        let (op, secret) = self.act(space, |view, me, rng| {
            view.invite(me, role, expires, uses, rng)
        })?;
        let invite = op.id();
        self.own_ops(space, vec![op])?;
        Ok(Invitation {
            space,
            invite,
            secret,
        })
    }

    /// Removes a member (and starts a new epoch), pinning what it wrote until now.
    pub(crate) fn remove_member(
        &mut self,
        space: SpaceId,
        member: AuthorId,
    ) -> Result<(), ServiceError> {
        self.private_view(&space)?;
        let pins = self.pins(space, &member);
        let ops = self.act(space, |view, me, rng| view.remove(me, &member, pins, rng))?;
        self.own_ops(space, ops)
    }

    /// When the service must next look at a private space's upkeep.
    pub(crate) fn upkeep_next_wakeup(&self) -> Option<Millis> {
        self.upkeep
            .values()
            .map(|due| due.map_or(0, |(since, wait)| since + wait))
            .min()
    }

    /// A private space's upkeep (PROTOCOL §14.5): when its membership needs a rotation (someone
    /// who held the current secret left, or was removed by a removal that did not rotate, or
    /// the epochs forked) or members lack a wrap of the current secret, an admin holding the
    /// current secret makes the rotation or the share. To keep admins from all rotating at once
    /// (each rotation forks the others), they take turns: the owner first, then the other admins
    /// in author order, the admin of rank `r` acting once the need has lasted `r` minutes.
    pub(crate) fn upkeep_tick(&mut self, now: Now) {
        let Some(me) = self.keys.as_ref().map(|k| k.identity.author()) else {
            self.upkeep.clear();
            return;
        };
        let spaces: Vec<SpaceId> = self.upkeep.keys().copied().collect();
        for space in spaces {
            let Some(view) = self.private.get(&space) else {
                self.upkeep.remove(&space);
                continue;
            };
            let m = view.membership();
            // Rotate when the current secret may be outside the membership, or the epochs forked.
            let rotate = m.exposed || m.epoch_heads.len() > 1;
            let share = !m.missing_wraps.is_empty();
            let rank = upkeep_rank(view, &me);
            let (Some(rank), true) = (rank, rotate || share) else {
                self.upkeep.remove(&space);
                continue;
            };
            let since = match self.upkeep.get(&space) {
                Some(Some((since, _))) => *since,
                _ => now.mono,
            };
            // At most one automatic rotation per space and step (so that racing rotations that
            // fork each other cannot turn into a storm).
            let last = self.rotated.get(&space).map_or(0, |t| t + UPKEEP_STEP_MS);
            let due = (since + rank * UPKEEP_STEP_MS).max(if rotate { last } else { 0 });
            if now.mono < due {
                self.upkeep.insert(space, Some((since, due - since)));
                continue;
            }
            if rotate {
                self.rotated.insert(space, now.mono);
            }
            self.upkeep.remove(&space);
            let done = if rotate {
                self.rotate_space(space)
            } else {
                self.share_missing(space)
            };
            match done {
                Ok(()) => {
                    tracing::info!(target: "agora::engine", %space, rotate, "private space upkeep done")
                }
                Err(e) => {
                    tracing::warn!(target: "agora::engine", %space, %e, "private space upkeep failed")
                }
            }
        }
    }

    /// A new epoch for everyone who is a member now.
    fn rotate_space(&mut self, space: SpaceId) -> Result<(), ServiceError> {
        let ops = self.act(space, |view, me, rng| view.rotate(me, rng))?;
        self.own_ops(space, ops)
    }

    /// Wraps of the current secret for the members who lack one.
    fn share_missing(&mut self, space: SpaceId) -> Result<(), ServiceError> {
        match self.act(space, |view, me, rng| view.share_missing(me, rng))? {
            Some(op) => self.own_ops(space, vec![op]),
            None => Ok(()),
        }
    }

    /// Changes a member's role.
    pub(crate) fn set_role(
        &mut self,
        space: SpaceId,
        member: AuthorId,
        role: Role,
    ) -> Result<(), ServiceError> {
        let keys = self.node_keys()?.clone();
        let pins = self.pins(space, &member);
        let op = self
            .private_view(&space)?
            .set_role(&keys.identity, &member, role, pins)?;
        self.own_ops(space, vec![op])
    }

    /// Leaves a private space: a signed `remove` of this node by itself (PROTOCOL §14.3; it
    /// pins what it wrote and starts no epoch: the admins' nodes rotate). The node stops following
    /// the space's topics; its record stays, listed without a role.
    pub(crate) fn leave_space(&mut self, space: SpaceId) -> Result<(), ServiceError> {
        let keys = self.node_keys()?.clone();
        let me = keys.identity.author();
        let pins = self.pins(space, &me);
        let op = self.private_view(&space)?.leave(&keys.identity, pins)?;
        self.own_ops(space, vec![op])?;
        self.follow_private(space);
        Ok(())
    }

    /// What removing or demoting `member` pins: every document it has changes in, at its heads
    /// now, so that everything it wrote until now stays (PROTOCOL §14.7). At most `MAX_PINS`
    /// documents, each with at most `MAX_PIN_HEADS` heads; beyond them its changes are whited
    /// out unless someone entitled built on them (a known limit).
    fn pins(&mut self, space: SpaceId, member: &AuthorId) -> Vec<Pin> {
        use agora_protocol::membership::{MAX_PINS, MAX_PIN_HEADS};
        self.replica
            .pins_for(&space, member, MAX_PINS)
            .into_iter()
            .map(|(doc, heads)| Pin {
                doc,
                heads: heads.into_iter().take(MAX_PIN_HEADS).map(|h| h.0).collect(),
            })
            .collect()
    }

    /// Renames a private space.
    pub(crate) fn rename_space(&mut self, space: SpaceId, name: &str) -> Result<(), ServiceError> {
        let name = idea::validate_name(name)?;
        let op = self.act(space, |view, me, rng| view.rename(me, &name, rng))?;
        self.own_ops(space, vec![op])
    }

    /// Withdraws an invitation to a private space.
    pub(crate) fn revoke_invite(
        &mut self,
        space: SpaceId,
        invite: agora_protocol::membership::OpId,
    ) -> Result<(), ServiceError> {
        let op = self.act(space, |view, me, _| view.revoke(me, invite))?;
        self.own_ops(space, vec![op])
    }

    /// The name of a private space (sealed in its operations), if this node can open it.
    pub(crate) fn private_name(&self, space: &SpaceId) -> Option<String> {
        self.private.get(space).and_then(PrivateSpace::name)
    }
}

/// What became of a message on a private space's topic.
pub(crate) enum PrivateGossip {
    /// Taken care of (a membership operation, or refused).
    Done(Verdict, When),
    /// A sealed contribution by this author (as it says, not yet verified): for ingest.
    Contribution(AuthorId),
}

/// What a member does for a newcomer who redeemed a ticket, and what the newcomer gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The space.
    pub space: SpaceId,
    /// Every operation of the space the member holds (its admission among them), encoded.
    pub ops: Vec<Vec<u8>>,
}

impl<R: Replica> Service<R> {
    /// A message on a private space's topic: an envelope sealed under one of the space's epochs
    /// (PROTOCOL 14.9), holding a membership operation (taken in here) or a signed contribution
    /// (its author returned: it goes through ingest with the rest of the batch). A node follows
    /// only topics of epochs it holds, and members seal what they publish on a topic under its
    /// epoch: an envelope it cannot open is the sender's fault.
    pub(crate) fn private_gossip(
        &mut self,
        space: SpaceId,
        bytes: &[u8],
        now: Now,
    ) -> PrivateGossip {
        let inside = Envelope::decode(bytes).and_then(|sealed| {
            match self
                .private
                .get(&space)
                .and_then(|v| v.cipher(&sealed.key_id))
            {
                Some(cipher) => sealed.open_inside(&space, cipher),
                None => Err(agora_protocol::Rejection::UnknownKey),
            }
        });
        match inside {
            Ok(Inside::Op(op)) => {
                let (verdict, when) = self.op_in(space, &op, Some(now));
                PrivateGossip::Done(verdict, when)
            }
            Ok(Inside::Contribution(plain)) => PrivateGossip::Contribution(plain.author),
            Err(e) => {
                // Anything else (an operation in the clear among them) has no place there.
                tracing::info!(target: "agora::network", %space, reason = e.code(), "rejected a sealed gossip message; penalising peer");
                *self
                    .counters
                    .rejected
                    .entry(format!("sealed_{}", e.code()))
                    .or_default() += 1;
                PrivateGossip::Done(Verdict::Reject, When::Now)
            }
        }
    }

    /// Resolves, once each, the private spaces whose operations arrived since the last call (a
    /// gossip group's, a sync answer's), and applies what changed. Called before anything reads
    /// a membership that operations were added to.
    pub(crate) fn settle_ops(&mut self) {
        if self.unsettled.is_empty() {
            return;
        }
        let Some(keys) = self.keys.clone() else {
            self.unsettled.clear();
            return;
        };
        for (space, before) in std::mem::take(&mut self.unsettled) {
            let Some(view) = self.private.get_mut(&space) else {
                continue;
            };
            if let Err(e) = view.settle(&keys.identity.author(), &keys.device) {
                // The log is bounded and resolution of what it holds does not fail in practice;
                // the view keeps its membership of before, and the next operation tries again.
                tracing::error!(target: "agora::engine", %space, %e, "membership did not resolve");
                continue;
            }
            self.view_changed(space, before);
        }
    }

    /// Counts a refused membership operation under `op_<code>` (beside contributions' codes).
    fn count_op_rejection(&mut self, code: &str) {
        *self
            .counters
            .rejected
            .entry(format!("op_{code}"))
            .or_default() += 1;
    }

    /// A membership operation in the clear from a sync answer.
    pub(crate) fn private_op_in(&mut self, space: SpaceId, bytes: &[u8]) -> (Verdict, When) {
        self.op_in(space, bytes, None)
    }

    /// A membership operation in the clear, opened from gossip (charged to its author's bucket
    /// at `gossip`, PROTOCOL 14.12) or from a sync answer (`None`: sync is paced by the
    /// requester).
    fn op_in(&mut self, space: SpaceId, bytes: &[u8], gossip: Option<Now>) -> (Verdict, When) {
        let reject = |this: &mut Self, why: &'static str| {
            tracing::info!(target: "agora::network", %space, reason = why, "rejected a membership operation; penalising peer");
            this.count_op_rejection(why);
            (Verdict::Reject, When::Now)
        };
        let op = match Op::verify(bytes) {
            Ok(op) => op,
            Err(e) => return reject(self, e.code()),
        };
        if op.op().space != space {
            return reject(self, "wrong_topic");
        }
        if self.keys.is_none() {
            return (Verdict::Ignore, When::Now);
        }
        let Some(view) = self.private.get(&space) else {
            return (Verdict::Ignore, When::Now);
        };
        // Someone who never was a member has nothing to say about the membership. (An operation
        // whose past is not all held yet may come from a newcomer whose admission has not
        // arrived: it waits, without blame for whoever relayed it.)
        let past_held = op.op().parents.iter().all(|p| view.log().get(p).is_some());
        if past_held && !view.knows(&op.op().author) {
            return reject(self, "not_member");
        }
        let author = op.op().author;
        if let Some(now) = gossip {
            if !self
                .config
                .op_rate
                .take(&mut self.op_buckets, (space, author), now.mono)
            {
                // Over its author's bound: neither stored nor relayed; sync brings it later.
                self.count_op_rejection("rate_limited");
                return (Verdict::Ignore, When::Now);
            }
        }
        self.remember_private(space);
        let Some(view) = self.private.get_mut(&space) else {
            return (Verdict::Ignore, When::Now);
        };
        match view.insert_unsettled(op) {
            Inserted::Added(ids) => {
                self.outbox.writes.extend(added_writes(&space, view, &ids));
                // Resolved once for the whole group of operations (`settle_ops`), which compares
                // the topics followed with those before the group's first operation.
                self.unsettled.entry(space).or_insert_with(|| view.topics());
                (Verdict::Accept, When::Durable)
            }
            // A duplicate (a rotation comes on two topics), or one that waits for its parents:
            // only what is added is charged.
            _ => {
                if gossip.is_some() {
                    self.config
                        .op_rate
                        .refund(&mut self.op_buckets, &(space, author));
                }
                (Verdict::Ignore, When::Now)
            }
        }
    }

    /// Follows the topics of a private space: the current epoch's and the one before; none once
    /// this node is no longer a member.
    pub(crate) fn follow_private(&mut self, space: SpaceId) {
        let me = self.keys.as_ref().map(|k| k.identity.author());
        if let Some(view) = self.private.get(&space) {
            let member = me.is_some_and(|me| view.membership().role(&me).is_some());
            let topics: Vec<String> = if member {
                view.topics().into_iter().take(2).collect()
            } else {
                Vec::new()
            };
            self.outbox.push(
                Output::Net(NetAction::SubscribeTopics { space, topics }),
                When::Durable,
            );
        }
    }

    /// Publishes an operation this node made, sealed under each topic's epoch: on the current
    /// topic, and a rotation and the shares made with it (`rotates`) also on the previous one,
    /// sealed under the previous epoch: their recipients may not hold the new epoch yet, and a
    /// member whose wrap is in a share can open nothing sealed under the epoch it wraps. A share
    /// made later (missing wraps) goes on the current topic only: on the previous one it would
    /// tell whoever the last rotation removed who joined since; its recipients get it by sync.
    fn publish_op(&mut self, space: SpaceId, op: &VerifiedOp, rotates: bool) {
        let Some(view) = self.private.get(&space) else {
            return;
        };
        let body = &op.op().body;
        let n = if rotates && (body.rotation().is_some() || matches!(body, OpBody::Share { .. })) {
            2
        } else {
            1
        };
        let mut sealed = Vec::new();
        for (topic, key_id) in view.topic_keys().into_iter().take(n) {
            if let Some(cipher) = view.cipher(&key_id) {
                let nonce: [u8; 24] = self.rng.random();
                let bytes =
                    Envelope::seal_bytes(&space, key_id, cipher, op.bytes(), nonce).encode();
                sealed.push((topic, bytes));
            }
        }
        for (topic, bytes) in sealed {
            self.outbox.push(
                Output::Net(NetAction::PublishTo { topic, bytes }),
                When::Durable,
            );
        }
    }

    /// A member's side of a join: checks the redeem against this node's view and clock (`now`),
    /// admits the newcomer, and returns the space's operations for it.
    pub(crate) fn admit_redeem(
        &mut self,
        redeem: &agora_protocol::membership::build::Redeem,
        space: SpaceId,
        now: Now,
    ) -> Result<Admitted, ServiceError> {
        let keys = self.node_keys()?.clone();
        let now_s = u64::try_from(now.wall_ms / 1000).unwrap_or(0);
        let view = self
            .private
            .get(&space)
            .ok_or(ServiceError::UnknownSpace(space))?;
        view.check_redeem(redeem, now_s)
            .map_err(|e| ServiceError::Membership(e.to_string()))?;
        let op = view.admit(&keys.identity, redeem, now_s, &mut self.rng)?;
        self.own_ops(space, vec![op])?;
        let ops = self.private[&space]
            .log()
            .ops()
            .map(|o| o.bytes().to_vec())
            .collect();
        Ok(Admitted { space, ops })
    }

    /// Takes operations into a private space's view (as gossip would, without its checks of the
    /// sender), storing what they add; then this node must be a member holding the current key.
    fn merge_ops(&mut self, space: SpaceId, ops: Vec<VerifiedOp>) -> Result<(), ServiceError> {
        let keys = self.node_keys()?.clone();
        let me = keys.identity.author();
        self.remember_private(space);
        let before = self.private_view(&space)?.topics();
        let view = self
            .private
            .get_mut(&space)
            .ok_or(ServiceError::UnknownSpace(space))?;
        let inserted = view.insert_all(ops, &me, &keys.device)?;
        for added in inserted {
            if let Inserted::Added(ids) = added {
                self.outbox.writes.extend(added_writes(&space, view, &ids));
            }
        }
        self.view_changed(space, before);
        let view = self.private_view(&space)?;
        if view.membership().role(&me).is_none() || view.current().is_none() {
            return Err(ServiceError::Membership(
                "the member's answer does not admit this node".into(),
            ));
        }
        self.follow_private(space);
        Ok(())
    }

    /// A newcomer's join request: admitted (the answer leaves once the admission is durable), or
    /// refused with the protocol's reason code. A space this node does not hold, or no longer
    /// is a member of, gets `unknown_space`, as if it never heard of it.
    pub(crate) fn answer_join(
        &mut self,
        peer: PeerHandle,
        inbound: InboundId,
        request: JoinRequest,
        now: Now,
    ) {
        let space = request.space;
        let me = self.keys.as_ref().map(|k| k.identity.author());
        let held = self
            .private
            .get(&space)
            .filter(|v| me.is_some_and(|me| v.membership().role(&me).is_some()));
        let refusal = match held {
            None => Some(join::UNKNOWN_SPACE.to_string()),
            Some(view) => {
                let now_s = u64::try_from(now.wall_ms / 1000).unwrap_or(0);
                view.check_redeem(&request.redeem, now_s)
                    .err()
                    .map(|r| r.code().to_string())
            }
        };
        let (response, when) = match refusal {
            Some(code) => (JoinResponse::Refused(code), When::Now),
            None => match self.admit_redeem(&request.redeem, space, now) {
                Ok(admitted) => (JoinResponse::Admitted(admitted.ops), When::Durable),
                Err(e) => {
                    tracing::warn!(target: "agora::network", %space, %e, "could not admit a newcomer");
                    (JoinResponse::Refused("unavailable".into()), When::Now)
                }
            },
        };
        if let JoinResponse::Refused(code) = &response {
            tracing::info!(target: "agora::network", %peer, %space, reason = %code, "refused a join request");
        } else {
            tracing::info!(target: "agora::network", %peer, %space, "admitted a newcomer");
        }
        self.outbox.push(
            Output::Net(NetAction::JoinResponse { inbound, response }),
            when,
        );
    }

    /// The newcomer's side of a join: the operations a member handed over, verified; this node
    /// must be a member in them. Stores them and the space, and follows its topic.
    pub(crate) fn join_private(
        &mut self,
        space: SpaceId,
        ops: &[Vec<u8>],
        now: Now,
    ) -> Result<(), ServiceError> {
        let keys = self.node_keys()?.clone();
        let mut verified = Vec::with_capacity(ops.len());
        for bytes in ops {
            let op = Op::verify(bytes).map_err(|e| {
                ServiceError::Membership(format!("the member sent an invalid operation: {e}"))
            })?;
            verified.push(op);
        }
        if self.spaces.contains_key(&space) {
            return Err(ServiceError::Membership(
                "that id is held here as an open space".into(),
            ));
        }
        if self.private.contains_key(&space) {
            // Held already (a former member invited back): the answer's operations join the
            // view this node has; they never replace it.
            return self.merge_ops(space, verified);
        }
        let view = PrivateSpace::from_ops(space, verified, &keys.identity, &keys.device)?;
        // A space is found by its key ids, topics and locator: one that shares any of them with
        // a space held here (an insider who reused a secret it holds) would be confused with it.
        let clash = self.private.values().any(|held| {
            held.locator() == view.locator()
                || view
                    .secrets()
                    .keys()
                    .any(|k| held.secrets().contains_key(k))
        });
        if clash {
            return Err(ServiceError::Membership(
                "that space reuses the keys of another space held here; refused".into(),
            ));
        }
        if view.membership().role(&keys.identity.author()).is_none() {
            return Err(ServiceError::Membership(
                "the member's answer does not admit this node".into(),
            ));
        }
        if view.current().is_none() {
            return Err(ServiceError::Membership(
                "the member's answer holds no key for this node".into(),
            ));
        }
        let writes = view.log().ops().map(|op| op_write(&space, op)).collect();
        self.hold_private(view, writes, now);
        Ok(())
    }
}
