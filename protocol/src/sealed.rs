//! The sealed contribution (wire version 2): one Automerge change, encrypted under its space's
//! epoch key and signed by its author.
//!
//! Wire format: the canonical CBOR map
//! `{"v": 2, "key": bstr(32), "author": bstr(32), "nonce": bstr(24), "ct": bstr, "sig": bstr(64)}`.
//! - `key` is the epoch's [`KeyId`]; the receiver finds the space and the key by it. The space id
//!   is not on the wire.
//! - `ct` is XChaCha20-Poly1305 under the epoch's content key, with the 24-byte random `nonce`,
//!   of the plaintext `{"doc": bstr(16), "kind": uint, "change": bstr}` (canonical CBOR), with
//!   the associated data [`content_aad`]`(space, key, author)`. So the ciphertext opens only in
//!   its own space and epoch and under its own author.
//! - `sig` is ed25519 by `author` over [`signing_message`]: a domain, the space, the key id, the
//!   author, the nonce and SHA-256 of the ciphertext (encrypt, then sign). A member checks who
//!   wrote it before decrypting; a non-member sees only ciphertext and the author's key.
//!
//! The change inside obeys every rule of [`crate::contribution::check_change`].

use crate::cbor;
use crate::contribution::{check_change, DocKind, Rejection};
use crate::identity::Identity;
use crate::ids::{AuthorId, DocId, SpaceId};
use crate::keys::{self, KeyId, TAG_LEN};
use crate::limits::MAX_CONTRIBUTION_BYTES;
use automerge::Change;
use chacha20poly1305::XChaCha20Poly1305;
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

/// The wire version of a sealed contribution.
pub const SEALED_VERSION: u64 = 2;
/// Domain prefix of the message an author signs.
pub const SEALED_SIGNING_DOMAIN: &[u8] = b"agora-contribution-v2\0";
/// Prefix of the AEAD associated data.
pub const CONTENT_AAD: &[u8] = b"agora-content-v2\0";

/// A sealed contribution as it travels and is stored: the ciphertext and who signed it.
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The epoch whose content key sealed it.
    pub key_id: KeyId,
    /// Who signed it.
    pub author: AuthorId,
    /// The random nonce.
    pub nonce: [u8; 24],
    /// The ciphertext and its tag.
    pub ct: Vec<u8>,
    /// ed25519 signature over [`signing_message`].
    pub signature: [u8; 64],
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope")
            .field("key_id", &self.key_id)
            .field("author", &self.author)
            .field("ct_len", &self.ct.len())
            .finish()
    }
}

/// `"agora-content-v2\0" ‖ space (16) ‖ key id (32) ‖ author (32)`.
pub fn content_aad(space: &SpaceId, key_id: &KeyId, author: &AuthorId) -> Vec<u8> {
    [CONTENT_AAD, &space.0, &key_id.0, &author.0].concat()
}

/// `"agora-contribution-v2\0" ‖ space (16) ‖ key id (32) ‖ author (32) ‖ nonce (24) ‖
/// SHA-256(ct) (32)`.
pub fn signing_message(
    space: &SpaceId,
    key_id: &KeyId,
    author: &AuthorId,
    nonce: &[u8; 24],
    ct: &[u8],
) -> Vec<u8> {
    let ct_hash: [u8; 32] = Sha256::digest(ct).into();
    [
        SEALED_SIGNING_DOMAIN,
        &space.0,
        &key_id.0,
        &author.0,
        nonce,
        &ct_hash,
    ]
    .concat()
}

fn plaintext(doc: &DocId, kind: DocKind, change: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(change.len() + 40);
    cbor::put_head(&mut out, 5, 3);
    cbor::put_key(&mut out, "doc");
    cbor::put_bytes(&mut out, &doc.0);
    cbor::put_key(&mut out, "kind");
    cbor::put_head(&mut out, 0, kind.code().into());
    cbor::put_key(&mut out, "change");
    cbor::put_bytes(&mut out, change);
    out
}

