//! What travels between a producer and its sites: topic names, the signed
//! block manifest, chunk metadata and the frame envelope that carries both,
//! on Kafka and in `fschain export` files alike.
//!
//! A block travels as one manifest frame followed by `count` chunk frames.
//! The manifest is signed (ed25519) and names the block header, the SHA-256
//! of the whole compressed stream, its length, its chunk count and the
//! RFC 6962 root over its chunks' hashes ([`ChunkTreeRoot`]). Every chunk
//! carries its inclusion proof under that root, so a site checks each chunk
//! against the signed manifest the moment it arrives and can feed it to
//! `btrfs receive` at once: nothing unsigned ever reaches it, and no stream
//! has to be held whole first. `docs/replication.md` gives the byte layout.

use std::fmt;

use ed25519_dalek::{Signer as _, Verifier as _};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::digest::{hex_decode, hex_encode, ChunkHash, ChunkTreeRoot, StreamHash};
use crate::merkle::{leaf_hash, InclusionProof, MerkleLevels};
use crate::{jcs, BlockHeader, ChainName, Digest, SchemaError};

/// First bytes of every frame.
pub const FRAME_MAGIC: &[u8; 4] = b"FSC1";
/// Domain separation: a manifest signature can never be mistaken for a
/// signature over anything else.
pub const SIGNATURE_CONTEXT: &[u8] = b"fschain block manifest v2\n";
/// Format 2 added the chunk tree (`stream.chunks_root`, each chunk's
/// `proof`); a format 1 manifest is refused by name.
pub const MANIFEST_VERSION: u64 = 2;
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
    /// Sites' cosigned checkpoints (keyed by chain).
    pub witness: String,
}

impl Topics {
    pub fn with_prefix(prefix: &str) -> Self {
        Topics {
            ops: format!("{prefix}.ops"),
            events: format!("{prefix}.events"),
            blocks: format!("{prefix}.blocks"),
            witness: format!("{prefix}.witness"),
        }
    }
}

/// Kafka key of an event message: `<chain>/<element>`.
pub fn event_key(chain: &ChainName, element: &crate::ElementId) -> String {
    format!("{chain}/{element}")
}

/// An `events.log` line longer than this goes to the events topic without
/// its operation's state (see [`event_message`]): the blocks carry that
/// state already, and a line of several MiB would exceed what a broker takes
/// (1 MiB by default), which stopped the chain's publishing for good.
pub const EVENT_MESSAGE_INLINE_BYTES: usize = 64 * 1024;

/// The Kafka header naming how many bytes of canonical JSON an event
/// message's operation state had when it was left out.
pub const STATE_OMITTED_HEADER: &str = "fschain-state-omitted";

/// What goes on the events topic for one `events.log` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMessage {
    /// The line itself, or its canonical JSON without `op.state`.
    pub value: Vec<u8>,
    /// The length of the canonical JSON of the state left out, if any.
    pub state_omitted: Option<u64>,
}

