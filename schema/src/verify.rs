//! Verification of a chain's logs, as a pure function of their bytes.
//!
//! Like a parser that never fails, the verifier always returns a full
//! [`Report`]: everything it could check, and every problem it found, each
//! naming the block, element or event at fault.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde::Serialize;
use serde_json::Value;

use crate::merkle::{leaf_hash, MerkleLevels};
use crate::{
    jcs, merge_patch, Action, BlockHash, BlockHeader, ChainName, Digest, ElementId, Event,
    EventHash, EventLine, EventsRoot, State, StateHash, StateRoot, StateTree,
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

/// States whose canonical JSON is larger than this are not held in memory
/// while the log is replayed: the checker keeps the byte offsets of the
/// events that produced them and reads those lines again when a `patch`
/// needs the state. The writer's open block does the same. Memory stays
/// bounded whatever the states weigh.
pub const LARGE_STATE_BYTES: usize = 64 * 1024;

/// What one element looks like after replaying the log.
#[derive(Clone, Debug)]
pub struct ElementTip {
    pub seq: u64,
    pub last: EventHash,
    pub state: ReplayedState,
    pub state_hash: Option<StateHash>,
}

/// An element's replayed state, as the checker keeps it.
#[derive(Clone, Debug)]
pub enum ReplayedState {
    /// Deleted, or never replayed successfully.
    Absent,
    /// Held as its canonical JSON (compact; parsed when a `patch` needs it).
    Held(Vec<u8>),
    /// Too large to hold: read again and replayed when a `patch` needs it.
    Spilled(SpilledState),
}

/// How to rebuild a state too large to hold: start from `base` (the
/// canonical JSON of the held state it grew from, at most
/// [`LARGE_STATE_BYTES`] bytes, or nothing when a `set` made it) and apply the
/// operations of the events.log lines at `events`, in order.
#[derive(Clone, Debug)]
pub struct SpilledState {
    pub base: Option<Vec<u8>>,
    pub events: Vec<u64>,
}

/// The result of checking a chain's logs.
#[derive(Clone, Debug, Default)]
pub struct LogCheck {
    pub headers: Vec<BlockHeader>,
    /// Byte offset in headers.log just past each header's line.
    pub header_ends: Vec<u64>,
    /// Byte offset in events.log just past each block's last event.
    pub event_ends: Vec<u64>,
    /// Every element that ever had an event, as of the last header.
    pub tips: HashMap<ElementId, ElementTip>,
    pub events_checked: u64,
    pub problems: Vec<Problem>,
}

/// One log read line by line, in order. The store reads files through it,
/// one line in memory at a time; [`SliceLines`] reads bytes in memory.
pub trait LineSource {
    type Error: fmt::Display;
    /// The next line without its newline, or `None` at the end. A last
    /// line without its newline is still a line (a torn write shows up as a
    /// malformed line, never silently).
    fn next_line(&mut self) -> Result<Option<&[u8]>, Self::Error>;
    /// Byte offset just past the last line returned (and its newline).
    fn offset(&self) -> u64;
}

/// Reads one line of events.log again, by the byte offset it starts at.
pub trait LineAt {
    type Error: fmt::Display;
    fn line_at(&mut self, offset: u64) -> Result<Vec<u8>, Self::Error>;
}

/// Checks headers.log and events.log of one copy of a chain held in memory
/// (`place` names it in problems). See [`check_log_lines`].
pub fn check_logs(
    place: &str,
    chain: &ChainName,
    headers_log: &[u8],
    events_log: &[u8],
) -> LogCheck {
    check_log_lines(
        place,
        chain,
        &mut SliceLines::new(headers_log),
        &mut SliceLines::new(events_log),
        &mut SliceLines::new(events_log),
    )
}

/// Checks the logs of one copy of a chain, read line by line: every event
/// hash, both chains, every events root, and every state root against the
/// replayed states. `events_at` reads an events.log line again (for
/// patches of states larger than [`LARGE_STATE_BYTES`]).
pub fn check_log_lines<H: LineSource, E: LineSource, A: LineAt>(
    place: &str,
    chain: &ChainName,
    headers: &mut H,
    events: &mut E,
    events_at: &mut A,
) -> LogCheck {
    let mut checker = LogChecker::new(place, chain);
    checker.feed_blocks(headers, events, events_at);
    checker.check_end(events);
    checker.into_report()
}

/// The log verifier as a state machine. Fed a copy's logs from the start it
/// checks them in full; fed later what a newer copy appended to those same
/// logs (line sources that start where the last block ended, with the same
/// byte offsets), it checks only that, from the states it has replayed. A
/// site keeps one per chain, so verifying a received block costs what the
/// block adds, not the whole history.
#[derive(Clone, Debug)]
pub struct LogChecker {
    place: String,
    chain: ChainName,
    tree: StateTree,
    next_seq: u64,
    prev_header: Option<BlockHeader>,
    header_line: u64,
    event_line: u64,
    check: LogCheck,
}

impl LogChecker {
    pub fn new(place: &str, chain: &ChainName) -> Self {
        LogChecker {
            place: place.to_owned(),
            chain: chain.clone(),
            tree: StateTree::default(),
            next_seq: 1,
            prev_header: None,
            header_line: 0,
            event_line: 0,
            check: LogCheck::default(),
        }
    }

    /// Names the copy in the problems found from now on.
    pub fn set_place(&mut self, place: &str) {
        place.clone_into(&mut self.place);
    }

    /// What has been checked and found so far.
    pub fn report(&self) -> &LogCheck {
        &self.check
    }

    pub fn into_report(self) -> LogCheck {
        self.check
    }

    /// Checks every header line left in `headers` and, for each, its events
    /// from `events`, which is left just past the last block's events.
    pub fn feed_blocks<H: LineSource, E: LineSource, A: LineAt>(
        &mut self,
        headers: &mut H,
        events: &mut E,
        events_at: &mut A,
    ) {
        let place = self.place.as_str();
        let chain = &self.chain;
        let check = &mut self.check;
        let problems = &mut check.problems;
        let p = || place.to_owned();
        let tree = &mut self.tree;
        let next_seq = &mut self.next_seq;
        let prev_header = &mut self.prev_header;
        let header_line = &mut self.header_line;
        let event_line = &mut self.event_line;
        while let Some(line) = next_line(headers, place, "headers.log", problems) {
            *header_line += 1;
            let header = match BlockHeader::from_canonical_unchecked(line) {
                Ok(h) => h,
                Err(e) => {
                    problems.push(Problem::BadHeader {
                        place: p(),
                        line: *header_line,
                        message: e.to_string(),
                    });
                    break;
                }
            };
            let line_no = *header_line;
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
                let start = events.offset();
                let Some(bytes) = next_line(events, place, "events.log", problems) else {
                    break;
                };
                *event_line += 1;
                check.events_checked += 1;
                let at = EventAt {
                    place,
                    line: *event_line,
                    offset: start,
                };
                if let Some((hash, seq)) = check_event(
                    &at,
                    chain,
                    bytes,
                    next_seq,
                    &mut check.tips,
                    tree,
                    events_at,
                    problems,
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
            if header.first_seq != seqs.first().copied() || header.last_seq != seqs.last().copied()
            {
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
            check.header_ends.push(headers.offset());
            check.event_ends.push(events.offset());
            check.headers.push(header.clone());
            *prev_header = Some(header);
        }
    }

    /// Checks that `events` holds nothing after the last block's events.
    pub fn check_end<E: LineSource>(&mut self, events: &mut E) {
        let mut unsealed = 0u64;
        while next_line(events, &self.place, "events.log", &mut self.check.problems).is_some() {
            unsealed += 1;
        }
        if unsealed > 0 {
            self.check.problems.push(Problem::UnsealedEvents {
                place: self.place.clone(),
                count: unsealed,
            });
        }
    }
}

/// The next line of `source`, or `None` at its end or when it cannot be
/// read (noted as a problem of `file`).
fn next_line<'s, S: LineSource>(
    source: &'s mut S,
    place: &str,
    file: &str,
    problems: &mut Vec<Problem>,
) -> Option<&'s [u8]> {
    match source.next_line() {
        Ok(line) => line,
        Err(e) => {
            problems.push(Problem::Unreadable {
                place: place.to_owned(),
                message: format!("{file}: {e}"),
            });
            None
        }
    }
}

/// Where the event being checked is.
struct EventAt<'a> {
    place: &'a str,
    line: u64,
    offset: u64,
}

