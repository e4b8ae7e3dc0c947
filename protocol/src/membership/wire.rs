//! Membership operations on the wire: canonical CBOR, signing and structural checks.

use super::{
    redeem_message, space_id, OpId, Role, MAX_OP_BYTES, MAX_PARENTS, MAX_PINS, MAX_PIN_HEADS,
    MAX_SEALED_NAME, MAX_SEALS, MAX_WRAPS, OP_ID_DOMAIN, OP_SIGN_DOMAIN,
};
use crate::cbor::{self, as_array, map, uint, CborError, Fields};
use crate::identity::Identity;
use crate::ids::{AuthorId, DocId, SpaceId};
use crate::keys::{KeyId, Wrap, TAG_LEN, WRAP_CT_LEN};
use ciborium::Value;
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

/// The version field of every version 2 structure.
pub const V2: u64 = 2;

/// Why an operation was refused before resolution.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpError {
    /// Larger than [`MAX_OP_BYTES`].
    #[error("operation is {0} bytes, more than the {MAX_OP_BYTES} allowed")]
    TooLarge(usize),
    /// Not the CBOR shape of an operation.
    #[error("malformed operation: {0}")]
    Malformed(String),
    /// Decodes, but is not the one canonical encoding of what it holds.
    #[error("operation is not canonically encoded")]
    NonCanonical,
    /// A version other than 2.
    #[error("unsupported operation version {0}")]
    UnsupportedVersion(u64),
    /// Breaks a structural rule (parents, sizes, roles, the space id of a creation).
    #[error("invalid operation: {0}")]
    Invalid(String),
    /// The author's signature, or a newcomer's proof in an admission, does not verify.
    #[error("operation signature does not verify")]
    BadSignature,
}

impl OpError {
    /// A short, stable name for counting and logging.
    pub fn code(&self) -> &'static str {
        match self {
            OpError::TooLarge(_) => "too_large",
            OpError::Malformed(_) => "malformed",
            OpError::NonCanonical => "non_canonical",
            OpError::UnsupportedVersion(_) => "unsupported_version",
            OpError::Invalid(_) => "invalid_op",
            OpError::BadSignature => "bad_signature",
        }
    }
}

impl From<CborError> for OpError {
    fn from(e: CborError) -> Self {
        OpError::Malformed(e.0)
    }
}

/// Bytes sealed with XChaCha20-Poly1305 under an epoch's content or seal key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedBytes {
    /// The epoch whose key sealed them.
    pub key_id: KeyId,
    /// The random nonce.
    pub nonce: [u8; 24],
    /// Ciphertext and tag.
    pub ct: Vec<u8>,
}

/// An epoch secret wrapped to one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrapTo {
    /// The member it is for.
    pub to: AuthorId,
    /// The HPKE wrap (see [`crate::keys::wrap`]).
    pub wrap: Wrap,
}

/// A new epoch: its key id, the earlier epochs' secrets sealed under it, and its secret wrapped
/// to the members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The new epoch's key id (a commitment to its secret).
    pub key_id: KeyId,
    /// The secrets of the epochs that were current for the author (the heads of the epoch DAG
    /// in the operation's past), sealed under the new epoch's seal key, so that whoever holds
    /// the new secret can read all history.
    pub seals: Vec<SealedBytes>,
    /// The new secret for each member (or the first of them: more follow in `Share`s).
    pub wraps: Vec<WrapTo>,
}

/// The heads of one document that a removal (or a demotion) keeps of its target's changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// The document.
    pub doc: DocId,
    /// Change hashes, sorted: the target's changes in their causal past stay, the target's others
    /// are whited out.
    pub heads: Vec<[u8; 32]>,
}

