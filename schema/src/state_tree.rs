//! The state tree: an RFC 6962 tree over every live element, ordered by
//! element id, kept incrementally so a block costs O(changed · log n).

use std::collections::BTreeMap;

use crate::merkle::{InclusionProof, LeafEdit, MerkleLevels};
use crate::{Digest, ElementId, StateHash, StateRoot};

/// The leaf data of an element: `element id ‖ 0x00 ‖ state hash` (element
/// ids never hold a NUL, so the split is unambiguous).
pub fn state_leaf_data(element: &ElementId, state: &StateHash) -> Vec<u8> {
    let mut data = Vec::with_capacity(element.as_str().len() + 33);
    data.extend_from_slice(element.as_str().as_bytes());
    data.push(0);
    data.extend_from_slice(state.digest().as_bytes());
    data
}

/// The leaf hash of an element.
pub fn state_leaf_hash(element: &ElementId, state: &StateHash) -> Digest {
    // leaf_hash(state_leaf_data(..)), without building the data.
    Digest::of_parts(&[
        &[0x00],
        element.as_str().as_bytes(),
        &[0],
        state.digest().as_bytes(),
    ])
}

/// Up to this many elements created or removed in a block are edited in
/// place; more are merged in one pass over every element.
const IN_PLACE_MAX: usize = 16;

/// Every live element's state hash, and the Merkle tree over them.
///
/// Changes are staged with [`StateTree::stage`] and folded in by
/// [`StateTree::commit`]: a changed state rehashes its O(log n) ancestors;
/// creating or removing elements also rehashes the nodes right of the
/// leftmost such element, since RFC 6962 positions move (see ARCHITECTURE.md).
#[derive(Clone, Debug, Default)]
pub struct StateTree {
    ids: Vec<ElementId>,
    states: Vec<StateHash>,
    tree: MerkleLevels,
    staged: BTreeMap<ElementId, Option<StateHash>>,
}

impl StateTree {
    /// Builds the tree from `(element, state)` pairs in any order; a later
    /// pair for the same element wins.
    pub fn from_entries(entries: impl IntoIterator<Item = (ElementId, StateHash)>) -> Self {
        let map: BTreeMap<ElementId, StateHash> = entries.into_iter().collect();
        let (ids, states): (Vec<_>, Vec<_>) = map.into_iter().unzip();
        let leaves = ids
            .iter()
            .zip(&states)
            .map(|(id, s)| state_leaf_hash(id, s))
            .collect();
        StateTree {
            ids,
            states,
            tree: MerkleLevels::from_leaves(leaves),
            staged: BTreeMap::new(),
        }
    }

    /// Number of live elements, staged changes excluded.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The committed state hash of `element`.
    pub fn get(&self, element: &ElementId) -> Option<StateHash> {
        self.ids.binary_search(element).ok().map(|i| self.states[i])
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ElementId, &StateHash)> {
        self.ids.iter().zip(&self.states)
    }

    /// Records that `element` now has `state` (`None`: deleted).
    pub fn stage(&mut self, element: ElementId, state: Option<StateHash>) {
        self.staged.insert(element, state);
    }

    /// Drops staged changes.
    pub fn discard_staged(&mut self) {
        self.staged.clear();
    }

    /// Folds staged changes in and returns the new root.
    pub fn commit(&mut self) -> StateRoot {
        let staged = std::mem::take(&mut self.staged);
        let structural = staged
            .iter()
            .filter(|(id, state)| self.ids.binary_search(id).is_ok() != state.is_some())
            .count();
        if structural > IN_PLACE_MAX {
            self.merge(staged);
        } else {
            self.edit_in_place(staged);
        }
        self.root()
    }

    /// Few elements created or removed: each is inserted or removed where
    /// it belongs (a move of the entries right of it), and the tree is
    /// rehashed once. Rebuilding every vector instead cost a copy and fresh
    /// pages for all of them, a third of a one-element create at 100,000.
    fn edit_in_place(&mut self, staged: BTreeMap<ElementId, Option<StateHash>>) {
        let mut edits = Vec::new();
        for (id, state) in staged {
            match (self.ids.binary_search(&id), state) {
                (Ok(i), Some(s)) => {
                    self.states[i] = s;
                    edits.push(LeafEdit::Set(i, state_leaf_hash(&id, &s)));
                }
                (Ok(i), None) => {
                    self.ids.remove(i);
                    self.states.remove(i);
                    edits.push(LeafEdit::Remove(i));
                }
                (Err(i), Some(s)) => {
                    edits.push(LeafEdit::Insert(i, state_leaf_hash(&id, &s)));
                    self.ids.insert(i, id);
                    self.states.insert(i, s);
                }
                (Err(_), None) => {}
            }
        }
        self.tree.edit(&edits);
    }

