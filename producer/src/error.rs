use fschain_schema::SchemaError;
use fschain_store::StoreError;

/// What can go wrong producing blocks.
#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("line {line}: {error}")]
    BadLine { line: u64, error: SchemaError },
    #[error("a previous seal failed part-way; reopen the root to recover it")]
    Poisoned,
    #[error("{what} failed: {message}")]
    Command { what: String, message: String },
    #[error("{} already holds a signing key; sites trust it, so it is never replaced", path.display())]
    KeyExists { path: std::path::PathBuf },
    #[error("{} has no signing key; run `fschain key create --root {}`", root.display(), root.display())]
    NoKey { root: std::path::PathBuf },
    #[error("{} is a site's copy of a chain; operations are applied on the producer and arrive here through `fschain consume`", root.display())]
    Replica { root: std::path::PathBuf },
    #[error("the blocks topic holds block {height} of {chain} ({on_topic}), but {why}: this root was restored from an older backup or its history was made again, and publishing it would fork the chain; restore it from a site's copy, or publish it as a new chain")]
    Diverged {
        chain: fschain_schema::ChainName,
        height: u64,
        on_topic: fschain_schema::BlockHash,
        why: String,
    },
    #[error(transparent)]
    Kafka(#[from] fschain_kafka::KafkaClientError),
}

impl ProducerError {
    /// Whether the same call may succeed later (see [`StoreError::is_transient`]).
    pub fn is_transient(&self) -> bool {
        match self {
            ProducerError::Store(e) => e.is_transient(),
            ProducerError::Kafka(e) => e.is_transient(),
            _ => false,
        }
    }
}
