//! Verification of a chain's logs, as a pure function of their bytes.
//!
//! Like a parser that never fails, the verifier always returns a full
//! [`Report`]: everything it could check, and every problem it found, each
//! naming the block, element or event at fault.

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;
use serde_json::Value;

use crate::merkle::{leaf_hash, MerkleLevels};
use crate::{
    jcs, state_hash, BlockHash, BlockHeader, ChainName, Digest, ElementId, Event, EventHash,
    EventsRoot, State, StateHash, StateRoot, StateTree,
};

/// One thing verification found wrong.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Problem {
    /// A file or directory could not be read.
    Unreadable {
        place: String,
        message: String,
    },
    /// An events.log line that does not parse, is not canonical, or whose hash is wrong.
    BadEvent {
        place: String,
        line: u64,
        message: String,
    },
    /// An event whose stored hash is not the hash of its content.
    EventHashMismatch {
        place: String,
        line: u64,
        chain_seq: u64,
        element: String,
        expected: EventHash,
        actual: EventHash,
    },
    /// A headers.log line that does not parse or is not canonical.
    BadHeader {
        place: String,
        line: u64,
        message: String,
    },
    HeaderHashMismatch {
        place: String,
        height: u64,
        expected: BlockHash,
        actual: BlockHash,
    },
    WrongChain {
        place: String,
        line: u64,
        expected: String,
        actual: String,
    },
    HeightGap {
        place: String,
        expected: u64,
        actual: u64,
    },
    HeaderLinkBroken {
        place: String,
        height: u64,
        expected: Option<BlockHash>,
        actual: Option<BlockHash>,
    },
    TimeWentBack {
        place: String,
        height: u64,
    },
    /// An event out of the chain's order: removed, inserted or reordered.
    ChainSeqGap {
        place: String,
        line: u64,
        expected: u64,
        actual: u64,
    },
    ElementSeqWrong {
        place: String,
        chain_seq: u64,
        element: String,
        expected: u64,
        actual: u64,
    },
    ElementLinkBroken {
        place: String,
        chain_seq: u64,
        element: String,
        expected: Option<EventHash>,
        actual: Option<EventHash>,
    },
    /// Replaying the operation does not give the state hash the event records.
    StateReplayMismatch {
        place: String,
        chain_seq: u64,
        element: String,
        expected: Option<StateHash>,
        actual: Option<StateHash>,
    },
    InvalidOperation {
        place: String,
        chain_seq: u64,
        element: String,
        message: String,
    },
    EventCountMismatch {
        place: String,
        height: u64,
        expected: u64,
        actual: u64,
    },
    SeqRangeMismatch {
        place: String,
        height: u64,
    },
    EventsRootMismatch {
        place: String,
        height: u64,
        expected: EventsRoot,
        actual: EventsRoot,
    },
    StateRootMismatch {
        place: String,
        height: u64,
        expected: StateRoot,
        actual: StateRoot,
    },
    /// Events after the last sealed block.
    UnsealedEvents {
        place: String,
        count: u64,
    },
    /// A state file whose name, element or content is wrong.
    BadStateFile {
        place: String,
        path: String,
        message: String,
    },
    /// A state file whose hash differs from the element's last event.
    StateFileMismatch {
        place: String,
        element: String,
        expected: Option<StateHash>,
        actual: Option<StateHash>,
    },
    /// A snapshot that is writable, missing, or does not end where the chain says.
    BadSnapshot {
        place: String,
        height: u64,
        message: String,
    },
    /// A file that differs from the same file in the rest of the chain.
    Diverges {
        place: String,
        file: String,
        message: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Problem::*;
        let opt = |h: &Option<String>| h.clone().unwrap_or_else(|| "none".into());
        match self {
            Unreadable { place, message } => write!(f, "{place}: cannot read: {message}"),
            BadEvent { place, line, message } => write!(f, "{place}: events.log line {line}: {message}"),
            EventHashMismatch { place, line, chain_seq, element, expected, actual } => write!(
                f,
                "{place}: event {chain_seq} ({element}, events.log line {line}) was changed: stored hash {expected}, content hashes to {actual}"
            ),
            BadHeader { place, line, message } => write!(f, "{place}: headers.log line {line}: {message}"),
            HeaderHashMismatch { place, height, expected, actual } => {
                write!(f, "{place}: block {height} header was changed: stored hash {expected}, content hashes to {actual}")
            }
            WrongChain { place, line, expected, actual } => {
                write!(f, "{place}: line {line} belongs to chain {actual:?}, not {expected:?}")
            }
            HeightGap { place, expected, actual } => {
                write!(f, "{place}: expected block {expected} next, found block {actual}")
            }
            HeaderLinkBroken { place, height, expected, actual } => write!(
                f,
                "{place}: block {height} links to {}, but the previous block's hash is {}",
                opt(&actual.map(|h| h.to_hex())),
                opt(&expected.map(|h| h.to_hex()))
            ),
            TimeWentBack { place, height } => write!(f, "{place}: block {height} is older than the block before it"),
            ChainSeqGap { place, line, expected, actual } => write!(
                f,
                "{place}: events.log line {line}: expected event {expected}, found event {actual} (an event was removed, inserted or reordered)"
            ),
            ElementSeqWrong { place, chain_seq, element, expected, actual } => write!(
                f,
                "{place}: event {chain_seq} is {element}'s event {actual}, expected {expected} (an event of {element} was removed, inserted or reordered)"
            ),
            ElementLinkBroken { place, chain_seq, element, expected, actual } => write!(
                f,
                "{place}: event {chain_seq} of {element} links to {}, but {element}'s previous event is {}",
                opt(&actual.map(|h| h.to_hex())),
                opt(&expected.map(|h| h.to_hex()))
            ),
            StateReplayMismatch { place, chain_seq, element, expected, actual } => write!(
                f,
                "{place}: event {chain_seq} of {element} records state {}, but replaying it gives {}",
                opt(&expected.map(|h| h.to_hex())),
                opt(&actual.map(|h| h.to_hex()))
            ),
            InvalidOperation { place, chain_seq, element, message } => {
                write!(f, "{place}: event {chain_seq} of {element} cannot be replayed: {message}")
            }
            EventCountMismatch { place, height, expected, actual } => {
                write!(f, "{place}: block {height} claims {expected} events, the log has {actual}")
            }
            SeqRangeMismatch { place, height } => {
                write!(f, "{place}: block {height}'s first_seq/last_seq do not match its events")
            }
            EventsRootMismatch { place, height, expected, actual } => {
                write!(f, "{place}: block {height} events root is {expected}, its events give {actual}")
            }
            StateRootMismatch { place, height, expected, actual } => {
                write!(f, "{place}: block {height} state root is {expected}, the states give {actual}")
            }
            UnsealedEvents { place, count } => write!(f, "{place}: {count} event(s) after the last sealed block"),
            BadStateFile { place, path, message } => write!(f, "{place}: state file {path}: {message}"),
            StateFileMismatch { place, element, expected, actual } => write!(
                f,
                "{place}: state of {element} is {}, its last event says {}",
                opt(&actual.map(|h| h.to_hex())),
                opt(&expected.map(|h| h.to_hex()))
            ),
            BadSnapshot { place, height, message } => write!(f, "{place}: block {height}: {message}"),
            Diverges { place, file, message } => write!(f, "{place}: {file} {message}"),
        }
    }
}

