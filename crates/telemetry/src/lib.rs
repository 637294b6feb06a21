//! What both daemons share for operating them: `/metrics` in the Prometheus
//! text format and the tracing subscriber set-up (human or JSON logs).

pub mod metrics_http;

use tracing_subscriber::EnvFilter;

/// Installs the global tracing subscriber writing to stderr.
/// `filter` is an env-filter directive ("info", "portwatch_agent=debug").
pub fn init_logs(filter: &str, json: bool) -> Result<(), String> {
    let filter = EnvFilter::try_new(filter).map_err(|e| format!("log: {e}"))?;
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if json {
        subscriber.json().try_init()
    } else {
        subscriber.try_init()
    };
    result.map_err(|e| format!("log: {e}"))
}

/// Cancels `shutdown` on SIGTERM or SIGINT (Ctrl-C): both daemons drain softly.
pub async fn cancel_on_signal(shutdown: tokio_util::sync::CancellationToken) {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    tracing::info!("signal received; shutting down");
    shutdown.cancel();
}
