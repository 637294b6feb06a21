//! Sends one rendered notification through one channel: webhook, Slack,
//! email (SMTP) or PagerDuty Events v2. One attempt per call; retrying is the
//! outbox's job.
//!
//! Guarantees:
//! - an attempt ends within the configured timeout (HTTP and SMTP alike) and
//!   answers what the receiver said (status line and a body excerpt, or the
//!   SMTP reply), or why it failed and whether retrying can help;
//! - a tenant's channel never reaches a non-public address unless the
//!   coordinator allows it (`allow_private_channel_targets`): IP literals are
//!   checked before connecting and names are resolved by a resolver that drops
//!   non-public addresses, so a name re-pointed after creation (DNS rebinding)
//!   cannot slip through; redirects are never followed;
//! - webhook bodies are signed: `X-Portwatch-Signature: sha256=<hex HMAC-SHA256
//!   of the exact body bytes with the channel secret>`, and carry
//!   `Idempotency-Key`;
//! - secrets leave this process only towards their own receiver: [`redacted`]
//!   is what the admin API returns;
//! - TLS (SMTP STARTTLS or implicit, webhook HTTPS) always verifies the
//!   receiver's certificate and name: against the public roots, plus the
//!   operator's private CA (`notify_ca_file`) when one is configured. A
//!   STARTTLS channel never falls back to plaintext.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Body, Mailbox, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use portwatch_check::Host;
use portwatch_check::guard;
use portwatch_proto::v1;
use reqwest::Url;
use rustls::pki_types::CertificateDer;
use sha2::Sha256;

use crate::render::{self, Notice, Notification};

/// The public PagerDuty Events API.
pub const PAGERDUTY_DEFAULT_URL: &str = "https://events.pagerduty.com";
/// How much of a receiver's answer is kept.
const ANSWER_EXCERPT: usize = 200;
/// How much of a response body is read at most.
const MAX_BODY_READ: usize = 16 * 1024;

/// What the receiver said to a successful attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub detail: String,
}

/// Why an attempt failed, and whether trying again could help.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub detail: String,
    /// The receiver refused the message itself (or the channel cannot work):
    /// retrying the same message cannot succeed.
    pub permanent: bool,
}

impl Failure {
    fn transient(detail: impl Into<String>) -> Failure {
        Failure {
            detail: detail.into(),
            permanent: false,
        }
    }

    fn permanent(detail: impl Into<String>) -> Failure {
        Failure {
            detail: detail.into(),
            permanent: true,
        }
    }
}

/// The kind of a channel as a short name (metrics labels, logs, default names).
pub fn kind(c: &v1::Channel) -> &'static str {
    match &c.config {
        Some(v1::channel::Config::Webhook(_)) => "webhook",
        Some(v1::channel::Config::Slack(_)) => "slack",
        Some(v1::channel::Config::Email(_)) => "email",
        Some(v1::channel::Config::Pagerduty(_)) => "pagerduty",
        None => "none",
    }
}

/// The channel as the admin API shows it: secrets removed (webhook secret, SMTP
/// password, PagerDuty routing key) and the Slack URL cut after its first path
/// segment (the rest is the credential).
pub fn redacted(c: &v1::Channel) -> v1::Channel {
    use v1::channel::Config;
    let mut c = c.clone();
    match &mut c.config {
        Some(Config::Webhook(w)) => {
            w.secret.clear();
            w.url = redact_userinfo(&w.url);
        }
        Some(Config::Slack(s)) => {
            s.webhook_url = match Url::parse(&s.webhook_url) {
                Ok(u) => {
                    let first = u
                        .path_segments()
                        .and_then(|mut p| p.next())
                        .unwrap_or_default()
                        .to_string();
                    format!(
                        "{}://{}/{first}/…redacted",
                        u.scheme(),
                        u.host_str().unwrap_or_default()
                    )
                }
                Err(_) => "…redacted".to_string(),
            };
        }
        Some(Config::Email(e)) => e.password.clear(),
        Some(Config::Pagerduty(p)) => {
            p.routing_key.clear();
            p.base_url = redact_userinfo(&p.base_url);
        }
        None => {}
    }
    c
}

