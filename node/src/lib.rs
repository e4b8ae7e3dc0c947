//! # agora-node
//!
//! The library that runs an Agora node. Entry point: [`Node::start`] with a [`Config`], which
//! returns a [`NodeHandle`] for everything a program (the CLI, the HTTP API, a test, your app)
//! can do with a node.
//!
//! Layout (see `docs/ARCHITECTURE.md`):
//! - [`store`]: sled, schema-versioned, owned by the engine thread.
//! - [`engine`]: the single owner of documents and store; verifies, applies and persists in
//!   batches; signs local edits.
//! - [`network`]: the only module that imports libp2p; one task owns the swarm.
//! - [`api`]: the only module that knows HTTP and JSON; axum on 127.0.0.1 with a bearer token.
//! - [`config`]: settings, defaults, the TOML file and the data directory layout.
#![deny(missing_docs)]

pub mod api;
pub mod config;
pub mod engine;
pub mod network;
pub mod store;

pub use config::Config;
pub use engine::{Counters, EngineError, NodeEvent};
pub use network::{NetStatus, PeerInfo, SyncInfo, SyncState};

use agora_protocol::automerge::ChangeHash;
use agora_protocol::idea::{Idea, IdeaDraft, Status, Vote};
use agora_protocol::{AuthorId, DocId, Identity, SpaceId};
use engine::{Engine, EngineHandle};
use network::NetCommand;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// Errors while starting or talking to a node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// Filesystem trouble with the data directory or key file.
    #[error("{what} {path}: {source}")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The key file exists but does not hold a key.
    #[error("the identity file {0} is damaged: restore it from a backup, or move it away to create a new identity")]
    BadKey(PathBuf),
    /// Another process has the store open.
    #[error("another agora node is already using {0}: stop it first, or pick another --data-dir")]
    Locked(PathBuf),
    /// Store error.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// Engine error.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Network error.
    #[error(transparent)]
    Network(#[from] network::NetworkError),
    /// Configuration error.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
}

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // The OS random source failing is not something a node can work around.
    getrandom::fill(&mut b).expect("the operating system's random source failed");
    b
}

