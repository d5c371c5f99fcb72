//! The sysctl source: `sysctl:<dotted key>` elements, `{"value": ...}`,
//! polled (the kernel sends no events for them).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fschain_schema::{ElementId, State};
use globset::{GlobBuilder, GlobMatcher};

use crate::config::SysctlConfig;
use crate::HostError;

pub const KIND: &str = "sysctl";

#[derive(Debug, Clone)]
pub struct SysctlSource {
    proc_sys: PathBuf,
    patterns: Vec<(String, GlobMatcher)>,
}

impl SysctlSource {
    pub fn new(config: &SysctlConfig) -> Result<Self, HostError> {
        let mut patterns = Vec::new();
        for key in &config.keys {
            // A dotted key is a path under /proc/sys; `*` stays in one part.
            let glob = GlobBuilder::new(&key.replace('.', "/"))
                .literal_separator(true)
                .build()
                .map_err(|source| HostError::BadGlob {
                    section: "sysctl",
                    key: "keys",
                    pattern: key.clone(),
                    source,
                })?;
            patterns.push((key.clone(), glob.compile_matcher()));
        }
        Ok(SysctlSource {
            proc_sys: config.proc_sys.clone(),
            patterns,
        })
    }

    pub fn owns(&self, element: &ElementId) -> bool {
        element.kind() == KIND
            && self
                .patterns
                .iter()
                .any(|(_, m)| m.is_match(element.name().replace('.', "/")))
    }

    fn path_of(&self, key: &str) -> PathBuf {
        self.proc_sys.join(key.replace('.', "/"))
    }

    /// Every configured key's value. A key that matches nothing is named in
    /// `problems`; the others are still read.
    pub fn scan(&self, problems: &mut Vec<HostError>) -> BTreeMap<ElementId, State> {
        let mut states = BTreeMap::new();
        for (key, matcher) in &self.patterns {
            let literal: String = key
                .split('.')
                .take_while(|part| !part.contains(['*', '?', '[', '{']))
                .collect::<Vec<_>>()
                .join("/");
            let start = self.proc_sys.join(&literal);
            let mut found = 0;
            let mut stack = vec![start];
            while let Some(path) = stack.pop() {
                let Ok(rel) = path.strip_prefix(&self.proc_sys) else {
                    continue;
                };
                if path.is_dir() {
                    if let Ok(entries) = std::fs::read_dir(&path) {
                        stack.extend(entries.flatten().map(|e| e.path()));
                    }
                    continue;
                }
                let Some(rel) = rel.to_str() else { continue };
                if !matcher.is_match(rel) {
                    continue;
                }
                let dotted = rel.replace('/', ".");
                match self.read(&dotted) {
                    Ok(Some((element, state))) => {
                        found += 1;
                        states.insert(element, state);
                    }
                    Ok(None) => {}
                    // Write-only keys (net.ipv4.route.flush) are not state.
                    Err(HostError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::PermissionDenied => {}
                    Err(e) => problems.push(e),
                }
            }
            if found == 0 {
                problems.push(HostError::NoSysctl {
                    key: key.clone(),
                    root: self.proc_sys.clone(),
                });
            }
        }
        states
    }

    /// One key's value now, or `None` when the key does not exist.
    pub fn read(&self, key: &str) -> Result<Option<(ElementId, State)>, HostError> {
        let path = self.path_of(key);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(HostError::io(&path, e)),
        };
        let element = element(key, &path)?;
        let mut state = State::new();
        state.insert("value".into(), normalize_value(&text).into());
        Ok(Some((element, state)))
    }

    /// Writes `value` back to the key (restore).
    pub fn write(&self, key: &str, value: &str) -> Result<(), HostError> {
        let path = self.path_of(key);
        std::fs::write(&path, format!("{value}\n")).map_err(|e| HostError::io(&path, e))
    }
}

fn element(key: &str, path: &Path) -> Result<ElementId, HostError> {
    ElementId::parse_owned(format!("{KIND}:{key}")).map_err(|source| HostError::BadElement {
        path: path.into(),
        source,
    })
}

/// The kernel separates a multi-value key's fields with tabs; `sysctl`
/// prints them with single spaces, and so do we.
fn normalize_value(text: &str) -> String {
    text.trim_end_matches('\n')
        .split(['\t', ' '])
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_globs_from_a_tree_and_a_missing_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("net/ipv4/conf");
        for iface in ["all", "eth0"] {
            std::fs::create_dir_all(base.join(iface)).unwrap();
            std::fs::write(base.join(iface).join("rp_filter"), "1\n").unwrap();
            std::fs::write(base.join(iface).join("other"), "0\n").unwrap();
        }
        std::fs::write(
            dir.path().join("net/ipv4/ip_local_port_range"),
            "32768\t60999\n",
        )
        .unwrap();
        let source = SysctlSource::new(&SysctlConfig {
            keys: vec![
                "net.ipv4.conf.*.rp_filter".into(),
                "net.ipv4.ip_local_port_range".into(),
                "net.ipv4.nope".into(),
            ],
            interval: std::time::Duration::from_secs(1),
            proc_sys: dir.path().to_owned(),
        })
        .unwrap();
        let mut problems = Vec::new();
        let states = source.scan(&mut problems);
        let names: Vec<&str> = states.keys().map(ElementId::name).collect();
        assert_eq!(
            names,
            [
                "net.ipv4.conf.all.rp_filter",
                "net.ipv4.conf.eth0.rp_filter",
                "net.ipv4.ip_local_port_range"
            ]
        );
        assert_eq!(states.values().last().unwrap()["value"], "32768 60999");
        assert_eq!(problems.len(), 1);
        assert!(problems[0].to_string().contains("net.ipv4.nope"));
        assert!(source.owns(&ElementId::parse("sysctl:net.ipv4.conf.lo.rp_filter").unwrap()));
        assert!(!source.owns(&ElementId::parse("sysctl:net.ipv4.conf.lo.other").unwrap()));
    }
}
