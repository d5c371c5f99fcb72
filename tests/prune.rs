//! `fschain prune`: retention on a producer and on a site, against real
//! btrfs (and the real broker for the publish rules). After every prune the
//! chain verifies clean, and a pruned height still reads, diffs, checks out
//! and rolls back as it did before.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{fschain, on_topics, root_with_sample, scratch};
use serde_json::Value;

fn heights(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_u64().unwrap())
        .collect()
}

fn snapshot_heights(root: &str) -> Vec<u64> {
    let mut h: Vec<u64> = std::fs::read_dir(format!("{root}/blocks"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.parse().ok())
        .collect();
    h.sort_unstable();
    h
}

#[test]
fn pruned_heights_still_read_diff_check_out_and_roll_back() {
    let Some(s) = scratch("prune") else { return };
    let root = root_with_sample(&s, 300, 30);
    assert_eq!(snapshot_heights(&root), (0..=10).collect::<Vec<_>>());
    let show = |at: &str| {
        fschain(&["show", "--root", &root, "iface:eth0", "--at", at, "--json"])
            .ok()
            .json()["state"]
            .clone()
    };
    let diff = || {
        fschain(&["diff", "--root", &root, "2", "5", "--json"])
            .ok()
            .json()
    };
    let (state_at_3, diff_2_5) = (show("3"), diff());

    // No policy: refused, by name.
    let refused = fschain(&["prune", "--root", &root]).code_is(2);
    assert!(
        refused.stderr().contains("no retention policy"),
        "{}",
        refused.stderr()
    );

    // Never published: every block is kept for the publish to come.
    let kept = fschain(&["prune", "--root", &root, "--keep-last", "3", "--json"])
        .ok()
        .json();
    assert!(heights(&kept["chains"][0]["pruned"]).is_empty());
    assert_eq!(kept["chains"][0]["kept"]["3"][0], "unpublished");

    // A dry run decides and deletes nothing.
    let args = [
        "prune",
        "--root",
        &root,
        "--keep-last",
        "3",
        "--unpublished",
    ];
    let dry = fschain(&[&args[..], &["--dry-run", "--json"]].concat())
        .ok()
        .json();
    assert_eq!(
        heights(&dry["chains"][0]["pruned"]),
        (0..=7).collect::<Vec<_>>()
    );
    assert_eq!(dry["chains"][0]["deleted"], 0);
    assert_eq!(snapshot_heights(&root).len(), 11);

    let done = fschain(&[&args[..], &["--json"]].concat()).ok().json();
    assert_eq!(done["chains"][0]["deleted"], 8);
    assert_eq!(snapshot_heights(&root), vec![8, 9, 10]);
    let text = fschain(&args).ok().stdout();
    assert!(text.contains("nothing to prune"), "{text}");

    // verify: clean, the pruned heights reported as pruned.
    let report = fschain(&["verify", "--root", &root, "--json"]).ok().json();
    assert_eq!(report["clean"], true, "{report}");
    assert_eq!(heights(&report["pruned"]), (0..=7).collect::<Vec<_>>());
    assert_eq!(report["events"], 300);
    let text = fschain(&["verify", "--root", &root]).ok().stdout();
    assert!(text.contains("8 heights pruned: 0-7"), "{text}");

    // Time travel to a pruned height answers as before.
    assert_eq!(show("3"), state_at_3);
    assert_eq!(diff(), diff_2_5);
    let out = s.dir.join("at3");
    fschain(&["checkout", "--root", &root, "3", &out.display().to_string()]).ok();
    let file: Value =
        serde_json::from_slice(&std::fs::read(out.join("states/iface/eth0")).unwrap()).unwrap();
    assert_eq!(file, state_at_3);
    let headers = std::fs::read_to_string(out.join("headers.log")).unwrap();
    assert_eq!(headers.lines().count(), 4, "headers of blocks 0..=3");
    let events = std::fs::read_to_string(out.join("events.log")).unwrap();
    assert_eq!(events.lines().count(), 90, "the events of blocks 1..=3");

    // Rolling back to a pruned height restores its states.
    fschain(&["rollback", "--root", &root, "3"]).ok();
    assert_eq!(show("head"), state_at_3);
    assert_eq!(
        fschain(&["verify", "--root", &root, "--json"]).ok().json()["clean"],
        true
    );

    // A snapshot deleted behind retention's back is damage, not pruning.
    common::btrfs(&[
        "subvolume".as_ref(),
        "delete".as_ref(),
        format!("{root}/blocks/0000000009").as_ref(),
    ]);
    let report = fschain(&["verify", "--root", &root, "--json"])
        .code_is(1)
        .json();
    let problems = report["problems"].to_string();
    assert!(problems.contains("snapshot is missing"), "{problems}");
}

#[test]
fn hourly_policy_keeps_the_newest_of_each_hour() {
    let Some(s) = scratch("prune-hourly") else {
        return;
    };
    let root = root_with_sample(&s, 100, 20);
    let log = fschain(&["log", "--root", &root, "--json"]).ok().json();
    let times: Vec<i64> = log["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let t = b["time"].as_str().unwrap();
            let h: i64 = t[11..13].parse().unwrap();
            let day: i64 = t[8..10].parse().unwrap();
            day * 24 + h
        })
        .collect();
    // The newest block of each of the newest two hours (blocks sealed in
    // one run usually share one), and the head.
    let mut expected: Vec<u64> = Vec::new();
    let mut hours = Vec::new();
    for (h, hour) in times.iter().enumerate().rev() {
        if !hours.contains(hour) && hours.len() < 2 {
            hours.push(*hour);
            expected.push(h as u64);
        }
    }
    expected.sort_unstable();
    fschain(&[
        "prune",
        "--root",
        &root,
        "--keep-hourly",
        "2",
        "--unpublished",
    ])
    .ok();
    assert_eq!(snapshot_heights(&root), expected);
    assert_eq!(
        fschain(&["verify", "--root", &root, "--json"]).ok().json()["clean"],
        true
    );
}

