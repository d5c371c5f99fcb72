//! A subvolume's files read straight from its btrfs tree.
//!
//! `verify` hashes every state file of every copy of a chain: tens of
//! thousands of small files per snapshot. Opened one by one, each costs an
//! `openat`, a `read` and a `close`, and the kernel's path walk, file
//! allocation and atime update behind them: about 20 µs a file, where
//! hashing its hundred bytes takes well under one. btrfs keeps a small
//! file's bytes *inline*, in the same tree leaf as its inode, so one
//! `BTRFS_IOC_TREE_SEARCH_V2` call returns thousands of files' names,
//! inodes and contents at once.
//!
//! Names come from each inode's own references (`INODE_REF`,
//! `INODE_EXTREF`), so the sweep skips directory entries (two items per
//! name, two fifths of a state directory's items) and finds nested
//! subvolumes, which have no inode in this tree, from the root tree's
//! `ROOT_REF` items.
//!
//! The sweep reads the subvolume's current tree: data still in the page
//! cache is not in it yet, so callers flush first (`syncfs`). Only
//! unencrypted inline data, uncompressed or zstd-compressed (inflated here,
//! as the kernel would on a read), whose length is the inode's size is
//! taken from the tree; any other file is [`FileData::OnDisk`], for the
//! caller to read through the file system as before. The search needs
//! `CAP_SYS_ADMIN`; without it (or off btrfs) [`sweep`] fails and callers
//! fall back to reading files one by one.

#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;

/// `_IOWR(0x94, 17, struct btrfs_ioctl_search_args_v2)`.
const IOC_TREE_SEARCH_V2: libc::c_ulong = 0xc070_9411;
/// `_IOWR(0x94, 18, struct btrfs_ioctl_ino_lookup_args)`.
const IOC_INO_LOOKUP: libc::c_ulong = 0xd000_9412;
/// The subvolume's root directory; smaller object ids are not inodes.
const ROOT_DIR: u64 = 256;
const INODE_ITEM: u32 = 1;
const INODE_REF: u32 = 12;
const INODE_EXTREF: u32 = 13;
const DIR_ITEM: u32 = 84;
const DIR_INDEX: u32 = 96;
const EXTENT_DATA: u32 = 108;
const FILE_EXTENT_REG: u8 = 1;
const COMPRESS_NONE: u8 = 0;
const COMPRESS_ZSTD: u8 = 3;
const ROOT_REF: u32 = 156;
const ROOT_TREE: u64 = 1;
const FILE_EXTENT_INLINE: u8 = 0;
/// Result buffer per call: a few hundred small files. Small enough that
/// the directory entries copied before the sweep skips them cost little.
const BUF_BYTES: usize = 64 << 10;
/// Deeper than any path a chain holds; a longer parent chain is a loop.
const MAX_DEPTH: usize = 4096;

/// `struct btrfs_ioctl_search_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct SearchKey {
    tree_id: u64,
    min_objectid: u64,
    max_objectid: u64,
    min_offset: u64,
    max_offset: u64,
    min_transid: u64,
    max_transid: u64,
    min_type: u32,
    max_type: u32,
    nr_items: u32,
    unused: u32,
    unused1: u64,
    unused2: u64,
    unused3: u64,
    unused4: u64,
}

/// The fixed start of `struct btrfs_ioctl_search_args_v2`; the results
/// follow it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct SearchHead {
    key: SearchKey,
    buf_size: u64,
}

/// What the tree says of a regular file's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileData<T> {
    /// Its whole content was in the tree: what `summarize` made of it.
    Summary(T),
    /// Its bytes are elsewhere on disk (or compressed): read the file.
    OnDisk,
}

/// One name in the subvolume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind<T> {
    Dir,
    File {
        size: u64,
        data: FileData<T>,
    },
    /// A symlink, device, fifo or socket.
    Other,
    /// A nested subvolume (its files are in another tree).
    Subvolume,
}

/// A name in the subvolume, its path relative to the subvolume's root.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry<T> {
    pub path: PathBuf,
    pub kind: EntryKind<T>,
}

/// The bytes of a file extent item (`body`) when it is inline and either
/// plain or zstd-compressed (as `btrfs.compression=zstd` stores a small
/// file), unencrypted: plain bytes as they are, compressed ones inflated
/// into `inflated` and required to come to exactly the `ram_bytes` the item
/// records. `None` for anything else, which the caller reads through the
/// file system instead.
fn inline_bytes<'a>(body: &'a [u8], inflated: &'a mut Inflater) -> Option<&'a [u8]> {
    let ram_bytes = le_u64(body, 8)?;
    // compression, encryption, other encoding (u16), type.
    match body.get(16..21)? {
        [COMPRESS_NONE, 0, 0, 0, FILE_EXTENT_INLINE] => Some(&body[21..]),
        [COMPRESS_ZSTD, 0, 0, 0, FILE_EXTENT_INLINE] => inflated.zstd(&body[21..], ram_bytes),
        _ => None,
    }
}

