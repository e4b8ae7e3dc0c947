//! What travels sealed in a private space (wire version 2): one envelope for everything, so that
//! a non-member learns neither who wrote a message nor whether it is content or membership.
//!
//! Wire format: the canonical CBOR map `{"v": 2, "key": bstr(32), "nonce": bstr(24), "ct": bstr}`.
//! - `key` is the epoch's [`KeyId`]; the receiver finds the space and the key by it. The space id
//!   is not on the wire.
//! - `ct` is XChaCha20-Poly1305 under the epoch's content key, with the 24-byte random `nonce`
//!   and the associated data [`sealed_aad`]`(space, key)`, so it opens only in its own space and
//!   epoch.
//! - The plaintext is either a membership operation's encoding (a map of seven entries, first
//!   byte `a7`: on gossip only) or a **signed contribution** (five entries, `a5`):
//!   `{"author": bstr(32), "doc": bstr(16), "kind": uint, "change": bstr, "sig": bstr(64)}`,
//!   where `sig` is ed25519 by `author` over [`signing_message`]: a domain, the space, the key
//!   id, the author, the document, the kind and SHA-256 of the change (sign, then encrypt). The
//!   signature binds the contribution to its space and epoch; the author's key is inside the
//!   ciphertext, where only members see it.
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

/// The wire version of a sealed envelope.
pub const SEALED_VERSION: u64 = 2;
/// Domain prefix of the message an author signs.
pub const SEALED_SIGNING_DOMAIN: &[u8] = b"agora-contribution-v2\0";
/// Prefix of the AEAD associated data.
pub const SEALED_AAD: &[u8] = b"agora-sealed-v2\0";
/// An encoded envelope's bytes before the ciphertext: the map head, the four keys, the version,
/// the key id and the nonce with their heads.
const ENVELOPE_FIXED: usize = 1 + 2 + 1 + 4 + 2 + 32 + 6 + 2 + 24 + 3;
/// What the envelope adds to its plaintext, at most: the fixed part, the ciphertext's head and
/// the tag.
pub const ENVELOPE_OVERHEAD: usize = ENVELOPE_FIXED + 5 + TAG_LEN;
/// Largest envelope: a membership operation at its limit, sealed.
pub const MAX_SEALED_BYTES: usize = crate::membership::MAX_OP_BYTES + ENVELOPE_OVERHEAD;

/// A sealed envelope as it travels and is stored: ciphertext under an epoch's key.
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The epoch whose content key sealed it.
    pub key_id: KeyId,
    /// The random nonce.
    pub nonce: [u8; 24],
    /// The ciphertext and its tag.
    pub ct: Vec<u8>,
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope")
            .field("key_id", &self.key_id)
            .field("ct_len", &self.ct.len())
            .finish()
    }
}

/// `"agora-sealed-v2\0" ‖ space (16) ‖ key id (32)`.
pub fn sealed_aad(space: &SpaceId, key_id: &KeyId) -> Vec<u8> {
    [SEALED_AAD, &space.0, &key_id.0].concat()
}

/// `"agora-contribution-v2\0" ‖ space (16) ‖ key id (32) ‖ author (32) ‖ doc (16) ‖ kind (1) ‖
/// SHA-256(change) (32)`.
pub fn signing_message(
    space: &SpaceId,
    key_id: &KeyId,
    author: &AuthorId,
    doc: &DocId,
    kind: DocKind,
    change: &[u8],
) -> Vec<u8> {
    let change_hash: [u8; 32] = Sha256::digest(change).into();
    [
        SEALED_SIGNING_DOMAIN,
        &space.0,
        &key_id.0,
        &author.0,
        &doc.0,
        &[kind.code()],
        &change_hash,
    ]
    .concat()
}

/// A signed contribution: what a sealed contribution's ciphertext holds, decrypted and read
/// but not yet checked.
#[derive(Clone, PartialEq, Eq)]
pub struct Plaintext {
    /// Who signed it (whose key begins the change's actor).
    pub author: AuthorId,
    /// The document.
    pub doc: DocId,
    /// Its kind.
    pub kind: DocKind,
    /// The raw Automerge change.
    pub change: Vec<u8>,
    /// ed25519 signature over [`signing_message`].
    pub signature: [u8; 64],
}

impl std::fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plaintext")
            .field("author", &self.author)
            .field("doc", &self.doc)
            .field("kind", &self.kind)
            .field("change_len", &self.change.len())
            .finish()
    }
}

