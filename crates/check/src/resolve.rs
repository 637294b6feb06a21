//! Name resolution for checks.
//!
//! One `Resolver` per agent, shared by every check, so the cache (which honours
//! record TTLs, positive and negative) saves a lookup on most checks. IP literals
//! never reach it. Errors are classified here into the requirements' "DNS
//! resolution failed" (DESIGN.md) or, when the agent itself is out of resources, a probe error.

use std::io;
use std::net::{IpAddr, SocketAddr};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;

use crate::Outcome;

/// Where the resolver's nameservers come from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Nameservers {
    /// The system's `/etc/resolv.conf` (and hosts file).
    #[default]
    System,
    /// These servers, over UDP with TCP fallback; the hosts file is still read.
    Custom(Vec<SocketAddr>),
}

/// A failed lookup, already classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LookupError {
    /// `DnsFailed`, or `ProbeError` when the agent itself is at fault.
    pub outcome: Outcome,
    pub detail: String,
}

/// A caching stub resolver.
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
}

impl Resolver {
    /// Builds a resolver. Errors only when the system configuration cannot be read.
    pub fn new(nameservers: &Nameservers) -> io::Result<Resolver> {
        let mut builder = match nameservers {
            Nameservers::System => TokioResolver::builder_tokio().map_err(|e| {
                io::Error::other(format!("reading the system resolver configuration: {e}"))
            })?,
            Nameservers::Custom(servers) => {
                let configs = servers
                    .iter()
                    .map(|addr| {
                        let mut udp = ConnectionConfig::udp();
                        udp.port = addr.port();
                        let mut tcp = ConnectionConfig::tcp();
                        tcp.port = addr.port();
                        NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
                    })
                    .collect();
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(configs),
                    TokioRuntimeProvider::default(),
                )
            }
        };
        // The check's own deadline bounds the lookup; one quick retry covers a lost packet.
        let opts = builder.options_mut();
        opts.attempts = 2;
        opts.cache_size = 65_536;
        let inner = builder
            .build()
            .map_err(|e| io::Error::other(format!("building the resolver: {e}")))?;
        Ok(Resolver { inner })
    }

    /// Resolves `name` to its addresses (AAAA and A, queried in parallel).
    pub async fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, LookupError> {
        match self.inner.lookup_ip(name).await {
            Ok(lookup) => {
                let addrs: Vec<IpAddr> = lookup.iter().collect();
                if addrs.is_empty() {
                    Err(dns_failed(format!("{name}: no A or AAAA records")))
                } else {
                    Ok(addrs)
                }
            }
            Err(e) => Err(classify(name, &e)),
        }
    }
}

fn dns_failed(detail: String) -> LookupError {
    LookupError {
        outcome: Outcome::DnsFailed,
        detail,
    }
}

fn classify(name: &str, e: &NetError) -> LookupError {
    use hickory_resolver::net::DnsError;
    if e.is_nx_domain() {
        return dns_failed(format!("{name}: NXDOMAIN (no such name)"));
    }
    if e.is_no_records_found() {
        return dns_failed(format!("{name}: no A or AAAA records"));
    }
    match e {
        NetError::Dns(DnsError::ResponseCode(code)) => {
            dns_failed(format!("{name}: the nameserver answered {code}"))
        }
        NetError::Timeout => dns_failed(format!("{name}: the nameserver did not answer in time")),
        NetError::Io(io) if crate::classify::is_probe_fault(io) => LookupError {
            outcome: Outcome::ProbeError,
            detail: format!("resolver: {io}"),
        },
        other => dns_failed(format!("{name}: {other}")),
    }
}
