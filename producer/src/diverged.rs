//! Refusing to publish a history that diverges from the one on the topic:
//! a root restored from an older backup, or one whose blocks were made
//! again, would otherwise put a second block of some height on the topic,
//! under the same key, and sites would hold different chains.
//!
//! The check reads the blocks topic backwards from its end, in growing
//! windows, for the newest manifest of this chain signed with this root's
//! key, and compares that block with the root's block of the same height.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fschain_kafka::{client_config, QuietEof, Role};
use fschain_schema::wire::{decode_frame, Frame, PublicKey, SigningKey};
use fschain_schema::{BlockHash, BlockHeader, ChainName};
use fschain_store::layout::RootLayout;
use fschain_store::{ChainDir, StoreError};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::publish::{kafka_error, KafkaTarget};
use crate::ProducerError;

/// The first window read back from a partition's end; it grows fourfold.
const FIRST_WINDOW: i64 = 256;

/// [`check_not_diverged`] for the chain at `layout`, signed by `key`.
pub fn check_root(
    layout: &RootLayout,
    target: &KafkaTarget,
    key: &SigningKey,
) -> Result<(), ProducerError> {
    let chain = layout.read_marker()?.chain;
    let head = layout
        .snapshot_heights()?
        .last()
        .copied()
        .ok_or_else(|| StoreError::Corrupt {
            path: layout.blocks_dir(),
            why: "no block snapshots".into(),
        })?;
    let headers = ChainDir::new(layout.snapshot(head)).headers()?;
    check_not_diverged(target, &chain, &key.public(), &headers)
}

/// Checks that every block of `chain` on the topic is this root's block of
/// the same height (`headers`, the root's, from genesis to its head).
pub fn check_not_diverged(
    target: &KafkaTarget,
    chain: &ChainName,
    key: &PublicKey,
    headers: &[BlockHeader],
) -> Result<(), ProducerError> {
    let Some((height, hash)) = newest_on_topic(target, chain, key)? else {
        return Ok(());
    };
    let head = headers.len() as u64 - 1;
    let why = match headers.get(height as usize) {
        None => format!("this root's head is block {head}, behind it"),
        Some(h) if h.hash != hash => format!("this root's block {height} is {}", h.hash),
        Some(_) => return Ok(()),
    };
    Err(ProducerError::Diverged {
        chain: chain.clone(),
        height,
        on_topic: hash,
        why,
    })
}

/// [`newest_on_topic_once`], tried again after a transient error (a
/// broker away, a client still learning the cluster): up to five times,
/// a second apart.
fn newest_on_topic(
    target: &KafkaTarget,
    chain: &ChainName,
    key: &PublicKey,
) -> Result<Option<(u64, BlockHash)>, ProducerError> {
    let mut attempt = 1;
    loop {
        match newest_on_topic_once(target, chain, key) {
            Err(e) if e.is_transient() && attempt < 5 => {
                tracing::warn!(attempt, error = %e, "reading the blocks topic; trying again");
                std::thread::sleep(Duration::from_secs(1));
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// The newest block of `chain` on the blocks topic whose manifest `key`
/// signed: its height and hash.
fn newest_on_topic_once(
    target: &KafkaTarget,
    chain: &ChainName,
    key: &PublicKey,
) -> Result<Option<(u64, BlockHash)>, ProducerError> {
    let topic = &target.topics.blocks;
    let consumer: BaseConsumer<QuietEof> =
        client_config(Role::Site, &target.brokers, &target.extra)?
            .set("group.id", format!("fschain-publish-{chain}"))
            .create_with_context(QuietEof::default())
            .map_err(kafka_error)?;
    let partitions = fschain_kafka::partitions(&consumer, topic)?;
    let mut newest: Option<(u64, BlockHash)> = None;
    for p in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .map_err(kafka_error)?;
        let mut window = FIRST_WINDOW;
        let mut end = high;
        while end > low {
            let start = (end - window).max(low);
            if let Some(found) = read_range(&consumer, topic, p, start, end, chain, key)? {
                if newest.is_none_or(|(h, _)| found.0 > h) {
                    newest = Some(found);
                }
                break;
            }
            end = start;
            window *= 4;
        }
    }
    // Closing a consumer that has a group id waits out a 100 ms poll
    // (rdkafka's `BaseConsumer::drop`); this one never joined its group
    // nor committed, so the publish goes on while it closes.
    let _ = std::thread::Builder::new()
        .name("close-check".into())
        .spawn(move || drop(consumer));
    Ok(newest)
}

/// Reads offsets `start..end` of one partition; the newest manifest of
/// `chain` under `key` among them.
fn read_range(
    consumer: &BaseConsumer<QuietEof>,
    topic: &str,
    partition: i32,
    start: i64,
    end: i64,
    chain: &ChainName,
    key: &PublicKey,
) -> Result<Option<(u64, BlockHash)>, ProducerError> {
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Offset(start))
        .map_err(kafka_error)?;
    consumer.assign(&assignment).map_err(kafka_error)?;
    let mut found: BTreeMap<u64, BlockHash> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if Instant::now() > deadline {
            return Err(ProducerError::Command {
                what: format!("reading {topic} partition {partition} back to offset {start}"),
                message: "no end of partition within 60 s".into(),
            });
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(msg)) => {
                if msg.offset() >= end {
                    break;
                }
                let ours = msg.key().is_some_and(|k| k == chain.as_str().as_bytes());
                if let (true, Some(payload)) = (ours, msg.payload()) {
                    if let Ok(Frame::Manifest(m)) = decode_frame(payload) {
                        if m.verify(std::slice::from_ref(key)).is_ok() {
                            if let Ok(header) = m.block_header() {
                                found.insert(header.height, header.hash);
                            }
                        }
                    }
                }
                if msg.offset() + 1 >= end {
                    break;
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) if fschain_kafka::is_transient(&e) => {}
            Some(Err(e)) => return Err(kafka_error(e)),
            None => {}
        }
    }
    Ok(found.pop_last())
}