impl Plaintext {
    /// Signs `change` as `identity`'s contribution to `doc` of `space` under epoch `key_id`.
    pub fn sign(
        identity: &Identity,
        space: &SpaceId,
        key_id: &KeyId,
        doc: DocId,
        kind: DocKind,
        change: Vec<u8>,
    ) -> Plaintext {
        let author = identity.author();
        let signature = identity.sign(&signing_message(
            space, key_id, &author, &doc, kind, &change,
        ));
        Plaintext {
            author,
            doc,
            kind,
            change,
            signature,
        }
    }

    /// The canonical CBOR encoding (what is sealed).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.change.len() + 160);
        cbor::put_head(&mut out, 5, 5);
        cbor::put_key(&mut out, "author");
        cbor::put_bytes(&mut out, &self.author.0);
        cbor::put_key(&mut out, "doc");
        cbor::put_bytes(&mut out, &self.doc.0);
        cbor::put_key(&mut out, "kind");
        cbor::put_head(&mut out, 0, self.kind.code().into());
        cbor::put_key(&mut out, "change");
        cbor::put_bytes(&mut out, &self.change);
        cbor::put_key(&mut out, "sig");
        cbor::put_bytes(&mut out, &self.signature);
        out
    }

    /// Reads the layout strictly (one encoding). Never panics.
    pub fn decode(plain: &[u8]) -> Result<Plaintext, Rejection> {
        let mut r = cbor::Reader::new(plain);
        let (author, doc, kind, change, signature) = (|| {
            r.map(5)?;
            r.key("author")?;
            let author = AuthorId(r.array()?);
            r.key("doc")?;
            let doc = DocId(r.array()?);
            r.key("kind")?;
            let kind = r.uint()?;
            r.key("change")?;
            let change = r.bytes()?.to_vec();
            r.key("sig")?;
            let signature = r.array()?;
            r.end()?;
            Ok::<_, cbor::CborError>((author, doc, kind, change, signature))
        })()
        .map_err(|_| Rejection::Undecryptable)?;
        let kind = u8::try_from(kind)
            .ok()
            .and_then(DocKind::from_code)
            .ok_or(Rejection::UnknownKind(kind))?;
        Ok(Plaintext {
            author,
            doc,
            kind,
            change,
            signature,
        })
    }

    /// The message the author signed, for `space` and epoch `key_id`.
    pub fn signing_message(&self, space: &SpaceId, key_id: &KeyId) -> Vec<u8> {
        signing_message(
            space,
            key_id,
            &self.author,
            &self.doc,
            self.kind,
            &self.change,
        )
    }

    /// Checks the author's signature (strict RFC 8032, non-weak key).
    pub fn verify_signature(&self, space: &SpaceId, key_id: &KeyId) -> Result<(), Rejection> {
        let key = VerifyingKey::from_bytes(&self.author.0).map_err(|_| Rejection::BadSignature)?;
        if key.is_weak() {
            return Err(Rejection::BadSignature);
        }
        key.verify_strict(
            &self.signing_message(space, key_id),
            &Signature::from_bytes(&self.signature),
        )
        .map_err(|_| Rejection::BadSignature)
    }
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

/// What an envelope holds, told apart by the plaintext's first byte.
#[derive(Debug, Clone)]
pub enum Inside {
    /// A membership operation's encoding (not yet verified).
    Op(Vec<u8>),
    /// A signed contribution (not yet verified).
    Contribution(Plaintext),
}

impl Envelope {
    /// Seals `plaintext` of `space` under the epoch `key_id` (its content `cipher`), with the
    /// caller's fresh random `nonce`.
    pub fn seal_bytes(
        space: &SpaceId,
        key_id: KeyId,
        cipher: &XChaCha20Poly1305,
        plaintext: &[u8],
        nonce: [u8; 24],
    ) -> Envelope {
        let ct = keys::seal_with(cipher, &nonce, &sealed_aad(space, &key_id), plaintext);
        Envelope { key_id, nonce, ct }
    }

