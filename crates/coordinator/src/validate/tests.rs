//! What the admin API refuses and how it normalises: monitors, regions, plans
//! and channels, each refusal naming the field.

use super::*;

fn region(name: &str, owner: &str) -> v1::Region {
    v1::Region {
        name: name.into(),
        owner_tenant_id: owner.into(),
        ..Default::default()
    }
}

fn regions() -> Vec<v1::Region> {
    vec![
        region("eu", ""),
        region("us", ""),
        region("ap", ""),
        region("home", "acme"),
        region("lab", "acme"),
        region("theirs", "globex"),
    ]
}

/// A fast plan, so that timeouts can collide with intervals; messages call it "pro".
fn fast() -> PlanLimits {
    PlanLimits {
        port_monitors: true,
        max_monitors: 100,
        min_interval: Duration::from_secs(2),
        min_remind_every: Duration::from_secs(60),
    }
}

fn good() -> MonitorDraft {
    MonitorDraft {
        host: "db.example.com".into(),
        port: 5432,
        regions: vec!["eu".into(), "us".into()],
        ..Default::default()
    }
}

fn check(d: &MonitorDraft) -> Result<MonitorSpec> {
    check_with(d, fast())
}

fn check_with(d: &MonitorDraft, limits: PlanLimits) -> Result<MonitorSpec> {
    let regions = regions();
    monitor(
        d,
        &Tenancy {
            tenant_id: "acme",
            plan: v1::Plan::Pro as i32,
            limits: &limits,
            regions: &regions,
        },
    )
}

/// One bad input: what it changes, and the field the error must name.
struct Bad {
    what: &'static str,
    field: &'static str,
    violation: Violation,
    edit: Box<dyn Fn(&mut MonitorDraft)>,
}

fn bad(what: &'static str, field: &'static str, edit: impl Fn(&mut MonitorDraft) + 'static) -> Bad {
    Bad {
        what,
        field,
        violation: Violation::Invalid,
        edit: Box::new(edit),
    }
}

fn limit(
    what: &'static str,
    field: &'static str,
    edit: impl Fn(&mut MonitorDraft) + 'static,
) -> Bad {
    Bad {
        what,
        field,
        violation: Violation::PlanLimit,
        edit: Box::new(edit),
    }
}

fn host(h: &'static str) -> impl Fn(&mut MonitorDraft) {
    move |d| d.host = h.into()
}

fn on(rs: &'static [&'static str]) -> impl Fn(&mut MonitorDraft) {
    move |d| d.regions = rs.iter().map(|r| r.to_string()).collect()
}

