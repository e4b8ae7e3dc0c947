//! Ingest: untrusted contributions (from gossip or sync) in, verified, ordered and applied
//! contributions out, in batches: one verification batch, one apply per document, writes for
//! the engine's single flush. Early arrivals wait in the pending set.

use super::checked::Verdict;
use super::replica::{Item, Replica};
use super::{Checked, NodeEvent, Now, Outcome, Service};
use agora_protocol::automerge::ChangeHash;
use agora_protocol::{DocId, DocKind, Rejection, SpaceId};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, PoisonError};

/// The input slot of contributions held in the pending set since an earlier batch.
const HELD: usize = usize::MAX;

/// One document's share of a batch: its key and its items with their input slots.
type Group<I> = ((SpaceId, DocId), Vec<(usize, I)>);

/// Contributions verified per chunk: large enough for batch verification to pay (ed25519
/// batches gain little beyond a few hundred signatures), small enough that the two threads share
/// the work of a large batch evenly.
const CHUNK: usize = 256;

/// Batches smaller than this are verified on the calling thread: a second thread would cost
/// more to start than it saves.
const PARALLEL_FROM: usize = 2 * CHUNK;

/// Splits contributions sorted by document into chunks of about [`CHUNK`] that never split a
/// document (so that each document is still applied with one call per batch).
fn chunks_by_doc<R: Replica>(sorted: Vec<(usize, R::Decoded)>) -> Vec<Vec<(usize, R::Decoded)>> {
    let mut chunks: Vec<Vec<(usize, R::Decoded)>> = Vec::new();
    let mut current: Vec<(usize, R::Decoded)> = Vec::new();
    for (slot, d) in sorted {
        if current.len() >= CHUNK
            && current
                .last()
                .is_some_and(|(_, last)| R::place_of(last) != R::place_of(&d))
        {
            chunks.push(std::mem::take(&mut current));
        }
        current.push((slot, d));
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// Verifies one chunk, keeping each result with its input slot.
fn verify_chunk<R: Replica>(
    chunk: Vec<(usize, R::Decoded)>,
) -> Vec<(usize, Result<R::Item, Rejection>)> {
    let (slots, decoded): (Vec<usize>, Vec<R::Decoded>) = chunk.into_iter().unzip();
    slots.into_iter().zip(R::verify(decoded)).collect()
}

/// Runs `verify` over every chunk and `apply` over each result, in chunk order. In parallel, a
/// second thread verifies chunks while this one applies them in order; whenever the next result
/// is not ready, this thread verifies the earliest chunk nobody has taken yet instead of
/// waiting, so both cores stay busy until the last chunk. The results are the same either way:
/// `verify` is a pure function.
fn pipeline<C: Send, V: Send>(
    chunks: Vec<C>,
    parallel: bool,
    verify: fn(C) -> V,
    mut apply: impl FnMut(V),
) {
    if !parallel || chunks.len() < 2 {
        for chunk in chunks {
            apply(verify(chunk));
        }
        return;
    }
    let n = chunks.len();
    let queue = Mutex::new(chunks.into_iter().enumerate().collect::<VecDeque<_>>());
    let take = || {
        queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
    };
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::channel();
        // If no thread can be had, this one takes every chunk itself below.
        let _worker = std::thread::Builder::new()
            .name("agora-verify".into())
            .spawn_scoped(scope, move || {
                while let Some((i, chunk)) = take() {
                    if tx.send((i, verify(chunk))).is_err() {
                        break;
                    }
                }
            });
        let mut done: Vec<Option<V>> = (0..n).map(|_| None).collect();
        let mut next = 0;
        while next < n {
            if let Some(verified) = done[next].take() {
                apply(verified);
                next += 1;
            } else if let Ok((i, verified)) = rx.try_recv() {
                done[i] = Some(verified);
            } else if let Some((i, chunk)) = take() {
                done[i] = Some(verify(chunk));
            } else {
                // The next chunk is being verified by the other thread. If it died, the scope
                // re-raises its panic.
                match rx.recv() {
                    Ok((i, verified)) => done[i] = Some(verified),
                    Err(_) => break,
                }
            }
        }
    });
}

