//! The contribution: one Automerge change, signed by its author, and the unit of storage, gossip
//! and sync.
//!
//! Wire format (see `docs/PROTOCOL.md` for the byte-level specification): a canonical CBOR map
//! `{"v": 1, "space": bstr(16), "doc": bstr(16), "kind": uint, "author": bstr(32),
//! "change": bstr, "sig": bstr(64)}` with the keys in exactly that order and definite lengths.
//!
//! The signature is ed25519 over [`signing_message`]: a fixed domain prefix, the space, the
//! document, the kind and the Automerge change hash (SHA-256 of the change chunk after its magic
//! and checksum, recomputed by the receiver). The change's actor id must begin with the author's
//! public key, so no one can write under someone else's name.

use crate::identity::Identity;
use crate::ids::{AuthorId, DocId, SpaceId};
use crate::limits::{MAX_ACTOR_BYTES, MAX_CHANGE_BYTES, MAX_CONTRIBUTION_BYTES};
use automerge::{Change, ChangeHash};
use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The wire format version this crate writes and accepts.
pub const WIRE_VERSION: u8 = 1;
/// Domain-separation prefix of the signed message. It ends with a zero byte so that no other
/// Agora message prefix can be a prefix of it.
pub const SIGNING_DOMAIN: &[u8] = b"agora-contribution-v1\0";
/// The Automerge chunk type of an uncompressed change: the byte at offset 8 of the change
/// bytes (after the 4-byte magic and the 4-byte checksum). Compressed chunks are refused.
pub const CHANGE_CHUNK_TYPE: u8 = 1;

/// What kind of document a contribution edits. The kind decides who may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DocKind {
    /// An idea: anyone in the space may write.
    Idea,
    /// An author's profile (display name): only that author may write, and the document id is
    /// derived from the space and the author ([`DocId::profile`]).
    Profile,
}

impl DocKind {
    /// The number that encodes this kind on the wire.
    pub fn code(self) -> u8 {
        match self {
            DocKind::Idea => 0,
            DocKind::Profile => 1,
        }
    }

    /// The kind for a wire number, if it is known.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(DocKind::Idea),
            1 => Some(DocKind::Profile),
            _ => None,
        }
    }
}

/// Why a contribution was refused. Every refusal has a stable [`Rejection::code`] that nodes
/// count and log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The encoded contribution is larger than [`MAX_CONTRIBUTION_BYTES`].
    #[error("contribution is {len} bytes, more than the {max} allowed")]
    TooLarge {
        /// Size received.
        len: usize,
        /// Size allowed.
        max: usize,
    },
    /// The bytes are not a CBOR contribution.
    #[error("malformed contribution: {0}")]
    Malformed(String),
    /// The bytes decode but are not in canonical form (key order, minimal lengths, no extra keys).
    #[error("contribution is not canonically encoded")]
    NonCanonical,
    /// The version field names a format this node does not speak.
    #[error("unsupported contribution version {0}")]
    UnsupportedVersion(u64),
    /// The kind field names a document kind this node does not know.
    #[error("unknown document kind {0}")]
    UnknownKind(u64),
    /// The change bytes are not a valid Automerge change, or too large.
    #[error("invalid automerge change: {0}")]
    BadChange(String),
    /// The change's actor id does not begin with the signing author's public key.
    #[error("change actor is not the signing author")]
    ActorNotSigner,
    /// A profile document may only be written by its owner.
    #[error("profile document does not belong to the signing author")]
    NotProfileOwner,
    /// A change without dependencies (the creation of an idea) whose id is not bound to its
    /// author by [`DocId::idea`] and the salt in the change message.
    #[error("idea creation not bound to its author: only the creator of an idea may create it")]
    NotIdeaCreator,
    /// A change writes a field that only the idea's creation may write (type, author, created,
    /// salt, or one of the body/tags/comments/votes containers).
    #[error("change rewrites the protected idea field {0:?}")]
    ProtectedField(String),
    /// A change writes an author-keyed entry (a vote) under another author's key.
    #[error("change writes an entry keyed by another author")]
    ForeignKey,
    /// A change writes a field whose Automerge type the schema fixes with another type: a text
    /// object where a scalar string belongs (what Automerge's JavaScript binding makes of a plain
    /// string), a string where a text object belongs, and so on.
    #[error("change writes the field {0:?} with the wrong Automerge type")]
    WrongKind(String),
    /// The ed25519 signature does not verify (or the key is not a valid, non-weak public key).
    #[error("signature does not verify")]
    BadSignature,
    /// The contribution is for a space this node does not hold.
    #[error("contribution for a space this node has not joined")]
    UnknownSpace,
    /// The contribution arrived on a topic other than its own space's.
    #[error("contribution published on another space's topic")]
    WrongTopic,
    /// A sealed contribution names an epoch key this node does not hold.
    #[error("sealed with a key this node does not hold")]
    UnknownKey,
    /// A sealed contribution does not decrypt under the key it names (or its plaintext is not
    /// the canonical encoding of a document, kind and change).
    #[error("sealed contribution does not decrypt")]
    Undecryptable,
    /// The author may not write this document in this space: not a member, or a reader.
    #[error("the author may not write in this space")]
    NotWriter,
    /// The author's right ended (removed or demoted) and the change is not in the causal past of
    /// what the removal kept: a late write. Not the relaying peer's fault (it may have taken the
    /// change in before it heard of the removal).
    #[error("the author's right to write ended before this change")]
    LateWrite,
    /// Automerge refused to apply the (validly signed) change to the document.
    #[error("change does not apply to the document: {0}")]
    Inapplicable(String),
}

