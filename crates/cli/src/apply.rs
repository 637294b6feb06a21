//! `portwatch apply -f monitors.toml [--dry-run]`: monitors as code.
//!
//! The file lists the tenant's monitors as `[[monitor]]` tables; `apply` makes
//! the coordinator match it: monitors in the file and not on the coordinator
//! are created, those on both with different settings are updated. Those only
//! on the coordinator are kept and listed, and deleted only with `--prune`.
//! Monitors are identified by `name`.
//!
//! Guarantees:
//! - deleting is opt-in (`--prune`), and an empty or truncated file cannot
//!   silently delete a tenant's monitors: when `--prune` would delete more than
//!   [`CONFIRM_ABOVE`] monitors, or all of them, the run needs `--yes` or a
//!   typed "yes" at a terminal (after the plan is shown); without either,
//!   nothing changes (exit 2; exit 1 when the answer is not "yes");
//! - the whole file is read and checked (unknown keys, duplicate names, hosts,
//!   ports, durations, enum words) before anything is sent: bad input is
//!   exit 2 and changes nothing;
//! - the plan is a pure function of (file, current monitors) — see [`plan`] —
//!   and `--dry-run` prints it and stops;
//! - applying is idempotent: settings are compared in the coordinator's
//!   normalised form (host lower-cased, trailing dot dropped, as
//!   `portwatch-check` parses it), so a second run finds nothing to do;
//! - a key left out of an entry is not managed: on create the coordinator's
//!   default applies, on update the current value stays;
//! - deletes run first (they free plan quota), then updates, then creates; the
//!   first refusal stops the run with the server's message, and what was
//!   already applied is listed.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use portwatch_check::Host;
use portwatch_proto::{flap, v1};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::cli::{
    ApplyArgs, ConnectArgs, OutputFormat, parse_millis, parse_millis_or_default,
    parse_millis_or_off,
};
use crate::client::Client;
use crate::error::{CliError, Result};
use crate::names::{self, AddressPolicy, CloseMode, Consensus, Family, FlapDetection};
use crate::output::{self, target};

/// The file as written.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    monitor: Vec<Entry>,
}

/// One `[[monitor]]` table.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    host: String,
    port: u16,
    regions: Vec<String>,
    interval: Option<String>,
    timeout: Option<String>,
    consensus: Option<Consensus>,
    family: Option<Family>,
    address_policy: Option<AddressPolicy>,
    close_mode: Option<CloseMode>,
    channels: Option<Vec<String>>,
    paused: Option<bool>,
    flap_detection: Option<FlapDetection>,
    flap_threshold: Option<u32>,
    flap_window: Option<String>,
    flap_stable_for: Option<String>,
    recover_after: Option<u32>,
    /// A duration, or "off".
    remind_every: Option<String>,
    remind_max: Option<u32>,
    tags: Option<Vec<String>>,
    expect_closed: Option<bool>,
    /// A duration, or "off".
    degraded_after: Option<String>,
    degraded_checks: Option<u32>,
}

/// A monitor as the file wants it, checked and normalised. `None` = not managed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub name: String,
    pub host: String,
    pub port: u32,
    pub regions: Vec<String>,
    pub interval_ms: Option<u64>,
    pub timeout_ms: Option<u32>,
    pub consensus: Option<i32>,
    pub family: Option<i32>,
    pub address_policy: Option<i32>,
    pub close_mode: Option<i32>,
    pub channels: Option<Vec<String>>,
    pub paused: Option<bool>,
    pub flap_detection: Option<i32>,
    /// 0 = the coordinator's default.
    pub flap_threshold: Option<u32>,
    pub flap_window_ms: Option<u64>,
    pub flap_stable_for_ms: Option<u64>,
    /// 0 = the coordinator's default (1).
    pub recover_after: Option<u32>,
    /// 0 = off.
    pub remind_every_ms: Option<u64>,
    /// 0 = the coordinator's default (10).
    pub remind_max: Option<u32>,
    pub tags: Option<Vec<String>>,
    pub expect_closed: Option<bool>,
    /// 0 = off.
    pub degraded_after_ms: Option<u32>,
    /// 0 = the coordinator's default (3).
    pub degraded_checks: Option<u32>,
}

