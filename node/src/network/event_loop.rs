//! The task that owns the swarm and translates between libp2p and the service.

use super::behaviour::{build_swarm, decode_error, topic_score_params, Behaviour, BehaviourEvent};
use super::peers::Peers;
use super::{
    parse_addr, NetCommand, NetConfig, NetView, NetworkError, MAX_AWAITING_VERDICT, MAX_BACKLOG,
    MAX_INBOUND_JOIN, MAX_INBOUND_SYNC, MAX_LISTEN_ADDRS, MAX_QUEUED_PER_TOPIC,
};
use crate::engine::{EngineHandle, EngineInput};
use crate::service::{
    Checked, ExchangeId, GossipIn, InboundId, Input, NetAction, PeerHandle, SyncFailure, Verdict,
};
use crate::status::PeerInfo;
use agora_protocol::join::{JoinRequest, JoinResponse};
use agora_protocol::sync::{SyncDecodeError, SyncResponse};
use agora_protocol::SpaceId;
use libp2p::futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageId, TopicHash};
use libp2p::request_response::{self, OutboundFailure, OutboundRequestId, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{identify, mdns, Multiaddr, PeerId, Swarm};
use std::collections::{HashMap, HashSet, VecDeque};
use tokio::sync::{mpsc, oneshot};

/// Where the answer to one of our join requests goes.
type JoinReply = oneshot::Sender<Result<JoinResponse, String>>;

/// The task that owns the swarm.
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    engine: EngineHandle,
    actions: mpsc::Receiver<NetAction>,
    commands: mpsc::Receiver<NetCommand>,
    config: NetConfig,
    peers: Peers,
    /// Topics we follow, by hash.
    topics: HashMap<TopicHash, SpaceId>,
    /// Gossip messages awaiting the service's verdict, by token.
    awaiting: HashMap<u64, (MessageId, PeerId)>,
    next_token: u64,
    /// Contributions published while no peer followed their topic.
    queued: HashMap<TopicHash, VecDeque<Vec<u8>>>,
    /// Inbound sync requests awaiting the service's response.
    inbound: HashMap<InboundId, (PeerId, ResponseChannel<SyncResponse>)>,
    next_inbound: u64,
    /// Our outbound sync requests: which peer and which of the service's requests.
    outbound: HashMap<OutboundRequestId, (PeerHandle, ExchangeId)>,
    /// Inbound join requests awaiting the service's response.
    join_inbound: HashMap<InboundId, ResponseChannel<JoinResponse>>,
    /// Our join requests awaiting an answer.
    join_outbound: HashMap<OutboundRequestId, JoinReply>,
    /// Peer and sync events that did not fit into the engine's queue, in order.
    backlog: VecDeque<Input>,
    /// Sync answers whose contributions are being verified off this task (see `Checked`), and
    /// where they come back when done.
    checked_tx: mpsc::UnboundedSender<Input>,
    checked_rx: mpsc::UnboundedReceiver<Input>,
}

/// Sync answers with at least this many contributions are verified as they arrive, on a
/// blocking thread, so that the work overlaps what the engine is doing meanwhile (usually
/// ingesting the batch before). Smaller ones are not worth a thread.
const CHECK_ON_ARRIVAL_FROM: usize = 256;

