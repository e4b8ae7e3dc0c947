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

/// Every file under `dir`, read whole (a node's store, as a thief or a backup would see it).
fn files_hold(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
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
                .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
            {
                found.push(path);
            }
        }
    }
    found
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

/// The whole life of a private space between four real nodes: tickets (one used up, one for a
/// join while the inviter is offline), catch-up by sync, a removal after which the removed
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
            let found = files_hold(dir, needle);
            assert!(
                found.is_empty(),
                "{who}'s store holds {:?} in the clear: {found:?}",
                String::from_utf8_lossy(needle)
            );
        }
    }
}
