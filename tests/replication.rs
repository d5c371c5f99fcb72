//! Replication through a real Apache Kafka broker (started by
//! scripts/test.sh) and real btrfs: a producer and two sites end to end,
//! the agent, crashes of a site and of a producer, duplicate, reordered and
//! corrupted frames on the topic, replay from a checkpoint, export/import.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    block_hashes, broker, events_of, fschain, fschain_with_input, fschain_within, produce_raw,
    sample_ops, scratch, split_frames, staging_entries, unique, Scratch,
};

struct Setup {
    s: Scratch,
    brokers: String,
    prefix: String,
    producer: String,
    pubkey: String,
}

impl Setup {
    fn new(name: &str) -> Option<Setup> {
        let brokers = broker(name)?;
        let s = scratch(name)?;
        let prefix = unique(name);
        fschain(&[
            "topics",
            "create",
            "--brokers",
            &brokers,
            "--prefix",
            &prefix,
        ])
        .ok();
        let producer = s.dir.join("producer").display().to_string();
        fschain(&["init", "--root", &producer, "--chain", "host1"]).ok();
        let pubkey = s.dir.join("producer.pub").display().to_string();
        let key = fschain(&["key", "show", "--root", &producer]).ok().stdout();
        std::fs::write(&pubkey, key).unwrap();
        Some(Setup {
            s,
            brokers,
            prefix,
            producer,
            pubkey,
        })
    }

    fn kafka<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut v = args.to_vec();
        v.extend(["--brokers", &self.brokers, "--prefix", &self.prefix]);
        v
    }

    fn apply(&self, ops: &str, per_block: usize) {
        let n = per_block.to_string();
        fschain_with_input(
            &["apply", "--root", &self.producer, "--block-ops", &n],
            Some(ops.as_bytes()),
        )
        .ok();
    }

    fn publish(&self, extra: &[&str]) -> common::Run {
        let mut args = vec!["publish", "--root", &self.producer];
        args.extend(extra);
        fschain(&self.kafka(&args))
    }

    /// The whole chain as an export file of 1 KiB chunks.
    fn export_small_chunks(&self) -> std::path::PathBuf {
        let export = self.s.dir.join("all.fsx");
        let out = export.to_str().unwrap();
        fschain(&[
            "export",
            "--root",
            &self.producer,
            "--chunk-size",
            "1K",
            "-o",
            out,
        ])
        .ok();
        export
    }

    fn site_root(&self, site: &str) -> String {
        self.s
            .dir
            .join(format!("site-{site}"))
            .display()
            .to_string()
    }

    fn consume(&self, site: &str) -> common::Run {
        let root = self.site_root(site);
        fschain(&self.kafka(&[
            "consume",
            "--site",
            site,
            "--root",
            &root,
            "--trust",
            &self.pubkey,
            "--until-idle",
        ]))
    }

    fn copy_of(&self, site: &str) -> String {
        format!("{}/host1", self.site_root(site))
    }

    /// The site's copy verifies and has the producer's blocks, hash for hash.
    fn assert_same_as_producer(&self, site: &str) {
        let copy = self.copy_of(site);
        fschain(&["verify", "--root", &copy]).ok();
        assert_eq!(
            block_hashes(&copy),
            block_hashes(&self.producer),
            "site {site}"
        );
        assert_same_files(
            &Path::new(&self.producer).join("layer/states"),
            &Path::new(&copy).join(format!("blocks/{}/states", last_snapshot(&copy))),
        );
    }
}

fn last_snapshot(root: &str) -> String {
    let mut names: Vec<String> = std::fs::read_dir(Path::new(root).join("blocks"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names.pop().unwrap()
}

fn assert_same_files(a: &Path, b: &Path) {
    let list = |root: &Path| {
        let mut out = Vec::new();
        let mut stack = vec![root.to_owned()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push((
                        p.strip_prefix(root).unwrap().to_owned(),
                        std::fs::read(&p).unwrap(),
                    ));
                }
            }
        }
        out.sort();
        out
    };
    let (la, lb) = (list(a), list(b));
    assert_eq!(la.len(), lb.len(), "{} vs {}", a.display(), b.display());
    assert!(
        la == lb,
        "files differ between {} and {}",
        a.display(),
        b.display()
    );
}

