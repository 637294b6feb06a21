//! Checks on what the admin API is asked to store, as pure functions.
//!
//! The admin API calls these before it writes anything, so a rejected request
//! changes nothing and every refusal names the field and the reason (DESIGN.md,
//! "Durability"). Nothing here touches the store, the hub or the clock: the caller
//! passes in what the check depends on (the tenant's plan, the regions that
//! exist), which keeps the table test below exhaustive and fast.
//!
//! Guarantees of [`monitor`]:
//! - what it returns is normalised: defaults filled in (name, interval, timeout),
//!   enums never `UNSPECIFIED`, the host in its canonical form (lower-case ASCII,
//!   IPv6 without brackets);
//! - every region exists and is usable by the tenant; a private region of another
//!   tenant answers exactly like a region that does not exist;
//! - a host that is non-public by definition (a non-public IP literal, or a name
//!   such as `localhost`) is refused when any chosen region is public: public
//!   probes never check private space;
//! - errors in single fields come first ([`Violation::Invalid`],
//!   INVALID_ARGUMENT); then the interval is measured against the plan
//!   ([`Violation::PlanLimit`], FAILED_PRECONDITION); the timeout must be shorter
//!   than the interval last, so an interval below the plan is reported as such
//!   rather than as a default timeout that does not fit in it; an explicit
//!   flap window or stability time shorter than the interval comes after it.
//! - flap detection fields keep 0 for "the default" (`portwatch_proto::flap`,
//!   counted in intervals, so it follows a changed interval); the detection
//!   switch is stored ON or OFF, never UNSPECIFIED.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

use portwatch_check::{AddressPolicy, CloseMode, Family, Host, WireError};
use portwatch_proto::convert::{SettingFromWire, port_from_wire, timeout_from_wire};
use portwatch_proto::{flap, v1};
use tonic::Status;

use crate::plans::{PlanLimits, Plans, plan_name};

/// Longest monitor name, in characters.
pub const MAX_MONITOR_NAME: usize = 200;
/// Longest tenant name, in characters.
pub const MAX_TENANT_NAME: usize = 100;
/// Longest description (regions, tokens), in characters.
pub const MAX_DESCRIPTION: usize = 200;
/// Longest id or page token accepted in a request, in characters.
pub const MAX_ID: usize = 128;
/// Longest tenant id or region name (a DNS label's length).
pub const MAX_SLUG: usize = 63;
/// Most regions one monitor may use.
pub const MAX_REGIONS: usize = 20;
/// Most channels one monitor may name.
pub const MAX_CHANNELS: usize = 20;
/// Interval used when a request leaves it at 0 (unless the plan asks for more).
pub const DEFAULT_INTERVAL_MS: u64 = 60_000;
/// Shortest and longest interval any plan could allow.
pub const MIN_INTERVAL_MS: u64 = 1_000;
pub const MAX_INTERVAL_MS: u64 = 86_400_000;
/// Page size used when a request leaves it at 0, and the largest accepted.
pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: u32 = 1_000;
/// Longest user text quoted back in an error message.
const QUOTED: usize = 40;
/// A host string longer than this is refused before IDNA ever looks at it.
const MAX_HOST_INPUT: usize = 1_024;

/// Which gRPC code a refusal maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    /// The request itself is wrong: INVALID_ARGUMENT.
    Invalid,
    /// The request is fine but the tenant's plan does not allow it: FAILED_PRECONDITION.
    PlanLimit,
}

/// A refused field: `"{field}: {reason}"`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: &'static str,
    pub reason: String,
    pub violation: Violation,
}

impl FieldError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> FieldError {
        FieldError {
            field,
            reason: reason.into(),
            violation: Violation::Invalid,
        }
    }

    pub fn plan_limit(field: &'static str, reason: impl Into<String>) -> FieldError {
        FieldError {
            field,
            reason: reason.into(),
            violation: Violation::PlanLimit,
        }
    }
}

impl From<WireError> for FieldError {
    fn from(e: WireError) -> FieldError {
        FieldError::invalid(e.field, e.reason)
    }
}

impl From<FieldError> for Status {
    fn from(e: FieldError) -> Status {
        match e.violation {
            Violation::Invalid => Status::invalid_argument(e.to_string()),
            Violation::PlanLimit => Status::failed_precondition(e.to_string()),
        }
    }
}

type Result<T> = std::result::Result<T, FieldError>;

/// User text for an error message: escaped, and cut short when long.
pub fn quote(s: &str) -> String {
    if s.chars().count() <= QUOTED {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(QUOTED).collect();
        format!("{:?}…", head)
    }
}

