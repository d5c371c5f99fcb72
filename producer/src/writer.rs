//! The chain writer: applies operations to the layer and seals blocks.
//!
//! # Commit protocol
//!
//! Operations of the open block live in memory only. Sealing a block:
//!
//! 1. creates `meta/dirty` (the layer is about to change),
//! 2. writes the changed state files and appends the events to `events.log`,
//! 3. appends the header to `headers.log`,
//! 4. snapshots the layer read-only as `blocks/<height>` — the commit point:
//!    the ioctl is atomic and commits a btrfs transaction,
//! 5. removes `meta/dirty`.
//!
//! Recovery rule (run by [`ChainWriter::open`]): the newest snapshot is the
//! truth. If `meta/dirty` exists, or the layer is missing or does not end
//! with the newest snapshot's header, the layer is replaced by a writable
//! snapshot of the newest block. A crash therefore loses only operations of
//! a block that had not been sealed, which were never acknowledged.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use fschain_schema::merkle::{leaf_hash, MerkleLevels};
use fschain_schema::{
    jcs, Action, BlockHeader, ChainName, Digest, ElementId, EventDraft, EventHash, EventsRoot,
    HeaderDraft, Operation, State, StateHash, StateTree, Timestamp,
};
use fschain_store::layout::{lock, ChainMeta, RootLayout, EVENTS_LOG, HEADERS_LOG};
use fschain_store::state_path::state_path;
use fschain_store::{btrfs, ChainDir, IoContext, StoreError};
use tracing::{debug, info, warn};

use crate::state_index::{IndexedTip, StateIndex};
use crate::ProducerError;

/// Where the writer gets the time from (tests pass a fixed clock).
pub trait Clock: Send {
    fn now(&mut self) -> Timestamp;
}

/// The system's real-time clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&mut self) -> Timestamp {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        Timestamp::from_micros(i64::try_from(micros).unwrap_or(i64::MAX))
    }
}

/// What sealing a block produced.
#[derive(Clone, Debug)]
pub struct SealedBlock {
    pub header: BlockHeader,
}

// States larger than LARGE_STATE_BYTES (canonical bytes) are not kept
// parsed between operations; an element's next operation parses them again.
use fschain_schema::verify::LARGE_STATE_BYTES;

/// Bytes of the open block's buffers kept for the next block once sealed.
const KEPT_CAPACITY: usize = 1 << 20;

/// What the open block keeps of an event once its line is written.
#[derive(Clone, Copy, Debug)]
struct PendingEvent {
    hash: EventHash,
    chain_seq: u64,
}

/// The one writer of a root (it holds `meta/lock`).
pub struct ChainWriter {
    layout: RootLayout,
    meta: ChainMeta,
    _lock: File,
    clock: Box<dyn Clock>,
    headers: Vec<BlockHeader>,
    index: StateIndex,
    tree: StateTree,
    /// States read for a patch (`None`: the element has no state), kept
    /// current by later operations, but for those over
    /// [`LARGE_STATE_BYTES`]: a large change is held once, as the
    /// canonical bytes in `pending_states`, not a second time as a parsed
    /// state. A set or delete reads nothing, so keeps nothing here.
    states: HashMap<ElementId, Option<State>>,
    /// The open block: each event's hash and sequence number, and the
    /// events' canonical lines (the events themselves are not kept: their
    /// operations carry the states once more).
    pending: Vec<PendingEvent>,
    pending_lines: Vec<u8>,
    /// Final state of each element the open block changed, canonical bytes.
    pending_states: BTreeMap<ElementId, Option<(StateHash, Vec<u8>)>>,
    /// Element tips as of the open block (sealed tips are in `index`).
    pending_tips: HashMap<ElementId, IndexedTip>,
    next_seq: u64,
    last_time: Timestamp,
    poisoned: bool,
}

