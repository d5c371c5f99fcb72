//! The local chain's speed, side by side with baselines
//! measured in the same run on the same filesystem.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fschain_producer::{init_root, write_state_file, ChainWriter, SystemClock};
use fschain_schema::{Action, ChainName, ElementId, Operation, State};
use fschain_store::layout::{EVENTS_LOG, HEADERS_LOG};
use fschain_store::state_path::state_path;
use fschain_store::{btrfs, verify_root, RootLayout};
use serde_json::json;

use crate::report::{Report, Row};

struct Scale {
    elements: usize,
    ops: usize,
    block_ops: usize,
    iterations: usize,
    small: usize,
    large: usize,
}

pub(crate) fn run(dir: &Path, quick: bool, report: &mut Report) -> Result<()> {
    let scale = if quick {
        Scale {
            elements: 10_000,
            ops: 30_000,
            block_ops: 1000,
            iterations: 30,
            small: 1_000,
            large: 20_000,
        }
    } else {
        Scale {
            elements: 10_000,
            ops: 200_000,
            block_ops: 1000,
            iterations: 100,
            small: 1_000,
            large: 100_000,
        }
    };
    let work = dir.join(format!("bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = run_in(&work, &scale, report);
    cleanup(&work);
    result
}

const COMMAND: &str = "fschain-bench --dir DIR --quick";

fn run_in(work: &Path, s: &Scale, report: &mut Report) -> Result<()> {
    report.section(
        &format!(
            "local chain ({} elements, {} operations, {} per block)",
            s.elements, s.ops, s.block_ops
        ),
        COMMAND,
    );
    let root = work.join("throughput");
    let mut writer = sealing(work, &root, s, report)?;
    one_op_latency(work, &root, &mut writer, s, report)?;
    writer.close()?;
    layer_growth(work, s, report)?;
    verify_speed(work, &root, report)?;
    pruning(work, report)
}

/// `prune` of 1,000 block snapshots against `btrfs subvolume delete` of
/// 1,000 snapshots of the same layer.
fn pruning(work: &Path, report: &mut Report) -> Result<()> {
    const BLOCKS: usize = 1000;
    let root = work.join("prune");
    let mut writer = new_root(&root, "prune")?;
    populate(&mut writer, 10, 10)?;
    for n in 0..BLOCKS {
        writer.apply(patch(n % 10, n))?;
        writer.seal()?;
    }
    writer.close()?;
    let layout = RootLayout::new(&root);
    let plain = work.join("plain-snapshots");
    std::fs::create_dir_all(&plain)?;
    let mut paths = Vec::new();
    for n in 0..BLOCKS {
        let path = plain.join(format!("{n:010}"));
        btrfs::snapshot(&layout.layer(), &path, true)?;
        paths.push(path);
    }
    btrfs::sync_filesystem(&root)?;
    let started = Instant::now();
    let out = Command::new("btrfs")
        .args(["subvolume", "delete"])
        .args(&paths)
        .output()
        .context("running btrfs subvolume delete")?;
    let baseline = started.elapsed();
    if !out.status.success() {
        bail!(
            "btrfs subvolume delete failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let policy = fschain_store::retention::RetentionPolicy {
        keep_last: 1,
        ..Default::default()
    };
    let options = fschain_store::retention::PruneOptions {
        dry_run: false,
        unpublished_ok: true,
    };
    let started = Instant::now();
    let outcome = fschain_store::retention::prune_root(&layout, &policy, options)?;
    let took = started.elapsed();
    if outcome.deleted < BLOCKS {
        bail!("prune deleted {} snapshots, not {BLOCKS}", outcome.deleted);
    }
    let x = ratio(took, baseline);
    report.row(Row {
        what: format!(
            "prune {} block snapshots (keep the newest)",
            outcome.deleted
        ),
        fschain: ms(took),
        baseline: format!(
            "`btrfs subvolume delete` of {BLOCKS} snapshots: {} ({x:.2}x)",
            ms(baseline)
        ),
        target: "<= 1.5x".into(),
        met: Some(x <= 1.5),
    });
    Ok(())
}

/// Sealed operations per second, against the same state-file writes,
/// logs and snapshots with no fschain.
fn sealing(work: &Path, root: &Path, s: &Scale, report: &mut Report) -> Result<ChainWriter> {
    let mut writer = new_root(root, "bench")?;
    populate(&mut writer, s.elements, 10_000)?;
    let started = Instant::now();
    let mut rng = Rng(42);
    for i in 0..s.ops {
        writer.apply(patch(rng.below(s.elements), i))?;
        if writer.pending_len() >= s.block_ops {
            writer.seal()?;
        }
    }
    writer.seal()?;
    let took = started.elapsed();
    let ops_per_sec = s.ops as f64 / took.as_secs_f64();
    let floor = bare_block_writes(&work.join("floor"), s)?;
    report.row(Row {
        what: "operations sealed per second".into(),
        fschain: format!("{ops_per_sec:.0}/s"),
        baseline: format!(
            "{floor:.0}/s: the same state files, logs and snapshots, no fschain ({:.2}x)",
            ops_per_sec / floor
        ),
        target: ">= 100,000/s".into(),
        met: Some(ops_per_sec >= 100_000.0),
    });
    Ok(writer)
}

/// A one-operation block against the btrfs CLI's snapshot.
fn one_op_latency(
    work: &Path,
    root: &Path,
    writer: &mut ChainWriter,
    s: &Scale,
    report: &mut Report,
) -> Result<()> {
    let layer = RootLayout::new(root).layer();
    let scratch = work.join("snapshots");
    std::fs::create_dir_all(&scratch)?;
    let mut cli = Vec::new();
    let mut ioctl = Vec::new();
    for i in 0..s.iterations {
        let dest = scratch.join(format!("cli-{i}"));
        let t = Instant::now();
        let status = Command::new("btrfs")
            .args(["subvolume", "snapshot", "-r"])
            .arg(&layer)
            .arg(&dest)
            .output()?;
        cli.push(t.elapsed());
        if !status.status.success() {
            bail!(
                "btrfs subvolume snapshot failed: {}",
                String::from_utf8_lossy(&status.stderr)
            );
        }
        let dest = scratch.join(format!("ioctl-{i}"));
        let t = Instant::now();
        btrfs::snapshot(&layer, &dest, true)?;
        ioctl.push(t.elapsed());
    }
    let mut rng = Rng(7 + s.elements as u64);
    let ours = (0..s.iterations)
        .map(|i| one_op_block(writer, s.elements, i, false, &mut rng))
        .collect::<Result<Vec<_>>>()?;
    let (cli_p50, ioctl_p50, ours_p50) = (
        pct(&mut cli, 50),
        pct(&mut ioctl, 50),
        pct(&mut ours.clone(), 50),
    );
    report.row(Row {
        what: format!("one-operation block, p50 over {} runs", s.iterations),
        fschain: ms(ours_p50),
        baseline: format!(
            "`btrfs subvolume snapshot` {} ({:.2}x); the ioctl alone {}",
            ms(cli_p50),
            ratio(ours_p50, cli_p50),
            ms(ioctl_p50)
        ),
        target: "<= 2x the CLI snapshot".into(),
        met: Some(ratio(ours_p50, cli_p50) <= 2.0),
    });
    Ok(())
}

/// A one-operation block on a small and a large layer, fschain's and a
/// bare one's.
fn layer_growth(work: &Path, s: &Scale, report: &mut Report) -> Result<()> {
    // The four layers (fschain's and the bare file system's, small and
    // large) are made first and the file system settles (the large ones
    // leave seconds of writeback behind); then they are timed in turn, one
    // block each, so background work falls on all alike. The bare layers
    // show what btrfs alone does with a larger layer: after a snapshot it
    // copies the path to each changed leaf, adding a reference for every
    // child of each shared node it copies, so its cost grows with the layer.
    let mut layers = Vec::new();
    for (name, n) in [("small", s.small), ("large", s.large)] {
        let mut w = new_root(&work.join(name), name)?;
        populate(&mut w, n, 10_000)?;
        layers.push((
            OneOpLayer::Fschain(Box::new(w), n),
            Rng(7 + n as u64),
            Vec::new(),
            Vec::new(),
        ));
    }
    for (name, n) in [("bare-small", s.small), ("bare-large", s.large)] {
        let bare = BareLayer::new(&work.join(name), n)?;
        layers.push((
            OneOpLayer::Bare(bare),
            Rng(7 + n as u64),
            Vec::new(),
            Vec::new(),
        ));
    }
    settle(work)?;
    for create in [false, true] {
        for i in 0..s.iterations {
            for (layer, rng, update, created) in &mut layers {
                let took = layer.one_op_block(i, create, rng)?;
                if create { created } else { update }.push(took);
            }
        }
    }
    let mut lines = Vec::new();
    for (layer, _, mut update, mut create) in layers {
        lines.push((pct(&mut update, 50), pct(&mut create, 50)));
        if let OneOpLayer::Fschain(w, _) = layer {
            w.close()?;
        }
    }
    let (small, large, bare_small, bare_large) = (lines[0], lines[1], lines[2], lines[3]);
    for (what, ours_small, ours_large, target) in [
        ("update", small.0, large.0, Some(2.0)),
        ("create", small.1, large.1, None),
    ] {
        let (bare_small, bare_large) = if what == "update" {
            (bare_small.0, bare_large.0)
        } else {
            (bare_small.1, bare_large.1)
        };
        let growth = ratio(ours_large, ours_small);
        report.row(Row {
            what: format!(
                "one-operation block ({what}), {} vs {} elements",
                s.small, s.large
            ),
            fschain: format!("{} vs {}: {growth:.2}x", ms(ours_small), ms(ours_large)),
            baseline: format!(
                "bare layer (one state file, the logs, a snapshot; no fschain): {} vs {}: {:.2}x",
                ms(bare_small),
                ms(bare_large),
                ratio(bare_large, bare_small)
            ),
            target: target.map_or("–".into(), |t| format!("<= {t}x")),
            met: target.map(|t| growth <= t),
        });
    }
    Ok(())
}

/// `verify` against `openssl dgst -sha256` over the same bytes.
fn verify_speed(work: &Path, root: &Path, report: &mut Report) -> Result<()> {
    // Both sides are timed the same way: the median of three runs, after
    // the file system has written back what the sections before left dirty
    // (verify's own `syncfs` would otherwise pay for their writes).
    let layout = RootLayout::new(root);
    let concat = work.join("all-bytes");
    let bytes = concatenate_verified_files(&layout, &concat)?;
    fschain_store::btrfs::sync_filesystem(root)?;
    let mut verify_runs = Vec::new();
    let mut verified = None;
    for _ in 0..3 {
        let started = Instant::now();
        let this = verify_root(&layout)?;
        verify_runs.push(started.elapsed());
        if !this.is_clean() {
            bail!("the benchmark chain did not verify: {}", this.problems[0]);
        }
        verified = Some(this);
    }
    let verified = verified.context("verify did not run")?;
    let verify_took = pct(&mut verify_runs, 50);
    let mut openssl_runs = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let out = Command::new("openssl")
            .args(["dgst", "-sha256"])
            .arg(&concat)
            .output()
            .context("running openssl")?;
        openssl_runs.push(started.elapsed());
        if !out.status.success() {
            bail!(
                "openssl dgst failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let openssl_took = pct(&mut openssl_runs, 50);
    let rate = |b: u64, d: Duration| b as f64 / d.as_secs_f64() / 1e6;
    let ours = rate(verified.bytes, verify_took);
    let theirs = rate(bytes, openssl_took);
    report.row(Row {
        what: format!(
            "verify: {} blocks, {} copies, {:.0} MB checked ({:.0} MB shared on disk); median of 3",
            verified.blocks,
            verified.snapshots,
            verified.bytes as f64 / 1e6,
            verified.shared as f64 / 1e6
        ),
        fschain: format!("{ours:.0} MB/s"),
        baseline: format!(
            "`openssl dgst -sha256` over the same bytes in one file: {theirs:.0} MB/s ({:.2}x)",
            ours / theirs
        ),
        target: ">= 0.8x openssl".into(),
        met: Some(ours / theirs >= 0.8),
    });
    Ok(())
}

/// A layer without fschain: the same state files (paths under `states/`,
/// canonical bytes, the states' compression property) and the two logs,
/// written and snapshotted directly. Blocks are snapshots in `dir`.
struct BareLayer {
    dir: PathBuf,
    layer: PathBuf,
    elements: usize,
    created: usize,
    blocks: usize,
}

impl BareLayer {
    fn new(dir: &Path, elements: usize) -> Result<Self> {
        let layer = dir.join("layer");
        std::fs::create_dir_all(dir)?;
        btrfs::create_subvolume(&layer)?;
        let states = layer.join(fschain_store::state_path::STATES_DIR);
        std::fs::create_dir_all(&states)?;
        btrfs::set_compression(&states, btrfs::STATES_COMPRESSION)?;
        let mut bare = BareLayer {
            dir: dir.to_owned(),
            layer,
            elements: 0,
            created: 0,
            blocks: 0,
        };
        for i in 0..elements {
            bare.write(i, &state_bytes(i))?;
        }
        bare.elements = elements;
        for log in [EVENTS_LOG, HEADERS_LOG] {
            std::fs::write(bare.layer.join(log), b"")?;
        }
        bare.snapshot()?;
        Ok(bare)
    }

    /// Writes element `i`'s state file as a seal does.
    fn write(&self, i: usize, bytes: &[u8]) -> Result<()> {
        Ok(write_state_file(
            &self.layer.join(state_path(&element(i))),
            bytes,
        )?)
    }

    /// Appends an event line per operation and a header line, and takes a
    /// read-only snapshot.
    fn seal(&mut self, operations: usize) -> Result<()> {
        use std::io::Write;
        let append = |log: &str, bytes: &[u8]| -> Result<()> {
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(self.layer.join(log))?;
            Ok(file.write_all(bytes)?)
        };
        append(EVENTS_LOG, &[b'e'; 400].repeat(operations))?;
        append(HEADERS_LOG, &[b'h'; 420])?;
        self.snapshot()
    }

    fn snapshot(&mut self) -> Result<()> {
        btrfs::snapshot(
            &self.layer,
            &self.dir.join(format!("b{}", self.blocks)),
            true,
        )?;
        self.blocks += 1;
        Ok(())
    }

    /// One block of one operation: an update of a random element, or a new
    /// element. Returns how long it took.
    fn one_op_block(&mut self, create: bool, rng: &mut Rng) -> Result<Duration> {
        let t = Instant::now();
        if create {
            let i = self.elements + 1_000_000 + self.created;
            self.write(i, &state_bytes(i))?;
            self.created += 1;
        } else {
            let i = rng.below(self.elements);
            self.write(i, &state_bytes(i + self.blocks))?;
        }
        self.seal(1)?;
        Ok(t.elapsed())
    }
}

/// A layer one-operation blocks are timed on: fschain's, or bare.
enum OneOpLayer {
    Fschain(Box<ChainWriter>, usize),
    Bare(BareLayer),
}

impl OneOpLayer {
    fn one_op_block(&mut self, i: usize, create: bool, rng: &mut Rng) -> Result<Duration> {
        match self {
            OneOpLayer::Fschain(writer, n) => one_op_block(writer, *n, i, create, rng),
            OneOpLayer::Bare(bare) => bare.one_op_block(create, rng),
        }
    }
}

/// The canonical bytes of [`state`]`(i)`.
fn state_bytes(i: usize) -> Vec<u8> {
    fschain_schema::jcs::canonical(&serde_json::Value::Object(state(i))).unwrap_or_default()
}

/// The file-system work of sealing, without fschain: per block, overwrite
/// as many state files as the block has operations (open, write, close, in
/// one thread, among `elements` files) and take a read-only snapshot.
/// Returns operations per second.
fn bare_block_writes(dir: &Path, s: &Scale) -> Result<f64> {
    let mut bare = BareLayer::new(dir, s.elements)?;
    let blocks = (s.ops / s.block_ops).max(1);
    // Encoded before the clock starts: the floor times file work only.
    let content: Vec<Vec<u8>> = (0..s.elements + blocks).map(state_bytes).collect();
    let mut rng = Rng(42);
    let started = Instant::now();
    for b in 0..blocks {
        for _ in 0..s.block_ops {
            let i = rng.below(s.elements);
            bare.write(i, &content[i + b])?;
        }
        bare.seal(s.block_ops)?;
    }
    Ok((blocks * s.block_ops) as f64 / started.elapsed().as_secs_f64())
}

pub(crate) fn new_root(root: &Path, chain: &str) -> Result<ChainWriter> {
    init_root(root, ChainName::parse(chain)?, &mut SystemClock)?;
    Ok(ChainWriter::open(RootLayout::new(root))?)
}

pub(crate) fn element(i: usize) -> ElementId {
    // Ids spread over the whole id space, like real hosts' mixed kinds.
    let kinds = ["iface", "service", "file", "sysctl", "ovs-port", "user"];
    let kind = kinds[i % kinds.len()];
    ElementId::parse(&format!(
        "{kind}:e{:08x}",
        (i as u64).wrapping_mul(2654435761) % (1 << 32)
    ))
    .unwrap_or_else(|_| unreachable!())
}

pub(crate) fn state(i: usize) -> State {
    let v = json!({"mtu": 1500, "up": true, "addresses": [format!("10.{}.{}.{}/24", i % 250, (i / 250) % 250, i % 7)], "speed": "10G", "rev": i});
    v.as_object().cloned().unwrap_or_default()
}

pub(crate) fn patch_op(i: usize, n: usize) -> Operation {
    patch(i, n)
}

fn patch(i: usize, n: usize) -> Operation {
    let state = json!({"rev": n, "up": !n.is_multiple_of(3)})
        .as_object()
        .cloned()
        .unwrap_or_default();
    Operation {
        element: element(i),
        action: Action::Patch,
        state: Some(state),
        reason: Some("bench".into()),
        actor: None,
        signature: None,
    }
}

pub(crate) fn populate(writer: &mut ChainWriter, n: usize, block: usize) -> Result<()> {
    for i in 0..n {
        let op = Operation {
            element: element(i),
            action: Action::Set,
            state: Some(state(i)),
            reason: Some("inventory".into()),
            actor: None,
            signature: None,
        };
        writer.apply(op)?;
        if writer.pending_len() >= block {
            writer.seal()?;
        }
    }
    writer.seal()?;
    Ok(())
}

/// Applies and seals one operation on a layer of `n` elements: an update of
/// a random element, or the creation of element `i` past the others.
fn one_op_block(
    writer: &mut ChainWriter,
    n: usize,
    i: usize,
    create: bool,
    rng: &mut Rng,
) -> Result<Duration> {
    let op = if create {
        let id = n + 1_000_000 + i;
        Operation {
            element: element(id),
            action: Action::Set,
            state: Some(state(id)),
            reason: None,
            actor: None,
            signature: None,
        }
    } else {
        patch(rng.below(n), i)
    };
    let t = Instant::now();
    writer.apply(op)?;
    writer.seal()?;
    Ok(t.elapsed())
}

/// Every file `verify` reads, concatenated, for the openssl baseline.
fn concatenate_verified_files(layout: &RootLayout, dest: &Path) -> Result<u64> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(dest)?);
    let mut total = 0u64;
    let mut copies: Vec<PathBuf> = layout
        .snapshot_heights()?
        .into_iter()
        .map(|h| layout.snapshot(h))
        .collect();
    copies.push(layout.layer());
    for copy in copies {
        let mut stack = vec![copy.clone()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d)? {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    stack.push(entry.path());
                } else if entry.file_name() != "CHAIN" {
                    let bytes = std::fs::read(entry.path())?;
                    total += bytes.len() as u64;
                    out.write_all(&bytes)?;
                }
            }
        }
    }
    out.flush()?;
    Ok(total)
}

/// Waits until the file system has written back what earlier sections left
/// dirty and the btrfs cleaner has dropped the subvolumes they deleted, so
/// neither runs in the background of the next measurement.
pub(crate) fn settle(dir: &Path) -> Result<()> {
    fschain_store::btrfs::sync_filesystem(dir)?;
    let out = Command::new("btrfs")
        .args(["subvolume", "sync"])
        .arg(dir)
        .output()
        .context("running btrfs subvolume sync")?;
    if !out.status.success() {
        bail!(
            "btrfs subvolume sync failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub(crate) fn cleanup(work: &Path) {
    btrfs::delete_subvolumes_below(work);
    let _ = std::fs::remove_dir_all(work);
}

pub(crate) fn pct(times: &mut [Duration], p: usize) -> Duration {
    times.sort_unstable();
    times
        .get((times.len() * p / 100).min(times.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

pub(crate) fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}
