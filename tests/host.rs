//! The host sources against real files, a real network namespace's
//! sysctls, a dpkg status file and unit directories: watch (catch-up and
//! live), drift, restore, secrets, attribution.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{fschain, scratch, wait_for};
use serde_json::Value;

/// A chain `host1` at `dir/root`, a tree `dir/etc` and a sources file
/// watching it (plus `extra` TOML).
fn setup(dir: &Path, extra: &str) -> (String, String, String) {
    let root = dir.join("root").display().to_string();
    let etc = dir.join("etc");
    std::fs::create_dir_all(etc.join("ssh")).unwrap();
    std::fs::write(etc.join("app.conf"), "port = 80\n").unwrap();
    std::fs::write(
        etc.join("ssh/ssh_host_ed25519_key"),
        "PRIVATE-KEY-BYTES-7f3a\n",
    )
    .unwrap();
    fschain(&["init", "--root", &root, "--chain", "host1"]).ok();
    let sources = dir.join("sources.toml");
    std::fs::write(
        &sources,
        format!(
            "coalesce = \"20ms\"\n[files]\npaths = [\"{}\"]\nredact = [\"**/ssh_host_*_key\"]\n{extra}",
            etc.display()
        ),
    )
    .unwrap();
    (
        root,
        etc.display().to_string(),
        sources.display().to_string(),
    )
}

