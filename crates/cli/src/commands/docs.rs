//! `portwatch completions SHELL` and `portwatch man`: generated from the clap
//! definition itself, so they can never disagree with what the binary accepts.

use std::path::Path;

use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs, ManArgs};
use crate::error::{CliError, Result};

pub fn completions(a: CompletionsArgs) -> Result<()> {
    let mut cmd = Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "portwatch", &mut buf);
    crate::output::print(&String::from_utf8_lossy(&buf))
}

fn render(cmd: clap::Command) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut buf)
        .map_err(|e| CliError::refused(format!("rendering the man page: {e}")))?;
    Ok(buf)
}

pub fn man(a: ManArgs) -> Result<()> {
    let cmd = Cli::command();
    match a.dir {
        None => crate::output::print(&String::from_utf8_lossy(&render(cmd)?)),
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .map_err(|e| CliError::usage(format!("--dir: {}: {e}", dir.display())))?;
            // One page per command and subcommand: portwatch.1, portwatch-monitor-add.1, ...
            clap_mangen::generate_to(cmd, &dir)
                .map_err(|e| CliError::usage(format!("--dir: {}: {e}", dir.display())))?;
            let mut pages: Vec<String> = std::fs::read_dir(&dir)
                .map_err(|e| CliError::usage(format!("--dir: {}: {e}", dir.display())))?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| is_page(p))
                .map(|p| p.display().to_string())
                .collect();
            pages.sort();
            for p in pages {
                crate::output::line(&p)?;
            }
            Ok(())
        }
    }
}

fn is_page(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "1")
        && p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("portwatch"))
}
