//! How each API object looks in JSON output.
//!
//! The generated protobuf types carry no serde derives, so the JSON shape is
//! defined here, once per object, and is a stable interface for scripts:
//! snake_case keys as in the proto, enums as the lower-case words of
//! `names.rs` (null when unset), timestamps as RFC 3339 strings (null when
//! unset, "invalid time" when out of range), latencies as milliseconds
//! (`connect_ms`, null when nothing connected), intervals as `interval_ms`.
//! Write-only secrets are never returned by the coordinator and so never appear.

use portwatch_proto::v1;
use serde_json::{Value, json};

use crate::names;
use crate::output::{connect_ms_json, ts_json, us_as_ms_json};

pub fn tenant(t: &v1::Tenant) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "plan": names::plan(t.plan),
        "created_at": ts_json(t.created_at.as_ref()),
        "max_monitors": t.max_monitors,
        "min_interval_ms": t.min_interval_ms,
        "monitor_count": t.monitor_count,
    })
}

pub fn region(r: &v1::Region) -> Value {
    json!({
        "name": r.name,
        "description": r.description,
        "owner_tenant_id": r.owner_tenant_id,
        "private": !r.owner_tenant_id.is_empty(),
        "agents_online": r.agents_online,
        "offline_since": ts_json(r.offline_since.as_ref()),
    })
}

pub fn agent(a: &v1::Agent) -> Value {
    json!({
        "agent_id": a.agent_id,
        "region": a.region,
        "version": a.version,
        "hostname": a.hostname,
        "online": a.online,
        "connected_at": ts_json(a.connected_at.as_ref()),
        "last_seen": ts_json(a.last_seen.as_ref()),
        "assignments": a.assignments,
        "acked_seq": a.acked_seq,
        "spool_depth": a.spool_depth,
        "dropped_total": a.dropped_total,
        "spool_error": a.spool_error,
        "unstored_total": a.unstored_total,
        "loop_errors_total": a.loop_errors_total,
        "clock_offset_ms": a.clock_offset_ms,
        "refused_results": a.refused_results,
        "token_id": a.token_id,
    })
}

pub fn agent_token(t: &v1::AgentToken) -> Value {
    json!({
        "id": t.id,
        "region": t.region,
        "description": t.description,
        "created_at": ts_json(t.created_at.as_ref()),
        "revoked": t.revoked,
    })
}

/// A monitor; its flap settings with the defaults filled in.
pub fn monitor(m: &v1::Monitor) -> Value {
    let flap = portwatch_proto::flap::Settings::of(m);
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    json!({
        "id": m.id,
        "tenant_id": m.tenant_id,
        "name": m.name,
        "host": m.host,
        "port": m.port,
        "regions": m.regions,
        "interval_ms": m.interval_ms,
        "timeout_ms": m.timeout_ms,
        "consensus": names::consensus(m.consensus),
        "family": names::family(m.family),
        "address_policy": names::address_policy(m.address_policy),
        "close_mode": names::close_mode(m.close_mode),
        "channel_ids": m.channel_ids,
        "flap_detection": names::flap_detection(m.flap_detection),
        "flap_threshold": flap.threshold,
        "flap_window_ms": ms(flap.window),
        "flap_stable_for_ms": ms(flap.stable_for),
        "recover_after": m.recover_after.max(1),
        "remind_every_ms": m.remind_every_ms,
        "remind_max": if m.remind_max == 0 { 10 } else { m.remind_max },
        "tags": m.tags,
        "expect_closed": m.expect_closed,
        "degraded_after_ms": m.degraded_after_ms,
        "degraded_checks": if m.degraded_checks == 0 { 3 } else { m.degraded_checks },
        "paused": m.paused,
        "created_at": ts_json(m.created_at.as_ref()),
        "updated_at": ts_json(m.updated_at.as_ref()),
        "generation": m.generation,
    })
}

pub fn result(r: &v1::CheckResult) -> Value {
    json!({
        "monitor_id": r.monitor_id,
        "region": r.region,
        "checked_at": ts_json(r.checked_at.as_ref()),
        "outcome": names::outcome(r.outcome),
        "detail": r.detail,
        "address": r.address,
        "dns_ms": us_as_ms_json(r.dns_us),
        "connect_ms": connect_ms_json(r.outcome, r.connect_us),
        "total_ms": us_as_ms_json(r.total_us),
        "tcp_rtt_ms": r.tcp_rtt_us.map_or(Value::Null, us_as_ms_json),
        "immediate": r.immediate,
    })
}

