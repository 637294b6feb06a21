//! `portwatch-agent`: the probe agent.
//!
//! - `portwatch-agent run`: the daemon (see `daemon.rs`).
//! - `portwatch-agent check HOST PORT`: one check now, printed like `nc -zv` with
//!   the outcome, the reason, the address and the timings: the first step
//!   when a port monitor fails (DESIGN.md, "Requirements").

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use portwatch_agent::{check_cmd, config, daemon};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "portwatch-agent",
    version,
    about = "portwatch probe agent",
    long_about = "portwatch probe agent: `run` is the daemon on each regional VM (checks its \
                  assigned monitors on an aligned schedule, keeps every result in a local \
                  durable spool, streams them to the coordinator); `check` checks one \
                  host:port now, like `nc -zv`, with the reason and the timings."
)]
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
    /// Print the man page, or write one page per command into a directory.
    Man {
        /// Write portwatch-agent.8, portwatch-agent-run.8 and portwatch-agent-check.8 here.
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
}

/// What the man pages say beyond the flags.
const MAN: portwatch_manpage::Extras<'static> = portwatch_manpage::Extras {
    section: "8",
    exit_status: &[
        (
            "0",
            "run: stopped on SIGTERM or SIGINT after draining (checks in flight finished, \
             the spool flushed and sent); check: the port is reachable",
        ),
        (
            "1",
            "run: could not start or keep running (another agent uses the data_dir, the \
             spool cannot be written, the metrics address is in use); check: the target \
             failed (refused, timed out, DNS failed, unreachable)",
        ),
        (
            "2",
            "run: bad configuration, the message names the key; check: blocked (a \
             non-public address), a probe error, or bad input",
        ),
    ],
    environment: &[(
        "NO_COLOR",
        "set (to anything but the empty string): no ANSI colours in logs, even on a \
         terminal. Logs are never coloured when stderr is not a terminal.",
    )],
};

/// `portwatch-agent man [--dir DIR]`.
fn man(dir: Option<std::path::PathBuf>) -> ExitCode {
    use std::io::Write;
    let result = match &dir {
        None => portwatch_manpage::render(Cli::command(), &MAN).and_then(|page| {
            let mut out = std::io::stdout().lock();
            out.write_all(&page).and_then(|()| out.flush())
        }),
        Some(dir) => std::fs::create_dir_all(dir)
            .and_then(|()| portwatch_manpage::generate_to(Cli::command(), dir, &MAN))
            .map(|pages| {
                for p in pages {
                    println!("{}", p.display());
                }
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            let at = dir
                .map(|d| format!(" in {}", d.display()))
                .unwrap_or_default();
            eprintln!("portwatch-agent: man{at}: {e}");
            ExitCode::from(check_cmd::EXIT_USAGE)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Man { dir } = cli.command {
        return man(dir);
    }
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
        Command::Man { .. } => ExitCode::SUCCESS,
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
