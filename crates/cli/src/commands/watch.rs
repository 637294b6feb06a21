//! `portwatch watch`: the live event stream (incidents opened, flapping and closed,
//! region state changes, probe regions going offline or online), one line per
//! event, until Ctrl-C (exit 130) or until the coordinator ends the stream
//! (exit 3, saying the coordinator went away).
//!
//! With `--output json` each event is one compact JSON object per line (JSON
//! Lines), so `portwatch watch -o json | jq` works as a stream.

use std::collections::HashMap;

use portwatch_proto::v1;
use portwatch_proto::v1::event::Kind;

use crate::cli::{OutputFormat, WatchArgs};
use crate::client::Client;
use crate::error::{CliError, Result};
use crate::names;
use crate::output;
use crate::views;

use crate::output::target;

pub async fn run(c: &mut Client, a: WatchArgs, out: OutputFormat) -> Result<()> {
    let monitor_id = match &a.monitor {
        Some(key) => c.find_monitor(key).await?.id,
        None => String::new(),
    };
    // Names for region-state lines, which carry only the monitor id. The
    // operator without --tenant has no monitor list; ids are shown then.
    let names_by_id: HashMap<String, String> = c
        .all_monitors()
        .await
        .map(|ms| ms.into_iter().map(|m| (m.id, m.name)).collect())
        .unwrap_or_default();
    let mut stream = c
        .admin
        .watch_events(v1::WatchEventsRequest {
            tenant_id: c.tenant.clone(),
            monitor_id,
        })
        .await?
        .into_inner();
    // On stderr, so stdout stays pure JSON Lines; printed once subscribed, so
    // every event from here on is seen.
    eprintln!("watching events; Ctrl-C to stop");
    loop {
        let next = tokio::select! {
            m = stream.message() => m,
            // Exit 130, as a shell reports a command ended by Ctrl-C.
            _ = tokio::signal::ctrl_c() => return Err(CliError::interrupted()),
        };
        let event = match next {
            Ok(Some(event)) => event,
            Ok(None) => {
                return Err(CliError::connect(
                    "the coordinator ended the event stream (it is stopping or restarting); \
                     run watch again",
                ));
            }
            Err(status) => return Err(lost(status)),
        };
        match out {
            OutputFormat::Json => {
                let text = serde_json::to_string(&views::event(&event))
                    .map_err(|e| CliError::refused(format!("encoding JSON: {e}")))?;
                output::line(&text)?;
            }
            OutputFormat::Table => output::line(&describe(&event, &names_by_id))?,
        }
    }
}

/// An error on an established event stream. A transport failure here means
/// the coordinator went away (it stopped, restarted or the network broke), not
/// a TLS or mTLS problem: the stream was already working.
fn lost(status: tonic::Status) -> CliError {
    match std::error::Error::source(&status) {
        Some(cause) => CliError::connect(format!(
            "lost the connection to the coordinator during watch (it stopped, restarted \
             or the network failed): {}",
            crate::error::chain(cause)
        )),
        None if status.code() == tonic::Code::Unavailable => CliError::connect(format!(
            "the coordinator became unavailable during watch: {}",
            status.message()
        )),
        None => CliError::from(status),
    }
}

/// One event as a line of text.
pub fn describe(e: &v1::Event, names_by_id: &HashMap<String, String>) -> String {
    let at = output::ts(e.at.as_ref());
    match &e.kind {
        Some(Kind::IncidentOpened(i)) if i.slow => format!(
            "{at}  SLOW  {} ({})  {}  {}",
            i.monitor_name,
            target(&i.host, i.port),
            i.reason_text,
            i.id
        ),
        Some(Kind::IncidentClosed(i)) if i.slow => format!(
            "{at}  NO LONGER SLOW  {} ({})  {}",
            i.monitor_name,
            target(&i.host, i.port),
            i.id
        ),
        Some(Kind::IncidentOpened(i)) => {
            let down: Vec<String> = i
                .open_evidence
                .iter()
                .filter(|ev| ev.state == v1::RegionState::Down as i32)
                .map(|ev| format!("{} {}", ev.region, names::text(names::outcome(ev.outcome))))
                .collect();
            format!(
                "{at}  INCIDENT OPENED  {} ({})  {}  [{}]  {}",
                i.monitor_name,
                target(&i.host, i.port),
                i.reason_text,
                down.join(", "),
                i.id
            )
        }
        Some(Kind::IncidentClosed(i)) => format!(
            "{at}  INCIDENT CLOSED  {} ({})  reachable again  {}",
            i.monitor_name,
            target(&i.host, i.port),
            i.id
        ),
        Some(Kind::IncidentFlapping(i)) => format!(
            "{at}  INCIDENT FLAPPING  {} ({})  held open until stable  {}",
            i.monitor_name,
            target(&i.host, i.port),
            i.id
        ),
        Some(Kind::IncidentAcknowledged(i)) => format!(
            "{at}  INCIDENT ACKNOWLEDGED  {} ({})  by {}  {}",
            i.monitor_name,
            target(&i.host, i.port),
            i.acknowledged_by,
            i.id
        ),
        Some(Kind::RegionState(c)) => {
            let name = names_by_id
                .get(&c.monitor_id)
                .cloned()
                .unwrap_or_else(|| c.monitor_id.clone());
            let outcome = names::outcome(c.outcome).unwrap_or("no result");
            let why = if c.detail.is_empty() {
                outcome.to_string()
            } else {
                format!("{outcome}: {}", c.detail)
            };
            format!(
                "{at}  region {}  {}  {} -> {}  ({why})",
                c.region,
                name,
                names::text(names::region_state(c.from)),
                names::text(names::region_state(c.to))
            )
        }
        Some(Kind::ProbeRegion(p)) => format!(
            "{at}  probe region {} {}",
            p.region,
            if p.online { "online" } else { "OFFLINE" }
        ),
        None => format!("{at}  (an event this CLI does not know)"),
    }
}
