//! Chunk reassembly as a plain state machine: no IO, no clock.
//!
//! The caller feeds it the frames it reads for one chain (already decoded;
//! chunks already checked against their own hash and, when their manifest
//! is known, authenticated under its key; manifests already
//! verified against the trusted keys) and does what it answers.
//!
//! One stream at a time is *open*: the next block's, once its manifest is
//! in (a manifest comes before its chunks; a stream's chunks say which is
//! the last). Its chunks are fed to `btrfs receive` as they come, in order
//! ([`Verdict::Pipe`]); any other chunk is spooled ([`Verdict::Spool`]) and
//! handed out when its turn comes ([`ChunkAssembler::take_spooled`]). A
//! stream is complete when every chunk of it went in; the caller then
//! checks the received block and reports it [`applied`] or [`discard`]s it.
//! The assembler tolerates duplicates, retries and any order.
//!
//! [`applied`]: ChunkAssembler::applied
//! [`discard`]: ChunkAssembler::discard

use std::collections::BTreeMap;

use std::collections::BTreeSet;

use fschain_schema::wire::{BlockManifest, ChunkMeta, StreamAttempt};
use fschain_schema::BlockHeader;

/// Identifies one stream: a height can be published more than once (a
/// producer that crashed mid-publish makes the stream again), and each
/// attempt is assembled on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamKey {
    pub height: u64,
    pub attempt: StreamAttempt,
}

/// What the caller must do with a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Keep this chunk's frame (spool it under `key` and the index).
    Spool { key: StreamKey, index: u32 },
    /// Chunk `index` of the open stream, next in line: feed it to the
    /// receive now.
    Pipe { key: StreamKey, index: u32 },
    /// Nothing to keep: a duplicate, or a block the site already holds.
    Drop { why: DropReason },
    /// Frame contradicts what is known of its stream; log it, keep nothing.
    Reject { why: String },
    /// Manifest taken.
    Noted,
}

#[derive(Debug, PartialEq, Eq)]
pub enum DropReason {
    Duplicate,
    AlreadyHeld,
}

#[derive(Debug)]
struct Pending {
    manifest: Option<(BlockManifest, BlockHeader)>,
    /// How many chunks the stream has, once its last one arrived.
    count: Option<u32>,
    /// The indexes that arrived (sparse: an index comes from a chunk not
    /// yet authenticated, and must not size anything).
    have: BTreeSet<u32>,
    first_offset: i64,
}

impl Pending {
    fn complete(&self) -> bool {
        self.manifest.is_some() && self.count == Some(self.have.len() as u32)
    }

    fn parent(&self) -> Option<Option<u64>> {
        self.manifest.as_ref().map(|(m, _)| m.parent)
    }
}

/// A stream that has not all arrived (see [`ChunkAssembler::incomplete`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incomplete {
    pub height: u64,
    /// Chunks that arrived.
    pub chunks: u32,
    /// Chunks the stream has, once its last one arrived.
    pub of: Option<u32>,
    /// Whether its manifest arrived.
    pub manifest: bool,
}

/// A stream whose manifest is verified: the one to open, or the open one
/// once all of it went in.
#[derive(Debug, Clone)]
pub struct ReadyBlock {
    pub key: StreamKey,
    pub manifest: BlockManifest,
    pub header: BlockHeader,
}

/// The stream being received, and the index of its next chunk.
#[derive(Debug, Clone, Copy)]
struct OpenStream {
    key: StreamKey,
    next: u32,
}

/// Reassembles the blocks of one chain.
#[derive(Debug, Default)]
pub struct ChunkAssembler {
    /// Highest height the site holds (applied and committed to its chain).
    held: Option<u64>,
    /// Heights below this are ignored (a replay that starts at a checkpoint).
    floor: u64,
    pending: BTreeMap<StreamKey, Pending>,
    open: Option<OpenStream>,
    /// Open streams given up (another stream of their height took their
    /// place) that the caller has not been told of yet.
    aborted: Vec<StreamKey>,
    /// Offset after the last frame seen.
    next_offset: i64,
}

impl ChunkAssembler {
    pub fn new(held: Option<u64>) -> Self {
        ChunkAssembler {
            held,
            ..ChunkAssembler::default()
        }
    }

    /// Ignores every block below `floor`.
    pub fn with_floor(mut self, floor: u64) -> Self {
        self.floor = floor;
        self
    }

