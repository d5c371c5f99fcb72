//! `fschain topics create`: the three topics with the settings fschain
//! relies on. `docs/replication.md` lists the same settings for creating
//! them with Apache Kafka's own tools.

use std::time::Duration;

use fschain_kafka::{client_config, KafkaClientError, Role};
use fschain_schema::wire::Topics;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::publish::kafka_error;
use crate::ProducerError;

/// One topic to create and its settings.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub configs: Vec<(&'static str, &'static str)>,
}

/// Kept "forever": ten years. Not `-1`, Kafka's own "forever": tansu 0.6
/// reads `-1` as already expired and deletes every record when it restarts
/// (measured with its sqlite storage).
pub const RETAIN_FOREVER_MS: &str = "315360000000";

/// [`fschain_kafka::MAX_MESSAGE_BYTES`] as a topic setting.
const MAX_MESSAGE_BYTES_TEXT: &str = "4194304";
const _: () = assert!(fschain_kafka::MAX_MESSAGE_BYTES == 4_194_304);

/// The settings of each topic.
pub fn topic_specs(topics: &Topics, partitions: i32) -> Vec<TopicSpec> {
    vec![
        TopicSpec {
            name: topics.ops.clone(),
            partitions,
            // Operations are consumed within minutes; a week covers an
            // agent that was down for a while.
            configs: vec![("retention.ms", "604800000"), ("cleanup.policy", "delete")],
        },
        TopicSpec {
            name: topics.events.clone(),
            partitions,
            configs: vec![
                ("retention.ms", RETAIN_FOREVER_MS),
                ("cleanup.policy", "delete"),
            ],
        },
        TopicSpec {
            name: topics.blocks.clone(),
            partitions,
            // Replay needs every block since a chain's latest checkpoint:
            // keep them all. Chunks are 512 KiB by default; 4 MiB leaves room.
            configs: vec![
                ("retention.ms", RETAIN_FOREVER_MS),
                ("cleanup.policy", "delete"),
                ("max.message.bytes", MAX_MESSAGE_BYTES_TEXT),
            ],
        },
        TopicSpec {
            name: topics.witness.clone(),
            partitions: 1,
            // Every site reads every cosignature: one partition, kept as
            // long as the blocks they cosign.
            configs: vec![
                ("retention.ms", RETAIN_FOREVER_MS),
                ("cleanup.policy", "delete"),
            ],
        },
    ]
}

/// Creates the topics; a topic that exists already is left as it is.
/// Returns each topic with whether it was created.
pub fn create_topics(
    brokers: &str,
    topics: &Topics,
    partitions: i32,
    replication: i32,
    extra: &[(String, String)],
) -> Result<Vec<(String, bool)>, ProducerError> {
    let admin: AdminClient<DefaultClientContext> = client_config(Role::Admin, brokers, extra)?
        .create()
        .map_err(kafka_error)?;
    let specs = topic_specs(topics, partitions);
    let new: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|s| {
            s.configs.iter().fold(
                NewTopic::new(&s.name, s.partitions, TopicReplication::Fixed(replication)),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ProducerError::Command {
            what: "starting the admin runtime".into(),
            message: e.to_string(),
        })?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = runtime
        .block_on(admin.create_topics(&new, &options))
        .map_err(kafka_error)?;
    let mut out = Vec::new();
    for result in results {
        match result {
            Ok(name) => out.push((name, true)),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => out.push((name, false)),
            Err((name, code)) => {
                return Err(KafkaClientError::CreateTopic { topic: name, code }.into())
            }
        }
    }
    Ok(out)
}
