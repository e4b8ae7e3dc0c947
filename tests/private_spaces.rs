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
