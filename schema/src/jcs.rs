//! RFC 8785 JSON Canonicalization Scheme (JCS) over `serde_json::Value`.
//!
//! Every hash fschain computes is a hash of these bytes, so this module is the
//! compatibility boundary: object members sorted by their UTF-16 code units,
//! no insignificant white space, strings escaped the way ECMAScript's
//! `JSON.stringify` escapes them, numbers printed the way ECMAScript prints a
//! double. `docs/encoding.md` states it byte by byte.

use serde_json::{Map, Number, Value};

use crate::SchemaError;

/// The largest integer an IEEE 754 double holds exactly (2^53).
pub const MAX_EXACT_INTEGER: u64 = 1 << 53;

/// The canonical bytes of `value`.
///
/// Fails only for numbers that a double cannot hold exactly (integers beyond
/// ±2^53): JCS would silently round them, so fschain refuses them instead.
pub fn canonical(value: &Value) -> Result<Vec<u8>, SchemaError> {
    let mut out = Vec::with_capacity(256);
    write_value(&mut out, value)?;
    Ok(out)
}

/// The canonical bytes of a JSON object.
pub fn canonical_object(map: &Map<String, Value>) -> Result<Vec<u8>, SchemaError> {
    let mut out = Vec::with_capacity(256);
    write_object(&mut out, map)?;
    Ok(out)
}

pub(crate) fn write_value(out: &mut Vec<u8>, value: &Value) -> Result<(), SchemaError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(out, n)?,
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item)?;
            }
            out.push(b']');
        }
        Value::Object(map) => write_object(out, map)?,
    }
    Ok(())
}

fn write_object(out: &mut Vec<u8>, map: &Map<String, Value>) -> Result<(), SchemaError> {
    let mut members: Vec<(&String, &Value)> = map.iter().collect();
    // serde_json's map is ordered by UTF-8 bytes, which equals UTF-16 order
    // unless a key holds characters above U+FFFF; sort only when needed.
    if members
        .iter()
        .any(|(k, _)| k.chars().any(|c| c > '\u{ffff}'))
    {
        members.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));
    } else if !members.is_sorted_by(|(a, _), (b, _)| a.as_bytes() <= b.as_bytes()) {
        members.sort_by(|(a, _), (b, _)| a.as_bytes().cmp(b.as_bytes()));
    }
    out.push(b'{');
    for (i, (key, value)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(out, key);
        out.push(b':');
        write_value(out, value)?;
    }
    out.push(b'}');
    Ok(())
}

