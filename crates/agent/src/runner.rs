//! Runs checks on schedule: one loop over the scheduler's heap (no task per
//! monitor sleeping), a semaphore bounding checks in flight, and a writer that
//! puts results into the spool in batches before anything is sent.
//!
//! Guarantees: a result is in the spool (and flushed) before the stream can
//! send it; a check-now or a new/changed monitor runs at once; a late loop runs
//! one check per monitor, never a backlog; schedule lag is measured.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use portwatch_check::{CheckSpec, Checker, CloseMode, Outcome};
use portwatch_proto::v1;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::scheduler::Scheduler;
use crate::spool::Spool;

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
    permits: Arc<Semaphore>,
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
            permits: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
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

    /// The scheduler loop; returns when `stop` is cancelled.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let now = now_ms();
            let next = self.sched().next_due_ms();
            match next {
                Some(t) if t <= now => {
                    let due = self.sched().pop_due(now, POP_MAX);
                    for d in due {
                        let permit = tokio::select! {
                            () = stop.cancelled() => return,
                            p = self.permits.clone().acquire_owned() => match p {
                                Ok(p) => p,
                                Err(_) => return,
                            },
                        };
                        let Some(results) = self
                            .results
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .clone()
                        else {
                            return;
                        };
                        let lag_ms = now_ms().saturating_sub(d.due_ms);
                        self.record_lag(lag_ms.saturating_mul(1000));
                        let runner = self.clone();
                        let n = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
                        self.metrics.in_flight.set(f64::from(n));
                        tokio::spawn(async move {
                            let result =
                                runner.run_one(&d.monitor_id, &d.payload, d.immediate).await;
                            let n = runner
                                .in_flight
                                .fetch_sub(1, Ordering::Relaxed)
                                .saturating_sub(1);
                            runner.metrics.in_flight.set(f64::from(n));
                            drop(permit);
                            if results.send(result).await.is_err() {
                                warn!("result writer is gone; result dropped");
                            }
                        });
                    }
                }
                Some(t) => {
                    let wait = Duration::from_millis(t - now);
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(wait) => {}
                        () = self.wake.notified() => {}
                    }
                }
                None => {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = self.wake.notified() => {}
                    }
                }
            }
        }
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

    /// Stops taking new checks and waits (bounded) for those in flight; then
    /// closes the result channel so the writer can finish.
    pub async fn drain(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        let all = u32::try_from(self.max_in_flight).unwrap_or(u32::MAX);
        if tokio::time::timeout_at(deadline, self.permits.acquire_many(all))
            .await
            .is_err()
        {
            warn!(
                in_flight = self.in_flight(),
                "checks still running at shutdown"
            );
        }
        self.results
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }
}

/// Moves results from the checks into the spool in batches (size or time
/// bound), flushes, then wakes the stream. Ends when every sender is gone.
pub async fn spool_writer(
    mut rx: mpsc::Receiver<v1::CheckResult>,
    spool: Spool,
    spooled: Arc<Notify>,
    batch_size: usize,
    batch_wait: Duration,
) {
    let batch_size = batch_size.max(1);
    let mut batch = Vec::with_capacity(batch_size);
    loop {
        let Some(first) = rx.recv().await else { break };
        batch.push(first);
        // Gather for `batch_wait` by sleeping once, not by waking for every
        // result (thousands a second at scale); skip the wait when a full
        // batch is already queued (a burst, a backlog).
        if rx.len() + 1 < batch_size {
            tokio::time::sleep(batch_wait).await;
        }
        while batch.len() < batch_size {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        write(&spool, &mut batch).await;
        spooled.notify_one();
    }
    if !batch.is_empty() {
        write(&spool, &mut batch).await;
        spooled.notify_one();
    }
}

async fn write(spool: &Spool, batch: &mut Vec<v1::CheckResult>) {
    // sled work runs on a blocking thread: an append (and the drop of the
    // oldest results over the bound) must not hold up the runtime's workers,
    // which start the checks.
    let results = std::mem::take(batch);
    let lost = results.len();
    let writer = spool.clone();
    let appended = tokio::task::spawn_blocking(move || {
        let appended = writer.append(&results);
        (appended, results)
    })
    .await;
    match appended {
        Ok((Ok(_), results)) => {
            *batch = results;
            if let Err(e) = spool.flush().await {
                warn!(error = %e, "spool flush failed");
            }
        }
        Ok((Err(e), results)) => {
            *batch = results;
            warn!(error = %e, lost, "spool append failed; results lost");
        }
        Err(e) => warn!(error = %e, lost, "spool append panicked; results lost"),
    }
    metrics::gauge!("portwatch_agent_spool_depth").set(spool.depth() as f64);
    metrics::gauge!("portwatch_agent_spool_dropped_total").set(spool.dropped_total() as f64);
    batch.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(i: usize) -> v1::CheckResult {
        v1::CheckResult {
            monitor_id: format!("mon-{i}"),
            ..Default::default()
        }
    }

    type Channel = (
        mpsc::Sender<v1::CheckResult>,
        mpsc::Receiver<v1::CheckResult>,
    );

    /// A spool in a temp dir and a result channel for its writer.
    fn spool_and_channel() -> (tempfile::TempDir, Spool, Channel) {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 10_000).unwrap();
        (dir, spool, mpsc::channel(4_096))
    }

    /// The writer under test, in batches of 500.
    fn spawn_writer(
        rx: mpsc::Receiver<v1::CheckResult>,
        spool: &Spool,
        batch_wait: Duration,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(spool_writer(
            rx,
            spool.clone(),
            Arc::new(Notify::new()),
            500,
            batch_wait,
        ))
    }

    /// Drops the sender and waits (bounded) for the writer to finish.
    async fn finish(tx: mpsc::Sender<v1::CheckResult>, task: tokio::task::JoinHandle<()>) {
        drop(tx);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
    }

    /// Spooled count, polled until `n` or `limit` (bounded).
    async fn spooled_within(spool: &Spool, n: u64, limit: Duration) -> u64 {
        let until = Instant::now() + limit;
        while spool.depth() < n && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        spool.depth()
    }

    #[tokio::test]
    async fn full_batches_are_written_without_waiting_out_the_batch_wait() {
        let (_dir, spool, (tx, rx)) = spool_and_channel();
        // A burst of exactly three full batches, queued before the writer runs.
        for i in 0..1_500 {
            tx.send(result(i)).await.unwrap();
        }
        let task = spawn_writer(rx, &spool, Duration::from_secs(60));
        // Were the writer to wait out its minute per batch, none would be spooled yet.
        assert_eq!(
            spooled_within(&spool, 1_500, Duration::from_secs(10)).await,
            1_500
        );
        finish(tx, task).await;
    }

    #[tokio::test]
    async fn a_partial_batch_is_written_after_the_batch_wait_and_at_shutdown() {
        let (_dir, spool, (tx, rx)) = spool_and_channel();
        let task = spawn_writer(rx, &spool, Duration::from_millis(100));
        for i in 0..3 {
            tx.send(result(i)).await.unwrap();
        }
        assert_eq!(spooled_within(&spool, 3, Duration::from_secs(10)).await, 3);
        // The last results are written when the senders are gone.
        tx.send(result(3)).await.unwrap();
        finish(tx, task).await;
        assert_eq!(spool.depth(), 4);
    }
}