/// A duration in milliseconds as people read it: "30 s", "1500 ms".
fn human_ms(ms: u64) -> String {
    if ms.is_multiple_of(1_000) {
        format!("{} s", ms / 1_000)
    } else {
        format!("{ms} ms")
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------- simple fields

/// A tenant id or region name: `[a-z0-9-]`, 1 to 63 characters, not starting or
/// ending with '-' (they end up in DNS-like names, metric labels and CLI arguments).
pub fn slug(field: &'static str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(FieldError::invalid(field, "required"));
    }
    let len = value.chars().count();
    if len > MAX_SLUG {
        return Err(FieldError::invalid(
            field,
            format!("is {len} characters long; at most {MAX_SLUG}"),
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-'))
    {
        return Err(FieldError::invalid(
            field,
            format!("invalid character {c:?}; only a-z, 0-9 and '-' are allowed"),
        ));
    }
    if value.starts_with('-') || value.ends_with('-') {
        return Err(FieldError::invalid(field, "must not start or end with '-'"));
    }
    Ok(())
}

/// Free text with a length limit and no control characters; `required` refuses
/// empty or blank text.
pub fn text(field: &'static str, value: &str, max: usize, required: bool) -> Result<()> {
    let len = value.chars().count();
    if len > max {
        return Err(FieldError::invalid(
            field,
            format!("is {len} characters long; at most {max}"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError::invalid(field, "contains a control character"));
    }
    if required && value.is_empty() {
        return Err(FieldError::invalid(field, "required"));
    }
    if !value.is_empty() && value.trim().is_empty() {
        return Err(FieldError::invalid(field, "must not be blank"));
    }
    Ok(())
}

/// An object id named in a request (monitor, incident, token): required, bounded.
pub fn id(field: &'static str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(FieldError::invalid(field, "required"));
    }
    optional_id(field, value)
}

/// An id that may be left empty (a filter, a page token).
pub fn optional_id(field: &'static str, value: &str) -> Result<()> {
    let len = value.chars().count();
    if len > MAX_ID {
        return Err(FieldError::invalid(
            field,
            format!("is {len} characters long; at most {MAX_ID}"),
        ));
    }
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(FieldError::invalid(
            field,
            "contains whitespace or a control character",
        ));
    }
    Ok(())
}

/// A plan that must be set.
pub fn plan(value: i32) -> Result<v1::Plan> {
    match v1::Plan::try_from(value) {
        Ok(v1::Plan::Unspecified) => Err(FieldError::invalid("plan", "required")),
        Ok(p) => Ok(p),
        Err(_) => Err(FieldError::invalid(
            "plan",
            format!("unknown value {value}"),
        )),
    }
}

/// A page size: 0 means the default; more than the maximum is refused.
pub fn page_size(field: &'static str, value: u32) -> Result<usize> {
    match value {
        0 => Ok(DEFAULT_PAGE_SIZE),
        1..=MAX_PAGE_SIZE => usize::try_from(value)
            .map_err(|_| FieldError::invalid(field, "does not fit this platform")),
        _ => Err(FieldError::invalid(
            field,
            format!("{value} is too large; at most {MAX_PAGE_SIZE}"),
        )),
    }
}

/// A consensus policy; `UNSPECIFIED` is the default (quorum).
pub fn consensus(value: i32) -> Result<v1::ConsensusPolicy> {
    match v1::ConsensusPolicy::try_from(value) {
        Ok(v1::ConsensusPolicy::Unspecified) => Ok(v1::ConsensusPolicy::Quorum),
        Ok(p) => Ok(p),
        Err(_) => Err(FieldError::invalid(
            "consensus",
            format!("unknown value {value}"),
        )),
    }
}

// ---------------------------------------------------------------- plans

/// The plan's limits, provided it includes port monitors at all.
pub fn port_monitors_allowed(plans: &Plans, plan: i32) -> Result<PlanLimits> {
    let name = plan_name(plan);
    let limits = plans.limits(plan).ok_or_else(|| {
        FieldError::plan_limit("plan", format!("the tenant's plan ({name}) is not known"))
    })?;
    if limits.port_monitors {
        return Ok(*limits);
    }
    let cheapest = [v1::Plan::Basic, v1::Plan::Pro, v1::Plan::Enterprise]
        .into_iter()
        .find(|p| plans.limits(*p as i32).is_some_and(|l| l.port_monitors));
    let needed = match cheapest {
        Some(p) => format!("{} or above is required", plan_name(p as i32)),
        None => "no plan on this coordinator includes them".to_string(),
    };
    Err(FieldError::plan_limit(
        "plan",
        format!("the {name} plan does not include port monitors; {needed}"),
    ))
}

/// Room for one more monitor under the plan.
pub fn monitor_quota(plan: i32, limits: &PlanLimits, count: usize) -> Result<()> {
    let max = usize::try_from(limits.max_monitors).unwrap_or(usize::MAX);
    if count < max {
        return Ok(());
    }
    Err(FieldError::plan_limit(
        "plan",
        format!(
            "the {} plan allows at most {} monitors and this tenant has {count}",
            plan_name(plan),
            limits.max_monitors
        ),
    ))
}

// ---------------------------------------------------------------- monitors

/// A monitor as a request describes it, before defaults and checks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MonitorDraft {
    pub name: String,
    pub host: String,
    pub port: u32,
    pub regions: Vec<String>,
    pub interval_ms: u64,
    pub timeout_ms: u32,
    pub consensus: i32,
    pub family: i32,
    pub address_policy: i32,
    pub close_mode: i32,
    pub channel_ids: Vec<String>,
    pub flap_detection: i32,
    pub flap_threshold: u32,
    pub flap_window_ms: u64,
    pub flap_stable_for_ms: u64,
    pub recover_after: u32,
    pub remind_every_ms: u64,
    pub remind_max: u32,
    pub tags: Vec<String>,
    pub expect_closed: bool,
    pub degraded_after_ms: u32,
    pub degraded_checks: u32,
}

impl From<&v1::CreateMonitorRequest> for MonitorDraft {
    fn from(r: &v1::CreateMonitorRequest) -> MonitorDraft {
        MonitorDraft {
            name: r.name.clone(),
            host: r.host.clone(),
            port: r.port,
            regions: r.regions.clone(),
            interval_ms: r.interval_ms,
            timeout_ms: r.timeout_ms,
            consensus: r.consensus,
            family: r.family,
            address_policy: r.address_policy,
            close_mode: r.close_mode,
            channel_ids: r.channel_ids.clone(),
            flap_detection: r.flap_detection,
            flap_threshold: r.flap_threshold,
            flap_window_ms: r.flap_window_ms,
            flap_stable_for_ms: r.flap_stable_for_ms,
            recover_after: r.recover_after,
            remind_every_ms: r.remind_every_ms,
            remind_max: r.remind_max,
            tags: r.tags.clone(),
            expect_closed: r.expect_closed,
            degraded_after_ms: r.degraded_after_ms,
            degraded_checks: r.degraded_checks,
        }
    }
}

impl From<&v1::Monitor> for MonitorDraft {
    fn from(m: &v1::Monitor) -> MonitorDraft {
        MonitorDraft {
            name: m.name.clone(),
            host: m.host.clone(),
            port: m.port,
            regions: m.regions.clone(),
            interval_ms: m.interval_ms,
            timeout_ms: m.timeout_ms,
            consensus: m.consensus,
            family: m.family,
            address_policy: m.address_policy,
            close_mode: m.close_mode,
            channel_ids: m.channel_ids.clone(),
            flap_detection: m.flap_detection,
            flap_threshold: m.flap_threshold,
            flap_window_ms: m.flap_window_ms,
            flap_stable_for_ms: m.flap_stable_for_ms,
            recover_after: m.recover_after,
            remind_every_ms: m.remind_every_ms,
            remind_max: m.remind_max,
            tags: m.tags.clone(),
            expect_closed: m.expect_closed,
            degraded_after_ms: m.degraded_after_ms,
            degraded_checks: m.degraded_checks,
        }
    }
}

/// What a monitor's settings are checked against.
#[derive(Clone, Copy, Debug)]
pub struct Tenancy<'a> {
    pub tenant_id: &'a str,
    /// The tenant's plan (wire value), for messages.
    pub plan: i32,
    pub limits: &'a PlanLimits,
    /// Every region that exists.
    pub regions: &'a [v1::Region],
}

/// A monitor's settings, checked and normalised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MonitorSpec {
    pub name: String,
    pub host: Host,
    pub port: u16,
    pub regions: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub consensus: v1::ConsensusPolicy,
    pub family: Family,
    pub address_policy: AddressPolicy,
    pub close_mode: CloseMode,
    pub channel_ids: Vec<String>,
    pub flap: FlapSpec,
    pub alerting: AlertSpec,
    pub tags: Vec<String>,
    pub expect_closed: bool,
    pub degraded_after_ms: u32,
    pub degraded_checks: u32,
}

/// How a monitor's incidents close and are repeated, checked (0 = the
/// default, as on the wire).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AlertSpec {
    pub recover_after: u32,
    pub remind_every_ms: u64,
    pub remind_max: u32,
}

