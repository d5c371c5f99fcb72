//! Replication benchmarks: each figure beside a baseline timed in the same
//! run through the same broker.
//!
//! - operation published → verified at a site (agent and site running),
//!   p50/p99, against a bare produce → consume round trip;
//! - a large change, and a full checkpoint of realistic states, replicated
//!   (publish, then consume at a fresh site) against the plain pipeline
//!   `btrfs send | zstd | produce`, `consume | zstd -d | btrfs receive`;
//! - bytes on the topic for a block that changes one element of a large
//!   layer;
//! - peak resident memory of `fschain publish` and `fschain consume` while
//!   a full checkpoint of the large layer goes through.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fschain_kafka::wait_acknowledged;
use fschain_producer::ChainWriter;
use fschain_schema::{Action, Operation};
use fschain_store::{btrfs, RootLayout};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord};
use rdkafka::ClientConfig;
use serde_json::json;

use crate::host::proc_status_bytes;
use crate::local::{cleanup, element, ms, new_root, patch_op, pct, populate, ratio, settle, Rng};
use crate::report::{Report, Row};

struct Scale {
    latency_ops: usize,
    large_mb: usize,
    layer_elements: usize,
    checkpoint_elements: usize,
}

pub(crate) fn run(dir: &Path, quick: bool, brokers: &str, report: &mut Report) -> Result<()> {
    let scale = if quick {
        Scale {
            latency_ops: 40,
            large_mb: 200,
            layer_elements: 20_000,
            checkpoint_elements: 10_000,
        }
    } else {
        Scale {
            latency_ops: 200,
            large_mb: 2048,
            layer_elements: 100_000,
            checkpoint_elements: 100_000,
        }
    };
    let work = dir.join(format!("bench-repl-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = run_in(&work, &scale, brokers, report);
    cleanup(&work);
    result
}

pub(crate) struct Bin {
    pub(crate) exe: PathBuf,
    pub(crate) brokers: String,
    pub(crate) prefix: String,
}

impl Bin {
    pub(crate) fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.exe);
        c.args(args)
            .args(["--brokers", &self.brokers, "--prefix", &self.prefix])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }
    /// Runs fschain to the end: how long it took, its peak RSS, its stdout.
    pub(crate) fn run(&self, args: &[&str]) -> Result<(Duration, u64, String)> {
        let (took, peak, stdout, _) = self.run_logged(args)?;
        Ok((took, peak, stdout))
    }
    /// `run`, and its stderr too.
    fn run_logged(&self, args: &[&str]) -> Result<(Duration, u64, String, String)> {
        let t = Instant::now();
        let child = self.cmd(args).spawn()?;
        let (out, peak) = wait_measuring(child)?;
        if !out.status.success() {
            bail!(
                "fschain {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok((
            t.elapsed(),
            peak,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }
}

/// The sum of every `key=N` in fschain's debug log, in seconds (its
/// phases are logged in milliseconds).
fn logged_secs(log: &str, key: &str) -> f64 {
    let pattern = format!(" {key}=");
    let ms: u64 = log
        .lines()
        .flat_map(|line| line.split(&pattern).skip(1))
        .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .filter_map(|n| n.parse::<u64>().ok())
        .sum();
    ms as f64 / 1000.0
}

/// Writes back every dirty page, untimed, so that each timed phase starts
/// from the same quiet disk, not paying for the previous one's writes.
fn settle_disk() {
    rustix::fs::sync();
}

/// Reads a child's pipe to its end on a thread of its own.
pub(crate) fn drain<R: std::io::Read + Send + 'static>(
    pipe: Option<R>,
) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

/// Waits for `child`, sampling its peak resident set (VmHWM) meanwhile.
fn wait_measuring(mut child: Child) -> Result<(std::process::Output, u64)> {
    let pid = child.id();
    let mut peak = 0;
    // Read the pipes on the side so that a chatty child never blocks.
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out_thread = drain(stdout);
    let err_thread = drain(stderr);
    let status = loop {
        if let Ok(bytes) = proc_status_bytes(pid, "VmHWM:") {
            peak = peak.max(bytes);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = std::process::Output {
        status,
        stdout: out_thread.join().unwrap_or_default(),
        stderr: err_thread.join().unwrap_or_default(),
    };
    Ok((output, peak))
}

const COMMAND: &str = "fschain-bench --dir DIR --quick --replication-only --brokers LIST";

fn run_in(work: &Path, s: &Scale, brokers: &str, report: &mut Report) -> Result<()> {
    let bin = Bin {
        exe: fschain_exe()?,
        brokers: brokers.to_owned(),
        prefix: format!("bench-{}", std::process::id()),
    };
    report.section(
        &format!(
            "replication (Apache Kafka at {brokers}, topics {}.*)",
            bin.prefix
        ),
        COMMAND,
    );
    bin.run(&["topics", "create"])?;
    // Topics for the raw baselines (brokers need not auto-create topics).
    let raw_prefix = format!("{}-raw", bin.prefix);
    let raw_bin = Bin {
        exe: bin.exe.clone(),
        brokers: bin.brokers.clone(),
        prefix: raw_prefix.clone(),
    };
    raw_bin.run(&["topics", "create"])?;
    latency(work, s, &bin, &raw_prefix, report)?;
    large_change_section(work, s, &bin, &raw_prefix, report)?;
    one_change_bytes(work, s, &bin, report)
}

/// The `fschain` binary built beside this one.
pub(crate) fn fschain_exe() -> Result<PathBuf> {
    let exe = std::env::current_exe()?.with_file_name("fschain");
    if !exe.exists() {
        bail!(
            "{} is missing: build it with the bench (scripts/bench.sh does)",
            exe.display()
        );
    }
    Ok(exe)
}

/// An operation published -> its block verified at a site.
fn latency(work: &Path, s: &Scale, bin: &Bin, raw_prefix: &str, report: &mut Report) -> Result<()> {
    let brokers = bin.brokers.as_str();
    let producer_root = work.join("producer");
    drop(new_root(&producer_root, "lat")?);
    settle(work)?;
    let key_file = work.join("producer.pub");
    let key = fschain_producer::load_signing_key(&RootLayout::new(&producer_root))?;
    std::fs::write(&key_file, format!("{}\n", key.public()))?;
    let p = producer_root.display().to_string();
    let site = work.join("site");
    let site_s = site.display().to_string();
    let k = key_file.display().to_string();
    let mut agent = bin
        .cmd(&[
            "agent",
            "--root",
            &p,
            "--block-ops",
            "1",
            "--block-interval",
            "1",
            "--checkpoint-every",
            "0",
        ])
        .stderr(Stdio::null())
        .spawn()?;
    let mut consumer = bin
        .cmd(&[
            "consume", "--site", "bench", "--root", &site_s, "--trust", &k,
        ])
        .stderr(Stdio::null())
        .spawn()?;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "0")
        .create()?;
    let ops_topic = format!("{}.ops", bin.prefix);
    let blocks = site.join("lat/blocks");
    let held = |h: u64| blocks.join(format!("{h:010}")).exists();
    // Warm up: the first block waits for the consumer group to form.
    let mut latencies = Vec::new();
    for i in 0..=s.latency_ops {
        let op = json!({"element": format!("service:s{}", i % 10), "action": "set", "state": {"n": i}, "reason": "latency"});
        let body = op.to_string();
        let t = Instant::now();
        producer
            .send(BaseRecord::to(&ops_topic).key("lat").payload(&body))
            .map_err(|(e, _)| e)?;
        wait_acknowledged(&producer, Duration::from_secs(60))?;
        let want = i as u64 + 1;
        let deadline = if i == 0 { 120 } else { 10 };
        while !held(want) {
            if t.elapsed() > Duration::from_secs(deadline) {
                let _ = agent.kill();
                let _ = consumer.kill();
                bail!("block {want} did not reach the site within {deadline} s");
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        if i > 0 {
            latencies.push(t.elapsed());
        }
    }
    terminate(&mut agent);
    terminate(&mut consumer);
    let raw = raw_round_trips(brokers, &format!("{raw_prefix}.ops"), s.latency_ops)?;
    let (mut lat, mut raw_lat) = (latencies, raw);
    let p99 = pct(&mut lat, 99);
    report.row(Row {
        what: format!(
            "operation published -> verified at a site, p50 / p99 ({} ops, a block each)",
            s.latency_ops
        ),
        fschain: format!("{} / {}", ms(pct(&mut lat, 50)), ms(p99)),
        baseline: format!(
            "raw produce -> consume round trip: {} / {}",
            ms(pct(&mut raw_lat, 50)),
            ms(pct(&mut raw_lat, 99))
        ),
        target: "p99 <= 250 ms".into(),
        met: Some(p99.as_secs_f64() <= 0.250),
    });
    Ok(())
}

/// A large change and a realistic full checkpoint, each against the plain
/// pipeline, and the peak memory of both sides for the large change.
fn large_change_section(
    work: &Path,
    s: &Scale,
    bin: &Bin,
    raw_prefix: &str,
    report: &mut Report,
) -> Result<()> {
    let (rss_pub, rss_con) = against_plain_pipeline(
        work,
        bin,
        raw_prefix,
        "big",
        &format!("a {} MB change in one block", s.large_mb),
        |writer| large_change(writer, s.large_mb),
        report,
    )?;
    for (side, rss) in [("publish", rss_pub), ("consume", rss_con)] {
        report.row(Row {
            what: format!("peak resident memory of {side}, that change"),
            fschain: format!("{:.1} MB", rss as f64 / 1e6),
            baseline: "–".into(),
            target: "<= 200 MB".into(),
            met: Some(rss <= 200_000_000),
        });
    }
    against_plain_pipeline(
        work,
        bin,
        raw_prefix,
        "ckpt",
        &format!(
            "a full checkpoint of {} elements with realistic states (tests/data/ops-sample.jsonl)",
            s.checkpoint_elements
        ),
        |writer| realistic_layer(writer, s.checkpoint_elements),
        report,
    )?;
    Ok(())
}

/// Seals one block with `build` in a new root, publishes it as a full
/// stream and consumes it at a fresh site, against the plain pipeline
/// moving the same block through the same broker. Returns the peak RSS of
/// publish and consume.
fn against_plain_pipeline(
    work: &Path,
    bin: &Bin,
    raw_prefix: &str,
    name: &str,
    change: &str,
    build: impl FnOnce(&mut ChainWriter) -> Result<()>,
    report: &mut Report,
) -> Result<(u64, u64)> {
    let brokers = bin.brokers.as_str();
    // Topics of this comparison's own, on both sides: the site reads this
    // block alone, as the plain pipeline does, not the other comparison's
    // block ahead of it.
    let bin = &Bin {
        exe: bin.exe.clone(),
        brokers: bin.brokers.clone(),
        prefix: format!("{}-{name}", bin.prefix),
    };
    bin.run(&["topics", "create"])?;
    let root = work.join(name);
    let mut writer = new_root(&root, name)?;
    build(&mut writer)?;
    writer.close()?;
    let r = root.display().to_string();
    let key = fschain_producer::load_signing_key(&RootLayout::new(&root))?;
    let key_file = work.join(format!("{name}.pub"));
    std::fs::write(&key_file, format!("{}\n", key.public()))?;
    settle_disk();
    let (t_pub, rss_pub, published, pub_log) =
        bin.run_logged(&["publish", "--root", &r, "--checkpoint-every", "1", "-v"])?;
    let site = work.join(format!("{name}-site")).display().to_string();
    settle_disk();
    let (t_con, rss_con, _, con_log) = bin.run_logged(&[
        "consume",
        "-v",
        "--site",
        name,
        "--root",
        &site,
        "--trust",
        &key_file.display().to_string(),
        "--until-idle",
        // Replication alone: the event index is built on its own thread
        // and timed by `fschain bench --index-only`.
        "--no-index",
    ])?;
    // `publish` reports the stream bytes it put on the topic.
    let on_topic: u64 = published
        .split_once(" bytes)")
        .and_then(|(before, _)| before.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no byte count in publish's report: {published}"))?;
    let layout = RootLayout::new(&root);
    let head = *layout.snapshot_heights()?.last().unwrap_or(&0);
    // Topics of this comparison's own (the baselines read from the start).
    let raw = Bin {
        exe: bin.exe.clone(),
        brokers: bin.brokers.clone(),
        prefix: format!("{raw_prefix}-{name}"),
    };
    raw.run(&["topics", "create", "--partitions", "1"])?;
    // The same block as fschain sent it: a full stream (--checkpoint-every 1).
    let (plain_prod, plain_cons, plain_sync) = plain_pipeline(
        brokers,
        &format!("{}.events", raw.prefix),
        &layout.snapshot(head),
        None,
        &work.join(format!("{name}-plain")),
    )?;
    let (bare_prod, bare_cons) = raw_bulk(brokers, &format!("{}.blocks", raw.prefix), on_topic)?;
    let btrfs_alone = send_receive(&layout.snapshot(head), &work.join(format!("{name}-raw")))?;
    let (hash_stream, hash_states) = check_hashing(on_topic, &layout.snapshot(head))?;
    let fs = t_pub + t_con;
    let plain = plain_prod + plain_cons;
    // What no checked pipeline can skip, on top of the plain one: the
    // site's sync, the stream hashed at both ends (to sign each chunk, to
    // check it), and the states read and hashed against the state root.
    let checked_floor = plain + plain_sync + hash_stream * 2 + hash_states;
    report.row(Row {
        what: format!(
            "{change} ({:.0} MB on the topic): publish + consume, no indexing",
            on_topic as f64 / 1e6
        ),
        // Where the time goes, from fschain's own debug log.
        fschain: format!(
            "{:.2} s (publish {:.2} s: first chunk queued after {:.2} s, stream made, signed and queued {:.2} s, acknowledged {:.2} s; consume {:.2} s: receive {:.2} s, sync and verify {:.2} s)",
            fs.as_secs_f64(),
            t_pub.as_secs_f64(),
            logged_secs(&pub_log, "first_chunk_ms"),
            logged_secs(&pub_log, "prepare_ms"),
            logged_secs(&pub_log, "ack_wait_ms"),
            t_con.as_secs_f64(),
            logged_secs(&con_log, "receive_ms"),
            logged_secs(&con_log, "verify_ms"),
        ),
        baseline: format!(
            "`btrfs send | zstd | produce`, then `consume | zstd -d | btrfs receive`, nothing checked: {:.2} s ({:.2} + {:.2} s): {:.2}x; the same with a sync of what it received, as a site must before it acknowledges a block: {:.2} s ({:.2}x); and hashing what the checks must hash (the stream at both ends, {:.2} s each, and the states, {:.2} s): {:.2} s ({:.2}x); bare produce + consume of as many bytes {:.2} s; `btrfs send | btrfs receive` alone {:.2} s",
            plain.as_secs_f64(),
            plain_prod.as_secs_f64(),
            plain_cons.as_secs_f64(),
            ratio(plain, fs),
            (plain + plain_sync).as_secs_f64(),
            ratio(plain + plain_sync, fs),
            hash_stream.as_secs_f64(),
            hash_states.as_secs_f64(),
            checked_floor.as_secs_f64(),
            ratio(checked_floor, fs),
            (bare_prod + bare_cons).as_secs_f64(),
            btrfs_alone.as_secs_f64()
        ),
        target: ">= 1.0x the plain pipeline".into(),
        met: Some(ratio(plain, fs) >= 1.0),
    });
    Ok((rss_pub, rss_con))
}

/// How long SHA-256 takes over `stream_bytes` bytes held in memory, and
/// over the state files of the snapshot at `snapshot`, read from disk: what
/// signing and checking each chunk, and checking the states against the
/// state root, cannot do without.
fn check_hashing(stream_bytes: u64, snapshot: &Path) -> Result<(Duration, Duration)> {
    // SHA-256 takes as long whatever the bytes are.
    let buf = vec![0x5a_u8; stream_bytes as usize];
    let t = Instant::now();
    std::hint::black_box(fschain_schema::Digest::of(&buf));
    let stream = t.elapsed();
    drop(buf);
    settle_disk();
    let t = Instant::now();
    let mut dirs = vec![snapshot.join("states")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                dirs.push(entry.path());
            } else {
                std::hint::black_box(fschain_schema::Digest::of(&std::fs::read(entry.path())?));
            }
        }
    }
    Ok((stream, t.elapsed()))
}

/// `n` elements whose states are the sample operations' (realistic
/// configuration text), in one block.
fn realistic_layer(writer: &mut ChainWriter, n: usize) -> Result<()> {
    let sample = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/ops-sample.jsonl"),
    )?;
    let states: Vec<Operation> = sample
        .lines()
        .filter_map(|l| Operation::from_json(l).ok())
        .filter(|op| op.action == Action::Set)
        .collect();
    if states.is_empty() {
        bail!("no set operations in tests/data/ops-sample.jsonl");
    }
    for i in 0..n {
        let op = &states[i % states.len()];
        let id = format!("{}.{i}", op.element);
        writer.apply(Operation {
            element: fschain_schema::ElementId::parse(&id)?,
            ..op.clone()
        })?;
    }
    writer.seal()?;
    Ok(())
}

/// Bytes on the topic for a block changing one element of a large layer.
fn one_change_bytes(work: &Path, s: &Scale, bin: &Bin, report: &mut Report) -> Result<()> {
    let wide_root = work.join("wide");
    let mut writer = new_root(&wide_root, "wide")?;
    populate(&mut writer, s.layer_elements, 10_000)?;
    writer.close()?;
    let w = wide_root.display().to_string();
    bin.run(&["publish", "--root", &w, "--checkpoint-every", "0"])?;
    let mut writer = ChainWriter::open(RootLayout::new(&wide_root))?;
    let mut rng = Rng(99);
    writer.apply(patch_op(rng.below(s.layer_elements), 1))?;
    writer.seal()?;
    writer.close()?;
    let layout = RootLayout::new(&wide_root);
    let head = *layout.snapshot_heights()?.last().unwrap_or(&0);
    let one = one_block_bytes(&layout, head)?;
    report.row(Row {
        what: format!(
            "bytes on the topic for a block changing one element of {}",
            s.layer_elements
        ),
        fschain: format!("{one} B"),
        baseline: format!("the state file: {} B", state_file_len(&layout, head)?),
        target: "<= 8 KiB".into(),
        met: Some(one <= 8192),
    });
    Ok(())
}

pub(crate) fn terminate(child: &mut Child) {
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
}

/// Times `btrfs send SNAPSHOT | btrfs receive DIR`, the stock tools piped,
/// with the send options fschain uses.
fn send_receive(snapshot: &Path, dir: &Path) -> Result<Duration> {
    std::fs::create_dir_all(dir)?;
    let t = Instant::now();
    let mut send = Command::new("btrfs")
        .args(["send", "-q"])
        .args(btrfs::send_options())
        .arg(snapshot)
        .stdout(Stdio::piped())
        .spawn()
        .context("running btrfs send")?;
    let stdout = send.stdout.take().context("btrfs send's output")?;
    let received = Command::new("btrfs")
        .args(["receive", "-q"])
        .arg(dir)
        .stdin(stdout)
        .status()
        .context("running btrfs receive")?;
    let sent = send.wait()?;
    let took = t.elapsed();
    if !sent.success() || !received.success() {
        bail!("btrfs send | btrfs receive failed (send {sent}, receive {received})");
    }
    Ok(took)
}

/// The pipeline fschain replaces, with nothing hashed, signed or checked:
/// `btrfs send [-p PARENT] BLOCK | zstd` produced to `topic` as it is
/// sent (512 KiB messages, acks=all), then consumed into `zstd -d | btrfs
/// receive DIR` as it arrives. Returns (produce, consume and receive, and
/// the `syncfs` that then makes what it received durable).
/// Each side makes its Kafka client inside its own clock, and the consumer
/// starts once the produce is acknowledged, as `fschain consume` does
/// after `fschain publish`: it reads every byte from the broker within
/// its time rather than having prefetched them during the produce.
fn plain_pipeline(
    brokers: &str,
    topic: &str,
    snapshot: &Path,
    parent: Option<&Path>,
    dir: &Path,
) -> Result<(Duration, Duration, Duration)> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    settle_disk();
    let t = Instant::now();
    let producer = raw_producer(brokers)?;
    let mut send = Command::new("btrfs");
    send.args(["send", "-q"]).args(btrfs::send_options());
    if let Some(p) = parent {
        send.arg("-p").arg(p);
    }
    let mut send = send
        .arg(snapshot)
        .stdout(Stdio::piped())
        .spawn()
        .context("running btrfs send")?;
    let stdout = send.stdout.take().context("btrfs send's output")?;
    /// Produces each 512 KiB of what is written as one message.
    struct Produce<'a> {
        producer: &'a BaseProducer,
        topic: &'a str,
        buf: Vec<u8>,
        messages: u64,
    }
    impl Produce<'_> {
        fn emit(&mut self) -> std::io::Result<()> {
            let mut record = BaseRecord::to(self.topic)
                .key("k")
                .payload(&self.buf)
                .partition(0);
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        self.producer.poll(Duration::from_millis(10));
                        record = back;
                    }
                }
            }
            self.messages += 1;
            self.buf.clear();
            Ok(())
        }
    }
    impl Write for Produce<'_> {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            let room = 512 * 1024 - self.buf.len();
            let n = data.len().min(room);
            self.buf.extend_from_slice(&data[..n]);
            if self.buf.len() == 512 * 1024 {
                self.emit()?;
            }
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            if !self.buf.is_empty() {
                self.emit()?;
            }
            Ok(())
        }
    }
    let mut sink = Produce {
        producer: &producer,
        topic,
        buf: Vec::with_capacity(512 * 1024),
        messages: 0,
    };
    let mut encoder = zstd::stream::Encoder::new(&mut sink, 1)?;
    std::io::copy(&mut { stdout }, &mut encoder)?;
    encoder.finish()?.flush()?;
    let messages = sink.messages;
    if !send.wait()?.success() {
        bail!("btrfs send failed");
    }
    wait_acknowledged(&producer, Duration::from_secs(600)).context("plain produce")?;
    let produced = t.elapsed();

    settle_disk();
    let t = Instant::now();
    let consumer = raw_consumer(brokers, topic)?;
    let mut receive = Command::new("btrfs")
        .args(["receive", "-q"])
        .arg(dir)
        .stdin(Stdio::piped())
        .spawn()
        .context("running btrfs receive")?;
    let stdin = receive.stdin.take().context("btrfs receive's input")?;
    let mut decoder = zstd::stream::write::Decoder::new(stdin)?;
    let mut got = 0;
    while got < messages {
        match consumer.poll(Duration::from_secs(30)) {
            Some(Ok(m)) => {
                if let Some(payload) = m.payload() {
                    decoder.write_all(payload)?;
                    got += 1;
                }
            }
            Some(Err(e)) => bail!("plain consume: {e}"),
            None => bail!("plain consume stalled at {got}/{messages}"),
        }
    }
    decoder.flush()?;
    drop(decoder);
    if !receive.wait()?.success() {
        bail!("btrfs receive failed");
    }
    let consumed = t.elapsed();
    let t = Instant::now();
    btrfs::sync_filesystem(dir)?;
    Ok((produced, consumed, t.elapsed()))
}