/// Inflates inline extents, reusing one zstd context and buffer.
#[derive(Default)]
struct Inflater {
    context: Option<zstd::bulk::Decompressor<'static>>,
    out: Vec<u8>,
}

impl Inflater {
    /// An inline extent is smaller than a page; a bigger `ram_bytes` is not
    /// one btrfs wrote.
    const MAX_INLINE: u64 = 64 << 10;

    fn zstd(&mut self, compressed: &[u8], ram_bytes: u64) -> Option<&[u8]> {
        if ram_bytes > Self::MAX_INLINE {
            return None;
        }
        if self.context.is_none() {
            self.context = zstd::bulk::Decompressor::new().ok();
        }
        let context = self.context.as_mut()?;
        self.out.clear();
        self.out.reserve(ram_bytes as usize);
        let n = context
            .decompress_to_buffer(compressed, &mut self.out)
            .ok()?;
        (n as u64 == ram_bytes).then_some(&self.out[..])
    }
}

/// One inode as its items arrive (in key order: inode item, references,
/// directory entries, extents).
#[derive(Debug)]
struct InodeItems<T> {
    ino: u64,
    mode: u32,
    size: u64,
    names: Vec<(u64, Vec<u8>)>,
    /// A regular file's one inline extent at offset 0, when that is all
    /// it holds: its length and what `summarize` made of it.
    inline: Option<(u64, T)>,
    /// Any extent that rules the tree's copy out.
    other_extents: bool,
}

impl<T> InodeItems<T> {
    fn new(ino: u64) -> Self {
        InodeItems {
            ino,
            mode: 0,
            size: 0,
            names: Vec::new(),
            inline: None,
            other_extents: false,
        }
    }
}

/// Every name in the subvolume open as `dir` (its root directory), with
/// `summarize` applied to each regular file's content where the tree holds
/// all of it. Fails (and callers fall back to reading files) without
/// `CAP_SYS_ADMIN`, off btrfs, or when `dir` is not a subvolume's root.
pub fn sweep<T: Clone>(
    dir: &File,
    mut summarize: impl FnMut(&[u8]) -> T,
) -> std::io::Result<Vec<Entry<T>>> {
    let mut dirs: HashMap<u64, (u64, Vec<u8>)> = HashMap::new();
    let mut leaves: Vec<(u64, Vec<u8>, EntryKind<T>)> = Vec::new();
    let empty = summarize(&[]);
    let mut inflated = Inflater::default();
    let mut current = InodeItems::new(0);
    let mut finish = |inode: InodeItems<T>| {
        let kind = match inode.mode & libc::S_IFMT {
            libc::S_IFDIR => {
                if inode.ino != ROOT_DIR {
                    for (parent, name) in inode.names {
                        dirs.insert(inode.ino, (parent, name));
                    }
                }
                return;
            }
            libc::S_IFREG => {
                let data = match (inode.inline, inode.other_extents) {
                    (Some((len, summary)), false) if len == inode.size => {
                        FileData::Summary(summary)
                    }
                    (None, false) if inode.size == 0 => FileData::Summary(empty.clone()),
                    _ => FileData::OnDisk,
                };
                EntryKind::File {
                    size: inode.size,
                    data,
                }
            }
            _ => EntryKind::Other,
        };
        // A file with several names (hard links) is listed under each.
        for (parent, name) in inode.names {
            leaves.push((parent, name, kind.clone()));
        }
    };

    let mut words = search_buffer();
    search(
        dir,
        0,
        (ROOT_DIR, 0, 0),
        (u64::MAX, u32::from(u8::MAX), u64::MAX),
        &mut words,
        |item, body| {
            if item.objectid != current.ino {
                finish(std::mem::replace(
                    &mut current,
                    InodeItems::new(item.objectid),
                ));
            }
            match item.kind {
                INODE_ITEM => {
                    current.size = le_u64(body, 16).ok_or_else(malformed)?;
                    current.mode = le_u32(body, 52).ok_or_else(malformed)?;
                }
                INODE_REF => {
                    parse_refs(body, Some(item.offset), &mut current.names).ok_or_else(malformed)?
                }
                INODE_EXTREF => parse_refs(body, None, &mut current.names).ok_or_else(malformed)?,
                // A directory's entries: as many as it has names below it,
                // and not needed (every name is read from its inode's
                // references, nested subvolumes from the root tree), so
                // the search goes on past them.
                DIR_ITEM | DIR_INDEX => return Ok(Some((item.objectid, DIR_INDEX + 1, 0))),
                EXTENT_DATA => {
                    let regular = current.mode & libc::S_IFMT == libc::S_IFREG;
                    let data = (regular && item.offset == 0 && current.inline.is_none())
                        .then(|| inline_bytes(body, &mut inflated))
                        .flatten();
                    match data {
                        Some(data) => current.inline = Some((data.len() as u64, summarize(data))),
                        None => current.other_extents = true,
                    }
                }
                _ => {}
            }
            Ok(None)
        },
    )?;
    finish(current);
    leaves.extend(
        nested_subvolumes(dir, &mut words)?
            .into_iter()
            .map(|(dir, name)| (dir, name, EntryKind::Subvolume)),
    );

    let mut paths: HashMap<u64, PathBuf> = HashMap::new();
    paths.insert(ROOT_DIR, PathBuf::new());
    let mut entries = Vec::with_capacity(leaves.len() + dirs.len());
    for &ino in dirs.keys() {
        let path = dir_path(ino, &dirs, &mut paths)?;
        entries.push(Entry {
            path,
            kind: EntryKind::Dir,
        });
    }
    for (parent, name, kind) in leaves {
        let mut path = dir_path(parent, &dirs, &mut paths)?;
        path.push(OsString::from_vec(name));
        entries.push(Entry { path, kind });
    }
    Ok(entries)
}

