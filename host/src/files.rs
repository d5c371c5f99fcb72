//! The files source: `file:<absolute path>` elements under the configured
//! roots, their type, mode, owner, size, SHA-256 and (unless redacted or
//! too large) their bytes.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use fschain_schema::{ElementId, State};
use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::{FilesConfig, DEFAULT_EXCLUDE, DEFAULT_REDACT};
use crate::reconcile::Scan;
use crate::HostError;

/// The element kind of this source.
pub const KIND: &str = "file";

/// Told `(files read, files to read)` as a scan goes (for progress).
pub type ScanProgress = std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>;

/// The files source, with its globs compiled.
#[derive(Clone)]
pub struct FileSource {
    roots: Vec<PathBuf>,
    exclude: GlobSet,
    redact: GlobSet,
    max_content: u64,
    progress: Option<ScanProgress>,
}

impl std::fmt::Debug for FileSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSource")
            .field("roots", &self.roots)
            .field("max_content", &self.max_content)
            .finish_non_exhaustive()
    }
}

fn glob_set(key: &'static str, defaults: &[&str], extra: &[String]) -> Result<GlobSet, HostError> {
    let mut set = GlobSetBuilder::new();
    for pattern in defaults
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
    {
        let glob = compile(pattern).map_err(|source| HostError::BadGlob {
            section: "files",
            key,
            pattern: pattern.to_owned(),
            source,
        })?;
        set.add(glob);
    }
    set.build().map_err(|source| HostError::BadGlob {
        section: "files",
        key,
        pattern: extra.join(", "),
        source,
    })
}

/// A glob with a `/` matches whole paths (`*` stays within one part); one
/// without matches a file's name wherever it is.
fn compile(pattern: &str) -> Result<Glob, globset::Error> {
    let pattern = if pattern.contains('/') {
        pattern.to_owned()
    } else {
        format!("**/{pattern}")
    };
    GlobBuilder::new(&pattern).literal_separator(true).build()
}

impl FileSource {
    pub fn new(config: &FilesConfig) -> Result<Self, HostError> {
        let mut roots = Vec::new();
        for root in &config.paths {
            if !root.is_absolute() {
                return Err(HostError::Config {
                    path: root.clone(),
                    why: "[files] paths must be absolute".into(),
                });
            }
            roots.push(normalize(root));
        }
        Ok(FileSource {
            roots,
            exclude: glob_set("exclude", DEFAULT_EXCLUDE, &config.exclude)?,
            redact: glob_set("redact", DEFAULT_REDACT, &config.redact)?,
            max_content: config.max_content,
            progress: None,
        })
    }

    /// Reports each full scan's progress to `progress`.
    pub fn set_progress(&mut self, progress: ScanProgress) {
        self.progress = Some(progress);
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Whether `path` is under a root and not excluded.
    pub fn in_scope(&self, path: &Path) -> bool {
        self.roots.iter().any(|r| path.starts_with(r)) && !self.exclude.is_match(path)
    }

    /// Whether the element is one this source observes.
    pub fn owns(&self, element: &ElementId) -> bool {
        element.kind() == KIND && self.in_scope(Path::new(element.name()))
    }

    pub fn is_redacted(&self, path: &Path) -> bool {
        self.redact.is_match(path)
    }

    /// The element that names `path`.
    pub fn element_of(path: &Path) -> Result<ElementId, HostError> {
        let text = path
            .to_str()
            .ok_or_else(|| HostError::NotUtf8 { path: path.into() })?;
        ElementId::parse_owned(format!("{KIND}:{text}")).map_err(|source| HostError::BadElement {
            path: path.into(),
            source,
        })
    }

    /// `path`'s state now, or `None` when nothing is there.
    pub fn observe(&self, path: &Path) -> Result<Option<State>, HostError> {
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(HostError::io(path, e)),
        };
        let mut state = State::new();
        let kind = meta.file_type();
        let type_name = if kind.is_symlink() {
            "symlink"
        } else if kind.is_dir() {
            "directory"
        } else if kind.is_file() {
            "file"
        } else {
            "special"
        };
        state.insert("type".into(), type_name.into());
        state.insert(
            "mode".into(),
            format!("{:04o}", meta.permissions().mode() & 0o7777).into(),
        );
        state.insert("uid".into(), meta.uid().into());
        state.insert("gid".into(), meta.gid().into());
        if kind.is_symlink() {
            let target = std::fs::read_link(path).map_err(|e| HostError::io(path, e))?;
            let target = match target.to_str() {
                Some(t) => Value::from(t),
                None => Value::from(
                    base64::engine::general_purpose::STANDARD.encode(target.as_os_str().as_bytes()),
                ),
            };
            state.insert("target".into(), target);
        } else if kind.is_file() {
            self.observe_bytes(path, &mut state)?;
        }
        Ok(Some(state))
    }

