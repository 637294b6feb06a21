//! `portwatch monitor add|list|show|update|rm|pause|resume`.
//!
//! Monitors are named by id or by unique name. `show` combines three calls:
//! the monitor, its live status (per-region state, reason, last connect time)
//! and its recent history, drawn as one latency sparkline per region.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use portwatch_proto::time::to_timestamp;
use portwatch_proto::{flap, v1};
use serde_json::{Value, json};

use crate::cli::{MonitorAdd, MonitorCmd, MonitorUpdate, OutputFormat};
use crate::client::Client;
use crate::error::{CliError, Result};
use crate::names;
use crate::output::{self, Spark, Table, target};
use crate::views;

/// Checks per region drawn in the sparkline.
const SPARK_POINTS: usize = 40;

pub async fn run(c: &mut Client, cmd: MonitorCmd, out: OutputFormat) -> Result<()> {
    match cmd {
        MonitorCmd::Add(a) => add(c, a, out).await,
        MonitorCmd::List(l) if l.names => names_only(c).await,
        MonitorCmd::List(l) => list(c, l.tag.as_deref().unwrap_or(""), out).await,
        MonitorCmd::Mute(m) => {
            let monitor = c.find_monitor(&m.monitor).await?;
            let w = c
                .admin
                .mute_monitor(v1::MuteMonitorRequest {
                    tenant_id: c.tenant.clone(),
                    monitor_id: monitor.id.clone(),
                    duration_ms: m.duration,
                })
                .await?
                .into_inner();
            match out {
                OutputFormat::Json => output::json(&views::maintenance_window(&w)),
                OutputFormat::Table => output::line(&format!(
                    "muted monitor {} ({}) until {} (window {})",
                    monitor.id,
                    monitor.name,
                    output::ts(w.ends_at.as_ref()),
                    w.id
                )),
            }
        }
        MonitorCmd::Show(r) => show(c, &r.monitor, out).await,
        MonitorCmd::Update(u) => update(c, u, out).await,
        MonitorCmd::Rm(r) => {
            let m = c.find_monitor(&r.monitor).await?;
            c.admin
                .delete_monitor(v1::DeleteMonitorRequest {
                    tenant_id: c.tenant.clone(),
                    id: m.id.clone(),
                })
                .await?;
            match out {
                OutputFormat::Json => output::json(&json!({ "deleted": m.id, "name": m.name })),
                OutputFormat::Table => {
                    output::line(&format!("deleted monitor {} ({})", m.id, m.name))
                }
            }
        }
        MonitorCmd::Pause(r) => {
            let m = c.find_monitor(&r.monitor).await?;
            let m = c
                .admin
                .pause_monitor(v1::PauseMonitorRequest {
                    tenant_id: c.tenant.clone(),
                    id: m.id,
                })
                .await?
                .into_inner();
            print_one_line(&m, "paused", out)
        }
        MonitorCmd::Resume(r) => {
            let m = c.find_monitor(&r.monitor).await?;
            let m = c
                .admin
                .resume_monitor(v1::ResumeMonitorRequest {
                    tenant_id: c.tenant.clone(),
                    id: m.id,
                })
                .await?
                .into_inner();
            print_one_line(&m, "resumed", out)
        }
    }
}

fn degraded_ms(ms: Option<u64>) -> Result<Option<u32>> {
    ms.map(|v| {
        u32::try_from(v).map_err(|_| CliError::usage("--degraded-after: must be below the timeout"))
    })
    .transpose()
}

fn timeout_ms(ms: Option<u64>) -> Result<Option<u32>> {
    ms.map(|v| u32::try_from(v).map_err(|_| CliError::usage("--timeout: must be at most 10s")))
        .transpose()
}

