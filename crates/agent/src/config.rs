//! The agent's configuration: one struct, from a TOML file, every key
//! overridable by a flag and an environment variable (flag/env > file > default).
//! Validated at start; an error names the key, the reason and where the value
//! came from.
//!
//! Each setting is declared once, as a field of [`RunArgs`]: its doc comment is
//! the help text, and the same struct read from TOML is the file's form
//! ([`FileConfig`]), so the file's keys are the flags' names. The mechanism
//! (layers, error type, file reading) is shared with the coordinator in
//! `portwatch-settings`.
//!
//! `coordinator` is one URL or several (a TOML array; on the command line a
//! comma-separated list or the flag repeated): the stream fails over between
//! them (see `stream`). Each entry is checked on its own, and an error quotes
//! the entry, so that in a list of five the operator sees which one is wrong.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use portwatch_check::CloseMode;
use portwatch_check::guard::Cidr;
pub use portwatch_settings::ConfigError;
use portwatch_settings::layer;
use serde::Deserialize;

/// Flags of `portwatch-agent run` (each also an environment variable), and the
/// keys of the config file.
#[derive(Args, Debug, Default, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunArgs {
    /// TOML configuration file.
    #[arg(long, env = "PORTWATCH_AGENT_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Coordinator URL, e.g. https://coordinator.example.com:7400 (port 7400
    /// when none is given); several (comma-separated, or the flag repeated)
    /// to fail over between them in turn.
    #[arg(long, env = "PORTWATCH_COORDINATOR", value_delimiter = ',')]
    #[serde(deserialize_with = "one_or_list")]
    pub coordinator: Vec<String>,
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
    #[arg(long, env = "PORTWATCH_CLOSE_MODE", value_parser = close_mode_flag)]
    pub close_mode: Option<String>,
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

/// The file form: the flags' struct, read from TOML; unknown keys are errors.
pub type FileConfig = RunArgs;

/// A key that takes one string or a list of strings in the file
/// (`coordinator = "https://a"` as well as `coordinator = ["https://a", "https://b"]`).
fn one_or_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct OneOrList;
    impl<'de> serde::de::Visitor<'de> for OneOrList {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a URL or a list of URLs")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Vec<String>, E> {
            Ok(vec![v.to_string()])
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Vec<String>, A::Error> {
            let mut out = Vec::new();
            while let Some(s) = seq.next_element::<String>()? {
                out.push(s);
            }
            Ok(out)
        }
    }
    d.deserialize_any(OneOrList)
}

/// The port of a coordinator URL that names none (the coordinator's default listen port).
pub const DEFAULT_COORDINATOR_PORT: u16 = 7400;

/// One validated coordinator address: https (or loopback http with
/// `insecure_plaintext`), a host (a name or an IP address) and a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoordinatorUrl {
    pub https: bool,
    /// A DNS name or an IP address, without the brackets of an IPv6 literal.
    pub host: String,
    pub port: u16,
}

impl CoordinatorUrl {
    /// The host as an IP address, when it is one (then nothing is resolved).
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    fn scheme(&self) -> &'static str {
        if self.https { "https" } else { "http" }
    }
}

impl std::fmt::Display for CoordinatorUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ip() {
            Some(ip) => write!(f, "{}://{}", self.scheme(), SocketAddr::new(ip, self.port)),
            None => write!(f, "{}://{}:{}", self.scheme(), self.host, self.port),
        }
    }
}

/// Why one `coordinator` entry is refused, and which key is to blame.
enum UrlError {
    /// The entry itself is wrong.
    Coordinator(String),
    /// A plaintext entry to a non-loopback host: `insecure_plaintext` does not reach that far.
    Plaintext(String),
}

