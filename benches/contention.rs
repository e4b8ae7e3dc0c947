//! Local writes under contention: two clients on two nodes each add comments round-robin over
//! the same 10 ideas through the HTTP API, timed until both nodes hold every comment and show
//! identical ideas. Goal: 1,500 changes/s end to end.
//!
//! Run with `cargo bench --bench contention` (about 25 s after the build). `cargo bench`
//! builds the `agora` binary with the bench profile (= release) before it runs the bench, and
//! Cargo passes its path as `CARGO_BIN_EXE_agora`; the bench also sets that variable from the
//! compile-time value, so the bench binary can be run directly (e.g. under `perf`) too.
//!
//! Environment:
//! - `AGORA_CONTENTION_RUNS`: repetitions of each mode (default 5; modes interleaved, fresh
//!   nodes for every run);
//! - `AGORA_CONTENTION_PER_CLIENT`: comments each client adds (default 500);
//! - `AGORA_CONTENTION_INFLIGHT`: requests in flight per client in the `concurrent` mode
//!   (default 8);
//! - `AGORA_CONTENTION_MODES`: comma-separated, out of `sequential`, `concurrent`, `floor`
//!   (default all three);
//! - `AGORA_CONTENTION_DIR`: where the data dirs go (default `/dev/shm` if it exists, tmpfs, else
//!   the system temp dir; the node fsyncs every acknowledged write, so the medium matters);
//! - `AGORA_CONTENTION_RETURN`: `minimal` (default: send `Prefer: return=minimal`, the node
//!   answers 204) or `representation` (no `Prefer`: the node reads the idea back and answers it);
//! - `AGORA_CONTENTION_PERF`: a directory; if set, node A of every run is recorded with
//!   `perf record -g` (extra arguments: `AGORA_CONTENTION_PERF_ARGS`, whitespace-separated)
//!   during the timed section, into `<dir>/<mode>-run<N>-nodeA.data`.
//!
//! Each run:
//! - Setup (untimed): two real `agora up` processes (release binary, loopback, `--no-mdns`,
//!   random ports, the default `warn,agora=info` log filter), B dialing A. A creates a space, B
//!   joins it, A posts 10 ideas; the bench waits (with a deadline) until both nodes see each
//!   other subscribed and B lists the same 10 ideas as A (identical JSON).
//! - Timed: client A (node A's API) and client B (node B's API) each POST `per_client` comments
//!   (`POST /api/v1/ideas/{id}/comments`, `Prefer: return=minimal`, 200 and 204 both accepted),
//!   comment `i` on idea `i mod 10`, so both clients hit the same ideas at the same time. Mode
//!   `sequential`: one request in flight per client (a person, a UI); mode `concurrent`: 8 in
//!   flight per client (a busy integration). After the last write is acknowledged the bench polls
//!   `GET /api/v1/spaces/{id}/ideas` on both nodes every 10 ms until both hold all comments and
//!   answer byte-for-byte equal JSON; the time at which such a poll *returned* ends the run
//!   (conservative by one poll). changes/s = comments / that time.
//! - Also reported: when the last write was acknowledged (acknowledgment throughput apart from
//!   propagation), p50/p99 latency of the writes, and each node's CPU time (user + system, all
//!   threads, from `/proc/<pid>/stat`, 10 ms ticks) over the timed section per change, split
//!   into the engine thread, the tokio workers (HTTP API, network) and the other threads (sled's
//!   I/O pool, timers) from `/proc/<pid>/task/*/stat`. The section includes the convergence
//!   polls, which the nodes answer too (15-50 ms for a list with 1,000 comments; usually one
//!   poll).
//! - Mode `floor`: one node, one sequential client adding `2 * per_client` comments; the
//!   per-request floor without contention and without a peer.
//!
//! Comment texts come from the test kit's seeded `Rng`, the same in every run. After each run
//! the bench checks that node A holds exactly the texts that were sent.

