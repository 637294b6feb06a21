//! Bad input against the real processes (scenario 13).
//!
//! What it proves:
//! - a table of malformed admin requests (ports, hosts, intervals, timeouts,
//!   regions, enums, names, ids, page tokens, tenants, regions, tokens,
//!   channels, missing fields, oversized messages, missing credentials) sent
//!   to a running coordinator over TLS: each is answered with the right gRPC
//!   code and a message that names the field, and afterwards the store is
//!   exactly as before (tenants, regions, monitors, channels, agent tokens);
//! - malformed configuration files stop both daemons with exit status 2 and a
//!   message naming the key, before they touch anything.
//!
//! Proto3 cannot tell a zero from an unset field, so `port = 0` is refused
//! while `interval_ms = 0` and `timeout_ms = 0` mean "the default" (as
//! admin.proto documents); "negative" values are what a client with signed
//! integers puts on the wire for -1 (all ones in the unsigned field).

mod support;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::process::Command;

use portwatch_e2e::Admin;
use portwatch_proto::v1;
use support::*;
use tonic::{Code, Status};

type Call = Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>;

/// One malformed request: what it is, the call, the code and the field the
/// message must start with (or contain, for transport-level refusals).
struct Case {
    what: String,
    call: Call,
    code: Code,
    field: &'static str,
}

fn case(what: impl Into<String>, code: Code, field: &'static str, call: Call) -> Case {
    Case {
        what: what.into(),
        call,
        code,
        field,
    }
}

/// A deferred admin call that owns its client and its request.
macro_rules! call {
    ($client:expr, $method:ident, $request:expr) => {{
        let mut client = $client;
        let request = $request;
        Box::pin(async move { client.$method(request).await.map(drop) }) as Call
    }};
}

fn good_monitor() -> v1::CreateMonitorRequest {
    v1::CreateMonitorRequest {
        name: "orders db".into(),
        host: "db.example.com".into(),
        port: 5432,
        regions: vec!["r0".into(), "r1".into()],
        interval_ms: 60_000,
        timeout_ms: 1_000,
        ..Default::default()
    }
}

/// Everything an operator can list, to compare before and after.
#[derive(Debug, PartialEq)]
struct Snapshot {
    tenants: Vec<v1::Tenant>,
    regions: Vec<v1::Region>,
    monitors: Vec<v1::Monitor>,
    channels: Vec<v1::Channel>,
    operator_channels: Vec<v1::Channel>,
    agent_tokens: Vec<v1::AgentToken>,
}

