//! Writing a recorded state back to the host. Every element is checked
//! before anything is written, so an element that cannot be restored
//! refuses the whole restore; each write is atomic (temporary file, then
//! rename), so none is half-applied.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use fschain_schema::{ElementId, State};

use crate::files;
use crate::interfaces::{self, plan_change, InterfaceChange};
use crate::ovs::{self, OvsChange};
use crate::sources::Sources;
use crate::sysctl;
use crate::HostError;

/// One element's restore, checked and ready to write.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing to do: the host already has this state.
    Nothing,
    WriteFile {
        path: PathBuf,
        /// `None`: the bytes on disk already hash to the recorded SHA-256.
        bytes: Option<Vec<u8>>,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Symlink {
        path: PathBuf,
        target: String,
    },
    Directory {
        path: PathBuf,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Remove {
        path: PathBuf,
    },
    Sysctl {
        key: String,
        value: String,
    },
    Interface(InterfaceChange),
    Ovs(OvsChange),
}

impl Step {
    /// What `--dry-run` prints.
    pub fn describe(&self) -> String {
        match self {
            Step::Nothing => "already as recorded".into(),
            Step::WriteFile {
                path,
                bytes,
                mode,
                uid,
                gid,
            } => format!(
                "{} {} (mode {mode:04o}, owner {uid}:{gid})",
                if bytes.is_some() {
                    "write"
                } else {
                    "set mode and owner of"
                },
                path.display()
            ),
            Step::Symlink { path, target } => format!("link {} -> {target}", path.display()),
            Step::Directory { path, mode, .. } => {
                format!("make directory {} (mode {mode:04o})", path.display())
            }
            Step::Remove { path } => format!("remove {}", path.display()),
            Step::Sysctl { key, value } => format!("sysctl {key} = {value}"),
            Step::Interface(change) => change.describe(),
            Step::Ovs(change) => change.describe(),
        }
    }
}

fn refuse(element: &ElementId, why: impl Into<String>) -> HostError {
    HostError::CannotRestore {
        element: element.to_string(),
        why: why.into(),
    }
}

fn number(element: &ElementId, state: &State, key: &str) -> Result<u32, HostError> {
    state
        .get(key)
        .and_then(serde_json::Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| refuse(element, format!("the recorded state has no {key}")))
}

fn text<'a>(element: &ElementId, state: &'a State, key: &str) -> Result<&'a str, HostError> {
    state
        .get(key)
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| refuse(element, format!("the recorded state has no {key}")))
}

/// Checks that `element` can be brought to `recorded` (`None`: it did not
/// exist), given what the host has now.
pub fn plan(
    sources: &Sources,
    element: &ElementId,
    recorded: Option<&State>,
    current: Option<&State>,
) -> Result<Step, HostError> {
    if recorded == current {
        return Ok(Step::Nothing);
    }
    match element.kind() {
        files::KIND => plan_file(sources, element, recorded, current),
        sysctl::KIND => {
            let Some(recorded) = recorded else {
                return Err(refuse(element, "a sysctl cannot be removed"));
            };
            Ok(Step::Sysctl {
                key: element.name().to_owned(),
                value: text(element, recorded, "value")?.to_owned(),
            })
        }
        interfaces::KIND => {
            if sources.interfaces.is_none() {
                return Err(refuse(element, "no [interfaces] source is configured"));
            }
            match (recorded, current) {
                (None, _) => Err(refuse(
                    element,
                    "fschain does not remove interfaces; delete it with `ip link del`",
                )),
                (Some(_), None) => Err(refuse(
                    element,
                    "it no longer exists; fschain does not create interfaces (`ip link add`), it restores their mtu, up/down and addresses",
                )),
                (Some(recorded), Some(current)) => {
                    plan_change(element.name(), recorded, current)
                        .map(Step::Interface)
                        .map_err(|why| refuse(element, why))
                }
            }
        }
        ovs::BRIDGE_KIND | ovs::PORT_KIND => {
            if sources.ovs.is_none() {
                return Err(refuse(element, "no [ovs] source is configured"));
            }
            ovs::plan_port(element, recorded, current)
                .map(Step::Ovs)
                .map_err(|why| refuse(element, why))
        }
        "package" => Err(refuse(
            element,
            "packages are installed by the package manager; run apt with the recorded version",
        )),
        "service" => Err(refuse(
            element,
            "service enablement is restored with systemctl enable/disable/mask",
        )),
        kind => Err(refuse(
            element,
            format!("no source restores {kind} elements"),
        )),
    }
}

