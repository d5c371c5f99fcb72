//! Helpers for the system tests: a scratch root on real btrfs, and a way to
//! run the `fschain` binary that explains itself when a command fails.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// A directory on btrfs for one test, removed (subvolumes too) at the end.
pub(crate) struct Scratch {
    pub dir: PathBuf,
}

/// The btrfs test filesystem from `scripts/btrfs-loop.sh`, named by
/// FSCHAIN_TEST_BTRFS. Without it the test is skipped, except under CI,
/// where it fails: btrfs tests must never be silently skipped there.
pub(crate) fn scratch(name: &str) -> Option<Scratch> {
    let base = match std::env::var_os("FSCHAIN_TEST_BTRFS") {
        Some(b) if fschain_store::btrfs::is_btrfs(Path::new(&b)).unwrap_or(false) => {
            PathBuf::from(b)
        }
        other => {
            let why = match other {
                Some(b) => format!(
                    "FSCHAIN_TEST_BTRFS={} is not a btrfs mount",
                    PathBuf::from(b).display()
                ),
                None => "FSCHAIN_TEST_BTRFS is not set".to_owned(),
            };
            if std::env::var_os("CI").is_some() {
                panic!("{why}: under CI the btrfs tests must run (scripts/test.sh sets it up)");
            }
            eprintln!("SKIPPED {name}: {why}; run scripts/test.sh to get a loop-mounted btrfs");
            return None;
        }
    };
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = base.join(format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Some(Scratch { dir })
}

impl Scratch {
    pub(crate) fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os("FSCHAIN_TEST_KEEP_FAILED").is_some() {
            eprintln!("kept {} for inspection", self.dir.display());
            return;
        }
        fschain_store::btrfs::delete_subvolumes_below(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The result of one `fschain` run.
pub(crate) struct Run {
    pub args: Vec<String>,
    pub output: Output,
}

impl Run {
    pub(crate) fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    pub(crate) fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    pub(crate) fn code(&self) -> i32 {
        self.output.status.code().unwrap_or(-1)
    }
    fn explain(&self) -> String {
        format!(
            "fschain {}\nexit: {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.args.join(" "),
            self.output.status,
            self.stdout(),
            self.stderr()
        )
    }
    /// Panics, showing the command and its output, unless it exited 0.
    pub(crate) fn ok(self) -> Self {
        assert!(
            self.output.status.success(),
            "command failed:\n{}",
            self.explain()
        );
        self
    }
    /// Panics unless it exited with `code`.
    pub(crate) fn code_is(self, code: i32) -> Self {
        assert_eq!(
            self.code(),
            code,
            "unexpected exit code:\n{}",
            self.explain()
        );
        self
    }
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.output.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", self.explain()))
    }
}

pub(crate) fn fschain(args: &[&str]) -> Run {
    fschain_with_input(args, None)
}

/// Runs fschain like [`fschain`], but fails the test when the run has not
/// finished within `limit` (it is killed first): a command that would wait
/// forever is a failure, not a stuck test.
pub(crate) fn fschain_within(args: &[&str], limit: std::time::Duration) -> Run {
    use std::io::Read;
    let mut child = Command::new(env!("CARGO_BIN_EXE_fschain"))
        .args(args)
        .env_remove("FSCHAIN_ROOT")
        .env_remove("FSCHAIN_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fschain");
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "fschain {} did not finish within {limit:?}; its stderr:\n{}",
                args.join(" "),
                String::from_utf8_lossy(&stderr.join().unwrap_or_default())
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let output = Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    Run {
        args: args.iter().map(|s| s.to_string()).collect(),
        output,
    }
}

/// Runs fschain with `FSCHAIN_CRASH_AT=crash` (see `store::crash`) and
/// checks that it died there, as a process killed at that step would.
pub(crate) fn fschain_crashing_at(crash: &str, args: &[&str]) -> Run {
    use std::os::unix::process::ExitStatusExt;
    let output = Command::new(env!("CARGO_BIN_EXE_fschain"))
        .args(args)
        .env("FSCHAIN_CRASH_AT", crash)
        .env_remove("FSCHAIN_ROOT")
        .env_remove("FSCHAIN_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("spawn fschain");
    let run = Run {
        args: args.iter().map(|s| s.to_string()).collect(),
        output,
    };
    assert!(
        run.output.status.signal() == Some(libc_sigabrt())
            && run.stderr().contains("dying at crash point"),
        "fschain did not die at crash point {crash}:\n{}",
        run.explain()
    );
    run
}

fn libc_sigabrt() -> i32 {
    6
}

pub(crate) fn fschain_with_input(args: &[&str], input: Option<&[u8]>) -> Run {
    use std::io::Write;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fschain"));
    cmd.args(args)
        .env_remove("FSCHAIN_ROOT")
        .env_remove("FSCHAIN_CONFIG");
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn fschain");
    if let Some(bytes) = input {
        child.stdin.take().unwrap().write_all(bytes).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    Run {
        args: args.iter().map(|s| s.to_string()).collect(),
        output,
    }
}

/// The first `n` operations of the vendored sample (tests/data).
pub(crate) fn sample_ops(n: usize) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ops-sample.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines().take(n).map(|l| format!("{l}\n")).collect()
}

/// Sample operations `from..to` (0-based lines).
pub(crate) fn sample_ops_between(from: usize, to: usize) -> String {
    sample_ops(to)
        .lines()
        .skip(from)
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Waits until `check` holds, polling, up to `timeout`.
pub(crate) fn wait_for(what: &str, timeout: std::time::Duration, mut check: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !check() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A root initialised with the first `n` sample operations, `per_block` a block.
pub(crate) fn root_with_sample(s: &Scratch, n: usize, per_block: usize) -> String {
    let root = s.root().display().to_string();
    fschain(&["init", "--root", &root, "--chain", "host1"]).ok();
    let ops = sample_ops(n);
    fschain_with_input(
        &[
            "apply",
            "--root",
            &root,
            "--block-ops",
            &per_block.to_string(),
        ],
        Some(ops.as_bytes()),
    )
    .ok();
    root
}

/// The Apache Kafka broker the replication tests use (FSCHAIN_TEST_BROKERS,
/// started by scripts/test.sh). Without it the test is skipped, except under
/// CI, where it fails.
pub(crate) fn broker(name: &str) -> Option<String> {
    match std::env::var("FSCHAIN_TEST_BROKERS") {
        Ok(b) if !b.is_empty() => Some(b),
        _ => {
            if std::env::var_os("CI").is_some() {
                panic!("FSCHAIN_TEST_BROKERS is not set: under CI the broker tests must run (scripts/test.sh starts Apache Kafka)");
            }
            eprintln!("SKIPPED {name}: FSCHAIN_TEST_BROKERS is not set; run scripts/test.sh");
            None
        }
    }
}

/// A name no other test run uses (topic prefixes, site names).
pub(crate) fn unique(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{name}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Splits an `fschain export` file into its frames.
pub(crate) fn split_frames(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let meta = u32::from_be_bytes(bytes[5..9].try_into().unwrap()) as usize;
        let p = 9 + meta;
        let payload = u32::from_be_bytes(bytes[p..p + 4].try_into().unwrap()) as usize;
        let end = p + 4 + payload;
        out.push(bytes[..end].to_vec());
        bytes = &bytes[end..];
    }
    out
}

/// Produces raw messages onto a topic, waiting for every acknowledgement.
pub(crate) fn produce_raw(brokers: &str, topic: &str, messages: &[(Vec<u8>, Vec<u8>)]) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.max.bytes", "4194304")
        .create()
        .unwrap();
    for (key, value) in messages {
        loop {
            match producer.send(BaseRecord::to(topic).key(key).payload(value)) {
                Ok(()) => break,
                Err((e, _)) => {
                    eprintln!("produce retry: {e}");
                    producer.poll(std::time::Duration::from_millis(50));
                }
            }
        }
    }
    producer.flush(std::time::Duration::from_secs(30)).unwrap();
}

/// How many events the chain at `root` holds, as `verify` counts them
/// (which also checks that it verifies).
pub(crate) fn events_of(root: &str) -> u64 {
    let report = fschain(&["verify", "--root", root, "--json"]).ok().json();
    report["events"].as_u64().unwrap()
}

/// Each block's hash, in order, from `fschain log --json`.
/// How many blocks the chain at `root` holds, 0 while it has none yet (a
/// site may have made `blocks/` before its first snapshot is in): for
/// polling, where the chain may be half made.
pub(crate) fn block_count(root: &str) -> usize {
    let run = fschain(&["log", "--root", root, "--json"]);
    if !run.output.status.success() {
        return 0;
    }
    let log = run.json();
    log.as_array()
        .or_else(|| log["blocks"].as_array())
        .map_or(0, Vec::len)
}

pub(crate) fn block_hashes(root: &str) -> Vec<String> {
    let log = fschain(&["log", "--root", root, "--json"]).ok().json();
    let blocks = log
        .as_array()
        .cloned()
        .or_else(|| log["blocks"].as_array().cloned())
        .unwrap();
    blocks
        .iter()
        .map(|b| b["hash"].as_str().unwrap().to_owned())
        .collect()
}

/// A producer root `producer` under `dir`, chain host1, and its public key
/// written to `dir/key.pub`: (root, key file).
pub(crate) fn producer_root(dir: &Path) -> (String, String) {
    let producer = dir.join("producer").display().to_string();
    fschain(&["init", "--root", &producer, "--chain", "host1"]).ok();
    let key = dir.join("key.pub");
    std::fs::write(
        &key,
        fschain(&["key", "show", "--root", &producer]).ok().stdout(),
    )
    .unwrap();
    (producer, key.display().to_string())
}

/// Runs the btrfs tool; fails the test with its stderr when it fails.
pub(crate) fn btrfs(args: &[&std::ffi::OsStr]) {
    let out = Command::new("btrfs").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "btrfs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The partition and offset of the newest full (checkpoint) manifest on
/// `topic`, read from the start.
pub(crate) fn latest_full_manifest(brokers: &str, topic: &str) -> Option<(i32, i64)> {
    use fschain_schema::wire::{decode_frame, Frame};
    use rdkafka::message::Message;
    topic_messages(brokers, topic)
        .iter()
        .filter(|msg| {
            matches!(decode_frame(msg.payload().unwrap_or_default()),
                Ok(Frame::Manifest(m)) if m.parent.is_none())
        })
        .map(|msg| (msg.partition(), msg.offset()))
        .next_back()
}

/// Every message of `topic`, read from the start of each partition to its
/// end.
pub(crate) fn topic_messages(brokers: &str, topic: &str) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("scan"))
        .set("enable.partition.eof", "true")
        .set("fetch.message.max.bytes", "4194304")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), std::time::Duration::from_secs(10))
        .unwrap();
    let partitions = metadata.topics()[0].partitions().len();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut found = Vec::new();
    let mut at_end = std::collections::BTreeSet::new();
    let started = std::time::Instant::now();
    loop {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "reading {topic} to its end took over a minute"
        );
        match consumer.poll(std::time::Duration::from_millis(500)) {
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
                if at_end.len() == partitions {
                    return found;
                }
            }
            Some(Ok(msg)) => found.push(msg.detach()),
            _ => {}
        }
    }
}

