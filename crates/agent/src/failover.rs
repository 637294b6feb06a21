//! Which coordinator the stream talks to: the configured entries expanded to
//! addresses, tried in turn.
//!
//! The agent treats every configured address as the same service (the
//! coordinators of one cluster, or one coordinator reachable several ways):
//! any of them will do, and what matters is that a dead one costs little. Each `coordinator` entry is resolved
//! afresh for every round through the list (a name with several addresses
//! gives one candidate per address, connected to by IP address while TLS
//! still expects the name), so a coordinator replaced behind its name is
//! found without a restart. A round starts after the address used last: an
//! ended session or a failed connect moves on to the next address at once,
//! and a Drain sends the agent to another coordinator when there is one. The
//! backoff between attempts is paid per full round of failures, not per
//! address: a dead first address costs one connect timeout, not a wait that
//! grows with every restart of the list.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tracing::warn;

use crate::config::CoordinatorUrl;

/// One address to connect to, and the entry it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub entry: CoordinatorUrl,
    pub addr: SocketAddr,
}

impl Candidate {
    /// The URL the channel connects to: the entry's scheme, the resolved address.
    pub fn url(&self) -> String {
        let scheme = if self.entry.https { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The name the coordinator's certificate must carry: `tls_server_name`
    /// when configured, else the entry's host when it is a name (an entry
    /// given as an IP address is verified against that address, as before).
    pub fn tls_name(&self, configured: Option<&str>) -> Option<String> {
        configured
            .map(str::to_string)
            .or_else(|| self.entry.ip().is_none().then(|| self.entry.host.clone()))
    }
}

impl std::fmt::Display for Candidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.entry.ip().is_some() {
            write!(f, "{}", self.entry)
        } else {
            write!(f, "{} ({})", self.entry, self.addr)
        }
    }
}

/// The candidates of entries whose hosts resolved to `ips` (in the entries'
/// order, each entry's addresses in the resolver's order); an address reached
/// through two entries is tried once.
pub fn expand(resolved: &[(CoordinatorUrl, Vec<IpAddr>)]) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::new();
    for (entry, ips) in resolved {
        for ip in ips {
            let addr = SocketAddr::new(*ip, entry.port);
            if out.iter().all(|c| c.addr != addr) {
                out.push(Candidate {
                    entry: entry.clone(),
                    addr,
                });
            }
        }
    }
    out
}

/// The candidates in the order to try them this round: starting after
/// `last` (the address tried last) when it is still among them, so that the
/// next attempt goes elsewhere and `last` comes at the end.
pub fn round(mut candidates: Vec<Candidate>, last: Option<SocketAddr>) -> Vec<Candidate> {
    if let Some(i) = last.and_then(|last| candidates.iter().position(|c| c.addr == last)) {
        candidates.rotate_left(i + 1);
    }
    candidates
}

/// Resolves every entry with the system's resolver (an IP address as it is).
/// An entry that does not resolve is left out of this round, with a warning.
pub async fn resolve(entries: &[CoordinatorUrl]) -> Vec<Candidate> {
    let mut resolved = Vec::with_capacity(entries.len());
    for entry in entries {
        let ips = match entry.ip() {
            Some(ip) => vec![ip],
            None => match tokio::net::lookup_host((entry.host.as_str(), entry.port)).await {
                Ok(addrs) => addrs.map(|a| a.ip()).collect(),
                Err(e) => {
                    warn!(coordinator = %entry, error = %e, "resolving the coordinator's name failed");
                    Vec::new()
                }
            },
        };
        resolved.push((entry.clone(), ips));
    }
    expand(&resolved)
}

/// The first wait after a round of failures.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest wait between rounds.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A session that lived this long resets the backoff.
pub const LIVED: Duration = Duration::from_secs(30);

