//! What the server says about each name: the answers a test has set, the TTL, and
//! how many queries each name has had.
//!
//! This is the decision only, with no I/O, so the rules (unknown names are NXDOMAIN,
//! a family with no address is NODATA, other classes are refused) are tested here
//! as a table.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::wire::{CLASS_IN, Rcode, Reply, TYPE_A, TYPE_AAAA};

/// How the server answers queries for one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A records for the IPv4 addresses, AAAA records for the IPv6 ones. A query for
    /// a family with no address here, or for any other type, gets NOERROR with an
    /// empty answer (NODATA).
    Addrs(Vec<IpAddr>),
    /// The name does not exist.
    NxDomain,
    /// The server failed.
    ServFail,
    /// The server refuses to answer.
    Refused,
    /// No reply at all, so the resolver times out.
    Drop,
}

/// The TTL until a test sets another: short, so resolver caches expire within a test.
const DEFAULT_TTL_SECS: u32 = 1;

#[derive(Debug)]
pub(crate) struct Zone {
    answers: HashMap<String, Answer>,
    ttl: u32,
    queries: HashMap<String, u64>,
}

impl Default for Zone {
    fn default() -> Self {
        Zone {
            answers: HashMap::new(),
            ttl: DEFAULT_TTL_SECS,
            queries: HashMap::new(),
        }
    }
}

/// The key for a name as a test writes it: case-insensitive, trailing dot optional.
/// Matches the form [`crate::wire::parse_query`] gives names from the wire.
pub(crate) fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

impl Zone {
    pub(crate) fn set(&mut self, name: &str, answer: Answer) {
        self.answers.insert(normalize(name), answer);
    }

    pub(crate) fn set_ttl(&mut self, ttl_secs: u32) {
        self.ttl = ttl_secs;
    }

    pub(crate) fn queries(&self, name: &str) -> u64 {
        self.queries.get(&normalize(name)).copied().unwrap_or(0)
    }

    /// Counts the query and decides the reply; `None` means stay silent.
    /// `name` must already be normalised (the wire parser does that).
    pub(crate) fn answer(&mut self, name: &str, qtype: u16, qclass: u16) -> Option<Reply> {
        *self.queries.entry(name.to_owned()).or_default() += 1;
        let reply = match self.answers.get(name) {
            Some(Answer::Drop) => return None,
            // We serve class IN only; any other class is a zone we do not have.
            _ if qclass != CLASS_IN => Reply::error(Rcode::Refused),
            None | Some(Answer::NxDomain) => Reply {
                rcode: Rcode::NxDomain,
                addrs: Vec::new(),
                ttl: self.ttl,
            },
            Some(Answer::ServFail) => Reply::error(Rcode::ServFail),
            Some(Answer::Refused) => Reply::error(Rcode::Refused),
            Some(Answer::Addrs(addrs)) => Reply {
                rcode: Rcode::NoError,
                addrs: addrs
                    .iter()
                    .filter(|addr| match qtype {
                        TYPE_A => addr.is_ipv4(),
                        TYPE_AAAA => addr.is_ipv6(),
                        _ => false,
                    })
                    .copied()
                    .collect(),
                ttl: self.ttl,
            },
        };
        Some(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MX: u16 = 15;
    const CLASS_CH: u16 = 3;

    #[test]
    fn answers_by_rule() {
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let mut zone = Zone::default();
        zone.set("both.test", Answer::Addrs(vec![v4, v6]));
        zone.set("v4.test", Answer::Addrs(vec![v4]));
        zone.set("nx.test", Answer::NxDomain);
        zone.set("fail.test", Answer::ServFail);
        zone.set("no.test", Answer::Refused);
        zone.set("silent.test", Answer::Drop);

        let reply = |rcode, addrs: &[IpAddr], ttl| {
            Some(Reply {
                rcode,
                addrs: addrs.to_vec(),
                ttl,
            })
        };
        let cases = [
            (
                "both.test",
                TYPE_A,
                CLASS_IN,
                reply(Rcode::NoError, &[v4], 1),
            ),
            (
                "both.test",
                TYPE_AAAA,
                CLASS_IN,
                reply(Rcode::NoError, &[v6], 1),
            ),
            (
                "v4.test",
                TYPE_AAAA,
                CLASS_IN,
                reply(Rcode::NoError, &[], 1),
            ),
            ("both.test", MX, CLASS_IN, reply(Rcode::NoError, &[], 1)),
            ("both.test", TYPE_A, CLASS_CH, reply(Rcode::Refused, &[], 0)),
            (
                "unknown.test",
                TYPE_A,
                CLASS_IN,
                reply(Rcode::NxDomain, &[], 1),
            ),
            ("nx.test", TYPE_A, CLASS_IN, reply(Rcode::NxDomain, &[], 1)),
            (
                "fail.test",
                TYPE_A,
                CLASS_IN,
                reply(Rcode::ServFail, &[], 0),
            ),
            (
                "no.test",
                TYPE_AAAA,
                CLASS_IN,
                reply(Rcode::Refused, &[], 0),
            ),
            ("silent.test", TYPE_A, CLASS_IN, None),
        ];
        for (name, qtype, qclass, want) in cases {
            assert_eq!(
                zone.answer(name, qtype, qclass),
                want,
                "{name} {qtype} {qclass}"
            );
        }
        assert_eq!(zone.queries("both.test"), 4);
        assert_eq!(zone.queries("silent.test"), 1);
        assert_eq!(zone.queries("never.test"), 0);
    }

    #[test]
    fn names_are_case_insensitive_with_optional_dot() {
        let mut zone = Zone::default();
        zone.set("Mixed.Example.", Answer::ServFail);
        zone.set_ttl(30);
        assert_eq!(
            zone.answer("mixed.example", TYPE_A, CLASS_IN),
            Some(Reply::error(Rcode::ServFail))
        );
        assert_eq!(zone.queries("MIXED.example."), 1);
        zone.set("mixed.example", Answer::Addrs(vec![]));
        let reply = zone.answer("mixed.example", TYPE_A, CLASS_IN).unwrap();
        assert_eq!((reply.rcode, reply.ttl), (Rcode::NoError, 30));
    }
}
