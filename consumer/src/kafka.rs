//! The Kafka side of a site: `fschain consume` (a consumer group per site,
//! so every site gets every block and a site's members share its chains)
//! and `fschain replay` (rebuild a site from the latest full checkpoint on
//! the topic).
//!
//! Offsets are committed by hand, per partition, only up to the oldest
//! frame a chain still needs: a restart re-reads whatever was not yet in
//! the site's chain, and the assemblers drop what is already held.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fschain_kafka::{client_config, QuietEof, Role, StartGuard};
use fschain_schema::wire::{PublicKey, Topics};
use fschain_schema::ChainName;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use crate::ingest::{Ingest, Origin};
use crate::ConsumerError;

/// Where to read from.
#[derive(Clone, Debug)]
pub struct KafkaSource {
    pub brokers: String,
    pub topics: Topics,
    pub extra: Vec<(String, String)>,
}

/// The consumer group of a site.
pub fn site_group(site: &str) -> String {
    format!("fschain-site-{site}")
}

pub(crate) fn kafka_error(e: KafkaError) -> ConsumerError {
    fschain_kafka::kafka("talking to the brokers")(e).into()
}

/// A site's Kafka consumer.
pub(crate) type SiteConsumer = BaseConsumer<QuietEof>;

/// A consumer for `group`; its poll also reports reaching the end of a
/// partition (`KafkaError::PartitionEOF`).
pub(crate) fn client(source: &KafkaSource, group: &str) -> Result<SiteConsumer, ConsumerError> {
    client_config(Role::Site, &source.brokers, &source.extra)?
        .set("group.id", group)
        .create_with_context(QuietEof::default())
        .map_err(kafka_error)
}

pub(crate) fn partitions_of(
    consumer: &SiteConsumer,
    topic: &str,
) -> Result<Vec<i32>, ConsumerError> {
    Ok(fschain_kafka::partitions(consumer, topic)?)
}

/// What a consume or replay run did.
#[derive(Debug, Default, Clone)]
pub struct ConsumeSummary {
    pub applied: u64,
    pub rejected: u64,
    pub duplicates: u64,
    pub heads: Vec<(ChainName, Option<u64>)>,
    /// Chains this site stopped: their producer's key signed two histories.
    pub forked: Vec<(ChainName, String)>,
}

/// Options of a consume run.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConsumeOptions {
    /// Return once every partition is read to its end.
    pub until_idle: bool,
}

/// `fschain consume`: runs until `shutdown` (or until idle).
pub fn consume(
    ingest: &mut Ingest,
    source: &KafkaSource,
    options: ConsumeOptions,
    shutdown: &AtomicBool,
    on_block: &mut dyn FnMut(&Ingest),
) -> Result<ConsumeSummary, ConsumerError> {
    let group = site_group(ingest.site().name());
    let mut backoff = DiskFullBackoff::default();
    let mut link = WitnessLink::open(ingest, source, &group)?;
    loop {
        let consumer = client(source, &group)?;
        partitions_of(&consumer, &source.topics.blocks)?;
        consumer
            .subscribe(&[&source.topics.blocks])
            .map_err(kafka_error)?;
        info!(
            site = ingest.site().name(),
            group,
            topic = source.topics.blocks,
            "consuming"
        );
        match run(
            ingest,
            &consumer,
            &source.topics.blocks,
            options,
            StartGuard::default(),
            shutdown,
            Hooks {
                on_block,
                witness: link.as_mut(),
            },
        ) {
            // Nothing of the block was kept and its offset was not
            // committed: a new member of the group reads it again from
            // there once there may be room.
            Err(e) if e.is_disk_full() && !options.until_idle => {
                let wait = backoff.next();
                tracing::error!(error = %e, retry_in = ?wait, "the site's disk is full; waiting for space");
                drop(consumer);
                if !sleep_unless(shutdown, wait) {
                    return Ok(summary(ingest));
                }
            }
            other => {
                close_together(consumer, link);
                return other;
            }
        }
    }
}