    /// Signs and seals `change` (its raw bytes) as `identity`'s contribution to `doc` of
    /// `space`, under the epoch whose content cipher is `cipher` and key id `key_id`, with the
    /// caller's fresh random `nonce`.
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
        let signed = Plaintext::sign(identity, space, &key_id, *doc, kind, change.to_vec());
        Envelope::seal_bytes(space, key_id, cipher, &signed.encode(), nonce)
    }

    /// The canonical CBOR encoding (the gossip payload, the stored value, what sync carries).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.ct.len() + ENVELOPE_OVERHEAD);
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

    /// Decodes untrusted bytes: size, shape, version, field lengths and canonical form. Opens
    /// nothing. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, Rejection> {
        if bytes.len() > MAX_SEALED_BYTES {
            return Err(Rejection::TooLarge {
                len: bytes.len(),
                max: MAX_SEALED_BYTES,
            });
        }
        let malformed = |e: cbor::CborError| Rejection::Malformed(e.0);
        let mut r = cbor::Reader::new(bytes);
        // The layout is fixed: a strict reader accepts exactly the canonical encoding.
        let head = (|| -> Result<u64, cbor::CborError> {
            r.map(4)?;
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
            r.key("nonce")?;
            let nonce = r.array()?;
            r.key("ct")?;
            let ct = r.bytes()?.to_vec();
            r.end()?;
            Ok(Envelope { key_id, nonce, ct })
        })()
        .map_err(malformed)?;
        if e.ct.len() < TAG_LEN {
            return Err(Rejection::Malformed(
                "ciphertext shorter than its tag".into(),
            ));
        }
        Ok(e)
    }

    /// Decrypts with the content cipher of the epoch `key_id` names, in `space`.
    pub fn open_bytes(
        &self,
        space: &SpaceId,
        cipher: &XChaCha20Poly1305,
    ) -> Result<Vec<u8>, Rejection> {
        keys::open_with(
            cipher,
            &self.nonce,
            &sealed_aad(space, &self.key_id),
            &self.ct,
        )
        .map_err(|_| Rejection::Undecryptable)
    }

    /// Decrypts and tells what is inside: an operation (`a7`) or a signed contribution (`a5`,
    /// read strictly; an envelope holding one is at most `MAX_CONTRIBUTION_BYTES`). Verifies
    /// nothing.
    pub fn open_inside(
        &self,
        space: &SpaceId,
        cipher: &XChaCha20Poly1305,
    ) -> Result<Inside, Rejection> {
        let plain = self.open_bytes(space, cipher)?;
        match plain.first() {
            Some(0xa7) => Ok(Inside::Op(plain)),
            Some(0xa5) => {
                let len = self.encoded_len();
                if len > MAX_CONTRIBUTION_BYTES {
                    return Err(Rejection::TooLarge {
                        len,
                        max: MAX_CONTRIBUTION_BYTES,
                    });
                }
                Ok(Inside::Contribution(Plaintext::decode(&plain)?))
            }
            _ => Err(Rejection::Undecryptable),
        }
    }

    /// Decrypts a sealed contribution and reads its plaintext, without checking the signature
    /// or the change inside (for a receiver that checks them in a batch later). An operation
    /// inside is refused.
    pub fn unseal(
        &self,
        space: &SpaceId,
        cipher: &XChaCha20Poly1305,
    ) -> Result<Plaintext, Rejection> {
        match self.open_inside(space, cipher)? {
            Inside::Contribution(plain) => Ok(plain),
            Inside::Op(_) => Err(Rejection::Malformed(
                "a membership operation where a contribution belongs".into(),
            )),
        }
    }

    /// Decrypts a sealed contribution, checks its signature, then the change's rules.
    pub fn verify_and_open(
        &self,
        space: &SpaceId,
        cipher: &XChaCha20Poly1305,
    ) -> Result<Opened, Rejection> {
        let plain = self.unseal(space, cipher)?;
        plain.verify_signature(space, &self.key_id)?;
        let change = check_change(space, &plain.doc, plain.kind, &plain.author, &plain.change)?;
        Ok(Opened {
            space: *space,
            doc: plain.doc,
            kind: plain.kind,
            author: plain.author,
            change,
        })
    }

    /// The length of [`Envelope::encode`].
    pub fn encoded_len(&self) -> usize {
        ENVELOPE_FIXED + cbor::string_len(self.ct.len())
    }

    /// The content hash that names an envelope on the wire (the gossip message id): SHA-256 of
    /// its encoding.
    pub fn wire_id(encoded: &[u8]) -> [u8; 32] {
        Sha256::digest(encoded).into()
    }
}

