//! A model of gossipsub as the node configures it, per simulated node: a mesh of degree D
//! (kept between D_low and D_high at each heartbeat), eager push of validated messages to the
//! mesh, flood publishing of our own messages, and lazy repair (IHAVE of the message ids seen in
//! the last `history_gossip` heartbeats to `gossip_lazy` peers outside the mesh, answered by
//! IWANT). A message is forwarded only after the service's verdict accepted it, exactly as
//! gossipsub does with `validate_messages()`. Duplicates are recognised by message id for
//! `duplicate_cache_time`. The parameters come from the node's own gossipsub configuration.

use rand::RngExt;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;
use std::time::Duration;

/// Hashes a `u64` that is already uniformly random (a message id: a prefix of SHA-256) by
/// taking it as it is: the simulation looks ids up billions of times.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Hashes and ids are uniformly random: their first eight bytes are as good as all.
        let mut first = [0u8; 8];
        let n = bytes.len().min(8);
        first[..n].copy_from_slice(&bytes[..n]);
        self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(first);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A map keyed by random `u64`s.
pub type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;
/// A set of random `u64`s.
pub type IdSet = HashSet<u64, BuildHasherDefault<IdHasher>>;

/// The gossipsub parameters the model uses.
#[derive(Debug, Clone, Copy)]
pub struct GossipParams {
    /// Target mesh degree.
    pub d: usize,
    /// Below this, graft.
    pub d_low: usize,
    /// Above this, prune.
    pub d_high: usize,
    /// Peers outside the mesh that get IHAVE each heartbeat (at least).
    pub d_lazy: usize,
    /// Share of the peers outside the mesh that get IHAVE, if more than `d_lazy`.
    pub gossip_factor: f64,
    /// Heartbeats of messages kept for IWANT.
    pub history_length: usize,
    /// Heartbeats of message ids announced by IHAVE.
    pub history_gossip: usize,
    /// Heartbeat period (ms).
    pub heartbeat_ms: u64,
    /// How long a message id is remembered as seen (ms).
    pub duplicate_ms: u64,
    /// Most ids in one IHAVE (and one IWANT).
    pub max_ihave: usize,
}

impl GossipParams {
    /// The parameters of the node's gossipsub configuration with this heartbeat.
    pub fn of_node(heartbeat: Duration) -> GossipParams {
        let c = agora_node::network::gossipsub_config(heartbeat)
            .expect("the node's gossipsub configuration builds");
        GossipParams {
            d: c.mesh_n(),
            d_low: c.mesh_n_low(),
            d_high: c.mesh_n_high(),
            d_lazy: c.gossip_lazy(),
            gossip_factor: c.gossip_factor(),
            history_length: c.history_length(),
            history_gossip: c.history_gossip(),
            heartbeat_ms: c.heartbeat_interval().as_millis() as u64,
            duplicate_ms: c.duplicate_cache_time().as_millis() as u64,
            max_ihave: c.max_control_messages_sent(),
        }
    }
}

/// A message's payload, shared by every copy in flight.
pub type Payload = Rc<Vec<u8>>;

/// What one node's gossipsub sends, to whom.
pub enum Send {
    /// A full message.
    Message {
        /// To.
        to: u32,
        /// Message id.
        id: u64,
        /// Payload.
        bytes: Payload,
    },
    /// Message ids we have.
    IHave {
        /// To.
        to: u32,
        /// Ids.
        ids: Rc<Vec<u64>>,
    },
    /// Message ids we want.
    IWant {
        /// To.
        to: u32,
        /// Ids.
        ids: Vec<u64>,
    },
    /// Join the sender's mesh.
    Graft {
        /// To.
        to: u32,
    },
    /// Leave the sender's mesh.
    Prune {
        /// To.
        to: u32,
    },
}

/// Message ids below this are dense (a model contribution's number in the world) and kept in
/// an array; others (hashes of real contributions) in a set.
pub const DENSE_IDS: u64 = 1 << 32;

/// The duplicate cache: ids seen in the last `duplicate_ms`. Dense ids (model contributions)
/// live in an array of "seen at" times, which a thousand nodes can afford and walk fast.
#[derive(Default)]
struct Seen {
    /// For dense id `i`: 1 + the time it was seen (0: not seen, or forgotten).
    dense: Vec<u64>,
    sparse: IdSet,
    order: VecDeque<(u64, u64)>,
}

impl Seen {
    fn contains(&self, id: u64) -> bool {
        if id < DENSE_IDS {
            self.dense.get(id as usize).is_some_and(|at| *at != 0)
        } else {
            self.sparse.contains(&id)
        }
    }

    fn insert(&mut self, id: u64, now: u64) {
        if self.contains(id) {
            return;
        }
        if id < DENSE_IDS {
            let i = id as usize;
            if self.dense.len() <= i {
                self.dense.resize(i + 1, 0);
            }
            self.dense[i] = now + 1;
        } else {
            self.sparse.insert(id);
        }
        self.order.push_back((now, id));
    }

    /// Forgets ids seen `duplicate_ms` or more before `now`.
    fn expire(&mut self, now: u64, duplicate_ms: u64) {
        while let Some(&(at, id)) = self.order.front() {
            if at + duplicate_ms > now {
                break;
            }
            self.order.pop_front();
            if id < DENSE_IDS {
                if let Some(slot) = self.dense.get_mut(id as usize) {
                    *slot = 0;
                }
            } else {
                self.sparse.remove(&id);
            }
        }
    }
}

