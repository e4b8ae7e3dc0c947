//! Anti-entropy sync messages: how two peers that share a space find out what the other lacks
//! and transfer exactly those signed contributions.
//!
//! Exchange (libp2p request-response, protocol `/agora/sync/1`, CBOR):
//! 1. `Summary { space, digest }` → `InSync` when both digests are equal (the common, idle case:
//!    a few dozen bytes whatever the space's size), else `Heads { docs }`: the responder's heads
//!    for every document in the space.
//! 2. For the documents whose heads it lacks, the requester sends `Fetch { space, wants, max_bytes }`
//!    with its own heads per document; the responder answers `Contributions { items, more }`:
//!    the stored contributions it holds beyond those heads, in causal order, up to `max_bytes`.
//!    With `more`, the requester ingests what it got and asks again with its new heads, so an
//!    interrupted transfer resumes where it stopped.
//!
//! Every contribution received this way is verified exactly like gossip input: sync moves
//! signed contributions only, never Automerge sync messages.
//!
//! This module owns the bytes: [`SyncRequest::encode`] / [`SyncRequest::decode`] (and the same
//! for [`SyncResponse`]) are what travels; the node's libp2p transport only carries them.

use crate::cbor::{head_len, string_len};
use crate::ids::{DocId, SpaceId};
use automerge::ChangeHash;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The libp2p protocol name.
pub const SYNC_PROTOCOL: &str = "/agora/sync/1";
/// Domain prefix of the space digest.
pub const DIGEST_DOMAIN: &[u8] = b"agora-sync-digest-v1\0";
/// Most documents listed in one `Heads` response (about 63 bytes each with one head: the
/// largest `Heads` fits [`MAX_RESPONSE_BYTES`]).
pub const MAX_DOCS_PER_SPACE: usize = 100_000;
/// Most heads per document accepted in a message.
pub const MAX_HEADS_PER_DOC: usize = 64;
/// Most documents a node asks for in one `Fetch` (with [`MAX_HEADS_PER_DOC`] heads each it stays
/// under [`MAX_REQUEST_BYTES`]); further documents are fetched in the following requests.
pub const MAX_WANTS: usize = 256;
/// Most documents a responder accepts in one `Fetch` (more than a node sends, so that other
/// implementations may batch differently; the request size limit bounds it as well).
pub const MAX_WANTS_ACCEPTED: usize = 1024;
/// Largest batch of contributions a responder sends in one response (encoded bytes).
pub const MAX_RESPONSE_CONTRIBUTION_BYTES: usize = 2 * 1024 * 1024;
/// Largest request accepted, in bytes.
pub const MAX_REQUEST_BYTES: u64 = 1024 * 1024;
/// Largest response accepted, in bytes (contributions plus framing).
pub const MAX_RESPONSE_BYTES: u64 = 8 * 1024 * 1024;

/// A change hash on the wire (32 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Hash(#[serde(with = "serde_bytes")] pub [u8; 32]);

impl From<ChangeHash> for Hash {
    fn from(h: ChangeHash) -> Self {
        Hash(h.0)
    }
}

impl From<Hash> for ChangeHash {
    fn from(h: Hash) -> Self {
        ChangeHash(h.0)
    }
}

/// One document's heads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocHeads {
    /// The document.
    #[serde(with = "serde_bytes")]
    pub doc: [u8; 16],
    /// Its heads, sorted.
    pub heads: Vec<Hash>,
}

/// A sync request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum SyncRequest {
    /// "Here is my digest of this space."
    Summary {
        /// Protocol version (1).
        v: u8,
        /// The space.
        #[serde(with = "serde_bytes")]
        space: [u8; 16],
        /// [`space_digest`] of the requester's documents.
        #[serde(with = "serde_bytes")]
        digest: [u8; 32],
    },
    /// "Send me what you have beyond these heads."
    Fetch {
        /// Protocol version (1).
        v: u8,
        /// The space.
        #[serde(with = "serde_bytes")]
        space: [u8; 16],
        /// The requester's heads for each wanted document (empty heads: send everything).
        wants: Vec<DocHeads>,
        /// The most contribution bytes the requester wants in this response.
        max_bytes: u32,
    },
    /// "This is who runs me" (private spaces, version 2; [`crate::hello`]): the requester's
    /// author, sealed under an epoch key of the space and bound to both transport ids.
    Hello {
        /// Protocol version (2).
        v: u8,
        /// The space (a private space's locator, first 16 bytes).
        #[serde(with = "serde_bytes")]
        space: [u8; 16],
        /// The key id of the epoch it is sealed under.
        #[serde(with = "serde_bytes")]
        key: [u8; 32],
        /// The nonce.
        #[serde(with = "serde_bytes")]
        nonce: [u8; 24],
        /// The sealed hello.
        ct: serde_bytes::ByteBuf,
    },
}

