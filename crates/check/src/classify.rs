//! Maps connect errors to outcomes.
//!
//! The rule that matters: an error caused by the agent's own state (out of file
//! descriptors, buffers or ephemeral ports) is a `ProbeError` and never counts
//! against the target, so a starved agent cannot page anyone.

use std::io;

use crate::Outcome;

/// The outcome for an OS error returned by `connect` or found by `SO_ERROR`.
pub fn outcome_for(err: &io::Error) -> Outcome {
    match err.raw_os_error() {
        Some(code) => outcome_for_errno(code),
        None => match err.kind() {
            io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset => Outcome::Refused,
            io::ErrorKind::TimedOut => Outcome::TimedOut,
            io::ErrorKind::NetworkUnreachable | io::ErrorKind::HostUnreachable => {
                Outcome::Unreachable
            }
            _ => Outcome::ProbeError,
        },
    }
}

/// The outcome for a raw errno.
pub fn outcome_for_errno(code: i32) -> Outcome {
    match code {
        // The host answered the SYN with a RST (or reset the half-open connection).
        libc::ECONNREFUSED | libc::ECONNRESET => Outcome::Refused,
        libc::ETIMEDOUT => Outcome::TimedOut,
        // No route, ICMP unreachable, or the path is down.
        libc::ENETUNREACH
        | libc::EHOSTUNREACH
        | libc::EHOSTDOWN
        | libc::ENETDOWN
        | libc::ENONET => Outcome::Unreachable,
        // Everything else is the agent's own fault or state: descriptors, buffers,
        // ports, local policy (EPERM/EACCES from a local firewall), missing family support.
        _ => Outcome::ProbeError,
    }
}

/// True when an I/O error is the agent's own fault (resources exhausted).
pub fn is_probe_fault(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::EADDRNOTAVAIL
                | libc::EADDRINUSE
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_table() {
        let table = [
            (libc::ECONNREFUSED, Outcome::Refused),
            (libc::ECONNRESET, Outcome::Refused),
            (libc::ETIMEDOUT, Outcome::TimedOut),
            (libc::ENETUNREACH, Outcome::Unreachable),
            (libc::EHOSTUNREACH, Outcome::Unreachable),
            (libc::EHOSTDOWN, Outcome::Unreachable),
            (libc::ENETDOWN, Outcome::Unreachable),
            (libc::EMFILE, Outcome::ProbeError),
            (libc::ENFILE, Outcome::ProbeError),
            (libc::ENOBUFS, Outcome::ProbeError),
            (libc::ENOMEM, Outcome::ProbeError),
            (libc::EADDRNOTAVAIL, Outcome::ProbeError),
            (libc::EADDRINUSE, Outcome::ProbeError),
            (libc::EPERM, Outcome::ProbeError),
            (libc::EACCES, Outcome::ProbeError),
            (libc::EAFNOSUPPORT, Outcome::ProbeError),
        ];
        for (code, want) in table {
            let err = io::Error::from_raw_os_error(code);
            assert_eq!(outcome_for(&err), want, "errno {code} ({err})");
        }
    }

    #[test]
    fn resource_exhaustion_is_the_probes_fault() {
        for code in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
            libc::EADDRNOTAVAIL,
        ] {
            assert!(is_probe_fault(&io::Error::from_raw_os_error(code)));
        }
        assert!(!is_probe_fault(&io::Error::from_raw_os_error(
            libc::ECONNREFUSED
        )));
    }
}
