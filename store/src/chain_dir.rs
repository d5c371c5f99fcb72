//! Reading one copy of a chain: the layer or any snapshot.

use std::path::{Path, PathBuf};

use fschain_schema::verify::{state_file_hash, LineSource as _, Problem};
use fschain_schema::{jcs, BlockHeader, ElementId, Event, State, StateHash};
use serde_json::Value;

use crate::btrfs_tree::{EntryKind, FileData};
use crate::layout::{ChainMeta, CHAIN_FILE, EVENTS_LOG, HEADERS_LOG};
use crate::log_file::LogLines;
use crate::state_path::{element_of, state_path, STATES_DIR};
use crate::{IoContext, StoreError};

/// A chain directory: `CHAIN`, `headers.log`, `events.log`, `states/`.
#[derive(Clone, Debug)]
pub struct ChainDir {
    path: PathBuf,
}

impl ChainDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        ChainDir { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn meta(&self) -> Result<ChainMeta, StoreError> {
        ChainMeta::read(&self.path.join(CHAIN_FILE))
    }

    pub fn headers_bytes(&self) -> Result<Vec<u8>, StoreError> {
        let p = self.path.join(HEADERS_LOG);
        std::fs::read(&p).at(&p)
    }

    /// Calls `each` with each of the last `count` lines of `events.log` (a
    /// block's events, when `count` is its header's event count), in order.
    /// The start is found by scanning backwards, so the cost does not grow
    /// with the chain, and one line is in memory at a time.
    pub fn for_last_event_lines<E: From<StoreError>>(
        &self,
        count: u64,
        each: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<u64, E> {
        use std::io::{Read as _, Seek as _, SeekFrom};
        let p = self.path.join(EVENTS_LOG);
        if count == 0 {
            return Ok(0);
        }
        let mut file = std::fs::File::open(&p).at(&p)?;
        let len = file.metadata().at(&p)?.len();
        // The file ends with a newline; the `count`-th newline before the
        // last one ends the previous block's events.
        let mut pos = len;
        let mut seen = 0u64;
        let mut start = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        'scan: while pos > 0 {
            let step = pos.min(buf.len() as u64);
            pos -= step;
            file.seek(SeekFrom::Start(pos)).at(&p)?;
            let chunk = &mut buf[..step as usize];
            file.read_exact(chunk).at(&p)?;
            for i in (0..chunk.len()).rev() {
                if chunk[i] == b'\n' {
                    seen += 1;
                    if seen == count + 1 {
                        start = pos + i as u64 + 1;
                        break 'scan;
                    }
                }
            }
        }
        self.for_event_lines_at(start, count, false, each)
    }

