//! The schema of the documents in a space, as edits on and reads of Automerge documents.
//!
//! An **idea** document's root map holds:
//!
//! | key        | value                                                              |
//! |------------|--------------------------------------------------------------------|
//! | `type`     | the string `"idea"`                                                |
//! | `title`    | string                                                             |
//! | `body`     | text object (collaboratively editable)                             |
//! | `author`   | string: hex author id of the creator                               |
//! | `created`  | timestamp (milliseconds since the Unix epoch)                      |
//! | `status`   | string: one of [`Status`]                                          |
//! | `tags`     | map: tag → `true` (a set; removing a tag deletes its key)           |
//! | `comments` | list of maps `{author: string, text: string, time: timestamp}`     |
//! | `votes`    | map: hex author id → `"up"` or `"down"`                            |
//!
//! A **profile** document's root map holds `type: "profile"` and `name: string`.
//!
//! Reads trust the signed history, not the claims inside it: an idea's and a comment's author is
//! the actor that created them, and a vote counts only when it was cast by the author it is keyed
//! under. So a valid signature on a change that writes someone else's name gains nothing.
//!
//! Every function takes a document the caller created (with [`actor_for`] as its actor) and the
//! time as an argument: this module reads no clock and draws no randomness.

use crate::ids::{AuthorId, DocId, SpaceId};
use crate::limits::*;
use automerge::transaction::{CommitOptions, Transactable};
use automerge::{
    ActorId, AutoCommit, Change, ObjId as ExId, ObjType, ReadDoc, ScalarValue, Value, ROOT,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The lifecycle of an idea.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Status {
    /// Newly posted, under discussion.
    #[default]
    Open,
    /// The team wants to do it.
    Accepted,
    /// Someone is working on it.
    InProgress,
    /// Done.
    Done,
    /// The team decided against it.
    Declined,
}

impl Status {
    /// Every status, in lifecycle order.
    pub const ALL: [Status; 5] = [
        Status::Open,
        Status::Accepted,
        Status::InProgress,
        Status::Done,
        Status::Declined,
    ];

    /// The string stored in the document.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Accepted => "accepted",
            Status::InProgress => "in_progress",
            Status::Done => "done",
            Status::Declined => "declined",
        }
    }
}

impl std::str::FromStr for Status {
    type Err = SchemaError;
    fn from_str(s: &str) -> Result<Self, SchemaError> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| SchemaError::BadStatus(s.chars().take(40).collect()))
    }
}

/// A vote on an idea. Each author has at most one; a later vote replaces theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Vote {
    /// For.
    Up,
    /// Against.
    Down,
}

impl Vote {
    fn as_str(self) -> &'static str {
        match self {
            Vote::Up => "up",
            Vote::Down => "down",
        }
    }
}

/// Why an edit was refused before it became a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// Title missing.
    #[error("the title is empty: give the idea a short title")]
    EmptyTitle,
    /// Title too long.
    #[error("the title has {0} characters; the limit is {MAX_TITLE_CHARS}: shorten it and put the rest in the body")]
    TitleTooLong(usize),
    /// Body too long.
    #[error("the body is {0} bytes; the limit is {MAX_BODY_BYTES}: shorten it")]
    BodyTooLong(usize),
    /// Too many tags.
    #[error("{0} tags given; at most {MAX_TAGS} are allowed")]
    TooManyTags(usize),
    /// A tag is empty, too long or has whitespace.
    #[error("tag {0:?} is invalid: tags are 1 to {MAX_TAG_CHARS} characters without spaces")]
    BadTag(String),
    /// Comment empty or too long.
    #[error("the comment must have 1 to {MAX_COMMENT_BYTES} bytes, it has {0}")]
    BadComment(usize),
    /// Name empty or too long.
    #[error("the name must have 1 to {MAX_NAME_CHARS} characters, it has {0}")]
    BadName(usize),
    /// Unknown status.
    #[error("unknown status {0:?}: use one of open, accepted, in_progress, done, declined")]
    BadStatus(String),
    /// The document is not an idea (or has not been created yet).
    #[error("the document is not an idea")]
    NotAnIdea,
    /// The edit would change nothing (for example the same vote again).
    #[error("nothing to change")]
    Unchanged,
    /// Automerge refused the edit (a bug, or a document in an impossible state).
    #[error("automerge error: {0}")]
    Automerge(String),
}

impl From<automerge::AutomergeError> for SchemaError {
    fn from(e: automerge::AutomergeError) -> Self {
        SchemaError::Automerge(e.to_string())
    }
}

