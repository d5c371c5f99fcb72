//! System tests of the local chain against a real loop-mounted btrfs.

#![allow(clippy::unwrap_used)]

mod common;

use common::{fschain, fschain_with_input, root_with_sample, sample_ops, scratch};
use serde_json::json;

#[test]
fn record_verify_time_travel_and_roll_back() {
    let Some(s) = scratch("flow") else { return };
    let root = root_with_sample(&s, 300, 100);
    let log = fschain(&["log", "--root", &root, "--json"]).ok().json();
    let blocks = log["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), 4, "genesis + 3 blocks of 100");
    assert_eq!(blocks[3]["event_count"], 100);
    assert_eq!(blocks[2]["hash"], blocks[3]["prev"]);

    let report = fschain(&["verify", "--root", &root, "--json"]).ok().json();
    assert_eq!(report["clean"], true);
    assert_eq!(report["events"], 300);
    assert_eq!(report["snapshots"], 5, "4 snapshots and the layer");

    // iface:eth0's state now and at block 1 differ, and history lists every change.
    let now = fschain(&["show", "--root", &root, "iface:eth0", "--json"])
        .ok()
        .json();
    let then = fschain(&["show", "--root", &root, "iface:eth0", "--at", "1", "--json"])
        .ok()
        .json();
    assert_ne!(now["state"], then["state"]);
    let history = fschain(&["history", "--root", &root, "iface:eth0", "--json"])
        .ok()
        .json();
    let events = history["events"].as_array().unwrap();
    let expected = sample_ops(300)
        .lines()
        .filter(|l| l.contains("\"iface:eth0\""))
        .count();
    assert_eq!(events.len(), expected);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["event"]["element_seq"], i as u64 + 1);
    }

    // A change, then a rollback to before it: a new block, old state back.
    fschain(&[
        "set",
        "--root",
        &root,
        "iface:eth0",
        "mtu=9000",
        "up=true",
        "--reason",
        "jumbo frames",
    ])
    .ok();
    let changed = fschain(&["show", "--root", &root, "iface:eth0", "--json"])
        .ok()
        .json();
    assert_eq!(changed["state"]["mtu"], 9000);
    assert_eq!(changed["height"], 4);
    let diff = fschain(&["diff", "--root", &root, "3", "--json"])
        .ok()
        .json();
    assert_eq!(diff["changed"], json!(["iface:eth0"]));
    fschain(&[
        "rollback",
        "--root",
        &root,
        "head~1",
        "--reason",
        "undo jumbo",
    ])
    .ok();
    let back = fschain(&["show", "--root", &root, "iface:eth0", "--json"])
        .ok()
        .json();
    assert_eq!(back["state"], now["state"]);
    assert_eq!(back["height"], 5);
    let history = fschain(&["history", "--root", &root, "iface:eth0", "--json"])
        .ok()
        .json();
    let last = history["events"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert!(last["event"]["op"]["reason"]
        .as_str()
        .unwrap()
        .starts_with("rollback to block 3"));
    assert_eq!(
        fschain(&["diff", "--root", &root, "3", "5", "--json"])
            .ok()
            .json()["changed"],
        json!([])
    );

    // Every REF form resolves to the same block.
    let hash = fschain(&["log", "--root", &root, "--json"]).ok().json()["blocks"][2]["hash"]
        .as_str()
        .unwrap()
        .to_owned();
    let time = fschain(&["log", "--root", &root, "--json"]).ok().json()["blocks"][2]["time"]
        .as_str()
        .unwrap()
        .to_owned();
    for r in ["2", &hash[..10], &format!("@{time}"), "head~3"] {
        let at = fschain(&["show", "--root", &root, "iface:eth0", "--at", r, "--json"])
            .ok()
            .json();
        assert_eq!(at["height"], 2, "REF {r}");
    }

    // A checkout is a writable copy of the block's states.
    let dest = s.dir.join("checkout");
    fschain(&["checkout", "--root", &root, "1", dest.to_str().unwrap()]).ok();
    let eth0 = std::fs::read(dest.join("states/iface/eth0")).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&eth0).unwrap();
    assert_eq!(v, then["state"]);
    std::fs::write(dest.join("states/iface/eth0"), b"{}").unwrap();
    fschain(&["verify", "--root", &root]).ok();
}

