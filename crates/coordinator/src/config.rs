//! The coordinator's configuration: one struct, from a TOML file, every key
//! overridable by a flag and an environment variable.
//!
//! Precedence: flag or environment variable, then the file, then the default.
//! Everything is validated at start; an error names the key, the reason and
//! where the value came from (flag, environment variable, file line), and the
//! process exits non-zero before touching any state.
//!
//! Each setting is declared once, as a field of [`Args`]: its doc comment is the
//! help text, and the same struct read from TOML is the file's form
//! ([`FileConfig`]), so the file's keys are the flags' names. The mechanism
//! (layers, error type, file reading) is shared with the agent in
//! `portwatch-settings`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, Parser};
pub use portwatch_settings::ConfigError;
use portwatch_settings::layer;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;

use crate::plans::Plans;
use crate::store::postgres::PgSettings;

/// Command-line flags (each also an environment variable), and the keys of the
/// config file.
#[derive(Parser, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[command(
    name = "portwatch-coordinator",
    version,
    about = "portwatch coordinator"
)]
pub struct Args {
    /// TOML configuration file.
    #[arg(long, env = "PORTWATCH_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// gRPC listen address (agents and admin API). Port 0 picks a free port.
    #[arg(long, env = "PORTWATCH_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Prometheus `/metrics` listen address.
    #[arg(long, env = "PORTWATCH_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Directory of the sled store (required with `store = "sled"`).
    #[arg(long, env = "PORTWATCH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where the coordinator keeps its state: "sled" (embedded, one machine; the
    /// default) or "postgres" (a shared PostgreSQL database, `postgres_url`).
    #[arg(long, env = "PORTWATCH_STORE", value_name = "sled|postgres")]
    pub store: Option<String>,
    /// The PostgreSQL database (with `store = "postgres"`), as a URL
    /// (`postgres://user@host:5432/db`) or `key=value` pairs. Its password is
    /// better kept in `postgres_password_file` or PORTWATCH_POSTGRES_PASSWORD.
    #[arg(long, env = "PORTWATCH_POSTGRES_URL", hide_env_values = true)]
    pub postgres_url: Option<String>,
    /// CA certificate(s) (PEM) of the database's TLS certificate: TLS to the
    /// database, verified against this CA only.
    #[arg(long, env = "PORTWATCH_POSTGRES_CA_FILE")]
    pub postgres_ca_file: Option<PathBuf>,
    /// A file holding the database password (one line).
    #[arg(long, env = "PORTWATCH_POSTGRES_PASSWORD_FILE")]
    pub postgres_password_file: Option<PathBuf>,
    /// The database password, from the environment only (never a flag or the file).
    #[arg(
        long,
        env = "PORTWATCH_POSTGRES_PASSWORD",
        hide_env_values = true,
        hide = true
    )]
    #[serde(skip)]
    pub postgres_password: Option<String>,
    /// This coordinator's name in the active lease (default: host name and
    /// listen port); keep it stable across restarts.
    #[arg(long, env = "PORTWATCH_COORDINATOR_ID")]
    pub coordinator_id: Option<String>,
    /// How long the active coordinator's lease lasts without renewal, e.g.
    /// "10s" (PostgreSQL): how long a dead active coordinator leaves the
    /// others waiting.
    #[arg(long, env = "PORTWATCH_LEASE_TTL")]
    pub lease_ttl: Option<String>,
    /// Connections to PostgreSQL at most (default 8).
    #[arg(long, env = "PORTWATCH_POSTGRES_POOL_SIZE")]
    pub postgres_pool_size: Option<u32>,
    /// The operator's bearer token (at least 16 characters).
    #[arg(long, env = "PORTWATCH_OPERATOR_TOKEN", hide_env_values = true)]
    pub operator_token: Option<String>,
    /// Server certificate chain (PEM).
    #[arg(long, env = "PORTWATCH_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, env = "PORTWATCH_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) for client certificates: when set, clients must present one (mTLS).
    #[arg(long, env = "PORTWATCH_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// Serve without TLS. Only for a loopback listen address (local development).
    #[arg(long, env = "PORTWATCH_INSECURE_PLAINTEXT")]
    pub insecure_plaintext: bool,
    /// How long to keep result history, e.g. "30d".
    #[arg(long, env = "PORTWATCH_RETENTION")]
    pub retention: Option<String>,
    /// How often agents send heartbeats, e.g. "5s".
    #[arg(long, env = "PORTWATCH_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<String>,
    /// Silence after which an agent is considered gone, e.g. "15s".
    #[arg(long, env = "PORTWATCH_HEARTBEAT_TIMEOUT")]
    pub heartbeat_timeout: Option<String>,
    /// How long a region may be unknown before it stops holding recovery back.
    #[arg(long, env = "PORTWATCH_OFFLINE_GRACE")]
    pub offline_grace: Option<String>,
    /// How often every monitor is re-evaluated without new results, e.g. "1s".
    #[arg(long, env = "PORTWATCH_EVALUATE_EVERY")]
    pub evaluate_every: Option<String>,
    /// How long a probe region may have no live agent before the operator's
    /// channels get a "Probe region offline" notice, e.g. "10m".
    #[arg(long, env = "PORTWATCH_REGION_OFFLINE_GRACE")]
    pub region_offline_grace: Option<String>,
    /// When a region turns down, ask the other regions to check now ("true" or
    /// "false"; default true). Off: an outage waits for their next scheduled check.
    #[arg(long, env = "PORTWATCH_FAST_CONFIRMATION", value_name = "true|false")]
    pub fast_confirmation: Option<bool>,
    /// How far ahead of the coordinator's clock an agent's result may be stamped
    /// before it is refused, e.g. "10s".
    #[arg(long, env = "PORTWATCH_CLOCK_SKEW_ALLOWANCE")]
    pub clock_skew_allowance: Option<String>,
    /// sled's page cache, MiB (default 256; the process uses a few times this).
    #[arg(long, env = "PORTWATCH_STORE_CACHE_MIB")]
    pub store_cache_mib: Option<u64>,
    /// Let tenants' notification channels reach non-public addresses (test set-ups only).
    #[arg(long, env = "PORTWATCH_ALLOW_PRIVATE_CHANNEL_TARGETS")]
    pub allow_private_channel_targets: bool,
    /// Delay before the first retry of a failed notification, e.g. "10s".
    #[arg(long, env = "PORTWATCH_DELIVERY_RETRY_INITIAL")]
    pub delivery_retry_initial: Option<String>,
    /// Longest delay between two attempts of one notification, e.g. "1h".
    #[arg(long, env = "PORTWATCH_DELIVERY_RETRY_MAX")]
    pub delivery_retry_max: Option<String>,
    /// How long a notification is retried before it is marked failed, e.g. "24h".
    #[arg(long, env = "PORTWATCH_DELIVERY_RETRY_HORIZON")]
    pub delivery_retry_horizon: Option<String>,
    /// Time limit of one notification attempt (HTTP request, SMTP command), e.g. "15s".
    #[arg(long, env = "PORTWATCH_DELIVERY_TIMEOUT")]
    pub delivery_timeout: Option<String>,
    /// PEM bundle of extra CA certificates trusted by notification channels
    /// (SMTP TLS and webhook HTTPS), on top of the public roots.
    #[arg(long, env = "PORTWATCH_NOTIFY_CA_FILE")]
    pub notify_ca_file: Option<PathBuf>,
    /// Time a new connection has to finish its TLS handshake, e.g. "10s".
    #[arg(long, env = "PORTWATCH_TLS_HANDSHAKE_TIMEOUT")]
    pub tls_handshake_timeout: Option<String>,
    /// Time a connection has, from accept, to make one authenticated request
    /// (admin call or agent stream with a valid token) before it is closed, e.g. "30s".
    #[arg(long, env = "PORTWATCH_UNAUTHENTICATED_IDLE_TIMEOUT")]
    pub unauthenticated_idle_timeout: Option<String>,
    /// Most connections open at once from one source address (IPv6: one /64).
    #[arg(long, env = "PORTWATCH_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<u32>,
    /// Most connections open at once in all (also kept below the open-file limit).
    #[arg(long, env = "PORTWATCH_MAX_CONNECTIONS")]
    pub max_connections: Option<u32>,
    /// Log format: human or json.
    #[arg(long, env = "PORTWATCH_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Log filter, e.g. "info" or "portwatch_coordinator=debug".
    #[arg(long, env = "PORTWATCH_LOG")]
    pub log: Option<String>,
    /// Subscription plans (file only: a table per plan).
    #[arg(skip)]
    pub plans: Option<Plans>,
    /// Store maintenance instead of running the coordinator.
    #[command(subcommand)]
    #[serde(skip)]
    pub command: Option<StoreCommand>,
}

