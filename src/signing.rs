//! Signing operations with an SSH key, by the real `ssh-keygen -Y sign`
//! (so a passphrase-protected key, or a `.pub` file whose private half is
//! in the ssh-agent, works as it does for git), and `op canonical`.

use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use fschain_schema::sshsig::OP_NAMESPACE;
use fschain_schema::{OpSignature, Operation};

/// Signs `op` with `key`: its `signature` is the armored sshsig over its
/// canonical bytes in namespace `fschain-op`.
pub(crate) fn sign_operation(op: &mut Operation, key: &Path) -> Result<()> {
    let bytes = op.signed_bytes()?;
    let mut child = Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-n", OP_NAMESPACE, "-f"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ssh-keygen to sign (install openssh-client)")?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("ssh-keygen has no stdin"))?
        .write_all(&bytes)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "ssh-keygen -Y sign -f {} failed: {}",
            key.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let armored = String::from_utf8(out.stdout).context("ssh-keygen's signature")?;
    op.signature = Some(OpSignature {
        armored,
        signer: None,
    });
    Ok(())
}

/// Reads JSON Lines of operations and writes them back signed by `key`,
/// one per line; a line that is not an operation is an error naming it.
pub(crate) fn sign_lines(input: impl BufRead, key: &Path, mut out: impl Write) -> Result<u64> {
    let mut n = 0;
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let mut op = Operation::from_json(&line).with_context(|| format!("line {}", i + 1))?;
        sign_operation(&mut op, key)?;
        serde_json::to_writer(&mut out, &op.to_value())?;
        out.write_all(b"\n")?;
        n += 1;
    }
    out.flush()?;
    Ok(n)
}

/// The bytes to sign for one operation read from `input`.
pub(crate) fn canonical(mut input: impl Read) -> Result<Vec<u8>> {
    let mut text = String::new();
    input.read_to_string(&mut text)?;
    let mut value: serde_json::Value =
        serde_json::from_str(&text).context("reading the operation")?;
    if let Some(map) = value.as_object_mut() {
        // What is signed never holds the signature.
        map.remove("signature");
    }
    Ok(Operation::from_value(value)?.signed_bytes()?)
}
