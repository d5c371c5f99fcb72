//! `fschain verify`: re-derive everything from the snapshots.
//!
//! The newest snapshot's logs are checked in full by the pure
//! [`check_logs`]; every other snapshot must hold a byte-exact prefix of
//! them (and is checked in full on its own when it does not, to name the
//! fault), must be read-only, and its state files must hash to its block's
//! state root. The layer must match the head block.

use std::collections::HashMap;

use fschain_schema::verify::{check_logs, state_root_of, ElementTip, LogCheck, Problem};
use fschain_schema::{ElementId, StateHash};
use serde::Serialize;

use crate::layout::{ChainMeta, RootLayout, CHAIN_FILE};
use crate::{btrfs, ChainDir, StoreError};

/// Everything `verify` checked and found.
#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub chain: String,
    pub head: Option<u64>,
    pub blocks: u64,
    pub events: u64,
    pub snapshots: u64,
    /// Bytes read and checked (hashed or compared).
    pub bytes: u64,
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Verifies the root at `layout`. Fails only when it cannot run at all (not
/// a root); everything wrong with the chain is a [`Problem`] in the report.
pub fn verify_root(layout: &RootLayout) -> Result<VerifyReport, StoreError> {
    let meta = layout.read_marker()?;
    let chain = meta.chain.clone();
    let mut report = VerifyReport {
        chain: chain.to_string(),
        head: None,
        blocks: 0,
        events: 0,
        snapshots: 0,
        bytes: 0,
        problems: Vec::new(),
    };
    let heights = layout.snapshot_heights()?;
    let Some(&head) = heights.last() else {
        report.problems.push(Problem::BadSnapshot {
            place: "blocks/".into(),
            height: 0,
            message: "no snapshots at all".into(),
        });
        return Ok(report);
    };
    report.head = Some(head);
    // A site rebuilt from a checkpoint holds blocks from that one on.
    let base = crate::layout::replica_base(layout)?.unwrap_or(0);
    for h in base..=head {
        if heights.binary_search(&h).is_err() {
            report.problems.push(Problem::BadSnapshot {
                place: place(h),
                height: h,
                message: "snapshot is missing".into(),
            });
        }
    }

    // The reference copy: the newest snapshot, checked in full.
    let head_dir = ChainDir::new(layout.snapshot(head));
    let (head_headers, head_events) = match (head_dir.headers_bytes(), head_dir.events_bytes()) {
        (Ok(h), Ok(e)) => (h, e),
        (Err(e), _) | (_, Err(e)) => {
            report.problems.push(Problem::Unreadable {
                place: place(head),
                message: e.to_string(),
            });
            return Ok(report);
        }
    };
    report.bytes += (head_headers.len() + head_events.len()) as u64;
    let logs = check_logs(&place(head), &chain, &head_headers, &head_events);
    report.blocks = logs.headers.len() as u64;
    report.events = logs.events_checked;
    report.problems.extend(logs.problems.iter().cloned());
    if logs.headers.len() as u64 != head + 1 {
        report.problems.push(Problem::BadSnapshot {
            place: place(head),
            height: head,
            message: format!(
                "holds {} headers, expected {}",
                logs.headers.len(),
                head + 1
            ),
        });
    }
    check_copy(
        &mut report,
        &head_dir,
        &place(head),
        head,
        &meta,
        &logs,
        Some(&logs.tips),
        true,
    );

    // Every older snapshot.
    for &h in heights.iter().filter(|&&h| h < head) {
        let dir = ChainDir::new(layout.snapshot(h));
        let p = place(h);
        let mut own_logs = None;
        let matches_prefix = |bytes: &[u8], full: &[u8], end: Option<&usize>| {
            end.is_some_and(|&e| bytes == &full[..e.min(full.len())])
        };
        match (dir.headers_bytes(), dir.events_bytes()) {
            (Ok(hb), Ok(eb)) => {
                report.bytes += (hb.len() + eb.len()) as u64;
                let same = matches_prefix(&hb, &head_headers, logs.header_ends.get(h as usize))
                    && matches_prefix(&eb, &head_events, logs.event_ends.get(h as usize));
                if !same {
                    // Check this copy on its own so the report names the fault.
                    let own = check_logs(&p, &chain, &hb, &eb);
                    if own.problems.is_empty() {
                        report.problems.push(Problem::Diverges {
                            place: p.clone(),
                            file: "headers.log/events.log".into(),
                            message: "are valid on their own but differ from the newer snapshots"
                                .into(),
                        });
                    }
                    report.problems.extend(own.problems.iter().cloned());
                    own_logs = Some(own);
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                report.problems.push(Problem::Unreadable {
                    place: p.clone(),
                    message: e.to_string(),
                });
                continue;
            }
        }
        let own_tips = own_logs.as_ref().map(|l| &l.tips);
        check_copy(&mut report, &dir, &p, h, &meta, &logs, own_tips, true);
    }

    // The layer, when this root has one (a producer's), equals the head.
    let layer = layout.layer();
    if layer.exists() {
        let dir = ChainDir::new(&layer);
        match (dir.headers_bytes(), dir.events_bytes()) {
            (Ok(hb), Ok(eb)) => {
                report.bytes += (hb.len() + eb.len()) as u64;
                if hb != head_headers || eb != head_events {
                    let own = check_logs("layer", &chain, &hb, &eb);
                    report.problems.extend(own.problems.iter().cloned());
                    report.problems.push(Problem::Diverges {
                        place: "layer".into(),
                        file: "headers.log/events.log".into(),
                        message: format!("differ from block {head}'s snapshot"),
                    });
                }
            }
            (Err(e), _) | (_, Err(e)) => report.problems.push(Problem::Unreadable {
                place: "layer".into(),
                message: e.to_string(),
            }),
        }
        check_copy(
            &mut report,
            &dir,
            "layer",
            head,
            &meta,
            &logs,
            Some(&logs.tips),
            false,
        );
    }
    Ok(report)
}

fn place(height: u64) -> String {
    format!("block {height} snapshot")
}

/// Checks one copy's CHAIN file, read-only flag and state files against the
/// header of block `height`. `tips`, when known for exactly this height,
/// lets a mismatch name the element at fault.
#[allow(clippy::too_many_arguments)]
fn check_copy(
    report: &mut VerifyReport,
    dir: &ChainDir,
    place: &str,
    height: u64,
    meta: &ChainMeta,
    logs: &LogCheck,
    tips: Option<&HashMap<ElementId, ElementTip>>,
    must_be_readonly: bool,
) {
    report.snapshots += 1;
    match dir.meta() {
        Ok(m) if &m == meta => {}
        Ok(m) => report.problems.push(Problem::Diverges {
            place: place.into(),
            file: CHAIN_FILE.into(),
            message: format!("names chain {}, the root names {}", m.chain, meta.chain),
        }),
        Err(e) => report.problems.push(Problem::Unreadable {
            place: place.into(),
            message: e.to_string(),
        }),
    }
    if must_be_readonly {
        match btrfs::is_readonly(dir.path()) {
            Ok(true) => {}
            Ok(false) => report.problems.push(Problem::BadSnapshot {
                place: place.into(),
                height,
                message: "is writable; every block snapshot must be read-only".into(),
            }),
            Err(e) => report.problems.push(Problem::BadSnapshot {
                place: place.into(),
                height,
                message: e.to_string(),
            }),
        }
    }
    let scan = dir.state_hashes(place);
    report.bytes += scan.bytes;
    report.problems.extend(scan.problems);
    let Some(header) = logs.headers.get(height as usize) else {
        return;
    };
    let root = state_root_of(scan.states.iter().cloned());
    if root == header.state_root {
        return;
    }
    report.problems.push(Problem::StateRootMismatch {
        place: place.into(),
        height,
        expected: header.state_root,
        actual: root,
    });
    // Name the elements at fault: replay this copy's own logs when the
    // states expected at this height are not known yet.
    let own;
    let tips = match tips {
        Some(t) => t,
        None => match (dir.headers_bytes(), dir.events_bytes()) {
            (Ok(hb), Ok(eb)) => {
                own = check_logs(place, &meta.chain, &hb, &eb);
                &own.tips
            }
            _ => return,
        },
    };
    {
        let found: HashMap<&ElementId, &StateHash> =
            scan.states.iter().map(|(e, s)| (e, s)).collect();
        for (element, tip) in tips {
            let actual = found.get(element).map(|s| **s);
            if actual != tip.state_hash {
                report.problems.push(Problem::StateFileMismatch {
                    place: place.into(),
                    element: element.to_string(),
                    expected: tip.state_hash,
                    actual,
                });
            }
        }
        for (element, state) in &scan.states {
            if !tips.contains_key(element) {
                report.problems.push(Problem::StateFileMismatch {
                    place: place.into(),
                    element: element.to_string(),
                    expected: None,
                    actual: Some(*state),
                });
            }
        }
    }
}

/// Verifies a snapshot a site has just received (at `dir`, still under its
/// staging name) as block `height` of the chain at `layout`, against the
/// header the producer signed: the same checks `verify` makes of a
/// snapshot. Its logs are checked in full; they must extend the logs of the
/// site's previous block byte for byte; its state files must hash to the
/// header's state root; it must be read-only. Returns the problems found.
pub fn verify_received(
    layout: &RootLayout,
    dir: &ChainDir,
    expected: &fschain_schema::BlockHeader,
) -> Result<Vec<Problem>, StoreError> {
    let height = expected.height;
    let p = format!("received block {height}");
    let meta = ChainMeta::new(expected.chain.clone());
    let mut report = VerifyReport {
        chain: meta.chain.to_string(),
        head: Some(height),
        blocks: 0,
        events: 0,
        snapshots: 0,
        bytes: 0,
        problems: Vec::new(),
    };
    let (hb, eb) = match (dir.headers_bytes(), dir.events_bytes()) {
        (Ok(h), Ok(e)) => (h, e),
        (Err(e), _) | (_, Err(e)) => {
            report.problems.push(Problem::Unreadable {
                place: p,
                message: e.to_string(),
            });
            return Ok(report.problems);
        }
    };
    let logs = check_logs(&p, &meta.chain, &hb, &eb);
    report.problems.extend(logs.problems.iter().cloned());
    match logs.headers.get(height as usize) {
        Some(h) if h == expected && logs.headers.len() as u64 == height + 1 => {}
        _ => report.problems.push(Problem::BadSnapshot {
            place: p.clone(),
            height,
            message: format!(
                "does not end with the signed header of block {height} ({})",
                expected.hash
            ),
        }),
    }
    // The previous block the site holds must be a prefix of this one.
    let previous = layout
        .snapshot_heights()?
        .into_iter()
        .filter(|&h| h < height)
        .max();
    if let Some(prev) = previous {
        let prev_dir = ChainDir::new(layout.snapshot(prev));
        let same = match (prev_dir.headers_bytes(), prev_dir.events_bytes()) {
            (Ok(ph), Ok(pe)) => {
                let end_h = logs.header_ends.get(prev as usize);
                let end_e = logs.event_ends.get(prev as usize);
                end_h.is_some_and(|&e| hb.get(..e) == Some(&ph[..]))
                    && end_e.is_some_and(|&e| eb.get(..e) == Some(&pe[..]))
            }
            _ => false,
        };
        if !same {
            report.problems.push(Problem::Diverges {
                place: p.clone(),
                file: "headers.log/events.log".into(),
                message: format!("do not extend the logs of block {prev}, which this site holds"),
            });
        }
    }
    check_copy(
        &mut report,
        dir,
        &p,
        height,
        &meta,
        &logs,
        Some(&logs.tips),
        true,
    );
    Ok(report.problems)
}
