//! Drives checks on a tokio runtime the way the agent's runner does: one task
//! spawned per check, a semaphore bounding checks in flight.
//!
//! Two probes share the driver, so their difference is the probe alone:
//! - [`Probe::Engine`]: `portwatch_check::Checker::check` on an IP literal
//!   (the agent's code path: guard, attempt, timings, `TCP_INFO`, RST close);
//! - [`Probe::TokioMin`]: the least a tokio program can do, `TcpSocket` with
//!   SO_LINGER 0, `connect` under a timeout, drop.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portwatch_check::{
    AddressPolicy, CheckSpec, Checker, CloseMode, Family, Guard, Host, Nameservers, Outcome,
    Resolver,
};
use tokio::sync::Semaphore;

/// The per-check deadline, as the agent's default.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// What runs one check.
pub enum Probe {
    Engine {
        checker: Box<Checker>,
        specs: Vec<CheckSpec>,
    },
    TokioMin {
        addrs: Vec<SocketAddr>,
    },
}

/// A spec for an IP literal, RST close, the default deadline.
pub fn spec_for(addr: SocketAddr) -> CheckSpec {
    CheckSpec {
        host: Host::Ip(addr.ip()),
        port: addr.port(),
        timeout: TIMEOUT,
        family: Family::Any,
        address_policy: AddressPolicy::Any,
        close_mode: CloseMode::Rst,
    }
}

/// The agent's checker for a self-hosted (private) probe: loopback is allowed.
/// Must be called inside a tokio runtime.
pub fn checker() -> anyhow::Result<Checker> {
    let resolver = Resolver::new(&Nameservers::System)?;
    Ok(Checker::new(resolver, Guard::allow_private()))
}

impl Probe {
    pub fn engine(addrs: &[SocketAddr]) -> anyhow::Result<Probe> {
        Ok(Probe::Engine {
            checker: Box::new(checker()?),
            specs: addrs.iter().copied().map(spec_for).collect(),
        })
    }

    pub fn tokio_min(addrs: &[SocketAddr]) -> Probe {
        Probe::TokioMin {
            addrs: addrs.to_vec(),
        }
    }

    fn targets(&self) -> usize {
        match self {
            Probe::Engine { specs, .. } => specs.len(),
            Probe::TokioMin { addrs } => addrs.len(),
        }
    }

    /// One check of target `i`: Ok, or why it failed.
    async fn check(&self, i: usize) -> Result<(), String> {
        match self {
            Probe::Engine { checker, specs } => match specs.get(i) {
                Some(spec) => {
                    let r = checker.check(spec).await;
                    if r.outcome == Outcome::Ok {
                        Ok(())
                    } else {
                        Err(r.detail)
                    }
                }
                None => Err("no such target".into()),
            },
            Probe::TokioMin { addrs } => match addrs.get(i) {
                Some(addr) => tokio_min(*addr).await,
                None => Err("no such target".into()),
            },
        }
    }
}

async fn tokio_min(addr: SocketAddr) -> Result<(), String> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(|e| e.to_string())?;
    socket.set_zero_linger().map_err(|e| e.to_string())?;
    match tokio::time::timeout(TIMEOUT, socket.connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// What a driven run did.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    pub ok: u64,
    pub failed: u64,
    pub wall: Duration,
    /// Why the first failed check failed, for the notes.
    pub first_error: Option<String>,
}

/// Runs `total` checks, `in_flight` at a time, round-robin over the probe's
/// targets, stopping early at `deadline`. Call from inside the runtime (the
/// caller spawns this so that it runs on a worker, as the agent's loop does).
pub async fn saturate(
    probe: Arc<Probe>,
    total: u64,
    in_flight: usize,
    deadline: Instant,
) -> RunStats {
    let n = probe.targets().max(1);
    let permits = Arc::new(Semaphore::new(in_flight));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let t0 = Instant::now();
    for i in 0..total {
        if Instant::now() >= deadline {
            break;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let probe = probe.clone();
        let (ok, failed, first) = (ok.clone(), failed.clone(), first_error.clone());
        tokio::spawn(async move {
            match probe.check((i % n as u64) as usize).await {
                Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    first
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(e);
                    failed.fetch_add(1, Ordering::Relaxed)
                }
            };
            drop(permit);
        });
    }
    // Every check has a 3 s deadline; wait a little longer than that at most.
    let all = u32::try_from(in_flight).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(TIMEOUT + Duration::from_secs(2), permits.acquire_many(all)).await;
    RunStats {
        ok: ok.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        wall: t0.elapsed(),
        first_error: first_error.lock().unwrap_or_else(|p| p.into_inner()).take(),
    }
}
