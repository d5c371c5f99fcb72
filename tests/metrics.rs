//! `--metrics-addr` on a running site and a running watch, scraped and
//! parsed by the Prometheus project's own OpenMetrics parser (Python's
//! prometheus_client, Debian's python3-prometheus-client).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{fschain, producer_root, scratch, wait_for, with_topics};

/// A running fschain, killed if the test fails before it stops it.
struct Running(common::KillOnDrop);

impl Running {
    fn spawn(command: &mut Command) -> Self {
        Running(common::KillOnDrop(
            command.stderr(Stdio::null()).spawn().unwrap(),
        ))
    }

    /// SIGTERM, and the clean exit it must lead to.
    fn stop(mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        assert!(self.0.wait().unwrap().success());
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `name{chain}` → value, as the reference parser reads the scrape; empty
/// while nothing listens.
fn scrape(port: u16) -> BTreeMap<String, f64> {
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return BTreeMap::new();
    };
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let body = reply.split_once("\r\n\r\n").unwrap().1.to_owned();
    let mut parser = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sys\n\
             from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse\n\
             for f in parse(sys.stdin.read()):\n\
             \x20   for s in f.samples:\n\
             \x20       print(s.name + '{' + s.labels.get('chain', s.labels.get('source', s.labels.get('reason', ''))) + '}', s.value)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with prometheus_client (python3-prometheus-client)");
    parser
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = parser.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the reference parser refused the scrape: {}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

#[test]
fn a_site_and_a_watch_expose_metrics_that_move_as_blocks_flow() {
    let Some(s) = scratch("metrics") else {
        return;
    };
    let Some(brokers) = common::broker("metrics") else {
        return;
    };
    let prefix = common::unique("metrics");
    let run = |args: &[&str]| {
        let all = with_topics(args, &brokers, &prefix);
        fschain(&all.iter().map(String::as_str).collect::<Vec<_>>())
    };
    run(&["topics", "create", "--partitions", "1"]).ok();
    let (producer, key) = producer_root(&s.dir);
    let publish = |n: usize| common::seal_and_publish(&producer, n, &brokers, &prefix);
    publish(2); // blocks 0..=2

    let site_port = free_port();
    let site_root = s.dir.join("site").display().to_string();
    let port_arg = site_port.to_string();
    let consume = with_topics(
        &[
            "consume",
            "--site",
            &common::unique("m"),
            "--root",
            &site_root,
            "--trust",
            &key,
            "--metrics-addr",
            &port_arg,
        ],
        &brokers,
        &prefix,
    );
    let site = Running::spawn(Command::new(env!("CARGO_BIN_EXE_fschain")).args(&consume));
    let height = |port| scrape(port).get("fschain_height{host1}").copied();
    wait_for(
        "the site's metrics at block 2",
        Duration::from_secs(60),
        || height(site_port) == Some(2.0),
    );
    let first = scrape(site_port);
    assert_eq!(first["fschain_blocks_verified_total{host1}"], 3.0);
    assert!(first["fschain_last_verified_block_timestamp_seconds{host1}"] > 1.7e9);
    // The lag comes from the topic's manifests, read by a thread of its
    // own: none once the site holds the newest block.
    wait_for("the site's lag metrics", Duration::from_secs(30), || {
        let m = scrape(site_port);
        m.get("fschain_lag_blocks{host1}") == Some(&0.0)
            && m.get("fschain_lag_seconds{host1}") == Some(&0.0)
    });
    // Every reason is exported before it happens.
    assert_eq!(first["fschain_frames_rejected_total{not_a_frame}"], 0.0);
    common::produce_raw(
        &brokers,
        &format!("{prefix}.blocks"),
        &[(b"host1".to_vec(), b"not a frame".to_vec())],
    );
    publish(2); // blocks 3..=4
    wait_for(
        "the site's metrics at block 4",
        Duration::from_secs(60),
        || height(site_port) == Some(4.0),
    );
    let later = scrape(site_port);
    assert_eq!(later["fschain_blocks_verified_total{host1}"], 5.0);
    assert!(later["fschain_consumed_bytes_total{}"] > first["fschain_consumed_bytes_total{}"]);
    assert_eq!(later["fschain_receive_duration_seconds_count{host1}"], 5.0);
    assert_eq!(later["fschain_verify_duration_seconds_count{host1}"], 5.0);
    assert_eq!(later["fschain_frames_rejected_total{not_a_frame}"], 1.0);
    assert_eq!(later["fschain_frames_rejected_total{bad_manifest}"], 0.0);
    site.stop();

    // An agent: blocks sealed from the ops topic, published, timed.
    let agent_root = s.dir.join("agent").display().to_string();
    fschain(&["init", "--root", &agent_root, "--chain", "host3"]).ok();
    let agent_port = free_port();
    let agent_args = with_topics(
        &[
            "agent",
            "--root",
            &agent_root,
            "--block-ops",
            "1",
            "--metrics-addr",
            &agent_port.to_string(),
        ],
        &brokers,
        &prefix,
    );
    let agent = Running::spawn(Command::new(env!("CARGO_BIN_EXE_fschain")).args(&agent_args));
    let ops = s.dir.join("ops.jsonl");
    std::fs::write(
        &ops,
        "{\"element\":\"service:a\",\"action\":\"set\",\"state\":{\"on\":true}}\n{\"element\":\"service:b\",\"action\":\"set\",\"state\":{\"on\":true}}\n",
    )
    .unwrap();
    run(&["submit", "--chain", "host3", &ops.display().to_string()]).ok();
    common::produce_raw(
        &brokers,
        &format!("{prefix}.ops"),
        &[(b"host3".to_vec(), b"{not json".to_vec())],
    );
    wait_for(
        "the agent's two blocks published",
        Duration::from_secs(60),
        || scrape(agent_port).get("fschain_published_height{host3}") == Some(&2.0),
    );
    let agent_metrics = scrape(agent_port);
    assert_eq!(agent_metrics["fschain_blocks_sealed_total{host3}"], 2.0);
    assert_eq!(
        agent_metrics["fschain_seal_duration_seconds_count{host3}"],
        2.0
    );
    assert!(agent_metrics["fschain_blocks_published_total{host3}"] >= 2.0);
    assert!(agent_metrics["fschain_published_bytes_total{host3}"] > 0.0);
    wait_for(
        "the malformed operation counted",
        Duration::from_secs(30),
        || scrape(agent_port).get("fschain_operations_rejected_total{malformed}") == Some(&1.0),
    );
    assert_eq!(
        scrape(agent_port)["fschain_operations_rejected_total{signature}"],
        0.0
    );
    agent.stop();

    // A watch: a block sealed for its catch-up, then one per change.
    let tree = s.dir.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("a.conf"), "a = 1\n").unwrap();
    let sources = s.dir.join("sources.toml");
    std::fs::write(
        &sources,
        format!(
            "coalesce = \"20ms\"\n[files]\npaths = [\"{}\"]\n",
            tree.display()
        ),
    )
    .unwrap();
    let watch_root = s.dir.join("watched").display().to_string();
    fschain(&["init", "--root", &watch_root, "--chain", "host2"]).ok();
    let watch_port = free_port();
    let watch = Running::spawn(
        Command::new(env!("CARGO_BIN_EXE_fschain"))
            .args(["watch", "--root", &watch_root, "--sources"])
            .arg(&sources)
            .args([
                "--block-interval",
                "50",
                "--metrics-addr",
                &watch_port.to_string(),
            ]),
    );
    let sealed = || {
        scrape(watch_port)
            .get("fschain_blocks_sealed_total{host2}")
            .copied()
    };
    wait_for(
        "the catch-up block's metrics",
        Duration::from_secs(30),
        || sealed() == Some(1.0),
    );
    std::fs::write(tree.join("a.conf"), "a = 2\n").unwrap();
    wait_for("the change's block", Duration::from_secs(30), || {
        sealed() == Some(2.0)
    });
    let last = scrape(watch_port);
    assert_eq!(last["fschain_height{host2}"], 2.0);
    assert_eq!(last["fschain_watch_changes_total{files}"], 3.0);
    assert_eq!(
        last["fschain_operations_recorded_total{host2}"], 3.0,
        "2 at start (dir, file), 1 change"
    );
    watch.stop();
}
