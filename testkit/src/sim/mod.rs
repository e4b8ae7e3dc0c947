//! A deterministic simulation of many Agora nodes in one process: the node's own service
//! (ingest, pending set, local edits, the sync scheduler, exchanges and responder) on every
//! node, a simulated network with latency, bandwidth, loss, duplication, reordering and
//! partitions, a model of gossipsub ([`gossip`]), restarts that keep the store, virtual time and
//! one seeded random number generator. The same configuration and seed give the same run, byte
//! for byte: [`SimReport::digest`] hashes every node's final state.
//!
//! Replicas: [`ReplicaMode::Full`] runs real Automerge documents with real signature
//! verification over an in-memory store (what a node runs, minus the disk); [`ReplicaMode::Model`]
//! runs the [`model`] replica (the contribution DAG only), so that 1,000 nodes fit in memory.
//! `docs/ARCHITECTURE.md` says exactly what each leaves out.

mod gossip;
pub mod model;

use self::gossip::{Gossip, GossipParams, IdMap, Payload, Send};
use self::model::{ModelReplica, SharedWorld};
use agora_node::engine::run_group;
use agora_node::service::{
    AutomergeReplica, Command, ExchangeId, GossipIn, InboundId, Input, NetAction, Now, Output,
    PeerHandle, Replica, Reply, RequestId, Service, ServiceConfig, ServiceError, SyncFailure,
    Verdict,
};
use agora_node::store::{MemoryStorage, Store};
use agora_protocol::automerge::ChangeHash;
use agora_protocol::idea::{IdeaDraft, Vote};
use agora_protocol::membership::Role;
use agora_protocol::sync::{SyncRequest, SyncResponse, MAX_RESPONSE_BYTES};
use agora_protocol::{DocId, Identity, SpaceId};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::time::Duration;

/// Which replica every simulated node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaMode {
    /// The contribution DAG only (see [`model`]).
    Model,
    /// Real Automerge documents, real verification, an in-memory store.
    Full,
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Number of nodes.
    pub nodes: usize,
    /// Number of ideas written (each followed by comments and votes of other nodes).
    pub ideas: usize,
    /// The seed of everything random.
    pub seed: u64,
    /// Replica of every node.
    pub replica: ReplicaMode,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Latency range of a message (ms).
    pub latency_ms: (u64, u64),
    /// Extra random delay of each message, up to this (ms): reorders messages on a link.
    pub jitter_ms: u64,
    /// Link bandwidth (bytes per second): a message takes its size over this to transmit.
    pub bandwidth: u64,
    /// Connections each node opens to random others.
    pub degree: usize,
    /// Writes are spread over this many seconds.
    pub write_seconds: u64,
    /// Split the nodes into two halves for this long during the writes (0: no partition).
    pub partition_seconds: u64,
    /// Fraction of nodes that restart once during the writes, keeping their store.
    pub churn: f64,
    /// gossipsub heartbeat (ms).
    pub heartbeat_ms: u64,
    /// Sync period (ms).
    pub sync_ms: u64,
    /// Print a line of progress to standard error every ten virtual seconds.
    pub progress: bool,
    /// The space is private (node 0 creates it and admits every other node by invitation);
    /// needs [`ReplicaMode::Full`].
    pub private: bool,
    /// Members node 0 removes from the private space during the writes, at random times. A
    /// removed node goes on writing until it hears of its removal (its late writes travel as
    /// any other): what the membership lets stand must be the same on every other node.
    pub removals: usize,
}

impl SimConfig {
    /// A configuration with the node's defaults and a moderate network.
    pub fn new(nodes: usize, ideas: usize, seed: u64) -> SimConfig {
        let defaults = agora_node::Config::default();
        SimConfig {
            nodes,
            ideas,
            seed,
            replica: ReplicaMode::Model,
            loss: 0.0,
            duplicate: 0.0,
            latency_ms: (2, 20),
            jitter_ms: 0,
            bandwidth: 12_500_000,
            degree: 6,
            write_seconds: 60,
            partition_seconds: 0,
            churn: 0.0,
            heartbeat_ms: defaults.heartbeat_ms,
            sync_ms: defaults.sync_ms,
            progress: false,
            private: false,
            removals: 0,
        }
    }
}

impl SimConfig {
    /// The command that replays this run.
    pub fn replay(&self) -> String {
        format!(
            "cargo run --release --example simulate -- --nodes {} --ideas {} --seed {} --replica {} \
             --loss {} --duplicate {} --jitter-ms {} --partition-seconds {} --churn {} --degree {} \
             --write-seconds {}{}",
            self.nodes,
            self.ideas,
            self.seed,
            match self.replica {
                ReplicaMode::Model => "model",
                ReplicaMode::Full => "full",
            },
            self.loss,
            self.duplicate,
            self.jitter_ms,
            self.partition_seconds,
            self.churn,
            self.degree,
            self.write_seconds,
            if self.private {
                format!(" --private --removals {}", self.removals)
            } else {
                String::new()
            },
        )
    }
}

/// What a run found.
#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    /// Nodes.
    pub nodes: usize,
    /// Ideas written.
    pub ideas: usize,
    /// Contributions written (ideas, comments, votes).
    pub contributions: u64,
    /// Contributions held by every node / contributions written.
    pub delivered_fraction: f64,
    /// Every node holds identical heads for every document.
    pub converged: bool,
    /// Virtual seconds from the last write, heal or restart to convergence.
    pub virtual_seconds_to_converge: Option<f64>,
    /// The goal: three gossip heartbeats plus one sync period (s).
    pub bound_seconds: f64,
    /// Whether convergence came within the bound.
    pub within_bound: bool,
    /// Messages sent per node (gossip, control and sync).
    pub messages_per_node: f64,
    /// Bytes sent per node.
    pub bytes_per_node: f64,
    /// Of which sync requests and responses.
    pub sync_bytes_per_node: f64,
    /// Wall-clock seconds the run took.
    pub wall_seconds: f64,
    /// SHA-256 of every node's final state (heads of every document, contributions held).
    pub digest: String,
    /// The seed.
    pub seed: u64,
    /// The replica.
    pub replica: ReplicaMode,
    /// Loss probability.
    pub loss: f64,
    /// Partition length (s).
    pub partition_seconds: u64,
    /// Churn fraction.
    pub churn: f64,
    /// Virtual time of the last write (s).
    pub last_write_seconds: f64,
    /// Virtual time the partition healed (s), if there was one.
    pub heal_seconds: Option<f64>,
    /// Virtual seconds simulated in all.
    pub virtual_seconds: f64,
    /// Writes given up on (the idea never reached the writer in time).
    pub writes_failed: u64,
    /// Peers banned by a node (none in an honest run).
    pub bans: u64,
    /// Members removed from the private space.
    pub removed: usize,
    /// Writes that could not be made because of a removal: the removed node's, once it knew,
    /// and others' on an idea of a removed member that does not stand.
    pub writes_void: u64,
    /// Writes a removed node made after its removal, before it heard of it.
    pub late_writes: u64,
    /// Contributions written that do not stand on node 0 (whited out by a removal).
    pub whited_out: u64,
}