#[test]
fn a_producer_keeps_what_it_must_still_publish_and_a_site_its_checkpoint() {
    let Some(s) = scratch("prune-publish") else {
        return;
    };
    let Some(brokers) = common::broker("prune-publish") else {
        return;
    };
    let prefix = common::unique("prune");
    let (producer, key) = common::producer_root(&s.dir);
    on_topics(&["topics", "create"], &brokers, &prefix).ok();
    common::seal_and_publish(&producer, 5, &brokers, &prefix);
    for i in 0..3 {
        fschain(&[
            "set",
            "--root",
            &producer,
            "iface:eth1",
            &format!("mtu={}", 1500 + i),
        ])
        .ok();
    }
    // Blocks 0..=5 are published, 6..=8 not: 5 is the parent of 6.
    let plan = fschain(&["prune", "--root", &producer, "--keep-last", "1", "--json"])
        .ok()
        .json();
    let chain = &plan["chains"][0];
    assert_eq!(heights(&chain["pruned"]), vec![1, 2, 3, 4]);
    assert_eq!(chain["kept"]["0"][0], "checkpoint", "{chain}");
    for h in 5..8 {
        assert_eq!(chain["kept"][h.to_string()][0], "unpublished", "{chain}");
    }
    assert_eq!(chain["kept"]["8"][0], "head");

    // The rest publishes, and a site consumes all of it.
    on_topics(&["publish", "--root", &producer], &brokers, &prefix).ok();
    let site = s.dir.join("site").display().to_string();
    let group = common::unique("prune-site");
    on_topics(
        &[
            "consume",
            "--site",
            &group,
            "--root",
            &site,
            "--trust",
            &key,
            "--no-index",
            "--until-idle",
        ],
        &brokers,
        &prefix,
    )
    .ok();
    assert_eq!(
        common::block_hashes(&format!("{site}/host1")),
        common::block_hashes(&producer)
    );

    // A site keeps its head (the next block's parent) and its checkpoint.
    let plan = fschain(&["prune", "--root", &site, "--keep-last", "1", "--json"])
        .ok()
        .json();
    assert_eq!(
        heights(&plan["chains"][0]["pruned"]),
        (1..=7).collect::<Vec<_>>()
    );
    let report = fschain(&["verify", "--root", &format!("{site}/host1"), "--json"])
        .ok()
        .json();
    assert_eq!(report["clean"], true, "{report}");
    assert_eq!(heights(&report["pruned"]), (1..=7).collect::<Vec<_>>());

    // The next block still arrives on top of the retained head.
    common::seal_and_publish(&producer, 1, &brokers, &prefix);
    on_topics(
        &[
            "consume",
            "--site",
            &group,
            "--root",
            &site,
            "--trust",
            &key,
            "--no-index",
            "--until-idle",
        ],
        &brokers,
        &prefix,
    )
    .ok();
    assert_eq!(
        common::block_hashes(&format!("{site}/host1")),
        common::block_hashes(&producer)
    );
    assert_eq!(
        fschain(&["verify", "--root", &format!("{site}/host1"), "--json"])
            .ok()
            .json()["clean"],
        true
    );
}
