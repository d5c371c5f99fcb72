//! RFC 6962 (Certificate Transparency) Merkle trees: roots, inclusion proofs,
//! and an incremental tree whose update costs O(changed · log n).
//!
//! leaf = SHA-256(0x00 ‖ data), node = SHA-256(0x01 ‖ left ‖ right); the
//! tree over n leaves splits at the largest power of two below n. Built
//! bottom up, that is the same as pairing neighbours on every level and
//! carrying a lone last node up unchanged, which is what [`MerkleLevels`] does.

use serde::{Deserialize, Serialize};

use crate::{Digest, SchemaError};

/// SHA-256(0x00 ‖ data).
pub fn leaf_hash(data: &[u8]) -> Digest {
    Digest::of_parts(&[&[0x00], data])
}

/// SHA-256(0x01 ‖ left ‖ right).
pub fn node_hash(left: &Digest, right: &Digest) -> Digest {
    Digest::of_parts(&[&[0x01], left.as_bytes(), right.as_bytes()])
}

/// The RFC 6962 root of the given leaf hashes; SHA-256("") when empty.
pub fn root_of(leaves: &[Digest]) -> Digest {
    MerkleLevels::from_leaves(leaves.to_vec()).root()
}

/// An inclusion proof: the audit path of RFC 6962 section 2.1.1, bottom up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    pub leaf_index: u64,
    pub tree_size: u64,
    pub path: Vec<Digest>,
}

impl InclusionProof {
    /// Checks that `leaf` (a leaf hash) sits at `leaf_index` of a tree of
    /// `tree_size` leaves whose root is `root` (RFC 9162 section 2.1.3.2).
    pub fn verify(&self, leaf: &Digest, root: &Digest) -> Result<(), SchemaError> {
        let computed = self.root_from(leaf)?;
        if &computed == root {
            Ok(())
        } else {
            Err(SchemaError::ProofMismatch {
                expected: *root,
                actual: computed,
            })
        }
    }

    fn root_from(&self, leaf: &Digest) -> Result<Digest, SchemaError> {
        let bad = |why: &'static str| SchemaError::BadProof { why };
        if self.leaf_index >= self.tree_size {
            return Err(bad("leaf index is outside the tree"));
        }
        let (mut f, mut s) = (self.leaf_index, self.tree_size - 1);
        let mut r = *leaf;
        for p in &self.path {
            if s == 0 {
                return Err(bad("path is longer than the tree is deep"));
            }
            if f & 1 == 1 || f == s {
                r = node_hash(p, &r);
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            } else {
                r = node_hash(&r, p);
            }
            f >>= 1;
            s >>= 1;
        }
        if s != 0 {
            return Err(bad("path is shorter than the tree is deep"));
        }
        Ok(r)
    }
}

/// The consistency proof of RFC 9162 section 2.1.4.1 between the tree of
/// the first `old_size` of `leaves` (leaf hashes) and the tree of all of
/// them. Empty when the sizes are equal or `old_size` is 0.
pub fn consistency_proof(leaves: &[Digest], old_size: usize) -> Vec<Digest> {
    fn subproof(m: usize, d: &[Digest], whole: bool, out: &mut Vec<Digest>) {
        let n = d.len();
        if m == n {
            if !whole {
                out.push(root_of(d));
            }
            return;
        }
        let k = split_point(n);
        if m <= k {
            subproof(m, &d[..k], whole, out);
            out.push(root_of(&d[k..]));
        } else {
            subproof(m - k, &d[k..], false, out);
            out.push(root_of(&d[..k]));
        }
    }
    let mut out = Vec::new();
    if old_size > 0 && old_size < leaves.len() {
        subproof(old_size, leaves, true, &mut out);
    }
    out
}