const EPOCH_MS: i64 = 1_700_000_000_000;

/// Runs one simulation.
pub fn run(config: &SimConfig) -> SimReport {
    let started = std::time::Instant::now();
    let mut report = match config.replica {
        ReplicaMode::Model => {
            let world: SharedWorld = Rc::new(RefCell::new(model::World::default()));
            Sim::<ModelReplica>::new(config.clone(), Boot::Model(world)).run()
        }
        ReplicaMode::Full => {
            Sim::<AutomergeReplica<MemoryStorage>>::new(config.clone(), Boot::Full).run()
        }
    };
    report.wall_seconds = started.elapsed().as_secs_f64();
    report
}

/// How nodes start and restart.
enum Boot {
    Model(SharedWorld),
    Full,
}

/// Starting and restarting a node's service on its replica kind.
trait SimReplica: Replica + Sized {
    fn boot(
        boot: &Boot,
        identity: Identity,
        storage: &MemoryStorage,
        config: ServiceConfig,
        seed: [u8; 32],
    ) -> Service<Self>;
    fn reboot(
        boot: &Boot,
        old: Service<Self>,
        identity: Identity,
        storage: &MemoryStorage,
        config: ServiceConfig,
        seed: [u8; 32],
    ) -> Service<Self>;
}

impl SimReplica for ModelReplica {
    fn boot(
        boot: &Boot,
        identity: Identity,
        _: &MemoryStorage,
        config: ServiceConfig,
        seed: [u8; 32],
    ) -> Service<Self> {
        let Boot::Model(world) = boot else {
            unreachable!("a model simulation boots model replicas")
        };
        let replica = ModelReplica::new(world.clone(), identity);
        Service::new(replica, BTreeMap::new(), None, config, seed)
    }

    fn reboot(
        _: &Boot,
        old: Service<Self>,
        _: Identity,
        _: &MemoryStorage,
        config: ServiceConfig,
        seed: [u8; 32],
    ) -> Service<Self> {
        // The model's replica is what its store would hold: it survives the restart; everything
        // else (pending set, exchanges, peers, caches) does not.
        let (spaces, name) = old.durable_state();
        Service::new(old.into_replica(), spaces, name, config, seed)
    }
}

impl SimReplica for AutomergeReplica<MemoryStorage> {
    fn boot(
        _: &Boot,
        identity: Identity,
        storage: &MemoryStorage,
        config: ServiceConfig,
        seed: [u8; 32],
    ) -> Service<Self> {
        let store = Store::new(storage.clone()).expect("a memory store opens");
        Service::open(store, identity, config, seed).expect("a memory store loads")
    }

    fn reboot(
        boot: &Boot,
        old: Service<Self>,
        identity: Identity,
        storage: &MemoryStorage,
        config: ServiceConfig,
        seed: [u8; 32],
    ) -> Service<Self> {
        // A real restart: everything is read back from the store.
        drop(old);
        Self::boot(boot, identity, storage, config, seed)
    }
}

enum Msg {
    Message {
        id: u64,
        bytes: Payload,
    },
    IHave {
        ids: Rc<Vec<u64>>,
    },
    IWant {
        ids: Vec<u64>,
    },
    Graft,
    Prune,
    SyncReq {
        exchange: ExchangeId,
        request: SyncRequest,
    },
    SyncResp {
        exchange: ExchangeId,
        response: SyncResponse,
    },
}

/// Bytes of a message on the wire, with gossipsub's and request-response's framing
/// (approximated: a gossipsub message carries its source, sequence number, topic, signature and
/// key, about 140 bytes; a message id is 32 bytes).
fn wire_size(msg: &Msg) -> u64 {
    (match msg {
        Msg::Message { bytes, .. } => bytes.len() + 140,
        Msg::IHave { ids } => 60 + 34 * ids.len(),
        Msg::IWant { ids } => 10 + 34 * ids.len(),
        Msg::Graft | Msg::Prune => 60,
        Msg::SyncReq { request, .. } => request.encoded_len() + 40,
        Msg::SyncResp { response, .. } => response.encoded_len() + 40,
    }) as u64
}

#[derive(Debug, Clone)]
enum Intent {
    Idea { k: usize },
    Comment { k: usize, text: String },
    Vote { k: usize, up: bool },
}

enum Ev {
    Deliver {
        to: u32,
        from: u32,
        to_epoch: u32,
        from_epoch: u32,
        msg: Msg,
    },
    Connect {
        a: u32,
        b: u32,
    },
    Tick {
        node: u32,
        epoch: u32,
    },
    Heartbeat {
        node: u32,
        epoch: u32,
    },
    Write {
        node: u32,
        intent: Intent,
        tries: u32,
    },
    Partition,
    Heal,
    Down {
        node: u32,
    },
    Up {
        node: u32,
    },
    /// Node 0 removes this node from the private space.
    Remove {
        node: u32,
    },
    Check,
}

