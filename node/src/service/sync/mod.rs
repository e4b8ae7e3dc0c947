//! Anti-entropy sync: the scheduler (which peer, which space, when, how many at once), the
//! requester's side of each exchange ([`exchange`]), the responder's side, and bans.
//!
//! The scheduler keeps one entry per pair (connected peer, space we hold that it follows):
//! its last verdict and when its next round is due. A round starts when the peer subscribes,
//! when we join, every `sync_every` (jittered down to three quarters of it, so that rounds of
//! many peers spread out and no pair waits longer than the period), and sooner again after a
//! round that left something behind. A round that falls due while gossip is delivering to the
//! space waits until gossip has been quiet for `sync_recheck` (at most until two periods have
//! passed since the pair's last round): during a burst, states differ mostly by what is in
//! flight, and a round would ship a whole `Heads` list for nothing. A gossip message that arrived early and is still waiting
//! `sync_recheck` later gets a targeted fetch of its document from its sender. At
//! most `max_exchanges` run at once; the others wait in a queue, never dropped. One exchange per
//! pair at a time.

mod exchange;
mod private;

pub use self::private::OPS_DOC;

use self::exchange::{Exchange, InFlight, Phase};
use super::outbox::When;
use super::replica::Replica;
use super::{
    Checked, ExchangeId, InboundId, Millis, NetAction, Now, Outcome, Output, PeerHandle, Service,
    SyncBatch, SyncFailure,
};
use agora_protocol::automerge::ChangeHash;
use agora_protocol::keys::KeyId;
use agora_protocol::sync::{
    self, DocHeads, SyncRequest, SyncResponse, MAX_DOCS_PER_SPACE, MAX_HEADS_PER_DOC,
    MAX_RESPONSE_CONTRIBUTION_BYTES, MAX_WANTS,
};
use agora_protocol::{DocId, Rejection, SpaceId};
use rand::RngExt;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Most spaces remembered per peer (gossipsub refuses more than 100 subscriptions anyway).
const MAX_SPACES_PER_PEER: usize = 128;
/// Most documents remembered per pair for a targeted fetch after early gossip.
const MAX_EARLY_PER_PAIR: usize = 64;
/// The first `Fetch` of a round asks for `fetch_bytes` divided by this.
const FIRST_FETCH_DIVISOR: u32 = 4;

/// Where sync with one peer in one space stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum SyncState {
    /// Both hold the same contributions (as of the last exchange).
    InSync,
    /// We are fetching what we lack from this peer.
    CatchingUp {
        /// Documents in which the peer still has changes we lack.
        docs_left: usize,
        /// Contributions accepted from this peer in this catch-up so far.
        received: u64,
    },
    /// We hold everything the peer has, and it lacks some of ours (its own round fetches it).
    PeerBehind,
    /// The last exchange ended with documents still missing (the peer did not send them, or
    /// what it sent waits for other contributions); the next round is soon.
    Incomplete {
        /// Documents still missing.
        docs_left: usize,
    },
}

pub(crate) type Pair = (PeerHandle, SpaceId);

#[derive(Debug)]
struct PairState {
    state: Option<SyncState>,
    next_round: Millis,
    /// When the pair's last round ended (or the pair appeared).
    last_round: Millis,
    /// Rounds in a row that ended without `InSync` or `PeerBehind` (for the retry backoff).
    setbacks: u32,
    /// Documents in which a gossip message from this peer waits for dependencies: the
    /// document, the waiting change, and when to fetch it if gossip has not brought them.
    early: Vec<(DocId, ChangeHash, Millis)>,
}

/// The scheduler's state (its logic is in the `impl Service` of this module).
#[derive(Default)]
pub(crate) struct Scheduler {
    /// Connected peers and the spaces they follow.
    peers: BTreeMap<PeerHandle, BTreeSet<SpaceId>>,
    pairs: BTreeMap<Pair, PairState>,
    exchanges: BTreeMap<Pair, Exchange>,
    /// Requests awaited, by id.
    outstanding: BTreeMap<ExchangeId, Pair>,
    /// Pairs waiting for a free exchange slot, in order, and the same as a set.
    queue: VecDeque<Pair>,
    queued: BTreeSet<Pair>,
    /// Peers banned, until when.
    pub banned: BTreeMap<PeerHandle, Millis>,
    /// Per space, when gossip last brought a contribution we accepted.
    busy: BTreeMap<SpaceId, Millis>,
    next_id: u64,
    /// Outbound requests that failed (timeouts, transport failures, refusals).
    pub failures: u64,
    /// The member behind a connected peer, per private space, as its hello proved it (PROTOCOL
    /// 14.9): a peer id says nothing of its author.
    pub(crate) authors: BTreeMap<Pair, agora_protocol::AuthorId>,
    /// Each connected peer's transport id (the bytes of its peer id), which hellos bind.
    pub(crate) transport_ids: BTreeMap<PeerHandle, Vec<u8>>,
    /// When this node last sent a hello to each pair (at most one per `sync_retry`, whatever
    /// the peer does with its subscriptions); forgotten when the peer disconnects.
    pub(crate) hellos: BTreeMap<Pair, Millis>,
    /// Private spaces whose membership changed: the next tick opens pairs with the peers that
    /// follow them and are members now.
    pub(crate) rejoin: BTreeSet<SpaceId>,
    /// [`Service::sync_next_wakeup`], until something it depends on changes (every method
    /// that changes pairs, exchanges, the queue, early arrivals or bans forgets it first).
    wakeup: std::cell::Cell<Option<Option<Millis>>>,
}

/// One pair's state, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairStatus {
    /// The peer.
    pub peer: PeerHandle,
    /// The space.
    pub space: SpaceId,
    /// The state.
    pub state: SyncState,
}

