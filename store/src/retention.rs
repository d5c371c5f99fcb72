//! Retention: which block snapshots a chain keeps, by a btrbk/sanoid-style
//! policy, and pruning the others.
//!
//! The choice is a pure function ([`plan`]) of the snapshots' heights and
//! seal times, the policy, and the heights the caller must keep whatever
//! the policy says (the head, the newest checkpoint, what a publish or the
//! index still needs). Pruning a height deletes its snapshot only: its
//! header and events stay in every newer snapshot's logs, so the chain
//! stays verifiable, and its states can be rebuilt from the newest
//! retained snapshot before it plus the events after.
//!
//! Architecture Invariant: a height is recorded in `meta/pruned` before its
//! snapshot is deleted, so a snapshot that is missing and not recorded
//! there is damage, never retention.

use std::collections::{BTreeMap, BTreeSet};

use fschain_schema::Timestamp;
use serde::{Deserialize, Serialize};

use crate::layout::{write_atomic, RootLayout};
use crate::{btrfs, StoreError};

/// How many snapshots to keep: the newest `last`, and the newest of each of
/// the newest `hourly` hours (days, ISO weeks, months: UTC) that have one.
/// A snapshot kept by any rule is kept.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionPolicy {
    pub keep_last: u32,
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
}

impl RetentionPolicy {
    /// No rule at all: a policy that would keep only the protected
    /// snapshots, which is never what an operator meant.
    pub fn is_empty(&self) -> bool {
        *self == RetentionPolicy::default()
    }
}

/// Why a snapshot is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeepReason {
    /// The newest block: the parent of the next one.
    Head,
    /// The newest block whose stream is full: where a replay starts.
    Checkpoint,
    /// Not yet published, or the parent of a block not yet published.
    Unpublished,
    /// Not yet in the event index.
    Unindexed,
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
}

/// A snapshot the plan decides about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotAt {
    pub height: u64,
    /// When its block was sealed.
    pub sealed: Timestamp,
}

/// What [`plan`] decided: every snapshot is in exactly one of the two.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PrunePlan {
    pub keep: BTreeMap<u64, Vec<KeepReason>>,
    pub prune: Vec<u64>,
}

/// Decides which of `snapshots` to keep under `policy`, never pruning a
/// height in `protected`. Time buckets are UTC; heights order the
/// snapshots (a clock that went backwards does not reorder them).
pub fn plan(
    snapshots: &[SnapshotAt],
    policy: &RetentionPolicy,
    protected: &BTreeMap<u64, KeepReason>,
) -> PrunePlan {
    let mut newest_first: Vec<SnapshotAt> = snapshots.to_vec();
    newest_first.sort_by_key(|s| std::cmp::Reverse(s.height));
    newest_first.dedup_by_key(|s| s.height);
    let mut keep: BTreeMap<u64, Vec<KeepReason>> = BTreeMap::new();
    for (&height, &reason) in protected {
        if newest_first.iter().any(|s| s.height == height) {
            keep.entry(height).or_default().push(reason);
        }
    }
    for s in newest_first.iter().take(policy.keep_last as usize) {
        keep.entry(s.height).or_default().push(KeepReason::Last);
    }
    let rules: [(u32, KeepReason, Bucket); 4] = [
        (policy.keep_hourly, KeepReason::Hourly, hour_of),
        (policy.keep_daily, KeepReason::Daily, day_of),
        (policy.keep_weekly, KeepReason::Weekly, week_of),
        (policy.keep_monthly, KeepReason::Monthly, month_of),
    ];
    for (count, reason, bucket) in rules {
        let mut seen = BTreeSet::new();
        for s in &newest_first {
            if seen.len() >= count as usize {
                break;
            }
            // Newest first: the first snapshot met in a bucket is its newest.
            if seen.insert(bucket(s.sealed)) {
                keep.entry(s.height).or_default().push(reason);
            }
        }
    }
    let prune = newest_first
        .iter()
        .rev()
        .map(|s| s.height)
        .filter(|h| !keep.contains_key(h))
        .collect();
    PrunePlan { keep, prune }
}

/// The time bucket (hour, day, ...) a seal time falls in.
type Bucket = fn(Timestamp) -> i64;

const HOUR_MICROS: i64 = 3_600_000_000;
const DAY_MICROS: i64 = 24 * HOUR_MICROS;

fn hour_of(t: Timestamp) -> i64 {
    t.as_micros().div_euclid(HOUR_MICROS)
}

fn day_of(t: Timestamp) -> i64 {
    t.as_micros().div_euclid(DAY_MICROS)
}

/// ISO weeks start on Monday; 1970-01-01 was a Thursday.
fn week_of(t: Timestamp) -> i64 {
    (day_of(t) + 3).div_euclid(7)
}

/// Months since 0000-03 (the civil-from-days algorithm of H. Hinnant).
fn month_of(t: Timestamp) -> i64 {
    let z = day_of(t) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    year * 12 + month - 1
}

