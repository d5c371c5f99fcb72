//! fschain's one Kafka adapter: what both the producer's side and a site
//! need, so that neither depends on the other.
//!
//! [`config`]: the one place librdkafka clients are configured, with the
//! settings fschain owns. [`partitions`]: partition discovery.
//! [`is_transient`]: which errors may pass. [`QuietEof`]: a client context
//! for consumers that ask for partition ends.
//!
//! [`StartGuard`]: reading a partition from an exact offset, also on a
//! broker that answers a fetch from inside a record batch with the batches
//! after it. A Kafka broker answers with that whole batch, and the client
//! drops what lies before the offset asked for. tansu 0.6 (the broker the
//! tests run against) answers with the batches after it, or with nothing
//! when the batch is the last one, so the rest of that batch would be
//! skipped without a word: the checkpoint a replay starts at, the block a
//! restarted site resumes from, the operations a restarted agent has not
//! applied yet.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, Producer as _, ProducerContext};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{Offset, TopicPartitionList};
use tracing::warn;

pub mod config;

pub use config::{client_config, Role, MAX_MESSAGE_BYTES};

/// What went wrong talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum KafkaClientError {
    #[error("kafka: {what}")]
    Kafka {
        what: &'static str,
        #[source]
        source: KafkaError,
    },
    #[error("kafka: the [kafka] setting {key:?} is fschain's own: {why}")]
    OwnedSetting { key: String, why: &'static str },
    #[error("kafka: topic {topic} does not exist; run `fschain topics create`")]
    NoTopic { topic: String },
    #[error("kafka: creating topic {topic}: {code}")]
    CreateTopic {
        topic: String,
        code: RDKafkaErrorCode,
    },
    /// Messages the broker did not acknowledge (librdkafka reports why in
    /// each delivery report, as text).
    #[error("kafka: {count} messages were not acknowledged: {reason}")]
    NotAcknowledged { count: u64, reason: String },
    /// The brokers refused this client: a failed SASL authentication or
    /// TLS handshake. librdkafka only logs these and keeps retrying.
    #[error("kafka: the brokers refused the connection: {cause}; {hint}")]
    Refused { cause: String, hint: &'static str },
    /// The client's principal lacks an ACL.
    #[error("kafka: {what}: not authorized; the principal (sasl.username) needs an ACL for it, see docs/reliability.md")]
    NotAuthorized {
        what: String,
        #[source]
        source: KafkaError,
    },
    /// Records a reader still needed were deleted from the topic (by
    /// retention or delete-records) before it read them.
    #[error(
        "kafka: {topic} partition {partition}: the records from offset {needed} up to {earliest} were deleted (retention or delete-records) before this site read them, so blocks are missing; rebuild the site with `fschain replay` into an empty root"
    )]
    RecordsDeleted {
        topic: String,
        partition: i32,
        needed: i64,
        earliest: i64,
    },
}

impl KafkaClientError {
    /// Whether trying again later may succeed: a broker that may come
    /// back, a leader being elected. A client that cannot be created, a
    /// setting refused, a topic missing or a message too large stay so.
    pub fn is_transient(&self) -> bool {
        match self {
            KafkaClientError::Kafka { source, .. } => is_transient(source),
            KafkaClientError::NotAcknowledged { .. } => true,
            KafkaClientError::OwnedSetting { .. }
            | KafkaClientError::NoTopic { .. }
            | KafkaClientError::CreateTopic { .. }
            | KafkaClientError::RecordsDeleted { .. }
            | KafkaClientError::Refused { .. }
            | KafkaClientError::NotAuthorized { .. } => false,
        }
    }
}

