//! What every command group shares: the settings and facts read once at
//! start, where the root is, opening a chain, sizes and JSON output.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use fschain_producer::{recover_if_interrupted, ChainWriter};
use fschain_store::{Chain, RootLayout};
use serde::Deserialize;
use serde_json::Value;

use fschain_producer::publish::KafkaTarget;
use fschain_schema::wire::Topics;

use crate::cli::{Cli, KafkaArgs, RootArg};

/// Settings that may come from the config file or the environment.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Settings {
    /// The fschain root.
    pub(crate) root: Option<PathBuf>,
    /// Chain name for `init`.
    pub(crate) chain: Option<String>,
    /// Kafka bootstrap brokers.
    pub(crate) brokers: Option<String>,
    /// Topic prefix.
    pub(crate) prefix: Option<String>,
    /// This site's name (`consume`, `replay`, `import`).
    pub(crate) site: Option<String>,
    /// Producers' public keys a site trusts (hex, or key files).
    #[serde(default)]
    pub(crate) trusted_keys: Vec<String>,
    /// all-MiniLM-L6-v2 model directory for the event index.
    pub(crate) model_dir: Option<PathBuf>,
    /// A Qdrant server for the event index, instead of qdrant-edge.
    pub(crate) qdrant_url: Option<String>,
    pub(crate) qdrant_api_key: Option<String>,
    /// Server collections are named `<prefix><chain>`.
    pub(crate) qdrant_prefix: Option<String>,
    /// Extra librdkafka settings, e.g. `"security.protocol" = "ssl"`.
    #[serde(default)]
    pub(crate) kafka: std::collections::BTreeMap<String, String>,
    /// Checkpoints name their log `<checkpoint_origin>/<chain>` (default
    /// `fschain.example`); witnesses and verifier keys depend on it, so it
    /// must not change once checkpoints are out.
    pub(crate) checkpoint_origin: Option<String>,
    /// An OpenSSH allowed_signers file: who may sign operations
    /// (namespace `fschain-op`).
    pub(crate) allowed_signers: Option<PathBuf>,
    /// Refuse unsigned operations in `agent` and `apply`.
    #[serde(default)]
    pub(crate) require_signed_ops: bool,
    /// Where sites share cosigned checkpoints (default `<prefix>.witness`):
    /// sites following different clusters or prefixes name one topic.
    pub(crate) witness_topic: Option<String>,
    /// Which snapshots `prune`, `agent` and `consume` keep.
    pub(crate) retention: Option<fschain_store::retention::RetentionPolicy>,
    /// What `watch` and `drift` observe (the tables of a sources file).
    pub(crate) sources: Option<fschain_host::SourcesConfig>,
}

/// Facts about the caller, read here once.
#[derive(Debug)]
pub(crate) struct Invocation {
    pub(crate) settings: Settings,
    /// Recorded as the actor of `set`, `delete` and `rollback` events.
    pub(crate) actor: String,
    pub(crate) hostname: String,
    /// Set on SIGINT or SIGTERM; long-running commands stop cleanly.
    pub(crate) shutdown: Arc<AtomicBool>,
}

/// Reads the config file and the environment once (this is the only place
/// that does).
pub(crate) fn invocation(cli: &Cli) -> Result<Invocation> {
    let config_file = cli
        .config
        .clone()
        .or_else(|| std::env::var_os("FSCHAIN_CONFIG").map(PathBuf::from));
    let mut builder = config::Config::builder();
    if let Some(path) = &config_file {
        builder = builder.add_source(
            config::File::from(path.as_path())
                .format(config::FileFormat::Toml)
                .required(true),
        );
    }
    for key in [
        "root",
        "chain",
        "brokers",
        "prefix",
        "site",
        "model_dir",
        "qdrant_url",
        "qdrant_api_key",
        "qdrant_prefix",
    ] {
        let var = format!("FSCHAIN_{}", key.to_uppercase());
        if let Some(value) = std::env::var_os(&var) {
            builder = builder.set_override(key, value.to_string_lossy().into_owned())?;
        }
    }
    let settings: Settings = builder
        .build()
        .and_then(|c| c.try_deserialize())
        .with_context(|| match &config_file {
            Some(p) => format!("reading config {}", p.display()),
            None => "reading FSCHAIN_* settings".to_owned(),
        })?;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "root".into());
    let shutdown = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&shutdown);
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("installing the SIGINT/SIGTERM handler")?;
    Ok(Invocation {
        settings,
        actor: format!("{user}@{hostname}"),
        hostname,
        shutdown,
    })
}

