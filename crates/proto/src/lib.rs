//! The portwatch wire protocol.
//!
//! `v1` is the code generated from `proto/portwatch/v1/*.proto`. The protocol is
//! designed whole for the system (agent stream and admin API); it only ever grows
//! by added fields, so older agents keep working with newer coordinators.
//!
//! `convert` turns wire messages into the check's domain types and back
//! (`portwatch-check` for check specs, outcomes and settings), so validation
//! happens once, at the edge; the check crate itself knows nothing of the wire.

pub mod convert;

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

/// What a monitor's flap-detection fields mean, defaults included: the one
/// place both the coordinator (which acts on them) and the CLI (which shows
/// them) read them from. A field left at 0 (or `UNSPECIFIED`) means the
/// default, and the defaults for the window and the stability time are counted
/// in intervals, so they follow a changed interval.
pub mod flap {
    use std::time::Duration;

    use crate::v1;

    /// State changes within the window that make a monitor flapping.
    pub const DEFAULT_THRESHOLD: u32 = 4;
    /// The window, in intervals: 20 s at a 1 s interval, 20 min at 60 s.
    pub const DEFAULT_WINDOW_INTERVALS: u32 = 20;
    /// How long every region must stay up before a flapping incident closes,
    /// in intervals.
    pub const DEFAULT_STABLE_INTERVALS: u32 = 5;
    /// Bounds of an explicit threshold: 1 would call every incident flapping.
    pub const MIN_THRESHOLD: u32 = 2;
    pub const MAX_THRESHOLD: u32 = 100;
    /// The longest explicit window or stability time.
    pub const MAX_SPAN: Duration = Duration::from_secs(30 * 24 * 3600);

    /// A monitor's flap detection with every default filled in.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Settings {
        pub enabled: bool,
        pub threshold: u32,
        pub window: Duration,
        pub stable_for: Duration,
    }

    impl Settings {
        /// The settings `m` stands for.
        pub fn of(m: &v1::Monitor) -> Settings {
            let interval = Duration::from_millis(m.interval_ms.max(1));
            let or_intervals = |ms: u64, n: u32| {
                if ms == 0 {
                    interval.saturating_mul(n)
                } else {
                    Duration::from_millis(ms)
                }
            };
            Settings {
                enabled: m.flap_detection != v1::FlapDetection::Off as i32,
                threshold: if m.flap_threshold == 0 {
                    DEFAULT_THRESHOLD
                } else {
                    m.flap_threshold
                },
                window: or_intervals(m.flap_window_ms, DEFAULT_WINDOW_INTERVALS),
                stable_for: or_intervals(m.flap_stable_for_ms, DEFAULT_STABLE_INTERVALS),
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn unset_fields_are_the_defaults_counted_in_intervals() {
            let mut m = v1::Monitor {
                interval_ms: 1_000,
                ..Default::default()
            };
            let s = Settings::of(&m);
            assert_eq!(
                s,
                Settings {
                    enabled: true,
                    threshold: 4,
                    window: Duration::from_secs(20),
                    stable_for: Duration::from_secs(5),
                }
            );
            m.interval_ms = 60_000;
            assert_eq!(Settings::of(&m).window, Duration::from_secs(20 * 60));
            assert_eq!(Settings::of(&m).stable_for, Duration::from_secs(5 * 60));
            m.flap_detection = v1::FlapDetection::Off as i32;
            m.flap_threshold = 7;
            m.flap_window_ms = 90_000;
            m.flap_stable_for_ms = 30_000;
            assert_eq!(
                Settings::of(&m),
                Settings {
                    enabled: false,
                    threshold: 7,
                    window: Duration::from_secs(90),
                    stable_for: Duration::from_secs(30),
                }
            );
            m.flap_detection = v1::FlapDetection::On as i32;
            assert!(Settings::of(&m).enabled);
        }
    }
}
