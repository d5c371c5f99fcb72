//! Element and chain identifiers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::SchemaError;

/// `kind:name`, e.g. `iface:eth0`, `file:/etc/passwd`, `ovs-port:br0/vnet3`.
///
/// kind matches `[a-z][a-z0-9-]{0,31}`; name is non-empty UTF-8 of at most
/// 1024 bytes with no NUL or other control character. Elements order by the
/// bytes of the whole id, which is the order of the state tree's leaves.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ElementId {
    text: String,
    colon: usize,
}

impl ElementId {
    pub const MAX_KIND_LEN: usize = 32;
    pub const MAX_NAME_LEN: usize = 1024;

    pub fn parse(text: &str) -> Result<Self, SchemaError> {
        Self::parse_owned(text.to_owned())
    }

    /// [`Self::parse`], keeping the `String` it is given.
    pub fn parse_owned(text: String) -> Result<Self, SchemaError> {
        let bad = |why: &'static str| SchemaError::BadElementId {
            id: text.chars().take(120).collect(),
            why,
        };
        let colon = text.find(':').ok_or_else(|| bad("expected kind:name"))?;
        let (kind, name) = (&text[..colon], &text[colon + 1..]);
        if !is_valid_kind(kind) {
            return Err(bad("kind must match [a-z][a-z0-9-]{0,31}"));
        }
        if name.is_empty() {
            return Err(bad("name is empty"));
        }
        if name.len() > Self::MAX_NAME_LEN {
            return Err(bad("name is longer than 1024 bytes"));
        }
        if name.chars().any(char::is_control) {
            return Err(bad("name contains a NUL or control character"));
        }
        Ok(ElementId { text, colon })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn kind(&self) -> &str {
        &self.text[..self.colon]
    }

    pub fn name(&self) -> &str {
        &self.text[self.colon + 1..]
    }
}

/// Whether `kind` is a valid element kind.
pub fn is_valid_kind(kind: &str) -> bool {
    let b = kind.as_bytes();
    !b.is_empty()
        && b.len() <= ElementId::MAX_KIND_LEN
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

impl fmt::Display for ElementId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for ElementId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ElementId({:?})", self.text)
    }
}

impl FromStr for ElementId {
    type Err = SchemaError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ElementId::parse(s)
    }
}

impl Serialize for ElementId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for ElementId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        ElementId::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A chain's name: `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`. It is a Kafka message
/// key and a directory name, so it is kept to characters safe in both.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ChainName(String);

impl ChainName {
    pub fn parse(text: &str) -> Result<Self, SchemaError> {
        let b = text.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 64
            && b[0].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
        if ok {
            Ok(ChainName(text.to_owned()))
        } else {
            Err(SchemaError::BadChainName {
                name: text.chars().take(120).collect(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainName({:?})", self.0)
    }
}

impl FromStr for ChainName {
    type Err = SchemaError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ChainName::parse(s)
    }
}

impl<'de> Deserialize<'de> for ChainName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        ChainName::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_examples() {
        for id in [
            "iface:eth0",
            "service:nginx",
            "file:/etc/passwd",
            "ovs-port:br0/vnet3",
            "k:../../x",
        ] {
            let e = ElementId::parse(id).unwrap();
            assert_eq!(e.as_str(), id);
        }
        let e = ElementId::parse("file:/etc/a:b").unwrap();
        assert_eq!((e.kind(), e.name()), ("file", "/etc/a:b"));
    }

    #[test]
    fn rejects_bad_ids() {
        let long_kind = format!("{}:x", "a".repeat(33));
        let long_name = format!("k:{}", "x".repeat(1025));
        for id in [
            "eth0",
            ":x",
            "Iface:eth0",
            "1face:x",
            "iface:",
            "iface:a\0b",
            "iface:a\nb",
            "if ace:x",
            &long_kind,
            &long_name,
        ] {
            assert!(ElementId::parse(id).is_err(), "{id:?}");
        }
        assert!(ElementId::parse(&format!("k:{}", "é".repeat(512))).is_ok());
    }

    #[test]
    fn chain_names() {
        assert!(ChainName::parse("host1").is_ok());
        assert!(ChainName::parse("db-01.example_com").is_ok());
        for bad in ["", "-x", "a/b", "a b", ".."] {
            assert!(ChainName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
