//! The errors of starting and talking to a node.

use crate::service::ServiceError;
use crate::store::StoreError;
use crate::{config, network};
use std::path::PathBuf;

/// Errors while starting or talking to a node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// Filesystem trouble with the data directory or key file.
    #[error("{what} {path}: {source}")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The key file exists but does not hold a key.
    #[error("the identity file {0} is damaged: restore it from a backup, or move it away to create a new identity")]
    BadKey(PathBuf),
    /// Another process has the store open.
    #[error("another agora node is already using {0}: stop it first, or pick another --data-dir")]
    Locked(PathBuf),
    /// Store error.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A command failed.
    #[error(transparent)]
    Engine(#[from] ServiceError),
    /// Network error.
    #[error(transparent)]
    Network(#[from] network::NetworkError),
    /// The text given as a ticket is not one.
    #[error("that is not a valid ticket: {0}")]
    BadTicket(String),
    /// Joining a private space with a ticket failed (the message says why, for a person).
    #[error("{0}")]
    Join(String),
    /// Configuration error.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
}