async fn add(c: &mut Client, a: MonitorAdd, out: OutputFormat) -> Result<()> {
    let req = v1::CreateMonitorRequest {
        tenant_id: c.tenant.clone(),
        name: a.name.unwrap_or_default(),
        host: a.host,
        port: u32::from(a.port),
        regions: a.regions,
        interval_ms: a.interval.unwrap_or(0),
        timeout_ms: timeout_ms(a.timeout)?.unwrap_or(0),
        consensus: a.consensus.map_or(0, |v| v.wire()),
        family: a.family.map_or(0, |v| v.wire()),
        address_policy: a.address_policy.map_or(0, |v| v.wire()),
        close_mode: a.close_mode.map_or(0, |v| v.wire()),
        channel_ids: a.channels,
        paused: a.paused,
        flap_detection: a.flap_detection.map_or(0, |v| v.wire()),
        flap_threshold: a.flap_threshold.unwrap_or(0),
        flap_window_ms: a.flap_window.unwrap_or(0),
        flap_stable_for_ms: a.flap_stable_for.unwrap_or(0),
        recover_after: a.recover_after.unwrap_or(0),
        remind_every_ms: a.remind_every.unwrap_or(0),
        remind_max: a.remind_max.unwrap_or(0),
        tags: a.tags.clone(),
        expect_closed: a.expect_closed,
        degraded_after_ms: degraded_ms(a.degraded_after)?.unwrap_or(0),
        degraded_checks: a.degraded_checks.unwrap_or(0),
    };
    let m = c.admin.create_monitor(req).await?.into_inner();
    print_monitor(&m, "created", out)
}

async fn update(c: &mut Client, u: MonitorUpdate, out: OutputFormat) -> Result<()> {
    let m = c.find_monitor(&u.monitor).await?;
    let (set_channel_ids, channel_ids) = match (u.channels, u.default_channels) {
        (Some(ids), _) => (true, ids),
        (None, true) => (true, Vec::new()),
        (None, false) => (false, Vec::new()),
    };
    let req = v1::UpdateMonitorRequest {
        tenant_id: c.tenant.clone(),
        id: m.id,
        name: u.name,
        host: u.host,
        port: u.port.map(u32::from),
        set_regions: u.regions.is_some(),
        regions: u.regions.unwrap_or_default(),
        interval_ms: u.interval,
        timeout_ms: timeout_ms(u.timeout)?,
        consensus: u.consensus.map(|v| v.wire()),
        family: u.family.map(|v| v.wire()),
        address_policy: u.address_policy.map(|v| v.wire()),
        close_mode: u.close_mode.map(|v| v.wire()),
        channel_ids,
        set_channel_ids,
        flap_detection: u.flap_detection.map(|v| v.wire()),
        flap_threshold: u.flap_threshold,
        flap_window_ms: u.flap_window,
        flap_stable_for_ms: u.flap_stable_for,
        recover_after: u.recover_after,
        remind_every_ms: u.remind_every,
        remind_max: u.remind_max,
        set_tags: u.tags.is_some() || u.clear_tags,
        tags: u.tags.clone().unwrap_or_default(),
        expect_closed: u.expect_closed,
        degraded_after_ms: degraded_ms(u.degraded_after)?,
        degraded_checks: u.degraded_checks,
    };
    let nothing = req.name.is_none()
        && req.host.is_none()
        && req.port.is_none()
        && !req.set_regions
        && req.interval_ms.is_none()
        && req.timeout_ms.is_none()
        && req.consensus.is_none()
        && req.family.is_none()
        && req.address_policy.is_none()
        && req.close_mode.is_none()
        && !req.set_channel_ids
        && req.flap_detection.is_none()
        && req.flap_threshold.is_none()
        && req.flap_window_ms.is_none()
        && req.flap_stable_for_ms.is_none()
        && req.recover_after.is_none()
        && req.remind_every_ms.is_none()
        && req.remind_max.is_none()
        && !req.set_tags
        && req.expect_closed.is_none()
        && req.degraded_after_ms.is_none()
        && req.degraded_checks.is_none();
    if nothing {
        return Err(CliError::usage(
            "monitor update: nothing to change; give at least one of --name, --host, --port, --regions, --interval, --timeout, --consensus, --family, --address-policy, --close-mode, --channels, --default-channels, --flap-detection, --flap-threshold, --flap-window, --flap-stable-for",
        ));
    }
    let m = c.admin.update_monitor(req).await?.into_inner();
    print_monitor(&m, "updated", out)
}

fn channels_text(ids: &[String]) -> String {
    if ids.is_empty() {
        "tenant defaults".to_string()
    } else {
        ids.join(",")
    }
}

/// A value and, when the monitor leaves it to the default, "(default)".
fn defaulted(text: String, is_default: bool) -> String {
    if is_default {
        format!("{text} (default)")
    } else {
        text
    }
}

