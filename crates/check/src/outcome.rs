//! What a check came to, and the settings that shape one check.
//!
//! These are the domain types; the wire enums in `portwatch_proto::v1` convert
//! into them with `TryFrom` at the edge, so inner code never sees
//! `*_UNSPECIFIED` or an out-of-range value.

use std::fmt;

use portwatch_proto::v1;
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

impl From<Outcome> for v1::Outcome {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Ok => v1::Outcome::Ok,
            Outcome::Refused => v1::Outcome::Refused,
            Outcome::TimedOut => v1::Outcome::TimedOut,
            Outcome::DnsFailed => v1::Outcome::DnsFailed,
            Outcome::Unreachable => v1::Outcome::Unreachable,
            Outcome::Blocked => v1::Outcome::Blocked,
            Outcome::ProbeError => v1::Outcome::ProbeError,
        }
    }
}

/// A wire value that does not name a valid choice.
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

impl Outcome {
    /// Parses the wire value of an outcome; `field` names it in the error.
    pub fn from_wire(value: i32, field: &'static str) -> Result<Self, WireError> {
        match v1::Outcome::try_from(value) {
            Ok(v1::Outcome::Ok) => Ok(Outcome::Ok),
            Ok(v1::Outcome::Refused) => Ok(Outcome::Refused),
            Ok(v1::Outcome::TimedOut) => Ok(Outcome::TimedOut),
            Ok(v1::Outcome::DnsFailed) => Ok(Outcome::DnsFailed),
            Ok(v1::Outcome::Unreachable) => Ok(Outcome::Unreachable),
            Ok(v1::Outcome::Blocked) => Ok(Outcome::Blocked),
            Ok(v1::Outcome::ProbeError) => Ok(Outcome::ProbeError),
            Ok(v1::Outcome::Unspecified) => Err(WireError::new(field, "outcome must be set")),
            Err(_) => Err(WireError::new(field, format!("unknown outcome {value}"))),
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

macro_rules! wire_enum {
    ($domain:ident, $wire:ident, $field:literal, { $($w:ident => $d:ident),* $(,)? }) => {
        impl $domain {
            /// Parses the wire value; `UNSPECIFIED` means the default.
            pub fn from_wire(value: i32) -> Result<Self, WireError> {
                match v1::$wire::try_from(value) {
                    Ok(v1::$wire::Unspecified) => Ok($domain::default()),
                    $(Ok(v1::$wire::$w) => Ok($domain::$d),)*
                    Err(_) => Err(WireError::new($field, format!("unknown value {value}"))),
                }
            }
        }

        impl From<$domain> for v1::$wire {
            fn from(d: $domain) -> Self {
                match d {
                    $($domain::$d => v1::$wire::$w,)*
                }
            }
        }

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

wire_enum!(Family, IpFamily, "family", { Any => Any, Ipv4 => Ipv4, Ipv6 => Ipv6 });
wire_enum!(AddressPolicy, AddressPolicy, "address_policy", { Any => Any, All => All });
wire_enum!(CloseMode, CloseMode, "close_mode", { Fin => Fin, Rst => Rst });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip_through_the_wire() {
        for o in Outcome::ALL {
            let wire = v1::Outcome::from(o) as i32;
            assert_eq!(Outcome::from_wire(wire, "outcome"), Ok(o));
        }
    }

    #[test]
    fn unspecified_or_unknown_outcome_is_refused_with_the_field_name() {
        let e = Outcome::from_wire(0, "result.outcome").unwrap_err();
        assert_eq!(e.field, "result.outcome");
        let e = Outcome::from_wire(99, "result.outcome").unwrap_err();
        assert!(e.reason.contains("99"), "{e}");
    }

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
    fn settings_default_on_unspecified_and_refuse_unknown_values() {
        assert_eq!(Family::from_wire(0), Ok(Family::Any));
        assert_eq!(Family::from_wire(3), Ok(Family::Ipv6));
        assert_eq!(CloseMode::from_wire(2), Ok(CloseMode::Rst));
        assert_eq!(
            AddressPolicy::from_wire(7).unwrap_err().field,
            "address_policy"
        );
        assert_eq!("ipv4".parse::<Family>(), Ok(Family::Ipv4));
        assert_eq!("ALL".parse::<AddressPolicy>(), Ok(AddressPolicy::All));
        assert!("sideways".parse::<CloseMode>().is_err());
    }
}