#[test]
fn a_producer_and_two_sites_end_to_end_then_the_agent() {
    let Some(t) = Setup::new("e2e") else { return };
    t.apply(&sample_ops(60), 20);
    let published = t.publish(&[]).ok().stdout();
    assert!(published.contains("published 4 blocks"), "{published}");
    t.consume("east").ok();
    t.consume("west").ok();
    t.assert_same_as_producer("east");
    t.assert_same_as_producer("west");
    // Nothing new: publishing again publishes nothing.
    assert!(t.publish(&[]).ok().stdout().contains("published 0 blocks"));

    // Operations through the ops topic, applied by the agent.
    let ops: Vec<(Vec<u8>, Vec<u8>)> = sample_ops(90)
        .lines()
        .skip(60)
        .map(|l| (b"host1".to_vec(), l.as_bytes().to_vec()))
        .chain([
            (b"host1".to_vec(), b"{not json".to_vec()),
            (
                b"other-chain".to_vec(),
                sample_ops(1).trim().as_bytes().to_vec(),
            ),
        ])
        .collect();
    produce_raw(&t.brokers, &format!("{}.ops", t.prefix), &ops);
    let agent = fschain(&t.kafka(&[
        "agent",
        "--root",
        &t.producer,
        "--block-ops",
        "10",
        "--until-idle",
    ]))
    .ok();
    assert!(
        agent.stderr().contains("applied 30 operations"),
        "{}",
        agent.stderr()
    );
    assert!(agent.stderr().contains("rejected 1"), "{}", agent.stderr());
    // A healthy run logs no ERROR: the end of a partition is expected.
    assert!(!agent.stderr().contains("ERROR"), "{}", agent.stderr());
    // A second run applies nothing twice.
    let again = fschain(&t.kafka(&["agent", "--root", &t.producer, "--until-idle"])).ok();
    assert!(
        again.stderr().contains("applied 0 operations"),
        "{}",
        again.stderr()
    );
    assert!(!again.stderr().contains("ERROR"), "{}", again.stderr());
    t.consume("east").ok();
    t.assert_same_as_producer("east");
    let events = fschain(&[
        "history",
        "--root",
        &t.copy_of("east"),
        "--json",
        "service:nginx",
    ]);
    assert_eq!(
        events.code(),
        fschain(&["history", "--root", &t.producer, "--json", "service:nginx"]).code()
    );
    // The events topic holds every event, keyed chain/element.
    assert_eq!(
        block_hashes(&t.copy_of("east")).len(),
        block_hashes(&t.producer).len()
    );
}

/// A state of several MiB (a large file recorded in full) is published:
/// the block carries it to the site, and its event goes to the events
/// topic without the state (it would exceed the broker's message size and
/// stop the chain's publishing), named by a header and still carrying the
/// event's hash, which the full line in the block's `events.log` checks.
#[test]
fn a_state_of_several_mib_is_published_and_its_event_goes_without_it() {
    use fschain_schema::wire::STATE_OMITTED_HEADER;
    use rdkafka::message::{Headers, Message};
    let Some(t) = Setup::new("bigstate") else {
        return;
    };
    // 5 MiB of hex that does not compress: more than the broker takes in
    // one message (4 MiB here, 1 MiB by default).
    let big = bulky_ops(1, 5 << 20);
    let state = serde_json::from_str::<serde_json::Value>(&big).unwrap()["state"].clone();
    let small = r#"{"element":"file:/etc/hostname","action":"set","state":{"content":"h1"}}"#;
    t.apply(&format!("{small}\n{big}"), 10);
    t.publish(&[]).ok();
    t.consume("east").ok();
    t.assert_same_as_producer("east");
    let history = fschain(&[
        "history",
        "--root",
        &t.producer,
        "--json",
        "file:/srv/bulk0",
    ])
    .ok()
    .stdout();
    let history: serde_json::Value = serde_json::from_str(&history).unwrap();
    let line = &history["events"][0]["event"];
    let messages = common::topic_messages(&t.brokers, &format!("{}.events", t.prefix));
    assert_eq!(messages.len(), 2);
    let by_key = |key: &str| {
        messages
            .iter()
            .find(|m| m.key() == Some(key.as_bytes()))
            .unwrap_or_else(|| panic!("no event keyed {key}"))
    };
    let sent = by_key("host1/file:/srv/bulk0");
    let value: serde_json::Value = serde_json::from_slice(sent.payload().unwrap()).unwrap();
    assert_eq!(value["hash"], line["hash"], "{value}");
    assert_eq!(value["state_hash"], line["state_hash"]);
    assert_eq!(value["op"]["action"], "set");
    assert!(value["op"].get("state").is_none(), "{value}");
    let header = sent
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == STATE_OMITTED_HEADER));
    let omitted = std::str::from_utf8(header.and_then(|h| h.value).unwrap()).unwrap();
    let state_len = serde_json::to_string(&state).unwrap().len();
    assert_eq!(omitted, state_len.to_string());
    // A short event goes as it is, with no such header.
    let short = by_key("host1/file:/etc/hostname");
    let short_value: serde_json::Value = serde_json::from_slice(short.payload().unwrap()).unwrap();
    assert_eq!(short_value["op"]["state"]["content"], "h1");
    assert!(short
        .headers()
        .is_none_or(|h| h.iter().all(|h| h.key != STATE_OMITTED_HEADER)));
}

