//! Who made a change: fanotify reports the process that modified a file
//! (pid), read from /proc at once, while the process is most likely still
//! there. Needs CAP_SYS_ADMIN; without it a watch names itself instead.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::fanotify::{EventFFlags, Fanotify, InitFlags, MarkFlags, MaskFlags};

/// The process that last wrote a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Writer {
    pub(crate) pid: i32,
    pub(crate) command: Option<String>,
    pub(crate) uid: Option<u32>,
    pub(crate) user: Option<String>,
}

impl Writer {
    /// The event's actor: `sed (pid 4242, uid 0 root)`.
    pub(crate) fn actor(&self) -> String {
        let command = self.command.as_deref().unwrap_or("exited process");
        match (self.uid, &self.user) {
            (Some(uid), Some(user)) => format!("{command} (pid {}, uid {uid} {user})", self.pid),
            (Some(uid), None) => format!("{command} (pid {}, uid {uid})", self.pid),
            _ => format!("{command} (pid {})", self.pid),
        }
    }

    fn of_pid(pid: i32) -> Writer {
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        let command = std::fs::read_to_string(proc_dir.join("comm"))
            .ok()
            .map(|c| c.trim_end().to_owned());
        let uid = std::fs::read_to_string(proc_dir.join("status"))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .and_then(|ids| ids.split_whitespace().next()?.parse().ok())
            });
        let user = uid.and_then(|uid| {
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten()
                .map(|u| u.name)
        });
        Writer {
            pid,
            command,
            uid,
            user,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Attributor {
    fanotify: Fanotify,
    last: HashMap<PathBuf, (Writer, Instant)>,
    own_pid: i32,
}

impl Attributor {
    /// Marks the mounts holding `roots`; `None` (with the reason) where
    /// fanotify is not available or not permitted.
    pub(crate) fn new(roots: &[PathBuf]) -> Result<Attributor, String> {
        let fanotify = Fanotify::init(
            InitFlags::FAN_CLASS_NOTIF | InitFlags::FAN_NONBLOCK | InitFlags::FAN_CLOEXEC,
            EventFFlags::O_RDONLY | EventFFlags::O_LARGEFILE | EventFFlags::O_CLOEXEC,
        )
        .map_err(|e| format!("fanotify_init: {e}"))?;
        for root in roots {
            fanotify
                .mark(
                    MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_MOUNT,
                    MaskFlags::FAN_MODIFY | MaskFlags::FAN_CLOSE_WRITE,
                    nix::fcntl::AT_FDCWD,
                    Some(root.as_path()),
                )
                .map_err(|e| format!("fanotify_mark {}: {e}", root.display()))?;
        }
        Ok(Attributor {
            fanotify,
            last: HashMap::new(),
            own_pid: std::process::id() as i32,
        })
    }

    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fanotify.as_fd()
    }

    /// Reads what is queued; keeps, per path, the last writer of the past
    /// minute.
    pub(crate) fn read(&mut self, in_scope: impl Fn(&Path) -> bool) {
        let now = Instant::now();
        loop {
            let events = match self.fanotify.read_events() {
                Ok(events) if !events.is_empty() => events,
                Ok(_) | Err(Errno::EAGAIN) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "reading fanotify events");
                    break;
                }
            };
            for event in events {
                let Some(fd) = event.fd() else { continue };
                if event.pid() == self.own_pid {
                    continue;
                }
                let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
                let Ok(path) = std::fs::read_link(&link) else {
                    continue;
                };
                if !in_scope(&path) {
                    continue;
                }
                let writer = match self.last.get(&path) {
                    Some((w, _)) if w.pid == event.pid() => w.clone(),
                    _ => Writer::of_pid(event.pid()),
                };
                self.last.insert(path, (writer, now));
            }
        }
        if self.last.len() > 100_000 {
            self.last
                .retain(|_, (_, at)| now.duration_since(*at) < Duration::from_secs(60));
        }
    }

    /// The process that wrote `path` (or, for a save by rename, the file
    /// renamed onto it) in the past few seconds; handed out once, so a
    /// later change that fanotify does not report (chmod, delete) is never
    /// pinned on an earlier writer.
    pub(crate) fn take_writer(&mut self, path: &Path) -> Option<Writer> {
        self.last
            .remove(path)
            .filter(|(_, at)| at.elapsed() < Duration::from_secs(5))
            .map(|(w, _)| w)
    }

    /// A rename carries its writer from the temporary name to the target.
    pub(crate) fn renamed(&mut self, from: &Path, to: &Path) {
        if let Some(entry) = self.last.remove(from) {
            self.last.insert(to.to_owned(), entry);
        }
    }
}
