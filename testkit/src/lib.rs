//! # agora-testkit
//!
//! The one test kit of Agora's integration tests, benchmarks and examples (a dev-dependency only;
//! it is not part of the node). Layout:
//! - [`rng`]: the deterministic, seeded random source ([`rng::Rng`], xoshiro256++).
//! - [`history`]: signed contributions: hand-made (genuine or forged) ideas, and seeded idea
//!   histories with concurrent branches, as the benchmarks replay them.
//! - [`store`]: data directories prepared by writing contributions straight into a store.
//! - [`private`]: a service owning a private space with given members, and sealed workloads.
//! - [`node`]: nodes in this process on loopback, and bounded waits (mesh, convergence).
//! - [`process`]: real `agora` processes driven through the CLI, with typed `--json` output.
//! - [`netns`]: virtual LANs of network namespaces, veth pairs and bridges (root, iproute2).
//! - [`peer`]: a raw libp2p peer that plays the attacker (gossip and sync).
//! - [`sim`]: the deterministic simulation of many nodes (the node's own service on each, a
//!   simulated network and gossipsub, virtual time).
//!
//! Rules every user keeps: no sleep as synchronisation (wait for a condition, with a deadline),
//! every loop bounded, nothing left running or configured when a test fails.
#![deny(missing_docs)]

pub mod history;
pub mod netns;
pub mod node;
pub mod peer;
pub mod private;
pub mod process;
pub mod rng;
pub mod sim;
pub mod store;

pub use rng::Rng;
