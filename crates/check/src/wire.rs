//! Conversions between the check's domain types and the wire (`portwatch.v1`).
//!
//! Parse, don't validate: a `v1::CheckSpec` becomes a `CheckSpec` here, once, or
//! is refused with an error naming the field; inner code never sees a port of 0
//! or a timeout of an hour.

use std::time::Duration;

use portwatch_proto::time::to_timestamp;
use portwatch_proto::v1;

use crate::connect::Attempt;
use crate::engine::{CheckResult, CheckSpec};
use crate::host::Host;
use crate::outcome::WireError;
use crate::{AddressPolicy, CloseMode, Family};

/// Smallest and largest per-monitor timeout (DESIGN.md, "The check": 1-10 s).
pub const MIN_TIMEOUT_MS: u32 = 1_000;
pub const MAX_TIMEOUT_MS: u32 = 10_000;

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
        0 => Ok(crate::engine::DEFAULT_TIMEOUT),
        MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS => Ok(Duration::from_millis(u64::from(ms))),
        _ => Err(WireError::new(
            field,
            format!("{ms} ms is out of range; must be {MIN_TIMEOUT_MS}-{MAX_TIMEOUT_MS} ms"),
        )),
    }
}

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

impl CheckResult {
    /// The wire form; the caller supplies what the check engine does not know.
    pub fn to_wire(&self, monitor_id: &str, generation: u64, immediate: bool) -> v1::CheckResult {
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
}
