use super::build::{self, NewSpace};
use super::*;
use crate::identity::Identity;
use crate::keys::{DeviceKey, EpochSecret};
use rand::SeedableRng;
use std::collections::BTreeSet;

type Rng = rand::rngs::ChaCha20Rng;

/// A person in a test: an identity and a device key.
struct Person {
    id: Identity,
    device: DeviceKey,
}

fn person(n: u8) -> Person {
    Person {
        id: Identity::from_seed([n; 32]),
        device: DeviceKey::from_seed(&[n.wrapping_add(100); 32]),
    }
}

/// A space under test: every operation made so far, and the current secret.
struct World {
    rng: Rng,
    space: SpaceId,
    secret: EpochSecret,
    ops: Vec<VerifiedOp>,
}

impl World {
    fn new(owner: &Person) -> World {
        let mut rng = Rng::from_seed([1; 32]);
        let NewSpace { space, root, op } =
            build::create(&owner.id, &owner.device, "Ops", &mut rng).unwrap();
        World {
            rng,
            space,
            secret: root,
            ops: vec![op],
        }
    }

    fn resolve(&self) -> Membership {
        resolve(self.space, &self.ops).expect("resolvable")
    }

    fn heads(&self) -> Vec<OpId> {
        self.resolve().heads
    }

    fn sign(&mut self, who: &Person, parents: Vec<OpId>, body: OpBody) -> OpId {
        let op = Op::sign(&who.id, self.space, parents, body).expect("a well-formed operation");
        let id = op.id();
        self.ops.push(op);
        id
    }

    /// `inviter` invites, `courier` admits `newcomer`, all on the current heads.
    fn join(&mut self, inviter: &Person, courier: &Person, newcomer: &Person, role: Role) -> OpId {
        let parents = self.heads();
        self.join_on(parents, inviter, courier, newcomer, role)
    }

    /// [`World::join`] on the given parents.
    fn join_on(
        &mut self,
        parents: Vec<OpId>,
        inviter: &Person,
        courier: &Person,
        newcomer: &Person,
        role: Role,
    ) -> OpId {
        let ticket = Identity::from_seed([200; 32]);
        let invite = self.sign(
            inviter,
            parents,
            OpBody::Invite {
                key: ticket.author().0,
                role,
                expires: 1000,
                uses: 1,
            },
        );
        self.admit(courier, vec![invite], invite, &ticket, newcomer, 10)
    }

    fn admit(
        &mut self,
        courier: &Person,
        parents: Vec<OpId>,
        invite: OpId,
        ticket: &Identity,
        newcomer: &Person,
        at: u64,
    ) -> OpId {
        let r = build::redeem(&self.space, invite, ticket, &newcomer.id, &newcomer.device);
        let body = build::admit_body(&self.space, &r, at, &self.secret.clone(), &mut self.rng)
            .expect("valid device key");
        self.sign(courier, parents, body)
    }

    fn remove(&mut self, by: &Person, parents: Vec<OpId>, member: &Person) -> OpId {
        let m = self.resolve();
        let recipients: Vec<(AuthorId, [u8; 32])> = m
            .members
            .iter()
            .filter(|(a, _)| **a != member.id.author())
            .map(|(a, x)| (*a, x.device))
            .collect();
        let new = EpochSecret::from_bytes([self.ops.len() as u8; 32]);
        let old = self.secret.clone();
        let (rotation, rest) =
            build::rotation(&self.space, &new, &[&old], &recipients, &mut self.rng);
        assert!(rest.is_empty());
        self.secret = new;
        self.sign(
            by,
            parents,
            OpBody::Remove {
                member: member.id.author(),
                rotation: Some(rotation),
                pins: Vec::new(),
            },
        )
    }

    fn set_role(&mut self, by: &Person, parents: Vec<OpId>, member: &Person, role: Role) -> OpId {
        self.sign(
            by,
            parents,
            OpBody::SetRole {
                member: member.id.author(),
                role,
                pins: Vec::new(),
            },
        )
    }
}

#[test]
fn a_space_starts_with_its_owner_and_admits_by_invitation() {
    let (owner, ann, bob) = (person(1), person(2), person(3));
    let mut w = World::new(&owner);
    let m = w.resolve();
    assert_eq!(m.owner, owner.id.author());
    assert_eq!(m.role(&owner.id.author()), Some(Role::Owner));
    assert_eq!(m.members.len(), 1);
    assert_eq!(
        build::open_name(&w.space, &w.secret, &m.name).unwrap(),
        "Ops"
    );
    assert_eq!(m.current, w.secret.key_id());
    assert!(!m.needs_rotation);

    w.join(&owner, &owner, &ann, Role::Member);
    // Ann (a member) carries Bob's admission: the authority is the owner's invitation.
    w.join(&owner, &ann, &bob, Role::Reader);
    let m = w.resolve();
    assert_eq!(m.role(&ann.id.author()), Some(Role::Member));
    assert_eq!(m.role(&bob.id.author()), Some(Role::Reader));
    assert!(m.writes(&ann.id.author()) && !m.writes(&bob.id.author()));
    assert_eq!(m.members[&bob.id.author()].device, bob.device.public());
    assert!(
        m.missing_wraps.is_empty(),
        "every admission wrapped the secret"
    );
    assert!(m.invalid.is_empty());
    assert_eq!(m.invites.len(), 2);
    assert!(m.invites.values().all(|i| i.used == 1 && !i.revoked));
}

