//! Writes the starting corpus of every target into `fuzz/corpus/<target>/`
//! from valid inputs: real frames, manifests, chunks, operations and event
//! lines, canonical JSON and a send-stream head. Run by `scripts/fuzz.sh`
//! before a target's first run; libFuzzer grows the corpus from there.

use std::path::{Path, PathBuf};

use fschain_schema::wire::{decode_frame, Frame};
use fschain_schema::{jcs, ChainName, EventDraft, Operation, Timestamp};
use fschain_store::send_stream::btrfs_crc32c;

fn main() -> std::io::Result<()> {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    let corpus = root.join("fuzz/corpus");
    let ops = std::fs::read_to_string(root.join("tests/data/ops-sample.jsonl"))?;
    let ops: Vec<&str> = ops.lines().take(40).collect();

    let frames = fschain_fuzz::sample_frames();
    write(&corpus, "frame", &frames)?;
    let mut manifests = Vec::new();
    let mut chunks = Vec::new();
    for frame in &frames {
        let meta_len = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) as usize;
        let meta = &frame[9..9 + meta_len];
        match decode_frame(frame) {
            Ok(Frame::Manifest(_)) => manifests.push(meta.to_vec()),
            Ok(Frame::Chunk(c)) => {
                let mut input = meta.to_vec();
                input.push(0);
                input.extend_from_slice(&c.data);
                chunks.push(input);
            }
            Err(_) => {}
        }
    }
    write(&corpus, "manifest", &manifests)?;
    write(&corpus, "chunk_meta", &chunks)?;

    let chain: ChainName = "host1".parse().expect("a valid chain name");
    let mut lines: Vec<Vec<u8>> = ops.iter().map(|l| l.as_bytes().to_vec()).collect();
    for (i, text) in ops.iter().take(10).enumerate() {
        let Ok(op) = Operation::from_json(text) else {
            continue;
        };
        let (_, line) = EventDraft {
            chain: chain.clone(),
            element_seq: 1,
            prev: None,
            chain_seq: i as u64 + 1,
            state_hash: None,
            op,
            time: Timestamp::from_micros(1_700_000_000_000_000),
        }
        .seal_with_line()
        .map_err(std::io::Error::other)?;
        lines.push(line);
    }
    write(&corpus, "operation_line", &lines)?;

    let mut json: Vec<Vec<u8>> = ops
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter_map(|v| jcs::canonical(&v).ok())
        .collect();
    json.extend(manifests.iter().cloned());
    for literal in [&b"[1e21,-0,0.1,\"\\u001f\",{\"a\":null}]"[..], b"1.5e-7", b"\"\xc3\xa9\""] {
        json.push(literal.to_vec());
    }
    write(&corpus, "canonical_json", &json)?;

    write(&corpus, "send_stream_header", &[send_head(1, "7"), send_head(2, "12")])?;
    write(&corpus, "signed_note", &fschain_fuzz::sample_notes())?;
    Ok(())
}

/// A stream header and a first command (1 SUBVOL or 2 SNAPSHOT) with
/// PATH, UUID and CTRANSID, as `btrfs send` writes them.
fn send_head(cmd: u16, path: &str) -> Vec<u8> {
    let mut attrs = Vec::new();
    for (ty, value) in [(15u16, path.as_bytes()), (1, &[9u8; 16][..]), (2, &7u64.to_le_bytes()[..])] {
        attrs.extend_from_slice(&ty.to_le_bytes());
        attrs.extend_from_slice(&(value.len() as u16).to_le_bytes());
        attrs.extend_from_slice(value);
    }
    let mut command = (attrs.len() as u32).to_le_bytes().to_vec();
    command.extend_from_slice(&cmd.to_le_bytes());
    command.extend_from_slice(&[0; 4]);
    command.extend_from_slice(&attrs);
    let crc = btrfs_crc32c(&command);
    command[6..10].copy_from_slice(&crc.to_le_bytes());
    let mut head = b"btrfs-stream\0".to_vec();
    head.extend_from_slice(&1u32.to_le_bytes());
    head.extend_from_slice(&command);
    head
}

fn write(corpus: &Path, target: &str, inputs: &[Vec<u8>]) -> std::io::Result<()> {
    let dir = corpus.join(target);
    std::fs::create_dir_all(&dir)?;
    for (i, input) in inputs.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:03}")), input)?;
    }
    println!("{target}: {} seeds", inputs.len());
    Ok(())
}
