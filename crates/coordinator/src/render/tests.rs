//! Every notice in every channel format: subjects, the facts each body
//! holds, escaping of agent- and tenant-supplied text, and PagerDuty's dedup
//! key.

use super::*;
use portwatch_proto::time::{from_unix_micros, to_timestamp};

fn ts(secs: u64) -> Option<prost_types::Timestamp> {
    Some(to_timestamp(from_unix_micros(secs * 1_000_000)))
}

fn ev(
    region: &str,
    state: v1::RegionState,
    o: v1::Outcome,
    detail: &str,
    us: u64,
) -> v1::RegionEvidence {
    v1::RegionEvidence {
        region: region.into(),
        state: state as i32,
        outcome: o as i32,
        detail: detail.into(),
        connect_us: us,
        checked_at: ts(1_700_000_000),
        ignored_offline: false,
    }
}

fn incident() -> v1::Incident {
    v1::Incident {
        id: "inc-1".into(),
        tenant_id: "acme".into(),
        monitor_id: "mon-1".into(),
        monitor_name: "db primary\nFAKE: line".into(),
        host: "db.example.com".into(),
        port: 5432,
        opened_at: ts(1_700_000_000),
        closed_at: None,
        reason: v1::Outcome::Refused as i32,
        reason_text: "Connection refused".into(),
        open_evidence: vec![
            ev(
                "eu",
                v1::RegionState::Down,
                v1::Outcome::Refused,
                "connect: os error 111",
                0,
            ),
            ev("us", v1::RegionState::Down, v1::Outcome::TimedOut, "", 0),
            ev("ap", v1::RegionState::Up, v1::Outcome::Ok, "", 12_345),
            ev(
                "sa",
                v1::RegionState::Unknown,
                v1::Outcome::Unspecified,
                "no live agent",
                0,
            ),
        ],
        close_evidence: vec![
            ev("eu", v1::RegionState::Up, v1::Outcome::Ok, "", 1_000),
            v1::RegionEvidence {
                ignored_offline: true,
                ..ev(
                    "sa",
                    v1::RegionState::Unknown,
                    v1::Outcome::Unspecified,
                    "no live agent",
                    0,
                )
            },
        ],
        severity: "critical".into(),
        flapping_since: None,
        stable_since: None,
        state_changes: Vec::new(),
        ..Default::default()
    }
}

fn outage() -> RegionOutage {
    RegionOutage {
        id: "out-1".into(),
        region: "eu-west".into(),
        offline_since: ts(1_700_000_000),
        noticed_at: ts(1_700_000_600),
        online_at: ts(1_700_000_900),
        channel_ids: vec![],
    }
}

fn note<'a>(notice: Notice<'a>) -> Notification<'a> {
    Notification {
        notice,
        key: "k",
        test: false,
    }
}

#[test]
fn subjects_for_every_kind() {
    let i = incident();
    let o = outage();
    let v6 = v1::Incident {
        host: "2001:db8::1".into(),
        ..incident()
    };
    let cases: Vec<(Notification<'_>, &str)> = vec![
        (
            note(Notice::Opened(&i)),
            "TCP Port Unreachable: db.example.com:5432",
        ),
        (
            note(Notice::Resolved(&i)),
            "TCP Port Reachable Again: db.example.com:5432",
        ),
        (
            note(Notice::Opened(&v6)),
            "TCP Port Unreachable: [2001:db8::1]:5432",
        ),
        (
            note(Notice::RegionOffline(&o)),
            "Probe region offline: eu-west",
        ),
        (
            note(Notice::RegionOnline(&o)),
            "Probe region back online: eu-west",
        ),
        (
            Notification {
                test: true,
                ..note(Notice::Opened(&i))
            },
            "[test] TCP Port Unreachable: db.example.com:5432",
        ),
    ];
    for (n, want) in cases {
        assert_eq!(subject(&n), want);
    }
}

#[test]
fn email_body_has_every_fact_and_no_forged_lines() {
    let i = incident();
    let body = text(&note(Notice::Opened(&i)));
    for want in [
        "Monitor:        db primary FAKE: line",
        "Host:           db.example.com",
        "Port:           5432",
        "Severity:       critical",
        "Failure reason: Connection refused",
        "Opened at:      2023-11-14T22:13:20Z",
        "Incident:       inc-1",
        "Idempotency key: k",
    ] {
        assert!(body.contains(want), "{want:?} missing from:\n{body}");
    }
    assert!(
        !body.contains("\nFAKE"),
        "a newline in a name must not start a line"
    );
    assert!(!body.contains("http"), "plain text without links");
    let table: Vec<&str> = body
        .lines()
        .skip_while(|l| !l.starts_with("Region "))
        .take(5)
        .collect();
    assert_eq!(
        table,
        [
            "Region  State    Reason                                      Connect  Checked at",
            "eu      down     Connection refused (connect: os error 111)  -        2023-11-14T22:13:20Z",
            "us      down     Connection timed out                        -        2023-11-14T22:13:20Z",
            "ap      up       Connected                                   12.3 ms  2023-11-14T22:13:20Z",
            "sa      unknown  no live agent                               -        2023-11-14T22:13:20Z",
        ]
    );

    let mut closed = incident();
    closed.closed_at = ts(1_700_000_192);
    let body = text(&note(Notice::Resolved(&closed)));
    assert!(
        body.contains("Resolved at:    2023-11-14T22:16:32Z"),
        "{body}"
    );
    assert!(body.contains("Down for:       3m 12s"), "{body}");
    assert!(
        body.contains("no live agent; offline past the grace period, not waited for"),
        "{body}"
    );
}

