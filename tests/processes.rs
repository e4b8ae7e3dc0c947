//! End-to-end tests with real `agora up` processes on loopback, driven only through the CLI.
//!
//! Topology: node 2 and node 3 are started with `--peer <node 1>`; mDNS is off. Gossip between
//! node 2 and node 3 goes through node 1.

use agora_node::{NodeStatus, SpaceInfo};
use agora_protocol::idea::Vote;
use agora_protocol::Idea;
use agora_testkit::process::{
    assert_one_line_error, wait_until, AgoraProc, Cli, InitOutput, SpaceCreated, LOOPBACK_ARGS,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Upper bound for gossip to reach every node (it takes well under a second when healthy).
const CONVERGE: Duration = Duration::from_secs(60);

/// Checks that every node sees the expected peers subscribed to `space`.
fn check_subscriptions(expect: &[(&AgoraProc, Vec<&str>)], space: &str) -> Result<(), String> {
    for (node, want) in expect {
        let got = node.peer_ids(Some(space))?;
        for p in want {
            if !got.contains(*p) {
                return Err(format!(
                    "{} does not (yet) show peer {p} in space {space}; it shows {got:?}",
                    node.name
                ));
            }
        }
    }
    Ok(())
}

/// `idea list` and every `idea show`, as JSON, on one node.
#[derive(Debug, PartialEq)]
struct View {
    list: Vec<Idea>,
    shows: BTreeMap<String, Idea>,
}

fn view(node: &AgoraProc, space: &str, ids: &[String]) -> Result<View, String> {
    let list = node.try_cli_json(&["idea", "list", "--space", space, "--json"])?;
    let mut shows = BTreeMap::new();
    for id in ids {
        shows.insert(
            id.clone(),
            node.try_cli_json(&["idea", "show", id, "--json"])?,
        );
    }
    Ok(View { list, shows })
}

/// Where two views first differ, briefly.
fn first_difference(a: &View, b: &View) -> String {
    for (id, x) in &a.shows {
        let y = &b.shows[id];
        if x != y {
            return format!("idea show {id}:\n  {x:?}\n  {y:?}");
        }
    }
    format!("idea list:\n  {:?}\n  {:?}", a.list, b.list)
}

/// The ids listed by `idea list` on a node.
fn listed_ids(node: &AgoraProc, space: &str) -> Result<BTreeSet<String>, String> {
    let list: Vec<Idea> = node.try_cli_json(&["idea", "list", "--space", space, "--json"])?;
    Ok(list.iter().map(|i| i.id.to_string()).collect())
}

/// What one idea must look like once everything has arrived.
struct Expect {
    id: String,
    title: &'static str,
    body: &'static str,
    tags: Vec<&'static str>,
    author: String,
    author_name: &'static str,
    status: &'static str,
    up: u64,
    down: u64,
    /// Author id -> "up" / "down".
    voters: BTreeMap<String, &'static str>,
    /// (comment author name, text), in any order.
    comments: BTreeSet<(String, String)>,
}

fn vote_name(v: &Vote) -> &'static str {
    match v {
        Vote::Up => "up",
        Vote::Down => "down",
    }
}

fn check_idea(node: &str, v: &Idea, e: &Expect) -> Result<(), String> {
    let mut problems = Vec::new();
    let mut want = |ok: bool, what: String| {
        if !ok {
            problems.push(what);
        }
    };
    want(v.id.to_string() == e.id, format!("id {}", v.id));
    want(v.title == e.title, format!("title {:?}", v.title));
    want(v.body == e.body, format!("body {:?}", v.body));
    let mut tags = e.tags.clone();
    tags.sort();
    want(v.tags == tags, format!("tags {:?}", v.tags));
    want(
        v.author.to_string() == e.author,
        format!("author {}", v.author),
    );
    want(
        v.author_name.as_deref() == Some(e.author_name),
        format!("author_name {:?} (want {})", v.author_name, e.author_name),
    );
    want(
        v.status.as_str() == e.status,
        format!("status {}", v.status.as_str()),
    );
    want(
        v.votes.up == e.up && v.votes.down == e.down,
        format!("votes {:?} (want +{} -{})", v.votes, e.up, e.down),
    );
    let voters: BTreeMap<String, &str> = v
        .voters
        .iter()
        .map(|(k, x)| (k.to_string(), vote_name(x)))
        .collect();
    want(
        voters == e.voters,
        format!("voters {voters:?} (want {:?})", e.voters),
    );
    let comments: BTreeSet<(String, String)> = v
        .comments
        .iter()
        .map(|c| {
            (
                c.author_name
                    .clone()
                    .unwrap_or_else(|| "<no author_name>".to_string()),
                c.text.clone(),
            )
        })
        .collect();
    want(
        comments == e.comments,
        format!("comments {comments:?} (want {:?})", e.comments),
    );
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{node}: idea {} ({}) is not as expected: {}",
            e.id,
            e.title,
            problems.join("; ")
        ))
    }
}

