//! Identifiers: who wrote something ([`AuthorId`]), where ([`SpaceId`]) and in which document
//! ([`DocId`]). All are fixed-size byte strings written as lowercase hex.

use sha2::{Digest, Sha256};

/// Why a textual identifier could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The text is not lowercase/uppercase hex of the right length.
    #[error("expected {expected} hex characters for {what}, got {got:?}")]
    BadHex {
        /// Which kind of id was expected.
        what: &'static str,
        /// How many hex characters it takes.
        expected: usize,
        /// The text that was given (cut to 80 characters).
        got: String,
    },
}

macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident, $len:expr, $what:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// Length of the id in bytes.
            pub const LEN: usize = $len;

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// Builds the id from a byte slice of exactly [`Self::LEN`] bytes.
            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                <[u8; $len]>::try_from(bytes).ok().map(Self)
            }

            /// Lowercase hex, as used in the API, the CLI and topic names.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::ids::IdError;
            fn from_str(s: &str) -> Result<Self, $crate::ids::IdError> {
                let bad = || $crate::ids::IdError::BadHex {
                    what: $what,
                    expected: $len * 2,
                    got: s.chars().take(80).collect(),
                };
                if s.len() != $len * 2 {
                    return Err(bad());
                }
                let mut out = [0u8; $len];
                hex::decode_to_slice(s, &mut out).map_err(|_| bad())?;
                Ok(Self(out))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use hex_id;

hex_id!(
    /// An author: the 32-byte ed25519 public key that signs their contributions.
    AuthorId,
    32,
    "an author id"
);
hex_id!(
    /// A space: 16 bytes chosen at random by its creator.
    SpaceId,
    16,
    "a space id"
);
hex_id!(
    /// A document inside a space: an idea (16 random bytes chosen by its creator) or an author's
    /// profile (derived, see [`DocId::profile`]).
    DocId,
    16,
    "an idea id"
);

/// Domain prefix of the idea document id derivation.
pub const IDEA_DOC_DOMAIN: &[u8] = b"agora/idea-doc/v1";
/// Domain prefix of the profile document id derivation.
pub const PROFILE_DOC_DOMAIN: &[u8] = b"agora/profile-doc/v1";

/// The prefix of every space's gossipsub topic.
pub const TOPIC_PREFIX: &str = "agora/v1/space/";

impl SpaceId {
    /// The gossipsub topic on which the space's contributions travel: `agora/v1/space/<hex id>`.
    pub fn topic(&self) -> String {
        format!("{TOPIC_PREFIX}{}", self.to_hex())
    }

    /// The space a topic names, if it is a space topic in the canonical (lowercase) form.
    pub fn from_topic(topic: &str) -> Option<SpaceId> {
        let hex = topic.strip_prefix(TOPIC_PREFIX)?;
        let id: SpaceId = hex.parse().ok()?;
        (id.to_hex() == hex).then_some(id)
    }
}

impl DocId {
    /// The id of an idea created by `author` in `space` with a random 16-byte `salt`: the first
    /// 16 bytes of `SHA-256("agora/idea-doc/v1" || space || author || salt)`. The creating change
    /// carries the salt in its message, so receivers check that only the creator created it.
    pub fn idea(space: &SpaceId, author: &AuthorId, salt: &[u8; 16]) -> DocId {
        let mut h = Sha256::new();
        h.update(IDEA_DOC_DOMAIN);
        h.update(space.0);
        h.update(author.0);
        h.update(salt);
        let digest = h.finalize();
        let mut out = [0u8; 16];
        out.copy_from_slice(&digest[..16]);
        DocId(out)
    }

    /// The id of `author`'s profile document in `space`: the first 16 bytes of
    /// `SHA-256("agora/profile-doc/v1" || space || author)`. Only `author` may write to it.
    pub fn profile(space: &SpaceId, author: &AuthorId) -> DocId {
        let mut h = Sha256::new();
        h.update(PROFILE_DOC_DOMAIN);
        h.update(space.0);
        h.update(author.0);
        let digest = h.finalize();
        let mut out = [0u8; 16];
        out.copy_from_slice(&digest[..16]);
        DocId(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_errors() {
        let s = SpaceId([7; 16]);
        assert_eq!(s.to_hex().parse::<SpaceId>().unwrap(), s);
        assert_eq!(SpaceId::from_topic(&s.topic()), Some(s));
        assert_eq!(SpaceId::from_topic(&s.topic().to_uppercase()), None);
        assert_eq!(SpaceId::from_topic("agora/v1/space/zz"), None);
        assert_eq!(SpaceId::from_topic("other/topic"), None);
        assert!("zz".parse::<SpaceId>().is_err());
        assert!("00".repeat(17).parse::<SpaceId>().is_err());
        assert!("g0".repeat(16).parse::<SpaceId>().is_err());
        // Multi-byte characters must not panic the length check.
        assert!("é".repeat(16).parse::<SpaceId>().is_err());
        assert_eq!(s.topic(), format!("agora/v1/space/{}", "07".repeat(16)));
    }

    #[test]
    fn profile_doc_depends_on_space_and_author() {
        let a = DocId::profile(&SpaceId([1; 16]), &AuthorId([2; 32]));
        let b = DocId::profile(&SpaceId([1; 16]), &AuthorId([3; 32]));
        let c = DocId::profile(&SpaceId([4; 16]), &AuthorId([2; 32]));
        assert_ne!(a, b);
        assert_ne!(a, c);
    }
}
