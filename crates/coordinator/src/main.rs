//! `portwatch-coordinator`: holds the monitors, ingests results from probe
//! agents, decides with the multi-region consensus rule whether a port is down,
//! opens and closes incidents, and serves the admin API. `backup`, `restore`
//! and `verify` work on a stopped coordinator's store.
//!
//! Exit status: 0 done; 1 failed (the message says why); 2 bad configuration;
//! 3 the store is damaged (restore it from a backup). A stop (SIGTERM, Ctrl-C)
//! always ends within [`SHUTDOWN_BOUND`], even if the store stopped responding:
//! signals are handled on a thread of their own, outside the runtime whose
//! threads a stuck store call could hold.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use portwatch_coordinator::config::{Args, Config, LogFormat, StoreCommand};
use portwatch_coordinator::store::StoreError;
use portwatch_coordinator::store::backup::{self, BackupError};
use tokio_util::sync::CancellationToken;

/// Longest a stop may take before the process exits without waiting further
/// (systemd's `TimeoutStopSec` is 30 s). Nothing acknowledged is at risk: a
/// result is acknowledged only after it was flushed.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(25);
/// How long the runtime waits for its tasks once `run` returned.
const RUNTIME_WAIT: Duration = Duration::from_secs(3);
/// Exit status for a damaged store.
const DAMAGED: u8 = 3;

/// The command line: the configuration flags, and `--man`.
#[derive(Parser, Debug)]
#[command(
    name = "portwatch-coordinator",
    version,
    about = "portwatch coordinator: monitors, results, consensus, incidents, notifications",
    long_about = "portwatch coordinator: holds tenants, regions and monitors, assigns monitors \
                  to probe agents, stores their results, decides with the multi-region \
                  consensus rule whether a port is down, opens and closes incidents, notifies, \
                  and serves the admin API.\n\n\
                  Configuration comes from a TOML file (--config) and from a flag or an \
                  environment variable for every key (they win over the file)."
)]
struct Cli {
    #[command(flatten)]
    args: Args,
    /// Print the man page (roff) on stdout and exit.
    #[arg(long)]
    man: bool,
}

/// What the man page says beyond the flags.
const MAN: portwatch_manpage::Extras<'static> = portwatch_manpage::Extras {
    section: "8",
    exit_status: &[
        (
            "0",
            "stopped on SIGTERM or SIGINT after finishing what it was doing",
        ),
        (
            "1",
            "could not start or keep running: the store cannot be opened (another \
             coordinator uses the data_dir, a corrupt store), the address is in use, a \
             certificate cannot be read",
        ),
        (
            "2",
            "bad configuration: the message names the key and the reason",
        ),
        (
            "3",
            "the store is damaged: restore it from a backup (portwatch-coordinator restore)",
        ),
    ],
    environment: &[(
        "NO_COLOR",
        "set (to anything but the empty string): no ANSI colours in logs, even on a \
         terminal. Logs are never coloured when stderr is not a terminal.",
    )],
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.man {
        return match portwatch_manpage::render(Cli::command(), &MAN) {
            Ok(page) => {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                match out.write_all(&page).and_then(|()| out.flush()) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("portwatch-coordinator: writing the man page: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Err(e) => {
                eprintln!("portwatch-coordinator: rendering the man page: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let args = cli.args;
    if let Some(command) = args.command.clone() {
        return store_command(command);
    }
    let config = match Config::load(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("portwatch-coordinator: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) =
        portwatch_telemetry::init_logs(&config.log, config.log_format == LogFormat::Json)
    {
        eprintln!("portwatch-coordinator: config: {e}");
        return ExitCode::from(2);
    }
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        eprintln!("portwatch-coordinator: a TLS crypto provider was already installed");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portwatch-coordinator: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    if let Err(e) = watch_signals(shutdown.clone()) {
        eprintln!("portwatch-coordinator: starting the signal thread: {e}");
        return ExitCode::FAILURE;
    }
    let data_dir = config.data_dir.clone();
    let code = runtime.block_on(async {
        match portwatch_coordinator::server::run(config, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => failed(&e, &data_dir),
        }
    });
    runtime.shutdown_timeout(RUNTIME_WAIT);
    code
}

/// The message and status for a failed run: a damaged store says what to do.
fn failed(e: &anyhow::Error, data_dir: &Path) -> ExitCode {
    let damaged = e
        .chain()
        .filter_map(|c| c.downcast_ref::<StoreError>())
        .any(StoreError::is_damage);
    eprintln!("portwatch-coordinator: {e:#}");
    if !damaged || data_dir.as_os_str().is_empty() {
        return ExitCode::FAILURE;
    }
    let d = data_dir.display();
    eprintln!(
        "portwatch-coordinator: the store in {d} is damaged and was not used. Restore it from \
         a backup:\n  mv {d} {d}.damaged\n  portwatch-coordinator restore --in BACKUP_FILE \
         --data-dir {d}\nthen start the coordinator again (README: \"Backup and restore\"). \
         Agents keep their results in their spools meanwhile."
    );
    ExitCode::from(DAMAGED)
}

/// SIGTERM or Ctrl-C cancels `shutdown`, as does the coordinator itself when
/// it stops on its own; from then on the process has [`SHUTDOWN_BOUND`] to
/// finish. Runs on a thread with a runtime of its own, so that a store call
/// stuck on every worker of the main runtime cannot keep a stop from working.
fn watch_signals(shutdown: CancellationToken) -> std::io::Result<()> {
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("portwatch-signals".into())
        .spawn(move || {
            signals.block_on(async {
                tokio::select! {
                    () = portwatch_telemetry::cancel_on_signal(shutdown.clone()) => {}
                    () = shutdown.cancelled() => {}
                }
            });
            std::thread::sleep(SHUTDOWN_BOUND);
            eprintln!(
                "portwatch-coordinator: the stop did not finish within {} s (the store is not \
                 responding); exiting without waiting for it. Nothing acknowledged is lost: \
                 results are acknowledged only once flushed",
                SHUTDOWN_BOUND.as_secs()
            );
            std::process::exit(1);
        })?;
    Ok(())
}

/// `backup`, `restore`, `verify`.
fn store_command(command: StoreCommand) -> ExitCode {
    let result = match &command {
        StoreCommand::Backup { data_dir, out } => backup::backup(data_dir, out)
            .map(|s| format!("backup: {} -> {}: {s}", data_dir.display(), out.display())),
        StoreCommand::Restore { input, data_dir } => backup::restore(input, data_dir).map(|s| {
            format!(
                "restore: {} -> {}: {s}",
                input.display(),
                data_dir.display()
            )
        }),
        StoreCommand::Verify { input } => {
            backup::verify(input).map(|s| format!("verify: {} is intact: {s}", input.display()))
        }
    };
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portwatch-coordinator: {e}");
            let damaged = matches!(&e, BackupError::Store { source, .. } if source.is_damage());
            if damaged {
                ExitCode::from(DAMAGED)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
