//! Search quality on the vendored sample (`tests/data/`): recall@5 and
//! MRR of each ranking, on the lexical queries and on the paraphrases
//! people write, over the 2,000 sample operations sealed on a real chain.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result};
use fschain_index::{Embedders, EventIndex, Ranking, SearchFilter, VectorStore};
use fschain_schema::Operation;
use fschain_store::Chain;
use serde::Deserialize;

use crate::local::{cleanup, new_root};
use crate::report::{Report, Row};

const COMMAND: &str = "fschain-bench --dir DIR --quick --quality-only --model DIR";

/// One query and the reasons of the events a person expects among the top
/// hits.
#[derive(Debug, Deserialize)]
pub(crate) struct Query {
    pub(crate) query: String,
    pub(crate) expect_reason: Vec<String>,
}

/// The vendored data, found from the source tree the bench was built in.
fn data(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data")
        .join(name)
}

pub(crate) fn queries(name: &str) -> Result<Vec<Query>> {
    let path = data(name);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("{}: {l}", path.display())))
        .collect()
}

/// Recall@5 and MRR (over the top 10) of `ranking` on `queries`.
pub(crate) fn measure(
    index: &EventIndex<'_>,
    ranking: Ranking,
    queries: &[Query],
) -> Result<(f64, f64)> {
    let mut found = 0usize;
    let mut reciprocal = 0.0;
    for q in queries {
        let hits = index.search(&q.query, ranking, &SearchFilter::default(), 10)?;
        let rank = hits.iter().position(|h| {
            h.payload
                .get("reason")
                .and_then(|r| r.as_str())
                .is_some_and(|r| q.expect_reason.iter().any(|e| e == r))
        });
        if let Some(r) = rank {
            reciprocal += 1.0 / (r + 1) as f64;
            if r < 5 {
                found += 1;
            }
        }
    }
    let n = queries.len().max(1) as f64;
    Ok((found as f64 / n, reciprocal / n))
}

pub(crate) fn run(work: &Path, model: &Path, report: &mut Report) -> Result<()> {
    std::fs::create_dir_all(work)?;
    let result = run_in(work, model, report);
    cleanup(work);
    result
}

fn run_in(work: &Path, model: &Path, report: &mut Report) -> Result<()> {
    report.section("search quality (the 2,000 sample operations)", COMMAND);
    let root = work.join("sample");
    let mut writer = new_root(&root, "host1")?;
    let ops = std::fs::read_to_string(data("ops-sample.jsonl"))?;
    for line in ops.lines().filter(|l| !l.trim().is_empty()) {
        writer.apply(Operation::from_json(line)?)?;
        if writer.pending_len() >= 100 {
            writer.seal()?;
        }
    }
    writer.seal()?;
    writer.close()?;
    let chain = Chain::open(&root)?;
    let embedders = Embedders::new(Some(model))?;
    let mut index = EventIndex::recreate(chain.layout(), "bench", &embedders, &VectorStore::Edge)?;
    index.catch_up(&chain, &AtomicBool::new(false), |_, _| {})?;
    let lexical = queries("search-queries.jsonl")?;
    let paraphrases = queries("paraphrase-queries.jsonl")?;
    let bm25_lexical = measure(&index, Ranking::Bm25, &lexical)?;
    for (name, ranking) in [
        ("BM25", Ranking::Bm25),
        ("MiniLM", Ranking::MiniLm),
        ("fused", Ranking::Fused),
    ] {
        for (set, qs, target) in [
            ("lexical", &lexical, None),
            ("paraphrased", &paraphrases, Some(0.85)),
        ] {
            let (recall, mrr) = measure(&index, ranking, qs)?;
            let fused = ranking == Ranking::Fused;
            let (target_text, met) = match (fused, target) {
                (true, Some(t)) => (format!("recall@5 >= {t:.2}"), Some(recall >= t)),
                (true, None) => (
                    format!("recall@5 >= BM25's {:.2}", bm25_lexical.0),
                    Some(recall >= bm25_lexical.0),
                ),
                _ => ("–".to_owned(), None),
            };
            report.row(Row {
                what: format!("{name}, {} {set} queries: recall@5, MRR", qs.len()),
                fschain: format!("{recall:.2}, {mrr:.2}"),
                baseline: if fused {
                    format!(
                        "BM25 on the lexical queries: {:.2}, {:.2}",
                        bm25_lexical.0, bm25_lexical.1
                    )
                } else {
                    "–".into()
                },
                target: target_text,
                met,
            });
        }
    }
    Ok(())
}