struct Node<R: Replica> {
    service: Option<Service<R>>,
    /// The service of a node that is down, kept for its restart.
    parked: Option<Service<R>>,
    storage: MemoryStorage,
    identity: Identity,
    gossip: Gossip,
    links: Vec<u32>,
    epoch: u32,
    tick_at: Option<u64>,
    verdicts: IdMap<(u64, Payload, u32)>,
    inbound: HashMap<InboundId, (u32, ExchangeId)>,
    requests: HashMap<RequestId, (Intent, u32)>,
}

/// A node's transport id in the model (what a peer id's bytes are on the wire).
fn transport_id(node: u32) -> Vec<u8> {
    node.to_be_bytes().to_vec()
}

struct Sim<R: Replica> {
    config: SimConfig,
    boot: Boot,
    params: GossipParams,
    service_config: ServiceConfig,
    rng: ChaCha8Rng,
    nodes: Vec<Node<R>>,
    /// The node that first published each gossip message.
    origins: HashMap<u64, u32>,
    /// Events by virtual millisecond, each millisecond's in the order they were scheduled.
    queue: BTreeMap<u64, VecDeque<Ev>>,
    now: u64,
    space: SpaceId,
    /// Partition side of each node while split.
    split: Option<Vec<bool>>,
    /// Links cut by a ban or a disconnect (lower index first).
    cut: HashSet<(u32, u32)>,
    ideas: Vec<Option<DocId>>,
    next_request: u64,
    next_token: u64,
    next_inbound: u64,
    written: u64,
    writes_open: u64,
    writes_failed: u64,
    last_write: u64,
    heal_at: Option<u64>,
    last_up: u64,
    pending_ups: u64,
    converged_at: Option<u64>,
    messages: u64,
    bytes: u64,
    sync_bytes: u64,
    bans: u64,
    /// The node that wrote each idea.
    creators: Vec<u32>,
    /// Nodes removed from the private space.
    removed: HashSet<u32>,
    writes_void: u64,
    late_writes: u64,
}

