//! Events: what an applied operation becomes.

use serde_json::{Map, Value};

use crate::{
    jcs, Action, ChainName, Digest, ElementId, EventHash, Operation, SchemaError, StateHash,
    Timestamp,
};

/// The event format this code writes and reads.
pub const EVENT_VERSION: u64 = 1;

/// One applied operation, hash-chained twice: to the element's previous event
/// (`prev`) and, through the block's events root, to the chain.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub chain: ChainName,
    pub element: ElementId,
    /// 1 for the element's first event, then +1 per event (across deletes).
    pub element_seq: u64,
    /// Hash of the element's previous event; `None` for its first.
    pub prev: Option<EventHash>,
    /// 1 for the chain's first event, then +1 per event.
    pub chain_seq: u64,
    pub op: Operation,
    /// Hash of the element's state after the operation; `None` after delete.
    pub state_hash: Option<StateHash>,
    pub time: Timestamp,
    pub hash: EventHash,
}

/// The fields of an event before it is hashed.
#[derive(Clone, Debug)]
pub struct EventDraft {
    pub chain: ChainName,
    pub element_seq: u64,
    pub prev: Option<EventHash>,
    pub chain_seq: u64,
    pub op: Operation,
    pub state_hash: Option<StateHash>,
    pub time: Timestamp,
}

impl EventDraft {
    /// Hashes the draft into an [`Event`].
    pub fn seal(self) -> Result<Event, SchemaError> {
        self.seal_with_line().map(|(event, _)| event)
    }

    /// Hashes the draft and also returns the event's canonical line (what
    /// [`Event::to_canonical`] gives), encoding the event only once.
    ///
    /// The members sort as chain, chain_seq, element, element_seq, hash, op,
    /// prev, state_hash, time, v; so the line is the body with
    /// `"hash":"…",` inserted before `"op":`, and the body is split there.
    pub fn seal_with_line(self) -> Result<(Event, Vec<u8>), SchemaError> {
        let encoded = self.members().encode()?;
        let hash = encoded.hash();
        let line = encoded.line(&hash);
        Ok((self.into_event(hash), line))
    }

    fn members(&self) -> Members<'_> {
        Members {
            chain: &self.chain,
            chain_seq: self.chain_seq,
            element: &self.op.element,
            element_seq: self.element_seq,
            op: &self.op,
            prev: self.prev,
            state_hash: self.state_hash,
            time: self.time,
        }
    }

    /// The straightforward encoding, kept to check the fast one against.
    pub fn seal_slow(self) -> Result<Event, SchemaError> {
        let mut event = self.into_event(EventHash(Digest::ZERO));
        event.hash = EventHash(Digest::of(&jcs::canonical(&event.body_value())?));
        Ok(event)
    }

    fn into_event(self, hash: EventHash) -> Event {
        Event {
            chain: self.chain,
            element: self.op.element.clone(),
            element_seq: self.element_seq,
            prev: self.prev,
            chain_seq: self.chain_seq,
            op: self.op,
            state_hash: self.state_hash,
            time: self.time,
            hash,
        }
    }
}

