//! The words the CLI uses for the protocol's enums, in one place.
//!
//! The same spelling is accepted on the command line (clap `ValueEnum`), in an
//! `apply` file (serde, lower-case) and printed in tables and JSON, so what a
//! script reads back is what it may write. Unknown wire values (a newer
//! coordinator) print as `unknown(N)` instead of failing.

use clap::ValueEnum;
use portwatch_proto::v1;
use serde::Deserialize;

/// A tenant's plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Plan {
    Free,
    Basic,
    Pro,
    Enterprise,
}

impl Plan {
    pub fn wire(self) -> i32 {
        match self {
            Plan::Free => v1::Plan::Free as i32,
            Plan::Basic => v1::Plan::Basic as i32,
            Plan::Pro => v1::Plan::Pro as i32,
            Plan::Enterprise => v1::Plan::Enterprise as i32,
        }
    }
}

/// How regional results combine into "down".
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consensus {
    /// At least ceil(0.66 n) regions down (the default).
    Quorum,
    /// Every monitored region down.
    Unanimous,
}

impl Consensus {
    pub fn wire(self) -> i32 {
        match self {
            Consensus::Quorum => v1::ConsensusPolicy::Quorum as i32,
            Consensus::Unanimous => v1::ConsensusPolicy::Unanimous as i32,
        }
    }
}

/// Address families a check may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Both, raced Happy-Eyeballs style (the default).
    Any,
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn wire(self) -> i32 {
        match self {
            Family::Any => v1::IpFamily::Any as i32,
            Family::Ipv4 => v1::IpFamily::Ipv4 as i32,
            Family::Ipv6 => v1::IpFamily::Ipv6 as i32,
        }
    }
}

/// How many resolved addresses must connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AddressPolicy {
    /// One address connecting is success (the default).
    Any,
    /// Every resolved address must connect.
    All,
}

impl AddressPolicy {
    pub fn wire(self) -> i32 {
        match self {
            AddressPolicy::Any => v1::AddressPolicy::Any as i32,
            AddressPolicy::All => v1::AddressPolicy::All as i32,
        }
    }
}

/// How the probe closes its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CloseMode {
    /// Orderly close (the default).
    Fin,
    /// SO_LINGER 0: no TIME_WAIT on the probe host.
    Rst,
}

impl CloseMode {
    pub fn wire(self) -> i32 {
        match self {
            CloseMode::Fin => v1::CloseMode::Fin as i32,
            CloseMode::Rst => v1::CloseMode::Rst as i32,
        }
    }
}

/// Whether a monitor detects flapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlapDetection {
    /// One "flapping" notice, the incident held open until stable (the default).
    On,
    /// Every state change that meets the consensus rule opens or closes an incident.
    Off,
}

impl FlapDetection {
    pub fn wire(self) -> i32 {
        match self {
            FlapDetection::On => v1::FlapDetection::On as i32,
            FlapDetection::Off => v1::FlapDetection::Off as i32,
        }
    }
}

/// How an email channel secures SMTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SmtpTls {
    Starttls,
    Implicit,
    None,
}

impl SmtpTls {
    pub fn wire(self) -> i32 {
        match self {
            SmtpTls::Starttls => v1::SmtpTls::Starttls as i32,
            SmtpTls::Implicit => v1::SmtpTls::Implicit as i32,
            SmtpTls::None => v1::SmtpTls::None as i32,
        }
    }
}

fn unknown(v: i32) -> String {
    format!("unknown({v})")
}

pub fn plan(v: i32) -> String {
    match v1::Plan::try_from(v) {
        Ok(v1::Plan::Free) => "free".into(),
        Ok(v1::Plan::Basic) => "basic".into(),
        Ok(v1::Plan::Pro) => "pro".into(),
        Ok(v1::Plan::Enterprise) => "enterprise".into(),
        _ => unknown(v),
    }
}

pub fn consensus(v: i32) -> String {
    match v1::ConsensusPolicy::try_from(v) {
        Ok(v1::ConsensusPolicy::Unspecified | v1::ConsensusPolicy::Quorum) => "quorum".into(),
        Ok(v1::ConsensusPolicy::Unanimous) => "unanimous".into(),
        Err(_) => unknown(v),
    }
}

pub fn family(v: i32) -> String {
    match v1::IpFamily::try_from(v) {
        Ok(v1::IpFamily::Unspecified | v1::IpFamily::Any) => "any".into(),
        Ok(v1::IpFamily::Ipv4) => "ipv4".into(),
        Ok(v1::IpFamily::Ipv6) => "ipv6".into(),
        Err(_) => unknown(v),
    }
}

pub fn address_policy(v: i32) -> String {
    match v1::AddressPolicy::try_from(v) {
        Ok(v1::AddressPolicy::Unspecified | v1::AddressPolicy::Any) => "any".into(),
        Ok(v1::AddressPolicy::All) => "all".into(),
        Err(_) => unknown(v),
    }
}

