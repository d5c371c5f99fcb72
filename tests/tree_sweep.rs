//! Reading a subvolume's files from its btrfs tree gives what reading them
//! through the file system gives, on a real btrfs.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{root_with_sample, scratch};
use fschain_store::btrfs;
use fschain_store::btrfs_tree::{sweep, EntryKind, FileData};
use fschain_store::ChainDir;

/// The tree search needs CAP_SYS_ADMIN: under CI (as root) it must work.
fn swept(dir: &Path) -> Option<BTreeMap<PathBuf, EntryKind<Vec<u8>>>> {
    let open = std::fs::File::open(dir).unwrap();
    match sweep(&open, <[u8]>::to_vec) {
        Ok(entries) => Some(entries.into_iter().map(|e| (e.path, e.kind)).collect()),
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED: btrfs tree search unavailable ({e}); run as root");
            None
        }
        Err(e) => panic!("btrfs tree search failed under CI: {e}"),
    }
}

#[test]
fn sweep_lists_every_name_and_the_bytes_of_small_files() {
    let Some(s) = scratch("sweep") else { return };
    let sub = s.dir.join("sub");
    btrfs::create_subvolume(&sub).unwrap();
    let small = br#"{"mtu":9000,"up":true}"#.to_vec();
    let over_inline = vec![b'x'; 3000];
    let big = vec![b'y'; 100_000];
    std::fs::create_dir_all(sub.join("d/e")).unwrap();
    std::fs::write(sub.join("empty"), b"").unwrap();
    std::fs::write(sub.join("d/small"), &small).unwrap();
    std::fs::write(sub.join("d/e/over-inline"), &over_inline).unwrap();
    std::fs::write(sub.join("d/big"), &big).unwrap();
    std::fs::hard_link(sub.join("d/small"), sub.join("d/e/linked")).unwrap();
    std::os::unix::fs::symlink("d/small", sub.join("link")).unwrap();
    btrfs::create_subvolume(&sub.join("nested")).unwrap();
    std::fs::write(sub.join("nested/hidden"), b"other tree").unwrap();
    btrfs::create_subvolume(&sub.join("d/e/inner")).unwrap();
    // A directory whose entries fill several search buffers, and files
    // made after it, so its inode sits among theirs.
    std::fs::create_dir(sub.join("many")).unwrap();
    let many: Vec<String> = (0..1500).map(|i| format!("many/file-{i:04}")).collect();
    for name in &many {
        std::fs::write(sub.join(name), name.as_bytes()).unwrap();
    }
    // A file rewritten shorter: the tree must hold the new bytes only.
    std::fs::write(sub.join("d/shrunk"), vec![b'z'; 1500]).unwrap();
    btrfs::sync_filesystem(&sub).unwrap();
    std::fs::write(sub.join("d/shrunk"), b"short").unwrap();
    btrfs::sync_filesystem(&sub).unwrap();

    let Some(found) = swept(&sub) else { return };
    let file = |bytes: &[u8]| EntryKind::File {
        size: bytes.len() as u64,
        data: FileData::Summary(bytes.to_vec()),
    };
    let on_disk = |size: usize| EntryKind::File {
        size: size as u64,
        data: FileData::OnDisk,
    };
    let expected: BTreeMap<PathBuf, EntryKind<Vec<u8>>> = [
        ("empty", file(b"")),
        ("d", EntryKind::Dir),
        ("d/e", EntryKind::Dir),
        ("d/small", file(&small)),
        ("d/e/linked", file(&small)),
        ("d/e/over-inline", on_disk(3000)),
        ("d/big", on_disk(100_000)),
        ("d/shrunk", file(b"short")),
        ("link", EntryKind::Other),
        ("nested", EntryKind::Subvolume),
        ("d/e/inner", EntryKind::Subvolume),
        ("many", EntryKind::Dir),
    ]
    .into_iter()
    .map(|(p, k)| (PathBuf::from(p), k))
    .chain(
        many.iter()
            .map(|name| (PathBuf::from(name), file(name.as_bytes()))),
    )
    .collect();
    assert_eq!(found, expected);
}

#[test]
fn zstd_compressed_inline_files_are_inflated_from_the_tree() {
    let Some(s) = scratch("sweep-zstd") else {
        return;
    };
    let sub = s.dir.join("sub");
    btrfs::create_subvolume(&sub).unwrap();
    btrfs::set_compression(&sub, btrfs::STATES_COMPRESSION).unwrap();
    // Too big to sit inline as it is (max_inline is 2048), small enough
    // compressed: only a compressed inline extent holds it in the tree.
    let compressible = br#"{"mtu":9000,"up":true}"#.repeat(150);
    let state: Vec<u8> = (0..1800u32)
        .map(|i| b"0123456789abcdef"[(i.wrapping_mul(2_654_435_761) >> 28) as usize])
        .collect();
    std::fs::write(sub.join("compressible"), &compressible).unwrap();
    std::fs::write(sub.join("state"), &state).unwrap();
    std::fs::write(sub.join("big"), compressible.repeat(100)).unwrap();
    btrfs::sync_filesystem(&sub).unwrap();
    let Some(found) = swept(&sub) else { return };
    let file = |bytes: &[u8]| EntryKind::File {
        size: bytes.len() as u64,
        data: FileData::Summary(bytes.to_vec()),
    };
    assert_eq!(found[Path::new("compressible")], file(&compressible));
    assert_eq!(found[Path::new("state")], file(&state));
    assert_eq!(
        found[Path::new("big")],
        EntryKind::File {
            size: compressible.len() as u64 * 100,
            data: FileData::OnDisk
        }
    );
}

