//! The consumer side of fschain: a consumer group per site, chunk
//! reassembly, `btrfs receive` into the site's copy of each chain, replay,
//! and import of exported streams.
//!
//! Architecture Invariant: this crate never depends on `producer`. What
//! both sides need (the btrfs adapter, reading and verifying a chain) is in
//! `store`; what travels between them (manifests, chunks, frames) is in
//! `schema::wire`.

pub mod assembler;
mod error;
pub mod fleet;
pub mod import;
pub mod indexer;
pub mod ingest;
pub mod kafka;
pub mod site;
pub mod witness;

pub use assembler::{ChunkAssembler, ReadyBlock, StreamKey, Verdict};
pub use error::ConsumerError;
pub use indexer::SiteIndexer;
pub use ingest::{Ingest, IngestStats, Origin, Rejection};
pub use site::{BlockTiming, Site, SiteChain};
