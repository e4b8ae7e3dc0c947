//! The network: the only module that knows libp2p.
//!
//! One task ([`EventLoop::run`]) owns the `Swarm` and only translates: libp2p events become
//! service [`Input`](crate::service::Input)s for the engine (peers are named by opaque
//! [`PeerHandle`](crate::service::PeerHandle)s, never by `PeerId`), and the service's
//! [`NetAction`](crate::service::NetAction)s become swarm calls. It decides nothing about
//! sync, verdicts or bans; it keeps what only a transport can keep: gossip messages awaiting a
//! verdict, sync requests awaiting a response, contributions published before anyone listened.
//!
//! - `behaviour`: the swarm (TCP + noise + yamux; gossipsub, request-response for sync,
//!   identify, optional mDNS), gossipsub's settings and the sync codec (bytes from
//!   `agora_protocol::sync`).
//! - `peers`: `PeerId` ↔ `PeerHandle`, connections, mDNS discoveries.
//! - `event_loop`: the task.

mod behaviour;
mod event_loop;
mod peers;

pub use self::behaviour::{gossipsub_config, message_id, IDENTIFY_PROTOCOL};
pub use self::event_loop::EventLoop;

use crate::engine::EngineHandle;
use crate::service::{NetAction, PeerHandle};
use crate::status::PeerInfo;
use libp2p::Multiaddr;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Most contributions queued per topic while no peer is subscribed to it.
pub const MAX_QUEUED_PER_TOPIC: usize = 10_000;
/// Most gossip messages awaiting the engine's verdict.
pub const MAX_AWAITING_VERDICT: usize = 20_000;
/// Most peer and sync events held while the engine's queue is full (beyond this the oldest are
/// dropped; sync rounds repair what that loses).
pub const MAX_BACKLOG: usize = 16_384;
/// Most inbound sync requests awaiting the engine's response.
pub const MAX_INBOUND_SYNC: usize = 1_024;
/// Most inbound join requests awaiting the engine's response (beyond, refused as busy).
pub const MAX_INBOUND_JOIN: usize = 64;
/// Most listen addresses remembered per connected peer (from identify).
pub const MAX_LISTEN_ADDRS: usize = 8;

/// Errors of the network layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetworkError {
    /// A listen or peer address is not a valid multiaddr.
    #[error("invalid multiaddr {addr:?}: {reason} (example: /ip4/192.168.1.20/tcp/7400)")]
    BadAddr {
        /// The text given.
        addr: String,
        /// Why it failed.
        reason: String,
    },
    /// Listening failed.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// Building the swarm failed.
    #[error("network setup failed: {0}")]
    Setup(String),
    /// The network task is gone.
    #[error("the network task has stopped")]
    Stopped,
}

/// Parses a multiaddr with a clear error.
pub fn parse_addr(s: &str) -> Result<Multiaddr, NetworkError> {
    s.parse()
        .map_err(|e: libp2p::multiaddr::Error| NetworkError::BadAddr {
            addr: s.chars().take(200).collect(),
            reason: e.to_string(),
        })
}

/// The libp2p peer id that a transport key's 32-byte seed yields.
pub fn peer_id(seed: [u8; 32]) -> libp2p::PeerId {
    // `ed25519_from_bytes` zeroes the buffer it is given: it gets its own copy.
    let mut secret = seed;
    libp2p::identity::Keypair::ed25519_from_bytes(&mut secret)
        .map(|k| k.public().to_peer_id())
        .expect("an ed25519 seed is always 32 valid bytes")
}

/// Commands from the API side.
pub enum NetCommand {
    /// Dial an address.
    Dial(Multiaddr),
    /// Report the network's view.
    Status(oneshot::Sender<NetView>),
    /// Ask the member at `addr` (which must end in `/p2p/<peer id>`) to admit us.
    Join {
        /// Where.
        addr: Multiaddr,
        /// The request.
        request: Box<agora_protocol::join::JoinRequest>,
        /// Its answer, or why there is none.
        reply: oneshot::Sender<Result<agora_protocol::join::JoinResponse, String>>,
    },
}

/// The network's view, for status.
#[derive(Debug, Clone)]
pub struct NetView {
    /// Our peer id.
    pub peer_id: String,
    /// Full listen multiaddrs ending in `/p2p/<peer id>`.
    pub listen_addrs: Vec<String>,
    /// Connected peers.
    pub peers: Vec<PeerInfo>,
    /// Contributions waiting for a subscriber.
    pub queued: u64,
    /// The peer id behind each handle the service may mention.
    pub names: BTreeMap<PeerHandle, String>,
    /// Connected peers and the addresses they listen on (with `/p2p/`), for tickets.
    pub dialable: Vec<(PeerHandle, Vec<String>)>,
}

/// Network settings (a slice of the node's `Config`).
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Addresses to listen on.
    pub listen: Vec<String>,
    /// Peers to dial at start and redial whenever disconnected.
    pub peers: Vec<String>,
    /// Whether to run mDNS discovery.
    pub mdns: bool,
    /// How often gossipsub runs its heartbeat.
    pub heartbeat: Duration,
    /// How often unconnected explicit peers are redialled.
    pub redial_every: Duration,
    /// The service's sync request timeout (the transport's is a little longer, so that the
    /// service decides).
    pub sync_timeout: Duration,
}

/// Builds the swarm and starts listening. Returns the event loop to spawn.
pub fn new(
    seed: [u8; 32],
    config: NetConfig,
    engine: EngineHandle,
    actions: mpsc::Receiver<NetAction>,
    commands: mpsc::Receiver<NetCommand>,
) -> Result<EventLoop, NetworkError> {
    EventLoop::new(seed, config, engine, actions, commands)
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_protocol::Identity;

    /// A node's peer id is its transport key's (PROTOCOL 14.9), whose bytes are what the spec
    /// says a transport id is: the identity multihash of the protobuf-encoded ed25519 public key
    /// of `keys::transport_seed`. It holds nothing of the author key.
    #[test]
    fn a_peer_id_is_the_transport_key_and_names_no_author() {
        let identity = Identity::from_seed([7; 32]);
        let seed = agora_protocol::keys::transport_seed(&identity);
        let id = peer_id(seed).to_bytes();
        let public = Identity::from_seed(seed).author();
        assert_eq!(
            id,
            [&[0x00, 0x24, 0x08, 0x01, 0x12, 0x20][..], &public.0].concat()
        );
        assert!(!id.windows(32).any(|w| w == identity.author().0));
        assert_eq!(
            crate::peer_id_of(&identity),
            peer_id(seed).to_string(),
            "what the CLI prints is the peer id the node runs with"
        );
    }
}