use agora_node::config::{ApiFile, API_FILE};
use agora_testkit::process::{
    wait_until, AgoraProc, Cli, InitOutput, Launch, SpaceCreated, LOOPBACK_ARGS,
};
use agora_testkit::Rng;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The goal, in changes per second end to end.
const GOAL: f64 = 1500.0;
/// Ideas the comments go to.
const IDEAS: usize = 10;
/// The log filter `agora up` uses when `RUST_LOG` is not set.
const NODE_LOG_FILTER: &str = "warn,agora=info";
/// Bound for each setup wait (subscriptions, ideas reaching B).
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound for the whole write phase of a run.
const WRITE_TIMEOUT: Duration = Duration::from_secs(300);
/// Bound for convergence after the last acknowledged write.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound for one HTTP request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval of the convergence polls.
const POLL: Duration = Duration::from_millis(10);
/// Seed of the comment texts (client `c` uses `SEED + c`).
const SEED: u64 = 0xC0_4E47;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Sequential,
    Concurrent,
    Floor,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Sequential => "sequential",
            Mode::Concurrent => "concurrent",
            Mode::Floor => "floor",
        }
    }

    fn parse(s: &str) -> Mode {
        match s.trim() {
            "sequential" | "seq" => Mode::Sequential,
            "concurrent" | "conc" => Mode::Concurrent,
            "floor" => Mode::Floor,
            other => panic!("unknown mode {other:?} (sequential, concurrent, floor)"),
        }
    }

    fn nodes(self) -> usize {
        match self {
            Mode::Floor => 1,
            _ => 2,
        }
    }

    fn describe(self, cfg: &Config) -> String {
        match self {
            Mode::Sequential => format!(
                "2 nodes, 2 clients x {} comments, 1 request in flight each",
                cfg.per_client
            ),
            Mode::Concurrent => format!(
                "2 nodes, 2 clients x {} comments, {} requests in flight each",
                cfg.per_client, cfg.inflight
            ),
            Mode::Floor => format!(
                "1 node, 1 client x {} comments, 1 request in flight",
                2 * cfg.per_client
            ),
        }
    }
}

struct Config {
    runs: usize,
    per_client: usize,
    inflight: usize,
    modes: Vec<Mode>,
    base: PathBuf,
    perf: Option<PathBuf>,
    perf_args: Vec<String>,
    /// Send `Prefer: return=minimal` (default); without it every write reads the idea back.
    minimal: bool,
}

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?}: {e}")),
        Err(_) => default,
    }
}

impl Config {
    fn from_env() -> Config {
        let modes = std::env::var("AGORA_CONTENTION_MODES")
            .map(|v| v.split(',').map(Mode::parse).collect())
            .unwrap_or_else(|_| vec![Mode::Sequential, Mode::Concurrent, Mode::Floor]);
        let base = std::env::var_os("AGORA_CONTENTION_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let shm = Path::new("/dev/shm");
                if shm.is_dir() {
                    shm.to_path_buf()
                } else {
                    std::env::temp_dir()
                }
            });
        let cfg = Config {
            runs: env_usize("AGORA_CONTENTION_RUNS", 5),
            per_client: env_usize("AGORA_CONTENTION_PER_CLIENT", 500),
            inflight: env_usize("AGORA_CONTENTION_INFLIGHT", 8),
            modes,
            base,
            perf: std::env::var_os("AGORA_CONTENTION_PERF").map(PathBuf::from),
            perf_args: std::env::var("AGORA_CONTENTION_PERF_ARGS")
                .map(|v| v.split_whitespace().map(String::from).collect())
                .unwrap_or_else(|_| vec!["-g".to_string()]),
            minimal: match std::env::var("AGORA_CONTENTION_RETURN").as_deref() {
                Err(_) | Ok("minimal") => true,
                Ok("representation") => false,
                Ok(other) => panic!("AGORA_CONTENTION_RETURN={other:?}: minimal or representation"),
            },
        };
        assert!(cfg.runs >= 1, "AGORA_CONTENTION_RUNS must be at least 1");
        assert!(
            cfg.per_client >= 1,
            "AGORA_CONTENTION_PER_CLIENT must be >= 1"
        );
        assert!(cfg.inflight >= 1, "AGORA_CONTENTION_INFLIGHT must be >= 1");
        cfg
    }

    /// (requests in flight, comments) per client.
    fn clients(&self, mode: Mode) -> Vec<(usize, usize)> {
        match mode {
            Mode::Sequential => vec![(1, self.per_client); 2],
            Mode::Concurrent => vec![(self.inflight, self.per_client); 2],
            Mode::Floor => vec![(1, 2 * self.per_client)],
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Measuring the processes.

/// Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK`, 100 if that fails).
fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .stderr(Stdio::null())
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// CPU time (user + system, every thread) of a process so far, from `/proc/<pid>/stat`.
fn cpu_time(pid: &str, ticks: u64) -> Option<Duration> {
    stat_cpu(Path::new(&format!("/proc/{pid}/stat")), ticks)
}

/// CPU time (user + system) from a `stat` file of `/proc` (a process's or a thread's).
fn stat_cpu(path: &Path, ticks: u64) -> Option<Duration> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let t = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_micros(t * 1_000_000 / ticks))
}

