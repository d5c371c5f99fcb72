//! `checkpoint`, `prove`, `check-proof`: the chain's head as a C2SP
//! checkpoint, and proofs that tools nobody here wrote can check
//! (byte layouts in docs/encoding.md).

use std::io::Write;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use fschain_schema::bundle::{check_bundle, ConsistencyProof, ProofExtra, StateProof};
use fschain_schema::merkle::{consistency_proof, MerkleLevels};
use fschain_schema::note::{block_leaves, chain_checkpoint, Verifier};
use fschain_schema::{BlockRef, ElementId, StateTree};

use crate::cli::ProofCommand;
use crate::context::{log_origin, open_chain, root_dir, Invocation};

pub(crate) fn run(command: ProofCommand, inv: &Invocation) -> Result<ExitCode> {
    match command {
        ProofCommand::Checkpoint {
            root,
            at,
            witnessed_by: Some(n),
            witnesses,
            kafka,
        } => {
            let _ = at;
            return witnessed(&root_dir(&root, inv)?, n, &witnesses, &kafka, inv);
        }
        ProofCommand::Checkpoint { root, at, .. } => {
            let signed = Signed::open(&root_dir(&root, inv)?, inv)?;
            let height = signed.resolve(&at)?;
            print!("{}", signed.checkpoint(height)?);
        }
        ProofCommand::Prove {
            root,
            element,
            block,
            consistency,
            at,
            output,
        } => {
            let signed = Signed::open(&root_dir(&root, inv)?, inv)?;
            let text = match consistency {
                Some(refs) => {
                    let (old, new) = (signed.resolve(&refs[0])?, signed.resolve(&refs[1])?);
                    if old > new {
                        bail!("OLD (block {old}) must not be newer than NEW (block {new})");
                    }
                    let leaves = block_leaves(&signed.chain.headers()[..=new as usize]);
                    let doc = ConsistencyProof {
                        old: signed.checkpoint(old)?,
                        new: signed.checkpoint(new)?,
                        proof: consistency_proof(&leaves, old as usize + 1),
                    };
                    format!("{}\n", serde_json::to_string_pretty(&doc.to_json())?)
                }
                None => {
                    let at = signed.resolve(&at)?;
                    let block = match &block {
                        Some(b) => signed.resolve(b)?,
                        None => at,
                    };
                    if block > at {
                        bail!("block {block} is newer than the checkpoint at block {at}");
                    }
                    signed.bundle(element.as_deref(), block, at)?
                }
            };
            match output {
                Some(path) => std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => std::io::stdout().write_all(text.as_bytes())?,
            }
        }
        ProofCommand::CheckProof { file, key } => {
            let vkey = match std::fs::read_to_string(&key) {
                Ok(text) => text,
                Err(_) => key.clone(),
            };
            let log = Verifier::parse(&vkey).context("reading --key")?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            return Ok(match check(&text, &log) {
                Ok(said) => {
                    println!("ok: {said}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    println!("FAILED: {e:#}");
                    ExitCode::from(1)
                }
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A producer's chain, with the key and origin that sign its checkpoints.
struct Signed {
    chain: fschain_store::Chain,
    key: fschain_schema::wire::SigningKey,
    origin: String,
}

impl Signed {
    fn open(root: &std::path::Path, inv: &Invocation) -> Result<Self> {
        let chain = open_chain(root)?;
        let key = fschain_producer::load_signing_key(chain.layout()).context(
            "checkpoints are signed with the producer's key: run this on the producer's root",
        )?;
        let origin = log_origin(inv, &chain.meta().chain);
        Ok(Signed { chain, key, origin })
    }

    fn resolve(&self, text: &str) -> Result<u64> {
        Ok(self.chain.resolve(&BlockRef::parse(text)?)?)
    }

    /// The tlog-proof of block `block` (and `element`'s state in it) in
    /// the checkpoint at block `at`.
    fn bundle(&self, element: Option<&str>, block: u64, at: u64) -> Result<String> {
        let headers = &self.chain.headers()[..=at as usize];
        let header = headers[block as usize].clone();
        let state = match element {
            None => None,
            Some(text) => {
                let element = ElementId::parse(text)?;
                let states = self.chain.states_at(block)?;
                let state = states.state(&element)?.ok_or_else(|| {
                    anyhow!("{element} has no state at block {block}: a proof shows a state that is there")
                })?;
                let tree = StateTree::from_entries(states.state_hashes());
                let (_, proof) = tree
                    .proof(&element)
                    .ok_or_else(|| anyhow!("{element} is not in block {block}'s state tree"))?;
                Some(StateProof {
                    element,
                    state,
                    proof,
                })
            }
        };
        let extra = ProofExtra { header, state };
        extra.check_state()?;
        let path = MerkleLevels::from_leaves(block_leaves(headers))
            .proof(block as usize)
            .ok_or_else(|| anyhow!("no proof for block {block}"))?
            .path;
        Ok(extra.tlog_proof(&path, &self.checkpoint(at)?)?)
    }

    /// The signed checkpoint of the chain up to block `height`.
    fn checkpoint(&self, height: u64) -> Result<String> {
        let headers = &self.chain.headers()[..=height as usize];
        Ok(chain_checkpoint(&self.origin, headers).sign(&self.key)?)
    }
}

/// Checks a proof file against the log's key; says what it proved.
fn check(text: &str, log: &Verifier) -> Result<String> {
    if text.trim_start().starts_with('{') {
        let (old, new) = ConsistencyProof::parse(text)?.check(log)?;
        return Ok(format!(
            "{}: the tree of size {} extends the tree of size {}",
            log.name, new.size, old.size
        ));
    }
    let proven = check_bundle(text, log)?;
    let header = &proven.extra.header;
    let block = format!(
        "block {} ({}) of {} is in {}'s checkpoint of size {}",
        header.height, header.hash, header.chain, log.name, proven.checkpoint.size
    );
    Ok(match &proven.extra.state {
        Some(s) => format!(
            "{} = {} at {block}",
            s.element,
            serde_json::Value::Object(s.state.clone())
        ),
        None => block,
    })
}

/// `checkpoint --witnessed-by N`: the newest checkpoint of the chain at
/// `root` (a producer's root or a site's copy) that N of `witnesses`
/// cosigned on the witness topic. Exit 1 when there is none.
fn witnessed(
    root: &std::path::Path,
    n: usize,
    witnesses: &[String],
    kafka: &crate::cli::KafkaArgs,
    inv: &Invocation,
) -> Result<ExitCode> {
    let chain = open_chain(root)?;
    let key = match fschain_producer::load_signing_key(chain.layout()) {
        Ok(key) => key.public(),
        Err(_) => newest_manifest_key(&chain)?,
    };
    let log = Verifier::new(&log_origin(inv, &chain.meta().chain), key)?;
    let witnesses = witnesses
        .iter()
        .map(|w| {
            let text = std::fs::read_to_string(w).unwrap_or_else(|_| w.clone());
            fschain_schema::note::Witness::parse(&text).with_context(|| format!("--witness {w}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let source = fschain_consumer::kafka::KafkaSource {
        brokers: crate::context::brokers(kafka, inv)?,
        topics: crate::context::topics(kafka, inv),
        extra: crate::context::extra(inv),
    };
    let notes =
        fschain_consumer::kafka::witness_notes(&source, std::time::Duration::from_secs(30))?;
    match fschain_consumer::witness::witnessed_checkpoint(&notes, &log, &witnesses, n) {
        Some((_, text)) => {
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!(
                "no checkpoint of {} is cosigned by {n} of the {} witnesses given ({} cosigned checkpoints on {})",
                log.name,
                witnesses.len(),
                notes.len(),
                source.topics.witness
            );
            Ok(ExitCode::from(1))
        }
    }
}

/// The producer's key, from the newest manifest a site's copy holds.
fn newest_manifest_key(chain: &fschain_store::Chain) -> Result<fschain_schema::wire::PublicKey> {
    for height in (0..=chain.head().height).rev() {
        if let Ok(bytes) = std::fs::read(chain.layout().manifest(height)) {
            let manifest: fschain_schema::wire::BlockManifest = serde_json::from_slice(&bytes)?;
            return Ok(manifest.key);
        }
    }
    bail!(
        "no signing key and no manifest in {}: run this on a producer's root or a site's copy",
        chain.layout().root().display()
    )
}
