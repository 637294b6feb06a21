//! Who may open one more connection: a cap per source address and a cap in all.
//!
//! Guarantees:
//! - at most `per_source` connections are open at once from one source, and at
//!   most `total` in all; a connection over either cap gets no slot;
//! - a source is one IPv4 address, or one IPv6 /64 (what one host or one
//!   customer usually gets, so stepping through its own prefix gains an attacker
//!   nothing); an IPv4-mapped IPv6 peer (a dual-stack listener) counts as IPv4;
//! - a slot is given back exactly once, when its connection is dropped, and the
//!   `portwatch_connections_open` / `portwatch_connections_unauthenticated`
//!   gauges follow every change, under the same lock as the counts.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Where connections come from, as far as the per-source cap goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    V4(Ipv4Addr),
    /// The first 64 bits of an IPv6 address.
    V6Prefix(u64),
}

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4),
                None => Source::V6Prefix((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::V4(v4) => write!(f, "{v4}"),
            Source::V6Prefix(p) => {
                let addr = std::net::Ipv6Addr::from(u128::from(*p) << 64);
                write!(f, "{addr}/64")
            }
        }
    }
}

/// Why a connection got no slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its source already has `max_connections_per_ip` open.
    PerSource,
    /// `max_connections` are open in all.
    Total,
}

impl Refusal {
    /// The `reason` label of `portwatch_connections_refused_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::PerSource => "per_ip_limit",
            Refusal::Total => "global_limit",
        }
    }
}

/// The caps and the live counts behind them.
pub struct Admission {
    per_source: u32,
    total: u32,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    by_source: HashMap<Source, u32>,
    open: u32,
    unauthenticated: u32,
}

impl Counts {
    fn publish(&self) {
        metrics::gauge!("portwatch_connections_open").set(f64::from(self.open));
        metrics::gauge!("portwatch_connections_unauthenticated")
            .set(f64::from(self.unauthenticated));
    }
}

impl Admission {
    pub fn new(per_source: u32, total: u32) -> Arc<Admission> {
        Arc::new(Admission {
            per_source,
            total,
            counts: Mutex::new(Counts::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        // The counts stay consistent even if a holder panicked: every update
        // is complete before anything that could panic.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for one more connection from `ip`, or why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let source = Source::of(ip);
        let mut c = self.lock();
        let from_source = c.by_source.get(&source).copied().unwrap_or(0);
        if from_source >= self.per_source {
            return Err(Refusal::PerSource);
        }
        if c.open >= self.total {
            return Err(Refusal::Total);
        }
        c.by_source.insert(source, from_source + 1);
        c.open += 1;
        c.unauthenticated += 1;
        c.publish();
        Ok(Slot {
            state: Arc::new(SlotState {
                admission: self.clone(),
                source,
                authenticated: AtomicBool::new(false),
                released: AtomicBool::new(false),
            }),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> u32 {
        self.lock().open
    }

    /// Connections open now that have not made an authenticated request.
    pub fn unauthenticated(&self) -> u32 {
        self.lock().unauthenticated
    }

    /// Connections open now from the source of `ip`.
    pub fn open_from(&self, ip: IpAddr) -> u32 {
        self.lock()
            .by_source
            .get(&Source::of(ip))
            .copied()
            .unwrap_or(0)
    }
}

/// One admitted connection's place; dropping it gives the place back.
pub struct Slot {
    state: Arc<SlotState>,
}

impl Slot {
    /// The handle through which requests mark this connection authenticated.
    pub fn authentication(&self) -> Authentication {
        Authentication {
            state: self.state.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let s = &self.state;
        let mut c = s.admission.lock();
        // Flags change under the lock, so `mark` and `drop` agree on who
        // takes the connection out of the unauthenticated count.
        s.released.store(true, Ordering::Release);
        match c.by_source.get_mut(&s.source) {
            Some(n) if *n > 1 => *n -= 1,
            _ => {
                c.by_source.remove(&s.source);
            }
        }
        c.open = c.open.saturating_sub(1);
        if !s.authenticated.load(Ordering::Acquire) {
            c.unauthenticated = c.unauthenticated.saturating_sub(1);
        }
        c.publish();
    }
}

struct SlotState {
    admission: Arc<Admission>,
    source: Source,
    authenticated: AtomicBool,
    released: AtomicBool,
}

/// Whether a connection has made an authenticated request (shared by the
/// connection and every request on it).
#[derive(Clone)]
pub struct Authentication {
    state: Arc<SlotState>,
}

impl Authentication {
    pub fn is_authenticated(&self) -> bool {
        self.state.authenticated.load(Ordering::Acquire)
    }

    /// From now on the connection is exempt from the unauthenticated deadline.
    pub fn mark(&self) {
        if self.is_authenticated() {
            return;
        }
        let s = &self.state;
        let mut c = s.admission.lock();
        if !s.authenticated.swap(true, Ordering::AcqRel) && !s.released.load(Ordering::Acquire) {
            c.unauthenticated = c.unauthenticated.saturating_sub(1);
            c.publish();
        }
    }
}

impl fmt::Debug for Authentication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authentication")
            .field("source", &self.state.source)
            .field("authenticated", &self.is_authenticated())
            .finish()
    }
}
