//! Which contributions the membership lets stand: the write rule of a private space.

use super::{Membership, Pin};
use crate::contribution::DocKind;
use crate::ids::{AuthorId, DocId};
use automerge::ChangeHash;
use std::collections::{BTreeSet, HashMap};

/// What the membership says of an author's changes to a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteRight<'a> {
    /// The author may write it: a writer for ideas, any member for their own profile.
    Yes,
    /// The author lost the right: only changes in the causal past of these heads (the pins of the
    /// removal or demotion) stand. Empty when the removal pinned nothing of this document.
    Pinned(&'a [[u8; 32]]),
    /// Never: not a member, or a reader writing an idea.
    No,
}

impl Membership {
    /// The right of `author` to write a document of `kind` (`doc`, for the pins).
    pub fn write_right(&self, author: &AuthorId, kind: DocKind, doc: &DocId) -> WriteRight<'_> {
        match (self.role(author), kind) {
            (Some(role), DocKind::Idea) if role.writes() => return WriteRight::Yes,
            (Some(_), DocKind::Profile) => return WriteRight::Yes,
            _ => {}
        }
        match self.pins.get(author) {
            Some(pins) => WriteRight::Pinned(
                pins.iter()
                    .find(|p: &&Pin| p.doc == *doc)
                    .map_or(&[][..], |p| &p.heads[..]),
            ),
            None => WriteRight::No,
        }
    }
}

/// One change of a document, as far as the write rule needs it.
#[derive(Debug, Clone)]
pub struct ChangeInfo {
    /// Its hash.
    pub hash: ChangeHash,
    /// Its dependencies.
    pub deps: Vec<ChangeHash>,
    /// Its author.
    pub author: AuthorId,
}

/// The changes of one document that the membership whites out: those whose author has no right
/// to them (see [`Membership::write_right`]; for a removed author, its changes outside the
/// causal past of the pinned heads), unless a change whose author has the right builds on them
/// (is in their causal future). What remains is what every member's copy of the document holds,
/// whatever order the changes and the membership operations arrived in.
///
/// The exception keeps others' work whole: a removal never takes away a change someone entitled
/// made, even one that depended on the removed author's late change.
pub fn whiteout(
    membership: &Membership,
    doc: &DocId,
    kind: DocKind,
    changes: &[ChangeInfo],
) -> BTreeSet<ChangeHash> {
    let by_hash: HashMap<ChangeHash, &ChangeInfo> = changes.iter().map(|c| (c.hash, c)).collect();
    // The causal past (inclusive) of some heads, over the changes given.
    let past_of = |heads: &mut dyn Iterator<Item = ChangeHash>| {
        let mut past = BTreeSet::new();
        let mut stack: Vec<ChangeHash> = heads.collect();
        while let Some(h) = stack.pop() {
            if past.insert(h) {
                if let Some(info) = by_hash.get(&h) {
                    stack.extend(info.deps.iter().copied());
                }
            }
        }
        past
    };
    let mut pinned_past: HashMap<AuthorId, BTreeSet<ChangeHash>> = HashMap::new();
    let mut entitled = Vec::new();
    for c in changes {
        let right = match membership.write_right(&c.author, kind, doc) {
            WriteRight::Yes => true,
            WriteRight::No => false,
            WriteRight::Pinned(heads) => pinned_past
                .entry(c.author)
                .or_insert_with(|| past_of(&mut heads.iter().map(|h| ChangeHash(*h))))
                .contains(&c.hash),
        };
        if right {
            entitled.push(c.hash);
        }
    }
    let kept = past_of(&mut entitled.into_iter());
    changes
        .iter()
        .map(|c| c.hash)
        .filter(|h| !kept.contains(h))
        .collect()
}
