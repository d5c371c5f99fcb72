//! The `fschain` binary.
//!
//! Architecture Invariant: this file is the only place that reads argv and
//! the environment. Everything below it takes plain values.

mod cli;
mod commands;
mod replication;
mod search;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use serde::Deserialize;

use crate::cli::Cli;

/// Settings that may come from the config file or the environment.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The fschain root.
    pub root: Option<PathBuf>,
    /// Chain name for `init`.
    pub chain: Option<String>,
    /// Kafka bootstrap brokers.
    pub brokers: Option<String>,
    /// Topic prefix.
    pub prefix: Option<String>,
    /// This site's name (`consume`, `replay`, `import`).
    pub site: Option<String>,
    /// Producers' public keys a site trusts (hex, or key files).
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// all-MiniLM-L6-v2 model directory for the event index.
    pub model_dir: Option<PathBuf>,
    /// A Qdrant server for the event index, instead of qdrant-edge.
    pub qdrant_url: Option<String>,
    pub qdrant_api_key: Option<String>,
    /// Server collections are named `<prefix><chain>`.
    pub qdrant_prefix: Option<String>,
    /// Extra librdkafka settings, e.g. `"security.protocol" = "ssl"`.
    #[serde(default)]
    pub kafka: std::collections::BTreeMap<String, String>,
}

/// Facts about the caller, read here once.
#[derive(Debug)]
pub struct Invocation {
    pub settings: Settings,
    /// Recorded as the actor of `set`, `delete` and `rollback` events.
    pub actor: String,
    pub hostname: String,
    /// Set on SIGINT or SIGTERM; long-running commands stop cleanly.
    pub shutdown: Arc<AtomicBool>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let invocation = match invocation(&cli) {
        Ok(i) => i,
        Err(e) => return fail(&e),
    };
    match commands::run(cli.command, &invocation) {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}

fn fail(error: &anyhow::Error) -> ExitCode {
    eprintln!("fschain: error: {error:#}");
    ExitCode::from(2)
}

fn invocation(cli: &Cli) -> anyhow::Result<Invocation> {
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

fn init_tracing(verbose: u8) {
    let default = match verbose {
        // qdrant-edge warns about internals it never set up in process.
        0 => "warn,qdrant_edge=error",
        1 => "debug,qdrant_edge=warn",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
