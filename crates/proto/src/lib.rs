//! The portwatch wire protocol.
//!
//! `v1` is the code generated from `proto/portwatch/v1/*.proto`. The protocol is
//! designed whole for the system (agent stream and admin API); it only ever grows
//! by added fields, so older agents keep working with newer coordinators.
//!
//! Conversions from wire messages into domain types live in the crates that own
//! those types (`portwatch-check` for check specs and outcomes), so validation
//! happens once, at the edge.

pub mod v1 {
    #![allow(missing_docs)]
    tonic::include_proto!("portwatch.v1");
}

/// Encoded `FileDescriptorSet` of the portwatch protocol, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/portwatch_descriptor.bin"));

/// Timestamp helpers: the protocol uses `google.protobuf.Timestamp`, the code uses
/// `std::time::SystemTime`.
pub mod time {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    /// Converts a wall-clock time into a protobuf timestamp.
    pub fn to_timestamp(t: SystemTime) -> prost_types::Timestamp {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        prost_types::Timestamp {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
        }
    }

    /// The last second a protocol timestamp may name: 9999-12-31T23:59:59Z, the
    /// end of RFC 3339's range (and of `google.protobuf.Timestamp`'s). Anything
    /// later cannot be printed as a date and overflows time arithmetic.
    pub const MAX_SECONDS: i64 = 253_402_300_799;

    /// Converts a protobuf timestamp into a wall-clock time; `None` when it is
    /// before the epoch, after [`MAX_SECONDS`], or its nanos are out of range.
    pub fn from_timestamp(ts: &prost_types::Timestamp) -> Option<SystemTime> {
        if ts.seconds > MAX_SECONDS {
            return None;
        }
        let secs = u64::try_from(ts.seconds).ok()?;
        let nanos = u32::try_from(ts.nanos)
            .ok()
            .filter(|n| *n < 1_000_000_000)?;
        UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
    }

    /// Microseconds since the epoch (0 for times before it).
    pub fn unix_micros(t: SystemTime) -> u64 {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
    }

    /// The wall-clock time `micros` after the epoch.
    pub fn from_unix_micros(micros: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(micros)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn timestamp_round_trip_keeps_nanoseconds() {
            let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
            assert_eq!(from_timestamp(&to_timestamp(t)), Some(t));
        }

        #[test]
        fn invalid_timestamps_are_refused() {
            let neg = prost_types::Timestamp {
                seconds: -1,
                nanos: 0,
            };
            assert_eq!(from_timestamp(&neg), None);
            let bad = prost_types::Timestamp {
                seconds: 1,
                nanos: 1_000_000_000,
            };
            assert_eq!(from_timestamp(&bad), None);
            for seconds in [MAX_SECONDS + 1, 1_000_000_000_000_000, i64::MAX] {
                let far = prost_types::Timestamp { seconds, nanos: 0 };
                assert_eq!(from_timestamp(&far), None, "{seconds}");
            }
            let last = prost_types::Timestamp {
                seconds: MAX_SECONDS,
                nanos: 999_999_999,
            };
            assert!(from_timestamp(&last).is_some());
        }
    }
}
