//! `fschain verify`: re-derive everything from the snapshots.
//!
//! The newest snapshot's logs are checked in full by the pure
//! [`LogChecker`], read one line at a time. Every other snapshot must
//! hold a byte-exact prefix of them, compared a piece at a time (and is
//! checked in full on its own when it does not, to name the fault); it must
//! be read-only, and its state files must hash to its block's state root.
//! The layer must match the head block.
//!
//! Memory stays bounded by one log line and one state file whatever the
//! chain holds. The work runs on every core: the head's log check and each
//! copy's state scan are independent jobs, and so are the comparisons.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use fschain_schema::verify::{state_root_of, ElementTip, LogCheck, LogChecker, Problem};
use fschain_schema::{BlockHeader, ChainName, ElementId, StateHash, StateRoot};
use serde::Serialize;

use crate::layout::{ChainMeta, RootLayout, CHAIN_FILE, EVENTS_LOG, HEADERS_LOG};
use crate::log_file::{prefix_check, same_bytes_check, LogLineAt, LogLines};
use crate::{btrfs, ChainDir, StoreError};

/// Everything `verify` checked and found.
#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub chain: String,
    pub head: Option<u64>,
    pub blocks: u64,
    pub events: u64,
    pub snapshots: u64,
    /// Bytes checked: hashed, compared, or known to be the very disk bytes
    /// of ones that were.
    pub bytes: u64,
    /// Of `bytes`, those known without reading them: log bytes that btrfs
    /// stores once for a snapshot and the copy it was compared with.
    pub shared: u64,
    /// Heights whose snapshots retention deleted: their headers and events
    /// are checked in the newer snapshots' logs, their states are not.
    pub pruned: Vec<u64>,
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    fn new(chain: &ChainName, head: Option<u64>) -> Self {
        VerifyReport {
            chain: chain.to_string(),
            head,
            blocks: 0,
            events: 0,
            snapshots: 0,
            bytes: 0,
            shared: 0,
            pruned: Vec::new(),
            problems: Vec::new(),
        }
    }
}

/// One copy of the chain: a block's snapshot or the layer.
#[derive(Debug)]
struct ChainCopy {
    dir: ChainDir,
    place: String,
    /// The block whose state it must hold.
    height: u64,
    /// A block snapshot (must be read-only), not the layer.
    snapshot: bool,
}

/// What scanning one copy's files found, before its block's header is known.
#[derive(Debug)]
struct CopyScan {
    root: StateRoot,
    bytes: u64,
    problems: Vec<Problem>,
}

/// One job's outcome: a copy's logs checked in full, or its files scanned.
enum Checked {
    Logs(Result<LogCheck, Box<Problem>>),
    Scan(CopyScan),
}

/// What comparing one copy's logs with the head's found.
#[derive(Debug, Default)]
struct LogCompare {
    bytes: u64,
    shared: u64,
    problems: Vec<Problem>,
    /// The copy's own logs, checked in full because they differ.
    own: Option<LogCheck>,
    /// The logs could not be read: the copy's states are not checked.
    unreadable: bool,
}

/// Verifies the root at `layout`. Fails only when it cannot run at all (not
/// a root); everything wrong with the chain is a [`Problem`] in the report.
pub fn verify_root(layout: &RootLayout) -> Result<VerifyReport, StoreError> {
    verify_root_with_progress(layout, &|_, _| {})
}