/// `portwatch-coordinator backup|restore`: the store as one file (the
/// coordinator must be stopped; see `store::backup`).
#[derive(clap::Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum StoreCommand {
    /// Write the whole store in DATA_DIR to FILE (a new file, mode 0600).
    Backup {
        /// The stopped coordinator's data directory.
        #[arg(long, env = "PORTWATCH_DATA_DIR")]
        data_dir: PathBuf,
        /// The backup file to create.
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a backup file, then restore it into DATA_DIR (new or empty).
    Restore {
        /// The backup file.
        #[arg(long = "in", value_name = "FILE")]
        input: PathBuf,
        /// The data directory to create (move a damaged one aside first).
        #[arg(long, env = "PORTWATCH_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Check a backup file without restoring it.
    Verify {
        /// The backup file.
        #[arg(long = "in", value_name = "FILE")]
        input: PathBuf,
    },
}

/// The file form: the flags' struct, read from TOML (every key optional,
/// `plans` only here); unknown keys are errors.
pub type FileConfig = Args;

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// TLS material.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// Extra trust roots for notification channels, read and checked at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifyCa {
    /// Where they came from (for messages).
    pub path: PathBuf,
    /// The certificates of the bundle (DER), each usable as a trust anchor.
    pub certs: Vec<CertificateDer<'static>>,
}

