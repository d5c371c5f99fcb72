//! fschain's data model: types, the canonical encoding, hashing, Merkle
//! roots and proofs, and verification.
//!
//! Architecture Invariant: this crate does no IO. Bytes and values in,
//! values and reports out; the clock, files, btrfs and Kafka are the
//! callers' business. That keeps every rule about what is hashed here,
//! testable without a filesystem, and usable by any site.

mod block;
pub mod bundle;
mod digest;
mod element;
mod error;
mod event;
pub mod jcs;
pub mod merkle;
pub mod note;
mod op;
mod reference;
pub mod sshsig;
mod state_tree;
mod timestamp;
pub mod verify;
pub mod wire;

pub use block::{BlockHeader, HeaderDraft, HEADER_VERSION};
pub use digest::{BlockHash, ChunkHash, Digest, EventHash, EventsRoot, StateHash, StateRoot};
pub use element::{is_valid_kind, ChainName, ElementId};
pub use error::SchemaError;
pub use event::{state_hash, Event, EventDraft, EventLine, EVENT_VERSION};
pub use merkle::InclusionProof;
pub use op::{merge_patch, Action, OpSignature, Operation, State};
pub use reference::BlockRef;
pub use state_tree::{state_leaf_data, state_leaf_hash, StateTree};
pub use timestamp::Timestamp;
