//! Agents are untrusted input: a private region's agent runs on a tenant's own
//! machine. These tests play the attacker (and the broken agent) as a real gRPC
//! client against a real coordinator process, and check what the coordinator
//! stores, acknowledges and answers.
//!
//! What they prove:
//! - an agent id belongs to the region that first used it: another region's
//!   token (another tenant's) cannot speak for it, and a sequence number beyond
//!   anything an agent can have issued is refused, never acknowledged — the
//!   victim goes on storing;
//! - a result from the future (beyond the clock-skew allowance) or from before
//!   its monitor existed is refused and counted, so it cannot freeze a region;
//!   absurd timestamps (10^15 s, 2^63 − 1 s) are refused at the edge and the
//!   coordinator's loops go on (a later outage still opens an incident);
//! - the agent's clock offset from its heartbeats shows in `ListAgents`;
//! - revoking a token ends its open agent stream and event stream within a
//!   second;
//! - a protocol error ends the stream with its code and a reason.

mod support;

use std::time::{Duration, Instant, SystemTime};

use portwatch_e2e::{FakeAgent, Setup, eventually, result};
use portwatch_proto::time::to_timestamp;
use portwatch_proto::v1;
use portwatch_proto::v1::agent_message::Msg as AgentMsg;
use support::*;
use tonic::Code;

/// Connects a hand-driven agent that must be welcomed.
async fn agent(w: &World, region: usize, id: &str) -> FakeAgent {
    let a = FakeAgent::connect(&w.coord, &w.regions[region].token, id)
        .await
        .unwrap_or_else(|e| panic!("agent {id}: {:?} {}", e.code(), e.message()));
    a.keepalive();
    a
}

/// Waits for the stream's end and returns its status (the test fails if the
/// stream stays open for `within` or ends without an error).
async fn stream_end(a: &mut FakeAgent, within: Duration) -> tonic::Status {
    match a.pump_until(within, |_| false).await {
        Err(s) if s.code() != Code::DeadlineExceeded => s,
        Err(s) => panic!("the stream stayed open: {}", s.message()),
        Ok(()) => unreachable!("the condition never holds"),
    }
}

/// Sends one raw message on a fake agent's stream.
async fn send(a: &FakeAgent, msg: AgentMsg) {
    a.tx.send(v1::AgentMessage { msg: Some(msg) })
        .await
        .expect("stream open");
}

