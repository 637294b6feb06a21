//! Notifications end to end: the coordinator as a real process, incidents
//! driven by hand-driven agents, and real receivers on loopback (an HTTP server
//! that records requests, a small SMTP server). Each test asserts what the
//! receiving end (a webhook consumer, an inbox, PagerDuty, the operator) sees.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use hmac::{Hmac, Mac};
use portwatch_e2e::{
    Admin, FakeAgent, HttpReceiver, OPERATOR_TOKEN, Recorded, SmtpServer, SmtpTlsMode, TestCert,
    World, eventually, free_port,
};
use portwatch_proto::v1;
use serde_json::Value;
use sha2::Sha256;
use tonic::Code;

const PLANS: &str =
    "[plans.enterprise]\nport_monitors = true\nmax_monitors = 100\nmin_interval = \"1s\"\n";
/// Short retries so that tests see several attempts in a second or two.
const FAST: &str = "allow_private_channel_targets = true\ndelivery_retry_initial = \"100ms\"\ndelivery_retry_max = \"300ms\"\ndelivery_timeout = \"2s\"\n";
const SECRET: &str = "whsec-0123456789abcdef";
const WAIT: Duration = Duration::from_secs(15);

/// Three public regions, a tenant, and one agent token per region; the
/// coordinator's config has the top-level keys `extra` too.
async fn world(extra: &str) -> World {
    World::builder()
        .coordinator_bin(env!("CARGO_BIN_EXE_portwatch-coordinator"))
        .config(extra)
        .plans(PLANS)
        .public_regions(&["eu", "us", "ap"])
        .start()
        .await
}

