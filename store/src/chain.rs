//! Reading a chain back from its snapshots: the read side every command
//! shares, on a producer's root and on a site's copy alike.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use fschain_schema::verify::state_root_of;
use fschain_schema::{jcs, state_hash, BlockHeader, BlockRef, ElementId, Event, State};
use serde::Serialize;

use crate::layout::{ChainMeta, RootLayout};
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
/// states hash to the header's state root; else every state rebuilt from
/// the events log (each snapshot carries the whole log) and checked
/// against the same root.
#[derive(Debug)]
pub enum BlockStates {
    Snapshot(ChainDir),
    Rebuilt {
        /// Each element's canonical state bytes at the block.
        states: BTreeMap<ElementId, Vec<u8>>,
        /// Why the snapshot could not be used.
        why: String,
    },
}

impl BlockStates {
    /// The raw (canonical) bytes of `element`'s state, or `None`.
    pub fn state_bytes(&self, element: &ElementId) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            BlockStates::Snapshot(dir) => dir.state_bytes(element),
            BlockStates::Rebuilt { states, .. } => Ok(states.get(element).cloned()),
        }
    }

    /// `element`'s state, or `None`.
    pub fn state(&self, element: &ElementId) -> Result<Option<State>, StoreError> {
        match self {
            BlockStates::Snapshot(dir) => dir.state(element),
            BlockStates::Rebuilt { states, .. } => Ok(states
                .get(element)
                .and_then(|b| serde_json::from_slice(b).ok())),
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
        let known = self
            .checked
            .lock()
            .ok()
            .and_then(|c| c.get(&height).cloned());
        let mismatch = match known {
            Some(verdict) => verdict,
            None => {
                let verdict = self.snapshot_mismatch(&dir, header);
                if let Ok(mut c) = self.checked.lock() {
                    c.insert(height, verdict.clone());
                }
                verdict
            }
        };
        let why = match mismatch {
            None => return Ok(BlockStates::Snapshot(dir)),
            Some(why) => why,
        };
        tracing::warn!(
            height,
            "{why}; rebuilding block {height}'s states from the events log"
        );
        let states = self.rebuild_states(height)?;
        let root = state_root_of(
            states
                .iter()
                .map(|(e, bytes)| (e.clone(), fschain_schema::verify::state_file_hash(bytes))),
        );
        if root != header.state_root {
            return Err(StoreError::Corrupt {
                path: dir.path().to_owned(),
                why: format!(
                    "{why}, and the states rebuilt from the events log do not match block {height}'s state root either; run `fschain verify`, and restore the chain from a site (`fschain replay`)"
                ),
            });
        }
        Ok(BlockStates::Rebuilt { states, why })
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

    /// Every element's canonical state bytes after block `height`, by
    /// replaying the events log of the newest snapshot that exists.
    fn rebuild_states(&self, height: u64) -> Result<BTreeMap<ElementId, Vec<u8>>, StoreError> {
        let upto = self.headers[..=height as usize]
            .iter()
            .filter_map(|h| h.last_seq)
            .max()
            .unwrap_or(0);
        let log = self.log_dir(height)?;
        let mut states: BTreeMap<ElementId, State> = BTreeMap::new();
        for event in log.events(None)? {
            if event.chain_seq > upto {
                break;
            }
            let place = || format!("event {} of {}", event.chain_seq, event.element);
            let before = states.remove(&event.element);
            let after = event
                .op
                .apply_owned(before)
                .map_err(|e| StoreError::schema(place(), e))?;
            if let Some(state) = after {
                let hash = state_hash(&state).map_err(|e| StoreError::schema(place(), e))?;
                if event.state_hash != Some(hash) {
                    return Err(StoreError::Corrupt {
                        path: log.path().to_owned(),
                        why: format!(
                            "{}: the replayed state does not match the event's state hash",
                            place()
                        ),
                    });
                }
                states.insert(event.element.clone(), state);
            }
        }
        states
            .into_iter()
            .map(|(element, state)| {
                let bytes = jcs::canonical_object(&state)
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
        let source = self.layout.snapshot(height);
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => std::path::PathBuf::from("."),
        };
        // A snapshot when it can be one (same btrfs filesystem), else a copy.
        if btrfs::is_btrfs(&parent).unwrap_or(false)
            && btrfs::snapshot(&source, dest, false).is_ok()
        {
            return Ok(());
        }
        copy_tree(&source, dest)
    }
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