/// One block of `mb` MB of new state: 1 MB elements of pseudo-random hex.
fn large_change(writer: &mut ChainWriter, mb: usize) -> Result<()> {
    let mut rng = Rng(12345);
    for i in 0..mb {
        let mut text = String::with_capacity(1 << 20);
        while text.len() < (1 << 20) - 64 {
            rng.below(2);
            text.push_str(&format!("{:016x}", rng.0));
        }
        let state = json!({"blob": text})
            .as_object()
            .cloned()
            .unwrap_or_default();
        writer.apply(Operation {
            element: element(i),
            action: Action::Set,
            state: Some(state),
            reason: Some("bulk".into()),
            actor: None,
            signature: None,
        })?;
    }
    writer.seal()?;
    Ok(())
}

fn one_block_bytes(layout: &RootLayout, head: u64) -> Result<u64> {
    let key = fschain_producer::load_signing_key(layout)?;
    let mut sink = CountingSink(0);
    let policy = fschain_producer::outbox::StreamPolicy::default();
    fschain_producer::export::export_frames(
        layout,
        Some(head - 1),
        head,
        &policy,
        &key,
        &mut sink,
    )?;
    let events = fschain_store::ChainDir::new(layout.snapshot(head)).last_event_lines(1)?;
    Ok(sink.0 + events.iter().map(|l| l.len() as u64).sum::<u64>())
}

