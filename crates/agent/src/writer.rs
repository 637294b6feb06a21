//! The spool writer: moves results from the check loop into the spool in
//! batches (size or time bound), flushes, then wakes the stream; and repairs
//! the spool when it fails.
//!
//! Guarantees:
//! - A result reaches the stream only after the flush that made it durable
//!   (the stream reads [`Spool::pending`], which hands out durable results only).
//! - The checks never wait on a failing spool: while it cannot store (a full
//!   disk, an I/O error), the writer keeps taking results and holds them in
//!   memory, oldest first, at most `min(spool_max, 65,536)`; beyond that the
//!   oldest are dropped, counted ([`Spool::count_unstored`], persisted with the
//!   next append that works, reported in heartbeats and metrics) and logged.
//!   Nothing is dropped silently.
//! - A failed spool is reopened (sled refuses every write after its first I/O
//!   error for as long as its handle lives), with backoff from 500 ms to 5 s,
//!   until the disk takes writes again; then the held results are stored,
//!   each once: those that reached the disk before the failure after all are
//!   recognised and not stored again.
//! - A failing step is logged and counted (`loops`), and the writer goes on;
//!   it ends only when every sender is gone and what it holds is stored (or,
//!   if the spool still fails at that point, counted as lost).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portwatch_proto::v1;
use prost::Message;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{Notify, mpsc};
use tracing::{info, warn};

use crate::loops::{self, Backoff, Loop};
use crate::spool::Spool;

/// Most results held in memory while the spool cannot store (also bounded by
/// `spool_max`): ≈ 20 MB, 20 s of a 100k-monitor agent at one check each 30 s.
pub const HOLD_MAX: usize = 65_536;
/// First wait before reopening a failed spool; doubles up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How often an idle writer looks for a failure seen by another user of the
/// spool (an acknowledgement, an assignment update).
const FAULT_POLL: Duration = Duration::from_secs(1);
/// Below this much free space a failed spool is not reopened yet: sled needs
/// room for a new segment (512 KiB) to open, and a failed opening leaves no
/// handle at all, not even to read and send what is already stored.
const REOPEN_MIN_FREE: u64 = 2 * 1024 * 1024;
/// Drops while failing are logged at most this often (with their count).
const LOST_LOG_EVERY: Duration = Duration::from_secs(10);

/// Moves results into the spool until every sender is gone (see the module
/// doc). A panic inside one turn is caught, logged and counted; the writer
/// goes on with what it holds.
pub async fn spool_writer(
    mut rx: mpsc::Receiver<v1::CheckResult>,
    spool: Spool,
    spooled: Arc<Notify>,
    batch_size: usize,
    batch_wait: Duration,
) {
    let mut writer = Writer::new(spool, spooled, batch_size, batch_wait);
    loops::running(Loop::SpoolWriter);
    loop {
        match loops::catch(writer.turn(&mut rx)).await {
            Ok(Turn::Again) => {}
            Ok(Turn::Done) => break,
            Err(panic) => {
                loops::step_failed(Loop::SpoolWriter, &panic);
                tokio::time::sleep(RETRY_MIN).await;
            }
        }
    }
}

enum Turn {
    Again,
    Done,
}

struct Writer {
    spool: Spool,
    spooled: Arc<Notify>,
    batch_size: usize,
    batch_wait: Duration,
    /// Results taken from the checks and not yet durable, oldest first.
    held: VecDeque<v1::CheckResult>,
    hold_max: usize,
    /// While the spool fails: the durable sequence number when it began.
    /// Results numbered after it may have reached the disk or not.
    failing_since: Option<u64>,
    backoff: Backoff,
    /// Every sender is gone.
    closed: bool,
    lost_unlogged: u64,
    lost_logged_at: Option<Instant>,
}

impl Writer {
    fn new(spool: Spool, spooled: Arc<Notify>, batch_size: usize, batch_wait: Duration) -> Writer {
        let hold_max = usize::try_from(spool.max_results())
            .unwrap_or(usize::MAX)
            .min(HOLD_MAX);
        Writer {
            spool,
            spooled,
            batch_size: batch_size.max(1),
            batch_wait,
            held: VecDeque::with_capacity(batch_size.max(1)),
            hold_max: hold_max.max(1),
            failing_since: None,
            backoff: Backoff::new(RETRY_MIN, RETRY_MAX),
            closed: false,
            lost_unlogged: 0,
            lost_logged_at: None,
        }
    }

