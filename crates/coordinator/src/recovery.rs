//! Brings the store back after it stopped taking writes (a full or failing
//! disk), without a restart.
//!
//! While the store is not writable, health says NOT_SERVING (condition
//! `store_writable`, with the reason), writes answer UNAVAILABLE and agents
//! keep their results in their spools. Every [`RETRY_EVERY`] this loop asks the
//! store to reopen itself (`Store::try_reopen`: a probe write first, then a
//! fresh open of its files); once it succeeds, the hub reloads its view from
//! the reopened store (`Hub::reload`) and health is SERVING again.
//!
//! [`report_damage`] reads the whole history once after a start (the rest
//! was read at open) and keeps the `store_intact` condition: damage found in
//! the files by any call makes health NOT_SERVING with what to do (restore
//! from a backup); the coordinator goes on with what it can read and write.
//!
//! [`run`] ends with an error only when waiting cannot help: the files are damaged
//! (restore from a backup), or the failed database cannot be let go of inside
//! this process for [`STUCK_GIVE_UP`] (sled still holds its file lock from a
//! thread that will not finish): the coordinator then stops, and its service
//! manager starts it again, which a fresh process can always do.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::health::{Health, STORE_INTACT, STORE_WRITABLE};
use crate::hub::Hub;
use crate::store::{Store, StoreError};

/// How often a failed store is tried again.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);
/// How long a reopen may keep failing on sled's file lock after the disk takes
/// writes again before the coordinator gives up and stops.
pub const STUCK_GIVE_UP: Duration = Duration::from_secs(60);

/// Whether the error is sled refusing to open files another handle still holds.
fn lock_held(e: &StoreError) -> bool {
    matches!(e, StoreError::Sled(sled::Error::Io(io)) if io.to_string().contains("could not acquire lock"))
}

fn reason(store: &Store, cause: &str) -> String {
    format!(
        "the store in {} takes no writes: {cause}; writes answer UNAVAILABLE and agents keep \
         their results until it is writable again (retried every {} s)",
        store.location(),
        RETRY_EVERY.as_secs()
    )
}

/// Runs until `stop`, or until the store cannot come back in this process.
pub async fn run(
    store: Store,
    hub: Arc<Hub>,
    health: Arc<Health>,
    stop: CancellationToken,
) -> Result<(), StoreError> {
    let mut states = store.subscribe();
    health.set(STORE_WRITABLE, None).await;
    loop {
        let cause = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            s = states.wait_for(|s| !s.writable) => match s {
                Ok(s) => s.cause.clone(),
                Err(_) => return Ok(()),
            },
        };
        health
            .set(STORE_WRITABLE, Some(reason(&store, &cause)))
            .await;
        let mut stuck_since: Option<Instant> = None;
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(RETRY_EVERY) => {}
            }
            let s = store.clone();
            let attempt = tokio::task::spawn_blocking(move || s.try_reopen())
                .await
                .unwrap_or_else(|e| {
                    Err(StoreError::Panicked {
                        call: "reopen",
                        message: e.to_string(),
                    })
                });
            match attempt {
                Ok(()) => match hub.reload().await {
                    Ok(()) => {
                        health.set(STORE_WRITABLE, None).await;
                        break;
                    }
                    // Failed again under the reload: wait for it again.
                    Err(e) if e.is_store_failure() => {
                        warn!(error = %e, "store: failed again while the hub reloaded");
                        break;
                    }
                    Err(e) => return Err(e),
                },
                Err(e) if e.is_damage() => {
                    error!(error = %e, data_dir = %store.location(), "store: damaged; it cannot be reopened");
                    health
                        .set(STORE_WRITABLE, Some(reason(&store, &e.to_string())))
                        .await;
                    return Err(e);
                }
                Err(e) => {
                    if lock_held(&e) {
                        let since = *stuck_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= STUCK_GIVE_UP {
                            return Err(StoreError::Unavailable(format!(
                                "the failed database still holds its files after {} s; it \
                                 cannot be reopened inside this process ({e})",
                                STUCK_GIVE_UP.as_secs()
                            )));
                        }
                    } else {
                        stuck_since = None;
                    }
                    health
                        .set(STORE_WRITABLE, Some(reason(&store, &e.to_string())))
                        .await;
                }
            }
        }
    }
}

/// Reads the history once, then reports damage found by any store call as
/// the `store_intact` condition, until `stop`.
pub async fn report_damage(store: Store, health: Arc<Health>, stop: CancellationToken) {
    health.set(STORE_INTACT, None).await;
    metrics::gauge!("portwatch_store_history_verified").set(0.0);
    let mut states = store.subscribe();
    let check = store.verify_history();
    tokio::pin!(check);
    let mut checking = true;
    loop {
        let damage = states.borrow_and_update().damage.clone();
        if !damage.is_empty() {
            health
                .set(
                    STORE_INTACT,
                    Some(format!(
                        "the store in {} is damaged ({damage}); restore it from a backup \
                         (portwatch-coordinator restore)",
                        store.location()
                    )),
                )
                .await;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            r = &mut check, if checking => {
                checking = false;
                match r {
                    Ok(rows) => {
                        metrics::gauge!("portwatch_store_history_verified").set(1.0);
                        info!(rows, "store: every history row read back intact");
                    }
                    // A damage is in the state already; anything else is logged.
                    Err(e) if e.is_damage() => {}
                    Err(e) => warn!(error = %e, "store: reading the history back failed"),
                }
            }
            r = states.changed() => if r.is_err() { return },
        }
    }
}