/// [`verify_root`], calling `progress(done, total)` as each copy (and the
/// head's logs) is checked.
pub fn verify_root_with_progress(
    layout: &RootLayout,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<VerifyReport, StoreError> {
    let meta = layout.read_marker()?;
    let chain = meta.chain.clone();
    let mut report = VerifyReport::new(&chain, None);
    let heights = layout.snapshot_heights()?;
    let Some(&head) = heights.last() else {
        report.problems.push(Problem::BadSnapshot {
            place: "blocks/".into(),
            height: 0,
            message: "no snapshots at all".into(),
        });
        return Ok(report);
    };
    report.head = Some(head);
    // A site rebuilt from a checkpoint holds blocks from that one on.
    let base = crate::layout::replica_base(layout)?.unwrap_or(0);
    let pruned = crate::retention::pruned_heights(layout)?;
    for h in base..=head {
        if heights.binary_search(&h).is_err() {
            if pruned.contains(&h) && h != head {
                report.pruned.push(h);
                continue;
            }
            report.problems.push(Problem::BadSnapshot {
                place: place(h),
                height: h,
                message: "snapshot is missing".into(),
            });
        }
    }

    // The head first (the reference copy), the older snapshots, the layer.
    let snapshot = |h: u64| ChainCopy {
        dir: ChainDir::new(layout.snapshot(h)),
        place: place(h),
        height: h,
        snapshot: true,
    };
    let mut copies = vec![snapshot(head)];
    copies.extend(heights.iter().filter(|&&h| h < head).map(|&h| snapshot(h)));
    let layer = layout.layer();
    if layer.exists() {
        copies.push(ChainCopy {
            dir: ChainDir::new(layer),
            place: "layer".into(),
            height: head,
            snapshot: false,
        });
    }
    let head_dir = &copies[0].dir;
    let from_tree = flushed_for_tree_reads(layout.root());

    // 1. The head's logs in full, and every copy's files, side by side.
    let jobs: Vec<Option<&ChainCopy>> = std::iter::once(None)
        .chain(copies.iter().map(Some))
        .collect();
    let started = std::time::Instant::now();
    let finished = AtomicUsize::new(0);
    let mut done = parallel_map(&jobs, |job| {
        let t = std::time::Instant::now();
        let done = match job {
            None => Checked::Logs(check_copy_logs(&copies[0].place, &chain, head_dir)),
            Some(copy) => Checked::Scan(scan_copy(copy, &meta, from_tree)),
        };
        let job = job.map_or("the head's logs", |c| c.place.as_str());
        tracing::debug!(
            job,
            took_ms = t.elapsed().as_millis() as u64,
            "verify job done"
        );
        let n = finished.fetch_add(1, Ordering::Relaxed) + 1;
        progress(n as u64, jobs.len() as u64);
        done
    })
    .into_iter();
    tracing::debug!(
        took_ms = started.elapsed().as_millis() as u64,
        "head's logs checked, every copy's states hashed"
    );
    let logs = match done.next() {
        Some(Checked::Logs(Ok(logs))) => logs,
        Some(Checked::Logs(Err(problem))) => {
            report.problems.push(*problem);
            return Ok(report);
        }
        _ => unreachable!("the first job checks the head's logs"),
    };
    let scans: Vec<CopyScan> = done
        .filter_map(|c| match c {
            Checked::Scan(scan) => Some(scan),
            Checked::Logs(_) => None,
        })
        .collect();
    report.bytes += log_bytes(&logs);
    report.blocks = logs.headers.len() as u64;
    report.events = logs.events_checked;
    report.problems.extend(logs.problems.iter().cloned());
    if logs.headers.len() as u64 != head + 1 {
        report.problems.push(Problem::BadSnapshot {
            place: place(head),
            height: head,
            message: format!(
                "holds {} headers, expected {}",
                logs.headers.len(),
                head + 1
            ),
        });
    }

    // 2. Every other copy's logs against the head's.
    let started = std::time::Instant::now();
    let compares = parallel_map(&copies[1..], |copy| {
        compare_logs(copy, head_dir, head, &logs, &chain)
    });
    tracing::debug!(
        took_ms = started.elapsed().as_millis() as u64,
        "every copy's logs compared with the head's"
    );
    let compares = std::iter::once(LogCompare::default()).chain(compares);

    for ((copy, scan), compare) in copies.iter().zip(scans).zip(compares) {
        report.bytes += compare.bytes;
        report.shared += compare.shared;
        report.problems.extend(compare.problems);
        if compare.unreadable {
            continue;
        }
        let tips = if copy.height == head {
            Some(&logs.tips)
        } else {
            compare.own.as_ref().map(|own| &own.tips)
        };
        report_copy(&mut report, copy, scan, &meta, &logs.headers, tips);
    }
    Ok(report)
}

fn place(height: u64) -> String {
    format!("block {height} snapshot")
}

fn log_bytes(logs: &LogCheck) -> u64 {
    logs.header_ends.last().copied().unwrap_or(0) + logs.event_ends.last().copied().unwrap_or(0)
}

/// Runs `f` on every item on all cores; the results keep the items' order.
fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len());
    if workers <= 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new(items.iter().map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = f(item);
                results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .flatten()
        .collect()
}

