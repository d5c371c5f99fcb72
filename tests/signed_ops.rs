//! Signed operations, signed by the real `ssh-keygen` (ed25519 and ECDSA
//! keys) and checked against an OpenSSH allowed_signers file, on real
//! btrfs and, for the agent, the real broker. What a chain records is
//! checked back by `ssh-keygen -Y verify`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{fschain, fschain_with_input, on_topics, scratch};
use serde_json::{json, Value};

fn ssh_keygen(args: &[&str], input: Option<&[u8]>) -> String {
    use std::io::Write as _;
    let mut child = Command::new("ssh-keygen")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh-keygen (openssh-client) is installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.unwrap_or_default())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "ssh-keygen {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A key pair made by ssh-keygen in `dir`; returns the private key's path.
fn key(dir: &Path, name: &str, kind: &[&str]) -> String {
    let path = dir.join(name).display().to_string();
    let mut args = vec!["-q", "-N", "", "-C", name, "-f", &path];
    args.extend_from_slice(kind);
    ssh_keygen(&args, None);
    path
}

fn public(key: &str) -> String {
    std::fs::read_to_string(format!("{key}.pub"))
        .unwrap()
        .trim()
        .to_owned()
}

/// `SHA256:...` as `ssh-keygen -l` prints it.
fn fingerprint(key: &str) -> String {
    let line = ssh_keygen(&["-l", "-f", &format!("{key}.pub")], None);
    line.split_whitespace().nth(1).unwrap().to_owned()
}

fn op(element: &str, mtu: u64, actor: Option<&str>) -> Value {
    let mut op = json!({"element": element, "action": "set", "state": {"mtu": mtu}});
    if let Some(a) = actor {
        op["actor"] = a.into();
    }
    op
}

/// `op` signed by `key` in `namespace`, signed over `signed` (its own
/// canonical bytes unless given).
fn signed_with(op: &Value, key: &str, namespace: &str, signed: Option<&Value>) -> Value {
    let canonical = fschain_with_input(
        &["op", "canonical"],
        Some(signed.unwrap_or(op).to_string().as_bytes()),
    )
    .ok()
    .stdout();
    let signature = ssh_keygen(
        &["-q", "-Y", "sign", "-n", namespace, "-f", key],
        Some(canonical.as_bytes()),
    );
    let mut op = op.clone();
    op["signature"] = signature.into();
    op
}

struct Signers {
    alice: String,
    bob: String,
    carol: String,
    dave: String,
    mallory: String,
    config: String,
    allowed: String,
}

fn signers(dir: &Path) -> Signers {
    let alice = key(dir, "alice", &["-t", "ed25519"]);
    let bob = key(dir, "bob", &["-t", "ecdsa", "-b", "256"]);
    let carol = key(dir, "carol", &["-t", "ed25519"]);
    let dave = key(dir, "dave", &["-t", "ed25519"]);
    let mallory = key(dir, "mallory", &["-t", "ed25519"]);
    let allowed = dir.join("allowed_signers").display().to_string();
    std::fs::write(
        &allowed,
        format!(
            "# who may sign operations\n\
             alice@example.com namespaces=\"fschain-op,git\" {}\n\
             bob@example.com,ops-* {}\n\
             carol@example.com valid-before=\"20200101\" {}\n\
             dave@example.com namespaces=\"git\" {}\n",
            public(&alice),
            public(&bob),
            public(&carol),
            public(&dave)
        ),
    )
    .unwrap();
    let config = dir.join("fschain.toml").display().to_string();
    std::fs::write(
        &config,
        format!("allowed_signers = {allowed:?}\nrequire_signed_ops = true\n"),
    )
    .unwrap();
    Signers {
        alice,
        bob,
        carol,
        dave,
        mallory,
        config,
        allowed,
    }
}

fn lines(ops: &[Value]) -> String {
    ops.iter().map(|o| format!("{o}\n")).collect()
}