#[test]
fn a_member_cannot_invite_and_a_reader_cannot_remove() {
    let (owner, ann, bob, eve) = (person(1), person(2), person(3), person(4));
    let mut w = World::new(&owner);
    w.join(&owner, &owner, &ann, Role::Member);
    w.join(&owner, &owner, &bob, Role::Reader);
    // Ann, a member, invites Eve: the invitation does not count, nor does the admission.
    let admitted = w.join(&ann, &ann, &eve, Role::Member);
    // Bob, a reader, removes Ann.
    let parents = w.heads();
    let removal = w.remove(&bob, parents, &ann);
    let m = w.resolve();
    assert_eq!(m.role(&eve.id.author()), None);
    assert_eq!(m.role(&ann.id.author()), Some(Role::Member));
    assert!(m.invalid.contains(&admitted) && m.invalid.contains(&removal));
    // Nobody can remove or demote the owner, not even itself.
    let parents = w.heads();
    let leave = w.sign(
        &owner,
        parents,
        OpBody::Remove {
            member: owner.id.author(),
            rotation: None,
            pins: Vec::new(),
        },
    );
    assert!(w.resolve().invalid.contains(&leave));
    assert_eq!(w.resolve().role(&owner.id.author()), Some(Role::Owner));
}

#[test]
fn a_removal_rotates_and_a_leave_asks_for_a_rotation() {
    let (owner, ann, bob) = (person(1), person(2), person(3));
    let mut w = World::new(&owner);
    let root = w.secret.key_id();
    w.join(&owner, &owner, &ann, Role::Member);
    w.join(&owner, &owner, &bob, Role::Member);
    let parents = w.heads();
    w.remove(&owner, parents, &ann);
    let m = w.resolve();
    assert_eq!(m.role(&ann.id.author()), None);
    assert_ne!(m.current, root);
    assert_eq!(m.current, w.secret.key_id());
    assert_eq!(m.epochs.len(), 2);
    assert!(!m.needs_rotation);
    assert!(m.missing_wraps.is_empty(), "bob got the new secret");
    // The new secret opens the old one.
    let op = w.ops.last().unwrap().op().clone();
    let rotation = op.body.rotation().unwrap();
    let old = build::open_seals(&w.space, rotation, &w.secret);
    assert_eq!(old.len(), 1);
    assert_eq!(old[0].key_id(), root);
    // Bob leaves without rotating: the space asks an admin to rotate.
    let parents = w.heads();
    w.sign(
        &bob,
        parents,
        OpBody::Remove {
            member: bob.id.author(),
            rotation: None,
            pins: Vec::new(),
        },
    );
    let m = w.resolve();
    assert_eq!(m.role(&bob.id.author()), None);
    assert!(m.needs_rotation);
    assert!(m.exposed, "the leaver held the current secret");
}

#[test]
fn two_admins_removing_each_other_leave_the_senior_one() {
    let owner = person(1);
    for ann_first in [true, false] {
        let (ann, bob) = if ann_first {
            (person(2), person(3))
        } else {
            (person(3), person(2))
        };
        mutual_removal(&owner, &ann, &bob);
    }
}

/// Ann joins before Bob; both are admins and remove each other concurrently.
fn mutual_removal(owner: &Person, ann: &Person, bob: &Person) {
    let mut w = World::new(owner);
    w.join(owner, owner, ann, Role::Admin);
    w.join(owner, owner, bob, Role::Admin);
    let fork = w.heads();
    let ann_removes_bob = w.remove(ann, fork.clone(), bob);
    let bob_removes_ann = w.remove(bob, fork, ann);
    let m = w.resolve();
    assert_eq!(
        m.role(&ann.id.author()),
        Some(Role::Admin),
        "ann joined first"
    );
    assert_eq!(m.role(&bob.id.author()), None);
    assert!(m.invalid.contains(&bob_removes_ann));
    assert!(!m.invalid.contains(&ann_removes_bob));
    // Bob's removal made an epoch that is void; Ann's is current.
    assert_eq!(m.epochs.len(), 2);
    assert_eq!(m.current, m.epochs[1].key_id);
}

#[test]
fn a_removed_admins_concurrent_operations_are_void() {
    let (owner, ann, bob, eve) = (person(1), person(2), person(3), person(4));
    let mut w = World::new(&owner);
    w.join(&owner, &owner, &ann, Role::Admin);
    w.join(&owner, &owner, &bob, Role::Member);
    let fork = w.heads();
    // The owner removes Ann while Ann, not knowing, promotes Bob and admits Eve.
    w.remove(&owner, fork.clone(), &ann);
    let promote = w.set_role(&ann, fork.clone(), &bob, Role::Admin);
    let eve_admitted = w.join_on(fork, &ann, &ann, &eve, Role::Member);
    let m = w.resolve();
    assert_eq!(m.role(&ann.id.author()), None);
    assert_eq!(m.role(&bob.id.author()), Some(Role::Member));
    assert_eq!(m.role(&eve.id.author()), None);
    assert!(m.invalid.contains(&promote) && m.invalid.contains(&eve_admitted));
    // The voided admission had a wrap of an old secret: Eve may hold it.
    assert!(m.needs_rotation);
}

