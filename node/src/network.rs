//! The network: the only module that knows libp2p.
//!
//! One task ([`EventLoop::run`]) owns the `Swarm` and serves, in a single `select!`:
//! swarm events, requests from the engine ([`NetRequest`]), commands from the API
//! ([`NetCommand`]) and a redial timer. Gossip messages go to the engine without waiting
//! (`try_send`); if the engine is saturated the message is ignored, never queued without bound.
//!
//! Transport: TCP + noise + yamux. Behaviours: gossipsub (one topic per space, application
//! validation, content-addressed message ids, small-mesh settings, peer scoring), identify, and
//! mDNS (optional).

use crate::engine::{EngineHandle, GossipIn, NetRequest, Outcome};
use agora_protocol::sync::{self, DocHeads, SyncRequest, SyncResponse};
use agora_protocol::{Contribution, Rejection, SpaceId};
use libp2p::futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageId, TopicHash};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{behaviour::toggle::Toggle, NetworkBehaviour, SwarmEvent};
use libp2p::{identify, mdns, noise, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Identify protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/agora/id/1.0.0";
/// Most contributions queued per topic while no peer is subscribed to it.
pub const MAX_QUEUED_PER_TOPIC: usize = 10_000;
/// Most gossip messages awaiting the engine's verdict.
pub const MAX_AWAITING_VERDICT: usize = 20_000;
/// Contribution bytes asked for in one sync `Fetch`.
pub const SYNC_FETCH_BYTES: u32 = 1024 * 1024;
/// Most sync exchanges running at once (inbound and outbound together).
pub const MAX_SYNC_TASKS: usize = 64;
/// An exchange with no step for this long is considered over (its peer may have gone quiet).
pub const SYNC_STALE: Duration = Duration::from_secs(60);
/// How long a peer that sent invalid contributions by sync stays disconnected.
pub const SYNC_BAN: Duration = Duration::from_secs(600);

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

/// A connected peer, as shown by `agora peers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// The network's view, for `status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetStatus {
    /// Our peer id.
    pub peer_id: String,
    /// Full listen multiaddrs ending in `/p2p/<peer id>`.
    pub listen_addrs: Vec<String>,
    /// Connected peers.
    pub peers: Vec<PeerInfo>,
    /// Contributions waiting for a subscriber, per space.
    pub queued: u64,
    /// Anti-entropy state per peer and space, as of the last exchange.
    pub sync: Vec<SyncInfo>,
    /// Outbound sync requests that failed (timeouts, refusals, oversize answers).
    pub sync_failures: u64,
    /// Peers currently banned for sending invalid data by sync.
    pub banned: usize,
}

/// Where sync with one peer in one space stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncInfo {
    /// The peer.
    pub peer_id: String,
    /// The space.
    pub space: SpaceId,
    /// In sync, or catching up (flattened: `"state": "in_sync" | "catching_up" | "peer_behind"`,
    /// with `docs_left` and `received` while catching up).
    #[serde(flatten)]
    pub state: SyncState,
}

/// Commands from the API side.
pub enum NetCommand {
    /// Dial an address.
    Dial(Multiaddr),
    /// Report status.
    Status(oneshot::Sender<NetStatus>),
}

/// Network settings (a slice of the node's `Config`).
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start and redial whenever disconnected.
    pub peers: Vec<Multiaddr>,
    /// Whether to run mDNS discovery.
    pub mdns: bool,
    /// How often gossipsub runs its heartbeat.
    pub heartbeat: Duration,
    /// How often unconnected explicit peers are redialled.
    pub redial_every: Duration,
    /// How often every connected peer is asked for a sync digest of each shared space.
    pub sync_every: Duration,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    gossipsub: gossipsub::Behaviour,
    sync: request_response::Behaviour<
        request_response::cbor::codec::Codec<SyncRequest, SyncResponse>,
    >,
    identify: identify::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
}

