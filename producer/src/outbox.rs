//! Turning a sealed block into what travels: its `btrfs send` stream,
//! zstd-compressed and spooled to `meta/outbox/`, and the signed manifest
//! that describes it. Spooling keeps memory flat whatever the block size,
//! lets every chunk carry the whole stream's hash, count and its proof
//! under the signed chunk tree, and means a producer that crashes
//! mid-publish republishes the very same bytes.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;

use fschain_schema::note::chain_checkpoint;
use fschain_schema::wire::{BlockManifest, Chunk, ChunkTree, SigningKey, StreamHasher};
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

/// A block ready to publish: the signed manifest and the spooled stream.
#[derive(Debug)]
pub struct OutgoingBlock {
    pub manifest: BlockManifest,
    pub header: BlockHeader,
    tree: ChunkTree,
    stream: PathBuf,
    manifest_path: PathBuf,
}

impl OutgoingBlock {
    /// The chunks in order, read from the spool one at a time.
    pub fn chunks(&self) -> Result<ChunkReader<'_>, ProducerError> {
        Ok(ChunkReader {
            file: File::open(&self.stream).at(&self.stream)?,
            block: self,
            next: 0,
        })
    }

    /// Copies the compressed stream to `out` (for `export`).
    pub fn copy_stream(&self, out: &mut dyn Write) -> Result<u64, ProducerError> {
        let mut file = File::open(&self.stream).at(&self.stream)?;
        Ok(btrfs::pump(&mut file, out).at(&self.stream)?)
    }

    /// Drops the spool once the block is published.
    pub fn remove(self) -> Result<(), ProducerError> {
        for p in [&self.stream, &self.manifest_path] {
            match std::fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io(p, e).into()),
            }
        }
        Ok(())
    }
}

/// Iterates over the chunks of a spooled stream.
#[derive(Debug)]
pub struct ChunkReader<'a> {
    file: File,
    block: &'a OutgoingBlock,
    next: u32,
}

impl Iterator for ChunkReader<'_> {
    type Item = Result<Chunk, ProducerError>;

    fn next(&mut self) -> Option<Self::Item> {
        let block = self.block;
        if self.next >= block.manifest.stream.chunks {
            return None;
        }
        let size = block.manifest.stream.chunk_size as usize;
        let mut data = Vec::with_capacity(size);
        let read = (&mut self.file)
            .take(size as u64)
            .read_to_end(&mut data)
            .at(&block.stream);
        let index = self.next;
        self.next += 1;
        Some(
            read.map_err(ProducerError::from)
                .map(|_| Chunk::spooled(&block.manifest, &block.tree, index, data)),
        )
    }
}

/// Compressed buffers queued between the two stages of [`prepare_block`].
const SPOOL_QUEUE: usize = 4;

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
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the spooling thread stopped"))
    }
}

