//! One anti-entropy exchange with one peer about one space: its phase, the request it waits
//! for (with a deadline), what it has received but not yet ingested, and its progress.
//!
//! ```text
//!  [Hello ──hello (a member's)──►]   (a private space, while the peer's author is not known)
//!  Summary ──in_sync──────────────────────────────────────────► end: InSync
//!     │ ──heads, nothing wanted───────────────────────────────► end: InSync | PeerBehind
//!     │ ──heads, wants──► Fetch ──contributions (new)──► Fetch   (next fetch sent at once,
//!     │                     │                                    the batch ingested meanwhile)
//!     │                     └──contributions (nothing new,
//!     │                        or nothing left to want)──► Draining ──last batch ingested──►
//!     │                                                   end: InSync | Incomplete
//!  any: timeout / failure / refused ─► end (no verdict, retry with backoff)
//!
//!  targeted (a gossip message arrived early): starts at Fetch for the documents it needs, and
//!  ends without a verdict on the pair.
//!  any: wrong kind of answer, oversize or unreadable answer, invalid contribution ─► ban
//! ```

use crate::service::{ExchangeId, Millis};
use agora_protocol::automerge::ChangeHash;
use agora_protocol::sync::DocHeads;
use agora_protocol::DocId;
use std::collections::BTreeMap;

/// Where an exchange stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// A private space's `Hello` is out (sealed under this epoch); the peer's `Hello` is
    /// expected, then the exchange goes on as from `Summary`.
    Hello(agora_protocol::keys::KeyId),
    /// A `Summary` is out; `InSync` or `Heads` is expected.
    Summary,
    /// A `Fetch` is out; `Contributions` is expected.
    Fetch,
    /// No request is out; the exchange ends when the batches it received are ingested.
    Draining,
}

/// Received and not yet ingested: per document, each change's hash and dependencies.
pub(crate) type InFlight = BTreeMap<DocId, Vec<(ChangeHash, Vec<ChangeHash>)>>;

/// One running exchange.
#[derive(Debug)]
pub(crate) struct Exchange {
    /// Names the exchange (the id of its first request): a batch handed to ingest carries it, so
    /// a batch of an exchange that ended is recognised and dropped.
    pub generation: ExchangeId,
    /// The request awaited and when it times out.
    pub outstanding: Option<(ExchangeId, Millis)>,
    pub phase: Phase,
    /// The peer's heads, from its `Heads` answer (bounded when they arrived).
    pub theirs: Vec<DocHeads>,
    pub in_flight: InFlight,
    /// The documents the outstanding `Fetch` asks for (other exchanges of the space ask for
    /// them last until it is answered).
    pub asked: Vec<DocId>,
    /// Batches handed to ingest and not yet ingested.
    pub batches: u32,
    /// Documents still wanted, as of the last answer.
    pub docs_left: usize,
    /// Contributions accepted from this exchange so far.
    pub accepted: u64,
    /// A fetch of a few documents a gossip message needed (no `Summary`, no verdict on the
    /// pair as a whole).
    pub targeted: bool,
}

impl Exchange {
    /// A new exchange whose `Summary` (request `id`) times out at `deadline`.
    pub fn new(id: ExchangeId, deadline: Millis) -> Exchange {
        Exchange {
            generation: id,
            outstanding: Some((id, deadline)),
            phase: Phase::Summary,
            theirs: Vec::new(),
            in_flight: BTreeMap::new(),
            asked: Vec::new(),
            batches: 0,
            docs_left: 0,
            accepted: 0,
            targeted: false,
        }
    }

    /// A targeted exchange: its first request is the `Fetch` `id` for `theirs`.
    pub fn targeted(id: ExchangeId, deadline: Millis, theirs: Vec<DocHeads>) -> Exchange {
        Exchange {
            phase: Phase::Fetch,
            theirs,
            targeted: true,
            ..Exchange::new(id, deadline)
        }
    }

    /// Whether `hash` of `doc` was received and waits for ingest.
    pub fn holds(&self, doc: &DocId, hash: &ChangeHash) -> bool {
        self.in_flight
            .get(doc)
            .is_some_and(|v| v.iter().any(|(h, _)| h == hash))
    }

    /// Forgets received changes once their batch has been ingested.
    pub fn ingested(&mut self, done: &[(DocId, ChangeHash)]) {
        for (doc, hash) in done {
            if let Some(v) = self.in_flight.get_mut(doc) {
                v.retain(|(h, _)| h != hash);
                if v.is_empty() {
                    self.in_flight.remove(doc);
                }
            }
        }
    }
}