/// The document, hash and dependencies of item `i` of a sync answer: from its verification on
/// arrival if it has one, else read from its bytes (in a private space, an item that is not a
/// sealed contribution is a membership operation).
fn preview<R: Replica>(
    replica: &R,
    private: bool,
    checked: Option<&Checked>,
    i: usize,
    bytes: &[u8],
) -> Option<(DocId, ChangeHash, Vec<ChangeHash>)> {
    if private && !crate::service::replica::is_sealed(bytes) {
        return self::private::op_preview(bytes);
    }
    checked
        .and_then(|c| c.preview(i))
        .or_else(|| replica.preview(bytes))
}

impl<R: Replica> Service<R> {
    // ----- peers -----

    pub(super) fn peer_connected(&mut self, peer: PeerHandle, now: Now) {
        self.sync.wakeup.set(None);
        if self.is_banned(peer, now) {
            self.outbox.net(NetAction::Disconnect { peer });
            return;
        }
        self.sync.peers.entry(peer).or_default();
    }

    pub(super) fn peer_disconnected(&mut self, peer: PeerHandle, now: Now) {
        self.sync.wakeup.set(None);
        self.sync.peers.remove(&peer);
        self.sync.authors.retain(|(p, _), _| *p != peer);
        self.sync.hellos.retain(|(p, _), _| *p != peer);
        self.sync.transport_ids.remove(&peer);
        self.forget_peer(peer);
        self.start_queued(now);
    }

    pub(super) fn peer_subscribed(&mut self, peer: PeerHandle, space: SpaceId, now: Now) {
        self.sync.wakeup.set(None);
        if self.is_banned(peer, now) {
            return;
        }
        let spaces = self.sync.peers.entry(peer).or_default();
        if spaces.len() >= MAX_SPACES_PER_PEER && !spaces.contains(&space) {
            return;
        }
        spaces.insert(space);
        if self.may_open(peer, &space) {
            self.open_pair((peer, space), now);
            self.start_exchange((peer, space), now);
        }
    }

    pub(super) fn peer_unsubscribed(&mut self, peer: PeerHandle, space: SpaceId, now: Now) {
        self.sync.wakeup.set(None);
        if let Some(spaces) = self.sync.peers.get_mut(&peer) {
            spaces.remove(&space);
        }
        self.sync.pairs.remove(&(peer, space));
        self.drop_exchange((peer, space));
        self.sync.queue.retain(|p| *p != (peer, space));
        self.sync.queued.remove(&(peer, space));
        self.start_queued(now);
    }

    /// Gossip brought contributions to `space` that we accepted: the space is busy.
    pub(super) fn sync_busy(&mut self, space: SpaceId, now: Now) {
        match self.sync.busy.get_mut(&space) {
            Some(at) => *at = now.mono,
            None => {
                self.sync.busy.insert(space, now.mono);
            }
        }
    }

    /// The member behind `peer` in `space` became known: a round with it starts now, unless one
    /// runs already.
    pub(super) fn sync_with_known(&mut self, peer: PeerHandle, space: SpaceId, now: Now) {
        self.sync.wakeup.set(None);
        let follows = self
            .sync
            .peers
            .get(&peer)
            .is_some_and(|s| s.contains(&space));
        if follows
            && self.syncs_with(peer, &space)
            && !self.sync.exchanges.contains_key(&(peer, space))
        {
            self.open_pair((peer, space), now);
            self.start_exchange((peer, space), now);
        }
    }

    /// A space was joined: start rounds with the peers already in it.
    pub(super) fn sync_joined(&mut self, space: SpaceId, now: Now) {
        self.sync.wakeup.set(None);
        let peers: Vec<PeerHandle> = self
            .sync
            .peers
            .iter()
            .filter(|(_, spaces)| spaces.contains(&space))
            .map(|(p, _)| *p)
            .collect();
        for peer in peers {
            if !self.may_open(peer, &space) {
                continue;
            }
            self.open_pair((peer, space), now);
            self.start_exchange((peer, space), now);
        }
    }

    /// A gossip message from `peer` arrived before its dependencies. The sender most likely has
    /// them: if gossip has not brought them within `sync_recheck`, fetch that document from it
    /// (a targeted `Fetch`, not a whole round).
    pub(super) fn sync_early_arrival(
        &mut self,
        peer: PeerHandle,
        space: SpaceId,
        doc: DocId,
        hash: ChangeHash,
        now: Now,
    ) {
        self.sync.wakeup.set(None);
        let due = now.mono + self.config.sync_recheck;
        // Only from a peer this node syncs with: a private space's document names go to no
        // one whose member has not said hello.
        if !self.syncs_with(peer, &space) {
            return;
        }
        let Some(p) = self.sync.pairs.get_mut(&(peer, space)) else {
            return;
        };
        if p.early.len() < MAX_EARLY_PER_PAIR && !p.early.iter().any(|(d, _, _)| *d == doc) {
            p.early.push((doc, hash, due));
        }
    }

    /// Starts targeted fetches whose time has come, for pairs with no exchange running.
    fn fetch_early(&mut self, now: Now) {
        self.sync.wakeup.set(None);
        let due: Vec<Pair> = self
            .sync
            .pairs
            .iter()
            .filter(|(pair, p)| {
                !self.sync.exchanges.contains_key(pair)
                    && p.early.iter().any(|(_, _, at)| *at <= now.mono)
                    && self.syncs_with(pair.0, &pair.1)
            })
            .map(|(pair, _)| *pair)
            .collect();
        for pair in due {
            let Some(p) = self.sync.pairs.get_mut(&pair) else {
                continue;
            };
            let (ready, later): (Vec<_>, Vec<_>) =
                p.early.drain(..).partition(|(_, _, at)| *at <= now.mono);
            p.early = later;
            let theirs: Vec<DocHeads> = ready
                .into_iter()
                .filter(|(doc, hash, _)| !self.sync_holds(&pair.1, doc, hash))
                .map(|(doc, hash, _)| DocHeads {
                    doc: doc.0,
                    heads: vec![hash.into()],
                })
                .collect();
            if theirs.is_empty() || self.sync.exchanges.len() >= self.config.max_exchanges {
                continue;
            }
            let wants = self.wants(&pair.1, &theirs, &InFlight::new());
            if wants.is_empty() {
                continue;
            }
            let id = self.next_id();
            self.sync.exchanges.insert(
                pair,
                Exchange::targeted(id, now.mono + self.config.sync_timeout, theirs),
            );
            self.send_fetch_with(pair, id, wants, now);
        }
    }