/// What the checker takes from one event line, read the fast way
/// ([`EventLine`]) or, when that refuses the line, by parsing it.
struct ReadEvent<'a> {
    chain: ChainName,
    element: ElementId,
    element_seq: u64,
    prev: Option<EventHash>,
    chain_seq: u64,
    action: Action,
    /// The operation's state as canonical JSON (`None` for `delete`).
    state: Option<Cow<'a, [u8]>>,
    state_hash: Option<StateHash>,
    hash: EventHash,
}

impl<'a> ReadEvent<'a> {
    /// Reads a line, pushing what is wrong with its form or its hash;
    /// `None` when it cannot be read as an event at all.
    fn read(
        bytes: &'a [u8],
        bad: impl Fn(String) -> Problem,
        problems: &mut Vec<Problem>,
        place: &str,
        line: u64,
    ) -> Option<Self> {
        if let Some(fast) = EventLine::read(bytes) {
            return Some(ReadEvent {
                chain: fast.chain,
                element: fast.element,
                element_seq: fast.element_seq,
                prev: fast.prev,
                chain_seq: fast.chain_seq,
                action: fast.action,
                state: fast.state.map(Cow::Borrowed),
                state_hash: fast.state_hash,
                hash: fast.hash,
            });
        }
        let value: Value = match serde_json::from_slice(bytes) {
            Ok(v) => v,
            Err(e) => {
                problems.push(bad(format!("not JSON: {e}")));
                return None;
            }
        };
        let event = match Event::from_value_unchecked(value) {
            Ok(e) => e,
            Err(e) => {
                problems.push(bad(e.to_string()));
                return None;
            }
        };
        match event.recompute() {
            Ok((actual, canonical)) => {
                if canonical != bytes {
                    problems.push(bad("not in canonical form".into()));
                }
                if actual != event.hash {
                    problems.push(Problem::EventHashMismatch {
                        place: place.to_owned(),
                        line,
                        chain_seq: event.chain_seq,
                        element: event.element.to_string(),
                        expected: event.hash,
                        actual,
                    });
                }
            }
            Err(e) => problems.push(bad(e.to_string())),
        }
        Some(ReadEvent {
            // A state that cannot be encoded was reported just above.
            state: event
                .op
                .state
                .as_ref()
                .and_then(|s| jcs::canonical_object(s).ok())
                .map(Cow::Owned),
            chain: event.chain,
            element: event.element,
            element_seq: event.element_seq,
            prev: event.prev,
            chain_seq: event.chain_seq,
            action: event.op.action,
            state_hash: event.state_hash,
            hash: event.hash,
        })
    }
}