/// Reads the plaintext layout strictly (so it has one encoding).
fn read_plaintext(plain: &[u8]) -> Result<(DocId, u64, &[u8]), cbor::CborError> {
    let mut r = cbor::Reader::new(plain);
    r.map(3)?;
    r.key("doc")?;
    let doc = DocId(r.array()?);
    r.key("kind")?;
    let kind = r.uint()?;
    r.key("change")?;
    let change = r.bytes()?;
    r.end()?;
    Ok((doc, kind, change))
}

/// What a sealed contribution holds, once opened and checked.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The space (the one whose key opened it).
    pub space: SpaceId,
    /// The document.
    pub doc: DocId,
    /// Its kind.
    pub kind: DocKind,
    /// The author (who signed it, and whose key begins the change's actor).
    pub author: AuthorId,
    /// The parsed change, which obeys the write rules of its kind.
    pub change: Change,
}

/// What a sealed contribution's ciphertext holds, decrypted but not checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plaintext {
    /// The document.
    pub doc: DocId,
    /// Its kind.
    pub kind: DocKind,
    /// The raw Automerge change.
    pub change: Vec<u8>,
}

impl Envelope {
    /// Seals and signs `change` (its raw bytes) as `identity`'s contribution to `doc` of `space`,
    /// under the epoch whose content cipher is `cipher` and key id `key_id`, with the caller's
    /// fresh random `nonce`.
    #[allow(clippy::too_many_arguments)]
    pub fn seal(
        identity: &Identity,
        space: &SpaceId,
        key_id: KeyId,
        cipher: &XChaCha20Poly1305,
        doc: &DocId,
        kind: DocKind,
        change: &[u8],
        nonce: [u8; 24],
    ) -> Envelope {
        let author = identity.author();
        let ct = keys::seal_with(
            cipher,
            &nonce,
            &content_aad(space, &key_id, &author),
            &plaintext(doc, kind, change),
        );
        let signature = identity.sign(&signing_message(space, &key_id, &author, &nonce, &ct));
        Envelope {
            key_id,
            author,
            nonce,
            ct,
            signature,
        }
    }

