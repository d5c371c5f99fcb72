//! Which bytes of two files btrfs stores once for both.
//!
//! Every snapshot of a chain holds its whole `events.log`, and `verify`
//! must know that each older snapshot's log is a byte-exact prefix of the
//! newest one. Snapshots share their data extents: a log appended to after
//! a snapshot keeps pointing at the very same disk bytes for everything but
//! its last, rewritten block. Two file ranges that `FS_IOC_FIEMAP` maps to
//! the same physical bytes read back the same, so they need no reading: a
//! write to either copy would have had to copy the extent first, and a
//! write below the file system changes both copies, which the full check of
//! the newest log then catches.
//!
//! FIEMAP names only plain extents' bytes exactly: a compressed extent's
//! address is where its compressed bytes start, not where a file's range
//! begins inside what they inflate to. So a compressed range is shared only
//! when read from the subvolume's tree ([`crate::btrfs_tree::file_extents`]):
//! its file extent item names the compressed extent (`disk_bytenr`) and the
//! offset into its inflated bytes, which together name the bytes exactly.
//! Inline, encrypted, unwritten or delayed extents are read and compared.

#![allow(unsafe_code)]

use std::fs::File;
use std::ops::Range;
use std::os::unix::io::AsRawFd;

/// `_IOWR('f', 11, struct fiemap)`.
const FS_IOC_FIEMAP: libc::c_ulong = 0xc020_660b;
/// Write the file's dirty pages first, so the map is of what reads return.
const FIEMAP_FLAG_SYNC: u32 = 0x1;
const FIEMAP_EXTENT_LAST: u32 = 0x1;
/// Unknown location, delayed allocation, compressed, encrypted, not
/// block-aligned, inline, tail-packed, unwritten.
const NOT_PLAIN: u32 = 0x2 | 0x4 | 0x8 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800;
const EXTENTS_PER_CALL: usize = 512;

/// Where a run of a file's bytes lives on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub logical: u64,
    /// The run's first byte in `space`.
    pub physical: u64,
    pub length: u64,
    /// 0: `physical` is a btrfs (logical disk) address, one per byte.
    /// Otherwise the `disk_bytenr` of the compressed extent holding the run,
    /// and `physical` an offset into its inflated bytes.
    pub space: u64,
    /// `space` and `physical` name exactly these bytes (false for inline,
    /// encrypted, unwritten, delayed extents, and compressed ones as FIEMAP
    /// maps them).
    pub exact: bool,
}

impl Extent {
    fn end(&self) -> u64 {
        self.logical.saturating_add(self.length)
    }
}

/// `struct fiemap` without its extents.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct FiemapHead {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
}

/// `struct fiemap_extent`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct FiemapExtent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

#[repr(C)]
#[derive(Debug)]
struct FiemapRequest {
    head: FiemapHead,
    extents: [FiemapExtent; EXTENTS_PER_CALL],
}

/// The extents of the first `len` bytes of `file`, in order. Fails where
/// the file system has no FIEMAP.
pub fn extents(file: &File, len: u64) -> std::io::Result<Vec<Extent>> {
    let mut out = Vec::new();
    let mut request = Box::new(FiemapRequest {
        head: FiemapHead::default(),
        extents: [FiemapExtent::default(); EXTENTS_PER_CALL],
    });
    let mut start = 0u64;
    let mut flags = FIEMAP_FLAG_SYNC;
    while start < len {
        request.head = FiemapHead {
            start,
            length: len - start,
            flags,
            extent_count: EXTENTS_PER_CALL as u32,
            ..FiemapHead::default()
        };
        // SAFETY: `request` is a `struct fiemap` with room for the
        // `extent_count` extents the kernel is told it may write.
        let rc = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                FS_IOC_FIEMAP,
                std::ptr::from_mut::<FiemapRequest>(&mut request),
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        flags = 0;
        let mapped = (request.head.mapped_extents as usize).min(EXTENTS_PER_CALL);
        if mapped == 0 {
            break;
        }
        let mut last = false;
        for e in &request.extents[..mapped] {
            out.push(Extent {
                logical: e.logical,
                physical: e.physical,
                length: e.length,
                space: 0,
                exact: e.flags & NOT_PLAIN == 0,
            });
            last |= e.flags & FIEMAP_EXTENT_LAST != 0;
        }
        let end = out.last().map_or(len, Extent::end);
        if last || end <= start {
            break;
        }
        start = end;
    }
    Ok(out)
}