impl std::fmt::Debug for ChainWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainWriter")
            .field("root", &self.layout.root())
            .field("chain", &self.meta.chain)
            .field("head", &self.headers.last().map(|h| h.height))
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl ChainWriter {
    /// Opens the root for writing, recovering it first if a crash left it
    /// part-way through a seal.
    pub fn open(layout: RootLayout) -> Result<Self, ProducerError> {
        Self::open_with_clock(layout, Box::new(SystemClock))
    }

    pub fn open_with_clock(
        layout: RootLayout,
        clock: Box<dyn Clock>,
    ) -> Result<Self, ProducerError> {
        let meta = layout.read_marker()?;
        if layout.replica().exists() {
            return Err(ProducerError::Replica {
                root: layout.root().to_owned(),
            });
        }
        let lock = lock(&layout)?;
        let head = recover(&layout)?;
        let head_dir = ChainDir::new(layout.snapshot(head));
        let headers = head_dir.headers()?;
        let head_header = headers.last().cloned().ok_or_else(|| StoreError::Corrupt {
            path: layout.snapshot(head),
            why: "no headers".into(),
        })?;
        let index = match StateIndex::load(&layout.state_index(), &head_header.hash) {
            Some(index) => index,
            None => {
                info!(height = head, "rebuilding the state index from events.log");
                StateIndex::from_events(&head_dir)?
            }
        };
        let tree = StateTree::from_entries(index.live_states());
        if tree.root() != head_header.state_root {
            return Err(StoreError::Corrupt {
                path: layout.root().to_owned(),
                why: format!(
                    "the states of block {head} do not match its state root; run `fschain verify --root {}`",
                    layout.root().display()
                ),
            }
            .into());
        }
        let next_seq = index.next_seq();
        Ok(ChainWriter {
            layout,
            meta,
            _lock: lock,
            clock,
            last_time: head_header.time,
            headers,
            index,
            tree,
            states: HashMap::new(),
            pending: Vec::new(),
            pending_lines: Vec::new(),
            pending_states: BTreeMap::new(),
            pending_tips: HashMap::new(),
            next_seq,
            poisoned: false,
        })
    }

    pub fn layout(&self) -> &RootLayout {
        &self.layout
    }

    pub fn chain(&self) -> &ChainName {
        &self.meta.chain
    }

    pub fn head(&self) -> &BlockHeader {
        &self.headers[self.headers.len() - 1]
    }

    pub fn headers(&self) -> &[BlockHeader] {
        &self.headers
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The element's current state, the open block included.
    pub fn current_state(&mut self, element: &ElementId) -> Result<Option<State>, ProducerError> {
        Ok(self.load_state(element)?.clone())
    }

    /// Whether the element has a state, the open block included.
    fn has_state(&self, element: &ElementId) -> bool {
        match self.pending_states.get(element) {
            Some(pending) => pending.is_some(),
            None => self.index.tip(element).is_some_and(|t| t.state.is_some()),
        }
    }

    /// The element's current state, read from the layer on first use.
    fn load_state(&mut self, element: &ElementId) -> Result<&Option<State>, ProducerError> {
        if self.states.contains_key(element) {
            return Ok(&self.states[element]);
        }
        if let Some(pending) = self.pending_states.get(element) {
            // Changed by the open block and too large to keep parsed.
            let state = match pending {
                Some((_, bytes)) => Some(serde_json::from_slice::<State>(bytes).map_err(|e| {
                    fschain_schema::SchemaError::Json {
                        message: e.to_string(),
                    }
                })?),
                None => None,
            };
            return Ok(self.states.entry(element.clone()).or_insert(state));
        }
        // The layer's file must be the state the chain recorded: never build
        // on a state file changed outside fschain.
        let layer = ChainDir::new(self.layout.layer());
        let bytes = layer.state_bytes(element)?;
        let recorded = self.index.tip(element).and_then(|t| t.state);
        let actual = bytes
            .as_deref()
            .map(fschain_schema::verify::state_file_hash);
        if actual != recorded {
            return Err(StoreError::Corrupt {
                path: self.layout.layer().join(state_path(element)),
                why: format!(
                    "the state file of {element} was changed outside fschain (its hash is not the one block {} recorded); see `fschain verify`",
                    self.head().height
                ),
            }
            .into());
        }
        let state = layer.state(element)?;
        Ok(self.states.entry(element.clone()).or_insert(state))
    }

    /// Applies one operation to the open block. Nothing changes if it fails.
    pub fn apply(&mut self, op: Operation) -> Result<EventHash, ProducerError> {
        if self.poisoned {
            return Err(ProducerError::Poisoned);
        }
        let next = match op.action {
            // Neither needs the state before it, only whether there is one:
            // a watch setting every file of a tree keeps none of them here.
            Action::Set | Action::Delete => {
                op.apply_owned(self.has_state(&op.element).then(State::new))?
            }
            Action::Patch => op.apply_to(self.load_state(&op.element)?.as_ref())?,
        };
        let encoded = match &next {
            Some(state) => {
                let bytes = jcs::canonical_object(state)?;
                Some((StateHash(Digest::of(&bytes)), bytes))
            }
            None => None,
        };
        let tip = self
            .pending_tips
            .get(&op.element)
            .or_else(|| self.index.tip(&op.element))
            .cloned();
        let now = self.clock.now().max(self.last_time);
        let element = op.element.clone();
        let draft = EventDraft {
            chain: self.meta.chain.clone(),
            element_seq: tip.as_ref().map_or(1, |t| t.seq + 1),
            prev: tip.as_ref().map(|t| t.last),
            chain_seq: self.next_seq,
            op,
            state_hash: encoded.as_ref().map(|(h, _)| *h),
            time: now,
        };
        let (event, line) = draft.seal_with_line()?;
        // Everything that can fail has; now record it.
        self.last_time = now;
        self.next_seq += 1;
        self.pending_lines.extend_from_slice(&line);
        self.pending_lines.push(b'\n');
        self.pending_tips.insert(
            element.clone(),
            IndexedTip {
                seq: event.element_seq,
                last: event.hash,
                state: event.state_hash,
            },
        );
        let large = encoded
            .as_ref()
            .is_some_and(|(_, b)| b.len() > LARGE_STATE_BYTES);
        self.pending_states.insert(element.clone(), encoded);
        // Only states read for a patch are kept, and kept current.
        if large {
            self.states.remove(&element);
        } else if let Some(cached) = self.states.get_mut(&element) {
            *cached = next;
        }
        self.pending.push(PendingEvent {
            hash: event.hash,
            chain_seq: event.chain_seq,
        });
        Ok(event.hash)
    }

    /// Drops the open block's operations (nothing of them was written).
    pub fn discard_pending(&mut self) {
        for element in self.pending_states.keys() {
            self.states.remove(element);
        }
        self.pending.clear();
        self.pending_lines.clear();
        self.pending_states.clear();
        // A large block's buffers are not kept for the small ones after it.
        self.pending
            .shrink_to(KEPT_CAPACITY / std::mem::size_of::<PendingEvent>());
        self.pending_lines.shrink_to(KEPT_CAPACITY);
        self.pending_tips.shrink_to(KEPT_CAPACITY / 64);
        self.pending_tips.clear();
        self.next_seq = self.index.next_seq();
    }

    /// Seals the open block. Returns `None` when it is empty.
    pub fn seal(&mut self) -> Result<Option<SealedBlock>, ProducerError> {
        if self.poisoned {
            return Err(ProducerError::Poisoned);
        }
        if self.pending.is_empty() {
            return Ok(None);
        }
        match self.seal_inner() {
            Ok(block) => Ok(Some(block)),
            Err(e) => {
                // The layer may hold part of the block: only reopening (which
                // recovers) may touch this root again.
                self.poisoned = true;
                Err(e)
            }
        }
    }

    fn seal_inner(&mut self) -> Result<SealedBlock, ProducerError> {
        let layer = self.layout.layer();
        let dirty = self.layout.dirty_marker();
        let started = std::time::Instant::now();
        File::create(&dirty).at(&dirty)?;

        let writes: Vec<(std::path::PathBuf, Option<&[u8]>)> = self
            .pending_states
            .iter()
            .map(|(element, state)| {
                (
                    layer.join(state_path(element)),
                    state.as_ref().map(|(_, b)| b.as_slice()),
                )
            })
            .collect();
        write_state_files(&writes)?;
        for (element, state) in &self.pending_states {
            self.tree
                .stage(element.clone(), state.as_ref().map(|(h, _)| *h));
        }
        append(&layer.join(EVENTS_LOG), &self.pending_lines)?;
        let written = started.elapsed();

        let state_root = self.tree.commit();
        let event_leaves = self
            .pending
            .iter()
            .map(|e| leaf_hash(e.hash.digest().as_bytes()))
            .collect();
        let events_root = EventsRoot(MerkleLevels::from_leaves(event_leaves).root());
        let prev = self.head().clone();
        let header = HeaderDraft {
            chain: self.meta.chain.clone(),
            height: prev.height + 1,
            prev: Some(prev.hash),
            time: self.clock.now().max(self.last_time).max(prev.time),
            state_root,
            events_root,
            event_count: self.pending.len() as u64,
            first_seq: self.pending.first().map(|e| e.chain_seq),
            last_seq: self.pending.last().map(|e| e.chain_seq),
        }
        .seal()?;
        let mut line = header.to_canonical()?;
        line.push(b'\n');
        append(&layer.join(HEADERS_LOG), &line)?;

        let hashed = started.elapsed();
        btrfs::snapshot(&layer, &self.layout.snapshot(header.height), true)?;
        std::fs::remove_file(&dirty).at(&dirty)?;

        debug!(
            height = header.height,
            events = header.event_count,
            write_us = written.as_micros() as u64,
            roots_us = (hashed - written).as_micros() as u64,
            snapshot_us = (started.elapsed() - hashed).as_micros() as u64,
            "sealed"
        );
        for (element, tip) in self.pending_tips.drain() {
            self.index.set_tip(element, tip);
        }
        self.index.set_head(header.hash, self.next_seq);
        self.last_time = header.time;
        self.pending.clear();
        self.pending_lines.clear();
        self.pending_states.clear();
        // A large block's buffers are not kept for the small ones after it.
        self.pending
            .shrink_to(KEPT_CAPACITY / std::mem::size_of::<PendingEvent>());
        self.pending_lines.shrink_to(KEPT_CAPACITY);
        self.pending_tips.shrink_to(KEPT_CAPACITY / 64);
        self.headers.push(header.clone());
        Ok(SealedBlock { header })
    }

    /// Writes the state index so the next open need not rebuild it. Called
    /// when a command is done; skipping it costs only a rebuild.
    pub fn close(mut self) -> Result<(), ProducerError> {
        if !self.pending.is_empty() {
            warn!(
                events = self.pending.len(),
                "closing with an unsealed block; its operations are dropped"
            );
            self.discard_pending();
        }
        if !self.poisoned {
            self.index.save(&self.layout.state_index())?;
        }
        Ok(())
    }
}

/// Writes (or, for `None`, removes) state files, from two threads: most of
/// the cost is the kernel's, and btrfs takes per-leaf locks.
fn write_state_files(writes: &[(std::path::PathBuf, Option<&[u8]>)]) -> Result<(), StoreError> {
    let write_one =
        |(path, bytes): &(std::path::PathBuf, Option<&[u8]>)| -> Result<(), StoreError> {
            match bytes {
                Some(bytes) => write_state_file(path, bytes),
                None => match std::fs::remove_file(path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::Io {
                        path: path.clone(),
                        error: e,
                    }),
                    _ => Ok(()),
                },
            }
        };
    if writes.len() < 64 {
        return writes.iter().try_for_each(write_one);
    }
    let (a, b) = writes.split_at(writes.len() / 2);
    std::thread::scope(|scope| {
        let other = scope.spawn(|| a.iter().try_for_each(write_one));
        let mine = b.iter().try_for_each(write_one);
        let theirs = other.join().unwrap_or_else(|_| {
            Err(StoreError::Corrupt {
                path: std::path::PathBuf::new(),
                why: "state writer thread panicked".into(),
            })
        });
        mine.and(theirs)
    })
}

