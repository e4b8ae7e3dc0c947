//! Contributions decoded and verified by the shell where they arrived ([`Checked`]), so that
//! the work runs on a core the engine is not using.
//!
//! A sync answer is read in two steps on that other core: first every contribution's header
//! (document, hash, dependencies), which is all the service needs to plan its next request,
//! then the signatures and rules, which only ingest needs. [`Checked::arrive`] returns after
//! the first step, with a [`Verifier`] that does the second: the shell hands the answer to the
//! service at once (so the next request leaves while this answer is still being verified) and
//! runs the verifier. The work is cut into chunks that either side takes: when the service
//! ingests the answer before the verifier is done, it verifies the chunks nobody took yet
//! (on its own thread, as if it had received the answer unverified) and then waits only for
//! the chunks the verifier is working on; a verifier dropped unrun leaves it every chunk.
//! Either way the verdicts are those of the protocol's `verify_batch` on these very bytes, so
//! the outcomes do not depend on which thread computed them or when. (One known exception,
//! shared by every batched path: ed25519 batch verification accepts a signature with a
//! small-order R that strict verification refuses, so such a contribution, which only its
//! author's key can make, passes or fails with the rest of its batch.)

use agora_protocol::automerge::ChangeHash;
use agora_protocol::contribution::{change_preview, verify_batch, VerifiedContribution};
use agora_protocol::{Contribution, DocId, Rejection, SpaceId};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

/// One contribution's verdict: the space it names (if it decoded) and the protocol's verdict.
pub(crate) type Verdict = (Option<SpaceId>, Result<VerifiedContribution, Rejection>);

/// A contribution decoded, or why it did not decode.
type Decoded = Result<Contribution, Rejection>;

/// What a contribution's header says: its document, hash and dependencies.
type Header = (DocId, ChangeHash, Vec<ChangeHash>);

/// Contributions per chunk of verification work.
const CHUNK: usize = 128;

/// The verification work of one answer, shared by the [`Verifier`] and the [`Checked`].
#[derive(Debug)]
struct Work {
    /// Per chunk, its decoded contributions (or why each did not decode), until a worker
    /// takes them.
    inputs: Vec<Mutex<Option<Vec<Decoded>>>>,
    /// Per chunk, its verdicts once verified.
    outputs: Mutex<Outputs>,
    /// Signalled when a chunk is done or lost.
    done: Condvar,
}

#[derive(Debug, Default)]
struct Outputs {
    chunks: Vec<Option<Vec<Verdict>>>,
    /// Chunks done or lost so far.
    finished: usize,
    /// A worker stopped (panicked) in the middle of a chunk: its verdicts will never come.
    lost: bool,
}

/// Encoded contributions decoded and verified by the shell as they arrived (see the module
/// documentation). Only [`Checked::of`] and [`Checked::arrive`] make one, from the very bytes
/// it travels with; the service still makes every decision (topic, space, duplicates,
/// dependencies) and gives the outcomes it would give had it verified them itself.
#[derive(Debug, Clone)]
pub struct Checked {
    /// Per contribution, its header if the contribution decoded and its header read.
    headers: Vec<Option<Header>>,
    work: Arc<Work>,
}

/// Verifies the contributions of a [`Checked`] made by [`Checked::arrive`] (what the service
/// has not verified itself by then). Dropping it unrun leaves the work to the service.
#[derive(Debug)]
pub struct Verifier {
    work: Arc<Work>,
}

impl Checked {
    /// Decodes and verifies `items` now (a pure function of the bytes; any thread).
    pub fn of<B: AsRef<[u8]>>(items: &[B]) -> Checked {
        let (checked, verifier) = Checked::arrive(items);
        verifier.run();
        checked
    }

    /// Decodes `items` and reads their headers now; the [`Verifier`] verifies them (run it
    /// after handing the `Checked` on).
    pub fn arrive<B: AsRef<[u8]>>(items: &[B]) -> (Checked, Verifier) {
        let mut headers = Vec::with_capacity(items.len());
        let mut decoded = Vec::with_capacity(items.len());
        for bytes in items {
            match Contribution::decode(bytes.as_ref()) {
                Ok(c) => {
                    headers.push(change_preview(&c.change).map(|(h, deps)| (c.doc, h, deps)));
                    decoded.push(Ok(c));
                }
                Err(e) => {
                    headers.push(None);
                    decoded.push(Err(e));
                }
            }
        }
        let mut inputs = Vec::with_capacity(decoded.len().div_ceil(CHUNK));
        let mut rest = decoded.into_iter().peekable();
        while rest.peek().is_some() {
            inputs.push(Mutex::new(Some(rest.by_ref().take(CHUNK).collect())));
        }
        let work = Arc::new(Work {
            outputs: Mutex::new(Outputs {
                chunks: vec![None; inputs.len()],
                ..Outputs::default()
            }),
            inputs,
            done: Condvar::new(),
        });
        (
            Checked {
                headers,
                work: work.clone(),
            },
            Verifier { work },
        )
    }

