//! A chain's event index: which blocks it holds, which embedders built it,
//! and bringing it up to the chain's head.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use fschain_schema::{ElementId, Event, State};
use fschain_store::layout::{write_atomic, RootLayout};
use fschain_store::{Chain, ChainDir, IoContext, StoreError};
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::backend::{Backend, EdgeBackend, IndexPoint, Ranking, ScoredPayload, SearchFilter};
use crate::document::{fields, EventDocument};
use crate::embed::Embedders;
use crate::IndexError;

const MANIFEST: &str = "index.json";
const EDGE_DIR: &str = "edge";
const FORMAT: u64 = 1;
/// Events embedded and upserted together.
const BATCH: usize = 256;
/// Extra candidates fetched to order equal scores.
const TIE_SLACK: usize = 16;
/// Points upserted between two durable checkpoints of `index.json`.
const CHECKPOINT_POINTS: usize = 50_000;

/// `index/index.json`: what the index holds and how it was built.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexManifest {
    pub format: u64,
    pub chain: String,
    pub backend: String,
    pub embedders: Vec<String>,
    /// Every event of every block up to this height is in the index.
    pub indexed_height: Option<u64>,
}

/// An open event index of one chain. Holds `index/lock` while open, so one
/// process at a time reads or writes it.
pub struct EventIndex<'e> {
    layout: RootLayout,
    manifest: IndexManifest,
    backend: EdgeBackend,
    embedders: &'e Embedders,
    _lock: File,
}

impl std::fmt::Debug for EventIndex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventIndex")
            .field("root", &self.layout.root())
            .field("manifest", &self.manifest)
            .finish()
    }
}

/// How far `catch_up` got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CatchUp {
    pub blocks: u64,
    pub events: u64,
    pub indexed_height: Option<u64>,
}

impl<'e> EventIndex<'e> {
    /// Opens the index of the chain at `layout`. With `create`, a missing
    /// index is created empty; without it, a missing index is an error that
    /// says to run `reindex`. An index built with other embedders is
    /// always an error that says to run `reindex`.
    pub fn open(
        layout: &RootLayout,
        chain: &str,
        embedders: &'e Embedders,
        create: bool,
    ) -> Result<Self, IndexError> {
        let dir = layout.index_dir();
        let manifest_path = dir.join(MANIFEST);
        if !manifest_path.exists() && !create {
            return Err(IndexError::NoIndex {
                path: dir,
                root: layout.root().to_owned(),
            });
        }
        std::fs::create_dir_all(&dir).at(&dir)?;
        let lock = lock_index(&dir)?;
        let manifest = match std::fs::read(&manifest_path) {
            Ok(bytes) => {
                let m: IndexManifest =
                    serde_json::from_slice(&bytes).map_err(|e| IndexError::Corrupt {
                        path: manifest_path.clone(),
                        why: e.to_string(),
                    })?;
                if m.embedders != embedders.ids() {
                    return Err(IndexError::EmbedderMismatch {
                        path: dir,
                        root: layout.root().to_owned(),
                        built: m.embedders,
                        configured: embedders.ids(),
                    });
                }
                m
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A shard without a manifest is left from a crash during
                // creation: start it again.
                remove_dir_if_present(&dir.join(EDGE_DIR))?;
                let m = IndexManifest {
                    format: FORMAT,
                    chain: chain.to_owned(),
                    backend: "edge".to_owned(),
                    embedders: embedders.ids(),
                    indexed_height: None,
                };
                let backend = EdgeBackend::open(&dir.join(EDGE_DIR), embedders.minilm.is_some())?;
                drop(backend);
                write_manifest(&manifest_path, &m)?;
                m
            }
            Err(e) => return Err(StoreError::io(&manifest_path, e).into()),
        };
        let backend = EdgeBackend::open(&dir.join(EDGE_DIR), embedders.minilm.is_some())?;
        Ok(EventIndex {
            layout: layout.clone(),
            manifest,
            backend,
            embedders,
            _lock: lock,
        })
    }

