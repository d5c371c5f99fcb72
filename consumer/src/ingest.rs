//! From frames to blocks: the part of a site that Kafka consumption and
//! `fschain import` share. Each frame is decoded and checked (manifest
//! signature, chunk hash); bad frames are logged with where they came from
//! and skipped; each chain's [`ChunkAssembler`] says which stream to open,
//! which chunk to feed to its receive now and which to spool for later;
//! a stream fed whole is checked and applied to the site's copy.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use fschain_schema::wire::{decode_frame, Frame, PublicKey};
use fschain_schema::ChainName;
use fschain_store::crash::{crash_point, CrashPoint};
use tracing::{debug, warn};

use crate::assembler::{ChunkAssembler, ReadyBlock, StreamKey, Verdict};
use crate::indexer::SiteIndexer;
use crate::site::{BlockTiming, Site, SiteChain};
use crate::witness::SiteWitness;
use crate::ConsumerError;
use fschain_index::{Embedders, VectorStore};

/// Where a frame came from, for log lines.
#[derive(Clone, Debug)]
pub struct Origin<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

impl fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} partition {} offset {}",
            self.topic, self.partition, self.offset
        )
    }
}

/// Why a site refused a frame or a stream (the `reason` label of the
/// `frames_rejected` metric).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// Not an fschain frame at all.
    NotAFrame,
    /// The record's key is not the frame's chain.
    KeyNotChain,
    /// A chain this site was told not to take.
    ChainNotTaken,
    /// A chain this site stopped because its key signed two histories.
    ChainStopped,
    /// The manifest that showed the fork.
    Fork,
    /// A manifest whose signature or header does not check out.
    BadManifest,
    /// A chunk whose hash or signature does not check out.
    BadChunk,
    /// A chunk that contradicts its manifest.
    ChunkContradicts,
    /// A whole stream that did not receive or verify.
    BadStream,
}

impl Rejection {
    pub const ALL: [Rejection; 9] = [
        Rejection::NotAFrame,
        Rejection::KeyNotChain,
        Rejection::ChainNotTaken,
        Rejection::ChainStopped,
        Rejection::Fork,
        Rejection::BadManifest,
        Rejection::BadChunk,
        Rejection::ChunkContradicts,
        Rejection::BadStream,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::NotAFrame => "not_a_frame",
            Rejection::KeyNotChain => "key_not_chain",
            Rejection::ChainNotTaken => "chain_not_taken",
            Rejection::ChainStopped => "chain_stopped",
            Rejection::Fork => "fork",
            Rejection::BadManifest => "bad_manifest",
            Rejection::BadChunk => "bad_chunk",
            Rejection::ChunkContradicts => "chunk_contradicts_manifest",
            Rejection::BadStream => "bad_stream",
        }
    }
}

/// Counters for reports and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IngestStats {
    pub applied: u64,
    pub duplicates: u64,
    /// Every rejection, whatever its reason.
    pub rejected: u64,
    /// Rejections by reason, in the order of [`Rejection::ALL`].
    pub rejected_by: [u64; Rejection::ALL.len()],
    /// Events put in the site's event index.
    pub indexed: u64,
    /// Bytes of the frames taken in.
    pub bytes: u64,
    /// The blocks a replay will apply, once its first pass has read the
    /// topic's manifests (for progress).
    pub expected: Option<u64>,
}

impl IngestStats {
    fn reject(&mut self, why: Rejection, n: u64) {
        self.rejected += n;
        self.rejected_by[why as usize] += n;
    }

    /// How many were rejected for `why`.
    pub fn rejected_for(&self, why: Rejection) -> u64 {
        self.rejected_by[why as usize]
    }
}