fn table() -> Vec<Bad> {
    vec![
        // name
        bad("name too long", "name", |d| d.name = "n".repeat(201)),
        bad("name with a newline", "name", |d| d.name = "a\nb".into()),
        bad("name with NUL", "name", |d| d.name = "a\u{0}b".into()),
        bad("blank name", "name", |d| d.name = "   ".into()),
        // host
        bad("empty host", "host", host("")),
        bad("host too long", "host", |d| d.host = "a".repeat(2_000)),
        bad("host of 254 chars", "host", |d| {
            d.host = format!("{}.com", vec!["a".repeat(62); 4].join("."))
        }),
        bad("host label too long", "host", |d| {
            d.host = format!("{}.com", "x".repeat(64))
        }),
        bad(
            "host with a control character",
            "host",
            host("exa\u{7f}mple.com"),
        ),
        bad("host with whitespace", "host", host(" example.com")),
        bad("wildcard host", "host", host("*.example.com")),
        bad("invalid IDNA", "host", host("xn--zz.com")),
        bad("invalid character", "host", host("exa/mple.com")),
        bad("url as host", "host", host("http://example.com")),
        bad("host with port", "host", host("example.com:443")),
        bad("numeric non-IP", "host", host("127.1")),
        bad("IPv6 zone id", "host", host("fe80::1%eth0")),
        bad("unclosed bracket", "host", host("[::1")),
        bad("empty label", "host", host("a..b")),
        // port
        bad("port 0", "port", |d| d.port = 0),
        bad("port 65536", "port", |d| d.port = 65_536),
        bad("port u32::MAX", "port", |d| d.port = u32::MAX),
        // regions
        bad("no regions", "regions", on(&[])),
        bad("unknown region", "regions", on(&["eu", "mars"])),
        bad("duplicate region", "regions", on(&["eu", "us", "eu"])),
        bad(
            "another tenant's private region",
            "regions",
            on(&["theirs"]),
        ),
        bad("upper-case region", "regions", on(&["EU"])),
        bad("too many regions", "regions", |d| {
            d.regions = (0..21).map(|i| format!("r{i}")).collect()
        }),
        // interval
        bad("interval below 1 s", "interval_ms", |d| d.interval_ms = 999),
        bad("interval 1 ms", "interval_ms", |d| d.interval_ms = 1),
        bad("interval above 24 h", "interval_ms", |d| {
            d.interval_ms = 86_400_001
        }),
        bad("interval u64::MAX", "interval_ms", |d| {
            d.interval_ms = u64::MAX
        }),
        limit("interval below the plan", "interval_ms", |d| {
            d.interval_ms = 1_000
        }),
        limit("interval just below the plan", "interval_ms", |d| {
            d.interval_ms = 1_999
        }),
        // timeout
        bad("timeout below 1 s", "timeout_ms", |d| d.timeout_ms = 999),
        bad("timeout above 10 s", "timeout_ms", |d| {
            d.timeout_ms = 10_001
        }),
        bad("timeout u32::MAX", "timeout_ms", |d| {
            d.timeout_ms = u32::MAX
        }),
        bad("timeout just over the interval", "timeout_ms", |d| {
            d.interval_ms = 5_000;
            d.timeout_ms = 5_001;
        }),
        bad("timeout longer than the interval", "timeout_ms", |d| {
            d.interval_ms = 2_000;
            d.timeout_ms = 3_000;
        }),
        bad(
            "default timeout longer than the interval",
            "timeout_ms",
            |d| {
                d.interval_ms = 2_000;
            },
        ),
        // enums
        bad("unknown consensus", "consensus", |d| d.consensus = 9),
        bad("negative consensus", "consensus", |d| d.consensus = -1),
        bad("unknown family", "family", |d| d.family = 4),
        bad("unknown address policy", "address_policy", |d| {
            d.address_policy = 3
        }),
        bad("unknown close mode", "close_mode", |d| d.close_mode = 7),
        // family vs literal
        bad("ipv4 family, IPv6 literal", "family", |d| {
            d.host = "2606:4700::1111".into();
            d.family = v1::IpFamily::Ipv4 as i32;
        }),
        bad("ipv6 family, IPv4 literal", "family", |d| {
            d.host = "8.8.8.8".into();
            d.family = v1::IpFamily::Ipv6 as i32;
        }),
        // non-public hosts on public regions
        bad("loopback on public", "host", host("127.0.0.1")),
        bad("IPv6 loopback on public", "host", host("[::1]")),
        bad("private literal on public", "host", host("10.1.2.3")),
        bad(
            "mapped private on public",
            "host",
            host("::ffff:192.168.1.1"),
        ),
        bad("localhost on public", "host", host("localhost")),
        bad("mDNS name on public", "host", host("printer.local")),
        bad("private literal on public and private", "host", |d| {
            d.host = "192.168.1.10".into();
            d.regions = vec!["home".into(), "eu".into()];
        }),
        // channels
        bad("empty channel id", "channel_ids", |d| {
            d.channel_ids = vec!["".into()]
        }),
        bad("duplicate channel", "channel_ids", |d| {
            d.channel_ids = vec!["c1".into(), "c1".into()]
        }),
        bad("too many channels", "channel_ids", |d| {
            d.channel_ids = (0..21).map(|i| format!("c{i}")).collect()
        }),
        bad("channel id too long", "channel_ids", |d| {
            d.channel_ids = vec!["c".repeat(129)]
        }),
        // flap detection
        bad("unknown flap detection", "flap_detection", |d| {
            d.flap_detection = 3
        }),
        bad("slowness at the timeout", "degraded_after_ms", |d| {
            d.timeout_ms = 1000;
            d.degraded_after_ms = 1000
        }),
        bad(
            "slowness on a port expected closed",
            "degraded_after_ms",
            |d| {
                d.expect_closed = true;
                d.degraded_after_ms = 100
            },
        ),
        bad("degraded_checks 101", "degraded_checks", |d| {
            d.degraded_checks = 101
        }),
        bad("recover_after 101", "recover_after", |d| {
            d.recover_after = 101
        }),
        bad("reminders faster than the checks", "remind_every_ms", |d| {
            d.interval_ms = 120_000;
            d.remind_every_ms = 90_000;
        }),
        bad("reminders longer than a week", "remind_every_ms", |d| {
            d.remind_every_ms = 8 * 24 * 3_600_000
        }),
        limit(
            "reminders below the plan's period",
            "remind_every_ms",
            |d| {
                d.interval_ms = 10_000;
                d.remind_every_ms = 30_000
            },
        ),
        bad("remind_max 101", "remind_max", |d| d.remind_max = 101),
        bad("flap threshold 1", "flap_threshold", |d| {
            d.flap_threshold = 1
        }),
        bad("flap threshold 101", "flap_threshold", |d| {
            d.flap_threshold = 101
        }),
        bad("flap threshold u32::MAX", "flap_threshold", |d| {
            d.flap_threshold = u32::MAX
        }),
        bad(
            "flap window shorter than the interval",
            "flap_window_ms",
            |d| d.flap_window_ms = 59_999,
        ),
        bad("flap window of 1 ms", "flap_window_ms", |d| {
            d.flap_window_ms = 1
        }),
        bad("flap window over 30 days", "flap_window_ms", |d| {
            d.flap_window_ms = 30 * 86_400_000 + 1
        }),
        bad(
            "flap stability shorter than the interval",
            "flap_stable_for_ms",
            |d| {
                d.interval_ms = 10_000;
                d.flap_stable_for_ms = 9_000;
            },
        ),
        bad("flap stability u64::MAX", "flap_stable_for_ms", |d| {
            d.flap_stable_for_ms = u64::MAX
        }),
        bad(
            "flap settings are checked while detection is off",
            "flap_threshold",
            |d| {
                d.flap_detection = v1::FlapDetection::Off as i32;
                d.flap_threshold = 1;
            },
        ),
    ]
}

