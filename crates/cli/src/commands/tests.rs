//! No output of the CLI may panic on any value the coordinator can send: every
//! table, text and JSON view is fed timestamps beyond year 9999 (`10^15` s,
//! `i64::MAX`), before the epoch, with nanos out of range, numbers at their
//! maximum, and enum values unset or unknown. A time that cannot be a date
//! prints as "invalid time"; nothing prints `unknown(N)`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portwatch_proto::v1;
use prost_types::Timestamp;
use serde_json::Value;

use super::{channel, fleet, incidents, monitor, results, status, tenant, watch};
use crate::output::{self, INVALID_TIME};
use crate::views;

fn at(seconds: i64, nanos: i32) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos })
}

/// Timestamps RFC 3339 cannot print, each with why.
fn invalid_times() -> Vec<(&'static str, Option<Timestamp>)> {
    vec![
        ("10^15 s", at(1_000_000_000_000_000, 0)),
        ("i64::MAX s", at(i64::MAX, 999_999_999)),
        ("year 10000", at(253_402_300_800, 0)),
        ("before the epoch", at(-1, 0)),
        ("i64::MIN s", at(i64::MIN, 0)),
        ("negative nanos", at(1_700_000_000, -1)),
        ("nanos over a second", at(1_700_000_000, 2_000_000_000)),
    ]
}

/// Unset, an ordinary time, and the last printable second.
fn valid_times() -> Vec<Option<Timestamp>> {
    vec![None, at(1_700_000_000, 0), at(253_402_300_799, 0)]
}

fn all_times() -> Vec<Option<Timestamp>> {
    invalid_times()
        .into_iter()
        .map(|(_, t)| t)
        .chain(valid_times())
        .collect()
}

/// Outcomes: unset, ok, a failure, and one this CLI does not know.
const OUTCOMES: [i32; 4] = [0, 1, 2, 99];

fn result(t: Option<Timestamp>, outcome: i32) -> v1::CheckResult {
    v1::CheckResult {
        monitor_id: "mon-x".into(),
        region: "eu".into(),
        checked_at: t,
        outcome,
        detail: "detail".into(),
        address: "[2001:db8::1]:65535".into(),
        dns_us: u64::MAX,
        connect_us: u64::MAX,
        total_us: u64::MAX,
        tcp_rtt_us: Some(u64::MAX),
        ..Default::default()
    }
}

fn monitor(t: Option<Timestamp>) -> v1::Monitor {
    v1::Monitor {
        id: "mon-x".into(),
        name: "x".into(),
        host: "x.example.com".into(),
        port: u32::MAX,
        regions: vec!["eu".into(), "us".into()],
        interval_ms: u64::MAX,
        timeout_ms: u32::MAX,
        consensus: 99,
        family: -1,
        address_policy: i32::MAX,
        close_mode: i32::MIN,
        created_at: t,
        updated_at: t,
        generation: u64::MAX,
        ..Default::default()
    }
}

fn monitor_status(t: Option<Timestamp>, outcome: i32) -> v1::MonitorStatus {
    v1::MonitorStatus {
        monitor: Some(monitor(t)),
        overall: 99,
        quorum: u32::MAX,
        regions: vec![
            v1::RegionStatus {
                region: "eu".into(),
                state: 0,
                last_result: Some(result(t, outcome)),
                ..Default::default()
            },
            v1::RegionStatus {
                region: "us".into(),
                state: 99,
                last_result: None,
                unknown_reason: "no agent".into(),
                ..Default::default()
            },
        ],
        open_incident_id: "inc-x".into(),
        maintenance_window_id: String::new(),
    }
}

fn evidence(t: Option<Timestamp>, outcome: i32) -> v1::RegionEvidence {
    v1::RegionEvidence {
        region: "eu".into(),
        state: 2,
        outcome,
        connect_us: u64::MAX,
        checked_at: t,
        ..Default::default()
    }
}

fn incident(opened: Option<Timestamp>, closed: Option<Timestamp>) -> v1::Incident {
    v1::Incident {
        id: "inc-x".into(),
        monitor_name: "x".into(),
        host: "x.example.com".into(),
        port: u32::MAX,
        opened_at: opened,
        closed_at: closed,
        reason: 99,
        open_evidence: OUTCOMES.iter().map(|o| evidence(opened, *o)).collect(),
        close_evidence: vec![evidence(closed, 0)],
        ..Default::default()
    }
}

