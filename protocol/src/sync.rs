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
/// Most documents in one `Fetch` (with [`MAX_HEADS_PER_DOC`] heads each it stays under
/// [`MAX_REQUEST_BYTES`]); further documents are fetched in the following requests.
pub const MAX_WANTS: usize = 256;
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
    let mut hasher = Sha256::new();
    hasher.update(DIGEST_DOMAIN);
    for (doc, heads) in sorted {
        hasher.update(doc.0);
        hasher.update((heads.len() as u32).to_be_bytes());
        for h in heads {
            hasher.update(h.0);
        }
    }
    hasher.finalize().into()
}

impl SyncRequest {
    /// The space the request is about.
    pub fn space(&self) -> SpaceId {
        match self {
            SyncRequest::Summary { space, .. } | SyncRequest::Fetch { space, .. } => {
                SpaceId(*space)
            }
        }
    }

    /// Checks the bounds a responder enforces before doing any work.
    pub fn check(&self) -> Result<(), String> {
        match self {
            SyncRequest::Summary { v, .. } | SyncRequest::Fetch { v, .. } if *v != 1 => {
                Err(format!("unsupported sync version {v}"))
            }
            SyncRequest::Fetch { wants, .. } if wants.len() > MAX_WANTS => Err(format!(
                "{} documents wanted; at most {MAX_WANTS}",
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
}
