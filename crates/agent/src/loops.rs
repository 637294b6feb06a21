//! The agent's long-running loops and how their failures are made visible.
//!
//! An agent whose check loop, spool writer or coordinator stream has quietly
//! stopped still looks alive from outside (the process runs, maybe even
//! heartbeats go out) while it probes or reports nothing: a zombie. So:
//!
//! - a failing step of a loop (a spool write, an acknowledgement that cannot
//!   be applied, a panic inside a step) is logged, counted in
//!   `portwatch_agent_loop_errors_total{loop}` and in the total sent to the
//!   coordinator in heartbeats, and the loop goes on (after a backoff when
//!   the step itself panicked: [`catch`], [`Backoff`]);
//! - every loop is marked `portwatch_agent_loop_running{loop} 1` while it runs;
//!   one that ends before the agent stops is logged as an error, counted in
//!   `portwatch_agent_loop_ended_total{loop}` and marked 0 ([`ended`]), and
//!   the daemon decides whether the agent can go on without it.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use tracing::{error, warn};

/// The agent's long-running loops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loop {
    /// Runs the checks on schedule (its own thread).
    Checks,
    /// Moves results into the spool and repairs a failed spool.
    SpoolWriter,
    /// The coordinator session: results out, acknowledgements and assignments in.
    Stream,
    /// Gives freed memory back to the kernel.
    MemoryTrim,
}

impl Loop {
    pub const ALL: [Loop; 4] = [
        Loop::Checks,
        Loop::SpoolWriter,
        Loop::Stream,
        Loop::MemoryTrim,
    ];

    /// The `loop` label of its metrics.
    pub fn name(self) -> &'static str {
        match self {
            Loop::Checks => "checks",
            Loop::SpoolWriter => "spool_writer",
            Loop::Stream => "stream",
            Loop::MemoryTrim => "memory_trim",
        }
    }

    /// Whether the agent is useless without it (then it stops, so that its
    /// service manager restarts it, rather than live on as a zombie).
    pub fn essential(self) -> bool {
        !matches!(self, Loop::MemoryTrim)
    }
}

/// Failing steps of every loop since the agent started (sent in heartbeats).
static ERRORS_TOTAL: AtomicU64 = AtomicU64::new(0);

/// A step of `which` failed; the loop goes on. Logged and counted.
pub fn step_failed(which: Loop, error: &dyn std::fmt::Display) {
    ERRORS_TOTAL.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("portwatch_agent_loop_errors_total", "loop" => which.name()).increment(1);
    warn!(r#loop = which.name(), error = %error, "a step of a background loop failed; the loop goes on");
}

/// Failing steps of every loop since the agent started.
pub fn errors_total() -> u64 {
    ERRORS_TOTAL.load(Ordering::Relaxed)
}

/// `which` is running.
pub fn running(which: Loop) {
    metrics::gauge!("portwatch_agent_loop_running", "loop" => which.name()).set(1.0);
}

/// `which` ended before the agent stopped: logged as an error, counted and
/// marked as not running.
pub fn ended(which: Loop, why: &dyn std::fmt::Display) {
    ERRORS_TOTAL.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("portwatch_agent_loop_ended_total", "loop" => which.name()).increment(1);
    metrics::gauge!("portwatch_agent_loop_running", "loop" => which.name()).set(0.0);
    error!(r#loop = which.name(), reason = %why, "a background loop ended unexpectedly");
}

/// Runs `step`; a panic inside it comes back as its message instead of
/// unwinding through the loop that runs it.
pub async fn catch<F: Future>(step: F) -> Result<F::Output, String> {
    AssertUnwindSafe(step)
        .catch_unwind()
        .await
        .map_err(|panic| panic_message(panic.as_ref()))
}

/// The text a panic was raised with.
pub fn panic_message(panic: &(dyn Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string());
    format!("panicked: {text}")
}

/// Exponential backoff between attempts of a failing step: doubles from
/// `min` up to `max`; [`Backoff::reset`] after a success.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            next: min,
        }
    }

    /// The wait before the next attempt (and doubles the one after it).
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_step_comes_back_as_its_message_and_the_next_one_runs() {
        let before = errors_total();
        let mut outcomes = Vec::new();
        for turn in 0..3 {
            let step = async move {
                if turn == 1 {
                    panic!("spool exploded in turn {turn}");
                }
                turn * 10
            };
            match catch(step).await {
                Ok(v) => outcomes.push(Ok(v)),
                Err(message) => {
                    step_failed(Loop::SpoolWriter, &message);
                    outcomes.push(Err(message));
                }
            }
        }
        assert_eq!(
            outcomes,
            vec![
                Ok(0),
                Err("panicked: spool exploded in turn 1".to_string()),
                Ok(20)
            ]
        );
        assert!(errors_total() > before, "the failed step is counted");
    }

    #[test]
    fn a_panic_with_a_static_message_is_reported_too() {
        let panic = std::panic::catch_unwind(|| panic!("plain")).unwrap_err();
        assert_eq!(panic_message(panic.as_ref()), "panicked: plain");
        let odd: Box<dyn Any + Send> = Box::new(7u8);
        assert_eq!(
            panic_message(odd.as_ref()),
            "panicked: a panic without a message"
        );
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(3));
        let waits: Vec<u128> = (0..5).map(|_| b.next_wait().as_millis()).collect();
        assert_eq!(waits, vec![500, 1000, 2000, 3000, 3000]);
        b.reset();
        assert_eq!(b.next_wait(), Duration::from_millis(500));
    }

    #[test]
    fn only_the_memory_trimmer_is_optional() {
        let essential: Vec<&str> = Loop::ALL
            .iter()
            .filter(|l| l.essential())
            .map(|l| l.name())
            .collect();
        assert_eq!(essential, vec!["checks", "spool_writer", "stream"]);
    }
}