/// Checks the logs of the copy at `dir` in full, one line in memory at a
/// time. A log that cannot be opened is the one problem returned.
fn check_copy_logs(
    place: &str,
    chain: &ChainName,
    dir: &ChainDir,
) -> Result<LogCheck, Box<Problem>> {
    copy_log_checker(place, chain, dir).map(LogChecker::into_report)
}

/// [`check_copy_logs`], keeping the checker to resume on a newer copy.
fn copy_log_checker(
    place: &str,
    chain: &ChainName,
    dir: &ChainDir,
) -> Result<LogChecker, Box<Problem>> {
    let mut checker = LogChecker::new(place, chain);
    let (mut headers, mut events, mut events_at) = open_logs(place, dir, 0, 0)?;
    checker.feed_blocks(&mut headers, &mut events, &mut events_at);
    checker.check_end(&mut events);
    Ok(checker)
}

/// The logs of the copy at `dir`, read from the given byte offsets.
fn open_logs(
    place: &str,
    dir: &ChainDir,
    header_from: u64,
    event_from: u64,
) -> Result<(LogLines, LogLines, LogLineAt), Box<Problem>> {
    let unreadable = |e: std::io::Error, file: &str| {
        Box::new(Problem::Unreadable {
            place: place.into(),
            message: format!("{}: {e}", dir.path().join(file).display()),
        })
    };
    let headers_path = dir.path().join(HEADERS_LOG);
    let events_path = dir.path().join(EVENTS_LOG);
    Ok((
        LogLines::open_at(&headers_path, header_from).map_err(|e| unreadable(e, HEADERS_LOG))?,
        LogLines::open_at(&events_path, event_from).map_err(|e| unreadable(e, EVENTS_LOG))?,
        LogLineAt::open(&events_path).map_err(|e| unreadable(e, EVENTS_LOG))?,
    ))
}

/// Whether the logs of `older` are exactly the first `header_end` and
/// `event_end` bytes of the logs of `newer`; if so, how many of those bytes
/// were known the same without reading them.
fn extends(
    older: &ChainDir,
    newer: &ChainDir,
    header_end: u64,
    event_end: u64,
) -> std::io::Result<Option<u64>> {
    let file = |dir: &ChainDir, name: &str| dir.path().join(name);
    let Some(headers) = prefix_check(
        &file(older, HEADERS_LOG),
        &file(newer, HEADERS_LOG),
        header_end,
    )?
    else {
        return Ok(None);
    };
    Ok(prefix_check(
        &file(older, EVENTS_LOG),
        &file(newer, EVENTS_LOG),
        event_end,
    )?
    .map(|events| headers + events))
}

/// Compares the logs of `copy` with the head's: an older snapshot must hold
/// their prefix up to its block, the layer all of them. When they differ,
/// the copy's own logs are checked in full, so the report names the fault.
fn compare_logs(
    copy: &ChainCopy,
    head_dir: &ChainDir,
    head: u64,
    logs: &LogCheck,
    chain: &ChainName,
) -> LogCompare {
    let mut out = LogCompare::default();
    let same = if copy.snapshot {
        let h = copy.height as usize;
        match logs.header_ends.get(h).zip(logs.event_ends.get(h)) {
            Some((&end_h, &end_e)) => {
                extends(&copy.dir, head_dir, end_h, end_e).inspect(|_| out.bytes = end_h + end_e)
            }
            None => Ok(None),
        }
    } else {
        let file = |dir: &ChainDir, name: &str| dir.path().join(name);
        let both = || -> std::io::Result<Option<u64>> {
            let Some(h) =
                same_bytes_check(&file(&copy.dir, HEADERS_LOG), &file(head_dir, HEADERS_LOG))?
            else {
                return Ok(None);
            };
            Ok(
                same_bytes_check(&file(&copy.dir, EVENTS_LOG), &file(head_dir, EVENTS_LOG))?
                    .map(|e| h + e),
            )
        };
        both().inspect(|same| {
            if same.is_some() {
                out.bytes = log_bytes(logs);
            }
        })
    };
    match same {
        Ok(Some(shared)) => out.shared = shared,
        Ok(None) => match check_copy_logs(&copy.place, chain, &copy.dir) {
            Ok(own) => {
                if !copy.snapshot {
                    out.problems.extend(own.problems);
                    out.problems.push(Problem::Diverges {
                        place: copy.place.clone(),
                        file: "headers.log/events.log".into(),
                        message: format!("differ from block {head}'s snapshot"),
                    });
                    return out;
                }
                if own.problems.is_empty() {
                    out.problems.push(Problem::Diverges {
                        place: copy.place.clone(),
                        file: "headers.log/events.log".into(),
                        message: "are valid on their own but differ from the newer snapshots"
                            .into(),
                    });
                }
                out.problems.extend(own.problems.iter().cloned());
                out.own = Some(own);
            }
            Err(problem) => {
                out.problems.push(*problem);
                out.unreadable = copy.snapshot;
            }
        },
        Err(e) => {
            out.problems.push(Problem::Unreadable {
                place: copy.place.clone(),
                message: e.to_string(),
            });
            out.unreadable = copy.snapshot;
        }
    }
    out
}

