//! A chain's event index: which blocks it holds, which embedders built it,
//! and bringing it up to the chain's head.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use fschain_schema::{BlockHeader, ElementId, Event, State};
use fschain_store::layout::{open_lock_file, write_atomic, RootLayout};
use fschain_store::{for_block_event_lines, Chain, ChainDir, IoContext, StoreError};
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::backend::{
    prefetch_limit, Backend, EdgeBackend, Embedder, IndexPoint, Ranking, ScoredPayload,
    SearchFilter,
};
use crate::document::{summarize_state, EventDocument};
use crate::embed::{Embedders, TextVectors};
use crate::fusion::{self, Ranked};
use crate::server::{ServerBackend, ServerConfig};
use crate::IndexError;

const MANIFEST: &str = "index.json";
const EDGE_DIR: &str = "edge";
const FORMAT: u64 = 1;
/// Events embedded and upserted together.
const BATCH: usize = 256;
/// Extra candidates fetched to order equal scores.
const TIE_SLACK: usize = 16;
/// The most hits one ranking is asked for to see a run of equal scores
/// whole.
const MAX_TIE_RUN: usize = 2048;
/// Weights of the two rankings in the fusion (their scaled scores). Chosen
/// with `fschain-bench --quality-only` on the vendored paraphrases and
/// lexical queries: from 0.15 to 0.3 for BM25 both sets are at their best;
/// above 0.4 BM25's matches on a shared common word outweigh MiniLM.
const FUSION_WEIGHT_BM25: f64 = 0.25;
const FUSION_WEIGHT_MINILM: f64 = 0.75;
/// Bytes of events (canonical JSON) embedded and upserted together.
const BATCH_BYTES: usize = 8 << 20;
/// Points upserted between two durable checkpoints of `index.json`.
const CHECKPOINT_POINTS: u64 = 50_000;
/// Points upserted since the optimizer last ran that make it run again.
const OPTIMIZE_POINTS: u64 = 50_000;

/// `index/index.json`: what the index holds and how it was built.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexManifest {
    pub format: u64,
    pub chain: String,
    /// `edge` (in process, under `index/edge`) or `server`.
    pub backend: String,
    /// The server collection, for a `server` index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection: Option<String>,
    pub embedders: Vec<String>,
    /// Every event of every block up to this height is in the index.
    pub indexed_height: Option<u64>,
    /// Points written since the optimizer last ran.
    #[serde(default)]
    pub unoptimized_points: u64,
}

