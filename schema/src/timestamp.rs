//! Times as fschain records them: UTC, microsecond precision.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::SchemaError;

/// Microseconds since the Unix epoch, written as
/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (always six fraction digits, always `Z`),
/// so that the text of a time is canonical.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp(i64);

impl Timestamp {
    pub const fn from_micros(micros: i64) -> Self {
        Timestamp(micros)
    }

    pub fn as_micros(self) -> i64 {
        self.0
    }

    /// Parses any RFC 3339 time (any offset, any fraction), rounding down
    /// to the microsecond.
    pub fn parse_rfc3339(text: &str) -> Result<Self, SchemaError> {
        let bad = || SchemaError::BadTime {
            text: text.chars().take(80).collect(),
        };
        let t = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| bad())?;
        let micros = t.unix_timestamp_nanos().div_euclid(1000);
        i64::try_from(micros).map(Timestamp).map_err(|_| bad())
    }

    /// Parses the canonical form only; anything else is not what fschain wrote.
    pub fn parse_canonical(text: &str) -> Result<Self, SchemaError> {
        let t = Self::parse_rfc3339(text)?;
        if t.to_string() == text {
            Ok(t)
        } else {
            Err(SchemaError::BadTime {
                text: text.chars().take(80).collect(),
            })
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = i128::from(self.0) * 1000;
        match OffsetDateTime::from_unix_timestamp_nanos(nanos) {
            Ok(t) => write!(
                f,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.microsecond()
            ),
            Err(_) => write!(f, "@{}us", self.0),
        }
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({self})")
    }
}

impl FromStr for Timestamp {
    type Err = SchemaError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Timestamp::parse_rfc3339(s)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Timestamp::parse_canonical(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_text_round_trips() {
        let t = Timestamp::parse_rfc3339("2026-11-21T10:47:42.5+02:00").unwrap();
        assert_eq!(t.to_string(), "2026-11-21T08:47:42.500000Z");
        assert_eq!(Timestamp::parse_canonical(&t.to_string()).unwrap(), t);
        assert!(Timestamp::parse_canonical("2026-11-21T08:47:42.5Z").is_err());
        assert_eq!(
            Timestamp::from_micros(0).to_string(),
            "1970-01-01T00:00:00.000000Z"
        );
        assert!(Timestamp::parse_rfc3339("yesterday").is_err());
    }
}
