//! The agent's configuration: one struct, from a TOML file, every key
//! overridable by a flag and an environment variable (flag/env > file > default).
//! Validated at start; an error names the key and the reason.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use portwatch_check::CloseMode;
use portwatch_check::guard::Cidr;
use serde::Deserialize;

/// Flags of `portwatch-agent run` (each also an environment variable).
#[derive(Args, Debug, Default, Clone)]
pub struct RunArgs {
    /// TOML configuration file.
    #[arg(long, env = "PORTWATCH_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Coordinator URL, e.g. https://coordinator.example.com:7400.
    #[arg(long, env = "PORTWATCH_COORDINATOR")]
    pub coordinator: Option<String>,
    /// Agent token (bound to this agent's region).
    #[arg(long, env = "PORTWATCH_AGENT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the agent token (instead of --token).
    #[arg(long, env = "PORTWATCH_AGENT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) that signed the coordinator's certificate.
    #[arg(long, env = "PORTWATCH_CA")]
    pub ca: Option<PathBuf>,
    /// TLS server name to expect from the coordinator (default: the URL's host).
    #[arg(long, env = "PORTWATCH_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
    /// Client certificate (PEM) for mTLS.
    #[arg(long, env = "PORTWATCH_CLIENT_CERT")]
    pub client_cert: Option<PathBuf>,
    /// Client key (PEM) for mTLS.
    #[arg(long, env = "PORTWATCH_CLIENT_KEY")]
    pub client_key: Option<PathBuf>,
    /// Directory of the local spool (sled).
    #[arg(long, env = "PORTWATCH_AGENT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Stable agent id (default: generated once and kept in the data dir).
    #[arg(long, env = "PORTWATCH_AGENT_ID")]
    pub agent_id: Option<String>,
    /// Checks in flight at most.
    #[arg(long, env = "PORTWATCH_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<usize>,
    /// Unacknowledged results kept at most; beyond it the oldest are dropped (counted).
    #[arg(long, env = "PORTWATCH_SPOOL_MAX")]
    pub spool_max: Option<u64>,
    /// Results per batch sent to the coordinator.
    #[arg(long, env = "PORTWATCH_BATCH_SIZE")]
    pub batch_size: Option<usize>,
    /// Longest wait before a partial batch is sent, e.g. "200ms".
    #[arg(long, env = "PORTWATCH_BATCH_WAIT")]
    pub batch_wait: Option<String>,
    /// Allow non-public targets (self-hosted probe of a private region).
    #[arg(long, env = "PORTWATCH_ALLOW_PRIVATE_TARGETS")]
    pub allow_private_targets: bool,
    /// Limit private targets to these CIDRs (comma-separated).
    #[arg(long, env = "PORTWATCH_PRIVATE_ALLOW", value_delimiter = ',')]
    pub private_allow: Vec<String>,
    /// Nameservers instead of the system's (ip or ip:port, comma-separated).
    #[arg(long, env = "PORTWATCH_NAMESERVERS", value_delimiter = ',')]
    pub nameservers: Vec<String>,
    /// Source address for probe connections.
    #[arg(long, env = "PORTWATCH_SOURCE_ADDRESS")]
    pub source_address: Option<IpAddr>,
    /// Force a close mode for every check (fin or rst); default: the monitor's.
    #[arg(long, env = "PORTWATCH_CLOSE_MODE")]
    pub close_mode: Option<CloseMode>,
    /// Prometheus `/metrics` listen address.
    #[arg(long, env = "PORTWATCH_AGENT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Connect without TLS (http://); only to a loopback coordinator.
    #[arg(long, env = "PORTWATCH_INSECURE_PLAINTEXT")]
    pub insecure_plaintext: bool,
    /// Log format: human or json.
    #[arg(long, env = "PORTWATCH_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Log filter, e.g. "info".
    #[arg(long, env = "PORTWATCH_LOG")]
    pub log: Option<String>,
}

