//! Signed operations: an OpenSSH `sshsig` signature (the armored text
//! `ssh-keygen -Y sign` writes) over an operation's canonical bytes, checked
//! against an OpenSSH `allowed_signers` file (the format git uses for
//! commit signing; ssh-keygen(1), ALLOWED SIGNERS).
//!
//! What is signed is [`Operation::signed_bytes`]: the canonical JSON of the
//! operation without its `signature` (what `fschain op canonical` prints),
//! in the namespace [`OP_NAMESPACE`].

use ssh_key::public::KeyData;
use ssh_key::{HashAlg, PublicKey, SshSig};

use crate::{Operation, SchemaError, Timestamp};

/// The sshsig namespace of an operation's signature.
pub const OP_NAMESPACE: &str = "fschain-op";

/// Who signed an operation, as its event records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signer {
    /// The principal the allowed_signers line names (the operation's actor
    /// when that is one of its principals).
    pub principal: String,
    /// The key's SHA-256 fingerprint, as `ssh-keygen -l` prints it.
    pub key: String,
}

impl std::fmt::Display for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.principal, self.key)
    }
}

/// One line of an allowed_signers file.
#[derive(Clone, Debug)]
struct AllowedSigner {
    line: usize,
    principals: Vec<String>,
    namespaces: Option<Vec<String>>,
    valid_after: Option<Timestamp>,
    valid_before: Option<Timestamp>,
    cert_authority: bool,
    key: KeyData,
}

/// The keys allowed to sign, and for whom.
#[derive(Clone, Debug, Default)]
pub struct AllowedSigners {
    signers: Vec<AllowedSigner>,
}

fn bad_line(line: usize, why: impl Into<String>) -> SchemaError {
    SchemaError::BadAllowedSigners {
        line,
        why: why.into(),
    }
}

/// Splits off the first field: a run of non-blanks, where a double-quoted
/// part may hold blanks.
fn first_field(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    let mut quoted = false;
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => return (&text[..i], &text[i..]),
            _ => {}
        }
    }
    (text, "")
}

/// Splits `a,b="x,y",c` at the commas outside quotes.
fn split_options(text: &str) -> Vec<&str> {
    let (mut parts, mut start, mut quoted) = (Vec::new(), 0, false);
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// `YYYYMMDD[HHMM[SS]][Z]`, read as UTC.
fn parse_time(line: usize, text: &str) -> Result<Timestamp, SchemaError> {
    let digits = text.strip_suffix(['Z', 'z']).unwrap_or(text);
    let ok = matches!(digits.len(), 8 | 12 | 14) && digits.bytes().all(|b| b.is_ascii_digit());
    if !ok {
        return Err(bad_line(
            line,
            format!("time {text:?} is not YYYYMMDD[HHMM[SS]][Z]"),
        ));
    }
    let part = |from: usize, to: usize| digits.get(from..to).unwrap_or("00");
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        part(0, 4),
        part(4, 6),
        part(6, 8),
        part(8, 10),
        part(10, 12),
        part(12, 14)
    );
    Timestamp::parse_rfc3339(&rfc3339)
        .map_err(|_| bad_line(line, format!("time {text:?} is not a valid date")))
}

