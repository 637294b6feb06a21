//! Runs checks on schedule: one loop over the scheduler's heap (no task per
//! monitor sleeping) that also polls the checks in flight itself (no task per
//! check), bounded by `max_in_flight`, and a writer that puts results into the
//! spool in batches before anything is sent.
//!
//! Guarantees: a result is in the spool (and flushed) before the stream can
//! send it; a check-now or a new/changed monitor runs at once; a late loop runs
//! one check per monitor, never a backlog; schedule lag is measured; when the
//! writer falls behind, results wait in the loop (bounded) and no new check
//! starts until they are handed on, so none is dropped.

use std::collections::{HashSet, VecDeque};
use std::pin::pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use portwatch_check::{CheckSpec, Checker, CloseMode, Outcome};
use portwatch_proto::convert::ResultToWire;
use portwatch_proto::v1;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::loops::{self, Backoff, Loop};
use crate::scheduler::{Due, Scheduler};

/// Callers that wire a runner to its writer (the benchmarks) find it here too.
pub use crate::writer::spool_writer;

/// What the scheduler holds per monitor.
#[derive(Clone, Debug)]
pub struct Job {
    pub spec: Arc<CheckSpec>,
    pub generation: u64,
}

/// Most checks started per scheduler wake-up (keeps the loop responsive).
const POP_MAX: usize = 1024;
/// How many recent lags feed the p99 reported in heartbeats.
const LAG_WINDOW: usize = 4096;

/// Milliseconds since the Unix epoch, wall clock (schedules are aligned on it).
pub fn now_ms() -> u64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The scheduler loop and its check executor.
pub struct Runner {
    checker: Checker,
    scheduler: Mutex<Scheduler<Job>>,
    wake: Notify,
    max_in_flight: usize,
    in_flight: AtomicU32,
    results: Mutex<Option<mpsc::Sender<v1::CheckResult>>>,
    force_close: Option<CloseMode>,
    lags: Mutex<VecDeque<u64>>,
    metrics: RunnerMetrics,
}

/// Metric handles, looked up once (a lookup per check by name and labels
/// costs more than the update itself). Taken when the runner is built, so
/// the recorder must be installed before.
struct RunnerMetrics {
    lag: metrics::Histogram,
    in_flight: metrics::Gauge,
    check_seconds: metrics::Histogram,
    checks: [metrics::Counter; Outcome::ALL.len()],
}

impl RunnerMetrics {
    fn new() -> RunnerMetrics {
        RunnerMetrics {
            lag: metrics::histogram!("portwatch_agent_schedule_lag_seconds"),
            in_flight: metrics::gauge!("portwatch_agent_in_flight"),
            check_seconds: metrics::histogram!("portwatch_agent_check_seconds"),
            checks: Outcome::ALL
                .map(|o| metrics::counter!("portwatch_agent_checks_total", "outcome" => o.name())),
        }
    }

    fn checks(&self, outcome: Outcome) -> Option<&metrics::Counter> {
        let i = Outcome::ALL.iter().position(|o| *o == outcome)?;
        self.checks.get(i)
    }
}

fn job_of(a: &v1::Assignment) -> Option<Job> {
    let spec = a.spec.as_ref()?;
    match CheckSpec::try_from(spec) {
        Ok(spec) => Some(Job {
            spec: Arc::new(spec),
            generation: a.generation,
        }),
        Err(e) => {
            warn!(monitor_id = %a.monitor_id, error = %e, "ignoring an assignment with an invalid check spec");
            None
        }
    }
}

impl Runner {
    pub fn new(
        checker: Checker,
        max_in_flight: usize,
        results: mpsc::Sender<v1::CheckResult>,
        force_close: Option<CloseMode>,
    ) -> Arc<Runner> {
        Arc::new(Runner {
            checker,
            scheduler: Mutex::new(Scheduler::new()),
            wake: Notify::new(),
            max_in_flight: max_in_flight.max(1),
            in_flight: AtomicU32::new(0),
            results: Mutex::new(Some(results)),
            force_close,
            lags: Mutex::new(VecDeque::with_capacity(LAG_WINDOW)),
            metrics: RunnerMetrics::new(),
        })
    }