impl Event {
    fn members(&self) -> Members<'_> {
        Members {
            chain: &self.chain,
            chain_seq: self.chain_seq,
            element: &self.element,
            element_seq: self.element_seq,
            op: &self.op,
            prev: self.prev,
            state_hash: self.state_hash,
            time: self.time,
        }
    }

    /// The JSON object that is hashed: every member but `hash`.
    pub fn body_value(&self) -> Value {
        let (mut body, tail) = self.members().maps();
        body.extend(tail);
        Value::Object(body)
    }

    /// The event's canonical JSON with its `hash`: one line of `events.log`
    /// and the value of a message on the events topic.
    pub fn to_canonical(&self) -> Result<Vec<u8>, SchemaError> {
        Ok(self.members().encode()?.line(&self.hash))
    }

    /// Recomputes the hash from the other fields.
    pub fn computed_hash(&self) -> Result<EventHash, SchemaError> {
        Ok(self.members().encode()?.hash())
    }

    /// Parses one line written by [`Event::to_canonical`] and checks that it
    /// is canonical and that its `hash` is the hash of the rest, so a parsed
    /// event is always self-consistent.
    pub fn from_canonical(line: &[u8]) -> Result<Self, SchemaError> {
        let value: Value = serde_json::from_slice(line).map_err(|e| SchemaError::Json {
            message: e.to_string(),
        })?;
        let event = Self::from_value_unchecked(value)?;
        let (actual, canonical) = event.recompute()?;
        if canonical != line {
            return Err(SchemaError::NotCanonical { what: "event" });
        }
        if actual != event.hash {
            return Err(SchemaError::EventHashMismatch {
                expected: event.hash,
                actual,
            });
        }
        Ok(event)
    }

    /// Recomputes the hash from the other fields and the canonical line
    /// (with the stored hash), from one encoding. A line is canonical when
    /// it equals the line re-encoded from what it parses to.
    pub fn recompute(&self) -> Result<(EventHash, Vec<u8>), SchemaError> {
        let encoded = self.members().encode()?;
        Ok((encoded.hash(), encoded.line(&self.hash)))
    }

    /// Reads an event's fields without checking its hash or canonical form
    /// (the verifier checks those itself, to report them precisely).
    pub fn from_value_unchecked(value: Value) -> Result<Self, SchemaError> {
        let Value::Object(mut map) = value else {
            return Err(malformed("an event must be a JSON object"));
        };
        let stored =
            EventHash(take_digest(&mut map, "hash")?.ok_or_else(|| malformed("missing hash"))?);
        let version = take_u64(&mut map, "v")?;
        if version != EVENT_VERSION {
            return Err(SchemaError::UnsupportedVersion {
                what: "event",
                version,
            });
        }
        let chain = ChainName::parse(&take_string(&mut map, "chain")?)?;
        let element = ElementId::parse(&take_string(&mut map, "element")?)?;
        let element_seq = take_u64(&mut map, "element_seq")?;
        let chain_seq = take_u64(&mut map, "chain_seq")?;
        let prev = take_digest(&mut map, "prev")?.map(EventHash);
        let state_hash = take_digest(&mut map, "state_hash")?.map(StateHash);
        let time = Timestamp::parse_canonical(&take_string(&mut map, "time")?)?;
        let mut op_value = map.remove("op").ok_or_else(|| malformed("missing op"))?;
        if let Value::Object(op) = &mut op_value {
            if op.contains_key("element") {
                return Err(malformed("op must not repeat the element"));
            }
            op.insert("element".into(), Value::String(element.to_string()));
        }
        let op = Operation::from_recorded(op_value)?;
        if let Some(extra) = map.keys().next() {
            return Err(malformed(&format!("unknown member {extra:?}")));
        }
        Ok(Event {
            chain,
            element,
            element_seq,
            prev,
            chain_seq,
            op,
            state_hash,
            time,
            hash: stored,
        })
    }
}

/// An event read straight from its canonical line, without building a
/// JSON tree: the fast path of checking a log.
///
/// [`EventLine::read`] accepts a line only when it is in canonical form, is
/// a well-formed event, and its `hash` is the hash of the rest: exactly the
/// lines for which [`Event::from_canonical`] succeeds. Anything else gives
/// `None`, and the caller parses the line the slow way to say what is wrong.
#[derive(Clone, Debug, PartialEq)]
pub struct EventLine<'a> {
    pub chain: ChainName,
    pub element: ElementId,
    pub element_seq: u64,
    pub prev: Option<EventHash>,
    pub chain_seq: u64,
    pub action: Action,
    /// The operation's state (the new state or the merge patch) as the
    /// canonical JSON it is in the line.
    pub state: Option<&'a [u8]>,
    pub state_hash: Option<StateHash>,
    pub time: Timestamp,
    pub hash: EventHash,
}

impl<'a> EventLine<'a> {
    /// The member names of an event, in their canonical order.
    const MEMBERS: [&'static [u8]; 10] = [
        b"chain",
        b"chain_seq",
        b"element",
        b"element_seq",
        b"hash",
        b"op",
        b"prev",
        b"state_hash",
        b"time",
        b"v",
    ];

