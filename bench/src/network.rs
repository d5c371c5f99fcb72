//! Network source benchmarks, each beside a baseline timed in the same
//! run, in a network namespace and on an ovsdb-server this bench starts:
//!
//! - `ip link set … mtu` → its block sealed locally and verified at a site
//!   through the broker, against `ip monitor` seeing the same change;
//! - 1,000 OVS ports added in one transaction → their block, against
//!   `ovs-vsctl` making the change;
//! - `fschain watch` following 1,000 interfaces and 1,000 ports at rest.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fschain_host::{Sources, SourcesConfig};
use fschain_store::RootLayout;

use crate::host::{at_rest, head_height, with_watch};
use crate::local::{cleanup, ms, new_root, pct, ratio};
use crate::replication::{fschain_exe, terminate, Bin};
use crate::report::{Report, Row};

const COMMAND: &str = "fschain-bench --dir DIR --quick --network-only --brokers LIST";

struct Scale {
    latency_changes: usize,
    ports: usize,
    veth_pairs: usize,
    idle: Duration,
}

pub(crate) fn run(dir: &Path, quick: bool, brokers: &str, report: &mut Report) -> Result<()> {
    let scale = Scale {
        latency_changes: if quick { 40 } else { 200 },
        ports: 1_000,
        veth_pairs: 500,
        idle: Duration::from_secs(if quick { 10 } else { 60 }),
    };
    let work = dir.join(format!("bench-net-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let netns = Netns::add(&format!("fsb{}", std::process::id() % 100_000))?;
    let result = (|| {
        let mut ovsdb = Ovsdb::start(&work.join("ovs"))?;
        let result = run_in(&work, &scale, brokers, &netns, &ovsdb, report);
        ovsdb.stop();
        result
    })();
    drop(netns);
    cleanup(&work);
    result
}

fn run_in(
    work: &Path,
    s: &Scale,
    brokers: &str,
    netns: &Netns,
    ovsdb: &Ovsdb,
    report: &mut Report,
) -> Result<()> {
    report.section(
        &format!(
            "network sources (a network namespace, ovsdb-server {})",
            ovsdb.version()?
        ),
        COMMAND,
    );
    mtu_to_site(work, s, brokers, netns, report)?;
    ports_in_one_transaction(work, s, ovsdb, report)?;
    following_at_rest(work, s, netns, ovsdb, report)
}

fn sources(text: &str) -> Result<Sources> {
    let config = SourcesConfig::parse(text).map_err(|why| anyhow::anyhow!("{why}"))?;
    Ok(Sources::new(&config)?)
}

/// `ip link set v0 mtu …` → the block sealed at the producer and verified
/// at a site, a watch publishing to the broker.
fn mtu_to_site(
    work: &Path,
    s: &Scale,
    brokers: &str,
    netns: &Netns,
    report: &mut Report,
) -> Result<()> {
    netns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"])?;
    let bin = Bin {
        exe: fschain_exe()?,
        brokers: brokers.to_owned(),
        prefix: format!("bench-net-{}", std::process::id()),
    };
    bin.run(&["topics", "create"])?;
    let producer = work.join("producer");
    drop(new_root(&producer, "netlat")?);
    let key = fschain_producer::load_signing_key(&RootLayout::new(&producer))?;
    let key_file = work.join("producer.pub");
    std::fs::write(&key_file, format!("{}\n", key.public()))?;
    let sources_file = work.join("interfaces.toml");
    std::fs::write(
        &sources_file,
        format!(
            "coalesce = \"20ms\"\n[interfaces]\nnetns = \"{}\"\n",
            netns.0
        ),
    )?;
    let (p, site) = (producer.display().to_string(), work.join("site"));
    let mut watch = bin
        .cmd(&[
            "watch",
            "--root",
            &p,
            "--sources",
            &sources_file.display().to_string(),
            "--block-interval",
            "50",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut consumer = bin
        .cmd(&[
            "consume",
            "--site",
            "bench",
            "--root",
            &site.display().to_string(),
            "--trust",
            &key_file.display().to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let measured = (|| -> Result<(Vec<Duration>, Vec<Duration>, Vec<Duration>)> {
        let (local, remote) = (RootLayout::new(&producer), site.join("netlat/blocks"));
        let at_site = |h: u64| remote.join(format!("{h:010}")).exists();
        let wait = |what: &str, limit: Duration, done: &dyn Fn() -> Result<bool>| -> Result<()> {
            let t = Instant::now();
            while !done()? {
                if t.elapsed() > limit {
                    bail!("{what} not within {} s", limit.as_secs());
                }
                std::thread::sleep(Duration::from_micros(500));
            }
            Ok(())
        };
        // The catch-up block, and the consumer group formed.
        wait(
            "the catch-up block at the site",
            Duration::from_secs(120),
            &|| Ok(at_site(1)),
        )?;
        let monitor = IpMonitor::start(netns)?;
        let (mut sealed, mut verified, mut seen) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..s.latency_changes {
            std::thread::sleep(Duration::from_millis(100));
            monitor.drain();
            let height = head_height(&local)?;
            let mtu = if i % 2 == 0 { "1400" } else { "1500" };
            let t = Instant::now();
            netns.ip(&["link", "set", "v0", "mtu", mtu])?;
            let heard = monitor.next(Duration::from_secs(5))?;
            wait("the block", Duration::from_secs(10), &|| {
                Ok(head_height(&local)? > height)
            })?;
            sealed.push(t.elapsed());
            wait("the block at the site", Duration::from_secs(10), &|| {
                Ok(at_site(height + 1))
            })?;
            verified.push(t.elapsed());
            seen.push(heard.saturating_duration_since(t));
        }
        Ok((sealed, verified, seen))
    })();
    terminate(&mut watch);
    terminate(&mut consumer);
    let (mut sealed, mut verified, mut seen) = measured?;
    let p99 = pct(&mut verified, 99);
    report.row(Row {
        what: format!(
            "`ip link set v0 mtu` -> its block sealed / verified at a site through the broker, p50 / p99 ({} changes; 50 ms blocks, coalesce 20 ms)",
            s.latency_changes
        ),
        fschain: format!(
            "sealed {} / {}; at the site {} / {}",
            ms(pct(&mut sealed, 50)),
            ms(pct(&mut sealed, 99)),
            ms(pct(&mut verified, 50)),
            ms(p99)
        ),
        baseline: format!(
            "`ip monitor link` sees the change: {} / {}",
            ms(pct(&mut seen, 50)),
            ms(pct(&mut seen, 99))
        ),
        target: "p99 <= 250 ms at the site, <= 100 ms sealed".into(),
        met: Some(p99 <= Duration::from_millis(250) && pct(&mut sealed, 99) <= Duration::from_millis(100)),
    });
    Ok(())
}

/// 1,000 ports added by one `ovs-vsctl` transaction → one block.
fn ports_in_one_transaction(
    work: &Path,
    s: &Scale,
    ovsdb: &Ovsdb,
    report: &mut Report,
) -> Result<()> {
    ovsdb.vsctl(&["add-br", "br0"])?;
    let sources = sources(&format!(
        "coalesce = \"20ms\"\n[ovs]\ndb = \"unix:{}\"\n",
        ovsdb.socket()
    ))?;
    let (made, recorded, events) = with_watch(&work.join("ovs-root"), &sources, |sealed| {
        let mut args = Vec::new();
        for i in 0..s.ports {
            args.extend([
                "--".to_owned(),
                "add-port".into(),
                "br0".into(),
                format!("vnet{i}"),
            ]);
            args.push(format!("tag={}", 1 + i % 4000));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        while sealed.try_recv().is_ok() {}
        let t = Instant::now();
        ovsdb.vsctl(&args)?;
        let made = t.elapsed();
        let (at, events) = sealed
            .recv_timeout(Duration::from_secs(60))
            .context("no block within 60 s of the transaction")?;
        if let Ok(more) = sealed.recv_timeout(Duration::from_millis(300)) {
            bail!("the transaction made a second block ({} events)", more.1);
        }
        Ok((
            made,
            at.saturating_duration_since(t).saturating_sub(made),
            events,
        ))
    })?;
    let r = ratio(recorded, made);
    report.row(Row {
        what: format!(
            "{} OVS ports added in one transaction -> one block ({events} events: the ports and their bridge)",
            s.ports
        ),
        fschain: format!("recorded {} after the transaction", ms(recorded)),
        baseline: format!("`ovs-vsctl` making the change: {} ({r:.2}x)", ms(made)),
        target: "<= 2x".into(),
        met: Some(r <= 2.0 && events as usize == s.ports + 1),
    });
    Ok(())
}

/// `fschain watch` following 1,000 interfaces and the 1,000 ports at rest.
fn following_at_rest(
    work: &Path,
    s: &Scale,
    netns: &Netns,
    ovsdb: &Ovsdb,
    report: &mut Report,
) -> Result<()> {
    let batch: String = (0..s.veth_pairs)
        .map(|i| format!("link add a{i} type veth peer name b{i}\n"))
        .collect();
    let batch_file = work.join("veths.batch");
    std::fs::write(&batch_file, batch)?;
    netns.ip(&["-batch", &batch_file.display().to_string()])?;
    let root = work.join("rest-root");
    drop(new_root(&root, "bench-rest")?);
    let sources_file = work.join("rest.toml");
    std::fs::write(
        &sources_file,
        format!(
            "[interfaces]\nnetns = \"{}\"\n[ovs]\ndb = \"unix:{}\"\n",
            netns.0,
            ovsdb.socket()
        ),
    )?;
    let mut watch = Command::new(fschain_exe()?)
        .args(["watch", "--root"])
        .arg(&root)
        .arg("--sources")
        .arg(&sources_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let measured = (|| {
        let layout = RootLayout::new(&root);
        let t = Instant::now();
        while head_height(&layout)? < 1 {
            if t.elapsed() > Duration::from_secs(120) || watch.try_wait()?.is_some() {
                bail!("no catch-up block from fschain watch");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        at_rest(watch.id(), s.idle)
    })();
    terminate(&mut watch);
    let rest = measured?;
    let elements = 2 * s.veth_pairs + 1 + s.ports + 1;
    report.row(Row {
        what: format!(
            "fschain watch following {} interfaces and {} OVS ports at rest for {} s ({elements} elements): CPU",
            2 * s.veth_pairs + 1,
            s.ports,
            s.idle.as_secs()
        ),
        fschain: format!("{:.2}% of a core", rest.cpu_percent),
        baseline: "–".into(),
        target: "< 1% of a core".into(),
        met: Some(rest.cpu_percent < 1.0),
    });
    report.row(Row {
        what: "that watch at rest: resident memory".into(),
        fschain: format!("{:.1} MB", rest.rss as f64 / 1e6),
        baseline: format!(
            "its peak, during the catch-up block: {:.1} MB",
            rest.peak as f64 / 1e6
        ),
        target: "< 64 MB".into(),
        met: Some(rest.rss < 64_000_000),
    });
    Ok(())
}

/// A network namespace for the bench, deleted when dropped.
struct Netns(String);

impl Netns {
    fn add(name: &str) -> Result<Self> {
        let status = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .context("running ip (iproute2)")?;
        if !status.success() {
            bail!("ip netns add {name} failed (the network bench needs root)");
        }
        Ok(Netns(name.to_owned()))
    }

    fn ip(&self, args: &[&str]) -> Result<()> {
        let out = Command::new("ip")
            .args(["-n", &self.0])
            .args(args)
            .output()
            .context("running ip")?;
        if !out.status.success() {
            bail!(
                "ip -n {} {}: {}",
                self.0,
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// `ip -n NS monitor link`: when the kernel's notification of a change
/// reaches a plain listener.
struct IpMonitor {
    child: Child,
    lines: mpsc::Receiver<Instant>,
}

impl IpMonitor {
    fn start(netns: &Netns) -> Result<Self> {
        let mut child = Command::new("ip")
            .args(["-n", &netns.0, "monitor", "link"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().context("ip monitor's output")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                if line.is_err() || tx.send(Instant::now()).is_err() {
                    return;
                }
            }
        });
        // `ip monitor` prints nothing until a change: give it time to join.
        std::thread::sleep(Duration::from_millis(200));
        Ok(IpMonitor { child, lines })
    }

    fn drain(&self) {
        while self.lines.try_recv().is_ok() {}
    }

    fn next(&self, limit: Duration) -> Result<Instant> {
        self.lines
            .recv_timeout(limit)
            .context("ip monitor saw no change")
    }
}

impl Drop for IpMonitor {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// An ovsdb-server on a fresh Open_vSwitch database.
struct Ovsdb {
    dir: PathBuf,
    server: Option<Child>,
}

impl Ovsdb {
    fn start(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let created = Command::new("ovsdb-tool")
            .arg("create")
            .arg(dir.join("conf.db"))
            .arg("/usr/share/openvswitch/vswitch.ovsschema")
            .status()
            .context("running ovsdb-tool (Debian's openvswitch-switch)")?;
        if !created.success() {
            bail!("ovsdb-tool create failed");
        }
        let server = Command::new("ovsdb-server")
            .arg(dir.join("conf.db"))
            .arg(format!("--remote=punix:{}", dir.join("db.sock").display()))
            .arg(format!("--unixctl={}", dir.join("ctl").display()))
            .arg("--no-chdir")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting ovsdb-server")?;
        let db = Ovsdb {
            dir: dir.to_owned(),
            server: Some(server),
        };
        let t = Instant::now();
        while std::os::unix::net::UnixStream::connect(db.socket()).is_err() {
            if t.elapsed() > Duration::from_secs(10) {
                bail!("ovsdb-server did not listen within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        db.vsctl(&["init"])?;
        Ok(db)
    }

    fn socket(&self) -> String {
        self.dir.join("db.sock").display().to_string()
    }

    fn version(&self) -> Result<String> {
        let out = Command::new("ovsdb-server").arg("--version").output()?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().last())
            .unwrap_or("?")
            .to_owned())
    }

    fn vsctl(&self, args: &[&str]) -> Result<()> {
        let out = Command::new("ovs-vsctl")
            .arg(format!("--db=unix:{}", self.socket()))
            .arg("--no-wait")
            .args(args)
            .output()
            .context("running ovs-vsctl")?;
        if !out.status.success() {
            bail!(
                "ovs-vsctl failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            terminate(&mut server);
        }
    }
}

impl Drop for Ovsdb {
    fn drop(&mut self) {
        self.stop();
    }
}
