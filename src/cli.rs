//! The command line: names and flags here are the user-facing contract.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// fschain: a machine's configuration history as a verifiable chain of
/// btrfs snapshots.
#[derive(Debug, Parser)]
#[command(name = "fschain", version, about, propagate_version = true)]
pub struct Cli {
    /// TOML config file (default: $FSCHAIN_CONFIG, if set).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// More log output (-v: debug, -vv: trace). RUST_LOG also works.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the chain lives.
#[derive(Debug, Args)]
pub struct RootArg {
    /// The fschain root (or FSCHAIN_ROOT, or `root` in the config file).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct JsonArg {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a root with its genesis block (DIR must be on btrfs).
    Init {
        #[command(flatten)]
        root: RootArg,
        /// Chain name (default: this host's name).
        #[arg(long)]
        chain: Option<String>,
        /// Create a btrfs image FILE, format it and loop-mount it at DIR (as root).
        #[arg(long, value_name = "FILE", requires = "size")]
        image: Option<PathBuf>,
        /// Size of the image: bytes, or with K, M, G or T.
        #[arg(long, value_name = "SIZE", requires = "image")]
        size: Option<String>,
    },
    /// Apply operations (JSON Lines) from FILE or stdin, sealing a block per N operations and at the end.
    Apply {
        #[command(flatten)]
        root: RootArg,
        /// Operations per block.
        #[arg(long, default_value_t = 1000, value_name = "N")]
        block_ops: usize,
        /// JSON Lines file, or - for stdin.
        #[arg(default_value = "-")]
        file: String,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Set keys of an element's state (creating it if needed) and seal a block.
    Set {
        #[command(flatten)]
        root: RootArg,
        element: String,
        /// KEY=VALUE; VALUE is read as JSON when it parses (9000, true, [1]), else as text.
        #[arg(required = true, value_name = "KEY=VALUE")]
        assignments: Vec<String>,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Delete an element and seal a block.
    Delete {
        #[command(flatten)]
        root: RootArg,
        element: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        json: JsonArg,
    },
    /// List the blocks.
    Log {
        #[command(flatten)]
        root: RootArg,
        #[command(flatten)]
        json: JsonArg,
    },
    /// List an element's events.
    History {
        #[command(flatten)]
        root: RootArg,
        element: String,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Print an element's state, now or at a past block.
    Show {
        #[command(flatten)]
        root: RootArg,
        element: String,
        /// A height, 8+ hex digits of a block hash, @TIME, head or head~N.
        #[arg(long, value_name = "REF", default_value = "head")]
        at: String,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Elements added, changed and removed between two blocks (the second defaults to head).
    Diff {
        #[command(flatten)]
        root: RootArg,
        from: String,
        to: Option<String>,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Re-derive and check everything. Exit 0: clean; 1: problems found; 2: could not run.
    Verify {
        #[command(flatten)]
        root: RootArg,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Seal a NEW block that restores REF's states; history is kept.
    Rollback {
        #[command(flatten)]
        root: RootArg,
        reference: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Make a writable copy of a block's state at DEST, for inspection.
    Checkout {
        #[command(flatten)]
        root: RootArg,
        reference: String,
        dest: PathBuf,
    },
    /// Measure throughput and latency against baselines timed in the same run.
    Bench {
        /// A directory on btrfs to work in (a scratch root is made below it).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Run smaller, quicker measurements.
        #[arg(long)]
        quick: bool,
    },
}