    /// Calls `each` with the `count` lines of `events.log` that start at
    /// byte `start`, which must begin a line; with `to_end`, they must also
    /// end the file.
    pub fn for_event_lines_at<E: From<StoreError>>(
        &self,
        start: u64,
        count: u64,
        to_end: bool,
        mut each: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<u64, E> {
        use std::io::{Read as _, Seek as _, SeekFrom};
        let p = self.path.join(EVENTS_LOG);
        let corrupt = |why: String| StoreError::Corrupt {
            path: p.clone(),
            why,
        };
        if start > 0 {
            let mut file = std::fs::File::open(&p).at(&p)?;
            let mut before = [0u8];
            file.seek(SeekFrom::Start(start - 1)).at(&p)?;
            file.read_exact(&mut before).map_err(|_| {
                corrupt(format!(
                    "is shorter than the {start} bytes before the block's events"
                ))
            })?;
            if before[0] != b'\n' {
                return Err(corrupt(format!("has no line that starts at byte {start}")).into());
            }
        }
        let mut lines = LogLines::open_at(&p, start).at(&p)?;
        let n = read_lines(&mut lines, &p, count, &mut |line: &[u8]| {
            each(line)?;
            Ok::<bool, E>(true)
        })?;
        if n < count {
            return Err(corrupt(format!("holds {n} events, expected at least {count}")).into());
        }
        if to_end && lines.next_line().at(&p)?.is_some() {
            return Err(
                corrupt(format!("holds more than {count} events after byte {start}")).into(),
            );
        }
        Ok(n)
    }

    /// The length of `events.log`: where the next block's events start.
    pub fn events_log_len(&self) -> Result<u64, StoreError> {
        let p = self.path.join(EVENTS_LOG);
        Ok(std::fs::metadata(&p).at(&p)?.len())
    }

    /// Calls `each` with every line of `events.log` from the first, one
    /// line in memory at a time, until `each` returns `false`.
    pub fn for_event_lines<E: From<StoreError>>(
        &self,
        mut each: impl FnMut(&[u8]) -> Result<bool, E>,
    ) -> Result<(), E> {
        let p = self.path.join(EVENTS_LOG);
        let mut lines = LogLines::open_at(&p, 0).at(&p)?;
        read_lines(&mut lines, &p, u64::MAX, &mut each)?;
        Ok(())
    }

    /// The last `count` lines of `events.log` (see [`Self::for_last_event_lines`]).
    pub fn last_event_lines(&self, count: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out = Vec::new();
        self.for_last_event_lines(count, |l| {
            out.push(l.to_vec());
            Ok::<(), StoreError>(())
        })?;
        Ok(out)
    }

    /// Every header, each checked for canonical form and hash.
    pub fn headers(&self) -> Result<Vec<BlockHeader>, StoreError> {
        let bytes = self.headers_bytes()?;
        let place = self.path.join(HEADERS_LOG);
        bytes
            .split(|&b| b == b'\n')
            .enumerate()
            .filter(|(_, line)| !line.is_empty())
            .map(|(i, line)| {
                BlockHeader::from_canonical(line).map_err(|e| {
                    StoreError::schema(format!("{} line {}", place.display(), i + 1), e)
                })
            })
            .collect()
    }

    /// Events whose element is `element` (or all, with `None`), each
    /// checked; the log is read one line at a time.
    pub fn events(&self, element: Option<&ElementId>) -> Result<Vec<Event>, StoreError> {
        let place = self.path.join(EVENTS_LOG);
        // Cheap pre-filter: the canonical line holds `"element":"<id>"`.
        let needle = element.map(|e| {
            let mut n = b"\"element\":".to_vec();
            jcs::write_string(&mut n, e.as_str());
            n
        });
        let mut out = Vec::new();
        let mut line_no = 0u64;
        self.for_event_lines(|line| {
            line_no += 1;
            if let Some(n) = &needle {
                if !line.windows(n.len()).any(|w| w == n.as_slice()) {
                    return Ok(true);
                }
            }
            let event = Event::from_canonical(line).map_err(|e| {
                StoreError::schema(format!("{} line {line_no}", place.display()), e)
            })?;
            if element.is_none_or(|e| &event.element == e) {
                out.push(event);
            }
            Ok::<bool, StoreError>(true)
        })?;
        Ok(out)
    }

    /// The raw bytes of `element`'s state file, or `None` if it has none.
    pub fn state_bytes(&self, element: &ElementId) -> Result<Option<Vec<u8>>, StoreError> {
        let p = self.path.join(state_path(element));
        match std::fs::read(&p) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(&p, e)),
        }
    }

    /// `element`'s state, or `None` if it has none.
    pub fn state(&self, element: &ElementId) -> Result<Option<State>, StoreError> {
        let Some(bytes) = self.state_bytes(element)? else {
            return Ok(None);
        };
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => Ok(Some(map)),
            _ => Err(StoreError::Corrupt {
                path: self.path.join(state_path(element)),
                why: "state file is not a JSON object".into(),
            }),
        }
    }

    /// Reads every state file and hashes it. Anything under `states/` that is
    /// not exactly some element's state file is reported as a problem.
    pub fn state_hashes(&self, place: &str) -> StateScan {
        let mut scan = StateScan::default();
        let root = self.path.join(STATES_DIR);
        if !root.exists() {
            return scan;
        }
        // (absolute, relative to the copy) directory paths still to read.
        let mut stack = vec![(root, PathBuf::from(STATES_DIR))];
        let mut bytes = Vec::new();
        while let Some((dir, rel_dir)) = stack.pop() {
            let unreadable = |e: std::io::Error| Problem::Unreadable {
                place: place.into(),
                message: format!("{}: {e}", dir.display()),
            };
            // Files are opened relative to their directory: no path walk each.
            let entries = match std::fs::read_dir(&dir)
                .and_then(|entries| Ok((entries, std::fs::File::open(&dir)?)))
            {
                Ok(e) => e,
                Err(e) => {
                    scan.problems.push(unreadable(e));
                    continue;
                }
            };
            let (entries, dir_fd) = entries;
            for entry in entries {
                let entry = match entry {
                    Ok(e) => e,
                    Err(e) => {
                        scan.problems.push(unreadable(e));
                        continue;
                    }
                };
                let rel = rel_dir.join(entry.file_name());
                match entry.file_type() {
                    Ok(t) if t.is_dir() => stack.push((entry.path(), rel)),
                    Ok(t) if t.is_file() => scan.file(place, &rel, || {
                        read_in(&dir_fd, &entry.file_name(), &mut bytes)
                            .map(|len| (len as u64, state_file_hash(&bytes[..len])))
                    }),
                    Ok(_) => scan.bad(place, &rel, "is not a regular file"),
                    Err(e) => scan.bad(place, &rel, &format!("cannot stat: {e}")),
                }
            }
        }
        scan
    }

    /// [`state_hashes`](Self::state_hashes), with the small files' bytes
    /// taken from the subvolume's btrfs tree a few thousand at a time (see
    /// [`crate::btrfs_tree`]). The copy must be a subvolume whose data is
    /// on disk (flush first: [`crate::btrfs::sync_filesystem`]). Falls back
    /// to reading every file when the tree cannot be searched.
    pub fn state_hashes_from_tree(&self, place: &str) -> StateScan {
        let swept = std::fs::File::open(&self.path)
            .and_then(|dir| crate::btrfs_tree::sweep(&dir, state_file_hash));
        let entries = match swept {
            Ok(entries) => entries,
            Err(e) => {
                tracing::debug!(place, error = %e, "btrfs tree search unavailable; reading files");
                return self.state_hashes(place);
            }
        };
        let mut scan = StateScan::default();
        let mut bytes = Vec::new();
        for entry in entries {
            if entry.path.components().next().map(|c| c.as_os_str()) != Some(STATES_DIR.as_ref()) {
                continue;
            }
            let rel = entry.path.as_path();
            match entry.kind {
                EntryKind::Dir => {}
                EntryKind::File {
                    size,
                    data: FileData::Summary(hash),
                } => scan.file(place, rel, || Ok((size, hash))),
                EntryKind::File {
                    data: FileData::OnDisk,
                    ..
                } => scan.file(place, rel, || {
                    std::fs::File::open(self.path.join(rel))
                        .and_then(|f| read_all(f, &mut bytes))
                        .map(|len| (len as u64, state_file_hash(&bytes[..len])))
                }),
                EntryKind::Other => scan.bad(place, rel, "is not a regular file"),
                EntryKind::Subvolume => {
                    scan.bad(place, rel, "is a nested subvolume, not a regular file")
                }
            }
        }
        scan
    }
}