    pub fn held(&self) -> Option<u64> {
        self.held
    }

    fn is_held(&self, height: u64) -> bool {
        height < self.floor || self.held.is_some_and(|h| height <= h)
    }

    fn note_offset(&mut self, offset: i64) {
        self.next_offset = self.next_offset.max(offset + 1);
    }

    fn entry(&mut self, key: StreamKey, offset: i64) -> &mut Pending {
        let p = self.pending.entry(key).or_insert_with(|| Pending {
            manifest: None,
            count: None,
            have: BTreeSet::new(),
            first_offset: offset,
        });
        p.first_offset = p.first_offset.min(offset);
        p
    }

    /// A verified manifest (`header` is the header it carries, checked).
    pub fn manifest(
        &mut self,
        manifest: BlockManifest,
        header: BlockHeader,
        offset: i64,
    ) -> Verdict {
        self.note_offset(offset);
        if self.is_held(manifest.height) {
            return Verdict::Drop {
                why: DropReason::AlreadyHeld,
            };
        }
        let key = StreamKey {
            height: manifest.height,
            attempt: manifest.stream.attempt,
        };
        let p = self.entry(key, offset);
        if p.manifest.is_some() {
            return Verdict::Drop {
                why: DropReason::Duplicate,
            };
        }
        p.manifest = Some((manifest, header));
        // A new stream of the height being received: on a partition, in
        // order, that is a producer that died mid-stream and made the block
        // again, so the open one will never be finished. Its piped chunks
        // are gone with it.
        if let Some(open) = self.open {
            if open.key.height == key.height && open.key != key {
                self.pending.remove(&open.key);
                self.open = None;
                self.aborted.push(open.key);
            }
        }
        Verdict::Noted
    }

    /// A chunk whose bytes match its own hash (and signed under its
    /// manifest, when the manifest is known).
    pub fn chunk(&mut self, meta: &ChunkMeta, offset: i64) -> Verdict {
        self.note_offset(offset);
        if self.is_held(meta.height) {
            return Verdict::Drop {
                why: DropReason::AlreadyHeld,
            };
        }
        let key = StreamKey {
            height: meta.height,
            attempt: meta.attempt,
        };
        let p = self.entry(key, offset);
        let index = meta.index;
        let beyond_last = p.count.is_some_and(|count| index >= count);
        let last_not_last = meta.last
            && (p.count.is_some_and(|count| count != index + 1)
                || p.have.last().is_some_and(|&top| top > index));
        if beyond_last || last_not_last {
            return Verdict::Reject {
                why: format!(
                    "chunk {index}{} of a stream whose last chunk is {:?}",
                    if meta.last { ", marked last," } else { "" },
                    p.count.map(|c| c - 1)
                ),
            };
        }
        if !p.have.insert(index) {
            return Verdict::Drop {
                why: DropReason::Duplicate,
            };
        }
        if meta.last {
            p.count = Some(index + 1);
        }
        match &mut self.open {
            Some(open) if open.key == key && open.next == meta.index => {
                open.next += 1;
                Verdict::Pipe {
                    key,
                    index: meta.index,
                }
            }
            _ => Verdict::Spool {
                key,
                index: meta.index,
            },
        }
    }

    /// The manifest of a stream, once it is in.
    pub fn manifest_of(&self, key: &StreamKey) -> Option<&BlockManifest> {
        self.pending
            .get(key)
            .and_then(|p| p.manifest.as_ref().map(|(m, _)| m))
    }

    /// The stream to open next, when none is open: one of the height right
    /// after the held one, incremental against it or a full stream (with
    /// nothing held, the first full stream), whose manifest is in. A
    /// complete one is preferred.
    pub fn next_to_open(&self) -> Option<ReadyBlock> {
        if self.open.is_some() {
            return None;
        }
        let fits = |key: &StreamKey, p: &Pending| match (self.held, p.parent()) {
            (_, None) => false,
            (Some(h), Some(parent)) => {
                key.height == h + 1 && (parent.is_none() || parent == Some(h))
            }
            (None, Some(parent)) => parent.is_none() && key.height >= self.floor,
        };
        let candidates = || self.pending.iter().filter(|(k, p)| fits(k, p));
        // A complete stream, else the attempt begun last (an earlier one
        // is a producer's that died mid-stream).
        let (key, p) = candidates()
            .find(|(_, p)| p.complete())
            .or_else(|| candidates().max_by_key(|(_, p)| p.first_offset))?;
        let (manifest, header) = p.manifest.clone()?;
        Some(ReadyBlock {
            key: *key,
            manifest,
            header,
        })
    }