/// Which of a document's candidate changes can be applied now, and in which order (indices
/// into `hashes`). `missing[i]` lists the dependencies of change `i` that the document lacks; a
/// change is ready when each of them is another ready candidate.
///
/// The order is the one of a scan that repeats over the candidates in arrival order, taking each
/// change whose missing dependencies were all taken before it, until a pass takes nothing: by
/// pass, then by arrival. It is computed in one topological sweep instead of repeated passes
/// (which cost a pass per step of a chain delivered backwards).
pub(crate) fn ready_order(hashes: &[ChangeHash], missing: &[Vec<ChangeHash>]) -> Vec<usize> {
    let n = hashes.len();
    // The common case (every dependency held): all in the first pass, in arrival order.
    if missing.iter().all(Vec::is_empty) {
        return (0..n).collect();
    }
    let index: HashMap<ChangeHash, usize> =
        hashes.iter().enumerate().map(|(i, h)| (*h, i)).collect();
    // pass[i]: the pass that takes change i (from 1); blocked: it waits for a change that is
    // neither held nor a candidate, directly or through another candidate.
    let mut pass = vec![1usize; n];
    let mut blocked = vec![false; n];
    let mut unresolved = vec![0usize; n];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut sweep = Vec::new();
    for (i, deps) in missing.iter().enumerate() {
        for d in deps {
            match index.get(d) {
                Some(&j) => {
                    dependents[j].push(i);
                    unresolved[i] += 1;
                }
                None => blocked[i] = true,
            }
        }
        if unresolved[i] == 0 {
            sweep.push(i);
        }
    }
    let mut done = vec![false; n];
    while let Some(j) = sweep.pop() {
        done[j] = true;
        for &i in &dependents[j] {
            // A pass takes i after j only if j comes first in arrival order; otherwise i waits for
            // the next pass.
            pass[i] = pass[i].max(if j < i { pass[j] } else { pass[j] + 1 });
            blocked[i] |= blocked[j];
            unresolved[i] -= 1;
            if unresolved[i] == 0 {
                sweep.push(i);
            }
        }
    }
    let mut order: Vec<usize> = (0..n).filter(|&i| done[i] && !blocked[i]).collect();
    order.sort_by_key(|&i| (pass[i], i));
    order
}

