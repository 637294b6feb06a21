//! The coordinator's background loops, kept alive and watched.
//!
//! Heartbeat expiry, periodic evaluation, region notices, pruning and the
//! notification outbox run as loops beside the gRPC server. Before this module a
//! panic in one of them (a time overflow on one bad result was enough) ended it
//! without a word, while the process and its health check looked fine. Now:
//! - a step that fails or panics is logged, counted
//!   (`portwatch_loop_errors_total{loop, step}`) and the loop goes on
//!   ([`step`]);
//! - a loop that ends anyway is logged, counted
//!   (`portwatch_loop_restarts_total{loop}`) and started again after a short,
//!   growing pause ([`supervise`]);
//! - every loop reports each completed round ([`Beat::tick`]); one that has not
//!   completed a round for `3 × period + 10 s` is *stalled* ([`Loops::stalled`]),
//!   which health reports as NOT_SERVING until it recovers.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

/// How long a loop may go without a completed round beyond three periods.
const STALL_SLACK: Duration = Duration::from_secs(10);
/// The first pause before a loop that ended is started again; doubles up to `MAX_RESTART_PAUSE`.
const FIRST_RESTART_PAUSE: Duration = Duration::from_millis(100);
const MAX_RESTART_PAUSE: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct LoopState {
    period: Duration,
    last_round: Instant,
    running: bool,
}

/// The registry of watched loops.
#[derive(Clone, Default)]
pub struct Loops {
    inner: Arc<Mutex<BTreeMap<&'static str, LoopState>>>,
}

/// A running loop's handle: `tick` after each completed round. Dropping it
/// (the loop ended or panicked) marks the loop as not running.
pub struct Beat {
    name: &'static str,
    loops: Loops,
}

impl Loops {
    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<&'static str, LoopState>) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Registers (or re-registers) a loop that completes a round every `period`.
    pub fn start(&self, name: &'static str, period: Duration) -> Beat {
        self.with(|m| {
            m.insert(
                name,
                LoopState {
                    period,
                    last_round: Instant::now(),
                    running: true,
                },
            )
        });
        Beat {
            name,
            loops: self.clone(),
        }
    }

    /// Loops that are not running, or have not completed a round for
    /// `3 × period + 10 s`, by name.
    pub fn stalled(&self) -> Vec<&'static str> {
        self.with(|m| {
            m.iter()
                .filter(|(_, s)| !s.running || s.last_round.elapsed() > s.period * 3 + STALL_SLACK)
                .map(|(name, _)| *name)
                .collect()
        })
    }
}

impl Beat {
    /// One round completed.
    pub fn tick(&self) {
        self.loops.with(|m| {
            if let Some(s) = m.get_mut(self.name) {
                s.last_round = Instant::now();
                s.running = true;
            }
        });
    }
}

impl Drop for Beat {
    fn drop(&mut self) {
        self.loops.with(|m| {
            if let Some(s) = m.get_mut(self.name) {
                s.running = false;
            }
        });
    }
}

/// Runs one step of a loop. An error or a panic is logged and counted and
/// gives `None`; the caller's loop goes on.
pub async fn step<T, E: Display>(
    loop_name: &'static str,
    step_name: &'static str,
    fut: impl Future<Output = Result<T, E>>,
) -> Option<T> {
    let why = match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(Ok(v)) => return Some(v),
        Ok(Err(e)) => e.to_string(),
        Err(panic) => format!("panicked: {}", panic_text(panic.as_ref())),
    };
    error!(loop_name, step = step_name, error = %why, "a background step failed; the loop goes on");
    metrics::counter!("portwatch_loop_errors_total", "loop" => loop_name, "step" => step_name)
        .increment(1);
    None
}

/// Like [`step`], for a step that cannot fail except by panicking.
pub async fn infallible_step<T>(
    loop_name: &'static str,
    step_name: &'static str,
    fut: impl Future<Output = T>,
) -> Option<T> {
    step(
        loop_name,
        step_name,
        fut.map(Ok::<T, std::convert::Infallible>),
    )
    .await
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_string())
}

/// Runs the loop that `make` builds until `shutdown`, starting it again (after
/// a pause that grows while it keeps ending) whenever it ends or panics.
pub async fn supervise<F, Fut>(
    loops: Loops,
    name: &'static str,
    period: Duration,
    shutdown: CancellationToken,
    make: F,
) where
    F: Fn(Beat) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut pause = FIRST_RESTART_PAUSE;
    loop {
        let beat = loops.start(name, period);
        let ended = AssertUnwindSafe(make(beat)).catch_unwind().await;
        if shutdown.is_cancelled() {
            return;
        }
        match ended {
            Ok(()) => warn!(
                loop_name = name,
                "a background loop ended; starting it again"
            ),
            Err(panic) => {
                error!(loop_name = name, error = %panic_text(panic.as_ref()), "a background loop panicked; starting it again")
            }
        }
        metrics::counter!("portwatch_loop_restarts_total", "loop" => name).increment(1);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(MAX_RESTART_PAUSE);
    }
}

#[cfg(test)]
mod tests;
