//! Property tests of the contribution envelope and the idea document: the encoding round-trips
//! and is the only accepted encoding, every tampering is refused with the documented code,
//! untrusted bytes never panic, batch verification agrees with one-by-one verification, the
//! idea write rules (only the creator creates; later changes leave protected fields alone; no one
//! writes under another author's key) hold, and replicas that receive the same changes in any
//! order, batching and duplication converge.
//!
//! Case counts are kept moderate so that the file runs in a few seconds in a debug build.

use agora_protocol::automerge::transaction::{CommitOptions, Transactable};
use agora_protocol::automerge::{ActorId, AutoCommit, Change, ObjType, ReadDoc, ROOT};
use agora_protocol::contribution::{signing_message, verify_batch};
use agora_protocol::idea::{self, actor_for, IdeaDraft, SchemaError, Status, Vote};
use agora_protocol::limits::{MAX_CHANGE_BYTES, MAX_CONTRIBUTION_BYTES};
use agora_protocol::{AuthorId, Contribution, DocId, DocKind, Identity, Rejection, SpaceId};
use ciborium::Value;
use proptest::prelude::*;
use std::collections::{BTreeSet, HashMap};
use std::sync::OnceLock;

const SPACE: SpaceId = SpaceId([0x40; 16]);
const SALT: [u8; 16] = [0x60; 16];
const T0: i64 = 1_700_000_000_000;

/// The id of the idea `author` creates with [`SALT`] in [`SPACE`].
fn idea_doc(author: &AuthorId) -> DocId {
    DocId::idea(&SPACE, author, &SALT)
}

fn ident(i: u8) -> Identity {
    Identity::from_seed([i.wrapping_mul(37).wrapping_add(1); 32])
}

fn draft(title: &str) -> IdeaDraft {
    IdeaDraft {
        title: title.into(),
        body: "body text".into(),
        tags: vec!["t".into()],
    }
}

/// The creation of `author`'s idea [`idea_doc`] made on a document whose actor is `actor`.
fn change_with_actor(actor: ActorId, author: &AuthorId) -> Change {
    let mut d = AutoCommit::new().with_actor(actor);
    idea::create_idea(&mut d, &draft("an idea"), author, &SALT, T0).unwrap()
}

/// Valid contributions of several kinds and authors, built once.
fn pool() -> &'static [Contribution] {
    static POOL: OnceLock<Vec<Contribution>> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut out = Vec::new();
        for i in 0..3u8 {
            let id = ident(i);
            let author = id.author();
            let mut d = AutoCommit::new().with_actor(actor_for(&author, &[i; 16]));
            let salt = [i; 16];
            let doc = DocId::idea(&SPACE, &author, &salt);
            let c = idea::create_idea(&mut d, &draft(&format!("idea {i}")), &author, &salt, T0)
                .unwrap();
            out.push(Contribution::sign(&id, SPACE, doc, DocKind::Idea, &c));
            let c = idea::add_comment(&mut d, &author, "a comment", T0 + 1).unwrap();
            out.push(Contribution::sign(&id, SPACE, doc, DocKind::Idea, &c));
            let c = idea::cast_vote(&mut d, &author, Vote::Up, T0 + 2).unwrap();
            out.push(Contribution::sign(&id, SPACE, doc, DocKind::Idea, &c));
            let mut p = AutoCommit::new().with_actor(actor_for(&author, &[i; 16]));
            let c = idea::set_display_name(&mut p, "Name", T0).unwrap();
            let pdoc = DocId::profile(&SPACE, &author);
            out.push(Contribution::sign(&id, SPACE, pdoc, DocKind::Profile, &c));
        }
        for c in &out {
            c.clone().verify().expect("pool entries are valid");
        }
        out
    })
}

fn pick() -> impl Strategy<Value = Contribution> {
    (0..pool().len()).prop_map(|i| pool()[i].clone())
}

fn outcome(r: &Result<impl Sized, Rejection>) -> Result<(), &'static str> {
    match r {
        Ok(_) => Ok(()),
        Err(e) => Err(e.code()),
    }
}

/// The wire map of a contribution as CBOR values, in canonical key order.
fn wire_entries(c: &Contribution) -> Vec<(Value, Value)> {
    vec![
        (Value::Text("v".into()), Value::Integer(1.into())),
        (
            Value::Text("space".into()),
            Value::Bytes(c.space.0.to_vec()),
        ),
        (Value::Text("doc".into()), Value::Bytes(c.doc.0.to_vec())),
        (
            Value::Text("kind".into()),
            Value::Integer(c.kind.code().into()),
        ),
        (
            Value::Text("author".into()),
            Value::Bytes(c.author.0.to_vec()),
        ),
        (Value::Text("change".into()), Value::Bytes(c.change.clone())),
        (
            Value::Text("sig".into()),
            Value::Bytes(c.signature.to_vec()),
        ),
    ]
}

fn to_cbor(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).unwrap();
    out
}

/// Decodes and, if that succeeds, verifies: the whole receive path of untrusted bytes.
fn receive(bytes: &[u8]) -> Result<(), &'static str> {
    let c = Contribution::decode(bytes).map_err(|e| e.code())?;
    outcome(&c.verify())
}