/// Deadlines and caps of the listener (`listener`), from the configuration keys
/// of the same names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub tls_handshake_timeout: Duration,
    pub unauthenticated_idle_timeout: Duration,
    pub max_connections_per_ip: u32,
    pub max_connections: u32,
}

/// The backend of the coordinator's store (`store`).
#[derive(Clone, PartialEq, Eq)]
pub enum StoreChoice {
    /// The embedded sled store in `data_dir`.
    Sled,
    /// A shared PostgreSQL database.
    Postgres(PgSettings),
}

impl std::fmt::Debug for StoreChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreChoice::Sled => f.write_str("Sled"),
            // Never the password, wherever it came from.
            StoreChoice::Postgres(s) => f
                .debug_struct("Postgres")
                .field("url", &crate::store::postgres::redact_url(&s.url))
                .field("ca_file", &s.ca_file)
                .field("password", &s.password.as_ref().map(|_| "***"))
                .field("pool_size", &s.pool_size)
                .finish(),
        }
    }
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    /// The sled store's directory (empty with `store = "postgres"`).
    pub data_dir: PathBuf,
    /// Which backend keeps the coordinator's state.
    pub store: StoreChoice,
    /// This coordinator's name in the active lease (None: host name and
    /// listen port, decided once the port is bound).
    pub coordinator_id: Option<String>,
    /// The active lease's time to live (PostgreSQL).
    pub lease_ttl: Duration,
    pub operator_token: String,
    /// None only with `insecure_plaintext` on a loopback address.
    pub tls: Option<Tls>,
    pub retention: Duration,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub offline_grace: Duration,
    pub evaluate_every: Duration,
    /// A region with no live agent this long gets one offline notice.
    pub region_offline_grace: Duration,
    /// Send check-now to the other regions when one region turns down (default
    /// on). Off spares a failing target the extra probe from every other region
    /// (check-now doubles their checks of it in that interval), at the cost of
    /// deciding an outage up to one interval later.
    pub fast_confirmation: bool,
    /// A result stamped more than this ahead of the coordinator's clock, or
    /// more than this before its monitor was created, is refused (counted, not
    /// stored): one result from the future would otherwise hold its region's
    /// latest result still until that time came.
    pub clock_skew_allowance: Duration,
    /// sled's cache capacity in bytes. sled's resident memory is a few times
    /// its cache setting; sled's own default (1 GiB) let a coordinator with
    /// 100k monitors grow past 3 GiB (BENCHMARKS.md, figure 7).
    pub store_cache_bytes: u64,
    /// Tenants' channels may reach non-public addresses (tests only).
    pub allow_private_channel_targets: bool,
    /// Retry schedule of the notification outbox.
    pub delivery_retry_initial: Duration,
    pub delivery_retry_max: Duration,
    pub delivery_retry_horizon: Duration,
    /// Time limit of one notification attempt.
    pub delivery_timeout: Duration,
    /// Private CA(s) trusted for SMTP TLS and webhook HTTPS in addition to
    /// the public roots; None: the public roots only.
    pub notify_ca: Option<NotifyCa>,
    /// Deadlines and caps of the gRPC listener (handshake, unauthenticated
    /// idle time, connections per source address and in all).
    pub connections: ConnectionLimits,
    pub log_format: LogFormat,
    pub log: String,
    pub plans: Plans,
}

