//! The replication commands: key, topics, agent, publish, consume, replay,
//! export, import.

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use fschain_consumer::kafka::{ConsumeOptions, ConsumeSummary, KafkaSource};
use fschain_consumer::{Ingest, Site};
use fschain_producer::agent::{run_agent, AgentEvent, AgentOptions, OpRejection};
use fschain_producer::outbox::StreamPolicy;
use fschain_producer::publish::{publish_pending, Publisher};
use fschain_producer::{create_signing_key, load_signing_key, ChainWriter, Clock, SystemClock};
use fschain_schema::wire::PublicKey;
use fschain_schema::{BlockRef, ChainName};
use fschain_store::{Chain, RootLayout};

use crate::cli::{
    KafkaArgs, KeyAction, MetricsArg, ReplicationCommand, SiteArgs, StreamArgs, TopicsAction,
};
use crate::context::{
    brokers, extra, head_sealed_micros, log_origin, open_chain, parse_size, root_dir,
    serve_metrics, signature_policy, target, topics, trusted_keys, Invocation, RetentionRun,
};
use crate::progress::{Progress, Unit};

/// Runs one of the replication commands.
pub(crate) fn run(command: ReplicationCommand, inv: &Invocation) -> Result<ExitCode> {
    match command {
        ReplicationCommand::Key { action } => key(action, inv),
        ReplicationCommand::Topics { action } => topics_cmd(action, inv),
        ReplicationCommand::Agent {
            root,
            kafka,
            chain,
            block_ops,
            block_interval,
            stream,
            until_idle,
            metrics,
        } => {
            let root = root_dir(&root, inv)?;
            let options = fschain_producer::agent::AgentOptions {
                block_ops: block_ops.max(1),
                block_interval: std::time::Duration::from_millis(block_interval),
                policy: policy(&stream, inv)?,
                until_idle,
                signatures: signature_policy(inv)?,
            };
            agent(&root, &kafka, chain, options, &metrics, inv)
        }
        ReplicationCommand::Submit {
            chain,
            kafka,
            file,
            sign,
        } => submit(&chain, &kafka, &file, sign.as_deref(), inv),
        ReplicationCommand::Publish {
            root,
            kafka,
            stream,
        } => {
            let root = root_dir(&root, inv)?;
            publish(&root, &kafka, &stream, inv)
        }
        ReplicationCommand::Consume {
            site,
            kafka,
            chains,
            until_idle,
            metrics,
        } => consume(&site, &kafka, &chains, until_idle, &metrics, inv),
        ReplicationCommand::Replay {
            site,
            kafka,
            chains,
        } => replay(&site, &kafka, &chains, inv),
        ReplicationCommand::Export {
            root,
            from,
            to,
            output,
            raw,
            stream,
        } => {
            let root = root_dir(&root, inv)?;
            export(&root, from.as_deref(), &to, &output, raw, &stream, inv)
        }
        ReplicationCommand::Import { site, file } => import(&site, &file, inv),
    }
}