    fn sched(&self) -> MutexGuard<'_, Scheduler<Job>> {
        self.scheduler.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the whole assignment set.
    pub fn apply_snapshot(&self, assignments: &[v1::Assignment]) {
        let keep: HashSet<&str> = assignments.iter().map(|a| a.monitor_id.as_str()).collect();
        let now = now_ms();
        {
            let mut s = self.sched();
            s.retain(&keep);
            for a in assignments {
                if let Some(job) = job_of(a) {
                    s.upsert(&a.monitor_id, a.interval_ms, a.generation, job, now);
                }
            }
        }
        self.wake.notify_one();
    }

    /// Applies upserts and removals.
    pub fn apply_update(&self, update: &v1::AssignmentUpdate) {
        let now = now_ms();
        {
            let mut s = self.sched();
            for id in &update.removals {
                s.remove(id);
            }
            for a in &update.upserts {
                if let Some(job) = job_of(a) {
                    s.upsert(&a.monitor_id, a.interval_ms, a.generation, job, now);
                }
            }
        }
        self.wake.notify_one();
    }

    /// Runs these monitors now (fast confirmation).
    pub fn check_now(&self, ids: &[String]) {
        let now = now_ms();
        {
            let mut s = self.sched();
            for id in ids {
                if !s.check_now(id, now) {
                    debug!(monitor_id = %id, "check-now for a monitor not assigned here");
                }
            }
        }
        self.wake.notify_one();
    }

