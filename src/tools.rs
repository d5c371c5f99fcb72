//! For packagers: shell completions and man pages, generated from the
//! command line's own definition so they never drift from it.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::cli::{Cli, ToolCommand};

pub(crate) fn run(command: ToolCommand) -> Result<ExitCode> {
    match command {
        ToolCommand::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "fschain",
                &mut std::io::stdout(),
            );
        }
        ToolCommand::Man { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let written = man_pages(&Cli::command(), "fschain", &dir)?;
            println!("{written} man pages written to {}", dir.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `NAME.1` for `command` and `NAME-SUB.1` for each subcommand, recursively.
fn man_pages(command: &clap::Command, name: &str, dir: &Path) -> Result<usize> {
    let command = command.clone().name(name.to_owned());
    let path = dir.join(format!("{name}.1"));
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone())
        .render(&mut page)
        .with_context(|| format!("rendering {}", path.display()))?;
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    let mut written = 1;
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
        written += man_pages(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(written)
}
