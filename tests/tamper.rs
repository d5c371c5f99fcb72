//! `verify` catches any single changed byte, in the layer or any snapshot,
//! and any removed, inserted or reordered event; its report names the fault.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{fschain, root_with_sample, scratch};
use fschain_store::btrfs;

/// Runs `change` on a file inside the chain copy `copy` (the layer or a
/// snapshot, made writable for the change and read-only again after).
fn tamper(copy: &Path, change: impl FnOnce()) {
    let snapshot = copy.parent().is_some_and(|p| p.ends_with("blocks"));
    if snapshot {
        btrfs::set_readonly(copy, false).unwrap();
    }
    change();
    if snapshot {
        btrfs::set_readonly(copy, true).unwrap();
    }
}

fn verify_json(root: &str) -> (i32, serde_json::Value) {
    let run = fschain(&["verify", "--root", root, "--json"]);
    (run.code(), run.json())
}

fn messages(report: &serde_json::Value) -> String {
    report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["message"].as_str().unwrap().to_owned() + "\n")
        .collect()
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if entry.file_type().unwrap().is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn any_single_changed_byte_anywhere_is_caught() {
    let Some(s) = scratch("bytes") else { return };
    let root = root_with_sample(&s, 120, 30);
    assert_eq!(verify_json(&root).0, 0);
    let base = s.root();
    let mut copies = vec![base.join("layer")];
    for h in 0..=4 {
        copies.push(base.join(format!("blocks/{h:010}")));
    }
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..40 {
        let copy = &copies[(next() % copies.len() as u64) as usize];
        let mut files = Vec::new();
        files_under(copy, &mut files);
        // Weight the logs and CHAIN as much as all state files together.
        let file = match next() % 4 {
            0 => copy.join("events.log"),
            1 => copy.join("headers.log"),
            2 if round % 5 == 0 => copy.join("CHAIN"),
            _ => files[(next() % files.len() as u64) as usize].clone(),
        };
        let original = std::fs::read(&file).unwrap();
        if original.is_empty() {
            continue;
        }
        let at = (next() % original.len() as u64) as usize;
        let mut changed = original.clone();
        changed[at] ^= 1 + (next() % 255) as u8;
        tamper(copy, || std::fs::write(&file, &changed).unwrap());
        let (code, report) = verify_json(&root);
        assert_eq!(
            code,
            1,
            "round {round}: byte {at} of {} changed, verify said clean",
            file.display()
        );
        let place = if copy.ends_with("layer") {
            "layer".to_owned()
        } else {
            format!(
                "block {} snapshot",
                copy.file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
            )
        };
        let text = messages(&report);
        let names_copy =
            text.contains(&place) || (file.ends_with("CHAIN") && text.contains("CHAIN"));
        assert!(
            names_copy,
            "round {round}: {place} not named for {}:\n{text}",
            file.display()
        );
        tamper(copy, || std::fs::write(&file, &original).unwrap());
        assert_eq!(
            verify_json(&root).0,
            0,
            "round {round}: restoring {} did not make it clean",
            file.display()
        );
    }
}