/// The content-addressed gossip message id: SHA-256 of the payload (the encoded contribution).
/// Specified in `docs/PROTOCOL.md`: every implementation must use the same function.
pub fn message_id(data: &[u8]) -> MessageId {
    MessageId::from(Contribution::wire_id(data).to_vec())
}

/// The gossipsub settings of a node (and of raw test peers that must speak like one): small-mesh
/// parameters, application validation, content-addressed message ids.
pub fn gossipsub_config(heartbeat: Duration) -> Result<gossipsub::Config, NetworkError> {
    gossipsub::ConfigBuilder::default()
        .mesh_n(3)
        .mesh_n_low(1)
        .mesh_n_high(6)
        .mesh_outbound_min(1)
        .heartbeat_initial_delay(Duration::from_millis(200))
        .heartbeat_interval(heartbeat)
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .max_transmit_size(64 * 1024)
        .message_id_fn(|m: &gossipsub::Message| message_id(&m.data))
        .build()
        .map_err(|e| NetworkError::Setup(e.to_string()))
}

fn topic_score_params() -> gossipsub::TopicScoreParams {
    gossipsub::TopicScoreParams {
        // Keep every reward small, so that one invalid contribution outweighs any amount of
        // good standing: the defaults (time in the mesh counted per millisecond, up to 3600)
        // let a peer that had been in the mesh for a few seconds forge with impunity.
        time_in_mesh_weight: 0.1,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 10.0,
        first_message_deliveries_weight: 0.5,
        first_message_deliveries_cap: 10.0,
        // Spaces are quiet most of the time: do not punish peers for not delivering.
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        // Invalid contributions (bad signature, forged actor) are what we punish.
        invalid_message_deliveries_weight: -100.0,
        invalid_message_deliveries_decay: 0.9,
        ..Default::default()
    }
}

fn peer_score_params() -> gossipsub::PeerScoreParams {
    gossipsub::PeerScoreParams {
        // A LAN office and every test share few IPs: colocation is normal here.
        ip_colocation_factor_weight: 0.0,
        ..Default::default()
    }
}

/// The task that owns the swarm.
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    engine: EngineHandle,
    from_engine: mpsc::Receiver<NetRequest>,
    commands: mpsc::Receiver<NetCommand>,
    config: NetConfig,
    topics: HashMap<TopicHash, SpaceId>,
    awaiting: HashMap<u64, (MessageId, PeerId, Option<SpaceId>)>,
    next_token: u64,
    queued: HashMap<TopicHash, VecDeque<Vec<u8>>>,
    connected: HashMap<PeerId, Vec<Multiaddr>>,
    /// Peers found by mDNS and not expired: redialled while unconnected.
    mdns_peers: HashMap<PeerId, Multiaddr>,
    /// Outbound sync requests in flight: what they were about.
    syncing: HashMap<OutboundRequestId, (PeerId, SpaceId, Option<Vec<DocHeads>>)>,
    /// Results of sync work done off the loop (engine queries), to act on in the loop.
    sync_tx: mpsc::Sender<SyncStep>,
    sync_rx: mpsc::Receiver<SyncStep>,
    sync_tasks: std::sync::Arc<tokio::sync::Semaphore>,
    /// Peers that sent invalid contributions by sync, until when.
    banned: HashMap<PeerId, std::time::Instant>,
    /// Outbound sync requests that failed (timeouts, refusals, oversize answers).
    sync_failures: u64,
    /// Exchanges running, by peer and space, with the time of their last step.
    in_flight: HashMap<(PeerId, SpaceId), std::time::Instant>,
    /// Per (peer, space): the last sync state, for status.
    sync_state: HashMap<(PeerId, SpaceId), SyncState>,
}

