//! Maintenance windows, as pure rules: which monitors a window covers, whether
//! it is in force at an instant, and its occurrence in progress or next.
//!
//! A window is one-off (`starts_at` to `ends_at`) or weekly (days, a local
//! start time and a duration in a named IANA time zone, daylight-saving
//! changes included). While a window covers a monitor its results are still
//! stored and its incidents still recorded, but nobody is notified; what
//! happens when the window ends is the hub's (`hub::incidents`).
//!
//! The time-zone database is compiled in (jiff's bundled copy), so a window
//! means the same on every machine, whatever its `/usr/share/zoneinfo`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jiff::ToSpan;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use portwatch_proto::time::{from_timestamp, to_timestamp};
use portwatch_proto::v1;

use crate::validate::FieldError;

/// Shortest window.
pub const MIN_DURATION: Duration = Duration::from_secs(60);
/// Longest window (one-off or one weekly occurrence; a mute).
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 86_400);
/// Most windows a tenant may keep.
pub const MAX_PER_TENANT: usize = 100;
/// Longest window name.
pub const MAX_NAME: usize = 200;

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// When a window is in force.
#[derive(Clone, Debug)]
pub enum Schedule {
    Once {
        start: SystemTime,
        end: SystemTime,
    },
    Weekly {
        /// Monday first.
        days: [bool; 7],
        hour: i8,
        minute: i8,
        duration: Duration,
        tz: TimeZone,
    },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> FieldError {
    FieldError::invalid(field, reason)
}

/// "HH:MM", 24-hour.
fn parse_hhmm(s: &str) -> Option<(i8, i8)> {
    let (h, m) = s.split_once(':')?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    let h: i8 = h.parse().ok()?;
    let m: i8 = m.parse().ok()?;
    ((0..24).contains(&h) && (0..60).contains(&m)).then_some((h, m))
}

fn duration_ok(field: &'static str, d: Duration) -> Result<(), FieldError> {
    if d < MIN_DURATION || d > MAX_DURATION {
        return Err(invalid(
            field,
            format!(
                "{} ms is out of range; a window lasts 1 minute to 7 days",
                d.as_millis()
            ),
        ));
    }
    Ok(())
}

/// The schedule of `w`, checked: exactly one of a one-off span and a weekly
/// recurrence, each field named in its error.
pub fn schedule(w: &v1::MaintenanceWindow) -> Result<Schedule, FieldError> {
    match (&w.weekly, &w.starts_at, &w.ends_at) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(invalid(
            "window.weekly",
            "a window is either one-off (starts_at, ends_at) or weekly, not both",
        )),
        (None, Some(s), Some(e)) => {
            let start =
                from_timestamp(s).ok_or_else(|| invalid("window.starts_at", "not a valid time"))?;
            let end =
                from_timestamp(e).ok_or_else(|| invalid("window.ends_at", "not a valid time"))?;
            let len = end
                .duration_since(start)
                .map_err(|_| invalid("window.ends_at", "must be after starts_at"))?;
            duration_ok("window.ends_at", len)?;
            Ok(Schedule::Once { start, end })
        }
        (None, None, _) => Err(invalid(
            "window.starts_at",
            "required for a one-off window (or give weekly)",
        )),
        (None, Some(_), None) => Err(invalid("window.ends_at", "required for a one-off window")),
        (Some(r), None, None) => {
            if r.days.is_empty() {
                return Err(invalid(
                    "window.weekly.days",
                    "at least one day is required (mon, tue, wed, thu, fri, sat, sun)",
                ));
            }
            let mut days = [false; 7];
            for d in &r.days {
                let i = DAYS
                    .iter()
                    .position(|x| x.eq_ignore_ascii_case(d))
                    .ok_or_else(|| {
                        invalid(
                            "window.weekly.days",
                            format!("{d:?} is not a day; use mon, tue, wed, thu, fri, sat or sun"),
                        )
                    })?;
                days[i] = true;
            }
            let (hour, minute) = parse_hhmm(&r.start).ok_or_else(|| {
                invalid(
                    "window.weekly.start",
                    format!("{:?} is not a time; use HH:MM (24-hour)", r.start),
                )
            })?;
            let duration = Duration::from_millis(r.duration_ms);
            duration_ok("window.weekly.duration_ms", duration)?;
            if r.time_zone.is_empty() {
                return Err(invalid(
                    "window.weekly.time_zone",
                    "required: an IANA name such as Europe/Berlin or UTC",
                ));
            }
            let tz = TimeZone::get(&r.time_zone).map_err(|_| {
                invalid(
                    "window.weekly.time_zone",
                    format!("{:?} is not a known IANA time zone", r.time_zone),
                )
            })?;
            Ok(Schedule::Weekly {
                days,
                hour,
                minute,
                duration,
                tz,
            })
        }
    }
}