    /// The canonical CBOR encoding (the gossip payload, the stored value, what sync carries).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.ct.len() + 200);
        cbor::put_head(&mut out, 5, 6);
        cbor::put_key(&mut out, "v");
        cbor::put_head(&mut out, 0, SEALED_VERSION);
        cbor::put_key(&mut out, "key");
        cbor::put_bytes(&mut out, &self.key_id.0);
        cbor::put_key(&mut out, "author");
        cbor::put_bytes(&mut out, &self.author.0);
        cbor::put_key(&mut out, "nonce");
        cbor::put_bytes(&mut out, &self.nonce);
        cbor::put_key(&mut out, "ct");
        cbor::put_bytes(&mut out, &self.ct);
        cbor::put_key(&mut out, "sig");
        cbor::put_bytes(&mut out, &self.signature);
        out
    }

    /// Decodes untrusted bytes: size, shape, version, field lengths and canonical form. Checks
    /// neither the signature nor the ciphertext. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, Rejection> {
        if bytes.len() > MAX_CONTRIBUTION_BYTES {
            return Err(Rejection::TooLarge {
                len: bytes.len(),
                max: MAX_CONTRIBUTION_BYTES,
            });
        }
        let malformed = |e: cbor::CborError| Rejection::Malformed(e.0);
        let mut r = cbor::Reader::new(bytes);
        // The layout is fixed: a strict reader accepts exactly the canonical encoding.
        let head = (|| -> Result<u64, cbor::CborError> {
            r.map(6)?;
            r.key("v")?;
            r.uint()
        })()
        .map_err(malformed)?;
        if head != SEALED_VERSION {
            return Err(Rejection::UnsupportedVersion(head));
        }
        let e = (|| -> Result<Envelope, cbor::CborError> {
            r.key("key")?;
            let key_id = KeyId(r.array()?);
            r.key("author")?;
            let author = AuthorId(r.array()?);
            r.key("nonce")?;
            let nonce = r.array()?;
            r.key("ct")?;
            let ct = r.bytes()?.to_vec();
            r.key("sig")?;
            let signature = r.array()?;
            r.end()?;
            Ok(Envelope {
                key_id,
                author,
                nonce,
                ct,
                signature,
            })
        })()
        .map_err(malformed)?;
        if e.ct.len() < TAG_LEN {
            return Err(Rejection::Malformed(
                "ciphertext shorter than its tag".into(),
            ));
        }
        Ok(e)
    }

    /// The message the author signed, for `space`.
    pub fn signing_message(&self, space: &SpaceId) -> Vec<u8> {
        signing_message(space, &self.key_id, &self.author, &self.nonce, &self.ct)
    }

    /// Checks the author's signature (strict RFC 8032, non-weak key).
    pub fn verify_signature(&self, space: &SpaceId) -> Result<(), Rejection> {
        let key = VerifyingKey::from_bytes(&self.author.0).map_err(|_| Rejection::BadSignature)?;
        if key.is_weak() {
            return Err(Rejection::BadSignature);
        }
        key.verify_strict(
            &self.signing_message(space),
            &Signature::from_bytes(&self.signature),
        )
        .map_err(|_| Rejection::BadSignature)
    }

    /// Decrypts with the content cipher of the epoch named by `key_id` in `space`, and checks the
    /// plaintext's shape and the change's rules. Does not check the signature.
    pub fn open(&self, space: &SpaceId, cipher: &XChaCha20Poly1305) -> Result<Opened, Rejection> {
        let plain = self.unseal(space, cipher)?;
        let change = check_change(space, &plain.doc, plain.kind, &self.author, &plain.change)?;
        Ok(Opened {
            space: *space,
            doc: plain.doc,
            kind: plain.kind,
            author: self.author,
            change,
        })
    }

    /// Decrypts and reads the plaintext's layout, without checking the change inside (the
    /// first half of [`Envelope::open`], for a receiver that checks changes in a batch later).
    pub fn unseal(
        &self,
        space: &SpaceId,
        cipher: &XChaCha20Poly1305,
    ) -> Result<Plaintext, Rejection> {
        let plain = keys::open_with(
            cipher,
            &self.nonce,
            &content_aad(space, &self.key_id, &self.author),
            &self.ct,
        )
        .map_err(|_| Rejection::Undecryptable)?;
        let (doc, kind, change) = read_plaintext(&plain).map_err(|_| Rejection::Undecryptable)?;
        let kind = u8::try_from(kind)
            .ok()
            .and_then(DocKind::from_code)
            .ok_or(Rejection::UnknownKind(kind))?;
        Ok(Plaintext {
            doc,
            kind,
            change: change.to_vec(),
        })
    }

    /// [`Envelope::verify_signature`], then [`Envelope::open`].
    pub fn verify_and_open(
        &self,
        space: &SpaceId,
        cipher: &XChaCha20Poly1305,
    ) -> Result<Opened, Rejection> {
        self.verify_signature(space)?;
        self.open(space, cipher)
    }

    /// The content hash that names this envelope on the wire (the gossip message id): SHA-256 of
    /// its encoding.
    pub fn wire_id(encoded: &[u8]) -> [u8; 32] {
        Sha256::digest(encoded).into()
    }
}

/// Checks many envelopes' signatures at once (each with the space it belongs to): one ed25519
/// batch verification, and on failure each on its own, so that exactly the bad ones are refused.
/// Results in input order.
pub fn verify_signatures(items: &[(&Envelope, SpaceId)]) -> Vec<Result<(), Rejection>> {
    let mut results: Vec<Result<(), Rejection>> = Vec::with_capacity(items.len());
    let mut keys: std::collections::HashMap<AuthorId, Option<VerifyingKey>> =
        std::collections::HashMap::new();
    let mut pending: Vec<(usize, Vec<u8>, VerifyingKey, Signature)> = Vec::new();
    for (i, (e, space)) in items.iter().enumerate() {
        let key = *keys.entry(e.author).or_insert_with(|| {
            VerifyingKey::from_bytes(&e.author.0)
                .ok()
                .filter(|k| !k.is_weak())
        });
        match key {
            Some(key) => {
                pending.push((
                    i,
                    e.signing_message(space),
                    key,
                    Signature::from_bytes(&e.signature),
                ));
                results.push(Ok(()));
            }
            None => results.push(Err(Rejection::BadSignature)),
        }
    }
    if pending.is_empty() {
        return results;
    }
    let messages: Vec<&[u8]> = pending.iter().map(|p| p.1.as_slice()).collect();
    let signatures: Vec<Signature> = pending.iter().map(|p| p.3).collect();
    let verifying: Vec<VerifyingKey> = pending.iter().map(|p| p.2).collect();
    if ed25519_dalek::verify_batch(&messages, &signatures, &verifying).is_ok() {
        return results;
    }
    for (i, message, key, signature) in &pending {
        if key.verify_strict(message, signature).is_err() {
            results[*i] = Err(Rejection::BadSignature);
        }
    }
    results
}

