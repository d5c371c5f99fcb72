//! What the index stores for an event: the text that gets embedded and the
//! payload people filter by. Pure: no IO.

use std::collections::BTreeSet;

use fschain_schema::{jcs, Digest, Event, State};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// One top-level key of an element's state that an event changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub key: String,
    /// The value before the event; absent when the key is new.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old: Option<Value>,
    /// The value after the event; absent when the key was removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new: Option<Value>,
}

impl Change {
    /// `mtu: 1500 → 9000`, `up: (none) → true`.
    pub fn describe(&self) -> String {
        format!(
            "{}: {} → {}",
            self.key,
            describe_value(self.old.as_ref()),
            describe_value(self.new.as_ref())
        )
    }

    /// [`Self::describe`] with long values cut short, for embedding: a
    /// digest's 64 hex digits are 40 tokens of noise to a language model,
    /// and every token costs the same.
    pub fn describe_brief(&self) -> String {
        format!(
            "{}: {} → {}",
            self.key,
            brief(describe_value(self.old.as_ref())),
            brief(describe_value(self.new.as_ref()))
        )
    }
}

/// Values longer than this are cut in embedded text.
const BRIEF_CHARS: usize = 48;
/// Hex digests are cut to this many digits.
const BRIEF_HEX: usize = 8;