/// Checks one `coordinator` entry: `https://host[:port][/]` (or `http://` with
/// `insecure` to a loopback host); the port defaults to 7400.
fn parse_coordinator(entry: &str, insecure: bool) -> Result<CoordinatorUrl, UrlError> {
    let bad = |why: &str| UrlError::Coordinator(format!("{entry:?}: {why}"));
    let (scheme, rest) = entry
        .split_once("://")
        .ok_or_else(|| bad("not a URL (https://host:port)"))?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) {
        return Err(bad("a coordinator URL has no path (https://host:port)"));
    }
    if authority.contains('@') {
        return Err(bad("a coordinator URL has no user part"));
    }
    let bracketed = authority.starts_with('[');
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (ip, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("an IPv6 address is closed by ']'"))?;
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("not an IPv6 address in [...]"));
        }
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| bad("expected :port after the IPv6 address"))?,
            ),
        };
        (ip, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => DEFAULT_COORDINATOR_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(bad(&format!("{p:?} is not a port (1-65535)"))),
        },
    };
    // An IPv6 address was checked inside its brackets; anything else is a
    // name or an IPv4 address (a bare IPv6 address would be ambiguous with the port).
    let name_ok = bracketed
        || (!host.is_empty()
            && host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')));
    if !name_ok {
        return Err(bad("no valid host name or IP address"));
    }
    let url = CoordinatorUrl {
        https: scheme == "https",
        host: host.to_string(),
        port,
    };
    match scheme {
        "https" => Ok(url),
        "http" if insecure => {
            let loopback = host == "localhost" || url.ip().is_some_and(|ip| ip.is_loopback());
            if loopback {
                Ok(url)
            } else {
                Err(UrlError::Plaintext(format!(
                    "plaintext only to a loopback coordinator, not {host}"
                )))
            }
        }
        "http" => Err(bad(
            "http:// needs insecure_plaintext (loopback development only); use https://",
        )),
        other => Err(bad(&format!("unknown scheme {other:?}; use https://"))),
    }
}

