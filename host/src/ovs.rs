//! Open vSwitch bridges (`ovs-bridge:BR`) and ports (`ovs-port:BR/PORT`),
//! from the OVSDB management protocol (RFC 7047: JSON-RPC over the
//! database's unix socket or TCP).
//!
//! The adapter is small: a socket, a framer that cuts the stream into
//! JSON values, `monitor` and `transact` requests. What decides the states
//! is a pure [`Replica`] of the Bridge, Port and Interface tables, fed the
//! `monitor` reply and every `update` notification. A monitor that loses
//! its connection reconnects and starts a fresh replica from the full
//! reply, so a restart of ovsdb-server records nothing twice.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fschain_schema::{ElementId, State};
use serde_json::{json, Map, Value};
use tracing::{info, warn};

use crate::HostError;

pub const BRIDGE_KIND: &str = "ovs-bridge";
pub const PORT_KIND: &str = "ovs-port";

const DATABASE: &str = "Open_vSwitch";

/// The columns monitored, table by table.
const COLUMNS: &[(&str, &[&str])] = &[
    ("Bridge", &["name", "ports", "fail_mode", "external_ids"]),
    (
        "Port",
        &[
            "name",
            "interfaces",
            "tag",
            "trunks",
            "vlan_mode",
            "external_ids",
        ],
    ),
    ("Interface", &["name", "type", "options", "external_ids"]),
];

#[derive(Clone, Debug)]
pub struct OvsSource {
    /// `unix:PATH` or `tcp:HOST:PORT`.
    db: String,
}

impl OvsSource {
    pub fn new(db: &str) -> Self {
        OvsSource { db: db.to_owned() }
    }

    pub fn owns(element: &ElementId) -> bool {
        matches!(element.kind(), BRIDGE_KIND | PORT_KIND)
    }

    fn error(&self, doing: &str, source: std::io::Error) -> HostError {
        HostError::Ovsdb {
            db: self.db.clone(),
            what: doing.to_owned(),
            source,
        }
    }

