//! Operations: what a user asks fschain to do to an element.

use std::fmt;

use serde_json::{Map, Value};

use crate::{ElementId, SchemaError};

/// What an operation does to its element's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Replace the state (creating the element if needed).
    Set,
    /// RFC 7396 JSON Merge Patch onto an existing element's state.
    Patch,
    /// Remove an existing element.
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Set => "set",
            Action::Patch => "patch",
            Action::Delete => "delete",
        }
    }

    pub fn parse(text: &str) -> Result<Self, SchemaError> {
        match text {
            "set" => Ok(Action::Set),
            "patch" => Ok(Action::Patch),
            "delete" => Ok(Action::Delete),
            other => Err(SchemaError::UnknownAction {
                action: other.chars().take(40).collect(),
            }),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An element's state: always a JSON object.
pub type State = Map<String, Value>;

/// One operation, as read from a JSON line:
/// `{"element":"iface:eth0","action":"set","state":{...},"reason":"...","actor":"..."}`.
#[derive(Clone, Debug, PartialEq)]
pub struct Operation {
    pub element: ElementId,
    pub action: Action,
    /// The new state for `set`, the merge patch for `patch`, absent for `delete`.
    pub state: Option<State>,
    pub reason: Option<String>,
    pub actor: Option<String>,
    /// An OpenSSH signature over [`Operation::signed_bytes`], and once
    /// checked ([`crate::sshsig::SignaturePolicy::check`]), who signed it.
    pub signature: Option<OpSignature>,
}

/// An operation's signature as sent (`signature`: the armored sshsig text)
/// and, once checked, its signer (`signer`), both recorded in its event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpSignature {
    pub armored: String,
    pub signer: Option<crate::sshsig::Signer>,
}

impl Operation {
    /// Parses one JSON Lines record. Unknown members are refused, so a typo
    /// (`"reson"`) is an error rather than silently dropped text.
    pub fn from_json(text: &str) -> Result<Self, SchemaError> {
        let value: Value = serde_json::from_str(text).map_err(|e| SchemaError::Json {
            message: e.to_string(),
        })?;
        Self::from_value(value)
    }

    pub fn from_value(value: Value) -> Result<Self, SchemaError> {
        Self::read(value, false)
    }

    /// Reads the operation an event records: as [`Operation::from_value`],
    /// and a `signer` is taken too.
    pub fn from_recorded(value: Value) -> Result<Self, SchemaError> {
        Self::read(value, true)
    }

    fn read(value: Value, recorded: bool) -> Result<Self, SchemaError> {
        let Value::Object(mut map) = value else {
            return Err(SchemaError::BadOperation {
                why: "an operation must be a JSON object".into(),
            });
        };
        let element = match map.remove("element") {
            Some(Value::String(s)) => ElementId::parse(&s)?,
            Some(_) => return Err(bad_op("\"element\" must be a string")),
            None => return Err(bad_op("missing \"element\"")),
        };
        let action = match map.remove("action") {
            Some(Value::String(s)) => Action::parse(&s)?,
            Some(_) => return Err(bad_op("\"action\" must be a string")),
            None => return Err(bad_op("missing \"action\"")),
        };
        let state = match map.remove("state") {
            None | Some(Value::Null) => None,
            Some(Value::Object(state)) => Some(state),
            Some(_) => {
                return Err(SchemaError::StateNotObject {
                    element: element.to_string(),
                })
            }
        };
        let reason = optional_text(&mut map, "reason")?;
        let actor = optional_text(&mut map, "actor")?;
        let signer = match map.remove("signer") {
            None => None,
            Some(_) if !recorded => return Err(bad_op(
                "\"signer\" is recorded by fschain from a checked signature; send \"signature\"",
            )),
            Some(value) => Some(read_signer(value)?),
        };
        let signature = match optional_text(&mut map, "signature")? {
            Some(armored) => Some(OpSignature { armored, signer }),
            None if signer.is_some() => return Err(bad_op("a \"signer\" without a \"signature\"")),
            None => None,
        };
        if let Some(unknown) = map.keys().next() {
            return Err(bad_op(&format!("unknown member {unknown:?}")));
        }
        let op = Operation {
            element,
            action,
            state,
            reason,
            actor,
            signature,
        };
        op.check_shape()?;
        Ok(op)
    }

    fn check_shape(&self) -> Result<(), SchemaError> {
        match (self.action, &self.state) {
            (Action::Set | Action::Patch, None) => Err(bad_op(&format!(
                "{} of {} needs a \"state\" object",
                self.action, self.element
            ))),
            (Action::Delete, Some(_)) => Err(bad_op(&format!(
                "delete of {} takes no \"state\"",
                self.element
            ))),
            _ => Ok(()),
        }
    }

    /// The operation as an event records it (the element is recorded beside
    /// it): `action`, then `actor`, `reason` and `state` when present.
    pub fn to_event_value(&self) -> Value {
        let mut map = Map::new();
        map.insert("action".into(), Value::String(self.action.as_str().into()));
        if let Some(actor) = &self.actor {
            map.insert("actor".into(), Value::String(actor.clone()));
        }
        if let Some(reason) = &self.reason {
            map.insert("reason".into(), Value::String(reason.clone()));
        }
        if let Some(state) = &self.state {
            map.insert("state".into(), Value::Object(state.clone()));
        }
        if let Some(sig) = &self.signature {
            map.insert("signature".into(), Value::String(sig.armored.clone()));
            if let Some(signer) = &sig.signer {
                let mut who = Map::new();
                who.insert("key".into(), Value::String(signer.key.clone()));
                who.insert("principal".into(), Value::String(signer.principal.clone()));
                map.insert("signer".into(), Value::Object(who));
            }
        }
        Value::Object(map)
    }

    /// Who signed the operation, once its signature is checked.
    pub fn signer(&self) -> Option<&crate::sshsig::Signer> {
        self.signature.as_ref().and_then(|s| s.signer.as_ref())
    }

    /// The bytes an operation's signature covers: the canonical JSON of
    /// the operation with `element` and without `signature` and `signer`
    /// (what `fschain op canonical` prints).
    pub fn signed_bytes(&self) -> Result<Vec<u8>, SchemaError> {
        let unsigned = Operation {
            signature: None,
            ..self.clone()
        };
        crate::jcs::canonical(&unsigned.to_value())
    }

    /// The operation as `fschain apply` reads it.
    pub fn to_value(&self) -> Value {
        let mut value = self.to_event_value();
        if let Value::Object(map) = &mut value {
            map.insert("element".into(), Value::String(self.element.to_string()));
        }
        value
    }

    /// The state after this operation, given the state before it.
    ///
    /// `patch` and `delete` of an element that does not exist are errors.
    pub fn apply_to(&self, current: Option<&State>) -> Result<Option<State>, SchemaError> {
        self.apply_owned(current.cloned())
    }

    /// [`Self::apply_to`], patching the state it is given in place.
    pub fn apply_owned(&self, current: Option<State>) -> Result<Option<State>, SchemaError> {
        match (self.action, current) {
            (Action::Set, _) => Ok(self.state.clone()),
            (Action::Patch, Some(mut current)) => {
                if let Some(patch) = &self.state {
                    merge_patch_object(&mut current, patch);
                }
                Ok(Some(current))
            }
            (Action::Delete, Some(_)) => Ok(None),
            (Action::Patch | Action::Delete, None) => Err(SchemaError::NoSuchElement {
                element: self.element.to_string(),
                action: self.action,
            }),
        }
    }
}

fn bad_op(why: &str) -> SchemaError {
    SchemaError::BadOperation {
        why: why.to_owned(),
    }
}

fn read_signer(value: Value) -> Result<crate::sshsig::Signer, SchemaError> {
    let bad = || bad_op("\"signer\" must be {\"key\": text, \"principal\": text}");
    let Value::Object(mut map) = value else {
        return Err(bad());
    };
    let key = optional_text(&mut map, "key")?.ok_or_else(bad)?;
    let principal = optional_text(&mut map, "principal")?.ok_or_else(bad)?;
    if !map.is_empty() {
        return Err(bad());
    }
    Ok(crate::sshsig::Signer { principal, key })
}

fn optional_text(map: &mut Map<String, Value>, key: &str) -> Result<Option<String>, SchemaError> {
    match map.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad_op(&format!("\"{key}\" must be a string"))),
    }
}