    fn open_pair(&mut self, pair: Pair, now: Now) {
        self.sync.wakeup.set(None);
        self.sync.pairs.entry(pair).or_insert(PairState {
            state: None,
            next_round: now.mono,
            last_round: now.mono,
            setbacks: 0,
            early: Vec::new(),
        });
    }

    fn forget_peer(&mut self, peer: PeerHandle) {
        self.sync.wakeup.set(None);
        self.sync.pairs.retain(|(p, _), _| *p != peer);
        let gone: Vec<Pair> = self
            .sync
            .exchanges
            .keys()
            .filter(|(p, _)| *p == peer)
            .copied()
            .collect();
        for pair in gone {
            self.drop_exchange(pair);
        }
        self.sync.queue.retain(|(p, _)| *p != peer);
        self.sync.queued.retain(|(p, _)| *p != peer);
    }

    fn is_banned(&self, peer: PeerHandle, now: Now) -> bool {
        self.sync
            .banned
            .get(&peer)
            .is_some_and(|until| *until > now.mono)
    }

    /// Disconnects a peer that sent invalid data, and refuses it for `ban_for`.
    pub(super) fn ban(&mut self, peer: PeerHandle, reason: &'static str, now: Now) {
        self.sync.wakeup.set(None);
        tracing::warn!(target: "agora::sync", %peer, reason, "peer sent invalid data by sync; disconnecting it for a while");
        self.sync
            .banned
            .insert(peer, now.mono + self.config.ban_for);
        self.sync.peers.remove(&peer);
        self.forget_peer(peer);
        self.outbox.net(NetAction::Ban {
            peer,
            reason,
            duration: self.config.ban_for,
        });
        self.start_queued(now);
    }

    // ----- the requester's side -----

    fn next_id(&mut self) -> ExchangeId {
        self.sync.next_id += 1;
        ExchangeId(self.sync.next_id)
    }

    /// Starts a round with a pair now, or queues it when `max_exchanges` are running.
    fn start_exchange(&mut self, pair: Pair, now: Now) {
        self.sync.wakeup.set(None);
        if !self.sync.pairs.contains_key(&pair)
            || self.sync.exchanges.contains_key(&pair)
            || self.sync.queued.contains(&pair)
        {
            return;
        }
        if self.sync.exchanges.len() >= self.config.max_exchanges {
            self.sync.queue.push_back(pair);
            self.sync.queued.insert(pair);
            return;
        }
        let id = self.next_id();
        let mut exchange = Exchange::new(id, now.mono + self.config.sync_timeout);
        // A private space's peer says which member runs it before anything else.
        let hello = match self.hello_needed(pair, now) {
            Ok(hello) => hello,
            // No hello can be made now: a failed round, retried with back-off.
            Err(()) => return self.end_exchange(pair, None, now),
        };
        if let Some(SyncRequest::Hello { key, .. }) = &hello {
            exchange.phase = Phase::Hello(KeyId(*key));
        }
        self.sync.exchanges.insert(pair, exchange);
        self.sync.outstanding.insert(id, pair);
        let request = match hello {
            Some(hello) => hello,
            None => self.summary(&pair.1),
        };
        self.outbox.net(NetAction::SyncRequest {
            peer: pair.0,
            exchange: id,
            request,
        });
    }

    /// The running exchange of `pair` goes on with this node's `Summary`.
    fn send_summary(&mut self, pair: Pair, now: Now) {
        let id = self.next_id();
        let request = self.summary(&pair.1);
        if let Some(ex) = self.sync.exchanges.get_mut(&pair) {
            ex.phase = Phase::Summary;
            ex.outstanding = Some((id, now.mono + self.config.sync_timeout));
        }
        self.sync.outstanding.insert(id, pair);
        self.outbox.net(NetAction::SyncRequest {
            peer: pair.0,
            exchange: id,
            request,
        });
    }

    /// This node's `Summary` of `space`.
    fn summary(&mut self, space: &SpaceId) -> SyncRequest {
        SyncRequest::Summary {
            v: 1,
            space: self.wire_name(space),
            digest: self.digest(space),
        }
    }

    fn start_queued(&mut self, now: Now) {
        self.sync.wakeup.set(None);
        while self.sync.exchanges.len() < self.config.max_exchanges {
            let Some(pair) = self.sync.queue.pop_front() else {
                break;
            };
            self.sync.queued.remove(&pair);
            self.start_exchange(pair, now);
        }
    }

    fn send_fetch(&mut self, pair: Pair, wants: Vec<DocHeads>, now: Now) {
        let id = self.next_id();
        self.send_fetch_with(pair, id, wants, now);
    }

    fn send_fetch_with(&mut self, pair: Pair, id: ExchangeId, mut wants: Vec<DocHeads>, now: Now) {
        self.sync.wakeup.set(None);
        wants.truncate(MAX_WANTS);
        let Some(ex) = self.sync.exchanges.get_mut(&pair) else {
            return;
        };
        // The first answer of a round is smaller, so that the pipeline (this answer ingested
        // while the next one is prepared and sent) starts sooner.
        let max_bytes = if ex.phase == Phase::Fetch {
            self.config.fetch_bytes
        } else {
            (self.config.fetch_bytes / FIRST_FETCH_DIVISOR).max(1)
        };
        ex.phase = Phase::Fetch;
        ex.asked = wants.iter().map(|w| DocId(w.doc)).collect();
        ex.outstanding = Some((id, now.mono + self.config.sync_timeout));
        self.sync.outstanding.insert(id, pair);
        self.outbox.net(NetAction::SyncRequest {
            peer: pair.0,
            exchange: id,
            request: SyncRequest::Fetch {
                v: 1,
                space: self.wire_name(&pair.1),
                wants,
                max_bytes,
            },
        });
    }

