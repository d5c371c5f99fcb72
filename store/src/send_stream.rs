//! The little of the `btrfs send` stream format fschain needs to read.
//!
//! A stream is a 17-byte header (`btrfs-stream\0` and a little-endian u32
//! version) followed by commands: a 10-byte header (u32 length of the
//! attributes, u16 command, u32 CRC-32C) and the attributes as TLVs (u16
//! type, u16 length, value). The first command is SUBVOL (full stream) or
//! SNAPSHOT (incremental) and names the subvolume to create in its PATH
//! attribute.
//!
//! A site receives each block under a staging name and renames it into
//! place only after verifying it, so it rewrites that one PATH attribute.
//! The rest of the stream passes through untouched.

use crate::StoreError;

pub const STREAM_MAGIC: &[u8; 13] = b"btrfs-stream\0";
const HEADER_LEN: usize = 17;
const CMD_HEADER_LEN: usize = 10;
const CMD_SUBVOL: u16 = 1;
const CMD_SNAPSHOT: u16 = 2;
const ATTR_PATH: u16 = 15;

/// CRC-32C (Castagnoli) as btrfs send computes it: seed 0, no final
/// inversion.
pub fn btrfs_crc32c(data: &[u8]) -> u32 {
    crc32c_update(0, data)
}

fn crc32c_update(mut crc: u32, data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut crc = i as u32;
            let mut k = 0;
            while k < 8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0x82F6_3B78
                } else {
                    crc >> 1
                };
                k += 1;
            }
            table[i] = crc;
            i += 1;
        }
        table
    };
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

fn bad(why: impl Into<String>) -> StoreError {
    StoreError::BadSendStream { why: why.into() }
}

/// Length of the stream header plus the first command, from the first
/// `HEADER_LEN + CMD_HEADER_LEN` bytes.
pub fn first_command_end(prefix: &[u8]) -> Result<usize, StoreError> {
    if prefix.len() < HEADER_LEN + CMD_HEADER_LEN || &prefix[..13] != STREAM_MAGIC {
        return Err(bad("does not start with the btrfs-stream magic"));
    }
    let len = u32::from_le_bytes([prefix[17], prefix[18], prefix[19], prefix[20]]) as usize;
    if len > 64 * 1024 {
        return Err(bad(format!("first command claims {len} bytes")));
    }
    Ok(HEADER_LEN + CMD_HEADER_LEN + len)
}

/// The first command's subvolume name, and whether the stream is
/// incremental (SNAPSHOT) rather than full (SUBVOL).
pub fn subvolume_name(head: &[u8]) -> Result<(String, bool), StoreError> {
    let (cmd, attrs) = first_command(head)?;
    for (ty, value) in attrs {
        if ty == ATTR_PATH {
            let name = std::str::from_utf8(value).map_err(|_| bad("PATH is not UTF-8"))?;
            return Ok((name.to_owned(), cmd == CMD_SNAPSHOT));
        }
    }
    Err(bad("first command has no PATH"))
}

type Attrs<'a> = Vec<(u16, &'a [u8])>;

fn first_command(head: &[u8]) -> Result<(u16, Attrs<'_>), StoreError> {
    let end = first_command_end(head)?;
    if head.len() != end {
        return Err(bad("need exactly the stream header and the first command"));
    }
    let cmd = u16::from_le_bytes([head[21], head[22]]);
    if cmd != CMD_SUBVOL && cmd != CMD_SNAPSHOT {
        return Err(bad(format!(
            "first command is {cmd}, not SUBVOL or SNAPSHOT"
        )));
    }
    let stored_crc = u32::from_le_bytes([head[23], head[24], head[25], head[26]]);
    let mut zeroed = head[HEADER_LEN..end].to_vec();
    zeroed[6..10].fill(0);
    if btrfs_crc32c(&zeroed) != stored_crc {
        return Err(bad("first command fails its CRC"));
    }
    let mut attrs = Vec::new();
    let mut rest = &head[HEADER_LEN + CMD_HEADER_LEN..end];
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(bad("truncated attribute"));
        }
        let ty = u16::from_le_bytes([rest[0], rest[1]]);
        let len = u16::from_le_bytes([rest[2], rest[3]]) as usize;
        if rest.len() < 4 + len {
            return Err(bad("truncated attribute value"));
        }
        attrs.push((ty, &rest[4..4 + len]));
        rest = &rest[4 + len..];
    }
    Ok((cmd, attrs))
}