fn spawn(args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_fschain"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// A chunk whose bytes match its own hash but are not the producer's (a
/// forged chunk at a genuine chunk's place, ahead of it on the topic) is
/// refused on arrival, before anything of it reaches `btrfs receive`: the
/// genuine chunk after it is fed instead, and the site ends equal to the
/// producer. Were the forged bytes fed, the genuine chunk would be a
/// duplicate and the block could never be received.
#[test]
fn a_chunk_the_producer_did_not_sign_never_reaches_receive() {
    use fschain_schema::wire::{decode_frame, Frame};
    use fschain_schema::{ChunkHash, Digest};
    let Some(t) = Setup::new("forged") else {
        return;
    };
    t.apply(&sample_ops(40), 40);
    let export = t.export_small_chunks();
    let frames = split_frames(&std::fs::read(&export).unwrap());
    let key = b"host1".to_vec();
    let mut messages = Vec::new();
    let mut forged = 0;
    for f in &frames {
        if let Ok(Frame::Chunk(chunk)) = decode_frame(f) {
            if chunk.meta.index == 1 {
                let mut fake = chunk.clone();
                for b in &mut fake.data {
                    *b = b.wrapping_add(1);
                }
                fake.meta.sha256 = ChunkHash(Digest::of(&fake.data));
                fake.check().unwrap();
                messages.push((key.clone(), fake.to_frame().unwrap()));
                forged += 1;
            }
        }
        messages.push((key.clone(), f.clone()));
    }
    assert!(forged > 0, "no block of more than one chunk to forge in");
    produce_raw(&t.brokers, &format!("{}.blocks", t.prefix), &messages);
    let run = t.consume("east").ok();
    assert_eq!(
        run.stderr()
            .matches("not part of its signed stream")
            .count(),
        forged,
        "{}",
        run.stderr()
    );
    t.assert_same_as_producer("east");
}

#[test]
fn a_site_killed_mid_block_resumes_and_a_producer_killed_mid_publish_republishes() {
    let Some(t) = Setup::new("crash") else { return };
    // Blocks of many small chunks, so that the kills land mid-block.
    t.apply(&sample_ops(150), 50);
    t.apply(&common::sample_ops_between(150, 1200), 1050);

    // A site killed while it receives a block (through import: the same
    // site code as consume, without the broker's group timing).
    let export = t.export_small_chunks();
    let root = t.site_root("north");
    let copy = t.copy_of("north");
    let mut import = spawn(&[
        "import",
        "--site",
        "north",
        "--root",
        &root,
        "--trust",
        &t.pubkey,
        export.to_str().unwrap(),
    ]);
    // Chunks go to `btrfs receive` as they come: mid-way is a staging
    // subvolume being received.
    common::wait_for(
        "the last block to be mid-way",
        Duration::from_secs(60),
        || {
            Path::new(&copy).join("blocks/0000000003").exists()
                && !staging_entries(&copy).is_empty()
        },
    );
    import.kill().unwrap();
    import.wait().unwrap();
    // What the site holds reads and verifies as it is: blocks 0..=3.
    fschain(&["verify", "--root", &copy]).ok();
    assert_eq!(block_hashes(&copy).len(), 4);
    // Producer: kill publish once part of the big block is on the topic.
    let mut publish = spawn(&t.kafka(&["publish", "--root", &t.producer, "--chunk-size", "1K"]));
    let published = Path::new(&t.producer).join("meta/published");
    // `publish` records a batch of blocks at once, so it may pass 3
    // without stopping there.
    common::wait_for(
        "blocks 0..=3 to be published",
        Duration::from_secs(60),
        || {
            std::fs::read(&published)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["height"].as_u64())
                .is_some_and(|h| h >= 3)
        },
    );
    std::thread::sleep(Duration::from_millis(100));
    publish.kill().unwrap();
    publish.wait().unwrap();
    // The site, through Kafka now, resumes: blocks it holds are dropped,
    // the partial block waits; the block published again, under a new
    // attempt, replaces it.
    t.consume("north").ok();
    assert!(
        staging_entries(&copy).is_empty(),
        "{:?}",
        staging_entries(&copy)
    );
    t.publish(&["--chunk-size", "1K"]).ok();
    t.consume("north").ok();
    t.assert_same_as_producer("north");
    assert!(
        staging_entries(&copy).is_empty(),
        "{:?}",
        staging_entries(&copy)
    );

    // A consume killed mid-block restarts from its committed offset.
    t.apply(&common::sample_ops_between(1200, 2000), 800);
    t.publish(&["--chunk-size", "1K"]).ok();
    let mut site = spawn(&t.kafka(&[
        "consume", "--site", "north", "--root", &root, "--trust", &t.pubkey,
    ]));
    common::wait_for(
        "the new block to be mid-way",
        Duration::from_secs(120),
        || !staging_entries(&copy).is_empty(),
    );
    site.kill().unwrap();
    site.wait().unwrap();
    t.consume("north").ok();
    t.assert_same_as_producer("north");
    assert!(
        staging_entries(&copy).is_empty(),
        "{:?}",
        staging_entries(&copy)
    );
}

#[test]
fn duplicated_reordered_and_corrupted_frames_on_the_topic() {
    let Some(t) = Setup::new("frames") else {
        return;
    };
    t.apply(&sample_ops(40), 10);
    let export = t.export_small_chunks();
    let frames = split_frames(&std::fs::read(&export).unwrap());
    assert!(frames.len() > 10, "{} frames", frames.len());
    let key = b"host1".to_vec();
    let mut messages: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    // Junk that is not ours, and a corrupted copy of every third frame first.
    messages.push((key.clone(), b"hello, not a frame".to_vec()));
    messages.push((b"host1".to_vec(), vec![0; 3]));
    for (i, f) in frames.iter().enumerate() {
        if i % 3 == 0 {
            let mut bad = f.clone();
            let last = bad.len() - 1;
            bad[last] ^= 0x40;
            messages.push((key.clone(), bad));
        }
    }
    // Every frame twice, each block's frames reversed (chunks before the
    // manifest, last chunk first).
    let mut block: Vec<Vec<u8>> = Vec::new();
    let mut blocks: Vec<Vec<Vec<u8>>> = Vec::new();
    for f in &frames {
        if f[4] == 1 && !block.is_empty() {
            blocks.push(std::mem::take(&mut block));
        }
        block.push(f.clone());
    }
    blocks.push(block);
    for b in &blocks {
        for f in b.iter().rev() {
            messages.push((key.clone(), f.clone()));
        }
        for f in b {
            messages.push((key.clone(), f.clone()));
        }
    }
    produce_raw(&t.brokers, &format!("{}.blocks", t.prefix), &messages);
    let run = t.consume("south").ok();
    assert!(
        run.stderr().contains("not an fschain frame"),
        "{}",
        run.stderr()
    );
    assert!(
        run.stderr().contains("hash mismatch") || run.stderr().contains("rejecting"),
        "{}",
        run.stderr()
    );
    t.assert_same_as_producer("south");
}

