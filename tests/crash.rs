//! Crash safety of a real node process: **no acknowledged write is ever lost** (design invariant
//! 2: the API answers success only after the change is on disk).
//!
//! A real `agora up` process receives writes through the CLI (`idea add`, `idea comment`) from
//! two writer threads issuing commands back to back, while the test kills the node with
//! `kill -9` (the pid read from `<data dir>/api.json`) at seeded pseudo-random moments. After
//! every kill the node is restarted on the same data dir; the test asserts that the store opens
//! every time and that every write whose CLI command exited 0 is present. Some rounds kill the
//! node while it is still starting (opening and recovering its store) instead.
//!
//! The harness is private to this file: it starts the binary with its output appended to
//! `<data dir>/agora-up.log`, runs every CLI command with a deadline, and kills the node in
//! `Drop`, so a failing test leaves nothing running.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_agora");
/// How long one CLI command may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a (re)started node may take to answer `status`.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Rounds in which the node is killed while it takes writes.
const WRITE_ROUNDS: usize = 22;
/// The whole kill loop stops after this long, whatever the round count (then it fails if fewer
/// than `MIN_WRITE_ROUNDS` rounds ran: the machine is too slow for the test's budget).
const LOOP_BUDGET: Duration = Duration::from_secs(75);
/// The least number of write rounds the test accepts.
const MIN_WRITE_ROUNDS: usize = 20;
/// The seed of the kill schedule.
const SEED: u64 = 0x5eed_c0ff_ee00_0001;
/// Name of the node's log inside its data dir.
const LOG_FILE: &str = "agora-up.log";

/// Environment variables that would change what the node or the CLI does.
const SCRUB_ENV: &[&str] = &[
    "AGORA_DATA_DIR",
    "AGORA_LISTEN",
    "AGORA_PEERS",
    "AGORA_API",
    "AGORA_NO_MDNS",
    "RUST_LOG",
];

/// SplitMix64: a tiny deterministic generator for the kill schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn command(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("--data-dir").arg(dir).args(args);
    for k in SCRUB_ENV {
        cmd.env_remove(k);
    }
    cmd.env("NO_COLOR", "1");
    cmd
}

/// Sends SIGKILL to `pid` (`kill -9 PID`).
fn kill_9(pid: u32) {
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("cannot run `kill`");
    assert!(status.success(), "`kill -9 {pid}` failed: {status}");
}