/// CPU time of a node's long-lived threads so far: the engine thread (`agora-engine`) and the
/// tokio workers (`tokio-rt-worker`: HTTP API, network), from `/proc/<pid>/task/*/`. The rest
/// of the process (sled's I/O pool, whose threads come and go, and the timers) is the process
/// total minus these.
#[derive(Clone, Copy, Default)]
struct Threads {
    engine: Duration,
    tokio: Duration,
}

impl Threads {
    fn of(pid: &str, ticks: u64) -> Option<Threads> {
        let mut t = Threads::default();
        for entry in std::fs::read_dir(format!("/proc/{pid}/task"))
            .ok()?
            .flatten()
        {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            // A thread that ended between the listing and the read counts nothing.
            let cpu = stat_cpu(&entry.path().join("stat"), ticks).unwrap_or_default();
            match comm.trim() {
                "agora-engine" => t.engine += cpu,
                "tokio-rt-worker" => t.tokio += cpu,
                _ => {}
            }
        }
        Some(t)
    }

    fn since(self, before: Threads) -> Threads {
        Threads {
            engine: self.engine.saturating_sub(before.engine),
            tokio: self.tokio.saturating_sub(before.tokio),
        }
    }
}

/// The file system type of the mount that holds `path` (longest mount point prefix in
/// `/proc/mounts`).
fn fs_type(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_dev, at, ty) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(at).then(|| (at.len(), ty.to_string()))
        })
        .max()
        .map_or_else(|| "unknown".to_string(), |(_, ty)| ty)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// `perf record` attached to one process; stopped with SIGINT.
struct Perf {
    child: Child,
    out: PathBuf,
}

impl Perf {
    fn start(args: &[String], pid: u32, out: PathBuf) -> Perf {
        let log = std::fs::File::create(out.with_extension("log")).expect("perf log file");
        let child = Command::new("perf")
            .arg("record")
            .args(args)
            .arg("-o")
            .arg(&out)
            .arg("-p")
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the perf log"))
            .stderr(log)
            .spawn()
            .expect("cannot run `perf record` (is perf installed?)");
        // perf opens its events (attaches) before it writes the file's header: wait (bounded)
        // until the file is no longer empty.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&out).map_or(0, |m| m.len()) == 0 {
            assert!(
                Instant::now() < deadline,
                "perf did not start within 10 s; see {}",
                out.with_extension("log").display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Perf { child, out }
    }

    fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    eprintln!("perf did not stop within 60 s of SIGINT; killed it");
                    break;
                }
            }
        }
        println!("    perf: {}", self.out.display());
    }
}

// ---------------------------------------------------------------------------------------------
// Setup.

/// A node's HTTP API, from its `api.json`.
#[derive(Clone)]
struct Api {
    base: String,
    token: String,
}

impl Api {
    fn of(dir: &Path) -> Api {
        let text = std::fs::read_to_string(dir.join(API_FILE)).expect("read api.json");
        let file: ApiFile = serde_json::from_str(&text).expect("parse api.json");
        Api {
            base: format!("http://{}/api/v1", file.addr),
            token: file.token,
        }
    }
}

/// The nodes of one run. Fields drop in order: the processes are killed before their data
/// dirs are removed.
struct Cluster {
    nodes: Vec<AgoraProc>,
    apis: Vec<Api>,
    space: String,
    ideas: Vec<String>,
    _tmp: tempfile::TempDir,
}

