//! `checkpoint`, `prove`, `check-proof`: the chain's head as a C2SP
//! checkpoint, and proofs that tools nobody here wrote can check
//! (byte layouts in docs/encoding.md).

use std::io::Write;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use fschain_schema::merkle::{consistency_proof, leaf_hash, verify_consistency, MerkleLevels};
use fschain_schema::note::{
    block_leaves, chain_checkpoint, tlog_proof, Checkpoint, TlogProof, Verifier,
};
use fschain_schema::{BlockHeader, BlockRef, Digest};
use serde_json::{json, Value};

use crate::cli::ProofCommand;
use crate::context::{log_origin, open_chain, root_dir, Invocation};

pub(crate) fn run(command: ProofCommand, inv: &Invocation) -> Result<ExitCode> {
    match command {
        ProofCommand::Checkpoint { root, at } => {
            let signed = Signed::open(&root_dir(&root, inv)?, inv)?;
            let height = signed.resolve(&at)?;
            print!("{}", signed.checkpoint(height)?);
        }
        ProofCommand::Prove {
            root,
            block,
            consistency,
            at,
            output,
        } => {
            let signed = Signed::open(&root_dir(&root, inv)?, inv)?;
            let text = match (block, consistency) {
                (Some(block), None) => {
                    let at = signed.resolve(&at)?;
                    let block = signed.resolve(&block)?;
                    if block > at {
                        bail!("block {block} is newer than the checkpoint at block {at}");
                    }
                    let headers = &signed.chain.headers()[..=at as usize];
                    let proof = MerkleLevels::from_leaves(block_leaves(headers))
                        .proof(block as usize)
                        .ok_or_else(|| anyhow!("no proof for block {block}"))?;
                    let header = headers[block as usize].to_canonical()?;
                    tlog_proof(&header, block, &proof.path, &signed.checkpoint(at)?)
                }
                (None, Some(refs)) => {
                    let (old, new) = (signed.resolve(&refs[0])?, signed.resolve(&refs[1])?);
                    if old > new {
                        bail!("OLD (block {old}) must not be newer than NEW (block {new})");
                    }
                    let leaves = block_leaves(&signed.chain.headers()[..=new as usize]);
                    let proof = consistency_proof(&leaves, old as usize + 1);
                    let doc = json!({
                        "type": "fschain consistency proof v1",
                        "old": signed.checkpoint(old)?,
                        "new": signed.checkpoint(new)?,
                        "proof": proof.iter().map(base64_of).collect::<Vec<_>>(),
                    });
                    format!("{}\n", serde_json::to_string_pretty(&doc)?)
                }
                _ => bail!("give --block REF or --consistency OLD NEW"),
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

    /// The signed checkpoint of the chain up to block `height`.
    fn checkpoint(&self, height: u64) -> Result<String> {
        let headers = &self.chain.headers()[..=height as usize];
        Ok(chain_checkpoint(&self.origin, headers).sign(&self.key)?)
    }
}

fn base64_of(d: &Digest) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(d.as_bytes())
}

fn digest_of(text: &str) -> Result<Digest> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(text)?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| anyhow!("{text:?} is not base64 of 32 bytes"))?;
    Ok(Digest::from_bytes(bytes))
}

/// Checks a proof file against the log's key; says what it proved.
fn check(text: &str, log: &Verifier) -> Result<String> {
    if text.trim_start().starts_with('{') {
        let doc: Value = serde_json::from_str(text).context("reading the consistency proof")?;
        let note = |k: &str| {
            doc.get(k)
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow!("no {k} checkpoint"))
        };
        let old = Checkpoint::open(note("old")?, log).context("the old checkpoint")?;
        let new = Checkpoint::open(note("new")?, log).context("the new checkpoint")?;
        let proof = doc
            .get("proof")
            .and_then(Value::as_array)
            .ok_or_else(|| anyhow!("no proof"))?
            .iter()
            .map(|h| digest_of(h.as_str().unwrap_or_default()))
            .collect::<Result<Vec<_>>>()?;
        verify_consistency(old.size, new.size, &old.root, &new.root, &proof)?;
        return Ok(format!(
            "{}: the tree of size {} extends the tree of size {}",
            log.name, new.size, old.size
        ));
    }
    let proof = TlogProof::parse(text)?;
    let checkpoint = Checkpoint::open(&proof.checkpoint, log).context("the checkpoint")?;
    let header = BlockHeader::from_canonical(&proof.extra).context("the block header (extra)")?;
    let computed = header.computed_hash()?;
    if computed != header.hash {
        bail!(
            "block {}'s header hashes to {computed}, not the {} it carries",
            header.height,
            header.hash
        );
    }
    if header.height != proof.index {
        bail!(
            "the header is block {}'s, the proof is for index {}",
            header.height,
            proof.index
        );
    }
    let inclusion = fschain_schema::merkle::InclusionProof {
        leaf_index: proof.index,
        tree_size: checkpoint.size,
        path: proof.path,
    };
    inclusion.verify(
        &leaf_hash(header.hash.digest().as_bytes()),
        &checkpoint.root,
    )?;
    Ok(format!(
        "block {} ({}) of {} is in {}'s checkpoint of size {}",
        header.height, header.hash, header.chain, log.name, checkpoint.size
    ))
}
