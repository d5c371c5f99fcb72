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
        let bad = || SchemaError::BadRef { text: text.chars().take(80).collect() };
        if text == "head" {
            return Ok(BlockRef::Head { back: 0 });
        }
        if let Some(n) = text.strip_prefix("head~") {
            return n.parse().map(|back| BlockRef::Head { back }).map_err(|_| bad());
        }
        if let Some(t) = text.strip_prefix('@') {
            return Timestamp::parse_rfc3339(t).map(BlockRef::AtOrBefore).map_err(|_| bad());
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
        let head = headers.len().checked_sub(1).ok_or(SchemaError::EmptyChain)? as u64;
        let no_match = || SchemaError::RefNotFound { reference: self.to_string(), head };
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
                let matches: Vec<u64> =
                    headers.iter().filter(|h| h.hash.to_hex().starts_with(prefix)).map(|h| h.height).collect();
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
                    many => Err(SchemaError::AmbiguousRef { reference: prefix.clone(), heights: many.to_vec() }),
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
