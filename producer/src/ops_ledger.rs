//! The agent's exactly-once bookkeeping, as a plain state machine: which
//! operations of `<prefix>.ops` are consumed, pending a seal, sealed.
//!
//! Exactly-once application without Kafka transactions: the ops offsets a
//! block consumed are persisted as *pending* (with the height the block
//! will have) before the seal, and promoted to *sealed* after it. On start,
//! a pending record whose height is now in the chain was sealed (the crash
//! came after the snapshot); otherwise the sealed record holds. Reading
//! resumes at those offsets, so no sealed operation is applied twice and
//! no consumed-but-unsealed operation is lost. The agent persists each
//! [`IngestRecord`] this hands it atomically (`meta/ingest`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Offsets after a block: partition → next offset to read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestMark {
    pub height: u64,
    pub offsets: BTreeMap<i32, i64>,
}

/// What `meta/ingest` holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestRecord {
    pub sealed: Option<IngestMark>,
    pub pending: Option<IngestMark>,
}

/// The ledger of one agent run.
#[derive(Debug, Clone)]
pub struct OpsLedger {
    record: IngestRecord,
    /// Next offset to read per partition, as consumed so far.
    offsets: BTreeMap<i32, i64>,
    /// Messages consumed since the last record was handed out.
    unrecorded: bool,
}

impl OpsLedger {
    /// The ledger after a (re)start, from the persisted record and the
    /// chain's head height.
    pub fn recover(mut record: IngestRecord, head: u64) -> Self {
        if let Some(pending) = record.pending.take() {
            if pending.height <= head {
                record.sealed = Some(pending);
            }
        }
        let offsets = record
            .sealed
            .as_ref()
            .map(|m| m.offsets.clone())
            .unwrap_or_default();
        OpsLedger {
            record,
            offsets,
            unrecorded: false,
        }
    }

    /// Where reading starts, per partition (absent: from the beginning).
    pub fn start(&self, partition: i32) -> Option<i64> {
        self.record
            .sealed
            .as_ref()
            .and_then(|m| m.offsets.get(&partition).copied())
    }

    /// The offsets consumed so far (what a commit would say).
    pub fn offsets(&self) -> &BTreeMap<i32, i64> {
        &self.offsets
    }

    /// The message at `offset` of `partition` was taken (applied or
    /// rejected: either way it is not to be read again once recorded).
    pub fn consumed(&mut self, partition: i32, offset: i64) {
        self.offsets.insert(partition, offset + 1);
        self.unrecorded = true;
    }

    /// Whether messages were consumed since the last record.
    pub fn has_unrecorded(&self) -> bool {
        self.unrecorded
    }

    /// Before sealing block `height`: the record to persist first.
    pub fn before_seal(&mut self, height: u64) -> IngestRecord {
        self.record.pending = Some(IngestMark {
            height,
            offsets: self.offsets.clone(),
        });
        self.record.clone()
    }

    /// After the seal: the record to persist.
    pub fn after_seal(&mut self) -> IngestRecord {
        if let Some(pending) = self.record.pending.take() {
            self.record.sealed = Some(pending);
        }
        self.unrecorded = false;
        self.record.clone()
    }

