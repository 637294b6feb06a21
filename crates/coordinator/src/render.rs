//! What a notification says, as pure functions: values in, text and JSON out.
//!
//! Every channel kind renders from the same [`Notification`], so an email, a
//! webhook body, a Slack message and a PagerDuty event always agree on the
//! subject, the failure reason and every region's state. Nothing here touches
//! the network, the store or the clock (timestamps come from the incident), so
//! a retry renders exactly what the first attempt rendered and the table tests
//! below cover every kind.
//!
//! Guarantees:
//! - subjects are `TCP Port Unreachable: {host}:{port}` (opened),
//!   `TCP Port Still Unreachable: {host}:{port}` (a reminder),
//!   `TCP Port Flapping: {host}:{port}` (the monitor was found flapping; the
//!   incident stays open), `TCP Port Acknowledged: {host}:{port}` and
//!   `TCP Port Reachable Again: {host}:{port}` (resolved), IPv6 hosts
//!   bracketed;
//! - every "Unreachable" notice and reminder carries the incident's first
//!   steps (`first_steps`), chosen by its failure reason;
//! - user-supplied text (monitor names, agent details) is stripped of control
//!   characters everywhere and escaped for Slack's markup;
//! - the email body is plain text without links.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use portwatch_check::Outcome;
use portwatch_proto::convert::OutcomeFromWire;
use portwatch_proto::time::from_timestamp;
use portwatch_proto::v1;
use serde_json::{Value, json};

use crate::store::{FlapTerms, RegionOutage};

/// Version of the webhook JSON body; bumped only for incompatible changes.
pub const WEBHOOK_VERSION: u32 = 1;
/// PagerDuty's limit on `payload.summary`.
const PD_SUMMARY_MAX: usize = 1024;

