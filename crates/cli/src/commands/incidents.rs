//! `portwatch incidents [--open]`: incidents newest first, with the regions that
//! were down when each opened and how long it lasted.

use std::time::SystemTime;

use portwatch_proto::v1;
use serde_json::Value;

use crate::cli::{IncidentCmd, IncidentsArgs, OutputFormat};
use crate::client::Client;
use crate::error::Result;
use crate::names;
use crate::output::{self, Table};
use crate::views;

use crate::output::target;

pub async fn run(c: &mut Client, a: IncidentsArgs, out: OutputFormat) -> Result<()> {
    let monitor_id = match &a.monitor {
        Some(key) => c.find_monitor(key).await?.id,
        None => String::new(),
    };
    let mut incidents = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = c
            .admin
            .list_incidents(v1::ListIncidentsRequest {
                tenant_id: c.tenant.clone(),
                monitor_id: monitor_id.clone(),
                open_only: a.open,
                page_size: 1000,
                page_token: page_token.clone(),
            })
            .await?
            .into_inner();
        incidents.extend(page.incidents);
        let enough = a.limit > 0 && incidents.len() >= a.limit;
        if enough || page.next_page_token.is_empty() || page.next_page_token == page_token {
            break;
        }
        page_token = page.next_page_token;
    }
    if a.limit > 0 {
        incidents.truncate(a.limit);
    }
    let t = table(&incidents, SystemTime::now());
    let v = Value::Array(incidents.iter().map(views::incident).collect());
    let empty = if a.open {
        "no open incidents"
    } else {
        "no incidents"
    };
    output::either(out, &v, &t, empty)
}

/// `incident show ID` and `incident ack ID [--note …]`.
pub async fn incident(c: &mut Client, cmd: IncidentCmd, out: OutputFormat) -> Result<()> {
    let i = match cmd {
        IncidentCmd::Show { id } => c
            .admin
            .get_incident(v1::GetIncidentRequest {
                tenant_id: c.tenant.clone(),
                id,
            })
            .await?
            .into_inner(),
        IncidentCmd::Ack { id, note } => {
            c.admin
                .acknowledge_incident(v1::AcknowledgeIncidentRequest {
                    tenant_id: c.tenant.clone(),
                    id: id.clone(),
                    note: note.unwrap_or_default(),
                })
                .await?;
            // Read back with its timeline.
            c.admin
                .get_incident(v1::GetIncidentRequest {
                    tenant_id: c.tenant.clone(),
                    id,
                })
                .await?
                .into_inner()
        }
    };
    match out {
        OutputFormat::Json => output::json(&views::incident(&i)),
        OutputFormat::Table => output::print(&show_text(&i)),
    }
}

/// "acknowledged by … at …: note" and a newline; empty when nobody did.
pub fn acknowledged_line(i: &v1::Incident) -> String {
    if i.acknowledged_at.is_none() {
        return String::new();
    }
    let note = if i.acknowledged_note.is_empty() {
        String::new()
    } else {
        format!(": {}", i.acknowledged_note)
    };
    format!(
        "acknowledged by {} at {}{note}\n",
        i.acknowledged_by,
        output::ts(i.acknowledged_at.as_ref())
    )
}

/// What an open incident asks of the reader: who acknowledged it, and what to
/// try first.
pub fn attention(i: &v1::Incident) -> String {
    let mut s = acknowledged_line(i);
    if !i.first_steps.is_empty() {
        s.push_str("what to try first:\n");
        for step in &i.first_steps {
            s.push_str(&format!("  - {step}\n"));
        }
    }
    s
}

/// One incident for people: the facts, the first steps, the timeline.
pub fn show_text(i: &v1::Incident) -> String {
    let mut s = format!(
        "{}  {}  {}  {}\nreason: {}   opened: {}   closed: {}\n",
        i.id,
        i.monitor_name,
        target(&i.host, i.port),
        if i.closed_at.is_none() {
            "OPEN"
        } else {
            "closed"
        },
        if i.reason_text.is_empty() {
            names::outcome_text(i.reason).to_string()
        } else {
            i.reason_text.clone()
        },
        output::ts(i.opened_at.as_ref()),
        if i.closed_at.is_none() {
            "-".to_string()
        } else {
            output::ts(i.closed_at.as_ref())
        },
    );
    if i.closed_at.is_none() {
        s.push_str(&attention(i));
    } else {
        s.push_str(&acknowledged_line(i));
    }
    let mut t = Table::new(&["AT", "WHAT", "DETAIL"]);
    for e in &i.timeline {
        t.row(vec![
            output::ts(e.at.as_ref()),
            e.kind.clone(),
            e.text.clone(),
        ]);
    }
    if !t.is_empty() {
        s.push_str("\ntimeline:\n");
        s.push_str(&t.render());
    }
    s
}

/// Incidents as a table: how long each lasted (so far), why, and where it was down.
pub fn table(incidents: &[v1::Incident], now: SystemTime) -> Table {
    let mut t = Table::new(&[
        "ID", "MONITOR", "TARGET", "STATE", "OPENED", "DURATION", "REASON", "DOWN IN",
    ]);
    for i in incidents {
        let opened = i.opened_at.as_ref().and_then(output::printable);
        // An open incident lasts until now; a close time that cannot be a date
        // gives no duration rather than a wrong one.
        let until = match i.closed_at.as_ref() {
            None => Some(now),
            Some(c) => output::printable(c),
        };
        let lasted = opened
            .zip(until)
            .and_then(|(o, u)| u.duration_since(o).ok())
            .map(output::short_duration)
            .unwrap_or_default();
        let down: Vec<&str> = i
            .open_evidence
            .iter()
            .filter(|e| e.state == v1::RegionState::Down as i32)
            .map(|e| e.region.as_str())
            .collect();
        t.row(vec![
            i.id.clone(),
            i.monitor_name.clone(),
            target(&i.host, i.port),
            if i.closed_at.is_none() {
                "open"
            } else {
                "closed"
            }
            .to_string(),
            output::ts(i.opened_at.as_ref()),
            lasted,
            if i.reason_text.is_empty() {
                names::outcome_text(i.reason).to_string()
            } else {
                i.reason_text.clone()
            },
            down.join(","),
        ]);
    }
    t
}
