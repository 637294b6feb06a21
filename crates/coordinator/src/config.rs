//! The coordinator's configuration: one struct, from a TOML file, every key
//! overridable by a flag and an environment variable.
//!
//! Precedence: flag or environment variable, then the file, then the default.
//! Everything is validated at start; an error names the key and the reason and
//! the process exits non-zero before touching any state.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;

use crate::listener::ConnectionLimits;
use crate::plans::Plans;

/// Command-line flags (each also an environment variable).
#[derive(Parser, Debug, Default)]
#[command(
    name = "portwatch-coordinator",
    version,
    about = "portwatch coordinator"
)]
pub struct Args {
    /// TOML configuration file.
    #[arg(long, env = "PORTWATCH_CONFIG")]
    pub config: Option<PathBuf>,
    /// gRPC listen address (agents and admin API). Port 0 picks a free port.
    #[arg(long, env = "PORTWATCH_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Prometheus `/metrics` listen address.
    #[arg(long, env = "PORTWATCH_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Directory of the sled store.
    #[arg(long, env = "PORTWATCH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
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
    /// Store maintenance instead of running the coordinator.
    #[command(subcommand)]
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

/// The file form: every key optional; unknown keys are errors.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub operator_token: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    pub insecure_plaintext: Option<bool>,
    pub retention: Option<String>,
    pub heartbeat_interval: Option<String>,
    pub heartbeat_timeout: Option<String>,
    pub offline_grace: Option<String>,
    pub evaluate_every: Option<String>,
    pub region_offline_grace: Option<String>,
    pub fast_confirmation: Option<bool>,
    pub clock_skew_allowance: Option<String>,
    pub store_cache_mib: Option<u64>,
    pub allow_private_channel_targets: Option<bool>,
    pub delivery_retry_initial: Option<String>,
    pub delivery_retry_max: Option<String>,
    pub delivery_retry_horizon: Option<String>,
    pub delivery_timeout: Option<String>,
    pub notify_ca_file: Option<PathBuf>,
    pub tls_handshake_timeout: Option<String>,
    pub unauthenticated_idle_timeout: Option<String>,
    pub max_connections_per_ip: Option<u32>,
    pub max_connections: Option<u32>,
    pub log_format: Option<String>,
    pub log: Option<String>,
    pub plans: Option<Plans>,
}

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

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
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

/// A configuration error: the key and the reason. The file itself (key
/// `config`: unreadable, not TOML, an unknown key) reads "config file PATH: …",
/// never "config: config: …".
#[derive(Debug, thiserror::Error)]
#[error("{}", describe(self.key, &self.reason))]
pub struct ConfigError {
    pub key: &'static str,
    pub reason: String,
}

fn describe(key: &str, reason: &str) -> String {
    if key == "config" {
        format!("config file {reason}")
    } else {
        format!("config: {key}: {reason}")
    }
}

fn err(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key,
        reason: reason.into(),
    }
}

