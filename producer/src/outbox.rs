//! Turning a sealed block into what travels: its signed manifest first,
//! then its `btrfs send` stream, zstd-compressed, cut into chunks that are
//! each signed and handed out as the stream is made. Memory stays flat
//! whatever the block size, nothing is written to disk, and the first
//! chunk leaves while `btrfs send` still runs.

use std::io::{self, Write};

use fschain_schema::note::chain_checkpoint;
use fschain_schema::wire::{
    BlockManifest, Chunk, CutChunk, SigningKey, StreamAttempt, StreamCutter, StreamInfo,
};
use fschain_schema::BlockHeader;
use fschain_store::layout::{write_atomic, RootLayout};
use fschain_store::{btrfs, ChainDir, IoContext, StoreError};

use crate::ProducerError;

/// How blocks are cut into streams.
#[derive(Clone, Debug)]
pub struct StreamPolicy {
    /// A full stream every this many blocks (and at genesis); 0: genesis only.
    pub checkpoint_every: u64,
    pub chunk_size: u32,
    pub zstd_level: i32,
    /// Each manifest carries the chain's checkpoint, its log named
    /// `<checkpoint_origin>/<chain>`.
    pub checkpoint_origin: String,
}

impl Default for StreamPolicy {
    fn default() -> Self {
        StreamPolicy {
            checkpoint_every: 1000,
            chunk_size: fschain_schema::wire::DEFAULT_CHUNK_SIZE,
            zstd_level: 1,
            checkpoint_origin: "fschain.example".to_owned(),
        }
    }
}

impl StreamPolicy {
    /// The block `height`'s stream is incremental against this one, or full.
    pub fn parent_of(&self, height: u64) -> Option<u64> {
        let full = height == 0
            || (self.checkpoint_every > 0 && height.is_multiple_of(self.checkpoint_every));
        (!full).then(|| height - 1)
    }
}

/// A block whose frames were all handed out: its signed manifest, and
/// what its stream was.
#[derive(Debug)]
pub struct OutgoingBlock {
    pub manifest: BlockManifest,
    pub header: BlockHeader,
    /// Length of the compressed stream.
    pub bytes: u64,
    /// How many chunks it was cut into.
    pub chunks: u32,
}

/// Where each block's frames go: called with the manifest's frame, then
/// each chunk's, in order, from whichever thread cuts the stream.
pub type FrameSink<'a> = &'a (dyn Fn(&[u8]) -> Result<(), ProducerError> + Sync);

/// Compressed buffers queued between the two stages of [`stream_block`].
const CUT_QUEUE: usize = 4;

/// Sends what is written through it down a channel, 1 MiB at a time.
struct ChannelWriter {
    to: std::sync::mpsc::SyncSender<Vec<u8>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    const BUF: usize = 1 << 20;