#[test]
fn flap_detection_is_on_by_default_and_keeps_zero_for_the_defaults() {
    let spec = check(&good()).unwrap();
    assert_eq!(
        spec.flap,
        FlapSpec {
            detection: v1::FlapDetection::On,
            threshold: 0,
            window_ms: 0,
            stable_for_ms: 0,
        }
    );
    let mut d = good();
    d.flap_detection = v1::FlapDetection::Off as i32;
    d.flap_threshold = 2;
    d.flap_window_ms = 60_000;
    d.flap_stable_for_ms = 30 * 86_400_000;
    let spec = check(&d).unwrap();
    let mut m = v1::Monitor::default();
    spec.write_to(&mut m);
    assert_eq!(m.flap_detection, v1::FlapDetection::Off as i32);
    assert_eq!(
        (m.flap_threshold, m.flap_window_ms, m.flap_stable_for_ms),
        (2, 60_000, 30 * 86_400_000)
    );
    assert_eq!(check(&MonitorDraft::from(&m)).unwrap(), spec);
    // An explicit window that fitted the old interval no longer fits a longer one.
    d.interval_ms = 120_000;
    let e = check(&d).unwrap_err();
    assert_eq!(
        e.to_string(),
        "flap_window_ms: 60000 ms is shorter than the interval (120 s); must be 0 (the default, 20 intervals) or from one interval to 30 days"
    );
    d.flap_threshold = 1;
    assert_eq!(
        check(&d).unwrap_err().to_string(),
        "flap_threshold: 1 is out of range; must be 0 (the default, 4) or 2-100 state changes"
    );
}

