//! One check, as DESIGN.md ("The check") defines it: resolve, guard, connect, classify, time.
//!
//! Guarantees:
//! - one deadline (the monitor's timeout) covers DNS and handshake together;
//! - the guard runs on every resolved address right before connecting, so a name
//!   that changes its answer (DNS rebinding) cannot slip a private address past it;
//! - with several addresses and `AddressPolicy::Any`, attempts are raced
//!   Happy-Eyeballs style (RFC 8305: families interleaved, the first address first,
//!   the next one started 250 ms later or as soon as one fails);
//! - no byte is ever sent.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use tokio::task::JoinSet;

use crate::connect::{Attempt, attempt, micros};
use crate::guard::Guard;
use crate::host::Host;
use crate::resolve::Resolver;
use crate::{AddressPolicy, CloseMode, Family, Outcome};

/// RFC 8305 "Connection Attempt Delay".
pub const ATTEMPT_DELAY: Duration = Duration::from_millis(250);
/// The requirements' connect timeout (DESIGN.md, "Requirements").
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// Smallest and largest per-monitor timeout (DESIGN.md, "The check": 1-10 s).
pub const MIN_TIMEOUT_MS: u32 = 1_000;
pub const MAX_TIMEOUT_MS: u32 = 10_000;

/// What to check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckSpec {
    pub host: Host,
    pub port: u16,
    pub timeout: Duration,
    pub family: Family,
    pub address_policy: AddressPolicy,
    pub close_mode: CloseMode,
}

impl CheckSpec {
    /// A spec with the defaults: 3 s, any family, any address, FIN close.
    pub fn new(host: Host, port: u16) -> CheckSpec {
        CheckSpec {
            host,
            port,
            timeout: DEFAULT_TIMEOUT,
            family: Family::Any,
            address_policy: AddressPolicy::Any,
            close_mode: CloseMode::Fin,
        }
    }
}

/// The result of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult {
    /// Wall-clock start of the check.
    pub checked_at: SystemTime,
    pub outcome: Outcome,
    pub detail: String,
    /// The address the verdict is about: the one that connected, or the one that failed.
    pub address: Option<SocketAddr>,
    pub dns_us: u64,
    pub connect_us: u64,
    pub total_us: u64,
    pub tcp_rtt_us: Option<u64>,
    /// Every address considered, in the order tried (blocked ones included).
    pub attempts: Vec<Attempt>,
}

/// Runs checks. One per agent; cheap to clone.
#[derive(Clone)]
pub struct Checker {
    resolver: Resolver,
    guard: Guard,
    source: Option<IpAddr>,
}

impl Checker {
    pub fn new(resolver: Resolver, guard: Guard) -> Checker {
        Checker {
            resolver,
            guard,
            source: None,
        }
    }

