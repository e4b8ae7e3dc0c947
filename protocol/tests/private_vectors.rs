//! The test vectors of `docs/PROTOCOL.md` §14 (private spaces, version 2), recomputed from their
//! inputs: key derivations, a device key, the membership operations of a small space (creation,
//! invitation, admission, rotation), their resolution, a ticket, and a sealed contribution.
//!
//! Every random byte is an input: the HPKE ephemeral key of a wrap is `DeriveKeyPair(ikm)` of
//! RFC 9180 with the `v2_*_ikm` input, and nonces and salts are given. So another
//! implementation can reproduce every byte, and must at least open every wrap and seal.
//!
//! If a vector changes on purpose, run `cargo test -p agora-protocol --test private_vectors` and
//! paste the block it prints into §14.10.

use agora_protocol::identity::Identity;
use agora_protocol::ids::{AuthorId, DocId, SpaceId};
use agora_protocol::keys::{self, DeviceKey, EpochSecret, KeyId, Wrap};
use agora_protocol::membership::{
    self, build, name_aad, redeem_message, resolve, seal_aad, Op, OpBody, Role, Rotation,
    SealedBytes, VerifiedOp, WrapTo,
};
use agora_protocol::sealed::{sealed_aad, signing_message, Envelope, Plaintext};
use agora_protocol::ticket::Ticket;
use agora_protocol::{idea, DocKind};
use hpke::rand_core::{TryCryptoRng, TryRng};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::convert::Infallible;

mod common;
use common::{render, spec_vectors};

/// A "random" source that yields exactly the given bytes (for HPKE's ephemeral key material).
struct Fixed(Vec<u8>, usize);

impl TryRng for Fixed {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for b in dst {
            *b = *self
                .0
                .get(self.1)
                .expect("the vector supplies enough bytes");
            self.1 += 1;
        }
        Ok(())
    }
}

impl TryCryptoRng for Fixed {}

fn hex_in<const N: usize>(spec: &BTreeMap<String, String>, name: &str) -> [u8; N] {
    let text = spec
        .get(name)
        .unwrap_or_else(|| panic!("PROTOCOL.md lacks the input vector.{name}"));
    hex::decode(text)
        .expect("hex")
        .try_into()
        .expect("documented length")
}

/// The inputs of §14.10 (the identity seed, nonce, time and idea of §12.1 are reused).
const INPUTS: &[&str] = &[
    "seed",
    "nonce",
    "now_ms",
    "idea_salt",
    "idea_title",
    "idea_body",
    "idea_tags",
    "v2_device_seed",
    "v2_space_salt",
    "v2_root_secret",
    "v2_root_wrap_ikm",
    "v2_name",
    "v2_name_nonce",
    "v2_ticket_secret",
    "v2_expires",
    "v2_newcomer_seed",
    "v2_newcomer_device_seed",
    "v2_at",
    "v2_admit_wrap_ikm",
    "v2_epoch_secret",
    "v2_seal_nonce",
    "v2_rotate_wrap_ikm",
    "v2_addr",
    "v2_content_nonce",
    "v2_op_nonce",
    "v2_hello_nonce",
];

fn wrap_with(
    secret: &EpochSecret,
    space: &SpaceId,
    to: &AuthorId,
    device: &[u8; 32],
    ikm: [u8; 32],
) -> Wrap {
    keys::wrap(secret, space, to, device, &mut Fixed(ikm.to_vec(), 0)).expect("valid key")
}

