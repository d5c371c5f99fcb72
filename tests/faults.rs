//! The fault matrix (docs/reliability.md), against a three-broker Apache
//! Kafka cluster (FSCHAIN_TEST_CLUSTER, started by scripts/test.sh with
//! replication factor 3, min.insync.replicas 2, no unclean election) and
//! real btrfs. Each test ends by checking that the site holds exactly the
//! producer's chain and that both verify clean. The tests here kill and
//! restart the cluster's brokers, so they take turns (`FAULTS`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{block_hashes, fschain, fschain_with_input, sample_ops, scratch, unique, wait_for};
use rdkafka::consumer::{BaseConsumer, Consumer};

/// One fault at a time on the shared cluster.
static FAULTS: Mutex<()> = Mutex::new(());

/// The shared three-broker cluster.
struct Cluster {
    bootstrap: String,
    port: String,
}

impl Cluster {
    /// FSCHAIN_TEST_CLUSTER; skipped without it, except under CI.
    fn get(name: &str) -> Option<Cluster> {
        match (
            std::env::var("FSCHAIN_TEST_CLUSTER"),
            std::env::var("FSCHAIN_TEST_CLUSTER_PORT"),
        ) {
            (Ok(bootstrap), Ok(port)) if !bootstrap.is_empty() => Some(Cluster { bootstrap, port }),
            _ => {
                if std::env::var_os("CI").is_some() {
                    panic!("FSCHAIN_TEST_CLUSTER is not set: under CI the fault tests must run (scripts/test.sh starts the cluster)");
                }
                eprintln!("SKIPPED {name}: FSCHAIN_TEST_CLUSTER is not set; run scripts/test.sh");
                None
            }
        }
    }

    fn script(&self, args: &[&str]) {
        common::kafka_script(args[0], &self.port, &args[1..]);
    }

    /// Kills broker `node` (kill -9); it is started again when the
    /// returned guard drops, even if the test fails.
    fn kill(&self, node: i32) -> Down<'_> {
        self.script(&["kill", &node.to_string()]);
        Down {
            cluster: self,
            node,
        }
    }

    /// The node leading `partition` of `topic`.
    fn leader(&self, topic: &str, partition: i32) -> i32 {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .unwrap();
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        metadata.topics()[0]
            .partitions()
            .iter()
            .find(|p| p.id() == partition)
            .map(|p| p.leader())
            .unwrap()
    }
}

/// Waits for `child` to exit; fails the test after three minutes.
fn wait_exit(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A broker that is down until this drops.
struct Down<'a> {
    cluster: &'a Cluster,
    node: i32,
}

impl Drop for Down<'_> {
    fn drop(&mut self) {
        self.cluster.script(&["start", &self.node.to_string()]);
    }
}

/// A producer root, a site root and the topics of one test.
struct Setup {
    s: common::Scratch,
    producer: String,
    key: String,
    prefix: String,
    brokers: String,
}

impl Setup {
    fn new(name: &str, cluster: &Cluster) -> Option<Setup> {
        let s = scratch(name)?;
        let (producer, key) = common::producer_root(&s.dir);
        let setup = Setup {
            key,
            producer,
            prefix: unique(name),
            brokers: cluster.bootstrap.clone(),
            s,
        };
        setup
            .kafka(&[
                "topics",
                "create",
                "--replication",
                "3",
                "--partitions",
                "1",
            ])
            .ok();
        Some(setup)
    }

    fn args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut v = args.to_vec();
        v.extend(["--brokers", &self.brokers, "--prefix", &self.prefix]);
        v
    }

    /// Starts fschain with the topics' arguments, in the background.
    fn spawn(&self, args: &[&str]) -> std::process::Child {
        Command::new(env!("CARGO_BIN_EXE_fschain"))
            .args(self.args(args))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.log()).unwrap())
            .spawn()
            .unwrap()
    }

    /// Where the last process [`Setup::spawn`] started writes its stderr.
    fn log(&self) -> std::path::PathBuf {
        self.s.dir.join("spawned.log")
    }

    fn said(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    fn kafka(&self, args: &[&str]) -> common::Run {
        fschain(&self.args(args))
    }

    fn apply(&self, ops: &str, per_block: &str) {
        fschain_with_input(
            &["apply", "--root", &self.producer, "--block-ops", per_block],
            Some(ops.as_bytes()),
        )
        .ok();
    }

    fn site(&self, name: &str) -> String {
        self.s.dir.join(name).display().to_string()
    }

    fn consume(&self, site: &str) -> common::Run {
        let root = self.site(site);
        self.kafka(&[
            "consume",
            "--site",
            site,
            "--root",
            &root,
            "--trust",
            &self.key,
            "--until-idle",
            "--no-index",
        ])
    }

    /// The end of every row: the site holds exactly the producer's chain,
    /// block for block, and both verify clean.
    fn assert_site_holds_the_chain(&self, site: &str) {
        let copy = format!("{}/host1", self.site(site));
        fschain(&["verify", "--root", &self.producer]).ok();
        fschain(&["verify", "--root", &copy]).ok();
        assert_eq!(block_hashes(&copy), block_hashes(&self.producer));
        assert_eq!(
            common::staging_entries(&copy),
            Vec::<String>::new(),
            "a partial subvolume was left in the site's chain"
        );
    }
}

