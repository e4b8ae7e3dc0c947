//! One member's view of a private space: the operations it holds, their resolution, and every
//! secret its device key unlocks. Everything a node (or another embedder) decides about a
//! private space's membership and keys goes through here; randomness and time come from the
//! caller.

use super::build::{self, Redeem};
use super::wire::{OpBody, Pin, Rotation, VerifiedOp};
use super::{Inserted, Membership, Op, OpError, OpLog, ResolveError, Role};
use crate::identity::Identity;
use crate::ids::{AuthorId, SpaceId};
use crate::keys::{self, DeviceKey, EpochSecret, KeyId};
use chacha20poly1305::XChaCha20Poly1305;
use hpke::rand_core::CryptoRng;
use std::collections::BTreeMap;

/// Why a membership action was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ActionError {
    /// This member's role does not allow it.
    #[error("your role ({0}) does not allow this")]
    NotAllowed(&'static str),
    /// The member named is not in the space.
    #[error("{0} is not a member of this space")]
    NotMember(AuthorId),
    /// This node does not hold the current epoch's secret (it has not received it yet).
    #[error("this node does not hold the space's current key yet")]
    NoKey,
    /// No invitation with that id in this space (as this node sees it).
    #[error("no such invitation in this space")]
    UnknownInvite,
    /// The operation could not be made (for example a name too long).
    #[error(transparent)]
    Op(#[from] OpError),
    /// The space's operations do not resolve.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
}

/// A private space as one member sees it.
#[derive(Clone)]
pub struct PrivateSpace {
    log: OpLog,
    membership: Membership,
    secrets: BTreeMap<KeyId, EpochSecret>,
    ciphers: BTreeMap<KeyId, XChaCha20Poly1305>,
}

impl std::fmt::Debug for PrivateSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateSpace")
            .field("space", &self.log.space())
            .field("ops", &self.log.len())
            .field("keys", &self.secrets.len())
            .finish()
    }
}

impl PrivateSpace {
    /// Creates a space owned by `identity`; returns it with its creation, to store and publish.
    pub fn create(
        identity: &Identity,
        device: &DeviceKey,
        name: &str,
        rng: &mut impl CryptoRng,
    ) -> Result<(PrivateSpace, VerifiedOp), ActionError> {
        let new = build::create(identity, device, name, rng)?;
        let mut log = OpLog::new(new.space);
        log.insert(new.op.clone());
        let space = PrivateSpace::from_log(log, identity, device)?;
        Ok((space, new.op))
    }

    /// Rebuilds a member's view from verified operations (as stored): resolves them and unlocks
    /// every secret `device` can open.
    pub fn from_ops(
        space: SpaceId,
        ops: impl IntoIterator<Item = VerifiedOp>,
        identity: &Identity,
        device: &DeviceKey,
    ) -> Result<PrivateSpace, ActionError> {
        let mut log = OpLog::new(space);
        for op in ops {
            log.insert(op);
        }
        PrivateSpace::from_log(log, identity, device)
    }

    fn from_log(
        log: OpLog,
        identity: &Identity,
        device: &DeviceKey,
    ) -> Result<PrivateSpace, ActionError> {
        let membership = log.resolve()?;
        let mut s = PrivateSpace {
            log,
            membership,
            secrets: BTreeMap::new(),
            ciphers: BTreeMap::new(),
        };
        s.unlock(&identity.author(), device);
        Ok(s)
    }

    /// Takes in a verified operation (from gossip, sync or a join). Returns what the log did;
    /// when operations were added, the membership is resolved again and new secrets unlocked.
    pub fn insert(
        &mut self,
        op: VerifiedOp,
        me: &AuthorId,
        device: &DeviceKey,
    ) -> Result<Inserted, ActionError> {
        let mut inserted = self.insert_all(vec![op], me, device)?;
        Ok(inserted.pop().expect("one result per operation"))
    }

    /// Takes in several verified operations, resolving the membership once for all of them
    /// (what a removal and its shares, or a join answer, need). One result per operation, in
    /// order.
    pub fn insert_all(
        &mut self,
        ops: Vec<VerifiedOp>,
        me: &AuthorId,
        device: &DeviceKey,
    ) -> Result<Vec<Inserted>, ActionError> {
        let inserted: Vec<Inserted> = ops
            .into_iter()
            .map(|op| self.insert_unsettled(op))
            .collect();
        if inserted.iter().any(|i| matches!(i, Inserted::Added(_))) {
            self.settle(me, device)?;
        }
        Ok(inserted)
    }