/// Loads the identity from `path`, or creates one (owner-only permissions) if it is missing.
pub fn load_or_create_identity(path: &Path) -> Result<(Identity, bool), NodeError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mut seed = [0u8; 32];
            hex::decode_to_slice(text.trim(), &mut seed)
                .map_err(|_| NodeError::BadKey(path.to_path_buf()))?;
            Ok((Identity::from_seed(seed), false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let identity = Identity::from_seed(random_bytes());
            config::write_private(path, hex::encode(identity.seed()).as_bytes()).map_err(
                |source| NodeError::Io {
                    what: "cannot write the identity file",
                    path: path.to_path_buf(),
                    source,
                },
            )?;
            Ok((identity, true))
        }
        Err(source) => Err(NodeError::Io {
            what: "cannot read the identity file",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The libp2p peer id that the identity's secret yields.
pub fn peer_id_of(identity: &Identity) -> String {
    let mut secret = identity.seed();
    libp2p::identity::Keypair::ed25519_from_bytes(&mut secret)
        .map(|k| k.public().to_peer_id().to_string())
        .expect("an ed25519 seed is always 32 valid bytes")
}

/// Opens the store in a data dir, translating "locked" into a clear error.
pub fn open_store(config: &Config) -> Result<store::Store, NodeError> {
    let dir = config.store_dir();
    store::Store::open(&dir, config.cache_bytes).map_err(|e| match e {
        store::StoreError::Sled {
            source: sled::Error::Io(ref io),
            ..
        } if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock") => {
            NodeError::Locked(config.data_dir.clone())
        }
        other => NodeError::Store(other),
    })
}

/// Creates the data dir, the identity and the store without starting a node (`agora init`).
pub fn init(config: &Config, name: Option<&str>) -> Result<(Identity, bool), NodeError> {
    config.ensure_data_dir()?;
    let (identity, created) = load_or_create_identity(&config.key_path())?;
    let store = open_store(config)?;
    if let Some(name) = name {
        let name = agora_protocol::idea::validate_name(name).map_err(EngineError::from)?;
        store.set_display_name(&name)?;
    }
    store.flush()?;
    Ok((identity, created))
}

/// A running node. Dropping it does not stop the node: call [`NodeHandle::shutdown`].
pub struct Node;

impl Node {
    /// Starts a node: identity, store, engine thread, network task, HTTP API. Must be called
    /// inside a tokio runtime.
    pub async fn start(config: Config) -> Result<NodeHandle, NodeError> {
        config.ensure_data_dir()?;
        let (identity, created) = load_or_create_identity(&config.key_path())?;
        if created {
            tracing::info!(target: "agora::node", author = %identity.author(), "created a new identity");
        }
        let store = open_store(&config)?;
        let (events, _) = broadcast::channel(1024);
        let started = std::time::Instant::now();
        let mut engine = Engine::open(store, identity.clone(), random_bytes(), events.clone())?;
        tracing::info!(target: "agora::node", elapsed_ms = started.elapsed().as_millis() as u64, "store loaded");
        let (net_tx, net_rx) = mpsc::channel(4096);
        engine.set_network(net_tx);
        let (engine_handle, engine_thread) = engine::spawn(engine, 8192);
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let net_config = network::NetConfig {
            listen: config.listen_addrs()?,
            peers: config.peer_addrs()?,
            mdns: config.mdns,
            heartbeat: Duration::from_millis(config.heartbeat_ms),
            redial_every: Duration::from_millis(config.redial_ms),
            sync_every: Duration::from_millis(config.sync_ms),
        };
        let event_loop = match network::new(
            identity.seed(),
            net_config,
            engine_handle.clone(),
            net_rx,
            cmd_rx,
        ) {
            Ok(l) => l,
            Err(e) => {
                engine_handle.stop().await;
                let _ = engine_thread.join();
                return Err(e.into());
            }
        };
        let peer_id = event_loop.peer_id().to_string();
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let net_task = tokio::spawn(event_loop.run(shutdown_rx.clone()));
        let token = hex::encode(random_bytes::<32>());
        let handle = NodeHandle {
            inner: std::sync::Arc::new(Inner {
                engine: engine_handle,
                net: cmd_tx,
                author: identity.author(),
                peer_id,
                events,
                token,
                data_dir: config.data_dir.clone(),
                api_addr: std::sync::OnceLock::new(),
                shutdown: shutdown_tx,
                tasks: std::sync::Mutex::new(Some((net_task, None, engine_thread))),
            }),
        };
        let (api_addr, api_task) = match api::serve(&config, handle.clone(), shutdown_rx).await {
            Ok(x) => x,
            Err(e) => {
                handle.shutdown().await;
                return Err(e);
            }
        };
        let _ = handle.inner.api_addr.set(api_addr);
        if let Some((_, api, _)) = handle.inner.tasks.lock().expect("not poisoned").as_mut() {
            *api = Some(api_task);
        }
        config::write_api_file(&config.api_file(), api_addr, &handle.inner.token).map_err(
            |source| NodeError::Io {
                what: "cannot write the API file",
                path: config.api_file(),
                source,
            },
        )?;
        tracing::info!(target: "agora::node", author = %handle.author(), peer = %handle.peer_id(), api = %api_addr, "node started");
        Ok(handle)
    }
}

type Tasks = (
    tokio::task::JoinHandle<()>,
    Option<tokio::task::JoinHandle<()>>,
    std::thread::JoinHandle<()>,
);

struct Inner {
    engine: EngineHandle,
    net: mpsc::Sender<NetCommand>,
    author: AuthorId,
    peer_id: String,
    events: broadcast::Sender<NodeEvent>,
    token: String,
    data_dir: PathBuf,
    api_addr: std::sync::OnceLock<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: std::sync::Mutex<Option<Tasks>>,
}

/// A node's status, as `agora status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    pub contributions: usize,
    /// Ingest counters.
    pub counters: Counters,
    /// Contributions waiting for a subscriber.
    pub queued: u64,
    /// Anti-entropy state per peer and space.
    pub sync: Vec<network::SyncInfo>,
}

/// A space as listed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpaceInfo {
    /// Id.
    pub id: SpaceId,
    /// Name, if known.
    pub name: Option<String>,
    /// Number of ideas held.
    pub ideas: usize,
    /// When this node joined.
    pub joined_at: i64,
}

/// A handle to a running node. Cheap to clone.
#[derive(Clone)]
pub struct NodeHandle {
    inner: std::sync::Arc<Inner>,
}

impl NodeHandle {
    /// Our author id.
    pub fn author(&self) -> AuthorId {
        self.inner.author
    }

    /// Our libp2p peer id.
    pub fn peer_id(&self) -> &str {
        &self.inner.peer_id
    }

