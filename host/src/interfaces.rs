//! Network interfaces (`iface:NAME`) over rtnetlink, in this network
//! namespace or a named one.
//!
//! The state is always read from a full dump of links and addresses; the
//! kernel's multicast notifications (links, IPv4 and IPv6 addresses) only
//! say when to dump again, and a notification lost to an overrun
//! (ENOBUFS) is answered the same way. So a missed or doubled
//! notification can delay a record, never falsify one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use fschain_schema::{ElementId, State};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoVlan, LinkAttribute, LinkFlags, LinkInfo, LinkLayerType, LinkMessage,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use serde_json::{json, Value};

use crate::reconcile::changed_keys;
use crate::HostError;

/// The element kind this source owns.
pub const KIND: &str = "iface";

/// Where named network namespaces live (`ip netns add`).
const NETNS_DIR: &str = "/run/netns";

/// Kinds stacked on a lower device, which IFLA_LINK names.
const STACKED: &[&str] = &["vlan", "macvlan", "macvtap", "ipvlan", "ipvtap"];

/// rtnetlink multicast groups (linux/rtnetlink.h).
const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_IPV4_IFADDR: u32 = 5;
const RTNLGRP_IPV6_IFADDR: u32 = 9;

#[derive(Clone, Debug)]
pub struct InterfaceSource {
    /// A named network namespace, or this process's own.
    netns: Option<String>,
}

impl InterfaceSource {
    pub fn new(netns: Option<String>) -> Self {
        InterfaceSource { netns }
    }

    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// Every interface and its state, from one dump of links and one of
    /// addresses.
    pub fn scan(&self) -> Result<BTreeMap<ElementId, State>, HostError> {
        let socket = self.socket(&[])?;
        let links = dump(
            &socket,
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            self.what(),
        )?;
        let addresses = dump(
            &socket,
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            self.what(),
        )?;
        let links: Vec<LinkMessage> = links
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })
            .collect();
        let addresses: Vec<AddressMessage> = addresses
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => Some(a),
                _ => None,
            })
            .collect();
        let mut states = BTreeMap::new();
        for (name, state) in interface_states(&links, &addresses) {
            let element = ElementId::parse_owned(format!("{KIND}:{name}")).map_err(|source| {
                HostError::BadElement {
                    path: PathBuf::from(&name),
                    source,
                }
            })?;
            states.insert(element, state);
        }
        Ok(states)
    }

    /// A socket subscribed to the notifications of links and addresses.
    pub fn monitor(&self) -> Result<InterfaceMonitor, HostError> {
        let socket = self.socket(&[RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV6_IFADDR])?;
        socket
            .set_non_blocking(true)
            .map_err(|e| self.error("making the notification socket non-blocking", e))?;
        Ok(InterfaceMonitor {
            socket,
            what: self.what(),
        })
    }

    fn what(&self) -> String {
        match &self.netns {
            Some(ns) => format!("interfaces in network namespace {ns}"),
            None => "interfaces".into(),
        }
    }

    fn error(&self, doing: &str, source: std::io::Error) -> HostError {
        HostError::Netlink {
            what: format!("{}: {doing}", self.what()),
            source,
        }
    }

    /// A route netlink socket in the source's namespace, joined to
    /// `groups`. A socket stays in the namespace it was made in, so it is
    /// made on a thread of its own that enters the namespace first.
    fn socket(&self, groups: &[u32]) -> Result<Socket, HostError> {
        let make = || -> Result<Socket, HostError> {
            let mut socket = Socket::new(NETLINK_ROUTE)
                .map_err(|e| self.error("opening a netlink socket", e))?;
            socket
                .bind_auto()
                .map_err(|e| self.error("binding a netlink socket", e))?;
            socket
                .connect(&SocketAddr::new(0, 0))
                .map_err(|e| self.error("connecting a netlink socket", e))?;
            for group in groups {
                socket
                    .add_membership(*group)
                    .map_err(|e| self.error("joining a notification group", e))?;
            }
            Ok(socket)
        };
        let Some(ns) = &self.netns else {
            return make();
        };
        let path = Path::new(NETNS_DIR).join(ns);
        let file = std::fs::File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => HostError::NoNetns {
                name: ns.clone(),
                path: path.clone(),
            },
            _ => HostError::io(&path, e),
        })?;
        let fd: OwnedFd = file.into();
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).map_err(
                        |errno| HostError::Netlink {
                            what: format!("entering network namespace {ns}"),
                            source: errno.into(),
                        },
                    )?;
                    make()
                })
                .join()
                .unwrap_or_else(|_| {
                    Err(HostError::Netlink {
                        what: format!("entering network namespace {ns}"),
                        source: std::io::Error::other("the thread that entered it panicked"),
                    })
                })
        })
    }
}