    /// Adds a verified operation to the log without resolving the membership: until
    /// [`PrivateSpace::settle`], the membership and keys are those of before (what
    /// [`PrivateSpace::knows`] and the log answer already count it). For a caller that checks a
    /// group of operations one by one as the log grows, and resolves once.
    pub fn insert_unsettled(&mut self, op: VerifiedOp) -> Inserted {
        self.log.insert(op)
    }

    /// Resolves the membership from every operation held and opens what `me` can open.
    pub fn settle(&mut self, me: &AuthorId, device: &DeviceKey) -> Result<(), ActionError> {
        self.membership = self.log.resolve()?;
        self.unlock(me, device);
        Ok(())
    }

    /// Opens every wrap addressed to `me` and every seal a held secret opens, until nothing new
    /// opens. Wraps are taken from every operation held, valid or not: a key handed over is
    /// known, whatever became of the operation.
    fn unlock(&mut self, me: &AuthorId, device: &DeviceKey) {
        let space = self.log.space();
        for op in self.log.ops() {
            let body = &op.op().body;
            let mut found: Vec<(KeyId, &keys::Wrap)> = Vec::new();
            match body {
                OpBody::Create { key_id, wrap, .. } if op.op().author == *me => {
                    found.push((*key_id, wrap))
                }
                OpBody::Admit {
                    member,
                    key_id,
                    wrap,
                    ..
                } if member == me => found.push((*key_id, wrap)),
                OpBody::Share { key_id, wraps } => {
                    if let Ok(i) = wraps.binary_search_by_key(me, |w| w.to) {
                        found.push((*key_id, &wraps[i].wrap));
                    }
                }
                _ => {}
            }
            if let Some(r) = body.rotation() {
                if let Ok(i) = r.wraps.binary_search_by_key(me, |w| w.to) {
                    found.push((r.key_id, &r.wraps[i].wrap));
                }
            }
            for (key_id, wrap) in found {
                if let std::collections::btree_map::Entry::Vacant(slot) = self.secrets.entry(key_id)
                {
                    if let Ok(secret) = keys::unwrap(wrap, &space, &key_id, me, device) {
                        slot.insert(secret);
                    }
                }
            }
        }
        // Seals: a held rotation secret opens the secrets it sealed.
        loop {
            let mut opened = Vec::new();
            for op in self.log.ops() {
                if let Some(r) = op.op().body.rotation() {
                    if let Some(secret) = self.secrets.get(&r.key_id) {
                        for old in build::open_seals(&space, r, secret) {
                            if !self.secrets.contains_key(&old.key_id()) {
                                opened.push(old);
                            }
                        }
                    }
                }
            }
            if opened.is_empty() {
                break;
            }
            for s in opened {
                self.secrets.insert(s.key_id(), s);
            }
        }
        for (id, secret) in &self.secrets {
            self.ciphers
                .entry(*id)
                .or_insert_with(|| secret.content_key().cipher());
        }
    }

    /// The space id.
    pub fn space(&self) -> SpaceId {
        self.log.space()
    }

    /// The resolved membership.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Whether `author` is or was a member (or is being admitted in an operation held): whether
    /// its operations deserve a hearing. Someone who never was has nothing to say here.
    pub fn knows(&self, author: &AuthorId) -> bool {
        self.membership.members.contains_key(author)
            || self.log.ops().any(|o| {
                o.op().body.target() == Some(*author)
                    || (o.op().author == *author && matches!(o.op().body, OpBody::Create { .. }))
            })
    }

    /// The operations held.
    pub fn log(&self) -> &OpLog {
        &self.log
    }

    /// The content cipher of an epoch this member holds.
    pub fn cipher(&self, key_id: &KeyId) -> Option<&XChaCha20Poly1305> {
        self.ciphers.get(key_id)
    }

    /// Every epoch secret held, by key id.
    pub fn secrets(&self) -> &BTreeMap<KeyId, EpochSecret> {
        &self.secrets
    }

