//! Multi-node tests in one process: several `agora_node` nodes on loopback, plus (for the
//! forgery test) a raw libp2p gossipsub peer that publishes hand-made contributions.

use agora_node::{Counters, NodeHandle};
use agora_protocol::idea::{Vote, VoteCount};
use agora_protocol::{AuthorId, DocId, SpaceId};
use agora_testkit::history::{draft, idea_contribution, SignedIdea};
use agora_testkit::node::{
    converge, shutdown_all, spawn_nodes, wait_for, wait_for_mesh, wait_until, TestNode,
};
use agora_testkit::peer::Peer;
use libp2p::gossipsub;
use libp2p::PeerId;
use std::collections::BTreeMap;
use std::time::Duration;

const MESH: Duration = Duration::from_secs(30);
const SPREAD: Duration = Duration::from_secs(45);

fn test_draft(title: String) -> agora_protocol::IdeaDraft {
    draft(title, "details to follow", &["test"])
}

/// A new idea by `actor_author`, signed by `signer` (see [`idea_contribution`]): its id and
/// contribution.
fn forged(
    signer: &agora_protocol::Identity,
    actor_author: &AuthorId,
    space: SpaceId,
    salt: u8,
    title: &str,
) -> (DocId, agora_protocol::Contribution) {
    let SignedIdea {
        doc, contribution, ..
    } = idea_contribution(signer, actor_author, space, salt, &test_draft(title.into()));
    (doc, contribution)
}

/// The ideas node `i` posts.
async fn post_ideas(h: &NodeHandle, space: SpaceId, i: usize) -> Vec<DocId> {
    let mut ids = Vec::new();
    for k in 0..2 {
        let id = h
            .create_idea(space, test_draft(format!("idea {k} of node {i}")))
            .await
            .expect("create_idea");
        ids.push(id);
    }
    ids
}