#[test]
fn bad_monitors_are_refused_naming_the_field() {
    let rows = table();
    assert!(rows.len() >= 40, "table has {} rows", rows.len());
    let mut wrong = Vec::new();
    for row in rows {
        let mut d = good();
        (row.edit)(&mut d);
        match check(&d) {
            Err(e) if e.field == row.field && e.violation == row.violation => {
                // The message starts with the field, as the API sends it.
                assert!(e.to_string().starts_with(&format!("{}: ", row.field)));
            }
            other => wrong.push(format!(
                "{}: want {} ({:?}), got {other:?}",
                row.what, row.field, row.violation
            )),
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[test]
fn good_monitors_are_normalised() {
    let spec = check(&good()).unwrap();
    assert_eq!(spec.name, "db.example.com:5432");
    assert_eq!(spec.interval, Duration::from_secs(60));
    assert_eq!(spec.timeout, Duration::from_secs(3));
    assert_eq!(spec.consensus, v1::ConsensusPolicy::Quorum);
    assert_eq!(spec.family, Family::Any);

    let mut m = v1::Monitor::default();
    spec.write_to(&mut m);
    assert_eq!(m.interval_ms, 60_000);
    assert_eq!(m.timeout_ms, 3_000);
    assert_eq!(m.consensus, v1::ConsensusPolicy::Quorum as i32);
    assert_eq!(m.family, v1::IpFamily::Any as i32);
    assert_eq!(m.address_policy, v1::AddressPolicy::Any as i32);
    assert_eq!(m.close_mode, v1::CloseMode::Fin as i32);
    // Re-checking what was stored gives the same thing back.
    assert_eq!(check(&MonitorDraft::from(&m)).unwrap(), spec);

    let mut d = good();
    d.host = "DB.Example.COM.".into();
    d.name = "primary db".into();
    d.interval_ms = 30_000;
    d.timeout_ms = 10_000;
    d.family = v1::IpFamily::Ipv6 as i32;
    d.consensus = v1::ConsensusPolicy::Unanimous as i32;
    let spec = check(&d).unwrap();
    assert_eq!(spec.host.as_str(), "db.example.com");
    assert_eq!(spec.name, "primary db");
    assert_eq!(spec.consensus, v1::ConsensusPolicy::Unanimous);

    let mut d = good();
    d.host = "[2606:4700::1111]".into();
    assert_eq!(check(&d).unwrap().name, "[2606:4700::1111]:5432");
}

#[test]
fn non_public_hosts_are_allowed_on_the_tenants_own_private_regions() {
    for h in [
        "127.0.0.1",
        "10.0.0.5",
        "localhost",
        "nas.home.arpa",
        "[::1]",
    ] {
        let mut d = good();
        d.host = h.into();
        d.regions = vec!["home".into(), "lab".into()];
        assert!(check(&d).is_ok(), "{h} on private regions: {:?}", check(&d));
    }
}

#[test]
fn messages_say_what_is_wrong() {
    let msg = |edit: &dyn Fn(&mut MonitorDraft)| {
        let mut d = good();
        edit(&mut d);
        check_with(&d, Plans::default().pro)
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        msg(&|d| d.regions = vec!["eu".into(), "eu".into()]),
        "regions: \"eu\" is listed twice"
    );
    assert_eq!(
        msg(&|d| d.regions = vec!["theirs".into()]),
        "regions: unknown region \"theirs\""
    );
    assert_eq!(
        msg(&|d| d.regions = vec!["nowhere".into()]),
        "regions: unknown region \"nowhere\""
    );
    assert_eq!(
        msg(&|d| d.interval_ms = 1_000),
        "interval_ms: 1000 ms is below the pro plan's minimum of 30 s"
    );
    assert_eq!(
        msg(&|d| d.host = "127.0.0.1".into()),
        "host: 127.0.0.1 is non-public (127.0.0.0/8 loopback); only a private region's self-hosted probe may check it"
    );
    assert_eq!(msg(&|d| d.host = "".into()), "host: must not be empty");
    assert_eq!(
        msg(&|d| {
            d.host = "::1".into();
            d.regions = vec!["home".into()];
            d.family = v1::IpFamily::Ipv4 as i32;
        }),
        "family: ipv4 cannot reach the IPv6 literal ::1; use ipv6 or any"
    );
    assert!(msg(&|d| d.port = 0).starts_with("port: 0 is not a TCP port"));
}

#[test]
fn the_default_interval_respects_a_slower_plan() {
    let regions = regions();
    let slow = PlanLimits {
        port_monitors: true,
        max_monitors: 5,
        min_interval: Duration::from_secs(120),
        min_remind_every: Duration::from_secs(60),
    };
    let spec = monitor(
        &good(),
        &Tenancy {
            tenant_id: "acme",
            plan: v1::Plan::Basic as i32,
            limits: &slow,
            regions: &regions,
        },
    )
    .unwrap();
    assert_eq!(spec.interval, Duration::from_secs(120));
}

#[test]
fn plans_gate_port_monitors_and_their_count() {
    let plans = Plans::default();
    let e = port_monitors_allowed(&plans, v1::Plan::Free as i32).unwrap_err();
    assert_eq!(e.violation, Violation::PlanLimit);
    assert_eq!(
        e.to_string(),
        "plan: the free plan does not include port monitors; basic or above is required"
    );
    let basic = port_monitors_allowed(&plans, v1::Plan::Basic as i32).unwrap();
    assert!(monitor_quota(v1::Plan::Basic as i32, &basic, 49).is_ok());
    let e = monitor_quota(v1::Plan::Basic as i32, &basic, 50).unwrap_err();
    assert_eq!(e.field, "plan");
    assert!(e.reason.contains("basic") && e.reason.contains("50"), "{e}");
    assert!(port_monitors_allowed(&plans, 0).is_err());
}

#[test]
fn simple_fields() {
    for ok in ["acme", "a", "eu-west-1", "t-0123abc"] {
        assert!(slug("tenant_id", ok).is_ok(), "{ok}");
    }
    let long = "a".repeat(64);
    for bad in ["", "-a", "a-", "Acme", "a_b", "a b", "ü", long.as_str()] {
        assert_eq!(
            slug("tenant_id", bad).unwrap_err().field,
            "tenant_id",
            "{bad:?}"
        );
    }
    assert!(text("name", "Acme Inc.", MAX_TENANT_NAME, true).is_ok());
    assert!(text("name", "", MAX_TENANT_NAME, true).is_err());
    assert!(text("name", "a\tb", MAX_TENANT_NAME, true).is_err());
    assert!(text("name", &"x".repeat(101), MAX_TENANT_NAME, true).is_err());
    assert!(text("name", &"ü".repeat(100), MAX_TENANT_NAME, true).is_ok());
    assert_eq!(plan(0).unwrap_err().to_string(), "plan: required");
    assert_eq!(plan(99).unwrap_err().field, "plan");
    assert_eq!(plan(2), Ok(v1::Plan::Basic));
    assert_eq!(page_size("page_size", 0), Ok(DEFAULT_PAGE_SIZE));
    assert_eq!(page_size("page_size", 1000), Ok(1000));
    assert!(page_size("page_size", 1001).is_err());
    assert!(id("id", "").is_err());
    assert!(id("id", &"x".repeat(129)).is_err());
    assert!(id("id", "mon-1").is_ok());
    assert_eq!(quote(&"q".repeat(50)), format!("\"{}\"…", "q".repeat(40)));
    assert_eq!(human_ms(30_000), "30 s");
    assert_eq!(human_ms(1_500), "1500 ms");
}

fn webhook(url: &str) -> v1::Channel {
    v1::Channel {
        name: "hook".into(),
        config: Some(v1::channel::Config::Webhook(v1::WebhookConfig {
            url: url.into(),
            secret: "0123456789abcdef".into(),
        })),
        ..Default::default()
    }
}

fn email(edit: impl Fn(&mut v1::EmailConfig)) -> v1::Channel {
    let mut e = v1::EmailConfig {
        smtp_host: "smtp.example.com".into(),
        smtp_port: 0,
        tls: 0,
        username: "ops".into(),
        password: "pw".into(),
        from: "portwatch <alerts@example.com>".into(),
        to: vec!["oncall@example.com".into()],
    };
    edit(&mut e);
    v1::Channel {
        config: Some(v1::channel::Config::Email(e)),
        ..Default::default()
    }
}

#[test]
fn channels_refuse_bad_config_naming_the_field() {
    let tenant = ChannelPolicy {
        operator: false,
        allow_private: false,
    };
    let operator = ChannelPolicy {
        operator: true,
        allow_private: false,
    };
    let slack = |url: &str| v1::Channel {
        config: Some(v1::channel::Config::Slack(v1::SlackConfig {
            webhook_url: url.into(),
        })),
        ..Default::default()
    };
    let pd = |key: &str, base: &str| v1::Channel {
        config: Some(v1::channel::Config::Pagerduty(v1::PagerDutyConfig {
            routing_key: key.into(),
            base_url: base.into(),
        })),
        ..Default::default()
    };
    let cases: Vec<(v1::Channel, &str, &str)> = vec![
        (v1::Channel::default(), "channel.config", "required"),
        (webhook("not a url"), "channel.webhook.url", "malformed URL"),
        (webhook(""), "channel.webhook.url", "required"),
        (
            webhook("https://hooks.example.com:0/x"),
            "channel.webhook.url",
            "port 0",
        ),
        (
            slack("https://hooks.slack.com:0/x"),
            "channel.slack.webhook_url",
            "port 0",
        ),
        (
            webhook("ftp://example.com/x"),
            "channel.webhook.url",
            "unknown scheme \"ftp\"",
        ),
        (
            webhook("http://127.0.0.1:8080/x"),
            "channel.webhook.url",
            "non-public",
        ),
        (
            webhook("http://[::1]/x"),
            "channel.webhook.url",
            "non-public",
        ),
        (
            webhook("http://localhost/x"),
            "channel.webhook.url",
            "non-public",
        ),
        (
            webhook("https://10.1.2.3/x"),
            "channel.webhook.url",
            "non-public",
        ),
        (
            v1::Channel {
                config: Some(v1::channel::Config::Webhook(v1::WebhookConfig {
                    url: "https://hooks.example.com/x".into(),
                    secret: "short".into(),
                })),
                ..Default::default()
            },
            "channel.webhook.secret",
            "at least 16",
        ),
        (
            slack("mailto:x@example.com"),
            "channel.slack.webhook_url",
            "unknown scheme",
        ),
        (
            email(|e| e.smtp_host.clear()),
            "channel.email.smtp_host",
            "required",
        ),
        (
            email(|e| e.smtp_host = "localhost".into()),
            "channel.email.smtp_host",
            "non-public",
        ),
        (
            email(|e| e.smtp_host = format!("{}.example.com", "a".repeat(100_000))),
            "channel.email.smtp_host",
            "characters long; at most",
        ),
        (email(|e| e.from.clear()), "channel.email.from", "required"),
        (
            email(|e| e.from = "not an address".into()),
            "channel.email.from",
            "not an email address",
        ),
        (email(|e| e.to.clear()), "channel.email.to", "at least one"),
        (
            email(|e| e.to.push("oncall@example.com".into())),
            "channel.email.to",
            "twice",
        ),
        (email(|e| e.tls = 9), "channel.email.tls", "unknown value"),
        (
            email(|e| e.tls = v1::SmtpTls::None as i32),
            "channel.email.tls",
            "plaintext",
        ),
        (
            email(|e| e.smtp_port = 70_000),
            "channel.email.smtp_port",
            "not a TCP port",
        ),
        (
            email(|e| e.username.clear()),
            "channel.email.username",
            "required",
        ),
        (
            email(|e| e.password.clear()),
            "channel.email.password",
            "required",
        ),
        (pd("", ""), "channel.pagerduty.routing_key", "required"),
        (
            pd("key", "gopher://x"),
            "channel.pagerduty.base_url",
            "unknown scheme",
        ),
        (
            v1::Channel {
                name: "a\nb".into(),
                ..webhook("https://hooks.example.com/x")
            },
            "channel.name",
            "control",
        ),
    ];
    for (c, field, needle) in cases {
        let e = channel(&c, &tenant).unwrap_err();
        assert_eq!(e.field, field, "{e}");
        assert!(e.reason.contains(needle), "{needle:?} not in {e}");
        assert_eq!(e.violation, Violation::Invalid);
    }

    // The operator may reach internal systems; tenants only when allowed.
    assert!(channel(&webhook("http://127.0.0.1:8080/x"), &operator).is_ok());
    let allowed = ChannelPolicy {
        operator: false,
        allow_private: true,
    };
    assert!(channel(&webhook("http://127.0.0.1:8080/x"), &allowed).is_ok());
    let plain_local = email(|e| {
        e.smtp_host = "127.0.0.1".into();
        e.tls = v1::SmtpTls::None as i32;
    });
    assert!(channel(&plain_local, &allowed).is_ok());
    assert!(channel(&plain_local, &tenant).is_err());
}

#[test]
fn channels_are_normalised() {
    let tenant = ChannelPolicy {
        operator: false,
        allow_private: false,
    };
    let c = channel(&email(|_| {}), &tenant).unwrap();
    let Some(v1::channel::Config::Email(e)) = &c.config else {
        panic!()
    };
    assert_eq!((e.smtp_port, e.tls), (587, v1::SmtpTls::Starttls as i32));
    assert_eq!(c.name, "email oncall@example.com");
    let c = channel(&email(|e| e.tls = v1::SmtpTls::Implicit as i32), &tenant).unwrap();
    let Some(v1::channel::Config::Email(e)) = &c.config else {
        panic!()
    };
    assert_eq!(e.smtp_port, 465);
    let mut w = webhook("https://Hooks.Example.com/x");
    w.name.clear();
    assert_eq!(
        channel(&w, &tenant).unwrap().name,
        "webhook hooks.example.com"
    );
}

#[test]
fn alerting_settings_are_kept_as_given() {
    let mut d = good();
    d.recover_after = 3;
    d.remind_every_ms = 15 * 60_000;
    d.remind_max = 4;
    let spec = check(&d).unwrap();
    assert_eq!(
        spec.alerting,
        AlertSpec {
            recover_after: 3,
            remind_every_ms: 15 * 60_000,
            remind_max: 4
        }
    );
    let mut m = v1::Monitor::default();
    spec.write_to(&mut m);
    assert_eq!(
        (m.recover_after, m.remind_every_ms, m.remind_max),
        (3, 900_000, 4)
    );
}