    /// The current epoch's key id and cipher, if this member holds its secret.
    pub fn current(&self) -> Option<(KeyId, &XChaCha20Poly1305)> {
        let id = self.membership.current;
        self.ciphers.get(&id).map(|c| (id, c))
    }

    fn current_secret(&self) -> Result<&EpochSecret, ActionError> {
        self.secrets
            .get(&self.membership.current)
            .ok_or(ActionError::NoKey)
    }

    /// The root secret (the first epoch's), if held.
    fn root(&self) -> Option<&EpochSecret> {
        self.membership
            .epochs
            .first()
            .and_then(|e| self.secrets.get(&e.key_id))
    }

    /// The name of the space in sync requests (from the root secret).
    pub fn locator(&self) -> Option<[u8; 32]> {
        self.root().map(EpochSecret::locator)
    }

    /// The gossip topics to follow: the current epoch's first, then the earlier epochs' whose
    /// secrets are held, newest first (a node follows the first few).
    pub fn topics(&self) -> Vec<String> {
        self.topic_keys().into_iter().map(|(t, _)| t).collect()
    }

    /// The epochs of [`PrivateSpace::topics`], in the same order: each topic with the key id
    /// of the epoch it belongs to (what an operation published on it is sealed under).
    pub fn topic_keys(&self) -> Vec<(String, KeyId)> {
        let mut out = Vec::new();
        if let Some(s) = self.secrets.get(&self.membership.current) {
            out.push((s.topic(), self.membership.current));
        }
        for e in self.membership.epochs.iter().rev() {
            if e.key_id != self.membership.current {
                if let Some(s) = self.secrets.get(&e.key_id) {
                    out.push((s.topic(), e.key_id));
                }
            }
        }
        out
    }

    /// The space's name, if the secret of the epoch it was sealed under is held.
    pub fn name(&self) -> Option<String> {
        let sealed = &self.membership.name;
        let secret = self.secrets.get(&sealed.key_id)?;
        build::open_name(&self.space(), secret, sealed).ok()
    }

    fn my_role(&self, me: &AuthorId) -> Result<Role, ActionError> {
        self.membership
            .role(me)
            .ok_or(ActionError::NotAllowed("not a member"))
    }

    fn sign(&self, identity: &Identity, body: OpBody) -> Result<VerifiedOp, ActionError> {
        let mut parents = self.membership.heads.clone();
        parents.truncate(super::MAX_PARENTS);
        Ok(Op::sign(identity, self.space(), parents, body)?)
    }

