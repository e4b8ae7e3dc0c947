//! Private spaces, costs measured in the protocol crate (one core, no I/O):
//!
//! 1. **Sealed vs plain contributions.** The per-contribution work a receiver cannot avoid:
//!    decode, check the signature, check the change (and, sealed, decrypt). Reported as the sealed
//!    path's throughput over the plain path's, in the same run (the goal for the node's
//!    ingest is at least 0.8; this is the protocol's share of it).
//! 2. **A membership change in a 1,000-member space.** The space is built from one invitation of
//!    1,000 uses and 1,000 admissions. Measured: resolving the 1,001-member space; making a
//!    removal (a fresh secret wrapped to the 999 who stay, in one `remove` and two `share`
//!    operations); resolving again; and what one remaining member does with it (verify the three
//!    operations, find and open its wrap, open the seal of the previous epoch). Sizes in bytes.
//!
//! 3. **The costliest history found for resolution** (see the review regression tests): 10,000
//!    operations that admit and remove one member over and over.
//!
//! Run with `cargo bench -p agora-protocol --bench private`. `AGORA_BENCH_N` sets the number of
//! contributions (default 5,000) and `AGORA_BENCH_MEMBERS` the space size (default 1,000).

use agora_protocol::contribution::check_change;
use agora_protocol::identity::Identity;
use agora_protocol::ids::{AuthorId, DocId, SpaceId};
use agora_protocol::keys::KeyId;
use agora_protocol::keys::{self, DeviceKey, EpochSecret};
use agora_protocol::membership::{build, resolve, Op, OpBody, Role, VerifiedOp};
use agora_protocol::sealed::{Envelope, Plaintext};
use agora_protocol::{idea, Contribution, DocKind};
use rand::SeedableRng;
use std::time::{Duration, Instant};

const REPEATS: usize = 5;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| v.replace(['_', ','], "").parse().expect("a number"))
        .unwrap_or(default)
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn time<T>(f: impl FnMut() -> T) -> Duration {
    let mut f = f;
    median(
        (0..REPEATS)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(f());
                t.elapsed()
            })
            .collect(),
    )
}

