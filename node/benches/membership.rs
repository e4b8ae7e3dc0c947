//! A membership change in a 1,000-member private space, as the node does it: the service on a
//! sled store on disk, each step run as the engine thread runs it (one group, one durable flush).
//!
//! The space is made at the protocol level (one invitation of 1,000 uses, 1,000 admissions by
//! the owner), then handed to two services: the owner's and one member's (`JoinPrivate`, as a
//! join answer brings it). Measured, each the median of five:
//! - **remove**: the owner's node removes a member: it resolves the membership, pins the
//!   member's documents, makes a fresh secret wrapped to everyone who stays (one HPKE wrap each,
//!   in a `remove` and `share` operations), seals the operations for gossip, applies the write
//!   rule to the space's documents again, and flushes the operations to disk;
//! - **take in**: the member's node takes those operations in by gossip: opens, verifies and
//!   resolves them, unwraps its new secret, and flushes;
//! - the same run's protocol-level reference: `resolve` of the space (the part of both that no
//!   node can avoid, once per change, until resolution is incremental).
//!
//! Run with `cargo bench -p agora-node --bench membership`; `AGORA_BENCH_MEMBERS` sets the space
//! size (default 1,000).

use agora_node::engine::{run_group, Clock};
use agora_node::service::{
    Command, GossipIn, Input, NetAction, Output, PeerHandle, Reply, RequestId, Service,
};
use agora_node::store::{SledStorage, Store};
use agora_protocol::membership::resolve;
use agora_protocol::Identity;
use agora_testkit::store::unlimited;
use std::time::{Duration, Instant};

const REPEATS: usize = 5;

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One group through the service as the engine runs it (flush included); its outputs.
fn group(
    service: &mut agora_testkit::store::SledService,
    storage: &SledStorage,
    inputs: Vec<Input>,
) -> Vec<Output> {
    run_group(service, storage, inputs, Clock::new().now())
}

fn command(
    service: &mut agora_testkit::store::SledService,
    storage: &SledStorage,
    command: Command,
) -> (Reply, Vec<Output>) {
    let outputs = group(
        service,
        storage,
        vec![Input::Command {
            id: RequestId(1),
            command,
        }],
    );
    let reply = outputs
        .iter()
        .find_map(|o| match o {
            Output::Reply { result, .. } => Some(result.clone().expect("the command succeeds")),
            _ => None,
        })
        .expect("a reply");
    (reply, outputs)
}

fn node(
    dir: &std::path::Path,
    identity: &Identity,
) -> (agora_testkit::store::SledService, SledStorage) {
    let storage = SledStorage::open(dir, 64 * 1024 * 1024).expect("a sled store");
    let store = Store::new(storage.clone()).expect("a store");
    let service =
        Service::open(store, identity.clone(), unlimited(), [5; 32]).expect("the service");
    (service, storage)
}

fn main() {
    let members: usize = std::env::var("AGORA_BENCH_MEMBERS")
        .ok()
        .map(|v| v.replace(['_', ','], "").parse().expect("a number"))
        .unwrap_or(1_000);
    let owner = Identity::from_seed([1; 32]);
    let people: Vec<Identity> = (0..members)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64 + 10).to_le_bytes());
            Identity::from_seed(seed)
        })
        .collect();
    let t = Instant::now();
    let (space, ops) = agora_testkit::private::big_space(&owner, &people);
    let built = t.elapsed();
    let encoded: Vec<Vec<u8>> = ops.iter().map(|o| o.bytes().to_vec()).collect();

    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut owner_node, owner_storage) = node(dirs.0.path(), &owner);
    let member = &people[members - 1];
    let (mut member_node, member_storage) = node(dirs.1.path(), member);
    let t = Instant::now();
    for (service, storage) in [
        (&mut owner_node, &owner_storage),
        (&mut member_node, &member_storage),
    ] {
        command(
            service,
            storage,
            Command::JoinPrivate {
                space,
                ops: encoded.clone(),
            },
        );
    }
    let joined = t.elapsed() / 2;

    let mut remove = Vec::new();
    let mut take_in = Vec::new();
    let mut sizes = Vec::new();
    for (i, gone) in people.iter().take(REPEATS).enumerate() {
        let t = Instant::now();
        let (_, outputs) = command(
            &mut owner_node,
            &owner_storage,
            Command::RemoveMember {
                space,
                member: gone.author(),
            },
        );
        remove.push(t.elapsed());
        let sealed: Vec<Vec<u8>> = outputs
            .iter()
            .filter_map(|o| match o {
                Output::Net(NetAction::PublishTo { bytes, .. }) => Some(bytes.clone()),
                _ => None,
            })
            .collect();
        assert!(!sealed.is_empty(), "the removal is published");
        sizes.push(sealed.iter().map(Vec::len).sum::<usize>());
        let gossip: Vec<GossipIn> = sealed
            .into_iter()
            .enumerate()
            .map(|(k, bytes)| GossipIn {
                token: (i * 100 + k) as u64,
                from: PeerHandle(1),
                first_hop: true,
                topic: Some(space),
                bytes,
            })
            .collect();
        let t = Instant::now();
        group(
            &mut member_node,
            &member_storage,
            vec![Input::Gossip(gossip)],
        );
        take_in.push(t.elapsed());
        let (Reply::Members(owner_sees), _) =
            command(&mut owner_node, &owner_storage, Command::Members { space })
        else {
            panic!()
        };
        let (Reply::Members(member_sees), _) = command(
            &mut member_node,
            &member_storage,
            Command::Members { space },
        ) else {
            panic!()
        };
        assert_eq!(owner_sees.len(), members - i, "the owner removed one");
        assert_eq!(
            member_sees.len(),
            owner_sees.len(),
            "the member took the removal in"
        );
    }
    // The protocol-level reference: resolving the space (before the removals).
    let reference = median(
        (0..REPEATS)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(resolve(space, &ops).expect("resolves"));
                t.elapsed()
            })
            .collect(),
    );
    let (remove, take_in) = (median(remove), median(take_in));
    println!(
        "## a membership change in a {members}-member space, node level ({} operations)",
        ops.len()
    );
    println!(
        "building the space (protocol, one HPKE wrap each):   {:8.1} ms",
        ms(built)
    );
    println!(
        "a node takes the whole space in (JoinPrivate):       {:8.1} ms",
        ms(joined)
    );
    println!(
        "the owner's node removes a member (durable):         {:8.1} ms",
        ms(remove)
    );
    println!(
        "  sealed for gossip:                                 {:8} bytes",
        sizes[sizes.len() / 2]
    );
    println!(
        "a member's node takes the removal in (durable):      {:8.1} ms",
        ms(take_in)
    );
    println!(
        "reference, resolve(the space before the removals):   {:8.1} ms",
        ms(reference)
    );
    println!(
        "remove / reference: {:.2}; take in / reference: {:.2}",
        remove.as_secs_f64() / reference.as_secs_f64(),
        take_in.as_secs_f64() / reference.as_secs_f64()
    );
}
