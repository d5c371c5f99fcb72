//! `fschain status` on a producer's root and on a site's, read from the
//! roots alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{fschain, fschain_with_input, on_topics, producer_root, scratch};

#[test]
fn a_producer_shows_its_pending_blocks_and_a_site_its_chains() {
    let Some(s) = scratch("status") else {
        return;
    };
    let (producer, key) = producer_root(&s.dir);
    fschain(&["set", "--root", &producer, "iface:eth0", "mtu=9000"]).ok();
    fschain(&["set", "--root", &producer, "iface:eth0", "mtu=1500"]).ok();
    let status = fschain(&["status", "--root", &producer, "--json"])
        .ok()
        .json();
    let chain = &status["chains"][0];
    assert_eq!(chain["chain"], "host1");
    assert_eq!(chain["role"], "producer");
    assert_eq!(chain["head"], 2);
    assert_eq!(
        chain["pending_blocks"], 3,
        "nothing published: blocks 0..=2"
    );
    assert!(chain["seconds_since_seal"].as_i64().unwrap() < 60);
    assert_eq!(
        chain["key"].as_str().unwrap(),
        std::fs::read_to_string(&key).unwrap().trim()
    );
    let text = fschain(&["status", "--root", &producer]).ok().stdout();
    assert!(
        text.contains("host1 (producer)") && text.contains("3 pending"),
        "{text}"
    );

    // A site made by export | import holds the chain; its status lists it.
    let export = fschain(&["export", "--root", &producer]).ok();
    let site = s.dir.join("site").display().to_string();
    fschain_with_input(
        &[
            "import", "--site", "b", "--root", &site, "--trust", &key, "-",
        ],
        Some(&export.output.stdout),
    )
    .ok();
    let status = fschain(&["status", "--root", &site, "--json"]).ok().json();
    assert_eq!(status["chains"][0]["role"], "site");
    assert_eq!(status["chains"][0]["head"], 2);
    assert!(status["chains"][0]["pending_blocks"].is_null());

    let nothing = s.dir.join("empty");
    std::fs::create_dir_all(&nothing).unwrap();
    let refused = fschain(&["status", "--root", &nothing.display().to_string()]).code_is(2);
    assert!(refused
        .stderr()
        .contains("neither a chain's root nor a site"));
}

#[test]
fn a_site_stopped_midway_shows_its_lag_then_catches_up() {
    let Some(s) = scratch("status-fleet") else {
        return;
    };
    let Some(brokers) = common::broker("status-fleet") else {
        return;
    };
    let prefix = common::unique("status");
    let (east, west) = (common::unique("east"), common::unique("west"));
    on_topics(
        &["topics", "create", "--partitions", "1"],
        &brokers,
        &prefix,
    )
    .ok();
    let (producer, key) = producer_root(&s.dir);
    let publish = |n: usize| common::seal_and_publish(&producer, n, &brokers, &prefix);
    let consume = |site: &str| {
        let root = s.dir.join(site).display().to_string();
        on_topics(
            &[
                "consume",
                "--site",
                site,
                "--root",
                &root,
                "--trust",
                &key,
                "--until-idle",
            ],
            &brokers,
            &prefix,
        )
        .ok();
    };
    let status = |extra: &[&str]| {
        let mut args = vec![
            "status", "--site", &east, "--site", &west, "--trust", &key, "--json",
        ];
        args.extend(extra);
        on_topics(&args, &brokers, &prefix)
    };
    let lag = |run: &common::Run, site: &str| -> serde_json::Value {
        run.json()["sites"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["site"] == site)
            .cloned()
            .unwrap()
    };

    publish(2); // blocks 0..=2
    consume(&east);
    consume(&west);
    let both = status(&["--max-lag-blocks", "0"]).code_is(0);
    assert_eq!(lag(&both, &west)["verified_height"], 2);
    assert_eq!(lag(&both, &west)["lag_blocks"], 0);

    // West stops; the producer goes on: west's lag grows, exit 1.
    publish(3); // blocks 3..=5
    consume(&east);
    let behind = status(&["--max-lag-blocks", "1"]).code_is(1);
    let w = lag(&behind, &west);
    assert_eq!(
        (w["verified_height"].clone(), w["lag_blocks"].clone()),
        (2.into(), 3.into())
    );
    assert!(w["lag_seconds"].as_i64().unwrap() >= 0);
    assert_eq!(w["behind_retention"], false);
    assert_eq!(lag(&behind, &east)["lag_blocks"], 0);
    // Without a threshold, lag alone is not an alert.
    status(&[]).code_is(0);

    // West catches up: back to 0.
    consume(&west);
    status(&["--max-lag-blocks", "0"]).code_is(0);

    // The records west needs next are deleted: behind retention, exit 1.
    publish(2);
    let topic = format!("{prefix}.blocks");
    assert_eq!(lag(&status(&[]), &west)["verified_height"], 5);
    // Everything before the last block (its manifest and one chunk) is
    // deleted.
    common::delete_records(&brokers, &topic, 0, high_watermark(&brokers, &topic) - 2);
    let gone = status(&[]).code_is(1);
    assert_eq!(lag(&gone, &west)["behind_retention"], true);
    let text = on_topics(
        &["status", "--site", &west, "--trust", &key],
        &brokers,
        &prefix,
    )
    .code_is(1)
    .stdout();
    assert!(text.contains("behind the topic's retention"), "{text}");
}

fn high_watermark(brokers: &str, topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    consumer
        .fetch_watermarks(topic, 0, std::time::Duration::from_secs(10))
        .unwrap()
        .1
}
