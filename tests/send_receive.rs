//! The btrfs send/receive adapter against real btrfs: a stream received
//! under a staging name, renamed into place, and an incremental stream that
//! finds its parent by received UUID.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fschain_store::layout::{incoming_name, RootLayout, EVENTS_LOG};
use fschain_store::{btrfs, send_stream, verify_received, ChainDir, EarlyLogCheck, VerifiedLogs};

/// `dir/src` holding an empty subvolume `layer`, and `dir/dst` to receive
/// into: (src, dst, layer).
fn sender_and_receiver(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (src, dst) = (dir.join("src"), dir.join("dst"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    let layer = src.join("layer");
    btrfs::create_subvolume(&layer).unwrap();
    (src, dst, layer)
}

/// The whole `btrfs send` stream of `snapshot` (against `parent`).
fn sent(snapshot: &Path, parent: Option<&Path>) -> Vec<u8> {
    btrfs::send(snapshot, parent, |r| {
        let mut v = Vec::new();
        r.read_to_end(&mut v).map(|_| v)
    })
    .unwrap()
}

#[test]
fn full_and_incremental_streams_land_under_the_staging_name() {
    let Some(s) = common::scratch("send-receive") else {
        return;
    };
    let (src, dst, layer) = sender_and_receiver(&s.dir);
    std::fs::write(layer.join("a"), b"one").unwrap();
    btrfs::snapshot(&layer, &src.join("0000000000"), true).unwrap();
    std::fs::write(layer.join("a"), b"two").unwrap();
    std::fs::write(layer.join("b"), b"new").unwrap();
    btrfs::snapshot(&layer, &src.join("0000000001"), true).unwrap();

    // Full stream of block 0: the stream names it 0000000000.
    let full = sent(&src.join("0000000000"), None);
    let end = send_stream::first_command_end(&full[..27]).unwrap();
    assert_eq!(
        send_stream::subvolume_name(&full[..end]).unwrap(),
        ("0000000000".into(), false)
    );
    btrfs::receive(&dst, ".incoming-0000000000", &mut &full[..]).unwrap();
    let staged = dst.join(".incoming-0000000000");
    assert!(btrfs::is_readonly(&staged).unwrap());
    // The ioctl reads what `btrfs subvolume show` prints: the UUID of the
    // subvolume sent.
    let shown = std::process::Command::new("btrfs")
        .args(["subvolume", "show"])
        .arg(src.join("0000000000"))
        .output()
        .unwrap();
    let sent_uuid = String::from_utf8_lossy(&shown.stdout)
        .lines()
        .find_map(|l| Some(l.trim().strip_prefix("UUID:")?.trim().to_owned()))
        .unwrap();
    assert_eq!(btrfs::received_uuid(&staged).unwrap(), Some(sent_uuid));
    assert_eq!(std::fs::read(staged.join("a")).unwrap(), b"one");
    std::fs::rename(&staged, dst.join("0000000000")).unwrap();
    assert!(btrfs::received_uuid(&dst.join("0000000000"))
        .unwrap()
        .is_some());

    // Incremental stream of block 1 against 0 finds the renamed parent.
    let incr = sent(&src.join("0000000001"), Some(&src.join("0000000000")));
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

/// Each time a block is streamed (a producer that stopped before the
/// broker acknowledged it streams it again) is a new attempt: its manifest
/// comes first, then its chunks, each signed under that manifest, in order,
/// the last marked; and, decompressed, they are the block's `btrfs send`
/// stream, byte for byte.
#[test]
fn each_stream_of_a_block_is_a_new_attempt_of_signed_chunks() {
    use fschain_producer::outbox::{snapshot_header, stream_block, StreamPolicy};
    use fschain_schema::wire::{decode_frame, Frame};
    use fschain_store::layout::RootLayout;

    let Some(s) = common::scratch("stream-attempts") else {
        return;
    };
    let root = common::root_with_sample(&s, 300, 100);
    let layout = RootLayout::new(&root);
    let key = fschain_producer::load_signing_key(&layout).unwrap();
    let policy = StreamPolicy {
        chunk_size: 4096,
        ..StreamPolicy::default()
    };
    let stream = || {
        let header = snapshot_header(&layout, 2).unwrap();
        let frames = std::sync::Mutex::new(Vec::new());
        let sink = |f: &[u8]| {
            frames.lock().unwrap().push(f.to_vec());
            Ok(())
        };
        let block = stream_block(&layout, header, Some(1), &policy, &key, &sink).unwrap();
        let frames = frames.into_inner().unwrap();
        let Ok(Frame::Manifest(manifest)) = decode_frame(&frames[0]) else {
            panic!("the first frame is not the manifest")
        };
        assert_eq!(manifest, block.manifest);
        let mut carried = Vec::new();
        for (i, f) in frames[1..].iter().enumerate() {
            let Ok(Frame::Chunk(c)) = decode_frame(f) else {
                panic!("frame {} is not a chunk", i + 1)
            };
            c.authenticate(&manifest).unwrap();
            assert_eq!(c.meta.index as usize, i);
            assert_eq!(c.meta.last, i + 2 == frames.len());
            carried.extend(c.data);
        }
        assert_eq!(block.bytes, carried.len() as u64);
        assert_eq!(block.chunks as usize, frames.len() - 1);
        assert!(block.chunks > 2, "a stream of {} chunks", block.chunks);
        (manifest, zstd::decode_all(carried.as_slice()).unwrap())
    };
    let (first, sent) = stream();
    let mut plain = Vec::new();
    btrfs::send(&layout.snapshot(2), Some(&layout.snapshot(1)), |r| {
        std::io::copy(r, &mut plain).map(drop)
    })
    .unwrap();
    assert!(sent == plain, "the chunks are not the block's send stream");
    let (again, sent_again) = stream();
    assert_ne!(again.stream.attempt, first.stream.attempt);
    assert_eq!(again.header, first.header);
    assert!(sent_again == plain);
}

#[test]
fn a_compressed_layer_travels_compressed_and_lands_compressed() {
    let Some(s) = common::scratch("send-compressed") else {
        return;
    };
    let (src, dst, layer) = sender_and_receiver(&s.dir);
    btrfs::set_compression(&layer, btrfs::STATES_COMPRESSION).unwrap();
    // 8 MB of state-like JSON lines: compressible, but not one repeated byte.
    let data: String = (0..100_000)
        .map(|i| {
            format!(
                "{{\"element\":\"iface:eth{i}\",\"mtu\":{},\"up\":true}}\n",
                1500 + i % 7
            )
        })
        .collect::<String>()
        .repeat(2);
    std::fs::write(layer.join("states"), &data).unwrap();
    btrfs::snapshot(&layer, &src.join("0000000000"), true).unwrap();
    let stream = sent(&src.join("0000000000"), None);
    if std::env::var_os("CI").is_some() {
        assert!(
            !btrfs::send_options().is_empty(),
            "CI's kernel sends compressed extents (send stream version 2)"
        );
    }
    if !btrfs::send_options().is_empty() {
        // The extents travel as the kernel compressed them.
        assert!(
            stream.len() < data.len() / 4,
            "a {} byte stream for {} bytes of compressible data",
            stream.len(),
            data.len()
        );
    }
    btrfs::receive(&dst, "0000000000", &mut &stream[..]).unwrap();
    let received = dst.join("0000000000");
    assert_eq!(
        std::fs::read_to_string(received.join("states")).unwrap(),
        data
    );
    assert_eq!(
        btrfs::compression(&received).unwrap().as_deref(),
        Some(btrfs::STATES_COMPRESSION)
    );
}

/// A site checks a received block's logs while `btrfs receive` still writes
/// its state files, from where its previous block's replay ended; the
/// replay is handed back when there is nothing to check yet, and a log that
/// changes after its early check is caught.
#[test]
fn a_received_blocks_logs_are_checked_while_its_states_arrive() {
    let Some(s) = common::scratch("early-logs") else {
        return;
    };
    let root = common::root_with_sample(&s, 30, 10);
    let producer = RootLayout::new(&root);
    let headers = ChainDir::new(producer.snapshot(3)).headers().unwrap();
    let site = RootLayout::new(s.dir.join("site"));
    std::fs::create_dir_all(site.blocks_dir()).unwrap();
    let receive = |height: u64, name: &str| {
        let parent = height.checked_sub(1).map(|p| producer.snapshot(p));
        let stream = sent(&producer.snapshot(height), parent.as_deref());
        btrfs::receive(&site.blocks_dir(), name, &mut stream.as_slice()).unwrap();
    };
    let name_of = |path: PathBuf| path.file_name().unwrap().to_str().unwrap().to_owned();
    let start = |height: u64, replay: VerifiedLogs, receiving: Box<dyn Fn() -> bool + Send>| {
        let (copy, header) = (
            ChainDir::new(site.incoming(height)),
            headers[height as usize].clone(),
        );
        EarlyLogCheck::start(site.clone(), copy, header, replay, receiving).unwrap()
    };
    receive(0, &name_of(site.snapshot(0)));
    let mut verified = None;
    let problems = verify_received(
        &site,
        &ChainDir::new(site.snapshot(0)),
        &headers[0],
        &mut verified,
        None,
    )
    .unwrap();
    assert!(problems.is_empty(), "{problems:?}");

    // Nothing received yet and the receive over: the replay comes back.
    let early = start(1, verified.take().unwrap(), Box::new(|| false));
    let replay = early.abandon().expect("the replay is handed back");
    assert_eq!(replay.height(), 0);

    // Started before the receive: it waits for the logs, checks them, and
    // the verification takes its outcome.
    let receiving = Arc::new(AtomicBool::new(true));
    let still = Arc::clone(&receiving);
    let early = start(1, replay, Box::new(move || still.load(Ordering::SeqCst)));
    receive(1, &incoming_name(1));
    receiving.store(false, Ordering::SeqCst);
    let problems = verify_received(
        &site,
        &ChainDir::new(site.incoming(1)),
        &headers[1],
        &mut verified,
        Some(early),
    )
    .unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(verified.as_ref().map(VerifiedLogs::height), Some(1));
    std::fs::rename(site.incoming(1), site.snapshot(1)).unwrap();

    // A log that grows after its early check is caught.
    receive(2, &incoming_name(2));
    let early = start(2, verified.take().unwrap(), Box::new(|| false));
    common::wait_for(
        "the early log check",
        std::time::Duration::from_secs(30),
        || early.is_finished(),
    );
    btrfs::set_readonly(&site.incoming(2), false).unwrap();
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(site.incoming(2).join(EVENTS_LOG))
        .unwrap();
    std::io::Write::write_all(&mut log, b"{}\n").unwrap();
    let problems = verify_received(
        &site,
        &ChainDir::new(site.incoming(2)),
        &headers[2],
        &mut verified,
        Some(early),
    )
    .unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.to_string().contains("changed after they were checked")),
        "{problems:?}"
    );
    assert!(verified.is_none());
}
