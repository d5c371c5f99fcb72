//! Reading a chain back from its snapshots: the read side every command
//! shares, on a producer's root and on a site's copy alike.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use fschain_schema::verify::state_root_of;
use fschain_schema::{jcs, state_hash, BlockHeader, BlockRef, ElementId, Event, State, StateHash};
use serde::Serialize;

use crate::layout::{ChainMeta, RootLayout};
use crate::state_path::state_path;
use crate::{btrfs, ChainDir, IoContext, StoreError};

/// A chain as its snapshots hold it.
#[derive(Debug)]
pub struct Chain {
    layout: RootLayout,
    meta: ChainMeta,
    headers: Vec<BlockHeader>,
    /// Snapshots already checked against their headers (`None`: it
    /// matches; else why not), so a search that reads many states at one
    /// height checks its snapshot once.
    checked: std::sync::Mutex<BTreeMap<u64, Option<String>>>,
}

/// Where a block's states are read from: its snapshot, when the snapshot's
/// states hash to the header's state root; else rebuilt from the newest
/// retained snapshot before it that matches its own header (or from
/// nothing) plus the events after that one, and checked against the same
/// root.
#[derive(Debug)]
pub enum BlockStates {
    Snapshot(ChainDir),
    Rebuilt {
        /// The snapshot the states start from (`None`: the empty state).
        base: Option<ChainDir>,
        /// Each element the events after `base` touched: its canonical
        /// state bytes at the block, or `None` when it was deleted.
        changed: BTreeMap<ElementId, Option<Vec<u8>>>,
        /// Why the block's own snapshot could not be used.
        why: String,
    },
}

impl BlockStates {
    /// Every live element's state hash: what the block's state root is
    /// the tree of.
    pub fn state_hashes(&self) -> BTreeMap<ElementId, StateHash> {
        let dir = match self {
            BlockStates::Snapshot(dir) => Some(dir),
            BlockStates::Rebuilt { base, .. } => base.as_ref(),
        };
        let mut hashes: BTreeMap<ElementId, StateHash> = dir
            .map(|d| {
                d.state_hashes_from_tree("block")
                    .states
                    .into_iter()
                    .collect()
            })
            .unwrap_or_default();
        if let BlockStates::Rebuilt { changed, .. } = self {
            for (element, bytes) in changed {
                match bytes {
                    Some(b) => {
                        hashes.insert(element.clone(), fschain_schema::verify::state_file_hash(b));
                    }
                    None => {
                        hashes.remove(element);
                    }
                }
            }
        }
        hashes
    }

    /// The raw (canonical) bytes of `element`'s state, or `None`.
    pub fn state_bytes(&self, element: &ElementId) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            BlockStates::Snapshot(dir) => dir.state_bytes(element),
            BlockStates::Rebuilt { base, changed, .. } => match changed.get(element) {
                Some(bytes) => Ok(bytes.clone()),
                None => base.as_ref().map_or(Ok(None), |b| b.state_bytes(element)),
            },
        }
    }

    /// `element`'s state, or `None`.
    pub fn state(&self, element: &ElementId) -> Result<Option<State>, StoreError> {
        match self.state_bytes(element)? {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt {
                        path: state_path(element),
                        why: format!("state of {element} is not JSON: {e}"),
                    })
            }
        }
    }
}

/// Elements that differ between two blocks.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct StateDiff {
    pub from: u64,
    pub to: u64,
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