/// The largest power of two below `n` (n > 1).
fn split_point(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// Checks a consistency proof (RFC 9162 section 2.1.4.2): the tree of
/// `new_size` leaves with root `new_root` extends the one of `old_size`
/// with root `old_root`.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Digest,
    new_root: &Digest,
    proof: &[Digest],
) -> Result<(), SchemaError> {
    let bad = |why: &str| SchemaError::BadConsistency {
        why: why.to_owned(),
    };
    if old_size > new_size {
        return Err(bad(&format!(
            "the tree went backwards: size {new_size} after size {old_size}"
        )));
    }
    if old_size == new_size {
        return if proof.is_empty() && old_root == new_root {
            Ok(())
        } else if old_root != new_root {
            Err(bad(
                "two trees of the same size with different roots (a fork)",
            ))
        } else {
            Err(bad("a proof between equal sizes must be empty"))
        };
    }
    if old_size == 0 {
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(bad("a proof from the empty tree must be empty"))
        };
    }
    if proof.is_empty() {
        return Err(bad("the proof is empty"));
    }
    let mut path: Vec<Digest> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let (mut f, mut s) = (old_size - 1, new_size - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if s == 0 {
            return Err(bad("the proof is longer than the trees are deep"));
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(bad("the proof is shorter than the trees are deep"));
    }
    if &fr != old_root {
        return Err(bad("the proof does not lead to the older root"));
    }
    if &sr != new_root {
        return Err(bad("the proof does not lead to the newer root"));
    }
    Ok(())
}

/// A change to one leaf of a [`MerkleLevels`], at its position when made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeafEdit {
    Set(usize, Digest),
    Insert(usize, Digest),
    Remove(usize),
}

/// Every level of an RFC 6962 tree, leaves at level 0, kept so that a
/// changed leaf costs one hash per level.
#[derive(Clone, Debug)]
pub struct MerkleLevels {
    /// Never empty: `levels[0]` holds the leaves, the last level the root.
    levels: Vec<Vec<Digest>>,
}

impl Default for MerkleLevels {
    fn default() -> Self {
        MerkleLevels {
            levels: vec![Vec::new()],
        }
    }
}

impl MerkleLevels {
    pub fn from_leaves(leaves: Vec<Digest>) -> Self {
        let mut tree = MerkleLevels {
            levels: vec![leaves],
        };
        tree.rebuild_from(0);
        tree
    }