/// A site taking in frames.
#[derive(Debug)]
pub struct Ingest {
    site: Site,
    trusted: Vec<PublicKey>,
    only: Option<Vec<ChainName>>,
    floors: BTreeMap<ChainName, u64>,
    chains: BTreeMap<ChainName, (SiteChain, ChunkAssembler)>,
    /// When set, each chain's event index follows its verified blocks.
    indexer: Option<SiteIndexer>,
    pub stats: IngestStats,
    /// The newest blocks' timings (at most [`TIMINGS_KEPT`]), and how many
    /// blocks were ever timed, so a reader can tell which are new.
    timings: std::collections::VecDeque<BlockTiming>,
    timed: u64,
    /// When set, the site checks and cosigns its producers' checkpoints.
    witness: Option<SiteWitness>,
    /// Blocks being checked and placed on threads of their own, and the
    /// channel down which each thread names its chain when it is done.
    finishing: usize,
    finished_tx: std::sync::mpsc::Sender<ChainName>,
    finished_rx: std::sync::mpsc::Receiver<ChainName>,
}

/// How many blocks (of as many chains) a site checks and places at once.
/// Their file system flushes land in shared btrfs transaction commits, so
/// a site with many chains pays a commit per batch instead of per block;
/// the bound keeps the threads and open receives in hand.
const FINISHING_AT_ONCE: usize = 16;

/// How many blocks' timings an [`Ingest`] keeps for its readers.
const TIMINGS_KEPT: usize = 1024;

impl Ingest {
    pub fn new(site: Site, trusted: Vec<PublicKey>) -> Result<Self, ConsumerError> {
        if trusted.is_empty() {
            return Err(ConsumerError::NoTrustedKeys);
        }
        let (finished_tx, finished_rx) = std::sync::mpsc::channel();
        Ok(Ingest {
            site,
            trusted,
            only: None,
            floors: BTreeMap::new(),
            chains: BTreeMap::new(),
            indexer: None,
            stats: IngestStats::default(),
            timings: Default::default(),
            timed: 0,
            witness: None,
            finishing: 0,
            finished_tx,
            finished_rx,
        })
    }

    /// Takes only these chains; frames of others are logged and skipped.
    pub fn only_chains(mut self, chains: Vec<ChainName>) -> Self {
        self.only = (!chains.is_empty()).then_some(chains);
        self
    }

    /// Indexes each verified block's events with `embedders` into `store`,
    /// on a thread of its own (see [`SiteIndexer`]).
    pub fn with_index(
        mut self,
        embedders: Embedders,
        store: VectorStore,
    ) -> Result<Self, ConsumerError> {
        self.indexer = Some(SiteIndexer::start(embedders, store)?);
        Ok(self)
    }

    /// Checks each block's checkpoint against the blocks held and the
    /// checkpoints other sites cosigned, and cosigns it ([`SiteWitness`]).
    pub fn with_witness(mut self, witness: SiteWitness) -> Self {
        self.witness = Some(witness);
        self
    }

    /// The site's witness, when it has one.
    pub fn witness(&self) -> Option<&SiteWitness> {
        self.witness.as_ref()
    }

    /// The cosigned checkpoints to send to the witness topic.
    pub fn take_cosignatures(&mut self) -> Vec<(ChainName, String)> {
        self.witness
            .as_mut()
            .map(SiteWitness::take_outbox)
            .unwrap_or_default()
    }

    /// A message of the witness topic: a checkpoint signed by a trusted
    /// producer key disagreeing with what this site holds stops its chain.
    pub fn witnessed(&mut self, text: &[u8], origin: &Origin<'_>) {
        let Some(witness) = &mut self.witness else {
            return;
        };
        let opened = std::str::from_utf8(text)
            .map_err(|e| e.to_string())
            .and_then(|t| crate::witness::open_witnessed(t, &self.trusted));
        let (chain, checkpoint, note) = match opened {
            Ok(opened) => opened,
            Err(why) => {
                debug!(at = %origin, why, "skipping a witness message");
                return;
            }
        };
        if witness.stopped.contains_key(&chain) {
            return;
        }
        let held = || {
            fschain_store::layout::RootLayout::new(self.site.root().join(chain.as_str()))
                .marker()
                .exists()
        };
        if witness.book.held(&chain).is_none() && held() {
            match held_leaves(&self.site, &chain) {
                Ok(leaves) => {
                    if let Err(fork) = witness.book.load(&chain, leaves) {
                        witness.stop(&fork);
                        return;
                    }
                }
                Err(e) => warn!(chain = %chain, error = %e, "could not read the chain's headers"),
            }
        }
        let by: Vec<&str> = note.signatures.iter().map(|s| s.name.as_str()).collect();
        let shown_by = format!("the checkpoint signed by {} ({})", by.join(", "), origin);
        if let Err(fork) = witness
            .book
            .observe(&chain, checkpoint.size, checkpoint.root, &shown_by)
        {
            witness.stop(&fork);
        }
    }