fn compute(spec: &BTreeMap<String, String>) -> (BTreeMap<&'static str, String>, Vec<VerifiedOp>) {
    let json = |name: &str| -> String { serde_json::from_str(&spec[name]).expect("a JSON string") };
    let owner = Identity::from_seed(hex_in(spec, "seed"));
    let device = DeviceKey::from_seed(&hex_in(spec, "v2_device_seed"));
    let salt: [u8; 16] = hex_in(spec, "v2_space_salt");
    let space = membership::space_id(&owner.author(), &salt);
    let root = EpochSecret::from_bytes(hex_in(spec, "v2_root_secret"));
    let mut v = BTreeMap::new();
    v.insert("v2_space", space.to_hex());
    v.insert("v2_device_public", hex::encode(device.public()));
    v.insert("v2_root_key_id", root.key_id().to_hex());
    v.insert("v2_root_content_key", hex::encode(content_key_bytes(&root)));
    v.insert("v2_root_seal_key", hex::encode(seal_key_bytes(&root)));
    v.insert("v2_topic", root.topic());
    v.insert("v2_locator", hex::encode(root.locator()));

    // Creation.
    let name_nonce: [u8; 24] = hex_in(spec, "v2_name_nonce");
    let name = SealedBytes {
        key_id: root.key_id(),
        nonce: name_nonce,
        ct: keys::seal(
            &root.content_key(),
            &name_nonce,
            &name_aad(&space, &root.key_id()),
            json("v2_name").as_bytes(),
        ),
    };
    let create_wrap = wrap_with(
        &root,
        &space,
        &owner.author(),
        &device.public(),
        hex_in(spec, "v2_root_wrap_ikm"),
    );
    v.insert("v2_create_wrap_enc", hex::encode(create_wrap.enc));
    let create = Op::sign(
        &owner,
        space,
        vec![],
        OpBody::Create {
            salt,
            device: device.public(),
            key_id: root.key_id(),
            wrap: create_wrap,
            name,
        },
    )
    .unwrap();
    v.insert("v2_create", hex::encode(create.bytes()));
    v.insert("v2_create_id", create.id().to_hex());

    // Invitation.
    let ticket_key = Identity::from_seed(hex_in(spec, "v2_ticket_secret"));
    let expires: u64 = spec["v2_expires"].parse().expect("integer");
    let invite = Op::sign(
        &owner,
        space,
        vec![create.id()],
        OpBody::Invite {
            key: ticket_key.author().0,
            role: Role::Member,
            expires,
            uses: 1,
        },
    )
    .unwrap();
    v.insert("v2_invite_key", ticket_key.author().to_hex());
    v.insert("v2_invite", hex::encode(invite.bytes()));
    v.insert("v2_invite_id", invite.id().to_hex());
    let ticket = Ticket {
        space,
        invite: invite.id(),
        secret: ticket_key.seed(),
        addrs: vec![json("v2_addr")],
    };
    v.insert("v2_ticket", ticket.encode());

    // Admission of the newcomer, carried by the owner.
    let newcomer = Identity::from_seed(hex_in(spec, "v2_newcomer_seed"));
    let newcomer_device = DeviceKey::from_seed(&hex_in(spec, "v2_newcomer_device_seed"));
    let at: u64 = spec["v2_at"].parse().expect("integer");
    let r = build::redeem(
        &space,
        invite.id(),
        &ticket_key,
        &newcomer,
        &newcomer_device,
    );
    v.insert("v2_newcomer", newcomer.author().to_hex());
    v.insert(
        "v2_redeem_message",
        hex::encode(redeem_message(
            &space,
            &invite.id(),
            &newcomer.author(),
            &newcomer_device.public(),
        )),
    );
    let admit_wrap = wrap_with(
        &root,
        &space,
        &newcomer.author(),
        &newcomer_device.public(),
        hex_in(spec, "v2_admit_wrap_ikm"),
    );
    let admit = Op::sign(
        &owner,
        space,
        vec![invite.id()],
        OpBody::Admit {
            invite: invite.id(),
            member: r.member,
            device: r.device,
            at,
            redeem: r.redeem,
            proof: r.proof,
            key_id: root.key_id(),
            wrap: admit_wrap,
        },
    )
    .unwrap();
    v.insert("v2_admit", hex::encode(admit.bytes()));
    // The admission as gossip carries it: sealed under the epoch of the topic (the root's).
    let sealed_admit = Envelope::seal_bytes(
        &space,
        root.key_id(),
        &root.content_key().cipher(),
        admit.bytes(),
        hex_in(spec, "v2_op_nonce"),
    );
    v.insert("v2_sealed_admit", hex::encode(sealed_admit.encode()));
    v.insert("v2_admit_id", admit.id().to_hex());

    // A rotation by the owner: the root sealed under the new epoch, which is wrapped to both.
    let epoch = EpochSecret::from_bytes(hex_in(spec, "v2_epoch_secret"));
    let seal_nonce: [u8; 24] = hex_in(spec, "v2_seal_nonce");
    let ikm: [u8; 64] = hex_in(spec, "v2_rotate_wrap_ikm");
    let mut wraps = vec![
        WrapTo {
            to: owner.author(),
            wrap: wrap_with(
                &epoch,
                &space,
                &owner.author(),
                &device.public(),
                ikm[..32].try_into().unwrap(),
            ),
        },
        WrapTo {
            to: newcomer.author(),
            wrap: wrap_with(
                &epoch,
                &space,
                &newcomer.author(),
                &newcomer_device.public(),
                ikm[32..].try_into().unwrap(),
            ),
        },
    ];
    wraps.sort_by_key(|w| w.to);
    let rotation = Rotation {
        key_id: epoch.key_id(),
        seals: vec![SealedBytes {
            key_id: root.key_id(),
            nonce: seal_nonce,
            ct: keys::seal(
                &epoch.seal_prev_key(),
                &seal_nonce,
                &seal_aad(&space, &epoch.key_id(), &root.key_id()),
                root.as_bytes(),
            ),
        }],
        wraps,
    };
    let rotate = Op::sign(&owner, space, vec![admit.id()], OpBody::Rotate { rotation }).unwrap();
    v.insert("v2_epoch_key_id", epoch.key_id().to_hex());
    v.insert("v2_rotate", hex::encode(rotate.bytes()));
    v.insert("v2_rotate_id", rotate.id().to_hex());

    // The resolved membership.
    let ops = vec![create, invite, admit, rotate];
    let m = resolve(space, &ops).expect("resolves");
    let members: Vec<String> = m
        .members
        .iter()
        .map(|(a, x)| format!("{}:{}", a.to_hex(), x.role.name()))
        .collect();
    v.insert("v2_members", members.join(","));
    v.insert("v2_current", m.current.to_hex());

    // A sealed contribution: the idea of §12.3, by the newcomer, under the new epoch.
    let salt: [u8; 16] = hex_in(spec, "idea_salt");
    let nonce: [u8; 16] = hex_in(spec, "nonce");
    let doc_id = DocId::idea(&space, &newcomer.author(), &salt);
    let mut doc = agora_protocol::automerge::AutoCommit::new()
        .with_actor(idea::actor_for(&newcomer.author(), &nonce));
    let draft = idea::IdeaDraft {
        title: json("idea_title"),
        body: json("idea_body"),
        tags: serde_json::from_str(&spec["idea_tags"]).expect("JSON list"),
    };
    let now_ms: i64 = spec["now_ms"].parse().expect("integer");
    let change = idea::create_idea(&mut doc, &draft, &newcomer.author(), &salt, now_ms).unwrap();
    let content_nonce: [u8; 24] = hex_in(spec, "v2_content_nonce");
    let envelope = Envelope::seal(
        &newcomer,
        &space,
        epoch.key_id(),
        &epoch.content_key().cipher(),
        &doc_id,
        DocKind::Idea,
        change.raw_bytes(),
        content_nonce,
    );
    v.insert("v2_idea_doc", doc_id.to_hex());
    v.insert("v2_idea_change", hex::encode(change.raw_bytes()));
    v.insert(
        "v2_sealed_aad",
        hex::encode(sealed_aad(&space, &epoch.key_id())),
    );
    v.insert(
        "v2_content_signing_message",
        hex::encode(signing_message(
            &space,
            &epoch.key_id(),
            &newcomer.author(),
            &doc_id,
            DocKind::Idea,
            change.raw_bytes(),
        )),
    );
    let signed = Plaintext::sign(
        &newcomer,
        &space,
        &epoch.key_id(),
        doc_id,
        DocKind::Idea,
        change.raw_bytes().to_vec(),
    );
    v.insert("v2_contribution_plaintext", hex::encode(signed.encode()));
    v.insert("v2_contribution", hex::encode(envelope.encode()));

    // Transport keys (14.9): each node's libp2p key, derived from its identity seed; its peer
    // id's bytes are the identity multihash of the protobuf-encoded ed25519 public key.
    let transport_public = |who: &Identity| Identity::from_seed(keys::transport_seed(who)).author();
    v.insert(
        "v2_transport_seed",
        hex::encode(keys::transport_seed(&owner)),
    );
    v.insert("v2_transport_public", transport_public(&owner).to_hex());
    let peer_id = |who: &Identity| {
        [
            &[0x00, 0x24, 0x08, 0x01, 0x12, 0x20][..],
            &transport_public(who).0,
        ]
        .concat()
    };
    let (from, to) = (peer_id(&newcomer), peer_id(&owner));
    v.insert("v2_hello_from", hex::encode(&from));
    v.insert("v2_hello_to", hex::encode(&to));
    // The newcomer's hello to the owner, under the rotation's epoch.
    let hello_nonce: [u8; 24] = hex_in(spec, "v2_hello_nonce");
    v.insert(
        "v2_hello_message",
        hex::encode(
            agora_protocol::hello::hello_message(
                &space,
                &epoch.key_id(),
                &newcomer.author(),
                &from,
                &to,
            )
            .unwrap(),
        ),
    );
    let ct = agora_protocol::hello::seal(
        &newcomer,
        &space,
        &epoch.key_id(),
        &epoch.content_key().cipher(),
        &from,
        &to,
        &hello_nonce,
    )
    .unwrap();
    let mut locator = [0u8; 16];
    locator.copy_from_slice(&hkdf(&root, b"agora/v2/locator")[..16]);
    let hello = agora_protocol::sync::SyncRequest::Hello {
        v: 2,
        space: locator,
        key: epoch.key_id().0,
        nonce: hello_nonce,
        ct: ct.into(),
    };
    v.insert("v2_hello", hex::encode(hello.encode()));
    (v, ops)
}

