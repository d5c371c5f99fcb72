//! Offline proofs, checked with nothing but the log's verifier key:
//!
//! - a *proof bundle*: a C2SP tlog-proof (c2sp.org/tlog-proof) of a block
//!   header's inclusion in a signed checkpoint, whose `extra` data is the
//!   canonical JSON [`ProofExtra`]: the header, and optionally one
//!   element's state with its inclusion proof in the header's state root;
//! - a *consistency proof*: two signed checkpoints of one log and the RFC
//!   9162 proof that the newer tree extends the older.
//!
//! Every byte is specified in docs/encoding.md.

use serde_json::{json, Map, Value};

use crate::merkle::{leaf_hash, verify_consistency, InclusionProof};
use crate::note::{tlog_proof, Checkpoint, TlogProof, Verifier};
use crate::{jcs, state_hash, state_leaf_hash, BlockHeader, Digest, ElementId, SchemaError, State};

/// The `type` member of a consistency proof.
pub const CONSISTENCY_TYPE: &str = "fschain consistency proof v1";

fn bad(why: impl Into<String>) -> SchemaError {
    SchemaError::BadBundle { why: why.into() }
}

fn digests_to_json(path: &[Digest]) -> Value {
    Value::Array(path.iter().map(|d| Value::String(d.to_hex())).collect())
}

fn digests_from_json(value: Option<&Value>, what: &str) -> Result<Vec<Digest>, SchemaError> {
    value
        .and_then(Value::as_array)
        .ok_or_else(|| bad(format!("{what} is not an array")))?
        .iter()
        .map(|h| {
            h.as_str()
                .ok_or_else(|| bad(format!("{what} holds a non-string")))
                .and_then(Digest::from_hex)
        })
        .collect()
}

fn u64_of(map: &Map<String, Value>, key: &str) -> Result<u64, SchemaError> {
    map.get(key)
        .and_then(Value::as_u64)
        .ok_or_else(|| bad(format!("{key} is not a non-negative integer")))
}

/// One element's state at a block, and its inclusion proof in the block's
/// state root (leaf = `state_leaf_hash(element, state_hash(state))`).
#[derive(Clone, Debug, PartialEq)]
pub struct StateProof {
    pub element: ElementId,
    pub state: State,
    pub proof: InclusionProof,
}

/// A proof bundle's `extra` data: a block header, and optionally one
/// element's state in it.
#[derive(Clone, Debug, PartialEq)]
pub struct ProofExtra {
    pub header: BlockHeader,
    pub state: Option<StateProof>,
}

impl ProofExtra {
    /// Canonical JSON: `{"header":{...},"state":{...}}` (`state` absent for
    /// a block proof).
    pub fn to_canonical(&self) -> Result<Vec<u8>, SchemaError> {
        let mut doc = Map::new();
        doc.insert("header".into(), self.header.body_value_with_hash());
        if let Some(s) = &self.state {
            doc.insert(
                "state".into(),
                json!({
                    "element": s.element.as_str(),
                    "state": Value::Object(s.state.clone()),
                    "index": s.proof.leaf_index,
                    "size": s.proof.tree_size,
                    "path": digests_to_json(&s.proof.path),
                }),
            );
        }
        jcs::canonical(&Value::Object(doc))
    }

    /// Reads canonical bytes written by [`ProofExtra::to_canonical`]; the
    /// header must carry its own hash.
    pub fn from_canonical(bytes: &[u8]) -> Result<Self, SchemaError> {
        if !jcs::is_canonical(bytes) {
            return Err(bad("the extra data is not canonical JSON"));
        }
        let value: Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        let Value::Object(mut doc) = value else {
            return Err(bad("the extra data is not a JSON object"));
        };
        let header = doc
            .remove("header")
            .ok_or_else(|| bad("no header in the extra data"))?;
        let header = BlockHeader::from_canonical(&jcs::canonical(&header)?)?;
        let state = match doc.remove("state") {
            None => None,
            Some(Value::Object(s)) => {
                let element = s
                    .get("element")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("the state has no element"))?;
                let Some(Value::Object(state)) = s.get("state") else {
                    return Err(bad("the element's state is not a JSON object"));
                };
                Some(StateProof {
                    element: ElementId::parse(element)?,
                    state: state.clone(),
                    proof: InclusionProof {
                        leaf_index: u64_of(&s, "index")?,
                        tree_size: u64_of(&s, "size")?,
                        path: digests_from_json(s.get("path"), "the state's path")?,
                    },
                })
            }
            Some(_) => return Err(bad("the state is not a JSON object")),
        };
        if let Some(key) = doc.keys().next() {
            return Err(bad(format!("unknown member {key:?} in the extra data")));
        }
        Ok(ProofExtra { header, state })
    }

    /// Checks the element's state against the header's state root.
    pub fn check_state(&self) -> Result<(), SchemaError> {
        if let Some(s) = &self.state {
            let leaf = state_leaf_hash(&s.element, &state_hash(&s.state)?);
            s.proof
                .verify(&leaf, self.header.state_root.digest())
                .map_err(|e| {
                    bad(format!(
                        "{}'s state is not in block {}'s state root: {e}",
                        s.element, self.header.height
                    ))
                })?;
        }
        Ok(())
    }

    /// The tlog-proof text: this bundle at `index` of the checkpoint.
    pub fn tlog_proof(&self, path: &[Digest], checkpoint: &str) -> Result<String, SchemaError> {
        Ok(tlog_proof(
            &self.to_canonical()?,
            self.header.height,
            path,
            checkpoint,
        ))
    }
}