/// What an operation does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpBody {
    /// Creates the space; the author is its owner. The space id is [`space_id`]`(author, salt)`.
    Create {
        /// 16 random bytes.
        salt: [u8; 16],
        /// The owner's device key (X25519 public key).
        device: [u8; 32],
        /// The key id of the root epoch.
        key_id: KeyId,
        /// The root secret wrapped to the owner itself, so that a node rebuilds every secret it
        /// holds from the operations and its device key alone.
        wrap: Wrap,
        /// The space's name, sealed under the root epoch.
        name: SealedBytes,
    },
    /// An invitation: whoever holds the secret key of `key` may join with `role`.
    Invite {
        /// The ed25519 public key derived from the ticket secret.
        key: [u8; 32],
        /// The role the newcomer gets (never owner).
        role: Role,
        /// Unix time, in seconds, after which admissions are refused.
        expires: u64,
        /// How many admissions it allows (at least 1).
        uses: u64,
    },
    /// Withdraws an invitation.
    Revoke {
        /// The `Invite`.
        invite: OpId,
    },
    /// Admits a newcomer who redeemed an invitation. The author is a member acting as courier;
    /// the authority comes from the invitation.
    Admit {
        /// The `Invite`.
        invite: OpId,
        /// The newcomer.
        member: AuthorId,
        /// The newcomer's device key.
        device: [u8; 32],
        /// Unix time, in seconds, at which the courier admitted (compared with the expiry).
        at: u64,
        /// The invite key's signature of [`redeem_message`].
        redeem: [u8; 64],
        /// The newcomer's own signature of [`redeem_message`].
        proof: [u8; 64],
        /// The epoch whose secret is wrapped to the newcomer.
        key_id: KeyId,
        /// That secret, wrapped to the newcomer's device key.
        wrap: Wrap,
    },
    /// Changes a member's role.
    SetRole {
        /// The member.
        member: AuthorId,
        /// The new role (never owner).
        role: Role,
        /// For a writer made a reader: what of their changes stays.
        pins: Vec<Pin>,
    },
    /// Removes a member; a member may remove itself (leaves).
    Remove {
        /// The member removed.
        member: AuthorId,
        /// The new epoch. Required unless the member removes itself.
        rotation: Option<Rotation>,
        /// What of the removed member's changes stays.
        pins: Vec<Pin>,
    },
    /// A new epoch without a membership change (to repair a fork, or after a leave).
    Rotate {
        /// The new epoch.
        rotation: Rotation,
    },
    /// Hands an existing epoch's secret to members who lack it.
    Share {
        /// The epoch.
        key_id: KeyId,
        /// Its secret for each of them.
        wraps: Vec<WrapTo>,
    },
    /// Renames the space.
    Rename {
        /// The new name, sealed.
        name: SealedBytes,
    },
}

impl OpBody {
    /// The number that encodes the operation type on the wire.
    pub fn code(&self) -> u64 {
        match self {
            OpBody::Create { .. } => 0,
            OpBody::Invite { .. } => 1,
            OpBody::Revoke { .. } => 2,
            OpBody::Admit { .. } => 3,
            OpBody::SetRole { .. } => 4,
            OpBody::Remove { .. } => 5,
            OpBody::Rotate { .. } => 6,
            OpBody::Share { .. } => 7,
            OpBody::Rename { .. } => 8,
        }
    }

    /// A short name for logs and the API.
    pub fn name(&self) -> &'static str {
        match self {
            OpBody::Create { .. } => "create",
            OpBody::Invite { .. } => "invite",
            OpBody::Revoke { .. } => "revoke",
            OpBody::Admit { .. } => "admit",
            OpBody::SetRole { .. } => "set_role",
            OpBody::Remove { .. } => "remove",
            OpBody::Rotate { .. } => "rotate",
            OpBody::Share { .. } => "share",
            OpBody::Rename { .. } => "rename",
        }
    }

    /// The member whose role this operation sets, if any.
    pub fn target(&self) -> Option<AuthorId> {
        match self {
            OpBody::Admit { member, .. }
            | OpBody::SetRole { member, .. }
            | OpBody::Remove { member, .. } => Some(*member),
            _ => None,
        }
    }

    /// The new epoch this operation makes, if any.
    pub fn rotation(&self) -> Option<&Rotation> {
        match self {
            OpBody::Remove { rotation, .. } => rotation.as_ref(),
            OpBody::Rotate { rotation } => Some(rotation),
            _ => None,
        }
    }
}

