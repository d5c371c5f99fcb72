//! A site as a witness of its producers' logs (c2sp.org/tlog-cosignature).
//!
//! Each manifest carries the producer's signed checkpoint of its chain up
//! to that block. After verifying the block, a site checks that the
//! checkpoint's root is the root of the block hashes it holds, and cosigns
//! it; the cosigned note goes to `<prefix>.witness`. Every site reads that
//! topic: a checkpoint signed by the producer's key that disagrees with the
//! blocks this site holds (at the same tree size, or at a smaller one) is
//! proof that the key signed two histories, a fork. The site then refuses
//! that chain's blocks and says so.
//!
//! [`WitnessBook`] is the bookkeeping, pure; [`SiteWitness`] adds the key,
//! the cosignatures to send, and the record of stopped chains on disk.

use std::collections::BTreeMap;
use std::path::PathBuf;

use fschain_schema::merkle::{root_of, LeafEdit, MerkleLevels};
use fschain_schema::note::{Checkpoint, Note, Verifier, Witness};
use fschain_schema::wire::{PublicKey, SigningKey};
use fschain_schema::{ChainName, Digest};

/// Two roots for one tree size of one chain's log, both signed by its
/// producer's key: the key signed two histories.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fork {
    pub chain: ChainName,
    pub size: u64,
    /// The root of the blocks this site holds (or first saw).
    pub ours: Digest,
    /// The other root, and who showed it.
    pub theirs: Digest,
    pub shown_by: String,
}

impl std::fmt::Display for Fork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "fork of chain {}: its producer's key signed two histories; at tree size {} this site holds root {} but {} shows root {}",
            self.chain, self.size, self.ours, self.shown_by, self.theirs
        )
    }
}

/// How many of the newest tree sizes' roots a log view remembers (what
/// other sites cosign is mostly recent).
const RECENT_ROOTS: usize = 256;

/// The tree over the blocks a site holds of one chain: appending a block
/// costs O(log n) hashes; the roots of the newest sizes are remembered, an
/// older one is computed again from the leaves.
#[derive(Debug)]
struct HeldTree {
    tree: MerkleLevels,
    recent: BTreeMap<u64, Digest>,
}

impl HeldTree {
    fn new(leaves: Vec<Digest>) -> Self {
        let tree = MerkleLevels::from_leaves(leaves);
        let mut recent = BTreeMap::new();
        recent.insert(tree.len() as u64, tree.root());
        HeldTree { tree, recent }
    }

    fn len(&self) -> u64 {
        self.tree.len() as u64
    }

    fn push(&mut self, leaf: Digest) {
        self.tree.edit(&[LeafEdit::Insert(self.tree.len(), leaf)]);
        self.recent.insert(self.len(), self.tree.root());
        while self.recent.len() > RECENT_ROOTS {
            self.recent.pop_first();
        }
    }

    /// The root of the first `size` blocks (`size` <= [`Self::len`]).
    fn root(&self, size: u64) -> Digest {
        match self.recent.get(&size) {
            Some(root) => *root,
            None => root_of(&self.tree.leaves()[..size as usize]),
        }
    }
}

/// What a site knows of one chain's log.
#[derive(Debug, Default)]
struct LogView {
    /// The blocks this site holds (their hashes), loaded from its copy on
    /// first use.
    leaves: Option<HeldTree>,
    /// Producer-signed roots seen elsewhere for sizes this site does not
    /// hold yet: size → (root, who showed it).
    ahead: BTreeMap<u64, (Digest, String)>,
    /// The largest tree size this site cosigned.
    cosigned: u64,
}

/// The pure bookkeeping of a witness: which roots were seen for which
/// sizes, and whether they agree.
#[derive(Debug, Default)]
pub struct WitnessBook {
    logs: BTreeMap<ChainName, LogView>,
}