/// What `restore` writes to one interface: only what differs from the
/// recorded state.
#[derive(Clone, Debug, PartialEq)]
pub struct InterfaceChange {
    pub name: String,
    pub mtu: Option<u32>,
    pub admin_up: Option<bool>,
    pub add: Vec<(IpAddr, u8)>,
    pub remove: Vec<(IpAddr, u8)>,
}

impl InterfaceChange {
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(mtu) = self.mtu {
            parts.push(format!("mtu {mtu}"));
        }
        if let Some(up) = self.admin_up {
            parts.push(if up { "up" } else { "down" }.to_owned());
        }
        parts.extend(self.add.iter().map(|(ip, p)| format!("add {ip}/{p}")));
        parts.extend(self.remove.iter().map(|(ip, p)| format!("remove {ip}/{p}")));
        format!("interface {}: {}", self.name, parts.join(", "))
    }
}

/// Keys a restore writes (`oper_state` follows `admin_up` and the carrier).
const RESTORED_KEYS: &[&str] = &["mtu", "admin_up", "addresses", "oper_state"];

/// How to bring interface `name` from `current` back to `recorded`, or why
/// it cannot be (a key fschain does not write differs).
pub fn plan_change(
    name: &str,
    recorded: &State,
    current: &State,
) -> Result<InterfaceChange, String> {
    let keys = changed_keys(recorded, current);
    if let Some(key) = keys.iter().find(|k| !RESTORED_KEYS.contains(&k.as_str())) {
        return Err(format!(
            "its {key} differs, and fschain restores only an interface's mtu, up/down and addresses"
        ));
    }
    let differs = |key: &str| keys.iter().any(|k| k == key);
    let mtu = match differs("mtu") {
        true => Some(
            recorded
                .get("mtu")
                .and_then(Value::as_u64)
                .and_then(|m| u32::try_from(m).ok())
                .ok_or("the recorded state has no mtu")?,
        ),
        false => None,
    };
    let admin_up = match differs("admin_up") {
        true => Some(
            recorded
                .get("admin_up")
                .and_then(Value::as_bool)
                .ok_or("the recorded state has no admin_up")?,
        ),
        false => None,
    };
    let addresses = |state: &State| -> Result<BTreeSet<(IpAddr, u8)>, String> {
        state
            .get("addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|a| {
                let text = a.as_str().unwrap_or_default();
                let (ip, prefix) = text
                    .split_once('/')
                    .ok_or_else(|| format!("address {text:?} is not ADDRESS/PREFIX"))?;
                Ok((
                    ip.parse()
                        .map_err(|_| format!("address {text:?} is not an IP address"))?,
                    prefix
                        .parse()
                        .map_err(|_| format!("address {text:?} has a bad prefix"))?,
                ))
            })
            .collect()
    };
    let (want, have) = (addresses(recorded)?, addresses(current)?);
    Ok(InterfaceChange {
        name: name.to_owned(),
        mtu,
        admin_up,
        add: want.difference(&have).copied().collect(),
        remove: have.difference(&want).copied().collect(),
    })
}