/// `fschain watch` (50 ms blocks) on what `setup` made, once its
/// catch-up block is sealed. Its stderr is piped: read it only after it
/// exits.
fn start_watch(root: &str, etc: &str, sources: &str) -> std::process::Child {
    let watch = Command::new(env!("CARGO_BIN_EXE_fschain"))
        .args([
            "watch",
            "--root",
            root,
            "--sources",
            sources,
            "--block-interval",
            "50",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let conf = format!("file:{etc}/app.conf");
    wait_for("the catch-up block", Duration::from_secs(20), || {
        history(root, &conf).len() == 1
    });
    watch
}

/// A network namespace made for one test, deleted when dropped.
struct Netns(String);

impl Netns {
    fn add(prefix: &str) -> Self {
        let name = format!("{prefix}{}", std::process::id() % 100_000);
        assert!(Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success());
        Netns(name)
    }

    /// Runs `ip -n NS ARGS`, which must succeed.
    fn ip(&self, args: &str) {
        let status = Command::new("ip")
            .args(["-n", &self.0])
            .args(args.split_whitespace())
            .status()
            .unwrap();
        assert!(status.success(), "ip -n {} {args}", self.0);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn history(root: &str, element: &str) -> Vec<Value> {
    let run = fschain(&["history", "--root", root, element, "--json"]);
    if !run.output.status.success() {
        return Vec::new();
    }
    run.json()["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|e| e["event"]["op"].clone())
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every file under `dir` (snapshots included), read raw.
fn any_file_contains(dir: &Path, needle: &[u8]) -> Option<String> {
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() && contains(&std::fs::read(&path).unwrap_or_default(), needle)
            {
                return Some(path.display().to_string());
            }
        }
    }
    None
}

#[test]
fn catch_up_drift_restore_and_a_secret_that_never_leaves() {
    let Some(s) = scratch("host-drift") else {
        return;
    };
    let (root, etc, sources) = setup(&s.dir, "");
    let src = ["--sources", sources.as_str()];
    let root_args = ["--root", root.as_str()];
    let args = |cmd: &'static str| -> Vec<&str> { [&[cmd][..], &root_args, &src].concat() };
    fschain(&[&args("watch")[..], &["--once"]].concat()).ok();
    let conf = format!("file:{etc}/app.conf");
    let ops = history(&root, &conf);
    assert_eq!(ops.len(), 1);
    assert_eq!(
        ops[0]["reason"],
        "found at start of watch: changed while nobody watched"
    );
    assert_eq!(ops[0]["state"]["content"], "port = 80\n");
    fschain(&args("drift")).code_is(0);

    // An edit with sed -i (write a temporary file, rename it over) and a chmod.
    let sed = Command::new("sed")
        .args(["-i", "s/80/8080/", &format!("{etc}/app.conf")])
        .status()
        .unwrap();
    assert!(sed.success());
    std::fs::write(format!("{etc}/new.conf"), "x\n").unwrap();
    let drift = fschain(&[&args("drift")[..], &["--json"]].concat())
        .code_is(1)
        .json();
    let changes: Vec<(String, String)> = drift["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["element"].as_str().unwrap().to_owned(),
                c["change"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            (conf.clone(), "~".to_owned()),
            (format!("file:{etc}/new.conf"), "+".to_owned())
        ]
    );
    assert!(fschain(&args("drift"))
        .stdout()
        .contains("(content, sha256, size)"));

    // Restore the head's state: written back, recorded, in sync again.
    fschain(&[&args("restore")[..], &[conf.as_str(), "--dry-run"]].concat()).ok();
    assert_eq!(
        std::fs::read_to_string(format!("{etc}/app.conf")).unwrap(),
        "port = 8080\n"
    );
    fschain(&[&args("restore")[..], &[conf.as_str()]].concat()).ok();
    assert_eq!(
        std::fs::read_to_string(format!("{etc}/app.conf")).unwrap(),
        "port = 80\n"
    );
    let last = history(&root, &conf).pop().unwrap();
    assert!(
        last["reason"]
            .as_str()
            .unwrap()
            .starts_with("restored from block 1 "),
        "{last}"
    );
    std::fs::remove_file(format!("{etc}/new.conf")).unwrap();
    fschain(&args("drift")).code_is(0);

    // A secret: recorded by hash; its bytes are nowhere in the root, and
    // restoring it is refused by name, with nothing written.
    let key = format!("file:{etc}/ssh/ssh_host_ed25519_key");
    let state = &history(&root, &key)[0]["state"];
    assert_eq!(state["size"], 23);
    assert!(state.get("content").is_none());
    assert_eq!(
        any_file_contains(&s.dir.join("root"), b"PRIVATE-KEY-BYTES-7f3a"),
        None
    );
    std::fs::write(format!("{etc}/ssh/ssh_host_ed25519_key"), "other\n").unwrap();
    let refused =
        fschain(&[&args("restore")[..], &[conf.as_str(), key.as_str()]].concat()).code_is(2);
    assert!(
        refused
            .stderr()
            .contains(&format!("cannot restore {key}: it is a secret")),
        "{}",
        refused.stderr()
    );
    fschain(&["verify", "--root", &root]).ok();

    // Bad input is named: a sources file with an unknown key.
    std::fs::write(&sources, "[files]\npath = [\"/etc\"]\n").unwrap();
    let bad = fschain(&args("drift")).code_is(2);
    assert!(
        bad.stderr().contains("unknown field `path`"),
        "{}",
        bad.stderr()
    );
}

#[test]
fn a_live_watch_records_edits_names_the_writer_and_refuses_a_second_writer() {
    let Some(s) = scratch("host-watch") else {
        return;
    };
    let (root, etc, sources) = setup(&s.dir, "");
    let mut watch = start_watch(&root, &etc, &sources);
    let conf = format!("file:{etc}/app.conf");
    let second = fschain(&["watch", "--root", &root, "--sources", &sources, "--once"]).code_is(2);
    assert!(
        second.stderr().contains("one root has one writer"),
        "{}",
        second.stderr()
    );

    // An editor's save (write a temporary file, rename it over), a burst
    // of writes to one file, a new directory with a file, a chmod.
    std::fs::write(format!("{etc}/.app.conf.tmp"), "port = 81\n").unwrap();
    std::fs::rename(format!("{etc}/.app.conf.tmp"), format!("{etc}/app.conf")).unwrap();
    for i in 0..50 {
        std::fs::write(format!("{etc}/burst"), format!("{i}\n")).unwrap();
    }
    std::fs::create_dir(format!("{etc}/conf.d")).unwrap();
    std::fs::write(format!("{etc}/conf.d/one"), "1\n").unwrap();
    // A known process writes and stays alive while it is read.
    let py = Command::new("python3")
        .args([
            "-c",
            &format!("import time; open('{etc}/by-python','w').write('p\\n'); time.sleep(3)"),
        ])
        .spawn()
        .unwrap();
    let by_python = format!("file:{etc}/by-python");
    wait_for("the edits to be recorded", Duration::from_secs(20), || {
        history(&root, &conf).len() == 2
            && history(&root, &format!("file:{etc}/conf.d/one")).len() == 1
            && history(&root, &by_python).len() == 1
            && history(&root, &format!("file:{etc}/burst"))
                .last()
                .is_some_and(|op| op["state"]["content"] == "49\n")
    });
    assert_eq!(history(&root, &conf)[1]["state"]["content"], "port = 81\n");
    assert!(
        history(&root, &format!("file:{etc}/.app.conf.tmp")).is_empty(),
        "the editor's temporary file is not an element"
    );
    let burst = history(&root, &format!("file:{etc}/burst")).len();
    assert!(burst < 50, "50 writes in a burst made {burst} operations");
    let actor = history(&root, &by_python)[0]["actor"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(actor.starts_with("python3 (pid "), "{actor}");
    drop(py);

    // A deleted watched directory takes its files with it.
    std::fs::remove_dir_all(format!("{etc}/conf.d")).unwrap();
    wait_for("the deletion", Duration::from_secs(20), || {
        history(&root, &format!("file:{etc}/conf.d/one"))
            .last()
            .is_some_and(|op| op["action"] == "delete")
    });
    let _ = Command::new("kill").arg(watch.id().to_string()).status();
    assert!(watch.wait().unwrap().success());
    fschain(&["drift", "--root", &root, "--sources", &sources]).code_is(0);
    fschain(&["verify", "--root", &root]).ok();
}

#[test]
fn sysctls_of_a_network_namespace_packages_and_units() {
    let Some(s) = scratch("host-sysctl") else {
        return;
    };
    let status = s.dir.join("status");
    std::fs::write(
        &status,
        "Package: openssh-server\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1:9.2p1-2\n\n",
    )
    .unwrap();
    let units = s.dir.join("system");
    std::fs::create_dir_all(units.join("multi-user.target.wants")).unwrap();
    let extra = format!(
        "[sysctl]\nkeys = [\"net.ipv4.ip_forward\", \"net.ipv4.conf.*.rp_filter\", \"net.nope\"]\n[packages]\nstatus_file = \"{}\"\n[services]\nunit_dirs = [\"{}\"]\n",
        status.display(),
        units.display()
    );
    let (root, _etc, sources) = setup(&s.dir, &extra);
    let ns = Netns::add("fsh");
    let in_ns = |args: &[&str]| {
        let mut all = vec!["netns", "exec", &ns.0, env!("CARGO_BIN_EXE_fschain")];
        all.extend(args);
        Command::new("ip").args(&all).output().unwrap()
    };
    let once = in_ns(&["watch", "--root", &root, "--sources", &sources, "--once"]);
    assert!(
        once.status.success(),
        "{}",
        String::from_utf8_lossy(&once.stderr)
    );
    assert!(
        String::from_utf8_lossy(&once.stderr).contains("sysctl net.nope: no such key"),
        "a missing key is named and the rest goes on"
    );
    assert_eq!(
        history(&root, "sysctl:net.ipv4.ip_forward")[0]["state"]["value"],
        "0"
    );
    assert!(!history(&root, "sysctl:net.ipv4.conf.lo.rp_filter").is_empty());
    assert_eq!(
        history(&root, "package:openssh-server")[0]["state"]["version"],
        "1:9.2p1-2"
    );

    // Changed inside the namespace only; packages upgraded; a unit enabled.
    let set = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ])
        .status()
        .unwrap();
    assert!(set.success());
    std::fs::write(
        &status,
        "Package: openssh-server\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1:9.2p1-3\n\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "/lib/systemd/system/nginx.service",
        units.join("multi-user.target.wants/nginx.service"),
    )
    .unwrap();
    let drift = in_ns(&["drift", "--root", &root, "--sources", &sources]);
    assert_eq!(drift.status.code(), Some(1));
    let text = String::from_utf8_lossy(&drift.stdout).into_owned();
    for line in [
        "~ sysctl:net.ipv4.ip_forward (value)",
        "~ package:openssh-server (version)",
        "+ service:nginx.service",
    ] {
        assert!(text.contains(line), "{line:?} not in:\n{text}");
    }
    // Outside the namespace the host's own value is read: another state.
    let restore = in_ns(&[
        "restore",
        "--root",
        &root,
        "--sources",
        &sources,
        "sysctl:net.ipv4.ip_forward",
    ]);
    assert!(
        restore.status.success(),
        "{}",
        String::from_utf8_lossy(&restore.stderr)
    );
    let value = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            "sysctl",
            "-n",
            "net.ipv4.ip_forward",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&value.stdout).trim(), "0");
    let refused = in_ns(&[
        "restore",
        "--root",
        &root,
        "--sources",
        &sources,
        "package:openssh-server",
    ]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("cannot restore package:openssh-server")
    );
}

#[test]
fn interfaces_of_a_network_namespace_followed_over_netlink() {
    let Some(s) = scratch("host-iface") else {
        return;
    };
    let ns = Netns::add("fsi");
    ns.ip("link add v0 type veth peer name v1");
    ns.ip("link add br0 type bridge");
    ns.ip("link set v1 master br0");
    // A VLAN interface is covered by the unit test: this kernel has no
    // 802.1Q (CONFIG_VLAN_8021Q); a macvlan is stacked the same way.
    ns.ip("link add mv0 link v0 type macvlan mode bridge");
    ns.ip("addr add 10.9.0.1/24 dev v0");
    ns.ip("link set v0 up");
    let (root, etc, sources) = setup(&s.dir, &format!("[interfaces]\nnetns = \"{}\"\n", ns.0));
    let mut watch = start_watch(&root, &etc, &sources);
    let state = |element: &str| {
        history(&root, element)
            .last()
            .map_or(Value::Null, |op| op["state"].clone())
    };
    let v0 = state("iface:v0");
    assert_eq!(v0["kind"], "veth");
    assert_eq!(v0["admin_up"], true);
    assert_eq!(v0["addresses"], serde_json::json!(["10.9.0.1/24"]));
    assert_eq!(state("iface:v1")["master"], "br0");
    assert_eq!(state("iface:br0")["kind"], "bridge");
    let macvlan = state("iface:mv0");
    assert_eq!(macvlan["kind"], "macvlan");
    assert_eq!(macvlan["parent"], "v0");
    assert!(
        v0.get("parent").is_none(),
        "a veth's peer is not its parent"
    );
    assert_eq!(state("iface:lo")["kind"], "loopback");

    // Changed with the real `ip` tool while the watch follows.
    ns.ip("link set v0 mtu 1400");
    ns.ip("addr add 10.9.1.1/24 dev br0");
    ns.ip("link add br1 type bridge");
    ns.ip("link del mv0");
    wait_for("the live changes", Duration::from_secs(20), || {
        state("iface:v0")["mtu"] == 1400
            && state("iface:br0")["addresses"] == serde_json::json!(["10.9.1.1/24"])
            && state("iface:br1")["kind"] == "bridge"
            && history(&root, "iface:mv0")
                .last()
                .is_some_and(|op| op["action"] == "delete")
    });
    let last = history(&root, "iface:v0").last().cloned().unwrap();
    assert_eq!(last["reason"], "observed by fschain watch (interfaces)");
    let _ = Command::new("kill").arg(watch.id().to_string()).status();
    assert!(watch.wait().unwrap().success());
    fschain(&["drift", "--root", &root, "--sources", &sources]).code_is(0);
    ns.ip("link set v0 mtu 1300");
    let drift = fschain(&["drift", "--root", &root, "--sources", &sources]).code_is(1);
    assert!(
        drift.stdout().contains("~ iface:v0 (mtu)"),
        "{}",
        drift.stdout()
    );

    // Restored over netlink: the recorded mtu back, the hand-made address
    // gone; a key fschain does not write is refused by name.
    ns.ip("addr add 10.9.5.5/24 dev v0");
    fschain(&[
        "restore",
        "--root",
        &root,
        "--sources",
        &sources,
        "iface:v0",
    ])
    .ok();
    let shown = Command::new("ip")
        .args(["-n", &ns.0, "-j", "addr", "show", "dev", "v0"])
        .output()
        .unwrap();
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown[0]["mtu"], 1400);
    let addresses: Vec<&str> = shown[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["family"] == "inet")
        .map(|a| a["local"].as_str().unwrap())
        .collect();
    assert_eq!(addresses, ["10.9.0.1"]);
    fschain(&["drift", "--root", &root, "--sources", &sources]).code_is(0);
    ns.ip("link set v1 nomaster");
    let refused = fschain(&[
        "restore",
        "--root",
        &root,
        "--sources",
        &sources,
        "iface:v1",
    ])
    .code_is(2);
    assert!(
        refused.stderr().contains("its master differs"),
        "{}",
        refused.stderr()
    );

    // A namespace that does not exist is named; the files are still read.
    let (root2, _, sources2) = setup(&s.dir.join("two"), "[interfaces]\nnetns = \"fsi-none\"\n");
    let once = fschain(&["watch", "--root", &root2, "--sources", &sources2, "--once"]).ok();
    assert!(
        once.stderr()
            .contains("network namespace \"fsi-none\" does not exist"),
        "{}",
        once.stderr()
    );
    assert_eq!(
        history(
            &root2,
            &format!("file:{}/two/etc/app.conf", s.dir.display())
        )
        .len(),
        1
    );
    // --netns names the namespace on the command line, over the file's.
    let drift = fschain(&[
        "drift",
        "--root",
        &root2,
        "--sources",
        &sources2,
        "--netns",
        &ns.0,
    ])
    .code_is(1);
    assert!(drift.stdout().contains("+ iface:v0"), "{}", drift.stdout());
}

