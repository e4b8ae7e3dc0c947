//! The service: every decision a node makes, as a state machine without I/O.
//!
//! [`Service::handle`] takes one [`Input`] (a local command, gossip received, a peer event, a
//! sync request or response, a timer tick) and the time, and queues what should happen: store
//! [`Write`]s, then [`Output`]s (network actions, replies, events). The caller (the engine
//! thread in a node, the simulator in tests) applies the writes ([`Service::take_writes`]),
//! flushes once per group of inputs, and only then releases the outputs
//! ([`Service::commit`]), so that nothing vouches for a write that is not durable. Time and
//! randomness come in from outside (the `now` argument, a seeded RNG), so a run replays
//! exactly. The service never sees a libp2p type: a peer is a [`PeerHandle`].
//!
//! Layout, by concern:
//! - [`replica`]: the documents held (the [`Replica`] trait; [`AutomergeReplica`] is the
//!   node's) and snapshots;
//! - `ingest`: untrusted contributions in, verified and applied in batches;
//! - `checked`: a sync answer read and verified where it arrived ([`Checked`]);
//! - [`pending`]: early arrivals waiting for their dependencies;
//! - `edits`: local edits, spaces and the display name;
//! - `views`: reads;
//! - [`sync`]: the anti-entropy scheduler, the per-exchange state machine, the responder, bans;
//! - `outbox`: what a group asks for, and what survives a failed flush.

mod checked;
mod edits;
mod ingest;
mod outbox;
pub mod pending;
mod private;
pub mod replica;
pub mod sync;
mod views;

#[cfg(test)]
mod tests;

pub use self::checked::{Checked, Verifier};
pub use self::pending::{PendingLimits, PendingSet};
use self::private::PrivateGossip;
pub use self::private::{Admitted, Invitation, MemberInfo, NodeKeys};
pub use self::replica::{AutomergeReplica, Edit, Item, Keyring, Replica, SpaceKeys};
pub use self::sync::{PairStatus, SyncState};

use self::outbox::{Outbox, When};
use crate::store::{SpaceRecord, Storage, Store, StoreError, Write};
use agora_protocol::automerge::ChangeHash;
use agora_protocol::idea::{Idea, IdeaDraft, SchemaError, Status, Vote};
use agora_protocol::membership::Role;
use agora_protocol::sync::{SyncRequest, SyncResponse};
use agora_protocol::{AuthorId, DocId, Identity, Rejection, SpaceId};
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Monotonic time in milliseconds (since the node or the simulation started).
pub type Millis = u64;

/// The time, as the service is told it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic milliseconds: what timers are measured in.
    pub mono: Millis,
    /// Milliseconds since the Unix epoch: what is written into documents.
    pub wall_ms: i64,
}

/// The random number generator of a service: ChaCha12 (unpredictable, so space ids and salts
/// cannot be guessed; reproducible from its seed).
pub type ServiceRng = rand::rngs::ChaCha12Rng;

/// An opaque name for a connected peer, given by the network layer (which alone knows what it
/// stands for). A peer keeps its handle while it is connected or banned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PeerHandle(pub u64);

impl std::fmt::Display for PeerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "peer#{}", self.0)
    }
}

/// Names a local command, so its reply finds its way back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// Names one outbound sync request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExchangeId(pub u64);

/// Names one inbound sync request awaiting our response (given by the network layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InboundId(pub u64);

/// What a person (through the API or the CLI) or a program asks of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// Create a space and join it.
    CreateSpace {
        /// Its name.
        name: String,
    },
    /// Join a space by id.
    JoinSpace {
        /// The space.
        space: SpaceId,
    },
    /// List joined spaces.
    Spaces,
    /// Post an idea.
    CreateIdea {
        /// The space.
        space: SpaceId,
        /// What was typed.
        draft: IdeaDraft,
    },
    /// List a space's ideas.
    ListIdeas {
        /// The space.
        space: SpaceId,
    },
    /// Show one idea.
    ShowIdea {
        /// The idea.
        idea: DocId,
    },
    /// Comment on an idea.
    Comment {
        /// The idea.
        idea: DocId,
        /// The text.
        text: String,
    },
    /// Vote on an idea.
    Vote {
        /// The idea.
        idea: DocId,
        /// The vote.
        vote: Vote,
    },
    /// Change an idea's status.
    SetStatus {
        /// The idea.
        idea: DocId,
        /// The status.
        status: Status,
    },
    /// Set our display name (published to every joined space).
    SetName {
        /// The name.
        name: String,
    },
    /// The service's status.
    Status,
    /// Heads of every document in a space.
    Heads {
        /// The space.
        space: SpaceId,
    },
    /// Whether the store holds a contribution with exactly these bytes (tests).
    StoreContains {
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Snapshot every document with a tail (before shutdown).
    Checkpoint,
    /// Create a private space owned by this node (not reachable from the API yet).
    CreatePrivateSpace {
        /// Its name.
        name: String,
    },
    /// The members of a private space.
    Members {
        /// The space.
        space: SpaceId,
    },
    /// Invite to a private space.
    Invite {
        /// The space.
        space: SpaceId,
        /// The role the newcomer gets.
        role: Role,
        /// Expiry, Unix seconds.
        expires: u64,
        /// Admissions allowed.
        uses: u64,
    },
    /// Remove a member of a private space.
    RemoveMember {
        /// The space.
        space: SpaceId,
        /// The member.
        member: AuthorId,
    },
    /// Change a member's role in a private space.
    SetRole {
        /// The space.
        space: SpaceId,
        /// The member.
        member: AuthorId,
        /// The new role.
        role: Role,
    },
    /// Leave a private space (this node's membership ends; it stops following the space).
    LeaveSpace {
        /// The space.
        space: SpaceId,
    },
    /// Withdraw an invitation to a private space (an admin's): its ticket admits no one from
    /// then on.
    RevokeInvite {
        /// The space.
        space: SpaceId,
        /// The invitation operation's id (what its ticket names).
        invite: agora_protocol::membership::OpId,
    },
    /// Rename a private space.
    RenameSpace {
        /// The space.
        space: SpaceId,
        /// The new name.
        name: String,
    },
    /// A newcomer redeemed a ticket with this member: check it, admit the newcomer, and answer
    /// with the space's operations.
    AdmitRedeem {
        /// The space.
        space: SpaceId,
        /// The newcomer's redeem.
        redeem: Box<agora_protocol::membership::build::Redeem>,
    },
    /// Sign a redeem of an invitation with this node's keys (the newcomer's half of a join).
    MakeRedeem {
        /// The space.
        space: SpaceId,
        /// The invitation.
        invite: agora_protocol::membership::OpId,
        /// The ticket secret.
        secret: [u8; 32],
    },
    /// Join a private space with the operations a member answered a redeem with.
    JoinPrivate {
        /// The space.
        space: SpaceId,
        /// Its operations, encoded.
        ops: Vec<Vec<u8>>,
    },
}

