//! Conversions between the check's domain types (`portwatch-check`) and the wire.
//!
//! Parse, don't validate: a `v1::CheckSpec` becomes a `CheckSpec` here, once, or
//! is refused with an error naming the field; inner code never sees a port of 0,
//! a timeout of an hour or an `*_UNSPECIFIED` enum.
//!
//! Why here, and not in the check crate or the agent: the check crate is the
//! one check and nothing else (it knows neither gRPC nor the protocol), so the
//! protocol must not be one of its dependencies. The conversions are needed by
//! the agent (specs in, results out) and by the coordinator (outcomes, settings,
//! ports and timeouts from the admin API), so the agent alone cannot hold them.
//! The direction protocol → check costs nothing: every crate that uses the
//! protocol already uses the check crate, the dependency is only on its domain
//! types, and this module stays pure (no I/O, no async). The orphan rule then
//! lets the `From`/`TryFrom` impls stay impls; what used to be inherent methods
//! of the check types (`Outcome::from_wire`, `CheckResult::to_wire`) are
//! extension traits, so call sites only add a `use`.

use std::time::Duration;

use portwatch_check::engine::{DEFAULT_TIMEOUT, MAX_TIMEOUT_MS, MIN_TIMEOUT_MS};
use portwatch_check::{
    AddressPolicy, Attempt, CheckResult, CheckSpec, CloseMode, Family, Host, Outcome, WireError,
};

use crate::time::to_timestamp;
use crate::v1;

/// Parses a port number from the wire (`uint32`).
pub fn port_from_wire(port: u32, field: &'static str) -> Result<u16, WireError> {
    match u16::try_from(port) {
        Ok(p) if p >= 1 => Ok(p),
        _ => Err(WireError::new(
            field,
            format!("{port} is not a TCP port; must be 1-65535"),
        )),
    }
}

/// Parses a timeout in milliseconds; 0 means the default (3 s).
pub fn timeout_from_wire(ms: u32, field: &'static str) -> Result<Duration, WireError> {
    match ms {
        0 => Ok(DEFAULT_TIMEOUT),
        MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS => Ok(Duration::from_millis(u64::from(ms))),
        _ => Err(WireError::new(
            field,
            format!("{ms} ms is out of range; must be {MIN_TIMEOUT_MS}-{MAX_TIMEOUT_MS} ms"),
        )),
    }
}

/// A check setting read from its wire enum, where `UNSPECIFIED` means the
/// default (`Family`, `AddressPolicy`, `CloseMode`).
pub trait SettingFromWire: Sized {
    /// Parses the wire value; an unknown value is refused naming the field.
    fn from_wire(value: i32) -> Result<Self, WireError>;
}