fn redact_userinfo(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("redacted"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// The signature header value for `body`: `sha256=<hex>`.
pub fn signature(secret: &[u8], body: &[u8]) -> Result<String, Failure> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .map_err(|e| Failure::permanent(format!("signing key: {e}")))?;
    mac.update(body);
    Ok(format!(
        "sha256={}",
        hex::encode(mac.finalize().into_bytes())
    ))
}

/// A resolver for tenant channels: system DNS, minus every non-public address.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = all
                .into_iter()
                .filter(|a| guard::is_public(a.ip()))
                .collect();
            if public.is_empty() {
                let msg = format!(
                    "every address of {host} is non-public; a tenant's channel may reach public addresses only"
                );
                return Err(msg.into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Error text with its causes ("error sending request: connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

fn excerpt(s: &str) -> String {
    let s = render::clean(s.trim());
    if s.chars().count() <= ANSWER_EXCERPT {
        s
    } else {
        let mut t: String = s.chars().take(ANSWER_EXCERPT).collect();
        t.push('…');
        t
    }
}

/// HTTP answers that retrying cannot fix: the receiver understood and refused.
fn permanent_status(code: u16) -> bool {
    (400..500).contains(&code) && !matches!(code, 408 | 425 | 429)
}

/// The senders, one per process: HTTP clients are shared (connection reuse).
pub struct Senders {
    /// For channels that must reach public addresses only.
    public: reqwest::Client,
    /// For the operator's channels, and every channel when private targets are allowed.
    any: reqwest::Client,
    allow_private: bool,
    timeout: Duration,
    /// Trusted for SMTP TLS besides the public (webpki) roots.
    extra_roots: Vec<CertificateDer<'static>>,
}

impl Senders {
    /// Builds the HTTP clients. rustls needs a process-wide crypto provider
    /// (installed in `main`); without one this is an error, not a panic.
    pub fn new(allow_private: bool, timeout: Duration) -> Result<Arc<Senders>, String> {
        Senders::with_roots(allow_private, timeout, &[])
    }

    /// Like [`Senders::new`], and trusts `extra_roots` (the operator's
    /// `notify_ca_file`) for SMTP TLS and webhook HTTPS, in addition to the
    /// public roots.
    pub fn with_roots(
        allow_private: bool,
        timeout: Duration,
        extra_roots: &[CertificateDer<'static>],
    ) -> Result<Arc<Senders>, String> {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            return Err("no TLS crypto provider installed (rustls ring provider)".into());
        }
        let http_roots = extra_roots
            .iter()
            .map(|c| reqwest::Certificate::from_der(c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("notify_ca_file: {}", chain(&e)))?;
        let base = || {
            reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout)
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .user_agent(concat!("portwatch/", env!("CARGO_PKG_VERSION")))
                .tls_certs_merge(http_roots.clone())
        };
        let public = base()
            .dns_resolver(Arc::new(PublicOnly))
            .build()
            .map_err(|e| format!("building the HTTP client: {}", chain(&e)))?;
        let any = base()
            .build()
            .map_err(|e| format!("building the HTTP client: {}", chain(&e)))?;
        Ok(Arc::new(Senders {
            public,
            any,
            allow_private,
            timeout,
            extra_roots: extra_roots.to_vec(),
        }))
    }

    /// Whether tenant channels may point at non-public addresses.
    pub fn allow_private(&self) -> bool {
        self.allow_private
    }

    /// Operator channels may reach internal systems; tenants' may not.
    fn guarded(&self, c: &v1::Channel) -> bool {
        !self.allow_private && !c.tenant_id.is_empty()
    }

    /// One attempt to deliver `n` through `c`.
    pub async fn send(&self, c: &v1::Channel, n: &Notification<'_>) -> Result<Answer, Failure> {
        use v1::channel::Config;
        let guarded = self.guarded(c);
        match &c.config {
            Some(Config::Webhook(w)) => {
                let body = serde_json::to_vec(&render::webhook(n))
                    .map_err(|e| Failure::permanent(format!("encoding the body: {e}")))?;
                let sig = signature(w.secret.as_bytes(), &body)?;
                let headers = [
                    ("X-Portwatch-Signature", sig),
                    ("Idempotency-Key", n.key.to_string()),
                    ("X-Portwatch-Event", n.notice.event().to_string()),
                ];
                self.post(guarded, &w.url, body, &headers).await
            }
            Some(Config::Slack(s)) => {
                let body = serde_json::to_vec(&render::slack(n))
                    .map_err(|e| Failure::permanent(format!("encoding the body: {e}")))?;
                self.post(guarded, &s.webhook_url, body, &[]).await
            }
            Some(Config::Pagerduty(p)) => {
                let event = render::pagerduty(n, &p.routing_key).ok_or_else(|| {
                    Failure::permanent(format!(
                        "PagerDuty takes no {} notice (its alert stays triggered until the recovery)",
                        n.notice.event()
                    ))
                })?;
                let body = serde_json::to_vec(&event)
                    .map_err(|e| Failure::permanent(format!("encoding the body: {e}")))?;
                let base = if p.base_url.is_empty() {
                    PAGERDUTY_DEFAULT_URL
                } else {
                    p.base_url.trim_end_matches('/')
                };
                let url = format!("{base}/v2/enqueue");
                self.post(guarded, &url, body, &[]).await
            }
            Some(Config::Email(e)) => {
                match tokio::time::timeout(self.timeout * 2, self.email(guarded, e, n)).await {
                    Ok(r) => r,
                    Err(_) => Err(Failure::transient(format!(
                        "SMTP: no answer within {}",
                        humantime::format_duration(self.timeout * 2)
                    ))),
                }
            }
            None => Err(Failure::permanent("the channel has no configuration")),
        }
    }

    /// Sends a sample through `c` and reports the receiver's answer. For
    /// PagerDuty the sample trigger is resolved at once, so nobody stays paged.
    pub async fn test(&self, c: &v1::Channel) -> Result<Answer, Failure> {
        let now = SystemTime::now();
        let micros = portwatch_proto::time::unix_micros(now);
        let id = format!("test-{}-{micros:x}", c.id);
        let mut incident = render::sample_incident(&id, now);
        incident.tenant_id = c.tenant_id.clone();
        let key = format!("{id}:opened:{}", c.id);
        let n = Notification {
            notice: Notice::Opened(&incident),
            key: &key,
            test: true,
        };
        let answer = self.send(c, &n).await?;
        if let Some(v1::channel::Config::Pagerduty(_)) = &c.config {
            let mut closed = incident.clone();
            closed.closed_at = Some(portwatch_proto::time::to_timestamp(now));
            let key = format!("{id}:resolved:{}", c.id);
            let r = Notification {
                notice: Notice::Resolved(&closed),
                key: &key,
                test: true,
            };
            return match self.send(c, &r).await {
                Ok(_) => Ok(Answer {
                    detail: format!("{} (sample trigger resolved at once)", answer.detail),
                }),
                Err(f) => Err(Failure {
                    detail: format!(
                        "trigger accepted ({}), but its resolve failed: {}",
                        answer.detail, f.detail
                    ),
                    permanent: f.permanent,
                }),
            };
        }
        Ok(answer)
    }

    async fn post(
        &self,
        guarded: bool,
        url: &str,
        body: Vec<u8>,
        headers: &[(&str, String)],
    ) -> Result<Answer, Failure> {
        let parsed = Url::parse(url).map_err(|e| Failure::permanent(format!("URL: {e}")))?;
        if guarded {
            // IP literals never reach the resolver: check them here.
            if let Some(host) = parsed.host_str()
                && let Ok(Host::Ip(ip)) = Host::parse(host.trim_matches(['[', ']']))
                && !guard::is_public(ip)
            {
                return Err(Failure::permanent(format!(
                    "{ip} is non-public; a tenant's channel may reach public addresses only"
                )));
            }
        }
        let client = if guarded { &self.public } else { &self.any };
        let mut req = client
            .post(parsed)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let mut resp = req.send().await.map_err(|e| {
            if e.is_builder() {
                Failure::permanent(chain(&e))
            } else {
                Failure::transient(chain(&e))
            }
        })?;
        let status = resp.status();
        let mut buf = Vec::new();
        // Bounded read: a receiver's answer is a status, not a download.
        while buf.len() < MAX_BODY_READ {
            match resp.chunk().await {
                Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
        let text = String::from_utf8_lossy(&buf);
        let mut detail = format!("HTTP {status}");
        let body = excerpt(&text);
        if !body.is_empty() {
            detail.push_str(": ");
            detail.push_str(&body);
        }
        if status.is_success() {
            Ok(Answer { detail })
        } else if permanent_status(status.as_u16()) {
            Err(Failure::permanent(detail))
        } else {
            Err(Failure::transient(detail))
        }
    }

    async fn email(
        &self,
        guarded: bool,
        e: &v1::EmailConfig,
        n: &Notification<'_>,
    ) -> Result<Answer, Failure> {
        let bad = |field: &str, err: &dyn std::fmt::Display| {
            Failure::permanent(format!("email.{field}: {err}"))
        };
        let from: Mailbox = e.from.parse().map_err(|err| bad("from", &err))?;
        // Receivers (and people) can dedup on the Message-ID as on the webhook key.
        let local: String = n
            .key
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '.'
                }
            })
            .collect();
        let mut builder = Message::builder()
            .from(from)
            .subject(render::subject(n))
            .message_id(Some(format!("<{local}@portwatch>")));
        for to in &e.to {
            let mbox: Mailbox = to.parse().map_err(|err| bad("to", &err))?;
            builder = builder.to(mbox);
        }
        let body =
            Body::new_with_encoding(render::text(n), ContentTransferEncoding::QuotedPrintable)
                .map_err(|_| Failure::permanent("email body: not encodable"))?;
        let message = builder
            .singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_PLAIN)
                    .body(body),
            )
            .map_err(|err| Failure::permanent(format!("email: {err}")))?;

        let tls_mode = v1::SmtpTls::try_from(e.tls).unwrap_or(v1::SmtpTls::Starttls);
        let port = smtp_port(e.smtp_port, tls_mode);
        let server = self.smtp_address(guarded, &e.smtp_host, port).await?;
        // Certificate and name are always verified: the public roots, plus the
        // operator's private CA when configured.
        let params = || {
            let mut b = TlsParameters::builder(e.smtp_host.clone());
            for der in &self.extra_roots {
                let cert = Certificate::from_der(der.to_vec()).map_err(|err| {
                    Failure::permanent(format!("email TLS: notify_ca_file: {}", chain(&err)))
                })?;
                b = b.add_root_certificate(cert);
            }
            b.build()
                .map_err(|err| Failure::permanent(format!("email TLS: {}", chain(&err))))
        };
        let tls = match tls_mode {
            v1::SmtpTls::None => Tls::None,
            v1::SmtpTls::Implicit => Tls::Wrapper(params()?),
            v1::SmtpTls::Unspecified | v1::SmtpTls::Starttls => Tls::Required(params()?),
        };
        // Connect to the address we checked; TLS still verifies the configured name.
        let mut b =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(server.ip().to_string())
                .port(port)
                .timeout(Some(self.timeout))
                .tls(tls);
        if !e.username.is_empty() {
            b = b.credentials(Credentials::new(e.username.clone(), e.password.clone()));
        }
        let transport: AsyncSmtpTransport<Tokio1Executor> = b.build();
        match transport.send(message).await {
            Ok(r) => {
                let text: Vec<&str> = r.message().collect();
                Ok(Answer {
                    detail: format!("SMTP {}: {}", r.code(), excerpt(&text.join(" "))),
                })
            }
            Err(err) => {
                let detail = format!("SMTP: {}", chain(&err));
                if err.is_permanent() {
                    Err(Failure::permanent(detail))
                } else {
                    Err(Failure::transient(detail))
                }
            }
        }
    }

    /// Resolves the SMTP server; for a guarded channel only public addresses count.
    async fn smtp_address(
        &self,
        guarded: bool,
        host: &str,
        port: u16,
    ) -> Result<SocketAddr, Failure> {
        let parsed =
            Host::parse(host).map_err(|e| Failure::permanent(format!("email.smtp_host: {e}")))?;
        let addrs: Vec<SocketAddr> = match parsed {
            Host::Ip(ip) => vec![SocketAddr::new(ip, port)],
            Host::Name(_) => tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| Failure::transient(format!("resolving {host}: {e}")))?
                .collect(),
        };
        let usable = |ip: IpAddr| !guarded || guard::is_public(ip);
        addrs
            .iter()
            .copied()
            .find(|a| usable(a.ip()))
            .ok_or_else(|| {
                if addrs.is_empty() {
                    Failure::transient(format!("resolving {host}: no address"))
                } else {
                    Failure::permanent(format!(
                        "every address of {host} is non-public; a tenant's channel may reach public addresses only"
                    ))
                }
            })
    }
}

/// The SMTP port: as configured, or the usual one for the TLS mode.
pub fn smtp_port(configured: u32, tls: v1::SmtpTls) -> u16 {
    match u16::try_from(configured) {
        Ok(p) if p != 0 => p,
        _ => match tls {
            v1::SmtpTls::Implicit => 465,
            v1::SmtpTls::None => 25,
            v1::SmtpTls::Unspecified | v1::SmtpTls::Starttls => 587,
        },
    }
}

#[cfg(test)]
mod tests;
