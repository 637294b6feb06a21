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

use crate::listener::ConnectionLimits;
use crate::plans::Plans;

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
        let data_dir =
            layer!(args, file, data_dir).required("required (the directory of the sled store)")?;
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
mod tests {
    use super::*;

    fn args() -> Args {
        Args {
            data_dir: Some("/tmp/x".into()),
            operator_token: Some("0123456789abcdef".into()),
            insecure_plaintext: true,
            ..Args::default()
        }
    }

    #[test]
    fn defaults_apply_and_flags_beat_the_file() {
        let file: FileConfig =
            toml::from_str("retention = \"7d\"\nheartbeat_interval = \"2s\"\n").unwrap();
        let c = Config::merge(
            Args {
                heartbeat_interval: Some("1s".into()),
                ..args()
            },
            file,
        )
        .unwrap();
        assert_eq!(c.retention, Duration::from_secs(7 * 86_400));
        assert_eq!(c.heartbeat_interval, Duration::from_secs(1));
        assert_eq!(c.offline_grace, Duration::from_secs(600));
        assert_eq!(c.region_offline_grace, Duration::from_secs(600));
        assert!(!c.allow_private_channel_targets);
        assert!(c.fast_confirmation, "fast confirmation is on by default");
        assert_eq!(c.store_cache_bytes, 256 * 1024 * 1024);
        assert_eq!(
            (
                c.delivery_retry_initial,
                c.delivery_retry_max,
                c.delivery_retry_horizon
            ),
            (
                Duration::from_secs(10),
                Duration::from_secs(3600),
                Duration::from_secs(86_400)
            )
        );
        let file: FileConfig = toml::from_str(
            "allow_private_channel_targets = true\nregion_offline_grace = \"1s\"\ndelivery_retry_initial = \"100ms\"\ndelivery_retry_max = \"400ms\"\n",
        )
        .unwrap();
        let c = Config::merge(args(), file).unwrap();
        assert!(c.allow_private_channel_targets);
        assert_eq!(c.region_offline_grace, Duration::from_secs(1));
        assert_eq!(c.delivery_retry_max, Duration::from_millis(400));
        assert_eq!(c.listen, "127.0.0.1:7400".parse().unwrap());
    }