impl InterfaceSource {
    /// Writes `change` over rtnetlink: the link's mtu and up/down in one
    /// request, then each address removed and added, each acknowledged.
    pub fn apply(&self, change: &InterfaceChange) -> Result<(), HostError> {
        let socket = self.socket(&[])?;
        let index = dump(
            &socket,
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            self.what(),
        )?
        .into_iter()
        .find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) if link_name(&l).as_deref() == Some(&change.name) => {
                Some(l.header.index)
            }
            _ => None,
        })
        .ok_or_else(|| HostError::CannotRestore {
            element: format!("{KIND}:{}", change.name),
            why: format!("{} has no interface of that name", self.what()),
        })?;
        let what = format!("{} ({})", self.what(), change.describe());
        if change.mtu.is_some() || change.admin_up.is_some() {
            let mut link = LinkMessage::default();
            link.header.index = index;
            if let Some(up) = change.admin_up {
                link.header.change_mask = LinkFlags::Up;
                if up {
                    link.header.flags = LinkFlags::Up;
                }
            }
            if let Some(mtu) = change.mtu {
                link.attributes.push(LinkAttribute::Mtu(mtu));
            }
            request(&socket, RouteNetlinkMessage::SetLink(link), 0, &what)?;
        }
        for (ip, prefix) in &change.remove {
            let message = address_message(index, *ip, *prefix);
            request(&socket, RouteNetlinkMessage::DelAddress(message), 0, &what)?;
        }
        for (ip, prefix) in &change.add {
            let message = address_message(index, *ip, *prefix);
            request(
                &socket,
                RouteNetlinkMessage::NewAddress(message),
                NLM_F_CREATE | NLM_F_EXCL,
                &what,
            )?;
        }
        Ok(())
    }
}

fn address_message(index: u32, ip: IpAddr, prefix_len: u8) -> AddressMessage {
    let mut message = AddressMessage::default();
    message.header.family = match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    message.header.prefix_len = prefix_len;
    message.header.index = index;
    message.attributes = vec![AddressAttribute::Local(ip), AddressAttribute::Address(ip)];
    message
}

/// Sends one request and waits for the kernel's acknowledgement.
fn request(
    socket: &Socket,
    message: RouteNetlinkMessage,
    flags: u16,
    what: &str,
) -> Result<(), HostError> {
    let failed = |source: std::io::Error| HostError::Netlink {
        what: what.to_owned(),
        source,
    };
    let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(message));
    packet.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    packet.header.sequence_number = 2;
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf[..]);
    socket.send(&buf, 0).map_err(failed)?;
    let mut receive = vec![0u8; 64 * 1024];
    loop {
        let size = socket.recv(&mut &mut receive[..], 0).map_err(failed)?;
        let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&receive[..size])
            .map_err(|e| failed(std::io::Error::other(e.to_string())))?;
        if let NetlinkPayload::Error(e) = reply.payload {
            return match e.code {
                None => Ok(()),
                Some(_) => Err(failed(e.to_io())),
            };
        }
    }
}

/// Notifications of links and addresses: each says only that the
/// interfaces must be dumped again.
pub struct InterfaceMonitor {
    socket: Socket,
    what: String,
}

impl std::fmt::Debug for InterfaceMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InterfaceMonitor")
            .field("what", &self.what)
            .finish()
    }
}

impl InterfaceMonitor {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// Reads every pending notification; whether any arrived (or some
    /// were lost to an overrun, which asks for a dump all the same).
    pub fn take(&mut self) -> Result<bool, HostError> {
        let mut any = false;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match self.socket.recv(&mut &mut buf[..], 0) {
                Ok(0) => return Ok(any),
                Ok(_) => any = true,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(any),
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => {
                    tracing::warn!(
                        "{}: notifications lost to an overrun; dumping them all again",
                        self.what
                    );
                    any = true;
                }
                Err(e) => {
                    return Err(HostError::Netlink {
                        what: format!("{}: reading notifications", self.what),
                        source: e,
                    })
                }
            }
        }
    }
}

