//! A site's store: one fschain root per chain under `SITE/<chain>/`, with
//! no layer, and the adapter that turns a complete, verified stream into a
//! block of that chain.
//!
//! Applying a block: open a `btrfs receive` under `blocks/.incoming-<height>`
//! once its signed manifest is in, feed it each chunk as it arrives (every
//! chunk authenticated under the manifest's key first, so nothing unsigned
//! reaches it), then verify the received snapshot against the signed
//! header, and rename it into place (same directory: a received read-only
//! subvolume cannot move to another one). A crash at any point leaves at most an `.incoming-*`
//! subvolume, which the next start deletes; the Kafka offset is committed
//! only after the rename.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use fschain_schema::wire::{decode_frame, Chunk, Frame};
use fschain_schema::{BlockHeader, ChainName, SchemaError};
use fschain_store::layout::{write_atomic, ChainMeta, ReplicaMeta, RootLayout};
use fschain_store::{
    btrfs, verify_received, ChainDir, EarlyLogCheck, IoContext, StoreError, VerifiedLogs,
};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::assembler::{ReadyBlock, StreamKey};
use crate::ConsumerError;

pub const SITE_MARKER: &str = "fschain.site";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteMeta {
    site: String,
}

/// A site's directory.
#[derive(Debug, Clone)]
pub struct Site {
    root: PathBuf,
    name: String,
}

