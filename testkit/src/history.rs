//! Generators of signed contributions: single hand-made ideas (genuine or forged), and whole
//! seeded histories of idea documents (a creation, then comments and votes by several writers
//! who do not always see each other's latest change, so that histories branch) as the
//! benchmarks replay them.
//!
//! Everything random comes from a [`Rng`]: the same seed makes the same contributions.

use crate::rng::Rng;
use agora_protocol::automerge::{AutoCommit, Change, ChangeHash};
use agora_protocol::idea::{self, IdeaDraft, Vote};
use agora_protocol::{AuthorId, Contribution, DocId, DocKind, Identity, SpaceId};
use std::ops::RangeInclusive;

/// An idea draft with one body and tags.
pub fn draft(title: impl Into<String>, body: &str, tags: &[&str]) -> IdeaDraft {
    IdeaDraft {
        title: title.into(),
        body: body.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
    }
}

/// A hand-made idea creation.
#[derive(Debug, Clone)]
pub struct SignedIdea {
    /// The idea's document id.
    pub doc: DocId,
    /// The hash of the creating change.
    pub change_hash: ChangeHash,
    /// The contribution (its signature may be tampered with before encoding it).
    pub contribution: Contribution,
}

/// A new idea document whose change carries `actor_author`'s key in its actor id (and whose id
/// is derived from that author and `salt`, as for a genuine idea of theirs), and the
/// contribution creating it, signed by `signer` whatever the actor says: genuine when `signer` is
/// `actor_author`, forged otherwise.
pub fn idea_contribution(
    signer: &Identity,
    actor_author: &AuthorId,
    space: SpaceId,
    salt: u8,
    draft: &IdeaDraft,
) -> SignedIdea {
    let salt = [salt; 16];
    let doc = DocId::idea(&space, actor_author, &salt);
    let mut am = AutoCommit::new().with_actor(idea::actor_for(actor_author, &salt));
    let change = idea::create_idea(&mut am, draft, actor_author, &salt, agora_node::now_ms())
        .expect("idea change");
    SignedIdea {
        doc,
        change_hash: change.hash(),
        contribution: Contribution::sign(signer, space, doc, DocKind::Idea, &change),
    }
}

/// An author who writes in generated histories, with the nonce of their actor ids.
#[derive(Debug, Clone)]
pub struct Writer {
    /// The signing identity.
    pub identity: Identity,
    /// Its author id.
    pub author: AuthorId,
    /// The nonce of the writer's actor id (`idea::actor_for(author, nonce)`).
    pub nonce: [u8; 16],
}

impl Writer {
    /// A new writer from `rng`.
    pub fn random(rng: &mut Rng) -> Writer {
        let identity = Identity::from_seed(rng.bytes());
        Writer {
            author: identity.author(),
            identity,
            nonce: rng.bytes(),
        }
    }
}

/// `n` writers from `rng`.
pub fn writers(rng: &mut Rng, n: usize) -> Vec<Writer> {
    (0..n).map(|_| Writer::random(rng)).collect()
}

/// How far behind the others a writer is before each edit.
#[derive(Debug, Clone, Copy)]
pub enum Lag {
    /// Misses the latest `0..=n` changes, uniformly.
    UpTo(usize),
    /// Misses the latest change one time in `n`, else none.
    OneIn(usize),
}

/// The shape of a generated idea history.
#[derive(Debug, Clone)]
pub struct Shape {
    /// After the creation, one change in `vote_one_in` is a vote, the others comments.
    pub vote_one_in: usize,
    /// A writer's first vote is down one time in `n` (`None`: always up). Later votes flip the
    /// writer's previous one (the same vote again would make no change to sign).
    pub first_vote_down_one_in: Option<usize>,
    /// How far behind each writer is.
    pub lag: Lag,
    /// Length of the idea's body, in bytes.
    pub body: RangeInclusive<usize>,
    /// Length of each comment, in bytes.
    pub comment: RangeInclusive<usize>,
    /// The time (ms since the epoch) of change `k` is `start_ms + k * step_ms`.
    pub start_ms: i64,
    /// See `start_ms`.
    pub step_ms: i64,
}