#[test]
fn webhook_json_fields() {
    let i = incident();
    let v = webhook(&note(Notice::Opened(&i)));
    assert_eq!(v["version"], 1);
    assert_eq!(v["event"], "incident.opened");
    assert_eq!(v["idempotency_key"], "k");
    assert_eq!(v["severity"], "critical");
    assert_eq!(v["incident"]["id"], "inc-1");
    assert_eq!(v["incident"]["port"], 5432);
    assert_eq!(v["incident"]["reason"], "refused");
    assert_eq!(v["incident"]["opened_at"], "2023-11-14T22:13:20Z");
    assert_eq!(v["incident"]["closed_at"], Value::Null);
    let regions = v["incident"]["regions"].as_array().unwrap();
    assert_eq!(regions.len(), 4);
    assert_eq!(regions[0]["state"], "down");
    assert_eq!(regions[0]["outcome"], "refused");
    assert_eq!(regions[2]["connect_ms"], 12.3);
    assert_eq!(regions[0]["connect_ms"], Value::Null);
    assert_eq!(regions[3]["outcome"], Value::Null);

    let o = outage();
    let v = webhook(&note(Notice::RegionOnline(&o)));
    assert_eq!(v["event"], "region.online");
    assert_eq!(v["region"]["name"], "eu-west");
    assert_eq!(v["region"]["online_at"], "2023-11-14T22:28:20Z");
    assert!(v.get("incident").is_none());
}

#[test]
fn slack_has_a_region_table_and_escapes_markup() {
    let mut i = incident();
    i.monitor_name = "<!channel> & co".into();
    let v = slack(&note(Notice::Opened(&i)));
    let t = v["text"].as_str().unwrap();
    assert!(
        t.starts_with(":red_circle: *TCP Port Unreachable: db.example.com:5432*"),
        "{t}"
    );
    assert!(t.contains("&lt;!channel&gt; &amp; co"), "{t}");
    assert!(!t.contains("<!channel>"));
    assert!(t.contains("```\nRegion  State"), "{t}");
    assert!(t.contains("\nap      up       Connected"), "{t}");
    assert_eq!(v["blocks"][0]["text"]["text"], v["text"]);
}

#[test]
fn pagerduty_trigger_and_resolve_share_the_dedup_key() {
    let i = incident();
    let t = pagerduty(&note(Notice::Opened(&i)), "rk").unwrap();
    assert_eq!(t["event_action"], "trigger");
    assert_eq!(t["dedup_key"], "inc-1");
    assert_eq!(t["routing_key"], "rk");
    assert_eq!(t["payload"]["severity"], "critical");
    assert_eq!(t["payload"]["source"], "db.example.com:5432");
    assert_eq!(
        t["payload"]["summary"],
        "TCP Port Unreachable: db.example.com:5432"
    );
    let r = pagerduty(&note(Notice::Resolved(&i)), "rk").unwrap();
    assert_eq!(r["event_action"], "resolve");
    assert_eq!(r["dedup_key"], "inc-1");
    assert!(r.get("payload").is_none());
    let o = outage();
    assert_eq!(
        pagerduty(&note(Notice::RegionOffline(&o)), "rk").unwrap()["dedup_key"],
        "out-1"
    );
    assert_eq!(
        pagerduty(&note(Notice::RegionOnline(&o)), "rk").unwrap()["event_action"],
        "resolve"
    );
    assert_eq!(
        truncate("x".repeat(2000), PD_SUMMARY_MAX).chars().count(),
        PD_SUMMARY_MAX
    );
}

fn flapping() -> (v1::Incident, FlapTerms) {
    let mut i = incident();
    i.flapping_since = ts(1_700_000_030);
    i.state_changes = (0..4)
        .map(|k| ts(1_700_000_000 + 10 * k).unwrap())
        .collect();
    let terms = FlapTerms {
        threshold: 4,
        window_ms: 1_200_000,
        stable_for_ms: 300_000,
    };
    (i, terms)
}

