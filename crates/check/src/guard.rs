//! The non-public address guard: may an agent open a connection to this address?
//!
//! A public probe must never become a way into its own network or anyone's private
//! space, so every address a check would connect to is put through [`Guard::check`]
//! *after* resolution and at connect time (a DNS answer that changes between the
//! coordinator's look-up and ours cannot slip past). This module is pure: it takes
//! addresses and returns verdicts, no I/O, so its table test can be exhaustive.
//!
//! What it guarantees:
//! - Every block of the IANA IPv4 and IPv6 special-purpose address registries named in
//!   DESIGN.md's "Guard" section is non-public, matched with integer prefix masks.
//! - IPv6 forms that carry an IPv4 address (IPv4-mapped `::ffff:0:0/96`, NAT64
//!   `64:ff9b::/96`, 6to4 `2002::/16`) are judged by the IPv4 they carry, so
//!   `::ffff:127.0.0.1` is as blocked as `127.0.0.1` and `::ffff:8.8.8.8` as public as
//!   `8.8.8.8`.
//! - IPv6 outside `2000::/3`, the only block IANA allocates as global unicast, is
//!   non-public even where no registry entry names it: nothing public lives there.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// One IPv4 block of the table: network bits, prefix length, human name.
struct V4Block {
    net: u32,
    prefix: u8,
    name: &'static str,
}

/// What an IPv6 block means for the guard.
enum V6Kind {
    /// Non-public, whatever the rest of the address.
    Blocked,
    /// Carries an IPv4 address at `shift` bits from the right; that IPv4 decides.
    EmbedsV4 { shift: u32 },
}

/// One IPv6 block of the table.
struct V6Block {
    net: u128,
    prefix: u8,
    name: &'static str,
    kind: V6Kind,
}

const fn v4(a: u8, b: u8, c: u8, d: u8) -> u32 {
    Ipv4Addr::new(a, b, c, d).to_bits()
}

#[allow(clippy::too_many_arguments)]
const fn v6(a: u16, b: u16, c: u16, d: u16, e: u16, f: u16, g: u16, h: u16) -> u128 {
    Ipv6Addr::new(a, b, c, d, e, f, g, h).to_bits()
}

const fn block4(net: u32, prefix: u8, name: &'static str) -> V4Block {
    V4Block { net, prefix, name }
}

const fn blocked6(net: u128, prefix: u8, name: &'static str) -> V6Block {
    V6Block {
        net,
        prefix,
        name,
        kind: V6Kind::Blocked,
    }
}

const fn embeds6(net: u128, prefix: u8, name: &'static str, shift: u32) -> V6Block {
    V6Block {
        net,
        prefix,
        name,
        kind: V6Kind::EmbedsV4 { shift },
    }
}

/// The IPv4 special-purpose blocks (IANA registry), first match wins.
///
/// Whole blocks are listed even where IANA marks a few addresses inside as globally
/// reachable (192.0.0.9 and 192.0.0.10 in 192.0.0.0/24): a monitoring target never
/// lives there, and a shorter table is easier to trust.
const V4_BLOCKS: &[V4Block] = &[
    block4(v4(0, 0, 0, 0), 8, "0.0.0.0/8 \"this network\""),
    block4(v4(10, 0, 0, 0), 8, "10.0.0.0/8 private-use"),
    block4(
        v4(100, 64, 0, 0),
        10,
        "100.64.0.0/10 shared address space (CGNAT)",
    ),
    block4(v4(127, 0, 0, 0), 8, "127.0.0.0/8 loopback"),
    block4(v4(169, 254, 0, 0), 16, "169.254.0.0/16 link-local"),
    block4(v4(172, 16, 0, 0), 12, "172.16.0.0/12 private-use"),
    block4(
        v4(192, 0, 0, 0),
        24,
        "192.0.0.0/24 IETF protocol assignments",
    ),
    block4(
        v4(192, 0, 2, 0),
        24,
        "192.0.2.0/24 documentation (TEST-NET-1)",
    ),
    block4(
        v4(192, 88, 99, 0),
        24,
        "192.88.99.0/24 6to4 relay anycast (deprecated)",
    ),
    block4(v4(192, 168, 0, 0), 16, "192.168.0.0/16 private-use"),
    block4(v4(198, 18, 0, 0), 15, "198.18.0.0/15 benchmarking"),
    block4(
        v4(198, 51, 100, 0),
        24,
        "198.51.100.0/24 documentation (TEST-NET-2)",
    ),
    block4(
        v4(203, 0, 113, 0),
        24,
        "203.0.113.0/24 documentation (TEST-NET-3)",
    ),
    block4(v4(224, 0, 0, 0), 4, "224.0.0.0/4 multicast"),
    // Before 240/4 so the broadcast address gets its own name.
    block4(
        v4(255, 255, 255, 255),
        32,
        "255.255.255.255/32 limited broadcast",
    ),
    block4(v4(240, 0, 0, 0), 4, "240.0.0.0/4 reserved"),
];