/// Checks one copy's CHAIN file and read-only flag, and hashes its state
/// files into a state root.
fn scan_copy(copy: &ChainCopy, meta: &ChainMeta, from_tree: bool) -> CopyScan {
    let place = copy.place.as_str();
    let mut problems = Vec::new();
    match copy.dir.meta() {
        Ok(m) if &m == meta => {}
        Ok(m) => problems.push(Problem::Diverges {
            place: place.into(),
            file: CHAIN_FILE.into(),
            message: format!("names chain {}, the root names {}", m.chain, meta.chain),
        }),
        Err(e) => problems.push(Problem::Unreadable {
            place: place.into(),
            message: e.to_string(),
        }),
    }
    if copy.snapshot {
        match btrfs::is_readonly(copy.dir.path()) {
            Ok(true) => {}
            Ok(false) => problems.push(Problem::BadSnapshot {
                place: place.into(),
                height: copy.height,
                message: "is writable; every block snapshot must be read-only".into(),
            }),
            Err(e) => problems.push(Problem::BadSnapshot {
                place: place.into(),
                height: copy.height,
                message: e.to_string(),
            }),
        }
    }
    let scan = if from_tree {
        copy.dir.state_hashes_from_tree(place)
    } else {
        copy.dir.state_hashes(place)
    };
    problems.extend(scan.problems);
    CopyScan {
        root: state_root_of(scan.states),
        bytes: scan.bytes,
        problems,
    }
}

/// Adds what the scan of `copy` found, and checks its state root against
/// its block's header. `tips`, when known for exactly that block, let a
/// mismatch name the element at fault.
fn report_copy(
    report: &mut VerifyReport,
    copy: &ChainCopy,
    scan: CopyScan,
    meta: &ChainMeta,
    headers: &[BlockHeader],
    tips: Option<&HashMap<ElementId, ElementTip>>,
) {
    report.snapshots += 1;
    report.bytes += scan.bytes;
    report.problems.extend(scan.problems);
    let Some(header) = headers.get(copy.height as usize) else {
        return;
    };
    if scan.root == header.state_root {
        return;
    }
    let place = copy.place.as_str();
    report.problems.push(Problem::StateRootMismatch {
        place: place.into(),
        height: copy.height,
        expected: header.state_root,
        actual: scan.root,
    });
    // Name the elements at fault: scan again (a rare path, so the states
    // are not held for every copy), and replay this copy's own logs when
    // the states expected at this height are not known yet.
    let own;
    let tips = match tips {
        Some(t) => t,
        None => match check_copy_logs(place, &meta.chain, &copy.dir) {
            Ok(logs) => {
                own = logs;
                &own.tips
            }
            Err(_) => return,
        },
    };
    let states = copy.dir.state_hashes(place).states;
    let found: HashMap<&ElementId, &StateHash> = states.iter().map(|(e, s)| (e, s)).collect();
    for (element, tip) in tips {
        let actual = found.get(element).map(|s| **s);
        if actual != tip.state_hash {
            report.problems.push(Problem::StateFileMismatch {
                place: place.into(),
                element: element.to_string(),
                expected: tip.state_hash,
                actual,
            });
        }
    }
    for (element, state) in &states {
        if !tips.contains_key(element) {
            report.problems.push(Problem::StateFileMismatch {
                place: place.into(),
                element: element.to_string(),
                expected: None,
                actual: Some(*state),
            });
        }
    }
}