pub fn close_mode(v: i32) -> String {
    match v1::CloseMode::try_from(v) {
        Ok(v1::CloseMode::Unspecified | v1::CloseMode::Fin) => "fin".into(),
        Ok(v1::CloseMode::Rst) => "rst".into(),
        Err(_) => unknown(v),
    }
}

pub fn flap_detection(v: i32) -> String {
    match v1::FlapDetection::try_from(v) {
        Ok(v1::FlapDetection::Unspecified | v1::FlapDetection::On) => "on".into(),
        Ok(v1::FlapDetection::Off) => "off".into(),
        Err(_) => unknown(v),
    }
}

pub fn smtp_tls(v: i32) -> String {
    match v1::SmtpTls::try_from(v) {
        Ok(v1::SmtpTls::Unspecified | v1::SmtpTls::Starttls) => "starttls".into(),
        Ok(v1::SmtpTls::Implicit) => "implicit".into(),
        Ok(v1::SmtpTls::None) => "none".into(),
        Err(_) => unknown(v),
    }
}

pub fn outcome(v: i32) -> String {
    match v1::Outcome::try_from(v) {
        Ok(v1::Outcome::Ok) => "ok".into(),
        Ok(v1::Outcome::Refused) => "refused".into(),
        Ok(v1::Outcome::TimedOut) => "timed_out".into(),
        Ok(v1::Outcome::DnsFailed) => "dns_failed".into(),
        Ok(v1::Outcome::Unreachable) => "unreachable".into(),
        Ok(v1::Outcome::Blocked) => "blocked".into(),
        Ok(v1::Outcome::ProbeError) => "probe_error".into(),
        _ => unknown(v),
    }
}

/// The spec's human wording of an outcome ("Connection refused", ...).
pub fn outcome_text(v: i32) -> String {
    match v1::Outcome::try_from(v) {
        Ok(v1::Outcome::Ok) => "Connected".into(),
        Ok(v1::Outcome::Refused) => "Connection refused".into(),
        Ok(v1::Outcome::TimedOut) => "Connection timed out".into(),
        Ok(v1::Outcome::DnsFailed) => "DNS resolution failed".into(),
        Ok(v1::Outcome::Unreachable) => "Network unreachable".into(),
        Ok(v1::Outcome::Blocked) => "Blocked (non-public address)".into(),
        Ok(v1::Outcome::ProbeError) => "Probe error".into(),
        _ => unknown(v),
    }
}

pub fn region_state(v: i32) -> String {
    match v1::RegionState::try_from(v) {
        Ok(v1::RegionState::Up) => "up".into(),
        Ok(v1::RegionState::Down) => "down".into(),
        Ok(v1::RegionState::Unknown) => "unknown".into(),
        _ => unknown(v),
    }
}

/// One character per region state, for the compact `status` line.
pub fn region_mark(v: i32) -> char {
    match v1::RegionState::try_from(v) {
        Ok(v1::RegionState::Up) => '✓',
        Ok(v1::RegionState::Down) => '✗',
        _ => '?',
    }
}

pub fn overall(v: i32) -> String {
    match v1::OverallState::try_from(v) {
        Ok(v1::OverallState::Up) => "up".into(),
        Ok(v1::OverallState::Degraded) => "degraded".into(),
        Ok(v1::OverallState::Down) => "down".into(),
        Ok(v1::OverallState::Unknown) => "unknown".into(),
        Ok(v1::OverallState::Paused) => "paused".into(),
        _ => unknown(v),
    }
}

pub fn delivery_kind(v: i32) -> String {
    match v1::DeliveryKind::try_from(v) {
        Ok(v1::DeliveryKind::Opened) => "opened".into(),
        Ok(v1::DeliveryKind::Resolved) => "resolved".into(),
        Ok(v1::DeliveryKind::RegionOffline) => "region_offline".into(),
        Ok(v1::DeliveryKind::RegionOnline) => "region_online".into(),
        _ => unknown(v),
    }
}

pub fn delivery_state(v: i32) -> String {
    match v1::DeliveryState::try_from(v) {
        Ok(v1::DeliveryState::Pending) => "pending".into(),
        Ok(v1::DeliveryState::Delivered) => "delivered".into(),
        Ok(v1::DeliveryState::Failed) => "failed".into(),
        _ => unknown(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_printed_parses_back() {
        for c in [Consensus::Quorum, Consensus::Unanimous] {
            let name = consensus(c.wire());
            assert_eq!(Consensus::from_str(&name, false), Ok(c));
        }
        for f in [Family::Any, Family::Ipv4, Family::Ipv6] {
            assert_eq!(Family::from_str(&family(f.wire()), false), Ok(f));
        }
        for p in [Plan::Free, Plan::Basic, Plan::Pro, Plan::Enterprise] {
            assert_eq!(Plan::from_str(&plan(p.wire()), false), Ok(p));
        }
        assert_eq!(outcome(99), "unknown(99)");
        assert_eq!(region_mark(v1::RegionState::Down as i32), '✗');
    }
}