/// The content key, recomputed by HKDF-SHA256 as §14.2 states it (the crate keeps it opaque).
fn hkdf(secret: &EpochSecret, info: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    hkdf::Hkdf::<Sha256>::new(Some(b"agora/v2"), secret.as_bytes())
        .expand(info, &mut out)
        .unwrap();
    out
}

fn content_key_bytes(secret: &EpochSecret) -> [u8; 32] {
    hkdf(secret, b"agora/v2/content")
}

fn seal_key_bytes(secret: &EpochSecret) -> [u8; 32] {
    hkdf(secret, b"agora/v2/seal-prev")
}

#[test]
fn every_version_2_vector_in_the_spec_matches_the_code() {
    let spec = spec_vectors();
    let (out, _) = compute(&spec);
    let mut wrong = Vec::new();
    for (name, value) in &out {
        match spec.get(*name) {
            Some(v) if v == value => {}
            Some(v) => wrong.push(format!("vector.{name}: spec {v}, code {value}")),
            None => wrong.push(format!("vector.{name}: missing from the spec")),
        }
    }
    for name in spec.keys().filter(|n| n.starts_with("v2_")) {
        if !INPUTS.contains(&name.as_str()) && !out.contains_key(name.as_str()) {
            wrong.push(format!("vector.{name}: neither an input nor checked"));
        }
    }
    assert!(
        wrong.is_empty(),
        "PROTOCOL.md §14 and the code disagree:\n{}\n\nComputed block:\n{}",
        wrong.join("\n"),
        render(&out)
    );
}