/// A JSON string as JCS writes it.
pub fn write_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x09 => b"\\t",
            0x0a => b"\\n",
            0x0c => b"\\f",
            0x0d => b"\\r",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 0xf) as usize]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn write_number(out: &mut Vec<u8>, n: &Number) -> Result<(), SchemaError> {
    let inexact = || SchemaError::InexactNumber {
        number: n.to_string(),
    };
    let big = match (n.as_u64(), n.as_i64()) {
        (Some(u), _) if u <= MAX_EXACT_INTEGER => Some(u.to_string()),
        (_, Some(i)) if i.unsigned_abs() <= MAX_EXACT_INTEGER => Some(i.to_string()),
        _ => None,
    };
    if let Some(text) = big {
        out.extend_from_slice(text.as_bytes());
        return Ok(());
    }
    // JSON numbers are doubles (RFC 8785). A larger integer is accepted
    // when the double nearest to it prints as the same text (as a double's
    // own output, e.g. 5344924802405809000, does); otherwise it would be
    // silently rounded, so it is refused.
    let f = match (n.as_u64(), n.as_i64()) {
        (Some(u), _) => u as f64,
        (_, Some(i)) => i as f64,
        _ => n.as_f64().filter(|f| f.is_finite()).ok_or_else(inexact)?,
    };
    if n.is_f64() {
        return write_double(out, f);
    }
    let mut buffer = ryu_js::Buffer::new();
    let text = buffer.format_finite(f);
    if text != n.to_string() {
        return Err(inexact());
    }
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

fn write_double(out: &mut Vec<u8>, f: f64) -> Result<(), SchemaError> {
    if f == 0.0 {
        // ECMAScript prints -0 as "0".
        out.push(b'0');
    } else {
        let mut buffer = ryu_js::Buffer::new();
        out.extend_from_slice(buffer.format_finite(f).as_bytes());
    }
    Ok(())
}

/// How deep [`is_canonical`] follows nested values before it gives up:
/// below serde_json's own limit (128), so it never accepts what a parse
/// would refuse.
const MAX_DEPTH: u32 = 64;

/// Whether `bytes` is exactly the canonical form of the JSON value it
/// holds: what [`canonical`] would write for it. Reads the bytes without
/// building a value.
///
/// Any doubt answers `false`, so a caller that falls back to parsing and
/// re-encoding on `false` gets the same verdict either way.
pub fn is_canonical(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok() && value_end(bytes, 0, 0) == Some(bytes.len())
}

/// The members of a canonical JSON object, as `(key, value)` spans of
/// `bytes`: each key without its quotes, each value exactly as written.
/// `None` when `bytes` is not one canonical object (with no bytes after
/// it); the caller must have checked that `bytes` is UTF-8.
pub(crate) fn members(bytes: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let mut found = Vec::with_capacity(12);
    let end = object_end(bytes, 0, 0, &mut |key, value| {
        found.push((key, value));
        true
    })?;
    (end == bytes.len()).then_some(found)
}

/// The first `n` members (or all, when fewer) of the canonical JSON object
/// that `bytes` starts with, as [`members`] gives them, read without
/// looking past them: nothing after them is checked.
pub(crate) fn first_members(bytes: &[u8], n: usize) -> Option<Vec<(&[u8], &[u8])>> {
    let mut found = Vec::with_capacity(n);
    if n > 0 {
        object_end(bytes, 0, 0, &mut |key, value| {
            found.push((key, value));
            found.len() < n
        })?;
    }
    Some(found)
}

/// Where the canonical value that starts at `at` ends.
fn value_end(bytes: &[u8], at: usize, depth: u32) -> Option<usize> {
    match *bytes.get(at)? {
        b'{' => object_end(bytes, at, depth, &mut |_, _| true),
        b'[' => {
            if depth >= MAX_DEPTH {
                return None;
            }
            let mut at = at + 1;
            if *bytes.get(at)? == b']' {
                return Some(at + 1);
            }
            loop {
                at = value_end(bytes, at, depth + 1)?;
                match *bytes.get(at)? {
                    b',' => at += 1,
                    b']' => return Some(at + 1),
                    _ => return None,
                }
            }
        }
        b'"' => string_end(bytes, at),
        b't' => literal_end(bytes, at, b"true"),
        b'f' => literal_end(bytes, at, b"false"),
        b'n' => literal_end(bytes, at, b"null"),
        b'-' | b'0'..=b'9' => number_end(bytes, at),
        _ => None,
    }
}

/// Where the canonical object that starts at `at` ends, calling `member`
/// with each member's key and value as it goes. When `member` returns
/// false the walk stops there, unchecked beyond, and gives where that
/// member's value ends.
fn object_end<'a>(
    bytes: &'a [u8],
    at: usize,
    depth: u32,
    member: &mut dyn FnMut(&'a [u8], &'a [u8]) -> bool,
) -> Option<usize> {
    if depth >= MAX_DEPTH || *bytes.get(at)? != b'{' {
        return None;
    }
    let mut at = at + 1;
    if *bytes.get(at)? == b'}' {
        return Some(at + 1);
    }
    let mut previous: Option<&[u8]> = None;
    loop {
        if *bytes.get(at)? != b'"' {
            return None;
        }
        let key_end = string_end(bytes, at)?;
        let key = &bytes[at + 1..key_end - 1];
        if let Some(previous) = previous {
            if !key_sorts_after(key, previous)? {
                return None;
            }
        }
        previous = Some(key);
        if *bytes.get(key_end)? != b':' {
            return None;
        }
        let end = value_end(bytes, key_end + 1, depth + 1)?;
        if !member(key, &bytes[key_end + 1..end]) {
            return Some(end);
        }
        at = end;
        match *bytes.get(at)? {
            b',' => at += 1,
            b'}' => return Some(at + 1),
            _ => return None,
        }
    }
}

