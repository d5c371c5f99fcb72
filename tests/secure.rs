//! Fault row 13: brokers that require TLS and SASL/SCRAM-SHA-256 and grant
//! nothing without an ACL (scripts/kafka.sh up --secure: a CA and the
//! broker's certificate made with openssl and keytool, users created with
//! the admin API, ACLs with kafka-acls). Every command connects through the
//! documented `[kafka]` settings; a wrong password, an untrusted
//! certificate and a missing ACL are each a clear error within seconds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{block_hashes, fschain_within, sample_ops, scratch, unique};

/// A secure broker of this test's own, stopped even when the test fails.
struct SecureBroker {
    port: String,
}

impl SecureBroker {
    fn script(&self, args: &[&str]) -> String {
        common::kafka_script(args[0], &self.port, &args[1..])
    }

    fn ca(&self) -> PathBuf {
        PathBuf::from(format!("/var/tmp/fschain-kafka-{}/tls/ca.pem", self.port))
    }

    fn allow(&self, principal: &str, operations: &[&str], resource: &[&str]) {
        let user = format!("User:{principal}");
        let mut args = vec!["acl", "--", "--add", "--allow-principal", &user];
        for op in operations {
            args.extend(["--operation", op]);
        }
        args.extend(resource);
        self.script(&args);
    }
}

impl Drop for SecureBroker {
    fn drop(&mut self) {
        self.script(&["down"]);
    }
}

/// A config file with a `[kafka]` table for `user`.
fn config(dir: &Path, user: &str, password: &str, ca: &Path) -> String {
    let path = dir.join(format!("{user}-{password}.toml"));
    std::fs::write(
        &path,
        format!(
            "[kafka]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"SCRAM-SHA-256\"\n\"sasl.username\" = \"{user}\"\n\"sasl.password\" = \"{password}\"\n\"ssl.ca.location\" = \"{}\"\n",
            ca.display()
        ),
    )
    .unwrap();
    path.display().to_string()
}