/// The monitor's flap detection in one line: "on: 4 state changes within
/// 20s (default), closes after 5s up (default)", or "off".
pub fn flap_text(m: &v1::Monitor) -> String {
    let s = flap::Settings::of(m);
    if !s.enabled {
        return "off".to_string();
    }
    let ms = |d: Duration| output::millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    format!(
        "on: {} within {}, closes after {} up",
        defaulted(
            format!("{} state changes", s.threshold),
            m.flap_threshold == 0
        ),
        defaulted(ms(s.window), m.flap_window_ms == 0),
        defaulted(ms(s.stable_for), m.flap_stable_for_ms == 0),
    )
}

/// How the monitor's incidents close and are repeated: "recovers after 1
/// all-up round (default), reminders off".
pub fn alerting_text(m: &v1::Monitor) -> String {
    let rounds = m.recover_after.max(1);
    let recover = defaulted(
        format!(
            "recovers after {rounds} all-up round{}",
            if rounds == 1 { "" } else { "s" }
        ),
        m.recover_after == 0,
    );
    let remind = if m.remind_every_ms == 0 {
        "reminders off".to_string()
    } else {
        let max = if m.remind_max == 0 { 10 } else { m.remind_max };
        format!(
            "a reminder every {} while unacknowledged, at most {}",
            output::millis(m.remind_every_ms),
            defaulted(max.to_string(), m.remind_max == 0)
        )
    };
    format!("{recover}, {remind}")
}

/// One monitor as "key  value" lines.
pub fn details(m: &v1::Monitor) -> Table {
    let mut t = Table::new(&["FIELD", "VALUE"]);
    let rows = [
        ("id", m.id.clone()),
        ("name", m.name.clone()),
        ("target", target(&m.host, m.port)),
        ("regions", m.regions.join(",")),
        ("interval", output::millis(m.interval_ms)),
        ("timeout", output::millis(u64::from(m.timeout_ms))),
        ("consensus", names::consensus(m.consensus).to_string()),
        ("family", names::family(m.family).to_string()),
        (
            "address policy",
            names::address_policy(m.address_policy).to_string(),
        ),
        ("close mode", names::close_mode(m.close_mode).to_string()),
        ("channels", channels_text(&m.channel_ids)),
        ("flap detection", flap_text(m)),
        ("alerting", alerting_text(m)),
        ("tags", m.tags.join(",")),
        (
            "slowness",
            if m.degraded_after_ms == 0 {
                "off".to_string()
            } else {
                format!(
                    "degraded when a quorum of regions connects slower than {} for {} checks",
                    output::millis(u64::from(m.degraded_after_ms)),
                    if m.degraded_checks == 0 {
                        3
                    } else {
                        m.degraded_checks
                    }
                )
            },
        ),
        (
            "expects",
            if m.expect_closed {
                "closed: alerts when a quorum of regions connects"
            } else {
                "open"
            }
            .to_string(),
        ),
        ("paused", m.paused.to_string()),
        ("tenant", m.tenant_id.clone()),
    ];
    for (k, v) in rows {
        t.row(vec![k.to_string(), v]);
    }
    t
}

/// "paused monitor mon-… (db)": a change of state needs no settings table.
fn print_one_line(m: &v1::Monitor, verb: &str, out: OutputFormat) -> Result<()> {
    match out {
        OutputFormat::Json => output::json(&views::monitor(m)),
        OutputFormat::Table => output::line(&format!("{verb} monitor {} ({})", m.id, m.name)),
    }
}

fn print_monitor(m: &v1::Monitor, verb: &str, out: OutputFormat) -> Result<()> {
    match out {
        OutputFormat::Json => output::json(&views::monitor(m)),
        OutputFormat::Table => {
            output::line(&format!("{verb} monitor {} ({})", m.id, m.name))?;
            output::print(&details(m).render())
        }
    }
}

/// One name per line (shell completion asks this way).
async fn names_only(c: &mut Client) -> Result<()> {
    let mut text = String::new();
    for m in c.all_monitors().await? {
        text.push_str(&m.name);
        text.push('\n');
    }
    output::print(&text)
}

async fn list(c: &mut Client, tag: &str, out: OutputFormat) -> Result<()> {
    let ms = c.monitors_tagged(tag).await?;
    let v = Value::Array(ms.iter().map(views::monitor).collect());
    output::either(out, &v, &list_table(&ms), "no monitors")
}

