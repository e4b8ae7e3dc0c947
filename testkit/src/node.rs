//! In-process nodes: starts nodes in this process on loopback, connects them, and waits (always
//! bounded) for conditions such as "everyone sees everyone subscribed to the space" or "everyone
//! holds the same heads and ideas".
//!
//! No test synchronises with a bare sleep: every wait polls a condition with a short interval and
//! panics with a description of the last state seen when its deadline passes.

use agora_node::{Config, Node, NodeHandle};
use agora_protocol::automerge::ChangeHash;
use agora_protocol::Idea;
use agora_protocol::{DocId, SpaceId};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How often conditions are polled.
pub const POLL_EVERY: Duration = Duration::from_millis(50);

/// Upper bound on the number of polls of any single wait (more only if the deadline divided by
/// the poll interval is more).
const MAX_POLLS: u32 = 10_000;

/// A node running in this process. Keeps its data directory alive until dropped.
pub struct TestNode {
    /// The running node.
    pub handle: NodeHandle,
    /// Full listen multiaddrs (`.../p2p/<peer id>`).
    pub listen_addrs: Vec<String>,
    /// The data directory; deleted when the node is dropped.
    pub dir: TempDir,
}

impl TestNode {
    /// Short label for failure messages.
    pub fn label(&self) -> String {
        let p = self.handle.peer_id();
        format!("node {}", &p[p.len().saturating_sub(6)..])
    }
}

/// Sends the node's `tracing` output to the test's output when `RUST_LOG` is set.
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Polls `check` every [`POLL_EVERY`] until it returns `Ok(value)`, and returns the value. Each
/// call of `check` is itself bounded by the time left. Panics when `deadline` (from now) passes,
/// with `what` and the last `Err` description `check` gave.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    wait_for_every(what, deadline, POLL_EVERY, check).await
}

/// [`wait_for`] polling every `every` (a benchmark that times the moment a condition becomes
/// true polls more often than a test).
pub async fn wait_for_every<T, F, Fut>(
    what: &str,
    deadline: Duration,
    every: Duration,
    check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    match poll_within(deadline, every, check).await {
        Ok(value) => value,
        Err(last) => panic!(
            "timed out after {:.1} s waiting for {what}; last state: {last}",
            start.elapsed().as_secs_f64()
        ),
    }
}

/// Polls `check` every `every` until it returns `Ok`, for at most `deadline` from now: its
/// value, or the last state it reported when the deadline passed (for a test that then does
/// something else rather than fail).
pub async fn poll_within<T, F, Fut>(
    deadline: Duration,
    every: Duration,
    mut check: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let end = Instant::now() + deadline;
    let mut last = String::from("the condition was never evaluated");
    let polls = deadline.as_millis() / every.as_millis().max(1) + 1;
    for _ in 0..MAX_POLLS.max(u32::try_from(polls).unwrap_or(u32::MAX)) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left, check()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(state)) => last = state,
            Err(_) => {
                last = format!("the last check did not finish within the deadline ({last})");
                break;
            }
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        tokio::time::sleep(every.min(left)).await;
    }
    Err(last)
}

/// Polls `check` until it returns true; panics with `what` when `deadline` (from now) passes.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(what, deadline, || {
        let fut = check();
        async move {
            if fut.await {
                Ok(())
            } else {
                Err("condition still false".to_string())
            }
        }
    })
    .await
}

/// Starts one node on loopback (no mDNS, free ports) that dials `peers`, and waits until it
/// listens.
pub async fn spawn_node(peers: Vec<String>) -> TestNode {
    let dir = tempfile::tempdir().expect("cannot create a temporary directory");
    start_in(dir, peers).await
}

/// Starts a node on `dir` (loopback, no mDNS, free ports) dialing `peers`; waits until it listens.
async fn start_in(dir: TempDir, peers: Vec<String>) -> TestNode {
    let mut config = Config::ephemeral(dir.path().to_path_buf());
    config.peers = peers;
    let handle = Node::start(config).await.expect("node failed to start");
    let h = handle.clone();
    let listen_addrs = wait_for("the node to listen", Duration::from_secs(10), || {
        let h = h.clone();
        async move {
            let status = h.status().await.map_err(|e| e.to_string())?;
            if status.listen_addrs.is_empty() {
                Err("no listen address yet".into())
            } else {
                Ok(status.listen_addrs)
            }
        }
    })
    .await;
    TestNode {
        handle,
        listen_addrs,
        dir,
    }
}