impl WitnessBook {
    /// How many of `chain`'s blocks the loaded leaves cover, when loaded.
    /// Another member of the site's group may have applied blocks since,
    /// so this can be fewer than the site's copy holds.
    pub fn held(&self, chain: &ChainName) -> Option<u64> {
        self.logs
            .get(chain)
            .and_then(|l| l.leaves.as_ref())
            .map(HeldTree::len)
    }

    /// Sets the leaves of the blocks held of `chain` (block 0 first), and
    /// checks them against every root seen ahead of them.
    pub fn load(&mut self, chain: &ChainName, leaves: Vec<Digest>) -> Result<(), Fork> {
        let log = self.logs.entry(chain.clone()).or_default();
        log.leaves = Some(HeldTree::new(leaves));
        Self::settle(chain, log)
    }

    /// A producer-signed checkpoint of `chain` shown by `shown_by`.
    pub fn observe(
        &mut self,
        chain: &ChainName,
        size: u64,
        root: Digest,
        shown_by: &str,
    ) -> Result<(), Fork> {
        let log = self.logs.entry(chain.clone()).or_default();
        if let Some((seen, by)) = log.ahead.get(&size) {
            if *seen != root {
                return Err(Fork {
                    chain: chain.clone(),
                    size,
                    ours: *seen,
                    theirs: root,
                    shown_by: format!("{shown_by} (and {by} the first)"),
                });
            }
        }
        log.ahead.entry(size).or_insert((root, shown_by.to_owned()));
        Self::settle(chain, log)
    }

    /// Checks the roots seen ahead against the leaves held, forgetting
    /// those now covered.
    fn settle(chain: &ChainName, log: &mut LogView) -> Result<(), Fork> {
        let Some(leaves) = &log.leaves else {
            return Ok(());
        };
        let held = leaves.len();
        let covered: Vec<u64> = log.ahead.range(..=held).map(|(s, _)| *s).collect();
        for size in covered {
            if let Some((root, by)) = log.ahead.remove(&size) {
                let ours = leaves.root(size);
                if ours != root {
                    return Err(Fork {
                        chain: chain.clone(),
                        size,
                        ours,
                        theirs: root,
                        shown_by: by,
                    });
                }
            }
        }
        Ok(())
    }