/// Closes the site's consumer and its witness link's reader (both group
/// members: they leave their groups) without waiting out rdkafka's 100 ms
/// close poll (`fschain_kafka::close_consumer`).
fn close_together(consumer: SiteConsumer, link: Option<WitnessLink>) {
    fschain_kafka::close_consumer(&consumer, Duration::from_secs(5));
    if let Some(link) = &link {
        fschain_kafka::close_consumer(&link.reader, Duration::from_secs(5));
    }
}

/// How long a site whose disk is full waits before it tries again: 1 s,
/// doubling to a minute.
#[derive(Debug, Default)]
struct DiskFullBackoff {
    tries: u32,
}

impl DiskFullBackoff {
    fn next(&mut self) -> Duration {
        self.tries += 1;
        Duration::from_secs(1u64 << self.tries.min(7).saturating_sub(1))
            .min(Duration::from_secs(60))
    }
}

/// Sleeps for `wait`, or until `shutdown` is set; false if it was.
fn sleep_unless(shutdown: &AtomicBool, wait: Duration) -> bool {
    let until = std::time::Instant::now() + wait;
    while std::time::Instant::now() < until {
        if shutdown.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    !shutdown.load(Ordering::SeqCst)
}

/// `fschain replay`: rebuilds an empty site from the latest full checkpoint
/// of each chain on the topic, then carries on like `consume --until-idle`,
/// committing the site group's offsets so that `consume` continues from
/// there.
pub fn replay(
    ingest: &mut Ingest,
    source: &KafkaSource,
    trusted: &[PublicKey],
    shutdown: &AtomicBool,
    on_block: &mut dyn FnMut(&Ingest),
) -> Result<ConsumeSummary, ConsumerError> {
    let held = ingest.site().chains()?;
    if !held.is_empty() {
        return Err(ConsumerError::NotEmpty {
            root: ingest.site().root().to_owned(),
            chains: held.iter().map(ToString::to_string).collect(),
        });
    }
    let topic = &source.topics.blocks;
    let group = site_group(ingest.site().name());
    // Pass 1: find each chain's latest full stream (only manifests are
    // decoded), reading every partition to the end its fetches report (not
    // the broker's ListOffsets: tansu 0.6 answers that with the last record
    // batch's first offset + 1).
    let view = crate::fleet::scan_manifests(source, trusted, &format!("{group}-scan"), shutdown)?;
    if shutdown.load(Ordering::SeqCst) {
        return Ok(ConsumeSummary::default());
    }
    let mut latest_full: BTreeMap<ChainName, (u64, i32, i64)> = BTreeMap::new();
    let mut last_height: BTreeMap<ChainName, u64> = BTreeMap::new();
    for m in &view.manifests {
        let h = last_height.entry(m.chain.clone()).or_insert(m.height);
        *h = (*h).max(m.height);
        if m.full {
            let e = latest_full
                .entry(m.chain.clone())
                .or_insert((m.height, m.partition, m.offset));
            if m.height >= e.0 {
                *e = (m.height, m.partition, m.offset);
            }
        }
    }
    ingest.stats.expected = Some(
        latest_full
            .iter()
            .map(|(chain, &(full, _, _))| {
                last_height
                    .get(chain)
                    .map_or(1, |&last| last.saturating_sub(full) + 1)
            })
            .sum(),
    );
    // Pass 2: from each partition's earliest needed checkpoint.
    let mut start: BTreeMap<i32, i64> = BTreeMap::new();
    for (chain, &(height, p, o)) in &latest_full {
        info!(chain = %chain, checkpoint = height, head = last_height.get(chain).copied().unwrap_or(height), "replaying from checkpoint");
        ingest.start_at(chain.clone(), height);
        let s = start.entry(p).or_insert(o);
        *s = (*s).min(o);
    }
    if start.is_empty() {
        warn!(
            topic,
            "no full checkpoint stream signed by a trusted key on the topic; nothing to replay"
        );
        return Ok(summary(ingest));
    }
    let consumer = client(source, &group)?;
    let mut tpl = TopicPartitionList::new();
    for (&p, &o) in &start {
        tpl.add_partition_offset(topic, p, Offset::Offset(o))
            .map_err(kafka_error)?;
    }
    consumer.assign(&tpl).map_err(kafka_error)?;
    let mut link = WitnessLink::open(ingest, source, &group)?;
    run(
        ingest,
        &consumer,
        topic,
        ConsumeOptions { until_idle: true },
        StartGuard::at(start.into_iter().map(|(p, o)| (p, Some(o)))),
        shutdown,
        Hooks {
            on_block,
            witness: link.as_mut(),
        },
    )
}

/// What a consume loop calls besides its own work.
struct Hooks<'a> {
    /// After each block applied.
    on_block: &'a mut dyn FnMut(&Ingest),
    /// The witness topic, when the site witnesses.
    witness: Option<&'a mut WitnessLink>,
}