/// A real ovsdb-server on a fresh Open_vSwitch database in `dir`,
/// stopped when dropped.
struct Ovsdb {
    dir: std::path::PathBuf,
    server: Option<std::process::Child>,
}

impl Ovsdb {
    fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let created = Command::new("ovsdb-tool")
            .arg("create")
            .arg(dir.join("conf.db"))
            .arg("/usr/share/openvswitch/vswitch.ovsschema")
            .status()
            .expect("ovsdb-tool (Debian's openvswitch-switch) is needed");
        assert!(created.success());
        let mut db = Ovsdb {
            dir: dir.to_owned(),
            server: None,
        };
        db.run();
        db.vsctl(&["init"]);
        db
    }

    fn socket(&self) -> String {
        self.dir.join("db.sock").display().to_string()
    }

    fn run(&mut self) {
        let server = Command::new("ovsdb-server")
            .arg(self.dir.join("conf.db"))
            .arg(format!("--remote=punix:{}", self.socket()))
            .arg(format!("--unixctl={}", self.dir.join("ctl").display()))
            .arg("--no-chdir")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.server = Some(server);
        let socket = self.socket();
        wait_for("ovsdb-server's socket", Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
    }

    fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = Command::new("kill").arg(server.id().to_string()).status();
            let _ = server.wait();
        }
    }

    /// `ovs-vsctl --no-wait` (no vswitchd runs) on this database.
    fn vsctl(&self, args: &[&str]) {
        let status = Command::new("ovs-vsctl")
            .arg(format!("--db=unix:{}", self.socket()))
            .arg("--no-wait")
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "ovs-vsctl {args:?}");
    }
}