/// Where sync with one peer in one space stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum SyncState {
    /// Digests matched at the last exchange.
    InSync,
    /// We are fetching what we lack from this peer.
    CatchingUp {
        /// Documents in which the peer still has changes we lack.
        docs_left: usize,
        /// Contributions received from this peer in this catch-up so far.
        received: u64,
    },
    /// The peer lacks changes we hold (its own sync round fetches them).
    PeerBehind,
}

/// Progress of a catch-up, reported with the next fetch: (documents left, contributions just
/// received).
type Progress = Option<(usize, u64)>;

/// Work finished off the event loop that needs the swarm.
enum SyncStep {
    Request(
        PeerId,
        SpaceId,
        SyncRequest,
        Option<Vec<DocHeads>>,
        Progress,
    ),
    Respond(ResponseChannel<SyncResponse>, SyncResponse),
    Done(PeerId, SpaceId, SyncState),
    /// The exchange ended without a verdict on the state (the peer refused).
    End(PeerId, SpaceId),
    Ban(PeerId, &'static str),
}

/// Builds the swarm and starts listening. Returns the event loop to spawn.
pub fn new(
    seed: [u8; 32],
    config: NetConfig,
    engine: EngineHandle,
    from_engine: mpsc::Receiver<NetRequest>,
    commands: mpsc::Receiver<NetCommand>,
) -> Result<EventLoop, NetworkError> {
    // `ed25519_from_bytes` zeroes the buffer it is given: hand it a copy.
    let mut secret = seed;
    let keypair = libp2p::identity::Keypair::ed25519_from_bytes(&mut secret)
        .map_err(|e| NetworkError::Setup(e.to_string()))?;
    let gs_config = gossipsub_config(config.heartbeat)?;
    let use_mdns = config.mdns;
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| NetworkError::Setup(e.to_string()))?
        .with_behaviour(|key| {
            let mut gossipsub = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gs_config,
            )?;
            gossipsub.with_peer_score(
                peer_score_params(),
                gossipsub::PeerScoreThresholds::default(),
            )?;
            let identify = identify::Behaviour::new(identify::Config::new(
                IDENTIFY_PROTOCOL.into(),
                key.public(),
            ));
            let mdns = if use_mdns {
                Some(mdns::tokio::Behaviour::new(
                    mdns::Config::default(),
                    key.public().to_peer_id(),
                )?)
            } else {
                None
            };
            let codec = request_response::cbor::codec::Codec::default()
                .set_request_size_maximum(sync::MAX_REQUEST_BYTES)
                .set_response_size_maximum(sync::MAX_RESPONSE_BYTES);
            let sync = request_response::Behaviour::with_codec(
                codec,
                [(
                    StreamProtocol::new(sync::SYNC_PROTOCOL),
                    ProtocolSupport::Full,
                )],
                request_response::Config::default().with_request_timeout(Duration::from_secs(30)),
            );
            Ok(Behaviour {
                gossipsub,
                sync,
                identify,
                mdns: Toggle::from(mdns),
            })
        })
        .map_err(|e| NetworkError::Setup(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();
    for addr in &config.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| NetworkError::Listen {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?;
    }
    let (sync_tx, sync_rx) = mpsc::channel(256);
    Ok(EventLoop {
        swarm,
        engine,
        from_engine,
        commands,
        config,
        topics: HashMap::new(),
        awaiting: HashMap::new(),
        next_token: 0,
        queued: HashMap::new(),
        connected: HashMap::new(),
        mdns_peers: HashMap::new(),
        syncing: HashMap::new(),
        sync_tx,
        sync_rx,
        sync_tasks: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_SYNC_TASKS)),
        banned: HashMap::new(),
        sync_failures: 0,
        in_flight: HashMap::new(),
        sync_state: HashMap::new(),
    })
}

