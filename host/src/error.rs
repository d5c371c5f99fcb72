use std::path::PathBuf;

use fschain_schema::SchemaError;

/// What can go wrong observing or restoring a host.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("sources file {}: {why}", path.display())]
    Config { path: PathBuf, why: String },
    #[error("[{section}] {key}: bad glob {pattern:?}: {source}")]
    BadGlob {
        section: &'static str,
        key: &'static str,
        pattern: String,
        source: globset::Error,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: the name is not UTF-8, so it cannot name an element; skipped", path.display())]
    NotUtf8 { path: PathBuf },
    #[error("{}: {source}", path.display())]
    BadElement { path: PathBuf, source: SchemaError },
    #[error("sysctl {key}: no such key under {}", root.display())]
    NoSysctl { key: String, root: PathBuf },
    #[error("cannot restore {element}: {why}")]
    CannotRestore { element: String, why: String },
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        source: std::io::Error,
    },
    #[error("OVSDB {db}: {what}: {source}")]
    Ovsdb {
        db: String,
        what: String,
        source: std::io::Error,
    },
    #[error("network namespace {name:?} does not exist (no {}); make it with `ip netns add {name}` or fix [interfaces] netns", path.display())]
    NoNetns { name: String, path: PathBuf },
    #[error("{what}: {source}")]
    Watch {
        what: String,
        source: nix::errno::Errno,
    },
    #[error(transparent)]
    Producer(#[from] fschain_producer::ProducerError),
    #[error(transparent)]
    Store(#[from] fschain_store::StoreError),
    #[error(transparent)]
    Schema(#[from] SchemaError),
}

impl HostError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        HostError::Io {
            path: path.into(),
            source,
        }
    }

    /// Whether the same call may succeed later: a file that vanished or
    /// could not be read may be back; a bad config or element never is.
    pub fn is_transient(&self) -> bool {
        match self {
            HostError::Io { source, .. } => !matches!(
                source.kind(),
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
            ),
            HostError::Watch { .. } | HostError::Netlink { .. } => true,
            HostError::Ovsdb { source, .. } => source.kind() != std::io::ErrorKind::InvalidInput,
            HostError::Producer(e) => e.is_transient(),
            HostError::Store(e) => e.is_transient(),
            _ => false,
        }
    }
}