/// When the stream waits before its next attempt: after a full round of
/// failures (as many as there are candidates), with a backoff that doubles
/// from [`FIRST_BACKOFF`] to [`MAX_BACKOFF`]; never between the addresses
/// of one round. A session that lived [`LIVED`] or a Drain starts afresh.
/// A session that ended sooner counts as a failure, so that coordinators
/// which accept and then hang up at once cannot make the agent spin.
#[derive(Debug)]
pub struct Pacing {
    backoff: Duration,
    failed: usize,
}

impl Default for Pacing {
    fn default() -> Pacing {
        Pacing {
            backoff: FIRST_BACKOFF,
            failed: 0,
        }
    }
}

impl Pacing {
    /// An attempt failed or a session ended after `lasted`, with `candidates`
    /// addresses in the round: the wait before the next attempt (`None`: the
    /// next address at once), without jitter.
    pub fn failed(&mut self, candidates: usize, lasted: Duration) -> Option<Duration> {
        if lasted > LIVED {
            *self = Pacing::default();
        }
        self.failed += 1;
        if self.failed < candidates {
            return None;
        }
        Some(self.round_failed())
    }

    /// Nothing to try this round (no name resolved): the wait before the next.
    pub fn round_failed(&mut self) -> Duration {
        let wait = self.backoff;
        self.failed = 0;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        wait
    }

    /// The coordinator asked the agent to drain: not a failure.
    pub fn drained(&mut self) {
        *self = Pacing::default();
    }
}

/// `wait` plus up to half of it at random, so that agents that lost the same
/// coordinator do not all come back at the same instant.
pub fn with_jitter(wait: Duration) -> Duration {
    let half = u64::try_from(wait.as_millis() / 2).unwrap_or(u64::MAX);
    wait + Duration::from_millis(u64::from(rand::random::<u16>()) % (half + 1))
}

/// What the agent reports about the coordinator it uses: which address
/// (`portwatch_agent_coordinator_info{address,url}` is 1 for it, 0 for the
/// one before) and how often it moved to another address
/// (`portwatch_agent_coordinator_failovers_total`).
#[derive(Default)]
pub struct InUse {
    current: Option<Candidate>,
}