/// The replayed logs of the newest block a site verified, kept between
/// blocks so that the next block's logs are checked from where that one
/// ended (its log prefix compared byte for byte, only what it appends
/// replayed), not from genesis.
#[derive(Debug)]
pub struct VerifiedLogs {
    height: u64,
    checker: LogChecker,
}

impl VerifiedLogs {
    /// The block whose logs these are.
    pub fn height(&self) -> u64 {
        self.height
    }
}

/// The newest block the site at `layout` holds below `height`.
fn previous_block(layout: &RootLayout, height: u64) -> Result<Option<(u64, ChainDir)>, StoreError> {
    Ok(layout
        .snapshot_heights()?
        .into_iter()
        .filter(|&h| h < height)
        .max()
        .map(|h| (h, ChainDir::new(layout.snapshot(h)))))
}

/// A received copy's logs, checked while `btrfs receive` still wrote the
/// rest of it (see [`EarlyLogCheck`]).
#[derive(Debug)]
struct EarlyLogs {
    height: u64,
    outcome: Result<LogChecker, Box<Problem>>,
    /// The inode and length of events.log and headers.log once checked.
    files: [(u64, u64); 2],
}

/// The early check's outcome, if the logs are still the files, of the
/// lengths, it checked.
fn unchanged_since_checked(
    early: EarlyLogs,
    dir: &ChainDir,
    place: &str,
) -> Result<LogChecker, Box<Problem>> {
    let checker = early.outcome?;
    if log_files(dir) == Some(early.files) {
        return Ok(checker);
    }
    Err(Box::new(Problem::BadSnapshot {
        place: place.into(),
        height: early.height,
        message: "its logs changed after they were checked".into(),
    }))
}

/// The inode number and length of events.log and of headers.log in the
/// copy at `dir`.
fn log_files(dir: &ChainDir) -> Option<[(u64, u64); 2]> {
    use std::os::unix::fs::MetadataExt;
    let id = |file: &str| {
        let m = std::fs::symlink_metadata(dir.path().join(file)).ok()?;
        Some((m.ino(), m.len()))
    };
    Some([id(EVENTS_LOG)?, id(HEADERS_LOG)?])
}

/// A check of a received copy's logs, under way on its own thread while
/// `btrfs receive` still writes the rest of the copy.
#[derive(Debug)]
pub struct EarlyLogCheck(std::thread::JoinHandle<EarlyOutcome>);

/// How an early log check ended.
#[derive(Debug)]
enum EarlyOutcome {
    /// The logs were checked while the receive ran.
    Checked(Box<EarlyLogs>),
    /// The check could not run early; the previous block's replay is
    /// handed back for the check after the receive.
    NotRun(Box<VerifiedLogs>),
}

impl EarlyLogCheck {
    /// Starts checking the logs of block `expected`, which `btrfs receive`
    /// is writing at `dir`, from where `verified` (the site's previous
    /// block) ended, so that the check uses the time the state files take
    /// to arrive. `btrfs send` orders a stream's commands by inode number,
    /// and a chain's events.log is older than its headers.log: once
    /// headers.log is as long as the signed header makes it, every command
    /// of the stream for events.log has run, and the rest writes state
    /// files. [`verify_received`] then checks that both logs are still the
    /// files, of the lengths, that were checked. The thread runs at the
    /// lowest priority (nice 19), so a receive that needs both cores keeps
    /// them. `receiving` says whether the receive still runs. The check
    /// hands `verified` back, for [`verify_received`] to check the logs
    /// after the receive, when it cannot run early: no resumable previous
    /// block, headers.log not the younger file, or the receive ended first.
    /// `None` when no thread could be started (the logs are then checked in
    /// full after the receive).
    pub fn start(
        layout: RootLayout,
        dir: ChainDir,
        expected: BlockHeader,
        verified: VerifiedLogs,
        receiving: impl Fn() -> bool + Send + 'static,
    ) -> Option<Self> {
        std::thread::Builder::new()
            .name(format!("logs-{}", expected.height))
            .spawn(move || {
                // Lowering one's own priority needs no privilege; a thread
                // that keeps nice 0 only checks sooner.
                let _ = rustix::process::setpriority_process(None, 19);
                check_logs_early(&layout, &dir, &expected, verified, receiving)
            })
            .ok()
            .map(EarlyLogCheck)
    }

