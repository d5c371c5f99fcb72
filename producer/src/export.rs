//! `fschain export`: the same frames the blocks topic carries, written to a
//! file or a pipe, so that `fschain export | ssh host fschain import` moves
//! a chain without Kafka; and `--raw`, the plain `btrfs send` stream that
//! stock `btrfs receive` takes.

use std::io::{self, Write};

use fschain_schema::wire::SigningKey;
use fschain_store::layout::RootLayout;
use fschain_store::{btrfs, IoContext, StoreError};

use crate::outbox::{snapshot_header, stream_block, StreamPolicy};
use crate::ProducerError;

/// What an export wrote.
#[derive(Debug, Default, Clone, Copy)]
pub struct ExportSummary {
    pub blocks: u64,
    pub bytes: u64,
}

/// Writes blocks `from+1 ..= to` (from block 0, as a full stream, when
/// `from` is `None`), each incremental against the one before except the
/// checkpoints `policy` makes full, as `publish` does.
pub fn export_frames(
    layout: &RootLayout,
    from: Option<u64>,
    to: u64,
    policy: &StreamPolicy,
    key: &SigningKey,
    out: &mut (dyn Write + Send),
) -> Result<ExportSummary, ProducerError> {
    // Frames come from the thread that cuts each stream.
    let out = std::sync::Mutex::new((out, 0u64));
    let write_frame = |frame: &[u8]| -> Result<(), ProducerError> {
        let mut out = out.lock().map_err(writer_stopped)?;
        out.0.write_all(frame).map_err(output_error)?;
        out.1 += frame.len() as u64;
        Ok(())
    };
    let mut summary = ExportSummary::default();
    let start = from.map_or(0, |f| f + 1);
    for height in start..=to {
        // The first block is incremental against `from` (full without
        // it); after it, full streams where the policy puts checkpoints.
        let parent = if height == start {
            from
        } else {
            policy.parent_of(height)
        };
        let header = snapshot_header(layout, height)?;
        stream_block(layout, header, parent, policy, key, &write_frame)?;
        summary.blocks += 1;
    }
    let (out, bytes) = out.into_inner().map_err(writer_stopped)?;
    out.flush().map_err(output_error)?;
    summary.bytes = bytes;
    Ok(summary)
}

/// Writes the plain `btrfs send` stream of block `to` (incremental against
/// `from` when given).
pub fn export_raw(
    layout: &RootLayout,
    from: Option<u64>,
    to: u64,
    out: &mut dyn Write,
) -> Result<u64, ProducerError> {
    let parent = from.map(|f| layout.snapshot(f));
    let to_path = layout.snapshot(to);
    if !to_path.exists() {
        return Err(StoreError::Corrupt {
            path: to_path,
            why: "no such block snapshot".into(),
        }
        .into());
    }
    let bytes = btrfs::send(&to_path, parent.as_deref(), |r| btrfs::pump(r, out))?;
    out.flush().at(layout.root())?;
    Ok(bytes)
}

fn output_error(e: io::Error) -> ProducerError {
    ProducerError::Command {
        what: "writing the export".into(),
        message: e.to_string(),
    }
}

fn writer_stopped<T>(_: T) -> ProducerError {
    ProducerError::Command {
        what: "writing the export".into(),
        message: "a thread writing it stopped".into(),
    }
}