#[allow(clippy::too_many_arguments)]
fn check_event(
    at: &EventAt<'_>,
    chain: &ChainName,
    bytes: &[u8],
    next_seq: &mut u64,
    tips: &mut HashMap<ElementId, ElementTip>,
    tree: &mut StateTree,
    events_at: &mut impl LineAt,
    problems: &mut Vec<Problem>,
) -> Option<(EventHash, u64)> {
    let place = at.place;
    let line_no = at.line;
    let p = || place.to_owned();
    let bad = |message: String| Problem::BadEvent {
        place: place.to_owned(),
        line: line_no,
        message,
    };
    let event = ReadEvent::read(bytes, bad, problems, place, line_no)?;
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
    let element = || event.element.to_string();
    let tip = tips.remove(&event.element);
    let (expected_seq, expected_prev) = tip
        .as_ref()
        .map_or((1, None), |t| (t.seq + 1, Some(t.last)));
    if event.element_seq != expected_seq {
        problems.push(Problem::ElementSeqWrong {
            place: p(),
            chain_seq: event.chain_seq,
            element: element(),
            expected: expected_seq,
            actual: event.element_seq,
        });
    }
    if event.prev != expected_prev {
        problems.push(Problem::ElementLinkBroken {
            place: p(),
            chain_seq: event.chain_seq,
            element: element(),
            expected: expected_prev,
            actual: event.prev,
        });
    }
    let previous = tip.map_or(ReplayedState::Absent, |t| t.state);
    // How a large result would be rebuilt: a `set` needs nothing before it;
    // a `patch` needs the state it patched.
    let mut rebuild = SpilledState {
        base: None,
        events: Vec::new(),
    };
    let patch = event.state.as_deref();
    let next: Result<Option<Cow<'_, [u8]>>, String> = match (event.action, previous) {
        (Action::Patch | Action::Delete, ReplayedState::Absent) => {
            Err(crate::SchemaError::NoSuchElement {
                element: element(),
                action: event.action,
            }
            .to_string())
        }
        (Action::Set, _) => Ok(event.state.clone()),
        (Action::Delete, _) => Ok(None),
        (Action::Patch, ReplayedState::Held(held)) => {
            let next = parse_state(&held).and_then(|state| patched(state, patch));
            rebuild.base = Some(held);
            next.map(|n| Some(Cow::Owned(n)))
        }
        (Action::Patch, ReplayedState::Spilled(spilled)) => {
            let next = replay_spilled(events_at, &spilled).and_then(|state| patched(state, patch));
            rebuild = spilled;
            next.map(|n| Some(Cow::Owned(n)))
        }
    };
    let next = next.unwrap_or_else(|message| {
        problems.push(Problem::InvalidOperation {
            place: place.to_owned(),
            chain_seq: event.chain_seq,
            element: element(),
            message,
        });
        None
    });
    let replayed = next.as_deref().map(|c| StateHash(Digest::of(c)));
    if replayed != event.state_hash {
        problems.push(Problem::StateReplayMismatch {
            place: p(),
            chain_seq: event.chain_seq,
            element: element(),
            expected: event.state_hash,
            actual: replayed,
        });
    }
    let state = match next {
        Some(c) if c.len() <= LARGE_STATE_BYTES => ReplayedState::Held(c.into_owned()),
        Some(_) => {
            rebuild.events.push(at.offset);
            ReplayedState::Spilled(rebuild)
        }
        None => ReplayedState::Absent,
    };
    // Continue from what the event records, so one fault is reported once.
    tree.stage(event.element.clone(), event.state_hash);
    tips.insert(
        event.element,
        ElementTip {
            seq: event.element_seq,
            last: event.hash,
            state,
            state_hash: event.state_hash,
        },
    );
    Some((event.hash, event.chain_seq))
}

