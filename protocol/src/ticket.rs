//! Invitation tickets: one copyable string with what a newcomer needs to join a private space.
//!
//! `agora2:` followed by the unpadded base64url (RFC 4648 §5) of the canonical CBOR map
//! `{"v": 2, "space": bstr(16), "invite": bstr(32), "secret": bstr(32), "addrs": [tstr]}`:
//! - `space`: the space id;
//! - `invite`: the id of the signed `Invite` operation;
//! - `secret`: the ticket secret, an ed25519 seed whose public key the `Invite` names. The
//!   newcomer signs its redeem with it. It opens nothing: a ticket holds no epoch secret, so a
//!   leaked ticket that was used, revoked or has expired reveals no content;
//! - `addrs`: libp2p multiaddrs (with `/p2p/<peer id>`) of members to ask, so that joining works
//!   while the inviter is offline.

use crate::cbor::{self, map, uint, Fields};
use crate::identity::Identity;
use crate::ids::SpaceId;
use crate::membership::OpId;
use base64::Engine as _;
use zeroize::Zeroize;

/// The text every ticket begins with.
pub const TICKET_PREFIX: &str = "agora2:";
/// Most addresses in a ticket.
pub const MAX_TICKET_ADDRS: usize = 8;
/// Longest address in a ticket, in bytes.
pub const MAX_ADDR_BYTES: usize = 256;
/// Longest ticket accepted, in characters.
pub const MAX_TICKET_CHARS: usize = 4096;

/// Why a string is not a ticket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TicketError {
    /// It does not start with `agora2:`.
    #[error("not an Agora ticket: it should start with {TICKET_PREFIX:?}")]
    Prefix,
    /// The text after the prefix is not base64url, or too long.
    #[error("the ticket is damaged (not base64url, or cut): {0}")]
    Encoding(String),
    /// The bytes are not a ticket's CBOR.
    #[error("the ticket is damaged: {0}")]
    Malformed(String),
    /// A ticket of another version.
    #[error("this ticket is of version {0}; this node reads version 2")]
    Version(u64),
}

/// A decoded ticket.
#[derive(Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The space.
    pub space: SpaceId,
    /// The invitation.
    pub invite: OpId,
    /// The ticket secret (an ed25519 seed).
    pub secret: [u8; 32],
    /// Members' addresses.
    pub addrs: Vec<String>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("space", &self.space)
            .field("invite", &self.invite)
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

impl Ticket {
    /// The invite key (whose public key the `Invite` operation names).
    pub fn invite_key(&self) -> Identity {
        Identity::from_seed(self.secret)
    }

    /// The canonical CBOR bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        cbor::encode(&map(vec![
            ("v", uint(2)),
            ("space", cbor::bytes(&self.space.0)),
            ("invite", cbor::bytes(&self.invite.0)),
            ("secret", cbor::bytes(&self.secret)),
            (
                "addrs",
                ciborium::Value::Array(
                    self.addrs
                        .iter()
                        .map(|a| ciborium::Value::Text(a.clone()))
                        .collect(),
                ),
            ),
        ]))
    }

    /// The ticket string.
    pub fn encode(&self) -> String {
        format!(
            "{TICKET_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.to_bytes())
        )
    }

    /// Reads a ticket string (surrounding white space is ignored). Never panics.
    pub fn decode(text: &str) -> Result<Ticket, TicketError> {
        let text = text.trim();
        if text.len() > MAX_TICKET_CHARS {
            return Err(TicketError::Encoding(format!(
                "{} characters, more than {MAX_TICKET_CHARS}",
                text.len()
            )));
        }
        let body = text
            .strip_prefix(TICKET_PREFIX)
            .ok_or(TicketError::Prefix)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| TicketError::Encoding(e.to_string()))?;
        let bad = |e: cbor::CborError| TicketError::Malformed(e.0);
        let mut f = Fields::of(
            cbor::decode(&bytes, MAX_TICKET_CHARS).map_err(bad)?,
            "ticket",
        )
        .map_err(bad)?;
        let v = f.uint("v").map_err(bad)?;
        if v != 2 {
            return Err(TicketError::Version(v));
        }
        let space = SpaceId(f.array("space").map_err(bad)?);
        let invite = OpId(f.array("invite").map_err(bad)?);
        let secret = f.array("secret").map_err(bad)?;
        let addrs = f
            .list("addrs", MAX_TICKET_ADDRS)
            .map_err(bad)?
            .into_iter()
            .map(|a| match a {
                ciborium::Value::Text(t) if t.len() <= MAX_ADDR_BYTES => Ok(t),
                _ => Err(TicketError::Malformed(
                    "an address is not short text".into(),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        f.finish().map_err(bad)?;
        let ticket = Ticket {
            space,
            invite,
            secret,
            addrs,
        };
        if ticket.to_bytes() != bytes {
            return Err(TicketError::Malformed("not canonically encoded".into()));
        }
        Ok(ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_round_trip_and_refuse_what_is_not_one() {
        let t = Ticket {
            space: SpaceId([1; 16]),
            invite: OpId([2; 32]),
            secret: [3; 32],
            addrs: vec!["/ip4/127.0.0.1/tcp/4001/p2p/12D3KooW".into()],
        };
        let s = t.encode();
        assert!(s.starts_with(TICKET_PREFIX));
        assert_eq!(Ticket::decode(&format!("  {s}\n")).unwrap(), t);
        assert_eq!(Ticket::decode("0123abcd"), Err(TicketError::Prefix));
        assert!(matches!(
            Ticket::decode("agora2:!!"),
            Err(TicketError::Encoding(_))
        ));
        assert!(Ticket::decode(&s[..s.len() - 4]).is_err());
        assert!(matches!(
            Ticket::decode(&"agora2:".repeat(1000)),
            Err(TicketError::Encoding(_))
        ));
        assert!(
            !format!("{t:?}").contains("3, 3"),
            "the secret is not printed"
        );
    }
}
