//! Where things live in an fschain root.
//!
//! ```text
//! ROOT/
//!   fschain.root        {"chain":"host1","format":1}; written last by init
//!   layer/              subvolume: the live state (a chain directory)
//!   blocks/0000000000   read-only snapshot of layer/ right after block 0's header
//!   blocks/0000000001   ...
//!   meta/lock           flock: one writer at a time
//!   meta/dirty          present while layer/ holds unsealed changes
//!   meta/state-index    cache of the state tree's leaves, keyed by head hash
//!   meta/signing.key    ed25519 private key (0600), never published
//!   meta/signing.pub    its public key, the one sites trust
//!   meta/published      {"height":N}: every block up to N is on the topic
//!   meta/ingest         which offsets of the ops topic the sealed blocks hold
//!   meta/replica        on a site: {"site":..,"base":N}, the first block held
//!   meta/manifests/     the signed manifest of every block published or received
//!   meta/pruned         heights whose snapshots retention deleted, one per line
//!   index/              the event index (qdrant-edge shard and index.json)
//! ```
//!
//! A site keeps one such root per chain, under `SITE/<chain>/`, with no
//! layer; received blocks arrive as `blocks/.incoming-<height>` and are
//! renamed into place once verified.
//!
//! A chain directory (the layer, or any snapshot) is self-contained:
//!
//! ```text
//! CHAIN                 {"chain":"host1","format":1}
//! headers.log           one canonical header per line, block 0 first
//! events.log            one canonical event per line, chain order
//! states/<kind>/<name>  each live element's state, canonical JSON
//! ```

use std::path::{Path, PathBuf};

use fschain_schema::ChainName;
use serde::{Deserialize, Serialize};

use crate::{IoContext, StoreError};

pub const ROOT_MARKER: &str = "fschain.root";
pub const CHAIN_FILE: &str = "CHAIN";
pub const HEADERS_LOG: &str = "headers.log";
pub const EVENTS_LOG: &str = "events.log";
pub const FORMAT: u64 = 1;

/// `fschain.root` and `CHAIN`: which chain, which on-disk format.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainMeta {
    pub chain: ChainName,
    pub format: u64,
}

impl ChainMeta {
    pub fn new(chain: ChainName) -> Self {
        ChainMeta {
            chain,
            format: FORMAT,
        }
    }

    pub fn read(path: &Path) -> Result<Self, StoreError> {
        let bytes = std::fs::read(path).at(path)?;
        let meta: ChainMeta = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            path: path.to_owned(),
            why: e.to_string(),
        })?;
        if meta.format != FORMAT {
            return Err(StoreError::Corrupt {
                path: path.to_owned(),
                why: format!("unsupported format {}", meta.format),
            });
        }
        Ok(meta)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }
}

/// The paths of one fschain root.
#[derive(Clone, Debug)]
pub struct RootLayout {
    root: PathBuf,
}