    /// Removes a running exchange without a verdict (its peer left or was banned).
    fn drop_exchange(&mut self, pair: Pair) {
        self.sync.wakeup.set(None);
        if let Some(ex) = self.sync.exchanges.remove(&pair) {
            if let Some((id, _)) = ex.outstanding {
                self.sync.outstanding.remove(&id);
            }
        }
    }

    /// Ends an exchange: records its verdict (if any), schedules the pair's next round, and lets
    /// a queued exchange start.
    fn end_exchange(&mut self, pair: Pair, verdict: Option<SyncState>, now: Now) {
        self.sync.wakeup.set(None);
        let targeted = self.sync.exchanges.get(&pair).is_some_and(|ex| ex.targeted);
        self.drop_exchange(pair);
        if targeted {
            // A targeted fetch says nothing about the pair as a whole: its rounds go on as
            // scheduled (a failure is repaired by them).
            return self.start_queued(now);
        }
        let every = self.config.sync_every;
        let jittered = self.rng.random_range(every - every / 4..=every);
        let (recheck, retry) = (self.config.sync_recheck, self.config.sync_retry);
        if let Some(p) = self.sync.pairs.get_mut(&pair) {
            let wait = match verdict {
                Some(SyncState::InSync) => {
                    p.setbacks = 0;
                    jittered
                }
                // Gossip usually closes the gap within a few heartbeats: look again then, once;
                // after that the peer's own round is the way.
                Some(SyncState::PeerBehind) if p.state != Some(SyncState::PeerBehind) => {
                    p.setbacks = 0;
                    recheck
                }
                Some(SyncState::PeerBehind) => jittered,
                _ => {
                    p.setbacks = p.setbacks.saturating_add(1);
                    retry
                        .saturating_mul(1 << p.setbacks.min(16).saturating_sub(1))
                        .min(every)
                }
            };
            p.next_round = now.mono + wait;
            p.last_round = now.mono;
            if let Some(v) = verdict {
                p.state = Some(v);
            }
        }
        self.start_queued(now);
    }

    pub(super) fn on_sync_response(
        &mut self,
        peer: PeerHandle,
        exchange: ExchangeId,
        result: Result<SyncResponse, SyncFailure>,
        checked: Option<Checked>,
        now: Now,
    ) {
        self.sync.wakeup.set(None);
        // Only the peer that was asked can answer (another one's answer leaves the request
        // awaited).
        let Some(pair) = self
            .sync
            .outstanding
            .get(&exchange)
            .copied()
            .filter(|(p, _)| *p == peer)
        else {
            tracing::debug!(target: "agora::sync", %peer, "dropped an answer to a request no longer awaited");
            return;
        };
        self.sync.outstanding.remove(&exchange);
        let Some(ex) = self.sync.exchanges.get_mut(&pair) else {
            return;
        };
        ex.outstanding = None;
        ex.asked.clear();
        let phase = ex.phase;
        let response = match result {
            Ok(r) => r,
            Err(SyncFailure::TooLarge) => return self.ban(peer, "sync_oversize_answer", now),
            Err(SyncFailure::Malformed(_)) => return self.ban(peer, "sync_malformed_answer", now),
            Err(failure) => {
                self.sync.failures += 1;
                tracing::info!(target: "agora::sync", %peer, %failure, "sync request failed; will retry");
                return self.end_exchange(pair, None, now);
            }
        };
        match (phase, response) {
            (Phase::Hello(key), SyncResponse::Hello { nonce, ct }) => {
                match self.hello_answered(pair, key, &nonce, &ct) {
                    // A member: the exchange goes on with this node's summary.
                    Ok(true) => self.send_summary(pair, now),
                    Ok(false) => {
                        // Not a member in this node's view: no sync of this space with it (a
                        // change of the membership opens the pair again).
                        self.sync.pairs.remove(&pair);
                        self.drop_exchange(pair);
                        self.start_queued(now);
                    }
                    Err(why) => self.ban(peer, why, now),
                }
            }
            (Phase::Summary, SyncResponse::InSync) => {
                self.end_exchange(pair, Some(SyncState::InSync), now)
            }
            (Phase::Summary, SyncResponse::Heads { docs }) => self.on_heads(pair, docs, now),
            (Phase::Fetch, SyncResponse::Contributions { items, .. }) => {
                // Verification done where the answer arrived counts only if it covers exactly
                // these items (it was made from them; a mismatch means a shell bug: verify here).
                let checked = checked.filter(|c| c.len() == items.len());
                self.on_contributions(pair, items, checked, now)
            }
            // The peer could not open this node's hello (it lacks this epoch yet), but its own
            // hello, under an older one, told this node who runs it: go on without.
            (Phase::Hello(_), SyncResponse::Refused { .. })
                if self.sync.authors.contains_key(&pair) =>
            {
                self.send_summary(pair, now)
            }
            (_, SyncResponse::Refused { reason }) => {
                self.sync.failures += 1;
                tracing::debug!(target: "agora::sync", %peer, space = %pair.1, reason, "sync refused");
                self.end_exchange(pair, None, now)
            }
            // An answer that does not fit the question (heads to a fetch, contributions to a
            // summary) is a protocol violation: end the exchange rather than loop on it.
            (_, other) => {
                tracing::info!(target: "agora::sync", %peer, answer = other.kind(), "answer of the wrong kind");
                self.ban(peer, "sync_protocol_violation", now)
            }
        }
    }

