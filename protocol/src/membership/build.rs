//! Making the parts of operations: sealed names, rotations, wraps and redeem signatures. The
//! caller supplies every random byte through `rng`.

use super::wire::{Rotation, SealedBytes, WrapTo};
use super::{name_aad, redeem_message, seal_aad, space_id, OpBody, OpId, MAX_WRAPS};
use crate::identity::Identity;
use crate::ids::{AuthorId, SpaceId};
use crate::keys::{self, DeviceKey, EpochSecret, KeyError};
use crate::limits::MAX_NAME_CHARS;
use hpke::rand_core::CryptoRng;

fn random<const N: usize>(rng: &mut impl CryptoRng) -> [u8; N] {
    let mut out = [0u8; N];
    rng.fill_bytes(&mut out);
    out
}

/// Seals a space name under `secret`'s content key.
pub fn seal_name(
    space: &SpaceId,
    secret: &EpochSecret,
    name: &str,
    rng: &mut impl CryptoRng,
) -> SealedBytes {
    let key_id = secret.key_id();
    let nonce = random::<24>(rng);
    let ct = keys::seal(
        &secret.content_key(),
        &nonce,
        &name_aad(space, &key_id),
        name.as_bytes(),
    );
    SealedBytes { key_id, nonce, ct }
}

/// Opens a sealed space name with the secret of its epoch; refuses anything that is not a valid
/// name (UTF-8, at most [`MAX_NAME_CHARS`] characters).
pub fn open_name(
    space: &SpaceId,
    secret: &EpochSecret,
    sealed: &SealedBytes,
) -> Result<String, KeyError> {
    let plain = keys::open(
        &secret.content_key(),
        &sealed.nonce,
        &name_aad(space, &sealed.key_id),
        &sealed.ct,
    )?;
    match String::from_utf8(plain) {
        Ok(s) if s.chars().count() <= MAX_NAME_CHARS => Ok(s),
        _ => Err(KeyError::Decrypt),
    }
}

/// A new space: its id, its root secret and its signed creation.
#[derive(Debug)]
pub struct NewSpace {
    /// The space id.
    pub space: SpaceId,
    /// The root epoch's secret.
    pub root: EpochSecret,
    /// The creation operation.
    pub op: super::VerifiedOp,
}

/// Creates a private space owned by `identity`. Fails if the name is longer than
/// [`MAX_NAME_CHARS`] (its sealed form would not fit).
pub fn create(
    identity: &Identity,
    device: &DeviceKey,
    name: &str,
    rng: &mut impl CryptoRng,
) -> Result<NewSpace, super::OpError> {
    let salt = random::<16>(rng);
    let space = space_id(&identity.author(), &salt);
    let root = EpochSecret::from_bytes(random::<32>(rng));
    let wrap = keys::wrap(&root, &space, &identity.author(), &device.public(), rng)
        .expect("a device key made by DeviceKey is a valid X25519 key");
    let body = OpBody::Create {
        salt,
        device: device.public(),
        key_id: root.key_id(),
        wrap,
        name: seal_name(&space, &root, name, rng),
    };
    let op = super::Op::sign(identity, space, Vec::new(), body)?;
    Ok(NewSpace { space, root, op })
}

/// Wraps `secret` to each `(member, device key)`, sorted by member. A recipient whose device key
/// is not a valid X25519 key is skipped (it cannot have been admitted with it).
pub fn wraps(
    space: &SpaceId,
    secret: &EpochSecret,
    recipients: &[(AuthorId, [u8; 32])],
    rng: &mut impl CryptoRng,
) -> Vec<WrapTo> {
    let mut out: Vec<WrapTo> = recipients
        .iter()
        .filter_map(|(to, device)| {
            keys::wrap(secret, space, to, device, rng)
                .ok()
                .map(|wrap| WrapTo { to: *to, wrap })
        })
        .collect();
    out.sort_by_key(|w| w.to);
    out.dedup_by_key(|w| w.to);
    out
}