    /// Waits until the event index holds every block applied so far. The
    /// index is derived data: failures were logged, and the next block (or
    /// `search`, or `reindex`) catches up.
    pub fn settle_index(&mut self) {
        if let Some(indexer) = &mut self.indexer {
            indexer.finish();
            self.stats.indexed = indexer.indexed();
        }
    }

    /// Ignores blocks of `chain` below `height` (replay from a checkpoint).
    pub fn start_at(&mut self, chain: ChainName, height: u64) {
        self.floors.insert(chain, height);
    }

    pub fn site(&self) -> &Site {
        &self.site
    }

    /// Takes one frame. Returns an error only when the site cannot go on
    /// (its disk, btrfs); a bad frame or a bad stream is logged and skipped.
    ///
    /// When the site's disk is full, every receive under way is given up
    /// and what this ingest remembers of streams in progress is forgotten
    /// ([`ConsumerError::DiskFull`]): the chains read again from disk, and
    /// the frames again from the topic (its offsets were never committed
    /// past them).
    pub fn frame(
        &mut self,
        bytes: &[u8],
        key: Option<&[u8]>,
        origin: &Origin<'_>,
    ) -> Result<Option<ChainName>, ConsumerError> {
        let taken = self.take_frame(bytes, key, origin);
        self.unless_disk_full(taken)
    }

    /// Takes in the blocks whose check and placing finished since the last
    /// call, and goes on with their chains (without waiting for any).
    /// Errors as [`Self::frame`] does.
    pub fn poll(&mut self) -> Result<(), ConsumerError> {
        let polled = self.finish_down_to(None);
        self.unless_disk_full(polled)
    }

    /// Waits until no block is being checked and placed, taking each in
    /// as it finishes (its chain may open the next block from the spool,
    /// which is waited for too). Errors as [`Self::frame`] does.
    pub fn settle(&mut self) -> Result<(), ConsumerError> {
        let settled = self.finish_down_to(Some(0));
        self.unless_disk_full(settled)
    }

    /// How many blocks are being checked and placed.
    pub fn finishing(&self) -> usize {
        self.finishing
    }

    /// Takes in every finished block; with `wait_until`, also waits until
    /// at most that many are being finished.
    fn finish_down_to(&mut self, wait_until: Option<usize>) -> Result<(), ConsumerError> {
        loop {
            let next = match wait_until {
                Some(n) if self.finishing > n => {
                    match self.finished_rx.recv_timeout(Duration::from_secs(1)) {
                        Ok(chain) => Some(chain),
                        Err(_) => {
                            // Every finish announces itself; a count
                            // gone wrong must not wait forever.
                            self.finishing = self
                                .chains
                                .values()
                                .filter(|(c, _)| c.is_finishing())
                                .count();
                            continue;
                        }
                    }
                }
                _ => self.finished_rx.try_recv().ok(),
            };
            let Some(chain) = next else {
                return Ok(());
            };
            // A chain forgotten since (a rebalance) stays forgotten. Its
            // thread said it is done: wait for it to return, so the drive
            // takes its block in.
            self.finish_one(&chain)?;
        }
    }

