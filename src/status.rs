//! `fschain status`: what a producer's or a site's chains hold, read from
//! their roots alone.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use fschain_consumer::fleet::{committed, scan_manifests, site_lags, site_names, SiteLag};
use fschain_consumer::kafka::KafkaSource;

use crate::cli::{KafkaArgs, OperateCommand};
use crate::context::{
    brokers, chain_roots, extra, open_chain, print_json, root_dir, topics, trusted_keys, Invocation,
};

pub(crate) fn run(command: OperateCommand, inv: &Invocation) -> Result<ExitCode> {
    match command {
        OperateCommand::Status {
            kafka,
            sites,
            trust,
            max_lag_blocks,
            max_lag_seconds,
            json,
            ..
        } if kafka.brokers.is_some() || !sites.is_empty() => {
            let thresholds = Thresholds {
                blocks: max_lag_blocks,
                seconds: max_lag_seconds,
            };
            return fleet(&kafka, &sites, &trust, thresholds, json.json, inv);
        }
        OperateCommand::Status { root, json, .. } => {
            let root = root_dir(&root, inv)?;
            let chains = chain_roots(&root)?;
            let now_micros = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
            let statuses = chains
                .iter()
                .map(|c| chain_status(c, now_micros))
                .collect::<Result<Vec<Value>>>()?;
            if json.json {
                print_json(&json!({ "root": root, "chains": statuses }));
            } else {
                for s in &statuses {
                    print_text(s);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn chain_status(root: &Path, now_micros: i64) -> Result<Value> {
    let chain = open_chain(root)?;
    let layout = chain.layout();
    let head = chain.head();
    let site = layout.replica().exists();
    let published = if site {
        None
    } else {
        fschain_producer::outbox::published_height(layout)?
    };
    let key = std::fs::read_to_string(layout.signing_pub())
        .ok()
        .map(|k| k.trim().to_owned());
    let since_seal = (now_micros - head.time.as_micros()) / 1_000_000;
    // Blocks sealed and not on the topic yet (genesis included).
    let pending = (!site).then(|| match published {
        Some(p) => head.height.saturating_sub(p),
        None => head.height + 1,
    });
    Ok(json!({
        "chain": chain.meta().chain,
        "root": root,
        "role": if site { "site" } else { "producer" },
        "head": head.height,
        "head_hash": head.hash.to_hex(),
        "last_seal": head.time.to_string(),
        "seconds_since_seal": since_seal,
        "published_height": published,
        "pending_blocks": pending,
        "key": key,
    }))
}

fn print_text(s: &Value) {
    println!(
        "{} ({}) at {}",
        s["chain"].as_str().unwrap_or("?"),
        s["role"].as_str().unwrap_or("?"),
        s["root"].as_str().unwrap_or("?")
    );
    println!(
        "  head        block {} {}",
        s["head"],
        s["head_hash"].as_str().map_or("", |h| &h[..16])
    );
    println!(
        "  last seal   {} ({} s ago)",
        s["last_seal"].as_str().unwrap_or("?"),
        s["seconds_since_seal"]
    );
    if s["role"] == "producer" {
        match s["published_height"].as_u64() {
            Some(p) => println!("  published   block {p}, {} pending", s["pending_blocks"]),
            None => println!("  published   nothing yet, {} pending", s["pending_blocks"]),
        }
    }
    if let Some(key) = s["key"].as_str() {
        println!("  key         {key}");
    }
}

#[derive(Clone, Copy, Debug)]
struct Thresholds {
    blocks: Option<u64>,
    seconds: Option<i64>,
}

impl Thresholds {
    /// Why `lag` is over a threshold, if it is.
    fn exceeded(&self, lag: &SiteLag) -> Option<String> {
        if lag.behind_retention {
            return Some("behind the topic's retention: it must replay".into());
        }
        if let Some(max) = self.blocks.filter(|&m| lag.lag_blocks > m) {
            return Some(format!(
                "{} blocks behind (more than {max})",
                lag.lag_blocks
            ));
        }
        let seconds = lag.lag_seconds.unwrap_or(i64::MAX);
        if let Some(max) = self.seconds.filter(|&m| lag.lag_blocks > 0 && seconds > m) {
            return Some(format!(
                "{} s behind (more than {max})",
                lag.lag_seconds.map_or("all".into(), |s| s.to_string())
            ));
        }
        None
    }
}

/// The fleet view, from Kafka alone.
fn fleet(
    kafka: &KafkaArgs,
    sites: &[String],
    trust: &[String],
    thresholds: Thresholds,
    as_json: bool,
    inv: &Invocation,
) -> Result<ExitCode> {
    let source = KafkaSource {
        brokers: brokers(kafka, inv)?,
        topics: topics(kafka, inv),
        extra: extra(inv),
    };
    let keys = trusted_keys(trust, inv)?;
    let view = scan_manifests(&source, &keys, "fschain-status", &inv.shutdown)
        .context("reading the blocks topic")?;
    let sites = match sites {
        [] => site_names(&source).context("listing the site groups")?,
        given => given.to_vec(),
    };
    let partitions: Vec<i32> = view.earliest.keys().copied().collect();
    let mut lags = Vec::new();
    for site in &sites {
        let offsets = committed(&source, site, partitions.iter().copied())
            .with_context(|| format!("reading site {site}'s committed offsets"))?;
        lags.extend(site_lags(site, &view, &offsets));
    }
    let over: Vec<(&SiteLag, String)> = lags
        .iter()
        .filter_map(|l| thresholds.exceeded(l).map(|why| (l, why)))
        .collect();
    if as_json {
        let entries: Vec<Value> = lags
            .iter()
            .map(|l| {
                let mut v = serde_json::to_value(l).unwrap_or_default();
                v["over_threshold"] = json!(thresholds.exceeded(l));
                v
            })
            .collect();
        print_json(&json!({ "topic": source.topics.blocks, "sites": entries }));
    } else {
        if lags.is_empty() {
            println!("no site has read {} yet", source.topics.blocks);
        }
        for l in &lags {
            println!(
                "{:<12} {:<16} verified {:>6} of {:<6} lag {:>4} blocks, {:>6} s{}",
                l.site,
                l.chain,
                l.verified_height.map_or("-".into(), |h| h.to_string()),
                l.newest_height,
                l.lag_blocks,
                l.lag_seconds.map_or("-".into(), |s| s.to_string()),
                thresholds
                    .exceeded(l)
                    .map_or(String::new(), |why| format!("  ! {why}"))
            );
        }
    }
    Ok(if over.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
