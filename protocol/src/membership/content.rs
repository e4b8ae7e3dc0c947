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

/// The changes of one document that the membership whites out: each change whose author has no
/// right to it (see [`Membership::write_right`]: a pinned author's changes outside the causal
/// past of the pinned heads), and every change that depends on one of those. The rest is what
/// every member's copy of the document holds, whatever order the changes and the membership
/// operations arrived in.
pub fn whiteout(
    membership: &Membership,
    doc: &DocId,
    kind: DocKind,
    changes: &[ChangeInfo],
) -> BTreeSet<ChangeHash> {
    let by_hash: HashMap<ChangeHash, &ChangeInfo> = changes.iter().map(|c| (c.hash, c)).collect();
    // The causal past of pinned heads, per pinned author.
    let mut pinned_past: HashMap<AuthorId, BTreeSet<ChangeHash>> = HashMap::new();
    let mut dropped = BTreeSet::new();
    for c in changes {
        let keep = match membership.write_right(&c.author, kind, doc) {
            WriteRight::Yes => true,
            WriteRight::No => false,
            WriteRight::Pinned(heads) => pinned_past
                .entry(c.author)
                .or_insert_with(|| {
                    let mut past = BTreeSet::new();
                    let mut stack: Vec<ChangeHash> = heads.iter().map(|h| ChangeHash(*h)).collect();
                    while let Some(h) = stack.pop() {
                        if past.insert(h) {
                            if let Some(info) = by_hash.get(&h) {
                                stack.extend(info.deps.iter().copied());
                            }
                        }
                    }
                    past
                })
                .contains(&c.hash),
        };
        if !keep {
            dropped.insert(c.hash);
        }
    }
    // Whatever depends on a dropped change goes too.
    let mut children: HashMap<ChangeHash, Vec<ChangeHash>> = HashMap::new();
    for c in changes {
        for d in &c.deps {
            children.entry(*d).or_default().push(c.hash);
        }
    }
    let mut stack: Vec<ChangeHash> = dropped.iter().copied().collect();
    while let Some(h) = stack.pop() {
        for child in children.get(&h).into_iter().flatten() {
            if dropped.insert(*child) {
                stack.push(*child);
            }
        }
    }
    dropped
}