fn state_file_len(layout: &RootLayout, head: u64) -> Result<u64> {
    let dir = fschain_store::ChainDir::new(layout.snapshot(head));
    let event = fschain_schema::Event::from_canonical(&dir.last_event_lines(1)?[0])?;
    Ok(dir
        .state_bytes(&event.element)?
        .map_or(0, |b| b.len() as u64))
}

struct CountingSink(u64);

impl std::io::Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn raw_client(brokers: &str, topic: &str) -> Result<(BaseProducer, BaseConsumer)> {
    let producer = raw_producer(brokers)?;
    // Create the topic by producing one message, then start at its end.
    producer
        .send(BaseRecord::to(topic).key("k").payload("start").partition(0))
        .map_err(|(e, _)| e)?;
    wait_acknowledged(&producer, Duration::from_secs(10))?;
    let consumer = raw_consumer(brokers, topic)?;
    loop {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(m)) if m.payload() == Some(b"start".as_slice()) => break,
            Some(_) => {}
            None => bail!("raw baseline topic {topic} never answered"),
        }
    }
    Ok((producer, consumer))
}

/// The baselines' producer: acks=all, no linger, as large messages as the
/// site's.
fn raw_producer(brokers: &str) -> Result<BaseProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "0")
        .set("acks", "all")
        .set("message.max.bytes", "4194304")
        .create()?)
}