/// RFC 7396 JSON Merge Patch, applied in place.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        merge_patch_object(target, patch);
    }
}

/// RFC 7396 JSON Merge Patch of an object by an object, in place.
fn merge_patch_object(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc7396_appendix_a() {
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (
                json!({"a":"b","b":"c"}),
                json!({"a":null}),
                json!({"b":"c"}),
            ),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"a":"foo"}), json!(null), json!(null)),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (
                json!({}),
                json!({"a":{"bb":{"ccc":null}}}),
                json!({"a":{"bb":{}}}),
            ),
        ];
        for (mut target, patch, want) in cases {
            merge_patch(&mut target, &patch);
            assert_eq!(target, want);
        }
    }

    #[test]
    fn parses_the_sample_format() {
        let op = Operation::from_json(
            r#"{"element":"iface:eth0","action":"set","state":{"mtu":9000,"up":true},"reason":"jumbo frames","actor":"ops@host1"}"#,
        )
        .unwrap();
        assert_eq!(op.action, Action::Set);
        assert_eq!(op.reason.as_deref(), Some("jumbo frames"));
        assert_eq!(Operation::from_value(op.to_value()).unwrap(), op);
    }

    #[test]
    fn names_what_is_wrong() {
        let err = |s: &str| Operation::from_json(s).unwrap_err().to_string();
        assert!(
            err(r#"{"element":"iface:eth0","action":"frob","state":{}}"#)
                .contains("unknown action \"frob\"")
        );
        assert!(err(r#"{"element":"eth0","action":"set","state":{}}"#).contains("eth0"));
        assert!(
            err(r#"{"element":"iface:eth0","action":"set","state":[1]}"#)
                .contains("not a JSON object")
        );
        assert!(err(r#"{"element":"iface:eth0","action":"set"}"#).contains("needs a \"state\""));
        assert!(
            err(r#"{"element":"iface:eth0","action":"set","state":{},"reson":"x"}"#)
                .contains("reson")
        );
        assert!(err(r#"{"element":"iface:eth0","#).contains("JSON"));
    }

    #[test]
    fn patch_and_delete_need_an_existing_element() {
        let patch =
            Operation::from_json(r#"{"element":"a:b","action":"patch","state":{"x":1}}"#).unwrap();
        assert!(matches!(
            patch.apply_to(None),
            Err(SchemaError::NoSuchElement { .. })
        ));
        let current = json!({"x": 0, "y": 2}).as_object().cloned().unwrap();
        let next = patch.apply_to(Some(&current)).unwrap().unwrap();
        assert_eq!(Value::Object(next), json!({"x":1,"y":2}));
        let delete = Operation::from_json(r#"{"element":"a:b","action":"delete"}"#).unwrap();
        assert_eq!(delete.apply_to(Some(&current)).unwrap(), None);
        assert!(delete.apply_to(None).is_err());
    }
}
