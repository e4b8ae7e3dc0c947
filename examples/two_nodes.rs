//! Two Agora nodes in one process: Alice posts an idea, Bob sees it arrive by gossip, comments,
//! and Alice sees the comment.
//!
//! Run with `cargo run --example two_nodes`. Everything stays on 127.0.0.1, in temporary
//! directories that are removed at the end.

use agora_node::{Config, Node};
use agora_protocol::IdeaDraft;
use std::time::{Duration, Instant};

/// Polls `check` until it returns `Some`, for at most `limit`.
async fn wait_for<T, F, Fut>(limit: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(v) = check().await {
            return Ok(v);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("timed out after {limit:?}")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let alice = Node::start(Config::ephemeral(dir_a.path().into())).await?;
    alice.set_name("Alice").await?;
    let alice_addr = alice.status().await?.listen_addrs[0].clone();

    let mut config_b = Config::ephemeral(dir_b.path().into());
    config_b.peers = vec![alice_addr];
    let bob = Node::start(config_b).await?;
    bob.set_name("Bob").await?;

    let space = alice.create_space("Kitchen").await?;
    bob.join_space(space).await?;
    // Wait until Bob follows the space's topic on Alice's side, so the first post is gossiped
    // straight away (anything published earlier would wait in Alice's queue).
    wait_for(Duration::from_secs(20), || async {
        let peers = alice.net_status().await.ok()?.peers;
        peers
            .iter()
            .any(|p| p.spaces.contains(&space))
            .then_some(())
    })
    .await?;

    let draft = IdeaDraft {
        title: "A better coffee machine".into(),
        body: "The old one leaks.".into(),
        tags: vec!["kitchen".into()],
    };
    let idea = alice.create_idea(space, draft).await?;
    let seen = wait_for(Duration::from_secs(20), || async {
        bob.show_idea(idea).await.ok()
    })
    .await?;
    println!("Bob sees: {:?} by {:?}", seen.title, seen.author_name);

    bob.comment(idea, "Yes please, and a grinder").await?;
    bob.vote(idea, agora_protocol::Vote::Up).await?;
    let done = wait_for(Duration::from_secs(20), || async {
        let i = alice.show_idea(idea).await.ok()?;
        (!i.comments.is_empty() && i.votes.up == 1).then_some(i)
    })
    .await?;
    for c in &done.comments {
        println!("Alice sees a comment by {:?}: {}", c.author_name, c.text);
    }
    println!("votes: +{} -{}", done.votes.up, done.votes.down);

    alice.shutdown().await;
    bob.shutdown().await;
    Ok(())
}