#[test]
fn tls_and_scram_with_acls_and_clear_errors_for_each_refusal() {
    if common::broker("secure-broker").is_none() {
        return;
    }
    let Some(s) = scratch("secure") else { return };
    let broker = SecureBroker {
        port: "19592".into(),
    };
    let brokers = broker.script(&["up", "--secure"]);
    broker.script(&["user", "producer1", "p-secret"]);
    broker.script(&["user", "site1", "s-secret"]);
    broker.script(&["user", "nobody", "n-secret"]);
    let prefix = unique("secure");
    let topic = |t: &str| format!("{prefix}.{t}");
    let (blocks, events, ops) = (topic("blocks"), topic("events"), topic("ops"));
    // What docs/reliability.md says each principal needs.
    broker.allow(
        "producer1",
        &["Write", "Describe", "Read"],
        &["--topic", &blocks, "--topic", &events],
    );
    broker.allow("producer1", &["Read", "Describe"], &["--topic", &ops]);
    broker.allow(
        "producer1",
        &["Read"],
        &[
            "--group",
            "fschain-publish-host1",
            "--group",
            "fschain-agent-host1",
        ],
    );
    broker.allow(
        "site1",
        &["Read", "Describe"],
        &["--topic", &blocks, "--topic", &events],
    );
    broker.allow(
        "site1",
        &["Read"],
        &[
            "--group",
            "fschain-site-east",
            "--group",
            "fschain-site-fresh",
            "--group",
            "fschain-site-fresh-scan",
        ],
    );

    let ca = broker.ca();
    let admin = config(&s.dir, "admin", "admin-secret", &ca);
    let producer_config = config(&s.dir, "producer1", "p-secret", &ca);
    let site_config = config(&s.dir, "site1", "s-secret", &ca);
    let kafka = |config: &str, args: &[&str]| {
        let mut v = vec!["--config".to_owned(), config.to_owned()];
        v.extend(common::with_topics(args, &brokers, &prefix));
        v
    };
    let run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fschain_within(&args, Duration::from_secs(60))
    };
    run(kafka(&admin, &["topics", "create"])).ok();

    let (producer, key) = common::producer_root(&s.dir);
    common::fschain_with_input(
        &["apply", "--root", &producer, "--block-ops", "10"],
        Some(sample_ops(30).as_bytes()),
    )
    .ok();
    run(kafka(&producer_config, &["publish", "--root", &producer])).ok();
    let east = s.dir.join("east").display().to_string();
    run(kafka(
        &site_config,
        &[
            "consume",
            "--site",
            "east",
            "--root",
            &east,
            "--trust",
            &key,
            "--until-idle",
            "--no-index",
        ],
    ))
    .ok();
    assert_eq!(
        block_hashes(&format!("{east}/host1")),
        block_hashes(&producer)
    );
    // The agent through the ops topic, and replay into a fresh site.
    let submitted = {
        let args = kafka(&producer_config, &["submit", "--chain", "host1", "-"]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let ops_text = common::sample_ops_between(30, 40);
        common::fschain_with_input(&args, Some(ops_text.as_bytes()))
    };
    assert!(
        !submitted.output.status.success(),
        "producer1 has no Write on the ops topic, yet submit succeeded"
    );
    assert!(
        submitted.stderr().contains("not authorized")
            || submitted.stderr().contains("uthorization"),
        "{}",
        submitted.stderr()
    );
    {
        let args = kafka(&admin, &["submit", "--chain", "host1", "-"]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        common::fschain_with_input(&args, Some(common::sample_ops_between(30, 40).as_bytes())).ok();
    }
    let agent = run(kafka(
        &producer_config,
        &[
            "agent",
            "--root",
            &producer,
            "--block-ops",
            "10",
            "--until-idle",
        ],
    ))
    .ok();
    assert!(
        agent.stderr().contains("applied 10 operations"),
        "{}",
        agent.stderr()
    );
    let fresh = s.dir.join("fresh").display().to_string();
    run(kafka(
        &site_config,
        &[
            "replay", "--site", "fresh", "--root", &fresh, "--trust", &key,
        ],
    ))
    .ok();
    assert_eq!(
        block_hashes(&format!("{fresh}/host1")),
        block_hashes(&producer)
    );

    // Each refusal: a clear error naming its cause, within seconds.
    let refused = |config: String, args: &[&str], says: &[&str]| {
        let started = std::time::Instant::now();
        let out = run(kafka(&config, args));
        assert_eq!(out.code(), 2, "{}", out.stderr());
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "took {:?}",
            started.elapsed()
        );
        for text in says {
            assert!(
                out.stderr().contains(text),
                "no {text:?} in: {}",
                out.stderr()
            );
        }
    };
    let wrong_password = config(&s.dir, "producer1", "wrong", &ca);
    refused(
        wrong_password,
        &["publish", "--root", &producer],
        &["SASL authentication", "sasl.password"],
    );
    let other_ca = s.dir.join("other-ca.pem");
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=other",
        ])
        .arg("-keyout")
        .arg(s.dir.join("other-ca.key"))
        .arg("-out")
        .arg(&other_ca)
        .output()
        .unwrap();
    assert!(status.status.success());
    let north = s.dir.join("north").display().to_string();
    let consume_north = [
        "consume",
        "--site",
        "east",
        "--root",
        &north,
        "--trust",
        &key,
        "--until-idle",
        "--no-index",
    ];
    let untrusted = config(&s.dir, "site1", "s-secret", &other_ca);
    refused(
        untrusted,
        &consume_north,
        &["certificate verify failed", "ssl.ca.location"],
    );
    let nobody = config(&s.dir, "nobody", "n-secret", &ca);
    refused(nobody, &consume_north, &["not authorized", "ACL"]);
    assert!(!Path::new(&north).join("host1/blocks/0000000000").exists());
}
