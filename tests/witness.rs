//! Sites as witnesses, against real btrfs and the real broker: a site
//! cosigns each checkpoint it verified (C2SP tlog-cosignature, checked by
//! Go's transparency-dev libraries too), and a site shown a forked history
//! (a copy of the producer's root, same key, diverging) stops that chain.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{fschain, fschain_with_input, on_topics, sample_ops_between, scratch};

fn apply(root: &str, ops: &str) {
    fschain_with_input(
        &["apply", "--root", root, "--block-ops", "10"],
        Some(ops.as_bytes()),
    )
    .ok();
}

/// The Go checker of tests/interop (built by `go build`), when Go is here.
fn go_cosigned(log_vkey: &str, witness_vkey: &str, file: &Path) -> Option<bool> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    let bin = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fschain-interop-witness");
    let built = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(&dir)
        .status();
    if !built.is_ok_and(|s| s.success()) {
        assert!(
            std::env::var_os("CI").is_none(),
            "under CI the Go checks must run"
        );
        return None;
    }
    let out = Command::new(&bin)
        .args(["cosigned", log_vkey, witness_vkey])
        .arg(file)
        .output()
        .unwrap();
    eprintln!(
        "go cosigned: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(out.status.success())
}

#[test]
fn sites_cosign_what_they_verified_and_a_forked_history_is_stopped() {
    let Some(s) = scratch("witness") else { return };
    let Some(brokers) = common::broker("witness") else {
        return;
    };
    let prefix = common::unique("witness");
    let (producer, key) = common::producer_root(&s.dir);
    on_topics(
        &["topics", "create", "--partitions", "1"],
        &brokers,
        &prefix,
    )
    .ok();

    // Blocks 1-2, then a copy of the root (same key); then each goes on
    // with a history of its own: blocks 3-4 differ.
    apply(&producer, &sample_ops_between(0, 20));
    let fork = s.dir.join("fork");
    common::backup_root(Path::new(&producer), &fork);
    let fork = fork.display().to_string();
    apply(&producer, &sample_ops_between(20, 40));
    let own: String = (0..20)
        .map(|i| {
            format!(
                "{{\"element\":\"service:forked\",\"action\":\"set\",\"state\":{{\"n\":{i}}}}}\n"
            )
        })
        .collect();
    apply(&fork, &own);
    on_topics(&["publish", "--root", &producer], &brokers, &prefix).ok();

    // Site east verifies and cosigns every checkpoint.
    let east = s.dir.join("east").display().to_string();
    let site = |name: &str, root: &str, prefix: &str, extra: &[&str]| {
        let mut args = extra.to_vec();
        args.extend([
            "consume",
            "--site",
            name,
            "--root",
            root,
            "--trust",
            &key,
            "--no-index",
            "--until-idle",
        ]);
        on_topics(&args, &brokers, prefix)
    };
    let run = site("east", &east, &prefix, &[]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let east_vkey = fschain(&["key", "show", "--root", &east, "--site", "east"])
        .ok()
        .stdout()
        .trim()
        .to_owned();
    assert!(
        east_vkey.starts_with("fschain.example/site/east+"),
        "{east_vkey}"
    );
    let log_vkey = fschain(&["key", "show", "--root", &producer, "--vkey"])
        .ok()
        .stdout()
        .trim()
        .to_owned();

    let witnessed_by = |n: &str, vkey: &str| {
        on_topics(
            &[
                "checkpoint",
                "--root",
                &producer,
                "--witnessed-by",
                n,
                "--witness",
                vkey,
            ],
            &brokers,
            &prefix,
        )
    };
    // The newest checkpoint east cosigned: the head, size 5.
    let witnessed = witnessed_by("1", &east_vkey).ok().stdout();
    assert!(
        witnessed.starts_with("fschain.example/host1\n5\n"),
        "{witnessed}"
    );
    assert!(
        witnessed.contains("\u{2014} fschain.example/site/east "),
        "{witnessed}"
    );
    let file = s.dir.join("witnessed");
    std::fs::write(&file, &witnessed).unwrap();
    if let Some(ok) = go_cosigned(&log_vkey, &east_vkey, &file) {
        assert!(ok, "Go refused the cosigned checkpoint");
        let forged = witnessed.replacen("\n5\n", "\n6\n", 1);
        std::fs::write(&file, forged).unwrap();
        assert_eq!(go_cosigned(&log_vkey, &east_vkey, &file), Some(false));
    }
    // Two cosigners asked for, one given: none.
    let none = witnessed_by("2", &east_vkey).code_is(1);
    assert!(none.stderr().contains("no checkpoint"), "{}", none.stderr());

    // The forked copy publishes to topics of its own; site west follows
    // them, sharing east's witness topic.
    let forked_prefix = common::unique("forked");
    on_topics(
        &["topics", "create", "--partitions", "1"],
        &brokers,
        &forked_prefix,
    )
    .ok();
    on_topics(&["publish", "--root", &fork], &brokers, &forked_prefix).ok();
    let config = s.dir.join("west.toml");
    std::fs::write(&config, format!("witness_topic = \"{prefix}.witness\"\n")).unwrap();
    let config = config.display().to_string();
    let west = s.dir.join("west").display().to_string();
    let run = site("west", &west, &forked_prefix, &["--config", &config]);
    assert_eq!(run.code(), 1, "a fork must fail the run: {}", run.stderr());
    let err = run.stderr();
    assert!(err.contains("FORK host1"), "{err}");
    assert!(err.contains("signed two histories"), "{err}");
    // West took the common blocks and refused the first forked one.
    assert_eq!(common::block_count(&format!("{west}/host1")), 3, "{err}");
    assert!(Path::new(&format!("{west}/host1/meta/forked")).exists());
    // It stays stopped across a restart.
    let again = site("west", &west, &forked_prefix, &["--config", &config]);
    assert_eq!(again.code(), 1, "{}", again.stderr());
    assert_eq!(common::block_count(&format!("{west}/host1")), 3);
    // And west cosigned none of the forked checkpoints: east's size-5
    // checkpoint is still the only one cosigned at that size.
    let west_vkey = fschain(&["key", "show", "--root", &west, "--site", "west"])
        .ok()
        .stdout()
        .trim()
        .to_owned();
    let by_west = witnessed_by("1", &west_vkey).code_is(0).stdout();
    // West cosigned the common checkpoints (sizes 1 to 3), which are the
    // producer's too.
    assert!(
        by_west.starts_with("fschain.example/host1\n3\n"),
        "{by_west}"
    );
}
