//! Private spaces for benchmarks and tests: a service that owns one with given writers admitted
//! (each by invitation and redeem, as the node does it), and workloads sealed as those writers
//! would seal them.

use crate::history::{Delivery, Writer};
use crate::store::SledService;
use crate::Rng;
use agora_node::engine::{run_group, Clock};
use agora_node::service::{Command, Input, Output, Reply, RequestId, Service};
use agora_node::store::{SledStorage, Store};
use agora_protocol::keys::{DeviceKey, KeyId, XChaCha20Poly1305};
use agora_protocol::membership::{build, Op, OpBody, PrivateSpace, Role, VerifiedOp};
use agora_protocol::sealed::Envelope;
use agora_protocol::{Contribution, Identity, SpaceId};
use rand::SeedableRng;

/// The owner's identity seed in [`private_service`].
pub const OWNER_SEED: [u8; 32] = [7; 32];

/// Runs one command as the engine does; its reply (which must be a success).
pub fn command(
    service: &mut SledService,
    storage: &SledStorage,
    clock: &Clock,
    c: Command,
) -> Reply {
    let outputs = run_group(
        service,
        storage,
        vec![Input::Command {
            id: RequestId(1),
            command: c,
        }],
        clock.now(),
    );
    outputs
        .into_iter()
        .find_map(|o| match o {
            Output::Reply { result, .. } => Some(result.expect("the command succeeds")),
            _ => None,
        })
        .expect("a reply")
}

/// A private space as one of its members sees it: the space, every operation, and the current
/// epoch's key id and cipher.
pub struct SealingKey {
    /// The space.
    pub space: SpaceId,
    /// Every membership operation, encoded.
    pub ops: Vec<Vec<u8>>,
    /// The current epoch.
    pub key_id: KeyId,
    /// Its content cipher.
    pub cipher: XChaCha20Poly1305,
    /// Its gossip topic.
    pub topic: String,
}

/// A service on `store` (owner [`OWNER_SEED`]) that created a private space and admitted every
/// one of `members` with `role`, each by its own invitation and redeem. Returns it with the
/// storage the engine flushes and the space's current key.
pub fn private_service(
    store: Store<SledStorage>,
    clock: &Clock,
    members: &[Identity],
    role: Role,
) -> (SledService, SledStorage, SealingKey) {
    let storage = store.storage().clone();
    let mut service = Service::open(
        store,
        Identity::from_seed(OWNER_SEED),
        crate::store::unlimited(),
        [9; 32],
    )
    .expect("open the service");
    let Reply::Space(space) = command(
        &mut service,
        &storage,
        clock,
        Command::CreatePrivateSpace {
            name: "Bench".into(),
        },
    ) else {
        panic!("create")
    };
    let mut ops = Vec::new();
    for member in members {
        ops = admit(
            &mut |c| command(&mut service, &storage, clock, c),
            space,
            member,
            role,
        );
    }
    let owner = Identity::from_seed(OWNER_SEED);
    let key = sealing_key(space, ops, &owner);
    (service, storage, key)
}

/// A member of `space` admits `member` with `role`, by an invitation and the member's redeem,
/// as the node does it (`run` runs one command on the admitting node and returns its reply).
/// Returns the space's operations as the join answer gives them to the newcomer.
pub fn admit(
    run: &mut dyn FnMut(Command) -> Reply,
    space: SpaceId,
    member: &Identity,
    role: Role,
) -> Vec<Vec<u8>> {
    let Reply::Invitation(inv) = run(Command::Invite {
        space,
        role,
        expires: u64::MAX / 2,
        uses: 1,
    }) else {
        panic!("invite")
    };
    let redeem = build::redeem(
        &space,
        inv.invite,
        &Identity::from_seed(inv.secret),
        member,
        &DeviceKey::for_identity(member),
    );
    let Reply::Admitted(admitted) = run(Command::AdmitRedeem {
        space,
        redeem: Box::new(redeem),
    }) else {
        panic!("admit")
    };
    admitted.ops
}