impl Config {
    /// Reads the file named by `args.config` (if any) and merges the flags over it.
    pub fn load(args: Args) -> Result<Config, ConfigError> {
        let path = args.config.clone();
        portwatch_settings::load(args, path.as_deref(), &Args::command(), Config::merge)
    }

    /// Merges flags over a parsed file and validates the result.
    pub fn merge(args: Args, mut file: FileConfig) -> Result<Config, ConfigError> {
        let plans = file.plans.take().unwrap_or_default();
        let listen = layer!(args, file, listen).or(SocketAddr::from(([127, 0, 0, 1], 7400)));
        let store = store_choice(&args, &file)?;
        let data_dir = match store {
            StoreChoice::Sled => layer!(args, file, data_dir)
                .required("required (the directory of the sled store)")?,
            StoreChoice::Postgres(_) => layer!(args, file, data_dir).or_else(PathBuf::new),
        };
        let token = layer!(args, file, operator_token);
        let operator_token = token
            .clone()
            .required("required (or PORTWATCH_OPERATOR_TOKEN)")?;
        if operator_token.len() < 16 {
            return Err(token.error("must be at least 16 characters"));
        }
        if operator_token
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(token.error("must not contain whitespace or control characters"));
        }
        let insecure_plaintext = layer!(args, file, insecure_plaintext);
        let insecure = insecure_plaintext.clone().or(false);
        let cert = layer!(args, file, tls_cert);
        let key = layer!(args, file, tls_key);
        let client_ca = layer!(args, file, client_ca).get();
        let tls = match (cert.clone().get(), key.clone().get()) {
            (Some(cert), Some(key)) => Some(Tls {
                cert,
                key,
                client_ca,
            }),
            (Some(_), None) => return Err(key.error("required when tls_cert is set")),
            (None, Some(_)) => return Err(cert.error("required when tls_key is set")),
            (None, None) if insecure => {
                if !listen.ip().is_loopback() {
                    return Err(insecure_plaintext.error(format!(
                        "only allowed on a loopback listen address, not {listen}"
                    )));
                }
                None
            }
            (None, None) => {
                return Err(
                    cert.error("required (or set insecure_plaintext for loopback development)")
                );
            }
        };
        let heartbeat_interval = layer!(args, file, heartbeat_interval).duration(
            "5s",
            Duration::from_millis(100),
            Duration::from_secs(300),
        )?;
        let timeout = layer!(args, file, heartbeat_timeout);
        let heartbeat_timeout = timeout.clone().duration(
            "15s",
            Duration::from_millis(300),
            Duration::from_secs(900),
        )?;
        if heartbeat_timeout <= heartbeat_interval {
            return Err(timeout.error("must be longer than heartbeat_interval"));
        }
        let delivery_retry_initial = layer!(args, file, delivery_retry_initial).duration(
            "10s",
            Duration::from_millis(10),
            Duration::from_secs(3600),
        )?;
        let retry_max = layer!(args, file, delivery_retry_max);
        let delivery_retry_max = retry_max.clone().duration(
            "1h",
            Duration::from_millis(10),
            Duration::from_secs(86_400),
        )?;
        if delivery_retry_max < delivery_retry_initial {
            return Err(retry_max.error("must not be shorter than delivery_retry_initial"));
        }
        let json = layer!(args, file, log_format)
            .parse(|f| portwatch_telemetry::json_logs(Some(&f)))?
            .unwrap_or(false);
        let log_format = if json {
            LogFormat::Json
        } else {
            LogFormat::Human
        };
        let notify_ca = layer!(args, file, notify_ca_file).parse(read_notify_ca)?;
        let connections = ConnectionLimits {
            tls_handshake_timeout: layer!(args, file, tls_handshake_timeout).duration(
                "10s",
                Duration::from_millis(100),
                Duration::from_secs(300),
            )?,
            unauthenticated_idle_timeout: layer!(args, file, unauthenticated_idle_timeout)
                .duration("30s", Duration::from_millis(100), Duration::from_secs(3600))?,
            max_connections_per_ip: layer!(args, file, max_connections_per_ip)
                .within(64, 1..=1_000_000)?,
            max_connections: layer!(args, file, max_connections).within(10_000, 1..=1_000_000)?,
        };
        Ok(Config {
            listen,
            metrics_listen: layer!(args, file, metrics_listen).get(),
            data_dir,
            store,
            coordinator_id: layer!(args, file, coordinator_id).parse(|id: String| {
                if id.is_empty() || id.len() > 200 || id.chars().any(char::is_control) {
                    Err("must be 1 to 200 characters, no control characters".to_string())
                } else {
                    Ok(id)
                }
            })?,
            lease_ttl: layer!(args, file, lease_ttl).duration(
                "10s",
                Duration::from_secs(1),
                Duration::from_secs(300),
            )?,
            operator_token,
            tls,
            retention: layer!(args, file, retention).duration(
                "30d",
                Duration::from_secs(60),
                Duration::from_secs(3650 * 86_400),
            )?,
            heartbeat_interval,
            heartbeat_timeout,
            offline_grace: layer!(args, file, offline_grace).duration(
                "10m",
                Duration::from_secs(1),
                Duration::from_secs(7 * 86_400),
            )?,
            evaluate_every: layer!(args, file, evaluate_every).duration(
                "1s",
                Duration::from_millis(100),
                Duration::from_secs(60),
            )?,
            region_offline_grace: layer!(args, file, region_offline_grace).duration(
                "10m",
                Duration::from_millis(100),
                Duration::from_secs(7 * 86_400),
            )?,
            fast_confirmation: layer!(args, file, fast_confirmation).or(true),
            clock_skew_allowance: layer!(args, file, clock_skew_allowance).duration(
                "10s",
                Duration::from_millis(100),
                Duration::from_secs(3600),
            )?,
            store_cache_bytes: layer!(args, file, store_cache_mib)
                .within(crate::store::DEFAULT_CACHE_MIB, 16..=65_536)?
                * 1024
                * 1024,
            allow_private_channel_targets: layer!(args, file, allow_private_channel_targets)
                .or(false),
            delivery_retry_initial,
            delivery_retry_max,
            delivery_retry_horizon: layer!(args, file, delivery_retry_horizon).duration(
                "24h",
                Duration::from_secs(1),
                Duration::from_secs(30 * 86_400),
            )?,
            delivery_timeout: layer!(args, file, delivery_timeout).duration(
                "15s",
                Duration::from_millis(100),
                Duration::from_secs(300),
            )?,
            notify_ca,
            connections,
            log_format,
            log: layer!(args, file, log).or_else(|| "info".to_string()),
            plans,
        })
    }
}