    /// Binds outgoing connections to this source address (when families match).
    pub fn with_source(mut self, source: Option<IpAddr>) -> Checker {
        self.source = source;
        self
    }

    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// Runs one check.
    pub async fn check(&self, spec: &CheckSpec) -> CheckResult {
        let checked_at = SystemTime::now();
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + spec.timeout;

        // 1. Resolve (IP literals skip DNS).
        let resolved = match &spec.host {
            Host::Ip(ip) => Ok(vec![*ip]),
            Host::Name(name) => {
                match tokio::time::timeout_at(deadline, self.resolver.lookup(name)).await {
                    Ok(Ok(addrs)) => Ok(addrs),
                    Ok(Err(e)) => Err((e.outcome, e.detail)),
                    Err(_) => Err((
                        Outcome::DnsFailed,
                        format!(
                            "{name}: no DNS answer within the {} ms deadline",
                            spec.timeout.as_millis()
                        ),
                    )),
                }
            }
        };
        let dns_us = match spec.host {
            Host::Ip(_) => 0,
            Host::Name(_) => micros(started.elapsed()),
        };
        let finish = |outcome: Outcome,
                      detail: String,
                      address: Option<SocketAddr>,
                      attempts: Vec<Attempt>| {
            let chosen = address.and_then(|a| attempts.iter().find(|t: &&Attempt| t.address == a));
            CheckResult {
                checked_at,
                outcome,
                detail,
                address,
                dns_us,
                connect_us: chosen.map_or(0, |t| t.connect_us),
                total_us: micros(started.elapsed()),
                tcp_rtt_us: chosen.and_then(|t| t.tcp_rtt_us),
                attempts,
            }
        };
        let ips = match resolved {
            Ok(ips) => ips,
            Err((outcome, detail)) => return finish(outcome, detail, None, Vec::new()),
        };

        // 2. Family filter.
        let ips: Vec<IpAddr> = ips
            .into_iter()
            .filter(|ip| match spec.family {
                Family::Any => true,
                Family::Ipv4 => ip.is_ipv4(),
                Family::Ipv6 => ip.is_ipv6(),
            })
            .collect();
        if ips.is_empty() {
            let detail = format!(
                "{}: no {} address",
                spec.host.as_str(),
                family_name(spec.family)
            );
            return finish(Outcome::DnsFailed, detail, None, Vec::new());
        }

        // 3. Guard, on every address, right before connecting.
        let mut attempts = Vec::new();
        let mut allowed = Vec::new();
        for ip in ips {
            let address = SocketAddr::new(ip, spec.port);
            match self.guard.check(ip) {
                Ok(()) => allowed.push(address),
                Err(reason) => attempts.push(Attempt {
                    address,
                    outcome: Outcome::Blocked,
                    detail: format!("{ip}: {reason}"),
                    connect_us: 0,
                    tcp_rtt_us: None,
                }),
            }
        }
        if allowed.is_empty() {
            let detail = match attempts.first() {
                Some(t) if attempts.len() == 1 => format!("not connecting: {}", t.detail),
                _ => format!(
                    "not connecting: all {} addresses are non-public",
                    attempts.len()
                ),
            };
            return finish(Outcome::Blocked, detail, None, attempts);
        }

        // 4. Connect.
        let (outcome, detail, address, tried) = match spec.address_policy {
            AddressPolicy::Any => {
                self.race(interleave(allowed), spec.close_mode, deadline)
                    .await
            }
            AddressPolicy::All => self.all(allowed, spec.close_mode, deadline).await,
        };
        attempts.extend(tried);
        let mut result = finish(outcome, detail, address, attempts);
        if spec.address_policy == AddressPolicy::All && outcome == Outcome::Ok {
            // Every backend connected: report the slowest, which is what a user waits on.
            let ok = result.attempts.iter().filter(|t| t.outcome == Outcome::Ok);
            result.connect_us = ok.clone().map(|t| t.connect_us).max().unwrap_or(0);
            result.tcp_rtt_us = ok.filter_map(|t| t.tcp_rtt_us).max();
        }
        result
    }

    /// Happy Eyeballs: the first success wins; losers are dropped (closed).
    async fn race(
        &self,
        addrs: Vec<SocketAddr>,
        close: CloseMode,
        deadline: tokio::time::Instant,
    ) -> (Outcome, String, Option<SocketAddr>, Vec<Attempt>) {
        // The common case, one address: no task, no timer.
        if let [only] = addrs[..] {
            let t = attempt(only, self.source, close, deadline).await;
            return (t.outcome, t.detail.clone(), Some(only), vec![t]);
        }
        let mut pending = addrs.into_iter();
        let mut running = JoinSet::new();
        let mut done: Vec<Attempt> = Vec::new();
        let source = self.source;
        let start = |set: &mut JoinSet<Attempt>, next: Option<SocketAddr>| match next {
            Some(a) => {
                set.spawn(attempt(a, source, close, deadline));
                true
            }
            None => false,
        };
        let mut more = start(&mut running, pending.next());
        loop {
            let stagger = tokio::time::sleep(ATTEMPT_DELAY);
            tokio::select! {
                joined = running.join_next() => match joined {
                    Some(Ok(t)) if t.outcome == Outcome::Ok => {
                        let (detail, address) = (t.detail.clone(), Some(t.address));
                        done.push(t);
                        return (Outcome::Ok, detail, address, done);
                    }
                    Some(Ok(t)) => {
                        done.push(t);
                        // A failure starts the next attempt at once (RFC 8305 §5).
                        if more {
                            more = start(&mut running, pending.next());
                        }
                    }
                    Some(Err(join)) => done.push(Attempt {
                        address: SocketAddr::from(([0, 0, 0, 0], 0)),
                        outcome: Outcome::ProbeError,
                        detail: format!("attempt task failed: {join}"),
                        connect_us: 0,
                        tcp_rtt_us: None,
                    }),
                    None => break,
                },
                () = stagger, if more => {
                    more = start(&mut running, pending.next());
                }
            }
            if running.is_empty() && !more {
                break;
            }
        }
        // Addresses never tried because the deadline passed first.
        for a in pending {
            done.push(Attempt {
                address: a,
                outcome: Outcome::TimedOut,
                detail: format!("{a}: not tried before the deadline"),
                connect_us: 0,
                tcp_rtt_us: None,
            });
        }
        let (outcome, detail, address) = verdict_of_failures(&done);
        (outcome, detail, address, done)
    }

