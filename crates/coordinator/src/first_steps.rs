//! What the on-call engineer should try first when a port monitor fails,
//! chosen by the failure reason: a pure function of the incident, so every
//! "Unreachable" notice (each channel's format), the stored incident and
//! `portwatch monitor show` say the same.
//!
//! Every list ends with the exact `nc -zv HOST PORT` to run from a network
//! known to reach the target, which tells a fault of the target from a fault
//! of the path.

use portwatch_check::Outcome;
use portwatch_proto::convert::OutcomeFromWire;
use portwatch_proto::v1;

/// Text without control characters (a host or region name can never forge a
/// line of a notice).
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The regions that were down when the incident opened, comma-separated.
fn down_regions(i: &v1::Incident) -> String {
    let names: Vec<String> = i
        .open_evidence
        .iter()
        .filter(|e| e.state == v1::RegionState::Down as i32)
        .map(|e| clean(&e.region))
        .collect();
    if names.is_empty() {
        "the probe regions".to_string()
    } else {
        names.join(", ")
    }
}

/// The steps for `i`, most likely cause first.
pub fn for_incident(i: &v1::Incident) -> Vec<String> {
    let host = clean(&i.host);
    let port = i.port;
    let regions = down_regions(i);
    if i.slow {
        return vec![
            format!(
                "Connections to {host}:{port} are slow ({}). Is the host overloaded (CPU, \
                 memory, the listen backlog: `ss -ltn` shows a growing Recv-Q on port {port})?",
                clean(&i.reason_text)
            ),
            format!(
                "Is the path slow from those regions? `mtr -T -P {port} {host}` from an \
                 affected region."
            ),
            format!("From a network known to reach it: `time nc -zv {host} {port}`"),
        ];
    }
    if i.expect_closed {
        return vec![
            format!(
                "Port {port} of {host} accepts TCP connections from {regions}, but it should be \
                 closed. Block it in the firewall or security group (allow only the networks \
                 that need it), or bind the service to 127.0.0.1 or a private interface."
            ),
            format!("What listens there? `ss -ltnp | grep ':{port} '` on the host."),
            format!(
                "From a network that must not reach it, `nc -zv {host} {port}` should now fail"
            ),
        ];
    }
    let reason = Outcome::from_wire(i.reason, "reason").ok();
    let mut steps: Vec<String> = match reason {
        Some(Outcome::Refused) => vec![
            format!(
                "Connection refused: {host} answered, but nothing accepts connections on port \
                 {port}. Is the service running? `systemctl status <service>` or `docker ps` \
                 on the host."
            ),
            format!(
                "Is it bound to the right interface? It must listen on 0.0.0.0 (or the public \
                 address), not 127.0.0.1: `ss -ltnp | grep ':{port} '` on the host."
            ),
            format!("Does the monitor's port ({port}) match the port the service listens on?"),
        ],
        Some(Outcome::TimedOut) => vec![
            format!(
                "Timed out: nothing answered, so a firewall or security group is probably \
                 dropping the probes. Allow inbound TCP to port {port} from the probe regions \
                 ({regions})."
            ),
            format!(
                "If nothing changed in the firewall, is {host} itself up (its console, the \
                 provider's status page), and not overloaded?"
            ),
        ],
        Some(Outcome::DnsFailed) => vec![
            format!(
                "DNS resolution failed: does the record for {host} still exist? \
                 `dig +short {host} A` and `dig +short {host} AAAA`."
            ),
            "Does the resolver answer for it (an expired domain, a deleted zone, a \
             resolver outage), and does the monitor's address family match the records?"
                .to_string(),
        ],
        Some(Outcome::Unreachable) => vec![
            format!(
                "Network unreachable from {regions}: a routing problem, often regional. \
                 Check the host's network and its provider's status for those regions."
            ),
            format!(
                "Is {host}'s address still announced and routed (a moved or released IP)? \
                 `traceroute -T -p {port} {host}` from an affected region."
            ),
        ],
        _ => Vec::new(),
    };
    steps.push(format!(
        "From a network known to reach it: `nc -zv {host} {port}`"
    ));
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incident(reason: v1::Outcome, down: &[&str]) -> v1::Incident {
        v1::Incident {
            host: "db.example.com".into(),
            port: 5432,
            reason: reason as i32,
            open_evidence: ["eu", "us", "ap"]
                .iter()
                .map(|r| v1::RegionEvidence {
                    region: (*r).into(),
                    state: if down.contains(r) {
                        v1::RegionState::Down
                    } else {
                        v1::RegionState::Up
                    } as i32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn each_reason_gets_its_own_first_step_and_always_the_nc_line() {
        let cases = [
            (v1::Outcome::Refused, "systemctl status"),
            (v1::Outcome::Refused, "0.0.0.0"),
            (v1::Outcome::TimedOut, "firewall or security group"),
            (v1::Outcome::DnsFailed, "dig +short db.example.com A"),
            (v1::Outcome::Unreachable, "routing"),
        ];
        for (reason, expected) in cases {
            let steps = for_incident(&incident(reason, &["eu", "us"]));
            assert!(
                steps.iter().any(|s| s.contains(expected)),
                "{reason:?}: {steps:?}"
            );
            assert_eq!(
                steps.last().map(String::as_str),
                Some("From a network known to reach it: `nc -zv db.example.com 5432`")
            );
        }
        // One reason's advice is not another's.
        let timed_out = for_incident(&incident(v1::Outcome::TimedOut, &["eu"])).join(" ");
        assert!(!timed_out.contains("systemctl"), "{timed_out}");
    }

    #[test]
    fn regional_reasons_name_the_down_regions() {
        let steps = for_incident(&incident(v1::Outcome::Unreachable, &["eu", "ap"]));
        assert!(steps[0].contains("from eu, ap"), "{steps:?}");
        let steps = for_incident(&incident(v1::Outcome::TimedOut, &["us"]));
        assert!(steps[0].contains("(us)"), "{steps:?}");
    }

    #[test]
    fn a_slow_port_is_told_where_to_look() {
        let mut i = incident(v1::Outcome::Ok, &[]);
        i.slow = true;
        i.reason_text = "Connect time above 200 ms".into();
        let steps = for_incident(&i);
        assert!(
            steps[0].contains("slow (Connect time above 200 ms)"),
            "{steps:?}"
        );
        assert!(
            steps[1].contains("mtr -T -P 5432 db.example.com"),
            "{steps:?}"
        );
    }

    #[test]
    fn a_port_expected_closed_is_told_to_close() {
        let mut i = incident(v1::Outcome::Ok, &["eu", "us"]);
        i.expect_closed = true;
        let steps = for_incident(&i);
        assert!(steps[0].contains("should be closed"), "{steps:?}");
        assert!(steps[0].contains("from eu, us"), "{steps:?}");
        assert!(
            steps.last().unwrap().contains("should now fail"),
            "{steps:?}"
        );
    }

    #[test]
    fn a_hostile_host_name_cannot_add_lines() {
        let mut i = incident(v1::Outcome::Refused, &["eu"]);
        i.host = "evil\nFrom: ceo".into();
        for s in for_incident(&i) {
            assert!(!s.contains('\n'), "{s}");
        }
    }
}