/// The IPv6 special-purpose blocks (IANA registry), first match wins; more specific
/// blocks come before the blocks that contain them.
const V6_BLOCKS: &[V6Block] = &[
    blocked6(0, 128, "::/128 unspecified"),
    blocked6(1, 128, "::1/128 loopback"),
    embeds6(
        v6(0, 0, 0, 0, 0, 0xffff, 0, 0),
        96,
        "::ffff:0:0/96 IPv4-mapped",
        0,
    ),
    // Deprecated (RFC 4291 §2.5.5.1); no stack should route it, so it is not judged by
    // the IPv4 it carries but refused outright.
    blocked6(0, 96, "::/96 IPv4-compatible (deprecated)"),
    embeds6(
        v6(0x64, 0xff9b, 0, 0, 0, 0, 0, 0),
        96,
        "64:ff9b::/96 NAT64 well-known",
        0,
    ),
    // Local-use NAT64 (RFC 8215) is special-purpose in itself: whatever IPv4 it
    // carries, the translator is someone's private one.
    blocked6(
        v6(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        "64:ff9b:1::/48 local-use NAT64",
    ),
    blocked6(v6(0x100, 0, 0, 0, 0, 0, 0, 0), 64, "100::/64 discard-only"),
    // 2001::/23 holds Teredo (2001::/32), ORCHIDv1 (2001:10::/28), ORCHIDv2
    // (2001:20::/28) and others. IANA marks some sub-blocks globally reachable (e.g.
    // 2001:1::1/128, ORCHIDv2), but DESIGN.md refuses the whole /23: none of it is a
    // place a TCP service is monitored, and Teredo tunnels to arbitrary IPv4.
    blocked6(
        v6(0x2001, 0, 0, 0, 0, 0, 0, 0),
        23,
        "2001::/23 IETF protocol assignments",
    ),
    blocked6(
        v6(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        "2001:db8::/32 documentation",
    ),
    // 6to4: bits 16..48 are the IPv4 of the tunnel end.
    embeds6(v6(0x2002, 0, 0, 0, 0, 0, 0, 0), 16, "2002::/16 6to4", 80),
    blocked6(
        v6(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        "3fff::/20 documentation",
    ),
    blocked6(v6(0x5f00, 0, 0, 0, 0, 0, 0, 0), 16, "5f00::/16 SRv6 SIDs"),
    blocked6(v6(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7, "fc00::/7 unique-local"),
    blocked6(v6(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, "fe80::/10 link-local"),
    blocked6(
        v6(0xfec0, 0, 0, 0, 0, 0, 0, 0),
        10,
        "fec0::/10 site-local (deprecated)",
    ),
    blocked6(v6(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, "ff00::/8 multicast"),
];

/// The one IPv6 block IANA allocates as global unicast; all else is reserved.
const V6_GLOBAL_UNICAST: (u128, u8) = (v6(0x2000, 0, 0, 0, 0, 0, 0, 0), 3);
const V6_NOT_GLOBAL_UNICAST: &str = "outside 2000::/3 global unicast (IANA reserved)";

fn mask4(prefix: u8) -> u32 {
    // A shift by the full width is None: prefix 0 masks nothing.
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

/// Why an address is non-public: the range, and the IPv6 form that carried it when the
/// range is an IPv4 one found inside an IPv6 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Verdict {
    range: &'static str,
    via: Option<&'static str>,
}

fn classify_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let bits = ip.to_bits();
    V4_BLOCKS
        .iter()
        .find(|b| bits & mask4(b.prefix) == b.net)
        .map(|b| b.name)
}

fn classify(ip: IpAddr) -> Option<Verdict> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4).map(|range| Verdict { range, via: None }),
        IpAddr::V6(v6) => {
            let bits = v6.to_bits();
            if let Some(block) = V6_BLOCKS.iter().find(|b| bits & mask6(b.prefix) == b.net) {
                return match block.kind {
                    V6Kind::Blocked => Some(Verdict {
                        range: block.name,
                        via: None,
                    }),
                    V6Kind::EmbedsV4 { shift } => {
                        // Truncation is the point: the 32 bits at `shift` are the IPv4.
                        let embedded = Ipv4Addr::from_bits((bits >> shift) as u32);
                        classify_v4(embedded).map(|range| Verdict {
                            range,
                            via: Some(block.name),
                        })
                    }
                };
            }
            let (net, prefix) = V6_GLOBAL_UNICAST;
            if bits & mask6(prefix) != net {
                return Some(Verdict {
                    range: V6_NOT_GLOBAL_UNICAST,
                    via: None,
                });
            }
            None
        }
    }
}

/// Returns the name of the special-purpose range `ip` falls in (e.g.
/// "10.0.0.0/8 private-use"), or None when it is public.
///
/// For an IPv6 address carrying an IPv4 one (IPv4-mapped, NAT64, 6to4) the name is the
/// IPv4 range that the embedded address falls in.
pub fn non_public_range(ip: IpAddr) -> Option<&'static str> {
    classify(ip).map(|v| v.range)
}

/// True when `ip` is in no special-purpose range: a public probe may connect to it.
pub fn is_public(ip: IpAddr) -> bool {
    classify(ip).is_none()
}

/// A CIDR block such as `10.0.0.0/8` or `fd00::/8`.
///
/// Parsing accepts host bits and clears them (`10.1.2.3/8` is `10.0.0.0/8`), the way
/// most routers and `ip route` do; [`Display`](fmt::Display) prints the cleared form,
/// so what an operator sees in a log is the block actually in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a string is not a CIDR block.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("\"{0}\" has no \"/prefix\" (write e.g. 10.0.0.0/8)")]
    MissingPrefix(String),
    #[error("\"{0}\" is not an IPv4 or IPv6 address")]
    BadAddress(String),
    #[error("prefix \"{0}\" is not a number")]
    BadPrefix(String),
    #[error("prefix /{prefix} is longer than the {max} bits of an {family} address")]
    PrefixTooLong {
        prefix: u32,
        max: u8,
        family: &'static str,
    },
}

