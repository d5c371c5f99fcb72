//! `fschain watch`: record what differs from the head as one catch-up
//! block, then follow the host and seal a block per interval.
//!
//! The loop only decides what to observe again and when to seal; what
//! changed is always decided by observing the element and comparing it
//! with what the chain holds ([`crate::reconcile`]), so a lost, doubled or
//! reordered kernel event can delay a record but never falsify one.

use std::collections::BTreeMap;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fschain_producer::ChainWriter;
use fschain_schema::{state_hash, ElementId, State, StateHash};
use tracing::{info, warn};

use crate::attribution::Attributor;
use crate::coalesce::Coalescer;
use crate::files::FileSource;
use crate::inotify::{wait_readable, DirWatcher, FsEvent};
use crate::interfaces::InterfaceMonitor;
use crate::ovs::OvsMonitor;
use crate::reconcile::{compare_hashes, differs, operation, Scan};
use crate::sources::{head_state_hashes, Sources};
use crate::HostError;

/// Why the first block of a watch was sealed.
pub const CATCH_UP_REASON: &str = "found at start of watch: changed while nobody watched";

#[derive(Clone, Debug)]
pub struct WatchOptions {
    pub block_interval: Duration,
    pub block_ops: usize,
    /// Scan, seal the catch-up block, return.
    pub once: bool,
    /// This host's name, for `watch@HOST` actors.
    pub host: String,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct WatchSummary {
    /// Operations in the catch-up block.
    pub caught_up: u64,
    /// Operations recorded while following.
    pub recorded: u64,
    pub blocks: u64,
    /// Full rescans after the kernel's queue overflowed.
    pub rescans: u64,
}

/// What the coalescer keys: a path, or a source read as a whole.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    File(PathBuf),
    Packages,
    Services,
    Interfaces,
    Ovs,
}

/// Changes recorded in one block, by source (`files`, `sysctl`, …).
pub type ChangesBySource = BTreeMap<&'static str, u64>;

/// Called after every seal (publishing, with `--brokers`), with the
/// block's changes by source.
pub type AfterSeal<'a> = dyn FnMut(&ChainWriter, &ChangesBySource) -> Result<(), HostError> + 'a;

struct Watch<'a> {
    writer: &'a mut ChainWriter,
    sources: &'a Sources,
    options: &'a WatchOptions,
    after_seal: &'a mut AfterSeal<'a>,
    /// The head's state hashes, with what this watch recorded since.
    known: BTreeMap<ElementId, StateHash>,
    watcher: Option<DirWatcher>,
    attributor: Option<Attributor>,
    interfaces: Option<InterfaceMonitor>,
    ovs: Option<OvsMonitor>,
    /// The open block's changes by source.
    changes: ChangesBySource,
    /// The newest states the OVSDB monitor handed out, not yet recorded.
    ovs_states: Option<BTreeMap<ElementId, State>>,
    opened: Option<Instant>,
    summary: WatchSummary,
}

/// Runs a watch until `shutdown` is set (or once, with `once`). Changes
/// seen when it stops are recorded and sealed first.
pub fn run<'a>(
    writer: &'a mut ChainWriter,
    sources: &'a Sources,
    options: &'a WatchOptions,
    after_seal: &'a mut AfterSeal<'a>,
    shutdown: &AtomicBool,
) -> Result<WatchSummary, HostError> {
    let head = writer.layout().snapshot(writer.head().height);
    let known = head_state_hashes(&head, |e| sources.owns(e))?;
    let mut watch = Watch {
        writer,
        sources,
        options,
        after_seal,
        known,
        watcher: None,
        attributor: None,
        interfaces: None,
        ovs: None,
        changes: ChangesBySource::new(),
        ovs_states: None,
        opened: None,
        summary: WatchSummary::default(),
    };
    if !options.once {
        // Watches first: a change during the scan is then seen twice at
        // worst, never missed.
        watch.start_watching()?;
    }
    watch.summary.caught_up = watch.rescan(CATCH_UP_REASON, true)?;
    watch.seal()?;
    if options.once {
        return Ok(watch.summary);
    }
    watch.follow(shutdown)?;
    Ok(watch.summary)
}