impl Drop for Ovsdb {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn open_vswitch_followed_over_ovsdb_across_a_server_restart() {
    let Some(s) = scratch("host-ovs") else {
        return;
    };
    let mut db = Ovsdb::start(&s.dir.join("ovs"));
    db.vsctl(&["add-br", "br0"]);
    db.vsctl(&[
        "add-port",
        "br0",
        "vnet3",
        "tag=10",
        "--",
        "set",
        "Port",
        "vnet3",
        "external_ids:vm-id=vm-42",
        "--",
        "set",
        "Interface",
        "vnet3",
        "external_ids:iface-id=abc",
    ]);
    let extra = format!("[ovs]\ndb = \"unix:{}\"\n", db.socket());
    let (root, etc, sources) = setup(&s.dir, &extra);
    let mut watch = start_watch(&root, &etc, &sources);
    let state = |element: &str| {
        history(&root, element)
            .last()
            .map_or(Value::Null, |op| op["state"].clone())
    };
    let vnet3 = state("ovs-port:br0/vnet3");
    assert_eq!(vnet3["tag"], 10);
    assert_eq!(vnet3["external_ids"]["vm-id"], "vm-42");
    assert_eq!(vnet3["interfaces"][0]["external_ids"]["iface-id"], "abc");
    assert_eq!(
        state("ovs-bridge:br0")["ports"],
        serde_json::json!(["br0", "vnet3"])
    );

