//! A raw libp2p peer that plays the attacker: it speaks gossipsub with the node's settings
//! (strict signing, the same content-addressed message id) but publishes whatever bytes it is
//! given, and, when started with a [`Script`], answers the node's `/agora/sync/1` requests as the
//! script says (lies, oversize answers, no answer at all). Its swarm runs in its own task; what
//! it sees is recorded in a [`PeerState`].
//!
//! It accepts every gossip message it receives (as a peer without application validation
//! would), so it relays the node's traffic like any other member of the mesh.

use crate::node::{wait_for, wait_until, TestNode};
use agora_protocol::sync::{self, SyncRequest, SyncResponse};
use agora_protocol::{Identity, SpaceId};
use libp2p::futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageAuthenticity, TopicHash};
use libp2p::request_response::{self, ProtocolSupport, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{noise, tcp, yamux, Multiaddr, PeerId, StreamProtocol};
use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// The gossipsub heartbeat of a raw peer (the node's test setting).
pub const HEARTBEAT: Duration = Duration::from_millis(200);

type SyncCodec = request_response::cbor::codec::Codec<SyncRequest, SyncResponse>;

#[derive(NetworkBehaviour)]
struct Behaviour {
    gossipsub: gossipsub::Behaviour,
    sync: Toggle<request_response::Behaviour<SyncCodec>>,
}

/// What the peer does with one sync request.
#[derive(Debug)]
pub enum Answer {
    /// Answer at once.
    Respond(SyncResponse),
    /// Keep the request open and never answer it (until [`Peer::answer_held`]).
    Hold,
}

/// How the peer answers sync requests.
pub type Script = Box<dyn FnMut(&SyncRequest) -> Answer + Send>;

/// What the peer saw.
#[derive(Debug, Default)]
pub struct PeerState {
    /// Peers with an open connection.
    pub connected: HashSet<PeerId>,
    /// Connections established so far.
    pub connections: usize,
    /// (peer, topic) subscriptions seen.
    pub subscribed: HashSet<(PeerId, TopicHash)>,
    /// Every gossip message received: topic and payload.
    pub messages: Vec<(TopicHash, Vec<u8>)>,
    /// Every sync request received, with its arrival time.
    pub requests: Vec<(Instant, SyncRequest)>,
    /// Sync responses that reached the node (`ResponseSent`).
    pub sent: usize,
    /// Sync responses that did not (`InboundFailure`).
    pub failed: usize,
}

enum Cmd {
    Dial(Multiaddr, oneshot::Sender<Result<(), String>>),
    Subscribe(IdentTopic),
    Publish(
        TopicHash,
        Vec<u8>,
        oneshot::Sender<Result<(), gossipsub::PublishError>>,
    ),
    Script(Script),
    AnswerHeld(
        Duration,
        SyncResponse,
        SyncResponse,
        oneshot::Sender<(usize, usize)>,
    ),
}

/// The raw attacker peer.
pub struct Peer {
    /// Its identity (the libp2p key is the same ed25519 seed).
    pub identity: Identity,
    /// Its libp2p peer id.
    pub peer_id: PeerId,
    cmd: mpsc::Sender<Cmd>,
    state: Arc<Mutex<PeerState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Peer {
    /// A gossip-only peer (it does not speak the sync protocol). Call inside a tokio runtime.
    pub fn gossip(seed: [u8; 32]) -> Peer {
        Peer::start(seed, None)
    }

    /// A peer subscribed to `space` that answers sync requests with `script`. Call inside a
    /// tokio runtime.
    pub fn syncing(seed: [u8; 32], space: SpaceId, script: Script) -> Peer {
        let peer = Peer::start(seed, Some(script));
        peer.cmd
            .try_send(Cmd::Subscribe(IdentTopic::new(space.topic())))
            .expect("a new peer's command queue has room");
        peer
    }

    fn start(seed: [u8; 32], script: Option<Script>) -> Peer {
        // A raw peer keeps it simple: its libp2p key is its identity's own (a node derives a
        // transport key apart; nothing a node does depends on which).
        let identity = Identity::from_seed(seed);
        let mut secret = seed; // `ed25519_from_bytes` zeroes its argument.
        let keypair =
            libp2p::identity::Keypair::ed25519_from_bytes(&mut secret).expect("ed25519 seed");
        let config = agora_node::network::gossipsub_config(HEARTBEAT).expect("gossipsub config");
        let with_sync = script.is_some();
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .expect("tcp transport")
            .with_behaviour(|key| {
                let gossipsub =
                    gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), config)?;
                let sync = with_sync.then(|| {
                    request_response::Behaviour::with_codec(
                        SyncCodec::default()
                            .set_request_size_maximum(sync::MAX_REQUEST_BYTES)
                            .set_response_size_maximum(sync::MAX_RESPONSE_BYTES),
                        [(
                            StreamProtocol::new(sync::SYNC_PROTOCOL),
                            ProtocolSupport::Full,
                        )],
                        // Longer than the node's timeout: the peer never gives up on a held
                        // request first.
                        request_response::Config::default()
                            .with_request_timeout(Duration::from_secs(120)),
                    )
                });
                Ok(Behaviour {
                    gossipsub,
                    sync: sync.into(),
                })
            })
            .expect("peer behaviour")
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
            .build();
        let peer_id = *swarm.local_peer_id();
        let state = Arc::new(Mutex::new(PeerState::default()));
        let (cmd, mut rx) = mpsc::channel::<Cmd>(16);
        let st = state.clone();
        let mut script = script;
        let task = tokio::spawn(async move {
            let mut held: Vec<(Instant, ResponseChannel<SyncResponse>)> = Vec::new();
            loop {
                tokio::select! {
                    event = swarm.select_next_some() => match event {
                        SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                            let mut s = st.lock().unwrap();
                            s.connected.insert(peer_id);
                            s.connections += 1;
                        }
                        SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                            st.lock().unwrap().connected.remove(&peer_id);
                        }
                        SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(ev)) => match ev {
                            gossipsub::Event::Subscribed { peer_id, topic } => {
                                st.lock().unwrap().subscribed.insert((peer_id, topic));
                            }
                            gossipsub::Event::Unsubscribed { peer_id, topic } => {
                                st.lock().unwrap().subscribed.remove(&(peer_id, topic));
                            }
                            gossipsub::Event::Message { propagation_source, message_id, message } => {
                                st.lock().unwrap().messages.push((message.topic, message.data));
                                // No application validation: accept (and so relay) everything.
                                swarm.behaviour_mut().gossipsub.report_message_validation_result(
                                    &message_id,
                                    &propagation_source,
                                    MessageAcceptance::Accept,
                                );
                            }
                            _ => {}
                        },
                        SwarmEvent::Behaviour(BehaviourEvent::Sync(ev)) => match ev {
                            request_response::Event::Message {
                                message: request_response::Message::Request { request, channel, .. },
                                ..
                            } => {
                                let answer = script.as_mut().map_or(Answer::Hold, |s| s(&request));
                                st.lock().unwrap().requests.push((Instant::now(), request));
                                match answer {
                                    Answer::Respond(r) => {
                                        if let Some(sync) = swarm.behaviour_mut().sync.as_mut() {
                                            let _ = sync.send_response(channel, r);
                                        }
                                    }
                                    Answer::Hold => held.push((Instant::now(), channel)),
                                }
                            }
                            request_response::Event::ResponseSent { .. } => {
                                st.lock().unwrap().sent += 1;
                            }
                            request_response::Event::InboundFailure { .. } => {
                                st.lock().unwrap().failed += 1;
                            }
                            _ => {}
                        },
                        _ => {}
                    },
                    cmd = rx.recv() => match cmd {
                        Some(Cmd::Dial(addr, reply)) => {
                            let _ = reply.send(swarm.dial(addr).map_err(|e| e.to_string()));
                        }
                        Some(Cmd::Subscribe(topic)) => {
                            swarm.behaviour_mut().gossipsub.subscribe(&topic).expect("peer subscribes");
                        }
                        Some(Cmd::Publish(topic, bytes, reply)) => {
                            let r = swarm.behaviour_mut().gossipsub.publish(topic, bytes).map(|_| ());
                            let _ = reply.send(r);
                        }
                        Some(Cmd::Script(s)) => script = Some(s),
                        Some(Cmd::AnswerHeld(age, old, young, reply)) => {
                            let (mut n_old, mut n_young) = (0, 0);
                            for (since, channel) in held.drain(..) {
                                let r = if since.elapsed() > age {
                                    n_old += 1;
                                    old.clone()
                                } else {
                                    n_young += 1;
                                    young.clone()
                                };
                                if let Some(sync) = swarm.behaviour_mut().sync.as_mut() {
                                    let _ = sync.send_response(channel, r);
                                }
                            }
                            let _ = reply.send((n_old, n_young));
                        }
                        None => break,
                    },
                }
            }
        });
        Peer {
            identity,
            peer_id,
            cmd,
            state,
            task,
        }
    }

    async fn send(&self, cmd: Cmd) {
        self.cmd
            .send(cmd)
            .await
            .expect("the peer's task is running");
    }

    /// What the peer saw so far (do not hold the guard across an `await`).
    pub fn state(&self) -> MutexGuard<'_, PeerState> {
        self.state.lock().expect("not poisoned")
    }

    /// Dials `node`'s first listen address; panics if the dial cannot even start.
    pub async fn dial(&self, node: &TestNode) {
        let addr: Multiaddr = node.listen_addrs[0].parse().expect("multiaddr");
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Dial(addr, tx)).await;
        rx.await
            .expect("the peer replies")
            .unwrap_or_else(|e| panic!("the peer cannot dial {}: {e}", node.label()));
    }

    /// Subscribes to `space`'s topic.
    pub async fn subscribe(&self, space: SpaceId) {
        self.send(Cmd::Subscribe(IdentTopic::new(space.topic())))
            .await;
    }

    /// Dials `node` and waits (up to `deadline` each) until the peer sees `node` subscribed to
    /// `space` and `node` sees the peer subscribed to it, so that the node takes the peer's
    /// messages as space traffic (and may graft it into its mesh).
    pub async fn connect(&self, node: &TestNode, space: SpaceId, deadline: Duration) {
        let peer: PeerId = node.handle.peer_id().parse().expect("peer id");
        self.dial(node).await;
        let topic = IdentTopic::new(space.topic()).hash();
        let state = self.state.clone();
        wait_for(
            &format!("the peer to see {} subscribed to the space", node.label()),
            deadline,
            || {
                let state = state.clone();
                let topic = topic.clone();
                async move {
                    let s = state.lock().unwrap();
                    if s.subscribed.contains(&(peer, topic)) {
                        Ok(())
                    } else {
                        Err(format!("connected: {}", s.connected.contains(&peer)))
                    }
                }
            },
        )
        .await;
        let me = self.peer_id.to_string();
        let h = node.handle.clone();
        wait_until(
            &format!("{} to see the peer subscribed", node.label()),
            deadline,
            || {
                let (h, me) = (h.clone(), me.clone());
                async move {
                    h.net_status().await.is_ok_and(|s| {
                        s.peers
                            .iter()
                            .any(|p| p.peer_id == me && p.spaces.contains(&space))
                    })
                }
            },
        )
        .await;
    }

    /// Subscribes to a topic by its name (a private space's derived topic, say).
    pub async fn subscribe_topic(&self, topic: &str) {
        self.send(Cmd::Subscribe(IdentTopic::new(topic))).await;
    }

    /// Publishes `bytes` on a topic by its name; `Err` if gossipsub refuses (e.g. no peers, or
    /// the peer is graylisted and its queues are full).
    pub async fn publish_topic(
        &self,
        topic: &str,
        bytes: Vec<u8>,
    ) -> Result<(), gossipsub::PublishError> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Publish(IdentTopic::new(topic).hash(), bytes, tx))
            .await;
        rx.await.expect("the peer replies")
    }

    /// Publishes `bytes` on `space`'s topic; panics if gossipsub refuses (e.g. no peers).
    pub async fn publish(&self, space: SpaceId, bytes: Vec<u8>) {
        let (tx, rx) = oneshot::channel();
        let topic = IdentTopic::new(space.topic()).hash();
        self.send(Cmd::Publish(topic, bytes, tx)).await;
        rx.await
            .expect("the peer replies")
            .expect("the peer's publish succeeds");
    }

    /// Answers later sync requests with `script`.
    pub async fn set_script(&self, script: Script) {
        self.send(Cmd::Script(script)).await;
    }

    /// Answers every held request: those held for longer than `age` with `old`, the others
    /// with `young`. Returns how many of each.
    pub async fn answer_held(
        &self,
        age: Duration,
        old: SyncResponse,
        young: SyncResponse,
    ) -> (usize, usize) {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::AnswerHeld(age, old, young, tx)).await;
        rx.await.expect("the peer replies")
    }

    /// Every sync request received so far.
    pub fn requests(&self) -> Vec<(Instant, SyncRequest)> {
        self.state().requests.clone()
    }

    /// Whether the peer has an open connection to `node`.
    pub fn is_connected_to(&self, node: &TestNode) -> bool {
        let peer: PeerId = node.handle.peer_id().parse().expect("peer id");
        self.state().connected.contains(&peer)
    }

    /// Waits until the peer has received at least `n` sync requests; returns them.
    pub async fn wait_requests(&self, n: usize, deadline: Duration) -> Vec<(Instant, SyncRequest)> {
        let state = self.state.clone();
        wait_for(
            &format!("the peer to receive {n} sync requests"),
            deadline,
            || {
                let state = state.clone();
                async move {
                    let s = state.lock().unwrap();
                    if s.requests.len() >= n {
                        Ok(s.requests.clone())
                    } else {
                        Err(format!(
                            "{} requests so far; connected to {} peers",
                            s.requests.len(),
                            s.connected.len()
                        ))
                    }
                }
            },
        )
        .await
    }

    /// A handle on the state for wait closures that must own what they read.
    pub fn shared_state(&self) -> Arc<Mutex<PeerState>> {
        self.state.clone()
    }

    /// Stops the swarm task (bounded: 10 s).
    pub async fn stop(self) {
        drop(self.cmd);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}
