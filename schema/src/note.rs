//! C2SP signed notes and transparency-log checkpoints, so that a chain's
//! head can be checked by tools nobody here wrote (Go's
//! `golang.org/x/mod/sumdb/note`, the transparency-dev libraries).
//!
//! A signed note (c2sp.org/signed-note) is UTF-8 text: the body, ending in
//! a newline, a blank line, then one line per signature, `— NAME SIG`,
//! where SIG is base64 of a 4-byte key ID and the signature. For an ed25519
//! key the ID is the first 4 bytes of SHA-256(NAME ‖ 0x0A ‖ 0x01 ‖ key),
//! and the signature is over the body's bytes. A verifier key is written
//! `NAME+KEYID(8 hex)+base64(0x01 ‖ key)`.
//!
//! A checkpoint (c2sp.org/tlog-checkpoint) is a note whose body is the
//! origin line, the tree size in decimal, and the base64 root hash, each
//! ending in a newline. fschain's tree is RFC 6962 over the chain's block
//! hashes: leaf i is SHA-256(0x00 ‖ block i's header hash).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::wire::{PublicKey, SigningKey};
use crate::{Digest, SchemaError};

/// The signature type byte of ed25519 in signed notes.
const ED25519: u8 = 0x01;
/// U+2014 EM DASH and a space: how every signature line starts.
const SIGNATURE_PREFIX: &str = "\u{2014} ";

fn bad(why: impl Into<String>) -> SchemaError {
    SchemaError::BadNote { why: why.into() }
}

/// The 4-byte key ID of an ed25519 key named `name`.
pub fn key_id(name: &str, key: &PublicKey) -> [u8; 4] {
    let hash = Digest::of_parts(&[name.as_bytes(), b"\n", &[ED25519], key.as_bytes()]);
    let mut id = [0u8; 4];
    id.copy_from_slice(&hash.as_bytes()[..4]);
    id
}

/// A key name as the spec allows it: not empty, no space, no `+`.
fn check_name(name: &str) -> Result<(), SchemaError> {
    if name.is_empty() || name.contains(char::is_whitespace) || name.contains('+') {
        return Err(bad(format!(
            "key name {name:?} must be non-empty with no spaces or '+'"
        )));
    }
    Ok(())
}

/// A named ed25519 key that checks note signatures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verifier {
    pub name: String,
    pub key: PublicKey,
}

impl Verifier {
    pub fn new(name: &str, key: PublicKey) -> Result<Self, SchemaError> {
        check_name(name)?;
        Ok(Verifier {
            name: name.to_owned(),
            key,
        })
    }

    /// `NAME+KEYID+base64(0x01 ‖ key)`.
    pub fn to_vkey(&self) -> String {
        let mut typed = vec![ED25519];
        typed.extend_from_slice(self.key.as_bytes());
        let id = key_id(&self.name, &self.key);
        format!(
            "{}+{:08x}+{}",
            self.name,
            u32::from_be_bytes(id),
            STANDARD.encode(typed)
        )
    }

    /// Reads a verifier key, checking its key ID.
    pub fn parse(vkey: &str) -> Result<Self, SchemaError> {
        let (name, key, _) = parse_vkey(vkey, "verifier", &[ED25519], |name, key, _| {
            key_id(name, key)
        })?;
        Verifier::new(name, key)
    }
}

