//! The host commands: watch, drift, restore.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fschain_host::config::InterfacesConfig;
use fschain_host::reconcile::{compare, Change};
use fschain_host::restore::{self, Step};
use fschain_host::watch::{self, ChangesBySource, WatchOptions};
use fschain_host::{head_states, HostError, Sources, SourcesConfig};
use fschain_producer::outbox::StreamPolicy;
use fschain_producer::publish::{publish_pending, Publisher};
use fschain_producer::{load_signing_key, ChainWriter};
use fschain_schema::{BlockRef, ElementId};
use serde_json::{json, Value};

use crate::cli::{HostCommand, KafkaArgs, SourcesArg};
use crate::context::{
    open_chain, open_writer, print_json, root_dir, serve_metrics, target, Invocation,
};
use crate::progress::{Progress, Unit};

pub(crate) fn run(command: HostCommand, inv: &Invocation) -> Result<ExitCode> {
    match command {
        HostCommand::Watch {
            root,
            sources,
            brokers,
            prefix,
            block_interval,
            block_ops,
            once,
            metrics,
        } => {
            let root = root_dir(&root, inv)?;
            let mut sources = load_sources(&sources, inv)?;
            // --once is a scan someone waits for: show how far it got.
            let bar = std::sync::Arc::new(std::sync::Mutex::new(Progress::new(
                "watch --once: files read",
                Unit::Files,
                None,
            )));
            if let (true, Some(files)) = (once, sources.files.as_mut()) {
                let bar = bar.clone();
                files.set_progress(std::sync::Arc::new(move |n, total| {
                    if let Ok(mut bar) = bar.lock() {
                        bar.set_total(total);
                        bar.set(n, "");
                    }
                }));
            }
            let options = WatchOptions {
                block_interval: Duration::from_millis(block_interval),
                block_ops: block_ops.max(1),
                once,
                host: inv.hostname.clone(),
            };
            let kafka = brokers.map(|b| KafkaArgs {
                brokers: Some(b),
                prefix,
            });
            let metrics = serve_metrics(&metrics, inv)?;
            let outcome = watch(
                &root,
                &sources,
                &options,
                kafka.as_ref(),
                metrics.as_deref(),
                inv,
            );
            drop(sources);
            if let Some(bar) = std::sync::Arc::into_inner(bar).and_then(|m| m.into_inner().ok()) {
                bar.finish();
            }
            outcome
        }
        HostCommand::Drift {
            root,
            sources,
            json,
        } => {
            let root = root_dir(&root, inv)?;
            let sources = load_sources(&sources, inv)?;
            drift(&root, &sources, json.json)
        }
        HostCommand::Restore {
            root,
            sources,
            elements,
            at,
            dry_run,
            reason,
        } => {
            let root = root_dir(&root, inv)?;
            let sources = load_sources(&sources, inv)?;
            restore_elements(&root, &sources, &elements, &at, dry_run, reason, inv)
        }
    }
}

fn load_sources(arg: &SourcesArg, inv: &Invocation) -> Result<Sources> {
    let mut config = match (&arg.sources, &inv.settings.sources) {
        (Some(path), _) => SourcesConfig::read(path)?,
        (None, Some(config)) => config.clone(),
        (None, None) => SourcesConfig::default(),
    };
    if let Some(netns) = &arg.netns {
        // Added to what is configured, the default files included.
        config.files = config.files_or_default();
        config.interfaces = Some(InterfacesConfig {
            netns: Some(netns.clone()),
        });
    }
    Ok(Sources::new(&config)?)
}

fn writer(root: &Path) -> Result<ChainWriter> {
    open_writer(root).map_err(|e| {
        let locked = e.chain().any(|c| {
            matches!(
                c.downcast_ref(),
                Some(fschain_producer::ProducerError::Store(
                    fschain_store::StoreError::Locked { .. }
                ))
            )
        });
        if locked {
            e.context("another fschain process (a watch, an agent or a restore) is writing this root; one root has one writer")
        } else {
            e
        }
    })
}