/// Node `i` reacts to every idea of the other nodes: on ideas of node `i+1` it comments twice and
/// votes up; on ideas of node `i+2` it comments once and votes down on the first, up on the
/// second.
async fn react(h: &NodeHandle, i: usize, authored: &[Vec<DocId>]) {
    for j in [(i + 1) % 3, (i + 2) % 3] {
        for (k, id) in authored[j].iter().enumerate() {
            h.comment(*id, &format!("c1 by {i} on {j}/{k}"))
                .await
                .expect("comment");
            if j == (i + 1) % 3 {
                h.comment(*id, &format!("c2 by {i} on {j}/{k}"))
                    .await
                    .expect("comment");
                h.vote(*id, Vote::Up).await.expect("vote");
            } else {
                let v = if k == 0 { Vote::Down } else { Vote::Up };
                h.vote(*id, v).await.expect("vote");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_converge_on_concurrent_edits() {
    let nodes = spawn_nodes(3).await;
    let h: Vec<NodeHandle> = nodes.iter().map(|t| t.handle.clone()).collect();
    let authors: Vec<AuthorId> = h.iter().map(|h| h.author()).collect();
    let names = ["Ada", "Björn", "Chen"];

    let space = h[0].create_space("Team").await.expect("create_space");
    h[1].join_space(space).await.expect("join");
    h[2].join_space(space).await.expect("join");
    wait_for_mesh(&nodes, space, MESH).await;

    let (n0, n1, n2) = tokio::join!(
        h[0].set_name(names[0]),
        h[1].set_name(names[1]),
        h[2].set_name(names[2])
    );
    n0.and(n1).and(n2).expect("set_name");

    // Everyone posts at once.
    let (a, b, c) = tokio::join!(
        post_ideas(&h[0], space, 0),
        post_ideas(&h[1], space, 1),
        post_ideas(&h[2], space, 2)
    );
    let authored = vec![a, b, c];
    let ideas = converge(&nodes, space, SPREAD).await;
    assert_eq!(ideas.len(), 6, "every idea reached every node");

    // Everyone comments and votes at once, on ideas of the others.
    tokio::join!(
        react(&h[0], 0, &authored),
        react(&h[1], 1, &authored),
        react(&h[2], 2, &authored)
    );
    let ideas = converge(&nodes, space, SPREAD).await;
    assert_eq!(ideas.len(), 6);

    for (j, ids) in authored.iter().enumerate() {
        for (k, id) in ids.iter().enumerate() {
            let idea = ideas
                .iter()
                .find(|x| x.id == *id)
                .unwrap_or_else(|| panic!("idea {j}/{k} is missing"));
            let up_voter = (j + 2) % 3; // node j-1: two comments and an up vote
            let other = (j + 1) % 3; // node j+1: one comment, down on the first idea
            assert_eq!(idea.title, format!("idea {k} of node {j}"));
            assert_eq!(idea.author, authors[j], "idea {j}/{k} author");
            assert_eq!(idea.author_name.as_deref(), Some(names[j]));

            // Comments: exact count, authors taken from the signed history, and names.
            assert_eq!(idea.comments.len(), 3, "comments on idea {j}/{k}");
            let mut got: Vec<(AuthorId, String)> = idea
                .comments
                .iter()
                .map(|c| (c.author, c.text.clone()))
                .collect();
            got.sort();
            let mut want = vec![
                (authors[up_voter], format!("c1 by {up_voter} on {j}/{k}")),
                (authors[up_voter], format!("c2 by {up_voter} on {j}/{k}")),
                (authors[other], format!("c1 by {other} on {j}/{k}")),
            ];
            want.sort();
            assert_eq!(got, want, "comments on idea {j}/{k}");
            for c in &idea.comments {
                let who = authors.iter().position(|a| *a == c.author).unwrap();
                assert_ne!(who, j, "nobody commented on their own idea");
                assert_eq!(c.author_name.as_deref(), Some(names[who]));
            }
            // A node's own comments stay in the order it wrote them.
            let own: Vec<&str> = idea
                .comments
                .iter()
                .filter(|c| c.author == authors[up_voter])
                .map(|c| c.text.as_str())
                .collect();
            assert_eq!(
                own,
                [
                    format!("c1 by {up_voter} on {j}/{k}"),
                    format!("c2 by {up_voter} on {j}/{k}")
                ]
            );

            // Votes.
            let (up, down, other_vote) = if k == 0 {
                (1, 1, Vote::Down)
            } else {
                (2, 0, Vote::Up)
            };
            assert_eq!(idea.votes, VoteCount { up, down }, "votes on idea {j}/{k}");
            let want_voters: BTreeMap<AuthorId, Vote> =
                [(authors[up_voter], Vote::Up), (authors[other], other_vote)]
                    .into_iter()
                    .collect();
            assert_eq!(idea.voters, want_voters, "voters on idea {j}/{k}");
        }
    }
    for (i, node) in h.iter().enumerate() {
        let counters = node.counters().await.expect("counters");
        assert_eq!(
            counters.rejected_total(),
            0,
            "node {i} rejected something: {:?}",
            counters.rejected
        );
    }
    shutdown_all(&nodes).await;
}

async fn score_of(node: &NodeHandle, peer: &PeerId) -> Option<f64> {
    let status = node.net_status().await.expect("net_status");
    let me = peer.to_string();
    status
        .peers
        .iter()
        .find(|p| p.peer_id == me)
        .and_then(|p| p.score)
}

async fn contains(node: &NodeHandle, bytes: &[u8]) -> bool {
    node.store_contains(bytes.to_vec())
        .await
        .expect("store_contains")
}

fn rejected(counters: &Counters, code: &str) -> u64 {
    counters.rejected.get(code).copied().unwrap_or(0)
}

/// Waits until `node` has counted at least `n` rejections with each given code.
async fn wait_rejections(node: &TestNode, want: &[(&'static str, u64)]) {
    let h = node.handle.clone();
    let want = want.to_vec();
    wait_for(
        &format!("{} to count rejections {want:?}", node.label()),
        SPREAD,
        || {
            let (h, want) = (h.clone(), want.clone());
            async move {
                let counters = h.counters().await.map_err(|e| e.to_string())?;
                if want.iter().all(|(code, n)| rejected(&counters, code) >= *n) {
                    Ok(())
                } else {
                    Err(format!("rejections so far: {:?}", counters.rejected))
                }
            }
        },
    )
    .await
}

/// Waits until `node`'s gossipsub score for `peer` satisfies `ok`, and returns it.
async fn wait_score(
    node: &TestNode,
    peer: PeerId,
    what: &str,
    deadline: Duration,
    ok: impl Fn(f64) -> bool + Clone,
) -> f64 {
    let h = node.handle.clone();
    wait_for(
        &format!("{}'s score for the forger to be {what}", node.label()),
        deadline,
        || {
            let (h, ok) = (h.clone(), ok.clone());
            async move {
                match score_of(&h, &peer).await {
                    Some(s) if ok(s) => Ok(s),
                    other => Err(format!("score {other:?}")),
                }
            }
        },
    )
    .await
}

/// Nodes A, B, C in one space, and a forger connected to A only and subscribed to the space.
async fn guarded_space(n: usize, seed: u8) -> (Vec<TestNode>, SpaceId, Peer) {
    let nodes = spawn_nodes(n).await;
    let space = nodes[0]
        .handle
        .create_space("Guarded")
        .await
        .expect("create_space");
    for node in &nodes[1..] {
        node.handle.join_space(space).await.expect("join");
    }
    wait_for_mesh(&nodes, space, MESH).await;
    let forger = Peer::gossip([seed; 32]);
    forger.subscribe(space).await;
    forger.connect(&nodes[0], space, MESH).await;
    (nodes, space, forger)
}

/// The threshold below which gossipsub drops every RPC from a peer (the node uses the default
/// thresholds).
fn graylist_threshold() -> f64 {
    gossipsub::PeerScoreThresholds::default().graylist_threshold
}

/// A raw gossipsub peer connected to A only publishes forgeries, then a valid barrier. A must
/// reject and count them, penalise the sender, store nothing, and relay only the barrier; B and C
/// must then reject forgeries sent to them directly.
///
/// The forgeries go out one at a time: after two, the forger's score is below gossipsub's
/// graylist threshold and A drops whatever else it sends until the penalty decays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_gossip_is_rejected_counted_not_relayed_and_penalised() {
    let (nodes, space, forger) = guarded_space(3, 0xf0).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let me = forger.identity.author();
    let victim = b.handle.author();

    // (i) A correctly made contribution, then one signature bit flipped.
    let (bad_sig_id, mut bad_sig) = forged(&forger.identity, &me, space, 1, "bad sig");
    bad_sig.signature[10] ^= 0x01;
    let bad_sig = bad_sig.encode();
    // (ii) Signed by the forger (and naming the forger), but the change's actor is the victim.
    let (not_signer_id, not_signer) = forged(
        &forger.identity,
        &victim,
        space,
        2,
        "written under another name",
    );
    let not_signer = not_signer.encode();
    // (iii) A valid contribution of the forger's own: the barrier.
    let (barrier_id, barrier) = forged(&forger.identity, &me, space, 3, "barrier");
    let barrier = barrier.encode();
    let forgeries = [("bad signature", &bad_sig), ("forged actor", &not_signer)];

    // One at a time: each rejection costs the forger 50 x n^2 points at A, and from the second
    // one (-200) A graylists it (threshold -80) and drops whatever else it sends. Sending both at
    // once would race the first verdicts against the arrival of the second forgery.
    forger.publish(space, bad_sig.clone()).await;
    wait_rejections(a, &[("bad_signature", 1)]).await;
    forger.publish(space, not_signer.clone()).await;
    wait_rejections(a, &[("actor_not_signer", 1)]).await;
    // gossipsub's P4 penalty: weight -100 x topic weight 0.5 x n^2 = -200 for two forgeries. (The
    // counters move before the verdicts reach gossipsub, so this is a wait, not a read.)
    wait_score(
        a,
        forger.peer_id,
        "below the graylist threshold",
        Duration::from_secs(10),
        |s| s < graylist_threshold(),
    )
    .await;
    // While graylisted, A drops everything the forger sends; the penalty decays (x0.9 per
    // second). Publish the barrier once A listens to the forger again.
    wait_score(
        a,
        forger.peer_id,
        "back above the graylist threshold",
        SPREAD,
        |s| s > graylist_threshold(),
    )
    .await;
    forger.publish(space, barrier.clone()).await;
    for node in [b, c] {
        let h = node.handle.clone();
        wait_until(
            &format!("{} to receive the barrier through A", node.label()),
            SPREAD,
            || {
                let h = h.clone();
                async move { h.show_idea(barrier_id).await.is_ok() }
            },
        )
        .await;
    }

    let counters_a = a.handle.counters().await.expect("counters");
    assert!(
        rejected(&counters_a, "bad_signature") >= 1,
        "A counts the bad signature: {:?}",
        counters_a.rejected
    );
    assert!(
        rejected(&counters_a, "actor_not_signer") >= 1,
        "A counts the forged actor: {:?}",
        counters_a.rejected
    );
    for node in [b, c] {
        let counters = node.handle.counters().await.expect("counters");
        assert_eq!(
            counters.rejected_total(),
            0,
            "{} saw a forgery, so A relayed it: {:?}",
            node.label(),
            counters.rejected
        );
    }
    for node in &nodes {
        assert!(
            contains(&node.handle, &barrier).await,
            "{} stores the barrier (the control for store_contains)",
            node.label()
        );
        for (what, bytes) in forgeries {
            assert!(
                !contains(&node.handle, bytes).await,
                "{} stored the {what} forgery",
                node.label()
            );
        }
    }
    let score = score_of(&a.handle, &forger.peer_id)
        .await
        .expect("A scores its gossipsub peers");
    assert!(
        score < 0.0,
        "A still holds the forgeries against the forger: score {score}"
    );

    // The forger now reaches B and C directly: each must refuse (and count) on its own.
    forger.connect(b, space, MESH).await;
    forger.connect(c, space, MESH).await;
    // The victim's name on the envelope and in the actor, but the forger's signature.
    let victim = a.handle.author();
    let (direct_id, mut direct) = forged(&forger.identity, &victim, space, 4, "impersonation");
    direct.author = victim;
    let direct = direct.encode();
    forger.publish(space, direct.clone()).await;
    for node in [b, c] {
        wait_rejections(node, &[("bad_signature", 1)]).await;
    }
    for node in &nodes {
        assert!(
            !contains(&node.handle, &direct).await,
            "{} stored the direct forgery",
            node.label()
        );
        for id in [bad_sig_id, not_signer_id, direct_id] {
            assert!(
                node.handle.show_idea(id).await.is_err(),
                "{} shows forged idea {id}",
                node.label()
            );
        }
    }

    forger.stop().await;
    shutdown_all(&nodes).await;
}

/// A peer that has sat in A's mesh for a few seconds, then sends two forgeries, ends with a
/// negative score. (With rust-libp2p's default "time in mesh" reward, counted per millisecond up
/// to 3600, a peer was worth +1800 after 4 s and needed 7 forgeries to go negative; the node's
/// `topic_score_params` keeps every reward below one invalid-message penalty.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgeries_from_a_seasoned_mesh_peer_turn_its_score_negative() {
    let (nodes, space, forger) = guarded_space(1, 0xf1).await;
    let a = &nodes[0];
    let me = forger.identity.author();
    // Let the forger earn time-in-mesh credit.
    wait_score(
        a,
        forger.peer_id,
        "positive",
        Duration::from_secs(10),
        |s| s > 0.0,
    )
    .await;
    let (_, mut bad_sig) = forged(&forger.identity, &me, space, 1, "bad sig");
    bad_sig.signature[0] ^= 0x01;
    let (_, not_signer) = forged(&forger.identity, &AuthorId([9; 32]), space, 2, "not mine");
    forger.publish(space, bad_sig.encode()).await;
    forger.publish(space, not_signer.encode()).await;
    wait_rejections(a, &[("bad_signature", 1), ("actor_not_signer", 1)]).await;
    wait_score(a, forger.peer_id, "negative", Duration::from_secs(5), |s| {
        s < 0.0
    })
    .await;
    forger.stop().await;
    shutdown_all(&nodes).await;
}