/// Splits `NAME+KEYID+base64(type ‖ key)` for an ed25519 key of one of
/// `kinds`, checking the ID against `id_of(name, key, type)`.
fn parse_vkey<'a>(
    vkey: &'a str,
    what: &str,
    kinds: &[u8],
    id_of: impl Fn(&str, &PublicKey, u8) -> [u8; 4],
) -> Result<(&'a str, PublicKey, u8), SchemaError> {
    let mut parts = vkey.trim().splitn(3, '+');
    let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad(format!("a {what} key is NAME+KEYID+KEY")));
    };
    check_name(name)?;
    let typed = STANDARD
        .decode(key)
        .map_err(|e| bad(format!("{what} key is not base64: {e}")))?;
    let (Some(&kind), Some(Ok(bytes))) = (typed.first(), typed.get(1..).map(<[u8; 32]>::try_from))
    else {
        return Err(bad(format!("{what} key is not an ed25519 key (32 bytes)")));
    };
    if !kinds.contains(&kind) {
        return Err(bad(format!(
            "{what} key has type {kind:#04x}, not {kinds:02x?}"
        )));
    }
    let key = PublicKey::from_bytes(bytes);
    let expected = format!("{:08x}", u32::from_be_bytes(id_of(name, &key, kind)));
    if id != expected {
        return Err(bad(format!(
            "{what} key ID {id} does not match its key (expected {expected})"
        )));
    }
    Ok((name, key, kind))
}

/// Signs `body` (each line ending in a newline) as a note by `name`.
pub fn sign_note(body: &str, name: &str, key: &SigningKey) -> Result<String, SchemaError> {
    check_body(body)?;
    check_name(name)?;
    let mut sig = key_id(name, &key.public()).to_vec();
    sig.extend_from_slice(&key.sign_bytes(body.as_bytes()));
    Ok(format!(
        "{body}\n{SIGNATURE_PREFIX}{name} {}\n",
        STANDARD.encode(sig)
    ))
}

fn check_body(body: &str) -> Result<(), SchemaError> {
    if !body.ends_with('\n') {
        return Err(bad("the body must end with a newline"));
    }
    if body.contains("\n\n") || body.starts_with('\n') {
        return Err(bad("the body must not hold an empty line"));
    }
    if body.chars().any(|c| c.is_control() && c != '\n') {
        return Err(bad("the body holds a control character"));
    }
    Ok(())
}

/// One signature line of a note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteSignature {
    pub name: String,
    pub key_id: [u8; 4],
    pub signature: Vec<u8>,
}

/// A note split into its body and signature lines (nothing checked yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub body: String,
    pub signatures: Vec<NoteSignature>,
}

impl Note {
    pub fn parse(text: &str) -> Result<Self, SchemaError> {
        if text.len() > 1_000_000 {
            return Err(bad("longer than a note may be"));
        }
        let Some(split) = text.rfind("\n\n") else {
            return Err(bad("no blank line before the signatures"));
        };
        let body = &text[..=split];
        check_body(body)?;
        let lines = &text[split + 2..];
        if !lines.ends_with('\n') {
            return Err(bad("the last signature line must end with a newline"));
        }
        let mut signatures = Vec::new();
        for line in lines.lines() {
            let rest = line
                .strip_prefix(SIGNATURE_PREFIX)
                .ok_or_else(|| bad(format!("signature line {line:?} does not start with '— '")))?;
            let (name, sig) = rest
                .split_once(' ')
                .ok_or_else(|| bad(format!("signature line {line:?} has no signature")))?;
            check_name(name)?;
            let raw = STANDARD
                .decode(sig)
                .map_err(|e| bad(format!("signature of {name} is not base64: {e}")))?;
            if raw.len() < 5 {
                return Err(bad(format!("signature of {name} is too short")));
            }
            signatures.push(NoteSignature {
                name: name.to_owned(),
                key_id: [raw[0], raw[1], raw[2], raw[3]],
                signature: raw[4..].to_vec(),
            });
        }
        if signatures.is_empty() {
            return Err(bad("no signatures"));
        }
        Ok(Note {
            body: body.to_owned(),
            signatures,
        })
    }