/// What one element looks like after replaying the log.
#[derive(Clone, Debug)]
pub struct ElementTip {
    pub seq: u64,
    pub last: EventHash,
    pub state: Option<State>,
    pub state_hash: Option<StateHash>,
}

/// The result of checking a chain's logs.
#[derive(Debug, Default)]
pub struct LogCheck {
    pub headers: Vec<BlockHeader>,
    /// Byte offset in headers.log just past each header's line.
    pub header_ends: Vec<usize>,
    /// Byte offset in events.log just past each block's last event.
    pub event_ends: Vec<usize>,
    /// Every element that ever had an event, as of the last header.
    pub tips: HashMap<ElementId, ElementTip>,
    pub events_checked: u64,
    pub problems: Vec<Problem>,
}

/// Checks headers.log and events.log of one copy of a chain (`place` names
/// it in problems): every event hash, both chains, every events root, and
/// every state root against the replayed states.
pub fn check_logs(
    place: &str,
    chain: &ChainName,
    headers_log: &[u8],
    events_log: &[u8],
) -> LogCheck {
    let mut check = LogCheck::default();
    let mut problems = Vec::new();
    let p = || place.to_owned();
    let mut tree = StateTree::default();
    let mut events = Lines::new(events_log);
    let mut next_seq = 1u64;
    let mut prev_header: Option<BlockHeader> = None;
    let mut header_lines = Lines::new(headers_log);
    while let Some((line_no, line)) = header_lines.next() {
        let header = match BlockHeader::from_canonical_unchecked(line) {
            Ok(h) => h,
            Err(e) => {
                problems.push(Problem::BadHeader {
                    place: p(),
                    line: line_no,
                    message: e.to_string(),
                });
                break;
            }
        };
        match header.computed_hash() {
            Ok(actual) if actual != header.hash => problems.push(Problem::HeaderHashMismatch {
                place: p(),
                height: header.height,
                expected: header.hash,
                actual,
            }),
            Ok(_) => {}
            Err(e) => problems.push(Problem::BadHeader {
                place: p(),
                line: line_no,
                message: e.to_string(),
            }),
        }
        if &header.chain != chain {
            problems.push(Problem::WrongChain {
                place: p(),
                line: line_no,
                expected: chain.to_string(),
                actual: header.chain.to_string(),
            });
        }
        let expected_height = prev_header.as_ref().map_or(0, |h| h.height + 1);
        if header.height != expected_height {
            problems.push(Problem::HeightGap {
                place: p(),
                expected: expected_height,
                actual: header.height,
            });
        }
        let expected_prev = prev_header.as_ref().map(|h| h.hash);
        if header.prev != expected_prev {
            problems.push(Problem::HeaderLinkBroken {
                place: p(),
                height: header.height,
                expected: expected_prev,
                actual: header.prev,
            });
        }
        if prev_header.as_ref().is_some_and(|h| h.time > header.time) {
            problems.push(Problem::TimeWentBack {
                place: p(),
                height: header.height,
            });
        }
        // The block's events.
        let mut event_leaves = Vec::new();
        let mut seqs = Vec::new();
        for _ in 0..header.event_count {
            let Some((ev_line, bytes)) = events.next() else {
                break;
            };
            check.events_checked += 1;
            if let Some((hash, seq)) = check_event(
                place,
                chain,
                ev_line,
                bytes,
                &mut next_seq,
                &mut check.tips,
                &mut tree,
                &mut problems,
            ) {
                event_leaves.push(leaf_hash(hash.digest().as_bytes()));
                seqs.push(seq);
            }
        }
        if event_leaves.len() as u64 != header.event_count {
            problems.push(Problem::EventCountMismatch {
                place: p(),
                height: header.height,
                expected: header.event_count,
                actual: event_leaves.len() as u64,
            });
        }
        if header.first_seq != seqs.first().copied() || header.last_seq != seqs.last().copied() {
            problems.push(Problem::SeqRangeMismatch {
                place: p(),
                height: header.height,
            });
        }
        let events_root = EventsRoot(MerkleLevels::from_leaves(event_leaves).root());
        if events_root != header.events_root {
            problems.push(Problem::EventsRootMismatch {
                place: p(),
                height: header.height,
                expected: header.events_root,
                actual: events_root,
            });
        }
        let state_root = tree.commit();
        if state_root != header.state_root {
            problems.push(Problem::StateRootMismatch {
                place: p(),
                height: header.height,
                expected: header.state_root,
                actual: state_root,
            });
        }
        check.header_ends.push(header_lines.offset());
        check.event_ends.push(events.offset());
        check.headers.push(header.clone());
        prev_header = Some(header);
    }
    let unsealed = events.count() as u64;
    if unsealed > 0 {
        problems.push(Problem::UnsealedEvents {
            place: p(),
            count: unsealed,
        });
    }
    check.problems = problems;
    check
}

