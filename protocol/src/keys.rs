//! The secrets of a private space and everything derived from them.
//!
//! - An [`EpochSecret`] is 32 random bytes that every member of a space holds for one epoch. The
//!   space's first epoch secret (made with the space) is its **root**: the gossip topic and the
//!   sync locator are derived from it, so only members can name the space on the wire. Every
//!   later epoch (a rotation, which every removal is) gets a fresh secret; content is sealed under
//!   the newest one.
//! - From an epoch secret, HKDF-SHA256 derives: the public [`KeyId`] (which also commits to the
//!   secret, since the AEAD is not key-committing), the content key, the key that seals the
//!   previous epochs' secrets, and (from the root) the topic and the locator.
//! - A [`DeviceKey`] is a member's X25519 key pair, derived from its own 32-byte seed (never from
//!   the ed25519 signing key). Epoch secrets travel to members as [`Wrap`]s: HPKE (RFC 9180) base
//!   mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305.
//! - [`seal`] and [`open`] are XChaCha20-Poly1305 with a 24-byte random nonce chosen by the caller.
//!
//! This module draws no randomness itself: nonces, seeds and HPKE's ephemeral keys come from the
//! caller.

use crate::ids::{AuthorId, SpaceId};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
/// The AEAD that seals content (XChaCha20-Poly1305), as other crates name it.
pub use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::XNonce;
use hkdf::Hkdf;
use hpke::{Deserializable, Kem as _, Serializable};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

type Kem = hpke::kem::X25519HkdfSha256;
type WrapKdf = hpke::kdf::HkdfSha256;
type WrapAead = hpke::aead::ChaCha20Poly1305;

/// The HKDF salt of every derivation from an epoch secret.
pub const HKDF_SALT: &[u8] = b"agora/v2";
/// HKDF info of the key id (the public name of an epoch and the commitment to its secret).
pub const INFO_KEY_ID: &[u8] = b"agora/v2/key-id";
/// HKDF info of the key that seals contributions and names.
pub const INFO_CONTENT: &[u8] = b"agora/v2/content";
/// HKDF info of the key that seals earlier epochs' secrets inside a rotation.
pub const INFO_SEAL_PREV: &[u8] = b"agora/v2/seal-prev";
/// HKDF info of the gossip topic (from the root secret).
pub const INFO_TOPIC: &[u8] = b"agora/v2/topic";
/// HKDF info of a node's device key seed (from its identity seed).
pub const INFO_DEVICE: &[u8] = b"agora/v2/device-key";
/// HKDF info of a node's transport key seed (from its identity seed).
pub const INFO_TRANSPORT: &[u8] = b"agora/v2/transport-key";
/// HKDF info of the sync locator (from the root secret).
pub const INFO_LOCATOR: &[u8] = b"agora/v2/locator";
/// The prefix of every private space's gossip topic; 64 hex characters follow.
pub const TOPIC_PREFIX_V2: &str = "agora/v2/";
/// HPKE `info` prefix of a wrap; space, key id and recipient follow.
pub const WRAP_INFO: &[u8] = b"agora-wrap-v2\0";
/// Length of the AEAD tag added by [`seal`] and by a wrap.
pub const TAG_LEN: usize = 16;
/// Length of a [`Wrap`]'s ciphertext: a sealed 32-byte secret.
pub const WRAP_CT_LEN: usize = 32 + TAG_LEN;

/// Why a secret could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The AEAD refused the ciphertext: wrong key, wrong context (space, epoch, author, document),
    /// or tampered bytes.
    #[error("cannot decrypt: wrong key or tampered ciphertext")]
    Decrypt,
    /// A wrap opened, but the secret inside does not hash to the key id it claims: the sender
    /// handed this member a different key than the one it announced.
    #[error("the unwrapped secret does not match its key id")]
    Commitment,
    /// A public key is not a valid X25519 point encoding.
    #[error("invalid X25519 public key")]
    BadPublicKey,
}

/// One epoch's 32-byte secret. Wiped from memory when dropped.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct EpochSecret([u8; 32]);

impl std::fmt::Debug for EpochSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EpochSecret(key id {})", self.key_id())
    }
}