impl Command {
    /// Whether the command changes anything (its reply then waits for the flush).
    pub fn writes(&self) -> bool {
        matches!(
            self,
            Command::CreateSpace { .. }
                | Command::JoinSpace { .. }
                | Command::CreateIdea { .. }
                | Command::Comment { .. }
                | Command::Vote { .. }
                | Command::SetStatus { .. }
                | Command::SetName { .. }
                | Command::Checkpoint
                | Command::CreatePrivateSpace { .. }
                | Command::Invite { .. }
                | Command::RemoveMember { .. }
                | Command::SetRole { .. }
                | Command::RenameSpace { .. }
                | Command::RevokeInvite { .. }
                | Command::LeaveSpace { .. }
                | Command::AdmitRedeem { .. }
                | Command::JoinPrivate { .. }
        )
    }
}

/// The answer to a [`Command`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Reply {
    /// Done (nothing to return).
    Done,
    /// A space was created.
    Space(SpaceId),
    /// Joined spaces.
    Spaces(Vec<SpaceInfo>),
    /// An idea was created.
    Created(DocId),
    /// Ideas.
    Ideas(Vec<Idea>),
    /// One idea.
    Idea(Box<Idea>),
    /// Status.
    Status(Box<ServiceStatus>),
    /// Heads.
    Heads(BTreeMap<DocId, Vec<ChangeHash>>),
    /// Whether the bytes are stored.
    Contains(bool),
    /// A private space's members.
    Members(Vec<MemberInfo>),
    /// An invitation was made.
    Invitation(Invitation),
    /// A newcomer was admitted.
    Admitted(Admitted),
    /// A signed redeem.
    Redeem(Box<agora_protocol::membership::build::Redeem>),
}

/// A gossip message handed over by the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GossipIn {
    /// The network's token for the verdict.
    pub token: u64,
    /// The peer that forwarded it.
    pub from: PeerHandle,
    /// Whether that peer published it (the message's signed source is the sender): a message
    /// over its author's bound sent by its publisher is the publisher's fault (PROTOCOL 14.12).
    pub first_hop: bool,
    /// The space of the topic it arrived on (`None`: not a space topic).
    pub topic: Option<SpaceId>,
    /// The payload.
    pub bytes: Vec<u8>,
}

/// Contributions received by sync, to be ingested after the request that follows them left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncBatch {
    /// The peer that sent them.
    pub peer: PeerHandle,
    /// The space of the exchange.
    pub space: SpaceId,
    /// The exchange (its first request's id).
    pub exchange: ExchangeId,
    /// Encoded contributions.
    pub items: Vec<Vec<u8>>,
    /// The same contributions decoded and verified where they arrived, if they were.
    pub checked: Option<Checked>,
}

/// Why an outbound sync request got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SyncFailure {
    /// No answer in time.
    #[error("no answer in time")]
    Timeout,
    /// The answer was longer than a response may be.
    #[error("the answer was over the size limit")]
    TooLarge,
    /// The answer did not decode.
    #[error("the answer did not decode: {0}")]
    Malformed(String),
    /// The connection failed, or the peer does not speak the protocol.
    #[error("{0}")]
    Unavailable(String),
}