/// What happened.
#[derive(Clone, Copy, Debug)]
pub enum Notice<'a> {
    Opened(&'a v1::Incident),
    /// The incident is still open and unacknowledged: its `reminders_sent`-th
    /// reminder, planned at `last_reminded_at`.
    Reminder(&'a v1::Incident),
    /// Someone acknowledged the open incident.
    Acknowledged(&'a v1::Incident),
    Resolved(&'a v1::Incident),
    /// The incident's monitor was found flapping, with the terms that held it.
    Flapping(&'a v1::Incident, &'a FlapTerms),
    RegionOffline(&'a RegionOutage),
    RegionOnline(&'a RegionOutage),
}

/// One message to render: what happened, the idempotency key receivers dedup
/// on, and whether it is a sample sent by `TestChannel`.
#[derive(Clone, Copy, Debug)]
pub struct Notification<'a> {
    pub notice: Notice<'a>,
    pub key: &'a str,
    pub test: bool,
}

impl Notice<'_> {
    /// The machine name of the event (`X-Portwatch-Event`, JSON `event`).
    pub fn event(&self) -> &'static str {
        match self {
            Notice::Opened(_) => "incident.opened",
            Notice::Reminder(_) => "incident.reminder",
            Notice::Acknowledged(_) => "incident.acknowledged",
            Notice::Resolved(_) => "incident.resolved",
            Notice::Flapping(..) => "incident.flapping",
            Notice::RegionOffline(_) => "region.offline",
            Notice::RegionOnline(_) => "region.online",
        }
    }

    /// The severity receivers should page with.
    pub fn severity(&self) -> &'static str {
        match self {
            Notice::Opened(i) | Notice::Reminder(i) | Notice::Resolved(i)
                if !i.severity.is_empty() =>
            {
                match i.severity.as_str() {
                    "warning" => "warning",
                    "info" => "info",
                    "error" => "error",
                    _ => "critical",
                }
            }
            Notice::Opened(_) | Notice::Reminder(_) | Notice::Resolved(_) => "critical",
            // Already paged by the opening: this one says why nothing follows.
            Notice::Flapping(..) | Notice::RegionOffline(_) => "warning",
            Notice::RegionOnline(_) | Notice::Acknowledged(_) => "info",
        }
    }
}

/// Text without control characters (newlines in user input would forge lines
/// of the email body or of Slack's table).
pub fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `host:port`, with IPv6 literals bracketed.
pub fn target(host: &str, port: u32) -> String {
    if host.contains(':') {
        format!("[{}]:{port}", clean(host))
    } else {
        format!("{}:{port}", clean(host))
    }
}

/// RFC 3339, UTC, whole seconds; "-" when unset.
pub fn time(ts: Option<&prost_types::Timestamp>) -> String {
    ts.and_then(from_timestamp)
        .map_or_else(|| "-".to_string(), rfc3339)
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn time_json(ts: Option<&prost_types::Timestamp>) -> Value {
    ts.and_then(from_timestamp)
        .map_or(Value::Null, |t| Value::String(rfc3339(t)))
}

/// How long between two timestamps, in whole seconds ("3m 12s").
fn span(from: Option<&prost_types::Timestamp>, to: Option<&prost_types::Timestamp>) -> String {
    match (from.and_then(from_timestamp), to.and_then(from_timestamp)) {
        (Some(a), Some(b)) => {
            let secs = b.duration_since(a).unwrap_or_default().as_secs();
            humantime::format_duration(Duration::from_secs(secs)).to_string()
        }
        _ => "-".to_string(),
    }
}

fn state_name(state: i32) -> &'static str {
    match v1::RegionState::try_from(state) {
        Ok(v1::RegionState::Up) => "up",
        Ok(v1::RegionState::Down) => "down",
        _ => "unknown",
    }
}

fn outcome(value: i32) -> Option<Outcome> {
    Outcome::from_wire(value, "outcome").ok()
}

/// The incident's failure reason as people read it.
fn reason_text(i: &v1::Incident) -> String {
    if !i.reason_text.is_empty() {
        clean(&i.reason_text)
    } else {
        outcome(i.reason)
            .map_or("unknown", Outcome::text)
            .to_string()
    }
}

/// The connect time in milliseconds, one decimal; None when nothing connected.
fn connect_ms(e: &v1::RegionEvidence) -> Option<f64> {
    let connected = outcome(e.outcome) == Some(Outcome::Ok);
    // Whole tenths of a millisecond, so the JSON carries no float noise.
    (connected && e.connect_us > 0).then(|| (e.connect_us / 100) as f64 / 10.0)
}

/// One region's reason: the outcome's text, then the agent's detail if it adds
/// something; for an unknown region, why it is unknown.
fn region_reason(e: &v1::RegionEvidence) -> String {
    let detail = clean(e.detail.trim());
    if e.state != v1::RegionState::Up as i32 && e.state != v1::RegionState::Down as i32 {
        let why = if detail.is_empty() {
            "no fresh result".to_string()
        } else {
            detail
        };
        return if e.ignored_offline {
            format!("{why}; offline past the grace period, not waited for")
        } else {
            why
        };
    }
    let text = outcome(e.outcome).map_or("", Outcome::text);
    if detail.is_empty() || detail.eq_ignore_ascii_case(text) || text.is_empty() {
        if text.is_empty() {
            detail
        } else {
            text.to_string()
        }
    } else {
        format!("{text} ({detail})")
    }
}

/// The evidence that goes with the notice: at open (also for flapping), or at close.
fn evidence<'a>(n: &Notice<'a>) -> &'a [v1::RegionEvidence] {
    match n {
        Notice::Opened(i) | Notice::Reminder(i) | Notice::Flapping(i, _) => &i.open_evidence,
        Notice::Resolved(i) => &i.close_evidence,
        _ => &[],
    }
}

