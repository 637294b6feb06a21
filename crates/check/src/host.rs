//! A monitor's host, parsed once at the edge: an IP literal or a DNS name.
//!
//! The proto layer turns the user's host string into a [`Host`] with
//! [`Host::parse`], so the resolver, the guard and the notifications never see an
//! untrimmed, upper-case, Unicode, wildcard or half-IP string. Pure, no I/O.
//!
//! What it guarantees:
//! - [`Host::Ip`] holds any IPv4 or IPv6 address written as a literal (IPv6 with or
//!   without brackets, never with a zone id); whether it is public is the guard's
//!   business, not this module's.
//! - [`Host::Name`] holds lower-case ASCII: non-ASCII input is mapped and encoded by
//!   IDNA (UTS #46, Punycode), the trailing root dot is dropped, the whole name is at
//!   most 253 characters and each label 1 to 63, all counted on the ASCII form.
//! - Labels hold letters, digits, `-` and `_`, never start or end with `-`. The
//!   underscore is accepted on purpose: DNS allows it, and real targets (service
//!   records such as `_sip._tcp`, some cloud host names) carry one.
//! - A name whose last label is numeric (`1.2.3`, `256.1.1.1`, `01.2.3.4`, `0x7f.1`)
//!   is refused: resolvers' `inet_aton` reads such strings as IPv4 numbers, so a
//!   "name" like `127.1` would reach loopback without ever being an IP literal here.
//! - [`is_local_name`] recognises names that are non-public by definition, so the
//!   coordinator can refuse them before any agent resolves them.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};

/// The longest name DNS can carry, in ASCII characters without the root dot.
const MAX_NAME: usize = 253;
/// The longest label, in ASCII characters.
const MAX_LABEL: usize = 63;
/// How much of an over-long label an error message quotes.
const QUOTED_LABEL: usize = 20;

/// Where a monitor connects: an address, or a name to resolve first.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    /// Lower-case ASCII, IDNA-encoded (Punycode), no trailing dot.
    Name(String),
}

/// Why a host string was refused. Each message is the reason, written to follow the
/// field name ("host: must not be empty").
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("must not be empty")]
    Empty,
    #[error("contains whitespace")]
    Whitespace,
    #[error("contains a control character")]
    ControlCharacter,
    #[error("is {0} characters long; at most 253")]
    TooLong(usize),
    #[error("label \"{label}\" is {len} characters; at most 63")]
    LabelTooLong { label: String, len: usize },
    #[error("has an empty label (a leading dot or two dots in a row)")]
    EmptyLabel,
    #[error("wildcards are not allowed")]
    Wildcard,
    #[error("label \"{0}\" must not start or end with '-'")]
    Hyphen(String),
    #[error("invalid character {0:?}")]
    InvalidCharacter(char),
    #[error("must not carry a port; the port is a field of its own")]
    HasPort,
    #[error("not a valid IDNA name: \"{0}\" fails UTS #46 mapping, Punycode or bidi rules")]
    Idna(String),
    #[error("IPv6 literal must not carry a zone id")]
    ZoneId,
    #[error("IPv6 literal in brackets must end with ']'")]
    UnclosedBracket,
    #[error("\"{0}\" is not a valid IPv6 address")]
    InvalidIpv6(String),
    #[error("looks like an IP address but is not a valid one")]
    NotAnIp,
}