/// The events-topic message of the canonical event `line`: the line when
/// it is at most [`EVENT_MESSAGE_INLINE_BYTES`] long (or carries no
/// operation state), else the same canonical JSON without `op.state`, and
/// the length of what was left out. The `hash` stays the event's: the full
/// line, which it checks, is in the block's `events.log`.
pub fn event_message(line: &[u8]) -> Result<EventMessage, SchemaError> {
    if line.len() <= EVENT_MESSAGE_INLINE_BYTES {
        return Ok(EventMessage {
            value: line.to_vec(),
            state_omitted: None,
        });
    }
    let mut event: Value = serde_json::from_slice(line).map_err(|e| SchemaError::Json {
        message: format!("event line: {e}"),
    })?;
    let had_state = event
        .get_mut("op")
        .and_then(Value::as_object_mut)
        .and_then(|op| op.remove("state"))
        .is_some();
    if !had_state {
        return Ok(EventMessage {
            value: line.to_vec(),
            state_omitted: None,
        });
    }
    let value = jcs::canonical(&event)?;
    // `state` sorts last among the operation's members and `action` is
    // always there, so what went is `,"state":` and the state's own bytes.
    let omitted = line
        .len()
        .saturating_sub(value.len() + r#","state":"#.len()) as u64;
    Ok(EventMessage {
        value,
        state_omitted: Some(omitted),
    })
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
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        PublicKey(bytes)
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// Whether `signature` is this key's ed25519 signature of `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        ed25519_dalek::VerifyingKey::from_bytes(&self.0).is_ok_and(|k| {
            k.verify_strict(message, &ed25519_dalek::Signature::from_bytes(signature))
                .is_ok()
        })
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
    /// The ed25519 signature of `message`.
    pub fn sign_bytes(&self, message: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer;
        self.0.sign(message).to_bytes()
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
    /// Always `"zstd"` in format 2.
    pub compression: String,
    /// RFC 6962 root over the chunks, each leaf the 32 bytes of a chunk's
    /// SHA-256, in stream order.
    pub chunks_root: ChunkTreeRoot,
}

impl StreamInfo {
    /// Describes a stream held in memory, cut into `chunk_size` pieces, with
    /// the tree its chunks' proofs come from (tests, golden vectors; the
    /// producer hashes a spooled stream as it is written).
    pub fn of_bytes(stream: &[u8], chunk_size: u32) -> (StreamInfo, ChunkTree) {
        let mut hasher = StreamHasher::new(chunk_size);
        hasher.update(stream);
        hasher.finish()
    }

    /// How many bytes chunk `index` holds: `chunk_size`, but for the last.
    pub fn chunk_len(&self, index: u32) -> u64 {
        let start = u64::from(index) * u64::from(self.chunk_size);
        self.bytes
            .saturating_sub(start)
            .min(u64::from(self.chunk_size))
    }
}

/// Hashes a stream as it is written, the whole of it and each
/// `chunk_size` piece, for its [`StreamInfo`] and [`ChunkTree`]. An empty
/// stream is one empty chunk.
#[derive(Debug)]
pub struct StreamHasher {
    chunk_size: u64,
    whole: Sha256,
    chunk: Sha256,
    in_chunk: u64,
    bytes: u64,
    chunks: Vec<ChunkHash>,
}

impl StreamHasher {
    pub fn new(chunk_size: u32) -> Self {
        StreamHasher {
            chunk_size: u64::from(chunk_size.max(1)),
            whole: Sha256::new(),
            chunk: Sha256::new(),
            in_chunk: 0,
            bytes: 0,
            chunks: Vec::new(),
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.whole.update(data);
        self.bytes += data.len() as u64;
        while !data.is_empty() {
            let room = (self.chunk_size - self.in_chunk) as usize;
            let (now, rest) = data.split_at(room.min(data.len()));
            self.chunk.update(now);
            self.in_chunk += now.len() as u64;
            if self.in_chunk == self.chunk_size {
                let done = std::mem::take(&mut self.chunk);
                self.chunks
                    .push(ChunkHash(Digest::from_bytes(done.finalize().into())));
                self.in_chunk = 0;
            }
            data = rest;
        }
    }

    pub fn finish(mut self) -> (StreamInfo, ChunkTree) {
        if self.in_chunk > 0 || self.chunks.is_empty() {
            let last = std::mem::take(&mut self.chunk);
            self.chunks
                .push(ChunkHash(Digest::from_bytes(last.finalize().into())));
        }
        let tree = ChunkTree::from_hashes(&self.chunks);
        let info = StreamInfo {
            sha256: StreamHash(Digest::from_bytes(self.whole.finalize().into())),
            bytes: self.bytes,
            chunks: self.chunks.len() as u32,
            chunk_size: self.chunk_size as u32,
            compression: "zstd".into(),
            chunks_root: tree.root(),
        };
        (info, tree)
    }
}

/// The leaf of a chunk in its stream's chunk tree: SHA-256(0x00 ‖ the
/// chunk's 32-byte SHA-256).
pub fn chunk_leaf(hash: &ChunkHash) -> Digest {
    leaf_hash(hash.0.as_bytes())
}

/// The RFC 6962 tree over a stream's chunk hashes: its root goes in the
/// signed manifest, its audit paths in the chunks.
#[derive(Clone, Debug)]
pub struct ChunkTree {
    levels: MerkleLevels,
    hashes: Vec<ChunkHash>,
}

impl ChunkTree {
    pub fn from_hashes(hashes: &[ChunkHash]) -> Self {
        ChunkTree {
            levels: MerkleLevels::from_leaves(hashes.iter().map(chunk_leaf).collect()),
            hashes: hashes.to_vec(),
        }
    }

