//! How things are printed: aligned tables for people, JSON for scripts, and the
//! small formatting helpers both share (times, durations, a latency sparkline).
//!
//! JSON goes to stdout as one document per command (pretty-printed), except
//! `watch`, which prints one compact object per line. Tables never print
//! secrets except where a secret is the point of the command (a new token,
//! shown once).

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portwatch_proto::time::from_timestamp;
use serde_json::Value;

use crate::cli::OutputFormat;
use crate::error::{CliError, Result};

/// A table with a header row; columns are padded to their widest cell.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, one line per row, no trailing spaces.
    pub fn render(&self) -> String {
        let width = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if i >= widths.len() {
                    widths.push(0);
                }
                widths[i] = widths[i].max(width(cell));
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(self.rows.iter()) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                let pad = widths[i].saturating_sub(width(cell));
                line.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Writes to stdout; a closed pipe (`portwatch ... | head`) is not an error worth a panic.
pub fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CliError::refused(format!("writing output: {e}"))),
    }
}

/// Prints a line.
pub fn line(text: &str) -> Result<()> {
    print(&format!("{text}\n"))
}

/// Prints a JSON document, pretty.
pub fn json(v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v)
        .map_err(|e| CliError::refused(format!("encoding JSON: {e}")))?;
    line(&text)
}

/// Prints a table, or `empty` when it has no rows.
pub fn table(t: &Table, empty: &str) -> Result<()> {
    if t.is_empty() {
        line(empty)
    } else {
        print(&t.render())
    }
}

/// Prints `v` as JSON or the table, depending on the format.
pub fn either(format: OutputFormat, v: &Value, t: &Table, empty: &str) -> Result<()> {
    match format {
        OutputFormat::Json => json(v),
        OutputFormat::Table => table(t, empty),
    }
}

/// "host:port", with brackets for an IPv6 literal.
pub fn target(host: &str, port: u32) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// What a timestamp that cannot be a date prints as: before the epoch, nanos
/// out of range, or after 9999-12-31 (RFC 3339 has four-digit years). Any
/// value the coordinator sends prints as something, never a panic.
pub const INVALID_TIME: &str = "invalid time";

/// The last second RFC 3339 can write (9999-12-31T23:59:59Z).
const LAST_PRINTABLE_SECOND: u64 = 253_402_300_799;

/// The wall-clock time of a timestamp, if RFC 3339 can print it.
pub fn printable(t: &prost_types::Timestamp) -> Option<SystemTime> {
    from_timestamp(t).filter(|at| {
        at.duration_since(UNIX_EPOCH)
            .is_ok_and(|d| d.as_secs() <= LAST_PRINTABLE_SECOND)
    })
}

/// A protobuf timestamp as RFC 3339 (UTC, seconds); "" when unset,
/// [`INVALID_TIME`] when it cannot be a date.
pub fn ts(t: Option<&prost_types::Timestamp>) -> String {
    match t {
        None => String::new(),
        Some(t) => printable(t).map_or_else(
            || INVALID_TIME.to_string(),
            |at| humantime::format_rfc3339_seconds(at).to_string(),
        ),
    }
}

/// A protobuf timestamp as RFC 3339 with milliseconds (for JSON); null when
/// unset, [`INVALID_TIME`] when it cannot be a date.
pub fn ts_json(t: Option<&prost_types::Timestamp>) -> Value {
    match t {
        None => Value::Null,
        Some(t) => Value::String(printable(t).map_or_else(
            || INVALID_TIME.to_string(),
            |at| humantime::format_rfc3339_millis(at).to_string(),
        )),
    }
}

/// "4s ago", "3m ago", "2h ago" (rounded down), "just now", "in 5m" (a clock
/// ahead of ours); "" when unset, [`INVALID_TIME`] when it cannot be a date.
pub fn ago(t: Option<&prost_types::Timestamp>, now: SystemTime) -> String {
    let Some(t) = t else {
        return String::new();
    };
    let Some(at) = printable(t) else {
        return INVALID_TIME.to_string();
    };
    match now.duration_since(at) {
        Ok(d) => format!("{} ago", short_duration(d)),
        Err(e) if e.duration() < Duration::from_secs(1) => "just now".to_string(),
        Err(e) => format!("in {}", short_duration(e.duration())),
    }
}