impl Chain {
    /// Opens the chain at `root`, reading the headers from its newest snapshot.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let layout = RootLayout::new(root);
        let meta = layout.read_marker()?;
        let heights = layout.snapshot_heights()?;
        let Some(&head) = heights.last() else {
            return Err(StoreError::Corrupt {
                path: layout.blocks_dir(),
                why: "no block snapshots".into(),
            });
        };
        let headers = ChainDir::new(layout.snapshot(head)).headers()?;
        if headers.len() as u64 != head + 1
            || headers
                .iter()
                .enumerate()
                .any(|(i, h)| h.height != i as u64)
        {
            return Err(StoreError::Corrupt {
                path: layout.snapshot(head),
                why: format!(
                    "snapshot of block {head} does not hold headers 0..={head}; run fschain verify"
                ),
            });
        }
        Ok(Chain {
            layout,
            meta,
            headers,
            checked: Default::default(),
        })
    }

    pub fn layout(&self) -> &RootLayout {
        &self.layout
    }

    pub fn meta(&self) -> &ChainMeta {
        &self.meta
    }

    pub fn headers(&self) -> &[BlockHeader] {
        &self.headers
    }

    pub fn head(&self) -> &BlockHeader {
        // `open` refuses a chain without headers.
        &self.headers[self.headers.len() - 1]
    }

    pub fn resolve(&self, reference: &BlockRef) -> Result<u64, StoreError> {
        reference
            .resolve(&self.headers)
            .map_err(|e| StoreError::schema("REF", e))
    }

    pub fn snapshot(&self, height: u64) -> ChainDir {
        ChainDir::new(self.layout.snapshot(height))
    }

    fn head_dir(&self) -> ChainDir {
        self.snapshot(self.head().height)
    }

    /// Every event of `element`, oldest first, with the block that sealed it.
    pub fn history(&self, element: &ElementId) -> Result<Vec<(u64, Event)>, StoreError> {
        let events = self.head_dir().events(Some(element))?;
        Ok(events
            .into_iter()
            .map(|e| (self.block_of_seq(e.chain_seq), e))
            .collect())
    }

    /// All events, with the block that sealed each.
    pub fn events(&self) -> Result<Vec<(u64, Event)>, StoreError> {
        let events = self.head_dir().events(None)?;
        Ok(events
            .into_iter()
            .map(|e| (self.block_of_seq(e.chain_seq), e))
            .collect())
    }

    /// The block whose events include chain sequence `seq`.
    pub fn block_of_seq(&self, seq: u64) -> u64 {
        let i = self
            .headers
            .partition_point(|h| h.last_seq.is_none_or(|last| last < seq));
        i.min(self.headers.len() - 1) as u64
    }

    /// `element`'s state at block `height`, checked against the block's
    /// header (see [`Chain::states_at`]).
    pub fn state_at(&self, element: &ElementId, height: u64) -> Result<Option<State>, StoreError> {
        self.states_at(height)?.state(element)
    }

    /// Block `height`'s states, from a place that matches its header's
    /// state root: the snapshot, or else the states rebuilt from the
    /// events log. A block whose states match from neither is an error
    /// that names it: never an answer that the header does not back.
    pub fn states_at(&self, height: u64) -> Result<BlockStates, StoreError> {
        let header = self.header(height)?;
        let dir = self.snapshot(height);
        let why = match self.cached_mismatch(&dir, header) {
            None => return Ok(BlockStates::Snapshot(dir)),
            Some(why) => why,
        };
        let pruned = crate::retention::pruned_heights(&self.layout)?;
        if pruned.contains(&height) {
            tracing::debug!(height, "block {height} was pruned; rebuilding its states");
        } else {
            tracing::warn!(
                height,
                "{why}; rebuilding block {height}'s states from the events log"
            );
        }
        let base = self.rebuild_base(height)?;
        let changed = self.rebuild_changes(base.as_ref(), height)?;
        let rebuilt = BlockStates::Rebuilt {
            base: base.map(|(_, dir)| dir),
            changed,
            why: why.clone(),
        };
        if state_root_of(rebuilt.state_hashes()) != header.state_root {
            return Err(StoreError::Corrupt {
                path: dir.path().to_owned(),
                why: format!(
                    "{why}, and the states rebuilt from the events log do not match block {height}'s state root either; run `fschain verify`, and restore the chain from a site (`fschain replay`)"
                ),
            });
        }
        Ok(rebuilt)
    }

    /// The newest snapshot before block `height` whose states match its own
    /// header, to rebuild block `height`'s states from (`None`: none does,
    /// start from the empty state).
    fn rebuild_base(&self, height: u64) -> Result<Option<(u64, ChainDir)>, StoreError> {
        let heights = self.layout.snapshot_heights()?;
        for &h in heights.iter().rev().filter(|&&h| h < height) {
            let dir = self.snapshot(h);
            if self.cached_mismatch(&dir, self.header(h)?).is_none() {
                return Ok(Some((h, dir)));
            }
        }
        Ok(None)
    }

    /// [`Chain::snapshot_mismatch`], once per height.
    fn cached_mismatch(&self, dir: &ChainDir, header: &BlockHeader) -> Option<String> {
        let height = header.height;
        let known = self
            .checked
            .lock()
            .ok()
            .and_then(|c| c.get(&height).cloned());
        if let Some(verdict) = known {
            return verdict;
        }
        let verdict = self.snapshot_mismatch(dir, header);
        if let Ok(mut c) = self.checked.lock() {
            c.insert(height, verdict.clone());
        }
        verdict
    }

    fn header(&self, height: u64) -> Result<&BlockHeader, StoreError> {
        self.headers
            .get(height as usize)
            .ok_or_else(|| StoreError::Corrupt {
                path: self.layout.snapshot(height),
                why: format!("no block {height}: the head is {}", self.head().height),
            })
    }

    /// Why block `height`'s snapshot cannot be read as its header says,
    /// or `None` when its states hash to the header's state root.
    fn snapshot_mismatch(&self, dir: &ChainDir, header: &BlockHeader) -> Option<String> {
        let height = header.height;
        if !dir.path().is_dir() {
            return Some(format!("block {height}'s snapshot is missing"));
        }
        // The tree sweep reads what is on disk: write back first.
        if let Err(e) = btrfs::sync_filesystem(dir.path()) {
            return Some(format!("block {height}'s snapshot cannot be read: {e}"));
        }
        let scan = dir.state_hashes_from_tree(&format!("block {height}"));
        if let Some(problem) = scan.problems.first() {
            return Some(format!(
                "block {height}'s snapshot has a problem: {problem}"
            ));
        }
        if state_root_of(scan.states) != header.state_root {
            return Some(format!(
                "block {height}'s snapshot does not match its header's state root (its files were changed)"
            ));
        }
        None
    }

    /// The newest snapshot that exists, at or after block `height`: its
    /// events log holds every event up to it.
    fn log_dir(&self, height: u64) -> Result<ChainDir, StoreError> {
        (height..=self.head().height)
            .rev()
            .map(|h| self.snapshot(h))
            .find(|d| d.path().is_dir())
            .ok_or_else(|| StoreError::Corrupt {
                path: self.layout.snapshot(height),
                why: format!("no snapshot from block {height} on holds the events log"),
            })
    }

    /// The states of the elements that the events after `base` (up to
    /// block `height`) touched, replayed from `base`'s states, each checked
    /// against its event's state hash.
    fn rebuild_changes(
        &self,
        base: Option<&(u64, ChainDir)>,
        height: u64,
    ) -> Result<BTreeMap<ElementId, Option<Vec<u8>>>, StoreError> {
        let last_seq = |h: u64| {
            self.headers[..=h as usize]
                .iter()
                .filter_map(|h| h.last_seq)
                .max()
        };
        let upto = last_seq(height);
        let after = base.and_then(|(h, _)| last_seq(*h));
        let log = self.log_dir(height)?;
        let mut states: BTreeMap<ElementId, Option<State>> = BTreeMap::new();
        let Some(upto) = upto else {
            return Ok(BTreeMap::new());
        };
        for event in log.events(None)? {
            if after.is_some_and(|a| event.chain_seq <= a) {
                continue;
            }
            if event.chain_seq > upto {
                break;
            }
            let place = || format!("event {} of {}", event.chain_seq, event.element);
            let before = match states.remove(&event.element) {
                Some(state) => state,
                None => match base {
                    Some((_, dir)) => dir.state(&event.element)?,
                    None => None,
                },
            };
            let after = event
                .op
                .apply_owned(before)
                .map_err(|e| StoreError::schema(place(), e))?;
            let hash = after
                .as_ref()
                .map(state_hash)
                .transpose()
                .map_err(|e| StoreError::schema(place(), e))?;
            if after.is_some() && event.state_hash != hash {
                return Err(StoreError::Corrupt {
                    path: log.path().to_owned(),
                    why: format!(
                        "{}: the replayed state does not match the event's state hash",
                        place()
                    ),
                });
            }
            states.insert(event.element.clone(), after);
        }
        states
            .into_iter()
            .map(|(element, state)| {
                let bytes = state
                    .map(|s| jcs::canonical_object(&s))
                    .transpose()
                    .map_err(|e| StoreError::schema(element.to_string(), e))?;
                Ok((element, bytes))
            })
            .collect()
    }

    /// What differs between blocks `from` and `to`: only elements with events
    /// between them can differ, so only their states are compared.
    pub fn diff(&self, from: u64, to: u64) -> Result<StateDiff, StoreError> {
        let (lo, hi) = (from.min(to), from.max(to));
        let first = self
            .headers
            .get(lo as usize + 1..=hi as usize)
            .unwrap_or(&[]);
        let seqs: Option<(u64, u64)> = first
            .iter()
            .filter_map(|h| h.first_seq.zip(h.last_seq))
            .fold(None, |acc, (a, b)| {
                Some(acc.map_or((a, b), |(x, y): (u64, u64)| (x.min(a), y.max(b))))
            });
        let mut touched = BTreeSet::new();
        if let Some((a, b)) = seqs {
            for event in self.log_dir(hi)?.events(None)? {
                if (a..=b).contains(&event.chain_seq) {
                    touched.insert(event.element);
                }
            }
        }
        let (old, new) = (self.states_at(from)?, self.states_at(to)?);
        let mut diff = StateDiff {
            from,
            to,
            ..StateDiff::default()
        };
        for element in touched {
            match (old.state_bytes(&element)?, new.state_bytes(&element)?) {
                (None, Some(_)) => diff.added.push(element.to_string()),
                (Some(_), None) => diff.removed.push(element.to_string()),
                (Some(a), Some(b)) if a != b => diff.changed.push(element.to_string()),
                _ => {}
            }
        }
        Ok(diff)
    }

    /// A writable copy of block `height` at `dest`: a btrfs snapshot when
    /// `dest` is on the same filesystem, a plain copy otherwise.
    pub fn checkout(&self, height: u64, dest: &Path) -> Result<(), StoreError> {
        if dest.exists() {
            return Err(StoreError::io(
                dest,
                std::io::Error::new(std::io::ErrorKind::AlreadyExists, "destination exists"),
            ));
        }
        let (base, changed) = match self.states_at(height)? {
            BlockStates::Snapshot(dir) => (Some(dir), None),
            BlockStates::Rebuilt { base, changed, .. } => (base, Some(changed)),
        };
        match &base {
            Some(source) => clone_tree(source.path(), dest)?,
            None => std::fs::create_dir_all(dest).at(dest)?,
        }
        let Some(changed) = changed else {
            return Ok(());
        };
        // Rebuilt: the logs up to the block, then each changed state.
        let write = |path: std::path::PathBuf, bytes: &[u8]| -> Result<(), StoreError> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).at(dir)?;
            }
            std::fs::write(&path, bytes).at(&path)
        };
        write(dest.join(crate::layout::CHAIN_FILE), &self.meta.to_bytes())?;
        let log = self.log_dir(height)?;
        let mut headers = Vec::new();
        for line in log
            .headers_bytes()?
            .split_inclusive(|&b| b == b'\n')
            .take(height as usize + 1)
        {
            headers.extend_from_slice(line);
        }
        write(dest.join(crate::layout::HEADERS_LOG), &headers)?;
        let mut remaining: u64 = self.headers[..=height as usize]
            .iter()
            .map(|h| h.event_count)
            .sum();
        let mut events = Vec::new();
        log.for_event_lines(|line| {
            if remaining == 0 {
                return Ok::<bool, StoreError>(false);
            }
            remaining -= 1;
            events.extend_from_slice(line);
            events.push(b'\n');
            Ok(true)
        })?;
        write(dest.join(crate::layout::EVENTS_LOG), &events)?;
        for (element, bytes) in changed {
            let path = dest.join(state_path(&element));
            match bytes {
                Some(bytes) => write(path, &bytes)?,
                None => match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(StoreError::io(&path, e))
                    }
                    _ => {}
                },
            }
        }
        Ok(())
    }
}

/// A writable copy of `source` at `dest`: a btrfs snapshot when it can be
/// one (same file system), else a plain copy.
fn clone_tree(source: &Path, dest: &Path) -> Result<(), StoreError> {
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => std::path::PathBuf::from("."),
    };
    if btrfs::is_btrfs(&parent).unwrap_or(false) && btrfs::snapshot(source, dest, false).is_ok() {
        return Ok(());
    }
    copy_tree(source, dest)
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), StoreError> {
    std::fs::create_dir_all(to).at(to)?;
    for entry in std::fs::read_dir(from).at(from)? {
        let entry = entry.at(from)?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().at(&src)?;
        if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else if kind.is_file() {
            std::fs::copy(&src, &dst).at(&dst)?;
        }
    }
    Ok(())
}
