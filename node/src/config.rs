//! Settings: defaults, the optional TOML file `<data dir>/config.toml`, and the data directory
//! layout. Command-line flags and `AGORA_*` environment variables override the file (the CLI
//! applies them on top of [`Config::load`]).

use crate::network::{parse_addr, NetworkError};
use crate::service::ServiceConfig;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Name of the file in the data dir where a running node writes its API address and token.
pub const API_FILE: &str = "api.json";
/// Name of the identity (secret key) file in the data dir.
pub const KEY_FILE: &str = "identity.key";
/// Name of the optional config file in the data dir.
pub const CONFIG_FILE: &str = "config.toml";
/// Default API address.
pub const DEFAULT_API: &str = "127.0.0.1:7420";

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file does not parse.
    #[error("{path}: {reason}")]
    BadFile {
        /// File.
        path: PathBuf,
        /// Parser message.
        reason: String,
    },
    /// The API address is not HOST:PORT on a loopback host.
    #[error("invalid API address {0:?}: use a loopback HOST:PORT such as 127.0.0.1:7420 (the API is for this machine only)")]
    BadApi(String),
    /// The data directory cannot be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No platform data directory could be determined.
    #[error(
        "cannot find a data directory for this platform: pass --data-dir or set AGORA_DATA_DIR"
    )]
    NoDataDir,
}

/// Everything a node needs to start. Every field has a default; see `docs/CONFIG.md`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the identity, the store and the API file live.
    pub data_dir: PathBuf,
    /// Multiaddrs to listen on.
    pub listen: Vec<String>,
    /// Multiaddrs of peers to dial at start and whenever disconnected.
    pub peers: Vec<String>,
    /// HOST:PORT of the HTTP API (loopback only). Port 0 picks a free port. If the default port
    /// is taken, a free port is used instead.
    pub api: String,
    /// Discover peers on the LAN by mDNS.
    pub mdns: bool,
    /// sled page cache size in bytes.
    pub cache_bytes: u64,
    /// gossipsub heartbeat interval in milliseconds.
    pub heartbeat_ms: u64,
    /// How often unconnected explicit peers are redialled, in milliseconds.
    pub redial_ms: u64,
    /// How often each connected peer is asked for a sync digest of each shared space, in
    /// milliseconds (sync also runs whenever a peer subscribes to a shared space).
    pub sync_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: default_data_dir().unwrap_or_else(|| PathBuf::from(".agora")),
            listen: vec!["/ip4/0.0.0.0/tcp/0".into()],
            peers: Vec::new(),
            api: DEFAULT_API.into(),
            mdns: true,
            cache_bytes: 64 * 1024 * 1024,
            heartbeat_ms: 500,
            redial_ms: 3000,
            sync_ms: 30_000,
        }
    }
}

/// The platform's usual data directory for Agora (e.g. `~/.local/share/agora` on Linux).
pub fn default_data_dir() -> Option<PathBuf> {
    directories::ProjectDirs::from("org", "agora", "agora").map(|d| d.data_dir().to_path_buf())
}

impl Config {
    /// Defaults for `data_dir`, overlaid with `<data_dir>/config.toml` if it exists.
    pub fn load(data_dir: PathBuf) -> Result<Config, ConfigError> {
        let path = data_dir.join(CONFIG_FILE);
        let mut config = match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str::<Config>(&text).map_err(|e| ConfigError::BadFile {
                path: path.clone(),
                reason: e.to_string(),
            })?,
            Err(_) => Config::default(),
        };
        config.data_dir = data_dir;
        Ok(config)
    }

    /// A config for tests and embedding: loopback only, no mDNS, API on a free port.
    pub fn ephemeral(data_dir: PathBuf) -> Config {
        Config {
            data_dir,
            listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
            api: "127.0.0.1:0".into(),
            mdns: false,
            cache_bytes: 8 * 1024 * 1024,
            heartbeat_ms: 200,
            redial_ms: 500,
            sync_ms: 5_000,
            ..Config::default()
        }
    }

    /// Path of the store directory.
    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join("store")
    }

    /// Path of the identity file.
    pub fn key_path(&self) -> PathBuf {
        self.data_dir.join(KEY_FILE)
    }

    /// Path of the API file.
    pub fn api_file(&self) -> PathBuf {
        self.data_dir.join(API_FILE)
    }

    /// The listen addresses, checked (a clear error names the first bad one).
    pub fn listen_addrs(&self) -> Result<Vec<String>, NetworkError> {
        checked(&self.listen)
    }

    /// The peer addresses, checked.
    pub fn peer_addrs(&self) -> Result<Vec<String>, NetworkError> {
        checked(&self.peers)
    }

    /// The service's settings that follow from this config.
    pub fn service_config(&self) -> ServiceConfig {
        ServiceConfig {
            sync_every: self.sync_ms.max(1),
            // Gossip usually closes a gap within a few heartbeats: look again after three.
            sync_recheck: 3 * self.heartbeat_ms.max(1),
            ..ServiceConfig::default()
        }
    }

    /// Parsed API address, refused unless it is on loopback.
    pub fn api_addr(&self) -> Result<SocketAddr, ConfigError> {
        let addr: SocketAddr = self
            .api
            .parse()
            .map_err(|_| ConfigError::BadApi(self.api.clone()))?;
        if !addr.ip().is_loopback() {
            return Err(ConfigError::BadApi(self.api.clone()));
        }
        Ok(addr)
    }

    /// Creates the data dir (owner-only on Unix).
    pub fn ensure_data_dir(&self) -> Result<(), ConfigError> {
        std::fs::create_dir_all(&self.data_dir).map_err(|source| ConfigError::DataDir {
            path: self.data_dir.clone(),
            source,
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ =
                std::fs::set_permissions(&self.data_dir, std::fs::Permissions::from_mode(0o700));
        }
        Ok(())
    }
}

fn checked(addrs: &[String]) -> Result<Vec<String>, NetworkError> {
    addrs
        .iter()
        .map(|a| parse_addr(a).map(|_| a.clone()))
        .collect()
}

/// Writes a file readable and writable by the owner only, atomically (temp file + rename).
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// What a running node writes into `<data dir>/api.json` for the CLI.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiFile {
    /// Where the API listens.
    pub addr: SocketAddr,
    /// The bearer token.
    pub token: String,
    /// The node's process id.
    pub pid: u32,
}

/// Writes the API file (owner-only).
pub fn write_api_file(path: &Path, addr: SocketAddr, token: &str) -> std::io::Result<()> {
    let file = ApiFile {
        addr,
        token: token.to_string(),
        pid: std::process::id(),
    };
    write_private(
        path,
        &serde_json::to_vec_pretty(&file).expect("serialisable"),
    )
}
