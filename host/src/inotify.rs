//! The inotify adapter: one watch per directory under the files source's
//! roots, new directories added as they appear. It reports paths that may
//! have changed; what changed is decided by observing them again.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use crate::HostError;

/// What the kernel said.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FsEvent {
    /// Something at this path may have changed.
    Changed(PathBuf),
    /// A directory appeared: watch it, and everything under it is new.
    DirectoryCreated(PathBuf),
    /// `from` was renamed onto `to` (an editor's save).
    Renamed { from: PathBuf, to: PathBuf },
    /// The kernel's queue overflowed: events were lost, rescan.
    Overflow,
}

#[derive(Debug)]
pub(crate) struct DirWatcher {
    inotify: Inotify,
    dirs: HashMap<WatchDescriptor, PathBuf>,
    /// Renames whose second half has not been read yet, by cookie.
    moved_from: HashMap<u32, PathBuf>,
}

fn mask() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_DONT_FOLLOW
        | AddWatchFlags::IN_ONLYDIR
}

impl DirWatcher {
    pub(crate) fn new() -> Result<Self, HostError> {
        let inotify =
            Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(|source| {
                HostError::Watch {
                    what: "inotify_init".into(),
                    source,
                }
            })?;
        Ok(DirWatcher {
            inotify,
            dirs: HashMap::new(),
            moved_from: HashMap::new(),
        })
    }

    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    pub(crate) fn watched(&self) -> usize {
        self.dirs.len()
    }

    /// Watches the directory `dir` (not what is under it). A path that is
    /// not a directory is ignored.
    pub(crate) fn watch(&mut self, dir: &Path) -> Result<(), HostError> {
        match self.inotify.add_watch(dir, mask()) {
            Ok(wd) => {
                self.dirs.insert(wd, dir.to_owned());
                Ok(())
            }
            Err(Errno::ENOTDIR | Errno::ENOENT | Errno::ELOOP) => Ok(()),
            Err(source) => Err(HostError::Watch {
                what: format!(
                    "watching {} (the limit is fs.inotify.max_user_watches)",
                    dir.display()
                ),
                source,
            }),
        }
    }

    /// The events queued now (none when nothing is pending).
    pub(crate) fn read(&mut self) -> Result<Vec<FsEvent>, HostError> {
        let mut out = Vec::new();
        loop {
            let events = match self.inotify.read_events() {
                Ok(events) => events,
                Err(Errno::EAGAIN) => break,
                Err(source) => {
                    return Err(HostError::Watch {
                        what: "reading inotify events".into(),
                        source,
                    })
                }
            };
            if events.is_empty() {
                break;
            }
            for event in events {
                if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    out.push(FsEvent::Overflow);
                    continue;
                }
                let Some(dir) = self.dirs.get(&event.wd).cloned() else {
                    continue;
                };
                if event.mask.contains(AddWatchFlags::IN_IGNORED) {
                    self.dirs.remove(&event.wd);
                    continue;
                }
                let path = match &event.name {
                    Some(name) => dir.join(Path::new(OsStr::new(name))),
                    None => dir.clone(),
                };
                let is_dir = event.mask.contains(AddWatchFlags::IN_ISDIR);
                if event.mask.contains(AddWatchFlags::IN_MOVED_FROM) {
                    self.moved_from.insert(event.cookie, path.clone());
                    out.push(FsEvent::Changed(path));
                } else if event.mask.contains(AddWatchFlags::IN_MOVED_TO) {
                    if is_dir {
                        out.push(FsEvent::DirectoryCreated(path.clone()));
                    }
                    match self.moved_from.remove(&event.cookie) {
                        Some(from) => out.push(FsEvent::Renamed { from, to: path }),
                        None => out.push(FsEvent::Changed(path)),
                    }
                } else if is_dir && event.mask.contains(AddWatchFlags::IN_CREATE) {
                    out.push(FsEvent::DirectoryCreated(path));
                } else {
                    out.push(FsEvent::Changed(path));
                }
            }
        }
        // A rename out of the watched trees has no second half.
        self.moved_from.clear();
        Ok(out)
    }
}

/// Waits until one of `fds` is readable or `timeout` passes.
pub(crate) fn wait_readable(
    fds: &[std::os::fd::BorrowedFd<'_>],
    timeout: std::time::Duration,
) -> Result<(), HostError> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut polls: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
        .collect();
    let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    match poll(&mut polls, timeout) {
        Ok(_) | Err(Errno::EINTR) => Ok(()),
        Err(source) => Err(HostError::Watch {
            what: "poll".into(),
            source,
        }),
    }
}
