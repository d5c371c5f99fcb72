//! `fschain status --brokers`: every chain's newest block and every site's
//! verified height and lag, from Kafka alone (no access to the sites'
//! disks).
//!
//! A site commits, per partition, the oldest frame any of its chains still
//! needs (see `kafka`), so the blocks of a chain whose manifests lie before
//! the committed offset are verified at that site. [`site_lags`] is that
//! rule as a pure function of what the topic holds and what each group
//! committed; the adapter here only reads them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fschain_schema::wire::{decode_frame, frame_kind, Frame, FrameKind, PublicKey};
use fschain_schema::{ChainName, Timestamp};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::kafka::{client, kafka_error, partitions_of, site_group, KafkaSource};
use crate::ConsumerError;

/// A block's manifest on the topic.
#[derive(Clone, Debug, PartialEq)]
pub struct ManifestSeen {
    pub partition: i32,
    pub offset: i64,
    pub chain: ChainName,
    pub height: u64,
    /// A full stream (a checkpoint), not an increment.
    pub full: bool,
    /// When the block was sealed (its header's time).
    pub sealed: Option<Timestamp>,
}

/// What the blocks topic holds: each manifest signed by a trusted key (any
/// manifest, given no keys), and
/// each partition's earliest and end offsets.
#[derive(Clone, Debug, Default)]
pub struct TopicView {
    pub manifests: Vec<ManifestSeen>,
    pub earliest: BTreeMap<i32, i64>,
}

/// Reads every partition of the blocks topic to the end its fetches
/// report, decoding manifests only.
pub fn scan_manifests(
    source: &KafkaSource,
    trusted: &[PublicKey],
    scanner_group: &str,
    shutdown: &AtomicBool,
) -> Result<TopicView, ConsumerError> {
    let topic = &source.topics.blocks;
    let scanner = client(source, scanner_group)?;
    let partitions = partitions_of(&scanner, topic)?;
    let mut tpl = TopicPartitionList::new();
    let mut view = TopicView::default();
    for &p in &partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .map_err(kafka_error)?;
        let (low, _) = scanner
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .map_err(kafka_error)?;
        view.earliest.insert(p, low);
    }
    scanner.assign(&tpl).map_err(kafka_error)?;
    let mut at_end: BTreeSet<i32> = BTreeSet::new();
    while at_end.len() < partitions.len() {
        if shutdown.load(Ordering::SeqCst) {
            break;
        }
        let msg = match scanner.poll(Duration::from_millis(500)) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
                continue;
            }
            Some(msg) => msg.map_err(kafka_error)?,
        };
        let (partition, offset) = (msg.partition(), msg.offset());
        at_end.remove(&partition);
        let Some(bytes) = msg.payload() else { continue };
        if frame_kind(bytes) != Some(FrameKind::Manifest) {
            continue;
        }
        if let Ok(Frame::Manifest(m)) = decode_frame(bytes) {
            // No keys given: status counts every manifest (replay never
            // gets here without keys).
            if trusted.is_empty() || m.verify(trusted).is_ok() {
                view.manifests.push(ManifestSeen {
                    partition,
                    offset,
                    chain: m.chain.clone(),
                    height: m.height,
                    full: m.parent.is_none(),
                    sealed: m
                        .header
                        .get("time")
                        .and_then(|t| t.as_str())
                        .and_then(|t| Timestamp::parse_canonical(t).ok()),
                });
            }
        }
    }
    Ok(view)
}

/// The sites that have a consumer group on the brokers.
pub fn site_names(source: &KafkaSource) -> Result<Vec<String>, ConsumerError> {
    let consumer = client(source, "fschain-status")?;
    let groups = consumer
        .fetch_group_list(None, Duration::from_secs(10))
        .map_err(kafka_error)?;
    let mut sites: Vec<String> = groups
        .groups()
        .iter()
        .filter_map(|g| g.name().strip_prefix("fschain-site-"))
        .filter(|s| !s.ends_with("-scan"))
        .map(str::to_owned)
        .collect();
    sites.sort();
    Ok(sites)
}