/// Writes one state file as a seal does: in place, or created with its
/// directories (the bench's bare floor writes its files through this too).
pub fn write_state_file(path: &std::path::Path, bytes: &[u8]) -> Result<(), StoreError> {
    match overwrite(path, bytes) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).at(parent)?;
            }
            overwrite(path, bytes).at(path)
        }
        other => other.at(path),
    }
}

/// Replaces a file's content in place. Not `O_TRUNC`: btrfs writes back a
/// file truncated to zero as soon as it is closed, a second transaction
/// per file that halves the seal's write rate; the block's snapshot
/// writes everything back at once anyway. The file is shortened only when
/// the new content is shorter.
fn overwrite(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    file.write_all_at(bytes, 0)?;
    if file.metadata()?.len() > bytes.len() as u64 {
        file.set_len(bytes.len() as u64)?;
    }
    Ok(())
}

fn append(path: &std::path::Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut file = OpenOptions::new().append(true).open(path).at(path)?;
    file.write_all(bytes).at(path)
}

/// Applies the recovery rule and returns the head height.
pub(crate) fn recover(layout: &RootLayout) -> Result<u64, StoreError> {
    let heights = layout.snapshot_heights()?;
    let head = *heights.last().ok_or_else(|| StoreError::Corrupt {
        path: layout.blocks_dir(),
        why: "no block snapshots".into(),
    })?;
    let layer = layout.layer();
    let dirty = layout.dirty_marker().exists();
    let reason = if dirty {
        Some("a seal was interrupted")
    } else if !layer.exists() {
        Some("the layer is missing")
    } else if !layer_matches_head(layout, head) {
        // No crash left this: someone changed the layer. Keep the evidence.
        return Err(StoreError::Corrupt {
            path: layer,
            why: format!(
                "the layer was changed outside fschain and no longer ends at block {head}; \
                 see `fschain verify`. To discard the layer's changes, delete it \
                 (btrfs subvolume delete {}) and the next command rebuilds it from block {head}",
                layout.layer().display()
            ),
        });
    } else {
        None
    };
    if let Some(reason) = reason {
        warn!(
            head,
            reason, "recovering: resetting the layer to the newest block"
        );
        if layer.exists() {
            btrfs::delete_subvolume(&layer)?;
        }
        btrfs::snapshot(&layout.snapshot(head), &layer, false)?;
        let marker = layout.dirty_marker();
        if marker.exists() {
            std::fs::remove_file(&marker).at(&marker)?;
        }
    }
    Ok(head)
}

