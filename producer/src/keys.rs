//! The chain's signing key: created at `init`, kept in `meta/` (private
//! half 0600, never published), used to sign every published manifest.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;

use fschain_schema::wire::{PublicKey, SigningKey};
use fschain_store::layout::{write_atomic, RootLayout};
use fschain_store::{IoContext, StoreError};

use crate::ProducerError;

/// Creates the root's key pair; refuses to replace one that exists (sites
/// trust it).
pub fn create_signing_key(layout: &RootLayout) -> Result<PublicKey, ProducerError> {
    let path = layout.signing_key();
    if path.exists() {
        return Err(ProducerError::KeyExists { path });
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| ProducerError::Command {
        what: "reading the system's random source".into(),
        message: e.to_string(),
    })?;
    let key = SigningKey::from_seed(seed);
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .at(&tmp)?;
    file.write_all(format!("{}\n", key.to_hex()).as_bytes())
        .at(&tmp)?;
    file.sync_all().at(&tmp)?;
    std::fs::rename(&tmp, &path).at(&path)?;
    let public = key.public();
    write_atomic(&layout.signing_pub(), format!("{public}\n").as_bytes())?;
    Ok(public)
}

pub fn load_signing_key(layout: &RootLayout) -> Result<SigningKey, ProducerError> {
    let path = layout.signing_key();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ProducerError::NoKey {
                root: layout.root().to_owned(),
            })
        }
        Err(e) => return Err(StoreError::io(&path, e).into()),
    };
    Ok(SigningKey::from_hex(&text)?)
}