    /// Waits for the block of `chain` being finished, if one is, and
    /// takes it in (which may start finishing the next). Says whether one
    /// was.
    fn finish_one(&mut self, chain: &ChainName) -> Result<bool, ConsumerError> {
        let Some((c, _)) = self.chains.get_mut(chain).filter(|(c, _)| c.is_finishing()) else {
            return Ok(false);
        };
        c.wait_finished();
        self.drive(chain)?;
        Ok(true)
    }

    /// A site that ran out of disk gives up what it was receiving (see
    /// [`Self::frame`]).
    fn unless_disk_full<T>(
        &mut self,
        result: Result<T, ConsumerError>,
    ) -> Result<T, ConsumerError> {
        match result {
            Err(e) if e.is_disk_full() => {
                self.forget_progress();
                Err(ConsumerError::DiskFull {
                    root: self.site.root().to_owned(),
                    source: Box::new(e),
                })
            }
            other => other,
        }
    }

    /// The timings of the blocks verified since `seen` blocks were (at most
    /// the newest [`TIMINGS_KEPT`]), and the count to pass next time.
    pub fn timings_since(&self, seen: u64) -> (impl Iterator<Item = &BlockTiming>, u64) {
        let new = self
            .timed
            .saturating_sub(seen)
            .min(self.timings.len() as u64) as usize;
        (
            self.timings.iter().skip(self.timings.len() - new),
            self.timed,
        )
    }

    /// Gives up every receive under way and forgets what was assembled:
    /// each chain is read again from disk when its next frame comes (after
    /// a full disk, or when the group hands this member's chains to
    /// another, which may move them on meanwhile).
    pub fn forget_progress(&mut self) {
        for (site_chain, _) in self.chains.values_mut() {
            site_chain.abort();
            site_chain.wait_finished();
        }
        self.chains.clear();
        self.finishing = 0;
    }