impl<R: SimReplica> Sim<R> {
    fn new(config: SimConfig, boot: Boot) -> Sim<R> {
        let params = GossipParams::of_node(Duration::from_millis(config.heartbeat_ms));
        let service_config = ServiceConfig {
            // A thousand nodes share one thread: a second one per batch would not pay.
            verify_in_parallel: false,
            ..agora_node::Config {
                sync_ms: config.sync_ms,
                heartbeat_ms: config.heartbeat_ms,
                ..agora_node::Config::default()
            }
            .service_config()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut nodes = Vec::with_capacity(config.nodes);
        for _ in 0..config.nodes {
            let identity = Identity::from_seed(rng.random());
            let storage = MemoryStorage::new();
            let service = R::boot(
                &boot,
                identity.clone(),
                &storage,
                ServiceConfig {
                    transport_id: transport_id(nodes.len() as u32),
                    ..service_config.clone()
                },
                rng.random(),
            );
            nodes.push(Node {
                service: Some(service),
                parked: None,
                storage,
                identity,
                gossip: Gossip::default(),
                links: Vec::new(),
                epoch: 0,
                tick_at: None,
                verdicts: IdMap::default(),
                inbound: HashMap::new(),
                requests: HashMap::new(),
            });
        }
        Sim {
            ideas: Vec::with_capacity(config.ideas),
            config,
            boot,
            params,
            service_config,
            rng,
            nodes,
            origins: HashMap::new(),
            queue: BTreeMap::new(),
            now: 0,
            space: SpaceId([0; 16]),
            split: None,
            cut: HashSet::new(),
            next_request: 0,
            next_token: 0,
            next_inbound: 0,
            written: 0,
            writes_open: 0,
            writes_failed: 0,
            last_write: 0,
            heal_at: None,
            last_up: 0,
            pending_ups: 0,
            converged_at: None,
            messages: 0,
            bytes: 0,
            sync_bytes: 0,
            bans: 0,
            creators: Vec::new(),
            removed: HashSet::new(),
            writes_void: 0,
            late_writes: 0,
        }
    }

    fn at(&mut self, at: u64, ev: Ev) {
        self.queue.entry(at).or_default().push_back(ev);
    }

    fn next_event(&mut self) -> Option<(u64, Ev)> {
        let mut first = self.queue.first_entry()?;
        let at = *first.key();
        let ev = first
            .get_mut()
            .pop_front()
            .expect("a millisecond in the queue has an event");
        if first.get().is_empty() {
            first.remove();
        }
        Some((at, ev))
    }

    fn now_struct(&self) -> Now {
        Now {
            mono: self.now,
            wall_ms: EPOCH_MS + self.now as i64,
        }
    }

    fn up(&self, i: u32) -> bool {
        self.nodes[i as usize].service.is_some()
    }

    fn linked(&self, a: u32, b: u32) -> bool {
        if self.cut.contains(&(a.min(b), a.max(b))) {
            return false;
        }
        match &self.split {
            Some(side) => side[a as usize] == side[b as usize],
            None => true,
        }
    }

    // ----- setup -----

    fn setup(&mut self) {
        let n = self.config.nodes as u32;
        if self.config.private {
            self.setup_private();
        } else {
            // Every node in the one space: node 0 creates it, the others join.
            let Reply::Space(space) = self.reply(0, Command::CreateSpace { name: "sim".into() })
            else {
                panic!("the first node creates the space")
            };
            self.space = space;
            for i in 1..n {
                self.command(i, Command::JoinSpace { space: self.space });
            }
        }
        // A random graph: each node dials `degree` others; then made connected.
        let mut edges: HashSet<(u32, u32)> = HashSet::new();
        for a in 0..n {
            for _ in 0..self.config.degree.min(n as usize - 1) {
                let mut b = self.rng.random_range(0..n);
                while b == a {
                    b = self.rng.random_range(0..n);
                }
                edges.insert((a.min(b), a.max(b)));
            }
        }
        let mut comp: Vec<u32> = (0..n).collect();
        fn root(c: &mut [u32], mut x: u32) -> u32 {
            while c[x as usize] != x {
                c[x as usize] = c[c[x as usize] as usize];
                x = c[x as usize];
            }
            x
        }
        let mut sorted: Vec<(u32, u32)> = edges.iter().copied().collect();
        sorted.sort();
        for &(a, b) in &sorted {
            let (ra, rb) = (root(&mut comp, a), root(&mut comp, b));
            comp[ra as usize] = rb;
        }
        for a in 1..n {
            if root(&mut comp, a) != root(&mut comp, 0) {
                let (ra, r0) = (root(&mut comp, a), root(&mut comp, 0));
                comp[ra as usize] = r0;
                sorted.push((0, a));
            }
        }
        for (a, b) in sorted {
            self.nodes[a as usize].links.push(b);
            self.nodes[b as usize].links.push(a);
            let at = self.rng.random_range(0..200);
            self.at(at, Ev::Connect { a, b });
        }
        for i in 0..n {
            let at = self.rng.random_range(0..self.params.heartbeat_ms);
            self.at(at, Ev::Heartbeat { node: i, epoch: 0 });
        }
        // Ideas spread over the write period, starting after the connections are up.
        let start = 1_000;
        let span = self.config.write_seconds * 1_000;
        for _ in 0..self.config.ideas {
            let node = self.rng.random_range(0..n);
            let at = start + self.rng.random_range(0..span.max(1));
            self.new_idea(node, at);
        }
        if self.config.partition_seconds > 0 {
            let from = start + span / 3;
            self.at(from, Ev::Partition);
            self.at(from + self.config.partition_seconds * 1_000, Ev::Heal);
        }
        let churning = (self.config.churn * n as f64).round() as usize;
        let mut order: Vec<u32> = (0..n).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, self.rng.random_range(0..=i));
        }
        for &node in order.iter().take(churning) {
            let down = start + self.rng.random_range(0..span.max(1));
            let back = down + self.rng.random_range(5_000..20_000);
            self.pending_ups += 1;
            self.at(down, Ev::Down { node });
            self.at(back, Ev::Up { node });
        }
        if self.config.private {
            // Removals in the middle half of the writes, of distinct nodes other than the owner.
            let mut order: Vec<u32> = (1..n).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, self.rng.random_range(0..=i));
            }
            for &node in order.iter().take(self.config.removals) {
                let at = start + span / 4 + self.rng.random_range(0..(span / 2).max(1));
                self.at(at, Ev::Remove { node });
            }
        }
        self.at(start + span, Ev::Check);
    }

    /// Schedules a new idea, written by `node` at `at`.
    fn new_idea(&mut self, node: u32, at: u64) {
        let k = self.ideas.len();
        self.ideas.push(None);
        self.creators.push(node);
        self.writes_open += 1;
        self.at(
            at,
            Ev::Write {
                node,
                intent: Intent::Idea { k },
                tries: 0,
            },
        );
    }

    /// Node 0 creates a private space and admits every other node, each by its own invitation
    /// and redeem; then every node takes the whole membership (as it would by sync).
    fn setup_private(&mut self) {
        assert_eq!(
            self.config.replica,
            ReplicaMode::Full,
            "a private space needs full replicas (the model holds no keys)"
        );
        let Reply::Space(space) = self.reply(0, Command::CreatePrivateSpace { name: "sim".into() })
        else {
            panic!("the first node creates the space")
        };
        self.space = space;
        let mut ops = Vec::new();
        for i in 1..self.config.nodes as u32 {
            let identity = self.nodes[i as usize].identity.clone();
            ops = crate::private::admit(&mut |c| self.reply(0, c), space, &identity, Role::Member);
        }
        for i in 1..self.config.nodes as u32 {
            self.reply(
                i,
                Command::JoinPrivate {
                    space,
                    ops: ops.clone(),
                },
            );
        }
    }

    /// Runs a command that must succeed; its reply.
    fn reply(&mut self, i: u32, command: Command) -> Reply {
        self.command(i, command)
            .into_iter()
            .find_map(|o| match o {
                Output::Reply { result, .. } => Some(result.expect("a set-up command succeeds")),
                _ => None,
            })
            .expect("a command is answered")
    }

    // ----- driving one node's service -----

    /// Runs inputs through a node's service as its engine would (one group), then carries out
    /// the outputs; sync batches it hands back are ingested after the outputs left.
    fn step(&mut self, i: u32, inputs: Vec<Input>) -> Vec<Output> {
        let now = self.now_struct();
        let node = &mut self.nodes[i as usize];
        let Some(service) = node.service.as_mut() else {
            return Vec::new();
        };
        let outputs = run_group(service, &node.storage, inputs, now);
        let mut replies = Vec::new();
        let mut follow = Vec::new();
        for o in outputs {
            match o {
                Output::Net(action) => self.net_action(i, action),
                Output::Ingest(batch) => follow.push(Input::Ingest(batch)),
                other => replies.push(other),
            }
        }
        for input in follow {
            replies.extend(self.step(i, vec![input]));
        }
        self.reschedule(i);
        replies
    }

    fn command(&mut self, i: u32, command: Command) -> Vec<Output> {
        self.next_request += 1;
        let id = RequestId(self.next_request);
        self.step(i, vec![Input::Command { id, command }])
    }

    fn reschedule(&mut self, i: u32) {
        let node = &mut self.nodes[i as usize];
        let Some(at) = node.service.as_ref().and_then(|s| s.next_wakeup()) else {
            return;
        };
        let at = at.max(self.now);
        if node.tick_at.is_some_and(|t| t <= at) {
            return;
        }
        node.tick_at = Some(at);
        let epoch = node.epoch;
        self.at(at, Ev::Tick { node: i, epoch });
    }

    fn send(&mut self, from: u32, to: u32, msg: Msg) {
        let size = wire_size(&msg);
        self.messages += 1;
        self.bytes += size;
        if matches!(msg, Msg::SyncReq { .. } | Msg::SyncResp { .. }) {
            self.sync_bytes += size;
        }
        if !self.linked(from, to) || self.rng.random_bool(self.config.loss) {
            return;
        }
        // A message the receiver has already seen would be dropped on arrival by its duplicate
        // cache (which keeps ids far longer than a message travels): count it, skip the trip.
        if let Msg::Message { id, .. } = &msg {
            if self.nodes[to as usize].gossip.seen(*id) {
                return;
            }
        }
        let (lo, hi) = self.config.latency_ms;
        let transmit = size * 1_000 / self.config.bandwidth.max(1);
        let mut delay = self.rng.random_range(lo..=hi.max(lo)) + transmit;
        if self.config.jitter_ms > 0 {
            delay += self.rng.random_range(0..=self.config.jitter_ms);
        }
        let (to_epoch, from_epoch) = (
            self.nodes[to as usize].epoch,
            self.nodes[from as usize].epoch,
        );
        if self.rng.random_bool(self.config.duplicate) {
            let again = delay + self.rng.random_range(lo..=hi.max(lo)) + self.config.jitter_ms;
            let copy = match &msg {
                Msg::Message { id, bytes } => Some(Msg::Message {
                    id: *id,
                    bytes: bytes.clone(),
                }),
                Msg::IHave { ids } => Some(Msg::IHave { ids: ids.clone() }),
                Msg::IWant { ids } => Some(Msg::IWant { ids: ids.clone() }),
                Msg::Graft => Some(Msg::Graft),
                Msg::Prune => Some(Msg::Prune),
                // Request-response rides a stream: a copy is never delivered twice.
                Msg::SyncReq { .. } | Msg::SyncResp { .. } => None,
            };
            if let Some(copy) = copy {
                let now = self.now;
                self.at(
                    now + again,
                    Ev::Deliver {
                        to,
                        from,
                        to_epoch,
                        from_epoch,
                        msg: copy,
                    },
                );
            }
        }
        let now = self.now;
        self.at(
            now + delay,
            Ev::Deliver {
                to,
                from,
                to_epoch,
                from_epoch,
                msg,
            },
        );
    }

    fn gossip_sends(&mut self, from: u32, sends: Vec<Send>) {
        for s in sends {
            match s {
                Send::Message { to, id, bytes } => self.send(from, to, Msg::Message { id, bytes }),
                Send::IHave { to, ids } => self.send(from, to, Msg::IHave { ids }),
                Send::IWant { to, ids } => self.send(from, to, Msg::IWant { ids }),
                Send::Graft { to } => self.send(from, to, Msg::Graft),
                Send::Prune { to } => self.send(from, to, Msg::Prune),
            }
        }
    }

    fn net_action(&mut self, i: u32, action: NetAction) {
        let now = self.now;
        match action {
            // Every node follows the one space from the start.
            NetAction::Subscribe(_) => {}
            // One topic in the model: a private space's epoch topics are that of the space.
            NetAction::Publish { bytes, .. } | NetAction::PublishTo { bytes, .. } => {
                let id = message_id(self.config.replica, &bytes);
                self.origins.entry(id).or_insert(i);
                let mut out = Vec::new();
                self.nodes[i as usize]
                    .gossip
                    .publish(id, Rc::new(bytes), now, &mut out);
                self.gossip_sends(i, out);
            }
            NetAction::Verdict { token, verdict } => {
                let node = &mut self.nodes[i as usize];
                let Some((id, bytes, from)) = node.verdicts.remove(&token) else {
                    return;
                };
                if verdict == Verdict::Accept {
                    let mut out = Vec::new();
                    node.gossip.accepted(id, bytes, from, &mut out);
                    self.gossip_sends(i, out);
                }
            }
            NetAction::SyncRequest {
                peer,
                exchange,
                request,
            } => self.send(i, peer.0 as u32, Msg::SyncReq { exchange, request }),
            NetAction::SyncResponse {
                inbound, response, ..
            } => {
                if let Some((to, exchange)) = self.nodes[i as usize].inbound.remove(&inbound) {
                    self.send(i, to, Msg::SyncResp { exchange, response });
                }
            }
            NetAction::Ban { peer, .. } | NetAction::Disconnect { peer } => {
                self.bans += 1;
                let b = peer.0 as u32;
                self.cut.insert((i.min(b), i.max(b)));
                self.disconnect(i, b);
            }
            NetAction::Unban { peer } => {
                let b = peer.0 as u32;
                self.cut.remove(&(i.min(b), i.max(b)));
                if self.up(b) {
                    self.connect(i, b);
                }
            }
            _ => {}
        }
    }

    fn connect(&mut self, a: u32, b: u32) {
        if !self.up(a) || !self.up(b) || self.cut.contains(&(a.min(b), a.max(b))) {
            return;
        }
        let space = self.space;
        for (x, y) in [(a, b), (b, a)] {
            self.nodes[x as usize].gossip.connected(y);
            let peer = PeerHandle(u64::from(y));
            self.step(
                x,
                vec![
                    Input::PeerConnected { peer },
                    Input::PeerIdentified {
                        peer,
                        id: transport_id(y),
                    },
                    Input::PeerSubscribed { peer, space },
                ],
            );
        }
    }

    fn disconnect(&mut self, a: u32, b: u32) {
        for (x, y) in [(a, b), (b, a)] {
            if self.up(x) {
                self.nodes[x as usize].gossip.disconnected(y);
                let peer = PeerHandle(u64::from(y));
                self.step(x, vec![Input::PeerDisconnected { peer }]);
            }
        }
    }

    // ----- events -----

    fn deliver(&mut self, to: u32, from: u32, msg: Msg) {
        let now = self.now;
        let space = self.space;
        match msg {
            Msg::Message { id, bytes } => {
                let node = &mut self.nodes[to as usize];
                if node.gossip.seen(id) {
                    return;
                }
                node.gossip.mark_seen(id, now);
                self.next_token += 1;
                let token = self.next_token;
                node.verdicts.insert(token, (id, bytes.clone(), from));
                let g = GossipIn {
                    token,
                    from: PeerHandle(u64::from(from)),
                    first_hop: self.origins.get(&id) == Some(&from),
                    topic: Some(space),
                    bytes: bytes.as_ref().clone(),
                };
                self.step(to, vec![Input::Gossip(vec![g])]);
            }
            Msg::IHave { ids } => {
                let mut out = Vec::new();
                let p = self.params;
                self.nodes[to as usize]
                    .gossip
                    .on_ihave(from, &ids, now, &p, &mut out);
                self.gossip_sends(to, out);
            }
            Msg::IWant { ids } => {
                let mut out = Vec::new();
                self.nodes[to as usize]
                    .gossip
                    .on_iwant(from, &ids, &mut out);
                self.gossip_sends(to, out);
            }
            Msg::Graft => self.nodes[to as usize].gossip.on_graft(from),
            Msg::Prune => self.nodes[to as usize].gossip.on_prune(from),
            Msg::SyncReq { exchange, request } => {
                self.next_inbound += 1;
                let inbound = InboundId(self.next_inbound);
                self.nodes[to as usize]
                    .inbound
                    .insert(inbound, (from, exchange));
                let peer = PeerHandle(u64::from(from));
                self.step(
                    to,
                    vec![Input::SyncRequest {
                        peer,
                        inbound,
                        request,
                    }],
                );
            }
            Msg::SyncResp { exchange, response } => {
                // The transport's own limit, as the node's codec enforces it.
                let result = if response.encoded_len() as u64 > MAX_RESPONSE_BYTES {
                    Err(SyncFailure::TooLarge)
                } else {
                    Ok(response)
                };
                let peer = PeerHandle(u64::from(from));
                self.step(
                    to,
                    vec![Input::SyncResponse {
                        peer,
                        exchange,
                        result,
                        // The simulated network verifies nothing on arrival: the service does.
                        checked: None,
                    }],
                );
            }
        }
    }

    fn write(&mut self, node: u32, intent: Intent, tries: u32) {
        let space = self.space;
        let command = match &intent {
            Intent::Idea { k } => {
                let words = 6 + self.rng.random_range(0..30);
                Some(Command::CreateIdea {
                    space,
                    draft: IdeaDraft {
                        title: format!("idea {k}"),
                        body: "lorem ipsum ".repeat(words),
                        tags: vec!["sim".into()],
                    },
                })
            }
            Intent::Comment { k, text } => self.ideas[*k].map(|idea| Command::Comment {
                idea,
                text: text.clone(),
            }),
            Intent::Vote { k, up } => self.ideas[*k].map(|idea| Command::Vote {
                idea,
                vote: if *up { Vote::Up } else { Vote::Down },
            }),
        };
        let (Some(command), true) = (command, self.up(node)) else {
            return self.retry(node, intent, tries);
        };
        self.next_request += 1;
        let id = RequestId(self.next_request);
        self.nodes[node as usize]
            .requests
            .insert(id, (intent, tries));
        let outputs = self.step(node, vec![Input::Command { id, command }]);
        for o in outputs {
            if let Output::Reply { id, result } = o {
                self.replied(node, id, result);
            }
        }
    }

    fn retry(&mut self, node: u32, intent: Intent, tries: u32) {
        // Once a second, for as long as the idea may take to reach the writer (a partition may
        // keep it away until the heal).
        if u64::from(tries) >= 60 + self.config.partition_seconds {
            if self.config.progress {
                eprintln!("node {node} gave up on a write: {intent:?}");
            }
            self.writes_failed += 1;
            self.writes_open -= 1;
            return;
        }
        let at = self.now + 1_000;
        self.at(
            at,
            Ev::Write {
                node,
                intent,
                tries: tries + 1,
            },
        );
    }

    fn replied(&mut self, node: u32, id: RequestId, result: Result<Reply, ServiceError>) {
        let Some((intent, tries)) = self.nodes[node as usize].requests.remove(&id) else {
            return;
        };
        match result {
            Ok(reply) => {
                self.written += 1;
                if self.removed.contains(&node) {
                    self.late_writes += 1;
                }
                self.writes_open -= 1;
                self.last_write = self.now;
                if let (Intent::Idea { k }, Reply::Created(doc)) = (&intent, reply) {
                    self.ideas[*k] = Some(doc);
                    self.follow_ups(node, *k);
                }
            }
            // A removed node, once it knows, cannot write, nor read what came after; nobody
            // can build on an idea of a removed member that does not stand.
            Err(ServiceError::Membership(_)) if self.removed.contains(&node) => self.void(),
            Err(ServiceError::UnknownIdea(_))
                if self.voided(&intent) || self.removed.contains(&node) =>
            {
                self.void()
            }
            // The idea has not reached this node yet: try again later.
            Err(ServiceError::UnknownIdea(_)) => self.retry(node, intent, tries),
            Err(e) => panic!("a simulated write failed: {e}"),
        }
    }

    fn void(&mut self) {
        self.writes_void += 1;
        self.writes_open -= 1;
    }

    /// Whether a write is on an idea whose author was removed (it may never stand).
    fn voided(&self, intent: &Intent) -> bool {
        match intent {
            Intent::Comment { k, .. } | Intent::Vote { k, .. } => {
                self.removed.contains(&self.creators[*k])
            }
            Intent::Idea { .. } => false,
        }
    }

    /// Comments and votes of other nodes on idea `k`, a few seconds after it was created.
    fn follow_ups(&mut self, author: u32, k: usize) {
        let n = self.config.nodes as u32;
        if n < 2 {
            return;
        }
        let mut others: Vec<u32> = (0..n).filter(|x| *x != author).collect();
        let comments = self.rng.random_range(0..=4usize);
        let votes = self.rng.random_range(0..=3usize).min(others.len());
        for c in 0..comments {
            let node = others[self.rng.random_range(0..others.len())];
            let at = self.now + self.rng.random_range(1_000..8_000);
            let text = format!(
                "comment {c} on idea {k}: {}",
                "sure ".repeat(self.rng.random_range(1..30))
            );
            self.writes_open += 1;
            self.at(
                at,
                Ev::Write {
                    node,
                    intent: Intent::Comment { k, text },
                    tries: 0,
                },
            );
        }
        for _ in 0..votes {
            // Distinct voters: a second vote of the same author could change nothing.
            let node = others.swap_remove(self.rng.random_range(0..others.len()));
            let at = self.now + self.rng.random_range(1_000..8_000);
            let up = self.rng.random_bool(0.8);
            self.writes_open += 1;
            self.at(
                at,
                Ev::Write {
                    node,
                    intent: Intent::Vote { k, up },
                    tries: 0,
                },
            );
        }
    }

    fn go_down(&mut self, node: u32) {
        let links = self.nodes[node as usize].links.clone();
        let n = &mut self.nodes[node as usize];
        let Some(service) = n.service.take() else {
            return;
        };
        // Kept until the restart: the store (and, for the model, the replica).
        n.parked = Some(service);
        n.epoch += 1;
        n.gossip = Gossip::default();
        n.tick_at = None;
        n.verdicts.clear();
        n.inbound.clear();
        // Its peers see the connections close.
        for peer in links {
            if self.up(peer) {
                self.nodes[peer as usize].gossip.disconnected(node);
                self.step(
                    peer,
                    vec![Input::PeerDisconnected {
                        peer: PeerHandle(u64::from(node)),
                    }],
                );
            }
        }
    }

    fn come_up(&mut self, node: u32) {
        let Some(old) = self.nodes[node as usize].parked.take() else {
            return;
        };
        let seed = self.rng.random();
        let n = &mut self.nodes[node as usize];
        let service = R::reboot(
            &self.boot,
            old,
            n.identity.clone(),
            &n.storage,
            ServiceConfig {
                transport_id: transport_id(node),
                ..self.service_config.clone()
            },
            seed,
        );
        n.service = Some(service);
        let epoch = n.epoch;
        self.step(node, Vec::new());
        let at = self.now + self.rng.random_range(0..self.params.heartbeat_ms);
        self.at(at, Ev::Heartbeat { node, epoch });
        for peer in self.nodes[node as usize].links.clone() {
            let at = self.now + self.rng.random_range(50..500);
            self.at(at, Ev::Connect { a: node, b: peer });
        }
        self.last_up = self.now;
        self.pending_ups -= 1;
    }
}