#[test]
fn state_hashes_from_the_tree_match_reading_every_file() {
    let Some(s) = scratch("sweep-chain") else {
        return;
    };
    let root = root_with_sample(&s, 300, 40);
    btrfs::sync_filesystem(Path::new(&root)).unwrap();
    if swept(&s.root().join("layer")).is_none() {
        return;
    }
    for copy in ["layer", "blocks/0000000003", "blocks/0000000008"] {
        let dir = ChainDir::new(s.root().join(copy));
        let (files, tree) = (dir.state_hashes(copy), dir.state_hashes_from_tree(copy));
        let sorted = |mut v: Vec<_>| {
            v.sort();
            v
        };
        assert!(!files.states.is_empty(), "{copy} holds no states");
        assert_eq!(sorted(files.states), sorted(tree.states), "{copy}");
        assert_eq!(files.bytes, tree.bytes, "{copy}");
        assert!(files.problems.is_empty() && tree.problems.is_empty());
    }
}

/// `dir/layer` (stored compressed when `compression` names an algorithm)
/// with a `log` of `line`, snapshotted writable as `dir/snap`, then 300,000
/// more bytes of it appended to the layer's copy. Returns (layer, snap).
fn appended_copy(dir: &Path, compression: Option<&str>, line: &[u8]) -> (PathBuf, PathBuf) {
    use std::io::Write as _;
    let (layer, snap) = (dir.join("layer"), dir.join("snap"));
    btrfs::create_subvolume(&layer).unwrap();
    if let Some(algorithm) = compression {
        btrfs::set_compression(&layer, algorithm).unwrap();
    }
    std::fs::write(layer.join("log"), line).unwrap();
    btrfs::snapshot(&layer, &snap, false).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(layer.join("log"))
        .unwrap()
        .write_all(&line[..300_000])
        .unwrap();
    (layer, snap)
}

/// Changes one byte in place in `copy`'s log.
fn change_byte_in_place(copy: &Path, at: u64) {
    use std::os::unix::fs::FileExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .open(copy.join("log"))
        .unwrap()
        .write_all_at(b"Z", at)
        .unwrap();
}

#[test]
fn an_appended_copy_shares_its_prefix_until_either_is_written() {
    use fschain_store::extents::{extents, unshared_ranges};
    let Some(s) = scratch("extents") else { return };
    let line: Vec<u8> = (0..1_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let (layer, snap) = appended_copy(&s.dir, None, &line);
    let len = line.len() as u64;
    let unshared = |len: u64| {
        let a = std::fs::File::open(snap.join("log")).unwrap();
        let b = std::fs::File::open(layer.join("log")).unwrap();
        unshared_ranges(&extents(&a, len).unwrap(), &extents(&b, len).unwrap(), len)
    };
    // Only the last, partly filled block was written again.
    let read: u64 = unshared(len).iter().map(|r| r.end - r.start).sum();
    assert!(read <= 4096, "{:?} of the prefix to read", unshared(len));
    // One byte changed in place in the older copy: its block is read.
    change_byte_in_place(&snap, 123_456);
    let now = unshared(len);
    assert!(
        now.iter().any(|r| r.contains(&123_456)),
        "the changed byte is not read: {now:?}"
    );
}

#[test]
fn compressed_copies_share_their_prefix_by_their_file_extent_items() {
    use fschain_store::btrfs_tree::file_extents;
    use fschain_store::extents::{extents, unshared_ranges};
    let Some(s) = scratch("extents-zstd") else {
        return;
    };
    let line: Vec<u8> = (0..1_000_000u32)
        .map(|i| b"{\"element\":\"iface:eth0\",\"mtu\":9000}\n"[(i % 36) as usize])
        .collect();
    let (layer, snap) = appended_copy(&s.dir, Some(btrfs::STATES_COMPRESSION), &line);
    let len = line.len() as u64;
    let open = |p: &Path| std::fs::File::open(p.join("log")).unwrap();
    let Ok(older) = file_extents(&open(&snap), len) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "tree search failed under CI"
        );
        return;
    };
    assert!(
        older.iter().any(|e| e.space != 0 && e.exact),
        "stored compressed: {older:?}"
    );
    let unshared = || {
        let newer = file_extents(&open(&layer), len).unwrap();
        unshared_ranges(&file_extents(&open(&snap), len).unwrap(), &newer, len)
    };
    // Only the last, partly filled block was written again.
    let read: u64 = unshared().iter().map(|r| r.end - r.start).sum();
    assert!(read <= 4096, "{:?} of the prefix to read", unshared());
    // FIEMAP cannot say so: a compressed extent's address is not its bytes'.
    let fiemap = unshared_ranges(
        &extents(&open(&snap), len).unwrap(),
        &extents(&open(&layer), len).unwrap(),
        len,
    );
    assert_eq!(fiemap, vec![0..len]);
    // One byte changed in place in the older copy: its range is read.
    change_byte_in_place(&snap, 123_456);
    let now = unshared();
    assert!(
        now.iter().any(|r| r.contains(&123_456)),
        "the changed byte is not read: {now:?}"
    );
}