impl EventLoop {
    /// Our peer id.
    pub fn peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    /// Runs until `shutdown` fires or the engine closes its side.
    pub async fn run(mut self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        for addr in self.config.peers.clone() {
            self.dial(addr);
        }
        // First ticks one period from now: the explicit peers were just dialled above.
        let start = tokio::time::Instant::now();
        let mut redial =
            tokio::time::interval_at(start + self.config.redial_every, self.config.redial_every);
        redial.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resync =
            tokio::time::interval_at(start + self.config.sync_every, self.config.sync_every);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                req = self.from_engine.recv() => match req {
                    Some(req) => self.on_engine(req),
                    None => break,
                },
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                _ = redial.tick() => self.redial(),
                _ = resync.tick() => self.sync_all(),
                Some(step) = self.sync_rx.recv() => self.on_sync_step(step),
                _ = shutdown.changed() => break,
            }
        }
        tracing::debug!(target: "agora::network", "network loop stopped");
    }

    fn dial(&mut self, addr: Multiaddr) {
        // A fresh local port per dial: with the default (dialling from our listen port), two
        // nodes that learn of each other from the same mDNS answer and dial at the same moment
        // merge both attempts into one TCP connection where both sides initiate, and both
        // handshakes fail.
        let opts = libp2p::swarm::dial_opts::DialOpts::unknown_peer_id()
            .address(addr.clone())
            .allocate_new_port()
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(target: "agora::network", %addr, %e, "dial failed");
        }
    }

    fn redial(&mut self) {
        let lan: Vec<Multiaddr> = self
            .mdns_peers
            .iter()
            .filter(|(p, _)| !self.connected.contains_key(p))
            .map(|(p, a)| a.clone().with_p2p(*p).unwrap_or_else(|a| a))
            .collect();
        for addr in lan {
            self.dial(addr);
        }
        for addr in self.config.peers.clone() {
            let peer = addr.iter().find_map(|p| match p {
                libp2p::multiaddr::Protocol::P2p(id) => Some(id),
                _ => None,
            });
            let up = match peer {
                Some(id) => self.connected.contains_key(&id),
                None => self.connected.values().flatten().any(|a| a == &addr),
            };
            if !up {
                self.dial(addr);
            }
        }
    }

    fn on_engine(&mut self, req: NetRequest) {
        match req {
            NetRequest::Subscribe(space) => {
                let topic = IdentTopic::new(space.topic());
                let gs = &mut self.swarm.behaviour_mut().gossipsub;
                if let Err(e) = gs.subscribe(&topic) {
                    tracing::warn!(target: "agora::network", %space, %e, "subscribe failed");
                }
                let _ = gs.set_topic_params(topic.clone(), topic_score_params());
                let hash = topic.hash();
                // Peers already in the space will not announce it again: catch up from them now.
                let already: Vec<PeerId> = gs
                    .all_peers()
                    .filter(|(_, topics)| topics.contains(&&hash))
                    .map(|(p, _)| *p)
                    .collect();
                self.topics.insert(hash, space);
                for peer in already {
                    self.start_sync(peer, space);
                }
            }
            NetRequest::Publish { space, bytes } => {
                let topic = IdentTopic::new(space.topic()).hash();
                self.publish(topic, bytes);
            }
            NetRequest::Verdict { token, outcome } => {
                let Some((id, source, space)) = self.awaiting.remove(&token) else {
                    return;
                };
                // An early arrival: its dependencies are missing here, and the peer that sent it
                // most likely has them. Fetch them now rather than at the next periodic round.
                if let (Outcome::Pending, Some(space)) = (&outcome, space) {
                    self.start_sync(source, space);
                }
                let acceptance = match outcome {
                    Outcome::Accepted => MessageAcceptance::Accept,
                    // Duplicates and early arrivals are not the sender's fault; do not relay them
                    // again (duplicates) or yet (early), and do not penalise.
                    Outcome::Duplicate | Outcome::Pending => MessageAcceptance::Ignore,
                    Outcome::Rejected(ref r) => {
                        tracing::info!(target: "agora::network", peer = %source, reason = r.code(), "rejected gossip; penalising peer");
                        MessageAcceptance::Reject
                    }
                };
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&id, &source, acceptance);
            }
        }
    }

    fn publish(&mut self, topic: TopicHash, bytes: Vec<u8>) {
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(topic.clone(), bytes.clone())
        {
            Ok(_) | Err(gossipsub::PublishError::Duplicate) => {}
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic)
            | Err(gossipsub::PublishError::AllQueuesFull(_)) => {
                let q = self.queued.entry(topic).or_default();
                if q.len() >= MAX_QUEUED_PER_TOPIC {
                    // Oldest first out: it is stored, and anti-entropy will carry it.
                    q.pop_front();
                }
                q.push_back(bytes);
            }
            Err(e) => {
                tracing::warn!(target: "agora::network", %e, "publish failed; the contribution is stored and will reach peers by sync");
            }
        }
    }

    fn flush_queue(&mut self, topic: &TopicHash) {
        let Some(q) = self.queued.remove(topic) else {
            return;
        };
        tracing::debug!(target: "agora::network", n = q.len(), "publishing queued contributions");
        for bytes in q {
            self.publish(topic.clone(), bytes);
        }
    }

    fn on_command(&mut self, cmd: NetCommand) {
        match cmd {
            NetCommand::Dial(addr) => self.dial(addr),
            NetCommand::Status(reply) => {
                let me = *self.swarm.local_peer_id();
                let listen_addrs = self
                    .swarm
                    .listeners()
                    .map(|a| format!("{a}/p2p/{me}"))
                    .collect();
                let gs = &self.swarm.behaviour().gossipsub;
                let subs: HashMap<PeerId, Vec<SpaceId>> = gs
                    .all_peers()
                    .map(|(p, topics)| {
                        let spaces = topics
                            .iter()
                            .filter_map(|t| self.topics.get(t).copied())
                            .collect();
                        (*p, spaces)
                    })
                    .collect();
                let mut peers: Vec<PeerInfo> = self
                    .connected
                    .iter()
                    .map(|(p, addrs)| PeerInfo {
                        peer_id: p.to_string(),
                        addrs: addrs.iter().map(|a| a.to_string()).collect(),
                        spaces: subs.get(p).cloned().unwrap_or_default(),
                        score: gs.peer_score(p),
                    })
                    .collect();
                peers.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
                let _ = reply.send(NetStatus {
                    peer_id: me.to_string(),
                    listen_addrs,
                    peers,
                    queued: self.queued.values().map(|q| q.len() as u64).sum(),
                    sync: self
                        .sync_state
                        .iter()
                        .map(|((p, space), state)| SyncInfo {
                            peer_id: p.to_string(),
                            space: *space,
                            state: *state,
                        })
                        .collect(),
                    sync_failures: self.sync_failures,
                    banned: self.banned.len(),
                });
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                let me = *self.swarm.local_peer_id();
                tracing::info!(target: "agora::network", "listening on {address}/p2p/{me}");
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. } if self.is_banned(&peer_id) => {
                tracing::debug!(target: "agora::sync", peer = %peer_id, "refusing a banned peer");
                let _ = self.swarm.disconnect_peer_id(peer_id);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                tracing::info!(target: "agora::network", peer = %peer_id, addr = %endpoint.get_remote_address(), "connected");
                self.connected
                    .entry(peer_id)
                    .or_default()
                    .push(endpoint.get_remote_address().clone());
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                if num_established == 0 {
                    self.sync_state.retain(|(p, _), _| *p != peer_id);
                    tracing::info!(target: "agora::network", peer = %peer_id, "disconnected");
                    self.connected.remove(&peer_id);
                } else if let Some(addrs) = self.connected.get_mut(&peer_id) {
                    if let Some(i) = addrs
                        .iter()
                        .position(|a| a == endpoint.get_remote_address())
                    {
                        addrs.remove(i);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(ev)) => self.on_gossip(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Sync(ev)) => self.on_sync_event(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
                let mut seen = HashSet::new();
                for (peer, addr) in list {
                    // Remembered until mDNS says it expired, so `redial` retries failed dials.
                    self.mdns_peers.insert(peer, addr.clone());
                    if !self.connected.contains_key(&peer) && seen.insert(peer) {
                        tracing::info!(target: "agora::network", %peer, %addr, "discovered by mDNS");
                        self.dial(addr.with_p2p(peer).unwrap_or_else(|a| a));
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Expired(list))) => {
                for (peer, _) in list {
                    self.mdns_peers.remove(&peer);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                tracing::debug!(target: "agora::network", peer = %peer_id, agent = %info.agent_version, "identified");
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(target: "agora::network", ?peer_id, %error, "outgoing connection failed");
            }
            _ => {}
        }
    }

    fn on_gossip(&mut self, ev: gossipsub::Event) {
        match ev {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => {
                if self.awaiting.len() >= MAX_AWAITING_VERDICT {
                    self.swarm
                        .behaviour_mut()
                        .gossipsub
                        .report_message_validation_result(
                            &message_id,
                            &propagation_source,
                            MessageAcceptance::Ignore,
                        );
                    return;
                }
                let token = self.next_token;
                self.next_token += 1;
                let space = self.topics.get(&message.topic).copied();
                let g = GossipIn {
                    token,
                    topic: space,
                    bytes: message.data,
                };
                match self.engine.try_gossip(g) {
                    Ok(()) => {
                        self.awaiting
                            .insert(token, (message_id, propagation_source, space));
                    }
                    Err(_) => {
                        tracing::debug!(target: "agora::network", "engine busy; ignoring a gossip message");
                        self.swarm
                            .behaviour_mut()
                            .gossipsub
                            .report_message_validation_result(
                                &message_id,
                                &propagation_source,
                                MessageAcceptance::Ignore,
                            );
                    }
                }
            }
            gossipsub::Event::Subscribed { peer_id, topic } => {
                tracing::debug!(target: "agora::network", peer = %peer_id, %topic, "peer subscribed");
                self.flush_queue(&topic);
                // A peer that shares a space: reconcile what each side missed.
                if let Some(space) = self.topics.get(&topic).copied() {
                    self.start_sync(peer_id, space);
                }
            }
            _ => {}
        }
    }
}

impl EventLoop {
    /// Asks every connected peer for a digest of every space both follow.
    fn sync_all(&mut self) {
        let gs = &self.swarm.behaviour().gossipsub;
        let pairs: Vec<(PeerId, SpaceId)> = gs
            .all_peers()
            .flat_map(|(p, topics)| {
                topics
                    .into_iter()
                    .filter_map(|t| self.topics.get(t).map(|s| (*p, *s)))
                    .collect::<Vec<_>>()
            })
            .filter(|(p, _)| self.connected.contains_key(p))
            .collect();
        for (peer, space) in pairs {
            self.start_sync(peer, space);
        }
    }

    /// Runs `work` off the loop if a sync slot is free (bounded concurrency); otherwise skips it
    /// (the periodic round tries again).
    fn spawn_sync<F>(&self, work: F)
    where
        F: std::future::Future<Output = Option<SyncStep>> + Send + 'static,
    {
        let Ok(permit) = self.sync_tasks.clone().try_acquire_owned() else {
            tracing::debug!(target: "agora::sync", "sync busy; skipping a round");
            return;
        };
        let tx = self.sync_tx.clone();
        tokio::spawn(async move {
            if let Some(step) = work.await {
                let _ = tx.send(step).await;
            }
            drop(permit);
        });
    }

    /// Whether `peer` is banned; lifts an expired ban.
    fn is_banned(&mut self, peer: &PeerId) -> bool {
        match self.banned.get(peer) {
            Some(until) if *until > std::time::Instant::now() => true,
            Some(_) => {
                self.banned.remove(peer);
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .remove_blacklisted_peer(peer);
                false
            }
            None => false,
        }
    }

    fn start_sync(&mut self, peer: PeerId, space: SpaceId) {
        if self.is_banned(&peer) {
            return;
        }
        // One exchange per peer and space at a time: a catch-up that outlasts `sync_every`
        // must not be doubled by the next round (an exchange silent for a minute is over).
        let now = std::time::Instant::now();
        if self
            .in_flight
            .get(&(peer, space))
            .is_some_and(|t| now.duration_since(*t) < SYNC_STALE)
        {
            return;
        }
        self.in_flight.insert((peer, space), now);
        let engine = self.engine.clone();
        self.spawn_sync(async move {
            let digest = engine.call(move |e| e.sync_digest(space)).await.ok()??;
            let req = SyncRequest::Summary {
                v: 1,
                space: space.0,
                digest,
            };
            Some(SyncStep::Request(peer, space, req, None, None))
        });
    }

    fn on_sync_step(&mut self, step: SyncStep) {
        match step {
            SyncStep::Request(peer, space, req, theirs, progress) => {
                if !self.connected.contains_key(&peer) {
                    self.in_flight.remove(&(peer, space));
                    return;
                }
                self.in_flight
                    .insert((peer, space), std::time::Instant::now());
                if let Some((docs_left, just_received)) = progress {
                    let before = match self.sync_state.get(&(peer, space)) {
                        Some(SyncState::CatchingUp { received, .. }) => *received,
                        _ => 0,
                    };
                    let received = before + just_received;
                    tracing::info!(target: "agora::sync", %peer, %space, docs_left, received, "catching up");
                    self.sync_state.insert(
                        (peer, space),
                        SyncState::CatchingUp {
                            docs_left,
                            received,
                        },
                    );
                }
                let id = self.swarm.behaviour_mut().sync.send_request(&peer, req);
                self.syncing.insert(id, (peer, space, theirs));
            }
            SyncStep::Respond(channel, resp) => {
                let _ = self.swarm.behaviour_mut().sync.send_response(channel, resp);
            }
            SyncStep::End(peer, space) => {
                self.in_flight.remove(&(peer, space));
            }
            SyncStep::Done(peer, space, state) => {
                self.in_flight.remove(&(peer, space));
                self.sync_state.insert((peer, space), state);
            }
            SyncStep::Ban(peer, reason) => {
                self.in_flight.retain(|(p, _), _| *p != peer);
                tracing::warn!(target: "agora::sync", %peer, reason, "peer sent invalid contributions by sync; disconnecting it for a while");
                self.banned
                    .insert(peer, std::time::Instant::now() + SYNC_BAN);
                self.swarm.behaviour_mut().gossipsub.blacklist_peer(&peer);
                let _ = self.swarm.disconnect_peer_id(peer);
            }
        }
    }

    fn on_sync_event(&mut self, ev: request_response::Event<SyncRequest, SyncResponse>) {
        match ev {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let engine = self.engine.clone();
                let sent = self.sync_tasks.available_permits() > 0;
                if !sent {
                    let busy = SyncResponse::Refused {
                        reason: "busy; try again later".into(),
                    };
                    let _ = self.swarm.behaviour_mut().sync.send_response(channel, busy);
                    return;
                }
                tracing::debug!(target: "agora::sync", %peer, "sync request");
                self.spawn_sync(async move {
                    let resp = engine
                        .call(move |e| e.sync_answer(request))
                        .await
                        .unwrap_or(SyncResponse::Refused {
                            reason: "shutting down".into(),
                        });
                    Some(SyncStep::Respond(channel, resp))
                });
            }
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                let Some((_, space, theirs)) = self.syncing.remove(&request_id) else {
                    return;
                };
                let engine = self.engine.clone();
                self.spawn_sync(follow_up(engine, peer, space, response, theirs));
            }
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some((p, space, _)) = self.syncing.remove(&request_id) {
                    self.in_flight.remove(&(p, space));
                }
                self.sync_failures += 1;
                tracing::info!(target: "agora::sync", %peer, %error, "sync request failed (timeout, refused, or an answer over the size limit); will retry on the next round");
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(target: "agora::sync", %peer, %error, "inbound sync failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }
}

/// What to do after a sync response: nothing (in sync), fetch what we lack, or ingest what
/// arrived and ask for more.
async fn follow_up(
    engine: EngineHandle,
    peer: PeerId,
    space: SpaceId,
    response: SyncResponse,
    theirs: Option<Vec<DocHeads>>,
) -> Option<SyncStep> {
    let fetch = |wants: Vec<DocHeads>| SyncRequest::Fetch {
        v: 1,
        space: space.0,
        wants,
        max_bytes: SYNC_FETCH_BYTES,
    };
    match response {
        SyncResponse::InSync => Some(SyncStep::Done(peer, space, SyncState::InSync)),
        // An answer that does not fit the question (heads to a fetch, contributions to a
        // summary) is a protocol violation: end the exchange rather than loop on it.
        SyncResponse::Heads { .. } if theirs.is_some() => {
            Some(SyncStep::Ban(peer, "sync_protocol_violation"))
        }
        SyncResponse::Contributions { .. } if theirs.is_none() => {
            Some(SyncStep::Ban(peer, "sync_protocol_violation"))
        }
        SyncResponse::Heads { docs } => {
            let docs_for_engine = docs.clone();
            let wants = engine
                .call(move |e| e.sync_wants(space, &docs_for_engine))
                .await
                .ok()?;
            if wants.is_empty() {
                // They lack things we have; their own sync round will fetch them.
                return Some(SyncStep::Done(peer, space, SyncState::PeerBehind));
            }
            let progress = Some((wants.len(), 0));
            Some(SyncStep::Request(
                peer,
                space,
                fetch(wants),
                Some(docs),
                progress,
            ))
        }
        SyncResponse::Contributions { items, more } => {
            let n = items.len();
            let batch: Vec<(Vec<u8>, Option<SpaceId>)> = items
                .into_iter()
                .map(|b| (b.into_vec(), Some(space)))
                .collect();
            let outcomes = engine.call(move |e| e.ingest(batch)).await.ok()?;
            let invalid = outcomes.iter().find_map(|o| match o {
                Outcome::Rejected(r) if !matches!(r, Rejection::UnknownSpace) => Some(r.code()),
                _ => None,
            });
            if let Some(reason) = invalid {
                return Some(SyncStep::Ban(peer, reason));
            }
            let accepted = outcomes
                .iter()
                .filter(|o| matches!(o, Outcome::Accepted))
                .count();
            tracing::debug!(target: "agora::sync", %peer, %space, received = n, accepted, more, "sync batch");
            if accepted == 0 {
                return Some(SyncStep::Done(peer, space, SyncState::InSync));
            }
            // Resume from our new heads (nothing already received is sent again), both when the
            // responder had `more` and when our wants were cut at `MAX_WANTS` documents.
            let theirs = theirs?;
            let for_engine = theirs.clone();
            let wants = engine
                .call(move |e| e.sync_wants(space, &for_engine))
                .await
                .ok()?;
            if wants.is_empty() {
                return Some(SyncStep::Done(peer, space, SyncState::InSync));
            }
            let progress = Some((wants.len(), accepted as u64));
            Some(SyncStep::Request(
                peer,
                space,
                fetch(wants),
                Some(theirs),
                progress,
            ))
        }
        SyncResponse::Refused { reason } => {
            tracing::debug!(target: "agora::sync", %peer, %space, reason, "sync refused");
            Some(SyncStep::End(peer, space))
        }
    }
}
