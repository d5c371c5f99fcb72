//! Search answers: hits as people read them, with the element's state at
//! a past block and a proof that needs no trust in the index.

use fschain_schema::merkle::{leaf_hash, MerkleLevels};
use fschain_schema::wire::BlockManifest;
use fschain_schema::{ElementId, Event, EventHash, State};
use fschain_store::{Chain, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::backend::ScoredPayload;
use crate::document::{fields, Change};
use crate::IndexError;

/// One search result.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SearchHit {
    pub score: f32,
    pub chain: String,
    pub height: u64,
    pub element: String,
    pub time: String,
    pub action: String,
    pub changes: Vec<Change>,
    pub reason: Option<String>,
    pub actor: Option<String>,
    /// Who signed the operation: `principal (SHA256:key)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    pub chain_seq: u64,
    pub event_hash: String,
    /// With `--at`: the element's state at that block (`null`: absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_at: Option<StateAt>,
    /// With `--proof`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<EventProof>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StateAt {
    pub height: u64,
    pub state: Option<State>,
}

/// Everything needed to check a hit without the index: the event, its
/// RFC 6962 audit path to the block's events root, the block header, and
/// the producer's signed manifest that covers that header.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EventProof {
    /// The event's canonical JSON (its hash is SHA-256 of it without `hash`).
    pub event: Value,
    pub leaf_index: u64,
    pub tree_size: u64,
    /// Audit path, bottom up, hex.
    pub path: Vec<String>,
    /// The block header, canonical JSON with its hash.
    pub header: Value,
    /// The signed manifest of the block; `null` for a block this root has
    /// not published yet (run `fschain publish`).
    pub manifest: Option<BlockManifest>,
}

impl SearchHit {
    /// Reads a hit back from a point's payload.
    pub fn from_payload(hit: ScoredPayload) -> Result<Self, IndexError> {
        let p = &hit.payload;
        let text = |key: &str| p.get(key).and_then(Value::as_str).map(str::to_owned);
        let number = |key: &str| p.get(key).and_then(Value::as_u64);
        let bad = |key: &str| IndexError::Corrupt {
            path: "index".into(),
            why: format!("a point has no {key:?} in its payload"),
        };
        Ok(SearchHit {
            score: hit.score,
            chain: text(fields::CHAIN).ok_or_else(|| bad(fields::CHAIN))?,
            height: number(fields::HEIGHT).ok_or_else(|| bad(fields::HEIGHT))?,
            element: text(fields::ELEMENT).ok_or_else(|| bad(fields::ELEMENT))?,
            time: text(fields::TIME).ok_or_else(|| bad(fields::TIME))?,
            action: text(fields::ACTION).ok_or_else(|| bad(fields::ACTION))?,
            changes: p
                .get(fields::CHANGES)
                .cloned()
                .map(serde_json::from_value)
                .transpose()
                .map_err(|_| bad(fields::CHANGES))?
                .unwrap_or_default(),
            reason: text(fields::REASON),
            actor: text(fields::ACTOR),
            signer: text(fields::SIGNER),
            chain_seq: number(fields::CHAIN_SEQ).ok_or_else(|| bad(fields::CHAIN_SEQ))?,
            event_hash: text(fields::EVENT_HASH).ok_or_else(|| bad(fields::EVENT_HASH))?,
            state_at: None,
            proof: None,
        })
    }

    /// Adds the element's state at block `height` of `chain`.
    pub fn with_state_at(mut self, chain: &Chain, height: u64) -> Result<Self, IndexError> {
        let element = ElementId::parse(&self.element)?;
        self.state_at = Some(StateAt {
            height,
            state: chain.state_at(&element, height)?,
        });
        Ok(self)
    }

    /// Adds the proof, built from the chain's snapshots (not the index) and
    /// checked before it is returned.
    pub fn with_proof(mut self, chain: &Chain) -> Result<Self, IndexError> {
        let hash = EventHash::from_hex(&self.event_hash)?;
        self.proof = Some(event_proof(chain, self.height, &hash)?);
        Ok(self)
    }
}

/// The proof that event `hash` is in block `height` of `chain`.
pub fn event_proof(chain: &Chain, height: u64, hash: &EventHash) -> Result<EventProof, IndexError> {
    let header = chain
        .headers()
        .get(height as usize)
        .ok_or_else(|| StoreError::Corrupt {
            path: chain.layout().snapshot(height),
            why: format!("the index names block {height}, which this chain does not hold"),
        })?;
    let mut events = Vec::new();
    let mut found = None;
    fschain_store::for_block_event_lines(chain.layout(), height, header.event_count, |line| {
        let event = Event::from_canonical(line)?;
        if &event.hash == hash {
            found = Some((events.len(), line.to_vec()));
        }
        events.push(leaf_hash(event.hash.digest().as_bytes()));
        Ok::<(), IndexError>(())
    })?;
    let not_there = || StoreError::Corrupt {
        path: chain.layout().snapshot(height),
        why: format!(
            "event {hash} is not in block {height}; the index is stale, run `fschain reindex`"
        ),
    };
    let (index, canonical) = found.ok_or_else(not_there)?;
    let leaf = events[index];
    let proof = MerkleLevels::from_leaves(events)
        .proof(index)
        .ok_or_else(not_there)?;
    proof.verify(&leaf, header.events_root.digest())?;
    let manifest = match std::fs::read(chain.layout().manifest(height)) {
        Ok(bytes) => serde_json::from_slice::<BlockManifest>(&bytes).ok(),
        Err(_) => None,
    };
    // Both as JSON whose members are in canonical order, so that a checker
    // can serialise them back to the exact bytes that were hashed.
    let header_bytes = fschain_schema::jcs::canonical(&header.body_value_with_hash())?;
    let as_json = |bytes: &[u8]| {
        serde_json::from_slice::<Value>(bytes).map_err(|e| IndexError::Corrupt {
            path: chain.layout().snapshot(height),
            why: e.to_string(),
        })
    };
    Ok(EventProof {
        event: as_json(&canonical)?,
        leaf_index: proof.leaf_index,
        tree_size: proof.tree_size,
        path: proof.path.iter().map(|d| d.to_hex()).collect(),
        header: as_json(&header_bytes)?,
        manifest,
    })
}