    /// The verifiers among `known` whose signature the note carries and
    /// checks. A signature by a known name and key ID that does not check
    /// is an error; signatures by unknown keys are ignored.
    pub fn verified_by<'a>(&self, known: &'a [Verifier]) -> Result<Vec<&'a Verifier>, SchemaError> {
        let mut by = Vec::new();
        for sig in &self.signatures {
            for v in known {
                if v.name == sig.name && key_id(&v.name, &v.key) == sig.key_id {
                    let ok = <[u8; 64]>::try_from(sig.signature.as_slice())
                        .is_ok_and(|s| v.key.verifies(self.body.as_bytes(), &s));
                    if !ok {
                        return Err(bad(format!(
                            "the signature of {} does not check against its body",
                            v.name
                        )));
                    }
                    by.push(v);
                }
            }
        }
        Ok(by)
    }
}

/// A transparency-log checkpoint: origin, tree size, root hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Digest,
}

impl Checkpoint {
    /// The note body.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root.as_bytes())
        )
    }

    /// Signed by the log's key, named as its origin.
    pub fn sign(&self, key: &SigningKey) -> Result<String, SchemaError> {
        sign_note(&self.body(), &self.origin, key)
    }

    /// Reads a checkpoint body (extension lines after the third allowed).
    pub fn parse_body(body: &str) -> Result<Self, SchemaError> {
        let mut lines = body.lines();
        let (Some(origin), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next())
        else {
            return Err(bad("a checkpoint body has origin, size and root lines"));
        };
        if origin.is_empty() {
            return Err(bad("empty origin line"));
        }
        if size.is_empty() || (size.len() > 1 && size.starts_with('0')) {
            return Err(bad(format!(
                "tree size {size:?} is not a decimal without leading zeros"
            )));
        }
        let size = size
            .parse()
            .map_err(|_| bad(format!("tree size {size:?} is not a decimal number")))?;
        let root = STANDARD
            .decode(root)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| bad("the root line is not base64 of 32 bytes"))?;
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root: Digest::from_bytes(root),
        })
    }

    /// Reads a signed checkpoint and checks it carries `log`'s signature
    /// (the key named as its origin).
    pub fn open(text: &str, log: &Verifier) -> Result<Self, SchemaError> {
        let note = Note::parse(text)?;
        let checkpoint = Self::parse_body(&note.body)?;
        if checkpoint.origin != log.name {
            return Err(bad(format!(
                "checkpoint of {:?}, but the key given is {:?}'s",
                checkpoint.origin, log.name
            )));
        }
        if note.verified_by(std::slice::from_ref(log))?.is_empty() {
            return Err(bad(format!("no signature by {}", log.name)));
        }
        Ok(checkpoint)
    }
}

/// The leaves of a chain's checkpoint tree: leaf i is block i's header hash.
pub fn block_leaves(headers: &[crate::BlockHeader]) -> Vec<Digest> {
    headers
        .iter()
        .map(|h| crate::merkle::leaf_hash(h.hash.digest().as_bytes()))
        .collect()
}

/// The checkpoint of a chain whose headers are `headers` (block 0 first):
/// tree size = number of blocks.
pub fn chain_checkpoint(origin: &str, headers: &[crate::BlockHeader]) -> Checkpoint {
    Checkpoint {
        origin: origin.to_owned(),
        size: headers.len() as u64,
        root: crate::merkle::root_of(&block_leaves(headers)),
    }
}

/// A C2SP tlog-proof: `entry`'s inclusion at `index` in the tree of the
/// signed checkpoint `checkpoint`, with `extra` carried as opaque data.
pub fn tlog_proof(extra: &[u8], index: u64, path: &[Digest], checkpoint: &str) -> String {
    let mut text = String::from("c2sp.org/tlog-proof@v1\n");
    text.push_str(&format!("extra {}\n", STANDARD.encode(extra)));
    text.push_str(&format!("index {index}\n"));
    for hash in path {
        text.push_str(&STANDARD.encode(hash.as_bytes()));
        text.push('\n');
    }
    text.push('\n');
    text.push_str(checkpoint);
    text
}

