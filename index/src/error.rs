use std::path::PathBuf;

use fschain_schema::SchemaError;
use fschain_store::StoreError;

/// What can go wrong building or searching an event index.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("the index at {} was built with embedders [{}] but this command uses [{}]; run `fschain reindex --root {}`", path.display(), built.join(", "), configured.join(", "), root.display())]
    EmbedderMismatch {
        path: PathBuf,
        root: PathBuf,
        built: Vec<String>,
        configured: Vec<String>,
    },
    #[error("the index at {} is kept in {built} but this command uses {configured}; run `fschain reindex --root {}` (or give the store it was built in)", path.display(), root.display())]
    StoreMismatch {
        path: PathBuf,
        root: PathBuf,
        built: String,
        configured: String,
    },
    #[error("no event index at {}; run `fschain reindex --root {}` to build it", path.display(), root.display())]
    NoIndex { path: PathBuf, root: PathBuf },
    #[error("the MiniLM model at {}: {why}; fetch it with scripts/fetch-model.sh", path.display())]
    Model { path: PathBuf, why: String },
    #[error("embedding with {embedder}: {why}")]
    Embed { embedder: &'static str, why: String },
    #[error("qdrant ({backend}): {message}")]
    Qdrant {
        backend: String,
        message: String,
        transient: bool,
    },
    #[error("{} is corrupt: {why}; run `fschain reindex`", path.display())]
    Corrupt { path: PathBuf, why: String },
}

impl IndexError {
    /// Whether the same call may succeed later (a Qdrant server away, a
    /// root locked by another command), as opposed to one that always fails.
    pub fn is_transient(&self) -> bool {
        match self {
            IndexError::Store(e) => e.is_transient(),
            IndexError::Qdrant { transient, .. } => *transient,
            _ => false,
        }
    }
}
