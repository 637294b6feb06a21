//! What both daemons share for operating them: `/metrics` in the Prometheus
//! text format and the tracing subscriber set-up (human or JSON logs).
//!
//! Logs go to stderr. Human logs carry ANSI colours only when stderr is a
//! terminal and `NO_COLOR` is unset or empty (<https://no-color.org>): a file,
//! a pipe or journald gets plain text.

pub mod metrics_http;

use std::ffi::OsStr;
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global tracing subscriber writing to stderr.
/// `filter` is an env-filter directive ("info", "portwatch_agent=debug").
pub fn init_logs(filter: &str, json: bool) -> Result<(), String> {
    let filter = EnvFilter::try_new(filter).map_err(|e| format!("log: {e}"))?;
    let ansi = colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let result = if json {
        subscriber.json().try_init()
    } else {
        subscriber.try_init()
    };
    result.map_err(|e| format!("log: {e}"))
}

/// Whether logs get ANSI colours: on a terminal, unless `NO_COLOR` is set to
/// anything but the empty string.
pub fn colour(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(OsStr::is_empty)
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

/// Parses the `log_format` key: `None`/"human" is false, "json" is true.
pub fn json_logs(format: Option<&str>) -> Result<bool, String> {
    match format {
        None | Some("human") => Ok(false),
        Some("json") => Ok(true),
        Some(other) => Err(format!("{other:?}; must be human or json")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        let set = Some(OsStr::new("1"));
        let empty = Some(OsStr::new(""));
        assert!(colour(true, None));
        assert!(colour(true, empty), "an empty NO_COLOR does not count");
        assert!(!colour(true, set));
        assert!(!colour(false, None), "a file, a pipe or journald");
        assert!(!colour(false, set));
    }
}
