//! The index commands: reindex and search.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use fschain_index::{Embedders, EventIndex, SearchFilter, SearchHit, ServerConfig, VectorStore};
use fschain_schema::{BlockRef, ElementId, Timestamp};
use fschain_store::layout::ROOT_MARKER;
use fschain_store::RootLayout;

use crate::cli::{IndexArgs, RootArg, SearchArgs, SearchCommand};
use crate::context::{open_chain, root_dir, Invocation};
use crate::progress::{Progress, Unit};

/// Runs one of the search commands.
pub(crate) fn run(command: SearchCommand, inv: &Invocation) -> Result<ExitCode> {
    match command {
        SearchCommand::Reindex { root, index, json } => reindex(&root, &index, json.json, inv),
        SearchCommand::Search { root, args, index } => search(&root, &args, &index, inv),
    }
}

pub(crate) fn embedders(args: &IndexArgs, inv: &Invocation) -> Result<Embedders> {
    let dir = args
        .model_dir
        .clone()
        .or_else(|| inv.settings.model_dir.clone());
    Ok(Embedders::new(dir.as_deref())?)
}

/// Where the index keeps its vectors: a Qdrant server when one is
/// configured, else qdrant-edge in process. `site` names the default
/// collection prefix.
pub(crate) fn vector_store(args: &IndexArgs, site: Option<&str>, inv: &Invocation) -> VectorStore {
    let s = &inv.settings;
    let Some(url) = args.qdrant_url.clone().or_else(|| s.qdrant_url.clone()) else {
        return VectorStore::Edge;
    };
    VectorStore::Server(ServerConfig {
        url,
        api_key: args
            .qdrant_api_key
            .clone()
            .or_else(|| s.qdrant_api_key.clone()),
        collection_prefix: args
            .qdrant_prefix
            .clone()
            .or_else(|| s.qdrant_prefix.clone())
            .unwrap_or_else(|| match site {
                Some(site) => format!("fschain-{site}-"),
                None => "fschain-".to_owned(),
            }),
    })
}