/// What [`ChainDir::state_hashes`] found.
#[derive(Debug, Default)]
pub struct StateScan {
    pub states: Vec<(ElementId, StateHash)>,
    pub bytes: u64,
    pub problems: Vec<Problem>,
}

impl StateScan {
    /// Takes in the regular file at `rel` (relative to the copy): its
    /// element's state, with the length and hash `read` gives, or what is
    /// wrong with it. A file no element owns is not read.
    fn file(
        &mut self,
        place: &str,
        rel: &Path,
        read: impl FnOnce() -> std::io::Result<(u64, StateHash)>,
    ) {
        let Some(element) = element_of(rel) else {
            return self.bad(place, rel, "is not the state file of any element");
        };
        match read() {
            Ok((len, hash)) => {
                self.bytes += len;
                self.states.push((element, hash));
            }
            Err(e) => self.bad(place, rel, &format!("cannot read: {e}")),
        }
    }

    fn bad(&mut self, place: &str, rel: &Path, message: &str) {
        self.problems.push(Problem::BadStateFile {
            place: place.into(),
            path: rel.display().to_string(),
            message: message.into(),
        });
    }
}

/// Reads the file `name` in the directory open as `dir` into the start of
/// `buf`, growing it as needed; returns its length. Four system calls a
/// file (no stat, no seek), which is most of what hashing a small state
/// file costs.
fn read_in(
    dir: &std::fs::File,
    name: &std::ffi::OsStr,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    use rustix::fs::{openat, Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    read_all(
        std::fs::File::from(openat(dir, name, flags, Mode::empty())?),
        buf,
    )
}

/// Reads `file` into the start of `buf`, growing it as needed; returns the
/// length read.
fn read_all(mut file: std::fs::File, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    use std::io::Read as _;
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize((buf.len() * 2).max(64 * 1024), 0);
        }
        match file.read(&mut buf[len..]) {
            Ok(0) => return Ok(len),
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Calls `each` with up to `count` non-empty lines of `lines` (without
/// their newline), until it returns `false`; returns how many it was given.
fn read_lines<E: From<StoreError>>(
    lines: &mut LogLines,
    path: &Path,
    count: u64,
    each: &mut impl FnMut(&[u8]) -> Result<bool, E>,
) -> Result<u64, E> {
    let mut n = 0;
    while n < count {
        let Some(line) = lines.next_line().at(path)? else {
            break;
        };
        if !line.is_empty() {
            n += 1;
            if !each(line)? {
                break;
            }
        }
    }
    Ok(n)
}

/// Calls `each` with the events of block `height` of the chain at `layout`,
/// in order: the `count` lines its snapshot's log holds after the previous
/// block's (the log only grows, and every snapshot holds all of it). With
/// the previous block's snapshot at hand its log's length says where they
/// start, without reading what comes before; otherwise the log is scanned
/// backwards from its end.
pub fn for_block_event_lines<E: From<StoreError>>(
    layout: &crate::RootLayout,
    height: u64,
    count: u64,
    each: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<u64, E> {
    let snapshot = ChainDir::new(layout.snapshot(height));
    let previous = height.checked_sub(1).map(|p| layout.snapshot(p));
    match previous.filter(|p| p.exists()) {
        Some(p) => {
            let start = ChainDir::new(p).events_log_len()?;
            snapshot.for_event_lines_at(start, count, true, each)
        }
        None => snapshot.for_last_event_lines(count, each),
    }
}
