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
//! Nodes and CLI commands run through the test kit's process harness (`agora_testkit::process`),
//! with this test's tighter deadlines.

use agora_protocol::Idea;
use agora_testkit::process::{
    api_pid, idea_add_args, AgoraProc, Cli, IdeaCreated, Launch, SpaceCreated,
};
use agora_testkit::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// How the node is launched: loopback only, random ports, no mDNS, quiet logs.
fn launch() -> Launch {
    Launch::new(&[
        "--no-mdns",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--api",
        "127.0.0.1:0",
    ])
    .log_filter("warn,agora=info")
    .timeouts(START_TIMEOUT, CLI_TIMEOUT)
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
    cli: Cli,
    space: String,
    round: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Acked>>,
) -> usize {
    let mut attempts = 0;
    while !stop.load(Ordering::SeqCst) {
        attempts += 1;
        let title = format!("round {round} idea {attempts}");
        let out = cli.run(&idea_add_args(&space, &title, "crash test", &[]));
        if out.status.success() {
            let v: IdeaCreated = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
                panic!(
                    "`idea add` exited 0 but printed no idea id ({e}): {}",
                    String::from_utf8_lossy(&out.stdout)
                )
            });
            acked.lock().unwrap().ideas.insert(v.id.to_string(), title);
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
    cli: Cli,
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
        let out = cli.run(&["idea", "comment", target, &text]);
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
fn check_acked(node: &AgoraProc, space: &str, acked: &Acked, latest_round: usize, when: &str) {
    let list: Vec<Idea> = node
        .try_cli_json(&["idea", "list", "--space", space, "--json"])
        .unwrap_or_else(|e| panic!("{when}: {e}"));
    let mut seen: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for idea in list {
        let comments = idea.comments.into_iter().map(|c| c.text).collect();
        seen.insert(idea.id.to_string(), (idea.title, comments));
    }
    for (id, title) in &acked.ideas {
        match seen.get(id) {
            Some((t, _)) => assert_eq!(t, title, "{when}: idea {id} has another title"),
            None => panic!(
                "{when}: acknowledged idea {id} ({title:?}) is lost; the node holds {} ideas\n--- log:\n{}",
                seen.len(),
                node.log_tail(40)
            ),
        }
    }
    for (id, text) in &acked.comments {
        let present = seen.get(id).is_some_and(|(_, c)| c.contains(text));
        assert!(
            present,
            "{when}: acknowledged comment {text:?} on idea {id} is lost\n--- log:\n{}",
            node.log_tail(40)
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
        let idea: Idea = node
            .try_cli_json(&["idea", "show", id, "--json"])
            .unwrap_or_else(|e| panic!("{when}: acknowledged idea {id} is lost: {e}"));
        if let Some(title) = acked.ideas.get(id) {
            assert_eq!(idea.title, *title, "{when}");
        }
        let comments: BTreeSet<&str> = idea.comments.iter().map(|c| c.text.as_str()).collect();
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
    let mut rng = Rng::new(SEED);
    let started = Instant::now();

    // Setup: a space and two ideas to comment on.
    let mut node = AgoraProc::start_launch(&dir, launch());
    let cli = node.cli_runner().clone();
    let created: SpaceCreated = cli
        .try_json(&["space", "create", "Crash test", "--json"])
        .expect("space");
    let space = created.id.to_string();
    let acked = Arc::new(Mutex::new(Acked::default()));
    let mut targets = Vec::new();
    for t in ["comment target A", "comment target B"] {
        let v: IdeaCreated = cli
            .try_json(&["idea", "add", "--space", &space, "--title", t, "--json"])
            .expect("idea add");
        let id = v.id.to_string();
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
            node.kill_9();
            node.respawn();
            std::thread::sleep(Duration::from_millis(rng.range(0, 150) as u64));
            node.kill_9();
            startup_kills += 1;
            node.respawn();
            ready_max = ready_max.max(node.wait_ready());
            let a = acked.lock().unwrap();
            check_acked(
                &node,
                &space,
                &a,
                round - 1,
                &format!("after a kill during start-up (round {round})"),
            );
        }

        // Writers run back to back; the node dies under them.
        let stop = Arc::new(AtomicBool::new(false));
        let ideas = {
            let (d, s, st, a) = (cli.clone(), space.clone(), stop.clone(), acked.clone());
            std::thread::spawn(move || idea_writer(d, s, round, st, a))
        };
        let comments = {
            let known: Vec<String> = {
                let a = acked.lock().unwrap();
                let mut t = targets.clone();
                t.extend(a.ideas.keys().filter(|k| !targets.contains(k)).cloned());
                t
            };
            let (d, st, a) = (cli.clone(), stop.clone(), acked.clone());
            std::thread::spawn(move || comment_writer(d, known, round, st, a))
        };
        std::thread::sleep(Duration::from_millis(rng.range(30, 700) as u64));
        let pid = api_pid(&dir).expect("api.json of the running node");
        assert_eq!(Some(pid), node.pid(), "api.json names another process");
        let status = node.kill_9();
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
            let out = cli.run(&["status", "--json"]);
            assert!(!out.status.success(), "`status` succeeded with no node");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("no node is running"),
                "unexpected error with a stale api.json: {err}"
            );
        }

        // Restart on the same data dir: it overwrites the stale api.json once it answers.
        node.respawn();
        ready_max = ready_max.max(node.wait_ready());
        let a = acked.lock().unwrap();
        check_acked(
            &node,
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