/// An open event index of one chain. Holds `index/lock` while open, so one
/// process at a time reads or writes it.
pub struct EventIndex<'e> {
    layout: RootLayout,
    manifest: IndexManifest,
    backend: Box<dyn Backend + Send>,
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
    /// Opens the index of the chain at `layout`, kept in `store`. With
    /// `create`, a missing index is created empty; without it, a missing
    /// index is an error that says to run `reindex`. An index built with
    /// other embedders, or kept elsewhere, is always an error that says to
    /// run `reindex`.
    pub fn open(
        layout: &RootLayout,
        chain: &str,
        embedders: &'e Embedders,
        store: &VectorStore,
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
        let dense = embedders.minilm.is_some();
        let (manifest, backend) = match std::fs::read(&manifest_path) {
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
                let backend = store.open(layout, &m, dense, false)?;
                (m, backend)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A shard without a manifest is left from a crash during
                // creation: start it again.
                remove_dir_if_present(&dir.join(EDGE_DIR))?;
                let m = IndexManifest {
                    format: FORMAT,
                    chain: chain.to_owned(),
                    backend: store.kind().to_owned(),
                    collection: store.collection(chain),
                    embedders: embedders.ids(),
                    indexed_height: None,
                    unoptimized_points: 0,
                };
                let backend = store.open(layout, &m, dense, true)?;
                write_manifest(&manifest_path, &m)?;
                (m, backend)
            }
            Err(e) => return Err(StoreError::io(&manifest_path, e).into()),
        };
        Ok(EventIndex {
            layout: layout.clone(),
            manifest,
            backend,
            embedders,
            _lock: lock,
        })
    }

    /// Deletes the index of the chain at `layout`, if any, and creates it
    /// empty with `embedders` in `store`.
    pub fn recreate(
        layout: &RootLayout,
        chain: &str,
        embedders: &'e Embedders,
        store: &VectorStore,
    ) -> Result<Self, IndexError> {
        if let VectorStore::Server(config) = store {
            // Nothing is thrown away for a server that does not answer.
            ServerBackend::check(config)?;
        }
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
        Self::open(layout, chain, embedders, store, true)
    }

    pub fn manifest(&self) -> &IndexManifest {
        &self.manifest
    }

    /// Indexes every block of `chain` above the index's height, in order.
    /// Returns what it did; `index.json` moves forward only after the
    /// points are durable, so a crash re-indexes (idempotently) at worst.
    /// Events are read one at a time and written in batches bounded in
    /// count and bytes, and long values are summarized, so memory stays
    /// small whatever the blocks hold.
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
        let mut batch = Batch::default();
        let mut since_checkpoint = 0u64;
        for height in start..=head {
            if stop.load(Ordering::Relaxed) {
                done.events += self.write(&mut batch)?;
                if height > start {
                    self.record(height - 1)?;
                    done.indexed_height = Some(height - 1);
                }
                return Ok(done);
            }
            let header = &chain.headers()[height as usize];
            states.prime(chain, header)?;
            for_block_event_lines(chain.layout(), height, header.event_count, |line| {
                let event = Event::from_canonical(line).map_err(|e| {
                    StoreError::schema(format!("block {height} of {}", chain.meta().chain), e)
                })?;
                let before = states.before(chain, height, &event.op.element)?;
                let doc = EventDocument::new(height, event, before.as_ref())?;
                states.record(&doc.event, before)?;
                batch.push(doc, line.len());
                if batch.is_full() {
                    let n = self.write(&mut batch)?;
                    since_checkpoint += n;
                    done.events += n;
                }
                Ok::<(), IndexError>(())
            })?;
            done.blocks += 1;
            if since_checkpoint >= CHECKPOINT_POINTS {
                since_checkpoint = 0;
                done.events += self.write(&mut batch)?;
                self.record(height)?;
                done.indexed_height = Some(height);
            }
            progress(height, head);
        }
        done.events += self.write(&mut batch)?;
        if start <= head {
            self.record(head)?;
            done.indexed_height = Some(head);
            info!(chain = %chain.meta().chain, blocks = done.blocks, events = done.events, head, "index caught up");
        }
        Ok(done)
    }

    /// Embeds and upserts the batch; returns how many points it wrote.
    fn write(&mut self, batch: &mut Batch) -> Result<u64, IndexError> {
        if batch.docs.is_empty() {
            return Ok(0);
        }
        let docs = std::mem::take(&mut batch.docs);
        batch.bytes = 0;
        let lexical: Vec<String> = docs.iter().map(EventDocument::lexical_text).collect();
        let natural: Vec<String> = docs.iter().map(EventDocument::natural_text).collect();
        let vectors = self.embedders.documents(&lexical, &natural)?;
        let written = docs.len() as u64;
        let points = docs
            .into_iter()
            .zip(vectors)
            .map(|(doc, vectors)| IndexPoint {
                id: doc.point_id(),
                vectors,
                payload: doc.payload(),
            })
            .collect();
        self.backend.upsert(points)?;
        self.manifest.unoptimized_points += written;
        Ok(written)
    }

    /// Makes what is written durable, lets the optimizer seal what has
    /// piled up, and records `height` as indexed.
    fn record(&mut self, height: u64) -> Result<(), IndexError> {
        if self.manifest.unoptimized_points >= OPTIMIZE_POINTS {
            // The appendable segment's sparse posting lists grow by
            // insertion (quadratic over a million points); sealing it into
            // an indexed segment as it fills keeps upserts and searches fast.
            self.backend.optimize()?;
            self.manifest.unoptimized_points = 0;
        }
        self.backend.flush()?;
        self.manifest.indexed_height = Some(height);
        write_manifest(&self.layout.index_dir().join(MANIFEST), &self.manifest)
    }

    /// One embedder's best `asked` hits, and the whole run of equal scores
    /// at the cut: which of a run a store returns is its own choice, so the
    /// list grows until the run ends (up to [`MAX_TIE_RUN`]). Returns the
    /// hits, cut after that run, and how many were asked for.
    fn whole_ties(
        &self,
        vectors: &TextVectors,
        embedder: Embedder,
        filter: &SearchFilter,
        mut asked: usize,
    ) -> Result<(Vec<ScoredPayload>, usize), IndexError> {
        let mut hits = self.backend.search(vectors, embedder, filter, asked)?;
        loop {
            if hits.len() < asked {
                // Nothing was cut.
                return Ok((hits, usize::MAX));
            }
            if asked >= MAX_TIE_RUN {
                // Still cut: the fusion leaves that run out.
                return Ok((hits, asked));
            }
            let last = hits.last().map_or(f32::MIN, |h| h.score);
            asked = (asked * 4).min(MAX_TIE_RUN);
            hits = self.backend.search(vectors, embedder, filter, asked)?;
            // Scores come in descending order: the run at the old cut ends
            // where they fall below it.
            if let Some(end) = hits.iter().position(|h| h.score < last) {
                hits.truncate(end);
                return Ok((hits, usize::MAX));
            }
        }
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
        let wanted = limit + TIE_SLACK;
        let mut hits = match (ranking, vectors.dense.is_some()) {
            (Ranking::Fused, true) => {
                let asked = prefetch_limit(limit) + TIE_SLACK;
                let (bm25, bm25_asked) =
                    self.whole_ties(&vectors, Embedder::Bm25, filter, asked)?;
                let (minilm, minilm_asked) =
                    self.whole_ties(&vectors, Embedder::MiniLm, filter, asked)?;
                fusion::fuse(
                    &[
                        Ranked {
                            hits: &bm25,
                            asked: bm25_asked,
                            weight: FUSION_WEIGHT_BM25,
                        },
                        Ranked {
                            hits: &minilm,
                            asked: minilm_asked,
                            weight: FUSION_WEIGHT_MINILM,
                        },
                    ],
                    wanted,
                )
            }
            (Ranking::MiniLm, _) => {
                self.backend
                    .search(&vectors, Embedder::MiniLm, filter, wanted)?
            }
            (Ranking::Bm25 | Ranking::Fused, _) => {
                self.backend
                    .search(&vectors, Embedder::Bm25, filter, wanted)?
            }
        };
        fusion::order(&mut hits);
        hits.truncate(limit);
        Ok(hits)
    }
}

