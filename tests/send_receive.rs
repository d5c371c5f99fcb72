//! The btrfs send/receive adapter against real btrfs: a stream received
//! under a staging name, renamed into place, and an incremental stream that
//! finds its parent by received UUID.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use fschain_store::{btrfs, send_stream};

#[test]
fn full_and_incremental_streams_land_under_the_staging_name() {
    let Some(s) = common::scratch("send-receive") else {
        return;
    };
    let src = s.dir.join("src");
    let dst = s.dir.join("dst");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    let layer = src.join("layer");
    btrfs::create_subvolume(&layer).unwrap();
    std::fs::write(layer.join("a"), b"one").unwrap();
    btrfs::snapshot(&layer, &src.join("0000000000"), true).unwrap();
    std::fs::write(layer.join("a"), b"two").unwrap();
    std::fs::write(layer.join("b"), b"new").unwrap();
    btrfs::snapshot(&layer, &src.join("0000000001"), true).unwrap();

    // Full stream of block 0: the stream names it 0000000000.
    let full = btrfs::send(&src.join("0000000000"), None, |r| {
        let mut v = Vec::new();
        r.read_to_end(&mut v).map(|_| v)
    })
    .unwrap();
    let end = send_stream::first_command_end(&full[..27]).unwrap();
    assert_eq!(
        send_stream::subvolume_name(&full[..end]).unwrap(),
        ("0000000000".into(), false)
    );
    btrfs::receive(&dst, ".incoming-0000000000", &mut &full[..]).unwrap();
    let staged = dst.join(".incoming-0000000000");
    assert!(btrfs::is_readonly(&staged).unwrap());
    assert!(btrfs::received_uuid(&staged).unwrap().is_some());
    assert_eq!(std::fs::read(staged.join("a")).unwrap(), b"one");
    std::fs::rename(&staged, dst.join("0000000000")).unwrap();
    assert!(btrfs::received_uuid(&dst.join("0000000000"))
        .unwrap()
        .is_some());

    // Incremental stream of block 1 against 0 finds the renamed parent.
    let incr = btrfs::send(
        &src.join("0000000001"),
        Some(&src.join("0000000000")),
        |r| {
            let mut v = Vec::new();
            r.read_to_end(&mut v).map(|_| v)
        },
    )
    .unwrap();
    let end = send_stream::first_command_end(&incr[..27]).unwrap();
    assert_eq!(
        send_stream::subvolume_name(&incr[..end]).unwrap(),
        ("0000000001".into(), true)
    );
    btrfs::receive(&dst, ".incoming-0000000001", &mut &incr[..]).unwrap();
    std::fs::rename(dst.join(".incoming-0000000001"), dst.join("0000000001")).unwrap();
    assert_eq!(std::fs::read(dst.join("0000000001/a")).unwrap(), b"two");
    assert_eq!(std::fs::read(dst.join("0000000001/b")).unwrap(), b"new");

    // A local subvolume is not a received one.
    assert_eq!(btrfs::received_uuid(&layer).unwrap(), None);
    // Garbage is refused before btrfs receive runs.
    assert!(btrfs::receive(&dst, "x", &mut &b"definitely not a stream, no"[..]).is_err());
}