/// fschain's one notion of a Kafka error that may pass.
pub fn is_transient(error: &KafkaError) -> bool {
    match error {
        KafkaError::ClientCreation(_) | KafkaError::ClientConfig(..) => false,
        other => other.rdkafka_error_code().is_none_or(|code| {
            !matches!(
                code,
                RDKafkaErrorCode::MessageSizeTooLarge
                    | RDKafkaErrorCode::InvalidMessageSize
                    | RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::GroupAuthorizationFailed
                    | RDKafkaErrorCode::ClusterAuthorizationFailed
                    | RDKafkaErrorCode::SaslAuthenticationFailed
                    | RDKafkaErrorCode::UnknownTopicOrPartition
                    | RDKafkaErrorCode::InvalidConfig
            )
        }),
    }
}

/// Wraps a client error with what was being done.
pub fn kafka(what: &'static str) -> impl FnOnce(KafkaError) -> KafkaClientError {
    move |source| {
        if let Some(refused) = refused() {
            return refused;
        }
        if matches!(
            source.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::GroupAuthorizationFailed
                    | RDKafkaErrorCode::ClusterAuthorizationFailed
            )
        ) {
            return KafkaClientError::NotAuthorized {
                what: what.to_owned(),
                source,
            };
        }
        KafkaClientError::Kafka { what, source }
    }
}

/// Why the brokers refused this process, once one did (see
/// [`note_client_error`]).
static REFUSED: Mutex<Option<String>> = Mutex::new(None);
static WAS_REFUSED: AtomicBool = AtomicBool::new(false);

/// Called from every fschain client context's error callback: a failed
/// SASL authentication or TLS handshake is remembered, so that what
/// librdkafka would retry for ever becomes [`KafkaClientError::Refused`]
/// at the next call that reaches the brokers.
pub fn note_client_error(error: &KafkaError, reason: &str) {
    let code = match error {
        KafkaError::Global(code) => Some(*code),
        other => other.rdkafka_error_code(),
    };
    if matches!(
        code,
        Some(
            RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::SSL
        )
    ) {
        if let Ok(mut refused) = REFUSED.lock() {
            refused.get_or_insert_with(|| reason.to_owned());
            WAS_REFUSED.store(true, Ordering::SeqCst);
        }
    }
}

/// Whether a consumer's poll error means this client may not go on:
/// refused by the brokers, or not authorized. Anything else a poll
/// reports (a leader moving, a topic briefly unknown while a cluster
/// restarts) passes, and the poll loop carries on.
pub fn stops_a_consumer(error: &KafkaError) -> bool {
    refused().is_some()
        || matches!(
            error.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::GroupAuthorizationFailed
                    | RDKafkaErrorCode::ClusterAuthorizationFailed
            )
        )
}

/// The brokers' refusal, if one came.
pub fn refused() -> Option<KafkaClientError> {
    if !WAS_REFUSED.load(Ordering::SeqCst) {
        return None;
    }
    let cause = REFUSED.lock().ok()?.clone()?;
    let hint = if cause.contains("SASL") || cause.contains("uthentication") {
        "check sasl.mechanism, sasl.username and sasl.password in [kafka]"
    } else {
        "check ssl.ca.location in [kafka]: the CA that signed the brokers' certificates"
    };
    Some(KafkaClientError::Refused { cause, hint })
}

/// How long the first call to the brokers may take before it gives up.
const FIRST_CONTACT: Duration = Duration::from_secs(10);

/// Waits until the broker has acknowledged every message `producer` has
/// queued (their delivery reports served), or `timeout` passes.
///
/// rdkafka's own `flush` waits up to 100 ms between checks, so each flush
/// of a small message cost 100 ms against a broker that answers in 5;
/// this polls for the reports instead.
pub fn wait_acknowledged<C: ProducerContext>(
    producer: &BaseProducer<C>,
    timeout: Duration,
) -> Result<(), KafkaClientError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let waiting = producer.in_flight_count();
        if waiting == 0 {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(KafkaClientError::NotAcknowledged {
                count: waiting.try_into().unwrap_or(0),
                reason: format!("none within {timeout:?}"),
            });
        }
        producer.poll(Duration::from_millis(5));
    }
}

