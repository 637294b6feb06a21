//! The words the CLI uses for the protocol's enums, in one place.
//!
//! The same spelling is accepted on the command line (clap `ValueEnum`), in an
//! `apply` file (serde, lower-case) and printed in tables and JSON, so what a
//! script reads back is what it may write. Every value prints as a lower-case
//! word: an unset value (0: no result, no previous state) is JSON `null` and
//! "none" in text, or the default's word for a setting; a value this CLI does
//! not know (a newer coordinator) is "unrecognized". A test walks every enum
//! of the protocol's descriptors through these functions.

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

/// The word for a wire value this CLI does not know (a newer coordinator).
pub const UNRECOGNIZED: &str = "unrecognized";

/// What text output shows where a value is unset (JSON shows `null`).
pub const NONE: &str = "none";

/// A value's word in text: the word, or [`NONE`] when unset.
pub fn text(word: Option<&'static str>) -> &'static str {
    word.unwrap_or(NONE)
}

// Settings: unset (0) means the coordinator's default, so it has the default's word.

pub fn consensus(v: i32) -> &'static str {
    match v1::ConsensusPolicy::try_from(v) {
        Ok(v1::ConsensusPolicy::Unspecified | v1::ConsensusPolicy::Quorum) => "quorum",
        Ok(v1::ConsensusPolicy::Unanimous) => "unanimous",
        Err(_) => UNRECOGNIZED,
    }
}

pub fn family(v: i32) -> &'static str {
    match v1::IpFamily::try_from(v) {
        Ok(v1::IpFamily::Unspecified | v1::IpFamily::Any) => "any",
        Ok(v1::IpFamily::Ipv4) => "ipv4",
        Ok(v1::IpFamily::Ipv6) => "ipv6",
        Err(_) => UNRECOGNIZED,
    }
}

pub fn address_policy(v: i32) -> &'static str {
    match v1::AddressPolicy::try_from(v) {
        Ok(v1::AddressPolicy::Unspecified | v1::AddressPolicy::Any) => "any",
        Ok(v1::AddressPolicy::All) => "all",
        Err(_) => UNRECOGNIZED,
    }
}

pub fn close_mode(v: i32) -> &'static str {
    match v1::CloseMode::try_from(v) {
        Ok(v1::CloseMode::Unspecified | v1::CloseMode::Fin) => "fin",
        Ok(v1::CloseMode::Rst) => "rst",
        Err(_) => UNRECOGNIZED,
    }
}

pub fn flap_detection(v: i32) -> &'static str {
    match v1::FlapDetection::try_from(v) {
        Ok(v1::FlapDetection::Unspecified | v1::FlapDetection::On) => "on",
        Ok(v1::FlapDetection::Off) => "off",
        Err(_) => UNRECOGNIZED,
    }
}

pub fn smtp_tls(v: i32) -> &'static str {
    match v1::SmtpTls::try_from(v) {
        Ok(v1::SmtpTls::Unspecified | v1::SmtpTls::Starttls) => "starttls",
        Ok(v1::SmtpTls::Implicit) => "implicit",
        Ok(v1::SmtpTls::None) => "none",
        Err(_) => UNRECOGNIZED,
    }
}

// Values: unset (0) means there is none (no result, no previous state): `None`,
// printed as JSON null or "none".

pub fn plan(v: i32) -> Option<&'static str> {
    match v1::Plan::try_from(v) {
        Ok(v1::Plan::Unspecified) => None,
        Ok(v1::Plan::Free) => Some("free"),
        Ok(v1::Plan::Basic) => Some("basic"),
        Ok(v1::Plan::Pro) => Some("pro"),
        Ok(v1::Plan::Enterprise) => Some("enterprise"),
        Err(_) => Some(UNRECOGNIZED),
    }
}

pub fn outcome(v: i32) -> Option<&'static str> {
    match v1::Outcome::try_from(v) {
        Ok(v1::Outcome::Unspecified) => None,
        Ok(v1::Outcome::Ok) => Some("ok"),
        Ok(v1::Outcome::Refused) => Some("refused"),
        Ok(v1::Outcome::TimedOut) => Some("timed_out"),
        Ok(v1::Outcome::DnsFailed) => Some("dns_failed"),
        Ok(v1::Outcome::Unreachable) => Some("unreachable"),
        Ok(v1::Outcome::Blocked) => Some("blocked"),
        Ok(v1::Outcome::ProbeError) => Some("probe_error"),
        Err(_) => Some(UNRECOGNIZED),
    }
}

