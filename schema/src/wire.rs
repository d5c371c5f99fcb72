//! What travels between a producer and its sites: topic names, the signed
//! block manifest, chunk metadata and the frame envelope that carries both,
//! on Kafka and in `fschain export` files alike.
//!
//! A block travels as one manifest frame followed by `count` chunk frames.
//! The manifest is signed (ed25519) and names the block header, the SHA-256
//! of the whole compressed stream, its length and its chunk count, so a site
//! can check every byte before anything reaches `btrfs receive`.
//! `docs/replication.md` gives the byte layout.

use std::fmt;

use ed25519_dalek::{Signer as _, Verifier as _};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::digest::{hex_decode, hex_encode, ChunkHash, StreamHash};
use crate::{jcs, BlockHeader, ChainName, Digest, SchemaError};

/// First bytes of every frame.
pub const FRAME_MAGIC: &[u8; 4] = b"FSC1";
/// Domain separation: a manifest signature can never be mistaken for a
/// signature over anything else.
pub const SIGNATURE_CONTEXT: &[u8] = b"fschain block manifest v1\n";
pub const MANIFEST_VERSION: u64 = 1;
/// Default chunk size: 512 KiB, well under Kafka's 1 MiB default message limit.
pub const DEFAULT_CHUNK_SIZE: u32 = 512 * 1024;
/// A frame's metadata is small; anything larger is not ours.
pub const MAX_META_LEN: u32 = 1 << 20;
/// The largest chunk a site accepts (16 MiB).
pub const MAX_CHUNK_LEN: u32 = 16 << 20;

/// The three topics of one deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    pub ops: String,
    pub events: String,
    pub blocks: String,
}

impl Topics {
    pub fn with_prefix(prefix: &str) -> Self {
        Topics {
            ops: format!("{prefix}.ops"),
            events: format!("{prefix}.events"),
            blocks: format!("{prefix}.blocks"),
        }
    }
}

/// Kafka key of an event message: `<chain>/<element>`.
pub fn event_key(chain: &ChainName, element: &crate::ElementId) -> String {
    format!("{chain}/{element}")
}

/// An ed25519 public key that signs a chain's manifests.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    pub fn from_hex(text: &str) -> Result<Self, SchemaError> {
        Digest::from_hex(text.trim())
            .map(|d| PublicKey(*d.as_bytes()))
            .map_err(|_| SchemaError::BadKey {
                why: format!("{:?} is not 64 lower-case hex digits", text.trim()),
            })
    }
    pub fn to_hex(&self) -> String {
        Digest::from_bytes(self.0).to_hex()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

impl Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        PublicKey::from_hex(&text).map_err(serde::de::Error::custom)
    }
}

/// The private half; kept in the producer's root, never published.
pub struct SigningKey(ed25519_dalek::SigningKey);

impl SigningKey {
    /// From 32 bytes of seed (the caller brings the randomness: no IO here).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed))
    }
    pub fn from_hex(text: &str) -> Result<Self, SchemaError> {
        Digest::from_hex(text.trim())
            .map(|d| Self::from_seed(*d.as_bytes()))
            .map_err(|_| SchemaError::BadKey {
                why: "private key file does not hold 64 lower-case hex digits".into(),
            })
    }
    pub fn to_hex(&self) -> String {
        Digest::from_bytes(self.0.to_bytes()).to_hex()
    }
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(public {})", self.public())
    }
}

/// How a block's snapshot stream was made and cut.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamInfo {
    /// SHA-256 of the compressed stream (the concatenation of the chunks).
    pub sha256: StreamHash,
    /// Length of the compressed stream.
    pub bytes: u64,
    pub chunks: u32,
    pub chunk_size: u32,
    /// Always `"zstd"` in format 1.
    pub compression: String,
}

/// What a producer signs for each block it publishes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockManifest {
    pub version: u64,
    pub chain: ChainName,
    pub height: u64,
    /// The block the stream is incremental against; `None` for a full stream.
    pub parent: Option<u64>,
    pub header: Value,
    pub stream: StreamInfo,
    pub key: PublicKey,
    pub signature: String,
}