/// An outcome read from the wire, where `UNSPECIFIED` is refused: a result
/// without an outcome says nothing.
pub trait OutcomeFromWire: Sized {
    /// Parses the wire value of an outcome; `field` names it in the error.
    fn from_wire(value: i32, field: &'static str) -> Result<Self, WireError>;
}

impl OutcomeFromWire for Outcome {
    fn from_wire(value: i32, field: &'static str) -> Result<Self, WireError> {
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

macro_rules! setting {
    ($domain:ident, $wire:ident, $field:literal, { $($w:ident => $d:ident),* $(,)? }) => {
        impl SettingFromWire for $domain {
            fn from_wire(value: i32) -> Result<Self, WireError> {
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
    };
}

setting!(Family, IpFamily, "family", { Any => Any, Ipv4 => Ipv4, Ipv6 => Ipv6 });
setting!(AddressPolicy, AddressPolicy, "address_policy", { Any => Any, All => All });
setting!(CloseMode, CloseMode, "close_mode", { Fin => Fin, Rst => Rst });

impl TryFrom<&v1::CheckSpec> for CheckSpec {
    type Error = WireError;

    fn try_from(w: &v1::CheckSpec) -> Result<Self, WireError> {
        let host = Host::parse(&w.host).map_err(|e| WireError::new("spec.host", e.to_string()))?;
        Ok(CheckSpec {
            host,
            port: port_from_wire(w.port, "spec.port")?,
            timeout: timeout_from_wire(w.timeout_ms, "spec.timeout_ms")?,
            family: Family::from_wire(w.family)?,
            address_policy: AddressPolicy::from_wire(w.address_policy)?,
            close_mode: CloseMode::from_wire(w.close_mode)?,
        })
    }
}

impl From<&CheckSpec> for v1::CheckSpec {
    fn from(s: &CheckSpec) -> Self {
        v1::CheckSpec {
            host: s.host.as_str(),
            port: u32::from(s.port),
            timeout_ms: u32::try_from(s.timeout.as_millis()).unwrap_or(MAX_TIMEOUT_MS),
            family: v1::IpFamily::from(s.family) as i32,
            address_policy: v1::AddressPolicy::from(s.address_policy) as i32,
            close_mode: v1::CloseMode::from(s.close_mode) as i32,
        }
    }
}

impl From<&Attempt> for v1::AddressAttempt {
    fn from(t: &Attempt) -> Self {
        v1::AddressAttempt {
            address: t.address.to_string(),
            outcome: v1::Outcome::from(t.outcome) as i32,
            detail: t.detail.clone(),
            connect_us: t.connect_us,
            tcp_rtt_us: t.tcp_rtt_us,
        }
    }
}

/// A check result in its wire form.
pub trait ResultToWire {
    /// The wire form; the caller supplies what the check engine does not know.
    fn to_wire(&self, monitor_id: &str, generation: u64, immediate: bool) -> v1::CheckResult;
}

impl ResultToWire for CheckResult {
    fn to_wire(&self, monitor_id: &str, generation: u64, immediate: bool) -> v1::CheckResult {
        v1::CheckResult {
            monitor_id: monitor_id.to_string(),
            region: String::new(),
            checked_at: Some(to_timestamp(self.checked_at)),
            outcome: v1::Outcome::from(self.outcome) as i32,
            detail: self.detail.clone(),
            address: self.address.map(|a| a.to_string()).unwrap_or_default(),
            dns_us: self.dns_us,
            connect_us: self.connect_us,
            total_us: self.total_us,
            tcp_rtt_us: self.tcp_rtt_us,
            attempts: self.attempts.iter().map(v1::AddressAttempt::from).collect(),
            generation,
            immediate,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_outside_1_to_65535_are_refused_naming_the_field() {
        assert_eq!(port_from_wire(1, "port"), Ok(1));
        assert_eq!(port_from_wire(65535, "port"), Ok(65535));
        for bad in [0, 65536, u32::MAX] {
            let e = port_from_wire(bad, "spec.port").unwrap_err();
            assert_eq!(e.field, "spec.port");
            assert!(e.reason.contains("1-65535"), "{e}");
        }
    }

    #[test]
    fn timeouts_default_and_stay_in_range() {
        assert_eq!(timeout_from_wire(0, "t"), Ok(Duration::from_secs(3)));
        assert_eq!(timeout_from_wire(1000, "t"), Ok(Duration::from_secs(1)));
        assert_eq!(timeout_from_wire(10_000, "t"), Ok(Duration::from_secs(10)));
        assert!(timeout_from_wire(999, "t").is_err());
        assert!(timeout_from_wire(10_001, "t").is_err());
    }

    #[test]
    fn spec_round_trips_and_bad_specs_name_their_field() {
        let wire = v1::CheckSpec {
            host: "db.example.com".into(),
            port: 5432,
            timeout_ms: 2000,
            family: v1::IpFamily::Ipv4 as i32,
            address_policy: v1::AddressPolicy::All as i32,
            close_mode: v1::CloseMode::Rst as i32,
        };
        let spec = CheckSpec::try_from(&wire).unwrap();
        assert_eq!(spec.port, 5432);
        assert_eq!(spec.family, Family::Ipv4);
        assert_eq!(v1::CheckSpec::from(&spec), wire);

        let bad = v1::CheckSpec {
            host: "".into(),
            ..wire.clone()
        };
        assert_eq!(CheckSpec::try_from(&bad).unwrap_err().field, "spec.host");
        let bad = v1::CheckSpec { family: 42, ..wire };
        assert_eq!(CheckSpec::try_from(&bad).unwrap_err().field, "family");
    }

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
    fn settings_default_on_unspecified_and_refuse_unknown_values() {
        assert_eq!(Family::from_wire(0), Ok(Family::Any));
        assert_eq!(Family::from_wire(3), Ok(Family::Ipv6));
        assert_eq!(CloseMode::from_wire(2), Ok(CloseMode::Rst));
        assert_eq!(
            AddressPolicy::from_wire(7).unwrap_err().field,
            "address_policy"
        );
    }
}