    /// Reads one canonical event line; `None` for anything that is not
    /// one, or whose hash does not match.
    pub fn read(line: &'a [u8]) -> Option<Self> {
        std::str::from_utf8(line).ok()?;
        let members = jcs::members(line)?;
        if members.len() != Self::MEMBERS.len()
            || members
                .iter()
                .zip(Self::MEMBERS)
                .any(|((key, _), name)| *key != name)
        {
            return None;
        }
        let value = |i: usize| members[i].1;
        if short_integer(value(9))? != EVENT_VERSION {
            return None;
        }
        let (action, state) = read_op(value(5))?;
        let hash = EventHash(hex_string(value(4))?);
        // The line is `before,"hash":"…",after` and the hashed body is
        // `before,after` (see [`Encoded`]).
        let hash_at = value(4).as_ptr() as usize - line.as_ptr() as usize;
        let before = &line[..hash_at - b",\"hash\":".len()];
        let after = &line[hash_at + value(4).len() + 1..];
        if EventHash(Digest::of_parts(&[before, b",", after])) != hash {
            return None;
        }
        Some(EventLine {
            chain: ChainName::parse(&plain_string(value(0))?).ok()?,
            chain_seq: short_integer(value(1))?,
            element: ElementId::parse(&plain_string(value(2))?).ok()?,
            element_seq: short_integer(value(3))?,
            action,
            state,
            prev: nullable_hex(value(6))?.map(EventHash),
            state_hash: nullable_hex(value(7))?.map(StateHash),
            time: Timestamp::parse_canonical(&plain_string(value(8))?).ok()?,
            hash,
        })
    }
}

impl EventLine<'_> {
    /// The element of an event line, from its first three members alone
    /// (`chain`, `chain_seq`, `element`): what keys it on the events topic,
    /// found without reading the rest of a line that may hold a large
    /// state. Nothing else is checked; [`EventLine::read`] checks the line.
    pub fn element_of(line: &[u8]) -> Option<ElementId> {
        let members = jcs::first_members(line, 3)?;
        match members.as_slice() {
            [(k0, _), (k1, _), (k2, element)] if [*k0, *k1, *k2] == Self::MEMBERS[..3] => {
                ElementId::parse(&plain_string(element)?).ok()
            }
            _ => None,
        }
    }
}

/// The `op` member of a canonical event line: `action`, then `actor`,
/// `reason` and `state` when present (never `null`), with the shape
/// [`Operation::from_value`] requires.
fn read_op(op: &[u8]) -> Option<(Action, Option<&[u8]>)> {
    let members = jcs::members(op)?;
    let (first, rest) = members.split_first()?;
    if first.0 != b"action" {
        return None;
    }
    let action = Action::parse(&plain_string(first.1)?).ok()?;
    let mut state = None;
    for &(key, value) in rest {
        match key {
            b"actor" | b"reason" | b"signature" => {
                plain_string(value)?;
            }
            b"signer" if value.first() == Some(&b'{') => {}
            b"state" if value.first() == Some(&b'{') => state = Some(value),
            _ => return None,
        }
    }
    match (action, state) {
        (Action::Set | Action::Patch, Some(_)) | (Action::Delete, None) => Some((action, state)),
        _ => None,
    }
}

/// The text of a canonical JSON string.
fn plain_string(value: &[u8]) -> Option<std::borrow::Cow<'_, str>> {
    let inner = value.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if inner.contains(&b'\\') {
        serde_json::from_slice::<String>(value).ok().map(Into::into)
    } else {
        std::str::from_utf8(inner).ok().map(Into::into)
    }
}

/// A canonical integer of at most 15 digits (so below 2^53, which JCS
/// writes exactly); longer ones are left to the slow path.
fn short_integer(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 15 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// A digest as fschain writes it: 64 lower-case hex digits in quotes.
fn hex_string(value: &[u8]) -> Option<Digest> {
    let inner = value.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if inner.len() != 64 || !inner.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    Digest::from_hex(std::str::from_utf8(inner).ok()?).ok()
}

fn nullable_hex(value: &[u8]) -> Option<Option<Digest>> {
    if value == b"null" {
        Some(None)
    } else {
        hex_string(value).map(Some)
    }
}

/// Every hashed member of an event, borrowed. This is the one place that
/// says which members an event has.
struct Members<'a> {
    chain: &'a ChainName,
    chain_seq: u64,
    element: &'a ElementId,
    element_seq: u64,
    op: &'a Operation,
    prev: Option<EventHash>,
    state_hash: Option<StateHash>,
    time: Timestamp,
}

