//! IO that both sides of fschain need: the btrfs adapter, the on-disk
//! layout of a chain, and reading and verifying a chain from its snapshots.
//!
//! Architecture Invariant: this crate never creates or changes a block.
//! Creating the layer and sealing blocks is the producer's; receiving
//! snapshots is the consumer's. Both read chains back through here, so a
//! site's copy reads exactly like the producer's. Its one write to a chain
//! is retention's, shared by both sides: recording a pruned height, then
//! deleting that snapshot (`retention::prune`).

pub mod btrfs;
pub mod btrfs_tree;
mod chain;
mod chain_dir;
pub mod crash;
mod error;
pub mod extents;
pub mod layout;
mod log_file;
pub mod retention;
pub mod send_stream;
pub mod state_path;
pub mod verify;

pub use chain::{BlockStates, Chain, StateDiff};
pub use chain_dir::{for_block_event_lines, ChainDir, StateScan};
pub use error::{IoContext, StoreError};
pub use layout::{ChainMeta, RootLayout};
pub use verify::{
    verify_received, verify_root, verify_root_with_progress, EarlyLogCheck, VerifiedLogs,
    VerifyReport,
};