/// The partitions of `topic`: fschain's one partition discovery.
///
/// This is a client's first call to the brokers, so it also serves the
/// client's events (it must not be assigned partitions yet): a refusal
/// the brokers give meanwhile ends it at once.
pub fn partitions(
    consumer: &BaseConsumer<QuietEof>,
    topic: &str,
) -> Result<Vec<i32>, KafkaClientError> {
    // In short steps, so that a refusal (logged by librdkafka meanwhile)
    // ends the wait at once.
    let started = Instant::now();
    let metadata = loop {
        match consumer.fetch_metadata(Some(topic), Duration::from_secs(1)) {
            Ok(metadata) => break metadata,
            Err(e) => {
                if consumer.assignment().is_ok_and(|a| a.count() == 0) {
                    // Serves the error callbacks; nothing is assigned, so
                    // no message can come.
                    let _ = consumer.poll(Duration::ZERO);
                }
                if let Some(refused) = refused() {
                    return Err(refused);
                }
                if started.elapsed() >= FIRST_CONTACT {
                    return Err(kafka("reading the topic's metadata")(e));
                }
            }
        }
    };
    if let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) {
        if let Some(code) = t.error() {
            let code = RDKafkaErrorCode::from(code);
            if code == RDKafkaErrorCode::TopicAuthorizationFailed {
                return Err(KafkaClientError::NotAuthorized {
                    what: format!("reading topic {topic}"),
                    source: KafkaError::MetadataFetch(code),
                });
            }
        }
    }
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(KafkaClientError::NoTopic {
            topic: topic.to_owned(),
        });
    }
    Ok(partitions)
}

/// A client context that logs librdkafka's errors as the default one
/// does, except the end of a partition: fschain asks for it
/// (`enable.partition.eof`) and it is no error. It also notes each
/// rebalance of a group member's partitions, for [`QuietEof::take_rebalanced`].
#[derive(Debug, Default)]
pub struct QuietEof {
    rebalanced: AtomicBool,
}

impl QuietEof {
    /// Whether the group moved this member's partitions since the last
    /// call: what it remembers of partitions (and of the chains in them)
    /// may belong to another member now.
    pub fn take_rebalanced(&self) -> bool {
        self.rebalanced.swap(false, Ordering::SeqCst)
    }
}

impl ClientContext for QuietEof {
    fn error(&self, error: KafkaError, reason: &str) {
        note_client_error(&error, reason);
        if matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            return;
        }
        if is_transient(&error) {
            warn!("librdkafka: {error}: {reason}");
        } else {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }
}

impl ConsumerContext for QuietEof {
    /// rdkafka's own rebalance, except that assigned partitions start at
    /// the group's committed offsets, or at their beginning (fschain's
    /// `auto.offset.reset`) when there is none, looked up here: left to
    /// librdkafka, a partition without a committed offset waits out a
    /// 100 ms backoff before its first fetch (`rd_kafka_offset_reset`).
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let done = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                start_where_committed(consumer, tpl);
                if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                }
            }
            other => {
                if other != RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                    tracing::error!("librdkafka: rebalancing: {}", RDKafkaErrorCode::from(other));
                }
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
        };
        if let Err(e) = done {
            tracing::error!("librdkafka: applying a rebalance: {e}");
        }
        self.rebalanced.store(true, Ordering::SeqCst);
    }
}

/// Sets each partition of `tpl` to start at the group's committed offset,
/// or at its beginning when the group committed none. Leaves `tpl` as it
/// is if the committed offsets cannot be read (librdkafka then looks them
/// up itself).
fn start_where_committed<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    tpl: &mut TopicPartitionList,
) {
    let Ok(committed) = consumer.committed_offsets(tpl.clone(), Duration::from_secs(5)) else {
        return;
    };
    for e in committed.elements() {
        let start = match e.offset() {
            Offset::Offset(o) if e.error().is_ok() => Offset::Offset(o),
            Offset::Invalid if e.error().is_ok() => Offset::Beginning,
            // Anything else: librdkafka decides, as it would have.
            _ => continue,
        };
        let _ = tpl.set_partition_offset(e.topic(), e.partition(), start);
    }
}

