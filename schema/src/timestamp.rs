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
        if let Some(t) = Self::read_canonical(text.as_bytes()) {
            return Ok(t);
        }
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

impl Timestamp {
    /// Reads `YYYY-MM-DDTHH:MM:SS.ffffffZ` field by field: what
    /// [`Timestamp::parse_canonical`] accepts, without parsing and
    /// printing the time again. `None` for anything else, which then takes
    /// the long way to its verdict.
    fn read_canonical(text: &[u8]) -> Option<Self> {
        const SHAPE: &[u8; 27] = b"dddd-dd-ddTdd:dd:dd.ddddddZ";
        if text.len() != SHAPE.len() {
            return None;
        }
        let mut value = 0u64;
        let mut fields = [0u64; 7];
        let mut field = 0;
        for (&b, &want) in text.iter().zip(SHAPE) {
            if want == b'd' {
                if !b.is_ascii_digit() {
                    return None;
                }
                value = value * 10 + u64::from(b - b'0');
            } else {
                if b != want {
                    return None;
                }
                fields[field] = value;
                field += 1;
                value = 0;
            }
        }
        let [year, month, day, hour, minute, second, micros] = fields;
        let month = time::Month::try_from(u8::try_from(month).ok()?).ok()?;
        let date = time::Date::from_calendar_date(
            i32::try_from(year).ok()?,
            month,
            u8::try_from(day).ok()?,
        )
        .ok()?;
        let time = time::Time::from_hms_micro(
            u8::try_from(hour).ok()?,
            u8::try_from(minute).ok()?,
            u8::try_from(second).ok()?,
            u32::try_from(micros).ok()?,
        )
        .ok()?;
        let nanos = date.with_time(time).assume_utc().unix_timestamp_nanos();
        i64::try_from(nanos.div_euclid(1000)).ok().map(Timestamp)
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

    /// The long way: parse any RFC 3339 time, then print it again.
    fn parsed_and_printed(text: &str) -> Option<Timestamp> {
        Timestamp::parse_rfc3339(text)
            .ok()
            .filter(|t| t.to_string() == text)
    }

    proptest::proptest! {
        #[test]
        fn field_reader_agrees_with_parsing_and_printing(
            micros in -62_000_000_000_000_000i64..253_000_000_000_000_000,
            digits in proptest::collection::vec(0u8..10, 20),
            edits in proptest::collection::vec((0usize..27, 0u8..10), 0..3),
        ) {
            let t = Timestamp::from_micros(micros);
            let text = t.to_string();
            proptest::prop_assert_eq!(Timestamp::read_canonical(text.as_bytes()), Some(t));
            // Any digits in the shape, valid dates or not (month 13, hour 24,
            // second 60, 31 April...).
            let mut shaped = *b"dddd-dd-ddTdd:dd:dd.ddddddZ";
            let mut next = digits.iter();
            for b in shaped.iter_mut().filter(|b| **b == b'd') {
                *b = b'0' + next.next().copied().unwrap_or(0);
            }
            for (at, digit) in edits {
                if shaped[at].is_ascii_digit() {
                    shaped[at] = b'0' + digit;
                }
            }
            let text = String::from_utf8(shaped.to_vec()).unwrap();
            proptest::prop_assert_eq!(Timestamp::read_canonical(shaped.as_slice()), parsed_and_printed(&text), "{}", text);
        }
    }
}