pub fn region_status(s: &v1::RegionStatus) -> Value {
    let last = s.last_result.as_ref();
    json!({
        "region": s.region,
        "state": names::region_state(s.state),
        "unknown_reason": s.unknown_reason,
        "agent_online": s.agent_online,
        "outcome": last.and_then(|r| names::outcome(r.outcome)),
        "detail": last.map(|r| r.detail.clone()),
        "connect_ms": last.map_or(Value::Null, |r| connect_ms_json(r.outcome, r.connect_us)),
        "checked_at": ts_json(last.and_then(|r| r.checked_at.as_ref())),
    })
}

pub fn status(s: &v1::MonitorStatus) -> Value {
    let m = s.monitor.clone().unwrap_or_default();
    json!({
        "id": m.id,
        "name": m.name,
        "host": m.host,
        "port": m.port,
        "overall": names::overall(s.overall),
        "quorum": s.quorum,
        "open_incident_id": s.open_incident_id,
        "regions": s.regions.iter().map(region_status).collect::<Vec<_>>(),
    })
}

fn evidence(e: &v1::RegionEvidence) -> Value {
    json!({
        "region": e.region,
        "state": names::region_state(e.state),
        "outcome": names::outcome(e.outcome),
        "detail": e.detail,
        "connect_ms": connect_ms_json(e.outcome, e.connect_us),
        "checked_at": ts_json(e.checked_at.as_ref()),
        "ignored_offline": e.ignored_offline,
    })
}

pub fn incident(i: &v1::Incident) -> Value {
    json!({
        "id": i.id,
        "tenant_id": i.tenant_id,
        "monitor_id": i.monitor_id,
        "monitor_name": i.monitor_name,
        "host": i.host,
        "port": i.port,
        "open": i.closed_at.is_none(),
        "opened_at": ts_json(i.opened_at.as_ref()),
        "closed_at": ts_json(i.closed_at.as_ref()),
        "reason": names::outcome(i.reason),
        "reason_text": i.reason_text,
        "severity": i.severity,
        "flapping_since": ts_json(i.flapping_since.as_ref()),
        "stable_since": ts_json(i.stable_since.as_ref()),
        "open_evidence": i.open_evidence.iter().map(evidence).collect::<Vec<_>>(),
        "close_evidence": i.close_evidence.iter().map(evidence).collect::<Vec<_>>(),
        "first_steps": i.first_steps,
        "maintenance_window_id": i.maintenance_window_id,
        "expect_closed": i.expect_closed,
        "slow": i.slow,
        "superseded_by": i.superseded_by,
        "in_maintenance_since": ts_json(i.in_maintenance_since.as_ref()),
        "released_at": ts_json(i.released_at.as_ref()),
        "acknowledged_at": ts_json(i.acknowledged_at.as_ref()),
        "acknowledged_by": i.acknowledged_by,
        "acknowledged_note": i.acknowledged_note,
        "reminders_sent": i.reminders_sent,
        "last_reminded_at": ts_json(i.last_reminded_at.as_ref()),
        "timeline": i.timeline.iter().map(|e| json!({
            "at": ts_json(e.at.as_ref()),
            "kind": e.kind,
            "text": e.text,
            "region": e.region,
            "channel_id": e.channel_id,
        })).collect::<Vec<_>>(),
    })
}

pub fn maintenance_window(w: &v1::MaintenanceWindow) -> Value {
    json!({
        "id": w.id,
        "tenant_id": w.tenant_id,
        "name": w.name,
        "monitor_ids": w.monitor_ids,
        "tags": w.tags,
        "all_monitors": w.all_monitors,
        "starts_at": ts_json(w.starts_at.as_ref()),
        "ends_at": ts_json(w.ends_at.as_ref()),
        "weekly": w.weekly.as_ref().map(|r| json!({
            "days": r.days,
            "start": r.start,
            "duration_ms": r.duration_ms,
            "time_zone": r.time_zone,
        })),
        "active": w.active,
        "next_start": ts_json(w.next_start.as_ref()),
        "next_end": ts_json(w.next_end.as_ref()),
        "created_at": ts_json(w.created_at.as_ref()),
    })
}

