//! The test vectors of `docs/PROTOCOL.md`, recomputed from their inputs.
//!
//! The document is the single source of the constants: every line of the form
//! `vector.<name> = <value>` (continued by `vector.<name> += <more hex>`) is read from it, the
//! inputs among them are fed to this crate, and every output must match the document byte for
//! byte. A second set of checks recomputes the outputs a different way, from the rules as the
//! document states them (hashes, layouts, byte concatenations), so that the prose and the code
//! cannot drift apart either.
//!
//! The vectors cover the identity, both id derivations (a profile, and an idea bound to its
//! creator by a salt), an idea creation and a profile change with their hashes, signatures and
//! encodings, and the sync digest and messages. The annotated excerpts of section 5.3 are checked
//! as well.
//!
//! If a vector changes on purpose, run `cargo test -p agora-protocol --test vectors` and paste the
//! lines it prints (sorted by name) into the matching blocks of the document.

use agora_protocol::automerge::{AutoCommit, Change, ReadDoc, ROOT};
use agora_protocol::contribution::{signing_message, SIGNING_DOMAIN};
use agora_protocol::idea::{self, actor_for, IdeaDraft, Status, IDEA_CREATION_MESSAGE};
use agora_protocol::ids::{IDEA_DOC_DOMAIN, PROFILE_DOC_DOMAIN};
use agora_protocol::limits::MAX_CHANGE_BYTES;
use agora_protocol::sync::{self, DocHeads, SyncRequest, SyncResponse};
use agora_protocol::{AuthorId, Contribution, DocId, DocKind, Identity, Rejection, SpaceId};
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

mod common;
use common::{render, spec_vectors, SPEC};

fn input(spec: &BTreeMap<String, String>, name: &str) -> String {
    spec.get(name)
        .unwrap_or_else(|| panic!("PROTOCOL.md lacks the input vector.{name}"))
        .clone()
}

fn input_hex<const N: usize>(spec: &BTreeMap<String, String>, name: &str) -> [u8; N] {
    let bytes = hex::decode(input(spec, name)).expect("input is hex");
    bytes.try_into().expect("input has the documented length")
}

fn input_json<T: serde::de::DeserializeOwned>(spec: &BTreeMap<String, String>, name: &str) -> T {
    serde_json::from_str(&input(spec, name)).expect("input is JSON")
}

/// The inputs, as printed in the document.
struct Inputs {
    seed: [u8; 32],
    nonce: [u8; 16],
    now_ms: i64,
    space: SpaceId,
    salt: [u8; 16],
    draft: IdeaDraft,
    display_name: String,
}

impl Inputs {
    fn from_spec(spec: &BTreeMap<String, String>) -> Inputs {
        Inputs {
            seed: input_hex(spec, "seed"),
            nonce: input_hex(spec, "nonce"),
            now_ms: input(spec, "now_ms").parse().expect("now_ms is an integer"),
            space: SpaceId(input_hex(spec, "space")),
            salt: input_hex(spec, "idea_salt"),
            draft: IdeaDraft {
                title: input_json(spec, "idea_title"),
                body: input_json(spec, "idea_body"),
                tags: input_json(spec, "idea_tags"),
            },
            display_name: input_json(spec, "profile_name"),
        }
    }
}

/// What this crate computes from the inputs, one entry per output vector.
struct Outputs {
    values: BTreeMap<&'static str, String>,
    idea_doc: DocId,
    idea: Contribution,
    profile: Contribution,
}