    /// The API's bound address.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.inner.api_addr.get().copied()
    }

    /// The API's bearer token.
    pub fn api_token(&self) -> &str {
        &self.inner.token
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// Live events.
    pub fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.inner.events.subscribe()
    }

    async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Engine) -> R + Send + 'static,
    ) -> Result<R, EngineError> {
        self.inner.engine.call(f).await
    }

    /// The network's view.
    pub async fn net_status(&self) -> Result<NetStatus, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .net
            .send(NetCommand::Status(tx))
            .await
            .map_err(|_| network::NetworkError::Stopped)?;
        Ok(rx.await.map_err(|_| network::NetworkError::Stopped)?)
    }

    /// Full status.
    pub async fn status(&self) -> Result<NodeStatus, NodeError> {
        let net = self.net_status().await?;
        let (name, spaces, contributions, counters) = self
            .call(|e| {
                (
                    e.store().display_name().ok().flatten(),
                    e.spaces().len(),
                    e.store().contribution_count(),
                    e.counters(),
                )
            })
            .await?;
        Ok(NodeStatus {
            author: self.author(),
            name,
            peer_id: net.peer_id,
            listen_addrs: net.listen_addrs,
            peers: net.peers,
            api: self.api_addr(),
            spaces,
            contributions,
            counters,
            queued: net.queued,
            sync: net.sync,
        })
    }

    /// Dials a peer.
    pub async fn dial(&self, addr: &str) -> Result<(), NodeError> {
        let addr = network::parse_addr(addr)?;
        self.inner
            .net
            .send(NetCommand::Dial(addr))
            .await
            .map_err(|_| network::NetworkError::Stopped)?;
        Ok(())
    }

    /// Creates a space and joins it.
    pub async fn create_space(&self, name: &str) -> Result<SpaceId, EngineError> {
        let name = name.to_string();
        let id = SpaceId(random_bytes());
        self.call(move |e| e.create_space(id, &name, now_ms()))
            .await?
    }

    /// Joins a space by id.
    pub async fn join_space(&self, id: SpaceId) -> Result<(), EngineError> {
        self.call(move |e| e.join_space(id, None, now_ms())).await?
    }

    /// Joined spaces.
    pub async fn spaces(&self) -> Result<Vec<SpaceInfo>, EngineError> {
        self.call(|e| {
            e.spaces()
                .into_iter()
                .map(|(id, r, ideas)| SpaceInfo {
                    id,
                    name: r.name,
                    ideas,
                    joined_at: r.joined_at,
                })
                .collect()
        })
        .await
    }

    /// Posts an idea; returns its id once it is durable.
    pub async fn create_idea(
        &self,
        space: SpaceId,
        draft: IdeaDraft,
    ) -> Result<DocId, EngineError> {
        let salt = random_bytes();
        self.call(move |e| e.create_idea(space, salt, &draft, now_ms()))
            .await?
    }

    /// Ideas of a space.
    pub async fn list_ideas(&self, space: SpaceId) -> Result<Vec<Idea>, EngineError> {
        self.call(move |e| e.list_ideas(space)).await?
    }

    /// One idea.
    pub async fn show_idea(&self, id: DocId) -> Result<Idea, EngineError> {
        self.call(move |e| e.show_idea(id)).await?
    }

    /// Comments on an idea.
    pub async fn comment(&self, id: DocId, text: &str) -> Result<(), EngineError> {
        let text = text.to_string();
        self.call(move |e| e.comment(id, &text, now_ms())).await?
    }

    /// Votes on an idea.
    pub async fn vote(&self, id: DocId, vote: Vote) -> Result<(), EngineError> {
        self.call(move |e| e.vote(id, vote, now_ms())).await?
    }

    /// Sets an idea's status.
    pub async fn set_status(&self, id: DocId, status: Status) -> Result<(), EngineError> {
        self.call(move |e| e.set_status(id, status, now_ms()))
            .await?
    }

    /// Sets our display name (and publishes it to every joined space).
    pub async fn set_name(&self, name: &str) -> Result<(), EngineError> {
        let name = name.to_string();
        self.call(move |e| e.set_display_name(&name, now_ms()))
            .await?
    }

    /// Ingest counters.
    pub async fn counters(&self) -> Result<Counters, EngineError> {
        self.call(|e| e.counters()).await
    }

    /// Heads of every document in a space (for convergence checks).
    pub async fn heads(
        &self,
        space: SpaceId,
    ) -> Result<BTreeMap<DocId, Vec<ChangeHash>>, EngineError> {
        self.call(move |e| e.heads(space)).await
    }

    /// Whether the store holds a contribution with exactly these bytes.
    pub async fn store_contains(&self, bytes: Vec<u8>) -> Result<bool, EngineError> {
        self.call(move |e| e.store().contains_bytes(&bytes)).await
    }

    /// Stops the node: API, network, then the engine (which saves snapshots and flushes).
    /// Idempotent.
    pub async fn shutdown(&self) {
        let _ = self.inner.shutdown.send(true);
        let tasks = self.inner.tasks.lock().expect("not poisoned").take();
        let Some((net, api, engine_thread)) = tasks else {
            return;
        };
        if let Some(api) = api {
            let _ = api.await;
        }
        let _ = net.await;
        self.inner.engine.stop().await;
        let _ = tokio::task::spawn_blocking(move || engine_thread.join()).await;
        let _ = std::fs::remove_file(self.inner.data_dir.join(config::API_FILE));
        tracing::info!(target: "agora::node", "node stopped");
    }
}