impl Rejection {
    /// A short, stable name for counting and logging.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::TooLarge { .. } => "too_large",
            Rejection::Malformed(_) => "malformed",
            Rejection::NonCanonical => "non_canonical",
            Rejection::UnsupportedVersion(_) => "unsupported_version",
            Rejection::UnknownKind(_) => "unknown_kind",
            Rejection::BadChange(_) => "bad_change",
            Rejection::ActorNotSigner => "actor_not_signer",
            Rejection::NotProfileOwner => "not_profile_owner",
            Rejection::NotIdeaCreator => "not_idea_creator",
            Rejection::ProtectedField(_) => "protected_field",
            Rejection::ForeignKey => "foreign_key",
            Rejection::WrongKind(_) => "wrong_kind",
            Rejection::BadSignature => "bad_signature",
            Rejection::UnknownSpace => "unknown_space",
            Rejection::WrongTopic => "wrong_topic",
            Rejection::UnknownKey => "unknown_key",
            Rejection::Undecryptable => "undecryptable",
            Rejection::NotWriter => "not_writer",
            Rejection::LateWrite => "late_write",
            Rejection::Inapplicable(_) => "inapplicable",
        }
    }
}

/// A contribution as it travels and is stored. Holding one proves nothing: only
/// [`Contribution::verify`] turns it into a [`VerifiedContribution`].
#[derive(Clone, PartialEq, Eq)]
pub struct Contribution {
    /// The space the change belongs to.
    pub space: SpaceId,
    /// The document the change edits.
    pub doc: DocId,
    /// The kind of that document.
    pub kind: DocKind,
    /// Who signed it.
    pub author: AuthorId,
    /// The raw Automerge change bytes.
    pub change: Vec<u8>,
    /// ed25519 signature over [`signing_message`].
    pub signature: [u8; 64],
}

impl std::fmt::Debug for Contribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contribution")
            .field("space", &self.space)
            .field("doc", &self.doc)
            .field("kind", &self.kind)
            .field("author", &self.author)
            .field("change_len", &self.change.len())
            .finish()
    }
}

/// The serde shape of the wire map. Field order is the canonical key order.
#[derive(Serialize)]
struct WireRef<'a> {
    v: u64,
    #[serde(with = "serde_bytes")]
    space: &'a [u8],
    #[serde(with = "serde_bytes")]
    doc: &'a [u8],
    kind: u64,
    #[serde(with = "serde_bytes")]
    author: &'a [u8],
    #[serde(with = "serde_bytes")]
    change: &'a [u8],
    #[serde(with = "serde_bytes")]
    sig: &'a [u8],
}

/// The owned twin of [`WireRef`] for decoding (ciborium decodes into owned values only). The
/// input is size-checked first, so no field can be larger than the input.
#[derive(Deserialize)]
struct Wire {
    v: u64,
    space: serde_bytes::ByteBuf,
    doc: serde_bytes::ByteBuf,
    kind: u64,
    author: serde_bytes::ByteBuf,
    change: serde_bytes::ByteBuf,
    sig: serde_bytes::ByteBuf,
}