/// One generated idea: its id and its encoded, signed contributions in creation order.
#[derive(Debug, Clone)]
pub struct IdeaHistory {
    /// The idea's document id.
    pub doc: DocId,
    /// Encoded contributions, in causal (creation) order.
    pub contributions: Vec<Vec<u8>>,
}

/// Writes `n` changes to one idea document by `writers` (each with its own actor): the first
/// writer creates it with the title `title(doc)`. Before each edit the writer catches up with
/// the others' changes except the ones `shape.lag` says are still "in flight", so the history is
/// a real dependency DAG with concurrent branches, not one line.
pub fn idea_history(
    rng: &mut Rng,
    space: SpaceId,
    writers: &[&Writer],
    n: usize,
    title: impl FnOnce(DocId) -> String,
    shape: &Shape,
) -> IdeaHistory {
    let salt: [u8; 16] = rng.bytes();
    let doc = DocId::idea(&space, &writers[0].author, &salt);
    let mut title = Some(title);
    let mut docs: Vec<AutoCommit> = writers
        .iter()
        .map(|w| AutoCommit::new().with_actor(idea::actor_for(&w.author, &w.nonce)))
        .collect();
    let mut seen = vec![0usize; writers.len()];
    let mut votes: Vec<Option<Vote>> = vec![None; writers.len()];
    let mut log: Vec<Change> = Vec::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    for k in 0..n {
        let w = if k == 0 { 0 } else { rng.below(writers.len()) };
        if k > 0 {
            let missed = match shape.lag {
                Lag::UpTo(m) => rng.below(m + 1),
                Lag::OneIn(m) => usize::from(rng.below(m) == 0),
            };
            // `seen` stays a prefix of the log: re-applying the writer's own change later is a
            // no-op for Automerge.
            let upto = log.len().saturating_sub(missed).max(1).max(seen[w]);
            if upto > seen[w] {
                docs[w]
                    .apply_changes(log[seen[w]..upto].iter().cloned())
                    .expect("a prefix of a valid history applies");
                seen[w] = upto;
            }
        }
        let now = shape.start_ms + k as i64 * shape.step_ms;
        let (d, author) = (&mut docs[w], &writers[w].author);
        let change = if let Some(title) = title.take() {
            let draft = IdeaDraft {
                title: title(doc),
                body: rng.text(*shape.body.start(), *shape.body.end()),
                tags: vec!["bench".into()],
            };
            idea::create_idea(d, &draft, author, &salt, now)
        } else if rng.below(shape.vote_one_in) == 0 {
            let vote = match votes[w] {
                None if shape
                    .first_vote_down_one_in
                    .is_some_and(|m| rng.below(m) == 0) =>
                {
                    Vote::Down
                }
                None | Some(Vote::Down) => Vote::Up,
                Some(Vote::Up) => Vote::Down,
            };
            votes[w] = Some(vote);
            idea::cast_vote(d, author, vote, now)
        } else {
            let text = rng.text(*shape.comment.start(), *shape.comment.end());
            idea::add_comment(d, author, &text, now)
        }
        .expect("a valid edit");
        out.push(
            Contribution::sign(&writers[w].identity, space, doc, DocKind::Idea, &change).encode(),
        );
        log.push(change);
    }
    IdeaHistory {
        doc,
        contributions: out,
    }
}

/// The shape of the sync benchmark's ideas: a 40-300 byte body, then comments (10-160 bytes) and
/// votes (one in four) by writers who miss the latest change one time in four.
pub fn sync_shape(idea: usize, per_idea: usize) -> Shape {
    Shape {
        vote_one_in: 4,
        first_vote_down_one_in: None,
        lag: Lag::OneIn(4),
        body: 40..=300,
        comment: 10..=160,
        start_ms: 1_700_000_000_000 + (idea * per_idea) as i64,
        step_ms: 1,
    }
}

/// A generated space: contributions grouped by idea, each idea's in causal (creation) order.
#[derive(Debug, Clone)]
pub struct SpaceHistory {
    /// The space.
    pub id: SpaceId,
    /// The ideas.
    pub ideas: Vec<IdeaHistory>,
}