impl BlockManifest {
    /// Builds and signs a manifest.
    pub fn sign(
        header: &BlockHeader,
        parent: Option<u64>,
        stream: StreamInfo,
        key: &SigningKey,
    ) -> Result<Self, SchemaError> {
        let mut manifest = BlockManifest {
            version: MANIFEST_VERSION,
            chain: header.chain.clone(),
            height: header.height,
            parent,
            header: header.body_value_with_hash(),
            stream,
            key: key.public(),
            signature: String::new(),
        };
        let message = manifest.signed_bytes()?;
        let sig = key.0.sign(&message);
        manifest.signature = hex_encode(&sig.to_bytes());
        Ok(manifest)
    }

    /// The bytes the signature covers: [`SIGNATURE_CONTEXT`] followed by the
    /// JCS of the manifest without its `signature` member.
    pub fn signed_bytes(&self) -> Result<Vec<u8>, SchemaError> {
        let mut value = serde_json::to_value(self)
            .map_err(|e| SchemaError::Malformed { why: e.to_string() })?;
        if let Value::Object(map) = &mut value {
            map.remove("signature");
        }
        let mut out = SIGNATURE_CONTEXT.to_vec();
        out.extend(jcs::canonical(&value)?);
        Ok(out)
    }

    /// The block header the manifest carries, its hash checked.
    pub fn block_header(&self) -> Result<BlockHeader, SchemaError> {
        let bytes = jcs::canonical(&self.header)?;
        let header = BlockHeader::from_canonical(&bytes)?;
        if header.chain != self.chain || header.height != self.height {
            return Err(SchemaError::Malformed {
                why: format!(
                    "manifest for {} block {} carries the header of {} block {}",
                    self.chain, self.height, header.chain, header.height
                ),
            });
        }
        Ok(header)
    }

    /// Checks the signature, that `key` is one of `trusted`, the header hash
    /// and that the stream description is coherent. Returns the header.
    pub fn verify(&self, trusted: &[PublicKey]) -> Result<BlockHeader, SchemaError> {
        if self.version != MANIFEST_VERSION {
            return Err(SchemaError::UnsupportedVersion {
                what: "manifest",
                version: self.version,
            });
        }
        if !trusted.contains(&self.key) {
            return Err(SchemaError::UntrustedKey { key: self.key });
        }
        let mut sig_bytes = [0u8; 64];
        hex_decode(&self.signature, &mut sig_bytes).ok_or(SchemaError::BadSignature {
            chain: self.chain.to_string(),
            height: self.height,
        })?;
        let verifying = ed25519_dalek::VerifyingKey::from_bytes(&self.key.0).map_err(|_| {
            SchemaError::BadKey {
                why: format!("{} is not a valid ed25519 public key", self.key),
            }
        })?;
        let sig = ed25519_dalek::Signature::from_bytes(&sig_bytes);
        verifying
            .verify(&self.signed_bytes()?, &sig)
            .map_err(|_| SchemaError::BadSignature {
                chain: self.chain.to_string(),
                height: self.height,
            })?;
        let s = &self.stream;
        let expected_chunks = s.bytes.div_ceil(u64::from(s.chunk_size.max(1))).max(1);
        if s.compression != "zstd"
            || s.chunk_size == 0
            || s.chunk_size > MAX_CHUNK_LEN
            || u64::from(s.chunks) != expected_chunks
            || self.parent.is_some_and(|p| p >= self.height)
        {
            return Err(SchemaError::Malformed {
                why: format!(
                    "manifest of {} block {}: incoherent stream description",
                    self.chain, self.height
                ),
            });
        }
        self.block_header()
    }

    pub fn to_frame(&self) -> Result<Vec<u8>, SchemaError> {
        let meta = jcs::canonical(
            &serde_json::to_value(self)
                .map_err(|e| SchemaError::Malformed { why: e.to_string() })?,
        )?;
        Ok(encode_frame(FrameKind::Manifest, &meta, &[]))
    }
}

/// What every chunk says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkMeta {
    pub chain: ChainName,
    pub height: u64,
    pub parent: Option<u64>,
    pub index: u32,
    pub count: u32,
    pub sha256: ChunkHash,
    pub stream_sha256: StreamHash,
}

