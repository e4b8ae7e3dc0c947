//! Three real nodes on a virtual LAN find each other by mDNS alone and converge.
//!
//! The LAN: a namespace `agbr<pid>` holding a bridge, and three namespaces `agn<pid>_<i>`, each
//! with `lo` up and a veth pair whose other end is a port of the bridge. Addresses
//! `10.231.<x>.<i>/24` exist only inside these namespaces, which this test creates and deletes;
//! the host's own network is never touched (both ends of every veth are created inside the
//! test's namespaces). Nodes run as `ip netns exec agn<pid>_<i> agora ... up` with mDNS on and no
//! `--peer`; the CLI runs the same way, since each API listens on its namespace's loopback.
//!
//! Needs root and iproute2 (`ip`). Without them the test fails (it never passes silently).

mod proc;

use proc::{ip, require_root_and_iproute2, run_ip, wait_until, AgoraProc};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

/// Upper bound for discovery and gossip (mDNS probes start after ~0.5 s and back off).
const CONVERGE: Duration = Duration::from_secs(90);

/// Why this test needs root and iproute2.
const NEED_ROOT: &str = "the LAN mDNS test needs root and iproute2 (`ip`) to create network \
                        namespaces; run it as root with iproute2 installed (CI does both)";

/// The namespaces of one test run; deleted on drop (also on panic). Declare it before the
/// nodes so that the nodes are killed first.
struct Lan {
    bridge_ns: String,
    node_ns: Vec<String>,
    created: Vec<String>,
}

