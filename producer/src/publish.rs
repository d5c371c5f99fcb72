//! Publishing sealed blocks to Kafka: each block's events to
//! `<prefix>.events` and its signed manifest and chunks to `<prefix>.blocks`
//! (key = chain, so a chain's blocks stay in one partition, in order).
//!
//! The producer is idempotent with `acks=all`; `meta/published` advances
//! only after the broker acknowledged every message of a block. A crash
//! anywhere before that publishes the block again, as a new stream
//! attempt, and sites drop what they already hold.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use fschain_kafka::{client_config, wait_acknowledged, KafkaClientError, Role};
use fschain_schema::wire::{event_key, event_message, SigningKey, Topics, STATE_OMITTED_HEADER};
use fschain_schema::{BlockHeader, ChainName, Event, EventLine};
use fschain_store::crash::{crash_point, CrashPoint};
use fschain_store::layout::RootLayout;
use fschain_store::{ChainDir, StoreError};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use tracing::{debug, info};

use crate::outbox::{
    keep_manifest, published_height, record_published, stream_block, OutgoingBlock, StreamPolicy,
};
use crate::ProducerError;

/// Where to publish.
#[derive(Clone, Debug)]
pub struct KafkaTarget {
    pub brokers: String,
    pub topics: Topics,
    /// Extra librdkafka settings from the config file (`kafka.<name>`).
    pub extra: Vec<(String, String)>,
}

pub(crate) fn kafka_error(e: KafkaError) -> ProducerError {
    fschain_kafka::kafka("talking to the brokers")(e).into()
}

#[derive(Default)]
struct DeliveryTally {
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl ClientContext for DeliveryTally {
    fn error(&self, error: KafkaError, reason: &str) {
        fschain_kafka::note_client_error(&error, reason);
        tracing::warn!("librdkafka: {error}: {reason}");
    }
}

impl ProducerContext for DeliveryTally {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut last) = self.last_error.lock() {
                *last = Some(e.to_string());
            }
        }
    }
}

/// An idempotent Kafka producer that knows whether every message it sent
/// was acknowledged.
pub struct Publisher {
    producer: BaseProducer<DeliveryTally>,
    topics: Topics,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("topics", &self.topics)
            .finish()
    }
}

impl Publisher {
    pub fn new(target: &KafkaTarget) -> Result<Self, ProducerError> {
        let producer = client_config(Role::Publisher, &target.brokers, &target.extra)?
            .create_with_context(DeliveryTally::default())
            .map_err(kafka_error)?;
        Ok(Publisher {
            producer,
            topics: target.topics.clone(),
        })
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// Queues one message, waiting for room when the queue is full.
    pub fn send(&self, topic: &str, key: &str, payload: &[u8]) -> Result<(), ProducerError> {
        self.send_record(BaseRecord::to(topic).key(key).payload(payload))
    }

    /// Queues one event of an `events.log` line, without its operation's
    /// state when the line is long ([`event_message`]).
    fn send_event(&self, key: &str, line: &[u8]) -> Result<(), ProducerError> {
        let message = event_message(line)?;
        let record = BaseRecord::to(&self.topics.events)
            .key(key)
            .payload(message.value.as_slice());
        match message.state_omitted {
            None => self.send_record(record),
            Some(bytes) => {
                let bytes = bytes.to_string();
                self.send_record(record.headers(OwnedHeaders::new().insert(Header {
                    key: STATE_OMITTED_HEADER,
                    value: Some(&bytes),
                })))
            }
        }
    }

    fn send_record(&self, mut record: BaseRecord<'_, str, [u8]>) -> Result<(), ProducerError> {
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    self.producer.poll(Duration::from_millis(20));
                    record = back;
                }
                Err((e, _)) => return Err(kafka_error(e)),
            }
        }
    }

    /// Waits until every queued message is acknowledged; fails if any was
    /// not (so the caller does not record it as published).
    pub fn flush(&self, timeout: Duration) -> Result<(), ProducerError> {
        wait_acknowledged(&self.producer, timeout)?;
        let failed = self.producer.context().failed.swap(0, Ordering::SeqCst);
        if failed > 0 {
            let last = self
                .producer
                .context()
                .last_error
                .lock()
                .ok()
                .and_then(|l| l.clone())
                .unwrap_or_default();
            return Err(KafkaClientError::NotAcknowledged {
                count: failed,
                reason: last,
            }
            .into());
        }
        Ok(())
    }
}

