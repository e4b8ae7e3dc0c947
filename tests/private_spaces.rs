//! Private spaces between real nodes on loopback (real libp2p, real sled): a newcomer admitted
//! by a member, membership operations carried by gossip on the space's derived topic, and an
//! outsider who knows the space id and listens on every topic it can name hearing nothing of it.
//!
//! The join's request travels through the test here (the member's `AdmitRedeem` and the
//! newcomer's `JoinPrivate` are the two halves of the exchange that `/agora/join/2` will carry).

use agora_node::service::{Command, Reply};
use agora_protocol::membership::Role;
use agora_protocol::SpaceId;
use agora_testkit::node::{shutdown_all, spawn_nodes, wait_until};
use agora_testkit::peer::Peer;
use agora_testkit::store::files_holding;
use std::time::Duration;

const SPREAD: Duration = Duration::from_secs(45);

async fn space_name(node: &agora_node::NodeHandle, space: SpaceId) -> Option<String> {
    match node.request(Command::Spaces).await {
        Ok(Reply::Spaces(spaces)) => spaces.into_iter().find(|s| s.id == space)?.name,
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_space_travels_only_on_its_derived_topic() {
    let nodes = spawn_nodes(2).await;
    let (a, b) = (nodes[0].handle.clone(), nodes[1].handle.clone());
    let Ok(Reply::Space(space)) = a
        .request(Command::CreatePrivateSpace {
            name: "Board".into(),
        })
        .await
    else {
        panic!("create")
    };
    let Ok(Reply::Invitation(inv)) = a
        .request(Command::Invite {
            space,
            role: Role::Member,
            expires: u64::MAX / 2,
            uses: 1,
        })
        .await
    else {
        panic!("invite")
    };
    let Ok(Reply::Redeem(redeem)) = b
        .request(Command::MakeRedeem {
            space,
            invite: inv.invite,
            secret: inv.secret,
        })
        .await
    else {
        panic!("redeem")
    };
    let Ok(Reply::Admitted(admitted)) = a.request(Command::AdmitRedeem { space, redeem }).await
    else {
        panic!("admit")
    };
    b.request(Command::JoinPrivate {
        space,
        ops: admitted.ops,
    })
    .await
    .expect("join");
    assert_eq!(space_name(&b, space).await.as_deref(), Some("Board"));

    // An outsider who knows the space id, connected to both, following the topic that id names.
    let outsider = Peer::gossip([77; 32]);
    outsider.dial(&nodes[0]).await;
    outsider.dial(&nodes[1]).await;
    outsider.subscribe(space).await;

    // A renames the space (the name sealed); the operation reaches B by gossip on the epoch topic.
    a.request(Command::RenameSpace {
        space,
        name: "Canary Board".into(),
    })
    .await
    .expect("rename");
    wait_until("B to read the new name", SPREAD, || {
        let b = b.clone();
        async move { space_name(&b, space).await.as_deref() == Some("Canary Board") }
    })
    .await;

    // The outsider heard nothing: no message, no subscription on a topic naming the space, and
    // not the name or the space id in any byte it received.
    let (subscribed, messages) = {
        let state = outsider.state();
        (state.subscribed.clone(), state.messages.clone())
    };
    let v1_topic = libp2p::gossipsub::IdentTopic::new(space.topic()).hash();
    assert!(
        !subscribed.iter().any(|(_, t)| *t == v1_topic),
        "a member followed the topic the space id names"
    );
    assert!(messages.is_empty(), "the outsider received {messages:?}");
    // It was connected and listening: it saw both members follow the derived topic (gossipsub
    // tells connected peers what they follow), so hearing nothing is not for lack of a link.
    let a_peer: libp2p::PeerId = a.peer_id().parse().expect("peer id");
    let b_peer: libp2p::PeerId = b.peer_id().parse().expect("peer id");
    for peer in [a_peer, b_peer] {
        assert!(
            subscribed
                .iter()
                .any(|(p, t)| *p == peer && t.as_str().starts_with("agora/v2/")),
            "the outsider did not see {peer} follow the space's topic: {subscribed:?}"
        );
    }
    shutdown_all(&nodes).await;
}

async fn titles(node: &agora_node::NodeHandle, space: SpaceId) -> Vec<String> {
    let mut t: Vec<String> = node
        .list_ideas(space)
        .await
        .map(|ideas| ideas.into_iter().map(|i| i.title).collect())
        .unwrap_or_default();
    t.sort();
    t
}

/// The whole life of a private space between four real nodes: tickets (one used up, one revoked,
/// one for a join while the inviter is offline), catch-up by sync, a removal after which the removed
/// node reads nothing new, and stores that hold no plaintext, a non-member's least of all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_join_while_the_inviter_is_offline_and_remove() {
    let mut nodes = spawn_nodes(4).await;
    let (a, b, c, d) = (
        nodes[0].handle.clone(),
        nodes[1].handle.clone(),
        nodes[2].handle.clone(),
        nodes[3].handle.clone(),
    );
    let space = a
        .create_private_space("Quartz board")
        .await
        .expect("create");
    let draft = |t: &str| agora_protocol::IdeaDraft {
        title: t.into(),
        body: "sealed body text".into(),
        tags: vec![],
    };
    a.create_idea(space, draft("Plan alpha"))
        .await
        .expect("idea");

    // B joins with a ticket and catches up by sync.
    let t1 = a
        .invite(space, Role::Member, 3600, 1)
        .await
        .expect("invite");
    assert!(t1.starts_with("agora2:"));
    assert_eq!(b.join_ticket(&t1).await.expect("join"), space);
    wait_until("B to catch up", SPREAD, || {
        let b = b.clone();
        async move { titles(&b, space).await == ["Plan alpha"] }
    })
    .await;

    // The same ticket again: used up, said plainly. Something that is not a ticket: said too.
    let used = c.join_ticket(&t1).await.expect_err("a used ticket");
    assert!(used.to_string().contains("used"), "{used}");
    let junk = c.join_ticket("agora2:AAAA").await.expect_err("junk");
    assert!(junk.to_string().contains("ticket"), "{junk}");
    // A ticket its maker withdrew: revoked, said plainly; a member that is not an admin cannot
    // withdraw one.
    let withdrawn = a
        .invite(space, Role::Member, 3600, 1)
        .await
        .expect("invite");
    let refused = b
        .revoke_ticket(&withdrawn)
        .await
        .expect_err("B is no admin");
    assert!(refused.to_string().contains("role"), "{refused}");
    assert_eq!(a.revoke_ticket(&withdrawn).await.expect("revoke"), space);
    let revoked = c
        .join_ticket(&withdrawn)
        .await
        .expect_err("a revoked ticket");
    assert!(revoked.to_string().contains("revoked"), "{revoked}");
    assert!(
        c.spaces().await.expect("spaces").is_empty(),
        "a refused join leaves no entry"
    );

    // A second ticket holds B's address too; A goes offline; C joins through B.
    let t2 = a
        .invite(space, Role::Member, 3600, 1)
        .await
        .expect("invite");
    let decoded = agora_protocol::ticket::Ticket::decode(&t2).expect("decode");
    let b_peer = b.peer_id().to_string();
    assert!(
        decoded.addrs.iter().any(|x| x.ends_with(&b_peer)),
        "the ticket names B: {:?}",
        decoded.addrs
    );
    // B must know the new invitation before A goes away (it travels by gossip, or by sync).
    wait_until("B to hold the invitation", SPREAD, || {
        let (a, b) = (a.clone(), b.clone());
        async move { a.heads(space).await.ok() == b.heads(space).await.ok() }
    })
    .await;
    let a_dir = nodes[0].dir.path().to_path_buf();
    tokio::time::timeout(Duration::from_secs(20), a.shutdown())
        .await
        .expect("A stops");
    assert_eq!(c.join_ticket(&t2).await.expect("join via B"), space);
    wait_until("C to catch up from B", SPREAD, || {
        let c = c.clone();
        async move { titles(&c, space).await == ["Plan alpha"] }
    })
    .await;

    // A comes back and removes B. B's node learns it; what is posted after cannot be read by B.
    let a_node = agora_testkit::node::restart(
        nodes.remove(0),
        nodes.iter().flat_map(|n| n.listen_addrs.clone()).collect(),
    )
    .await;
    let a = a_node.handle.clone();
    nodes.insert(0, a_node);
    // A learns (by sync) that B admitted C while it was away; a removal concurrent with that
    // admission would void it (PROTOCOL §14.4), as an admin sees in `space members` first.
    wait_until("A to see C admitted", SPREAD, || {
        let a = a.clone();
        let newcomer = c.author();
        async move {
            a.members(space)
                .await
                .is_ok_and(|m| m.iter().any(|x| x.author == newcomer))
        }
    })
    .await;
    a.remove_member(space, b.author()).await.expect("remove");
    wait_until("B to see itself removed", SPREAD, || {
        let b = b.clone();
        let me = b.author();
        async move {
            b.members(space)
                .await
                .is_ok_and(|m| !m.iter().any(|x| x.author == me))
        }
    })
    .await;
    assert!(
        b.create_idea(space, draft("B after removal"))
            .await
            .is_err(),
        "a removed member's node refuses to post"
    );
    wait_until("C to see B removed", SPREAD, || {
        let c = c.clone();
        let gone = b.author();
        async move {
            c.members(space)
                .await
                .is_ok_and(|m| m.len() == 2 && !m.iter().any(|x| x.author == gone))
        }
    })
    .await;
    c.create_idea(space, draft("Plan beta"))
        .await
        .expect("idea");
    wait_until("A to read C's new idea", SPREAD, || {
        let a = a.clone();
        async move { titles(&a, space).await == ["Plan alpha", "Plan beta"] }
    })
    .await;
    // B has only what it had: the new idea is sealed under a key it never received.
    assert_eq!(titles(&b, space).await, ["Plan alpha"]);
    // D, connected to all of them and never a member, holds no space at all.
    assert!(d.spaces().await.expect("spaces").is_empty());

    // No store holds the plaintext: not the members' (sealed contributions, sealed snapshots),
    // and not D's, which was connected to all of them and never a member.
    for n in &nodes {
        n.handle.shutdown().await;
    }
    for (who, dir) in [
        ("A", a_dir.as_path()),
        ("B", nodes[1].dir.path()),
        ("C", nodes[2].dir.path()),
        ("D", nodes[3].dir.path()),
    ] {
        for needle in [
            &b"Plan alpha"[..],
            b"Plan beta",
            b"sealed body text",
            b"Quartz board",
        ] {
            let found = files_holding(dir, needle);
            assert!(
                found.is_empty(),
                "{who}'s store holds {:?} in the clear: {found:?}",
                String::from_utf8_lossy(needle)
            );
        }
    }
}

/// A member that floods a private space by gossip is held to its bound (PROTOCOL §14.12) and
/// penalised by the node it floods until that node graylists it; a stranger that read the topic off gossipsub's subscriptions
/// and publishes junk on it is penalised below gossipsub's graylist threshold (its gossip is no
/// longer taken in); meanwhile three honest members keep posting and converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spammers_are_bounded_while_honest_members_converge() {
    use agora_testkit::private::{admit, sealed_idea, sealing_key};
    let nodes = spawn_nodes(3).await;
    let (a, b, c) = (
        nodes[0].handle.clone(),
        nodes[1].handle.clone(),
        nodes[2].handle.clone(),
    );
    let space = a.create_private_space("Busy board").await.expect("create");
    let ticket = a
        .invite(space, Role::Member, 3600, 2)
        .await
        .expect("invite");
    b.join_ticket(&ticket).await.expect("B joins");
    c.join_ticket(&ticket).await.expect("C joins");

    // The spamming member: a raw peer admitted like anyone (its redeem handed to A).
    let spammer = Peer::gossip([91; 32]);
    // (The test kit's admission runs one command at a time; the node answers on its own
    // thread while this one waits.)
    let ops = tokio::task::block_in_place(|| {
        let runtime = tokio::runtime::Handle::current();
        admit(
            &mut |c| {
                runtime
                    .block_on(a.request(c))
                    .expect("the command succeeds")
            },
            space,
            &spammer.identity,
            Role::Member,
        )
    });
    let key = sealing_key(space, ops, &spammer.identity);
    spammer.dial(&nodes[0]).await;
    spammer.subscribe_topic(&key.topic).await;
    // The stranger: follows the same topic (its name is in the members' subscriptions).
    let stranger = Peer::gossip([92; 32]);
    stranger.dial(&nodes[1]).await;
    stranger.subscribe_topic(&key.topic).await;
    let me = [spammer.peer_id.to_string(), stranger.peer_id.to_string()];
    for (node, peer) in [(&a, &me[0]), (&b, &me[1])] {
        wait_until(
            "the node to see the raw peer follow the space",
            SPREAD,
            || {
                let (node, peer) = (node.clone(), peer.clone());
                async move {
                    node.net_status().await.is_ok_and(|s| {
                        s.peers
                            .iter()
                            .any(|p| p.peer_id == peer && p.spaces.contains(&space))
                    })
                }
            },
        )
        .await;
    }

    // And each raw peer sees its node follow the topic (so that its publications go out).
    let topic_hash = libp2p::gossipsub::IdentTopic::new(key.topic.as_str()).hash();
    for (peer, node) in [(&spammer, &nodes[0]), (&stranger, &nodes[1])] {
        let id: libp2p::PeerId = node.handle.peer_id().parse().expect("peer id");
        wait_until(
            "the raw peer to see the node follow the topic",
            SPREAD,
            || {
                let seen = peer.state().subscribed.contains(&(id, topic_hash.clone()));
                async move { seen }
            },
        )
        .await;
    }
    // A membership operation while the stranger listens: the rename travels sealed.
    a.rename_space(space, "Busy board 2").await.expect("rename");
    wait_until("B to read the new name", SPREAD, || {
        let b = b.clone();
        async move { space_name(&b, space).await.as_deref() == Some("Busy board 2") }
    })
    .await;
    let mut rng = agora_testkit::Rng::new(91);
    let junk_key = sealing_key_of_nobody(space);
    let flood = 2_000;
    let mut failed = Vec::new();
    let started = std::time::Instant::now();
    let limited = |a: &agora_node::NodeHandle| {
        let a = a.clone();
        async move {
            a.counters()
                .await
                .map(|c| c.rejected.get("rate_limited").copied().unwrap_or(0))
                .unwrap_or(0)
        }
    };
    // In waves, until A has seen more than the bound: on a loaded machine gossipsub may drop
    // part of a wave in the spammer's send queue before A reads it.
    let mut sent = 0;
    for _wave in 0..4 {
        for _ in 0..flood {
            let idea = sealed_idea(&spammer.identity, &key, &format!("spam {sent}"), &mut rng);
            if let Err(e) = spammer.publish_topic(&key.topic, idea).await {
                failed.push(e.to_string());
            }
            if sent % 100 == 0 {
                let junk = sealed_idea(&stranger.identity, &junk_key, "junk", &mut rng);
                let _ = stranger.publish_topic(&key.topic, junk).await;
            }
            sent += 1;
        }
        let refused = agora_testkit::node::poll_within(
            Duration::from_secs(10),
            agora_testkit::node::POLL_EVERY,
            || async {
                match limited(&a).await {
                    0 => Err("nothing refused yet".to_string()),
                    n => Ok(n),
                }
            },
        )
        .await;
        if refused.is_ok() {
            break;
        }
    }
    // Both raw peers are penalised where they sent, below gossipsub's graylist threshold. A
    // penalty decays within seconds of the last offence (by design: a peer can mend its ways),
    // so this is checked while they offend: right after the flood, the stranger sending one
    // more junk message at each look.
    let graylisted = |node: agora_node::NodeHandle, who: String| async move {
        let score = node.net_status().await.ok().and_then(|s| {
            s.peers
                .iter()
                .find(|p| p.peer_id == who)
                .and_then(|p| p.score)
        });
        match score {
            Some(x) if x < -80.0 => Ok(()),
            other => Err(format!("score {other:?}")),
        }
    };
    let looks = std::cell::Cell::new(0u64);
    agora_testkit::node::poll_within(SPREAD, agora_testkit::node::POLL_EVERY, || {
        looks.set(looks.get() + 1);
        let junk = sealed_idea(
            &stranger.identity,
            &junk_key,
            "junk",
            &mut agora_testkit::Rng::new(1_000 + looks.get()),
        );
        let (b, who, stranger, topic) = (b.clone(), me[1].clone(), &stranger, key.topic.clone());
        async move {
            let _ = stranger.publish_topic(&topic, junk).await;
            graylisted(b, who).await
        }
    })
    .await
    .expect("B to graylist the stranger");
    agora_testkit::node::poll_within(SPREAD, agora_testkit::node::POLL_EVERY, || {
        graylisted(a.clone(), me[0].clone())
    })
    .await
    .expect("A to graylist the flooding member's node");
    // Honest members post through it all.
    for (n, who) in [(&a, "A"), (&b, "B"), (&c, "C")] {
        let draft = agora_protocol::IdeaDraft {
            title: format!("Honest {who}"),
            body: String::new(),
            tags: vec![],
        };
        n.create_idea(space, draft).await.expect("honest idea");
    }
    assert!(
        failed.len() < sent / 2,
        "{} publications failed: {:?}",
        failed.len(),
        failed.first()
    );
    // Past the bound, A refuses the spammer's ideas and penalises its node, whose score soon
    // falls below gossipsub's graylist threshold: A then drops its messages unread.
    let wanted = 1;
    agora_testkit::node::wait_for("A to refuse the flood past its bound", SPREAD, || {
        let a = a.clone();
        async move {
            let c = a.counters().await.map_err(|e| e.to_string())?;
            if c.rejected.get("rate_limited").copied().unwrap_or(0) >= wanted {
                Ok(())
            } else {
                Err(format!("{c:?}"))
            }
        }
    })
    .await;
    wait_until("the three honest members to converge", SPREAD, || {
        let (a, b, c) = (a.clone(), b.clone(), c.clone());
        async move {
            let (ha, hb, hc) = (
                a.heads(space).await,
                b.heads(space).await,
                c.heads(space).await,
            );
            let honest = titles(&a, space).await;
            ha.is_ok()
                && ha.as_ref().ok() == hb.as_ref().ok()
                && hb.as_ref().ok() == hc.as_ref().ok()
                && ["Honest A", "Honest B", "Honest C"]
                    .iter()
                    .all(|t| honest.iter().any(|h| h == t))
        }
    })
    .await;
    // The flood stopped at the bound: A holds at most a burst of the spammer's ideas, plus what
    // the steady rate allowed while it lasted.
    let elapsed = started.elapsed().as_secs() + 1;
    let spam = titles(&a, space)
        .await
        .into_iter()
        .filter(|t| t.starts_with("spam "))
        .count() as u64;
    assert!(
        spam <= 600 + 20 * elapsed,
        "A took in {spam} of the {sent} spam ideas in {elapsed} s"
    );
    assert!(spam >= 100, "the bound let a burst through ({spam})");
    // The stranger followed the topic and received its traffic: ciphertext only (operations
    // are sealed on gossip too), with nothing that names the space or holds a title.
    let received = stranger.state().messages.clone();
    assert!(
        !received.is_empty(),
        "the stranger received the topic's traffic"
    );
    for (_, bytes) in &received {
        for needle in [&space.0[..], b"Honest", b"Busy board"] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "the stranger received {needle:?} in the clear"
            );
        }
    }
    // Nor who is in the space: no member's author key is in any byte it received (authors and
    // signatures travel inside the ciphertext), and no node's peer id holds its author key (a
    // node's transport key is derived apart from it), so the peers it saw follow the topic name
    // nobody.
    let authors = [
        a.author(),
        b.author(),
        c.author(),
        spammer.identity.author(),
    ];
    for (_, bytes) in &received {
        for author in &authors {
            assert!(
                !bytes.windows(32).any(|w| w == author.0),
                "the stranger received a member's author key in the clear"
            );
        }
    }
    for node in &nodes {
        let id: libp2p::PeerId = node.handle.peer_id().parse().expect("peer id");
        for author in &authors {
            assert!(
                !id.to_bytes().windows(32).any(|w| w == author.0),
                "a node's peer id holds an author key"
            );
        }
    }
    spammer.stop().await;
    stranger.stop().await;
    shutdown_all(&nodes).await;
}

/// A key of the space nobody holds (what a stranger can make up).
fn sealing_key_of_nobody(space: SpaceId) -> agora_testkit::private::SealingKey {
    let secret = agora_protocol::keys::EpochSecret::from_bytes([42; 32]);
    agora_testkit::private::SealingKey {
        space,
        key_id: secret.key_id(),
        cipher: secret.content_key().cipher(),
        topic: String::new(),
        ops: Vec::new(),
    }
}
