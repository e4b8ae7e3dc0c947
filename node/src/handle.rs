//! [`NodeHandle`]: everything a program (the CLI through the API, a test, your app) can do with a
//! running node. Each method is one typed [`Command`] to the engine thread, answered through a
//! oneshot channel once its writes are durable.

use crate::config;
use crate::engine::EngineHandle;
use crate::error::NodeError;
use crate::network::{self, NetCommand, NetView, NetworkError};
use crate::service::{Command, MemberInfo, NodeEvent, Reply, ServiceError, ServiceStatus};
use crate::service::{Counters, SpaceInfo};
use crate::status::{NetStatus, NodeStatus, SyncInfo};
use agora_protocol::automerge::ChangeHash;
use agora_protocol::idea::{Idea, IdeaDraft, Status, Vote};
use agora_protocol::join::{JoinRequest, JoinResponse};
use agora_protocol::membership::Role;
use agora_protocol::ticket::Ticket;
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

    /// Creates a private space owned by this node.
    pub async fn create_private_space(&self, name: &str) -> Result<SpaceId, ServiceError> {
        let name = name.to_string();
        match self.request(Command::CreatePrivateSpace { name }).await? {
            Reply::Space(id) => Ok(id),
            other => unexpected("CreatePrivateSpace", other),
        }
    }

    /// The members of a private space, owner first.
    pub async fn members(&self, space: SpaceId) -> Result<Vec<MemberInfo>, ServiceError> {
        match self.request(Command::Members { space }).await? {
            Reply::Members(m) => Ok(m),
            other => unexpected("Members", other),
        }
    }

    /// Invites to a private space: a ticket for `role`, valid for `valid_for` seconds and
    /// `uses` admissions, holding the addresses of this node and of the members connected to it
    /// (so that the newcomer can join while this node is offline).
    pub async fn invite(
        &self,
        space: SpaceId,
        role: Role,
        valid_for: u64,
        uses: u64,
    ) -> Result<String, NodeError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let expires = now.saturating_add(valid_for);
        let invitation = match self
            .request(Command::Invite {
                space,
                role,
                expires,
                uses,
            })
            .await?
        {
            Reply::Invitation(i) => i,
            other => unexpected("Invite", other),
        };
        let view = self.net_view().await?;
        // Other members' nodes this node is connected to, as their hellos proved them.
        let members: std::collections::BTreeSet<crate::service::PeerHandle> = self
            .members(space)
            .await?
            .into_iter()
            .flat_map(|m| m.peers)
            .collect();
        let mut addrs: Vec<String> = view.listen_addrs.clone();
        for (peer, listen) in &view.dialable {
            if members.contains(peer) {
                addrs.extend(listen.iter().cloned());
            }
        }
        addrs.retain(|a| a.len() <= agora_protocol::ticket::MAX_ADDR_BYTES);
        addrs.dedup();
        addrs.truncate(agora_protocol::ticket::MAX_TICKET_ADDRS);
        let ticket = Ticket {
            space,
            invite: invitation.invite,
            secret: invitation.secret,
            addrs,
        };
        Ok(ticket.encode())
    }

    /// Joins a private space with a ticket: asks the members at the ticket's addresses, in
    /// order, until one admits this node; then holds the space. A refusal that no other member
    /// would answer differently (expired, revoked, used up) ends the attempt at once.
    pub async fn join_ticket(&self, text: &str) -> Result<SpaceId, NodeError> {
        let ticket =
            Ticket::decode(text.trim()).map_err(|e| NodeError::BadTicket(e.to_string()))?;
        let space = ticket.space;
        if let Ok(members) = self.members(space).await {
            if members.iter().any(|m| m.author == self.author()) {
                return Err(NodeError::Join(
                    "this node is a member of that space already".into(),
                ));
            }
        }
        let redeem = match self
            .request(Command::MakeRedeem {
                space,
                invite: ticket.invite,
                secret: ticket.secret,
            })
            .await?
        {
            Reply::Redeem(r) => *r,
            other => unexpected("MakeRedeem", other),
        };
        let mut tried = Vec::new();
        for addr in &ticket.addrs {
            let Ok(parsed) = network::parse_addr(addr) else {
                tried.push(format!("{addr}: not an address"));
                continue;
            };
            let (tx, rx) = oneshot::channel();
            self.inner
                .net
                .send(NetCommand::Join {
                    addr: parsed,
                    request: Box::new(JoinRequest {
                        space,
                        redeem: redeem.clone(),
                    }),
                    reply: tx,
                })
                .await
                .map_err(|_| NetworkError::Stopped)?;
            let answer = rx.await.map_err(|_| NetworkError::Stopped)?;
            match answer {
                Ok(JoinResponse::Admitted(ops)) => {
                    match self.request(Command::JoinPrivate { space, ops }).await {
                        Ok(_) => return Ok(space),
                        Err(e) => tried.push(format!("{addr}: {e}")),
                    }
                }
                Ok(JoinResponse::Refused(code)) => {
                    let why = refusal_text(&code);
                    if matches!(
                        code.as_str(),
                        "expired" | "revoked" | "used_up" | "already_member"
                    ) {
                        return Err(NodeError::Join(format!("the ticket was refused: {why}")));
                    }
                    tried.push(format!("{addr}: {why}"));
                }
                Err(e) => tried.push(format!("{addr}: unreachable ({e})")),
            }
        }
        Err(NodeError::Join(if tried.is_empty() {
            "the ticket holds no member address to ask".into()
        } else {
            format!("no member admitted this node: {}", tried.join("; "))
        }))
    }

    /// Removes a member from a private space (a new epoch starts: it cannot read what follows).
    pub async fn remove_member(
        &self,
        space: SpaceId,
        member: AuthorId,
    ) -> Result<(), ServiceError> {
        self.request(Command::RemoveMember { space, member })
            .await
            .map(drop)
    }

    /// Changes a member's role in a private space.
    pub async fn set_role(
        &self,
        space: SpaceId,
        member: AuthorId,
        role: Role,
    ) -> Result<(), ServiceError> {
        self.request(Command::SetRole {
            space,
            member,
            role,
        })
        .await
        .map(drop)
    }

    /// Withdraws the invitation a ticket holds (an admin's): the ticket admits no one from then
    /// on. The space.
    pub async fn revoke_ticket(&self, text: &str) -> Result<SpaceId, NodeError> {
        let ticket =
            Ticket::decode(text.trim()).map_err(|e| NodeError::BadTicket(e.to_string()))?;
        self.request(Command::RevokeInvite {
            space: ticket.space,
            invite: ticket.invite,
        })
        .await?;
        Ok(ticket.space)
    }

    /// Renames a private space.
    pub async fn rename_space(&self, space: SpaceId, name: &str) -> Result<(), ServiceError> {
        let name = name.to_string();
        self.request(Command::RenameSpace { space, name })
            .await
            .map(drop)
    }

    /// Leaves a private space.
    pub async fn leave_space(&self, space: SpaceId) -> Result<(), ServiceError> {
        self.request(Command::LeaveSpace { space }).await.map(drop)
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

/// What a join refusal's code means, for a person.
fn refusal_text(code: &str) -> String {
    match code {
        "expired" => "the ticket has expired; ask for a new one".into(),
        "revoked" => "the ticket was revoked; ask for a new one".into(),
        "used_up" => {
            "the ticket has been used as many times as it allows; ask for a new one".into()
        }
        "already_member" => "this node is a member of the space already".into(),
        "unknown_invite" => "that member does not know this invitation (yet)".into(),
        "unknown_space" => "that node is not a member of the space".into(),
        "bad_redeem" => "the ticket does not check out (was it copied whole?)".into(),
        "busy" | "unavailable" => "that member is busy; try again".into(),
        other => format!(
            "refused ({})",
            other
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(64)
                .collect::<String>()
        ),
    }
}