fn contributions(n: usize) {
    let me = Identity::from_seed([1; 32]);
    let space = SpaceId([2; 16]);
    let secret = EpochSecret::from_bytes([3; 32]);
    let cipher = secret.content_key().cipher();
    let mut plain = Vec::with_capacity(n);
    let mut sealed = Vec::with_capacity(n);
    for i in 0..n {
        let mut salt = [0u8; 16];
        salt[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let doc = DocId::idea(&space, &me.author(), &salt);
        let mut d = agora_protocol::automerge::AutoCommit::new()
            .with_actor(idea::actor_for(&me.author(), &salt));
        let draft = idea::IdeaDraft {
            title: format!("Idea {i}"),
            body: "Bring a dish on Fridays; we rotate who cooks.".into(),
            tags: vec!["bench".into()],
        };
        let change = idea::create_idea(&mut d, &draft, &me.author(), &salt, 1_700_000_000_000)
            .expect("valid draft");
        plain.push(Contribution::sign(&me, space, doc, DocKind::Idea, &change).encode());
        let mut nonce = [0u8; 24];
        nonce[..8].copy_from_slice(&(i as u64).to_le_bytes());
        sealed.push(
            Envelope::seal(
                &me,
                &space,
                secret.key_id(),
                &cipher,
                &doc,
                DocKind::Idea,
                change.raw_bytes(),
                nonce,
            )
            .encode(),
        );
    }
    let plain_one = time(|| {
        for b in &plain {
            Contribution::decode(b).unwrap().verify().unwrap();
        }
    });
    let plain_batch = time(|| {
        let decoded: Vec<Contribution> = plain
            .iter()
            .map(|b| Contribution::decode(b).unwrap())
            .collect();
        for r in agora_protocol::contribution::verify_batch(decoded) {
            r.unwrap();
        }
    });
    let sealed_one = time(|| {
        for b in &sealed {
            Envelope::decode(b)
                .unwrap()
                .verify_and_open(&space, &cipher)
                .unwrap();
        }
    });
    let sealed_batch = time(|| {
        let opened: Vec<(Plaintext, KeyId)> = sealed
            .iter()
            .map(|b| {
                let e = Envelope::decode(b).unwrap();
                (e.unseal(&space, &cipher).unwrap(), e.key_id)
            })
            .collect();
        let refs: Vec<(&Plaintext, SpaceId, KeyId)> =
            opened.iter().map(|(p, k)| (p, space, *k)).collect();
        for r in agora_protocol::sealed::verify_signatures(&refs) {
            r.unwrap();
        }
        for (p, _) in &opened {
            check_change(&space, &p.doc, p.kind, &p.author, &p.change).unwrap();
        }
    });
    let open_only = time(|| {
        for b in &sealed {
            let p = Envelope::decode(b)
                .unwrap()
                .unseal(&space, &cipher)
                .unwrap();
            check_change(&space, &p.doc, p.kind, &p.author, &p.change).unwrap();
        }
    });
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    println!("## sealed vs plain contributions ({n} idea creations)");
    println!(
        "plain, one by one (decode + verify):        {:7.1} µs each",
        per(plain_one)
    );
    println!(
        "plain, batch verification:                  {:7.1} µs each",
        per(plain_batch)
    );
    println!(
        "sealed, one by one (decode + sig + open):   {:7.1} µs each",
        per(sealed_one)
    );
    println!(
        "sealed, batch verification, then open:      {:7.1} µs each",
        per(sealed_batch)
    );
    println!(
        "sealed, decrypt + change checks only:       {:7.1} µs each",
        per(open_only)
    );
    println!(
        "throughput sealed / plain (one by one):     {:.2}",
        plain_one.as_secs_f64() / sealed_one.as_secs_f64()
    );
    println!(
        "throughput sealed / plain (batches):        {:.2}",
        plain_batch.as_secs_f64() / sealed_batch.as_secs_f64()
    );
}

fn membership(members: usize) {
    let mut rng = rand::rngs::ChaCha20Rng::from_seed([7; 32]);
    let owner = Identity::from_seed([1; 32]);
    let owner_device = DeviceKey::from_seed(&[2; 32]);
    let new = build::create(&owner, &owner_device, "Big team", &mut rng).unwrap();
    let space = new.space;
    let root = new.root;
    let mut ops: Vec<VerifiedOp> = vec![new.op];
    let ticket = Identity::from_seed([3; 32]);
    let invite = Op::sign(
        &owner,
        space,
        vec![ops[0].id()],
        OpBody::Invite {
            key: ticket.author().0,
            role: Role::Member,
            expires: u64::MAX,
            uses: members as u64,
        },
    )
    .unwrap();
    let invite_id = invite.id();
    ops.push(invite);
    let people: Vec<(Identity, DeviceKey)> = (0..members)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64 + 10).to_le_bytes());
            let mut dseed = seed;
            dseed[31] = 0xdd;
            (Identity::from_seed(seed), DeviceKey::from_seed(&dseed))
        })
        .collect();
    let t = Instant::now();
    let mut parent = invite_id;
    for (id, device) in &people {
        let r = build::redeem(&space, invite_id, &ticket, id, device);
        let body = build::admit_body(&space, &r, 1, &root, &mut rng).unwrap();
        let op = Op::sign(&owner, space, vec![parent], body).unwrap();
        parent = op.id();
        ops.push(op);
    }
    let build_admits = t.elapsed();
    let n_ops = ops.len();
    let resolve_before = time(|| resolve(space, &ops).unwrap());
    let m = resolve(space, &ops).unwrap();
    assert_eq!(m.members.len(), members + 1);

    // The owner removes the first member: a fresh secret for the 999 + owner who stay.
    let gone = people[0].0.author();
    let recipients: Vec<(AuthorId, [u8; 32])> = m
        .members
        .iter()
        .filter(|(a, _)| **a != gone)
        .map(|(a, x)| (*a, x.device))
        .collect();
    let next = EpochSecret::from_bytes([9; 32]);
    let make = || {
        let mut rng = rand::rngs::ChaCha20Rng::from_seed([8; 32]);
        let (rotation, rest) = build::rotation(&space, &next, &[&root], &recipients, &mut rng);
        let remove = Op::sign(
            &owner,
            space,
            m.heads.clone(),
            OpBody::Remove {
                member: gone,
                rotation: Some(rotation),
                pins: Vec::new(),
            },
        )
        .unwrap();
        let mut out = vec![remove];
        for wraps in rest {
            let parents = vec![out.last().unwrap().id()];
            out.push(
                Op::sign(
                    &owner,
                    space,
                    parents,
                    OpBody::Share {
                        key_id: next.key_id(),
                        wraps,
                    },
                )
                .unwrap(),
            );
        }
        out
    };
    let make_removal = time(make);
    let removal = make();
    let removal_bytes: usize = removal.iter().map(|o| o.bytes().len()).sum();
    let mut all = ops.clone();
    all.extend(removal.iter().cloned());
    let resolve_after = time(|| resolve(space, &all).unwrap());
    let after = resolve(space, &all).unwrap();
    assert_eq!(after.members.len(), members);
    assert_eq!(after.current, next.key_id());
    assert!(
        after.missing_wraps.is_empty(),
        "{:?}",
        after.missing_wraps.len()
    );
    // One remaining member (the last admitted) takes the removal in.
    let (me, my_device) = &people[members - 1];
    let receive = time(|| {
        let verified: Vec<VerifiedOp> = removal
            .iter()
            .map(|o| Op::verify(o.bytes()).unwrap())
            .collect();
        let mut secret = None;
        for op in &verified {
            let wraps = match &op.op().body {
                OpBody::Remove {
                    rotation: Some(r), ..
                } => &r.wraps,
                OpBody::Share { wraps, .. } => wraps,
                _ => continue,
            };
            if let Ok(i) = wraps.binary_search_by_key(&me.author(), |w| w.to) {
                secret = Some(
                    keys::unwrap(
                        &wraps[i].wrap,
                        &space,
                        &next.key_id(),
                        &me.author(),
                        my_device,
                    )
                    .unwrap(),
                );
            }
        }
        let secret = secret.expect("a wrap for every member who stays");
        let OpBody::Remove {
            rotation: Some(r), ..
        } = &verified[0].op().body
        else {
            unreachable!()
        };
        build::open_seals(&space, r, &secret)
    });
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!();
    println!("## a membership change in a {members}-member space ({n_ops} operations)");
    println!(
        "building the space (admissions, one HPKE wrap each): {:8.1} ms",
        ms(build_admits)
    );
    println!(
        "resolving the space:                                 {:8.1} ms",
        ms(resolve_before)
    );
    println!(
        "making a removal ({} wraps, {} operations):          {:8.1} ms",
        recipients.len(),
        removal.len(),
        ms(make_removal)
    );
    println!(
        "its size on the wire:                                {:8} bytes",
        removal_bytes
    );
    println!(
        "resolving with the removal:                          {:8.1} ms",
        ms(resolve_after)
    );
    println!(
        "one member takes it in (verify, unwrap, open seal):  {:8.2} ms",
        ms(receive)
    );
}