fn to_jiff(t: SystemTime) -> Option<jiff::Timestamp> {
    let d = t.duration_since(UNIX_EPOCH).ok()?;
    jiff::Timestamp::from_second(i64::try_from(d.as_secs()).ok()?).ok()
}

fn from_jiff(t: jiff::Timestamp) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_secs(u64::try_from(t.as_second()).ok()?))
}

/// The start of a weekly occurrence on local date `d`.
fn start_on(d: Date, hour: i8, minute: i8, tz: &TimeZone) -> Option<SystemTime> {
    let z = d.at(hour, minute, 0, 0).to_zoned(tz.clone()).ok()?;
    from_jiff(z.timestamp())
}

/// The occurrence of `s` in force at `t`, or else the next one after `t`:
/// (start, end). None when no occurrence is left.
pub fn occurrence(s: &Schedule, t: SystemTime) -> Option<(SystemTime, SystemTime)> {
    match s {
        Schedule::Once { start, end } => (*end > t).then_some((*start, *end)),
        Schedule::Weekly {
            days,
            hour,
            minute,
            duration,
            tz,
        } => {
            let today = to_jiff(t)?.to_zoned(tz.clone()).date();
            // Back far enough for an occurrence of up to 7 days still in
            // force, ahead far enough for next week's first day.
            (-8i64..=8)
                .filter_map(|k| today.checked_add(k.days()).ok())
                .filter(|d| {
                    usize::try_from(d.weekday().to_monday_zero_offset())
                        .ok()
                        .and_then(|i| days.get(i).copied())
                        .unwrap_or(false)
                })
                .filter_map(|d| {
                    let start = start_on(d, *hour, *minute, tz)?;
                    Some((start, start.checked_add(*duration)?))
                })
                .filter(|(_, end)| *end > t)
                .min_by_key(|(start, _)| *start)
        }
    }
}

/// Whether `s` is in force at `t`.
pub fn in_force(s: &Schedule, t: SystemTime) -> bool {
    occurrence(s, t).is_some_and(|(start, _)| start <= t)
}

/// Whether `w` covers monitor `m` (same tenant, and named, tagged or all).
pub fn covers(w: &v1::MaintenanceWindow, m: &v1::Monitor) -> bool {
    w.tenant_id == m.tenant_id
        && (w.all_monitors
            || w.monitor_ids.contains(&m.id)
            || w.tags.iter().any(|t| m.tags.contains(t)))
}

/// Fills the fields a window shows when read: its occurrence and whether it
/// is in force at `t`.
pub fn with_occurrence(mut w: v1::MaintenanceWindow, t: SystemTime) -> v1::MaintenanceWindow {
    let occ = schedule(&w).ok().and_then(|s| occurrence(&s, t));
    w.next_start = occ.map(|(s, _)| to_timestamp(s));
    w.next_end = occ.map(|(_, e)| to_timestamp(e));
    w.active = occ.is_some_and(|(s, _)| s <= t);
    w
}

/// A window with its schedule parsed once, as the hub keeps it.
#[derive(Clone, Debug)]
pub struct Window {
    pub record: v1::MaintenanceWindow,
    pub schedule: Schedule,
}

impl Window {
    /// None for a stored window that no longer parses (a time zone gone from
    /// the database): it covers nothing.
    pub fn new(record: v1::MaintenanceWindow) -> Option<Window> {
        let schedule = schedule(&record).ok()?;
        Some(Window { record, schedule })
    }
}