/// A site group's committed offset per partition (`None`: never committed).
pub fn committed(
    source: &KafkaSource,
    site: &str,
    partitions: impl IntoIterator<Item = i32>,
) -> Result<BTreeMap<i32, Option<i64>>, ConsumerError> {
    let topic = &source.topics.blocks;
    let consumer = client(source, &site_group(site))?;
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(topic, p);
    }
    let offsets = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .map_err(kafka_error)?;
    Ok(offsets
        .elements()
        .iter()
        .map(|e| {
            let offset = match e.offset() {
                Offset::Offset(n) => Some(n),
                _ => None,
            };
            (e.partition(), offset)
        })
        .collect())
}

/// One chain at one site.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SiteLag {
    pub site: String,
    pub chain: String,
    pub newest_height: u64,
    /// `None`: the site has verified no block of it yet.
    pub verified_height: Option<u64>,
    pub lag_blocks: u64,
    /// Sealed time of the newest block minus that of the verified one.
    pub lag_seconds: Option<i64>,
    /// The site's committed offset is below the earliest one still on the
    /// topic: what it needs next was deleted, so it must replay.
    pub behind_retention: bool,
}

/// Each chain's lag at `site`, given what the topic holds and the site's
/// committed offsets.
pub fn site_lags(
    site: &str,
    view: &TopicView,
    committed: &BTreeMap<i32, Option<i64>>,
) -> Vec<SiteLag> {
    let mut by_chain: BTreeMap<&ChainName, Vec<&ManifestSeen>> = BTreeMap::new();
    for m in &view.manifests {
        by_chain.entry(&m.chain).or_default().push(m);
    }
    by_chain
        .into_iter()
        .filter_map(|(chain, manifests)| {
            let newest = manifests.iter().max_by_key(|m| m.height)?;
            let partition = newest.partition;
            let committed = committed.get(&partition).copied().flatten();
            let verified = committed.and_then(|c| {
                manifests
                    .iter()
                    .filter(|m| m.partition == partition && m.offset < c)
                    .max_by_key(|m| m.height)
            });
            let lag_blocks = match verified {
                Some(v) => newest.height.saturating_sub(v.height),
                None => newest.height + 1,
            };
            let lag_seconds = verified.and_then(|v| {
                Some((newest.sealed?.as_micros() - v.sealed?.as_micros()) / 1_000_000)
            });
            let behind_retention = committed
                .is_some_and(|c| view.earliest.get(&partition).is_some_and(|&low| c < low));
            Some(SiteLag {
                site: site.to_owned(),
                chain: chain.to_string(),
                newest_height: newest.height,
                verified_height: verified.map(|v| v.height),
                lag_blocks,
                lag_seconds,
                behind_retention,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(offset: i64, chain: &str, height: u64, second: i64) -> ManifestSeen {
        ManifestSeen {
            partition: 0,
            offset,
            chain: ChainName::parse(chain).unwrap(),
            height,
            full: height == 0,
            sealed: Some(Timestamp::from_micros(second * 1_000_000)),
        }
    }

    #[test]
    fn lag_follows_the_committed_offset_per_chain() {
        // host1's blocks 0..=3 at offsets 0, 3, 6, 9 (two chunks each);
        // host2's blocks 0..=1 at 12, 15.
        let mut view = TopicView::default();
        for h in 0..4 {
            view.manifests
                .push(seen(3 * h as i64, "host1", h, 100 + 10 * h as i64));
        }
        view.manifests.push(seen(12, "host2", 0, 200));
        view.manifests.push(seen(15, "host2", 1, 230));
        view.earliest.insert(0, 0);

        let lags = site_lags("east", &view, &[(0, Some(18))].into());
        assert!(lags
            .iter()
            .all(|l| l.lag_blocks == 0 && l.lag_seconds == Some(0)));

        let lags = site_lags("west", &view, &[(0, Some(7))].into());
        assert_eq!(lags[0].verified_height, Some(2));
        assert_eq!((lags[0].lag_blocks, lags[0].lag_seconds), (1, Some(10)));
        assert_eq!((lags[1].verified_height, lags[1].lag_blocks), (None, 2));

        let never = site_lags("north", &view, &[(0, None)].into());
        assert_eq!(never[0].lag_blocks, 4);
        assert!(!never[0].behind_retention);

        view.earliest.insert(0, 9);
        let behind = site_lags("west", &view, &[(0, Some(7))].into());
        assert!(behind[0].behind_retention);
    }
}
