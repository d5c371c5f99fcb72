//! What each fuzz target asserts of one input. The fuzz targets call these
//! (`fuzz/fuzz_targets/`), and `tests/fuzz_regressions.rs` runs every
//! input kept in `fuzz/corpus/` and `fuzz/regressions/` through them, so a
//! crash once found stays fixed without a fuzzer in CI.
//!
//! Each function takes untrusted bytes. The decoders must never panic on
//! them; what they accept must survive a round trip (the property that
//! would catch two readers disagreeing on the same bytes).

use std::sync::OnceLock;

use fschain_schema::wire::{
    decode_frame, frame_kind, BlockManifest, Chunk, ChunkMeta, Frame, SigningKey, StreamAttempt,
    StreamCutter, StreamInfo,
};
use fschain_schema::{jcs, BlockHeader, ChainName, EventLine, HeaderDraft, Operation, Timestamp};
use fschain_store::send_stream;

/// What a target asserts of one input; it panics when that does not hold.
pub type Check = fn(&[u8]);

/// The targets, by name: the name of the corpus folder and of the
/// `cargo fuzz` target.
pub const TARGETS: [(&str, Check); 7] = [
    ("frame", frame),
    ("manifest", manifest),
    ("chunk_meta", chunk_meta),
    ("operation_line", operation_line),
    ("canonical_json", canonical_json),
    ("send_stream_header", send_stream_header),
    ("signed_note", signed_note),
];

/// A Kafka message value read as a frame: whatever decodes re-encodes to
/// a frame that decodes to the same thing.
pub fn frame(data: &[u8]) {
    let Ok(decoded) = decode_frame(data) else {
        return;
    };
    assert!(
        frame_kind(data).is_some(),
        "decoded a frame of no known kind"
    );
    match &decoded {
        Frame::Manifest(m) => {
            manifest_checks(m);
            let again = m.to_frame().expect("a decoded manifest re-encodes");
            assert_eq!(decode_frame(&again).ok().as_ref(), Some(&decoded));
        }
        Frame::Chunk(c) => {
            let _ = c.check();
            let _ = c.authenticate(&signed_sample().0);
            let again = c.to_frame().expect("a decoded chunk re-encodes");
            assert_eq!(decode_frame(&again).ok().as_ref(), Some(&decoded));
        }
    }
}

/// A manifest's metadata, as a frame carries it.
pub fn manifest(data: &[u8]) {
    if let Ok(m) = serde_json::from_slice::<BlockManifest>(data) {
        manifest_checks(&m);
    }
}

fn manifest_checks(m: &BlockManifest) {
    let (_, key) = signed_sample();
    let header = m.block_header();
    if let Ok(verified) = m.verify(&[key.public()]) {
        // Only the sample's own signature can verify; then the header is
        // the one it signed.
        assert_eq!(Some(&verified), header.as_ref().ok());
    }
    let _ = m.signed_bytes();
}

/// A chunk's metadata, checked with the input's tail as its bytes and
/// authenticated against a real signed manifest.
pub fn chunk_meta(data: &[u8]) {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let Ok(meta) = serde_json::from_slice::<ChunkMeta>(&data[..split]) else {
        return;
    };
    let chunk = Chunk {
        meta,
        data: data.get(split + 1..).unwrap_or_default().to_vec(),
    };
    let checked = chunk.check();
    let (sample, _) = signed_sample();
    if chunk.authenticate(sample).is_ok() {
        assert!(
            checked.is_ok(),
            "authenticated a chunk that fails its check"
        );
        let bytes = sample_stream();
        let start = chunk.meta.index as usize * SAMPLE_CHUNK as usize;
        assert_eq!(
            chunk.data,
            bytes[start..start + chunk.data.len()],
            "a chunk authenticated with bytes the producer never sent"
        );
    }
}

/// An operation as a line on the ops topic, and an event line as the
/// events log holds it.
pub fn operation_line(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(mut op) = Operation::from_json(text) {
            let again = Operation::from_value(op.to_value()).expect("an operation re-reads");
            assert_eq!(again.to_value(), op.to_value());
            // A signature no allowed key made never checks.
            let policy = fschain_schema::sshsig::SignaturePolicy {
                allowed: Some(fschain_schema::sshsig::AllowedSigners::default()),
                require: false,
            };
            if op.signature.is_some() {
                assert!(policy
                    .check(&mut op, fschain_schema::Timestamp::from_micros(0))
                    .is_err());
            }
            let _ = op.apply_to(None);
            let _ = op.to_event_value();
        }
    }
    if let Some(line) = EventLine::read(data) {
        let _ = line;
        assert!(
            jcs::is_canonical(data),
            "read an event line that is not canonical"
        );
    }
}

/// The canonical JSON reader agrees with parsing and re-encoding.
pub fn canonical_json(data: &[u8]) {
    let parsed = serde_json::from_slice::<serde_json::Value>(data);
    if jcs::is_canonical(data) {
        let value = parsed.expect("what is canonical parses");
        let encoded = jcs::canonical(&value).expect("what parses encodes");
        assert_eq!(encoded, data, "is_canonical accepted a non-canonical form");
    } else if let Ok(value) = parsed {
        if let Ok(encoded) = jcs::canonical(&value) {
            if depth(&value) < 60 {
                assert!(
                    jcs::is_canonical(&encoded),
                    "the canonical form is not read as canonical"
                );
            }
        }
    }
}