    /// Messages consumed since the last seal were all skipped (not ours,
    /// or rejected): the record that says they were read, at `head`.
    pub fn read_without_seal(&mut self, head: u64) -> IngestRecord {
        self.record.sealed = Some(IngestMark {
            height: head,
            offsets: self.offsets.clone(),
        });
        self.unrecorded = false;
        self.record.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What a crash leaves: the last record persisted and the chain.
    #[derive(Debug, Clone, Default)]
    struct Disk {
        record: IngestRecord,
        /// Sealed blocks: each the (partition, offset) of its operations.
        chain: Vec<Vec<(i32, i64)>>,
    }

    /// Runs an agent over `log` (per partition, a list of operations, each
    /// "ours" or not) until everything is sealed, crashing after step
    /// `crashes[k]` of its k-th run. Returns the chain.
    fn run_with_crashes(log: &[Vec<bool>], block_ops: usize, crashes: &[usize]) -> Disk {
        let mut disk = Disk::default();
        let mut crash_points = crashes.iter().copied();
        loop {
            let crash_at = crash_points.next();
            let mut steps = 0usize;
            let mut step = || {
                steps += 1;
                crash_at == Some(steps)
            };
            let head = disk.chain.len() as u64;
            let mut ledger = OpsLedger::recover(disk.record.clone(), head);
            let mut open: Vec<(i32, i64)> = Vec::new();
            let mut crashed = false;
            'run: for (p, ops) in log.iter().enumerate() {
                let p = p as i32;
                let from = ledger.start(p).unwrap_or(0);
                for (o, ours) in ops.iter().enumerate().skip(from as usize) {
                    let o = o as i64;
                    ledger.consumed(p, o);
                    if *ours {
                        open.push((p, o));
                    }
                    if step() {
                        crashed = true;
                        break 'run;
                    }
                    if open.len() >= block_ops && seal(&mut disk, &mut ledger, &mut open, &mut step)
                    {
                        crashed = true;
                        break 'run;
                    }
                }
            }
            if crashed {
                continue;
            }
            // Idle: seal what is open, or record what was only skipped.
            if !open.is_empty() {
                if seal(&mut disk, &mut ledger, &mut open, &mut step) {
                    continue;
                }
            } else if ledger.has_unrecorded() {
                disk.record = ledger.read_without_seal(disk.chain.len() as u64);
            }
            return disk;
        }
    }

    /// Persist pending, seal, persist sealed; true when it crashed.
    fn seal(
        disk: &mut Disk,
        ledger: &mut OpsLedger,
        open: &mut Vec<(i32, i64)>,
        step: &mut impl FnMut() -> bool,
    ) -> bool {
        disk.record = ledger.before_seal(disk.chain.len() as u64 + 1);
        if step() {
            return true;
        }
        disk.chain.push(std::mem::take(open));
        if step() {
            return true;
        }
        disk.record = ledger.after_seal();
        step()
    }

    proptest! {
        /// A crash after any step, then a restart, applies every
        /// operation exactly once, in each partition's order.
        #[test]
        fn every_operation_is_sealed_exactly_once_whatever_the_crashes(
            log in proptest::collection::vec(proptest::collection::vec(any::<bool>(), 0..12), 1..4),
            block_ops in 1usize..5,
            crashes in proptest::collection::vec(1usize..30, 0..8),
        ) {
            let disk = run_with_crashes(&log, block_ops, &crashes);
            let sealed: Vec<(i32, i64)> = disk.chain.concat();
            let mut want: Vec<(i32, i64)> = Vec::new();
            for (p, ops) in log.iter().enumerate() {
                for (o, ours) in ops.iter().enumerate() {
                    if *ours {
                        want.push((p as i32, o as i64));
                    }
                }
            }
            let mut got = sealed.clone();
            got.sort_unstable();
            prop_assert_eq!(&got, &want, "sealed {:?}", sealed);
            // In each partition's order.
            for p in 0..log.len() as i32 {
                let order: Vec<i64> = sealed.iter().filter(|s| s.0 == p).map(|s| s.1).collect();
                prop_assert!(order.windows(2).all(|w| w[0] < w[1]));
            }
            // A restart after the end reads nothing again.
            let again = OpsLedger::recover(disk.record.clone(), disk.chain.len() as u64);
            for (p, ops) in log.iter().enumerate() {
                prop_assert_eq!(again.start(p as i32).unwrap_or(0), ops.len() as i64);
            }
        }
    }

    #[test]
    fn a_pending_record_counts_once_its_block_is_in_the_chain() {
        let mark = |height, o| IngestMark {
            height,
            offsets: BTreeMap::from([(0, o)]),
        };
        let record = IngestRecord {
            sealed: Some(mark(3, 10)),
            pending: Some(mark(4, 20)),
        };
        assert_eq!(OpsLedger::recover(record.clone(), 3).start(0), Some(10));
        assert_eq!(OpsLedger::recover(record, 4).start(0), Some(20));
    }
}