    /// The caller started receiving `key` (from [`Self::next_to_open`]).
    pub fn opened(&mut self, key: StreamKey) {
        self.open = Some(OpenStream { key, next: 0 });
    }

    /// The stream being received.
    pub fn open_stream(&self) -> Option<StreamKey> {
        self.open.map(|o| o.key)
    }

    /// The open stream's next chunk, when it was spooled: the caller feeds
    /// it to the receive now.
    pub fn take_spooled(&mut self) -> Option<(StreamKey, u32)> {
        let open = self.open.as_mut()?;
        let p = self.pending.get(&open.key)?;
        let index = open.next;
        if p.count.is_none_or(|count| index < count) && p.have.contains(&index) {
            open.next += 1;
            Some((open.key, index))
        } else {
            None
        }
    }

    /// The open stream, once every chunk of it went in.
    pub fn open_complete(&self) -> Option<ReadyBlock> {
        let open = self.open?;
        let p = self.pending.get(&open.key)?;
        let (manifest, header) = p.manifest.clone()?;
        (Some(open.next) == p.count).then_some(ReadyBlock {
            key: open.key,
            manifest,
            header,
        })
    }

    /// Open streams given up since the last call: the caller stops their
    /// receives and drops what they spooled.
    pub fn take_aborted(&mut self) -> Vec<StreamKey> {
        std::mem::take(&mut self.aborted)
    }

    /// The caller applied `height` (it is now in the site's chain). Returns
    /// the streams whose spooled chunks can be deleted.
    pub fn applied(&mut self, height: u64) -> Vec<StreamKey> {
        self.held = Some(self.held.map_or(height, |h| h.max(height)));
        if self.open.is_some_and(|o| self.is_held(o.key.height)) {
            self.open = None;
        }
        self.forget_held()
    }

    /// The caller found the stream under `key` bad (a chunk that does not
    /// authenticate, receive failed, the received block does not verify):
    /// forget it, so a republished copy can take its place.
    pub fn discard(&mut self, key: &StreamKey) {
        self.pending.remove(key);
        if self.open.is_some_and(|o| o.key == *key) {
            self.open = None;
        }
    }

    fn forget_held(&mut self) -> Vec<StreamKey> {
        let held: Vec<StreamKey> = self
            .pending
            .keys()
            .filter(|k| self.is_held(k.height))
            .copied()
            .collect();
        for k in &held {
            self.pending.remove(k);
        }
        held
    }

    /// The offset the consumer may commit: nothing before it is still needed.
    pub fn commit_offset(&self) -> i64 {
        self.pending
            .values()
            .map(|p| p.first_offset)
            .min()
            .unwrap_or(self.next_offset)
    }

    /// A height the chain cannot go on without: complete blocks are waiting
    /// beyond it. `None` when nothing waits or the next block is merely
    /// still arriving.
    pub fn gap(&self) -> Option<u64> {
        let want = self.held.map_or(self.floor, |h| h + 1);
        let waiting_beyond = self
            .pending
            .iter()
            .any(|(k, p)| k.height > want && p.complete());
        let next_present = self.pending.keys().any(|k| k.height == want);
        (waiting_beyond && !next_present).then_some(want)
    }

    /// The oldest offset a stream still being assembled needs.
    pub fn low_water(&self) -> Option<i64> {
        self.pending.values().map(|p| p.first_offset).min()
    }

    /// Streams begun above the held height and not complete: each
    /// height with the chunks that arrived of how many.
    pub fn incomplete(&self) -> Vec<Incomplete> {
        self.pending
            .iter()
            .filter(|(key, p)| !self.is_held(key.height) && !p.complete())
            .map(|(key, p)| Incomplete {
                height: key.height,
                chunks: p.have.len() as u32,
                of: p.count,
                manifest: p.manifest.is_some(),
            })
            .collect()
    }

    /// Streams still being assembled, for progress and idle checks.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fschain_schema::wire::{Chunk, SigningKey, StreamAttempt, StreamCutter, StreamInfo};
    use fschain_schema::{HeaderDraft, Timestamp};
    use proptest::prelude::*;

