//! Prepared data directories: contributions written straight into a node's store, without a
//! running node, for benchmarks and tests that start a node on a big history.

use agora_node::engine::{run_group, Clock, MAX_BATCH};
use agora_node::service::{
    Command, GossipIn, Input, NetAction, Output, PeerHandle, RequestId, Service, ServiceConfig,
    Verdict,
};
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

/// Writes `contributions` into a fresh store in the data directory `dir` (joined to `space`)
/// with the node's service, in groups of the engine's batch size, then checkpoints (snapshots
/// every document) as a shutdown would. A node started on `dir` then holds the space. Panics
/// unless every contribution is accepted as it comes (give them in causal order).
pub fn prepare_data_dir(dir: &Path, space: SpaceId, contributions: &[Vec<u8>]) -> Prepared {
    let config = Config::ephemeral(dir.to_path_buf());
    config.ensure_data_dir().expect("data dir");
    let store = agora_node::open_store(&config).expect("open store");
    let storage = store.storage().clone();
    let mut service = Service::open(
        store,
        Identity::from_seed([7; 32]),
        ServiceConfig::default(),
        [9; 32],
    )
    .expect("open the service");
    let clock = Clock::new();
    let command = |command| Input::Command {
        id: RequestId(0),
        command,
    };
    run_group(
        &mut service,
        &storage,
        vec![command(Command::JoinSpace { space })],
        clock.now(),
    );
    for chunk in contributions.chunks(MAX_BATCH) {
        let batch = chunk
            .iter()
            .enumerate()
            .map(|(token, bytes)| GossipIn {
                token: token as u64,
                from: PeerHandle(0),
                topic: Some(space),
                bytes: bytes.clone(),
            })
            .collect();
        let outputs = run_group(
            &mut service,
            &storage,
            vec![Input::Gossip(batch)],
            clock.now(),
        );
        let accepted = outputs
            .iter()
            .filter(|o| {
                matches!(
                    o,
                    Output::Net(NetAction::Verdict {
                        verdict: Verdict::Accept,
                        ..
                    })
                )
            })
            .count();
        assert_eq!(
            accepted,
            chunk.len(),
            "every prepared contribution is accepted"
        );
    }
    run_group(
        &mut service,
        &storage,
        vec![command(Command::Checkpoint)],
        clock.now(),
    );
    let t = Instant::now();
    service.digest(&space);
    Prepared {
        digest: t.elapsed(),
    }
}
