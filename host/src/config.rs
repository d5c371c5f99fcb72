//! The sources file: which parts of the host a watch observes.
//!
//! TOML, every table `deny_unknown_fields`, so a misspelt key is an error
//! that names it rather than a source silently left at its default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::HostError;

/// Editor swap and backup files, lock and cache files: never elements.
pub const DEFAULT_EXCLUDE: &[&str] = &[
    "*.swp",
    "*.swx",
    "*.swo",
    "*~",
    ".#*",
    "#*#",
    "*.dpkg-new",
    "*.dpkg-tmp",
    "*.lock",
    "4913",
    "/etc/mtab",
    "/etc/ld.so.cache",
    "/etc/.pwd.lock",
    "**/.git/**",
    "**/.git",
];

/// Files recorded by hash, size, mode and owner only: their bytes never
/// leave the host.
pub const DEFAULT_REDACT: &[&str] = &[
    "**/etc/shadow",
    "**/etc/shadow-",
    "**/etc/gshadow",
    "**/etc/gshadow-",
    "**/ssh_host_*_key",
    "**/*.key",
    "**/*.pem",
    "**/id_rsa",
    "**/id_ecdsa",
    "**/id_ed25519",
];

/// The whole sources file (or the `[sources]` table of the main config).
/// A table left out is a source not watched; an empty file watches the
/// default files source only.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcesConfig {
    pub files: Option<FilesConfig>,
    pub sysctl: Option<SysctlConfig>,
    pub packages: Option<PackagesConfig>,
    pub services: Option<ServicesConfig>,
    pub interfaces: Option<InterfacesConfig>,
    pub ovs: Option<OvsConfig>,
    /// Changes of one element within this window become one operation.
    #[serde(default = "default_coalesce", with = "duration")]
    pub coalesce: Duration,
}

fn default_coalesce() -> Duration {
    Duration::from_millis(200)
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesConfig {
    #[serde(default = "default_paths")]
    pub paths: Vec<PathBuf>,
    /// Globs added to [`DEFAULT_EXCLUDE`].
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Globs added to [`DEFAULT_REDACT`].
    #[serde(default)]
    pub redact: Vec<String>,
    /// Files larger than this are recorded by hash and size only.
    #[serde(default = "default_max_content", with = "byte_size")]
    pub max_content: u64,
    /// Name the process that made a change (fanotify; needs root).
    #[serde(default = "yes")]
    pub attribute: bool,
}

impl Default for FilesConfig {
    fn default() -> Self {
        FilesConfig {
            paths: default_paths(),
            exclude: Vec::new(),
            redact: Vec::new(),
            max_content: default_max_content(),
            attribute: true,
        }
    }
}

fn yes() -> bool {
    true
}

fn default_paths() -> Vec<PathBuf> {
    vec![PathBuf::from("/etc")]
}

fn default_max_content() -> u64 {
    1 << 20
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SysctlConfig {
    /// Dotted names, `*` matching within one part: `net.ipv4.conf.*.rp_filter`.
    pub keys: Vec<String>,
    #[serde(default = "default_sysctl_interval", with = "duration")]
    pub interval: Duration,
    /// Where the keys are read from (a test may point elsewhere).
    #[serde(default = "default_proc_sys")]
    pub proc_sys: PathBuf,
}

fn default_sysctl_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_proc_sys() -> PathBuf {
    PathBuf::from("/proc/sys")
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackagesConfig {
    #[serde(default = "default_status_file")]
    pub status_file: PathBuf,
}

fn default_status_file() -> PathBuf {
    PathBuf::from("/var/lib/dpkg/status")
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicesConfig {
    #[serde(default = "default_unit_dirs")]
    pub unit_dirs: Vec<PathBuf>,
}

fn default_unit_dirs() -> Vec<PathBuf> {
    vec![PathBuf::from("/etc/systemd/system")]
}

/// Network interfaces and their addresses, over rtnetlink.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfacesConfig {
    /// A named network namespace (`ip netns add NAME`) instead of this
    /// process's own.
    pub netns: Option<String>,
}

/// Open vSwitch, over the OVSDB management protocol.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OvsConfig {
    /// `unix:PATH` or `tcp:HOST:PORT`.
    #[serde(default = "default_ovs_db")]
    pub db: String,
}

fn default_ovs_db() -> String {
    "unix:/var/run/openvswitch/db.sock".into()
}

impl SourcesConfig {
    /// Reads a sources file: either the tables themselves or a main config
    /// whose `[sources]` table holds them.
    pub fn read(path: &Path) -> Result<Self, HostError> {
        let text = std::fs::read_to_string(path).map_err(|e| HostError::io(path, e))?;
        Self::parse(&text).map_err(|why| HostError::Config {
            path: path.to_owned(),
            why,
        })
    }

    /// Parses the text of a sources file (see [`SourcesConfig::read`]).
    pub fn parse(text: &str) -> Result<Self, String> {
        let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        match table.get("sources") {
            Some(toml::Value::Table(sources)) => sources
                .clone()
                .try_into()
                .map_err(|e: toml::de::Error| e.to_string()),
            Some(_) => Err("`sources` must be a table".into()),
            None => toml::from_str(text).map_err(|e: toml::de::Error| e.to_string()),
        }
    }

    /// The files source, the default one when no source is configured.
    pub fn files_or_default(&self) -> Option<FilesConfig> {
        match (
            &self.files,
            &self.sysctl,
            &self.packages,
            &self.services,
            &self.interfaces,
            &self.ovs,
        ) {
            (Some(files), ..) => Some(files.clone()),
            (None, None, None, None, None, None) => Some(FilesConfig::default()),
            _ => None,
        }
    }
}

/// `"512KiB"` → (512, "KiB"); `what` names the form expected.
fn number_and_unit<'a>(text: &'a str, what: &str) -> Result<(u64, &'a str), String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n = number
        .parse()
        .map_err(|_| format!("{text:?} is not {what}"))?;
    Ok((n, unit.trim()))
}

/// `"200ms"`, `"5s"`, `"2m"`, or a number of milliseconds.
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Millis(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Millis(ms) => Ok(Duration::from_millis(ms)),
            Raw::Text(text) => parse(&text).map_err(serde::de::Error::custom),
        }
    }

    pub(crate) fn parse(text: &str) -> Result<Duration, String> {
        let (n, unit) = super::number_and_unit(text, "a duration such as \"200ms\" or \"5s\"")?;
        let ms = match unit {
            "ms" => n,
            "s" | "" => n.saturating_mul(1000),
            "m" => n.saturating_mul(60_000),
            other => return Err(format!("{text:?}: unknown unit {other:?} (ms, s or m)")),
        };
        Ok(Duration::from_millis(ms))
    }
}