    /// Size, hash and (when allowed) the bytes of a regular file, read once.
    fn observe_bytes(&self, path: &Path, state: &mut State) -> Result<(), HostError> {
        let mut file = std::fs::File::open(path).map_err(|e| HostError::io(path, e))?;
        let keep = !self.is_redacted(path);
        let mut hasher = Sha256::new();
        let mut kept = Vec::new();
        let mut size: u64 = 0;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(HostError::io(path, e)),
            };
            hasher.update(&buf[..n]);
            size += n as u64;
            if keep && size <= self.max_content {
                kept.extend_from_slice(&buf[..n]);
            }
        }
        state.insert("size".into(), size.into());
        state.insert("sha256".into(), hex(&hasher.finalize()).into());
        if keep && size <= self.max_content {
            match String::from_utf8(kept) {
                Ok(text) => state.insert("content".into(), text.into()),
                Err(e) => state.insert(
                    "content_base64".into(),
                    base64::engine::general_purpose::STANDARD
                        .encode(e.as_bytes())
                        .into(),
                ),
            };
        }
        Ok(())
    }

    /// Every element under the roots and its state. What cannot be read is
    /// reported in `problems` by name and left out; the scan goes on.
    pub fn scan(&self, problems: &mut Vec<HostError>) -> BTreeMap<ElementId, State> {
        self.scan_where(problems, |_, _| true).states
    }

    /// [`Self::scan`], keeping only the states `keep` accepts, decided on
    /// the thread that read them: a rescan of a tree that did not change
    /// holds a few states at a time, not all of them.
    pub fn scan_where(
        &self,
        problems: &mut Vec<HostError>,
        keep: impl Fn(&ElementId, &State) -> bool + Sync,
    ) -> Scan {
        let mut paths = Vec::new();
        for root in &self.roots {
            self.walk(root, &mut paths, problems);
        }
        // Two threads read and hash: the kernel's page cache and SHA-256
        // are what a scan costs.
        // Each path: its element, and its state if `keep` took it.
        type Observed = Option<(ElementId, Option<State>)>;
        let total = paths.len() as u64;
        let read = std::sync::atomic::AtomicU64::new(0);
        let observed: Vec<Result<Observed, HostError>> = parallel_map(paths, |p| {
            if let Some(progress) = &self.progress {
                let n = read.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                progress(n, total);
            }
            let element = Self::element_of(&p)?;
            Ok(self.observe(&p)?.map(|state| {
                let kept = keep(&element, &state).then_some(state);
                (element, kept)
            }))
        });
        let mut scan = Scan::default();
        for result in observed {
            match result {
                Ok(Some((element, state))) => {
                    if let Some(state) = state {
                        scan.states.insert(element.clone(), state);
                    }
                    scan.found.insert(element);
                }
                Ok(None) => {}
                Err(e) => problems.push(e),
            }
        }
        scan
    }

    /// The paths in scope under `dir` (itself included), not following
    /// symlinks: a symlink loop is one symlink element, never a loop.
    pub fn walk(&self, dir: &Path, out: &mut Vec<PathBuf>, problems: &mut Vec<HostError>) {
        if !self.in_scope(dir) {
            return;
        }
        out.push(dir.to_owned());
        let mut stack = vec![dir.to_owned()];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOTDIR) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    problems.push(HostError::io(&dir, e));
                    continue;
                }
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if !self.in_scope(&path) {
                    continue;
                }
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(path.clone());
                }
                out.push(path);
            }
        }
    }
}

fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// `f` over `items` on two threads, results in the items' order.
pub(crate) fn parallel_map<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    if threads < 2 || items.len() < 64 {
        return items.into_iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let mut parts: Vec<Vec<T>> = Vec::new();
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        parts.push(items.by_ref().take(chunk).collect());
    }
    std::thread::scope(|scope| {
        let f = &f;
        let handles: Vec<_> = parts
            .into_iter()
            .map(|part| scope.spawn(move || part.into_iter().map(f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(dir: &Path, extra: &str) -> FileSource {
        let mut config = FilesConfig {
            paths: vec![dir.to_owned()],
            ..FilesConfig::default()
        };
        config.redact.push(extra.to_owned());
        FileSource::new(&config).unwrap()
    }

    #[test]
    fn text_binary_symlink_directory_and_a_redacted_secret() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a.conf"), "x = 1\n").unwrap();
        std::fs::write(d.join("blob"), [0xff, 0x00, 0x01]).unwrap();
        std::fs::write(d.join("secret.key"), "TOPSECRET").unwrap();
        std::fs::write(d.join("vault"), "ALSOSECRET").unwrap();
        std::fs::write(d.join("ssh_host_rsa_key"), "HOSTSECRET").unwrap();
        std::os::unix::fs::symlink("a.conf", d.join("link")).unwrap();
        std::os::unix::fs::symlink("loop", d.join("loop")).unwrap();
        std::fs::write(d.join("a.conf.swp"), "swap").unwrap();
        let source = source(d, "**/vault");
        let mut problems = Vec::new();
        let states = source.scan(&mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let get = |name: &str| {
            let e = FileSource::element_of(&d.join(name)).unwrap();
            states.get(&e).cloned()
        };
        let conf = get("a.conf").unwrap();
        assert_eq!(conf["content"], "x = 1\n");
        assert_eq!(conf["size"], 6);
        assert_eq!(conf["type"], "file");
        assert_eq!(get("blob").unwrap()["content_base64"], "/wAB");
        assert_eq!(get("link").unwrap()["target"], "a.conf");
        assert_eq!(get("loop").unwrap()["type"], "symlink");
        assert!(get("a.conf.swp").is_none(), "swap files are excluded");
        assert_eq!(
            states.get(&FileSource::element_of(d).unwrap()).unwrap()["type"],
            "directory"
        );
        for secret in ["secret.key", "vault", "ssh_host_rsa_key"] {
            let s = get(secret).unwrap();
            assert!(s.get("content").is_none() && s.get("content_base64").is_none());
            assert!(!serde_json::to_string(&s).unwrap().contains("SECRET"));
            assert_eq!(s["sha256"].as_str().unwrap().len(), 64);
        }
    }

    #[test]
    fn large_files_keep_their_hash_only_and_bad_globs_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("big"), vec![b'a'; 2000]).unwrap();
        let config = FilesConfig {
            paths: vec![dir.path().to_owned()],
            max_content: 1000,
            ..FilesConfig::default()
        };
        let s = FileSource::new(&config)
            .unwrap()
            .observe(&dir.path().join("big"))
            .unwrap()
            .unwrap();
        assert_eq!(s["size"], 2000);
        assert!(s.get("content").is_none());
        let bad = FilesConfig {
            exclude: vec!["[unclosed".into()],
            ..FilesConfig::default()
        };
        let e = FileSource::new(&bad).unwrap_err().to_string();
        assert!(
            e.contains("[files] exclude") && e.contains("[unclosed"),
            "{e}"
        );
    }
}