/// The subject line (email subject, Slack headline, PagerDuty summary).
pub fn subject(n: &Notification<'_>) -> String {
    let s = match n.notice {
        Notice::Opened(i) if i.slow => format!("TCP Port Slow: {}", target(&i.host, i.port)),
        Notice::Resolved(i) if i.slow => {
            format!("TCP Port No Longer Slow: {}", target(&i.host, i.port))
        }
        Notice::Opened(i) if i.expect_closed => {
            format!(
                "TCP Port Open (expected closed): {}",
                target(&i.host, i.port)
            )
        }
        Notice::Reminder(i) if i.expect_closed => format!(
            "TCP Port Still Open (expected closed): {}",
            target(&i.host, i.port)
        ),
        Notice::Resolved(i) if i.expect_closed => {
            format!("TCP Port Closed Again: {}", target(&i.host, i.port))
        }
        Notice::Opened(i) => format!("TCP Port Unreachable: {}", target(&i.host, i.port)),
        Notice::Reminder(i) => format!("TCP Port Still Unreachable: {}", target(&i.host, i.port)),
        Notice::Acknowledged(i) => format!("TCP Port Acknowledged: {}", target(&i.host, i.port)),
        Notice::Resolved(i) => format!("TCP Port Reachable Again: {}", target(&i.host, i.port)),
        Notice::Flapping(i, _) => format!("TCP Port Flapping: {}", target(&i.host, i.port)),
        Notice::RegionOffline(o) => format!("Probe region offline: {}", clean(&o.region)),
        Notice::RegionOnline(o) => format!("Probe region back online: {}", clean(&o.region)),
    };
    if n.test { format!("[test] {s}") } else { s }
}

/// A plain-text table: columns padded to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i + 1 == widths.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// Whether the notice is about a monitor that expects its port closed.
fn expects_closed(n: &Notice<'_>) -> bool {
    match n {
        Notice::Opened(i)
        | Notice::Reminder(i)
        | Notice::Acknowledged(i)
        | Notice::Resolved(i)
        | Notice::Flapping(i, _) => i.expect_closed,
        _ => false,
    }
}