/// Row 2: one broker of three is down for the whole run; publishing,
/// consuming and verifying all work.
#[test]
fn one_broker_down_for_the_whole_run() {
    let Some(cluster) = Cluster::get("fault-one-down") else {
        return;
    };
    let _turn = FAULTS.lock().unwrap_or_else(|e| e.into_inner());
    let Some(t) = Setup::new("fault-one-down", &cluster) else {
        return;
    };
    // The consumer offsets topic exists before the fault, as in any
    // running deployment.
    t.consume("warm").ok();
    let _down = cluster.kill(3);
    t.apply(&sample_ops(120), "20");
    t.kafka(&["publish", "--root", &t.producer]).ok();
    t.consume("east").ok();
    t.assert_site_holds_the_chain("east");
}

/// Row 1: the leader of the blocks topic's partition is killed while a
/// multi-block publish is under way. The publish completes (or fails with
/// a transient error and completes when run again), and the site gets
/// every block once.
#[test]
fn the_blocks_leader_killed_during_a_publish() {
    let Some(cluster) = Cluster::get("fault-leader") else {
        return;
    };
    let _turn = FAULTS.lock().unwrap_or_else(|e| e.into_inner());
    let Some(t) = Setup::new("fault-leader", &cluster) else {
        return;
    };
    t.consume("warm").ok();
    t.apply(&sample_ops(1200), "30");
    let leader = cluster.leader(&format!("{}.blocks", t.prefix), 0);
    let mut publish = t.spawn(&["publish", "--root", &t.producer, "--chunk-size", "4K"]);
    // Under way: the first blocks are acknowledged, the rest are not.
    let published = Path::new(&t.producer).join("meta/published");
    wait_for(
        "the first blocks published",
        Duration::from_secs(60),
        || published.exists(),
    );
    assert!(
        publish.try_wait().unwrap().is_none(),
        "the publish ended before the fault; make it longer"
    );
    let down = cluster.kill(leader);
    let status = wait_exit(&mut publish, "publish to end after its leader was killed");
    if !status.success() {
        // A transient failure: a run again sends what is left.
        t.kafka(&["publish", "--root", &t.producer]).ok();
    }
    drop(down);
    t.consume("east").ok();
    t.assert_site_holds_the_chain("east");
}

