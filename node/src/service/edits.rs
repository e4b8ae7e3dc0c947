//! Local edits: spaces joined, the display name, and every change a person makes to an idea.
//! Each becomes writes (durable before the reply) and, for document changes, a signed
//! contribution published to the space.

use super::outbox::When;
use super::replica::{Edit, Replica};
use super::{NetAction, NodeEvent, Now, Output, Service, ServiceError};
use crate::store::{SpaceRecord, Write};
use agora_protocol::idea::{self, IdeaDraft, Status, Vote};
use agora_protocol::{DocId, DocKind, SpaceId};
use rand::RngExt;

impl<R: Replica> Service<R> {
    /// Creates a space with a fresh random id and joins it.
    pub(crate) fn create_space(&mut self, name: &str, now: Now) -> Result<SpaceId, ServiceError> {
        let name = idea::validate_name(name)?;
        let id = SpaceId(self.rng.random());
        self.join_space(id, Some(name), now)?;
        Ok(id)
    }

    /// Joins a space (idempotent).
    pub(crate) fn join_space(
        &mut self,
        space: SpaceId,
        name: Option<String>,
        now: Now,
    ) -> Result<(), ServiceError> {
        if self.spaces.contains_key(&space) {
            return Ok(());
        }
        if self.private.contains_key(&space) {
            // Never the same id as an open space: that would publish its content in the clear.
            return Err(ServiceError::Membership(
                "that is a private space: it is joined with a ticket, not by id".into(),
            ));
        }
        let record = SpaceRecord {
            name,
            joined_at: now.wall_ms,
            private: false,
        };
        self.outbox.writes.push(Write::space(&space, &record));
        self.spaces.insert(space, record);
        self.replica.add_space(space);
        self.outbox.joined.push(space);
        self.outbox
            .push(Output::Net(NetAction::Subscribe(space)), When::Durable);
        self.outbox.event(NodeEvent::SpaceJoined { space });
        // Peers already in the space will not announce it again: catch up from them now.
        self.sync_joined(space, now);
        // Tell the space who we are, if we have a name.
        if let Some(name) = self.display_name.clone() {
            self.write_profile(space, &name, now)?;
        }
        Ok(())
    }

    /// Sets the author's display name and publishes it to every joined space.
    pub(crate) fn set_display_name(&mut self, name: &str, now: Now) -> Result<(), ServiceError> {
        let name = idea::validate_name(name)?;
        self.outbox.writes.push(Write::display_name(&name));
        if self.outbox.previous_name.is_none() {
            self.outbox.previous_name = Some(self.display_name.clone());
        }
        self.display_name = Some(name.clone());
        let me = self.replica.author();
        let mut spaces: Vec<SpaceId> = self.spaces.keys().copied().collect();
        // And every private space this node is a member of (its profile is sealed there).
        spaces.extend(
            self.private
                .iter()
                .filter(|(_, v)| v.membership().role(&me).is_some() && v.current().is_some())
                .map(|(s, _)| *s),
        );
        for space in spaces {
            self.write_profile(space, &name, now)?;
        }
        Ok(())
    }

    pub(super) fn write_profile(
        &mut self,
        space: SpaceId,
        name: &str,
        now: Now,
    ) -> Result<(), ServiceError> {
        let author = self.replica.author();
        if self
            .replica
            .display_names(&space)
            .get(&author)
            .map(String::as_str)
            == Some(name)
        {
            return Ok(());
        }
        let doc = DocId::profile(&space, &author);
        let edit = Edit::DisplayName {
            name: name.to_string(),
        };
        self.local_edit(space, doc, DocKind::Profile, edit, now)?;
        Ok(())
    }

    /// Makes a local edit: the replica applies and signs it and queues its writes; the
    /// contribution is published once they are durable. Returns false when nothing changed.
    fn local_edit(
        &mut self,
        space: SpaceId,
        doc: DocId,
        kind: DocKind,
        edit: Edit,
        now: Now,
    ) -> Result<bool, ServiceError> {
        let topic = self.may_edit(space, kind)?;
        let made = self.replica.edit(
            space,
            doc,
            kind,
            &edit,
            now.wall_ms,
            self.rng.random(),
            &mut self.outbox.writes,
        )?;
        let Some(bytes) = made else {
            return Ok(false);
        };
        self.changed(space, doc, kind);
        let action = match topic {
            Some(topic) => NetAction::PublishTo { topic, bytes },
            None => NetAction::Publish { space, bytes },
        };
        self.outbox.push(Output::Net(action), When::Durable);
        Ok(true)
    }

    /// Whether this node may edit a document of `kind` in `space`: a space it holds, and in a
    /// private space a role that writes it (any member for its profile, a writer for ideas) and
    /// the current key. Returns the private space's current topic.
    fn may_edit(&self, space: SpaceId, kind: DocKind) -> Result<Option<String>, ServiceError> {
        if self.spaces.contains_key(&space) {
            return Ok(None);
        }
        let view = self
            .private
            .get(&space)
            .ok_or(ServiceError::UnknownSpace(space))?;
        let role = view
            .membership()
            .role(&self.replica.author())
            .ok_or_else(|| ServiceError::Membership("this node is no longer a member".into()))?;
        if kind == DocKind::Idea && !role.writes() {
            return Err(ServiceError::Membership(format!(
                "a {} of this space may read, not write",
                role.name()
            )));
        }
        view.topics()
            .into_iter()
            .next()
            .filter(|_| view.current().is_some())
            .map(Some)
            .ok_or_else(|| {
                ServiceError::Membership("this node does not hold the space's current key".into())
            })
    }

    /// Posts a new idea.
    pub(crate) fn create_idea(
        &mut self,
        space: SpaceId,
        draft: IdeaDraft,
        now: Now,
    ) -> Result<DocId, ServiceError> {
        self.may_edit(space, DocKind::Idea)?;
        let salt: [u8; 16] = self.rng.random();
        let id = DocId::idea(&space, &self.replica.author(), &salt);
        self.local_edit(
            space,
            id,
            DocKind::Idea,
            Edit::CreateIdea { draft, salt },
            now,
        )?;
        Ok(id)
    }

    fn idea_edit(&mut self, idea: DocId, edit: Edit, now: Now) -> Result<(), ServiceError> {
        let space = self
            .replica
            .idea_space(&idea)
            .ok_or(ServiceError::UnknownIdea(idea))?;
        if self.replica.heads(&space, &idea).is_empty() {
            // Held, but every change of it is whited out: it does not stand.
            return Err(ServiceError::UnknownIdea(idea));
        }
        self.local_edit(space, idea, DocKind::Idea, edit, now)?;
        Ok(())
    }

    /// Comments on an idea.
    pub(crate) fn comment(
        &mut self,
        idea: DocId,
        text: String,
        now: Now,
    ) -> Result<(), ServiceError> {
        self.idea_edit(idea, Edit::Comment { text }, now)
    }

    /// Votes on an idea.
    pub(crate) fn vote(&mut self, idea: DocId, vote: Vote, now: Now) -> Result<(), ServiceError> {
        self.idea_edit(idea, Edit::Vote { vote }, now)
    }

    /// Changes an idea's status.
    pub(crate) fn set_status(
        &mut self,
        idea: DocId,
        status: Status,
        now: Now,
    ) -> Result<(), ServiceError> {
        self.idea_edit(idea, Edit::Status { status }, now)
    }
}
