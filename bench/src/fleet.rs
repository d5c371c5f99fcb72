//! Fleet scale: one site following many chains (one per host).
//!
//! For each fleet size, prepared roots (one producer process seals and
//! publishes them all, in process) put `BLOCKS` blocks of every chain on
//! fresh topics; then one site (`fschain consume --until-idle`) catches
//! them all up. Reported against a bare consumer reading the same bytes:
//! the site's time, its peak resident memory and open files as the number
//! of chains grows (and the growth per chain), the subvolumes on its file
//! system, and the time to verify every chain it holds.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fschain_producer::outbox::StreamPolicy;
use fschain_producer::publish::{publish_pending, KafkaTarget, Publisher};
use fschain_schema::wire::Topics;
use fschain_schema::{Action, Operation};
use fschain_store::RootLayout;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::ClientConfig;
use serde_json::json;

use crate::host::proc_status_bytes;
use crate::local::{cleanup, ms, new_root, pct};
use crate::replication::{drain, fschain_exe};
use crate::report::{Report, Row};

/// Blocks each chain has beyond its genesis.
const BLOCKS: usize = 10;
/// Operations per block.
const OPS_PER_BLOCK: usize = 10;

/// What one fleet size measured.
struct Fleet {
    chains: usize,
    blocks: usize,
    bytes: u64,
    site: Duration,
    raw: Duration,
    peak_rss: u64,
    peak_fds: usize,
    subvolumes: usize,
    verify: Duration,
    /// The same catch-up by two members of one site's group.
    two: Duration,
    /// Steady state: seal → in place at the site, per block; and how many
    /// sealed blocks never arrived.
    steady: (Vec<Duration>, usize),
}