/// The exact bytes an author signs for a change:
/// `SIGNING_DOMAIN || space (16) || doc (16) || kind (1) || change hash (32)`.
pub fn signing_message(
    space: &SpaceId,
    doc: &DocId,
    kind: DocKind,
    change_hash: &ChangeHash,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_DOMAIN.len() + 16 + 16 + 1 + 32);
    m.extend_from_slice(SIGNING_DOMAIN);
    m.extend_from_slice(&space.0);
    m.extend_from_slice(&doc.0);
    m.push(kind.code());
    m.extend_from_slice(&change_hash.0);
    m
}

impl Contribution {
    /// Signs `change` as a contribution of `identity` to `doc` in `space`.
    ///
    /// The change's actor id must begin with `identity`'s public key; the caller makes the change
    /// on a document whose actor was set that way (see [`crate::idea::actor_for`]).
    pub fn sign(
        identity: &Identity,
        space: SpaceId,
        doc: DocId,
        kind: DocKind,
        change: &Change,
    ) -> Contribution {
        let message = signing_message(&space, &doc, kind, &change.hash());
        Contribution {
            space,
            doc,
            kind,
            author: identity.author(),
            change: change.raw_bytes().to_vec(),
            signature: identity.sign(&message),
        }
    }

    /// The canonical CBOR encoding (the gossip payload and the stored value).
    pub fn encode(&self) -> Vec<u8> {
        let wire = WireRef {
            v: u64::from(WIRE_VERSION),
            space: &self.space.0,
            doc: &self.doc.0,
            kind: u64::from(self.kind.code()),
            author: &self.author.0,
            change: &self.change,
            sig: &self.signature,
        };
        let mut out = Vec::with_capacity(self.change.len() + 200);
        // Writing into a Vec cannot fail, and every field has a serde shape CBOR supports.
        ciborium::into_writer(&wire, &mut out).expect("CBOR encoding into a Vec cannot fail");
        out
    }

    /// Decodes untrusted bytes. Checks size, shape, version, field lengths and canonical form;
    /// it does not check the signature (see [`Contribution::verify`]). Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Contribution, Rejection> {
        if bytes.len() > MAX_CONTRIBUTION_BYTES {
            return Err(Rejection::TooLarge {
                len: bytes.len(),
                max: MAX_CONTRIBUTION_BYTES,
            });
        }
        let wire: Wire = ciborium::from_reader(bytes)
            .map_err(|e| Rejection::Malformed(e.to_string().chars().take(200).collect()))?;
        if wire.v != u64::from(WIRE_VERSION) {
            return Err(Rejection::UnsupportedVersion(wire.v));
        }
        let kind = u8::try_from(wire.kind)
            .ok()
            .and_then(DocKind::from_code)
            .ok_or(Rejection::UnknownKind(wire.kind))?;
        let field = |name: &str, len: usize, got: usize| {
            Rejection::Malformed(format!("field {name} is {got} bytes, expected {len}"))
        };
        let space = SpaceId::from_slice(&wire.space).ok_or(field("space", 16, wire.space.len()))?;
        let doc = DocId::from_slice(&wire.doc).ok_or(field("doc", 16, wire.doc.len()))?;
        let author =
            AuthorId::from_slice(&wire.author).ok_or(field("author", 32, wire.author.len()))?;
        let signature =
            <[u8; 64]>::try_from(&wire.sig[..]).map_err(|_| field("sig", 64, wire.sig.len()))?;
        if wire.change.len() > MAX_CHANGE_BYTES {
            return Err(Rejection::BadChange(format!(
                "change is {} bytes, more than the {MAX_CHANGE_BYTES} allowed",
                wire.change.len()
            )));
        }
        let c = Contribution {
            space,
            doc,
            kind,
            author,
            change: wire.change.into_vec(),
            signature,
        };
        // One contribution has exactly one encoding, so content-addressed ids cannot be forked
        // by re-encoding the same signed change.
        if c.encode() != bytes {
            return Err(Rejection::NonCanonical);
        }
        Ok(c)
    }

    /// Checks everything but the signature: the change parses, its actor is the author, and a
    /// profile is written by its owner. Returns the parsed change and the signed message.
    fn check_structure(&self) -> Result<(Change, Vec<u8>), Rejection> {
        let change = check_change(
            &self.space,
            &self.doc,
            self.kind,
            &self.author,
            &self.change,
        )?;
        let message = signing_message(&self.space, &self.doc, self.kind, &change.hash());
        Ok((change, message))
    }

    /// Fully verifies one contribution (strict RFC 8032 verification).
    pub fn verify(self) -> Result<VerifiedContribution, Rejection> {
        let (change, message) = self.check_structure()?;
        let key = verifying_key(&self.author)?;
        key.verify_strict(&message, &Signature::from_bytes(&self.signature))
            .map_err(|_| Rejection::BadSignature)?;
        Ok(VerifiedContribution {
            contribution: self,
            change,
        })
    }

    /// The content hash that names this contribution on the wire: SHA-256 of its encoding. It is
    /// also the gossipsub message id.
    pub fn wire_id(encoded: &[u8]) -> [u8; 32] {
        Sha256::digest(encoded).into()
    }
}