impl Lan {
    fn new(nodes: usize) -> Lan {
        let pid = std::process::id();
        let x = pid % 250 + 1;
        let mut lan = Lan {
            bridge_ns: format!("agbr{pid}"),
            node_ns: (1..=nodes).map(|i| format!("agn{pid}_{i}")).collect(),
            created: Vec::new(),
        };
        // A namespace left by an earlier run whose pid was the same (it cannot be running now:
        // pids are unique among live processes).
        for ns in std::iter::once(&lan.bridge_ns).chain(&lan.node_ns) {
            let _ = run_ip(&["netns", "del", ns]);
        }
        let br = lan.bridge_ns.clone();
        lan.add_ns(&br);
        ip(&["-n", &br, "link", "set", "lo", "up"]);
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"]);
        // Forward multicast (mDNS) to every port, whatever IGMP snooping thinks.
        ip(&[
            "-n",
            &br,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        ip(&["-n", &br, "link", "set", "br0", "up"]);
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
            let addr = format!("10.231.{x}.{i}/24");
            ip(&["-n", ns, "addr", "add", &addr, "dev", "eth0"]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
            // Multicast leaves through eth0 (there is no default route in the namespace).
            ip(&["-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0"]);
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

    /// Addresses and links of every namespace, for messages.
    fn describe(&self) -> String {
        let mut s = String::new();
        for ns in std::iter::once(&self.bridge_ns).chain(&self.node_ns) {
            s.push_str(&format!("--- {ns}\n"));
            s.push_str(&run_ip(&["-n", ns, "-br", "addr"]).unwrap_or_else(|e| e));
        }
        s
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

fn peer_ids(node: &AgoraProc, space: Option<&str>) -> Result<BTreeSet<String>, String> {
    let peers = node.try_cli_json(&["peers", "--json"])?;
    Ok(peers
        .as_array()
        .ok_or_else(|| format!("peers --json is not an array: {peers}"))?
        .iter()
        .filter(|p| {
            space.is_none_or(|s| {
                p["spaces"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(s)))
            })
        })
        .filter_map(|p| p["peer_id"].as_str().map(str::to_string))
        .collect())
}

/// A hint for a known failure mode: two nodes that learn of each other from the same mDNS
/// response dial each other at once; with the listen port reused for dialling, the two dials
/// become one TCP simultaneous-open connection in which both sides act as the noise initiator,
/// both handshakes fail, and nothing redials a peer found by mDNS.
fn handshake_hint(nodes: &[AgoraProc]) -> String {
    let failed: Vec<&str> = nodes
        .iter()
        .filter(|n| std::fs::read_to_string(&n.log).is_ok_and(|l| l.contains("Handshake failed")))
        .map(|n| n.name.as_str())
        .collect();
    if failed.is_empty() {
        String::new()
    } else {
        format!(
            " (the logs of {failed:?} show failed handshakes: simultaneous dials after one \
             mDNS response, with the listen port reused; a failed mDNS dial is never retried)"
        )
    }
}

#[test]
fn three_nodes_on_a_lan_find_each_other_by_mdns_and_converge() {
    require_root_and_iproute2(NEED_ROOT);
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().expect("temp dir");
    let lan = Lan::new(3);
    eprintln!("[{:?}] LAN ready:\n{}", t0.elapsed(), lan.describe());
    let x = std::process::id() % 250 + 1;
    let subnet = format!("/ip4/10.231.{x}.");

    let names = ["Ana", "Ben", "Cleo"];
    let mut nodes = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let dir = tmp.path().join(format!("lan{}", i + 1));
        let w: Vec<String> = lan.wrapper(i).iter().map(|s| s.to_string()).collect();
        let init = proc::try_cli_json_with(&w, &dir, &["init", "--name", name, "--json"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(init["created"], true, "{init}");
        // mDNS on (no --no-mdns), no --peer: discovery is the point.
        nodes.push(AgoraProc::start_with(
            &lan.wrapper(i),
            &dir,
            &["--listen", "/ip4/0.0.0.0/tcp/0", "--api", "127.0.0.1:0"],
        ));
    }
    let refs: Vec<&AgoraProc> = nodes.iter().collect();
    let mut pids = Vec::new();
    for n in &nodes {
        let st = n.status();
        let addrs: Vec<&str> = st["listen_addrs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            addrs.iter().any(|a| a.starts_with(&subnet)),
            "{} should listen on its LAN address ({subnet}*): {addrs:?}\n{}",
            n.name,
            lan.describe()
        );
        pids.push(st["peer_id"].as_str().expect("peer_id").to_string());
    }
    eprintln!("[{:?}] nodes up", t0.elapsed());

    // Discovery: every node connects to the two others, over the LAN.
    let others = |i: usize| -> BTreeSet<String> {
        pids.iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, p)| p.clone())
            .collect()
    };
    wait_until(
        "every node to be connected to the two others (mDNS)",
        CONVERGE,
        &refs,
        || {
            for (i, n) in nodes.iter().enumerate() {
                let got = peer_ids(n, None)?;
                let want = others(i);
                if !want.is_subset(&got) {
                    return Err(format!(
                        "{} is connected to {got:?}, want {want:?}{}",
                        n.name,
                        handshake_hint(&nodes)
                    ));
                }
            }
            Ok(())
        },
    );
    for n in &nodes {
        let peers = n.cli_json(&["peers", "--json"]);
        for p in peers.as_array().into_iter().flatten() {
            for a in p["addrs"].as_array().into_iter().flatten() {
                let a = a.as_str().unwrap_or_default();
                assert!(
                    a.starts_with(&subnet),
                    "{}: connection to {} over {a}, not the LAN",
                    n.name,
                    p["peer_id"]
                );
            }
        }
    }
    eprintln!("[{:?}] discovered each other", t0.elapsed());

    // A space on node 1, joined by 2 and 3.
    let created = nodes[0].cli_json(&["space", "create", "Lab", "--json"]);
    let space = created["id"].as_str().expect("space id").to_string();
    for n in &nodes[1..] {
        n.cli_ok(&["space", "join", &space]);
    }
    wait_until(
        "every node to see the two others subscribed to the space",
        CONVERGE,
        &refs,
        || {
            for (i, n) in nodes.iter().enumerate() {
                let got = peer_ids(n, Some(&space))?;
                let want = others(i);
                if !want.is_subset(&got) {
                    return Err(format!(
                        "{} sees {got:?} in the space, want {want:?}",
                        n.name
                    ));
                }
            }
            Ok(())
        },
    );
    eprintln!("[{:?}] subscribed", t0.elapsed());

    // Each posts an idea; all three converge on the same three.
    let mut ids = BTreeSet::new();
    for (i, n) in nodes.iter().enumerate() {
        let title = format!("Idea from {}", names[i]);
        let tag = format!("lan{}", i + 1);
        let v = n.cli_json(&[
            "idea",
            "add",
            "--space",
            &space,
            "--title",
            &title,
            "--body",
            "found by mDNS",
            "--tag",
            &tag,
            "--json",
        ]);
        ids.insert(v["id"].as_str().expect("idea id").to_string());
    }
    let list = wait_until(
        "all three nodes to list the same three ideas",
        CONVERGE,
        &refs,
        || {
            let lists = nodes
                .iter()
                .map(|n| n.try_cli_json(&["idea", "list", "--space", &space, "--json"]))
                .collect::<Result<Vec<_>, _>>()?;
            for (n, l) in nodes.iter().zip(&lists) {
                let got: BTreeSet<String> = l
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i["id"].as_str().map(str::to_string))
                    .collect();
                if got != ids {
                    return Err(format!("{} lists {got:?}, want {ids:?}", n.name));
                }
                // Names travel in profile documents: each idea shows its author's name.
                for idea in l.as_array().into_iter().flatten() {
                    let title = idea["title"].as_str().unwrap_or_default();
                    let want = title.strip_prefix("Idea from ").unwrap_or("?");
                    if idea["author_name"] != want {
                        return Err(format!(
                            "{} shows {title:?} with author_name {}, want {want:?}",
                            n.name, idea["author_name"]
                        ));
                    }
                }
                if *l != lists[0] {
                    return Err(format!(
                        "{} and {} list different ideas:\n  {}\n  {l}",
                        nodes[0].name, n.name, lists[0]
                    ));
                }
            }
            Ok(lists.into_iter().next().expect("three lists"))
        },
    );
    let titles: BTreeSet<&str> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["title"].as_str())
        .collect();
    let want: BTreeSet<String> = names.iter().map(|n| format!("Idea from {n}")).collect();
    assert_eq!(
        titles,
        want.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        "{list}"
    );
    eprintln!("[{:?}] converged", t0.elapsed());

    // Clean shutdown inside a namespace works too.
    for n in nodes.iter_mut() {
        let status = n.stop();
        assert!(
            status.success(),
            "{} exited with {status}\n{}",
            n.name,
            n.diagnostics()
        );
        assert!(
            !Path::new(&n.dir).join("api.json").exists(),
            "{}: api.json left behind",
            n.name
        );
    }
    drop(nodes);
    drop(lan);
}