/// Checks many signed contributions' signatures at once (each with the space and epoch it was
/// sealed in): one ed25519 batch verification, and on failure each on its own, so that exactly
/// the bad ones are refused. Results in input order.
pub fn verify_signatures(items: &[(&Plaintext, SpaceId, KeyId)]) -> Vec<Result<(), Rejection>> {
    let mut results: Vec<Result<(), Rejection>> = Vec::with_capacity(items.len());
    let mut keys: std::collections::HashMap<AuthorId, Option<VerifyingKey>> =
        std::collections::HashMap::new();
    let mut pending: Vec<(usize, Vec<u8>, VerifyingKey, Signature)> = Vec::new();
    for (i, (p, space, key_id)) in items.iter().enumerate() {
        let key = *keys.entry(p.author).or_insert_with(|| {
            VerifyingKey::from_bytes(&p.author.0)
                .ok()
                .filter(|k| !k.is_weak())
        });
        match key {
            Some(key) => {
                pending.push((
                    i,
                    p.signing_message(space, key_id),
                    key,
                    Signature::from_bytes(&p.signature),
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

/// Whether encoded bytes are a sealed envelope (a CBOR map of four entries; a version 1
/// contribution has seven, a membership operation in the clear seven too).
pub fn is_sealed(bytes: &[u8]) -> bool {
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
    fn a_sealed_contribution_opens_only_in_its_space_and_epoch_and_hides_its_author() {
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
        assert_eq!(e.encoded_len(), bytes.len());
        assert!(is_sealed(&bytes));
        // Neither the content, nor the document, nor who wrote it shows.
        assert!(!bytes.windows(6).any(|w| w == b"Canary" || w == b"canary"));
        assert!(!bytes.windows(16).any(|w| w == doc.0));
        assert!(!bytes.windows(32).any(|w| w == me.author().0));
        assert!(!bytes.windows(16).any(|w| *w == me.author().0[..16]));
        let back = Envelope::decode(&bytes).unwrap();
        assert_eq!(back, e);
        let opened = back.verify_and_open(&space, &cipher).unwrap();
        assert_eq!(
            (opened.doc, opened.kind, opened.author),
            (doc, DocKind::Idea, me.author())
        );
        assert_eq!(opened.change.raw_bytes(), &c[..]);
        // Another space, another epoch's key: refused.
        assert_eq!(
            back.verify_and_open(&SpaceId([9; 16]), &cipher)
                .unwrap_err(),
            Rejection::Undecryptable
        );
        let other_epoch = EpochSecret::from_bytes([7; 32]);
        assert_eq!(
            back.verify_and_open(&space, &other_epoch.content_key().cipher())
                .unwrap_err(),
            Rejection::Undecryptable
        );
        // A member who opens it cannot move it into another space or epoch: the signature
        // covers both.
        let plain = back.unseal(&space, &cipher).unwrap();
        let moved = Envelope::seal_bytes(
            &space,
            other_epoch.key_id(),
            &other_epoch.content_key().cipher(),
            &plain.encode(),
            [8; 24],
        );
        assert_eq!(
            moved
                .verify_and_open(&space, &other_epoch.content_key().cipher())
                .unwrap_err(),
            Rejection::BadSignature
        );
        let elsewhere = SpaceId([9; 16]);
        let moved = Envelope::seal_bytes(
            &elsewhere,
            secret.key_id(),
            &cipher,
            &plain.encode(),
            [8; 24],
        );
        assert_eq!(
            moved.verify_and_open(&elsewhere, &cipher).unwrap_err(),
            Rejection::BadSignature
        );
        // Nor put it under another author's name.
        let mut stolen = plain.clone();
        stolen.author = Identity::from_seed([8; 32]).author();
        let moved =
            Envelope::seal_bytes(&space, secret.key_id(), &cipher, &stolen.encode(), [8; 24]);
        assert_eq!(
            moved.verify_and_open(&space, &cipher).unwrap_err(),
            Rejection::BadSignature
        );
        // An operation sealed for gossip is not a contribution.
        let op = Envelope::seal_bytes(&space, secret.key_id(), &cipher, &[0xa7, 0], [8; 24]);
        assert!(matches!(op.open_inside(&space, &cipher), Ok(Inside::Op(_))));
        assert!(op.unseal(&space, &cipher).is_err());
        // Every single-bit flip is refused.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 1;
            let ok = Envelope::decode(&b).and_then(|e| e.verify_and_open(&space, &cipher));
            assert!(ok.is_err(), "flip at {i} accepted");
        }
    }
}
