//! The identity of a person and their node: one ed25519 secret.
//!
//! The 32-byte secret seed is the signing key of every contribution; its public key is the
//! [`AuthorId`]. The node's libp2p key is derived from the seed by HKDF
//! ([`crate::keys::transport_seed`]), so its `PeerId` says nothing of its author.

use crate::ids::AuthorId;
use ed25519_dalek::{Signer, SigningKey};

/// An author's signing identity.
#[derive(Clone)]
pub struct Identity {
    signing: SigningKey,
}

impl Identity {
    /// Builds the identity from its 32-byte secret seed. The caller supplies the seed (from a key
    /// file or a random source); this crate never draws randomness itself.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Identity {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// The 32-byte secret seed, to be written to the key file or handed to libp2p.
    pub fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// The public key that names this author.
    pub fn author(&self) -> AuthorId {
        AuthorId(self.signing.verifying_key().to_bytes())
    }

    /// Signs `message` (already domain-separated by the caller) with ed25519 (RFC 8032).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Identity")
            .field("author", &self.author())
            .finish_non_exhaustive()
    }
}