#[test]
fn replay_rebuilds_a_site_from_the_latest_checkpoint_and_import_needs_no_kafka() {
    let Some(t) = Setup::new("replay") else {
        return;
    };
    t.apply(&sample_ops(70), 10);
    t.publish(&["--checkpoint-every", "3"]).ok();
    let root = t.site_root("fresh");
    let run = fschain(&t.kafka(&[
        "replay", "--site", "fresh", "--root", &root, "--trust", &t.pubkey,
    ]))
    .ok();
    assert!(run.stderr().contains("replay:"), "{}", run.stderr());
    let copy = t.copy_of("fresh");
    fschain(&["verify", "--root", &copy]).ok();
    // Blocks 6 and 7 (the checkpoint at 6 and one after it); the chain's
    // headers all the way from genesis, same hashes.
    assert_eq!(block_hashes(&copy), block_hashes(&t.producer));
    assert_eq!(last_snapshot(&copy), "0000000007");
    assert!(!Path::new(&copy).join("blocks/0000000005").exists());
    assert!(Path::new(&copy).join("blocks/0000000006").exists());
    // Replay refuses a site that already holds chains.
    let again = fschain(&t.kafka(&[
        "replay", "--site", "fresh", "--root", &root, "--trust", &t.pubkey,
    ]));
    assert_eq!(again.code(), 2);
    assert!(
        again.stderr().contains("already holds"),
        "{}",
        again.stderr()
    );
    // Consume carries on from where replay stopped.
    t.apply(&common::sample_ops_between(70, 80), 10);
    t.publish(&["--checkpoint-every", "3"]).ok();
    fschain(&t.kafka(&[
        "consume",
        "--site",
        "fresh",
        "--root",
        &root,
        "--trust",
        &t.pubkey,
        "--until-idle",
    ]))
    .ok();
    t.assert_same_as_producer("fresh");

    // A site with an untrusted key takes nothing.
    let other = t.s.dir.join("other.pub");
    std::fs::write(&other, "11".repeat(32)).unwrap();
    let stranger = t.site_root("stranger");
    let run = fschain(&t.kafka(&[
        "consume",
        "--site",
        "stranger",
        "--root",
        &stranger,
        "--trust",
        other.to_str().unwrap(),
        "--until-idle",
    ]))
    .ok();
    assert!(
        run.stderr().contains("not among the trusted keys"),
        "{}",
        run.stderr()
    );
    assert!(!Path::new(&stranger)
        .join("host1/blocks/0000000000")
        .exists());

    // export | import, without Kafka.
    let out = fschain(&["export", "--root", &t.producer]).ok();
    let site = t.site_root("ssh");
    fschain_with_input(
        &[
            "import", "--site", "ssh", "--root", &site, "--trust", &t.pubkey, "-",
        ],
        Some(&out.output.stdout),
    )
    .ok();
    t.assert_same_as_producer("ssh");

    // A stream cut at a frame boundary inside a block is an error that
    // names the block and the chunks that arrived, never "0 applied".
    let frames = common::split_frames(&std::fs::read(t.export_small_chunks()).unwrap());
    let manifests: Vec<usize> = frames
        .iter()
        .enumerate()
        .filter(|(_, f)| {
            matches!(
                fschain_schema::wire::decode_frame(f),
                Ok(fschain_schema::wire::Frame::Manifest(_))
            )
        })
        .map(|(i, _)| i)
        .collect();
    let last = *manifests.last().unwrap();
    assert!(
        frames.len() > last + 2,
        "the last block needs 2 or more chunks"
    );
    let cut: Vec<u8> = frames[..last + 2].concat();
    let site = t.site_root("cut");
    let run = fschain_with_input(
        &[
            "import", "--site", "cut", "--root", &site, "--trust", &t.pubkey, "-",
        ],
        Some(&cut),
    )
    .code_is(2);
    let height = manifests.len() - 1;
    assert!(
        run.stderr()
            .contains(&format!("the input ends inside block {height}: 1 of its")),
        "{}",
        run.stderr()
    );
}

/// All of a chain's frames produced at once, so that they travel in one
/// record batch and the checkpoint replay starts at lies inside it: a broker
/// answers a fetch from there with the whole batch, or (tansu 0.6) with the
/// batches after it, which the site notices and reads from further back.
#[test]
fn replay_starts_at_a_checkpoint_inside_a_record_batch() {
    let Some(t) = Setup::new("midbatch") else {
        return;
    };
    t.apply(&sample_ops(70), 10);
    let export = t.s.dir.join("checkpoints.fsx");
    fschain(&[
        "export",
        "--root",
        &t.producer,
        "--checkpoint-every",
        "3",
        "--chunk-size",
        "1K",
        "-o",
        export.to_str().unwrap(),
    ])
    .ok();
    let frames = split_frames(&std::fs::read(&export).unwrap());
    let messages: Vec<(Vec<u8>, Vec<u8>)> =
        frames.into_iter().map(|f| (b"host1".to_vec(), f)).collect();
    produce_raw(&t.brokers, &format!("{}.blocks", t.prefix), &messages);
    let root = t.site_root("late");
    fschain_within(
        &t.kafka(&[
            "replay", "--site", "late", "--root", &root, "--trust", &t.pubkey,
        ]),
        Duration::from_secs(60),
    )
    .ok();
    let copy = t.copy_of("late");
    assert_eq!(block_hashes(&copy), block_hashes(&t.producer));
    assert_eq!(last_snapshot(&copy), "0000000007");
    assert!(!Path::new(&copy).join("blocks/0000000005").exists());
    t.assert_same_as_producer("late");
}