/// The first window in force at `t` that covers `m`.
pub fn covering<'a>(windows: &'a [Window], m: &v1::Monitor, t: SystemTime) -> Option<&'a Window> {
    windows
        .iter()
        .find(|w| covers(&w.record, m) && in_force(&w.schedule, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc3339: &str) -> SystemTime {
        humantime::parse_rfc3339(rfc3339).unwrap()
    }

    fn weekly(days: &[&str], start: &str, minutes: u64, tz: &str) -> v1::MaintenanceWindow {
        v1::MaintenanceWindow {
            weekly: Some(v1::WeeklyRecurrence {
                days: days.iter().map(|d| d.to_string()).collect(),
                start: start.into(),
                duration_ms: minutes * 60_000,
                time_zone: tz.into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_weekly_window_follows_its_time_zone_across_daylight_saving() {
        // Sundays 02:00-04:00 Berlin time: CET (UTC+1) in winter.
        let s = schedule(&weekly(&["sun"], "02:00", 120, "Europe/Berlin")).unwrap();
        // 2026-12-06 is a Sunday.
        let (start, end) = occurrence(&s, at("2026-12-03T12:00:00Z")).unwrap();
        assert_eq!(start, at("2026-12-06T01:00:00Z"));
        assert_eq!(end, at("2026-12-06T03:00:00Z"));
        assert!(!in_force(&s, at("2026-12-06T00:59:59Z")));
        assert!(in_force(&s, at("2026-12-06T01:00:00Z")));
        assert!(in_force(&s, at("2026-12-06T02:59:59Z")));
        assert!(!in_force(&s, at("2026-12-06T03:00:00Z")));
        // In summer it is CEST (UTC+2): the same local time is an hour earlier in UTC.
        let (start, _) = occurrence(&s, at("2026-07-01T00:00:00Z")).unwrap();
        assert_eq!(start, at("2026-07-05T00:00:00Z"));
        // Past the end of this week's occurrence: next week's.
        let (start, _) = occurrence(&s, at("2026-12-06T03:00:00Z")).unwrap();
        assert_eq!(start, at("2026-12-13T01:00:00Z"));
    }

    #[test]
    fn an_occurrence_in_force_across_midnight_is_found_the_next_day() {
        // Fridays 22:00 UTC for 6 hours: still in force early on Saturday.
        let s = schedule(&weekly(&["fri"], "22:00", 360, "UTC")).unwrap();
        // 2026-12-05 is a Saturday.
        assert!(in_force(&s, at("2026-12-05T03:00:00Z")));
        let (start, end) = occurrence(&s, at("2026-12-05T03:00:00Z")).unwrap();
        assert_eq!(
            (start, end),
            (at("2026-12-04T22:00:00Z"), at("2026-12-05T04:00:00Z"))
        );
    }

    #[test]
    fn a_one_off_window_ends_and_leaves_no_occurrence() {
        let w = v1::MaintenanceWindow {
            starts_at: Some(to_timestamp(at("2026-12-03T10:00:00Z"))),
            ends_at: Some(to_timestamp(at("2026-12-03T11:00:00Z"))),
            ..Default::default()
        };
        let s = schedule(&w).unwrap();
        assert!(in_force(&s, at("2026-12-03T10:30:00Z")));
        assert!(!in_force(&s, at("2026-12-03T09:59:00Z")));
        assert!(occurrence(&s, at("2026-12-03T11:00:00Z")).is_none());
        let shown = with_occurrence(w, at("2026-12-03T10:30:00Z"));
        assert!(shown.active);
    }

    #[test]
    fn bad_windows_name_the_field() {
        let cases: Vec<(v1::MaintenanceWindow, &str)> = vec![
            (weekly(&[], "02:00", 60, "UTC"), "window.weekly.days"),
            (
                weekly(&["sunday"], "02:00", 60, "UTC"),
                "window.weekly.days",
            ),
            (weekly(&["sun"], "25:00", 60, "UTC"), "window.weekly.start"),
            (weekly(&["sun"], "2pm", 60, "UTC"), "window.weekly.start"),
            (
                weekly(&["sun"], "02:00", 0, "UTC"),
                "window.weekly.duration_ms",
            ),
            (
                weekly(&["sun"], "02:00", 8 * 24 * 60, "UTC"),
                "window.weekly.duration_ms",
            ),
            (
                weekly(&["sun"], "02:00", 60, "Mars/Olympus"),
                "window.weekly.time_zone",
            ),
            (weekly(&["sun"], "02:00", 60, ""), "window.weekly.time_zone"),
            (v1::MaintenanceWindow::default(), "window.starts_at"),
            (
                v1::MaintenanceWindow {
                    starts_at: Some(to_timestamp(at("2026-12-03T11:00:00Z"))),
                    ends_at: Some(to_timestamp(at("2026-12-03T10:00:00Z"))),
                    ..Default::default()
                },
                "window.ends_at",
            ),
            (
                v1::MaintenanceWindow {
                    starts_at: Some(to_timestamp(at("2026-12-03T11:00:00Z"))),
                    ..weekly(&["sun"], "02:00", 60, "UTC")
                },
                "window.weekly",
            ),
        ];
        for (w, field) in cases {
            let e = schedule(&w).unwrap_err();
            assert_eq!(e.field, field, "{w:?}: {e:?}");
        }
    }

    #[test]
    fn a_window_covers_its_tenants_monitors_by_id_tag_or_all() {
        let m = v1::Monitor {
            id: "mon-1".into(),
            tenant_id: "acme".into(),
            tags: vec!["db".into()],
            ..Default::default()
        };
        let w = |ids: &[&str], tags: &[&str], all: bool, tenant: &str| v1::MaintenanceWindow {
            tenant_id: tenant.into(),
            monitor_ids: ids.iter().map(|s| s.to_string()).collect(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
            all_monitors: all,
            ..Default::default()
        };
        assert!(covers(&w(&["mon-1"], &[], false, "acme"), &m));
        assert!(covers(&w(&[], &["db"], false, "acme"), &m));
        assert!(covers(&w(&[], &[], true, "acme"), &m));
        assert!(!covers(&w(&["mon-2"], &["web"], false, "acme"), &m));
        assert!(!covers(&w(&[], &[], true, "globex"), &m));
    }
}