fn peers_subscribed(node: &AgoraProc, space: &str, want: &str) -> Result<(), String> {
    let got = node.peer_ids(Some(space))?;
    if got.contains(want) {
        Ok(())
    } else {
        Err(format!(
            "{} does not show {want} in the space yet: {got:?}",
            node.name
        ))
    }
}

fn idea_list(node: &AgoraProc, space: &str) -> Result<Vec<Value>, String> {
    node.try_cli_json(&["idea", "list", "--space", space, "--json"])
}

fn setup(cfg: &Config, n_nodes: usize) -> Cluster {
    let tmp = tempfile::Builder::new()
        .prefix("agora-contention-")
        .tempdir_in(&cfg.base)
        .unwrap_or_else(|e| panic!("cannot make a temp dir in {}: {e}", cfg.base.display()));
    let names = ["Alice", "Bob"];
    let dirs: Vec<PathBuf> = ["nodeA", "nodeB"][..n_nodes]
        .iter()
        .map(|d| tmp.path().join(d))
        .collect();
    for (dir, name) in dirs.iter().zip(names) {
        let init: InitOutput = Cli::new(dir).json(&["init", "--name", name, "--json"]);
        assert!(init.created, "init should create an identity: {init:?}");
    }
    let launch = |args: &[&str]| Launch::new(args).log_filter(NODE_LOG_FILTER);
    let mut nodes = vec![AgoraProc::start_launch(&dirs[0], launch(LOOPBACK_ARGS))];
    if n_nodes == 2 {
        let addr = nodes[0].listen_addr("/ip4/127.0.0.1/tcp/");
        let mut args = LOOPBACK_ARGS.to_vec();
        args.extend(["--peer", addr.as_str()]);
        nodes.push(AgoraProc::start_launch(&dirs[1], launch(&args)));
    }
    let created: SpaceCreated = nodes[0].cli_json(&["space", "create", "Bench", "--json"]);
    let space = created.id.to_string();
    if n_nodes == 2 {
        let (a, b) = (&nodes[0], &nodes[1]);
        b.cli_ok(&["space", "join", &space]);
        let (pa, pb) = (a.peer_id(), b.peer_id());
        wait_until(
            "both nodes to see each other subscribed to the space",
            SETUP_TIMEOUT,
            &[a, b],
            || {
                peers_subscribed(a, &space, &pb)?;
                peers_subscribed(b, &space, &pa)
            },
        );
    }
    let ideas: Vec<String> = (0..IDEAS)
        .map(|i| {
            nodes[0]
                .add_idea(&space, &format!("Idea {i}"), "Comment on me.", &[])
                .to_string()
        })
        .collect();
    if n_nodes == 2 {
        let (a, b) = (&nodes[0], &nodes[1]);
        wait_until(
            "B to list the same ideas as A",
            SETUP_TIMEOUT,
            &[a, b],
            || {
                let (la, lb) = (idea_list(a, &space)?, idea_list(b, &space)?);
                if la.len() == IDEAS && la == lb {
                    Ok(())
                } else {
                    Err(format!("A lists {} ideas, B {}", la.len(), lb.len()))
                }
            },
        );
    }
    let apis = dirs.iter().map(|d| Api::of(d)).collect();
    Cluster {
        nodes,
        apis,
        space,
        ideas,
        _tmp: tmp,
    }
}

// ---------------------------------------------------------------------------------------------
// The timed section.

/// What the writers of one client saw.
#[derive(Default)]
struct Writes {
    latencies: Vec<Duration>,
    /// Time (since the start) of the last acknowledgment.
    last_ack: Duration,
    /// Answers 204 (no body), the rest were 200.
    no_content: usize,
}