#[test]
fn a_flapping_notice_says_the_incident_is_held_and_what_ends_it() {
    let (i, terms) = flapping();
    let n = note(Notice::Flapping(&i, &terms));
    assert_eq!(subject(&n), "TCP Port Flapping: db.example.com:5432");
    assert_eq!(n.notice.event(), "incident.flapping");
    assert_eq!(n.notice.severity(), "warning", "the opening already paged");

    let body = text(&n);
    for want in [
        "Flapping since: 2023-11-14T22:13:50Z",
        "State changes:  4 within 20m",
        "Opened at:      2023-11-14T22:13:20Z",
        "Incident:       inc-1",
        "once every region has been up for 5m without a break",
        "\"TCP Port Reachable Again\" closes it",
    ] {
        assert!(body.contains(want), "{want:?} missing from:\n{body}");
    }

    let v = webhook(&n);
    assert_eq!(v["event"], "incident.flapping");
    assert_eq!(v["subject"], "TCP Port Flapping: db.example.com:5432");
    assert_eq!(v["severity"], "warning");
    assert_eq!(v["incident"]["id"], "inc-1");
    assert_eq!(v["incident"]["closed_at"], Value::Null);
    assert_eq!(v["incident"]["flapping_since"], "2023-11-14T22:13:50Z");
    assert_eq!(v["flapping"]["since"], "2023-11-14T22:13:50Z");
    assert_eq!(v["flapping"]["state_changes"], 4);
    assert_eq!(v["flapping"]["threshold"], 4);
    assert_eq!(v["flapping"]["window_ms"], 1_200_000);
    assert_eq!(v["flapping"]["stable_for_ms"], 300_000);
    // Other incident events carry the field too, unset when not flapping.
    let opened = webhook(&note(Notice::Opened(&incident())));
    assert_eq!(opened["incident"]["flapping_since"], Value::Null);
    assert!(opened.get("flapping").is_none());

    let t = slack(&n)["text"].as_str().unwrap().to_string();
    assert!(
        t.starts_with(":large_orange_circle: *TCP Port Flapping: db.example.com:5432*"),
        "{t}"
    );
    assert!(t.contains("*State changes:* 4 within 20m"), "{t}");
    assert!(!t.contains("\nFAKE"), "{t}");

    assert_eq!(
        pagerduty(&n, "rk"),
        None,
        "PagerDuty's alert stays triggered: no event"
    );
    assert_eq!(dedup_key(&n.notice), "inc-1");
}

#[test]
fn every_unreachable_notice_carries_the_first_steps_for_its_reason() {
    let i = incident();
    let n = note(Notice::Opened(&i));
    let body = text(&n);
    assert!(body.contains("What to try first:"), "{body}");
    assert!(body.contains("systemctl status"), "{body}");
    assert!(body.contains("`nc -zv db.example.com 5432`"), "{body}");
    let hook = webhook(&n);
    let steps = hook["incident"]["first_steps"].as_array().unwrap();
    assert!(
        steps
            .iter()
            .any(|s| s.as_str().unwrap().contains("0.0.0.0"))
    );
    let sl = slack(&n)["text"].as_str().unwrap().to_string();
    assert!(sl.contains("*What to try first:*"), "{sl}");
    let pd = pagerduty(&n, "rk").unwrap();
    assert!(
        pd["payload"]["custom_details"]["first_steps"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    );
    // A recovery has nothing to try.
    let resolved = text(&note(Notice::Resolved(&i)));
    assert!(!resolved.contains("What to try first"), "{resolved}");
    // A timed-out incident gets the firewall advice, not the refused one.
    let mut t = incident();
    t.reason = v1::Outcome::TimedOut as i32;
    let body = text(&note(Notice::Opened(&t)));
    assert!(body.contains("firewall or security group"), "{body}");
    assert!(!body.contains("systemctl"), "{body}");
}

#[test]
fn a_reminder_says_how_long_and_which_one_and_pagerduty_gets_none() {
    let mut i = incident();
    i.reminders_sent = 2;
    i.last_reminded_at = ts(1_700_000_000 + 2 * 3600 + 300);
    let n = note(Notice::Reminder(&i));
    assert_eq!(
        subject(&n),
        "TCP Port Still Unreachable: db.example.com:5432"
    );
    let body = text(&n);
    assert!(body.contains("Down for:"), "{body}");
    assert!(body.contains("2h 5m"), "{body}");
    assert!(body.contains("Reminder:"), "{body}");
    assert!(body.contains("What to try first:"), "{body}");
    let hook = webhook(&n);
    assert_eq!(hook["event"], "incident.reminder");
    assert_eq!(hook["reminder"]["number"], 2);
    assert_eq!(hook["reminder"]["down_for_s"], 2 * 3600 + 300);
    assert!(pagerduty(&n, "rk").is_none());
}

#[test]
fn an_acknowledgement_is_a_pagerduty_acknowledge_and_shows_in_the_recovery() {
    let mut i = incident();
    i.acknowledged_at = ts(1_700_000_060);
    i.acknowledged_by = "token tok-1 (alice)".into();
    i.acknowledged_note = "restarting the pool".into();
    let ack = pagerduty(&note(Notice::Acknowledged(&i)), "rk").unwrap();
    assert_eq!(ack["event_action"], "acknowledge");
    assert_eq!(ack["dedup_key"], "inc-1");
    i.closed_at = ts(1_700_000_600);
    let body = text(&note(Notice::Resolved(&i)));
    assert!(
        body.contains("by token tok-1 (alice) at 2023-11-14T22:14:20Z: restarting the pool"),
        "{body}"
    );
    let hook = webhook(&note(Notice::Resolved(&i)));
    assert_eq!(hook["incident"]["acknowledged_by"], "token tok-1 (alice)");
}