/// One input to the service.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Input {
    /// A local command.
    Command {
        /// Names the reply.
        id: RequestId,
        /// The command.
        command: Command,
    },
    /// Gossip messages, in arrival order.
    Gossip(Vec<GossipIn>),
    /// A peer connected.
    PeerConnected {
        /// The peer.
        peer: PeerHandle,
    },
    /// A connected peer's transport id (the bytes of its libp2p peer id, which noise
    /// authenticated): what the hellos of private spaces' sync bind (PROTOCOL 14.9).
    PeerIdentified {
        /// The peer.
        peer: PeerHandle,
        /// Its transport id.
        id: Vec<u8>,
    },
    /// A peer's last connection closed.
    PeerDisconnected {
        /// The peer.
        peer: PeerHandle,
    },
    /// A peer follows a space's topic.
    PeerSubscribed {
        /// The peer.
        peer: PeerHandle,
        /// The space.
        space: SpaceId,
    },
    /// A peer stopped following a space's topic.
    PeerUnsubscribed {
        /// The peer.
        peer: PeerHandle,
        /// The space.
        space: SpaceId,
    },
    /// A peer's sync request.
    SyncRequest {
        /// The peer.
        peer: PeerHandle,
        /// Names our response.
        inbound: InboundId,
        /// The request.
        request: SyncRequest,
    },
    /// The answer to one of our sync requests, or why there is none.
    SyncResponse {
        /// The peer.
        peer: PeerHandle,
        /// Our request.
        exchange: ExchangeId,
        /// The answer.
        result: Result<SyncResponse, SyncFailure>,
        /// The answer's contributions, decoded and verified where they arrived (optional).
        checked: Option<Checked>,
    },
    /// A sync batch handed out earlier as [`Output::Ingest`].
    Ingest(SyncBatch),
    /// A newcomer's request to join a private space with a ticket (`/agora/join/2`).
    JoinRequest {
        /// The peer that asks.
        peer: PeerHandle,
        /// Names our response.
        inbound: InboundId,
        /// The request.
        request: Box<agora_protocol::join::JoinRequest>,
    },
    /// Time passed: run what is due (see [`Service::next_wakeup`]).
    Tick,
}

/// What the service asks of the network.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NetAction {
    /// Follow a space's topic.
    Subscribe(SpaceId),
    /// Follow exactly these topics for a private space (the current epoch's first), and no
    /// other topic of it.
    SubscribeTopics {
        /// The space.
        space: SpaceId,
        /// Its topics.
        topics: Vec<String>,
    },
    /// Publish bytes on a topic (a private space's).
    PublishTo {
        /// The topic.
        topic: String,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Publish an encoded contribution on a space's topic.
    Publish {
        /// The space.
        space: SpaceId,
        /// Canonical contribution bytes.
        bytes: Vec<u8>,
    },
    /// The verdict on a gossip message.
    Verdict {
        /// The network's token.
        token: u64,
        /// Relay, drop, or drop and penalise.
        verdict: Verdict,
    },
    /// Send a sync request.
    SyncRequest {
        /// To whom.
        peer: PeerHandle,
        /// Names the request (its answer comes back with it).
        exchange: ExchangeId,
        /// The request.
        request: SyncRequest,
    },
    /// Answer a newcomer's join request.
    JoinResponse {
        /// Which request.
        inbound: InboundId,
        /// The answer.
        response: agora_protocol::join::JoinResponse,
    },
    /// Answer a peer's sync request.
    SyncResponse {
        /// To whom.
        peer: PeerHandle,
        /// Which request.
        inbound: InboundId,
        /// The answer.
        response: SyncResponse,
    },
    /// Disconnect a peer and refuse it (and its gossip) for `duration` ms.
    Ban {
        /// The peer.
        peer: PeerHandle,
        /// Why (a stable code).
        reason: &'static str,
        /// How long, in ms.
        duration: Millis,
    },
    /// A ban ended.
    Unban {
        /// The peer.
        peer: PeerHandle,
    },
    /// Close a peer's connections (a banned peer came back).
    Disconnect {
        /// The peer.
        peer: PeerHandle,
    },
}

/// The verdict on a gossip message, as gossipsub takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Valid and stored: relay it.
    Accept,
    /// Duplicate, early, or not vouched for: do not relay, do not penalise.
    Ignore,
    /// Invalid: do not relay, penalise the sender.
    Reject,
}

/// What the service asks of the outside world.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Output {
    /// A network action.
    Net(NetAction),
    /// The answer to a command.
    Reply {
        /// The command.
        id: RequestId,
        /// Its answer.
        result: Result<Reply, ServiceError>,
    },
    /// An event for API subscribers.
    Event(NodeEvent),
    /// Feed this batch back as [`Input::Ingest`] after the outputs before it have left.
    Ingest(SyncBatch),
}

/// What happened to one incoming contribution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Verified, applied and stored (durable once the group is flushed).
    Accepted,
    /// Already held; nothing to do.
    Duplicate,
    /// Verified but its dependencies are missing; held in memory until they arrive.
    Pending,
    /// Refused.
    Rejected(Rejection),
}

/// A live event for API subscribers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NodeEvent {
    /// An idea was created or changed (locally or by a peer).
    IdeaChanged {
        /// Space.
        space: SpaceId,
        /// Idea.
        idea: DocId,
    },
    /// A space was created or joined.
    SpaceJoined {
        /// Space.
        space: SpaceId,
    },
    /// A contribution was refused.
    Rejected {
        /// The reason code.
        reason: String,
    },
}