/// The rules every change obeys, whatever envelope carries it: at most [`MAX_CHANGE_BYTES`], an
/// uncompressed Automerge change chunk whose checksum matches its hash, whose actor begins with
/// the author's key, and which obeys the write rules of its document kind. Returns the parsed
/// change.
pub fn check_change(
    space: &SpaceId,
    doc: &DocId,
    kind: DocKind,
    author: &AuthorId,
    bytes: &[u8],
) -> Result<Change, Rejection> {
    if bytes.len() > MAX_CHANGE_BYTES {
        return Err(Rejection::BadChange("change too large".into()));
    }
    // Only an uncompressed change chunk (magic, checksum, chunk type 1): Automerge would also
    // inflate a DEFLATE-compressed chunk (type 2), without bound, before any signature check.
    if bytes.get(8) != Some(&CHANGE_CHUNK_TYPE) {
        return Err(Rejection::BadChange(
            "not an uncompressed automerge change chunk".into(),
        ));
    }
    let change = Change::from_bytes(bytes.to_vec())
        .map_err(|e| Rejection::BadChange(e.to_string().chars().take(200).collect()))?;
    // Automerge does not check the chunk checksum, and the signature covers the change hash,
    // not these bytes: without this check anyone could re-wrap a signed change in 2^32
    // encodings, each a valid contribution with its own gossip message id.
    if bytes[4..8] != change.hash().0[..4] {
        return Err(Rejection::BadChange(
            "change checksum does not match its hash".into(),
        ));
    }
    let actor = change.actor_id().to_bytes();
    if actor.len() < 32 || actor.len() > MAX_ACTOR_BYTES || actor[..32] != author.0 {
        return Err(Rejection::ActorNotSigner);
    }
    match kind {
        DocKind::Profile if *doc != DocId::profile(space, author) => {
            return Err(Rejection::NotProfileOwner)
        }
        DocKind::Idea => crate::idea::check_idea_change(space, doc, author, &change)?,
        DocKind::Profile => crate::idea::check_profile_change(&change)?,
    }
    Ok(change)
}