    /// Deletes the index of the chain at `layout`, if any, and creates it
    /// empty with `embedders`.
    pub fn recreate(
        layout: &RootLayout,
        chain: &str,
        embedders: &'e Embedders,
    ) -> Result<Self, IndexError> {
        let dir = layout.index_dir();
        std::fs::create_dir_all(&dir).at(&dir)?;
        {
            let _lock = lock_index(&dir)?;
            // The manifest goes first: a crash after it leaves no index,
            // never an index that claims blocks it lost.
            let manifest = dir.join(MANIFEST);
            match std::fs::remove_file(&manifest) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io(&manifest, e).into()),
            }
            remove_dir_if_present(&dir.join(EDGE_DIR))?;
        }
        Self::open(layout, chain, embedders, true)
    }

    pub fn manifest(&self) -> &IndexManifest {
        &self.manifest
    }

    /// Indexes every block of `chain` above the index's height, in order.
    /// Returns what it did; `index.json` moves forward only after the
    /// points are durable, so a crash re-indexes (idempotently) at worst.
    ///
    /// `stop` is checked between blocks: when it is set, what is indexed so
    /// far is made durable and recorded, and the call returns early.
    pub fn catch_up(
        &mut self,
        chain: &Chain,
        stop: &AtomicBool,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<CatchUp, IndexError> {
        let head = chain.head().height;
        let base = fschain_store::layout::replica_base(chain.layout())?.unwrap_or(0);
        let start = self
            .manifest
            .indexed_height
            .map_or(base, |h| h + 1)
            .max(base);
        let mut done = CatchUp {
            indexed_height: self.manifest.indexed_height,
            ..Default::default()
        };
        let mut states = BeforeStates::default();
        let mut buffer: Vec<EventDocument> = Vec::new();
        let mut since_checkpoint = 0usize;
        for height in start..=head {
            if stop.load(Ordering::Relaxed) {
                done.events += buffer.len() as u64;
                self.write(&mut buffer)?;
                if height > start {
                    self.record(height - 1)?;
                    done.indexed_height = Some(height - 1);
                }
                return Ok(done);
            }
            let header = &chain.headers()[height as usize];
            let snapshot = ChainDir::new(chain.layout().snapshot(height));
            for line in snapshot.last_event_lines(header.event_count)? {
                let event = Event::from_canonical(&line).map_err(|e| {
                    StoreError::schema(format!("block {height} of {}", chain.meta().chain), e)
                })?;
                let before = states.before(chain, height, &event)?;
                let doc = EventDocument::new(height, event, before.as_ref())?;
                states.record(&doc.event, before)?;
                buffer.push(doc);
                if buffer.len() >= BATCH {
                    since_checkpoint += buffer.len();
                    done.events += buffer.len() as u64;
                    self.write(&mut buffer)?;
                }
            }
            done.blocks += 1;
            if since_checkpoint >= CHECKPOINT_POINTS {
                since_checkpoint = 0;
                done.events += buffer.len() as u64;
                self.write(&mut buffer)?;
                // The appendable segment's sparse posting lists grow by
                // insertion (quadratic over a million points); let the
                // optimizer seal it into an indexed segment as it fills.
                self.backend.optimize()?;
                self.record(height)?;
                done.indexed_height = Some(height);
            }
            progress(height, head);
        }
        done.events += buffer.len() as u64;
        self.write(&mut buffer)?;
        if start <= head {
            self.backend.optimize()?;
            self.record(head)?;
            done.indexed_height = Some(head);
            info!(chain = %chain.meta().chain, blocks = done.blocks, events = done.events, head, "index caught up");
        }
        Ok(done)
    }

    fn write(&mut self, docs: &mut Vec<EventDocument>) -> Result<(), IndexError> {
        if docs.is_empty() {
            return Ok(());
        }
        let lexical: Vec<String> = docs.iter().map(EventDocument::lexical_text).collect();
        let natural: Vec<String> = docs.iter().map(EventDocument::text).collect();
        let vectors = self.embedders.documents(&lexical, &natural)?;
        let points = docs
            .drain(..)
            .zip(vectors)
            .map(|(doc, vectors)| IndexPoint {
                id: doc.point_id(),
                vectors,
                payload: doc.payload(),
            })
            .collect();
        self.backend.upsert(points)
    }

    fn record(&mut self, height: u64) -> Result<(), IndexError> {
        self.backend.flush()?;
        self.manifest.indexed_height = Some(height);
        write_manifest(&self.layout.index_dir().join(MANIFEST), &self.manifest)
    }

    /// The best `limit` events for `query`.
    pub fn search(
        &self,
        query: &str,
        ranking: Ranking,
        filter: &SearchFilter,
        limit: usize,
    ) -> Result<Vec<ScoredPayload>, IndexError> {
        let vectors = self.embedders.query(query)?;
        // Equal scores are common (the same reason on many events): take a
        // few more and break ties newest first, so answers are stable.
        let mut hits = self
            .backend
            .search(&vectors, ranking, filter, limit + TIE_SLACK)?;
        let seq = |h: &ScoredPayload| h.payload.get(fields::CHAIN_SEQ).and_then(|v| v.as_u64());
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(seq(b).cmp(&seq(a))));
        hits.truncate(limit);
        Ok(hits)
    }
}

/// The state of each element just before the event being indexed: read
/// from the previous block's snapshot the first time an element shows up,
/// then carried forward event by event.
#[derive(Default)]
struct BeforeStates {
    current: HashMap<ElementId, Option<State>>,
}

impl BeforeStates {
    fn before(
        &mut self,
        chain: &Chain,
        height: u64,
        event: &Event,
    ) -> Result<Option<State>, IndexError> {
        let element = &event.op.element;
        if let Some(state) = self.current.get(element) {
            return Ok(state.clone());
        }
        let previous = chain.layout().snapshot(height.wrapping_sub(1));
        if height > 0 && previous.exists() {
            return Ok(ChainDir::new(previous).state(element)?);
        }
        // The first block a site holds has no snapshot before it: replay
        // the element's own chain from the log, which every snapshot holds.
        let mut state: Option<State> = None;
        for earlier in ChainDir::new(chain.layout().snapshot(height)).events(Some(element))? {
            if earlier.chain_seq >= event.chain_seq {
                break;
            }
            state = earlier.op.apply_to(state.as_ref())?;
        }
        Ok(state)
    }

    fn record(&mut self, event: &Event, before: Option<State>) -> Result<(), IndexError> {
        let after = event.op.apply_to(before.as_ref())?;
        self.current.insert(event.op.element.clone(), after);
        Ok(())
    }
}

fn write_manifest(path: &Path, manifest: &IndexManifest) -> Result<(), IndexError> {
    let bytes = serde_json::to_vec_pretty(manifest).map_err(|e| IndexError::Corrupt {
        path: path.to_owned(),
        why: e.to_string(),
    })?;
    Ok(write_atomic(path, &bytes)?)
}

fn lock_index(dir: &Path) -> Result<File, IndexError> {
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .at(&path)?;
    file.lock().at(&path)?;
    Ok(file)
}

fn remove_dir_if_present(path: &PathBuf) -> Result<(), IndexError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io(path, e).into()),
    }
}