pub(crate) fn root_dir(arg: &RootArg, inv: &Invocation) -> Result<PathBuf> {
    arg.root
        .clone()
        .or_else(|| inv.settings.root.clone())
        .ok_or_else(|| {
            anyhow!(
                "no root given: pass --root DIR, set FSCHAIN_ROOT, or set root in the config file"
            )
        })
}

/// The root itself when it is a chain, else each chain of a site under it.
pub(crate) fn chain_roots(root: &Path) -> Result<Vec<std::path::PathBuf>> {
    if RootLayout::new(root).marker().exists() {
        return Ok(vec![root.to_owned()]);
    }
    let mut chains: Vec<_> = std::fs::read_dir(root)
        .with_context(|| format!("reading {}", root.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| RootLayout::new(p).marker().exists())
        .collect();
    chains.sort();
    if chains.is_empty() {
        bail!(
            "{} is neither a chain's root nor a site holding chains",
            root.display()
        );
    }
    Ok(chains)
}

pub(crate) fn open_writer(root: &Path) -> Result<ChainWriter> {
    ChainWriter::open(RootLayout::new(root)).with_context(|| format!("opening {}", root.display()))
}

pub(crate) fn open_chain(root: &Path) -> Result<Chain> {
    recover_if_interrupted(&RootLayout::new(root))
        .with_context(|| format!("recovering {}", root.display()))?;
    Chain::open(root).with_context(|| format!("opening {}", root.display()))
}

pub(crate) fn print_json(value: &Value) {
    use std::io::Write as _;
    // A reader that stops early (`| head`) is not an error worth a panic.
    let _ = writeln!(
        std::io::stdout().lock(),
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// `2G`, `512M`, `1048576`.
pub(crate) fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| anyhow!("bad size {text:?}: use e.g. 2G, 512M"))?;
    let mult: u64 = match unit.to_ascii_uppercase().trim_end_matches(['B', 'I']) {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => bail!("bad size {text:?}: use e.g. 2G, 512M"),
    };
    n.checked_mul(mult)
        .ok_or_else(|| anyhow!("size {text:?} is too large"))
}

/// Where Kafka commands publish and read: --brokers and --prefix, else the
/// settings.
pub(crate) fn target(args: &KafkaArgs, inv: &Invocation) -> Result<KafkaTarget> {
    Ok(KafkaTarget {
        brokers: brokers(args, inv)?,
        topics: topics(args, inv),
        extra: extra(inv),
    })
}

pub(crate) fn brokers(args: &KafkaArgs, inv: &Invocation) -> Result<String> {
    args.brokers
        .clone()
        .or_else(|| inv.settings.brokers.clone())
        .ok_or_else(|| {
            anyhow!("no brokers given: pass --brokers HOST:PORT, set FSCHAIN_BROKERS, or set brokers in the config file")
        })
}

pub(crate) fn topics(args: &KafkaArgs, inv: &Invocation) -> Topics {
    let prefix = args
        .prefix
        .clone()
        .or_else(|| inv.settings.prefix.clone())
        .unwrap_or_else(|| "fschain".into());
    let mut topics = Topics::with_prefix(&prefix);
    if let Some(witness) = &inv.settings.witness_topic {
        topics.witness = witness.clone();
    }
    topics
}

pub(crate) fn extra(inv: &Invocation) -> Vec<(String, String)> {
    inv.settings
        .kafka
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The producers' public keys a site trusts: `--trust KEY|FILE` items and
/// `trusted_keys`, each 64 hex digits or a file of them.
pub(crate) fn trusted_keys(
    given: &[String],
    inv: &Invocation,
) -> Result<Vec<fschain_schema::wire::PublicKey>> {
    use fschain_schema::wire::PublicKey;
    let mut keys = Vec::new();
    for item in given.iter().chain(inv.settings.trusted_keys.iter()) {
        if item.len() == 64 && item.bytes().all(|b| b.is_ascii_hexdigit()) {
            keys.push(PublicKey::from_hex(item)?);
            continue;
        }
        let text = std::fs::read_to_string(item).with_context(|| {
            format!("--trust {item}: neither 64 hex digits nor a readable key file")
        })?;
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            keys.push(PublicKey::from_hex(line).with_context(|| format!("key file {item}"))?);
        }
    }
    Ok(keys)
}

/// Starts serving /metrics when asked (`--metrics-addr`; a bare port binds
/// loopback) until the invocation's shutdown.
pub(crate) fn serve_metrics(
    arg: &crate::cli::MetricsArg,
    inv: &Invocation,
) -> Result<Option<Arc<fschain_metrics::Metrics>>> {
    let Some(addr) = &arg.metrics_addr else {
        return Ok(None);
    };
    let addr = if addr.bytes().all(|b| b.is_ascii_digit()) {
        format!("127.0.0.1:{addr}")
    } else {
        addr.clone()
    };
    let (metrics, registry) = fschain_metrics::Metrics::new();
    let bound = fschain_metrics::serve(&addr, registry, inv.shutdown.clone())?;
    tracing::info!(%bound, "serving /metrics");
    Ok(Some(metrics))
}

/// When the newest block of a chain copy was sealed, from the last line of
/// its head snapshot's headers.log (read from the end: the log grows with
/// the chain).
pub(crate) fn head_sealed_micros(layout: &RootLayout, height: u64) -> Option<i64> {
    use std::io::{Read, Seek, SeekFrom};
    let path = layout
        .snapshot(height)
        .join(fschain_store::layout::HEADERS_LOG);
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(8192))).ok()?;
    let mut tail = String::new();
    file.read_to_string(&mut tail).ok()?;
    let line = tail.lines().rev().find(|l| !l.trim().is_empty())?;
    let header: Value = serde_json::from_str(line).ok()?;
    let time = header.get("time")?.as_str()?;
    fschain_schema::Timestamp::parse_canonical(time)
        .ok()
        .map(|t| t.as_micros())
}

