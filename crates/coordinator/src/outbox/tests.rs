//! Delivery planning (which channels hear of what) and the worker's retry
//! schedule: backoff, horizon, and refusals.

use super::*;

fn channel(id: &str, tenant: &str, default: bool) -> v1::Channel {
    v1::Channel {
        id: id.into(),
        tenant_id: tenant.into(),
        is_default: default,
        ..Default::default()
    }
}

fn ids(v: &[OutboxRecord]) -> Vec<String> {
    v.iter()
        .map(|r| r.delivery.as_ref().unwrap().channel_id.clone())
        .collect()
}

#[test]
fn backoff_doubles_caps_and_jitters_within_half() {
    let s = OutboxSettings {
        retry_initial: Duration::from_secs(10),
        retry_max: Duration::from_secs(60),
        retry_horizon: Duration::from_secs(3600),
        ..OutboxSettings::default()
    };
    let table = [(1, 10), (2, 20), (3, 40), (4, 60), (40, 60)];
    for (attempts, full) in table {
        let full = Duration::from_secs(full);
        assert_eq!(backoff(attempts, &s, 1.0), full, "attempt {attempts}");
        assert_eq!(backoff(attempts, &s, 0.0), full / 2, "attempt {attempts}");
    }
    assert_eq!(backoff(u32::MAX, &s, 0.5), Duration::from_secs(45));
}

#[test]
fn channels_named_by_the_monitor_else_the_tenants_defaults() {
    let chans = vec![
        channel("a", "acme", true),
        channel("b", "acme", false),
        channel("c", "acme", true),
        channel("x", "other", true),
        channel("op", "", true),
    ];
    let mut m = v1::Monitor {
        id: "m".into(),
        tenant_id: "acme".into(),
        ..Default::default()
    };
    let i = v1::Incident {
        id: "inc-1".into(),
        ..Default::default()
    };
    let now = SystemTime::now();
    let plan = |m: &v1::Monitor, earlier: &[String]| {
        plan_incident(m, &chans, earlier, &i, v1::DeliveryKind::Opened, now)
    };
    assert_eq!(ids(&plan(&m, &[])), ["a", "c"]);
    m.channel_ids = vec!["b".into(), "x".into(), "gone".into()];
    assert_eq!(
        ids(&plan(&m, &[])),
        ["b"],
        "another tenant's channel is never used"
    );
    assert_eq!(
        ids(&plan(&m, &["a".into()])),
        ["a"],
        "a resolve follows its open"
    );
    let r = &plan(&m, &[])[0];
    let d = r.delivery.as_ref().unwrap();
    assert_eq!(d.idempotency_key, "inc-1:opened:b");
    assert_eq!(d.subject_id, "inc-1");
    assert_eq!(d.state, v1::DeliveryState::Pending as i32);
    assert_eq!(r.tenant_id, "acme");
    assert!(notification(r).is_some());

    let o = RegionOutage {
        id: "out-1".into(),
        region: "eu".into(),
        ..Default::default()
    };
    let rs = plan_region(&chans, &o, v1::DeliveryKind::RegionOffline, now);
    assert_eq!(
        ids(&rs),
        ["op"],
        "region notices go to operator channels only"
    );
    let d = rs[0].delivery.as_ref().unwrap();
    assert_eq!(d.idempotency_key, "out-1:offline:op");
    assert_eq!(d.subject_id, "eu");
    assert!(
        plan_region(&chans, &o, v1::DeliveryKind::RegionOnline, now).is_empty(),
        "no 'back online' to a channel that was not told of the outage"
    );
    let told = RegionOutage {
        channel_ids: vec!["op".into()],
        ..o
    };
    let rs = plan_region(&chans, &told, v1::DeliveryKind::RegionOnline, now);
    assert_eq!(
        rs[0].delivery.as_ref().unwrap().idempotency_key,
        "out-1:online:op"
    );
}

#[test]
fn a_flapping_notice_goes_to_the_channels_told_of_the_opening_except_pagerduty() {
    let pd = v1::Channel {
        config: Some(v1::channel::Config::Pagerduty(
            v1::PagerDutyConfig::default(),
        )),
        ..channel("pd", "acme", true)
    };
    let chans = vec![channel("a", "acme", true), channel("b", "acme", true), pd];
    let m = v1::Monitor {
        id: "m".into(),
        tenant_id: "acme".into(),
        ..Default::default()
    };
    let i = v1::Incident {
        id: "inc-1".into(),
        ..Default::default()
    };
    let terms = FlapTerms {
        threshold: 4,
        window_ms: 20_000,
        stable_for_ms: 5_000,
    };
    let now = SystemTime::now();
    let told = ["a".to_string(), "pd".to_string()];
    let rs = plan_flapping(&m, &chans, &told, &i, terms, now);
    assert_eq!(ids(&rs), ["a"], "only those told, and never PagerDuty");
    let d = rs[0].delivery.as_ref().unwrap();
    assert_eq!(d.idempotency_key, "inc-1:flapping:a");
    assert_eq!(d.kind, v1::DeliveryKind::Flapping as i32);
    assert_eq!(rs[0].flap, Some(terms));
    assert!(matches!(
        notification(&rs[0]).map(|n| n.notice),
        Some(Notice::Flapping(..))
    ));
    assert!(
        plan_flapping(&m, &chans, &[], &i, terms, now).is_empty(),
        "nobody told of the opening, nobody told it flaps"
    );
}

#[test]
fn attempts_retry_until_the_horizon_or_a_refusal() {
    let s = OutboxSettings {
        retry_initial: Duration::from_secs(10),
        retry_max: Duration::from_secs(60),
        retry_horizon: Duration::from_secs(100),
        ..OutboxSettings::default()
    };
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let fresh = || v1::Delivery {
        id: "d".into(),
        state: v1::DeliveryState::Pending as i32,
        created_at: Some(to_timestamp(t0)),
        ..Default::default()
    };
    let fail = |permanent| {
        Err(Failure {
            detail: "HTTP 503".into(),
            permanent,
        })
    };

    let mut d = fresh();
    apply(&mut d, fail(false), t0, &s, 1.0);
    assert_eq!(d.state, v1::DeliveryState::Pending as i32);
    assert_eq!(d.attempts, 1);
    assert_eq!(d.last_error, "HTTP 503");
    assert_eq!(
        d.next_attempt_at.as_ref().and_then(from_timestamp),
        Some(t0 + Duration::from_secs(10))
    );
    // The next retry would land past the horizon: give up now.
    apply(&mut d, fail(false), t0 + Duration::from_secs(95), &s, 1.0);
    assert_eq!(d.state, v1::DeliveryState::Failed as i32);
    assert!(d.next_attempt_at.is_none());

    let mut d = fresh();
    apply(&mut d, fail(true), t0, &s, 1.0);
    assert_eq!(
        d.state,
        v1::DeliveryState::Failed as i32,
        "a refusal is final"
    );

    let mut d = fresh();
    apply(&mut d, fail(false), t0, &s, 0.0);
    apply(
        &mut d,
        Ok(Answer {
            detail: "HTTP 200 OK".into(),
        }),
        t0 + Duration::from_secs(5),
        &s,
        0.0,
    );
    assert_eq!(d.state, v1::DeliveryState::Delivered as i32);
    assert_eq!(d.attempts, 2);
    assert!(d.delivered_at.is_some());
    assert!(d.next_attempt_at.is_none());
}