/// One chunk: its metadata and its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub meta: ChunkMeta,
    pub data: Vec<u8>,
}

impl Chunk {
    /// Builds chunk `index` of a stream.
    pub fn new(manifest: &BlockManifest, index: u32, data: Vec<u8>) -> Self {
        Chunk {
            meta: ChunkMeta {
                chain: manifest.chain.clone(),
                height: manifest.height,
                parent: manifest.parent,
                index,
                count: manifest.stream.chunks,
                sha256: ChunkHash(Digest::of(&data)),
                stream_sha256: manifest.stream.sha256,
            },
            data,
        }
    }

    /// Checks the bytes against the chunk's own hash and its index.
    pub fn check(&self) -> Result<(), SchemaError> {
        let actual = ChunkHash(Digest::of(&self.data));
        if actual != self.meta.sha256 {
            return Err(SchemaError::ChunkHashMismatch {
                index: self.meta.index,
                expected: self.meta.sha256,
                actual,
            });
        }
        if self.meta.index >= self.meta.count {
            return Err(SchemaError::Malformed {
                why: format!(
                    "chunk index {} out of range (count {})",
                    self.meta.index, self.meta.count
                ),
            });
        }
        Ok(())
    }

    pub fn to_frame(&self) -> Result<Vec<u8>, SchemaError> {
        let meta = jcs::canonical(
            &serde_json::to_value(&self.meta)
                .map_err(|e| SchemaError::Malformed { why: e.to_string() })?,
        )?;
        Ok(encode_frame(FrameKind::Chunk, &meta, &self.data))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Manifest = 1,
    Chunk = 2,
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Manifest(BlockManifest),
    Chunk(Chunk),
}

impl Frame {
    pub fn chain(&self) -> &ChainName {
        match self {
            Frame::Manifest(m) => &m.chain,
            Frame::Chunk(c) => &c.meta.chain,
        }
    }
    pub fn height(&self) -> u64 {
        match self {
            Frame::Manifest(m) => m.height,
            Frame::Chunk(c) => c.meta.height,
        }
    }
}

fn encode_frame(kind: FrameKind, meta: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(13 + meta.len() + payload.len());
    out.extend_from_slice(FRAME_MAGIC);
    out.push(kind as u8);
    out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
    out.extend_from_slice(meta);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Decodes exactly one frame (a Kafka message value). Trailing bytes are an
/// error: a frame must be whole and alone.
pub fn decode_frame(bytes: &[u8]) -> Result<Frame, SchemaError> {
    let bad = |why: String| SchemaError::BadFrame { why };
    let Some(head) = bytes.first_chunk::<9>() else {
        return Err(bad("shorter than a frame header".into()));
    };
    let kind = bytes[4];
    let meta_len = frame_meta_len(head)?;
    if 9 + meta_len + 4 > bytes.len() {
        return Err(bad(format!(
            "metadata length {meta_len} runs past the frame"
        )));
    }
    let meta_end = 9 + meta_len;
    let meta = &bytes[9..meta_end];
    let p = &bytes[meta_end..meta_end + 4];
    let payload_len = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
    let payload = &bytes[meta_end + 4..];
    if payload.len() != payload_len {
        return Err(bad(format!(
            "payload length says {payload_len} bytes, the frame holds {}",
            payload.len()
        )));
    }
    let json = |what: &str, e: serde_json::Error| bad(format!("{what} metadata: {e}"));
    match kind {
        1 => {
            if payload_len != 0 {
                return Err(bad("a manifest frame carries no payload".into()));
            }
            let m: BlockManifest = serde_json::from_slice(meta).map_err(|e| json("manifest", e))?;
            Ok(Frame::Manifest(m))
        }
        2 => {
            if payload_len > MAX_CHUNK_LEN as usize {
                return Err(bad(format!(
                    "chunk of {payload_len} bytes is over the limit"
                )));
            }
            let m: ChunkMeta = serde_json::from_slice(meta).map_err(|e| json("chunk", e))?;
            Ok(Frame::Chunk(Chunk {
                meta: m,
                data: payload.to_vec(),
            }))
        }
        k => Err(bad(format!("unknown frame kind {k}"))),
    }
}

/// Given the first 9 bytes of a frame, the length of the rest up to and
/// including the payload length field; used to read frames from a pipe.
pub fn frame_meta_len(head: &[u8; 9]) -> Result<usize, SchemaError> {
    if &head[..4] != FRAME_MAGIC {
        return Err(SchemaError::BadFrame {
            why: "does not start with the fschain frame magic FSC1".into(),
        });
    }
    let len = u32::from_be_bytes([head[5], head[6], head[7], head[8]]);
    if len > MAX_META_LEN {
        return Err(SchemaError::BadFrame {
            why: format!("metadata length {len} is over the limit"),
        });
    }
    Ok(len as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HeaderDraft, Timestamp};

    fn header() -> BlockHeader {
        HeaderDraft {
            height: 3,
            prev: Some(crate::BlockHash(Digest::of(b"prev"))),
            ..HeaderDraft::genesis(
                "host1".parse().unwrap(),
                Timestamp::from_micros(1_700_000_000_000_000),
            )
        }
        .seal()
        .unwrap()
    }

    fn stream(bytes: u64) -> StreamInfo {
        StreamInfo {
            sha256: StreamHash(Digest::of(b"stream")),
            bytes,
            chunks: bytes.div_ceil(100).max(1) as u32,
            chunk_size: 100,
            compression: "zstd".into(),
        }
    }

    fn key(n: u8) -> SigningKey {
        SigningKey::from_seed([n; 32])
    }

    #[test]
    fn signed_manifest_verifies_and_round_trips_through_a_frame() {
        let m = BlockManifest::sign(&header(), Some(2), stream(250), &key(1)).unwrap();
        assert_eq!(m.verify(&[key(1).public()]).unwrap(), header());
        let Frame::Manifest(back) = decode_frame(&m.to_frame().unwrap()).unwrap() else {
            panic!("not a manifest")
        };
        assert_eq!(back, m);
        assert!(back.verify(&[key(1).public()]).is_ok());
    }

    #[test]
    fn untrusted_key_and_any_changed_member_are_refused() {
        let m = BlockManifest::sign(&header(), Some(2), stream(250), &key(1)).unwrap();
        assert!(matches!(
            m.verify(&[key(2).public()]),
            Err(SchemaError::UntrustedKey { .. })
        ));
        let mut other = m.clone();
        other.parent = Some(1);
        assert!(matches!(
            other.verify(&[key(1).public()]),
            Err(SchemaError::BadSignature { .. })
        ));
        let mut other = m.clone();
        other.stream.bytes = 251;
        assert!(other.verify(&[key(1).public()]).is_err());
        let mut other = m.clone();
        other.header["event_count"] = 1.into();
        assert!(other.verify(&[key(1).public()]).is_err());
        // A key swapped in with a signature of its own is still untrusted.
        let forged = BlockManifest::sign(&header(), Some(2), stream(250), &key(9)).unwrap();
        assert!(forged.verify(&[key(1).public()]).is_err());
    }

    #[test]
    fn chunk_frames_round_trip_and_catch_changed_bytes() {
        let m = BlockManifest::sign(&header(), None, stream(250), &key(1)).unwrap();
        let chunk = Chunk::new(&m, 2, vec![7; 50]);
        let frame = chunk.to_frame().unwrap();
        let Frame::Chunk(back) = decode_frame(&frame).unwrap() else {
            panic!("not a chunk")
        };
        assert_eq!(back, chunk);
        back.check().unwrap();
        let mut bad = frame.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let Frame::Chunk(bad) = decode_frame(&bad).unwrap() else {
            panic!("not a chunk")
        };
        assert!(matches!(
            bad.check(),
            Err(SchemaError::ChunkHashMismatch { index: 2, .. })
        ));
        assert!(decode_frame(&frame[..frame.len() - 1]).is_err());
        assert!(decode_frame(b"{\"element\":\"iface:eth0\"}").is_err());
        let mut out_of_range = chunk.clone();
        out_of_range.meta.index = 3;
        assert!(out_of_range.check().is_err());
    }
}
