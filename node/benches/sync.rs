//! Anti-entropy (sync) benchmark: catch-up, idle reconciliation and cold start, each compared
//! with a ceiling measured in the same run.
//!
//! Run with `cargo bench -p agora-node --bench sync` (release; about a minute). Environment:
//! - `AGORA_SYNC_N`: contributions for the catch-up (default 10,000, over N/100 ideas);
//! - `AGORA_SYNC_COLD_IDEAS`: ideas in the cold-start store (default 1,000, 100 contributions
//!   each).
//!
//! How it measures:
//! - Nodes run in this process (`Node::start`, loopback, no mDNS). Node B dials node A through a
//!   counting TCP relay in this process, so "bytes on the wire" are exactly the bytes of B's
//!   connection to A in both directions (everything libp2p sends: noise, yamux, multistream,
//!   gossipsub, identify, sync), without IP/TCP headers.
//! - Sync requests are counted from the nodes' own `tracing` events (target `agora::sync`): the
//!   responder's network task logs "sync request" with the requester's peer id for every request
//!   it serves; the requester's service logs "sync batch" for every batch of contributions it
//!   ingests (with `received` and `accepted`; the service knows peers only by opaque handles).
//! - Stores are prepared directly on the data directory a node then opens
//!   (`agora_testkit::store::prepare_data_dir`), with histories from `agora_testkit::history`.
//!
//! What is printed, and what the ratios mean, is described in `docs/BENCHMARKS.md`.

use agora_node::engine::MAX_BATCH;
use agora_node::{Config, Node, NodeHandle};
use agora_protocol::automerge::{AutoCommit, Change, ChangeHash};
use agora_protocol::contribution::signing_message;
use agora_protocol::{Contribution, DocId, SpaceId};
use agora_testkit::history::{space_history, SpaceHistory};
use agora_testkit::node::wait_for_every;
use agora_testkit::store::prepare_data_dir;
use agora_testkit::Rng;
use ed25519_dalek::{Signature, VerifyingKey};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Measurements run this many times; the median is reported.
const REPEATS: usize = 3;
/// Catch-up runs, each paired with a ceiling measured just before it.
const PAIRS: usize = 5;
/// Contributions per idea in the generated spaces.
const PER_IDEA: usize = 100;
/// Sync period of the nodes in the idle measurement.
const IDLE_SYNC_MS: u64 = 500;
/// How long idle traffic is observed.
const IDLE_WINDOW: Duration = Duration::from_secs(4);
/// The node's default sled page cache (`Config::cache_bytes`).
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Ceiling: batched verify + apply + persist of the same contributions, measured in this run.

/// One contribution with what the ceiling measurements need prepared.
struct Item {
    doc: usize,
    key: [u8; 40],
    bytes: Vec<u8>,
    change: Change,
    message: Vec<u8>,
    signature: Signature,
    public: VerifyingKey,
}

fn items_of(space: &SpaceHistory, ideas: usize) -> Vec<Item> {
    let mut out = Vec::new();
    for (d, idea) in space.ideas[..ideas].iter().enumerate() {
        let doc = &idea.doc;
        for (seq, bytes) in idea.contributions.iter().enumerate() {
            let c = Contribution::decode(bytes).expect("we encoded it");
            let change = Change::from_bytes(c.change.clone()).expect("a valid change");
            let mut key = [0u8; 40];
            key[..16].copy_from_slice(&space.id.0);
            key[16..32].copy_from_slice(&doc.0);
            key[32..].copy_from_slice(&(seq as u64 + 1).to_be_bytes());
            out.push(Item {
                doc: d,
                key,
                message: signing_message(&c.space, &c.doc, c.kind, &change.hash()),
                signature: Signature::from_bytes(&c.signature),
                public: VerifyingKey::from_bytes(&c.author.0).expect("a valid key"),
                bytes: bytes.clone(),
                change,
            });
        }
    }
    out
}

/// ed25519 batch verification in batches of `MAX_BATCH`.
fn time_verify(items: &[Item]) -> Duration {
    let t = Instant::now();
    for chunk in items.chunks(MAX_BATCH) {
        let m: Vec<&[u8]> = chunk.iter().map(|i| i.message.as_slice()).collect();
        let s: Vec<Signature> = chunk.iter().map(|i| i.signature).collect();
        let k: Vec<VerifyingKey> = chunk.iter().map(|i| i.public).collect();
        ed25519_dalek::verify_batch(&m, &s, &k).expect("valid signatures");
    }
    t.elapsed()
}

