//! Several coordinators on one PostgreSQL database: one active, the others standing by.
//!
//! Each coordinator runs [`run`]: while it holds no term it tries to take the active lease
//! (`store::postgres::lease`) every quarter of its time to live; once it holds one it renews it
//! every third. Taking a term, it reloads its view from the database (`Hub::reload`: monitors,
//! open incidents, latest results, outages — whatever the previous active one wrote) and
//! becomes active: it takes agents and admin calls and decides. Losing its term (a renewal
//! refused because another took over, or no successful renewal for a whole time to live), it
//! stands by at once: decides nothing, drains its agents (they move to the next address they
//! know) and refuses agents and admin calls with UNAVAILABLE. A clean stop ends its term, so a
//! standby takes over without waiting for the expiry.
//!
//! Why the local deadline as well as the fence: the database refuses a former term's deciding
//! writes in any case (the fencing epoch), but a coordinator that cannot reach the database
//! should also stop telling agents what to check once its term may be someone else's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::hub::Hub;
use crate::store::postgres::{PgStore, Term};

/// How this coordinator takes part (`coordinator_id`, `lease_ttl`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    /// Its name in the lease (stable across restarts: a restarted coordinator may take back its
    /// own unexpired term without waiting).
    pub owner: String,
    /// How long a term lasts without renewal: the longest a dead active coordinator leaves
    /// the cluster without one.
    pub ttl: Duration,
}

/// A term held, and when its last renewal was asked for.
pub type Held = (Term, Instant);

/// The first attempt, at start, before the coordinator listens: the hub was just loaded, so a
/// coordinator that gets the lease is active from its first connection (a lone coordinator
/// never makes its agents wait); one that does not starts as a standby.
pub async fn start(pg: &PgStore, hub: &Hub, settings: &LeaseSettings) -> Option<Held> {
    pg.join_lease(&settings.owner);
    let asked = Instant::now();
    match pg.acquire_lease(&settings.owner, settings.ttl).await {
        Ok(Some(t)) => {
            hub.set_active(true);
            metrics::counter!("portwatch_coordinator_terms_total").increment(1);
            info!(owner = %t.owner, epoch = t.epoch, "cluster: this coordinator is the active one");
            Some((t, asked))
        }
        Ok(None) => {
            hub.set_active(false);
            let holder = pg.lease_holder().await.ok().flatten();
            info!(holder = ?holder.map(|h| h.owner), "cluster: standing by; another coordinator is active");
            None
        }
        Err(e) => {
            hub.set_active(false);
            warn!(error = %e, "cluster: cannot reach the lease; standing by");
            None
        }
    }
}

/// Takes, keeps and gives up the active lease until `stop` (starting from what [`start`]
/// got); then ends the term it holds.
pub async fn run(
    pg: PgStore,
    hub: Arc<Hub>,
    settings: LeaseSettings,
    first: Option<Held>,
    stop: CancellationToken,
) {
    let mut told_standby = first.is_none();
    let mut term: Option<Held> = first;
    loop {
        let wait = match &term {
            Some(_) => settings.ttl / 3,
            None => settings.ttl / 4,
        };
        if term.is_some() || told_standby {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
        }
        term = match term.take() {
            None => match pg.acquire_lease(&settings.owner, settings.ttl).await {
                Ok(Some(t)) => {
                    let asked = Instant::now();
                    match hub.reload().await {
                        Ok(()) => {
                            hub.set_active(true);
                            metrics::counter!("portwatch_coordinator_terms_total").increment(1);
                            info!(owner = %t.owner, epoch = t.epoch, "cluster: this coordinator is now the active one");
                            told_standby = false;
                            Some((t, asked))
                        }
                        Err(e) => {
                            error!(error = %e, "cluster: took the lease but could not load the state; giving it back");
                            let _ = pg.release_lease(&t).await;
                            None
                        }
                    }
                }
                Ok(None) => {
                    if !told_standby {
                        let holder = pg.lease_holder().await.ok().flatten();
                        info!(holder = ?holder.map(|h| h.owner), "cluster: standing by; another coordinator is active");
                        told_standby = true;
                    }
                    None
                }
                Err(e) => {
                    warn!(error = %e, "cluster: cannot reach the lease");
                    told_standby = true;
                    None
                }
            },
            Some((t, renewed_at)) => {
                let asked = Instant::now();
                match pg.renew_lease(&t, settings.ttl).await {
                    Ok(true) => Some((t, asked)),
                    Ok(false) => {
                        stand_down(&hub, "another coordinator took over the lease");
                        None
                    }
                    Err(e) if renewed_at.elapsed() >= settings.ttl => {
                        stand_down(
                            &hub,
                            &format!("no renewal of the lease for a whole lease_ttl ({e})"),
                        );
                        None
                    }
                    Err(e) => {
                        warn!(error = %e, "cluster: renewing the lease failed; retrying before it runs out");
                        Some((t, renewed_at))
                    }
                }
            }
        };
        if stop.is_cancelled() {
            break;
        }
    }
    if let Some((t, _)) = term {
        hub.set_active(false);
        match pg.release_lease(&t).await {
            Ok(()) => info!(
                epoch = t.epoch,
                "cluster: the lease is released for a standby"
            ),
            Err(e) => {
                warn!(error = %e, "cluster: could not release the lease; it runs out on its own")
            }
        }
    }
}

fn stand_down(hub: &Hub, why: &str) {
    // The store keeps the old term as its fence: the database refuses its epoch.
    hub.set_active(false);
    metrics::counter!("portwatch_coordinator_stand_downs_total").increment(1);
    warn!(reason = %why, "cluster: this coordinator is a standby now");
}
