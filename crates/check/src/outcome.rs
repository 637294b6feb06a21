//! What a check came to, and the settings that shape one check.
//!
//! These are the domain types; the protocol crate converts its wire enums into
//! them at the edge (`portwatch_proto::convert`), so inner code never sees
//! `*_UNSPECIFIED` or an out-of-range value. This crate does not know the wire.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The outcome of one check. The first four failures are the failure reasons
/// of DESIGN.md ("The check") and count as the target being down; `Blocked`
/// and `ProbeError` never do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Refused,
    TimedOut,
    DnsFailed,
    Unreachable,
    Blocked,
    ProbeError,
}

impl Outcome {
    /// Every outcome, in wire order.
    pub const ALL: [Outcome; 7] = [
        Outcome::Ok,
        Outcome::Refused,
        Outcome::TimedOut,
        Outcome::DnsFailed,
        Outcome::Unreachable,
        Outcome::Blocked,
        Outcome::ProbeError,
    ];

    /// True for the failures that mean the target is down (DESIGN.md's four reasons).
    pub fn is_target_failure(self) -> bool {
        matches!(
            self,
            Outcome::Refused | Outcome::TimedOut | Outcome::DnsFailed | Outcome::Unreachable
        )
    }

    /// The human text, in the requirements' wording for the four failure reasons (DESIGN.md).
    pub fn text(self) -> &'static str {
        match self {
            Outcome::Ok => "Connected",
            Outcome::Refused => "Connection refused",
            Outcome::TimedOut => "Connection timed out",
            Outcome::DnsFailed => "DNS resolution failed",
            Outcome::Unreachable => "Network unreachable",
            Outcome::Blocked => "Blocked: non-public address",
            Outcome::ProbeError => "Probe error",
        }
    }

    /// The short machine name (`ok`, `refused`, `timed_out`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::TimedOut => "timed_out",
            Outcome::DnsFailed => "dns_failed",
            Outcome::Unreachable => "unreachable",
            Outcome::Blocked => "blocked",
            Outcome::ProbeError => "probe_error",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A value (from the wire, a file or a flag) that does not name a valid choice,
/// with the field it came in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct WireError {
    pub field: &'static str,
    pub reason: String,
}

impl WireError {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        WireError {
            field,
            reason: reason.into(),
        }
    }
}

/// Which address families a check may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    #[default]
    Any,
    Ipv4,
    Ipv6,
}

/// How many resolved addresses must connect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddressPolicy {
    /// One address connecting is success (what a client sees).
    #[default]
    Any,
    /// Every resolved address must connect (a dead backend behind round-robin DNS).
    All,
}

/// How the probe closes the connections it opens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseMode {
    /// Orderly close.
    #[default]
    Fin,
    /// SO_LINGER 0: a RST, no TIME_WAIT on the probe host.
    Rst,
}

/// Settings are also read from text (the agent's config file and flags, the
/// `check` command), case-insensitively by their variant names.
macro_rules! from_str {
    ($domain:ident, $field:literal, [$($d:ident),* $(,)?]) => {
        impl std::str::FromStr for $domain {
            type Err = WireError;
            fn from_str(s: &str) -> Result<Self, WireError> {
                $(if s.eq_ignore_ascii_case(stringify!($d)) {
                    return Ok($domain::$d);
                })*
                Err(WireError::new($field, format!("unknown value {s:?}")))
            }
        }
    };
}

from_str!(Family, "family", [Any, Ipv4, Ipv6]);
from_str!(AddressPolicy, "address_policy", [Any, All]);
from_str!(CloseMode, "close_mode", [Fin, Rst]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_four_spec_reasons_are_target_failures() {
        let failures: Vec<_> = Outcome::ALL
            .into_iter()
            .filter(|o| o.is_target_failure())
            .collect();
        assert_eq!(
            failures,
            [
                Outcome::Refused,
                Outcome::TimedOut,
                Outcome::DnsFailed,
                Outcome::Unreachable
            ]
        );
    }

    #[test]
    fn settings_parse_from_text_and_refuse_unknown_values() {
        assert_eq!("ipv4".parse::<Family>(), Ok(Family::Ipv4));
        assert_eq!("ALL".parse::<AddressPolicy>(), Ok(AddressPolicy::All));
        assert!("sideways".parse::<CloseMode>().is_err());
    }
}