/// The channel's kind and its non-secret target, for tables.
pub fn channel_target(c: &v1::Channel) -> (&'static str, String) {
    use v1::channel::Config;
    match &c.config {
        Some(Config::Webhook(w)) => ("webhook", w.url.clone()),
        Some(Config::Slack(s)) => ("slack", s.webhook_url.clone()),
        Some(Config::Email(e)) => ("email", e.to.join(",")),
        Some(Config::Pagerduty(p)) => (
            "pagerduty",
            if p.base_url.is_empty() {
                "events api v2".to_string()
            } else {
                p.base_url.clone()
            },
        ),
        None => ("none", String::new()),
    }
}

pub fn channel(c: &v1::Channel) -> Value {
    use v1::channel::Config;
    let config = match &c.config {
        Some(Config::Webhook(w)) => json!({ "url": w.url }),
        Some(Config::Slack(s)) => json!({ "webhook_url": s.webhook_url }),
        Some(Config::Email(e)) => json!({
            "smtp_host": e.smtp_host,
            "smtp_port": e.smtp_port,
            "tls": names::smtp_tls(e.tls),
            "username": e.username,
            "from": e.from,
            "to": e.to,
        }),
        Some(Config::Pagerduty(p)) => json!({ "base_url": p.base_url }),
        None => Value::Null,
    };
    json!({
        "id": c.id,
        "tenant_id": c.tenant_id,
        "name": c.name,
        "is_default": c.is_default,
        "kind": channel_target(c).0,
        "config": config,
        "created_at": ts_json(c.created_at.as_ref()),
    })
}

pub fn delivery(d: &v1::Delivery) -> Value {
    json!({
        "id": d.id,
        "channel_id": d.channel_id,
        "subject_id": d.subject_id,
        "kind": names::delivery_kind(d.kind),
        "idempotency_key": d.idempotency_key,
        "state": names::delivery_state(d.state),
        "attempts": d.attempts,
        "last_error": d.last_error,
        "created_at": ts_json(d.created_at.as_ref()),
        "next_attempt_at": ts_json(d.next_attempt_at.as_ref()),
        "delivered_at": ts_json(d.delivered_at.as_ref()),
    })
}

pub fn event(e: &v1::Event) -> Value {
    use v1::event::Kind;
    let at = ts_json(e.at.as_ref());
    match &e.kind {
        Some(Kind::IncidentOpened(i)) => {
            json!({ "at": at, "type": "incident_opened", "incident": incident(i) })
        }
        Some(Kind::IncidentClosed(i)) => {
            json!({ "at": at, "type": "incident_closed", "incident": incident(i) })
        }
        Some(Kind::IncidentFlapping(i)) => {
            json!({ "at": at, "type": "incident_flapping", "incident": incident(i) })
        }
        Some(Kind::IncidentAcknowledged(i)) => {
            json!({ "at": at, "type": "incident_acknowledged", "incident": incident(i) })
        }
        Some(Kind::RegionState(c)) => json!({
            "at": at,
            "type": "region_state",
            "monitor_id": c.monitor_id,
            "region": c.region,
            "from": names::region_state(c.from),
            "to": names::region_state(c.to),
            "outcome": names::outcome(c.outcome),
            "detail": c.detail,
        }),
        Some(Kind::ProbeRegion(p)) => json!({
            "at": at,
            "type": "probe_region",
            "region": p.region,
            "online": p.online,
        }),
        None => json!({ "at": at, "type": "unknown" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_json_uses_words_and_rfc3339() {
        let m = v1::Monitor {
            id: "mon_1".into(),
            name: "db".into(),
            host: "db.example.com".into(),
            port: 5432,
            consensus: v1::ConsensusPolicy::Unanimous as i32,
            created_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            ..Default::default()
        };
        let v = monitor(&m);
        assert_eq!(v["consensus"], "unanimous");
        assert_eq!(v["family"], "any");
        assert_eq!(v["created_at"], "2023-11-14T22:13:20.000Z");
        assert_eq!(v["updated_at"], Value::Null);
    }
}