fn malformed() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "btrfs tree search returned a malformed item",
    )
}

/// `struct btrfs_ioctl_search_header` (in the CPU's byte order).
struct ItemHeader {
    objectid: u64,
    offset: u64,
    kind: u32,
    len: usize,
}

impl ItemHeader {
    const LEN: usize = 32;

    fn parse(bytes: &[u8], at: usize) -> Option<Self> {
        let h = bytes.get(at..at + Self::LEN)?;
        let u64_at = |i: usize| h[i..i + 8].try_into().ok().map(u64::from_ne_bytes);
        let u32_at = |i: usize| h[i..i + 4].try_into().ok().map(u32::from_ne_bytes);
        Some(ItemHeader {
            objectid: u64_at(8)?,
            offset: u64_at(16)?,
            kind: u32_at(24)?,
            len: u32_at(28)? as usize,
        })
    }
}

/// The key right after `key` in the tree's (objectid, type, offset) order.
fn next_key((objectid, kind, offset): (u64, u32, u64)) -> Option<(u64, u32, u64)> {
    if offset < u64::MAX {
        Some((objectid, kind, offset + 1))
    } else if kind < u32::from(u8::MAX) {
        Some((objectid, kind + 1, 0))
    } else {
        objectid.checked_add(1).map(|o| (o, 0, 0))
    }
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8)?.try_into().ok().map(u64::from_le_bytes)
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)?.try_into().ok().map(u32::from_le_bytes)
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2)?.try_into().ok().map(u16::from_le_bytes)
}

/// The names in an `INODE_REF` item (`parent` is its key's offset: each
/// entry is index, name length, name) or an `INODE_EXTREF` item (each entry
/// is parent, index, name length, name).
fn parse_refs(body: &[u8], parent: Option<u64>, out: &mut Vec<(u64, Vec<u8>)>) -> Option<()> {
    let mut at = 0;
    while at < body.len() {
        let (dir, fixed) = match parent {
            Some(p) => (p, 10),
            None => (le_u64(body, at)?, 18),
        };
        let len = usize::from(le_u16(body, at + fixed - 2)?);
        let name = body.get(at + fixed..at + fixed + len)?;
        out.push((dir, name.to_vec()));
        at += fixed + len;
    }
    Some(())
}

/// The data extents of the first `len` bytes of `file` (a regular file on
/// btrfs), from its file extent items in its subvolume's tree, in order:
/// each names its bytes exactly, also where they are compressed (the
/// extent's `disk_bytenr` and the offset into its inflated bytes; see
/// [`crate::extents`]). The file's dirty pages are written first, so the
/// items are of what reads return. Fails, like [`sweep`], without
/// `CAP_SYS_ADMIN`; callers then map the file with FIEMAP.
pub fn file_extents(file: &File, len: u64) -> std::io::Result<Vec<crate::extents::Extent>> {
    use std::os::unix::fs::MetadataExt as _;
    file.sync_data()?;
    let ino = file.metadata()?.ino();
    let mut out = Vec::new();
    let mut words = search_buffer();
    search(
        file,
        0,
        (ino, EXTENT_DATA, 0),
        (ino, EXTENT_DATA, len.saturating_sub(1)),
        &mut words,
        |item, body| {
            if item.objectid == ino && item.kind == EXTENT_DATA {
                out.push(file_extent(item.offset, body).ok_or_else(malformed)?);
            }
            Ok(None)
        },
    )?;
    Ok(out)
}

