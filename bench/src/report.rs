//! The figures of one run: printed as they come, and written as the one
//! table of `docs/performance.md` with `--markdown`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

/// One figure beside its same-run baseline.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) what: String,
    pub(crate) fschain: String,
    pub(crate) baseline: String,
    pub(crate) target: String,
    /// Whether the target is met, where it is a number to meet.
    pub(crate) met: Option<bool>,
}

/// The rows of one run, by section, and the command that printed them.
#[derive(Debug, Default)]
pub(crate) struct Report {
    sections: Vec<(String, String, Vec<Row>)>,
}

impl Report {
    /// Starts a section; `command` is how to print its figures again.
    pub(crate) fn section(&mut self, title: &str, command: &str) {
        println!("\n{title}   ({command})");
        self.sections
            .push((title.to_owned(), command.to_owned(), Vec::new()));
    }

    pub(crate) fn row(&mut self, row: Row) {
        let met = match row.met {
            Some(true) => " [met]",
            Some(false) => " [NOT met]",
            None => "",
        };
        println!(
            "  {:<52} {:<22} baseline: {}   target: {}{met}",
            row.what, row.fschain, row.baseline, row.target
        );
        if self.sections.is_empty() {
            self.sections.push(Default::default());
        }
        if let Some(last) = self.sections.last_mut() {
            last.2.push(row);
        }
    }

    /// A note under the current section (printed only).
    pub(crate) fn note(&self, text: &str) {
        println!("    {text}");
    }

    /// Writes the table: one per run, with the date, the machine and the
    /// command beside every section.
    pub(crate) fn write_markdown(&self, path: &Path, invocation: &str) -> Result<()> {
        let mut out = String::new();
        out.push_str("# Performance\n\n");
        out.push_str(
            "Written by `fschain-bench --markdown docs/performance.md`; do not edit by hand.\n\
             Every figure is beside a baseline timed in the same run, on the same machine.\n\n",
        );
        let _ = writeln!(out, "- date: {}", now_utc());
        let _ = writeln!(out, "- machine: {}", machine());
        let _ = writeln!(out, "- command: `{invocation}`\n");
        out.push_str("| what | fschain | baseline (same run) | target | met | command |\n");
        out.push_str("|---|---|---|---|---|---|\n");
        for (title, command, rows) in &self.sections {
            for row in rows {
                let met = match row.met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "–",
                };
                let _ = writeln!(
                    out,
                    "| {title}: {} | {} | {} | {} | {met} | `{command}` |",
                    cell(&row.what),
                    cell(&row.fschain),
                    cell(&row.baseline),
                    cell(&row.target)
                );
            }
        }
        out.push('\n');
        out.push_str(TRIED);
        std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
    }
}

/// What was tried and dropped, kept with the bench's source.
const TRIED: &str = include_str!("../tried.md");

fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

fn now_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Cores, memory and kernel, as `nproc`, /proc/meminfo and uname tell.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0.0, |kb| kb as f64 / (1024.0 * 1024.0));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores, {mem_gib:.0} GiB, Linux {}, loop-mounted btrfs",
        kernel.trim()
    )
}