/// "2026-01-02T03:04:05Z (4s ago)"; `unset` when there is no timestamp, one
/// [`INVALID_TIME`] when it cannot be a date.
pub fn when(t: Option<&prost_types::Timestamp>, now: SystemTime, unset: &str) -> String {
    match t {
        None => unset.to_string(),
        Some(ts_) if printable(ts_).is_none() => INVALID_TIME.to_string(),
        Some(_) => format!("{} ({})", ts(t), ago(t, now)),
    }
}

/// A duration in its largest whole unit: "950ms", "42s", "5m", "3h", "2d".
pub fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s == 0 {
        format!("{}ms", d.as_millis())
    } else if s < 120 {
        format!("{s}s")
    } else if s < 2 * 3600 {
        format!("{}m", s / 60)
    } else if s < 2 * 86_400 {
        format!("{}h", s / 3600)
    } else {
        format!("{}d", s / 86_400)
    }
}

/// Milliseconds as "30s", "1m 30s" (humantime's spelling).
pub fn millis(ms: u64) -> String {
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

/// Microseconds as milliseconds with one decimal ("1.2").
pub fn us_as_ms(us: u64) -> String {
    format!("{:.1}", us as f64 / 1000.0)
}

/// Microseconds as milliseconds for JSON (three decimals).
pub fn us_as_ms_json(us: u64) -> Value {
    serde_json::Number::from_f64(us as f64 / 1000.0).map_or(Value::Null, Value::Number)
}

/// The connect time of a check as JSON milliseconds; null when nothing
/// connected (a failed check, or no result at all), as in notifications.
pub fn connect_ms_json(outcome: i32, connect_us: u64) -> Value {
    if outcome == portwatch_proto::v1::Outcome::Ok as i32 {
        us_as_ms_json(connect_us)
    } else {
        Value::Null
    }
}

/// The connect time of a check for a table; empty when nothing connected.
pub fn connect_ms_text(outcome: i32, connect_us: u64) -> String {
    if outcome == portwatch_proto::v1::Outcome::Ok as i32 {
        us_as_ms(connect_us)
    } else {
        String::new()
    }
}

/// One point of a sparkline: a latency, or a check that did not connect.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Spark {
    Latency(f64),
    /// The target failed (refused, timed out, ...).
    Down,
    /// No verdict about the target (blocked, probe error).
    Unknown,
}

/// Eight levels between the lowest and the highest latency of the line; `✗` for
/// a failed check, `·` for one without a verdict.
pub fn sparkline(points: &[Spark]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let lat = points.iter().filter_map(|p| match p {
        Spark::Latency(v) => Some(*v),
        _ => None,
    });
    let (lo, hi) = lat.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    points
        .iter()
        .map(|p| match p {
            Spark::Latency(v) => {
                let span = hi - lo;
                if span <= f64::EPSILON {
                    BARS[0]
                } else {
                    let level = ((v - lo) / span * 7.0).round() as usize;
                    BARS[level.min(7)]
                }
            }
            Spark::Down => '✗',
            Spark::Unknown => '·',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_trim() {
        let mut t = Table::new(&["ID", "NAME"]);
        t.row(vec!["a".into(), "first".into()]);
        t.row(vec!["long-id".into(), "✓".into()]);
        assert_eq!(t.render(), "ID       NAME\na        first\nlong-id  ✓\n");
    }

    #[test]
    fn sparkline_scales_and_marks_failures() {
        let s = sparkline(&[
            Spark::Latency(1.0),
            Spark::Latency(8.0),
            Spark::Down,
            Spark::Unknown,
            Spark::Latency(4.5),
        ]);
        assert_eq!(s, "▁█✗·▅");
        assert_eq!(sparkline(&[Spark::Latency(3.0), Spark::Latency(3.0)]), "▁▁");
        assert_eq!(sparkline(&[]), "");
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(short_duration(Duration::from_millis(950)), "950ms");
        assert_eq!(short_duration(Duration::from_secs(42)), "42s");
        assert_eq!(short_duration(Duration::from_secs(600)), "10m");
        assert_eq!(short_duration(Duration::from_secs(3 * 3600)), "3h");
        assert_eq!(millis(90_000), "1m 30s");
        assert_eq!(us_as_ms(1234), "1.2");
    }
}