/// One file extent item (`body`, at file offset `logical`) as an extent.
fn file_extent(logical: u64, body: &[u8]) -> Option<crate::extents::Extent> {
    let kind = *body.get(20)?;
    if kind == FILE_EXTENT_INLINE {
        return Some(crate::extents::Extent {
            logical,
            physical: 0,
            length: le_u64(body, 8)?,
            space: 0,
            exact: false,
        });
    }
    let (disk_bytenr, offset, length) = (le_u64(body, 21)?, le_u64(body, 37)?, le_u64(body, 45)?);
    let (compression, encoded) = (*body.get(16)?, body.get(17..20)? != [0, 0, 0]);
    // A hole (no disk bytes) or preallocated, unwritten space reads as
    // zeros that no address names.
    let exact = kind == FILE_EXTENT_REG && disk_bytenr != 0 && !encoded;
    Some(if compression == COMPRESS_NONE {
        crate::extents::Extent {
            logical,
            physical: disk_bytenr.checked_add(offset)?,
            length,
            space: 0,
            exact,
        }
    } else {
        crate::extents::Extent {
            logical,
            physical: offset,
            length,
            space: disk_bytenr,
            exact,
        }
    })
}

/// A zeroed buffer for [`search`]: its head, then [`BUF_BYTES`] of results.
fn search_buffer() -> Vec<u64> {
    vec![0u64; (std::mem::size_of::<SearchHead>() + BUF_BYTES) / 8]
}

/// Runs `BTRFS_IOC_TREE_SEARCH_V2` over the keys from `min` to `max` (in
/// the tree's (objectid, type, offset) order) of tree `tree_id` (0: the
/// subvolume open as `dir`), calling `each` with every item's header and
/// body. When `each` returns a key, the search goes on from that key
/// instead of the next one, skipping what is between.
fn search(
    dir: &File,
    tree_id: u64,
    min: (u64, u32, u64),
    max: (u64, u32, u64),
    words: &mut [u64],
    mut each: impl FnMut(&ItemHeader, &[u8]) -> std::io::Result<Option<(u64, u32, u64)>>,
) -> std::io::Result<()> {
    let mut from = min;
    loop {
        let head = SearchHead {
            key: SearchKey {
                tree_id,
                min_objectid: from.0,
                min_type: from.1,
                min_offset: from.2,
                max_objectid: max.0,
                max_type: max.1,
                max_offset: max.2,
                min_transid: 0,
                max_transid: u64::MAX,
                nr_items: u32::MAX,
                ..SearchKey::default()
            },
            buf_size: BUF_BYTES as u64,
        };
        if std::mem::size_of_val(words) < std::mem::size_of::<SearchHead>() + BUF_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "tree search buffer too small",
            ));
        }
        // SAFETY: `words` is 8-aligned and (checked just above) longer than
        // `SearchHead` plus the `BUF_BYTES` the kernel is told it may write
        // after it.
        let rc = unsafe {
            std::ptr::write(words.as_mut_ptr().cast::<SearchHead>(), head);
            libc::ioctl(dir.as_raw_fd(), IOC_TREE_SEARCH_V2, words.as_mut_ptr())
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: as above; the kernel wrote back the key's item count.
        let found = unsafe { std::ptr::read(words.as_ptr().cast::<SearchHead>()) }
            .key
            .nr_items;
        if found == 0 {
            return Ok(());
        }
        // SAFETY: `words` owns these bytes for as long as `bytes` lives.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                words
                    .as_ptr()
                    .cast::<u8>()
                    .add(std::mem::size_of::<SearchHead>()),
                BUF_BYTES,
            )
        };
        let mut at = 0usize;
        let mut next = None;
        for _ in 0..found {
            let item = ItemHeader::parse(bytes, at).ok_or_else(malformed)?;
            let body = bytes
                .get(at + ItemHeader::LEN..at + ItemHeader::LEN + item.len)
                .ok_or_else(malformed)?;
            at += ItemHeader::LEN + item.len;
            next = next_key((item.objectid, item.kind, item.offset));
            if let Some(skip_to) = each(&item, body)? {
                next = Some(skip_to);
                break;
            }
        }
        match next {
            Some(key) if key <= max => from = key,
            _ => return Ok(()),
        }
    }
}

