//! `portwatch-agent check`: one check, printed for a person (or as JSON).
//!
//! Exit status: 0 reachable; 1 the target failed (refused, timed out, DNS,
//! unreachable); 2 the check could not judge the target (blocked, probe error)
//! or the input was bad.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use portwatch_check::{
    AddressPolicy, CheckResult, CheckSpec, Checker, CloseMode, Family, Guard, Host, Nameservers,
    Outcome, Resolver,
};
use serde::Serialize;

pub const EXIT_DOWN: u8 = 1;
pub const EXIT_USAGE: u8 = 2;

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Host name or IP literal.
    pub host: String,
    /// TCP port, 1-65535.
    pub port: u16,
    /// Deadline over DNS and handshake together (1s-10s).
    #[arg(long, default_value = "3s", value_parser = parse_timeout)]
    pub timeout: Duration,
    /// Address family: any, ipv4, ipv6.
    #[arg(long, default_value = "any")]
    pub family: Family,
    /// any: one address connecting is success; all: every resolved address must connect.
    #[arg(long, default_value = "any")]
    pub address_policy: AddressPolicy,
    /// fin (orderly close) or rst (SO_LINGER 0).
    #[arg(long, default_value = "fin")]
    pub close_mode: CloseMode,
    /// Nameserver to use instead of the system's (ip or ip:port; repeatable).
    #[arg(long = "nameserver", value_parser = parse_nameserver)]
    pub nameservers: Vec<SocketAddr>,
    /// Allow non-public targets (loopback, RFC 1918, ...), as a self-hosted probe does.
    #[arg(long)]
    pub allow_private: bool,
    /// Source address for outgoing connections.
    #[arg(long)]
    pub source: Option<IpAddr>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(10) {
        return Err(format!("{s:?} is out of range; must be 1s-10s"));
    }
    Ok(d)
}

fn parse_nameserver(s: &str) -> Result<SocketAddr, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| format!("{s:?} is not an IP address or ip:port"))
}

pub async fn run(args: CheckArgs) -> ExitCode {
    let host = match Host::parse(&args.host) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("portwatch-agent: host: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if args.port == 0 {
        eprintln!("portwatch-agent: port: 0 is not a TCP port; must be 1-65535");
        return ExitCode::from(EXIT_USAGE);
    }
    let nameservers = if args.nameservers.is_empty() {
        Nameservers::System
    } else {
        Nameservers::Custom(args.nameservers.clone())
    };
    let resolver = match Resolver::new(&nameservers) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("portwatch-agent: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let guard = if args.allow_private {
        Guard::allow_private()
    } else {
        Guard::public_only()
    };
    let checker = Checker::new(resolver, guard).with_source(args.source);
    let spec = CheckSpec {
        host,
        port: args.port,
        timeout: args.timeout,
        family: args.family,
        address_policy: args.address_policy,
        close_mode: args.close_mode,
    };
    let result = checker.check(&spec).await;
    if args.json {
        match serde_json::to_string_pretty(&JsonResult::new(&spec, &result)) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("portwatch-agent: {e}"),
        }
    } else {
        print!("{}", render(&spec, &result));
    }
    match result.outcome {
        Outcome::Ok => ExitCode::SUCCESS,
        o if o.is_target_failure() => ExitCode::from(EXIT_DOWN),
        _ => ExitCode::from(EXIT_USAGE),
    }
}

fn ms(us: u64) -> String {
    format!("{}.{:03} ms", us / 1000, us % 1000)
}

/// The human form: the `nc -zv` line first, then the reason and the timings.
pub fn render(spec: &CheckSpec, r: &CheckResult) -> String {
    let host = spec.host.as_str();
    let via = r
        .address
        .map(|a| format!(" ({})", a.ip()))
        .unwrap_or_default();
    let mut out = String::new();
    if r.outcome == Outcome::Ok {
        out.push_str(&format!(
            "Connection to {host}{via} {} port [tcp] succeeded in {}\n",
            spec.port,
            ms(r.total_us)
        ));
    } else {
        out.push_str(&format!(
            "connect to {host}{via} port {} (tcp) failed: {}\n",
            spec.port,
            r.outcome.text()
        ));
        out.push_str(&format!("  reason:  {}\n", r.detail));
    }
    let rtt = r
        .tcp_rtt_us
        .map(|us| format!(", kernel rtt {}", ms(us)))
        .unwrap_or_default();
    out.push_str(&format!(
        "  outcome: {} · dns {} · connect {} · total {}{rtt}\n",
        r.outcome.name(),
        ms(r.dns_us),
        ms(r.connect_us),
        ms(r.total_us)
    ));
    if r.attempts.len() > 1 {
        for t in &r.attempts {
            out.push_str(&format!(
                "  tried {}: {} ({}) in {}\n",
                t.address,
                t.outcome.name(),
                t.detail,
                ms(t.connect_us)
            ));
        }
    }
    out
}

#[derive(Serialize)]
struct JsonAttempt {
    address: String,
    outcome: Outcome,
    detail: String,
    connect_us: u64,
    tcp_rtt_us: Option<u64>,
}

#[derive(Serialize)]
struct JsonResult {
    host: String,
    port: u16,
    outcome: Outcome,
    reason: &'static str,
    detail: String,
    address: Option<String>,
    checked_at_unix_ms: u64,
    dns_us: u64,
    connect_us: u64,
    total_us: u64,
    tcp_rtt_us: Option<u64>,
    attempts: Vec<JsonAttempt>,
}

impl JsonResult {
    fn new(spec: &CheckSpec, r: &CheckResult) -> JsonResult {
        JsonResult {
            host: spec.host.as_str(),
            port: spec.port,
            outcome: r.outcome,
            reason: r.outcome.text(),
            detail: r.detail.clone(),
            address: r.address.map(|a| a.to_string()),
            checked_at_unix_ms: portwatch_proto::time::unix_micros(r.checked_at) / 1000,
            dns_us: r.dns_us,
            connect_us: r.connect_us,
            total_us: r.total_us,
            tcp_rtt_us: r.tcp_rtt_us,
            attempts: r
                .attempts
                .iter()
                .map(|t| JsonAttempt {
                    address: t.address.to_string(),
                    outcome: t.outcome,
                    detail: t.detail.clone(),
                    connect_us: t.connect_us,
                    tcp_rtt_us: t.tcp_rtt_us,
                })
                .collect(),
        }
    }
}