    pub fn root(&self) -> ChunkTreeRoot {
        ChunkTreeRoot(self.levels.root())
    }

    pub fn len(&self) -> usize {
        self.levels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    /// The audit path of chunk `index` (empty for a one-chunk stream).
    pub fn proof(&self, index: u32) -> Vec<Digest> {
        self.levels
            .proof(index as usize)
            .map(|p| p.path)
            .unwrap_or_default()
    }

    /// The SHA-256 of chunk `index`, as it was hashed into the tree.
    pub fn chunk_hash(&self, index: u32) -> Option<ChunkHash> {
        self.hashes.get(index as usize).copied()
    }
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
    /// The signed C2SP checkpoint of the chain up to this block (tree size
    /// height + 1), as `fschain checkpoint` prints it; sites check it and
    /// cosign it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
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
        Self::sign_with_checkpoint(header, parent, stream, None, key)
    }

    /// Builds and signs a manifest that carries the chain's checkpoint.
    pub fn sign_with_checkpoint(
        header: &BlockHeader,
        parent: Option<u64>,
        stream: StreamInfo,
        checkpoint: Option<String>,
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
            checkpoint,
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

    /// The checkpoint the manifest carries, checked: signed by the
    /// manifest's key under its origin (`.../<chain>`), of tree size
    /// height + 1. Its root is checked by whoever holds the headers.
    pub fn checkpoint(
        &self,
    ) -> Result<Option<(crate::note::Checkpoint, crate::note::Verifier)>, SchemaError> {
        let Some(text) = &self.checkpoint else {
            return Ok(None);
        };
        let bad = |why: String| SchemaError::BadNote { why };
        let note = crate::note::Note::parse(text)?;
        let body = crate::note::Checkpoint::parse_body(&note.body)?;
        if !body.origin.ends_with(&format!("/{}", self.chain)) {
            return Err(bad(format!(
                "the checkpoint of {} block {} names the log {:?}",
                self.chain, self.height, body.origin
            )));
        }
        if body.size != self.height + 1 {
            return Err(bad(format!(
                "the checkpoint of {} block {} has tree size {}, not {}",
                self.chain,
                self.height,
                body.size,
                self.height + 1
            )));
        }
        let log = crate::note::Verifier::new(&body.origin, self.key)?;
        let checkpoint = crate::note::Checkpoint::open(text, &log)?;
        Ok(Some((checkpoint, log)))
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
        self.checkpoint()?;
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
    /// The RFC 6962 audit path of this chunk under the manifest's
    /// `stream.chunks_root`, bottom up.
    pub proof: Vec<Digest>,
}

/// One chunk: its metadata and its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub meta: ChunkMeta,
    pub data: Vec<u8>,
}

impl Chunk {
    /// Builds chunk `index` of a stream, with its audit path in `tree`.
    pub fn new(manifest: &BlockManifest, tree: &ChunkTree, index: u32, data: Vec<u8>) -> Self {
        let sha256 = ChunkHash(Digest::of(&data));
        Chunk::with_hash(manifest, tree, index, data, sha256)
    }