async fn refused_metric(w: &World, reason: &str) -> f64 {
    let text = w.coord.metrics_text().await;
    text.lines()
        .filter(|l| {
            l.starts_with("portwatch_results_refused_total{")
                && l.contains(&format!("reason=\"{reason}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_id_belongs_to_its_region_and_sequence_numbers_cannot_run_ahead() {
    let mut w = World::start(1, "").await;
    let req = monitor("orders db", "127.0.0.1", 5432, &w.names(1), 1000);
    let m = create_monitor(&mut w.tenant, req).await;
    let mut victim = agent(&w, 0, "victim-probe-1").await;
    victim.report_acked(&m.id, v1::Outcome::Ok).await;

    // Another tenant with a private region of its own, and its agent token.
    Setup::tenant(&mut w.op, "bravo", v1::Plan::Enterprise).await;
    let evil = w.add_region("bravo-dc", "bravo").await;

    // The attacker's token, the victim's agent id: refused, naming the field.
    let hijack = FakeAgent::connect(&w.coord, &w.regions[evil].token, "victim-probe-1").await;
    let e = hijack
        .err()
        .expect("another region's token cannot speak for this agent");
    assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
    assert!(e.message().starts_with("hello.agent_id"), "{}", e.message());

    // With its own id, a sequence number no agent can have issued is refused,
    // not acknowledged, and ends the stream with the reason.
    let mut attacker = agent(&w, evil, "bravo-probe-1").await;
    let before = attacker.acked;
    attacker
        .send_batch(vec![(
            u64::MAX,
            result(&m.id, v1::Outcome::Ok, SystemTime::now()),
        )])
        .await;
    let end = stream_end(&mut attacker, Duration::from_secs(5)).await;
    assert_eq!(end.code(), Code::InvalidArgument, "{}", end.message());
    assert!(
        end.message().starts_with("results.seq"),
        "{}",
        end.message()
    );
    assert_eq!(attacker.acked, before, "never acknowledged");
    // Reconnecting, it is still where it was.
    let again = agent(&w, evil, "bravo-probe-1").await;
    assert_eq!(again.acked, before);

    // The victim is untouched: its sequence goes on and its results are stored.
    let seq = victim.report_acked(&m.id, v1::Outcome::Refused).await;
    assert_eq!(victim.acked, seq);
    wait_status(&w.tenant, &m.id, "the victim's result counts", WAIT, |s| {
        states(s).values().all(|st| *st == v1::RegionState::Down)
    })
    .await;
    let agents =
        w.op.list_agents(v1::ListAgentsRequest::default())
            .await
            .expect("list agents")
            .into_inner()
            .agents;
    let v = agents
        .iter()
        .find(|a| a.agent_id == "victim-probe-1")
        .expect("the victim is listed");
    assert_eq!(v.region, w.regions[0].name, "still in its own region");
    assert_eq!(v.acked_seq, seq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_from_the_future_or_before_their_monitor_are_refused_and_counted() {
    let mut w = World::start(1, "clock_skew_allowance = \"5s\"\n").await;
    let req = monitor("cache", "127.0.0.1", 6379, &w.names(1), 1000);
    let m = create_monitor(&mut w.tenant, req).await;
    let mut a = agent(&w, 0, "probe-skewed").await;
    a.report_acked(&m.id, v1::Outcome::Ok).await;

    // A day ahead: refused (acknowledged, so it leaves the spool, but not stored).
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    let created = m
        .created_at
        .as_ref()
        .and_then(portwatch_proto::time::from_timestamp)
        .expect("created_at");
    let bad: Vec<(&str, v1::CheckResult)> = vec![
        ("from the future", result(&m.id, v1::Outcome::Ok, now + day)),
        (
            "before its monitor existed",
            result(&m.id, v1::Outcome::Ok, created - Duration::from_secs(3600)),
        ),
        ("bad checked_at", {
            let mut r = result(&m.id, v1::Outcome::Ok, now);
            r.checked_at = Some(prost_types::Timestamp {
                seconds: 1_000_000_000_000_000,
                nanos: 0,
            });
            r
        }),
        ("bad checked_at", {
            let mut r = result(&m.id, v1::Outcome::Ok, now);
            r.checked_at = Some(prost_types::Timestamp {
                seconds: i64::MAX,
                nanos: 0,
            });
            r
        }),
    ];
    for (reason, r) in bad {
        let before = refused_metric(&w, reason).await;
        let seq = a.next_seq;
        a.next_seq += 1;
        a.send_batch(vec![(seq, r)]).await;
        a.pump_until(Duration::from_secs(5), |a| a.acked >= seq)
            .await
            .unwrap_or_else(|e| panic!("{reason}: acknowledged: {}", e.message()));
        let after = refused_metric(&w, reason).await;
        assert_eq!(after, before + 1.0, "{reason}: counted");
    }
    let stored = results(&w.tenant, &m.id).await;
    assert_eq!(
        stored.len(),
        1,
        "only the honest result is stored: {stored:?}"
    );

    // The region is not frozen: a real outage now shows, and opens an incident
    // (the periodic loop survived the absurd times too).
    a.report_acked(&m.id, v1::Outcome::Refused).await;
    wait_status(&w.tenant, &m.id, "the region turns down", WAIT, |s| {
        states(s).values().all(|st| *st == v1::RegionState::Down) && !s.open_incident_id.is_empty()
    })
    .await;
    a.report_acked(&m.id, v1::Outcome::Ok).await;
    wait_status(&w.tenant, &m.id, "and recovers", WAIT, |s| {
        s.open_incident_id.is_empty()
    })
    .await;

    // The clock offset from heartbeats: 30 s ahead shows in ListAgents.
    send(
        &a,
        AgentMsg::Heartbeat(v1::Heartbeat {
            sent_at: Some(to_timestamp(SystemTime::now() + Duration::from_secs(30))),
            ..Default::default()
        }),
    )
    .await;
    let offset = eventually("the clock offset is reported", WAIT, || async {
        let agents =
            w.op.clone()
                .list_agents(v1::ListAgentsRequest::default())
                .await
                .ok()?
                .into_inner()
                .agents;
        let a = agents.into_iter().find(|a| a.agent_id == "probe-skewed")?;
        (a.clock_offset_ms != 0).then_some(a)
    })
    .await;
    assert!(
        (29_000..=31_000).contains(&offset.clock_offset_ms),
        "{}",
        offset.clock_offset_ms
    );
    assert_eq!(offset.refused_results, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_token_ends_its_open_streams_within_a_second() {
    let mut w = World::start(1, "").await;
    let mut a = agent(&w, 0, "probe-to-revoke").await;
    let agent_token_id =
        w.op.list_agent_tokens(v1::ListAgentTokensRequest::default())
            .await
            .expect("list agent tokens")
            .into_inner()
            .tokens
            .into_iter()
            .find(|t| t.region == w.regions[0].name)
            .expect("the region's token")
            .id;
    // A second tenant token with an event stream open, and one that stays valid.
    let issued = w
        .tenant
        .create_tenant_token(v1::CreateTenantTokenRequest::default())
        .await
        .expect("a second tenant token")
        .into_inner();
    let doomed = w.coord.admin(&issued.token).await;
    let mut doomed_events = doomed
        .clone()
        .watch_events(v1::WatchEventsRequest::default())
        .await
        .expect("watch")
        .into_inner();
    let mut kept_events = w
        .tenant
        .clone()
        .watch_events(v1::WatchEventsRequest::default())
        .await
        .expect("watch")
        .into_inner();

    let started = Instant::now();
    w.op.revoke_agent_token(v1::RevokeTokenRequest {
        token_id: agent_token_id,
    })
    .await
    .expect("revoke the agent token");
    let end = stream_end(&mut a, Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert_eq!(end.code(), Code::Unauthenticated, "{}", end.message());
    assert!(took < Duration::from_secs(1), "ended after {took:?}");

    let started = Instant::now();
    w.tenant
        .revoke_tenant_token(v1::RevokeTokenRequest {
            token_id: issued.token_id,
        })
        .await
        .expect("revoke the second tenant token");
    let end = tokio::time::timeout(Duration::from_secs(5), doomed_events.message())
        .await
        .expect("the revoked token's event stream ends");
    let took = started.elapsed();
    let status = end.expect_err("it ends with an error");
    assert_eq!(status.code(), Code::Unauthenticated, "{}", status.message());
    assert!(took < Duration::from_secs(1), "ended after {took:?}");

    // The other token's stream is still open (nothing to read, no end).
    let still = tokio::time::timeout(Duration::from_millis(500), kept_events.message()).await;
    assert!(
        still.is_err(),
        "the valid token's stream goes on: {still:?}"
    );
    // And the revoked ones stay out.
    let again = FakeAgent::connect(&w.coord, &w.regions[0].token, "probe-to-revoke").await;
    assert_eq!(again.err().map(|e| e.code()), Some(Code::Unauthenticated));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_end_the_stream_with_a_code_and_a_reason() {
    let w = World::start(1, "").await;
    let hello = AgentMsg::Hello(v1::Hello {
        agent_id: "probe-chatty".into(),
        ..Default::default()
    });
    let oversized = AgentMsg::Results(v1::ResultBatch {
        results: (1..=10_001)
            .map(|seq| v1::SequencedResult { seq, result: None })
            .collect(),
    });
    let too_big = AgentMsg::Results(v1::ResultBatch {
        results: vec![v1::SequencedResult {
            seq: 1,
            result: Some(v1::CheckResult {
                detail: "x".repeat(5 << 20),
                ..Default::default()
            }),
        }],
    });
    let cases: Vec<(&str, Option<AgentMsg>, Code, &str)> = vec![
        (
            "a second hello",
            Some(hello),
            Code::InvalidArgument,
            "hello:",
        ),
        ("an empty message", None, Code::InvalidArgument, "msg:"),
        (
            "too many results",
            Some(oversized),
            Code::InvalidArgument,
            "results: 10001",
        ),
        (
            "a message over the size limit",
            Some(too_big),
            Code::OutOfRange,
            "",
        ),
    ];
    for (what, msg, code, prefix) in cases {
        let mut a = agent(&w, 0, "probe-chatty").await;
        a.tx.send(v1::AgentMessage { msg })
            .await
            .expect("stream open");
        let end = stream_end(&mut a, Duration::from_secs(5)).await;
        assert_eq!(end.code(), code, "{what}: {}", end.message());
        assert!(!end.message().is_empty(), "{what}: says why");
        assert!(end.message().contains(prefix), "{what}: {}", end.message());
    }
}
