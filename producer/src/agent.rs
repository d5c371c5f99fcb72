//! `fschain agent`: consume `<prefix>.ops` for one chain, apply and seal,
//! publish. Which operations are applied exactly once is decided by
//! [`OpsLedger`](crate::ops_ledger::OpsLedger); this module is its IO.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fschain_kafka::{client_config, QuietEof, Role, StartGuard};
use fschain_schema::sshsig::SignaturePolicy;
use fschain_schema::wire::SigningKey;
use fschain_schema::Operation;
use fschain_store::crash::{crash_point, CrashPoint};
use fschain_store::layout::{write_atomic, RootLayout};
use fschain_store::StoreError;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use crate::ops_ledger::{IngestRecord, OpsLedger};
use crate::outbox::StreamPolicy;
use crate::publish::{kafka_error, publish_pending, KafkaTarget, Publisher};
use crate::writer::Clock as _;
use crate::{ChainWriter, ProducerError};

/// How the agent cuts blocks.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub block_ops: usize,
    pub block_interval: Duration,
    pub policy: StreamPolicy,
    /// Exit once every ops partition is consumed to its end and everything
    /// sealed is published.
    pub until_idle: bool,
    /// Which operations' signatures are required and who may sign.
    pub signatures: SignaturePolicy,
}

fn read_ingest(layout: &RootLayout) -> Result<IngestRecord, ProducerError> {
    let path = layout.ingest();
    let record: IngestRecord = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            why: e.to_string(),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => IngestRecord::default(),
        Err(e) => return Err(StoreError::io(&path, e).into()),
    };
    Ok(record)
}

fn write_ingest(layout: &RootLayout, record: &IngestRecord) -> Result<(), ProducerError> {
    let bytes = serde_json::to_vec(record).map_err(|e| StoreError::Corrupt {
        path: layout.ingest(),
        why: e.to_string(),
    })?;
    write_atomic(&layout.ingest(), &bytes)?;
    Ok(())
}

/// What an agent run did.
#[derive(Debug, Default, Clone, Copy)]
pub struct AgentSummary {
    pub applied: u64,
    pub rejected: u64,
    pub blocks: u64,
}

/// Why the agent did not apply an operation it read (the `reason` label of
/// the `operations_rejected` metric).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpRejection {
    /// Not an operation's JSON.
    Malformed,
    /// Unsigned where signatures are required, or a signature that does not
    /// check out or is not allowed for the element.
    Signature,
    /// A well-formed operation the chain refused (see the log line).
    Refused,
}

impl OpRejection {
    pub const ALL: [OpRejection; 3] = [
        OpRejection::Malformed,
        OpRejection::Signature,
        OpRejection::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OpRejection::Malformed => "malformed",
            OpRejection::Signature => "signature",
            OpRejection::Refused => "refused",
        }
    }
}

/// What the agent tells its caller as it goes (for metrics).
#[derive(Debug)]
pub enum AgentEvent<'a> {
    Sealed(&'a BlockDone),
    Rejected(OpRejection),
}

/// What the agent did for one block (for metrics).
#[derive(Debug)]
pub struct BlockDone {
    /// How long sealing it took.
    pub seal: Duration,
    /// How long the publish after it took and what it sent (`None`: it
    /// failed and will be retried).
    pub published: Option<(Duration, crate::publish::PublishSummary)>,
}