/// Documents waiting to be embedded and upserted together.
#[derive(Default)]
struct Batch {
    docs: Vec<EventDocument>,
    /// Bytes of the events' canonical JSON.
    bytes: usize,
}

impl Batch {
    fn push(&mut self, doc: EventDocument, bytes: usize) {
        self.docs.push(doc);
        self.bytes += bytes;
    }

    fn is_full(&self) -> bool {
        self.docs.len() >= BATCH || self.bytes >= BATCH_BYTES
    }
}

/// The state of each element just before the event being indexed, with
/// long values summarized (see [`summarize_state`]): read from the previous
/// block's snapshot the first time an element shows up, then carried
/// forward event by event.
#[derive(Default)]
struct BeforeStates {
    current: HashMap<ElementId, Option<State>>,
}

impl BeforeStates {
    /// At the first block a site holds, which has no snapshot before it,
    /// replays the log up to the block once for the elements the block
    /// touches (every snapshot holds the whole log).
    fn prime(&mut self, chain: &Chain, header: &BlockHeader) -> Result<(), IndexError> {
        let height = header.height;
        if height == 0 || chain.layout().snapshot(height - 1).exists() {
            return Ok(());
        }
        let snapshot = ChainDir::new(chain.layout().snapshot(height));
        let place = || format!("block {height} of {}", chain.meta().chain);
        let mut touched: HashMap<ElementId, Option<State>> = HashMap::new();
        snapshot.for_last_event_lines(header.event_count, |line| {
            let event = Event::from_canonical(line).map_err(|e| StoreError::schema(place(), e))?;
            touched.insert(event.op.element, None);
            Ok::<(), IndexError>(())
        })?;
        let first = header.first_seq;
        snapshot.for_event_lines(|line| {
            let event = Event::from_canonical(line).map_err(|e| StoreError::schema(place(), e))?;
            if first.is_some_and(|first| event.chain_seq >= first) {
                return Ok(false);
            }
            if let Some(state) = touched.get_mut(&event.op.element) {
                *state = event.op.apply_to(state.as_ref())?.map(summarize_state);
            }
            Ok::<bool, IndexError>(true)
        })?;
        self.current.extend(touched);
        Ok(())
    }