fn run(
    ingest: &mut Ingest,
    consumer: &SiteConsumer,
    topic: &str,
    options: ConsumeOptions,
    mut guard: StartGuard,
    shutdown: &AtomicBool,
    hooks: Hooks<'_>,
) -> Result<ConsumeSummary, ConsumerError> {
    let Hooks {
        on_block,
        witness: mut link,
    } = hooks;
    let mut progress = Progress::default();
    loop {
        if let Some(link) = link.as_deref_mut() {
            link.pump(ingest);
        }
        if consumer.context().take_rebalanced() {
            // Chains of partitions this member no longer holds may be
            // moved on by another; those it now holds start from the
            // group's committed offsets. Start over from disk and from
            // those offsets.
            progress.commit(ingest, consumer, topic, CommitMode::Sync);
            ingest.forget_progress();
            progress = Progress::default();
            guard = StartGuard::default();
        }
        let applied_before = ingest.stats.applied;
        ingest.poll()?;
        if shutdown.load(Ordering::SeqCst) {
            ingest.settle()?;
            progress.commit(ingest, consumer, topic, CommitMode::Sync);
            if let Some(link) = link.as_deref_mut() {
                link.catch_up(ingest);
            }
            return Ok(summary(ingest));
        }
        if blocks_applied(ingest, applied_before, on_block) {
            progress.commit(ingest, consumer, topic, CommitMode::Async);
        }
        // Blocks being finished are taken in as soon as they are done.
        let wait = if ingest.finishing() > 0 {
            Duration::from_millis(2)
        } else {
            Duration::from_millis(100)
        };
        match consumer.poll(wait) {
            Some(Ok(msg)) => {
                let (p, o) = (msg.partition(), msg.offset());
                if !progress.next.contains_key(&p) && !guard.first_read(consumer, topic, p, o)? {
                    continue;
                }
                let origin = Origin {
                    topic,
                    partition: p,
                    offset: o,
                };
                let applied_before = ingest.stats.applied;
                let chain = ingest.frame(msg.payload().unwrap_or_default(), msg.key(), &origin)?;
                progress.read(p, o, chain);
                progress.at_end.remove(&p);
                blocks_applied(ingest, applied_before, on_block);
                progress.commit(ingest, consumer, topic, CommitMode::Async);
            }
            // Read to the end of partition p: when that holds for every
            // assigned partition, the site has caught up, known without
            // asking the broker.
            Some(Err(KafkaError::PartitionEOF(p))) => {
                if guard.sought(p) && !progress.next.contains_key(&p) {
                    // The end of a fetch made before the guard sought back.
                    continue;
                }
                progress.at_end.insert(p);
                if options.until_idle && progress.all_at_end(consumer)? {
                    tracing::debug!(topic, "every assigned partition read to its end");
                    return finish_idle(ingest, consumer, topic, &mut progress, link, on_block);
                }
            }
            Some(Err(e)) => {
                if let Some(refused) = fschain_kafka::refused() {
                    return Err(refused.into());
                }
                if fschain_kafka::stops_a_consumer(&e) {
                    return Err(kafka_error(e));
                }
                warn!(topic, error = %e, "consume error; retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            None => {
                if let Some(refused) = fschain_kafka::refused() {
                    return Err(refused.into());
                }
                guard.nothing_read(consumer, topic, |p| {
                    progress.next.contains_key(&p) || progress.at_end.contains(&p)
                })?;
                if options.until_idle && caught_up(consumer, topic, &progress.next)? {
                    return finish_idle(ingest, consumer, topic, &mut progress, link, on_block);
                }
            }
        }
    }
}

/// Calls `on_block` if blocks were applied since the count was
/// `applied_before` (one poll may take in several), and says whether.
fn blocks_applied(ingest: &Ingest, applied_before: u64, on_block: &mut dyn FnMut(&Ingest)) -> bool {
    let applied = ingest.stats.applied > applied_before;
    if applied {
        on_block(ingest);
    }
    applied
}

/// `--until-idle` has caught up: commits, and fails if a chain waits on a
/// block the topic does not hold.
fn finish_idle(
    ingest: &mut Ingest,
    consumer: &SiteConsumer,
    topic: &str,
    progress: &mut Progress,
    link: Option<&mut WitnessLink>,
    on_block: &mut dyn FnMut(&Ingest),
) -> Result<ConsumeSummary, ConsumerError> {
    let applied_before = ingest.stats.applied;
    ingest.settle()?;
    blocks_applied(ingest, applied_before, on_block);
    progress.commit(ingest, consumer, topic, CommitMode::Sync);
    if let Some(link) = link {
        link.catch_up(ingest);
    }
    ingest.settle_index();
    if let Some((chain, height)) = ingest.gaps().into_iter().next() {
        return Err(ConsumerError::Gap {
            chain: chain.to_string(),
            height,
        });
    }
    for (chain, n) in ingest.incomplete() {
        warn!(chain = %chain, streams = n, "caught up with the topic; incomplete streams wait for the rest of their chunks");
    }
    Ok(summary(ingest))
}

fn summary(ingest: &Ingest) -> ConsumeSummary {
    ConsumeSummary {
        applied: ingest.stats.applied,
        rejected: ingest.stats.rejected,
        duplicates: ingest.stats.duplicates,
        heads: ingest.heads(),
        forked: ingest
            .witness()
            .map(|w| w.stopped.clone().into_iter().collect())
            .unwrap_or_default(),
    }
}

/// A site's link to `<prefix>.witness`: it reads every cosigned
/// checkpoint there (no group: every member reads all of it) and sends its
/// own cosignatures.
pub(crate) struct WitnessLink {
    topic: String,
    reader: SiteConsumer,
    writer: rdkafka::producer::BaseProducer,
    partitions: BTreeSet<i32>,
    /// The offset after the last message read, per partition.
    next: BTreeMap<i32, i64>,
}

impl WitnessLink {
    /// `None` when the ingest does not witness, or the topic is missing
    /// (created by `fschain topics create`; logged).
    fn open(
        ingest: &mut Ingest,
        source: &KafkaSource,
        group: &str,
    ) -> Result<Option<Self>, ConsumerError> {
        if ingest.witness().is_none() {
            return Ok(None);
        }
        let topic = source.topics.witness.clone();
        let reader = client(source, &format!("{group}-witness"))?;
        let partitions: BTreeSet<i32> = match partitions_of(&reader, &topic) {
            Ok(p) => p.into_iter().collect(),
            Err(e) => {
                warn!(topic, error = %e, "no witness topic: this site neither cosigns nor checks others' cosignatures (run `fschain topics create`)");
                return Ok(None);
            }
        };
        let mut tpl = TopicPartitionList::new();
        for &p in &partitions {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)
                .map_err(kafka_error)?;
        }
        reader.assign(&tpl).map_err(kafka_error)?;
        let writer = client_config(Role::Publisher, &source.brokers, &source.extra)?
            .create()
            .map_err(kafka_error)?;
        let mut link = WitnessLink {
            topic,
            reader,
            writer,
            partitions,
            next: BTreeMap::new(),
        };
        // What other sites cosigned is known before any block is taken.
        link.catch_up(ingest);
        Ok(Some(link))
    }

    /// Takes what the witness topic holds now, and sends this site's
    /// cosignatures.
    fn pump(&mut self, ingest: &mut Ingest) {
        for _ in 0..256 {
            if !self.read_one(ingest, Duration::ZERO) {
                break;
            }
        }
        self.send(ingest);
    }

    /// Reads one message (or an end of partition); false when none came.
    fn read_one(&mut self, ingest: &mut Ingest, wait: Duration) -> bool {
        match self.reader.poll(wait) {
            Some(Ok(msg)) => {
                self.next.insert(msg.partition(), msg.offset() + 1);
                let origin = Origin {
                    topic: &self.topic,
                    partition: msg.partition(),
                    offset: msg.offset(),
                };
                ingest.witnessed(msg.payload().unwrap_or_default(), &origin);
                true
            }
            Some(Err(KafkaError::PartitionEOF(_))) => true,
            Some(Err(e)) => {
                warn!(topic = self.topic, error = %e, "reading the witness topic");
                false
            }
            None => false,
        }
    }

    fn send(&mut self, ingest: &mut Ingest) {
        use rdkafka::producer::BaseRecord;
        for (chain, note) in ingest.take_cosignatures() {
            let record = BaseRecord::to(&self.topic)
                .key(chain.as_str())
                .payload(note.as_str());
            if let Err((e, _)) = self.writer.send(record) {
                warn!(topic = self.topic, chain = %chain, error = %e, "could not send a cosignature");
            }
        }
        self.writer.poll(Duration::ZERO);
    }

    /// Reads the witness topic to its end (up to 10 s) and flushes this
    /// site's cosignatures: before an idle run reports what it holds.
    fn catch_up(&mut self, ingest: &mut Ingest) {
        self.send(ingest);
        if let Err(e) = fschain_kafka::wait_acknowledged(&self.writer, Duration::from_secs(10)) {
            warn!(topic = self.topic, error = %e, "cosignatures not acknowledged");
        }
        // Read to the end as it is now, past what was just sent: up to
        // each partition's high watermark (an end-of-partition event comes
        // only after new messages, so waiting for one on a topic with
        // nothing new would wait the whole 10 s).
        let until = std::time::Instant::now() + Duration::from_secs(10);
        let mut ends = BTreeMap::new();
        for &p in &self.partitions {
            match self
                .reader
                .fetch_watermarks(&self.topic, p, Duration::from_secs(10))
            {
                Ok((low, high)) if high > low => {
                    ends.insert(p, high);
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(topic = self.topic, partition = p, error = %e, "the witness topic's end is unknown; not waiting for it");
                }
            }
        }
        while short_of(&ends, &self.next) && std::time::Instant::now() < until {
            self.read_one(ingest, Duration::from_millis(100));
        }
    }
}

