//! `portwatch status`: every monitor on one line, with a mark per region
//! (✓ up, ✗ down, ? unknown) and the open incident, if any.
//!
//! One `GetMonitorStatus` per monitor: the coordinator computes the state with
//! the same consensus rule that opens incidents, so what is shown here is
//! exactly what would page someone.

use portwatch_proto::v1;
use serde_json::Value;

use crate::cli::{OutputFormat, StatusArgs};
use crate::client::Client;
use crate::error::Result;
use crate::names;
use crate::output::{self, Table};
use crate::views;

use crate::output::target;

pub async fn run(c: &mut Client, a: StatusArgs, out: OutputFormat) -> Result<()> {
    let monitors = c.monitors_tagged(a.tag.as_deref().unwrap_or("")).await?;
    let mut statuses = Vec::with_capacity(monitors.len());
    for m in &monitors {
        let s = c
            .admin
            .get_monitor_status(v1::GetMonitorStatusRequest {
                tenant_id: c.tenant.clone(),
                id: m.id.clone(),
            })
            .await?
            .into_inner();
        statuses.push(s);
    }
    let v = Value::Array(statuses.iter().map(views::status).collect());
    output::either(out, &v, &table(&statuses), "no monitors")
}

/// One line per monitor: name, target, overall state, a mark per region.
pub fn table(statuses: &[v1::MonitorStatus]) -> Table {
    let mut t = Table::new(&["NAME", "TARGET", "STATE", "REGIONS", "INCIDENT", "ID"]);
    for s in statuses {
        let m = s.monitor.clone().unwrap_or_default();
        let marks = s
            .regions
            .iter()
            .map(|r| format!("{} {}", r.region, names::region_mark(r.state)))
            .collect::<Vec<_>>()
            .join("  ");
        t.row(vec![
            m.name.clone(),
            target(&m.host, m.port),
            names::text(names::overall(s.overall)).to_string(),
            marks,
            s.open_incident_id.clone(),
            m.id.clone(),
        ]);
    }
    t
}