/// A gossip message id. The node's is SHA-256 of the payload; here it is a model
/// contribution's number in the world (dense: the duplicate cache keeps them in an array), or the
/// first 8 bytes of the SHA-256 of a real contribution, at or above [`gossip::DENSE_IDS`].
fn message_id(mode: ReplicaMode, bytes: &[u8]) -> u64 {
    match mode {
        ReplicaMode::Model => u64::from(u32::from_be_bytes(
            bytes[..4]
                .try_into()
                .expect("a model contribution starts with its number"),
        )),
        ReplicaMode::Full => {
            let d = Sha256::digest(bytes);
            u64::from_be_bytes(d[..8].try_into().expect("8 bytes")) | gossip::DENSE_IDS
        }
    }
}

impl<R: SimReplica> Sim<R> {
    fn run(mut self) -> SimReport {
        self.setup();
        let bound = 3 * self.config.heartbeat_ms + self.config.sync_ms;
        let settle = self.config.write_seconds * 1_000
            + self.config.partition_seconds * 1_000
            + 40_000
            + 20 * self.config.sync_ms;
        let started = std::time::Instant::now();
        let mut events = 0u64;
        let mut shown = 0;
        while let Some((at, ev)) = self.next_event() {
            self.now = at;
            events += 1;
            if self.config.progress && at / 10_000 > shown {
                shown = at / 10_000;
                eprintln!(
                    "virtual {:>4} s, wall {:>6.1} s, {events} events, {} written, {} queued ms",
                    at / 1_000,
                    started.elapsed().as_secs_f64(),
                    self.written,
                    self.queue.len()
                );
            }
            if self.now > settle {
                break;
            }
            match ev {
                Ev::Deliver {
                    to,
                    from,
                    to_epoch,
                    from_epoch,
                    msg,
                } => {
                    let fresh = self.nodes[to as usize].epoch == to_epoch
                        && self.nodes[from as usize].epoch == from_epoch;
                    if fresh && self.up(to) && self.up(from) && self.linked(from, to) {
                        self.deliver(to, from, msg);
                    }
                }
                Ev::Connect { a, b } => self.connect(a, b),
                Ev::Tick { node, epoch } => {
                    let n = &mut self.nodes[node as usize];
                    if n.epoch == epoch && n.tick_at == Some(self.now) {
                        n.tick_at = None;
                        self.step(node, Vec::new());
                    }
                }
                Ev::Heartbeat { node, epoch } => {
                    if self.nodes[node as usize].epoch != epoch || !self.up(node) {
                        continue;
                    }
                    let mut out = Vec::new();
                    let (p, now) = (self.params, self.now);
                    let Sim { nodes, rng, .. } = &mut self;
                    nodes[node as usize]
                        .gossip
                        .heartbeat(now, &p, rng, &mut out);
                    self.gossip_sends(node, out);
                    self.at(now + p.heartbeat_ms, Ev::Heartbeat { node, epoch });
                }
                Ev::Write {
                    node,
                    intent,
                    tries,
                } => self.write(node, intent, tries),
                Ev::Partition => {
                    let mut side = vec![false; self.config.nodes];
                    let mut order: Vec<usize> = (0..self.config.nodes).collect();
                    for i in (1..order.len()).rev() {
                        order.swap(i, self.rng.random_range(0..=i));
                    }
                    for &i in order.iter().take(self.config.nodes / 2) {
                        side[i] = true;
                    }
                    self.split = Some(side);
                }
                Ev::Heal => {
                    self.split = None;
                    self.heal_at = Some(self.now);
                }
                Ev::Down { node } => self.go_down(node),
                Ev::Remove { node } => {
                    // The member writes a new idea just as it is removed, before it can hear
                    // of it: a late write that reaches every node.
                    self.new_idea(node, self.now + 1);
                    let member = self.nodes[node as usize].identity.author();
                    let space = self.space;
                    self.removed.insert(node);
                    self.reply(0, Command::RemoveMember { space, member });
                }
                Ev::Up { node } => self.come_up(node),
                Ev::Check => {
                    if self.converged() {
                        self.converged_at = Some(self.now);
                        break;
                    }
                    let at = self.now + 100;
                    self.at(at, Ev::Check);
                }
            }
        }
        self.report(bound)
    }

