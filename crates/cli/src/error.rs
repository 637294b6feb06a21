//! What can go wrong in one `portwatch` invocation, and the exit code each maps to.
//!
//! Scripts branch on the exit code, so the mapping is part of the interface and
//! documented in `--help` and in docs-cli.md:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | the coordinator refused or found nothing (plan limits, permission, not found, already exists, unimplemented, a failed channel test) |
//! | 2 | usage or bad input, whether the CLI or the coordinator noticed it (INVALID_ARGUMENT) |
//! | 3 | cannot reach the coordinator (connection, TLS handshake, unavailable, a connection broken during the call) |
//! | 130 | interrupted by Ctrl-C (`watch`) |
//!
//! The coordinator's own message is always carried through verbatim: it names
//! the field and the reason (e.g. the plan a port monitor needs).

use std::fmt;
use std::process::ExitCode;

use tonic::Code;

/// The class of a failure; decides the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The server said no (exit 1).
    Refused,
    /// The request or the input file is wrong (exit 2).
    Usage,
    /// The coordinator could not be reached (exit 3).
    Connect,
    /// The user pressed Ctrl-C (exit 130, as shells report SIGINT).
    Interrupted,
}

impl Failure {
    /// The process exit code of this class.
    pub fn code(self) -> u8 {
        match self {
            Failure::Refused => 1,
            Failure::Usage => 2,
            Failure::Connect => 3,
            Failure::Interrupted => 130,
        }
    }
}

/// A failure with the message shown to the user.
#[derive(Debug)]
pub struct CliError {
    pub kind: Failure,
    pub message: String,
}

/// Result of a command.
pub type Result<T, E = CliError> = std::result::Result<T, E>;

impl CliError {
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError {
            kind: Failure::Usage,
            message: message.into(),
        }
    }

    pub fn refused(message: impl Into<String>) -> CliError {
        CliError {
            kind: Failure::Refused,
            message: message.into(),
        }
    }

    pub fn connect(message: impl Into<String>) -> CliError {
        CliError {
            kind: Failure::Connect,
            message: message.into(),
        }
    }

    /// Ctrl-C: nothing more to say, exit 130.
    pub fn interrupted() -> CliError {
        CliError {
            kind: Failure::Interrupted,
            message: String::new(),
        }
    }

    /// Prefixes the message with what was being done.
    pub fn context(mut self, what: impl fmt::Display) -> CliError {
        self.message = format!("{what}: {}", self.message);
        self
    }

    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.kind.code())
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The short snake_case name of a gRPC code, shown after the server's message.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// Which class a gRPC status belongs to.
pub fn classify(code: Code) -> Failure {
    match code {
        Code::InvalidArgument | Code::OutOfRange => Failure::Usage,
        Code::Unavailable | Code::DeadlineExceeded => Failure::Connect,
        _ => Failure::Refused,
    }
}

impl From<tonic::Status> for CliError {
    fn from(s: tonic::Status) -> CliError {
        // A status with a source was made on this side from a transport failure
        // (a TLS alert after the handshake, a reset, a closed connection); the
        // coordinator's own answers never carry one.
        if let Some(src) = std::error::Error::source(&s) {
            return CliError::connect(format!(
                "the connection to the coordinator failed: {} (a coordinator with client_ca \
                 closes connections without a client certificate: see --client-cert)",
                chain(src)
            ));
        }
        let kind = classify(s.code());
        let message = if s.message().is_empty() {
            code_name(s.code()).replace('_', " ")
        } else {
            format!("{} [{}]", s.message(), code_name(s.code()))
        };
        CliError { kind, message }
    }
}

/// An error and its causes, joined with ": " (TLS and socket errors hide there).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_documented_exit_codes() {
        let cases = [
            (Code::FailedPrecondition, 1),
            (Code::NotFound, 1),
            (Code::PermissionDenied, 1),
            (Code::AlreadyExists, 1),
            (Code::Unimplemented, 1),
            (Code::Unauthenticated, 1),
            (Code::InvalidArgument, 2),
            (Code::Unavailable, 3),
        ];
        for (code, exit) in cases {
            assert_eq!(classify(code).code(), exit, "{code:?}");
        }
    }

    #[test]
    fn the_servers_message_is_kept() {
        let e = CliError::from(tonic::Status::failed_precondition(
            "plan: the free plan does not include port monitors; basic or above is required",
        ));
        assert_eq!(e.kind, Failure::Refused);
        assert_eq!(
            e.message,
            "plan: the free plan does not include port monitors; basic or above is required [failed_precondition]"
        );
    }
}