/// A membership operation as it travels and is stored. Only [`Op::verify`] makes a
/// [`VerifiedOp`] of one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// The space.
    pub space: SpaceId,
    /// Who signed it.
    pub author: AuthorId,
    /// The operations its author had seen last (sorted, no duplicates; none for `Create`).
    pub parents: Vec<OpId>,
    /// What it does.
    pub body: OpBody,
    /// ed25519 signature of `OP_SIGN_DOMAIN ‖ id`.
    pub signature: [u8; 64],
}

fn sealed_value(s: &SealedBytes) -> Value {
    map(vec![
        ("key", cbor::bytes(&s.key_id.0)),
        ("nonce", cbor::bytes(&s.nonce)),
        ("ct", cbor::bytes(&s.ct)),
    ])
}

fn wrap_value(w: &WrapTo) -> Value {
    map(vec![
        ("to", cbor::bytes(&w.to.0)),
        ("enc", cbor::bytes(&w.wrap.enc)),
        ("ct", cbor::bytes(&w.wrap.ct)),
    ])
}

fn rotation_value(r: &Rotation) -> Value {
    map(vec![
        ("key", cbor::bytes(&r.key_id.0)),
        (
            "seals",
            Value::Array(r.seals.iter().map(sealed_value).collect()),
        ),
        (
            "wraps",
            Value::Array(r.wraps.iter().map(wrap_value).collect()),
        ),
    ])
}

fn pins_value(pins: &[Pin]) -> Value {
    Value::Array(
        pins.iter()
            .map(|p| {
                map(vec![
                    ("doc", cbor::bytes(&p.doc.0)),
                    (
                        "heads",
                        Value::Array(p.heads.iter().map(|h| cbor::bytes(h)).collect()),
                    ),
                ])
            })
            .collect(),
    )
}

fn body_value(body: &OpBody) -> Value {
    match body {
        OpBody::Create {
            salt,
            device,
            key_id,
            wrap,
            name,
        } => map(vec![
            ("salt", cbor::bytes(salt)),
            ("device", cbor::bytes(device)),
            ("key", cbor::bytes(&key_id.0)),
            ("enc", cbor::bytes(&wrap.enc)),
            ("ct", cbor::bytes(&wrap.ct)),
            ("name", sealed_value(name)),
        ]),
        OpBody::Invite {
            key,
            role,
            expires,
            uses,
        } => map(vec![
            ("key", cbor::bytes(key)),
            ("role", uint(role.code().into())),
            ("expires", uint(*expires)),
            ("uses", uint(*uses)),
        ]),
        OpBody::Revoke { invite } => map(vec![("invite", cbor::bytes(&invite.0))]),
        OpBody::Admit {
            invite,
            member,
            device,
            at,
            redeem,
            proof,
            key_id,
            wrap,
        } => map(vec![
            ("invite", cbor::bytes(&invite.0)),
            ("member", cbor::bytes(&member.0)),
            ("device", cbor::bytes(device)),
            ("at", uint(*at)),
            ("redeem", cbor::bytes(redeem)),
            ("proof", cbor::bytes(proof)),
            ("key", cbor::bytes(&key_id.0)),
            ("enc", cbor::bytes(&wrap.enc)),
            ("ct", cbor::bytes(&wrap.ct)),
        ]),
        OpBody::SetRole { member, role, pins } => map(vec![
            ("member", cbor::bytes(&member.0)),
            ("role", uint(role.code().into())),
            ("pins", pins_value(pins)),
        ]),
        OpBody::Remove {
            member,
            rotation,
            pins,
        } => map(vec![
            ("member", cbor::bytes(&member.0)),
            (
                "rotation",
                rotation.as_ref().map_or(Value::Null, rotation_value),
            ),
            ("pins", pins_value(pins)),
        ]),
        OpBody::Rotate { rotation } => map(vec![("rotation", rotation_value(rotation))]),
        OpBody::Share { key_id, wraps } => map(vec![
            ("key", cbor::bytes(&key_id.0)),
            (
                "wraps",
                Value::Array(wraps.iter().map(wrap_value).collect()),
            ),
        ]),
        OpBody::Rename { name } => map(vec![("name", sealed_value(name))]),
    }
}