async fn monitor(w: &mut World) -> v1::Monitor {
    w.tenant
        .create_monitor(v1::CreateMonitorRequest {
            name: "orders db".into(),
            host: "db.example.com".into(),
            port: 5432,
            regions: vec!["eu".into(), "us".into(), "ap".into()],
            interval_ms: 2000,
            timeout_ms: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

async fn create(admin: &mut Admin, tenant_id: &str, c: v1::Channel) -> v1::Channel {
    admin
        .create_channel(v1::CreateChannelRequest {
            tenant_id: tenant_id.into(),
            channel: Some(c),
        })
        .await
        .expect("create channel")
        .into_inner()
}

fn webhook(url: String, default: bool) -> v1::Channel {
    v1::Channel {
        name: "hook".into(),
        is_default: default,
        config: Some(v1::channel::Config::Webhook(v1::WebhookConfig {
            url,
            secret: SECRET.into(),
        })),
        ..Default::default()
    }
}

/// Two of three regions report refused: the incident opens. Returns it.
async fn open_incident(w: &mut World, ag: &mut [FakeAgent], m: &v1::Monitor) -> v1::Incident {
    for a in ag.iter_mut() {
        a.report_acked(&m.id, v1::Outcome::Ok).await;
    }
    for a in ag.iter_mut().take(2) {
        a.report_acked(&m.id, v1::Outcome::Refused).await;
    }
    let t = w.tenant.clone();
    eventually("the incident opens", WAIT, || {
        let mut t = t.clone();
        async move { open_incidents(&mut t).await.into_iter().next() }
    })
    .await
}

async fn open_incidents(admin: &mut Admin) -> Vec<v1::Incident> {
    admin
        .list_incidents(v1::ListIncidentsRequest {
            open_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .incidents
}

/// Every region reports ok: the incident closes.
async fn close_incident(w: &mut World, ag: &mut [FakeAgent], m: &v1::Monitor) {
    for a in ag.iter_mut() {
        a.report_acked(&m.id, v1::Outcome::Ok).await;
    }
    let t = w.tenant.clone();
    eventually("the incident closes", WAIT, || {
        let mut t = t.clone();
        async move { open_incidents(&mut t).await.is_empty().then_some(()) }
    })
    .await;
}

async fn deliveries(admin: &mut Admin, tenant_id: &str, subject: &str) -> Vec<v1::Delivery> {
    admin
        .list_deliveries(v1::ListDeliveriesRequest {
            tenant_id: tenant_id.into(),
            incident_id: subject.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .deliveries
}

/// Waits until every delivery of `subject` left PENDING; returns them.
async fn settled(admin: &Admin, tenant_id: &str, subject: &str, n: usize) -> Vec<v1::Delivery> {
    eventually("deliveries settle", WAIT, || {
        let mut a = admin.clone();
        async move {
            let ds = deliveries(&mut a, tenant_id, subject).await;
            (ds.len() == n
                && ds
                    .iter()
                    .all(|d| d.state != v1::DeliveryState::Pending as i32))
            .then_some(ds)
        }
    })
    .await
}

fn json(r: &Recorded) -> Value {
    serde_json::from_slice(&r.body).expect("a JSON body")
}

/// What a receiver does: recompute the HMAC of the raw body and compare.
fn verify_signature(r: &Recorded) {
    let header = r.header("x-portwatch-signature").expect("signature header");
    let hex_sig = header.strip_prefix("sha256=").expect("sha256= prefix");
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&r.body);
    mac.verify_slice(&hex::decode(hex_sig).expect("hex"))
        .expect("the signature matches the body");
}

#[tokio::test]
async fn webhook_and_slack_get_signed_json_with_idempotency_keys_on_open_and_resolve() {
    let mut w = world(FAST).await;
    let hook = HttpReceiver::ok().await;
    let slack = HttpReceiver::ok().await;
    let wh = create(&mut w.tenant, "", webhook(hook.url("/hook"), true)).await;
    let Some(v1::channel::Config::Webhook(cfg)) = &wh.config else {
        panic!("webhook config")
    };
    assert!(cfg.secret.is_empty(), "the secret is write-only");
    let sl = create(
        &mut w.tenant,
        "",
        v1::Channel {
            name: "slack".into(),
            is_default: true,
            config: Some(v1::channel::Config::Slack(v1::SlackConfig {
                webhook_url: slack.url("/services/T000/B000/SECRETPART"),
            })),
            ..Default::default()
        },
    )
    .await;
    let Some(v1::channel::Config::Slack(cfg)) = &sl.config else {
        panic!("slack config")
    };
    assert!(
        !cfg.webhook_url.contains("SECRETPART"),
        "{}",
        cfg.webhook_url
    );

    let m = monitor(&mut w).await;
    let mut ag = w.connect_agents().await;
    let incident = open_incident(&mut w, &mut ag, &m).await;

    let got = hook.wait_for(1, WAIT).await;
    let r = &got[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/hook"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(
        r.header("user-agent")
            .unwrap_or_default()
            .starts_with("portwatch/")
    );
    verify_signature(r);
    let key = format!("{}:opened:{}", incident.id, wh.id);
    assert_eq!(r.header("idempotency-key"), Some(key.as_str()));
    assert_eq!(r.header("x-portwatch-event"), Some("incident.opened"));
    let body = json(r);
    assert_eq!(body["version"], 1);
    assert_eq!(body["event"], "incident.opened");
    assert_eq!(body["idempotency_key"], key.as_str());
    assert_eq!(body["subject"], "TCP Port Unreachable: db.example.com:5432");
    assert_eq!(body["severity"], "critical");
    let i = &body["incident"];
    assert_eq!(i["id"], incident.id.as_str());
    assert_eq!(i["monitor_name"], "orders db");
    assert_eq!(
        (i["host"].as_str(), i["port"].as_u64()),
        (Some("db.example.com"), Some(5432))
    );
    assert_eq!(i["reason"], "refused");
    assert_eq!(i["reason_text"], "Connection refused");
    assert!(i["opened_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(i["closed_at"], Value::Null);
    let regions: HashMap<String, Value> = i["regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["region"].as_str().unwrap().to_string(), r.clone()))
        .collect();
    assert_eq!(regions.len(), 3);
    assert_eq!(regions["eu"]["state"], "down");
    assert_eq!(regions["us"]["outcome"], "refused");
    assert_eq!(regions["ap"]["state"], "up");
    assert_eq!(
        regions["ap"]["connect_ms"], 1.2,
        "connect_us 1234 from the agent"
    );

    let s = slack.wait_for(1, WAIT).await;
    assert_eq!(s[0].path, "/services/T000/B000/SECRETPART");
    let text = json(&s[0])["text"].as_str().unwrap().to_string();
    assert!(
        text.contains("TCP Port Unreachable: db.example.com:5432"),
        "{text}"
    );
    assert!(text.contains("```\nRegion  State"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("eu ") && l.contains("down")),
        "{text}"
    );
    assert!(s[0].header("x-portwatch-signature").is_none());

    close_incident(&mut w, &mut ag, &m).await;
    let got = hook.wait_for(2, WAIT).await;
    let r = &got[1];
    verify_signature(r);
    let key = format!("{}:resolved:{}", incident.id, wh.id);
    assert_eq!(r.header("idempotency-key"), Some(key.as_str()));
    let body = json(r);
    assert_eq!(body["event"], "incident.resolved");
    assert_eq!(
        body["subject"],
        "TCP Port Reachable Again: db.example.com:5432"
    );
    assert!(body["incident"]["closed_at"].as_str().is_some());
    let s = slack.wait_for(2, WAIT).await;
    assert!(
        json(&s[1])["text"]
            .as_str()
            .unwrap()
            .contains("TCP Port Reachable Again")
    );

    let ds = settled(&w.tenant, "", &incident.id, 4).await;
    for d in &ds {
        assert_eq!(d.state, v1::DeliveryState::Delivered as i32, "{d:?}");
        assert_eq!(d.attempts, 1);
        assert!(d.delivered_at.is_some());
    }
    let metrics = w.coord.metrics_text().await;
    assert!(
        metrics.contains("portwatch_deliveries_total{state=\"delivered\"} 4"),
        "{metrics}"
    );
    assert_eq!(hook.requests().len(), 2, "one request per key");
}

#[tokio::test]
async fn a_failing_receiver_is_retried_until_exactly_one_success_and_a_refusal_is_final() {
    let mut w = world(FAST).await;
    let flaky = HttpReceiver::start(|_, n| {
        if n < 3 {
            (503, "busy".to_string())
        } else {
            (200, "ok".to_string())
        }
    })
    .await;
    let refusing = HttpReceiver::start(|_, _| (400, "bad payload".to_string())).await;
    let good = create(&mut w.tenant, "", webhook(flaky.url("/flaky"), true)).await;
    let bad = create(&mut w.tenant, "", webhook(refusing.url("/no"), true)).await;
    let m = monitor(&mut w).await;
    let mut ag = w.connect_agents().await;
    let incident = open_incident(&mut w, &mut ag, &m).await;

    let got = flaky.wait_for(4, WAIT).await;
    // Nothing after the success.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got_later = flaky.requests();
    assert_eq!(got_later.len(), 4, "retries stop at the first success");
    let statuses: Vec<u16> = got.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 503, 503, 200]);
    let key = format!("{}:opened:{}", incident.id, good.id);
    for r in &got {
        assert_eq!(r.header("idempotency-key"), Some(key.as_str()));
        assert_eq!(r.body, got[0].body, "every attempt sends the same body");
        verify_signature(r);
    }

    let ds = settled(&w.tenant, "", &incident.id, 2).await;
    let by_channel: HashMap<&str, &v1::Delivery> =
        ds.iter().map(|d| (d.channel_id.as_str(), d)).collect();
    let d = by_channel[good.id.as_str()];
    assert_eq!(d.state, v1::DeliveryState::Delivered as i32);
    assert_eq!(d.attempts, 4);
    assert!(d.last_error.contains("503"), "{}", d.last_error);
    let d = by_channel[bad.id.as_str()];
    assert_eq!(d.state, v1::DeliveryState::Failed as i32, "a 400 is final");
    assert_eq!(d.attempts, 1);
    assert!(d.last_error.contains("400"), "{}", d.last_error);
    assert_eq!(refusing.requests().len(), 1);

    let metrics = w.coord.metrics_text().await;
    for want in [
        "portwatch_deliveries_total{state=\"delivered\"} 1",
        "portwatch_deliveries_total{state=\"failed\"} 1",
        "portwatch_deliveries_total{state=\"pending\"} 2",
        "portwatch_delivery_attempts_total{channel_kind=\"webhook\",result=\"error\"} 4",
    ] {
        assert!(metrics.contains(want), "{want} missing from\n{metrics}");
    }
}

#[tokio::test]
async fn email_arrives_over_smtp_with_subject_body_and_login() {
    let mut w = world(FAST).await;
    let smtp = SmtpServer::start().await;
    let ch = create(
        &mut w.tenant,
        "",
        v1::Channel {
            name: "on-call mail".into(),
            is_default: true,
            config: Some(v1::channel::Config::Email(v1::EmailConfig {
                smtp_host: "127.0.0.1".into(),
                smtp_port: u32::from(smtp.addr.port()),
                tls: v1::SmtpTls::None as i32,
                username: "alerts".into(),
                password: "mail-pass".into(),
                from: "portwatch <alerts@example.com>".into(),
                to: vec!["oncall@example.com".into(), "dba@example.com".into()],
            })),
            ..Default::default()
        },
    )
    .await;
    let Some(v1::channel::Config::Email(cfg)) = &ch.config else {
        panic!("email config")
    };
    assert!(cfg.password.is_empty(), "the password is write-only");

    let m = monitor(&mut w).await;
    let mut ag = w.connect_agents().await;
    let incident = open_incident(&mut w, &mut ag, &m).await;
    let mails = smtp.wait_for(1, WAIT).await;
    let mail = &mails[0];
    assert_eq!(
        mail.header("Subject").as_deref(),
        Some("TCP Port Unreachable: db.example.com:5432")
    );
    assert_eq!(mail.auth, Some(("alerts".into(), "mail-pass".into())));
    assert!(mail.from.contains("alerts@example.com"), "{}", mail.from);
    assert_eq!(mail.to.len(), 2);
    assert!(
        mail.header("Message-ID")
            .is_some_and(|id| id.contains(&incident.id)),
        "{:?}",
        mail.header("Message-ID")
    );
    let body = mail.body_text();
    for want in [
        "TCP Port Unreachable: db.example.com:5432",
        "Monitor:        orders db",
        "Host:           db.example.com",
        "Port:           5432",
        "Severity:       critical",
        "Failure reason: Connection refused",
        "Opened at:",
        &format!("Incident:       {}", incident.id),
        "Region  State  Reason",
    ] {
        assert!(body.contains(want), "{want:?} missing from:\n{body}");
    }
    let row = |region: &str| {
        body.lines()
            .find(|l| l.starts_with(&format!("{region} ")))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        row("eu").contains("down") && row("eu").contains("Connection refused"),
        "{body}"
    );
    assert!(
        row("ap").contains("up") && row("ap").contains("1.2 ms"),
        "{body}"
    );
    assert!(!body.contains("http"), "plain text, no links");

    close_incident(&mut w, &mut ag, &m).await;
    let mails = smtp.wait_for(2, WAIT).await;
    assert_eq!(
        mails[1].header("Subject").as_deref(),
        Some("TCP Port Reachable Again: db.example.com:5432")
    );
    assert!(mails[1].body_text().contains("Resolved at:"));

    // The test command reports the server's answer.
    let t = w
        .tenant
        .test_channel(v1::TestChannelRequest {
            tenant_id: String::new(),
            id: ch.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(t.ok, "{}", t.detail);
    assert!(t.detail.starts_with("SMTP 250"), "{}", t.detail);
    let mails = smtp.wait_for(3, WAIT).await;
    assert!(
        mails[2]
            .header("Subject")
            .is_some_and(|s| s.starts_with("[test] ")),
        "{:?}",
        mails[2].header("Subject")
    );
}

/// A private CA for the TLS receivers (a self-signed certificate for
/// `localhost` and 127.0.0.1) and the coordinator config that trusts it.
fn private_ca(dir: &Path, name: &str) -> (TestCert, String) {
    let cert = TestCert::generate_named(dir, name);
    let config = format!(
        "{FAST}notify_ca_file = {:?}\n",
        cert.cert.display().to_string()
    );
    (cert, config)
}

/// A self-signed certificate for `localhost` and 127.0.0.1 under its own
/// issuer name (not the one of [`TestCert`]s).
fn unknown_issuer(dir: &Path) -> TestCert {
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "someone else's CA");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (path, key_path) = (dir.join("rogue.pem"), dir.join("rogue.key"));
    std::fs::write(&path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    TestCert {
        cert_pem: cert.pem(),
        cert: path,
        key: key_path,
    }
}

/// An email channel with login to the SMTP server on 127.0.0.1:`port`.
fn email(port: u16, tls: v1::SmtpTls) -> v1::Channel {
    v1::Channel {
        name: format!("mail {tls:?}"),
        is_default: true,
        config: Some(v1::channel::Config::Email(v1::EmailConfig {
            smtp_host: "127.0.0.1".into(),
            smtp_port: u32::from(port),
            tls: tls as i32,
            username: "alerts".into(),
            password: "mail-pass".into(),
            from: "portwatch <alerts@example.com>".into(),
            to: vec!["oncall@example.com".into()],
        })),
        ..Default::default()
    }
}

/// The incident email goes out over a verified TLS session (certificate from
/// the coordinator's `notify_ca_file`), with login, and the test command too.
async fn email_over_tls_arrives(mode: SmtpTlsMode, tls: v1::SmtpTls) {
    let certs = tempfile::tempdir().unwrap();
    let (cert, config) = private_ca(certs.path(), "smtp");
    let mut w = world(&config).await;
    let smtp = SmtpServer::start_tls(mode, &cert).await;
    let ch = create(&mut w.tenant, "", email(smtp.addr.port(), tls)).await;
    let Some(v1::channel::Config::Email(cfg)) = &ch.config else {
        panic!("email config")
    };
    assert_eq!(cfg.tls, tls as i32);

    let m = monitor(&mut w).await;
    let mut ag = w.connect_agents().await;
    let incident = open_incident(&mut w, &mut ag, &m).await;
    let mails = smtp.wait_for(1, WAIT).await;
    let mail = &mails[0];
    assert!(mail.tls, "the message must arrive over TLS ({mode:?})");
    assert_eq!(
        mail.header("Subject").as_deref(),
        Some("TCP Port Unreachable: db.example.com:5432")
    );
    assert_eq!(mail.auth, Some(("alerts".into(), "mail-pass".into())));
    assert!(mail.from.contains("alerts@example.com"), "{}", mail.from);
    assert_eq!(mail.to, ["<oncall@example.com>"]);
    assert!(
        mail.body_text()
            .contains(&format!("Incident:       {}", incident.id)),
        "{}",
        mail.body_text()
    );
    let ds = settled(&w.tenant, "", &incident.id, 1).await;
    assert_eq!(
        ds[0].state,
        v1::DeliveryState::Delivered as i32,
        "{:?}",
        ds[0]
    );
    assert_eq!(ds[0].attempts, 1, "{:?}", ds[0]);
    assert_eq!(smtp.tls_failures(), 0);

    let t = w
        .tenant
        .test_channel(v1::TestChannelRequest {
            tenant_id: String::new(),
            id: ch.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(t.ok, "{}", t.detail);
    assert!(t.detail.starts_with("SMTP 250"), "{}", t.detail);
    let mails = smtp.wait_for(2, WAIT).await;
    assert!(mails.iter().all(|m| m.tls), "{mails:?}");
}

#[tokio::test]
async fn email_over_starttls_with_login_trusts_the_private_ca() {
    email_over_tls_arrives(SmtpTlsMode::StartTls, v1::SmtpTls::Starttls).await;
}

#[tokio::test]
async fn email_over_implicit_tls_with_login_trusts_the_private_ca() {
    email_over_tls_arrives(SmtpTlsMode::Implicit, v1::SmtpTls::Implicit).await;
}

#[tokio::test]
async fn webhook_over_https_trusts_the_private_ca() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, config) = private_ca(certs.path(), "hooks");
    let mut w = world(&config).await;
    let hook = HttpReceiver::start_tls(&cert, |_, _| (200, "ok".to_string())).await;
    let url = hook.url("/hook");
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let ch = create(&mut w.tenant, "", webhook(url, true)).await;
    let m = monitor(&mut w).await;
    let mut ag = w.connect_agents().await;
    let incident = open_incident(&mut w, &mut ag, &m).await;
    let got = hook.wait_for(1, WAIT).await;
    verify_signature(&got[0]);
    let key = format!("{}:opened:{}", incident.id, ch.id);
    assert_eq!(got[0].header("idempotency-key"), Some(key.as_str()));
    let ds = settled(&w.tenant, "", &incident.id, 1).await;
    assert_eq!(
        ds[0].state,
        v1::DeliveryState::Delivered as i32,
        "{:?}",
        ds[0]
    );
}

#[tokio::test]
async fn an_untrusted_certificate_fails_the_delivery_and_never_falls_back_to_plaintext() {
    let certs = tempfile::tempdir().unwrap();
    // The coordinator trusts one private CA; the servers present a certificate
    // for the right names from an issuer it does not know.
    let (_trusted, config) = private_ca(certs.path(), "trusted");
    let rogue = unknown_issuer(certs.path());
    let mut w = world(&config).await;
    let starttls = SmtpServer::start_tls(SmtpTlsMode::StartTls, &rogue).await;
    let implicit = SmtpServer::start_tls(SmtpTlsMode::Implicit, &rogue).await;
    let hook = HttpReceiver::start_tls(&rogue, |_, _| (200, "ok".to_string())).await;
    // A server that does not offer STARTTLS at all (a stripped EHLO).
    let stripped = SmtpServer::start().await;
    let mut names = HashMap::new();
    for (name, c) in [
        (
            "starttls",
            email(starttls.addr.port(), v1::SmtpTls::Starttls),
        ),
        (
            "implicit",
            email(implicit.addr.port(), v1::SmtpTls::Implicit),
        ),
        ("https", webhook(hook.url("/hook"), true)),
        (
            "stripped",
            email(stripped.addr.port(), v1::SmtpTls::Starttls),
        ),
    ] {
        let ch = create(&mut w.tenant, "", c).await;
        names.insert(ch.id, name);
    }

    let m = monitor(&mut w).await;
    let mut ag = w.connect_agents().await;
    let incident = open_incident(&mut w, &mut ag, &m).await;
    // Several attempts each, so that a fallback on retry would show too.
    let t = w.tenant.clone();
    let ds = eventually("every delivery failed twice", WAIT, || {
        let mut t = t.clone();
        let id = incident.id.clone();
        async move {
            let ds = deliveries(&mut t, "", &id).await;
            (ds.len() == 4 && ds.iter().all(|d| d.attempts >= 2)).then_some(ds)
        }
    })
    .await;
    for d in &ds {
        let name = names[d.channel_id.as_str()];
        assert_ne!(
            d.state,
            v1::DeliveryState::Delivered as i32,
            "{name}: {d:?}"
        );
        let want = if name == "stripped" {
            "STARTTLS is not supported"
        } else {
            "invalid peer certificate: UnknownIssuer"
        };
        assert!(d.last_error.contains(want), "{name}: {:?}", d.last_error);
    }
    assert!(starttls.mails().is_empty(), "{:?}", starttls.mails());
    assert!(implicit.mails().is_empty(), "{:?}", implicit.mails());
    assert!(stripped.mails().is_empty(), "{:?}", stripped.mails());
    assert!(hook.requests().is_empty(), "{:?}", hook.requests());
    // The client did reach the handshake, and refused it.
    assert!(starttls.tls_failures() >= 2, "{}", starttls.tls_failures());
    assert!(implicit.tls_failures() >= 2, "{}", implicit.tls_failures());

    // The test command says why, too.
    let starttls_id = names
        .iter()
        .find(|(_, n)| **n == "starttls")
        .map(|(id, _)| id.clone())
        .unwrap();
    let t = w
        .tenant
        .test_channel(v1::TestChannelRequest {
            tenant_id: String::new(),
            id: starttls_id,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!t.ok);
    assert!(t.detail.contains("certificate"), "{}", t.detail);
    assert!(starttls.mails().is_empty());
}

#[tokio::test]
async fn pagerduty_sees_trigger_then_resolve_with_one_dedup_key() {
    let mut w = world(FAST).await;
    let pd = HttpReceiver::start(|r, _| {
        let dedup = serde_json::from_slice::<Value>(&r.body)
            .ok()
            .and_then(|v| v["dedup_key"].as_str().map(str::to_string))
            .unwrap_or_default();
        (
            202,
            format!(
                "{{\"status\":\"success\",\"message\":\"Event processed\",\"dedup_key\":\"{dedup}\"}}"
            ),
        )
    })
    .await;
    let ch = create(
        &mut w.tenant,
        "",
        v1::Channel {
            name: "pagerduty".into(),
            is_default: true,
            config: Some(v1::channel::Config::Pagerduty(v1::PagerDutyConfig {
                routing_key: "R0UT1NGKEY0123456789abcdef012345".into(),
                base_url: pd.url(""),
            })),
            ..Default::default()
        },
    )
    .await;
    let Some(v1::channel::Config::Pagerduty(cfg)) = &ch.config else {
        panic!("pagerduty config")
    };
    assert!(cfg.routing_key.is_empty(), "the routing key is write-only");

    let m = monitor(&mut w).await;
    let mut ag = w.connect_agents().await;
    let incident = open_incident(&mut w, &mut ag, &m).await;
    let got = pd.wait_for(1, WAIT).await;
    assert_eq!(got[0].path, "/v2/enqueue");
    let t = json(&got[0]);
    assert_eq!(t["event_action"], "trigger");
    assert_eq!(t["dedup_key"], incident.id.as_str());
    assert_eq!(t["routing_key"], "R0UT1NGKEY0123456789abcdef012345");
    assert_eq!(t["payload"]["severity"], "critical");
    assert_eq!(t["payload"]["source"], "db.example.com:5432");
    assert_eq!(
        t["payload"]["summary"],
        "TCP Port Unreachable: db.example.com:5432"
    );

    close_incident(&mut w, &mut ag, &m).await;
    let got = pd.wait_for(2, WAIT).await;
    let r = json(&got[1]);
    assert_eq!(r["event_action"], "resolve");
    assert_eq!(
        r["dedup_key"],
        incident.id.as_str(),
        "one dedup key for both"
    );
    let ds = settled(&w.tenant, "", &incident.id, 2).await;
    assert!(
        ds.iter()
            .all(|d| d.state == v1::DeliveryState::Delivered as i32)
    );

    // A test trigger is resolved at once.
    let t = w
        .tenant
        .test_channel(v1::TestChannelRequest {
            tenant_id: String::new(),
            id: ch.id,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(t.ok, "{}", t.detail);
    assert!(t.detail.contains("202"), "{}", t.detail);
    let got = pd.wait_for(4, WAIT).await;
    let (a, b) = (json(&got[2]), json(&got[3]));
    assert_eq!(
        (a["event_action"].as_str(), b["event_action"].as_str()),
        (Some("trigger"), Some("resolve"))
    );
    assert_eq!(a["dedup_key"], b["dedup_key"]);
    assert_eq!(a["payload"]["severity"], "info");
}

#[tokio::test]
async fn a_delivery_pending_at_kill9_is_sent_after_restart_once() {
    let mut w = world(FAST).await;
    // Nothing listens there yet: every attempt is refused.
    let port = free_port();
    let ch = create(
        &mut w.tenant,
        "",
        webhook(format!("http://127.0.0.1:{port}/hook"), true),
    )
    .await;
    let m = monitor(&mut w).await;
    let mut ag = w.connect_agents().await;
    let incident = open_incident(&mut w, &mut ag, &m).await;
    let t = w.tenant.clone();
    let tried = eventually("an attempt failed", WAIT, || {
        let mut t = t.clone();
        let id = incident.id.clone();
        async move {
            deliveries(&mut t, "", &id)
                .await
                .into_iter()
                .find(|d| d.attempts >= 1)
        }
    })
    .await;
    assert_eq!(tried.state, v1::DeliveryState::Pending as i32);
    assert!(!tried.last_error.is_empty());

    drop(ag);
    w.coord.proc.kill9();
    let receiver = HttpReceiver::start_on(format!("127.0.0.1:{port}").parse().unwrap(), |_, _| {
        (200, "ok".to_string())
    })
    .await;
    w.coord.restart();
    let got = receiver.wait_for(1, WAIT).await;
    let key = format!("{}:opened:{}", incident.id, ch.id);
    assert_eq!(got[0].header("idempotency-key"), Some(key.as_str()));
    verify_signature(&got[0]);

    let token = tenant_token(&mut w).await;
    let mut tenant = w.coord.admin(&token).await;
    let ds = settled(&tenant, "", &incident.id, 1).await;
    assert_eq!(ds[0].state, v1::DeliveryState::Delivered as i32);
    assert!(ds[0].attempts >= 2, "{:?}", ds[0]);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut per_key: HashMap<String, usize> = HashMap::new();
    for r in receiver.requests() {
        *per_key
            .entry(r.header("idempotency-key").unwrap_or_default().to_string())
            .or_default() += 1;
    }
    assert_eq!(per_key.len(), 1);
    assert_eq!(per_key[&key], 1, "sent once per idempotency key");
    assert_eq!(deliveries(&mut tenant, "", &incident.id).await.len(), 1);
}

/// A fresh tenant token (the old admin channels died with the process).
async fn tenant_token(w: &mut World) -> String {
    w.op = w.coord.admin(OPERATOR_TOKEN).await;
    w.op.create_tenant_token(v1::CreateTenantTokenRequest {
        tenant_id: "acme".into(),
        description: "after restart".into(),
    })
    .await
    .unwrap()
    .into_inner()
    .token
}

#[tokio::test]
async fn a_probe_region_offline_notice_goes_once_to_the_operator_and_back_online_once() {
    let mut w = world(&format!("{FAST}region_offline_grace = \"1s\"\n")).await;
    let mut ag = w.connect_agents().await;
    let ops = HttpReceiver::ok().await;
    let tenant_hook = HttpReceiver::ok().await;
    let op_ch = create(&mut w.op, "", webhook(ops.url("/ops"), false)).await;
    assert_eq!(op_ch.tenant_id, "");
    create(&mut w.tenant, "", webhook(tenant_hook.url("/t"), true)).await;
    let m = monitor(&mut w).await;
    for a in ag.iter_mut() {
        a.pump_until(Duration::from_secs(5), |a| a.assigned.contains_key(&m.id))
            .await
            .unwrap();
        a.report_acked(&m.id, v1::Outcome::Ok).await;
    }

    // The eu agent goes away for longer than the grace period.
    let eu = ag.remove(0);
    drop(eu);
    let got = ops.wait_for(1, WAIT).await;
    let off = json(&got[0]);
    assert_eq!(off["event"], "region.offline");
    assert_eq!(off["subject"], "Probe region offline: eu");
    assert_eq!(off["region"]["name"], "eu");
    let outage = off["region"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        got[0].header("idempotency-key"),
        Some(format!("{outage}:offline:{}", op_ch.id).as_str())
    );
    verify_signature(&got[0]);
    // One notice for the region, however long it stays away.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(ops.requests().len(), 1);

    // Tenants see the region as unknown, not down, and are not paged.
    let status = w
        .tenant
        .get_monitor_status(v1::GetMonitorStatusRequest {
            tenant_id: String::new(),
            id: m.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let eu_state = status.regions.iter().find(|r| r.region == "eu").unwrap();
    assert_eq!(eu_state.state, v1::RegionState::Unknown as i32);
    assert_ne!(status.overall, v1::OverallState::Down as i32);
    assert!(tenant_hook.requests().is_empty());
    assert!(open_incidents(&mut w.tenant).await.is_empty());
    let ds = deliveries(&mut w.op, "", "eu").await;
    assert_eq!(ds.len(), 1);
    assert_eq!(ds[0].kind, v1::DeliveryKind::RegionOffline as i32);

    // Back: one "back online" notice for the same outage.
    let back = FakeAgent::connect(&w.coord, &w.regions[0].token, "agent-eu")
        .await
        .unwrap();
    back.keepalive();
    let got = ops.wait_for(2, WAIT).await;
    let on = json(&got[1]);
    assert_eq!(on["event"], "region.online");
    assert_eq!(on["subject"], "Probe region back online: eu");
    assert_eq!(on["region"]["id"], outage.as_str());
    assert_eq!(
        got[1].header("idempotency-key"),
        Some(format!("{outage}:online:{}", op_ch.id).as_str())
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(ops.requests().len(), 2);
    assert!(tenant_hook.requests().is_empty());
}

#[tokio::test]
async fn test_channel_reports_the_answer_and_tenants_cannot_target_private_addresses() {
    // No allow_private_channel_targets: the production default.
    let mut w = world("").await;
    let ok = HttpReceiver::ok().await;
    let broken = HttpReceiver::start(|_, _| (500, "database on fire".to_string())).await;

    let (c, msg) = match w
        .tenant
        .create_channel(v1::CreateChannelRequest {
            tenant_id: String::new(),
            channel: Some(webhook(ok.url("/hook"), true)),
        })
        .await
    {
        Ok(_) => panic!("a tenant's loopback webhook must be refused"),
        Err(e) => (e.code(), e.message().to_string()),
    };
    assert_eq!(c, Code::InvalidArgument);
    assert!(
        msg.starts_with("channel.webhook.url: 127.0.0.1 is non-public"),
        "{msg}"
    );
    for (url, field) in [
        (
            "gopher://example.com/x",
            "channel.webhook.url: unknown scheme",
        ),
        ("http//example.com", "channel.webhook.url: malformed URL"),
    ] {
        let e = w
            .tenant
            .create_channel(v1::CreateChannelRequest {
                tenant_id: String::new(),
                channel: Some(webhook(url.into(), true)),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with(field), "{}", e.message());
    }
    assert!(
        w.tenant
            .list_channels(v1::ListChannelsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .channels
            .is_empty(),
        "nothing stored"
    );

    // The operator's own channels may reach internal receivers.
    let good = create(&mut w.op, "", webhook(ok.url("/hook"), false)).await;
    let bad = create(&mut w.op, "", webhook(broken.url("/hook"), false)).await;
    let test = |id: String| v1::TestChannelRequest {
        tenant_id: String::new(),
        id,
    };
    let t =
        w.op.test_channel(test(good.id.clone()))
            .await
            .unwrap()
            .into_inner();
    assert!(t.ok);
    assert_eq!(t.detail, "HTTP 200 OK: ok");
    let r = &ok.wait_for(1, WAIT).await[0];
    verify_signature(r);
    let body = json(r);
    assert_eq!(body["test"], true);
    assert!(
        body["subject"]
            .as_str()
            .unwrap()
            .starts_with("[test] TCP Port Unreachable"),
        "{body}"
    );
    let t = w.op.test_channel(test(bad.id)).await.unwrap().into_inner();
    assert!(!t.ok);
    assert_eq!(t.detail, "HTTP 500 Internal Server Error: database on fire");
    // A test is not a delivery.
    assert!(deliveries(&mut w.op, "", "").await.is_empty());
}
