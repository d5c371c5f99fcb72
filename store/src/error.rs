use std::io;
use std::path::{Path, PathBuf};

use fschain_schema::SchemaError;

/// What can go wrong reading or writing a chain on disk.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
    #[error("btrfs {op} failed for {}: {error}", path.display())]
    Btrfs {
        op: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error("{} is not on btrfs; fschain keeps each block as a btrfs snapshot. Mount a btrfs filesystem there, or run `fschain init --root DIR --image FILE --size 2G` as root to create and loop-mount one", path.display())]
    NotBtrfs { path: PathBuf },
    #[error("{} is not an fschain root (no fschain.root file); run `fschain init --root {}` first", path.display(), path.display())]
    NotARoot { path: PathBuf },
    #[error("{} is already an fschain root (chain {chain})", path.display())]
    AlreadyARoot { path: PathBuf, chain: String },
    #[error("{} is in use by another fschain command", path.display())]
    Locked { path: PathBuf },
    #[error("{}: {error}", place)]
    Schema { place: String, error: SchemaError },
    #[error("{}: {why}", path.display())]
    Corrupt { path: PathBuf, why: String },
    #[error("no state file for {element} at block {height}")]
    NoSuchElement { element: String, height: u64 },
    #[error("not a usable btrfs send stream: {why}")]
    BadSendStream { why: String },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
}

impl StoreError {
    pub fn io(path: &Path, error: io::Error) -> Self {
        StoreError::Io {
            path: path.to_owned(),
            error,
        }
    }

    pub fn schema(place: impl Into<String>, error: SchemaError) -> Self {
        StoreError::Schema {
            place: place.into(),
            error,
        }
    }

    /// Whether the file system ran out of space (or quota): nothing is
    /// wrong with what was being written, and freeing space lets the same
    /// write succeed. `btrfs receive` reports it only in its stderr.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Io { error, .. } | StoreError::Btrfs { error, .. } => {
                matches!(error.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
            }
            StoreError::Command { stderr, .. } => {
                stderr.contains("No space left on device") || stderr.contains("Disk quota exceeded")
            }
            _ => false,
        }
    }

    /// Whether trying again later may succeed (another command holds the
    /// root, or the kernel was short of something), as opposed to an error
    /// that the same call will always give.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Locked { .. } => true,
            e if e.is_disk_full() => true,
            StoreError::Io { error, .. } | StoreError::Btrfs { error, .. } => {
                matches!(
                    error.kind(),
                    io::ErrorKind::Interrupted
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                ) || matches!(
                    error.raw_os_error(),
                    Some(libc::EAGAIN | libc::EBUSY | libc::ENOSPC | libc::ENOMEM)
                )
            }
            _ => false,
        }
    }
}

/// Adds a path to an `io::Result`.
pub trait IoContext<T> {
    fn at(self, path: &Path) -> Result<T, StoreError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &Path) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::io(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The binary prints an error with its whole chain of causes; a cause
    /// that the message already names must not be printed a second time.
    #[test]
    fn the_cause_is_named_once() {
        let err = StoreError::io(Path::new("/x/y"), io::Error::from_raw_os_error(libc::EIO));
        let text = err.to_string();
        assert!(
            text.starts_with("/x/y: ") && text.contains("os error 5"),
            "{text}"
        );
        assert!(std::error::Error::source(&err).is_none());
    }
}
