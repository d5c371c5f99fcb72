use crate::{Action, BlockHash, Digest, EventHash};

/// Everything that can be wrong with data handed to `schema`.
///
/// None of these is transient: the same input gives the same error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SchemaError {
    #[error("malformed JSON: {message}")]
    Json { message: String },
    #[error("bad element id {id:?}: {why}")]
    BadElementId { id: String, why: &'static str },
    #[error(
        "bad chain name {name:?}: use 1-64 of A-Z a-z 0-9 . _ - starting with a letter or digit"
    )]
    BadChainName { name: String },
    #[error("unknown action \"{action}\" (expected set, patch or delete)")]
    UnknownAction { action: String },
    #[error("bad operation: {why}")]
    BadOperation { why: String },
    #[error("state of {element} is not a JSON object")]
    StateNotObject { element: String },
    #[error("cannot {action} {element}: no such element")]
    NoSuchElement { element: String, action: Action },
    #[error("number {number} cannot be hashed exactly (JSON numbers are IEEE 754 doubles: this integer would be rounded)")]
    InexactNumber { number: String },
    #[error("{text:?} is not 64 lower-case hex digits")]
    BadHex { text: String },
    #[error("{text:?} is not an RFC 3339 time")]
    BadTime { text: String },
    #[error("{what} is not in canonical form")]
    NotCanonical { what: &'static str },
    #[error("malformed record: {why}")]
    Malformed { why: String },
    #[error("unsupported {what} version {version}")]
    UnsupportedVersion { what: &'static str, version: u64 },
    #[error("event hash mismatch: stored {expected}, content hashes to {actual}")]
    EventHashMismatch {
        expected: EventHash,
        actual: EventHash,
    },
    #[error("block {height} hash mismatch: stored {expected}, content hashes to {actual}")]
    HeaderHashMismatch {
        height: u64,
        expected: BlockHash,
        actual: BlockHash,
    },
    #[error("bad inclusion proof: {why}")]
    BadProof { why: &'static str },
    #[error("inclusion proof gives root {actual}, expected {expected}")]
    ProofMismatch { expected: Digest, actual: Digest },
    #[error("bad REF {text:?}: use a height, 8+ hex digits of a block hash, @<RFC 3339 time>, head or head~N")]
    BadRef { text: String },
    #[error("REF {reference} matches no block (head is block {head})")]
    RefNotFound { reference: String, head: u64 },
    #[error("REF {reference} is ambiguous: it matches blocks {heights:?}; give more hex digits")]
    AmbiguousRef {
        reference: String,
        heights: Vec<u64>,
    },
    #[error("the chain has no blocks")]
    EmptyChain,
    #[error("bad signed note: {why}")]
    BadNote { why: String },
    #[error("operation on {element} refused: {why}")]
    RefusedSignature { element: String, why: String },
    #[error("allowed_signers line {line}: {why}")]
    BadAllowedSigners { line: usize, why: String },
    #[error("bad proof bundle: {why}")]
    BadBundle { why: String },
    #[error("bad consistency proof: {why}")]
    BadConsistency { why: String },
    #[error("bad key: {why}")]
    BadKey { why: String },
    #[error("manifest signed by key {key}, which is not among the trusted keys")]
    UntrustedKey { key: crate::wire::PublicKey },
    #[error("bad signature on the manifest of {chain} block {height}")]
    BadSignature { chain: String, height: u64 },
    #[error("chunk {index}: hash mismatch: says {expected}, bytes hash to {actual}")]
    ChunkHashMismatch {
        index: u32,
        expected: crate::digest::ChunkHash,
        actual: crate::digest::ChunkHash,
    },
    #[error("chunk {index} of {chain} block {height} is not part of its signed stream: {why}")]
    ChunkNotInStream {
        chain: String,
        height: u64,
        index: u32,
        why: String,
    },
    #[error("not an fschain frame: {why}")]
    BadFrame { why: String },
}
