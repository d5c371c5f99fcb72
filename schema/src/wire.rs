//! What travels between a producer and its sites: topic names, the signed
//! block manifest, chunk metadata and the frame envelope that carries both,
//! on Kafka and in `fschain export` files alike.
//!
//! A block travels as one manifest frame followed by its chunk frames. The
//! manifest is signed (ed25519) before the stream exists: it names the block
//! header, the parent the stream is incremental against, the chunk size and
//! a random *attempt* ([`StreamAttempt`]). Each chunk is signed on its own
//! by the same key, bound to that attempt and its index, the last one
//! marked. So a producer sends each chunk as `btrfs send | zstd` makes it,
//! and a site checks each chunk against the manifest the moment it arrives
//! and feeds it to `btrfs receive` at once: nothing unsigned ever reaches
//! it, and no stream has to be held whole at either end.
//! `docs/replication.md` gives the byte layout.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::digest::{hex_decode, hex_encode, ChunkHash};
use crate::{jcs, BlockHeader, ChainName, Digest, SchemaError};

/// First bytes of every frame.
pub const FRAME_MAGIC: &[u8; 4] = b"FSC1";
/// Domain separation: a manifest signature can never be mistaken for a
/// signature over anything else...
pub const SIGNATURE_CONTEXT: &[u8] = b"fschain block manifest v3\n";
/// ...nor a chunk's for a manifest's.
pub const CHUNK_SIGNATURE_CONTEXT: &[u8] = b"fschain block chunk v3\n";
/// Format 3 signs each chunk and sends the manifest first, before the
/// stream is made; a manifest of format 1 or 2 is refused by name.
pub const MANIFEST_VERSION: u64 = 3;
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

/// Names one attempt at publishing a block's stream: 16 random bytes the
/// producer picks when it starts making the stream. A producer that dies
/// mid-stream makes it again under a new attempt, and a site never mixes
/// the chunks of two attempts.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamAttempt([u8; 16]);

impl StreamAttempt {
    /// From 16 bytes (the caller brings the randomness: no IO here).
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        StreamAttempt(bytes)
    }
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
    pub fn to_hex(&self) -> String {
        hex_encode(&self.0)
    }
    pub fn from_hex(text: &str) -> Result<Self, SchemaError> {
        let mut out = [0u8; 16];
        hex_decode(text, &mut out).ok_or_else(|| SchemaError::Malformed {
            why: format!("stream attempt {text:?} is not 32 lower-case hex digits"),
        })?;
        Ok(StreamAttempt(out))
    }
}

impl fmt::Display for StreamAttempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for StreamAttempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamAttempt({})", self.to_hex())
    }
}

impl Serialize for StreamAttempt {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for StreamAttempt {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        StreamAttempt::from_hex(&text).map_err(serde::de::Error::custom)
    }
}

/// How a block's snapshot stream is made and cut, signed in its manifest
/// before any of it exists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamInfo {
    /// Which attempt at the stream the chunks that follow belong to.
    pub attempt: StreamAttempt,
    /// Every chunk but the last holds exactly this many bytes.
    pub chunk_size: u32,
    /// Always `"zstd"` in format 3.
    pub compression: String,
}

impl StreamInfo {
    pub fn zstd(attempt: StreamAttempt, chunk_size: u32) -> Self {
        StreamInfo {
            attempt,
            chunk_size,
            compression: "zstd".into(),
        }
    }
}

/// One piece of a stream cut by [`StreamCutter`]: bytes
/// `[index * chunk_size, (index + 1) * chunk_size)`, and whether the stream
/// ends with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CutChunk {
    pub index: u32,
    pub last: bool,
    pub data: Vec<u8>,
}

/// What a whole cut stream was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CutStream {
    pub bytes: u64,
    pub chunks: u32,
}

/// Cuts a stream into `chunk_size` pieces as it is written. A full piece
/// is handed out only once a byte after it arrives, so that the last one
/// can say so; an empty stream is one empty chunk. Nothing is hashed here:
/// each piece is hashed once, when it is signed ([`Chunk::sign`]).
#[derive(Debug)]
pub struct StreamCutter {
    chunk_size: usize,
    buf: Vec<u8>,
    index: u32,
    bytes: u64,
}

impl StreamCutter {
    pub fn new(chunk_size: u32) -> Self {
        let chunk_size = chunk_size.max(1) as usize;
        StreamCutter {
            chunk_size,
            buf: Vec::with_capacity(chunk_size),
            index: 0,
            bytes: 0,
        }
    }