fn read_sealed(v: Value, what: &'static str, exact: Option<usize>) -> Result<SealedBytes, OpError> {
    let mut f = Fields::of(v, what)?;
    let s = SealedBytes {
        key_id: KeyId(f.array("key")?),
        nonce: f.array("nonce")?,
        ct: f.bytes("ct")?,
    };
    f.finish()?;
    let ok = match exact {
        Some(n) => s.ct.len() == n,
        None => s.ct.len() >= TAG_LEN && s.ct.len() <= MAX_SEALED_NAME,
    };
    if !ok {
        return Err(OpError::Invalid(format!(
            "{what} ciphertext of {} bytes",
            s.ct.len()
        )));
    }
    Ok(s)
}

fn read_wrap(v: Value) -> Result<WrapTo, OpError> {
    let mut f = Fields::of(v, "wrap")?;
    let w = WrapTo {
        to: AuthorId(f.array("to")?),
        wrap: Wrap {
            enc: f.array("enc")?,
            ct: f.bytes("ct")?,
        },
    };
    f.finish()?;
    if w.wrap.ct.len() != WRAP_CT_LEN {
        return Err(OpError::Invalid("wrap ciphertext is not 48 bytes".into()));
    }
    Ok(w)
}

fn read_wraps(items: Vec<Value>) -> Result<Vec<WrapTo>, OpError> {
    let wraps = items
        .into_iter()
        .map(read_wrap)
        .collect::<Result<Vec<_>, _>>()?;
    if !wraps.windows(2).all(|w| w[0].to < w[1].to) {
        return Err(OpError::Invalid(
            "wraps are not sorted by recipient, or repeat one".into(),
        ));
    }
    Ok(wraps)
}

fn read_rotation(v: Value) -> Result<Rotation, OpError> {
    let mut f = Fields::of(v, "rotation")?;
    let key_id = KeyId(f.array("key")?);
    let seals = f
        .list("seals", MAX_SEALS)?
        .into_iter()
        .map(|s| read_sealed(s, "seal", Some(32 + TAG_LEN)))
        .collect::<Result<Vec<_>, _>>()?;
    let wraps = read_wraps(f.list("wraps", MAX_WRAPS)?)?;
    f.finish()?;
    if !seals.windows(2).all(|w| w[0].key_id < w[1].key_id) {
        return Err(OpError::Invalid("seals are not sorted by key id".into()));
    }
    Ok(Rotation {
        key_id,
        seals,
        wraps,
    })
}

fn read_pins(items: Vec<Value>) -> Result<Vec<Pin>, OpError> {
    let mut pins = Vec::with_capacity(items.len());
    for item in items {
        let mut f = Fields::of(item, "pin")?;
        let doc = DocId(f.array("doc")?);
        let heads = f
            .list("heads", MAX_PIN_HEADS)?
            .into_iter()
            .map(|h| as_array::<32>(h, "head"))
            .collect::<Result<Vec<_>, _>>()?;
        f.finish()?;
        if heads.is_empty() || !heads.windows(2).all(|w| w[0] < w[1]) {
            return Err(OpError::Invalid(
                "pin heads are empty, unsorted or repeated".into(),
            ));
        }
        pins.push(Pin { doc, heads });
    }
    if !pins.windows(2).all(|w| w[0].doc < w[1].doc) {
        return Err(OpError::Invalid("pins are not sorted by document".into()));
    }
    Ok(pins)
}

fn read_role(code: u64, grantable: bool) -> Result<Role, OpError> {
    match Role::from_code(code) {
        Some(Role::Owner) if grantable => {
            Err(OpError::Invalid("the owner role is not granted".into()))
        }
        Some(role) => Ok(role),
        None => Err(OpError::Invalid(format!("unknown role {code}"))),
    }
}