impl Watch<'_> {
    fn actor(&self, source: &str) -> String {
        format!("watch@{} ({source})", self.options.host)
    }

    fn start_watching(&mut self) -> Result<(), HostError> {
        let mut watcher = DirWatcher::new()?;
        let mut problems = Vec::new();
        if let Some(files) = &self.sources.files {
            for root in files.roots() {
                watch_tree(&mut watcher, files, root, &mut problems);
            }
            if self.sources.attribute {
                match Attributor::new(files.roots()) {
                    Ok(a) => self.attributor = Some(a),
                    Err(why) => info!(
                        "not naming the processes that change files ({why}); actors are watch@{}",
                        self.options.host
                    ),
                }
            }
        }
        if let Some(packages) = &self.sources.packages {
            if let Some(dir) = packages.status_file().parent() {
                watcher.watch(dir)?;
            }
        }
        if let Some(services) = &self.sources.services {
            for dir in services.unit_dirs() {
                watch_dirs(&mut watcher, dir);
            }
        }
        if let Some(interfaces) = &self.sources.interfaces {
            // Subscribed before the first dump, so no change falls between.
            match interfaces.monitor() {
                Ok(m) => self.interfaces = Some(m),
                Err(e) => problems.push(e),
            }
        }
        if let Some(ovs) = &self.sources.ovs {
            match ovs.monitor() {
                Ok(m) => self.ovs = Some(m),
                Err(e) => problems.push(e),
            }
        }
        report(&problems);
        info!(directories = watcher.watched(), "watching");
        self.watcher = Some(watcher);
        Ok(())
    }

    /// Observes every source and records what differs from the chain.
    fn rescan(&mut self, reason: &str, first: bool) -> Result<u64, HostError> {
        let mut problems = Vec::new();
        let known = &self.known;
        let scan = self
            .sources
            .scan_where(&mut problems, |e, s| differs(known.get(e), Some(s)));
        if first {
            report(&problems);
        }
        let changes = compare_hashes(&self.known, scan, |e| self.sources.owns(e));
        let mut recorded = 0;
        for (element, now) in changes {
            let actor = self.actor(Sources::source_name(&element));
            recorded += u64::from(self.record(&element, now, reason, &actor));
        }
        if recorded > 0 {
            info!(recorded, "{reason}");
        }
        Ok(recorded)
    }

    /// Records that `element` is now `now` (`None`: gone) in the open
    /// block and in `known`.
    fn record(
        &mut self,
        element: &ElementId,
        now: Option<State>,
        reason: &str,
        actor: &str,
    ) -> bool {
        let hash = now.as_ref().map(state_hash).transpose();
        let applied = hash.map_err(|e| e.to_string()).and_then(|hash| {
            self.writer
                .apply(operation(element, now, reason, actor))
                .map(|_| hash)
                .map_err(|e| e.to_string())
        });
        match applied {
            Ok(hash) => {
                match hash {
                    Some(h) => self.known.insert(element.clone(), h),
                    None => self.known.remove(element),
                };
                *self
                    .changes
                    .entry(Sources::source_name(element))
                    .or_default() += 1;
                self.opened.get_or_insert_with(Instant::now);
                true
            }
            Err(e) => {
                warn!(%element, error = %e, "change not recorded");
                false
            }
        }
    }

    fn seal(&mut self) -> Result<(), HostError> {
        self.opened = None;
        if self.writer.seal()?.is_some() {
            self.summary.blocks += 1;
            let changes = std::mem::take(&mut self.changes);
            if let Err(e) = (self.after_seal)(self.writer, &changes) {
                if !e.is_transient() {
                    return Err(e);
                }
                warn!(error = %e, "after sealing; will retry after the next block");
            }
        }
        Ok(())
    }

    fn follow(&mut self, shutdown: &AtomicBool) -> Result<(), HostError> {
        let mut coalescer: Coalescer<Key> = Coalescer::new(self.sources.coalesce);
        let sysctl_interval = self.sources.sysctl.as_ref().map(|(_, i)| *i);
        let mut next_sysctl = sysctl_interval.map(|i| Instant::now() + i);
        loop {
            let stopping = shutdown.load(Ordering::SeqCst);
            if !stopping {
                let now = Instant::now();
                let wake = [
                    coalescer.next_due(),
                    self.opened.map(|t| t + self.options.block_interval),
                    next_sysctl,
                    Some(now + Duration::from_millis(500)),
                ]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(now);
                self.wait(wake.saturating_duration_since(now))?;
                self.take_events(&mut coalescer)?;
            }
            let now = Instant::now();
            let due = if stopping {
                coalescer.drain()
            } else {
                coalescer.due(now)
            };
            for key in due {
                self.observe(key)?;
            }
            if let (Some(at), Some(interval)) = (next_sysctl, sysctl_interval) {
                if now >= at {
                    self.poll_sysctl();
                    next_sysctl = Some(now + interval);
                }
            }
            let pending = self.writer.pending_len();
            if pending >= self.options.block_ops
                || (pending > 0
                    && (stopping
                        || self
                            .opened
                            .is_some_and(|t| t.elapsed() >= self.options.block_interval)))
            {
                self.seal()?;
            }
            if stopping {
                return Ok(());
            }
        }
    }

    fn wait(&self, timeout: Duration) -> Result<(), HostError> {
        let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
        if let Some(w) = &self.watcher {
            fds.push(w.fd());
        }
        if let Some(a) = &self.attributor {
            fds.push(a.fd());
        }
        if let Some(m) = &self.interfaces {
            fds.push(m.fd());
        }
        if let Some(m) = &self.ovs {
            fds.push(m.fd());
        }
        if fds.is_empty() {
            std::thread::sleep(timeout);
            return Ok(());
        }
        wait_readable(&fds, timeout)
    }

    fn take_events(&mut self, coalescer: &mut Coalescer<Key>) -> Result<(), HostError> {
        // Writers first: a save by rename carries its writer from the
        // temporary file, whose write was queued before the rename.
        if let (Some(a), Some(files)) = (&mut self.attributor, &self.sources.files) {
            a.read(|p| files.in_scope(p) || p.parent().is_some_and(|d| files.in_scope(d)));
        }
        if let Some(m) = &mut self.interfaces {
            match m.take() {
                Ok(true) => coalescer.touch(Key::Interfaces, Instant::now()),
                Ok(false) => {}
                Err(e) => warn!("{e}; the rest of the watch goes on"),
            }
        }
        if let Some(m) = &mut self.ovs {
            match m.take() {
                Some(Ok(states)) => {
                    self.ovs_states = Some(states);
                    coalescer.touch(Key::Ovs, Instant::now());
                }
                Some(Err(e)) => warn!("{e}; the rest of the watch goes on"),
                None => {}
            }
        }
        let Some(watcher) = &mut self.watcher else {
            return Ok(());
        };
        let events = watcher.read()?;
        let now = Instant::now();
        let mut overflowed = false;
        for event in events {
            match event {
                FsEvent::Changed(path) => {
                    if let Some(key) = key_of(self.sources, &path) {
                        coalescer.touch(key, now);
                    }
                }
                FsEvent::Renamed { from, to } => {
                    if let Some(a) = &mut self.attributor {
                        a.renamed(&from, &to);
                    }
                    for path in [from, to] {
                        if let Some(key) = key_of(self.sources, &path) {
                            coalescer.touch(key, now);
                        }
                    }
                }
                FsEvent::DirectoryCreated(dir) => {
                    if let Some(files) = &self.sources.files {
                        if files.in_scope(&dir) {
                            // Everything under a new directory is new, and
                            // may have been made before its watch was.
                            let mut problems = Vec::new();
                            let paths = watch_tree(watcher, files, &dir, &mut problems);
                            report(&problems);
                            for p in paths {
                                coalescer.touch(Key::File(p), now);
                            }
                            continue;
                        }
                    }
                    if let Some(services) = &self.sources.services {
                        if services.unit_dirs().iter().any(|d| dir.starts_with(d)) {
                            watch_dirs(watcher, &dir);
                            coalescer.touch(Key::Services, now);
                        }
                    }
                }
                FsEvent::Overflow => overflowed = true,
            }
        }
        if overflowed {
            warn!("the kernel's inotify queue overflowed (fs.inotify.max_queued_events); rescanning everything");
            self.summary.rescans += 1;
            if let Some(files) = &self.sources.files {
                let mut problems = Vec::new();
                for root in files.roots().to_vec() {
                    watch_tree(watcher, files, &root, &mut problems);
                }
            }
            let n = self.rescan(
                "observed by fschain watch (rescan after lost events)",
                false,
            )?;
            self.summary.recorded += n;
        }
        Ok(())
    }

    /// Observes what a key names again and records how it changed.
    fn observe(&mut self, key: Key) -> Result<(), HostError> {
        match key {
            Key::File(path) => self.observe_file(&path),
            whole => {
                let mut problems = Vec::new();
                let sources = self.sources;
                let (source, observed) = match (&whole, sources) {
                    (
                        Key::Packages,
                        Sources {
                            packages: Some(p), ..
                        },
                    ) => ("packages", p.scan()),
                    (
                        Key::Services,
                        Sources {
                            services: Some(s), ..
                        },
                    ) => ("services", Ok(s.scan(&mut problems))),
                    (
                        Key::Interfaces,
                        Sources {
                            interfaces: Some(i),
                            ..
                        },
                    ) => ("interfaces", i.scan()),
                    (Key::Ovs, _) => match self.ovs_states.take() {
                        Some(states) => ("ovs", Ok(states)),
                        None => return Ok(()),
                    },
                    _ => return Ok(()),
                };
                report(&problems);
                match observed {
                    // dpkg rewrites its status file by rename, an interface
                    // may vanish mid-dump: what is not read now is read at
                    // the source's next event.
                    Err(e) => warn!(error = %e, "{source} not read; read again at its next change"),
                    Ok(observed) => self.record_source(source, observed, |e| {
                        Sources::source_name(e) == source && sources.owns(e)
                    }),
                }
                Ok(())
            }
        }
    }

    /// Records how every element of one source read whole differs.
    fn record_source(
        &mut self,
        source: &str,
        observed: BTreeMap<ElementId, State>,
        owns: impl Fn(&ElementId) -> bool,
    ) {
        let changes = compare_hashes(&self.known, Scan::of(observed), owns);
        let actor = self.actor(source);
        let reason = format!("observed by fschain watch ({source})");
        for (element, now) in changes {
            if self.record(&element, now, &reason, &actor) {
                self.summary.recorded += 1;
            }
        }
    }

    fn observe_file(&mut self, path: &Path) -> Result<(), HostError> {
        let Some(files) = &self.sources.files else {
            return Ok(());
        };
        let element = match FileSource::element_of(path) {
            Ok(e) => e,
            Err(e) => {
                warn!("{e}");
                return Ok(());
            }
        };
        let now = match files.observe(path) {
            Ok(state) => state,
            Err(HostError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                None
            }
            Err(e) => {
                warn!("{e}; the rest of the watch goes on");
                return Ok(());
            }
        };
        // fanotify names writers, not who deletes or renames away.
        let writer = self.attributor.as_mut().and_then(|a| a.take_writer(path));
        let actor = match writer {
            Some(writer) if now.is_some() => writer.actor(),
            _ => self.actor("files"),
        };
        let gone = now.is_none();
        if differs(self.known.get(&element), now.as_ref())
            && self.record(&element, now, "observed by fschain watch (files)", &actor)
        {
            self.summary.recorded += 1;
        }
        if gone {
            // A directory removed or moved away takes what was under it.
            let prefix = format!("{}/", element.as_str());
            let under: Vec<ElementId> = self
                .known
                .range(element.clone()..)
                .skip(1)
                .take_while(|(e, _)| e.as_str().starts_with(&prefix))
                .map(|(e, _)| e.clone())
                .collect();
            for e in under {
                self.observe_file(Path::new(e.name()))?;
            }
        }
        Ok(())
    }

    fn poll_sysctl(&mut self) {
        let Some((sysctl, _)) = &self.sources.sysctl else {
            return;
        };
        let mut problems = Vec::new();
        let observed = sysctl.scan(&mut problems);
        self.record_source("sysctl", observed, |e| sysctl.owns(e));
    }
}