/// What a person types to post an idea.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdeaDraft {
    /// Title (required, at most [`MAX_TITLE_CHARS`] characters).
    pub title: String,
    /// Body (optional, at most [`MAX_BODY_BYTES`] bytes).
    #[serde(default)]
    pub body: String,
    /// Tags (at most [`MAX_TAGS`]); stored lowercased, duplicates removed.
    #[serde(default)]
    pub tags: Vec<String>,
}

impl IdeaDraft {
    /// Checks the limits and normalises: trims the title, lowercases and de-duplicates tags.
    pub fn validated(&self) -> Result<IdeaDraft, SchemaError> {
        let title = validate_title(&self.title)?;
        if self.body.len() > MAX_BODY_BYTES {
            return Err(SchemaError::BodyTooLong(self.body.len()));
        }
        if self.tags.len() > MAX_TAGS {
            return Err(SchemaError::TooManyTags(self.tags.len()));
        }
        let mut tags = BTreeSet::new();
        for tag in &self.tags {
            tags.insert(validate_tag(tag)?);
        }
        Ok(IdeaDraft {
            title,
            body: self.body.clone(),
            tags: tags.into_iter().collect(),
        })
    }
}

fn validate_title(title: &str) -> Result<String, SchemaError> {
    let title = title.trim();
    let n = title.chars().count();
    if n == 0 {
        return Err(SchemaError::EmptyTitle);
    }
    if n > MAX_TITLE_CHARS {
        return Err(SchemaError::TitleTooLong(n));
    }
    Ok(title.to_string())
}

fn validate_tag(tag: &str) -> Result<String, SchemaError> {
    let t = tag.trim().to_lowercase();
    let n = t.chars().count();
    if n == 0 || n > MAX_TAG_CHARS || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(SchemaError::BadTag(tag.chars().take(60).collect()));
    }
    Ok(t)
}

/// Validates a display name or space name: trimmed, 1 to [`MAX_NAME_CHARS`] characters.
pub fn validate_name(name: &str) -> Result<String, SchemaError> {
    let name = name.trim();
    let n = name.chars().count();
    if n == 0 || n > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(SchemaError::BadName(n));
    }
    Ok(name.to_string())
}

/// The actor id an author uses on a document: their 32-byte public key followed by a nonce the
/// node picks at random once per process start (so a node that lost its state never reuses an
/// actor id and sequence number).
pub fn actor_for(author: &AuthorId, nonce: &[u8; 16]) -> ActorId {
    let mut bytes = Vec::with_capacity(48);
    bytes.extend_from_slice(&author.0);
    bytes.extend_from_slice(nonce);
    ActorId::from(bytes)
}

/// The author named by an actor id (its first 32 bytes), if it is long enough.
pub fn author_of_actor(actor: &ActorId) -> Option<AuthorId> {
    AuthorId::from_slice(actor.to_bytes().get(..32)?)
}

fn author_of_exid(id: &ExId) -> Option<AuthorId> {
    match id {
        ExId::Id(_, actor, _) => author_of_actor(actor),
        ExId::Root => None,
    }
}

fn commit_with(doc: &mut AutoCommit, options: CommitOptions) -> Result<Change, SchemaError> {
    // An edit that changes nothing (the same vote twice, the current status) makes no change.
    if doc.commit_with(options).is_none() {
        return Err(SchemaError::Unchanged);
    }
    doc.get_last_local_change()
        .ok_or_else(|| SchemaError::Automerge("commit produced no change".into()))
}

fn commit(doc: &mut AutoCommit, now_ms: i64) -> Result<Change, SchemaError> {
    commit_with(
        doc,
        CommitOptions::default().with_time(now_ms.div_euclid(1000)),
    )
}

/// Prefix of the message of an idea's creating change; the salt follows as 32 hex characters.
pub const IDEA_CREATION_MESSAGE: &str = "agora-idea-v1:";

/// Root keys only the creating change of an idea may write.
const PROTECTED_ROOT_KEYS: [&str; 8] = [
    "type", "author", "created", "salt", "body", "tags", "comments", "votes",
];
/// Root keys any later change may write.
const EDITABLE_ROOT_KEYS: [&str; 2] = ["title", "status"];

fn is_author_key(key: &str) -> bool {
    key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The Automerge type the schema gives a field (PROTOCOL 4.3, 4.4): what an operation under
/// that key may write. Deleting the key is never a wrong type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldKind {
    /// A scalar string (not a text object).
    Str,
    /// A timestamp (or an integer, which readers take as one).
    Time,
    /// A text object.
    Text,
    /// A map object.
    Map,
    /// A list object.
    List,
}