/// A monitor's flap detection, checked: the switch ON or OFF, the numbers as
/// given (0 = the default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlapSpec {
    pub detection: v1::FlapDetection,
    pub threshold: u32,
    pub window_ms: u64,
    pub stable_for_ms: u64,
}

impl MonitorSpec {
    /// Writes the settings into a stored monitor; identity, ownership, state and
    /// timestamps are the caller's.
    pub fn write_to(&self, m: &mut v1::Monitor) {
        m.name = self.name.clone();
        m.host = self.host.as_str();
        m.port = u32::from(self.port);
        m.regions = self.regions.clone();
        m.interval_ms = millis(self.interval);
        m.timeout_ms = u32::try_from(self.timeout.as_millis()).unwrap_or(u32::MAX);
        m.consensus = self.consensus as i32;
        m.family = v1::IpFamily::from(self.family) as i32;
        m.address_policy = v1::AddressPolicy::from(self.address_policy) as i32;
        m.close_mode = v1::CloseMode::from(self.close_mode) as i32;
        m.channel_ids = self.channel_ids.clone();
        m.flap_detection = self.flap.detection as i32;
        m.flap_threshold = self.flap.threshold;
        m.flap_window_ms = self.flap.window_ms;
        m.flap_stable_for_ms = self.flap.stable_for_ms;
        m.recover_after = self.alerting.recover_after;
        m.remind_every_ms = self.alerting.remind_every_ms;
        m.remind_max = self.alerting.remind_max;
        m.tags = self.tags.clone();
        m.expect_closed = self.expect_closed;
        m.degraded_after_ms = self.degraded_after_ms;
        m.degraded_checks = self.degraded_checks;
    }
}