    fn take_frame(
        &mut self,
        bytes: &[u8],
        key: Option<&[u8]>,
        origin: &Origin<'_>,
    ) -> Result<Option<ChainName>, ConsumerError> {
        self.stats.bytes += bytes.len() as u64;
        let frame = match decode_frame(bytes) {
            Ok(f) => f,
            Err(e) => {
                self.stats.reject(Rejection::NotAFrame, 1);
                warn!(at = %origin, error = %e, "skipping a message that is not an fschain frame");
                return Ok(None);
            }
        };
        let chain = frame.chain().clone();
        if let Some(k) = key {
            if k != chain.as_str().as_bytes() {
                self.stats.reject(Rejection::KeyNotChain, 1);
                warn!(at = %origin, chain = %chain, key = %String::from_utf8_lossy(k), "skipping a frame whose key is not its chain");
                return Ok(None);
            }
        }
        if self
            .only
            .as_ref()
            .is_some_and(|only| !only.contains(&chain))
        {
            self.stats.reject(Rejection::ChainNotTaken, 1);
            warn!(at = %origin, chain = %chain, "skipping a stream for a chain this site does not take");
            return Ok(None);
        }
        let height = match &frame {
            Frame::Manifest(m) => m.height,
            Frame::Chunk(c) => c.meta.height,
        };
        if self
            .witness
            .as_ref()
            .is_some_and(|w| w.refuses(&chain, height))
        {
            self.stats.reject(Rejection::ChainStopped, 1);
            debug!(at = %origin, chain = %chain, "skipping a frame of a chain stopped by a fork");
            return Ok(Some(chain));
        }
        match frame {
            // Read-ahead of a chain whose block is being finished is
            // bounded: past the bound, its chunk waits for that block.
            Frame::Chunk(_)
                if self
                    .chains
                    .get(&chain)
                    .is_some_and(|(c, _)| c.read_ahead_full()) =>
            {
                self.finish_one(&chain)?;
            }
            _ => {}
        }
        let (site_chain, assembler) =
            chain_state(&self.site, &self.floors, &mut self.chains, &chain)?;
        let verdict = match frame {
            Frame::Manifest(m) => match m.verify(&self.trusted) {
                Ok(header) => {
                    if let (Some(w), Ok(Some((cp, _)))) = (&mut self.witness, m.checkpoint()) {
                        if let Err(fork) = w.book.admit(&chain, cp.size, cp.root) {
                            self.stats.reject(Rejection::Fork, 1);
                            // Blocks below the fork, on their way, are
                            // still taken (see `drive`); this one is not.
                            w.stop(&fork);
                            self.drive(&chain)?;
                            return Ok(Some(chain));
                        }
                    }
                    assembler.manifest(m, header, origin.offset)
                }
                Err(e) => {
                    self.stats.reject(Rejection::BadManifest, 1);
                    warn!(at = %origin, chain = %chain, height = m.height, error = %e, "rejecting a manifest");
                    return Ok(Some(chain));
                }
            },
            Frame::Chunk(c) => {
                let key = StreamKey {
                    height: c.meta.height,
                    attempt: c.meta.attempt,
                };
                // Against its manifest's key as soon as the manifest is in;
                // a chunk that came first is checked again when its turn
                // comes.
                let checked = match assembler.manifest_of(&key) {
                    Some(manifest) => c.authenticate(manifest),
                    None => c.check(),
                };
                if let Err(e) = checked {
                    self.stats.reject(Rejection::BadChunk, 1);
                    warn!(at = %origin, chain = %chain, height = c.meta.height, index = c.meta.index, error = %e, "rejecting a chunk");
                    return Ok(Some(chain));
                }
                let v = assembler.chunk(&c.meta, origin.offset);
                match &v {
                    Verdict::Spool { key, index } => site_chain.spool_chunk(key, *index, bytes)?,
                    Verdict::Pipe { key, .. } => site_chain.feed(key, c.data)?,
                    _ => {}
                }
                v
            }
        };
        match verdict {
            Verdict::Drop { why } => {
                self.stats.duplicates += 1;
                debug!(at = %origin, chain = %chain, ?why, "dropping a frame");
            }
            Verdict::Reject { why } => {
                self.stats.reject(Rejection::ChunkContradicts, 1);
                warn!(at = %origin, chain = %chain, why, "rejecting a chunk");
            }
            Verdict::Spool { .. } | Verdict::Pipe { .. } | Verdict::Noted => {}
        }
        self.drive(&chain)?;
        // Bounded: past the bound, wait for the oldest to finish.
        self.finish_down_to(Some(FINISHING_AT_ONCE))?;
        Ok(Some(chain))
    }