    fn connect(&self) -> Result<Connection, HostError> {
        let stream: Box<dyn Stream> = if let Some(path) = self.db.strip_prefix("unix:") {
            Box::new(UnixStream::connect(path).map_err(|e| self.error("connecting", e))?)
        } else if let Some(addr) = self.db.strip_prefix("tcp:") {
            Box::new(std::net::TcpStream::connect(addr).map_err(|e| self.error("connecting", e))?)
        } else {
            return Err(self.error(
                "reading [ovs] db",
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "expected unix:PATH or tcp:HOST:PORT",
                ),
            ));
        };
        Ok(Connection {
            stream,
            framer: Framer::default(),
            next_id: 1,
        })
    }

    /// Every bridge and port and its state, from one `monitor` reply.
    pub fn scan(&self) -> Result<BTreeMap<ElementId, State>, HostError> {
        let mut connection = self.connect()?;
        let initial = connection
            .monitor()
            .map_err(|e| self.error("starting a monitor", e))?;
        let mut replica = Replica::default();
        replica.apply(&initial);
        replica.states()
    }

    /// Follows the database on a thread of its own until dropped.
    pub fn monitor(&self) -> Result<OvsMonitor, HostError> {
        let (wake_read, wake_write) =
            UnixStream::pair().map_err(|e| self.error("making a wake-up socket", e))?;
        wake_read
            .set_nonblocking(true)
            .map_err(|e| self.error("making a wake-up socket", e))?;
        let latest = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (source, latest, stop) = (self.clone(), latest.clone(), stop.clone());
            std::thread::Builder::new()
                .name("ovsdb-monitor".into())
                .spawn(move || source.follow(&latest, &stop, wake_write))
                .map_err(|e| self.error("starting the monitor thread", e))?
        };
        Ok(OvsMonitor {
            wake: wake_read,
            latest,
            stop,
            thread: Some(thread),
        })
    }

    /// Connects, monitors, hands each new set of states out; reconnects
    /// (with a fresh replica) whenever the connection is lost.
    fn follow(&self, latest: &Mutex<Option<Snapshot>>, stop: &AtomicBool, mut wake: UnixStream) {
        let mut connected_once = false;
        while !stop.load(Ordering::SeqCst) {
            match self.follow_once(latest, stop, &mut wake) {
                Ok(()) => return,
                Err(e) => {
                    if connected_once {
                        warn!("{e}; reconnecting");
                    } else {
                        warn!("{e}; trying again");
                    }
                    connected_once = true;
                }
            }
            for _ in 0..10 {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn follow_once(
        &self,
        latest: &Mutex<Option<Snapshot>>,
        stop: &AtomicBool,
        wake: &mut UnixStream,
    ) -> Result<(), HostError> {
        let mut connection = self.connect()?;
        let initial = connection
            .monitor()
            .map_err(|e| self.error("starting a monitor", e))?;
        info!(db = %self.db, "following Open vSwitch");
        let mut replica = Replica::default();
        replica.apply(&initial);
        let mut publish = |replica: &Replica| {
            let snapshot = replica.states();
            if let Ok(mut slot) = latest.lock() {
                *slot = Some(snapshot);
            }
            let _ = wake.write(&[1]);
        };
        publish(&replica);
        connection
            .set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(|e| self.error("setting a read timeout", e))?;
        while !stop.load(Ordering::SeqCst) {
            let messages = connection.read().map_err(|e| self.error("reading", e))?;
            let mut changed = false;
            for message in messages {
                match message.get("method").and_then(Value::as_str) {
                    Some("update") => {
                        if let Some(updates) = message["params"].get(1) {
                            replica.apply(updates);
                            changed = true;
                        }
                    }
                    Some("echo") => connection
                        .send(&json!({"id": message["id"], "result": message["params"], "error": null}))
                        .map_err(|e| self.error("answering an echo", e))?,
                    _ => {}
                }
            }
            if changed {
                publish(&replica);
            }
        }
        Ok(())
    }
}

/// What `restore` does to one port, as one OVSDB transaction.
#[derive(Clone, Debug, PartialEq)]
pub enum OvsChange {
    /// Set these Port columns (OVSDB notation) back.
    Update {
        bridge: String,
        port: String,
        row: Map<String, Value>,
    },
    /// Make the port again, with its interfaces, on its bridge.
    Create {
        bridge: String,
        port: String,
        state: State,
    },
    /// Take the port off its bridge (OVSDB then drops the unreferenced
    /// Port and Interface rows).
    Remove { bridge: String, port: String },
}

impl OvsChange {
    pub fn describe(&self) -> String {
        match self {
            OvsChange::Update { bridge, port, row } => format!(
                "set {} of port {port} on {bridge}",
                row.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
            OvsChange::Create { bridge, port, .. } => {
                format!("add port {port} to {bridge} with its recorded columns")
            }
            OvsChange::Remove { bridge, port } => format!("remove port {port} from {bridge}"),
        }
    }
}

/// Port columns a restore writes.
const RESTORED_PORT_KEYS: &[&str] = &["tag", "trunks", "vlan_mode", "external_ids"];

/// How to bring `ovs-port:BRIDGE/PORT` back to `recorded` (`None`: it did
/// not exist), or why it cannot be.
pub fn plan_port(
    element: &ElementId,
    recorded: Option<&State>,
    current: Option<&State>,
) -> Result<OvsChange, String> {
    if element.kind() != PORT_KIND {
        return Err("fschain restores ports; make bridges with `ovs-vsctl add-br`".into());
    }
    let (bridge, port) = element
        .name()
        .split_once('/')
        .ok_or("a port is named BRIDGE/PORT")?;
    let (bridge, port) = (bridge.to_owned(), port.to_owned());
    match (recorded, current) {
        (None, None) => Err("it neither exists nor was recorded".into()),
        (None, Some(_)) => Ok(OvsChange::Remove { bridge, port }),
        (Some(state), None) => Ok(OvsChange::Create {
            bridge,
            port,
            state: state.clone(),
        }),
        (Some(recorded), Some(current)) => {
            let keys = crate::reconcile::changed_keys(recorded, current);
            if let Some(key) = keys
                .iter()
                .find(|k| !RESTORED_PORT_KEYS.contains(&k.as_str()))
            {
                return Err(format!(
                    "its {key} differ, and fschain restores a port's tag, trunks, vlan_mode, external_ids and existence"
                ));
            }
            let row = keys
                .iter()
                .map(|k| (k.clone(), port_column(k, recorded.get(k))))
                .collect();
            Ok(OvsChange::Update { bridge, port, row })
        }
    }
}

/// A port state's key in OVSDB notation.
fn port_column(key: &str, value: Option<&Value>) -> Value {
    match (key, value) {
        ("external_ids" | "options", Some(Value::Object(map))) => ovs_map(map),
        ("trunks", Some(Value::Array(items))) => json!(["set", items]),
        (_, None | Some(Value::Null)) => json!(["set", []]),
        (_, Some(atom)) => atom.clone(),
    }
}

fn ovs_map(map: &Map<String, Value>) -> Value {
    let pairs: Vec<Value> = map.iter().map(|(k, v)| json!([k, v])).collect();
    json!(["map", pairs])
}

impl OvsSource {
    /// Applies `change` as one `transact`.
    pub fn apply(&self, change: &OvsChange) -> Result<(), HostError> {
        let mut connection = self.connect()?;
        let failed = |e| self.error(&change.describe(), e);
        let by_name = |name: &str| json!([["name", "==", name]]);
        let operations: Vec<Value> = match change {
            OvsChange::Update { port, row, .. } => {
                vec![json!({"op": "update", "table": "Port", "where": by_name(port), "row": row})]
            }
            OvsChange::Create {
                bridge,
                port,
                state,
            } => {
                let mut operations = Vec::new();
                let mut interfaces = Vec::new();
                for (i, interface) in state
                    .get("interfaces")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    let uuid_name = format!("interface{i}");
                    let column = |k: &str| port_column(k, interface.get(k));
                    operations.push(json!({"op": "insert", "table": "Interface", "uuid-name": uuid_name,
                        "row": {"name": interface.get("name"), "type": interface.get("type"),
                                "options": column("options"), "external_ids": column("external_ids")}}));
                    interfaces.push(json!(["named-uuid", uuid_name]));
                }
                let mut row: Map<String, Value> = RESTORED_PORT_KEYS
                    .iter()
                    .map(|k| ((*k).to_owned(), port_column(k, state.get(*k))))
                    .collect();
                row.insert("name".into(), json!(port));
                row.insert("interfaces".into(), json!(["set", interfaces]));
                operations.push(
                    json!({"op": "insert", "table": "Port", "uuid-name": "port", "row": row}),
                );
                operations.push(
                    json!({"op": "mutate", "table": "Bridge", "where": by_name(bridge),
                    "mutations": [["ports", "insert", ["set", [["named-uuid", "port"]]]]]}),
                );
                operations
            }
            OvsChange::Remove { bridge, port } => {
                let found = connection
                    .call(
                        "transact",
                        json!([DATABASE, {"op": "select", "table": "Port", "where": by_name(port), "columns": ["_uuid"]}]),
                    )
                    .map_err(failed)?;
                let uuid = found[0]["rows"][0]["_uuid"].clone();
                if uuid.is_null() {
                    return Ok(());
                }
                vec![
                    json!({"op": "mutate", "table": "Bridge", "where": by_name(bridge),
                    "mutations": [["ports", "delete", ["set", [uuid]]]]}),
                ]
            }
        };
        let mut params = vec![json!(DATABASE)];
        params.extend(operations);
        let results = connection
            .call("transact", Value::Array(params))
            .map_err(failed)?;
        if let Some(error) = results
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r.get("error").is_some_and(|e| !e.is_null()))
        {
            return Err(failed(std::io::Error::other(format!(
                "the transaction was refused: {error}"
            ))));
        }
        Ok(())
    }
}

type Snapshot = Result<BTreeMap<ElementId, State>, HostError>;

/// The states of the followed database, newest first; a readable socket
/// says a new set is ready.
pub struct OvsMonitor {
    wake: UnixStream,
    latest: Arc<Mutex<Option<Snapshot>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for OvsMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OvsMonitor").finish_non_exhaustive()
    }
}