    fn on_heads(&mut self, pair: Pair, mut docs: Vec<DocHeads>, now: Now) {
        docs.truncate(MAX_DOCS_PER_SPACE);
        for d in &mut docs {
            d.heads.truncate(MAX_HEADS_PER_DOC);
        }
        let none = InFlight::new();
        let (flying, asked) = self.elsewhere(pair, &none);
        let (wants, unheld) = self.wants_marking(&pair.1, &docs, &flying, &asked);
        if wants.is_empty() && unheld.iter().any(|u| *u) {
            // What we lack is on its way from other peers: no verdict on this pair yet.
            let docs_left = unheld.iter().filter(|u| **u).count();
            return self.end_exchange(pair, Some(SyncState::Incomplete { docs_left }), now);
        }
        if wants.is_empty() {
            let verdict = if self.peer_lacks(&pair.1, &docs) {
                SyncState::PeerBehind
            } else {
                SyncState::InSync
            };
            return self.end_exchange(pair, Some(verdict), now);
        }
        if let Some(ex) = self.sync.exchanges.get_mut(&pair) {
            ex.theirs = keep_marked(docs, &unheld);
            ex.docs_left = wants.len();
        }
        self.send_fetch(pair, wants, now);
    }

    fn on_contributions(
        &mut self,
        pair: Pair,
        items: Vec<serde_bytes::ByteBuf>,
        checked: Option<Checked>,
        now: Now,
    ) {
        self.sync.wakeup.set(None);
        let (peer, space) = pair;
        if !self.sync.exchanges.contains_key(&pair) {
            return;
        }
        // A private space's answer holds operations and sealed contributions, which the shell
        // does not verify.
        let private = self.is_private(&space);
        let checked = checked.filter(|_| !private);
        // Plan the next request from what this batch will add, before it is ingested, so that
        // the peer prepares the next batch while this one is verified and applied.
        let previews: Vec<(DocId, ChangeHash, Vec<ChangeHash>)> = items
            .iter()
            .enumerate()
            .filter_map(|(i, bytes)| preview(&self.replica, private, checked.as_ref(), i, bytes))
            .collect();
        let mut new = 0;
        for (doc, hash, _) in &previews {
            let in_exchange = self
                .sync
                .exchanges
                .get(&pair)
                .is_some_and(|ex| ex.holds(doc, hash));
            if !in_exchange && !self.sync_holds(&space, doc, hash) {
                new += 1;
            }
        }
        let Some(ex) = self.sync.exchanges.get_mut(&pair) else {
            return;
        };
        for (doc, hash, deps) in previews {
            ex.in_flight.entry(doc).or_default().push((hash, deps));
        }
        if !items.is_empty() {
            ex.batches += 1;
            let generation = ex.generation;
            self.outbox.push(
                Output::Ingest(SyncBatch {
                    peer,
                    space,
                    exchange: generation,
                    items: items
                        .into_iter()
                        .map(serde_bytes::ByteBuf::into_vec)
                        .collect(),
                    checked,
                }),
                When::Now,
            );
        }
        let in_flight = self.sync.exchanges.get_mut(&pair).map(|ex| {
            (
                std::mem::take(&mut ex.theirs),
                std::mem::take(&mut ex.in_flight),
            )
        });
        let Some((theirs, in_flight)) = in_flight else {
            return;
        };
        // A batch that brings nothing new ends the requests (a peer that keeps answering with
        // what we hold cannot keep us asking).
        let (wants, theirs) = if new == 0 {
            (Vec::new(), theirs)
        } else {
            let (all, asked) = self.elsewhere(pair, &in_flight);
            let (wants, unheld) = self.wants_marking(&space, &theirs, &all, &asked);
            (wants, keep_marked(theirs, &unheld))
        };
        let Some(ex) = self.sync.exchanges.get_mut(&pair) else {
            return;
        };
        ex.theirs = theirs;
        ex.in_flight = in_flight;
        ex.docs_left = wants.len();
        if wants.is_empty() {
            ex.phase = Phase::Draining;
            if ex.batches == 0 {
                self.finish_exchange(pair, now);
            }
        } else {
            self.send_fetch(pair, wants, now);
        }
    }