/// The current key of a private space, as `member` unlocks it from the space's operations.
pub fn sealing_key(space: SpaceId, ops: Vec<Vec<u8>>, member: &Identity) -> SealingKey {
    let verified: Vec<_> = ops
        .iter()
        .map(|b| agora_protocol::membership::Op::verify(b).expect("a valid operation"))
        .collect();
    let view = PrivateSpace::from_ops(space, verified, member, &DeviceKey::for_identity(member))
        .expect("the member's view");
    let (key_id, cipher) = view.current().expect("the member holds the current key");
    SealingKey {
        space,
        key_id,
        cipher: cipher.clone(),
        topic: view.topics()[0].clone(),
        ops,
    }
}

/// A delivery's contributions sealed as their authors would seal them under `key` (each with a
/// fresh nonce from `rng`), in the same order, with their document index.
pub fn seal_delivery(d: &Delivery, key: &SealingKey, rng: &mut Rng) -> Vec<(usize, Vec<u8>)> {
    let by_author: std::collections::HashMap<_, &Writer> =
        d.writers.iter().map(|w| (w.author, w)).collect();
    d.items
        .iter()
        .map(|(doc, bytes)| {
            let c = Contribution::decode(bytes).expect("we encoded it");
            let writer = by_author[&c.author];
            let sealed = Envelope::seal(
                &writer.identity,
                &key.space,
                key.key_id,
                &key.cipher,
                &c.doc,
                c.kind,
                &c.change,
                rng.bytes(),
            );
            (*doc, sealed.encode())
        })
        .collect()
}

/// An idea by `author` in `space`, sealed under `key` (with a fresh nonce from `rng`): what a
/// member's node would publish.
pub fn sealed_idea(author: &Identity, key: &SealingKey, title: &str, rng: &mut Rng) -> Vec<u8> {
    let salt: [u8; 16] = rng.bytes();
    let doc = agora_protocol::DocId::idea(&key.space, &author.author(), &salt);
    let mut d = agora_protocol::automerge::AutoCommit::new().with_actor(
        agora_protocol::idea::actor_for(&author.author(), &rng.bytes()),
    );
    let draft = agora_protocol::IdeaDraft {
        title: title.into(),
        body: String::new(),
        tags: Vec::new(),
    };
    let change = agora_protocol::idea::create_idea(&mut d, &draft, &author.author(), &salt, 1)
        .expect("a valid idea");
    Envelope::seal(
        author,
        &key.space,
        key.key_id,
        &key.cipher,
        &doc,
        agora_protocol::DocKind::Idea,
        change.raw_bytes(),
        rng.bytes(),
    )
    .encode()
}

/// A private space owned by `owner` with every one of `members` admitted as a member (one
/// invitation of that many uses, one admission each, in a chain), made at the protocol level:
/// fast enough for spaces of a thousand. Its id and every operation, in order. The owner's and
/// the members' device keys are those a node derives from their identities.
pub fn big_space(owner: &Identity, members: &[Identity]) -> (SpaceId, Vec<VerifiedOp>) {
    let mut rng = rand::rngs::ChaCha20Rng::from_seed([7; 32]);
    let new = build::create(owner, &DeviceKey::for_identity(owner), "Big team", &mut rng)
        .expect("create");
    let (space, root) = (new.space, new.root);
    let mut ops = vec![new.op];
    let ticket = Identity::from_seed([3; 32]);
    let invite = Op::sign(
        owner,
        space,
        vec![ops[0].id()],
        OpBody::Invite {
            key: ticket.author().0,
            role: Role::Member,
            expires: u64::MAX / 2,
            uses: members.len() as u64,
        },
    )
    .expect("invite");
    let invite_id = invite.id();
    ops.push(invite);
    let mut parent = invite_id;
    for member in members {
        let redeem = build::redeem(
            &space,
            invite_id,
            &ticket,
            member,
            &DeviceKey::for_identity(member),
        );
        let body = build::admit_body(&space, &redeem, 1, &root, &mut rng).expect("admit");
        let op = Op::sign(owner, space, vec![parent], body).expect("sign");
        parent = op.id();
        ops.push(op);
    }
    (space, ops)
}