/// The file form; unknown keys are errors.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub coordinator: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub tls_server_name: Option<String>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub agent_id: Option<String>,
    pub max_in_flight: Option<usize>,
    pub spool_max: Option<u64>,
    pub batch_size: Option<usize>,
    pub batch_wait: Option<String>,
    pub allow_private_targets: Option<bool>,
    pub private_allow: Option<Vec<String>>,
    pub nameservers: Option<Vec<String>>,
    pub source_address: Option<IpAddr>,
    pub close_mode: Option<String>,
    pub metrics_listen: Option<SocketAddr>,
    pub insecure_plaintext: Option<bool>,
    pub log_format: Option<String>,
    pub log: Option<String>,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub coordinator: String,
    pub token: String,
    pub ca: Option<PathBuf>,
    pub tls_server_name: Option<String>,
    pub client_identity: Option<(PathBuf, PathBuf)>,
    pub data_dir: PathBuf,
    pub agent_id: Option<String>,
    pub max_in_flight: usize,
    pub spool_max: u64,
    pub batch_size: usize,
    pub batch_wait: Duration,
    pub allow_private_targets: bool,
    pub private_allow: Vec<Cidr>,
    pub nameservers: Vec<SocketAddr>,
    pub source_address: Option<IpAddr>,
    pub close_mode: Option<CloseMode>,
    pub metrics_listen: Option<SocketAddr>,
    pub insecure_plaintext: bool,
    pub log_json: bool,
    pub log: String,
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

/// Parses "ip" (port 53) or "ip:port".
pub fn parse_nameserver(s: &str) -> Result<SocketAddr, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| format!("{s:?} is not an IP address or ip:port"))
}

impl Config {
    pub fn load(args: RunArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Config::merge(args, file)
    }