fn compute(inp: &Inputs) -> Outputs {
    let id = Identity::from_seed(inp.seed);
    let author = id.author();
    let actor = actor_for(&author, &inp.nonce);

    let idea_doc = DocId::idea(&inp.space, &author, &inp.salt);
    let mut doc = AutoCommit::new().with_actor(actor.clone());
    let change = idea::create_idea(&mut doc, &inp.draft, &author, &inp.salt, inp.now_ms).unwrap();
    let idea = Contribution::sign(&id, inp.space, idea_doc, DocKind::Idea, &change);
    let idea_bytes = idea.encode();

    let profile_doc = DocId::profile(&inp.space, &author);
    let mut pdoc = AutoCommit::new().with_actor(actor.clone());
    let pchange = idea::set_display_name(&mut pdoc, &inp.display_name, inp.now_ms).unwrap();
    let profile = Contribution::sign(&id, inp.space, profile_doc, DocKind::Profile, &pchange);
    let profile_bytes = profile.encode();

    let mut v = BTreeMap::new();
    v.insert("author", author.to_hex());
    v.insert("peer_id", peer_id(&author));
    v.insert("actor", hex::encode(actor.to_bytes()));
    v.insert("topic", inp.space.topic());
    v.insert("profile_doc", profile_doc.to_hex());
    v.insert("idea_doc", idea_doc.to_hex());
    v.insert("idea_change", hex::encode(change.raw_bytes()));
    v.insert("idea_change_hash", hex::encode(change.hash().0));
    v.insert(
        "idea_signing_message",
        hex::encode(signing_message(
            &inp.space,
            &idea_doc,
            DocKind::Idea,
            &change.hash(),
        )),
    );
    v.insert("idea_signature", hex::encode(idea.signature));
    v.insert("idea_contribution", hex::encode(&idea_bytes));
    v.insert(
        "idea_message_id",
        hex::encode(Contribution::wire_id(&idea_bytes)),
    );
    v.insert("profile_change", hex::encode(pchange.raw_bytes()));
    v.insert("profile_change_hash", hex::encode(pchange.hash().0));
    v.insert(
        "profile_signing_message",
        hex::encode(signing_message(
            &inp.space,
            &profile_doc,
            DocKind::Profile,
            &pchange.hash(),
        )),
    );
    v.insert("profile_signature", hex::encode(profile.signature));
    v.insert("profile_contribution", hex::encode(&profile_bytes));
    v.insert(
        "profile_message_id",
        hex::encode(Contribution::wire_id(&profile_bytes)),
    );

    // Sync (section 9): a node holding exactly these two contributions.
    let idea_heads = [change.hash()];
    let profile_heads = [pchange.hash()];
    let digest = sync::space_digest([
        (&idea_doc, &idea_heads[..]),
        (&profile_doc, &profile_heads[..]),
    ]);
    v.insert("sync_digest", hex::encode(digest));
    let summary = SyncRequest::Summary {
        v: 1,
        space: inp.space.0,
        digest,
    };
    v.insert("sync_summary", hex::encode(cbor(&summary)));
    let mut docs = vec![
        DocHeads {
            doc: idea_doc.0,
            heads: vec![change.hash().into()],
        },
        DocHeads {
            doc: profile_doc.0,
            heads: vec![pchange.hash().into()],
        },
    ];
    docs.sort_by_key(|d| d.doc);
    v.insert(
        "sync_heads",
        hex::encode(cbor(&SyncResponse::Heads { docs })),
    );
    let fetch = SyncRequest::Fetch {
        v: 1,
        space: inp.space.0,
        wants: vec![DocHeads {
            doc: idea_doc.0,
            heads: vec![],
        }],
        max_bytes: sync::MAX_RESPONSE_CONTRIBUTION_BYTES as u32,
    };
    v.insert("sync_fetch", hex::encode(cbor(&fetch)));
    v.insert("sync_in_sync", hex::encode(cbor(&SyncResponse::InSync)));
    Outputs {
        values: v,
        idea_doc,
        idea,
        profile,
    }
}

/// The CBOR encoding of a sync message (the reference node's libp2p codec, cbor4ii, writes the
/// same bytes for these types as ciborium does).
fn cbor<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).expect("CBOR into a Vec");
    out
}

#[test]
fn every_vector_in_the_spec_matches_the_code() {
    let spec = spec_vectors();
    let out = compute(&Inputs::from_spec(&spec));
    let mut wrong = Vec::new();
    for (name, value) in &out.values {
        match spec.get(*name) {
            Some(v) if v == value => {}
            Some(v) => wrong.push(format!("vector.{name}: spec {v}, code {value}")),
            None => wrong.push(format!("vector.{name}: missing from the spec")),
        }
    }
    assert!(
        wrong.is_empty(),
        "PROTOCOL.md and the code disagree:\n{}\n\nComputed block:\n{}",
        wrong.join("\n"),
        render(&out.values)
    );
}