/// How [`prune_root`] runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct PruneOptions {
    /// Decide, delete nothing.
    pub dry_run: bool,
    /// The chain is never published: blocks not yet sent are not kept for
    /// it (a later publish of a pruned block fails, naming it).
    pub unpublished_ok: bool,
}

/// What [`prune_root`] found and did.
#[derive(Clone, Debug, Serialize)]
pub struct PruneOutcome {
    pub plan: PrunePlan,
    /// Snapshots deleted (0 on a dry run).
    pub deleted: usize,
    pub dry_run: bool,
}

/// The heights of `layout`'s snapshots that no policy may prune, and why:
/// the head; the newest block whose stream was full (its manifest has no
/// parent); on a producer, every block from the last published one on (the
/// blocks still to send and their parents); where an event index exists,
/// every block it has not yet indexed. `unpublished_ok` (a chain that is
/// never published) drops the producer's rule.
pub fn protected_heights(
    layout: &RootLayout,
    heights: &[u64],
    unpublished_ok: bool,
) -> Result<BTreeMap<u64, KeepReason>, StoreError> {
    let mut protected = BTreeMap::new();
    let Some(&head) = heights.last() else {
        return Ok(protected);
    };
    let keep_from = |from: u64, reason: KeepReason, protected: &mut BTreeMap<u64, KeepReason>| {
        for &h in heights.iter().filter(|&&h| h >= from) {
            protected.entry(h).or_insert(reason);
        }
    };
    protected.insert(head, KeepReason::Head);
    for &h in heights.iter().rev() {
        let path = layout.manifest(h);
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let manifest: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path: path.clone(),
                why: e.to_string(),
            })?;
        if manifest
            .get("parent")
            .is_none_or(serde_json::Value::is_null)
        {
            protected.entry(h).or_insert(KeepReason::Checkpoint);
            break;
        }
    }
    if !layout.replica().exists() && !unpublished_ok {
        let from = crate::layout::published_height(layout)?.unwrap_or(0);
        keep_from(from, KeepReason::Unpublished, &mut protected);
    }
    let index = layout.index_dir().join("index.json");
    if index.exists() {
        let bytes = std::fs::read(&index).map_err(|e| StoreError::io(&index, e))?;
        let manifest: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path: index.clone(),
                why: e.to_string(),
            })?;
        let from = manifest
            .get("indexed_height")
            .and_then(serde_json::Value::as_u64)
            .map_or(0, |h| h + 1);
        keep_from(from, KeepReason::Unindexed, &mut protected);
    }
    Ok(protected)
}

/// Plans the root's retention under `policy` and, unless `dry_run`, prunes.
/// The caller holds the root's lock.
pub fn prune_root(
    layout: &RootLayout,
    policy: &RetentionPolicy,
    options: PruneOptions,
) -> Result<PruneOutcome, StoreError> {
    let PruneOptions {
        dry_run,
        unpublished_ok,
    } = options;
    let heights = layout.snapshot_heights()?;
    let Some(&head) = heights.last() else {
        return Err(StoreError::Corrupt {
            path: layout.blocks_dir(),
            why: "no block snapshots".into(),
        });
    };
    let headers = crate::ChainDir::new(layout.snapshot(head)).headers()?;
    let snapshots: Vec<SnapshotAt> = heights
        .iter()
        .filter_map(|&h| {
            headers.get(h as usize).map(|header| SnapshotAt {
                height: h,
                sealed: header.time,
            })
        })
        .collect();
    let protected = protected_heights(layout, &heights, unpublished_ok)?;
    let plan = plan(&snapshots, policy, &protected);
    let deleted = if dry_run {
        0
    } else {
        prune(layout, &plan.prune)?
    };
    Ok(PruneOutcome {
        plan,
        deleted,
        dry_run,
    })
}

/// `meta/pruned`: the heights whose snapshots retention deleted, one per
/// line, ascending.
pub fn pruned_heights(layout: &RootLayout) -> Result<BTreeSet<u64>, StoreError> {
    let path = layout.pruned();
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => return Err(StoreError::io(&path, e)),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, line)| {
            line.trim().parse::<u64>().map_err(|e| StoreError::Corrupt {
                path: path.clone(),
                why: format!("line {}: {line:?} is not a height: {e}", i + 1),
            })
        })
        .collect()
}