fn brief(text: String) -> String {
    let hex = text.len() >= 32 && text.bytes().all(|b| b.is_ascii_hexdigit());
    let keep = if hex { BRIEF_HEX } else { BRIEF_CHARS };
    match text.char_indices().nth(keep) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

fn describe_value(value: Option<&Value>) -> String {
    match value {
        None => "(none)".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// Values whose canonical JSON is longer than this are kept in the index as
/// a summary, `<N bytes, sha256 XXXXXXXXXXXXXXXX>`: a 1 MB blob is no use
/// in a hit or to an embedder, and the index stays small whatever the
/// states hold. The event itself, with every byte, is in the chain and in
/// `--proof`.
pub const FULL_VALUE_BYTES: usize = 1024;

/// `state` with every long value (see [`FULL_VALUE_BYTES`]) summarized.
/// Objects are summarized member by member, so a JSON Merge Patch applied
/// to a summarized state gives the summary of the patched state.
pub fn summarize_state(state: State) -> State {
    state.into_iter().map(|(k, v)| (k, summarize(v))).collect()
}

fn summarize(value: Value) -> Value {
    let canonical = match value {
        Value::Object(members) => return Value::Object(summarize_state(members)),
        Value::Null | Value::Bool(_) | Value::Number(_) => return value,
        Value::String(ref s) if s.len() <= FULL_VALUE_BYTES => return value,
        ref other => jcs::canonical(other).unwrap_or_else(|_| other.to_string().into_bytes()),
    };
    if canonical.len() <= FULL_VALUE_BYTES {
        return value;
    }
    let digest = Digest::of(&canonical).to_hex();
    Value::String(format!(
        "<{} bytes, sha256 {}>",
        canonical.len(),
        &digest[..16]
    ))
}

/// The keys whose values differ between two states, in key order.
pub fn changes(old: Option<&State>, new: Option<&State>) -> Vec<Change> {
    let empty = State::new();
    let old = old.unwrap_or(&empty);
    let new = new.unwrap_or(&empty);
    let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    keys.into_iter()
        .filter(|k| old.get(*k) != new.get(*k))
        .map(|k| Change {
            key: k.clone(),
            old: old.get(k).cloned(),
            new: new.get(k).cloned(),
        })
        .collect()
}

/// An event as the index holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct EventDocument {
    pub height: u64,
    pub event: Event,
    pub changes: Vec<Change>,
}

impl EventDocument {
    /// The document for `event`, sealed in block `height`, given the
    /// element's state before it (whole or summarized: the changes hold
    /// long values summarized either way).
    pub fn new(
        height: u64,
        event: Event,
        before: Option<&State>,
    ) -> Result<Self, fschain_schema::SchemaError> {
        let before = before.cloned().map(summarize_state);
        let after = event.op.apply_to(before.as_ref())?.map(summarize_state);
        let changes = changes(before.as_ref(), after.as_ref());
        Ok(EventDocument {
            height,
            event,
            changes,
        })
    }

    /// The text both embedders see: the element, the action, what changed
    /// (old → new), the reason and the actor.
    pub fn text(&self) -> String {
        let op = &self.event.op;
        let mut text = format!("{} {}.", op.element, op.action.as_str());
        for change in &self.changes {
            text.push(' ');
            text.push_str(&change.describe_brief());
            text.push(';');
        }
        if let Some(reason) = &op.reason {
            text.push_str(" Reason: ");
            text.push_str(reason);
            text.push('.');
        }
        if let Some(actor) = &op.actor {
            text.push_str(" Actor: ");
            text.push_str(actor);
            text.push('.');
        }
        if let Some(signer) = op.signer() {
            text.push_str(" Signed by: ");
            text.push_str(&signer.principal);
            text.push('.');
        }
        text
    }

    /// The text the language model sees: the reason first, in the
    /// operator's words, then what it was done to. Values and digests are
    /// left out: to a language model they are tokens of noise that pull a
    /// paraphrased question away from the event it means.
    pub fn natural_text(&self) -> String {
        let op = &self.event.op;
        let element = format!("{} {}", op.element.kind(), op.element.name());
        match &op.reason {
            Some(reason) => format!("{reason} ({element})"),
            None => format!("{element} {}", op.action.as_str()),
        }
    }

    /// The text the lexical embedder sees: [`Self::text`] with the reason
    /// counted twice. The reason is the operator's own words about why,
    /// which is what people search for; the changed values are mostly
    /// numbers, paths and digests that only match by accident.
    pub fn lexical_text(&self) -> String {
        let mut text = self.text();
        if let Some(reason) = &self.event.op.reason {
            text.push(' ');
            text.push_str(reason);
        }
        text
    }

    /// The point id: the first 16 bytes of the event hash, so indexing the
    /// same event twice overwrites one point.
    pub fn point_id(&self) -> [u8; 16] {
        let mut id = [0u8; 16];
        id.copy_from_slice(&self.event.hash.digest().as_bytes()[..16]);
        id
    }

    /// The payload stored with the point. Field names are in [`fields`].
    pub fn payload(&self) -> Value {
        let op = &self.event.op;
        json!({
            fields::CHAIN: self.event.chain.as_str(),
            fields::HEIGHT: self.height,
            fields::ELEMENT: op.element.as_str(),
            fields::KIND: op.element.kind(),
            fields::ACTION: op.action.as_str(),
            fields::TIME: self.event.time.to_string(),
            fields::TIME_MICROS: self.event.time.as_micros(),
            fields::CHAIN_SEQ: self.event.chain_seq,
            fields::ELEMENT_SEQ: self.event.element_seq,
            fields::EVENT_HASH: self.event.hash.to_hex(),
            fields::REASON: op.reason,
            fields::ACTOR: op.actor,
            fields::SIGNER: op.signer().map(ToString::to_string),
            fields::CHANGES: self.changes,
        })
    }
}

/// Payload field names: the compatibility surface of an index.
pub mod fields {
    pub const CHAIN: &str = "chain";
    pub const HEIGHT: &str = "height";
    pub const ELEMENT: &str = "element";
    pub const KIND: &str = "kind";
    pub const ACTION: &str = "action";
    pub const TIME: &str = "time";
    pub const TIME_MICROS: &str = "time_us";
    pub const CHAIN_SEQ: &str = "chain_seq";
    pub const ELEMENT_SEQ: &str = "element_seq";
    pub const EVENT_HASH: &str = "event_hash";
    pub const REASON: &str = "reason";
    pub const ACTOR: &str = "actor";
    /// `principal (SHA256:key)` of a signed operation.
    pub const SIGNER: &str = "signer";
    pub const CHANGES: &str = "changes";

    /// Fields with a keyword index.
    pub const KEYWORDS: [&str; 5] = [CHAIN, ELEMENT, KIND, ACTION, ACTOR];
    /// Fields with an integer index.
    pub const INTEGERS: [&str; 3] = [HEIGHT, TIME_MICROS, CHAIN_SEQ];
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(v: Value) -> State {
        match v {
            Value::Object(m) => m,
            _ => State::new(),
        }
    }

    #[test]
    fn changes_list_old_and_new_values_of_changed_keys_only() {
        let old = state(json!({"mtu": 1500, "up": true, "vlan": 10}));
        let new = state(json!({"mtu": 9000, "up": true, "speed": "10G"}));
        let got = changes(Some(&old), Some(&new));
        let described: Vec<String> = got.iter().map(Change::describe).collect();
        assert_eq!(
            described,
            [
                "mtu: 1500 → 9000",
                "speed: (none) → 10G",
                "vlan: 10 → (none)"
            ]
        );
    }

    #[test]
    fn embedded_text_cuts_digests_and_long_values() {
        let old = state(json!({"sha256": "ab".repeat(32), "note": "x".repeat(60)}));
        let c = changes(Some(&old), None);
        assert_eq!(c[1].describe_brief(), "sha256: abababab… → (none)");
        assert_eq!(
            c[0].describe_brief(),
            format!("note: {}… → (none)", "x".repeat(48))
        );
        assert!(c[1].describe().contains(&"ab".repeat(32)));
    }

    #[test]
    fn long_values_are_summarized_member_by_member_and_patches_still_apply() {
        let blob = "x".repeat(FULL_VALUE_BYTES + 1);
        let list: Vec<u32> = (0..1000).collect();
        let s = summarize_state(state(json!({
            "blob": blob, "list": list, "short": "y", "n": 7,
            "nested": {"blob": blob, "mtu": 1500}
        })));
        let placeholder = s["blob"].as_str().unwrap_or_default();
        assert!(
            placeholder.starts_with(&format!("<{} bytes, sha256 ", FULL_VALUE_BYTES + 3)),
            "{placeholder}"
        );
        assert_eq!(s["nested"]["blob"], s["blob"]);
        assert_eq!(s["nested"]["mtu"], 1500);
        assert_eq!((&s["short"], &s["n"]), (&json!("y"), &json!(7)));
        assert!(s["list"].as_str().is_some_and(|t| t.ends_with('>')));
        let other = summarize_state(state(json!({"blob": "z".repeat(FULL_VALUE_BYTES + 1)})));
        assert_ne!(other["blob"], s["blob"], "different long values differ");
        // The same long value set again is no change; a patch to a nested
        // member of a summarized object keeps its summarized siblings.
        let full = state(json!({"blob": blob, "nested": {"blob": blob, "mtu": 1500}}));
        let event = |action: &str, st: Value| {
            fschain_schema::Operation::from_value(
                json!({"element": "file:/x", "action": action, "state": st}),
            )
            .expect("op")
        };
        let set = event("set", Value::Object(full.clone()));
        let after = set.apply_to(Some(&s)).expect("set").map(summarize_state);
        assert_eq!(
            changes(Some(&s), after.as_ref()).len(),
            3,
            "list and the rest"
        );
        let patch = event("patch", json!({"nested": {"mtu": 9000}}));
        let after = patch
            .apply_to(Some(&s))
            .expect("patch")
            .map(summarize_state);
        let c = changes(Some(&s), after.as_ref());
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].new.as_ref().map(|n| &n["blob"]), Some(&s["blob"]));
    }

    #[test]
    fn a_new_element_changes_every_key_and_a_deleted_one_loses_every_key() {
        let s = state(json!({"a": 1, "b": "x"}));
        assert_eq!(changes(None, Some(&s)).len(), 2);
        assert!(changes(Some(&s), None).iter().all(|c| c.new.is_none()));
        assert!(changes(Some(&s), Some(&s)).is_empty());
    }
}