/// `monitor list` as a table.
pub fn list_table(ms: &[v1::Monitor]) -> Table {
    let mut t = Table::new(&[
        "ID",
        "NAME",
        "TARGET",
        "REGIONS",
        "INTERVAL",
        "TIMEOUT",
        "CONSENSUS",
        "PAUSED",
    ]);
    for m in ms {
        t.row(vec![
            m.id.clone(),
            m.name.clone(),
            target(&m.host, m.port),
            m.regions.join(","),
            output::millis(m.interval_ms),
            output::millis(u64::from(m.timeout_ms)),
            names::consensus(m.consensus).to_string(),
            if m.paused { "yes" } else { "" }.to_string(),
        ]);
    }
    t
}

/// What a region's row says about why it is in its state.
pub fn reason(s: &v1::RegionStatus) -> String {
    match (&s.last_result, v1::RegionState::try_from(s.state)) {
        (_, Ok(v1::RegionState::Unknown)) => s.unknown_reason.clone(),
        (Some(r), _) if r.detail.is_empty() || r.outcome == v1::Outcome::Ok as i32 => {
            names::outcome_text(r.outcome).to_string()
        }
        (Some(r), _) => format!("{}: {}", names::outcome_text(r.outcome), r.detail),
        (None, _) => String::new(),
    }
}

fn spark_point(r: &v1::CheckResult) -> Spark {
    match v1::Outcome::try_from(r.outcome) {
        Ok(v1::Outcome::Ok) => Spark::Latency(r.connect_us as f64 / 1000.0),
        Ok(v1::Outcome::Blocked | v1::Outcome::ProbeError) | Err(_) => Spark::Unknown,
        Ok(_) => Spark::Down,
    }
}

async fn show(c: &mut Client, key: &str, out: OutputFormat) -> Result<()> {
    let m = c.find_monitor(key).await?;
    let status = c
        .admin
        .get_monitor_status(v1::GetMonitorStatusRequest {
            tenant_id: c.tenant.clone(),
            id: m.id.clone(),
        })
        .await?
        .into_inner();
    // Enough history for SPARK_POINTS checks per region, at most a day.
    let now = SystemTime::now();
    let window = Duration::from_millis(m.interval_ms.max(1000))
        .saturating_mul(SPARK_POINTS as u32 + 2)
        .min(Duration::from_secs(86_400));
    let since = now.checked_sub(window).map(to_timestamp);
    let history = c.results(&m.id, since, None, "").await?;
    // The open incident, for whether it is held open as flapping.
    let incident = if status.open_incident_id.is_empty() {
        None
    } else {
        Some(
            c.admin
                .get_incident(v1::GetIncidentRequest {
                    tenant_id: c.tenant.clone(),
                    id: status.open_incident_id.clone(),
                })
                .await?
                .into_inner(),
        )
    };
    match out {
        OutputFormat::Json => output::json(&show_json(&m, &status, incident.as_ref(), &history)),
        OutputFormat::Table => {
            output::print(&show_text(&m, &status, incident.as_ref(), &history, now))
        }
    }
}

/// The last [`SPARK_POINTS`] results of each region, oldest first.
fn recent(history: &[v1::CheckResult]) -> BTreeMap<String, Vec<&v1::CheckResult>> {
    let mut per_region: BTreeMap<String, Vec<&v1::CheckResult>> = BTreeMap::new();
    for r in history {
        per_region.entry(r.region.clone()).or_default().push(r);
    }
    for rs in per_region.values_mut() {
        let skip = rs.len().saturating_sub(SPARK_POINTS);
        rs.drain(..skip);
    }
    per_region
}

/// `monitor show -o json`: the monitor, its status, and per region the recent
/// results with their sparkline.
pub fn show_json(
    m: &v1::Monitor,
    status: &v1::MonitorStatus,
    incident: Option<&v1::Incident>,
    history: &[v1::CheckResult],
) -> Value {
    let recent: serde_json::Map<String, Value> = recent(history)
        .iter()
        .map(|(region, rs)| {
            let points: Vec<Spark> = rs.iter().map(|r| spark_point(r)).collect();
            (
                region.clone(),
                json!({
                    "sparkline": output::sparkline(&points),
                    "results": rs.iter().map(|r| views::result(r)).collect::<Vec<_>>(),
                }),
            )
        })
        .collect();
    json!({
        "monitor": views::monitor(m),
        "status": views::status(status),
        "open_incident": incident.map(views::incident),
        "recent": recent,
    })
}