fn layer_matches_head(layout: &RootLayout, head: u64) -> bool {
    let layer = ChainDir::new(layout.layer());
    let snap = ChainDir::new(layout.snapshot(head));
    let same_headers =
        matches!((layer.headers_bytes(), snap.headers_bytes()), (Ok(a), Ok(b)) if a == b);
    let len = |d: &ChainDir| {
        std::fs::metadata(d.path().join(EVENTS_LOG))
            .map(|m| m.len())
            .ok()
    };
    same_headers && len(&layer).is_some() && len(&layer) == len(&snap)
}

/// Runs the recovery rule if a crash left its marks (`meta/dirty`, or no
/// layer) and no other command holds the root. Returns whether it recovered.
/// Read commands call this so that the next command after a crash, whatever
/// it is, leaves the root clean.
pub fn recover_if_interrupted(layout: &RootLayout) -> Result<bool, ProducerError> {
    layout.read_marker()?;
    if layout.replica().exists() {
        // A site's copy: no layer, and only the consumer writes it.
        return Ok(false);
    }
    if !layout.dirty_marker().exists() && layout.layer().exists() {
        return Ok(false);
    }
    let _lock = match lock(layout) {
        Ok(l) => l,
        Err(StoreError::Locked { .. }) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    recover(layout)?;
    Ok(true)
}

impl ChainWriter {
    /// Seals a new block that puts every element back in its state at
    /// block `target`; the history in between stays.
    pub fn rollback(
        &mut self,
        target: u64,
        reason: Option<&str>,
        actor: Option<&str>,
    ) -> Result<Option<SealedBlock>, ProducerError> {
        if !self.pending.is_empty() {
            return Err(ProducerError::Schema(
                fschain_schema::SchemaError::BadOperation {
                    why: "rollback needs an empty open block".into(),
                },
            ));
        }
        let chain = fschain_store::Chain::open(self.layout.root())?;
        let head = self.head().height;
        let target = chain.resolve(&fschain_schema::BlockRef::Height(target))?;
        let short = &chain.headers()[target as usize].hash.to_hex()[..12];
        let why = match reason {
            Some(r) => format!("rollback to block {target} ({short}): {r}"),
            None => format!("rollback to block {target} ({short})"),
        };
        // The states to restore, checked against block `target`'s header
        // (rebuilt from the log when its snapshot is missing or changed).
        let target_dir = chain.states_at(target)?;
        let diff = chain.diff(target, head)?;
        let mut elements: Vec<&String> = diff
            .added
            .iter()
            .chain(&diff.changed)
            .chain(&diff.removed)
            .collect();
        elements.sort();
        for name in elements {
            let element = ElementId::parse(name)?;
            let state = target_dir.state(&element)?;
            let action = if state.is_some() {
                fschain_schema::Action::Set
            } else {
                fschain_schema::Action::Delete
            };
            let op = Operation {
                element,
                action,
                state,
                reason: Some(why.clone()),
                actor: actor.map(str::to_owned),
                signature: None,
            };
            if let Err(e) = self.apply(op) {
                self.discard_pending();
                return Err(e);
            }
        }
        self.seal()
    }
}
