//! The producer side of fschain: the layer, applying operations, sealing
//! blocks into read-only btrfs snapshots, and recovering after a crash.
//!
//! Architecture Invariant: the producer never depends on the consumer.
//! What both need lives in `fschain-store` and `fschain-schema`.

pub mod agent;
pub mod diverged;
mod error;
pub mod export;
mod init;
mod keys;
pub mod ops_ledger;
pub mod outbox;
pub mod publish;
mod state_index;
pub mod topics;
mod writer;

pub use error::ProducerError;
pub use init::{init_root, make_loop_filesystem};
pub use keys::{create_signing_key, load_signing_key};
pub use writer::{
    recover_if_interrupted, write_state_file, ChainWriter, Clock, SealedBlock, SystemClock,
};
