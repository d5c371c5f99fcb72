//! The packages source: `package:<name>` elements read from the dpkg
//! status database, `{"version", "architecture", "status"}`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fschain_schema::{ElementId, State};

use crate::HostError;

pub const KIND: &str = "package";

#[derive(Debug, Clone)]
pub struct PackageSource {
    status_file: PathBuf,
}

impl PackageSource {
    pub fn new(status_file: &Path) -> Self {
        PackageSource {
            status_file: status_file.to_owned(),
        }
    }

    pub fn status_file(&self) -> &Path {
        &self.status_file
    }

    pub fn owns(element: &ElementId) -> bool {
        element.kind() == KIND
    }

    /// Every package dpkg knows of that is not purged.
    pub fn scan(&self) -> Result<BTreeMap<ElementId, State>, HostError> {
        let text =
            std::fs::read(&self.status_file).map_err(|e| HostError::io(&self.status_file, e))?;
        parse_status(&String::from_utf8_lossy(&text), &self.status_file)
    }
}

/// Parses dpkg's status file (deb822 stanzas). A package installed for
/// several architectures (`Multi-Arch: same`) is one element per
/// architecture, `package:<name>:<arch>`.
pub fn parse_status(text: &str, path: &Path) -> Result<BTreeMap<ElementId, State>, HostError> {
    let mut stanzas: Vec<BTreeMap<&str, &str>> = Vec::new();
    let mut current: BTreeMap<&str, &str> = BTreeMap::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.is_empty() {
                stanzas.push(std::mem::take(&mut current));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            continue; // a continuation line (Description, Conffiles)
        }
        if let Some((field, value)) = line.split_once(':') {
            current.insert(field, value.trim());
        }
    }
    if !current.is_empty() {
        stanzas.push(current);
    }
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &stanzas {
        if let Some(name) = s.get("Package") {
            *count.entry(name).or_default() += 1;
        }
    }
    let mut states = BTreeMap::new();
    for s in &stanzas {
        let (Some(name), Some(status)) = (s.get("Package"), s.get("Status")) else {
            continue;
        };
        if status.ends_with("not-installed")
            || status.ends_with("config-files") && s.get("Version").is_none()
        {
            continue;
        }
        let arch = s.get("Architecture").copied().unwrap_or("");
        let id = if count.get(name).copied().unwrap_or(0) > 1 {
            format!("{KIND}:{name}:{arch}")
        } else {
            format!("{KIND}:{name}")
        };
        let element = ElementId::parse_owned(id).map_err(|source| HostError::BadElement {
            path: path.into(),
            source,
        })?;
        let mut state = State::new();
        state.insert(
            "version".into(),
            s.get("Version").copied().unwrap_or("").into(),
        );
        state.insert("architecture".into(), arch.into());
        state.insert("status".into(), (*status).into());
        states.insert(element, state);
    }
    Ok(states)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stanzas_multiarch_and_purged_packages() {
        let text = "Package: openssh-server\nStatus: install ok installed\nPriority: optional\nArchitecture: amd64\nVersion: 1:9.2p1-2\nDescription: secure shell\n two lines\n\nPackage: libc6\nStatus: install ok installed\nArchitecture: amd64\nMulti-Arch: same\nVersion: 2.36-9\n\nPackage: libc6\nStatus: install ok installed\nArchitecture: i386\nMulti-Arch: same\nVersion: 2.36-9\n\nPackage: gone\nStatus: purge ok not-installed\nArchitecture: amd64\n";
        let states = parse_status(text, Path::new("status")).unwrap();
        let names: Vec<&str> = states.keys().map(ElementId::as_str).collect();
        assert_eq!(
            names,
            [
                "package:libc6:amd64",
                "package:libc6:i386",
                "package:openssh-server"
            ]
        );
        let ssh = &states.values().last().unwrap();
        assert_eq!(ssh["version"], "1:9.2p1-2");
        assert_eq!(ssh["status"], "install ok installed");
    }

    #[test]
    fn the_machines_own_status_file_parses() {
        let path = Path::new("/var/lib/dpkg/status");
        if path.exists() {
            let states = PackageSource::new(path).scan().unwrap();
            assert!(!states.is_empty());
        }
    }
}
