//! `portwatch-agent run`: wires the spool, the check engine, the scheduler
//! loop, the spool writer, the coordinator stream and `/metrics`, and shuts
//! down softly: stop scheduling, finish checks in flight, flush the spool, send
//! what is left and wait (bounded) for its acknowledgement.
//!
//! Every long-running loop is watched: one that ends before the agent stops
//! is reported (`loops::ended`); if the agent is useless without it (checks,
//! spool writer, stream), the agent shuts down softly and exits with a
//! failure, so that its service manager restarts it (the systemd unit has
//! `Restart=always`) instead of leaving a zombie.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, bail};
use portwatch_check::{Checker, Guard, Nameservers, Resolver};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::loops::{self, Loop};
use crate::runner::Runner;
use crate::spool::Spool;
use crate::stream::{self, Link};
use crate::writer::spool_writer;

/// Longest a check can take (the largest timeout) plus slack.
const DRAIN_CHECKS: Duration = Duration::from_secs(11);

/// Raises the soft RLIMIT_NOFILE to the hard limit: each check in flight is a socket.
pub fn raise_nofile() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a stack struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return Some(raised.rlim_cur);
            }
        }
    }
    Some(lim.rlim_cur)
}

/// Runs the agent until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    if let Some(n) = raise_nofile() {
        info!(nofile = n, "file descriptor limit");
        if (n as usize) < config.max_in_flight + 256 {
            warn!(
                nofile = n,
                max_in_flight = config.max_in_flight,
                "the descriptor limit is below max_in_flight; checks may fail with probe errors"
            );
        }
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("data_dir: creating {}", config.data_dir.display()))?;
    let spool = Spool::open(&config.data_dir, config.spool_max).with_context(|| {
        format!(
            "data_dir: opening the spool in {}",
            config.data_dir.display()
        )
    })?;
    let agent_id = spool.agent_id(config.agent_id.as_deref())?;
    let nameservers = if config.nameservers.is_empty() {
        Nameservers::System
    } else {
        Nameservers::Custom(config.nameservers.clone())
    };
    let resolver = Resolver::new(&nameservers).context("nameservers")?;
    let guard = match (
        config.allow_private_targets,
        config.private_allow.is_empty(),
    ) {
        (false, _) => Guard::public_only(),
        (true, true) => Guard::allow_private(),
        (true, false) => Guard::allow_private_in(config.private_allow.clone()),
    };
    let checker = Checker::new(resolver, guard).with_source(config.source_address);

    if let Some(addr) = config.metrics_listen {
        let handle = portwatch_telemetry::metrics_http::install().map_err(anyhow::Error::msg)?;
        let bound = portwatch_telemetry::metrics_http::serve(addr, handle, shutdown.clone())
            .await
            .with_context(|| format!("metrics_listen: binding {addr}"))?;
        println!("portwatch-agent metrics on http://{bound}/metrics");
    }

    let (results_tx, results_rx) = mpsc::channel(65_536);
    let runner = Runner::new(checker, config.max_in_flight, results_tx, config.close_mode);
    // Keep probing from the cached assignments while the coordinator is away.
    let (revision, cached) = spool.assignments()?;
    if !cached.is_empty() {
        info!(
            assignments = cached.len(),
            revision, "resuming cached assignments"
        );
        runner.apply_snapshot(&cached);
    }
    drop(cached);
    crate::memory::release_free_pages();
    let spooled = Arc::new(Notify::new());
    // Set once the agent is stopping: a loop that ends after it is expected to.
    let stopping = CancellationToken::new();
    let broken = Broken::default();
    let writer = watch(
        Loop::SpoolWriter,
        tokio::spawn(spool_writer(
            results_rx,
            spool.clone(),
            spooled.clone(),
            config.batch_size,
            config.batch_wait,
        )),
        &stopping,
        &shutdown,
        &broken,
    );
    let sched_stop = CancellationToken::new();
    let sched = runner
        .clone()
        .start(sched_stop.clone(), DRAIN_CHECKS)
        .context("starting the check thread")?;
    let checks = watch(
        Loop::Checks,
        tokio::task::spawn_blocking(move || {
            if let Err(panic) = sched.join() {
                std::panic::resume_unwind(panic);
            }
        }),
        &stopping,
        &shutdown,
        &broken,
    );
    let stream_stop = CancellationToken::new();
    let link = Link {
        config: config.clone(),
        agent_id: agent_id.clone(),
        spool: spool.clone(),
        runner: runner.clone(),
        spooled,
    };
    let link_task = watch(
        Loop::Stream,
        tokio::spawn(stream::run(link, stream_stop.clone())),
        &stopping,
        &shutdown,
        &broken,
    );
    let trimmer = watch(
        Loop::MemoryTrim,
        tokio::spawn(crate::memory::release_periodically(
            crate::memory::RELEASE_EVERY,
            stopping.clone(),
        )),
        &stopping,
        &shutdown,
        &broken,
    );
    let coordinators = config
        .coordinators
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    println!("portwatch-agent {agent_id} running; coordinator {coordinators}");
    info!(agent_id, coordinator = %coordinators, "agent running");

    shutdown.cancelled().await;
    stopping.cancel();
    info!("shutting down: finishing checks in flight");
    // The loop finishes the checks in flight (bounded) and closes the
    // result channel.
    sched_stop.cancel();
    let _ = checks.await;
    drop(runner);
    let _ = writer.await;
    if let Err(e) = spool.flush().await {
        warn!(error = %e, "flushing the spool at shutdown failed; sending what is durable");
    }
    info!(
        pending = spool.depth(),
        "spool flushed; sending what is left"
    );
    stream_stop.cancel();
    let _ = link_task.await;
    let _ = trimmer.await;
    if let Err(e) = spool.flush().await {
        warn!(error = %e, "flushing the spool at shutdown failed");
    }
    info!(unacknowledged = spool.depth(), "agent stopped");
    match broken.which() {
        Some(which) => bail!(
            "the agent's {} loop ended unexpectedly; stopped so that it can be restarted",
            which.name()
        ),
        None => Ok(()),
    }
}