fn duration(
    key: &'static str,
    v: Option<String>,
    default: &str,
    min: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    let s = v.unwrap_or_else(|| default.to_string());
    let d = humantime::parse_duration(&s).map_err(|e| err(key, format!("{s:?}: {e}")))?;
    if d < min || d > max {
        return Err(err(
            key,
            format!(
                "{s:?} is out of range; must be {}-{}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(d)
}

impl Config {
    /// Reads the file named by `args.config` (if any) and merges the flags over it.
    pub fn load(args: Args) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Config::merge(args, file)
    }

    /// Merges flags over a parsed file and validates the result.
    pub fn merge(args: Args, file: FileConfig) -> Result<Config, ConfigError> {
        let listen = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7400)));
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .ok_or_else(|| err("data_dir", "required (the directory of the sled store)"))?;
        let operator_token = args
            .operator_token
            .or(file.operator_token)
            .ok_or_else(|| err("operator_token", "required (or PORTWATCH_OPERATOR_TOKEN)"))?;
        if operator_token.len() < 16 {
            return Err(err("operator_token", "must be at least 16 characters"));
        }
        if operator_token
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(err(
                "operator_token",
                "must not contain whitespace or control characters",
            ));
        }
        let insecure = args.insecure_plaintext || file.insecure_plaintext.unwrap_or(false);
        let cert = args.tls_cert.or(file.tls_cert);
        let key = args.tls_key.or(file.tls_key);
        let client_ca = args.client_ca.or(file.client_ca);
        let tls = match (cert, key) {
            (Some(cert), Some(key)) => Some(Tls {
                cert,
                key,
                client_ca,
            }),
            (Some(_), None) => return Err(err("tls_key", "required when tls_cert is set")),
            (None, Some(_)) => return Err(err("tls_cert", "required when tls_key is set")),
            (None, None) if insecure => {
                if !listen.ip().is_loopback() {
                    return Err(err(
                        "insecure_plaintext",
                        format!("only allowed on a loopback listen address, not {listen}"),
                    ));
                }
                None
            }
            (None, None) => {
                return Err(err(
                    "tls_cert",
                    "required (or set insecure_plaintext for loopback development)",
                ));
            }
        };
        let heartbeat_interval = duration(
            "heartbeat_interval",
            args.heartbeat_interval.or(file.heartbeat_interval),
            "5s",
            Duration::from_millis(100),
            Duration::from_secs(300),
        )?;
        let heartbeat_timeout = duration(
            "heartbeat_timeout",
            args.heartbeat_timeout.or(file.heartbeat_timeout),
            "15s",
            Duration::from_millis(300),
            Duration::from_secs(900),
        )?;
        if heartbeat_timeout <= heartbeat_interval {
            return Err(err(
                "heartbeat_timeout",
                "must be longer than heartbeat_interval",
            ));
        }
        let delivery_retry_initial = duration(
            "delivery_retry_initial",
            args.delivery_retry_initial.or(file.delivery_retry_initial),
            "10s",
            Duration::from_millis(10),
            Duration::from_secs(3600),
        )?;
        let delivery_retry_max = duration(
            "delivery_retry_max",
            args.delivery_retry_max.or(file.delivery_retry_max),
            "1h",
            Duration::from_millis(10),
            Duration::from_secs(86_400),
        )?;
        if delivery_retry_max < delivery_retry_initial {
            return Err(err(
                "delivery_retry_max",
                "must not be shorter than delivery_retry_initial",
            ));
        }
        let json = portwatch_telemetry::json_logs(args.log_format.or(file.log_format).as_deref())
            .map_err(|e| err("log_format", e))?;
        let log_format = if json {
            LogFormat::Json
        } else {
            LogFormat::Human
        };
        let notify_ca = match args.notify_ca_file.or(file.notify_ca_file) {
            Some(path) => Some(read_notify_ca(path)?),
            None => None,
        };
        let connections = ConnectionLimits {
            tls_handshake_timeout: duration(
                "tls_handshake_timeout",
                args.tls_handshake_timeout.or(file.tls_handshake_timeout),
                "10s",
                Duration::from_millis(100),
                Duration::from_secs(300),
            )?,
            unauthenticated_idle_timeout: duration(
                "unauthenticated_idle_timeout",
                args.unauthenticated_idle_timeout
                    .or(file.unauthenticated_idle_timeout),
                "30s",
                Duration::from_millis(100),
                Duration::from_secs(3600),
            )?,
            max_connections_per_ip: count(
                "max_connections_per_ip",
                args.max_connections_per_ip.or(file.max_connections_per_ip),
                64,
            )?,
            max_connections: count(
                "max_connections",
                args.max_connections.or(file.max_connections),
                10_000,
            )?,
        };
        Ok(Config {
            listen,
            metrics_listen: args.metrics_listen.or(file.metrics_listen),
            data_dir,
            operator_token,
            tls,
            retention: duration(
                "retention",
                args.retention.or(file.retention),
                "30d",
                Duration::from_secs(60),
                Duration::from_secs(3650 * 86_400),
            )?,
            heartbeat_interval,
            heartbeat_timeout,
            offline_grace: duration(
                "offline_grace",
                args.offline_grace.or(file.offline_grace),
                "10m",
                Duration::from_secs(1),
                Duration::from_secs(7 * 86_400),
            )?,
            evaluate_every: duration(
                "evaluate_every",
                args.evaluate_every.or(file.evaluate_every),
                "1s",
                Duration::from_millis(100),
                Duration::from_secs(60),
            )?,
            region_offline_grace: duration(
                "region_offline_grace",
                args.region_offline_grace.or(file.region_offline_grace),
                "10m",
                Duration::from_millis(100),
                Duration::from_secs(7 * 86_400),
            )?,
            fast_confirmation: args
                .fast_confirmation
                .or(file.fast_confirmation)
                .unwrap_or(true),
            clock_skew_allowance: duration(
                "clock_skew_allowance",
                args.clock_skew_allowance.or(file.clock_skew_allowance),
                "10s",
                Duration::from_millis(100),
                Duration::from_secs(3600),
            )?,
            store_cache_bytes: store_cache_bytes(args.store_cache_mib.or(file.store_cache_mib))?,
            allow_private_channel_targets: args.allow_private_channel_targets
                || file.allow_private_channel_targets.unwrap_or(false),
            delivery_retry_initial,
            delivery_retry_max,
            delivery_retry_horizon: duration(
                "delivery_retry_horizon",
                args.delivery_retry_horizon.or(file.delivery_retry_horizon),
                "24h",
                Duration::from_secs(1),
                Duration::from_secs(30 * 86_400),
            )?,
            delivery_timeout: duration(
                "delivery_timeout",
                args.delivery_timeout.or(file.delivery_timeout),
                "15s",
                Duration::from_millis(100),
                Duration::from_secs(300),
            )?,
            notify_ca,
            connections,
            log_format,
            log: args.log.or(file.log).unwrap_or_else(|| "info".to_string()),
            plans: file.plans.unwrap_or_default(),
        })
    }
}

