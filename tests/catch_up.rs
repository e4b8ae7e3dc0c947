//! Anti-entropy catch-up: a node that was offline, or joins late, receives every contribution it
//! missed from its peers, without anyone posting again.

use agora_protocol::{SpaceId, Vote};
use agora_testkit::history::draft;
use agora_testkit::node::*;
use std::time::Duration;

/// Posts `ideas` ideas split between `writers`, then comments and votes on them round-robin until
/// `total` contributions were made. Returns the number made.
async fn write_history(writers: &[&TestNode], space: SpaceId, ideas: usize, total: usize) -> usize {
    let mut ids = Vec::with_capacity(ideas);
    for i in 0..ideas {
        let w = writers[i % writers.len()];
        ids.push(
            w.handle
                .create_idea(space, draft(format!("idea {i}"), "details", &["catch-up"]))
                .await
                .expect("create_idea"),
        );
    }
    let mut made = ideas;
    let mut k = 0usize;
    while made < total {
        let w = writers[k % writers.len()];
        let id = ids[k % ids.len()];
        if k.is_multiple_of(10) {
            // One vote per author per idea; a repeated vote is a no-op, not a contribution.
            let vote = if k.is_multiple_of(20) {
                Vote::Up
            } else {
                Vote::Down
            };
            w.handle.vote(id, vote).await.expect("vote");
        } else {
            w.handle
                .comment(id, &format!("comment {k}"))
                .await
                .expect("comment");
        }
        made += 1;
        k += 1;
    }
    made
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_node_catches_up_on_a_thousand_contributions() {
    let mut nodes = spawn_nodes(3).await;
    let space = nodes[0]
        .handle
        .create_space("catch-up")
        .await
        .expect("space");
    for n in &nodes[1..] {
        n.handle.join_space(space).await.expect("join");
    }
    wait_for_mesh(&nodes, space, Duration::from_secs(30)).await;

    // C goes offline; A and B keep working.
    let c = nodes.pop().expect("three nodes");
    c.handle.shutdown().await;
    let made = write_history(&[&nodes[0], &nodes[1]], space, 50, 1000).await;
    assert_eq!(made, 1000);
    let ab = converge(&nodes, space, Duration::from_secs(60)).await;
    assert_eq!(ab.len(), 50);

    // C comes back, dialing A and B, and must catch up with no new posts.
    let peers: Vec<String> = nodes
        .iter()
        .flat_map(|n| n.listen_addrs.iter().cloned())
        .collect();
    let c = restart(c, peers).await;
    nodes.push(c);
    let all = converge(&nodes, space, Duration::from_secs(90)).await;
    assert_eq!(all, ab, "C shows the same ideas as A and B");
    // Identical `idea show` output on every node, idea by idea.
    for idea in &all {
        let a = nodes[0].handle.show_idea(idea.id).await.expect("show on A");
        let c = nodes[2].handle.show_idea(idea.id).await.expect("show on C");
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&c).unwrap()
        );
    }
    let counters = nodes[2].handle.counters().await.expect("counters");
    assert_eq!(counters.rejected_total(), 0, "{counters:?}");
    assert!(
        counters.accepted >= 1000,
        "C accepted only {} contributions",
        counters.accepted
    );
    shutdown_all(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_receives_the_whole_history() {
    let mut nodes = spawn_nodes(2).await;
    let space = nodes[0]
        .handle
        .create_space("history")
        .await
        .expect("space");
    nodes[1].handle.join_space(space).await.expect("join");
    wait_for_mesh(&nodes, space, Duration::from_secs(30)).await;
    write_history(&[&nodes[0], &nodes[1]], space, 20, 400).await;
    converge(&nodes, space, Duration::from_secs(60)).await;

    // A newcomer who was never online while any of this happened.
    let peers: Vec<String> = nodes
        .iter()
        .flat_map(|n| n.listen_addrs.iter().cloned())
        .collect();
    let late = spawn_node(peers).await;
    late.handle.join_space(space).await.expect("join late");
    nodes.push(late);
    let ideas = converge(&nodes, space, Duration::from_secs(60)).await;
    assert_eq!(ideas.len(), 20);
    shutdown_all(&nodes).await;
}