pub(crate) fn reindex(
    root: &RootArg,
    args: &IndexArgs,
    json: bool,
    inv: &Invocation,
) -> Result<ExitCode> {
    let root = root_dir(root, inv)?;
    let embedders = embedders(args, inv)?;
    let chain = open_chain(&root)?;
    let started = std::time::Instant::now();
    let store = vector_store(args, inv.settings.site.as_deref(), inv);
    let mut index = EventIndex::recreate(
        chain.layout(),
        chain.meta().chain.as_str(),
        &embedders,
        &store,
    )
    .with_context(|| format!("creating the index of {}", root.display()))?;
    let mut bar = Progress::new("reindex", Unit::Blocks, Some(chain.head().height + 1));
    let done = index.catch_up(&chain, &inv.shutdown, |height, _| {
        bar.set(height + 1, "");
    })?;
    bar.finish();
    let secs = started.elapsed().as_secs_f64();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "chain": chain.meta().chain.as_str(),
                "blocks": done.blocks,
                "events": done.events,
                "indexed_height": done.indexed_height,
                "embedders": embedders.ids(),
                "seconds": secs,
            })
        );
    } else {
        println!(
            "indexed {} events of {} blocks of {} with {} in {secs:.1} s",
            done.events,
            done.blocks,
            chain.meta().chain,
            embedders.ids().join(" + ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The chain roots a search covers: ROOT itself, or every chain of a site.
fn chain_roots(root: &Path, only: Option<&str>) -> Result<Vec<PathBuf>> {
    if root.join(ROOT_MARKER).exists() {
        return Ok(vec![root.to_owned()]);
    }
    let mut roots = Vec::new();
    let entries = std::fs::read_dir(root).with_context(|| format!("reading {}", root.display()))?;
    for entry in entries {
        let path = entry
            .with_context(|| format!("reading {}", root.display()))?
            .path();
        if path.join(ROOT_MARKER).exists()
            && only.is_none_or(|c| path.file_name().is_some_and(|n| n == c))
        {
            roots.push(path);
        }
    }
    roots.sort();
    if roots.is_empty() {
        match only {
            Some(c) => bail!("{} holds no chain {c}", root.display()),
            None => bail!(
                "{} is neither an fschain root nor a site holding chains",
                root.display()
            ),
        }
    }
    Ok(roots)
}

pub(crate) fn search(
    root: &RootArg,
    args: &SearchArgs,
    index: &IndexArgs,
    inv: &Invocation,
) -> Result<ExitCode> {
    let root = root_dir(root, inv)?;
    if args.limit == 0 {
        bail!("--limit must be at least 1");
    }
    let embedders = embedders(index, inv)?;
    let store = vector_store(index, inv.settings.site.as_deref(), inv);
    let time = |t: &Option<String>, flag: &str| -> Result<Option<i64>> {
        t.as_deref()
            .map(|t| {
                Timestamp::parse_rfc3339(t)
                    .map(Timestamp::as_micros)
                    .with_context(|| format!("{flag} {t:?} is not an RFC 3339 time"))
            })
            .transpose()
    };
    if let Some(e) = &args.element {
        ElementId::parse(e).with_context(|| format!("--element {e:?}"))?;
    }
    let at = args.at.as_deref().map(BlockRef::parse).transpose()?;
    let mut base = SearchFilter {
        element: args.element.clone(),
        kind: args.kind.clone(),
        max_height: None,
        since_us: time(&args.since, "--since")?,
        until_us: time(&args.until, "--until")?,
    };
    let mut hits: Vec<SearchHit> = Vec::new();
    for chain_root in chain_roots(&root, args.chain.as_deref())? {
        let chain = open_chain(&chain_root)?;
        let at_height = at.as_ref().map(|r| chain.resolve(r)).transpose()?;
        base.max_height = at_height;
        let layout = RootLayout::new(&chain_root);
        let mut index = EventIndex::open(
            &layout,
            chain.meta().chain.as_str(),
            &embedders,
            &store,
            false,
        )?;
        // A site indexes as blocks arrive; a producer's index may lag its
        // head, and an index is cheap to bring level before reading it.
        index.catch_up(&chain, &inv.shutdown, |_, _| {})?;
        for found in index.search(&args.query, args.ranking(), &base, args.limit)? {
            let mut hit = SearchHit::from_payload(found)?;
            if let Some(h) = at_height {
                hit = hit.with_state_at(&chain, h)?;
            }
            if args.proof {
                hit = hit.with_proof(&chain)?;
            }
            hits.push(hit);
        }
    }
    hits.sort_by(|a, b| b.score.total_cmp(&a.score));
    hits.truncate(args.limit);
    if args.json.json {
        println!("{}", serde_json::to_string_pretty(&hits)?);
    } else if hits.is_empty() {
        println!("no events match");
    } else {
        for hit in &hits {
            print_hit(hit);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_hit(hit: &SearchHit) {
    let changed: Vec<String> = hit.changes.iter().map(|c| c.describe()).collect();
    println!(
        "{:.4}  {} block {}  {}  {} {}",
        hit.score, hit.chain, hit.height, hit.time, hit.action, hit.element
    );
    if !changed.is_empty() {
        println!("        changed: {}", changed.join("; "));
    }
    if let Some(reason) = &hit.reason {
        println!("        reason:  {reason}");
    }
    if let Some(actor) = &hit.actor {
        println!("        actor:   {actor}");
    }
    if let Some(signer) = &hit.signer {
        println!("        signed:  {signer}");
    }
    println!("        event:   {}", hit.event_hash);
    if let Some(at) = &hit.state_at {
        let state = at.state.as_ref().map_or_else(
            || "(absent)".to_owned(),
            |s| serde_json::Value::Object(s.clone()).to_string(),
        );
        println!("        state at block {}: {state}", at.height);
    }
    if let Some(p) = &hit.proof {
        println!(
            "        proof:   leaf {} of {}, {} hashes to events root {}; manifest {}",
            p.leaf_index,
            p.tree_size,
            p.path.len(),
            p.header
                .get("events_root")
                .and_then(|v| v.as_str())
                .unwrap_or("?"),
            if p.manifest.is_some() {
                "signed"
            } else {
                "not published yet"
            }
        );
    }
}