/// One setting that differs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diff {
    pub field: &'static str,
    pub from: String,
    pub to: String,
}

/// What apply will do to one monitor.
// One value per monitor in a file, built once: boxing the larger variant would
// save nothing worth the indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    Create(Desired),
    Update {
        current: v1::Monitor,
        desired: Desired,
        diffs: Vec<Diff>,
    },
    /// Not in the file, with `--prune`.
    Delete(v1::Monitor),
    /// Not in the file, without `--prune`: left alone.
    Keep(v1::Monitor),
    Unchanged(v1::Monitor),
}

/// Deleting more monitors than this (or every one) needs `--yes` or a typed "yes".
pub const CONFIRM_ABOVE: usize = 3;

/// Reads and checks a monitors file.
pub fn load(path: &Path) -> Result<Vec<Desired>> {
    let shown = path.display();
    let text =
        std::fs::read_to_string(path).map_err(|e| CliError::usage(format!("{shown}: {e}")))?;
    parse(&text).map_err(|e| e.context(shown))
}

/// Parses and checks the text of a monitors file.
pub fn parse(text: &str) -> Result<Vec<Desired>> {
    let file: File =
        toml::from_str(text).map_err(|e| CliError::usage(e.to_string().trim_end().to_string()))?;
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(file.monitor.len());
    for (i, e) in file.monitor.into_iter().enumerate() {
        let at = format!("monitor {} ({:?})", i + 1, e.name);
        if e.name.trim().is_empty() {
            return Err(CliError::usage(format!(
                "monitor {}: name: required (apply identifies monitors by name)",
                i + 1
            )));
        }
        if !seen.insert(e.name.clone()) {
            return Err(CliError::usage(format!(
                "{at}: name: listed twice; names must be unique"
            )));
        }
        let host = Host::parse(&e.host)
            .map_err(|err| CliError::usage(format!("{at}: host: {err}")))?
            .as_str();
        if e.port == 0 {
            return Err(CliError::usage(format!("{at}: port: must be 1-65535")));
        }
        if e.regions.is_empty() {
            return Err(CliError::usage(format!(
                "{at}: regions: at least one region is required"
            )));
        }
        let interval_ms = e
            .interval
            .as_deref()
            .map(parse_millis)
            .transpose()
            .map_err(|err| CliError::usage(format!("{at}: interval: {err}")))?;
        let timeout_ms = e
            .timeout
            .as_deref()
            .map(|t| {
                parse_millis(t)
                    .and_then(|ms| u32::try_from(ms).map_err(|_| format!("{t:?} is too long")))
            })
            .transpose()
            .map_err(|err| CliError::usage(format!("{at}: timeout: {err}")))?;
        if let Some(n) = e.flap_threshold
            && n != 0
            && !(flap::MIN_THRESHOLD..=flap::MAX_THRESHOLD).contains(&n)
        {
            return Err(CliError::usage(format!(
                "{at}: flap_threshold: {n} is out of range; 0 (the default) or {}-{}",
                flap::MIN_THRESHOLD,
                flap::MAX_THRESHOLD
            )));
        }
        let span = |field: &str, v: Option<String>| {
            v.as_deref()
                .map(parse_millis_or_default)
                .transpose()
                .map_err(|err| CliError::usage(format!("{at}: {field}: {err}")))
        };
        let flap_window_ms = span("flap_window", e.flap_window)?;
        let flap_stable_for_ms = span("flap_stable_for", e.flap_stable_for)?;
        let count = |field: &str, v: Option<u32>| match v {
            Some(n) if n > 100 => Err(CliError::usage(format!(
                "{at}: {field}: {n} is out of range; 0 (the default) or 1-100"
            ))),
            _ => Ok(v),
        };
        let recover_after = count("recover_after", e.recover_after)?;
        let degraded_checks = count("degraded_checks", e.degraded_checks)?;
        let degraded_after_ms = e
            .degraded_after
            .as_deref()
            .map(|t| {
                parse_millis_or_off(t)
                    .and_then(|ms| u32::try_from(ms).map_err(|_| format!("{t:?} is too long")))
            })
            .transpose()
            .map_err(|err| CliError::usage(format!("{at}: degraded_after: {err}")))?;
        let remind_max = count("remind_max", e.remind_max)?;
        let remind_every_ms = e
            .remind_every
            .as_deref()
            .map(parse_millis_or_off)
            .transpose()
            .map_err(|err| CliError::usage(format!("{at}: remind_every: {err}")))?;
        out.push(Desired {
            name: e.name,
            host,
            port: u32::from(e.port),
            regions: e.regions,
            interval_ms,
            timeout_ms,
            consensus: e.consensus.map(Consensus::wire),
            family: e.family.map(Family::wire),
            address_policy: e.address_policy.map(AddressPolicy::wire),
            close_mode: e.close_mode.map(CloseMode::wire),
            channels: e.channels,
            paused: e.paused,
            flap_detection: e.flap_detection.map(FlapDetection::wire),
            flap_threshold: e.flap_threshold,
            flap_window_ms,
            flap_stable_for_ms,
            recover_after,
            remind_every_ms,
            remind_max,
            tags: e.tags,
            expect_closed: e.expect_closed,
            degraded_after_ms,
            degraded_checks,
        });
    }
    Ok(out)
}