#[test]
fn root_from_environment_and_config_file() {
    let Some(s) = scratch("config") else { return };
    let root = root_with_sample(&s, 10, 10);
    let config = s.dir.join("fschain.toml");
    std::fs::write(&config, format!("root = {root:?}\n")).unwrap();
    let out = fschain(&["--config", config.to_str().unwrap(), "log", "--json"])
        .ok()
        .json();
    assert_eq!(out["blocks"].as_array().unwrap().len(), 2);
    std::fs::write(&config, "rooot = \"/x\"\n").unwrap();
    let err = fschain(&["--config", config.to_str().unwrap(), "log"])
        .code_is(2)
        .stderr();
    assert!(err.contains("rooot"), "{err}");
}

#[test]
fn bad_input_is_named_and_loses_nothing() {
    let Some(s) = scratch("badinput") else { return };
    let root = root_with_sample(&s, 50, 25);
    let before = fschain(&["log", "--root", &root, "--json"]).ok().json();

    let good = r#"{"element":"service:new","action":"set","state":{"enabled":true}}"#;
    let cases: [(&str, &str); 7] = [
        (
            r#"{"element":"iface:eth0","action":"set","#,
            "line 2: malformed JSON",
        ),
        (
            r#"{"element":"iface:eth0","action":"frob","state":{}}"#,
            "line 2: unknown action \"frob\"",
        ),
        (
            r#"{"element":"eth0","action":"set","state":{}}"#,
            "line 2: bad element id \"eth0\"",
        ),
        (
            r#"{"element":"iface:nope","action":"patch","state":{"a":1}}"#,
            "line 2: cannot patch iface:nope: no such element",
        ),
        (
            r#"{"element":"iface:nope","action":"delete"}"#,
            "line 2: cannot delete iface:nope: no such element",
        ),
        (
            r#"{"element":"iface:eth0","action":"set","state":[1,2]}"#,
            "line 2: state of iface:eth0 is not a JSON object",
        ),
        (
            r#"{"element":"iface:eth0","action":"set","state":{"n":12345678901234567890}}"#,
            "would be rounded",
        ),
    ];
    for (i, (bad, message)) in cases.iter().enumerate() {
        let input = format!("{good}\n{bad}\n{good}\n");
        let run =
            fschain_with_input(&["apply", "--root", &root], Some(input.as_bytes())).code_is(2);
        let err = run.stderr();
        assert!(
            err.contains(message),
            "case {i}: want {message:?} in:\n{err}"
        );
        assert_eq!(err.lines().count(), 1, "one clear line: {err}");
    }
    // The good line before each bad one was sealed (one block each time);
    // nothing of the bad lines, nor of the good lines after them, was applied.
    let after = fschain(&["log", "--root", &root, "--json"]).ok().json();
    let (b, a) = (
        before["blocks"].as_array().unwrap(),
        after["blocks"].as_array().unwrap(),
    );
    assert_eq!(a.len(), b.len() + cases.len());
    assert_eq!(&a[..b.len()], &b[..]);
    assert!(a[b.len()..].iter().all(|h| h["event_count"] == 1));
    fschain(&["verify", "--root", &root]).ok();

    for (args, message) in [
        (
            vec!["show", "--root", &root, "iface:eth0", "--at", "99"],
            "REF 99 matches no block",
        ),
        (
            vec!["show", "--root", &root, "iface:eth0", "--at", "yesterday"],
            "bad REF \"yesterday\"",
        ),
        (
            vec![
                "show",
                "--root",
                &root,
                "iface:eth0",
                "--at",
                "@1999-01-01T00:00:00Z",
            ],
            "matches no block",
        ),
        (
            vec!["show", "--root", &root, "iface:missing"],
            "iface:missing does not exist at block",
        ),
        (
            vec!["log", "--root", s.dir.to_str().unwrap()],
            "is not an fschain root",
        ),
        (vec!["init", "--root", &root], "is already an fschain root"),
        (
            vec!["init", "--root", "/tmp/fschain-not-btrfs-test"],
            "is not on btrfs",
        ),
        (
            vec!["set", "--root", &root, "iface:eth0", "mtu"],
            "is not KEY=VALUE",
        ),
    ] {
        let err = fschain(&args).code_is(2).stderr();
        assert!(err.contains(message), "{args:?}: want {message:?} in {err}");
    }
}

