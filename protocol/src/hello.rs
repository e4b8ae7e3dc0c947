//! The hello of private-space sync (wire version 2, PROTOCOL 14.9): how two nodes tell each other
//! which author runs them, so that only members learn it.
//!
//! A node's transport identity (its libp2p peer id) is not its author key: nothing a peer sees on
//! the wire names the author behind it. Before it syncs a private space with a peer, a node sends
//! a `hello` sealed under an epoch key of that space: its author and an ed25519 signature by that
//! author binding the space, the epoch and both transport ids (the sender's, then the
//! receiver's). Only a holder of the epoch key can read it; only the author can make it; it is
//! worth nothing on another connection. The responder, if it holds the space and the sender is a
//! member in its view, answers with its own hello sealed under the same key.
//!
//! Plaintext: the canonical CBOR `{"author": bstr(32), "sig": bstr(64)}`, sealed with
//! XChaCha20-Poly1305 under the epoch's content key with the associated data [`hello_aad`].

use crate::cbor;
use crate::identity::Identity;
use crate::ids::{AuthorId, SpaceId};
use crate::keys::{self, KeyId, XChaCha20Poly1305};
use ed25519_dalek::{Signature, VerifyingKey};

/// Domain prefix of the signed message and of the associated data.
pub const HELLO_DOMAIN: &[u8] = b"agora-hello-v2\0";
/// Longest transport id a hello binds (a libp2p peer id's bytes: 38 for an ed25519 key).
pub const MAX_TRANSPORT_ID: usize = 64;
/// Length of a sealed hello: the plaintext (112 bytes) and the tag.
pub const HELLO_CT_LEN: usize = 112 + keys::TAG_LEN;

/// Why a hello was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// A transport id longer than [`MAX_TRANSPORT_ID`].
    #[error("transport id too long")]
    TransportId,
    /// The AEAD refused it, or the plaintext is not the layout.
    #[error("the hello does not open")]
    Undecryptable,
    /// The signature does not verify for these transport ids.
    #[error("bad hello signature")]
    BadSignature,
}

/// `"agora-hello-v2\0" ‖ space (16) ‖ key id (32)`.
pub fn hello_aad(space: &SpaceId, key_id: &KeyId) -> Vec<u8> {
    [HELLO_DOMAIN, &space.0, &key_id.0].concat()
}

/// `"agora-hello-v2\0" ‖ space (16) ‖ key id (32) ‖ author (32) ‖ len(from) (1) ‖ from ‖
/// len(to) (1) ‖ to`, where `from` and `to` are the sender's and the receiver's transport ids.
pub fn hello_message(
    space: &SpaceId,
    key_id: &KeyId,
    author: &AuthorId,
    from: &[u8],
    to: &[u8],
) -> Result<Vec<u8>, HelloError> {
    check_ids(from, to)?;
    Ok([
        HELLO_DOMAIN,
        &space.0,
        &key_id.0,
        &author.0,
        &[from.len() as u8],
        from,
        &[to.len() as u8],
        to,
    ]
    .concat())
}

fn check_ids(from: &[u8], to: &[u8]) -> Result<(), HelloError> {
    if from.len() > MAX_TRANSPORT_ID || to.len() > MAX_TRANSPORT_ID {
        return Err(HelloError::TransportId);
    }
    Ok(())
}