fn arb_cbor() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(|i| Value::Integer(i.into())),
        any::<u64>().prop_map(|i| Value::Integer(i.into())),
        prop::collection::vec(any::<u8>(), 0..80).prop_map(Value::Bytes),
        "[a-z]{0,8}".prop_map(Value::Text),
        prop_oneof![
            Just("v"),
            Just("space"),
            Just("doc"),
            Just("kind"),
            Just("author"),
            Just("change"),
            Just("sig")
        ]
        .prop_map(|s| Value::Text(s.into())),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
        any::<f64>().prop_map(Value::Float),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((inner.clone(), inner.clone()), 0..8).prop_map(Value::Map),
            (any::<u64>(), inner).prop_map(|(t, v)| Value::Tag(t, Box::new(v))),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn encoding_round_trips(
        space in any::<[u8; 16]>(),
        doc in any::<[u8; 16]>(),
        profile in any::<bool>(),
        author in any::<[u8; 32]>(),
        change in prop::collection::vec(any::<u8>(), 0..700),
        sig in prop::collection::vec(any::<u8>(), 64),
    ) {
        let c = Contribution {
            space: SpaceId(space),
            doc: DocId(doc),
            kind: if profile { DocKind::Profile } else { DocKind::Idea },
            author: AuthorId(author),
            change,
            signature: sig.try_into().unwrap(),
        };
        let bytes = c.encode();
        prop_assert_eq!(Contribution::decode(&bytes), Ok(c.clone()));
        // The encoding is the CBOR map of the spec, keys in canonical order.
        prop_assert_eq!(&bytes, &to_cbor(&Value::Map(wire_entries(&c))));
    }

    #[test]
    fn any_signature_bit_flip_is_bad_signature(c in pick(), bit in 0usize..512) {
        let mut bad = c;
        bad.signature[bit / 8] ^= 1 << (bit % 8);
        prop_assert_eq!(outcome(&bad.clone().verify()), Err("bad_signature"));
        prop_assert_eq!(outcome(&verify_batch(vec![bad])[0]), Err("bad_signature"));
    }

    #[test]
    fn any_bit_flip_of_a_valid_encoding_is_refused(c in pick(), seed in any::<u64>()) {
        let bytes = c.encode();
        let bit = (seed % (bytes.len() as u64 * 8)) as usize;
        let mut bad = bytes.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(receive(&bad).is_err(), "bit {} flipped and still accepted", bit);
    }

    #[test]
    fn a_change_by_another_actor_is_actor_not_signer(
        signer in 0u8..4,
        own_prefix in any::<bool>(),
        other in 0u8..4,
        tail in prop::collection::vec(any::<u8>(), 0..48),
        random in prop::collection::vec(any::<u8>(), 0..80),
    ) {
        let id = ident(signer);
        let pk = id.author();
        let actor_bytes: Vec<u8> = if own_prefix {
            [&pk.0[..], &tail[..]].concat()
        } else if other != signer {
            [&ident(other).author().0[..], &tail[..]].concat()
        } else {
            random
        };
        let allowed = actor_bytes.len() >= 32 && actor_bytes.len() <= 64 && actor_bytes[..32] == pk.0;
        let change = change_with_actor(ActorId::from(actor_bytes), &pk);
        let c = Contribution::sign(&id, SPACE, idea_doc(&pk), DocKind::Idea, &change);
        let expected = if allowed { Ok(()) } else { Err("actor_not_signer") };
        prop_assert_eq!(outcome(&c.clone().verify()), expected);
        prop_assert_eq!(outcome(&verify_batch(vec![c])[0]), expected);
    }

    #[test]
    fn any_truncation_is_refused(c in pick(), cut in any::<prop::sample::Index>()) {
        let bytes = c.encode();
        let n = cut.index(bytes.len());
        prop_assert!(Contribution::decode(&bytes[..n]).is_err());
        // A truncated change inside a well-formed envelope is a bad change.
        let inner = Contribution { change: c.change[..cut.index(c.change.len())].to_vec(), ..c };
        let decoded = Contribution::decode(&inner.encode()).unwrap();
        prop_assert_eq!(outcome(&decoded.verify()), Err("bad_change"));
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = receive(&bytes);
        // The same bytes behind a plausible map header.
        let _ = receive(&[&[0xa7][..], &bytes].concat());
    }

    #[test]
    fn random_cbor_never_panics(v in arb_cbor()) {
        let _ = receive(&to_cbor(&v));
    }

    #[test]
    fn wire_maps_with_random_values_never_panic(
        values in prop::collection::vec(arb_cbor(), 7),
        keep in prop::collection::vec(any::<bool>(), 7),
    ) {
        let keys = ["v", "space", "doc", "kind", "author", "change", "sig"];
        let entries = keys
            .iter()
            .zip(values)
            .zip(keep)
            .filter(|(_, k)| *k)
            .map(|((k, v), _)| (Value::Text((*k).into()), v))
            .collect();
        let _ = receive(&to_cbor(&Value::Map(entries)));
    }

    #[test]
    fn random_change_bytes_inside_a_valid_envelope_never_panic(
        c in pick(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        junk in prop::collection::vec(any::<u8>(), 0..400),
    ) {
        let mut change = c.change.clone();
        for (at, b) in edits {
            let i = at.index(change.len());
            change[i] = b;
        }
        let mutated = Contribution { change, ..c.clone() };
        let _ = mutated.verify();
        // Arbitrary bytes after a valid magic, checksum and type.
        let raw = Contribution { change: [&c.change[..9], &junk[..]].concat(), ..c };
        prop_assert!(raw.verify().is_err());
    }

    #[test]
    fn oversize_input_is_too_large(extra in 1usize..4096, fill in any::<u8>()) {
        let bytes = vec![fill; MAX_CONTRIBUTION_BYTES + extra];
        prop_assert_eq!(
            Contribution::decode(&bytes),
            Err(Rejection::TooLarge { len: MAX_CONTRIBUTION_BYTES + extra, max: MAX_CONTRIBUTION_BYTES })
        );
    }

    #[test]
    fn reordered_keys_are_non_canonical(c in pick(), perm in Just((0..7).collect::<Vec<usize>>()).prop_shuffle()) {
        prop_assume!(perm != (0..7).collect::<Vec<_>>());
        let entries = wire_entries(&c);
        let shuffled = perm.iter().map(|i| entries[*i].clone()).collect();
        let bytes = to_cbor(&Value::Map(shuffled));
        prop_assert_eq!(Contribution::decode(&bytes), Err(Rejection::NonCanonical));
    }

    #[test]
    fn an_extra_key_is_non_canonical(
        c in pick(),
        at in 0usize..=7,
        key in "[a-z]{1,8}",
        value in arb_cbor(),
    ) {
        prop_assume!(!["v", "space", "doc", "kind", "author", "change", "sig"].contains(&key.as_str()));
        let mut entries = wire_entries(&c);
        entries.insert(at, (Value::Text(key), value));
        let bytes = to_cbor(&Value::Map(entries));
        prop_assert_eq!(Contribution::decode(&bytes), Err(Rejection::NonCanonical));
    }

    #[test]
    fn other_re_encodings_are_refused(c in pick(), which in 0usize..8, dup in 0usize..7) {
        let canonical = c.encode();
        let entries = wire_entries(&c);
        let bytes = match which {
            // A key twice.
            0 => {
                let mut e = entries.clone();
                e.insert(dup, entries[dup].clone());
                to_cbor(&Value::Map(e))
            }
            // A key missing.
            1 => {
                let mut e = entries.clone();
                e.remove(dup);
                to_cbor(&Value::Map(e))
            }
            // v = 1 in a two-byte integer.
            2 => [&[0xa7, 0x61, b'v', 0x18, 0x01][..], &canonical[4..]].concat(),
            // Trailing bytes.
            3 => [&canonical[..], &[0x00][..]].concat(),
            // An indefinite-length map.
            4 => [&[0xbf][..], &canonical[1..], &[0xff][..]].concat(),
            // A byte field as an array of integers.
            5 => {
                let mut e = entries.clone();
                let Value::Bytes(b) = e[1].1.clone() else { unreachable!() };
                e[1].1 = Value::Array(b.into_iter().map(|x| Value::Integer(x.into())).collect());
                to_cbor(&Value::Map(e))
            }
            // The whole envelope as a CBOR array.
            6 => to_cbor(&Value::Array(entries.into_iter().map(|(_, v)| v).collect())),
            // Wrapped in a tag.
            _ => to_cbor(&Value::Tag(24, Box::new(Value::Map(entries)))),
        };
        prop_assert_ne!(&bytes, &canonical);
        let r = Contribution::decode(&bytes);
        prop_assert!(
            matches!(r, Err(Rejection::NonCanonical) | Err(Rejection::Malformed(_))),
            "re-encoding {} gave {:?}", which, r
        );
    }
}