impl Members<'_> {
    /// The members that sort before `hash` (chain, chain_seq, element,
    /// element_seq) and after it (op, prev, state_hash, time, v).
    fn maps(&self) -> (Map<String, Value>, Map<String, Value>) {
        let hex = |h: Option<Digest>| h.map_or(Value::Null, |h| Value::String(h.to_hex()));
        let mut before = Map::new();
        before.insert("chain".into(), Value::String(self.chain.to_string()));
        before.insert("chain_seq".into(), Value::from(self.chain_seq));
        before.insert("element".into(), Value::String(self.element.to_string()));
        before.insert("element_seq".into(), Value::from(self.element_seq));
        let mut after = Map::new();
        after.insert("op".into(), self.op.to_event_value());
        after.insert("prev".into(), hex(self.prev.map(|h| h.0)));
        after.insert("state_hash".into(), hex(self.state_hash.map(|h| h.0)));
        after.insert("time".into(), Value::String(self.time.to_string()));
        after.insert("v".into(), Value::from(EVENT_VERSION));
        (before, after)
    }

    fn encode(&self) -> Result<Encoded, SchemaError> {
        let (before, after) = self.maps();
        let mut before = jcs::canonical_object(&before)?;
        before.pop(); // `}`
        let mut after = jcs::canonical_object(&after)?;
        after.remove(0); // `{`
        Ok(Encoded { before, after })
    }
}

/// An event's canonical JSON, split where its `hash` member goes: the body
/// (what is hashed) is `before,after`; the line is `before,"hash":"…",after`.
struct Encoded {
    before: Vec<u8>,
    after: Vec<u8>,
}

impl Encoded {
    fn hash(&self) -> EventHash {
        EventHash(Digest::of_parts(&[&self.before, b",", &self.after]))
    }

    fn line(&self, hash: &EventHash) -> Vec<u8> {
        let mut line = Vec::with_capacity(self.before.len() + self.after.len() + 76);
        line.extend_from_slice(&self.before);
        line.extend_from_slice(b",\"hash\":\"");
        line.extend_from_slice(hash.to_hex().as_bytes());
        line.extend_from_slice(b"\",");
        line.extend_from_slice(&self.after);
        line
    }
}

fn malformed(why: &str) -> SchemaError {
    SchemaError::Malformed {
        why: why.to_owned(),
    }
}

pub(crate) fn take_string(map: &mut Map<String, Value>, key: &str) -> Result<String, SchemaError> {
    match map.remove(key) {
        Some(Value::String(s)) => Ok(s),
        _ => Err(malformed(&format!("{key} must be a string"))),
    }
}

pub(crate) fn take_u64(map: &mut Map<String, Value>, key: &str) -> Result<u64, SchemaError> {
    map.remove(key)
        .and_then(|v| v.as_u64())
        .ok_or_else(|| malformed(&format!("{key} must be a non-negative integer")))
}

pub(crate) fn take_opt_u64(
    map: &mut Map<String, Value>,
    key: &str,
) -> Result<Option<u64>, SchemaError> {
    match map.remove(key) {
        Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| malformed(&format!("{key} must be an integer or null"))),
        None => Err(malformed(&format!("missing {key}"))),
    }
}

pub(crate) fn take_digest(
    map: &mut Map<String, Value>,
    key: &str,
) -> Result<Option<Digest>, SchemaError> {
    match map.remove(key) {
        Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Digest::from_hex(&s).map(Some),
        _ => Err(malformed(&format!("{key} must be a hex digest or null"))),
    }
}

/// The hash of a state: SHA-256 of its canonical JSON.
pub fn state_hash(state: &crate::State) -> Result<StateHash, SchemaError> {
    Ok(StateHash(Digest::of(&jcs::canonical_object(state)?)))
}
