//! Private spaces in the service: their membership operations, stored durably, and the
//! membership actions a person takes (create, invite, remove, leave, set a role, rename).
//!
//! A private space is held as an [`agora_protocol::membership::PrivateSpace`]: the operations,
//! their resolution, and every epoch secret the node's device key unlocks. Its operations are
//! stored in the `ops` tree and its record has `private: true`; at start-up the view is rebuilt
//! from them (the secrets are not stored: they follow from the operations and the identity).
//!
//! What is not here yet: gossip and sync of operations and sealed contributions, joining by
//! ticket over the network, and ideas in private spaces. Until those land, a private space is
//! local to the node that holds it, and none of this is reachable from the API or the CLI. A
//! private space is never added to the open spaces (`Service::spaces`), so nothing of it is
//! published on a version 1 topic.

use super::replica::Replica;
use super::{Now, Service, ServiceError};
use crate::store::{SpaceRecord, Storage, Store, StoreError, Write};
use agora_protocol::idea;
use agora_protocol::keys::DeviceKey;
use agora_protocol::membership::{ActionError, Op, PrivateSpace, Role, VerifiedOp};
use agora_protocol::{AuthorId, Identity, SpaceId};
use std::collections::BTreeMap;

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

    /// Stores and takes in operations this node made (in order): writes queued, the view
    /// updated. Their publication comes with the gossip of private spaces.
    fn own_ops(&mut self, space: SpaceId, ops: Vec<VerifiedOp>) -> Result<(), ServiceError> {
        let keys = self.node_keys()?.clone();
        let me = keys.identity.author();
        for op in ops {
            self.outbox
                .writes
                .push(Write::op(&space, &op.id().0, op.bytes().to_vec()));
            let view = self
                .private
                .get_mut(&space)
                .ok_or(ServiceError::UnknownSpace(space))?;
            view.insert(op, &me, &keys.device)?;
        }
        Ok(())
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
        let record = SpaceRecord {
            name: None,
            joined_at: now.wall_ms,
            private: true,
        };
        self.outbox.writes.push(Write::space(&space, &record));
        self.outbox
            .writes
            .push(Write::op(&space, &op.id().0, op.bytes().to_vec()));
        self.private.insert(space, view);
        self.private_records.insert(space, record);
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
        let keys = self.node_keys()?.clone();
        let view = self
            .private
            .get(&space)
            .ok_or(ServiceError::UnknownSpace(space))?;
        let (op, secret) = view.invite(&keys.identity, role, expires, uses, &mut self.rng)?;
        let invite = op.id();
        self.own_ops(space, vec![op])?;
        Ok(Invitation {
            space,
            invite,
            secret,
        })
    }

    /// Removes a member (and starts a new epoch).
    pub(crate) fn remove_member(
        &mut self,
        space: SpaceId,
        member: AuthorId,
    ) -> Result<(), ServiceError> {
        let keys = self.node_keys()?.clone();
        let view = self
            .private
            .get(&space)
            .ok_or(ServiceError::UnknownSpace(space))?;
        let ops = view.remove(&keys.identity, &member, Vec::new(), &mut self.rng)?;
        self.own_ops(space, ops)
    }

    /// Changes a member's role.
    pub(crate) fn set_role(
        &mut self,
        space: SpaceId,
        member: AuthorId,
        role: Role,
    ) -> Result<(), ServiceError> {
        let keys = self.node_keys()?.clone();
        let op = self
            .private_view(&space)?
            .set_role(&keys.identity, &member, role, Vec::new())?;
        self.own_ops(space, vec![op])
    }

    /// Renames a private space.
    pub(crate) fn rename_space(&mut self, space: SpaceId, name: &str) -> Result<(), ServiceError> {
        let name = idea::validate_name(name)?;
        let keys = self.node_keys()?.clone();
        let view = self
            .private
            .get(&space)
            .ok_or(ServiceError::UnknownSpace(space))?;
        let op = view.rename(&keys.identity, &name, &mut self.rng)?;
        self.own_ops(space, vec![op])
    }

    /// The name of a private space (sealed in its operations), if this node can open it.
    pub(crate) fn private_name(&self, space: &SpaceId) -> Option<String> {
        self.private.get(space).and_then(PrivateSpace::name)
    }
}