/// Row 4: the whole cluster is restarted (every broker killed, then all
/// started again) while a site is consuming; the site carries on by itself
/// and gets the blocks published after the restart.
#[test]
fn the_whole_cluster_restarted_while_a_site_consumes() {
    let Some(cluster) = Cluster::get("fault-restart") else {
        return;
    };
    let _turn = FAULTS.lock().unwrap_or_else(|e| e.into_inner());
    let Some(t) = Setup::new("fault-restart", &cluster) else {
        return;
    };
    t.apply(&sample_ops(60), "20");
    t.kafka(&["publish", "--root", &t.producer]).ok();
    let site = t.site("east");
    let mut consumer = t.spawn(&[
        "consume",
        "--site",
        "east",
        "--root",
        &site,
        "--trust",
        &t.key,
        "--no-index",
    ]);
    let held = |h: u64| {
        Path::new(&site)
            .join(format!("host1/blocks/{h:010}"))
            .exists()
    };
    wait_for("the site to hold block 3", Duration::from_secs(60), || {
        held(3)
    });
    // Every broker down, then all started together (a lone broker cannot
    // form the controller quorum).
    for node in 1..=3 {
        cluster.script(&["kill", &node.to_string()]);
    }
    std::thread::sleep(Duration::from_secs(2));
    let starts: Vec<_> = (1..=3)
        .map(|node| {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh");
            Command::new(script)
                .args(["start", &node.to_string(), "--port", &cluster.port])
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut start in starts {
        assert!(
            start.wait().unwrap().success(),
            "a broker did not start again"
        );
    }
    fschain_with_input(
        &["apply", "--root", &t.producer, "--block-ops", "20"],
        Some(common::sample_ops_between(60, 120).as_bytes()),
    )
    .ok();
    t.kafka(&["publish", "--root", &t.producer]).ok();
    wait_for("the site to hold block 6", Duration::from_secs(120), || {
        held(6)
    });
    let _ = Command::new("kill").arg(consumer.id().to_string()).status();
    consumer.wait().unwrap();
    t.assert_site_holds_the_chain("east");
}

/// Row 3: two brokers of three are down. A publish cannot be acknowledged
/// (`min.insync.replicas` 2) and keeps trying; once one broker is back, it
/// finishes, and nothing sealed is lost.
#[test]
fn two_brokers_down_then_one_back_and_the_publish_finishes() {
    let Some(cluster) = Cluster::get("fault-two-down") else {
        return;
    };
    let _turn = FAULTS.lock().unwrap_or_else(|e| e.into_inner());
    let Some(t) = Setup::new("fault-two-down", &cluster) else {
        return;
    };
    t.consume("warm").ok();
    t.apply(&sample_ops(90), "30");
    let leader = cluster.leader(&format!("{}.blocks", t.prefix), 0);
    let others: Vec<i32> = (1..=3).filter(|n| *n != leader).collect();
    let first = cluster.kill(others[0]);
    let second = cluster.kill(others[1]);
    let mut publish = t.spawn(&["publish", "--root", &t.producer]);
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        publish.try_wait().unwrap().is_none(),
        "publish ended while two brokers were down: nothing can be acknowledged then"
    );
    drop(first);
    let status = wait_exit(&mut publish, "publish to finish after a broker came back");
    assert!(status.success(), "publish failed after a broker came back");
    drop(second);
    t.consume("east").ok();
    t.assert_site_holds_the_chain("east");
}

/// Row 3, the agent: two brokers of three are down while it has operations
/// to apply. It applies and seals them, cannot get its blocks
/// acknowledged, keeps trying, and once a broker is back publishes them;
/// every operation is applied once.
#[test]
fn two_brokers_down_the_agent_keeps_trying_and_publishes_once_one_is_back() {
    let Some(cluster) = Cluster::get("fault-agent-two-down") else {
        return;
    };
    let _turn = FAULTS.lock().unwrap_or_else(|e| e.into_inner());
    let Some(t) = Setup::new("fault-agent-two-down", &cluster) else {
        return;
    };
    t.consume("warm").ok();
    t.apply(&sample_ops(20), "10");
    t.kafka(&["publish", "--root", &t.producer]).ok();
    common::produce_raw(
        &t.brokers,
        &format!("{}.ops", t.prefix),
        &common::host1_ops(20, 60),
    );
    let leader = cluster.leader(&format!("{}.blocks", t.prefix), 0);
    let others: Vec<i32> = (1..=3).filter(|n| *n != leader).collect();
    let first = cluster.kill(others[0]);
    let second = cluster.kill(others[1]);
    let mut agent = t.spawn(&[
        "agent",
        "--root",
        &t.producer,
        "--block-ops",
        "10",
        "--until-idle",
    ]);
    std::thread::sleep(Duration::from_secs(8));
    assert!(
        agent.try_wait().unwrap().is_none(),
        "the agent ended while two brokers were down: nothing can be acknowledged then"
    );
    drop(first);
    let status = wait_exit(&mut agent, "the agent to finish after a broker came back");
    assert!(
        status.success(),
        "the agent failed after a broker came back: {}",
        t.said()
    );
    drop(second);
    // With two of three brokers gone, the partition's new leader may hold
    // its high watermark below operations all three had acknowledged
    // until the others are back: `--until-idle` then ends at that visible
    // end. Run again with every broker up, every operation is applied,
    // and none twice.
    t.kafka(&["agent", "--root", &t.producer, "--until-idle"])
        .ok();
    assert_eq!(common::events_of(&t.producer), 60, "{}", t.said());
    t.consume("east").ok();
    t.assert_site_holds_the_chain("east");
}
