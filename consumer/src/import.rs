//! `fschain import`: the frames `fschain export` wrote (the same manifests
//! and chunks as on the blocks topic), read from a file or a pipe and taken
//! in with the same checks as from Kafka.

use std::io::Read;

use fschain_schema::wire::{frame_meta_len, MAX_CHUNK_LEN};
use fschain_schema::SchemaError;

use crate::ingest::{Ingest, Origin};
use crate::ConsumerError;

/// Reads frames until the end of `input`; returns how many were read.
pub fn import(ingest: &mut Ingest, input: &mut dyn Read, name: &str) -> Result<u64, ConsumerError> {
    let mut count = 0u64;
    loop {
        let mut head = [0u8; 9];
        match read_full(input, &mut head)? {
            0 => break,
            9 => {}
            n => {
                return Err(ConsumerError::Schema(SchemaError::BadFrame {
                    why: format!("input ends {n} bytes into frame {count}"),
                }))
            }
        }
        let meta_len = frame_meta_len(&head)?;
        let mut frame = head.to_vec();
        frame.resize(9 + meta_len + 4, 0);
        read_exact(input, &mut frame[9..], count)?;
        let p = &frame[9 + meta_len..];
        let payload_len = u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
        if payload_len > MAX_CHUNK_LEN {
            return Err(ConsumerError::Schema(SchemaError::BadFrame {
                why: format!("frame {count}: payload of {payload_len} bytes is over the limit"),
            }));
        }
        let start = frame.len();
        frame.resize(start + payload_len as usize, 0);
        read_exact(input, &mut frame[start..], count)?;
        let origin = Origin {
            topic: name,
            partition: 0,
            offset: count as i64,
        };
        ingest.frame(&frame, None, &origin)?;
        count += 1;
    }
    ingest.settle()?;
    ingest.settle_index();
    // A stream that ends inside a block (a broken `export | ssh ... import`
    // pipe, a file cut short at a frame boundary) is no success.
    if let Some((chain, cut)) = ingest.incomplete_streams().into_iter().next() {
        return Err(ConsumerError::Truncated {
            chain,
            height: cut.height,
            chunks: cut.chunks,
            of: cut.of,
            manifest: cut.manifest,
        });
    }
    Ok(count)
}

fn read_full(input: &mut dyn Read, buf: &mut [u8]) -> Result<usize, ConsumerError> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ConsumerError::Input(e)),
        }
    }
    Ok(got)
}

fn read_exact(input: &mut dyn Read, buf: &mut [u8], frame: u64) -> Result<(), ConsumerError> {
    if read_full(input, buf)? != buf.len() {
        return Err(ConsumerError::Schema(SchemaError::BadFrame {
            why: format!("input ends inside frame {frame} (truncated stream)"),
        }));
    }
    Ok(())
}
