//! # agora-testkit
//!
//! The one test kit of Agora's integration tests and benchmarks (a dev-dependency only; it is
//! not part of the node). Layout:
//! - [`rng`]: the deterministic, seeded random source ([`rng::Rng`], xoshiro256++).
//! - [`history`]: signed contributions: hand-made (genuine or forged) ideas, and seeded idea
//!   histories with concurrent branches, as the benchmarks replay them.
//! - [`store`]: data directories prepared by writing contributions straight into a store (the
//!   only module that drives the engine directly).
//! - [`node`]: nodes in this process on loopback, and bounded waits (mesh, convergence).
//! - [`process`]: real `agora` processes driven through the CLI, with typed `--json` output.
//! - [`netns`]: virtual LANs of network namespaces, veth pairs and bridges (root, iproute2).
//! - [`peer`]: a raw libp2p peer that plays the attacker (gossip and sync).
//!
//! Rules every user keeps: no sleep as synchronisation (wait for a condition, with a deadline),
//! every loop bounded, nothing left running or configured when a test fails.
#![deny(missing_docs)]

pub mod history;
pub mod netns;
pub mod node;
pub mod peer;
pub mod process;
pub mod rng;
pub mod store;

pub use rng::Rng;
