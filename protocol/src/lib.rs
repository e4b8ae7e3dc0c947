//! # agora-protocol
//!
//! The pure core of Agora: everything another implementation must agree on, and nothing that
//! touches a socket, a disk, a clock or a global random number generator.
//!
//! Layout:
//! - [`ids`]: author, space and document identifiers and how they are derived and written.
//! - [`identity`]: one ed25519 secret that signs contributions (and, in the node, names the peer).
//! - [`contribution`]: the signed envelope around one Automerge change, the exact bytes that are
//!   signed, the CBOR wire encoding and every validation rule.
//! - [`idea`]: the schema of an idea document (title, body, tags, status, comments, votes) and of a
//!   profile document (display name), as edits on and reads of an Automerge document.
//! - [`limits`]: every size bound, in one place.
//! - [`sync`]: anti-entropy messages (digest, heads, fetch) and the space digest.
//!
//! `docs/PROTOCOL.md` specifies the same things byte for byte; `tests/vectors.rs` checks the test
//! vectors printed there against this code.
#![deny(missing_docs)]

mod cbor;
pub mod contribution;
pub mod hello;
pub mod idea;
pub mod identity;
pub mod ids;
pub mod join;
pub mod keys;
pub mod limits;
pub mod membership;
pub mod sealed;
pub mod sync;
pub mod ticket;

pub use automerge;
pub use contribution::{Contribution, DocKind, Rejection, VerifiedContribution};
pub use idea::{Idea, IdeaDraft, SchemaError, Status, Vote};
pub use identity::Identity;
pub use ids::{AuthorId, DocId, IdError, SpaceId};
