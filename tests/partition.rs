//! A real network partition: five `agora up` processes on a virtual LAN are split into two
//! groups that cannot reach each other, both groups post, the partition heals, and all five
//! converge on the same ideas.
//!
//! The LAN (`agora_testkit::netns`): a namespace `agpb<pid>_<n>` holding two bridges `br0` and
//! `br1`, and five namespaces `agp<pid>_<n>_<i>`, each with `lo` up and a veth pair whose other
//! end (`veth<i>`) is a port of `br0`. Addresses `10.232.<x>.<i>/24` exist only inside these namespaces, which this test
//! creates and deletes (in `Drop`, also on panic); the host's own network is never touched.
//!
//! The partition is cut in the bridge namespace by moving the ports of group B (nodes 4 and 5)
//! from `br0` to `br1`: nodes 1-3 still reach each other, 4 and 5 reach each other, and no frame
//! crosses between the groups (open TCP connections stall, as in a real partition). Healing
//! moves the ports back. Nothing in the node knows about it.
//!
//! Every node is started with `--no-mdns` and an explicit `--peer` for every other node, and a
//! `config.toml` with short redial / sync / heartbeat periods so that the test stays quick.
//!
//! Needs root and iproute2 (`ip`). Without them the test fails (it never passes silently).

use agora_node::NodeStatus;
use agora_protocol::Idea;
use agora_testkit::netns::{require_root_and_iproute2, Lan};
use agora_testkit::process::{wait_until, AgoraProc, Cli, InitOutput};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Upper bound for the mesh to form and for one side of the partition to converge.
const CONVERGE: Duration = Duration::from_secs(60);
/// Upper bound for convergence after the partition heals (stalled TCP connections resume on
/// their next retransmission; the periodic sync and the redial cover the rest).
const HEAL: Duration = Duration::from_secs(120);
/// The node settings written to each `<data dir>/config.toml`.
const CONFIG_TOML: &str = "redial_ms = 1000\nsync_ms = 2000\nheartbeat_ms = 200\n";
/// Listen port inside every namespace.
const PORT: u16 = 7400;
/// Nodes 0..GROUP_A are group A, the rest group B (0-based).
const GROUP_A: usize = 3;
const NODES: usize = 5;

/// Why this test needs root and iproute2.
const NEED_ROOT: &str = "the partition test needs root and iproute2 (`ip`) to create network \
                        namespaces and bridges; run it as root with iproute2 installed (CI does \
                        both)";

/// What one node shows: `idea list`, `idea show` of every listed idea, and the parts of
/// `status` that must agree once nodes hold the same contributions.
#[derive(Debug, PartialEq)]
struct View {
    list: Vec<Idea>,
    shows: BTreeMap<String, Idea>,
    contributions: u64,
}

fn view(node: &AgoraProc, space: &str) -> Result<View, String> {
    let list: Vec<Idea> = node.try_cli_json(&["idea", "list", "--space", space, "--json"])?;
    let mut shows = BTreeMap::new();
    for idea in &list {
        let id = idea.id.to_string();
        let show = node.try_cli_json(&["idea", "show", &id, "--json"])?;
        shows.insert(id, show);
    }
    let status: NodeStatus = node.try_cli_json(&["status", "--json"])?;
    let pending = status.counters.pending;
    if pending != 0 {
        return Err(format!(
            "{} holds {pending} contributions waiting for dependencies",
            node.name
        ));
    }
    Ok(View {
        list,
        shows,
        contributions: status.contributions,
    })
}

fn titles(v: &View) -> BTreeSet<String> {
    v.list.iter().map(|i| i.title.clone()).collect()
}

fn comment_texts(show: &Idea) -> BTreeSet<String> {
    show.comments.iter().map(|c| c.text.clone()).collect()
}

/// Where two views first differ, briefly.
fn difference(a: &View, b: &View) -> String {
    if a.list != b.list {
        return format!("idea list:\n  {:?}\n  {:?}", a.list, b.list);
    }
    for (id, x) in &a.shows {
        if b.shows.get(id) != Some(x) {
            return format!("idea show {id}:\n  {x:?}\n  {:?}", b.shows.get(id));
        }
    }
    format!(
        "stored contributions {} vs {}",
        a.contributions, b.contributions
    )
}

/// Waits until every node in `nodes` shows the same view, and returns it.
fn wait_same(what: &str, timeout: Duration, nodes: &[&AgoraProc], space: &str) -> View {
    wait_until(what, timeout, nodes, || {
        let views = nodes
            .iter()
            .map(|n| view(n, space))
            .collect::<Result<Vec<_>, _>>()?;
        for (n, v) in nodes.iter().zip(&views).skip(1) {
            if *v != views[0] {
                return Err(format!(
                    "{} and {} differ: {}",
                    nodes[0].name,
                    n.name,
                    difference(&views[0], v)
                ));
            }
        }
        Ok(views.into_iter().next().expect("at least one node"))
    })
}