/// The canonical JSON of `state` after the merge patch `patch` (canonical
/// JSON of an object).
fn patched(state: State, patch: Option<&[u8]>) -> Result<Vec<u8>, String> {
    let mut state = Value::Object(state);
    if let Some(patch) = patch {
        merge_patch(&mut state, &Value::Object(parse_state(patch)?));
    }
    jcs::canonical(&state).map_err(|e| e.to_string())
}

/// Rebuilds a spilled state from its base and by reading its events again
/// (all checked before).
fn replay_spilled(events_at: &mut impl LineAt, spilled: &SpilledState) -> Result<State, String> {
    let mut state = match &spilled.base {
        None => None,
        Some(bytes) => Some(parse_state(bytes)?),
    };
    for &offset in &spilled.events {
        let line = events_at
            .line_at(offset)
            .map_err(|e| format!("reading events.log again at byte {offset}: {e}"))?;
        let event = serde_json::from_slice::<Value>(&line)
            .map_err(|e| e.to_string())
            .and_then(|v| Event::from_value_unchecked(v).map_err(|e| e.to_string()))
            .map_err(|e| format!("events.log changed while it was read, at byte {offset}: {e}"))?;
        state = event.op.apply_owned(state).map_err(|e| e.to_string())?;
    }
    state.ok_or_else(|| "its state was deleted".to_owned())
}