#[test]
fn a_readmission_after_a_removal_stands_and_a_concurrent_one_loses() {
    let (owner, ann, bob) = (person(1), person(2), person(3));
    let mut w = World::new(&owner);
    w.join(&owner, &owner, &ann, Role::Member);
    w.join(&owner, &owner, &bob, Role::Admin);
    let fork = w.heads();
    w.remove(&owner, fork.clone(), &ann);
    // Bob, concurrently, invites and admits Ann again: the removal wins.
    let ticket = Identity::from_seed([201; 32]);
    let invite = w.sign(
        &bob,
        fork,
        OpBody::Invite {
            key: ticket.author().0,
            role: Role::Member,
            expires: 1000,
            uses: 1,
        },
    );
    w.admit(&bob, vec![invite], invite, &ticket, &ann, 10);
    assert_eq!(w.resolve().role(&ann.id.author()), None);
    // Later, having seen the removal, the owner admits Ann again: that stands, and her own later
    // operations count.
    w.join(&owner, &owner, &ann, Role::Member);
    assert_eq!(w.resolve().role(&ann.id.author()), Some(Role::Member));
    let parents = w.heads();
    let share = w.sign(
        &ann,
        parents,
        OpBody::Share {
            key_id: w.secret.key_id(),
            wraps: Vec::new(),
        },
    );
    assert!(!w.resolve().invalid.contains(&share));
}

#[test]
fn invitations_expire_run_out_and_can_be_revoked() {
    let (owner, ann, bob, carl, dan) = (person(1), person(2), person(3), person(4), person(5));
    let mut w = World::new(&owner);
    let ticket = Identity::from_seed([202; 32]);
    let parents = w.heads();
    let invite = w.sign(
        &owner,
        parents,
        OpBody::Invite {
            key: ticket.author().0,
            role: Role::Member,
            expires: 100,
            uses: 1,
        },
    );
    // Too late.
    let late = w.admit(&owner, vec![invite], invite, &ticket, &ann, 101);
    assert!(w.resolve().invalid.contains(&late));
    // Two concurrent admissions of a one-use invitation: exactly one stands.
    let a = w.admit(&owner, vec![invite], invite, &ticket, &bob, 50);
    let b = w.admit(&owner, vec![invite], invite, &ticket, &carl, 50);
    let m = w.resolve();
    assert_eq!(
        [m.role(&bob.id.author()), m.role(&carl.id.author())]
            .iter()
            .filter(|r| r.is_some())
            .count(),
        1
    );
    assert_eq!(m.invalid.contains(&a), !m.invalid.contains(&b));
    assert!(m.needs_rotation, "the refused newcomer got a secret");
    assert_eq!(m.invites[&invite].used, 1);
    // A revocation voids an admission it is concurrent with, not one it follows.
    let ticket2 = Identity::from_seed([203; 32]);
    let parents = w.heads();
    let invite2 = w.sign(
        &owner,
        parents,
        OpBody::Invite {
            key: ticket2.author().0,
            role: Role::Member,
            expires: 100,
            uses: 5,
        },
    );
    let dan_in = w.admit(&owner, vec![invite2], invite2, &ticket2, &dan, 50);
    let revoke = w.sign(&owner, vec![invite2], OpBody::Revoke { invite: invite2 });
    let m = w.resolve();
    assert!(m.invalid.contains(&dan_in) && !m.invalid.contains(&revoke));
    assert!(m.invites[&invite2].revoked);
    // A forged redeem (not signed by the ticket's key) does not count.
    let forged_ticket = Identity::from_seed([204; 32]);
    let parents = w.heads();
    let invite3 = w.sign(
        &owner,
        parents,
        OpBody::Invite {
            key: Identity::from_seed([205; 32]).author().0,
            role: Role::Member,
            expires: 100,
            uses: 5,
        },
    );
    let forged = w.admit(&owner, vec![invite3], invite3, &forged_ticket, &dan, 50);
    assert!(w.resolve().invalid.contains(&forged));
}

#[test]
fn operations_round_trip_and_refuse_tampering() {
    let owner = person(1);
    let mut w = World::new(&owner);
    w.join(&owner, &owner, &person(2), Role::Member);
    for op in &w.ops {
        let back = Op::verify(op.bytes()).expect("verifies");
        assert_eq!(&back, op);
    }
    let bytes = w.ops[1].bytes().to_vec();
    // Every single-bit flip is refused, one way or another.
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x01;
        assert!(Op::verify(&b).is_err(), "flip at byte {i} accepted");
    }
    // A creation whose space id is not derived from its author and salt.
    let mut create = w.ops[0].op().clone();
    create.space = SpaceId([9; 16]);
    assert!(matches!(
        Op::decode(&create.encode()),
        Err(OpError::Invalid(_))
    ));
    // Another space's operation does not resolve with this one.
    assert!(matches!(
        resolve(SpaceId([9; 16]), &w.ops),
        Err(ResolveError::OtherSpace(_))
    ));
    // A missing parent is reported.
    assert!(matches!(
        resolve(w.space, &w.ops[1..]),
        Err(ResolveError::MissingParent { .. })
    ));
}