impl OvsMonitor {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// The newest states, if new ones arrived since the last call.
    pub fn take(&mut self) -> Option<Snapshot> {
        let mut buf = [0u8; 64];
        while matches!(self.wake.read(&mut buf), Ok(n) if n > 0) {}
        self.latest.lock().ok().and_then(|mut slot| slot.take())
    }
}

impl Drop for OvsMonitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

trait Stream: Read + Write + Send {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()>;
}

impl Stream for UnixStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        UnixStream::set_read_timeout(self, timeout)
    }
}

impl Stream for std::net::TcpStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        std::net::TcpStream::set_read_timeout(self, timeout)
    }
}

struct Connection {
    stream: Box<dyn Stream>,
    framer: Framer,
    next_id: u64,
}

impl Connection {
    fn send(&mut self, message: &Value) -> std::io::Result<()> {
        self.stream.write_all(message.to_string().as_bytes())
    }

    fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.stream.set_read_timeout(timeout)
    }

    /// The JSON values that arrived; none after a read timeout.
    fn read(&mut self) -> std::io::Result<Vec<Value>> {
        let mut buf = [0u8; 64 * 1024];
        match self.stream.read(&mut buf) {
            Ok(0) => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "ovsdb-server closed the connection",
            )),
            Ok(n) => self
                .framer
                .push(&buf[..n])
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }

    /// Sends `method` and waits for its reply (answering echoes meanwhile).
    fn call(&mut self, method: &str, params: Value) -> std::io::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"method": method, "params": params, "id": id}))?;
        loop {
            for message in self.read()? {
                if message.get("method").and_then(Value::as_str) == Some("echo") {
                    let reply =
                        json!({"id": message["id"], "result": message["params"], "error": null});
                    self.send(&reply)?;
                } else if message.get("id") == Some(&json!(id)) {
                    if !message["error"].is_null() {
                        return Err(std::io::Error::other(format!(
                            "{method} refused: {}",
                            message["error"]
                        )));
                    }
                    return Ok(message["result"].clone());
                }
            }
        }
    }

    fn monitor(&mut self) -> std::io::Result<Value> {
        let requests: Map<String, Value> = COLUMNS
            .iter()
            .map(|(table, columns)| ((*table).to_owned(), json!({ "columns": columns })))
            .collect();
        self.call("monitor", json!([DATABASE, null, requests]))
    }
}