/// Sends one dump request and reads its answer to the end.
fn dump(
    socket: &Socket,
    request: RouteNetlinkMessage,
    what: String,
) -> Result<Vec<RouteNetlinkMessage>, HostError> {
    let failed = |doing: &str, source: std::io::Error| HostError::Netlink {
        what: format!("{what}: {doing}"),
        source,
    };
    let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(request));
    packet.header.flags = NLM_F_DUMP | NLM_F_REQUEST;
    packet.header.sequence_number = 1;
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf[..]);
    socket
        .send(&buf, 0)
        .map_err(|e| failed("sending a dump request", e))?;
    let mut out = Vec::new();
    let mut receive = vec![0u8; 64 * 1024];
    loop {
        let size = socket
            .recv(&mut &mut receive[..], 0)
            .map_err(|e| failed("reading a dump", e))?;
        let mut offset = 0;
        while offset < size {
            let message =
                NetlinkMessage::<RouteNetlinkMessage>::deserialize(&receive[offset..size])
                    .map_err(|e| failed("parsing a dump", std::io::Error::other(e.to_string())))?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => {
                    return Err(failed(
                        "the kernel refused a dump",
                        std::io::Error::other(format!("{e:?}")),
                    ))
                }
                NetlinkPayload::InnerMessage(m) => out.push(m),
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

/// Each interface's state from the dumps: a pure function, tested on
/// messages built in memory.
pub fn interface_states(
    links: &[LinkMessage],
    addresses: &[AddressMessage],
) -> BTreeMap<String, State> {
    let names: BTreeMap<u32, String> = links
        .iter()
        .filter_map(|l| Some((l.header.index, link_name(l)?)))
        .collect();
    let mut by_index: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
    for a in addresses {
        if let Some(address) = address_text(a) {
            by_index.entry(a.header.index).or_default().insert(address);
        }
    }
    let mut states = BTreeMap::new();
    for link in links {
        let Some(name) = link_name(link) else {
            continue;
        };
        let mut state = State::new();
        let mut kind = if link.header.link_layer_type == LinkLayerType::Loopback {
            "loopback".to_owned()
        } else {
            "device".to_owned()
        };
        let mut vlan_id = None;
        let mut parent = None;
        for attribute in &link.attributes {
            match attribute {
                LinkAttribute::Mtu(mtu) => {
                    state.insert("mtu".into(), json!(mtu));
                }
                LinkAttribute::Address(mac) if !mac.is_empty() => {
                    state.insert("mac".into(), json!(mac_text(mac)));
                }
                LinkAttribute::OperState(s) => {
                    state.insert("oper_state".into(), json!(s.to_string().to_lowercase()));
                }
                LinkAttribute::Controller(index) => {
                    if let Some(master) = names.get(index) {
                        state.insert("master".into(), json!(master));
                    }
                }
                LinkAttribute::Link(index) => parent = names.get(index).cloned(),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(k) => kind = k.to_string(),
                            LinkInfo::Data(InfoData::Vlan(vlan)) => {
                                for v in vlan {
                                    if let InfoVlan::Id(id) = v {
                                        vlan_id = Some(*id);
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(id) = vlan_id {
            state.insert("vlan_id".into(), json!(id));
        }
        // IFLA_LINK is the lower device of a stacked one; of a veth it is
        // the peer, which is not a parent.
        if let Some(parent) = parent.filter(|_| STACKED.contains(&kind.as_str())) {
            state.insert("parent".into(), json!(parent));
        }
        state.insert("kind".into(), json!(kind));
        state.insert(
            "admin_up".into(),
            json!(link.header.flags.contains(LinkFlags::Up)),
        );
        let addresses: Vec<Value> = by_index
            .get(&link.header.index)
            .into_iter()
            .flatten()
            .map(|a| json!(a))
            .collect();
        state.insert("addresses".into(), Value::Array(addresses));
        states.insert(name, state);
    }
    states
}

fn link_name(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.clone()),
        _ => None,
    })
}

/// `"10.0.0.1/24"`, `"fd00::1/64"`; IPv6 link-local addresses, which the
/// kernel makes by itself from the MAC, are left out.
fn address_text(message: &AddressMessage) -> Option<String> {
    let mut address = None;
    for attribute in &message.attributes {
        match attribute {
            // IFA_LOCAL is the interface's own address where IFA_ADDRESS
            // is a point-to-point peer.
            AddressAttribute::Local(ip) => address = Some(*ip),
            AddressAttribute::Address(ip) if address.is_none() => address = Some(*ip),
            _ => {}
        }
    }
    let ip = address?;
    if let IpAddr::V6(v6) = ip {
        if v6.segments()[0] & 0xffc0 == 0xfe80 {
            return None;
        }
    }
    Some(format!("{ip}/{}", message.header.prefix_len))
}

fn mac_text(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::{InfoKind, State as OperState};
    use std::net::Ipv4Addr;

    fn link(index: u32, name: &str, extra: Vec<LinkAttribute>) -> LinkMessage {
        let mut l = LinkMessage::default();
        l.header.index = index;
        l.header.flags = LinkFlags::Up;
        l.attributes = vec![LinkAttribute::IfName(name.into()), LinkAttribute::Mtu(1500)];
        l.attributes.extend(extra);
        l
    }

    fn address(index: u32, ip: IpAddr, prefix: u8) -> AddressMessage {
        let mut a = AddressMessage::default();
        a.header.index = index;
        a.header.prefix_len = prefix;
        a.attributes = vec![AddressAttribute::Address(ip)];
        a
    }

    #[test]
    fn kinds_masters_vlans_and_addresses() {
        let links = vec![
            link(
                2,
                "br0",
                vec![LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                    InfoKind::Bridge,
                )])],
            ),
            link(
                3,
                "v0",
                vec![
                    LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
                    LinkAttribute::Controller(2),
                    LinkAttribute::Address(vec![2, 0, 0, 0, 0, 0x1f]),
                    LinkAttribute::OperState(OperState::Up),
                ],
            ),
            link(
                4,
                "v0.20",
                vec![
                    LinkAttribute::Link(3),
                    LinkAttribute::LinkInfo(vec![
                        LinkInfo::Kind(InfoKind::Vlan),
                        LinkInfo::Data(InfoData::Vlan(vec![InfoVlan::Id(20)])),
                    ]),
                ],
            ),
        ];
        let addresses = vec![
            address(4, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 24),
            address(4, "fd00::1".parse().unwrap(), 64),
            address(4, "fe80::1".parse().unwrap(), 64),
        ];
        let states = interface_states(&links, &addresses);
        assert_eq!(states["br0"]["kind"], "bridge");
        assert_eq!(states["v0"]["master"], "br0");
        assert_eq!(states["v0"]["mac"], "02:00:00:00:00:1f");
        assert_eq!(states["v0"]["oper_state"], "up");
        assert_eq!(states["v0.20"]["kind"], "vlan");
        assert_eq!(states["v0.20"]["vlan_id"], 20);
        assert_eq!(states["v0.20"]["parent"], "v0");
        assert_eq!(states["v0.20"]["admin_up"], true);
        assert_eq!(
            states["v0.20"]["addresses"],
            json!(["10.0.0.1/24", "fd00::1/64"])
        );
        assert_eq!(states["br0"]["addresses"], json!([]));
    }

    #[test]
    fn a_restore_writes_only_what_differs_and_refuses_other_keys() {
        let state = |v: Value| v.as_object().unwrap().clone();
        let recorded = state(json!({"kind": "veth", "mtu": 1500, "admin_up": true,
            "addresses": ["10.0.0.1/24", "fd00::1/64"]}));
        let current = state(json!({"kind": "veth", "mtu": 1400, "admin_up": true,
            "addresses": ["10.0.0.1/24", "10.0.9.9/16"]}));
        let change = plan_change("v0", &recorded, &current).unwrap();
        assert_eq!(change.mtu, Some(1400 + 100));
        assert_eq!(change.admin_up, None);
        assert_eq!(change.add, vec![("fd00::1".parse().unwrap(), 64)]);
        assert_eq!(change.remove, vec![("10.0.9.9".parse().unwrap(), 16)]);
        assert_eq!(
            change.describe(),
            "interface v0: mtu 1500, add fd00::1/64, remove 10.0.9.9/16"
        );
        let moved = state(json!({"kind": "veth", "mtu": 1500, "admin_up": true,
            "addresses": ["10.0.0.1/24", "fd00::1/64"], "master": "br0"}));
        let why = plan_change("v0", &recorded, &moved).unwrap_err();
        assert!(why.starts_with("its master differs"), "{why}");
    }
}
