//! [`NodeHandle`]: everything a program (the CLI through the API, a test, your app) can do with a
//! running node. Each method is one typed [`Command`] to the engine thread, answered through a
//! oneshot channel once its writes are durable.

use crate::config;
use crate::engine::EngineHandle;
use crate::error::NodeError;
use crate::network::{self, NetCommand, NetView, NetworkError};
use crate::service::{Command, NodeEvent, Reply, ServiceError, ServiceStatus};
use crate::service::{Counters, SpaceInfo};
use crate::status::{NetStatus, NodeStatus, SyncInfo};
use agora_protocol::automerge::ChangeHash;
use agora_protocol::idea::{Idea, IdeaDraft, Status, Vote};
use agora_protocol::{AuthorId, DocId, SpaceId};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

pub(crate) type Tasks = (
    tokio::task::JoinHandle<()>,
    Option<tokio::task::JoinHandle<()>>,
    std::thread::JoinHandle<()>,
);

pub(crate) struct Inner {
    pub engine: EngineHandle,
    pub net: mpsc::Sender<NetCommand>,
    pub author: AuthorId,
    pub peer_id: String,
    pub events: broadcast::Sender<NodeEvent>,
    pub token: String,
    pub data_dir: PathBuf,
    pub api_addr: std::sync::OnceLock<SocketAddr>,
    pub shutdown: watch::Sender<bool>,
    pub tasks: std::sync::Mutex<Option<Tasks>>,
}

/// A handle to a running node. Cheap to clone. Dropping it does not stop the node: call
/// [`NodeHandle::shutdown`].
#[derive(Clone)]
pub struct NodeHandle {
    pub(crate) inner: std::sync::Arc<Inner>,
}