fn plan_file(
    sources: &Sources,
    element: &ElementId,
    recorded: Option<&State>,
    current: Option<&State>,
) -> Result<Step, HostError> {
    let path = PathBuf::from(element.name());
    if !sources.files.as_ref().is_some_and(|f| f.owns(element)) {
        return Err(refuse(element, "it is not under a watched [files] path"));
    }
    let Some(recorded) = recorded else {
        return Ok(Step::Remove { path });
    };
    let mode = || {
        u32::from_str_radix(text(element, recorded, "mode")?, 8)
            .map_err(|_| refuse(element, "the recorded mode is not octal"))
    };
    match text(element, recorded, "type")? {
        "file" => {
            let bytes = if let Some(content) = recorded.get("content").and_then(|c| c.as_str()) {
                Some(content.as_bytes().to_vec())
            } else if let Some(b64) = recorded.get("content_base64").and_then(|c| c.as_str()) {
                Some(
                    base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .map_err(|e| refuse(element, format!("content_base64: {e}")))?,
                )
            } else if current.and_then(|c| c.get("sha256")) == recorded.get("sha256") {
                None
            } else {
                let why = if sources.files.as_ref().is_some_and(|f| f.is_redacted(&path)) {
                    "it is a secret: the chain holds its hash, never its content"
                } else {
                    "the chain holds its hash only (it was larger than max_content)"
                };
                return Err(refuse(element, why));
            };
            Ok(Step::WriteFile {
                path,
                bytes,
                mode: mode()?,
                uid: number(element, recorded, "uid")?,
                gid: number(element, recorded, "gid")?,
            })
        }
        "symlink" => Ok(Step::Symlink {
            path,
            target: text(element, recorded, "target")?.to_owned(),
        }),
        "directory" => Ok(Step::Directory {
            path,
            mode: mode()?,
            uid: number(element, recorded, "uid")?,
            gid: number(element, recorded, "gid")?,
        }),
        other => Err(refuse(element, format!("a {other} cannot be restored"))),
    }
}

/// Carries out one checked step.
pub fn apply(sources: &Sources, step: &Step) -> Result<(), HostError> {
    match step {
        Step::Nothing => Ok(()),
        Step::WriteFile {
            path,
            bytes,
            mode,
            uid,
            gid,
        } => {
            let temp = temp_beside(path);
            let result = (|| {
                match bytes {
                    Some(bytes) => {
                        let mut f =
                            std::fs::File::create(&temp).map_err(|e| HostError::io(&temp, e))?;
                        f.write_all(bytes).map_err(|e| HostError::io(&temp, e))?;
                        f.sync_all().map_err(|e| HostError::io(&temp, e))?;
                    }
                    None => {
                        std::fs::copy(path, &temp).map_err(|e| HostError::io(path, e))?;
                    }
                }
                owner_and_mode(&temp, *mode, *uid, *gid)?;
                std::fs::rename(&temp, path).map_err(|e| HostError::io(path, e))
            })();
            if result.is_err() {
                let _ = std::fs::remove_file(&temp);
            }
            result
        }
        Step::Symlink { path, target } => {
            let temp = temp_beside(path);
            std::os::unix::fs::symlink(target, &temp).map_err(|e| HostError::io(&temp, e))?;
            std::fs::rename(&temp, path).map_err(|e| {
                let _ = std::fs::remove_file(&temp);
                HostError::io(path, e)
            })
        }
        Step::Directory {
            path,
            mode,
            uid,
            gid,
        } => {
            std::fs::create_dir_all(path).map_err(|e| HostError::io(path, e))?;
            owner_and_mode(path, *mode, *uid, *gid)
        }
        Step::Remove { path } => {
            let meta = match std::fs::symlink_metadata(path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(HostError::io(path, e)),
            };
            if meta.is_dir() {
                std::fs::remove_dir(path)
            } else {
                std::fs::remove_file(path)
            }
            .map_err(|e| HostError::io(path, e))
        }
        Step::Interface(change) => match &sources.interfaces {
            Some(i) => i.apply(change),
            None => Err(HostError::CannotRestore {
                element: format!("{}:{}", interfaces::KIND, change.name),
                why: "no [interfaces] source is configured".into(),
            }),
        },
        Step::Ovs(change) => match &sources.ovs {
            Some(o) => o.apply(change),
            None => Err(HostError::CannotRestore {
                element: change.describe(),
                why: "no [ovs] source is configured".into(),
            }),
        },
        Step::Sysctl { key, value } => match &sources.sysctl {
            Some((s, _)) => s.write(key, value),
            None => Err(HostError::CannotRestore {
                element: format!("sysctl:{key}"),
                why: "no [sysctl] source is configured".into(),
            }),
        },
    }
}

fn owner_and_mode(path: &Path, mode: u32, uid: u32, gid: u32) -> Result<(), HostError> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|e| HostError::io(path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| HostError::io(path, e))
}

/// A temporary name in the same directory, so the rename is atomic.
fn temp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.fschain-restore-{}", std::process::id()))
}

/// The state an element has on the host now.
pub fn current(sources: &Sources, element: &ElementId) -> Result<Option<State>, HostError> {
    match element.kind() {
        files::KIND => match &sources.files {
            Some(f) => f.observe(Path::new(element.name())),
            None => Ok(None),
        },
        sysctl::KIND => match &sources.sysctl {
            Some((s, _)) => Ok(s.read(element.name())?.map(|(_, state)| state)),
            None => Ok(None),
        },
        interfaces::KIND => match &sources.interfaces {
            Some(i) => Ok(i.scan()?.remove(element)),
            None => Ok(None),
        },
        ovs::BRIDGE_KIND | ovs::PORT_KIND => match &sources.ovs {
            Some(o) => Ok(o.scan()?.remove(element)),
            None => Ok(None),
        },
        _ => Ok(sources.scan(&mut Vec::new()).remove(element)),
    }
}
