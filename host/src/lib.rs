//! Sources that observe a Linux host and turn its changes into operations
//! on its chain: files (inotify, with fanotify naming the writer), sysctls
//! (polled), dpkg's packages, systemd's unit enablement and network
//! interfaces (rtnetlink) and Open vSwitch (OVSDB); drift and restore.
//!
//! Architecture Invariant: what changed is decided by observing an element
//! and comparing it with the chain's state ([`reconcile`]), never by
//! trusting a kernel event. Events only say what to look at again.
//!
//! Architecture Invariant: a file matching a redact glob is read to be
//! hashed and nothing else: its bytes are never put in a state.

mod attribution;
pub mod coalesce;
pub mod config;
mod error;
pub mod files;
mod inotify;
pub mod interfaces;
pub mod ovs;
pub mod packages;
pub mod reconcile;
pub mod restore;
pub mod services;
pub mod sources;
pub mod sysctl;
pub mod watch;

pub use config::SourcesConfig;
pub use error::HostError;
pub use sources::{head_state_hashes, head_states, Sources};
