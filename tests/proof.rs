//! `checkpoint`, `prove` and `check-proof` against real btrfs, each proof
//! also checked by Go programs built on libraries nobody here wrote
//! (`tests/interop/`: golang.org/x/mod/sumdb/note, transparency-dev
//! formats and merkle). Every tampered copy must fail in both.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::{fschain, root_with_sample, scratch};

/// The Go checker, built once into the target directory. Under CI a
/// missing Go toolchain fails the test; elsewhere it is skipped.
fn interop() -> Option<&'static Path> {
    static BUILT: OnceLock<Option<PathBuf>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fschain-interop");
            match Command::new("go")
                .args(["build", "-o"])
                .arg(&out)
                .arg(".")
                .current_dir(&source)
                .status()
            {
                Ok(s) if s.success() => Some(out),
                other => {
                    assert!(
                        std::env::var_os("CI").is_none(),
                        "under CI the Go interop check must run: go build in tests/interop: {other:?}"
                    );
                    eprintln!("SKIPPED the Go checks: go build failed: {other:?}");
                    None
                }
            }
        })
        .as_deref()
}

/// Runs the Go checker; true when it says the proof holds.
fn go_accepts(check: &str, vkey: &str, file: &Path) -> bool {
    let Some(bin) = interop() else { return true };
    let out = Command::new(bin)
        .args([check, vkey])
        .arg(file)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("go {check} {}: {}", file.display(), said.trim());
    out.status.success()
}

/// `check-proof`'s verdict: Ok(what it proved) or Err(why not); never a
/// crash.
fn fschain_check(file: &Path, vkey: &str) -> Result<String, String> {
    let run = fschain(&["check-proof", file.to_str().unwrap(), "--key", vkey]);
    match run.code() {
        0 => Ok(run.stdout()),
        1 => Err(run.stdout()),
        _ => panic!(
            "check-proof must say yes or no, not crash: {}",
            run.stderr()
        ),
    }
}

/// Both checkers refuse `text` as `check`.
fn both_refuse(dir: &Path, name: &str, text: &str, check: &str, vkey: &str) -> String {
    let file = dir.join(name);
    std::fs::write(&file, text).unwrap();
    let why = fschain_check(&file, vkey).expect_err(name);
    assert!(!go_accepts(check, vkey, &file), "Go accepted {name}");
    why
}

/// A tlog-proof whose `extra` JSON is changed by `edit`.
fn with_extra(text: &str, edit: impl Fn(&mut serde_json::Value)) -> String {
    let line = text.lines().nth(1).unwrap();
    let raw = STANDARD
        .decode(line.strip_prefix("extra ").unwrap())
        .unwrap();
    let mut value: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    edit(&mut value);
    let bytes = fschain_schema::jcs::canonical(&value).unwrap();
    text.replacen(line, &format!("extra {}", STANDARD.encode(bytes)), 1)
}

