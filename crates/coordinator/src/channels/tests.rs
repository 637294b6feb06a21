//! The senders' pure parts: the webhook signature (against a published HMAC
//! vector), redaction of secrets from errors, and which statuses are final.

use super::*;

#[test]
fn signature_is_hex_hmac_sha256_of_the_body() {
    // RFC 4231 test case 2.
    let sig = signature(b"Jefe", b"what do ya want for nothing?").unwrap();
    assert_eq!(
        sig,
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

#[test]
fn redaction_removes_every_secret() {
    use v1::channel::Config;
    let ch = |config| v1::Channel {
        id: "ch-1".into(),
        config: Some(config),
        ..Default::default()
    };
    let w = redacted(&ch(Config::Webhook(v1::WebhookConfig {
        url: "https://user:pw@hooks.example.com/x".into(),
        secret: "s3cret-s3cret-s3cret".into(),
    })));
    let Some(Config::Webhook(w)) = w.config else {
        panic!()
    };
    assert!(w.secret.is_empty());
    assert!(!w.url.contains("pw@"), "{}", w.url);
    let s = redacted(&ch(Config::Slack(v1::SlackConfig {
        webhook_url: "https://hooks.slack.com/services/T000/B000/XXXXSECRET".into(),
    })));
    let Some(Config::Slack(s)) = s.config else {
        panic!()
    };
    assert_eq!(s.webhook_url, "https://hooks.slack.com/services/…redacted");
    let e = redacted(&ch(Config::Email(v1::EmailConfig {
        password: "pw".into(),
        ..Default::default()
    })));
    let Some(Config::Email(e)) = e.config else {
        panic!()
    };
    assert!(e.password.is_empty());
    let p = redacted(&ch(Config::Pagerduty(v1::PagerDutyConfig {
        routing_key: "R0UT1NG".into(),
        base_url: String::new(),
    })));
    let Some(Config::Pagerduty(p)) = p.config else {
        panic!()
    };
    assert!(p.routing_key.is_empty());
}

#[test]
fn statuses_that_retrying_cannot_fix() {
    for (code, permanent) in [
        (400, true),
        (401, true),
        (404, true),
        (408, false),
        (429, false),
        (500, false),
        (503, false),
    ] {
        assert_eq!(permanent_status(code), permanent, "{code}");
    }
    assert_eq!(smtp_port(0, v1::SmtpTls::Implicit), 465);
    assert_eq!(smtp_port(0, v1::SmtpTls::Unspecified), 587);
    assert_eq!(smtp_port(2525, v1::SmtpTls::None), 2525);
}