impl InUse {
    /// A session is established with `c`.
    pub fn connected(&mut self, c: &Candidate) {
        if let Some(before) = self.current.replace(c.clone()) {
            if before.addr == c.addr {
                return;
            }
            metrics::gauge!(
                "portwatch_agent_coordinator_info",
                "address" => before.addr.to_string(),
                "url" => before.entry.to_string()
            )
            .set(0.0);
            metrics::counter!("portwatch_agent_coordinator_failovers_total").increment(1);
        }
        metrics::gauge!(
            "portwatch_agent_coordinator_info",
            "address" => c.addr.to_string(),
            "url" => c.entry.to_string()
        )
        .set(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(https: bool, host: &str, port: u16) -> CoordinatorUrl {
        CoordinatorUrl {
            https,
            host: host.into(),
            port,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_name_with_several_addresses_is_several_candidates_that_keep_the_name() {
        let name = entry(true, "coord.example.com", 7400);
        let literal = entry(true, "10.0.0.9", 7401);
        let c = expand(&[
            (
                name.clone(),
                vec![ip("10.0.0.1"), ip("fd00::2"), ip("10.0.0.1")],
            ),
            (literal.clone(), vec![ip("10.0.0.9")]),
        ]);
        let addrs: Vec<String> = c.iter().map(|c| c.addr.to_string()).collect();
        // The resolver's duplicate is tried once.
        assert_eq!(addrs, ["10.0.0.1:7400", "[fd00::2]:7400", "10.0.0.9:7401"]);
        assert_eq!(c[0].url(), "https://10.0.0.1:7400");
        assert_eq!(c[1].url(), "https://[fd00::2]:7400");
        // Connected to by address, verified by name.
        assert_eq!(c[0].tls_name(None).as_deref(), Some("coord.example.com"));
        assert_eq!(c[1].tls_name(None).as_deref(), Some("coord.example.com"));
        assert_eq!(c[2].tls_name(None), None);
        assert_eq!(c[2].tls_name(Some("pinned")).as_deref(), Some("pinned"));
        assert_eq!(
            c[0].to_string(),
            "https://coord.example.com:7400 (10.0.0.1:7400)"
        );
        assert_eq!(c[2].to_string(), "https://10.0.0.9:7401");
        // The same address through two entries: once, from the first.
        let again = expand(&[
            (name.clone(), vec![ip("10.0.0.9")]),
            (entry(true, "other.example.com", 7401), vec![ip("10.0.0.9")]),
        ]);
        assert_eq!(again.len(), 2);
        // A name that did not resolve gives no candidate this round.
        assert!(expand(&[(name, Vec::new())]).is_empty());
    }

    #[test]
    fn a_round_starts_after_the_address_used_last() {
        let c = expand(&[(
            entry(false, "localhost", 7400),
            vec![ip("127.0.0.1"), ip("127.0.0.2"), ip("127.0.0.3")],
        )]);
        let order = |last: Option<&str>| -> Vec<String> {
            round(c.clone(), last.map(|l| l.parse().unwrap()))
                .iter()
                .map(|c| c.addr.ip().to_string())
                .collect()
        };
        assert_eq!(order(None), ["127.0.0.1", "127.0.0.2", "127.0.0.3"]);
        assert_eq!(
            order(Some("127.0.0.1:7400")),
            ["127.0.0.2", "127.0.0.3", "127.0.0.1"]
        );
        assert_eq!(
            order(Some("127.0.0.3:7400")),
            ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
        );
        // An address no longer among them: from the start.
        assert_eq!(
            order(Some("127.0.0.9:7400")),
            ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
        );
    }

    #[test]
    fn the_backoff_is_paid_per_round_of_failures_not_per_address() {
        let quick = Duration::from_secs(1);
        let mut p = Pacing::default();
        // Three addresses: two failures move on at once, the third ends the round.
        assert_eq!(p.failed(3, quick), None);
        assert_eq!(p.failed(3, quick), None);
        assert_eq!(p.failed(3, quick), Some(FIRST_BACKOFF));
        // The next round: the same, with the wait doubled.
        assert_eq!(p.failed(3, quick), None);
        assert_eq!(p.failed(3, quick), None);
        assert_eq!(p.failed(3, quick), Some(FIRST_BACKOFF * 2));
        // One address: a wait after each failure, as before failover existed.
        let mut one = Pacing::default();
        let waits: Vec<_> = (0..9).map(|_| one.failed(1, quick)).collect();
        assert_eq!(waits[0], Some(Duration::from_millis(250)));
        assert_eq!(waits[1], Some(Duration::from_millis(500)));
        assert_eq!(waits[8], Some(MAX_BACKOFF));
        // A session that lived resets it: the next address at once, then the first wait.
        assert_eq!(one.failed(2, LIVED * 2), None);
        assert_eq!(one.failed(2, quick), Some(FIRST_BACKOFF));
        // A Drain is no failure.
        one.failed(2, quick);
        one.drained();
        assert_eq!(one.failed(2, quick), None);
        assert_eq!(one.failed(2, quick), Some(FIRST_BACKOFF));
        // Nothing resolved: a round of its own.
        assert_eq!(one.round_failed(), FIRST_BACKOFF * 2);
        for _ in 0..100 {
            let w = with_jitter(Duration::from_millis(400));
            assert!(w >= Duration::from_millis(400) && w <= Duration::from_millis(600));
        }
    }

    #[tokio::test]
    async fn ip_entries_are_not_resolved() {
        let c = resolve(&[entry(true, "::1", 7400), entry(true, "127.0.0.1", 7401)]).await;
        let addrs: Vec<String> = c.iter().map(|c| c.addr.to_string()).collect();
        assert_eq!(addrs, ["[::1]:7400", "127.0.0.1:7401"]);
    }
}
