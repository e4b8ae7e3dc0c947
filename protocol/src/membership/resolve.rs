//! The resolution rule: from a causally closed set of verified operations to one membership.
//!
//! Nothing here depends on the order in which operations were received: the input is a set, and
//! every step walks it in one canonical order.

use super::wire::{verify_sig, OpBody, Pin, SealedBytes, VerifiedOp};
use super::{redeem_message, OpId, Role, MAX_OPS, MAX_TARGET_OPS};
use crate::ids::{AuthorId, SpaceId};
use crate::keys::KeyId;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Why a set of operations could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// No valid creation of this space is in the set.
    #[error("no creation operation for this space")]
    NoCreate,
    /// An operation of another space.
    #[error("operation {0} belongs to another space")]
    OtherSpace(OpId),
    /// An operation's parent is not in the set (the caller holds it back until it arrives).
    #[error("operation {op} names a parent {parent} that is not in the set")]
    MissingParent {
        /// The operation.
        op: OpId,
        /// Its missing parent.
        parent: OpId,
    },
    /// More operations than [`MAX_OPS`].
    #[error("more than {MAX_OPS} operations")]
    TooMany,
}

/// One member of the resolved membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its role.
    pub role: Role,
    /// Its device key (X25519), to which epoch secrets are wrapped.
    pub device: [u8; 32],
    /// The operation that gave it this role.
    pub since: OpId,
}

/// An invitation and how it has been used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteState {
    /// Who invited.
    pub by: AuthorId,
    /// The role it grants.
    pub role: Role,
    /// Expiry, Unix seconds.
    pub expires: u64,
    /// Admissions allowed.
    pub uses: u64,
    /// Valid admissions so far.
    pub used: u64,
    /// Withdrawn by a valid `Revoke`.
    pub revoked: bool,
    /// The invite's public key (the ticket holds its secret).
    pub key: [u8; 32],
}

/// A valid epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Epoch {
    /// Its key id.
    pub key_id: KeyId,
    /// The operation that made it (the creation, a removal or a rotation).
    pub op: OpId,
    /// That operation's depth.
    pub depth: u32,
}

/// The membership of a space, as [`resolve`] computes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The space.
    pub space: SpaceId,
    /// Its owner (the author of its creation).
    pub owner: AuthorId,
    /// Everyone who belongs to it now, with their role.
    pub members: BTreeMap<AuthorId, Member>,
    /// The current name, sealed (the creation's, or the latest valid rename's).
    pub name: SealedBytes,
    /// Every valid epoch, oldest first (by depth, then id).
    pub epochs: Vec<Epoch>,
    /// The epoch new content is sealed under: of the valid epochs that no other valid epoch
    /// follows, the deepest, then the lowest operation id.
    pub current: KeyId,
    /// The valid epochs no other valid epoch follows (one, unless rotations forked), sorted.
    pub epoch_heads: Vec<KeyId>,
    /// Whether an admin should rotate: the valid epochs have forked, or someone who held the
    /// current secret has left, been removed or been refused admission since it was made.
    pub needs_rotation: bool,
    /// Of those reasons, the ones a rotation helps against: someone outside the membership may
    /// hold the current secret, because someone who held it left or was removed by a removal
    /// that did not rotate, or a refused admission wrapped it (its `key_id` is the current
    /// epoch's) to its newcomer. (A fork shows as more than one of `epoch_heads`.)
    pub exposed: bool,
    /// Members with no wrap of the current epoch's secret (a member who holds it shares it).
    pub missing_wraps: Vec<AuthorId>,
    /// Every valid invitation.
    pub invites: BTreeMap<OpId, InviteState>,
    /// For each author who once could write and no longer can, the pins of the last removal or
    /// demotion that took the right away: of their changes, only those in the causal past of
    /// these heads stay.
    pub pins: BTreeMap<AuthorId, Vec<Pin>>,
    /// Operations that are in the set but do not count: not authorised by the state at their
    /// parents, or voided by a concurrent removal or revocation.
    pub invalid: BTreeSet<OpId>,
    /// The operations no other operation names as parent (what a new operation's parents are).
    pub heads: Vec<OpId>,
}

impl Membership {
    /// The role of `author`, if a member.
    pub fn role(&self, author: &AuthorId) -> Option<Role> {
        self.members.get(author).map(|m| m.role)
    }