/// Runs one CLI command to completion with captured output; kills it and panics after
/// [`CLI_TIMEOUT`].
fn cli(dir: &Path, args: &[&str]) -> Output {
    let what = format!("agora --data-dir {} {}", dir.display(), args.join(" "));
    let child = command(dir, args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{what}`: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(CLI_TIMEOUT) {
        Ok(out) => out.unwrap_or_else(|e| panic!("waiting for `{what}` failed: {e}")),
        Err(_) => {
            kill_9(pid);
            panic!("`{what}` did not finish within {CLI_TIMEOUT:?}");
        }
    }
}

/// Runs a CLI command that must succeed and print JSON.
fn cli_json(dir: &Path, args: &[&str]) -> Result<Value, String> {
    let out = cli(dir, args);
    if !out.status.success() {
        return Err(format!(
            "`agora {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "`agora {}` printed no JSON ({e}): {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The last lines of a node's log, for failure messages.
fn log_tail(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join(LOG_FILE)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The pid recorded in `<dir>/api.json`, if the file is there and readable.
fn api_pid(dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(dir.join("api.json")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v["pid"].as_u64().and_then(|p| u32::try_from(p).ok())
}

/// A running `agora up` process; killed (SIGKILL) when dropped.
struct NodeProc {
    child: Child,
    dir: PathBuf,
}

impl NodeProc {
    /// Starts `agora up` on `dir` (loopback only, random ports, no mDNS).
    fn spawn(dir: &Path, start_no: usize) -> NodeProc {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(LOG_FILE))
            .expect("cannot open the node log");
        writeln!(log, "===== start {start_no} =====").expect("cannot write the node log");
        let child = command(
            dir,
            &[
                "up",
                "--no-mdns",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--api",
                "127.0.0.1:0",
            ],
        )
        .env("RUST_LOG", "warn,agora=info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .expect("cannot start `agora up`");
        NodeProc {
            child,
            dir: dir.to_path_buf(),
        }
    }

    /// Waits until this very process answers `status` (the pid in `api.json` is ours: a stale
    /// file left by a killed node does not count). Panics if the process exits first, e.g.
    /// because the store does not open.
    fn wait_ready(&mut self) -> Duration {
        let start = Instant::now();
        let mut last = String::from("not polled yet");
        while start.elapsed() < START_TIMEOUT {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "the node exited while starting ({status}): the store did not open?\n--- log:\n{}",
                    log_tail(&self.dir)
                );
            }
            match api_pid(&self.dir) {
                Some(pid) if pid == self.child.id() => {
                    match cli_json(&self.dir, &["status", "--json"]) {
                        Ok(_) => return start.elapsed(),
                        Err(e) => last = e,
                    }
                }
                other => last = format!("api.json names pid {other:?}"),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "the node did not answer within {START_TIMEOUT:?}; last: {last}\n--- log:\n{}",
            log_tail(&self.dir)
        );
    }

    /// SIGKILLs the node and reaps it.
    fn kill_9(mut self, pid: u32) -> ExitStatus {
        kill_9(pid);
        self.child.wait().expect("wait for the killed node")
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every write the node acknowledged (its CLI command exited 0).
#[derive(Default)]
struct Acked {
    /// Idea id → title.
    ideas: BTreeMap<String, String>,
    /// (idea id, comment text).
    comments: Vec<(String, String)>,
}

/// Issues `idea add` commands back to back until `stop`; records each acknowledged one.
fn idea_writer(
    dir: PathBuf,
    space: String,
    round: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Acked>>,
) -> usize {
    let mut attempts = 0;
    while !stop.load(Ordering::SeqCst) {
        attempts += 1;
        let title = format!("round {round} idea {attempts}");
        let out = cli(
            &dir,
            &[
                "idea",
                "add",
                "--space",
                &space,
                "--title",
                &title,
                "--body",
                "crash test",
                "--json",
            ],
        );
        if out.status.success() {
            let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
                panic!(
                    "`idea add` exited 0 but printed no JSON ({e}): {}",
                    String::from_utf8_lossy(&out.stdout)
                )
            });
            let id = v["id"]
                .as_str()
                .unwrap_or_else(|| panic!("`idea add` printed no id: {v}"))
                .to_string();
            acked.lock().unwrap().ideas.insert(id, title);
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    attempts
}

/// Issues `idea comment` commands back to back until `stop`, mostly on one idea (so that its
/// document grows past the snapshot threshold over the rounds), sometimes on another
/// acknowledged idea; records each acknowledged one.
fn comment_writer(
    dir: PathBuf,
    targets: Vec<String>,
    round: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Acked>>,
) -> usize {
    let mut attempts = 0;
    while !stop.load(Ordering::SeqCst) {
        attempts += 1;
        let target = if attempts % 4 == 3 {
            &targets[(attempts / 4) % targets.len()]
        } else {
            &targets[0]
        };
        let text = format!("round {round} comment {attempts}");
        let out = cli(&dir, &["idea", "comment", target, &text]);
        if out.status.success() {
            acked.lock().unwrap().comments.push((target.clone(), text));
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    attempts
}

/// Asserts that every acknowledged write is in the node: one `idea list` for everything, and
/// `idea show` for the ideas written in the latest round.
fn check_acked(dir: &Path, space: &str, acked: &Acked, latest_round: usize, when: &str) {
    let list = cli_json(dir, &["idea", "list", "--space", space, "--json"])
        .unwrap_or_else(|e| panic!("{when}: {e}"));
    let mut seen: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for idea in list.as_array().expect("idea list prints an array") {
        let id = idea["id"].as_str().expect("idea id").to_string();
        let title = idea["title"].as_str().unwrap_or_default().to_string();
        let comments = idea["comments"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["text"].as_str().map(str::to_string))
            .collect();
        seen.insert(id, (title, comments));
    }
    for (id, title) in &acked.ideas {
        match seen.get(id) {
            Some((t, _)) => assert_eq!(t, title, "{when}: idea {id} has another title"),
            None => panic!(
                "{when}: acknowledged idea {id} ({title:?}) is lost; the node holds {} ideas\n--- log:\n{}",
                seen.len(),
                log_tail(dir)
            ),
        }
    }
    for (id, text) in &acked.comments {
        let present = seen.get(id).is_some_and(|(_, c)| c.contains(text));
        assert!(
            present,
            "{when}: acknowledged comment {text:?} on idea {id} is lost\n--- log:\n{}",
            log_tail(dir)
        );
    }
    // `idea show` for what the latest round wrote.
    let prefix = format!("round {latest_round} ");
    let mut shown: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (id, title) in &acked.ideas {
        if title.starts_with(&prefix) {
            shown.entry(id).or_default();
        }
    }
    for (id, text) in &acked.comments {
        if text.starts_with(&prefix) {
            shown.entry(id).or_default().insert(text);
        }
    }
    for (id, texts) in shown {
        let idea = cli_json(dir, &["idea", "show", id, "--json"])
            .unwrap_or_else(|e| panic!("{when}: acknowledged idea {id} is lost: {e}"));
        if let Some(title) = acked.ideas.get(id) {
            assert_eq!(idea["title"].as_str(), Some(title.as_str()), "{when}");
        }
        let comments: BTreeSet<&str> = idea["comments"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["text"].as_str())
            .collect();
        for t in texts {
            assert!(
                comments.contains(t),
                "{when}: `idea show {id}` lacks acknowledged comment {t:?}"
            );
        }
    }
}

#[test]
fn no_acknowledged_write_is_lost_when_the_node_is_killed() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().to_path_buf();
    let mut rng = Rng(SEED);
    let started = Instant::now();
    let mut starts = 0usize;

    // Setup: a space and two ideas to comment on.
    let mut node = NodeProc::spawn(&dir, starts);
    starts += 1;
    node.wait_ready();
    let space = cli_json(&dir, &["space", "create", "Crash test", "--json"]).expect("space");
    let space = space["id"].as_str().expect("space id").to_string();
    let acked = Arc::new(Mutex::new(Acked::default()));
    let mut targets = Vec::new();
    for t in ["comment target A", "comment target B"] {
        let v = cli_json(
            &dir,
            &["idea", "add", "--space", &space, "--title", t, "--json"],
        )
        .expect("idea add");
        let id = v["id"].as_str().expect("idea id").to_string();
        acked
            .lock()
            .unwrap()
            .ideas
            .insert(id.clone(), t.to_string());
        targets.push(id);
    }

    let mut write_rounds = 0usize;
    let mut startup_kills = 0usize;
    let mut attempts_total = 0usize;
    let mut ready_max = Duration::ZERO;
    let mut round = 0usize;
    while write_rounds < WRITE_ROUNDS && started.elapsed() < LOOP_BUDGET {
        round += 1;
        // One round in five (after the first few) also kills a node that is still starting:
        // opening the store and replaying it. The store must open again after that too.
        if round > 3 && rng.range(0, 4) == 0 {
            let pid = node.child.id();
            node.kill_9(pid);
            let starting = NodeProc::spawn(&dir, starts);
            starts += 1;
            std::thread::sleep(Duration::from_millis(rng.range(0, 150)));
            let pid = starting.child.id();
            starting.kill_9(pid);
            startup_kills += 1;
            node = NodeProc::spawn(&dir, starts);
            starts += 1;
            ready_max = ready_max.max(node.wait_ready());
            let a = acked.lock().unwrap();
            check_acked(
                &dir,
                &space,
                &a,
                round - 1,
                &format!("after a kill during start-up (round {round})"),
            );
        }

        // Writers run back to back; the node dies under them.
        let stop = Arc::new(AtomicBool::new(false));
        let ideas = {
            let (d, s, st, a) = (dir.clone(), space.clone(), stop.clone(), acked.clone());
            std::thread::spawn(move || idea_writer(d, s, round, st, a))
        };
        let comments = {
            let known: Vec<String> = {
                let a = acked.lock().unwrap();
                let mut t = targets.clone();
                t.extend(a.ideas.keys().filter(|k| !targets.contains(k)).cloned());
                t
            };
            let (d, st, a) = (dir.clone(), stop.clone(), acked.clone());
            std::thread::spawn(move || comment_writer(d, known, round, st, a))
        };
        std::thread::sleep(Duration::from_millis(rng.range(30, 700)));
        let pid = api_pid(&dir).expect("api.json of the running node");
        assert_eq!(pid, node.child.id(), "api.json names another process");
        let status = node.kill_9(pid);
        assert!(!status.success(), "the node survived kill -9: {status}");
        stop.store(true, Ordering::SeqCst);
        attempts_total += ideas.join().expect("idea writer panicked");
        attempts_total += comments.join().expect("comment writer panicked");
        write_rounds += 1;

        // The killed node leaves its api.json behind; the CLI must say that no node runs
        // instead of hanging or claiming success.
        if round == 1 {
            assert_eq!(
                api_pid(&dir),
                Some(pid),
                "the stale api.json is still there"
            );
            let out = cli(&dir, &["status", "--json"]);
            assert!(!out.status.success(), "`status` succeeded with no node");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("no node is running"),
                "unexpected error with a stale api.json: {err}"
            );
        }

        // Restart on the same data dir: it overwrites the stale api.json once it answers.
        node = NodeProc::spawn(&dir, starts);
        starts += 1;
        ready_max = ready_max.max(node.wait_ready());
        let a = acked.lock().unwrap();
        check_acked(
            &dir,
            &space,
            &a,
            round,
            &format!("after kill -9 in round {round}"),
        );
    }

    let a = acked.lock().unwrap();
    eprintln!(
        "crash test: {write_rounds} write rounds + {startup_kills} start-up kills in {:.1} s; \
         {attempts_total} write attempts, {} ideas and {} comments acknowledged and all present; \
         slowest restart {:.0} ms",
        started.elapsed().as_secs_f64(),
        a.ideas.len(),
        a.comments.len(),
        ready_max.as_secs_f64() * 1000.0
    );
    assert!(
        write_rounds >= MIN_WRITE_ROUNDS,
        "only {write_rounds} rounds ran within {LOOP_BUDGET:?}"
    );
    assert!(
        a.ideas.len() > 2 + write_rounds / 2 && a.comments.len() > write_rounds,
        "too few acknowledged writes to mean anything: {} ideas, {} comments",
        a.ideas.len(),
        a.comments.len()
    );
    drop(a);
    drop(node);
}