    /// Whether every write is done, the network whole, every node up, and every node holds
    /// every contribution with identical heads.
    fn converged(&mut self) -> bool {
        if self.writes_open > 0 || self.split.is_some() || self.pending_ups > 0 {
            return false;
        }
        if self.config.private {
            return self.converged_private();
        }
        let total = self.written;
        if self.nodes.iter().any(|n| {
            n.service
                .as_ref()
                .is_none_or(|s| s.replica().contributions() != total)
        }) {
            return false;
        }
        // Equal sync digests mean identical heads for every document (the report hashes the
        // heads themselves); a digest is cached by the service until its space changes.
        let space = self.space;
        let mut digests = self
            .nodes
            .iter_mut()
            .filter_map(|n| n.service.as_mut().map(|s| s.digest(&space)));
        let first = digests.next();
        let same = digests.all(|d| Some(d) == first);
        if !same && self.config.progress {
            eprintln!(
                "virtual {:.1} s: every node holds {total} contributions, but their heads differ",
                self.now as f64 / 1_000.0
            );
        }
        same
    }

    /// For a private space with removals: every node that was not removed has the same heads
    /// (of what stands, and of the membership operations), and holds, standing, every
    /// contribution such a node wrote (its author is a member: nothing may white it out).
    fn converged_private(&mut self) -> bool {
        let space = self.space;
        let members: Vec<usize> = (0..self.nodes.len())
            .filter(|i| !self.removed.contains(&(*i as u32)))
            .collect();
        let digests: Vec<_> = members
            .iter()
            .filter_map(|&i| self.nodes[i].service.as_mut().map(|s| s.digest(&space)))
            .collect();
        if digests.len() != members.len() || digests.iter().any(|d| *d != digests[0]) {
            return false;
        }
        let standing: HashSet<ChangeHash> = {
            let replica = self.nodes[0]
                .service
                .as_mut()
                .expect("every member is up")
                .replica_mut();
            replica
                .docs(&space)
                .into_iter()
                .flat_map(|doc| replica.changes_after(&space, &doc, &[]))
                .collect()
        };
        for &i in &members {
            let author = self.nodes[i].identity.author();
            let replica = self.nodes[i]
                .service
                .as_mut()
                .expect("every member is up")
                .replica_mut();
            for doc in replica.docs(&space) {
                for change in replica.change_infos(&space, &doc) {
                    if change.author == author && !standing.contains(&change.hash) {
                        if self.config.progress {
                            eprintln!("a member's contribution does not stand on node 0");
                        }
                        return false;
                    }
                }
            }
        }
        true
    }