/// `monitor show` for people: settings, a row per region, a sparkline per region.
pub fn show_text(
    m: &v1::Monitor,
    status: &v1::MonitorStatus,
    incident: Option<&v1::Incident>,
    history: &[v1::CheckResult],
    now: SystemTime,
) -> String {
    let mut text = format!(
        "{}  {}  {}\nstate: {}   quorum: {} of {} ({})   incident: {}\n",
        m.id,
        m.name,
        target(&m.host, m.port),
        names::text(names::overall(status.overall)),
        status.quorum,
        m.regions.len(),
        names::consensus(m.consensus),
        if status.open_incident_id.is_empty() {
            "none".to_string()
        } else {
            status.open_incident_id.clone()
        },
    );
    text.push_str(&format!(
        "every {}, timeout {}, family {}, address policy {}, close {}, channels: {}\n",
        output::millis(m.interval_ms),
        output::millis(u64::from(m.timeout_ms)),
        names::family(m.family),
        names::address_policy(m.address_policy),
        names::close_mode(m.close_mode),
        channels_text(&m.channel_ids),
    ));
    text.push_str(&format!("flap detection: {}\n", flap_text(m)));
    text.push_str(&format!("alerting: {}\n", alerting_text(m)));
    if !status.maintenance_window_id.is_empty() {
        text.push_str(&format!(
            "IN MAINTENANCE (window {}): results and incidents are recorded, nobody is notified\n",
            status.maintenance_window_id
        ));
    }
    if let Some(i) = incident {
        text.push_str(&super::incidents::attention(i));
    }
    if let Some(i) = incident.filter(|i| i.flapping_since.is_some()) {
        let stable = match i.stable_since.as_ref() {
            Some(at) => format!("every region up since {}", output::ts(Some(at))),
            None => "not every region is up".to_string(),
        };
        text.push_str(&format!(
            "FLAPPING since {}: incident held open until every region has been up for {} ({stable})\n",
            output::ts(i.flapping_since.as_ref()),
            output::millis(
                u64::try_from(flap::Settings::of(m).stable_for.as_millis()).unwrap_or(u64::MAX)
            ),
        ));
    }
    text.push('\n');
    let mut t = Table::new(&[
        "REGION",
        "STATE",
        "REASON",
        "CONNECT MS",
        "CHECKED AT",
        "AGENT",
    ]);
    for s in &status.regions {
        let last = s.last_result.as_ref();
        let checked = last.and_then(|r| r.checked_at.as_ref());
        t.row(vec![
            s.region.clone(),
            names::text(names::region_state(s.state)).to_string(),
            reason(s),
            last.map(|r| output::connect_ms_text(r.outcome, r.connect_us))
                .unwrap_or_default(),
            output::when(checked, now, "never"),
            if s.agent_online { "online" } else { "offline" }.to_string(),
        ]);
    }
    text.push_str(&t.render());
    text.push_str(&format!(
        "\nconnect latency, last {SPARK_POINTS} checks per region (oldest first; ✗ failed, · no verdict):\n"
    ));
    let mut spark = Table::new(&["REGION", "SPARKLINE", "MIN MS", "AVG MS", "MAX MS"]);
    for (region, rs) in &recent(history) {
        let points: Vec<Spark> = rs.iter().map(|r| spark_point(r)).collect();
        let lat: Vec<f64> = points
            .iter()
            .filter_map(|p| match p {
                Spark::Latency(v) => Some(*v),
                _ => None,
            })
            .collect();
        let (min, avg, max) = if lat.is_empty() {
            (String::new(), String::new(), String::new())
        } else {
            let min = lat.iter().copied().fold(f64::INFINITY, f64::min);
            let max = lat.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let avg = lat.iter().sum::<f64>() / lat.len() as f64;
            (
                format!("{min:.1}"),
                format!("{avg:.1}"),
                format!("{max:.1}"),
            )
        };
        spark.row(vec![
            region.clone(),
            output::sparkline(&points),
            min,
            avg,
            max,
        ]);
    }
    if spark.is_empty() {
        text.push_str("no checks yet\n");
    } else {
        text.push_str(&spark.render());
    }
    text
}