/// The events of `element`, as `history --json` prints them.
fn events(root: &str, element: &str) -> Vec<Value> {
    fschain(&["history", "--root", root, element, "--json"])
        .ok()
        .json()["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].clone())
        .collect()
}

#[test]
fn only_operations_signed_by_allowed_keys_apply_and_ssh_keygen_agrees() {
    let Some(s) = scratch("signed-ops") else {
        return;
    };
    let dir = s.root().parent().unwrap().to_owned();
    let k = signers(&dir);
    let root = s.root().display().to_string();
    fschain(&["init", "--root", &root, "--chain", "host1"]).ok();

    let alice_op = op("iface:eth0", 9000, Some("alice@example.com"));
    let bob_op = op("iface:eth1", 1500, Some("ops-bob"));
    let refused = [
        // 2: not signed
        op("iface:eth2", 1, None),
        // 3: alice's signature over other bytes
        signed_with(
            &op("iface:eth0", 1, Some("alice@example.com")),
            &k.alice,
            "fschain-op",
            Some(&alice_op),
        ),
        // 4: another namespace
        signed_with(&op("iface:eth3", 1, None), &k.alice, "git", None),
        // 5: carol's line has expired
        signed_with(&op("iface:eth4", 1, None), &k.carol, "fschain-op", None),
        // 6: dave may sign for git only
        signed_with(&op("iface:eth5", 1, None), &k.dave, "fschain-op", None),
        // 7: a key nobody allowed
        signed_with(&op("iface:eth6", 1, None), &k.mallory, "fschain-op", None),
        // 8: alice's key acting as bob
        signed_with(
            &op("iface:eth7", 1, Some("bob@example.com")),
            &k.alice,
            "fschain-op",
            None,
        ),
    ];
    let mut input = vec![signed_with(&alice_op, &k.alice, "fschain-op", None)];
    input.extend(refused);
    input.push(signed_with(&bob_op, &k.bob, "fschain-op", None));
    let run = fschain_with_input(
        &["--config", &k.config, "apply", "--root", &root],
        Some(lines(&input).as_bytes()),
    )
    .code_is(2);
    let err = run.stderr();
    assert!(err.contains("7 operation(s) refused"), "{err}");
    assert!(err.contains("lines 2, 3, 4, 5, 6, 7, 8"), "{err}");
    for (line, why) in [
        (2, "not signed"),
        (3, "does not match the operation"),
        (4, "namespace \"git\""),
        (5, "has expired"),
        (6, "does not allow namespace fschain-op"),
        (7, "not in allowed_signers"),
        (8, "actor \"bob@example.com\" is not a principal"),
    ] {
        assert!(
            err.lines()
                .any(|l| l.contains(&format!("line={line} ")) && l.contains(why)),
            "line {line} should say {why:?}: {err}"
        );
    }

    // The two signed operations are sealed, with their signers.
    let eth0 = &events(&root, "iface:eth0")[0];
    assert_eq!(
        eth0["op"]["signer"],
        json!({"principal": "alice@example.com", "key": fingerprint(&k.alice)})
    );
    let eth1 = &events(&root, "iface:eth1")[0];
    assert_eq!(eth1["op"]["signer"]["principal"], "ops-bob");
    assert_eq!(eth1["op"]["signer"]["key"], fingerprint(&k.bob));
    for absent in ["iface:eth2", "iface:eth3", "iface:eth4", "iface:eth7"] {
        let run = fschain(&["history", "--root", &root, absent]).code_is(2);
        assert!(run.stderr().contains("no history"), "{absent} was applied");
    }
    let history = fschain(&["history", "--root", &root, "iface:eth0"])
        .ok()
        .stdout();
    assert!(
        history.contains(&format!(
            "signed by alice@example.com ({})",
            fingerprint(&k.alice)
        )),
        "{history}"
    );

    // ssh-keygen checks what the chain recorded: the operation rebuilt from
    // its event, its canonical bytes, and the recorded signature.
    for event in [eth0, eth1] {
        let mut recorded = event["op"].clone();
        let signature = recorded["signature"].as_str().unwrap().to_owned();
        let principal = recorded["signer"]["principal"].as_str().unwrap().to_owned();
        recorded["element"] = event["element"].clone();
        let map = recorded.as_object_mut().unwrap();
        map.remove("signer");
        let canonical =
            fschain_with_input(&["op", "canonical"], Some(recorded.to_string().as_bytes()))
                .ok()
                .stdout();
        let sig_file = dir.join("recorded.sig");
        std::fs::write(&sig_file, signature).unwrap();
        let said = ssh_keygen(
            &[
                "-Y",
                "verify",
                "-f",
                &k.allowed,
                "-I",
                &principal,
                "-n",
                "fschain-op",
                "-s",
                sig_file.to_str().unwrap(),
            ],
            Some(canonical.as_bytes()),
        );
        assert!(said.contains("Good"), "{said}");
    }

    // A client may not claim a signer.
    let mut forged = signed_with(&op("iface:eth9", 1, None), &k.alice, "fschain-op", None);
    forged["signer"] = json!({"principal": "root", "key": "SHA256:x"});
    let run = fschain_with_input(
        &["--config", &k.config, "apply", "--root", &root],
        Some(lines(&[forged]).as_bytes()),
    )
    .code_is(2);
    assert!(
        run.stderr().contains("\"signer\" is recorded by fschain"),
        "{}",
        run.stderr()
    );

    // set and delete sign with --sign; unsigned, they are refused.
    let set = fschain(&[
        "--config",
        &k.config,
        "set",
        "--root",
        &root,
        "iface:eth0",
        "mtu=1400",
        "--sign",
        &k.bob,
    ])
    .ok();
    assert!(set.stdout().contains("sealed block"), "{}", set.stdout());
    let last = events(&root, "iface:eth0").pop().unwrap();
    assert_eq!(last["op"]["signer"]["principal"], "bob@example.com,ops-*");
    let unsigned = fschain(&[
        "--config",
        &k.config,
        "delete",
        "--root",
        &root,
        "iface:eth0",
    ])
    .code_is(2);
    assert!(
        unsigned.stderr().contains("not signed"),
        "{}",
        unsigned.stderr()
    );
    fschain(&[
        "--config",
        &k.config,
        "delete",
        "--root",
        &root,
        "iface:eth0",
        "--sign",
        &k.alice,
    ])
    .ok();

    assert_eq!(
        fschain(&["verify", "--root", &root, "--json"]).ok().json()["clean"],
        true
    );

    // An allowed_signers file with a bad line: named, nothing applied.
    std::fs::write(&k.allowed, "alice@example.com ssh-ed25519 AAAAnot-a-key\n").unwrap();
    let run = fschain_with_input(
        &["--config", &k.config, "apply", "--root", &root],
        Some(lines(&[signed_with(&bob_op, &k.bob, "fschain-op", None)]).as_bytes()),
    )
    .code_is(2);
    assert!(
        run.stderr().contains("allowed_signers line 1"),
        "{}",
        run.stderr()
    );
    assert_eq!(events(&root, "iface:eth1").len(), 1);
}

#[test]
fn the_agent_applies_signed_submissions_and_logs_each_refusal_by_offset() {
    let Some(s) = scratch("signed-agent") else {
        return;
    };
    let Some(brokers) = common::broker("signed-agent") else {
        return;
    };
    let dir = s.root().parent().unwrap().to_owned();
    let k = signers(&dir);
    let prefix = common::unique("signed");
    let (producer, _) = common::producer_root(&dir);
    on_topics(
        &["topics", "create", "--partitions", "1"],
        &brokers,
        &prefix,
    )
    .ok();

    let ops = dir.join("ops.jsonl");
    std::fs::write(
        &ops,
        lines(&[
            op("iface:eth0", 9000, Some("alice@example.com")),
            op("iface:eth1", 1, None),
        ]),
    )
    .unwrap();
    let ops = ops.display().to_string();
    on_topics(
        &["submit", "--chain", "host1", &ops, "--sign", &k.alice],
        &brokers,
        &prefix,
    )
    .ok();
    on_topics(&["submit", "--chain", "host1", &ops], &brokers, &prefix).ok();
    let all = common::with_topics(
        &[
            "--config",
            &k.config,
            "agent",
            "--root",
            &producer,
            "--until-idle",
        ],
        &brokers,
        &prefix,
    );
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let stderr = fschain(&all).ok().stderr();
    let refusals: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("operation not applied"))
        .collect();
    assert_eq!(refusals.len(), 2, "{stderr}");
    for (line, offset) in refusals.iter().zip([2, 3]) {
        assert!(line.contains("not signed"), "{line}");
        assert!(line.contains(&format!("offset={offset}")), "{line}");
        assert!(line.contains(&format!("{prefix}.ops")), "{line}");
    }
    let eth0 = events(&producer, "iface:eth0");
    assert_eq!(eth0.len(), 1);
    assert_eq!(eth0[0]["op"]["signer"]["principal"], "alice@example.com");
    assert_eq!(
        events(&producer, "iface:eth1")[0]["op"]["signer"]["key"],
        fingerprint(&k.alice)
    );
}