    pub fn merge(args: RunArgs, file: FileConfig) -> Result<Config, ConfigError> {
        let coordinator = args.coordinator.or(file.coordinator).ok_or_else(|| {
            err(
                "coordinator",
                "required, e.g. https://coordinator.example.com:7400",
            )
        })?;
        let insecure = args.insecure_plaintext || file.insecure_plaintext.unwrap_or(false);
        let (scheme, rest) = coordinator.split_once("://").ok_or_else(|| {
            err(
                "coordinator",
                format!("{coordinator:?} is not a URL (https://host:port)"),
            )
        })?;
        match scheme {
            "https" => {}
            "http" if insecure => {
                let host = rest.split('/').next().unwrap_or_default();
                let host = host
                    .rsplit_once(':')
                    .map_or(host, |(h, _)| h)
                    .trim_matches(['[', ']']);
                let loopback =
                    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
                if !loopback {
                    return Err(err(
                        "insecure_plaintext",
                        format!("plaintext only to a loopback coordinator, not {host}"),
                    ));
                }
            }
            "http" => {
                return Err(err(
                    "coordinator",
                    "http:// needs insecure_plaintext (loopback development only); use https://",
                ));
            }
            other => {
                return Err(err(
                    "coordinator",
                    format!("unknown scheme {other:?}; use https://"),
                ));
            }
        }
        let ca = args.ca.or(file.ca);
        if scheme == "https" && ca.is_none() {
            return Err(err(
                "ca",
                "required for https: the CA certificate (PEM) that signed the coordinator's certificate",
            ));
        }
        let token = match (
            args.token.or(file.token),
            args.token_file.or(file.token_file),
        ) {
            (Some(t), _) => t,
            (None, Some(path)) => std::fs::read_to_string(&path)
                .map_err(|e| err("token_file", format!("{}: {e}", path.display())))?
                .trim()
                .to_string(),
            (None, None) => return Err(err("token", "required (or token_file)")),
        };
        if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err("token", "must be non-empty, without whitespace"));
        }
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .ok_or_else(|| err("data_dir", "required (the directory of the local spool)"))?;
        let client_identity = match (
            args.client_cert.or(file.client_cert),
            args.client_key.or(file.client_key),
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            (Some(_), None) => return Err(err("client_key", "required when client_cert is set")),
            (None, Some(_)) => return Err(err("client_cert", "required when client_key is set")),
            (None, None) => None,
        };
        let max_in_flight = args.max_in_flight.or(file.max_in_flight).unwrap_or(4096);
        if !(1..=1_000_000).contains(&max_in_flight) {
            return Err(err("max_in_flight", "must be 1-1000000"));
        }
        let spool_max = args.spool_max.or(file.spool_max).unwrap_or(1_000_000);
        if spool_max < 100 {
            return Err(err("spool_max", "must be at least 100"));
        }
        let batch_size = args.batch_size.or(file.batch_size).unwrap_or(500);
        if !(1..=10_000).contains(&batch_size) {
            return Err(err("batch_size", "must be 1-10000"));
        }
        let wait = args
            .batch_wait
            .or(file.batch_wait)
            .unwrap_or_else(|| "200ms".into());
        let batch_wait = humantime::parse_duration(&wait)
            .map_err(|e| err("batch_wait", format!("{wait:?}: {e}")))?;
        if batch_wait > Duration::from_secs(10) {
            return Err(err("batch_wait", "must be at most 10s"));
        }
        let allow_list = if args.private_allow.is_empty() {
            file.private_allow.unwrap_or_default()
        } else {
            args.private_allow
        };
        let private_allow = allow_list
            .iter()
            .map(|s| {
                s.parse::<Cidr>()
                    .map_err(|e| err("private_allow", format!("{s:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let ns = if args.nameservers.is_empty() {
            file.nameservers.unwrap_or_default()
        } else {
            args.nameservers
        };
        let nameservers = ns
            .iter()
            .map(|s| parse_nameserver(s).map_err(|e| err("nameservers", e)))
            .collect::<Result<Vec<_>, _>>()?;
        let close_mode = match (args.close_mode, file.close_mode) {
            (Some(m), _) => Some(m),
            (None, Some(s)) => Some(
                s.parse::<CloseMode>()
                    .map_err(|_| err("close_mode", format!("{s:?}; must be fin or rst")))?,
            ),
            (None, None) => None,
        };
        let log_json =
            portwatch_telemetry::json_logs(args.log_format.or(file.log_format).as_deref())
                .map_err(|e| err("log_format", e))?;
        Ok(Config {
            coordinator,
            token,
            ca,
            tls_server_name: args.tls_server_name.or(file.tls_server_name),
            client_identity,
            data_dir,
            agent_id: args.agent_id.or(file.agent_id),
            max_in_flight,
            spool_max,
            batch_size,
            batch_wait,
            allow_private_targets: args.allow_private_targets
                || file.allow_private_targets.unwrap_or(false),
            private_allow,
            nameservers,
            source_address: args.source_address.or(file.source_address),
            close_mode,
            metrics_listen: args.metrics_listen.or(file.metrics_listen),
            insecure_plaintext: insecure,
            log_json,
            log: args.log.or(file.log).unwrap_or_else(|| "info".into()),
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    portwatch_telemetry::read_toml(path).map_err(|e| err("config", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> RunArgs {
        RunArgs {
            coordinator: Some("https://coord.example.com:7400".into()),
            token: Some("pwa_abc".into()),
            ca: Some("/etc/portwatch/ca.pem".into()),
            data_dir: Some("/tmp/agent".into()),
            ..RunArgs::default()
        }
    }

    #[test]
    fn defaults_and_overrides() {
        let file: FileConfig =
            toml::from_str("batch_size = 100\nnameservers = [\"127.0.0.1:5353\"]\n").unwrap();
        let c = Config::merge(
            RunArgs {
                batch_size: Some(7),
                ..base()
            },
            file,
        )
        .unwrap();
        assert_eq!(c.batch_size, 7);
        assert_eq!(c.max_in_flight, 4096);
        assert_eq!(c.nameservers, vec!["127.0.0.1:5353".parse().unwrap()]);
        assert_eq!(c.batch_wait, Duration::from_millis(200));
    }

    #[test]
    fn errors_name_the_key() {
        let cases: Vec<(RunArgs, &str, &str)> = vec![
            (
                RunArgs {
                    coordinator: None,
                    ..base()
                },
                "",
                "coordinator",
            ),
            (
                RunArgs {
                    coordinator: Some("coord:7400".into()),
                    ..base()
                },
                "",
                "coordinator",
            ),
            (
                RunArgs {
                    coordinator: Some("http://coord.example.com:7400".into()),
                    ..base()
                },
                "",
                "coordinator",
            ),
            (
                RunArgs {
                    coordinator: Some("http://10.0.0.1:7400".into()),
                    insecure_plaintext: true,
                    ..base()
                },
                "",
                "insecure_plaintext",
            ),
            (
                RunArgs {
                    token: None,
                    ..base()
                },
                "",
                "token",
            ),
            (
                RunArgs {
                    data_dir: None,
                    ..base()
                },
                "",
                "data_dir",
            ),
            (base(), "max_in_flight = 0", "max_in_flight"),
            (base(), "private_allow = [\"10.0.0.0/99\"]", "private_allow"),
            (base(), "nameservers = [\"dns.example\"]", "nameservers"),
            (base(), "close_mode = \"slam\"", "close_mode"),
            (base(), "client_cert = \"c.pem\"", "client_key"),
            (base(), "batch_wait = \"1h\"", "batch_wait"),
        ];
        for (args, text, key) in cases {
            let file: FileConfig = toml::from_str(text).unwrap();
            assert_eq!(Config::merge(args, file).unwrap_err().key, key, "{text}");
        }
        let ok = RunArgs {
            coordinator: Some("http://127.0.0.1:7400".into()),
            insecure_plaintext: true,
            ..base()
        };
        assert!(Config::merge(ok, FileConfig::default()).is_ok());
        assert!(toml::from_str::<FileConfig>("coordinater = \"x\"").is_err());
    }
}