    /// Whether `author` may write ideas now.
    pub fn writes(&self, author: &AuthorId) -> bool {
        self.role(author).is_some_and(Role::writes)
    }
}

/// A fixed-size set of op indices.
#[derive(Clone)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn has(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    fn union(&mut self, other: &Bits) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }
}

struct Graph<'a> {
    /// Operations in canonical order: by depth, then by id.
    ops: Vec<&'a VerifiedOp>,
    depth: Vec<u32>,
    /// `past[i]`: every ancestor of `i`.
    past: Vec<Bits>,
    /// Operations that set each member's role (creation, admissions, role changes, removals).
    by_target: HashMap<AuthorId, Vec<usize>>,
    /// Operations by each author.
    by_author: HashMap<AuthorId, Vec<usize>>,
    /// Admissions of each invitation.
    admits: HashMap<OpId, Vec<usize>>,
    /// Revocations of each invitation.
    revokes: HashMap<OpId, Vec<usize>>,
    /// For each admission or role change: the removals of the same member concurrent with it.
    rivals: Vec<Vec<usize>>,
    /// Whether an operation is beyond the first [`MAX_TARGET_OPS`] that set its target's role.
    over_cap: Vec<bool>,
    index: HashMap<OpId, usize>,
    /// Whether an admission's redeem signature verifies under its invitation's key.
    redeemed: Vec<bool>,
    genesis: usize,
}

impl Graph<'_> {
    fn before(&self, a: usize, b: usize) -> bool {
        self.past[b].has(a)
    }

    fn concurrent(&self, a: usize, b: usize) -> bool {
        a != b && !self.before(a, b) && !self.before(b, a)
    }

    /// The role of `member` in the state made by the valid operations accepted by `ctx`, and the
    /// operation that gave it. Removal beats a concurrent admission or role change.
    fn role_in(
        &self,
        member: &AuthorId,
        ctx: impl Fn(usize) -> bool,
        valid: &[bool],
    ) -> Option<(Role, usize)> {
        let list = self.by_target.get(member)?;
        let beaten = |k: usize| self.rivals[k].iter().any(|&r| valid[r] && ctx(r));
        let mut state: Option<(Role, usize)> = None;
        for k in list.iter().copied().filter(|&k| valid[k] && ctx(k)) {
            match &self.ops[k].op().body {
                OpBody::Create { .. } => state = Some((Role::Owner, k)),
                OpBody::Admit { invite, .. } if !beaten(k) => {
                    let role = self.invite_role(invite).unwrap_or(Role::Reader);
                    state = Some((role, k));
                }
                OpBody::SetRole { role, .. } if state.is_some() && !beaten(k) => {
                    state = Some((*role, k))
                }
                OpBody::Remove { .. } => state = None,
                _ => {}
            }
        }
        state
    }

    fn role_at(&self, member: &AuthorId, i: usize, valid: &[bool]) -> Option<(Role, usize)> {
        self.role_in(member, |k| self.before(k, i), valid)
    }

    fn invite_role(&self, invite: &OpId) -> Option<Role> {
        match &self.ops[*self.index.get(invite)?].op().body {
            OpBody::Invite { role, .. } => Some(*role),
            _ => None,
        }
    }

    /// Whether operation `i` is authorised by the state at its parents (the valid operations in
    /// its past), with the earlier operations' validity in `valid`.
    fn authorised(&self, i: usize, valid: &[bool]) -> bool {
        let op = self.ops[i].op();
        if let OpBody::Create { .. } = op.body {
            return i == self.genesis;
        }
        if self.over_cap[i] {
            return false;
        }
        let Some((role, _)) = self.role_at(&op.author, i, valid) else {
            return false;
        };
        match &op.body {
            OpBody::Create { .. } => false,
            OpBody::Invite { role: granted, .. } => role.grants(*granted),
            OpBody::Revoke { invite } => {
                role >= Role::Admin
                    && self.index.get(invite).is_some_and(|&k| {
                        self.before(k, i) && matches!(self.ops[k].op().body, OpBody::Invite { .. })
                    })
            }
            OpBody::Admit {
                invite, member, at, ..
            } => self.admission_allowed(i, invite, member, *at, valid),
            OpBody::SetRole {
                member,
                role: new_role,
                ..
            } => match self.role_at(member, i, valid) {
                Some((current, _)) => role.manages(current) && role.grants(*new_role),
                None => false,
            },
            OpBody::Remove {
                member, rotation, ..
            } => match self.role_at(member, i, valid) {
                Some((current, _)) if *member == op.author => current != Role::Owner,
                Some((current, _)) => role.manages(current) && rotation.is_some(),
                None => false,
            },
            OpBody::Rotate { .. } | OpBody::Rename { .. } => role >= Role::Admin,
            OpBody::Share { .. } => true,
        }
    }

    fn admission_allowed(
        &self,
        i: usize,
        invite: &OpId,
        member: &AuthorId,
        at: u64,
        valid: &[bool],
    ) -> bool {
        let Some(&k) = self.index.get(invite) else {
            return false;
        };
        let OpBody::Invite {
            role: granted,
            expires,
            uses,
            ..
        } = &self.ops[k].op().body
        else {
            return false;
        };
        if !valid[k] || !self.before(k, i) || at > *expires || !self.redeemed[i] {
            return false;
        }
        // A revocation the courier had seen ends the invitation.
        if self
            .revokes
            .get(invite)
            .is_some_and(|r| r.iter().any(|&r| valid[r] && self.before(r, i)))
        {
            return false;
        }
        // Only someone who is not a member is admitted, and an invitation admits a member once:
        // a replayed admission (its signatures are public) changes nothing.
        if self.role_at(member, i, valid).is_some() || self.admits[invite].iter().any(|&a| {
            a < i
                && valid[a]
                && matches!(&self.ops[a].op().body, OpBody::Admit { member: m, .. } if m == member)
        }) {
            return false;
        }
        // The inviter must still be able to grant the role when the courier admits.
        let inviter = self.ops[k].op().author;
        if !self
            .role_at(&inviter, i, valid)
            .is_some_and(|(r, _)| r.grants(*granted))
        {
            return false;
        }
        // An owner is never admitted (its role cannot change).
        if self.ops[self.genesis].op().author == *member {
            return false;
        }
        // The first `uses` valid admissions, in canonical order, count.
        let earlier = self.admits[invite]
            .iter()
            .filter(|&&a| a < i && valid[a])
            .count() as u64;
        earlier < *uses
    }

    /// One pass in canonical order: each operation's validity, given the voided set. The
    /// validity of an operation depends only on operations before it, so a pass after new voids
    /// starts at the first of them (`from`), keeping what `valid` says of the ones before.
    fn pass(&self, voided: &[bool], valid: &mut [bool], from: usize) {
        for i in from..self.ops.len() {
            valid[i] = !voided[i] && self.authorised(i, valid);
        }
    }
}