/// Cuts a byte stream into JSON objects (RFC 7047 sends them back to back
/// with no delimiter): braces are counted outside strings.
#[derive(Debug, Default)]
pub struct Framer {
    buffer: Vec<u8>,
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// Where scanning resumes in `buffer`.
    scanned: usize,
}

/// No single message may grow past this without ending.
const MAX_MESSAGE: usize = 64 << 20;

impl Framer {
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Value>, String> {
        self.buffer.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut start = 0;
        let mut i = self.scanned;
        while i < self.buffer.len() {
            let b = self.buffer[i];
            if self.in_string {
                match (self.escaped, b) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
            } else {
                match b {
                    b'"' => self.in_string = true,
                    b'{' | b'[' => self.depth += 1,
                    b'}' | b']' => {
                        self.depth = self
                            .depth
                            .checked_sub(1)
                            .ok_or("a closing bracket with nothing open")?;
                        if self.depth == 0 {
                            let value = serde_json::from_slice(&self.buffer[start..=i])
                                .map_err(|e| format!("a message that is not JSON: {e}"))?;
                            out.push(value);
                            start = i + 1;
                        }
                    }
                    b' ' | b'\n' | b'\r' | b'\t' if self.depth == 0 => start = i + 1,
                    _ if self.depth == 0 => {
                        return Err(format!("unexpected byte {b:#04x} between messages"))
                    }
                    _ => {}
                }
            }
            i += 1;
        }
        self.buffer.drain(..start);
        self.scanned = self.buffer.len();
        if self.buffer.len() > MAX_MESSAGE {
            return Err(format!("a message longer than {MAX_MESSAGE} bytes"));
        }
        Ok(out)
    }
}

/// The monitored rows of Bridge, Port and Interface, by table and UUID.
#[derive(Debug, Default, Clone)]
pub struct Replica {
    tables: BTreeMap<String, BTreeMap<String, Map<String, Value>>>,
}