/// Watches every directory under `root` in scope; returns every path
/// found (directories included).
fn watch_tree(
    watcher: &mut DirWatcher,
    files: &FileSource,
    root: &Path,
    problems: &mut Vec<HostError>,
) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    files.walk(root, &mut paths, problems);
    for p in &paths {
        if std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) {
            if let Err(e) = watcher.watch(p) {
                problems.push(e);
            }
        }
    }
    paths
}

/// Watches `dir` and the directories under it (unit directories).
fn watch_dirs(watcher: &mut DirWatcher, dir: &Path) {
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        if let Err(e) = watcher.watch(&d) {
            warn!("{e}");
        }
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
}

fn key_of(sources: &Sources, path: &Path) -> Option<Key> {
    if sources.files.as_ref().is_some_and(|f| f.in_scope(path)) {
        return Some(Key::File(path.to_owned()));
    }
    if sources
        .packages
        .as_ref()
        .is_some_and(|p| p.status_file() == path)
    {
        return Some(Key::Packages);
    }
    if sources
        .services
        .as_ref()
        .is_some_and(|s| s.unit_dirs().iter().any(|d| path.starts_with(d)))
    {
        return Some(Key::Services);
    }
    None
}

fn report(problems: &[HostError]) {
    for p in problems {
        warn!("{p}; the rest of the watch goes on");
    }
}
