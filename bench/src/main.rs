//! `fschain-bench`: fschain's speed and memory, each figure beside a
//! baseline timed in the same run on the same file system and broker.
//!
//! Kept out of the production binary; it runs the `fschain` binary built
//! beside it for the commands it times end to end.

mod fleet;
mod host;
mod index;
mod local;
mod network;
mod quality;
mod replication;
mod report;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use fschain_store::btrfs;

use crate::report::Report;

/// Measure throughput and latency against baselines timed in the same run.
#[derive(Debug, Parser)]
#[command(name = "fschain-bench", version)]
struct Args {
    /// A directory on btrfs to work in (a scratch root is made below it).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Run smaller, quicker measurements (the CI smoke run).
    #[arg(long)]
    quick: bool,
    /// Also measure replication through this broker.
    #[arg(long, value_name = "LIST")]
    brokers: Option<String>,
    /// Only the replication measurements.
    #[arg(long, requires = "brokers")]
    replication_only: bool,
    /// Only the event index measurements.
    #[arg(long, conflicts_with = "replication_only")]
    index_only: bool,
    /// Only the local chain measurements (seal, verify, prune).
    #[arg(long, conflicts_with_all = ["replication_only", "index_only", "host_only", "network_only", "quality_only"])]
    local_only: bool,
    /// Only the host source measurements (watch, first scan).
    #[arg(long, conflicts_with_all = ["replication_only", "index_only"])]
    host_only: bool,
    /// Only the network source measurements (interfaces, Open vSwitch).
    #[arg(long, requires = "brokers", conflicts_with_all = ["replication_only", "index_only", "host_only"])]
    network_only: bool,
    /// Only the fleet measurements (one site following many chains).
    #[arg(long, requires = "brokers", conflicts_with_all = ["replication_only", "index_only", "host_only", "network_only", "local_only", "quality_only"])]
    fleet_only: bool,
    /// Fleet sizes, in chains (default: 30,100 with --quick, else 100,300,1000).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    fleet_chains: Vec<usize>,
    /// all-MiniLM-L6-v2 directory, to measure MiniLM indexing too.
    #[arg(long = "model", value_name = "DIR")]
    model_dir: Option<PathBuf>,
    /// Only the search quality measurements (needs --model).
    #[arg(long, requires = "model_dir", conflicts_with_all = ["replication_only", "index_only", "host_only", "network_only"])]
    quality_only: bool,
    /// Write the figures as the table of this Markdown file
    /// (docs/performance.md).
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fschain-bench: error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let dir = &args.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if !btrfs::is_btrfs(dir)? {
        bail!(
            "{} is not on btrfs; run scripts/btrfs-loop.sh up and pass a directory under it",
            dir.display()
        );
    }
    check_space(dir, args.quick)?;
    let mut report = Report::default();
    if args.quality_only {
        if let Some(model) = &args.model_dir {
            quality::run(
                &dir.join(format!("bench-quality-{}", std::process::id())),
                model,
                &mut report,
            )?;
        }
        return finish(&report, args);
    }
    let fleet_sizes = if !args.fleet_chains.is_empty() {
        args.fleet_chains.clone()
    } else if args.quick {
        vec![30, 100]
    } else {
        vec![100, 300, 1000]
    };
    if let Some(brokers) = args.brokers.as_deref().filter(|_| args.fleet_only) {
        fleet::run(dir, &fleet_sizes, brokers, &mut report)?;
        return finish(&report, args);
    }
    if args.local_only {
        local::run(dir, args.quick, &mut report)?;
        return finish(&report, args);
    }
    if args.host_only {
        host::run(dir, args.quick, &mut report)?;
        return finish(&report, args);
    }
    if let Some(brokers) = args.brokers.as_deref().filter(|_| args.network_only) {
        network::run(dir, args.quick, brokers, &mut report)?;
        return finish(&report, args);
    }
    let local = !args.replication_only && !args.index_only;
    if local {
        local::run(dir, args.quick, &mut report)?;
        local::settle(dir)?;
        host::run(dir, args.quick, &mut report)?;
    }
    // Replication goes before the index section: that one leaves
    // qdrant-edge threads at work in this process and the removal of its
    // 100,000-point index to btrfs's background work, which would fall on
    // the latency runs.
    if let Some(brokers) = args.brokers.as_deref().filter(|_| !args.index_only) {
        replication::run(dir, args.quick, brokers, &mut report)?;
        if !args.replication_only {
            network::run(dir, args.quick, brokers, &mut report)?;
            fleet::run(dir, &fleet_sizes, brokers, &mut report)?;
        }
    }
    if !args.replication_only {
        let work = dir.join(format!("bench-index-{}", std::process::id()));
        index::run(&work, args.quick, args.model_dir.as_deref(), &mut report)?;
        if let Some(model) = &args.model_dir {
            let work = dir.join(format!("bench-quality-{}", std::process::id()));
            quality::run(&work, model, &mut report)?;
        }
    }
    finish(&report, args)
}

fn finish(report: &Report, args: &Args) -> Result<()> {
    if let Some(path) = &args.markdown {
        report.write_markdown(path, &invocation())?;
        println!("\nfigures written to {}", path.display());
    }
    Ok(())
}

/// What the largest sections keep on disk at once: the large change's
/// layer, its spooled stream, the site's spool and received copy, and the
/// raw send | receive copy (200 MB of state quick, 2 GB in full).
fn check_space(dir: &Path, quick: bool) -> Result<()> {
    let needed: u64 = if quick { 3 << 30 } else { 16 << 30 };
    let free = btrfs::available_bytes(dir)?;
    if free < needed {
        bail!(
            "{} has {:.1} GiB free; the benchmark needs about {} GiB{}",
            dir.display(),
            free as f64 / f64::from(1 << 30),
            needed >> 30,
            if quick { "" } else { " (--quick needs 3)" }
        );
    }
    Ok(())
}

/// The command line, with the scratch directory and broker list as
/// placeholders so that the table names a command anyone can run.
fn invocation() -> String {
    let mut out = vec!["fschain-bench".to_owned()];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dir" | "--brokers" | "--model" | "--markdown" => {
                let placeholder = match a.as_str() {
                    "--dir" => "DIR",
                    "--brokers" => "LIST",
                    "--model" => "models/all-MiniLM-L6-v2",
                    _ => "docs/performance.md",
                };
                args.next();
                out.push(format!("{a} {placeholder}"));
            }
            _ => out.push(a),
        }
    }
    out.join(" ")
}
