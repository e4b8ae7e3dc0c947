//! The set of a space's operations that a node holds, with the ones still waiting for parents.

use super::wire::VerifiedOp;
use super::{resolve, Membership, OpId, ResolveError, MAX_OPS};
use crate::ids::SpaceId;
use std::collections::{BTreeMap, HashMap};

/// Most operations held back for missing parents, per space.
pub const MAX_PENDING_OPS: usize = 1024;

/// A space's operations: those whose whole past is known (the resolvable set) and those still
/// waiting for a parent. Whatever order operations arrive in, the same set resolves the same.
#[derive(Debug, Clone)]
pub struct OpLog {
    space: SpaceId,
    ops: BTreeMap<OpId, VerifiedOp>,
    pending: HashMap<OpId, VerifiedOp>,
}

/// What [`OpLog::insert`] did with an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// Already held.
    Duplicate,
    /// Held back until its parents arrive.
    Pending,
    /// Added, with any pending operations it completed (in the order they were added).
    Added(Vec<OpId>),
    /// Refused: another space's operation, or the log is full.
    Refused(&'static str),
}

impl OpLog {
    /// An empty log for `space`.
    pub fn new(space: SpaceId) -> OpLog {
        OpLog {
            space,
            ops: BTreeMap::new(),
            pending: HashMap::new(),
        }
    }

    /// The space.
    pub fn space(&self) -> SpaceId {
        self.space
    }

    /// Adds a verified operation.
    pub fn insert(&mut self, op: VerifiedOp) -> Inserted {
        let id = op.id();
        if op.op().space != self.space {
            return Inserted::Refused("another space");
        }
        if self.ops.contains_key(&id) || self.pending.contains_key(&id) {
            return Inserted::Duplicate;
        }
        // Held and waiting together stay within MAX_OPS, so that completing the waiting ones
        // never takes the resolvable set past it.
        if self.ops.len() + self.pending.len() >= MAX_OPS {
            return Inserted::Refused("too many operations");
        }
        if !op.op().parents.iter().all(|p| self.ops.contains_key(p)) {
            if self.pending.len() >= MAX_PENDING_OPS {
                return Inserted::Refused("too many pending operations");
            }
            self.pending.insert(id, op);
            return Inserted::Pending;
        }
        let mut added = vec![id];
        self.ops.insert(id, op);
        // Admit what waited for it, until nothing more completes.
        loop {
            let mut ready: Vec<OpId> = self
                .pending
                .iter()
                .filter(|(_, o)| o.op().parents.iter().all(|p| self.ops.contains_key(p)))
                .map(|(id, _)| *id)
                .collect();
            if ready.is_empty() {
                break;
            }
            ready.sort();
            for id in ready {
                let op = self.pending.remove(&id).expect("listed above");
                self.ops.insert(id, op);
                added.push(id);
            }
        }
        Inserted::Added(added)
    }

    /// Whether the operation is held (resolvable or pending).
    pub fn contains(&self, id: &OpId) -> bool {
        self.ops.contains_key(id) || self.pending.contains_key(id)
    }

    /// The resolvable operations, by id.
    pub fn ops(&self) -> impl Iterator<Item = &VerifiedOp> {
        self.ops.values()
    }

    /// One resolvable operation.
    pub fn get(&self, id: &OpId) -> Option<&VerifiedOp> {
        self.ops.get(id)
    }

    /// How many operations are resolvable, and how many wait for parents.
    pub fn len(&self) -> (usize, usize) {
        (self.ops.len(), self.pending.len())
    }

    /// Whether the log holds nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.pending.is_empty()
    }

    /// The parents a pending operation still lacks (what to ask peers for).
    pub fn missing(&self) -> Vec<OpId> {
        let mut out: Vec<OpId> = self
            .pending
            .values()
            .flat_map(|o| o.op().parents.iter())
            .filter(|p| !self.ops.contains_key(p) && !self.pending.contains_key(p))
            .copied()
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The resolvable operations that are neither in `have` nor among their ancestors, parents
    /// first (what a peer whose heads are `have` lacks). Ids in `have` this log does not hold
    /// are ignored.
    pub fn after(&self, have: &[OpId]) -> Vec<&VerifiedOp> {
        let mut known: std::collections::HashSet<OpId> = std::collections::HashSet::new();
        let mut stack: Vec<OpId> = have
            .iter()
            .filter(|h| self.ops.contains_key(h))
            .copied()
            .collect();
        while let Some(id) = stack.pop() {
            if known.insert(id) {
                if let Some(op) = self.ops.get(&id) {
                    stack.extend(op.op().parents.iter().copied());
                }
            }
        }
        // Parents first: depth (the longest path from the creation) orders them, ids break
        // ties, as resolution does.
        let mut depth: HashMap<OpId, usize> = HashMap::new();
        let mut rest: Vec<(usize, OpId)> = Vec::new();
        for id in self.ops.keys() {
            let d = self.depth_of(id, &mut depth);
            if !known.contains(id) {
                rest.push((d, *id));
            }
        }
        rest.sort();
        rest.iter().filter_map(|(_, id)| self.ops.get(id)).collect()
    }

    /// The depth of a held operation (0 for one without parents), memoised in `memo`.
    fn depth_of(&self, id: &OpId, memo: &mut HashMap<OpId, usize>) -> usize {
        if let Some(d) = memo.get(id) {
            return *d;
        }
        // Iteratively, so that a long chain does not overflow the stack.
        let mut stack = vec![*id];
        while let Some(top) = stack.last().copied() {
            let parents: Vec<OpId> = self
                .ops
                .get(&top)
                .map(|o| o.op().parents.clone())
                .unwrap_or_default();
            let pending: Vec<OpId> = parents
                .iter()
                .filter(|p| !memo.contains_key(p) && self.ops.contains_key(p))
                .copied()
                .collect();
            if pending.is_empty() {
                let d = parents
                    .iter()
                    .filter_map(|p| memo.get(p))
                    .map(|d| d + 1)
                    .max()
                    .unwrap_or(0);
                memo.insert(top, d);
                stack.pop();
            } else {
                stack.extend(pending);
            }
        }
        memo[id]
    }

    /// The resolvable operations' heads: those no other resolvable operation names as a
    /// parent, in id order.
    pub fn heads(&self) -> Vec<OpId> {
        let parents: std::collections::HashSet<&OpId> = self
            .ops
            .values()
            .flat_map(|o| o.op().parents.iter())
            .collect();
        self.ops
            .keys()
            .filter(|id| !parents.contains(id))
            .copied()
            .collect()
    }

    /// Resolves the resolvable operations.
    pub fn resolve(&self) -> Result<Membership, ResolveError> {
        resolve(self.space, self.ops.values())
    }
}