impl FieldKind {
    fn admits(self, action: &automerge::legacy::OpType) -> bool {
        use automerge::legacy::OpType;
        matches!(
            (self, action),
            (_, OpType::Delete)
                | (FieldKind::Str, OpType::Put(ScalarValue::Str(_)))
                | (
                    FieldKind::Time,
                    OpType::Put(ScalarValue::Timestamp(_) | ScalarValue::Int(_))
                )
                | (FieldKind::Text, OpType::Make(ObjType::Text))
                | (FieldKind::Map, OpType::Make(ObjType::Map))
                | (FieldKind::List, OpType::Make(ObjType::List))
        )
    }

    /// The type of a root key of an idea.
    fn of_idea_root(key: &str) -> Option<FieldKind> {
        Some(match key {
            "type" | "salt" | "title" | "author" | "status" => FieldKind::Str,
            "created" => FieldKind::Time,
            "body" => FieldKind::Text,
            "tags" | "votes" => FieldKind::Map,
            "comments" => FieldKind::List,
            _ => return None,
        })
    }

    /// The type of a key of a comment (a map inserted into a list).
    fn of_comment(key: &str) -> Option<FieldKind> {
        Some(match key {
            "author" | "text" => FieldKind::Str,
            "time" => FieldKind::Time,
            _ => return None,
        })
    }

    /// The type of a root key of a profile.
    fn of_profile_root(key: &str) -> Option<FieldKind> {
        matches!(key, "type" | "name").then_some(FieldKind::Str)
    }
}

/// Decodes a change's operations. automerge's decoder panics on some malformed changes that
/// `Change::from_bytes` accepts (an op naming an actor index past the change's actor list): a
/// remote peer must not be able to crash us with one, so a panic here is a refusal.
fn decode_ops(change: &Change) -> Result<automerge::legacy::Change, crate::Rejection> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| change.decode()))
        .map_err(|_| crate::Rejection::BadChange("change operations do not decode".into()))
}

/// The write rules of an idea document, checked on each change on its own (so the verdict does
/// not depend on arrival order):
/// 1. A change without dependencies creates the idea: its message is
///    `agora-idea-v1:<salt as 32 hex>` and [`DocId::idea`]`(space, author, salt)` is the document
///    id. No one else can create (or re-create) an idea under that id.
/// 2. Any other change may write only `title` and `status` at the root, never the protected keys
///    (type, author, created, salt, and the body/tags/comments/votes containers).
/// 3. A map key that looks like an author id (64 hex characters) may be written only by that
///    author, spelled in lowercase: no one votes under someone else's name.
/// 4. A field the schema types is written with that type: at the root, and in a comment this
///    change creates (a map it inserts into a sequence); a vote is a scalar string.
pub fn check_idea_change(
    space: &SpaceId,
    doc_id: &DocId,
    author: &AuthorId,
    change: &Change,
) -> Result<(), crate::Rejection> {
    use crate::Rejection;
    use automerge::legacy::{Key, ObjectId, OpId, OpType};
    let creation = change.deps().is_empty();
    if creation {
        let salt = change
            .message()
            .and_then(|m| m.strip_prefix(IDEA_CREATION_MESSAGE))
            .filter(|s| s.len() == 32)
            .and_then(|s| {
                let mut salt = [0u8; 16];
                hex::decode_to_slice(s, &mut salt).ok().map(|()| salt)
            })
            .ok_or(Rejection::NotIdeaCreator)?;
        if DocId::idea(space, author, &salt) != *doc_id {
            return Err(Rejection::NotIdeaCreator);
        }
    }
    let own_key = author.to_hex();
    let decoded = decode_ops(change)?;
    let actor = &decoded.actor_id;
    // The op counters of the maps this change inserts into a sequence: its new comments (the
    // idea's only list is `comments`, and a comment is a map). Found first, so that the verdict
    // does not depend on where the insert sits among the change's operations.
    let comments: BTreeSet<u64> = (decoded.start_op.get()..)
        .zip(&decoded.operations)
        .filter(|(_, op)| op.insert && matches!(op.action, OpType::Make(ObjType::Map)))
        .map(|(counter, _)| counter)
        .collect();
    for op in &decoded.operations {
        let Key::Map(key) = &op.key else { continue };
        let key = key.as_str();
        if !creation && op.obj == ObjectId::Root && !EDITABLE_ROOT_KEYS.contains(&key) {
            let shown = if PROTECTED_ROOT_KEYS.contains(&key) {
                key.to_string()
            } else {
                key.chars().take(40).collect()
            };
            return Err(Rejection::ProtectedField(shown));
        }
        let author_key = is_author_key(key);
        if author_key && key != own_key {
            return Err(Rejection::ForeignKey);
        }
        let kind = match &op.obj {
            ObjectId::Root => FieldKind::of_idea_root(key),
            ObjectId::Id(OpId(counter, a)) if a == actor && comments.contains(counter) => {
                FieldKind::of_comment(key)
            }
            ObjectId::Id(_) => None,
        }
        .or(author_key.then_some(FieldKind::Str));
        if kind.is_some_and(|kind| !kind.admits(&op.action)) {
            return Err(Rejection::WrongKind(key.chars().take(40).collect()));
        }
    }
    Ok(())
}