/// Whether any partition's next offset to read (`next`, 0 when none was
/// read) is short of its end (`ends`: the high watermarks of the
/// partitions holding messages).
fn short_of(ends: &BTreeMap<i32, i64>, next: &BTreeMap<i32, i64>) -> bool {
    ends.iter()
        .any(|(p, &end)| next.get(p).copied().unwrap_or(0) < end)
}

/// Every message of `<prefix>.witness`, read from its start to its end
/// (at most `wait`).
pub fn witness_notes(source: &KafkaSource, wait: Duration) -> Result<Vec<String>, ConsumerError> {
    let topic = &source.topics.witness;
    let reader = client(source, "fschain-witness-read")?;
    let partitions: BTreeSet<i32> = partitions_of(&reader, topic)?.into_iter().collect();
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .map_err(kafka_error)?;
    }
    reader.assign(&tpl).map_err(kafka_error)?;
    let mut notes = Vec::new();
    let mut at_end = BTreeSet::new();
    let until = std::time::Instant::now() + wait;
    while !partitions.is_subset(&at_end) && std::time::Instant::now() < until {
        match reader.poll(Duration::from_millis(100)) {
            Some(Ok(msg)) => {
                if let Some(text) = msg.payload().and_then(|p| std::str::from_utf8(p).ok()) {
                    notes.push(text.to_owned());
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) if fschain_kafka::stops_a_consumer(&e) => return Err(kafka_error(e)),
            _ => {}
        }
    }
    Ok(notes)
}