/// Reads an unsigned LEB128 number (at most 10 bytes) from the front of `bytes`; returns it with
/// the number of bytes it took.
fn leb128_u64(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, b) in bytes.iter().take(10).enumerate() {
        value |= u64::from(b & 0x7f).checked_shl(7 * i as u32)?;
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// The hash and the dependencies of an encoded Automerge change, read from its header without
/// parsing its operations. A receiver uses it to plan what to ask for next before it has
/// verified a batch; it proves nothing (`None` when the header does not parse).
///
/// Layout: magic (4) ‖ checksum (4) ‖ chunk type (1) ‖ data length (uLEB128) ‖ data, where the
/// data begins with the number of dependencies (uLEB128) and their 32-byte hashes. The change
/// hash is SHA-256 of chunk type ‖ data length ‖ data.
pub fn change_preview(change: &[u8]) -> Option<(ChangeHash, Vec<ChangeHash>)> {
    const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
    if change.get(..4)? != MAGIC || *change.get(8)? != CHANGE_CHUNK_TYPE {
        return None;
    }
    let (len, n) = leb128_u64(change.get(9..)?)?;
    let start = 9 + n;
    let data = change.get(start..start.checked_add(usize::try_from(len).ok()?)?)?;
    let hash: [u8; 32] = Sha256::new()
        .chain_update(&change[8..start])
        .chain_update(data)
        .finalize()
        .into();
    let (count, n) = leb128_u64(data)?;
    let mut deps = Vec::with_capacity(usize::try_from(count).ok()?.min(64));
    let mut rest = &data[n..];
    for _ in 0..count {
        let (dep, tail) = rest.split_first_chunk::<32>()?;
        deps.push(ChangeHash(*dep));
        rest = tail;
    }
    Some((ChangeHash(hash), deps))
}

fn verifying_key(author: &AuthorId) -> Result<VerifyingKey, Rejection> {
    let key = VerifyingKey::from_bytes(&author.0).map_err(|_| Rejection::BadSignature)?;
    if key.is_weak() {
        return Err(Rejection::BadSignature);
    }
    Ok(key)
}

/// Verifies many contributions at once, with one ed25519 batch verification for all whose
/// structure is valid (about 3x faster than one by one). If the batch fails, each signature is
/// checked on its own so that exactly the bad ones are refused. Results are in input order.
pub fn verify_batch(items: Vec<Contribution>) -> Vec<Result<VerifiedContribution, Rejection>> {
    let mut results: Vec<Result<VerifiedContribution, Rejection>> = Vec::with_capacity(items.len());
    let mut pending: Vec<(usize, Vec<u8>, VerifyingKey)> = Vec::new();
    // Decompressing a public key is a noticeable share of verification: once per author.
    let mut keys: std::collections::HashMap<AuthorId, Result<VerifyingKey, Rejection>> =
        std::collections::HashMap::new();
    for item in items {
        let checked = item.check_structure().and_then(|(change, message)| {
            let key = keys
                .entry(item.author)
                .or_insert_with(|| verifying_key(&item.author))
                .clone()?;
            Ok((change, message, key))
        });
        match checked {
            Ok((change, message, key)) => {
                pending.push((results.len(), message, key));
                results.push(Ok(VerifiedContribution {
                    contribution: item,
                    change,
                }));
            }
            Err(e) => results.push(Err(e)),
        }
    }
    if pending.is_empty() {
        return results;
    }
    let sig_of = |r: &Result<VerifiedContribution, Rejection>| match r {
        Ok(v) => Signature::from_bytes(&v.contribution.signature),
        Err(_) => unreachable!("only verified-structure entries are pending"),
    };
    let messages: Vec<&[u8]> = pending.iter().map(|(_, m, _)| m.as_slice()).collect();
    let signatures: Vec<Signature> = pending
        .iter()
        .map(|(i, _, _)| sig_of(&results[*i]))
        .collect();
    let keys: Vec<VerifyingKey> = pending.iter().map(|(_, _, k)| *k).collect();
    if ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok() {
        return results;
    }
    for ((i, message, key), signature) in pending.iter().zip(signatures) {
        if key.verify_strict(message, &signature).is_err() {
            results[*i] = Err(Rejection::BadSignature);
        }
    }
    results
}

/// A contribution whose signature, actor and write permission have been checked. Only this
/// module can make one, so holding one is proof of verification.
#[derive(Debug, Clone)]
pub struct VerifiedContribution {
    contribution: Contribution,
    change: Change,
}

impl VerifiedContribution {
    /// The envelope.
    pub fn contribution(&self) -> &Contribution {
        &self.contribution
    }

    /// The parsed Automerge change.
    pub fn change(&self) -> &Change {
        &self.change
    }

    /// The change hash (the contribution's identity inside its document).
    pub fn hash(&self) -> ChangeHash {
        self.change.hash()
    }

    /// Splits into envelope and change.
    pub fn into_parts(self) -> (Contribution, Change) {
        (self.contribution, self.change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ROOT};

    #[test]
    fn the_change_preview_agrees_with_automerge() {
        let mut a = AutoCommit::new();
        let mut b = AutoCommit::new();
        let mut changes = Vec::new();
        for i in 0..20i64 {
            let d = if i % 3 == 0 { &mut b } else { &mut a };
            d.put(ROOT, format!("k{i}"), i).unwrap();
            d.commit();
            changes.push(d.get_last_local_change().unwrap().clone());
            if i % 5 == 4 {
                a.merge(&mut b).unwrap();
                b.merge(&mut a).unwrap();
            }
        }
        assert!(changes.iter().any(|c| c.deps().len() > 1), "a merge point");
        for c in changes {
            let (hash, deps) = change_preview(c.raw_bytes()).expect("a valid change");
            assert_eq!(hash, c.hash());
            assert_eq!(deps, c.deps());
        }
        assert_eq!(change_preview(b"not a change"), None);
        assert_eq!(
            change_preview(&[0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 1, 0xff]),
            None
        );
    }
}