/// Closes a group member at once: it leaves the group, and what it holds is
/// released. rdkafka's `BaseConsumer::drop` does the same, but polls in
/// 100 ms steps until it is closed and so always waits out one step;
/// closed here, in 5 ms steps, its drop has nothing left to wait for.
pub fn close_consumer<C: ConsumerContext>(consumer: &BaseConsumer<C>, timeout: Duration) {
    if consumer.close_queue().is_err() {
        return;
    }
    let deadline = Instant::now() + timeout;
    while !consumer.closed() && Instant::now() < deadline {
        let _ = consumer.poll(Duration::from_millis(5));
    }
}

/// Checks where each partition's reading really starts.
///
/// The first message read from a partition must come from its start (the
/// offset it was assigned at, or else the group's committed offset). One
/// from beyond it, or a partition that gives neither a message nor its end
/// (`enable.partition.eof`) for [`SILENCE`], means the broker skipped: the
/// partition is sought back 1, 2, 4... offsets before its start until a
/// batch boundary is found. Messages before the start are then read again;
/// the caller tells them by [`StartGuard::before_start`].
#[derive(Debug, Default)]
pub struct StartGuard {
    /// Partition → the offset its reading starts at (`None`: from where the
    /// consumer's offset reset puts it, which is a batch boundary).
    start: BTreeMap<i32, Option<i64>>,
    /// Partition → the offset it was sought back to last.
    sought: BTreeMap<i32, i64>,
    /// Partition → since when it has been silent (no message, no end),
    /// from the first empty poll that found it so or its last seek.
    silent_since: BTreeMap<i32, Instant>,
}

/// How long a partition may give nothing before it is read from further
/// back: well past a first fetch's round trip, so that a broker that is
/// merely slow to answer is not taken for one that skipped.
const SILENCE: Duration = Duration::from_millis(300);

impl StartGuard {
    /// Partitions assigned at these offsets (`None`: at their beginning);
    /// any other is looked up among the group's committed offsets.
    pub fn at(start: impl IntoIterator<Item = (i32, Option<i64>)>) -> Self {
        StartGuard {
            start: start.into_iter().collect(),
            ..StartGuard::default()
        }
    }

    /// Whether a message at `offset` lies before `partition`'s start: read
    /// again after a seek back, and already taken.
    pub fn before_start(&self, partition: i32, offset: i64) -> bool {
        self.start
            .get(&partition)
            .copied()
            .flatten()
            .is_some_and(|start| offset < start)
    }

    /// Whether `partition` was sought back: its end reported since may be
    /// that of a fetch made before.
    pub fn sought(&self, partition: i32) -> bool {
        self.sought.contains_key(&partition)
    }