impl Host {
    /// Parses a host as a user wrote it. Nothing is trimmed: surrounding whitespace is
    /// an error, not something to guess about.
    pub fn parse(input: &str) -> Result<Host, HostError> {
        if input.is_empty() {
            return Err(HostError::Empty);
        }
        if input.chars().any(char::is_whitespace) {
            return Err(HostError::Whitespace);
        }
        if input.chars().any(char::is_control) {
            return Err(HostError::ControlCharacter);
        }
        if let Some(inner) = input.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or(HostError::UnclosedBracket)?;
            return parse_ipv6(inner).map(|ip| Host::Ip(IpAddr::V6(ip)));
        }
        match input.matches(':').count() {
            0 => {}
            // Every IPv6 literal has two colons at least; one colon is "host:port".
            1 if input
                .rsplit(':')
                .next()
                .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit())) =>
            {
                return Err(HostError::HasPort);
            }
            1 => return Err(HostError::InvalidCharacter(':')),
            _ => return parse_ipv6(input).map(|ip| Host::Ip(IpAddr::V6(ip))),
        }
        if let Ok(ip) = input.parse::<Ipv4Addr>() {
            return Ok(Host::Ip(IpAddr::V4(ip)));
        }
        // Checked on the input first, so the error names the character the user typed.
        for c in input.chars().filter(char::is_ascii) {
            check_name_char(c)?;
        }
        parse_name(input)
    }

    /// The host as text: the address without brackets, or the ASCII name.
    pub fn as_str(&self) -> String {
        self.to_string()
    }

    /// True when the host is non-public by definition: a non-public IP literal (see
    /// [`crate::guard`]) or a name [`is_local_name`] recognises.
    pub fn is_non_public(&self) -> bool {
        match self {
            Host::Ip(ip) => !crate::guard::is_public(*ip),
            Host::Name(name) => is_local_name(name),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

fn parse_ipv6(text: &str) -> Result<Ipv6Addr, HostError> {
    if text.contains('%') {
        return Err(HostError::ZoneId);
    }
    text.parse()
        .map_err(|_| HostError::InvalidIpv6(text.to_owned()))
}

/// The ASCII characters a name may hold: LDH, the underscore, and the label dot.
fn check_name_char(c: char) -> Result<(), HostError> {
    match c {
        'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '.' => Ok(()),
        '*' => Err(HostError::Wildcard),
        c if c.is_whitespace() => Err(HostError::Whitespace),
        c if c.is_control() => Err(HostError::ControlCharacter),
        c => Err(HostError::InvalidCharacter(c)),
    }
}

fn parse_name(input: &str) -> Result<Host, HostError> {
    // No ASCII deny list and hyphens allowed: our own rules below run on the ASCII
    // result, which also catches a Unicode character IDNA maps onto a bad ASCII one
    // (a full-width '／' becomes '/'). Length is ours too, to name the label.
    let ascii = Uts46::new()
        .to_ascii(
            input.as_bytes(),
            AsciiDenyList::EMPTY,
            Hyphens::Allow,
            DnsLength::Ignore,
        )
        .map_err(|_| HostError::Idna(input.to_owned()))?;
    let mut name = ascii.into_owned();
    name.make_ascii_lowercase();
    // After IDNA, so an ideographic full stop at the end counts as the root dot too.
    if name.ends_with('.') {
        name.pop();
    }
    if name.is_empty() {
        return Err(HostError::EmptyLabel);
    }
    // IDNA can turn full-width digits into a real IPv4 literal; it is that address.
    if let Ok(ip) = name.parse::<Ipv4Addr>() {
        return Ok(Host::Ip(IpAddr::V4(ip)));
    }
    if name.len() > MAX_NAME {
        return Err(HostError::TooLong(name.len()));
    }
    let mut last = "";
    for label in name.split('.') {
        check_label(label)?;
        last = label;
    }
    if looks_numeric(last) {
        return Err(HostError::NotAnIp);
    }
    Ok(Host::Name(name))
}

fn check_label(label: &str) -> Result<(), HostError> {
    if label.is_empty() {
        return Err(HostError::EmptyLabel);
    }
    if label.len() > MAX_LABEL {
        let quoted: String = label.chars().take(QUOTED_LABEL).chain(['…']).collect();
        return Err(HostError::LabelTooLong {
            label: quoted,
            len: label.len(),
        });
    }
    for c in label.chars() {
        check_name_char(c)?;
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(HostError::Hyphen(label.to_owned()));
    }
    Ok(())
}

/// True for what `inet_aton` would read as a number: decimal or octal digits, or
/// `0x` and hex digits (the WHATWG URL "ends in a number" rule).
fn looks_numeric(label: &str) -> bool {
    if let Some(hex) = label.strip_prefix("0x") {
        return hex.bytes().all(|b| b.is_ascii_hexdigit());
    }
    label.bytes().all(|b| b.is_ascii_digit())
}

/// Names that are non-public by definition (RFC 6761, 6762, 7686, 8375, and ICANN's
/// `.internal`): `localhost` and `*.localhost`, `localhost.localdomain`, and anything
/// under `.local` (mDNS), `.internal`, `.home.arpa`, `.invalid`, `.test` or `.onion`.
/// Case-insensitive; one trailing dot is ignored.
///
/// `.example` is left out on purpose: it is for documentation, but `example.com` and
/// friends resolve publicly. Reverse zones of private space are left out too: nobody
/// monitors a port on a PTR name, and the guard judges whatever they resolve to.
pub fn is_local_name(name: &str) -> bool {
    const EXACT: &[&str] = &["localhost.localdomain"];
    const ZONES: &[&str] = &[
        "localhost",
        "local",
        "internal",
        "home.arpa",
        "invalid",
        "test",
        "onion",
    ];
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if EXACT.contains(&name.as_str()) {
        return true;
    }
    ZONES.iter().any(|zone| {
        name == *zone
            || name
                .strip_suffix(zone)
                .is_some_and(|head| head.ends_with('.'))
    })
}

#[cfg(test)]
mod tests;
