//! The life of an alert around an incident, end to end: the coordinator as a
//! real process, incidents driven by hand-driven agents in three regions, and
//! real receivers on loopback (a webhook consumer and a PagerDuty Events API
//! stand-in) counting what arrives. Each test asserts what the on-call
//! engineer (and their receivers) would see: the first steps in the page,
//! reminders with keys of their own until someone acknowledges, PagerDuty's
//! `acknowledge`, the acknowledgement in the recovery, the incident's
//! timeline, and an incident that closes only after `recover_after` rounds.

use std::collections::HashSet;
use std::time::Duration;

use portwatch_e2e::{Admin, FakeAgent, HttpReceiver, Recorded, World, eventually};
use portwatch_proto::v1;
use serde_json::Value;
use tonic::Code;

/// Reminders may come every second here (production plans: every minute).
const PLANS: &str = "[plans.enterprise]\nport_monitors = true\nmax_monitors = 100\nmin_interval = \"1s\"\nmin_remind_every = \"1s\"\n";
const FAST: &str = "allow_private_channel_targets = true\ndelivery_retry_initial = \"100ms\"\ndelivery_retry_max = \"300ms\"\ndelivery_timeout = \"2s\"\nevaluate_every = \"200ms\"\n";
const WAIT: Duration = Duration::from_secs(15);

async fn world() -> World {
    World::builder()
        .coordinator_bin(env!("CARGO_BIN_EXE_portwatch-coordinator"))
        .config(FAST)
        .plans(PLANS)
        .public_regions(&["eu", "us", "ap"])
        .start()
        .await
}

/// A channel of the tenant; `default`: notified by monitors that name none.
async fn channel(
    admin: &mut Admin,
    config: v1::channel::Config,
    name: &str,
    default: bool,
) -> v1::Channel {
    admin
        .create_channel(v1::CreateChannelRequest {
            tenant_id: String::new(),
            channel: Some(v1::Channel {
                name: name.into(),
                is_default: default,
                config: Some(config),
                ..Default::default()
            }),
        })
        .await
        .expect("create channel")
        .into_inner()
}

fn webhook_config(hook: &HttpReceiver, path: &str) -> v1::channel::Config {
    v1::channel::Config::Webhook(v1::WebhookConfig {
        url: hook.url(path),
        secret: "whsec-0123456789abcdef".into(),
    })
}

/// A default webhook channel to `hook`.
async fn webhook(w: &mut World, hook: &HttpReceiver) -> v1::Channel {
    channel(&mut w.tenant, webhook_config(hook, "/hook"), "hook", true).await
}

/// A PagerDuty stand-in answering as the Events API does.
async fn pagerduty(w: &mut World) -> (HttpReceiver, v1::Channel) {
    let pd = HttpReceiver::start(|_, _| {
        (
            202,
            "{\"status\":\"success\",\"message\":\"Event processed\"}".to_string(),
        )
    })
    .await;
    let config = v1::channel::Config::Pagerduty(v1::PagerDutyConfig {
        routing_key: "R0UT1NGKEY0123456789abcdef012345".into(),
        base_url: pd.url(""),
    });
    let ch = channel(&mut w.tenant, config, "pagerduty", true).await;
    (pd, ch)
}

async fn monitor(w: &mut World, edit: impl FnOnce(&mut v1::CreateMonitorRequest)) -> v1::Monitor {
    let mut req = v1::CreateMonitorRequest {
        name: "orders db".into(),
        host: "db.example.com".into(),
        port: 5432,
        regions: vec!["eu".into(), "us".into(), "ap".into()],
        interval_ms: 1000,
        timeout_ms: 1000,
        ..Default::default()
    };
    edit(&mut req);
    w.tenant.create_monitor(req).await.unwrap().into_inner()
}