/// Counters for status and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Contributions accepted from the network.
    pub accepted: u64,
    /// Duplicates seen.
    pub duplicates: u64,
    /// Contributions currently waiting for dependencies.
    pub pending: u64,
    /// Early contributions dropped from the pending set (full, or waited too long); sync
    /// fetches them again.
    #[serde(default)]
    pub evicted: u64,
    /// Rejections by reason code.
    pub rejected: BTreeMap<String, u64>,
}

impl Counters {
    /// Total rejections.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

/// A space as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceInfo {
    /// Id.
    pub id: SpaceId,
    /// Name, if known.
    pub name: Option<String>,
    /// Number of ideas held.
    pub ideas: usize,
    /// When this node joined.
    pub joined_at: i64,
    /// Whether it is a private space (members only, sealed content).
    #[serde(default)]
    pub private: bool,
    /// This node's role in a private space (`owner`, `admin`, `member`, `reader`); `None` in an
    /// open space, or once this node left or was removed.
    #[serde(default)]
    pub role: Option<String>,
}

/// The service's part of a node's status.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceStatus {
    /// Our display name.
    pub name: Option<String>,
    /// Joined spaces.
    pub spaces: usize,
    /// Stored contributions.
    pub contributions: u64,
    /// Ingest counters.
    pub counters: Counters,
    /// Sync state per peer and space.
    pub sync: Vec<PairStatus>,
    /// Outbound sync requests that failed.
    pub sync_failures: u64,
    /// Peers banned now.
    pub banned: usize,
}

/// Errors a caller of the service can see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The store failed; the write was not acknowledged.
    #[error("the store failed, so the change was not saved: {0}")]
    Store(String),
    /// The input broke a schema rule.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// No such space on this node.
    #[error("space {0} is not joined on this node: join it first with `agora space join {0}`")]
    UnknownSpace(SpaceId),
    /// No such idea on this node.
    #[error("no idea {0} on this node: check the id with `agora idea list --space SPACE_ID`")]
    UnknownIdea(DocId),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    Stopped,
    /// A membership action was refused (role, unknown member, missing key).
    #[error("{0}")]
    Membership(String),
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        ServiceError::Store(e.to_string())
    }
}

/// The service's settings (see `docs/CONFIG.md` for the node settings they come from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Every pair (peer, space) gets a sync round at least this often (ms).
    pub sync_every: Millis,
    /// A sync request without an answer for this long has failed (ms).
    pub sync_timeout: Millis,
    /// After a round found the peer behind, look again this soon, once; and a gossip message
    /// that arrived early is fetched from its sender this long after, if gossip did not bring
    /// what it waits for by then (ms).
    pub sync_recheck: Millis,
    /// After a round that failed or left documents missing, retry this soon, doubling up to
    /// `sync_every` while it keeps happening (ms).
    pub sync_retry: Millis,
    /// Most outbound exchanges at once; more wait in a queue.
    pub max_exchanges: usize,
    /// Contribution bytes asked for in one `Fetch`.
    pub fetch_bytes: u32,
    /// How long a peer that sent invalid data by sync stays banned (ms).
    pub ban_for: Millis,
    /// Bounds of the pending set.
    pub pending: PendingLimits,
    /// Whether a large batch of contributions is verified on a second thread while this one
    /// applies what was verified before (the outcomes are the same either way).
    pub verify_in_parallel: bool,
    /// How many contributions one author may bring into one space by gossip (PROTOCOL 14.12).
    pub author_rate: AuthorRate,
    /// How many membership operations one author may bring into one private space by gossip
    /// (PROTOCOL 14.12; each costs every member a resolution of the membership).
    pub op_rate: AuthorRate,
    /// This node's transport id (the bytes of its libp2p peer id), which the hellos of private
    /// spaces' sync bind (PROTOCOL 14.9).
    pub transport_id: Vec<u8>,
}

/// A token bucket per (space, author) over the contributions gossip brings: `burst` at once,
/// then `per_second` (PROTOCOL 14.12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthorRate {
    /// Tokens the bucket holds when full.
    pub burst: u32,
    /// Tokens added per second.
    pub per_second: u32,
}

impl Default for AuthorRate {
    fn default() -> Self {
        AuthorRate {
            burst: 600,
            per_second: 20,
        }
    }
}

impl AuthorRate {
    /// The default bound on membership operations: 100 at once, then one a second.
    pub const OPS: AuthorRate = AuthorRate {
        burst: 100,
        per_second: 1,
    };