    /// Contributions that stand on node 0.
    fn standing_at_0(&mut self) -> u64 {
        let space = self.space;
        let Some(service) = self.nodes[0].service.as_mut() else {
            return 0;
        };
        let replica = service.replica_mut();
        replica
            .docs(&space)
            .into_iter()
            .map(|doc| replica.changes_after(&space, &doc, &[]).len() as u64)
            .sum()
    }

    /// A node's heads of every document in the space.
    fn node_state(&mut self, i: usize) -> [u8; 32] {
        let space = self.space;
        let Some(service) = self.nodes[i].service.as_mut() else {
            return [0; 32];
        };
        let mut h = Sha256::new();
        for (doc, heads) in service.heads(&space) {
            h.update(doc.0);
            h.update((heads.len() as u32).to_be_bytes());
            for head in heads {
                h.update(head.0);
            }
        }
        h.finalize().into()
    }

    /// Contributions held by every node.
    fn held_by_all(&mut self) -> u64 {
        let space = self.space;
        let mut counts: HashMap<ChangeHash, u32> = HashMap::new();
        let mut up = 0;
        for n in &mut self.nodes {
            let Some(service) = n.service.as_mut().or(n.parked.as_mut()) else {
                continue;
            };
            up += 1;
            let replica = service.replica_mut();
            for doc in replica.docs(&space) {
                for h in replica.changes_after(&space, &doc, &[]) {
                    *counts.entry(h).or_default() += 1;
                }
            }
        }
        counts.values().filter(|c| **c == up).count() as u64
    }