    pub fn len(&self) -> usize {
        self.levels[0].len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn leaves(&self) -> &[Digest] {
        &self.levels[0]
    }

    pub fn root(&self) -> Digest {
        match self.levels.last() {
            Some(top) if top.len() == 1 => top[0],
            _ => Digest::of(b""),
        }
    }

    /// Applies `edits` in order (each position as of that edit; panics on
    /// one out of range, as `Vec` does), then rehashes once: every node
    /// right of the leftmost insertion or removal, since positions there
    /// moved (O(n - index)), and the path of each leaf set left of it
    /// (O(log n) each).
    pub fn edit(&mut self, edits: &[LeafEdit]) {
        let leaves = &mut self.levels[0];
        let mut moved_from: Option<usize> = None;
        let mut set = Vec::new();
        for edit in edits {
            match *edit {
                LeafEdit::Set(i, leaf) => {
                    leaves[i] = leaf;
                    set.push(i);
                }
                LeafEdit::Insert(i, leaf) => {
                    leaves.insert(i, leaf);
                    moved_from = Some(moved_from.map_or(i, |m| m.min(i)));
                }
                LeafEdit::Remove(i) => {
                    leaves.remove(i);
                    moved_from = Some(moved_from.map_or(i, |m| m.min(i)));
                }
            }
        }
        // A leaf set at or right of `moved_from` is rehashed with the rest;
        // one left of it never moved, and its path is rehashed after, so
        // every node the rebuild made from its stale ancestors is redone.
        if let Some(from) = moved_from {
            self.rebuild_from(from);
        }
        for i in set {
            if moved_from.is_none_or(|from| i < from) {
                self.rehash_path(i);
            }
        }
    }

    fn rehash_path(&mut self, index: usize) {
        let mut i = index;
        for level in 1..self.levels.len() {
            i /= 2;
            let below = &self.levels[level - 1];
            let node = parent(below, i);
            self.levels[level][i] = node;
        }
    }

    /// Replaces level 0 with `leaves`, of which the first `unchanged` are
    /// known to be the same as before, and rehashes only what can differ.
    pub fn splice(&mut self, leaves: Vec<Digest>, unchanged: usize) {
        self.levels[0] = leaves;
        self.rebuild_from(unchanged);
    }

    /// Rehashes every node whose leaves start at or after `from`.
    fn rebuild_from(&mut self, from: usize) {
        let mut start = from;
        let mut level = 0;
        while self.levels[level].len() > 1 {
            let below_len = self.levels[level].len();
            let len = below_len.div_ceil(2);
            start /= 2;
            if self.levels.len() == level + 1 {
                self.levels.push(Vec::with_capacity(len));
            }
            let (lower, upper) = self.levels.split_at_mut(level + 1);
            let below = &lower[level];
            let this = &mut upper[0];
            this.truncate(start.min(len));
            let first = this.len();
            this.resize(len, Digest::default());
            parents_into(&mut this[first..], below, first);
            level += 1;
        }
        self.levels.truncate(level + 1);
    }

    /// The audit path for the leaf at `index`.
    pub fn proof(&self, index: usize) -> Option<InclusionProof> {
        if index >= self.len() {
            return None;
        }
        let mut path = Vec::new();
        let mut i = index;
        for level in &self.levels[..self.levels.len() - 1] {
            let sibling = i ^ 1;
            if sibling < level.len() {
                path.push(level[sibling]);
            }
            i /= 2;
        }
        Some(InclusionProof {
            leaf_index: index as u64,
            tree_size: self.len() as u64,
            path,
        })
    }
}

/// Below this many nodes a level is hashed on one thread: a thread costs
/// tens of microseconds, a node hash about a tenth of one.
const PARALLEL_NODES: usize = 4096;

/// Hashes the parents `first..first + out.len()` of the level `below` into
/// `out`, on two threads when there are many: creating an element shifts
/// every leaf right of it, so a block that creates one rehashes half the
/// tree on average (14.8 ms at 100,000 elements on one thread).
fn parents_into(out: &mut [Digest], below: &[Digest], first: usize) {
    let fill = |out: &mut [Digest], first: usize| {
        for (k, node) in out.iter_mut().enumerate() {
            *node = parent(below, first + k);
        }
    };
    if out.len() < PARALLEL_NODES {
        return fill(out, first);
    }
    let mid = out.len() / 2;
    let (left, right) = out.split_at_mut(mid);
    std::thread::scope(|scope| {
        scope.spawn(|| fill(left, first));
        fill(right, first + mid);
    });
}

fn parent(below: &[Digest], i: usize) -> Digest {
    match below.get(2 * i + 1) {
        Some(right) => node_hash(&below[2 * i], right),
        None => below[2 * i],
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_consistency_proof_checks_and_a_wrong_one_does_not() {
        let leaves: Vec<Digest> = (0u8..40).map(|i| leaf_hash(&[i])).collect();
        for n in 1..=leaves.len() {
            let new_root = root_of(&leaves[..n]);
            for m in 0..=n {
                let old_root = root_of(&leaves[..m]);
                let proof = consistency_proof(&leaves[..n], m);
                verify_consistency(m as u64, n as u64, &old_root, &new_root, &proof)
                    .unwrap_or_else(|e| panic!("{m} -> {n}: {e}"));
                if m > 0 && m < n {
                    let wrong = leaf_hash(b"x");
                    assert!(
                        verify_consistency(m as u64, n as u64, &wrong, &new_root, &proof).is_err()
                    );
                    assert!(verify_consistency(
                        m as u64,
                        n as u64,
                        &old_root,
                        &new_root,
                        &proof[1..]
                    )
                    .is_err());
                    assert!(
                        verify_consistency(n as u64, m as u64, &new_root, &old_root, &proof)
                            .is_err()
                    );
                }
            }
        }
    }

    use super::*;
    use proptest::prelude::*;

    /// RFC 6962 section 2.1 MTH, written the way the RFC states it.
    fn mth(leaves: &[Digest]) -> Digest {
        match leaves.len() {
            0 => Digest::of(b""),
            1 => leaves[0],
            n => {
                let mut k = 1;
                while k * 2 < n {
                    k *= 2;
                }
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    /// Sets, inserts or removes a leaf of `current` as `kind` and `x` say,
    /// and returns the edit that does the same to a tree.
    fn random_edit(current: &mut Vec<Digest>, kind: u8, x: u16) -> Option<LeafEdit> {
        let fresh = leaf_hash(&x.to_be_bytes());
        let at = |len: usize| x as usize % len;
        match kind % 3 {
            0 if !current.is_empty() => {
                let i = at(current.len());
                current[i] = fresh;
                Some(LeafEdit::Set(i, fresh))
            }
            1 => {
                let i = at(current.len() + 1);
                current.insert(i, fresh);
                Some(LeafEdit::Insert(i, fresh))
            }
            2 if !current.is_empty() => {
                let i = at(current.len());
                current.remove(i);
                Some(LeafEdit::Remove(i))
            }
            _ => None,
        }
    }

    fn leaves(n: usize) -> Vec<Digest> {
        (0..n)
            .map(|i| leaf_hash(&(i as u64).to_be_bytes()))
            .collect()
    }

    #[test]
    fn empty_and_single() {
        assert_eq!(root_of(&[]), Digest::of(b""));
        let l = leaves(1);
        assert_eq!(root_of(&l), l[0]);
    }

    #[test]
    fn known_vector_from_certificate_transparency() {
        // The 8-leaf test tree of the CT reference code (merkle_tree_test.cc).
        let inputs: [&[u8]; 8] = [
            b"",
            &[0x00],
            &[0x10],
            &[0x20, 0x21],
            &[0x30, 0x31],
            &[0x40, 0x41, 0x42, 0x43],
            &[0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57],
            &[
                0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d,
                0x6e, 0x6f,
            ],
        ];
        let l: Vec<Digest> = inputs.iter().map(|d| leaf_hash(d)).collect();
        let want = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        for (n, want) in want.iter().enumerate() {
            assert_eq!(
                root_of(&l[..n + 1]).to_hex(),
                *want,
                "root of {} leaves",
                n + 1
            );
        }
    }

    /// Levels wide enough to be hashed on two threads give the RFC's root,
    /// built at once and after leaves are inserted and removed.
    #[test]
    fn wide_levels_hashed_on_two_threads_equal_the_rfc_definition() {
        let n = 3 * PARALLEL_NODES + 5;
        let mut current = leaves(n);
        let mut tree = MerkleLevels::from_leaves(current.clone());
        assert_eq!(tree.root(), mth(&current));
        for (at, x) in [(0usize, 1u32), (n / 2, 2), (n, 3), (7, 4)] {
            let leaf = leaf_hash(&x.to_be_bytes());
            current.insert(at, leaf);
            tree.edit(&[LeafEdit::Insert(at, leaf)]);
            assert_eq!(tree.root(), mth(&current), "after inserting at {at}");
        }
        current.remove(n / 3);
        tree.edit(&[LeafEdit::Remove(n / 3)]);
        assert_eq!(tree.root(), mth(&current));
        assert_eq!(tree.leaves(), current.as_slice());
    }

    proptest! {
        #[test]
        fn bottom_up_equals_rfc_definition(n in 0usize..70) {
            let l = leaves(n);
            prop_assert_eq!(root_of(&l), mth(&l));
        }

        #[test]
        fn every_proof_verifies_and_no_other_leaf_does(n in 1usize..70, seed in any::<u64>()) {
            let l = leaves(n);
            let tree = MerkleLevels::from_leaves(l.clone());
            let index = (seed % n as u64) as usize;
            let proof = tree.proof(index).unwrap();
            prop_assert!(proof.verify(&l[index], &tree.root()).is_ok());
            let other = leaf_hash(b"not in the tree");
            prop_assert!(proof.verify(&other, &tree.root()).is_err());
            if n > 1 {
                let wrong = InclusionProof { leaf_index: ((index + 1) % n) as u64, ..proof.clone() };
                prop_assert!(wrong.verify(&l[index], &tree.root()).is_err());
            }
        }

        #[test]
        fn incremental_updates_equal_a_rebuild(n in 1usize..60, ops in proptest::collection::vec((any::<u8>(), any::<u16>()), 1..30)) {
            let mut current = leaves(n);
            let mut tree = MerkleLevels::from_leaves(current.clone());
            for (kind, x) in ops {
                if let Some(edit) = random_edit(&mut current, kind, x) {
                    tree.edit(&[edit]);
                }
                prop_assert_eq!(tree.root(), mth(&current));
            }
        }

        /// Edits batched into one rehash (sets left and right of moved
        /// positions, inserts, removes, in any order) give the RFC's root.
        #[test]
        fn batched_edits_equal_a_rebuild(n in 0usize..80, ops in proptest::collection::vec((any::<u8>(), any::<u16>()), 0..20)) {
            let mut current = leaves(n);
            let mut tree = MerkleLevels::from_leaves(current.clone());
            let edits: Vec<LeafEdit> = ops
                .into_iter()
                .filter_map(|(kind, x)| random_edit(&mut current, kind, x))
                .collect();
            tree.edit(&edits);
            prop_assert_eq!(tree.root(), mth(&current));
            prop_assert_eq!(tree.leaves(), current.as_slice());
            for (i, leaf) in current.iter().enumerate() {
                prop_assert!(tree.proof(i).unwrap().verify(leaf, &tree.root()).is_ok());
            }
        }
    }
}