/// Resolves a causally closed set of verified operations of `space` into its membership.
///
/// The rule (`docs/PROTOCOL.md` §14.4):
/// 1. Order the operations by depth (the longest path from the creation; the creation is 0),
///    then by id. This order extends the causal order.
/// 2. An operation is **authorised** if its author's role in the state made by the valid
///    operations in its own causal past allows it (invite, revoke, admit, set a role, remove,
///    rotate, share, rename: see the table in §14.4). In that state a removal beats a concurrent
///    admission or role change of the same member, so a concurrent re-admission loses, and a
///    re-admission after the removal stands.
/// 3. **Removals, demotions and revocations** are taken one by one in priority order: the
///    author's role at its parents (highest first), then the depth of the operation that gave
///    the author that role (the more senior first), then the operation's depth, then its id.
///    Each one that is still valid voids every operation of its target (for a revocation: every
///    admission with the invitation) that is concurrent with it. So when two admins remove each
///    other, the senior one stays.
/// 4. The valid operations, with those voided, make the final state.
pub fn resolve<'a>(
    space: SpaceId,
    ops: impl IntoIterator<Item = &'a VerifiedOp>,
) -> Result<Membership, ResolveError> {
    let mut by_id: BTreeMap<OpId, &VerifiedOp> = BTreeMap::new();
    for op in ops {
        if op.op().space != space {
            return Err(ResolveError::OtherSpace(op.id()));
        }
        by_id.insert(op.id(), op);
        if by_id.len() > MAX_OPS {
            return Err(ResolveError::TooMany);
        }
    }
    // Depths, in a topological walk (ids hash their parents, so the graph has no cycle).
    let mut depth: HashMap<OpId, u32> = HashMap::with_capacity(by_id.len());
    let mut waiting: HashMap<OpId, Vec<OpId>> = HashMap::new();
    let mut missing: HashMap<OpId, usize> = HashMap::new();
    let mut ready: Vec<OpId> = Vec::new();
    for (id, op) in &by_id {
        for parent in &op.op().parents {
            if !by_id.contains_key(parent) {
                return Err(ResolveError::MissingParent {
                    op: *id,
                    parent: *parent,
                });
            }
            waiting.entry(*parent).or_default().push(*id);
        }
        missing.insert(*id, op.op().parents.len());
        if op.op().parents.is_empty() {
            ready.push(*id);
        }
    }
    while let Some(id) = ready.pop() {
        let d = by_id[&id]
            .op()
            .parents
            .iter()
            .map(|p| depth[p] + 1)
            .max()
            .unwrap_or(0);
        depth.insert(id, d);
        for child in waiting.remove(&id).unwrap_or_default() {
            let m = missing.get_mut(&child).expect("every op is counted");
            *m -= 1;
            if *m == 0 {
                ready.push(child);
            }
        }
    }
    let mut order: Vec<OpId> = by_id.keys().copied().collect();
    order.sort_by_key(|id| (depth[id], *id));
    let index: HashMap<OpId, usize> = order.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let ops: Vec<&VerifiedOp> = order.iter().map(|id| by_id[id]).collect();
    let n = ops.len();
    let genesis = ops
        .iter()
        .position(|o| matches!(o.op().body, OpBody::Create { .. }))
        .ok_or(ResolveError::NoCreate)?;
    let mut past: Vec<Bits> = Vec::with_capacity(n);
    let mut by_target: HashMap<AuthorId, Vec<usize>> = HashMap::new();
    let mut by_author: HashMap<AuthorId, Vec<usize>> = HashMap::new();
    let mut admits: HashMap<OpId, Vec<usize>> = HashMap::new();
    let mut revokes: HashMap<OpId, Vec<usize>> = HashMap::new();
    let mut redeemed = vec![false; n];
    for (i, op) in ops.iter().enumerate() {
        let mut bits = Bits::new(n);
        for parent in &op.op().parents {
            let p = index[parent];
            bits.union(&past[p]);
            bits.set(p);
        }
        past.push(bits);
        let o = op.op();
        by_author.entry(o.author).or_default().push(i);
        match &o.body {
            OpBody::Create { .. } => by_target.entry(o.author).or_default().push(i),
            body => {
                if let Some(t) = body.target() {
                    by_target.entry(t).or_default().push(i);
                }
            }
        }
        if let OpBody::Revoke { invite } = &o.body {
            revokes.entry(*invite).or_default().push(i);
        }
        if let OpBody::Admit {
            invite,
            member,
            device,
            redeem,
            ..
        } = &o.body
        {
            admits.entry(*invite).or_default().push(i);
            redeemed[i] = match index.get(invite).map(|&k| &ops[k].op().body) {
                Some(OpBody::Invite { key, .. }) => {
                    verify_sig(key, &redeem_message(&space, invite, member, device), redeem).is_ok()
                }
                _ => false,
            };
        }
    }
    let depth: Vec<u32> = order.iter().map(|id| depth[id]).collect();
    // Only the first MAX_TARGET_OPS operations on a member's role count, which also bounds the
    // removals each admission or role change is compared with.
    let mut over_cap = vec![false; n];
    let mut rivals: Vec<Vec<usize>> = vec![Vec::new(); n];
    for list in by_target.values_mut() {
        for &k in list.iter().skip(MAX_TARGET_OPS) {
            over_cap[k] = true;
        }
        list.truncate(MAX_TARGET_OPS);
        for &k in list.iter() {
            if matches!(
                ops[k].op().body,
                OpBody::Admit { .. } | OpBody::SetRole { .. }
            ) {
                rivals[k] = list
                    .iter()
                    .copied()
                    .filter(|&r| {
                        matches!(ops[r].op().body, OpBody::Remove { .. })
                            && r != k
                            && !past[k].has(r)
                            && !past[r].has(k)
                    })
                    .collect();
            }
        }
    }
    let g = Graph {
        ops,
        depth,
        past,
        by_target,
        by_author,
        admits,
        revokes,
        rivals,
        over_cap,
        index,
        redeemed,
        genesis,
    };

    // Removals, demotions and revocations, in priority order.
    let mut voided = vec![false; n];
    let mut first = vec![false; n];
    g.pass(&voided, &mut first, 0);
    let mut contested: Vec<(std::cmp::Reverse<Role>, u32, u32, OpId, usize)> = Vec::new();
    for i in 0..n {
        let op = g.ops[i].op();
        let demotes = match &op.body {
            OpBody::Remove { .. } | OpBody::Revoke { .. } => true,
            OpBody::SetRole { member, role, .. } => g
                .role_at(member, i, &first)
                .is_some_and(|(current, _)| *role < current),
            _ => false,
        };
        if !demotes {
            continue;
        }
        let (rank, grant) = g
            .role_at(&op.author, i, &first)
            .map_or((Role::Reader, u32::MAX), |(r, k)| (r, g.depth[k]));
        contested.push((std::cmp::Reverse(rank), grant, g.depth[i], g.ops[i].id(), i));
    }
    contested.sort();
    let mut valid = first;
    // The first operation voided since the last pass (n: none).
    let mut stale = n;
    for (.., r) in contested {
        if stale < n {
            g.pass(&voided, &mut valid, stale);
            stale = n;
        }
        if !valid[r] {
            continue;
        }
        let op = g.ops[r].op();
        let victims: Vec<usize> = match &op.body {
            OpBody::Revoke { invite } => g.admits.get(invite).cloned().unwrap_or_default(),
            body => body
                .target()
                .and_then(|t| g.by_author.get(&t).cloned())
                .unwrap_or_default(),
        };
        for k in victims {
            if g.concurrent(k, r) && !voided[k] {
                voided[k] = true;
                stale = stale.min(k);
            }
        }
    }
    if stale < n {
        g.pass(&voided, &mut valid, stale);
    }
    Ok(g.finish(space, &valid))
}

