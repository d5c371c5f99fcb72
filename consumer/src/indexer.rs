//! A site's event indexes follow its verified blocks on a thread of their
//! own, so embedding never holds up replication: the ingest loop names the
//! chain that moved and goes on; the thread catches that chain's index up
//! to whatever head it finds. Each index records the height it holds, so
//! nothing is lost when the thread is behind, stopped or killed: the next
//! catch-up (or `fschain search`, or `reindex`) starts from there.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fschain_index::{Embedders, EventIndex, IndexError, VectorStore};
use fschain_store::{Chain, RootLayout, StoreError};
use tracing::warn;

use crate::ConsumerError;

/// The indexing thread of a site.
pub struct SiteIndexer {
    queue: Option<Sender<RootLayout>>,
    worker: Option<JoinHandle<()>>,
    indexed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for SiteIndexer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteIndexer")
            .field("indexed", &self.indexed.load(Ordering::Relaxed))
            .field("running", &self.worker.is_some())
            .finish()
    }
}

impl SiteIndexer {
    /// Starts the thread; it embeds with `embedders` and keeps vectors in
    /// `store`.
    pub fn start(embedders: Embedders, store: VectorStore) -> Result<Self, ConsumerError> {
        let (queue, moved) = channel();
        let indexed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let worker = {
            let (indexed, stop) = (indexed.clone(), stop.clone());
            std::thread::Builder::new()
                .name("fschain-index".into())
                .spawn(move || follow(&embedders, &store, &moved, &indexed, &stop))
                .map_err(|e| {
                    StoreError::io(std::path::Path::new("(starting the indexing thread)"), e)
                })?
        };
        Ok(SiteIndexer {
            queue: Some(queue),
            worker: Some(worker),
            indexed,
            stop,
        })
    }

    /// Says that the chain at `layout` has new verified blocks.
    pub fn chain_moved(&self, layout: &RootLayout) {
        if let Some(queue) = &self.queue {
            // A send fails only when the thread is gone (it panicked); the
            // index then waits for `search` or `reindex` to catch up.
            let _ = queue.send(layout.clone());
        }
    }

    /// Events indexed so far.
    pub fn indexed(&self) -> u64 {
        self.indexed.load(Ordering::Relaxed)
    }

    /// Waits until every chain named so far is indexed up to its head, and
    /// ends the thread.
    pub fn finish(&mut self) {
        self.queue = None;
        if let Some(worker) = self.worker.take() {
            if worker.join().is_err() {
                warn!("the indexing thread panicked; `fschain search` catches the index up");
            }
        }
    }
}

impl Drop for SiteIndexer {
    /// Stops at the next block boundary; what is indexed is recorded.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.finish();
    }
}

/// How long an index stays open with no new block before it is closed,
/// and the longest it stays open while blocks keep coming. Opening a
/// qdrant-edge shard costs about 100 ms of CPU, too much to pay per block;
/// closing it releases the index's lock, which `fschain search` on the
/// site waits for.
const KEEP_IDLE: Duration = Duration::from_millis(500);
const KEEP_AT_MOST: Duration = Duration::from_secs(5);

/// The indexes the thread holds open, by chain root, with when each opened.
type OpenIndexes<'e> = HashMap<PathBuf, (EventIndex<'e>, Instant)>;

fn follow(
    embedders: &Embedders,
    store: &VectorStore,
    moved: &Receiver<RootLayout>,
    indexed: &AtomicU64,
    stop: &AtomicBool,
) {
    let mut open = OpenIndexes::new();
    loop {
        let first = if open.is_empty() {
            match moved.recv() {
                Ok(layout) => layout,
                Err(_) => return,
            }
        } else {
            match moved.recv_timeout(KEEP_IDLE) {
                Ok(layout) => layout,
                Err(RecvTimeoutError::Timeout) => {
                    open.clear();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        };
        // Many blocks may have landed while the last catch-up ran: one
        // catch-up per chain takes them all.
        let mut pending = BTreeMap::from([(first.root().to_owned(), first)]);
        pending.extend(moved.try_iter().map(|l| (l.root().to_owned(), l)));
        for layout in pending.values() {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match catch_up(embedders, store, layout, stop, &mut open) {
                Ok(events) => {
                    indexed.fetch_add(events, Ordering::Relaxed);
                }
                Err(e) => {
                    warn!(root = %layout.root().display(), error = %e, "could not index the new blocks; the next block or `fschain search` catches up")
                }
            }
        }
        open.retain(|_, (_, since)| since.elapsed() < KEEP_AT_MOST);
    }
}

fn catch_up<'e>(
    embedders: &'e Embedders,
    store: &VectorStore,
    layout: &RootLayout,
    stop: &AtomicBool,
    open: &mut OpenIndexes<'e>,
) -> Result<u64, IndexError> {
    let chain = Chain::open(layout.root())?;
    let index = match open.entry(layout.root().to_owned()) {
        Entry::Occupied(held) => &mut held.into_mut().0,
        Entry::Vacant(slot) => {
            let index =
                EventIndex::open(layout, chain.meta().chain.as_str(), embedders, store, true)?;
            &mut slot.insert((index, Instant::now())).0
        }
    };
    let caught_up = index.catch_up(&chain, stop, |_, _| {});
    if caught_up.is_err() {
        // Opened again next time, from what its files say.
        open.remove(layout.root());
    }
    Ok(caught_up?.events)
}