impl SpaceHistory {
    /// Every contribution, idea by idea, of the first `ideas` ideas.
    pub fn contributions(&self, ideas: usize) -> Vec<Vec<u8>> {
        self.ideas[..ideas]
            .iter()
            .flat_map(|i| i.contributions.iter().cloned())
            .collect()
    }
}

/// Authors in a [`space_history`].
pub const SPACE_AUTHORS: usize = 12;
/// Writers on each idea of a [`space_history`].
pub const SPACE_WRITERS: usize = 3;

/// `ideas` ideas of `per_idea` contributions each (titled "Idea <i>", [`sync_shape`]), written by
/// [`SPACE_WRITERS`] of [`SPACE_AUTHORS`] authors each. Ideas are generated on every core, each
/// from its own seed, so the result does not depend on the number of threads.
pub fn space_history(rng: &mut Rng, ideas: usize, per_idea: usize) -> SpaceHistory {
    let id = SpaceId(rng.bytes());
    let writers = writers(rng, SPACE_AUTHORS);
    let seeds: Vec<u64> = (0..ideas).map(|_| rng.next_u64()).collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_thread = ideas.div_ceil(threads).max(1);
    let out: Vec<IdeaHistory> = std::thread::scope(|scope| {
        let handles: Vec<_> = seeds
            .chunks(per_thread)
            .enumerate()
            .map(|(t, chunk)| {
                let writers = &writers;
                scope.spawn(move || {
                    chunk
                        .iter()
                        .enumerate()
                        .map(|(k, seed)| {
                            let i = t * per_thread + k;
                            let ws: Vec<&Writer> = (0..SPACE_WRITERS)
                                .map(|w| &writers[(i + w * 5) % SPACE_AUTHORS])
                                .collect();
                            idea_history(
                                &mut Rng::new(*seed),
                                id,
                                &ws,
                                per_idea,
                                |_| format!("Idea {i}"),
                                &sync_shape(i, per_idea),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("generator thread"))
            .collect()
    });
    SpaceHistory { id, ideas: out }
}

/// The ingest benchmark's workload: contributions of many documents of one space, in the order
/// gossip would deliver them.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The space.
    pub space: SpaceId,
    /// Its authors.
    pub writers: Vec<Writer>,
    /// The documents.
    pub docs: Vec<DocId>,
    /// In delivery order: the index of the contribution's document in `docs`, and its bytes.
    pub items: Vec<(usize, Vec<u8>)>,
    /// A one-line description of the mix.
    pub mix: String,
}

/// Authors in a [`delivery`].
pub const DELIVERY_AUTHORS: usize = 24;
/// Writers on each big document of a [`delivery`].
pub const BIG_WRITERS: usize = 8;
/// Big documents in a [`delivery`].
pub const BIG_DOCS: usize = 3;
/// Delivery order is shuffled inside consecutive windows of this many contributions.
pub const WINDOW: usize = 100;

/// The shape of the ingest benchmark's documents: a 40-400 byte body, then comments (10-200
/// bytes) and votes (one in three; a writer's first vote is down one time in four) by writers
/// who miss up to the two latest changes.
pub fn delivery_shape() -> Shape {
    Shape {
        vote_one_in: 3,
        first_vote_down_one_in: Some(4),
        lag: Lag::UpTo(2),
        body: 40..=400,
        comment: 10..=200,
        start_ms: 1_700_000_000_000,
        step_ms: 1_000,
    }
}

/// `n` contributions in one space by [`DELIVERY_AUTHORS`] authors: 45% in [`BIG_DOCS`] big
/// documents ([`BIG_WRITERS`] writers each), 40% in medium ones (40-160 changes, 2-5 writers),
/// 15% in tiny ones (1-5 changes, 1-2 writers). Changes of one document are spread evenly over
/// its time span and interleaved with every other document's, as gossip delivers them, then
/// shuffled inside consecutive windows of [`WINDOW`] (so a few arrive before their
/// dependencies).
pub fn delivery(rng: &mut Rng, n: usize) -> Delivery {
    let space = SpaceId(rng.bytes());
    let writers = writers(rng, DELIVERY_AUTHORS);
    delivery_by(rng, n, space, writers)
}

/// A [`delivery`] in a given space by given writers (at least [`BIG_WRITERS`] of them): the
/// same mix, for a private space whose id and members exist before its content.
pub fn delivery_by(rng: &mut Rng, n: usize, space: SpaceId, writers: Vec<Writer>) -> Delivery {
    assert!(
        writers.len() >= BIG_WRITERS,
        "a delivery needs {BIG_WRITERS} writers"
    );

    // Each plan is (changes, writers, start time, time span).
    let mut counts = [0usize; 3];
    let big_total = n * 45 / 100;
    let medium_total = n * 40 / 100;
    let mut plans: Vec<(usize, usize, f64, f64)> = Vec::new();
    for i in 0..BIG_DOCS {
        let share = big_total / BIG_DOCS + usize::from(i < big_total % BIG_DOCS);
        if share > 0 {
            plans.push((share, BIG_WRITERS, 0.0, 1.0));
            counts[0] += 1;
        }
    }
    let mut left = medium_total;
    while left > 0 {
        let size = rng.range(40, 160).min(left);
        left -= size;
        plans.push((size, rng.range(2, 5), rng.unit() * 0.85, 0.15));
        counts[1] += 1;
    }
    let mut left = n - big_total - medium_total;
    while left > 0 {
        let size = rng.range(1, 5).min(left);
        left -= size;
        plans.push((size, rng.range(1, 2), rng.unit() * 0.99, 0.002));
        counts[2] += 1;
    }
    let [big, medium, tiny] = counts;
    let mix = format!(
        "{big} big docs x ~{} changes ({BIG_WRITERS} writers each), {medium} medium docs (40-160 \
         changes, 2-5 writers), {tiny} tiny docs (1-5 changes, 1-2 writers); {} \
         authors",
        big_total / BIG_DOCS.max(1),
        writers.len()
    );

    let shape = delivery_shape();
    let mut docs = Vec::with_capacity(plans.len());
    let mut timed: Vec<(f64, usize, Vec<u8>)> = Vec::with_capacity(n);
    let mut pool: Vec<usize> = (0..writers.len()).collect();
    for (d, &(size, nwriters, start, span)) in plans.iter().enumerate() {
        rng.shuffle(&mut pool);
        let ws: Vec<&Writer> = pool[..nwriters].iter().map(|&i| &writers[i]).collect();
        let history = idea_history(rng, space, &ws, size, |doc| format!("Idea {doc}"), &shape);
        docs.push(history.doc);
        for (i, bytes) in history.contributions.into_iter().enumerate() {
            let t = start + span * (i as f64 + 0.5 * rng.unit()) / size as f64;
            timed.push((t, d, bytes));
        }
    }
    {
        let distinct: std::collections::HashSet<&[u8]> =
            timed.iter().map(|t| t.2.as_slice()).collect();
        assert_eq!(
            distinct.len(),
            timed.len(),
            "every contribution is distinct"
        );
    }
    timed.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Moderate reordering: shuffle inside consecutive windows (which do not line up with the
    // engine's batches, so a few changes arrive a batch before their dependencies).
    for w in timed.chunks_mut(WINDOW) {
        rng.shuffle(w);
    }
    Delivery {
        space,
        writers,
        docs,
        items: timed.into_iter().map(|(_, d, bytes)| (d, bytes)).collect(),
        mix,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_histories_are_deterministic_and_valid() {
        let a = space_history(&mut Rng::new(3), 4, 20);
        let b = space_history(&mut Rng::new(3), 4, 20);
        assert_eq!(a.contributions(4), b.contributions(4));
        for bytes in a.contributions(4) {
            let c = Contribution::decode(&bytes).expect("decodes");
            c.verify().expect("verifies");
        }
        let d = delivery(&mut Rng::new(5), 300);
        assert_eq!(d.items.len(), 300);
    }
}
