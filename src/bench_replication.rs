//! Replication benchmarks (issue 3): filled in below.

use std::path::Path;

use anyhow::{bail, Result};

pub fn run(_dir: &Path, _quick: bool, _brokers: &str) -> Result<()> {
    bail!("replication benchmarks are not written yet")
}
