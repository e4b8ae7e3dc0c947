//! Three real nodes on a virtual LAN find each other by mDNS alone and converge.
//!
//! The LAN (`agora_testkit::netns`): a namespace `agnb<pid>_<run>` holding a bridge that
//! forwards multicast, and three namespaces `agn<pid>_<run>_<i>`, each with `lo` up and a veth
//! pair whose other end is a port of the bridge. Addresses `10.231.<x>.<i>/24` exist only inside
//! these namespaces, which this test creates and deletes; the host's own network is never
//! touched (both ends of every veth are created inside the test's namespaces). Nodes run as
//! `ip netns exec agn<pid>_<run>_<i> agora ... up` with mDNS on and no `--peer`; the CLI runs the
//! same way, since each API listens on its namespace's loopback.
//!
//! Needs root and iproute2 (`ip`). Without them the test fails (it never passes silently).

use agora_node::PeerInfo;
use agora_protocol::Idea;
use agora_testkit::netns::{require_root_and_iproute2, Lan};
use agora_testkit::process::{wait_until, AgoraProc, Cli, InitOutput};
use agora_testkit::store::files_holding;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

/// Upper bound for discovery and gossip (mDNS probes start after ~0.5 s and back off).
const CONVERGE: Duration = Duration::from_secs(90);