/// Whether the key `later` sorts strictly after `earlier` in UTF-16 code
/// units, as JCS orders members (equal keys are a duplicate member).
fn key_sorts_after(later: &[u8], earlier: &[u8]) -> Option<bool> {
    let plain = |k: &[u8]| !k.iter().any(|&b| b == b'\\' || b >= 0xf0);
    if plain(later) && plain(earlier) {
        // Without escapes or characters above U+FFFF, UTF-8 byte order is
        // UTF-16 order.
        return Some(later > earlier);
    }
    let decode = |k: &[u8]| {
        let mut quoted = Vec::with_capacity(k.len() + 2);
        quoted.push(b'"');
        quoted.extend_from_slice(k);
        quoted.push(b'"');
        serde_json::from_slice::<String>(&quoted).ok()
    };
    let (later, earlier) = (decode(later)?, decode(earlier)?);
    Some(later.encode_utf16().cmp(earlier.encode_utf16()) == std::cmp::Ordering::Greater)
}

/// Where the canonical string that starts at `at` (its opening quote)
/// ends: only `"`, `\` and control characters escaped, each the way
/// [`write_string`] escapes it.
fn string_end(bytes: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1;
    loop {
        i = plain_run_end(bytes, i);
        match *bytes.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => {
                i += match *bytes.get(i + 1)? {
                    b'"' | b'\\' | b'b' | b't' | b'n' | b'f' | b'r' => 2,
                    b'u' => {
                        let hex = bytes.get(i + 2..i + 6)?;
                        let low = |b: u8| matches!(b, b'0'..=b'9' | b'a'..=b'f');
                        if &hex[..2] != b"00" || !matches!(hex[2], b'0' | b'1') || !low(hex[3]) {
                            return None;
                        }
                        // These have their own short escapes.
                        if matches!(&hex[2..], b"08" | b"09" | b"0a" | b"0c" | b"0d") {
                            return None;
                        }
                        6
                    }
                    _ => return None,
                }
            }
            0x00..=0x1f => return None,
            _ => i += 1,
        }
    }
}

/// Skips the bytes from `i` that a canonical string holds as they are:
/// anything but `"`, `\` and control characters. Stops at the first byte
/// that needs a closer look. (memchr's vector search for the two, then a
/// check of the run for control characters in blocks the compiler
/// vectorizes: a third of the time of eight bytes at a time, where a
/// large change's log lines are megabytes of string.)
fn plain_run_end(bytes: &[u8], i: usize) -> usize {
    let rest = bytes.get(i..).unwrap_or_default();
    let run = &rest[..memchr::memchr2(b'"', b'\\', rest).unwrap_or(rest.len())];
    let mut at = i;
    for block in run.chunks(64) {
        if block.iter().fold(false, |seen, &b| seen | (b < 0x20)) {
            return at + block.iter().position(|&b| b < 0x20).unwrap_or(0);
        }
        at += block.len();
    }
    at
}

fn literal_end(bytes: &[u8], at: usize, literal: &[u8]) -> Option<usize> {
    let end = at + literal.len();
    (bytes.get(at..end)? == literal).then_some(end)
}