/// Prefix of the associated data of a membership operation sealed for gossip.
pub const OP_GOSSIP_AAD: &[u8] = b"agora-op-gossip-v2\0";

/// Largest sealed operation: an operation at its limit plus the envelope.
pub const MAX_SEALED_OP_BYTES: usize = crate::membership::MAX_OP_BYTES + 128;

/// A membership operation as it travels by gossip (PROTOCOL 14.9): sealed under the epoch of
/// the topic it is published on, so that a peer that follows the topic without being a member
/// learns nothing of the membership. Wire format: the canonical CBOR map
/// `{"v": 2, "key": bstr(32), "nonce": bstr(24), "ct": bstr}`, where `ct` is
/// XChaCha20-Poly1305 under the epoch's content key of the operation's encoding, with the
/// associated data [`op_gossip_aad`]`(space, key)`. The operation inside carries its own
/// signature; the seal only hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedOp {
    /// The epoch whose content key sealed it.
    pub key_id: KeyId,
    /// The random nonce.
    pub nonce: [u8; 24],
    /// The ciphertext and its tag.
    pub ct: Vec<u8>,
}

impl std::fmt::Debug for SealedOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedOp")
            .field("key_id", &self.key_id)
            .field("ct_len", &self.ct.len())
            .finish()
    }
}

/// `"agora-op-gossip-v2\0" ‖ space (16) ‖ key id (32)`.
pub fn op_gossip_aad(space: &SpaceId, key_id: &KeyId) -> Vec<u8> {
    [OP_GOSSIP_AAD, &space.0, &key_id.0].concat()
}

impl SealedOp {
    /// Seals an encoded operation of `space` under the epoch `key_id` (its content `cipher`),
    /// with the caller's fresh random `nonce`.
    pub fn seal(
        space: &SpaceId,
        key_id: KeyId,
        cipher: &XChaCha20Poly1305,
        op: &[u8],
        nonce: [u8; 24],
    ) -> SealedOp {
        let ct = keys::seal_with(cipher, &nonce, &op_gossip_aad(space, &key_id), op);
        SealedOp { key_id, nonce, ct }
    }

    /// The canonical CBOR encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.ct.len() + 90);
        cbor::put_head(&mut out, 5, 4);
        cbor::put_key(&mut out, "v");
        cbor::put_head(&mut out, 0, SEALED_VERSION);
        cbor::put_key(&mut out, "key");
        cbor::put_bytes(&mut out, &self.key_id.0);
        cbor::put_key(&mut out, "nonce");
        cbor::put_bytes(&mut out, &self.nonce);
        cbor::put_key(&mut out, "ct");
        cbor::put_bytes(&mut out, &self.ct);
        out
    }

    /// Decodes untrusted bytes strictly (one encoding). Never panics.
    pub fn decode(bytes: &[u8]) -> Result<SealedOp, Rejection> {
        if bytes.len() > MAX_SEALED_OP_BYTES {
            return Err(Rejection::TooLarge {
                len: bytes.len(),
                max: MAX_SEALED_OP_BYTES,
            });
        }
        let mut r = cbor::Reader::new(bytes);
        let op = (|| -> Result<SealedOp, cbor::CborError> {
            r.map(4)?;
            r.key("v")?;
            if r.uint()? != SEALED_VERSION {
                return Err(cbor::err("unsupported sealed operation version"));
            }
            r.key("key")?;
            let key_id = KeyId(r.array()?);
            r.key("nonce")?;
            let nonce = r.array()?;
            r.key("ct")?;
            let ct = r.bytes()?.to_vec();
            r.end()?;
            Ok(SealedOp { key_id, nonce, ct })
        })()
        .map_err(|e| Rejection::Malformed(e.0))?;
        if op.ct.len() < TAG_LEN {
            return Err(Rejection::Malformed(
                "ciphertext shorter than its tag".into(),
            ));
        }
        Ok(op)
    }

    /// The encoded operation inside (not yet verified), if `cipher` (the content cipher of the
    /// epoch `key_id` names, in `space`) opens it.
    pub fn open(&self, space: &SpaceId, cipher: &XChaCha20Poly1305) -> Result<Vec<u8>, Rejection> {
        keys::open_with(
            cipher,
            &self.nonce,
            &op_gossip_aad(space, &self.key_id),
            &self.ct,
        )
        .map_err(|_| Rejection::Undecryptable)
    }
}