/// The name a monitor gets when none is given: "host:port" ("[::1]:22" for IPv6).
pub fn default_name(host: &Host, port: u16) -> String {
    match host {
        Host::Ip(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        _ => format!("{host}:{port}"),
    }
}

/// Checks a whole monitor and returns it normalised.
pub fn monitor(d: &MonitorDraft, t: &Tenancy<'_>) -> Result<MonitorSpec> {
    text("name", &d.name, MAX_MONITOR_NAME, false)?;
    let host = parse_host(&d.host)?;
    let port = port_from_wire(d.port, "port")?;
    let regions = regions(&d.regions, t)?;
    let interval_ms = match d.interval_ms {
        0 => DEFAULT_INTERVAL_MS.max(millis(t.limits.min_interval)),
        ms => ms,
    };
    if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&interval_ms) {
        return Err(FieldError::invalid(
            "interval_ms",
            format!(
                "{interval_ms} ms is out of range; must be {MIN_INTERVAL_MS}-{MAX_INTERVAL_MS} ms (1 s to 24 h)"
            ),
        ));
    }
    let timeout = timeout_from_wire(d.timeout_ms, "timeout_ms")?;
    let consensus = consensus(d.consensus)?;
    let family = Family::from_wire(d.family)?;
    let address_policy = AddressPolicy::from_wire(d.address_policy)?;
    let close_mode = CloseMode::from_wire(d.close_mode)?;
    let channel_ids = channel_ids(&d.channel_ids)?;
    let detection = flap_detection(d.flap_detection)?;
    flap_threshold(d.flap_threshold)?;

    match (&host, family) {
        (Host::Ip(IpAddr::V6(ip)), Family::Ipv4) => {
            return Err(FieldError::invalid(
                "family",
                format!("ipv4 cannot reach the IPv6 literal {ip}; use ipv6 or any"),
            ));
        }
        (Host::Ip(IpAddr::V4(ip)), Family::Ipv6) => {
            return Err(FieldError::invalid(
                "family",
                format!("ipv6 cannot reach the IPv4 literal {ip}; use ipv4 or any"),
            ));
        }
        _ => {}
    }

    // Public probes never check private space; the agents' guard would block it
    // anyway, but a tenant learns it here and not from an endless "blocked".
    if host.is_non_public() {
        let public = regions.iter().find(|name| {
            t.regions
                .iter()
                .any(|r| &r.name == *name && r.owner_tenant_id.is_empty())
        });
        if public.is_some() {
            let why = match &host {
                Host::Ip(ip) => portwatch_check::guard::non_public_range(*ip)
                    .unwrap_or("a non-public address")
                    .to_string(),
                Host::Name(_) => "a name that only resolves locally".to_string(),
            };
            return Err(FieldError::invalid(
                "host",
                format!(
                    "{host} is non-public ({why}); only a private region's self-hosted probe may check it"
                ),
            ));
        }
    }

    // Plan limits last: a request that is wrong anyway hears about that first.
    let min_ms = millis(t.limits.min_interval);
    if interval_ms < min_ms {
        return Err(FieldError::plan_limit(
            "interval_ms",
            format!(
                "{interval_ms} ms is below the {} plan's minimum of {}",
                plan_name(t.plan),
                human_ms(min_ms)
            ),
        ));
    }

    // After the plan check: an interval below the plan is the problem to report,
    // not the default timeout that happens not to fit in it.
    if millis(timeout) > interval_ms {
        return Err(FieldError::invalid(
            "timeout_ms",
            format!(
                "{} ms must not be longer than the interval ({interval_ms} ms)",
                millis(timeout)
            ),
        ));
    }

    flap_span(
        "flap_window_ms",
        d.flap_window_ms,
        interval_ms,
        flap::DEFAULT_WINDOW_INTERVALS,
    )?;
    flap_span(
        "flap_stable_for_ms",
        d.flap_stable_for_ms,
        interval_ms,
        flap::DEFAULT_STABLE_INTERVALS,
    )?;

    let alerting = alerting(d, interval_ms, millis(t.limits.min_remind_every))?;
    let tags = tags("tags", &d.tags)?;
    let timeout_ms = millis(timeout);
    if d.degraded_after_ms != 0 && u64::from(d.degraded_after_ms) >= timeout_ms {
        return Err(FieldError::invalid(
            "degraded_after_ms",
            format!(
                "{} ms must be below the timeout ({timeout_ms} ms); 0 turns slowness alerts off",
                d.degraded_after_ms
            ),
        ));
    }
    if d.degraded_checks > 100 {
        return Err(FieldError::invalid(
            "degraded_checks",
            format!(
                "{} is out of range; must be 0 (the default, 3) or 1-100 checks",
                d.degraded_checks
            ),
        ));
    }
    if d.degraded_after_ms != 0 && d.expect_closed {
        return Err(FieldError::invalid(
            "degraded_after_ms",
            "a monitor that expects its port closed has no connect time to be slow in",
        ));
    }

    let name = if d.name.is_empty() {
        default_name(&host, port)
    } else {
        d.name.clone()
    };
    Ok(MonitorSpec {
        name,
        host,
        port,
        regions,
        interval: Duration::from_millis(interval_ms),
        timeout,
        consensus,
        family,
        address_policy,
        close_mode,
        channel_ids,
        flap: FlapSpec {
            detection,
            threshold: d.flap_threshold,
            window_ms: d.flap_window_ms,
            stable_for_ms: d.flap_stable_for_ms,
        },
        alerting,
        tags,
        expect_closed: d.expect_closed,
        degraded_after_ms: d.degraded_after_ms,
        degraded_checks: d.degraded_checks,
    })
}

