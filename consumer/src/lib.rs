//! The consumer side of fschain: consumer groups, chunk reassembly,
//! `btrfs receive`, the vector index and replay.
//!
//! Empty for now: replication is issue 3, the index issue 4. The crate exists
//! so that the workspace has its final shape and the dependency rules below
//! hold from the start.
//!
//! Architecture Invariant: the consumer never depends on the producer; what
//! both need lives in `fschain-store` and `fschain-schema`.