    /// Whether the first message read from `partition`, at `offset`, comes
    /// from no later than its start. Otherwise seeks further back and
    /// returns false: the message will be read again from there; or, when
    /// the partition now begins after that start, fails with
    /// [`KafkaClientError::RecordsDeleted`].
    pub fn first_read<C: ConsumerContext, K: Consumer<C>>(
        &mut self,
        consumer: &K,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<bool, KafkaClientError> {
        match self.start_of(consumer, topic, partition)? {
            Some(start) if offset > start => {
                // Past the start: either the broker skipped (seek back), or
                // what lay there is gone, which no seek brings back.
                let (earliest, _) = consumer
                    .fetch_watermarks(topic, partition, Duration::from_secs(10))
                    .map_err(kafka("reading the partition's first offset"))?;
                if start < earliest {
                    return Err(KafkaClientError::RecordsDeleted {
                        topic: topic.to_owned(),
                        partition,
                        needed: start,
                        earliest,
                    });
                }
                Ok(!self.seek_back(consumer, topic, partition, start, Some(offset))?)
            }
            _ => Ok(true),
        }
    }

    /// A poll found nothing: each assigned partition of `topic` that has
    /// given neither a message nor its end (`heard(partition)` is false)
    /// since its reading started, for longer than [`SILENCE`], is read from
    /// further back.
    pub fn nothing_read<C: ConsumerContext, K: Consumer<C>>(
        &mut self,
        consumer: &K,
        topic: &str,
        heard: impl Fn(i32) -> bool,
    ) -> Result<(), KafkaClientError> {
        let assignment = consumer
            .assignment()
            .map_err(kafka("reading the assignment"))?;
        for e in assignment.elements_for_topic(topic) {
            let p = e.partition();
            if heard(p) {
                self.silent_since.remove(&p);
                continue;
            }
            let since = *self.silent_since.entry(p).or_insert_with(Instant::now);
            if since.elapsed() < SILENCE {
                continue;
            }
            if let Some(start) = self.start_of(consumer, topic, p)? {
                self.seek_back(consumer, topic, p, start, None)?;
            }
        }
        Ok(())
    }

    fn start_of<C: ConsumerContext, K: Consumer<C>>(
        &mut self,
        consumer: &K,
        topic: &str,
        partition: i32,
    ) -> Result<Option<i64>, KafkaClientError> {
        if let Some(&start) = self.start.get(&partition) {
            return Ok(start);
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, partition);
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .map_err(kafka("reading the committed offsets"))?;
        let start = committed
            .find_partition(topic, partition)
            .and_then(|e| e.offset().to_raw())
            .filter(|&o| o >= 0);
        self.start.insert(partition, start);
        Ok(start)
    }

    /// Seeks `partition` back from where it was sought last (1, 2, 4...
    /// offsets before `start`); false when there is nothing further back.
    fn seek_back<C: ConsumerContext, K: Consumer<C>>(
        &mut self,
        consumer: &K,
        topic: &str,
        partition: i32,
        start: i64,
        got: Option<i64>,
    ) -> Result<bool, KafkaClientError> {
        let last = self.sought.get(&partition).copied().unwrap_or(start);
        let Some(back) = next_seek(start, last) else {
            return Ok(false);
        };
        warn!(
            topic,
            partition,
            asked = start,
            got,
            again_from = back,
            "the broker skipped offsets at the start of a fetch (tansu 0.6 skips the rest of a record batch); reading from further back"
        );
        consumer
            .seek(
                topic,
                partition,
                Offset::Offset(back),
                Duration::from_secs(10),
            )
            .map_err(kafka("seeking back"))?;
        self.sought.insert(partition, back);
        self.silent_since.insert(partition, Instant::now());
        Ok(true)
    }
}

/// Where to seek next when reading from `last` (at first, `start`) did not
/// reach back to `start`: twice as far back as the last step, never below 0.
fn next_seek(start: i64, last: i64) -> Option<i64> {
    (last > 0).then(|| (last - (start - last).max(1)).max(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeks_back_doubling_to_the_partition_start() {
        let mut at = 32;
        let mut seen = Vec::new();
        while let Some(back) = next_seek(32, at) {
            seen.push(back);
            at = back;
        }
        assert_eq!(seen, [31, 30, 28, 24, 16, 0]);
        assert_eq!(next_seek(0, 0), None);
        assert_eq!(next_seek(5, 5), Some(4));
    }

    #[test]
    fn messages_before_a_given_start_are_told_apart() {
        let guard = StartGuard::at([(2, Some(10)), (1, None)]);
        assert!(guard.before_start(2, 9));
        assert!(!guard.before_start(2, 10));
        assert!(!guard.before_start(1, 0));
        assert!(!guard.sought(2));
    }
}