/// Rewrites the stream header and first command (`head`, exactly
/// [`first_command_end`] bytes) so that the subvolume is created as `name`.
pub fn rename_first_subvolume(head: &[u8], name: &str) -> Result<Vec<u8>, StoreError> {
    if name.is_empty() || name.contains('/') || name.len() > 255 {
        return Err(bad(format!("{name:?} is not a subvolume name")));
    }
    let (cmd, attrs) = first_command(head)?;
    let mut body = Vec::new();
    for (ty, value) in attrs {
        let value = if ty == ATTR_PATH {
            name.as_bytes()
        } else {
            value
        };
        body.extend_from_slice(&ty.to_le_bytes());
        body.extend_from_slice(&(value.len() as u16).to_le_bytes());
        body.extend_from_slice(value);
    }
    let mut cmd_bytes = Vec::with_capacity(CMD_HEADER_LEN + body.len());
    cmd_bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
    cmd_bytes.extend_from_slice(&cmd.to_le_bytes());
    cmd_bytes.extend_from_slice(&[0; 4]);
    cmd_bytes.extend_from_slice(&body);
    let crc = btrfs_crc32c(&cmd_bytes);
    cmd_bytes[6..10].copy_from_slice(&crc.to_le_bytes());
    let mut out = head[..HEADER_LEN].to_vec();
    out.extend(cmd_bytes);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream head built by hand the way btrfs send lays it out.
    fn head(cmd: u16, name: &str) -> Vec<u8> {
        let mut body = Vec::new();
        for (ty, value) in [
            (ATTR_PATH, name.as_bytes()),
            (1u16, &[7u8; 16][..]),
            (2, &[1u8; 8][..]),
        ] {
            body.extend_from_slice(&ty.to_le_bytes());
            body.extend_from_slice(&(value.len() as u16).to_le_bytes());
            body.extend_from_slice(value);
        }
        let mut c = (body.len() as u32).to_le_bytes().to_vec();
        c.extend_from_slice(&cmd.to_le_bytes());
        c.extend_from_slice(&[0; 4]);
        c.extend_from_slice(&body);
        let crc = btrfs_crc32c(&c);
        c[6..10].copy_from_slice(&crc.to_le_bytes());
        let mut out = STREAM_MAGIC.to_vec();
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend(c);
        out
    }

    #[test]
    fn crc32c_is_castagnoli() {
        // The standard check value, with the usual pre and post inversion
        // that btrfs leaves out.
        assert_eq!(!crc32c_update(!0, b"123456789"), 0xE306_9283);
        assert_eq!(btrfs_crc32c(b""), 0);
    }

    #[test]
    fn renames_the_subvolume_and_keeps_everything_else() {
        let h = head(CMD_SNAPSHOT, "0000000042");
        assert_eq!(first_command_end(&h).unwrap(), h.len());
        assert_eq!(subvolume_name(&h).unwrap(), ("0000000042".into(), true));
        let renamed = rename_first_subvolume(&h, ".incoming-0000000042").unwrap();
        assert_eq!(
            subvolume_name(&renamed).unwrap(),
            (".incoming-0000000042".into(), true)
        );
        let (_, before) = first_command(&h).unwrap();
        let (_, after) = first_command(&renamed).unwrap();
        assert_eq!(before.len(), after.len());
        assert_eq!(before[1..], after[1..]);
    }

    #[test]
    fn refuses_a_bad_crc_and_other_streams() {
        let mut h = head(CMD_SUBVOL, "0000000000");
        let last = h.len() - 1;
        h[last] ^= 1;
        assert!(subvolume_name(&h).is_err());
        assert!(first_command_end(b"not a btrfs stream at all....").is_err());
        assert!(rename_first_subvolume(&head(CMD_SUBVOL, "x"), "a/b").is_err());
        assert!(subvolume_name(&head(3, "x")).is_err());
    }
}