/// A close mode on the command line is checked as it is parsed (a usage
/// error), one from the file when the layers are merged.
fn close_mode_flag(s: &str) -> Result<String, String> {
    s.parse::<CloseMode>()
        .map(|_| s.to_string())
        .map_err(|_| format!("{s:?}; must be fin or rst"))
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// In the order given: the stream tries them in turn.
    pub coordinators: Vec<CoordinatorUrl>,
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
        let path = args.config.clone();
        let command = RunArgs::augment_args(clap::Command::new("portwatch-agent run"));
        portwatch_settings::load(args, path.as_deref(), &command, Config::merge)
    }

    pub fn merge(args: RunArgs, file: FileConfig) -> Result<Config, ConfigError> {
        let coordinator = layer!(args, file, coordinator);
        let entries = coordinator
            .clone()
            .required("required, e.g. https://coordinator.example.com:7400")?;
        let insecure_plaintext = layer!(args, file, insecure_plaintext);
        let insecure = insecure_plaintext.clone().or(false);
        let mut coordinators: Vec<CoordinatorUrl> = Vec::with_capacity(entries.len());
        for entry in &entries {
            let url = parse_coordinator(entry.trim(), insecure).map_err(|e| match e {
                UrlError::Coordinator(why) => coordinator.error(why),
                UrlError::Plaintext(why) => insecure_plaintext.error(why),
            })?;
            if coordinators.contains(&url) {
                return Err(coordinator.error(format!("{entry:?}: given twice (as {url})")));
            }
            coordinators.push(url);
        }
        let any_https = coordinators.iter().any(|c| c.https);
        let ca = layer!(args, file, ca);
        if any_https && !ca.is_set() {
            return Err(ca.error(
                "required for https: the CA certificate (PEM) that signed the coordinator's certificate",
            ));
        }
        let given_token = layer!(args, file, token);
        let token_file = layer!(args, file, token_file);
        let token = match (given_token.clone().get(), token_file.clone().get()) {
            (Some(t), _) => t,
            (None, Some(path)) => std::fs::read_to_string(&path)
                .map_err(|e| token_file.error(format!("{}: {e}", path.display())))?
                .trim()
                .to_string(),
            (None, None) => return Err(given_token.error("required (or token_file)")),
        };
        if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            let why = "must be non-empty, without whitespace";
            return Err(if given_token.is_set() {
                given_token.error(why)
            } else {
                ConfigError::new("token", format!("{why} (read from token_file)"))
            });
        }
        let data_dir =
            layer!(args, file, data_dir).required("required (the directory of the local spool)")?;
        let client_cert = layer!(args, file, client_cert);
        let client_key = layer!(args, file, client_key);
        let client_identity = match (client_cert.clone().get(), client_key.clone().get()) {
            (Some(c), Some(k)) => Some((c, k)),
            (Some(_), None) => return Err(client_key.error("required when client_cert is set")),
            (None, Some(_)) => return Err(client_cert.error("required when client_key is set")),
            (None, None) => None,
        };
        let max_in_flight = layer!(args, file, max_in_flight).check(4096, |n| {
            (1..=1_000_000)
                .contains(n)
                .then_some(())
                .ok_or_else(|| "must be 1-1000000".to_string())
        })?;
        let spool_max = layer!(args, file, spool_max).check(1_000_000, |n| {
            (*n >= 100)
                .then_some(())
                .ok_or_else(|| "must be at least 100".to_string())
        })?;
        let batch_size = layer!(args, file, batch_size).check(500, |n| {
            (1..=10_000)
                .contains(n)
                .then_some(())
                .ok_or_else(|| "must be 1-10000".to_string())
        })?;
        let batch_wait = layer!(args, file, batch_wait).duration(
            "200ms",
            Duration::ZERO,
            Duration::from_secs(10),
        )?;
        let private_allow = layer!(args, file, private_allow)
            .parse(|list| {
                list.iter()
                    .map(|s| s.parse::<Cidr>().map_err(|e| format!("{s:?}: {e}")))
                    .collect::<Result<Vec<_>, _>>()
            })?
            .unwrap_or_default();
        let nameservers = layer!(args, file, nameservers)
            .parse(|list| list.iter().map(|s| parse_nameserver(s)).collect())?
            .unwrap_or_default();
        let close_mode = layer!(args, file, close_mode).parse(|s| {
            s.parse::<CloseMode>()
                .map_err(|_| format!("{s:?}; must be fin or rst"))
        })?;
        let log_json = layer!(args, file, log_format)
            .parse(|f| portwatch_telemetry::json_logs(Some(&f)))?
            .unwrap_or(false);
        Ok(Config {
            coordinators,
            token,
            ca: ca.get(),
            tls_server_name: layer!(args, file, tls_server_name).get(),
            client_identity,
            data_dir,
            agent_id: layer!(args, file, agent_id).get(),
            max_in_flight,
            spool_max,
            batch_size,
            batch_wait,
            allow_private_targets: layer!(args, file, allow_private_targets).or(false),
            private_allow,
            nameservers,
            source_address: layer!(args, file, source_address).get(),
            close_mode,
            metrics_listen: layer!(args, file, metrics_listen).get(),
            insecure_plaintext: insecure,
            log_json,
            log: layer!(args, file, log).or_else(|| "info".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> RunArgs {
        RunArgs {
            coordinator: vec!["https://coord.example.com:7400".into()],
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
                    coordinator: Vec::new(),
                    ..base()
                },
                "",
                "coordinator",
            ),
            (
                RunArgs {
                    coordinator: vec!["coord:7400".into()],
                    ..base()
                },
                "",
                "coordinator",
            ),
            (
                RunArgs {
                    coordinator: vec!["http://coord.example.com:7400".into()],
                    ..base()
                },
                "",
                "coordinator",
            ),
            (
                RunArgs {
                    coordinator: vec!["http://10.0.0.1:7400".into()],
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
            coordinator: vec!["http://127.0.0.1:7400".into()],
            insecure_plaintext: true,
            ..base()
        };
        assert!(Config::merge(ok, FileConfig::default()).is_ok());
        assert!(toml::from_str::<FileConfig>("coordinater = \"x\"").is_err());
    }

    fn with_coordinators(text: &str) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).unwrap();
        Config::merge(
            RunArgs {
                coordinator: Vec::new(),
                ..base()
            },
            file,
        )
    }

    fn url(https: bool, host: &str, port: u16) -> CoordinatorUrl {
        CoordinatorUrl {
            https,
            host: host.into(),
            port,
        }
    }

    #[test]
    fn coordinator_is_one_url_or_a_list() {
        let one = with_coordinators("coordinator = \"https://a.example.com\"").unwrap();
        assert_eq!(one.coordinators, [url(true, "a.example.com", 7400)]);
        assert_eq!(
            one.coordinators[0].to_string(),
            "https://a.example.com:7400"
        );
        let list = with_coordinators(
            "coordinator = [\"https://a.example.com:7401/\", \"https://10.0.0.2\", \"https://[fd00::3]:7402\"]",
        )
        .unwrap();
        assert_eq!(
            list.coordinators,
            [
                url(true, "a.example.com", 7401),
                url(true, "10.0.0.2", 7400),
                url(true, "fd00::3", 7402),
            ]
        );
        assert_eq!(list.coordinators[2].to_string(), "https://[fd00::3]:7402");
        // A number is neither form.
        assert!(toml::from_str::<FileConfig>("coordinator = 7").is_err());
        // The flag: comma-separated, or repeated; it wins over the file.
        let command = RunArgs::augment_args(clap::Command::new("run"));
        let matches = command
            .try_get_matches_from([
                "run",
                "--coordinator",
                "https://a.example.com,https://b.example.com",
                "--coordinator=https://c.example.com",
            ])
            .unwrap();
        let args = <RunArgs as clap::FromArgMatches>::from_arg_matches(&matches).unwrap();
        assert_eq!(args.coordinator.len(), 3);
        let file: FileConfig = toml::from_str("coordinator = \"https://z.example.com\"").unwrap();
        let c = Config::merge(
            RunArgs {
                coordinator: args.coordinator,
                ..base()
            },
            file,
        )
        .unwrap();
        let hosts: Vec<&str> = c.coordinators.iter().map(|c| c.host.as_str()).collect();
        assert_eq!(hosts, ["a.example.com", "b.example.com", "c.example.com"]);
    }

    #[test]
    fn every_coordinator_entry_is_checked_and_named() {
        let cases = [
            (
                "[\"https://a.example.com\", \"b.example.com:7400\"]",
                "coordinator",
                "\"b.example.com:7400\"",
            ),
            (
                "[\"https://a.example.com\", \"https://a.example.com:7400\"]",
                "coordinator",
                "given twice",
            ),
            (
                "[\"https://a.example.com\", \"ftp://b.example.com\"]",
                "coordinator",
                "unknown scheme",
            ),
            ("\"https://a.example.com:0\"", "coordinator", "not a port"),
            (
                "\"https://a.example.com:99999\"",
                "coordinator",
                "not a port",
            ),
            ("\"https://a.example.com/api\"", "coordinator", "no path"),
            (
                "\"https://user@a.example.com\"",
                "coordinator",
                "no user part",
            ),
            ("\"https://:7400\"", "coordinator", "no valid host"),
            ("\"https://fd00::1\"", "coordinator", "no valid host"),
            ("\"https://[fd00::1\"", "coordinator", "closed by"),
            ("\"https://[nope]:7400\"", "coordinator", "not an IPv6"),
            ("[]", "coordinator", "required"),
            (
                "[\"https://a.example.com\", \"http://127.0.0.1:7400\"]",
                "coordinator",
                "insecure_plaintext",
            ),
        ];
        for (value, key, reason) in cases {
            let e = with_coordinators(&format!("coordinator = {value}")).unwrap_err();
            assert_eq!(e.key, key, "{value}: {e}");
            assert!(e.to_string().contains(reason), "{value}: {e}");
        }
        // Plaintext entries are blamed on insecure_plaintext when it does not cover them.
        let file: FileConfig =
            toml::from_str("coordinator = [\"http://127.0.0.1:7400\", \"http://10.0.0.1:7400\"]")
                .unwrap();
        let e = Config::merge(
            RunArgs {
                coordinator: Vec::new(),
                insecure_plaintext: true,
                ..base()
            },
            file,
        )
        .unwrap_err();
        assert_eq!(e.key, "insecure_plaintext", "{e}");
        assert!(e.to_string().contains("10.0.0.1"), "{e}");
    }
}