fn events(t: Option<Timestamp>) -> Vec<v1::Event> {
    use v1::event::Kind;
    let kinds = vec![
        Some(Kind::IncidentOpened(incident(t, None))),
        Some(Kind::IncidentClosed(incident(t, t))),
        Some(Kind::RegionState(v1::RegionStateChanged {
            monitor_id: "mon-x".into(),
            region: "eu".into(),
            from: 0,
            to: 99,
            outcome: 0,
            detail: String::new(),
        })),
        Some(Kind::ProbeRegion(v1::ProbeRegionChanged {
            region: "eu".into(),
            online: false,
        })),
        None,
    ];
    kinds
        .into_iter()
        .map(|kind| v1::Event { at: t, kind })
        .collect()
}

/// Every text and JSON view, for one timestamp used everywhere.
fn render_everything(t: Option<Timestamp>, now: SystemTime) -> (String, Vec<Value>) {
    let mut text = String::new();
    let mut json = Vec::new();
    let statuses: Vec<v1::MonitorStatus> = OUTCOMES.iter().map(|o| monitor_status(t, *o)).collect();
    let history: Vec<v1::CheckResult> = OUTCOMES.iter().map(|o| result(t, *o)).collect();
    let incidents = vec![
        incident(t, None),
        incident(t, t),
        incident(None, t),
        incident(at(1_700_000_000, 0), t),
    ];
    let m = monitor(t);

    text += &status::table(&statuses).render();
    text += &monitor::details(&m).render();
    text += &monitor::list_table(std::slice::from_ref(&m)).render();
    text += &results::table(&history).render();
    text += &incidents::table(&incidents, now).render();
    for s in &statuses {
        text += &monitor::show_text(&m, s, None, &history, now);
        json.push(monitor::show_json(&m, s, None, &history));
        json.push(views::status(s));
    }
    // An incident held open as flapping, as `monitor show` prints it.
    let mut held = incident(t, None);
    held.flapping_since = t;
    held.stable_since = t;
    text += &monitor::show_text(&m, &statuses[0], Some(&held), &history, now);
    json.push(monitor::show_json(&m, &statuses[0], Some(&held), &history));
    for e in events(t) {
        text += &watch::describe(&e, &Default::default());
        text.push('\n');
        json.push(views::event(&e));
    }
    json.extend(history.iter().map(views::result));
    json.extend(incidents.iter().map(views::incident));

    let region = v1::Region {
        name: "eu".into(),
        agents_online: u32::MAX,
        offline_since: t,
        ..Default::default()
    };
    let agent = v1::Agent {
        agent_id: "a".into(),
        clock_offset_ms: i64::MIN,
        refused_results: u64::MAX,
        connected_at: t,
        last_seen: t,
        assignments: u32::MAX,
        acked_seq: u64::MAX,
        spool_depth: u64::MAX,
        dropped_total: u64::MAX,
        ..Default::default()
    };
    let token = v1::AgentToken {
        id: "tok".into(),
        created_at: t,
        ..Default::default()
    };
    let tenant = v1::Tenant {
        id: "acme".into(),
        plan: 99,
        created_at: t,
        max_monitors: u32::MAX,
        min_interval_ms: u64::MAX,
        monitor_count: u32::MAX,
        ..Default::default()
    };
    let delivery = v1::Delivery {
        id: "d".into(),
        kind: 0,
        state: 99,
        attempts: u32::MAX,
        created_at: t,
        next_attempt_at: t,
        delivered_at: t,
        ..Default::default()
    };
    let chan = v1::Channel {
        id: "ch".into(),
        created_at: t,
        config: Some(v1::channel::Config::Email(v1::EmailConfig {
            smtp_port: u32::MAX,
            tls: 99,
            ..Default::default()
        })),
        ..Default::default()
    };
    text += &fleet::regions_table(std::slice::from_ref(&region), now).render();
    text += &fleet::agents_table(std::slice::from_ref(&agent), now).render();
    text += &fleet::tokens_table(std::slice::from_ref(&token)).render();
    text += &tenant::table(std::slice::from_ref(&tenant)).render();
    text += &channel::deliveries_table(std::slice::from_ref(&delivery)).render();
    text += &channel::channels_table(std::slice::from_ref(&chan)).render();
    json.push(views::region(&region));
    json.push(views::agent(&agent));
    json.push(views::agent_token(&token));
    json.push(views::tenant(&tenant));
    json.push(views::delivery(&delivery));
    json.push(views::channel(&chan));
    json.push(views::monitor(&m));
    (text, json)
}

