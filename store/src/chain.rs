//! Reading a chain back from its snapshots: the read side every command
//! shares, on a producer's root and on a site's copy alike.

use std::collections::BTreeSet;
use std::path::Path;

use fschain_schema::{BlockHeader, BlockRef, ElementId, Event, State};
use serde::Serialize;

use crate::layout::{ChainMeta, RootLayout};
use crate::{btrfs, ChainDir, IoContext, StoreError};

/// A chain as its snapshots hold it.
#[derive(Debug)]
pub struct Chain {
    layout: RootLayout,
    meta: ChainMeta,
    headers: Vec<BlockHeader>,
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

    /// `element`'s state at block `height`.
    pub fn state_at(&self, element: &ElementId, height: u64) -> Result<Option<State>, StoreError> {
        self.snapshot(height).state(element)
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
            for event in self.snapshot(hi).events(None)? {
                if (a..=b).contains(&event.chain_seq) {
                    touched.insert(event.element);
                }
            }
        }
        let (old, new) = (self.snapshot(from), self.snapshot(to));
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
