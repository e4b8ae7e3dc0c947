//! `agora`: the command-line interface of an Agora node.
//!
//! `init` and `up` work on the data directory directly; every other command talks to the running
//! node through its HTTP API, using the address and token the node wrote to `<data dir>/api.json`.

mod term;

use agora_node::config::{ApiFile, Config, API_FILE};
use agora_node::{Node, NodeStatus, PeerInfo, SpaceInfo, SyncState};
use agora_protocol::{AuthorId, DocId, Idea, IdeaDraft, SpaceId};
use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use term::{json_safe, term_safe, term_safe_multiline};

#[derive(Parser)]
#[command(
    name = "agora",
    version,
    about = "Agora: share ideas with your team, peer to peer"
)]
struct Cli {
    /// Data directory (identity, store, API file). Default: the platform's data dir.
    #[arg(long, global = true, env = "AGORA_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the identity and the store; print the author id and peer id.
    Init {
        /// Your display name, shown next to your ideas and comments.
        #[arg(long)]
        name: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the node in the foreground (Ctrl-C stops it cleanly).
    Up(UpArgs),
    /// Show the node's identity, addresses, peers and counters.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Spaces: a team's shared area.
    #[command(subcommand)]
    Space(SpaceCmd),
    /// Ideas in a space.
    #[command(subcommand)]
    Idea(IdeaCmd),
    /// Connected peers.
    Peers {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Dial a peer by multiaddr (e.g. /ip4/192.168.1.20/tcp/7400).
    Dial {
        /// The peer's multiaddr.
        addr: String,
    },
    /// Set your display name (published to every space you are in).
    Name {
        /// The name.
        name: String,
    },
}

#[derive(Args)]
struct UpArgs {
    /// Multiaddr to listen on (repeatable). Default: /ip4/0.0.0.0/tcp/0.
    #[arg(long, env = "AGORA_LISTEN", value_delimiter = ',')]
    listen: Vec<String>,
    /// Multiaddr of a peer to dial (repeatable).
    #[arg(long, env = "AGORA_PEERS", value_delimiter = ',')]
    peer: Vec<String>,
    /// HOST:PORT for the HTTP API and web UI (loopback only). Default: 127.0.0.1:7420.
    #[arg(long, env = "AGORA_API")]
    api: Option<String>,
    /// Do not discover peers by mDNS.
    #[arg(long, env = "AGORA_NO_MDNS")]
    no_mdns: bool,
}

#[derive(Subcommand)]
enum SpaceCmd {
    /// Create a private space (you are its owner); prints its id. Invite others with
    /// `space invite`.
    Create {
        /// The space's name (members see it; others do not).
        name: String,
        /// Create an open space instead: anyone who learns its id can read and write it, and
        /// its content travels in the clear.
        #[arg(long)]
        open: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Join a private space with a ticket (`agora2:...`), or an open space by id with --open.
    Join {
        /// The ticket someone gave you (or, with --open, an open space's id).
        ticket: String,
        /// Join an open space by its id.
        #[arg(long)]
        open: bool,
    },
    /// Make a ticket that lets someone join a private space; prints it.
    Invite {
        /// The space id.
        space_id: String,
        /// The newcomer's role: member (reads and writes), reader (reads only) or admin.
        #[arg(long, default_value = "member")]
        role: String,
        /// How long the ticket stays valid (e.g. 30m, 12h, 7d).
        #[arg(long, default_value = "7d")]
        expires: String,
        /// How many people it admits.
        #[arg(long, default_value_t = 1)]
        uses: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Withdraw a ticket you (or another admin) made: it admits no one from now on, and a
    /// newcomer who tries it is told it was revoked.
    Revoke {
        /// The ticket.
        ticket: String,
    },
    /// List a private space's members with their roles and names.
    Members {
        /// The space id.
        space_id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a member from a private space: its later contributions are refused, and it
    /// cannot read anything written after the removal (keys rotate).
    Remove {
        /// The space id.
        space_id: String,
        /// The member's author id (from `space members`).
        author_id: String,
    },
    /// Change a member's role: member, reader or admin.
    Role {
        /// The space id.
        space_id: String,
        /// The member's author id.
        author_id: String,
        /// The new role.
        role: String,
    },
    /// Rename a private space (every member sees the new name).
    Rename {
        /// The space id.
        space_id: String,
        /// The new name.
        name: String,
    },
    /// Leave a private space.
    Leave {
        /// The space id.
        space_id: String,
    },
    /// List joined spaces.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// A role as the CLI takes it.
fn parse_role(role: &str) -> Result<&'static str> {
    match role.trim().to_lowercase().as_str() {
        "member" => Ok("member"),
        "reader" => Ok("reader"),
        "admin" => Ok("admin"),
        _ => bail!("the role must be member, reader or admin"),
    }
}

/// The answer to `POST /spaces/{id}/invites`, and what `space invite --json` prints.
#[derive(Serialize, Deserialize)]
struct TicketOut {
    ticket: String,
}

/// One member, as `GET /spaces/{id}/members` answers.
#[derive(Serialize, Deserialize)]
struct MemberOut {
    author: AuthorId,
    role: String,
    name: Option<String>,
}

#[derive(Subcommand)]
enum IdeaCmd {
    /// Post an idea; prints its id.
    Add {
        /// The space id.
        #[arg(long)]
        space: String,
        /// Title.
        #[arg(long)]
        title: String,
        /// Body.
        #[arg(long, default_value = "")]
        body: String,
        /// Tag (repeatable).
        #[arg(long)]
        tag: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the ideas of a space.
    List {
        /// The space id.
        #[arg(long)]
        space: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one idea with its comments and votes.
    Show {
        /// The idea id.
        idea_id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Comment on an idea.
    Comment {
        /// The idea id.
        idea_id: String,
        /// The comment.
        text: String,
    },
    /// Vote for an idea (or against it with --down).
    Vote {
        /// The idea id.
        idea_id: String,
        /// Vote against.
        #[arg(long)]
        down: bool,
    },
    /// Set an idea's status: open, accepted, in_progress, done or declined.
    Status {
        /// The idea id.
        idea_id: String,
        /// The new status.
        status: String,
    },
}

fn data_dir(cli: &Cli) -> Result<PathBuf> {
    match &cli.data_dir {
        Some(d) => Ok(d.clone()),
        None => agora_node::config::default_data_dir().ok_or_else(|| {
            anyhow!("cannot find a data directory: pass --data-dir or set AGORA_DATA_DIR")
        }),
    }
}

/// A client of the running node's API.
struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
    dir: PathBuf,
}

impl Client {
    fn connect(dir: PathBuf) -> Result<Client> {
        let path = dir.join(API_FILE);
        let text = std::fs::read_to_string(&path).map_err(|_| {
            anyhow!(
                "no node is running for {}: start one with `agora --data-dir {} up`",
                dir.display(),
                dir.display()
            )
        })?;
        let api: ApiFile = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is damaged: restart the node to rewrite it",
                path.display()
            )
        })?;
        Ok(Client {
            base: format!("http://{}/api/v1", api.addr),
            token: api.token,
            http: reqwest::Client::new(),
            dir,
        })
    }

    /// Sends one request and reads the answer as a `T`; an error answer (`{"error": "..."}`)
    /// becomes the error.
    async fn send<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T> {
        // The CLI never shows the idea a write returns: spare the node reading it back.
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(&self.token)
            .header("Prefer", "return=minimal");
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() {
                anyhow!(
                    "no node is running for {} (its API does not answer): start one with `agora --data-dir {} up`",
                    self.dir.display(),
                    self.dir.display()
                )
            } else {
                anyhow!("talking to the node failed: {e}")
            }
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.unwrap_or_default();
        if !status.is_success() {
            let msg = serde_json::from_slice::<ApiError>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| "unexpected answer from the node".to_string());
            bail!("{msg}");
        }
        // 204 No Content (a write with `return=minimal`) has no body.
        let bytes: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        serde_json::from_slice(bytes).map_err(|e| anyhow!("unexpected answer from the node: {e}"))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(reqwest::Method::GET, path, None).await
    }

    async fn post<T: DeserializeOwned>(&self, path: &str, body: serde_json::Value) -> Result<T> {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }
}

/// The body of every error answer of the API.
#[derive(Deserialize)]
struct ApiError {
    error: String,
}

/// The answer to `POST /spaces`, and what `space create --json` prints.
#[derive(Serialize, Deserialize)]
struct SpaceCreated {
    id: SpaceId,
    name: String,
}

/// The answer to `POST /join`.
#[derive(Deserialize)]
struct Joined {
    id: SpaceId,
}

/// The answer to `POST /spaces/{id}/ideas`, and what `idea add --json` prints.
#[derive(Serialize, Deserialize)]
struct IdeaCreated {
    id: DocId,
}

/// What `init --json` prints.
#[derive(Serialize)]
struct InitOutput {
    author: AuthorId,
    peer_id: String,
    data_dir: PathBuf,
    created: bool,
}

/// Prints `v` as pretty JSON with its keys sorted, as the CLI always has; characters that could
/// drive the terminal are written as JSON escapes (see [`json_safe`]).
fn print_json<T: Serialize>(v: &T) {
    let value = serde_json::to_value(v).unwrap_or_default();
    let text = serde_json::to_string_pretty(&value).unwrap_or_default();
    println!("{}", json_safe(&text));
}

/// Checks an id locally so that a typo gets a clear message without a round trip.
fn check_id<T: std::str::FromStr>(s: &str) -> Result<String>
where
    T::Err: std::fmt::Display,
{
    s.trim()
        .parse::<T>()
        .map_err(|e| anyhow!("{e}: copy the id from `agora space list` or `agora idea list`"))?;
    Ok(s.trim().to_lowercase())
}

/// "Name (author id prefix)", or a longer prefix of the author id when the name is unknown. The
/// name comes from the author's profile: escaped for the terminal.
fn who(author: &AuthorId, name: Option<&str>) -> String {
    let id = author.to_string();
    match name {
        Some(n) => format!("{} ({})", term_safe(n), &id[..id.len().min(8)]),
        None => id[..id.len().min(16)].to_string(),
    }
}

/// The last `n` characters of `s` (a short form of a peer id).
fn last_chars(s: &str, n: usize) -> &str {
    let start = s
        .char_indices()
        .rev()
        .take(n)
        .last()
        .map_or(s.len(), |(i, _)| i);
    &s[start..]
}

async fn up(dir: PathBuf, args: UpArgs) -> Result<()> {
    let mut config = Config::load(dir).context("cannot read the config file")?;
    if !args.listen.is_empty() {
        config.listen = args.listen;
    }
    config.peers.extend(args.peer);
    if let Some(api) = args.api {
        config.api = api;
    }
    if args.no_mdns {
        config.mdns = false;
    }
    // Check addresses before anything starts, so a typo gets a one-line error.
    config.listen_addrs()?;
    config.peer_addrs()?;
    config.api_addr()?;
    let node = Node::start(config).await?;
    let api = node.api_addr().expect("set by start");
    let status = node.status().await?;
    println!("agora node running");
    println!("  author:  {}", node.author());
    println!("  peer id: {}", node.peer_id());
    println!("  web UI:  http://{api}/#token={}", node.api_token());
    println!("  data:    {}", node.data_dir().display());
    for a in &status.listen_addrs {
        println!("  listen:  {}", term_safe(a));
    }
    println!("Press Ctrl-C to stop.");
    wait_for_signal().await;
    println!("stopping...");
    node.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn run(cli: Cli) -> Result<()> {
    let dir = data_dir(&cli)?;
    match cli.command {
        Command::Init { name, json } => {
            let config = Config::load(dir.clone())?;
            let (identity, created) = match agora_node::init(&config, name.as_deref()) {
                Err(agora_node::NodeError::Locked(dir)) => bail!(
                    "a node is running on {}: `init` is already done; to change your name while it runs, use `agora name NAME`",
                    dir.display()
                ),
                other => other?,
            };
            let out = InitOutput {
                author: identity.author(),
                peer_id: agora_node::peer_id_of(&identity),
                data_dir: dir.clone(),
                created,
            };
            if json {
                print_json(&out);
            } else {
                println!(
                    "{} identity in {}",
                    if created { "created" } else { "existing" },
                    dir.display()
                );
                println!("author:  {}", identity.author());
                println!("peer id: {}", out.peer_id);
            }
            Ok(())
        }
        Command::Up(args) => up(dir, args).await,
        cmd => {
            let c = Client::connect(dir)?;
            client_command(&c, cmd).await
        }
    }
}

async fn client_command(c: &Client, cmd: Command) -> Result<()> {
    match cmd {
        Command::Status { json } => {
            let s: NodeStatus = c.get("/status").await?;
            if json {
                print_json(&s);
            } else {
                println!("author:   {}", s.author);
                if let Some(n) = &s.name {
                    println!("name:     {}", term_safe(n));
                }
                println!("peer id:  {}", term_safe(&s.peer_id));
                for a in &s.listen_addrs {
                    println!("listen:   {}", term_safe(a));
                }
                println!("peers:    {}", s.peers.len());
                for sy in &s.sync {
                    let peer = term_safe(last_chars(&sy.peer_id, 8));
                    let state = match sy.state {
                        SyncState::InSync => "in sync".to_string(),
                        SyncState::PeerBehind => "in sync (the peer is catching up)".to_string(),
                        SyncState::CatchingUp {
                            docs_left,
                            received,
                        } => format!(
                            "catching up: {docs_left} documents left, {received} contributions received"
                        ),
                        SyncState::Incomplete { docs_left } => format!(
                            "incomplete: {docs_left} documents still missing (retrying soon)"
                        ),
                    };
                    println!("  space {} with {}: {state}", sy.space, peer);
                }
                println!("spaces:   {}", s.spaces);
                println!("stored:   {} contributions", s.contributions);
                println!(
                    "received: {} accepted, {} duplicates, {} waiting, rejected {}",
                    s.counters.accepted,
                    s.counters.duplicates,
                    s.counters.pending,
                    json_safe(&serde_json::to_string(&s.counters.rejected).unwrap_or_default())
                );
            }
        }
        Command::Peers { json } => {
            let p: Vec<PeerInfo> = c.get("/peers").await?;
            if json {
                print_json(&p);
            } else if p.is_empty() {
                println!("no peers connected");
            } else {
                for peer in &p {
                    println!(
                        "{}  {}",
                        term_safe(&peer.peer_id),
                        term_safe(peer.addrs.first().map_or("", String::as_str))
                    );
                }
            }
        }
        Command::Dial { addr } => {
            let _: IgnoredAny = c.post("/peers", json!({ "addr": addr })).await?;
            println!("dialing {}", term_safe(&addr));
        }
        Command::Name { name } => {
            let _: IgnoredAny = c
                .send(
                    reqwest::Method::PUT,
                    "/profile",
                    Some(json!({ "name": name })),
                )
                .await?;
            println!("display name set");
        }
        Command::Space(SpaceCmd::Create { name, open, json }) => {
            let v: SpaceCreated = c
                .post("/spaces", json!({ "name": name, "open": open }))
                .await?;
            if json {
                print_json(&v);
            } else {
                println!("{}", v.id);
            }
        }
        Command::Space(SpaceCmd::Join { ticket, open }) => {
            let text = ticket.trim();
            if text.starts_with(agora_protocol::ticket::TICKET_PREFIX) {
                let v: Joined = c.post("/join", json!({ "ticket": text })).await?;
                println!("joined {}", v.id);
            } else if open {
                let id = check_id::<SpaceId>(text)?;
                let _: IgnoredAny = c.post(&format!("/spaces/{id}/join"), json!({})).await?;
                println!("joined {id}");
            } else {
                bail!(
                    "that is not a ticket (a ticket starts with {}): ask a member of the space for one with `agora space invite SPACE_ID`; to join an open space by its id, add --open",
                    agora_protocol::ticket::TICKET_PREFIX
                );
            }
        }
        Command::Space(SpaceCmd::Invite {
            space_id,
            role,
            expires,
            uses,
            json,
        }) => {
            let id = check_id::<SpaceId>(&space_id)?;
            let role = parse_role(&role)?;
            let expires_in = humantime::parse_duration(expires.trim())
                .map_err(|e| anyhow!("--expires {expires:?}: {e} (e.g. 30m, 12h, 7d)"))?
                .as_secs();
            let v: TicketOut = c
                .post(
                    &format!("/spaces/{id}/invites"),
                    json!({ "role": role, "expires_in": expires_in, "uses": uses }),
                )
                .await?;
            if json {
                print_json(&v);
            } else {
                println!("{}", v.ticket);
            }
        }
        Command::Space(SpaceCmd::Revoke { ticket }) => {
            let text = ticket.trim();
            if !text.starts_with(agora_protocol::ticket::TICKET_PREFIX) {
                bail!(
                    "that is not a ticket (a ticket starts with {})",
                    agora_protocol::ticket::TICKET_PREFIX
                );
            }
            let v: Joined = c.post("/revoke", json!({ "ticket": text })).await?;
            println!("revoked; the ticket admits no one to {} from now on", v.id);
        }
        Command::Space(SpaceCmd::Members { space_id, json }) => {
            let id = check_id::<SpaceId>(&space_id)?;
            let v: Vec<MemberOut> = c.get(&format!("/spaces/{id}/members")).await?;
            if json {
                print_json(&v);
            } else {
                for m in &v {
                    println!(
                        "{}  {:<7} {}",
                        m.author,
                        m.role,
                        term_safe(m.name.as_deref().unwrap_or(""))
                    );
                }
            }
        }
        Command::Space(SpaceCmd::Remove {
            space_id,
            author_id,
        }) => {
            let id = check_id::<SpaceId>(&space_id)?;
            let author = check_id::<AuthorId>(&author_id)?;
            let _: IgnoredAny = c
                .send(
                    reqwest::Method::DELETE,
                    &format!("/spaces/{id}/members/{author}"),
                    None,
                )
                .await?;
            println!("removed {author} from {id}; keys rotated");
        }
        Command::Space(SpaceCmd::Role {
            space_id,
            author_id,
            role,
        }) => {
            let id = check_id::<SpaceId>(&space_id)?;
            let author = check_id::<AuthorId>(&author_id)?;
            let role = parse_role(&role)?;
            let _: IgnoredAny = c
                .send(
                    reqwest::Method::PUT,
                    &format!("/spaces/{id}/members/{author}"),
                    Some(json!({ "role": role })),
                )
                .await?;
            println!("{author} is now {role} in {id}");
        }
        Command::Space(SpaceCmd::Rename { space_id, name }) => {
            let id = check_id::<SpaceId>(&space_id)?;
            let _: IgnoredAny = c
                .send(
                    reqwest::Method::PUT,
                    &format!("/spaces/{id}/name"),
                    Some(json!({ "name": name })),
                )
                .await?;
            println!("renamed {id}");
        }
        Command::Space(SpaceCmd::Leave { space_id }) => {
            let id = check_id::<SpaceId>(&space_id)?;
            let _: IgnoredAny = c.post(&format!("/spaces/{id}/leave"), json!({})).await?;
            println!("left {id}");
        }
        Command::Space(SpaceCmd::List { json }) => {
            let v: Vec<SpaceInfo> = c.get("/spaces").await?;
            if json {
                print_json(&v);
            } else {
                for s in &v {
                    let kind = match (s.private, s.role.as_deref()) {
                        (false, _) => "open".to_string(),
                        (true, Some(role)) => role.to_string(),
                        (true, None) => "left".to_string(),
                    };
                    println!(
                        "{}  {:<24} {:<7} {} ideas",
                        s.id,
                        term_safe(s.name.as_deref().unwrap_or("(name unknown)")),
                        kind,
                        s.ideas
                    );
                }
            }
        }
        Command::Idea(IdeaCmd::Add {
            space,
            title,
            body,
            tag,
            json,
        }) => {
            let space = check_id::<SpaceId>(&space)?;
            let draft = IdeaDraft {
                title,
                body,
                tags: tag,
            };
            let v: IdeaCreated = c
                .post(
                    &format!("/spaces/{space}/ideas"),
                    serde_json::to_value(&draft)?,
                )
                .await?;
            if json {
                print_json(&v);
            } else {
                println!("{}", v.id);
            }
        }
        Command::Idea(IdeaCmd::List { space, json }) => {
            let space = check_id::<SpaceId>(&space)?;
            let v: Vec<Idea> = c.get(&format!("/spaces/{space}/ideas")).await?;
            if json {
                print_json(&v);
            } else {
                for i in &v {
                    println!(
                        "{}  [{}] {}  (+{} -{}, {} comments) by {}",
                        i.id,
                        i.status.as_str(),
                        term_safe(&i.title),
                        i.votes.up,
                        i.votes.down,
                        i.comments.len(),
                        who(&i.author, i.author_name.as_deref())
                    );
                }
            }
        }
        Command::Idea(IdeaCmd::Show { idea_id, json }) => {
            let id = check_id::<DocId>(&idea_id)?;
            let i: Idea = c.get(&format!("/ideas/{id}")).await?;
            if json {
                print_json(&i);
            } else {
                println!("{}", term_safe(&i.title));
                println!("  id:     {}", i.id);
                println!("  by:     {}", who(&i.author, i.author_name.as_deref()));
                println!("  status: {}", i.status.as_str());
                if !i.tags.is_empty() {
                    let tags: Vec<_> = i.tags.iter().map(|t| term_safe(t)).collect();
                    println!("  tags:   {}", tags.join(", "));
                }
                println!("  votes:  +{} -{}", i.votes.up, i.votes.down);
                if !i.body.is_empty() {
                    println!("\n{}\n", term_safe_multiline(&i.body));
                }
                for cm in &i.comments {
                    println!(
                        "  - {}: {}",
                        who(&cm.author, cm.author_name.as_deref()),
                        term_safe_multiline(&cm.text)
                    );
                }
            }
        }
        Command::Idea(IdeaCmd::Comment { idea_id, text }) => {
            let id = check_id::<DocId>(&idea_id)?;
            let _: IgnoredAny = c
                .post(&format!("/ideas/{id}/comments"), json!({ "text": text }))
                .await?;
            println!("comment added");
        }
        Command::Idea(IdeaCmd::Vote { idea_id, down }) => {
            let id = check_id::<DocId>(&idea_id)?;
            let vote = if down { "down" } else { "up" };
            let _: IgnoredAny = c
                .post(&format!("/ideas/{id}/votes"), json!({ "vote": vote }))
                .await?;
            println!("voted {vote}");
        }
        Command::Idea(IdeaCmd::Status { idea_id, status }) => {
            let id = check_id::<DocId>(&idea_id)?;
            status
                .parse::<agora_protocol::Status>()
                .map_err(|e| anyhow!("{e}"))?;
            let _: IgnoredAny = c
                .post(&format!("/ideas/{id}/status"), json!({ "status": status }))
                .await?;
            println!("status set to {}", term_safe(&status));
        }
        Command::Init { .. } | Command::Up(_) => unreachable!("handled before connecting"),
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let is_up = matches!(cli.command, Command::Up(_));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| if is_up { "warn,agora=info" } else { "error" }.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The message may quote what a peer sent (or what the node answered).
            eprintln!("error: {}", term_safe(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_chars_counts_characters() {
        assert_eq!(last_chars("12D3KooWabcdefgh", 8), "abcdefgh");
        assert_eq!(last_chars("short", 8), "short");
        assert_eq!(last_chars("", 8), "");
        assert_eq!(last_chars("abc", 0), "");
        assert_eq!(last_chars("xxüñïcödé", 8), "xüñïcödé");
    }

    #[test]
    fn who_escapes_the_name() {
        let author = AuthorId([0xab; 32]);
        assert_eq!(
            who(&author, Some("Mallory\u{202e}\x1b[2J")),
            "Mallory\\u{202e}\\x1b[2J (abababab)"
        );
        assert_eq!(who(&author, None), "abababababababab");
    }
}