impl RootLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RootLayout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn marker(&self) -> PathBuf {
        self.root.join(ROOT_MARKER)
    }

    pub fn layer(&self) -> PathBuf {
        self.root.join("layer")
    }

    pub fn blocks_dir(&self) -> PathBuf {
        self.root.join("blocks")
    }

    pub fn snapshot(&self, height: u64) -> PathBuf {
        self.blocks_dir().join(snapshot_name(height))
    }

    pub fn meta_dir(&self) -> PathBuf {
        self.root.join("meta")
    }

    pub fn lock_file(&self) -> PathBuf {
        self.meta_dir().join("lock")
    }

    pub fn dirty_marker(&self) -> PathBuf {
        self.meta_dir().join("dirty")
    }

    pub fn state_index(&self) -> PathBuf {
        self.meta_dir().join("state-index")
    }

    pub fn signing_key(&self) -> PathBuf {
        self.meta_dir().join("signing.key")
    }

    pub fn signing_pub(&self) -> PathBuf {
        self.meta_dir().join("signing.pub")
    }

    pub fn published(&self) -> PathBuf {
        self.meta_dir().join("published")
    }

    /// Heights whose snapshots retention deleted (`retention::prune`).
    pub fn pruned(&self) -> PathBuf {
        self.meta_dir().join("pruned")
    }
    pub fn ingest(&self) -> PathBuf {
        self.meta_dir().join("ingest")
    }

    pub fn replica(&self) -> PathBuf {
        self.meta_dir().join("replica")
    }

    pub fn manifests_dir(&self) -> PathBuf {
        self.meta_dir().join("manifests")
    }

    /// The signed manifest of block `height`, kept for search proofs.
    pub fn manifest(&self, height: u64) -> PathBuf {
        self.manifests_dir().join(format!("{height:010}.manifest"))
    }

    pub fn index_dir(&self) -> PathBuf {
        self.root.join("index")
    }

    /// Where a site receives block `height` before it is verified.
    pub fn incoming(&self, height: u64) -> PathBuf {
        self.blocks_dir().join(incoming_name(height))
    }

    /// Reads `fschain.root`, or says that this is no fschain root.
    pub fn read_marker(&self) -> Result<ChainMeta, StoreError> {
        let marker = self.marker();
        if !marker.exists() {
            return Err(StoreError::NotARoot {
                path: self.root.clone(),
            });
        }
        ChainMeta::read(&marker)
    }

    /// Heights of the snapshots present in `blocks/`, ascending. Names that
    /// are not heights (a staging name, say) are left out.
    pub fn snapshot_heights(&self) -> Result<Vec<u64>, StoreError> {
        let dir = self.blocks_dir();
        let mut heights = Vec::new();
        for entry in std::fs::read_dir(&dir).at(&dir)? {
            let entry = entry.at(&dir)?;
            if let Some(h) = entry.file_name().to_str().and_then(parse_snapshot_name) {
                heights.push(h);
            }
        }
        heights.sort_unstable();
        Ok(heights)
    }
}

/// Which height is on the topic already (`meta/published`; `None`: nothing yet).
pub fn published_height(layout: &RootLayout) -> Result<Option<u64>, StoreError> {
    let path = layout.published();
    match std::fs::read(&path) {
        Ok(bytes) => {
            let v: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                    path: path.clone(),
                    why: e.to_string(),
                })?;
            Ok(v.get("height").and_then(serde_json::Value::as_u64))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io(&path, e)),
    }
}

/// `blocks/` entry name of a height: ten digits, zero-padded, so that names
/// sort by height (wider when a chain passes ten billion blocks).
pub fn snapshot_name(height: u64) -> String {
    format!("{height:010}")
}

/// What a site records about its copy of a chain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaMeta {
    pub site: String,
    /// The first block this copy holds (a checkpoint, when it was rebuilt
    /// by replay from one); 0 for a copy that holds the whole chain.
    pub base: u64,
}

/// The first block a site's copy holds; `None` for a producer's root.
pub fn replica_base(layout: &RootLayout) -> Result<Option<u64>, StoreError> {
    let path = layout.replica();
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<ReplicaMeta>(&bytes)
            .map(|m| Some(m.base))
            .map_err(|e| StoreError::Corrupt {
                path,
                why: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io(&path, e)),
    }
}

/// Staging name of a block being received; never a height, so readers
/// never see it.
pub fn incoming_name(height: u64) -> String {
    format!(".incoming-{height:010}")
}

/// Writes `bytes` to `path` so that a crash leaves the old content or the
/// new, never a mix: a temporary file, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::io::Write as _;
    use std::sync::atomic::{AtomicU64, Ordering};
    // A name of this process's own: two processes (two members of a site
    // starting together) may write the same file at once.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}.{n}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::File::create(&tmp).at(&tmp)?;
    file.write_all(bytes).at(&tmp)?;
    file.sync_all().at(&tmp)?;
    std::fs::rename(&tmp, path).at(path)
}

pub fn parse_snapshot_name(name: &str) -> Option<u64> {
    (name.len() >= 10 && name.bytes().all(|b| b.is_ascii_digit()))
        .then(|| name.parse().ok())
        .flatten()
}

/// Takes the root's writer lock, failing at once if another command holds it.
pub fn lock(layout: &RootLayout) -> Result<std::fs::File, StoreError> {
    let path = layout.lock_file();
    let file = open_lock_file(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked {
            path: layout.root().to_owned(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::io(&path, e)),
    }
}

/// Opens (creating it if needed) a file whose only use is to be locked.
pub fn open_lock_file(path: &Path) -> Result<std::fs::File, StoreError> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .at(path)
}
