//! fschain's event index: every verified event with its hash, vectors and
//! time, searchable by meaning and combinable with the state at any block.
//!
//! The pure part is [`document`] (what an event's text and payload are);
//! [`embed`] turns text into vectors (BM25, and MiniLM with candle);
//! [`backend`] stores and searches them (qdrant-edge in process, or a
//! Qdrant server through [`server`]);
//! [`index`] keeps a chain's index level with its head; [`search`] turns
//! hits into answers with states and proofs.
//!
//! Architecture Invariant: the index only ever reads a chain, through
//! `fschain-store`, and only blocks that are in place (verified); it can
//! always be thrown away and rebuilt with `reindex`.

pub mod backend;
mod bert;
pub mod document;
pub mod embed;
mod error;
pub mod fusion;
pub mod index;
pub mod search;
pub mod server;

pub use backend::{Ranking, SearchFilter};
pub use document::{Change, EventDocument};
pub use embed::Embedders;
pub use error::IndexError;
pub use index::{CatchUp, EventIndex, IndexManifest, VectorStore};
pub use search::{EventProof, SearchHit, StateAt};
pub use server::ServerConfig;
