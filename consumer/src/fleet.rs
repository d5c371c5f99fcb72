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

use crate::kafka::{client, kafka_error, partitions_of, site_group, KafkaSource, SiteConsumer};
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
        if let Some(seen) = manifest_seen(msg.payload(), partition, offset, trusted) {
            view.manifests.push(seen);
        }
    }
    Ok(view)
}

/// The manifest in a record, if it is one signed by a trusted key (any
/// manifest, given no keys: status counts every one; replay never gets
/// here without keys).
fn manifest_seen(
    payload: Option<&[u8]>,
    partition: i32,
    offset: i64,
    trusted: &[PublicKey],
) -> Option<ManifestSeen> {
    let bytes = payload?;
    if frame_kind(bytes) != Some(FrameKind::Manifest) {
        return None;
    }
    let Ok(Frame::Manifest(m)) = decode_frame(bytes) else {
        return None;
    };
    if !trusted.is_empty() && m.verify(trusted).is_err() {
        return None;
    }
    Some(ManifestSeen {
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
    })
}

/// What a running site knows of the blocks topic ahead of it, for its
/// `lag_blocks` and `lag_seconds` metrics: a reader of its own (no group,
/// no commits) that starts at the site group's committed offsets and
/// follows the topic, decoding manifests only.
pub struct ManifestTail {
    reader: SiteConsumer,
    partitions: usize,
    trusted: Vec<PublicKey>,
    /// Per chain, the heights announced and when each was sealed; heights
    /// the site has verified are dropped by [`ManifestTail::lags`].
    announced: BTreeMap<ChainName, BTreeMap<u64, Option<Timestamp>>>,
}

impl std::fmt::Debug for ManifestTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManifestTail")
            .field("partitions", &self.partitions)
            .field("chains", &self.announced.len())
            .finish_non_exhaustive()
    }
}

impl ManifestTail {
    pub fn open(
        source: &KafkaSource,
        site: &str,
        trusted: Vec<PublicKey>,
    ) -> Result<ManifestTail, ConsumerError> {
        let topic = &source.topics.blocks;
        let reader = client(source, &format!("{}-lag", site_group(site)))?;
        let partitions = partitions_of(&reader, topic)?;
        let from = committed(source, site, partitions.iter().copied())?;
        let mut tpl = TopicPartitionList::new();
        for &p in &partitions {
            let offset = match from.get(&p).copied().flatten() {
                Some(o) => Offset::Offset(o),
                None => Offset::Beginning,
            };
            tpl.add_partition_offset(topic, p, offset)
                .map_err(kafka_error)?;
        }
        reader.assign(&tpl).map_err(kafka_error)?;
        Ok(ManifestTail {
            reader,
            partitions: partitions.len(),
            trusted,
            announced: BTreeMap::new(),
        })
    }

    /// Reads what the topic gained, up to its end (or `shutdown`).
    pub fn follow(&mut self, shutdown: &AtomicBool) -> Result<(), ConsumerError> {
        let mut at_end: BTreeSet<i32> = BTreeSet::new();
        while at_end.len() < self.partitions && !shutdown.load(Ordering::SeqCst) {
            match self.reader.poll(Duration::from_millis(500)) {
                None => break,
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    at_end.insert(p);
                }
                Some(Err(e)) => return Err(kafka_error(e)),
                Some(Ok(msg)) => {
                    at_end.remove(&msg.partition());
                    if let Some(m) =
                        manifest_seen(msg.payload(), msg.partition(), msg.offset(), &self.trusted)
                    {
                        self.announced
                            .entry(m.chain)
                            .or_default()
                            .insert(m.height, m.sealed);
                    }
                }
            }
        }
        Ok(())
    }

    /// Each chain's lag, given what the site has verified of it, at `now`;
    /// forgets the heights verified.
    pub fn lags(
        &mut self,
        verified: &BTreeMap<ChainName, u64>,
        now: Timestamp,
    ) -> Vec<(ChainName, ChainLag)> {
        self.announced
            .iter_mut()
            .map(|(chain, announced)| {
                let verified = verified.get(chain).copied();
                if let Some(v) = verified {
                    *announced = announced.split_off(&(v + 1));
                }
                (chain.clone(), chain_lag(verified, announced, now))
            })
            .collect()
    }
}

/// A chain's lag at a site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainLag {
    /// Blocks announced on the topic above the verified height.
    pub blocks: u64,
    /// How long ago the oldest of those was sealed (0: none).
    pub seconds: i64,
}

/// The lag of a chain whose site verified up to `verified`, given the
/// heights `announced` on the topic (with when each was sealed): what a
/// site stuck behind shows as growing, and a chain merely idle as 0.
pub fn chain_lag(
    verified: Option<u64>,
    announced: &BTreeMap<u64, Option<Timestamp>>,
    now: Timestamp,
) -> ChainLag {
    let above = |h: &u64| verified.is_none_or(|v| *h > v);
    let newest = announced.keys().next_back().copied().filter(above);
    let blocks = match (newest, verified) {
        (None, _) => 0,
        (Some(n), Some(v)) => n - v,
        (Some(n), None) => n + 1,
    };
    let oldest_sealed = announced
        .iter()
        .find(|(h, _)| above(h))
        .and_then(|(_, sealed)| *sealed);
    let seconds = match (blocks, oldest_sealed) {
        (0, _) | (_, None) => 0,
        (_, Some(t)) => ((now.as_micros() - t.as_micros()) / 1_000_000).max(0),
    };
    ChainLag { blocks, seconds }
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
        .filter(|s| !s.ends_with("-scan") && !s.ends_with("-lag"))
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
    fn a_chain_lags_by_the_blocks_above_its_verified_height_since_the_oldest_sealed() {
        let at = |s: i64| Some(Timestamp::from_micros(s * 1_000_000));
        let announced: BTreeMap<u64, Option<Timestamp>> =
            [(3, at(100)), (4, at(110)), (5, at(130))].into();
        let now = Timestamp::from_micros(200 * 1_000_000);
        let lag = |v| chain_lag(v, &announced, now);
        assert_eq!(
            lag(Some(5)),
            ChainLag {
                blocks: 0,
                seconds: 0
            }
        );
        assert_eq!(
            lag(Some(9)),
            ChainLag {
                blocks: 0,
                seconds: 0
            }
        );
        assert_eq!(
            lag(Some(4)),
            ChainLag {
                blocks: 1,
                seconds: 70
            }
        );
        assert_eq!(
            lag(Some(2)),
            ChainLag {
                blocks: 3,
                seconds: 100
            }
        );
        assert_eq!(
            lag(None),
            ChainLag {
                blocks: 6,
                seconds: 100
            }
        );
        assert_eq!(
            chain_lag(Some(1), &BTreeMap::new(), now),
            ChainLag {
                blocks: 0,
                seconds: 0
            }
        );
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