impl Replica {
    /// Applies a `<table-updates>` object: `new` replaces a row (a monitor
    /// sends every monitored column of it), no `new` deletes it. Tables
    /// and columns not monitored are left out.
    pub fn apply(&mut self, updates: &Value) {
        let Some(updates) = updates.as_object() else {
            return;
        };
        for (table, rows) in updates {
            let Some((_, columns)) = COLUMNS.iter().find(|(t, _)| t == table) else {
                warn!("OVSDB update for table {table}, which is not monitored; left out");
                continue;
            };
            let replica = self.tables.entry(table.clone()).or_default();
            for (uuid, update) in rows.as_object().into_iter().flatten() {
                match update.get("new").and_then(Value::as_object) {
                    Some(new) => {
                        let row = new
                            .iter()
                            .filter(|(c, _)| columns.contains(&c.as_str()))
                            .map(|(c, v)| (c.clone(), v.clone()))
                            .collect();
                        replica.insert(uuid.clone(), row);
                    }
                    None => {
                        replica.remove(uuid);
                    }
                }
            }
        }
    }

    fn rows(&self, table: &str) -> impl Iterator<Item = (&String, &Map<String, Value>)> {
        self.tables.get(table).into_iter().flatten()
    }

    fn row(&self, table: &str, uuid: &str) -> Option<&Map<String, Value>> {
        self.tables.get(table).and_then(|t| t.get(uuid))
    }

    /// Each bridge's and port's state.
    pub fn states(&self) -> Result<BTreeMap<ElementId, State>, HostError> {
        let mut states = BTreeMap::new();
        for (_, bridge) in self.rows("Bridge") {
            let name = text(bridge.get("name"));
            let mut ports = Vec::new();
            for port_uuid in uuids(bridge.get("ports")) {
                let Some(port) = self.row("Port", &port_uuid) else {
                    continue;
                };
                let port_name = text(port.get("name"));
                ports.push(port_name.clone());
                let mut interfaces: Vec<Value> = uuids(port.get("interfaces"))
                    .iter()
                    .filter_map(|u| self.row("Interface", u))
                    .map(|i| {
                        json!({
                            "name": text(i.get("name")),
                            "type": text(i.get("type")),
                            "options": map(i.get("options")),
                            "external_ids": map(i.get("external_ids")),
                        })
                    })
                    .collect();
                interfaces.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
                let mut trunks: Vec<i64> = set(port.get("trunks"))
                    .iter()
                    .filter_map(Value::as_i64)
                    .collect();
                trunks.sort_unstable();
                let state = json!({
                    "tag": set(port.get("tag")).first().cloned().unwrap_or(Value::Null),
                    "trunks": trunks,
                    "vlan_mode": set(port.get("vlan_mode")).first().cloned().unwrap_or(Value::Null),
                    "external_ids": map(port.get("external_ids")),
                    "interfaces": interfaces,
                });
                states.insert(
                    element(&format!("{PORT_KIND}:{name}/{port_name}"))?,
                    object(state),
                );
            }
            ports.sort();
            let state = json!({
                "ports": ports,
                "fail_mode": set(bridge.get("fail_mode")).first().cloned().unwrap_or(Value::Null),
                "external_ids": map(bridge.get("external_ids")),
            });
            states.insert(element(&format!("{BRIDGE_KIND}:{name}"))?, object(state));
        }
        Ok(states)
    }
}

fn element(id: &str) -> Result<ElementId, HostError> {
    ElementId::parse_owned(id.to_owned()).map_err(|source| HostError::BadElement {
        path: id.into(),
        source,
    })
}

fn object(value: Value) -> State {
    match value {
        Value::Object(map) => map,
        _ => State::new(),
    }
}

fn text(value: Option<&Value>) -> String {
    value.and_then(Value::as_str).unwrap_or_default().to_owned()
}

/// An OVSDB `<set>`: `["set", [atoms]]` or a single atom.
fn set(value: Option<&Value>) -> Vec<Value> {
    match value {
        Some(Value::Array(pair)) if pair.first() == Some(&json!("set")) => pair
            .get(1)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        Some(atom) => vec![atom.clone()],
        None => Vec::new(),
    }
}

/// The UUIDs of a set of `["uuid", "…"]` atoms.
fn uuids(value: Option<&Value>) -> Vec<String> {
    set(value)
        .iter()
        .filter_map(|atom| match atom.as_array().map(Vec::as_slice) {
            Some([kind, Value::String(uuid)]) if kind == "uuid" => Some(uuid.clone()),
            _ => None,
        })
        .collect()
}