/// Where the canonical number that starts at `at` ends. A short integer
/// is canonical when JSON's grammar allows it and it is not `-0`; any
/// other number is parsed and written again to compare.
fn number_end(bytes: &[u8], at: usize) -> Option<usize> {
    let digits = |mut i: usize| {
        let start = i;
        while bytes.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        (i > start).then_some(i)
    };
    let mut i = at + usize::from(bytes[at] == b'-');
    let int_start = i;
    i = digits(i)?;
    if bytes[int_start] == b'0' && i - int_start > 1 {
        return None;
    }
    let integer_end = i;
    if bytes.get(i) == Some(&b'.') {
        i = digits(i + 1)?;
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(bytes.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        i = digits(i)?;
    }
    let text = &bytes[at..i];
    if i == integer_end && integer_end - int_start <= 15 && text != b"-0" {
        return Some(i);
    }
    let value: Value = serde_json::from_slice(text).ok()?;
    (canonical(&value).ok()? == text).then_some(i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn jcs(v: Value) -> String {
        String::from_utf8(canonical(&v).unwrap()).unwrap()
    }

    #[test]
    fn sorts_members_and_drops_whitespace() {
        assert_eq!(
            jcs(json!({"b": 1, "a": [true, null, "x"]})),
            r#"{"a":[true,null,"x"],"b":1}"#
        );
    }

    #[test]
    fn rfc8785_number_examples() {
        // From RFC 8785 appendix B.
        let cases = [
            (0.0, "0"),
            (-0.0, "0"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (9007199254740992.0, "9007199254740992"),
            (1e21, "1e+21"),
            (999999999999999900000.0, "999999999999999900000"),
            (0.000001, "0.000001"),
            (1e-7, "1e-7"),
            (333333333.3333333, "333333333.3333333"),
            (-1.5, "-1.5"),
        ];
        for (f, want) in cases {
            assert_eq!(jcs(json!(f)), want, "{f:e}");
        }
    }

    #[test]
    fn rfc8785_sorting_example_utf16_order() {
        // RFC 8785 section 3.2.3: sorted by UTF-16 code units, so U+1F600 (a
        // surrogate pair, 0xD83D...) sorts before U+FB33 and after "\r".
        let v: Value = serde_json::from_str(
            r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#,
        )
        .unwrap();
        let values: Vec<&str> = {
            let text = jcs(v.clone());
            let back: Value = serde_json::from_str(&text).unwrap();
            let _ = back;
            let order = [
                "Carriage Return",
                "One",
                "Control",
                "Latin Small Letter O With Diaeresis",
                "Euro Sign",
                "Emoji: Grinning Face",
                "Hebrew Letter Dalet With Dagesh",
            ];
            let positions: Vec<usize> = order.iter().map(|s| text.find(s).unwrap()).collect();
            assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
            order.to_vec()
        };
        assert_eq!(values.len(), 7);
    }

    #[test]
    fn escapes_like_json_stringify() {
        assert_eq!(
            jcs(json!("a\"b\\c\u{8}\u{c}\n\r\t\u{1}\u{7f}é\u{2028}")),
            "\"a\\\"b\\\\c\\b\\f\\n\\r\\t\\u0001\u{7f}é\u{2028}\""
        );
    }

    #[test]
    fn the_word_at_a_time_string_scan_sees_every_special_byte() {
        // Each byte that ends or escapes a string, or is refused in one, at
        // every position of the eight-byte words the scan reads.
        for special in [
            "\"", "\\", "\\n", "\\u0001", "\\u000a", "\n", "\u{1f}", "\u{7f}", "é",
        ] {
            for at in 0..20 {
                let mut text = "x".repeat(20);
                text.insert_str(at, special);
                let line = format!("{{\"k\":\"{text}\"}}");
                let expected = serde_json::from_str::<Value>(&line)
                    .ok()
                    .and_then(|v| canonical(&v).ok())
                    .is_some_and(|c| c == line.as_bytes());
                assert_eq!(is_canonical(line.as_bytes()), expected, "{line:?}");
            }
        }
    }

    #[test]
    fn refuses_integers_a_double_cannot_hold() {
        let v: Value = serde_json::from_str("9007199254740993").unwrap();
        assert!(matches!(
            canonical(&v),
            Err(SchemaError::InexactNumber { .. })
        ));
        let v: Value = serde_json::from_str("-9007199254740993").unwrap();
        assert!(matches!(
            canonical(&v),
            Err(SchemaError::InexactNumber { .. })
        ));
        assert_eq!(jcs(json!(9007199254740992u64)), "9007199254740992");
    }
}