    pub fn assignments(&self) -> usize {
        self.sched().len()
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The 99th percentile of recent schedule lags, microseconds.
    pub fn lag_p99_us(&self) -> u64 {
        let lags = self.lags.lock().unwrap_or_else(|e| e.into_inner());
        if lags.is_empty() {
            return 0;
        }
        let mut v: Vec<u64> = lags.iter().copied().collect();
        v.sort_unstable();
        let idx = (v.len() * 99).div_ceil(100).saturating_sub(1);
        v.get(idx).copied().unwrap_or(0)
    }

    fn record_lag(&self, lag_us: u64) {
        self.metrics.lag.record(lag_us as f64 / 1e6);
        let mut lags = self.lags.lock().unwrap_or_else(|e| e.into_inner());
        if lags.len() == LAG_WINDOW {
            lags.pop_front();
        }
        lags.push_back(lag_us);
    }

    fn set_in_flight(&self, n: usize) {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        self.in_flight.store(n, Ordering::Relaxed);
        self.metrics.in_flight.set(f64::from(n));
    }

    /// Starts [`Runner::run`] on a thread of its own with a single-threaded
    /// runtime, the way the agent runs it: the thread sleeps in the kernel
    /// until a check is due or a socket answers, and a finished handshake
    /// wakes this thread only, not a second worker that would look for work
    /// and find none (measured: one futex and a context switch per check on
    /// a shared multi-threaded runtime). The results channel, the wake-up
    /// and `stop` work across runtimes.
    pub fn start(
        self: Arc<Self>,
        stop: CancellationToken,
        drain: Duration,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("portwatch-checks".into())
            .spawn(move || runtime.block_on(self.run(stop, drain)))
    }

    /// The scheduler loop. Checks in flight are futures polled here, not
    /// tasks: starting one costs no spawn, and a finished one wakes this loop,
    /// not a task on another worker. When `stop` is cancelled no new check
    /// starts; those in flight get up to `drain` to finish and their results
    /// are handed to the writer; then the result channel is closed (so the
    /// writer can finish) and this returns. Runs once per runner.
    ///
    /// A panic in the loop itself (a bug; a panicking check is contained
    /// where it runs) is logged and counted, and the loop starts again after
    /// a backoff (1 s doubling to 30 s): the checks it had in flight are lost,
    /// and their monitors are checked again when next due. It returns early
    /// only when the result writer is gone, which the daemon notices.
    pub async fn run(self: Arc<Self>, stop: CancellationToken, drain: Duration) {
        let Some(results) = self
            .results
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            warn!("the runner's loop was started twice; the second start does nothing");
            return;
        };
        loops::running(Loop::Checks);
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        loop {
            let started = Instant::now();
            match loops::catch(self.run_loop(&results, &stop, drain)).await {
                Ok(()) => return,
                Err(panic) => {
                    self.set_in_flight(0);
                    loops::step_failed(
                        Loop::Checks,
                        &format!("the check loop {panic}; starting it again"),
                    );
                    if started.elapsed() > Duration::from_secs(60) {
                        backoff.reset();
                    }
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(backoff.next_wait()) => {}
                    }
                }
            }
        }
    }

    /// One life of the loop (see [`Runner::run`]).
    async fn run_loop(
        &self,
        results: &mpsc::Sender<v1::CheckResult>,
        stop: &CancellationToken,
        drain: Duration,
    ) {
        let this: &Runner = self;
        let mut checks = FuturesUnordered::new();
        // Finished results the writer has not taken yet (its channel full).
        let mut done: VecDeque<v1::CheckResult> = VecDeque::new();
        let mut stopped = pin!(stop.cancelled());
        let mut woken = pin!(this.wake.notified());
        let mut timer = DueTimer::new();
        loop {
            if !hand_on(results, &mut done) {
                warn!(
                    dropped = done.len(),
                    "result writer is gone; results dropped"
                );
                return;
            }
            let room = if done.len() >= this.max_in_flight {
                0
            } else {
                this.max_in_flight - checks.len()
            };
            let now = now_ms();
            let mut next = this.sched().next_due_ms();
            if room > 0
                && let Some(t) = next
                && t <= now
            {
                let due = this.sched().pop_due(now, POP_MAX.min(room));
                for d in due {
                    let lag_ms = now_ms().saturating_sub(d.due_ms);
                    this.record_lag(lag_ms.saturating_mul(1000));
                    checks.push(this.run_due(d));
                }
                this.set_in_flight(checks.len());
                next = this.sched().next_due_ms();
            }
            // Sleep until the next due check, unless there is no room for it
            // (a finished check or a taken result wakes the loop then).
            let room = done.len() < this.max_in_flight && checks.len() < this.max_in_flight;
            timer.arm(next.filter(|_| room));
            tokio::select! {
                biased;
                () = stopped.as_mut() => break,
                Some(r) = checks.next(), if !checks.is_empty() => {
                    done.push_back(r);
                    // Take every other check that is finished too (one wake-up, many results).
                    while let Some(Some(r)) = checks.next().now_or_never() {
                        done.push_back(r);
                    }
                    this.set_in_flight(checks.len());
                }
                permit = results.reserve(), if !done.is_empty() => match permit {
                    Ok(permit) => {
                        if let Some(r) = done.pop_front() {
                            permit.send(r);
                        }
                    }
                    Err(_) => {
                        warn!(dropped = done.len(), "result writer is gone; results dropped");
                        return;
                    }
                },
                () = timer.fired(), if timer.is_armed() => {}
                () = woken.as_mut() => woken.set(this.wake.notified()),
            }
        }
        // Stopping: no new checks; let those in flight finish (bounded).
        let deadline = tokio::time::Instant::now() + drain;
        while !checks.is_empty() {
            match tokio::time::timeout_at(deadline, checks.next()).await {
                Ok(Some(r)) => done.push_back(r),
                Ok(None) => break,
                Err(_) => {
                    warn!(in_flight = checks.len(), "checks still running at shutdown");
                    break;
                }
            }
        }
        this.set_in_flight(0);
        for r in done {
            if results.send(r).await.is_err() {
                warn!("result writer is gone; results dropped");
                break;
            }
        }
    }

    /// One due check. A panic inside it (a bug) is caught here, as the
    /// runtime would catch it in a task of its own: it costs this result,
    /// reported as the agent's own fault (`probe_error`, which never pages),
    /// not the loop and every check after it.
    async fn run_due(&self, d: Due<Job>) -> v1::CheckResult {
        let check = self.run_one(&d.monitor_id, &d.payload, d.immediate);
        contained(check, &d.monitor_id, d.payload.generation, d.immediate).await
    }

    async fn run_one(&self, monitor_id: &str, job: &Job, immediate: bool) -> v1::CheckResult {
        let started = Instant::now();
        let result = match self.force_close {
            Some(mode) if mode != job.spec.close_mode => {
                let mut spec = (*job.spec).clone();
                spec.close_mode = mode;
                self.checker.check(&spec).await
            }
            _ => self.checker.check(&job.spec).await,
        };
        if let Some(c) = self.metrics.checks(result.outcome) {
            c.increment(1);
        }
        self.metrics
            .check_seconds
            .record(started.elapsed().as_secs_f64());
        if result.outcome == Outcome::ProbeError {
            warn!(monitor_id, detail = %result.detail, "probe error (the agent's own fault; not reported as the target's)");
        }
        result.to_wire(monitor_id, job.generation, immediate)
    }
}