/// A random history: `replicas` people act on their own view of the operations and now and then
/// merge another's view, so operations are concurrent in every way the generator can reach.
fn random_history(seed: u64, steps: usize) -> (SpaceId, Vec<VerifiedOp>, Vec<Vec<OpId>>) {
    use rand::RngExt;
    let people: Vec<Person> = (1..=6).map(person).collect();
    let mut w = World::new(&people[0]);
    let mut pick = Rng::seed_from_u64(seed);
    let genesis = w.ops[0].id();
    let mut views: Vec<Vec<OpId>> = vec![vec![genesis]; people.len()];
    let roles = [Role::Reader, Role::Member, Role::Admin];
    let view_of = |w: &World, view: &[OpId]| -> Vec<VerifiedOp> {
        w.ops
            .iter()
            .filter(|o| view.contains(&o.id()))
            .cloned()
            .collect()
    };
    for step in 0..steps {
        // Mostly someone who is a member in their own view acts; now and then anyone.
        let acting: Vec<usize> = (0..people.len())
            .filter(|&p| {
                resolve(w.space, &view_of(&w, &views[p]))
                    .is_ok_and(|m| m.role(&people[p].id.author()).is_some())
            })
            .collect();
        let a = if pick.random_bool(0.85) {
            acting[pick.random_range(0..acting.len())]
        } else {
            pick.random_range(0..people.len())
        };
        if pick.random_bool(0.35) {
            let b = pick.random_range(0..people.len());
            let theirs = views[b].clone();
            for id in theirs {
                if !views[a].contains(&id) {
                    views[a].push(id);
                }
            }
            continue;
        }
        let view = view_of(&w, &views[a]);
        let m = resolve(w.space, &view).expect("a view is causally closed");
        let parents = m.heads.clone();
        let target = &people[pick.random_range(0..people.len())];
        let me = &people[a];
        let before = w.ops.len();
        match pick.random_range(0..6) {
            0 => {
                let ticket = Identity::from_seed([(step % 200) as u8 + 20; 32]);
                let invite = w.sign(
                    me,
                    parents,
                    OpBody::Invite {
                        key: ticket.author().0,
                        role: roles[pick.random_range(0..3)],
                        expires: pick.random_range(0..20),
                        uses: pick.random_range(1..3),
                    },
                );
                let at = pick.random_range(0..20);
                w.admit(me, vec![invite], invite, &ticket, target, at);
            }
            1 if target.id.author() != me.id.author() => {
                w.remove(me, parents, target);
            }
            2 => {
                w.set_role(me, parents, target, roles[pick.random_range(0..3)]);
            }
            3 => {
                w.sign(
                    me,
                    parents,
                    OpBody::Remove {
                        member: me.id.author(),
                        rotation: None,
                        pins: Vec::new(),
                    },
                );
            }
            4 => {
                let name = build::seal_name(&w.space, &w.secret.clone(), "renamed", &mut w.rng);
                w.sign(me, parents, OpBody::Rename { name });
            }
            _ => {
                // An invitation revoked by whoever acts next on it.
                let invites: Vec<OpId> = m.invites.keys().copied().collect();
                if let Some(invite) = invites.first() {
                    w.sign(me, parents, OpBody::Revoke { invite: *invite });
                }
            }
        }
        for op in &w.ops[before..] {
            views[a].push(op.id());
        }
    }
    (w.space, w.ops, views)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// Whatever order a node receives a history in, it holds it whole and resolves it exactly as
    /// every other node does; and the result keeps the rule's invariants.
    #[test]
    fn any_arrival_order_resolves_the_same(seed in 0u64..u64::MAX, steps in 5usize..40, orders in 2usize..5) {
        use rand::seq::SliceRandom;
        let (space, ops, views) = random_history(seed, steps);
        let reference = resolve(space, &ops).expect("the whole history is causally closed");
        let mut shuffle = Rng::seed_from_u64(seed ^ 0x5eed);
        for _ in 0..orders {
            let mut order = ops.clone();
            order.shuffle(&mut shuffle);
            let mut log = OpLog::new(space);
            for op in order {
                log.insert(op);
            }
            proptest::prop_assert_eq!(log.len(), (ops.len(), 0));
            proptest::prop_assert_eq!(&log.resolve().unwrap(), &reference);
        }
        // Each partial view resolves the same whatever the order too.
        for view in views {
            let mut subset: Vec<&VerifiedOp> = ops.iter().filter(|o| view.contains(&o.id())).collect();
            let a = resolve(space, subset.iter().copied()).unwrap();
            subset.reverse();
            proptest::prop_assert_eq!(&resolve(space, subset.iter().copied()).unwrap(), &a);
        }
        // Invariants.
        proptest::prop_assert_eq!(reference.role(&reference.owner), Some(Role::Owner));
        for (author, member) in &reference.members {
            proptest::prop_assert!(member.role != Role::Owner || *author == reference.owner);
            proptest::prop_assert!(!reference.invalid.contains(&member.since));
        }
        for invite in reference.invites.values() {
            proptest::prop_assert!(invite.used <= invite.uses);
        }
        proptest::prop_assert!(reference.epochs.iter().any(|e| e.key_id == reference.current));
    }
}