    /// Ingests a batch received by sync (handed out as [`Output::Ingest`] so that the next
    /// request left first).
    pub(super) fn on_sync_batch(&mut self, batch: SyncBatch, now: Now) {
        self.sync.wakeup.set(None);
        let SyncBatch {
            peer,
            space,
            exchange,
            items,
            checked,
        } = batch;
        let pair = (peer, space);
        if self
            .sync
            .exchanges
            .get(&pair)
            .is_none_or(|ex| ex.generation != exchange)
        {
            tracing::debug!(target: "agora::sync", %peer, "dropped a batch of an exchange that ended");
            return;
        }
        let private = self.is_private(&space);
        let checked = checked.filter(|_| !private);
        let done: Vec<(DocId, ChangeHash)> = items
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                preview(&self.replica, private, checked.as_ref(), i, b).map(|(d, h, _)| (d, h))
            })
            .collect();
        let n = items.len();
        // A private space's membership operations are taken in first (a rotation among them
        // brings the key that opens the contributions after it).
        let (ops, items): (Vec<Vec<u8>>, Vec<Vec<u8>>) = items
            .into_iter()
            .partition(|b| private && !crate::service::replica::is_sealed(b));
        let mut ops_accepted = 0u64;
        for op in ops {
            match self.private_op_in(space, &op).0 {
                crate::service::Verdict::Reject => {
                    return self.ban(peer, "sync_invalid_operation", now)
                }
                crate::service::Verdict::Accept => ops_accepted += 1,
                crate::service::Verdict::Ignore => {}
            }
        }
        // Resolved once for the whole answer, before its contributions are checked.
        self.settle_ops();
        let items = items.into_iter().map(|b| (b, Some(space))).collect();
        let outcomes = self.ingest(items, checked, now, &mut Vec::new());
        let invalid = outcomes.iter().find_map(|o| match o {
            Outcome::Rejected(r)
                if !matches!(
                    r,
                    Rejection::UnknownSpace
                        | Rejection::UnknownKey
                        | Rejection::LateWrite
                        | Rejection::NotWriter
                ) =>
            {
                Some(r.code())
            }
            _ => None,
        });
        if let Some(reason) = invalid {
            return self.ban(peer, reason, now);
        }
        let accepted = ops_accepted
            + outcomes
                .iter()
                .filter(|o| matches!(o, Outcome::Accepted))
                .count() as u64;
        self.outbox.exchanges.push((pair, exchange));
        let Some(ex) = self.sync.exchanges.get_mut(&pair) else {
            return;
        };
        ex.ingested(&done);
        ex.batches -= 1;
        ex.accepted += accepted;
        tracing::debug!(target: "agora::sync", %peer, %space, received = n, accepted, docs_left = ex.docs_left, "sync batch");
        if ex.phase == Phase::Draining && ex.batches == 0 {
            self.finish_exchange(pair, now);
        } else if accepted > 0 {
            tracing::info!(target: "agora::sync", %peer, %space, docs_left = ex.docs_left, received = ex.accepted, "catching up");
        }
    }

    /// Ends an exchange whose requests are over and whose batches are ingested: in sync if we
    /// now hold every head the peer showed, else incomplete.
    fn finish_exchange(&mut self, pair: Pair, now: Now) {
        self.sync.wakeup.set(None);
        let theirs = self
            .sync
            .exchanges
            .get_mut(&pair)
            .map(|ex| std::mem::take(&mut ex.theirs))
            .unwrap_or_default();
        let wants = self.wants(&pair.1, &theirs, &InFlight::new());
        let verdict = if wants.is_empty() {
            SyncState::InSync
        } else {
            SyncState::Incomplete {
                docs_left: wants.len(),
            }
        };
        self.end_exchange(pair, Some(verdict), now);
    }

    /// The documents of `theirs` in which the peer has changes we lack (counting what is in
    /// flight as held), each with our heads (what a `Fetch` carries), in the peer's order.
    fn wants(
        &mut self,
        space: &SpaceId,
        theirs: &[DocHeads],
        in_flight: &InFlight,
    ) -> Vec<DocHeads> {
        self.wants_marking(space, theirs, in_flight, &BTreeSet::new())
            .0
    }

    /// What the space's other exchanges have received and not yet ingested, added to `ours`,
    /// and the documents their outstanding requests ask for: so that two peers catching us up
    /// at once are not both asked for the same changes first.
    fn elsewhere<'a>(
        &self,
        pair: Pair,
        ours: &'a InFlight,
    ) -> (Cow<'a, InFlight>, BTreeSet<DocId>) {
        let mut all = Cow::Borrowed(ours);
        let mut asked = BTreeSet::new();
        for ((peer, space), ex) in &self.sync.exchanges {
            if *space != pair.1 || *peer == pair.0 {
                continue;
            }
            for (doc, changes) in &ex.in_flight {
                all.to_mut()
                    .entry(*doc)
                    .or_default()
                    .extend(changes.iter().cloned());
            }
            asked.extend(ex.asked.iter().copied());
        }
        (all, asked)
    }

    /// [`Self::wants`], and for each of the peer's documents whether some of its heads are not
    /// yet held (in flight or not). A document whose heads are all held stays so (a replica only
    /// grows), so an exchange keeps only the marked ones: each later batch then re-checks the
    /// documents still open rather than the whole space. Documents in `asked` (another
    /// exchange's outstanding request) come last: an answer is cut at its byte budget, so two
    /// exchanges of a space fetch different documents first, and none waits for another.
    fn wants_marking(
        &mut self,
        space: &SpaceId,
        theirs: &[DocHeads],
        in_flight: &InFlight,
        asked: &BTreeSet<DocId>,
    ) -> (Vec<DocHeads>, Vec<bool>) {
        let (mut wants, mut later) = (Vec::new(), Vec::new());
        let mut unheld = self.differing(space, theirs);
        for (d, open) in theirs.iter().zip(unheld.iter_mut()) {
            if !*open {
                continue;
            }
            let doc = DocId(d.doc);
            let flying = in_flight.get(&doc);
            let known = |h: &ChangeHash| flying.is_some_and(|v| v.iter().any(|(x, _)| x == h));
            let (mut lacking, mut missing) = (false, false);
            for h in d.heads.iter().map(|h| ChangeHash::from(*h)) {
                if !self.sync_holds(space, &doc, &h) {
                    missing = true;
                    if !known(&h) {
                        lacking = true;
                        break;
                    }
                }
            }
            *open = missing;
            if !lacking {
                continue;
            }
            // Our heads once what is in flight is applied: held heads and received changes that
            // nothing received depends on.
            let mut ours: BTreeSet<ChangeHash> = self.sync_heads(space, &doc).into_iter().collect();
            if let Some(v) = flying {
                ours.extend(v.iter().map(|(h, _)| *h));
                for (_, deps) in v {
                    for dep in deps {
                        ours.remove(dep);
                    }
                }
            }
            let heads: Vec<sync::Hash> = ours
                .into_iter()
                .take(MAX_HEADS_PER_DOC)
                .map(Into::into)
                .collect();
            let want = DocHeads { doc: d.doc, heads };
            if asked.contains(&doc) {
                later.push(want);
            } else {
                wants.push(want);
            }
        }
        wants.extend(later);
        (wants, unheld)
    }

    /// For each of the peer's documents, whether its heads may differ from ours (false only
    /// where they are exactly ours). One walk over both lists when the peer's is in id order, as
    /// a `Heads` answer is: most documents of a space are usually the same on both sides.
    fn differing(&mut self, space: &SpaceId, theirs: &[DocHeads]) -> Vec<bool> {
        let mut differ = vec![true; theirs.len()];
        if theirs.len() <= FEW_DOCS {
            // A few documents (what an exchange still waits for): look each one up.
            for (t, differ) in theirs.iter().zip(differ.iter_mut()) {
                *differ = !same_heads(t, &self.sync_heads(space, &DocId(t.doc)));
            }
            return differ;
        }
        if !theirs.is_sorted_by_key(|d| d.doc) {
            return differ;
        }
        let mut i = 0;
        self.visit_sync_heads(space, &mut |doc, ours| {
            while i < theirs.len() && theirs[i].doc < doc.0 {
                i += 1;
            }
            if let Some(t) = theirs.get(i).filter(|t| t.doc == doc.0) {
                differ[i] = !same_heads(t, ours);
            }
        });
        differ
    }

    /// Whether the peer lacks something we hold, given its heads (and that we lack nothing of
    /// it): some document of ours is missing from its list or has other heads.
    fn peer_lacks(&mut self, space: &SpaceId, theirs: &[DocHeads]) -> bool {
        let mut lacks = false;
        if theirs.is_sorted_by_key(|d| d.doc) {
            // A `Heads` answer lists documents in id order, as we visit ours: walk both.
            let mut rest = theirs.iter().peekable();
            self.visit_sync_heads(space, &mut |doc, ours| {
                while rest.next_if(|t| t.doc < doc.0).is_some() {}
                lacks |= !rest
                    .next_if(|t| t.doc == doc.0)
                    .is_some_and(|t| same_heads(t, ours));
            });
        } else {
            let theirs: BTreeMap<[u8; 16], &DocHeads> = theirs.iter().map(|d| (d.doc, d)).collect();
            self.visit_sync_heads(space, &mut |doc, ours| {
                lacks |= !theirs.get(&doc.0).is_some_and(|t| same_heads(t, ours));
            });
        }
        lacks
    }

    /// The sync digest of a space (cached until the space changes).
    pub fn digest(&mut self, space: &SpaceId) -> [u8; 32] {
        if let Some(d) = self.digests.get(space) {
            return *d;
        }
        let mut digest = sync::SpaceDigest::new();
        self.visit_sync_heads(space, &mut |doc, heads| digest.add(doc, heads));
        let digest = digest.finish();
        self.digests.insert(*space, digest);
        digest
    }

    // ----- the responder's side -----

    pub(super) fn answer_sync(
        &mut self,
        peer: PeerHandle,
        inbound: InboundId,
        request: SyncRequest,
        now: Now,
    ) {
        let response = self.sync_answer(peer, request, now);
        self.outbox.push(
            Output::Net(NetAction::SyncResponse {
                peer,
                inbound,
                response,
            }),
            When::Durable,
        );
    }

    /// Answers a peer's sync request. Only stored (so verified) contributions are sent.
    fn sync_answer(&mut self, peer: PeerHandle, request: SyncRequest, now: Now) -> SyncResponse {
        if self.is_banned(peer, now) {
            return SyncResponse::Refused {
                reason: "banned".into(),
            };
        }
        if let Err(reason) = request.check() {
            return SyncResponse::Refused { reason };
        }
        if let SyncRequest::Hello {
            space,
            key,
            nonce,
            ct,
            ..
        } = &request
        {
            return self.answer_hello(peer, *space, KeyId(*key), nonce, ct, now);
        }
        // A private space is named by its locator; it is answered only to a member's node, and
        // anyone else gets exactly what a space not held gets.
        let Some(space) = self
            .space_named(request.space().0)
            .filter(|s| self.syncs_with(peer, s))
        else {
            return SyncResponse::Refused {
                reason: "space not held here".into(),
            };
        };
        match request {
            SyncRequest::Summary { digest, .. } => {
                if self.digest(&space) == digest {
                    // The asker's digest equals ours: we know we are in sync too.
                    if let Some(p) = self.sync.pairs.get_mut(&(peer, space)) {
                        p.state = Some(SyncState::InSync);
                    }
                    SyncResponse::InSync
                } else {
                    SyncResponse::Heads {
                        docs: self.doc_heads(&space),
                    }
                }
            }
            SyncRequest::Fetch {
                wants, max_bytes, ..
            } => {
                let budget = (max_bytes as usize).min(MAX_RESPONSE_CONTRIBUTION_BYTES);
                let mut items = Vec::new();
                let mut used = 0usize;
                let mut more = false;
                'docs: for want in wants {
                    let doc = DocId(want.doc);
                    if !self.sync_has_doc(&space, &doc) {
                        continue;
                    }
                    // Heads the requester has that we know; changes beyond them are what it lacks.
                    let have: Vec<ChangeHash> = want
                        .heads
                        .iter()
                        .map(|h| ChangeHash::from(*h))
                        .filter(|h| self.sync_holds(&space, &doc, h))
                        .collect();
                    let stored = match self.sync_stored_after(
                        &space,
                        &doc,
                        &have,
                        budget.saturating_sub(used),
                    ) {
                        Ok(stored) => stored,
                        Err(e) => {
                            tracing::warn!(target: "agora::engine", %e, "store read failed while answering sync");
                            continue;
                        }
                    };
                    for bytes in stored {
                        if used + bytes.len() > budget && !items.is_empty() {
                            more = true;
                            break 'docs;
                        }
                        used += bytes.len();
                        items.push(serde_bytes::ByteBuf::from(bytes));
                    }
                }
                SyncResponse::Contributions { items, more }
            }
            // Answered above.
            SyncRequest::Hello { .. } => SyncResponse::Refused {
                reason: "space not held here".into(),
            },
        }
    }

    /// Every non-empty document's heads, in id order (what a `Heads` answer carries).
    fn doc_heads(&mut self, space: &SpaceId) -> Vec<DocHeads> {
        let mut out = Vec::new();
        self.visit_sync_heads(space, &mut |doc, heads| {
            if out.len() < MAX_DOCS_PER_SPACE {
                out.push(DocHeads {
                    doc: doc.0,
                    heads: heads.iter().map(|h| (*h).into()).collect(),
                });
            }
        });
        out
    }

    // ----- time -----

    pub(super) fn sync_tick(&mut self, now: Now) {
        self.sync.wakeup.set(None);
        for space in std::mem::take(&mut self.sync.rejoin) {
            // Pairs with peers that may no longer sync the space (removed, or this node left)
            // end; pairs with peers that now may start.
            let stale: Vec<Pair> = self
                .sync
                .pairs
                .keys()
                .filter(|(p, s)| *s == space && !self.may_open(*p, s))
                .copied()
                .collect();
            for pair in stale {
                self.sync.pairs.remove(&pair);
                self.drop_exchange(pair);
                self.sync.queue.retain(|p| *p != pair);
                self.sync.queued.remove(&pair);
            }
            self.sync_joined(space, now);
        }
        let expired: Vec<Pair> = self
            .sync
            .exchanges
            .iter()
            .filter(|(_, ex)| ex.outstanding.is_some_and(|(_, at)| at <= now.mono))
            .map(|(pair, _)| *pair)
            .collect();
        for pair in expired {
            self.sync.failures += 1;
            tracing::info!(target: "agora::sync", peer = %pair.0, space = %pair.1, "sync request timed out; will retry");
            self.end_exchange(pair, None, now);
        }
        let lifted: Vec<PeerHandle> = self
            .sync
            .banned
            .iter()
            .filter(|(_, until)| **until <= now.mono)
            .map(|(p, _)| *p)
            .collect();
        for peer in lifted {
            self.sync.banned.remove(&peer);
            self.outbox.net(NetAction::Unban { peer });
        }
        let due: Vec<Pair> = self
            .sync
            .pairs
            .iter()
            .filter(|(pair, p)| p.next_round <= now.mono && !self.sync.exchanges.contains_key(pair))
            .map(|(pair, _)| *pair)
            .collect();
        for pair in due {
            // While gossip is delivering to a space, a round would mostly compare states that
            // differ only by what is in flight: wait until it has been quiet for `sync_recheck`,
            // but never let a pair go more than two periods without a round.
            let quiet = self
                .sync
                .busy
                .get(&pair.1)
                .map_or(0, |at| at + self.config.sync_recheck);
            if let Some(p) = self.sync.pairs.get_mut(&pair) {
                let latest = p.last_round + 2 * self.config.sync_every;
                if quiet > now.mono && now.mono < latest {
                    p.next_round = quiet.min(latest);
                    continue;
                }
            }
            self.start_exchange(pair, now);
        }
        self.fetch_early(now);
    }

    pub(super) fn sync_next_wakeup(&self) -> Option<Millis> {
        if let Some(known) = self.sync.wakeup.get() {
            return known;
        }
        let mut next: Option<Millis> = None;
        let mut at = |t: Millis| next = Some(next.map_or(t, |n| n.min(t)));
        if !self.sync.rejoin.is_empty() {
            at(0);
        }
        for (pair, p) in &self.sync.pairs {
            if self.sync.exchanges.contains_key(pair) {
                continue;
            }
            for (_, _, due) in &p.early {
                at(*due);
            }
            if !self.sync.queued.contains(pair) {
                at(p.next_round);
            }
        }
        for ex in self.sync.exchanges.values() {
            if let Some((_, deadline)) = ex.outstanding {
                at(deadline);
            }
        }
        for until in self.sync.banned.values() {
            at(*until);
        }
        self.sync.wakeup.set(Some(next));
        next
    }

    /// Exchanges that ingested in a group whose flush failed: end them without a verdict, and
    /// take back a verdict that such an exchange recorded in the group (it was about data that
    /// is now lost); either way the pair is retried soon.
    pub(super) fn sync_abort(&mut self, exchanges: Vec<(Pair, ExchangeId)>, now: Now) {
        self.sync.wakeup.set(None);
        for (pair, generation) in exchanges {
            let running = self
                .sync
                .exchanges
                .get(&pair)
                .is_some_and(|ex| ex.generation == generation);
            if running {
                self.end_exchange(pair, None, now);
            } else if let Some(p) = self.sync.pairs.get_mut(&pair) {
                p.state = None;
                p.setbacks = p.setbacks.saturating_add(1);
                p.next_round = now.mono + self.config.sync_retry;
            }
        }
    }

    pub(super) fn sync_status(&self) -> Vec<PairStatus> {
        self.sync
            .pairs
            .iter()
            .filter_map(|((peer, space), p)| {
                let running = self
                    .sync
                    .exchanges
                    .get(&(*peer, *space))
                    .filter(|ex| !matches!(ex.phase, Phase::Summary | Phase::Hello(_)))
                    .map(|ex| SyncState::CatchingUp {
                        docs_left: ex.docs_left,
                        received: ex.accepted,
                    });
                running.or(p.state).map(|state| PairStatus {
                    peer: *peer,
                    space: *space,
                    state,
                })
            })
            .collect()
    }
}

/// Up to this many documents, [`Service::differing`] looks each one up instead of walking the
/// space.
const FEW_DOCS: usize = 256;

/// Whether the peer's heads of a document are exactly `ours` (both sorted).
fn same_heads(theirs: &DocHeads, ours: &[ChangeHash]) -> bool {
    theirs.heads.len() == ours.len() && theirs.heads.iter().zip(ours).all(|(a, b)| a.0 == b.0)
}

/// The documents of `theirs` whose mark is set.
fn keep_marked(theirs: Vec<DocHeads>, marks: &[bool]) -> Vec<DocHeads> {
    theirs
        .into_iter()
        .zip(marks)
        .filter_map(|(d, keep)| keep.then_some(d))
        .collect()
}
