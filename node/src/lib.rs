//! # agora-node
//!
//! The library that runs an Agora node. Entry point: [`Node::start`] with a [`Config`], which
//! returns a [`NodeHandle`] for everything a program (the CLI, the HTTP API, a test, your app)
//! can do with a node.
//!
//! Layout (see `docs/ARCHITECTURE.md`):
//! - [`service`]: every decision of the node, as a state machine without I/O: inputs (commands,
//!   gossip, peer events, sync messages, ticks) in, store writes and outputs out.
//! - [`engine`]: the thread that owns the service and the store: feeds inputs in groups, applies
//!   writes, flushes once per group, then carries out the outputs.
//! - [`handle`]: [`NodeHandle`], typed commands to the engine.
//! - [`store`]: the [`Storage`](store::Storage) trait (sled, memory) and the on-disk schema.
//! - [`network`]: the only module that imports libp2p; one task owns the swarm and translates.
//! - [`api`]: the only module that knows HTTP; axum on 127.0.0.1 with a bearer token.
//! - [`status`]: the status types the API and the CLI share.
//! - [`config`]: settings, defaults, the TOML file and the data directory layout.
#![deny(missing_docs)]

pub mod api;
pub mod config;
pub mod engine;
pub mod error;
pub mod handle;
pub mod network;
pub mod service;
pub mod status;
pub mod store;

pub use config::Config;
pub use engine::now_ms;
pub use error::NodeError;
pub use handle::NodeHandle;
pub use service::{Counters, NodeEvent, ServiceError, SpaceInfo};
pub use status::{NetStatus, NodeStatus, PeerInfo, SyncInfo, SyncState};

/// The errors of commands to a running node (the service's errors).
pub type EngineError = ServiceError;

use agora_protocol::Identity;
use handle::Inner;
use service::Service;
use std::path::Path;
use store::{SledStorage, Store, StoreError, Write};
use tokio::sync::{broadcast, mpsc, watch};

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

/// The libp2p peer id of a node whose identity is `identity`: its transport key is derived from
/// the identity's secret (PROTOCOL 14.9), so the peer id says nothing of the author key.
pub fn peer_id_of(identity: &Identity) -> String {
    network::peer_id(agora_protocol::keys::transport_seed(identity)).to_string()
}

/// Opens the store in a data dir, translating "locked" into a clear error.
pub fn open_store(config: &Config) -> Result<Store<SledStorage>, NodeError> {
    let storage =
        SledStorage::open(&config.store_dir(), config.cache_bytes).map_err(|e| match e {
            StoreError::Locked { .. } => NodeError::Locked(config.data_dir.clone()),
            other => NodeError::Store(other),
        })?;
    Ok(Store::new(storage)?)
}

/// Creates the data dir, the identity and the store without starting a node (`agora init`).
pub fn init(config: &Config, name: Option<&str>) -> Result<(Identity, bool), NodeError> {
    config.ensure_data_dir()?;
    let (identity, created) = load_or_create_identity(&config.key_path())?;
    let store = open_store(config)?;
    if let Some(name) = name {
        let name = agora_protocol::idea::validate_name(name).map_err(ServiceError::from)?;
        store.apply(vec![Write::display_name(&name)])?;
    }
    store.flush()?;
    Ok((identity, created))
}

/// Starts nodes.
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
        let net_config = network::NetConfig {
            listen: config.listen_addrs()?,
            peers: config.peer_addrs()?,
            mdns: config.mdns,
            heartbeat: std::time::Duration::from_millis(config.heartbeat_ms),
            redial_every: std::time::Duration::from_millis(config.redial_ms),
            sync_timeout: std::time::Duration::from_millis(config.service_config().sync_timeout),
        };
        let store = open_store(&config)?;
        let (events, _) = broadcast::channel(1024);
        let started = std::time::Instant::now();
        // The transport key is not the author key: a peer id says nothing of who runs the node.
        let transport_seed = agora_protocol::keys::transport_seed(&identity);
        let service = Service::open(
            store.clone(),
            identity.clone(),
            crate::service::ServiceConfig {
                transport_id: network::peer_id(transport_seed).to_bytes(),
                ..config.service_config()
            },
            random_bytes(),
        )?;
        tracing::info!(target: "agora::node", elapsed_ms = started.elapsed().as_millis() as u64, "store loaded");
        let (net_tx, net_rx) = mpsc::channel(4096);
        let (engine, engine_thread) = engine::spawn(
            service,
            store.storage().clone(),
            net_tx,
            events.clone(),
            8192,
        );
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let event_loop =
            match network::new(transport_seed, net_config, engine.clone(), net_rx, cmd_rx) {
                Ok(l) => l,
                Err(e) => {
                    engine.stop().await;
                    let _ = tokio::task::spawn_blocking(move || engine_thread.join()).await;
                    return Err(e.into());
                }
            };
        let peer_id = event_loop.peer_id();
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let net_task = tokio::spawn(event_loop.run(shutdown_rx.clone()));
        let token = hex::encode(random_bytes::<32>());
        let handle = NodeHandle {
            inner: std::sync::Arc::new(Inner {
                engine,
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