/// The baselines' consumer, assigned partition 0 of `topic` from its start.
fn raw_consumer(brokers: &str, topic: &str) -> Result<BaseConsumer> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-g"))
        // It reads by assignment and needs no offsets kept: no commits to
        // a group it never joined.
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.message.max.bytes", "4194304")
        .set("fetch.wait.max.ms", "20")
        // With librdkafka's default, a full prefetch queue puts the next
        // fetch off by a second. The site sets the same.
        .set("fetch.queue.backoff.ms", "20")
        .create()?;
    // The partition's leader first, as the site learns it before it
    // subscribes: assigned without it, the first fetch waits out a 500 ms
    // backoff.
    consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)?;
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// Produce one small message and wait until it is consumed, `n` times.
fn raw_round_trips(brokers: &str, topic: &str, n: usize) -> Result<Vec<Duration>> {
    let (producer, consumer) = raw_client(brokers, topic)?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let body = format!("{{\"n\":{i}}}");
        let t = Instant::now();
        producer
            .send(BaseRecord::to(topic).key("k").payload(&body).partition(0))
            .map_err(|(e, _)| e)?;
        wait_acknowledged(&producer, Duration::from_secs(10))?;
        loop {
            match consumer.poll(Duration::from_secs(10)) {
                Some(Ok(m)) if m.payload() == Some(body.as_bytes()) => break,
                Some(_) => {}
                None => bail!("raw round trip {i} timed out"),
            }
        }
        out.push(t.elapsed());
    }
    Ok(out)
}