/// A sync response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum SyncResponse {
    /// The digests match.
    InSync,
    /// The digests differ: the responder's heads per document.
    Heads {
        /// Every non-empty document of the space.
        docs: Vec<DocHeads>,
    },
    /// Contributions beyond the requester's heads.
    Contributions {
        /// Canonical contribution encodings, in causal order.
        items: Vec<serde_bytes::ByteBuf>,
        /// Whether the responder holds more than it sent.
        more: bool,
    },
    /// The request was refused (unknown space, malformed, too many wants).
    Refused {
        /// Why.
        reason: String,
    },
    /// The responder's hello, sealed under the key of the request's.
    Hello {
        /// The nonce.
        #[serde(with = "serde_bytes")]
        nonce: [u8; 24],
        /// The sealed hello.
        ct: serde_bytes::ByteBuf,
    },
}

/// The digest of a space, fed one document at a time (in ascending id order, each with its
/// heads sorted): the same bytes as [`space_digest`], without collecting the documents first.
pub struct SpaceDigest {
    hasher: Sha256,
    /// Input gathered before it is hashed (many small updates cost more than a few big ones).
    buffer: Vec<u8>,
}

impl SpaceDigest {
    const BUFFER: usize = 16 * 1024;

    /// An empty digest.
    pub fn new() -> SpaceDigest {
        let mut buffer = Vec::with_capacity(Self::BUFFER + 64);
        buffer.extend_from_slice(DIGEST_DOMAIN);
        SpaceDigest {
            hasher: Sha256::new(),
            buffer,
        }
    }

    /// Adds a document. The caller gives documents in ascending id order, heads sorted, and
    /// leaves out documents without heads.
    pub fn add(&mut self, doc: &DocId, heads: &[ChangeHash]) {
        self.buffer.extend_from_slice(&doc.0);
        self.buffer
            .extend_from_slice(&(heads.len() as u32).to_be_bytes());
        for h in heads {
            self.buffer.extend_from_slice(&h.0);
        }
        if self.buffer.len() >= Self::BUFFER {
            self.hasher.update(&self.buffer);
            self.buffer.clear();
        }
    }

    /// The digest.
    pub fn finish(mut self) -> [u8; 32] {
        self.hasher.update(&self.buffer);
        self.hasher.finalize().into()
    }
}

impl Default for SpaceDigest {
    fn default() -> Self {
        SpaceDigest::new()
    }
}

/// The digest of a space: SHA-256 of `DIGEST_DOMAIN`, then for each non-empty document in
/// ascending id order: doc id (16) ‖ number of heads (u32 BE) ‖ heads in ascending order (32 each).
/// Two nodes with the same contributions have the same digest.
pub fn space_digest<'a>(docs: impl IntoIterator<Item = (&'a DocId, &'a [ChangeHash])>) -> [u8; 32] {
    let mut sorted: Vec<(&DocId, Vec<ChangeHash>)> = docs
        .into_iter()
        .filter(|(_, h)| !h.is_empty())
        .map(|(d, h)| {
            let mut h = h.to_vec();
            h.sort();
            (d, h)
        })
        .collect();
    sorted.sort_by_key(|(d, _)| **d);
    let mut digest = SpaceDigest::new();
    for (doc, heads) in sorted {
        digest.add(doc, &heads);
    }
    digest.finish()
}

impl SyncRequest {
    /// The space the request is about.
    pub fn space(&self) -> SpaceId {
        match self {
            SyncRequest::Summary { space, .. }
            | SyncRequest::Fetch { space, .. }
            | SyncRequest::Hello { space, .. } => SpaceId(*space),
        }
    }