/// The config's `[retention]`, applied by a long-running command at most
/// once a minute, after a block (the command holds the root's lock).
#[derive(Debug)]
pub(crate) struct RetentionRun {
    policy: Option<fschain_store::retention::RetentionPolicy>,
    last: std::collections::BTreeMap<PathBuf, std::time::Instant>,
}

impl RetentionRun {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(60);

    pub(crate) fn new(inv: &Invocation) -> Self {
        RetentionRun {
            policy: inv.settings.retention.clone().filter(|p| !p.is_empty()),
            last: Default::default(),
        }
    }

    /// Prunes `layout` when a policy is set and a minute has passed. A
    /// failure is logged, never fatal: retention must not stop replication.
    pub(crate) fn after_block(&mut self, layout: &RootLayout) {
        let Some(policy) = &self.policy else { return };
        let now = std::time::Instant::now();
        if self
            .last
            .get(layout.root())
            .is_some_and(|t| now.duration_since(*t) < Self::EVERY)
        {
            return;
        }
        self.last.insert(layout.root().to_owned(), now);
        match fschain_store::retention::prune_root(layout, policy, Default::default()) {
            Ok(o) if o.deleted > 0 => tracing::info!(
                root = %layout.root().display(),
                pruned = %fschain_store::retention::ranges(&o.plan.prune),
                kept = o.plan.keep.len(),
                "retention pruned snapshots"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(root = %layout.root().display(), "retention failed: {e}"),
        }
    }
}

/// The origin line of `chain`'s checkpoints (and its verifier key's name).
/// What checkpoints name their logs before `/<chain>`.
pub(crate) fn checkpoint_origin(inv: &Invocation) -> String {
    inv.settings
        .checkpoint_origin
        .as_deref()
        .unwrap_or("fschain.example")
        .trim_end_matches('/')
        .to_owned()
}

/// The origin (and key name) of `chain`'s checkpoints.
pub(crate) fn log_origin(inv: &Invocation, chain: &fschain_schema::ChainName) -> String {
    format!("{}/{chain}", checkpoint_origin(inv))
}

/// The signature policy of `agent` and `apply`, from `allowed_signers` and
/// `require_signed_ops`.
pub(crate) fn signature_policy(
    inv: &Invocation,
) -> Result<fschain_schema::sshsig::SignaturePolicy> {
    let settings = &inv.settings;
    let allowed = match &settings.allowed_signers {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading allowed_signers {}", path.display()))?;
            let allowed = fschain_schema::sshsig::AllowedSigners::parse(&text)
                .with_context(|| format!("in allowed_signers {}", path.display()))?;
            Some(allowed)
        }
        None if settings.require_signed_ops => {
            bail!("require_signed_ops is set, but no allowed_signers file says who may sign")
        }
        None => None,
    };
    Ok(fschain_schema::sshsig::SignaturePolicy {
        allowed,
        require: settings.require_signed_ops,
    })
}