/// `"1MiB"`, `"512KiB"`, `"64k"`, or a number of bytes.
mod byte_size {
    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(n) => Ok(n),
            Raw::Text(text) => parse(&text).map_err(serde::de::Error::custom),
        }
    }

    pub(crate) fn parse(text: &str) -> Result<u64, String> {
        let (n, unit) = super::number_and_unit(text, "a size such as \"1MiB\"")?;
        let shift = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" | "kb" | "kib" => 10,
            "m" | "mb" | "mib" => 20,
            "g" | "gb" | "gib" => 30,
            other => return Err(format!("{text:?}: unknown unit {other:?}")),
        };
        n.checked_mul(1 << shift)
            .ok_or_else(|| format!("{text:?} is too large"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issue_example_parses_and_a_typo_is_named() {
        let text = r#"
            [files]
            paths = ["/etc"]
            exclude = ["*.swp", "*~"]
            redact = ["/etc/shadow"]
            max_content = "1MiB"
            [sysctl]
            keys = ["net.ipv4.ip_forward", "net.ipv4.conf.*.rp_filter"]
            interval = "5s"
            [packages]
            status_file = "/var/lib/dpkg/status"
            [services]
            unit_dirs = ["/etc/systemd/system"]
        "#;
        let config = SourcesConfig::parse(text).unwrap();
        assert_eq!(config.files.as_ref().unwrap().max_content, 1 << 20);
        assert_eq!(
            config.sysctl.as_ref().unwrap().interval,
            Duration::from_secs(5)
        );
        assert_eq!(config.coalesce, Duration::from_millis(200));
        let nested = format!("root = \"/x\"\n[sources]\ncoalesce = \"50ms\"\n{}", "");
        assert_eq!(
            SourcesConfig::parse(&nested).unwrap().coalesce,
            Duration::from_millis(50)
        );
        let typo = SourcesConfig::parse("[files]\npath = [\"/etc\"]\n").unwrap_err();
        assert!(typo.contains("unknown field `path`"), "{typo}");
        let bad = SourcesConfig::parse("[files]\nmax_content = \"1 parsec\"\n").unwrap_err();
        assert!(bad.contains("parsec"), "{bad}");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(byte_size::parse("512KiB"), Ok(512 << 10));
        assert_eq!(byte_size::parse("7"), Ok(7));
        assert!(byte_size::parse("x").is_err());
        assert_eq!(duration::parse("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(duration::parse("2m"), Ok(Duration::from_secs(120)));
        assert!(duration::parse("2h").is_err());
    }
}
