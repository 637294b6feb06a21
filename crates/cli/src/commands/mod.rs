//! What each subcommand does: one module per concept, each taking a connected
//! [`Client`] (or nothing, for the offline commands) and printing through
//! `output`. This module only dispatches.

mod channel;
mod completion;
mod dev;
mod docs;
mod fleet;
mod incidents;
mod maintenance;
mod monitor;
mod results;
mod routing;
mod status;
mod tenant;
#[cfg(test)]
mod tests;
mod version;
mod watch;

use crate::apply;
use crate::cli::{Cli, Command, OutputFormat};
use crate::client::Client;
use crate::error::Result;
use crate::output;

/// Runs one parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    let out = cli.output;
    let conn = cli.conn;
    match cli.command {
        // Offline: no coordinator needed.
        Command::Completions(a) => docs::completions(a),
        Command::Man(a) => docs::man(a),
        Command::DevCerts(a) => dev::certs(a, out),
        Command::DevListen(a) => dev::listen(a).await,
        // Reads and checks its file before connecting: bad input is exit 2 offline.
        Command::Apply(a) => apply::run(&conn, a, out).await,
        // Prints the CLI's own version even when the coordinator is away.
        Command::Version => version::run(&conn, out).await,
        // Everything else talks to the coordinator.
        Command::Whoami => whoami(&mut Client::connect(&conn).await?, out).await,
        Command::Monitor(m) => monitor::run(&mut Client::connect(&conn).await?, m, out).await,
        Command::Status(a) => status::run(&mut Client::connect(&conn).await?, a, out).await,
        Command::Results(a) => results::run(&mut Client::connect(&conn).await?, a, out).await,
        Command::Incidents(a) => incidents::run(&mut Client::connect(&conn).await?, a, out).await,
        Command::Routing(cmd) => routing::run(&mut Client::connect(&conn).await?, cmd, out).await,
        Command::Maintenance(cmd) => {
            maintenance::run(&mut Client::connect(&conn).await?, cmd, out).await
        }
        Command::Incident(cmd) => {
            incidents::incident(&mut Client::connect(&conn).await?, cmd, out).await
        }
        Command::Regions => fleet::regions(&mut Client::connect(&conn).await?, out).await,
        Command::Agents(a) => fleet::agents(&mut Client::connect(&conn).await?, a, out).await,
        Command::Region(r) => fleet::region(&mut Client::connect(&conn).await?, r, out).await,
        Command::AgentToken(t) => {
            fleet::agent_token(&mut Client::connect(&conn).await?, t, out).await
        }
        Command::Channel(ch) => channel::run(&mut Client::connect(&conn).await?, ch, out).await,
        Command::Tenant(t) => tenant::run(&mut Client::connect(&conn).await?, t, out).await,
        Command::Watch(a) => watch::run(&mut Client::connect(&conn).await?, a, out).await,
    }
}

async fn whoami(c: &mut Client, out: OutputFormat) -> Result<()> {
    let who = c
        .admin
        .who_am_i(portwatch_proto::v1::WhoAmIRequest {})
        .await?
        .into_inner();
    let v = serde_json::json!({ "operator": who.operator, "tenant_id": who.tenant_id });
    match out {
        OutputFormat::Json => output::json(&v),
        OutputFormat::Table if who.operator => output::line("operator"),
        OutputFormat::Table => output::line(&format!("tenant {}", who.tenant_id)),
    }
}