/// Ways to spoil a pool entry for the batch test.
#[derive(Debug, Clone, Copy)]
enum Spoil {
    None,
    SigBit(usize),
    ChangeByte(usize),
    FlipKind,
    SwapAuthor,
    WeakAuthor,
    NotAPoint,
}

fn spoil() -> impl Strategy<Value = Spoil> {
    prop_oneof![
        4 => Just(Spoil::None),
        2 => (0usize..512).prop_map(Spoil::SigBit),
        1 => any::<usize>().prop_map(Spoil::ChangeByte),
        1 => Just(Spoil::FlipKind),
        1 => Just(Spoil::SwapAuthor),
        1 => Just(Spoil::WeakAuthor),
        1 => Just(Spoil::NotAPoint),
    ]
}

/// A contribution whose change's actor begins with `key` (so only the key check can fail).
fn with_author_key(key: [u8; 32]) -> Contribution {
    let id = ident(9);
    let change = change_with_actor(
        ActorId::from([&key[..], &[1u8; 16][..]].concat()),
        &AuthorId(key),
    );
    // Bound to `key`, so that only the key check can fail.
    let mut c = Contribution::sign(&id, SPACE, idea_doc(&AuthorId(key)), DocKind::Idea, &change);
    c.author = AuthorId(key);
    c
}

fn not_a_point() -> [u8; 32] {
    (2u8..=255)
        .map(|b| {
            let mut k = [0u8; 32];
            k[0] = b;
            k
        })
        .find(|k| ed25519_dalek::VerifyingKey::from_bytes(k).is_err())
        .expect("some small y is not on the curve")
}

fn apply_spoil(c: &Contribution, s: Spoil) -> Contribution {
    let mut c = c.clone();
    match s {
        Spoil::None => {}
        Spoil::SigBit(b) => c.signature[b / 8] ^= 1 << (b % 8),
        Spoil::ChangeByte(i) => {
            let i = i % c.change.len();
            c.change[i] ^= 0x55;
        }
        Spoil::FlipKind => {
            c.kind = match c.kind {
                DocKind::Idea => DocKind::Profile,
                _ => DocKind::Idea,
            }
        }
        Spoil::SwapAuthor => c.author = ident(200).author(),
        Spoil::WeakAuthor => {
            // The identity point: small order, refused as a key.
            let mut k = [0u8; 32];
            k[0] = 1;
            c = with_author_key(k);
        }
        Spoil::NotAPoint => c = with_author_key(not_a_point()),
    }
    c
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn verify_batch_agrees_with_verify(items in prop::collection::vec((0usize..12, spoil()), 0..12)) {
        let batch: Vec<Contribution> = items
            .iter()
            .map(|(i, s)| apply_spoil(&pool()[i % pool().len()], *s))
            .collect();
        let one_by_one: Vec<_> = batch.iter().map(|c| outcome(&c.clone().verify())).collect();
        let batched: Vec<_> = verify_batch(batch.clone()).iter().map(outcome).collect();
        prop_assert_eq!(&batched, &one_by_one);
        for ((_, s), o) in items.iter().zip(&one_by_one) {
            match s {
                Spoil::None => prop_assert_eq!(*o, Ok(())),
                Spoil::SigBit(_) | Spoil::WeakAuthor | Spoil::NotAPoint => {
                    prop_assert_eq!(*o, Err("bad_signature"))
                }
                Spoil::SwapAuthor => prop_assert_eq!(*o, Err("actor_not_signer")),
                Spoil::FlipKind | Spoil::ChangeByte(_) => prop_assert!(o.is_err()),
            }
        }
    }
}

#[test]
fn every_single_bit_flip_of_one_contribution_is_refused() {
    for c in [&pool()[0], &pool()[3]] {
        let bytes = c.encode();
        for bit in 0..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(receive(&bad).is_err(), "flipping bit {bit} was accepted");
        }
    }
}