/// The settings of `current` that differ from what `desired` manages.
fn diffs(current: &v1::Monitor, d: &Desired) -> Vec<Diff> {
    let mut out = Vec::new();
    let mut cmp = |field: &'static str, from: String, to: String| {
        if from != to {
            out.push(Diff { field, from, to });
        }
    };
    cmp("host", current.host.clone(), d.host.clone());
    cmp("port", current.port.to_string(), d.port.to_string());
    cmp("regions", current.regions.join(","), d.regions.join(","));
    if let Some(v) = d.interval_ms {
        cmp(
            "interval",
            output::millis(current.interval_ms),
            output::millis(v),
        );
    }
    if let Some(v) = d.timeout_ms {
        cmp(
            "timeout",
            output::millis(u64::from(current.timeout_ms)),
            output::millis(u64::from(v)),
        );
    }
    if let Some(v) = d.consensus {
        cmp(
            "consensus",
            names::consensus(current.consensus).to_string(),
            names::consensus(v).to_string(),
        );
    }
    if let Some(v) = d.family {
        cmp(
            "family",
            names::family(current.family).to_string(),
            names::family(v).to_string(),
        );
    }
    if let Some(v) = d.address_policy {
        cmp(
            "address_policy",
            names::address_policy(current.address_policy).to_string(),
            names::address_policy(v).to_string(),
        );
    }
    if let Some(v) = d.close_mode {
        cmp(
            "close_mode",
            names::close_mode(current.close_mode).to_string(),
            names::close_mode(v).to_string(),
        );
    }
    if let Some(v) = &d.channels {
        cmp("channels", current.channel_ids.join(","), v.join(","));
    }
    if let Some(v) = d.paused {
        cmp("paused", current.paused.to_string(), v.to_string());
    }
    // Stored values are compared: "default" follows the interval, an explicit
    // span does not, so the two differ even when they come to the same now.
    if let Some(v) = d.flap_detection {
        cmp(
            "flap_detection",
            names::flap_detection(current.flap_detection).to_string(),
            names::flap_detection(v).to_string(),
        );
    }
    let or_default = |v: u64, text: &dyn Fn(u64) -> String| {
        if v == 0 {
            "default".to_string()
        } else {
            text(v)
        }
    };
    if let Some(v) = d.flap_threshold {
        let n = |v: u64| v.to_string();
        cmp(
            "flap_threshold",
            or_default(u64::from(current.flap_threshold), &n),
            or_default(u64::from(v), &n),
        );
    }
    if let Some(v) = d.flap_window_ms {
        cmp(
            "flap_window",
            or_default(current.flap_window_ms, &output::millis),
            or_default(v, &output::millis),
        );
    }
    if let Some(v) = d.flap_stable_for_ms {
        cmp(
            "flap_stable_for",
            or_default(current.flap_stable_for_ms, &output::millis),
            or_default(v, &output::millis),
        );
    }
    let n = |v: u64| v.to_string();
    if let Some(v) = d.recover_after {
        cmp(
            "recover_after",
            or_default(u64::from(current.recover_after), &n),
            or_default(u64::from(v), &n),
        );
    }
    if let Some(v) = d.remind_every_ms {
        let every = |v: u64| {
            if v == 0 {
                "off".to_string()
            } else {
                output::millis(v)
            }
        };
        cmp("remind_every", every(current.remind_every_ms), every(v));
    }
    if let Some(v) = &d.tags {
        cmp("tags", current.tags.join(","), v.join(","));
    }
    if let Some(v) = d.degraded_after_ms {
        let ms = |v: u64| {
            if v == 0 {
                "off".to_string()
            } else {
                output::millis(v)
            }
        };
        cmp(
            "degraded_after",
            ms(u64::from(current.degraded_after_ms)),
            ms(u64::from(v)),
        );
    }
    if let Some(v) = d.degraded_checks {
        cmp(
            "degraded_checks",
            or_default(u64::from(current.degraded_checks), &n),
            or_default(u64::from(v), &n),
        );
    }
    if let Some(v) = d.expect_closed {
        cmp(
            "expect_closed",
            current.expect_closed.to_string(),
            v.to_string(),
        );
    }
    if let Some(v) = d.remind_max {
        cmp(
            "remind_max",
            or_default(u64::from(current.remind_max), &n),
            or_default(u64::from(v), &n),
        );
    }
    out
}