    /// Does what `chain`'s assembler says: takes in the block whose check
    /// and placing finished, gives up streams replaced by newer ones, opens
    /// the next stream's receive, feeds it the chunks that were spooled,
    /// and starts finishing a stream fed whole. Nothing of the chain moves
    /// while one of its blocks is being finished.
    fn drive(&mut self, chain: &ChainName) -> Result<(), ConsumerError> {
        let (site_chain, assembler) =
            chain_state(&self.site, &self.floors, &mut self.chains, chain)?;
        let mut applied = 0;
        let mut rejected = 0;
        loop {
            if site_chain.is_finishing() {
                let taken = site_chain.take_finished();
                if site_chain.is_finishing() {
                    break;
                }
                self.finishing -= 1;
                let Some(finished) = taken else {
                    return Err(ConsumerError::Schema(
                        fschain_schema::SchemaError::Malformed {
                            why: format!("{chain}: the thread checking a block stopped"),
                        },
                    ));
                };
                let ready = finished.ready;
                match finished.outcome {
                    Ok(timing) => {
                        if let Some(w) = &mut self.witness {
                            witness_applied(w, &self.site, chain, &ready);
                        }
                        if self.timings.len() >= TIMINGS_KEPT {
                            self.timings.pop_front();
                        }
                        self.timings.push_back(timing);
                        self.timed += 1;
                        for key in assembler.applied(ready.key.height) {
                            site_chain.drop_spool(&key);
                        }
                        applied += 1;
                        crash_point(CrashPoint::SiteApplied);
                    }
                    Err(e) if e.is_bad_stream() => {
                        warn!(chain = %chain, height = ready.key.height, error = %e, "dropping a stream that does not check out; waiting for a good copy");
                        assembler.discard(&ready.key);
                        site_chain.drop_spool(&ready.key);
                        rejected += 1;
                    }
                    Err(e) => {
                        // The site cannot go on (its disk, btrfs): the
                        // stream stays its chain's oldest need, so its
                        // offset is not committed past.
                        self.stats.applied += applied;
                        self.stats.reject(Rejection::BadStream, rejected);
                        return Err(e);
                    }
                }
            }
            for key in assembler.take_aborted() {
                warn!(chain = %chain, height = key.height, "a new stream of the block being received replaces it");
                site_chain.abort();
                site_chain.drop_spool(&key);
            }
            if assembler.open_stream().is_none() {
                let Some(ready) = assembler.next_to_open() else {
                    break;
                };
                if refused(&self.witness, chain, ready.key.height) {
                    assembler.discard(&ready.key);
                    site_chain.drop_spool(&ready.key);
                    continue;
                }
                site_chain.open(&ready)?;
                assembler.opened(ready.key);
            }
            if let Err((key, e)) = feed_spooled(site_chain, assembler)? {
                warn!(chain = %chain, height = key.height, error = %e, "dropping a stream with a spooled chunk that is not its own; waiting for a good copy");
                site_chain.abort();
                assembler.discard(&key);
                site_chain.drop_spool(&key);
                rejected += 1;
                continue;
            }
            let Some(ready) = assembler.open_complete() else {
                break;
            };
            if refused(&self.witness, chain, ready.key.height) {
                site_chain.abort();
                assembler.discard(&ready.key);
                site_chain.drop_spool(&ready.key);
                continue;
            }
            site_chain.start_finish(ready, self.finished_tx.clone())?;
            self.finishing += 1;
        }
        self.stats.applied += applied;
        self.stats.reject(Rejection::BadStream, rejected);
        if applied > 0 {
            if let Some(indexer) = &self.indexer {
                indexer.chain_moved(site_chain.layout());
                self.stats.indexed = indexer.indexed();
            }
        }
        Ok(())
    }

    /// The oldest offset `chain` still needs, when it is assembling a stream.
    pub fn low_water(&self, chain: &ChainName) -> Option<i64> {
        self.chains.get(chain).and_then(|(_, a)| a.low_water())
    }

    /// Chains that cannot go on: a block is missing and later ones wait.
    pub fn gaps(&self) -> Vec<(ChainName, u64)> {
        self.chains
            .iter()
            .filter_map(|(c, (_, a))| a.gap().map(|h| (c.clone(), h)))
            // A chain stopped by a fork waits on nothing.
            .filter(|(c, h)| !refused(&self.witness, c, *h))
            .collect()
    }

    /// Streams begun above each chain's held height and not complete.
    pub fn incomplete_streams(&self) -> Vec<(ChainName, crate::assembler::Incomplete)> {
        self.chains
            .iter()
            .flat_map(|(c, (_, a))| a.incomplete().into_iter().map(|i| (c.clone(), i)))
            .collect()
    }

    /// Streams still incomplete, per chain (for the idle report).
    pub fn incomplete(&self) -> Vec<(ChainName, usize)> {
        self.chains
            .iter()
            .filter(|(_, (_, a))| a.pending_len() > 0)
            .map(|(c, (_, a))| (c.clone(), a.pending_len()))
            .collect()
    }

    /// The newest block held of each chain seen.
    pub fn heads(&self) -> Vec<(ChainName, Option<u64>)> {
        self.chains
            .iter()
            .map(|(c, (_, a))| (c.clone(), a.held()))
            .collect()
    }
}

