//! What differs between the chain's head and the host: a pure function of
//! two maps, and the operations that record it.

use std::collections::{BTreeMap, BTreeSet};

use fschain_schema::{state_hash, Action, ElementId, Operation, State, StateHash};
use serde::Serialize;

/// How one element differs.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "change", rename_all = "lowercase")]
pub enum Change {
    /// On the host, not in the chain.
    Added { state: State },
    /// In both, different: the keys that changed.
    Changed {
        keys: Vec<String>,
        old: State,
        new: State,
    },
    /// In the chain, gone from the host.
    Removed { old: State },
}

impl Change {
    /// `+`, `~` or `-`, as `drift` prints it.
    pub fn sign(&self) -> char {
        match self {
            Change::Added { .. } => '+',
            Change::Changed { .. } => '~',
            Change::Removed { .. } => '-',
        }
    }

    /// The state the host has now (`None`: removed).
    pub fn new_state(&self) -> Option<&State> {
        match self {
            Change::Added { state } => Some(state),
            Change::Changed { new, .. } => Some(new),
            Change::Removed { .. } => None,
        }
    }

    /// The operation that makes the chain say what the host says.
    pub fn operation(&self, element: &ElementId, reason: &str, actor: &str) -> Operation {
        operation(element, self.new_state().cloned(), reason, actor)
    }
}

/// The operation that makes the chain hold `state` for `element`
/// (`None`: the element is gone).
pub fn operation(
    element: &ElementId,
    state: Option<State>,
    reason: &str,
    actor: &str,
) -> Operation {
    Operation {
        element: element.clone(),
        action: if state.is_some() {
            Action::Set
        } else {
            Action::Delete
        },
        state,
        reason: Some(reason.to_owned()),
        actor: Some(actor.to_owned()),
        signature: None,
    }
}

/// Whether an element held with state hash `held` (`None`: not held) is
/// now `now` (`None`: gone) in a way the chain must record. A state that
/// cannot be hashed differs: recording it says why.
pub fn differs(held: Option<&StateHash>, now: Option<&State>) -> bool {
    match (held, now) {
        (None, None) => false,
        (Some(_), None) | (None, Some(_)) => true,
        (Some(held), Some(now)) => state_hash(now) != Ok(*held),
    }
}

/// What a scan found: every element, and the states it kept (all of
/// them, or only those that differ from the head).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scan {
    pub found: BTreeSet<ElementId>,
    pub states: BTreeMap<ElementId, State>,
}

impl Scan {
    /// A scan that kept every state it found.
    pub fn of(states: BTreeMap<ElementId, State>) -> Self {
        Scan {
            found: states.keys().cloned().collect(),
            states,
        }
    }

    pub fn append(&mut self, other: Scan) {
        self.found.extend(other.found);
        self.states.extend(other.states);
    }
}

/// [`compare`] against the head's state hashes, which is all a watch
/// keeps of the head (a few dozen bytes an element, however large its
/// state): each element that differs, with its state now (`None`: gone),
/// in element order. The scan need only have kept the states that differ.
pub fn compare_hashes(
    head: &BTreeMap<ElementId, StateHash>,
    scan: Scan,
    owns: impl Fn(&ElementId) -> bool,
) -> Vec<(ElementId, Option<State>)> {
    let mut changes: Vec<(ElementId, Option<State>)> = head
        .keys()
        .filter(|e| owns(e) && !scan.found.contains(*e))
        .map(|e| (e.clone(), None))
        .collect();
    changes.extend(
        scan.states
            .into_iter()
            .filter(|(e, s)| differs(head.get(e), Some(s)))
            .map(|(e, s)| (e, Some(s))),
    );
    changes.sort_by(|a, b| a.0.cmp(&b.0));
    changes
}

/// How `element` went from `old` to `new` (each `None` when absent), or
/// `None` when nothing changed.
pub fn change(old: Option<&State>, new: Option<&State>) -> Option<Change> {
    match (old, new) {
        (None, None) => None,
        (None, Some(state)) => Some(Change::Added {
            state: state.clone(),
        }),
        (Some(old), None) => Some(Change::Removed { old: old.clone() }),
        (Some(old), Some(new)) => {
            let keys = changed_keys(old, new);
            (!keys.is_empty()).then(|| Change::Changed {
                keys,
                old: old.clone(),
                new: new.clone(),
            })
        }
    }
}