#[test]
fn every_truncation_of_one_contribution_is_refused() {
    let bytes = pool()[0].encode();
    for n in 0..bytes.len() {
        assert!(Contribution::decode(&bytes[..n]).is_err());
    }
}

#[test]
fn a_profile_written_by_someone_else_is_refused() {
    let alice = ident(1);
    let bob = ident(2);
    let mut d = AutoCommit::new().with_actor(actor_for(&bob.author(), &[2; 16]));
    let change = idea::set_display_name(&mut d, "Alice (really Bob)", T0).unwrap();
    let alices = DocId::profile(&SPACE, &alice.author());
    let c = Contribution::sign(&bob, SPACE, alices, DocKind::Profile, &change);
    assert_eq!(c.verify().unwrap_err(), Rejection::NotProfileOwner);
}

#[test]
fn oversize_change_is_refused_before_parsing() {
    let c = Contribution {
        change: vec![0; MAX_CHANGE_BYTES + 1],
        ..pool()[0].clone()
    };
    assert!(matches!(c.clone().verify(), Err(Rejection::BadChange(_))));
    assert!(matches!(
        Contribution::decode(&c.encode()),
        Err(Rejection::BadChange(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// Convergence
// ---------------------------------------------------------------------------------------------

const AUTHORS: u8 = 3;
const MAX_REPLICAS: usize = 6;

/// The idea every convergence script edits: created by author 0 with [`SALT`].
fn script_doc() -> DocId {
    idea_doc(&ident(0).author())
}

/// One valid edit (or a sync) in a convergence script. Every edit here passes the idea write
/// rules: the invalid ones are the subject of the properties above.
#[derive(Debug, Clone)]
enum Step {
    Comment(usize, String),
    Vote(usize, bool),
    Status(usize, usize),
    EditBody(usize, u16, u8, String),
    Tag(usize, u8, bool),
    Title(usize, String),
    /// Deletes a comment (anyone may; see PROTOCOL.md section 13).
    DeleteComment(usize, u16),
    /// Overwrites a comment's text (anyone may; reads keep only what its author wrote).
    OverwriteComment(usize, u16, String),
    /// The creator creates the idea once more, from a fresh replica (another dependency-free
    /// change bound to the same id), and merges it in.
    Recreate(usize, String),
    Sync(usize, usize),
    Fork(usize),
}

fn step() -> impl Strategy<Value = Step> {
    let r = 0usize..MAX_REPLICAS;
    prop_oneof![
        3 => (r.clone(), "[a-z ]{1,12}").prop_map(|(w, t)| Step::Comment(w, t)),
        3 => (r.clone(), any::<bool>()).prop_map(|(w, up)| Step::Vote(w, up)),
        2 => (r.clone(), 0usize..5).prop_map(|(w, s)| Step::Status(w, s)),
        3 => (r.clone(), any::<u16>(), 0u8..4, "[a-z]{0,5}")
            .prop_map(|(w, p, d, t)| Step::EditBody(w, p, d, t)),
        2 => (r.clone(), 0u8..4, any::<bool>()).prop_map(|(w, t, on)| Step::Tag(w, t, on)),
        1 => (r.clone(), "[A-Za-z]{1,10}").prop_map(|(w, t)| Step::Title(w, t)),
        1 => (r.clone(), any::<u16>()).prop_map(|(w, i)| Step::DeleteComment(w, i)),
        1 => (r.clone(), any::<u16>(), "[a-z]{1,6}")
            .prop_map(|(w, i, t)| Step::OverwriteComment(w, i, t)),
        1 => (r.clone(), "[A-Za-z]{1,10}").prop_map(|(w, t)| Step::Recreate(w, t)),
        3 => (r.clone(), r.clone()).prop_map(|(a, b)| Step::Sync(a, b)),
        1 => r.prop_map(Step::Fork),
    ]
}

struct Replica {
    author: usize,
    doc: AutoCommit,
}

fn obj(doc: &AutoCommit, key: &str) -> agora_protocol::automerge::ObjId {
    doc.get(ROOT, key)
        .unwrap()
        .expect("the idea has this object")
        .1
}

/// What a script produced.
struct Script {
    /// Every change any replica made.
    changes: Vec<Change>,
    /// One document that merged every replica.
    merged: AutoCommit,
    /// Every (author, text) an author wrote as a comment's text (their own or someone else's).
    comment_texts: BTreeSet<(AuthorId, String)>,
}

/// Runs the script on replicas of one idea.
fn run_script(steps: &[Step]) -> Script {
    let mut comment_texts = BTreeSet::new();
    let ids: Vec<Identity> = (0..AUTHORS).map(ident).collect();
    let mut nonce = 0u8;
    let mut next_actor = |author: usize| {
        nonce += 1;
        actor_for(&ids[author].author(), &[nonce; 16])
    };
    let mut first = AutoCommit::new().with_actor(next_actor(0));
    idea::create_idea(
        &mut first,
        &draft("Lunch rota"),
        &ids[0].author(),
        &SALT,
        T0,
    )
    .unwrap();
    let mut replicas = vec![Replica {
        author: 0,
        doc: first,
    }];
    for a in 1..AUTHORS as usize {
        let doc = replicas[0].doc.fork().with_actor(next_actor(a));
        replicas.push(Replica { author: a, doc });
    }
    for (t, s) in steps.iter().enumerate() {
        let now = T0 + 1000 * (t as i64 + 1);
        let n = replicas.len();
        match s {
            Step::Comment(w, text) => {
                let r = &mut replicas[w % n];
                let author = ids[r.author].author();
                if idea::add_comment(&mut r.doc, &author, text, now).is_ok() {
                    comment_texts.insert((author, text.trim().to_string()));
                }
            }
            Step::Vote(w, up) => {
                let r = &mut replicas[w % n];
                let v = if *up { Vote::Up } else { Vote::Down };
                // Voting the same way twice makes no change (`SchemaError::Unchanged`).
                match idea::cast_vote(&mut r.doc, &ids[r.author].author(), v, now) {
                    Ok(_) | Err(SchemaError::Unchanged) => {}
                    Err(e) => panic!("cast_vote: {e}"),
                }
            }
            Step::Status(w, st) => {
                let r = &mut replicas[w % n];
                match idea::set_status(&mut r.doc, Status::ALL[*st], now) {
                    Ok(_) | Err(SchemaError::Unchanged) => {}
                    Err(e) => panic!("set_status: {e}"),
                }
            }
            Step::EditBody(w, pos, del, text) => {
                let r = &mut replicas[w % n];
                let body = obj(&r.doc, "body");
                let len = r.doc.length(&body);
                let at = *pos as usize % (len + 1);
                let del = (*del as usize).min(len - at);
                r.doc.splice_text(&body, at, del as isize, text).unwrap();
                r.doc.commit();
            }
            Step::Tag(w, tag, on) => {
                let r = &mut replicas[w % n];
                let tags = obj(&r.doc, "tags");
                let key = format!("tag{tag}");
                if *on {
                    r.doc.put(&tags, key, true).unwrap();
                } else {
                    let _ = r.doc.delete(&tags, key);
                }
                r.doc.commit();
            }
            Step::Title(w, title) => {
                let r = &mut replicas[w % n];
                r.doc.put(ROOT, "title", title.as_str()).unwrap();
                r.doc.commit();
            }
            Step::DeleteComment(w, i) => {
                let r = &mut replicas[w % n];
                let comments = obj(&r.doc, "comments");
                let len = r.doc.length(&comments);
                if len > 0 {
                    r.doc.delete(&comments, *i as usize % len).unwrap();
                    r.doc.commit();
                }
            }
            Step::OverwriteComment(w, i, text) => {
                let r = &mut replicas[w % n];
                let comments = obj(&r.doc, "comments");
                let len = r.doc.length(&comments);
                if len > 0 {
                    if let Some((_, c)) = r.doc.get(&comments, *i as usize % len).unwrap() {
                        r.doc.put(&c, "text", text.as_str()).unwrap();
                        r.doc.commit();
                        comment_texts.insert((ids[r.author].author(), text.clone()));
                    }
                }
            }
            Step::Recreate(w, title) => {
                let i = w % n;
                if replicas[i].author == 0 {
                    let mut again = AutoCommit::new().with_actor(next_actor(0));
                    idea::create_idea(&mut again, &draft(title), &ids[0].author(), &SALT, now)
                        .unwrap();
                    replicas[i].doc.merge(&mut again).unwrap();
                }
            }
            Step::Sync(a, b) => {
                let (a, b) = (a % n, b % n);
                if a != b {
                    let mut from = replicas[a].doc.fork();
                    replicas[b].doc.merge(&mut from).unwrap();
                }
            }
            Step::Fork(w) => {
                if n < MAX_REPLICAS {
                    let author = replicas[w % n].author;
                    let doc = replicas[w % n].doc.fork().with_actor(next_actor(author));
                    replicas.push(Replica { author, doc });
                }
            }
        }
    }
    // The reference: one document that merged every replica.
    let mut all = AutoCommit::new();
    for r in &mut replicas {
        all.merge(&mut r.doc).unwrap();
    }
    Script {
        changes: all.get_changes(&[]).into_iter().collect(),
        merged: all,
        comment_texts,
    }
}

/// A deterministic shuffle source for delivery orders (proptest supplies the seed).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn sorted_heads(doc: &mut AutoCommit) -> Vec<agora_protocol::automerge::ChangeHash> {
    let mut h = doc.get_heads();
    h.sort();
    h
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn replicas_converge_whatever_the_delivery(
        steps in prop::collection::vec(step(), 0..40),
        seed in any::<u64>(),
    ) {
        let Script { changes, merged: mut reference, comment_texts } = run_script(&steps);
        let doc_id = script_doc();
        let ids: HashMap<AuthorId, Identity> =
            (0..AUTHORS).map(ident).map(|i| (i.author(), i)).collect();
        // Every change travels as a signed, encoded contribution of its actor's author.
        let wire: Vec<Vec<u8>> = changes
            .iter()
            .map(|ch| {
                let author = idea::author_of_actor(ch.actor_id()).unwrap();
                Contribution::sign(&ids[&author], SPACE, doc_id, DocKind::Idea, ch).encode()
            })
            .collect();
        let expected_heads = sorted_heads(&mut reference);
        let expected = idea::read_idea(&reference, SPACE, doc_id);
        prop_assert!(expected.is_some());

        let mut rng = Rng(seed | 1);
        for _receiver in 0..3 {
            // Random order, some duplicates, random batch boundaries.
            let mut deliveries: Vec<&Vec<u8>> = wire.iter().collect();
            for _ in 0..rng.below(wire.len() + 1) {
                deliveries.push(&wire[rng.below(wire.len())]);
            }
            for i in (1..deliveries.len()).rev() {
                deliveries.swap(i, rng.below(i + 1));
            }
            let mut doc = AutoCommit::new().with_actor(actor_for(&AuthorId([0xee; 32]), &[0; 16]));
            let mut rest = &deliveries[..];
            while !rest.is_empty() {
                let take = 1 + rng.below(rest.len().min(8));
                let (batch, tail) = rest.split_at(take);
                rest = tail;
                let decoded: Vec<Contribution> =
                    batch.iter().map(|b| Contribution::decode(b).unwrap()).collect();
                let verified: Vec<Change> = verify_batch(decoded)
                    .into_iter()
                    .map(|v| v.expect("every delivery is valid").into_parts().1)
                    .collect();
                doc.apply_changes(verified).unwrap();
            }
            prop_assert!(doc.get_missing_deps(&[]).is_empty());
            prop_assert_eq!(sorted_heads(&mut doc), expected_heads.clone());
            prop_assert_eq!(idea::read_idea(&doc, SPACE, doc_id), expected.clone());
        }
        // Reads attribute by actor: comments carry their real author and only text that author
        // wrote (someone else's overwrite blanks it), votes count once per author, and the idea's
        // author is its creator whatever the others did.
        let idea = expected.unwrap();
        for c in &idea.comments {
            prop_assert!(ids.contains_key(&c.author));
            prop_assert!(
                c.text.is_empty() || comment_texts.contains(&(c.author, c.text.clone())),
                "comment text {:?} was not written by its author", c.text
            );
        }
        prop_assert!(idea.voters.keys().all(|v| ids.contains_key(v)));
        prop_assert_eq!(idea.votes.up + idea.votes.down, idea.voters.len() as u64);
        prop_assert_eq!(idea.author, ident(0).author());
    }
}

#[test]
fn signing_message_binds_every_field() {
    let c = &pool()[0];
    let change = Change::from_bytes(c.change.clone()).unwrap();
    let base = signing_message(&c.space, &c.doc, c.kind, &change.hash());
    assert_ne!(
        base,
        signing_message(&SpaceId([1; 16]), &c.doc, c.kind, &change.hash())
    );
    assert_ne!(
        base,
        signing_message(&c.space, &DocId([1; 16]), c.kind, &change.hash())
    );
    assert_ne!(
        base,
        signing_message(&c.space, &c.doc, DocKind::Profile, &change.hash())
    );
    // Re-targeting a signed change to another space or document breaks the signature (pool()[1]
    // is a comment: a change with dependencies, so the creation rule does not apply)...
    for moved in [
        Contribution {
            space: SpaceId([1; 16]),
            ..pool()[1].clone()
        },
        Contribution {
            doc: DocId([1; 16]),
            ..pool()[1].clone()
        },
    ] {
        assert_eq!(moved.verify().unwrap_err(), Rejection::BadSignature);
    }
    // ... and a creation moved anywhere is no longer bound to its id (checked before the
    // signature, so that is the code reported).
    for moved in [
        Contribution {
            space: SpaceId([1; 16]),
            ..c.clone()
        },
        Contribution {
            doc: DocId([1; 16]),
            ..c.clone()
        },
    ] {
        assert_eq!(moved.verify().unwrap_err(), Rejection::NotIdeaCreator);
    }
}

// ---------------------------------------------------------------------------------------------
// The idea write rules (PROTOCOL.md 6.2 step 10)
// ---------------------------------------------------------------------------------------------

/// Verifies one by one and in a batch (with a valid contribution around it), checks that both
/// agree, and returns the code.
fn judge(c: Contribution) -> Result<(), &'static str> {
    let one = outcome(&c.clone().verify());
    let batch = verify_batch(vec![pool()[0].clone(), c, pool()[3].clone()]);
    assert_eq!(
        outcome(&batch[1]),
        one,
        "verify_batch disagrees with verify"
    );
    assert!(batch[0].is_ok() && batch[2].is_ok());
    one
}

/// Author `creator`'s idea (created with `salt`) as seen by author `writer`: the document, with
/// `writer`'s actor (nonce `nonce`), after merging the creation; and the idea's id.
fn idea_seen_by(creator: u8, salt: [u8; 16], writer: u8, nonce: u8) -> (AutoCommit, DocId) {
    let c = ident(creator).author();
    let mut a = AutoCommit::new().with_actor(actor_for(&c, &[0xc0; 16]));
    idea::create_idea(&mut a, &draft("the idea"), &c, &salt, T0).unwrap();
    let w = ident(writer).author();
    let mut d = AutoCommit::new().with_actor(actor_for(&w, &[nonce; 16]));
    d.merge(&mut a).unwrap();
    (d, DocId::idea(&SPACE, &c, &salt))
}

fn last_change(doc: &mut AutoCommit) -> Change {
    doc.commit();
    doc.get_last_local_change().expect("the edit made a change")
}

/// The key under which a vote (or any author-keyed entry) is written.
#[derive(Debug, Clone, Copy)]
enum KeySpelling {
    Lower,
    Upper,
    /// Lowercase with the first letter digit (if any) uppercased.
    Mixed,
}

fn spell(author: &AuthorId, how: KeySpelling) -> String {
    let lower = author.to_hex();
    match how {
        KeySpelling::Lower => lower,
        KeySpelling::Upper => lower.to_uppercase(),
        KeySpelling::Mixed => match lower.find(|c: char| c.is_ascii_alphabetic()) {
            Some(i) => format!(
                "{}{}{}",
                &lower[..i],
                lower[i..=i].to_uppercase(),
                &lower[i + 1..]
            ),
            None => lower,
        },
    }
}

fn key_spelling() -> impl Strategy<Value = KeySpelling> {
    prop_oneof![
        Just(KeySpelling::Lower),
        Just(KeySpelling::Upper),
        Just(KeySpelling::Mixed)
    ]
}

const PROTECTED: [&str; 8] = [
    "type", "author", "created", "salt", "body", "tags", "comments", "votes",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Only the creator can make a change without dependencies to an idea: the id must be
    /// `DocId::idea(space, signer, salt)` for the salt in the change message.
    #[test]
    fn a_creation_by_a_non_creator_is_not_idea_creator(
        creator in 0u8..3,
        forger in 0u8..3,
        salt in any::<[u8; 16]>(),
        other_salt in any::<[u8; 16]>(),
        how in 0u8..6,
        junk in "[ -~]{0,50}",
    ) {
        let target = DocId::idea(&SPACE, &ident(creator).author(), &salt);
        let f = ident(forger);
        let fa = f.author();
        let mut d = AutoCommit::new().with_actor(actor_for(&fa, &[7; 16]));
        let (change, bound) = match how {
            // The forger runs `create_idea` with the creator's salt.
            0 => (idea::create_idea(&mut d, &draft("mine now"), &fa, &salt, T0).unwrap(), forger == creator),
            // ... or with another salt.
            1 => (idea::create_idea(&mut d, &draft("mine now"), &fa, &other_salt, T0).unwrap(),
                  forger == creator && other_salt == salt),
            // A creation whose message is missing.
            2 => {
                d.put(ROOT, "type", "idea").unwrap();
                (last_change(&mut d), false)
            }
            // A creation whose message is something else.
            3 => {
                d.put(ROOT, "type", "idea").unwrap();
                d.commit_with(CommitOptions::default().with_message(junk.clone()));
                (d.get_last_local_change().unwrap(), false)
            }
            // The right message with the salt in uppercase hex: the reference accepts it
            // (PROTOCOL.md 6.2 step 10b).
            4 => {
                d.put(ROOT, "type", "idea").unwrap();
                let message = format!("agora-idea-v1:{}", hex::encode_upper(salt));
                d.commit_with(CommitOptions::default().with_message(message));
                (d.get_last_local_change().unwrap(), forger == creator)
            }
            // The right message followed by anything.
            _ => {
                d.put(ROOT, "type", "idea").unwrap();
                let message = format!("agora-idea-v1:{}{}", hex::encode(salt), junk);
                d.commit_with(CommitOptions::default().with_message(message));
                (d.get_last_local_change().unwrap(), forger == creator && junk.is_empty())
            }
        };
        prop_assert!(change.deps().is_empty());
        let c = Contribution::sign(&f, SPACE, target, DocKind::Idea, &change);
        let expected = if bound { Ok(()) } else { Err("not_idea_creator") };
        prop_assert_eq!(judge(c), expected);
    }

    /// After the creation, a change may write `title` and `status` at the root and nothing else
    /// there: not the protected fields, not a new root key; whoever writes it, creator included.
    #[test]
    fn a_later_change_to_a_protected_root_key_is_protected_field(
        creator in 0u8..3,
        writer in 0u8..3,
        protected in 0usize..PROTECTED.len(),
        other in "[a-z_]{1,12}",
        what in 0u8..5,
        fine_first in any::<bool>(),
    ) {
        let (mut d, doc) = idea_seen_by(creator, SALT, writer, 0xd0);
        let w = ident(writer);
        let key = PROTECTED[protected];
        if fine_first {
            // Allowed edits in the same change do not make it acceptable.
            d.put(ROOT, "title", "a new title").unwrap();
        }
        let expect_key = match what {
            0 => { d.put(ROOT, key, "x").unwrap(); key.to_string() }
            1 => { d.put_object(ROOT, key, ObjType::Map).unwrap(); key.to_string() }
            2 => { d.delete(ROOT, key).unwrap(); key.to_string() }
            3 => { d.put(ROOT, key, 1i64).unwrap(); key.to_string() }
            _ => {
                // A root key the schema does not have.
                prop_assume!(other != "title" && other != "status");
                d.put(ROOT, other.as_str(), "x").unwrap();
                other.clone()
            }
        };
        let change = last_change(&mut d);
        prop_assert!(!change.deps().is_empty());
        let c = Contribution::sign(&w, SPACE, doc, DocKind::Idea, &change);
        prop_assert_eq!(c.clone().verify().unwrap_err(), Rejection::ProtectedField(expect_key));
        prop_assert_eq!(judge(c), Err("protected_field"));
    }

    /// `title` and `status` stay editable by anyone.
    #[test]
    fn a_later_change_to_title_or_status_is_accepted(
        creator in 0u8..3,
        writer in 0u8..3,
        title in "[A-Za-z ]{1,20}",
        status in 0usize..5,
    ) {
        let (mut d, doc) = idea_seen_by(creator, SALT, writer, 0xd0);
        d.put(ROOT, "title", title.as_str()).unwrap();
        d.put(ROOT, "status", Status::ALL[status].as_str()).unwrap();
        let change = last_change(&mut d);
        let c = Contribution::sign(&ident(writer), SPACE, doc, DocKind::Idea, &change);
        prop_assert_eq!(judge(c), Ok(()));
    }

    /// A key of 64 hex digits (a vote's key) may be written only by the author it names, in
    /// lowercase: a vote put, changed or deleted under another key is foreign_key, in `votes`
    /// or in any other map; an object under one's own such key is wrong_kind.
    #[test]
    fn writing_a_vote_under_another_key_is_foreign_key(
        creator in 0u8..3,
        writer in 0u8..3,
        victim in 0u8..3,
        how in key_spelling(),
        action in 0u8..3,
        where_ in 0u8..3,
    ) {
        let (mut d, doc) = idea_seen_by(creator, SALT, writer, 0xd0);
        let victim_author = ident(victim).author();
        let key = spell(&victim_author, how);
        if action == 2 {
            // The victim's own vote first (valid), then the writer deletes it.
            let (mut v, _) = idea_seen_by(creator, SALT, victim, 0xe0);
            let vote = idea::cast_vote(&mut v, &victim_author, Vote::Up, T0 + 1).unwrap();
            d.apply_changes([vote]).unwrap();
        }
        let map = match where_ {
            0 => obj(&d, "votes"),
            1 => obj(&d, "tags"),
            _ => {
                idea::add_comment(&mut d, &ident(writer).author(), "c", T0 + 2).unwrap();
                let comments = obj(&d, "comments");
                d.get(&comments, 0).unwrap().unwrap().1
            }
        };
        let expect_key = spell(&victim_author, KeySpelling::Lower);
        match action {
            0 => d.put(&map, key.as_str(), "down").unwrap(),
            1 => { d.put_object(&map, key.as_str(), ObjType::Map).unwrap(); }
            _ => {
                let key = if where_ == 0 { expect_key.clone() } else { key.clone() };
                prop_assume!(d.get(&map, key.as_str()).unwrap().is_some());
                d.delete(&map, key.as_str()).unwrap()
            }
        }
        let change = last_change(&mut d);
        let c = Contribution::sign(&ident(writer), SPACE, doc, DocKind::Idea, &change);
        let own = writer == victim && (matches!(how, KeySpelling::Lower) || action == 2 && where_ == 0);
        // Under one's own key, an object is still refused: a vote is a scalar string.
        let expected = match (own, action) {
            (false, _) => Err("foreign_key"),
            (true, 1) => Err("wrong_kind"),
            (true, _) => Ok(()),
        };
        prop_assert_eq!(judge(c), expected);
    }
}

#[test]
fn unchanged_edits_make_no_change() {
    let (mut d, _) = idea_seen_by(0, SALT, 1, 0xd0);
    let bob = ident(1).author();
    idea::cast_vote(&mut d, &bob, Vote::Up, T0).unwrap();
    assert_eq!(
        idea::cast_vote(&mut d, &bob, Vote::Up, T0 + 1).unwrap_err(),
        SchemaError::Unchanged
    );
    idea::cast_vote(&mut d, &bob, Vote::Down, T0 + 2).unwrap();
    assert_eq!(
        idea::set_status(&mut d, Status::Open, T0 + 3).unwrap_err(),
        SchemaError::Unchanged
    );
    idea::set_status(&mut d, Status::Done, T0 + 4).unwrap();
    assert_eq!(
        idea::set_status(&mut d, Status::Done, T0 + 5).unwrap_err(),
        SchemaError::Unchanged
    );
    // Nothing was committed by the refused edits: the last local change is still the status.
    let last = d.get_last_local_change().unwrap();
    let read = idea::read_idea(&d, SPACE, idea_doc(&ident(0).author())).unwrap();
    assert_eq!(read.status, Status::Done);
    assert_eq!(read.voters.get(&bob), Some(&Vote::Down));
    assert_eq!(last.seq(), 3);
}

/// Sets the checksum of change-chunk bytes to the first 4 bytes of their hash.
fn fix_checksum(change: &mut [u8]) {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(&change[8..]);
    change[4..8].copy_from_slice(&hash[..4]);
}

fn uleb(b: &[u8], at: &mut usize) -> u64 {
    let (mut v, mut shift) = (0u64, 0);
    loop {
        let x = b[*at];
        *at += 1;
        v |= u64::from(x & 0x7f) << shift;
        shift += 7;
        if x & 0x80 == 0 {
            return v;
        }
    }
}

fn push_uleb(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let mut x = (v & 0x7f) as u8;
        v >>= 7;
        if v != 0 {
            x |= 0x80;
        }
        out.push(x);
        if v == 0 {
            return;
        }
    }
}

/// The change-chunk bytes of `change` with its list of other actors emptied: its operations
/// then name actor indices the change does not have. Automerge parses such a change.
fn without_other_actors(change: &[u8]) -> Vec<u8> {
    let mut at = 9;
    uleb(change, &mut at); // chunk length
    let body_start = at;
    let deps = uleb(change, &mut at);
    at += 32 * deps as usize;
    let actor = uleb(change, &mut at);
    at += actor as usize;
    uleb(change, &mut at); // seq
    uleb(change, &mut at); // start op
    uleb(change, &mut at); // time (small and positive here, so uLEB reads the sLEB)
    let message = uleb(change, &mut at);
    at += message as usize;
    let others_at = at;
    let others = uleb(change, &mut at);
    assert!(others > 0, "the change references other actors");
    for _ in 0..others {
        let n = uleb(change, &mut at);
        at += n as usize;
    }
    let mut body = change[body_start..others_at].to_vec();
    body.push(0);
    body.extend_from_slice(&change[at..]);
    let mut out = vec![0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 1];
    push_uleb(body.len() as u64, &mut out);
    out.extend_from_slice(&body);
    fix_checksum(&mut out);
    out
}

/// A remote panic: every node that verifies this crashes (it needs no valid signature, since
/// the structure is checked first). `check_idea_change` calls automerge's `Change::decode`,
/// which unwraps actor indices and action numbers that `Change::from_bytes` does not check.
#[test]
fn a_change_naming_an_unknown_actor_is_refused_without_panic() {
    // A comment by someone other than the idea's creator refers to the creator's actor.
    let (alice, bob) = (ident(0), ident(1));
    let salt = [9u8; 16];
    let doc = DocId::idea(&SPACE, &alice.author(), &salt);
    let mut a = AutoCommit::new().with_actor(actor_for(&alice.author(), &[1; 16]));
    idea::create_idea(&mut a, &draft("shared"), &alice.author(), &salt, T0).unwrap();
    let mut b = AutoCommit::new().with_actor(actor_for(&bob.author(), &[2; 16]));
    b.merge(&mut a).unwrap();
    let change = idea::add_comment(&mut b, &bob.author(), "hello", T0 + 1).unwrap();
    assert!(!change.other_actor_ids().is_empty());
    let comment = &Contribution::sign(&bob, SPACE, doc, DocKind::Idea, &change);
    let bytes = without_other_actors(&comment.change);
    assert!(
        Change::from_bytes(bytes.clone()).is_ok(),
        "automerge parses it"
    );
    let c = Contribution {
        change: bytes,
        signature: [0; 64],
        ..comment.clone()
    };
    let r = std::panic::catch_unwind(|| c.clone().verify().map(|_| ()));
    assert!(r.is_ok(), "verify panicked");
    assert!(r.unwrap().is_err());
    let r = std::panic::catch_unwind(|| verify_batch(vec![c.clone()]).len());
    assert!(r.is_ok(), "verify_batch panicked");
}

/// Every single-byte change to a comment's change chunk, with the checksum fixed up so that it
/// reaches the write rules: judged without a panic (the signature need not be valid: the
/// structure is checked first).
#[test]
fn every_byte_mutation_with_a_good_checksum_is_judged_without_panic() {
    for i in [1usize, 2] {
        let good = &pool()[i];
        for at in 12..good.change.len() {
            let original = good.change[at];
            for b in [0x00, 0x01, 0x02, 0x07, 0x7f, 0x80, 0x81, 0xff, original ^ 1] {
                let mut change = good.change.clone();
                change[at] = b;
                fix_checksum(&mut change);
                let c = Contribution {
                    change,
                    ..good.clone()
                };
                let r = std::panic::catch_unwind(|| c.clone().verify().map(|_| ()));
                assert!(
                    r.is_ok(),
                    "byte {at} of pool[{i}] set to {b:#04x}: verify panicked"
                );
            }
        }
    }
}