/// The requirements' human wording of an outcome ("Connection refused", ...;
/// DESIGN.md, "The check").
pub fn outcome_text(v: i32) -> &'static str {
    match v1::Outcome::try_from(v) {
        Ok(v1::Outcome::Unspecified) => "No result",
        Ok(v1::Outcome::Ok) => "Connected",
        Ok(v1::Outcome::Refused) => "Connection refused",
        Ok(v1::Outcome::TimedOut) => "Connection timed out",
        Ok(v1::Outcome::DnsFailed) => "DNS resolution failed",
        Ok(v1::Outcome::Unreachable) => "Network unreachable",
        Ok(v1::Outcome::Blocked) => "Blocked (non-public address)",
        Ok(v1::Outcome::ProbeError) => "Probe error",
        Err(_) => "Unrecognized outcome",
    }
}

pub fn region_state(v: i32) -> Option<&'static str> {
    match v1::RegionState::try_from(v) {
        Ok(v1::RegionState::Unspecified) => None,
        Ok(v1::RegionState::Up) => Some("up"),
        Ok(v1::RegionState::Down) => Some("down"),
        Ok(v1::RegionState::Unknown) => Some("unknown"),
        Err(_) => Some(UNRECOGNIZED),
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

pub fn overall(v: i32) -> Option<&'static str> {
    match v1::OverallState::try_from(v) {
        Ok(v1::OverallState::Unspecified) => None,
        Ok(v1::OverallState::Up) => Some("up"),
        Ok(v1::OverallState::Degraded) => Some("degraded"),
        Ok(v1::OverallState::Down) => Some("down"),
        Ok(v1::OverallState::Unknown) => Some("unknown"),
        Ok(v1::OverallState::Paused) => Some("paused"),
        Err(_) => Some(UNRECOGNIZED),
    }
}

pub fn delivery_kind(v: i32) -> Option<&'static str> {
    match v1::DeliveryKind::try_from(v) {
        Ok(v1::DeliveryKind::Unspecified) => None,
        Ok(v1::DeliveryKind::Opened) => Some("opened"),
        Ok(v1::DeliveryKind::Resolved) => Some("resolved"),
        Ok(v1::DeliveryKind::RegionOffline) => Some("region_offline"),
        Ok(v1::DeliveryKind::RegionOnline) => Some("region_online"),
        Ok(v1::DeliveryKind::Flapping) => Some("flapping"),
        Ok(v1::DeliveryKind::Reminder) => Some("reminder"),
        Ok(v1::DeliveryKind::Acknowledged) => Some("acknowledged"),
        Err(_) => Some(UNRECOGNIZED),
    }
}

