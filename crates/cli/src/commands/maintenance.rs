//! `portwatch maintenance add|list|rm`: windows during which nobody is
//! notified about the monitors they cover (`monitor mute` makes a one-off
//! window for one monitor).

use portwatch_proto::time::to_timestamp;
use portwatch_proto::v1;
use serde_json::{Value, json};

use crate::cli::{MaintenanceAdd, MaintenanceCmd, OutputFormat};
use crate::client::Client;
use crate::error::{CliError, Result};
use crate::output::{self, Table};
use crate::views;

pub async fn run(c: &mut Client, cmd: MaintenanceCmd, out: OutputFormat) -> Result<()> {
    match cmd {
        MaintenanceCmd::Add(a) => {
            let w = window(c, a).await?;
            let w = c
                .admin
                .create_maintenance_window(v1::CreateMaintenanceWindowRequest {
                    tenant_id: c.tenant.clone(),
                    window: Some(w),
                })
                .await?
                .into_inner();
            match out {
                OutputFormat::Json => output::json(&views::maintenance_window(&w)),
                OutputFormat::Table => output::print(&table(&[w]).render()),
            }
        }
        MaintenanceCmd::List => {
            let ws = c
                .admin
                .list_maintenance_windows(v1::ListMaintenanceWindowsRequest {
                    tenant_id: c.tenant.clone(),
                })
                .await?
                .into_inner()
                .windows;
            let v = Value::Array(ws.iter().map(views::maintenance_window).collect());
            output::either(out, &v, &table(&ws), "no maintenance windows")
        }
        MaintenanceCmd::Rm { id } => {
            c.admin
                .delete_maintenance_window(v1::DeleteMaintenanceWindowRequest {
                    tenant_id: c.tenant.clone(),
                    id: id.clone(),
                })
                .await?;
            match out {
                OutputFormat::Json => output::json(&json!({ "deleted": id })),
                OutputFormat::Table => output::line(&format!("deleted maintenance window {id}")),
            }
        }
    }
}

fn rfc3339(flag: &str, s: &str) -> Result<prost_types::Timestamp> {
    humantime::parse_rfc3339_weak(s)
        .map(to_timestamp)
        .map_err(|e| CliError::usage(format!("{flag}: {s:?} is not an RFC 3339 time: {e}")))
}

/// The window the flags describe (monitor names resolved to ids).
async fn window(c: &mut Client, a: MaintenanceAdd) -> Result<v1::MaintenanceWindow> {
    let mut ids = Vec::with_capacity(a.monitors.len());
    for key in &a.monitors {
        ids.push(c.find_monitor(key).await?.id);
    }
    let mut w = v1::MaintenanceWindow {
        name: a.name.unwrap_or_default(),
        monitor_ids: ids,
        tags: a.tags,
        all_monitors: a.all,
        ..Default::default()
    };
    if let (Some(s), Some(e)) = (&a.start, &a.end) {
        w.starts_at = Some(rfc3339("--start", s)?);
        w.ends_at = Some(rfc3339("--end", e)?);
    } else if !a.weekly.is_empty() {
        w.weekly = Some(v1::WeeklyRecurrence {
            days: a.weekly,
            start: a.at.unwrap_or_default(),
            duration_ms: a.duration.unwrap_or(0),
            time_zone: a.tz.unwrap_or_default(),
        });
    } else {
        return Err(CliError::usage(
            "give --start and --end (one-off) or --weekly, --at, --for and --tz",
        ));
    }
    Ok(w)
}

/// What a window covers, for people.
fn covers(w: &v1::MaintenanceWindow) -> String {
    let mut parts = Vec::new();
    if w.all_monitors {
        parts.push("all monitors".to_string());
    }
    if !w.monitor_ids.is_empty() {
        parts.push(w.monitor_ids.join(","));
    }
    if !w.tags.is_empty() {
        parts.push(format!("tags {}", w.tags.join(",")));
    }
    parts.join("; ")
}

/// When a window recurs, for people.
fn when(w: &v1::MaintenanceWindow) -> String {
    match &w.weekly {
        Some(r) => format!(
            "weekly {} {} for {} ({})",
            r.days.join(","),
            r.start,
            output::millis(r.duration_ms),
            r.time_zone
        ),
        None => "once".to_string(),
    }
}

/// Windows as a table.
pub fn table(ws: &[v1::MaintenanceWindow]) -> Table {
    let mut t = Table::new(&[
        "ID",
        "NAME",
        "COVERS",
        "WHEN",
        "STATE",
        "NEXT START",
        "NEXT END",
    ]);
    for w in ws {
        let state = if w.active {
            "in force"
        } else if w.next_start.is_some() {
            "scheduled"
        } else {
            "over"
        };
        t.row(vec![
            w.id.clone(),
            w.name.clone(),
            covers(w),
            when(w),
            state.to_string(),
            output::ts(w.next_start.as_ref()),
            output::ts(w.next_end.as_ref()),
        ]);
    }
    t
}