#[test]
fn proofs_check_here_and_in_go_and_every_tampered_copy_fails() {
    let Some(s) = scratch("proof") else { return };
    let root = root_with_sample(&s, 120, 20);
    let dir = s.root().parent().unwrap().to_owned();
    let vkey = fschain(&["key", "show", "--root", &root, "--vkey"])
        .ok()
        .stdout()
        .trim()
        .to_owned();
    assert!(vkey.starts_with("fschain.example/host1+"), "{vkey}");

    // The checkpoint: 7 blocks (genesis and 6 of 20 operations).
    let checkpoint = fschain(&["checkpoint", "--root", &root]).ok().stdout();
    let lines: Vec<&str> = checkpoint.lines().collect();
    assert_eq!(lines[..2], ["fschain.example/host1", "7"], "{checkpoint}");
    assert!(lines[4].starts_with("\u{2014} fschain.example/host1 "));
    let cp_file = dir.join("checkpoint");
    std::fs::write(&cp_file, &checkpoint).unwrap();
    assert!(go_accepts("checkpoint", &vkey, &cp_file));
    let older = fschain(&["checkpoint", "--root", &root, "--at", "3"])
        .ok()
        .stdout();
    assert!(older.starts_with("fschain.example/host1\n4\n"), "{older}");

    // An element's state at block 5, in the head's checkpoint.
    let element = "file:/etc/fstab";
    let bundle = dir.join("fstab.tlog-proof");
    let bundle_path = bundle.to_str().unwrap();
    fschain(&[
        "prove",
        "--root",
        &root,
        element,
        "--block",
        "5",
        "-o",
        bundle_path,
    ])
    .ok();
    let text = std::fs::read_to_string(&bundle).unwrap();
    let said = fschain_check(&bundle, &vkey).unwrap();
    assert!(said.contains(element) && said.contains("block 5"), "{said}");
    let state = fschain(&["show", "--root", &root, element, "--at", "5", "--json"])
        .ok()
        .json()["state"]
        .clone();
    assert!(said.contains(&state.to_string()), "{said} vs {state}");
    assert!(go_accepts("proof", &vkey, &bundle));

    // A block header alone, in the checkpoint at block 4.
    let header_proof = fschain(&["prove", "--root", &root, "--block", "2", "--at", "4"])
        .ok()
        .stdout();
    let header_file = dir.join("block2.tlog-proof");
    std::fs::write(&header_file, &header_proof).unwrap();
    assert!(fschain_check(&header_file, &vkey)
        .unwrap()
        .contains("size 5"));
    assert!(go_accepts("proof", &vkey, &header_file));

    // Tampered copies: each fails in fschain and in Go.
    let lied = with_extra(&text, |v| v["state"]["state"]["mode"] = "0666".into());
    let why = both_refuse(&dir, "lied-state", &lied, "proof", &vkey);
    assert!(why.contains("not in block 5's state root"), "{why}");
    let moved = text.replacen("index 5\n", "index 4\n", 1);
    both_refuse(&dir, "moved", &moved, "proof", &vkey);
    let rehashed = with_extra(&text, |v| v["header"]["height"] = 4.into());
    let why = both_refuse(&dir, "rehashed", &rehashed, "proof", &vkey);
    assert!(why.contains("hash"), "{why}");
    let path_line = text.lines().nth(3).unwrap();
    let swapped = text.replacen(path_line, &STANDARD.encode([7u8; 32]), 1);
    both_refuse(&dir, "swapped-path", &swapped, "proof", &vkey);
    let signature = text.lines().last().unwrap();
    let forged_sig = {
        let (head, sig) = signature.rsplit_once(' ').unwrap();
        let mut raw = STANDARD.decode(sig).unwrap();
        raw[10] ^= 1;
        text.replacen(signature, &format!("{head} {}", STANDARD.encode(raw)), 1)
    };
    let why = both_refuse(&dir, "forged-signature", &forged_sig, "proof", &vkey);
    assert!(why.contains("signature"), "{why}");
    let truncated = &text[..text.len() / 2];
    both_refuse(&dir, "truncated", truncated, "proof", &vkey);

    // Another log's key: refused.
    let other = s.root().with_file_name("other");
    fschain(&[
        "init",
        "--root",
        other.to_str().unwrap(),
        "--chain",
        "host1",
    ])
    .ok();
    let other_key = fschain(&["key", "show", "--root", other.to_str().unwrap(), "--vkey"])
        .ok()
        .stdout();
    let why = fschain_check(&bundle, other_key.trim()).unwrap_err();
    assert!(why.contains("signature"), "{why}");
    assert!(!go_accepts("proof", other_key.trim(), &bundle));

    // Consistency between the checkpoints at blocks 2 and 6.
    let consistency = fschain(&["prove", "--root", &root, "--consistency", "2", "head"])
        .ok()
        .stdout();
    let file = dir.join("consistency.json");
    std::fs::write(&file, &consistency).unwrap();
    assert!(fschain_check(&file, &vkey)
        .unwrap()
        .contains("size 7 extends the tree of size 3"));
    assert!(go_accepts("consistency", &vkey, &file));
    let mut doc: serde_json::Value = serde_json::from_str(&consistency).unwrap();
    let (old, new) = (doc["old"].clone(), doc["new"].clone());
    doc["old"] = new;
    doc["new"] = old;
    let why = both_refuse(&dir, "backwards", &doc.to_string(), "consistency", &vkey);
    assert!(why.contains("went backwards"), "{why}");
    let mut doc: serde_json::Value = serde_json::from_str(&consistency).unwrap();
    doc["proof"][0] = STANDARD.encode([1u8; 32]).into();
    both_refuse(
        &dir,
        "bad-consistency",
        &doc.to_string(),
        "consistency",
        &vkey,
    );

    // A state at a pruned height is rebuilt and proven all the same.
    fschain(&[
        "prune",
        "--root",
        &root,
        "--keep-last",
        "1",
        "--unpublished",
    ])
    .ok();
    assert!(!Path::new(&root).join("blocks/5").exists());
    let after = fschain(&["prove", "--root", &root, element, "--block", "5"])
        .ok()
        .stdout();
    assert_eq!(after, text, "the proof of a pruned height changed");
}

#[test]
fn prove_refuses_what_it_cannot_prove_by_name() {
    let Some(s) = scratch("proof-refusals") else {
        return;
    };
    let root = root_with_sample(&s, 40, 20);
    let refused = fschain(&["prove", "--root", &root, "file:/etc/no-such"]).code_is(2);
    assert!(
        refused.stderr().contains("has no state at block 2"),
        "{}",
        refused.stderr()
    );
    let refused = fschain(&["prove", "--root", &root, "--block", "2", "--at", "1"]).code_is(2);
    assert!(
        refused.stderr().contains("newer than the checkpoint"),
        "{}",
        refused.stderr()
    );
    let refused = fschain(&["prove", "--root", &root, "--consistency", "2", "1"]).code_is(2);
    assert!(
        refused.stderr().contains("must not be newer"),
        "{}",
        refused.stderr()
    );
    let refused = fschain(&["check-proof", "/dev/null", "--key", "not a key"]).code_is(2);
    assert!(refused.stderr().contains("--key"), "{}", refused.stderr());
}
