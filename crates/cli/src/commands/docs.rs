//! `portwatch completions SHELL` and `portwatch man`: generated from the clap
//! definition itself, so they can never disagree with what the binary accepts.
//!
//! The man pages add EXIT STATUS and ENVIRONMENT (`portwatch-manpage`). The
//! bash script adds monitor-name completion (`completion.rs`).

use clap::CommandFactory;
use clap_complete::Shell;

use super::completion;
use crate::cli::{Cli, CompletionsArgs, ManArgs};
use crate::error::{CliError, Result};
use crate::help;

/// What every `portwatch` page says beyond the flags.
const EXTRAS: portwatch_manpage::Extras<'static> = portwatch_manpage::Extras {
    section: "1",
    exit_status: help::EXIT_STATUS,
    environment: help::ENVIRONMENT,
};

pub fn completions(a: CompletionsArgs) -> Result<()> {
    let mut cmd = Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "portwatch", &mut buf);
    let mut script = String::from_utf8_lossy(&buf).into_owned();
    if a.shell == Shell::Bash {
        script.push_str(completion::BASH_MONITOR_NAMES);
    }
    crate::output::print(&script)
}

pub fn man(a: ManArgs) -> Result<()> {
    let cmd = Cli::command();
    match a.dir {
        None => {
            let page = portwatch_manpage::render(cmd, &EXTRAS)
                .map_err(|e| CliError::refused(format!("rendering the man page: {e}")))?;
            crate::output::print(&String::from_utf8_lossy(&page))
        }
        Some(dir) => {
            let fail =
                |e: std::io::Error| CliError::usage(format!("--dir: {}: {e}", dir.display()));
            std::fs::create_dir_all(&dir).map_err(fail)?;
            // One page per command and subcommand: portwatch.1, portwatch-monitor-add.1, ...
            let pages = portwatch_manpage::generate_to(cmd, &dir, &EXTRAS).map_err(fail)?;
            for p in pages {
                crate::output::line(&p.display().to_string())?;
            }
            Ok(())
        }
    }
}