/// A region's state as the notice's reader means it: for a port expected
/// closed, "down" (the failure) is "open" and "up" is "closed".
fn state_word(n: &Notice<'_>, state: i32) -> &'static str {
    match (expects_closed(n), state_name(state)) {
        (true, "down") => "open",
        (true, "up") => "closed",
        (_, word) => word,
    }
}

/// The per-region table of an incident notice.
pub fn region_table(n: &Notice<'_>) -> String {
    let rows: Vec<Vec<String>> = evidence(n)
        .iter()
        .map(|e| {
            vec![
                clean(&e.region),
                state_word(n, e.state).to_string(),
                region_reason(e),
                connect_ms(e).map_or_else(|| "-".to_string(), |ms| format!("{ms:.1} ms")),
                time(e.checked_at.as_ref()),
            ]
        })
        .collect();
    table(
        &["Region", "State", "Reason", "Connect", "Checked at"],
        &rows,
    )
}

/// The plain-text body (email): every fact of the notice, no links.
pub fn text(n: &Notification<'_>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", subject(n));
    let _ = writeln!(out);
    if n.test {
        let _ = writeln!(
            out,
            "This is a test notification sent through this channel; nothing is down.\n"
        );
    }
    let mut fields: Vec<(&str, String)> = Vec::new();
    match n.notice {
        Notice::Opened(i)
        | Notice::Reminder(i)
        | Notice::Acknowledged(i)
        | Notice::Resolved(i)
        | Notice::Flapping(i, _) => {
            fields.push(("Monitor", clean(&i.monitor_name)));
            fields.push(("Host", clean(&i.host)));
            fields.push(("Port", i.port.to_string()));
            fields.push(("Severity", n.notice.severity().to_string()));
            fields.push(("Failure reason", reason_text(i)));
            fields.push(("Opened at", time(i.opened_at.as_ref())));
            if let Notice::Reminder(_) = n.notice {
                fields.push(("Down for", down_for(i)));
                fields.push(("Reminder", i.reminders_sent.to_string()));
            }
            if let Notice::Resolved(_) = n.notice {
                fields.push(("Resolved at", time(i.closed_at.as_ref())));
                fields.push(("Down for", span(i.opened_at.as_ref(), i.closed_at.as_ref())));
            }
            if i.acknowledged_at.is_some() {
                fields.push(("Acknowledged", acknowledged_text(i)));
            }
            if let Notice::Flapping(_, f) = n.notice {
                fields.push(("Flapping since", time(i.flapping_since.as_ref())));
                fields.push(("State changes", changes_text(i, f)));
            }
            fields.push(("Incident", clean(&i.id)));
        }
        Notice::RegionOffline(o) | Notice::RegionOnline(o) => {
            fields.push(("Region", clean(&o.region)));
            fields.push(("Offline since", time(o.offline_since.as_ref())));
            if let Notice::RegionOnline(_) = n.notice {
                fields.push(("Back online at", time(o.online_at.as_ref())));
                fields.push((
                    "Offline for",
                    span(o.offline_since.as_ref(), o.online_at.as_ref()),
                ));
            }
            fields.push(("Outage", clean(&o.id)));
        }
    }
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    for (k, v) in &fields {
        let _ = writeln!(out, "{:<width$} {v}", format!("{k}:"));
    }
    match n.notice {
        Notice::Opened(i) | Notice::Reminder(i) => {
            let _ = writeln!(out, "\nRegions when the incident opened:\n");
            out.push_str(&region_table(&n.notice));
            let _ = writeln!(out, "\nWhat to try first:\n");
            for step in steps(i) {
                let _ = writeln!(out, "- {step}");
            }
        }
        Notice::Acknowledged(_) => {
            let _ = writeln!(
                out,
                "\nThe incident stays open until the port is reachable again; \
                 no more reminders are sent for it."
            );
        }
        Notice::Resolved(_) => {
            let _ = writeln!(out, "\nRegions when the incident resolved:\n");
            out.push_str(&region_table(&n.notice));
        }
        Notice::Flapping(i, f) => {
            let _ = writeln!(out, "\n{}", hold_text(i, f));
        }
        Notice::RegionOffline(_) => {
            let _ = writeln!(
                out,
                "\nNo agent of this region has been connected for the grace period. \
                 Its monitors show the region as unknown; no tenant is paged for it."
            );
        }
        Notice::RegionOnline(_) => {
            let _ = writeln!(out, "\nAn agent of this region is connected again.");
        }
    }
    let _ = writeln!(out, "\nIdempotency key: {}", n.key);
    out
}

fn regions_json(n: &Notice<'_>) -> Value {
    Value::Array(
        evidence(n)
            .iter()
            .map(|e| {
                json!({
                    "region": e.region,
                    "state": state_word(n, e.state),
                    "outcome": outcome(e.outcome).map(Outcome::name),
                    "reason": region_reason(e),
                    "detail": e.detail,
                    "connect_ms": connect_ms(e),
                    "checked_at": time_json(e.checked_at.as_ref()),
                    "ignored_offline": e.ignored_offline,
                })
            })
            .collect(),
    )
}

/// The incident's first steps: as stored at its opening, or worked out now
/// for an incident stored before they were.
fn steps(i: &v1::Incident) -> Vec<String> {
    if i.first_steps.is_empty() {
        crate::first_steps::for_incident(i)
    } else {
        i.first_steps.iter().map(|s| clean(s)).collect()
    }
}

/// How long a reminded incident has been down, as of its reminder.
fn down_for(i: &v1::Incident) -> String {
    span(i.opened_at.as_ref(), i.last_reminded_at.as_ref())
}

/// "operator at 2026-12-03T10:00:00Z: looking into it".
fn acknowledged_text(i: &v1::Incident) -> String {
    let mut s = format!(
        "by {} at {}",
        clean(&i.acknowledged_by),
        time(i.acknowledged_at.as_ref())
    );
    let note = clean(i.acknowledged_note.trim());
    if !note.is_empty() {
        let _ = write!(s, ": {note}");
    }
    s
}

/// How many state changes the incident quotes, and within what window.
fn changes_text(i: &v1::Incident, f: &FlapTerms) -> String {
    let n = if i.state_changes.is_empty() {
        f.threshold as usize
    } else {
        i.state_changes.len()
    };
    format!("{n} within {}", millis_text(f.window_ms))
}

/// A duration in milliseconds as people read it ("20s", "1h 40m").
fn millis_text(ms: u64) -> String {
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

/// What a flapping notice means for the reader: nothing more until the end.
fn hold_text(i: &v1::Incident, f: &FlapTerms) -> String {
    format!(
        "The port went down and came back again and again ({} state changes). \
         The incident stays open and nothing more is sent while it keeps changing; \
         once every region has been up for {} without a break, one \
         \"TCP Port Reachable Again\" closes it.",
        changes_text(i, f),
        millis_text(f.stable_for_ms)
    )
}

fn incident_json(n: &Notice<'_>, i: &v1::Incident) -> Value {
    json!({
        "id": i.id,
        "tenant_id": i.tenant_id,
        "monitor_id": i.monitor_id,
        "monitor_name": i.monitor_name,
        "host": i.host,
        "port": i.port,
        "severity": n.severity(),
        "reason": outcome(i.reason).map(Outcome::name),
        "reason_text": reason_text(i),
        "opened_at": time_json(i.opened_at.as_ref()),
        "closed_at": time_json(i.closed_at.as_ref()),
        "flapping_since": time_json(i.flapping_since.as_ref()),
        "acknowledged_at": time_json(i.acknowledged_at.as_ref()),
        "acknowledged_by": i.acknowledged_by,
        "acknowledged_note": i.acknowledged_note,
        "reminders_sent": i.reminders_sent,
        "expect_closed": i.expect_closed,
        "slow": i.slow,
        "superseded_by": i.superseded_by,
        "first_steps": match n {
            Notice::Opened(_) | Notice::Reminder(_) => Value::from(steps(i)),
            _ => Value::Null,
        },
        "regions": regions_json(n),
    })
}

fn outage_json(o: &RegionOutage) -> Value {
    json!({
        "id": o.id,
        "name": o.region,
        "offline_since": time_json(o.offline_since.as_ref()),
        "online_at": time_json(o.online_at.as_ref()),
    })
}

/// The webhook body. Field names are part of the public contract (README).
pub fn webhook(n: &Notification<'_>) -> Value {
    let mut body = json!({
        "version": WEBHOOK_VERSION,
        "event": n.notice.event(),
        "test": n.test,
        "idempotency_key": n.key,
        "subject": subject(n),
        "severity": n.notice.severity(),
    });
    match n.notice {
        Notice::Opened(i) | Notice::Acknowledged(i) | Notice::Resolved(i) => {
            body["incident"] = incident_json(&n.notice, i);
        }
        Notice::Reminder(i) => {
            body["incident"] = incident_json(&n.notice, i);
            body["reminder"] = json!({
                "number": i.reminders_sent,
                "at": time_json(i.last_reminded_at.as_ref()),
                "down_for_s": down_secs(i),
            });
        }
        Notice::Flapping(i, f) => {
            body["incident"] = incident_json(&n.notice, i);
            body["flapping"] = json!({
                "since": time_json(i.flapping_since.as_ref()),
                "state_changes": i.state_changes.len(),
                "threshold": f.threshold,
                "window_ms": f.window_ms,
                "stable_for_ms": f.stable_for_ms,
            });
        }
        Notice::RegionOffline(o) | Notice::RegionOnline(o) => {
            body["region"] = outage_json(o);
        }
    }
    body
}

/// Whole seconds from the opening to the reminder.
fn down_secs(i: &v1::Incident) -> u64 {
    match (
        i.opened_at.as_ref().and_then(from_timestamp),
        i.last_reminded_at.as_ref().and_then(from_timestamp),
    ) {
        (Some(a), Some(b)) => b.duration_since(a).unwrap_or_default().as_secs(),
        _ => 0,
    }
}

/// Slack's markup reserves `&`, `<` and `>`; everything else is literal.
fn markup_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// User text for a Slack line: one line, markup escaped.
fn slack_escape(s: &str) -> String {
    markup_escape(&clean(s))
}

/// The Slack incoming-webhook body: a headline, the facts, and the regions as a
/// monospaced table.
pub fn slack(n: &Notification<'_>) -> Value {
    let headline = match n.notice {
        Notice::Opened(_) | Notice::Reminder(_) | Notice::RegionOffline(_) => {
            format!(":red_circle: *{}*", slack_escape(&subject(n)))
        }
        Notice::Acknowledged(_) => {
            format!(":eyes: *{}*", slack_escape(&subject(n)))
        }
        Notice::Resolved(_) | Notice::RegionOnline(_) => {
            format!(":large_green_circle: *{}*", slack_escape(&subject(n)))
        }
        Notice::Flapping(..) => {
            format!(":large_orange_circle: *{}*", slack_escape(&subject(n)))
        }
    };
    let mut lines = vec![headline];
    if n.test {
        lines.push("_Test notification: nothing is down._".to_string());
    }
    match n.notice {
        Notice::Opened(i) | Notice::Reminder(i) | Notice::Acknowledged(i) | Notice::Resolved(i) => {
            lines.push(format!(
                "*Monitor:* {}   *Severity:* {}",
                slack_escape(&i.monitor_name),
                n.notice.severity()
            ));
            lines.push(format!(
                "*Failure reason:* {}",
                slack_escape(&reason_text(i))
            ));
            let mut when = format!("*Opened:* {}", time(i.opened_at.as_ref()));
            if let Notice::Resolved(_) = n.notice {
                let _ = write!(
                    when,
                    "   *Resolved:* {}   *Down for:* {}",
                    time(i.closed_at.as_ref()),
                    span(i.opened_at.as_ref(), i.closed_at.as_ref())
                );
            }
            if let Notice::Reminder(_) = n.notice {
                let _ = write!(
                    when,
                    "   *Down for:* {}   *Reminder:* {}",
                    down_for(i),
                    i.reminders_sent
                );
            }
            lines.push(when);
            if i.acknowledged_at.is_some() {
                lines.push(format!(
                    "*Acknowledged:* {}",
                    slack_escape(&acknowledged_text(i))
                ));
            }
            lines.push(format!("*Incident:* `{}`", slack_escape(&i.id)));
            if !matches!(n.notice, Notice::Acknowledged(_)) {
                // The table's cells are already cleaned; its newlines are its rows.
                lines.push(format!(
                    "```\n{}```",
                    markup_escape(&region_table(&n.notice))
                ));
            }
            if let Notice::Opened(_) | Notice::Reminder(_) = n.notice {
                lines.push("*What to try first:*".to_string());
                for step in steps(i) {
                    lines.push(format!("• {}", markup_escape(&step)));
                }
            }
        }
        Notice::Flapping(i, f) => {
            lines.push(format!(
                "*Monitor:* {}   *Failure reason:* {}",
                slack_escape(&i.monitor_name),
                slack_escape(&reason_text(i))
            ));
            lines.push(format!(
                "*Opened:* {}   *Flapping since:* {}   *State changes:* {}",
                time(i.opened_at.as_ref()),
                time(i.flapping_since.as_ref()),
                changes_text(i, f)
            ));
            lines.push(slack_escape(&hold_text(i, f)));
            lines.push(format!("*Incident:* `{}`", slack_escape(&i.id)));
        }
        Notice::RegionOffline(o) | Notice::RegionOnline(o) => {
            lines.push(format!(
                "*Offline since:* {}",
                time(o.offline_since.as_ref())
            ));
            if let Notice::RegionOnline(_) = n.notice {
                lines.push(format!("*Back online at:* {}", time(o.online_at.as_ref())));
            }
            lines.push(format!("*Outage:* `{}`", slack_escape(&o.id)));
        }
    }
    let text = lines.join("\n");
    json!({
        "text": text,
        "blocks": [
            { "type": "section", "text": { "type": "mrkdwn", "text": text } },
            { "type": "context", "elements": [
                { "type": "mrkdwn", "text": format!("portwatch · {}", slack_escape(n.key)) }
            ] },
        ],
    })
}

/// The PagerDuty dedup key: the incident id, or the region outage id.
pub fn dedup_key(n: &Notice<'_>) -> String {
    match n {
        Notice::Opened(i)
        | Notice::Reminder(i)
        | Notice::Acknowledged(i)
        | Notice::Resolved(i)
        | Notice::Flapping(i, _) => i.id.clone(),
        Notice::RegionOffline(o) | Notice::RegionOnline(o) => o.id.clone(),
    }
}

fn truncate(s: String, max: usize) -> String {
    if s.chars().count() <= max {
        s
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// The PagerDuty Events API v2 body: `trigger` on open/offline, `acknowledge`
/// on an acknowledgement, `resolve` on resolved/online, one `dedup_key` for
/// all. None for a flapping notice or a reminder: PagerDuty's alert is already
/// triggered and stays so until the recovery, and PagerDuty escalates by its
/// own rules (the outbox plans no such delivery).
pub fn pagerduty(n: &Notification<'_>, routing_key: &str) -> Option<Value> {
    let dedup = dedup_key(&n.notice);
    let body = match n.notice {
        Notice::Flapping(..) | Notice::Reminder(_) => return None,
        Notice::Resolved(_) | Notice::RegionOnline(_) => json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": dedup,
        }),
        Notice::Acknowledged(_) => json!({
            "routing_key": routing_key,
            "event_action": "acknowledge",
            "dedup_key": dedup,
        }),
        Notice::Opened(i) => json!({
            "routing_key": routing_key,
            "event_action": "trigger",
            "dedup_key": dedup,
            "client": "portwatch",
            "payload": {
                "summary": truncate(subject(n), PD_SUMMARY_MAX),
                "source": target(&i.host, i.port),
                "severity": if n.test { "info" } else { n.notice.severity() },
                "timestamp": time_json(i.opened_at.as_ref()),
                "component": clean(&i.monitor_name),
                "group": i.tenant_id,
                "class": outcome(i.reason).map_or("unknown", Outcome::name),
                "custom_details": {
                    "incident_id": i.id,
                    "monitor_id": i.monitor_id,
                    "failure_reason": reason_text(i),
                    "first_steps": steps(i),
                    "idempotency_key": n.key,
                    "test": n.test,
                    "regions": regions_json(&n.notice),
                },
            },
        }),
        Notice::RegionOffline(o) => json!({
            "routing_key": routing_key,
            "event_action": "trigger",
            "dedup_key": dedup,
            "client": "portwatch",
            "payload": {
                "summary": truncate(subject(n), PD_SUMMARY_MAX),
                "source": format!("portwatch probe region {}", clean(&o.region)),
                "severity": n.notice.severity(),
                "timestamp": time_json(o.noticed_at.as_ref()),
                "component": clean(&o.region),
                "class": "probe_region_offline",
                "custom_details": {
                    "outage_id": o.id,
                    "offline_since": time_json(o.offline_since.as_ref()),
                    "idempotency_key": n.key,
                },
            },
        }),
    };
    Some(body)
}

/// The incident a `TestChannel` call sends: plausible, clearly marked, and
/// pointing at a documentation address.
pub fn sample_incident(id: &str, at: SystemTime) -> v1::Incident {
    let ts = portwatch_proto::time::to_timestamp;
    let opened = at.checked_sub(Duration::from_secs(60)).unwrap_or(at);
    let ev = |region: &str, state: v1::RegionState, o: v1::Outcome, detail: &str, us: u64| {
        v1::RegionEvidence {
            region: region.into(),
            state: state as i32,
            outcome: o as i32,
            detail: detail.into(),
            connect_us: us,
            checked_at: Some(ts(opened)),
            ignored_offline: false,
        }
    };
    v1::Incident {
        id: id.into(),
        tenant_id: String::new(),
        monitor_id: "mon-sample".into(),
        monitor_name: "Sample: example database".into(),
        host: "db.example.com".into(),
        port: 5432,
        opened_at: Some(ts(opened)),
        closed_at: None,
        reason: v1::Outcome::Refused as i32,
        reason_text: "Connection refused".into(),
        open_evidence: vec![
            ev(
                "eu-west",
                v1::RegionState::Down,
                v1::Outcome::Refused,
                "Connection refused",
                0,
            ),
            ev(
                "us-east",
                v1::RegionState::Down,
                v1::Outcome::Refused,
                "Connection refused",
                0,
            ),
            ev("ap-south", v1::RegionState::Up, v1::Outcome::Ok, "", 12_345),
        ],
        close_evidence: vec![
            ev("eu-west", v1::RegionState::Up, v1::Outcome::Ok, "", 9_876),
            ev("us-east", v1::RegionState::Up, v1::Outcome::Ok, "", 14_321),
            ev("ap-south", v1::RegionState::Up, v1::Outcome::Ok, "", 12_345),
        ],
        severity: "critical".into(),
        flapping_since: None,
        stable_since: None,
        state_changes: Vec::new(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