impl<R: Replica> Service<R> {
    /// Ingests untrusted encoded contributions, each with the space of the topic or exchange it
    /// came on (`None` when the transport names no space), and their verification if the shell
    /// did it already (see [`Checked`]). Verifies the rest in batches, applies them with one
    /// call per document, and queues their writes. Returns one outcome per input, in order.
    /// `Accepted` holds only once the engine's flush succeeds. Also notes each input that went
    /// to the pending set: its slot, its document and its hash.
    pub(crate) fn ingest(
        &mut self,
        items: Vec<(Vec<u8>, Option<SpaceId>)>,
        checked: Option<Checked>,
        now: Now,
        early: &mut Vec<(usize, DocId, ChangeHash)>,
    ) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; items.len()];
        let verdicts = checked
            .filter(|c| c.len() == items.len() && R::ADOPTS)
            .and_then(Checked::verdicts);
        match verdicts {
            Some(verdicts) => self.apply_checked(items, verdicts, &mut outcomes, now, early),
            None => self.verify_and_apply(items, &mut outcomes, now, early),
        }
        self.count(outcomes)
    }

    /// The checks [`Service::ingest`] makes before verification (topic, space),
    /// in the same order, on contributions the shell already decoded and verified; then the
    /// verified ones are applied.
    fn apply_checked(
        &mut self,
        items: Vec<(Vec<u8>, Option<SpaceId>)>,
        verdicts: Vec<Verdict>,
        outcomes: &mut [Option<Outcome>],
        now: Now,
        early: &mut Vec<(usize, DocId, ChangeHash)>,
    ) {
        let mut verified: Vec<(usize, Result<R::Item, Rejection>)> = Vec::new();
        for (i, ((bytes, topic), (space, result))) in items.into_iter().zip(verdicts).enumerate() {
            let Some(space) = space else {
                outcomes[i] = result.err().map(Outcome::Rejected);
                continue;
            };
            match self.admit(space, topic, false) {
                Some(refused) => outcomes[i] = Some(Outcome::Rejected(refused)),
                None => match result {
                    Ok(v) => match R::adopt(v, bytes) {
                        Some(item) => verified.push((i, Ok(item))),
                        None => unreachable!("R::ADOPTS"),
                    },
                    Err(e) => verified.push((i, Err(e))),
                },
            }
        }
        verified.sort_by_key(|(slot, r)| match r {
            Ok(item) => (Some((item.space(), item.doc())), *slot),
            Err(_) => (None, *slot),
        });
        self.apply_verified(verified, outcomes, now, early);
    }

    /// Why a decoded contribution naming `space`, received on `topic`, is refused before
    /// verification (a topic of another space, a space not joined, a version that is not the
    /// space's), if it is.
    fn admit(&self, space: SpaceId, topic: Option<SpaceId>, sealed: bool) -> Option<Rejection> {
        let private = self.private.contains_key(&space);
        if topic.is_some_and(|t| t != space) {
            Some(Rejection::WrongTopic)
        } else if !private && !self.spaces.contains_key(&space) {
            Some(Rejection::UnknownSpace)
        } else if private != sealed {
            // A private space takes only sealed contributions (one in the clear would publish
            // its content); an open space has no key to seal under.
            Some(Rejection::UnsupportedVersion(if sealed { 2 } else { 1 }))
        } else {
            None
        }
    }

    /// Whether the membership of a private space lets an author's change stand (14.7 of the
    /// protocol); always for an open space. A removed author's change is kept while the
    /// document lacks one of the heads its removal pinned (it may be in their past); once the
    /// document holds them all, a change not already held is not in their past.
    fn may_write(&mut self, item: &R::Item) -> Result<(), Rejection> {
        use agora_protocol::membership::WriteRight;
        let space = item.space();
        let Some(view) = self.private.get(&space) else {
            return Ok(());
        };
        let doc = item.doc();
        match view
            .membership()
            .write_right(&item.author(), item.kind(), &doc)
        {
            WriteRight::Yes => Ok(()),
            WriteRight::No => Err(Rejection::NotWriter),
            WriteRight::Pinned(heads) => {
                let hash = item.hash();
                if heads.contains(&hash.0) {
                    return Ok(());
                }
                let heads: Vec<ChangeHash> = heads.iter().map(|h| ChangeHash(*h)).collect();
                if heads.is_empty() || self.replica.missing(&space, &doc, &heads).is_empty() {
                    Err(Rejection::LateWrite)
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Decodes, checks topic and space, verifies (on two threads for a large batch) and
    /// applies.
    fn verify_and_apply(
        &mut self,
        items: Vec<(Vec<u8>, Option<SpaceId>)>,
        outcomes: &mut [Option<Outcome>],
        now: Now,
        early: &mut Vec<(usize, DocId, ChangeHash)>,
    ) {
        let mut decoded: Vec<(usize, R::Decoded)> = Vec::with_capacity(items.len());
        for (i, (bytes, topic)) in items.into_iter().enumerate() {
            match self.replica.decode(bytes) {
                Ok(d) => match self.admit(R::place_of(&d).0, topic, R::sealed(&d)) {
                    Some(refused) => outcomes[i] = Some(Outcome::Rejected(refused)),
                    None => decoded.push((i, d)),
                },
                Err(e) => outcomes[i] = Some(Outcome::Rejected(e)),
            }
        }
        // By document (in id order, so that runs are reproducible; in arrival order within a
        // document), in chunks that never split a document: verified on one thread while the
        // chunk before is applied on this one.
        decoded.sort_by_key(|(slot, d)| (R::place_of(d), *slot));
        let parallel = self.config.verify_in_parallel && decoded.len() >= PARALLEL_FROM;
        let chunks = chunks_by_doc::<R>(decoded);
        pipeline(chunks, parallel, verify_chunk::<R>, |verified| {
            self.apply_verified(verified, outcomes, now, early)
        });
    }

    /// The outcomes of a batch (a missing one is `Pending`), counted and logged.
    fn count(&mut self, outcomes: Vec<Option<Outcome>>) -> Vec<Outcome> {
        let outcomes: Vec<Outcome> = outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Outcome::Pending))
            .collect();
        for o in &outcomes {
            match o {
                Outcome::Accepted => self.counters.accepted += 1,
                Outcome::Duplicate => self.counters.duplicates += 1,
                Outcome::Pending => {}
                Outcome::Rejected(r) => {
                    *self
                        .counters
                        .rejected
                        .entry(r.code().to_string())
                        .or_default() += 1;
                    tracing::info!(target: "agora::engine", reason = r.code(), detail = %r, "rejected a contribution");
                    self.outbox.event(NodeEvent::Rejected {
                        reason: r.code().to_string(),
                    });
                }
            }
        }
        outcomes
    }

    /// Applies one chunk of verified contributions (whole documents, in document order), each
    /// with its input slot: the held ones of each document join it, the ready ones are applied
    /// with one call per document, the early ones wait in the pending set.
    fn apply_verified(
        &mut self,
        verified: Vec<(usize, Result<R::Item, Rejection>)>,
        outcomes: &mut [Option<Outcome>],
        now: Now,
        early: &mut Vec<(usize, DocId, ChangeHash)>,
    ) {
        let mut passed: Vec<(usize, R::Item)> = Vec::with_capacity(verified.len());
        let mut refused: Vec<(usize, R::Item, Rejection)> = Vec::new();
        for (slot, result) in verified {
            match result {
                Ok(item) => match self.may_write(&item) {
                    Ok(()) => passed.push((slot, item)),
                    Err(e) => refused.push((slot, item, e)),
                },
                Err(e) => outcomes[slot] = Some(Outcome::Rejected(e)),
            }
        }
        if !refused.is_empty() {
            for (slot, e) in self.keep_needed(&mut passed, refused) {
                outcomes[slot] = Some(Outcome::Rejected(e));
            }
        }
        let mut groups: Vec<Group<R::Item>> = Vec::new();
        for (slot, item) in passed {
            let key = (item.space(), item.doc());
            match groups.last_mut() {
                Some((k, v)) if *k == key => v.push((slot, item)),
                _ => groups.push((key, vec![(slot, item)])),
            }
        }
        for ((space, doc), mut items) in groups {
            // Earlier arrivals that were waiting for dependencies get another chance.
            let held = if self.pending.is_empty() {
                Vec::new()
            } else {
                self.pending.take(&(space, doc))
            };
            items.splice(0..0, held.into_iter().map(|it| (HELD, it)));
            let existing = self.replica.doc_kind(&space, &doc);
            // A new document's kind is that of its creation (the change without dependencies),
            // not of whatever early arrival happens to come first.
            let kind = existing.unwrap_or_else(|| {
                items
                    .iter()
                    .find(|(_, it)| it.deps().is_empty())
                    .map_or(items[0].1.kind(), |(_, it)| it.kind())
            });
            // Hashes taken in this batch (few: a linear search beats a hash set).
            let mut seen: Vec<ChangeHash> = Vec::new();
            let mut rest = Vec::new();
            let mut rest_hashes = Vec::new();
            let mut rest_missing = Vec::new();
            let mut query: Vec<ChangeHash> = Vec::new();
            for (slot, it) in items {
                let hash = it.hash();
                // One query answers both "already held?" and "which dependencies are missing?":
                // a held change has all its dependencies, so the answer is empty exactly when
                // the change is held; otherwise it is the change itself plus its missing
                // dependencies (a change is never its own ancestor).
                let mut missing = Vec::new();
                let dup = seen.contains(&hash) || {
                    query.clear();
                    query.push(hash);
                    query.extend_from_slice(it.deps());
                    missing = self.replica.missing(&space, &doc, &query);
                    missing.is_empty()
                };
                if dup {
                    if slot != HELD {
                        outcomes[slot] = Some(Outcome::Duplicate);
                    }
                } else if it.kind() != kind {
                    if slot != HELD {
                        outcomes[slot] = Some(Outcome::Rejected(Rejection::Inapplicable(
                            "document kind differs from the document's first contribution".into(),
                        )));
                    }
                } else {
                    seen.push(hash);
                    missing.retain(|d| *d != hash);
                    rest.push(Some((slot, it)));
                    rest_hashes.push(hash);
                    rest_missing.push(missing);
                }
            }
            // The contributions whose dependencies are all held or ready, dependencies first.
            let ready: Vec<(usize, R::Item)> = ready_order(&rest_hashes, &rest_missing)
                .into_iter()
                .filter_map(|i| rest[i].take())
                .collect();
            for (slot, it) in rest.into_iter().flatten() {
                if slot != HELD {
                    outcomes[slot] = Some(Outcome::Pending);
                    early.push((slot, doc, it.hash()));
                }
                let size = it.size();
                let evicted = self.pending.insert((space, doc), it, size, now.mono);
                self.counters.evicted += evicted as u64;
            }
            if ready.is_empty() {
                continue;
            }
            let (ready_slots, ready_items): (Vec<usize>, Vec<R::Item>) = ready.into_iter().unzip();
            let results =
                self.replica
                    .apply(space, doc, kind, ready_items, &mut self.outbox.writes);
            let mut any = false;
            for (slot, r) in ready_slots.into_iter().zip(results) {
                match r {
                    Ok(()) => {
                        any = true;
                        self.outbox.accepted += 1;
                        if slot == HELD {
                            // Accepted now after waiting: no input slot reports it.
                            self.counters.accepted += 1;
                        } else {
                            outcomes[slot] = Some(Outcome::Accepted);
                        }
                    }
                    Err(e) if slot != HELD => outcomes[slot] = Some(Outcome::Rejected(e)),
                    Err(_) => {}
                }
            }
            if any {
                self.changed(space, doc, kind);
            }
        }
    }

    /// Of the contributions the write rule refused, takes back (into `passed`, in place) those
    /// that a contribution it let through depends on, in this batch or waiting in the pending
    /// set: a removed member's late change that an entitled writer built on stands (PROTOCOL
    /// §14.7), and its dependant could not be applied without it. Returns the others, refused.
    fn keep_needed(
        &self,
        passed: &mut Vec<(usize, R::Item)>,
        mut refused: Vec<(usize, R::Item, Rejection)>,
    ) -> Vec<(usize, Rejection)> {
        let mut needed: HashSet<(SpaceId, DocId, ChangeHash)> = HashSet::new();
        let need = |it: &R::Item, needed: &mut HashSet<_>| {
            for d in it.deps() {
                needed.insert((it.space(), it.doc(), *d));
            }
        };
        for (_, it) in passed.iter() {
            need(it, &mut needed);
        }
        let docs: HashSet<(SpaceId, DocId)> = refused
            .iter()
            .map(|(_, it, _)| (it.space(), it.doc()))
            .collect();
        for key in &docs {
            for it in self.pending.held(key) {
                need(it, &mut needed);
            }
        }
        let before = passed.len();
        // Dependants come after what they depend on: each round takes back at least one, or
        // ends.
        loop {
            let mut taken = false;
            let mut rest = Vec::with_capacity(refused.len());
            for (slot, it, e) in refused {
                if needed.contains(&(it.space(), it.doc(), it.hash())) {
                    need(&it, &mut needed);
                    passed.push((slot, it));
                    taken = true;
                } else {
                    rest.push((slot, it, e));
                }
            }
            refused = rest;
            if !taken || refused.is_empty() {
                break;
            }
        }
        if passed.len() > before {
            // Back in the order the batch is applied in: by document, then by arrival.
            passed.sort_by_key(|(slot, it)| ((it.space(), it.doc()), *slot));
        }
        refused.into_iter().map(|(slot, _, e)| (slot, e)).collect()
    }

    /// After a document changed in memory (ingest or local edit): the write rule of a private
    /// space applied to it, and the bookkeeping.
    pub(crate) fn changed(&mut self, space: SpaceId, doc: DocId, kind: DocKind) {
        if self.private.contains_key(&space) {
            self.restand(space, doc, false);
        }
        self.touched(space, doc, kind);
    }

    /// Bookkeeping after a document changed (or what it shows did).
    pub(crate) fn touched(&mut self, space: SpaceId, doc: DocId, kind: DocKind) {
        self.outbox.touched.push((space, doc));
        self.digests.remove(&space);
        if kind == DocKind::Idea {
            self.outbox
                .event(NodeEvent::IdeaChanged { space, idea: doc });
        }
    }
}
