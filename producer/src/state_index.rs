//! The writer's index of every element: its last event and its state hash.
//!
//! It is derived data: rebuilt from `events.log` when missing or stale, and
//! cached in `meta/state-index` (outside the layer, so it never enters a
//! snapshot or a send stream) under the head block's hash.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use fschain_schema::{BlockHash, ElementId, EventHash, StateHash};
use fschain_store::{ChainDir, IoContext, StoreError};

const MAGIC: &str = "fschain-state-index 1";

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct IndexedTip {
    pub seq: u64,
    pub last: EventHash,
    pub state: Option<StateHash>,
}

#[derive(Debug, Default)]
pub(crate) struct StateIndex {
    head: Option<BlockHash>,
    next_seq: u64,
    tips: HashMap<ElementId, IndexedTip>,
}

impl StateIndex {
    /// Replays the events of a chain directory.
    pub(crate) fn from_events(dir: &ChainDir) -> Result<Self, StoreError> {
        let mut index = StateIndex {
            next_seq: 1,
            ..Self::default()
        };
        for event in dir.events(None)? {
            index.next_seq = event.chain_seq + 1;
            index.tips.insert(
                event.element.clone(),
                IndexedTip {
                    seq: event.element_seq,
                    last: event.hash,
                    state: event.state_hash,
                },
            );
        }
        index.head = dir.headers()?.last().map(|h| h.hash);
        Ok(index)
    }

    /// Loads the cache if it was written for `head`; `None` otherwise.
    pub(crate) fn load(path: &Path, head: &BlockHash) -> Option<Self> {
        let file = std::fs::File::open(path).ok()?;
        let mut lines = BufReader::new(file).lines();
        let first = lines.next()?.ok()?;
        let mut parts = first.rsplitn(3, ' ');
        let next_seq: u64 = parts.next()?.parse().ok()?;
        let stored_head = BlockHash::from_hex(parts.next()?).ok()?;
        if parts.next()? != MAGIC || &stored_head != head {
            return None;
        }
        let mut tips = HashMap::new();
        for line in lines {
            let line = line.ok()?;
            let mut f = line.splitn(4, ' ');
            let seq = f.next()?.parse().ok()?;
            let last = EventHash::from_hex(f.next()?).ok()?;
            let state = match f.next()? {
                "-" => None,
                hex => Some(StateHash::from_hex(hex).ok()?),
            };
            let element = ElementId::parse(f.next()?).ok()?;
            tips.insert(element, IndexedTip { seq, last, state });
        }
        Some(StateIndex {
            head: Some(stored_head),
            next_seq,
            tips,
        })
    }

    /// Writes the cache atomically (temporary file, then rename).
    pub(crate) fn save(&self, path: &Path) -> Result<(), StoreError> {
        let Some(head) = self.head else { return Ok(()) };
        let tmp = path.with_extension("tmp");
        let file = std::fs::File::create(&tmp).at(&tmp)?;
        let mut out = BufWriter::new(file);
        writeln!(out, "{MAGIC} {head} {}", self.next_seq).at(&tmp)?;
        for (element, tip) in &self.tips {
            let state = tip.state.map_or_else(|| "-".to_owned(), |s| s.to_hex());
            writeln!(out, "{} {} {} {}", tip.seq, tip.last, state, element).at(&tmp)?;
        }
        out.into_inner().map_err(|e| StoreError::Io {
            path: tmp.clone(),
            error: e.into_error(),
        })?;
        std::fs::rename(&tmp, path).at(path)
    }

    pub(crate) fn tip(&self, element: &ElementId) -> Option<&IndexedTip> {
        self.tips.get(element)
    }

    pub(crate) fn set_tip(&mut self, element: ElementId, tip: IndexedTip) {
        self.tips.insert(element, tip);
    }

    pub(crate) fn set_head(&mut self, head: BlockHash, next_seq: u64) {
        self.head = Some(head);
        self.next_seq = next_seq;
    }

    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub(crate) fn live_states(&self) -> impl Iterator<Item = (ElementId, StateHash)> + '_ {
        self.tips
            .iter()
            .filter_map(|(e, t)| t.state.map(|s| (e.clone(), s)))
    }
}