/// Starts `n` nodes; each later node dials every earlier one, so they form a full mesh.
pub async fn spawn_nodes(n: usize) -> Vec<TestNode> {
    init_tracing();
    let mut nodes: Vec<TestNode> = Vec::with_capacity(n);
    for _ in 0..n {
        let peers = nodes
            .iter()
            .flat_map(|t| t.listen_addrs.iter().cloned())
            .collect();
        nodes.push(spawn_node(peers).await);
    }
    nodes
}

/// Waits until every node sees every other node as a connected peer subscribed to `space`.
pub async fn wait_for_mesh(nodes: &[TestNode], space: SpaceId, deadline: Duration) {
    let handles: Vec<(String, NodeHandle)> = nodes
        .iter()
        .map(|t| (t.label(), t.handle.clone()))
        .collect();
    wait_for(
        &format!("every node to see every other subscribed to space {space}"),
        deadline,
        || {
            let handles = handles.clone();
            async move {
                let mut missing = Vec::new();
                for (label, h) in &handles {
                    let status = h.net_status().await.map_err(|e| e.to_string())?;
                    for (other_label, other) in &handles {
                        if other.peer_id() == h.peer_id() {
                            continue;
                        }
                        let seen = status
                            .peers
                            .iter()
                            .any(|p| p.peer_id == other.peer_id() && p.spaces.contains(&space));
                        if !seen {
                            missing.push(format!("{label} does not see {other_label}"));
                        }
                    }
                }
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(missing.join(", "))
                }
            }
        },
    )
    .await
}

/// One node's view of a space, for convergence checks.
pub async fn view(
    h: &NodeHandle,
    space: SpaceId,
) -> Result<(BTreeMap<DocId, Vec<ChangeHash>>, Vec<Idea>, String), String> {
    let heads = h.heads(space).await.map_err(|e| e.to_string())?;
    let ideas = h.list_ideas(space).await.map_err(|e| e.to_string())?;
    let json = serde_json::to_string(&ideas).map_err(|e| e.to_string())?;
    Ok((heads, ideas, json))
}

/// Waits until every node has identical heads for `space` and identical ideas (compared as
/// serialised JSON), then returns those ideas.
pub async fn converge(nodes: &[TestNode], space: SpaceId, deadline: Duration) -> Vec<Idea> {
    let handles: Vec<(String, NodeHandle)> = nodes
        .iter()
        .map(|t| (t.label(), t.handle.clone()))
        .collect();
    wait_for(
        &format!(
            "{} nodes to converge on space {space}",
            handles.len()
        ),
        deadline,
        || {
            let handles = handles.clone();
            async move {
                let mut views = Vec::with_capacity(handles.len());
                for (label, h) in &handles {
                    views.push((label, view(h, space).await?));
                }
                let (first_label, (heads0, ideas0, json0)) = &views[0];
                for (label, (heads, ideas, json)) in &views[1..] {
                    if heads != heads0 {
                        return Err(format!(
                            "{label} has heads for {} docs, {first_label} for {} docs (or they differ)",
                            heads.len(),
                            heads0.len()
                        ));
                    }
                    if json != json0 {
                        return Err(format!(
                            "{label} shows {} ideas, {first_label} {} (or they differ)",
                            ideas.len(),
                            ideas0.len()
                        ));
                    }
                }
                Ok(ideas0.clone())
            }
        },
    )
    .await
}

/// Shuts every node down (each flushes its store).
pub async fn shutdown_all(nodes: &[TestNode]) {
    for t in nodes {
        tokio::time::timeout(Duration::from_secs(20), t.handle.shutdown())
            .await
            .unwrap_or_else(|_| panic!("{} did not shut down within 20 s", t.label()));
    }
}

/// Stops `node` (flushing its store; a no-op if it was already shut down) and starts it again on
/// the same data directory, dialing `peers`. Returns the restarted node.
pub async fn restart(node: TestNode, peers: Vec<String>) -> TestNode {
    tokio::time::timeout(Duration::from_secs(20), node.handle.shutdown())
        .await
        .unwrap_or_else(|_| panic!("{} did not shut down within 20 s", node.label()));
    let TestNode { dir, .. } = node;
    start_in(dir, peers).await
}