    /// Checks the bounds a responder enforces before doing any work.
    pub fn check(&self) -> Result<(), String> {
        match self {
            SyncRequest::Summary { v, .. } | SyncRequest::Fetch { v, .. } if *v != 1 => {
                Err(format!("unsupported sync version {v}"))
            }
            SyncRequest::Hello { v, .. } if *v != 2 => {
                Err(format!("unsupported hello version {v}"))
            }
            SyncRequest::Hello { ct, .. } if ct.len() != crate::hello::HELLO_CT_LEN => {
                Err("a hello of the wrong length".into())
            }
            SyncRequest::Fetch { wants, .. } if wants.len() > MAX_WANTS_ACCEPTED => Err(format!(
                "{} documents wanted; at most {MAX_WANTS_ACCEPTED}",
                wants.len()
            )),
            SyncRequest::Fetch { wants, .. }
                if wants.iter().any(|w| w.heads.len() > MAX_HEADS_PER_DOC) =>
            {
                Err(format!(
                    "more than {MAX_HEADS_PER_DOC} heads for one document"
                ))
            }
            _ => Ok(()),
        }
    }
}

/// Why a sync message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SyncDecodeError {
    /// The message is longer than the limit for its direction.
    #[error("sync message is {len} bytes, more than the {max} allowed")]
    TooLarge {
        /// Bytes received (at least; a reader stops one byte past the limit).
        len: usize,
        /// The limit.
        max: u64,
    },
    /// The bytes are not a sync message of this version.
    #[error("malformed sync message: {0}")]
    Malformed(String),
}

fn encode_cbor<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail, and every message has a serde shape CBOR supports.
    ciborium::into_writer(value, &mut out).expect("CBOR encoding into a Vec cannot fail");
    out
}

