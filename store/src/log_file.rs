//! A chain's logs read from disk for the pure verifier: one line in memory
//! at a time, and byte-range comparisons in fixed-size pieces, so checking
//! a chain costs the same memory whatever its size.

use std::fs::File;
use std::io::{self, BufRead as _, BufReader, Seek as _, SeekFrom};
use std::path::Path;

use fschain_schema::verify::{LineAt, LineSource};

use crate::extents::{extents, unshared_ranges};

/// How much of a file is read at a time.
const PIECE: usize = 1 << 20;

/// A log file read line by line from the start.
pub(crate) struct LogLines {
    reader: BufReader<File>,
    line: Vec<u8>,
    offset: u64,
}

impl LogLines {
    /// Lines from byte `offset` on (offsets still count from the start).
    pub(crate) fn open_at(path: &Path, offset: u64) -> io::Result<Self> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        Ok(LogLines {
            reader: BufReader::with_capacity(PIECE, file),
            line: Vec::new(),
            offset,
        })
    }
}

impl LineSource for LogLines {
    type Error = io::Error;

    fn next_line(&mut self) -> io::Result<Option<&[u8]>> {
        self.line.clear();
        let n = self.reader.read_until(b'\n', &mut self.line)?;
        if n == 0 {
            return Ok(None);
        }
        self.offset += n as u64;
        if self.line.last() == Some(&b'\n') {
            self.line.pop();
        }
        Ok(Some(&self.line))
    }

    fn offset(&self) -> u64 {
        self.offset
    }
}

/// A log file whose lines are read again by offset.
pub(crate) struct LogLineAt {
    file: File,
}

impl LogLineAt {
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        Ok(LogLineAt {
            file: File::open(path)?,
        })
    }
}

impl LineAt for LogLineAt {
    type Error = io::Error;

    fn line_at(&mut self, offset: u64) -> io::Result<Vec<u8>> {
        self.file.seek(SeekFrom::Start(offset))?;
        let mut line = Vec::new();
        BufReader::new(&mut self.file).read_until(b'\n', &mut line)?;
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        Ok(line)
    }
}

/// Whether the file at `short` holds exactly the first `len` bytes of the
/// file at `long`, and if so how many of them were known to be the same
/// without reading them: btrfs stores them once for both files (see
/// [`crate::extents`]). The rest is compared a piece at a time.
pub(crate) fn prefix_check(short: &Path, long: &Path, len: u64) -> io::Result<Option<u64>> {
    use std::os::unix::fs::FileExt;
    let a = File::open(short)?;
    if a.metadata()?.len() != len {
        return Ok(None);
    }
    let b = File::open(long)?;
    if b.metadata()?.len() < len {
        return Ok(None);
    }
    // From the tree where it can be searched (exact for compressed
    // extents too), else from FIEMAP (plain extents only).
    let map = |f: &File| crate::btrfs_tree::file_extents(f, len).or_else(|_| extents(f, len));
    let to_read = match (map(&a), map(&b)) {
        (Ok(ea), Ok(eb)) => unshared_ranges(&ea, &eb, len),
        _ => std::iter::once(0..len).collect(),
    };
    let mut pa = vec![0u8; PIECE];
    let mut pb = vec![0u8; PIECE];
    let mut read = 0;
    for range in to_read {
        let mut at = range.start;
        while at < range.end {
            let n = (range.end - at).min(PIECE as u64) as usize;
            a.read_exact_at(&mut pa[..n], at)?;
            b.read_exact_at(&mut pb[..n], at)?;
            if pa[..n] != pb[..n] {
                return Ok(None);
            }
            at += n as u64;
            read += n as u64;
        }
    }
    Ok(Some(len - read))
}

/// Whether two files hold the same bytes, with [`prefix_check`]'s count of
/// bytes not read.
pub(crate) fn same_bytes_check(a: &Path, b: &Path) -> io::Result<Option<u64>> {
    let len = std::fs::metadata(a)?.len();
    if std::fs::metadata(b)?.len() != len {
        return Ok(None);
    }
    prefix_check(a, b, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_offsets_match_the_bytes() {
        let dir = std::env::temp_dir().join(format!("fschain-log-lines-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("log");
        std::fs::write(&p, b"one\ntwo\n\nlast-without-newline").unwrap();
        let mut lines = LogLines::open_at(&p, 0).unwrap();
        let mut seen = Vec::new();
        while let Some(l) = lines.next_line().unwrap() {
            seen.push((String::from_utf8(l.to_vec()).unwrap(), lines.offset()));
        }
        assert_eq!(
            seen,
            vec![
                ("one".to_owned(), 4),
                ("two".to_owned(), 8),
                (String::new(), 9),
                ("last-without-newline".to_owned(), 29)
            ]
        );
        let mut from = LogLines::open_at(&p, 8).unwrap();
        assert_eq!(from.next_line().unwrap(), Some(&b""[..]));
        assert_eq!(from.offset(), 9);
        let mut at = LogLineAt::open(&p).unwrap();
        assert_eq!(at.line_at(4).unwrap(), b"two");
        assert_eq!(at.line_at(9).unwrap(), b"last-without-newline");

        let q = dir.join("prefix");
        std::fs::write(&q, b"one\ntwo\n").unwrap();
        assert!(prefix_check(&q, &p, 8).unwrap().is_some());
        assert!(prefix_check(&q, &p, 4).unwrap().is_none());
        std::fs::write(&q, b"one\ntwO\n").unwrap();
        assert!(prefix_check(&q, &p, 8).unwrap().is_none());
        assert!(same_bytes_check(&q, &p).unwrap().is_none());
        assert!(same_bytes_check(&p, &p).unwrap().is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