#[test]
fn a_removal_whites_out_what_it_did_not_pin_unless_someone_built_on_it() {
    use crate::contribution::DocKind;
    use crate::ids::DocId;
    use automerge::ChangeHash;
    let (owner, ann, bob) = (person(1), person(2), person(3));
    let mut w = World::new(&owner);
    w.join(&owner, &owner, &ann, Role::Member);
    w.join(&owner, &owner, &bob, Role::Member);
    let doc = DocId([7; 16]);
    let h = |n: u8| ChangeHash([n; 32]);
    let info = |n: u8, deps: &[u8], who: &Person| ChangeInfo {
        hash: h(n),
        deps: deps.iter().map(|d| h(*d)).collect(),
        author: who.id.author(),
    };
    // Ann writes 1 and 2; the owner saw 2 and pins it. Ann, concurrently, writes 3 and 6; Bob
    // builds 4 on 3 and 5 on 2; Ann builds 7 on 6.
    let changes = vec![
        info(1, &[], &ann),
        info(2, &[1], &ann),
        info(3, &[2], &ann),
        info(4, &[3], &bob),
        info(5, &[2], &bob),
        info(6, &[2], &ann),
        info(7, &[6], &ann),
    ];
    // Before the removal, nothing is whited out.
    assert!(whiteout(&w.resolve(), &doc, DocKind::Idea, &changes).is_empty());
    let parents = w.heads();
    let m = w.resolve();
    let recipients: Vec<(AuthorId, [u8; 32])> = m
        .members
        .iter()
        .filter(|(a, _)| **a != ann.id.author())
        .map(|(a, x)| (*a, x.device))
        .collect();
    let new = EpochSecret::from_bytes([77; 32]);
    let (rotation, _) = build::rotation(
        &w.space,
        &new,
        &[&w.secret.clone()],
        &recipients,
        &mut w.rng,
    );
    w.sign(
        &owner,
        parents,
        OpBody::Remove {
            member: ann.id.author(),
            rotation: Some(rotation),
            pins: vec![Pin {
                doc,
                heads: vec![[2; 32]],
            }],
        },
    );
    let m = w.resolve();
    assert_eq!(
        m.write_right(&ann.id.author(), DocKind::Idea, &doc),
        WriteRight::Pinned(&[[2; 32]])
    );
    assert_eq!(
        m.write_right(&ann.id.author(), DocKind::Idea, &DocId([8; 16])),
        WriteRight::Pinned(&[])
    );
    assert_eq!(
        m.write_right(&person(9).id.author(), DocKind::Idea, &doc),
        WriteRight::No
    );
    // 3 stays because Bob built on it; 6 and 7 nobody entitled built on.
    let expected: BTreeSet<ChangeHash> = [h(6), h(7)].into();
    assert_eq!(whiteout(&m, &doc, DocKind::Idea, &changes), expected);
    // The same whatever order the changes are listed in.
    let mut reversed = changes.clone();
    reversed.reverse();
    assert_eq!(whiteout(&m, &doc, DocKind::Idea, &reversed), expected);
    // A reader writes its own profile, not ideas.
    let dan = person(4);
    w.join(&owner, &owner, &dan, Role::Reader);
    let m = w.resolve();
    assert_eq!(
        m.write_right(&dan.id.author(), DocKind::Idea, &doc),
        WriteRight::No
    );
    assert_eq!(
        m.write_right(&dan.id.author(), DocKind::Profile, &doc),
        WriteRight::Yes
    );
}

/// Findings of the review of the first version of the rule, kept as regressions.
mod review {
    use super::*;
    use crate::keys::KeyId;

    fn invite(
        w: &mut World,
        by: &Person,
        parents: Vec<OpId>,
        ticket: &Identity,
        role: Role,
        uses: u64,
    ) -> OpId {
        w.sign(
            by,
            parents,
            OpBody::Invite {
                key: ticket.author().0,
                role,
                expires: 1000,
                uses,
            },
        )
    }

    #[test]
    fn an_admission_after_a_revocation_does_not_count() {
        let (owner, ann, bob) = (person(1), person(2), person(3));
        let mut w = World::new(&owner);
        w.join(&owner, &owner, &ann, Role::Member);
        let t = Identity::from_seed([210; 32]);
        let p = w.heads();
        let inv = invite(&mut w, &owner, p, &t, Role::Admin, 5);
        let rev = w.sign(&owner, vec![inv], OpBody::Revoke { invite: inv });
        let adm = w.admit(&ann, vec![rev], inv, &t, &bob, 10);
        let m = w.resolve();
        assert!(m.invites[&inv].revoked);
        assert!(m.invalid.contains(&adm));
        assert_eq!(m.role(&bob.id.author()), None);
    }

    #[test]
    fn a_replayed_admission_changes_nothing() {
        let (owner, ann, bob) = (person(1), person(2), person(3));
        let mut w = World::new(&owner);
        w.join(&owner, &owner, &ann, Role::Reader);
        let t = Identity::from_seed([211; 32]);
        let p = w.heads();
        let inv = invite(&mut w, &owner, p, &t, Role::Admin, 2);
        let first = w.admit(&owner, vec![inv], inv, &t, &bob, 10);
        let OpBody::Admit { redeem, proof, .. } = w
            .ops
            .iter()
            .find(|o| o.id() == first)
            .unwrap()
            .op()
            .body
            .clone()
        else {
            panic!()
        };
        let p = w.heads();
        w.set_role(&owner, p, &bob, Role::Reader);
        let replay_body = |w: &mut World| {
            let secret = w.secret.clone();
            let wrap = crate::keys::wrap(
                &secret,
                &w.space,
                &bob.id.author(),
                &bob.device.public(),
                &mut w.rng,
            )
            .unwrap();
            OpBody::Admit {
                invite: inv,
                member: bob.id.author(),
                device: bob.device.public(),
                at: 10,
                redeem,
                proof,
                key_id: secret.key_id(),
                wrap,
            }
        };
        // Bob, demoted, replays his own admission: he stays a reader.
        let body = replay_body(&mut w);
        let p = w.heads();
        let replay = w.sign(&bob, p, body);
        let m = w.resolve();
        assert!(m.invalid.contains(&replay));
        assert_eq!(m.role(&bob.id.author()), Some(Role::Reader));
        // Removed, he cannot be brought back by a replay either, not even by a member.
        let p = w.heads();
        w.remove(&owner, p, &bob);
        let body = replay_body(&mut w);
        let p = w.heads();
        let again = w.sign(&ann, p, body);
        let m = w.resolve();
        assert!(m.invalid.contains(&again));
        assert_eq!(m.role(&bob.id.author()), None);
    }