/// Waits until all nodes show identical `idea list` / `idea show` JSON that matches `expect`.
fn wait_converged(nodes: &[&AgoraProc], space: &str, expect: &[Expect]) -> View {
    let ids: Vec<String> = expect.iter().map(|e| e.id.clone()).collect();
    wait_until(
        "identical idea list / idea show JSON on every node, as expected",
        CONVERGE,
        nodes,
        || {
            let views = nodes
                .iter()
                .map(|n| view(n, space, &ids))
                .collect::<Result<Vec<_>, _>>()?;
            for (n, v) in nodes.iter().zip(&views) {
                let listed = v.list.len();
                if listed != expect.len() {
                    return Err(format!(
                        "{} lists {listed} ideas, want {}",
                        n.name,
                        expect.len()
                    ));
                }
                for e in expect {
                    check_idea(&n.name, &v.shows[&e.id], e)?;
                }
            }
            for (n, v) in nodes.iter().zip(&views).skip(1) {
                if *v != views[0] {
                    return Err(format!(
                        "{} and {} differ: {}",
                        nodes[0].name,
                        n.name,
                        first_difference(&views[0], v)
                    ));
                }
            }
            Ok(views.into_iter().next().expect("three views"))
        },
    )
}

fn add_idea(node: &AgoraProc, space: &str, title: &str, body: &str, tags: &[&str]) -> String {
    let id = node.add_idea(space, title, body, tags).to_string();
    assert_eq!(id.len(), 32, "idea id should be 32 hex characters: {id}");
    id
}

fn init(dir: &std::path::Path, name: &str) -> String {
    let v: InitOutput = Cli::new(dir).json(&["init", "--name", name, "--json"]);
    assert!(v.created, "init should create an identity: {v:?}");
    v.author.to_string()
}