/// Deletes the records of `partition` of `topic` below `before`, as
/// retention or `kafka-delete-records.sh` would.
pub(crate) fn delete_records(brokers: &str, topic: &str, partition: i32, before: i64) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, rdkafka::Offset::Offset(before))
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = runtime
        .block_on(admin.delete_records(&tpl, &AdminOptions::new()))
        .unwrap();
    for e in result.elements() {
        assert!(
            e.error().is_ok(),
            "deleting records of {topic}: {:?}",
            e.error()
        );
    }
}

/// Runs `scripts/kafka.sh COMMAND --port PORT ARGS...` and returns its
/// stdout, failing the test with its stderr when it fails.
pub(crate) fn kafka_script(command: &str, port: &str, args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh");
    let out = Command::new(script)
        .arg(command)
        .args(["--port", port])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kafka.sh {command} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Names in a chain copy's blocks/ that are staging leftovers.
pub(crate) fn staging_entries(copy: &str) -> Vec<String> {
    std::fs::read_dir(Path::new(copy).join("blocks"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

/// `args` followed by `--brokers BROKERS --prefix PREFIX`, owned.
pub(crate) fn with_topics(args: &[&str], brokers: &str, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    v.extend([
        "--brokers".into(),
        brokers.to_owned(),
        "--prefix".into(),
        prefix.to_owned(),
    ]);
    v
}

/// Runs fschain with `args` plus the test's brokers and prefix.
pub(crate) fn on_topics(args: &[&str], brokers: &str, prefix: &str) -> Run {
    let all = with_topics(args, brokers, prefix);
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    fschain(&all)
}

/// Operations `from..to` of the sample, keyed `host1`, as the ops topic
/// carries them (for [`produce_raw`]).
pub(crate) fn host1_ops(from: usize, to: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    sample_ops_between(from, to)
        .lines()
        .map(|l| (b"host1".to_vec(), l.as_bytes().to_vec()))
        .collect()
}

/// `n` blocks on `producer` (an mtu set each), then `publish` to the
/// topics of `brokers` and `prefix`.
pub(crate) fn seal_and_publish(producer: &str, n: usize, brokers: &str, prefix: &str) {
    for i in 0..n {
        fschain(&[
            "set",
            "--root",
            producer,
            "iface:eth0",
            &format!("mtu={}", 1400 + i),
        ])
        .ok();
    }
    let args = with_topics(&["publish", "--root", producer], brokers, prefix);
    fschain(&args.iter().map(String::as_str).collect::<Vec<_>>()).ok();
}

/// A copy of a producer root as a backup would hold it: its marker, its
/// meta/ (with the signing key), its layer and every block snapshot.
pub(crate) fn backup_root(from: &Path, to: &Path) {
    let snapshot = |args: &[&str], a: &Path, b: &Path| {
        let mut all: Vec<&std::ffi::OsStr> = args.iter().map(|x| x.as_ref()).collect();
        all.extend([a.as_os_str(), b.as_os_str()]);
        btrfs(&all);
    };
    std::fs::create_dir_all(to.join("blocks")).unwrap();
    std::fs::copy(from.join("fschain.root"), to.join("fschain.root")).unwrap();
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(from.join("meta"))
        .arg(to.join("meta"))
        .output()
        .unwrap();
    assert!(out.status.success());
    snapshot(
        &["subvolume", "snapshot"],
        &from.join("layer"),
        &to.join("layer"),
    );
    for entry in std::fs::read_dir(from.join("blocks")).unwrap().flatten() {
        snapshot(
            &["subvolume", "snapshot", "-r"],
            &entry.path(),
            &to.join("blocks").join(entry.file_name()),
        );
    }
}

/// A child process killed when dropped, so a failed test leaves no
/// consumer running.
pub(crate) struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