    #[test]
    fn a_member_who_leaves_cannot_choose_the_next_key() {
        let (owner, ann) = (person(1), person(2));
        let mut w = World::new(&owner);
        w.join(&owner, &owner, &ann, Role::Reader);
        let evil = EpochSecret::from_bytes([77; 32]);
        let old = w.secret.clone();
        let owner_device = (owner.id.author(), owner.device.public());
        let (rotation, _) = build::rotation(&w.space, &evil, &[&old], &[owner_device], &mut w.rng);
        let p = w.heads();
        let leave = Op::sign(
            &ann.id,
            w.space,
            p,
            OpBody::Remove {
                member: ann.id.author(),
                rotation: Some(rotation),
                pins: vec![],
            },
        );
        assert!(matches!(leave, Err(OpError::Invalid(_))));
    }

    #[test]
    fn the_op_log_stays_within_its_bound() {
        let owner = person(1);
        let w = World::new(&owner);
        let mut log = OpLog::new(w.space);
        let genesis = w.ops[0].clone();
        log.insert(genesis.clone());
        let share = |parent: OpId, i: usize| {
            let mut k = [0u8; 32];
            k[..8].copy_from_slice(&(i as u64).to_le_bytes());
            Op::sign(
                &owner.id,
                w.space,
                vec![parent],
                OpBody::Share {
                    key_id: KeyId(k),
                    wraps: vec![],
                },
            )
            .unwrap()
        };
        let mut parent = genesis.id();
        for i in 0..MAX_OPS - 2 {
            let op = share(parent, i);
            parent = op.id();
            assert!(matches!(log.insert(op), Inserted::Added(_)));
        }
        let missing = share(parent, MAX_OPS);
        for j in 0..10 {
            let r = log.insert(share(missing.id(), MAX_OPS + 1 + j));
            assert!(r == Inserted::Pending || r == Inserted::Refused("too many operations"));
        }
        log.insert(missing);
        let (held, waiting) = log.len();
        assert!(held + waiting <= MAX_OPS, "{held} + {waiting}");
        assert!(log.resolve().is_ok());
    }

    #[test]
    fn signing_refuses_what_receivers_refuse() {
        let owner = person(1);
        let w = World::new(&owner);
        let g = w.ops[0].id();
        let parents: Vec<OpId> = (0..17u8)
            .map(|i| {
                Op::sign(
                    &owner.id,
                    w.space,
                    vec![g],
                    OpBody::Share {
                        key_id: KeyId([i; 32]),
                        wraps: vec![],
                    },
                )
                .unwrap()
                .id()
            })
            .collect();
        assert!(Op::sign(
            &owner.id,
            w.space,
            parents,
            OpBody::Share {
                key_id: KeyId([0; 32]),
                wraps: vec![]
            }
        )
        .is_err());
        // The most pins a removal may carry fit in an operation.
        let pins: Vec<Pin> = (0..MAX_PINS as u16)
            .map(|d| {
                let mut doc = [0u8; 16];
                doc[..2].copy_from_slice(&d.to_be_bytes());
                Pin {
                    doc: crate::ids::DocId(doc),
                    heads: (0..MAX_PIN_HEADS as u8).map(|h| [h; 32]).collect(),
                }
            })
            .collect();
        let op = Op::sign(
            &owner.id,
            w.space,
            vec![g],
            OpBody::SetRole {
                member: person(2).id.author(),
                role: Role::Reader,
                pins,
            },
        )
        .unwrap();
        assert!(op.bytes().len() <= MAX_OP_BYTES);
    }

    #[test]
    fn a_demotions_pins_survive_a_later_removal_of_the_reader() {
        let (owner, ann) = (person(1), person(2));
        let mut w = World::new(&owner);
        w.join(&owner, &owner, &ann, Role::Member);
        let doc = crate::ids::DocId([9; 16]);
        let p = w.heads();
        w.sign(
            &owner,
            p,
            OpBody::SetRole {
                member: ann.id.author(),
                role: Role::Reader,
                pins: vec![Pin {
                    doc,
                    heads: vec![[1; 32]],
                }],
            },
        );
        assert_eq!(w.resolve().pins[&ann.id.author()].len(), 1);
        let p = w.heads();
        w.remove(&owner, p, &ann);
        assert_eq!(w.resolve().pins[&ann.id.author()].len(), 1);
    }

    /// The costliest shape the review found: one member admitted and removed over and over
    /// (resolving 10,000 such operations took minutes). Only the first MAX_TARGET_OPS operations
    /// on a member's role count.
    #[test]
    fn a_chain_of_readmissions_resolves_in_bounded_time() {
        let (owner, bob) = (person(1), person(3));
        let mut w = World::new(&owner);
        let mut parent = w.heads()[0];
        for i in 0..1_500u32 {
            let t = Identity::from_seed([(i % 250) as u8; 32]);
            let inv = Op::sign(
                &owner.id,
                w.space,
                vec![parent],
                OpBody::Invite {
                    key: t.author().0,
                    role: Role::Member,
                    expires: u64::MAX,
                    uses: 1,
                },
            )
            .unwrap();
            let inv_id = inv.id();
            w.ops.push(inv);
            let a = w.admit(&owner, vec![inv_id], inv_id, &t, &bob, 0);
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_le_bytes());
            let rm = Op::sign(
                &owner.id,
                w.space,
                vec![a],
                OpBody::Remove {
                    member: bob.id.author(),
                    rotation: Some(Rotation {
                        key_id: KeyId(k),
                        seals: vec![],
                        wraps: vec![],
                    }),
                    pins: vec![],
                },
            )
            .unwrap();
            parent = rm.id();
            w.ops.push(rm);
        }
        let m = w.resolve();
        assert_eq!(m.role(&bob.id.author()), None);
        // Operations past the cap on Bob's role do not count (the bench times this shape).
        let counted = w
            .ops
            .iter()
            .filter(|o| {
                o.op().body.target() == Some(bob.id.author()) && !m.invalid.contains(&o.id())
            })
            .count();
        assert_eq!(counted, MAX_TARGET_OPS);
    }
}