pub fn delivery_state(v: i32) -> Option<&'static str> {
    match v1::DeliveryState::try_from(v) {
        Ok(v1::DeliveryState::Unspecified) => None,
        Ok(v1::DeliveryState::Pending) => Some("pending"),
        Ok(v1::DeliveryState::Delivered) => Some("delivered"),
        Ok(v1::DeliveryState::Failed) => Some("failed"),
        Err(_) => Some(UNRECOGNIZED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_printed_parses_back() {
        for c in [Consensus::Quorum, Consensus::Unanimous] {
            assert_eq!(Consensus::from_str(consensus(c.wire()), false), Ok(c));
        }
        for f in [Family::Any, Family::Ipv4, Family::Ipv6] {
            assert_eq!(Family::from_str(family(f.wire()), false), Ok(f));
        }
        for p in [Plan::Free, Plan::Basic, Plan::Pro, Plan::Enterprise] {
            assert_eq!(Plan::from_str(text(plan(p.wire())), false), Ok(p));
        }
        assert_eq!(outcome(99), Some(UNRECOGNIZED));
        assert_eq!(outcome(0), None);
        assert_eq!(region_mark(v1::RegionState::Down as i32), '✗');
    }

    /// A formatter of one wire enum, as the CLI prints it (`None`: null / "none").
    type Spelling = fn(i32) -> Option<&'static str>;

    /// Every enum of the protocol (by its full proto name) and how the CLI spells
    /// its values. A test checks this against the protocol's descriptors, so an
    /// enum added to a `.proto` without a spelling here fails this test.
    const ENUMS: &[(&str, Spelling)] = &[
        ("portwatch.v1.Outcome", outcome),
        ("portwatch.v1.IpFamily", |v| Some(family(v))),
        ("portwatch.v1.AddressPolicy", |v| Some(address_policy(v))),
        ("portwatch.v1.CloseMode", |v| Some(close_mode(v))),
        ("portwatch.v1.ConsensusPolicy", |v| Some(consensus(v))),
        ("portwatch.v1.RegionState", region_state),
        ("portwatch.v1.Plan", plan),
        ("portwatch.v1.OverallState", overall),
        ("portwatch.v1.SmtpTls", |v| Some(smtp_tls(v))),
        ("portwatch.v1.FlapDetection", |v| Some(flap_detection(v))),
        ("portwatch.v1.DeliveryKind", delivery_kind),
        ("portwatch.v1.DeliveryState", delivery_state),
    ];

    /// Every enum of every portwatch message and service file, with the full
    /// name of each and its declared numbers.
    fn protocol_enums() -> Vec<(String, Vec<i32>)> {
        use prost::Message;
        use prost_types::{DescriptorProto, EnumDescriptorProto};
        fn add(out: &mut Vec<(String, Vec<i32>)>, scope: &str, e: &EnumDescriptorProto) {
            let numbers = e.value.iter().map(|v| v.number()).collect();
            out.push((format!("{scope}.{}", e.name()), numbers));
        }
        fn walk(out: &mut Vec<(String, Vec<i32>)>, scope: &str, m: &DescriptorProto) {
            let scope = format!("{scope}.{}", m.name());
            for e in &m.enum_type {
                add(out, &scope, e);
            }
            for nested in &m.nested_type {
                walk(out, &scope, nested);
            }
        }
        let set = prost_types::FileDescriptorSet::decode(portwatch_proto::FILE_DESCRIPTOR_SET)
            .expect("the protocol's descriptor set");
        let mut out = Vec::new();
        for file in set
            .file
            .iter()
            .filter(|f| f.package().starts_with("portwatch."))
        {
            for e in &file.enum_type {
                add(&mut out, file.package(), e);
            }
            for m in &file.message_type {
                walk(&mut out, file.package(), m);
            }
        }
        out
    }

    #[test]
    fn every_enum_of_the_protocol_prints_as_a_lower_case_word_or_null() {
        let enums = protocol_enums();
        assert!(enums.len() >= 11, "{enums:?}");
        let is_word = |w: &str| {
            w.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                && w.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        let mut wrong = Vec::new();
        for (name, declared) in &enums {
            let Some((_, spell)) = ENUMS.iter().find(|(n, _)| n == name) else {
                wrong.push(format!("{name}: no spelling in names::ENUMS"));
                continue;
            };
            let max = declared.iter().copied().max().unwrap_or(0);
            let undeclared = [max + 1, -1, i32::MAX, i32::MIN];
            for v in declared.iter().copied().chain(undeclared) {
                let known = declared.contains(&v);
                match spell(v) {
                    None if v == 0 => {}
                    None => wrong.push(format!("{name} {v}: null for a set value")),
                    Some(w) if !is_word(w) => wrong.push(format!("{name} {v}: {w:?}")),
                    Some(w) if known && v != 0 && w == UNRECOGNIZED => {
                        wrong.push(format!("{name} {v}: a declared value is {w:?}"))
                    }
                    Some(w) if !known && w != UNRECOGNIZED => {
                        wrong.push(format!("{name} {v}: an undeclared value is {w:?}"))
                    }
                    Some(_) => {}
                }
            }
        }
        for (name, _) in ENUMS {
            if !enums.iter().any(|(n, _)| n == name) {
                wrong.push(format!("{name}: in names::ENUMS but not in the protocol"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }
}