/// A `*` and `?` pattern, as OpenSSH matches principals and namespaces.
fn matches_pattern(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &t[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

impl AllowedSigners {
    /// Reads an allowed_signers file: `principals [options] keytype key
    /// [comment]` per line; blank lines and `#` comments are skipped. A
    /// line that does not parse is an error naming it.
    pub fn parse(text: &str) -> Result<Self, SchemaError> {
        let mut signers = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let (principals, rest) = first_field(trimmed);
            let principals: Vec<String> = principals
                .trim_matches('"')
                .split(',')
                .map(str::to_owned)
                .collect();
            if principals.iter().any(String::is_empty) {
                return Err(bad_line(line, "an empty principal"));
            }
            let mut signer = AllowedSigner {
                line,
                principals,
                namespaces: None,
                valid_after: None,
                valid_before: None,
                cert_authority: false,
                key: KeyData::Ed25519(ssh_key::public::Ed25519PublicKey([0; 32])),
            };
            let (maybe_options, after) = first_field(rest);
            let key_text = if maybe_options.starts_with("ssh-")
                || maybe_options.starts_with("ecdsa-")
                || maybe_options.starts_with("sk-")
            {
                rest
            } else {
                for option in split_options(maybe_options) {
                    let (name, value) = match option.split_once('=') {
                        Some((n, v)) => (n, Some(v.trim_matches('"'))),
                        None => (option, None),
                    };
                    match (name.to_ascii_lowercase().as_str(), value) {
                        ("cert-authority", None) => signer.cert_authority = true,
                        ("namespaces", Some(v)) => {
                            signer.namespaces = Some(v.split(',').map(str::to_owned).collect());
                        }
                        ("valid-after", Some(v)) => signer.valid_after = Some(parse_time(line, v)?),
                        ("valid-before", Some(v)) => {
                            signer.valid_before = Some(parse_time(line, v)?);
                        }
                        _ => {
                            return Err(bad_line(line, format!("unknown option {option:?}")));
                        }
                    }
                }
                after
            };
            let key = PublicKey::from_openssh(key_text.trim())
                .map_err(|e| bad_line(line, format!("the key does not parse: {e}")))?;
            signer.key = key.key_data().clone();
            signers.push(signer);
        }
        Ok(AllowedSigners { signers })
    }

    pub fn len(&self) -> usize {
        self.signers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.signers.is_empty()
    }
}

/// Which operations are accepted: signed ones are checked against
/// `allowed`; with `require`, unsigned ones are refused.
#[derive(Clone, Debug, Default)]
pub struct SignaturePolicy {
    pub allowed: Option<AllowedSigners>,
    pub require: bool,
}

impl SignaturePolicy {
    /// Checks `op`'s signature at time `now` and records its signer in it.
    /// An unsigned operation passes unless signatures are required.
    pub fn check(&self, op: &mut Operation, now: Timestamp) -> Result<(), SchemaError> {
        let element = op.element.to_string();
        let refuse = |why: String| SchemaError::RefusedSignature {
            element: element.clone(),
            why,
        };
        let Some(signed) = &op.signature else {
            return if self.require {
                Err(refuse(
                    "it is not signed, and require_signed_ops is set".into(),
                ))
            } else {
                Ok(())
            };
        };
        let Some(allowed) = &self.allowed else {
            return Err(refuse(
                "it carries a signature, but no allowed_signers file is configured to check it"
                    .into(),
            ));
        };
        let sig = SshSig::from_pem(signed.armored.trim()).map_err(|e| {
            refuse(format!(
                "its signature is not an armored SSH signature: {e}"
            ))
        })?;
        if sig.namespace() != OP_NAMESPACE {
            return Err(refuse(format!(
                "it is signed for namespace {:?}, not {OP_NAMESPACE:?}",
                sig.namespace()
            )));
        }
        let fingerprint = sig.public_key().fingerprint(HashAlg::Sha256).to_string();
        let lines: Vec<&AllowedSigner> = allowed
            .signers
            .iter()
            .filter(|s| !s.cert_authority && &s.key == sig.public_key())
            .collect();
        if lines.is_empty() {
            return Err(refuse(format!(
                "it is signed by key {fingerprint}, which is not in allowed_signers"
            )));
        }
        let mut why_not = Vec::new();
        let mut chosen = None;
        for line in lines {
            if let Some(ns) = &line.namespaces {
                if !ns.iter().any(|p| matches_pattern(p, OP_NAMESPACE)) {
                    why_not.push(format!(
                        "line {} does not allow namespace {OP_NAMESPACE}",
                        line.line
                    ));
                    continue;
                }
            }
            if line.valid_after.is_some_and(|t| now < t) {
                why_not.push(format!("line {} is not valid yet", line.line));
                continue;
            }
            if line.valid_before.is_some_and(|t| now >= t) {
                why_not.push(format!("line {} has expired", line.line));
                continue;
            }
            chosen = Some(line);
            break;
        }
        let Some(line) = chosen else {
            return Err(refuse(format!(
                "key {fingerprint} may not sign it: {}",
                why_not.join("; ")
            )));
        };
        let public = PublicKey::from(sig.public_key().clone());
        public
            .verify(OP_NAMESPACE, &op.signed_bytes()?, &sig)
            .map_err(|_| {
                refuse(format!(
                    "the signature by {fingerprint} does not match the operation (signed over other bytes: sign what `fschain op canonical` prints)"
                ))
            })?;
        let principal = match &op.actor {
            Some(actor) if line.principals.iter().any(|p| matches_pattern(p, actor)) => {
                actor.clone()
            }
            Some(actor) => {
                return Err(refuse(format!(
                    "actor {actor:?} is not a principal of key {fingerprint} (allowed_signers line {}: {})",
                    line.line,
                    line.principals.join(",")
                )))
            }
            None => line.principals.join(","),
        };
        if let Some(signed) = &mut op.signature {
            signed.signer = Some(Signer {
                principal,
                key: fingerprint,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_signers_lines_parse_and_a_bad_one_is_named() {
        let text = "\
# who may sign operations
alice@example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPHtLQ9+TQ46kv5khcl5wWvmLvvoqQ2BPUG+CSFYH7G9 alice
ops-*,bob namespaces=\"fschain-op,git\",valid-before=\"20300101\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPHtLQ9+TQ46kv5khcl5wWvmLvvoqQ2BPUG+CSFYH7G9
";
        let allowed = AllowedSigners::parse(text).unwrap();
        assert_eq!(allowed.len(), 2);
        let s = &allowed.signers[1];
        assert_eq!(s.principals, ["ops-*", "bob"]);
        assert_eq!(
            s.namespaces.as_deref(),
            Some(&["fschain-op".to_owned(), "git".to_owned()][..])
        );
        assert!(s.valid_before.is_some());

        let err = AllowedSigners::parse("alice ssh-ed25519 AAAAnotakey\n").unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
        let err =
            AllowedSigners::parse(&format!("{text}bob frobnicate ssh-ed25519 AAAA\n")).unwrap_err();
        assert!(
            err.to_string().contains("line 4") && err.to_string().contains("frobnicate"),
            "{err}"
        );
        let err = AllowedSigners::parse("bob valid-after=2030 ssh-ed25519 AAAA\n").unwrap_err();
        assert!(err.to_string().contains("YYYYMMDD"), "{err}");
    }

    #[test]
    fn patterns_match_as_openssh_does() {
        assert!(matches_pattern("ops-*", "ops-alice"));
        assert!(matches_pattern("*", ""));
        assert!(matches_pattern("a?c", "abc"));
        assert!(!matches_pattern("a?c", "ac"));
        assert!(!matches_pattern("ops-*", "dev-alice"));
    }

    #[test]
    fn an_unsigned_operation_passes_unless_signatures_are_required() {
        let mut op =
            Operation::from_json(r#"{"element":"iface:eth0","action":"set","state":{}}"#).unwrap();
        let now = Timestamp::from_micros(0);
        SignaturePolicy::default().check(&mut op, now).unwrap();
        let required = SignaturePolicy {
            allowed: Some(AllowedSigners::default()),
            require: true,
        };
        let err = required.check(&mut op, now).unwrap_err();
        assert!(err.to_string().contains("not signed"), "{err}");
    }
}
