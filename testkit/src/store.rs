//! Prepared data directories: contributions written straight into a node's store, without a
//! running node, for benchmarks and tests that start a node on a big history.
//!
//! This is the only place in the test kit that drives the node's engine and store directly.

use agora_node::engine::{Engine, Outcome, MAX_BATCH};
use agora_node::store::Store;
use agora_node::Config;
use agora_protocol::{Identity, SpaceId};
use std::path::Path;
use std::time::{Duration, Instant};

/// What preparing a data directory measured on the way.
#[derive(Debug, Clone, Copy)]
pub struct Prepared {
    /// How long one sync digest of the space took on the prepared store.
    pub digest: Duration,
}

/// Writes `contributions` into a fresh store in the data directory `dir` (joined to `space`,
/// named "bench") with the engine, in batches of the engine's size, then checkpoints (snapshots
/// every document) as a shutdown would. A node started on `dir` then holds the space. Panics
/// unless every contribution is accepted as it comes (give them in causal order).
pub fn prepare_data_dir(dir: &Path, space: SpaceId, contributions: &[Vec<u8>]) -> Prepared {
    let config = Config::ephemeral(dir.to_path_buf());
    config.ensure_data_dir().expect("data dir");
    let store = Store::open(&config.store_dir(), config.cache_bytes).expect("open store");
    let (events, _) = tokio::sync::broadcast::channel(16);
    let mut engine =
        Engine::open(store, Identity::from_seed([7; 32]), [9; 16], events).expect("open engine");
    engine
        .join_space(space, Some("bench".into()), 0)
        .expect("join");
    for chunk in contributions.chunks(MAX_BATCH) {
        let outcomes = engine.ingest(chunk.iter().map(|b| (b.clone(), Some(space))).collect());
        assert!(
            outcomes.iter().all(|o| *o == Outcome::Accepted),
            "every prepared contribution is accepted"
        );
    }
    engine.checkpoint().expect("checkpoint");
    let t = Instant::now();
    let digest = engine.sync_digest(space);
    let elapsed = t.elapsed();
    assert!(digest.is_some(), "the prepared space has a digest");
    Prepared { digest: elapsed }
}