/// The parts of `0..len` that two files, mapped as `a` and `b`, are not
/// both known to store at the same physical bytes: what must be read and
/// compared to know the files agree there. Ordered, merged.
pub fn unshared_ranges(a: &[Extent], b: &[Extent], len: u64) -> Vec<Range<u64>> {
    let mut shared: Vec<Range<u64>> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (ea, eb) = (&a[i], &b[j]);
        let from = ea.logical.max(eb.logical);
        let to = ea.end().min(eb.end()).min(len);
        // Same bytes where both map x to the same address: their
        // physical-minus-logical offsets agree.
        let same_map = u128::from(ea.physical) + u128::from(eb.logical)
            == u128::from(eb.physical) + u128::from(ea.logical);
        if from < to && ea.exact && eb.exact && ea.space == eb.space && same_map {
            match shared.last_mut() {
                Some(last) if last.end == from => last.end = to,
                _ => shared.push(from..to),
            }
        }
        if ea.end() <= eb.end() {
            i += 1;
        } else {
            j += 1;
        }
    }
    let mut unshared = Vec::new();
    let mut at = 0;
    for s in shared {
        if s.start > at {
            unshared.push(at..s.start);
        }
        at = at.max(s.end);
    }
    if at < len {
        unshared.push(at..len);
    }
    unshared
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ext(logical: u64, physical: u64, length: u64) -> Extent {
        Extent {
            logical,
            physical,
            length,
            space: 0,
            exact: true,
        }
    }

    #[test]
    fn an_appended_log_shares_all_but_its_rewritten_last_block() {
        // The older copy: two extents; the newer rewrote the last block.
        let older = [ext(0, 1 << 20, 8192), ext(8192, 5 << 20, 4096)];
        let newer = [
            ext(0, 1 << 20, 8192),
            ext(8192, 5 << 20, 3000),
            ext(11192, 9 << 20, 9000),
        ];
        assert_eq!(unshared_ranges(&older, &newer, 12000), vec![11192..12000]);
    }

    #[test]
    fn the_same_address_at_another_offset_is_not_shared() {
        // Both start at physical 4096, but b maps it one block later.
        let a = [ext(0, 4096, 8192)];
        let b = [ext(4096, 4096, 8192)];
        assert_eq!(unshared_ranges(&a, &b, 8192), vec![0..8192]);
        // b's second block at the address of a's first: not the same bytes.
        let b = [ext(0, 100, 4096), ext(4096, 4096, 4096)];
        assert_eq!(unshared_ranges(&a, &b, 8192), vec![0..8192]);
        // b's second block at the address of a's second: shared.
        let b = [ext(0, 100, 4096), ext(4096, 8192, 4096)];
        assert_eq!(unshared_ranges(&a, &b, 8192), vec![0..4096]);
    }

    #[test]
    fn compressed_or_inline_extents_are_always_read() {
        let mut a = [ext(0, 4096, 8192)];
        a[0].exact = false;
        assert_eq!(unshared_ranges(&a, &a, 8192), vec![0..8192]);
        assert_eq!(unshared_ranges(&[], &[], 10), vec![0..10]);
    }

    proptest! {
        /// Whatever the maps, a byte is left out only if both files map it
        /// to the same byte of the same space through exact extents.
        #[test]
        fn only_bytes_at_one_address_are_skipped(
            a in proptest::collection::vec((0u64..6, 1u64..5, 0u64..3, any::<bool>()), 0..6),
            b in proptest::collection::vec((0u64..6, 1u64..5, 0u64..3, any::<bool>()), 0..6),
            len in 0u64..40,
        ) {
            let build = |runs: &[(u64, u64, u64, bool)]| {
                let mut at = 0;
                runs.iter()
                    .map(|&(phys, length, space, exact)| {
                        let e = Extent { logical: at, physical: phys * 3, length, space, exact };
                        at += length;
                        e
                    })
                    .collect::<Vec<_>>()
            };
            let (ea, eb) = (build(&a), build(&b));
            let address = |map: &[Extent], x: u64| {
                map.iter()
                    .find(|e| e.logical <= x && x < e.end() && e.exact)
                    .map(|e| (e.space, e.physical + (x - e.logical)))
            };
            let unshared = unshared_ranges(&ea, &eb, len);
            for x in 0..len {
                let read = unshared.iter().any(|r| r.contains(&x));
                let same = matches!(
                    (address(&ea, x), address(&eb, x)),
                    (Some(p), Some(q)) if p == q
                );
                prop_assert_eq!(read, !same, "byte {}", x);
            }
        }
    }
}