/// One node's gossipsub state (one topic: the simulated space).
#[derive(Default)]
pub struct Gossip {
    /// Peers whose connection is up (and who follow the topic: every node does).
    pub peers: Vec<u32>,
    mesh: Vec<u32>,
    seen: Seen,
    /// Validated messages by heartbeat, newest first.
    mcache: VecDeque<Vec<(u64, Payload)>>,
    /// Ids asked for by IWANT, and when (asked again only after a heartbeat).
    asked: IdMap<u64>,
}

impl Gossip {
    /// Whether `id` was seen (a duplicate).
    pub fn seen(&self, id: u64) -> bool {
        self.seen.contains(id)
    }

    /// Records `id` as seen at `now`.
    pub fn mark_seen(&mut self, id: u64, now: u64) {
        self.seen.insert(id, now);
    }

    fn remember(&mut self, id: u64, bytes: Payload) {
        if self.mcache.is_empty() {
            self.mcache.push_front(Vec::new());
        }
        self.mcache[0].push((id, bytes));
    }

    /// A connection came up.
    pub fn connected(&mut self, peer: u32) {
        if !self.peers.contains(&peer) {
            self.peers.push(peer);
        }
    }

    /// A connection went down.
    pub fn disconnected(&mut self, peer: u32) {
        self.peers.retain(|p| *p != peer);
        self.mesh.retain(|p| *p != peer);
    }

    /// Our own message: flood-published to every peer (gossipsub's `flood_publish`).
    pub fn publish(&mut self, id: u64, bytes: Payload, now: u64, out: &mut Vec<Send>) {
        self.mark_seen(id, now);
        for &to in &self.peers {
            out.push(Send::Message {
                to,
                id,
                bytes: bytes.clone(),
            });
        }
        self.remember(id, bytes);
    }

    /// The service accepted a message from `from`: relay it to the mesh.
    pub fn accepted(&mut self, id: u64, bytes: Payload, from: u32, out: &mut Vec<Send>) {
        for &to in &self.mesh {
            if to != from {
                out.push(Send::Message {
                    to,
                    id,
                    bytes: bytes.clone(),
                });
            }
        }
        self.remember(id, bytes);
    }

    /// IHAVE from `from`: ask for what we have not seen.
    pub fn on_ihave(
        &mut self,
        from: u32,
        ids: &[u64],
        now: u64,
        p: &GossipParams,
        out: &mut Vec<Send>,
    ) {
        let mut want = Vec::new();
        for &id in ids.iter().take(p.max_ihave) {
            if self.seen.contains(id) {
                continue;
            }
            match self.asked.get(&id) {
                Some(at) if now < at + p.heartbeat_ms => continue,
                _ => {}
            }
            self.asked.insert(id, now);
            want.push(id);
        }
        if !want.is_empty() {
            out.push(Send::IWant {
                to: from,
                ids: want,
            });
        }
    }

    /// IWANT from `from`: send what the message cache holds.
    pub fn on_iwant(&self, from: u32, ids: &[u64], out: &mut Vec<Send>) {
        for &id in ids {
            if let Some((_, bytes)) = self.mcache.iter().flatten().find(|(m, _)| *m == id) {
                out.push(Send::Message {
                    to: from,
                    id,
                    bytes: bytes.clone(),
                });
            }
        }
    }

    /// GRAFT from `from`.
    pub fn on_graft(&mut self, from: u32) {
        if self.peers.contains(&from) && !self.mesh.contains(&from) {
            self.mesh.push(from);
        }
    }

    /// PRUNE from `from`.
    pub fn on_prune(&mut self, from: u32) {
        self.mesh.retain(|p| *p != from);
    }

    /// The heartbeat: mesh maintenance, IHAVE gossip, cache shifts.
    pub fn heartbeat(
        &mut self,
        now: u64,
        p: &GossipParams,
        rng: &mut impl RngExt,
        out: &mut Vec<Send>,
    ) {
        let peers = &self.peers;
        self.mesh.retain(|m| peers.contains(m));
        if self.mesh.len() < p.d_low {
            let mut candidates: Vec<u32> = self
                .peers
                .iter()
                .copied()
                .filter(|q| !self.mesh.contains(q))
                .collect();
            while self.mesh.len() < p.d && !candidates.is_empty() {
                let q = candidates.swap_remove(rng.random_range(0..candidates.len()));
                self.mesh.push(q);
                out.push(Send::Graft { to: q });
            }
        }
        while self.mesh.len() > p.d_high {
            let q = self.mesh.swap_remove(rng.random_range(0..self.mesh.len()));
            out.push(Send::Prune { to: q });
        }
        let ids: Vec<u64> = self
            .mcache
            .iter()
            .take(p.history_gossip)
            .flatten()
            .map(|(id, _)| *id)
            .take(p.max_ihave)
            .collect();
        if !ids.is_empty() {
            let mut others: Vec<u32> = self
                .peers
                .iter()
                .copied()
                .filter(|q| !self.mesh.contains(q))
                .collect();
            let n = p
                .d_lazy
                .max((p.gossip_factor * others.len() as f64) as usize)
                .min(others.len());
            let ids = Rc::new(ids);
            for _ in 0..n {
                let to = others.swap_remove(rng.random_range(0..others.len()));
                out.push(Send::IHave {
                    to,
                    ids: ids.clone(),
                });
            }
        }
        self.mcache.push_front(Vec::new());
        self.mcache.truncate(p.history_length);
        self.seen.expire(now, p.duplicate_ms);
        self.asked.retain(|_, at| *at + p.heartbeat_ms > now);
    }
}
