use fschain_schema::SchemaError;
use fschain_store::StoreError;

/// What can go wrong producing blocks.
#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Schema(#[from] SchemaError),
    #[error("line {line}: {source}")]
    BadLine { line: u64, source: SchemaError },
    #[error("a previous seal failed part-way; reopen the root to recover it")]
    Poisoned,
    #[error("{what} failed: {message}")]
    Command { what: String, message: String },
}

impl ProducerError {
    /// Whether the same call may succeed later (see [`StoreError::is_transient`]).
    pub fn is_transient(&self) -> bool {
        match self {
            ProducerError::Store(e) => e.is_transient(),
            _ => false,
        }
    }
}