/// Every element of `head` that `owns` accepts, against `observed`: what a
/// watch records and what `drift` prints, in element order.
pub fn compare(
    head: &BTreeMap<ElementId, State>,
    observed: &BTreeMap<ElementId, State>,
    owns: impl Fn(&ElementId) -> bool,
) -> Vec<(ElementId, Change)> {
    let mut changes = Vec::new();
    for (element, state) in observed {
        if let Some(c) = change(head.get(element), Some(state)) {
            changes.push((element.clone(), c));
        }
    }
    for (element, state) in head {
        if owns(element) && !observed.contains_key(element) {
            changes.push((element.clone(), Change::Removed { old: state.clone() }));
        }
    }
    changes.sort_by(|a, b| a.0.cmp(&b.0));
    changes
}

/// Keys whose values differ, present in one only included, sorted.
pub fn changed_keys(old: &State, new: &State) -> Vec<String> {
    let mut keys: Vec<String> = old
        .iter()
        .filter(|(k, v)| new.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .chain(new.keys().filter(|k| !old.contains_key(*k)).cloned())
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn state(pairs: &[(&str, i64)]) -> State {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).into()))
            .collect()
    }

    fn id(n: u8) -> ElementId {
        ElementId::parse(&format!("file:/e{n}")).unwrap()
    }

    #[test]
    fn added_changed_removed_and_foreign_elements_left_alone() {
        let head: BTreeMap<_, _> = [
            (id(1), state(&[("a", 1)])),
            (id(2), state(&[("a", 1), ("b", 2)])),
            (id(3), state(&[("a", 1)])),
            (
                ElementId::parse("iface:eth0").unwrap(),
                state(&[("mtu", 1500)]),
            ),
        ]
        .into();
        let observed: BTreeMap<_, _> = [
            (id(2), state(&[("a", 1), ("b", 3), ("c", 0)])),
            (id(3), state(&[("a", 1)])),
            (id(4), state(&[("a", 1)])),
        ]
        .into();
        let changes = compare(&head, &observed, |e| e.kind() == "file");
        let signs: Vec<(String, char)> = changes
            .iter()
            .map(|(e, c)| (e.to_string(), c.sign()))
            .collect();
        assert_eq!(
            signs,
            [
                ("file:/e1".into(), '-'),
                ("file:/e2".into(), '~'),
                ("file:/e4".into(), '+')
            ]
        );
        let Change::Changed { keys, .. } = &changes[1].1 else {
            panic!()
        };
        assert_eq!(keys, &["b", "c"]);
        assert_eq!(
            changes[0].1.operation(&id(1), "r", "a").action,
            Action::Delete
        );
        assert_eq!(changes[2].1.operation(&id(4), "r", "a").action, Action::Set);
    }

    fn arb_states() -> impl Strategy<Value = BTreeMap<ElementId, State>> {
        proptest::collection::btree_map(
            (0u8..12).prop_map(id),
            proptest::collection::vec((0u8..3, 0i64..3), 0..3).prop_map(|kv| {
                kv.into_iter()
                    .map(|(k, v)| (format!("k{k}"), v.into()))
                    .collect::<State>()
            }),
            0..10,
        )
    }

    proptest! {
        /// Applying the changes to the head gives exactly the observed states.
        #[test]
        fn applying_the_changes_makes_the_head_what_was_observed(
            head in arb_states(),
            observed in arb_states(),
        ) {
            let mut result = head.clone();
            for (element, change) in compare(&head, &observed, |_| true) {
                match change.new_state() {
                    Some(s) => { result.insert(element, s.clone()); }
                    None => { result.remove(&element); }
                }
            }
            prop_assert_eq!(&result, &observed);
            prop_assert!(compare(&observed, &observed, |_| true).is_empty());
        }

        /// Comparing by state hash finds what comparing states finds.
        #[test]
        fn comparing_hashes_agrees_with_comparing_states(
            head in arb_states(),
            observed in arb_states(),
        ) {
            let hashes = head
                .iter()
                .map(|(e, s)| (e.clone(), state_hash(s).unwrap()))
                .collect();
            let by_hash = compare_hashes(&hashes, Scan::of(observed.clone()), |_| true);
            // A scan that kept only the states that differ finds the same.
            let mut kept = Scan::of(observed.clone());
            kept.states.retain(|e, s| differs(hashes.get(e), Some(s)));
            prop_assert_eq!(&compare_hashes(&hashes, kept, |_| true), &by_hash);
            let by_state: Vec<(ElementId, Option<State>)> = compare(&head, &observed, |_| true)
                .into_iter()
                .map(|(e, c)| (e, c.new_state().cloned()))
                .collect();
            prop_assert_eq!(by_hash, by_state);
        }
    }
}