#[test]
fn vectors_are_deterministic() {
    let inp = Inputs::from_spec(&spec_vectors());
    let a = compute(&inp);
    let b = compute(&inp);
    assert_eq!(a.values, b.values);
}

#[test]
fn the_spec_has_no_unknown_vectors() {
    let spec = spec_vectors();
    let out = compute(&Inputs::from_spec(&spec));
    let inputs = [
        "seed",
        "nonce",
        "now_ms",
        "space",
        "idea_salt",
        "idea_title",
        "idea_body",
        "idea_tags",
        "profile_name",
    ];
    // §14's vectors (`v2_*`) are checked by `private_vectors.rs`.
    for name in spec.keys().filter(|n| !n.starts_with("v2_")) {
        assert!(
            inputs.contains(&name.as_str()) || out.values.contains_key(name.as_str()),
            "vector.{name} in PROTOCOL.md is neither an input nor checked here"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The same outputs, recomputed from the rules as PROTOCOL.md states them.
// ---------------------------------------------------------------------------------------------

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn base58btc(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    let mut digits: Vec<u8> = Vec::new(); // little-endian base-58 digits
    for &b in bytes {
        let mut carry = u32::from(b);
        for d in digits.iter_mut() {
            carry += u32::from(*d) << 8;
            *d = (carry % 58) as u8;
            carry /= 58;
        }
        while carry > 0 {
            digits.push((carry % 58) as u8);
            carry /= 58;
        }
    }
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    std::iter::repeat_n('1', zeros)
        .chain(digits.iter().rev().map(|d| ALPHABET[*d as usize] as char))
        .collect()
}

/// The libp2p PeerId of an ed25519 key, as PROTOCOL.md derives it: the protobuf `PublicKey`
/// (`08 01 12 20 ‖ key`) in an identity multihash (`00 24 ‖ …`), written in base58btc.
fn peer_id(author: &AuthorId) -> String {
    let mut b = vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
    b.extend_from_slice(&author.0);
    base58btc(&b)
}

/// The canonical encoding, assembled byte by byte from the layout table in PROTOCOL.md.
fn layout(
    space: &[u8; 16],
    doc: &[u8; 16],
    kind: u8,
    author: &[u8; 32],
    change: &[u8],
    sig: &[u8; 64],
) -> Vec<u8> {
    let mut e = vec![0xa7];
    e.extend_from_slice(&[0x61, b'v', 0x01]);
    e.extend_from_slice(&[0x65]);
    e.extend_from_slice(b"space");
    e.push(0x50);
    e.extend_from_slice(space);
    e.push(0x63);
    e.extend_from_slice(b"doc");
    e.push(0x50);
    e.extend_from_slice(doc);
    e.push(0x64);
    e.extend_from_slice(b"kind");
    e.push(kind);
    e.push(0x66);
    e.extend_from_slice(b"author");
    e.extend_from_slice(&[0x58, 0x20]);
    e.extend_from_slice(author);
    e.push(0x66);
    e.extend_from_slice(b"change");
    let n = change.len();
    match n {
        0..=23 => e.push(0x40 | n as u8),
        24..=0xff => e.extend_from_slice(&[0x58, n as u8]),
        0x100..=0xffff => {
            e.push(0x59);
            e.extend_from_slice(&(n as u16).to_be_bytes());
        }
        _ => unreachable!("changes are at most 57344 bytes"),
    }
    e.extend_from_slice(change);
    e.push(0x63);
    e.extend_from_slice(b"sig");
    e.extend_from_slice(&[0x58, 0x40]);
    e.extend_from_slice(sig);
    e
}

#[test]
fn outputs_follow_the_rules_in_the_spec() {
    let spec = spec_vectors();
    let inp = Inputs::from_spec(&spec);
    let out = compute(&inp);
    let hexv = |name: &str| hex::decode(&out.values[name]).unwrap();

    // Identity: the author id is the RFC 8032 public key of the seed.
    let key = ed25519_dalek::SigningKey::from_bytes(&inp.seed).verifying_key();
    assert_eq!(hexv("author"), key.to_bytes());
    let author = AuthorId(key.to_bytes());

    // Actor: author ‖ nonce.
    assert_eq!(hexv("actor"), [&author.0[..], &inp.nonce[..]].concat());

    // Ids and topic.
    let digest = sha256(&[b"agora/profile-doc/v1", &inp.space.0, &author.0]);
    assert_eq!(PROFILE_DOC_DOMAIN, b"agora/profile-doc/v1");
    assert_eq!(hexv("profile_doc"), &digest[..16]);
    let idea_digest = sha256(&[b"agora/idea-doc/v1", &inp.space.0, &author.0, &inp.salt]);
    assert_eq!(IDEA_DOC_DOMAIN, b"agora/idea-doc/v1");
    assert_eq!(hexv("idea_doc"), &idea_digest[..16]);
    let idea_doc = DocId(idea_digest[..16].try_into().unwrap());
    assert_eq!(
        out.values["topic"],
        format!("agora/v1/space/{}", hex::encode(inp.space.0))
    );

    // The creating change of an idea carries "agora-idea-v1:" and the salt in lowercase hex.
    assert_eq!(IDEA_CREATION_MESSAGE, "agora-idea-v1:");
    let creation_message = format!("agora-idea-v1:{}", hex::encode(inp.salt));
    for (which, c, kind, doc, message) in [
        (
            "idea",
            &out.idea,
            0u8,
            idea_doc,
            Some(creation_message.as_str()),
        ),
        (
            "profile",
            &out.profile,
            1u8,
            DocId(digest[..16].try_into().unwrap()),
            None,
        ),
    ] {
        let change = hexv(&format!("{which}_change"));
        // Change chunk: magic, checksum = first 4 bytes of the hash, type 1, hash over bytes 8...
        assert_eq!(change[..4], [0x85, 0x6f, 0x4a, 0x83]);
        assert_eq!(change[8], 0x01);
        let hash = sha256(&[&change[8..]]);
        assert_eq!(hexv(&format!("{which}_change_hash")), hash);
        assert_eq!(change[4..8], hash[..4]);
        let parsed = Change::from_bytes(change.clone()).unwrap();
        assert_eq!(parsed.actor_id().to_bytes(), hexv("actor"));
        assert_eq!(parsed.timestamp(), inp.now_ms.div_euclid(1000));
        assert_eq!(parsed.seq(), 1);
        assert!(parsed.deps().is_empty());
        assert_eq!(parsed.message(), message);

        // Signed message: domain ‖ space ‖ doc ‖ kind ‖ change hash, 87 bytes.
        assert_eq!(SIGNING_DOMAIN, b"agora-contribution-v1\0");
        let msg = [
            &b"agora-contribution-v1\0"[..],
            &inp.space.0,
            &doc.0,
            &[kind],
            &hash,
        ]
        .concat();
        assert_eq!(msg.len(), 87);
        assert_eq!(hexv(&format!("{which}_signing_message")), msg);
        let sig: [u8; 64] = hexv(&format!("{which}_signature")).try_into().unwrap();
        VerifyingKey::from_bytes(&author.0)
            .unwrap()
            .verify_strict(&msg, &Signature::from_bytes(&sig))
            .expect("the vector signature verifies strictly");

        // Wire encoding: the layout table; message id: SHA-256 of it.
        let wire = layout(&inp.space.0, &doc.0, kind, &author.0, &change, &sig);
        assert_eq!(hexv(&format!("{which}_contribution")), wire);
        assert_eq!(hexv(&format!("{which}_message_id")), sha256(&[&wire]));

        // And the receiver accepts it.
        let decoded = Contribution::decode(&wire).unwrap();
        assert_eq!(&decoded, c);
        decoded.verify().expect("vector verifies");
    }

    // The idea reads back as drafted, attributed to the author.
    let mut d = AutoCommit::new();
    d.apply_changes([Change::from_bytes(hexv("idea_change")).unwrap()])
        .unwrap();
    let read = idea::read_idea(&d, inp.space, idea_doc).unwrap();
    let draft = inp.draft.validated().unwrap();
    assert_eq!(read.title, draft.title);
    assert_eq!(read.body, draft.body);
    assert_eq!(read.tags, draft.tags);
    assert_eq!(read.author, author);
    assert_eq!(read.created, inp.now_ms);
    assert_eq!(read.status, Status::Open);
    assert!(read.comments.is_empty() && read.voters.is_empty());
    // The root `salt` key holds the salt in lowercase hex (informational: receivers check the
    // change message, not this key).
    let (salt_value, _) = d.get(ROOT, "salt").unwrap().unwrap();
    assert_eq!(
        salt_value.as_str().map(str::to_string),
        Some(hex::encode(inp.salt))
    );

    let mut p = AutoCommit::new();
    p.apply_changes([Change::from_bytes(hexv("profile_change")).unwrap()])
        .unwrap();
    let profile_doc = DocId(digest[..16].try_into().unwrap());
    assert_eq!(
        idea::read_profile(&p, &inp.space, &profile_doc),
        Some((author, inp.display_name.clone()))
    );
}

#[test]
fn peer_id_derivation_matches_the_known_libp2p_form() {
    // Every libp2p ed25519 PeerId starts with "12D3KooW" (the fixed 6-byte prefix); the exact
    // value for the vector seed's key was computed with libp2p-identity 0.3
    // (`Keypair::ed25519_from_bytes(seed).public().to_peer_id()`). A node's own PeerId is that
    // of its transport seed (PROTOCOL 2.2); the node crate checks that layout against libp2p.
    let spec = spec_vectors();
    assert!(spec["peer_id"].starts_with("12D3KooW"));
    assert_eq!(base58btc(&[0, 0, 1]), "112");
    assert_eq!(base58btc(b"hello world"), "StV1DL6CwTryKyV");
}

#[test]
fn wire_layout_holds_at_every_length_boundary() {
    let id = Identity::from_seed([7; 32]);
    for n in [0usize, 1, 23, 24, 255, 256, 4096, MAX_CHANGE_BYTES] {
        let c = Contribution {
            space: SpaceId([1; 16]),
            doc: DocId([2; 16]),
            kind: DocKind::Profile,
            author: id.author(),
            change: vec![0xab; n],
            signature: [3; 64],
        };
        let e = c.encode();
        assert_eq!(
            e,
            layout(&[1; 16], &[2; 16], 1, &id.author().0, &c.change, &[3; 64])
        );
        // Shape-valid encodings decode to the same fields (decode does not parse the change).
        assert_eq!(Contribution::decode(&e).unwrap(), c);
        assert_eq!(
            e.len(),
            172 + n
                + if n < 24 {
                    1
                } else if n < 256 {
                    2
                } else {
                    3
                }
        );
    }
    let too_big = Contribution {
        space: SpaceId([1; 16]),
        doc: DocId([2; 16]),
        kind: DocKind::Idea,
        author: id.author(),
        change: vec![0; MAX_CHANGE_BYTES + 1],
        signature: [3; 64],
    };
    assert!(matches!(
        Contribution::decode(&too_big.encode()),
        Err(Rejection::BadChange(_))
    ));
}

#[test]
fn every_rejection_code_is_documented() {
    let all = [
        Rejection::TooLarge { len: 0, max: 0 },
        Rejection::Malformed(String::new()),
        Rejection::NonCanonical,
        Rejection::UnsupportedVersion(2),
        Rejection::UnknownKind(2),
        Rejection::BadChange(String::new()),
        Rejection::ActorNotSigner,
        Rejection::NotProfileOwner,
        Rejection::NotIdeaCreator,
        Rejection::ProtectedField(String::new()),
        Rejection::ForeignKey,
        Rejection::WrongKind(String::new()),
        Rejection::BadSignature,
        Rejection::UnknownSpace,
        Rejection::WrongTopic,
        Rejection::Inapplicable(String::new()),
    ];
    for r in all {
        assert!(
            SPEC.contains(&format!("`{}`", r.code())),
            "rejection code {} is not in PROTOCOL.md",
            r.code()
        );
    }
}

#[test]
fn change_chunk_rules_in_the_spec_are_enforced() {
    let spec = spec_vectors();
    let inp = Inputs::from_spec(&spec);
    let out = compute(&inp);
    let id = Identity::from_seed(inp.seed);
    let good = out.idea.clone();

    // A wrong checksum: Automerge would parse it, the protocol refuses it.
    let mut bad = good.clone();
    bad.change[4] ^= 0x01;
    let bad = Contribution {
        signature: id.sign(&signing_message(
            &bad.space,
            &bad.doc,
            bad.kind,
            &Change::from_bytes(bad.change.clone()).unwrap().hash(),
        )),
        ..bad
    };
    assert!(matches!(bad.verify(), Err(Rejection::BadChange(_))));

    // A compressed chunk of the same change (same hash, so the signature is still valid).
    let mut change = Change::from_bytes(good.change.clone()).unwrap();
    let compressed = change.bytes().to_vec();
    assert_eq!(
        compressed[8], 0x02,
        "the vector change is large enough to compress"
    );
    assert_eq!(
        Change::from_bytes(compressed.clone()).unwrap().hash(),
        change.hash()
    );
    let bad = Contribution {
        change: compressed,
        ..good.clone()
    };
    assert!(matches!(bad.verify(), Err(Rejection::BadChange(_))));
    good.verify().unwrap();
}

#[test]
fn the_vector_idea_is_bound_to_its_creator() {
    let spec = spec_vectors();
    let inp = Inputs::from_spec(&spec);
    let out = compute(&inp);
    let alice = Identity::from_seed(inp.seed);
    let change = Change::from_bytes(out.idea.change.clone()).unwrap();

    // Alice's own creating change, signed by her for any other document id: not_idea_creator.
    let elsewhere =
        Contribution::sign(&alice, inp.space, DocId([0x60; 16]), DocKind::Idea, &change);
    assert_eq!(elsewhere.verify().unwrap_err(), Rejection::NotIdeaCreator);
    // ... or for the same document id in another space.
    let moved = Contribution::sign(
        &alice,
        SpaceId([9; 16]),
        out.idea_doc,
        DocKind::Idea,
        &change,
    );
    assert_eq!(moved.verify().unwrap_err(), Rejection::NotIdeaCreator);

    // Someone else creating an idea with the same salt, under Alice's idea id: not_idea_creator.
    let mallory = Identity::from_seed([0xee; 32]);
    let mut d = AutoCommit::new().with_actor(actor_for(&mallory.author(), &inp.nonce));
    let forged =
        idea::create_idea(&mut d, &inp.draft, &mallory.author(), &inp.salt, inp.now_ms).unwrap();
    let forged = Contribution::sign(&mallory, inp.space, out.idea_doc, DocKind::Idea, &forged);
    assert_eq!(forged.verify().unwrap_err(), Rejection::NotIdeaCreator);

    // The same creation under Mallory's own bound id is fine.
    let own = DocId::idea(&inp.space, &mallory.author(), &inp.salt);
    let mut d = AutoCommit::new().with_actor(actor_for(&mallory.author(), &inp.nonce));
    let ch =
        idea::create_idea(&mut d, &inp.draft, &mallory.author(), &inp.salt, inp.now_ms).unwrap();
    Contribution::sign(&mallory, inp.space, own, DocKind::Idea, &ch)
        .verify()
        .unwrap();
}

#[test]
fn sync_vectors_follow_the_rules_in_the_spec() {
    let spec = spec_vectors();
    let inp = Inputs::from_spec(&spec);
    let out = compute(&inp);
    let hexv = |name: &str| hex::decode(&out.values[name]).unwrap();
    let idea_doc = hexv("idea_doc");
    let profile_doc = hexv("profile_doc");
    let idea_hash = hexv("idea_change_hash");
    let profile_hash = hexv("profile_change_hash");

    // Digest: SHA-256 of the domain, then per document in ascending id order:
    // doc ‖ number of heads (u32 big-endian) ‖ heads in ascending order.
    assert_eq!(sync::DIGEST_DOMAIN, b"agora-sync-digest-v1\0");
    let mut docs = [
        (idea_doc.clone(), idea_hash.clone()),
        (profile_doc.clone(), profile_hash.clone()),
    ];
    docs.sort();
    let mut parts: Vec<&[u8]> = vec![b"agora-sync-digest-v1\0"];
    let one = 1u32.to_be_bytes();
    for (doc, head) in &docs {
        parts.extend([&doc[..], &one[..], &head[..]]);
    }
    let digest = sha256(&parts);
    assert_eq!(hexv("sync_digest"), digest);

    // Messages: CBOR maps whose first entry is "t" (the message type), as the tables in 9.2 say.
    let text = |s: &str| [&[0x60 + s.len() as u8][..], s.as_bytes()].concat();
    let bytes = |b: &[u8]| {
        let head: Vec<u8> = match b.len() {
            0..=23 => vec![0x40 + b.len() as u8],
            24..=255 => vec![0x58, b.len() as u8],
            _ => unreachable!(),
        };
        [&head[..], b].concat()
    };
    let summary = [
        &[0xa4][..],
        &text("t"),
        &text("summary"),
        &text("v"),
        &[0x01],
        &text("space"),
        &bytes(&inp.space.0),
        &text("digest"),
        &bytes(&digest),
    ]
    .concat();
    assert_eq!(hexv("sync_summary"), summary);

    let mut heads = vec![0xa2];
    heads.extend(text("t"));
    heads.extend(text("heads"));
    heads.extend(text("docs"));
    heads.push(0x82);
    for (doc, head) in &docs {
        heads.push(0xa2);
        heads.extend(text("doc"));
        heads.extend(bytes(doc));
        heads.extend(text("heads"));
        heads.push(0x81);
        heads.extend(bytes(head));
    }
    assert_eq!(hexv("sync_heads"), heads);

    let mut fetch = vec![0xa5];
    fetch.extend(text("t"));
    fetch.extend(text("fetch"));
    fetch.extend(text("v"));
    fetch.push(0x01);
    fetch.extend(text("space"));
    fetch.extend(bytes(&inp.space.0));
    fetch.extend(text("wants"));
    fetch.push(0x81);
    fetch.push(0xa2);
    fetch.extend(text("doc"));
    fetch.extend(bytes(&idea_doc));
    fetch.extend(text("heads"));
    fetch.push(0x80);
    fetch.extend(text("max_bytes"));
    fetch.push(0x1a);
    fetch.extend(2_097_152u32.to_be_bytes());
    assert_eq!(sync::MAX_RESPONSE_CONTRIBUTION_BYTES, 2_097_152);
    assert_eq!(hexv("sync_fetch"), fetch);

    assert_eq!(
        hexv("sync_in_sync"),
        [&[0xa1][..], &text("t"), &text("in_sync")].concat()
    );

    // And they decode to what they encode.
    let req: SyncRequest = ciborium::from_reader(&summary[..]).unwrap();
    assert_eq!(req.space(), inp.space);
    assert_eq!(req.check(), Ok(()));
    let req: SyncRequest = ciborium::from_reader(&fetch[..]).unwrap();
    assert_eq!(req.check(), Ok(()));
    let resp: SyncResponse = ciborium::from_reader(&heads[..]).unwrap();
    assert!(matches!(resp, SyncResponse::Heads { ref docs } if docs.len() == 2));
    assert_eq!(sync::SYNC_PROTOCOL, "/agora/sync/1");
}

#[test]
fn the_annotated_idea_encoding_in_the_spec_matches_the_vectors() {
    // Section 5.3 shows the idea vector in diagnostic notation and annotated; those excerpts are
    // not `vector.` lines, so check them here.
    let spec = spec_vectors();
    let out = compute(&Inputs::from_spec(&spec));
    let v = &out.values;
    let change = &v["idea_change"];
    let n = change.len() / 2;
    let excerpts = [
        format!("\"doc\": h'{}'", v["idea_doc"]),
        format!("\"change\": h'{}…',   / {n} bytes /", &change[..32]),
        format!("\"sig\": h'{}'", v["idea_signature"]),
        format!("50 {}     bytes(16)", v["idea_doc"]),
        format!("59 {n:04x} {}…", &change[..32]),
        format!("bytes({n})"),
        format!("58 40 {}", v["idea_signature"]),
        format!("`{}` (checksum", &change[8..16]),
        format!("`{}` ({} bytes follow)", &change[18..22], n - 11),
    ];
    for e in excerpts {
        assert!(SPEC.contains(&e), "PROTOCOL.md 5.3 lacks {e:?}");
    }
}
