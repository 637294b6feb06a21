//! One connection to the database, from the operator's settings: the URL (`postgres_url`), an
//! optional CA file for TLS, and an optional password kept apart from the URL (read from a file
//! or the environment by the caller, so it need not sit in a config file).
//!
//! TLS is rustls on the ring provider, as everywhere else in portwatch, and only with a CA file:
//! a database reached over TLS is verified against the operator's CA, never against whatever
//! roots the machine happens to have. Without a CA file the connection is plain (a database on
//! a private network or a socket next to the coordinator).
//!
//! Every text this file builds (errors, the log line of a failed connection) goes through
//! [`Redactor`], which knows every form the password can take here (the separate one, the one in
//! the URL, percent-encoded or not) and replaces it: the driver's messages do not quote
//! passwords today, and redacting them anyway keeps that true whatever it says tomorrow.

use std::error::Error as StdError;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

/// The configuration key of the database URL, named in every connection error so that the
/// operator knows which setting to fix.
pub const POSTGRES_URL_KEY: &str = "postgres_url";

/// How long a connection attempt may take when the URL does not say (`connect_timeout=`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The database could not be reached with these settings. The text names the key and the URL,
/// with any password replaced by `***`.
#[derive(Debug, thiserror::Error)]
#[error("{key} ({url}): {reason}")]
pub struct ConnectError {
    /// The setting to fix: [`POSTGRES_URL_KEY`], or the CA file's.
    pub key: &'static str,
    /// The URL, redacted.
    pub url: String,
    /// What failed, redacted.
    pub reason: String,
}

/// Connects to the database at `url`, over TLS verified against `ca_file` when one is given,
/// with `password` (if any) in place of the URL's. The connection's driver task runs on the
/// current tokio runtime until the returned client is dropped or the connection fails (logged,
/// redacted).
pub async fn connect(
    url: &str,
    ca_file: Option<&Path>,
    password: Option<&str>,
) -> Result<Client, ConnectError> {
    let mut redactor = Redactor::default();
    redactor.add(password.unwrap_or_default());
    redactor.add_url_password(url);
    let shown_url = redact_url(url);
    let fail = |key: &'static str, reason: String, redactor: &Redactor| ConnectError {
        key,
        url: shown_url.clone(),
        reason: redactor.apply(&reason),
    };
    let mut config = Config::from_str(url).map_err(|e| {
        fail(
            POSTGRES_URL_KEY,
            format!("not a PostgreSQL URL: {}", chain(&e)),
            &redactor,
        )
    })?;
    if let Some(from_url) = config.get_password() {
        redactor.add(&String::from_utf8_lossy(from_url));
    }
    if let Some(password) = password {
        config.password(password);
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    let redactor = Arc::new(redactor);
    let client = match ca_file {
        Some(ca_file) => {
            let tls = tls_config(ca_file).map_err(|reason| ConnectError {
                key: CA_FILE_KEY,
                url: ca_file.display().to_string(),
                reason,
            })?;
            if config.get_ssl_mode() != SslMode::Require {
                config.ssl_mode(SslMode::Require);
            }
            let (client, connection) = config
                .connect(MakeRustlsConnect::new(tls))
                .await
                .map_err(|e| fail(POSTGRES_URL_KEY, connect_reason(&e), &redactor))?;
            drive(connection, redactor.clone(), shown_url.clone());
            client
        }
        None if config.get_ssl_mode() == SslMode::Require => {
            return Err(fail(
                POSTGRES_URL_KEY,
                format!(
                    "sslmode=require needs the database's CA certificate ({CA_FILE_KEY}): \
                     TLS is verified against it, never against the machine's roots"
                ),
                &redactor,
            ));
        }
        None => {
            let (client, connection) = config
                .connect(NoTls)
                .await
                .map_err(|e| fail(POSTGRES_URL_KEY, connect_reason(&e), &redactor))?;
            drive(connection, redactor.clone(), shown_url.clone());
            client
        }
    };
    Ok(client)
}

/// The key of the database's CA file, named when that file is the problem.
const CA_FILE_KEY: &str = "postgres_ca_file";

/// Runs the connection's driver until it ends; a failure is logged, redacted.
fn drive<F>(connection: F, redactor: Arc<Redactor>, url: String)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(
                key = POSTGRES_URL_KEY,
                url = %url,
                error = %redactor.apply(&chain(&e)),
                "connection to PostgreSQL ended"
            );
        }
    });
}

/// Why a connection attempt failed, in words an operator can act on.
fn connect_reason(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("the database refused the connection: {}", db.message()),
        None => format!("cannot connect: {}", chain(e)),
    }
}

