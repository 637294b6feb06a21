//! Ids of the records the coordinator creates (tenants, tokens, monitors,
//! channels, incidents, deliveries, region outages).
//!
//! A module of its own because both the hub and the outbox make ids, and
//! neither should import the other for it. The form is a prefix naming the
//! kind, the creation time in microseconds as fixed-width hex (so ids of one
//! kind sort by age), and 24 random bits (so ids made in the same microsecond
//! are told apart).

use std::time::SystemTime;

/// A new id: a prefix, the creation time (so ids sort by age), and randomness.
pub fn new_id(prefix: &str) -> String {
    let micros = portwatch_proto::time::unix_micros(SystemTime::now());
    format!(
        "{prefix}-{micros:013x}{:06x}",
        rand::random::<u32>() & 0xff_ffff
    )
}