impl Site {
    /// Opens the site at `root`, creating it if the directory is new or
    /// empty. A root that belongs to another site is refused.
    pub fn open(root: &Path, name: &str) -> Result<Self, ConsumerError> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(ConsumerError::BadSiteName { name: name.into() });
        }
        std::fs::create_dir_all(root).at(root)?;
        if !btrfs::is_btrfs(root)? {
            return Err(StoreError::NotBtrfs {
                path: root.to_owned(),
            }
            .into());
        }
        let marker = root.join(SITE_MARKER);
        if !marker.exists() {
            // Two members starting together on a new root both write it;
            // whichever name lands is checked below like any other.
            let body = serde_json::json!({ "site": name }).to_string();
            write_atomic(&marker, body.as_bytes())?;
        }
        match std::fs::read(&marker) {
            Ok(bytes) => {
                let meta: SiteMeta =
                    serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                        path: marker.clone(),
                        why: e.to_string(),
                    })?;
                if meta.site != name {
                    return Err(ConsumerError::OtherSite {
                        root: root.to_owned(),
                        site: meta.site,
                    });
                }
            }
            Err(e) => return Err(StoreError::io(&marker, e).into()),
        }
        Ok(Site {
            root: root.to_owned(),
            name: name.to_owned(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The chains this site holds a copy of.
    pub fn chains(&self) -> Result<Vec<ChainName>, ConsumerError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.root).at(&self.root)? {
            let entry = entry.at(&self.root)?;
            if let Some(name) = entry.file_name().to_str() {
                if let Ok(chain) = name.parse::<ChainName>() {
                    if RootLayout::new(entry.path()).marker().exists() {
                        out.push(chain);
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The site's copy of `chain` (created on first use), recovered from
    /// any interrupted receive.
    pub fn chain(&self, chain: &ChainName) -> Result<SiteChain, ConsumerError> {
        let layout = RootLayout::new(self.root.join(chain.as_str()));
        let blocks = layout.blocks_dir();
        std::fs::create_dir_all(&blocks).at(&blocks)?;
        std::fs::create_dir_all(layout.meta_dir()).at(&layout.meta_dir())?;
        let writer = lock_chain(&layout, chain)?;
        if !layout.replica().exists() {
            self.write_replica(&layout, 0)?;
        }
        if !layout.marker().exists() {
            write_atomic(&layout.marker(), &ChainMeta::new(chain.clone()).to_bytes())?;
        }
        let site_chain = SiteChain {
            layout,
            chain: chain.clone(),
            site: self.clone(),
            verified: None,
            receiving: None,
            finishing: None,
            _writer: writer,
        };
        site_chain.recover()?;
        Ok(site_chain)
    }
}

impl Site {
    fn write_replica(&self, layout: &RootLayout, base: u64) -> Result<(), ConsumerError> {
        let meta = ReplicaMeta {
            site: self.name.clone(),
            base,
        };
        let bytes = serde_json::to_vec(&meta).map_err(|e| StoreError::Corrupt {
            path: layout.replica(),
            why: e.to_string(),
        })?;
        write_atomic(&layout.replica(), &bytes)?;
        Ok(())
    }
}

/// One chain at a site.
#[derive(Debug)]
pub struct SiteChain {
    layout: RootLayout,
    chain: ChainName,
    site: Site,
    /// The replayed logs of the newest block verified here, so the next
    /// block is checked from where it ended (rebuilt from the snapshot by
    /// a full check after a restart).
    verified: Option<VerifiedLogs>,
    /// The stream being received, if one is open.
    receiving: Option<Receiving>,
    /// The block being checked and put in place, if one is (dropped, it
    /// is waited for: before the writer lock is let go).
    finishing: Option<Finishing>,
    /// The chain copy's writer lock, held while this member may write it:
    /// two members of a site never apply blocks to one chain at once.
    _writer: File,
}

/// How long a member waits for a chain another member still writes (it
/// lets go when the group takes the chain from it, or when it dies).
const CHAIN_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Takes the writer lock of a chain copy, waiting up to
/// [`CHAIN_LOCK_WAIT`] for another member to let go of it.
fn lock_chain(layout: &RootLayout, chain: &ChainName) -> Result<File, ConsumerError> {
    let started = Instant::now();
    let mut said = false;
    loop {
        match fschain_store::layout::lock(layout) {
            Err(e @ fschain_store::StoreError::Locked { .. }) => {
                if started.elapsed() >= CHAIN_LOCK_WAIT {
                    return Err(e.into());
                }
                if !said {
                    info!(chain = %chain, "another member or command is writing this chain; waiting for it");
                    said = true;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            other => return Ok(other?),
        }
    }
}

/// How long one block took at a site: from its receive opening to its
/// stream's end, then verifying and placing it.
#[derive(Clone, Debug)]
pub struct BlockTiming {
    pub chain: ChainName,
    pub receive: std::time::Duration,
    pub verify: std::time::Duration,
}

/// A finished block's check and placing, as its thread hands it back.
#[derive(Debug)]
pub struct Finished {
    pub ready: ReadyBlock,
    pub outcome: Result<BlockTiming, ConsumerError>,
}

/// What a finishing thread returns: the block, how it went, and the
/// replayed logs the chain's next block is checked from.
type FinishedWork = (Finished, Option<VerifiedLogs>);

/// A block's check and placing, under way on a thread of its own, so that
/// a site checks and places the blocks of many chains at once and their
/// file system flushes share one btrfs transaction commit.
#[derive(Debug)]
struct Finishing {
    worker: Option<JoinHandle<FinishedWork>>,
    /// What the thread returned, once joined.
    result: Option<FinishedWork>,
    /// Bytes of the chain's later chunks spooled while this block is
    /// being finished (see [`SiteChain::read_ahead_full`]).
    spooled_ahead: u64,
}

/// How much of a chain's later chunks a site spools to disk while one of
/// its blocks is being finished, before it waits for that block instead.
/// It lets a site read on past a chain's block to other chains' blocks
/// (a catch-up's topic holds each chain's blocks one after another),
/// and keeps the disk a block needs to be put in place from being taken
/// by read-ahead: unbounded, replaying a large topic would spool it all.
pub const READ_AHEAD_BYTES: u64 = 1 << 20;

impl Finishing {
    /// Waits for the thread (at once, if it is done) and keeps what it
    /// returned.
    fn join(&mut self) {
        if let Some(w) = self.worker.take() {
            self.result = w.join().ok();
        }
    }
}

impl Drop for Finishing {
    /// Waits for the thread: it may be renaming the block into place, and
    /// the chain's writer lock must outlive it.
    fn drop(&mut self) {
        self.join();
    }
}

/// Says, when dropped, that a chain's finishing thread is done (whether it
/// returned or panicked), so a waiting site never waits for nothing.
struct AnnounceDone {
    done: std::sync::mpsc::Sender<ChainName>,
    chain: ChainName,
}

impl Drop for AnnounceDone {
    fn drop(&mut self) {
        let _ = self.done.send(self.chain.clone());
    }
}

/// Where a chain's verified blocks go: what checking and placing a block
/// needs of its [`SiteChain`], owned, for the thread that does it.
#[derive(Clone, Debug)]
struct Placement {
    layout: RootLayout,
    chain: ChainName,
    site: Site,
}

/// How many chunks may wait for `btrfs receive` (at 512 KiB each, 4 MiB):
/// memory stays flat whatever the block size, and a slow receive holds
/// back the reading of the topic.
const FEED_DEPTH: usize = 8;

/// A `btrfs receive` under way on its own thread, fed chunk by chunk.
#[derive(Debug)]
struct Receiving {
    key: StreamKey,
    staging: PathBuf,
    feed: Option<SyncSender<Vec<u8>>>,
    worker: Option<JoinHandle<Received>>,
    /// The logs' check, under way while the receive writes the states
    /// (when the site holds the previous block's replayed logs).
    early: Option<EarlyLogCheck>,
    started: Instant,
}

/// What a receive thread reports: how the receive went.
#[derive(Debug)]
struct Received {
    outcome: Result<(), StoreError>,
}

impl Received {
    /// A receive that never ran to the end of its input.
    fn failed(error: StoreError) -> Self {
        Received {
            outcome: Err(error),
        }
    }
}

impl Receiving {
    /// Ends the input and waits for the receive.
    fn close(&mut self) -> Received {
        self.feed = None;
        match self.worker.take().map(JoinHandle::join) {
            Some(Ok(received)) => received,
            _ => Received::failed(StoreError::BadSendStream {
                why: "the receiving thread stopped".into(),
            }),
        }
    }

    /// Ends the receive, deletes its staging subvolume, and returns the
    /// previous block's replayed logs if the early check handed them back.
    fn give_up(&mut self) -> Option<VerifiedLogs> {
        let _ = self.close();
        let verified = self.early.take().and_then(EarlyLogCheck::abandon);
        remove_staging(&self.staging);
        verified
    }
}

impl Drop for Receiving {
    /// A receive left open (the site stops mid-stream, a stream is given
    /// up) is ended and its staging subvolume deleted.
    fn drop(&mut self) {
        if self.worker.is_some() {
            let _ = self.give_up();
        }
    }
}

/// Decompresses the chunks sent down `chunks` into `btrfs receive` of the
/// subvolume `name` in `dir`.
fn receive(dir: &Path, name: &str, chunks: Receiver<Vec<u8>>) -> Received {
    let mut decoder = match zstd::stream::Decoder::new(ChannelReader::new(chunks)) {
        Ok(d) => d,
        Err(e) => return Received::failed(StoreError::io(dir, e)),
    };
    let outcome = btrfs::receive(dir, name, &mut decoder);
    decoder.finish().into_inner().finish();
    Received { outcome }
}

/// The chunks sent down a channel, read as one stream; ends when the
/// sending side is dropped. Nothing is hashed here: each chunk was
/// authenticated under its signed manifest before it was sent, in order,
/// and its signature covers its hash, index and stream attempt
/// (`docs/replication.md`).
struct ChannelReader {
    chunks: Receiver<Vec<u8>>,
    current: Vec<u8>,
    at: usize,
}

impl ChannelReader {
    fn new(chunks: Receiver<Vec<u8>>) -> Self {
        ChannelReader {
            chunks,
            current: Vec::new(),
            at: 0,
        }
    }

    /// Takes whatever was not read yet (a receive that stopped early), so
    /// that the feeding side never waits on it.
    fn finish(mut self) {
        let _ = io::copy(&mut self, &mut io::sink());
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.current.len() {
            match self.chunks.recv() {
                Ok(next) => {
                    self.current = next;
                    self.at = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl SiteChain {
    pub fn layout(&self) -> &RootLayout {
        &self.layout
    }

    pub fn chain(&self) -> &ChainName {
        &self.chain
    }

    /// The newest block this site holds.
    pub fn held(&self) -> Result<Option<u64>, ConsumerError> {
        Ok(self.layout.snapshot_heights()?.last().copied())
    }

    fn spool_dir(&self) -> PathBuf {
        self.layout.meta_dir().join("spool")
    }

    fn stream_dir(&self, key: &StreamKey) -> PathBuf {
        self.spool_dir()
            .join(format!("{:010}-{}", key.height, key.attempt.to_hex()))
    }

    /// Deletes what an interrupted receive left: staging subvolumes, and any
    /// block subvolume that is not read-only or has no received UUID. The
    /// spool goes too: whatever it held is re-read from the committed offset.
    pub fn recover(&self) -> Result<(), ConsumerError> {
        let blocks = self.layout.blocks_dir();
        for entry in std::fs::read_dir(&blocks).at(&blocks)? {
            let entry = entry.at(&blocks)?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let staging = name.starts_with(".incoming-");
            let broken = !staging
                && fschain_store::layout::parse_snapshot_name(&name).is_some()
                && (!btrfs::is_readonly(&path).unwrap_or(false)
                    || btrfs::received_uuid(&path)?.is_none());
            if staging || broken {
                warn!(chain = %self.chain, path = %path.display(), "deleting an interrupted receive");
                if btrfs::is_subvolume(&path) {
                    if btrfs::is_readonly(&path).unwrap_or(false) {
                        btrfs::set_readonly(&path, false)?;
                    }
                    btrfs::delete_subvolume(&path)?;
                } else {
                    std::fs::remove_dir_all(&path).at(&path)?;
                }
            }
        }
        let spool = self.spool_dir();
        if spool.exists() {
            std::fs::remove_dir_all(&spool).at(&spool)?;
        }
        Ok(())
    }

    /// Keeps a chunk's frame on disk until its turn comes.
    pub fn spool_chunk(
        &mut self,
        key: &StreamKey,
        index: u32,
        frame: &[u8],
    ) -> Result<(), ConsumerError> {
        let dir = self.stream_dir(key);
        std::fs::create_dir_all(&dir).at(&dir)?;
        let path = dir.join(format!("{index:08}"));
        std::fs::write(&path, frame).at(&path)?;
        if let Some(f) = &mut self.finishing {
            f.spooled_ahead += frame.len() as u64;
        }
        Ok(())
    }

    /// Whether the chain's chunks spooled while its block is being
    /// finished reached [`READ_AHEAD_BYTES`]: its next chunk waits for
    /// that block.
    pub fn read_ahead_full(&self) -> bool {
        self.finishing
            .as_ref()
            .is_some_and(|f| f.spooled_ahead >= READ_AHEAD_BYTES)
    }

    /// A spooled chunk, read back (its caller authenticates it again).
    pub fn spooled_chunk(&self, key: &StreamKey, index: u32) -> Result<Chunk, ConsumerError> {
        let path = self.stream_dir(key).join(format!("{index:08}"));
        let bytes = std::fs::read(&path).at(&path)?;
        match decode_frame(&bytes)? {
            Frame::Chunk(chunk) if chunk.meta.index == index => Ok(chunk),
            _ => Err(StoreError::Corrupt {
                path,
                why: format!("does not hold chunk {index}"),
            }
            .into()),
        }
    }

    /// Forgets a stream's spooled chunks.
    pub fn drop_spool(&mut self, key: &StreamKey) {
        let dir = self.stream_dir(key);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != io::ErrorKind::NotFound {
                warn!(path = %dir.display(), error = %e, "could not remove spooled chunks");
            }
        }
    }

    /// Starts `btrfs receive` of `ready`'s stream under the staging name;
    /// its chunks follow through [`Self::feed`].
    pub fn open(&mut self, ready: &ReadyBlock) -> Result<(), ConsumerError> {
        self.abort();
        let height = ready.header.height;
        let staging = self.layout.incoming(height);
        // Left by a receive that failed before it could be cleaned up.
        remove_staging(&staging);
        let (feed, chunks) = sync_channel::<Vec<u8>>(FEED_DEPTH);
        let dir = self.layout.blocks_dir();
        let name = fschain_store::layout::incoming_name(height);
        let running = Arc::new(AtomicBool::new(true));
        let still = Arc::clone(&running);
        let worker = std::thread::Builder::new()
            .name(format!("receive-{height}"))
            .spawn(move || {
                let received = receive(&dir, &name, chunks);
                still.store(false, Ordering::SeqCst);
                received
            })
            .at(&staging)?;
        let early = self.verified.take().and_then(|verified| {
            EarlyLogCheck::start(
                self.layout.clone(),
                ChainDir::new(&staging),
                ready.header.clone(),
                verified,
                move || running.load(Ordering::SeqCst),
            )
        });
        self.receiving = Some(Receiving {
            key: ready.key,
            staging,
            feed: Some(feed),
            worker: Some(worker),
            early,
            started: Instant::now(),
        });
        Ok(())
    }

    /// Feeds the next chunk of the open stream to its receive (waiting
    /// while the receive is [`FEED_DEPTH`] chunks behind). A receive that
    /// already stopped takes nothing more; [`Self::finish`] says why.
    pub fn feed(&mut self, key: &StreamKey, data: Vec<u8>) -> Result<(), ConsumerError> {
        let Some(r) = self.receiving.as_mut().filter(|r| r.key == *key) else {
            return Err(ConsumerError::Schema(SchemaError::Malformed {
                why: format!("a chunk of block {} fed with no receive open", key.height),
            }));
        };
        if let Some(feed) = &r.feed {
            if feed.send(data).is_err() {
                r.feed = None;
            }
        }
        Ok(())
    }

    /// Gives up the open stream, if any: its receive is ended and its
    /// staging subvolume deleted.
    pub fn abort(&mut self) {
        if let Some(mut r) = self.receiving.take() {
            warn!(chain = %self.chain, height = r.key.height, "giving up an unfinished receive");
            // The previous block's replayed logs, if the early check did not
            // start on this one's, serve the next attempt.
            self.verified = r.give_up();
        }
    }

    /// Starts finishing the open stream, every chunk of it fed, on a
    /// thread of its own: the receive's outcome, the received snapshot
    /// against the signed header, then into place. When
    /// the thread is done it sends the chain's name down `done`, and
    /// [`Self::take_finished`] hands back how it went. Nothing else of the
    /// chain is received until then.
    pub fn start_finish(
        &mut self,
        ready: ReadyBlock,
        done: std::sync::mpsc::Sender<ChainName>,
    ) -> Result<(), ConsumerError> {
        let height = ready.header.height;
        let Some(mut receiving) = self.receiving.take().filter(|r| r.key == ready.key) else {
            return Err(ConsumerError::Schema(SchemaError::Malformed {
                why: format!("block {height} finished with no receive open"),
            }));
        };
        let placement = Placement {
            layout: self.layout.clone(),
            chain: self.chain.clone(),
            site: self.site.clone(),
        };
        let mut verified = self.verified.take();
        let announce = AnnounceDone {
            done,
            chain: self.chain.clone(),
        };
        let worker = std::thread::Builder::new()
            .name(format!("finish-{height}"))
            .spawn(move || {
                let _announce = announce;
                let received = receiving.close();
                let early = receiving.early.take();
                let staging = receiving.staging.clone();
                let started = receiving.started;
                drop(receiving);
                let outcome = placement.check_and_place(
                    &ready,
                    received,
                    early,
                    &mut verified,
                    &staging,
                    started,
                );
                if outcome.is_err() {
                    remove_staging(&staging);
                }
                (Finished { ready, outcome }, verified)
            })
            .at(&self.layout.blocks_dir())?;
        self.finishing = Some(Finishing {
            worker: Some(worker),
            result: None,
            spooled_ahead: 0,
        });
        Ok(())
    }

    /// Whether a block of this chain is being checked and placed.
    pub fn is_finishing(&self) -> bool {
        self.finishing.is_some()
    }

    /// How the block being finished went, once its thread is done (`None`
    /// while it runs, or when none is).
    pub fn take_finished(&mut self) -> Option<Finished> {
        let f = self.finishing.as_mut()?;
        if f.worker.as_ref().is_some_and(JoinHandle::is_finished) {
            f.join();
        }
        if f.worker.is_some() {
            return None;
        }
        let result = f.result.take();
        self.finishing = None;
        match result {
            Some((finished, verified)) => {
                self.verified = verified;
                Some(finished)
            }
            // The thread panicked: the stream is received again.
            None => None,
        }
    }

    /// Waits for the block being finished, if there is one, and keeps how
    /// it went for [`Self::take_finished`] (its thread said it is done, or
    /// the chain is being let go).
    pub fn wait_finished(&mut self) {
        if let Some(f) = &mut self.finishing {
            f.join();
        }
    }

    /// The header of the newest block held.
    pub fn head_header(&self) -> Result<Option<BlockHeader>, ConsumerError> {
        let Some(h) = self.held()? else {
            return Ok(None);
        };
        Ok(ChainDir::new(self.layout.snapshot(h)).headers()?.pop())
    }
}

impl Placement {
    /// Checks a received block and puts it in place (see
    /// [`SiteChain::start_finish`]). `verified` holds the previous block's
    /// replayed logs, and this one's after it verifies.
    fn check_and_place(
        &self,
        ready: &ReadyBlock,
        received: Received,
        early: Option<EarlyLogCheck>,
        verified: &mut Option<VerifiedLogs>,
        staging: &Path,
        started: Instant,
    ) -> Result<BlockTiming, ConsumerError> {
        let height = ready.header.height;
        // 1. The whole stream: every chunk was signed under the manifest's
        // attempt and authenticated before it was fed, in order, from the
        // first to the one signed as the last.
        let whole = received.outcome.map_err(|e| ConsumerError::Receive {
            chain: self.chain.to_string(),
            height,
            error: Box::new(e),
        });
        if let Err(e) = whole {
            // The previous block's replay, if the early check handed it
            // back, serves the block's next attempt.
            *verified = early.and_then(EarlyLogCheck::abandon);
            return Err(e);
        }
        let received = started.elapsed();
        // 2. Verify the received snapshot against the signed header. Its
        // flush of the file system is what makes the block durable before
        // it is renamed into place and its offset committed: `btrfs
        // receive` writes through the page cache, and the transaction its
        // last ioctl commits does not carry that data, so after a power
        // loss a block in place could come back with empty files,
        // read-only and with its received UUID, and be taken as held.
        let problems = verify_received(
            &self.layout,
            &ChainDir::new(staging),
            &ready.header,
            verified,
            early,
        )?;
        if !problems.is_empty() {
            return Err(ConsumerError::Unverified {
                chain: self.chain.to_string(),
                height,
                problems: problems.iter().map(ToString::to_string).collect(),
            });
        }
        // 3. Keep the signed manifest (search proofs show it), then into
        // place. The first block a copy holds is its base.
        let manifests = self.layout.manifests_dir();
        std::fs::create_dir_all(&manifests).at(&manifests)?;
        let manifest = serde_json::to_vec(&ready.manifest).map_err(|e| StoreError::Corrupt {
            path: self.layout.manifest(height),
            why: e.to_string(),
        })?;
        write_atomic(&self.layout.manifest(height), &manifest)?;
        if self.layout.snapshot_heights()?.is_empty() {
            self.site.write_replica(&self.layout, height)?;
        }
        let dest = self.layout.snapshot(height);
        std::fs::rename(staging, &dest).at(&dest)?;
        let blocks = self.layout.blocks_dir();
        File::open(&blocks).and_then(|d| d.sync_all()).at(&blocks)?;
        let total = started.elapsed();
        debug!(
            height,
            receive_ms = received.as_millis() as u64,
            verify_ms = (total - received).as_millis() as u64,
            "received and verified"
        );
        info!(chain = %self.chain, height, hash = %ready.header.hash, "block verified and in place");
        Ok(BlockTiming {
            chain: self.chain.clone(),
            receive: received,
            verify: total - received,
        })
    }
}

/// Deletes a staging subvolume, if there is one.
fn remove_staging(staging: &Path) {
    if !btrfs::is_subvolume(staging) {
        return;
    }
    let _ = btrfs::set_readonly(staging, false);
    if let Err(e) = btrfs::delete_subvolume(staging) {
        warn!(path = %staging.display(), error = %e, "could not delete a rejected receive");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever pieces the chunks come in, the reader gives back their
        /// bytes in order, whatever size its caller reads at, then ends.
        #[test]
        fn the_channel_reader_is_the_chunks_in_order(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..10),
            read_size in 1usize..200,
        ) {
            let (feed, rx) = sync_channel::<Vec<u8>>(2);
            let sent = chunks.clone();
            let sender = std::thread::spawn(move || {
                for c in sent {
                    feed.send(c).unwrap();
                }
            });
            let mut reader = ChannelReader::new(rx);
            let mut got = Vec::new();
            let mut buf = vec![0u8; read_size];
            loop {
                let n = reader.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            sender.join().unwrap();
            let whole = chunks.concat();
            prop_assert_eq!(&got, &whole);
            reader.finish();
        }
    }
}