/// rustls (ring) trusting exactly the certificates of `ca_file`.
fn tls_config(ca_file: &Path) -> Result<rustls::ClientConfig, String> {
    let pem = std::fs::read(ca_file).map_err(|e| format!("cannot read the CA file: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("not a PEM certificate file: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("a certificate in the CA file is not usable: {e}"))?;
    }
    if roots.is_empty() {
        return Err("the CA file holds no certificate".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// An error and its causes, `outer: inner: …` (the driver's own text says only the outermost).
pub(crate) fn chain(e: &dyn StdError) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// `url` with the password of its user part replaced by `***`, for logs and errors. Handles both
/// forms the driver accepts: `postgres://user:password@host/db` and `key=value` pairs
/// (`password=…`, quoted or not).
pub fn redact_url(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest_start = scheme_end + 3;
        let rest = &url[rest_start..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        if let Some(at) = authority.rfind('@') {
            let userinfo = &authority[..at];
            if let Some(colon) = userinfo.find(':') {
                return format!(
                    "{}{}:***{}",
                    &url[..rest_start],
                    &userinfo[..colon],
                    &rest[at..]
                );
            }
        }
        return url.to_string();
    }
    // key=value form: replace the value of `password` (up to its closing quote or the next
    // whitespace).
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(pos) = find_password_key(rest) {
        let (before, after) = rest.split_at(pos);
        out.push_str(before);
        let after_eq = after.find('=').map_or(after.len(), |eq| eq + 1);
        out.push_str(&after[..after_eq]);
        let value = after[after_eq..].trim_start();
        let skipped = after.len() - after_eq - value.len();
        out.push_str(&after[after_eq..after_eq + skipped]);
        let value_len = if let Some(quoted) = value.strip_prefix('\'') {
            let mut end = quoted.len();
            let mut escaped = false;
            for (i, c) in quoted.char_indices() {
                match c {
                    '\\' if !escaped => escaped = true,
                    '\'' if !escaped => {
                        end = i + 1;
                        break;
                    }
                    _ => escaped = false,
                }
            }
            1 + end.min(quoted.len())
        } else {
            value.find(char::is_whitespace).unwrap_or(value.len())
        };
        out.push_str("***");
        rest = &value[value_len..];
    }
    out.push_str(rest);
    out
}

/// The start of a `password =` key in a key=value connection string.
fn find_password_key(text: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(found) = text[from..].find("password") {
        let at = from + found;
        let starts_word = at == 0 || text[..at].ends_with(char::is_whitespace);
        let after = text[at + "password".len()..].trim_start();
        if starts_word && after.starts_with('=') {
            return Some(at);
        }
        from = at + "password".len();
    }
    None
}

/// Replaces every known form of the password in a text.
#[derive(Debug, Default)]
struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    fn add(&mut self, secret: &str) {
        if !secret.is_empty() && !self.secrets.iter().any(|s| s == secret) {
            self.secrets.push(secret.to_string());
            // Longest first, so that a secret containing another is replaced whole.
            self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    /// The password as written in a URL's user part (possibly percent-encoded).
    fn add_url_password(&mut self, url: &str) {
        let redacted = redact_url(url);
        if redacted == url {
            return;
        }
        if let Some(scheme_end) = url.find("://") {
            let rest = &url[scheme_end + 3..];
            let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
            if let Some(at) = authority.rfind('@')
                && let Some(colon) = authority[..at].find(':')
            {
                self.add(&authority[colon + 1..at]);
            }
        }
    }

    fn apply(&self, text: &str) -> String {
        self.secrets
            .iter()
            .fold(text.to_string(), |text, secret| text.replace(secret, "***"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(
            redact_url("postgres://pw:s3cr%40t@db.example:5432/portwatch?sslmode=require"),
            "postgres://pw:***@db.example:5432/portwatch?sslmode=require"
        );
        assert_eq!(
            redact_url("postgresql://portwatch@127.0.0.1/postgres"),
            "postgresql://portwatch@127.0.0.1/postgres"
        );
        assert_eq!(
            redact_url("host=db user=pw password=hunter2 dbname=x"),
            "host=db user=pw password=*** dbname=x"
        );
        assert_eq!(
            redact_url("host=db password = 'a b\\' c' dbname=x"),
            "host=db password = *** dbname=x"
        );
    }

    #[test]
    fn the_redactor_replaces_every_form_of_the_password() {
        let mut r = Redactor::default();
        r.add("topsecret");
        r.add_url_password("postgres://u:top%20secret@h/db");
        let text = r.apply("saw topsecret and top%20secret");
        assert_eq!(text, "saw *** and ***");
    }

    #[tokio::test]
    async fn a_bad_url_names_the_key_and_hides_the_password() {
        let err = connect("postgres://u:hunter2@host:notaport/db", None, Some("other"))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("postgres_url ("), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[tokio::test]
    async fn tls_without_a_ca_file_is_refused_before_connecting() {
        let err = connect(
            "postgres://u:pw1@127.0.0.1:1/db?sslmode=require",
            None,
            None,
        )
        .await
        .unwrap_err();
        assert_eq!(err.key, POSTGRES_URL_KEY);
        assert!(err.reason.contains(CA_FILE_KEY), "{err}");
        assert!(!err.to_string().contains("pw1"), "{err}");
    }

    #[tokio::test]
    async fn a_missing_ca_file_names_its_key() {
        let err = connect(
            "postgres://u@127.0.0.1:1/db",
            Some(Path::new("/nonexistent/ca.pem")),
            None,
        )
        .await
        .unwrap_err();
        assert_eq!(err.key, CA_FILE_KEY);
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