    fn before(
        &mut self,
        chain: &Chain,
        height: u64,
        element: &ElementId,
    ) -> Result<Option<State>, IndexError> {
        if let Some(state) = self.current.get(element) {
            return Ok(state.clone());
        }
        let previous = chain.layout().snapshot(height.wrapping_sub(1));
        if height > 0 && previous.exists() {
            return Ok(ChainDir::new(previous).state(element)?.map(summarize_state));
        }
        Ok(None)
    }

    fn record(&mut self, event: &Event, before: Option<State>) -> Result<(), IndexError> {
        let after = event.op.apply_to(before.as_ref())?.map(summarize_state);
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
    let file = open_lock_file(&path)?;
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

/// Where indexes keep their vectors.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum VectorStore {
    /// qdrant-edge in this process, under each chain's `index/edge`.
    #[default]
    Edge,
    /// A Qdrant server, one collection per chain.
    Server(ServerConfig),
}

impl VectorStore {
    fn kind(&self) -> &'static str {
        match self {
            VectorStore::Edge => "edge",
            VectorStore::Server(_) => "server",
        }
    }

    fn collection(&self, chain: &str) -> Option<String> {
        match self {
            VectorStore::Edge => None,
            VectorStore::Server(s) => Some(format!("{}{chain}", s.collection_prefix)),
        }
    }

    fn describe(&self, collection: Option<&str>) -> String {
        match self {
            VectorStore::Edge => "the in-process store (qdrant-edge)".to_owned(),
            VectorStore::Server(s) => format!(
                "collection {} on the Qdrant server {}",
                collection.unwrap_or("?"),
                s.url
            ),
        }
    }

    /// Opens the backend `manifest` describes; `fresh` deletes what a
    /// server collection held. An index kept elsewhere than this store is
    /// `IndexError::StoreMismatch`.
    fn open(
        &self,
        layout: &RootLayout,
        manifest: &IndexManifest,
        dense: bool,
        fresh: bool,
    ) -> Result<Box<dyn Backend + Send>, IndexError> {
        let collection = manifest.collection.as_deref();
        match (self, manifest.backend.as_str(), collection) {
            (VectorStore::Edge, "edge", _) => Ok(Box::new(EdgeBackend::open(
                &layout.index_dir().join(EDGE_DIR),
                dense,
            )?)),
            (VectorStore::Server(config), "server", Some(collection)) => Ok(Box::new(
                ServerBackend::open(config, collection, dense, fresh)?,
            )),
            (_, built, _) => Err(IndexError::StoreMismatch {
                path: layout.index_dir(),
                root: layout.root().to_owned(),
                built: match built {
                    "edge" => VectorStore::Edge.describe(None),
                    other => format!("{other} collection {}", collection.unwrap_or("?")),
                },
                configured: self.describe(collection),
            }),
        }
    }
}
