use std::path::PathBuf;

use fschain_schema::SchemaError;
use fschain_store::StoreError;

/// What can go wrong at a site.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("bad site name {name:?}: use letters, digits, . _ -")]
    BadSiteName { name: String },
    #[error("{} belongs to site {site}", root.display())]
    OtherSite { root: PathBuf, site: String },
    #[error("{chain} block {height}: btrfs receive failed: {error}")]
    Receive {
        chain: String,
        height: u64,
        error: Box<StoreError>,
    },
    /// The site's file system is full; what was being received was given
    /// up whole.
    #[error("the file system holding {} is full: {source}; the block was not applied and nothing partial of it is kept. Free space there; a running consume retries by itself", root.display())]
    DiskFull {
        root: PathBuf,
        #[source]
        source: Box<ConsumerError>,
    },
    #[error("{chain} block {height}: the received snapshot does not verify: {}", problems.join("; "))]
    Unverified {
        chain: String,
        height: u64,
        problems: Vec<String>,
    },
    #[error(
        "{chain}: block {height} is missing from the topic (deleted by retention?), so the blocks after it cannot be applied; rebuild the site from the latest checkpoint with `fschain replay` into an empty root"
    )]
    Gap { chain: String, height: u64 },
    #[error(
        "no trusted keys: give the producers' public keys (--trust or trusted_keys in the config)"
    )]
    NoTrustedKeys,
    #[error("{} already holds chains ({}); replay rebuilds a site from nothing, into an empty directory", root.display(), chains.join(", "))]
    NotEmpty { root: PathBuf, chains: Vec<String> },
    #[error(transparent)]
    Kafka(#[from] fschain_kafka::KafkaClientError),
    #[error("{chain}: the input ends inside block {height}: {}; it was not applied", arrived(*chunks, *of, *manifest))]
    Truncated {
        chain: fschain_schema::ChainName,
        height: u64,
        chunks: u32,
        /// How many chunks the stream has, when its last one arrived.
        of: Option<u32>,
        manifest: bool,
    },
    #[error("reading the import stream: {0}")]
    Input(std::io::Error),
}

impl ConsumerError {
    /// Whether the same call may succeed later: a broker away, a full disk,
    /// a root locked by another command.
    pub fn is_transient(&self) -> bool {
        match self {
            ConsumerError::Store(e) => e.is_transient(),
            ConsumerError::DiskFull { .. } => true,
            ConsumerError::Kafka(e) => e.is_transient(),
            _ => false,
        }
    }

    /// Whether the fault lies with one stream (drop it and wait for a good
    /// copy) rather than with the site (stop).
    pub fn is_bad_stream(&self) -> bool {
        match self {
            ConsumerError::Receive { error, .. } => !error.is_disk_full(),
            ConsumerError::Schema(_) | ConsumerError::Unverified { .. } => true,
            _ => false,
        }
    }

    /// Whether the site's file system ran out of space: the stream is
    /// sound, and the site receives it again once there is room.
    pub fn is_disk_full(&self) -> bool {
        match self {
            ConsumerError::Store(e) => e.is_disk_full(),
            ConsumerError::Receive { error, .. } => error.is_disk_full(),
            ConsumerError::DiskFull { .. } => true,
            _ => false,
        }
    }
}

/// What arrived of a stream cut short, in words.
fn arrived(chunks: u32, of: Option<u32>, manifest: bool) -> String {
    let chunks = match of {
        Some(of) => format!("{chunks} of its {of} chunks arrived"),
        None => format!("{chunks} of its chunks arrived, not the last"),
    };
    if manifest {
        chunks
    } else {
        format!("{chunks}, and no manifest")
    }
}
