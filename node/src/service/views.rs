//! Reads: spaces, ideas with their authors' display names, heads, and the service's status.

use super::replica::Replica;
use super::{Service, ServiceError, ServiceStatus, SpaceInfo};
use agora_protocol::automerge::ChangeHash;
use agora_protocol::idea::Idea;
use agora_protocol::{AuthorId, DocId, SpaceId};
use std::collections::BTreeMap;

fn named(mut idea: Idea, names: &BTreeMap<AuthorId, String>) -> Idea {
    idea.author_name = names.get(&idea.author).cloned();
    for c in &mut idea.comments {
        c.author_name = names.get(&c.author).cloned();
    }
    idea
}

impl<R: Replica> Service<R> {
    /// Joined spaces, oldest first.
    pub(crate) fn list_spaces(&self) -> Vec<SpaceInfo> {
        let mut v: Vec<SpaceInfo> = self
            .spaces
            .iter()
            .map(|(id, r)| SpaceInfo {
                id: *id,
                name: r.name.clone(),
                ideas: self.replica.idea_count(id),
                joined_at: r.joined_at,
                private: false,
                role: None,
            })
            .collect();
        let me = self.replica.author();
        v.extend(self.private_records.iter().map(|(id, r)| {
            SpaceInfo {
                id: *id,
                name: self.private_name(id),
                ideas: self.replica.idea_count(id),
                joined_at: r.joined_at,
                private: true,
                role: self
                    .private
                    .get(id)
                    .and_then(|v| v.membership().role(&me))
                    .map(|r| r.name().to_string()),
            }
        }));
        v.sort_by_key(|s| s.joined_at);
        v
    }

    /// One idea, materialised.
    pub(crate) fn show_idea(&self, id: DocId) -> Result<Idea, ServiceError> {
        let space = self
            .replica
            .idea_space(&id)
            .ok_or(ServiceError::UnknownIdea(id))?;
        let idea = self
            .replica
            .idea(&space, &id)
            .ok_or(ServiceError::UnknownIdea(id))?;
        Ok(named(idea, &self.replica.display_names(&space)))
    }

    /// Every idea of a space, newest first.
    pub(crate) fn list_ideas(&self, space: SpaceId) -> Result<Vec<Idea>, ServiceError> {
        if !self.spaces.contains_key(&space) && !self.private.contains_key(&space) {
            return Err(ServiceError::UnknownSpace(space));
        }
        let names = self.replica.display_names(&space);
        let mut ideas: Vec<Idea> = self
            .replica
            .ideas(&space)
            .into_iter()
            .map(|i| named(i, &names))
            .collect();
        ideas.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
        Ok(ideas)
    }

    /// Heads of every document in a space that has any, sorted (for convergence checks: a
    /// document whose every change the membership whites out has none); in a private space
    /// also those of its membership operations, under [`super::sync::OPS_DOC`].
    pub fn heads(&mut self, space: &SpaceId) -> BTreeMap<DocId, Vec<ChangeHash>> {
        let mut out: BTreeMap<DocId, Vec<ChangeHash>> = BTreeMap::new();
        self.replica.visit_heads(space, &mut |doc, heads| {
            out.insert(*doc, heads.to_vec());
        });
        if self.is_private(space) {
            let doc = super::sync::OPS_DOC;
            out.insert(doc, self.sync_heads(space, &doc));
        }
        out
    }

    /// The service's part of the node's status.
    pub fn status(&self) -> ServiceStatus {
        let mut counters = self.counters.clone();
        counters.pending = self.pending.len() as u64;
        ServiceStatus {
            name: self.display_name.clone(),
            spaces: self.spaces.len() + self.private.len(),
            contributions: self.replica.contributions(),
            counters,
            sync: self.sync_status(),
            sync_failures: self.sync.failures,
            banned: self.sync.banned.len(),
        }
    }
}
