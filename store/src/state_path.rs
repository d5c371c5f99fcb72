//! Where an element's state file lives in a layer: a path that can never
//! escape `states/`, whatever the element's name.
//!
//! `states/<kind>/<name, percent-encoded>`: every byte but `A-Z a-z 0-9 _ . -`
//! becomes `%XX` (so `/` can never separate directories), and a component
//! starting with `.` has that dot encoded (so `.` and `..` never appear).
//! Encoded names over 200 bytes are cut into 200-byte pieces: every piece but
//! the last is a directory whose name ends in `+` (a character the encoding
//! never leaves bare), so the longest name (1024 bytes, 3072 encoded) stays
//! far below PATH_MAX and every component below NAME_MAX.

use std::path::{Path, PathBuf};

use fschain_schema::{is_valid_kind, ElementId};

pub const STATES_DIR: &str = "states";
const PIECE: usize = 200;

/// The state file of `element`, relative to the chain directory.
pub fn state_path(element: &ElementId) -> PathBuf {
    let mut path = PathBuf::from(STATES_DIR);
    path.push(element.kind());
    let encoded = encode(element.name());
    let pieces = split_pieces(&encoded);
    let last = pieces.len() - 1;
    for (i, piece) in pieces.into_iter().enumerate() {
        let mut component = guard_dot(piece);
        if i < last {
            component.push('+');
        }
        path.push(component);
    }
    path
}

/// The element whose state file is at `relative` (a path under `states/`,
/// as [`state_path`] makes them), or `None` if no element's file is there.
pub fn element_of(relative: &Path) -> Option<ElementId> {
    if let Some(element) = bare_element_of(relative) {
        return Some(element);
    }
    let mut components = relative.components();
    if components.next()?.as_os_str() != STATES_DIR {
        return None;
    }
    let kind = components.next()?.as_os_str().to_str()?;
    if !is_valid_kind(kind) {
        return None;
    }
    let rest: Vec<&str> = components
        .map(|c| c.as_os_str().to_str())
        .collect::<Option<_>>()?;
    let (last, dirs) = rest.split_last()?;
    let mut encoded = String::new();
    for dir in dirs {
        encoded.push_str(dir.strip_suffix('+')?);
    }
    encoded.push_str(last);
    let name = decode(&encoded)?;
    let element = ElementId::parse(&format!("{kind}:{name}")).ok()?;
    // Only the one canonical path per element counts.
    (state_path(&element) == relative).then_some(element)
}

/// [`element_of`] for the usual path, `states/<kind>/<name>` with a name
/// that encodes to itself: one short component of bytes the encoding leaves
/// bare, not starting with a dot. Such a path is that element's canonical
/// one, and it is read without splitting it into components.
fn bare_element_of(relative: &Path) -> Option<ElementId> {
    use std::os::unix::ffi::OsStrExt;
    let rest = relative
        .as_os_str()
        .as_bytes()
        .strip_prefix(STATES_DIR.as_bytes())?
        .strip_prefix(b"/")?;
    let slash = rest.iter().position(|&b| b == b'/')?;
    let (kind, name) = (&rest[..slash], &rest[slash + 1..]);
    let bare = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-');
    if name.is_empty() || name.len() > PIECE || name[0] == b'.' || !name.iter().all(bare) {
        return None;
    }
    let kind = std::str::from_utf8(kind)
        .ok()
        .filter(|k| is_valid_kind(k))?;
    let mut text = String::with_capacity(kind.len() + 1 + name.len());
    text.push_str(kind);
    text.push(':');
    // All ASCII, checked just above.
    text.push_str(std::str::from_utf8(name).ok()?);
    ElementId::parse_owned(text).ok()
}

fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for &b in name.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode(encoded: &str) -> Option<String> {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = encoded.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn split_pieces(encoded: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = encoded;
    while rest.len() > PIECE {
        let mut cut = PIECE;
        // Never cut inside a %XX triple.
        for back in 1..=2 {
            if rest.as_bytes()[cut - back] == b'%' {
                cut -= back;
                break;
            }
        }
        pieces.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    pieces.push(rest);
    pieces
}

fn guard_dot(piece: &str) -> String {
    match piece.strip_prefix('.') {
        Some(rest) => format!("%2E{rest}"),
        None => piece.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::Component;

    fn id(s: &str) -> ElementId {
        ElementId::parse(s).unwrap()
    }

    #[test]
    fn readable_for_common_names() {
        assert_eq!(
            state_path(&id("iface:eth0")),
            Path::new("states/iface/eth0")
        );
        assert_eq!(
            state_path(&id("file:/etc/passwd")),
            Path::new("states/file/%2Fetc%2Fpasswd")
        );
        assert_eq!(state_path(&id("k:..")), Path::new("states/k/%2E."));
        assert_eq!(
            state_path(&id("k:../../etc/shadow")),
            Path::new("states/k/%2E.%2F..%2Fetc%2Fshadow")
        );
    }

    proptest! {
        #[test]
        fn never_escapes_and_round_trips(name in "[^\\x00-\\x1f\\x7f\\u{80}-\\u{9f}]{1,300}") {
            prop_assume!(name.len() <= 1024);
            let element = id(&format!("file:{name}"));
            let path = state_path(&element);
            for c in path.components() {
                prop_assert!(matches!(c, Component::Normal(_)), "{:?}", path);
                prop_assert!(c.as_os_str().len() <= 255);
            }
            prop_assert!(path.starts_with("states/file"));
            prop_assert_eq!(element_of(&path), Some(element));
        }
    }

    proptest! {
        /// Only an element's one canonical path names it.
        #[test]
        fn a_path_names_an_element_only_if_it_is_its_path(
            kind in "[a-z][a-z0-9-]{0,3}|Iface|-x",
            parts in proptest::collection::vec("[a-zA-Z0-9_.%+-]{0,6}|%2[Ee]|\\.", 1..3),
        ) {
            let mut path = std::path::PathBuf::from(STATES_DIR);
            path.push(&kind);
            for part in &parts {
                path.push(part);
            }
            if let Some(element) = element_of(&path) {
                prop_assert_eq!(state_path(&element), path);
            }
        }
    }

    #[test]
    fn longest_names_fit() {
        let element = id(&format!("k:{}", "/".repeat(1024)));
        let path = state_path(&element);
        assert!(path.as_os_str().len() < 4000);
        assert_eq!(element_of(&path), Some(element));
    }

    #[test]
    fn foreign_paths_name_no_element() {
        for p in [
            "states/iface/eth%2",
            "states/Iface/eth0",
            "states/iface/a%2fb",
            "other/iface/eth0",
            "states/iface/x+/y",
        ] {
            assert_eq!(element_of(Path::new(p)), None, "{p}");
        }
    }
}