    fn block(
        height: u64,
        parent: Option<u64>,
        chunks: u32,
        salt: u8,
    ) -> (BlockManifest, Vec<Chunk>) {
        let header = HeaderDraft {
            height,
            ..HeaderDraft::genesis("host1".parse().unwrap(), Timestamp::from_micros(0))
        }
        .seal()
        .unwrap();
        let whole: Vec<u8> = (0..chunks)
            .flat_map(|i| [salt, i as u8, height as u8])
            .collect();
        let mut attempt = [salt; 16];
        attempt[0] = height as u8;
        let stream = StreamInfo::zstd(StreamAttempt::from_bytes(attempt), 3);
        let key = SigningKey::from_seed([1; 32]);
        let m = BlockManifest::sign(&header, parent, stream, &key).unwrap();
        let cut = StreamCutter::cut(&whole, 3);
        let chunks = cut
            .into_iter()
            .map(|c| Chunk::sign(&m, c, &key).unwrap())
            .collect();
        (m, chunks)
    }

    #[derive(Clone, Debug)]
    enum Msg {
        Manifest(BlockManifest),
        Chunk(Chunk),
    }

    /// A site in miniature: what it spooled, what each receive was fed.
    #[derive(Default)]
    struct Harness {
        spooled: BTreeMap<StreamKey, Vec<u32>>,
        fed: BTreeMap<StreamKey, Vec<u32>>,
        applied: Vec<u64>,
        /// How many chunks each stream of the messages has.
        chunks: BTreeMap<StreamKey, u32>,
    }

    impl Harness {
        fn feed(&mut self, a: &ChunkAssembler, key: StreamKey, index: u32) {
            assert_eq!(a.open_stream(), Some(key), "fed a stream that is not open");
            let fed = self.fed.entry(key).or_default();
            assert_eq!(fed.len() as u32, index, "fed out of order");
            fed.push(index);
        }

        /// Opens, feeds from the spool and applies what the assembler says.
        fn drive(&mut self, a: &mut ChunkAssembler) {
            loop {
                for key in a.take_aborted() {
                    self.fed.remove(&key);
                }
                if a.open_stream().is_none() {
                    let Some(ready) = a.next_to_open() else {
                        return;
                    };
                    a.opened(ready.key);
                    self.fed.insert(ready.key, Vec::new());
                }
                while let Some((key, index)) = a.take_spooled() {
                    assert!(
                        self.spooled.get(&key).is_some_and(|l| l.contains(&index)),
                        "handed out a chunk never spooled"
                    );
                    self.feed(a, key, index);
                }
                let Some(ready) = a.open_complete() else {
                    return;
                };
                let fed = self.fed.remove(&ready.key).unwrap_or_default();
                assert_eq!(
                    fed,
                    (0..self.chunks[&ready.key]).collect::<Vec<_>>(),
                    "applied a stream not fed whole and in order"
                );
                self.applied.push(ready.key.height);
                a.applied(ready.key.height);
            }
        }
    }

    /// Feeds `msgs` in order, opening, feeding and applying blocks as the
    /// assembler says, and returns the heights applied.
    fn run(held: Option<u64>, msgs: &[Msg]) -> (Vec<u64>, ChunkAssembler) {
        let mut a = ChunkAssembler::new(held);
        let mut h = Harness::default();
        for msg in msgs {
            if let Msg::Chunk(c) = msg {
                let key = StreamKey {
                    height: c.meta.height,
                    attempt: c.meta.attempt,
                };
                let count = h.chunks.entry(key).or_default();
                *count = (*count).max(c.meta.index + 1);
            }
        }
        for (offset, msg) in msgs.iter().enumerate() {
            let verdict = match msg {
                Msg::Manifest(m) => {
                    let header = m.block_header().unwrap();
                    a.manifest(m.clone(), header, offset as i64)
                }
                Msg::Chunk(c) => a.chunk(&c.meta, offset as i64),
            };
            match verdict {
                Verdict::Spool { key, index } => {
                    let list = h.spooled.entry(key).or_default();
                    assert!(!list.contains(&index), "chunk spooled twice");
                    list.push(index);
                }
                Verdict::Pipe { key, index } => h.feed(&a, key, index),
                _ => {}
            }
            h.drive(&mut a);
        }
        (h.applied, a)
    }