/// The site's copy of `chain` and its assembler, made on first use.
fn chain_state<'a>(
    site: &Site,
    floors: &BTreeMap<ChainName, u64>,
    chains: &'a mut BTreeMap<ChainName, (SiteChain, ChunkAssembler)>,
    chain: &ChainName,
) -> Result<&'a mut (SiteChain, ChunkAssembler), ConsumerError> {
    match chains.entry(chain.clone()) {
        Entry::Occupied(e) => Ok(e.into_mut()),
        Entry::Vacant(v) => {
            let site_chain = site.chain(chain)?;
            let held = site_chain.held()?;
            let floor = floors.get(chain).copied().unwrap_or(0);
            let assembler = ChunkAssembler::new(held).with_floor(floor);
            Ok(v.insert((site_chain, assembler)))
        }
    }
}

/// Feeds the open stream the chunks that were spooled before their turn,
/// each authenticated against the signed manifest first. The inner error
/// names a stream whose spooled chunk is not its own.
fn feed_spooled(
    site_chain: &mut SiteChain,
    assembler: &mut ChunkAssembler,
) -> Result<Result<(), (StreamKey, ConsumerError)>, ConsumerError> {
    while let Some((key, index)) = assembler.take_spooled() {
        let chunk = site_chain.spooled_chunk(&key, index)?;
        let authentic = match assembler.manifest_of(&key) {
            Some(manifest) => chunk.authenticate(manifest).map_err(ConsumerError::Schema),
            None => Err(ConsumerError::Schema(
                fschain_schema::SchemaError::Malformed {
                    why: format!("the open stream of block {} has no manifest", key.height),
                },
            )),
        };
        match authentic {
            Ok(()) => site_chain.feed(&key, chunk.data)?,
            Err(e) => return Ok(Err((key, e))),
        }
    }
    Ok(Ok(()))
}

/// The leaf hashes of the blocks the site holds of `chain`.
fn held_leaves(
    site: &Site,
    chain: &ChainName,
) -> Result<Vec<fschain_schema::Digest>, ConsumerError> {
    let copy = fschain_store::Chain::open(&site.root().join(chain.as_str()))?;
    Ok(fschain_schema::note::block_leaves(copy.headers()))
}

/// Whether the site's witness refuses block `height` of `chain` (a fork
/// stopped the chain at or below it).
fn refused(witness: &Option<SiteWitness>, chain: &ChainName, height: u64) -> bool {
    witness.as_ref().is_some_and(|w| w.refuses(chain, height))
}

/// After block `ready` of `chain` is in place: checks its checkpoint
/// against the blocks held and cosigns it, or stops the chain.
fn witness_applied(w: &mut SiteWitness, site: &Site, chain: &ChainName, ready: &ReadyBlock) {
    let height = ready.header.height;
    if w.refuses(chain, height) {
        return;
    }
    // Loaded leaves may stop short of this block: another member of the
    // site's group applied the blocks between while it held the chain.
    if w.book.held(chain) != Some(height) {
        // The leaves of the blocks before this one.
        match held_leaves(site, chain) {
            Ok(mut leaves) => {
                leaves.truncate(height as usize);
                if let Err(fork) = w.book.load(chain, leaves) {
                    w.stop(&fork);
                    return;
                }
            }
            Err(e) => {
                warn!(chain = %chain, error = %e, "could not read the chain's headers; not cosigning");
                return;
            }
        }
    }
    let checkpoint = match ready.manifest.checkpoint() {
        Ok(c) => c,
        Err(e) => {
            warn!(chain = %chain, height, error = %e, "the manifest's checkpoint does not check; not cosigning");
            None
        }
    };
    let leaf = fschain_schema::merkle::leaf_hash(ready.header.hash.digest().as_bytes());
    let shown = checkpoint.as_ref().map(|(cp, _)| (cp.size, cp.root));
    match w.book.applied(
        chain,
        leaf,
        shown,
        &format!("the producer's checkpoint of block {height}"),
    ) {
        Ok(true) => {
            if let (Some((cp, _)), Some(note)) = (&checkpoint, &ready.manifest.checkpoint) {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                w.cosign(chain, note, &cp.body(), now);
            }
        }
        Ok(false) => {}
        Err(fork) => w.stop(&fork),
    }
}
