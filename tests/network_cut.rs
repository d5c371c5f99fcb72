//! Fault row 8: a site cut off from the brokers for 60 s. The site runs in
//! a network namespace of its own, joined to the host by a veth pair, and
//! reaches a broker of this test's own that listens on the host's end of
//! the pair (scripts/kafka.sh up --host). Setting the namespace's end of
//! the link down cuts it off; up again, the site resumes by itself.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{block_count, block_hashes, fschain, fschain_with_input, sample_ops, scratch, unique};

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace and the veth pair that joins it to the host,
/// removed even when the test fails.
struct Namespace {
    name: String,
    host_end: String,
    inner_end: String,
    host_address: String,
}

impl Namespace {
    fn new(tag: u32) -> Namespace {
        let net = format!("10.{}.{}", 200 + tag % 50, tag % 250);
        let ns = Namespace {
            name: format!("fsc{tag}"),
            host_end: format!("vh{tag}"),
            inner_end: format!("vn{tag}"),
            host_address: format!("{net}.1"),
        };
        let inner_address = format!("{net}.2");
        ip(&["netns", "add", &ns.name]);
        ip(&[
            "link",
            "add",
            &ns.host_end,
            "type",
            "veth",
            "peer",
            "name",
            &ns.inner_end,
        ]);
        ip(&["link", "set", &ns.inner_end, "netns", &ns.name]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_address),
            "dev",
            &ns.host_end,
        ]);
        ip(&["link", "set", &ns.host_end, "up"]);
        ns.exec_ip(&[
            "addr",
            "add",
            &format!("{inner_address}/30"),
            "dev",
            &ns.inner_end,
        ]);
        ns.exec_ip(&["link", "set", &ns.inner_end, "up"]);
        ns.exec_ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn exec_ip(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.name, "ip"];
        all.extend(args);
        ip(&all);
    }

    fn link(&self, state: &str) {
        self.exec_ip(&["link", "set", &self.inner_end, state]);
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_end])
            .stderr(Stdio::null())
            .status();
    }
}

/// A broker of this test's own, on the host's end of the veth pair.
struct Broker {
    port: String,
}

impl Drop for Broker {
    fn drop(&mut self) {
        common::kafka_script("down", &self.port, &[]);
    }
}

#[test]
fn a_site_cut_off_for_sixty_seconds_resumes_by_itself() {
    if common::broker("network-cut").is_none() {
        return;
    }
    let Some(s) = scratch("network-cut") else {
        return;
    };
    let ns = Namespace::new(std::process::id() % 10_000);
    let broker = Broker {
        port: "19792".into(),
    };
    let brokers = common::kafka_script("up", &broker.port, &["--host", &ns.host_address]);
    let prefix = unique("cut");
    let kafka = |args: &[&str]| common::with_topics(args, &brokers, &prefix);
    let run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fschain(&args).ok();
    };
    run(kafka(&["topics", "create"]));
    let (producer, key) = common::producer_root(&s.dir);
    let apply = |from: usize, to: usize| {
        fschain_with_input(
            &["apply", "--root", &producer, "--block-ops", "10"],
            Some(common::sample_ops_between(from, to).as_bytes()),
        )
        .ok();
    };
    apply(0, 30);
    run(kafka(&["publish", "--root", &producer]));

    let root = s.dir.join("site").display().to_string();
    let copy = format!("{root}/host1");
    let log = s.dir.join("site.log");
    let mut site_args = vec!["netns".to_owned(), "exec".into(), ns.name.clone()];
    site_args.push(env!("CARGO_BIN_EXE_fschain").into());
    site_args.extend(kafka(&[
        "consume",
        "--site",
        "east",
        "--root",
        &root,
        "--trust",
        &key,
        "--no-index",
    ]));
    let mut site = Command::new("ip")
        .args(&site_args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let holds_all = || block_count(&copy) == block_count(&producer);
    common::wait_for(
        "the site to hold the chain",
        Duration::from_secs(60),
        holds_all,
    );

    ns.link("down");
    apply(30, sample_ops(60).lines().count());
    run(kafka(&["publish", "--root", &producer]));
    std::thread::sleep(Duration::from_secs(60));
    assert!(
        site.try_wait().unwrap().is_none(),
        "the site gave up while cut off"
    );
    assert!(!holds_all(), "the site got blocks while cut off");
    ns.link("up");
    common::wait_for(
        "the site to catch up once reconnected",
        Duration::from_secs(120),
        holds_all,
    );
    let _ = Command::new("kill").arg(site.id().to_string()).status();
    site.wait().unwrap();
    fschain(&["verify", "--root", &copy]).ok();
    assert_eq!(block_hashes(&copy), block_hashes(&producer));
    assert!(
        common::staging_entries(&copy).is_empty(),
        "a partial subvolume was left in the site's chain"
    );
}