    // Changed with ovs-vsctl while the watch follows.
    db.vsctl(&["set", "Port", "vnet3", "tag=20"]);
    db.vsctl(&["add-port", "br0", "vnet4"]);
    wait_for("the tag and the new port", Duration::from_secs(20), || {
        state("ovs-port:br0/vnet3")["tag"] == 20
            && state("ovs-port:br0/vnet4")["tag"].is_null()
            && !history(&root, "ovs-port:br0/vnet4").is_empty()
    });
    db.vsctl(&["del-port", "br0", "vnet4"]);
    wait_for("the deleted port", Duration::from_secs(20), || {
        history(&root, "ovs-port:br0/vnet4")
            .last()
            .is_some_and(|op| op["action"] == "delete")
    });
    let last = history(&root, "ovs-port:br0/vnet3")
        .last()
        .cloned()
        .unwrap();
    assert_eq!(last["reason"], "observed by fschain watch (ovs)");

    // ovsdb-server restarts: the watch resynchronises, records nothing
    // twice, and goes on following.
    let before = history(&root, "ovs-port:br0/vnet3").len();
    db.stop();
    db.run();
    db.vsctl(&["add-port", "br0", "vnet5"]);
    wait_for(
        "a port added after the restart",
        Duration::from_secs(20),
        || !history(&root, "ovs-port:br0/vnet5").is_empty(),
    );
    assert_eq!(history(&root, "ovs-port:br0/vnet3").len(), before);
    let _ = Command::new("kill").arg(watch.id().to_string()).status();
    assert!(watch.wait().unwrap().success());
    fschain(&["drift", "--root", &root, "--sources", &sources]).code_is(0);

