//! `portwatch`: the admin CLI of portwatch (multi-region TCP port monitoring).
//!
//! It talks to the coordinator's `AdminService` over TLS and prints aligned
//! tables for people or JSON for scripts. Exit codes: 0 done, 1 the coordinator
//! refused or found nothing, 2 usage or bad input, 3 cannot reach the
//! coordinator, 130 interrupted (see `error.rs`). Nothing received from the network, a file or
//! the user is unwrapped: every failure becomes a message and an exit code.

mod apply;
mod cli;
mod client;
mod commands;
mod error;
mod help;
mod names;
mod output;
mod views;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // clap prints usage errors itself and exits 2 (0 for --help/--version).
    let cli = cli::Cli::parse();
    // rustls needs exactly one process-wide crypto provider; ring is the stack's.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portwatch: cannot start the async runtime: {e}");
            return ExitCode::from(error::Failure::Refused.code());
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.message.is_empty() {
                eprintln!("portwatch: {e}");
            }
            e.exit_code()
        }
    }
}