/// The service answered a command with a reply of another kind: a bug in this crate.
fn unexpected(what: &str, reply: Reply) -> ! {
    unreachable!("the service answers {what} with its own kind of reply, not {reply:?}")
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

    /// Runs one command on the engine thread and returns its reply (after its writes are
    /// durable).
    pub async fn request(&self, command: Command) -> Result<Reply, ServiceError> {
        self.inner.engine.request(command).await
    }

    async fn net_view(&self) -> Result<NetView, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .net
            .send(NetCommand::Status(tx))
            .await
            .map_err(|_| NetworkError::Stopped)?;
        Ok(rx.await.map_err(|_| NetworkError::Stopped)?)
    }

    async fn service_status(&self) -> Result<ServiceStatus, ServiceError> {
        match self.request(Command::Status).await? {
            Reply::Status(s) => Ok(*s),
            other => unexpected("Status", other),
        }
    }

    fn sync_infos(view: &NetView, service: &ServiceStatus) -> Vec<SyncInfo> {
        service
            .sync
            .iter()
            .filter_map(|p| {
                Some(SyncInfo {
                    peer_id: view.names.get(&p.peer)?.clone(),
                    space: p.space,
                    state: p.state,
                })
            })
            .collect()
    }

    /// The network's view.
    pub async fn net_status(&self) -> Result<NetStatus, NodeError> {
        let view = self.net_view().await?;
        let service = self.service_status().await?;
        Ok(NetStatus {
            sync: Self::sync_infos(&view, &service),
            sync_failures: service.sync_failures,
            banned: service.banned,
            peer_id: view.peer_id,
            listen_addrs: view.listen_addrs,
            peers: view.peers,
            queued: view.queued,
        })
    }

    /// Full status.
    pub async fn status(&self) -> Result<NodeStatus, NodeError> {
        let view = self.net_view().await?;
        let service = self.service_status().await?;
        Ok(NodeStatus {
            author: self.author(),
            sync: Self::sync_infos(&view, &service),
            name: service.name,
            peer_id: view.peer_id,
            listen_addrs: view.listen_addrs,
            peers: view.peers,
            api: self.api_addr(),
            spaces: service.spaces,
            contributions: service.contributions,
            counters: service.counters,
            queued: view.queued,
        })
    }

    /// Dials a peer.
    pub async fn dial(&self, addr: &str) -> Result<(), NodeError> {
        let addr = network::parse_addr(addr)?;
        self.inner
            .net
            .send(NetCommand::Dial(addr))
            .await
            .map_err(|_| NetworkError::Stopped)?;
        Ok(())
    }

    /// Creates a space and joins it.
    pub async fn create_space(&self, name: &str) -> Result<SpaceId, ServiceError> {
        let name = name.to_string();
        match self.request(Command::CreateSpace { name }).await? {
            Reply::Space(id) => Ok(id),
            other => unexpected("CreateSpace", other),
        }
    }

    /// Joins a space by id.
    pub async fn join_space(&self, space: SpaceId) -> Result<(), ServiceError> {
        self.request(Command::JoinSpace { space }).await.map(drop)
    }

    /// Joined spaces.
    pub async fn spaces(&self) -> Result<Vec<SpaceInfo>, ServiceError> {
        match self.request(Command::Spaces).await? {
            Reply::Spaces(v) => Ok(v),
            other => unexpected("Spaces", other),
        }
    }

    /// Posts an idea; returns its id once it is durable.
    pub async fn create_idea(
        &self,
        space: SpaceId,
        draft: IdeaDraft,
    ) -> Result<DocId, ServiceError> {
        match self.request(Command::CreateIdea { space, draft }).await? {
            Reply::Created(id) => Ok(id),
            other => unexpected("CreateIdea", other),
        }
    }

    /// Ideas of a space, newest first.
    pub async fn list_ideas(&self, space: SpaceId) -> Result<Vec<Idea>, ServiceError> {
        match self.request(Command::ListIdeas { space }).await? {
            Reply::Ideas(v) => Ok(v),
            other => unexpected("ListIdeas", other),
        }
    }

    /// One idea.
    pub async fn show_idea(&self, idea: DocId) -> Result<Idea, ServiceError> {
        match self.request(Command::ShowIdea { idea }).await? {
            Reply::Idea(i) => Ok(*i),
            other => unexpected("ShowIdea", other),
        }
    }

    /// Comments on an idea.
    pub async fn comment(&self, idea: DocId, text: &str) -> Result<(), ServiceError> {
        let text = text.to_string();
        self.request(Command::Comment { idea, text })
            .await
            .map(drop)
    }

    /// Votes on an idea.
    pub async fn vote(&self, idea: DocId, vote: Vote) -> Result<(), ServiceError> {
        self.request(Command::Vote { idea, vote }).await.map(drop)
    }

    /// Sets an idea's status.
    pub async fn set_status(&self, idea: DocId, status: Status) -> Result<(), ServiceError> {
        self.request(Command::SetStatus { idea, status })
            .await
            .map(drop)
    }

    /// Sets our display name (and publishes it to every joined space).
    pub async fn set_name(&self, name: &str) -> Result<(), ServiceError> {
        let name = name.to_string();
        self.request(Command::SetName { name }).await.map(drop)
    }

    /// Ingest counters.
    pub async fn counters(&self) -> Result<Counters, ServiceError> {
        Ok(self.service_status().await?.counters)
    }

    /// Heads of every document in a space (for convergence checks).
    pub async fn heads(
        &self,
        space: SpaceId,
    ) -> Result<BTreeMap<DocId, Vec<ChangeHash>>, ServiceError> {
        match self.request(Command::Heads { space }).await? {
            Reply::Heads(h) => Ok(h),
            other => unexpected("Heads", other),
        }
    }

    /// Whether the store holds a contribution with exactly these bytes.
    pub async fn store_contains(&self, bytes: Vec<u8>) -> Result<bool, ServiceError> {
        match self.request(Command::StoreContains { bytes }).await? {
            Reply::Contains(b) => Ok(b),
            other => unexpected("StoreContains", other),
        }
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