/// A parsed tlog-proof (nothing checked yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlogProof {
    pub extra: Vec<u8>,
    pub index: u64,
    pub path: Vec<Digest>,
    pub checkpoint: String,
}

impl TlogProof {
    pub fn parse(text: &str) -> Result<Self, SchemaError> {
        let (head, checkpoint) = text
            .split_once("\n\n")
            .ok_or_else(|| bad("a tlog-proof has a blank line before its checkpoint"))?;
        let mut lines = head.lines();
        if lines.next() != Some("c2sp.org/tlog-proof@v1") {
            return Err(bad("not a c2sp.org/tlog-proof@v1"));
        }
        let mut extra = Vec::new();
        let mut line = lines.next();
        if let Some(e) = line.and_then(|l| l.strip_prefix("extra ")) {
            extra = STANDARD
                .decode(e)
                .map_err(|e| bad(format!("extra is not base64: {e}")))?;
            line = lines.next();
        }
        let index = line
            .and_then(|l| l.strip_prefix("index "))
            .and_then(|i| i.parse().ok())
            .ok_or_else(|| bad("no index line"))?;
        let path = lines
            .map(|l| {
                STANDARD
                    .decode(l)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .map(Digest::from_bytes)
                    .ok_or_else(|| bad(format!("proof line {l:?} is not base64 of 32 bytes")))
            })
            .collect::<Result<_, _>>()?;
        Ok(TlogProof {
            extra,
            index,
            path,
            checkpoint: checkpoint.to_owned(),
        })
    }
}

/// The signature type byte of a timestamped cosignature (c2sp.org/tlog-cosignature).
const COSIGNATURE_V1: u8 = 0x04;

/// A witness: a named ed25519 key that cosigns checkpoints it has checked
/// (c2sp.org/tlog-cosignature, `cosignature/v1`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Witness {
    pub name: String,
    pub key: PublicKey,
}

impl Witness {
    pub fn new(name: &str, key: PublicKey) -> Result<Self, SchemaError> {
        check_name(name)?;
        Ok(Witness {
            name: name.to_owned(),
            key,
        })
    }

    /// Key ID: the first 4 bytes of SHA-256(name ‖ 0x0A ‖ 0x04 ‖ key).
    pub fn key_id(&self) -> [u8; 4] {
        let hash = Digest::of_parts(&[
            self.name.as_bytes(),
            b"\n",
            &[COSIGNATURE_V1],
            self.key.as_bytes(),
        ]);
        let mut id = [0u8; 4];
        id.copy_from_slice(&hash.as_bytes()[..4]);
        id
    }

    /// `NAME+KEYID+base64(0x04 ‖ key)`.
    pub fn to_vkey(&self) -> String {
        let mut typed = vec![COSIGNATURE_V1];
        typed.extend_from_slice(self.key.as_bytes());
        format!(
            "{}+{:08x}+{}",
            self.name,
            u32::from_be_bytes(self.key_id()),
            STANDARD.encode(typed)
        )
    }

    /// Reads a witness key (type 0x04, or a plain ed25519 key, 0x01, taken
    /// as its cosignature key as the transparency-dev libraries do).
    pub fn parse(vkey: &str) -> Result<Self, SchemaError> {
        let (name, key, _) = parse_vkey(
            vkey,
            "witness",
            &[COSIGNATURE_V1, ED25519],
            |name, key, kind| match kind {
                COSIGNATURE_V1 => Witness {
                    name: name.to_owned(),
                    key: *key,
                }
                .key_id(),
                _ => key_id(name, key),
            },
        )?;
        Witness::new(name, key)
    }
    /// The message a cosignature at `time` (Unix seconds) signs.
    fn message(time: u64, body: &str) -> Vec<u8> {
        format!("cosignature/v1\ntime {time}\n{body}").into_bytes()
    }