#[allow(clippy::too_many_arguments)]
fn check_event(
    place: &str,
    chain: &ChainName,
    line_no: u64,
    bytes: &[u8],
    next_seq: &mut u64,
    tips: &mut HashMap<ElementId, ElementTip>,
    tree: &mut StateTree,
    problems: &mut Vec<Problem>,
) -> Option<(EventHash, u64)> {
    let p = || place.to_owned();
    let bad = |message: String| Problem::BadEvent {
        place: place.to_owned(),
        line: line_no,
        message,
    };
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => {
            problems.push(bad(format!("not JSON: {e}")));
            return None;
        }
    };
    match jcs::canonical(&value) {
        Ok(c) if c == bytes => {}
        Ok(_) => problems.push(bad("not in canonical form".into())),
        Err(e) => problems.push(bad(e.to_string())),
    }
    let event = match Event::from_value_unchecked(value) {
        Ok(e) => e,
        Err(e) => {
            problems.push(bad(e.to_string()));
            return None;
        }
    };
    match event.computed_hash() {
        Ok(actual) if actual != event.hash => problems.push(Problem::EventHashMismatch {
            place: p(),
            line: line_no,
            chain_seq: event.chain_seq,
            element: event.element.to_string(),
            expected: event.hash,
            actual,
        }),
        Ok(_) => {}
        Err(e) => problems.push(bad(e.to_string())),
    }
    if &event.chain != chain {
        problems.push(Problem::WrongChain {
            place: p(),
            line: line_no,
            expected: chain.to_string(),
            actual: event.chain.to_string(),
        });
    }
    if event.chain_seq != *next_seq {
        problems.push(Problem::ChainSeqGap {
            place: p(),
            line: line_no,
            expected: *next_seq,
            actual: event.chain_seq,
        });
    }
    *next_seq = event.chain_seq + 1;
    let element = event.element.to_string();
    let tip = tips.get(&event.element);
    let (expected_seq, expected_prev) = tip.map_or((1, None), |t| (t.seq + 1, Some(t.last)));
    if event.element_seq != expected_seq {
        problems.push(Problem::ElementSeqWrong {
            place: p(),
            chain_seq: event.chain_seq,
            element: element.clone(),
            expected: expected_seq,
            actual: event.element_seq,
        });
    }
    if event.prev != expected_prev {
        problems.push(Problem::ElementLinkBroken {
            place: p(),
            chain_seq: event.chain_seq,
            element: element.clone(),
            expected: expected_prev,
            actual: event.prev,
        });
    }
    let current = tip.and_then(|t| t.state.as_ref());
    let next_state = match event.op.apply_to(current) {
        Ok(s) => s,
        Err(e) => {
            problems.push(Problem::InvalidOperation {
                place: p(),
                chain_seq: event.chain_seq,
                element: element.clone(),
                message: e.to_string(),
            });
            None
        }
    };
    let replayed = next_state.as_ref().and_then(|s| state_hash(s).ok());
    if replayed != event.state_hash {
        problems.push(Problem::StateReplayMismatch {
            place: p(),
            chain_seq: event.chain_seq,
            element,
            expected: event.state_hash,
            actual: replayed,
        });
    }
    // Continue from what the event records, so one fault is reported once.
    tree.stage(event.element.clone(), event.state_hash);
    tips.insert(
        event.element.clone(),
        ElementTip {
            seq: event.element_seq,
            last: event.hash,
            state: next_state,
            state_hash: event.state_hash,
        },
    );
    Some((event.hash, event.chain_seq))
}

/// Newline-terminated lines with 1-based numbers and byte offsets. A last
/// line without its newline is still a line (a torn write shows up as a
/// malformed line, never silently).
struct Lines<'a> {
    bytes: &'a [u8],
    offset: usize,
    line: u64,
}

impl<'a> Lines<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Lines {
            bytes,
            offset: 0,
            line: 0,
        }
    }

    fn offset(&self) -> usize {
        self.offset
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = (u64, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        let rest = &self.bytes[self.offset..];
        if rest.is_empty() {
            return None;
        }
        let (line, used) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], i + 1),
            None => (rest, rest.len()),
        };
        self.offset += used;
        self.line += 1;
        Some((self.line, line))
    }
}

/// The root of a set of `(element, state hash)` pairs read from state files.
pub fn state_root_of(entries: impl IntoIterator<Item = (ElementId, StateHash)>) -> StateRoot {
    StateTree::from_entries(entries).root()
}

/// Hash of raw state-file bytes (the state's canonical JSON).
pub fn state_file_hash(bytes: &[u8]) -> StateHash {
    StateHash(Digest::of(bytes))
}
