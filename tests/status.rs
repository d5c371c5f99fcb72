//! `fschain status` on a producer's root and on a site's, read from the
//! roots alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{fschain, fschain_with_input, producer_root, scratch};

#[test]
fn a_producer_shows_its_pending_blocks_and_a_site_its_chains() {
    let Some(s) = scratch("status") else {
        return;
    };
    let (producer, key) = producer_root(&s.dir);
    fschain(&["set", "--root", &producer, "iface:eth0", "mtu=9000"]).ok();
    fschain(&["set", "--root", &producer, "iface:eth0", "mtu=1500"]).ok();
    let status = fschain(&["status", "--root", &producer, "--json"])
        .ok()
        .json();
    let chain = &status["chains"][0];
    assert_eq!(chain["chain"], "host1");
    assert_eq!(chain["role"], "producer");
    assert_eq!(chain["head"], 2);
    assert_eq!(
        chain["pending_blocks"], 3,
        "nothing published: blocks 0..=2"
    );
    assert!(chain["seconds_since_seal"].as_i64().unwrap() < 60);
    assert_eq!(
        chain["key"].as_str().unwrap(),
        std::fs::read_to_string(&key).unwrap().trim()
    );
    let text = fschain(&["status", "--root", &producer]).ok().stdout();
    assert!(
        text.contains("host1 (producer)") && text.contains("3 pending"),
        "{text}"
    );

    // A site made by export | import holds the chain; its status lists it.
    let export = fschain(&["export", "--root", &producer]).ok();
    let site = s.dir.join("site").display().to_string();
    fschain_with_input(
        &[
            "import", "--site", "b", "--root", &site, "--trust", &key, "-",
        ],
        Some(&export.output.stdout),
    )
    .ok();
    let status = fschain(&["status", "--root", &site, "--json"]).ok().json();
    assert_eq!(status["chains"][0]["role"], "site");
    assert_eq!(status["chains"][0]["head"], 2);
    assert!(status["chains"][0]["pending_blocks"].is_null());

    let nothing = s.dir.join("empty");
    std::fs::create_dir_all(&nothing).unwrap();
    let refused = fschain(&["status", "--root", &nothing.display().to_string()]).code_is(2);
    assert!(refused
        .stderr()
        .contains("neither a chain's root nor a site"));
}
