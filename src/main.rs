//! The `fschain` binary.
//!
//! Architecture Invariant: this file and `context::invocation` are the only
//! places that read argv and the environment. Everything below them takes
//! plain values. No two modules here import each other: `local`,
//! `replication`, `search`, `proof`, `host`, `status` and `tools` use `cli`, `context`
//! and `progress` only.

mod cli;
mod context;
mod host;
mod local;
mod progress;
mod proof;
mod replication;
mod search;
mod signing;
mod status;
mod tools;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, LogFormat};

/// mimalloc keeps small and large allocations on separate pages, so the
/// memory a large block or a first scan frees can go back to the system
/// (see `host::release_freed_memory`); glibc's malloc keeps most of it
/// behind the few long-lived objects made at the same time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose, cli.log_format);
    let invocation = match context::invocation(&cli) {
        Ok(i) => i,
        Err(e) => return fail(&e),
    };
    let outcome = match cli.command {
        Command::Local(c) => local::run(c, &invocation),
        Command::Replication(c) => replication::run(c, &invocation),
        Command::Search(c) => search::run(c, &invocation),
        Command::Proof(c) => proof::run(c, &invocation),
        Command::Host(c) => host::run(c, &invocation),
        Command::Operate(c) => status::run(c, &invocation),
        Command::Tool(c) => tools::run(c),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}

fn fail(error: &anyhow::Error) -> ExitCode {
    eprintln!("fschain: error: {error:#}");
    ExitCode::from(2)
}

fn init_tracing(verbose: u8, format: LogFormat) {
    let default = match verbose {
        // qdrant-edge warns about internals it never set up in process.
        0 => "warn,qdrant_edge=error",
        1 => "debug,qdrant_edge=warn",
        _ => "trace",
    };
    // fschain closes its group consumers itself (`close_consumer`), and
    // rdkafka's drop then tries again and logs that it could not.
    let double_close = "rdkafka::consumer::base_consumer=off"
        .parse()
        .expect("a valid directive");
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default))
        .add_directive(double_close);
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().with_current_span(false).init(),
    }
}