    fn messages(blocks: &[(BlockManifest, Vec<Chunk>)]) -> Vec<Msg> {
        let mut out = Vec::new();
        for (m, chunks) in blocks {
            out.push(Msg::Manifest(m.clone()));
            out.extend(chunks.iter().cloned().map(Msg::Chunk));
        }
        out
    }

    fn chain_of(n: u64) -> Vec<(BlockManifest, Vec<Chunk>)> {
        (0..n)
            .map(|h| block(h, h.checked_sub(1), 1 + (h % 4) as u32, 0))
            .collect()
    }

    #[test]
    fn in_order_blocks_apply_one_after_another() {
        let (applied, a) = run(None, &messages(&chain_of(5)));
        assert_eq!(applied, vec![0, 1, 2, 3, 4]);
        assert_eq!(a.pending_len(), 0);
        assert_eq!(a.commit_offset(), messages(&chain_of(5)).len() as i64);
    }

    #[test]
    fn a_stream_cut_short_is_reported_with_its_chunks() {
        let mut msgs = messages(&chain_of(3));
        // Keep block 0, and block 1's manifest and first chunk only.
        let firsts: Vec<usize> = msgs
            .iter()
            .enumerate()
            .filter(|(_, m)| matches!(m, Msg::Chunk(c) if c.meta.height == 1 && c.meta.index > 0))
            .map(|(i, _)| i)
            .collect();
        let cut = firsts[0];
        msgs.truncate(cut);
        msgs.retain(|m| !matches!(m, Msg::Manifest(m) if m.block_header().unwrap().height == 2));
        let (applied, a) = run(None, &msgs);
        assert_eq!(applied, vec![0]);
        assert_eq!(
            a.incomplete(),
            vec![Incomplete {
                height: 1,
                chunks: 1,
                of: None,
                manifest: true
            }]
        );
        let (_, whole) = run(None, &messages(&chain_of(3)));
        assert!(whole.incomplete().is_empty());
    }

    #[test]
    fn nothing_is_handed_out_while_a_chunk_is_missing() {
        let mut msgs = messages(&chain_of(3));
        // Drop the last chunk of block 1 (block 1 has two chunks).
        let pos = msgs
            .iter()
            .position(|m| matches!(m, Msg::Chunk(c) if c.meta.height == 1 && c.meta.index == 1))
            .unwrap();
        let missing = msgs.remove(pos);
        let (applied, a) = run(None, &msgs);
        assert_eq!(applied, vec![0]);
        assert_eq!(a.gap(), None, "block 1 is still arriving, not a gap");
        // Nothing of block 1 or 2 may be committed past.
        assert!(a.commit_offset() <= pos as i64 - 2);
        msgs.push(missing);
        let (applied, _) = run(None, &msgs);
        assert_eq!(applied, vec![0, 1, 2]);
    }

    #[test]
    fn a_missing_block_is_reported_as_a_gap() {
        let blocks = chain_of(4);
        let msgs: Vec<Msg> = messages(&blocks)
            .into_iter()
            .filter(|m| match m {
                Msg::Manifest(m) => m.height != 2,
                Msg::Chunk(c) => c.meta.height != 2,
            })
            .collect();
        let (applied, a) = run(None, &msgs);
        assert_eq!(applied, vec![0, 1]);
        assert_eq!(a.gap(), Some(2));
    }

    #[test]
    fn a_republished_stream_replaces_a_bad_one_and_held_blocks_are_dropped() {
        let mut a = ChunkAssembler::new(Some(4));
        let (m, chunks) = block(4, Some(3), 2, 0);
        let h = m.block_header().unwrap();
        assert_eq!(
            a.manifest(m, h, 0),
            Verdict::Drop {
                why: DropReason::AlreadyHeld
            }
        );
        assert_eq!(
            a.chunk(&chunks[0].meta, 1),
            Verdict::Drop {
                why: DropReason::AlreadyHeld
            }
        );
        let (bad, bad_chunks) = block(5, Some(4), 1, 1);
        let (good, good_chunks) = block(5, Some(4), 1, 2);
        let hb = bad.block_header().unwrap();
        a.manifest(bad, hb, 2);
        let ready = a.next_to_open().unwrap();
        a.opened(ready.key);
        assert!(matches!(
            a.chunk(&bad_chunks[0].meta, 3),
            Verdict::Pipe { index: 0, .. }
        ));
        // The received block did not verify.
        assert_eq!(a.open_complete().unwrap().key, ready.key);
        a.discard(&ready.key);
        assert!(a.next_to_open().is_none());
        assert!(a.open_stream().is_none());
        let hg = good.block_header().unwrap();
        a.manifest(good.clone(), hg, 4);
        let ready = a.next_to_open().unwrap();
        assert_eq!(ready.key.attempt, good.stream.attempt);
        a.opened(ready.key);
        assert!(matches!(
            a.chunk(&good_chunks[0].meta, 5),
            Verdict::Pipe { index: 0, .. }
        ));
        assert!(a.open_complete().is_some());
        a.applied(5);
        assert_eq!(a.commit_offset(), 6);
        assert!(a.open_stream().is_none());
    }