/// An OVSDB `<map>` of strings, as a JSON object (sorted by key).
fn map(value: Option<&Value>) -> Value {
    let mut out = Map::new();
    if let Some(Value::Array(pair)) = value {
        if pair.first() == Some(&json!("map")) {
            for kv in pair.get(1).and_then(Value::as_array).into_iter().flatten() {
                if let Some([Value::String(k), v]) = kv.as_array().map(Vec::as_slice) {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_replica_derives_bridges_and_ports_and_forgets_deleted_rows() {
        let mut replica = Replica::default();
        replica.apply(&json!({
            "Bridge": {"b1": {"new": {"name": "br0", "ports": ["set", [["uuid", "p1"], ["uuid", "p2"]]],
                "fail_mode": ["set", []], "external_ids": ["map", [["site", "lab"]]]}}},
            "Port": {
                "p1": {"new": {"name": "vnet3", "interfaces": ["uuid", "i1"], "tag": 10,
                    "trunks": ["set", [30, 20]], "vlan_mode": ["set", []],
                    "external_ids": ["map", [["vm-id", "42"]]]}},
                "p2": {"new": {"name": "br0", "interfaces": ["uuid", "i2"], "tag": ["set", []],
                    "trunks": ["set", []], "vlan_mode": ["set", []], "external_ids": ["map", []]}}},
            "Interface": {
                "i1": {"new": {"name": "vnet3", "type": "", "options": ["map", []],
                    "external_ids": ["map", [["iface-id", "abc"]]]}},
                "i2": {"new": {"name": "br0", "type": "internal", "options": ["map", []],
                    "external_ids": ["map", []]}}},
            "Mirror": {"m1": {"new": {"name": "x"}}}
        }));
        let states = replica.states().unwrap();
        let port = &states[&ElementId::parse("ovs-port:br0/vnet3").unwrap()];
        assert_eq!(port["tag"], 10);
        assert_eq!(port["trunks"], json!([20, 30]));
        assert_eq!(port["external_ids"], json!({"vm-id": "42"}));
        assert_eq!(
            port["interfaces"][0]["external_ids"],
            json!({"iface-id": "abc"})
        );
        let bridge = &states[&ElementId::parse("ovs-bridge:br0").unwrap()];
        assert_eq!(bridge["ports"], json!(["br0", "vnet3"]));
        assert_eq!(bridge["fail_mode"], Value::Null);

        replica.apply(&json!({"Port": {"p1": {"old": {"name": "vnet3"}}},
            "Bridge": {"b1": {"new": {"name": "br0", "ports": ["uuid", "p2"],
                "fail_mode": "secure", "external_ids": ["map", []]}}}}));
        let states = replica.states().unwrap();
        assert!(!states.contains_key(&ElementId::parse("ovs-port:br0/vnet3").unwrap()));
        let bridge = &states[&ElementId::parse("ovs-bridge:br0").unwrap()];
        assert_eq!(bridge["ports"], json!(["br0"]));
        assert_eq!(bridge["fail_mode"], "secure");
    }

    #[test]
    fn the_framer_names_garbage() {
        let mut framer = Framer::default();
        assert!(framer.push(b"{\"a\":1} x").is_err());
        let mut framer = Framer::default();
        assert!(framer.push(b"]").is_err());
    }

    proptest! {
        /// However the stream is cut, the framer yields the messages sent,
        /// in order, braces inside strings included.
        #[test]
        fn the_framer_yields_every_message_however_the_stream_is_cut(
            texts in proptest::collection::vec("[a-z{}\\[\\]\"\\\\ ]{0,12}", 1..6),
            cuts in proptest::collection::vec(0usize..200, 0..8),
        ) {
            let messages: Vec<Value> = texts
                .iter()
                .enumerate()
                .map(|(i, t)| json!({"id": i, "params": [t, {"k": t}]}))
                .collect();
            let stream: Vec<u8> = messages
                .iter()
                .map(|m| m.to_string())
                .collect::<Vec<_>>()
                .join("\n")
                .into_bytes();
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
            points.sort_unstable();
            let mut framer = Framer::default();
            let mut out = Vec::new();
            let mut from = 0;
            for p in points.into_iter().chain([stream.len()]) {
                out.extend(framer.push(&stream[from..p]).unwrap());
                from = p;
            }
            prop_assert_eq!(out, messages);
        }
    }
}