    /// The signature line this witness adds to the checkpoint note
    /// `body` at `time`: `— NAME base64(key ID ‖ time (8 bytes, big
    /// endian) ‖ signature)`.
    pub fn cosign(&self, body: &str, time: u64, key: &SigningKey) -> Result<String, SchemaError> {
        Checkpoint::parse_body(body)?;
        let mut sig = self.key_id().to_vec();
        sig.extend_from_slice(&time.to_be_bytes());
        sig.extend_from_slice(&key.sign_bytes(&Self::message(time, body)));
        Ok(format!(
            "{SIGNATURE_PREFIX}{} {}\n",
            self.name,
            STANDARD.encode(sig)
        ))
    }

    /// The time of this witness's cosignature on `note`, when it carries
    /// one that checks; a cosignature by this key that does not check is
    /// an error.
    pub fn cosigned(&self, note: &Note) -> Result<Option<u64>, SchemaError> {
        let id = self.key_id();
        for sig in &note.signatures {
            if sig.name != self.name || sig.key_id != id {
                continue;
            }
            let (Some(time), Some(Ok(signature))) = (
                sig.signature.get(..8).map(|t| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(t);
                    u64::from_be_bytes(b)
                }),
                sig.signature.get(8..).map(<[u8; 64]>::try_from),
            ) else {
                return Err(bad(format!(
                    "the cosignature of {} is malformed",
                    self.name
                )));
            };
            if !self
                .key
                .verifies(&Self::message(time, &note.body), &signature)
            {
                return Err(bad(format!(
                    "the cosignature of {} does not check against the checkpoint",
                    self.name
                )));
            }
            return Ok(Some(time));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_seed([7; 32])
    }

    #[test]
    fn a_signed_checkpoint_opens_and_a_tampered_one_does_not() {
        let cp = Checkpoint {
            origin: "fschain.example/host1".into(),
            size: 42,
            root: Digest::of_parts(&[b"root"]),
        };
        let text = cp.sign(&key()).unwrap();
        let log = Verifier::new(&cp.origin, key().public()).unwrap();
        assert_eq!(Checkpoint::open(&text, &log).unwrap(), cp);
        assert_eq!(Verifier::parse(&log.to_vkey()).unwrap(), log);
        let tampered = text.replacen("42\n", "43\n", 1);
        let err = Checkpoint::open(&tampered, &log).unwrap_err().to_string();
        assert!(err.contains("does not check"), "{err}");
        for bad_text in ["", "x\n", "a\n\n— x\n", "a\n1\n\n— a AAAA\n"] {
            assert!(Checkpoint::open(bad_text, &log).is_err(), "{bad_text:?}");
        }
        assert!(Verifier::parse("a+00000000+AQ==").is_err());
    }
    #[test]
    fn a_cosignature_checks_and_names_its_time() {
        let log = key();
        let cp = Checkpoint {
            origin: "fschain.example/host1".into(),
            size: 3,
            root: Digest::of(b"root"),
        };
        let note = cp.sign(&log).unwrap();
        let site_key = SigningKey::from_seed([5; 32]);
        let w = Witness::new("fschain.example/site/east", site_key.public()).unwrap();
        let cosigned = format!(
            "{note}{}",
            w.cosign(&cp.body(), 1_700_000_000, &site_key).unwrap()
        );
        let parsed = Note::parse(&cosigned).unwrap();
        assert_eq!(w.cosigned(&parsed).unwrap(), Some(1_700_000_000));
        assert_eq!(Witness::parse(&w.to_vkey()).unwrap(), w);
        // The log's own signature still checks beside it.
        let v = Verifier::new(&cp.origin, log.public()).unwrap();
        assert_eq!(Checkpoint::open(&cosigned, &v).unwrap(), cp);
        // Another body: the cosignature does not check.
        let other = cosigned.replacen("\n3\n", "\n4\n", 1);
        assert!(w.cosigned(&Note::parse(&other).unwrap()).is_err());
    }
}