    /// How many contributions it covers.
    pub fn len(&self) -> usize {
        self.headers.len()
    }

    /// Whether it covers none.
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty()
    }

    /// The document, hash and dependencies of contribution `i`, read from its header (what
    /// `Replica::preview` reads from the bytes). Planning on a header is safe before the
    /// verdict: the hash is computed from the change's bytes, and a contribution that then
    /// fails verification bans the peer and ends the exchange.
    pub(crate) fn preview(&self, i: usize) -> Option<Header> {
        self.headers.get(i)?.clone()
    }

    /// The verdicts, in order: verifies the chunks nobody took yet, then waits for those the
    /// verifier is working on. `None` if a worker stopped in the middle of a chunk, or a clone
    /// of this `Checked` took the verdicts already.
    pub(crate) fn verdicts(self) -> Option<Vec<Verdict>> {
        let mut outputs = self.work.finish()?;
        let chunks: Option<Vec<Vec<Verdict>>> =
            outputs.chunks.iter_mut().map(Option::take).collect();
        chunks.map(|chunks| chunks.into_iter().flatten().collect())
    }

    /// What equality compares: headers, and spaces with change hashes or rejections.
    fn key(&self) -> Key {
        let verdicts = self.work.finish().and_then(|outputs| {
            let chunks: Option<Vec<&[Verdict]>> =
                outputs.chunks.iter().map(Option::as_deref).collect();
            chunks.map(|chunks| {
                chunks
                    .into_iter()
                    .flatten()
                    .map(|(space, r)| (*space, r.as_ref().map(|v| v.hash()).map_err(Clone::clone)))
                    .collect()
            })
        });
        (self.headers.clone(), verdicts)
    }
}

/// See [`Checked::key`].
type Key = (
    Vec<Option<Header>>,
    Option<Vec<(Option<SpaceId>, Result<ChangeHash, Rejection>)>>,
);

impl PartialEq for Checked {
    fn eq(&self, other: &Checked) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Checked {}

impl Verifier {
    /// Verifies the chunks the service has not taken.
    pub fn run(self) {
        self.work.run();
    }
}

impl Work {
    /// Takes and verifies chunks until none is left untaken.
    fn run(&self) {
        for (i, input) in self.inputs.iter().enumerate() {
            let taken = input.lock().unwrap_or_else(PoisonError::into_inner).take();
            if let Some(chunk) = taken {
                let guard = Lost(self);
                let verdicts = verify_chunk(chunk);
                std::mem::forget(guard);
                let mut outputs = self.outputs.lock().unwrap_or_else(PoisonError::into_inner);
                outputs.chunks[i] = Some(verdicts);
                outputs.finished += 1;
                self.done.notify_all();
            }
        }
    }

    /// Verifies the chunks nobody took yet, then waits for the others: the outputs once every
    /// chunk is done, or `None` if one was lost.
    fn finish(&self) -> Option<MutexGuard<'_, Outputs>> {
        self.run();
        let mut outputs = self.outputs.lock().unwrap_or_else(PoisonError::into_inner);
        while outputs.finished < self.inputs.len() {
            outputs = self
                .done
                .wait(outputs)
                .unwrap_or_else(PoisonError::into_inner);
        }
        (!outputs.lost).then_some(outputs)
    }
}

/// Marks its chunk lost if the worker unwinds before the verdicts are in (a panic), so that
/// nobody waits for them forever.
struct Lost<'a>(&'a Work);

impl Drop for Lost<'_> {
    fn drop(&mut self) {
        let mut outputs = self
            .0
            .outputs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        outputs.finished += 1;
        outputs.lost = true;
        self.0.done.notify_all();
    }
}

/// The protocol's verdicts on one chunk, in order.
fn verify_chunk(chunk: Vec<Decoded>) -> Vec<Verdict> {
    let mut out: Vec<Verdict> = Vec::with_capacity(chunk.len());
    let mut slots = Vec::new();
    let mut contributions = Vec::new();
    for d in chunk {
        match d {
            Ok(c) => {
                slots.push(out.len());
                out.push((Some(c.space), Err(Rejection::BadSignature)));
                contributions.push(c);
            }
            Err(e) => out.push((None, Err(e))),
        }
    }
    for (slot, result) in slots.into_iter().zip(verify_batch(contributions)) {
        out[slot].1 = result;
    }
    out
}