    /// Takes a token from `key`'s bucket in `buckets` at `now`: whether there was one. Keeps
    /// at most [`MAX_BUCKETS`] buckets (full ones are forgotten first: a full bucket is what a
    /// new one starts as).
    fn take<K: Ord>(self, buckets: &mut BTreeMap<K, (f64, Millis)>, key: K, now: Millis) -> bool {
        let burst = f64::from(self.burst);
        let per_ms = f64::from(self.per_second) / 1000.0;
        if buckets.len() >= MAX_BUCKETS {
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_sub(*at) as f64 * per_ms < burst
            });
        }
        let (tokens, at) = buckets.entry(key).or_insert((burst, now));
        *tokens = (*tokens + now.saturating_sub(*at) as f64 * per_ms).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Gives back a token taken from `key`'s bucket.
    fn refund<K: Ord>(self, buckets: &mut BTreeMap<K, (f64, Millis)>, key: &K) {
        if let Some((tokens, _)) = buckets.get_mut(key) {
            *tokens = (*tokens + 1.0).min(f64::from(self.burst));
        }
    }
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            sync_every: 30_000,
            sync_timeout: 30_000,
            sync_recheck: 1_500,
            sync_retry: 5_000,
            max_exchanges: 64,
            fetch_bytes: 1024 * 1024,
            ban_for: 600_000,
            pending: PendingLimits::default(),
            verify_in_parallel: true,
            author_rate: AuthorRate::default(),
            op_rate: AuthorRate::OPS,
            transport_id: Vec::new(),
        }
    }
}

/// The node's decisions. See the module docs.
pub struct Service<R: Replica> {
    replica: R,
    config: ServiceConfig,
    rng: ServiceRng,
    spaces: BTreeMap<SpaceId, SpaceRecord>,
    display_name: Option<String>,
    pending: PendingSet<R::Item>,
    sync: sync::Scheduler,
    /// Space digests, until the space changes.
    digests: BTreeMap<SpaceId, [u8; 32]>,
    outbox: Outbox,
    counters: Counters,
    /// The keys of private spaces (`None`: this service holds no identity, as in the
    /// simulation).
    keys: Option<NodeKeys>,
    /// Private spaces, by id (never in `spaces`: nothing of them goes on a version 1 topic).
    private: BTreeMap<SpaceId, agora_protocol::membership::PrivateSpace>,
    /// Their records.
    private_records: BTreeMap<SpaceId, SpaceRecord>,
    /// Per (space, author): the tokens left for gossip and when they were last counted.
    buckets: BTreeMap<(SpaceId, AuthorId), (f64, Millis)>,
    /// The same for membership operations.
    op_buckets: BTreeMap<(SpaceId, AuthorId), (f64, Millis)>,
    /// Private spaces whose upkeep (a rotation, a share of missing wraps) this node may owe
    /// (see `Service::upkeep_tick`): when it was first seen due and how long this node waits
    /// from then, its turn among the admins; `None` until the next tick looks.
    upkeep: BTreeMap<SpaceId, Option<(Millis, Millis)>>,
    /// When this node last rotated a private space by itself.
    rotated: BTreeMap<SpaceId, Millis>,
    /// Private spaces whose operations were added and not resolved yet, with the topics they
    /// followed before (see `Service::settle_ops`).
    unsettled: BTreeMap<SpaceId, Vec<String>>,
}

/// Most (space, author) buckets kept; beyond, full ones are forgotten (a full bucket is what a
/// new one starts as).
const MAX_BUCKETS: usize = 100_000;

impl<S: Storage> Service<AutomergeReplica<S>> {
    /// Opens a node's service on its store: spaces, display name and every document.
    pub fn open(
        store: Store<S>,
        identity: Identity,
        config: ServiceConfig,
        seed: [u8; 32],
    ) -> Result<Self, StoreError> {
        let mut rng = ServiceRng::from_seed(seed);
        let records: BTreeMap<SpaceId, SpaceRecord> = store.spaces()?.into_iter().collect();
        let name = store.display_name()?;
        let keys = NodeKeys::new(identity.clone());
        let private = private::load(&store, &records, &keys)?;
        let mut keyring = Keyring::default();
        for (space, view) in &private {
            keyring.set(*space, private::keys_of(view));
        }
        let replica = AutomergeReplica::open(
            store,
            identity,
            rng.random(),
            records.keys().copied(),
            keyring,
        )?;
        let mut service = Service::with_rng(replica, records, name, config, rng);
        service.keys = Some(keys);
        for (space, view) in &private {
            let topics: Vec<String> = view.topics().into_iter().take(2).collect();
            service.outbox.net(NetAction::SubscribeTopics {
                space: *space,
                topics,
            });
        }
        service.private = private;
        // What the membership whites out is not stored as such: apply the rule again.
        let spaces: Vec<SpaceId> = service.private.keys().copied().collect();
        for space in spaces {
            service.restand_space(space);
            // A rotation or share may have been due when the node stopped.
            service.upkeep.insert(space, None);
        }
        Ok(service)
    }
}

impl<R: Replica> Service<R> {
    /// A service over `replica`, which holds `spaces` (as recorded in the store), drawing its
    /// randomness from `seed`.
    pub fn new(
        replica: R,
        spaces: BTreeMap<SpaceId, SpaceRecord>,
        display_name: Option<String>,
        config: ServiceConfig,
        seed: [u8; 32],
    ) -> Self {
        Service::with_rng(
            replica,
            spaces,
            display_name,
            config,
            ServiceRng::from_seed(seed),
        )
    }