/// Which port is on which bridge, for messages.
fn describe(lan: &Lan) -> String {
    format!("br0: {:?}, br1: {:?}", lan.ports("br0"), lan.ports("br1"))
}

fn add_idea(node: &AgoraProc, space: &str, title: &str) -> String {
    node.add_idea(space, title, "posted during the partition test", &[])
        .to_string()
}

#[test]
fn five_nodes_split_in_two_post_on_both_sides_heal_and_converge() {
    require_root_and_iproute2(NEED_ROOT);
    let t0 = Instant::now();
    let log = |msg: &str| eprintln!("[{:>6.1} s] {msg}", t0.elapsed().as_secs_f64());
    let tmp = tempfile::tempdir().expect("temp dir");
    let lan = Lan::builder("agp", 232, NODES)
        .bridges(&["br0", "br1"])
        .build();
    log("LAN ready");

    // Identities first, so that every node can be told every other's full address.
    let names = ["Ana", "Ben", "Cleo", "Dev", "Eli"];
    let mut dirs = Vec::new();
    let mut addrs = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let dir = tmp.path().join(format!("node{}", i + 1));
        std::fs::create_dir_all(&dir).expect("data dir");
        std::fs::write(dir.join("config.toml"), CONFIG_TOML).expect("config.toml");
        let init: InitOutput = Cli::new(&dir)
            .wrapped(&lan.wrapper(i))
            .json(&["init", "--name", name, "--json"]);
        addrs.push(format!(
            "/ip4/{}/tcp/{PORT}/p2p/{}",
            lan.addr(i),
            init.peer_id
        ));
        dirs.push(dir);
    }
    let peer_ids: Vec<String> = addrs
        .iter()
        .map(|a| a.rsplit('/').next().expect("peer id").to_string())
        .collect();
    let mut nodes = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let listen = format!("/ip4/{}/tcp/{PORT}", lan.addr(i));
        let mut args = vec!["--no-mdns", "--listen", &listen, "--api", "127.0.0.1:0"];
        for (j, a) in addrs.iter().enumerate() {
            if j != i {
                args.extend(["--peer", a.as_str()]);
            }
        }
        nodes.push(AgoraProc::start_with(&lan.wrapper(i), dir, &args));
    }
    let all: Vec<&AgoraProc> = nodes.iter().collect();
    let (side_a, side_b) = all.split_at(GROUP_A);
    log("five nodes up");

    // One space, joined by everyone; wait for the full mesh of subscriptions.
    let others: Vec<&AgoraProc> = nodes[1..].iter().collect();
    let space = nodes[0].share_space("Partition", &others);
    wait_until(
        "every node to see the four others subscribed to the space",
        CONVERGE,
        &all,
        || {
            for (i, n) in nodes.iter().enumerate() {
                let got = n.peer_ids(Some(&space))?;
                let want: BTreeSet<String> = peer_ids
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, p)| p.clone())
                    .collect();
                if !want.is_subset(&got) {
                    return Err(format!("{} sees {got:?}, want {want:?}", n.name));
                }
            }
            Ok(())
        },
    );
    log("mesh formed");

    // A shared idea before the split.
    let base = add_idea(&nodes[0], &space, "Base idea");
    let before = wait_same("all five to hold the base idea", CONVERGE, &all, &space);
    assert_eq!(titles(&before), BTreeSet::from(["Base idea".to_string()]));
    log("base idea everywhere");

    // Cut: group B's ports move to their own bridge.
    lan.attach(GROUP_A..NODES, "br1");
    let cut = |i: usize| Lan::port(i - 1);
    assert_eq!(lan.ports("br0"), (1..=GROUP_A).map(cut).collect());
    assert_eq!(lan.ports("br1"), (GROUP_A + 1..=NODES).map(cut).collect());
    log(&format!("partition cut: {}", describe(&lan)));

    // Both sides post: ideas, comments and votes, on the shared idea and on their own.
    let a_idea = add_idea(&nodes[0], &space, "Side A idea");
    nodes[1].cli_ok(&["idea", "comment", &base, "comment from side A"]);
    nodes[2].cli_ok(&["idea", "vote", &base]);
    nodes[1].cli_ok(&["idea", "comment", &a_idea, "A talks to A"]);
    nodes[2].cli_ok(&["idea", "status", &a_idea, "accepted"]);
    let b_idea = add_idea(&nodes[3], &space, "Side B idea");
    nodes[4].cli_ok(&["idea", "comment", &base, "comment from side B"]);
    nodes[4].cli_ok(&["idea", "vote", &base, "--down"]);
    nodes[3].cli_ok(&["idea", "vote", &b_idea]);
    nodes[4].cli_ok(&["idea", "comment", &b_idea, "B talks to B"]);
    nodes[3].cli_ok(&["idea", "status", &base, "in_progress"]);
    log("both sides posted");

    // Each side converges internally, and not across.
    let va = wait_same("side A (nodes 1-3) to converge", CONVERGE, side_a, &space);
    let vb = wait_same("side B (nodes 4-5) to converge", CONVERGE, side_b, &space);
    log("each side converged");
    let check_sides = |va: &View, vb: &View| {
        assert_eq!(
            titles(va),
            BTreeSet::from(["Base idea".to_string(), "Side A idea".to_string()]),
            "side A must not see side B's idea"
        );
        assert_eq!(
            titles(vb),
            BTreeSet::from(["Base idea".to_string(), "Side B idea".to_string()]),
            "side B must not see side A's idea"
        );
        assert_eq!(
            comment_texts(&va.shows[&base]),
            BTreeSet::from(["comment from side A".to_string()])
        );
        assert_eq!(
            comment_texts(&vb.shows[&base]),
            BTreeSet::from(["comment from side B".to_string()])
        );
        assert_eq!(va.shows[&base].votes.up, 1, "{:?}", va.shows[&base]);
        assert_eq!(va.shows[&base].votes.down, 0, "{:?}", va.shows[&base]);
        assert_eq!(vb.shows[&base].votes.up, 0, "{:?}", vb.shows[&base]);
        assert_eq!(vb.shows[&base].votes.down, 1, "{:?}", vb.shows[&base]);
        assert_eq!(va.shows[&base].status.as_str(), "open");
        assert_eq!(vb.shows[&base].status.as_str(), "in_progress");
    };
    check_sides(&va, &vb);
    // Over a few sync periods (2 s each), nothing crosses the cut.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(5) {
        let va = view(&nodes[0], &space).unwrap_or_else(|e| panic!("{e}"));
        let vb = view(&nodes[4], &space).unwrap_or_else(|e| panic!("{e}"));
        check_sides(&va, &vb);
    }
    log("nothing crossed the partition");

    // Heal: every port back on one bridge.
    lan.attach(GROUP_A..NODES, "br0");
    assert_eq!(lan.ports("br0"), (1..=NODES).map(cut).collect());
    log(&format!("partition healed: {}", describe(&lan)));
    let healed = wait_same(
        "all five nodes to converge after the partition healed",
        HEAL,
        &all,
        &space,
    );
    log("all five converged");

    assert_eq!(
        titles(&healed),
        BTreeSet::from([
            "Base idea".to_string(),
            "Side A idea".to_string(),
            "Side B idea".to_string()
        ])
    );
    let b = &healed.shows[&base];
    assert_eq!(
        comment_texts(b),
        BTreeSet::from([
            "comment from side A".to_string(),
            "comment from side B".to_string()
        ]),
        "{b:?}"
    );
    assert_eq!(b.votes.up, 1, "{b:?}");
    assert_eq!(b.votes.down, 1, "{b:?}");
    assert_eq!(b.status.as_str(), "in_progress", "{b:?}");
    assert_eq!(healed.shows[&a_idea].status.as_str(), "accepted");
    assert_eq!(
        comment_texts(&healed.shows[&a_idea]),
        BTreeSet::from(["A talks to A".to_string()])
    );
    assert_eq!(healed.shows[&b_idea].votes.up, 1);
    assert_eq!(
        comment_texts(&healed.shows[&b_idea]),
        BTreeSet::from(["B talks to B".to_string()])
    );
    // Every author's name travelled too (profiles are contributions like any other).
    let authors: BTreeSet<String> = healed
        .shows
        .values()
        .flat_map(|i| {
            std::iter::once(&i.author_name).chain(i.comments.iter().map(|c| &c.author_name))
        })
        .map(|n| {
            n.clone()
                .unwrap_or_else(|| panic!("expected an author name, got none"))
        })
        .collect();
    assert_eq!(
        authors,
        ["Ana", "Ben", "Dev", "Eli"]
            .iter()
            .map(|n| n.to_string())
            .collect()
    );

    for n in nodes.iter_mut() {
        let status = n.stop();
        assert!(
            status.success(),
            "{} exited with {status}\n{}",
            n.name,
            n.diagnostics()
        );
    }
    drop(nodes);
    drop(lan);
    log("done");
}