/// Three people's views of one space, driven only through [`PrivateSpace`]: what a node does.
mod lifecycle {
    use super::*;
    use crate::contribution::{DocKind, Rejection};
    use crate::ids::DocId;
    use crate::sealed::Envelope;

    struct Node {
        id: Identity,
        device: DeviceKey,
        view: Option<PrivateSpace>,
    }

    fn node(n: u8) -> Node {
        let id = Identity::from_seed([n; 32]);
        let device = DeviceKey::for_identity(&id);
        Node {
            id,
            device,
            view: None,
        }
    }

    impl Node {
        fn view(&self) -> &PrivateSpace {
            self.view.as_ref().expect("joined")
        }

        /// Takes in operations (as gossip or sync would deliver them).
        fn receive(&mut self, ops: &[VerifiedOp]) {
            let me = self.id.author();
            let view = self.view.as_mut().expect("joined");
            for op in ops {
                view.insert(Op::verify(op.bytes()).unwrap(), &me, &self.device)
                    .unwrap();
            }
        }

        /// Joins with the operations a member handed over.
        fn join(&mut self, space: SpaceId, ops: Vec<VerifiedOp>) {
            self.view = Some(PrivateSpace::from_ops(space, ops, &self.id, &self.device).unwrap());
        }

        fn all_ops(&self) -> Vec<VerifiedOp> {
            self.view().log().ops().cloned().collect()
        }

        /// Seals a one-line "change" (any bytes: the rule checks come later) as a note.
        fn post(&self, text: &str) -> Vec<u8> {
            let (key_id, cipher) = self.view().current().expect("holds the current key");
            let space = self.view().space();
            let salt = [7u8; 16];
            let doc = DocId::idea(&space, &self.id.author(), &salt);
            let mut d = crate::automerge::AutoCommit::new()
                .with_actor(crate::idea::actor_for(&self.id.author(), &[1; 16]));
            let draft = crate::idea::IdeaDraft {
                title: text.into(),
                body: String::new(),
                tags: vec![],
            };
            let change =
                crate::idea::create_idea(&mut d, &draft, &self.id.author(), &salt, 1).unwrap();
            Envelope::seal(
                &self.id,
                &space,
                key_id,
                cipher,
                &doc,
                DocKind::Idea,
                change.raw_bytes(),
                [9; 24],
            )
            .encode()
        }

        /// Opens a sealed contribution with whatever key this node holds.
        fn read(&self, bytes: &[u8]) -> Result<String, Rejection> {
            let e = Envelope::decode(bytes)?;
            let cipher = self.view().cipher(&e.key_id).ok_or(Rejection::UnknownKey)?;
            let opened = e.verify_and_open(&self.view().space(), cipher)?;
            let mut doc = crate::automerge::AutoCommit::new();
            doc.apply_changes([opened.change]).unwrap();
            Ok(crate::idea::read_idea(&doc, opened.space, opened.doc)
                .map(|i| i.title)
                .unwrap_or_default())
        }
    }