    fn report(&mut self, bound: u64) -> SimReport {
        let n = self.config.nodes as f64;
        let since = self
            .last_write
            .max(self.heal_at.unwrap_or(0))
            .max(self.last_up);
        let to_converge = self
            .converged_at
            .map(|at| at.saturating_sub(since) as f64 / 1_000.0);
        let delivered = if self.converged_at.is_some() {
            self.written
        } else {
            self.held_by_all()
        };
        let mut digest = Sha256::new();
        for i in 0..self.nodes.len() {
            digest.update(self.node_state(i));
            let held = self.nodes[i]
                .service
                .as_ref()
                .map_or(0, |s| s.replica().contributions());
            digest.update(held.to_be_bytes());
        }
        digest.update(self.messages.to_be_bytes());
        digest.update(self.bytes.to_be_bytes());
        SimReport {
            nodes: self.config.nodes,
            ideas: self.config.ideas,
            contributions: self.written,
            delivered_fraction: if self.written == 0 {
                1.0
            } else {
                delivered as f64 / self.written as f64
            },
            converged: self.converged_at.is_some(),
            virtual_seconds_to_converge: to_converge,
            bound_seconds: bound as f64 / 1_000.0,
            within_bound: to_converge.is_some_and(|s| s * 1_000.0 <= bound as f64),
            messages_per_node: self.messages as f64 / n,
            bytes_per_node: self.bytes as f64 / n,
            sync_bytes_per_node: self.sync_bytes as f64 / n,
            wall_seconds: 0.0,
            digest: hex::encode(digest.finalize()),
            seed: self.config.seed,
            replica: self.config.replica,
            loss: self.config.loss,
            partition_seconds: self.config.partition_seconds,
            churn: self.config.churn,
            last_write_seconds: self.last_write as f64 / 1_000.0,
            heal_seconds: self.heal_at.map(|t| t as f64 / 1_000.0),
            virtual_seconds: self.now as f64 / 1_000.0,
            writes_failed: self.writes_failed,
            bans: self.bans,
            removed: self.removed.len(),
            writes_void: self.writes_void,
            late_writes: self.late_writes,
            whited_out: self.written.saturating_sub(self.standing_at_0()),
        }
    }
}