    /// A stream held whole in memory, cut into its pieces, the last marked.
    pub fn cut(stream: &[u8], chunk_size: u32) -> Vec<CutChunk> {
        let mut cutter = StreamCutter::new(chunk_size);
        let mut pieces = cutter.update(stream);
        pieces.push(cutter.finish().0);
        pieces
    }

    /// Takes the next bytes of the stream; returns the chunks they
    /// completed (never the last one: see [`Self::finish`]).
    pub fn update(&mut self, mut data: &[u8]) -> Vec<CutChunk> {
        self.bytes += data.len() as u64;
        let mut done = Vec::new();
        while !data.is_empty() {
            if self.buf.len() == self.chunk_size {
                let full = std::mem::replace(&mut self.buf, Vec::with_capacity(self.chunk_size));
                done.push(CutChunk {
                    index: self.index,
                    last: false,
                    data: full,
                });
                self.index += 1;
            }
            let room = self.chunk_size - self.buf.len();
            let (now, rest) = data.split_at(room.min(data.len()));
            self.buf.extend_from_slice(now);
            data = rest;
        }
        done
    }

    /// The last chunk, and what the whole stream was.
    pub fn finish(self) -> (CutChunk, CutStream) {
        let last = CutChunk {
            index: self.index,
            last: true,
            data: self.buf,
        };
        let whole = CutStream {
            bytes: self.bytes,
            chunks: self.index + 1,
        };
        (last, whole)
    }
}

/// What a producer signs for each block it publishes, before the block's
/// chunks: the block header and how its stream is made.
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

/// The bytes an ed25519 signature covers: `context` followed by the JCS of
/// `value` without its `signature` member.
fn signed_bytes_of(context: &[u8], value: &impl Serialize) -> Result<Vec<u8>, SchemaError> {
    let mut value =
        serde_json::to_value(value).map_err(|e| SchemaError::Malformed { why: e.to_string() })?;
    if let Value::Object(map) = &mut value {
        map.remove("signature");
    }
    let mut out = context.to_vec();
    out.extend(jcs::canonical(&value)?);
    Ok(out)
}

/// Whether `signature` (hex) is `key`'s ed25519 signature of `message`.
fn signature_verifies(key: &PublicKey, message: &[u8], signature: &str) -> bool {
    let mut sig = [0u8; 64];
    hex_decode(signature, &mut sig).is_some() && key.verifies(message, &sig)
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
        manifest.signature = hex_encode(&key.sign_bytes(&message));
        Ok(manifest)
    }

    /// The bytes the signature covers: [`SIGNATURE_CONTEXT`] followed by the
    /// JCS of the manifest without its `signature` member.
    pub fn signed_bytes(&self) -> Result<Vec<u8>, SchemaError> {
        signed_bytes_of(SIGNATURE_CONTEXT, self)
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
        if ed25519_dalek::VerifyingKey::from_bytes(&self.key.0).is_err() {
            return Err(SchemaError::BadKey {
                why: format!("{} is not a valid ed25519 public key", self.key),
            });
        }
        if !signature_verifies(&self.key, &self.signed_bytes()?, &self.signature) {
            return Err(SchemaError::BadSignature {
                chain: self.chain.to_string(),
                height: self.height,
            });
        }
        let s = &self.stream;
        if s.compression != "zstd"
            || s.chunk_size == 0
            || s.chunk_size > MAX_CHUNK_LEN
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

/// What every chunk says about itself, under the signature of its
/// manifest's key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkMeta {
    /// The stream attempt of the manifest this chunk belongs to.
    pub attempt: StreamAttempt,
    pub chain: ChainName,
    pub height: u64,
    pub index: u32,
    /// Whether the stream ends with this chunk.
    pub last: bool,
    pub sha256: ChunkHash,
    /// ed25519, by the manifest's key, over [`CHUNK_SIGNATURE_CONTEXT`] and
    /// the JCS of this metadata without `signature`.
    pub signature: String,
}

impl ChunkMeta {
    /// The bytes the signature covers.
    pub fn signed_bytes(&self) -> Result<Vec<u8>, SchemaError> {
        signed_bytes_of(CHUNK_SIGNATURE_CONTEXT, self)
    }
}

/// One chunk: its metadata and its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub meta: ChunkMeta,
    pub data: Vec<u8>,
}

