//! One TCP port check: resolve, guard, connect, classify, time.
//!
//! No gRPC, no protocol and no storage: the agent wires this to its scheduler
//! and stream, the `portwatch-agent check` command prints it, and the protocol
//! crate converts these types to and from the wire (`portwatch_proto::convert`);
//! this crate does not depend on it. See `ARCHITECTURE.md` for the
//! invariants this crate enforces (the guard runs on every resolved address at
//! connect time; one deadline covers DNS and handshake; no byte is ever sent).

pub mod classify;
pub mod connect;
pub mod engine;
pub mod guard;
pub mod host;
pub mod outcome;
pub mod resolve;

pub use connect::Attempt;
pub use engine::{CheckResult, CheckSpec, Checker};
pub use guard::Guard;
pub use host::Host;
pub use outcome::{AddressPolicy, CloseMode, Family, Outcome, WireError};
pub use resolve::{Nameservers, Resolver};