async fn snapshot(op: &Admin) -> Snapshot {
    let mut op = op.clone();
    Snapshot {
        tenants: op
            .list_tenants(v1::ListTenantsRequest {})
            .await
            .expect("list tenants")
            .into_inner()
            .tenants,
        regions: op
            .list_regions(v1::ListRegionsRequest {})
            .await
            .expect("list regions")
            .into_inner()
            .regions,
        monitors: op
            .list_monitors(v1::ListMonitorsRequest {
                tenant_id: TENANT.into(),
                page_size: 1000,
                ..Default::default()
            })
            .await
            .expect("list monitors")
            .into_inner()
            .monitors,
        channels: op
            .list_channels(v1::ListChannelsRequest {
                tenant_id: TENANT.into(),
            })
            .await
            .expect("list channels")
            .into_inner()
            .channels,
        operator_channels: op
            .list_channels(v1::ListChannelsRequest::default())
            .await
            .expect("list operator channels")
            .into_inner()
            .channels,
        agent_tokens: op
            .list_agent_tokens(v1::ListAgentTokensRequest::default())
            .await
            .expect("list agent tokens")
            .into_inner()
            .tokens,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_admin_requests_name_the_field_get_the_right_code_and_change_nothing() {
    let mut w = World::start(2, "").await;
    // Something to refer to: one good monitor and one channel.
    let existing = create_monitor(&mut w.tenant, good_monitor()).await;
    create_channel(
        &mut w.tenant,
        webhook_channel("hooks", "https://hooks.example.com/x".into(), true),
    )
    .await;
    let before = snapshot(&w.op).await;
    assert_eq!(before.monitors.len(), 1);

    let t = || w.tenant.clone();
    let op = || w.op.clone();
    let m = |edit: &dyn Fn(&mut v1::CreateMonitorRequest)| {
        let mut r = good_monitor();
        edit(&mut r);
        r
    };
    let id = existing.id.clone();
    let upd = |edit: &dyn Fn(&mut v1::UpdateMonitorRequest)| {
        let mut r = v1::UpdateMonitorRequest {
            id: id.clone(),
            ..Default::default()
        };
        edit(&mut r);
        r
    };
    let anonymous = {
        let channel = w.coord.channel().await;
        v1::admin_service_client::AdminServiceClient::new(channel)
    };
    let forged = w.coord.admin("pwt_not-a-real-token-0000000000").await;

    let mut cases: Vec<Case> = Vec::new();
    // -------- CreateMonitor: ports
    for (what, port) in [
        ("port 0", 0u32),
        ("port 65536", 65_536),
        ("port -1", u32::MAX),
        ("port 100000", 100_000),
    ] {
        let req = m(&|r| r.port = port);
        cases.push(case(
            what,
            Code::InvalidArgument,
            "port",
            call!(t(), create_monitor, req),
        ));
    }
    // -------- CreateMonitor: hosts
    let long_label = format!("{}.example.com", "a".repeat(64));
    for (what, host) in [
        ("empty host", String::new()),
        (
            "host of 254 characters",
            format!("{}.com", "a.".repeat(125)),
        ),
        ("host label of 64 characters", long_label),
        ("host of 2000 characters", "a".repeat(2000)),
        ("host of 100000 characters", "b".repeat(100_000)),
        ("host with a newline", "db\n.example.com".into()),
        ("host with a NUL", "db\0.example.com".into()),
        ("host with a tab", "db\t.example.com".into()),
        ("host with DEL", "db\u{7f}.example.com".into()),
        ("host with a space", "db .example.com".into()),
        ("host with a leading space", " db.example.com".into()),
        ("wildcard host", "*.example.com".into()),
        ("wildcard in the middle", "db.*.example.com".into()),
        ("host with a port", "db.example.com:5432".into()),
        ("URL as host", "http://db.example.com".into()),
        ("host with a slash", "db.example.com/x".into()),
        ("empty label", "db..example.com".into()),
        ("leading dot", ".example.com".into()),
        ("label ending in '-'", "db-.example.com".into()),
        (
            "non-ASCII full-width solidus",
            "db\u{ff0f}x.example.com".into(),
        ),
        (
            "non-ASCII leading combining mark",
            "\u{301}db.example.com".into(),
        ),
        ("non-ASCII noncharacter", "db\u{ffff}.example.com".into()),
        ("numeric-looking name", "127.1".into()),
        ("invalid IPv4", "999.1.1.1".into()),
        ("unclosed IPv6 bracket", "[2606:4700::1111".into()),
        ("IPv6 with a zone id", "fe80::1%eth0".into()),
    ] {
        let req = m(&|r| r.host = host.clone());
        cases.push(case(
            what,
            Code::InvalidArgument,
            "host",
            call!(t(), create_monitor, req),
        ));
    }
    // -------- CreateMonitor: intervals and timeouts
    for (what, interval) in [
        ("interval 1 ms", 1u64),
        ("interval 999 ms", 999),
        ("interval -1", u64::MAX),
        ("interval over 24 h", 86_400_001),
    ] {
        let req = m(&|r| r.interval_ms = interval);
        cases.push(case(
            what,
            Code::InvalidArgument,
            "interval_ms",
            call!(t(), create_monitor, req),
        ));
    }
    for (what, timeout, interval) in [
        ("timeout 1 ms", 1u32, 60_000u64),
        ("timeout 999 ms", 999, 60_000),
        ("timeout -1", u32::MAX, 60_000),
        ("timeout 10001 ms", 10_001, 60_000),
        ("timeout longer than the interval", 5_000, 2_000),
    ] {
        let req = m(&|r| {
            r.timeout_ms = timeout;
            r.interval_ms = interval;
        });
        cases.push(case(
            what,
            Code::InvalidArgument,
            "timeout_ms",
            call!(t(), create_monitor, req),
        ));
    }
    // -------- CreateMonitor: regions
    for (what, regions) in [
        ("no regions", vec![]),
        ("unknown region", vec!["mars".to_string()]),
        ("duplicate region", vec!["r0".into(), "r0".into()]),
        ("empty region name", vec![String::new()]),
        ("region name with bad characters", vec!["R0!".into()]),
        (
            "21 regions",
            (0..21).map(|i| format!("x{i}")).collect::<Vec<_>>(),
        ),
        (
            "10000 regions (an oversized list)",
            (0..10_000).map(|i| format!("x{i}")).collect::<Vec<_>>(),
        ),
    ] {
        let req = m(&|r| r.regions = regions.clone());
        cases.push(case(
            what,
            Code::InvalidArgument,
            "regions",
            call!(t(), create_monitor, req),
        ));
    }
    // -------- CreateMonitor: enums, names, channels, ownership
    cases.push(case(
        "unknown family",
        Code::InvalidArgument,
        "family",
        call!(t(), create_monitor, m(&|r| r.family = 9)),
    ));
    cases.push(case(
        "IPv4 literal with family ipv6",
        Code::InvalidArgument,
        "family",
        call!(
            t(),
            create_monitor,
            m(&|r| {
                r.host = "10.0.0.1".into();
                r.family = v1::IpFamily::Ipv6 as i32;
            })
        ),
    ));
    cases.push(case(
        "unknown address policy",
        Code::InvalidArgument,
        "address_policy",
        call!(t(), create_monitor, m(&|r| r.address_policy = 7)),
    ));
    cases.push(case(
        "unknown close mode",
        Code::InvalidArgument,
        "close_mode",
        call!(t(), create_monitor, m(&|r| r.close_mode = -3)),
    ));
    cases.push(case(
        "unknown consensus policy",
        Code::InvalidArgument,
        "consensus",
        call!(t(), create_monitor, m(&|r| r.consensus = 9)),
    ));
    cases.push(case(
        "name of 201 characters",
        Code::InvalidArgument,
        "name",
        call!(t(), create_monitor, m(&|r| r.name = "n".repeat(201))),
    ));
    cases.push(case(
        "name with a control character",
        Code::InvalidArgument,
        "name",
        call!(
            t(),
            create_monitor,
            m(&|r| r.name = "orders\u{1b}[31m db".into())
        ),
    ));
    cases.push(case(
        "unknown channel",
        Code::InvalidArgument,
        "channel_ids",
        call!(
            t(),
            create_monitor,
            m(&|r| r.channel_ids = vec!["ch-nope".into()])
        ),
    ));
    cases.push(case(
        "empty channel id",
        Code::InvalidArgument,
        "channel_ids",
        call!(
            t(),
            create_monitor,
            m(&|r| r.channel_ids = vec![String::new()])
        ),
    ));
    cases.push(case(
        "100000 channel ids (an oversized list)",
        Code::InvalidArgument,
        "channel_ids",
        call!(
            t(),
            create_monitor,
            m(&|r| r.channel_ids = (0..100_000).map(|i| format!("ch-{i}")).collect())
        ),
    ));
    cases.push(case(
        "a tenant naming another tenant",
        Code::NotFound,
        "tenant_id",
        call!(t(), create_monitor, m(&|r| r.tenant_id = "bravo".into())),
    ));
    cases.push(case(
        "the operator without a tenant",
        Code::InvalidArgument,
        "tenant_id",
        call!(op(), create_monitor, m(&|_| {})),
    ));
    cases.push(case(
        "the operator naming a malformed tenant",
        Code::InvalidArgument,
        "tenant_id",
        call!(op(), create_monitor, m(&|r| r.tenant_id = "Acme!".into())),
    ));
    // Refused by the transport before any field is read, so the message names
    // the size, not a field. gRPC's status code guide says RESOURCE_EXHAUSTED;
    // tonic answers OUT_OF_RANGE: either is accepted here.
    cases.push(case(
        "a message over the 4 MB limit",
        Code::ResourceExhausted,
        "message length too large",
        call!(t(), create_monitor, m(&|r| r.name = "x".repeat(5 << 20))),
    ));
    // -------- UpdateMonitor, Get, Delete
    cases.push(case(
        "update without an id",
        Code::InvalidArgument,
        "id",
        call!(t(), update_monitor, upd(&|r| r.id.clear())),
    ));
    cases.push(case(
        "update of an unknown monitor",
        Code::NotFound,
        "id",
        call!(
            t(),
            update_monitor,
            upd(&|r| r.id = "mon-0000000000000000000".into())
        ),
    ));
    cases.push(case(
        "update with port 0",
        Code::InvalidArgument,
        "port",
        call!(t(), update_monitor, upd(&|r| r.port = Some(0))),
    ));
    cases.push(case(
        "update with an empty host",
        Code::InvalidArgument,
        "host",
        call!(t(), update_monitor, upd(&|r| r.host = Some(String::new()))),
    ));
    cases.push(case(
        "update with interval -1",
        Code::InvalidArgument,
        "interval_ms",
        call!(
            t(),
            update_monitor,
            upd(&|r| r.interval_ms = Some(u64::MAX))
        ),
    ));
    cases.push(case(
        "update with timeout 20000 ms",
        Code::InvalidArgument,
        "timeout_ms",
        call!(t(), update_monitor, upd(&|r| r.timeout_ms = Some(20_000))),
    ));
    cases.push(case(
        "update to no regions",
        Code::InvalidArgument,
        "regions",
        call!(
            t(),
            update_monitor,
            upd(&|r| {
                r.set_regions = true;
                r.regions.clear();
            })
        ),
    ));
    cases.push(case(
        "get with an id of 129 characters",
        Code::InvalidArgument,
        "id",
        call!(
            t(),
            get_monitor,
            v1::GetMonitorRequest {
                id: "m".repeat(129),
                ..Default::default()
            }
        ),
    ));
    cases.push(case(
        "delete with whitespace in the id",
        Code::InvalidArgument,
        "id",
        call!(
            t(),
            delete_monitor,
            v1::DeleteMonitorRequest {
                id: "mon 1".into(),
                ..Default::default()
            }
        ),
    ));
    // -------- listings
    cases.push(case(
        "page size 5000",
        Code::InvalidArgument,
        "page_size",
        call!(
            t(),
            list_monitors,
            v1::ListMonitorsRequest {
                page_size: 5000,
                ..Default::default()
            }
        ),
    ));
    cases.push(case(
        "results window backwards",
        Code::InvalidArgument,
        "since",
        call!(
            t(),
            list_results,
            v1::ListResultsRequest {
                monitor_id: existing.id.clone(),
                since: Some(prost_types::Timestamp {
                    seconds: 2_000_000_000,
                    nanos: 0,
                }),
                until: Some(prost_types::Timestamp {
                    seconds: 1_000_000_000,
                    nanos: 0,
                }),
                ..Default::default()
            }
        ),
    ));
    cases.push(case(
        "a forged results page token",
        Code::InvalidArgument,
        "page_token",
        call!(
            t(),
            list_results,
            v1::ListResultsRequest {
                monitor_id: existing.id.clone(),
                page_token: "zz-not-hex".into(),
                ..Default::default()
            }
        ),
    ));
    cases.push(case(
        "results without a monitor",
        Code::InvalidArgument,
        "monitor_id",
        call!(t(), list_results, v1::ListResultsRequest::default()),
    ));
    cases.push(case(
        "incidents of a monitor id of 200 characters",
        Code::InvalidArgument,
        "monitor_id",
        call!(
            t(),
            list_incidents,
            v1::ListIncidentsRequest {
                monitor_id: "m".repeat(200),
                ..Default::default()
            }
        ),
    ));
    // -------- tenants (operator)
    for (what, req, code, field) in [
        (
            "tenant id with capitals and '!'",
            v1::CreateTenantRequest {
                id: "Bad!".into(),
                name: "Bad".into(),
                plan: 2,
            },
            Code::InvalidArgument,
            "id",
        ),
        (
            "tenant without a name",
            v1::CreateTenantRequest {
                id: "noname".into(),
                name: String::new(),
                plan: 2,
            },
            Code::InvalidArgument,
            "name",
        ),
        (
            "tenant name of 101 characters",
            v1::CreateTenantRequest {
                id: "longname".into(),
                name: "n".repeat(101),
                plan: 2,
            },
            Code::InvalidArgument,
            "name",
        ),
        (
            "tenant without a plan",
            v1::CreateTenantRequest {
                id: "noplan".into(),
                name: "No plan".into(),
                plan: 0,
            },
            Code::InvalidArgument,
            "plan",
        ),
        (
            "tenant with plan 99",
            v1::CreateTenantRequest {
                id: "badplan".into(),
                name: "Bad plan".into(),
                plan: 99,
            },
            Code::InvalidArgument,
            "plan",
        ),
        (
            "tenant that exists",
            v1::CreateTenantRequest {
                id: TENANT.into(),
                name: "again".into(),
                plan: 2,
            },
            Code::AlreadyExists,
            "id",
        ),
    ] {
        cases.push(case(what, code, field, call!(op(), create_tenant, req)));
    }
    cases.push(case(
        "plan 0 for a tenant",
        Code::InvalidArgument,
        "plan",
        call!(
            op(),
            set_tenant_plan,
            v1::SetTenantPlanRequest {
                tenant_id: TENANT.into(),
                plan: 0,
            }
        ),
    ));
    // -------- regions and agent tokens (operator)
    for (what, req, code, field) in [
        (
            "region name with a space",
            v1::CreateRegionRequest {
                name: "eu west".into(),
                ..Default::default()
            },
            Code::InvalidArgument,
            "name",
        ),
        (
            "region name of 64 characters",
            v1::CreateRegionRequest {
                name: "r".repeat(64),
                ..Default::default()
            },
            Code::InvalidArgument,
            "name",
        ),
        (
            "region owned by an unknown tenant",
            v1::CreateRegionRequest {
                name: "dc1".into(),
                owner_tenant_id: "nobody".into(),
                ..Default::default()
            },
            Code::NotFound,
            "owner_tenant_id",
        ),
        (
            "region description with a control character",
            v1::CreateRegionRequest {
                name: "dc2".into(),
                description: "line\rbreak".into(),
                ..Default::default()
            },
            Code::InvalidArgument,
            "description",
        ),
        (
            "region that exists",
            v1::CreateRegionRequest {
                name: "r0".into(),
                ..Default::default()
            },
            Code::AlreadyExists,
            "name",
        ),
    ] {
        cases.push(case(what, code, field, call!(op(), create_region, req)));
    }
    cases.push(case(
        "delete a region still in use",
        Code::FailedPrecondition,
        "name",
        call!(
            op(),
            delete_region,
            v1::DeleteRegionRequest { name: "r0".into() }
        ),
    ));
    cases.push(case(
        "agent token for an unknown region",
        Code::NotFound,
        "region",
        call!(
            op(),
            create_agent_token,
            v1::CreateAgentTokenRequest {
                region: "mars".into(),
                description: String::new(),
            }
        ),
    ));
    cases.push(case(
        "agent token without a region",
        Code::InvalidArgument,
        "region",
        call!(
            op(),
            create_agent_token,
            v1::CreateAgentTokenRequest::default()
        ),
    ));
    cases.push(case(
        "revoke a token id with a newline",
        Code::InvalidArgument,
        "token_id",
        call!(
            op(),
            revoke_agent_token,
            v1::RevokeTokenRequest {
                token_id: "tok\n1".into(),
            }
        ),
    ));
    // -------- channels
    let ch = |c: Option<v1::Channel>| v1::CreateChannelRequest {
        tenant_id: String::new(),
        channel: c,
    };
    cases.push(case(
        "channel missing",
        Code::InvalidArgument,
        "channel",
        call!(t(), create_channel, ch(None)),
    ));
    cases.push(case(
        "channel without a config",
        Code::InvalidArgument,
        "channel.config",
        call!(
            t(),
            create_channel,
            ch(Some(v1::Channel {
                name: "nothing".into(),
                ..Default::default()
            }))
        ),
    ));
    cases.push(case(
        "webhook with an ftp URL",
        Code::InvalidArgument,
        "channel.webhook.url",
        call!(
            t(),
            create_channel,
            ch(Some(webhook_channel(
                "ftp",
                "ftp://example.com/x".into(),
                false,
            )))
        ),
    ));
    cases.push(case(
        "webhook to loopback (tenant, production default)",
        Code::InvalidArgument,
        "channel.webhook.url",
        call!(
            t(),
            create_channel,
            ch(Some(webhook_channel(
                "loop",
                "http://127.0.0.1:9/x".into(),
                false,
            )))
        ),
    ));
    cases.push(case(
        "webhook with a short secret",
        Code::InvalidArgument,
        "channel.webhook.secret",
        call!(
            t(),
            create_channel,
            ch(Some(v1::Channel {
                config: Some(v1::channel::Config::Webhook(v1::WebhookConfig {
                    url: "https://hooks.example.com/x".into(),
                    secret: "short".into(),
                })),
                ..Default::default()
            }))
        ),
    ));
    cases.push(case(
        "email without recipients",
        Code::InvalidArgument,
        "channel.email.to",
        call!(
            t(),
            create_channel,
            ch(Some(v1::Channel {
                config: Some(v1::channel::Config::Email(v1::EmailConfig {
                    smtp_host: "smtp.example.com".into(),
                    username: "u".into(),
                    password: "p".into(),
                    from: "alerts@example.com".into(),
                    ..Default::default()
                })),
                ..Default::default()
            }))
        ),
    ));
    // -------- credentials and permissions
    cases.push(case(
        "no token",
        Code::Unauthenticated,
        "authorization",
        call!(
            anonymous.clone(),
            list_monitors,
            v1::ListMonitorsRequest::default()
        ),
    ));
    cases.push(case(
        "unknown token",
        Code::Unauthenticated,
        "authorization",
        call!(
            forged.clone(),
            list_monitors,
            v1::ListMonitorsRequest::default()
        ),
    ));
    cases.push(case(
        "a tenant creating a tenant",
        Code::PermissionDenied,
        "",
        call!(
            t(),
            create_tenant,
            v1::CreateTenantRequest {
                id: "mine".into(),
                name: "Mine".into(),
                plan: 4,
            }
        ),
    ));
    cases.push(case(
        "a tenant creating a region",
        Code::PermissionDenied,
        "",
        call!(
            t(),
            create_region,
            v1::CreateRegionRequest {
                name: "mine".into(),
                ..Default::default()
            }
        ),
    ));

    let total = cases.len();
    let mut wrong = Vec::new();
    let mut table = Vec::new();
    for c in cases {
        match c.call.await {
            Ok(()) => wrong.push(format!("{}: accepted", c.what)),
            Err(e) => {
                let transport = c.code == Code::ResourceExhausted;
                let named = if c.field.is_empty() {
                    true
                } else if transport {
                    e.message().contains(c.field)
                } else {
                    e.message().starts_with(&format!("{}: ", c.field))
                };
                let code_ok = e.code() == c.code || (transport && e.code() == Code::OutOfRange);
                table.push(format!("{:?} {}", e.code(), e.message()));
                if !code_ok || !named {
                    wrong.push(format!(
                        "{}: want {:?} naming {:?}, got {:?} {:?}",
                        c.what,
                        c.code,
                        c.field,
                        e.code(),
                        e.message()
                    ));
                }
            }
        }
    }
    assert!(total >= 40, "only {total} malformed requests");
    assert!(
        wrong.is_empty(),
        "{} of {total} malformed requests were not refused as they should be:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    println!(
        "{total} malformed admin requests refused:\n{}",
        table.join("\n")
    );

    let after = snapshot(&w.op).await;
    assert!(
        after == before,
        "a refused request changed the store:\nbefore {before:#?}\nafter {after:#?}"
    );
    // The coordinator is still serving.
    let s = status(&w.tenant, &existing.id).await;
    assert_eq!(s.monitor.map(|m| m.generation), Some(existing.generation));
}

// ---------------------------------------------------------------- config files

/// Runs `cmd --config <file with text>`; returns (exit code, stderr).
fn run_with_config(
    bin: &Path,
    args: &[&str],
    dir: &Path,
    i: usize,
    text: &str,
) -> (Option<i32>, String) {
    let path = dir.join(format!("config-{i}.toml"));
    std::fs::write(&path, text).expect("write the config");
    let out = Command::new(bin)
        .args(args)
        .arg("--config")
        .arg(&path)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the daemon");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn malformed_config_files_stop_both_daemons_with_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path().display().to_string();
    let ok_coord = format!(
        "data_dir = \"{d}/data\"\noperator_token = \"0123456789abcdefghij\"\ninsecure_plaintext = true\nlisten = \"127.0.0.1:0\"\n"
    );
    let coordinator: Vec<(String, &str)> = vec![
        ("listen = \"not an address\"\n".into(), "listen"),
        (
            "operator_token = \"0123456789abcdefghij\"\ninsecure_plaintext = true\n".into(),
            "config: data_dir",
        ),
        (
            format!("data_dir = \"{d}/data\"\ninsecure_plaintext = true\n"),
            "config: operator_token",
        ),
        (
            format!(
                "data_dir = \"{d}/data\"\noperator_token = \"short\"\ninsecure_plaintext = true\n"
            ),
            "config: operator_token",
        ),
        (
            format!("data_dir = \"{d}/data\"\noperator_token = \"0123456789abcdefghij\"\n"),
            "config: tls_cert",
        ),
        (
            format!("{ok_coord}tls_cert = \"{d}/cert.pem\"\n"),
            "config: tls_key",
        ),
        (
            format!(
                "data_dir = \"{d}/data\"\noperator_token = \"0123456789abcdefghij\"\ninsecure_plaintext = true\nlisten = \"0.0.0.0:7400\"\n"
            ),
            "config: insecure_plaintext",
        ),
        (
            format!("{ok_coord}retention = \"forever\"\n"),
            "config: retention",
        ),
        (
            format!("{ok_coord}retention = \"1s\"\n"),
            "config: retention",
        ),
        (
            format!("{ok_coord}heartbeat_interval = \"0s\"\n"),
            "config: heartbeat_interval",
        ),
        (
            format!("{ok_coord}heartbeat_interval = \"5s\"\nheartbeat_timeout = \"5s\"\n"),
            "config: heartbeat_timeout",
        ),
        (
            format!("{ok_coord}evaluate_every = \"1h\"\n"),
            "config: evaluate_every",
        ),
        (
            format!("{ok_coord}offline_grace = \"-1s\"\n"),
            "config: offline_grace",
        ),
        (
            format!("{ok_coord}region_offline_grace = \"soon\"\n"),
            "config: region_offline_grace",
        ),
        (
            format!("{ok_coord}delivery_retry_initial = \"1m\"\ndelivery_retry_max = \"1s\"\n"),
            "config: delivery_retry_max",
        ),
        (
            format!("{ok_coord}delivery_timeout = \"0s\"\n"),
            "config: delivery_timeout",
        ),
        (
            format!("{ok_coord}log_format = \"xml\"\n"),
            "config: log_format",
        ),
        (format!("{ok_coord}surprise = 1\n"), "surprise"),
        (
            format!("{ok_coord}heartbeat_interval = 5\n"),
            "heartbeat_interval",
        ),
        (
            format!("{ok_coord}[plans.basic]\nport_monitors = \"yes\"\n"),
            "port_monitors",
        ),
        (format!("{ok_coord}listen = \n"), "config"),
    ];
    let ok_agent = format!(
        "coordinator = \"https://127.0.0.1:7400\"\nca = \"{d}/ca.pem\"\ntoken = \"pwa_token\"\ndata_dir = \"{d}/spool\"\n"
    );
    let agent: Vec<(String, &str)> = vec![
        (
            format!("token = \"pwa_token\"\ndata_dir = \"{d}/spool\"\n"),
            "config: coordinator",
        ),
        (
            ok_agent.replace("https://127.0.0.1:7400", "ftp://127.0.0.1:7400"),
            "config: coordinator",
        ),
        (
            ok_agent.replace("https://127.0.0.1:7400", "not a url"),
            "config: coordinator",
        ),
        (
            ok_agent.replace("https://", "http://"),
            "config: coordinator",
        ),
        (
            format!(
                "{}insecure_plaintext = true\n",
                ok_agent.replace("https://127.0.0.1", "http://10.1.2.3")
            ),
            "config: insecure_plaintext",
        ),
        (
            ok_agent.replace(&format!("ca = \"{d}/ca.pem\"\n"), ""),
            "config: ca",
        ),
        (
            ok_agent.replace("token = \"pwa_token\"\n", ""),
            "config: token",
        ),
        (ok_agent.replace("pwa_token", "pwa token"), "config: token"),
        (
            ok_agent.replace(
                "token = \"pwa_token\"\n",
                &format!("token_file = \"{d}/missing-token\"\n"),
            ),
            "config: token_file",
        ),
        (
            ok_agent.replace(&format!("data_dir = \"{d}/spool\"\n"), ""),
            "config: data_dir",
        ),
        (
            format!("{ok_agent}client_cert = \"{d}/client.pem\"\n"),
            "config: client_key",
        ),
        (
            format!("{ok_agent}max_in_flight = 0\n"),
            "config: max_in_flight",
        ),
        (format!("{ok_agent}spool_max = 10\n"), "config: spool_max"),
        (format!("{ok_agent}batch_size = 0\n"), "config: batch_size"),
        (
            format!("{ok_agent}batch_wait = \"forever\"\n"),
            "config: batch_wait",
        ),
        (
            format!("{ok_agent}batch_wait = \"1h\"\n"),
            "config: batch_wait",
        ),
        (
            format!("{ok_agent}private_allow = [\"10.0.0.0/33\"]\n"),
            "config: private_allow",
        ),
        (
            format!("{ok_agent}nameservers = [\"not-an-ip\"]\n"),
            "config: nameservers",
        ),
        (
            format!("{ok_agent}close_mode = \"maybe\"\n"),
            "config: close_mode",
        ),
        (
            format!("{ok_agent}log_format = \"xml\"\n"),
            "config: log_format",
        ),
        (format!("{ok_agent}surprise = true\n"), "surprise"),
        (format!("{ok_agent}spool_max = \"lots\"\n"), "spool_max"),
        (
            format!("{ok_agent}metrics_listen = \"everywhere\"\n"),
            "metrics_listen",
        ),
        (
            format!("{ok_agent}source_address = \"nope\"\n"),
            "source_address",
        ),
        (format!("{ok_agent}[broken\n"), "config"),
    ];

    let coordinator_bin = coordinator_bin();
    let agent_bin = agent_bin();
    let mut wrong = Vec::new();
    let mut i = 0;
    for (bin, args, table) in [
        (&coordinator_bin, &[][..], &coordinator),
        (&agent_bin, &["run"][..], &agent),
    ] {
        for (text, key) in table {
            i += 1;
            let (code, stderr) = run_with_config(bin, args, dir.path(), i, text);
            // One prefix: "config: KEY: …" or "config file PATH: …", never "config: config: …".
            if code != Some(2) || !stderr.contains(key) || stderr.contains("config: config:") {
                wrong.push(format!(
                    "{} with\n{text}→ exit {code:?}, want 2 and a message naming {key:?}; stderr:\n{stderr}",
                    bin.file_name().unwrap_or_default().to_string_lossy()
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} malformed config file(s) not refused as they should be:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // Nothing was created by a refused start.
    assert!(
        !dir.path().join("data").exists(),
        "the coordinator touched its data dir"
    );
    assert!(
        !dir.path().join("spool").exists(),
        "the agent touched its spool"
    );

    // A missing certificate file is not a malformed file but stops the start too,
    // naming the key.
    let (code, stderr) = run_with_config(
        &coordinator_bin,
        &[],
        dir.path(),
        999,
        &format!(
            "data_dir = \"{d}/data2\"\noperator_token = \"0123456789abcdefghij\"\nlisten = \"127.0.0.1:0\"\ntls_cert = \"{d}/none.pem\"\ntls_key = \"{d}/none.key\"\n"
        ),
    );
    assert!(
        code.is_some_and(|c| c != 0) && stderr.contains("tls_cert"),
        "exit {code:?}: {stderr}"
    );
}
