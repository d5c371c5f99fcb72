//! The configured sources together: which elements they own, a full scan,
//! and observing one element again.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use fschain_schema::{ElementId, State, StateHash};
use fschain_store::ChainDir;

use crate::config::SourcesConfig;
use crate::files::{self, FileSource};
use crate::interfaces::{self, InterfaceSource};
use crate::ovs::{self, OvsSource};
use crate::packages::{self, PackageSource};
use crate::reconcile::Scan;
use crate::services::{self, ServiceSource};
use crate::sysctl::{self, SysctlSource};
use crate::HostError;

#[derive(Debug, Clone)]
pub struct Sources {
    pub files: Option<FileSource>,
    pub sysctl: Option<(SysctlSource, Duration)>,
    pub packages: Option<PackageSource>,
    pub services: Option<ServiceSource>,
    pub interfaces: Option<InterfaceSource>,
    pub ovs: Option<OvsSource>,
    pub coalesce: Duration,
    /// Name the writing process (fanotify) when possible.
    pub attribute: bool,
}

impl Sources {
    pub fn new(config: &SourcesConfig) -> Result<Self, HostError> {
        let files = config.files_or_default();
        Ok(Sources {
            attribute: files.as_ref().is_some_and(|f| f.attribute),
            files: files.as_ref().map(FileSource::new).transpose()?,
            sysctl: config
                .sysctl
                .as_ref()
                .map(|s| Ok::<_, HostError>((SysctlSource::new(s)?, s.interval)))
                .transpose()?,
            packages: config
                .packages
                .as_ref()
                .map(|p| PackageSource::new(&p.status_file)),
            services: config
                .services
                .as_ref()
                .map(|s| ServiceSource::new(&s.unit_dirs)),
            interfaces: config
                .interfaces
                .as_ref()
                .map(|i| InterfaceSource::new(i.netns.clone())),
            ovs: config.ovs.as_ref().map(|o| OvsSource::new(&o.db)),
            coalesce: config.coalesce,
        })
    }

    /// Whether a configured source observes `element`.
    pub fn owns(&self, element: &ElementId) -> bool {
        match element.kind() {
            files::KIND => self.files.as_ref().is_some_and(|f| f.owns(element)),
            sysctl::KIND => self.sysctl.as_ref().is_some_and(|(s, _)| s.owns(element)),
            packages::KIND => self.packages.is_some(),
            services::KIND => self.services.is_some(),
            interfaces::KIND => self.interfaces.is_some(),
            ovs::BRIDGE_KIND | ovs::PORT_KIND => self.ovs.is_some(),
            _ => false,
        }
    }

    /// The source an element belongs to, by name, for reasons and actors.
    pub fn source_name(element: &ElementId) -> &'static str {
        match element.kind() {
            files::KIND => "files",
            sysctl::KIND => "sysctl",
            packages::KIND => "packages",
            services::KIND => "services",
            interfaces::KIND => "interfaces",
            ovs::BRIDGE_KIND | ovs::PORT_KIND => "ovs",
            _ => "host",
        }
    }

    /// Every element of every source. What cannot be read is named in
    /// `problems` and left out; the others are still scanned.
    pub fn scan(&self, problems: &mut Vec<HostError>) -> BTreeMap<ElementId, State> {
        self.scan_where(problems, |_, _| true).states
    }

    /// [`Self::scan`], keeping only the states `keep` accepts (every
    /// element found is still listed).
    pub fn scan_where(
        &self,
        problems: &mut Vec<HostError>,
        keep: impl Fn(&ElementId, &State) -> bool + Sync,
    ) -> Scan {
        let mut scan = match &self.files {
            Some(files) => files.scan_where(problems, &keep),
            None => Scan::default(),
        };
        if let Some((sysctl, _)) = &self.sysctl {
            scan.append(Scan::of(sysctl.scan(problems)));
        }
        if let Some(packages) = &self.packages {
            match packages.scan() {
                Ok(s) => scan.append(Scan::of(s)),
                Err(e) => problems.push(e),
            }
        }
        if let Some(services) = &self.services {
            scan.append(Scan::of(services.scan(problems)));
        }
        if let Some(interfaces) = &self.interfaces {
            match interfaces.scan() {
                Ok(s) => scan.append(Scan::of(s)),
                Err(e) => problems.push(e),
            }
        }
        if let Some(ovs) = &self.ovs {
            match ovs.scan() {
                Ok(s) => scan.append(Scan::of(s)),
                Err(e) => problems.push(e),
            }
        }
        scan.states.retain(|e, s| keep(e, s));
        scan
    }
}

/// The state hashes of the head block's elements that `owns` accepts:
/// what a watch keeps of the head.
pub fn head_state_hashes(
    snapshot: &Path,
    owns: impl Fn(&ElementId) -> bool,
) -> Result<BTreeMap<ElementId, StateHash>, HostError> {
    let scan = ChainDir::new(snapshot).state_hashes("head");
    if let Some(problem) = scan.problems.first() {
        return Err(HostError::Store(fschain_store::StoreError::Corrupt {
            path: snapshot.to_owned(),
            why: format!("{problem}; run `fschain verify`"),
        }));
    }
    Ok(scan.states.into_iter().filter(|(e, _)| owns(e)).collect())
}

/// The states of the head block that `owns` accepts.
pub fn head_states(
    snapshot: &Path,
    owns: impl Fn(&ElementId) -> bool,
) -> Result<BTreeMap<ElementId, State>, HostError> {
    let dir = ChainDir::new(snapshot);
    let mut states = BTreeMap::new();
    for element in head_state_hashes(snapshot, owns)?.into_keys() {
        if let Some(state) = dir.state(&element)? {
            states.insert(element, state);
        }
    }
    Ok(states)
}