/// The subvolumes inside the subvolume open as `dir`: the directory each
/// is in and its name, from the `ROOT_REF` items of the root tree.
fn nested_subvolumes(dir: &File, words: &mut [u64]) -> std::io::Result<Vec<(u64, Vec<u8>)>> {
    let id = subvolume_id(dir)?;
    let mut nested = Vec::new();
    search(
        dir,
        ROOT_TREE,
        (id, ROOT_REF, 0),
        (id, ROOT_REF, u64::MAX),
        words,
        |item, body| {
            // struct btrfs_root_ref: dirid, sequence, name_len, name.
            if item.kind == ROOT_REF {
                let dir = le_u64(body, 0).ok_or_else(malformed)?;
                let len = usize::from(le_u16(body, 16).ok_or_else(malformed)?);
                let name = body.get(18..18 + len).ok_or_else(malformed)?;
                nested.push((dir, name.to_vec()));
            }
            Ok(None)
        },
    )?;
    Ok(nested)
}

/// `struct btrfs_ioctl_ino_lookup_args`.
#[repr(C)]
struct InoLookup {
    tree_id: u64,
    objectid: u64,
    name: [u8; 4080],
}

/// The id of the subvolume open as `dir` (its root directory).
fn subvolume_id(dir: &File) -> std::io::Result<u64> {
    let mut args = InoLookup {
        tree_id: 0,
        objectid: ROOT_DIR,
        name: [0; 4080],
    };
    // SAFETY: `args` is the struct this ioctl reads and writes, and lives
    // across the call.
    let rc = unsafe { libc::ioctl(dir.as_raw_fd(), IOC_INO_LOOKUP, &mut args) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(args.tree_id)
}

/// The path of directory `ino`, relative to the subvolume's root.
fn dir_path(
    ino: u64,
    dirs: &HashMap<u64, (u64, Vec<u8>)>,
    paths: &mut HashMap<u64, PathBuf>,
) -> std::io::Result<PathBuf> {
    let mut chain = Vec::new();
    let mut at = ino;
    let mut base = loop {
        if let Some(p) = paths.get(&at) {
            break p.clone();
        }
        if chain.len() > MAX_DEPTH {
            return Err(malformed());
        }
        let (parent, _) = dirs.get(&at).ok_or_else(malformed)?;
        chain.push(at);
        at = *parent;
    };
    for &d in chain.iter().rev() {
        if let Some((_, name)) = dirs.get(&d) {
            base.push(OsString::from_vec(name.clone()));
        }
        paths.insert(d, base.clone());
    }
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_key_carries_into_type_and_objectid() {
        assert_eq!(next_key((300, 12, 7)), Some((300, 12, 8)));
        assert_eq!(next_key((300, 12, u64::MAX)), Some((300, 13, 0)));
        assert_eq!(next_key((300, 255, u64::MAX)), Some((301, 0, 0)));
        assert_eq!(next_key((u64::MAX, 255, u64::MAX)), None);
    }

    #[test]
    fn inode_refs_and_extrefs_parse() {
        let mut refs = Vec::new();
        let mut body = Vec::new();
        for name in [&b"a"[..], b"bc"] {
            body.extend_from_slice(&9u64.to_le_bytes());
            body.extend_from_slice(&(name.len() as u16).to_le_bytes());
            body.extend_from_slice(name);
        }
        assert_eq!(parse_refs(&body, Some(300), &mut refs), Some(()));
        assert_eq!(refs, vec![(300, b"a".to_vec()), (300, b"bc".to_vec())]);

        let mut ext = Vec::new();
        ext.extend_from_slice(&301u64.to_le_bytes());
        ext.extend_from_slice(&4u64.to_le_bytes());
        ext.extend_from_slice(&3u16.to_le_bytes());
        ext.extend_from_slice(b"xyz");
        refs.clear();
        assert_eq!(parse_refs(&ext, None, &mut refs), Some(()));
        assert_eq!(refs, vec![(301, b"xyz".to_vec())]);
        // A name running past the item is malformed, not read out of bounds.
        assert_eq!(parse_refs(&ext[..ext.len() - 1], None, &mut refs), None);
    }

    #[test]
    fn a_loop_in_parent_directories_is_an_error() {
        let dirs: HashMap<u64, (u64, Vec<u8>)> =
            [(300, (301, b"a".to_vec())), (301, (300, b"b".to_vec()))].into();
        let mut paths = HashMap::from([(ROOT_DIR, PathBuf::new())]);
        assert!(dir_path(300, &dirs, &mut paths).is_err());
    }
}
