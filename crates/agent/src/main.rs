//! `portwatch-agent`: the probe agent.
//!
//! - `portwatch-agent run`: the daemon (see `daemon.rs`).
//! - `portwatch-agent check HOST PORT`: one check now, printed like `nc -zv` with
//!   the outcome, the reason, the address and the timings: the spec's "first
//!   steps when a port monitor fails" tool.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use portwatch_agent::{check_cmd, config, daemon};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(name = "portwatch-agent", version, about = "portwatch probe agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the agent daemon.
    Run(Box<config::RunArgs>),
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
        Command::Run(args) => {
            let config = match config::Config::load(*args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("portwatch-agent: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Err(e) = portwatch_telemetry::init_logs(&config.log, config.log_json) {
                eprintln!("portwatch-agent: config: {e}");
                return ExitCode::from(2);
            }
            let _ = rustls::crypto::ring::default_provider().install_default();
            runtime.block_on(async {
                let shutdown = CancellationToken::new();
                tokio::spawn(portwatch_telemetry::cancel_on_signal(shutdown.clone()));
                match daemon::run(config, shutdown).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("portwatch-agent: {e:#}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
    }
}