/// Most tags on one monitor (or one maintenance window).
pub const MAX_TAGS: usize = 20;
/// Longest tag.
pub const MAX_TAG: usize = 63;

/// One tag: `[a-z0-9][a-z0-9._:-]*`, at most [`MAX_TAG`] characters.
pub fn tag(field: &'static str, t: &str) -> Result<()> {
    let ok = !t.is_empty()
        && t.len() <= MAX_TAG
        && t.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && t.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | ':' | '-')
        });
    if ok {
        Ok(())
    } else {
        Err(FieldError::invalid(
            field,
            format!(
                "{t:?} is not a tag; use lower-case letters, digits and . _ : - (starting with a letter or digit), at most {MAX_TAG} characters"
            ),
        ))
    }
}

/// A list of tags, checked, without repeats (first occurrence kept).
pub fn tags(field: &'static str, tags: &[String]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::with_capacity(tags.len());
    for t in tags {
        tag(field, t)?;
        if !out.contains(t) {
            out.push(t.clone());
        }
    }
    if out.len() > MAX_TAGS {
        return Err(FieldError::invalid(
            field,
            format!("{} tags; at most {MAX_TAGS}", out.len()),
        ));
    }
    Ok(out)
}

/// Most rounds `recover_after` may ask for.
pub const MAX_RECOVER_AFTER: u32 = 100;
/// Longest reminder period.
pub const MAX_REMIND_EVERY_MS: u64 = 7 * 24 * 3_600_000;
/// Reminders per incident when `remind_max` is 0.
pub const DEFAULT_REMIND_MAX: u32 = 10;
/// Most reminders `remind_max` may ask for.
pub const MAX_REMIND_MAX: u32 = 100;