impl Chunk {
    /// Signs `cut`, a piece of the stream `manifest` announces, with the
    /// manifest's key.
    pub fn sign(
        manifest: &BlockManifest,
        cut: CutChunk,
        key: &SigningKey,
    ) -> Result<Self, SchemaError> {
        let mut meta = ChunkMeta {
            attempt: manifest.stream.attempt,
            chain: manifest.chain.clone(),
            height: manifest.height,
            index: cut.index,
            last: cut.last,
            sha256: ChunkHash(Digest::of(&cut.data)),
            signature: String::new(),
        };
        meta.signature = hex_encode(&key.sign_bytes(&meta.signed_bytes()?));
        Ok(Chunk {
            meta,
            data: cut.data,
        })
    }

    /// Checks that this chunk is chunk `index` of the stream `manifest`
    /// (already verified) announces: its bytes hash to its `sha256`, its
    /// metadata is signed by the manifest's key, its chain, height and
    /// attempt are the manifest's, and it is `chunk_size` long (at most,
    /// for the last). A chunk that passes may go to `btrfs receive` before
    /// the rest of its stream exists.
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
            || m.attempt != manifest.stream.attempt
        {
            return Err(refuse(
                "its chain, height or stream attempt is not its manifest's".into(),
            ));
        }
        let size = self.data.len() as u64;
        let chunk_size = u64::from(manifest.stream.chunk_size);
        if size > chunk_size || (!m.last && size != chunk_size) {
            return Err(refuse(format!(
                "it holds {size} bytes, the manifest's chunks hold {chunk_size}"
            )));
        }
        if !signature_verifies(&manifest.key, &m.signed_bytes()?, &m.signature) {
            return Err(refuse("its signature is not the manifest's key's".into()));
        }
        Ok(())
    }

    /// Checks the bytes against the chunk's own hash.
    pub fn check(&self) -> Result<(), SchemaError> {
        let actual = ChunkHash(Digest::of(&self.data));
        if actual != self.meta.sha256 {
            return Err(SchemaError::ChunkHashMismatch {
                index: self.meta.index,
                expected: self.meta.sha256,
                actual,
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

    fn stream(attempt: u8) -> StreamInfo {
        StreamInfo::zstd(StreamAttempt::from_bytes([attempt; 16]), 100)
    }

    fn key(n: u8) -> SigningKey {
        SigningKey::from_seed([n; 32])
    }

    /// `bytes` cut into 100-byte chunks, each signed under `m`.
    fn chunks_of(m: &BlockManifest, bytes: &[u8], signer: &SigningKey) -> Vec<Chunk> {
        StreamCutter::cut(bytes, m.stream.chunk_size)
            .into_iter()
            .map(|c| Chunk::sign(m, c, signer).unwrap())
            .collect()
    }

    #[test]
    fn signed_manifest_verifies_and_round_trips_through_a_frame() {
        let m = BlockManifest::sign(&header(), Some(2), stream(1), &key(1)).unwrap();
        assert_eq!(m.verify(&[key(1).public()]).unwrap(), header());
        let Frame::Manifest(back) = decode_frame(&m.to_frame().unwrap()).unwrap() else {
            panic!("not a manifest")
        };
        assert_eq!(back, m);
        assert!(back.verify(&[key(1).public()]).is_ok());
    }

    #[test]
    fn untrusted_key_and_any_changed_member_are_refused() {
        let m = BlockManifest::sign(&header(), Some(2), stream(1), &key(1)).unwrap();
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
        other.stream.attempt = StreamAttempt::from_bytes([2; 16]);
        assert!(other.verify(&[key(1).public()]).is_err());
        let mut other = m.clone();
        other.header["event_count"] = 1.into();
        assert!(other.verify(&[key(1).public()]).is_err());
        // A key swapped in with a signature of its own is still untrusted.
        let forged = BlockManifest::sign(&header(), Some(2), stream(1), &key(9)).unwrap();
        assert!(forged.verify(&[key(1).public()]).is_err());
    }

    #[test]
    fn chunk_frames_round_trip_and_catch_changed_bytes() {
        let m = BlockManifest::sign(&header(), None, stream(1), &key(1)).unwrap();
        let chunk = chunks_of(&m, &[7; 250], &key(1)).remove(2);
        assert!(chunk.meta.last);
        let frame = chunk.to_frame().unwrap();
        let Frame::Chunk(back) = decode_frame(&frame).unwrap() else {
            panic!("not a chunk")
        };
        assert_eq!(back, chunk);
        back.authenticate(&m).unwrap();
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
    }

    #[test]
    fn every_chunk_authenticates_against_its_signed_manifest_alone() {
        let bytes: Vec<u8> = (0..1234u32).map(|i| (i * 7 % 251) as u8).collect();
        let m = BlockManifest::sign(&header(), Some(2), stream(1), &key(1)).unwrap();
        let chunks = chunks_of(&m, &bytes, &key(1));
        assert_eq!(chunks.len(), 13);
        assert_eq!(chunks.iter().filter(|c| c.meta.last).count(), 1);
        assert!(chunks[12].meta.last);
        for c in &chunks {
            c.authenticate(&m).unwrap();
            // Through a frame and back, too.
            let Frame::Chunk(back) = decode_frame(&c.to_frame().unwrap()).unwrap() else {
                panic!("not a chunk")
            };
            back.authenticate(&m).unwrap();
        }
        let empty = chunks_of(&m, b"", &key(1));
        assert_eq!(empty.len(), 1);
        assert!(empty[0].meta.last && empty[0].data.is_empty());
        empty[0].authenticate(&m).unwrap();
    }

    #[test]
    fn a_chunk_of_another_stream_place_or_signer_is_refused() {
        let bytes: Vec<u8> = (0..1000u32).map(|i| (i % 256) as u8).collect();
        let m = BlockManifest::sign(&header(), Some(2), stream(1), &key(1)).unwrap();
        let chunks = chunks_of(&m, &bytes, &key(1));
        let not_in = |c: &Chunk, m: &BlockManifest| {
            matches!(c.authenticate(m), Err(SchemaError::ChunkNotInStream { .. }))
        };
        // Moved to another index, or made the last.
        let mut moved = chunks[3].clone();
        moved.meta.index = 4;
        assert!(not_in(&moved, &m));
        let mut ended = chunks[3].clone();
        ended.meta.last = true;
        assert!(not_in(&ended, &m));
        // Another chunk's bytes with their own correct hash, under this
        // chunk's signature.
        let mut swapped = chunks[3].clone();
        swapped.data = chunks[4].data.clone();
        swapped.meta.sha256 = chunks[4].meta.sha256;
        assert!(not_in(&swapped, &m));
        // A chunk of another attempt at the same block, signed by the
        // same key, under this attempt's manifest.
        let other = BlockManifest::sign(&header(), Some(2), stream(2), &key(1)).unwrap();
        let foreign = chunks_of(&other, &bytes, &key(1)).remove(3);
        assert!(not_in(&foreign, &m));
        // Signed by another key.
        let forged = chunks_of(&m, &bytes, &key(9)).remove(3);
        assert!(not_in(&forged, &m));
        // Shorter than the manifest's chunk size, and not the last.
        let mut short = chunks[3].clone();
        short.data.truncate(50);
        short.meta.sha256 = ChunkHash(Digest::of(&short.data));
        assert!(not_in(&short, &m));
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
        let m = BlockManifest::sign(&header(), None, stream(1), &key(1)).unwrap();
        for version in [1u64, 2] {
            let mut v = serde_json::to_value(&m).unwrap();
            v["version"] = version.into();
            v["stream"].as_object_mut().unwrap().remove("attempt");
            let frame = encode_frame(FrameKind::Manifest, &jcs::canonical(&v).unwrap(), &[]);
            assert!(matches!(
                decode_frame(&frame),
                Err(SchemaError::UnsupportedVersion {
                    what: "manifest",
                    version: v
                }) if v == version
            ));
        }
    }

    proptest::proptest! {
        /// However a stream is written in pieces, it is cut into the
        /// pieces of the whole, the last one marked.
        #[test]
        fn cutting_in_pieces_is_cutting_the_whole(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..700),
            cuts in proptest::collection::vec(0usize..700, 0..8),
            chunk_size in 1u32..130,
        ) {
            let mut cutter = StreamCutter::new(chunk_size);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut at = 0;
            let mut pieces = Vec::new();
            for c in cuts.into_iter().chain([bytes.len()]) {
                pieces.extend(cutter.update(&bytes[at..c]));
                at = c;
            }
            let (last, whole) = cutter.finish();
            pieces.push(last);
            proptest::prop_assert_eq!(whole.bytes, bytes.len() as u64);
            let expected: Vec<&[u8]> = if bytes.is_empty() {
                vec![&[]]
            } else {
                bytes.chunks(chunk_size as usize).collect()
            };
            proptest::prop_assert_eq!(whole.chunks as usize, expected.len());
            proptest::prop_assert_eq!(pieces.len(), expected.len());
            for (i, (piece, want)) in pieces.iter().zip(&expected).enumerate() {
                proptest::prop_assert_eq!(piece.index as usize, i);
                proptest::prop_assert_eq!(piece.last, i + 1 == expected.len());
                proptest::prop_assert_eq!(piece.data.as_slice(), *want);
            }
        }
    }
}