/// Reads a PEM bundle of CA certificates: at least one, each usable as a
/// trust anchor. Other PEM sections (a stray key, say) are ignored.
fn read_notify_ca(path: PathBuf) -> Result<NotifyCa, ConfigError> {
    const KEY: &str = "notify_ca_file";
    let shown = path.display().to_string();
    let pem = std::fs::read(&path).map_err(|e| err(KEY, format!("{shown}: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(KEY, format!("{shown}: not a PEM file: {e}")))?;
    if certs.is_empty() {
        return Err(err(
            KEY,
            format!("{shown}: no certificate in it (expected PEM \"BEGIN CERTIFICATE\" blocks)"),
        ));
    }
    for (i, cert) in certs.iter().enumerate() {
        let mut store = rustls::RootCertStore::empty();
        store.add(cert.clone()).map_err(|e| {
            err(
                KEY,
                format!("{shown}: certificate {} is not usable as a CA: {e}", i + 1),
            )
        })?;
    }
    Ok(NotifyCa { path, certs })
}

/// A connection count: 1 to 1,000,000.
fn count(key: &'static str, v: Option<u32>, default: u32) -> Result<u32, ConfigError> {
    let n = v.unwrap_or(default);
    if !(1..=1_000_000).contains(&n) {
        return Err(err(key, format!("{n} is out of range (1 to 1000000)")));
    }
    Ok(n)
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    portwatch_telemetry::read_toml(path).map_err(|e| err("config", e))
}

fn store_cache_bytes(mib: Option<u64>) -> Result<u64, ConfigError> {
    let mib = mib.unwrap_or(crate::store::DEFAULT_CACHE_MIB);
    if !(16..=65_536).contains(&mib) {
        return Err(err(
            "store_cache_mib",
            format!("{mib} is out of range (16 to 65536)"),
        ));
    }
    Ok(mib * 1024 * 1024)
}

#[cfg(test)]
mod tests;
