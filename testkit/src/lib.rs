//! # agora-testkit
//!
//! What Agora's tests, benchmarks and examples share.
//!
//! - [`sim`]: the deterministic simulation of many nodes.
#![deny(missing_docs)]

pub mod sim;
