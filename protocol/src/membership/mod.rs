//! Who belongs to a private space: membership operations, their wire format, and the rule that
//! turns any set of them into the same membership on every node.
//!
//! A space's membership is a DAG of signed **operations** ([`Op`]), each naming the operations its
//! author had seen (its parents) and content-addressed by an [`OpId`]. The first is the space's
//! `Create`, whose author is the owner and from whose contents the space id is derived, so no one
//! else can create "the same" space. Later operations invite, admit, change roles, remove, rotate
//! the space's key, share keys and rename the space.
//!
//! [`resolve`] is a pure function from a causally closed set of verified operations to a
//! [`Membership`]: it does not depend on the order in which the operations arrived. The rule is
//! written out in `docs/PROTOCOL.md` §14 and in [`resolve`]'s documentation.

pub mod build;
mod content;
mod log;
mod resolve;
mod space;
mod wire;

pub use content::{whiteout, ChangeInfo, WriteRight};
pub use log::{Inserted, OpLog, MAX_PENDING_OPS};
pub use resolve::{resolve, Epoch, InviteState, Member, Membership, ResolveError};
pub use space::{ActionError, PrivateSpace, RedeemRefusal};
pub use wire::{Op, OpBody, OpError, Pin, Rotation, SealedBytes, VerifiedOp, WrapTo};

use crate::ids::{AuthorId, SpaceId};
use sha2::{Digest, Sha256};

crate::ids::hex_id!(
    /// The id of a membership operation: SHA-256 of [`OP_ID_DOMAIN`] and the operation's
    /// unsigned encoding.
    OpId,
    32,
    "an operation id"
);

/// Domain prefix of an operation id.
pub const OP_ID_DOMAIN: &[u8] = b"agora-membership-op-v2\0";
/// Domain prefix of the message an operation's author signs (the op id follows).
pub const OP_SIGN_DOMAIN: &[u8] = b"agora-membership-sig-v2\0";
/// Domain prefix of the redeem message that the newcomer and the invite key both sign.
pub const REDEEM_DOMAIN: &[u8] = b"agora-redeem-v2\0";
/// Domain prefix of the space id derivation of a private space.
pub const SPACE_DOMAIN: &[u8] = b"agora/space/v2";
/// AAD prefix of a sealed space name (space and key id follow).
pub const NAME_AAD: &[u8] = b"agora-name-v2\0";
/// AAD prefix of an earlier epoch's secret sealed in a rotation (space, the new key id and the
/// sealed key id follow).
pub const SEAL_AAD: &[u8] = b"agora-seal-v2\0";

/// Largest encoded operation, in bytes (it travels as one gossip message).
pub const MAX_OP_BYTES: usize = 60 * 1024;
/// Most operations in one space's membership (resolution keeps an n x n bit matrix: 12.5 MB at
/// this bound).
pub const MAX_OPS: usize = 10_000;
/// Most parents of one operation.
pub const MAX_PARENTS: usize = 16;
/// Most wraps in one operation (about 125 bytes each); a rotation for more members continues in
/// `Share` operations.
pub const MAX_WRAPS: usize = 400;
/// Most earlier-epoch secrets sealed in one rotation.
pub const MAX_SEALS: usize = 16;
/// Most documents pinned by one removal (64 documents of 16 heads fit an operation).
pub const MAX_PINS: usize = 64;
/// Most operations that set one member's role (admissions, role changes, removals); later ones,
/// in canonical order, do not count.
pub const MAX_TARGET_OPS: usize = 64;
/// Most heads per pinned document.
pub const MAX_PIN_HEADS: usize = 16;
/// Largest sealed space name (64 characters of up to 4 bytes, and the tag).
pub const MAX_SEALED_NAME: usize = 64 * 4 + 16;

/// A member's role. Ordered: reader < member < admin < owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads the space; writes nothing but its own profile.
    Reader,
    /// Reads and writes ideas.
    Member,
    /// Also invites, removes and changes the roles of admins, members and readers.
    Admin,
    /// The creator. Manages everyone; cannot be removed, demoted or leave.
    Owner,
}

impl Role {
    /// The number that encodes the role on the wire.
    pub fn code(self) -> u8 {
        match self {
            Role::Reader => 0,
            Role::Member => 1,
            Role::Admin => 2,
            Role::Owner => 3,
        }
    }

    /// The role for a wire number.
    pub fn from_code(code: u64) -> Option<Role> {
        Some(match code {
            0 => Role::Reader,
            1 => Role::Member,
            2 => Role::Admin,
            3 => Role::Owner,
            _ => return None,
        })
    }

    /// The name used by the CLI and the API.
    pub fn name(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    /// Whether this role may write ideas.
    pub fn writes(self) -> bool {
        self >= Role::Member
    }

    /// Whether someone with this role may remove someone with `other`, or change their role:
    /// the owner manages everyone else; an admin manages admins, members and readers.
    pub fn manages(self, other: Role) -> bool {
        match self {
            Role::Owner => other != Role::Owner,
            Role::Admin => other <= Role::Admin,
            _ => false,
        }
    }

    /// Whether someone with this role may grant `role` (by invite or by a role change).
    pub fn grants(self, role: Role) -> bool {
        role != Role::Owner && self >= Role::Admin && role <= self
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "reader" => Ok(Role::Reader),
            "member" => Ok(Role::Member),
            "admin" => Ok(Role::Admin),
            _ => Err(format!(
                "unknown role {:?}: expected reader, member or admin",
                s
            )),
        }
    }
}

/// The id of the private space created by `owner` with `salt`: the first 16 bytes of
/// `SHA-256("agora/space/v2" ‖ owner ‖ salt)`.
pub fn space_id(owner: &AuthorId, salt: &[u8; 16]) -> SpaceId {
    let digest = Sha256::new()
        .chain_update(SPACE_DOMAIN)
        .chain_update(owner.0)
        .chain_update(salt)
        .finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    SpaceId(out)
}

/// The message that both the newcomer's identity and the invite key sign to redeem an invite:
/// `"agora-redeem-v2\0" ‖ space ‖ invite op id ‖ newcomer ‖ newcomer's device key`.
pub fn redeem_message(
    space: &SpaceId,
    invite: &OpId,
    member: &AuthorId,
    device: &[u8; 32],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(REDEEM_DOMAIN.len() + 16 + 32 + 32 + 32);
    m.extend_from_slice(REDEEM_DOMAIN);
    m.extend_from_slice(&space.0);
    m.extend_from_slice(&invite.0);
    m.extend_from_slice(&member.0);
    m.extend_from_slice(device);
    m
}

/// AAD of a sealed space name: `"agora-name-v2\0" ‖ space ‖ key id`.
pub fn name_aad(space: &SpaceId, key_id: &crate::keys::KeyId) -> Vec<u8> {
    [NAME_AAD, &space.0, &key_id.0].concat()
}

/// AAD of an earlier epoch's secret sealed in a rotation:
/// `"agora-seal-v2\0" ‖ space ‖ new key id ‖ sealed key id`.
pub fn seal_aad(space: &SpaceId, new: &crate::keys::KeyId, sealed: &crate::keys::KeyId) -> Vec<u8> {
    [SEAL_AAD, &space.0, &new.0, &sealed.0].concat()
}

#[cfg(test)]
mod tests;