fn watch(
    root: &Path,
    sources: &Sources,
    options: &WatchOptions,
    kafka: Option<&KafkaArgs>,
    metrics: Option<&fschain_metrics::Metrics>,
    inv: &Invocation,
) -> Result<ExitCode> {
    let mut writer = writer(root)?;
    let publishing = match kafka {
        Some(kafka) => {
            let target = target(kafka, inv)?;
            let key = load_signing_key(writer.layout())?;
            fschain_producer::diverged::check_root(writer.layout(), &target, &key)?;
            let publisher = Publisher::new(&target)?;
            let policy = StreamPolicy {
                checkpoint_origin: crate::context::checkpoint_origin(inv),
                ..StreamPolicy::default()
            };
            publish_pending(writer.layout(), &publisher, &policy, &key)?;
            Some((publisher, key, policy))
        }
        None => None,
    };
    let mut after_seal = |w: &ChainWriter, changes: &ChangesBySource| -> Result<(), HostError> {
        if let Some(m) = metrics {
            m.sealed(w.chain().as_str(), w.head().height, w.head().event_count);
            for (source, n) in changes {
                m.watch_changes
                    .get_or_create(&fschain_metrics::SourceLabel {
                        source: (*source).to_owned(),
                    })
                    .inc_by(*n);
            }
        }
        if w.head().event_count >= LARGE_BLOCK_EVENTS {
            release_freed_memory();
        }
        if let Some((publisher, key, policy)) = &publishing {
            publish_pending(w.layout(), publisher, policy, key)?;
        }
        Ok(())
    };
    let summary = watch::run(
        &mut writer,
        sources,
        options,
        &mut after_seal,
        &inv.shutdown,
    )
    .with_context(|| format!("watching for {}", root.display()))?;
    writer.close()?;
    eprintln!(
        "watch: {} changes found at start, {} recorded while watching, {} blocks, {} rescans",
        summary.caught_up, summary.recorded, summary.blocks, summary.rescans
    );
    Ok(ExitCode::SUCCESS)
}

/// A block this large (a first scan, a rescan, an upgrade) freed far more
/// than a watch at rest needs again.
const LARGE_BLOCK_EVENTS: u64 = 1000;

/// Hands what a large block freed back to the system: mimalloc would keep
/// it until this process next allocates much, and a watch at rest hardly
/// allocates at all.
#[allow(unsafe_code)]
fn release_freed_memory() {
    // SAFETY: mi_collect takes no pointer; it only returns free pages of
    // the global allocator (mimalloc, see main.rs) to the system.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

fn drift(root: &Path, sources: &Sources, as_json: bool) -> Result<ExitCode> {
    let chain = open_chain(root)?;
    let head = chain.layout().snapshot(chain.head().height);
    let known = head_states(&head, |e| sources.owns(e))?;
    let mut problems = Vec::new();
    let observed = sources.scan(&mut problems);
    for p in &problems {
        eprintln!("fschain: warning: {p}");
    }
    let changes = compare(&known, &observed, |e| sources.owns(e));
    if as_json {
        let list: Vec<Value> = changes
            .iter()
            .map(|(e, c)| json!({ "element": e, "change": c.sign().to_string(), "keys": keys(c) }))
            .collect();
        print_json(&json!({ "head": chain.head().height, "changes": list }));
    } else {
        for (element, c) in &changes {
            match c {
                Change::Changed { keys, .. } => println!("~ {element} ({})", keys.join(", ")),
                other => println!("{} {element}", other.sign()),
            }
        }
    }
    Ok(if changes.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn keys(c: &Change) -> Vec<String> {
    match c {
        Change::Added { state } => state.keys().cloned().collect(),
        Change::Changed { keys, .. } => keys.clone(),
        Change::Removed { old } => old.keys().cloned().collect(),
    }
}

fn restore_elements(
    root: &Path,
    sources: &Sources,
    elements: &[String],
    at: &str,
    dry_run: bool,
    reason: Option<String>,
    inv: &Invocation,
) -> Result<ExitCode> {
    let chain = open_chain(root)?;
    let height = chain.resolve(&BlockRef::parse(at)?)?;
    let hash = chain.headers()[height as usize].hash;
    // Every element is checked before anything is written.
    let mut plan: Vec<(ElementId, Step)> = Vec::new();
    for text in elements {
        let element = ElementId::parse(text)?;
        let recorded = chain.state_at(&element, height)?;
        let current = restore::current(sources, &element)?;
        if recorded.is_none() && current.is_none() {
            bail!("{element} exists neither at block {height} nor on the host");
        }
        let step = restore::plan(sources, &element, recorded.as_ref(), current.as_ref())?;
        plan.push((element, step));
    }
    drop(chain);
    for (element, step) in &plan {
        println!("{element}: {}", step.describe());
    }
    if dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    let mut writer = writer(root)?;
    let reason = reason
        .unwrap_or_else(|| format!("restored from block {height} ({}) by {}", hash, inv.actor));
    for (element, step) in &plan {
        restore::apply(sources, step).with_context(|| format!("restoring {element}"))?;
        // Recorded as observed after the write: the chain says what the
        // host now has.
        let now = restore::current(sources, element)?;
        let op = fschain_schema::Operation {
            element: element.clone(),
            action: if now.is_some() {
                fschain_schema::Action::Set
            } else {
                fschain_schema::Action::Delete
            },
            state: now,
            reason: Some(reason.clone()),
            actor: Some(inv.actor.clone()),
            signature: None,
        };
        // Recorded even when the chain already held this state: the
        // restore itself is part of the history.
        writer.apply(op)?;
    }
    match writer.seal()? {
        Some(block) => println!("sealed block {} {}", block.header.height, block.header.hash),
        None => println!("nothing to record"),
    }
    writer.close()?;
    Ok(ExitCode::SUCCESS)
}