/// What one publish run did.
#[derive(Debug, Default, Clone, Copy)]
pub struct PublishSummary {
    pub blocks: u64,
    pub events: u64,
    pub chunks: u64,
    pub bytes: u64,
    pub head: u64,
}

/// Publishes every sealed block not yet on the topics, in height order,
/// recording each once the broker has acknowledged all of it.
pub fn publish_pending(
    layout: &RootLayout,
    publisher: &Publisher,
    policy: &StreamPolicy,
    key: &SigningKey,
) -> Result<PublishSummary, ProducerError> {
    let PendingRange {
        chain,
        from,
        head,
        headers,
    } = pending_range(layout)?;
    let mut summary = PublishSummary {
        head,
        ..PublishSummary::default()
    };
    // Each block's frames are queued as its stream is made, its events on
    // a thread of their own meanwhile. Acknowledgements are awaited only
    // once enough is in flight, and at the end, so a run that catches up
    // on many blocks waits for the broker once per batch rather than once
    // a block.
    let mut in_flight = InFlight::default();
    for height in from..=head {
        let block = send_block(layout, publisher, &chain, height, &headers, policy, key)?;
        summary.events += block.events;
        let block = block.block;
        summary.chunks += u64::from(block.chunks);
        in_flight.bytes += block.bytes;
        in_flight.blocks.push(block);
        if in_flight.blocks.len() >= MAX_BLOCKS_IN_FLIGHT || in_flight.bytes >= MAX_BYTES_IN_FLIGHT
        {
            in_flight.settle(layout, publisher, &mut summary)?;
        }
    }
    in_flight.settle(layout, publisher, &mut summary)?;
    if summary.blocks > 0 {
        info!(chain = %chain, blocks = summary.blocks, head, "published");
    }
    Ok(summary)
}

/// The blocks a publish run sends: from the one after the last published
/// to the head, with every header (the head's snapshot holds them all).
struct PendingRange {
    chain: ChainName,
    from: u64,
    head: u64,
    headers: Vec<BlockHeader>,
}

fn pending_range(layout: &RootLayout) -> Result<PendingRange, ProducerError> {
    let heights = layout.snapshot_heights()?;
    let Some(&head) = heights.last() else {
        return Err(StoreError::Corrupt {
            path: layout.blocks_dir(),
            why: "no block snapshots".into(),
        }
        .into());
    };
    let chain = layout.read_marker()?.chain;
    let from = published_height(layout)?.map_or(0, |h| h + 1);
    let headers = ChainDir::new(layout.snapshot(head)).headers()?;
    if headers.len() as u64 <= head {
        return Err(StoreError::Corrupt {
            path: layout.snapshot(head),
            why: format!("does not hold the header of block {head}"),
        }
        .into());
    }
    Ok(PendingRange {
        chain,
        from,
        head,
        headers,
    })
}

/// One block queued: its events, on a thread of their own, beside its
/// manifest and chunks (neither needs the other, and a large change
/// carries its states in both).
struct SentBlock {
    block: OutgoingBlock,
    events: u64,
}

fn send_block(
    layout: &RootLayout,
    publisher: &Publisher,
    chain: &ChainName,
    height: u64,
    headers: &[BlockHeader],
    policy: &StreamPolicy,
    key: &SigningKey,
) -> Result<SentBlock, ProducerError> {
    let topics = publisher.topics();
    let started = std::time::Instant::now();
    let header = headers[height as usize].clone();
    let event_count = header.event_count;
    let (events, block) = std::thread::scope(|scope| {
        let events = scope.spawn(|| {
            publish_events(layout, height, event_count, chain, publisher)
                .map(|n| (n, started.elapsed()))
        });
        let sink = |frame: &[u8]| {
            publisher.send(&topics.blocks, chain.as_str(), frame)?;
            if fschain_schema::wire::frame_kind(frame)
                == Some(fschain_schema::wire::FrameKind::Chunk)
            {
                crash_point(CrashPoint::ChunkSent);
            }
            Ok(())
        };
        let parent = policy.parent_of(height);
        let block = stream_block(layout, header, parent, policy, key, &sink);
        let events = events.join().unwrap_or_else(|_| {
            Err(ProducerError::Command {
                what: format!("publishing the events of block {height}"),
                message: "the events thread stopped".into(),
            })
        });
        (events, block)
    });
    let block = block?;
    let (events, events_sent) = events?;
    debug!(
        height,
        events_ms = events_sent.as_millis() as u64,
        queued_ms = started.elapsed().as_millis() as u64,
        "queued"
    );
    Ok(SentBlock { block, events })
}