/// What this member has read of each partition, and what it committed.
#[derive(Default)]
struct Progress {
    /// Partition → offset after the last message read.
    next: BTreeMap<i32, i64>,
    committed: BTreeMap<i32, i64>,
    chains_in: BTreeMap<i32, BTreeSet<ChainName>>,
    /// Partitions read to their end since their last message...
    at_end: BTreeSet<i32>,
    /// ...while this member held these partitions (a rebalance starts over).
    assigned: BTreeSet<i32>,
}

impl Progress {
    /// Whether every partition assigned to this member has been read to
    /// its end.
    fn all_at_end(&mut self, consumer: &SiteConsumer) -> Result<bool, ConsumerError> {
        let assignment = consumer.assignment().map_err(kafka_error)?;
        let assigned: BTreeSet<i32> = assignment
            .elements()
            .iter()
            .map(|e| e.partition())
            .collect();
        if assigned != self.assigned {
            // A partition this member did not hold at the last check may
            // have been read by another since: its reported end is stale.
            let before = std::mem::replace(&mut self.assigned, assigned);
            let first = before.is_empty();
            self.at_end
                .retain(|p| self.assigned.contains(p) && (first || before.contains(p)));
        }
        Ok(!self.assigned.is_empty() && self.assigned.iter().all(|p| self.at_end.contains(p)))
    }

