//! Crash points: named steps at which a fault test makes the process die
//! as if killed (`abort`, no destructors, nothing flushed), to prove that
//! a crash at exactly that step loses nothing acknowledged.
//!
//! `FSCHAIN_CRASH_AT=<name>` dies at the first time step `<name>` is
//! reached, `<name>:<n>` at the n-th. Unset (always, outside tests) a
//! crash point costs one load of a cached `Option`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The steps a test may stop at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// The agent sealed a block and recorded it, and has not published it.
    AgentSealed,
    /// A producer handed one chunk of a block to Kafka, not the rest.
    ChunkSent,
    /// A site applied a block and has not committed its offset.
    SiteApplied,
}

impl CrashPoint {
    fn name(self) -> &'static str {
        match self {
            CrashPoint::AgentSealed => "agent-sealed",
            CrashPoint::ChunkSent => "chunk-sent",
            CrashPoint::SiteApplied => "site-applied",
        }
    }
}

fn plan() -> Option<&'static (String, u64)> {
    static PLAN: OnceLock<Option<(String, u64)>> = OnceLock::new();
    PLAN.get_or_init(|| {
        let spec = std::env::var("FSCHAIN_CRASH_AT").ok()?;
        match spec.split_once(':') {
            Some((name, n)) => Some((name.to_owned(), n.parse().ok()?)),
            None => Some((spec, 1)),
        }
    })
    .as_ref()
}

/// Dies here when `FSCHAIN_CRASH_AT` names this step (at its n-th hit).
pub fn crash_point(point: CrashPoint) {
    static HITS: AtomicU64 = AtomicU64::new(0);
    let Some((name, at)) = plan() else {
        return;
    };
    if name == point.name() && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *at {
        eprintln!("fschain: dying at crash point {name}:{at} (FSCHAIN_CRASH_AT)");
        std::process::abort();
    }
}