#[test]
fn three_processes_converge_and_survive_a_restart() {
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().expect("temp dir");
    let dirs: Vec<PathBuf> = (1..=3)
        .map(|i| tmp.path().join(format!("node{i}")))
        .collect();
    let names = ["Alice", "Bob", "Carol"];
    let authors: Vec<String> = dirs.iter().zip(names).map(|(d, n)| init(d, n)).collect();
    assert_eq!(
        authors.iter().collect::<BTreeSet<_>>().len(),
        3,
        "three distinct identities"
    );

    let n1 = AgoraProc::start(&dirs[0], LOOPBACK_ARGS);
    let addr1 = n1.listen_addr("/ip4/127.0.0.1/tcp/");
    let mut with_peer: Vec<&str> = LOOPBACK_ARGS.to_vec();
    with_peer.extend(["--peer", addr1.as_str()]);
    let n2 = AgoraProc::start(&dirs[1], &with_peer);
    let mut n3 = AgoraProc::start(&dirs[2], &with_peer);
    let nodes = [&n1, &n2, &n3];
    let mut pids = Vec::new();
    for ((n, author), name) in nodes.iter().zip(&authors).zip(names) {
        let st = n.status();
        assert_eq!(st.author.to_string(), *author, "{}: status author", n.name);
        assert_eq!(st.name.as_deref(), Some(name), "{}: status name", n.name);
        pids.push(st.peer_id);
    }
    let (p1, p2, p3) = (pids[0].as_str(), pids[1].as_str(), pids[2].as_str());
    eprintln!("[{:?}] three nodes up", t0.elapsed());

    // A space on node 1, joined by 2 and 3.
    // A private space on node 1; 2 and 3 join it with one ticket, as the README shows.
    let space = n1.share_space("Team", &[&n2, &n3]);
    for n in nodes {
        let spaces: Vec<SpaceInfo> = n.cli_json(&["space", "list", "--json"]);
        assert!(
            spaces.iter().any(|x| x.id.to_string() == space),
            "{}: space list lacks {space}: {spaces:?}",
            n.name
        );
    }
    // Node 1 is connected to both; 2 and 3 only to node 1 (there is no peer exchange).
    wait_until(
        "every node to see its peers subscribed to the space",
        CONVERGE,
        &nodes,
        || {
            check_subscriptions(
                &[(&n1, vec![p2, p3]), (&n2, vec![p1]), (&n3, vec![p1])],
                &space,
            )
        },
    );
    eprintln!("[{:?}] subscriptions seen", t0.elapsed());

    // Everyone posts.
    let a = add_idea(
        &n1,
        &space,
        "Faster builds",
        "Cache the target dir between CI runs.",
        &["ci", "speed"],
    );
    let b = add_idea(&n1, &space, "Quarterly offsite", "", &["team"]);
    let c = add_idea(
        &n2,
        &space,
        "Dark mode for the web UI",
        "Easier on the eyes — and ünïcödé works.",
        &["ui"],
    );
    let d = add_idea(
        &n3,
        &space,
        "Weekly demo",
        "Fridays, 15 minutes.\nEveryone shows one thing.",
        &["process", "team"],
    );
    let all_ids: BTreeSet<String> = [&a, &b, &c, &d].into_iter().cloned().collect();
    wait_until(
        "every node to list all four ideas",
        CONVERGE,
        &nodes,
        || {
            for n in nodes {
                let got = listed_ids(n, &space)?;
                if got != all_ids {
                    return Err(format!("{} lists {got:?}, want {all_ids:?}", n.name));
                }
            }
            Ok(())
        },
    );
    eprintln!("[{:?}] ideas everywhere", t0.elapsed());

    // Comments and votes on each other's ideas.
    let comment = |n: &AgoraProc, id: &str, text: &str| {
        let out = n.cli_ok(&["idea", "comment", id, text]);
        assert!(out.contains("comment added"), "{}: {out:?}", n.name);
    };
    let vote = |n: &AgoraProc, id: &str, down: bool| {
        let mut args = vec!["idea", "vote", id];
        if down {
            args.push("--down");
        }
        let out = n.cli_ok(&args);
        let want = if down { "voted down" } else { "voted up" };
        assert!(out.contains(want), "{}: {out:?}", n.name);
    };
    comment(&n2, &a, "Yes, and sccache for the rest.");
    vote(&n2, &a, false);
    comment(&n3, &a, "CI disks are small; watch the size.");
    vote(&n3, &a, true);
    comment(&n1, &c, "Please!");
    vote(&n1, &c, false);
    vote(&n3, &c, false);
    comment(&n1, &d, "Count me in.");
    vote(&n2, &d, false);

    let set = |items: &[(&str, &str)]| -> BTreeSet<(String, String)> {
        items
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    let voters = |items: &[(usize, &'static str)]| -> BTreeMap<String, &'static str> {
        items
            .iter()
            .map(|(i, v)| (authors[*i].clone(), *v))
            .collect()
    };
    let mut expect = vec![
        Expect {
            id: a.clone(),
            title: "Faster builds",
            body: "Cache the target dir between CI runs.",
            tags: vec!["ci", "speed"],
            author: authors[0].clone(),
            author_name: "Alice",
            status: "open",
            up: 1,
            down: 1,
            voters: voters(&[(1, "up"), (2, "down")]),
            comments: set(&[
                ("Bob", "Yes, and sccache for the rest."),
                ("Carol", "CI disks are small; watch the size."),
            ]),
        },
        Expect {
            id: b.clone(),
            title: "Quarterly offsite",
            body: "",
            tags: vec!["team"],
            author: authors[0].clone(),
            author_name: "Alice",
            status: "open",
            up: 0,
            down: 0,
            voters: voters(&[]),
            comments: set(&[]),
        },
        Expect {
            id: c.clone(),
            title: "Dark mode for the web UI",
            body: "Easier on the eyes — and ünïcödé works.",
            tags: vec!["ui"],
            author: authors[1].clone(),
            author_name: "Bob",
            status: "open",
            up: 2,
            down: 0,
            voters: voters(&[(0, "up"), (2, "up")]),
            comments: set(&[("Alice", "Please!")]),
        },
        Expect {
            id: d.clone(),
            title: "Weekly demo",
            body: "Fridays, 15 minutes.\nEveryone shows one thing.",
            tags: vec!["process", "team"],
            author: authors[2].clone(),
            author_name: "Carol",
            status: "open",
            up: 1,
            down: 0,
            voters: voters(&[(1, "up")]),
            comments: set(&[("Alice", "Count me in.")]),
        },
    ];
    let converged = wait_converged(&nodes, &space, &expect);
    eprintln!("[{:?}] converged", t0.elapsed());

    // Stop node 3 cleanly: success, and the API file is gone.
    let status = n3.stop();
    assert!(
        status.success(),
        "node3 should exit 0 after SIGTERM, got {status}\n{}",
        n3.diagnostics()
    );
    assert!(
        !dirs[2].join("api.json").exists(),
        "a clean shutdown removes api.json"
    );
    let out = Cli::new(&dirs[2]).run(&["status", "--json"]);
    assert_one_line_error(&out, "status on a stopped node", "no node is running");

    // Start it again: everything is there at once, from its own store.
    n3.restart();
    let ids: Vec<String> = expect.iter().map(|e| e.id.clone()).collect();
    let after = view(&n3, &space, &ids).unwrap_or_else(|e| panic!("{e}\n{}", n3.diagnostics()));
    assert_eq!(
        after, converged,
        "node3 after restart should show exactly what it showed before"
    );
    eprintln!("[{:?}] node3 restarted with its state", t0.elapsed());
    let nodes = [&n1, &n2, &n3];
    wait_until(
        "node3 to reconnect to node1 after its restart",
        CONVERGE,
        &nodes,
        || check_subscriptions(&[(&n1, vec![p2, p3]), (&n3, vec![p1])], &space),
    );

    // And it takes part again: edits in both directions reach everyone.
    comment(&n3, &b, "Somewhere with a lake.");
    let out = n1.cli_ok(&["idea", "status", &d, "accepted"]);
    assert!(out.contains("accepted"), "{out:?}");
    expect[1].comments = set(&[("Carol", "Somewhere with a lake.")]);
    expect[3].status = "accepted";
    wait_converged(&nodes, &space, &expect);
    eprintln!("[{:?}] converged again after the restart", t0.elapsed());
}

#[test]
fn cli_rejects_bad_input_with_one_line_errors() {
    let tmp = tempfile::tempdir().expect("temp dir");

    // No node running for a data dir.
    let idle = tmp.path().join("idle");
    for args in [
        &["status", "--json"][..],
        &["peers", "--json"],
        &["space", "list", "--json"],
    ] {
        let out = Cli::new(&idle).run(args);
        assert_one_line_error(
            &out,
            &format!("{args:?} without a node"),
            "no node is running",
        );
    }

    // A malformed multiaddr for `up --peer` is refused before anything starts.
    let bad = tmp.path().join("badpeer");
    let mut args: Vec<&str> = vec!["up"];
    args.extend(LOOPBACK_ARGS);
    args.extend(["--peer", "not-a-multiaddr"]);
    let out = Cli::new(&bad).run(&args);
    assert_one_line_error(&out, "up --peer not-a-multiaddr", "multiaddr");
    assert!(
        !bad.join("api.json").exists(),
        "a refused start leaves no api.json"
    );
    let mut args: Vec<&str> = vec!["up"];
    args.extend(LOOPBACK_ARGS);
    args.extend(["--peer", "/ip4/127.0.0.1/tcp/notaport"]);
    let out = Cli::new(&bad).run(&args);
    assert_one_line_error(&out, "up --peer /ip4/127.0.0.1/tcp/notaport", "multiaddr");

    // With a node: bad titles and ids.
    let dir = tmp.path().join("node");
    init(&dir, "Dana");
    let n = AgoraProc::start(&dir, LOOPBACK_ARGS);
    let created: SpaceCreated = n.cli_json(&["space", "create", "Checks", "--json"]);
    let space = created.id.to_string();

    let add = |title: &str| n.cli(&["idea", "add", "--space", &space, "--title", title, "--json"]);
    assert_one_line_error(&add(""), "empty title", "title");
    assert_one_line_error(&add("   "), "blank title", "title");
    let long = "x".repeat(201);
    let line = assert_one_line_error(&add(&long), "201-character title", "title");
    assert!(
        line.contains("200"),
        "the error should name the limit: {line}"
    );
    // The limit itself is fine.
    let ok = add(&"y".repeat(200));
    assert!(
        ok.status.success(),
        "a 200-character title is allowed: {}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let unknown = "0123456789abcdef0123456789abcdef";
    assert_one_line_error(
        &n.cli(&["idea", "show", unknown, "--json"]),
        "show an unknown idea",
        "no idea",
    );
    assert_one_line_error(
        &n.cli(&["idea", "comment", unknown, "hello"]),
        "comment on an unknown idea",
        "no idea",
    );
    assert_one_line_error(
        &n.cli(&["idea", "vote", unknown]),
        "vote on an unknown idea",
        "no idea",
    );
    assert_one_line_error(
        &n.cli(&["idea", "show", "not-an-id", "--json"]),
        "show a malformed idea id",
        "hex",
    );
    assert_one_line_error(
        &n.cli(&["space", "join", "nope"]),
        "join with something that is not a ticket",
        "not a ticket",
    );
    assert_one_line_error(
        &n.cli(&["idea", "list", "--space", unknown, "--json"]),
        "list ideas of a space not joined",
        "not joined",
    );
    assert_one_line_error(
        &n.cli(&["dial", "not-a-multiaddr"]),
        "dial a malformed multiaddr",
        "multiaddr",
    );

    // A second node on the same data dir is refused with a clear message.
    let mut args: Vec<&str> = vec!["up"];
    args.extend(LOOPBACK_ARGS);
    let out = Cli::new(&dir).run(&args);
    assert_one_line_error(&out, "a second `up` on the same data dir", "already");

    // The node is still healthy after all that.
    let st: NodeStatus = n.status();
    assert_eq!(st.name.as_deref(), Some("Dana"), "{st:?}");
}

#[test]
fn kill9_loses_no_acknowledged_write() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("crashy");
    init(&dir, "Erin");
    let mut n = AgoraProc::start(&dir, LOOPBACK_ARGS);
    let created: SpaceCreated = n.cli_json(&["space", "create", "Crash", "--json"]);
    let space = created.id.to_string();
    let mut ids = Vec::new();
    for i in 0..10 {
        let id = add_idea(&n, &space, &format!("Idea {i}"), "body", &["crash"]);
        n.cli_ok(&["idea", "comment", &id, &format!("comment {i}")]);
        n.cli_ok(&["idea", "vote", &id]);
        ids.push(id);
    }
    let before = view(&n, &space, &ids).unwrap_or_else(|e| panic!("{e}"));
    // Every write above was acknowledged: none may be lost to SIGKILL.
    n.kill_9();
    assert!(
        dir.join("api.json").exists(),
        "SIGKILL leaves a stale api.json behind (that is expected)"
    );
    let out = Cli::new(&dir).run(&["status", "--json"]);
    assert_one_line_error(&out, "status with a stale api.json", "no node is running");
    n.restart();
    let after = view(&n, &space, &ids).unwrap_or_else(|e| panic!("{e}\n{}", n.diagnostics()));
    assert_eq!(
        after,
        before,
        "after kill -9 and restart the node shows exactly what it acknowledged\n{}",
        n.diagnostics()
    );
    let status = n.stop();
    assert!(status.success(), "exit after restart: {status}");
}