/// One writer: takes the next comment index until all are taken; one request at a time.
#[allow(clippy::too_many_arguments)]
async fn writer(
    http: reqwest::Client,
    api: Api,
    ideas: Arc<Vec<String>>,
    texts: Arc<Vec<String>>,
    next: Arc<AtomicUsize>,
    t0: Instant,
    minimal: bool,
) -> Result<Writes, String> {
    let mut w = Writes::default();
    // Bounded: each pass takes a distinct index below texts.len().
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(text) = texts.get(i) else {
            return Ok(w);
        };
        let idea = &ideas[i % ideas.len()];
        let url = format!("{}/ideas/{idea}/comments", api.base);
        let sent = Instant::now();
        let mut req = http.post(&url).bearer_auth(&api.token);
        if minimal {
            req = req.header("Prefer", "return=minimal");
        }
        let resp = req
            .json(&serde_json::json!({ "text": text }))
            .send()
            .await
            .map_err(|e| format!("POST {url}: {e}"))?;
        let status = resp.status();
        // Read the body to the end (empty for 204) so that the connection is reused.
        let body = resp
            .bytes()
            .await
            .map_err(|e| format!("POST {url}: reading the answer: {e}"))?;
        match status.as_u16() {
            200 => {}
            204 => w.no_content += 1,
            _ => {
                return Err(format!(
                    "POST {url} answered {status}: {}",
                    String::from_utf8_lossy(&body)
                ))
            }
        }
        let now = Instant::now();
        w.latencies.push(now - sent);
        w.last_ack = now - t0;
    }
}

/// `GET /spaces/{space}/ideas` as JSON text.
async fn fetch_ideas(http: &reqwest::Client, api: &Api, space: &str) -> Result<String, String> {
    let url = format!("{}/spaces/{space}/ideas", api.base);
    let resp = http
        .get(&url)
        .bearer_auth(&api.token)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .map_err(|e| format!("GET {url}: reading the answer: {e}"))?;
    if !status.is_success() {
        return Err(format!("GET {url} answered {status}: {text}"));
    }
    Ok(text)
}

/// `GET /spaces/{space}/ideas` on every node at the same time, in the order of `apis`.
async fn fetch_all(
    http: &reqwest::Client,
    apis: &[Api],
    space: &str,
) -> Result<Vec<String>, String> {
    let mut set = tokio::task::JoinSet::new();
    for (i, api) in apis.iter().enumerate() {
        let (http, api, space) = (http.clone(), api.clone(), space.to_string());
        set.spawn(async move { (i, fetch_ideas(&http, &api, &space).await) });
    }
    let mut out = vec![String::new(); apis.len()];
    while let Some(r) = set.join_next().await {
        let (i, text) = r.map_err(|e| format!("a poll failed: {e}"))?;
        out[i] = text?;
    }
    Ok(out)
}

/// Comments per idea (by idea id) of an idea list.
fn comment_counts(list: &Value) -> Result<BTreeMap<String, usize>, String> {
    let ideas = list.as_array().ok_or("the idea list is not an array")?;
    ideas
        .iter()
        .map(|i| {
            let id = i["id"].as_str().ok_or("an idea without id")?.to_string();
            let n = i["comments"]
                .as_array()
                .ok_or("an idea without comments")?
                .len();
            Ok((id, n))
        })
        .collect()
}

/// The result of one run.
struct RunResult {
    changes: usize,
    /// Until both nodes were seen holding every change with identical ideas.
    converged: Duration,
    /// Until the last write was acknowledged.
    last_ack: Duration,
    /// Every write's latency, sorted.
    latencies: Vec<Duration>,
    /// Per node: CPU time over the timed section.
    node_cpu: Vec<Option<Duration>>,
    /// Per node: CPU time of the engine thread and the tokio workers over the timed section.
    node_threads: Vec<Option<Threads>>,
    /// The bench process (the clients and the polls).
    client_cpu: Option<Duration>,
    no_content: usize,
    /// Convergence polls made.
    polls: usize,
    /// How long the last (successful) poll took: the convergence time is late by at most this.
    last_poll: Duration,
}

