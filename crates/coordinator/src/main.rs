//! `portwatch-coordinator`: holds the monitors, ingests results from probe
//! agents, decides with the multi-region consensus rule whether a port is down,
//! opens and closes incidents, and serves the admin API.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use portwatch_coordinator::config::{Args, Config, LogFormat};
use tokio_util::sync::CancellationToken;

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
    let config = match Config::load(cli.args) {
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
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(portwatch_telemetry::cancel_on_signal(shutdown.clone()));
        match portwatch_coordinator::server::run(config, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("portwatch-coordinator: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}