    fn with_rng(
        mut replica: R,
        records: BTreeMap<SpaceId, SpaceRecord>,
        display_name: Option<String>,
        config: ServiceConfig,
        rng: ServiceRng,
    ) -> Self {
        let (private_records, spaces): (BTreeMap<_, _>, BTreeMap<_, _>) =
            records.into_iter().partition(|(_, r)| r.private);
        let mut outbox = Outbox::default();
        for space in spaces.keys() {
            replica.add_space(*space);
            outbox.net(NetAction::Subscribe(*space));
        }
        Service {
            replica,
            pending: PendingSet::new(config.pending),
            config,
            rng,
            spaces,
            display_name,
            sync: sync::Scheduler::default(),
            digests: BTreeMap::new(),
            outbox,
            counters: Counters::default(),
            keys: None,
            private: BTreeMap::new(),
            private_records,
            buckets: BTreeMap::new(),
            op_buckets: BTreeMap::new(),
            upkeep: BTreeMap::new(),
            rotated: BTreeMap::new(),
            unsettled: BTreeMap::new(),
        }
    }

    /// The replica (read-only uses: tests, the simulation's checks).
    pub fn replica(&self) -> &R {
        &self.replica
    }

    /// The replica, to query it (`docs`, `heads`, `changes_after` need `&mut`).
    pub fn replica_mut(&mut self) -> &mut R {
        &mut self.replica
    }

    /// Gives the replica back (a simulated restart keeps it, as a node keeps its store).
    pub fn into_replica(self) -> R {
        self.replica
    }

    /// The spaces held and the display name (what a restart reads back from the store).
    pub fn durable_state(&self) -> (BTreeMap<SpaceId, SpaceRecord>, Option<String>) {
        let mut records = self.spaces.clone();
        records.extend(self.private_records.clone());
        (records, self.display_name.clone())
    }

    /// The settings.
    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// Handles one input. Writes and outputs accumulate until [`Service::take_writes`] and
    /// [`Service::commit`].
    pub fn handle(&mut self, input: Input, now: Now) {
        match input {
            Input::Command { id, command } => {
                let when = if command.writes() {
                    When::Durable
                } else {
                    When::Now
                };
                let result = self.command(command, now);
                self.outbox.push(Output::Reply { id, result }, when);
            }
            Input::Gossip(batch) => self.gossip(batch, now),
            Input::PeerConnected { peer } => self.peer_connected(peer, now),
            Input::PeerIdentified { peer, id } => self.peer_identified(peer, id),
            Input::PeerDisconnected { peer } => self.peer_disconnected(peer, now),
            Input::PeerSubscribed { peer, space } => self.peer_subscribed(peer, space, now),
            Input::PeerUnsubscribed { peer, space } => self.peer_unsubscribed(peer, space, now),
            Input::SyncRequest {
                peer,
                inbound,
                request,
            } => self.answer_sync(peer, inbound, request, now),
            Input::SyncResponse {
                peer,
                exchange,
                result,
                checked,
            } => self.on_sync_response(peer, exchange, result, checked, now),
            Input::Ingest(batch) => self.on_sync_batch(batch, now),
            Input::JoinRequest {
                peer,
                inbound,
                request,
            } => self.answer_join(peer, inbound, *request, now),
            Input::Tick => self.tick(now),
        }
        // Operations taken in by this input are resolved by now (each input's handler settles
        // them before it reads the membership again; this is the backstop).
        self.settle_ops();
    }

    /// The store writes queued since the last call, in order. The caller applies them before it
    /// hands in the next input (the service reads the store).
    pub fn take_writes(&mut self) -> Vec<Write> {
        std::mem::take(&mut self.outbox.writes)
    }

    /// Ends a group of inputs once its writes were applied and flushed (`Ok`), or failed
    /// (`Err`: memory is made to agree with the store again, and nothing that vouches for the
    /// lost writes leaves). Returns the outputs to carry out, in order.
    pub fn commit(&mut self, flushed: Result<(), StoreError>, now: Now) -> Vec<Output> {
        let Err(e) = flushed else {
            return self.outbox.release(None);
        };
        tracing::error!(target: "agora::engine", %e, "could not persist; the group's changes are dropped");
        self.outbox.writes.clear();
        let mut touched = std::mem::take(&mut self.outbox.touched);
        touched.sort();
        touched.dedup();
        for (space, _) in &touched {
            self.digests.remove(space);
        }
        if let Err(e) = self.replica.revert(&touched) {
            tracing::error!(target: "agora::engine", %e, "reloading documents after a failed write failed");
        }
        for space in std::mem::take(&mut self.outbox.joined) {
            self.spaces.remove(&space);
        }
        // Private spaces back to what the store holds.
        for (space, (view, record)) in std::mem::take(&mut self.outbox.private_before) {
            match view {
                Some(view) => {
                    self.replica.set_keys(space, private::keys_of(&view));
                    self.private.insert(space, view)
                }
                None => self.private.remove(&space),
            };
            match record {
                Some(record) => self.private_records.insert(space, record),
                None => self.private_records.remove(&space),
            };
        }
        // Reloaded documents show everything again until the rule is applied to them.
        let private: std::collections::BTreeSet<SpaceId> = touched
            .iter()
            .map(|(space, _)| *space)
            .filter(|space| self.private.contains_key(space))
            .collect();
        for space in private {
            self.restand_space(space);
        }
        if let Some(name) = self.outbox.previous_name.take() {
            self.display_name = name;
        }
        self.counters.accepted = self.counters.accepted.saturating_sub(self.outbox.accepted);
        let exchanges = std::mem::take(&mut self.outbox.exchanges);
        self.sync_abort(exchanges, now);
        self.outbox.release(Some(&e.to_string()))
    }