/// What to do to make `current` match `desired`. Pure: no I/O.
///
/// Fails when a name in the file is shared by several current monitors, since
/// the file could then mean either.
pub fn plan(desired: &[Desired], current: &[v1::Monitor], prune: bool) -> Result<Vec<Change>> {
    let mut by_name: BTreeMap<&str, Vec<&v1::Monitor>> = BTreeMap::new();
    for m in current {
        by_name.entry(m.name.as_str()).or_default().push(m);
    }
    let wanted: HashSet<&str> = desired.iter().map(|d| d.name.as_str()).collect();
    let mut changes = Vec::new();
    for m in current {
        if !wanted.contains(m.name.as_str()) {
            changes.push(if prune {
                Change::Delete(m.clone())
            } else {
                Change::Keep(m.clone())
            });
        }
    }
    for d in desired {
        match by_name.get(d.name.as_str()).map(Vec::as_slice) {
            None | Some([]) => changes.push(Change::Create(d.clone())),
            Some([m]) => {
                let diffs = diffs(m, d);
                if diffs.is_empty() {
                    changes.push(Change::Unchanged((*m).clone()));
                } else {
                    changes.push(Change::Update {
                        current: (*m).clone(),
                        desired: d.clone(),
                        diffs,
                    });
                }
            }
            Some(many) => {
                return Err(CliError::refused(format!(
                    "monitor name {:?} is used by {} monitors ({}); apply identifies monitors by name: rename or delete all but one first",
                    d.name,
                    many.len(),
                    many.iter()
                        .map(|m| m.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
    }
    Ok(changes)
}

/// The plan as text, one line per monitor that changes.
fn render(changes: &[Change]) -> String {
    let mut text = String::new();
    let (mut c, mut u, mut d, mut same, mut kept) = (0, 0, 0, 0, 0);
    for ch in changes {
        match ch {
            Change::Create(x) => {
                c += 1;
                let mut extra = String::new();
                if let Some(ms) = x.interval_ms {
                    extra.push_str(&format!(", every {}", output::millis(ms)));
                }
                if x.paused == Some(true) {
                    extra.push_str(", paused");
                }
                text.push_str(&format!(
                    "+ create {:?}: {} from {}{extra}\n",
                    x.name,
                    target(&x.host, x.port),
                    x.regions.join(",")
                ));
            }
            Change::Update { current, diffs, .. } => {
                u += 1;
                let what: Vec<String> = diffs
                    .iter()
                    .map(|df| format!("{}: {} -> {}", df.field, show(&df.from), show(&df.to)))
                    .collect();
                text.push_str(&format!(
                    "~ update {:?} ({}): {}\n",
                    current.name,
                    current.id,
                    what.join("; ")
                ));
            }
            Change::Delete(m) => {
                d += 1;
                text.push_str(&format!(
                    "- delete {:?} ({}): {}\n",
                    m.name,
                    m.id,
                    target(&m.host, m.port)
                ));
            }
            Change::Keep(m) => {
                kept += 1;
                text.push_str(&format!(
                    "  keep {:?} ({}): {}: not in the file (--prune would delete it)\n",
                    m.name,
                    m.id,
                    target(&m.host, m.port)
                ));
            }
            Change::Unchanged(_) => same += 1,
        }
    }
    text.push_str(&format!(
        "plan: {c} to create, {u} to update, {d} to delete, {same} unchanged"
    ));
    if kept > 0 {
        text.push_str(&format!(", {kept} not in the file (kept)"));
    }
    text.push('\n');
    text
}

fn show(s: &str) -> &str {
    if s.is_empty() { "(none)" } else { s }
}

fn plan_json(changes: &[Change], dry_run: bool, applied: &[String]) -> Value {
    let mut create = Vec::new();
    let mut update = Vec::new();
    let mut delete = Vec::new();
    let mut unchanged = Vec::new();
    let mut kept = Vec::new();
    for ch in changes {
        match ch {
            Change::Create(x) => create.push(json!({ "name": x.name })),
            Change::Update { current, diffs, .. } => update.push(json!({
                "name": current.name,
                "id": current.id,
                "changes": diffs.iter().map(|d| json!({
                    "field": d.field, "from": d.from, "to": d.to,
                })).collect::<Vec<_>>(),
            })),
            Change::Delete(m) => delete.push(json!({ "name": m.name, "id": m.id })),
            Change::Unchanged(m) => unchanged.push(json!({ "name": m.name, "id": m.id })),
            Change::Keep(m) => kept.push(json!({ "name": m.name, "id": m.id })),
        }
    }
    json!({
        "dry_run": dry_run,
        "create": create,
        "update": update,
        "delete": delete,
        "unchanged": unchanged,
        "kept": kept,
        "applied": applied,
    })
}

/// The UpdateMonitor request for the settings that differ (not `paused`,
/// which has calls of its own); `None` when only `paused` differs.
fn update_request(
    tenant: &str,
    current: &v1::Monitor,
    d: &Desired,
    diffs: &[Diff],
) -> Option<v1::UpdateMonitorRequest> {
    let changed = |f: &str| diffs.iter().any(|x| x.field == f);
    let mut req = v1::UpdateMonitorRequest {
        tenant_id: tenant.to_string(),
        id: current.id.clone(),
        ..Default::default()
    };
    let mut any = false;
    if changed("host") {
        req.host = Some(d.host.clone());
        any = true;
    }
    if changed("port") {
        req.port = Some(d.port);
        any = true;
    }
    if changed("regions") {
        req.set_regions = true;
        req.regions = d.regions.clone();
        any = true;
    }
    if changed("interval") {
        req.interval_ms = d.interval_ms;
        any = true;
    }
    if changed("timeout") {
        req.timeout_ms = d.timeout_ms;
        any = true;
    }
    if changed("consensus") {
        req.consensus = d.consensus;
        any = true;
    }
    if changed("family") {
        req.family = d.family;
        any = true;
    }
    if changed("address_policy") {
        req.address_policy = d.address_policy;
        any = true;
    }
    if changed("close_mode") {
        req.close_mode = d.close_mode;
        any = true;
    }
    if changed("channels") {
        req.set_channel_ids = true;
        req.channel_ids = d.channels.clone().unwrap_or_default();
        any = true;
    }
    if changed("flap_detection") {
        req.flap_detection = d.flap_detection;
        any = true;
    }
    if changed("flap_threshold") {
        req.flap_threshold = d.flap_threshold;
        any = true;
    }
    if changed("flap_window") {
        req.flap_window_ms = d.flap_window_ms;
        any = true;
    }
    if changed("flap_stable_for") {
        req.flap_stable_for_ms = d.flap_stable_for_ms;
        any = true;
    }
    if changed("recover_after") {
        req.recover_after = d.recover_after;
        any = true;
    }
    if changed("remind_every") {
        req.remind_every_ms = d.remind_every_ms;
        any = true;
    }
    if changed("remind_max") {
        req.remind_max = d.remind_max;
        any = true;
    }
    if changed("tags") {
        req.set_tags = true;
        req.tags = d.tags.clone().unwrap_or_default();
        any = true;
    }
    if changed("degraded_after") {
        req.degraded_after_ms = d.degraded_after_ms;
        any = true;
    }
    if changed("degraded_checks") {
        req.degraded_checks = d.degraded_checks;
        any = true;
    }
    if changed("expect_closed") {
        req.expect_closed = d.expect_closed;
        any = true;
    }
    if any {
        // The name is the identity; sent explicitly so a default name never
        // follows a new host or port and loses the monitor for the next apply.
        req.name = Some(d.name.clone());
    }
    any.then_some(req)
}

async fn execute(c: &mut Client, changes: &[Change], applied: &mut Vec<String>) -> Result<()> {
    let tenant = c.tenant.clone();
    for ch in changes {
        if let Change::Delete(m) = ch {
            c.admin
                .delete_monitor(v1::DeleteMonitorRequest {
                    tenant_id: tenant.clone(),
                    id: m.id.clone(),
                })
                .await
                .map_err(|e| CliError::from(e).context(format!("deleting {:?}", m.name)))?;
            applied.push(format!("deleted {:?} ({})", m.name, m.id));
        }
    }
    for ch in changes {
        if let Change::Update {
            current,
            desired,
            diffs,
        } = ch
        {
            if let Some(req) = update_request(&tenant, current, desired, diffs) {
                c.admin.update_monitor(req).await.map_err(|e| {
                    CliError::from(e).context(format!("updating {:?}", current.name))
                })?;
            }
            match desired.paused {
                Some(true) if !current.paused => {
                    c.admin
                        .pause_monitor(v1::PauseMonitorRequest {
                            tenant_id: tenant.clone(),
                            id: current.id.clone(),
                        })
                        .await
                        .map_err(|e| {
                            CliError::from(e).context(format!("pausing {:?}", current.name))
                        })?;
                }
                Some(false) if current.paused => {
                    c.admin
                        .resume_monitor(v1::ResumeMonitorRequest {
                            tenant_id: tenant.clone(),
                            id: current.id.clone(),
                        })
                        .await
                        .map_err(|e| {
                            CliError::from(e).context(format!("resuming {:?}", current.name))
                        })?;
                }
                _ => {}
            }
            applied.push(format!("updated {:?} ({})", current.name, current.id));
        }
    }
    for ch in changes {
        if let Change::Create(d) = ch {
            let m = c
                .admin
                .create_monitor(v1::CreateMonitorRequest {
                    tenant_id: tenant.clone(),
                    name: d.name.clone(),
                    host: d.host.clone(),
                    port: d.port,
                    regions: d.regions.clone(),
                    interval_ms: d.interval_ms.unwrap_or(0),
                    timeout_ms: d.timeout_ms.unwrap_or(0),
                    consensus: d.consensus.unwrap_or(0),
                    family: d.family.unwrap_or(0),
                    address_policy: d.address_policy.unwrap_or(0),
                    close_mode: d.close_mode.unwrap_or(0),
                    channel_ids: d.channels.clone().unwrap_or_default(),
                    paused: d.paused.unwrap_or(false),
                    flap_detection: d.flap_detection.unwrap_or(0),
                    flap_threshold: d.flap_threshold.unwrap_or(0),
                    flap_window_ms: d.flap_window_ms.unwrap_or(0),
                    flap_stable_for_ms: d.flap_stable_for_ms.unwrap_or(0),
                    recover_after: d.recover_after.unwrap_or(0),
                    remind_every_ms: d.remind_every_ms.unwrap_or(0),
                    remind_max: d.remind_max.unwrap_or(0),
                    tags: d.tags.clone().unwrap_or_default(),
                    expect_closed: d.expect_closed.unwrap_or(false),
                    degraded_after_ms: d.degraded_after_ms.unwrap_or(0),
                    degraded_checks: d.degraded_checks.unwrap_or(0),
                })
                .await
                .map_err(|e| CliError::from(e).context(format!("creating {:?}", d.name)))?
                .into_inner();
            applied.push(format!("created {:?} ({})", m.name, m.id));
        }
    }
    Ok(())
}

/// Whether deleting `deletes` of the tenant's `total` monitors needs a confirmation.
pub fn needs_confirmation(deletes: usize, total: usize) -> bool {
    deletes > CONFIRM_ABOVE || (deletes > 0 && deletes == total)
}

/// Asks on the terminal; only a typed "yes" goes on.
fn confirm_at_terminal(deletes: usize, total: usize) -> Result<()> {
    use std::io::{BufRead, Write};
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "apply: this deletes {deletes} of the tenant's {total} monitors (listed above). \
         Type \"yes\" to go on: "
    );
    let _ = err.flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| CliError::usage(format!("apply: reading the confirmation: {e}")))?;
    if answer.trim() == "yes" {
        Ok(())
    } else {
        Err(CliError::refused("apply: not confirmed; nothing changed"))
    }
}

pub async fn run(conn: &ConnectArgs, a: ApplyArgs, out: OutputFormat) -> Result<()> {
    use std::io::IsTerminal;
    let desired = load(&a.file)?;
    let mut c = Client::connect(conn).await?;
    let current = c.all_monitors().await?;
    let changes = plan(&desired, &current, a.prune)?;
    if out == OutputFormat::Table {
        output::print(&render(&changes))?;
    }
    let deletes = changes
        .iter()
        .filter(|ch| matches!(ch, Change::Delete(_)))
        .count();
    if !a.dry_run && !a.yes && needs_confirmation(deletes, current.len()) {
        if std::io::stdin().is_terminal() && out == OutputFormat::Table {
            confirm_at_terminal(deletes, current.len())?;
        } else {
            let all = if deletes == current.len() {
                ", all of them"
            } else {
                ""
            };
            return Err(CliError::usage(format!(
                "apply: --prune would delete {deletes} of the tenant's {} monitors{all}; nothing \
                 changed. Check the plan (--dry-run), then pass --yes, or run it at a terminal \
                 to be asked",
                current.len()
            )));
        }
    }
    let mut applied = Vec::new();
    let result = if a.dry_run {
        Ok(())
    } else {
        execute(&mut c, &changes, &mut applied).await
    };
    match out {
        OutputFormat::Json => output::json(&plan_json(&changes, a.dry_run, &applied))?,
        OutputFormat::Table if a.dry_run => output::line("dry run: nothing changed")?,
        OutputFormat::Table => {
            for line in &applied {
                output::line(line)?;
            }
            if result.is_ok() {
                output::line(&format!("applied: {} change(s)", applied.len()))?;
            }
        }
    }
    result.map_err(|e| {
        if applied.is_empty() {
            e
        } else {
            e.context(format!("stopped after {} change(s)", applied.len()))
        }
    })
}

#[cfg(test)]
mod tests;