#[test]
fn a_line_that_is_not_utf8_stops_apply_after_sealing_the_lines_before_it() {
    let Some(s) = scratch("notutf8") else { return };
    let root = s.root().display().to_string();
    fschain(&["init", "--root", &root, "--chain", "host1"]).ok();
    let mut input = br#"{"element":"iface:a","action":"set","state":{"x":1}}"#.to_vec();
    input.extend_from_slice(
        b"\n{\"element\":\"iface:b\",\"action\":\"set\",\"state\":{\"k\":\"\xff\"}}\n",
    );
    input.extend_from_slice(br#"{"element":"iface:c","action":"set","state":{"x":3}}"#);
    let run = fschain_with_input(&["apply", "--root", &root], Some(&input)).code_is(2);
    let err = run.stderr();
    assert!(err.contains("line 2") && err.contains("not UTF-8"), "{err}");
    assert!(err.contains("1 operation(s) before it are sealed"), "{err}");
    let a = fschain(&["show", "--root", &root, "iface:a", "--json"])
        .ok()
        .json();
    assert_eq!(a["state"]["x"], 1, "{a}");
    for missing in ["iface:b", "iface:c"] {
        fschain(&["show", "--root", &root, missing]).code_is(2);
    }
    fschain(&["verify", "--root", &root]).ok();
}

#[test]
fn hash_prefix_refs() {
    let Some(s) = scratch("prefix") else { return };
    let root = root_with_sample(&s, 40, 4);
    let log = fschain(&["log", "--root", &root, "--json"]).ok().json();
    let hash = log["blocks"][7]["hash"].as_str().unwrap().to_owned();
    let height_at = |reference: &str| {
        fschain(&[
            "show",
            "--root",
            &root,
            "iface:eth0",
            "--at",
            reference,
            "--json",
        ])
        .ok()
        .json()["height"]
            .clone()
    };
    for len in [8, 12, 64] {
        assert_eq!(height_at(&hash[..len]), 7);
    }
    // Seven hex digits are too few for a hash prefix. A prefix that is all
    // decimal digits is a height instead, so take a block whose first seven
    // digits hold a letter.
    let blocks = log["blocks"].as_array().unwrap();
    let short = blocks
        .iter()
        .map(|b| b["hash"].as_str().unwrap()[..7].to_owned())
        .find(|p| p.bytes().any(|b| b.is_ascii_alphabetic()))
        .expect("some block hash has a letter in its first seven digits");
    let err = fschain(&["show", "--root", &root, "iface:eth0", "--at", &short])
        .code_is(2)
        .stderr();
    assert!(err.contains("bad REF"), "7 hex digits are too few: {err}");
    assert_eq!(height_at("0000007"), 7, "a short run of digits is a height");
}

/// Unmounts a loop filesystem a test mounted, whatever way the test ends.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn init_makes_its_own_loop_filesystem_allocated_in_full() {
    let Some(s) = scratch("image") else { return };
    let image = s.dir.join("chain.img");
    let mnt = s.dir.join("mnt");
    let (image_arg, mnt_arg) = (image.to_str().unwrap(), mnt.to_str().unwrap());

    // More than the test filesystem holds: refused up front, no file left.
    let err = fschain(&[
        "init", "--root", mnt_arg, "--image", image_arg, "--size", "1T",
    ])
    .code_is(2)
    .stderr();
    assert!(
        err.contains("cannot allocate") && err.contains("chain.img"),
        "{err}"
    );
    assert!(!image.exists());

    fschain(&[
        "init", "--root", mnt_arg, "--image", image_arg, "--size", "300M",
    ])
    .ok();
    let _unmount = Unmount(mnt.clone());
    // Every byte is allocated now, so the image cannot outgrow its host later.
    let meta = std::fs::metadata(&image).unwrap();
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&meta) * 512 >= 300 << 20,
        "{meta:?}"
    );
    fschain(&["set", "--root", mnt_arg, "iface:eth0", "mtu=9000"]).ok();
    fschain(&["verify", "--root", mnt_arg]).ok();

    // An existing image is never overwritten.
    let again = s.dir.join("again");
    let err = fschain(&[
        "init",
        "--root",
        again.to_str().unwrap(),
        "--image",
        image_arg,
        "--size",
        "300M",
    ])
    .code_is(2)
    .stderr();
    assert!(err.contains("chain.img"), "{err}");
    fschain(&["verify", "--root", mnt_arg]).ok();
}