/// The write rule of a profile document's content, checked on each change on its own (who may
/// write it is checked by the contribution, PROTOCOL 6.2 step 10a): `type` and `name` at the
/// root are scalar strings.
pub fn check_profile_change(change: &Change) -> Result<(), crate::Rejection> {
    use automerge::legacy::{Key, ObjectId};
    for op in decode_ops(change)?.operations {
        let Key::Map(key) = &op.key else { continue };
        if op.obj == ObjectId::Root
            && FieldKind::of_profile_root(key).is_some_and(|kind| !kind.admits(&op.action))
        {
            return Err(crate::Rejection::WrongKind(key.chars().take(40).collect()));
        }
    }
    Ok(())
}

/// Writes a new idea into an empty document and returns the change to sign. The document's id
/// must be [`DocId::idea`]`(space, author, salt)`; `salt` is 16 random bytes from the caller.
pub fn create_idea(
    doc: &mut AutoCommit,
    draft: &IdeaDraft,
    author: &AuthorId,
    salt: &[u8; 16],
    now_ms: i64,
) -> Result<Change, SchemaError> {
    let draft = draft.validated()?;
    doc.put(ROOT, "type", "idea")?;
    doc.put(ROOT, "salt", hex::encode(salt))?;
    doc.put(ROOT, "title", draft.title.as_str())?;
    let body = doc.put_object(ROOT, "body", ObjType::Text)?;
    doc.splice_text(&body, 0, 0, &draft.body)?;
    doc.put(ROOT, "author", author.to_hex())?;
    doc.put(ROOT, "created", ScalarValue::Timestamp(now_ms))?;
    doc.put(ROOT, "status", Status::Open.as_str())?;
    let tags = doc.put_object(ROOT, "tags", ObjType::Map)?;
    for tag in &draft.tags {
        doc.put(&tags, tag.as_str(), true)?;
    }
    doc.put_object(ROOT, "comments", ObjType::List)?;
    doc.put_object(ROOT, "votes", ObjType::Map)?;
    commit_with(
        doc,
        CommitOptions::default()
            .with_time(now_ms.div_euclid(1000))
            .with_message(format!("{IDEA_CREATION_MESSAGE}{}", hex::encode(salt))),
    )
}

fn object(doc: &AutoCommit, key: &str) -> Result<ExId, SchemaError> {
    match doc.get(ROOT, key)? {
        Some((Value::Object(_), id)) => Ok(id),
        _ => Err(SchemaError::NotAnIdea),
    }
}

fn ensure_idea(doc: &AutoCommit) -> Result<(), SchemaError> {
    match doc.get(ROOT, "type")? {
        Some((Value::Scalar(s), _)) if s.as_str() == Some("idea") => Ok(()),
        _ => Err(SchemaError::NotAnIdea),
    }
}

/// Appends a comment by `author`.
pub fn add_comment(
    doc: &mut AutoCommit,
    author: &AuthorId,
    text: &str,
    now_ms: i64,
) -> Result<Change, SchemaError> {
    let text = text.trim();
    if text.is_empty() || text.len() > MAX_COMMENT_BYTES {
        return Err(SchemaError::BadComment(text.len()));
    }
    ensure_idea(doc)?;
    let comments = object(doc, "comments")?;
    let at = doc.length(&comments);
    let c = doc.insert_object(&comments, at, ObjType::Map)?;
    doc.put(&c, "author", author.to_hex())?;
    doc.put(&c, "text", text)?;
    doc.put(&c, "time", ScalarValue::Timestamp(now_ms))?;
    commit(doc, now_ms)
}

/// Records `author`'s vote, replacing any earlier vote of theirs.
pub fn cast_vote(
    doc: &mut AutoCommit,
    author: &AuthorId,
    vote: Vote,
    now_ms: i64,
) -> Result<Change, SchemaError> {
    ensure_idea(doc)?;
    let votes = object(doc, "votes")?;
    doc.put(&votes, author.to_hex(), vote.as_str())?;
    commit(doc, now_ms)
}

/// Sets the idea's status.
pub fn set_status(
    doc: &mut AutoCommit,
    status: Status,
    now_ms: i64,
) -> Result<Change, SchemaError> {
    ensure_idea(doc)?;
    doc.put(ROOT, "status", status.as_str())?;
    commit(doc, now_ms)
}