impl Graph<'_> {
    fn finish(&self, space: SpaceId, valid: &[bool]) -> Membership {
        let n = self.ops.len();
        let all = |_: usize| true;
        let genesis = self.ops[self.genesis].op();
        let OpBody::Create {
            device: owner_device,
            key_id: root,
            name: first_name,
            ..
        } = &genesis.body
        else {
            unreachable!("the genesis is a creation")
        };
        // Members and their devices.
        let mut members = BTreeMap::new();
        for author in self.by_target.keys() {
            if let Some((role, k)) = self.role_in(author, all, valid) {
                // The device key comes from the member's latest valid admission (or creation).
                let device = self.by_target[author]
                    .iter()
                    .rev()
                    .filter(|&&j| valid[j])
                    .find_map(|&j| match &self.ops[j].op().body {
                        OpBody::Admit { device, .. } => Some(*device),
                        OpBody::Create { .. } => Some(*owner_device),
                        _ => None,
                    })
                    .unwrap_or(*owner_device);
                members.insert(
                    *author,
                    Member {
                        role,
                        device,
                        since: self.ops[k].id(),
                    },
                );
            }
        }
        // Epochs.
        let mut epochs: Vec<(usize, KeyId)> = vec![(self.genesis, *root)];
        for (i, op) in self.ops.iter().enumerate() {
            if let (true, Some(rotation)) = (valid[i], op.op().body.rotation()) {
                epochs.push((i, rotation.key_id));
            }
        }
        let heads: Vec<(usize, KeyId)> = epochs
            .iter()
            .copied()
            .filter(|(e, _)| !epochs.iter().any(|(f, _)| self.before(*e, *f)))
            .collect();
        let (current_op, current) = heads
            .iter()
            .copied()
            .max_by(|a, b| {
                self.depth[a.0]
                    .cmp(&self.depth[b.0])
                    .then(self.ops[b.0].id().cmp(&self.ops[a.0].id()))
            })
            .expect("the root epoch is always there");
        let mut epoch_heads: Vec<KeyId> = heads.iter().map(|(_, k)| *k).collect();
        epoch_heads.sort();
        epoch_heads.dedup();
        let covered = |k: usize| k == current_op || self.before(k, current_op);
        let mut needs_rotation = heads.len() > 1;
        let mut exposed = false;
        for (i, op) in self.ops.iter().enumerate() {
            match &op.op().body {
                OpBody::Remove { .. } if valid[i] && !covered(i) => {
                    needs_rotation = true;
                    exposed = true;
                }
                // A refused admission still handed its newcomer a secret, if its courier held
                // one (anyone can sign an admission; only a member's carries a real wrap).
                OpBody::Admit { key_id, .. }
                    if !valid[i]
                        && !covered(i)
                        && self.role_at(&op.op().author, i, valid).is_some() =>
                {
                    needs_rotation = true;
                    exposed |= *key_id == current;
                }
                _ => {}
            }
        }
        // Who holds a wrap of the current epoch.
        let mut holders: BTreeSet<AuthorId> = BTreeSet::new();
        if current_op == self.genesis {
            holders.insert(genesis.author);
        }
        for (i, op) in self.ops.iter().enumerate() {
            if !valid[i] {
                continue;
            }
            match &op.op().body {
                OpBody::Admit { member, key_id, .. } if *key_id == current => {
                    holders.insert(*member);
                }
                OpBody::Share { key_id, wraps } if *key_id == current => {
                    holders.extend(wraps.iter().map(|w| w.to));
                }
                _ => {}
            }
        }
        if let Some(rotation) = self.ops[current_op].op().body.rotation() {
            holders.extend(rotation.wraps.iter().map(|w| w.to));
        }
        let missing_wraps = members
            .keys()
            .filter(|a| !holders.contains(*a))
            .copied()
            .collect();
        // Name: the last valid rename in canonical order.
        let name = (0..n)
            .rev()
            .filter(|&i| valid[i])
            .find_map(|i| match &self.ops[i].op().body {
                OpBody::Rename { name } => Some(name.clone()),
                _ => None,
            })
            .unwrap_or_else(|| first_name.clone());
        // Invitations.
        let mut invites = BTreeMap::new();
        for i in 0..n {
            if let (
                true,
                OpBody::Invite {
                    key,
                    role,
                    expires,
                    uses,
                },
            ) = (valid[i], &self.ops[i].op().body)
            {
                let id = self.ops[i].id();
                let used = self
                    .admits
                    .get(&id)
                    .map_or(0, |a| a.iter().filter(|&&k| valid[k]).count() as u64);
                let revoked = (0..n).any(|j| {
                    valid[j]
                        && matches!(&self.ops[j].op().body, OpBody::Revoke { invite } if *invite == id)
                });
                invites.insert(
                    id,
                    InviteState {
                        by: self.ops[i].op().author,
                        role: *role,
                        expires: *expires,
                        uses: *uses,
                        used,
                        revoked,
                        key: *key,
                    },
                );
            }
        }
        // Pins of those who lost the right to write.
        let mut pins = BTreeMap::new();
        for (author, list) in &self.by_target {
            if members
                .get(author)
                .is_some_and(|m: &Member| m.role.writes())
            {
                continue;
            }
            let last = list
                .iter()
                .rev()
                .find_map(|&k| match &self.ops[k].op().body {
                    // The last valid removal or demotion whose target could write before it.
                    OpBody::Remove { pins, .. } | OpBody::SetRole { pins, .. }
                        if valid[k]
                            && self
                                .role_at(author, k, valid)
                                .is_some_and(|(r, _)| r.writes()) =>
                    {
                        Some(pins.clone())
                    }
                    _ => None,
                });
            if let Some(p) = last {
                pins.insert(*author, p);
            }
        }
        let mut is_parent = vec![false; n];
        for op in &self.ops {
            for p in &op.op().parents {
                is_parent[self.index[p]] = true;
            }
        }
        let mut heads: Vec<OpId> = (0..n)
            .filter(|&i| !is_parent[i])
            .map(|i| self.ops[i].id())
            .collect();
        heads.sort();
        Membership {
            space,
            owner: genesis.author,
            members,
            name,
            epochs: epochs
                .iter()
                .map(|&(i, key_id)| Epoch {
                    key_id,
                    op: self.ops[i].id(),
                    depth: self.depth[i],
                })
                .collect(),
            current,
            epoch_heads,
            needs_rotation,
            exposed,
            missing_wraps,
            invites,
            pins,
            invalid: (0..n)
                .filter(|&i| !valid[i])
                .map(|i| self.ops[i].id())
                .collect(),
            heads,
        }
    }
}