/// Whether encoded bytes are a sealed membership operation (a CBOR map of four entries).
pub fn is_sealed_op(bytes: &[u8]) -> bool {
    bytes.first() == Some(&0xa4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idea::{actor_for, create_idea, IdeaDraft};
    use crate::ids::DocId;
    use crate::keys::EpochSecret;

    fn change(identity: &Identity, space: &SpaceId) -> (DocId, Vec<u8>) {
        let draft = IdeaDraft {
            title: "Canary title".into(),
            body: "canary body".into(),
            tags: vec![],
        };
        let salt = [3; 16];
        let doc = DocId::idea(space, &identity.author(), &salt);
        let mut d = automerge::AutoCommit::new();
        d.set_actor(actor_for(&identity.author(), &[4; 16]));
        let c = create_idea(&mut d, &draft, &identity.author(), &salt, 1_000).unwrap();
        (doc, c.raw_bytes().to_vec())
    }

    #[test]
    fn a_sealed_contribution_opens_only_in_its_space_epoch_and_author() {
        let me = Identity::from_seed([1; 32]);
        let space = SpaceId([2; 16]);
        let secret = EpochSecret::from_bytes([5; 32]);
        let cipher = secret.content_key().cipher();
        let (doc, c) = change(&me, &space);
        let e = Envelope::seal(
            &me,
            &space,
            secret.key_id(),
            &cipher,
            &doc,
            DocKind::Idea,
            &c,
            [6; 24],
        );
        let bytes = e.encode();
        assert!(!bytes.windows(6).any(|w| w == b"Canary" || w == b"canary"));
        assert!(!bytes.windows(16).any(|w| w == doc.0));
        let back = Envelope::decode(&bytes).unwrap();
        assert_eq!(back, e);
        let opened = back.verify_and_open(&space, &cipher).unwrap();
        assert_eq!(
            (opened.doc, opened.kind, opened.author),
            (doc, DocKind::Idea, me.author())
        );
        assert_eq!(opened.change.raw_bytes(), &c[..]);
        // Another space, another epoch's key, another author's name: refused.
        assert_eq!(
            back.open(&SpaceId([9; 16]), &cipher).unwrap_err(),
            Rejection::Undecryptable
        );
        assert_eq!(
            back.open(
                &space,
                &EpochSecret::from_bytes([7; 32]).content_key().cipher()
            )
            .unwrap_err(),
            Rejection::Undecryptable
        );
        let mut other = back.clone();
        other.author = Identity::from_seed([8; 32]).author();
        assert_eq!(
            other.open(&space, &cipher).unwrap_err(),
            Rejection::Undecryptable
        );
        // Someone else re-signing the ciphertext under their own name cannot make it open.
        let thief = Identity::from_seed([8; 32]);
        other.signature = thief.sign(&other.signing_message(&space));
        assert!(other.verify_signature(&space).is_ok());
        assert_eq!(
            other.open(&space, &cipher).unwrap_err(),
            Rejection::Undecryptable
        );
        // The signature covers the space: the same bytes in another space do not verify.
        assert_eq!(
            back.verify_signature(&SpaceId([9; 16])),
            Err(Rejection::BadSignature)
        );
        // Every single-bit flip is refused.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 1;
            let ok = Envelope::decode(&b).and_then(|e| e.verify_and_open(&space, &cipher));
            assert!(ok.is_err(), "flip at {i} accepted");
        }
    }
}