/// A rotation to `new`: the `previous` (current) secrets sealed under it, and `new` wrapped to
/// `recipients`. Returns the rotation with the first [`MAX_WRAPS`] wraps, and the other wraps in
/// chunks for `Share` operations.
pub fn rotation(
    space: &SpaceId,
    new: &EpochSecret,
    previous: &[&EpochSecret],
    recipients: &[(AuthorId, [u8; 32])],
    rng: &mut impl CryptoRng,
) -> (Rotation, Vec<Vec<WrapTo>>) {
    let key_id = new.key_id();
    let seal_key = new.seal_prev_key();
    let mut seals: Vec<SealedBytes> = previous
        .iter()
        .take(super::MAX_SEALS)
        .map(|old| {
            let nonce = random::<24>(rng);
            let old_id = old.key_id();
            SealedBytes {
                key_id: old_id,
                nonce,
                ct: keys::seal(
                    &seal_key,
                    &nonce,
                    &seal_aad(space, &key_id, &old_id),
                    old.as_bytes(),
                ),
            }
        })
        .collect();
    seals.sort_by_key(|s| s.key_id);
    seals.dedup_by_key(|s| s.key_id);
    let mut all = wraps(space, new, recipients, rng);
    let rest = if all.len() > MAX_WRAPS {
        all.split_off(MAX_WRAPS)
            .chunks(MAX_WRAPS)
            .map(<[WrapTo]>::to_vec)
            .collect()
    } else {
        Vec::new()
    };
    (
        Rotation {
            key_id,
            seals,
            wraps: all,
        },
        rest,
    )
}

/// Opens the earlier epochs' secrets sealed in a rotation, with the rotation's own secret.
/// Seals that do not open, or whose secret does not match its key id, are left out.
pub fn open_seals(space: &SpaceId, rotation: &Rotation, new: &EpochSecret) -> Vec<EpochSecret> {
    let seal_key = new.seal_prev_key();
    rotation
        .seals
        .iter()
        .filter_map(|s| {
            let plain = keys::open(
                &seal_key,
                &s.nonce,
                &seal_aad(space, &rotation.key_id, &s.key_id),
                &s.ct,
            )
            .ok()?;
            let secret = EpochSecret::from_bytes(<[u8; 32]>::try_from(&plain[..]).ok()?);
            (secret.key_id() == s.key_id).then_some(secret)
        })
        .collect()
}

/// A newcomer's half of an admission: both signatures of the redeem message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redeem {
    /// The invitation.
    pub invite: OpId,
    /// The newcomer.
    pub member: AuthorId,
    /// The newcomer's device key.
    pub device: [u8; 32],
    /// The invite key's signature.
    pub redeem: [u8; 64],
    /// The newcomer's signature.
    pub proof: [u8; 64],
}

/// Signs a redeem with the ticket's invite key and the newcomer's identity.
pub fn redeem(
    space: &SpaceId,
    invite: OpId,
    invite_key: &Identity,
    newcomer: &Identity,
    device: &DeviceKey,
) -> Redeem {
    let member = newcomer.author();
    let message = redeem_message(space, &invite, &member, &device.public());
    Redeem {
        invite,
        member,
        device: device.public(),
        redeem: invite_key.sign(&message),
        proof: newcomer.sign(&message),
    }
}

/// The admission of a redeemed invitation, wrapping `secret` (the courier's current epoch) to
/// the newcomer. Fails if the newcomer's device key is not a valid X25519 key.
pub fn admit_body(
    space: &SpaceId,
    r: &Redeem,
    at: u64,
    secret: &EpochSecret,
    rng: &mut impl CryptoRng,
) -> Result<OpBody, KeyError> {
    let wrap = keys::wrap(secret, space, &r.member, &r.device, rng)?;
    Ok(OpBody::Admit {
        invite: r.invite,
        member: r.member,
        device: r.device,
        at,
        redeem: r.redeem,
        proof: r.proof,
        key_id: secret.key_id(),
        wrap,
    })
}
