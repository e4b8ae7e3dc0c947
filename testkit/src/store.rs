//! Prepared data directories: contributions written straight into a node's store, without a
//! running node, for benchmarks and tests that start a node on a big history.

use agora_node::engine::{run_group, Clock, MAX_BATCH};
use agora_node::service::{
    AutomergeReplica, Command, GossipIn, Input, NetAction, Output, PeerHandle, RequestId, Service,
    ServiceConfig, Verdict,
};
use agora_node::store::{SledStorage, Store};
use agora_node::Config;
use agora_protocol::{Identity, SpaceId};
use std::path::Path;
use std::time::{Duration, Instant};

/// A service on a sled store, as a node's engine holds it.
pub type SledService = Service<AutomergeReplica<SledStorage>>;

/// The node's settings without the per-author bound on gossip: benchmarks and prepared stores
/// feed a whole history through gossip at once, to measure ingest, not the bound.
pub fn unlimited() -> ServiceConfig {
    ServiceConfig {
        author_rate: agora_node::service::AuthorRate {
            burst: u32::MAX,
            per_second: u32::MAX,
        },
        ..ServiceConfig::default()
    }
}

/// A service on `store` (a fixed identity and RNG seed) that has joined `space`, run as the
/// engine runs it; with the storage the engine flushes.
pub fn joined_service(
    store: Store<SledStorage>,
    space: SpaceId,
    clock: &Clock,
) -> (SledService, SledStorage) {
    let storage = store.storage().clone();
    let mut service = Service::open(store, Identity::from_seed([7; 32]), unlimited(), [9; 32])
        .expect("open the service");
    let join = Input::Command {
        id: RequestId(0),
        command: Command::JoinSpace { space },
    };
    run_group(&mut service, &storage, vec![join], clock.now());
    (service, storage)
}

/// One input of gossip: `contributions`, in order, on `space`'s topic, from one peer.
pub fn gossip<'a>(space: SpaceId, contributions: impl IntoIterator<Item = &'a [u8]>) -> Input {
    Input::Gossip(
        contributions
            .into_iter()
            .enumerate()
            .map(|(token, bytes)| GossipIn {
                token: token as u64,
                from: PeerHandle(1),
                first_hop: true,
                topic: Some(space),
                bytes: bytes.to_vec(),
            })
            .collect(),
    )
}

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
    let clock = Clock::new();
    let (mut service, storage) = joined_service(store, space, &clock);
    for chunk in contributions.chunks(MAX_BATCH) {
        let batch = gossip(space, chunk.iter().map(Vec::as_slice));
        let outputs = run_group(&mut service, &storage, vec![batch], clock.now());
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
    let checkpoint = Input::Command {
        id: RequestId(0),
        command: Command::Checkpoint,
    };
    run_group(&mut service, &storage, vec![checkpoint], clock.now());
    let t = Instant::now();
    service.digest(&space);
    Prepared {
        digest: t.elapsed(),
    }
}

/// The files under `dir` (recursively) whose bytes contain `needle`: what a copy of a data
/// directory would show of it.
pub fn files_holding(dir: &Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)
                .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
            {
                found.push(path);
            }
        }
    }
    found
}