    fn new(to: std::sync::mpsc::SyncSender<Vec<u8>>) -> Self {
        ChannelWriter {
            to,
            buf: Vec::with_capacity(Self::BUF),
        }
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(Self::BUF - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == Self::BUF {
            self.flush()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(Self::BUF));
        self.to
            .send(full)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the cutting thread stopped"))
    }
}

/// Fails, naming the cause, when block `height`'s snapshot is gone.
fn require_snapshot(layout: &RootLayout, height: u64) -> Result<(), ProducerError> {
    if layout.snapshot(height).is_dir() {
        return Ok(());
    }
    let why = if fschain_store::retention::pruned_heights(layout)?.contains(&height) {
        format!("block {height} was pruned before it was published (`prune --unpublished`), so it cannot be sent; a site can start from a later checkpoint")
    } else {
        format!("block {height}'s snapshot is missing; run `fschain verify`")
    };
    Err(StoreError::Corrupt {
        path: layout.snapshot(height),
        why,
    }
    .into())
}

/// The header of block `height`, from that block's own snapshot.
pub fn snapshot_header(layout: &RootLayout, height: u64) -> Result<BlockHeader, ProducerError> {
    require_snapshot(layout, height)?;
    Ok(ChainDir::new(layout.snapshot(height))
        .headers()?
        .into_iter()
        .nth(height as usize)
        .ok_or_else(|| StoreError::Corrupt {
            path: layout.snapshot(height),
            why: format!("does not hold the header of block {height}"),
        })?)
}

/// Hands out the frames of the block `header` seals (read by
/// [`snapshot_header`]) to `sink`: its signed manifest, then each chunk of
/// its stream, signed, as `btrfs send | zstd` makes it. The stream is
/// incremental against `parent` (full when `None`). Each call is a new
/// attempt at the block's stream: nothing is kept on disk, and a producer
/// that stops before the broker acknowledged every frame makes the stream
/// again, under a new attempt, when it publishes next.
pub fn stream_block(
    layout: &RootLayout,
    header: BlockHeader,
    parent: Option<u64>,
    policy: &StreamPolicy,
    key: &SigningKey,
    sink: FrameSink<'_>,
) -> Result<OutgoingBlock, ProducerError> {
    let height = header.height;
    let started = std::time::Instant::now();
    if let Some(p) = parent {
        require_snapshot(layout, p)?;
    }
    let headers = ChainDir::new(layout.snapshot(height)).headers()?;
    let checkpoint = chain_checkpoint(
        &format!("{}/{}", policy.checkpoint_origin, header.chain),
        headers.get(..=height as usize).unwrap_or(&headers),
    )
    .sign(key)?;
    let mut attempt = [0u8; 16];
    getrandom::fill(&mut attempt).map_err(|e| ProducerError::Command {
        what: "drawing a stream attempt".into(),
        message: e.to_string(),
    })?;
    let stream = StreamInfo::zstd(StreamAttempt::from_bytes(attempt), policy.chunk_size);
    let manifest =
        BlockManifest::sign_with_checkpoint(&header, parent, stream, Some(checkpoint), key)?;
    sink(&manifest.to_frame()?)?;
    let parent_path = parent.map(|p| layout.snapshot(p));
    // Two stages on two threads: this one compresses what `btrfs send`
    // writes, the other cuts it, signs each chunk and hands it out.
    let (compressed, to_cut) = std::sync::mpsc::sync_channel::<Vec<u8>>(CUT_QUEUE);
    let mut first_chunk = None;
    let (sent, cut) = std::thread::scope(|scope| {
        let manifest = &manifest;
        let first_chunk = &mut first_chunk;
        let cutter = scope.spawn(move || -> Result<_, ProducerError> {
            let mut cutter = StreamCutter::new(manifest.stream.chunk_size);
            let mut hand_out = |cut: CutChunk| -> Result<(), ProducerError> {
                sink(&Chunk::sign(manifest, cut, key)?.to_frame()?)?;
                first_chunk.get_or_insert_with(|| started.elapsed());
                Ok(())
            };
            for buf in to_cut {
                for cut in cutter.update(&buf) {
                    hand_out(cut)?;
                }
            }
            let (last, whole) = cutter.finish();
            hand_out(last)?;
            Ok(whole)
        });
        let sent = btrfs::send(&layout.snapshot(height), parent_path.as_deref(), |r| {
            let mut encoder =
                zstd::stream::Encoder::new(ChannelWriter::new(compressed), policy.zstd_level)?;
            btrfs::pump(r, &mut encoder)?;
            encoder.finish()?.flush()
        });
        let cut = cutter.join().unwrap_or_else(|_| {
            Err(ProducerError::Command {
                what: format!("cutting block {height}'s stream"),
                message: "the cutting thread stopped".into(),
            })
        });
        (sent, cut)
    });
    // A cut that failed (the broker) makes the send fail too, with a
    // broken channel: its own error says more.
    let whole = cut?;
    sent?;
    tracing::debug!(
        height,
        bytes = whole.bytes,
        first_chunk_ms = first_chunk.map_or(0, |d| d.as_millis() as u64),
        prepare_ms = started.elapsed().as_millis() as u64,
        "stream sent, compressed, cut and signed"
    );
    Ok(OutgoingBlock {
        manifest,
        header,
        bytes: whole.bytes,
        chunks: whole.chunks,
    })
}

/// Keeps a published block's signed manifest in `meta/manifests/`, where
/// search proofs find it.
pub fn keep_manifest(layout: &RootLayout, manifest: &BlockManifest) -> Result<(), ProducerError> {
    let dir = layout.manifests_dir();
    std::fs::create_dir_all(&dir).at(&dir)?;
    let path = layout.manifest(manifest.height);
    let bytes = serde_json::to_vec(manifest).map_err(|e| StoreError::Corrupt {
        path: path.clone(),
        why: e.to_string(),
    })?;
    Ok(write_atomic(&path, &bytes)?)
}

/// Which height is on the topic already (`None`: nothing yet).
pub fn published_height(layout: &RootLayout) -> Result<Option<u64>, ProducerError> {
    Ok(fschain_store::layout::published_height(layout)?)
}

pub fn record_published(layout: &RootLayout, height: u64) -> Result<(), ProducerError> {
    write_atomic(
        &layout.published(),
        format!("{{\"height\":{height}}}\n").as_bytes(),
    )?;
    Ok(())
}