/// `recover_after`, `remind_every_ms` and `remind_max`.
/// `min_remind_ms`: the plan's shortest reminder period (a reminder every
/// few seconds would be a second page, not a reminder).
fn alerting(d: &MonitorDraft, interval_ms: u64, min_remind_ms: u64) -> Result<AlertSpec> {
    if d.recover_after > MAX_RECOVER_AFTER {
        return Err(FieldError::invalid(
            "recover_after",
            format!(
                "{} is out of range; must be 0 (the default, 1) or 1-{MAX_RECOVER_AFTER} rounds",
                d.recover_after
            ),
        ));
    }
    let every = d.remind_every_ms;
    if every != 0 {
        if every < interval_ms {
            return Err(FieldError::invalid(
                "remind_every_ms",
                format!(
                    "{every} ms is shorter than the interval ({}); must be 0 (off) or at least that",
                    human_ms(interval_ms)
                ),
            ));
        }
        if every < min_remind_ms {
            return Err(FieldError::plan_limit(
                "remind_every_ms",
                format!(
                    "{every} ms is below the plan's shortest reminder period of {}",
                    human_ms(min_remind_ms)
                ),
            ));
        }
        if every > MAX_REMIND_EVERY_MS {
            return Err(FieldError::invalid(
                "remind_every_ms",
                format!("{every} ms is longer than 7 days"),
            ));
        }
    }
    if d.remind_max > MAX_REMIND_MAX {
        return Err(FieldError::invalid(
            "remind_max",
            format!(
                "{} is out of range; must be 0 (the default, {DEFAULT_REMIND_MAX}) or 1-{MAX_REMIND_MAX}",
                d.remind_max
            ),
        ));
    }
    Ok(AlertSpec {
        recover_after: d.recover_after,
        remind_every_ms: every,
        remind_max: d.remind_max,
    })
}

/// The flap-detection switch; `UNSPECIFIED` is the default (on).
fn flap_detection(value: i32) -> Result<v1::FlapDetection> {
    match v1::FlapDetection::try_from(value) {
        Ok(v1::FlapDetection::Unspecified) => Ok(v1::FlapDetection::On),
        Ok(v) => Ok(v),
        Err(_) => Err(FieldError::invalid(
            "flap_detection",
            format!("unknown value {value}; must be on or off"),
        )),
    }
}

/// 0 (the default) or a threshold that can tell flapping from an outage.
fn flap_threshold(value: u32) -> Result<()> {
    if value == 0 || (flap::MIN_THRESHOLD..=flap::MAX_THRESHOLD).contains(&value) {
        return Ok(());
    }
    Err(FieldError::invalid(
        "flap_threshold",
        format!(
            "{value} is out of range; must be 0 (the default, {}) or {}-{} state changes",
            flap::DEFAULT_THRESHOLD,
            flap::MIN_THRESHOLD,
            flap::MAX_THRESHOLD
        ),
    ))
}

/// 0 (the default, `intervals` × the interval) or a span from one interval
/// (results come no faster) to [`flap::MAX_SPAN`].
fn flap_span(field: &'static str, ms: u64, interval_ms: u64, intervals: u32) -> Result<()> {
    let max_ms = millis(flap::MAX_SPAN);
    if ms == 0 || (interval_ms..=max_ms).contains(&ms) {
        return Ok(());
    }
    let why = if ms < interval_ms {
        format!("is shorter than the interval ({})", human_ms(interval_ms))
    } else {
        "is longer than 30 days".to_string()
    };
    Err(FieldError::invalid(
        field,
        format!(
            "{ms} ms {why}; must be 0 (the default, {intervals} intervals) or from one interval to 30 days"
        ),
    ))
}

fn parse_host(input: &str) -> Result<Host> {
    let len = input.chars().count();
    if len > MAX_HOST_INPUT {
        return Err(FieldError::invalid(
            "host",
            format!("is {len} characters long; at most 253"),
        ));
    }
    Host::parse(input).map_err(|e| FieldError::invalid("host", e.to_string()))
}

fn regions(list: &[String], t: &Tenancy<'_>) -> Result<Vec<String>> {
    if list.is_empty() {
        return Err(FieldError::invalid(
            "regions",
            "at least one region is required",
        ));
    }
    if list.len() > MAX_REGIONS {
        return Err(FieldError::invalid(
            "regions",
            format!("{} regions listed; at most {MAX_REGIONS}", list.len()),
        ));
    }
    let mut seen = HashSet::new();
    for name in list {
        if !seen.insert(name.as_str()) {
            return Err(FieldError::invalid(
                "regions",
                format!("{} is listed twice", quote(name)),
            ));
        }
        // Another tenant's private region answers like a missing one: its
        // existence is none of this tenant's business.
        let usable = t.regions.iter().any(|r| {
            &r.name == name && (r.owner_tenant_id.is_empty() || r.owner_tenant_id == t.tenant_id)
        });
        if !usable {
            return Err(FieldError::invalid(
                "regions",
                format!("unknown region {}", quote(name)),
            ));
        }
    }
    Ok(list.to_vec())
}