/// An agent that resumes inside a record batch of operations (as after a
/// crash past a seal that ended mid-batch) applies the rest of that batch:
/// on a broker that answers a fetch from there with the batches after it
/// (tansu 0.6), the agent reads from further back and skips what it had.
#[test]
fn an_agent_resuming_inside_a_record_batch_applies_the_rest_of_it() {
    let Some(t) = Setup::new("agentbatch") else {
        return;
    };
    // Ten operations in one record batch.
    produce_raw(
        &t.brokers,
        &format!("{}.ops", t.prefix),
        &common::host1_ops(0, 10),
    );
    let agent = |extra: &[&str]| {
        let mut args = vec!["agent", "--root", &t.producer, "--until-idle"];
        args.extend(extra);
        fschain_within(&t.kafka(&args), Duration::from_secs(60)).ok()
    };
    let first = agent(&["--block-ops", "100"]);
    assert!(
        first.stderr().contains("applied 10 operations"),
        "{}",
        first.stderr()
    );
    // Its record says where reading resumes: put that six operations back,
    // inside the batch, as if the last block had ended there.
    let ingest = Path::new(&t.producer).join("meta/ingest");
    let mut record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&ingest).unwrap()).unwrap();
    let offsets = record["sealed"]["offsets"].as_object_mut().unwrap();
    assert_eq!(offsets.len(), 1, "{record}");
    let (_, end) = offsets.iter_mut().next().unwrap();
    let resume = end.as_i64().unwrap() - 4;
    *end = serde_json::json!(resume);
    std::fs::write(&ingest, serde_json::to_vec(&record).unwrap()).unwrap();
    let events_before = events_of(&t.producer);
    let second = agent(&[]);
    assert!(
        second.stderr().contains("applied 4 operations"),
        "{}",
        second.stderr()
    );
    assert_eq!(events_of(&t.producer), events_before + 4);
    fschain(&["verify", "--root", &t.producer]).ok();
}

/// How many events a root's chain holds.
/// A cluster of its own (scripts/kafka.sh), stopped even when the test fails.
struct OwnCluster {
    port: String,
}

impl OwnCluster {
    fn up(port: &str) -> (OwnCluster, String) {
        let bootstrap = common::kafka_script("up", port, &[]);
        (
            OwnCluster {
                port: port.to_owned(),
            },
            bootstrap,
        )
    }

    fn kill(&self, node: &str) {
        common::kafka_script("kill", &self.port, &[node]);
    }

    fn start(&self, node: &str) {
        common::kafka_script("start", &self.port, &[node]);
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        common::kafka_script("down", &self.port, &[]);
    }
}

#[test]
fn a_broker_restart_loses_nothing() {
    // Needs the shared broker only to know that brokers are wanted here.
    if broker("restart").is_none() {
        return;
    }
    let Some(s) = scratch("restart") else { return };
    let port = (21000 + std::process::id() % 8000).to_string();
    let (cluster, brokers) = OwnCluster::up(&port);
    let prefix = unique("restart");
    let k = |args: &[&str]| {
        let v = common::with_topics(args, &brokers, &prefix);
        fschain(&v.iter().map(String::as_str).collect::<Vec<_>>())
    };
    k(&["topics", "create"]).ok();
    let (producer, key) = common::producer_root(&s.dir);
    let apply = |ops: String| {
        fschain_with_input(
            &["apply", "--root", &producer, "--block-ops", "10"],
            Some(ops.as_bytes()),
        )
        .ok();
    };
    let consume = |site: &str, root: &str| {
        k(&[
            "consume",
            "--site",
            site,
            "--root",
            root,
            "--trust",
            &key,
            "--until-idle",
        ])
        .ok();
    };
    apply(sample_ops(30));
    k(&["publish", "--root", &producer]).ok();
    let site = s.dir.join("site").display().to_string();
    consume("a", &site);
    // The broker is killed (kill -9) and restarted on the same log dirs.
    cluster.kill("1");
    apply(common::sample_ops_between(30, 60));
    // Publishing with the broker away fails clearly and records nothing.
    let quick = s.dir.join("quick.toml");
    std::fs::write(&quick, "[kafka]\n\"message.timeout.ms\" = \"2000\"\n").unwrap();
    let down = k(&[
        "--config",
        quick.to_str().unwrap(),
        "publish",
        "--root",
        &producer,
    ]);
    assert!(down.stderr().contains("kafka"), "{}", down.stderr());
    assert_ne!(down.code(), 0);
    cluster.start("1");
    k(&["publish", "--root", &producer]).ok();
    // A new site gets everything from before and after the restart.
    let fresh = s.dir.join("fresh").display().to_string();
    consume("b", &fresh);
    consume("a", &site);
    for copy in [format!("{site}/host1"), format!("{fresh}/host1")] {
        fschain(&["verify", "--root", &copy]).ok();
        assert_eq!(block_hashes(&copy), block_hashes(&producer));
    }
}