impl Cidr {
    /// The block holding `addr` under `prefix`; host bits are cleared. None when the
    /// prefix is longer than the address.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        let addr = match addr {
            IpAddr::V4(a) if prefix <= 32 => {
                IpAddr::V4(Ipv4Addr::from_bits(a.to_bits() & mask4(prefix)))
            }
            IpAddr::V6(a) if prefix <= 128 => {
                IpAddr::V6(Ipv6Addr::from_bits(a.to_bits() & mask6(prefix)))
            }
            _ => return None,
        };
        Some(Cidr { addr, prefix })
    }

    /// The network address (host bits clear).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// True when `ip` is inside the block. An IPv4-mapped IPv6 address
    /// (`::ffff:10.0.0.1`) counts as its IPv4 for an IPv4 block: connecting to one is
    /// connecting to the other.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => a.to_bits() & mask4(self.prefix) == net.to_bits(),
            (IpAddr::V4(net), IpAddr::V6(a)) => match a.to_ipv4_mapped() {
                Some(a) => a.to_bits() & mask4(self.prefix) == net.to_bits(),
                None => false,
            },
            (IpAddr::V6(net), IpAddr::V6(a)) => a.to_bits() & mask6(self.prefix) == net.to_bits(),
            (IpAddr::V6(_), IpAddr::V4(_)) => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let Some((addr, prefix)) = s.split_once('/') else {
            return Err(CidrError::MissingPrefix(s.to_owned()));
        };
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| CidrError::BadAddress(addr.to_owned()))?;
        // Digits only: u32's parser would also take "+8".
        if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CidrError::BadPrefix(prefix.to_owned()));
        }
        let bits: u32 = prefix
            .parse()
            .map_err(|_| CidrError::BadPrefix(prefix.to_owned()))?;
        let (max, family) = match ip {
            IpAddr::V4(_) => (32u8, "IPv4"),
            IpAddr::V6(_) => (128u8, "IPv6"),
        };
        let too_long = CidrError::PrefixTooLong {
            prefix: bits,
            max,
            family,
        };
        let prefix = u8::try_from(bits).map_err(|_| too_long.clone())?;
        Cidr::new(ip, prefix).ok_or(too_long)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Which non-public addresses a guard lets through. Public ones always pass.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Allowance {
    None,
    All,
    Within(Vec<Cidr>),
}

/// What an agent may connect to.
///
/// Public regions run [`Guard::public_only`]; a private region (a tenant's self-hosted
/// probe, started with `allow_private_targets`) runs [`Guard::allow_private`] or, to
/// narrow it, [`Guard::allow_private_in`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guard {
    allowance: Allowance,
}

impl Default for Guard {
    fn default() -> Guard {
        Guard::public_only()
    }
}

impl Guard {
    /// Public addresses only: the default for public regions.
    pub fn public_only() -> Guard {
        Guard {
            allowance: Allowance::None,
        }
    }

    /// Everything allowed, non-public addresses included: a self-hosted probe.
    pub fn allow_private() -> Guard {
        Guard {
            allowance: Allowance::All,
        }
    }

    /// Non-public addresses allowed only inside `list`; public ones always allowed. An
    /// empty list is the same as [`Guard::public_only`].
    pub fn allow_private_in(list: Vec<Cidr>) -> Guard {
        if list.is_empty() {
            return Guard::public_only();
        }
        Guard {
            allowance: Allowance::Within(list),
        }
    }

    /// Ok(()) when the address may be connected to; Err(reason text naming the range)
    /// otherwise, e.g. `127.0.0.1 is non-public: 127.0.0.0/8 loopback`.
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        let Some(verdict) = classify(ip) else {
            return Ok(());
        };
        let reason = match verdict.via {
            None => format!("{ip} is non-public: {}", verdict.range),
            Some(via) => format!(
                "{ip} is non-public: {} (IPv4 carried in {via})",
                verdict.range
            ),
        };
        match &self.allowance {
            Allowance::None => Err(reason),
            Allowance::All => Ok(()),
            Allowance::Within(list) if list.iter().any(|c| c.contains(ip)) => Ok(()),
            Allowance::Within(list) => {
                let allowed: Vec<String> = list.iter().map(Cidr::to_string).collect();
                Err(format!(
                    "{reason}, and outside the allowed ranges {}",
                    allowed.join(", ")
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests;
