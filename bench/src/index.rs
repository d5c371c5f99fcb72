//! `fschain bench --index`: the event index. Events indexed per second for
//! each embedder (through `reindex`'s own path, on a real chain), and BM25
//! search latency at 100,000 and 1,000,000 events against an exact
//! brute-force scan of the same sparse vectors timed in the same run, with
//! recall@10 of the index against that scan.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::Result;
use fschain_index::backend::{Backend, EdgeBackend, Embedder, IndexPoint};
use fschain_index::embed::{SparseVec, TextVectors};
use fschain_index::{Embedders, EventIndex, SearchFilter, VectorStore};
use fschain_schema::{Action, ElementId, Operation, State};
use fschain_store::Chain;
use serde_json::json;

use crate::local::{cleanup, ms, new_root, pct, Rng};
use crate::report::{Report, Row};

/// Points between two optimizer runs while loading.
const OPTIMIZE_EVERY: usize = 50_000;

const KINDS: [&str; 8] = [
    "iface", "service", "file", "user", "sysctl", "ovs-port", "mount", "package",
];
const REASONS: [&str; 24] = [
    "jumbo frames for the storage VLAN",
    "hardened SSH: disabled password login",
    "disabled root login over SSH",
    "new on-call engineer account",
    "point NTP at the internal pool",
    "raised max_connections for reporting",
    "VM migrated away, port removed",
    "security update for CVE",
    "interface shut down for maintenance",
    "granted sudo to the deploy user",
    "backup mount added to fstab",
    "TLS certificate path for nginx",
    "IP forwarding disabled after audit",
    "internal DNS resolvers",
    "VXLAN overlay needs a smaller MTU",
    "rotated the log retention policy",
    "kernel upgrade after the outage review",
    "opened the metrics port for prometheus",
    "moved the database to the new volume",
    "locked account after offboarding",
    "tuned swappiness for the cache nodes",
    "pinned the package to avoid a regression",
    "added the bridge for the lab network",
    "replaced the expired certificate",
];

/// A synthetic event text: realistic words, many distinct element names
/// and values, so the vocabulary grows with the corpus as real logs do.
fn synthetic_text(rng: &mut Rng, i: usize) -> String {
    let kind = KINDS[rng.below(KINDS.len())];
    let reason = REASONS[rng.below(REASONS.len())];
    let host = rng.below(5000);
    format!(
        "{kind}:n{host}x{} patch. key{}: v{} → v{}; Reason: {reason} ticket{}. Actor: op{}@host{host}. {reason}",
        rng.below(64),
        rng.below(40),
        rng.below(100_000),
        rng.below(100_000),
        i % 20_000,
        rng.below(300),
    )
}

/// Exact BM25 over every document, with Qdrant's IDF:
/// ln(1 + (N - n + 0.5) / (n + 0.5)), times the document's weight.
struct BruteForce {
    docs: Vec<SparseVec>,
    df: HashMap<u32, u32>,
}

impl BruteForce {
    fn new(docs: Vec<SparseVec>) -> Self {
        let mut df = HashMap::new();
        for d in &docs {
            for &i in &d.indices {
                *df.entry(i).or_insert(0u32) += 1;
            }
        }
        BruteForce { docs, df }
    }

    fn score(&self, query: &SparseVec, doc: &SparseVec) -> f32 {
        let n = self.docs.len() as f32;
        let mut score = 0.0;
        for (qi, qv) in query.indices.iter().zip(&query.values) {
            if let Ok(pos) = doc.indices.binary_search(qi) {
                let df = self.df.get(qi).copied().unwrap_or(0) as f32;
                let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
                score += idf * qv * doc.values[pos];
            }
        }
        score
    }

    /// The ten best scores.
    fn top10(&self, query: &SparseVec) -> Vec<f32> {
        let mut best: Vec<f32> = Vec::with_capacity(11);
        for doc in &self.docs {
            let s = self.score(query, doc);
            if s > 0.0 && (best.len() < 10 || s > best[best.len() - 1]) {
                let at = best.partition_point(|b| *b >= s);
                best.insert(at, s);
                best.truncate(10);
            }
        }
        best
    }
}

const COMMAND: &str = "fschain-bench --dir DIR --index-only --quick --model DIR";

pub(crate) fn run(
    work: &Path,
    quick: bool,
    model: Option<&Path>,
    report: &mut Report,
) -> Result<()> {
    report.section("event index (qdrant-edge in process)", COMMAND);
    let result = run_in(work, quick, model, report);
    cleanup(work);
    result
}