/// What a checked proof bundle proves.
#[derive(Clone, Debug, PartialEq)]
pub struct ProvenBundle {
    pub checkpoint: Checkpoint,
    pub extra: ProofExtra,
}

/// Checks a proof bundle against the log's key: the checkpoint's
/// signature, the header's own hash, the header's inclusion at its height
/// in the checkpoint's tree, and the element's state in the header.
pub fn check_bundle(text: &str, log: &Verifier) -> Result<ProvenBundle, SchemaError> {
    let proof = TlogProof::parse(text)?;
    let checkpoint = Checkpoint::open(&proof.checkpoint, log)?;
    let extra = ProofExtra::from_canonical(&proof.extra)?;
    if extra.header.height != proof.index {
        return Err(bad(format!(
            "the header is block {}'s, the proof is for index {}",
            extra.header.height, proof.index
        )));
    }
    let inclusion = InclusionProof {
        leaf_index: proof.index,
        tree_size: checkpoint.size,
        path: proof.path,
    };
    inclusion
        .verify(
            &leaf_hash(extra.header.hash.digest().as_bytes()),
            &checkpoint.root,
        )
        .map_err(|e| {
            bad(format!(
                "block {} is not in the checkpoint of size {}: {e}",
                extra.header.height, checkpoint.size
            ))
        })?;
    extra.check_state()?;
    Ok(ProvenBundle { checkpoint, extra })
}

/// Two signed checkpoints of one log and the proof that the newer extends
/// the older.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsistencyProof {
    pub old: String,
    pub new: String,
    pub proof: Vec<Digest>,
}

impl ConsistencyProof {
    /// `{"type":"fschain consistency proof v1","old":NOTE,"new":NOTE,"proof":[base64,...]}`.
    pub fn to_json(&self) -> Value {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        json!({
            "type": CONSISTENCY_TYPE,
            "old": self.old,
            "new": self.new,
            "proof": self.proof.iter().map(|d| b64.encode(d.as_bytes())).collect::<Vec<_>>(),
        })
    }