pub(crate) fn run(dir: &Path, sizes: &[usize], brokers: &str, report: &mut Report) -> Result<()> {
    let command = format!(
        "fschain-bench --dir DIR --fleet-only --fleet-chains {} --brokers LIST",
        sizes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    report.section(
        &format!(
            "fleet scale (Apache Kafka at {brokers}; each chain {BLOCKS} blocks of {OPS_PER_BLOCK} operations, one site)"
        ),
        &command,
    );
    let mut measured = Vec::new();
    for &n in sizes {
        let work = dir.join(format!("bench-fleet-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&work)?;
        let result = one_fleet(&work, n, brokers);
        cleanup(&work);
        measured.push(result?);
    }
    for f in &measured {
        report.row(Row {
            what: format!(
                "{} chains: the site catches up {} blocks ({:.1} MB on the topic), no indexing",
                f.chains,
                f.blocks,
                f.bytes as f64 / 1e6
            ),
            fschain: format!(
                "{:.2} s ({:.1} ms a block)",
                f.site.as_secs_f64(),
                f.site.as_secs_f64() * 1e3 / f.blocks as f64
            ),
            baseline: format!(
                "a bare consumer reading the same bytes: {:.2} s",
                f.raw.as_secs_f64()
            ),
            target: "–".into(),
            met: None,
        });
        report.row(Row {
            what: format!(
                "{} chains: the same catch-up by two members of the site's group (two processes, one site root)",
                f.chains
            ),
            fschain: format!("{:.2} s", f.two.as_secs_f64()),
            baseline: format!(
                "one member: {:.2} s ({:.2}x its throughput)",
                f.site.as_secs_f64(),
                f.site.as_secs_f64() / f.two.as_secs_f64()
            ),
            target: "–".into(),
            met: None,
        });
        report.row(Row {
            what: format!(
                "{} chains: the site's peak resident memory and open files; its file system's subvolumes",
                f.chains
            ),
            fschain: format!(
                "{:.1} MB, {} files; {} subvolumes",
                f.peak_rss as f64 / 1e6,
                f.peak_fds,
                f.subvolumes
            ),
            baseline: "–".into(),
            target: "–".into(),
            met: None,
        });
        report.row(Row {
            what: format!(
                "{} chains: `fschain verify` of every chain the site holds",
                f.chains
            ),
            fschain: format!("{:.2} s", f.verify.as_secs_f64()),
            baseline: "–".into(),
            target: "–".into(),
            met: None,
        });
    }
    for f in &mut measured {
        let (times, missing) = &mut f.steady;
        let n = times.len();
        let (p50, p99) = (pct(times, 50), pct(times, 99));
        report.row(Row {
            what: format!(
                "{} chains, each sealing a block every {} s: operation -> its block in place at the site, p50 / p99 ({n} blocks over {} s)",
                f.chains,
                STEADY_EVERY.as_secs(),
                STEADY_FOR.as_secs()
            ),
            fschain: format!("{} / {}", ms(p50), ms(p99)),
            baseline: format!("{missing} sealed blocks not in place at the end"),
            target: "p99 <= 1 s".into(),
            met: Some(*missing == 0 && p99 <= Duration::from_secs(1)),
        });
    }
    if let (Some(first), Some(last)) = (measured.first(), measured.last()) {
        if last.chains > first.chains {
            let per_chain = (last.peak_rss as f64 - first.peak_rss as f64)
                / (last.chains - first.chains) as f64;
            report.row(Row {
                what: format!(
                    "the site's memory growth per chain, {} to {} chains",
                    first.chains, last.chains
                ),
                fschain: format!("{:.0} KiB a chain", per_chain / 1024.0),
                baseline: format!(
                    "{:.1} MB at {} chains",
                    first.peak_rss as f64 / 1e6,
                    first.chains
                ),
                target: "<= 256 KiB a chain".into(),
                met: Some(per_chain <= 256.0 * 1024.0),
            });
        }
    }
    Ok(())
}

fn one_fleet(work: &Path, n: usize, brokers: &str) -> Result<Fleet> {
    let exe = fschain_exe()?;
    let prefix = format!("bench-fleet-{}-{n}", std::process::id());
    let status = Command::new(&exe)
        .args([
            "topics",
            "create",
            "--brokers",
            brokers,
            "--prefix",
            &prefix,
        ])
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("fschain topics create failed");
    }
    // The producers: n roots, sealed and published by this process.
    let target = KafkaTarget {
        brokers: brokers.to_owned(),
        topics: Topics::with_prefix(&prefix),
        extra: Vec::new(),
    };
    let publisher = Publisher::new(&target)?;
    let mut keys = Vec::with_capacity(n);
    let mut bytes = 0;
    for c in 0..n {
        let root = work.join("roots").join(format!("host{c}"));
        std::fs::create_dir_all(root.parent().context("a parent")?)?;
        let mut writer = new_root(&root, &format!("host{c}"))?;
        for b in 0..BLOCKS {
            for o in 0..OPS_PER_BLOCK {
                let state = json!({"mtu": 1500 + b, "up": true, "addresses": [format!("10.{c}.{b}.{o}/24")]});
                writer.apply(Operation {
                    element: fschain_schema::ElementId::parse(&format!("iface:eth{o}"))?,
                    action: Action::Set,
                    state: state.as_object().cloned(),
                    reason: Some(format!("renumbered host{c} for block {b}")),
                    actor: Some("bench@fleet".into()),
                    signature: None,
                })?;
            }
            writer.seal()?;
        }
        writer.close()?;
        let layout = RootLayout::new(&root);
        let key = fschain_producer::load_signing_key(&layout)?;
        let summary = publish_pending(&layout, &publisher, &StreamPolicy::default(), &key)?;
        bytes += summary.bytes;
        keys.push(key.public().to_string());
    }
    let blocks = n * (BLOCKS + 1);

    // The site, trusting every producer's key.
    let config = work.join("site.toml");
    std::fs::write(
        &config,
        format!(
            "trusted_keys = [{}]\n",
            keys.iter()
                .map(|k| format!("{k:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )?;
    let site = work.join("site");
    let t = Instant::now();
    let mut child = site_command(&exe, &config, "fleet", &site, brokers, &prefix)
        .arg("--until-idle")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let (mut peak_rss, mut peak_fds) = (0, 0);
    let status = loop {
        if let Ok(b) = proc_status_bytes(pid, "VmHWM:") {
            peak_rss = peak_rss.max(b);
        }
        if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            peak_fds = peak_fds.max(fds.count());
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let site_time = t.elapsed();
    let _ = out.join();
    let stderr = err.join().unwrap_or_default();
    if !status.success() {
        bail!(
            "the fleet site failed: {}",
            String::from_utf8_lossy(&stderr)
        );
    }
    let raw = raw_read(brokers, &target.topics.blocks)?;

    let mut subvolumes = 0;
    let t = Instant::now();
    for c in 0..n {
        let copy = site.join(format!("host{c}"));
        subvolumes += std::fs::read_dir(copy.join("blocks"))?.count();
        let ok = Command::new(&exe)
            .args(["verify", "--root"])
            .arg(&copy)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !ok.success() {
            bail!("verify of {} failed", copy.display());
        }
    }
    let verify = t.elapsed();
    // The site's log is kept beside the work directory, for a profile of
    // where its time went.
    let log = work.with_extension("steady-site.log");
    let two = two_members(work, n, &exe, &config, &prefix, brokers, blocks)?;
    let steady = steady_state(
        work, n, &exe, &config, &site, &prefix, brokers, &publisher, &log,
    )?;
    Ok(Fleet {
        two,
        steady,
        chains: n,
        blocks,
        bytes,
        site: site_time,
        raw,
        peak_rss,
        peak_fds,
        subvolumes,
        verify,
    })
}

/// `fschain consume` of the site `name` at `root`, without the index.
fn site_command(
    exe: &Path,
    config: &Path,
    name: &str,
    root: &Path,
    brokers: &str,
    prefix: &str,
) -> Command {
    let mut command = Command::new(exe);
    command
        .arg("--config")
        .arg(config)
        .args(["consume", "--site", name, "--root"])
        .arg(root)
        .args(["--no-index", "--brokers", brokers, "--prefix", prefix]);
    command
}

/// The catch-up of every chain by two members of one site's group, each
/// its own process on one site root (as two machines would share a
/// site's chains); both run `--until-idle` and the time is until both are
/// done. Fails unless the site then holds every block.
fn two_members(
    work: &Path,
    n: usize,
    exe: &Path,
    config: &Path,
    prefix: &str,
    brokers: &str,
    blocks: usize,
) -> Result<Duration> {
    let site = work.join("site-two");
    let t = Instant::now();
    let members: Vec<_> = (0..2)
        .map(|_| {
            site_command(exe, config, "fleet-two", &site, brokers, prefix)
                .arg("--until-idle")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
        })
        .collect::<std::io::Result<_>>()?;
    for mut member in members {
        if !member.wait()?.success() {
            bail!("a member of the two-member site failed");
        }
    }
    let took = t.elapsed();
    let mut held = 0;
    for c in 0..n {
        held += std::fs::read_dir(site.join(format!("host{c}")).join("blocks"))?.count();
    }
    if held != blocks {
        bail!("the two members hold {held} blocks of {blocks}");
    }
    Ok(took)
}

/// A bare consumer reading every message of `topic` from its start.
fn raw_read(brokers: &str, topic: &str) -> Result<Duration> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-raw"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .set("fetch.message.max.bytes", "4194304")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for &p in &partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)?;
    }
    let t = Instant::now();
    consumer.assign(&tpl)?;
    let mut ended = std::collections::BTreeSet::new();
    let mut bytes = 0usize;
    while ended.len() < partitions.len() {
        match consumer.poll(Duration::from_secs(30)) {
            Some(Ok(m)) => bytes += m.payload().map_or(0, <[u8]>::len),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                ended.insert(p);
            }
            Some(Err(e)) => bail!("raw read: {e}"),
            None => bail!("raw read stalled after {bytes} bytes"),
        }
    }
    Ok(t.elapsed())
}

/// How often each chain seals a block in the steady state.
const STEADY_EVERY: Duration = Duration::from_secs(10);
/// How long the steady state is measured.
const STEADY_FOR: Duration = Duration::from_secs(30);

/// Every chain seals a block every [`STEADY_EVERY`] (spread evenly),
/// published at once, while the site runs; a block counts as arrived when
/// the site renames it into its chain's `blocks/` (an inotify watch on
/// each). Returns the seal → in place time of each block, and how many
/// never arrived.
#[allow(clippy::too_many_arguments)]
fn steady_state(
    work: &Path,
    n: usize,
    exe: &Path,
    config: &Path,
    site: &Path,
    prefix: &str,
    brokers: &str,
    publisher: &Publisher,
    log: &Path,
) -> Result<(Vec<Duration>, usize)> {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)?;
    let mut chain_of = std::collections::HashMap::new();
    for c in 0..n {
        let wd = inotify.add_watch(
            &site.join(format!("host{c}")).join("blocks"),
            AddWatchFlags::IN_MOVED_TO,
        )?;
        chain_of.insert(wd, c);
    }
    let mut child = site_command(exe, config, "fleet", site, brokers, prefix)
        .env("RUST_LOG", "info,fschain_consumer=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()?;
    let arrived = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (arrived, stop) = (arrived.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match inotify.read_events() {
                    Ok(events) => {
                        let now = Instant::now();
                        for e in events {
                            let height = e
                                .name
                                .and_then(|n| n.to_str().and_then(|s| s.parse::<u64>().ok()));
                            if let (Some(c), Some(h)) = (chain_of.get(&e.wd), height) {
                                if let Ok(mut a) = arrived.lock() {
                                    a.insert((*c, h), now);
                                }
                            }
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        })
    };
    // Let the site join its group and read its chains before timing.
    std::thread::sleep(Duration::from_secs(5));
    let mut writers = Vec::with_capacity(n);
    for c in 0..n {
        let layout = RootLayout::new(work.join("roots").join(format!("host{c}")));
        let key = fschain_producer::load_signing_key(&layout)?;
        writers.push((fschain_producer::ChainWriter::open(layout)?, key));
    }
    let gap = STEADY_EVERY / n as u32;
    let started = Instant::now();
    let mut sealed = Vec::new();
    let mut i = 0usize;
    while started.elapsed() < STEADY_FOR {
        let due = started + gap * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let c = i % n;
        let (writer, key) = &mut writers[c];
        let t = Instant::now();
        writer.apply(Operation {
            element: fschain_schema::ElementId::parse("service:nginx")?,
            action: Action::Set,
            state: json!({"active": true, "round": i}).as_object().cloned(),
            reason: Some("steady state".into()),
            actor: None,
            signature: None,
        })?;
        let block = writer.seal()?.context("a block sealed")?;
        publish_pending(writer.layout(), publisher, &StreamPolicy::default(), key)?;
        sealed.push(((c, block.header.height), t));
        i += 1;
    }
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let all = arrived
            .lock()
            .map(|a| sealed.iter().all(|(k, _)| a.contains_key(k)))
            .unwrap_or(false);
        if all || Instant::now() > until {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = watcher.join();
    crate::replication::terminate(&mut child);
    for (writer, _) in writers {
        writer.close()?;
    }
    let arrived = arrived.lock().map(|a| a.clone()).unwrap_or_default();
    let mut times = Vec::new();
    let mut missing = 0;
    for (k, t) in &sealed {
        match arrived.get(k) {
            Some(at) => times.push(at.saturating_duration_since(*t)),
            None => missing += 1,
        }
    }
    Ok((times, missing))
}