    /// Every address, concurrently; success only when all connect.
    async fn all(
        &self,
        addrs: Vec<SocketAddr>,
        close: CloseMode,
        deadline: tokio::time::Instant,
    ) -> (Outcome, String, Option<SocketAddr>, Vec<Attempt>) {
        let total = addrs.len();
        let mut running = JoinSet::new();
        for (i, a) in addrs.iter().enumerate() {
            let source = self.source;
            let a = *a;
            running.spawn(async move { (i, attempt(a, source, close, deadline).await) });
        }
        let mut slots: Vec<Option<Attempt>> = vec![None; total];
        while let Some(joined) = running.join_next().await {
            if let Ok((i, t)) = joined
                && let Some(slot) = slots.get_mut(i)
            {
                *slot = Some(t);
            }
        }
        let done: Vec<Attempt> = addrs
            .iter()
            .zip(slots)
            .map(|(a, t)| {
                t.unwrap_or_else(|| Attempt {
                    address: *a,
                    outcome: Outcome::ProbeError,
                    detail: format!("{a}: attempt task failed"),
                    connect_us: 0,
                    tcp_rtt_us: None,
                })
            })
            .collect();
        let failed: Vec<&Attempt> = done.iter().filter(|t| t.outcome != Outcome::Ok).collect();
        if failed.is_empty() {
            let detail = format!("all {total} addresses connected");
            let address = done.first().map(|t| t.address);
            return (Outcome::Ok, detail, address, done);
        }
        let (outcome, detail, address) = verdict_of_failures(&done);
        let detail = format!("{} of {total} addresses failed; {detail}", failed.len());
        (outcome, detail, address, done)
    }
}

/// The verdict when no address connected (or, for `all`, some did not): the most
/// telling target failure wins (an answer beats silence), and only when every
/// attempt failed through the agent's own fault is it a probe error.
fn verdict_of_failures(done: &[Attempt]) -> (Outcome, String, Option<SocketAddr>) {
    const ORDER: [Outcome; 5] = [
        Outcome::Refused,
        Outcome::TimedOut,
        Outcome::Unreachable,
        Outcome::DnsFailed,
        Outcome::ProbeError,
    ];
    for outcome in ORDER {
        if let Some(t) = done.iter().find(|t| t.outcome == outcome) {
            return (outcome, t.detail.clone(), Some(t.address));
        }
    }
    (
        Outcome::ProbeError,
        "no address was tried".to_string(),
        None,
    )
}

/// RFC 8305 §4: alternate families, starting with the family of the first address.
fn interleave(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let Some(first) = addrs.first().copied() else {
        return addrs;
    };
    let (mut preferred, mut other): (Vec<_>, Vec<_>) = addrs
        .into_iter()
        .partition(|a| a.is_ipv4() == first.is_ipv4());
    let mut out = Vec::with_capacity(preferred.len() + other.len());
    preferred.reverse();
    other.reverse();
    loop {
        match (preferred.pop(), other.pop()) {
            (None, None) => break,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
    out
}

fn family_name(f: Family) -> &'static str {
    match f {
        Family::Any => "IP",
        Family::Ipv4 => "IPv4",
        Family::Ipv6 => "IPv6",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn interleave_alternates_families_from_the_first() {
        let got = interleave(vec![
            sa("[::1]:1"),
            sa("[::2]:1"),
            sa("1.1.1.1:1"),
            sa("2.2.2.2:1"),
            sa("3.3.3.3:1"),
        ]);
        let want = vec![
            sa("[::1]:1"),
            sa("1.1.1.1:1"),
            sa("[::2]:1"),
            sa("2.2.2.2:1"),
            sa("3.3.3.3:1"),
        ];
        assert_eq!(got, want);
        let got = interleave(vec![sa("1.1.1.1:1"), sa("[::1]:1")]);
        assert_eq!(got, vec![sa("1.1.1.1:1"), sa("[::1]:1")]);
    }

    #[test]
    fn an_answer_beats_silence_and_probe_faults_come_last() {
        let t = |a: &str, o| Attempt {
            address: sa(a),
            outcome: o,
            detail: a.into(),
            connect_us: 0,
            tcp_rtt_us: None,
        };
        let done = [
            t("[::1]:1", Outcome::ProbeError),
            t("1.1.1.1:1", Outcome::TimedOut),
            t("2.2.2.2:1", Outcome::Refused),
        ];
        assert_eq!(verdict_of_failures(&done).0, Outcome::Refused);
        let done = [
            t("[::1]:1", Outcome::ProbeError),
            t("1.1.1.1:1", Outcome::Unreachable),
        ];
        assert_eq!(verdict_of_failures(&done).0, Outcome::Unreachable);
        let done = [t("[::1]:1", Outcome::ProbeError)];
        assert_eq!(verdict_of_failures(&done).0, Outcome::ProbeError);
    }
}