    pub fn parse(text: &str) -> Result<Self, SchemaError> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let value: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        if value.get("type").and_then(Value::as_str) != Some(CONSISTENCY_TYPE) {
            return Err(bad(format!("not a {CONSISTENCY_TYPE:?}")));
        }
        let note = |k: &str| {
            value
                .get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| bad(format!("no {k} checkpoint")))
        };
        let proof = value
            .get("proof")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no proof array"))?
            .iter()
            .map(|h| {
                h.as_str()
                    .and_then(|t| b64.decode(t).ok())
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .map(Digest::from_bytes)
                    .ok_or_else(|| bad(format!("proof hash {h} is not base64 of 32 bytes")))
            })
            .collect::<Result<_, _>>()?;
        Ok(ConsistencyProof {
            old: note("old")?,
            new: note("new")?,
            proof,
        })
    }

    /// Checks both checkpoints' signatures and the proof between them;
    /// returns (old, new).
    pub fn check(&self, log: &Verifier) -> Result<(Checkpoint, Checkpoint), SchemaError> {
        let old = Checkpoint::open(&self.old, log)?;
        let new = Checkpoint::open(&self.new, log)?;
        verify_consistency(old.size, new.size, &old.root, &new.root, &self.proof)?;
        Ok((old, new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::MerkleLevels;
    use crate::note::{block_leaves, chain_checkpoint};
    use crate::wire::SigningKey;
    use crate::{ChainName, HeaderDraft, StateTree, Timestamp};

    fn chain(n: u64, tree: &StateTree) -> Vec<BlockHeader> {
        let chain: ChainName = "host1".parse().unwrap();
        let mut headers: Vec<BlockHeader> =
            vec![
                HeaderDraft::genesis(chain, Timestamp::from_micros(1_700_000_000_000_000))
                    .seal()
                    .unwrap(),
            ];
        for h in 1..n {
            let prev = headers.last().unwrap();
            let draft = HeaderDraft {
                height: h,
                prev: Some(prev.hash),
                state_root: tree.root(),
                ..HeaderDraft::genesis(prev.chain.clone(), prev.time)
            };
            headers.push(draft.seal().unwrap());
        }
        headers
    }

    #[test]
    fn an_element_bundle_checks_and_each_tampered_part_is_named() {
        let mut state = State::new();
        state.insert("mtu".into(), json!(1500));
        let eth0 = ElementId::parse("iface:eth0").unwrap();
        let other = ElementId::parse("iface:lo").unwrap();
        let tree = StateTree::from_entries([
            (eth0.clone(), state_hash(&state).unwrap()),
            (other, state_hash(&State::new()).unwrap()),
        ]);
        let headers = chain(6, &tree);
        let key = SigningKey::from_seed([3; 32]);
        let log = Verifier::new("fschain.example/host1", key.public()).unwrap();
        let checkpoint = chain_checkpoint(&log.name, &headers).sign(&key).unwrap();
        let (_, state_proof) = tree.proof(&eth0).unwrap();
        let extra = ProofExtra {
            header: headers[4].clone(),
            state: Some(StateProof {
                element: eth0,
                state: state.clone(),
                proof: state_proof,
            }),
        };
        let path = MerkleLevels::from_leaves(block_leaves(&headers))
            .proof(4)
            .unwrap()
            .path;
        let text = extra.tlog_proof(&path, &checkpoint).unwrap();
        let proven = check_bundle(&text, &log).unwrap();
        assert_eq!(proven.extra, extra);
        assert_eq!(proven.checkpoint.size, 6);

        // Another state for the element.
        let mut lied = extra.clone();
        if let Some(s) = &mut lied.state {
            s.state.insert("mtu".into(), json!(9000));
        }
        let err = check_bundle(&lied.tlog_proof(&path, &checkpoint).unwrap(), &log).unwrap_err();
        assert!(
            err.to_string().contains("not in block 4's state root"),
            "{err}"
        );
        // The header claimed at another index.
        let moved = text.replace("index 4\n", "index 3\n");
        let err = check_bundle(&moved, &log).unwrap_err();
        assert!(err.to_string().contains("proof is for index 3"), "{err}");
        // A path hash replaced.
        let first = text.lines().nth(3).unwrap();
        let swapped = text.replacen(first, &format!("{}=", "A".repeat(43)), 1);
        let err = check_bundle(&swapped, &log).unwrap_err();
        assert!(err.to_string().contains("not in the checkpoint"), "{err}");
        // Truncated anywhere: an error, never a panic.
        for cut in 0..text.len() {
            if text.is_char_boundary(cut) {
                assert!(check_bundle(&text[..cut], &log).is_err());
            }
        }
    }

    #[test]
    fn a_consistency_proof_reads_back_and_a_backwards_one_is_refused() {
        let tree = StateTree::default();
        let headers = chain(9, &tree);
        let key = SigningKey::from_seed([3; 32]);
        let log = Verifier::new("fschain.example/host1", key.public()).unwrap();
        let leaves = block_leaves(&headers);
        let doc = ConsistencyProof {
            old: chain_checkpoint(&log.name, &headers[..3])
                .sign(&key)
                .unwrap(),
            new: chain_checkpoint(&log.name, &headers).sign(&key).unwrap(),
            proof: crate::merkle::consistency_proof(&leaves, 3),
        };
        let text = doc.to_json().to_string();
        let read = ConsistencyProof::parse(&text).unwrap();
        assert_eq!(read, doc);
        let (old, new) = read.check(&log).unwrap();
        assert_eq!((old.size, new.size), (3, 9));
        let backwards = ConsistencyProof {
            old: doc.new.clone(),
            new: doc.old.clone(),
            proof: doc.proof.clone(),
        };
        let err = backwards.check(&log).unwrap_err();
        assert!(err.to_string().contains("went backwards"), "{err}");
    }
}
