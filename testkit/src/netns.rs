//! Virtual LANs of network namespaces (iproute2, root): one namespace holding the bridges, and
//! one namespace per node with `lo` up and a veth pair whose other end is a port of the first
//! bridge. Addresses `10.<net>.<x>.<i>/24` exist only inside these namespaces, which [`Lan`]
//! creates and deletes (in `Drop`, also on panic); the host's own network is never touched (both
//! ends of every veth are created inside the test's namespaces).
//!
//! Tests that need this fail (never skip) unless they run as root with iproute2 installed: see
//! [`require_root_and_iproute2`].

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Runs `ip ARGS` (iproute2) and returns its stdout, or a message with its stderr.
pub fn run_ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip {}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `ip ARGS` and panics if it fails.
#[track_caller]
pub fn ip(args: &[&str]) -> String {
    run_ip(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Fails the test (never skips it) unless we are root and iproute2 is installed. `need` says
/// which test needs them and why.
pub fn require_root_and_iproute2(need: &str) {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| panic!("{need}: cannot run `id -u`: {e}"));
    assert_eq!(uid, "0", "{need}: running as uid {uid}");
    if let Err(e) = run_ip(&["-V"]) {
        panic!("{need}: {e}");
    }
}

/// How to build a [`Lan`].
#[derive(Debug, Clone)]
pub struct LanBuilder {
    tag: String,
    net: u8,
    nodes: usize,
    bridges: Vec<String>,
    multicast: bool,
}

impl LanBuilder {
    /// The bridges in the bridge namespace (default `["br0"]`). Every node's port starts on the
    /// first one.
    pub fn bridges(mut self, bridges: &[&str]) -> LanBuilder {
        assert!(!bridges.is_empty(), "a LAN needs a bridge");
        self.bridges = bridges.iter().map(|b| b.to_string()).collect();
        self
    }

    /// Multicast (mDNS) across the LAN: the bridges forward multicast to every port whatever
    /// IGMP snooping thinks, and each node routes `224.0.0.0/4` through its `eth0` (there is no
    /// default route in a namespace).
    pub fn multicast(mut self) -> LanBuilder {
        self.multicast = true;
        self
    }

    /// Creates the namespaces, bridges, veth pairs and addresses; panics (after deleting what
    /// it created) if any step fails.
    pub fn build(self) -> Lan {
        static RUNS: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        let tag = &self.tag;
        let mut lan = Lan {
            bridge_ns: format!("{tag}b{pid}_{run}"),
            node_ns: (1..=self.nodes)
                .map(|i| format!("{tag}{pid}_{run}_{i}"))
                .collect(),
            created: Vec::new(),
            net: self.net,
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
        for bridge in &self.bridges {
            ip(&["-n", &br, "link", "add", bridge, "type", "bridge"]);
            if self.multicast {
                ip(&[
                    "-n",
                    &br,
                    "link",
                    "set",
                    bridge,
                    "type",
                    "bridge",
                    "mcast_snooping",
                    "0",
                ]);
            }
            ip(&["-n", &br, "link", "set", bridge, "up"]);
        }
        for (i, ns) in lan.node_ns.clone().iter().enumerate() {
            lan.add_ns(ns);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            // Both ends are created inside test namespaces: eth0 here, veth<i> in the bridge's.
            let port = Lan::port(i);
            ip(&[
                "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns",
                &br,
            ]);
            ip(&["-n", &br, "link", "set", &port, "master", &self.bridges[0]]);
            ip(&["-n", &br, "link", "set", &port, "up"]);
            let addr = format!("{}/24", lan.addr(i));
            ip(&["-n", ns, "addr", "add", &addr, "dev", "eth0"]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
            if self.multicast {
                ip(&["-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0"]);
            }
        }
        lan
    }
}

/// The namespaces of one test run; deleted on drop (also on panic). Declare it before the
/// nodes that run in it, so that the nodes are killed first.
#[derive(Debug)]
pub struct Lan {
    /// The namespace holding the bridges.
    pub bridge_ns: String,
    /// The nodes' namespaces, node 0 first.
    pub node_ns: Vec<String>,
    created: Vec<String>,
    net: u8,
    x: u32,
}

impl Lan {
    /// A LAN of `nodes` namespaces named after `tag` (a few letters naming the test: the
    /// namespaces are `<tag>b<pid>_<run>` and `<tag><pid>_<run>_<i>`) on `10.<net>.<x>.0/24`,
    /// where `x` differs between runs.
    pub fn builder(tag: &str, net: u8, nodes: usize) -> LanBuilder {
        LanBuilder {
            tag: tag.to_string(),
            net,
            nodes,
            bridges: vec!["br0".to_string()],
            multicast: false,
        }
    }

    fn add_ns(&mut self, ns: &str) {
        ip(&["netns", "add", ns]);
        self.created.push(ns.to_string());
    }

    /// The name of node `i`'s (0-based) port on the bridges: `veth<i+1>`.
    pub fn port(i: usize) -> String {
        format!("veth{}", i + 1)
    }

    /// `ip netns exec <ns>` for node `i` (0-based).
    pub fn wrapper(&self, i: usize) -> Vec<String> {
        ["ip", "netns", "exec", self.node_ns[i].as_str()]
            .map(String::from)
            .to_vec()
    }

    /// Node `i`'s (0-based) LAN address.
    pub fn addr(&self, i: usize) -> String {
        format!("10.{}.{}.{}", self.net, self.x, i + 1)
    }

    /// The multiaddr prefix every LAN address starts with (`/ip4/10.<net>.<x>.`).
    pub fn multiaddr_prefix(&self) -> String {
        format!("/ip4/10.{}.{}.", self.net, self.x)
    }

    /// Attaches the bridge ports of nodes `nodes` (0-based) to `bridge`.
    pub fn attach(&self, nodes: std::ops::Range<usize>, bridge: &str) {
        for i in nodes {
            let port = Lan::port(i);
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
    pub fn ports(&self, bridge: &str) -> BTreeSet<String> {
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

    /// Addresses and links of every namespace, for messages.
    pub fn describe(&self) -> String {
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
