//! kill -9 at any instant of `apply` loses nothing sealed and leaves a root
//! that the next command recovers on its own.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{fschain, fschain_with_input, sample_ops, scratch, wait_for};

fn last_seq(root: &str) -> usize {
    let log = fschain(&["log", "--root", root, "--json"]).ok().json();
    let blocks = log["blocks"].as_array().unwrap();
    blocks
        .iter()
        .rev()
        .find_map(|b| b["last_seq"].as_u64())
        .unwrap_or(0) as usize
}

fn snapshots(root: &str) -> usize {
    std::fs::read_dir(format!("{root}/blocks"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn killed_apply_recovers_and_resumes_to_the_same_state() {
    let Some(s) = scratch("crash") else { return };
    let ops: Vec<String> = sample_ops(2000).lines().map(str::to_owned).collect();

    // Reference: the same operations without crashes.
    let reference = s.dir.join("reference").display().to_string();
    fschain(&["init", "--root", &reference, "--chain", "host1"]).ok();
    let all = ops.iter().map(|l| format!("{l}\n")).collect::<String>();
    fschain_with_input(
        &["apply", "--root", &reference, "--block-ops", "40"],
        Some(all.as_bytes()),
    )
    .ok();

    let root = s.root().display().to_string();
    fschain(&["init", "--root", &root, "--chain", "host1"]).ok();
    let mut kills = 0;
    let mut jitter = 7u64;
    loop {
        let done = last_seq(&root);
        if done == ops.len() {
            break;
        }
        let rest: String = ops[done..].iter().map(|l| format!("{l}\n")).collect();
        let mut child = Command::new(env!("CARGO_BIN_EXE_fschain"))
            .args(["apply", "--root", &root, "--block-ops", "40"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(rest.as_bytes());
        });
        if kills < 8 {
            // Let it seal a few blocks, then kill it somewhere inside the next.
            let target = snapshots(&root) + 2;
            wait_for("blocks to be sealed", Duration::from_secs(60), || {
                snapshots(&root) >= target || child.try_wait().unwrap().is_some()
            });
            jitter = jitter
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            std::thread::sleep(Duration::from_micros((jitter >> 33) % 4000));
            let _ = child.kill();
            kills += 1;
        }
        child.wait().unwrap();
        writer.join().unwrap();
        // The next command recovers on its own; the chain verifies clean and
        // holds exactly a prefix of the input, in order.
        fschain(&["verify", "--root", &root]).ok();
        let history = fschain(&["history", "--root", &root, "iface:eth0", "--json"])
            .ok()
            .json();
        for e in history["events"].as_array().unwrap() {
            let seq = e["event"]["chain_seq"].as_u64().unwrap() as usize;
            let input: serde_json::Value = serde_json::from_str(&ops[seq - 1]).unwrap();
            assert_eq!(
                input["reason"], e["event"]["op"]["reason"],
                "event {seq} is not input line {seq}"
            );
        }
    }
    assert!(kills >= 8, "the run was killed {kills} times");
    let head = |r: &str| {
        fschain(&["log", "--root", r, "--json"]).ok().json()["blocks"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone()
    };
    assert_eq!(head(&root)["state_root"], head(&reference)["state_root"]);
    assert_eq!(head(&root)["last_seq"], ops.len());
}

/// Each point of the commit protocol, left as a crash would leave it.
#[test]
fn every_crash_point_of_a_seal_recovers_by_the_rule() {
    let Some(s) = scratch("crashpoints") else {
        return;
    };
    let root = common::root_with_sample(&s, 60, 30);
    let base = s.root();
    let layer = base.join("layer");
    let dirty = base.join("meta/dirty");
    let head = || {
        fschain(&["log", "--root", &root, "--json"]).ok().json()["blocks"]
            .as_array()
            .unwrap()
            .len()
            - 1
    };
    assert_eq!(head(), 2);

    // 1. Mid-write: marker set, a state file and events.log half written.
    std::fs::write(&dirty, b"").unwrap();
    std::fs::write(layer.join("states/iface/eth0"), b"{\"mtu\":").unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(layer.join("events.log"))
        .unwrap()
        .write_all(b"{\"chain\":\"ho")
        .unwrap();
    let run = fschain(&["verify", "--root", &root]).ok();
    assert!(run.stderr().contains("recovering"), "{}", run.stderr());
    assert!(!dirty.exists());
    assert_eq!(head(), 2);

    // 2. Header written, snapshot not taken: the block was never sealed.
    std::fs::write(&dirty, b"").unwrap();
    let headers = std::fs::read_to_string(layer.join("headers.log")).unwrap();
    let last = headers
        .lines()
        .last()
        .unwrap()
        .replace("\"height\":2", "\"height\":3");
    std::fs::write(layer.join("headers.log"), format!("{headers}{last}\n")).unwrap();
    fschain(&["set", "--root", &root, "service:after", "ok=true"]).ok();
    assert_eq!(head(), 3, "recovered to block 2, then sealed block 3");
    fschain(&["verify", "--root", &root]).ok();

    // 3. Snapshot taken, marker not yet removed: the block is sealed and kept.
    std::fs::write(&dirty, b"").unwrap();
    fschain(&["verify", "--root", &root]).ok();
    assert_eq!(head(), 3);
    assert!(!dirty.exists());

    // 4. Layer gone (a crash while recovery replaced it).
    fschain_store::btrfs::delete_subvolume(&layer).unwrap();
    std::fs::write(&dirty, b"").unwrap();
    fschain(&["show", "--root", &root, "service:after"]).ok();
    assert!(layer.exists() && !dirty.exists());
    fschain(&["verify", "--root", &root]).ok();

    // 5. A layer changed by hand (no crash marks) is not silently reset, and
    //    nothing is built on a changed state.
    std::fs::write(layer.join("states/iface/eth0"), b"{}").unwrap();
    let err = fschain(&["set", "--root", &root, "iface:eth0", "a=1"])
        .code_is(2)
        .stderr();
    assert!(
        err.contains("the state file of iface:eth0 was changed outside fschain"),
        "{err}"
    );
    assert_eq!(fschain(&["verify", "--root", &root]).code(), 1);
    let events = layer.join("events.log");
    let log = std::fs::read(&events).unwrap();
    std::fs::write(&events, &log[..log.len() - 10]).unwrap();
    let err = fschain(&["set", "--root", &root, "service:x", "a=1"])
        .code_is(2)
        .stderr();
    assert!(
        err.contains("the layer was changed outside fschain"),
        "{err}"
    );
}