/// Row 12 of the fault matrix: a producer root restored from an older
/// backup (its head behind the topic, then a different block at a height
/// the topic holds) is refused by publish and by the agent, which say why;
/// nothing of it reaches the topic.
#[test]
fn a_root_restored_from_an_old_backup_is_not_published() {
    let Some(t) = Setup::new("diverged") else {
        return;
    };
    t.apply(&sample_ops(20), 10);
    let backup = t.s.dir.join("backup");
    common::backup_root(Path::new(&t.producer), &backup);
    t.apply(&common::sample_ops_between(20, 40), 10);
    t.publish(&[]).ok();
    let backup = backup.display().to_string();
    let refused = |run: common::Run, what: &str| {
        let err = run.code_is(2).stderr();
        assert!(
            err.contains("restored from an older backup") && err.contains(what),
            "{err}"
        );
    };
    // Behind the topic.
    refused(
        fschain(&t.kafka(&["publish", "--root", &backup])),
        "this root's head is block 2, behind it",
    );
    // Then a block of its own at a height the topic holds.
    let own: String = (0..20)
        .map(|i| {
            format!(
                "{{\"element\":\"service:forked\",\"action\":\"set\",\"state\":{{\"n\":{i}}}}}\n"
            )
        })
        .collect();
    fschain_with_input(
        &["apply", "--root", &backup, "--block-ops", "10"],
        Some(own.as_bytes()),
    )
    .ok();
    refused(
        fschain(&t.kafka(&["publish", "--root", &backup])),
        "this root's block 4 is",
    );
    refused(
        fschain(&t.kafka(&["agent", "--root", &backup, "--until-idle"])),
        "this root's block 4 is",
    );
    // The topic still holds the producer's chain only.
    t.consume("east").ok();
    t.assert_same_as_producer("east");
}

/// Row 10 of the fault matrix: the topic's records below the latest
/// checkpoint are deleted. A fresh site replays from that checkpoint; a
/// site that had read only part of the deleted range stops with an error
/// that says to run replay, and keeps what it holds.
#[test]
fn records_deleted_below_the_checkpoint_a_fresh_site_replays_one_behind_is_told_to() {
    let Some(t) = Setup::new("deleted") else {
        return;
    };
    t.apply(&sample_ops(30), 10);
    t.publish(&["--checkpoint-every", "3"]).ok();
    t.consume("behind").ok();
    let behind = block_hashes(&t.copy_of("behind"));
    assert_eq!(behind.len(), 4);
    t.apply(&common::sample_ops_between(30, 70), 10);
    t.publish(&["--checkpoint-every", "3"]).ok();
    let topic = format!("{}.blocks", t.prefix);
    let (partition, checkpoint) =
        common::latest_full_manifest(&t.brokers, &topic).expect("a checkpoint on the topic");
    assert!(checkpoint > 0);
    common::delete_records(&t.brokers, &topic, partition, checkpoint);

    let root = t.site_root("fresh");
    fschain(&t.kafka(&[
        "replay", "--site", "fresh", "--root", &root, "--trust", &t.pubkey,
    ]))
    .ok();
    let copy = t.copy_of("fresh");
    fschain(&["verify", "--root", &copy]).ok();
    assert_eq!(block_hashes(&copy), block_hashes(&t.producer));
    assert!(Path::new(&copy).join("blocks/0000000006").exists());
    assert!(!Path::new(&copy).join("blocks/0000000005").exists());
    assert!(staging_entries(&copy).is_empty());

    let run = fschain(&t.kafka(&[
        "consume",
        "--site",
        "behind",
        "--root",
        &t.site_root("behind"),
        "--trust",
        &t.pubkey,
        "--until-idle",
        "--no-index",
    ]));
    assert!(
        !run.output.status.success(),
        "a site behind the deleted range went on"
    );
    assert!(
        run.stderr().contains("were deleted") && run.stderr().contains("fschain replay"),
        "{}",
        run.stderr()
    );
    fschain(&["verify", "--root", &t.copy_of("behind")]).ok();
    assert_eq!(block_hashes(&t.copy_of("behind")), behind);
}

/// The number in "N <what>" in a summary line.
fn count_in(text: &str, what: &str) -> u64 {
    let at = text
        .find(what)
        .unwrap_or_else(|| panic!("no {what:?} in {text}"));
    text[..at]
        .split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count before {what:?} in {text}"))
}