fn channel_ids(list: &[String]) -> Result<Vec<String>> {
    if list.len() > MAX_CHANNELS {
        return Err(FieldError::invalid(
            "channel_ids",
            format!("{} channels listed; at most {MAX_CHANNELS}", list.len()),
        ));
    }
    let mut seen = HashSet::new();
    for (i, c) in list.iter().enumerate() {
        if c.is_empty() {
            return Err(FieldError::invalid(
                "channel_ids",
                format!("entry {} is empty", i + 1),
            ));
        }
        optional_id("channel_ids", c)?;
        if !seen.insert(c.as_str()) {
            return Err(FieldError::invalid(
                "channel_ids",
                format!("{} is listed twice", quote(c)),
            ));
        }
    }
    Ok(list.to_vec())
}

// ---------------------------------------------------------------- channels

/// Longest channel name, in characters.
pub const MAX_CHANNEL_NAME: usize = 100;
/// Longest URL accepted.
pub const MAX_URL: usize = 2_048;
/// Shortest webhook secret: it is an HMAC key.
pub const MIN_WEBHOOK_SECRET: usize = 16;
/// Longest secret, password or key accepted.
pub const MAX_SECRET: usize = 1_024;
/// Most recipients of one email channel.
pub const MAX_EMAIL_TO: usize = 20;

/// Where a channel may send to.
#[derive(Clone, Copy, Debug)]
pub struct ChannelPolicy {
    /// The operator's own channel (may reach internal systems).
    pub operator: bool,
    /// The coordinator allows tenants' channels to reach non-public addresses
    /// (`allow_private_channel_targets`, for test set-ups).
    pub allow_private: bool,
}

impl ChannelPolicy {
    fn public_only(&self) -> bool {
        !self.operator && !self.allow_private
    }
}

/// A secret-like value: bounded, no whitespace or control characters.
fn secret(field: &'static str, value: &str, min: usize) -> Result<()> {
    let len = value.chars().count();
    if len == 0 {
        return Err(FieldError::invalid(field, "required"));
    }
    if len < min {
        return Err(FieldError::invalid(
            field,
            format!("is {len} characters long; at least {min}"),
        ));
    }
    if len > MAX_SECRET {
        return Err(FieldError::invalid(
            field,
            format!("is {len} characters long; at most {MAX_SECRET}"),
        ));
    }
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(FieldError::invalid(
            field,
            "contains whitespace or a control character",
        ));
    }
    Ok(())
}

/// A host a channel sends to; non-public ones only where the policy allows.
fn channel_host(field: &'static str, input: &str, p: &ChannelPolicy) -> Result<Host> {
    let host = Host::parse(input.trim_start_matches('[').trim_end_matches(']'))
        .map_err(|e| FieldError::invalid(field, format!("host: {e}")))?;
    if p.public_only() && host.is_non_public() {
        let why = match &host {
            Host::Ip(ip) => portwatch_check::guard::non_public_range(*ip)
                .unwrap_or("a non-public address")
                .to_string(),
            Host::Name(_) => "a name that only resolves locally".to_string(),
        };
        return Err(FieldError::invalid(
            field,
            format!(
                "{host} is non-public ({why}); a tenant's channel may reach public addresses only"
            ),
        ));
    }
    Ok(host)
}

/// An http(s) URL to a host the policy allows.
fn channel_url(field: &'static str, value: &str, p: &ChannelPolicy) -> Result<reqwest::Url> {
    if value.is_empty() {
        return Err(FieldError::invalid(field, "required"));
    }
    let len = value.chars().count();
    if len > MAX_URL {
        return Err(FieldError::invalid(
            field,
            format!("is {len} characters long; at most {MAX_URL}"),
        ));
    }
    let url = reqwest::Url::parse(value)
        .map_err(|e| FieldError::invalid(field, format!("malformed URL {}: {e}", quote(value))))?;
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(FieldError::invalid(
                field,
                format!("unknown scheme {}; must be http or https", quote(other)),
            ));
        }
    }
    let Some(host) = url.host_str() else {
        return Err(FieldError::invalid(field, "the URL has no host"));
    };
    if url.port() == Some(0) {
        return Err(FieldError::invalid(
            field,
            "port 0 cannot be connected to; leave the port out or give one in 1-65535",
        ));
    }
    channel_host(field, host, p)?;
    Ok(url)
}

fn mailbox(field: &'static str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(FieldError::invalid(field, "required"));
    }
    text(field, value, MAX_DESCRIPTION, true)?;
    value
        .parse::<lettre::message::Mailbox>()
        .map(|_| ())
        .map_err(|e| {
            FieldError::invalid(
                field,
                format!("{} is not an email address: {e}", quote(value)),
            )
        })
}