crate::ids::hex_id!(
    /// The public name of an epoch: `HKDF-SHA256(salt "agora/v2", ikm secret, info
    /// "agora/v2/key-id")`, 32 bytes. Because it is a hash of the secret, it also commits to it: a
    /// member who unwraps a secret checks that it hashes to the announced key id.
    KeyId,
    32,
    "a key id"
);

fn derive(secret: &[u8; 32], info: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    Hkdf::<Sha256>::new(Some(HKDF_SALT), secret)
        .expand(info, &mut out)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

/// HKDF info of the key a node seals its own stored copies of private documents with (never on
/// the wire: it only keeps a node's snapshots ciphertext at rest).
pub const INFO_LOCAL: &[u8] = b"agora/v2/local-store";

/// HKDF info of the key a node derives its local seals' nonces with.
pub const INFO_LOCAL_NONCE: &[u8] = b"agora/v2/local-nonce";

/// The cipher a node seals what it stores of private spaces for itself (document snapshots)
/// with: derived from its identity seed, so it opens for that identity only.
pub fn local_cipher(identity: &crate::identity::Identity) -> XChaCha20Poly1305 {
    let mut key = derive(&identity.seed(), INFO_LOCAL);
    let cipher = XChaCha20Poly1305::new(&key.into());
    key.zeroize();
    cipher
}

/// A secret key for deriving the nonces of a node's local seals (a keyed hash of what is
/// sealed, so that a nonce tells nothing about the plaintext to someone without the key).
pub fn local_nonce_key(identity: &crate::identity::Identity) -> [u8; 32] {
    derive(&identity.seed(), INFO_LOCAL_NONCE)
}

impl EpochSecret {
    /// The secret from its bytes (drawn by the caller from a cryptographic random source, or read
    /// from the node's key file).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        EpochSecret(bytes)
    }

    /// The raw secret, for the key file and for wrapping.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The epoch's public key id.
    pub fn key_id(&self) -> KeyId {
        KeyId(derive(&self.0, INFO_KEY_ID))
    }

    /// The XChaCha20-Poly1305 key of contributions and names sealed in this epoch.
    pub fn content_key(&self) -> ContentKey {
        ContentKey(derive(&self.0, INFO_CONTENT))
    }

    /// The key that seals earlier epochs' secrets inside the rotation that made this epoch.
    pub fn seal_prev_key(&self) -> ContentKey {
        ContentKey(derive(&self.0, INFO_SEAL_PREV))
    }

    /// The gossip topic of the space whose root secret this is: `agora/v2/` and the lowercase
    /// hex of `HKDF(root, "agora/v2/topic")`. Only members can compute it.
    pub fn topic(&self) -> String {
        format!(
            "{TOPIC_PREFIX_V2}{}",
            hex::encode(derive(&self.0, INFO_TOPIC))
        )
    }

    /// The 32-byte name of the space in sync requests, from its root secret.
    pub fn locator(&self) -> [u8; 32] {
        derive(&self.0, INFO_LOCATOR)
    }
}

/// A derived XChaCha20-Poly1305 key. Wiped from memory when dropped.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct ContentKey([u8; 32]);

impl ContentKey {
    /// The cipher, to seal or open many messages with one key schedule.
    pub fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.0.into())
    }
}

/// Seals `plaintext` under `key` with the caller's fresh random 24-byte `nonce`, binding `aad`.
/// The output is the ciphertext followed by the 16-byte tag.
pub fn seal(key: &ContentKey, nonce: &[u8; 24], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    seal_with(&key.cipher(), nonce, aad, plaintext)
}

