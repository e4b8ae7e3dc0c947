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
        let spaces: Vec<SpaceId> = self.spaces.keys().copied().collect();
        for space in spaces {
            self.write_profile(space, &name, now)?;
        }
        Ok(())
    }

    fn write_profile(&mut self, space: SpaceId, name: &str, now: Now) -> Result<(), ServiceError> {
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
        if !self.spaces.contains_key(&space) {
            return Err(ServiceError::UnknownSpace(space));
        }
        let made = self.replica.edit(
            space,
            doc,
            kind,
            &edit,
            now.wall_ms,
            &mut self.outbox.writes,
        )?;
        let Some(bytes) = made else {
            return Ok(false);
        };
        self.changed(space, doc, kind);
        self.outbox.push(
            Output::Net(NetAction::Publish { space, bytes }),
            When::Durable,
        );
        Ok(true)
    }

    /// Posts a new idea.
    pub(crate) fn create_idea(
        &mut self,
        space: SpaceId,
        draft: IdeaDraft,
        now: Now,
    ) -> Result<DocId, ServiceError> {
        if !self.spaces.contains_key(&space) {
            return Err(ServiceError::UnknownSpace(space));
        }
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
