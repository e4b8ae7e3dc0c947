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

    /// Resolves the resolvable operations.
    pub fn resolve(&self) -> Result<Membership, ResolveError> {
        resolve(self.space, self.ops.values())
    }
}