/// Sleeps until the next due check: one timer, re-armed only when the
/// instant it waits for changes (not a new timer per loop turn).
pub struct DueTimer {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    armed_for: Option<u64>,
}

impl Default for DueTimer {
    fn default() -> DueTimer {
        DueTimer::new()
    }
}

impl DueTimer {
    pub fn new() -> DueTimer {
        DueTimer {
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed_for: None,
        }
    }

    /// Waits for `due_ms` (wall-clock milliseconds, now or past = at once),
    /// or for nothing.
    pub fn arm(&mut self, due_ms: Option<u64>) {
        if due_ms == self.armed_for {
            return;
        }
        if let Some(t) = due_ms {
            let wait = Duration::from_millis(t.saturating_sub(now_ms()));
            self.sleep
                .as_mut()
                .reset(tokio::time::Instant::now() + wait);
        }
        self.armed_for = due_ms;
    }

    pub fn is_armed(&self) -> bool {
        self.armed_for.is_some()
    }

    /// Completes when the armed instant comes (once per arming); poll only
    /// while armed.
    pub async fn fired(&mut self) {
        self.sleep.as_mut().await;
        self.armed_for = None;
    }
}

/// Runs `check`; if it panics, returns a `probe_error` result for the
/// monitor instead of unwinding through the check loop.
async fn contained(
    check: impl std::future::Future<Output = v1::CheckResult>,
    monitor_id: &str,
    generation: u64,
    immediate: bool,
) -> v1::CheckResult {
    let checked_at = SystemTime::now();
    match std::panic::AssertUnwindSafe(check).catch_unwind().await {
        Ok(result) => result,
        Err(_) => {
            error!(monitor_id, "the check panicked; reported as a probe error");
            portwatch_check::CheckResult {
                checked_at,
                outcome: Outcome::ProbeError,
                detail: "the agent's check failed internally".into(),
                address: None,
                dns_us: 0,
                connect_us: 0,
                total_us: 0,
                tcp_rtt_us: None,
                attempts: Vec::new(),
            }
            .to_wire(monitor_id, generation, immediate)
        }
    }
}

/// Hands finished results to the writer without waiting; false when the
/// writer is gone.
fn hand_on(results: &mpsc::Sender<v1::CheckResult>, done: &mut VecDeque<v1::CheckResult>) -> bool {
    while let Some(r) = done.pop_front() {
        match results.try_send(r) {
            Ok(()) => {}
            Err(TrySendError::Full(r)) => {
                done.push_front(r);
                return true;
            }
            Err(TrySendError::Closed(r)) => {
                done.push_front(r);
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests;
