//! A real, tiny authoritative DNS server for tests.
//!
//! The probe resolves names with hickory-resolver; pointing that resolver at a
//! [`DnsServer`] on `127.0.0.1:<port>` lets end-to-end tests give each simulated
//! region its own DNS view of the same name (different addresses, NXDOMAIN,
//! SERVFAIL, or silence) without touching the host's resolver configuration.
//!
//! It answers over UDP and TCP on the same port, as a resolver expects when it
//! retries a truncated answer over TCP. It knows only A and AAAA; every other
//! query type gets an empty NOERROR answer.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use portwatch_testdns::{Answer, DnsServer};
//!
//! let dns = DnsServer::start().await?;
//! dns.set("db.example.test", Answer::Addrs(vec!["192.0.2.7".parse().unwrap()]));
//! dns.set("gone.example.test", Answer::NxDomain);
//! // Point the resolver under test at `dns.addr()`.
//! # Ok(()) }
//! ```
//!
//! The code is split the way the data flows: `wire` turns bytes into a query and
//! a reply into bytes, `zone` decides the reply, `server` moves bytes between
//! sockets and the other two.

mod server;
mod wire;
mod zone;

pub use server::DnsServer;
pub use zone::Answer;