#[test]
fn reports_name_the_event_element_and_block() {
    let Some(s) = scratch("names") else { return };
    let root = root_with_sample(&s, 90, 30);
    let base = s.root();
    let snap2 = base.join("blocks/0000000002");

    // A state file changed in block 2's snapshot: names block 2 and the element.
    let eth1 = snap2.join("states/iface/eth1");
    let original = std::fs::read(&eth1).unwrap();
    tamper(&snap2, || {
        std::fs::write(&eth1, br#"{"mtu":1500}"#).unwrap()
    });
    let (code, report) = verify_json(&root);
    let text = messages(&report);
    assert_eq!(code, 1);
    assert!(
        text.contains("block 2 snapshot: state of iface:eth1 is"),
        "{text}"
    );
    assert!(
        text.contains("block 2 snapshot: block 2 state root is"),
        "{text}"
    );
    tamper(&snap2, || std::fs::write(&eth1, &original).unwrap());

    // An event's reason changed in the layer: names the event and element.
    let log = base.join("layer/events.log");
    let events = std::fs::read_to_string(&log).unwrap();
    let line5 = events.lines().nth(4).unwrap();
    let element = serde_json::from_str::<serde_json::Value>(line5).unwrap()["element"]
        .as_str()
        .unwrap()
        .to_owned();
    let forged = events.replacen(
        line5,
        &line5.replacen("initial inventory", "initial inventorY", 1),
        1,
    );
    std::fs::write(&log, &forged).unwrap();
    let text = messages(&verify_json(&root).1);
    assert!(
        text.contains(&format!(
            "layer: event 5 ({element}, events.log line 5) was changed"
        )),
        "{text}"
    );
    std::fs::write(&log, &events).unwrap();

    // A header changed in block 1's snapshot.
    let snap1 = base.join("blocks/0000000001");
    let headers = snap1.join("headers.log");
    let original = std::fs::read_to_string(&headers).unwrap();
    tamper(&snap1, || {
        std::fs::write(
            &headers,
            original.replacen("\"event_count\":30", "\"event_count\":31", 1),
        )
        .unwrap()
    });
    let text = messages(&verify_json(&root).1);
    assert!(
        text.contains("block 1 snapshot: block 1 header was changed"),
        "{text}"
    );
    tamper(&snap1, || std::fs::write(&headers, &original).unwrap());

    // A snapshot left writable.
    btrfs::set_readonly(&snap1, false).unwrap();
    let text = messages(&verify_json(&root).1);
    assert!(
        text.contains("block 1 snapshot: block 1: is writable"),
        "{text}"
    );
    btrfs::set_readonly(&snap1, true).unwrap();
    assert_eq!(verify_json(&root).0, 0);
}

#[test]
fn removed_inserted_and_reordered_events_are_caught() {
    let Some(s) = scratch("order") else { return };
    let root = root_with_sample(&s, 90, 30);
    let snap = s.root().join("blocks/0000000003");
    let log = snap.join("events.log");
    let original = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    let rebuild = |ls: &[&str]| ls.iter().map(|l| format!("{l}\n")).collect::<String>();

    let mut removed = lines.clone();
    removed.remove(40);
    let mut inserted = lines.clone();
    inserted.insert(50, lines[10]);
    let mut reordered = lines.clone();
    reordered.swap(60, 61);
    for (what, text, want) in [
        (
            "removed",
            rebuild(&removed),
            "expected event 41, found event 42",
        ),
        (
            "inserted",
            rebuild(&inserted),
            "expected event 51, found event 11",
        ),
        (
            "reordered",
            rebuild(&reordered),
            "expected event 61, found event 62",
        ),
    ] {
        tamper(&snap, || std::fs::write(&log, &text).unwrap());
        let (code, report) = verify_json(&root);
        let msgs = messages(&report);
        assert_eq!(code, 1, "{what}");
        assert!(msgs.contains(want), "{what}: want {want:?} in\n{msgs}");
        assert!(msgs.contains("block 3 snapshot"), "{what}:\n{msgs}");
        tamper(&snap, || std::fs::write(&log, &original).unwrap());
    }
    assert_eq!(verify_json(&root).0, 0);
}

/// A site checks what it receives with `verify`'s checks: a block whose
/// snapshot was changed on the producer after it was sealed (so its signed
/// header no longer matches its files) is refused at import, and the site
/// keeps the blocks it had, with no staging left behind.
#[test]
fn a_site_refuses_a_signed_block_whose_files_do_not_match_its_header() {
    let Some(s) = scratch("received") else { return };
    let root = root_with_sample(&s, 40, 10);
    let key = s.dir.join("key.pub");
    let public = fschain(&["key", "show", "--root", &root]).ok().stdout();
    std::fs::write(&key, public).unwrap();
    let site = s.dir.join("site").display().to_string();
    let import = |stream: &[u8]| {
        common::fschain_with_input(
            &[
                "import",
                "--site",
                "s",
                "--root",
                &site,
                "--trust",
                key.to_str().unwrap(),
                "-",
            ],
            Some(stream),
        )
    };
    let first = fschain(&["export", "--root", &root, "--to", "3"]).ok();
    import(&first.output.stdout).ok();

    // A state file of block 4, changed after the block was sealed.
    let block = s.root().join("blocks/0000000004");
    let mut states = Vec::new();
    files_under(&block.join("states"), &mut states);
    states.sort();
    let victim = states[states.len() / 2].clone();
    tamper(&block, || {
        let mut bytes = std::fs::read(&victim).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 1;
        std::fs::write(&victim, bytes).unwrap();
    });
    let second = fschain(&["export", "--root", &root, "--from", "3", "--to", "4"]).ok();
    let refused = import(&second.output.stdout);
    let err = refused.stderr();
    assert_ne!(refused.code(), 0, "{err}");
    assert!(err.contains("does not verify"), "{err}");
    assert!(
        err.contains("state root") && err.contains("state of "),
        "{err}"
    );
    assert!(err.contains("block 4"), "{err}");

    let copy = Path::new(&site).join("host1");
    let mut held: Vec<String> = std::fs::read_dir(copy.join("blocks"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    held.sort();
    assert_eq!(
        held,
        ["0000000000", "0000000001", "0000000002", "0000000003"]
    );
    fschain(&["verify", "--root", copy.to_str().unwrap()]).ok();
}

/// Reads and rollbacks at a height whose snapshot is missing, or whose
/// files were changed, answer with the states the header backs (rebuilt
/// from the events log), never with what the damaged copy holds.
#[test]
fn reads_and_rollbacks_at_a_missing_or_changed_snapshot_follow_the_header() {
    let Some(s) = scratch("missingsnap") else {
        return;
    };
    let root = root_with_sample(&s, 200, 20);
    let log = fschain(&["log", "--root", &root, "--json"]).ok().json();
    let blocks = log["blocks"].as_array().unwrap().clone();
    let state_root = |h: usize| blocks[h]["state_root"].as_str().unwrap().to_owned();
    let added = fschain(&["diff", "--root", &root, "0", "5", "--json"])
        .ok()
        .json();
    let elements: Vec<String> = added["added"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_owned())
        .collect();
    let show = |element: &str, at: &str| {
        fschain(&["show", "--root", &root, element, "--at", at, "--json"])
            .ok()
            .json()["state"]
            .clone()
    };
    let before: Vec<_> = elements.iter().map(|e| show(e, "5")).collect();
    let diff_before = fschain(&["diff", "--root", &root, "4", "5", "--json"])
        .ok()
        .json();
    let at3 = show(&elements[0], "3");

    let snapshot = |h: u64| Path::new(&root).join(format!("blocks/{h:010}"));
    common::btrfs(&[
        "subvolume".as_ref(),
        "delete".as_ref(),
        snapshot(5).as_os_str(),
    ]);
    let after: Vec<_> = elements.iter().map(|e| show(e, "5")).collect();
    assert_eq!(after, before, "show --at a missing snapshot");
    let diff_after = fschain(&["diff", "--root", &root, "4", "5", "--json"])
        .ok()
        .json();
    assert_eq!(diff_after, diff_before);

    // A changed file in another snapshot: the header's state is shown.
    let element = fschain_schema::ElementId::parse(&elements[0]).unwrap();
    let changed = snapshot(3).join(fschain_store::state_path::state_path(&element));
    assert!(changed.exists(), "{}", changed.display());
    tamper(&snapshot(3), || {
        std::fs::write(&changed, b"{\"forged\":true}").unwrap()
    });
    assert_eq!(show(&elements[0], "3"), at3, "show --at a changed snapshot");

    // Rollbacks to both restore exactly the header's states.
    for target in [5usize, 3] {
        fschain(&["rollback", "--root", &root, &target.to_string()]).ok();
        let head = fschain(&["log", "--root", &root, "--json"]).ok().json();
        let head = head["blocks"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(
            head["state_root"].as_str().unwrap(),
            state_root(target),
            "rollback to {target}"
        );
    }
}