    /// When the service next needs a [`Input::Tick`] (`None`: only inputs wake it).
    pub fn next_wakeup(&self) -> Option<Millis> {
        [
            self.sync_next_wakeup(),
            self.pending.next_expiry(),
            self.upkeep_next_wakeup(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn tick(&mut self, now: Now) {
        let expired = self.pending.expire(now.mono);
        self.counters.evicted += expired as u64;
        self.sync_tick(now);
        self.upkeep_tick(now);
    }

    fn gossip(&mut self, batch: Vec<GossipIn>, now: Now) {
        // A private space's topic carries sealed operations and contributions: each is opened
        // here to route it and read its author (for the bound below), the operations taken in,
        // the contributions ingested with the rest (the replica opens those again as it decodes
        // them: one more AEAD pass, small beside the signature check). An open space's
        // contribution names its author in the clear.
        let mut contributions = Vec::with_capacity(batch.len());
        for g in batch {
            match g.topic.filter(|s| self.private.contains_key(s)) {
                Some(space) => match self.private_gossip(space, &g.bytes, now) {
                    PrivateGossip::Contribution(author) => contributions.push((g, Some(author))),
                    PrivateGossip::Done(verdict, when) => self.outbox.push(
                        Output::Net(NetAction::Verdict {
                            token: g.token,
                            verdict,
                        }),
                        when,
                    ),
                },
                None => {
                    let author = agora_protocol::Contribution::decode(&g.bytes)
                        .ok()
                        .map(|c| c.author);
                    contributions.push((g, author));
                }
            }
        }
        // The group's operations are resolved once, before its contributions are checked
        // against the membership.
        self.settle_ops();
        // Each author's share of a space's gossip is bounded (PROTOCOL 14.12): what is over it
        // is neither stored nor relayed, and only its author's own node is penalised for it. A
        // token is taken on arrival and given back unless the contribution is accepted (new
        // and valid), so that junk or replays naming an author cannot use up its share.
        // Each message's author is read once, for the bound and for the blame below.
        let mut charged: Vec<Option<(SpaceId, AuthorId)>> = Vec::with_capacity(contributions.len());
        let mut limited = Vec::new();
        let mut kept = Vec::with_capacity(contributions.len());
        let mut authors = Vec::with_capacity(contributions.len());
        for (g, author) in contributions {
            match self.take_token(g.topic, author, now) {
                Ok(key) => {
                    charged.push(key);
                    authors.push(author);
                    kept.push(g);
                }
                Err(()) => limited.push(g),
            }
        }
        let batch = kept;
        for g in limited {
            let own = g.first_hop;
            *self
                .counters
                .rejected
                .entry("rate_limited".to_string())
                .or_default() += 1;
            let verdict = if own {
                Verdict::Reject
            } else {
                Verdict::Ignore
            };
            self.outbox.push(
                Output::Net(NetAction::Verdict {
                    token: g.token,
                    verdict,
                }),
                When::Now,
            );
        }
        let meta: Vec<(u64, PeerHandle, Option<SpaceId>)> =
            batch.iter().map(|g| (g.token, g.from, g.topic)).collect();
        // Sealed contributions whose author the private space never knew: junk from a stranger.
        let strangers: Vec<bool> = batch
            .iter()
            .zip(&authors)
            .map(|(g, author)| self.sent_by_stranger(g, *author))
            .collect();
        // Contributions that come from the node that published them.
        let own: Vec<bool> = batch.iter().map(|g| g.first_hop).collect();
        let mut early = Vec::new();
        let outcomes = self.ingest(
            batch.into_iter().map(|g| (g.bytes, g.topic)).collect(),
            None,
            now,
            &mut early,
        );
        for (slot, doc, hash) in early {
            let (_, from, topic) = meta[slot];
            if let Some(space) = topic {
                self.sync_early_arrival(from, space, doc, hash, now);
            }
        }
        for (outcome, key) in outcomes.iter().zip(&charged) {
            if let (Some(key), false) = (key, matches!(outcome, Outcome::Accepted)) {
                self.config.author_rate.refund(&mut self.buckets, key);
            }
        }
        for ((((token, from, topic), outcome), stranger), own) in
            meta.into_iter().zip(outcomes).zip(strangers).zip(own)
        {
            if let (Outcome::Accepted, Some(space)) = (&outcome, topic) {
                self.sync_busy(space, now);
            }
            let (verdict, when) = match &outcome {
                Outcome::Accepted => (Verdict::Accept, When::Durable),
                // Duplicates and early arrivals are not the sender's fault: do not relay them
                // again (duplicates) or yet (early), and do not penalise.
                Outcome::Duplicate | Outcome::Pending => (Verdict::Ignore, When::Now),
                // Sealed under an epoch whose key has not arrived yet (its rotation is on its
                // way): not the sender's fault either, unless its author never was a member.
                Outcome::Rejected(Rejection::UnknownKey) if !stranger => {
                    (Verdict::Ignore, When::Now)
                }
                // The author is or was a member whose right this node does not see (an
                // admission or a role change may still be on its way, or a concurrent removal
                // voided it): refused, without blame for a relay (its own node is to blame).
                Outcome::Rejected(Rejection::NotWriter) if !stranger && !own => {
                    (Verdict::Ignore, When::Now)
                }
                // A removed author's late change, relayed by someone who took it in before it
                // heard of the removal: refused, without blame for the relay.
                Outcome::Rejected(Rejection::LateWrite) => (Verdict::Ignore, When::Now),
                Outcome::Rejected(r) => {
                    tracing::info!(target: "agora::network", %from, reason = r.code(), "rejected gossip; penalising peer");
                    (Verdict::Reject, When::Now)
                }
            };
            self.outbox
                .push(Output::Net(NetAction::Verdict { token, verdict }), when);
        }
    }

    /// Whether a gossip message on a private space's topic is a sealed contribution by an author
    /// (`author`, as it names it) the space never knew (not a member now or before).
    fn sent_by_stranger(&self, g: &GossipIn, author: Option<AuthorId>) -> bool {
        let Some(view) = g.topic.and_then(|s| self.private.get(&s)) else {
            return false;
        };
        replica::is_sealed(&g.bytes) && author.is_some_and(|a| !view.knows(&a))
    }

    /// Takes a token from the bucket of a gossip message's (space, author), if the message
    /// names both: `Ok` with the bucket it came from (`None`: no bucket applies), `Err` when
    /// the bucket is empty.
    fn take_token(
        &mut self,
        topic: Option<SpaceId>,
        author: Option<AuthorId>,
        now: Now,
    ) -> Result<Option<(SpaceId, AuthorId)>, ()> {
        let (Some(space), Some(author)) = (topic, author) else {
            return Ok(None);
        };
        if self
            .config
            .author_rate
            .take(&mut self.buckets, (space, author), now.mono)
        {
            Ok(Some((space, author)))
        } else {
            Err(())
        }
    }

    fn command(&mut self, command: Command, now: Now) -> Result<Reply, ServiceError> {
        Ok(match command {
            Command::CreateSpace { name } => Reply::Space(self.create_space(&name, now)?),
            Command::JoinSpace { space } => {
                self.join_space(space, None, now)?;
                Reply::Done
            }
            Command::Spaces => Reply::Spaces(self.list_spaces()),
            Command::CreateIdea { space, draft } => {
                Reply::Created(self.create_idea(space, draft, now)?)
            }
            Command::ListIdeas { space } => Reply::Ideas(self.list_ideas(space)?),
            Command::ShowIdea { idea } => Reply::Idea(Box::new(self.show_idea(idea)?)),
            Command::Comment { idea, text } => {
                self.comment(idea, text, now)?;
                Reply::Done
            }
            Command::Vote { idea, vote } => {
                self.vote(idea, vote, now)?;
                Reply::Done
            }
            Command::SetStatus { idea, status } => {
                self.set_status(idea, status, now)?;
                Reply::Done
            }
            Command::SetName { name } => {
                self.set_display_name(&name, now)?;
                Reply::Done
            }
            Command::Status => Reply::Status(Box::new(self.status())),
            Command::Heads { space } => Reply::Heads(self.heads(&space)),
            Command::StoreContains { bytes } => {
                Reply::Contains(self.replica.contains_bytes(&bytes))
            }
            Command::Checkpoint => {
                self.replica.checkpoint(&mut self.outbox.writes);
                Reply::Done
            }
            Command::CreatePrivateSpace { name } => {
                Reply::Space(self.create_private_space(&name, now)?)
            }
            Command::Members { space } => Reply::Members(self.members(&space)?),
            Command::Invite {
                space,
                role,
                expires,
                uses,
            } => Reply::Invitation(self.invite(space, role, expires, uses)?),
            Command::RemoveMember { space, member } => {
                self.remove_member(space, member)?;
                Reply::Done
            }
            Command::SetRole {
                space,
                member,
                role,
            } => {
                self.set_role(space, member, role)?;
                Reply::Done
            }
            Command::RenameSpace { space, name } => {
                self.rename_space(space, &name)?;
                Reply::Done
            }
            Command::RevokeInvite { space, invite } => {
                self.revoke_invite(space, invite)?;
                Reply::Done
            }
            Command::LeaveSpace { space } => {
                self.leave_space(space)?;
                Reply::Done
            }
            Command::AdmitRedeem { space, redeem } => {
                Reply::Admitted(self.admit_redeem(&redeem, space, now)?)
            }
            Command::MakeRedeem {
                space,
                invite,
                secret,
            } => {
                let keys = self
                    .keys
                    .as_ref()
                    .ok_or(ServiceError::Membership("this node has no keys".into()))?;
                Reply::Redeem(Box::new(agora_protocol::membership::build::redeem(
                    &space,
                    invite,
                    &Identity::from_seed(secret),
                    &keys.identity,
                    &keys.device,
                )))
            }
            Command::JoinPrivate { space, ops } => {
                self.join_private(space, &ops, now)?;
                Reply::Done
            }
        })
    }
}
