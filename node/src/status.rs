//! The node's status as the API and the CLI show it (JSON through serde; clients deserialise
//! the same types).

pub use crate::service::{Counters, NodeEvent, SpaceInfo, SyncState};
use agora_protocol::{AuthorId, SpaceId};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// A connected peer, as shown by `agora peers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The peer's libp2p id.
    pub peer_id: String,
    /// Addresses of the open connections.
    pub addrs: Vec<String>,
    /// Spaces (that we follow too) the peer is subscribed to.
    pub spaces: Vec<SpaceId>,
    /// Its gossipsub score, if scoring is on.
    pub score: Option<f64>,
}

/// Where sync with one peer in one space stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncInfo {
    /// The peer.
    pub peer_id: String,
    /// The space.
    pub space: SpaceId,
    /// In sync, or catching up (flattened: `"state": "in_sync" | "catching_up" | "peer_behind"
    /// | "incomplete"`, with `docs_left` and `received` while catching up).
    #[serde(flatten)]
    pub state: SyncState,
}

/// The network's view, with sync state per peer and space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetStatus {
    /// Our peer id.
    pub peer_id: String,
    /// Full listen multiaddrs ending in `/p2p/<peer id>`.
    pub listen_addrs: Vec<String>,
    /// Connected peers.
    pub peers: Vec<PeerInfo>,
    /// Contributions waiting for a subscriber.
    pub queued: u64,
    /// Anti-entropy state per peer and space, as of the last exchange.
    pub sync: Vec<SyncInfo>,
    /// Outbound sync requests that failed (timeouts, refusals, transport failures).
    pub sync_failures: u64,
    /// Peers currently banned for sending invalid data by sync.
    pub banned: usize,
}

/// A node's status, as `agora status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Our author id.
    pub author: AuthorId,
    /// Our display name.
    pub name: Option<String>,
    /// Our libp2p peer id.
    pub peer_id: String,
    /// Full listen multiaddrs ending in `/p2p/<peer id>`.
    pub listen_addrs: Vec<String>,
    /// Connected peers.
    pub peers: Vec<PeerInfo>,
    /// The API address.
    pub api: Option<SocketAddr>,
    /// Joined spaces.
    pub spaces: usize,
    /// Stored contributions.
    pub contributions: u64,
    /// Ingest counters.
    pub counters: Counters,
    /// Contributions waiting for a subscriber.
    pub queued: u64,
    /// Anti-entropy state per peer and space.
    pub sync: Vec<SyncInfo>,
}