/// At most this many blocks are sent before their acknowledgements are
/// awaited and recorded...
const MAX_BLOCKS_IN_FLIGHT: usize = 16;
/// ...and at most this many stream bytes (a crash before their
/// acknowledgement makes them all again).
const MAX_BYTES_IN_FLIGHT: u64 = 64 << 20;

/// Blocks sent whose acknowledgements have not been awaited yet.
#[derive(Default)]
struct InFlight {
    blocks: Vec<crate::outbox::OutgoingBlock>,
    bytes: u64,
}

impl InFlight {
    /// Waits until the broker has acknowledged every message sent, then
    /// records the blocks as published, in height order.
    fn settle(
        &mut self,
        layout: &RootLayout,
        publisher: &Publisher,
        summary: &mut PublishSummary,
    ) -> Result<(), ProducerError> {
        if self.blocks.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        publisher.flush(Duration::from_secs(60))?;
        let heights = (self.blocks[0].header.height, self.blocks.len());
        for block in &self.blocks {
            keep_manifest(layout, &block.manifest)?;
        }
        if let Some(last) = self.blocks.last() {
            record_published(layout, last.header.height)?;
        }
        for block in self.blocks.drain(..) {
            summary.blocks += 1;
            summary.bytes += block.bytes;
        }
        debug!(
            from = heights.0,
            blocks = heights.1,
            bytes = self.bytes,
            ack_wait_ms = started.elapsed().as_millis() as u64,
            "published"
        );
        self.bytes = 0;
        Ok(())
    }
}

/// Queues the `count` events of block `height` on the events topic;
/// returns how many. They are the last lines of its snapshot's log.
fn publish_events(
    layout: &RootLayout,
    height: u64,
    count: u64,
    chain: &fschain_schema::ChainName,
    publisher: &Publisher,
) -> Result<u64, ProducerError> {
    let mut failed = None;
    let events = fschain_store::for_block_event_lines(layout, height, count, |line| {
        if failed.is_none() {
            // Its key needs only its element, which leads the line; the
            // full parse names what is wrong with a line that has none.
            let element = match EventLine::element_of(line) {
                Some(element) => Ok(element),
                None => Event::from_canonical(line).map(|e| e.element),
            };
            let sent = element
                .map_err(ProducerError::from)
                .and_then(|element| publisher.send_event(&event_key(chain, &element), line));
            failed = sent.err();
        }
        Ok::<(), fschain_store::StoreError>(())
    })?;
    match failed {
        Some(e) => Err(e),
        None => Ok(events),
    }
}

/// Publishes operations (JSON Lines) to `<prefix>.ops`, keyed by `chain`,
/// for an agent to apply. Every line is parsed first; a bad line stops
/// before anything is sent. Returns how many were published.
pub fn submit_operations(
    publisher: &Publisher,
    chain: &fschain_schema::ChainName,
    input: &mut dyn std::io::BufRead,
) -> Result<u64, ProducerError> {
    let mut lines = Vec::new();
    let mut n = 0u64;
    let mut text = String::new();
    loop {
        text.clear();
        let read = input
            .read_line(&mut text)
            .map_err(|e| ProducerError::Command {
                what: "reading operations".into(),
                message: e.to_string(),
            })?;
        if read == 0 {
            break;
        }
        n += 1;
        let line = text.trim();
        if line.is_empty() {
            continue;
        }
        fschain_schema::Operation::from_json(line)
            .map_err(|error| ProducerError::BadLine { line: n, error })?;
        lines.push(line.to_owned());
    }
    let topic = publisher.topics().ops.clone();
    for line in &lines {
        publisher.send(&topic, chain.as_str(), line.as_bytes())?;
    }
    publisher.flush(Duration::from_secs(60))?;
    Ok(lines.len() as u64)
}
