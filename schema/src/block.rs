//! Block headers.

use serde_json::{Map, Value};

use crate::event::{take_digest, take_opt_u64, take_string, take_u64};
use crate::{jcs, BlockHash, ChainName, Digest, EventsRoot, SchemaError, StateRoot, Timestamp};

/// The header format this code writes and reads.
pub const HEADER_VERSION: u64 = 1;

/// Seals a batch of events. Its hash is SHA-256 of the canonical JSON of
/// every member but `hash`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockHeader {
    pub version: u64,
    pub chain: ChainName,
    pub height: u64,
    /// Hash of the previous block's header; `None` only at genesis (height 0).
    pub prev: Option<BlockHash>,
    pub time: Timestamp,
    pub state_root: StateRoot,
    pub events_root: EventsRoot,
    pub event_count: u64,
    /// Chain sequence of the block's first and last events; `None` when the
    /// block has no events.
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub hash: BlockHash,
}

/// A header before it is hashed.
#[derive(Clone, Debug)]
pub struct HeaderDraft {
    pub chain: ChainName,
    pub height: u64,
    pub prev: Option<BlockHash>,
    pub time: Timestamp,
    pub state_root: StateRoot,
    pub events_root: EventsRoot,
    pub event_count: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
}

impl HeaderDraft {
    /// Block 0 of `chain`: no events, the empty state.
    pub fn genesis(chain: ChainName, time: Timestamp) -> Self {
        HeaderDraft {
            chain,
            height: 0,
            prev: None,
            time,
            state_root: StateRoot(crate::merkle::root_of(&[])),
            events_root: EventsRoot(crate::merkle::root_of(&[])),
            event_count: 0,
            first_seq: None,
            last_seq: None,
        }
    }

    pub fn seal(self) -> Result<BlockHeader, SchemaError> {
        let mut header = BlockHeader {
            version: HEADER_VERSION,
            chain: self.chain,
            height: self.height,
            prev: self.prev,
            time: self.time,
            state_root: self.state_root,
            events_root: self.events_root,
            event_count: self.event_count,
            first_seq: self.first_seq,
            last_seq: self.last_seq,
            hash: BlockHash(Digest::ZERO),
        };
        header.hash = header.computed_hash()?;
        Ok(header)
    }
}

impl BlockHeader {
    pub fn body_value(&self) -> Value {
        let opt = |v: Option<u64>| v.map_or(Value::Null, Value::from);
        let mut map = Map::new();
        map.insert("chain".into(), Value::String(self.chain.to_string()));
        map.insert("event_count".into(), Value::from(self.event_count));
        map.insert(
            "events_root".into(),
            Value::String(self.events_root.to_hex()),
        );
        map.insert("first_seq".into(), opt(self.first_seq));
        map.insert("height".into(), Value::from(self.height));
        map.insert("last_seq".into(), opt(self.last_seq));
        map.insert(
            "prev".into(),
            self.prev.map_or(Value::Null, |h| Value::String(h.to_hex())),
        );
        map.insert("state_root".into(), Value::String(self.state_root.to_hex()));
        map.insert("time".into(), Value::String(self.time.to_string()));
        map.insert("version".into(), Value::from(self.version));
        Value::Object(map)
    }

    pub fn computed_hash(&self) -> Result<BlockHash, SchemaError> {
        Ok(BlockHash(Digest::of(&jcs::canonical(&self.body_value())?)))
    }

    /// Canonical JSON with `hash`: one line of `headers.log`.
    pub fn to_canonical(&self) -> Result<Vec<u8>, SchemaError> {
        jcs::canonical(&self.body_value_with_hash())
    }

    /// The header as JSON, `hash` included.
    pub fn body_value_with_hash(&self) -> Value {
        let mut value = self.body_value();
        if let Value::Object(map) = &mut value {
            map.insert("hash".into(), Value::String(self.hash.to_hex()));
        }
        value
    }

    /// Parses a line written by [`BlockHeader::to_canonical`], checking that
    /// it is canonical and that its hash is right.
    pub fn from_canonical(line: &[u8]) -> Result<Self, SchemaError> {
        let header = Self::from_canonical_unchecked(line)?;
        let actual = header.computed_hash()?;
        if actual != header.hash {
            return Err(SchemaError::HeaderHashMismatch {
                height: header.height,
                expected: header.hash,
                actual,
            });
        }
        Ok(header)
    }

    /// Like [`BlockHeader::from_canonical`] but without the hash check (the
    /// verifier checks it itself, to report it and go on).
    pub fn from_canonical_unchecked(line: &[u8]) -> Result<Self, SchemaError> {
        let value: Value = serde_json::from_slice(line).map_err(|e| SchemaError::Json {
            message: e.to_string(),
        })?;
        if jcs::canonical(&value)? != line {
            return Err(SchemaError::NotCanonical {
                what: "block header",
            });
        }
        let Value::Object(mut map) = value else {
            return Err(SchemaError::Malformed {
                why: "a block header must be a JSON object".into(),
            });
        };
        let version = take_u64(&mut map, "version")?;
        if version != HEADER_VERSION {
            return Err(SchemaError::UnsupportedVersion {
                what: "block header",
                version,
            });
        }
        let missing = |k: &str| SchemaError::Malformed {
            why: format!("{k} must be a hex digest"),
        };
        let header = BlockHeader {
            version,
            chain: ChainName::parse(&take_string(&mut map, "chain")?)?,
            height: take_u64(&mut map, "height")?,
            prev: take_digest(&mut map, "prev")?.map(BlockHash),
            time: Timestamp::parse_canonical(&take_string(&mut map, "time")?)?,
            state_root: StateRoot(
                take_digest(&mut map, "state_root")?.ok_or_else(|| missing("state_root"))?,
            ),
            events_root: EventsRoot(
                take_digest(&mut map, "events_root")?.ok_or_else(|| missing("events_root"))?,
            ),
            event_count: take_u64(&mut map, "event_count")?,
            first_seq: take_opt_u64(&mut map, "first_seq")?,
            last_seq: take_opt_u64(&mut map, "last_seq")?,
            hash: BlockHash(take_digest(&mut map, "hash")?.ok_or_else(|| missing("hash"))?),
        };
        if let Some(extra) = map.keys().next() {
            return Err(SchemaError::Malformed {
                why: format!("unknown member {extra:?}"),
            });
        }
        Ok(header)
    }
}