/// Row 6 of the fault matrix: a site dies after receiving a block and
/// before committing its offset. On restart it reads that block again
/// from the topic, drops it as held, and applies only the blocks after it.
#[test]
fn a_site_killed_between_its_receive_and_its_offset_commit_applies_nothing_twice() {
    let Some(t) = Setup::new("commit") else {
        return;
    };
    t.apply(&sample_ops(50), 10);
    t.publish(&[]).ok();
    let root = t.site_root("north");
    common::fschain_crashing_at(
        "site-applied:3",
        &t.kafka(&[
            "consume",
            "--site",
            "north",
            "--root",
            &root,
            "--trust",
            &t.pubkey,
            "--until-idle",
            "--no-index",
        ]),
    );
    let copy = t.copy_of("north");
    fschain(&["verify", "--root", &copy]).ok();
    // The third block is in place; the next may have been finishing on
    // its own thread when the process died, and be in place too.
    let held = block_hashes(&copy).len() as u64;
    assert!(
        held >= 3,
        "{held} blocks in place after the third was applied"
    );
    let run = t.consume("north").ok();
    let total = block_hashes(&t.producer).len() as u64;
    assert!(held < total, "the crash came after the last block");
    assert_eq!(count_in(&run.stderr(), "blocks applied"), total - held);
    assert!(
        count_in(&run.stderr(), "duplicates dropped") >= 1,
        "the uncommitted block was not read again: {}",
        run.stderr()
    );
    t.assert_same_as_producer("north");
    assert!(staging_entries(&copy).is_empty());
}

/// Row 5 of the fault matrix: the agent dies after sealing a block and
/// before publishing it, then dies in the middle of publishing a block's
/// chunks. Each restart publishes what was sealed, applies the operations
/// not yet sealed, and no operation is applied twice or lost.
#[test]
fn an_agent_killed_after_sealing_and_mid_chunks_loses_and_repeats_nothing() {
    let Some(t) = Setup::new("agent-crash") else {
        return;
    };
    t.apply(&sample_ops(20), 10);
    t.publish(&[]).ok();
    produce_raw(
        &t.brokers,
        &format!("{}.ops", t.prefix),
        &common::host1_ops(20, 80),
    );
    let agent = |extra: &[&'static str]| {
        let mut args = vec!["agent", "--root", &t.producer, "--block-ops", "10"];
        args.extend(extra);
        args.extend(["--until-idle", "--chunk-size", "1K"]);
        t.kafka(&args)
    };
    let head_before = block_hashes(&t.producer).len();
    common::fschain_crashing_at("agent-sealed:2", &agent(&[]));
    assert_eq!(block_hashes(&t.producer).len(), head_before + 2);
    common::fschain_crashing_at("chunk-sent:3", &agent(&[]));
    fschain(&agent(&[])).ok();
    // Every operation once: 20 applied directly, 60 through the topic.
    assert_eq!(events_of(&t.producer), 80);
    assert_eq!(block_hashes(&t.producer).len(), head_before + 6);
    t.consume("east").ok();
    t.assert_same_as_producer("east");
}

/// A small btrfs of its own (scripts/btrfs-loop.sh), unmounted and its
/// image removed even when the test fails.
struct SmallBtrfs {
    mount: String,
    image: String,
}

impl SmallBtrfs {
    fn up(name: &str, size: &str) -> SmallBtrfs {
        let small = SmallBtrfs {
            mount: format!("/tmp/{name}"),
            image: format!("/var/tmp/{name}.img"),
        };
        small.script(&["up", &small.mount, size]);
        small
    }

    fn script(&self, args: &[&str]) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/btrfs-loop.sh");
        let out = Command::new(script)
            .args(args)
            .env("FSCHAIN_TEST_IMAGE", &self.image)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "btrfs-loop.sh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn available(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1", &self.mount])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .unwrap()
    }
}

impl Drop for SmallBtrfs {
    fn drop(&mut self) {
        self.script(&["down", &self.mount]);
    }
}

/// Operations on `n` files whose states hold `bytes` of incompressible
/// text each.
fn bulky_ops(n: usize, bytes: usize) -> String {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = String::new();
    for i in 0..n {
        let content: String = (0..bytes / 16)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                format!("{x:016x}")
            })
            .collect();
        out.push_str(&format!(
            "{{\"element\":\"file:/srv/bulk{i}\",\"action\":\"set\",\"state\":{{\"content\":\"{content}\"}}}}\n"
        ));
    }
    out
}

/// Row 7 of the fault matrix: a site's file system fills up while it
/// receives a block. It logs an error that names the full file system,
/// keeps no partial snapshot, applies nothing of that block, and once space
/// is freed receives it by itself.
#[test]
fn a_site_whose_disk_fills_up_keeps_nothing_partial_and_resumes_once_freed() {
    let Some(t) = Setup::new("disk-full") else {
        return;
    };
    t.apply(&sample_ops(20), 10);
    t.apply(&bulky_ops(20, 400_000), 20);
    t.publish(&[]).ok();
    let small = SmallBtrfs::up(&unique("fschain-full"), "128M");
    let root = format!("{}/site", small.mount);
    let filler = format!("{}/filler", small.mount);
    // Room for the small blocks, not for the bulky one (some 16 MB).
    let room = small.available().saturating_sub(6 << 20);
    Command::new("fallocate")
        .args(["-l", &room.to_string(), &filler])
        .status()
        .unwrap();
    let log = t.s.dir.join("consume.log");
    let mut site = Command::new(env!("CARGO_BIN_EXE_fschain"))
        .args(t.kafka(&[
            "consume",
            "--site",
            "full",
            "--root",
            &root,
            "--trust",
            &t.pubkey,
            "--no-index",
        ]))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let copy = format!("{root}/host1");
    let said = || std::fs::read_to_string(&log).unwrap_or_default();
    common::wait_for(
        "the site to report its full disk",
        Duration::from_secs(60),
        || said().contains("is full"),
    );
    assert!(
        said().contains(&format!("the file system holding {root} is full")),
        "{}",
        said()
    );
    assert!(!said().contains("does not check out"), "{}", said());
    assert_eq!(
        block_hashes(&copy).len(),
        block_hashes(&t.producer).len() - 1
    );
    assert!(
        staging_entries(&copy).is_empty(),
        "{:?}",
        staging_entries(&copy)
    );
    std::fs::remove_file(&filler).unwrap();
    common::wait_for(
        "the site to receive the bulky block",
        Duration::from_secs(120),
        || common::block_count(&copy) == common::block_count(&t.producer),
    );
    let _ = Command::new("kill").arg(site.id().to_string()).status();
    site.wait().unwrap();
    fschain(&["verify", "--root", &copy]).ok();
    assert_eq!(block_hashes(&copy), block_hashes(&t.producer));
    assert!(staging_entries(&copy).is_empty());
}