    fn merge(&mut self, staged: BTreeMap<ElementId, Option<StateHash>>) {
        let old_ids = std::mem::take(&mut self.ids);
        let old_states = std::mem::take(&mut self.states);
        let old_leaves = self.tree.leaves().to_vec();
        let mut ids = Vec::with_capacity(old_ids.len() + staged.len());
        let mut states = Vec::with_capacity(ids.capacity());
        let mut leaves = Vec::with_capacity(ids.capacity());
        let mut first_change: Option<usize> = None;
        let mut old = old_ids
            .into_iter()
            .zip(old_states)
            .zip(old_leaves)
            .peekable();
        let mut new = staged.into_iter().peekable();
        loop {
            let take_old = match (old.peek(), new.peek()) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(((o, _), _)), Some((n, _))) => o < n,
            };
            if take_old {
                if let Some(((id, s), leaf)) = old.next() {
                    ids.push(id);
                    states.push(s);
                    leaves.push(leaf);
                }
                continue;
            }
            let Some((id, state)) = new.next() else { break };
            let existed = old.peek().is_some_and(|((o, _), _)| *o == id);
            if existed {
                old.next();
            }
            if existed != state.is_some() {
                first_change.get_or_insert(ids.len());
            }
            if let Some(s) = state {
                leaves.push(state_leaf_hash(&id, &s));
                ids.push(id);
                states.push(s);
            }
        }
        // Positions before the first structural change kept their index; an
        // update among them still changed a leaf, so rebuild from the lowest
        // changed leaf of either kind.
        let unchanged = first_change.unwrap_or(ids.len());
        let lowest_update = leaves
            .iter()
            .zip(self.tree.leaves())
            .take(unchanged)
            .position(|(a, b)| a != b)
            .unwrap_or(unchanged);
        self.ids = ids;
        self.states = states;
        self.tree.splice(leaves, lowest_update);
    }

    /// The committed root.
    pub fn root(&self) -> StateRoot {
        StateRoot(self.tree.root())
    }

    /// The inclusion proof of `element`'s committed state.
    pub fn proof(&self, element: &ElementId) -> Option<(StateHash, InclusionProof)> {
        let i = self.ids.binary_search(element).ok()?;
        Some((self.states[i], self.tree.proof(i)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(i: u16) -> ElementId {
        ElementId::parse(&format!("k:e{i}")).unwrap()
    }

    fn sh(x: u16) -> StateHash {
        StateHash(Digest::of(&x.to_be_bytes()))
    }

    proptest! {
        /// The verifier's quick root is the tree's root, later pairs win.
        #[test]
        fn state_root_of_is_the_trees_root(
            pairs in proptest::collection::vec((0u16..30, any::<u16>()), 0..60)) {
            let entries: Vec<_> = pairs.iter().map(|&(e, s)| (id(e), sh(s))).collect();
            prop_assert_eq!(
                crate::verify::state_root_of(entries.clone()),
                StateTree::from_entries(entries).root()
            );
        }

        #[test]
        fn commits_equal_a_rebuild(batches in proptest::collection::vec(
            proptest::collection::vec((0u16..60, proptest::option::of(any::<u16>())), 0..50), 1..8)) {
            let mut tree = StateTree::default();
            let mut model: BTreeMap<ElementId, StateHash> = BTreeMap::new();
            for batch in batches {
                for (e, s) in batch {
                    tree.stage(id(e), s.map(sh));
                    match s {
                        Some(s) => { model.insert(id(e), sh(s)); }
                        None => { model.remove(&id(e)); }
                    }
                }
                let root = tree.commit();
                let rebuilt = StateTree::from_entries(model.clone());
                prop_assert_eq!(root, rebuilt.root());
                prop_assert_eq!(tree.len(), model.len());
                for (e, s) in &model {
                    let (got, proof) = tree.proof(e).unwrap();
                    prop_assert_eq!(got, *s);
                    prop_assert!(proof.verify(&state_leaf_hash(e, s), root.digest()).is_ok());
                }
            }
        }
    }
}