/// The plaintext `{"author": bstr(32), "sig": bstr(64)}`.
fn plaintext(author: &AuthorId, signature: &[u8; 64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(112);
    cbor::put_head(&mut out, 5, 2);
    cbor::put_key(&mut out, "author");
    cbor::put_bytes(&mut out, &author.0);
    cbor::put_key(&mut out, "sig");
    cbor::put_bytes(&mut out, signature);
    out
}

/// Seals `identity`'s hello for `space` under the epoch `key_id` (its content `cipher`), from
/// transport id `from` to `to`, with the caller's fresh random `nonce`. The ciphertext.
pub fn seal(
    identity: &Identity,
    space: &SpaceId,
    key_id: &KeyId,
    cipher: &XChaCha20Poly1305,
    from: &[u8],
    to: &[u8],
    nonce: &[u8; 24],
) -> Result<Vec<u8>, HelloError> {
    let author = identity.author();
    let signature = identity.sign(&hello_message(space, key_id, &author, from, to)?);
    Ok(keys::seal_with(
        cipher,
        nonce,
        &hello_aad(space, key_id),
        &plaintext(&author, &signature),
    ))
}

/// Opens a hello sealed under epoch `key_id` of `space` and checks that its author signed it for
/// this pair of transport ids (`from` sent it, `to` received it). The author.
pub fn open(
    space: &SpaceId,
    key_id: &KeyId,
    cipher: &XChaCha20Poly1305,
    nonce: &[u8; 24],
    ct: &[u8],
    from: &[u8],
    to: &[u8],
) -> Result<AuthorId, HelloError> {
    check_ids(from, to)?;
    if ct.len() != HELLO_CT_LEN {
        return Err(HelloError::Undecryptable);
    }
    let plain = keys::open_with(cipher, nonce, &hello_aad(space, key_id), ct)
        .map_err(|_| HelloError::Undecryptable)?;
    let mut r = cbor::Reader::new(&plain);
    let (author, signature) = (|| {
        r.map(2)?;
        r.key("author")?;
        let author = AuthorId(r.array()?);
        r.key("sig")?;
        let signature: [u8; 64] = r.array()?;
        r.end()?;
        Ok::<_, cbor::CborError>((author, signature))
    })()
    .map_err(|_| HelloError::Undecryptable)?;
    let key = VerifyingKey::from_bytes(&author.0).map_err(|_| HelloError::BadSignature)?;
    if key.is_weak() {
        return Err(HelloError::BadSignature);
    }
    key.verify_strict(
        &hello_message(space, key_id, &author, from, to)?,
        &Signature::from_bytes(&signature),
    )
    .map_err(|_| HelloError::BadSignature)?;
    Ok(author)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::EpochSecret;

    #[test]
    fn a_hello_opens_only_for_its_space_epoch_and_connection() {
        let me = Identity::from_seed([1; 32]);
        let space = SpaceId([2; 16]);
        let epoch = EpochSecret::from_bytes([3; 32]);
        let (key, cipher) = (epoch.key_id(), epoch.content_key().cipher());
        let (a, b, c) = (
            b"peer a".as_slice(),
            b"peer b".as_slice(),
            b"peer c".as_slice(),
        );
        let ct = seal(&me, &space, &key, &cipher, a, b, &[4; 24]).unwrap();
        assert_eq!(ct.len(), HELLO_CT_LEN);
        assert!(!ct.windows(32).any(|w| w == me.author().0));
        assert_eq!(
            open(&space, &key, &cipher, &[4; 24], &ct, a, b),
            Ok(me.author())
        );
        // Replayed by another peer, or to another one, or the other way round: refused.
        for (from, to) in [(c, b), (a, c), (b, a)] {
            assert_eq!(
                open(&space, &key, &cipher, &[4; 24], &ct, from, to),
                Err(HelloError::BadSignature)
            );
        }
        // Another space or epoch: it does not open.
        let other = EpochSecret::from_bytes([5; 32]);
        assert_eq!(
            open(&SpaceId([9; 16]), &key, &cipher, &[4; 24], &ct, a, b),
            Err(HelloError::Undecryptable)
        );
        assert_eq!(
            open(
                &space,
                &other.key_id(),
                &other.content_key().cipher(),
                &[4; 24],
                &ct,
                a,
                b
            ),
            Err(HelloError::Undecryptable)
        );
        // Every bit of it counts.
        for i in 0..ct.len() {
            let mut bad = ct.clone();
            bad[i] ^= 1;
            assert!(open(&space, &key, &cipher, &[4; 24], &bad, a, b).is_err());
        }
        assert_eq!(
            seal(&me, &space, &key, &cipher, &[0; 65], b, &[4; 24]),
            Err(HelloError::TransportId)
        );
    }
}