/// [`seal`] with a cipher already keyed.
pub fn seal_with(
    cipher: &XChaCha20Poly1305,
    nonce: &[u8; 24],
    aad: &[u8],
    plaintext: &[u8],
) -> Vec<u8> {
    cipher
        .encrypt(
            &XNonce::from(*nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .expect("XChaCha20-Poly1305 seals any message under 256 GiB")
}

/// Opens what [`seal`] made; fails on any other key, nonce, `aad` or a changed byte.
pub fn open(
    key: &ContentKey,
    nonce: &[u8; 24],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>, KeyError> {
    open_with(&key.cipher(), nonce, aad, ciphertext)
}

/// [`open`] with a cipher already keyed.
pub fn open_with(
    cipher: &XChaCha20Poly1305,
    nonce: &[u8; 24],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>, KeyError> {
    cipher
        .decrypt(
            &XNonce::from(*nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map_err(|_| KeyError::Decrypt)
}

/// A member device's X25519 key pair, derived from a 32-byte seed with HPKE's `DeriveKeyPair`.
#[derive(Clone)]
pub struct DeviceKey {
    secret: <Kem as hpke::Kem>::PrivateKey,
    public: [u8; 32],
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceKey(public {})", hex::encode(self.public))
    }
}

impl DeviceKey {
    /// The key pair for `seed` (32 random bytes the node keeps in its key file).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let (secret, public) = Kem::derive_keypair(seed);
        DeviceKey {
            secret,
            public: public.to_bytes().into(),
        }
    }

    /// The device key of a node whose identity seed is `seed`: the X25519 key pair of
    /// `HKDF-SHA256(salt "agora/v2", ikm seed, info "agora/v2/device-key")`. A hash of the
    /// seed, not the ed25519 scalar converted, so the two keys share no algebra.
    pub fn for_identity(identity: &crate::identity::Identity) -> Self {
        let mut seed = derive(&identity.seed(), INFO_DEVICE);
        let key = DeviceKey::from_seed(&seed);
        seed.zeroize();
        key
    }

    /// The public key members wrap epoch secrets to.
    pub fn public(&self) -> [u8; 32] {
        self.public
    }
}

/// The seed of a node's transport key (its libp2p ed25519 identity): `HKDF-SHA256(salt
/// "agora/v2", ikm identity seed, info "agora/v2/transport-key")`. A hash of the identity seed:
/// a peer id says nothing of the author key behind it (PROTOCOL 14.9).
pub fn transport_seed(identity: &crate::identity::Identity) -> [u8; 32] {
    derive(&identity.seed(), INFO_TRANSPORT)
}

/// An epoch secret wrapped to one member's device key with HPKE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wrap {
    /// The HPKE encapsulated key (the sender's ephemeral X25519 public key).
    pub enc: [u8; 32],
    /// The sealed secret: 32 bytes and a 16-byte tag.
    pub ct: Vec<u8>,
}

/// HPKE `info` of a wrap: `"agora-wrap-v2\0" ‖ space (16) ‖ key id (32) ‖ recipient (32)`. A wrap
/// therefore opens only for its own space, epoch and recipient.
pub fn wrap_info(space: &SpaceId, key_id: &KeyId, recipient: &AuthorId) -> Vec<u8> {
    let mut info = Vec::with_capacity(WRAP_INFO.len() + 16 + 32 + 32);
    info.extend_from_slice(WRAP_INFO);
    info.extend_from_slice(&space.0);
    info.extend_from_slice(&key_id.0);
    info.extend_from_slice(&recipient.0);
    info
}

/// Wraps `secret` for `recipient`, whose device public key is `device`. `rng` supplies HPKE's
/// ephemeral key.
pub fn wrap(
    secret: &EpochSecret,
    space: &SpaceId,
    recipient: &AuthorId,
    device: &[u8; 32],
    rng: &mut impl hpke::rand_core::CryptoRng,
) -> Result<Wrap, KeyError> {
    let public =
        <Kem as hpke::Kem>::PublicKey::from_bytes(device).map_err(|_| KeyError::BadPublicKey)?;
    let info = wrap_info(space, &secret.key_id(), recipient);
    let (enc, ct) = hpke::single_shot_seal_with_rng::<WrapAead, WrapKdf, Kem>(
        &hpke::OpModeS::Base,
        &public,
        &info,
        secret.as_bytes(),
        b"",
        rng,
    )
    .map_err(|_| KeyError::BadPublicKey)?;
    Ok(Wrap {
        enc: enc.to_bytes().into(),
        ct,
    })
}

/// Opens a wrap addressed to `me` (with `device`) for the epoch `key_id` of `space`, and checks
/// that the secret inside hashes to `key_id`.
pub fn unwrap(
    wrapped: &Wrap,
    space: &SpaceId,
    key_id: &KeyId,
    me: &AuthorId,
    device: &DeviceKey,
) -> Result<EpochSecret, KeyError> {
    let enc =
        <Kem as hpke::Kem>::EncappedKey::from_bytes(&wrapped.enc).map_err(|_| KeyError::Decrypt)?;
    let info = wrap_info(space, key_id, me);
    let mut plain = hpke::single_shot_open::<WrapAead, WrapKdf, Kem>(
        &hpke::OpModeR::Base,
        &device.secret,
        &enc,
        &info,
        &wrapped.ct,
        b"",
    )
    .map_err(|_| KeyError::Decrypt)?;
    let bytes = <[u8; 32]>::try_from(&plain[..]).map_err(|_| KeyError::Decrypt);
    plain.zeroize();
    let secret = EpochSecret::from_bytes(bytes?);
    if secret.key_id() != *key_id {
        return Err(KeyError::Commitment);
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn a_wrap_opens_only_for_its_space_epoch_and_recipient() {
        let mut rng = rand::rngs::ChaCha20Rng::from_seed([9; 32]);
        let secret = EpochSecret::from_bytes([1; 32]);
        let other = EpochSecret::from_bytes([2; 32]);
        let me = AuthorId([3; 32]);
        let device = DeviceKey::from_seed(&[4; 32]);
        let space = SpaceId([5; 16]);
        let w = wrap(&secret, &space, &me, &device.public(), &mut rng).unwrap();
        assert_eq!(w.ct.len(), WRAP_CT_LEN);
        let opened = unwrap(&w, &space, &secret.key_id(), &me, &device).unwrap();
        assert_eq!(opened, secret);
        assert_eq!(
            unwrap(&w, &SpaceId([6; 16]), &secret.key_id(), &me, &device),
            Err(KeyError::Decrypt)
        );
        assert_eq!(
            unwrap(&w, &space, &other.key_id(), &me, &device),
            Err(KeyError::Decrypt)
        );
        assert_eq!(
            unwrap(&w, &space, &secret.key_id(), &AuthorId([7; 32]), &device),
            Err(KeyError::Decrypt)
        );
        assert_eq!(
            unwrap(
                &w,
                &space,
                &secret.key_id(),
                &me,
                &DeviceKey::from_seed(&[8; 32])
            ),
            Err(KeyError::Decrypt)
        );
        // A sender that wraps one secret under another epoch's name is caught by the commitment.
        let info_lie = {
            let public = <Kem as hpke::Kem>::PublicKey::from_bytes(&device.public()).unwrap();
            let (enc, ct) = hpke::single_shot_seal_with_rng::<WrapAead, WrapKdf, Kem>(
                &hpke::OpModeS::Base,
                &public,
                &wrap_info(&space, &other.key_id(), &me),
                secret.as_bytes(),
                b"",
                &mut rng,
            )
            .unwrap();
            Wrap {
                enc: enc.to_bytes().into(),
                ct,
            }
        };
        assert_eq!(
            unwrap(&info_lie, &space, &other.key_id(), &me, &device),
            Err(KeyError::Commitment)
        );
    }

    #[test]
    fn sealed_bytes_open_only_with_the_same_key_nonce_and_aad() {
        let key = EpochSecret::from_bytes([1; 32]).content_key();
        let ct = seal(&key, &[2; 24], b"aad", b"hello");
        assert_eq!(ct.len(), 5 + TAG_LEN);
        assert_eq!(open(&key, &[2; 24], b"aad", &ct).unwrap(), b"hello");
        assert!(open(&key, &[3; 24], b"aad", &ct).is_err());
        assert!(open(&key, &[2; 24], b"aae", &ct).is_err());
        let other = EpochSecret::from_bytes([9; 32]).content_key();
        assert!(open(&other, &[2; 24], b"aad", &ct).is_err());
        let mut bad = ct.clone();
        bad[0] ^= 1;
        assert!(open(&key, &[2; 24], b"aad", &bad).is_err());
    }

    #[test]
    fn derivations_are_distinct() {
        let s = EpochSecret::from_bytes([1; 32]);
        let all = [
            s.key_id().0,
            s.content_key().0,
            s.seal_prev_key().0,
            s.locator(),
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert!(s.topic().starts_with(TOPIC_PREFIX_V2));
        assert_eq!(s.topic().len(), TOPIC_PREFIX_V2.len() + 64);
    }
}