/// Automerge apply, one call per document per batch of `MAX_BATCH`, into fresh documents.
fn time_apply(items: &[Item], docs: usize) -> Duration {
    let batches: Vec<Vec<(usize, Vec<Change>)>> = items
        .chunks(MAX_BATCH)
        .map(|chunk| {
            let mut by_doc: Vec<(usize, Vec<Change>)> = Vec::new();
            for i in chunk {
                match by_doc.last_mut() {
                    Some((d, v)) if *d == i.doc => v.push(i.change.clone()),
                    _ => by_doc.push((i.doc, vec![i.change.clone()])),
                }
            }
            by_doc
        })
        .collect();
    let mut ams: Vec<AutoCommit> = (0..docs).map(|_| AutoCommit::new()).collect();
    let t = Instant::now();
    for batch in batches {
        for (d, changes) in batch {
            ams[d].apply_changes(changes).expect("valid changes apply");
        }
    }
    let elapsed = t.elapsed();
    assert!(ams.iter_mut().all(|d| d.get_missing_deps(&[]).is_empty()));
    elapsed
}

/// sled: insert every encoded contribution into a fresh database, one flush at the end.
fn time_sled(items: &[Item]) -> Duration {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = sled::Config::new()
        .path(dir.path())
        .cache_capacity(CACHE_BYTES)
        .flush_every_ms(Some(1000))
        .open()
        .expect("open sled");
    let tree = db.open_tree("contributions").expect("open tree");
    let t = Instant::now();
    for i in items {
        tree.insert(i.key, i.bytes.as_slice()).expect("insert");
    }
    db.flush().expect("flush");
    t.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The ceiling time for `items`: the sum of the three unavoidable costs (median of each over
/// `repeats` measurements).
fn ceiling(items: &[Item], docs: usize, repeats: usize) -> (Duration, [Duration; 3]) {
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..repeats {
        a.push(time_verify(items));
        b.push(time_apply(items, docs));
        c.push(time_sled(items));
    }
    let parts = [median(a), median(b), median(c)];
    (parts.iter().sum(), parts)
}

// ---------------------------------------------------------------------------------------------
// Nodes, the counting relay and the event recorder.

/// A TCP relay that counts the bytes it carries in each direction.
struct Relay {
    addr: SocketAddr,
    /// Client (B) to server (A).
    up: Arc<AtomicU64>,
    /// Server (A) to client (B).
    down: Arc<AtomicU64>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (u, d) = (up.clone(), down.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, u.clone()));
                tokio::spawn(pump(sr, cw, d.clone()));
            }
        });
        Relay { addr, up, down }
    }

    fn total(&self) -> u64 {
        self.up.load(Ordering::Relaxed) + self.down.load(Ordering::Relaxed)
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    count: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                count.fetch_add(n as u64, Ordering::Relaxed);
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

/// One `tracing` event of the node.
struct Rec {
    at: Instant,
    message: String,
    fields: HashMap<&'static str, String>,
}

/// A minimal `tracing` subscriber that keeps every `agora::*` event (the bench cannot use
/// tracing-subscriber: it is not a dependency of agora-node).
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Rec>>,
}

#[derive(Default)]
struct Fields(HashMap<&'static str, String>);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name(), format!("{value:?}"));
    }
}