fn decode_cbor<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    max: u64,
) -> Result<T, SyncDecodeError> {
    if bytes.len() as u64 > max {
        return Err(SyncDecodeError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    ciborium::from_reader(bytes)
        .map_err(|e| SyncDecodeError::Malformed(e.to_string().chars().take(200).collect()))
}

fn doc_heads_len(d: &DocHeads) -> usize {
    head_len(2)
        + string_len(3)
        + string_len(16)
        + string_len(5)
        + head_len(d.heads.len())
        + d.heads.len() * string_len(32)
}

/// Bytes of `"t": name` in a message map.
fn tag_len(name: &str) -> usize {
    string_len(1) + string_len(name.len())
}

impl SyncRequest {
    /// The wire encoding (section 9.2 of `docs/PROTOCOL.md`).
    pub fn encode(&self) -> Vec<u8> {
        encode_cbor(self)
    }

    /// Reads a request from untrusted bytes (at most [`MAX_REQUEST_BYTES`]). Never panics.
    pub fn decode(bytes: &[u8]) -> Result<SyncRequest, SyncDecodeError> {
        decode_cbor(bytes, MAX_REQUEST_BYTES)
    }

    /// `self.encode().len()`, computed without encoding.
    pub fn encoded_len(&self) -> usize {
        match self {
            SyncRequest::Summary { v, .. } => {
                head_len(4)
                    + tag_len("summary")
                    + string_len(1)
                    + head_len(*v as usize)
                    + string_len(5)
                    + string_len(16)
                    + string_len(6)
                    + string_len(32)
            }
            SyncRequest::Fetch {
                v,
                wants,
                max_bytes,
                ..
            } => {
                head_len(5)
                    + tag_len("fetch")
                    + string_len(1)
                    + head_len(*v as usize)
                    + string_len(5)
                    + string_len(16)
                    + string_len(5)
                    + head_len(wants.len())
                    + wants.iter().map(doc_heads_len).sum::<usize>()
                    + string_len(9)
                    + head_len(*max_bytes as usize)
            }
            SyncRequest::Hello { v, ct, .. } => {
                head_len(6)
                    + tag_len("hello")
                    + string_len(1)
                    + head_len(*v as usize)
                    + string_len(5)
                    + string_len(16)
                    + string_len(3)
                    + string_len(32)
                    + string_len(5)
                    + string_len(24)
                    + string_len(2)
                    + string_len(ct.len())
            }
        }
    }
}

impl SyncResponse {
    /// The wire encoding (section 9.2 of `docs/PROTOCOL.md`).
    pub fn encode(&self) -> Vec<u8> {
        encode_cbor(self)
    }

    /// Reads a response from untrusted bytes (at most [`MAX_RESPONSE_BYTES`]). Never panics.
    pub fn decode(bytes: &[u8]) -> Result<SyncResponse, SyncDecodeError> {
        decode_cbor(bytes, MAX_RESPONSE_BYTES)
    }

    /// `self.encode().len()`, computed without encoding.
    pub fn encoded_len(&self) -> usize {
        match self {
            SyncResponse::InSync => head_len(1) + tag_len("in_sync"),
            SyncResponse::Heads { docs } => {
                head_len(2)
                    + tag_len("heads")
                    + string_len(4)
                    + head_len(docs.len())
                    + docs.iter().map(doc_heads_len).sum::<usize>()
            }
            SyncResponse::Contributions { items, .. } => {
                head_len(3)
                    + tag_len("contributions")
                    + string_len(5)
                    + head_len(items.len())
                    + items.iter().map(|b| string_len(b.len())).sum::<usize>()
                    + string_len(4)
                    + 1
            }
            SyncResponse::Refused { reason } => {
                head_len(2) + tag_len("refused") + string_len(6) + string_len(reason.len())
            }
            SyncResponse::Hello { ct, .. } => {
                head_len(3)
                    + tag_len("hello")
                    + string_len(5)
                    + string_len(24)
                    + string_len(2)
                    + string_len(ct.len())
            }
        }
    }

    /// The name of the message type (`"in_sync"`, `"heads"`, ...), for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            SyncResponse::InSync => "in_sync",
            SyncResponse::Heads { .. } => "heads",
            SyncResponse::Contributions { .. } => "contributions",
            SyncResponse::Refused { .. } => "refused",
            SyncResponse::Hello { .. } => "hello",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_ignores_order_and_empty_docs() {
        let (a, b, c) = (DocId([1; 16]), DocId([2; 16]), DocId([3; 16]));
        let h1 = [ChangeHash([9; 32]), ChangeHash([4; 32])];
        let h2 = [ChangeHash([5; 32])];
        let one = space_digest([(&a, &h1[..]), (&b, &h2[..]), (&c, &[][..])]);
        let h1r = [h1[1], h1[0]];
        let two = space_digest([(&b, &h2[..]), (&a, &h1r[..])]);
        assert_eq!(one, two);
        assert_ne!(one, space_digest([(&a, &h1[..])]));
    }

    fn heads(n: usize, tag: u8) -> Vec<DocHeads> {
        (0..n)
            .map(|i| DocHeads {
                doc: [tag.wrapping_add(i as u8); 16],
                heads: (0..(i % 4)).map(|j| Hash([j as u8; 32])).collect(),
            })
            .collect()
    }

    #[test]
    fn messages_round_trip_and_their_length_is_known_without_encoding() {
        let requests = [
            SyncRequest::Summary {
                v: 1,
                space: [4; 16],
                digest: [5; 32],
            },
            SyncRequest::Fetch {
                v: 1,
                space: [4; 16],
                wants: heads(300, 7),
                max_bytes: 1 << 20,
            },
            SyncRequest::Fetch {
                v: 200,
                space: [4; 16],
                wants: Vec::new(),
                max_bytes: 7,
            },
            SyncRequest::Hello {
                v: 2,
                space: [4; 16],
                key: [6; 32],
                nonce: [7; 24],
                ct: serde_bytes::ByteBuf::from(vec![8; crate::hello::HELLO_CT_LEN]),
            },
        ];
        for r in requests {
            let bytes = r.encode();
            assert_eq!(bytes.len(), r.encoded_len(), "{r:?}");
            assert_eq!(SyncRequest::decode(&bytes), Ok(r));
        }
        let responses = [
            SyncResponse::InSync,
            SyncResponse::Heads {
                docs: heads(70_000, 1),
            },
            SyncResponse::Contributions {
                items: vec![
                    serde_bytes::ByteBuf::from(vec![1; 10]),
                    serde_bytes::ByteBuf::from(vec![2; 300]),
                    serde_bytes::ByteBuf::from(vec![3; 70_000]),
                ],
                more: true,
            },
            SyncResponse::Refused {
                reason: "busy".into(),
            },
            SyncResponse::Hello {
                nonce: [7; 24],
                ct: serde_bytes::ByteBuf::from(vec![8; crate::hello::HELLO_CT_LEN]),
            },
        ];
        for r in responses {
            let bytes = r.encode();
            assert_eq!(bytes.len(), r.encoded_len(), "{}", r.kind());
            assert_eq!(SyncResponse::decode(&bytes), Ok(r));
        }
    }

    #[test]
    fn oversize_and_garbage_are_refused_without_panicking() {
        let big = vec![0u8; MAX_REQUEST_BYTES as usize + 1];
        assert!(matches!(
            SyncRequest::decode(&big),
            Err(SyncDecodeError::TooLarge { .. })
        ));
        for bytes in [&[][..], &[0xff][..], &[0xa1, 0x61, 0x74][..], b"hello"] {
            assert!(matches!(
                SyncResponse::decode(bytes),
                Err(SyncDecodeError::Malformed(_))
            ));
        }
    }
}