    async fn turn(&mut self, rx: &mut mpsc::Receiver<v1::CheckResult>) -> Turn {
        if self.failing_since.is_some() {
            self.wait_for_retry(rx).await;
            if !self.repair().await {
                if self.closed {
                    self.give_up();
                    return Turn::Done;
                }
                return Turn::Again;
            }
        } else if self.held.is_empty() {
            if self.closed {
                return Turn::Done;
            }
            tokio::select! {
                r = rx.recv() => match r {
                    Some(r) => self.held.push_back(r),
                    None => return Turn::Done,
                },
                () = tokio::time::sleep(FAULT_POLL) => {
                    if self.spool.fault().is_some() {
                        self.failing_since = Some(self.spool.durable_seq());
                    }
                    return Turn::Again;
                }
            }
            // Gather for `batch_wait` by sleeping once, not by waking for every
            // result (thousands a second at scale); skip the wait when a full
            // batch is already queued (a burst, a backlog).
            if rx.len() + 1 < self.batch_size {
                tokio::time::sleep(self.batch_wait).await;
            }
        }
        while self.held.len() < self.batch_size {
            match rx.try_recv() {
                Ok(r) => self.held.push_back(r),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.closed = true;
                    break;
                }
            }
        }
        self.store().await;
        Turn::Again
    }

    /// Appends everything held, in batches, then flushes once. On a failure
    /// nothing is known durable: it is all held again, in order.
    async fn store(&mut self) {
        let mut appended: Vec<Vec<v1::CheckResult>> = Vec::new();
        let mut failure = None;
        while !self.held.is_empty() {
            let n = self.batch_size.min(self.held.len());
            let batch: Vec<v1::CheckResult> = self.held.drain(..n).collect();
            // sled work runs on a blocking thread: an append (and the drop of
            // the oldest results over the bound) must not hold up the runtime.
            let spool = self.spool.clone();
            let done = tokio::task::spawn_blocking(move || {
                let appended = spool.append(&batch);
                (appended, batch)
            })
            .await;
            match done {
                Ok((Ok(_), batch)) => appended.push(batch),
                Ok((Err(e), batch)) => {
                    appended.push(batch);
                    failure = Some(format!("appending results: {e}"));
                    break;
                }
                Err(e) => {
                    // The batch went down with the blocking task.
                    self.lost(n as u64);
                    failure = Some(format!("appending results: {e}"));
                    break;
                }
            }
        }
        if failure.is_none()
            && !appended.is_empty()
            && let Err(e) = self.spool.flush().await
        {
            failure = Some(format!("flushing the spool: {e}"));
        }
        match failure {
            None => {
                if !appended.is_empty() {
                    self.backoff.reset();
                    self.spooled.notify_one();
                }
            }
            Some(e) => {
                for r in appended.into_iter().flatten().rev() {
                    self.held.push_front(r);
                }
                if self.failing_since.is_none() {
                    self.failing_since = Some(self.spool.durable_seq());
                }
                loops::step_failed(Loop::SpoolWriter, &e);
                self.trim_held();
            }
        }
        self.report();
    }

    /// Waits out the backoff before the next repair, taking results meanwhile
    /// (the checks go on); at once when every sender is gone.
    async fn wait_for_retry(&mut self, rx: &mut mpsc::Receiver<v1::CheckResult>) {
        let until = tokio::time::sleep(self.backoff.next_wait());
        tokio::pin!(until);
        while !self.closed {
            tokio::select! {
                r = rx.recv() => match r {
                    Some(r) => {
                        self.held.push_back(r);
                        self.trim_held();
                    }
                    None => self.closed = true,
                },
                () = &mut until => break,
            }
        }
        self.report();
    }

    /// Reopens the spool and forgets the held results that reached the disk
    /// before the failure after all. True when the spool takes writes again
    /// (as far as can be known before the next append).
    async fn repair(&mut self) -> bool {
        if let Some(free) = self.spool.free_bytes()
            && free < REOPEN_MIN_FREE
        {
            loops::step_failed(
                Loop::SpoolWriter,
                &format!("the spool's disk is still full ({free} bytes free); not reopening yet"),
            );
            return false;
        }
        let spool = self.spool.clone();
        match tokio::task::spawn_blocking(move || spool.reopen()).await {
            Ok(Ok(())) => {
                metrics::counter!("portwatch_agent_spool_reopens_total").increment(1);
            }
            Ok(Err(e)) => {
                loops::step_failed(Loop::SpoolWriter, &format!("reopening the spool: {e}"));
                return false;
            }
            Err(e) => {
                loops::step_failed(Loop::SpoolWriter, &format!("reopening the spool: {e}"));
                return false;
            }
        }
        let since = self.failing_since.unwrap_or(0);
        if let Err(e) = self.forget_stored(since) {
            loops::step_failed(Loop::SpoolWriter, &format!("reading the spool back: {e}"));
            return false;
        }
        if self.held.is_empty() {
            // Nothing to store: a flush shows the spool works (and clears the fault).
            if let Err(e) = self.spool.flush().await {
                loops::step_failed(Loop::SpoolWriter, &format!("flushing the spool: {e}"));
                return false;
            }
        }
        info!(
            held = self.held.len(),
            "the spool is open again; storing the results held meanwhile"
        );
        self.failing_since = None;
        true
    }

    /// Drops from `held` the results already in the spool after `since`
    /// (appended before the failure, and on disk after all).
    fn forget_stored(&mut self, since: u64) -> Result<(), crate::spool::SpoolError> {
        let on_disk: HashSet<Vec<u8>> = self
            .spool
            .pending(since, usize::MAX)?
            .into_iter()
            .filter_map(|r| r.result.map(|r| r.encode_to_vec()))
            .collect();
        if !on_disk.is_empty() {
            let before = self.held.len();
            self.held.retain(|r| !on_disk.contains(&r.encode_to_vec()));
            info!(
                already_stored = before - self.held.len(),
                "results that reached the spool before it failed are not stored twice"
            );
        }
        Ok(())
    }

    /// Keeps the newest `hold_max` held results; the oldest beyond are lost.
    fn trim_held(&mut self) {
        let over = self.held.len().saturating_sub(self.hold_max);
        if over > 0 {
            self.held.drain(..over);
            self.lost(over as u64);
        }
    }

    /// Counts results that could not be stored; logs at most every 10 s.
    fn lost(&mut self, n: u64) {
        self.spool.count_unstored(n);
        self.lost_unlogged += n;
        let due = self
            .lost_logged_at
            .is_none_or(|at| at.elapsed() >= LOST_LOG_EVERY);
        if due {
            warn!(
                dropped = self.lost_unlogged,
                unstored_total = self.spool.unstored_total(),
                held = self.held.len(),
                "the spool cannot store and the results held in memory reached their bound: dropped the oldest"
            );
            self.lost_unlogged = 0;
            self.lost_logged_at = Some(Instant::now());
        }
    }

    /// The spool still fails as every sender is gone: what is held is lost.
    fn give_up(&mut self) {
        let n = self.held.len() as u64;
        if n > 0 {
            self.held.clear();
            self.spool.count_unstored(n);
            warn!(
                dropped = n,
                unstored_total = self.spool.unstored_total(),
                "stopping while the spool cannot store: the results held in memory are lost"
            );
        }
        self.report();
    }

    fn report(&self) {
        metrics::gauge!("portwatch_agent_spool_depth").set(self.spool.depth() as f64);
        metrics::gauge!("portwatch_agent_spool_dropped_total")
            .set(self.spool.dropped_total() as f64);
        metrics::gauge!("portwatch_agent_spool_unstored_total")
            .set(self.spool.unstored_total() as f64);
        metrics::gauge!("portwatch_agent_spool_held").set(self.held.len() as f64);
        let failing = self.failing_since.is_some() || self.spool.fault().is_some();
        metrics::gauge!("portwatch_agent_spool_failing").set(if failing { 1.0 } else { 0.0 });
    }
}

#[cfg(test)]
mod tests;