impl RunResult {
    fn rate(&self) -> f64 {
        self.changes as f64 / self.converged.as_secs_f64()
    }
    fn ack_rate(&self) -> f64 {
        self.changes as f64 / self.last_ack.as_secs_f64()
    }
    fn pct(&self, p: f64) -> Duration {
        percentile(&self.latencies, p)
    }
    fn cpu_per_change(&self, node: usize) -> Option<Duration> {
        self.node_cpu
            .get(node)
            .copied()
            .flatten()
            .map(|c| c / self.changes as u32)
    }
    /// Per change on one node: (engine thread, tokio workers, the other threads).
    fn split_per_change(&self, node: usize) -> Option<(Duration, Duration, Duration)> {
        let total = self.node_cpu.get(node).copied().flatten()?;
        let t = self.node_threads.get(node).copied().flatten()?;
        let n = self.changes as u32;
        let rest = total.saturating_sub(t.engine + t.tokio);
        Some((t.engine / n, t.tokio / n, rest / n))
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn timed(
    cluster: &Cluster,
    clients: &[(usize, usize)],
    texts: &[Arc<Vec<String>>],
    ticks: u64,
    minimal: bool,
) -> Result<RunResult, String> {
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let ideas = Arc::new(cluster.ideas.clone());
    let pids: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| n.pid().expect("node running").to_string())
        .collect();
    let changes: usize = clients.iter().map(|c| c.1).sum();

    let cpu0: Vec<Option<Duration>> = pids.iter().map(|p| cpu_time(p, ticks)).collect();
    let threads0: Vec<Option<Threads>> = pids.iter().map(|p| Threads::of(p, ticks)).collect();
    let self_cpu0 = cpu_time("self", ticks);
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (c, &(inflight, _)) in clients.iter().enumerate() {
        let next = Arc::new(AtomicUsize::new(0));
        for _ in 0..inflight {
            set.spawn(writer(
                http.clone(),
                cluster.apis[c].clone(),
                ideas.clone(),
                texts[c].clone(),
                next.clone(),
                t0,
                minimal,
            ));
        }
    }
    let mut all = Writes::default();
    let joined = tokio::time::timeout(WRITE_TIMEOUT, async {
        while let Some(r) = set.join_next().await {
            let w = r.map_err(|e| format!("a writer failed: {e}"))??;
            all.latencies.extend(w.latencies);
            all.last_ack = all.last_ack.max(w.last_ack);
            all.no_content += w.no_content;
        }
        Ok::<(), String>(())
    })
    .await;
    match joined {
        Ok(r) => r?,
        Err(_) => {
            return Err(format!(
                "the writes did not finish within {WRITE_TIMEOUT:?}"
            ))
        }
    }

    // Poll every node until all hold every comment and answer the same JSON.
    let deadline = t0 + all.last_ack + CONVERGE_TIMEOUT;
    let mut polls = 0;
    let (converged, last_poll) = loop {
        polls += 1;
        let poll_start = t0.elapsed();
        let texts_now = fetch_all(&http, &cluster.apis, &cluster.space).await?;
        let at = t0.elapsed();
        let mut totals = Vec::new();
        for t in &texts_now {
            let v: Value = serde_json::from_str(t).map_err(|e| format!("idea list: {e}"))?;
            totals.push(comment_counts(&v)?.values().sum::<usize>());
        }
        let same = texts_now.windows(2).all(|w| w[0] == w[1]);
        if same && totals.iter().all(|&t| t == changes) {
            break (at, at - poll_start);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "not converged {CONVERGE_TIMEOUT:?} after the last write: comments per node \
                 {totals:?} (want {changes}), identical JSON: {same}"
            ));
        }
        tokio::time::sleep(POLL).await;
    };
    let node_cpu = pids
        .iter()
        .zip(&cpu0)
        .map(|(p, c0)| Some(cpu_time(p, ticks)? - (*c0)?))
        .collect();
    let node_threads = pids
        .iter()
        .zip(&threads0)
        .map(|(p, t0)| Some(Threads::of(p, ticks)?.since((*t0)?)))
        .collect();
    let client_cpu = cpu_time("self", ticks).zip(self_cpu0).map(|(b, a)| b - a);

    // Untimed check: node A holds exactly the texts that were sent.
    let list: Value =
        serde_json::from_str(&fetch_ideas(&http, &cluster.apis[0], &cluster.space).await?)
            .map_err(|e| format!("idea list: {e}"))?;
    let mut held: Vec<&str> = list
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|i| i["comments"].as_array().into_iter().flatten())
        .filter_map(|c| c["text"].as_str())
        .collect();
    held.sort_unstable();
    let mut sent: Vec<&str> = texts
        .iter()
        .flat_map(|t| t.iter().map(String::as_str))
        .collect();
    sent.sort_unstable();
    if held != sent {
        return Err(format!(
            "node A holds {} comments, not exactly the {} sent",
            held.len(),
            sent.len()
        ));
    }

    all.latencies.sort_unstable();
    Ok(RunResult {
        changes,
        converged,
        last_ack: all.last_ack,
        latencies: all.latencies,
        node_cpu,
        node_threads,
        client_cpu,
        no_content: all.no_content,
        polls,
        last_poll,
    })
}

