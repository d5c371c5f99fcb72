//! The services source: `service:<unit>` elements from the unit
//! directories: enabled (symlinks under `*.wants/` and `*.requires/`),
//! masked (a link to /dev/null), and which targets want it.
//!
//! The active state (running, failed) needs systemd's D-Bus API and is
//! not observed: see the README.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use fschain_schema::{ElementId, State};
use serde_json::Value;

use crate::HostError;

pub const KIND: &str = "service";

#[derive(Debug, Clone)]
pub struct ServiceSource {
    unit_dirs: Vec<PathBuf>,
}

#[derive(Default)]
struct Unit {
    wanted_by: BTreeSet<String>,
    masked: bool,
    unit_file: Option<String>,
}

fn is_unit_name(name: &str) -> bool {
    [
        ".service", ".socket", ".timer", ".mount", ".path", ".target",
    ]
    .iter()
    .any(|s| name.ends_with(s))
}

impl ServiceSource {
    pub fn new(unit_dirs: &[PathBuf]) -> Self {
        ServiceSource {
            unit_dirs: unit_dirs.to_vec(),
        }
    }

    pub fn unit_dirs(&self) -> &[PathBuf] {
        &self.unit_dirs
    }

    pub fn owns(element: &ElementId) -> bool {
        element.kind() == KIND
    }

    /// Every unit the unit directories enable, mask or define.
    pub fn scan(&self, problems: &mut Vec<HostError>) -> BTreeMap<ElementId, State> {
        let mut units: BTreeMap<String, Unit> = BTreeMap::new();
        for dir in &self.unit_dirs {
            let entries = match std::fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    problems.push(HostError::io(dir, e));
                    continue;
                }
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                let target = name
                    .strip_suffix(".wants")
                    .or_else(|| name.strip_suffix(".requires"));
                if let Some(target) = target {
                    for link in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                        let unit = link.file_name().to_string_lossy().into_owned();
                        if is_unit_name(&unit) {
                            units
                                .entry(unit)
                                .or_default()
                                .wanted_by
                                .insert(target.to_owned());
                        }
                    }
                } else if is_unit_name(name) {
                    let unit = units.entry(name.to_owned()).or_default();
                    match std::fs::read_link(&path) {
                        Ok(to) if to == Path::new("/dev/null") => unit.masked = true,
                        Ok(to) => unit.unit_file = Some(to.to_string_lossy().into_owned()),
                        Err(_) => unit.unit_file = Some(path.to_string_lossy().into_owned()),
                    }
                }
            }
        }
        let mut states = BTreeMap::new();
        for (name, unit) in units {
            let element = match ElementId::parse_owned(format!("{KIND}:{name}")) {
                Ok(e) => e,
                Err(source) => {
                    problems.push(HostError::BadElement {
                        path: name.into(),
                        source,
                    });
                    continue;
                }
            };
            let mut state = State::new();
            state.insert(
                "enabled".into(),
                (!unit.wanted_by.is_empty() && !unit.masked).into(),
            );
            state.insert("masked".into(), unit.masked.into());
            state.insert(
                "wanted_by".into(),
                Value::Array(unit.wanted_by.into_iter().map(Value::from).collect()),
            );
            if let Some(file) = unit.unit_file {
                state.insert("unit_file".into(), file.into());
            }
            states.insert(element, state);
        }
        states
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enabled_masked_and_local_units() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("multi-user.target.wants")).unwrap();
        std::os::unix::fs::symlink(
            "/lib/systemd/system/nginx.service",
            d.join("multi-user.target.wants/nginx.service"),
        )
        .unwrap();
        std::os::unix::fs::symlink("/dev/null", d.join("telnet.service")).unwrap();
        std::fs::write(d.join("local.service"), "[Service]\n").unwrap();
        let states = ServiceSource::new(&[d.to_owned()]).scan(&mut Vec::new());
        let get = |n: &str| states[&ElementId::parse(&format!("service:{n}")).unwrap()].clone();
        assert_eq!(get("nginx.service")["enabled"], true);
        assert_eq!(get("nginx.service")["wanted_by"][0], "multi-user.target");
        assert_eq!(get("telnet.service")["masked"], true);
        assert_eq!(get("telnet.service")["enabled"], false);
        assert_eq!(get("local.service")["enabled"], false);
        assert!(get("local.service")["unit_file"]
            .as_str()
            .unwrap()
            .ends_with("local.service"));
    }
}