/// The `store` key and, for PostgreSQL, the `postgres_*` keys it needs. Files named here are
/// read now, so a wrong path stops the start naming its key.
fn store_choice(args: &Args, file: &FileConfig) -> Result<StoreChoice, ConfigError> {
    // `layer!` takes its fields by value; `merge` still needs the rest of both.
    macro_rules! layer {
        ($args:expr, $file:expr, $key:ident) => {
            portwatch_settings::Setting::new(
                stringify!($key),
                $args.$key.clone(),
                $file.$key.clone(),
            )
        };
    }
    let kind = layer!(args, file, store);
    let kind_err = kind.clone();
    match kind.or_else(|| "sled".into()).as_str() {
        "sled" => return Ok(StoreChoice::Sled),
        "postgres" => {}
        other => {
            return Err(kind_err.error(format!(
                "{other:?} is not a store: \"sled\" (embedded, one machine) or \"postgres\""
            )));
        }
    }
    let url = layer!(args, file, postgres_url).required(
        "required with store = \"postgres\" (e.g. postgres://portwatch@db:5432/portwatch)",
    )?;
    let ca_file = layer!(args, file, postgres_ca_file).parse(|path: PathBuf| {
        std::fs::metadata(&path)
            .map(|_| path.clone())
            .map_err(|e| format!("{}: {e}", path.display()))
    })?;
    let from_env = args.postgres_password.clone().filter(|p| !p.is_empty());
    let password_file = layer!(args, file, postgres_password_file);
    let password_file_err = password_file.clone();
    let from_file = password_file.parse(|path: PathBuf| {
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let line = text.lines().next().unwrap_or_default().to_string();
        if line.is_empty() {
            return Err(format!(
                "{}: empty (expected the password on its first line)",
                path.display()
            ));
        }
        Ok(line)
    })?;
    if from_env.is_some() && from_file.is_some() {
        return Err(
            password_file_err.error("set either this or PORTWATCH_POSTGRES_PASSWORD, not both")
        );
    }
    let pool_size = layer!(args, file, postgres_pool_size).within(
        u32::try_from(crate::store::postgres::DEFAULT_POOL_SIZE).unwrap_or(8),
        1..=1_000,
    )?;
    Ok(StoreChoice::Postgres(PgSettings {
        url,
        ca_file,
        password: from_file.or(from_env),
        pool_size: usize::try_from(pool_size).unwrap_or(8),
    }))
}

/// Reads a PEM bundle of CA certificates: at least one, each usable as a
/// trust anchor. Other PEM sections (a stray key, say) are ignored. An error
/// is the reason; the caller names the key (`notify_ca_file`).
fn read_notify_ca(path: PathBuf) -> Result<NotifyCa, String> {
    let shown = path.display().to_string();
    let pem = std::fs::read(&path).map_err(|e| format!("{shown}: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{shown}: not a PEM file: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "{shown}: no certificate in it (expected PEM \"BEGIN CERTIFICATE\" blocks)"
        ));
    }
    for (i, cert) in certs.iter().enumerate() {
        let mut store = rustls::RootCertStore::empty();
        store
            .add(cert.clone())
            .map_err(|e| format!("{shown}: certificate {} is not usable as a CA: {e}", i + 1))?;
    }
    Ok(NotifyCa { path, certs })
}

#[cfg(test)]
mod tests;