#[test]
fn a_blocks_events_are_found_where_the_previous_snapshot_ends() {
    use fschain_store::{btrfs, for_block_event_lines, ChainDir, RootLayout, StoreError};
    let Some(s) = scratch("block-events") else {
        return;
    };
    // Blocks of 7, 7, 7 and 4 events, so no block ends where another does.
    let root = root_with_sample(&s, 25, 7);
    let layout = RootLayout::new(&root);
    let layer = layout.layer();
    assert_eq!(
        btrfs::compression(&layer.join("states"))
            .unwrap()
            .as_deref(),
        Some(btrfs::STATES_COMPRESSION),
        "init stores the states compressed"
    );
    for log in ["events.log", "headers.log"] {
        assert_eq!(btrfs::compression(&layer.join(log)).unwrap(), None, "{log}");
    }
    // Older copies' logs share their bytes with the newest copy's.
    let report = fschain(&["verify", "--root", &root]).ok().stdout();
    let shared: u64 = report
        .split_once(" of them shared on disk")
        .and_then(|(before, _)| before.rsplit('(').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no shared byte count in {report}"));
    assert!(shared > 10_000, "{shared}: {report}");
    let headers = ChainDir::new(layout.snapshot(4)).headers().unwrap();
    for header in &headers {
        let h = header.height;
        let mut found = Vec::new();
        let n = for_block_event_lines(&layout, h, header.event_count, |line| {
            found.push(line.to_vec());
            Ok::<(), StoreError>(())
        })
        .unwrap();
        assert_eq!(n, header.event_count);
        let scanned = ChainDir::new(layout.snapshot(h))
            .last_event_lines(header.event_count)
            .unwrap();
        assert_eq!(found, scanned, "block {h}");
    }
    // A start that is not where a line begins, or lines that do not end the
    // log, are named rather than read as the block's events.
    let block3 = ChainDir::new(layout.snapshot(3));
    let start = ChainDir::new(layout.snapshot(2)).events_log_len().unwrap();
    let ok = |_: &[u8]| Ok::<(), StoreError>(());
    let err = block3
        .for_event_lines_at(start + 1, 7, true, ok)
        .unwrap_err();
    assert!(err.to_string().contains("no line that starts"), "{err}");
    let start = ChainDir::new(layout.snapshot(1)).events_log_len().unwrap();
    let err = block3.for_event_lines_at(start, 7, true, ok).unwrap_err();
    assert!(err.to_string().contains("more than 7 events"), "{err}");
}

/// A state too large for the writer to keep parsed between operations
/// (over 64 KiB) is patched twice in one block and once in the next: each
/// patch builds on the latest state, whether it is still only in the open
/// block or already in the layer.
#[test]
fn large_states_patched_within_and_across_blocks_build_on_the_latest() {
    let Some(s) = scratch("largepatch") else {
        return;
    };
    let root = s.root().display().to_string();
    fschain(&["init", "--root", &root, "--chain", "host1"]).ok();
    let blob = "ab".repeat(60_000);
    let ops = [
        json!({"element": "file:/big", "action": "set", "state": {"blob": blob, "n": 1}}),
        json!({"element": "file:/big", "action": "patch", "state": {"n": 2, "a": true}}),
        json!({"element": "file:/big", "action": "patch", "state": {"n": 3}}),
        json!({"element": "file:/big", "action": "patch", "state": {"b": "x"}}),
    ];
    let lines: Vec<String> = ops.iter().map(ToString::to_string).collect();
    fschain_with_input(
        &["apply", "--root", &root, "--block-ops", "3"],
        Some(format!("{}\n", lines.join("\n")).as_bytes()),
    )
    .ok();
    let show = |at: &str| {
        fschain(&["show", "--root", &root, "file:/big", "--at", at, "--json"])
            .ok()
            .json()["state"]
            .clone()
    };
    assert_eq!(show("1"), json!({"blob": blob, "n": 3, "a": true}));
    assert_eq!(
        show("2"),
        json!({"blob": blob, "n": 3, "a": true, "b": "x"})
    );
    let report = fschain(&["verify", "--root", &root, "--json"]).ok().json();
    assert_eq!(report["clean"], true);
}