impl tracing::Subscriber for Recorder {
    fn enabled(&self, m: &tracing::Metadata<'_>) -> bool {
        m.target().starts_with("agora::") && *m.level() <= tracing::Level::DEBUG
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, e: &tracing::Event<'_>) {
        let mut f = Fields::default();
        e.record(&mut f);
        let message = f.0.remove("message").unwrap_or_default();
        self.events.lock().expect("not poisoned").push(Rec {
            at: Instant::now(),
            message,
            fields: f.0,
        });
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

impl Recorder {
    /// Events since `from` with this message and, if given, this `peer` field.
    fn find(&self, from: Instant, message: &str, peer: Option<&str>) -> Vec<(Instant, Fields)> {
        self.events
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|r| r.at >= from && r.message == message)
            .filter(|r| peer.is_none_or(|p| r.fields.get("peer").map(String::as_str) == Some(p)))
            .map(|r| (r.at, Fields(r.fields.clone())))
            .collect()
    }

    fn count(&self, from: Instant, to: Instant, message: &str, peer: Option<&str>) -> usize {
        self.find(from, message, peer)
            .iter()
            .filter(|(at, _)| *at <= to)
            .count()
    }
}

fn field_u64(f: &Fields, name: &str) -> u64 {
    f.0.get(name).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Polls `check` every 5 ms until it returns `Some`; panics after `deadline`.
async fn wait<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let every = Duration::from_millis(5);
    wait_for_every(what, deadline, every, || {
        let fut = check();
        async move { fut.await.ok_or_else(|| "not yet".to_string()) }
    })
    .await
}

/// Starts a node on `dir` with `sync_ms`, dialing `peers`.
async fn start(dir: &Path, sync_ms: u64, peers: Vec<String>) -> NodeHandle {
    let mut config = Config::ephemeral(dir.to_path_buf());
    config.sync_ms = sync_ms;
    config.peers = peers;
    Node::start(config).await.expect("node starts")
}

/// The node's loopback listen port.
async fn listen_addr(node: &NodeHandle) -> SocketAddr {
    wait("the node to listen", Duration::from_secs(10), || async {
        let st = node.net_status().await.ok()?;
        let a = st.listen_addrs.first()?;
        let port: u16 = a.split('/').nth(4)?.parse().ok()?;
        Some(SocketAddr::from(([127, 0, 0, 1], port)))
    })
    .await
}

/// Starts B dialing A through a new relay, and waits until they are connected.
async fn connect_through_relay(
    a: &NodeHandle,
    b_dir: &Path,
    b_sync_ms: u64,
) -> (NodeHandle, Relay) {
    let relay = Relay::start(listen_addr(a).await).await;
    let via = format!(
        "/ip4/127.0.0.1/tcp/{}/p2p/{}",
        relay.addr.port(),
        a.peer_id()
    );
    let b = start(b_dir, b_sync_ms, vec![via.clone()]).await;
    let a_id = a.peer_id().to_string();
    wait("B to connect to A", Duration::from_secs(10), || async {
        let st = b.net_status().await.ok()?;
        st.peers.iter().find(|p| p.peer_id == a_id).map(|p| {
            assert!(
                p.addrs
                    .iter()
                    .all(|x| x.contains(&relay.addr.port().to_string())),
                "B must reach A only through the relay: {:?}",
                p.addrs
            );
        })
    })
    .await;
    (b, relay)
}

type Heads = BTreeMap<DocId, Vec<ChangeHash>>;

// ---------------------------------------------------------------------------------------------
// The three measurements.

struct CatchUp {
    join_to_done: Duration,
    first_request: Duration,
    transfer: Duration,
    wire: u64,
    wire_up: u64,
    wire_down: u64,
    b_requests: usize,
    fetches: usize,
    received: u64,
    accepted: u64,
    a_requests: usize,
    /// When each Contributions answer was ingested (from B's first request), and its size.
    timeline: Vec<(Duration, u64)>,
}

/// (a) B joins a space A holds and catches up.
async fn catch_up(rec: &Recorder, a_dir: &Path, space: SpaceId, n: usize) -> CatchUp {
    let a = start(a_dir, 5_000, vec![]).await;
    let want: Heads = a.heads(space).await.expect("heads");
    let b_dir = tempfile::tempdir().expect("tempdir");
    let (b, relay) = connect_through_relay(&a, b_dir.path(), 5_000).await;
    let (a_id, b_id) = (a.peer_id().to_string(), b.peer_id().to_string());
    let before = relay.total();
    let (up0, down0) = (
        relay.up.load(Ordering::Relaxed),
        relay.down.load(Ordering::Relaxed),
    );
    let t0 = Instant::now();
    b.join_space(space).await.expect("join");
    wait("B to hold A's heads", Duration::from_secs(60), || async {
        (b.heads(space).await.ok()? == want).then_some(())
    })
    .await;
    let done = Instant::now();
    let wire = relay.total() - before;
    let b_reqs = rec.find(t0, "sync request", Some(&b_id));
    let first = b_reqs.first().map_or(t0, |(at, _)| *at);
    // The service names peers by opaque handles: B's batches are all "sync batch" events (A
    // fetches nothing from B, which starts empty).
    let batches = rec.find(t0, "sync batch", None);
    let r = CatchUp {
        join_to_done: done - t0,
        first_request: first - t0,
        transfer: done - first,
        wire,
        wire_up: relay.up.load(Ordering::Relaxed) - up0,
        wire_down: relay.down.load(Ordering::Relaxed) - down0,
        b_requests: b_reqs.iter().filter(|(at, _)| *at <= done).count(),
        fetches: batches.iter().filter(|(at, _)| *at <= done).count(),
        received: batches.iter().map(|(_, f)| field_u64(f, "received")).sum(),
        accepted: batches.iter().map(|(_, f)| field_u64(f, "accepted")).sum(),
        a_requests: rec.count(t0, done, "sync request", Some(&a_id)),
        timeline: batches
            .iter()
            .filter(|(at, _)| *at <= done)
            .map(|(at, f)| (*at - first, field_u64(f, "received")))
            .collect(),
    };
    let stored = b.status().await.expect("status").contributions;
    assert!(
        stored >= n as u64,
        "B stores {stored} contributions, want {n}"
    );
    b.shutdown().await;
    a.shutdown().await;
    r
}

struct FromTwo {
    join_to_done: Duration,
    wire: u64,
    received: u64,
    accepted: u64,
    fetches: usize,
}

/// (a2) B joins a space that two connected peers hold: how much is transferred twice.
async fn catch_up_from_two(
    rec: &Recorder,
    a_dirs: [&Path; 2],
    space: SpaceId,
    n: usize,
) -> FromTwo {
    let a1 = start(a_dirs[0], 5_000, vec![]).await;
    let a2 = start(a_dirs[1], 5_000, vec![]).await;
    let want: Heads = a1.heads(space).await.expect("heads");
    assert_eq!(a2.heads(space).await.ok().as_ref(), Some(&want));
    let r1 = Relay::start(listen_addr(&a1).await).await;
    let r2 = Relay::start(listen_addr(&a2).await).await;
    let via = |r: &Relay, a: &NodeHandle| {
        format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", r.addr.port(), a.peer_id())
    };
    let b_dir = tempfile::tempdir().expect("tempdir");
    let b = start(b_dir.path(), 5_000, vec![via(&r1, &a1), via(&r2, &a2)]).await;
    let ids = [a1.peer_id().to_string(), a2.peer_id().to_string()];
    wait(
        "B to connect to A1 and A2",
        Duration::from_secs(10),
        || async {
            let st = b.net_status().await.ok()?;
            ids.iter()
                .all(|id| st.peers.iter().any(|p| &p.peer_id == id))
                .then_some(())
        },
    )
    .await;
    let before = r1.total() + r2.total();
    let t0 = Instant::now();
    b.join_space(space).await.expect("join");
    wait("B to hold A's heads", Duration::from_secs(60), || async {
        (b.heads(space).await.ok()? == want).then_some(())
    })
    .await;
    let done = Instant::now();
    // Let transfers that were already under way finish, to count everything they carried.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let batches: Vec<(Instant, Fields)> = rec.find(t0, "sync batch", None);
    let r = FromTwo {
        join_to_done: done - t0,
        wire: r1.total() + r2.total() - before,
        received: batches.iter().map(|(_, f)| field_u64(f, "received")).sum(),
        accepted: batches.iter().map(|(_, f)| field_u64(f, "accepted")).sum(),
        fetches: batches.len(),
    };
    assert!(b.status().await.expect("status").contributions >= n as u64);
    b.shutdown().await;
    a1.shutdown().await;
    a2.shutdown().await;
    r
}

struct Idle {
    ideas: usize,
    bytes: u64,
    exchanges: usize,
    window: Duration,
    digest: Duration,
}

/// (b) Two in-sync peers holding the same `ideas` ideas: traffic while nothing changes.
async fn idle(rec: &Recorder, space: &SpaceHistory, ideas: usize) -> Idle {
    let contributions = space.contributions(ideas);
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let digest = prepare_data_dir(a_dir.path(), space.id, &contributions).digest;
    prepare_data_dir(b_dir.path(), space.id, &contributions);
    let a = start(a_dir.path(), IDLE_SYNC_MS, vec![]).await;
    let (b, relay) = connect_through_relay(&a, b_dir.path(), IDLE_SYNC_MS).await;
    assert_eq!(a.heads(space.id).await.ok(), b.heads(space.id).await.ok());
    // Wait until both sides reported a matching digest at least once.
    let (a_id, b_id) = (a.peer_id().to_string(), b.peer_id().to_string());
    wait("both peers in sync", Duration::from_secs(20), || async {
        let sa = a.status().await.ok()?;
        let sb = b.status().await.ok()?;
        let ok = |s: &agora_node::NodeStatus, other: &str| {
            s.sync
                .iter()
                .any(|x| x.peer_id == other && matches!(x.state, agora_node::SyncState::InSync))
        };
        (ok(&sa, &b_id) && ok(&sb, &a_id)).then_some(())
    })
    .await;
    let from = Instant::now();
    let before = relay.total();
    tokio::time::sleep(IDLE_WINDOW).await;
    let to = Instant::now();
    let bytes = relay.total() - before;
    let exchanges = rec.count(from, to, "sync request", None);
    let batches =
        rec.count(from, to, "sync batch", None) + rec.count(from, to, "catching up", None);
    assert_eq!(batches, 0, "in-sync peers must not transfer anything");
    b.shutdown().await;
    a.shutdown().await;
    Idle {
        ideas,
        bytes,
        exchanges,
        window: to - from,
        digest,
    }
}

/// A raw HTTP GET of `/api/v1/status`; true on 200.
async fn api_answers(addr: SocketAddr, token: &str) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let req = format!(
        "GET /api/v1/status HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Connection: close\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp).await;
    resp.starts_with(b"HTTP/1.1 200")
}

struct Cold {
    start: Duration,
    starts: Vec<Duration>,
    store_loaded: Option<u64>,
    open: Duration,
    read_docs: Duration,
    automerge: Duration,
    saved_bytes: usize,
    docs: usize,
}

/// (c) Node start to a served API on a big store, vs `AutoCommit::load` of the saved documents.
async fn cold_start(rec: &Recorder, dir: &Path) -> Cold {
    let mut starts = Vec::new();
    let mut loaded = Vec::new();
    for _ in 0..REPEATS {
        let t = Instant::now();
        let node = start(dir, 30_000, vec![]).await;
        let addr = node.api_addr().expect("api");
        let token = node.api_token().to_string();
        wait("the API to answer", Duration::from_secs(60), || async {
            api_answers(addr, &token).await.then_some(())
        })
        .await;
        starts.push(t.elapsed());
        loaded.extend(
            rec.find(t, "store loaded", None)
                .iter()
                .map(|(_, f)| field_u64(f, "elapsed_ms")),
        );
        node.shutdown().await;
    }
    // The same saved documents, loaded with Automerge directly.
    let config = Config::ephemeral(dir.to_path_buf());
    let (mut opens, mut reads, mut loads) = (Vec::new(), Vec::new(), Vec::new());
    let (mut saved_bytes, mut docs) = (0, 0);
    for _ in 0..REPEATS {
        let t = Instant::now();
        let store = agora_node::open_store(&config).expect("open store");
        opens.push(t.elapsed());
        let t = Instant::now();
        let stored = store.load_docs().expect("load docs");
        reads.push(t.elapsed());
        let saved: Vec<Vec<u8>> = stored
            .into_iter()
            .map(|d| {
                assert!(d.tail.is_empty(), "every document is snapshotted");
                d.snapshot.expect("a snapshot").1
            })
            .collect();
        saved_bytes = saved.iter().map(Vec::len).sum();
        docs = saved.len();
        let t = Instant::now();
        for s in &saved {
            AutoCommit::load(s).expect("loads");
        }
        loads.push(t.elapsed());
    }
    loaded.sort_unstable();
    Cold {
        start: median(starts.clone()),
        starts,
        store_loaded: loaded.get(loaded.len() / 2).copied(),
        open: median(opens),
        read_docs: median(reads),
        automerge: median(loads),
        saved_bytes,
        docs,
    }
}

// ---------------------------------------------------------------------------------------------

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .replace(['_', ','], "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let n = env_usize("AGORA_SYNC_N", 10_000).max(PER_IDEA);
    let cold_ideas = env_usize("AGORA_SYNC_COLD_IDEAS", 1_000).max(1);
    let rec: &'static Recorder = Box::leak(Box::default());
    tracing::subscriber::set_global_default(RecorderRef(rec)).expect("first subscriber");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let mut rng = Rng::new(0x5EED_5A1C_2026_0002);
    println!("Agora sync benchmark");

    // (a) Catch-up.
    let ideas = n / PER_IDEA;
    let t = Instant::now();
    let space = space_history(&mut rng, ideas, PER_IDEA);
    let gen_a = t.elapsed();
    let contributions = space.contributions(ideas);
    let raw: u64 = contributions.iter().map(|c| c.len() as u64).sum();
    let a_dir = tempfile::tempdir().expect("tempdir");
    prepare_data_dir(a_dir.path(), space.id, &contributions);
    let items = items_of(&space, ideas);
    // Each run is paired with a ceiling measured just before it, so that both see the machine
    // in the same state (its speed drifts by a quarter over seconds); the pair with the median
    // ratio is reported.
    let mut runs: Vec<(Duration, [Duration; 3], CatchUp)> = (0..PAIRS)
        .map(|_| {
            let (ceil, parts) = ceiling(&items, ideas, 1);
            let run = rt.block_on(catch_up(rec, a_dir.path(), space.id, contributions.len()));
            (ceil, parts, run)
        })
        .collect();
    drop(items);
    let ratio = |(ceil, _, r): &(Duration, [Duration; 3], CatchUp)| {
        r.transfer.as_secs_f64() / ceil.as_secs_f64()
    };
    runs.sort_by(|a, b| ratio(a).total_cmp(&ratio(b)));
    let (ceil, parts, c) = &runs[runs.len() / 2];
    let (ceil, parts) = (*ceil, *parts);
    println!();
    println!(
        "(a) catch-up: B joins a space A holds: {} contributions in {ideas} ideas, {raw} bytes \
         (avg {:.0} B, generated in {:.1} s); {PAIRS} runs, each after its own ceiling; the \
         run with the median transfer / ceiling",
        contributions.len(),
        raw as f64 / contributions.len() as f64,
        gen_a.as_secs_f64()
    );
    println!("| measurement | value | ratio |");
    println!("|---|---:|---:|");
    println!(
        "| ceiling: verify_batch {} + apply {} + sled {} | {} | 1.00 |",
        ms(parts[0]),
        ms(parts[1]),
        ms(parts[2]),
        ms(ceil)
    );
    println!(
        "| transfer: B's first sync request -> B's heads = A's | {} | ceiling / transfer = {:.2} |",
        ms(c.transfer),
        ceil.as_secs_f64() / c.transfer.as_secs_f64()
    );
    println!(
        "| join -> B's first sync request (waits for B's periodic round) | {} | |",
        ms(c.first_request)
    );
    println!(
        "| join -> B's heads = A's | {} | ceiling / total = {:.2} |",
        ms(c.join_to_done),
        ceil.as_secs_f64() / c.join_to_done.as_secs_f64()
    );
    println!(
        "| bytes on the wire, both directions (B->A {}, A->B {}) | {} | wire / raw = {:.3} |",
        c.wire_up,
        c.wire_down,
        c.wire,
        c.wire as f64 / raw as f64
    );
    println!(
        "| sync requests by B (Summary + Fetch) | {} | {} Fetch |",
        c.b_requests, c.fetches
    );
    println!(
        "| contributions received by B / accepted | {} / {} | {:.3} |",
        c.received,
        c.accepted,
        c.received as f64 / contributions.len() as f64
    );
    println!("| sync requests by A to B meanwhile | {} | |", c.a_requests);
    let tl: Vec<String> = c
        .timeline
        .iter()
        .map(|(at, n)| format!("{} ({n})", ms(*at)))
        .collect();
    println!("batches ingested by B at: {}", tl.join(", "));
    let all: Vec<String> = runs
        .iter()
        .map(|pair| {
            let (ceil, _, r) = pair;
            format!(
                "transfer {} / ceiling {} = {:.2}x, total {} / {} B / {} req",
                ms(r.transfer),
                ms(*ceil),
                ratio(pair),
                ms(r.join_to_done),
                r.wire,
                r.b_requests
            )
        })
        .collect();
    println!("runs: {}", all.join("; "));
    let a2_dir = tempfile::tempdir().expect("tempdir");
    prepare_data_dir(a2_dir.path(), space.id, &contributions);
    let two = rt.block_on(catch_up_from_two(
        rec,
        [a_dir.path(), a2_dir.path()],
        space.id,
        contributions.len(),
    ));
    println!(
        "(a2) B joins with two peers holding the space: done in {}; received {} for {} accepted \
         (received / needed = {:.2}) in {} Contributions answers; wire {} B = {:.2} x raw",
        ms(two.join_to_done),
        two.received,
        two.accepted,
        two.received as f64 / contributions.len() as f64,
        two.fetches,
        two.wire,
        two.wire as f64 / raw as f64
    );

    // (b) Idle reconciliation.
    let big = space_history(&mut rng, 1_000, 3);
    println!();
    println!(
        "(b) idle: two in-sync peers, sync every {IDLE_SYNC_MS} ms each, observed for {:?}",
        IDLE_WINDOW
    );
    println!("| ideas | exchanges | bytes | bytes per exchange | digest time |");
    println!("|---:|---:|---:|---:|---:|");
    for ideas in [100, 1_000] {
        let r = rt.block_on(idle(rec, &big, ideas));
        println!(
            "| {} | {} in {:.1} s | {} | {:.0} | {} |",
            r.ideas,
            r.exchanges,
            r.window.as_secs_f64(),
            r.bytes,
            r.bytes as f64 / r.exchanges.max(1) as f64,
            ms(r.digest)
        );
    }

    // (c) Cold start.
    let cold = space_history(&mut rng, cold_ideas, PER_IDEA);
    let cold_dir = tempfile::tempdir().expect("tempdir");
    let t = Instant::now();
    let digest = prepare_data_dir(cold_dir.path(), cold.id, &cold.contributions(cold_ideas)).digest;
    let prep = t.elapsed();
    drop(cold);
    let r = rt.block_on(cold_start(rec, cold_dir.path()));
    println!();
    println!(
        "(c) cold start: {} ideas / {} contributions (prepared in {:.1} s; one sync_digest of \
         this space: {})",
        r.docs,
        r.docs * PER_IDEA,
        prep.as_secs_f64(),
        ms(digest)
    );
    println!("| measurement | time | ratio |");
    println!("|---|---:|---:|");
    println!(
        "| AutoCommit::load of the {} saved docs ({} bytes) | {} | 1.00 |",
        r.docs,
        r.saved_bytes,
        ms(r.automerge)
    );
    println!(
        "| store open (sled) {} + read (load_docs) {} | {} | |",
        ms(r.open),
        ms(r.read_docs),
        ms(r.open + r.read_docs)
    );
    println!(
        "| Node::start -> API answers (runs: {}) | {} | load / start = {:.2} |",
        r.starts
            .iter()
            .map(|d| ms(*d))
            .collect::<Vec<_>>()
            .join(", "),
        ms(r.start),
        r.automerge.as_secs_f64() / r.start.as_secs_f64()
    );
    if let Some(l) = r.store_loaded {
        println!("| of which Engine::open (\"store loaded\" log) | {l} ms | |");
    }
    println!();
    println!("total time {:.1} s", started.elapsed().as_secs_f64());
}

/// `set_global_default` wants an owned subscriber; this one forwards to a leaked recorder.
struct RecorderRef(&'static Recorder);

impl tracing::Subscriber for RecorderRef {
    fn enabled(&self, m: &tracing::Metadata<'_>) -> bool {
        self.0.enabled(m)
    }
    fn new_span(&self, a: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        self.0.new_span(a)
    }
    fn record(&self, s: &tracing::span::Id, r: &tracing::span::Record<'_>) {
        self.0.record(s, r)
    }
    fn record_follows_from(&self, s: &tracing::span::Id, f: &tracing::span::Id) {
        self.0.record_follows_from(s, f)
    }
    fn event(&self, e: &tracing::Event<'_>) {
        self.0.event(e)
    }
    fn enter(&self, s: &tracing::span::Id) {
        self.0.enter(s)
    }
    fn exit(&self, s: &tracing::span::Id) {
        self.0.exit(s)
    }
}