fn read_body(code: u64, v: Value) -> Result<OpBody, OpError> {
    let mut f = Fields::of(v, "body")?;
    let body = match code {
        0 => OpBody::Create {
            salt: f.array("salt")?,
            device: f.array("device")?,
            key_id: KeyId(f.array("key")?),
            wrap: Wrap {
                enc: f.array("enc")?,
                ct: f.bytes("ct")?,
            },
            name: read_sealed(f.next("name")?, "name", None)?,
        },
        1 => OpBody::Invite {
            key: f.array("key")?,
            role: read_role(f.uint("role")?, true)?,
            expires: f.uint("expires")?,
            uses: f.uint("uses")?,
        },
        2 => OpBody::Revoke {
            invite: OpId(f.array("invite")?),
        },
        3 => OpBody::Admit {
            invite: OpId(f.array("invite")?),
            member: AuthorId(f.array("member")?),
            device: f.array("device")?,
            at: f.uint("at")?,
            redeem: f.array("redeem")?,
            proof: f.array("proof")?,
            key_id: KeyId(f.array("key")?),
            wrap: Wrap {
                enc: f.array("enc")?,
                ct: f.bytes("ct")?,
            },
        },
        4 => OpBody::SetRole {
            member: AuthorId(f.array("member")?),
            role: read_role(f.uint("role")?, true)?,
            pins: read_pins(f.list("pins", MAX_PINS)?)?,
        },
        5 => OpBody::Remove {
            member: AuthorId(f.array("member")?),
            rotation: match f.next("rotation")? {
                Value::Null => None,
                v => Some(read_rotation(v)?),
            },
            pins: read_pins(f.list("pins", MAX_PINS)?)?,
        },
        6 => OpBody::Rotate {
            rotation: read_rotation(f.next("rotation")?)?,
        },
        7 => OpBody::Share {
            key_id: KeyId(f.array("key")?),
            wraps: read_wraps(f.list("wraps", MAX_WRAPS)?)?,
        },
        8 => OpBody::Rename {
            name: read_sealed(f.next("name")?, "name", None)?,
        },
        other => return Err(OpError::Invalid(format!("unknown operation type {other}"))),
    };
    f.finish()?;
    match &body {
        OpBody::Invite { uses: 0, .. } => {
            return Err(OpError::Invalid("an invite allows no admission".into()))
        }
        OpBody::Admit { wrap, .. } | OpBody::Create { wrap, .. }
            if wrap.ct.len() != WRAP_CT_LEN =>
        {
            return Err(OpError::Invalid("wrap ciphertext is not 48 bytes".into()))
        }
        _ => {}
    }
    Ok(body)
}

impl Op {
    fn unsigned_value(&self) -> Vec<(&'static str, Value)> {
        vec![
            ("v", uint(V2)),
            ("space", cbor::bytes(&self.space.0)),
            ("author", cbor::bytes(&self.author.0)),
            (
                "parents",
                Value::Array(self.parents.iter().map(|p| cbor::bytes(&p.0)).collect()),
            ),
            ("type", uint(self.body.code())),
            ("body", body_value(&self.body)),
        ]
    }

    /// The operation's id: `SHA-256(OP_ID_DOMAIN ‖ unsigned encoding)`, where the unsigned
    /// encoding is the operation's map without its `sig` entry.
    pub fn id(&self) -> OpId {
        let unsigned = cbor::encode(&map(self.unsigned_value()));
        OpId(
            Sha256::new()
                .chain_update(OP_ID_DOMAIN)
                .chain_update(unsigned)
                .finalize()
                .into(),
        )
    }

    /// The message the author signs: `OP_SIGN_DOMAIN ‖ id`.
    pub fn signing_message(id: &OpId) -> Vec<u8> {
        [OP_SIGN_DOMAIN, &id.0].concat()
    }

    /// Makes and signs an operation. `parents` are sorted and deduplicated here. Fails, as
    /// every receiver would, if the operation breaks a structural rule (too many parents, too
    /// large, a leave with a rotation...), so that no node keeps an operation others refuse.
    pub fn sign(
        identity: &Identity,
        space: SpaceId,
        mut parents: Vec<OpId>,
        body: OpBody,
    ) -> Result<VerifiedOp, OpError> {
        parents.sort_unstable();
        parents.dedup();
        let mut op = Op {
            space,
            author: identity.author(),
            parents,
            body,
            signature: [0; 64],
        };
        let id = op.id();
        op.signature = identity.sign(&Op::signing_message(&id));
        let bytes = op.encode();
        Op::decode(&bytes)?;
        Ok(VerifiedOp { op, id, bytes })
    }