/// Runs the agent until `shutdown` is set (or, with `until_idle`, until it
/// has caught up). Operations consumed when it stops are sealed first.
pub fn run_agent(
    writer: &mut ChainWriter,
    target: &KafkaTarget,
    options: &AgentOptions,
    key: &SigningKey,
    shutdown: &AtomicBool,
    observe: &mut dyn FnMut(&ChainWriter, AgentEvent<'_>),
) -> Result<AgentSummary, ProducerError> {
    let layout = writer.layout().clone();
    let chain = writer.chain().clone();
    crate::diverged::check_root(&layout, target, key)?;
    let publisher = Publisher::new(target)?;
    publish_pending(&layout, &publisher, &options.policy, key)?;

    let mut ledger = OpsLedger::recover(read_ingest(&layout)?, writer.head().height);
    let topic = &target.topics.ops;
    let (consumer, partitions, mut guard) = subscribe(target, &chain, &ledger)?;
    // Partitions a message was taken from since the start, and those read
    // to their end since their last message.
    let mut started: BTreeSet<i32> = BTreeSet::new();
    let mut at_end: BTreeSet<i32> = BTreeSet::new();
    info!(chain = %chain, topic, partitions = partitions.len(), "agent consuming");

    let mut summary = AgentSummary::default();
    let mut opened: Option<Instant> = None;
    loop {
        let stopping = shutdown.load(Ordering::SeqCst);
        let mut idle = false;
        if !stopping {
            match consumer.poll(Duration::from_millis(50)) {
                Some(Ok(msg)) => 'msg: {
                    let (p, o) = (msg.partition(), msg.offset());
                    if !started.contains(&p) {
                        if !guard.first_read(&consumer, topic, p, o)? {
                            break 'msg;
                        }
                        started.insert(p);
                    }
                    if guard.before_start(p, o) {
                        // Read again after a seek back; applied before.
                        break 'msg;
                    }
                    at_end.remove(&p);
                    ledger.consumed(p, o);
                    if msg.key().is_some_and(|k| k == chain.as_str().as_bytes()) {
                        match apply_message(writer, &options.signatures, msg.payload(), topic, p, o)
                        {
                            Ok(()) => {
                                summary.applied += 1;
                                opened.get_or_insert_with(Instant::now);
                            }
                            Err(why) => {
                                summary.rejected += 1;
                                observe(writer, AgentEvent::Rejected(why));
                            }
                        }
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    // After a seek back, the end of an earlier fetch says
                    // nothing.
                    if started.contains(&p) || !guard.sought(p) {
                        at_end.insert(p);
                    }
                }
                Some(Err(e)) => {
                    if let Some(refused) = fschain_kafka::refused() {
                        return Err(refused.into());
                    }
                    if fschain_kafka::stops_a_consumer(&e) {
                        return Err(kafka_error(e));
                    }
                    warn!(topic, error = %e, "consume error");
                    std::thread::sleep(Duration::from_millis(200));
                }
                None => {
                    guard.nothing_read(&consumer, topic, |p| {
                        started.contains(&p) || at_end.contains(&p)
                    })?;
                    idle = options.until_idle && at_end.len() == partitions.len();
                }
            }
        }
        let pending = writer.pending_len();
        let due = pending >= options.block_ops
            || (pending > 0 && opened.is_some_and(|t| t.elapsed() >= options.block_interval))
            || (pending > 0 && (stopping || idle));
        if due {
            write_ingest(&layout, &ledger.before_seal(writer.head().height + 1))?;
            let sealing = Instant::now();
            writer.seal()?;
            let seal_took = sealing.elapsed();
            write_ingest(&layout, &ledger.after_seal())?;
            crash_point(CrashPoint::AgentSealed);
            summary.blocks += 1;
            opened = None;
            commit(&consumer, topic, ledger.offsets());
            let publishing = Instant::now();
            let published = match publish_pending(&layout, &publisher, &options.policy, key) {
                Ok(summary) => Some(summary),
                Err(e) if e.is_transient() => {
                    warn!(error = %e, "publish failed; will retry");
                    None
                }
                Err(e) => return Err(e),
            };
            observe(
                writer,
                AgentEvent::Sealed(&BlockDone {
                    seal: seal_took,
                    published: published.map(|p| (publishing.elapsed(), p)),
                }),
            );
        } else if pending == 0 && ledger.has_unrecorded() && (idle || stopping) {
            // Only skipped messages since the last seal: remember that they
            // were read, so a restart does not log them again.
            write_ingest(&layout, &ledger.read_without_seal(writer.head().height))?;
            commit(&consumer, topic, ledger.offsets());
        }
        if stopping || (idle && writer.pending_len() == 0) {
            publish_pending(&layout, &publisher, &options.policy, key)?;
            return Ok(summary);
        }
    }
}

/// The agent's consumer of the ops topic, assigned every partition at the
/// ledger's offsets, and the guard that checks where each really starts.
fn subscribe(
    target: &KafkaTarget,
    chain: &fschain_schema::ChainName,
    ledger: &OpsLedger,
) -> Result<(BaseConsumer<QuietEof>, Vec<i32>, StartGuard), ProducerError> {
    let group = format!("fschain-agent-{chain}");
    // Idle is known from the fetches' own ends (enable.partition.eof),
    // not from ListOffsets, which some brokers answer wrongly.
    let consumer: BaseConsumer<QuietEof> =
        client_config(Role::Agent, &target.brokers, &target.extra)?
            .set("group.id", &group)
            .create_with_context(QuietEof::default())
            .map_err(kafka_error)?;
    let topic = &target.topics.ops;
    let partitions = fschain_kafka::partitions(&consumer, topic)?;
    let mut assignment = TopicPartitionList::new();
    for &p in &partitions {
        let offset = ledger.start(p).map_or(Offset::Beginning, Offset::Offset);
        assignment
            .add_partition_offset(topic, p, offset)
            .map_err(kafka_error)?;
    }
    consumer.assign(&assignment).map_err(kafka_error)?;
    // Resuming inside a record batch must not skip the rest of it.
    let guard = StartGuard::at(partitions.iter().map(|p| (*p, ledger.start(*p))));
    Ok((consumer, partitions, guard))
}

/// Applies one operation of this chain to the open block; an operation
/// that does not parse or apply is logged (topic, partition, offset) and
/// skipped. Returns whether it was applied.
fn apply_message(
    writer: &mut ChainWriter,
    signatures: &SignaturePolicy,
    payload: Option<&[u8]>,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<(), OpRejection> {
    let text = payload.map(String::from_utf8_lossy).unwrap_or_default();
    let not_applied = |why: OpRejection, e: &dyn std::fmt::Display| {
        warn!(topic, partition, offset, reason = why.as_str(), error = %e, "operation not applied");
        why
    };
    let mut op =
        Operation::from_json(&text).map_err(|e| not_applied(OpRejection::Malformed, &e))?;
    signatures
        .check(&mut op, crate::writer::SystemClock.now())
        .map_err(|e| not_applied(OpRejection::Signature, &e))?;
    writer
        .apply(op)
        .map(|_| ())
        .map_err(|e| not_applied(OpRejection::Refused, &e))
}

fn commit(consumer: &BaseConsumer<QuietEof>, topic: &str, offsets: &BTreeMap<i32, i64>) {
    let mut tpl = TopicPartitionList::new();
    for (&p, &o) in offsets {
        let _ = tpl.add_partition_offset(topic, p, Offset::Offset(o));
    }
    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
        warn!(error = %e, "could not commit ops offsets (informational; meta/ingest is the record)");
    }
}
