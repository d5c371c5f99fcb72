//! Runs every input the fuzzers keep (`fuzz/corpus/<target>/`, and each
//! crash once found in `fuzz/regressions/<target>/`) through the same
//! checks the fuzz targets make, on stable and without a fuzzer.

use std::path::Path;

#[allow(unreachable_pub, dead_code)]
#[path = "../fuzz/checks.rs"]
mod checks;

#[test]
fn every_kept_fuzz_input_passes_its_checks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut failures = Vec::new();
    for (target, check) in checks::TARGETS {
        let mut inputs = 0;
        for folder in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(folder).join(target)) else {
                continue;
            };
            for entry in entries {
                let path = entry.expect("a readable corpus folder").path();
                let bytes = std::fs::read(&path).expect("a readable corpus file");
                inputs += 1;
                if std::panic::catch_unwind(|| check(&bytes)).is_err() {
                    failures.push(path.display().to_string());
                }
            }
        }
        assert!(inputs > 0, "no kept inputs for the fuzz target {target}");
    }
    assert!(failures.is_empty(), "fuzz inputs that fail: {failures:#?}");
}

#[test]
fn a_chunk_frame_with_one_changed_byte_does_not_authenticate() {
    use fschain_schema::wire::{decode_frame, Frame};
    let manifest = checks::sample_manifest();
    let mut chunks = 0;
    for mut frame in checks::sample_frames() {
        if let Ok(Frame::Chunk(chunk)) = decode_frame(&frame) {
            chunk
                .authenticate(manifest)
                .expect("the sample chunk authenticates");
            let last = frame.len() - 1;
            frame[last] ^= 0x55;
            let Ok(Frame::Chunk(changed)) = decode_frame(&frame) else {
                panic!("a changed payload byte still frames");
            };
            assert!(changed.authenticate(manifest).is_err());
            checks::frame(&frame);
            chunks += 1;
        }
    }
    assert_eq!(chunks, 5);
}