    #[test]
    fn a_new_stream_of_the_height_being_received_replaces_it() {
        // A producer died after chunk 0 of 3 and made the block again.
        let (first, first_chunks) = block(0, None, 3, 1);
        let (again, again_chunks) = block(0, None, 2, 2);
        let mut msgs = vec![
            Msg::Manifest(first),
            Msg::Chunk(first_chunks[0].clone()),
            Msg::Manifest(again),
        ];
        msgs.extend(again_chunks.into_iter().map(Msg::Chunk));
        let (applied, mut a) = run(None, &msgs);
        assert_eq!(applied, vec![0]);
        assert!(a.take_aborted().is_empty(), "the harness was told");
        assert_eq!(a.pending_len(), 0);
    }

    #[test]
    fn late_chunks_of_a_replaced_attempt_are_never_fed() {
        // Chunks of the first attempt still arrive after the second
        // attempt's manifest (two producers' messages interleaved): none
        // of them is fed, and the block is applied once, from the second.
        let (first, first_chunks) = block(0, None, 3, 1);
        let (again, again_chunks) = block(0, None, 2, 2);
        let msgs = [
            Msg::Manifest(first),
            Msg::Chunk(first_chunks[0].clone()),
            Msg::Manifest(again.clone()),
            Msg::Chunk(first_chunks[1].clone()),
            Msg::Chunk(again_chunks[0].clone()),
            Msg::Chunk(first_chunks[2].clone()),
            Msg::Chunk(again_chunks[1].clone()),
        ];
        let mut a = ChunkAssembler::new(None);
        let mut fed = Vec::new();
        for (offset, msg) in msgs.iter().enumerate() {
            match msg {
                Msg::Manifest(m) => {
                    a.manifest(m.clone(), m.block_header().unwrap(), offset as i64);
                }
                Msg::Chunk(c) => {
                    if let Verdict::Pipe { key, index } = a.chunk(&c.meta, offset as i64) {
                        fed.push((key.attempt, index));
                    }
                }
            }
            a.take_aborted();
            if a.open_stream().is_none() {
                if let Some(ready) = a.next_to_open() {
                    a.opened(ready.key);
                }
            }
            while let Some((key, index)) = a.take_spooled() {
                fed.push((key.attempt, index));
            }
        }
        let ready = a.open_complete().expect("the second attempt is complete");
        assert_eq!(ready.key.attempt, again.stream.attempt);
        let second = again.stream.attempt;
        assert_eq!(fed.iter().filter(|(at, _)| *at == second).count(), 2);
        assert!(
            fed.iter().all(|(at, i)| *at == second || *i == 0),
            "fed a chunk of the replaced attempt after it was replaced: {fed:?}"
        );
    }