    fn read(&mut self, partition: i32, offset: i64, chain: Option<ChainName>) {
        if let Some(chain) = chain {
            self.chains_in.entry(partition).or_default().insert(chain);
        }
        self.next.insert(partition, offset + 1);
    }

    /// Commits, per partition, the oldest offset any of its chains still
    /// needs (when it moved).
    fn commit(&mut self, ingest: &Ingest, consumer: &SiteConsumer, topic: &str, mode: CommitMode) {
        let mut tpl = TopicPartitionList::new();
        for (&p, &n) in &self.next {
            let low = self
                .chains_in
                .get(&p)
                .into_iter()
                .flatten()
                .filter_map(|c| ingest.low_water(c))
                .min()
                .map_or(n, |l| l.min(n));
            if self.committed.get(&p) != Some(&low) {
                let _ = tpl.add_partition_offset(topic, p, Offset::Offset(low));
                self.committed.insert(p, low);
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = consumer.commit(&tpl, mode) {
                warn!(topic, error = %e, "offset commit failed; a restart re-reads a little more");
            }
        }
    }
}

/// Whether every assigned partition has been read to its end.
fn caught_up(
    consumer: &SiteConsumer,
    topic: &str,
    next: &BTreeMap<i32, i64>,
) -> Result<bool, ConsumerError> {
    let assignment = consumer.assignment().map_err(kafka_error)?;
    if assignment.count() == 0 {
        return Ok(false);
    }
    let committed = consumer
        .committed(Duration::from_secs(10))
        .map_err(kafka_error)?;
    for elem in assignment.elements() {
        let p = elem.partition();
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .map_err(kafka_error)?;
        let position = next.get(&p).copied().or_else(|| {
            committed
                .find_partition(topic, p)
                .and_then(|e| e.offset().to_raw())
                .filter(|&o| o >= 0)
        });
        let position = position.unwrap_or(low);
        tracing::debug!(topic, partition = p, low, high, position, "idle check");
        if position < high {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_retried_after_one_second_doubling_to_a_minute() {
        let mut backoff = DiskFullBackoff::default();
        let waits: Vec<u64> = (0..9).map(|_| backoff.next().as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn the_witness_topic_is_read_up_to_each_partition_end() {
        let ends = BTreeMap::from([(0, 5), (2, 1)]);
        // Nothing new on a topic read before: no wait at all.
        assert!(!short_of(&BTreeMap::new(), &BTreeMap::new()));
        assert!(short_of(&ends, &BTreeMap::new()));
        assert!(short_of(&ends, &BTreeMap::from([(0, 5)])));
        assert!(short_of(&ends, &BTreeMap::from([(0, 4), (2, 1)])));
        assert!(!short_of(&ends, &BTreeMap::from([(0, 5), (2, 1)])));
        // Past an end read while this ran: done.
        assert!(!short_of(&ends, &BTreeMap::from([(0, 7), (2, 3), (1, 1)])));
    }
}
