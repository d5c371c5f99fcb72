//! REFs: how a user names a block.

use std::fmt;
use std::str::FromStr;

use crate::{BlockHeader, SchemaError, Timestamp};

/// A height (`42`), a block-hash prefix of 8+ hex digits, `@<RFC 3339 time>`
/// (the last block at or before it), `head` or `head~N`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockRef {
    Height(u64),
    HashPrefix(String),
    AtOrBefore(Timestamp),
    Head { back: u64 },
}

impl BlockRef {
    pub fn parse(text: &str) -> Result<Self, SchemaError> {
        let bad = || SchemaError::BadRef {
            text: text.chars().take(80).collect(),
        };
        if text == "head" {
            return Ok(BlockRef::Head { back: 0 });
        }
        if let Some(n) = text.strip_prefix("head~") {
            return n
                .parse()
                .map(|back| BlockRef::Head { back })
                .map_err(|_| bad());
        }
        if let Some(t) = text.strip_prefix('@') {
            return Timestamp::parse_rfc3339(t)
                .map(BlockRef::AtOrBefore)
                .map_err(|_| bad());
        }
        let is_hex = !text.is_empty() && text.bytes().all(|b| b.is_ascii_hexdigit());
        let is_digits = text.bytes().all(|b| b.is_ascii_digit());
        // A run of 8+ digits could be either; a height wins when it exists,
        // which `resolve` handles; here short digit runs are heights.
        if is_digits && !text.is_empty() && text.len() < 8 {
            return text.parse().map(BlockRef::Height).map_err(|_| bad());
        }
        if is_hex && text.len() >= 8 && text.len() <= 64 {
            return Ok(BlockRef::HashPrefix(text.to_ascii_lowercase()));
        }
        if is_digits && !text.is_empty() {
            return text.parse().map(BlockRef::Height).map_err(|_| bad());
        }
        Err(bad())
    }

    /// The height this REF names among `headers` (indexed by height).
    pub fn resolve(&self, headers: &[BlockHeader]) -> Result<u64, SchemaError> {
        let head = headers
            .len()
            .checked_sub(1)
            .ok_or(SchemaError::EmptyChain)? as u64;
        let no_match = || SchemaError::RefNotFound {
            reference: self.to_string(),
            head,
        };
        match self {
            BlockRef::Height(h) if *h <= head => Ok(*h),
            BlockRef::Height(_) => Err(no_match()),
            BlockRef::Head { back } => head.checked_sub(*back).ok_or_else(no_match),
            BlockRef::AtOrBefore(t) => headers
                .iter()
                .rev()
                .find(|h| h.time <= *t)
                .map(|h| h.height)
                .ok_or_else(no_match),
            BlockRef::HashPrefix(prefix) => {
                let matches: Vec<u64> = headers
                    .iter()
                    .filter(|h| h.hash.to_hex().starts_with(prefix))
                    .map(|h| h.height)
                    .collect();
                // All digits: a height if there is one and no hash matches.
                if matches.is_empty() {
                    if let Ok(height) = prefix.parse::<u64>() {
                        if height <= head {
                            return Ok(height);
                        }
                    }
                }
                match matches.as_slice() {
                    [one] => Ok(*one),
                    [] => Err(no_match()),
                    many => Err(SchemaError::AmbiguousRef {
                        reference: prefix.clone(),
                        heights: many.to_vec(),
                    }),
                }
            }
        }
    }
}

impl fmt::Display for BlockRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockRef::Height(h) => write!(f, "{h}"),
            BlockRef::HashPrefix(p) => f.write_str(p),
            BlockRef::AtOrBefore(t) => write!(f, "@{t}"),
            BlockRef::Head { back: 0 } => f.write_str("head"),
            BlockRef::Head { back } => write!(f, "head~{back}"),
        }
    }
}

impl FromStr for BlockRef {
    type Err = SchemaError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BlockRef::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BlockHash, ChainName, Digest, EventsRoot, StateRoot};

    fn headers(hashes: &[&str]) -> Vec<BlockHeader> {
        hashes
            .iter()
            .enumerate()
            .map(|(i, h)| BlockHeader {
                version: 1,
                chain: ChainName::parse("c").unwrap(),
                height: i as u64,
                prev: None,
                time: Timestamp::from_micros(1_000_000 * i as i64),
                state_root: StateRoot(Digest::ZERO),
                events_root: EventsRoot(Digest::ZERO),
                event_count: 0,
                first_seq: None,
                last_seq: None,
                hash: BlockHash::from_hex(&format!("{h:0<64}")).unwrap(),
            })
            .collect()
    }

    fn resolve(r: &str, hs: &[BlockHeader]) -> Result<u64, SchemaError> {
        BlockRef::parse(r)?.resolve(hs)
    }

    #[test]
    fn every_form() {
        let hs = headers(&["aaaa0000", "abcdef12", "abcdef13", "12345678"]);
        assert_eq!(resolve("2", &hs), Ok(2));
        assert_eq!(resolve("head", &hs), Ok(3));
        assert_eq!(resolve("head~3", &hs), Ok(0));
        assert!(matches!(
            resolve("head~4", &hs),
            Err(SchemaError::RefNotFound { .. })
        ));
        assert_eq!(resolve("aaaa0000", &hs), Ok(0));
        assert_eq!(resolve("ABCDEF120", &hs), Ok(1));
        assert_eq!(
            resolve("abcdef1", &hs),
            Err(SchemaError::BadRef {
                text: "abcdef1".into()
            }),
            "7 hex digits are too few"
        );
        assert_eq!(
            resolve("abcdef10", &hs).unwrap_err(),
            SchemaError::RefNotFound {
                reference: "abcdef10".into(),
                head: 3
            }
        );
        assert_eq!(resolve("12345678", &hs), Ok(3), "a hash prefix of digits");
        assert_eq!(resolve("@1970-01-01T00:00:02.5Z", &hs), Ok(2));
        assert_eq!(resolve("@1970-01-01T01:00:02+01:00", &hs), Ok(2));
        assert!(matches!(
            resolve("@1969-12-31T00:00:00Z", &hs),
            Err(SchemaError::RefNotFound { .. })
        ));
    }

    #[test]
    fn ambiguous_prefix_names_the_blocks() {
        let hs = headers(&["abcdef1200", "abcdef1211"]);
        assert_eq!(
            resolve("abcdef12", &hs),
            Err(SchemaError::AmbiguousRef {
                reference: "abcdef12".into(),
                heights: vec![0, 1]
            })
        );
        assert_eq!(resolve("abcdef121", &hs), Ok(1));
    }
}