/// Checks a channel's settings and returns them normalised (name, SMTP port and
/// TLS mode filled in). Identity, owner and creation time are the caller's.
pub fn channel(c: &v1::Channel, p: &ChannelPolicy) -> Result<v1::Channel> {
    use v1::channel::Config;
    text("channel.name", &c.name, MAX_CHANNEL_NAME, false)?;
    let (config, default_name) = match &c.config {
        None => {
            return Err(FieldError::invalid(
                "channel.config",
                "required: one of webhook, slack, email or pagerduty",
            ));
        }
        Some(Config::Webhook(w)) => {
            let url = channel_url("channel.webhook.url", &w.url, p)?;
            secret("channel.webhook.secret", &w.secret, MIN_WEBHOOK_SECRET)?;
            let name = format!("webhook {}", url.host_str().unwrap_or_default());
            (Config::Webhook(w.clone()), name)
        }
        Some(Config::Slack(s)) => {
            channel_url("channel.slack.webhook_url", &s.webhook_url, p)?;
            (Config::Slack(s.clone()), "slack".to_string())
        }
        Some(Config::Email(e)) => {
            if e.smtp_host.is_empty() {
                return Err(FieldError::invalid("channel.email.smtp_host", "required"));
            }
            let host = channel_host("channel.email.smtp_host", &e.smtp_host, p)?;
            let tls = match v1::SmtpTls::try_from(e.tls) {
                Ok(v1::SmtpTls::Unspecified) => v1::SmtpTls::Starttls,
                Ok(t) => t,
                Err(_) => {
                    return Err(FieldError::invalid(
                        "channel.email.tls",
                        format!("unknown value {}", e.tls),
                    ));
                }
            };
            // Plaintext never crosses the internet: only to a local test server
            // or relay (which tenants reach only when private targets are allowed).
            if tls == v1::SmtpTls::None && !host.is_non_public() {
                return Err(FieldError::invalid(
                    "channel.email.tls",
                    format!(
                        "none (plaintext) is only for a loopback or private test server, not {host}; use starttls or implicit"
                    ),
                ));
            }
            let port = match e.smtp_port {
                0 => crate::channels::smtp_port(0, tls),
                p => u16::try_from(p).ok().filter(|p| *p != 0).ok_or_else(|| {
                    FieldError::invalid(
                        "channel.email.smtp_port",
                        format!("{p} is not a TCP port (1-65535)"),
                    )
                })?,
            };
            if !e.username.is_empty() {
                text("channel.email.username", &e.username, MAX_DESCRIPTION, true)?;
                secret("channel.email.password", &e.password, 1)?;
            } else if !e.password.is_empty() {
                return Err(FieldError::invalid(
                    "channel.email.username",
                    "required when a password is set",
                ));
            }
            mailbox("channel.email.from", &e.from)?;
            if e.to.is_empty() {
                return Err(FieldError::invalid(
                    "channel.email.to",
                    "at least one recipient is required",
                ));
            }
            if e.to.len() > MAX_EMAIL_TO {
                return Err(FieldError::invalid(
                    "channel.email.to",
                    format!("{} recipients listed; at most {MAX_EMAIL_TO}", e.to.len()),
                ));
            }
            let mut seen = HashSet::new();
            for to in &e.to {
                mailbox("channel.email.to", to)?;
                if !seen.insert(to.to_ascii_lowercase()) {
                    return Err(FieldError::invalid(
                        "channel.email.to",
                        format!("{} is listed twice", quote(to)),
                    ));
                }
            }
            let name = format!("email {}", e.to.join(", "));
            (
                Config::Email(v1::EmailConfig {
                    smtp_host: host.as_str(),
                    smtp_port: u32::from(port),
                    tls: tls as i32,
                    ..e.clone()
                }),
                name,
            )
        }
        Some(Config::Pagerduty(pd)) => {
            secret("channel.pagerduty.routing_key", &pd.routing_key, 1)?;
            if pd.routing_key.len() > 128 {
                return Err(FieldError::invalid(
                    "channel.pagerduty.routing_key",
                    "is longer than 128 characters",
                ));
            }
            if !pd.base_url.is_empty() {
                channel_url("channel.pagerduty.base_url", &pd.base_url, p)?;
            }
            (Config::Pagerduty(pd.clone()), "pagerduty".to_string())
        }
    };
    let name = if c.name.is_empty() {
        default_name.chars().take(MAX_CHANNEL_NAME).collect()
    } else {
        c.name.clone()
    };
    Ok(v1::Channel {
        id: String::new(),
        tenant_id: String::new(),
        name,
        is_default: c.is_default,
        config: Some(config),
        created_at: None,
    })
}

#[cfg(test)]
mod tests;