    /// Whether the check has run to its end (or handed the replay back).
    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }

    /// Waits for the check (of a receive given up) and returns the previous
    /// block's replayed logs if it handed them back.
    pub fn abandon(self) -> Option<VerifiedLogs> {
        match self.finish() {
            EarlyOutcome::NotRun(verified) => Some(*verified),
            EarlyOutcome::Checked(_) => None,
        }
    }

    fn finish(self) -> EarlyOutcome {
        match self.0.join() {
            Ok(outcome) => outcome,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

fn check_logs_early(
    layout: &RootLayout,
    dir: &ChainDir,
    expected: &BlockHeader,
    verified: VerifiedLogs,
    receiving: impl Fn() -> bool,
) -> EarlyOutcome {
    let height = expected.height;
    let previous = match previous_block(layout, height) {
        Ok(Some((h, d))) if h == verified.height => d,
        _ => return EarlyOutcome::NotRun(Box::new(verified)),
    };
    let Ok(line) = expected.to_canonical() else {
        return EarlyOutcome::NotRun(Box::new(verified));
    };
    let done = verified.checker.report();
    let headers_len = done.header_ends.last().copied().unwrap_or(0) + line.len() as u64 + 1;
    let [(events, _), (headers, _)] = loop {
        match log_files(dir) {
            Some(files @ [_, (_, len)]) if len >= headers_len => break files,
            _ if !receiving() => return EarlyOutcome::NotRun(Box::new(verified)),
            _ => std::thread::sleep(std::time::Duration::from_millis(5)),
        }
    };
    if events >= headers {
        return EarlyOutcome::NotRun(Box::new(verified));
    }
    let place = format!("received block {height}");
    let outcome = resume_logs(verified.checker, &place, Some(&previous), dir);
    let files = log_files(dir).unwrap_or_default();
    EarlyOutcome::Checked(Box::new(EarlyLogs {
        height,
        outcome,
        files,
    }))
}

/// Verifies a snapshot a site has just received (at `dir`, still under its
/// staging name) as block `height` of the chain at `layout`, against the
/// header the producer signed: the same checks `verify` makes of a
/// snapshot. Its logs must extend the logs of the site's previous block
/// byte for byte, and are checked in full, or, when `verified` holds the
/// replayed logs of that previous block, from where they ended; its state
/// files must hash to the header's state root; it must be read-only.
/// Flushes the filesystem (`syncfs`) to read the state files from the
/// btrfs tree; that flush is also what makes the received block durable
/// before its caller moves it into place, so a flush that fails is an
/// error. Returns the problems found. On success `verified` holds this
/// block's replayed logs; otherwise it is emptied.
pub fn verify_received(
    layout: &RootLayout,
    dir: &ChainDir,
    expected: &BlockHeader,
    verified: &mut Option<VerifiedLogs>,
    early: Option<EarlyLogCheck>,
) -> Result<Vec<Problem>, StoreError> {
    let height = expected.height;
    let meta = ChainMeta::new(expected.chain.clone());
    let mut report = VerifyReport::new(&meta.chain, Some(height));
    let copy = ChainCopy {
        dir: dir.clone(),
        place: format!("received block {height}"),
        height,
        snapshot: true,
    };
    let p = copy.place.clone();
    let previous = previous_block(layout, height)?;
    let resume = verified.take();
    // State files from the btrfs tree, as `verify` reads them: one tree
    // search instead of opening every state file, which took seconds a
    // block at 100,000 elements. The sync is also what makes the block
    // durable, so its failure is the caller's.
    let scan_states = || {
        btrfs::sync_filesystem(dir.path())?;
        Ok::<_, StoreError>(scan_copy(&copy, &meta, true))
    };
    // Its logs (checked while the receive still wrote the state files, or
    // now, from the previous block's replay or in full), and its files,
    // side by side.
    let ((outcome, resumed), scan) = side_by_side(
        || {
            let handed_back = match early.map(EarlyLogCheck::finish) {
                Some(EarlyOutcome::Checked(early)) if early.height == height => {
                    return (unchanged_since_checked(*early, dir, &p), true);
                }
                Some(EarlyOutcome::Checked(_)) | None => None,
                Some(EarlyOutcome::NotRun(verified)) => Some(*verified),
            };
            let resume = resume
                .or(handed_back)
                .filter(|v| previous.as_ref().is_some_and(|(h, _)| *h == v.height));
            match resume {
                Some(v) => (
                    resume_logs(v.checker, &p, previous.as_ref().map(|(_, d)| d), dir),
                    true,
                ),
                None => (copy_log_checker(&p, &meta.chain, dir), false),
            }
        },
        scan_states,
    );
    let scan = scan?;
    let checker = match outcome {
        Ok(checker) => checker,
        Err(problem) => {
            report.problems.push(*problem);
            return Ok(report.problems);
        }
    };
    let logs = checker.report();
    report.problems.extend(logs.problems.iter().cloned());
    match logs.headers.get(height as usize) {
        Some(h) if h == expected && logs.headers.len() as u64 == height + 1 => {}
        _ => report.problems.push(Problem::BadSnapshot {
            place: p.clone(),
            height,
            message: format!(
                "does not end with the signed header of block {height} ({})",
                expected.hash
            ),
        }),
    }
    // The previous block the site holds must be a prefix of this one (a
    // resumed check compared them before reading on).
    if let (Some((prev, prev_dir)), false) = (&previous, resumed) {
        let ends = logs
            .header_ends
            .get(*prev as usize)
            .zip(logs.event_ends.get(*prev as usize));
        let same = ends.is_some_and(|(&end_h, &end_e)| {
            matches!(extends(prev_dir, dir, end_h, end_e), Ok(Some(_)))
        });
        if !same {
            report.problems.push(diverges_from(&p, *prev));
        }
    }
    report_copy(
        &mut report,
        &copy,
        scan,
        &meta,
        &logs.headers,
        Some(&logs.tips),
    );
    if report.problems.is_empty() {
        *verified = Some(VerifiedLogs { height, checker });
    }
    Ok(report.problems)
}

fn diverges_from(place: &str, prev: u64) -> Problem {
    Problem::Diverges {
        place: place.into(),
        file: "headers.log/events.log".into(),
        message: format!("do not extend the logs of block {prev}, which this site holds"),
    }
}

/// Checks the logs of the received copy at `dir` from where `checker` (the
/// previous block's, at `prev_dir`) ended: the previous logs must be their
/// byte prefix, and only what follows is replayed.
fn resume_logs(
    mut checker: LogChecker,
    place: &str,
    prev_dir: Option<&ChainDir>,
    dir: &ChainDir,
) -> Result<LogChecker, Box<Problem>> {
    let done = checker.report();
    let prev = done.headers.len().saturating_sub(1) as u64;
    let end_h = done.header_ends.last().copied().unwrap_or(0);
    let end_e = done.event_ends.last().copied().unwrap_or(0);
    let same = prev_dir.is_some_and(|d| matches!(extends(d, dir, end_h, end_e), Ok(Some(_))));
    if !same {
        return Err(Box::new(diverges_from(place, prev)));
    }
    let (mut headers, mut events, mut events_at) = open_logs(place, dir, end_h, end_e)?;
    checker.set_place(place);
    checker.feed_blocks(&mut headers, &mut events, &mut events_at);
    checker.check_end(&mut events);
    Ok(checker)
}

/// Runs `a` on another thread while `b` runs on this one.
/// Flushes the filesystem holding `path` so that its btrfs trees hold what
/// was written, and says whether state files can be read from them; when
/// the flush fails they are read one by one.
fn flushed_for_tree_reads(path: &std::path::Path) -> bool {
    match btrfs::sync_filesystem(path) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, "syncfs failed; reading state files one by one");
            false
        }
    }
}

fn side_by_side<A: Send, B>(a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B) -> (A, B) {
    std::thread::scope(|s| {
        let other = s.spawn(a);
        let here = b();
        match other.join() {
            Ok(there) => (there, here),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}