fn run_in(work: &Path, quick: bool, model: Option<&Path>, report: &mut Report) -> Result<()> {
    std::fs::create_dir_all(work)?;
    // 1. Events indexed per second, per embedder, the way `reindex` does it.
    let events = if quick { 2_000 } else { 10_000 };
    let root = work.join("chain");
    let mut writer = new_root(&root, "bench")?;
    let mut rng = Rng(7);
    for i in 0..events {
        let element = ElementId::parse(&format!(
            "{}:n{}",
            KINDS[rng.below(KINDS.len())],
            rng.below(2000)
        ))?;
        let mut state = State::new();
        state.insert("v".into(), json!(i));
        state.insert("key".into(), json!(format!("value{}", rng.below(500))));
        writer.apply(Operation {
            element,
            action: Action::Set,
            state: Some(state),
            reason: Some(REASONS[rng.below(REASONS.len())].to_owned()),
            actor: Some(format!("op{}@host", rng.below(50))),
            signature: None,
        })?;
        if writer.pending_len() >= 1000 {
            writer.seal()?;
        }
    }
    writer.seal()?;
    writer.close()?;
    let chain = Chain::open(&root)?;
    let bm25 = Embedders::new(None)?;
    let rate = |embedders: &Embedders| -> Result<(u64, f64)> {
        let t = Instant::now();
        let mut index =
            EventIndex::recreate(chain.layout(), "bench", embedders, &VectorStore::Edge)?;
        let done = index.catch_up(&chain, &AtomicBool::new(false), |_, _| {})?;
        Ok((done.events, done.events as f64 / t.elapsed().as_secs_f64()))
    };
    let (n, per_sec) = rate(&bm25)?;
    report.row(Row {
        what: format!("events indexed per second, BM25 ({n} events, embed + upsert + flush)"),
        fschain: format!("{per_sec:.0}/s"),
        baseline: "–".into(),
        target: "–".into(),
        met: None,
    });
    if let Some(dir) = model {
        let both = Embedders::new(Some(dir))?;
        let (n, per_sec) = rate(&both)?;
        report.row(Row {
            what: format!("events indexed per second, BM25 + MiniLM ({n} events)"),
            fschain: format!("{per_sec:.0}/s"),
            baseline: "–".into(),
            target: "–".into(),
            met: None,
        });
    } else {
        report.note("indexing with MiniLM skipped: pass --model DIR (scripts/fetch-model.sh)");
    }

    // 2. Search latency and recall at 100k and 1M against an exact scan.
    let sizes: &[usize] = if quick {
        &[100_000]
    } else {
        &[100_000, 1_000_000]
    };
    for &size in sizes {
        search_at(work, &bm25, size, if quick { 100 } else { 200 }, report)?;
    }
    Ok(())
}

fn search_at(
    work: &Path,
    embedders: &Embedders,
    size: usize,
    queries: usize,
    report: &mut Report,
) -> Result<()> {
    let dir = work.join(format!("edge-{size}"));
    let mut backend = EdgeBackend::open(&dir, false)?;
    let mut rng = Rng(size as u64);
    let mut sparse = Vec::with_capacity(size);
    let t = Instant::now();
    let mut batch = Vec::new();
    for i in 0..size {
        let text = synthetic_text(&mut rng, i);
        let v = embedders.lexical.document(&text);
        sparse.push(v.clone());
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&(i as u64).to_be_bytes());
        batch.push(IndexPoint {
            id,
            vectors: TextVectors {
                sparse: v,
                dense: None,
            },
            payload: json!({ "chain_seq": i }),
        });
        if batch.len() == 1000 {
            backend.upsert(std::mem::take(&mut batch))?;
        }
        // As catch_up does: the appendable segment's posting lists grow by
        // insertion, so hand full segments to the optimizer as they fill.
        if (i + 1) % OPTIMIZE_EVERY == 0 {
            backend.optimize()?;
        }
    }
    backend.upsert(batch)?;
    backend.flush()?;
    backend.optimize()?;
    let load = t.elapsed();
    let exact = BruteForce::new(sparse);
    let mut ours = Vec::new();
    let mut scan = Vec::new();
    let mut found = 0usize;
    let mut wanted = 0usize;
    let mut qrng = Rng(99);
    for _ in 0..queries {
        // Queries people type: a few words of a reason, sometimes a name.
        let reason = REASONS[qrng.below(REASONS.len())];
        let words: Vec<&str> = reason.split_whitespace().collect();
        let from = qrng.below(words.len().saturating_sub(2).max(1));
        let mut text = words[from..(from + 3).min(words.len())].join(" ");
        if qrng.below(3) == 0 {
            text.push_str(&format!(" n{}", qrng.below(5000)));
        }
        let query = embedders.query(&text)?;
        let t = Instant::now();
        let hits = backend.search(&query, Embedder::Bm25, &SearchFilter::default(), 10)?;
        ours.push(t.elapsed());
        let t = Instant::now();
        let best = exact.top10(&query.sparse);
        scan.push(t.elapsed());
        // Tie-aware recall: a hit counts when its exact score reaches the
        // tenth best exact score (equal scores are interchangeable).
        let Some(&tenth) = best.last() else { continue };
        wanted += best.len();
        for h in &hits {
            let seq = h.payload["chain_seq"].as_u64().unwrap_or(u64::MAX) as usize;
            if let Some(doc) = exact.docs.get(seq) {
                if exact.score(&query.sparse, doc) >= tenth * (1.0 - 1e-4) {
                    found += 1;
                }
            }
        }
    }
    let recall = found as f64 / wanted.max(1) as f64;
    let p99 = pct(&mut ours, 99);
    report.row(Row {
        what: format!(
            "BM25 search at {size} events, p50 / p99 ({queries} queries, top 10; loaded in {:.1} s)",
            load.as_secs_f64()
        ),
        fschain: format!("{} / {}", ms(pct(&mut ours, 50)), ms(p99)),
        baseline: format!(
            "exact scan of the same vectors: {} / {}",
            ms(pct(&mut scan, 50)),
            ms(pct(&mut scan, 99))
        ),
        target: "p99 <= 10 ms".into(),
        met: Some(p99.as_secs_f64() <= 0.010),
    });
    report.row(Row {
        what: format!("BM25 recall@10 at {size} events (ties counted as equal)"),
        fschain: format!("{recall:.3}"),
        baseline: "exact scan: 1.000".into(),
        target: ">= 0.95".into(),
        met: Some(recall >= 0.95),
    });
    Ok(())
}