async fn open_incidents(admin: &Admin) -> Vec<v1::Incident> {
    admin
        .clone()
        .list_incidents(v1::ListIncidentsRequest {
            open_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .incidents
}

/// Two of three regions report refused: the incident opens. Returns it.
async fn open_incident(w: &World, ag: &mut [FakeAgent], m: &v1::Monitor) -> v1::Incident {
    for a in ag.iter_mut() {
        a.report_acked(&m.id, v1::Outcome::Ok).await;
    }
    for a in ag.iter_mut().take(2) {
        a.report_acked(&m.id, v1::Outcome::Refused).await;
    }
    let t = w.tenant.clone();
    eventually("the incident opens", WAIT, || {
        let t = t.clone();
        async move { open_incidents(&t).await.into_iter().next() }
    })
    .await
}

/// One round: every region reports `outcome`.
async fn round(ag: &mut [FakeAgent], m: &v1::Monitor, outcome: v1::Outcome) {
    for a in ag.iter_mut() {
        a.report_acked(&m.id, outcome).await;
    }
}

fn json(r: &Recorded) -> Value {
    serde_json::from_slice(&r.body).expect("a JSON body")
}

fn keys(rs: &[Recorded]) -> Vec<String> {
    rs.iter()
        .map(|r| r.header("idempotency-key").unwrap_or_default().to_string())
        .collect()
}

async fn get(admin: &Admin, id: &str) -> v1::Incident {
    admin
        .clone()
        .get_incident(v1::GetIncidentRequest {
            tenant_id: String::new(),
            id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn ack(admin: &Admin, id: &str, note: &str) -> Result<v1::Incident, tonic::Status> {
    admin
        .clone()
        .acknowledge_incident(v1::AcknowledgeIncidentRequest {
            tenant_id: String::new(),
            id: id.into(),
            note: note.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn the_page_says_what_to_try_first_and_reminders_stop_at_their_maximum() {
    let mut w = world().await;
    let hook = HttpReceiver::ok().await;
    let wh = webhook(&mut w, &hook).await;
    let (pd, _) = pagerduty(&mut w).await;
    let m = monitor(&mut w, |r| {
        r.remind_every_ms = 1000;
        r.remind_max = 2;
    })
    .await;
    let mut ag = w.connect_agents().await;
    let incident = open_incident(&w, &mut ag, &m).await;

    // The opening, then exactly two reminders, each with its own key.
    let got = hook.wait_for(3, WAIT).await;
    let opened = json(&got[0]);
    assert_eq!(opened["event"], "incident.opened");
    let steps: Vec<&str> = opened["incident"]["first_steps"]
        .as_array()
        .expect("first steps in the page")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        steps.iter().any(|s| s.contains("systemctl status")),
        "{steps:?}"
    );
    assert!(
        steps.contains(&"From a network known to reach it: `nc -zv db.example.com 5432`"),
        "{steps:?}"
    );
    for (n, r) in got[1..3].iter().enumerate() {
        let body = json(r);
        assert_eq!(r.header("x-portwatch-event"), Some("incident.reminder"));
        assert_eq!(
            body["subject"],
            "TCP Port Still Unreachable: db.example.com:5432"
        );
        assert_eq!(body["reminder"]["number"], n + 1);
        assert!(body["incident"]["first_steps"].is_array());
    }
    assert_eq!(
        keys(&got[..3]),
        [
            format!("{}:opened:{}", incident.id, wh.id),
            format!("{}:reminder-1:{}", incident.id, wh.id),
            format!("{}:reminder-2:{}", incident.id, wh.id),
        ]
    );
    // The maximum holds: three more reminder periods bring nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(hook.requests().len(), 3, "{:?}", keys(&hook.requests()));
    // PagerDuty escalates by its own rules: the trigger only, no reminders.
    assert_eq!(pd.requests().len(), 1);
    assert_eq!(json(&pd.requests()[0])["event_action"], "trigger");
    let stored = get(&w.tenant, &incident.id).await;
    assert_eq!(stored.reminders_sent, 2);
    assert!(stored.first_steps.iter().any(|s| s.contains("0.0.0.0")));
}

#[tokio::test]
async fn acknowledging_stops_reminders_tells_pagerduty_and_shows_in_the_recovery() {
    let mut w = world().await;
    let hook = HttpReceiver::ok().await;
    let wh = webhook(&mut w, &hook).await;
    let (pd, _) = pagerduty(&mut w).await;
    let m = monitor(&mut w, |r| r.remind_every_ms = 1500).await;
    let mut ag = w.connect_agents().await;
    let incident = open_incident(&w, &mut ag, &m).await;
    // The opening and the first reminder.
    hook.wait_for(2, WAIT).await;

    let acked = ack(&w.tenant, &incident.id, "restarting the pool")
        .await
        .expect("acknowledge");
    assert!(acked.acknowledged_at.is_some());
    assert!(
        acked.acknowledged_by.starts_with("token "),
        "{}",
        acked.acknowledged_by
    );
    assert_eq!(acked.acknowledged_note, "restarting the pool");
    // Again: nothing changes, no second acknowledge event.
    let again = ack(&w.tenant, &incident.id, "other note").await.unwrap();
    assert_eq!(again.acknowledged_at, acked.acknowledged_at);
    assert_eq!(again.acknowledged_note, "restarting the pool");

    // PagerDuty: trigger, then acknowledge on the same dedup key.
    let got = pd.wait_for(2, WAIT).await;
    let a = json(&got[1]);
    assert_eq!(a["event_action"], "acknowledge");
    assert_eq!(a["dedup_key"], incident.id.as_str());

    // No reminder after the acknowledgement (three periods' worth of waiting).
    let before = hook.requests().len();
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let after = hook.requests();
    assert_eq!(after.len(), before, "{:?}", keys(&after));
    assert_eq!(pd.requests().len(), 2);

    // The recovery names who acknowledged.
    round(&mut ag, &m, v1::Outcome::Ok).await;
    let resolved = eventually("the recovery arrives", WAIT, || {
        let rs = hook.requests();
        async move {
            rs.into_iter()
                .find(|r| r.header("x-portwatch-event") == Some("incident.resolved"))
        }
    })
    .await;
    let body = json(&resolved);
    assert_eq!(
        body["incident"]["acknowledged_by"],
        acked.acknowledged_by.as_str()
    );
    assert_eq!(body["incident"]["acknowledged_note"], "restarting the pool");
    assert_eq!(
        resolved.header("idempotency-key"),
        Some(format!("{}:resolved:{}", incident.id, wh.id).as_str())
    );
    let got = pd.wait_for(3, WAIT).await;
    assert_eq!(json(&got[2])["event_action"], "resolve");

    // The timeline tells the story in order.
    let i = get(&w.tenant, &incident.id).await;
    let kinds: Vec<&str> = i.timeline.iter().map(|e| e.kind.as_str()).collect();
    for k in [
        "opened",
        "confirmed",
        "reminded",
        "acknowledged",
        "notified",
        "resolved",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let pos = |k: &str| kinds.iter().position(|x| *x == k).unwrap();
    assert!(pos("reminded") < pos("acknowledged"), "{kinds:?}");
    assert!(pos("acknowledged") < pos("resolved"), "{kinds:?}");
    // Only the recovery notices come after the resolution.
    assert!(
        kinds[pos("resolved") + 1..]
            .iter()
            .all(|k| *k == "notified"),
        "{kinds:?}"
    );
    let confirmed: HashSet<&str> = i
        .timeline
        .iter()
        .filter(|e| e.kind == "confirmed")
        .map(|e| e.region.as_str())
        .collect();
    assert_eq!(confirmed.len(), 2, "two regions confirmed the outage");

    // A closed incident cannot be acknowledged; another tenant's is not found.
    let closed = ack(&w.tenant, &incident.id, "").await.unwrap_err();
    assert_eq!(closed.code(), Code::FailedPrecondition);
    assert!(closed.message().starts_with("id: "), "{}", closed.message());
    let missing = ack(&w.tenant, "inc-nope", "").await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let bad = ack(&w.tenant, &incident.id, "a\nb").await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("note: "), "{}", bad.message());
}

#[tokio::test]
async fn an_incident_closes_only_after_recover_after_all_up_rounds() {
    let mut w = world().await;
    let hook = HttpReceiver::ok().await;
    webhook(&mut w, &hook).await;
    let m = monitor(&mut w, |r| {
        r.recover_after = 3;
        r.flap_detection = v1::FlapDetection::Off as i32;
    })
    .await;
    let mut ag = w.connect_agents().await;
    let incident = open_incident(&w, &mut ag, &m).await;

    // Two all-up rounds: still open.
    round(&mut ag, &m, v1::Outcome::Ok).await;
    round(&mut ag, &m, v1::Outcome::Ok).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(open_incidents(&w.tenant).await.len(), 1);
    // One region fails again (below the quorum): its count starts over.
    ag[0].report_acked(&m.id, v1::Outcome::Refused).await;
    round(&mut ag, &m, v1::Outcome::Ok).await;
    round(&mut ag, &m, v1::Outcome::Ok).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        open_incidents(&w.tenant).await.len(),
        1,
        "eu has had two up results since its failure"
    );
    // The third round closes it.
    round(&mut ag, &m, v1::Outcome::Ok).await;
    let t = w.tenant.clone();
    eventually("the incident closes", WAIT, || {
        let t = t.clone();
        async move { open_incidents(&t).await.is_empty().then_some(()) }
    })
    .await;
    // One opening, one recovery: nothing in between was sent.
    let got = hook.wait_for(2, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = hook.requests();
    assert_eq!(all.len(), 2, "{:?}", keys(&all));
    assert_eq!(
        got[1].header("x-portwatch-event"),
        Some("incident.resolved")
    );
    assert!(get(&w.tenant, &incident.id).await.closed_at.is_some());
}

async fn incident_of(admin: &Admin, monitor_id: &str) -> Option<v1::Incident> {
    admin
        .clone()
        .list_incidents(v1::ListIncidentsRequest {
            monitor_id: monitor_id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .incidents
        .into_iter()
        .next()
}

/// Two of three regions report `outcome` for `m` (the third reports ok).
async fn two_regions(ag: &mut [FakeAgent], m: &v1::Monitor, outcome: v1::Outcome) {
    ag[2].report_acked(&m.id, v1::Outcome::Ok).await;
    for a in ag.iter_mut().take(2) {
        a.report_acked(&m.id, outcome).await;
    }
}

#[tokio::test]
async fn a_maintenance_window_silences_its_monitors_and_tells_only_what_is_still_down_after() {
    let mut w = world().await;
    let hook = HttpReceiver::ok().await;
    let wh = webhook(&mut w, &hook).await;
    let tagged = |name: &'static str| {
        move |r: &mut v1::CreateMonitorRequest| {
            r.name = name.into();
            r.host = format!("{name}.example.com");
            r.tags = vec!["db".into()];
        }
    };
    // Down before the window (already paged), down and back inside it, down
    // inside it and still down after it.
    let before = monitor(&mut w, tagged("before")).await;
    let inside = monitor(&mut w, tagged("inside")).await;
    let after = monitor(&mut w, tagged("after")).await;
    let mut ag = w.connect_agents().await;
    two_regions(&mut ag, &before, v1::Outcome::Refused).await;
    hook.wait_for(1, WAIT).await;

    // A one-off window over the tag, from now for 61 s (windows last a minute at least).
    let now = std::time::SystemTime::now();
    let ts = portwatch_proto::time::to_timestamp;
    let window = w
        .tenant
        .create_maintenance_window(v1::CreateMaintenanceWindowRequest {
            tenant_id: String::new(),
            window: Some(v1::MaintenanceWindow {
                name: "database upgrade".into(),
                tags: vec!["db".into()],
                starts_at: Some(ts(now)),
                ends_at: Some(ts(now + Duration::from_secs(61))),
                ..Default::default()
            }),
        })
        .await
        .expect("create the window")
        .into_inner();
    assert!(window.active, "{window:?}");
    let listed = w
        .tenant
        .list_maintenance_windows(v1::ListMaintenanceWindowsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .windows;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].next_end, window.ends_at);
    let status = w
        .tenant
        .get_monitor_status(v1::GetMonitorStatusRequest {
            tenant_id: String::new(),
            id: after.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.maintenance_window_id, window.id);

    // Inside the window: one incident opens and closes, another opens; both
    // are recorded as in maintenance, nobody hears of either.
    two_regions(&mut ag, &inside, v1::Outcome::Refused).await;
    two_regions(&mut ag, &after, v1::Outcome::TimedOut).await;
    let t = w.tenant.clone();
    let held = eventually("both incidents open", WAIT, || {
        let t = t.clone();
        let (a, b) = (inside.id.clone(), after.id.clone());
        async move {
            let a = incident_of(&t, &a).await?;
            let b = incident_of(&t, &b).await?;
            Some((a, b))
        }
    })
    .await;
    assert_eq!(held.0.maintenance_window_id, window.id);
    assert_eq!(held.1.maintenance_window_id, window.id);
    round(&mut ag, &inside, v1::Outcome::Ok).await;
    eventually("the one inside closes", WAIT, || {
        let t = t.clone();
        let id = inside.id.clone();
        async move { incident_of(&t, &id).await?.closed_at.map(|_| ()) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(hook.requests().len(), 1, "{:?}", keys(&hook.requests()));

    // The window ends with `after` still down: its "Unreachable" goes then,
    // once; `before` (already paged) and `inside` (recovered) get nothing.
    let got = hook.wait_for(2, Duration::from_secs(80)).await;
    assert_eq!(
        got[1].header("idempotency-key"),
        Some(format!("{}:opened:{}", held.1.id, wh.id).as_str())
    );
    let body = json(&got[1]);
    assert_eq!(
        body["subject"],
        "TCP Port Unreachable: after.example.com:5432"
    );
    assert!(
        body["incident"]["first_steps"][0]
            .as_str()
            .is_some_and(|s| s.contains("firewall")),
        "{body}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = hook.requests();
    assert_eq!(all.len(), 2, "{:?}", keys(&all));
    let released = get(&w.tenant, &held.1.id).await;
    assert!(released.maintenance_window_id.is_empty());
    let kinds: Vec<&str> = released.timeline.iter().map(|e| e.kind.as_str()).collect();
    assert!(kinds.contains(&"maintenance"), "{kinds:?}");
    assert!(kinds.contains(&"released"), "{kinds:?}");
}

#[tokio::test]
async fn bad_maintenance_windows_and_mutes_name_the_field_and_change_nothing() {
    let mut w = world().await;
    let m = monitor(&mut w, |_| {}).await;
    let create = |window: v1::MaintenanceWindow| v1::CreateMaintenanceWindowRequest {
        tenant_id: String::new(),
        window: Some(window),
    };
    let weekly = |tz: &str| v1::MaintenanceWindow {
        all_monitors: true,
        weekly: Some(v1::WeeklyRecurrence {
            days: vec!["sun".into()],
            start: "02:00".into(),
            duration_ms: 7_200_000,
            time_zone: tz.into(),
        }),
        ..Default::default()
    };
    let cases = [
        (weekly("Mars/Olympus"), "window.weekly.time_zone: "),
        (
            v1::MaintenanceWindow {
                all_monitors: false,
                ..weekly("UTC")
            },
            "window.monitor_ids: ",
        ),
        (
            v1::MaintenanceWindow {
                monitor_ids: vec!["mon-nope".into()],
                all_monitors: false,
                ..weekly("UTC")
            },
            "window.monitor_ids: ",
        ),
        (
            v1::MaintenanceWindow {
                tags: vec!["Not A Tag".into()],
                ..weekly("UTC")
            },
            "window.tags: ",
        ),
    ];
    for (window, prefix) in cases {
        let e = w
            .tenant
            .create_maintenance_window(create(window))
            .await
            .unwrap_err();
        assert!(e.message().starts_with(prefix), "{}", e.message());
    }
    let e = w
        .tenant
        .mute_monitor(v1::MuteMonitorRequest {
            tenant_id: String::new(),
            monitor_id: m.id.clone(),
            duration_ms: 1000,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("duration_ms: "), "{}", e.message());
    let listed = w
        .tenant
        .list_maintenance_windows(v1::ListMaintenanceWindowsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .windows;
    assert!(listed.is_empty(), "{listed:?}");

    // A good weekly window shows its next occurrence; a mute is in force at once.
    let good = w
        .tenant
        .create_maintenance_window(create(weekly("Europe/Berlin")))
        .await
        .unwrap()
        .into_inner();
    assert!(good.next_start.is_some() && good.next_end.is_some());
    let mute = w
        .tenant
        .mute_monitor(v1::MuteMonitorRequest {
            tenant_id: String::new(),
            monitor_id: m.id.clone(),
            duration_ms: 2 * 3_600_000,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(mute.active);
    assert_eq!(mute.monitor_ids, std::slice::from_ref(&m.id));
    // Another tenant's window is not ours to delete.
    let e =
        w.op.delete_maintenance_window(v1::DeleteMaintenanceWindowRequest {
            tenant_id: "acme".into(),
            id: "mw-nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test]
async fn routing_rules_send_tagged_monitors_to_their_channels_and_the_rest_to_the_defaults() {
    let mut w = world().await;
    let db_hook = HttpReceiver::ok().await;
    let default_hook = HttpReceiver::ok().await;
    let db_channel = channel(
        &mut w.tenant,
        webhook_config(&db_hook, "/dba"),
        "dba on call",
        false,
    )
    .await;
    let default_channel = webhook(&mut w, &default_hook).await;

    // Bad rules name the field and change nothing.
    let set = |rules: Vec<v1::RoutingRule>| v1::SetRoutingRulesRequest {
        tenant_id: String::new(),
        rules,
    };
    let rule = |tags: &[&str], severity: &str, channels: &[&str]| v1::RoutingRule {
        tags: tags.iter().map(|s| s.to_string()).collect(),
        severity: severity.into(),
        channel_ids: channels.iter().map(|s| s.to_string()).collect(),
    };
    for (bad, prefix) in [
        (
            rule(&["db"], "urgent", &[&db_channel.id]),
            "rules.severity: ",
        ),
        (rule(&["db"], "", &["ch-nope"]), "rules.channel_ids: "),
        (rule(&["db"], "", &[]), "rules.channel_ids: "),
        (rule(&["DB!"], "", &[&db_channel.id]), "rules.tags: "),
    ] {
        let e = w
            .tenant
            .set_routing_rules(set(vec![bad]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with(prefix), "{}", e.message());
    }
    let none = w
        .tenant
        .get_routing_rules(v1::GetRoutingRulesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(none.rules.is_empty());

    let rules = w
        .tenant
        .set_routing_rules(set(vec![
            rule(&["db"], "critical", &[&db_channel.id]),
            rule(&["web"], "", &[&default_channel.id]),
        ]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rules.rules.len(), 2);

    let db = monitor(&mut w, |r| {
        r.name = "db".into();
        r.host = "db.example.com".into();
        r.tags = vec!["db".into()];
    })
    .await;
    let plain = monitor(&mut w, |r| {
        r.name = "plain".into();
        r.host = "plain.example.com".into();
    })
    .await;
    let mut ag = w.connect_agents().await;
    two_regions(&mut ag, &db, v1::Outcome::Refused).await;
    two_regions(&mut ag, &plain, v1::Outcome::Refused).await;
    let to_dba = db_hook.wait_for(1, WAIT).await;
    let to_default = default_hook.wait_for(1, WAIT).await;
    assert_eq!(
        json(&to_dba[0])["subject"],
        "TCP Port Unreachable: db.example.com:5432"
    );
    assert_eq!(
        json(&to_default[0])["subject"],
        "TCP Port Unreachable: plain.example.com:5432"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(db_hook.requests().len(), 1);
    assert_eq!(default_hook.requests().len(), 1);

    // A channel a rule names cannot be deleted from under it.
    let e = w
        .tenant
        .delete_channel(v1::DeleteChannelRequest {
            tenant_id: String::new(),
            id: db_channel.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("routing rule 1"), "{}", e.message());
}

#[tokio::test]
async fn a_port_expected_closed_alerts_when_a_quorum_connects_and_recovers_when_all_refuse() {
    let mut w = world().await;
    let hook = HttpReceiver::ok().await;
    let wh = webhook(&mut w, &hook).await;
    let m = monitor(&mut w, |r| {
        r.name = "exposed redis".into();
        r.host = "cache.example.com".into();
        r.port = 6379;
        r.expect_closed = true;
    })
    .await;
    assert!(m.expect_closed);
    let mut ag = w.connect_agents().await;
    // Closed everywhere: fine. One region connecting: not a quorum.
    ag[0].report_acked(&m.id, v1::Outcome::Refused).await;
    ag[1].report_acked(&m.id, v1::Outcome::TimedOut).await;
    ag[2].report_acked(&m.id, v1::Outcome::Refused).await;
    ag[0].report_acked(&m.id, v1::Outcome::Ok).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(open_incidents(&w.tenant).await.is_empty());
    // Two of three connect: the port is open.
    ag[1].report_acked(&m.id, v1::Outcome::Ok).await;
    let got = hook.wait_for(1, WAIT).await;
    let body = json(&got[0]);
    assert_eq!(
        body["subject"],
        "TCP Port Open (expected closed): cache.example.com:6379"
    );
    assert_eq!(
        body["incident"]["reason_text"],
        "Port accepts connections (expected closed)"
    );
    assert_eq!(body["incident"]["expect_closed"], true);
    let states: Vec<&str> = body["incident"]["regions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["state"].as_str())
        .collect();
    assert_eq!(
        states.iter().filter(|s| **s == "open").count(),
        2,
        "{states:?}"
    );
    assert!(
        body["incident"]["first_steps"][0]
            .as_str()
            .is_some_and(|s| s.contains("should be closed")),
        "{body}"
    );
    let incident = open_incidents(&w.tenant).await.remove(0);
    // Every region refused, timed out or unreachable again: closed again.
    ag[0].report_acked(&m.id, v1::Outcome::Refused).await;
    ag[1].report_acked(&m.id, v1::Outcome::TimedOut).await;
    ag[2].report_acked(&m.id, v1::Outcome::Unreachable).await;
    let got = hook.wait_for(2, WAIT).await;
    assert_eq!(
        json(&got[1])["subject"],
        "TCP Port Closed Again: cache.example.com:6379"
    );
    assert_eq!(
        got[1].header("idempotency-key"),
        Some(format!("{}:resolved:{}", incident.id, wh.id).as_str())
    );
}

/// A connect of `ms` milliseconds from `a`'s region, acknowledged.
async fn connect_in(a: &mut FakeAgent, m: &v1::Monitor, ms: u64) {
    let seq = a.next_seq;
    a.next_seq += 1;
    let mut r = portwatch_e2e::result(&m.id, v1::Outcome::Ok, std::time::SystemTime::now());
    r.connect_us = ms * 1000;
    a.send_batch(vec![(seq, r)]).await;
    a.pump_until(Duration::from_secs(5), |x| x.acked >= seq)
        .await
        .expect("ack");
}

#[tokio::test]
async fn a_port_is_slow_only_when_a_quorum_is_slow_and_an_outage_supersedes_it() {
    let mut w = world().await;
    let hook = HttpReceiver::ok().await;
    let wh = webhook(&mut w, &hook).await;
    let (pd, _) = pagerduty(&mut w).await;
    let m = monitor(&mut w, |r| {
        r.degraded_after_ms = 200;
        r.degraded_checks = 3;
    })
    .await;
    let mut ag = w.connect_agents().await;
    // One region slow for many checks: not enough.
    for _ in 0..4 {
        connect_in(&mut ag[0], &m, 450).await;
        connect_in(&mut ag[1], &m, 20).await;
        connect_in(&mut ag[2], &m, 25).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(hook.requests().is_empty(), "{:?}", keys(&hook.requests()));
    // Two regions slow, but the second only twice: still not enough.
    for _ in 0..2 {
        connect_in(&mut ag[0], &m, 450).await;
        connect_in(&mut ag[1], &m, 380).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(hook.requests().is_empty(), "{:?}", keys(&hook.requests()));
    // Its third slow check: a quorum (2 of 3) is slow.
    connect_in(&mut ag[1], &m, 390).await;
    let got = hook.wait_for(1, WAIT).await;
    let body = json(&got[0]);
    assert_eq!(body["subject"], "TCP Port Slow: db.example.com:5432");
    assert_eq!(body["severity"], "warning");
    assert_eq!(body["incident"]["slow"], true);
    let connect: Vec<f64> = body["incident"]["regions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["connect_ms"].as_f64())
        .collect();
    assert!(
        connect.contains(&390.0) && connect.contains(&450.0),
        "{connect:?}"
    );
    let status = w
        .tenant
        .get_monitor_status(v1::GetMonitorStatusRequest {
            tenant_id: String::new(),
            id: m.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.overall, v1::OverallState::Degraded as i32);
    let slow_id = body["incident"]["id"].as_str().unwrap().to_string();
    let trigger = json(&pd.wait_for(1, WAIT).await[0]);
    assert_eq!(trigger["payload"]["severity"], "warning");

    // Fast again for three checks everywhere: its own recovery.
    for _ in 0..3 {
        for a in ag.iter_mut() {
            connect_in(a, &m, 30).await;
        }
    }
    let got = hook.wait_for(2, WAIT).await;
    assert_eq!(
        json(&got[1])["subject"],
        "TCP Port No Longer Slow: db.example.com:5432"
    );
    assert_eq!(
        got[1].header("idempotency-key"),
        Some(format!("{slow_id}:resolved:{wh_id}", wh_id = wh.id).as_str())
    );

    // Slow again, then down: the outage supersedes the slowness. The receiver
    // hears "Slow" then "Unreachable", never "No Longer Slow" about a port that
    // is down; PagerDuty's warning is resolved.
    for _ in 0..3 {
        connect_in(&mut ag[0], &m, 450).await;
        connect_in(&mut ag[1], &m, 450).await;
    }
    hook.wait_for(3, WAIT).await;
    two_regions(&mut ag, &m, v1::Outcome::Refused).await;
    let got = hook.wait_for(4, WAIT).await;
    let subjects: Vec<String> = got
        .iter()
        .map(|r| json(r)["subject"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        subjects,
        [
            "TCP Port Slow: db.example.com:5432",
            "TCP Port No Longer Slow: db.example.com:5432",
            "TCP Port Slow: db.example.com:5432",
            "TCP Port Unreachable: db.example.com:5432",
        ]
    );
    let second_slow = json(&got[2])["incident"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let outage = json(&got[3])["incident"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let superseded = get(&w.tenant, &second_slow).await;
    assert!(superseded.closed_at.is_some());
    assert_eq!(superseded.superseded_by, outage);
    let pd_events = pd.wait_for(5, WAIT).await;
    let actions: Vec<(String, String)> = pd_events
        .iter()
        .map(|r| {
            let v = json(r);
            (
                v["event_action"].as_str().unwrap_or_default().to_string(),
                v["dedup_key"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert!(
        actions.contains(&("resolve".to_string(), second_slow.clone())),
        "{actions:?}"
    );
    assert!(
        actions.contains(&("trigger".to_string(), outage.clone())),
        "{actions:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hook.requests().len(), 4, "{:?}", keys(&hook.requests()));
}