/// Why this test needs root and iproute2.
const NEED_ROOT: &str = "the LAN mDNS test needs root and iproute2 (`ip`) to create network \
                        namespaces; run it as root with iproute2 installed (CI does both)";

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
    let lan = Lan::builder("agn", 231, 3).multicast().build();
    eprintln!("[{:?}] LAN ready:\n{}", t0.elapsed(), lan.describe());
    let subnet = lan.multiaddr_prefix();

    let names = ["Ana", "Ben", "Cleo"];
    let mut nodes = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let dir = tmp.path().join(format!("lan{}", i + 1));
        let init: InitOutput = Cli::new(&dir)
            .wrapped(&lan.wrapper(i))
            .json(&["init", "--name", name, "--json"]);
        assert!(init.created, "{init:?}");
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
        let addrs: Vec<&str> = st.listen_addrs.iter().map(String::as_str).collect();
        assert!(
            addrs.iter().any(|a| a.starts_with(&subnet)),
            "{} should listen on its LAN address ({subnet}*): {addrs:?}\n{}",
            n.name,
            lan.describe()
        );
        pids.push(st.peer_id.clone());
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
                let got = n.peer_ids(None)?;
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
        let peers: Vec<PeerInfo> = n.cli_json(&["peers", "--json"]);
        for p in &peers {
            for a in &p.addrs {
                assert!(
                    a.starts_with(&subnet),
                    "{}: connection to {} over {a}, not the LAN",
                    n.name,
                    p.peer_id
                );
            }
        }
    }
    eprintln!("[{:?}] discovered each other", t0.elapsed());

    // A private space on node 1; 2 and 3 join it with a ticket.
    let space = nodes[0].share_space("Lab", &[&nodes[1], &nodes[2]]);
    wait_until(
        "every node to see the two others subscribed to the space",
        CONVERGE,
        &refs,
        || {
            for (i, n) in nodes.iter().enumerate() {
                let got = n.peer_ids(Some(&space))?;
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
        let id = n.add_idea(&space, &title, "found by mDNS", &[&tag]);
        ids.insert(id.to_string());
    }
    let list = wait_until(
        "all three nodes to list the same three ideas",
        CONVERGE,
        &refs,
        || {
            let lists = nodes
                .iter()
                .map(|n| {
                    n.try_cli_json::<Vec<Idea>>(&["idea", "list", "--space", &space, "--json"])
                })
                .collect::<Result<Vec<_>, _>>()?;
            for (n, l) in nodes.iter().zip(&lists) {
                let got: BTreeSet<String> = l.iter().map(|i| i.id.to_string()).collect();
                if got != ids {
                    return Err(format!("{} lists {got:?}, want {ids:?}", n.name));
                }
                // Names travel in profile documents: each idea shows its author's name.
                for idea in l {
                    let title = idea.title.as_str();
                    let want = title.strip_prefix("Idea from ").unwrap_or("?");
                    if idea.author_name.as_deref() != Some(want) {
                        return Err(format!(
                            "{} shows {title:?} with author_name {:?}, want {want:?}",
                            n.name, idea.author_name
                        ));
                    }
                }
                if *l != lists[0] {
                    return Err(format!(
                        "{} and {} list different ideas:\n  {:?}\n  {l:?}",
                        nodes[0].name, n.name, lists[0]
                    ));
                }
            }
            Ok(lists.into_iter().next().expect("three lists"))
        },
    );
    let titles: BTreeSet<&str> = list.iter().map(|i| i.title.as_str()).collect();
    let want: BTreeSet<String> = names.iter().map(|n| format!("Idea from {n}")).collect();
    assert_eq!(
        titles,
        want.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        "{list:?}"
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

/// Two nodes on a LAN (mDNS on) that share no private space learn nothing of each other's: not
/// the id, the name or any content, in what they show or in what they store. As a positive
/// control they share an open space, through which gossip provably flows between them.
#[test]
fn two_nodes_on_a_lan_learn_nothing_of_each_others_private_spaces() {
    require_root_and_iproute2(NEED_ROOT);
    let tmp = tempfile::tempdir().expect("temp dir");
    let lan = Lan::builder("agq", 232, 2).multicast().build();
    let names = ["Ida", "Jon"];
    let mut nodes = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let dir = tmp.path().join(format!("solo{}", i + 1));
        let _: InitOutput = Cli::new(&dir)
            .wrapped(&lan.wrapper(i))
            .json(&["init", "--name", name, "--json"]);
        nodes.push(AgoraProc::start_with(
            &lan.wrapper(i),
            &dir,
            &["--listen", "/ip4/0.0.0.0/tcp/0", "--api", "127.0.0.1:0"],
        ));
    }
    let refs: Vec<&AgoraProc> = nodes.iter().collect();
    let pids: Vec<String> = nodes.iter().map(|n| n.status().peer_id).collect();
    wait_until("the two nodes to connect (mDNS)", CONVERGE, &refs, || {
        for (i, n) in nodes.iter().enumerate() {
            if !n.peer_ids(None)?.contains(&pids[1 - i]) {
                return Err(format!("{} is not connected to the other", n.name));
            }
        }
        Ok(())
    });

    // Each has a private space of its own, with an idea in it.
    let secrets = ["Budget 2027 draft", "Reorg rumours"];
    let mut spaces = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let space = n.share_space(&format!("Private of {}", names[i]), &[]);
        n.add_idea(&space, secrets[i], "members only", &[]);
        spaces.push(space);
    }
    // The positive control: an open space both follow; each posts there and sees the other's.
    let open: serde_json::Value =
        nodes[0].cli_json(&["space", "create", "Corridor", "--open", "--json"]);
    let open = open["id"].as_str().expect("id").to_string();
    nodes[1].cli_ok(&["space", "join", "--open", &open]);
    for (i, n) in nodes.iter().enumerate() {
        n.add_idea(&open, &format!("Hello from {}", names[i]), "", &[]);
    }
    wait_until("both to read both open ideas", CONVERGE, &refs, || {
        for n in &nodes {
            let l: Vec<Idea> = n.try_cli_json(&["idea", "list", "--space", &open, "--json"])?;
            if l.len() != 2 {
                return Err(format!("{} lists {} open ideas", n.name, l.len()));
            }
        }
        Ok(())
    });

    // Neither shows, nor can open, nor stores anything of the other's private space.
    for (i, n) in nodes.iter().enumerate() {
        let other = 1 - i;
        let listed = n.cli_ok(&["space", "list", "--json"]);
        assert!(!listed.contains(&spaces[other]), "{}: {listed}", n.name);
        let peers: Vec<PeerInfo> = n.cli_json(&["peers", "--json"]);
        for p in &peers {
            assert!(
                p.spaces
                    .iter()
                    .all(|s| s.to_string() == open || s.to_string() == spaces[i]),
                "{} sees {} in {:?}",
                n.name,
                p.peer_id,
                p.spaces
            );
        }
        let refused = n.cli(&["idea", "list", "--space", &spaces[other]]);
        assert!(
            !refused.status.success(),
            "{} lists the other's space",
            n.name
        );
    }
    for n in nodes.iter_mut() {
        assert!(n.stop().success(), "{}", n.diagnostics());
    }
    for (i, n) in nodes.iter().enumerate() {
        let other = 1 - i;
        let raw_id: Vec<u8> = (0..spaces[other].len())
            .step_by(2)
            .map(|k| u8::from_str_radix(&spaces[other][k..k + 2], 16).expect("hex id"))
            .collect();
        let name = format!("Private of {}", names[other]);
        for needle in [
            secrets[other].as_bytes(),
            name.as_bytes(),
            spaces[other].as_bytes(),
            &raw_id[..],
        ] {
            let found = files_holding(Path::new(&n.dir).join("store").as_path(), needle);
            assert!(
                found.is_empty(),
                "{}'s store holds {:?}: {found:?}",
                n.name,
                String::from_utf8_lossy(needle)
            );
        }
    }
    drop(nodes);
    drop(lan);
}
