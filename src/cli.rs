//! The command line: names and flags here are the user-facing contract.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// fschain: a machine's configuration history as a verifiable chain of
/// btrfs snapshots.
#[derive(Debug, Parser)]
#[command(name = "fschain", version, about, propagate_version = true)]
pub(crate) struct Cli {
    /// TOML config file (default: $FSCHAIN_CONFIG, if set).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// More log output (-v: debug, -vv: trace). RUST_LOG also works.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log lines as text, or as JSON objects for log shippers.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

/// Prometheus metrics.
#[derive(Debug, Args, Clone)]
pub(crate) struct MetricsArg {
    /// Serve /metrics (Prometheus/OpenMetrics text) at HOST:PORT; a bare PORT binds 127.0.0.1.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
}

/// Where the chain lives.
#[derive(Debug, Args, Clone)]
pub(crate) struct RootArg {
    /// The fschain root (or FSCHAIN_ROOT, or `root` in the config file).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
}

/// A retention policy; when no option is given, the config's `[retention]`.
#[derive(Debug, Args)]
pub(crate) struct KeepArgs {
    /// Keep the newest N snapshots.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the newest N hours that have one.
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<u32>,
    /// ... of each of the newest N days (UTC).
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<u32>,
    /// ... of each of the newest N ISO weeks.
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<u32>,
    /// ... of each of the newest N months.
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<u32>,
}

#[derive(Debug, Args)]
pub(crate) struct JsonArg {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Every command; the groups are flattened, so users see one list.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    #[command(flatten)]
    Local(LocalCommand),
    #[command(flatten)]
    Replication(ReplicationCommand),
    #[command(flatten)]
    Search(SearchCommand),
    #[command(flatten)]
    Proof(ProofCommand),
    #[command(flatten)]
    Host(HostCommand),
    #[command(flatten)]
    Operate(OperateCommand),
    #[command(flatten)]
    Tool(ToolCommand),
}

/// Seeing whether it works.
#[derive(Debug, Subcommand)]
pub(crate) enum OperateCommand {
    /// A chain's (or a site's chains') head, last seal, published height and key; with --brokers or --site, every site's verified height and lag, from Kafka alone. Exit 0: within thresholds; 1: a site over one or behind retention; 2: could not ask.
    Status {
        #[command(flatten)]
        root: RootArg,
        #[command(flatten)]
        kafka: KafkaArgs,
        /// A site to report on (its group fschain-site-NAME); repeatable. Default: every fschain site group.
        #[arg(long = "site", value_name = "NAME")]
        sites: Vec<String>,
        /// Only manifests signed by these keys count (as consume's --trust). Default: trusted_keys, else any.
        #[arg(long = "trust", value_name = "KEY|FILE")]
        trust: Vec<String>,
        /// Exit 1 when a site is more than N blocks behind a chain.
        #[arg(long, value_name = "N")]
        max_lag_blocks: Option<u64>,
        /// Exit 1 when a site's newest verified block was sealed more than S seconds before the chain's newest.
        #[arg(long, value_name = "S")]
        max_lag_seconds: Option<i64>,
        #[command(flatten)]
        json: JsonArg,
    },
}

/// For packagers: shell completions and man pages.
#[derive(Debug, Subcommand)]
pub(crate) enum ToolCommand {
    /// Print the shell completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (fschain.1 and one per command) into DIR.
    Man {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// The sources file: `--sources FILE`, else the config's `[sources]`.
#[derive(Debug, Args, Clone)]
pub(crate) struct SourcesArg {
    /// TOML sources file (default: the config file's [sources] table; without either, /etc).
    #[arg(long, value_name = "FILE")]
    pub sources: Option<PathBuf>,
    /// Observe the interfaces of this network namespace (`ip netns add NAME`), as [interfaces] netns does.
    #[arg(long, value_name = "NAME")]
    pub netns: Option<String>,
}

/// Watching the host itself: files, sysctls, packages, services, interfaces, Open vSwitch.
#[derive(Debug, Subcommand)]
pub(crate) enum HostCommand {
    /// Record what differs from the head as one catch-up block, then follow the host's changes.
    Watch {
        #[command(flatten)]
        root: RootArg,
        #[command(flatten)]
        sources: SourcesArg,
        /// Also publish each block (as `agent` does): bootstrap brokers.
        #[arg(long, value_name = "LIST")]
        brokers: Option<String>,
        /// Topic prefix when publishing (default: fschain).
        #[arg(long)]
        prefix: Option<String>,
        /// Seal a block this many milliseconds after its first change...
        #[arg(long, default_value_t = 1000, value_name = "MS")]
        block_interval: u64,
        /// ...or after this many operations.
        #[arg(long, default_value_t = 10_000, value_name = "N")]
        block_ops: usize,
        /// Scan, seal the catch-up block, exit.
        #[arg(long)]
        once: bool,
        #[command(flatten)]
        metrics: MetricsArg,
    },
    /// Compare the host with the head: + added, ~ changed, - removed. Exit 0: in sync; 1: drift; 2: could not run.
    Drift {
        #[command(flatten)]
        root: RootArg,
        #[command(flatten)]
        sources: SourcesArg,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Write the state ELEMENTs had at REF back to the host, and seal a block recording it.
    Restore {
        #[command(flatten)]
        root: RootArg,
        #[command(flatten)]
        sources: SourcesArg,
        #[arg(required = true)]
        elements: Vec<String>,
        /// A height, 8+ hex digits of a block hash, @TIME, head or head~N.
        #[arg(long, value_name = "REF", default_value = "head")]
        at: String,
        /// Print the plan, change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        reason: Option<String>,
    },
}

/// The local chain: write, read, verify, roll back.
#[derive(Debug, Subcommand)]
pub(crate) enum LocalCommand {
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
        /// Sign the operation with this SSH key (ssh-keygen -Y sign; a .pub file signs with the ssh-agent's key).
        #[arg(long, value_name = "KEY")]
        sign: Option<PathBuf>,
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
        /// Sign the operation with this SSH key (ssh-keygen -Y sign; a .pub file signs with the ssh-agent's key).
        #[arg(long, value_name = "KEY")]
        sign: Option<PathBuf>,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Signed operations: the bytes to sign, or sign JSON Lines with an SSH key.
    Op {
        #[command(subcommand)]
        action: OpAction,
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
    /// Delete block snapshots by a retention policy (the newest of each hour, day, ...). Never the head, the newest checkpoint, or a block not yet published or indexed; headers and events of every block stay, and pruned blocks' states are rebuilt on demand.
    Prune {
        #[command(flatten)]
        root: RootArg,
        #[command(flatten)]
        keep: KeepArgs,
        /// Print what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// This chain is never published: do not keep blocks for a publish that will not come.
        #[arg(long)]
        unpublished: bool,
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
}

/// Keys, topics, the agent, publishing, sites, replay, export and import.
#[derive(Debug, Subcommand)]
pub(crate) enum ReplicationCommand {
    /// Show or create the chain's signing key (created by init).
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Manage the Kafka topics.
    Topics {
        #[command(subcommand)]
        action: TopicsAction,
    },
    /// Consume <prefix>.ops for this chain, apply, seal and publish, until stopped.
    Agent {
        #[command(flatten)]
        root: RootArg,
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Only take operations keyed to this chain (default: the root's chain).
        #[arg(long)]
        chain: Option<String>,
        /// Seal a block after this many operations...
        #[arg(long, default_value_t = 1000, value_name = "N")]
        block_ops: usize,
        /// ...or this many milliseconds after its first one, whichever comes first.
        #[arg(long, default_value_t = 100, value_name = "MS")]
        block_interval: u64,
        #[command(flatten)]
        stream: StreamArgs,
        /// Exit once the ops topic is consumed to its end and all is published.
        #[arg(long)]
        until_idle: bool,
        #[command(flatten)]
        metrics: MetricsArg,
    },
    /// Publish operations (JSON Lines) to <prefix>.ops for CHAIN's agent; any Kafka client can do the same.
    Submit {
        /// The chain the operations are for (the message key).
        #[arg(long)]
        chain: String,
        #[command(flatten)]
        kafka: KafkaArgs,
        /// JSON Lines file, or - for stdin.
        #[arg(default_value = "-")]
        file: String,
        /// Sign each operation with this SSH key first (as `op sign`).
        #[arg(long, value_name = "KEY")]
        sign: Option<PathBuf>,
    },
    /// Publish every sealed block not yet on the topics, then exit.
    Publish {
        #[command(flatten)]
        root: RootArg,
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        stream: StreamArgs,
    },
    /// Run a site: receive, verify and keep every chain's blocks.
    Consume {
        #[command(flatten)]
        site: SiteArgs,
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Take only these chains (repeatable; default: every chain signed by a trusted key).
        #[arg(long = "chain", value_name = "NAME")]
        chains: Vec<String>,
        /// Exit 0 once the site has caught up with the topic.
        #[arg(long)]
        until_idle: bool,
        #[command(flatten)]
        metrics: MetricsArg,
    },
    /// Rebuild an empty site from the topic, starting at each chain's latest full checkpoint.
    Replay {
        #[command(flatten)]
        site: SiteArgs,
        #[command(flatten)]
        kafka: KafkaArgs,
        #[arg(long = "chain", value_name = "NAME")]
        chains: Vec<String>,
    },
    /// Write blocks as the same signed chunk stream the topic carries (or --raw: a plain btrfs send stream).
    Export {
        #[command(flatten)]
        root: RootArg,
        /// Start after this block (the receiver holds it); default: from block 0, full.
        #[arg(long, value_name = "REF")]
        from: Option<String>,
        /// Last block to write.
        #[arg(long, value_name = "REF", default_value = "head")]
        to: String,
        /// Output file, or - for stdout.
        #[arg(short, long, default_value = "-")]
        output: String,
        /// Write the plain `btrfs send` stream of --to (incremental against --from) for stock `btrfs receive`.
        #[arg(long)]
        raw: bool,
        #[command(flatten)]
        stream: StreamArgs,
    },
    /// Take in an export stream at a site, with the same checks as from Kafka.
    Import {
        #[command(flatten)]
        site: SiteArgs,
        /// File written by `fschain export`, or - for stdin.
        #[arg(default_value = "-")]
        file: String,
    },
}

/// Proofs anyone can check with C2SP tools.
#[derive(Debug, Subcommand)]
pub(crate) enum ProofCommand {
    /// Print the chain's head (or REF) as a C2SP tlog-checkpoint signed note: tree over the block hashes.
    Checkpoint {
        #[command(flatten)]
        root: RootArg,
        #[arg(long, value_name = "REF", default_value = "head")]
        at: String,
        /// Print instead the newest checkpoint at least N of the --witness sites cosigned (read from <prefix>.witness).
        #[arg(long, value_name = "N", requires = "witnesses")]
        witnessed_by: Option<usize>,
        /// A site's witness key (`key show --site`), or a file holding it; repeatable.
        #[arg(long = "witness", value_name = "VKEY|FILE")]
        witnesses: Vec<String>,
        #[command(flatten)]
        kafka: KafkaArgs,
    },
    /// Write an offline proof: ELEMENT's state (or with --block alone, a block header) in the signed checkpoint at --at, as a C2SP tlog-proof; or --consistency OLD NEW.
    Prove {
        #[command(flatten)]
        root: RootArg,
        /// The element whose state to prove (at --block).
        #[arg(conflicts_with = "consistency")]
        element: Option<String>,
        /// The block whose header (and ELEMENT's state in it) to prove; default: --at.
        #[arg(long, value_name = "REF", conflicts_with = "consistency")]
        block: Option<String>,
        /// Prove that the checkpoint at NEW extends the one at OLD.
        #[arg(long, num_args = 2, value_names = ["OLD", "NEW"])]
        consistency: Option<Vec<String>>,
        /// The checkpoint the block is proven in.
        #[arg(long, value_name = "REF", default_value = "head")]
        at: String,
        /// Write here instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Check a proof written by `prove`, with no chain at hand. Exit 0: it holds; 1: it does not.
    CheckProof {
        file: PathBuf,
        /// The log's verifier key (`key show --vkey`), or a file holding it.
        #[arg(long, value_name = "VKEY|FILE")]
        key: String,
    },
}

/// The event index.
#[derive(Debug, Subcommand)]
pub(crate) enum SearchCommand {
    /// Build a chain's event index from its snapshots (on a producer, or a site's copy), replacing any index it has.
    Reindex {
        #[command(flatten)]
        root: RootArg,
        #[command(flatten)]
        index: IndexArgs,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Search events by meaning (BM25, fused with MiniLM when a model is configured).
    Search {
        /// A chain root, or a site directory (every chain it holds).
        #[command(flatten)]
        root: RootArg,
        #[command(flatten)]
        args: SearchArgs,
        #[command(flatten)]
        index: IndexArgs,
    },
}

/// One embedder to rank a search with.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum UsingArg {
    Bm25,
    Minilm,
}

/// What `search` is asked.
#[derive(Debug, Args)]
pub(crate) struct SearchArgs {
    pub query: String,
    /// Only events of this element.
    #[arg(long, value_name = "ELEMENT")]
    pub element: Option<String>,
    /// Only events of elements of this kind (iface, service, file, ...).
    #[arg(long, value_name = "KIND")]
    pub kind: Option<String>,
    /// Only this chain (at a site holding several).
    #[arg(long, value_name = "NAME")]
    pub chain: Option<String>,
    /// Only events up to this block, each shown with its element's state there.
    #[arg(long, value_name = "REF")]
    pub at: Option<String>,
    /// Only events at or after this RFC 3339 time.
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only events at or before this RFC 3339 time.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub limit: usize,
    /// Add each hit's inclusion proof in its block and the signed block header.
    #[arg(long)]
    pub proof: bool,
    /// Rank with one embedder only (default: all the index has, fused).
    #[arg(long, value_enum, value_name = "EMBEDDER")]
    pub using: Option<UsingArg>,
    #[command(flatten)]
    pub json: JsonArg,
}

impl SearchArgs {
    /// Which embedders rank the hits.
    pub(crate) fn ranking(&self) -> fschain_index::Ranking {
        match self.using {
            None => fschain_index::Ranking::Fused,
            Some(UsingArg::Bm25) => fschain_index::Ranking::Bm25,
            Some(UsingArg::Minilm) => fschain_index::Ranking::MiniLm,
        }
    }
}

/// Which embedders the event index uses.
#[derive(Debug, Args, Clone)]
pub(crate) struct IndexArgs {
    /// all-MiniLM-L6-v2 directory (scripts/fetch-model.sh; or FSCHAIN_MODEL_DIR, or model_dir in the config). Without it: BM25 only.
    #[arg(long = "model", value_name = "DIR")]
    pub model_dir: Option<PathBuf>,
    /// Keep the index on this Qdrant server (gRPC, e.g. http://localhost:6334) instead of in process (or FSCHAIN_QDRANT_URL, or qdrant_url in the config).
    #[arg(long, value_name = "URL")]
    pub qdrant_url: Option<String>,
    /// API key for the Qdrant server (or FSCHAIN_QDRANT_API_KEY, or qdrant_api_key in the config).
    #[arg(long, value_name = "KEY")]
    pub qdrant_api_key: Option<String>,
    /// Server collections are named PREFIX<chain> (default fschain-<site>- at a site, fschain- elsewhere).
    #[arg(long, value_name = "PREFIX")]
    pub qdrant_prefix: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeyAction {
    /// Print the public key sites must trust.
    Show {
        #[command(flatten)]
        root: RootArg,
        /// Print it as a C2SP signed-note verifier key (NAME+ID+KEY), named as the chain's checkpoint origin.
        #[arg(long)]
        vkey: bool,
        /// ROOT is site NAME's directory: print the key it cosigns checkpoints with (a C2SP cosignature/v1 verifier key; made on first use).
        #[arg(long, value_name = "NAME")]
        site: Option<String>,
    },
    /// Create a key pair for a root made before keys existed.
    Create {
        #[command(flatten)]
        root: RootArg,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TopicsAction {
    /// Create <prefix>.ops, .events, .blocks and .witness with fschain's settings.
    Create {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[arg(long, default_value_t = 3)]
        partitions: i32,
        #[arg(long, default_value_t = 1)]
        replication: i32,
    },
}

/// Where the broker is.
#[derive(Debug, Args, Clone)]
pub(crate) struct KafkaArgs {
    /// Bootstrap brokers, host:port[,host:port] (or FSCHAIN_BROKERS, or `brokers` in the config file).
    #[arg(long, value_name = "LIST")]
    pub brokers: Option<String>,
    /// Topic prefix (default: fschain).
    #[arg(long)]
    pub prefix: Option<String>,
}

/// How blocks are cut into streams.
#[derive(Debug, Args, Clone)]
pub(crate) struct StreamArgs {
    /// A full stream every N blocks (and at genesis); 0: at genesis only.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub checkpoint_every: u64,
    /// Chunk size in bytes (K and M suffixes work).
    #[arg(long, default_value = "512K", value_name = "SIZE")]
    pub chunk_size: String,
}

/// A site.
#[derive(Debug, Args, Clone)]
pub(crate) struct SiteArgs {
    /// The site's name; its consumer group is fschain-site-NAME (or FSCHAIN_SITE).
    #[arg(long, value_name = "NAME")]
    pub site: Option<String>,
    /// The site's directory, on btrfs; each chain's copy is DIR/<chain>.
    #[command(flatten)]
    pub root: RootArg,
    /// Trusted producer public key: 64 hex digits, or a file of them (a producer's meta/signing.pub). Repeatable.
    #[arg(long = "trust", value_name = "KEY|FILE")]
    pub trust: Vec<String>,
    #[command(flatten)]
    pub index: IndexArgs,
    /// Do not keep the event index (search then needs `fschain reindex` first).
    #[arg(long)]
    pub no_index: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum OpAction {
    /// Print the bytes an operation's signature covers: pipe them to `ssh-keygen -Y sign -n fschain-op -f KEY`.
    Canonical {
        /// One operation (JSON), or - for stdin.
        #[arg(default_value = "-")]
        file: String,
    },
    /// Sign each operation of a JSON Lines file with an SSH key and print them with their `signature`.
    Sign {
        /// The private key, or a .pub file whose key the ssh-agent holds.
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        /// JSON Lines file, or - for stdin.
        #[arg(default_value = "-")]
        file: String,
    },
}
