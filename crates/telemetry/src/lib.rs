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