    /// The canonical CBOR encoding (the gossip payload and the stored value).
    pub fn encode(&self) -> Vec<u8> {
        let mut entries = self.unsigned_value();
        entries.push(("sig", cbor::bytes(&self.signature)));
        cbor::encode(&map(entries))
    }

    /// Decodes untrusted bytes and checks their shape and structural rules, not the signature.
    pub fn decode(bytes: &[u8]) -> Result<Op, OpError> {
        if bytes.len() > MAX_OP_BYTES {
            return Err(OpError::TooLarge(bytes.len()));
        }
        let mut f = Fields::of(cbor::decode(bytes, MAX_OP_BYTES)?, "operation")?;
        let v = f.uint("v")?;
        if v != V2 {
            return Err(OpError::UnsupportedVersion(v));
        }
        let space = SpaceId(f.array("space")?);
        let author = AuthorId(f.array("author")?);
        let parents = f
            .list("parents", MAX_PARENTS)?
            .into_iter()
            .map(|p| as_array::<32>(p, "parent").map(OpId))
            .collect::<Result<Vec<_>, _>>()?;
        let code = f.uint("type")?;
        let body = read_body(code, f.next("body")?)?;
        let signature = f.array("sig")?;
        f.finish()?;
        let op = Op {
            space,
            author,
            parents,
            body,
            signature,
        };
        if !op.parents.windows(2).all(|w| w[0] < w[1]) {
            return Err(OpError::Invalid("parents are not sorted, or repeat".into()));
        }
        match &op.body {
            OpBody::Create { salt, .. } => {
                if !op.parents.is_empty() {
                    return Err(OpError::Invalid("a creation has parents".into()));
                }
                if space_id(&op.author, salt) != op.space {
                    return Err(OpError::Invalid(
                        "the space id is not derived from its creator and salt".into(),
                    ));
                }
            }
            _ if op.parents.is_empty() => {
                return Err(OpError::Invalid("an operation without parents".into()))
            }
            OpBody::Remove {
                member,
                rotation: Some(_),
                ..
            } if *member == op.author => {
                // Whoever leaves must not choose the next key: an admin rotates after a leave.
                return Err(OpError::Invalid("a member leaving does not rotate".into()));
            }
            _ => {}
        }
        if op.encode() != bytes {
            return Err(OpError::NonCanonical);
        }
        Ok(op)
    }

    /// Decodes and verifies: shape, structure, the author's signature (strict RFC 8032) and, for
    /// an admission, the newcomer's proof. The invite key's signature of an admission is checked
    /// by [`super::resolve`], which knows the invitation.
    pub fn verify(bytes: &[u8]) -> Result<VerifiedOp, OpError> {
        let op = Op::decode(bytes)?;
        let id = op.id();
        verify_sig(&op.author.0, &Op::signing_message(&id), &op.signature)?;
        if let OpBody::Admit {
            invite,
            member,
            device,
            proof,
            ..
        } = &op.body
        {
            verify_sig(
                &member.0,
                &redeem_message(&op.space, invite, member, device),
                proof,
            )?;
        }
        Ok(VerifiedOp {
            op,
            id,
            bytes: bytes.to_vec(),
        })
    }
}

/// Strict ed25519 verification with a non-weak key.
pub(crate) fn verify_sig(key: &[u8; 32], message: &[u8], sig: &[u8; 64]) -> Result<(), OpError> {
    let key = VerifyingKey::from_bytes(key).map_err(|_| OpError::BadSignature)?;
    if key.is_weak() {
        return Err(OpError::BadSignature);
    }
    key.verify_strict(message, &Signature::from_bytes(sig))
        .map_err(|_| OpError::BadSignature)
}

/// An operation whose encoding, structure and signature were checked. Only [`Op::verify`] and
/// [`Op::sign`] make one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedOp {
    op: Op,
    id: OpId,
    bytes: Vec<u8>,
}

impl VerifiedOp {
    /// The operation.
    pub fn op(&self) -> &Op {
        &self.op
    }

    /// Its id.
    pub fn id(&self) -> OpId {
        self.id
    }

    /// Its canonical encoding.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}