    /// An invitation for `role`, valid until `expires` (Unix seconds) for `uses` admissions.
    /// Returns the operation and the ticket secret (for the ticket).
    pub fn invite(
        &self,
        identity: &Identity,
        role: Role,
        expires: u64,
        uses: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<(VerifiedOp, [u8; 32]), ActionError> {
        let mine = self.my_role(&identity.author())?;
        if !mine.grants(role) {
            return Err(ActionError::NotAllowed(mine.name()));
        }
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        let key = Identity::from_seed(secret).author().0;
        let op = self.sign(
            identity,
            OpBody::Invite {
                key,
                role,
                expires,
                uses: uses.max(1),
            },
        )?;
        Ok((op, secret))
    }

    /// Why a redeem would be refused now, if it would (`now`: Unix seconds by this node's
    /// clock). Checks the invitation as this member sees it.
    pub fn check_redeem(&self, r: &Redeem, now: u64) -> Result<Role, RedeemRefusal> {
        let invite = self
            .membership
            .invites
            .get(&r.invite)
            .ok_or(RedeemRefusal::UnknownInvite)?;
        if self.membership.role(&r.member).is_some() {
            return Err(RedeemRefusal::AlreadyMember);
        }
        if invite.revoked {
            return Err(RedeemRefusal::Revoked);
        }
        if now > invite.expires {
            return Err(RedeemRefusal::Expired);
        }
        if invite.used >= invite.uses {
            return Err(RedeemRefusal::UsedUp);
        }
        let message = super::redeem_message(&self.space(), &r.invite, &r.member, &r.device);
        super::wire::verify_sig(&invite.key, &message, &r.redeem)
            .and_then(|()| super::wire::verify_sig(&r.member.0, &message, &r.proof))
            .map_err(|_| RedeemRefusal::BadSignature)?;
        Ok(invite.role)
    }

    /// The admission of a checked redeem, carried by this member (`now`: Unix seconds).
    pub fn admit(
        &self,
        identity: &Identity,
        r: &Redeem,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<VerifiedOp, ActionError> {
        self.my_role(&identity.author())?;
        let secret = self.current_secret()?;
        let body = build::admit_body(&self.space(), r, now, secret, rng)
            .map_err(|_| ActionError::Op(OpError::Invalid("bad device key".into())))?;
        self.sign(identity, body)
    }

    /// The recipients of a new epoch: every member but `except`, with their device keys.
    fn recipients(&self, except: Option<&AuthorId>) -> Vec<(AuthorId, [u8; 32])> {
        self.membership
            .members
            .iter()
            .filter(|(a, _)| Some(*a) != except)
            .map(|(a, m)| (*a, m.device))
            .collect()
    }

    /// A new epoch for everyone but `except`: the rotation, and its other wraps in chunks.
    fn new_epoch(
        &self,
        except: Option<&AuthorId>,
        rng: &mut impl CryptoRng,
    ) -> Result<(Rotation, Vec<Vec<super::WrapTo>>, EpochSecret), ActionError> {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        let new = EpochSecret::from_bytes(bytes);
        // Seal every current branch's secret this member holds (normally one).
        let heads: Vec<&EpochSecret> = self
            .membership
            .epoch_heads
            .iter()
            .filter_map(|k| self.secrets.get(k))
            .collect();
        if heads.is_empty() {
            return Err(ActionError::NoKey);
        }
        let (rotation, rest) =
            build::rotation(&self.space(), &new, &heads, &self.recipients(except), rng);
        Ok((rotation, rest, new))
    }

    /// Shares to follow a rotation that had more recipients than one operation holds.
    fn shares(
        &self,
        identity: &Identity,
        first: &VerifiedOp,
        key_id: KeyId,
        rest: Vec<Vec<super::WrapTo>>,
    ) -> Result<Vec<VerifiedOp>, ActionError> {
        let mut out = Vec::new();
        let mut parent = first.id();
        for wraps in rest {
            let op = Op::sign(
                identity,
                self.space(),
                vec![parent],
                OpBody::Share { key_id, wraps },
            )?;
            parent = op.id();
            out.push(op);
        }
        Ok(out)
    }

    /// Removes `member` (pinning what of its changes stays) and starts a new epoch. Returns the
    /// removal and the shares that complete its wraps, in order.
    pub fn remove(
        &self,
        identity: &Identity,
        member: &AuthorId,
        pins: Vec<Pin>,
        rng: &mut impl CryptoRng,
    ) -> Result<Vec<VerifiedOp>, ActionError> {
        let mine = self.my_role(&identity.author())?;
        let theirs = self
            .membership
            .role(member)
            .ok_or(ActionError::NotMember(*member))?;
        if *member == identity.author() || !mine.manages(theirs) {
            return Err(ActionError::NotAllowed(mine.name()));
        }
        let (rotation, rest, new) = self.new_epoch(Some(member), rng)?;
        let remove = self.sign(
            identity,
            OpBody::Remove {
                member: *member,
                rotation: Some(rotation),
                pins,
            },
        )?;
        let mut out = self.shares(identity, &remove, new.key_id(), rest)?;
        out.insert(0, remove);
        Ok(out)
    }

    /// This member leaves (pinning its own changes, which stay).
    pub fn leave(&self, identity: &Identity, pins: Vec<Pin>) -> Result<VerifiedOp, ActionError> {
        let mine = self.my_role(&identity.author())?;
        if mine == Role::Owner {
            return Err(ActionError::NotAllowed("owner"));
        }
        self.sign(
            identity,
            OpBody::Remove {
                member: identity.author(),
                rotation: None,
                pins,
            },
        )
    }

    /// Changes a member's role.
    pub fn set_role(
        &self,
        identity: &Identity,
        member: &AuthorId,
        role: Role,
        pins: Vec<Pin>,
    ) -> Result<VerifiedOp, ActionError> {
        let mine = self.my_role(&identity.author())?;
        let theirs = self
            .membership
            .role(member)
            .ok_or(ActionError::NotMember(*member))?;
        if !mine.manages(theirs) || !mine.grants(role) {
            return Err(ActionError::NotAllowed(mine.name()));
        }
        self.sign(
            identity,
            OpBody::SetRole {
                member: *member,
                role,
                pins,
            },
        )
    }

    /// A new epoch without a membership change (when [`Membership::needs_rotation`]).
    pub fn rotate(
        &self,
        identity: &Identity,
        rng: &mut impl CryptoRng,
    ) -> Result<Vec<VerifiedOp>, ActionError> {
        let mine = self.my_role(&identity.author())?;
        if mine < Role::Admin {
            return Err(ActionError::NotAllowed(mine.name()));
        }
        let (rotation, rest, new) = self.new_epoch(None, rng)?;
        let op = self.sign(identity, OpBody::Rotate { rotation })?;
        let mut out = self.shares(identity, &op, new.key_id(), rest)?;
        out.insert(0, op);
        Ok(out)
    }

    /// A share of the current secret with the members who lack it, if any and if held.
    pub fn share_missing(
        &self,
        identity: &Identity,
        rng: &mut impl CryptoRng,
    ) -> Result<Option<VerifiedOp>, ActionError> {
        self.my_role(&identity.author())?;
        let missing: Vec<(AuthorId, [u8; 32])> = self
            .membership
            .missing_wraps
            .iter()
            .filter_map(|a| self.membership.members.get(a).map(|m| (*a, m.device)))
            .take(super::MAX_WRAPS)
            .collect();
        if missing.is_empty() {
            return Ok(None);
        }
        let secret = self.current_secret()?;
        let wraps = build::wraps(&self.space(), secret, &missing, rng);
        Ok(Some(self.sign(
            identity,
            OpBody::Share {
                key_id: secret.key_id(),
                wraps,
            },
        )?))
    }

    /// Withdraws an invitation (an admin's): no one is admitted by it from then on, and a
    /// newcomer who tries it is told it was revoked.
    pub fn revoke(
        &self,
        identity: &Identity,
        invite: super::OpId,
    ) -> Result<VerifiedOp, ActionError> {
        let mine = self.my_role(&identity.author())?;
        if mine < Role::Admin {
            return Err(ActionError::NotAllowed(mine.name()));
        }
        if !self.membership.invites.contains_key(&invite) {
            return Err(ActionError::UnknownInvite);
        }
        self.sign(identity, OpBody::Revoke { invite })
    }

    /// Renames the space.
    pub fn rename(
        &self,
        identity: &Identity,
        name: &str,
        rng: &mut impl CryptoRng,
    ) -> Result<VerifiedOp, ActionError> {
        let mine = self.my_role(&identity.author())?;
        if mine < Role::Admin {
            return Err(ActionError::NotAllowed(mine.name()));
        }
        let secret = self.current_secret()?;
        let name = build::seal_name(&self.space(), secret, name, rng);
        self.sign(identity, OpBody::Rename { name })
    }
}

/// Why a member refuses a redeem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RedeemRefusal {
    /// No such invitation in this member's view (never made, or not received yet).
    #[error("this invitation is unknown to the member asked")]
    UnknownInvite,
    /// Withdrawn.
    #[error("this invitation was revoked")]
    Revoked,
    /// Past its expiry.
    #[error("this invitation has expired")]
    Expired,
    /// Every admission it allows was used.
    #[error("this invitation has been used up")]
    UsedUp,
    /// The newcomer is a member already.
    #[error("you are a member of this space already")]
    AlreadyMember,
    /// The redeem's signatures do not verify (not made with this ticket).
    #[error("the ticket does not match the invitation")]
    BadSignature,
}

impl RedeemRefusal {
    /// A short, stable name (for the wire and logs).
    pub fn code(self) -> &'static str {
        match self {
            RedeemRefusal::UnknownInvite => "unknown_invite",
            RedeemRefusal::Revoked => "revoked",
            RedeemRefusal::Expired => "expired",
            RedeemRefusal::UsedUp => "used_up",
            RedeemRefusal::AlreadyMember => "already_member",
            RedeemRefusal::BadSignature => "bad_redeem",
        }
    }
}
