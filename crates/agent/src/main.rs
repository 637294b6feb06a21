//! `portwatch-agent`: the probe agent.
//!
//! `portwatch-agent check HOST PORT` runs one check now, from this machine, and
//! prints it like `nc -zv` with the outcome, the reason, the address and the
//! timings: the spec's "first steps when a port monitor fails" tool.

mod check_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "portwatch-agent", version, about = "portwatch probe agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check one host:port now and print the result (exit 0 = reachable).
    Check(check_cmd::CheckArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portwatch-agent: cannot start the async runtime: {e}");
            return ExitCode::from(check_cmd::EXIT_USAGE);
        }
    };
    match cli.command {
        Command::Check(args) => runtime.block_on(check_cmd::run(args)),
    }
}