/// Lines of a log that say a block was put in place, as (chain, height).
fn blocks_in_place(log: &Path) -> Vec<(String, u64)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("block verified and in place"))
        .map(|l| {
            let field = |name: &str| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .unwrap()
                    .to_owned()
            };
            (field("chain="), field("height=").parse().unwrap())
        })
        .collect()
}

/// Row 9 of the fault matrix: two members of one site's consumer group
/// share its chains; one is killed (SIGKILL). The other takes its
/// partitions over and catches its chains up; no block is applied twice.
#[test]
fn two_members_of_a_site_one_killed_the_other_takes_its_chains_over() {
    let Some(t) = Setup::new("members") else {
        return;
    };
    let chains: Vec<String> = (1..=6).map(|n| format!("host{n}")).collect();
    let mut producers = vec![t.producer.clone()];
    let mut trust = vec!["--trust".to_owned(), t.pubkey.clone()];
    for chain in &chains[1..] {
        let root = t.s.dir.join(chain).display().to_string();
        fschain(&["init", "--root", &root, "--chain", chain]).ok();
        let key = t.s.dir.join(format!("{chain}.pub"));
        let shown = fschain(&["key", "show", "--root", &root]).ok().stdout();
        std::fs::write(&key, shown).unwrap();
        trust.extend(["--trust".to_owned(), key.display().to_string()]);
        producers.push(root);
    }
    let publish_round = |from: usize| {
        for p in &producers {
            fschain_with_input(
                &["apply", "--root", p, "--block-ops", "10"],
                Some(common::sample_ops_between(from, from + 20).as_bytes()),
            )
            .ok();
            fschain(&t.kafka(&["publish", "--root", p])).ok();
        }
    };
    let root = t.site_root("shared");
    let member = |name: &str| {
        let log = t.s.dir.join(format!("{name}.log"));
        let mut args = t.kafka(&["consume", "--site", "shared", "--root", &root, "--no-index"]);
        args.extend(trust.iter().map(String::as_str));
        let child = Command::new(env!("CARGO_BIN_EXE_fschain"))
            .args(args)
            .env("RUST_LOG", "info,qdrant_edge=error")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        (common::KillOnDrop(child), log)
    };
    let caught_up = || {
        producers
            .iter()
            .zip(&chains)
            .all(|(p, c)| common::block_count(&format!("{root}/{c}")) == common::block_count(p))
    };
    let (mut a, a_log) = member("a");
    let (mut b, b_log) = member("b");
    // Both in the group (each has been given partitions) before the blocks.
    common::wait_for("both members to join", Duration::from_secs(60), || {
        [&a_log, &b_log].iter().all(|l| {
            std::fs::read_to_string(l)
                .unwrap_or_default()
                .contains("consuming")
        })
    });
    std::thread::sleep(Duration::from_secs(3));
    publish_round(0);
    common::wait_for(
        "the site to hold every chain",
        Duration::from_secs(120),
        caught_up,
    );
    let before_kill = blocks_in_place(&a_log);
    assert!(
        !before_kill.is_empty() && !blocks_in_place(&b_log).is_empty(),
        "both members should hold chains: a {before_kill:?}, b {:?}",
        blocks_in_place(&b_log)
    );
    a.kill().unwrap();
    a.wait().unwrap();
    publish_round(20);
    common::wait_for(
        "the other member to catch every chain up",
        Duration::from_secs(180),
        caught_up,
    );
    let _ = Command::new("kill").arg(b.id().to_string()).status();
    b.wait().unwrap();
    let b_said = std::fs::read_to_string(&b_log).unwrap();
    assert!(!b_said.contains("does not check out"), "{b_said}");
    // The member that takes chains over witnesses them from the blocks the
    // other applied, not from what it saw of them before.
    assert!(!b_said.contains("fork of chain"), "{b_said}");
    // Every block once: the two members' applications add up to the chains.
    let mut applied = blocks_in_place(&a_log);
    applied.extend(blocks_in_place(&b_log));
    let total: usize = producers.iter().map(|p| block_hashes(p).len()).sum();
    let distinct: std::collections::BTreeSet<_> = applied.iter().cloned().collect();
    assert_eq!(distinct.len(), total);
    assert_eq!(
        applied.len(),
        total,
        "a block was applied twice: {applied:?}"
    );
    for (p, c) in producers.iter().zip(&chains) {
        let copy = format!("{root}/{c}");
        fschain(&["verify", "--root", &copy]).ok();
        assert_eq!(block_hashes(&copy), block_hashes(p));
        assert!(staging_entries(&copy).is_empty());
    }
}