/// The first essential loop that ended before the agent was stopping.
#[derive(Clone, Default)]
struct Broken(Arc<Mutex<Option<Loop>>>);

impl Broken {
    fn which(&self) -> Option<Loop> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, which: Loop) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(which);
    }
}

/// Awaits `task`; if it ends before `stopping` (returned or panicked), that is
/// reported (`loops::ended`), and for an essential loop the agent shuts down
/// softly and exits with a failure, so that its service manager starts it
/// again rather than leave a zombie that looks alive and checks or reports
/// nothing.
fn watch(
    which: Loop,
    task: JoinHandle<()>,
    stopping: &CancellationToken,
    shutdown: &CancellationToken,
    broken: &Broken,
) -> JoinHandle<()> {
    let (stopping, shutdown, broken) = (stopping.clone(), shutdown.clone(), broken.clone());
    tokio::spawn(async move {
        let outcome = task.await;
        if stopping.is_cancelled() {
            return;
        }
        match outcome {
            Ok(()) => loops::ended(which, &"it returned"),
            Err(e) => loops::ended(which, &e),
        }
        if which.essential() {
            broken.set(which);
            shutdown.cancel();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits (bounded) for a watcher to finish.
    async fn settled(watcher: JoinHandle<()>) {
        tokio::time::timeout(Duration::from_secs(5), watcher)
            .await
            .expect("the watcher finished")
            .expect("the watcher did not panic");
    }

    #[tokio::test]
    async fn an_essential_loop_that_ends_early_stops_the_agent_with_a_failure() {
        let (stopping, shutdown, broken) = (
            CancellationToken::new(),
            CancellationToken::new(),
            Broken::default(),
        );
        // A stream task that dies of a panic while the agent runs.
        let task = tokio::spawn(async {
            if crate::runner::now_ms() > 0 {
                panic!("a bug in the session");
            }
        });
        settled(watch(Loop::Stream, task, &stopping, &shutdown, &broken)).await;
        assert!(shutdown.is_cancelled(), "the agent shuts down softly");
        assert_eq!(broken.which(), Some(Loop::Stream));
        assert!(loops::errors_total() > 0);
    }

    #[tokio::test]
    async fn an_optional_loop_that_ends_early_is_reported_and_the_agent_goes_on() {
        let (stopping, shutdown, broken) = (
            CancellationToken::new(),
            CancellationToken::new(),
            Broken::default(),
        );
        let task = tokio::spawn(async {});
        settled(watch(Loop::MemoryTrim, task, &stopping, &shutdown, &broken)).await;
        assert!(!shutdown.is_cancelled());
        assert_eq!(broken.which(), None);
    }

    #[tokio::test]
    async fn loops_ending_while_the_agent_stops_are_expected() {
        let (stopping, shutdown, broken) = (
            CancellationToken::new(),
            CancellationToken::new(),
            Broken::default(),
        );
        let (end_tx, end_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = end_rx.await;
        });
        let watcher = watch(Loop::Checks, task, &stopping, &shutdown, &broken);
        stopping.cancel();
        let _ = end_tx.send(());
        settled(watcher).await;
        assert!(!shutdown.is_cancelled());
        assert_eq!(broken.which(), None);
    }
}