/// A state the checker held as canonical JSON.
fn parse_state(bytes: &[u8]) -> Result<State, String> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err("its replayed state does not parse".to_owned()),
    }
}

/// A log held in memory, read line by line.
#[derive(Debug)]
pub struct SliceLines<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> SliceLines<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        SliceLines { bytes, offset: 0 }
    }

    /// Lines from byte `offset` on (offsets still count from the start).
    pub fn from_offset(bytes: &'a [u8], offset: u64) -> Self {
        let offset = usize::try_from(offset).map_or(bytes.len(), |o| o.min(bytes.len()));
        SliceLines { bytes, offset }
    }
}

impl LineSource for SliceLines<'_> {
    type Error = std::convert::Infallible;
    fn next_line(&mut self) -> Result<Option<&[u8]>, Self::Error> {
        let rest = &self.bytes[self.offset..];
        if rest.is_empty() {
            return Ok(None);
        }
        let (line, used) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], i + 1),
            None => (rest, rest.len()),
        };
        self.offset += used;
        Ok(Some(line))
    }

    fn offset(&self) -> u64 {
        self.offset as u64
    }
}

impl LineAt for SliceLines<'_> {
    type Error = String;
    fn line_at(&mut self, offset: u64) -> Result<Vec<u8>, String> {
        let rest = usize::try_from(offset)
            .ok()
            .and_then(|o| self.bytes.get(o..))
            .ok_or_else(|| format!("offset {offset} is past the end"))?;
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        Ok(rest[..end].to_vec())
    }
}

/// The root of a set of `(element, state hash)` pairs read from state files.
pub fn state_root_of(entries: impl IntoIterator<Item = (ElementId, StateHash)>) -> StateRoot {
    // StateTree::from_entries(entries).root(), without the map and the
    // tree's kept levels: sort, keep each element's last pair, hash.
    // The position breaks ties, so the unstable (quicker) sort keeps the
    // order of one element's pairs.
    let mut entries: Vec<(ElementId, StateHash, usize)> = entries
        .into_iter()
        .enumerate()
        .map(|(i, (element, state))| (element, state, i))
        .collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.2.cmp(&b.2)));
    let mut leaves: Vec<crate::Digest> = Vec::with_capacity(entries.len());
    for (i, (element, state, _)) in entries.iter().enumerate() {
        if entries.get(i + 1).is_some_and(|next| next.0 == *element) {
            continue;
        }
        leaves.push(crate::state_tree::state_leaf_hash(element, state));
    }
    StateRoot(crate::merkle::MerkleLevels::from_leaves(leaves).root())
}

