//! Host source benchmarks, each beside a baseline timed in the same run:
//!
//! - a file write → the block that records it sealed (a watch in this
//!   process, 50 ms blocks), against the kernel's inotify event for the
//!   same write;
//! - the first scan of a 20,000-file tree against
//!   `find TREE -type f -print0 | xargs -0 sha256sum` on the same tree;
//! - `fschain watch` over that tree at rest: its CPU and resident memory;
//! - 10,000 writes within a second: every file's final state recorded.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fschain_host::reconcile::compare;
use fschain_host::watch::{self, WatchOptions};
use fschain_host::{head_states, HostError, Sources, SourcesConfig};
use fschain_producer::ChainWriter;
use fschain_store::RootLayout;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::local::{cleanup, ms, new_root, pct, ratio, settle, Rng};
use crate::replication::{drain, fschain_exe, terminate};
use crate::report::{Report, Row};

const COMMAND: &str = "fschain-bench --dir DIR --quick --host-only";

struct Scale {
    files: usize,
    latency_writes: usize,
    idle: Duration,
    burst_files: usize,
    burst_rounds: usize,
}

pub(crate) fn run(dir: &Path, quick: bool, report: &mut Report) -> Result<()> {
    let scale = Scale {
        files: 20_000,
        latency_writes: if quick { 40 } else { 200 },
        idle: Duration::from_secs(if quick { 10 } else { 60 }),
        burst_files: 2_000,
        burst_rounds: 5,
    };
    let work = dir.join(format!("bench-host-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = run_in(&work, &scale, report);
    cleanup(&work);
    result
}

fn run_in(work: &Path, s: &Scale, report: &mut Report) -> Result<()> {
    let tree = work.join("tree");
    let bytes = make_tree(&tree, s.files)?;
    settle(work)?;
    report.section(
        &format!(
            "host sources ({} files, {:.0} MB, on btrfs)",
            s.files,
            bytes as f64 / 1e6
        ),
        COMMAND,
    );
    first_scan(&tree, s, bytes, report)?;
    write_to_seal(work, &tree, s, report)?;
    at_rest_and_burst(work, &tree, s, report)
}

/// A tree shaped like /etc: 100 files a directory, mostly small
/// `key = value` text, a few large files.
fn make_tree(tree: &Path, files: usize) -> Result<u64> {
    let mut rng = Rng(0x5eed_f11e);
    let mut total = 0u64;
    for i in 0..files {
        let dir = tree.join(format!("d{:02}/s{}", i / 1000, (i / 100) % 10));
        if i % 100 == 0 {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let size = match rng.below(100) {
            0 => 64 * 1024 + rng.below(448 * 1024),
            1..=14 => 4096 + rng.below(28 * 1024),
            _ => 100 + rng.below(4000),
        };
        let mut text = String::with_capacity(size + 64);
        let mut line = 0;
        while text.len() < size {
            text.push_str(&format!(
                "option_{line} = value-{}-{}\n",
                rng.below(1_000_000),
                i
            ));
            line += 1;
        }
        total += text.len() as u64;
        std::fs::write(dir.join(format!("f{i}.conf")), text)?;
    }
    Ok(total)
}

fn sources_for(paths: &[&Path], coalesce: &str) -> Result<Sources> {
    let paths: Vec<String> = paths
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect();
    let text = format!(
        "coalesce = \"{coalesce}\"\n[files]\npaths = [{}]\n",
        paths.join(", ")
    );
    let config = SourcesConfig::parse(&text).map_err(|why| anyhow::anyhow!("{why}"))?;
    Ok(Sources::new(&config)?)
}

/// The first scan, in this process, against `find | xargs sha256sum`;
/// each timed warm, median of 3.
fn first_scan(tree: &Path, s: &Scale, bytes: u64, report: &mut Report) -> Result<()> {
    let sources = sources_for(&[tree], "200ms")?;
    let scan = || -> Result<Duration> {
        let t = Instant::now();
        let mut problems = Vec::new();
        let states = sources.scan(&mut problems);
        let took = t.elapsed();
        if let Some(p) = problems.first() {
            bail!("the scan met a problem: {p}");
        }
        // The directories are elements too.
        if states.len() < s.files {
            bail!("the scan found {} elements of {}", states.len(), s.files);
        }
        Ok(took)
    };
    let sha256sum = || -> Result<Duration> {
        let t = Instant::now();
        let status = Command::new("sh")
            .args([
                "-c",
                "find \"$1\" -type f -print0 | xargs -0 sha256sum > /dev/null",
                "sh",
            ])
            .arg(tree)
            .status()
            .context("running find | xargs sha256sum")?;
        if !status.success() {
            bail!("find | xargs sha256sum failed: {status}");
        }
        Ok(t.elapsed())
    };
    // Warm the page cache and both code paths.
    scan()?;
    sha256sum()?;
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..3 {
        ours.push(scan()?);
        theirs.push(sha256sum()?);
    }
    let (ours, theirs) = (pct(&mut ours, 50), pct(&mut theirs, 50));
    let r = ratio(ours, theirs);
    report.row(Row {
        what: format!(
            "first scan of {} files ({:.0} MB): type, mode, owner, size, SHA-256 and content of each; warm cache, median of 3",
            s.files,
            bytes as f64 / 1e6
        ),
        fschain: format!("{:.3} s", ours.as_secs_f64()),
        baseline: format!(
            "`find TREE -type f -print0 | xargs -0 sha256sum`: {:.3} s ({r:.2}x)",
            theirs.as_secs_f64()
        ),
        target: "<= 1.5x".into(),
        met: Some(r <= 1.5),
    });
    Ok(())
}

/// A write → the block recording it sealed, by a watch in this process
/// (50 ms blocks, a 20 ms coalescing window), each write made once the
/// watch is idle.
fn write_to_seal(work: &Path, tree: &Path, s: &Scale, report: &mut Report) -> Result<()> {
    let probes = tree.join("latency");
    std::fs::create_dir_all(&probes)?;
    let sources = sources_for(&[tree], "20ms")?;
    let mut times = with_watch(&work.join("latency-root"), &sources, |sealed| {
        let mut rng = Rng(7);
        let mut times = Vec::with_capacity(s.latency_writes);
        for i in 0..s.latency_writes {
            std::thread::sleep(Duration::from_millis(30 + rng.below(40) as u64));
            while sealed.try_recv().is_ok() {}
            let t = Instant::now();
            std::fs::write(probes.join(format!("p{}", i % 8)), format!("value = {i}\n"))?;
            let (at, _) = sealed
                .recv_timeout(Duration::from_secs(10))
                .context("no block sealed within 10 s of a write")?;
            times.push(at.saturating_duration_since(t));
        }
        Ok(times)
    })?;
    let mut kernel = inotify_latency(&probes, s.latency_writes)?;
    report.row(Row {
        what: format!(
            "a file write -> its block sealed, p50 / p99 ({} writes; 50 ms block interval, coalesce 20 ms, {} files watched)",
            s.latency_writes, s.files
        ),
        fschain: format!("{} / {}", ms(pct(&mut times, 50)), ms(pct(&mut times, 99))),
        baseline: format!(
            "the kernel's inotify event for the same write: {} / {}",
            ms(pct(&mut kernel, 50)),
            ms(pct(&mut kernel, 99))
        ),
        target: "p99 <= 100 ms".into(),
        met: Some(pct(&mut times, 99) <= Duration::from_millis(100)),
    });
    Ok(())
}

/// Each seal of an in-process watch: when, and how many events.
pub(crate) type Seals = mpsc::Receiver<(Instant, u64)>;

/// Runs a watch in this process over `sources` on a new root (50 ms
/// blocks), hands `probe` its seals once the catch-up block is sealed,
/// then stops it.
pub(crate) fn with_watch<T>(
    root: &Path,
    sources: &Sources,
    probe: impl FnOnce(&Seals) -> Result<T>,
) -> Result<T> {
    let mut writer = new_root(root, "bench-watch")?;
    let options = WatchOptions {
        block_interval: Duration::from_millis(50),
        block_ops: 100_000,
        once: false,
        host: "bench".into(),
    };
    let shutdown = AtomicBool::new(false);
    let (sealed_tx, sealed_rx) = mpsc::channel();
    std::thread::scope(|scope| -> Result<T> {
        let watching = scope.spawn(|| {
            let mut after_seal = move |w: &ChainWriter, _: &_| -> Result<(), HostError> {
                let _ = sealed_tx.send((Instant::now(), w.head().event_count));
                Ok(())
            };
            watch::run(&mut writer, sources, &options, &mut after_seal, &shutdown)
        });
        let probed = sealed_rx
            .recv_timeout(Duration::from_secs(300))
            .context("the watch sealed no catch-up block")
            .and_then(|_| probe(&sealed_rx));
        shutdown.store(true, Ordering::SeqCst);
        let summary = watching
            .join()
            .map_err(|_| anyhow::anyhow!("the watch thread panicked"))??;
        if summary.rescans > 0 {
            bail!("the watch rescanned during the measurement");
        }
        probed
    })
}

/// Write → IN_CLOSE_WRITE read by a bare inotify watch on the directory.
fn inotify_latency(dir: &Path, n: usize) -> Result<Vec<Duration>> {
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC)?;
    inotify.add_watch(dir, AddWatchFlags::IN_CLOSE_WRITE)?;
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        std::fs::write(dir.join(format!("p{}", i % 8)), format!("value = {i}\n"))?;
        inotify.read_events()?;
        times.push(t.elapsed());
    }
    Ok(times)
}

/// `fschain watch` over the tree: at rest, then a burst of writes.
fn at_rest_and_burst(work: &Path, tree: &Path, s: &Scale, report: &mut Report) -> Result<()> {
    let burst = tree.join("burst");
    std::fs::create_dir_all(&burst)?;
    for f in 0..s.burst_files {
        std::fs::write(burst.join(format!("b{f}")), "round = 0\n")?;
    }
    let root = work.join("watch-root");
    drop(new_root(&root, "bench-rest")?);
    let sources_file = work.join("sources.toml");
    std::fs::write(
        &sources_file,
        format!("[files]\npaths = [{:?}]\n", tree.display().to_string()),
    )?;
    let mut child = Command::new(fschain_exe()?)
        .args(["watch", "--root"])
        .arg(&root)
        .arg("--sources")
        .arg(&sources_file)
        .args(["--block-interval", "1000"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting fschain watch")?;
    let stderr = drain(child.stderr.take());
    let result = measure_watch(&mut child, &root, &burst, s, report);
    terminate(&mut child);
    let log = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
    match result {
        Ok(()) => {
            if let Some(summary) = log.lines().find(|l| l.starts_with("watch: ")) {
                report.note(summary);
            }
            Ok(())
        }
        Err(e) => Err(e.context(format!("fschain watch said: {}", log.trim()))),
    }
}

fn measure_watch(
    child: &mut Child,
    root: &Path,
    burst: &Path,
    s: &Scale,
    report: &mut Report,
) -> Result<()> {
    let layout = RootLayout::new(root);
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(300);
    while head_height(&layout)? < 1 {
        if let Some(status) = child.try_wait()? {
            bail!("fschain watch exited before its catch-up block: {status}");
        }
        if Instant::now() > deadline {
            bail!("no catch-up block within 300 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The catch-up block's write-back, then rest.
    settle(root)?;
    let rest = at_rest(pid, s.idle)?;
    let (peak, cpu, rss) = (rest.peak, rest.cpu_percent, rest.rss);
    report.row(Row {
        what: format!(
            "fschain watch over {} files at rest for {} s: CPU",
            s.files,
            s.idle.as_secs()
        ),
        fschain: format!("{cpu:.2}% of a core"),
        baseline: "–".into(),
        target: "< 1% of a core".into(),
        met: Some(cpu < 1.0),
    });
    report.row(Row {
        what: format!(
            "fschain watch over {} files at rest: resident memory",
            s.files
        ),
        fschain: format!("{:.1} MB", rss as f64 / 1e6),
        baseline: format!(
            "its peak, while scanning and sealing the catch-up block: {:.1} MB",
            peak as f64 / 1e6
        ),
        target: "< 64 MB".into(),
        met: Some(rss < 64_000_000),
    });

    let height = head_height(&layout)?;
    let writes = s.burst_files * s.burst_rounds;
    let t = Instant::now();
    for round in 1..=s.burst_rounds {
        for f in 0..s.burst_files {
            std::fs::write(burst.join(format!("b{f}")), format!("round = {round}\n"))?;
        }
    }
    let written = t.elapsed();
    let burst_sources = sources_for(&[burst], "200ms")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let (in_sync, blocks) = loop {
        let head = head_height(&layout)?;
        if head > height {
            let held = head_states(&layout.snapshot(head), |e| burst_sources.owns(e))?;
            let mut problems = Vec::new();
            let observed = burst_sources.scan(&mut problems);
            if compare(&held, &observed, |e| burst_sources.owns(e)).is_empty() {
                break (true, head - height);
            }
        }
        if Instant::now() > deadline || child.try_wait()?.is_some() {
            break (false, head - height);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let recorded_after = t.elapsed();
    report.row(Row {
        what: format!(
            "{writes} file writes ({} files x {}) made in {:.2} s",
            s.burst_files,
            s.burst_rounds,
            written.as_secs_f64()
        ),
        fschain: if in_sync {
            format!(
                "every file's last write recorded, in {blocks} blocks, {:.2} s after the first write",
                recorded_after.as_secs_f64()
            )
        } else {
            "NOT all recorded within 120 s".into()
        },
        baseline: format!("the writes alone: {:.2} s", written.as_secs_f64()),
        target: "every write recorded".into(),
        met: Some(in_sync),
    });
    Ok(())
}

/// A process left alone for `idle`: its CPU (percent of a core), its
/// resident memory at the end, and its peak before.
pub(crate) struct AtRest {
    pub(crate) cpu_percent: f64,
    pub(crate) rss: u64,
    pub(crate) peak: u64,
}

pub(crate) fn at_rest(pid: u32, idle: Duration) -> Result<AtRest> {
    let peak = proc_status_bytes(pid, "VmHWM:")?;
    let before = cpu_seconds(pid)?;
    let t = Instant::now();
    std::thread::sleep(idle);
    let cpu_percent = (cpu_seconds(pid)? - before) / t.elapsed().as_secs_f64() * 100.0;
    Ok(AtRest {
        cpu_percent,
        rss: proc_status_bytes(pid, "VmRSS:")?,
        peak,
    })
}

pub(crate) fn head_height(layout: &RootLayout) -> Result<u64> {
    Ok(layout
        .snapshot_heights()?
        .into_iter()
        .max()
        .unwrap_or_default())
}

/// user + system CPU seconds of a process, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces: fields are counted after its ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .with_context(|| format!("/proc/{pid}/stat has no field {}", i + 3))
    };
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after ')'.
    // In clock ticks, which Linux reports at USER_HZ, 100 a second.
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

pub(crate) fn proc_status_bytes(pid: u32, key: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .with_context(|| format!("/proc/{pid}/status has no {key}"))
}