impl EventLoop {
    pub(super) fn new(
        seed: [u8; 32],
        config: NetConfig,
        engine: EngineHandle,
        actions: mpsc::Receiver<NetAction>,
        commands: mpsc::Receiver<NetCommand>,
    ) -> Result<EventLoop, NetworkError> {
        let mut swarm = build_swarm(seed, &config)?;
        let (checked_tx, checked_rx) = mpsc::unbounded_channel();
        for addr in &config.listen {
            let parsed = parse_addr(addr)?;
            swarm.listen_on(parsed).map_err(|e| NetworkError::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        }
        Ok(EventLoop {
            swarm,
            engine,
            actions,
            commands,
            config,
            peers: Peers::default(),
            topics: HashMap::new(),
            awaiting: HashMap::new(),
            next_token: 0,
            queued: HashMap::new(),
            inbound: HashMap::new(),
            next_inbound: 0,
            outbound: HashMap::new(),
            join_inbound: HashMap::new(),
            join_outbound: HashMap::new(),
            backlog: VecDeque::new(),
            checked_tx,
            checked_rx,
        })
    }

    /// Our peer id.
    pub fn peer_id(&self) -> String {
        self.swarm.local_peer_id().to_string()
    }

    /// Runs until `shutdown` fires or the engine closes its side.
    pub async fn run(mut self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        for addr in self.config.peers.clone() {
            if let Ok(addr) = parse_addr(&addr) {
                self.dial(addr);
            }
        }
        // First tick one period from now: the explicit peers were just dialled above.
        let every = self.config.redial_every;
        let mut redial = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        redial.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let engine = self.engine.clone();
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                action = self.actions.recv() => match action {
                    Some(action) => self.on_action(action),
                    None => break,
                },
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                permit = engine.reserve(), if !self.backlog.is_empty() => match permit {
                    Some(permit) => {
                        if let Some(input) = self.backlog.pop_front() {
                            permit.send(EngineInput::Net(input));
                        }
                    }
                    None => break,
                },
                Some(input) = self.checked_rx.recv() => self.send_to_engine(input),
                _ = redial.tick() => self.redial(),
                _ = shutdown.changed() => break,
            }
        }
        tracing::debug!(target: "agora::network", "network loop stopped");
    }

    /// Hands a peer or sync event to the engine, in order, without waiting.
    fn send_to_engine(&mut self, input: Input) {
        if self.backlog.is_empty() {
            match self.engine.try_input(input) {
                Ok(()) => return,
                Err(input) => self.backlog.push_back(input),
            }
        } else {
            self.backlog.push_back(input);
        }
        if self.backlog.len() > MAX_BACKLOG {
            self.backlog.pop_front();
            tracing::warn!(target: "agora::network", "the engine is saturated; dropped the oldest peer event");
        }
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
            .peers
            .mdns
            .iter()
            .filter(|(p, _)| {
                !self.peers.connected.contains_key(p) && !self.peers.banned.contains(p)
            })
            .map(|(p, a)| a.clone().with_p2p(*p).unwrap_or_else(|a| a))
            .collect();
        for addr in lan {
            self.dial(addr);
        }
        for addr in self.config.peers.clone() {
            let Ok(addr) = parse_addr(&addr) else {
                continue;
            };
            let peer = addr.iter().find_map(|p| match p {
                libp2p::multiaddr::Protocol::P2p(id) => Some(id),
                _ => None,
            });
            let up = match peer {
                Some(id) => self.peers.connected.contains_key(&id),
                None => self.peers.connected.values().flatten().any(|a| a == &addr),
            };
            if !up {
                self.dial(addr);
            }
        }
    }

    fn on_action(&mut self, action: NetAction) {
        match action {
            NetAction::Subscribe(space) => {
                let topic = IdentTopic::new(space.topic());
                let gs = &mut self.swarm.behaviour_mut().gossipsub;
                if let Err(e) = gs.subscribe(&topic) {
                    tracing::warn!(target: "agora::network", %space, %e, "subscribe failed");
                }
                let _ = gs.set_topic_params(topic.clone(), topic_score_params());
                self.topics.insert(topic.hash(), space);
            }
            NetAction::SubscribeTopics { space, topics } => {
                let wanted: Vec<IdentTopic> = topics.into_iter().map(IdentTopic::new).collect();
                let hashes: Vec<TopicHash> = wanted.iter().map(IdentTopic::hash).collect();
                let gs = &mut self.swarm.behaviour_mut().gossipsub;
                // Leave this space's topics that are no longer wanted (an older epoch's).
                let stale: Vec<TopicHash> = self
                    .topics
                    .iter()
                    .filter(|(h, s)| **s == space && !hashes.contains(h))
                    .map(|(h, _)| h.clone())
                    .collect();
                for hash in stale {
                    // What waited for a follower of a topic we leave is not sent there later.
                    self.queued.remove(&hash);
                    let _ = gs.unsubscribe(&IdentTopic::new(hash.into_string()));
                }
                self.topics.retain(|h, s| *s != space || hashes.contains(h));
                for topic in wanted {
                    if let Err(e) = gs.subscribe(&topic) {
                        tracing::warn!(target: "agora::network", %space, %e, "subscribe failed");
                    }
                    let _ = gs.set_topic_params(topic.clone(), topic_score_params());
                    self.topics.insert(topic.hash(), space);
                }
                // Peers that followed these topics before we did announced it already: tell the
                // service now (it syncs with them).
                let followers: Vec<PeerId> = gs
                    .all_peers()
                    .filter(|(_, topics)| topics.iter().any(|t| hashes.contains(t)))
                    .map(|(p, _)| *p)
                    .collect();
                for peer_id in followers {
                    let peer = self.peers.handle(peer_id);
                    self.send_to_engine(Input::PeerSubscribed { peer, space });
                }
            }
            NetAction::PublishTo { topic, bytes } => {
                self.publish(IdentTopic::new(topic).hash(), bytes);
            }
            NetAction::Publish { space, bytes } => {
                let topic = IdentTopic::new(space.topic()).hash();
                self.publish(topic, bytes);
            }
            NetAction::Verdict { token, verdict } => {
                let Some((id, source)) = self.awaiting.remove(&token) else {
                    return;
                };
                let acceptance = match verdict {
                    Verdict::Accept => MessageAcceptance::Accept,
                    Verdict::Ignore => MessageAcceptance::Ignore,
                    Verdict::Reject => MessageAcceptance::Reject,
                };
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&id, &source, acceptance);
            }
            NetAction::SyncRequest {
                peer,
                exchange,
                request,
            } => match self.peers.id(peer) {
                Some(id) if self.peers.connected.contains_key(&id) => {
                    let request_id = self.swarm.behaviour_mut().sync.send_request(&id, request);
                    self.outbound.insert(request_id, (peer, exchange));
                }
                _ => self.send_to_engine(Input::SyncResponse {
                    peer,
                    exchange,
                    result: Err(SyncFailure::Unavailable("the peer is not connected".into())),
                    checked: None,
                }),
            },
            NetAction::JoinResponse { inbound, response } => {
                if let Some(channel) = self.join_inbound.remove(&inbound) {
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .join
                        .send_response(channel, response);
                }
            }
            NetAction::SyncResponse {
                inbound, response, ..
            } => {
                if let Some((_, channel)) = self.inbound.remove(&inbound) {
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .sync
                        .send_response(channel, response);
                }
            }
            NetAction::Ban { peer, .. } => {
                if let Some(id) = self.peers.id(peer) {
                    self.peers.banned.insert(id);
                    self.swarm.behaviour_mut().gossipsub.blacklist_peer(&id);
                    let _ = self.swarm.disconnect_peer_id(id);
                }
            }
            NetAction::Unban { peer } => {
                if let Some(id) = self.peers.id(peer) {
                    self.peers.banned.remove(&id);
                    self.swarm
                        .behaviour_mut()
                        .gossipsub
                        .remove_blacklisted_peer(&id);
                    self.peers.forget_if_idle(&id);
                }
            }
            NetAction::Disconnect { peer } => {
                if let Some(id) = self.peers.id(peer) {
                    let _ = self.swarm.disconnect_peer_id(id);
                }
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
            NetCommand::Join {
                addr,
                request,
                reply,
            } => {
                let peer = addr.iter().find_map(|p| match p {
                    libp2p::multiaddr::Protocol::P2p(id) => Some(id),
                    _ => None,
                });
                let Some(peer) = peer else {
                    let _ = reply.send(Err(format!("{addr} does not end in /p2p/<peer id>")));
                    return;
                };
                if peer == *self.swarm.local_peer_id() {
                    let _ = reply.send(Err("that address is this node's own".into()));
                    return;
                }
                let id = self.swarm.behaviour_mut().join.send_request_with_addresses(
                    &peer,
                    *request,
                    vec![addr],
                );
                self.join_outbound.insert(id, reply);
            }
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
                    .peers
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
                let _ = reply.send(NetView {
                    peer_id: me.to_string(),
                    listen_addrs,
                    peers,
                    queued: self.queued.values().map(|q| q.len() as u64).sum(),
                    names: self.peers.names(),
                    dialable: self
                        .peers
                        .listen
                        .iter()
                        .filter(|(p, _)| self.peers.connected.contains_key(*p))
                        .filter_map(|(p, addrs)| {
                            // An address that names some other peer is not this peer's.
                            let addrs = addrs
                                .iter()
                                .filter_map(|a| a.clone().with_p2p(*p).ok())
                                .map(|a| a.to_string())
                                .collect();
                            Some((self.peers.known(p)?, addrs))
                        })
                        .collect(),
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
            SwarmEvent::ConnectionEstablished { peer_id, .. }
                if self.peers.banned.contains(&peer_id) =>
            {
                tracing::debug!(target: "agora::sync", peer = %peer_id, "refusing a banned peer");
                let _ = self.swarm.disconnect_peer_id(peer_id);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                tracing::info!(target: "agora::network", peer = %peer_id, addr = %endpoint.get_remote_address(), "connected");
                let first = !self.peers.connected.contains_key(&peer_id);
                self.peers
                    .connected
                    .entry(peer_id)
                    .or_default()
                    .push(endpoint.get_remote_address().clone());
                if first {
                    let peer = self.peers.handle(peer_id);
                    self.send_to_engine(Input::PeerConnected { peer });
                    self.send_to_engine(Input::PeerIdentified {
                        peer,
                        id: peer_id.to_bytes(),
                    });
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                if num_established == 0 {
                    if self.peers.connected.remove(&peer_id).is_some() {
                        tracing::info!(target: "agora::network", peer = %peer_id, "disconnected");
                        if let Some(peer) = self.peers.known(&peer_id) {
                            self.send_to_engine(Input::PeerDisconnected { peer });
                        }
                    }
                    self.inbound.retain(|_, (p, _)| *p != peer_id);
                    self.peers.listen.remove(&peer_id);
                    self.peers.forget_if_idle(&peer_id);
                } else if let Some(addrs) = self.peers.connected.get_mut(&peer_id) {
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
            SwarmEvent::Behaviour(BehaviourEvent::Join(ev)) => self.on_join_event(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
                let mut seen = HashSet::new();
                for (peer, addr) in list {
                    // Remembered until mDNS says it expired, so `redial` retries failed dials.
                    self.peers.mdns.insert(peer, addr.clone());
                    if !self.peers.connected.contains_key(&peer)
                        && !self.peers.banned.contains(&peer)
                        && seen.insert(peer)
                    {
                        tracing::info!(target: "agora::network", %peer, %addr, "discovered by mDNS");
                        self.dial(addr.with_p2p(peer).unwrap_or_else(|a| a));
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Expired(list))) => {
                for (peer, _) in list {
                    self.peers.mdns.remove(&peer);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                tracing::debug!(target: "agora::network", peer = %peer_id, agent = %info.agent_version, "identified");
                if self.peers.connected.contains_key(&peer_id) {
                    let addrs = info
                        .listen_addrs
                        .into_iter()
                        .filter(|a| a.to_string().len() <= 200)
                        .take(MAX_LISTEN_ADDRS)
                        .collect();
                    self.peers.listen.insert(peer_id, addrs);
                }
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
                let ignore = |swarm: &mut Swarm<Behaviour>| {
                    swarm
                        .behaviour_mut()
                        .gossipsub
                        .report_message_validation_result(
                            &message_id,
                            &propagation_source,
                            MessageAcceptance::Ignore,
                        );
                };
                if self.awaiting.len() >= MAX_AWAITING_VERDICT {
                    ignore(&mut self.swarm);
                    return;
                }
                let token = self.next_token;
                self.next_token += 1;
                let from = self.peers.handle(propagation_source);
                let g = GossipIn {
                    token,
                    from,
                    first_hop: message.source == Some(propagation_source),
                    topic: self.topics.get(&message.topic).copied(),
                    bytes: message.data,
                };
                match self.engine.try_input(Input::Gossip(vec![g])) {
                    Ok(()) => {
                        self.awaiting
                            .insert(token, (message_id, propagation_source));
                    }
                    Err(_) => {
                        tracing::debug!(target: "agora::network", "engine busy; ignoring a gossip message");
                        ignore(&mut self.swarm);
                    }
                }
            }
            gossipsub::Event::Subscribed { peer_id, topic } => {
                tracing::debug!(target: "agora::network", peer = %peer_id, %topic, "peer subscribed");
                self.flush_queue(&topic);
                if let Some(space) = self.space_of_topic(&topic) {
                    let peer = self.peers.handle(peer_id);
                    self.send_to_engine(Input::PeerSubscribed { peer, space });
                }
            }
            gossipsub::Event::Unsubscribed { peer_id, topic } => {
                if let (Some(space), Some(peer)) =
                    (self.space_of_topic(&topic), self.peers.known(&peer_id))
                {
                    self.send_to_engine(Input::PeerUnsubscribed { peer, space });
                }
            }
            _ => {}
        }
    }

    /// The space a topic stands for: a version 1 topic names it; a private space's topic is
    /// known only as one this node follows.
    fn space_of_topic(&self, topic: &TopicHash) -> Option<SpaceId> {
        SpaceId::from_topic(topic.as_str()).or_else(|| self.topics.get(topic).copied())
    }

    fn on_join_event(&mut self, ev: request_response::Event<JoinRequest, JoinResponse>) {
        match ev {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let busy = |swarm: &mut Swarm<Behaviour>, channel| {
                    let busy = JoinResponse::Refused("busy".into());
                    let _ = swarm.behaviour_mut().join.send_response(channel, busy);
                };
                if self.join_inbound.len() >= MAX_INBOUND_JOIN {
                    return busy(&mut self.swarm, channel);
                }
                self.next_inbound += 1;
                let inbound = InboundId(self.next_inbound);
                let handle = self.peers.handle(peer);
                match self.engine.try_input(Input::JoinRequest {
                    peer: handle,
                    inbound,
                    request: Box::new(request),
                }) {
                    Ok(()) => {
                        self.join_inbound.insert(inbound, channel);
                    }
                    Err(_) => busy(&mut self.swarm, channel),
                }
            }
            request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(reply) = self.join_outbound.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(reply) = self.join_outbound.remove(&request_id) {
                    let _ = reply.send(Err(error.to_string()));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(target: "agora::network", %peer, %error, "inbound join failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_sync_event(
        &mut self,
        ev: request_response::Event<
            agora_protocol::sync::SyncRequest,
            agora_protocol::sync::SyncResponse,
        >,
    ) {
        match ev {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let busy = |swarm: &mut Swarm<Behaviour>, channel| {
                    let busy = SyncResponse::Refused {
                        reason: "busy; try again later".into(),
                    };
                    let _ = swarm.behaviour_mut().sync.send_response(channel, busy);
                };
                if self.inbound.len() >= MAX_INBOUND_SYNC {
                    return busy(&mut self.swarm, channel);
                }
                self.next_inbound += 1;
                let inbound = InboundId(self.next_inbound);
                let handle = self.peers.handle(peer);
                tracing::debug!(target: "agora::sync", %peer, "sync request");
                match self.engine.try_input(Input::SyncRequest {
                    peer: handle,
                    inbound,
                    request,
                }) {
                    Ok(()) => {
                        self.inbound.insert(inbound, (peer, channel));
                    }
                    Err(_) => busy(&mut self.swarm, channel),
                }
            }
            request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                let Some((peer, exchange)) = self.outbound.remove(&request_id) else {
                    return;
                };
                match response {
                    SyncResponse::Contributions { items, more }
                        if items.len() >= CHECK_ON_ARRIVAL_FROM =>
                    {
                        // The answer and what became of it travel together, later.
                        let done = self.checked_tx.clone();
                        // The headers first, so that the next request leaves at once; the
                        // verification follows on this thread while the engine goes on.
                        tokio::task::spawn_blocking(move || {
                            let (checked, verifier) = Checked::arrive(&items);
                            let result = Ok(SyncResponse::Contributions { items, more });
                            let _ = done.send(Input::SyncResponse {
                                peer,
                                exchange,
                                result,
                                checked: Some(checked),
                            });
                            verifier.run();
                        });
                    }
                    response => self.send_to_engine(Input::SyncResponse {
                        peer,
                        exchange,
                        result: Ok(response),
                        checked: None,
                    }),
                }
            }
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                let Some((handle, exchange)) = self.outbound.remove(&request_id) else {
                    return;
                };
                let failure = match &error {
                    OutboundFailure::Timeout => SyncFailure::Timeout,
                    OutboundFailure::Io(e) => match decode_error(e) {
                        Some(SyncDecodeError::TooLarge { .. }) => SyncFailure::TooLarge,
                        Some(other) => SyncFailure::Malformed(other.to_string()),
                        None => SyncFailure::Unavailable(error.to_string()),
                    },
                    other => SyncFailure::Unavailable(other.to_string()),
                };
                tracing::debug!(target: "agora::sync", %peer, %error, "outbound sync failed");
                self.send_to_engine(Input::SyncResponse {
                    peer: handle,
                    exchange,
                    result: Err(failure),
                    checked: None,
                });
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(target: "agora::sync", %peer, %error, "inbound sync failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }
}