/// Produce `bytes` in 512 KiB messages (acks=all), then consume them all
/// with a consumer made once the produce is acknowledged; each side's
/// client is made inside its clock.
fn raw_bulk(brokers: &str, topic: &str, bytes: u64) -> Result<(Duration, Duration)> {
    let chunk = vec![0x5au8; 512 * 1024];
    let count = bytes.div_ceil(chunk.len() as u64).max(1);
    let t = Instant::now();
    let producer = raw_producer(brokers)?;
    for _ in 0..count {
        let mut record = BaseRecord::to(topic).key("k").payload(&chunk).partition(0);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    producer.poll(Duration::from_millis(10));
                    record = back;
                }
            }
        }
    }
    wait_acknowledged(&producer, Duration::from_secs(600)).context("raw produce")?;
    let produced = t.elapsed();
    let t = Instant::now();
    let consumer = raw_consumer(brokers, topic)?;
    let mut got = 0;
    while got < count {
        match consumer.poll(Duration::from_secs(30)) {
            Some(Ok(m)) if m.payload().map(<[u8]>::len) == Some(chunk.len()) => got += 1,
            Some(Ok(_)) => {}
            Some(Err(e)) => bail!("raw consume: {e}"),
            None => bail!("raw consume stalled at {got}/{count}"),
        }
    }
    Ok((produced, t.elapsed()))
}