    #[test]
    fn fast_confirmation_is_a_boolean_from_the_file_or_the_flag() {
        let off = || toml::from_str::<FileConfig>("fast_confirmation = false").unwrap();
        assert!(!Config::merge(args(), off()).unwrap().fast_confirmation);
        let flag_on = Args {
            fast_confirmation: Some(true),
            ..args()
        };
        assert!(
            Config::merge(flag_on, off()).unwrap().fast_confirmation,
            "the flag beats the file"
        );
        let parsed =
            Args::try_parse_from(["portwatch-coordinator", "--fast-confirmation", "false"])
                .unwrap();
        assert_eq!(parsed.fast_confirmation, Some(false));

        // Anything but a boolean is refused, naming the key (file) or the flag.
        for bad in ["fast_confirmation = \"no\"", "fast_confirmation = 0"] {
            let e = toml::from_str::<FileConfig>(bad).unwrap_err().to_string();
            assert!(e.contains("fast_confirmation"), "{bad}: {e}");
        }
        let e = Args::try_parse_from(["portwatch-coordinator", "--fast-confirmation", "maybe"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--fast-confirmation"), "{e}");
    }

    #[test]
    fn connection_limits_have_defaults_flags_and_bounds() {
        let file = |t: &str| toml::from_str::<FileConfig>(t).unwrap();
        let c = Config::merge(args(), FileConfig::default()).unwrap();
        assert_eq!(
            c.connections,
            ConnectionLimits {
                tls_handshake_timeout: Duration::from_secs(10),
                unauthenticated_idle_timeout: Duration::from_secs(30),
                max_connections_per_ip: 64,
                max_connections: 10_000,
            }
        );
        let c = Config::merge(
            Args {
                max_connections_per_ip: Some(8),
                ..args()
            },
            file(
                "tls_handshake_timeout = \"2s\"\nunauthenticated_idle_timeout = \"1m\"\nmax_connections_per_ip = 500\nmax_connections = 100\n",
            ),
        )
        .unwrap();
        assert_eq!(c.connections.tls_handshake_timeout, Duration::from_secs(2));
        assert_eq!(
            c.connections.unauthenticated_idle_timeout,
            Duration::from_secs(60)
        );
        assert_eq!(c.connections.max_connections_per_ip, 8, "the flag wins");
        assert_eq!(c.connections.max_connections, 100);
        let parsed = Args::try_parse_from([
            "portwatch-coordinator",
            "--tls-handshake-timeout",
            "3s",
            "--unauthenticated-idle-timeout",
            "20s",
            "--max-connections-per-ip",
            "16",
            "--max-connections",
            "2000",
        ])
        .unwrap();
        assert_eq!(parsed.tls_handshake_timeout.as_deref(), Some("3s"));
        assert_eq!(parsed.unauthenticated_idle_timeout.as_deref(), Some("20s"));
        assert_eq!(parsed.max_connections_per_ip, Some(16));
        assert_eq!(parsed.max_connections, Some(2000));

        for (bad, key, why) in [
            (
                "tls_handshake_timeout = \"10ms\"",
                "tls_handshake_timeout",
                "out of range",
            ),
            (
                "tls_handshake_timeout = \"soon\"",
                "tls_handshake_timeout",
                "soon",
            ),
            (
                "unauthenticated_idle_timeout = \"2h\"",
                "unauthenticated_idle_timeout",
                "out of range",
            ),
            (
                "max_connections_per_ip = 0",
                "max_connections_per_ip",
                "out of range",
            ),
            ("max_connections = 0", "max_connections", "out of range"),
            (
                "max_connections = 2000000",
                "max_connections",
                "out of range",
            ),
        ] {
            let e = Config::merge(args(), file(bad)).unwrap_err();
            assert_eq!(e.key, key, "{bad}: {e}");
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
        for bad in ["max_connections = -1", "max_connections_per_ip = \"many\""] {
            let e = toml::from_str::<FileConfig>(bad).unwrap_err().to_string();
            assert!(e.contains("max_connections"), "{bad}: {e}");
        }
    }

    #[test]
    fn store_cache_is_mebibytes_within_bounds() {
        let file = |t: &str| toml::from_str::<FileConfig>(t).unwrap();
        let c = Config::merge(args(), file("store_cache_mib = 64")).unwrap();
        assert_eq!(c.store_cache_bytes, 64 * 1024 * 1024);
        for bad in ["store_cache_mib = 8", "store_cache_mib = 100000"] {
            let e = Config::merge(args(), file(bad)).unwrap_err().to_string();
            assert!(
                e.contains("store_cache_mib") && e.contains("out of range"),
                "{bad}: {e}"
            );
        }
        let e = toml::from_str::<FileConfig>("store_cache_mib = \"big\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("store_cache_mib"), "{e}");
    }

    #[test]
    fn errors_name_the_key() {
        let cases: Vec<(Args, &str, &str)> = vec![
            (
                Args {
                    data_dir: None,
                    ..args()
                },
                "",
                "data_dir",
            ),
            (
                Args {
                    operator_token: Some("short".into()),
                    ..args()
                },
                "",
                "operator_token",
            ),
            (
                Args {
                    insecure_plaintext: false,
                    ..args()
                },
                "",
                "tls_cert",
            ),
            (
                Args {
                    listen: Some("0.0.0.0:7400".parse().unwrap()),
                    ..args()
                },
                "",
                "insecure_plaintext",
            ),
            (
                Args {
                    tls_cert: Some("c.pem".into()),
                    ..args()
                },
                "",
                "tls_key",
            ),
            (args(), "retention = \"soon\"", "retention"),
            (
                args(),
                "heartbeat_interval = \"20s\"\nheartbeat_timeout = \"10s\"",
                "heartbeat_timeout",
            ),
            (args(), "log_format = \"xml\"", "log_format"),
            (
                args(),
                "delivery_retry_initial = \"10s\"\ndelivery_retry_max = \"1s\"",
                "delivery_retry_max",
            ),
            (
                args(),
                "delivery_retry_horizon = \"90d\"",
                "delivery_retry_horizon",
            ),
            (
                args(),
                "region_offline_grace = \"never\"",
                "region_offline_grace",
            ),
        ];
        for (a, toml_text, key) in cases {
            let file: FileConfig = toml::from_str(toml_text).unwrap();
            let e = Config::merge(a, file).unwrap_err();
            assert_eq!(e.key, key, "{e}");
        }
        assert!(
            toml::from_str::<FileConfig>("listen_addr = \"x\"").is_err(),
            "unknown keys are errors"
        );
    }

    #[test]
    fn notify_ca_file_is_read_and_checked_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::merge(args(), FileConfig::default()).unwrap();
        assert_eq!(c.notify_ca, None, "the public roots only by default");

        let ca = rcgen::generate_simple_self_signed(vec!["smtp.internal".to_string()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["hooks.internal".to_string()]).unwrap();
        let bundle = dir.path().join("bundle.pem");
        std::fs::write(&bundle, format!("{}{}", ca.cert.pem(), other.cert.pem())).unwrap();
        let file: FileConfig = toml::from_str(&format!(
            "notify_ca_file = {:?}",
            bundle.display().to_string()
        ))
        .unwrap();
        let c = Config::merge(args(), file).unwrap();
        let got = c.notify_ca.unwrap();
        assert_eq!(got.path, bundle);
        assert_eq!(
            got.certs,
            vec![ca.cert.der().clone(), other.cert.der().clone()]
        );

        let key_only = dir.path().join("key.pem");
        std::fs::write(&key_only, ca.signing_key.serialize_pem()).unwrap();
        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        for (path, want) in [
            (dir.path().join("missing.pem"), "os error 2"),
            (key_only, "no certificate"),
            (broken, "certificate 1 is not usable as a CA"),
        ] {
            let e = Config::merge(
                Args {
                    notify_ca_file: Some(path.clone()),
                    ..args()
                },
                FileConfig::default(),
            )
            .unwrap_err();
            assert_eq!(e.key, "notify_ca_file", "{e}");
            assert!(e.to_string().contains(want), "{e}");
            assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        }
    }
}