    /// Before a block is applied: its producer's checkpoint must agree with
    /// every root already seen for that size.
    pub fn admit(&self, chain: &ChainName, size: u64, root: Digest) -> Result<(), Fork> {
        match self.logs.get(chain).and_then(|l| l.ahead.get(&size)) {
            Some((seen, by)) if *seen != root => Err(Fork {
                chain: chain.clone(),
                size,
                ours: root,
                theirs: *seen,
                shown_by: by.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// A block was applied: its leaf is appended, and its checkpoint
    /// (`size`, `root`) must be the root of the leaves held. Returns
    /// whether to cosign it (a size larger than any cosigned).
    pub fn applied(
        &mut self,
        chain: &ChainName,
        leaf: Digest,
        checkpoint: Option<(u64, Digest)>,
        shown_by: &str,
    ) -> Result<bool, Fork> {
        let log = self.logs.entry(chain.clone()).or_default();
        let leaves = log.leaves.get_or_insert_with(|| HeldTree::new(Vec::new()));
        leaves.push(leaf);
        let held = leaves.len();
        if let Some((size, root)) = checkpoint {
            let ours = leaves.root(size.min(held));
            if size != held || ours != root {
                return Err(Fork {
                    chain: chain.clone(),
                    size,
                    ours,
                    theirs: root,
                    shown_by: shown_by.to_owned(),
                });
            }
        }
        Self::settle(chain, log)?;
        match checkpoint {
            Some((size, _)) if size > log.cosigned => {
                log.cosigned = size;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// A site's witness: its key, the cosignatures waiting to be sent, and the
/// chains stopped by a fork (recorded in `<chain>/meta/forked`).
#[derive(Debug)]
pub struct SiteWitness {
    pub book: WitnessBook,
    key: SigningKey,
    pub witness: Witness,
    outbox: Vec<(ChainName, String)>,
    pub stopped: BTreeMap<ChainName, String>,
    /// The lowest height refused of each stopped chain: the first leaf of
    /// the tree size the fork was seen at (0 for a fork recorded before
    /// this run: nothing more is taken).
    refused_from: BTreeMap<ChainName, u64>,
    site_root: PathBuf,
}

/// Where a stopped chain's fork is recorded.
pub fn fork_record(site_root: &std::path::Path, chain: &ChainName) -> PathBuf {
    site_root.join(chain.as_str()).join("meta").join("forked")
}

impl SiteWitness {
    /// `name` is the witness's key name (`<origin>/site/<site>`).
    pub fn new(
        site_root: PathBuf,
        name: &str,
        key: SigningKey,
    ) -> Result<Self, fschain_schema::SchemaError> {
        let witness = Witness::new(name, key.public())?;
        let mut stopped = BTreeMap::new();
        let mut refused_from = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir(&site_root) {
            for entry in entries.flatten() {
                let Some(chain) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                    continue;
                };
                if let Ok(why) = std::fs::read_to_string(fork_record(&site_root, &chain)) {
                    refused_from.insert(chain.clone(), 0);
                    stopped.insert(chain, why);
                }
            }
        }
        Ok(SiteWitness {
            book: WitnessBook::default(),
            key,
            witness,
            outbox: Vec::new(),
            stopped,
            refused_from,
            site_root,
        })
    }

    /// Records a fork: the chain is stopped here and on every restart.
    pub fn stop(&mut self, fork: &Fork) {
        let why = fork.to_string();
        tracing::error!(chain = %fork.chain, size = fork.size, "{why}; this site stops taking the chain's blocks (to resume, investigate and remove {})", fork_record(&self.site_root, &fork.chain).display());
        let path = fork_record(&self.site_root, &fork.chain);
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = std::fs::write(&path, format!("{why}\n")) {
            tracing::error!(path = %path.display(), error = %e, "could not record the fork");
        }
        self.stopped.insert(fork.chain.clone(), why);
        // Tree size n covers blocks 0 to n-1; the two histories differ at
        // one of them, and no later block is taken. Blocks below, already
        // on their way and chained to the blocks held, still are.
        let first = fork.size.saturating_sub(1);
        self.refused_from
            .entry(fork.chain.clone())
            .and_modify(|h| *h = (*h).min(first))
            .or_insert(first);
    }

    /// Whether block `height` of `chain` is refused: the chain was stopped
    /// by a fork at or below it.
    pub fn refuses(&self, chain: &ChainName, height: u64) -> bool {
        self.refused_from.get(chain).is_some_and(|h| height >= *h)
    }

    /// Cosigns `note` (a checkpoint already checked) at `time`.
    pub fn cosign(&mut self, chain: &ChainName, note: &str, body: &str, time: u64) {
        match self.witness.cosign(body, time, &self.key) {
            Ok(line) => self.outbox.push((chain.clone(), format!("{note}{line}"))),
            Err(e) => tracing::warn!(chain = %chain, error = %e, "could not cosign a checkpoint"),
        }
    }

    /// The cosigned checkpoints to send.
    pub fn take_outbox(&mut self) -> Vec<(ChainName, String)> {
        std::mem::take(&mut self.outbox)
    }
}

/// A checkpoint from the witness topic, opened with the trusted producer
/// keys: its chain (the origin's last segment), the checkpoint, and who
/// cosigned it (for messages).
pub fn open_witnessed(
    text: &str,
    trusted: &[PublicKey],
) -> Result<(ChainName, Checkpoint, Note), String> {
    let note = Note::parse(text).map_err(|e| e.to_string())?;
    let body = Checkpoint::parse_body(&note.body).map_err(|e| e.to_string())?;
    let chain: ChainName = body
        .origin
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .parse()
        .map_err(|e: fschain_schema::SchemaError| e.to_string())?;
    // Only a key whose ID the note's log signature names is tried: one
    // signature check, not one per trusted key.
    let ids: Vec<[u8; 4]> = note
        .signatures
        .iter()
        .filter(|s| s.name == body.origin)
        .map(|s| s.key_id)
        .collect();
    for key in trusted {
        if !ids.contains(&fschain_schema::note::key_id(&body.origin, key)) {
            continue;
        }
        let Ok(log) = Verifier::new(&body.origin, *key) else {
            continue;
        };
        if let Ok(checkpoint) = Checkpoint::open(text, &log) {
            return Ok((chain, checkpoint, note));
        }
    }
    Err(format!(
        "the checkpoint of {} is not signed by a trusted key",
        body.origin
    ))
}

/// The newest checkpoint of `log` that at least `n` of `witnesses`
/// cosigned, among the cosigned notes `notes` (each a log checkpoint with
/// one or more cosignatures): the checkpoint with the log's signature and
/// those witnesses' cosignatures, merged into one note. `None` when no
/// checkpoint has `n`.
pub fn witnessed_checkpoint(
    notes: &[String],
    log: &Verifier,
    witnesses: &[Witness],
    n: usize,
) -> Option<(Checkpoint, String)> {
    // (size, root) → (the note's text up to its signatures, the log's
    // signature line, each witness's line by name).
    type Lines = (String, String, BTreeMap<String, String>);
    let mut by_tree: BTreeMap<(u64, Digest), Lines> = BTreeMap::new();
    for text in notes {
        let Ok(checkpoint) = Checkpoint::open(text, log) else {
            continue;
        };
        let Ok(note) = Note::parse(text) else {
            continue;
        };
        let lines: Vec<&str> = text[note.body.len() + 1..].lines().collect();
        let entry = by_tree
            .entry((checkpoint.size, checkpoint.root))
            .or_insert_with(|| (note.body.clone(), String::new(), BTreeMap::new()));
        for w in witnesses {
            if let Ok(Some(_)) = w.cosigned(&note) {
                let prefix = format!("\u{2014} {} ", w.name);
                if let Some(line) = lines.iter().find(|l| l.starts_with(&prefix)) {
                    entry.2.insert(w.name.clone(), (*line).to_owned());
                }
            }
        }
        let log_prefix = format!("\u{2014} {} ", log.name);
        if let Some(line) = lines.iter().find(|l| l.starts_with(&log_prefix)) {
            entry.1 = (*line).to_owned();
        }
    }
    by_tree
        .into_iter()
        .rev()
        .find(|(_, (_, _, cosigners))| cosigners.len() >= n)
        .and_then(|((size, root), (body, log_line, cosigners))| {
            let mut text = format!("{body}\n{log_line}\n");
            for line in cosigners.values() {
                text.push_str(line);
                text.push('\n');
            }
            Checkpoint::open(&text, log).ok().map(|c| {
                debug_assert_eq!((c.size, c.root), (size, root));
                (c, text)
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaves(tag: u8, n: usize) -> Vec<Digest> {
        (0..n).map(|i| Digest::of(&[tag, i as u8])).collect()
    }

    fn chain() -> ChainName {
        "host1".parse().unwrap()
    }

    proptest! {
        /// Roots of one history never make a fork, whatever the order they
        /// are seen and applied in; a root of another history at a size
        /// this site holds (or will hold) always does.
        #[test]
        fn a_fork_is_found_exactly_when_two_histories_meet(
            n in 1usize..24,
            seen in proptest::collection::vec(1u64..24, 0..8),
            diverge_at in proptest::option::of(0usize..24),
            load_first in any::<bool>(),
        ) {
            let ours = leaves(1, n);
            let mut theirs = ours.clone();
            let diverge_at = diverge_at.filter(|d| *d < n);
            if let Some(d) = diverge_at {
                theirs[d] = Digest::of(b"other");
            }
            let theirs_full: Vec<Digest> = theirs.iter().copied().chain(leaves(2, 24)).collect();
            let mut book = WitnessBook::default();
            let mut forked = false;
            if load_first {
                forked |= book.load(&chain(), ours.clone()).is_err();
            }
            for &size in &seen {
                let root = root_of(&theirs_full[..size as usize]);
                forked |= book.observe(&chain(), size, root, "east").is_err();
            }
            if !load_first {
                forked |= book.load(&chain(), ours.clone()).is_err();
            }
            // A fork shows when some seen size covers the divergence and
            // this site holds that size.
            let expect = match diverge_at {
                Some(d) => seen.iter().any(|&s| s as usize > d && s as usize <= n),
                None => false,
            };
            prop_assert_eq!(forked, expect);
        }
    }

    #[test]
    fn an_applied_block_is_cosigned_once_and_a_lying_checkpoint_is_a_fork() {
        let mut book = WitnessBook::default();
        let ls = leaves(1, 3);
        book.load(&chain(), ls[..2].to_vec()).unwrap();
        let good = (3, root_of(&ls));
        assert_eq!(
            book.applied(&chain(), ls[2], Some(good), "producer"),
            Ok(true)
        );
        // A second copy of the same size is not cosigned again.
        let mut again = WitnessBook::default();
        again.load(&chain(), ls[..2].to_vec()).unwrap();
        let lie = (3, Digest::of(b"lie"));
        assert!(again
            .applied(&chain(), ls[2], Some(lie), "producer")
            .is_err());
        // Before applying, a root that disagrees with one seen is refused.
        book.observe(&chain(), 4, Digest::of(b"four"), "west")
            .unwrap();
        assert!(book.admit(&chain(), 4, Digest::of(b"other four")).is_err());
        assert!(book.admit(&chain(), 4, Digest::of(b"four")).is_ok());
    }

    #[test]
    fn the_newest_checkpoint_with_enough_cosigners_is_merged_from_theirs() {
        use fschain_schema::note::Checkpoint;
        let log_key = SigningKey::from_seed([1; 32]);
        let log = Verifier::new("fschain.example/host1", log_key.public()).unwrap();
        let keys: Vec<SigningKey> = (2..5).map(|i| SigningKey::from_seed([i; 32])).collect();
        let witnesses: Vec<Witness> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| Witness::new(&format!("fschain.example/site/s{i}"), k.public()).unwrap())
            .collect();
        let cp = |size: u64| Checkpoint {
            origin: log.name.clone(),
            size,
            root: Digest::of(&size.to_be_bytes()),
        };
        let cosigned = |size: u64, w: usize| {
            let c = cp(size);
            let note = c.sign(&log_key).unwrap();
            format!(
                "{note}{}",
                witnesses[w]
                    .cosign(&c.body(), 1_700_000_000 + size, &keys[w])
                    .unwrap()
            )
        };
        // Size 5 by two sites, size 7 by one.
        let notes = vec![
            cosigned(5, 0),
            cosigned(5, 1),
            cosigned(7, 2),
            cosigned(5, 0),
        ];
        let (c, text) = witnessed_checkpoint(&notes, &log, &witnesses, 2).unwrap();
        assert_eq!(c.size, 5);
        let note = Note::parse(&text).unwrap();
        assert_eq!(note.signatures.len(), 3);
        assert!(witnesses[0].cosigned(&note).unwrap().is_some());
        assert!(witnesses[1].cosigned(&note).unwrap().is_some());
        assert_eq!(
            witnessed_checkpoint(&notes, &log, &witnesses, 1)
                .unwrap()
                .0
                .size,
            7
        );
        assert!(witnessed_checkpoint(&notes, &log, &witnesses, 3).is_none());
    }
}