/// Hash of raw state-file bytes (the state's canonical JSON).
pub fn state_file_hash(bytes: &[u8]) -> StateHash {
    StateHash(Digest::of(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventDraft, HeaderDraft, Operation, Timestamp};
    use serde_json::json;

    /// Builds logs the way the producer writes them.
    struct LogBuilder {
        chain: ChainName,
        states: HashMap<ElementId, State>,
        tips: HashMap<ElementId, (u64, EventHash)>,
        tree: StateTree,
        seq: u64,
        prev: Option<BlockHeader>,
        headers: Vec<u8>,
        events: Vec<u8>,
    }

    impl LogBuilder {
        fn new() -> Self {
            let chain = ChainName::parse("unit").unwrap();
            let genesis = HeaderDraft::genesis(chain.clone(), Timestamp::from_micros(1))
                .seal()
                .unwrap();
            let mut headers = genesis.to_canonical().unwrap();
            headers.push(b'\n');
            LogBuilder {
                chain,
                states: HashMap::new(),
                tips: HashMap::new(),
                tree: StateTree::default(),
                seq: 0,
                prev: Some(genesis),
                headers,
                events: Vec::new(),
            }
        }

        /// Seals `ops` as one block; `lie` records a wrong state hash for
        /// the op at that index.
        fn block(&mut self, ops: &[(&str, Action, serde_json::Value)], lie: Option<usize>) {
            let mut leaves = Vec::new();
            let first = self.seq + 1;
            for (i, (element, action, state)) in ops.iter().enumerate() {
                let element = ElementId::parse(element).unwrap();
                let op = Operation {
                    element: element.clone(),
                    action: *action,
                    state: state.as_object().cloned(),
                    reason: None,
                    actor: None,
                    signature: None,
                };
                let next = op.apply_to(self.states.get(&element)).unwrap();
                let mut hash = next.as_ref().map(|s| crate::state_hash(s).unwrap());
                if lie == Some(i) {
                    hash = Some(StateHash(Digest::of(b"not the state")));
                }
                match next {
                    Some(s) => self.states.insert(element.clone(), s),
                    None => self.states.remove(&element),
                };
                self.seq += 1;
                let (element_seq, prev) = self
                    .tips
                    .get(&element)
                    .map_or((1, None), |&(s, h)| (s + 1, Some(h)));
                let (event, line) = EventDraft {
                    chain: self.chain.clone(),
                    element_seq,
                    prev,
                    chain_seq: self.seq,
                    op,
                    state_hash: hash,
                    time: Timestamp::from_micros(10 + self.seq as i64),
                }
                .seal_with_line()
                .unwrap();
                self.tips.insert(element.clone(), (element_seq, event.hash));
                self.tree.stage(element, hash);
                leaves.push(leaf_hash(event.hash.digest().as_bytes()));
                self.events.extend_from_slice(&line);
                self.events.push(b'\n');
            }
            let prev = self.prev.take().unwrap();
            let header = HeaderDraft {
                chain: self.chain.clone(),
                height: prev.height + 1,
                prev: Some(prev.hash),
                time: Timestamp::from_micros(10 + self.seq as i64),
                state_root: self.tree.commit(),
                events_root: EventsRoot(MerkleLevels::from_leaves(leaves).root()),
                event_count: ops.len() as u64,
                first_seq: (!ops.is_empty()).then_some(first),
                last_seq: (!ops.is_empty()).then_some(self.seq),
            }
            .seal()
            .unwrap();
            self.headers
                .extend_from_slice(&header.to_canonical().unwrap());
            self.headers.push(b'\n');
            self.prev = Some(header);
        }

        fn check(&self) -> LogCheck {
            check_logs("unit", &self.chain, &self.headers, &self.events)
        }
    }

    fn big(n: usize) -> serde_json::Value {
        json!({"blob": "x".repeat(LARGE_STATE_BYTES + n), "rev": n})
    }

    #[test]
    fn states_too_large_to_hold_are_replayed_from_their_events() {
        let mut b = LogBuilder::new();
        b.block(
            &[
                ("file:/big", Action::Set, big(1)),
                ("file:/small", Action::Set, json!({"a": 1})),
            ],
            None,
        );
        b.block(
            &[
                ("file:/big", Action::Patch, json!({"rev": 2, "extra": "y"})),
                ("file:/big", Action::Patch, json!({"extra": null})),
            ],
            None,
        );
        b.block(&[("file:/small", Action::Patch, big(3))], None);
        let check = b.check();
        assert_eq!(check.problems, vec![]);
        assert_eq!(check.headers.len(), 4);
        let element = |e: &str| ElementId::parse(e).unwrap();
        match &check.tips[&element("file:/big")].state {
            ReplayedState::Spilled(s) => assert_eq!((s.base.is_none(), s.events.len()), (true, 3)),
            other => panic!("expected a spilled state, got {other:?}"),
        }
        assert!(matches!(
            check.tips[&element("file:/small")].state,
            ReplayedState::Spilled(ref s) if s.base.is_some() && s.events.len() == 1
        ));
        // Patching the spilled state rebuilds it from its base.
        b.block(&[("file:/small", Action::Patch, json!({"b": 2}))], None);
        assert_eq!(b.check().problems, vec![]);

        // A set starts a new history; a delete ends it; a small result is held.
        b.block(
            &[
                ("file:/big", Action::Set, big(4)),
                ("file:/small", Action::Patch, json!({"blob": null})),
            ],
            None,
        );
        let check = b.check();
        assert_eq!(check.problems, vec![]);
        assert!(matches!(
            check.tips[&element("file:/big")].state,
            ReplayedState::Spilled(ref s) if s.base.is_none() && s.events.len() == 1
        ));
        assert!(matches!(
            check.tips[&element("file:/small")].state,
            ReplayedState::Held(_)
        ));
        b.block(&[("file:/big", Action::Delete, json!(null))], None);
        assert_eq!(b.check().problems, vec![]);
    }

    #[test]
    fn a_patch_of_a_spilled_state_is_checked_against_the_replay() {
        let mut b = LogBuilder::new();
        b.block(&[("file:/big", Action::Set, big(1))], None);
        b.block(&[("file:/big", Action::Patch, json!({"rev": 9}))], Some(0));
        let problems = b.check().problems;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(matches!(
            &problems[0],
            Problem::StateReplayMismatch { chain_seq: 2, element, .. } if element == "file:/big"
        ));
    }

    #[test]
    fn a_checker_resumed_on_appended_logs_agrees_with_a_full_check() {
        let mut b = LogBuilder::new();
        b.block(&[("iface:eth0", Action::Set, json!({"mtu": 1500}))], None);
        b.block(&[("file:/big", Action::Set, big(1))], None);
        let (h2, e2) = (b.headers.len() as u64, b.events.len() as u64);
        let mut checker = LogChecker::new("site", &b.chain);
        let (hs, es) = (b.headers.clone(), b.events.clone());
        checker.feed_blocks(
            &mut SliceLines::new(&hs),
            &mut SliceLines::new(&es),
            &mut SliceLines::new(&es),
        );
        assert_eq!(checker.report().headers.len(), 3);
        b.block(
            &[
                ("iface:eth0", Action::Patch, json!({"up": true})),
                ("file:/big", Action::Patch, json!({"rev": 2})),
            ],
            None,
        );
        let resume = |checker: &mut LogChecker, b: &LogBuilder| {
            let mut events = SliceLines::from_offset(&b.events, e2);
            checker.feed_blocks(
                &mut SliceLines::from_offset(&b.headers, h2),
                &mut events,
                &mut SliceLines::new(&b.events),
            );
            checker.check_end(&mut events);
        };
        let mut resumed = checker.clone();
        resume(&mut resumed, &b);
        let full = b.check();
        let resumed = resumed.into_report();
        assert_eq!(resumed.problems, vec![]);
        assert_eq!(resumed.headers, full.headers);
        assert_eq!(resumed.event_ends, full.event_ends);
        assert_eq!(resumed.header_ends, full.header_ends);
        assert_eq!(resumed.events_checked, 4);

        // What a resumed check reads is checked like the rest.
        let mut bad = LogBuilder::new();
        bad.block(&[("iface:eth0", Action::Set, json!({"mtu": 1500}))], None);
        bad.block(&[("file:/big", Action::Set, big(1))], None);
        bad.block(&[("file:/big", Action::Patch, json!({"rev": 2}))], Some(0));
        let mut resumed = checker.clone();
        resume(&mut resumed, &bad);
        assert!(matches!(
            resumed.report().problems.as_slice(),
            [Problem::StateReplayMismatch { chain_seq: 3, .. }]
        ));
    }

    #[test]
    fn lines_read_from_slices_and_again_by_offset_agree() {
        let mut lines = SliceLines::new(b"ab\n\ncd");
        let mut seen = Vec::new();
        loop {
            let start = lines.offset();
            let Some(line) = lines.next_line().unwrap() else {
                break;
            };
            seen.push((start, line.to_vec(), lines.offset()));
        }
        assert_eq!(
            seen,
            vec![
                (0, b"ab".to_vec(), 3),
                (3, b"".to_vec(), 4),
                (4, b"cd".to_vec(), 6)
            ]
        );
        let mut again = SliceLines::new(b"ab\n\ncd");
        assert_eq!(again.line_at(4).unwrap(), b"cd");
        assert!(again.line_at(7).is_err());
    }
}