    fn with_hash(
        manifest: &BlockManifest,
        tree: &ChunkTree,
        index: u32,
        data: Vec<u8>,
        sha256: ChunkHash,
    ) -> Self {
        Chunk {
            meta: ChunkMeta {
                chain: manifest.chain.clone(),
                height: manifest.height,
                parent: manifest.parent,
                index,
                count: manifest.stream.chunks,
                sha256,
                stream_sha256: manifest.stream.sha256,
                proof: tree.proof(index),
            },
            data,
        }
    }

    /// Chunk `index` of a stream whose bytes `tree` was built from as they
    /// were written (a producer's spool, checked against its manifest):
    /// its hash is the tree's, not computed a second time. Bytes that
    /// changed on disk since are refused where every chunk is checked, by
    /// [`Chunk::authenticate`] at the site.
    pub fn spooled(manifest: &BlockManifest, tree: &ChunkTree, index: u32, data: Vec<u8>) -> Self {
        match tree.chunk_hash(index) {
            Some(sha256) => Chunk::with_hash(manifest, tree, index, data, sha256),
            None => Chunk::new(manifest, tree, index, data),
        }
    }

    /// Checks that this chunk is chunk `index` of the stream `manifest`
    /// (already verified) signs: its bytes hash to its `sha256`, that hash
    /// sits at `index` under the signed chunk tree root, and its length and
    /// stream agree with the manifest. A chunk that passes may go to
    /// `btrfs receive` before the rest of its stream has arrived.
    pub fn authenticate(&self, manifest: &BlockManifest) -> Result<(), SchemaError> {
        self.check()?;
        let m = &self.meta;
        let refuse = |why: String| SchemaError::ChunkNotInStream {
            chain: m.chain.to_string(),
            height: m.height,
            index: m.index,
            why,
        };
        if m.chain != manifest.chain
            || m.height != manifest.height
            || m.parent != manifest.parent
            || m.stream_sha256 != manifest.stream.sha256
            || m.count != manifest.stream.chunks
        {
            return Err(refuse(
                "its chain, height, parent, stream or count is not its manifest's".into(),
            ));
        }
        let expected_len = manifest.stream.chunk_len(m.index);
        if self.data.len() as u64 != expected_len {
            return Err(refuse(format!(
                "it holds {} bytes, the manifest says {expected_len}",
                self.data.len()
            )));
        }
        InclusionProof {
            leaf_index: u64::from(m.index),
            tree_size: u64::from(m.count),
            path: m.proof.clone(),
        }
        .verify(&chunk_leaf(&m.sha256), manifest.stream.chunks_root.digest())
        .map_err(|e| {
            refuse(format!(
                "its proof does not lead to the signed chunk tree root: {e}"
            ))
        })
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
            let m: BlockManifest = serde_json::from_slice(meta).map_err(|e| {
                // A manifest of another format version is named as such,
                // not as whatever member it lacks.
                match serde_json::from_slice::<Value>(meta)
                    .ok()
                    .and_then(|v| v.get("version")?.as_u64())
                {
                    Some(version) if version != MANIFEST_VERSION => {
                        SchemaError::UnsupportedVersion {
                            what: "manifest",
                            version,
                        }
                    }
                    _ => json("manifest", e),
                }
            })?;
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

/// The kind of frame `bytes` claims to be, read from its header alone
/// (cheap: a reader that wants only manifests skips chunks unparsed).
/// `None` when it is no fschain frame or of an unknown kind.
pub fn frame_kind(bytes: &[u8]) -> Option<FrameKind> {
    let head = bytes.first_chunk::<9>()?;
    if &head[..4] != FRAME_MAGIC {
        return None;
    }
    match head[4] {
        1 => Some(FrameKind::Manifest),
        2 => Some(FrameKind::Chunk),
        _ => None,
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

    fn event_line(state: crate::State) -> Vec<u8> {
        let draft = crate::EventDraft {
            chain: "host1".parse().unwrap(),
            chain_seq: 1,
            element_seq: 1,
            op: crate::Operation {
                element: "file:/etc/big".parse().unwrap(),
                action: crate::Action::Set,
                state: Some(state.clone()),
                reason: Some("r".into()),
                actor: None,
                signature: None,
            },
            prev: None,
            state_hash: Some(crate::state_hash(&state).unwrap()),
            time: Timestamp::from_micros(1_700_000_000_000_000),
        };
        draft.seal_with_line().unwrap().1
    }

    fn blob(len: usize) -> crate::State {
        serde_json::json!({"blob": "x".repeat(len), "mode": 420})
            .as_object()
            .cloned()
            .unwrap()
    }

    #[test]
    fn a_short_event_goes_to_the_topic_as_its_line() {
        let line = event_line(blob(100));
        let message = event_message(&line).unwrap();
        assert_eq!(message.value, line);
        assert_eq!(message.state_omitted, None);
    }

    #[test]
    fn a_long_event_goes_without_its_state_and_keeps_its_hash() {
        let state = blob(EVENT_MESSAGE_INLINE_BYTES);
        let line = event_line(state.clone());
        let message = event_message(&line).unwrap();
        assert!(message.value.len() < 1024, "{}", message.value.len());
        assert!(jcs::is_canonical(&message.value));
        let full: Value = serde_json::from_slice(&line).unwrap();
        let sent: Value = serde_json::from_slice(&message.value).unwrap();
        let mut expected = full.clone();
        expected["op"].as_object_mut().unwrap().remove("state");
        assert_eq!(sent, expected);
        assert_eq!(sent["hash"], full["hash"]);
        assert_eq!(
            message.state_omitted,
            Some(jcs::canonical_object(&state).unwrap().len() as u64)
        );
    }

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
        stream_of(&vec![5u8; bytes as usize]).0
    }

    fn stream_of(bytes: &[u8]) -> (StreamInfo, ChunkTree) {
        StreamInfo::of_bytes(bytes, 100)
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
    fn a_spooled_chunk_takes_its_hash_from_the_tree_and_is_refused_if_changed() {
        let (info, tree) = stream_of(&[7; 250]);
        let m = BlockManifest::sign(&header(), None, info, &key(1)).unwrap();
        let spooled = Chunk::spooled(&m, &tree, 2, vec![7; 50]);
        assert_eq!(spooled, Chunk::new(&m, &tree, 2, vec![7; 50]));
        spooled.authenticate(&m).unwrap();
        // Bytes that changed on disk after they were hashed.
        let changed = Chunk::spooled(&m, &tree, 2, vec![8; 50]);
        assert!(changed.authenticate(&m).is_err());
    }

    #[test]
    fn chunk_frames_round_trip_and_catch_changed_bytes() {
        let (info, tree) = stream_of(&[7; 250]);
        let m = BlockManifest::sign(&header(), None, info, &key(1)).unwrap();
        let chunk = Chunk::new(&m, &tree, 2, vec![7; 50]);
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

    fn chunks_of(bytes: &[u8], parent: Option<u64>) -> (BlockManifest, Vec<Chunk>) {
        let (info, tree) = stream_of(bytes);
        let m = BlockManifest::sign(&header(), parent, info, &key(1)).unwrap();
        let chunks = bytes
            .chunks(100)
            .enumerate()
            .map(|(i, c)| Chunk::new(&m, &tree, i as u32, c.to_vec()))
            .collect();
        (m, chunks)
    }

    #[test]
    fn every_chunk_authenticates_against_its_signed_manifest_alone() {
        let bytes: Vec<u8> = (0..1234u32).map(|i| (i * 7 % 251) as u8).collect();
        let (m, chunks) = chunks_of(&bytes, Some(2));
        assert_eq!(chunks.len(), 13);
        for c in &chunks {
            c.authenticate(&m).unwrap();
            // Through a frame and back, too.
            let Frame::Chunk(back) = decode_frame(&c.to_frame().unwrap()).unwrap() else {
                panic!("not a chunk")
            };
            back.authenticate(&m).unwrap();
        }
        let one = chunks_of(b"short", None);
        assert!(one.1[0].meta.proof.is_empty());
        one.1[0].authenticate(&one.0).unwrap();
    }

    #[test]
    fn a_chunk_of_another_stream_or_place_is_refused() {
        let bytes: Vec<u8> = (0..1000u32).map(|i| (i % 256) as u8).collect();
        let (m, chunks) = chunks_of(&bytes, Some(2));
        let not_in = |c: &Chunk, m: &BlockManifest| {
            matches!(c.authenticate(m), Err(SchemaError::ChunkNotInStream { .. }))
        };
        // Moved to another index, with a hash and a proof of its own.
        let mut moved = chunks[3].clone();
        moved.meta.index = 4;
        assert!(not_in(&moved, &m));
        // Another chunk's bytes with their own correct hash, under this
        // chunk's proof.
        let mut swapped = chunks[3].clone();
        swapped.data = chunks[4].data.clone();
        swapped.meta.sha256 = chunks[4].meta.sha256;
        assert!(not_in(&swapped, &m));
        // A proof cut short, or one hash of it changed.
        let mut short = chunks[3].clone();
        short.meta.proof.pop();
        assert!(not_in(&short, &m));
        let mut bent = chunks[3].clone();
        bent.meta.proof[0] = Digest::of(b"other");
        assert!(not_in(&bent, &m));
        // A whole chunk of another stream, under this stream's manifest.
        let mut other_bytes = bytes.clone();
        other_bytes[950] ^= 1;
        let (_, other) = chunks_of(&other_bytes, Some(2));
        let mut foreign = other[9].clone();
        foreign.meta.stream_sha256 = m.stream.sha256;
        assert!(not_in(&foreign, &m));
        // Its bytes changed: caught by its own hash first.
        let mut flipped = chunks[0].clone();
        flipped.data[0] ^= 1;
        assert!(matches!(
            flipped.authenticate(&m),
            Err(SchemaError::ChunkHashMismatch { .. })
        ));
    }

    #[test]
    fn a_manifest_of_another_format_is_named_as_such() {
        let m = BlockManifest::sign(&header(), None, stream(10), &key(1)).unwrap();
        let mut v = serde_json::to_value(&m).unwrap();
        v["version"] = 1.into();
        v["stream"].as_object_mut().unwrap().remove("chunks_root");
        let frame = encode_frame(FrameKind::Manifest, &jcs::canonical(&v).unwrap(), &[]);
        assert!(matches!(
            decode_frame(&frame),
            Err(SchemaError::UnsupportedVersion {
                what: "manifest",
                version: 1
            })
        ));
    }

    proptest::proptest! {
        /// However a stream is written in pieces, its description is that
        /// of the whole, and every chunk it cuts authenticates.
        #[test]
        fn hashing_in_pieces_is_hashing_the_whole(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..700),
            cuts in proptest::collection::vec(0usize..700, 0..8),
            chunk_size in 1u32..130,
        ) {
            let mut hasher = StreamHasher::new(chunk_size);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut at = 0;
            for c in cuts.into_iter().chain([bytes.len()]) {
                hasher.update(&bytes[at..c]);
                at = c;
            }
            let (info, tree) = hasher.finish();
            proptest::prop_assert_eq!(info.sha256, StreamHash(Digest::of(&bytes)));
            proptest::prop_assert_eq!(info.bytes, bytes.len() as u64);
            let expected = bytes.len().div_ceil(chunk_size as usize).max(1);
            proptest::prop_assert_eq!(info.chunks as usize, expected);
            proptest::prop_assert_eq!(tree.len(), expected);
            let m = BlockManifest::sign(&header(), None, info, &key(1)).unwrap();
            let pieces: Vec<&[u8]> = if bytes.is_empty() { vec![&[]] } else { bytes.chunks(chunk_size as usize).collect() };
            for (i, piece) in pieces.into_iter().enumerate() {
                let chunk = Chunk::new(&m, &tree, i as u32, piece.to_vec());
                proptest::prop_assert!(chunk.authenticate(&m).is_ok());
            }
        }
    }
}
