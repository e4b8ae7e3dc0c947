//! Every size bound of the protocol. Receivers enforce them on untrusted input; senders never
//! produce anything larger.

/// Largest encoded contribution accepted anywhere (gossip, sync, storage), in bytes.
///
/// Kept well under gossipsub's default 64 KiB `max_transmit_size` so one contribution always fits
/// one gossip message with its libp2p framing.
pub const MAX_CONTRIBUTION_BYTES: usize = 60 * 1024;
/// Largest Automerge change inside a contribution, in bytes.
pub const MAX_CHANGE_BYTES: usize = 56 * 1024;
/// Longest actor id accepted in a change: 32 bytes of public key plus up to 32 bytes of nonce.
pub const MAX_ACTOR_BYTES: usize = 64;
/// Longest idea title, in Unicode scalar values.
pub const MAX_TITLE_CHARS: usize = 200;
/// Longest idea body, in bytes of UTF-8.
pub const MAX_BODY_BYTES: usize = 32 * 1024;
/// Most tags on one idea.
pub const MAX_TAGS: usize = 16;
/// Longest tag, in Unicode scalar values.
pub const MAX_TAG_CHARS: usize = 40;
/// Longest comment, in bytes of UTF-8.
pub const MAX_COMMENT_BYTES: usize = 8 * 1024;
/// Longest display name or space name, in Unicode scalar values.
pub const MAX_NAME_CHARS: usize = 64;