/// Sets the display name in the author's own profile document.
pub fn set_display_name(
    doc: &mut AutoCommit,
    name: &str,
    now_ms: i64,
) -> Result<Change, SchemaError> {
    let name = validate_name(name)?;
    doc.put(ROOT, "type", "profile")?;
    doc.put(ROOT, "name", name.as_str())?;
    commit(doc, now_ms)
}

/// Reads a profile document: its owner (an author whose derived profile id is `doc_id`) and the
/// display name they set. Values written by anyone else (which validation already refuses) are
/// ignored.
pub fn read_profile<D: ReadDoc>(
    doc: &D,
    space: &SpaceId,
    doc_id: &DocId,
) -> Option<(AuthorId, String)> {
    let values = doc.get_all(ROOT, "name").ok()?;
    values.into_iter().rev().find_map(|(v, id)| {
        let s = v.as_str()?;
        let owner = author_of_exid(&id)?;
        (DocId::profile(space, &owner) == *doc_id)
            .then(|| (owner, truncate_chars(s, MAX_NAME_CHARS)))
    })
}

/// A comment as shown to people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comment {
    /// Who wrote it: the actor that created the comment, whatever the comment claims.
    pub author: AuthorId,
    /// The author's display name, if the node knows it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub author_name: Option<String>,
    /// The comment.
    pub text: String,
    /// When it was written (ms since the Unix epoch, as claimed by its author).
    pub time: i64,
}

/// Vote totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteCount {
    /// Votes for.
    pub up: u64,
    /// Votes against.
    pub down: u64,
}

/// An idea as shown to people: the materialised state of an idea document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Idea {
    /// The idea's document id.
    pub id: DocId,
    /// The space it belongs to.
    pub space: SpaceId,
    /// Title.
    pub title: String,
    /// Body.
    pub body: String,
    /// Who created it (the actor of the creating change).
    pub author: AuthorId,
    /// The author's display name, if the node knows it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub author_name: Option<String>,
    /// When it was created (ms since the Unix epoch, as claimed by its author).
    pub created: i64,
    /// Tags, sorted.
    pub tags: Vec<String>,
    /// Status.
    pub status: Status,
    /// Vote totals.
    pub votes: VoteCount,
    /// Each author's vote.
    pub voters: std::collections::BTreeMap<AuthorId, Vote>,
    /// Comments in document order.
    pub comments: Vec<Comment>,
}