    // Restored with one OVSDB transaction each: a port changed by hand,
    // then a port deleted by hand, made again with its tag and ids.
    db.vsctl(&["set", "Port", "vnet3", "tag=99", "external_ids:vm-id=other"]);
    let restore = |element: &str| {
        fschain(&["restore", "--root", &root, "--sources", &sources, element]).ok();
    };
    restore("ovs-port:br0/vnet3");
    let get = |what: &[&str]| {
        let out = Command::new("ovs-vsctl")
            .arg(format!("--db=unix:{}", db.socket()))
            .args(what)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(get(&["get", "Port", "vnet3", "tag"]), "20");
    assert_eq!(
        get(&["get", "Port", "vnet3", "external_ids:vm-id"]),
        "vm-42"
    );
    db.vsctl(&["del-port", "br0", "vnet3"]);
    restore("ovs-port:br0/vnet3");
    assert_eq!(get(&["get", "Port", "vnet3", "tag"]), "20");
    assert_eq!(
        get(&["get", "Interface", "vnet3", "external_ids:iface-id"]),
        "abc"
    );
    assert_eq!(get(&["list-ports", "br0"]), "vnet3\nvnet5");
    fschain(&["drift", "--root", &root, "--sources", &sources]).code_is(0);
    fschain(&["verify", "--root", &root]).ok();
}

#[test]
fn an_overflowing_inotify_queue_is_answered_by_a_rescan_not_a_loss() {
    let Some(s) = scratch("host-overflow") else {
        return;
    };
    let (root, etc, sources) = setup(&s.dir, "");
    // The queue's size is fixed when the watch starts: a tiny one for it,
    // the machine's own back once it is made.
    let knob = "/proc/sys/fs/inotify/max_queued_events";
    let saved = std::fs::read_to_string(knob).unwrap();
    std::fs::write(knob, "16").unwrap();
    let watch = start_watch(&root, &etc, &sources);
    std::fs::write(knob, saved).unwrap();
    for i in 0..300 {
        std::fs::write(format!("{etc}/f{i}"), format!("{i}\n")).unwrap();
    }
    wait_for(
        "all 300 files to be recorded",
        Duration::from_secs(30),
        || fschain(&["drift", "--root", &root, "--sources", &sources]).code() == 0,
    );
    let _ = Command::new("kill").arg(watch.id().to_string()).status();
    let out = watch.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("overflowed"), "{log}");
    assert!(!log.contains(" 0 rescans"), "{log}");
    for i in [0, 150, 299] {
        assert_eq!(history(&root, &format!("file:{etc}/f{i}")).len(), 1);
    }
}