#[test]
fn no_view_panics_on_any_time_number_or_enum_the_server_can_send() {
    let nows = [
        SystemTime::now(),
        UNIX_EPOCH,
        UNIX_EPOCH + Duration::from_secs(253_402_300_799),
    ];
    for t in all_times() {
        for now in nows {
            let (text, json) = render_everything(t, now);
            let json_text: String = json
                .iter()
                .map(|v| serde_json::to_string(v).expect("JSON encodes"))
                .collect();
            for shown in [&text, &json_text] {
                assert!(!shown.contains("unknown("), "{t:?}: {shown}");
            }
            let invalid = t.as_ref().is_some_and(|t| output::printable(t).is_none());
            assert_eq!(
                json_text.contains(INVALID_TIME),
                invalid,
                "{t:?}: {json_text}"
            );
            assert_eq!(text.contains(INVALID_TIME), invalid, "{t:?}: {text}");
        }
    }
}

#[test]
fn times_that_cannot_be_dates_print_as_invalid_time() {
    let now = SystemTime::now();
    for (why, t) in invalid_times() {
        assert_eq!(output::ts(t.as_ref()), INVALID_TIME, "{why}");
        assert_eq!(output::ts_json(t.as_ref()), INVALID_TIME, "{why}");
        assert_eq!(output::ago(t.as_ref(), now), INVALID_TIME, "{why}");
        assert_eq!(
            output::when(t.as_ref(), now, "never"),
            INVALID_TIME,
            "{why}"
        );
        let shown = monitor::show_json(&monitor(None), &monitor_status(t, 1), None, &[]);
        assert_eq!(
            shown["status"]["regions"][0]["checked_at"], INVALID_TIME,
            "{why}"
        );
    }
    let last = at(253_402_300_799, 0);
    assert_eq!(output::ts(last.as_ref()), "9999-12-31T23:59:59Z");
    assert_eq!(output::ts(None), "");
    assert_eq!(output::ts_json(None), Value::Null);
    assert_eq!(output::when(None, now, "never"), "never");
    // A clock ahead of ours is said so, not "just now".
    let ahead = Some(output_timestamp(now + Duration::from_secs(600)));
    assert_eq!(output::ago(ahead.as_ref(), now), "in 10m");
}

fn output_timestamp(t: SystemTime) -> Timestamp {
    portwatch_proto::time::to_timestamp(t)
}

#[test]
fn unset_values_are_null_or_none_and_nothing_connected_has_no_connect_time() {
    let r = views::result(&v1::CheckResult::default());
    assert_eq!(r["outcome"], Value::Null);
    assert_eq!(r["connect_ms"], Value::Null);
    assert_eq!(r["checked_at"], Value::Null);
    let refused = views::result(&result(at(1_700_000_000, 0), 2));
    assert_eq!(refused["outcome"], "refused");
    assert_eq!(
        refused["connect_ms"],
        Value::Null,
        "a refused check never connected"
    );
    let mut ok = result(at(1_700_000_000, 0), 1);
    ok.connect_us = 1_234;
    assert_eq!(views::result(&ok)["connect_ms"], 1.234);

    let i = views::incident(&v1::Incident {
        open_evidence: vec![v1::RegionEvidence {
            region: "eu".into(),
            ..Default::default()
        }],
        ..Default::default()
    });
    let e = &i["open_evidence"][0];
    assert_eq!((&e["state"], &e["outcome"]), (&Value::Null, &Value::Null));
    assert_eq!(e["connect_ms"], Value::Null, "no result, no connect time");
    assert_eq!(i["reason"], Value::Null);

    let first = v1::Event {
        at: at(1_700_000_000, 0),
        kind: Some(v1::event::Kind::RegionState(v1::RegionStateChanged {
            monitor_id: "mon-x".into(),
            region: "eu".into(),
            from: 0,
            to: v1::RegionState::Up as i32,
            outcome: v1::Outcome::Ok as i32,
            detail: String::new(),
        })),
    };
    let v = views::event(&first);
    assert_eq!((&v["from"], &v["to"]), (&Value::Null, &Value::from("up")));
    let line = watch::describe(&first, &Default::default());
    assert!(line.contains("none -> up"), "{line}");
}

#[test]
fn clock_offsets_read_as_ahead_or_behind_and_never_panic() {
    assert_eq!(fleet::clock_offset(0), "0ms");
    assert_eq!(fleet::clock_offset(80), "+80ms");
    assert_eq!(fleet::clock_offset(-80), "-80ms");
    assert_eq!(fleet::clock_offset(30_250), "+30.250s");
    assert_eq!(fleet::clock_offset(-1_000), "-1.000s");
    assert!(fleet::clock_offset(i64::MIN).starts_with('-'));
    assert!(fleet::clock_offset(i64::MAX).starts_with('+'));
}