fn truncate_chars(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

fn truncate_bytes(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

fn scalar_str<D: ReadDoc>(doc: &D, obj: &ExId, key: &str) -> Option<String> {
    match doc.get(obj, key).ok()?? {
        (Value::Scalar(s), _) => s.as_str().map(str::to_string),
        _ => None,
    }
}

fn timestamp<D: ReadDoc>(doc: &D, obj: &ExId, key: &str) -> i64 {
    match doc.get(obj, key).ok().flatten() {
        Some((Value::Scalar(s), _)) => match s.as_ref() {
            ScalarValue::Timestamp(t) | ScalarValue::Int(t) => *t,
            _ => 0,
        },
        _ => 0,
    }
}

/// Materialises an idea document. Returns `None` if the document is not (yet) an idea, for
/// example when only later changes have arrived. Untrusted content is cut to the protocol limits.
pub fn read_idea<D: ReadDoc>(doc: &D, space: SpaceId, id: DocId) -> Option<Idea> {
    let (type_value, type_id) = doc.get(ROOT, "type").ok()??;
    if type_value.as_str() != Some("idea") {
        return None;
    }
    // The creator is the actor of the op that wrote `type`: only the creating change may write
    // it (`check_idea_change`), and only the creator can make that change.
    let author = author_of_exid(&type_id)?;
    let title = truncate_chars(
        &scalar_str(doc, &ROOT, "title").unwrap_or_default(),
        MAX_TITLE_CHARS,
    );
    let body = match doc.get(ROOT, "body").ok().flatten() {
        Some((Value::Object(ObjType::Text), body)) => doc.text(&body).unwrap_or_default(),
        _ => String::new(),
    };
    let body = truncate_bytes(body, MAX_BODY_BYTES);
    let status = scalar_str(doc, &ROOT, "status")
        .and_then(|s| s.parse().ok())
        .unwrap_or_default();
    let mut tags: Vec<String> = match doc.get(ROOT, "tags").ok().flatten() {
        Some((Value::Object(ObjType::Map), tags)) => doc
            .keys(&tags)
            .filter(|t| validate_tag(t).as_deref() == Ok(t.as_str()))
            .take(MAX_TAGS * 4)
            .collect(),
        _ => Vec::new(),
    };
    tags.sort();
    let mut voters = std::collections::BTreeMap::new();
    if let Some((Value::Object(ObjType::Map), votes)) = doc.get(ROOT, "votes").ok().flatten() {
        for key in doc.keys(&votes) {
            let Ok(voter) = key.parse::<AuthorId>() else {
                continue;
            };
            if voter.to_hex() != key {
                continue;
            }
            // Among concurrent values for this key, only one written by the voter counts.
            let own = doc.get_all(&votes, key.as_str()).ok().and_then(|all| {
                all.into_iter().rev().find_map(|(v, id)| {
                    if author_of_exid(&id) != Some(voter) {
                        return None;
                    }
                    match v.as_str()? {
                        "up" => Some(Vote::Up),
                        "down" => Some(Vote::Down),
                        _ => None,
                    }
                })
            });
            if let Some(vote) = own {
                voters.insert(voter, vote);
            }
        }
    }
    let votes = VoteCount {
        up: voters.values().filter(|v| **v == Vote::Up).count() as u64,
        down: voters.values().filter(|v| **v == Vote::Down).count() as u64,
    };
    let mut comments = Vec::new();
    if let Some((Value::Object(ObjType::List), list)) = doc.get(ROOT, "comments").ok().flatten() {
        for i in 0..doc.length(&list) {
            let Some((Value::Object(ObjType::Map), c)) = doc.get(&list, i).ok().flatten() else {
                continue;
            };
            let Some(author) = author_of_exid(&c) else {
                continue;
            };
            // Only what the comment's author wrote into it counts.
            let own = |key: &str| -> Option<ScalarValue> {
                doc.get_all(&c, key)
                    .ok()?
                    .into_iter()
                    .rev()
                    .find_map(|(v, id)| match (v, author_of_exid(&id) == Some(author)) {
                        (Value::Scalar(s), true) => Some(s.into_owned()),
                        _ => None,
                    })
            };
            let text = own("text")
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let time = match own("time") {
                Some(ScalarValue::Timestamp(t)) | Some(ScalarValue::Int(t)) => t,
                _ => 0,
            };
            comments.push(Comment {
                author,
                author_name: None,
                text: truncate_bytes(text, MAX_COMMENT_BYTES),
                time,
            });
        }
    }
    Some(Idea {
        id,
        space,
        title,
        body,
        author,
        author_name: None,
        created: timestamp(doc, &ROOT, "created"),
        tags,
        status,
        votes,
        voters,
        comments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc_for(author: &AuthorId, n: u8) -> AutoCommit {
        AutoCommit::new().with_actor(actor_for(author, &[n; 16]))
    }

    #[test]
    fn idea_round_trip_and_foreign_votes_ignored() {
        let alice = AuthorId([1; 32]);
        let bob = AuthorId([2; 32]);
        let mut a = doc_for(&alice, 1);
        let draft = IdeaDraft {
            title: "  Lunch rota ".into(),
            body: "Who brings what".into(),
            tags: vec!["Food".into(), "food".into(), "team".into()],
        };
        create_idea(&mut a, &draft, &alice, &[5; 16], 1_700_000_000_000).unwrap();
        let mut b = doc_for(&bob, 2);
        b.merge(&mut a).unwrap();
        add_comment(&mut b, &bob, "I bring soup", 1_700_000_001_000).unwrap();
        cast_vote(&mut b, &bob, Vote::Up, 1).unwrap();
        // Bob writes a vote under Alice's key: it must not count.
        let votes = object(&b, "votes").unwrap();
        b.put(&votes, alice.to_hex(), "down").unwrap();
        b.commit();
        let idea = read_idea(&b, SpaceId([0; 16]), DocId([9; 16])).unwrap();
        assert_eq!(idea.title, "Lunch rota");
        assert_eq!(idea.tags, vec!["food", "team"]);
        assert_eq!(idea.author, alice);
        assert_eq!(idea.votes, VoteCount { up: 1, down: 0 });
        assert_eq!(idea.comments.len(), 1);
        assert_eq!(idea.comments[0].author, bob);
        assert_eq!(idea.status, Status::Open);
    }

    #[test]
    fn only_the_creator_creates_and_protected_fields_stay_put() {
        use crate::Rejection;
        let space = SpaceId([3; 16]);
        let (alice, bob) = (AuthorId([1; 32]), AuthorId([2; 32]));
        let salt = [7u8; 16];
        let id = DocId::idea(&space, &alice, &salt);
        let draft = IdeaDraft {
            title: "t".into(),
            ..Default::default()
        };
        let mut a = doc_for(&alice, 1);
        let created = create_idea(&mut a, &draft, &alice, &salt, 0).unwrap();
        assert_eq!(check_idea_change(&space, &id, &alice, &created), Ok(()));
        // The same creation claimed by Bob, or for another id, is refused.
        let mut b0 = doc_for(&bob, 2);
        let forged = create_idea(&mut b0, &draft, &bob, &salt, 0).unwrap();
        assert_eq!(
            check_idea_change(&space, &id, &bob, &forged),
            Err(Rejection::NotIdeaCreator)
        );
        // Bob's later changes: comments and his own vote are fine; rewriting the author or
        // voting under Alice's key is not; unchanged edits make no change.
        let mut b = doc_for(&bob, 2);
        b.merge(&mut a).unwrap();
        let ok = add_comment(&mut b, &bob, "hi", 1).unwrap();
        assert_eq!(check_idea_change(&space, &id, &bob, &ok), Ok(()));
        let ok = cast_vote(&mut b, &bob, Vote::Down, 1).unwrap();
        assert_eq!(check_idea_change(&space, &id, &bob, &ok), Ok(()));
        assert_eq!(
            cast_vote(&mut b, &bob, Vote::Down, 2),
            Err(SchemaError::Unchanged)
        );
        b.put(ROOT, "type", "x").unwrap();
        b.commit();
        let bad = b.get_last_local_change().unwrap();
        assert_eq!(
            check_idea_change(&space, &id, &bob, &bad),
            Err(Rejection::ProtectedField("type".into()))
        );
        let votes = object(&b, "votes").unwrap();
        b.put(&votes, alice.to_hex(), "down").unwrap();
        b.commit();
        let bad = b.get_last_local_change().unwrap();
        assert_eq!(
            check_idea_change(&space, &id, &bob, &bad),
            Err(Rejection::ForeignKey)
        );
    }

    /// What Automerge's JavaScript binding makes of a plain string (a text object) where the
    /// schema has a scalar string, and the other wrong types, are refused; the right types,
    /// tags named like typed fields, and deletions pass.
    #[test]
    fn typed_fields_refuse_the_wrong_automerge_type() {
        use crate::Rejection;
        let space = SpaceId([3; 16]);
        let alice = AuthorId([1; 32]);
        let salt = [7u8; 16];
        let id = DocId::idea(&space, &alice, &salt);
        let wrong = |field: &str| Err(Rejection::WrongKind(field.into()));
        let check = |change: &Change| check_idea_change(&space, &id, &alice, change);
        // A creation written field by field, as another implementation might, with `title`
        // as a text object: refused; the same with a scalar title (and a tag named `title`,
        // whose value is a boolean) passes.
        let creation = |title_as_text: bool, body_as_text: bool| {
            let mut d = doc_for(&alice, 1);
            d.put(ROOT, "type", "idea").unwrap();
            if title_as_text {
                let t = d.put_object(ROOT, "title", ObjType::Text).unwrap();
                d.splice_text(&t, 0, 0, "from JavaScript").unwrap();
            } else {
                d.put(ROOT, "title", "from Rust").unwrap();
            }
            if body_as_text {
                d.put_object(ROOT, "body", ObjType::Text).unwrap();
            } else {
                d.put(ROOT, "body", "a plain string").unwrap();
            }
            d.put(ROOT, "created", ScalarValue::Timestamp(1)).unwrap();
            let tags = d.put_object(ROOT, "tags", ObjType::Map).unwrap();
            d.put(&tags, "title", true).unwrap();
            d.put(&tags, "text", true).unwrap();
            d.put_object(ROOT, "comments", ObjType::List).unwrap();
            d.put_object(ROOT, "votes", ObjType::Map).unwrap();
            let message = format!("{IDEA_CREATION_MESSAGE}{}", hex::encode(salt));
            d.commit_with(CommitOptions::default().with_message(message));
            (d.get_last_local_change().unwrap(), d)
        };
        assert_eq!(check(&creation(true, true).0), wrong("title"));
        assert_eq!(check(&creation(false, false).0), wrong("body"));
        let (ok, mut d) = creation(false, true);
        assert_eq!(check(&ok), Ok(()));
        // Later changes: a title made a text object, a comment whose text is a text object, a
        // vote that is not a scalar string, and a status that is a number are refused.
        let title = d.put_object(ROOT, "title", ObjType::Text).unwrap();
        d.splice_text(&title, 0, 0, "renamed").unwrap();
        d.commit();
        assert_eq!(check(&d.get_last_local_change().unwrap()), wrong("title"));
        d.put(ROOT, "status", 3).unwrap();
        d.commit();
        assert_eq!(check(&d.get_last_local_change().unwrap()), wrong("status"));
        let comments = object(&d, "comments").unwrap();
        let c = d.insert_object(&comments, 0, ObjType::Map).unwrap();
        d.put(&c, "author", alice.to_hex()).unwrap();
        let text = d.put_object(&c, "text", ObjType::Text).unwrap();
        d.splice_text(&text, 0, 0, "an empty comment to a reader")
            .unwrap();
        d.put(&c, "time", ScalarValue::Timestamp(2)).unwrap();
        d.commit();
        assert_eq!(check(&d.get_last_local_change().unwrap()), wrong("text"));
        let c = d.insert_object(&comments, 0, ObjType::Map).unwrap();
        d.put(&c, "text", "fine").unwrap();
        d.put(&c, "time", ScalarValue::Uint(2)).unwrap();
        d.commit();
        assert_eq!(check(&d.get_last_local_change().unwrap()), wrong("time"));
        let votes = object(&d, "votes").unwrap();
        d.put_object(&votes, alice.to_hex(), ObjType::Text).unwrap();
        d.commit();
        assert_eq!(
            check(&d.get_last_local_change().unwrap()),
            wrong(&alice.to_hex()[..40])
        );
        // The schema's own edits pass, and so does deleting a typed field.
        let ok = add_comment(&mut d, &alice, "a real comment", 3).unwrap();
        assert_eq!(check(&ok), Ok(()));
        let ok = cast_vote(&mut d, &alice, Vote::Up, 3).unwrap();
        assert_eq!(check(&ok), Ok(()));
        d.delete(ROOT, "status").unwrap();
        d.commit();
        assert_eq!(check(&d.get_last_local_change().unwrap()), Ok(()));
        // A profile's name as a text object is refused; the schema's profile passes.
        let mut p = doc_for(&alice, 2);
        let ok = set_display_name(&mut p, "Alice", 0).unwrap();
        assert_eq!(check_profile_change(&ok), Ok(()));
        p.put_object(ROOT, "name", ObjType::Text).unwrap();
        p.commit();
        assert_eq!(
            check_profile_change(&p.get_last_local_change().unwrap()),
            wrong("name")
        );
    }

    /// The order PROTOCOL 4.5 states for conflicting values, which other Automerge bindings
    /// must reproduce: by op id, the counter first, then the actor id's bytes; the greatest
    /// wins, and `get_all` lists them ascending.
    #[test]
    fn conflicting_values_are_ordered_by_counter_then_actor_bytes() {
        let (low, high) = (AuthorId([1; 32]), AuthorId([2; 32]));
        let put = |author: &AuthorId, extra_ops: usize, value: &str| {
            let mut d = doc_for(author, 9);
            for i in 0..extra_ops {
                d.put(ROOT, format!("pad{i}"), 0).unwrap();
            }
            d.put(ROOT, "title", value).unwrap();
            d.commit();
            d
        };
        let values = |mut a: AutoCommit, mut b: AutoCommit| {
            a.merge(&mut b).unwrap();
            let all: Vec<String> = a
                .get_all(ROOT, "title")
                .unwrap()
                .into_iter()
                .map(|(v, _)| v.into_string().unwrap())
                .collect();
            let winner = a
                .get(ROOT, "title")
                .unwrap()
                .unwrap()
                .0
                .into_string()
                .unwrap();
            (all, winner)
        };
        // Same counter: the greater actor wins.
        let (all, winner) = values(put(&high, 0, "high"), put(&low, 0, "low"));
        assert_eq!(all, ["low", "high"]);
        assert_eq!(winner, "high");
        // A greater counter wins whatever the actors.
        let (all, winner) = values(put(&high, 0, "high"), put(&low, 2, "low, later"));
        assert_eq!(all, ["high", "low, later"]);
        assert_eq!(winner, "low, later");
    }

    #[test]
    fn drafts_are_bounded() {
        let long = "x".repeat(MAX_TITLE_CHARS + 1);
        let bad = |title: &str, tags: Vec<&str>| {
            IdeaDraft {
                title: title.into(),
                body: String::new(),
                tags: tags.into_iter().map(String::from).collect(),
            }
            .validated()
        };
        assert_eq!(bad("   ", vec![]), Err(SchemaError::EmptyTitle));
        assert!(matches!(
            bad(&long, vec![]),
            Err(SchemaError::TitleTooLong(_))
        ));
        assert!(matches!(bad("t", vec!["a b"]), Err(SchemaError::BadTag(_))));
        assert!(matches!(bad("t", vec![""]), Err(SchemaError::BadTag(_))));
        assert!(bad("t", vec!["ok"]).is_ok());
        assert!(validate_name("").is_err());
        assert!("weird".parse::<Status>().is_err());
    }
}