/// The costliest shape of history a review found for resolution: one member admitted (each time
/// by a new invitation) and removed over and over, `n` operations in one chain.
fn adversarial(n: usize) {
    let mut rng = rand::rngs::ChaCha20Rng::from_seed([5; 32]);
    let owner = Identity::from_seed([1; 32]);
    let device = DeviceKey::from_seed(&[2; 32]);
    let new = build::create(&owner, &device, "Churn", &mut rng).unwrap();
    let (space, root) = (new.space, new.root);
    let bob = Identity::from_seed([3; 32]);
    let bob_device = DeviceKey::from_seed(&[4; 32]);
    let mut parent = new.op.id();
    let mut ops = vec![new.op];
    let mut i = 0u64;
    while ops.len() + 3 <= n {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&i.to_le_bytes());
        let ticket = Identity::from_seed(seed);
        let invite = Op::sign(
            &owner,
            space,
            vec![parent],
            OpBody::Invite {
                key: ticket.author().0,
                role: Role::Member,
                expires: u64::MAX,
                uses: 1,
            },
        )
        .unwrap();
        let r = build::redeem(&space, invite.id(), &ticket, &bob, &bob_device);
        let body = build::admit_body(&space, &r, 0, &root, &mut rng).unwrap();
        let admit = Op::sign(&owner, space, vec![invite.id()], body).unwrap();
        let next = EpochSecret::from_bytes(seed);
        let (rotation, _) = build::rotation(&space, &next, &[&root], &[], &mut rng);
        let remove = Op::sign(
            &owner,
            space,
            vec![admit.id()],
            OpBody::Remove {
                member: bob.author(),
                rotation: Some(rotation),
                pins: Vec::new(),
            },
        )
        .unwrap();
        parent = remove.id();
        ops.extend([invite, admit, remove]);
        i += 1;
    }
    let took = time(|| resolve(space, &ops).unwrap());
    println!();
    println!("## the costliest history found for resolution");
    println!(
        "{} operations re-admitting and removing one member:  {:8.1} ms",
        ops.len(),
        took.as_secs_f64() * 1e3
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    contributions(env_usize("AGORA_BENCH_N", 5_000));
    membership(env_usize("AGORA_BENCH_MEMBERS", 1_000));
    adversarial(agora_protocol::membership::MAX_OPS);
}