    #[test]
    fn invite_join_write_remove_and_rotate() {
        let mut rng = Rng::from_seed([42; 32]);
        let (mut owner, mut ann, mut bob) = (node(1), node(2), node(3));
        let (view, _) = PrivateSpace::create(&owner.id, &owner.device, "Ops", &mut rng).unwrap();
        let space = view.space();
        owner.view = Some(view);
        assert_eq!(owner.view().name().as_deref(), Some("Ops"));
        assert!(owner.view().locator().is_some());
        assert_eq!(owner.view().topics().len(), 1);

        // Owner invites Ann; Ann redeems; the owner checks and admits her.
        let (invite, ticket_secret) = owner
            .view()
            .invite(&owner.id, Role::Member, 1_000, 1, &mut rng)
            .unwrap();
        owner.receive(std::slice::from_ref(&invite));
        let ticket_key = Identity::from_seed(ticket_secret);
        let redeem = build::redeem(&space, invite.id(), &ticket_key, &ann.id, &ann.device);
        assert_eq!(
            owner.view().check_redeem(&redeem, 1_001),
            Err(RedeemRefusal::Expired)
        );
        assert_eq!(owner.view().check_redeem(&redeem, 10), Ok(Role::Member));
        let admit = owner
            .view()
            .admit(&owner.id, &redeem, 10, &mut rng)
            .unwrap();
        owner.receive(&[admit]);
        assert_eq!(
            owner.view().check_redeem(&redeem, 10),
            Err(RedeemRefusal::AlreadyMember)
        );
        ann.join(space, owner.all_ops());
        assert_eq!(
            ann.view().membership().role(&ann.id.author()),
            Some(Role::Member)
        );
        assert_eq!(
            ann.view().name().as_deref(),
            Some("Ops"),
            "the newcomer reads the name"
        );
        assert_eq!(ann.view().topics(), owner.view().topics());
        assert_eq!(ann.view().locator(), owner.view().locator());

        // A second redeem of the one-use ticket is refused (Bob copied it).
        let bob_redeem = build::redeem(&space, invite.id(), &ticket_key, &bob.id, &bob.device);
        assert_eq!(
            owner.view().check_redeem(&bob_redeem, 10),
            Err(RedeemRefusal::UsedUp)
        );

        // Ann invites nobody (a member does not invite), but carries Bob's admission.
        assert!(ann
            .view()
            .invite(&ann.id, Role::Member, 1_000, 1, &mut rng)
            .is_err());
        let (invite2, secret2) = owner
            .view()
            .invite(&owner.id, Role::Reader, 1_000, 1, &mut rng)
            .unwrap();
        owner.receive(std::slice::from_ref(&invite2));
        ann.receive(std::slice::from_ref(&invite2));
        let bob_redeem = build::redeem(
            &space,
            invite2.id(),
            &Identity::from_seed(secret2),
            &bob.id,
            &bob.device,
        );
        assert_eq!(ann.view().check_redeem(&bob_redeem, 10), Ok(Role::Reader));
        let admit = ann
            .view()
            .admit(&ann.id, &bob_redeem, 10, &mut rng)
            .unwrap();
        ann.receive(std::slice::from_ref(&admit));
        owner.receive(&[admit]);
        bob.join(space, ann.all_ops());

        // Everyone reads what Ann writes.
        let before = ann.post("before");
        assert_eq!(owner.read(&before).unwrap(), "before");
        assert_eq!(bob.read(&before).unwrap(), "before");

        // The owner removes Ann: a new epoch that Bob holds and Ann does not.
        let removal = owner
            .view()
            .remove(&owner.id, &ann.id.author(), Vec::new(), &mut rng)
            .unwrap();
        owner.receive(&removal);
        bob.receive(&removal);
        ann.receive(&removal);
        assert_eq!(bob.view().membership().role(&ann.id.author()), None);
        assert_ne!(
            bob.view().topics()[0],
            ann.view().topics().last().cloned().unwrap_or_default()
        );
        let after = owner.post("after");
        assert_eq!(bob.read(&after).unwrap(), "after");
        assert_eq!(
            ann.read(&after),
            Err(Rejection::UnknownKey),
            "Ann cannot read on"
        );
        assert!(
            ann.view().current().is_none(),
            "nor write under the new key"
        );
        // Bob still reads what was written before, and so does a later joiner.
        assert_eq!(bob.read(&before).unwrap(), "before");

        // Bob leaves: the space asks the owner to rotate, and the owner does.
        let leave = bob.view().leave(&bob.id, Vec::new()).unwrap();
        owner.receive(&[leave]);
        assert!(owner.view().membership().needs_rotation);
        let rotation = owner.view().rotate(&owner.id, &mut rng).unwrap();
        owner.receive(&rotation);
        assert!(!owner.view().membership().needs_rotation);
        assert_eq!(owner.view().membership().members.len(), 1);

        // The owner renames the space; a renamed space reads the new name.
        let rename = owner
            .view()
            .rename(&owner.id, "Ops (archive)", &mut rng)
            .unwrap();
        owner.receive(&[rename]);
        assert_eq!(owner.view().name().as_deref(), Some("Ops (archive)"));
    }

    #[test]
    fn a_member_admitted_concurrently_with_a_rotation_gets_the_key_by_a_share() {
        let mut rng = Rng::from_seed([43; 32]);
        let (mut owner, mut ann, mut carl) = (node(1), node(2), node(4));
        let (view, _) = PrivateSpace::create(&owner.id, &owner.device, "Ops", &mut rng).unwrap();
        let space = view.space();
        owner.view = Some(view);
        let (invite, secret) = owner
            .view()
            .invite(&owner.id, Role::Admin, 1_000, 5, &mut rng)
            .unwrap();
        owner.receive(std::slice::from_ref(&invite));
        let ticket = Identity::from_seed(secret);
        let r = build::redeem(&space, invite.id(), &ticket, &ann.id, &ann.device);
        let admit = owner.view().admit(&owner.id, &r, 1, &mut rng).unwrap();
        owner.receive(&[admit]);
        ann.join(space, owner.all_ops());
        // Concurrently: the owner rotates; Ann admits Carl under the old key.
        let rotation = owner.view().rotate(&owner.id, &mut rng).unwrap();
        let r = build::redeem(&space, invite.id(), &ticket, &carl.id, &carl.device);
        let admit = ann.view().admit(&ann.id, &r, 1, &mut rng).unwrap();
        owner.receive(&rotation);
        owner.receive(std::slice::from_ref(&admit));
        ann.receive(&rotation);
        ann.receive(&[admit]);
        let m = owner.view().membership();
        assert_eq!(m.missing_wraps, vec![carl.id.author()]);
        // Whoever holds the current key shares it.
        let share = ann
            .view()
            .share_missing(&ann.id, &mut rng)
            .unwrap()
            .unwrap();
        owner.receive(std::slice::from_ref(&share));
        ann.receive(&[share]);
        assert!(owner.view().membership().missing_wraps.is_empty());
        carl.join(space, ann.all_ops());
        assert!(
            carl.view().current().is_some(),
            "Carl holds the current key"
        );
        let note = owner.post("hello Carl");
        assert_eq!(carl.read(&note).unwrap(), "hello Carl");
    }
}
