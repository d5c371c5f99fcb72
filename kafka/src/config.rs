//! The one place fschain's librdkafka clients are configured.
//!
//! Each role (the publisher, the agent's consumer of operations, a site's
//! consumer of blocks, the admin client) gets fschain's settings, then the
//! operator's `[kafka]` passthrough. Settings fschain relies on for
//! correctness are owned: a passthrough key that names one is an error
//! that says why, never a silent override. Tuning settings (waits, queue
//! sizes) may be overridden.

use rdkafka::ClientConfig;

use crate::KafkaClientError;

/// The largest message fschain produces or fetches: a chunk (512 KiB by
/// default) with its frame header and proof, with room to spare. The blocks
/// topic is created with the same `max.message.bytes`.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// Which client is being configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Publishes blocks and events (and `submit`'s operations).
    Publisher,
    /// The agent's consumer of the operations topic.
    Agent,
    /// A site's consumer of the blocks topic (consume, replay).
    Site,
    /// Creates topics.
    Admin,
}

/// A setting fschain owns, and why.
struct Owned {
    key: &'static str,
    roles: &'static [Role],
    why: &'static str,
}

const CONSUMERS: &[Role] = &[Role::Agent, Role::Site];
const ALL: &[Role] = &[Role::Publisher, Role::Agent, Role::Site, Role::Admin];

const OWNED: &[Owned] = &[
    Owned {
        key: "bootstrap.servers",
        roles: ALL,
        why: "the brokers come from --brokers, `brokers` or FSCHAIN_BROKERS",
    },
    Owned {
        key: "enable.idempotence",
        roles: &[Role::Publisher],
        why: "a retried produce must not write a chunk or event twice",
    },
    Owned {
        key: "acks",
        roles: &[Role::Publisher],
        why: "a block counts as published only once every in-sync replica has it (acks=all)",
    },
    Owned {
        key: "message.max.bytes",
        roles: &[Role::Publisher],
        why: "it must fit the largest frame (4 MiB, the blocks topic's max.message.bytes); choose the chunk size with --chunk-size",
    },
    Owned {
        key: "enable.auto.commit",
        roles: CONSUMERS,
        why: "offsets are committed only after a block is durable (site) or sealed (agent)",
    },
    Owned {
        key: "enable.auto.offset.store",
        roles: CONSUMERS,
        why: "offsets are stored and committed by fschain after each block",
    },
    Owned {
        key: "group.id",
        roles: CONSUMERS,
        why: "the group is fschain-site-<site> or fschain-agent-<chain>; choose the site with --site",
    },
    Owned {
        key: "auto.offset.reset",
        roles: CONSUMERS,
        why: "a new site must read each chain from its start (earliest)",
    },
    Owned {
        key: "enable.partition.eof",
        roles: CONSUMERS,
        why: "--until-idle and replay know a partition's end from it",
    },
    Owned {
        key: "isolation.level",
        roles: CONSUMERS,
        why: "fschain reads what is acknowledged (read_committed is librdkafka's default)",
    },
];

/// librdkafka settings for `role`: fschain's, then `extra` (the `[kafka]`
/// table), refusing an extra key that fschain owns for that role.
pub fn client_config(
    role: Role,
    brokers: &str,
    extra: &[(String, String)],
) -> Result<ClientConfig, KafkaClientError> {
    check_passthrough(role, extra)?;
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    match role {
        Role::Publisher => {
            config
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("message.max.bytes", MAX_MESSAGE_BYTES.to_string())
                .set("linger.ms", "2")
                // Bounds the producer's memory whatever the block size.
                .set("queue.buffering.max.kbytes", "32768")
                // Chunks are zstd streams already; events are small.
                .set("compression.type", "none");
        }
        Role::Agent | Role::Site => {
            config
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "earliest")
                .set("enable.partition.eof", "true")
                .set("fetch.message.max.bytes", MAX_MESSAGE_BYTES.to_string())
                // Brokers that hold a fetch for its whole wait would
                // otherwise add up to 500 ms to every block.
                .set("fetch.wait.max.ms", "20")
                // A member that dies hands its partitions over in seconds.
                .set("session.timeout.ms", "6000")
                .set("heartbeat.interval.ms", "1000");
            if role == Role::Site {
                config
                    // Bounds the prefetch queue: memory stays flat
                    // whatever the backlog.
                    .set("queued.max.messages.kbytes", "16384")
                    // A full queue puts the next fetch off by this long
                    // (librdkafka's default is a second): a receive slower
                    // than the topic would otherwise stall each time it
                    // fell 16 MiB behind.
                    .set("fetch.queue.backoff.ms", "20");
            }
        }
        Role::Admin => {}
    }
    for (key, value) in extra {
        config.set(key, value);
    }
    Ok(config)
}

/// Refuses a passthrough key that fschain owns for `role`.
pub fn check_passthrough(role: Role, extra: &[(String, String)]) -> Result<(), KafkaClientError> {
    for (key, _) in extra {
        if let Some(owned) = OWNED
            .iter()
            .find(|o| o.key == key.as_str() && o.roles.contains(&role))
        {
            return Err(KafkaClientError::OwnedSetting {
                key: key.clone(),
                why: owned.why,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extra(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_passthrough_that_clashes_is_refused_by_name() {
        for (role, key) in [
            (Role::Publisher, "acks"),
            (Role::Publisher, "enable.idempotence"),
            (Role::Publisher, "message.max.bytes"),
            (Role::Site, "enable.auto.commit"),
            (Role::Agent, "enable.auto.commit"),
            (Role::Site, "group.id"),
            (Role::Site, "isolation.level"),
            (Role::Admin, "bootstrap.servers"),
        ] {
            let err = client_config(role, "b:9092", &extra(&[(key, "x")]))
                .err()
                .unwrap_or_else(|| panic!("{role:?} took {key}"));
            let text = err.to_string();
            assert!(text.contains(key), "{text}");
            assert!(!err.is_transient());
        }
    }

    #[test]
    fn tuning_and_security_settings_pass_through() {
        let passthrough = extra(&[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("linger.ms", "50"),
            ("fetch.wait.max.ms", "100"),
            // Owned for the publisher only: a consumer may set it.
            ("acks", "1"),
        ]);
        let config = client_config(Role::Site, "b:9092", &passthrough).unwrap();
        assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(config.get("fetch.wait.max.ms"), Some("100"));
        assert_eq!(config.get("enable.auto.commit"), Some("false"));
        let publisher =
            client_config(Role::Publisher, "b:9092", &extra(&[("linger.ms", "50")])).unwrap();
        assert_eq!(publisher.get("linger.ms"), Some("50"));
        assert_eq!(publisher.get("acks"), Some("all"));
    }
}