/// What a second implementation does with the vectors: decode them, verify them, open them.
#[test]
fn the_version_2_vectors_verify_and_open_as_the_spec_says() {
    let spec = spec_vectors();
    let (out, _) = compute(&spec);
    let bytes = |name: &str| hex::decode(&out[name]).unwrap();
    let ops: Vec<VerifiedOp> = ["v2_create", "v2_invite", "v2_admit", "v2_rotate"]
        .iter()
        .map(|n| Op::verify(&bytes(n)).expect("each operation verifies"))
        .collect();
    // The admission as gossip carried it opens, under the root epoch's content key (recomputed
    // by HKDF from the root secret) and the associated data of §14.9, to the admission itself.
    {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        let root = EpochSecret::from_bytes(hex_in(&spec, "v2_root_secret"));
        let sealed = bytes("v2_sealed_admit");
        let parsed = Envelope::decode(&sealed).expect("decodes");
        assert_eq!(parsed.key_id, root.key_id());
        let space = ops[0].op().space;
        let aad = [b"agora-sealed-v2\0".as_slice(), &space.0, &root.key_id().0].concat();
        // XChaCha20-Poly1305 under an epoch's content key, as any AEAD library does it.
        let open = |secret: &EpochSecret, nonce: [u8; 24], ct: &[u8], aad: &[u8]| {
            chacha20poly1305::XChaCha20Poly1305::new(&content_key_bytes(secret).into())
                .decrypt(
                    &chacha20poly1305::XNonce::from(nonce),
                    Payload { msg: ct, aad },
                )
                .expect("opens")
        };
        assert_eq!(
            open(&root, parsed.nonce, &parsed.ct, &aad),
            bytes("v2_admit")
        );
        // The sealed contribution opens the same way, under the rotation's epoch, to the signed
        // contribution, whose author and signature only a member sees (§14.6).
        let epoch = EpochSecret::from_bytes(hex_in(&spec, "v2_epoch_secret"));
        let sealed = Envelope::decode(&bytes("v2_contribution")).expect("decodes");
        assert_eq!(
            [b"agora-sealed-v2\0".as_slice(), &space.0, &epoch.key_id().0].concat(),
            bytes("v2_sealed_aad")
        );
        let plain = open(&epoch, sealed.nonce, &sealed.ct, &bytes("v2_sealed_aad"));
        assert_eq!(plain, bytes("v2_contribution_plaintext"));
        let signed = Plaintext::decode(&plain).expect("a signed contribution");
        let key = ed25519_dalek::VerifyingKey::from_bytes(&signed.author.0).unwrap();
        let message = bytes("v2_content_signing_message");
        let hash: [u8; 32] = Sha256::digest(&signed.change).into();
        assert!(message.starts_with(b"agora-contribution-v2\0"));
        assert!(message.ends_with(&hash));
        key.verify_strict(
            &message,
            &ed25519_dalek::Signature::from_bytes(&signed.signature),
        )
        .expect("the author's signature");
        assert!(!bytes("v2_contribution")
            .windows(32)
            .any(|w| w == signed.author.0));
        // The hello opens under the same epoch to the newcomer's author and a signature over the
        // hello message, which binds both transport ids (§14.9).
        let Ok(agora_protocol::sync::SyncRequest::Hello { key, nonce, ct, .. }) =
            agora_protocol::sync::SyncRequest::decode(&bytes("v2_hello"))
        else {
            panic!("a hello request")
        };
        assert_eq!(key, epoch.key_id().0);
        let aad = [b"agora-hello-v2\0".as_slice(), &space.0, &key].concat();
        let plain = open(&epoch, nonce, &ct, &aad);
        let mut r = plain.as_slice();
        let mut take = |n: usize| {
            let (head, rest) = r.split_at(n);
            r = rest;
            head.to_vec()
        };
        assert_eq!(take(1), [0xa2]);
        assert_eq!(take(7), b"\x66author");
        assert_eq!(take(2), [0x58, 0x20]);
        let author: [u8; 32] = take(32).try_into().unwrap();
        assert_eq!(take(4), b"\x63sig");
        assert_eq!(take(2), [0x58, 0x40]);
        let sig: [u8; 64] = take(64).try_into().unwrap();
        // The signed message, rebuilt from §14.9: domain, space id, key id, author, then each
        // transport id after its length.
        let message = [
            b"agora-hello-v2\0".as_slice(),
            &space.0,
            &key,
            &author,
            &[38],
            &bytes("v2_hello_from"),
            &[38],
            &bytes("v2_hello_to"),
        ]
        .concat();
        assert_eq!(message, bytes("v2_hello_message"));
        ed25519_dalek::VerifyingKey::from_bytes(&author)
            .unwrap()
            .verify_strict(&message, &ed25519_dalek::Signature::from_bytes(&sig))
            .expect("the newcomer's signature");
    }
    // An operation id is SHA-256 of the domain and the map without "sig" (§14.3).
    for op in &ops {
        let enc = op.bytes();
        // The signature entry is the last: "sig" (0x63 0x73 0x69 0x67), 0x58 0x40, 64 bytes.
        let sig_entry = 4 + 2 + 64;
        let mut unsigned = enc[..enc.len() - sig_entry].to_vec();
        assert_eq!(unsigned[0], 0xa7, "seven entries with the signature");
        unsigned[0] = 0xa6;
        let id: [u8; 32] = Sha256::new()
            .chain_update(b"agora-membership-op-v2\0")
            .chain_update(&unsigned)
            .finalize()
            .into();
        assert_eq!(op.id().0, id);
    }
    let space: SpaceId = out["v2_space"].parse().unwrap();
    let owner = Identity::from_seed(hex_in(&spec, "seed"));
    let device = DeviceKey::from_seed(&hex_in(&spec, "v2_device_seed"));
    let newcomer = Identity::from_seed(hex_in(&spec, "v2_newcomer_seed"));
    let newcomer_device = DeviceKey::from_seed(&hex_in(&spec, "v2_newcomer_device_seed"));
    let root_id: KeyId = out["v2_root_key_id"].parse().unwrap();
    // The owner opens its own wrap in the creation; the newcomer the wrap in its admission.
    let OpBody::Create { wrap, name, .. } = &ops[0].op().body else {
        panic!()
    };
    let root = keys::unwrap(wrap, &space, &root_id, &owner.author(), &device).unwrap();
    assert_eq!(build::open_name(&space, &root, name).unwrap(), "Ops team");
    let OpBody::Admit { wrap, .. } = &ops[2].op().body else {
        panic!()
    };
    let again = keys::unwrap(wrap, &space, &root_id, &newcomer.author(), &newcomer_device).unwrap();
    assert_eq!(again, root);
    // The rotation's secret opens for both, and seals the root.
    let OpBody::Rotate { rotation } = &ops[3].op().body else {
        panic!()
    };
    let epoch_for_newcomer = rotation
        .wraps
        .iter()
        .find(|w| w.to == newcomer.author())
        .unwrap();
    let epoch = keys::unwrap(
        &epoch_for_newcomer.wrap,
        &space,
        &rotation.key_id,
        &newcomer.author(),
        &newcomer_device,
    )
    .unwrap();
    assert_eq!(
        build::open_seals(&space, rotation, &epoch),
        vec![root.clone()]
    );
    // The sealed contribution opens to the idea of §12.3.
    let envelope = Envelope::decode(&bytes("v2_contribution")).unwrap();
    let opened = envelope
        .verify_and_open(&space, &epoch.content_key().cipher())
        .unwrap();
    assert_eq!(opened.doc.to_hex(), out["v2_idea_doc"]);
    assert_eq!(
        hex::encode(opened.change.raw_bytes()),
        out["v2_idea_change"]
    );
    // The ticket decodes to the invitation and its key.
    let ticket = Ticket::decode(&out["v2_ticket"]).unwrap();
    assert_eq!(ticket.invite.to_hex(), out["v2_invite_id"]);
    assert_eq!(ticket.invite_key().author().to_hex(), out["v2_invite_key"]);
    // The space id is SHA-256("agora/space/v2" ‖ owner ‖ salt), cut to 16 bytes.
    let salt: [u8; 16] = hex_in(&spec, "v2_space_salt");
    let digest = Sha256::new()
        .chain_update(b"agora/space/v2")
        .chain_update(owner.author().0)
        .chain_update(salt)
        .finalize();
    assert_eq!(space.0[..], digest[..16]);
    // The topic and the locator are HKDF of the root (§14.2).
    assert_eq!(
        out["v2_topic"],
        format!("agora/v2/{}", hex::encode(hkdf(&root, b"agora/v2/topic")))
    );
}