/// Deletes the snapshots of `heights` after recording them in
/// `meta/pruned` (see the module's invariant). Returns how many it deleted.
/// The caller holds the root's lock.
pub fn prune(layout: &RootLayout, heights: &[u64]) -> Result<usize, StoreError> {
    if heights.is_empty() {
        return Ok(0);
    }
    let mut recorded = pruned_heights(layout)?;
    recorded.extend(heights.iter().copied());
    let mut text = String::with_capacity(recorded.len() * 8);
    for h in &recorded {
        text.push_str(&h.to_string());
        text.push('\n');
    }
    std::fs::create_dir_all(layout.meta_dir())
        .map_err(|e| StoreError::io(&layout.meta_dir(), e))?;
    write_atomic(&layout.pruned(), text.as_bytes())?;
    let mut deleted = 0;
    for &h in heights {
        let path = layout.snapshot(h);
        if path.exists() {
            btrfs::delete_subvolume(&path)?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Ascending heights as ranges: `0-9, 12, 14-15`.
pub fn ranges(heights: &[u64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < heights.len() {
        let start = heights[i];
        let mut end = start;
        while i + 1 < heights.len() && heights[i + 1] == end + 1 {
            i += 1;
            end = heights[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(height: u64, micros: i64) -> SnapshotAt {
        SnapshotAt {
            height,
            sealed: Timestamp::from_micros(micros),
        }
    }

    #[test]
    fn calendar_buckets_are_utc_days_iso_weeks_and_months() {
        // 2026-12-05 (a Saturday) 09:00 UTC, and its neighbours.
        let sat = 1_796_461_200_000_000;
        assert_eq!(month_of(Timestamp::from_micros(sat)), 2026 * 12 + 11);
        let sun = sat + DAY_MICROS;
        let mon = sat + 2 * DAY_MICROS;
        assert_eq!(
            week_of(Timestamp::from_micros(sat)),
            week_of(Timestamp::from_micros(sun))
        );
        assert_ne!(
            week_of(Timestamp::from_micros(sun)),
            week_of(Timestamp::from_micros(mon))
        );
        let jan = 1_798_761_600_000_000; // 2027-01-01 00:00 UTC
        assert_eq!(month_of(Timestamp::from_micros(jan)), 2027 * 12);
        assert_eq!(month_of(Timestamp::from_micros(jan - 1)), 2026 * 12 + 11);
        assert_eq!(month_of(Timestamp::from_micros(0)), 1970 * 12);
    }

    #[test]
    fn heights_print_as_ranges() {
        assert_eq!(ranges(&[0, 1, 2, 5, 7, 8]), "0-2, 5, 7-8");
        assert_eq!(ranges(&[]), "");
    }

    #[test]
    fn keeps_the_newest_of_each_hour() {
        let snaps: Vec<_> = (0..10).map(|h| at(h, h as i64 * HOUR_MICROS / 4)).collect();
        let policy = RetentionPolicy {
            keep_hourly: 2,
            ..Default::default()
        };
        let plan = plan(&snaps, &policy, &BTreeMap::new());
        // Hours: 0-3 → 0, 4-7 → 1, 8-9 → 2. The newest two hours: 9 and 7.
        assert_eq!(plan.keep.keys().copied().collect::<Vec<_>>(), vec![7, 9]);
        assert_eq!(plan.prune, vec![0, 1, 2, 3, 4, 5, 6, 8]);
    }

    fn snapshots() -> impl Strategy<Value = Vec<SnapshotAt>> {
        proptest::collection::vec(0i64..3 * DAY_MICROS * 40, 0..60).prop_map(|mut gaps| {
            gaps.sort_unstable();
            gaps.iter()
                .enumerate()
                .map(|(i, &t)| at(i as u64, t))
                .collect()
        })
    }

    fn policies() -> impl Strategy<Value = RetentionPolicy> {
        (0u32..5, 0u32..5, 0u32..5, 0u32..3, 0u32..3).prop_map(|(l, h, d, w, m)| RetentionPolicy {
            keep_last: l,
            keep_hourly: h,
            keep_daily: d,
            keep_weekly: w,
            keep_monthly: m,
        })
    }

    proptest! {
        #[test]
        fn a_plan_keeps_what_it_must_and_is_stable(
            snaps in snapshots(),
            policy in policies(),
            protect in proptest::collection::btree_set(0u64..60, 0..4),
        ) {
            let protected: BTreeMap<u64, KeepReason> =
                protect.iter().map(|&h| (h, KeepReason::Unpublished)).collect();
            let p = plan(&snaps, &policy, &protected);
            // Every snapshot is decided exactly once.
            prop_assert_eq!(p.keep.len() + p.prune.len(), snaps.len());
            for h in &p.prune {
                prop_assert!(!p.keep.contains_key(h));
                prop_assert!(!protected.contains_key(h));
            }
            // The newest `keep_last` are kept.
            for s in snaps.iter().rev().take(policy.keep_last as usize) {
                prop_assert!(p.keep.contains_key(&s.height));
            }
            // The newest of each day that has a kept-by-daily snapshot.
            let mut days = BTreeMap::new();
            for s in &snaps {
                days.insert(day_of(s.sealed), s.height);
            }
            let newest_days: Vec<u64> = days.values().rev().take(policy.keep_daily as usize).copied().collect();
            for h in newest_days {
                prop_assert!(p.keep[&h].contains(&KeepReason::Daily));
            }
            // Planning again over what was kept prunes nothing more.
            let kept: Vec<SnapshotAt> =
                snaps.iter().filter(|s| p.keep.contains_key(&s.height)).copied().collect();
            let again = plan(&kept, &policy, &protected);
            prop_assert!(again.prune.is_empty(), "second plan pruned {:?}", again.prune);
        }
    }
}
