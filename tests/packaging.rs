//! What packagers ship beside the binary: completions, man pages, the
//! systemd units and the example config, each checked by the tool that
//! reads it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::fschain;

#[test]
fn completions_and_man_pages_come_from_the_command_line_itself() {
    let bash = fschain(&["completions", "bash"]).ok().stdout();
    assert!(
        bash.contains("_fschain") && bash.contains("watch"),
        "{bash}"
    );
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().display().to_string();
    fschain(&["man", &man]).ok();
    let watch = std::fs::read_to_string(dir.path().join("fschain-watch.1")).unwrap();
    assert!(watch.starts_with(".ie") || watch.contains(".TH"), "{watch}");
    assert!(watch.contains("netns"), "the page lists --netns");
    assert!(dir.path().join("fschain.1").exists());
}

#[test]
fn the_example_config_names_only_keys_fschain_reads() {
    // Uncomment every `key = value` and `[table]` line.
    let example = std::fs::read_to_string("contrib/config.toml").unwrap();
    let uncommented: String = example
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| l.starts_with('[') || (l.contains(" = ") && !l.starts_with(' ')))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(uncommented.contains("[sources.ovs]"), "{uncommented}");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, &uncommented).unwrap();
    let path = config.display().to_string();
    fschain(&["--config", &path, "completions", "bash"]).ok();
    // And the check can fail: a key fschain does not read.
    std::fs::write(&config, format!("{uncommented}\nbogus = 1\n")).unwrap();
    let refused = fschain(&["--config", &path, "completions", "bash"]).code_is(2);
    assert!(refused.stderr().contains("bogus"), "{}", refused.stderr());
}

#[test]
fn the_systemd_units_pass_systemd_analyze() {
    let dir = tempfile::tempdir().unwrap();
    for unit in [
        "fschain-agent.service",
        "fschain-watch.service",
        "fschain-site@.service",
    ] {
        let text = std::fs::read_to_string(format!("contrib/systemd/{unit}")).unwrap();
        let text = text.replace("/usr/bin/fschain", env!("CARGO_BIN_EXE_fschain"));
        std::fs::write(dir.path().join(unit), text).unwrap();
    }
    let Ok(out) = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.path().join("fschain-agent.service"))
        .arg(dir.path().join("fschain-watch.service"))
        .arg(dir.path().join("fschain-site@east.service"))
        .output()
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze is missing"
        );
        eprintln!("SKIPPED: systemd-analyze is missing");
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("fschain")).collect();
    assert!(out.status.success() && ours.is_empty(), "{stderr}");
}