    #[test]
    fn chunks_of_the_open_stream_are_fed_as_they_come_and_early_ones_later() {
        let (m, chunks) = block(0, None, 4, 0);
        let mut a = ChunkAssembler::new(None);
        let h = m.block_header().unwrap();
        // Chunk 2 comes before the manifest: spooled.
        assert!(matches!(
            a.chunk(&chunks[2].meta, 0),
            Verdict::Spool { index: 2, .. }
        ));
        a.manifest(m, h, 1);
        let ready = a.next_to_open().unwrap();
        a.opened(ready.key);
        assert_eq!(a.take_spooled(), None);
        assert!(matches!(
            a.chunk(&chunks[0].meta, 2),
            Verdict::Pipe { index: 0, .. }
        ));
        assert_eq!(a.take_spooled(), None);
        assert!(matches!(
            a.chunk(&chunks[1].meta, 3),
            Verdict::Pipe { index: 1, .. }
        ));
        assert_eq!(a.take_spooled(), Some((ready.key, 2)));
        assert!(a.open_complete().is_none());
        assert!(matches!(
            a.chunk(&chunks[1].meta, 4),
            Verdict::Drop {
                why: DropReason::Duplicate
            }
        ));
        assert!(matches!(
            a.chunk(&chunks[3].meta, 5),
            Verdict::Pipe { index: 3, .. }
        ));
        assert_eq!(a.open_complete().unwrap().key, ready.key);
        // Nothing may be committed past the stream until it is applied.
        assert_eq!(a.commit_offset(), 0);
        a.applied(0);
        assert_eq!(a.commit_offset(), 6);
    }

    #[test]
    fn chunks_that_contradict_their_manifest_are_rejected() {
        let mut a = ChunkAssembler::new(None);
        let (m, chunks) = block(0, None, 2, 0);
        let h = m.block_header().unwrap();
        a.manifest(m, h, 0);
        assert!(matches!(
            a.chunk(&chunks[1].meta, 1),
            Verdict::Spool { index: 1, .. }
        ));
        // A chunk after the last, and a second last at another index.
        let mut after = chunks[1].meta.clone();
        after.index = 2;
        after.last = false;
        assert!(matches!(a.chunk(&after, 2), Verdict::Reject { .. }));
        let mut early_last = chunks[0].meta.clone();
        early_last.last = true;
        assert!(matches!(a.chunk(&early_last, 3), Verdict::Reject { .. }));
        // A last chunk below one that arrived.
        let mut b = ChunkAssembler::new(None);
        let (m, chunks) = block(0, None, 3, 0);
        let h = m.block_header().unwrap();
        b.manifest(m, h, 0);
        b.chunk(&chunks[2].meta, 1);
        let mut low_last = chunks[1].meta.clone();
        low_last.last = true;
        assert!(matches!(b.chunk(&low_last, 2), Verdict::Reject { .. }));
    }

    #[test]
    fn an_empty_site_starts_at_the_first_full_stream() {
        // A checkpoint at 3 (full), then incrementals; blocks 1 and 2 are
        // incremental and cannot start a site.
        let blocks = vec![
            block(1, Some(0), 1, 0),
            block(2, Some(1), 1, 0),
            block(3, None, 2, 0),
            block(4, Some(3), 1, 0),
        ];
        let (applied, _) = run(None, &messages(&blocks));
        assert_eq!(applied, vec![3, 4]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Shuffled, duplicated and missing frames: every block whose frames
        /// all arrived at least once is applied, in height order, and
        /// nothing else is; no chunk is spooled twice.
        #[test]
        fn shuffled_duplicated_and_missing(
            n in 1u64..6,
            seed in any::<u64>(),
            dup in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
            missing in proptest::option::of(any::<prop::sample::Index>()),
        ) {
            let blocks = chain_of(n);
            let all = messages(&blocks);
            let mut msgs = all.clone();
            for d in &dup {
                msgs.push(d.get(&all).clone());
            }
            let mut removed_height = None;
            if let Some(m) = missing {
                let i = m.index(all.len());
                removed_height = Some(match &all[i] {
                    Msg::Manifest(m) => m.height,
                    Msg::Chunk(c) => c.meta.height,
                });
                let target = all[i].clone();
                msgs.retain(|x| !same(x, &target));
            }
            // Deterministic shuffle from the seed.
            let mut state = seed | 1;
            for i in (1..msgs.len()).rev() {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                msgs.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let (applied, a) = run(None, &msgs);
            let expected: Vec<u64> = match removed_height {
                Some(r) => (0..r).collect(),
                None => (0..n).collect(),
            };
            prop_assert_eq!(applied, expected);
            if removed_height.is_none() {
                prop_assert_eq!(a.pending_len(), 0);
            }
        }
    }

    fn same(a: &Msg, b: &Msg) -> bool {
        match (a, b) {
            (Msg::Manifest(x), Msg::Manifest(y)) => x == y,
            (Msg::Chunk(x), Msg::Chunk(y)) => x == y,
            _ => false,
        }
    }
}
