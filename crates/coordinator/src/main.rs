//! `portwatch-coordinator`: holds the monitors, ingests results from probe
//! agents, decides with the multi-region consensus rule whether a port is down,
//! opens and closes incidents, and serves the admin API.

use std::process::ExitCode;

use clap::Parser;
use portwatch_coordinator::config::{Args, Config, LogFormat};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let config = match Config::load(Args::parse()) {
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
