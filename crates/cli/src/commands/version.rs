//! `portwatch version`: this CLI's version and the coordinator's (from
//! `WhoAmI`), so a bug report names both. The CLI's line is printed even when
//! the coordinator cannot be reached; the exit code then says why (1, 2 or 3).

use portwatch_proto::v1;
use serde_json::{Value, json};

use crate::cli::{ConnectArgs, OutputFormat};
use crate::client::Client;
use crate::error::{CliError, Result};
use crate::output;

/// This CLI's version (the workspace's).
pub const CLI_VERSION: &str = env!("CARGO_PKG_VERSION");

pub async fn run(conn: &ConnectArgs, out: OutputFormat) -> Result<()> {
    let coordinator = coordinator_version(conn).await;
    match out {
        OutputFormat::Json => output::json(&json!({
            "cli": CLI_VERSION,
            "coordinator": match &coordinator {
                Ok(v) if !v.is_empty() => Value::from(v.as_str()),
                _ => Value::Null,
            },
            "addr": conn.addr,
        }))?,
        OutputFormat::Table => {
            output::line(&format!("portwatch {CLI_VERSION} (this CLI)"))?;
            match &coordinator {
                Ok(v) if v.is_empty() => output::line(&format!(
                    "coordinator at {}: version not reported (older than this CLI)",
                    conn.addr
                ))?,
                Ok(v) => output::line(&format!("portwatch-coordinator {v} at {}", conn.addr))?,
                Err(_) => {}
            }
        }
    }
    coordinator
        .map(drop)
        .map_err(|e| e.context("the coordinator's version"))
}

async fn coordinator_version(conn: &ConnectArgs) -> Result<String> {
    let mut c = Client::connect(conn).await?;
    let who = c
        .admin
        .who_am_i(v1::WhoAmIRequest {})
        .await
        .map_err(CliError::from)?
        .into_inner();
    Ok(who.coordinator_version)
}