fn depth(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// The head of a `btrfs send` stream, renamed as a site renames it: the
/// result reads back with the new name and the same kind.
pub fn send_stream_header(data: &[u8]) {
    let Ok(end) = send_stream::first_command_end(data) else {
        return;
    };
    let Some(head) = data.get(..end) else {
        return;
    };
    let Ok((_, incremental)) = send_stream::subvolume_name(head) else {
        return;
    };
    let renamed =
        send_stream::rename_first_subvolume(head, ".staging-7").expect("a head that reads renames");
    assert_eq!(
        send_stream::first_command_end(&renamed).ok(),
        Some(renamed.len())
    );
    let (name, again) = send_stream::subvolume_name(&renamed).expect("the renamed head reads");
    assert_eq!((name.as_str(), again), (".staging-7", incremental));
}

const SAMPLE_CHUNK: u32 = 64;

fn sample_stream() -> Vec<u8> {
    (0..300u32).map(|i| (i * 7 % 251) as u8).collect()
}

/// A real manifest, signed, for a stream in 64-byte chunks (the sample
/// stream is 300 bytes).
fn signed_sample() -> &'static (BlockManifest, SigningKey) {
    static SAMPLE: OnceLock<(BlockManifest, SigningKey)> = OnceLock::new();
    SAMPLE.get_or_init(|| {
        let key = SigningKey::from_seed([7; 32]);
        let chain: ChainName = "fuzz".parse().expect("a valid chain name");
        let header: BlockHeader = HeaderDraft {
            height: 1,
            ..HeaderDraft::genesis(chain, Timestamp::from_micros(1_700_000_000_000_000))
        }
        .seal()
        .expect("the sample header seals");
        let info = StreamInfo::zstd(StreamAttempt::from_bytes([3; 16]), SAMPLE_CHUNK);
        let manifest =
            BlockManifest::sign(&header, None, info, &key).expect("the sample manifest signs");
        (manifest, key)
    })
}

/// The sample's signed manifest.
pub fn sample_manifest() -> &'static BlockManifest {
    &signed_sample().0
}

/// Every chunk of the sample stream, as frames: seeds for the corpus.
pub fn sample_frames() -> Vec<Vec<u8>> {
    let (manifest, key) = signed_sample();
    let cut = StreamCutter::cut(&sample_stream(), SAMPLE_CHUNK);
    let mut frames = vec![manifest.to_frame().expect("the sample manifest frames")];
    for piece in cut {
        let chunk = Chunk::sign(manifest, piece, key).expect("a sample chunk signs");
        frames.push(chunk.to_frame().expect("a sample chunk frames"));
    }
    frames
}

/// A signed note, checkpoint, verifier key or tlog-proof as `check-proof`
/// reads them: what parses writes back to the same text, and only the
/// sample key's own signature opens a checkpoint.
pub fn signed_note(data: &[u8]) {
    use fschain_schema::note::{Checkpoint, Note, TlogProof, Verifier};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(allowed) = fschain_schema::sshsig::AllowedSigners::parse(text) {
        assert!(allowed.len() <= text.lines().count());
    }
    if let Ok(w) = fschain_schema::note::Witness::parse(text) {
        let again = fschain_schema::note::Witness::parse(&w.to_vkey());
        assert_eq!(again.ok(), Some(w), "a witness key reads back differently");
    }
    if let Ok(v) = Verifier::parse(text) {
        assert_eq!(
            v.to_vkey(),
            text.trim(),
            "a verifier key reads back differently"
        );
    }
    if let Ok(note) = Note::parse(text) {
        let mut again = format!("{}\n", note.body);
        for sig in &note.signatures {
            let mut raw = sig.key_id.to_vec();
            raw.extend_from_slice(&sig.signature);
            again.push_str(&format!("\u{2014} {} {}\n", sig.name, base64_of(&raw)));
        }
        assert_eq!(again, text, "a note reads back differently");
        let witness = fschain_schema::note::Witness::new("fuzz.example/site/a", sample_log().key)
            .expect("a valid witness name");
        let _ = witness.cosigned(&note);
        if let Ok(cp) = Checkpoint::parse_body(&note.body) {
            if note.body.lines().count() == 3 {
                assert_eq!(
                    cp.body(),
                    note.body,
                    "a checkpoint body reads back differently"
                );
            }
        }
    }
    let log = sample_log();
    if let Ok(cp) = Checkpoint::open(text, &log) {
        assert_eq!(cp.origin, log.name);
    }
    if let Ok(proof) = TlogProof::parse(text) {
        let again = fschain_schema::note::tlog_proof(
            &proof.extra,
            proof.index,
            &proof.path,
            &proof.checkpoint,
        );
        let _ = Checkpoint::open(&proof.checkpoint, &log);
        assert_eq!(
            TlogProof::parse(&again).ok(),
            Some(proof),
            "a tlog-proof reads back differently"
        );
    }
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The verifier of the sample key, named as the sample checkpoints' origin.
pub fn sample_log() -> fschain_schema::note::Verifier {
    fschain_schema::note::Verifier::new("fuzz.example/log", signed_sample().1.public())
        .expect("a valid key name")
}

/// A signed checkpoint, a tlog-proof and the verifier key, by the sample key.
pub fn sample_notes() -> Vec<Vec<u8>> {
    use fschain_schema::note::{tlog_proof, Checkpoint};
    let log = sample_log();
    let checkpoint = Checkpoint {
        origin: log.name.clone(),
        size: 5,
        root: fschain_schema::Digest::of_parts(&[b"fuzz"]),
    }
    .sign(&signed_sample().1)
    .expect("the sample checkpoint signs");
    let path = [
        fschain_schema::Digest::of_parts(&[b"a"]),
        fschain_schema::Digest::of_parts(&[b"b"]),
    ];
    vec![
        checkpoint.clone().into_bytes(),
        tlog_proof(b"{}", 3, &path, &checkpoint).into_bytes(),
        log.to_vkey().into_bytes(),
    ]
}