/// Hashes what is written through it, whole and chunk by chunk.
struct HashingWriter<W> {
    inner: W,
    hasher: StreamHasher,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
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

/// Prepares the block `header` seals (read by [`snapshot_header`]) for
/// publishing, or finds it prepared by an earlier run that did not finish
/// publishing.
///
/// The stream is incremental against `parent` (full when `None`) and is
/// spooled in `dir`.
pub fn prepare_block(
    layout: &RootLayout,
    header: BlockHeader,
    parent: Option<u64>,
    dir: &std::path::Path,
    policy: &StreamPolicy,
    key: &SigningKey,
) -> Result<OutgoingBlock, ProducerError> {
    let height = header.height;
    std::fs::create_dir_all(dir).at(dir)?;
    let stream_path = dir.join(format!("{height:010}.zst"));
    let manifest_path = dir.join(format!("{height:010}.manifest"));
    if let (Ok(bytes), true) = (std::fs::read(&manifest_path), stream_path.exists()) {
        if let Ok(manifest) = serde_json::from_slice::<BlockManifest>(&bytes) {
            if manifest.parent == parent
                && manifest.verify(&[key.public()]).is_ok_and(|h| h == header)
            {
                if let Some(tree) = spooled_stream_matches(&stream_path, &manifest) {
                    return Ok(OutgoingBlock {
                        manifest,
                        header,
                        tree,
                        stream: stream_path,
                        manifest_path,
                    });
                }
            }
        }
    }
    let started = std::time::Instant::now();
    let tmp = stream_path.with_extension("zst.tmp");
    let file = File::create(&tmp).at(&tmp)?;
    let hashing = HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        hasher: StreamHasher::new(policy.chunk_size),
    };
    if let Some(p) = parent {
        require_snapshot(layout, p)?;
    }
    let parent_path = parent.map(|p| layout.snapshot(p));
    // Two stages on two threads: this one compresses what `btrfs send`
    // writes, the other hashes it (whole and chunk by chunk) and spools it.
    let (compressed, to_spool) = std::sync::mpsc::sync_channel::<Vec<u8>>(SPOOL_QUEUE);
    let (sent, spooled) = std::thread::scope(|scope| {
        let spooler = scope.spawn(move || -> io::Result<_> {
            let mut hashing = hashing;
            for buf in to_spool {
                hashing.write_all(&buf)?;
            }
            hashing.flush()?;
            Ok(hashing)
        });
        let sent = btrfs::send(&layout.snapshot(height), parent_path.as_deref(), |r| {
            let mut encoder =
                zstd::stream::Encoder::new(ChannelWriter::new(compressed), policy.zstd_level)?;
            btrfs::pump(r, &mut encoder)?;
            encoder.finish()?.flush()
        });
        let spooled = spooler
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the spooling thread stopped")));
        (sent, spooled)
    });
    // A spool that failed (a full disk) makes the send fail too, with a
    // broken channel: its own error says more.
    let hashing = spooled.at(&tmp)?;
    sent?;
    let HashingWriter { inner, hasher } = hashing;
    let file = inner
        .into_inner()
        .map_err(|e| StoreError::io(&tmp, e.into_error()))?;
    // Not synced: a spooled stream is only reused once its bytes hash to
    // the signed manifest again (above), so one cut short by a power loss
    // is made anew, and the sync cost a quarter of a second per 200 MB.
    drop(file);
    std::fs::rename(&tmp, &stream_path).at(&stream_path)?;
    let (stream, tree) = hasher.finish();
    let headers = ChainDir::new(layout.snapshot(height)).headers()?;
    let checkpoint = chain_checkpoint(
        &format!("{}/{}", policy.checkpoint_origin, header.chain),
        headers.get(..=height as usize).unwrap_or(&headers),
    )
    .sign(key)?;
    let manifest =
        BlockManifest::sign_with_checkpoint(&header, parent, stream, Some(checkpoint), key)?;
    write_atomic(
        &manifest_path,
        &serde_json::to_vec(&manifest).map_err(|e| StoreError::Corrupt {
            path: manifest_path.clone(),
            why: e.to_string(),
        })?,
    )?;
    tracing::debug!(
        height,
        bytes = manifest.stream.bytes,
        prepare_ms = started.elapsed().as_millis() as u64,
        "stream sent, compressed and hashed"
    );
    Ok(OutgoingBlock {
        manifest,
        header,
        tree,
        stream: stream_path,
        manifest_path,
    })
}

/// The chunk tree of the spooled stream at `path` when it is exactly the
/// one `manifest` signs (its length, SHA-256 and chunk tree): what an
/// earlier run left is republished only then, and made again otherwise.
fn spooled_stream_matches(path: &std::path::Path, manifest: &BlockManifest) -> Option<ChunkTree> {
    let mut file = File::open(path).ok()?;
    let mut hashing = HashingWriter {
        inner: io::sink(),
        hasher: StreamHasher::new(manifest.stream.chunk_size),
    };
    btrfs::pump(&mut file, &mut hashing).ok()?;
    let (stream, tree) = hashing.hasher.finish();
    (stream == manifest.stream).then_some(tree)
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