// ---------------------------------------------------------------------------------------------
// Reporting.

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

fn ms1(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn ms2(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn cpu_ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "?".into(),
        |d| format!("{:.2}", d.as_secs_f64() * 1000.0),
    )
}

fn median_f64(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn median_dur(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn median_opt(v: Vec<Option<Duration>>) -> Option<Duration> {
    let v: Option<Vec<Duration>> = v.into_iter().collect();
    v.map(median_dur)
}

fn print_run(mode: Mode, run: usize, runs: usize, r: &RunResult) {
    let cpu: Vec<String> = ["A", "B"]
        .iter()
        .enumerate()
        .take(r.node_cpu.len())
        .map(|(i, n)| {
            let split = r.split_per_change(i).map_or_else(String::new, |(e, t, o)| {
                format!(
                    " (engine {}, tokio {}, other threads {})",
                    cpu_ms(Some(e)),
                    cpu_ms(Some(t)),
                    cpu_ms(Some(o))
                )
            });
            format!("{n} {} ms{split}", cpu_ms(r.cpu_per_change(i)))
        })
        .collect();
    println!(
        "  {:<10} run {}/{}: {} changes in {} ms -> {:.0} changes/s ({:.2} of goal); last ack {} ms \
         ({:.0}/s); latency p50 {} ms, p99 {} ms; CPU/change {}; bench process {} ms CPU; \
         {} x 204 of {}; {} polls, the last took {} ms",
        mode.name(),
        run,
        runs,
        r.changes,
        ms(r.converged),
        r.rate(),
        r.rate() / GOAL,
        ms(r.last_ack),
        r.ack_rate(),
        ms2(r.pct(50.0)),
        ms2(r.pct(99.0)),
        cpu.join(", "),
        cpu_ms(r.client_cpu),
        r.no_content,
        r.changes,
        r.polls,
        ms1(r.last_poll),
    );
}

fn main() {
    // `cargo bench` sets this at run time as well; the fallback lets the bench binary run
    // directly (e.g. under perf).
    if std::env::var_os("CARGO_BIN_EXE_agora").is_none() {
        std::env::set_var("CARGO_BIN_EXE_agora", env!("CARGO_BIN_EXE_agora"));
    }
    let bin = agora_testkit::process::agora_bin();
    assert!(bin.exists(), "no agora binary at {}", bin.display());
    let cfg = Config::from_env();
    if let Some(dir) = &cfg.perf {
        std::fs::create_dir_all(dir).expect("create the perf output dir");
    }
    let ticks = clock_ticks();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("local writes under contention (goal {GOAL:.0} changes/s end to end)");
    println!("  binary: {}", bin.display());
    println!(
        "  data dirs under {} ({}); {cores} cores; load average {} at start",
        cfg.base.display(),
        fs_type(&cfg.base),
        loadavg()
    );
    for m in &cfg.modes {
        println!("  {}: {}", m.name(), m.describe(&cfg));
    }
    if !cfg.minimal {
        println!("  writes WITHOUT `Prefer: return=minimal`: every write reads the idea back");
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    // Comment texts, the same in every run: client c, comment i.
    let texts = |mode: Mode| -> Vec<Arc<Vec<String>>> {
        cfg.clients(mode)
            .iter()
            .enumerate()
            .map(|(c, &(_, n))| {
                let mut rng = Rng::new(SEED + c as u64);
                Arc::new(
                    (0..n)
                        .map(|i| format!("c{c}-{i:04} {}", rng.text(20, 120)))
                        .collect(),
                )
            })
            .collect()
    };

    let mut results: Vec<(Mode, Vec<RunResult>)> =
        cfg.modes.iter().map(|&m| (m, Vec::new())).collect();
    let started = Instant::now();
    for run in 1..=cfg.runs {
        for (mode, rs) in results.iter_mut() {
            let mode = *mode;
            let cluster = setup(&cfg, mode.nodes());
            let perf = cfg.perf.as_ref().map(|dir| {
                let out = dir.join(format!("{}-run{run}-nodeA.data", mode.name()));
                Perf::start(
                    &cfg.perf_args,
                    cluster.nodes[0].pid().expect("running"),
                    out,
                )
            });
            let r = rt.block_on(timed(
                &cluster,
                &cfg.clients(mode),
                &texts(mode),
                ticks,
                cfg.minimal,
            ));
            if let Some(p) = perf {
                p.stop();
            }
            let r = r.unwrap_or_else(|e| {
                let logs: Vec<String> = cluster.nodes.iter().map(|n| n.diagnostics()).collect();
                panic!("{} run {run}: {e}\n{}", mode.name(), logs.join("\n"))
            });
            print_run(mode, run, cfg.runs, &r);
            rs.push(r);
            drop(cluster);
        }
    }
    println!(
        "done in {:.0} s; load average {} at the end",
        started.elapsed().as_secs_f64(),
        loadavg()
    );

    // Medians (each column separately) and the table.
    println!();
    println!(
        "Medians of {} runs; data dirs on {} ({}).",
        cfg.runs,
        cfg.base.display(),
        fs_type(&cfg.base)
    );
    println!();
    println!(
        "| mode | changes/s end to end | / goal (1,500) | converged (ms) | last ack (ms) | ack \
         changes/s | p50 / p99 latency (ms) | CPU per change A / B (ms) | runs: changes/s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for (mode, rs) in &results {
        let rate = median_f64(rs.iter().map(RunResult::rate).collect());
        let ack_rate = median_f64(rs.iter().map(RunResult::ack_rate).collect());
        let conv = median_dur(rs.iter().map(|r| r.converged).collect());
        let ack = median_dur(rs.iter().map(|r| r.last_ack).collect());
        let p50 = median_dur(rs.iter().map(|r| r.pct(50.0)).collect());
        let p99 = median_dur(rs.iter().map(|r| r.pct(99.0)).collect());
        let cpu: Vec<String> = (0..mode.nodes())
            .map(|n| cpu_ms(median_opt(rs.iter().map(|r| r.cpu_per_change(n)).collect())))
            .collect();
        let each: Vec<String> = rs.iter().map(|r| format!("{:.0}", r.rate())).collect();
        println!(
            "| {} ({}) | **{:.0}** | {:.2} | {} | {} | {:.0} | {} / {} | {} | {} |",
            mode.name(),
            mode.describe(&cfg),
            rate,
            rate / GOAL,
            ms(conv),
            ms(ack),
            ack_rate,
            ms2(p50),
            ms1(p99),
            cpu.join(" / "),
            each.join(", ")
        );
    }
    println!();
    println!(
        "CPU per change by thread (ms, medians; `/proc/<pid>/task`; other = sled's I/O pool and \
         the rest):"
    );
    println!();
    println!(
        "| mode | node | total | engine thread | tokio workers (HTTP, network) | other threads |"
    );
    println!("|---|---|---:|---:|---:|---:|");
    for (mode, rs) in &results {
        for (n, name) in ["A", "B"].iter().enumerate().take(mode.nodes()) {
            let total = median_opt(rs.iter().map(|r| r.cpu_per_change(n)).collect());
            let splits: Option<Vec<(Duration, Duration, Duration)>> =
                rs.iter().map(|r| r.split_per_change(n)).collect();
            let col = |f: fn(&(Duration, Duration, Duration)) -> Duration| {
                cpu_ms(
                    splits
                        .as_ref()
                        .map(|v| median_dur(v.iter().map(f).collect())),
                )
            };
            println!(
                "| {} | {name} | {} | {} | {} | {} |",
                mode.name(),
                cpu_ms(total),
                col(|s| s.0),
                col(|s| s.1),
                col(|s| s.2)
            );
        }
    }
}