pub(crate) fn key(action: KeyAction, inv: &Invocation) -> Result<ExitCode> {
    match action {
        KeyAction::Show {
            root,
            site: Some(site),
            ..
        } => {
            let key = site_witness_key(&root_dir(&root, inv)?)?;
            let witness =
                fschain_schema::note::Witness::new(&witness_name(inv, &site), key.public())?;
            println!("{}", witness.to_vkey());
        }
        KeyAction::Show { root, vkey, .. } => {
            let layout = RootLayout::new(root_dir(&root, inv)?);
            let meta = layout.read_marker()?;
            let key = load_signing_key(&layout)?;
            if vkey {
                let origin = log_origin(inv, &meta.chain);
                let verifier = fschain_schema::note::Verifier::new(&origin, key.public())?;
                println!("{}", verifier.to_vkey());
            } else {
                println!("{}", key.public());
            }
        }
        KeyAction::Create { root } => {
            let layout = RootLayout::new(root_dir(&root, inv)?);
            layout.read_marker()?;
            println!("{}", create_signing_key(&layout)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn policy(args: &StreamArgs, inv: &Invocation) -> Result<StreamPolicy> {
    let chunk = parse_size(&args.chunk_size)?;
    if !(1024..=u64::from(fschain_schema::wire::MAX_CHUNK_LEN)).contains(&chunk) {
        bail!("--chunk-size must be between 1K and 16M");
    }
    Ok(StreamPolicy {
        checkpoint_every: args.checkpoint_every,
        chunk_size: chunk as u32,
        checkpoint_origin: crate::context::checkpoint_origin(inv),
        ..StreamPolicy::default()
    })
}

pub(crate) fn topics_cmd(action: TopicsAction, inv: &Invocation) -> Result<ExitCode> {
    let TopicsAction::Create {
        kafka,
        partitions,
        replication,
    } = action;
    let created = fschain_producer::topics::create_topics(
        &brokers(&kafka, inv)?,
        &topics(&kafka, inv),
        partitions,
        replication,
        &extra(inv),
    )?;
    for (name, new) in created {
        println!("{name}: {}", if new { "created" } else { "exists" });
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn agent(
    root: &Path,
    kafka: &KafkaArgs,
    chain: Option<String>,
    options: AgentOptions,
    metrics: &MetricsArg,
    inv: &Invocation,
) -> Result<ExitCode> {
    let mut writer = ChainWriter::open(RootLayout::new(root))
        .with_context(|| format!("opening {}", root.display()))?;
    if let Some(c) = chain {
        let c = ChainName::parse(&c)?;
        if &c != writer.chain() {
            bail!("{} holds chain {}, not {c}", root.display(), writer.chain());
        }
    }
    let key = load_signing_key(writer.layout())?;
    let metrics = serve_metrics(metrics, inv)?;
    if let Some(m) = &metrics {
        for why in OpRejection::ALL {
            m.operations_rejected
                .get_or_create(&fschain_metrics::ReasonLabel {
                    reason: why.as_str().into(),
                })
                .inc_by(0);
        }
    }
    let mut retention = RetentionRun::new(inv);
    let summary = run_agent(
        &mut writer,
        &target(kafka, inv)?,
        &options,
        &key,
        &inv.shutdown,
        &mut |w, event| {
            let done = match event {
                AgentEvent::Rejected(why) => {
                    if let Some(m) = &metrics {
                        m.operations_rejected
                            .get_or_create(&fschain_metrics::ReasonLabel {
                                reason: why.as_str().into(),
                            })
                            .inc();
                    }
                    return;
                }
                AgentEvent::Sealed(done) => done,
            };
            retention.after_block(w.layout());
            if let Some(m) = &metrics {
                m.sealed(w.chain().as_str(), w.head().height, w.head().event_count);
                let label = fschain_metrics::ChainLabel {
                    chain: w.chain().to_string(),
                };
                m.seal_duration
                    .get_or_create(&label)
                    .observe(done.seal.as_secs_f64());
                if let Some((took, summary)) = &done.published {
                    m.publish_duration
                        .get_or_create(&label)
                        .observe(took.as_secs_f64());
                    m.blocks_published
                        .get_or_create(&label)
                        .inc_by(summary.blocks);
                    m.published_bytes
                        .get_or_create(&label)
                        .inc_by(summary.bytes);
                }
                if let Ok(Some(p)) = fschain_producer::outbox::published_height(w.layout()) {
                    m.published_height
                        .get_or_create(&label)
                        .set(i64::try_from(p).unwrap_or(i64::MAX));
                }
            }
        },
    )?;
    writer.close()?;
    eprintln!(
        "agent: applied {} operations in {} blocks, rejected {}",
        summary.applied, summary.blocks, summary.rejected
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn submit(
    chain: &str,
    kafka: &KafkaArgs,
    file: &str,
    sign: Option<&Path>,
    inv: &Invocation,
) -> Result<ExitCode> {
    let chain = ChainName::parse(chain)?;
    let mut input: Box<dyn std::io::BufRead> = if file == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(file).with_context(|| format!("opening {file}"))?,
        ))
    };
    if let Some(key) = sign {
        let mut signed = Vec::new();
        crate::signing::sign_lines(input, key, &mut signed)?;
        input = Box::new(std::io::Cursor::new(signed));
    }
    let publisher = Publisher::new(&target(kafka, inv)?)?;
    let n = fschain_producer::publish::submit_operations(&publisher, &chain, &mut input)
        .with_context(|| format!("submitting {file}"))?;
    println!(
        "submitted {n} operations for chain {chain} to {}",
        publisher.topics().ops
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn publish(
    root: &Path,
    kafka: &KafkaArgs,
    stream: &StreamArgs,
    inv: &Invocation,
) -> Result<ExitCode> {
    let layout = RootLayout::new(root);
    // Publishing reads sealed snapshots only, but recovers a crashed seal
    // first and keeps other writers out while it records progress.
    fschain_producer::recover_if_interrupted(&layout)?;
    let _lock = fschain_store::layout::lock(&layout)?;
    let key = load_signing_key(&layout)?;
    let target = target(kafka, inv)?;
    fschain_producer::diverged::check_root(&layout, &target, &key)?;
    let publisher = Publisher::new(&target)?;
    let summary = publish_pending(&layout, &publisher, &policy(stream, inv)?, &key)?;
    println!(
        "published {} blocks ({} events, {} chunks, {} bytes); head {}",
        summary.blocks, summary.events, summary.chunks, summary.bytes, summary.head
    );
    Ok(ExitCode::SUCCESS)
}

fn trusted(site: &SiteArgs, inv: &Invocation) -> Result<Vec<PublicKey>> {
    trusted_keys(&site.trust, inv)
}

/// The name a site cosigns as: `<checkpoint_origin>/site/<site>`.
fn witness_name(inv: &Invocation, site: &str) -> String {
    format!("{}/site/{site}", crate::context::checkpoint_origin(inv))
}

/// The site's witness key (made on first use, in `<site>/meta/`).
fn site_witness_key(root: &Path) -> Result<fschain_schema::wire::SigningKey> {
    let layout = RootLayout::new(root);
    std::fs::create_dir_all(layout.meta_dir())
        .with_context(|| format!("creating {}", layout.meta_dir().display()))?;
    // Two members of one site may start together: whichever makes the key
    // first, both use it.
    if !layout.signing_key().exists() {
        if let Err(e) = create_signing_key(&layout) {
            if !layout.signing_key().exists() {
                return Err(e.into());
            }
        }
    }
    Ok(load_signing_key(&layout)?)
}

fn open_ingest(
    site: &SiteArgs,
    chains: &[String],
    witness: bool,
    inv: &Invocation,
) -> Result<Ingest> {
    let name = site
        .site
        .clone()
        .or_else(|| inv.settings.site.clone())
        .ok_or_else(|| anyhow!("no site given: pass --site NAME or set FSCHAIN_SITE"))?;
    let root = root_dir(&site.root, inv)?;
    let opened =
        Site::open(&root, &name).with_context(|| format!("opening site {}", root.display()))?;
    let chains = chains
        .iter()
        .map(|c| ChainName::parse(c))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ingest = Ingest::new(opened, trusted(site, inv)?)?.only_chains(chains);
    if witness {
        let key = site_witness_key(&root)?;
        ingest = ingest.with_witness(fschain_consumer::witness::SiteWitness::new(
            root.clone(),
            &witness_name(inv, &name),
            key,
        )?);
    }
    if site.no_index {
        return Ok(ingest);
    }
    let store = crate::search::vector_store(&site.index, Some(&name), inv);
    Ok(ingest.with_index(crate::search::embedders(&site.index, inv)?, store)?)
}

fn source(kafka: &KafkaArgs, inv: &Invocation) -> Result<KafkaSource> {
    Ok(KafkaSource {
        brokers: brokers(kafka, inv)?,
        topics: topics(kafka, inv),
        extra: extra(inv),
    })
}

fn report(what: &str, summary: &ConsumeSummary) {
    let heads: Vec<String> = summary
        .heads
        .iter()
        .map(|(c, h)| match h {
            Some(h) => format!("{c} at block {h}"),
            None => format!("{c} empty"),
        })
        .collect();
    eprintln!(
        "{what}: {} blocks applied, {} frames rejected, {} duplicates dropped; {}",
        summary.applied,
        summary.rejected,
        summary.duplicates,
        if heads.is_empty() {
            "no chains".into()
        } else {
            heads.join(", ")
        }
    );
}

/// Exit 1 when a chain was stopped by a fork (each was logged).
fn forks(summary: &ConsumeSummary) -> ExitCode {
    for (chain, why) in &summary.forked {
        eprintln!("FORK {chain}: {why}");
    }
    if summary.forked.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

pub(crate) fn consume(
    site: &SiteArgs,
    kafka: &KafkaArgs,
    chains: &[String],
    until_idle: bool,
    metrics: &MetricsArg,
    inv: &Invocation,
) -> Result<ExitCode> {
    let mut ingest = open_ingest(site, chains, true, inv)?;
    let metrics = serve_metrics(metrics, inv)?;
    let source = source(kafka, inv)?;
    let mut seen = SiteSeen::default();
    let mut lag_thread = None;
    let lag_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(m) = &metrics {
        // What the site held before this run is not counted as verified by it.
        seen.record(m, &ingest, false);
        lag_thread = Some(follow_lag(
            m.clone(),
            &source,
            ingest.site().name(),
            trusted(site, inv)?,
            chains
                .iter()
                .map(|c| ChainName::parse(c))
                .collect::<Result<Vec<_>, _>>()?,
            seen.verified.clone(),
            lag_stop.clone(),
        ));
    }
    let mut retention = RetentionRun::new(inv);
    let summary = fschain_consumer::kafka::consume(
        &mut ingest,
        &source,
        ConsumeOptions { until_idle },
        &inv.shutdown,
        &mut |ingest| {
            if let Some(m) = &metrics {
                seen.record(m, ingest, true);
            }
            for (chain, head) in ingest.heads() {
                if head.is_some() {
                    retention
                        .after_block(&RootLayout::new(ingest.site().root().join(chain.as_str())));
                }
            }
        },
    )?;
    report("consume", &summary);
    if let Some(t) = lag_thread {
        lag_stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = t.join();
    }
    Ok(forks(&summary))
}

/// How often a site's lag metrics are brought up to date with the topic.
const LAG_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// A thread that follows the blocks topic's manifests ahead of the site
/// and sets each chain's `lag_blocks` and `lag_seconds`, so a site that
/// stopped applying shows a lag that grows (and a chain merely idle, none).
fn follow_lag(
    metrics: std::sync::Arc<fschain_metrics::Metrics>,
    source: &KafkaSource,
    site: &str,
    trusted: Vec<PublicKey>,
    only: Vec<ChainName>,
    verified: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<ChainName, u64>>>,
    shutdown: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let (source, site) = (source.clone(), site.to_owned());
    std::thread::spawn(move || {
        let stopping = || shutdown.load(std::sync::atomic::Ordering::SeqCst);
        let mut tail = None;
        while !stopping() {
            if tail.is_none() {
                match fschain_consumer::fleet::ManifestTail::open(&source, &site, trusted.clone()) {
                    Ok(t) => tail = Some(t),
                    Err(e) => {
                        tracing::warn!(error = %e, "lag metrics: cannot read the blocks topic")
                    }
                }
            }
            if let Some(t) = &mut tail {
                match t.follow(&shutdown) {
                    Ok(()) => {
                        let verified = verified.lock().map(|v| v.clone()).unwrap_or_default();
                        for (chain, lag) in t.lags(&verified, SystemClock.now()) {
                            if !only.is_empty() && !only.contains(&chain) {
                                continue;
                            }
                            let label = fschain_metrics::ChainLabel {
                                chain: chain.to_string(),
                            };
                            metrics
                                .lag_blocks
                                .get_or_create(&label)
                                .set(i64::try_from(lag.blocks).unwrap_or(i64::MAX));
                            metrics.lag_seconds.get_or_create(&label).set(lag.seconds);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "lag metrics: reading the blocks topic");
                        tail = None;
                    }
                }
            }
            let until = std::time::Instant::now() + LAG_EVERY;
            while !stopping() && std::time::Instant::now() < until {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    })
}

/// What a site's metrics were last set from.
#[derive(Default)]
struct SiteSeen {
    heights: std::collections::BTreeMap<ChainName, u64>,
    /// The same, shared with the thread that sets the lag metrics.
    verified: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<ChainName, u64>>>,
    rejected: [u64; fschain_consumer::Rejection::ALL.len()],
    timed: u64,
    bytes: u64,
}

impl SiteSeen {
    fn record(&mut self, metrics: &fschain_metrics::Metrics, ingest: &Ingest, count: bool) {
        for (chain, head) in ingest.heads() {
            let Some(head) = head else { continue };
            let label = fschain_metrics::ChainLabel {
                chain: chain.to_string(),
            };
            let before = self.heights.insert(chain.clone(), head);
            if let Ok(mut verified) = self.verified.lock() {
                verified.insert(chain.clone(), head);
            }
            let new_blocks = match (count, before) {
                (false, _) => 0,
                (true, Some(b)) => head.saturating_sub(b),
                (true, None) => head + 1,
            };
            metrics
                .blocks_verified
                .get_or_create(&label)
                .inc_by(new_blocks);
            metrics
                .height
                .get_or_create(&label)
                .set(i64::try_from(head).unwrap_or(i64::MAX));
            let layout = RootLayout::new(ingest.site().root().join(chain.as_str()));
            if let Some(sealed) = head_sealed_micros(&layout, head) {
                let sealed = sealed as f64 / 1e6;
                metrics
                    .last_verified_block_timestamp
                    .get_or_create(&label)
                    .set(sealed as i64);
            }
        }
        if let Some(witness) = ingest.witness() {
            for chain in witness.stopped.keys() {
                metrics
                    .forked
                    .get_or_create(&fschain_metrics::ChainLabel {
                        chain: chain.to_string(),
                    })
                    .set(1);
            }
        }
        let (timings, timed) = ingest.timings_since(self.timed);
        for t in timings {
            let label = fschain_metrics::ChainLabel {
                chain: t.chain.to_string(),
            };
            metrics
                .receive_duration
                .get_or_create(&label)
                .observe(t.receive.as_secs_f64());
            metrics
                .verify_duration
                .get_or_create(&label)
                .observe(t.verify.as_secs_f64());
        }
        self.timed = timed;
        metrics
            .consumed_bytes
            .inc_by(ingest.stats.bytes.saturating_sub(self.bytes));
        self.bytes = ingest.stats.bytes;
        // Every reason is exported, at 0 until it happens, so an alert on
        // its rate has a series to watch.
        for why in fschain_consumer::Rejection::ALL {
            let now = ingest.stats.rejected_for(why);
            let before = std::mem::replace(&mut self.rejected[why as usize], now);
            metrics
                .frames_rejected
                .get_or_create(&fschain_metrics::ReasonLabel {
                    reason: why.as_str().into(),
                })
                .inc_by(now.saturating_sub(before));
        }
    }
}

pub(crate) fn replay(
    site: &SiteArgs,
    kafka: &KafkaArgs,
    chains: &[String],
    inv: &Invocation,
) -> Result<ExitCode> {
    let trusted_keys = trusted(site, inv)?;
    let mut ingest = open_ingest(site, chains, true, inv)?;
    let mut bar = Progress::new("replay", Unit::Blocks, None);
    let mut progress = |ingest: &Ingest| {
        if let Some(total) = ingest.stats.expected {
            bar.set_total(total);
        }
        let heads: Vec<String> = ingest
            .heads()
            .iter()
            .map(|(c, h)| format!("{c} {}", h.map_or("-".into(), |h| h.to_string())))
            .collect();
        bar.set(ingest.stats.applied, &heads.join(", "));
    };
    let summary = fschain_consumer::kafka::replay(
        &mut ingest,
        &source(kafka, inv)?,
        &trusted_keys,
        &inv.shutdown,
        &mut progress,
    )?;
    bar.finish();
    report("replay", &summary);
    Ok(forks(&summary))
}

/// A reader or writer that reports the bytes through it.
struct Counted<T> {
    inner: T,
    bytes: u64,
    progress: Progress,
}

impl<T: Read> Read for Counted<T> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        self.progress.set(self.bytes, "");
        Ok(n)
    }
}

impl<T: Write> Write for Counted<T> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        self.progress.set(self.bytes, "");
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn resolve(chain: &Chain, text: &str) -> Result<u64> {
    Ok(chain.resolve(&BlockRef::parse(text)?)?)
}

pub(crate) fn export(
    root: &Path,
    from: Option<&str>,
    to: &str,
    output: &str,
    raw: bool,
    stream: &StreamArgs,
    inv: &Invocation,
) -> Result<ExitCode> {
    let chain = open_chain(root)?;
    let to = resolve(&chain, to)?;
    let from = from.map(|f| resolve(&chain, f)).transpose()?;
    if from.is_some_and(|f| f >= to) {
        bail!("--from must be an older block than --to");
    }
    // Frames are written from the thread that cuts each stream.
    let out: Box<dyn Write + Send> = if output == "-" {
        Box::new(std::io::BufWriter::with_capacity(
            1 << 20,
            std::io::stdout(),
        ))
    } else {
        Box::new(std::io::BufWriter::new(
            std::fs::File::create(output).with_context(|| format!("creating {output}"))?,
        ))
    };
    let mut out = Counted {
        inner: out,
        bytes: 0,
        progress: Progress::new("export", Unit::Bytes, None),
    };
    let layout = chain.layout();
    if raw {
        let bytes = fschain_producer::export::export_raw(layout, from, to, &mut out)?;
        eprintln!("export: raw btrfs send stream of block {to}, {bytes} bytes");
    } else {
        let key = load_signing_key(layout)?;
        let summary = fschain_producer::export::export_frames(
            layout,
            from,
            to,
            &policy(stream, inv)?,
            &key,
            &mut out,
        )?;
        eprintln!("export: {} blocks, {} bytes", summary.blocks, summary.bytes);
    }
    out.progress.finish();
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn import(site: &SiteArgs, file: &str, inv: &Invocation) -> Result<ExitCode> {
    let mut ingest = open_ingest(site, &[], false, inv)?;
    let (input, total): (Box<dyn Read>, Option<u64>) = if file == "-" {
        (Box::new(std::io::stdin().lock()), None)
    } else {
        let f = std::fs::File::open(file).with_context(|| format!("opening {file}"))?;
        let len = f.metadata().ok().map(|m| m.len());
        (Box::new(std::io::BufReader::new(f)), len)
    };
    let mut input = Counted {
        inner: input,
        bytes: 0,
        progress: Progress::new("import", Unit::Bytes, total),
    };
    let frames = fschain_consumer::import::import(&mut ingest, &mut input, file)?;
    input.progress.finish();
    if let Some((chain, height)) = ingest.gaps().into_iter().next() {
        bail!("{chain}: block {height} is missing from the import; the blocks after it were not applied");
    }
    eprintln!(
        "import: {frames} frames, {} blocks applied, {} rejected",
        ingest.stats.applied, ingest.stats.rejected
    );
    Ok(if ingest.stats.rejected > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
