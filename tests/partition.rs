//! A real network partition: five `agora up` processes on a virtual LAN are split into two
//! groups that cannot reach each other, both groups post, the partition heals, and all five
//! converge on the same ideas.
//!
//! The LAN: a namespace `agpb<pid>_<n>` holding two bridges `br0` and `br1`, and five namespaces
//! `agp<pid>_<n>_<i>`, each with `lo` up and a veth pair whose other end (`veth<i>`) is a port of
//! `br0`. Addresses `10.232.<x>.<i>/24` exist only inside these namespaces, which this test
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

mod proc;

use proc::{ip, require_root_and_iproute2, run_ip, try_cli_json_with, wait_until, AgoraProc};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
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

/// The namespaces of one test run; deleted on drop (also on panic). Declare it before the
/// nodes so that the nodes are killed first.
struct Lan {
    bridge_ns: String,
    node_ns: Vec<String>,
    created: Vec<String>,
    /// Third octet of the subnet.
    x: u32,
}

impl Lan {
    fn new(nodes: usize) -> Lan {
        static RUNS: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        let mut lan = Lan {
            bridge_ns: format!("agpb{pid}_{run}"),
            node_ns: (1..=nodes).map(|i| format!("agp{pid}_{run}_{i}")).collect(),
            created: Vec::new(),
            x: (pid + run) % 250 + 1,
        };
        // A namespace left by an earlier run whose pid was the same (it cannot be running now:
        // pids are unique among live processes).
        for ns in std::iter::once(&lan.bridge_ns).chain(&lan.node_ns) {
            let _ = run_ip(&["netns", "del", ns]);
        }
        let br = lan.bridge_ns.clone();
        lan.add_ns(&br);
        ip(&["-n", &br, "link", "set", "lo", "up"]);
        for bridge in ["br0", "br1"] {
            ip(&["-n", &br, "link", "add", bridge, "type", "bridge"]);
            ip(&["-n", &br, "link", "set", bridge, "up"]);
        }
        for (i, ns) in lan.node_ns.clone().iter().enumerate() {
            let i = i + 1;
            lan.add_ns(ns);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            // Both ends are created inside test namespaces: eth0 here, veth<i> in the bridge's.
            let port = format!("veth{i}");
            ip(&[
                "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns",
                &br,
            ]);
            ip(&["-n", &br, "link", "set", &port, "master", "br0"]);
            ip(&["-n", &br, "link", "set", &port, "up"]);
            let addr = format!("10.232.{}.{i}/24", lan.x);
            ip(&["-n", ns, "addr", "add", &addr, "dev", "eth0"]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
        }
        lan
    }

    fn add_ns(&mut self, ns: &str) {
        ip(&["netns", "add", ns]);
        self.created.push(ns.to_string());
    }

    /// `ip netns exec <ns>` for node `i` (0-based).
    fn wrapper(&self, i: usize) -> Vec<&str> {
        vec!["ip", "netns", "exec", self.node_ns[i].as_str()]
    }

    /// Node `i`'s (0-based) LAN address.
    fn addr(&self, i: usize) -> String {
        format!("10.232.{}.{}", self.x, i + 1)
    }

    /// Attaches the bridge ports of nodes `nodes` (0-based) to `bridge`.
    fn attach(&self, nodes: std::ops::Range<usize>, bridge: &str) {
        for i in nodes {
            let port = format!("veth{}", i + 1);
            ip(&[
                "-n",
                &self.bridge_ns,
                "link",
                "set",
                &port,
                "master",
                bridge,
            ]);
        }
    }

    /// The ports of `bridge`, by name.
    fn ports(&self, bridge: &str) -> BTreeSet<String> {
        ip(&[
            "-n",
            &self.bridge_ns,
            "-br",
            "link",
            "show",
            "master",
            bridge,
        ])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
    }

    /// Which port is on which bridge, for messages.
    fn describe(&self) -> String {
        format!("br0: {:?}, br1: {:?}", self.ports("br0"), self.ports("br1"))
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.created.iter().rev() {
            if let Err(e) = run_ip(&["netns", "del", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

fn s(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
        .to_string()
}

/// Peer ids that `node`'s `peers --json` shows as subscribed to `space`.
fn peers_in_space(node: &AgoraProc, space: &str) -> Result<BTreeSet<String>, String> {
    let peers = node.try_cli_json(&["peers", "--json"])?;
    Ok(peers
        .as_array()
        .ok_or_else(|| format!("{}: peers --json is not an array: {peers}", node.name))?
        .iter()
        .filter(|p| {
            p["spaces"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(space)))
        })
        .filter_map(|p| p["peer_id"].as_str().map(str::to_string))
        .collect())
}

/// What one node shows: `idea list`, `idea show` of every listed idea, and the parts of
/// `status` that must agree once nodes hold the same contributions.
#[derive(Debug, PartialEq)]
struct View {
    list: Value,
    shows: BTreeMap<String, Value>,
    contributions: u64,
}

fn view(node: &AgoraProc, space: &str) -> Result<View, String> {
    let list = node.try_cli_json(&["idea", "list", "--space", space, "--json"])?;
    let mut shows = BTreeMap::new();
    for idea in list.as_array().into_iter().flatten() {
        let id = s(&idea["id"]);
        let show = node.try_cli_json(&["idea", "show", &id, "--json"])?;
        shows.insert(id, show);
    }
    let status = node.try_cli_json(&["status", "--json"])?;
    let pending = status["counters"]["pending"].as_u64().unwrap_or(u64::MAX);
    if pending != 0 {
        return Err(format!(
            "{} holds {pending} contributions waiting for dependencies",
            node.name
        ));
    }
    Ok(View {
        list,
        shows,
        contributions: status["contributions"].as_u64().unwrap_or_default(),
    })
}

fn titles(v: &View) -> BTreeSet<String> {
    v.list
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| s(&i["title"]))
        .collect()
}

fn comment_texts(show: &Value) -> BTreeSet<String> {
    show["comments"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| s(&c["text"]))
        .collect()
}

/// Where two views first differ, briefly.
fn difference(a: &View, b: &View) -> String {
    if a.list != b.list {
        return format!("idea list:\n  {}\n  {}", a.list, b.list);
    }
    for (id, x) in &a.shows {
        if b.shows.get(id) != Some(x) {
            return format!("idea show {id}:\n  {x}\n  {:?}", b.shows.get(id));
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

fn add_idea(node: &AgoraProc, space: &str, title: &str) -> String {
    let v = node.cli_json(&[
        "idea",
        "add",
        "--space",
        space,
        "--title",
        title,
        "--body",
        "posted during the partition test",
        "--json",
    ]);
    s(&v["id"])
}

#[test]
fn five_nodes_split_in_two_post_on_both_sides_heal_and_converge() {
    require_root_and_iproute2(NEED_ROOT);
    let t0 = Instant::now();
    let log = |msg: &str| eprintln!("[{:>6.1} s] {msg}", t0.elapsed().as_secs_f64());
    let tmp = tempfile::tempdir().expect("temp dir");
    let lan = Lan::new(NODES);
    log("LAN ready");

    // Identities first, so that every node can be told every other's full address.
    let names = ["Ana", "Ben", "Cleo", "Dev", "Eli"];
    let mut dirs = Vec::new();
    let mut addrs = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let dir = tmp.path().join(format!("node{}", i + 1));
        std::fs::create_dir_all(&dir).expect("data dir");
        std::fs::write(dir.join("config.toml"), CONFIG_TOML).expect("config.toml");
        let w: Vec<String> = lan.wrapper(i).iter().map(|s| s.to_string()).collect();
        let init = try_cli_json_with(&w, &dir, &["init", "--name", name, "--json"])
            .unwrap_or_else(|e| panic!("{e}"));
        addrs.push(format!(
            "/ip4/{}/tcp/{PORT}/p2p/{}",
            lan.addr(i),
            s(&init["peer_id"])
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
    let space = s(&nodes[0].cli_json(&["space", "create", "Partition", "--json"])["id"]);
    for n in &nodes[1..] {
        n.cli_ok(&["space", "join", &space]);
    }
    wait_until(
        "every node to see the four others subscribed to the space",
        CONVERGE,
        &all,
        || {
            for (i, n) in nodes.iter().enumerate() {
                let got = peers_in_space(n, &space)?;
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
    let cut = |i: usize| format!("veth{i}");
    assert_eq!(lan.ports("br0"), (1..=GROUP_A).map(cut).collect());
    assert_eq!(lan.ports("br1"), (GROUP_A + 1..=NODES).map(cut).collect());
    log(&format!("partition cut: {}", lan.describe()));

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
        assert_eq!(va.shows[&base]["votes"]["up"], 1, "{}", va.shows[&base]);
        assert_eq!(va.shows[&base]["votes"]["down"], 0, "{}", va.shows[&base]);
        assert_eq!(vb.shows[&base]["votes"]["up"], 0, "{}", vb.shows[&base]);
        assert_eq!(vb.shows[&base]["votes"]["down"], 1, "{}", vb.shows[&base]);
        assert_eq!(va.shows[&base]["status"], "open");
        assert_eq!(vb.shows[&base]["status"], "in_progress");
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
    log(&format!("partition healed: {}", lan.describe()));
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
        "{b}"
    );
    assert_eq!(b["votes"]["up"], 1, "{b}");
    assert_eq!(b["votes"]["down"], 1, "{b}");
    assert_eq!(b["status"], "in_progress", "{b}");
    assert_eq!(healed.shows[&a_idea]["status"], "accepted");
    assert_eq!(
        comment_texts(&healed.shows[&a_idea]),
        BTreeSet::from(["A talks to A".to_string()])
    );
    assert_eq!(healed.shows[&b_idea]["votes"]["up"], 1);
    assert_eq!(
        comment_texts(&healed.shows[&b_idea]),
        BTreeSet::from(["B talks to B".to_string()])
    );
    // Every author's name travelled too (profiles are contributions like any other).
    let authors: BTreeSet<String> = healed
        .shows
        .values()
        .flat_map(|i| {
            std::iter::once(i["author_name"].clone()).chain(
                i["comments"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| c["author_name"].clone()),
            )
        })
        .map(|n| s(&n))
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
